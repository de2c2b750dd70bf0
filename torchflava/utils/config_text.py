"""Text that goes into a config OmegaConf reads (the recipes' YAML): kept as it is."""

import re

_INTERPOLATION = re.compile(r"(\\*)\$\{")  # "${" and the run of backslashes before it


def escape_interpolations(text: str) -> str:
    """``text`` as OmegaConf reads it back unchanged: each ``${``, which OmegaConf reads as an interpolation
    ("${x}": a missing key; "${oc.env:HOME}": the environment's value; "${": a grammar error), escaped as its
    grammar escapes it, the run of n backslashes before it (0 or more) written as 2n + 1 of them. Other backslashes,
    and text without ``${``, are left as they are (OmegaConf parses no such text).

    Args:
        text (str): any text.

    Returns:
        str: the escaped text.
    """
    return _INTERPOLATION.sub(lambda found: "\\" * (2 * len(found.group(1)) + 1) + "${", text)


_ESCAPED = re.compile(r"(\\+)\$\{")  # a run of backslashes before "${"


def unescape_interpolations(text: str) -> str:
    """The text :func:`escape_interpolations` was given, from what it returned: what OmegaConf reads, for a reader of
    the YAML that is not OmegaConf (PyYAML's ``safe_load`` reads ``a\\${x}`` as written). An odd run of 2n + 1
    backslashes before ``${`` is n of them; an even run (no escape of ours) is left as it is.

    Args:
        text (str): text as a config.yaml records it.

    Returns:
        str: the text as the config held it.
    """
    return _ESCAPED.sub(
        lambda found: found.group(0) if len(found.group(1)) % 2 == 0 else "\\" * (len(found.group(1)) // 2) + "${",
        text,
    )


def unescaped(value: object) -> object:
    """``value`` (PyYAML's reading of a recorded config, or any part of it) with each string's ``${`` read back as
    :func:`unescape_interpolations` reads it, through mappings and lists.

    Args:
        value (object): a parsed YAML value.

    Returns:
        object: the same value, its strings unescaped.
    """
    if isinstance(value, str):
        return unescape_interpolations(value) if "${" in value else value
    if isinstance(value, list):
        return [unescaped(item) for item in value]
    if isinstance(value, dict):
        return {key: unescaped(item) for key, item in value.items()}
    return value
