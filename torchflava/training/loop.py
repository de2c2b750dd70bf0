"""One training loop for every recipe: ``fit(model, step, data, training=..., optim=...)``.

A recipe brings a model, a step-indexed dataset and a step function; the loop knows nothing of the
model and does the rest:

* The step function runs the forward pass of one micro-batch and returns a :class:`StepOutput`:
  each loss summed over the items it averages (masked tokens, matched pairs, rows) and how many
  items each sum covers on this rank.
* The loop sums the counts over ranks, divides each sum by its global count, multiplies by the
  world size (DDP and FSDP average gradients over ranks), adds the losses up (their weights stay in
  the model) and backpropagates. The averaged gradient is then the one of the global-batch mean:
  N ranks reproduce one process, and model code knows nothing of ranks.
* Gradient accumulation averages the micro-batches' losses (each normalised as above; equal to one
  big batch when every micro-batch holds as many items of each loss), with DDP ``no_sync`` / FSDP2
  gradient sync on the last one only (FSDP2 with bf16 parameters reduce-scatters every micro-batch);
  bf16 autocast (one region per optimiser step, so each weight is cast to bf16 once a step, not once a
  micro-batch; under FSDP2 its bf16 parameters too; on a CPU without oneDNN's bf16 kernels, AVX2 only, its
  matmuls and attention as fp32 GEMMs of the bf16 operands: :mod:`torchflava.utils.precision`); FSDP's
  replicated-scalar gradient sync;
  clipping; a stop on a non-finite loss or gradient norm, naming the last good checkpoint; a hook
  after every optimiser step; a progress bar, ``metrics.jsonl`` and TensorBoard with samples/s
  (a record every ``training.log_every`` steps holds the mean loss of the steps since the last record,
  each named loss's mean over those of them that computed it, and the logged step's gradient norm
  before clipping, the lr its update used and its kind; the window's sums go into checkpoints, so a
  resumed run logs what the uninterrupted one does);
  checkpoints every ``training.checkpoint_every`` steps and at the end; exact resume; a stop on a
  scheduler's ``SIGTERM`` (or ``SIGUSR1``, Ctrl-C's ``SIGINT``): the step under way ends, agreed over ranks,
  is checkpointed, and :class:`~torchflava.training.preemption.Preempted` exits with status 75 for
  ``training.resume=auto`` to continue (see :mod:`torchflava.training.preemption`). A fresh run
  seeds torch's RNG (dropout) with ``training.seed`` before its first step; a resumed one restores it.
* Counts are checked with the step's losses: one that is negative, not finite, or 0 under a sum
  that is not 0 stops the run naming the loss (a loss absent from a step is 0 over 0).

Data: ``data[i]`` is this rank's share of micro-batch ``i``, a pure function of ``i`` (see
``torchflava.data.mixing``), and ``len(data) >= max_steps * grad_accumulation``. The data position
of a resumed run follows from its step, so a run also resumes on another number of ranks. An item
may carry ``skipped`` (the unusable samples met building it, as tuples) and ``kind`` (a name that is
logged): the loop checkpoints the former and returns them, distinct over ranks and resumes.

Streamed data (an ``IterableDataset``, e.g. ``torchflava.data.streaming``) has no length and no
index: its items come in order from the loader, and each carries a ``position``, a mapping (from a
stream's name to where it stands, as plain lists and numbers) that the loop merges, item after
item, into this rank's data position and saves in every checkpoint. A resumed run hands the saved
position to ``data.load_state_dict`` before the loader starts; such a run resumes on the number of
ranks it was started with.
"""

from collections import UserDict
from contextlib import nullcontext
import copy
import dataclasses
import functools
import inspect
import math
import numbers
import os
from pathlib import Path
import pickle
import sys
import time
import types
import typing
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence
import zlib

import torch
from torch import Tensor, nn
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from torchflava.modules.layers import TransformerEncoder, TransformerEncoderLayer, set_activation_checkpointing
from torchflava.training.checkpointing import (
    CONFIG,
    CheckpointManager,
    checkpoint_step,
    checkpoint_world_size,
    rng_state,
    rng_state_fault,
    set_rng_state,
)
from torchflava.training.config import ConfigError, absolute_config_paths, check_resume_config, config_yaml
from torchflava.training.distributed import (
    DistributedInfo,
    all_reduce_sum,
    barrier,
    collective_timeout_named,
    init_distributed,
    model_device,
    set_collective_timeout,
    sync_replicated_grads,
)
from torchflava.training.metrics import MetricsLogger
from torchflava.training.optim import checkpoint_name, clip_grad_norm, grad_norm, param_groups
from torchflava.training.preemption import PREEMPTED_EXIT_CODE, Preempted, StopSignals, ignore_stop_signals
from torchflava.training.run_lock import LocksUnsupported, RunDirectoryInUse, RunLock
from torchflava.training.schema import (
    NonFiniteLossError,
    OptimConfig,
    TrainingConfig,
    launch_world_size,
    precision_note,
    raise_on_failed_checks,
    resume_point,
    resumed_run_records,
    setup_training,
    training_checks,
)
from torchflava.utils.checkpoint import atomic_write, check_zip_expansion, first_line
from torchflava.utils.checks import check_module
from torchflava.utils.memory import keep_freed_memory
from torchflava.utils.precision import bf16_products_region, emulates_bf16_products


class StepOutput(NamedTuple):
    """What a step function returns for one micro-batch on this rank.

    Attributes:
        loss_sums (dict[str, Tensor]): each (weighted) loss summed over the items it averages on this
            rank: scalars that carry gradients.
        counts (dict[str, Tensor]): how many items each sum covers on this rank: scalars (or numbers)
            with the same keys. Every rank returns the same names.
    """

    loss_sums: dict[str, Tensor]
    counts: dict[str, Tensor]


StepFunction = Callable[[nn.Module, Any], StepOutput]


class FitResult(NamedTuple):
    """What :func:`fit` returns (on every rank).

    Attributes:
        step (int): optimiser steps done (``training.max_steps``).
        loss (Optional[float]): the global loss of the last step this call ran; None when a resumed
            run had no step left.
        skipped (list[tuple]): the distinct unusable samples the items reported over all ranks and
            the whole run (before a resume too).
        resumed_from (Optional[Path]): the checkpoint the run resumed from.
    """

    step: int
    loss: Optional[float]
    skipped: list[tuple]
    resumed_from: Optional[Path]


TIMEOUT_KEY = "training.collective_timeout_s"  # named by a collective that timed out in start_run or fit
# where a recipe's own collectives run (run_recipe names them too): rank0_value's broadcast, its last barrier
OUTSIDE_FIT = (
    "outside start_run and fit (before fit, e.g. while rank 0 alone read the texts a vocabulary is learnt from; "
    "or after it, e.g. while rank 0 wrote the export and report)"
)


def checkpoint_manager(training: TrainingConfig) -> CheckpointManager:
    """The checkpoints of the run in ``training.output_dir`` (``checkpoints/``)."""
    return CheckpointManager(Path(training.output_dir) / "checkpoints", keep=training.keep_checkpoints)


def resume_checkpoint(training: TrainingConfig) -> Optional[Path]:
    """The checkpoint the run resumes from under ``training.resume``; None for a fresh run.

    Call it before any work: it takes the run directory for this process (rank 0 holds
    ``<output_dir>/.run.lock`` until :func:`release_run_directory` or the process ends), so a second
    run in the same directory fails at once, and it checks that a run does not mix into another's.

    Raises:
        ConfigError: if another live run holds ``training.output_dir`` (naming its pid; where the file
            system refuses locks, a warning says the run goes on without one), if
            ``training.resume`` is none but the output directory holds checkpoints, if it is none or auto and
            the directory holds a finished run's ``model/`` or ``report.json`` but no checkpoint, if it names a
            directory that is not an intact checkpoint, or one past ``training.max_steps``; if
            ``checkpoints/`` holds a file or link named like a checkpoint (``step_<N>``); or if the system
            refuses to create ``training.output_dir``.
    """
    directory = Path(training.output_dir).resolve()
    if _rank() == 0 and directory not in _HELD:
        if directory.exists() and not directory.is_dir():
            raise ConfigError(f"key 'training.output_dir': expected a directory, got the file {str(directory)!r}")
        try:
            _HELD[directory] = RunLock(directory).acquire()
        except RunDirectoryInUse as error:
            raise ConfigError(f"key 'training.output_dir': {error}") from None
        except LocksUnsupported as error:  # the lock is a guard: a file system without locks still trains
            print(
                f"warning: {error.strerror}; this run goes on without the lock, so a second run started in "
                f"{directory} would not be refused",
                file=sys.stderr,
            )
        except OSError as error:  # (checked writable beforehand, yet refused: /proc, a full disk, a mount's own rules)
            raise ConfigError(
                f"key 'training.output_dir': expected a directory this process can create or write, got "
                f"{str(directory)!r} ({error.strerror or first_line(error)})"
            ) from None
    checkpoints = checkpoint_manager(training)
    strays = checkpoints.strays()
    if strays:  # a save of its step, or rotation, would rename it and leave it behind as .step_<N>.deleting
        raise ConfigError(
            f"key 'training.output_dir': expected only checkpoint directories named step_<N> in {checkpoints.root}, "
            f"got {len(strays)} file(s) or link(s) of such a name ({', '.join(str(p) for p in strays[:3])}); "
            "move them elsewhere"
        )
    resume_from = resume_point(checkpoints, training.resume)
    if resume_from is not None and checkpoint_step(resume_from) > training.max_steps:
        raise ConfigError(
            f"key 'training.max_steps': expected at least the step of the checkpoint resumed from, "
            f"{checkpoint_step(resume_from)} ({resume_from}), got {training.max_steps}"
        )
    return resume_from


