"""FLAVA fine-tuning recipe: text (GLUE TSV), image (class folders, shapes) or image+text (jsonl) tasks.

    python examples/flava/finetune.py config=examples/flava/configs/finetuning/shapes.yaml model.pretrained=runs/tiny
    python examples/flava/finetune.py config=examples/flava/configs/finetuning/qnli.yaml \
        model.pretrained=/models/flava-full data.train=/glue/QNLI/train.tsv data.val=/glue/QNLI/dev.tsv

The same machinery as the pretraining recipe (``torchflava.training``: typed config, DDP/FSDP2,
DCP checkpoints with exact resume, metrics log) and the same step-indexed batches
(``MixedPretrainingBatches`` with one kind), around ``flava_model_for_classification``.
``main(cfg)`` returns the report (validation metrics).
"""

from contextlib import nullcontext
from dataclasses import dataclass, field
import json
import math
from pathlib import Path
import sys
from typing import Optional
import warnings

import torch
import torch.distributed as dist

from torchflava.data.finetuning import (
    ClassificationCollator,
    GlueTsv,
    ImageClassFolder,
    ImageTextLabels,
    ShapesClassification,
)
from torchflava.data.pretraining import MixedPretrainingBatches
from torchflava.evaluation.metrics import task_metrics
from torchflava.models import flava_model_for_classification
from torchflava.models.flava.classification import default_loss
from torchflava.modules.layers import TransformerEncoderLayer
from torchflava.pretrained import load_pretrained
from torchflava.training.checkpointing import (
    CheckpointManager,
    export_model,
    loop_state,
    resume_run,
)
from torchflava.training.config import ConfigError, load_config, save_config
from torchflava.training.distributed import all_reduce_sum, barrier, init_distributed
from torchflava.training.metrics import MetricsLogger
from torchflava.training.optim import clip_grad_norm
from torchflava.training.schema import (
    NonFiniteLossError,
    OptimConfig,
    TrainingConfig,
    raise_on_failed_checks,
    resume_point,
    setup_training,
    training_checks,
)

warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
TASKS = ("glue", "image_folder", "image_text", "shapes")


@dataclass
class FinetuneModelConfig:
    pretrained: Optional[str] = None  # run/export directory of train.py, or a Hugging Face FLAVA directory
    modality: str = "text"  # text | image | multimodal
    loss: Optional[str] = None  # cross_entropy | binary_cross_entropy | mse (default: by the number of classes)
    classifier_hidden_dim: int = 768
    classifier_dropout: float = 0.5


@dataclass
class FinetuneDataConfig:
    task: str = "glue"  # glue (TSV) | image_folder | image_text (jsonl + images) | shapes (built in)
    train: Optional[str] = None  # TSV / jsonl file, or image folder
    val: Optional[str] = None
    image_root: Optional[str] = None  # images of an image_text task
    text_columns: list[str] = field(default_factory=lambda: ["sentence"])
    label_column: str = "label"
    labels: Optional[list[str]] = None  # class / answer names in id order; none for regression
    max_text_length: int = 128
    shapes_train: int = 3000
    shapes_val: int = 540
    image_size: int = 64  # shapes rendering size


@dataclass
class FinetuneConfig:
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=100, weight_decay=0.01))
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(
            output_dir="runs/finetune", max_steps=1000, global_batch_size=32, checkpoint_every=500
        )
    )


def validate(cfg: FinetuneConfig, world_size: int) -> None:
    d = cfg.data
    raise_on_failed_checks(
        training_checks(cfg.training, cfg.optim, world_size)
        + [
            (d.task in TASKS, "data.task", f"one of {TASKS}", d.task),
            (
                cfg.model.pretrained is not None,
                "model.pretrained",
                "a checkpoint directory (it brings the vocabulary)",
                cfg.model.pretrained,
            ),
            (
                d.task == "shapes" or (d.train is not None and d.val is not None),
                "data.train/data.val",
                "both set for file tasks",
                (d.train, d.val),
            ),
            (
                d.task != "image_text" or (d.image_root is not None and d.labels),
                "data.image_root/data.labels",
                "both set for image_text",
                (d.image_root, d.labels),
            ),
        ]
    )


def build_splits(d: FinetuneDataConfig) -> tuple:
    """Train and validation sources and the class names (None for regression)."""
    if d.task == "shapes":
        train = ShapesClassification("pairs", d.shapes_train, image_size=d.image_size)
        return train, ShapesClassification("test", d.shapes_val, image_size=d.image_size), list(train.classes)
    if d.task == "glue":
        return (
            GlueTsv(d.train, d.text_columns, d.label_column, d.labels),
            GlueTsv(d.val, d.text_columns, d.label_column, d.labels),
            d.labels,
        )
    if d.task == "image_folder":
        train = ImageClassFolder(d.train, d.labels)
        return train, ImageClassFolder(d.val, train.classes), train.classes
    return ImageTextLabels(d.image_root, d.train, d.labels), ImageTextLabels(d.image_root, d.val, d.labels), d.labels


def _identity(item):
    return item


@torch.no_grad()
def evaluate(model, source, collator, loss: str, batch_size: int = 128) -> dict:
    """Metrics of ``model`` over every usable item of ``source``."""
    model.eval()
    items = []
    for i in range(len(source)):
        try:
            items.append(source[i])
        except Exception:  # an unusable item is skipped here as in training
            continue
    logits, labels = [], []
    for start in range(0, len(items), batch_size):
        batch = collator("eval", items[start : start + batch_size], [])
        labels.append(batch.pop("labels"))
        logits.append(model(**batch).logits.float())
    return {**task_metrics(torch.cat(logits), torch.cat(labels), loss), "items": len(items)}


