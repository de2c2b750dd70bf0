"""One run per output directory: an exclusive ``fcntl`` lock held for the run's lifetime.

Two runs in one directory (e.g. both with ``training.resume=auto``) would overwrite each other's
checkpoints, metrics and exports. The first run holds ``<output_dir>/.run.lock``; a second one fails
at once with a one-line error naming the directory and the holder's pid. The lock belongs to the
process: it is released when the run ends, however it ends (even ``kill -9``), so a stale lock
file never blocks a later run. Forked children (data-loader workers) close their copy of the lock at
once, so a killed run's orphaned workers, still shutting down, do not hold the directory.
"""

import fcntl
import os
from pathlib import Path
import socket
from typing import Optional, Union
import weakref

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
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