def release_run_directory(training: TrainingConfig) -> None:
    """Give up the run directory :func:`resume_checkpoint` took (a no-op where none is held). A run that
    wrote nothing there (refused after taking it, e.g. for data that does not read) leaves it as it was:
    without the lock file, and gone if taking it created it."""
    lock = _HELD.pop(Path(training.output_dir).resolve(), None)
    if lock is not None:
        lock.release(tidy=True)


_HELD: dict[Path, RunLock] = {}  # run directories this process holds, by resolved path


class RunStart(NamedTuple):
    """What :func:`start_run` gives a recipe (and :func:`fit`).

    Attributes:
        info (DistributedInfo): this process's rank, world size and device.
        resume_from (Optional[Path]): the checkpoint to resume from.
        config (Optional[str]): the run's config as YAML, recorded in every checkpoint it writes.
        loop_states (Optional[list[dict]]): the training-loop states this rank resumes from, read and
            checked (see :func:`read_loop_states`).
    """

    info: DistributedInfo
    resume_from: Optional[Path]
    config: Optional[str] = None
    loop_states: Optional[list[dict]] = None


def start_run(config: Any, validate: Callable[[Any, int], None]) -> RunStart:
    """The start every recipe shares, before any work.

    It validates the whole config (with the launcher's world size), starts the process group, takes
    the run directory and finds the checkpoint to resume from. For a resumed run it also compares
    the config with the one the checkpoint was trained with (:func:`trained_config`), before the
    run's is rewritten: refused changes raise, applied ones are reported on stderr; and it reads and
    checks the checkpoint's training-loop states. :func:`fit` records the config in every checkpoint. A relative
    ``training.output_dir`` is made absolute first (``config.training`` a copy), as config.yaml records it; once
    validated, so are the data paths of its sections (in place: :func:`absolute_config_paths`).

    Args:
        config (Any): the recipe's config; ``config.training`` is a :class:`TrainingConfig`.
        validate (Callable[[Any, int], None]): the recipe's ``validate(config, world_size)``.

    Returns:
        RunStart: this process's rank, world size and device, and the checkpoint to resume from.

    Raises:
        ConfigError: from ``validate``, :func:`resume_checkpoint`, the config comparison (also when
            the checkpoint's config cannot be found) or :func:`read_loop_states`.
        CollectiveTimeout: naming ``training.collective_timeout_s``, if a collective of the resume's
            checks timed out waiting for another rank.
    """
    t = config.training
    if isinstance(t.output_dir, str) and t.output_dir and not os.path.isabs(t.output_dir):
        # recorded absolute, as the data paths are: config=<run>/config.yaml training.resume=auto from another
        # working directory resumes the run (a relative one started a new run there, without a word); a copy, so
        # the caller's TrainingConfig keeps what was typed
        t = config.training = dataclasses.replace(t, output_dir=os.path.join(os.getcwd(), t.output_dir))
    validate(config, launch_world_size())
    # relative data paths made absolute (as config.yaml records them): a resume elsewhere reads the same files
    absolute_config_paths(config, resumed_run_records(config.training, ("config.yaml",)))
    info = init_distributed(t.strategy, device=t.device, collective_timeout_s=t.collective_timeout_s)
    checking = lambda: "in start_run, checking the checkpoint resumed from"  # noqa: E731
    with collective_timeout_named(TIMEOUT_KEY, t.collective_timeout_s, where=checking):
        resume_from = resume_checkpoint(t)
        states = None
        if resume_from is not None:
            # training.resume may name another run's checkpoint, or one copied alone: a model or data that
            # differ from what it was trained with are refused here, before any work
            changes = check_resume_config(trained_config(resume_from), config)
            states = read_loop_states(resume_from)
            for change in changes if info.is_main else ():  # (every rank compared them: one says so)
                print(f"resume: {change} (applied from here on)", file=sys.stderr)
    return RunStart(info, resume_from, config_yaml(config), states)


def trained_config(checkpoint: Path) -> Path:
    """The ``config.yaml`` a checkpoint was trained with: the one it records (written and digested
    with it); for a checkpoint from before checkpoints recorded theirs, its run's
    (``<run>/checkpoints/step_<N>``: ``<run>/config.yaml``). When neither exists, the former: the
    comparison refuses a missing file (the config cannot be verified)."""
    recorded, run = checkpoint / CONFIG, checkpoint.parent.parent / "config.yaml"
    return run if not recorded.is_file() and run.is_file() else recorded


def read_loop_states(path: Path) -> list[dict]:
    """The training-loop states this rank resumes from in checkpoint ``path``, each checked to be what
    the loop writes: its own ``rank<R>.pt``; when another number of ranks wrote it, rank 0's (on rank 0
    every saved rank's). Collective: a fault found on any rank is raised on every rank.

    Raises:
        ConfigError: in one line naming the file and its fault (code in the pickle, not a dict, a part
            missing or malformed), before anything is loaded or written.
    """
    saved_world, step = checkpoint_world_size(path), checkpoint_step(path)
    ranks = [_rank()] if saved_world == _world_size() else range(saved_world) if _rank() == 0 else [0]
    states, fault = [], None
    for rank in ranks:
        state, fault = _read_loop_state(path / f"rank{rank}.pt", step)
        if fault is not None:
            fault = f"rank{rank}.pt {fault}"
            break
        states.append(state)
    faults = [fault]
    if dist.is_initialized():
        faults = [None] * dist.get_world_size()
        dist.all_gather_object(faults, fault)
    fault = next((f for f in faults if f is not None), None)
    if fault is not None:
        raise ConfigError(f"key 'training.resume': {path} does not load into this run: its {fault}")
    return states


def _read_loop_state(file: Path, step: int) -> tuple[Optional[dict], Optional[str]]:
    """The state :func:`_loop_state` wrote at ``step`` to ``file``, or why ``file`` does not hold one."""
    try:
        with open(file, "rb") as handle:  # (a compressed archive torch.load would allocate whole: a zip bomb)
            check_zip_expansion(handle, file.name)
    except ValueError as error:
        return None, f"does not read ({first_line(error).removeprefix(file.name + ': ')})"
    except OSError as error:
        return None, f"does not read ({type(error).__name__}: {first_line(error)})"
    try:
        state = torch.load(file, weights_only=True)
    except pickle.UnpicklingError:  # torch's message suggests weights_only=False: never that
        return None, "holds a value that is not plain data (it would need code to be unpickled)"
    except Exception as error:  # a truncated or garbled file: each reader's error types
        return None, f"does not read ({type(error).__name__}: {first_line(error)})"
    if not isinstance(state, dict):
        return None, f"holds a {type(state).__name__}, not the training loop's state (a dict)"
    missing = [key for key in ("step", "scheduler", "rng", "skipped") if key not in state]
    if missing:
        return None, f"lacks {missing}"
    if type(state["step"]) is not int or state["step"] != step:
        return None, f"says step {state['step']!r}, the checkpoint is of step {step}"
    scheduler = state["scheduler"]
    base_lrs = scheduler.get("base_lrs") if isinstance(scheduler, dict) else None
    if not (
        isinstance(base_lrs, list)
        and base_lrs
        and all(isinstance(lr, (int, float)) and not isinstance(lr, bool) for lr in base_lrs)
        and type(scheduler.get("last_epoch")) is int
    ):
        return None, "scheduler is not a learning-rate schedule's state (base_lrs and last_epoch)"
    groups = state.get("groups", [[[], 1.0]] * len(base_lrs))
    if not (
        isinstance(groups, list)
        and len(groups) == len(base_lrs)
        and all(isinstance(g, list) and len(g) == 2 and isinstance(g[0], list) for g in groups)
    ):
        return None, f"groups are not one [names, multiplier] per scheduled group ({len(base_lrs)})"
    if not isinstance(state["skipped"], list) or not all(isinstance(s, (list, tuple)) for s in state["skipped"]):
        return None, f"skipped is not a list of unusable samples, got {type(state['skipped']).__name__}"
    if not isinstance(state.get("data", {}), dict):
        return None, f"data is not a data position (a dict), got {type(state['data']).__name__}"
    schedule = state.get("schedule", {})
    if not (
        isinstance(schedule, dict)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in schedule.values())
    ):
        return None, "schedule is not the settings of a learning-rate schedule (key -> number)"
    accumulation = state.get("grad_accumulation", 1)
    if type(accumulation) is not int or accumulation < 1:
        return None, f"grad_accumulation is not a number of micro-batches (an int >= 1), got {accumulation!r}"
    numerics = state.get("numerics", {})
    if not (isinstance(numerics, dict) and all(isinstance(v, str) for v in numerics.values())):
        return None, "numerics is not the precision settings it was trained with (key -> text)"
    fault = None if "window" not in state else _window_fault(state["window"])
    if fault is not None:
        return None, f"window {fault}"
    fault = rng_state_fault(state["rng"])
    return (state, None) if fault is None else (None, f"rng is not the random states it saves ({fault})")


def holds_run_directory(main: Callable[[Any], dict]) -> Callable[[Any], dict]:
    """Decorate a recipe's ``main(config)`` so it gives up the run directory however it ends."""

    @functools.wraps(main)
    def wrapper(config: Any) -> dict:
        try:
            return main(config)
        finally:
            release_run_directory(config.training)

    return wrapper


