"""One run per output directory: an exclusive ``fcntl`` lock held for the run's lifetime.

Two runs in one directory (e.g. both with ``training.resume=auto``) would overwrite each other's
checkpoints, metrics and exports. The first run holds ``<output_dir>/.run.lock``; a second one fails
at once with a one-line error naming the directory and the holder's pid. The lock belongs to the
process: it is released when the run ends, however it ends (even ``kill -9``), so a stale lock
file never blocks a later run. Forked children (data-loader workers) close their copy of the lock at
once, so a killed run's orphaned workers, still shutting down, do not hold the directory.
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


class RunLock:
    """Hold ``<directory>/.run.lock`` exclusively; usable as a context manager.

    Args:
        directory (Union[str, os.PathLike]): the run's output directory (created if missing).

    Raises:
        RunDirectoryInUse: from :meth:`acquire`, if another process holds the directory.
        ValueError: from :meth:`acquire`, if ``.run.lock`` is a symbolic link or no regular file (the
            lock file is emptied and written: a link would have it truncate the file it points at).
    """

    def __init__(self, directory: Union[str, os.PathLike]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        """Take the lock without waiting; raise if another process has it."""
        if self._fd is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        try:  # (never through a link: the file is truncated and written below)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            raise ValueError(
                f"{self.path} is a symbolic link, not a regular file: expected the run's own lock file (remove the link)"
            ) from None
        try:
            check_regular_file(self.path, "the run's own lock file")
        except ValueError:
            os.close(fd)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirectoryInUse(
                f"{self.directory} is in use by another run ({holder}); wait for it to finish or choose another "
                "training.output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        _HELD.add(self)
        return self

    def release(self) -> None:
        """Give the lock up (the lock file stays; it is only a handle)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        _HELD.discard(self)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