def main(cfg: FinetuneConfig) -> dict:
    info = init_distributed(cfg.training.strategy, device=cfg.training.device)
    validate(cfg, info.world_size)
    t, o, d = cfg.training, cfg.optim, cfg.data
    out_dir = Path(t.output_dir)
    checkpoints = CheckpointManager(out_dir / "checkpoints", keep=t.keep_checkpoints)
    resume_from = resume_point(checkpoints, t.resume)

    pretrained = load_pretrained(cfg.model.pretrained)
    train_source, val_source, classes = build_splits(d)
    num_classes = 1 if classes is None else len(classes)
    loss = cfg.model.loss or (
        "binary_cross_entropy" if getattr(train_source, "soft_scores", False) else default_loss(num_classes)
    )
    collator = ClassificationCollator(
        pretrained.tokenizer,
        image_size=pretrained.image_size,
        max_text_length=min(d.max_text_length, pretrained.max_text_length),
    )
    dataset = MixedPretrainingBatches(
        {"pairs": train_source},
        {"pairs": 1.0},
        collator,
        global_batch_size=t.global_batch_size // t.grad_accumulation,
        num_steps=t.max_steps * t.grad_accumulation,
        rank=info.rank,
        world_size=info.world_size,
        seed=t.seed,
    )
    from torchdata.stateful_dataloader import StatefulDataLoader

    loader = StatefulDataLoader(dataset, batch_size=None, collate_fn=_identity, num_workers=0)

    torch.manual_seed(t.seed)
    model = flava_model_for_classification(
        num_classes,
        modality=cfg.model.modality,
        backbone=pretrained.model,
        loss=loss,
        classifier_hidden_dim=cfg.model.classifier_hidden_dim,
        classifier_dropout=cfg.model.classifier_dropout,
    ).to(info.device)
    wrapped, optimizer, scheduler, autocast = setup_training(
        model, t, o, device=info.device, layer_types=(TransformerEncoderLayer,)
    )

    start, skipped = 0, []
    if resume_from is not None:
        start, skipped = resume_run(checkpoints, resume_from, wrapped, optimizer, scheduler, loader)
        if skipped is None:
            raise ConfigError(
                f"key 'training.resume': {resume_from} was written by another number of ranks; "
                "resume fine-tuning with the same world size"
            )
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    logger = (
        MetricsLogger(
            out_dir / "metrics.jsonl",
            resume_step=start if resume_from else None,
            tensorboard_dir=out_dir / "tensorboard" if t.tensorboard else None,
        )
        if info.is_main
        else None
    )

    data_iter = iter(loader)
    for step in range(start, t.max_steps):
        wrapped.train()
        loss_sum = torch.zeros((), device=info.device)
        for micro in range(t.grad_accumulation):
            item = next(data_iter)
            skipped.extend(item.skipped)
            batch = {k: v.to(info.device) for k, v in item.batch.items()}
            sync = micro == t.grad_accumulation - 1
            if t.strategy == "fsdp":
                model.set_requires_gradient_sync(sync)
            with wrapped.no_sync() if t.strategy == "ddp" and not sync else nullcontext(), autocast:
                step_loss = wrapped(**batch).loss / t.grad_accumulation
            step_loss.backward()
            loss_sum += step_loss.detach().float()
        grad_norm = clip_grad_norm(model.parameters(), o.clip_grad_norm) if o.clip_grad_norm else None
        loss_value = float(all_reduce_sum(loss_sum)) / info.world_size
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"loss is {loss_value} at step {step + 1}; the last good checkpoint is "
                f"{checkpoints.latest()}; lower optim.lr and resume with training.resume=auto"
            )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if logger is not None and (done % t.log_every == 0 or done == t.max_steps):
            logger.log(
                done,
                {
                    "loss": loss_value,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": None if grad_norm is None else float(grad_norm),
                },
            )
        if done % t.checkpoint_every == 0 or done == t.max_steps:
            checkpoints.save(done, wrapped, optimizer, loop_state(done, scheduler, loader, skipped))

    export_model(wrapped, out_dir / "model" / "flava_classification.safetensors")
    gathered = [skipped]
    if dist.is_initialized():
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, skipped)
    distinct = {(kind, int(index)) for part in gathered for kind, index, _ in part}
    report = {}
    # every rank evaluates (an FSDP forward needs all of them); rank 0 reports
    validation = evaluate(wrapped.module if t.strategy == "ddp" else model, val_source, collator, loss)
    if info.is_main:
        report = {
            "task": d.task,
            "modality": cfg.model.modality,
            "loss": loss,
            "num_classes": num_classes,
            "steps": t.max_steps,
            "skipped_samples": len(distinct),
            "validation": validation,
        }
        if classes is not None and loss == "cross_entropy":
            report["validation"]["chance"] = 1 / num_classes
        (out_dir / "report.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        logger.close()
    barrier()
    return report


if __name__ == "__main__":
    try:
        main(load_config(FinetuneConfig, sys.argv[1:]))
    except (ConfigError, NonFiniteLossError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1 if isinstance(error, NonFiniteLossError) else 2)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
