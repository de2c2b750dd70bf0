"""Run a recipe with a SIGKILL (or a scheduler's SIGTERM) injected at a named point on its n-th hit (for test_fault_injection.py and
the fine-tuning recipe's kill test).

    python tests/examples/fault_runner.py RECIPE POINT N key=value ...

RECIPE is the script's path relative to the repository (``examples/clip/train.py``); its config
schema is the type of its ``main``'s argument.

The patches live here, in the test, not in the library: each wraps one function the run calls.

    python tests/examples/fault_runner.py --serve

starts a server for the tests (:class:`Forker`): a process that imports torch and torchflava once,
then runs each requested recipe (killed at a point or not) in a child forked from itself, so that a
run costs no interpreter start and no imports (~6 s each on 2 cores). Each child is a fresh copy of
a process that has run nothing (no thread pools: the tests set OMP_NUM_THREADS=1), runs the recipe
as ``python RECIPE ...``, ``python -m MODULE ...`` or this script would, or as the ranks of ``torchrun
--standalone`` would (each its own child with torchrun's environment), and exits with the status such
a process would. Tests call it through :func:`run_script`.
"""

import atexit
import importlib.util
import json
import multiprocessing
import os
from pathlib import Path
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import typing

import torch
import torch.distributed.checkpoint as dcp

import torchflava.training.checkpointing as checkpointing
from torchflava.training.config import load_config
import torchflava.training.metrics as metrics
import torchflava.utils.checkpoint as checkpoint_io

REPO = Path(__file__).resolve().parents[2]


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_on(n: int, real, *, after: bool = False):
    """``real``, except that its n-th call kills the process: before it runs, or once it has (``after``)."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n and not after:
            die()
        result = real(*args, **kwargs)
        if calls["n"] == n:
            die()
        return result

    return wrapper


def signal_on(n: int, real, number: int):
    """``real``, except that once its n-th call has run, the signal ``number`` is sent to this process and to
    each of its children (data-loader workers), as SLURM signals every process of a job it preempts."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        result = real(*args, **kwargs)
        if calls["n"] == n:
            for child in multiprocessing.active_children():
                os.kill(child.pid, number)
            os.kill(os.getpid(), number)
        return result

    return wrapper


def half_then_die(tensors, path, *args, **kwargs):
    Path(path).write_bytes(b"\0" * 1000)  # a torn export
    die()


def rename_then_die(path):
    os.replace(path, path.with_name(f".{path.name}.deleting"))
    die()


def install(point: str, n: int) -> None:
    if point == "before_dcp_write":
        dcp.save = kill_on(n, dcp.save)
    elif point == "after_dcp_write":
        dcp.save = kill_on(n, dcp.save, after=True)
    elif point == "before_marker":
        checkpointing.write_marker = kill_on(n, checkpointing.write_marker)
    elif point == "after_marker_before_rename":
        checkpointing.write_marker = kill_on(n, checkpointing.write_marker, after=True)
    elif point == "during_deletion":
        checkpointing._discard = _nth(n, checkpointing._discard, rename_then_die)
    elif point == "rank_state_write":
        checkpointing.torch.save = kill_on(n, torch.save)
    elif point == "optimizer_step":
        torch.optim.AdamW.step = kill_on(n, torch.optim.AdamW.step)
    elif point == "after_optimizer_step":
        torch.optim.AdamW.step = kill_on(n, torch.optim.AdamW.step, after=True)
    elif point == "sigterm_after_optimizer_step":
        torch.optim.AdamW.step = signal_on(n, torch.optim.AdamW.step, signal.SIGTERM)
    elif point == "metrics_log":
        metrics.MetricsLogger.log = kill_on(n, metrics.MetricsLogger.log)
    elif point == "during_export":
        checkpoint_io.save_file = _nth(n, checkpoint_io.save_file, half_then_die)
    else:
        raise SystemExit(f"unknown point {point}")


def _nth(n: int, real, instead):
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        return instead(*args, **kwargs) if calls["n"] == n else real(*args, **kwargs)

    return wrapper


def run_faulty(script: str, point: str, n: int, overrides: list[str]) -> None:
    """Run the recipe ``script`` with ``overrides``, killed at ``point``'s n-th hit."""
    spec = importlib.util.spec_from_file_location("recipe_under_faults", REPO / script)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    schema = typing.get_type_hints(recipe.main)["cfg"]  # main(cfg: <its Config>)
    install(point, n)
    recipe.main(load_config(schema, overrides))


def _child(request: dict) -> int:
    """In a forked child: the run ``request`` asks for, with its output in files; the exit status."""
    os.chdir(request["cwd"])
    os.environ.clear()  # the caller's environment of now, not the server's of its start
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    code = 0
    try:
        if request["script"].startswith("-m "):  # as `python -m MODULE arguments...`
            sys.argv = [request["script"], *request["overrides"]]
            sys.path[0] = request["cwd"]  # the current folder, as python -m puts it there
            runpy.run_module(request["script"].removeprefix("-m "), run_name="__main__", alter_sys=True)
        elif request["point"] == "none":  # as `python RECIPE overrides...`
            sys.argv = [str(REPO / request["script"]), *request["overrides"]]
            sys.path[0] = str(Path(sys.argv[0]).parent)  # the script's folder, as python puts it there
            runpy.run_path(sys.argv[0], run_name="__main__")
        else:
            run_faulty(request["script"], request["point"], request["n"], request["overrides"])
    except SystemExit as stop:
        if isinstance(stop.code, int) or stop.code is None:
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _rank_requests(request: dict) -> list[dict]:
    """``request`` as its ``nproc`` ranks, each with the environment torchrun --standalone gives a rank."""
    with socket.socket() as probe:  # a free port for rank 0's store
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    n = request["nproc"]
    ranks = []
    for rank in range(n):
        env = dict(request["env"], RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n))
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GROUP_RANK="0", ROLE_RANK=str(rank))
        streams = {s: f"{request[s]}.{rank}" for s in ("stdout", "stderr")}
        ranks.append(dict(request, env=env, **streams))
    return ranks


