"""Resumable training checkpoints with ``torch.distributed.checkpoint`` (DCP), made visible atomically.

Layout of ``<root>/step_<N>/``: the DCP shards of ``{"model", "optim"}`` (written by every rank
in parallel, loadable on another world size), ``rank<R>.pt`` per rank (the training loop's own
state: schedule, step, RNG states; plain tensors and numbers, loaded with ``weights_only=True``),
the caller's text files (``config.yaml``: the config it was trained under, so that a resume can
verify its own config against the checkpoint alone), and ``COMPLETE`` (JSON: step, world size and
the size and SHA-256 of every file). Everything is first written to ``.step_<N>.tmp/`` and renamed
when every rank has finished, so a killed run never leaves a checkpoint that looks complete; old
checkpoints are renamed away before they are deleted. A write that fails on any rank (a full disk)
fails the save on every rank in one line, with the temporary directory removed and the checkpoints
written before left complete. Loading verifies every digest first and never
runs code from the files (:mod:`torchflava.training.integrity`). DCP is imported as a checkpoint is
written or read, not with this module: finding checkpoints and checking their digests do without it.
"""

from contextlib import contextmanager
import os
from pathlib import Path
import random
import shutil
import sys
from typing import Any, Callable, Mapping, Optional, Union
import warnings

import numpy as np
import torch
from torch import nn
import torch.distributed as dist

from torchflava.training.distributed import barrier
from torchflava.training.integrity import (
    MARKER,
    CheckpointIntegrityError,
    damage,
    damage_on_every_rank,
    read_dcp_metadata,
    read_marker,
    unwrap_checkpoint_error,
    write_marker,
)
from torchflava.training.optim import checkpoint_name
from torchflava.utils.checkpoint import check_zip_expansion, first_line, fsync_path, save_state_dict, unused_path
from torchflava.utils.checks import check_module

_MARKER = MARKER
CONFIG = "config.yaml"  # the config a checkpoint was trained under, when the caller records it


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


def rng_state_fault(state: object) -> Optional[str]:
    """Why ``state`` is not what :func:`rng_state` returns, or None: each part is set on a fresh
    generator of its kind (the process's own states are left as they are)."""
    if not isinstance(state, dict) or not {"python", "numpy", "torch"} <= set(state):
        return f"expected a dict of python, numpy and torch states, got {type(state).__name__}"
    try:
        random.Random().setstate(state["python"])
        kind, keys, position, has_gauss, cached = state["numpy"]
        np.random.RandomState().set_state((kind, keys.numpy(), position, has_gauss, cached))
        torch.Generator().set_state(state["torch"])
        cuda = state.get("cuda", [])
        if not isinstance(cuda, list) or not all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in cuda):
            raise TypeError("cuda: expected a list of uint8 tensors")
    except Exception as error:  # each library's own error types, for each malformed part
        return f"{type(error).__name__}: {first_line(error)}"
    return None


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