def fit(
    model: nn.Module,
    step: StepFunction,
    data: Dataset,
    *,
    training: TrainingConfig,
    optim: OptimConfig,
    after_step: Optional[Callable[..., None]] = None,
    shard_layers: Sequence[type] = (TransformerEncoderLayer,),
    num_workers: int = 0,
    description: str = "training",
    start: Optional[RunStart] = None,
    run_files: Optional[Callable[[Path], None]] = None,
    find_unused_parameters: bool = True,
) -> FitResult:
    """Train ``model`` for ``training.max_steps`` optimiser steps (collective: every rank calls it).

    Args:
        model (nn.Module): the model, on this rank's device (the process group, if any, started).
            It is wrapped here for ``training.strategy`` (FSDP2 shards it in place) and its
            activation checkpointing is set from ``training.activation_checkpointing``.
        step (StepFunction): ``step(wrapped_model, item) -> StepOutput`` for one micro-batch; the
            item is ``data[i]`` with its tensors on the model's device.
        data (Dataset): ``data[i]`` = this rank's share of micro-batch ``i``; or an
            ``IterableDataset`` of them with positions and ``load_state_dict`` (streamed, see above).
        training (TrainingConfig): the loop's settings.
        optim (OptimConfig): AdamW, schedule and clipping settings.
        after_step (Optional[Callable[..., None]]): called after every optimiser step (e.g. a clamp),
            with the step just taken (1-based) when it takes an argument (e.g. an EMA's schedule).
        shard_layers (Sequence[type]): the model's repeated blocks: FSDP2 shards them one by one,
            and ``training.compile`` compiles their forward one by one (torchtitan's choice: the blocks
            of one encoder share a graph, the model's data-dependent glue stays eager; see
            :func:`compile_blocks`). A model with none of them has its whole forward compiled.
        num_workers (int): data-loader worker processes.
        description (str): the progress bar's label.
        start (Optional[RunStart]): what the recipe's :func:`start_run` found (its resume point is
            used as is, not looked up and verified again); None looks it up here. Its config is
            written to ``<output_dir>/config.yaml`` (rank 0) once every check of a resume has passed.
            Without it, a resume with another ``optim.lr``, ``betas``, ``eps`` or ``weight_decay`` than
            the checkpoint's continues with ``optim``'s, each change said in one line on stderr
            (``resume: optim.lr: 0.05 -> 0.01 ...``, as start_run says it), and the schedule's shape is
            refused if changed (see Raises).
        run_files (Optional[Callable[[Path], None]]): writes the recipe's own files into the run
            directory it is given (e.g. a learnt vocabulary), on rank 0, at that same point: after
            the checkpoint resumed from has loaded into the model, before the loop writes anything.
            A recipe writes nothing there itself before ``fit``, so that a refused resume (a
            checkpoint that does not load) leaves the directory as it was.
        find_unused_parameters (bool): DDP's search, after every backward, for the trainable parameters
            that got no gradient (needed where a step leaves some unused, as FLAVA's heads for a batch
            without their loss). False where every trainable parameter gets a gradient every micro-batch:
            DDP then skips its per-step search; a parameter without one makes DDP raise at the next step.
            Frozen parameters (``requires_grad`` False) are not DDP's to reduce either way. A step may call the
            model more than once (a captioning and a matching forward): with the search, it runs from the
            step's loss, so that a part only an earlier call used is not taken for unused. Ignored under
            other strategies than ``ddp``.

    Returns:
        FitResult: final step and loss, unusable samples, the checkpoint resumed from.

    Raises:
        TypeError: before any work, if ``model`` is no module, ``step`` not callable, ``training`` or
            ``optim`` not the dataclass named, ``find_unused_parameters`` not a bool, or ``data`` neither
            indexable with a length nor an ``IterableDataset`` with ``load_state_dict`` (a ``DataLoader``:
            pass its dataset of micro-batches); if ``after_step`` is not callable as ``hook()`` or ``hook(step)``,
            ``shard_layers`` is not a sequence of module classes, ``num_workers`` not an int, ``start`` not a
            :class:`RunStart` or ``run_files`` not callable.
        ValueError: if ``num_workers`` is negative, ``data`` is shorter than ``max_steps * grad_accumulation``,
            ``model`` has no parameter that requires grad, or a step output is malformed; ConfigError (a
            ValueError) naming the key if ``training`` or ``optim`` holds a bad value (the checks a recipe's
            ``validate`` runs), or
            ``training.activation_checkpointing`` is set for a model without a ``TransformerEncoder``, or
            ``training.device`` is ``cpu`` or ``cuda`` and the model's parameters are elsewhere.
        ConfigError: as :func:`resume_checkpoint`; without ``start``, a resume whose checkpoint records
            another ``training.max_steps``, ``optim.warmup_steps`` or ``optim.min_lr_ratio`` (the schedule's
            shape: start_run compares configs and lets a recipe change them); a resume with another
            ``training.grad_accumulation`` (the data resumes at micro-batch step x grad_accumulation); or a streamed
            run resumed on other ranks or loader workers than it was started with.
        NonFiniteLossError: if a loss or gradient norm is NaN or infinite (no step is taken with it).
        CollectiveTimeout: (a RuntimeError) naming ``training.collective_timeout_s`` and what the run was
            doing (setting up, step N, the checkpoint of step N, the end) if this rank waited past it
            (torch's default when null) in a collective for another rank (Gloo; NCCL's watchdog aborts the
            process instead).
        RankLost: (a RuntimeError) saying what the run was doing, if a collective failed because another rank
            left it (Gloo: it exited, crashed or was killed; its own error says why).
        Preempted: (a ``SystemExit``, status 75) on every rank, after the checkpoint of the step during or
            after whose loss reduction a rank received ``SIGTERM``, ``SIGUSR1`` or ``SIGINT`` (those still at
            their default handlers while ``fit`` runs; a repeat within 2 s is the same stop, a later one acts
            at once); also for a signal in the last step or its checkpoint, once that checkpoint is written
            (the export and evaluation that follow ``fit`` are then the resumed job's).
    """
    _check_fit_arguments(model, step, data, training, optim)
    if not isinstance(find_unused_parameters, bool):
        raise TypeError(f"find_unused_parameters must be a bool, got {type(find_unused_parameters).__name__}")
    shard_layers = _check_fit_options(after_step, shard_layers, num_workers, start, run_files)
    t = training
    raise_on_failed_checks(_type_checks("training", t) + _type_checks("optim", optim))  # (as load_config's types)
    t, optim = _plain_numbers(t), _plain_numbers(optim)  # (np.int64 max_steps: Python's int from here on)
    raise_on_failed_checks(training_checks(t, optim, _world_size()))  # as a recipe's validate does
    accumulation = t.grad_accumulation
    if not any(p.requires_grad for p in model.parameters()):  # (it failed at the first step as a 'detached?' loss)
        raise ValueError(
            f"model: expected parameters to train (requires_grad True), got {type(model).__name__} with none"
        )
    where = model_device(model)  # where fit trains (training.device was read by the recipes alone)
    if t.device != "auto" and where.type != t.device:
        raise ConfigError(
            f"key 'training.device': expected the model's parameters on {t.device!r}, got them on {str(where)!r}: "
            f"move the model there before fit (model.to({t.device!r})), or set training.device to auto"
        )
    if t.activation_checkpointing != "none" and not any(isinstance(m, TransformerEncoder) for m in model.modules()):
        raise ConfigError(  # (set_activation_checkpointing's ValueError named no key, after the directory was taken)
            f"key 'training.activation_checkpointing': expected a model that holds a TransformerEncoder (the stacks "
            f"{t.activation_checkpointing!r} applies to), got {type(model).__name__}, which holds none; set it to none"
        )
    streamed = isinstance(data, IterableDataset)
    if not streamed and len(data) < t.max_steps * accumulation:
        raise ValueError(
            f"data: expected at least max_steps x grad_accumulation = {t.max_steps * accumulation} "
            f"micro-batches, got {len(data)}"
        )
    # A scheduler's SIGTERM (or SIGUSR1, Ctrl-C's SIGINT) is only recorded from here on; read with a step's
    # losses, over every rank, it stops the run after that step, checkpointed (torchflava.training.preemption).
    # (the process group may have been started without the run's timeout: by the caller, not start_run)
    set_collective_timeout(t.collective_timeout_s)
    # what the run is doing, for a collective that times out: which step, or which phase around the steps
    phase = ["while fit set up the run (resume checks, model wrapping, the ranks' first barrier)"]
    timeouts = collective_timeout_named(TIMEOUT_KEY, t.collective_timeout_s, where=lambda: phase[0])
    with StopSignals() as signals, timeouts:
        return _fit(
            model,
            step,
            data,
            t,
            optim,
            after_step,
            shard_layers,
            num_workers,
            description,
            start,
            run_files,
            signals,
            phase,
            find_unused_parameters,
        )


