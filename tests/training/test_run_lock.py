"""One run per directory: a second process is refused at once, naming the directory and the holder."""

import os
import signal
import subprocess
import sys
import time

import pytest

from torchflava.training.run_lock import RunDirectoryInUse, RunLock

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
