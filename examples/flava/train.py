"""FLAVA pretraining recipe: one CPU, one GPU, or many GPUs and nodes with torchrun.

    python examples/flava/train.py config=examples/flava/configs/pretraining/tiny.yaml training.max_steps=100
    torchrun --nproc_per_node 8 examples/flava/train.py config=examples/flava/configs/pretraining/full.yaml \
        training.strategy=fsdp training.precision=bf16

Reads top to bottom: config -> process group -> data -> model, optimiser, schedule -> wrapping
(DDP or FSDP2 by ``training.strategy``) -> resume -> loop -> export and evaluation. ``main(cfg)``
is importable; it returns the final report.
"""

from contextlib import nullcontext
from dataclasses import dataclass, field
import json
import math
from pathlib import Path
import sys
import time
from typing import Optional
import warnings

import torch
from torch import nn
import torch.distributed as dist

from torchflava.data.pretraining import KINDS, MixedPretrainingBatches, PretrainingCollator
from torchflava.data.readers import ImageFolder, ImageTextFolder, TarShards, TextCorpus
from torchflava.data.shapes import CLASS_NAMES, ShapesWorld
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import EvalImageTransform, PretrainingImageTransform
from torchflava.evaluation import classification_accuracy, retrieval_recall, zero_shot_classifier
from torchflava.models import PretrainingBatch, flava_model, flava_model_for_pretraining
from torchflava.models.flava.convert_codebook import load_codebook_weights
from torchflava.modules.codebook import dalle_encoder
from torchflava.modules.layers import TransformerEncoderLayer, set_activation_checkpointing
from torchflava.pretrained import load_pretrained
from torchflava.training.checkpointing import (
    CheckpointManager,
    export_model,
    loop_state,
    resume_run,
)
from torchflava.training.config import ConfigError, load_config, save_config
from torchflava.training.distributed import (
    all_reduce_sum,
    barrier,
    init_distributed,
    sync_replicated_grads,
)
from torchflava.training.metrics import MetricsLogger, plot_losses, read_metrics
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

# torchdata's StatefulDataLoader calls a torch API that torch itself deprecated; nothing to act on.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")


# ----------------------------------------------------------------------------------------- config
@dataclass
class ModelConfig:
    pretrained: Optional[str] = None  # a pretraining checkpoint to start from (HF dir, torchmultimodal .pt, ours)
    image_size: int = 224
    patch_size: int = 16
    hidden_dim: int = 768
    num_heads: int = 12
    mlp_dim: int = 3072
    image_layers: int = 12
    text_layers: int = 12
    multimodal_layers: int = 6
    projection_dim: int = 768
    max_text_positions: int = 512
    dropout: float = 0.0
    image_vocab_size: int = 8192
    mim_weight: float = 1.0
    mlm_weight: float = 1.0
    itm_weight: float = 1.0
    global_contrastive_weight: float = 1.0
    mmm_image_weight: float = 1.0
    mmm_text_weight: float = 1.0
    unimodal_losses_on_pairs: bool = False
    recompute_contrastive_passes: bool = False  # recompute in backward the unmasked passes of pair batches


@dataclass
class CodebookConfig:
    pretrained: Optional[str] = None  # dVAE weights (HF FlavaImageCodebook or torchmultimodal); else seeded random init
    hidden_dim: int = 256
    blocks_per_group: int = 2


@dataclass
class ShapesConfig:
    num_pairs: int = 100_000
    num_images: int = 100_000
    num_texts: int = 100_000
    num_test: int = 540
    image_size: int = 64  # rendered size (the crop resizes to model.image_size)
    seed: int = 0


@dataclass
class FilesConfig:
    pairs_root: Optional[str] = None  # image folder of the pairs ...
    pairs_captions: Optional[str] = None  # ... and its captions (.jsonl or .tsv)
    pairs_shards: Optional[str] = None  # or webdataset-style tar shards (glob)
    images_root: Optional[str] = None  # images without captions
    texts: Optional[str] = None  # text corpus, one text per line