def _wait(pids: list[int], deadline: float) -> list:
    """The exit statuses of ``pids``; a rank that failed ends the others (as torchrun does) and a process still
    running at ``deadline`` is killed (None: a hang)."""
    codes = {}
    while len(codes) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid not in codes and (status := os.waitpid(pid, os.WNOHANG))[0] != 0:
                codes[pid] = os.waitstatus_to_exitcode(status[1])
                if codes[pid] != 0:
                    for other in pids:
                        if other not in codes:
                            os.kill(other, signal.SIGKILL)
        time.sleep(0.01)
    for pid in pids:
        if pid not in codes:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            codes[pid] = None
    return [codes[pid] for pid in pids]


def serve() -> None:
    """Answer each JSON request line on stdin with the returncode of a forked run of it (None: timed out)."""
    import torch.distributed.checkpoint.state_dict  # noqa: F401  (the library imports it at a run's first save)

    import torchflava.data  # noqa: F401  the imports every run shares, done once
    import torchflava.evaluation  # noqa: F401
    import torchflava.models  # noqa: F401
    import torchflava.training  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        ranks = _rank_requests(request) if request.get("nproc", 1) > 1 else [request]
        pids = []
        for rank in ranks:
            pid = os.fork()
            if pid == 0:
                os._exit(_child(rank))
            pids.append(pid)
        codes = _wait(pids, time.monotonic() + request["timeout"])
        if len(ranks) > 1:  # as torchrun: the ranks' output in one stream each, status 1 if a rank failed
            for stream in ("stdout", "stderr"):
                Path(request[stream]).write_text("".join(Path(rank[stream]).read_text() for rank in ranks))
        if len(ranks) == 1 or None in codes:
            returncode = codes[0] if len(ranks) == 1 else None
        else:
            returncode = 1 if any(codes) else 0
        print(json.dumps({"returncode": returncode}), flush=True)


class Forker:
    """The test side of ``--serve``: ``run`` gives what ``subprocess.run`` of the same command would.

    Args:
        env (dict): the server's environment (the children inherit it).
    """

    def __init__(self, env: dict) -> None:
        command = [sys.executable, str(Path(__file__).resolve()), "--serve"]
        self._env = dict(env)
        self._server = subprocess.Popen(
            command, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        atexit.register(self.close)

    def run(
        self,
        script: str,
        overrides: list[str],
        point: str,
        n: int,
        *,
        workdir: Path,
        timeout: float,
        env: typing.Optional[dict] = None,
        nproc: int = 1,
    ):
        """Run ``script`` (killed at ``point``'s n-th hit unless ``point == "none"``) in a forked child, in the
        repository with ``env`` (default: the server's environment).

        Returns:
            subprocess.CompletedProcess: its returncode (-9 when killed) and its stdout and stderr.

        Raises:
            subprocess.TimeoutExpired: if the run took longer than ``timeout`` seconds (it is killed).
        """
        out, err = workdir / "run.stdout", workdir / "run.stderr"
        env = self._env if env is None else env
        request = dict(script=script, overrides=overrides, point=point, n=n, timeout=timeout, env=env, cwd=str(REPO))
        request["nproc"] = nproc
        self._server.stdin.write(json.dumps(dict(request, stdout=str(out), stderr=str(err))) + "\n")
        self._server.stdin.flush()
        returncode = json.loads(self._server.stdout.readline())["returncode"]
        args = [script, point, str(n), *overrides]
        if returncode is None:
            raise subprocess.TimeoutExpired(args, timeout)
        return subprocess.CompletedProcess(args, returncode, out.read_text(), err.read_text())

    def close(self) -> None:
        if self._server.poll() is None:
            self._server.stdin.close()  # the server's end of input: it exits
            self._server.wait(timeout=60)
        self._server.stdout.close()


def recipe_env() -> dict:
    """The environment the tests run recipes in: this one, the repository importable, one thread."""
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


_shared: list = []


def run_script(
    script: str,
    overrides: list[str],
    point: str = "none",
    n: int = 0,
    *,
    timeout: float = 300,
    nproc: int = 1,
    env: typing.Optional[dict] = None,
):
    """``subprocess.run([python, script, *overrides], cwd=REPO, env=recipe_env(), capture_output=True,
    text=True)`` (killed at ``point``'s n-th hit unless ``point == "none"``), from a server this test process
    shares (started on first use). ``script`` "-m MODULE" runs ``python -m MODULE *overrides`` (no point).
    ``nproc`` > 1 runs it as ``torchrun --standalone --nproc_per_node=nproc`` would: that many ranks, each
    with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT...), their output joined, status 1 if
    one failed (the others are then killed). ``env`` replaces :func:`recipe_env` (a minimal one, say)."""
    if not _shared:
        _shared.append(Forker(recipe_env()))
    with tempfile.TemporaryDirectory() as workdir:
        return _shared[0].run(
            script,
            list(overrides),
            point,
            n,
            workdir=Path(workdir),
            timeout=timeout,
            env=env or recipe_env(),
            nproc=nproc,
        )


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        run_faulty(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:])