def _load_dcp(state: dict, path: Path) -> None:
    """Fill ``state`` (DCP's ``load``: resharded, in place) from checkpoint ``path``, read safely (no pickle runs),
    missing entries left as they are; a failure on any rank raised as one :class:`CheckpointIntegrityError`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    from torchflava.training.safe_dcp import SafeFileSystemReader, SafeLoadPlanner

    with _single_process_ok():
        try:
            dcp.load(state, storage_reader=SafeFileSystemReader(path), planner=SafeLoadPlanner(allow_partial_load=True))
        except CheckpointException as error:  # DCP gathers every rank's failure into one exception
            raise unwrap_checkpoint_error(error, path) from None


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
        """Checkpoints that were completed (have a marker), oldest first; not verified."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.glob("step_*") if p.name[5:].isdigit() and p.is_dir() and (p / _MARKER).is_file()]
        return sorted(found, key=lambda p: int(p.name[5:]))

    def strays(self) -> list[Path]:
        """Entries of ``root`` named like a checkpoint (``step_<N>``) that are not directories, or are
        links: no checkpoint, yet a save of step ``N`` or rotation would take them for one. Sorted."""
        if not self.root.is_dir():
            return []
        found = self.root.glob("step_*")
        return sorted(p for p in found if p.name[5:].isdigit() and (p.is_symlink() or not p.is_dir()))

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint, or None (not verified: see :meth:`latest_intact`)."""
        found = self.complete()
        return found[-1] if found else None

    def latest_intact(self) -> tuple[Optional[Path], list[str]]:
        """The newest checkpoint whose files all match their manifest (collective under torch.distributed).

        Returns:
            tuple[Optional[Path], list[str]]: that checkpoint (None when no intact one exists) and one
            line for each newer checkpoint passed over, saying why it was.
        """
        passed_over = []
        for path in reversed(self.complete()):
            reason = damage_on_every_rank(path)
            if reason is None:
                return path, passed_over
            passed_over.append(f"{path} is damaged: {reason}")
        return None, passed_over

    def set_aside_newer(self, step: int) -> list[Path]:
        """Move the complete checkpoints after ``step`` to ``<root>/abandoned/`` (rank 0 only).

        A run resumed from an older checkpoint starts a new trajectory: the newer checkpoints of
        the old one must not be kept by rotation (which keeps the newest) in place of the new
        run's, nor picked by ``resume=auto`` after a kill. Nothing is deleted.

        Returns:
            list[Path]: where each was moved.
        """
        moved = []
        for path in (p for p in self.complete() if int(p.name[5:]) > step):
            (self.root / "abandoned").mkdir(exist_ok=True)
            target = unused_path(self.root / "abandoned", path.name)
            os.replace(path, target)
            moved.append(target)
        return moved

    def _clean_leftovers(self) -> None:
        """Remove what killed saves and deletions left: ``.step_*.tmp`` and ``.step_*.deleting``."""
        for leftover in list(self.root.glob(".step_*.tmp")) + list(self.root.glob(".step_*.deleting")):
            shutil.rmtree(leftover, ignore_errors=True)

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        local_state: dict,
        *,
        texts: Optional[Mapping[str, str]] = None,
    ) -> Path:
        """Write checkpoint ``step`` (collective: every rank calls it).

        Args:
            step (int): the number of optimiser steps done.
            model (nn.Module): the (possibly DDP- or FSDP-wrapped) model.
            optimizer (torch.optim.Optimizer): its optimiser.
            local_state (dict): this rank's own state (tensors, numbers, strings, containers).
            texts (Optional[Mapping[str, str]]): text files rank 0 writes into the checkpoint by name
                (e.g. :data:`CONFIG`, the config it was trained under), in the manifest with the rest.

        Returns:
            Path: the complete checkpoint's directory.

        Raises:
            CheckpointWriteError: on every rank, if a rank's write failed (a full disk, a quota, a
                directory that went read-only): what was written of this checkpoint is removed, and the
                checkpoints written before stay complete.
        """
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f".step_{step:08d}.tmp"
        # Each phase ends with every rank's fault gathered (a barrier that also carries it): a rank whose
        # write failed alone raises, and the others, waiting for it, would hang until the process group's timeout.
        self._collective_phase(step, tmp, lambda: self._prepare(tmp) if _rank() == 0 else None)

        def write_parts() -> None:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_state, optim_state = get_state_dict(model, optimizer)
            with _single_process_ok():
                dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
            torch.save(local_state, tmp / f"rank{_rank()}.pt")
            fsync_path(
                tmp / f"rank{_rank()}.pt"
            )  # on the disk before the marker vouches for it (dcp.save syncs its own)
            for name, text in (texts or {}).items() if _rank() == 0 else ():
                (tmp / name).write_text(text)
                fsync_path(tmp / name)

        self._collective_phase(step, tmp, write_parts)
        self._collective_phase(step, tmp, lambda: self._complete(tmp, final, step) if _rank() == 0 else None)
        return final

    def _prepare(self, tmp: Path) -> None:
        """Rank 0, before a save: remove what killed saves left, and make the save's temporary directory."""
        self._clean_leftovers()
        tmp.mkdir(parents=True)

    def _complete(self, tmp: Path, final: Path, step: int) -> None:
        """Rank 0, once every rank has written its part: the marker, the rename, the rotation."""
        write_marker(tmp, step, _world_size())  # every file's digest, then the marker (synced)
        fsync_path(tmp)
        if final.exists():
            _discard(final)
        os.replace(tmp, final)
        # The checkpoint is complete from here on (resume=auto picks it): what fails after the rename is said as
        # a warning, not as a failed save, which would stop the run saying its files were removed.
        try:
            fsync_path(self.root)  # the rename: a power loss after it cannot bring the old name back
            for old in self.complete()[: -self.keep]:
                _discard(old)
        except OSError as error:
            print(
                f"warning: checkpoint {final} is complete, but after it was written {first_line(error)}: older "
                "checkpoints may be left beside it, or its rename not yet on the disk",
                file=sys.stderr,
            )

    def _collective_phase(self, step: int, tmp: Path, work: Callable[[], None]) -> None:
        """``work()`` on every rank, then every rank's fault gathered (collective); if any rank's failed,
        rank 0 removes ``tmp`` (the disk space a full disk needs back) and every rank raises: a rank's own
        refusal (a ValueError, say) as it is, a write that failed as :class:`CheckpointWriteError`."""
        from torch.distributed.checkpoint.api import CheckpointException

        fault, own = None, None
        try:
            work()
        except (Exception, CheckpointException) as error:  # (DCP's is a BaseException, every rank's failures in it)
            rank, first = next(iter(getattr(error, "failures", {}).items()), (_rank(), error))  # DCP's: by rank
            first = first[0] if isinstance(first, tuple) else first
            fault = f"rank {rank}: {type(first).__name__}: {first_line(first)}"
            own = None if isinstance(error, (OSError, CheckpointException)) else error
        faults = [fault]
        if dist.is_initialized():
            faults = [None] * dist.get_world_size()
            dist.all_gather_object(faults, fault)
        fault = next((f for f in faults if f is not None), None)
        if fault is None:
            return
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if own is not None:
            raise own
        latest = self.latest()
        kept = (
            f"the newest complete checkpoint, {latest}, is intact"
            if latest is not None
            else "no checkpoint is complete"
        )
        raise CheckpointWriteError(
            f"cannot write checkpoint step {step} in {self.root} ({fault}); what was written of it is removed and "
            f"{kept}: free space or fix the directory, then resume (training.resume=auto)"
        )

    def load(
        self,
        path: Union[str, os.PathLike],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        verified: bool = False,
        read_local: bool = True,
    ) -> dict:
        """Restore model and optimiser from checkpoint ``path``; return this rank's own state.

        Args:
            path (Union[str, os.PathLike]): a checkpoint directory.
            model (nn.Module): the model, wrapped as when saving.
            optimizer (torch.optim.Optimizer): its optimiser.
            verified (bool): the caller has just checked every digest (e.g. with
                :meth:`latest_intact`): skip reading the whole checkpoint a second time. The metadata
                allow-list and ``weights_only`` reading apply either way.
            read_local (bool): read this rank's own state; False when the caller has read it already
                (an empty dict is returned).

        Returns:
            dict: the ``local_state`` this rank saved (empty when the checkpoint was written by
            fewer ranks than there are now).

        Raises:
            CheckpointIntegrityError: if ``path`` is not a complete checkpoint, a file does not match
                the manifest written with it, or its metadata refers to anything but DCP's classes.
            ValueError: if the checkpoint lacks weights of ``model``.
        """
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        path = Path(path)
        reason = None if verified else damage_on_every_rank(path)
        if reason is not None:
            raise CheckpointIntegrityError(f"cannot resume from {path}: {reason}")
        saved = set(read_dcp_metadata(path).state_dict_metadata)
        # get_state_dict gives a fresh optimiser a state for every parameter, but a checkpoint holds
        # states only for parameters that had a gradient before it was written (e.g. not for a head
        # whose loss has not run yet). Those keep no state after loading, as in the saving run.
        model_state, optim_state = get_state_dict(model, optimizer)
        missing = sorted(k for k in model_state if f"model.{k}" not in saved)
        if missing:
            raise ValueError(f"checkpoint {path} lacks model weights {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        stateless = {fqn for fqn in optim_state["state"] if not any(k.startswith(f"optim.state.{fqn}.") for k in saved)}
        state = {"model": model_state, "optim": optim_state}
        _load_dcp(state, path)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        for name, param in model.named_parameters():
            if checkpoint_name(name).removeprefix("module.") in stateless:
                optimizer.state.pop(param, None)
        local = path / f"rank{_rank()}.pt"
        if not (read_local and local.is_file()):
            return {}
        with open(local, "rb") as file:
            try:
                check_zip_expansion(file, str(local))
            except ValueError as error:
                raise CheckpointIntegrityError(str(error)) from None
        return torch.load(local, weights_only=True)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (one line naming the directory, the rank and the reason); the
    checkpoints written before it are left complete."""


def checkpoint_step(path: Union[str, os.PathLike]) -> int:
    """The step a complete checkpoint was written at."""
    return int(read_marker(path)["step"])


def checkpoint_world_size(path: Union[str, os.PathLike]) -> int:
    """The number of ranks that wrote a complete checkpoint."""
    return int(read_marker(path)["world_size"])


def read_model_weights(path: Union[str, os.PathLike], *, verified: bool = False) -> dict[str, torch.Tensor]:
    """The full (unsharded) model weights of checkpoint ``path``, without its optimiser state: to evaluate
    a run at that step. Verified as a resume verifies it (every digest, DCP's metadata through the
    allow-list, no pickle run); the shards of every rank that wrote it (DDP's copies, FSDP's slices) are
    read into whole tensors, by DCP's own resharding. Not collective: one process reads it all.

    Args:
        path (Union[str, os.PathLike]): a ``step_<N>`` checkpoint directory.
        verified (bool): the caller has just checked every digest (:func:`damage`): skip reading the whole
            checkpoint a second time. The metadata allow-list and ``weights_only`` reading apply either way.

    Returns:
        dict[str, torch.Tensor]: the model's state dict (names as ``get_state_dict`` gives them, without
        a DDP or FSDP wrapper's prefix), on the CPU.

    Raises:
        CheckpointIntegrityError: if ``path`` is not a complete checkpoint, a file does not match its
            manifest, its metadata refers to anything but DCP's classes, or it holds no model tensors.
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = Path(path)
    reason = None if verified else damage(path)
    if reason is not None:
        raise CheckpointIntegrityError(f"cannot read {path}: {reason}")
    state = {}
    for key, entry in read_dcp_metadata(path).state_dict_metadata.items():
        if not key.startswith("model."):  # the optimiser's state is never read
            continue
        if not isinstance(entry, TensorStorageMetadata):
            raise CheckpointIntegrityError(f"cannot read {path}: its model entry {key!r} is not a tensor")
        state[key] = torch.empty(entry.size, dtype=entry.properties.dtype)  # whole: DCP fills it from every shard
    if not state:
        raise CheckpointIntegrityError(f"cannot read {path}: it holds no model weights")
    _load_dcp(state, path)
    return {key.removeprefix("model."): tensor for key, tensor in state.items()}


def export_model(model: nn.Module, path: Union[str, os.PathLike]) -> None:
    """Write the full (unsharded) model state dict to ``path`` as safetensors, atomically (collective).

    Args:
        model (nn.Module): the (possibly wrapped) model.
        path (Union[str, os.PathLike]): the ``.safetensors`` file written by rank 0.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: if ``path`` does not end in ``.safetensors`` (another suffix got a torch file) or
            is a directory — before anything is gathered or written.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    check_module("model", model)
    if Path(path).suffix != ".safetensors" or Path(path).is_dir():
        raise ValueError(f"path must be a .safetensors file path, got {os.fspath(path)!r}")
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if _rank() == 0:
        save_state_dict(state, path)
    barrier()


def _discard(path: Path) -> None:
    """Delete a checkpoint so that a kill midway never leaves a marker beside missing shards.

    The directory is first renamed out of the ``step_*`` namespace (atomic), then removed; a later
    save removes whatever a kill left of it. Anything else under that name (a file, a link) is no
    checkpoint of the run's: refused, never renamed (``rmtree`` would leave it, renamed, behind).

    Raises:
        ValueError: if ``path`` is not a directory, or is a link.
    """
    if path.is_symlink() or not path.is_dir():
        raise ValueError(f"{path}: expected a checkpoint directory to delete, got a file or link of that name")
    doomed = path.with_name(f".{path.name}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
