"""One run per output directory: an exclusive ``fcntl`` lock held for the run's lifetime.

Two runs in one directory (e.g. both with ``training.resume=auto``) would overwrite each other's
checkpoints, metrics and exports. The first run holds ``<output_dir>/.run.lock``; a second one fails
at once with a one-line error naming the directory and the holder's pid. The lock belongs to the
process: it is released when the run ends, however it ends (even ``kill -9``), so a stale lock
file never blocks a later run. Forked children (data-loader workers) close their copy of the lock at
once, so a killed run's orphaned workers, still shutting down, do not hold the directory. A run that
wrote nothing (refused after it took the directory, e.g. for data that does not read) leaves the
directory as it found it: :meth:`RunLock.release` with ``tidy=True`` removes the lock file and the
directories that acquiring created, when the directory holds the entries it held then and no other.
"""

import errno
import fcntl
import os
from pathlib import Path
import socket
from typing import Optional, Union
import weakref

from torchflava.utils.checkpoint import check_regular_file

LOCK_NAME = ".run.lock"

# Locks this process holds. A flock belongs to the open file description, which a fork shares: a
# child closes its descriptor (never unlocking, which would release the parent's lock too).
_HELD: "weakref.WeakSet[RunLock]" = weakref.WeakSet()


def _close_in_child() -> None:
    for lock in list(_HELD):
        if lock._fd is not None:
            os.close(lock._fd)
            lock._fd = None
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunDirectoryInUse(RuntimeError):
    """Another live process holds the run directory."""


class LocksUnsupported(OSError):
    """The run directory's file system refuses file locks (e.g. Lustre mounted without ``-o flock``)."""


# flock's errors for a file system without locks (Lustre without -o flock: ENOSYS; some NFS set-ups: ENOLCK)
_NO_LOCKS = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)


class RunLock:
    """Hold ``<directory>/.run.lock`` exclusively; usable as a context manager.

    Args:
        directory (Union[str, os.PathLike]): the run's output directory (created if missing).

    Raises:
        RunDirectoryInUse: from :meth:`acquire`, if another process holds the directory.
        LocksUnsupported: from :meth:`acquire`, if the directory's file system refuses file locks.
        ValueError: from :meth:`acquire`, if ``.run.lock`` is a symbolic link or no regular file (the
            lock file is emptied and written: a link would have it truncate the file it points at).
    """

    def __init__(self, directory: Union[str, os.PathLike]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: Optional[int] = None
        self._created: list[Path] = []  # the directories acquire made, outermost first
        self._found: Optional[set[str]] = None  # the directory's entries when acquire made the lock file

    def acquire(self) -> "RunLock":
        """Take the lock without waiting; raise if another process has it."""
        if self._fd is not None:
            return self
        while True:
            missing = [d for d in (self.directory, *self.directory.parents) if not d.exists()]
            self.directory.mkdir(parents=True, exist_ok=True)
            try:
                fd, created_file = self._open()
            except FileNotFoundError:  # a holder that wrote nothing removed the directory as it left: make it anew
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunDirectoryInUse(
                    f"{self.directory} is in use by another run ({holder}); wait for it to finish or choose "
                    "another training.output_dir"
                ) from None
            except OSError as error:
                os.close(fd)
                if error.errno not in _NO_LOCKS:
                    raise
                if created_file:  # (nothing of it is left behind)
                    self.path.unlink(missing_ok=True)
                raise LocksUnsupported(
                    error.errno, f"{self.path} cannot be locked, the file system refuses locks ({error.strerror})"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # a holder that wrote nothing removed the file we locked as it left: lock anew
        self._created = missing[::-1]
        self._found = _entries(self.directory) - {LOCK_NAME} if created_file else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        _HELD.add(self)
        return self

    def _open(self) -> tuple[int, bool]:
        """The lock file's descriptor, and whether this call created the file; never opened through a link
        (the file is truncated and written), and only a regular file (ValueError naming it otherwise)."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            try:
                return os.open(self.path, flags | os.O_EXCL, 0o644), True
            except FileExistsError:
                fd = os.open(self.path, flags, 0o644)
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            raise ValueError(
                f"{self.path} is a symbolic link, not a regular file: expected the run's own lock file (remove the link)"
            ) from None
        try:
            check_regular_file(self.path, "the run's own lock file")
        except Exception:  # (FileNotFoundError too: a holder that left removed it; the caller opens anew)
            os.close(fd)
            raise
        return fd, False

    def release(self, tidy: bool = False) -> None:
        """Give the lock up. The lock file stays (it is only a handle), unless ``tidy``, acquiring made it
        and the directory holds the entries it held then and no other (the run wrote nothing there): then
        the lock file and the directories acquiring made go, leaving the directory as it was found."""
        if self._fd is not None and tidy and self._found is not None:
            try:
                if _entries(self.directory) == self._found | {LOCK_NAME} and _same_file(self._fd, self.path):
                    self.path.unlink()  # while held: a run that opened it meanwhile locks it, sees it gone, retries
                    for directory in reversed(self._created):
                        directory.rmdir()  # innermost first; one that now holds an entry stays (OSError)
            except OSError:
                pass
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        _HELD.discard(self)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open ``fd`` is the file at ``path`` (not one removed or replaced since it was opened)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _entries(directory: Path) -> set[str]:
    """The names in ``directory``."""
    return {entry.name for entry in directory.iterdir()}
