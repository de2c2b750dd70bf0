"""One run per directory: a second process is refused at once, naming the directory and the holder."""

import errno
import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest

from torchflava.training import loop as loop_module
from torchflava.training.run_lock import LocksUnsupported, RunDirectoryInUse, RunLock
from torchflava.training.schema import TrainingConfig

HOLD = """
import sys, time
from torchflava.training.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def start_holder(directory):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_is_refused_naming_the_directory_and_the_holders_pid(tmp_path):
    with start_holder(tmp_path / "run") as holder:  # leaving closes its pipe and waits for it
        try:
            with pytest.raises(
                RunDirectoryInUse, match=rf"{tmp_path / 'run'} is in use by another run \(pid {holder.pid} on "
            ):
                RunLock(tmp_path / "run").acquire()
        finally:
            holder.kill()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    with start_holder(tmp_path) as holder:
        os.kill(holder.pid, signal.SIGKILL)
    with RunLock(tmp_path) as lock:  # the kernel dropped the dead process's lock
        assert f"pid {os.getpid()}" in lock.path.read_text()


def test_release_and_reacquire_in_one_process(tmp_path):
    lock = RunLock(tmp_path / "a" / "b")
    with lock:
        assert lock.path.is_file()
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from torchflava.training.run_lock import RunLock; RunLock(sys.argv[1]).acquire()",
                str(tmp_path / "a" / "b"),
            ],
            capture_output=True,
            text=True,
        )
        assert other.returncode != 0 and "is in use by another run" in other.stderr
    started = time.monotonic()
    with RunLock(tmp_path / "a" / "b"):
        pass
    assert time.monotonic() - started < 1.0  # never waits


HOLD_WITH_CHILD = """
import os, sys, time
from torchflava.training.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
child = os.fork()
if child == 0:  # like a data-loader worker: lives on after the run is killed
    # past the fork handlers (they run in the child, after the parent goes on); one write per line, as
    # print() writes the text and its newline apart when stdout is unbuffered (PYTHONUNBUFFERED=1)
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    time.sleep(60)
    os._exit(0)
sys.stdout.write(f"{child}\\n"); sys.stdout.flush()
time.sleep(60)
"""


def test_forked_children_neither_hold_nor_release_the_lock(tmp_path):
    command = [sys.executable, "-c", HOLD_WITH_CHILD, str(tmp_path)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as holder:  # leaving closes its pipe
        lines = {holder.stdout.readline().strip() for _ in range(2)}  # the child's "ready" and its pid, either order
        child = int((lines - {"ready"}).pop())
        try:
            try:
                with pytest.raises(RunDirectoryInUse):  # the child's start did not unlock the holder's lock
                    RunLock(tmp_path).acquire()
            finally:
                os.kill(holder.pid, signal.SIGKILL)
                holder.wait()
            with RunLock(tmp_path) as lock:  # the orphaned child, still alive, does not hold the directory
                os.kill(child, 0)
                assert f"pid {os.getpid()}" in lock.path.read_text()
        finally:
            os.kill(child, signal.SIGKILL)


def test_a_tidy_release_of_a_run_that_wrote_nothing_leaves_the_directory_as_it_was(tmp_path):
    """A run refused after it took its directory (e.g. for data that does not read) left the directory and
    its .run.lock behind: a directory that looked like a run's, in the way of nothing but confusing."""
    lock = RunLock(tmp_path / "a" / "b").acquire()
    lock.release(tidy=True)
    assert list(tmp_path.iterdir()) == []  # the directories it made are gone with the lock file
    (tmp_path / "mine").mkdir()
    RunLock(tmp_path / "mine").acquire().release(tidy=True)
    assert (tmp_path / "mine").is_dir() and list((tmp_path / "mine").iterdir()) == []  # made by the user: kept
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    RunLock(tmp_path / "mine").acquire().release(tidy=True)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    with RunLock(tmp_path / "run") as lock:
        (tmp_path / "run" / "config.yaml").write_text("written")
        lock.release(tidy=True)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".run.lock", "config.yaml"]  # a run's: kept
    RunLock(tmp_path / "old").acquire().release()
    RunLock(tmp_path / "old").acquire().release(tidy=True)  # a lock file it did not make is left alone
    assert [p.name for p in (tmp_path / "old").iterdir()] == [".run.lock"]


