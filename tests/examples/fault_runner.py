"""Run a recipe with a SIGKILL injected at a named point on its n-th hit (for test_fault_injection.py and
the fine-tuning recipe's kill test).

    python tests/examples/fault_runner.py RECIPE POINT N key=value ...

RECIPE is the script's path relative to the repository (``examples/clip/train.py``); its config
schema is the type of its ``main``'s argument.

The patches live here, in the test, not in the library: each wraps one function the run calls.
"""

import importlib.util
import os
from pathlib import Path
import signal
import sys
import typing

import torch

import torchflava.training.checkpointing as checkpointing
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


def half_then_die(tensors, path, *args, **kwargs):
    Path(path).write_bytes(b"\0" * 1000)  # a torn export
    die()


def rename_then_die(path):
    os.replace(path, path.with_name(f".{path.name}.deleting"))
    die()


def install(point: str, n: int) -> None:
    if point == "before_dcp_write":
        checkpointing.dcp.save = kill_on(n, checkpointing.dcp.save)
    elif point == "after_dcp_write":
        checkpointing.dcp.save = kill_on(n, checkpointing.dcp.save, after=True)
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


if __name__ == "__main__":
    script, point, n, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    spec = importlib.util.spec_from_file_location("recipe_under_faults", REPO / script)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    schema = typing.get_type_hints(recipe.main)["cfg"]  # main(cfg: <its Config>)
    install(point, n)
    recipe.main(recipe.load_config(schema, overrides))
