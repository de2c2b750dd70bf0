"""FLAVA fine-tuning recipe: text (GLUE TSV), image (class folders, shapes) or image+text (jsonl) tasks.

    python examples/flava/finetune.py config=examples/flava/configs/finetuning/shapes.yaml model.pretrained=runs/tiny
    python examples/flava/finetune.py config=examples/flava/configs/finetuning/qnli.yaml \
        model.pretrained=/models/flava-full data.train=/glue/QNLI/train.tsv data.val=/glue/QNLI/dev.tsv

Reads top to bottom: config -> process group -> data (step-indexed batches of the training split,
``MixedBatches`` with one source) -> ``flava_model_for_classification`` (the ``model`` section holds
its arguments; ``model.pretrained`` is a checkpoint directory that brings the vocabulary) -> ``fit``
(the training loop the pretraining recipe uses: DDP/FSDP2, exact resume, also on another number
of ranks, metrics) -> validation report. ``main(cfg)`` returns the report (validation metrics).
"""

from dataclasses import asdict, dataclass, field
import json
from pathlib import Path
import sys
from typing import Optional

import torch
from torch import nn
import torch.distributed as dist

from torchflava.data.finetuning import (
    ClassificationCollator,
    GlueTsv,
    ImageClassFolder,
    ImageTextLabels,
    ShapesClassification,
)
from torchflava.data.mixing import MixedBatch, MixedBatches, data_loss_report
from torchflava.evaluation.metrics import task_metrics
from torchflava.models import flava_model_for_classification
from torchflava.models.flava.classification import LOSSES, MODALITIES, default_loss
from torchflava.pretrained import load_pretrained
from torchflava.training.checkpointing import export_model
from torchflava.training.config import ConfigError, builder_config, load_config, save_config
from torchflava.training.distributed import barrier
from torchflava.training.loop import StepOutput, fit, holds_run_directory, start_run
from torchflava.training.schema import (
    NonFiniteLossError,
    OptimConfig,
    TrainingConfig,
    raise_on_failed_checks,
    training_checks,
)

TASKS = ("glue", "image_folder", "image_text", "shapes")

# flava_model_for_classification's arguments; num_classes follows from the data, the backbone from
# ``pretrained`` (a run, export or Hugging Face directory, loaded with its vocabulary).
FinetuneModelConfig = builder_config(
    flava_model_for_classification, name="FinetuneModelConfig", exclude=("num_classes", "backbone")
)


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
            (cfg.model.modality in MODALITIES, "model.modality", f"one of {MODALITIES}", cfg.model.modality),
            (cfg.model.loss in (None, *LOSSES), "model.loss", f"null or one of {LOSSES}", cfg.model.loss),
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


def classification_step(model: nn.Module, item: MixedBatch) -> StepOutput:
    """One micro-batch: the task loss summed over its rows, and the row count."""
    out = model(**item.batch)
    return StepOutput(out.loss_sums, out.loss_counts)


@holds_run_directory  # one run per directory, given up however main ends
def main(cfg: FinetuneConfig) -> dict:
    start = start_run(cfg, validate)  # validate, process group, run directory, resume point
    info = start.info
    t, d = cfg.training, cfg.data
    out_dir = Path(t.output_dir)

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
    data = MixedBatches(
        {"train": train_source},
        {"train": 1.0},
        collator,
        global_batch_size=t.global_batch_size // t.grad_accumulation,
        num_steps=t.max_steps * t.grad_accumulation,
        rank=info.rank,
        world_size=info.world_size,
        seed=t.seed,
    )

    torch.manual_seed(t.seed)
    kwargs = {**asdict(cfg.model), "pretrained": None, "loss": loss}  # the backbone comes loaded
    model = flava_model_for_classification(num_classes, backbone=pretrained.model, **kwargs).to(info.device)
    if info.is_main:
        save_config(cfg, out_dir / "config.yaml")
    result = fit(model, classification_step, data, training=t, optim=cfg.optim, description="fine-tuning", start=start)

    export_model(model, out_dir / "model" / "flava_classification.safetensors")
    # every rank evaluates (an FSDP forward needs all of them); rank 0 reports
    validation = evaluate(model, val_source, collator, loss)
    report = {}
    if info.is_main:
        report = {
            "task": d.task,
            "modality": cfg.model.modality,
            "loss": loss,
            "num_classes": num_classes,
            "steps": result.step,
            **data_loss_report(result.skipped, data.lost_data),
            "validation": validation,
        }
        if classes is not None and loss == "cross_entropy":
            report["validation"]["chance"] = 1 / num_classes
        (out_dir / "report.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
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