def _fit(
    model: nn.Module,
    step: StepFunction,
    data: Dataset,
    t: TrainingConfig,
    optim: OptimConfig,
    after_step: Optional[Callable[..., None]],
    shard_layers: Sequence[type],
    num_workers: int,
    description: str,
    start: Optional[RunStart],
    run_files: Optional[Callable[[Path], None]],
    signals: StopSignals,
    phase: list[str],
    find_unused_parameters: bool,
) -> FitResult:
    """:func:`fit` once its arguments are checked, with the stop signals recorded in ``signals``; ``phase[0]``
    says what it is doing (for a collective that times out)."""
    accumulation = t.grad_accumulation
    streamed = isinstance(data, IterableDataset)
    if t.threads is not None:
        torch.set_num_threads(t.threads)
    if t.keep_freed_memory:
        keep_freed_memory()  # fewer page faults in every step (torchflava.utils.memory); no-op off glibc
    checkpoints = checkpoint_manager(t)
    recorded = None if start is None or start.config is None else {CONFIG: start.config}
    resume_from = resume_checkpoint(t) if start is None else start.resume_from
    states = None if start is None else start.loop_states
    if resume_from is not None and states is None:
        states = read_loop_states(resume_from)
    compared = start is not None  # start_run compared the configs: a recipe's resume may change the schedule
    if resume_from is not None:  # what the saved loop state alone refuses, before the model is wrapped or loaded
        if not compared:
            _check_schedule(Path(resume_from), states[0], _schedule(t, optim))
        _check_accumulation(Path(resume_from), states[0], accumulation)
    if t.activation_checkpointing != "none":
        set_activation_checkpointing(model, t.activation_checkpointing)
    if t.compile:
        compile_blocks(model, shard_layers)
    device = model_device(model)
    wrapped, optimizer, scheduler, autocast = setup_training(
        model, t, optim, device=device, layer_types=shard_layers, find_unused_parameters=find_unused_parameters
    )
    start, skipped, position, last_saved, window = 0, [], {}, resume_from, _Window()
    if resume_from is not None:
        start, skipped, position = _resume(
            checkpoints, resume_from, states, wrapped, optimizer, scheduler, streamed=streamed
        )
        window = _Window.from_state(states[0].get("window"))  # global values: rank 0's, as every rank's
        if streamed:  # checked before anything in the run directory is moved or rewritten
            _restore_position(data, position, resume_from)
    met = set(skipped)  # each unusable sample once: one met every epoch would grow the checkpoint each time
    # Every refusal is behind us: the run directory now describes this run.
    if _rank() == 0:
        if recorded is not None:  # the config start_run compared and every checkpoint records
            atomic_write(Path(t.output_dir) / "config.yaml", lambda tmp: Path(tmp).write_text(recorded[CONFIG]))
        if run_files is not None:
            run_files(Path(t.output_dir))
    # Checkpoints past the start: an abandoned trajectory's, or damaged ones resume=auto passed over (a
    # fresh run finds no others). Out of rotation's and auto's way, so both see only this run's; kept.
    abandoned = []
    if _rank() == 0:
        since = "this fresh run's start" if resume_from is None else str(resume_from)
        abandoned = checkpoints.set_aside_newer(start)
        for moved in abandoned:
            print(f"resume: {moved.name} is newer than {since}; moved to {moved.parent}", file=sys.stderr)
    barrier()
    if resume_from is not None:
        changes = _apply_optim_config(optimizer, scheduler, optim, model)
        if not compared and _rank() == 0:  # (start_run reported them, from the configs)
            for change in changes:
                print(
                    f"resume: {change} (applied from here on; {resume_from} was trained with the former)",
                    file=sys.stderr,
                )
        if _rank() == 0:  # (start_run allows strategy changes: they said nothing of bf16's two kinds)
            for change in _numerics_changes(states[0].get("numerics"), t):
                print(f"resume: {change}; {resume_from} was trained with the former", file=sys.stderr)
    is_main = _rank() == 0
    logger = progress = None
    if is_main:
        # An abandoned trajectory's records (after a resume from an older checkpoint, or a fresh start over
        # damaged ones) go where its checkpoints went. Resuming a killed run, or restarting one killed
        # before its first checkpoint, drops only records of steps about to be logged again.
        logger = MetricsLogger(
            Path(t.output_dir) / "metrics.jsonl",
            resume_step=start if resume_from is not None else None,
            tensorboard_dir=Path(t.output_dir) / "tensorboard" if t.tensorboard else None,
            set_aside=checkpoints.root / "abandoned" if abandoned else None,
        )
        if logger.set_aside_file is not None:
            print(f"metrics: the earlier records not continued here moved to {logger.set_aside_file}", file=sys.stderr)
        if (note := precision_note(t, device)) is not None:
            print(note, file=sys.stderr)
        if t.progress_bar and start < t.max_steps:
            from tqdm import tqdm

            progress = tqdm(total=t.max_steps, initial=start, desc=description, dynamic_ncols=True)
    items = iter(_loader(data, start * accumulation, num_workers))
    forwards = [0]  # calls of the wrapped model's forward in a step (DDP's sync runs through it)
    if t.strategy == "ddp":
        wrapped.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    last_time, last_step, loss = time.perf_counter(), start, None

    def micro_batch(index: int) -> tuple[Tensor, dict, dict, dict, Optional[str], Tensor]:
        try:
            item = _to_device(next(items), device)
        except StopIteration:  # (a stream that ran dry: torch's bare StopIteration() left fit without a word)
            raise ValueError(
                f"data: expected a stream of at least (max_steps - {start}) x grad_accumulation = "
                f"{(t.max_steps - start) * accumulation} micro-batches from step {start + 1} on, got one that ended "
                f"after {(done - 1 - start) * accumulation + index} (in step {done})"
            ) from None
        for entry in map(tuple, getattr(item, "skipped", ())):
            if entry not in met:
                met.add(entry)
                skipped.append(entry)
        position.update(getattr(item, "position", None) or {})
        sync = index == accumulation - 1
        if t.strategy == "fsdp":
            # bf16 parameters reduce-scatter every micro-batch: FSDP2 accumulates skipped ones' gradients in fp32,
            # and a parameter first used in the last micro-batch then brings a bf16 one into the same
            # reduce-scatter ("expects uniform gradient dtype": FLAVA's heads, unused by some micro-batches)
            model.set_requires_gradient_sync(sync or t.precision == "bf16")
        with wrapped.no_sync() if t.strategy == "ddp" and not sync else nullcontext():
            forwards[0] = 0
            out = step(wrapped, item)
            if t.strategy == "ddp" and forwards[0] == 0:  # (each rank's weights then drifted apart, silently)
                raise ValueError(
                    "step: under training.strategy=ddp a step must call the model it is given (its forward, "
                    "model(...): DDP averages the gradients over ranks through it), got one that did not (e.g. it "
                    "called model.module or its parts directly); give the model a forward that the step calls"
                )
            total, means, counted, invalid, stopping = _global_loss(out, device, stop=signals.received)
        return total / accumulation, means, counted, invalid, getattr(item, "kind", None), stopping

    # One autocast region per optimiser step, around its micro-batches' forwards: autocast keeps the bf16
    # copy of each weight it casts until the region ends, so the weights are cast once a step rather than
    # once a micro-batch (activation checkpointing's recomputations reuse them too). The backwards run with
    # autocast off, in a region of their own inside it, except the last micro-batch's: it runs after the
    # region, so its weight copies are freed as it goes. The copies stay between micro-batches: ViT-B/16,
    # 4 micro-batches of 8, measured 1.035x the speed at ~3% more peak RSS (benchmarks/README.md).
    no_autocast = torch.autocast(device.type, enabled=False)
    # Where bf16 has no fast kernels (a CPU without AVX-512), its products run as fp32 GEMMs of the bf16
    # operands, rounded to bf16 (torchflava.utils.precision): forwards and backwards alike.
    emulated = emulates_bf16_products(device, t.precision, compiled=t.compile)
    takes_step = after_step is not None and _takes_an_argument(after_step)
    if resume_from is None:
        torch.manual_seed(t.seed)  # dropout and any other draw of torch's RNG; a resumed run restores it
    try:
        for done in range(start + 1, t.max_steps + 1):
            phase[0] = f"in step {done} (its forward, backward and the reduction of its losses and gradients)"
            wrapped.train()
            parts: dict[str, Tensor] = {}
            invalid_counts: dict[str, Tensor] = {}
            counted: dict[str, Tensor] = {}  # how many micro-batches of the step computed the loss (a count > 0)
            with bf16_products_region(emulated):  # (bf16 products as fp32 GEMMs where bf16 is slow: above)
                with autocast:
                    for index in range(accumulation):
                        loss_part, means, counts, invalid, kind, stopping = micro_batch(index)
                        for name, value in means.items():
                            parts[name] = parts.get(name, 0.0) + value / accumulation
                            counted[name] = counted.get(name, 0.0) + counts[name].float()
                        for name, flag in invalid.items():  # "": the ranks named different losses
                            invalid_counts[name] = invalid_counts.get(name, False) | flag
                        if index < accumulation - 1:
                            with no_autocast:
                                loss_part.backward()
                if t.strategy == "ddp" and find_unused_parameters and forwards[0] > 1:
                    # DDP searched for unused parameters from each call's outputs, the last call's search counting: a
                    # parameter an earlier call used and the last did not (a BLIP step's matching head, after its
                    # captioning call) was marked unused, then got its gradient, and DDP raised ("marked as ready
                    # twice"). Searched again from the loss, which every call of the step reaches.
                    wrapped.reducer.prepare_for_backward([loss_part])
                loss_part.backward()
            sync_replicated_grads(model)
            # the gradient norm, clipped or not: a non-finite one stops the run before the step
            if optim.clip_grad_norm:
                norm = clip_grad_norm(model.parameters(), optim.clip_grad_norm)
            else:
                norm = grad_norm(p.grad for p in model.parameters() if p.grad is not None)
            flags = [*(flag.float() for flag in invalid_counts.values()), *(counted[n] for n in parts)]
            stacked = torch.stack([*parts.values(), *flags, stopping.float()]).cpu()
            stacked, flags = stacked[: len(parts)], stacked[len(parts) :].tolist()  # one device read
            stop = bool(flags.pop())  # (the last micro-batch's: every rank reads the same)
            flags, computed = flags[: len(invalid_counts)], flags[len(invalid_counts) :]
            if any(flags):
                wrong = [name for name, flag in zip(invalid_counts, flags) if flag]
                if "" in wrong:
                    raise ValueError(
                        f"step output: expected every rank to name the same losses at step {done}, this rank named "
                        f"{sorted(parts)} and another differs (a loss absent on a rank is a sum of 0 over a count of 0)"
                    )
                raise ValueError(
                    f"step output: counts of {wrong} at step {done} must be finite and >= 0, and 0 only under a sum of 0"
                )
            values, loss = dict(zip(parts, stacked.tolist())), float(stacked.sum())
            if not math.isfinite(loss) or not math.isfinite(float(norm)):
                earlier = [p for p in checkpoints.complete() if int(p.name.removeprefix("step_")) < done - 1]
                message = _non_finite_message(
                    loss, norm, done, kind, values, last_saved, earlier[-1] if earlier else None
                )
                raise NonFiniteLossError(message)
            # each loss's mean over the micro-batches and steps that computed it: one absent from a micro-batch (0
            # over 0, or not named: FLAVA draws a data kind per micro-batch) is left out, not averaged in as a 0
            window.add(
                loss,
                {
                    name: value if n == accumulation else value * accumulation / n
                    for (name, value), n in zip(values.items(), computed)
                    if n
                },
            )
            lr = float(optimizer.param_groups[0]["lr"])  # this step's (multiplier 1), logged with its loss
            optimizer.step()
            scheduler.step()  # the next step's lr: not this record's
            optimizer.zero_grad(set_to_none=True)
            if after_step is not None:
                after_step(done) if takes_step else after_step()
            if progress is not None:
                progress.update(1)
            if done % t.log_every == 0 or done == t.max_steps:
                now = time.perf_counter()
                samples_per_s = (done - last_step) * t.global_batch_size / max(now - last_time, 1e-9)
                last_time, last_step = now, done
                record = window.record()  # the mean loss since the last record (and each named loss's)
                window = _Window()
                if kind is not None:
                    record["kind"] = kind
                record["lr"] = lr
                record["grad_norm"] = float(norm)
                record["samples_per_s"] = samples_per_s
                if logger is not None:
                    logger.log(done, record)
                if progress is not None:
                    progress.set_postfix(loss=f"{record['loss']:.3f}", samples_per_s=f"{samples_per_s:.0f}")
            if done % t.checkpoint_every == 0 or done == t.max_steps or stop:
                phase[0] = f"writing the checkpoint of step {done}"
                state = _loop_state(done, optimizer, scheduler, skipped, position, window, _schedule(t, optim), t)
                last_saved = checkpoints.save(done, wrapped, optimizer, state, texts=recorded)
            if stop:
                raise _preempted(done, last_saved, signals.received)
        # A signal after the last step's losses were reduced (during its checkpoint, say) came to some ranks
        # alone: agreed here, once, it stops every rank before the export and evaluation that follow.
        phase[0] = f"after step {t.max_steps}, agreeing whether a rank received a stop signal"
        if bool(all_reduce_sum(torch.tensor([float(signals.received is not None)], device=device)) > 0):
            raise _preempted(t.max_steps, last_saved, signals.received)
    finally:
        if progress is not None:
            progress.close()
        if logger is not None:
            logger.close()
        _close_loader(items)
    phase[0] = "at the end of fit, gathering every rank's unusable samples"
    return FitResult(t.max_steps, loss, _distinct(skipped), resume_from)


