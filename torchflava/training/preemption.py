"""Stopping a run cleanly on a scheduler's signal: checkpoint at a step boundary, then exit "resume me".

A cluster scheduler preempts or times out a job by sending it ``SIGTERM`` (SLURM: to every process of
the job, then ``SIGKILL`` after ``KillWait``, often 30-90 s), or an earlier ``SIGUSR1`` with
``--signal=USR1@<seconds>``; a person at a terminal presses Ctrl-C (``SIGINT``). Left to their default
action these kill the run mid-step, and every step since the last checkpoint is lost.

While :func:`torchflava.training.loop.fit` runs, each of :data:`STOP_SIGNALS` whose handler is still the
default only records that it came (:class:`StopSignals`). The loop reads the record at the end of each
step, with that step's losses, agreed over ranks (one rank's signal stops every rank, after the same
step), writes a checkpoint of that step and raises :class:`Preempted`, a ``SystemExit`` whose status is
:data:`PREEMPTED_EXIT_CODE`: a recipe process exits with it, and ``training.resume=auto`` continues
exactly. A signal in the last step (or during its checkpoint) stops the run too, once the last
checkpoint is written: the export and evaluation that follow are for the resumed job. A stop signal
that comes :data:`REPEAT_WINDOW_S` or more after the first acts as it would have (kills, or
``KeyboardInterrupt``), for whoever cannot wait for the step to end; one within that window is the same
stop sent twice (SLURM signals every process of the job, and ``torchrun`` forwards the signal it got to
its workers: two arrive within milliseconds). A handler the program installed itself is left alone.

Under ``torchrun`` the workers exit with status 75 but torchrun itself exits 1, and it kills them 30 s
after forwarding a signal: the step under way and its checkpoint must fit in that time, and a job
script requeues on the ``stopped by ... after step N`` line (or always: ``training.resume=auto`` finds
whether there is anything left to do).
"""

from pathlib import Path
import signal
import threading
import time
from typing import Optional

# sysexits.h EX_TEMPFAIL: a temporary failure, the job is to be run again (training.resume=auto continues it)
PREEMPTED_EXIT_CODE = 75
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
# seconds after the first stop signal within which another is the same stop, delivered twice
REPEAT_WINDOW_S = 2.0


class Preempted(SystemExit):
    """The run stopped on a signal after writing a checkpoint of the step it had reached.

    A ``SystemExit`` (status :data:`PREEMPTED_EXIT_CODE`), so that a script running ``fit`` exits with
    that status, its ``finally`` blocks run, without a traceback; catch it to do otherwise.

    Attributes:
        step (int): the optimiser steps done, all of them in :attr:`checkpoint`.
        checkpoint (Path): the checkpoint of that step.
        signal_name (str): the signal that stopped the run (``"SIGTERM"``, say), on any rank.
    """

    def __init__(self, step: int, checkpoint: Path, signal_name: str) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name


class StopSignals:
    """A context manager: inside it, each of :data:`STOP_SIGNALS` still at its default handler (for
    ``SIGINT``, Python's ``KeyboardInterrupt``) is only recorded in :attr:`received`, the first one's name;
    another within :data:`REPEAT_WINDOW_S` of it is the same stop, one later acts at once as its default
    would. Outside the main thread (where no handler can be set) it does nothing. The handlers it replaced
    come back on exit.

    Attributes:
        received (Optional[str]): the name of the first stop signal that came; None while none has.
    """

    def __init__(self) -> None:
        self.received: Optional[str] = None
        self._first = 0.0  # when the first came (time.monotonic)
        self._replaced: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in STOP_SIGNALS:
            number = getattr(signal, name, None)  # (not every platform has SIGUSR1)
            if number is not None and signal.getsignal(number) in (signal.SIG_DFL, signal.default_int_handler):
                self._replaced[number] = signal.signal(number, self._record)
        return self

    def _record(self, number: int, frame: object) -> None:
        now = time.monotonic()
        if self.received is None:
            self.received, self._first = signal.Signals(number).name, now
            return
        if now - self._first < REPEAT_WINDOW_S:  # the same stop, delivered twice
            return
        default = self._replaced.pop(number, signal.SIG_DFL)  # whoever cannot wait: the default action, now
        signal.signal(number, default)
        if default is signal.default_int_handler:
            raise KeyboardInterrupt
        signal.raise_signal(number)

    def __exit__(self, *exc_info: object) -> None:
        while self._replaced:
            number, handler = self._replaced.popitem()
            signal.signal(number, handler)


def ignore_stop_signals(worker_id: int) -> None:
    """A data-loader ``worker_init_fn``: the worker ignores :data:`STOP_SIGNALS`. A scheduler signals every
    process of a job, and a worker that died of it would fail the main process (torch raises "DataLoader
    worker ... is killed by signal") before it reaches the step boundary where it checkpoints. The main
    process ends its workers itself (``fit`` kills those still alive once the loader's shutdown has
    asked them to stop: torch's ``terminate`` is a ``SIGTERM``); they also exit when it is gone."""
    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, signal.SIG_IGN)