def test_a_run_that_locks_a_file_a_tidy_holder_removed_locks_anew(tmp_path, monkeypatch):
    """Between a second run's open and its flock, the holder leaves tidily (unlinking the lock file): the
    second run must not hold the unlinked file (a third would then create and lock another)."""
    from torchflava.training import run_lock

    first = RunLock(tmp_path / "run").acquire()
    real_flock, calls = run_lock.fcntl.flock, []

    def flock(fd, operation):
        if operation & run_lock.fcntl.LOCK_EX and not calls:
            calls.append(fd)
            first.release(tidy=True)  # the holder leaves: it wrote nothing
        return real_flock(fd, operation)

    monkeypatch.setattr(run_lock.fcntl, "flock", flock)
    second = RunLock(tmp_path / "run").acquire()
    monkeypatch.setattr(run_lock.fcntl, "flock", real_flock)
    try:
        assert calls and second.path.is_file()  # it holds the file at the path, created anew
        with pytest.raises(RunDirectoryInUse):
            RunLock(tmp_path / "run").acquire()
    finally:
        second.release()


def test_a_lock_file_that_is_a_link_or_a_fifo_is_refused_and_nothing_it_points_at_is_written(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".run.lock").symlink_to(victim)  # (the lock truncated and wrote the file it points at)
    with pytest.raises(ValueError, match=r"run/.run.lock is a symbolic link, not a regular file: expected the run's"):
        RunLock(tmp_path / "run").acquire()
    assert victim.read_text() == "precious"
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / ".run.lock")  # (ftruncate raised a bare OSError: Invalid argument)
    with pytest.raises(ValueError, match=r"fifo/.run.lock is a FIFO \(named pipe\), not a regular file"):
        RunLock(tmp_path / "fifo").acquire()


def test_a_run_whose_directory_a_tidy_holder_removed_before_its_open_takes_it_anew(tmp_path, monkeypatch):
    """Found by an adversarial review: between a second run's mkdir and its open, the holder (which had made
    the directory and wrote nothing) left tidily, removing the directory: the open raised FileNotFoundError,
    a traceback instead of taking the now free directory."""
    first = RunLock(tmp_path / "run").acquire()
    real_open, calls = RunLock._open, []

    def racing_open(self):
        if not calls:
            calls.append(self)
            first.release(tidy=True)  # the holder leaves: the lock file and the directory it made go
            assert not (tmp_path / "run").exists()
        return real_open(self)

    monkeypatch.setattr(RunLock, "_open", racing_open)
    second = RunLock(tmp_path / "run").acquire()
    monkeypatch.setattr(RunLock, "_open", real_open)
    try:
        assert calls and second.path.is_file()
        with pytest.raises(RunDirectoryInUse):
            RunLock(tmp_path / "run").acquire()
    finally:
        second.release()


def test_a_file_system_without_locks_is_named_and_a_run_goes_on_without_the_lock(tmp_path, monkeypatch, capsys):
    """Lustre mounted without -o flock answers flock with ENOSYS: the run failed with a bare OSError
    traceback from fcntl, and could not train in that directory at all."""

    def no_locks(fd, operation):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(LocksUnsupported) as refused:
        RunLock(tmp_path / "run").acquire()
    assert str(refused.value) == (
        f"[Errno 38] {tmp_path / 'run' / '.run.lock'} cannot be locked, the file system refuses locks "
        "(Function not implemented)"
    )
    assert list((tmp_path / "run").iterdir()) == []  # the lock file it made is gone
    training = TrainingConfig(output_dir=str(tmp_path / "run"), progress_bar=False, tensorboard=False)
    try:
        assert loop_module.resume_checkpoint(training) is None  # a fresh run, not refused
    finally:
        loop_module.release_run_directory(training)
    assert capsys.readouterr().err == (
        f"warning: {tmp_path / 'run' / '.run.lock'} cannot be locked, the file system refuses locks (Function not "
        f"implemented); this run goes on without the lock, so a second run started in {tmp_path / 'run'} would not "
        "be refused\n"
    )
