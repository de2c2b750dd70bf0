"""Glob patterns matched as :func:`glob.glob` matches them, but safe where a linked folder leads back up (shared by
the data readers and the recipes' config checks, which import nothing from ``torchflava.data``)."""

import fnmatch
import glob
import os


def glob_files(pattern: str) -> list[str]:
    """The regular files matching ``pattern``, sorted: ``glob.glob(pattern, recursive=True)``'s, but under
    ``**`` each real folder is searched once, so that a linked folder leading back up (a loop) ends
    (glob followed it 40 levels deep: the same shard 41 times, and with two such links 2**40 paths, a
    hang). Several links to one folder give its files once, under the first path walked."""
    if "**" not in pattern:
        return sorted(path for path in glob.glob(pattern) if os.path.isfile(path))
    parts = pattern.split("/")
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = "/".join(parts[:first]) or ("/" if pattern.startswith("/") else ".")
    found, seen = [], set()
    for directory, subfolders, names in os.walk(base, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        relative = os.path.relpath(directory, base)
        where = [] if relative == "." else relative.split(os.sep)
        # (walked in name order: which of two links to a folder names it does not vary; and only into the
        # folders a match can lie under: "/mnt/shards-*/**" walks the shards' folders, not all of /mnt)
        subfolders[:] = [name for name in sorted(subfolders) if _glob_prefix(where + [name], parts[first:])]
        for name in names:
            path = os.path.join(directory, name)
            if _glob_match(where + [name], parts[first:]) and os.path.isfile(path):
                found.append(path[2:] if base == "." else path)  # (glob gives "a/x.tar", not "./a/x.tar")
    return sorted(found)


def _glob_prefix(names: list[str], pattern: list[str]) -> bool:
    """Whether folder components ``names`` may lead to a match of glob components ``pattern`` (they match
    its first components, up to a ``**``, under which any folder may)."""
    for position, name in enumerate(names):
        if position < len(pattern) and pattern[position] == "**":
            return True
        if position >= len(pattern) - 1:  # (the last component names files, not the folders above them)
            return False
        part = pattern[position]
        if name.startswith(".") and glob.has_magic(part) and not part.startswith("."):
            return False
        if not fnmatch.fnmatchcase(name, part):
            return False
    return True


def _glob_match(names: list[str], pattern: list[str]) -> bool:
    """Whether path components ``names`` match glob components ``pattern`` as glob matches them (``**``:
    any number of folders; a wildcard matches no name starting with a dot)."""
    if not pattern:
        return not names
    if pattern[0] == "**":
        return _glob_match(names, pattern[1:]) or (
            bool(names) and not names[0].startswith(".") and _glob_match(names[1:], pattern)
        )
    if not names or (names[0].startswith(".") and glob.has_magic(pattern[0]) and not pattern[0].startswith(".")):
        return False
    if len(names) == 1 and len(pattern) > 1:  # the file: glob matches the components before the last to folders
        return False
    return fnmatch.fnmatchcase(names[0], pattern[0]) and _glob_match(names[1:], pattern[1:])
