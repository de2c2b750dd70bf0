"""Config sections every recipe shares (optimiser and training loop), as typed dataclasses.

Recipes compose them with their own model and data sections and load the whole with
:func:`torchflava.training.config.load_config`.
"""

import copy
import dataclasses
from dataclasses import dataclass, field
import glob
import hashlib
import json
import math
import os
from pathlib import Path
import re
import sys
import tempfile
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Type, TypeVar, Union

import torch
from torch import nn
import torch.distributed as dist

from torchflava.modules.layers.transformer import CHECKPOINT_MODES
from torchflava.training.checkpointing import CheckpointManager
from torchflava.training.config import ConfigError
from torchflava.training.distributed import STRATEGIES, wrap_model
from torchflava.training.integrity import damage_on_every_rank
from torchflava.training.optim import param_groups, warmup_cosine
from torchflava.utils.checkpoint import atomic_write, first_line, is_remote, peek_state_dict
from torchflava.utils.checks import host_memory_bytes, is_prompt_template, usable_cores
from torchflava.utils.globs import glob_files
from torchflava.utils.meta import meta_device
from torchflava.utils.precision import NATIVE_CPU_BF16

T = TypeVar("T")


@dataclass
class OptimConfig:
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 2000
    min_lr_ratio: float = 0.0
    clip_grad_norm: Optional[float] = 1.0
    # module name -> factor on the lr of its parameters (e.g. {text_encoder: 0.01}); see param_groups
    lr_multipliers: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainingConfig:
    output_dir: str = "runs/run"  # (each recipe names its own: runs/flava, runs/clip...)
    max_steps: int = 450_000
    global_batch_size: int = 256
    grad_accumulation: int = 1
    strategy: str = "none"  # none | ddp | fsdp
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16
    activation_checkpointing: str = "none"  # selective | full (see TransformerEncoder); none: left as the model has it
    compile: bool = False  # torch.compile the model's repeated blocks (see torchflava.training.loop.fit)
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    resume: str = "none"  # none | auto | <checkpoint dir>
    progress_bar: bool = True
    tensorboard: bool = True
    threads: Optional[int] = None  # torch intra-op threads (CPU)
    # seconds a rank waits in a collective for the others before the run fails naming this key (null: torch's
    # default, Gloo 30 min, NCCL 10 min); longer than any wait a rank's own work causes (rank 0's checkpoint writes)
    collective_timeout_s: Optional[float] = None
    # keep freed memory in the process for reuse (glibc malloc thresholds): fewer page faults, a few MiB more RSS
    keep_freed_memory: bool = True

    def __post_init__(self) -> None:
        # a leading ~ as the shell expands it (a YAML file or a quoted override keeps it as written): the run
        # wrote into a directory named '~' under the working one, and its report then read the home directory's
        # export, a traceback after training; a resume of '~/...' was 'no such directory'
        if isinstance(self.output_dir, str):
            self.output_dir = os.path.expanduser(self.output_dir)
        if isinstance(self.resume, str) and self.resume not in ("none", "auto"):
            self.resume = os.path.expanduser(self.resume)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without writing a checkpoint of that state."""


def raise_on_failed_checks(checks: Sequence[tuple]) -> None:
    """Raise ConfigError for the first ``(ok, key, expected, got)`` whose ``ok`` is false."""
    for ok, key, expected, got in checks:
        if not ok:
            raise ConfigError(f"key '{key}': expected {expected}, got {got!r}")


# What a run writes in its directory (the recipes' outputs), by kind: an entry of the other kind there
# would be found only when it is written, after training.
RUN_ENTRIES = {
    "checkpoints": "directory",
    "model": "directory",
    "zero_shot": "directory",  # (CLIP fine-tuning's record of its start)
    "tensorboard": "directory",
    "config.yaml": "file",
    "metrics.jsonl": "file",
    "report.json": "file",
    "loss_curve.png": "file",
    "vocab.txt": "file",
    "tokenizer_config.json": "file",
    "inputs.json": "file",
    "model_arguments.json": "file",
    "preprocessor_config.json": "file",
}


def _run_directory_fault(path: Path, *, tensorboard: bool) -> Optional[str]:
    """Why ``path`` cannot hold a run: it is not a directory this process can write or create, or an
    entry a run writes there is of the other kind (a file named ``model``, a directory named
    ``metrics.jsonl``); None when it can."""
    if not path.exists():
        ancestor = path.absolute().parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        return None if ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK) else "cannot be created"
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        return "not a writable directory"
    for name, kind in RUN_ENTRIES.items():
        entry = path / name
        if entry.exists() and entry.is_dir() != (kind == "directory") and (tensorboard or name != "tensorboard"):
            return f"its {name} is a {'directory' if entry.is_dir() else 'file'}, where a run writes a {kind}"
    return None


# What a run writes in its directory when it has finished (a recipe's export and report), never before.
FINISHED_RUN_ENTRIES = ("model", "report.json")


# The most intra-op threads training.threads may ask for: torch takes a C int (10^12 was an overflow traceback once
# the run had started), and a pool of 10^9 threads would not start.
MAX_THREADS = max(1024, usable_cores())


# The most examples a step may take over all ranks: the fine-tuning recipes' samplers draw a step's indices
# before its first batch (10^12 hung there, the run directory taken).
MAX_GLOBAL_BATCH = 2**24


# The most micro-batches a run may take (max_steps x grad_accumulation): the step-indexed data mixers
# keep arrays of that length (a run of 10^11 steps asked for 745 GiB before its first step).
MAX_MICRO_BATCHES = 10**8


# The longest training.collective_timeout_s: about 31 years (a timedelta holds at most 10^9 days: 10^14 seconds was
# an OverflowError traceback once the process group had started).
MAX_COLLECTIVE_TIMEOUT_S = 10**9
# The shortest: ranks wait that long for each other in every step (and for rank 0's checkpoint writes), so a
# timeout under a second (10^-9 was accepted) fails a healthy run at its first collective.
MIN_COLLECTIVE_TIMEOUT_S = 1


# The largest epsilon a config may give AdamW (optim.eps) or a LayerNorm (a model's norm_eps): published models use
# 1e-12 to 1e-5 (AdamW 1e-8 to 1e-6). Each is added to a scale it must stay far below (the gradients' root mean
# square for AdamW, the activations' variance for a LayerNorm): 10^12 was accepted, and made every update (or every
# normalised output) about 0, a run that trained nothing.
MAX_EPS = 1e-2


def eps_check(key: str, value: Optional[float], divides: str) -> tuple:
    """A check that the epsilon ``value`` (None passes: the builder's default, or a checkpoint's) of ``key`` lies in
    (0, :data:`MAX_EPS`]; ``divides`` says what it is added to, for the message.

    Returns:
        tuple: ``(ok, key, expected, got)`` for :func:`raise_on_failed_checks`.
    """
    expected = f"a number in (0, {MAX_EPS:g}] ({divides}: an eps far above that scales the result to about 0)"
    return (value is None or 0 < value <= MAX_EPS, key, expected, value)


def norm_eps_check(key: str, value: Optional[float]) -> tuple:
    """:func:`eps_check` of a LayerNorm epsilon (a model section's ``norm_eps``, FLAVA's ``head_norm_eps``).

    Returns:
        tuple: ``(ok, key, expected, got)`` for :func:`raise_on_failed_checks`.
    """
    return eps_check(key, value, "a LayerNorm divides by the square root of its input's variance plus eps")


def training_checks(t: TrainingConfig, o: OptimConfig, world_size: int) -> list[tuple]:
    """The checks of the shared sections that types cannot express, for :func:`raise_on_failed_checks`.

    Each is ``(ok, key, expected, got)``; they are computed so that no bad value raises on its own
    (a zero divisor, say): every key gets the one-line config error instead.
    """
    accumulation_ok = t.grad_accumulation >= 1
    factor_bound = _decay_factor_bound(o)  # (the factors' other checks, a number >= 0 each: lr_multipliers_check's)
    factors = [f for f in o.lr_multipliers.values() if isinstance(f, (int, float)) and 0 <= f < math.inf]
    unit = world_size * t.grad_accumulation if accumulation_ok else 1
    try:
        output_fault = _run_directory_fault(Path(t.output_dir), tensorboard=t.tensorboard) if t.output_dir else "empty"
    except OSError as error:  # a name the OS refuses: a component longer than its limit, say
        output_fault = error.strerror or first_line(error)
    return [
        (t.strategy in STRATEGIES, "training.strategy", f"one of {STRATEGIES}", t.strategy),
        (
            t.strategy != "none" or world_size == 1,
            "training.strategy",
            f"ddp or fsdp for the {world_size} processes launched (none runs one process)",
            t.strategy,
        ),
        (t.device in ("auto", "cpu", "cuda"), "training.device", "auto, cpu or cuda", t.device),
        (t.device != "cuda" or torch.cuda.is_available(), "training.device", "auto or cpu (no CUDA here)", t.device),
        (t.precision in ("fp32", "bf16"), "training.precision", "fp32 or bf16", t.precision),
        (
            t.activation_checkpointing in CHECKPOINT_MODES,
            "training.activation_checkpointing",
            f"one of {CHECKPOINT_MODES}",
            t.activation_checkpointing,
        ),
        (
            output_fault is None,
            "training.output_dir",
            "a directory this process can create or write, with no entry of another kind where a run writes one",
            f"{t.output_dir} ({output_fault})" if output_fault else t.output_dir,
        ),
        (t.max_steps >= 1, "training.max_steps", ">= 1", t.max_steps),
        (  # (a step's micro-batches hold an example each, so more than a step's examples: named before the product)
            accumulation_ok and t.grad_accumulation <= MAX_GLOBAL_BATCH,
            "training.grad_accumulation",
            f"in [1, {MAX_GLOBAL_BATCH:,}] (a micro-batch holds an example; a step at most {MAX_GLOBAL_BATCH:,})",
            t.grad_accumulation,
        ),
        (
            t.max_steps * max(t.grad_accumulation, 1) <= MAX_MICRO_BATCHES,
            "training.max_steps",
            f"at most {MAX_MICRO_BATCHES:,} micro-batches in all (max_steps x grad_accumulation "
            f"{t.grad_accumulation}; the data keeps a few bytes a micro-batch)",
            t.max_steps,
        ),
        (
            t.global_batch_size > 0 and t.global_batch_size % unit == 0,
            "training.global_batch_size",
            f"a positive multiple of world size x grad_accumulation ({world_size} x {t.grad_accumulation})",
            t.global_batch_size,
        ),
        (
            t.global_batch_size <= MAX_GLOBAL_BATCH,
            "training.global_batch_size",
            f"at most {MAX_GLOBAL_BATCH:,} examples a step (the largest published batches hold about a million)",
            t.global_batch_size,
        ),
        (0 <= t.seed < 2**32, "training.seed", "in [0, 2**32)", t.seed),
        (t.log_every >= 1, "training.log_every", ">= 1", t.log_every),
        (t.checkpoint_every >= 1, "training.checkpoint_every", ">= 1", t.checkpoint_every),
        (t.keep_checkpoints >= 1, "training.keep_checkpoints", ">= 1", t.keep_checkpoints),
        (
            t.threads is None or 1 <= t.threads <= MAX_THREADS,
            "training.threads",
            f"null or in [1, {MAX_THREADS}] (more than this machine's cores only oversubscribes them)",
            t.threads,
        ),
        (
            t.collective_timeout_s is None
            or MIN_COLLECTIVE_TIMEOUT_S <= t.collective_timeout_s <= MAX_COLLECTIVE_TIMEOUT_S,
            "training.collective_timeout_s",
            f"null or a number of seconds in [{MIN_COLLECTIVE_TIMEOUT_S}, {MAX_COLLECTIVE_TIMEOUT_S:,}] (ranks wait "
            "for each other's steps and checkpoint writes: a shorter timeout fails a healthy run; at most about 31 "
            "years)",
            t.collective_timeout_s,
        ),
        (o.lr > 0 and math.isfinite(o.lr), "optim.lr", "a finite number > 0", o.lr),
        (len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", "two numbers in [0, 1)", o.betas),
        eps_check("optim.eps", o.eps, "AdamW divides each update by the gradients' root mean square plus eps"),
        (0 <= o.weight_decay < math.inf, "optim.weight_decay", "a finite number >= 0", o.weight_decay),
        (
            1 < factor_bound,  # (the base learning rate's factor, 1)
            "optim.weight_decay",
            f"less than 1 / optim.lr ({1 / o.lr if o.lr > 0 else math.inf:g}): AdamW multiplies the weights by "
            "1 - lr x weight_decay each step, which zeroed or flipped them (NaN logits after training)",
            o.weight_decay,
        ),
        (
            all(f < factor_bound for f in factors),
            "optim.lr_multipliers",
            f"factors below 1 / (optim.lr x optim.weight_decay) ({factor_bound:g}): "
            "AdamW multiplies the weights of a factor's modules by 1 - lr x factor x weight_decay each step, which "
            "zeroed or flipped them (a non-finite loss)",
            dict(o.lr_multipliers),
        ),
        (0 <= o.warmup_steps < t.max_steps, "optim.warmup_steps", "in [0, training.max_steps)", o.warmup_steps),
        (0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", "in [0, 1]", o.min_lr_ratio),
        (
            o.clip_grad_norm is None or 0 < o.clip_grad_norm < math.inf,
            "optim.clip_grad_norm",
            "null or a finite number > 0",
            o.clip_grad_norm,
        ),
    ]


def _decay_factor_bound(o: OptimConfig) -> float:
    """The learning-rate factor AdamW's decay must stay below, 1 / (optim.lr x optim.weight_decay): it multiplies a
    group's weights by 1 - lr x factor x weight_decay each step, which at or past it zeroes or flips them. The base
    learning rate's factor is 1 (optim.weight_decay's check), a module's its optim.lr_multipliers entry. Infinite
    where lr or weight_decay is no positive finite number (their own checks name those) or their product is 0."""
    product = o.lr * o.weight_decay if 0 < o.lr < math.inf and 0 < o.weight_decay < math.inf else 0.0
    return 1 / product if product > 0 else math.inf


def resume_point(checkpoints: CheckpointManager, resume: str) -> Optional[Path]:
    """The checkpoint to resume from under ``training.resume`` (none | auto | a directory), verified.

    ``auto`` takes the newest checkpoint whose files match the digests written with them; each
    newer, damaged one is passed over with a one-line warning on stderr saying why. An explicit
    directory must be intact. Collective under torch.distributed (rank 0 verifies).

    Raises:
        ConfigError: if ``resume`` is none but the run directory already holds checkpoints (two runs
            would mix in one directory), if it is none or auto and the directory holds a finished run's export
            or report but no (intact) checkpoint (:data:`FINISHED_RUN_ENTRIES`: a new run would overwrite them), or if it
            names a checkpoint that is missing or damaged.
    """
    if resume == "auto":
        path, passed_over = checkpoints.latest_intact()
        if (
            path is None
        ):  # (no intact checkpoint: a fresh start, unless a run finished here; damaged ones left as found)
            _refuse_finished_results(checkpoints.root.parent)
        if passed_over and (not dist.is_initialized() or dist.get_rank() == 0):
            # fit moves them aside (rotation and auto then see only the new run's), as it does any newer ones
            aside = checkpoints.root / "abandoned"
            then = (
                f"resuming from {path}"
                if path
                else f"no intact checkpoint is left: starting afresh (moving them to {aside})"
            )
            for line in passed_over:
                print(f"warning: {line}; {then}", file=sys.stderr)
        return path
    if resume not in ("none", ""):
        reason = damage_on_every_rank(resume)
        if reason is not None:
            raise ConfigError(
                f"key 'training.resume': expected an intact checkpoint directory, got {resume!r} ({reason})"
            )
        return Path(resume)
    if checkpoints.latest() is not None:
        raise ConfigError(
            f"key 'training.resume': {checkpoints.root} already holds checkpoints; set training.resume=auto to "
            "continue that run, or choose another training.output_dir"
        )
    _refuse_finished_results(checkpoints.root.parent)
    return None


def _refuse_finished_results(run: Path) -> None:
    """ConfigError where ``run`` holds a finished run's export or report (:data:`FINISHED_RUN_ENTRIES`) but no
    intact checkpoint (deleted to save space, or damaged): a new run there, with ``training.resume`` none or auto,
    overwrote them without a word."""
    finished = [p for p in (run / n for n in FINISHED_RUN_ENTRIES) if os.path.lexists(p)]
    if finished:
        raise ConfigError(
            f"key 'training.output_dir': expected a directory without another run's results, got "
            f"{run} (it holds {', '.join(p.name for p in finished)}, which this run would "
            "overwrite); choose another training.output_dir, or move them away"
        )


class TrainingSetup(NamedTuple):
    """What :func:`setup_training` builds around a model."""

    wrapped: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    autocast: torch.autocast


def setup_training(
    model: nn.Module,
    t: TrainingConfig,
    o: OptimConfig,
    *,
    device: torch.device,
    layer_types: Sequence[Type[nn.Module]] = (),
    find_unused_parameters: bool = True,
) -> TrainingSetup:
    """Wrap ``model`` for ``t.strategy``, and build AdamW (parameter groups), the schedule and autocast.

    bf16 is an autocast context under every strategy, and under ``fsdp`` FSDP2's parameter dtype too
    (parameters gathered and computed in bf16). Autocast keeps the ops it runs in fp32 there as well:
    without it, FSDP2's bf16 parameters made the whole step bf16, its losses included (CLIP's loss
    rounded to bf16, its first gradients at cosine 0.5 to fp32's, against autocast's 0.85).
    ``find_unused_parameters`` goes to DDP (see :func:`wrap_model`).
    """
    bf16 = t.precision == "bf16"
    wrapped = wrap_model(
        model,
        t.strategy,
        layer_types=layer_types,
        param_dtype=torch.bfloat16 if bf16 and t.strategy == "fsdp" else None,
        find_unused_parameters=find_unused_parameters,
    )
    try:
        groups = param_groups(model, o.weight_decay, o.lr_multipliers)
    except ValueError:
        raise_on_failed_checks([lr_multipliers_check(model, o)])  # a bad name, in the recipes' one-line form
        raise
    for group in groups:
        group["lr"] = o.lr * group["lr_multiplier"]
    # The fused kernel updates every parameter in one pass (on the CPU ~4.5x faster than the per-tensor
    # loop for the tiny recipe's 144 tensors; on CUDA the usual choice): same algorithm, same state.
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused)
    scheduler = warmup_cosine(optimizer, warmup_steps=o.warmup_steps, total_steps=t.max_steps, min_ratio=o.min_lr_ratio)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    return TrainingSetup(wrapped, optimizer, scheduler, autocast)


def precision_note(t: TrainingConfig, device: torch.device, native_bf16: bool = NATIVE_CPU_BF16) -> Optional[str]:
    """The line a run prints as it starts when ``training.precision=bf16`` trains on a CPU for which oneDNN has
    no bf16 kernels (they need AVX-512). PyTorch runs its bf16 products there on a reference path, many times
    slower than fp32 (an AVX2-only EPYC: 0.016 against 0.14 TFLOP/s at ViT-B's qkv shape; a ViT-B/16 train step
    at batch 4 230 against 3.9 s): the loop computes them as fp32 GEMMs of the bf16 operands instead
    (:mod:`torchflava.utils.precision`), which the line says; a compiled model's products are inductor's, on
    that slow path, which the line says too. None in fp32, on a GPU, or where oneDNN runs bf16.
    """
    if t.precision != "bf16" or device.type != "cpu" or native_bf16:
        return None
    if t.compile:
        return (
            "training.precision: bf16 on this CPU runs a compiled model's matmuls on PyTorch's reference path "
            "(oneDNN's bf16 kernels need AVX-512), many times slower than fp32: training.compile=false computes them "
            "as fp32 products of the bf16 operands, and training.precision=fp32 is as fast"
        )
    return (
        "training.precision: bf16 on this CPU (oneDNN's bf16 kernels need AVX-512): its matmuls and attention run "
        "as fp32 products of the bf16 operands, rounded to bf16, at about fp32's speed for ViT-B-sized layers "
        "(fp32 is faster for small ones)"
    )


# What a builder raises for arguments it refuses (a zero division: a size that divides by zero; an OSError: a
# checkpoint it names that is missing, e.g. pretraining.pretrained, which was a FileNotFoundError traceback).
BUILD_ERRORS = (ValueError, TypeError, RuntimeError, ZeroDivisionError, OSError)


def _built_on_meta(build: Callable[[], T]) -> T:
    """``build()`` on the meta device: parameters without memory or init work."""
    with meta_device():
        return build()


def lr_multipliers_check(model: Union[nn.Module, Callable[[], nn.Module]], o: OptimConfig) -> tuple:
    """A check that ``optim.lr_multipliers`` names modules of ``model`` with trainable parameters, each
    with one factor >= 0. ``model`` may be a builder, called on the meta device (no memory, no init
    work) so that recipes check the key before any work; a builder that fails passes here, as the
    model section's own check names that fault.

    Returns:
        tuple: ``(ok, key, expected, got)`` for :func:`raise_on_failed_checks`.
    """
    key = "optim.lr_multipliers"
    if not o.lr_multipliers:
        return (True, key, "", None)
    if not isinstance(model, nn.Module):
        try:
            model = _built_on_meta(model)
        except BUILD_ERRORS:
            return (True, key, "", None)
    try:
        param_groups(model, max(o.weight_decay, 0.0), o.lr_multipliers)  # weight_decay has its own check
    except ValueError as error:
        reason = str(error).removeprefix("lr_multipliers: ")
        expected = f"names of the model's modules with trainable parameters, each with one factor >= 0 ({reason})"
        return (False, key, expected, dict(o.lr_multipliers))
    return (True, key, "", None)


def smallest_vocab(*token_ids: object) -> int:
    """The smallest vocabulary a run's text tokenizer may learn, for :func:`meta_build_checks`' ``smallest``: 16
    (the special tokens and a few characters) or, where a special id set in the config lies past it (FLAVA's
    ``model.pad_token_id``), one above the largest; an id that is not an int >= 0
    is left to the builder's own check. A 16-id build refused for such an id counted the section at
    ``data.vocab_size``, and a large one the data would shrink was refused."""
    ids = [i for i in token_ids if type(i) is int and i >= 0]
    return max([16, *(i + 1 for i in ids)])


def meta_build_checks(
    key: str,
    build: Callable[[], nn.Module],
    *,
    smallest: Optional[Callable[[], nn.Module]] = None,
    arguments: Optional[Mapping[str, object]] = None,
) -> list[tuple]:
    """The checks of a builder section, from one build on the meta device (no memory, no init work): that
    ``build()`` succeeds (every size and choice checked by the builder itself), then that the parameters and
    buffers of what it builds fit in this machine's memory, where the recipes build their model before moving
    it (sizes past it, a width of 10^12, were an allocator's traceback once the run had started); a builder
    that fails passes the second, its fault said by the first.

    ``smallest``: the section at the smallest vocabulary, where the run's is learnt from the data (at most
    ``data.vocab_size``, as the data gives): built only where ``build()``'s parameters do not fit, and counted
    in their place (unless its builder refuses it), so that only sizes that cannot be built are refused, not a
    large ``data.vocab_size`` the data will shrink.

    ``arguments``: the section's values by argument name; a builder's error that names one of them alone
    (its name, or a text value of it: a path not found) is the key ``<key>.<argument>``, else ``key``.

    Returns:
        list[tuple]: the two ``(ok, key, expected, got)`` checks for :func:`raise_on_failed_checks`.
    """
    try:
        module = _built_on_meta(build)
    except BUILD_ERRORS as error:
        got = str(error).splitlines()[0] if str(error) else repr(error)
        named = _named_argument(got, arguments or {})
        return [
            (False, f"{key}.{named}" if named else key, "arguments its builder accepts", got),
            (True, key, "", None),
        ]
    size = lambda m: sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))  # noqa: E731
    memory = host_memory_bytes()
    if memory is not None and size(module) > memory and smallest is not None:
        try:
            module = _built_on_meta(smallest)
        except BUILD_ERRORS:  # (e.g. an id past its vocabulary: the count of build's stands)
            pass
    return [
        (True, key, "", None),
        (
            memory is None or size(module) <= memory,
            key,
            f"sizes whose parameters fit in this machine's memory ({(memory or 0) / 2**30:,.1f} GiB)",
            f"{sum(p.numel() for p in module.parameters()):,} parameters ({size(module) / 2**30:,.1f} GiB)",
        ),
    ]


def _named_argument(message: str, arguments: Mapping[str, object]) -> Optional[str]:
    """The one argument of ``arguments`` that ``message`` names, as a whole word or by its text value as a
    whole token (``checkpoint not found: bogus``); None where it names none or several (``text_embed_dim must be
    a multiple of text_num_heads``: either may be at fault)."""
    named = {
        name
        for name, value in arguments.items()
        if re.search(rf"(?<![\w./-]){re.escape(name)}(?![\w/-]|\.\w)", message)  # (not in a path)
        or (isinstance(value, str) and value and re.search(rf"(?<![\w./-]){re.escape(value)}(?![\w/-])", message))
    }
    return named.pop() if len(named) == 1 else None


def memory_check(key: str, build: Callable[[], nn.Module]) -> tuple:
    """The memory check of :func:`meta_build_checks` alone (a builder that fails passes here).

    Returns:
        tuple: ``(ok, key, expected, got)`` for :func:`raise_on_failed_checks`.
    """
    return meta_build_checks(key, build)[1]


def contrastive_batch_check(t: TrainingConfig) -> tuple:
    """A check that every micro-batch holds at least 2 image-text pairs over all ranks (a contrastive
    loss gathers the features over ranks; a pair's negatives are the others): with one pair the loss
    is 0 with no gradient, and the run trains nothing of it.

    Returns:
        tuple: ``(ok, key, expected, got)`` for :func:`raise_on_failed_checks`.
    """
    return (
        t.global_batch_size >= 2 * max(t.grad_accumulation, 1),
        "training.global_batch_size",
        f"at least 2 pairs per micro-batch, i.e. >= 2 x training.grad_accumulation ({t.grad_accumulation}): "
        "the contrastive loss of one pair is 0 with no gradient",
        t.global_batch_size,
    )


def contrastive_data_check(t: TrainingConfig, num_pairs: Optional[int], key: str) -> tuple:
    """A check that a contrastive micro-batch over all ranks (``global_batch_size / grad_accumulation``) holds
    no more pairs than the data has (``num_pairs``, read from the source named by ``key``; None: streamed,
    not known): a larger one repeats pairs, and each copy is a negative of its own pair, so the loss cannot
    fall below log(copies) and the model is pushed apart from what it should match.

    Returns:
        tuple: ``(ok, key, expected, got)`` for :func:`raise_on_failed_checks`, naming
        ``training.global_batch_size``.
    """
    micro = t.global_batch_size // max(t.grad_accumulation, 1)
    return (
        num_pairs is None or micro <= num_pairs,
        "training.global_batch_size",
        f"at most the {num_pairs} training pairs of {key} per contrastive micro-batch (global_batch_size / "
        f"grad_accumulation = {micro}): a larger batch repeats pairs, each copy a false negative of its own",
        t.global_batch_size,
    )


def pair_source_key(data: Any) -> str:
    """The key naming where a recipe's data section (``source``, ``files.pairs_shards``) takes its pairs
    from, for messages: ``data.shapes.num_pairs``, ``data.files.pairs_shards`` or ``data.files.pairs_captions``."""
    if data.source == "shapes":
        return "data.shapes.num_pairs"
    return "data.files.pairs_shards" if data.files.pairs_shards is not None else "data.files.pairs_captions"


def logit_scale_check(key: str, value: Optional[float], maximum: float) -> tuple:
    """A check that an initial log temperature multiplier (None passes: the builder's default or the
    checkpoint's) lies in [0, ``maximum``], the range a recipe clamps the learnt one to after every
    step: above it the first step's logits are scaled past what training allows (``exp(1000)`` gives
    a NaN loss at once), below it the clamp moves it after the first step.

    Returns:
        tuple: ``(ok, key, expected, got)`` for :func:`raise_on_failed_checks`.
    """
    expected = f"in [0, {maximum:.6g}] (the range the learnt log temperature multiplier is clamped to)"
    return (value is None or 0 <= value <= maximum, key, expected, value)


# The largest side a recipe renders its shapes scenes at (a 4096 px scene is 48 MiB): 10^12 was an overflow
# traceback once the run had started.
MAX_RENDERED_SIZE = 4096


def rendered_size_check(key: str, size: int) -> tuple:
    """A check that the shapes scenes' rendered side ``size`` (``key``) is at most :data:`MAX_RENDERED_SIZE`
    (its lower bound, 8, is the data's own check).

    Returns:
        tuple: ``(ok, key, expected, got)`` for :func:`raise_on_failed_checks`.
    """
    return (size <= MAX_RENDERED_SIZE, key, f"at most {MAX_RENDERED_SIZE} (pixels a side of the scenes)", size)


def unread_section_checks(key: str, section: object, read: bool, why: str) -> list[tuple]:
    """Checks that a config section the run does not ``read`` holds only its schema defaults: a value
    set there would be silently ignored. One check per field set otherwise, naming it; ``why`` says
    why the section is not read (e.g. ``"data.source=shapes reads no files"``).

    Returns:
        list[tuple]: ``(ok, key, expected, got)`` for :func:`raise_on_failed_checks`.
    """
    if read:
        return []
    defaults = type(section)()
    checks = []
    for name in (f.name for f in dataclasses.fields(section)):
        value, default = getattr(section, name), getattr(defaults, name)
        if value != default:
            shown = "null" if default is None else repr(default)
            checks.append((False, f"{key}.{name}", f"its default, {shown}, since {why}", value))
    return checks


def template_checks(key: str, templates: Sequence[str], batch_size: int, batch_key: str) -> list[tuple]:
    """Zero-shot prompt templates (at least one, each with one ``{}`` or ``{c}``) and an evaluation batch size >= 1."""
    return [
        (
            len(templates) > 0 and all(is_prompt_template(x) for x in templates),
            key,
            "a non-empty list of templates, each with one '{}' (or '{c}')",
            list(templates),
        ),
        (batch_size >= 1, batch_key, ">= 1", batch_size),
    ]


PATH_KINDS = {
    "file": "an existing file",
    "directory": "an existing directory",
    "files": "a file or a glob matching files",
}


def path_check(key: str, value: Optional[str], kind: str) -> tuple:
    """A check that a configured data path names what the recipe will open: ``kind`` is ``"file"``,
    ``"directory"`` or ``"files"`` (a path or a glob pattern that matches at least one file). None
    passes (the key is unset).

    Returns:
        tuple: ``(ok, key, expected, got)`` for :func:`raise_on_failed_checks`.
    """
    if value is None:
        return (True, key, "", None)
    path = Path(value)
    try:
        if kind == "file":
            ok = path.is_file()
        elif kind == "directory":
            ok = path.is_dir()
        else:
            ok = path.is_file() or bool(glob_files(value))  # (a linked folder's loop under ** walked once)
    except OSError as error:  # a name the OS refuses: a component longer than its limit, say
        return (False, key, PATH_KINDS[kind], f"{value} ({error.strerror or first_line(error)})")
    return (ok, key, PATH_KINDS[kind], value)


def learnt_vocabulary(learn: Callable[[], T]) -> T:
    """``learn()``, a run's tokenizer (learnt from its text where ``data.vocab`` is null): a ``vocab_size`` too
    small for the text's characters (the tokenizer's ValueError names ``vocab_size``) is a ConfigError naming
    ``data.vocab_size``, saying what the text needs (it was blamed on ``data.vocab``); other errors pass on.

    Raises:
        ConfigError: as above.
    """
    try:
        return learn()
    except ValueError as error:
        text = first_line(error)
        if isinstance(error, ConfigError) or not text.startswith("vocab_size must be "):
            raise
        needed, _, got = text.removeprefix("vocab_size must be ").rpartition(", got ")
        raise ConfigError(f"key 'data.vocab_size': expected {needed}, got {got}") from None


def vocab_checks(
    vocab: Optional[str],
    training_texts: int,
    read: Callable[[str], Any],
    *,
    expected: str = "a BERT vocab.txt or a directory holding one",
) -> list[tuple]:
    """Checks of ``data.vocab`` (None passes: a vocabulary is learnt), read as the run reads it by
    ``read`` (the recipe's reader: a tokenizer with ``vocab_size`` and ``special_ids``): a BERT
    ``vocab.txt`` or a directory holding one (or what ``expected`` says ``read`` reads), with a token besides the special ones (masking draws its
    random replacements from those; no text is spelt with special tokens alone), and of
    ``data.vocab_training_texts`` (>= 1).

    Returns:
        list[tuple]: ``(ok, key, expected, got)`` for :func:`raise_on_failed_checks`.
    """
    checks = [(training_texts >= 1, "data.vocab_training_texts", ">= 1", training_texts)]
    if vocab is None:
        return checks
    try:
        tokenizer = read(vocab)
        fault = None if tokenizer.vocab_size > len(set(tokenizer.special_ids)) else "only special tokens"
    except (OSError, ValueError, TypeError) as error:
        fault = first_line(error)
    expected = f"{expected}, with at least one token besides the special ones"
    return checks + [(fault is None, "data.vocab", expected, f"{vocab} ({fault})" if fault else vocab)]


CAPTIONS = "a captions file (.jsonl, .tsv, .csv, or Karpathy's, COCO's or BLIP's .json)"
KEYED = "a .jsonl, .csv or .tsv, or a .json list of captions"  # the formats whose keys are named
# what a captions key may name: one captions file, or the parquet files of a split as the Hugging Face Hub serves it
CAPTIONS_PATHS = (
    "an existing captions file, or parquet files: a glob pattern of them (data/train-*.parquet), a folder holding "
    "them or a list of them"
)


def parquet_captions_given(captions: Union[None, str, Sequence[str]]) -> bool:
    """Whether a captions key names parquet files: a list, a ``.parquet`` path, a glob pattern or a folder (every
    other captions file is one file of another extension; one whose name holds ``[`` or ``*``, ``c[v2].jsonl``, is
    that file, as the reader takes it)."""
    if captions is None:
        return False
    if not isinstance(captions, str):
        return True
    pattern = glob.has_magic(captions) and not os.path.isfile(captions)
    return captions.lower().endswith(".parquet") or pattern or os.path.isdir(captions)


_HUB_SHARD = re.compile(
    r"(.+)-(\d{5})-of-(\d{5})\.parquet"
)  # a split's shard as the Hub names it: train-00000-of-00004


def _parquet_below(folder: str) -> str:
    """Where ``folder`` (a Hugging Face download's root) holds parquet files in a sub-folder two levels down at most
    (``data/`` or ``data/<config>/``): ``; it holds them in data/ (train-00000-of-00004.parquet...): give them, e.g.
    <folder>/data/train-*.parquet``; else an empty string."""
    for directory, subfolders, names in os.walk(folder):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        found = sorted(name for name in names if name.lower().endswith(".parquet") and not name.startswith("."))
        if found:
            shard = _HUB_SHARD.fullmatch(found[0])
            example = os.path.join(directory, f"{shard[1]}-*.parquet" if shard else found[0])
            where = os.path.relpath(directory, folder)
            return f"; it holds them in {where}/ ({found[0]}...): give them, e.g. {example}"
        if os.path.relpath(directory, folder).count(os.sep) >= 1:  # (data/<config>/ is as deep as a download goes)
            subfolders[:] = []
    return ""


def captions_paths_fault(captions: Union[str, Sequence[str]]) -> Optional[str]:
    """Why ``captions`` (a captions key's value) names no captions file and no parquet files, or None: a path that
    is no file, a glob pattern matching no file or a file of another kind (a ``.json`` beside the parquet shards), a
    folder holding no ``.parquet`` file at its top, a glob pattern matching the shards of several splits
    (``data/*.parquet`` of a download: ``train-*`` and ``test-*``, which a folder of them is refused for too), an
    empty list, or a list naming other files than parquet ones (the item of a list named)."""
    listed = not isinstance(captions, str)
    values = list(captions) if listed else [captions]
    if not values:
        return "an empty list"
    for value in values:
        item = f"{value}: " if listed else ""
        if not isinstance(value, str) or not value:
            return f"{value!r} is no path"
        try:
            if os.path.isdir(value):
                if not any(n.lower().endswith(".parquet") and not n.startswith(".") for n in os.listdir(value)):
                    return f"{item}a folder holding no .parquet file{_parquet_below(value)}"
            elif glob.has_magic(value) and not os.path.isfile(value):
                matches = glob_files(value)  # (as the reader matches it: a linked folder's loop walked once)
                others = [m for m in matches if not m.lower().endswith(".parquet")]
                if not matches:
                    return f"{item}a pattern matching no file"
                if others:
                    return f"{item}it matches {len(others)} file(s) other than parquet, {others[0]}: give parquet files"
                splits = sorted({shard[1] for m in matches if (shard := _HUB_SHARD.fullmatch(os.path.basename(m)))})
                if len(splits) > 1:  # (data/*.parquet of a download: its test shards trained on, as a folder refuses)
                    shown = "train" if "train" in splits else splits[0]
                    example = os.path.join(os.path.dirname(matches[0]), f"{shown}-*.parquet")
                    return (
                        f"{item}it matches the shards of {len(splits)} splits ({', '.join(splits)}): give one, e.g. "
                        f"{example} (a list of patterns to train on several)"
                    )
            elif not os.path.isfile(value):
                return f"{item}no such file"
            elif listed and not value.lower().endswith(".parquet"):
                return f"{item}not a .parquet file (a list is of parquet files)"
        except OSError as error:  # a name the OS refuses: a component longer than its limit, say
            return f"{item}{error.strerror or first_line(error)}"
    return None


PARQUET_PAIRS = "parquet files of one schema, an image and its caption(s) in each row"
# ImageTextFolder's arguments -> the files section's keys naming them
PAIR_KEYS = {
    "root": "pairs_root",
    "captions": "pairs_captions",
    "split": "pairs_split",
    "image_key": "pairs_image_key",
    "text_key": "pairs_text_key",
}


def _pair_key_expectations(prefix: str, parquet: bool = False) -> dict[str, str]:
    """What each of the captions keys of ``prefix`` expects, for the one-line refusals (``parquet``: of parquet
    files, whose columns hold the images and captions)."""
    captions = f"{prefix}.pairs_captions"
    expected = {
        "pairs_root": f"the folder the image paths of {captions} are relative to, or null when they are absolute",
        "pairs_split": (
            f"null, or a non-empty list of names of splits {captions} holds (a Karpathy split file, .json, or a "
            ".parquet file's split column)"
        ),
        "pairs_image_key": f"null, or the key or column of the image paths in {captions} ({KEYED})",
        "pairs_text_key": f"null, or the key or column of the captions in {captions} ({KEYED})",
    }
    if parquet:  # (a parquet file's image column holds the images themselves)
        expected["pairs_root"] = f"null for parquet {captions}, whose rows hold their images"
        expected["pairs_image_key"] = f"null, or the column of the images in the parquet files of {captions}"
        expected["pairs_text_key"] = f"null, or the column of the captions in the parquet files of {captions}"
    return expected


def pair_file_checks(
    prefix: str,
    shards: Optional[str],
    root: Optional[str],
    captions: Union[None, str, Sequence[str]],
    *,
    required: bool,
    streamed: bool = False,
    split: Optional[Sequence[str]] = None,
    image_key: Optional[str] = None,
    text_key: Optional[str] = None,
) -> list[tuple]:
    """Checks of image-text pair files given as ``<prefix>.pairs_shards`` (tar shards), or as
    ``<prefix>.pairs_captions`` (a captions file :class:`~torchflava.data.readers.ImageTextFolder`
    reads, or parquet files: a glob pattern matching parquet files alone, a folder holding them, a list; a
    pattern matching nothing, or files of another kind too, is refused), with ``<prefix>.pairs_root`` the folder its image paths are relative to (null for a file of
    absolute paths, open_clip's CSV), ``<prefix>.pairs_split`` its Karpathy splits and
    ``<prefix>.pairs_image_key`` / ``pairs_text_key`` its keys or columns: one of the two forms when
    ``required``, each path naming what will be opened (the shards only when they are local files to
    index, not ``streamed``: the stream's checks do that), and the captions keys fitting the file's
    format (by its extension: a split for a .json; what the file holds, Karpathy's or COCO's file for
    keys, BLIP's list for a split, is checked as :func:`opened_pairs` reads it). Both
    forms at once are refused (one would be ignored), as are captions keys without a captions file."""
    given = {"pairs_shards": shards, "pairs_root": root, "pairs_captions": captions}
    parquet = parquet_captions_given(captions)
    expected = _pair_key_expectations(prefix, parquet)
    captions_keys = {"pairs_split": split, "pairs_image_key": image_key, "pairs_text_key": text_key}
    both = shards is not None and (root is not None or captions is not None)
    fault = None if captions is None else captions_paths_fault(captions)
    suffix = ".parquet" if parquet else os.path.splitext(captions)[1].lower() if captions is not None else ""
    names = list(split) if split is not None else []
    checks = [
        (
            not required or shards is not None or captions is not None,
            prefix,
            "pairs_shards, or pairs_captions (with pairs_root when its image paths are relative)",
            given,
        ),
        (
            not both,
            f"{prefix}.pairs_shards",
            f"null when {prefix}.pairs_root or {prefix}.pairs_captions is set (one form of pairs: the shards, or "
            "the captions file with the folder of its images)",
            shards,
        ),
        (
            root is None or captions is not None,
            f"{prefix}.pairs_captions",
            f"a captions file listing the images of {prefix}.pairs_root",
            None,
        ),
    ]
    for key, value in captions_keys.items():  # (with shards: no captions file to apply them to)
        checks.append(
            (value is None or captions is not None, f"{prefix}.{key}", f"null without {prefix}.pairs_captions", value)
        )
    checks += [
        (
            split is None or (bool(names) and all(names) and len(set(names)) == len(names)),
            f"{prefix}.pairs_split",
            "null, or a non-empty list of distinct split names like [train, restval]",
            names if split is not None else None,
        ),
        (
            split is None or captions is None or suffix in (".json", ".parquet"),
            f"{prefix}.pairs_split",
            f"null for {captions} (splits are those of Karpathy's split files, .json, or of a .parquet file's split "
            "column)",
            names if split is not None else None,
        ),
    ]
    for key, value in (("pairs_image_key", image_key), ("pairs_text_key", text_key)):
        checks.append((value is None or value != "", f"{prefix}.{key}", expected[key], value))
    keys = (image_key if image_key is not None else "image", text_key if text_key is not None else "caption")
    if (image_key is not None or text_key is not None) and keys[0] == keys[1]:  # one given: the other's default
        key, other = (
            ("pairs_text_key", "pairs_image_key") if text_key is not None else ("pairs_image_key", "pairs_text_key")
        )
        checks.append((False, f"{prefix}.{key}", f"a key other than {prefix}.{other}'s ({keys[0]!r})", keys[0]))
    return checks + [
        path_check(f"{prefix}.pairs_shards", None if streamed else shards, "files"),
        path_check(f"{prefix}.pairs_root", root, "directory"),
        (fault is None, f"{prefix}.pairs_captions", CAPTIONS_PATHS, f"{captions} ({fault})"),
    ]


def opened_pairs(
    prefix: str,
    read_pairs: Callable[..., Any],
    root: Optional[str],
    captions: Union[str, Sequence[str]],
    *,
    split: Optional[Sequence[str]] = None,
    image_key: Optional[str] = None,
    text_key: Optional[str] = None,
    usable: Optional[Callable[[Any], Optional[str]]] = None,
):
    """The pairs ``read_pairs(root, captions, split=, image_key=, text_key=)`` reads
    (:class:`~torchflava.data.readers.ImageTextFolder`, given by the recipe: the training loop imports no
    data pipeline) from the captions keys of ``prefix`` (checked by :func:`pair_file_checks`), read as
    :func:`opened` reads a source: a file that cannot be read as
    one is a :class:`ConfigError` naming ``<prefix>.pairs_captions``, or the key that answers for it (a
    split the file does not hold: ``pairs_split``; a column its header lacks: ``pairs_image_key`` or
    ``pairs_text_key``; every path absolute under a root, or relative without one: ``pairs_root``).
    ``read_pairs`` checks that every split name is a split of the file (it names ``split``).

    Raises:
        ConfigError: as above.
    """
    values = {"pairs_root": root, "pairs_split": None if split is None else list(split)}
    values.update(pairs_image_key=image_key, pairs_text_key=text_key)
    parquet = parquet_captions_given(captions)
    expected = _pair_key_expectations(prefix, parquet)

    def refused(key: str, reason: str) -> ConfigError:
        return ConfigError(f"key '{prefix}.{key}': expected {expected[key]}, got {values[key]!r} ({reason})")

    faults: list[ValueError] = []  # (kept apart: opened names the captions key for any ValueError)

    def read():
        try:
            return read_pairs(root, captions, split=split, image_key=image_key, text_key=text_key)
        except ValueError as error:  # a CaptionsError names the argument that answers for it
            if PAIR_KEYS.get(getattr(error, "argument", None)) not in expected:
                raise
            faults.append(error)
            return None

    where = f"of images under {root}" if root is not None else "of absolute image paths"
    what = PARQUET_PAIRS if parquet else f"{CAPTIONS} {where}"
    folder = opened(f"{prefix}.pairs_captions", captions, what, read)
    if faults:
        raise refused(PAIR_KEYS[faults[0].argument], first_line(faults[0]))
    if usable is not None and (fault := usable(folder)) is not None:
        raise ConfigError(f"key '{prefix}.pairs_captions': expected {what}, got {captions!r} ({fault})")
    return folder


def every_split_read(pairs: Any, split: Optional[Sequence[str]]) -> Optional[tuple[str, str]]:
    """The file and its splits where a captions file read with ``split`` null (every split) holds several, or None
    (``split`` given, or the file holds no several): ``pairs`` (an :class:`~torchflava.data.readers.ImageTextFolder`)
    a Karpathy split file (``("the Karpathy file", "e.g. [train, restval]")``), or parquet files whose ``split``
    column holds two or more (``("the parquet files' split column", "among [test, train]")``). A run on them trains
    on every split, the test images the retrieval benchmarks score included."""
    if split is not None:
        return None
    if getattr(pairs, "format", None) == "karpathy":
        return "the Karpathy file", "e.g. [train, restval]"
    held = getattr(pairs, "held_splits", ())
    return ("the parquet files' split column", f"among [{', '.join(held)}]") if len(held) > 1 else None


def every_split_error(prefix: str, pairs: Any, split: Optional[Sequence[str]]) -> Optional[ConfigError]:
    """The refusal of a new run on every split of a captions file (:func:`every_split_read`), naming
    ``<prefix>.pairs_split`` and the file's splits; None where ``split`` names them or the file holds no several."""
    read = every_split_read(pairs, split)
    if read is None:
        return None
    return ConfigError(
        f"key '{prefix}.pairs_split': expected the splits of {read[0]} to train on, {read[1]} (null trained on every "
        "split, the test images included: name them all to mean it), got None"
    )


def every_split_note(prefix: str, pairs: Any, split: Optional[Sequence[str]]) -> Optional[str]:
    """The line a resumed run on every split of a captions file prints (a run started so before such runs were
    refused resumes as it was started: :func:`every_split_error` is for new runs); None where it reads no such."""
    read = every_split_read(pairs, split)
    if read is None:
        return None
    return (
        f"{prefix}.pairs_split: null, this run trains on every split of {read[0]}, its test images included (kept "
        f"on resume; a new run names the splits, {read[1]})"
    )


def checkpoint_fits(key: str, path: Optional[str], fits: Optional[Callable[[dict], object]] = None) -> tuple:
    """A check that the local checkpoint ``path`` (None passes) reads as a state dict and, with
    ``fits``, that ``fits(tensors)`` accepts its names and shapes (e.g. the model's converter
    against the model built on the meta device); no tensor data is read (:func:`peek_state_dict`).
    URLs pass (they are read when the model is built).

    Returns:
        tuple: ``(ok, key, expected, got)`` for :func:`raise_on_failed_checks`.
    """
    if path is None or is_remote(path):
        return (True, key, "", None)
    try:
        tensors = peek_state_dict(path)
        if fits is not None:
            fits(tensors)
    except (OSError, ValueError, TypeError) as error:
        reason = first_line(error)
        section = key.rsplit(".", 1)[0]  # model.pretrained: the model section's
        return (False, key, f"a checkpoint that reads and fits the {section} section", f"{path} ({reason})")
    return (True, key, "", None)


def opened(
    key: str,
    value: object,
    expected: str,
    open_source: Callable[[], T],
    *,
    usable: Optional[Callable[[T], Optional[str]]] = None,
) -> T:
    """``open_source()``, a data source the config names; when the files cannot be read as one
    (missing, empty, malformed, not the right format), a :class:`ConfigError` in the one-line form
    ``key '<key>': expected <expected>, got <value> (<the reader's reason>)``.

    ``usable`` (e.g. :func:`torchflava.data.samples.unusable_start`) says why the opened source has no
    usable item, or None: a captions file whose images are all missing is then refused here, before
    any work, not at the first step.

    Raises:
        ConfigError: as above, for the ``OSError``, ``ValueError`` or ``TypeError`` of ``open_source``,
            or a source ``usable`` finds a fault with.
    """
    try:
        source = open_source()
    except ConfigError:  # (one that names its own key, e.g. the shards a learnt vocabulary reads: not this key)
        raise
    except (OSError, ValueError, TypeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        refused = ConfigError(f"key '{key}': expected {expected}, got {value!r} ({reason})")
        refused.__dict__.update({k: v for k, v in vars(error).items() if k == "_raised_on_rank"})  # (said there)
        raise refused from None
    if usable is not None and (fault := usable(source)) is not None:
        raise ConfigError(f"key '{key}': expected {expected}, got {value!r} ({fault})")
    return source


def launch_world_size() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``; 1 without torchrun), known before
    the process group is: recipes validate their config with it before any work."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


# ------------------------------------------------------------------------------------ inputs read again
# The content digests of the files a run reads again at each start (a vocabulary, a codebook's weights): a
# resume compares them, since a changed file would silently change the token ids or the targets it trains on.
INPUTS_RECORD = "inputs.json"
DIGEST_SHOWN = 12  # the hex digits of a digest an error shows


def tokenizer_digest(tokenizer: Any) -> str:
    """The sha256 of what ``tokenizer.save`` writes (its vocabulary, merges and casing settings; its default
    text length, a setting of the run, left out), file by file in name order: equal for the same tokenizer
    however it was read."""
    tokenizer = copy.copy(tokenizer)
    tokenizer.model_max_length = None
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save(directory)
        for file in sorted(Path(directory).iterdir()):
            digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def state_digest(module: nn.Module) -> str:
    """The sha256 of ``module``'s state (names, dtypes, shapes and values, in name order): what weights
    loaded from a file make of it, whatever the file's format."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_inputs_record(run_dir: Union[str, os.PathLike]) -> dict:
    """The digests ``run_dir`` records (:data:`INPUTS_RECORD`), by config key; empty for a run recorded before
    they were (or a record that does not read: nothing to compare)."""
    try:
        record = json.loads((Path(run_dir) / INPUTS_RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return {k: v for k, v in record.items() if isinstance(v, str)} if isinstance(record, dict) else {}


def resumed_run_records(training: "TrainingConfig", names: Sequence[str]) -> Optional[Path]:
    """The directory of the run a resume continues (``training.output_dir`` for ``auto`` where it holds
    checkpoints; an explicit checkpoint's run), where it holds every file of ``names``: what the run recorded at
    its start of the checkpoint it started from (``model.pretrained``), so that the resume reads those, not it.
    None for a new run (``training.resume`` none, or auto without checkpoints) and for a run recorded before
    (which reads ``model.pretrained`` again)."""
    if training.resume in ("none", ""):
        return None
    run = Path(training.output_dir) if training.resume == "auto" else Path(training.resume).parent.parent
    if training.resume == "auto" and not any((run / "checkpoints").glob("step_*")):
        return None
    return run if all((run / name).is_file() for name in names) else None


def recorded_inputs_checks(run_dir: Union[str, os.PathLike], read: dict[str, tuple[str, str, object]]) -> list[tuple]:
    """That what a resumed run read again is what it read at its start, as ``(ok, key, expected, got)``.

    Args:
        run_dir (Union[str, os.PathLike]): the run directory (its :data:`INPUTS_RECORD`; none: every check passes,
            a run recorded before digests were resumes as it did).
        read (dict[str, tuple[str, str, object]]): by config key, (digest, what it is, e.g. "vocabulary",
            the value it was read from).

    Returns:
        list[tuple]: one check per key the run records.
    """
    recorded = read_inputs_record(run_dir)
    return [
        (
            recorded[key] == digest,
            key,
            f"the {what} the run started with (sha256 {recorded[key][:DIGEST_SHOWN]}; a changed one would change "
            "what the resumed run trains on)",
            f"{value} (sha256 {digest[:DIGEST_SHOWN]})",
        )
        for key, (digest, what, value) in read.items()
        if key in recorded
    ]


def write_inputs_record(run_dir: Union[str, os.PathLike], read: dict[str, tuple[str, str, object]]) -> None:
    """Record the digests of ``read`` (as :func:`recorded_inputs_checks` takes it) in ``run_dir``, atomically:
    at a run's start, once its checks have passed (a resumed run's, compared, are the same)."""
    text = json.dumps({key: digest for key, (digest, _, _) in read.items()}, indent=2, sort_keys=True) + "\n"
    atomic_write(Path(run_dir) / INPUTS_RECORD, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
