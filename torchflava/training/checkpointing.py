"""Resumable training checkpoints with ``torch.distributed.checkpoint`` (DCP), made visible atomically.

Layout of ``<root>/step_<N>/``: the DCP shards of ``{"model", "optim"}`` (written by every rank
in parallel, loadable on another world size), ``rank<R>.pt`` per rank (the training loop's own
state: schedule, step, RNG states; plain tensors and numbers, loaded with ``weights_only=True``), and
``COMPLETE`` (JSON metadata). Everything is first written to ``.step_<N>.tmp/`` and renamed
when every rank has finished, so a killed run never leaves a checkpoint that looks complete.
"""

from contextlib import contextmanager
import json
import os
from pathlib import Path
import random
import shutil
from typing import Any, Optional, Union
import warnings

import numpy as np
import torch
from torch import nn
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from torchflava.training.distributed import barrier
from torchflava.utils.checkpoint import save_state_dict

_MARKER = "COMPLETE"


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy and torch (CPU and CUDA) random states (``weights_only``-loadable)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.copy()), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


@contextmanager
def _single_process_ok():
    """Without a process group DCP warns that it assumes one process, which is what we want."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


class CheckpointManager:
    """Saves, finds and loads the checkpoints of one run under ``root``.

    Args:
        root (Union[str, os.PathLike]): the run's checkpoint directory.
        keep (int): complete checkpoints to keep (older ones are deleted after a save); >= 1.

    Raises:
        ValueError: if ``keep`` < 1.
    """

    def __init__(self, root: Union[str, os.PathLike], *, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root, self.keep = Path(root), keep

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.glob("step_*") if (p / _MARKER).is_file()]
        return sorted(found, key=lambda p: int(p.name.split("_")[1]))

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint, or None."""
        found = self.complete()
        return found[-1] if found else None

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, local_state: dict) -> Path:
        """Write checkpoint ``step`` (collective: every rank calls it).

        Args:
            step (int): the number of optimiser steps done.
            model (nn.Module): the (possibly DDP- or FSDP-wrapped) model.
            optimizer (torch.optim.Optimizer): its optimiser.
            local_state (dict): this rank's own state (tensors, numbers, strings, containers).

        Returns:
            Path: the complete checkpoint's directory.
        """
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f".step_{step:08d}.tmp"
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        model_state, optim_state = get_state_dict(model, optimizer)
        with _single_process_ok():
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
        torch.save(local_state, tmp / f"rank{_rank()}.pt")
        barrier()
        if _rank() == 0:
            (tmp / _MARKER).write_text(json.dumps({"step": step, "world_size": _world_size()}))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final

    def load(self, path: Union[str, os.PathLike], model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """Restore model and optimiser from checkpoint ``path``; return this rank's own state.

        Args:
            path (Union[str, os.PathLike]): a checkpoint directory.
            model (nn.Module): the model, wrapped as when saving.
            optimizer (torch.optim.Optimizer): its optimiser.

        Returns:
            dict: the ``local_state`` this rank saved (empty when the checkpoint was written by
            fewer ranks than there are now).

        Raises:
            FileNotFoundError: if ``path`` is not a complete checkpoint.
            ValueError: if the checkpoint lacks weights of ``model``.
        """
        path = Path(path)
        if not (path / _MARKER).is_file():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no {_MARKER} file)")
        saved = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
        # get_state_dict gives a fresh optimiser a state for every parameter, but a checkpoint holds
        # states only for parameters that had a gradient before it was written (e.g. not for a head
        # whose loss has not run yet). Those keep no state after loading, as in the saving run.
        model_state, optim_state = get_state_dict(model, optimizer)
        missing = sorted(k for k in model_state if f"model.{k}" not in saved)
        if missing:
            raise ValueError(f"checkpoint {path} lacks model weights {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        stateless = {fqn for fqn in optim_state["state"] if not any(k.startswith(f"optim.state.{fqn}.") for k in saved)}
        state = {"model": model_state, "optim": optim_state}
        with _single_process_ok():
            dcp.load(state, checkpoint_id=str(path), planner=DefaultLoadPlanner(allow_partial_load=True))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        for name, param in model.named_parameters():
            if name.removeprefix("module.") in stateless:
                optimizer.state.pop(param, None)
        local = path / f"rank{_rank()}.pt"
        return torch.load(local, weights_only=True) if local.is_file() else {}


def is_complete(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a complete checkpoint (its save finished on every rank)."""
    return (Path(path) / _MARKER).is_file()


def checkpoint_step(path: Union[str, os.PathLike]) -> int:
    """The step a complete checkpoint was written at."""
    return int(json.loads((Path(path) / _MARKER).read_text())["step"])


def checkpoint_world_size(path: Union[str, os.PathLike]) -> int:
    """The number of ranks that wrote a complete checkpoint."""
    return int(json.loads((Path(path) / _MARKER).read_text())["world_size"])


def export_model(model: nn.Module, path: Union[str, os.PathLike]) -> None:
    """Write the full (unsharded) model state dict to ``path`` as safetensors, atomically (collective).

    Args:
        model (nn.Module): the (possibly wrapped) model.
        path (Union[str, os.PathLike]): the ``.safetensors`` file written by rank 0.
    """
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if _rank() == 0:
        save_state_dict(state, path)
    barrier()