@dataclass
class RatiosConfig:
    pairs: float = 0.7
    images: float = 0.15
    texts: float = 0.15


@dataclass
class DataConfig:
    source: str = "shapes"  # shapes (built in) | files
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    ratios: RatiosConfig = field(default_factory=RatiosConfig)
    vocab: Optional[str] = None  # BERT vocab.txt (or a directory holding one); else trained on the run's text
    vocab_size: int = 30522  # size of a trained vocabulary
    vocab_training_texts: int = 20_000
    max_text_length: int = 77
    crop_scale_min: float = 0.9
    num_masked_patches: int = 75
    min_mask_block: int = 16
    mlm_probability: float = 0.15
    itm_negative_probability: float = 0.1
    num_workers: int = 0


@dataclass
class EvalConfig:
    enabled: bool = True  # zero-shot and retrieval on the held-out shapes split after training
    batch_size: int = 128
    templates: list[str] = field(default_factory=lambda: ["a {}", "a small {}", "a large {}"])


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def validate(cfg: TrainConfig, world_size: int) -> None:
    """Check what types cannot: choices, ranges and sizes that must agree. Raises ConfigError."""
    m, d = cfg.model, cfg.data
    raise_on_failed_checks(
        training_checks(cfg.training, cfg.optim, world_size)
        + [
            (d.source in ("shapes", "files"), "data.source", "shapes or files", d.source),
            (
                m.image_size % m.patch_size == 0,
                "model.image_size",
                f"a multiple of model.patch_size ({m.patch_size})",
                m.image_size,
            ),
            (
                d.num_masked_patches <= (m.image_size // m.patch_size) ** 2,
                "data.num_masked_patches",
                f"at most the {(m.image_size // m.patch_size) ** 2} patches",
                d.num_masked_patches,
            ),
            (
                d.max_text_length <= m.max_text_positions,
                "data.max_text_length",
                f"at most model.max_text_positions ({m.max_text_positions})",
                d.max_text_length,
            ),
            (0 < d.crop_scale_min <= 1, "data.crop_scale_min", "in (0, 1]", d.crop_scale_min),
            (min(d.ratios.pairs, d.ratios.images, d.ratios.texts) >= 0, "data.ratios", ">= 0 each", d.ratios),
        ]
    )


# ------------------------------------------------------------------------------------------- data
def build_sources(cfg: DataConfig) -> dict[str, torch.utils.data.Dataset]:
    """The pairs / images / texts sources the ratios draw from."""
    if cfg.source == "shapes":
        s = cfg.shapes
        sizes = {"pairs": s.num_pairs, "images": s.num_images, "texts": s.num_texts}
        return {k: ShapesWorld(k, n, image_size=s.image_size, seed=s.seed) for k, n in sizes.items() if n > 0}
    f, sources = cfg.files, {}
    if f.pairs_shards is not None:
        sources["pairs"] = TarShards(f.pairs_shards)
    elif f.pairs_root is not None or f.pairs_captions is not None:
        if f.pairs_root is None or f.pairs_captions is None:
            raise ConfigError("keys 'data.files.pairs_root' and 'data.files.pairs_captions' go together")
        sources["pairs"] = ImageTextFolder(f.pairs_root, f.pairs_captions)
    if f.images_root is not None:
        sources["images"] = ImageFolder(f.images_root)
    if f.texts is not None:
        sources["texts"] = TextCorpus(f.texts)
    if not sources:
        raise ConfigError("data.source=files needs at least one of data.files.pairs_*, images_root, texts")
    return sources


def build_tokenizer(cfg: DataConfig, sources: dict) -> WordPieceTokenizer:
    """Load ``data.vocab``, or learn a vocabulary from the first texts of the text-bearing sources."""
    if cfg.vocab is not None:
        return WordPieceTokenizer.from_vocab(cfg.vocab)
    texts = []
    for kind in ("texts", "pairs"):
        source = sources.get(kind)
        for index in range(min(len(source), cfg.vocab_training_texts) if source is not None else 0):
            try:
                texts.append(source.caption(index) if hasattr(source, "caption") else source[index].text)
            except Exception:  # unusable items are counted by the training data, not here
                continue
    if not texts:
        raise ConfigError("data.vocab is unset and the data holds no text to learn a vocabulary from")
    return WordPieceTokenizer.train(texts, vocab_size=cfg.vocab_size)


def build_codebook(cfg: TrainConfig) -> nn.Module:
    """The dVAE that turns the codebook view into MIM targets (in the data pipeline, fp32)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.training.seed)
        codebook = dalle_encoder(
            hidden_dim=cfg.codebook.hidden_dim,
            blocks_per_group=cfg.codebook.blocks_per_group,
            vocab_size=cfg.model.image_vocab_size,
        )
    if cfg.codebook.pretrained is not None:
        load_codebook_weights(codebook, cfg.codebook.pretrained)
    return codebook


# ------------------------------------------------------------------------------------------ model
def backbone_kwargs(cfg: ModelConfig, vocab_size: int) -> dict:
    """``flava_model`` arguments of the configured architecture (also written next to the export)."""
    return dict(
        image_embed_dim=cfg.hidden_dim,
        image_num_layers=cfg.image_layers,
        image_num_heads=cfg.num_heads,
        image_mlp_dim=cfg.mlp_dim,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        text_embed_dim=cfg.hidden_dim,
        text_num_layers=cfg.text_layers,
        text_num_heads=cfg.num_heads,
        text_mlp_dim=cfg.mlp_dim,
        vocab_size=vocab_size,
        max_seq_len=cfg.max_text_positions,
        multimodal_embed_dim=cfg.hidden_dim,
        multimodal_num_layers=cfg.multimodal_layers,
        multimodal_num_heads=cfg.num_heads,
        multimodal_mlp_dim=cfg.mlp_dim,
        projection_dim=cfg.projection_dim,
        dropout=cfg.dropout,
    )


def build_model(cfg: TrainConfig, vocab_size: int) -> nn.Module:
    m = cfg.model
    backbone = flava_model(**backbone_kwargs(m, vocab_size))
    set_activation_checkpointing(backbone, cfg.training.activation_checkpointing)
    return flava_model_for_pretraining(
        backbone=backbone,
        build_codebook=False,
        pretrained=m.pretrained,
        image_vocab_size=m.image_vocab_size,
        mim_weight=m.mim_weight,
        mlm_weight=m.mlm_weight,
        itm_weight=m.itm_weight,
        global_contrastive_weight=m.global_contrastive_weight,
        mmm_image_weight=m.mmm_image_weight,
        mmm_text_weight=m.mmm_text_weight,
        unimodal_losses_on_pairs=m.unimodal_losses_on_pairs,
        recompute_contrastive_passes=m.recompute_contrastive_passes,
    )


# Losses averaged over a varying number of masked positions per rank: the output field that counts them.
_COUNTED = {
    "mim": "mim_targets",
    "mlm": "mlm_targets",
    "mmm_image": "mmm_image_targets",
    "mmm_text": "mmm_text_targets",
}


def _count(name: str, out, batch: PretrainingBatch) -> float:
    """How many items this rank's ``name`` loss averages over (1 for per-sample means of equal batches)."""
    if name in _COUNTED:
        return float(getattr(out, _COUNTED[name]).numel())
    if name == "global_contrastive" and batch.itm_labels is not None:
        positives = int((batch.itm_labels != 0).sum())  # ITM negatives are left out of the contrastive mean
        return float(positives or batch.itm_labels.numel())
    return 1.0


def global_mean_losses(out, batch: PretrainingBatch, world_size: int) -> dict[str, torch.Tensor]:
    """This rank's share of each loss averaged over the items of all ranks (not the mean of rank means).

    DDP and FSDP average gradients over ranks. A loss averaged over this rank's ``n_r`` masked
    tokens (or matched pairs, for the contrastive loss) is rescaled by ``n_r * world_size / sum(n)``,
    so the averaged gradient is the one of the global-batch loss, as a single process computes it.
    """
    present = {name: loss for name, loss in out.losses._asdict().items() if loss is not None}
    if world_size == 1:
        return present
    counts = torch.tensor([_count(name, out, batch) for name in present])
    totals = all_reduce_sum(counts.to(out.loss.device)).cpu()
    return {
        name: loss * float(c * world_size / t) if t > 0 else loss
        for (name, loss), c, t in zip(present.items(), counts, totals)
    }


def _to_device(batch: PretrainingBatch, device: torch.device) -> PretrainingBatch:
    return PretrainingBatch(
        **{k: None if v is None else v.to(device, non_blocking=True) for k, v in batch.__dict__.items()}
    )


def _identity(item):
    return item


# ------------------------------------------------------------------------------------------- main
def main(cfg: TrainConfig) -> dict:
    info = init_distributed(cfg.training.strategy, device=cfg.training.device)
    validate(cfg, info.world_size)
    t = cfg.training
    if t.threads is not None:
        torch.set_num_threads(t.threads)
    out_dir = Path(t.output_dir)
    checkpoints = CheckpointManager(out_dir / "checkpoints", keep=t.keep_checkpoints)
    resume_from = resume_point(checkpoints, t.resume)

    # Data: rank 0 learns (or a resumed run reloads) the vocabulary; every rank builds the same
    # codebook from the seed; items are split by rank.
    sources = build_sources(cfg.data)
    saved_vocab = out_dir / "vocab.txt"
    if cfg.data.vocab is None and not (resume_from is not None and saved_vocab.is_file()):
        if info.is_main:
            build_tokenizer(cfg.data, sources).save(out_dir)
        barrier()
    tokenizer = (
        build_tokenizer(cfg.data, sources) if cfg.data.vocab is not None else WordPieceTokenizer.from_vocab(saved_vocab)
    )
    grid = cfg.model.image_size // cfg.model.patch_size
    collator = PretrainingCollator(
        tokenizer,
        PretrainingImageTransform(cfg.model.image_size, grid * 8, scale=(cfg.data.crop_scale_min, 1.0)),
        codebook=build_codebook(cfg),
        patch_grid=grid,
        max_text_length=cfg.data.max_text_length,
        num_masked_patches=cfg.data.num_masked_patches,
        min_mask_block=cfg.data.min_mask_block,
        mlm_probability=cfg.data.mlm_probability,
        itm_negative_probability=cfg.data.itm_negative_probability,
    )
    ratios = {k: getattr(cfg.data.ratios, k) for k in KINDS}
    micro_batch = t.global_batch_size // t.grad_accumulation
    dataset = MixedPretrainingBatches(
        sources,
        ratios,
        collator,
        global_batch_size=micro_batch,
        num_steps=t.max_steps * t.grad_accumulation,
        rank=info.rank,
        world_size=info.world_size,
        seed=t.seed,
    )
    from torchdata.stateful_dataloader import StatefulDataLoader

    loader = StatefulDataLoader(
        dataset,
        batch_size=None,
        collate_fn=_identity,
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
    )

    # Model, optimiser, schedule; then the parallel wrapping.
    torch.manual_seed(t.seed)
    model = build_model(cfg, tokenizer.vocab_size).to(info.device)
    o = cfg.optim
    wrapped, optimizer, scheduler, autocast = setup_training(
        model, t, o, device=info.device, layer_types=(TransformerEncoderLayer,)
    )

    start, skipped = 0, []
    if resume_from is not None:
        start, restored = resume_run(checkpoints, resume_from, wrapped, optimizer, scheduler, loader)
        if restored is not None:
            skipped = restored
        else:  # saved by fewer ranks: the data position follows from the step
            scheduler.last_epoch = start
            loader = StatefulDataLoader(
                torch.utils.data.Subset(dataset, range(start * t.grad_accumulation, len(dataset))),
                batch_size=None,
                collate_fn=_identity,
                num_workers=cfg.data.num_workers,
            )
    if info.is_main:
        tokenizer.save(out_dir)
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

    def save(step: int) -> None:
        checkpoints.save(step, wrapped, optimizer, loop_state(step, scheduler, loader, skipped))

    progress = None
    if info.is_main and t.progress_bar and start < t.max_steps:
        from tqdm import tqdm

        progress = tqdm(total=t.max_steps, initial=start, desc="pretraining", dynamic_ncols=True)
    data_iter = iter(loader)
    last_time, last_step, samples_per_s = time.perf_counter(), start, 0.0
    for step in range(start, t.max_steps):
        wrapped.train()
        parts: dict[str, torch.Tensor] = {}
        for micro in range(t.grad_accumulation):
            item = next(data_iter)
            skipped.extend(item.skipped)
            batch = _to_device(item.batch, info.device)
            sync = micro == t.grad_accumulation - 1
            if t.strategy == "fsdp":
                model.set_requires_gradient_sync(sync)
            with wrapped.no_sync() if t.strategy == "ddp" and not sync else nullcontext(), autocast:
                losses = global_mean_losses(wrapped(batch), batch, info.world_size)
                loss = torch.stack(list(losses.values())).sum() / t.grad_accumulation
            loss.backward()
            for name, value in losses.items():
                parts[name] = parts.get(name, 0.0) + value.detach().float() / t.grad_accumulation
        sync_replicated_grads(model)
        grad_norm = clip_grad_norm(model.parameters(), o.clip_grad_norm) if o.clip_grad_norm else None
        reduced = all_reduce_sum(torch.stack(list(parts.values()))).cpu() / info.world_size  # global means
        parts = {f"loss/{name}": float(value) for name, value in zip(parts, reduced)}
        loss_value = float(reduced.sum())
        if not math.isfinite(loss_value):
            last = checkpoints.latest()
            if progress is not None:
                progress.close()
            raise NonFiniteLossError(
                f"loss is {loss_value} at step {step + 1} (kind {item.kind}, parts {parts}); stopping. The last good "
                f"checkpoint is {last if last is not None else 'none (no checkpoint was written yet)'}; "
                "lower optim.lr or set optim.clip_grad_norm, then resume with training.resume=auto"
            )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        model.clamp_logit_scale_()
        done = step + 1
        if progress is not None:
            progress.update(1)
        if done % t.log_every == 0 or done == t.max_steps:
            now = time.perf_counter()
            samples_per_s = (done - last_step) * t.global_batch_size / max(now - last_time, 1e-9)
            last_time, last_step = now, done
            record = {
                "loss": loss_value,
                **parts,
                "kind": item.kind,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "samples_per_s": samples_per_s,
            }
            if logger is not None:
                logger.log(done, record)
            if progress is not None:
                progress.set_postfix(loss=f"{loss_value:.3f}", samples_per_s=f"{samples_per_s:.0f}")
        if done % t.checkpoint_every == 0 or done == t.max_steps:
            save(done)
    if progress is not None:
        progress.close()

    export_path = out_dir / "model" / "flava_pretraining.safetensors"
    export_model(wrapped, export_path)
    report = _report(cfg, info, skipped, export_path, tokenizer)
    if logger is not None:
        logger.close()
    barrier()
    return report


def _distinct_skipped(skipped: list) -> list:
    """Distinct unusable items over all ranks."""
    gathered = [skipped]
    if dist.is_initialized():
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, skipped)
    return sorted({(kind, int(index), reason) for part in gathered for kind, index, reason in part})