def _close_loader(items: Iterator) -> None:
    """Stop reading the data now, on every way out of :func:`fit`.

    Without workers ``items`` is a generator: closing it closes what the data holds open (a stream's
    shard command is killed; left to the garbage collector, it could outlive the stopped run). With
    workers, torch's shutdown asks them to stop and then sends ``SIGTERM``, which they ignore
    (:func:`~torchflava.training.preemption.ignore_stop_signals`), so the workers still alive after it
    (one in the middle of a slow read) are killed: a worker left behind kept the process from exiting.
    torch has no public way to shut a loader's iterator down or to name its workers, so this reads its
    private ``_shutdown_workers`` (it also stops the pin-memory thread and the queues' feeders; idempotent, and
    also after persistent workers' iterator ran out) and ``_workers``: only the loader's own processes are
    killed, never another child of the process (a user's pool, an upload started by a hook).
    """
    if inspect.isgenerator(items):
        items.close()
        return
    shutdown = getattr(items, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    for worker in getattr(items, "_workers", ()):
        if worker.is_alive():
            worker.kill()
            worker.join()


def _check_fit_arguments(model: object, step: object, data: object, training: object, optim: object) -> None:
    """TypeError naming the first argument of :func:`fit` that is not of the kind it takes: each failed
    only later, inside torch or the loop (``'DataLoader' object is not subscriptable``, ``'dict' object has
    no attribute 'grad_accumulation'``), after the run directory was taken."""
    check_module("model", model)
    if not callable(step):
        raise TypeError(f"step must be a function step(model, item) -> StepOutput, got {type(step).__name__}")
    for name, value, kind in (("training", training, "a TrainingConfig"), ("optim", optim, "an OptimConfig")):
        if not isinstance(value, TrainingConfig if name == "training" else OptimConfig):
            raise TypeError(f"{name} must be {kind}, got {type(value).__name__}")
    if isinstance(data, DataLoader):  # the loop makes the loader itself (in order, from the resumed step)
        raise TypeError(
            "data must be a dataset of micro-batches (data[i] = micro-batch i), got a DataLoader: pass the "
            "dataset it would batch, each item a whole micro-batch (fit loads the items in order itself)"
        )
    if isinstance(data, IterableDataset):
        if not callable(getattr(data, "load_state_dict", None)):  # a resumed run restarts the stream with it
            raise TypeError(
                f"data ({type(data).__name__}) is an IterableDataset without load_state_dict(position): a streamed "
                "dataset must restart where a checkpoint left it (see torchflava.data.streaming), or give fit "
                "a step-indexed dataset (data[i], len(data))"
            )
    elif not (callable(getattr(data, "__getitem__", None)) and callable(getattr(data, "__len__", None))):
        raise TypeError(
            f"data must be a step-indexed dataset (data[i] and len(data)) or a streamed IterableDataset, "
            f"got {type(data).__name__}"
        )


def _check_fit_options(
    after_step: object, shard_layers: object, num_workers: object, start: object, run_files: object
) -> tuple[type, ...]:
    """TypeError or ValueError naming the first optional argument of :func:`fit` it cannot use, before any work
    (an ``after_step`` that is no function, or needs two arguments, failed after the first optimiser step; a
    ``run_files`` or ``start`` of the wrong kind, or ``num_workers=-1``, after the run directory was taken, in
    Python's or torch's words); ``shard_layers`` as a tuple (a generator read once)."""
    if after_step is not None:
        if not callable(after_step):
            raise TypeError(
                f"after_step must be a function called after every optimiser step, as hook() or hook(step), got "
                f"{type(after_step).__name__}"
            )
        try:
            parameters = list(inspect.signature(after_step).parameters.values())
        except (TypeError, ValueError):  # a builtin without a signature: trusted
            parameters = []
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        required = [p for p in parameters if p.default is inspect.Parameter.empty]
        needs = [p.name for p in required if p.kind in positional][1:] + [
            p.name for p in required if p.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        if needs:
            raise TypeError(
                f"after_step must be callable as hook() or hook(step), got one that also requires {', '.join(needs)}"
            )
    if isinstance(shard_layers, (str, bytes, type)) or not isinstance(shard_layers, Iterable):
        got = (
            f"the class {shard_layers.__name__} alone"
            if isinstance(shard_layers, type)
            else type(shard_layers).__name__
        )
        raise TypeError(
            f"shard_layers must be a sequence of module classes, e.g. (TransformerEncoderLayer,), got {got}"
        )
    shard_layers = tuple(shard_layers)
    odd = [kind for kind in shard_layers if not (isinstance(kind, type) and issubclass(kind, nn.Module))]
    if odd:
        raise TypeError(f"shard_layers must be a sequence of module classes, got {odd[0]!r} among them")
    if isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral):
        raise TypeError(f"num_workers must be an int >= 0, got {type(num_workers).__name__} {num_workers!r}")
    if num_workers < 0:
        raise ValueError(
            f"num_workers must be an int >= 0 (0: the items are read in this process), got {num_workers!r}"
        )
    if start is not None and not isinstance(start, RunStart):
        raise TypeError(f"start must be the RunStart start_run returns, or None, got {type(start).__name__}")
    if run_files is not None and not callable(run_files):
        raise TypeError(f"run_files must be a function run_files(directory), or None, got {type(run_files).__name__}")
    return shard_layers


def _type_checks(section: str, config: Any) -> list[tuple]:
    """A check per field of the dataclass ``config`` that its value is of the annotated type, for
    :func:`raise_on_failed_checks` (named ``<section>.<field>``). A recipe's config is typed by
    ``load_config``; one built in Python is not: ``max_steps=1e4`` (a float) failed after the run
    directory was taken (``'float' object cannot be interpreted as an integer``), ``lr="1e-3"`` inside a
    comparison, and ``log_every=1.5`` logged only at multiples of 3, silently."""
    try:
        hints = typing.get_type_hints(type(config))
    except (NameError, TypeError):  # a subclass annotated with names that do not resolve: trusted
        hints = {}
    checks = []
    for field in dataclasses.fields(config):
        value, kind = getattr(config, field.name), hints.get(field.name)
        if kind is not None:
            expected = _type_name(kind)
            checks.append((_is_of_type(value, kind), f"{section}.{field.name}", expected, value))
    return checks


def _is_of_type(value: Any, kind: Any) -> bool:
    """Whether ``value`` is of the config annotation ``kind`` (any integer, numpy's included, is an int;
    any real number is a float; no bool is a number; a path is text; a tuple is a list); True for
    annotations this does not know (trusted)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union:
        return any(_is_of_type(value, arg) for arg in args)
    if kind is type(None):
        return value is None
    if kind in (int, float):  # (np.int64(6) from a user's arithmetic is an int; 6.5 is not)
        return isinstance(value, numbers.Integral if kind is int else numbers.Real) and not isinstance(value, bool)
    if kind in (bool, str):
        return isinstance(value, kind) or (kind is str and isinstance(value, os.PathLike))
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_is_of_type(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, Mapping) and all(
            _is_of_type(k, args[0]) and _is_of_type(v, args[1]) for k, v in value.items()
        )
    return True


def _plain_numbers(config: Any) -> Any:
    """A copy of the dataclass ``config`` (already type-checked) with each number that is not Python's
    own (a numpy scalar) as the int or float of the same value, in lists and dicts too: the schedule,
    the loop's JSON state and the optimiser then hold what a recipe's config would."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return type(value)(plain(v) for v in value)
        if isinstance(value, Mapping):
            return {plain(k): plain(v) for k, v in value.items()}
        if isinstance(value, bool) or type(value) in (int, float):
            return value
        if isinstance(value, numbers.Integral):
            return int(value)
        return float(value) if isinstance(value, numbers.Real) else value

    return dataclasses.replace(
        config, **{f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}
    )


def _type_name(kind: Any) -> str:
    """``kind`` as a message says it: ``an int``, ``null or a float``, ``a list of float``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union:
        return " or ".join("null" if arg is type(None) else _type_name(arg) for arg in args)
    if origin in (list, dict):
        return f"a {origin.__name__} of {', '.join(getattr(arg, '__name__', str(arg)) for arg in args)}"
    name = getattr(kind, "__name__", str(kind))
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _takes_an_argument(hook: Callable) -> bool:
    """Whether ``hook`` can be called with one positional argument (the step) and needs it, or may."""
    try:
        parameters = list(inspect.signature(hook).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: called bare, as before
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind in positional or p.kind == inspect.Parameter.VAR_POSITIONAL for p in parameters)


_MAX_LOSSES = 32  # losses one step may return (the collective's fixed layout)


def _global_loss(
    out: StepOutput, device: torch.device, *, stop: Optional[str] = None
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor], dict[str, Tensor], Tensor]:
    """This rank's share of the global-batch loss (to backpropagate), each loss's global mean, whether each
    loss's global count is above 0 (a loss absent from the micro-batch is 0 over 0),
    whether each loss's global count is invalid, and under ``""`` whether the ranks named different
    losses, and whether any rank asked to ``stop`` (the name of a stop signal it received): bool tensors,
    read later with the losses (no device read here), the same on every rank."""
    sums, counts = getattr(out, "loss_sums", None), getattr(out, "counts", None)
    if not isinstance(sums, Mapping) or not isinstance(counts, Mapping):
        raise TypeError(f"step output: expected a StepOutput(loss_sums, counts), got {type(out).__name__}")
    named = [name for name in sums if not isinstance(name, str)]
    if named:  # (a TypeError from joining them into the ranks' signature named nothing)
        raise TypeError(f"step output: loss names must be str, got {named[0]!r} ({type(named[0]).__name__})")
    if "" in sums:  # ("" is where the ranks' disagreement is flagged: it hid that loss's invalid counts)
        raise ValueError("step output: loss names must be non-empty, got ''")
    if not sums or set(sums) != set(counts):
        raise ValueError(
            f"step output: loss_sums and counts must name the same losses (at least one), got {sorted(sums)} "
            f"and {sorted(counts)}"
        )
    bad = sorted(name for name, value in sums.items() if not isinstance(value, Tensor) or value.dim() != 0)
    if bad:
        raise ValueError(f"step output: loss_sums must be scalar tensors, got others for {bad}")
    names = sorted(sums)  # the same order on every rank
    for name in names:  # a number: Python's, numpy's, or a one-element tensor or array
        count = counts[name]
        try:
            value = None if isinstance(count, (bool, str, bytes)) else torch.as_tensor(count)
        except (TypeError, ValueError, RuntimeError):
            value = None
        if value is None or value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            got = f"shape {tuple(value.shape)}" if value is not None and value.numel() != 1 else type(count).__name__
            raise TypeError(f"step output: counts[{name!r}] must be a number or a one-element tensor, got {got}")
    if torch.is_grad_enabled() and not any(sums[name].requires_grad for name in names):
        raise ValueError(f"step output: expected a loss sum that requires grad, got none of {names} (detached?)")
    if len(names) > _MAX_LOSSES:
        raise ValueError(f"step output: expected at most {_MAX_LOSSES} losses, got {len(names)}")
    # One collective of a fixed layout, whatever each rank names: [names' signature, counts, sums], padded.
    signature = float(zlib.crc32("\n".join(names).encode()) % 2**16)  # sums exact in float32 up to 256 ranks
    pad = torch.zeros(_MAX_LOSSES - len(names), device=device)
    local_counts = [torch.as_tensor(counts[name], dtype=torch.float32, device=device).reshape(1) for name in names]
    local_sums = [sums[name].detach().float().reshape(1) for name in names]
    head = torch.tensor([signature, float(stop is not None)], device=device)
    local = torch.cat([head, *local_counts, pad, *local_sums, pad])
    reduced = all_reduce_sum(local)  # global signature, ranks stopping, counts and sums
    n, m = len(names), _MAX_LOSSES
    global_counts, global_sums = reduced[2 : 2 + n], reduced[2 + m : 2 + m + n]
    denominators = torch.where(global_counts > 0, global_counts, torch.ones_like(global_counts))
    scales = _world_size() / denominators
    total = torch.stack([sums[name].float() * scales[i] for i, name in enumerate(names)]).sum()
    means = dict(zip(names, global_sums / denominators))
    # A count below 0, not finite, or 0 under a sum that is not: read with the step's losses (no sync here).
    invalid = ~torch.isfinite(global_counts) | (global_counts < 0) | ((global_counts == 0) & (global_sums != 0))
    ranks_differ = reduced[0] != signature * _world_size()  # another rank named other losses
    invalid = {**dict(zip(names, invalid)), "": ranks_differ}
    counted = dict(zip(names, global_counts > 0))
    return total, {name: means[name] for name in sums}, counted, invalid, reduced[1] > 0


def _preempted(done: int, checkpoint: Path, received: Optional[str]) -> Preempted:
    """The exception that ends a run stopped by a signal after step ``done`` (checkpointed at ``checkpoint``),
    said on stderr by rank 0."""
    name = received if received is not None else "a stop signal on another rank"
    if _rank() == 0:
        print(
            f"stopped by {name} after step {done}: checkpoint {checkpoint} written; continue with "
            f"training.resume=auto (exit status {PREEMPTED_EXIT_CODE})",
            file=sys.stderr,
            flush=True,
        )
    return Preempted(done, checkpoint, name)


def _non_finite_message(loss, norm, done, kind, values, last: Optional[Path], earlier: Optional[Path]) -> str:
    """``last``: the checkpoint this run last wrote, or resumed from (not merely the newest on disk);
    ``earlier``: the newest one on disk before step ``done - 1``."""
    where = f"step {done}" + (f" (kind {kind})" if kind is not None else "")
    stop = f"loss is {loss}, gradient norm {float(norm)} at {where}, parts {values}; stopping."
    if last is None:
        return f"{stop} No checkpoint was written yet; lower optim.lr or set optim.clip_grad_norm, then start again"
    if not math.isfinite(loss) and last.name == f"step_{done - 1:08d}":
        # The loss came from the weights the last checkpoint holds: a lower lr from there meets it again.
        other = (
            f"an earlier checkpoint ({earlier})" if earlier is not None else "the start (no earlier checkpoint is kept)"
        )
        return (
            f"{stop} The last good checkpoint, {last}, holds the weights this step started from, and they give a "
            f"non-finite loss on its batch: resume from {other} with a lower optim.lr or optim.clip_grad_norm set, "
            "or check this step's data"
        )
    return (
        f"{stop} The last good checkpoint is {last}; lower optim.lr or set optim.clip_grad_norm, then resume with "
        f"training.resume={last}"
    )


class _Window:
    """The losses of the steps since the last logged record: how many, the sum of their losses, and each
    named loss's ``[sum, steps that computed it]`` (a loss of one data kind is absent from the others')."""

    def __init__(self, steps: int = 0, loss: float = 0.0, parts: Optional[dict] = None) -> None:
        self.steps, self.loss = steps, loss
        self.parts = {name: [float(total), int(count)] for name, (total, count) in (parts or {}).items()}

    def add(self, loss: float, values: Mapping[str, float]) -> None:
        self.steps += 1
        self.loss += loss
        for name, value in values.items():
            total, count = self.parts.get(name, (0.0, 0))
            self.parts[name] = [total + value, count + 1]

    def record(self) -> dict:
        """``loss`` and ``loss/<name>``: the means (one step's values as they are)."""
        means = {f"loss/{name}": total / count for name, (total, count) in self.parts.items()}
        return {"loss": self.loss / self.steps, **means}

    def state(self) -> dict:
        return {"steps": self.steps, "loss": self.loss, "parts": {name: list(v) for name, v in self.parts.items()}}

    @classmethod
    def from_state(cls, state: Optional[dict]) -> "_Window":
        """The window a checkpoint saved (:func:`_window_fault` checked it); an empty one from a checkpoint
        written before windows were saved."""
        return cls() if state is None else cls(state["steps"], state["loss"], state["parts"])


def _window_fault(window: object) -> Optional[str]:
    """Why ``window`` is not what :meth:`_Window.state` saves; None when it is."""
    number = (int, float)
    if not isinstance(window, dict) or set(window) != {"steps", "loss", "parts"}:
        return "is not the logged window's sums (steps, loss and parts)"
    steps, loss, parts = window["steps"], window["loss"], window["parts"]
    if type(steps) is not int or steps < 0 or not isinstance(loss, number) or isinstance(loss, bool):
        return f"has steps {steps!r} and loss {loss!r}, expected a count >= 0 and a number"
    well_formed = isinstance(parts, dict) and all(
        isinstance(name, str)
        and isinstance(part, list)
        and len(part) == 2
        and isinstance(part[0], number)
        and not isinstance(part[0], bool)
        and type(part[1]) is int
        and 1 <= part[1] <= steps
        for name, part in parts.items()
    )
    return None if well_formed else "parts are not [sum, steps] per loss name"


def _loop_state(
    step: int, optimizer, scheduler, skipped: list, position: dict, window: _Window, schedule: dict, t: TrainingConfig
) -> dict:
    """This rank's part of a checkpoint: step, schedule (its state and the settings that shape it), the
    optimiser's parameter groups (names and learning-rate multiplier), RNG states, unusable samples met,
    the position of streamed data (empty for step-indexed data), the losses of the steps not logged yet
    and the settings that decide how the steps round (:func:`_numerics`)."""
    return {
        "step": step,
        "scheduler": scheduler.state_dict(),
        "schedule": dict(schedule),
        "groups": _group_layout(optimizer),
        "rng": rng_state(),
        "skipped": [list(s) for s in skipped],
        "data": dict(position),
        "window": window.state(),
        "numerics": _numerics(t),
        "grad_accumulation": t.grad_accumulation,  # the data resumes at micro-batch step x grad_accumulation
    }


def _schedule(t: TrainingConfig, optim: OptimConfig) -> dict:
    """The settings that shape the learning-rate schedule, under their config keys (a checkpoint records
    them: the scheduler's own state holds its step, not the length of its cosine)."""
    return {
        "training.max_steps": t.max_steps,
        "optim.warmup_steps": optim.warmup_steps,
        "optim.min_lr_ratio": optim.min_lr_ratio,
    }


def _numerics(t: TrainingConfig) -> dict:
    """The settings that decide how a step rounds, under their config keys (a checkpoint records them)."""
    return {"training.precision": t.precision, "training.strategy": t.strategy}


def _numerics_changes(saved: Optional[dict], t: TrainingConfig) -> list[str]:
    """What a resume changes in how the steps round, against a checkpoint's recorded :func:`_numerics`
    (None: written before they were recorded), one line each: another ``training.precision`` (fit alone
    takes it; start_run refuses it), or, under bf16, a move between FSDP2's bf16 parameters and
    autocast's fp32 ones (any ``training.strategy`` change is allowed: it only says how the run runs)."""
    if saved is None:
        return []
    old_precision, old_strategy = saved.get("training.precision"), saved.get("training.strategy")
    if old_precision is not None and old_precision != t.precision:
        return [f"training.precision: {old_precision!r} -> {t.precision!r} (the steps from here on round otherwise)"]
    if t.precision == "bf16" and old_strategy is not None and (old_strategy == "fsdp") != (t.strategy == "fsdp"):
        before, now = ("FSDP2's bf16", "fp32 under autocast") if old_strategy == "fsdp" else ("fp32", "FSDP2's bf16")
        return [
            f"training.strategy: {old_strategy!r} -> {t.strategy!r} under training.precision=bf16: the parameters the "
            f"steps compute with are {now} from here on, {before} before (the losses round otherwise)"
        ]
    return []


def _check_schedule(path: Path, saved: dict, schedule: dict) -> None:
    """Refuse, in one line naming the first key that differs (old -> new), to resume checkpoint ``path``
    (its training-loop state ``saved``) on another schedule: the new length would stretch or squeeze the
    cosine from the step reached, silently. Checkpoints from before the schedule was recorded pass."""
    recorded = saved.get("schedule")
    if recorded is None:
        return
    for key, value in schedule.items():
        if key in recorded and recorded[key] != value:
            raise ConfigError(
                f"key '{key}' ({recorded[key]!r} -> {value!r}): expected the schedule {path} was trained with "
                "(fit alone does not stretch a resumed cosine); start a new run in another training.output_dir, or "
                "resume through start_run, which compares the configs and applies the change"
            )


def _check_accumulation(path: Path, saved: dict, accumulation: int) -> None:
    """Refuse to resume checkpoint ``path`` (its training-loop state ``saved``) with another
    ``training.grad_accumulation``: the data resumes at micro-batch step x grad_accumulation, so the run
    would train again on micro-batches it had (fewer) or pass some over (more), silently. Checkpoints from
    before it was recorded pass (start_run refuses the change from their configs)."""
    recorded = saved.get("grad_accumulation")
    if recorded is not None and recorded != accumulation:
        raise ConfigError(
            f"key 'training.grad_accumulation' ({recorded} -> {accumulation}): expected the accumulation {path} was "
            f"trained with (its data resumes at micro-batch {checkpoint_step(path)} x grad_accumulation, so another "
            "would repeat micro-batches or pass some over); start a new run in another training.output_dir"
        )


def _group_layout(optimizer) -> list[list]:
    """Each parameter group's ``[parameter names, lr multiplier]``: what ``optim.lr_multipliers`` shaped."""
    return [[list(g.get("names", [])), float(g.get("lr_multiplier", 1.0))] for g in optimizer.param_groups]


def _check_groups(path: Path, saved: dict, optimizer) -> None:
    """Refuse, in one line, a checkpoint whose optimiser was built with other ``optim.lr_multipliers``
    (other parameter groups): loading it would fail deep inside torch or mis-assign learning rates.
    ``saved``: a training-loop state of the checkpoint (:func:`read_loop_states`)."""
    layout = _group_layout(optimizer)
    if "groups" in saved:  # (a torch.compile-wrapped model's checkpoint from before its names dropped _orig_mod)
        saved = {**saved, "groups": [[[checkpoint_name(n) for n in names], m] for names, m in saved["groups"]]}
    # (checkpoints from before the layout was saved: the number of groups, as the schedule holds it)
    same = saved["groups"] == layout if "groups" in saved else len(saved["scheduler"]["base_lrs"]) == len(layout)
    if not same and "groups" in saved and sorted(m for _, m in saved["groups"]) == sorted(m for _, m in layout):
        was = {name: index for index, (names, _) in enumerate(saved["groups"]) for name in names}
        moved = [name for index, (names, _) in enumerate(layout) for name in names if was.get(name) != index]
        raise ConfigError(
            f"key 'training.resume': expected {path}'s optimiser to group the parameters as this run's does under "
            f"the same optim.lr_multipliers, got {len(moved)} in another group ({', '.join(moved[:3])}"
            f"{', ...' if len(moved) > 3 else ''}): the model changed, or the weight-decay rule of param_groups since "
            "the checkpoint (from 2026-12-06 nn.MultiheadAttention's in_proj_weight, transposed convolutions, "
            "nn.Bilinear and parametrized weights are decayed)"
        )
    if not same:
        described = saved.get("groups") or [[[], "?"]] * len(saved["scheduler"]["base_lrs"])
        multipliers = sorted({str(m) for _, m in described})
        raise ConfigError(
            f"key 'optim.lr_multipliers': expected the multipliers {path} was trained with (an optimiser of "
            f"{len(described)} parameter groups, multipliers {', '.join(multipliers)}), got {len(layout)} groups, "
            f"multipliers {', '.join(sorted({str(m) for _, m in layout}))}"
        )


def _resume(
    checkpoints: CheckpointManager, path: Path, states: list[dict], wrapped, optimizer, scheduler, *, streamed: bool
) -> tuple[int, list, dict]:
    """Load checkpoint ``path`` with this rank's training-loop ``states`` (:func:`read_loop_states`);
    return its step, this rank's unusable samples so far and its data position (streamed data;
    empty otherwise).

    Raises:
        ConfigError: if streamed data resumes on another number of ranks, or the checkpoint does not
            load into the model (another architecture; files refused by the integrity checks).
    """
    saved_world = checkpoint_world_size(path)
    if streamed:
        _check_stream_world(path)
    _check_groups(Path(path), states[0], optimizer)
    try:  # resume_checkpoint verified it; this rank's state was read with the others
        checkpoints.load(path, wrapped, optimizer, verified=True, read_local=False)
    except (ValueError, RuntimeError, OSError, pickle.UnpicklingError) as error:  # another model, forged files
        reason = first_line(error)
        raise ConfigError(f"key 'training.resume': {path} does not load into this run's model: {reason}") from None
    step = checkpoint_step(path)
    scheduler.load_state_dict(states[0]["scheduler"])  # every rank's schedule is the same
    if saved_world == _world_size():
        set_rng_state(states[0]["rng"])
        return step, [tuple(s) for s in states[0]["skipped"]], dict(states[0].get("data", {}))
    # Written by another number of ranks: the RNG streams are per rank (left as they are), and rank 0
    # takes over the unusable samples every saved rank met.
    return step, [tuple(s) for state in states for s in state["skipped"]] if _rank() == 0 else [], {}


def restore_data_position(data: Dataset, start: RunStart) -> None:
    """Start streamed ``data`` where the checkpoint ``start`` resumes from left this rank's stream,
    checked as :func:`fit` checks it (which does it too): a recipe calls it before it writes in the run
    directory, so that a resume refused for its ranks or loader workers leaves the directory as it was.
    A no-op for a fresh run or step-indexed data.

    Raises:
        ConfigError: naming ``training.resume`` (another number of ranks, or positions the stream refuses:
            malformed, or for a shorter shard list) or ``data.num_workers`` (another number of workers).
    """
    if start.resume_from is None or not start.loop_states or not isinstance(data, IterableDataset):
        return
    _check_stream_world(start.resume_from)
    _restore_position(data, dict(start.loop_states[0].get("data", {})), start.resume_from)


def _check_stream_world(path: Path) -> None:
    """Refuse to resume a streamed run from checkpoint ``path`` on another number of ranks."""
    saved_world = checkpoint_world_size(path)
    if saved_world != _world_size():
        raise ConfigError(
            f"key 'training.resume': expected a streamed run to resume on the {saved_world} rank(s) it was started "
            f"with, got {_world_size()} (the stream's positions are per rank and loader worker)"
        )


def _restore_position(data: IterableDataset, position: dict, path: Path) -> None:
    """``data.load_state_dict(position)`` (the position of checkpoint ``path``), a refusal named as the key
    at fault.

    A stream's ValueError names the argument it refuses first: ``num_workers`` (positions for another
    number of loader workers) is ``data.num_workers``; anything else (``state``: positions that are
    malformed, or name a shard past a slot's last, as on a shard list shorter than the checkpoint's) is
    the checkpoint, ``training.resume``, with the stream's reason.
    """
    try:
        data.load_state_dict(position)
    except ValueError as error:
        argument, _, reason = str(error).partition(": ")
        if argument == "num_workers":
            raise ConfigError(f"key 'data.num_workers': {reason}") from None
        reason = reason if argument == "state" else str(error)
        raise ConfigError(
            f"key 'training.resume': expected a checkpoint whose stream positions this run's stream starts from "
            f"(a streamed run resumes on the shards and loader workers it was started with), got '{path}': {reason}"
        ) from None


def compile_blocks(model: nn.Module, block_types: Sequence[type]) -> None:
    """``torch.compile`` the forward of every module of ``block_types`` in ``model`` (in place).

    Only ``forward`` is replaced, so parameter names, state dicts and checkpoints are unchanged, and
    module hooks (FSDP2's, DDP's) run outside the compiled code. With no such block, the model's own
    forward is compiled.

    Blocks compile by group: the blocks of one type under one parent module (an encoder's layers) share a
    graph for each way they are called. Dynamo keeps its graphs, and counts them against
    ``torch._dynamo.config.recompile_limit`` (8), per code object, and so each group compiles a copy of
    the forward's code of its own (``forward[<parent>]`` in tracebacks): with one code object for all
    blocks, a FLAVA's image, text and multimodal layers' ways of being called (lengths, dtypes, the last
    layer's query positions, checkpointing) shared one budget, and ran past it. A group's sequence length
    that varies becomes dynamic at its second value (text of varying length compiles at most twice).

    A group's forward compiles whole (``fullgraph``; a whole model's, without repeated blocks, is compiled
    around its graph breaks). What does not compile runs eagerly, said once on stderr naming the group:
    past the recompile limit, a call unlike those compiled (these still run compiled); a forward that does
    not trace whole, every call from then on. An error of the call itself
    (a bad input's) is raised as eagerly, with nothing said.
    """
    kinds = tuple(block_types)
    groups: dict[tuple[str, type], list[nn.Module]] = {}
    for name, module in model.named_modules():
        if kinds and isinstance(module, kinds):
            groups.setdefault((name.rpartition(".")[0], type(module)), []).append(module)
    for (parent, kind), blocks in groups.items() or [(("", type(model)), [model])]:
        # (a whole model's data-dependent glue may break its graph: compiled in pieces, as torch.compile does)
        forward = _compiled_forward(kind, parent or "model", fullgraph=bool(groups))
        for block in blocks:  # bound as a method: a deepcopy (an EMA teacher) runs its own weights
            block.forward = types.MethodType(forward, block)


def _compiled_forward(kind: type, group: str, *, fullgraph: bool = True) -> Callable[..., Any]:
    """``kind.forward`` compiled for the blocks of ``group`` alone, a function of ``(block, ...)``
    (:func:`compile_blocks`); what does not compile runs eagerly, said once on stderr (``fullgraph=False``: a
    whole model's forward, compiled around its graph breaks)."""
    import torch._dynamo  # (here, not on import of the loop: dynamo takes a while to import)

    eager = kind.forward
    name = f"forward[{group}]"
    code = eager.__code__.replace(co_name=name, **({"co_qualname": name} if sys.version_info >= (3, 11) else {}))
    # a code object of its own: dynamo's graphs, recompile count and automatic-dynamic sizes are the group's
    copy = types.FunctionType(code, eager.__globals__, name, eager.__defaults__, eager.__closure__)
    copy.__kwdefaults__, copy.__module__ = eager.__kwdefaults__, eager.__module__
    compiled = torch.compile(copy, fullgraph=fullgraph)
    exc = torch._dynamo.exc  # what fullgraph raises for a call past the recompile limit (older torch: ...Cache...)
    # (torch before 2.7: the limit is cache_size_limit, and fullgraph raises CacheLimitExceeded, an Unsupported)
    names = ("FailOnRecompileLimitHit", "FailOnCacheLimitHit", "CacheLimitExceeded")
    limit_hit = tuple(getattr(exc, n) for n in names if hasattr(exc, n))
    config = torch._dynamo.config
    setting = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    said, traced = set(), [True]

    def say(what: str, error: BaseException) -> None:
        if what not in said:
            said.add(what)
            reason = first_line(error.__cause__ or error)
            print(f"training.compile: the {kind.__name__} blocks of {group} {what} ({reason})", file=sys.stderr)

    def forward(block: nn.Module, *args: Any, **kwargs: Any) -> Any:
        untraced = None
        if traced[0]:
            try:
                return compiled(block, *args, **kwargs)
            except limit_hit as error:
                limit = getattr(config, setting)
                say(
                    f"reached torch._dynamo.config.{setting} ({limit}): calls unlike those compiled run eagerly",
                    error,
                )
            except exc.Unsupported as error:
                untraced = error
        out = eager(block, *args, **kwargs)  # (outside the handlers: the call's own error, a bad input's, unchained)
        if untraced is not None:
            say("do not compile whole: they run eagerly from here on", untraced)
            traced[0] = False
        return out

    return forward


def _apply_optim_config(optimizer: torch.optim.Optimizer, scheduler, optim: OptimConfig, model: nn.Module) -> list[str]:
    """Make a resumed optimiser follow the current ``optim`` section (a no-op when it is unchanged), and
    return each key it changed, ``key: old -> new`` (:func:`_optim_changes`).

    The checkpoint restores the saved peak lr, betas, eps and weight decay; a resumed run that
    changed them (see :func:`torchflava.training.config.check_resume_config`) continues with the new
    values, the schedule's current factor applied to the new peak lr.
    """
    layout = param_groups(model, optim.weight_decay, optim.lr_multipliers)  # the groups' order, as built
    changes = _optim_changes(optimizer.param_groups, layout, optim)
    for index, (group, built) in enumerate(zip(optimizer.param_groups, layout, strict=True)):
        peak = optim.lr * built["lr_multiplier"]
        group["initial_lr"] = peak
        scheduler.base_lrs[index] = peak
        group["lr"] = peak * scheduler.lr_lambdas[index](scheduler.last_epoch)
        group["betas"], group["eps"] = tuple(optim.betas), optim.eps
        group["weight_decay"] = built["weight_decay"]  # norms, biases etc. stay at 0
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
    return changes


def _optim_changes(saved: list[dict], layout: list[dict], optim: OptimConfig) -> list[str]:
    """``key: old -> new`` for each of ``optim.lr``, ``betas``, ``eps`` and ``weight_decay`` whose value in
    the checkpoint's parameter groups ``saved`` differs from ``optim`` (``layout``: the groups as built
    from it): fit alone applied them without a word, where start_run reports them from the configs."""
    old: dict[str, Any] = {}
    for group, built in zip(saved, layout, strict=True):
        if not group["params"]:  # (a group without parameters: the checkpoint holds none of its settings)
            continue
        multiplier = built["lr_multiplier"]
        if multiplier and group["initial_lr"] != optim.lr * multiplier:
            # (the peak over the multiplier: 0.05 x 0.1 / 0.1 is 0.05000000000000001, so 12 digits, as typed)
            old.setdefault("optim.lr", float(f"{group['initial_lr'] / multiplier:.12g}"))
        if [float(b) for b in group["betas"]] != [float(b) for b in optim.betas]:
            old.setdefault("optim.betas", [float(b) for b in group["betas"]])
        if group["eps"] != optim.eps:
            old.setdefault("optim.eps", group["eps"])
        if group["weight_decay"] != built["weight_decay"]:  # (norms, biases etc. are at 0 either way)
            old.setdefault("optim.weight_decay", group["weight_decay"])
    new = {"optim.lr": optim.lr, "optim.betas": [float(b) for b in optim.betas], "optim.eps": optim.eps}
    new["optim.weight_decay"] = optim.weight_decay
    return [f"{key}: {old[key]!r} -> {new[key]!r}" for key in new if key in old]


def _identity(item: Any) -> Any:
    return item


def _loader(data: Dataset, first: int, num_workers: int) -> Iterator:
    """Items ``first, first + 1, ...`` of ``data`` in order (the loader draws nothing from the global RNG);
    streamed data from where its position was restored. Without workers, the items are read here, by a
    generator :func:`_close_loader` closes (a stream's open shard, and the command writing it, with it)."""
    if num_workers == 0:
        if isinstance(data, IterableDataset):
            return (item for item in data)
        return (data[index] for index in range(first, len(data)))
    return DataLoader(
        data if isinstance(data, IterableDataset) else Subset(data, range(first, len(data))),
        batch_size=None,
        collate_fn=_identity,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,  # the main process stops them
        generator=torch.Generator().manual_seed(0),
    )


def _to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (mappings, lists, tuples, named tuples, dataclasses) on ``device``.

    A dict or ``UserDict`` keeps its type and attributes where it can be copied (a dict subclass carrying
    ``kind`` or ``skipped``, Hugging Face's ``BatchEncoding`` read as ``item.input_ids``); other mappings become
    a plain dict (a shallow copy of one that keeps its items in an attribute shares them: the data's own item
    was filled with device tensors)."""
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        moved = {key: _to_device(item, device) for key, item in value.items()}
        if isinstance(value, (dict, UserDict)):  # (a plain dict lost a subclass's attributes: kind, skipped)
            try:
                same = copy.copy(value)
                same.update(moved)
                return same
            except (TypeError, AttributeError):  # a mapping that cannot be copied: its items alone, as before
                pass
        return moved
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_to_device(item, device) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(item, device) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: _to_device(getattr(value, f.name), device) for f in dataclasses.fields(value) if f.init}
        )
    return value


def _distinct(skipped: list) -> list[tuple]:
    """The distinct entries of every rank's ``skipped`` (collective), sorted."""
    gathered = [skipped]
    if dist.is_initialized():
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, skipped)
    distinct = {tuple(entry) for part in gathered for entry in part}
    try:
        return sorted(distinct)
    except TypeError:  # entries of mixed types
        return sorted(distinct, key=repr)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1
