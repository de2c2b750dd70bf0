"""Config sections every recipe shares (optimiser and training loop), as typed dataclasses.

Recipes compose them with their own model and data sections and load the whole with
:func:`torchflava.training.config.load_config`.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Type

import torch
from torch import nn

from torchflava.modules.layers.transformer import CHECKPOINT_MODES
from torchflava.training.checkpointing import CheckpointManager, is_complete
from torchflava.training.config import ConfigError
from torchflava.training.distributed import STRATEGIES, wrap_model
from torchflava.training.optim import param_groups, warmup_cosine


@dataclass
class OptimConfig:
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 2000
    min_lr_ratio: float = 0.0
    clip_grad_norm: Optional[float] = 1.0


@dataclass
class TrainingConfig:
    output_dir: str = "runs/flava"
    max_steps: int = 450_000
    global_batch_size: int = 256
    grad_accumulation: int = 1
    strategy: str = "none"  # none | ddp | fsdp
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16
    activation_checkpointing: str = "none"  # none | selective | full (see TransformerEncoder)
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    resume: str = "none"  # none | auto | <checkpoint dir>
    progress_bar: bool = True
    tensorboard: bool = True
    threads: Optional[int] = None  # torch intra-op threads (CPU)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without writing a checkpoint of that state."""


def raise_on_failed_checks(checks: Sequence[tuple]) -> None:
    """Raise ConfigError for the first ``(ok, key, expected, got)`` whose ``ok`` is false."""
    for ok, key, expected, got in checks:
        if not ok:
            raise ConfigError(f"key '{key}': expected {expected}, got {got!r}")


def training_checks(t: TrainingConfig, o: OptimConfig, world_size: int) -> list[tuple]:
    """The checks of the shared sections that types cannot express, for :func:`raise_on_failed_checks`."""
    return [
        (t.strategy in STRATEGIES, "training.strategy", f"one of {STRATEGIES}", t.strategy),
        (t.precision in ("fp32", "bf16"), "training.precision", "fp32 or bf16", t.precision),
        (
            t.activation_checkpointing in CHECKPOINT_MODES,
            "training.activation_checkpointing",
            f"one of {CHECKPOINT_MODES}",
            t.activation_checkpointing,
        ),
        (t.max_steps >= 1, "training.max_steps", ">= 1", t.max_steps),
        (t.grad_accumulation >= 1, "training.grad_accumulation", ">= 1", t.grad_accumulation),
        (
            t.global_batch_size % (world_size * t.grad_accumulation) == 0 and t.global_batch_size > 0,
            "training.global_batch_size",
            f"a positive multiple of world size x grad_accumulation ({world_size} x {t.grad_accumulation})",
            t.global_batch_size,
        ),
        (0 <= o.warmup_steps < t.max_steps, "optim.warmup_steps", "in [0, training.max_steps)", o.warmup_steps),
        (
            t.log_every >= 1 and t.checkpoint_every >= 1,
            "training.log_every/checkpoint_every",
            ">= 1",
            (t.log_every, t.checkpoint_every),
        ),
        (len(o.betas) == 2, "optim.betas", "two numbers", o.betas),
    ]


def resume_point(checkpoints: CheckpointManager, resume: str) -> Optional[Path]:
    """The checkpoint to resume from under ``training.resume`` (none | auto | a directory).

    Raises:
        ConfigError: if ``resume`` is none but the run directory already holds checkpoints (two runs
            would mix in one directory), or names a directory that is not a complete checkpoint.
    """
    if resume == "auto":
        return checkpoints.latest()
    if resume not in ("none", ""):
        if not is_complete(resume):
            raise ConfigError(f"key 'training.resume': expected none, auto or a complete checkpoint, got {resume!r}")
        return Path(resume)
    if checkpoints.latest() is not None:
        raise ConfigError(
            f"key 'training.resume': {checkpoints.root} already holds checkpoints; set training.resume=auto to "
            "continue that run, or choose another training.output_dir"
        )
    return None


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
) -> TrainingSetup:
    """Wrap ``model`` for ``t.strategy``, and build AdamW (parameter groups), the schedule and autocast.

    bf16 is FSDP2's parameter dtype under ``fsdp`` and an autocast context otherwise.
    """
    bf16 = t.precision == "bf16"
    wrapped = wrap_model(
        model,
        t.strategy,
        layer_types=layer_types,
        param_dtype=torch.bfloat16 if bf16 and t.strategy == "fsdp" else None,
    )
    optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    scheduler = warmup_cosine(optimizer, warmup_steps=o.warmup_steps, total_steps=t.max_steps, min_ratio=o.min_lr_ratio)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and t.strategy != "fsdp")
    return TrainingSetup(wrapped, optimizer, scheduler, autocast)