def _report(cfg: TrainConfig, info, skipped: list, export_path: Path, tokenizer: WordPieceTokenizer) -> dict:
    out_dir = Path(cfg.training.output_dir)
    distinct = _distinct_skipped(skipped)
    if not info.is_main:
        return {}
    records = read_metrics(out_dir / "metrics.jsonl")
    report = {
        "steps": cfg.training.max_steps,
        "final_loss": records[-1]["loss"] if records else None,
        "skipped_samples": len(distinct),
        "skipped_examples": [f"{k}[{i}]: {r}" for k, i, r in distinct[:10]],
    }
    if records:
        plot_losses(records, out_dir / "loss_curve.png")
    (export_path.parent / "backbone_config.json").write_text(
        json.dumps(backbone_kwargs(cfg.model, tokenizer.vocab_size), indent=2)
    )
    tokenizer.save(export_path.parent)
    if cfg.eval.enabled and cfg.data.source == "shapes":
        report["eval"] = evaluate_shapes(cfg, export_path, tokenizer)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    print(format_report(report))
    return report


@torch.no_grad()
def evaluate_shapes(cfg: TrainConfig, export_path: Path, tokenizer: WordPieceTokenizer) -> dict:
    """Zero-shot colour-shape classification and retrieval on the held-out shapes split."""
    backbone = load_pretrained(export_path.parent).model  # the export directory: weights, architecture, vocab
    test = ShapesWorld(
        "test", cfg.data.shapes.num_test, image_size=cfg.data.shapes.image_size, seed=cfg.data.shapes.seed
    )
    transform = EvalImageTransform(cfg.model.image_size)
    samples = [test[i] for i in range(len(test))]
    images = torch.stack([transform(s.image) for s in samples])
    bs = cfg.eval.batch_size
    image_features = torch.cat([backbone.encode_image(images[i : i + bs]) for i in range(0, len(images), bs)])

    def tokenize(texts):
        return tokenizer(list(texts), max_length=cfg.data.max_text_length)

    def encode_text(ids, mask):
        return torch.cat([backbone.encode_text(ids[i : i + bs], mask[i : i + bs]) for i in range(0, len(ids), bs)])

    text_features = encode_text(*tokenize([s.text for s in samples]))
    classes = zero_shot_classifier(encode_text, tokenize, CLASS_NAMES, cfg.eval.templates)
    labels = torch.tensor([CLASS_NAMES.index(test.scene(i).label) for i in range(len(test))])
    recall = retrieval_recall(image_features, text_features, ks=(1, 5))
    n = len(test)
    return {
        "test_items": n,
        "zero_shot_accuracy": classification_accuracy(image_features, classes, labels),
        "zero_shot_chance": 1 / len(CLASS_NAMES),
        "num_classes": len(CLASS_NAMES),
        **recall,
        "R@1_chance": 1 / n,
        "R@5_chance": 5 / n,
    }


def format_report(report: dict) -> str:
    lines = [
        f"pretraining finished: {report['steps']} steps, final loss {report['final_loss']:.4f}",
        f"unusable samples skipped: {report['skipped_samples']}",
    ]
    lines += [f"  {example}" for example in report["skipped_examples"]]
    e = report.get("eval")
    if e:
        lines.append(f"held-out shapes split ({e['test_items']} scenes, unique captions):")
        lines.append(
            f"  zero-shot classification ({e['num_classes']} colour-shape classes): "
            f"{100 * e['zero_shot_accuracy']:.1f}%   (chance {100 * e['zero_shot_chance']:.1f}%)"
        )
        for k in (1, 5):
            chance = 100 * e[f"R@{k}_chance"]
            lines.append(
                f"  image->text R@{k}: {100 * e[f'image_to_text_R@{k}']:.1f}%   text->image R@{k}: "
                f"{100 * e[f'text_to_image_R@{k}']:.1f}%   (chance {chance:.1f}%)"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        main(load_config(TrainConfig, sys.argv[1:]))
    except (ConfigError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2 if isinstance(error, ConfigError) else 1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
