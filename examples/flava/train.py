r"""FLAVA pretraining recipe: one CPU, one GPU, or many GPUs and nodes with torchrun.

    python examples/flava/train.py config=examples/flava/configs/pretraining/tiny.yaml training.max_steps=100
    torchrun --nproc_per_node 8 examples/flava/train.py config=examples/flava/configs/pretraining/full.yaml \
        training.strategy=fsdp training.precision=bf16
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $HEAD:29500 examples/flava/train.py \
        config=examples/flava/configs/pretraining/full.yaml data.source=files data.streaming.enabled=true \
        data.num_workers=4 data.files.pairs_shards='pipe:aws s3 cp s3://bucket/pmd/{000000..006999}.tar -'

Reads top to bottom: config -> process group -> data -> model -> ``fit`` (the shared training loop:
wrapping, accumulation, checkpoints, resume, logging) -> export and evaluation. The ``model``
section holds ``flava_model``'s arguments and ``pretraining`` those of ``flava_model_for_pretraining``
(heads and loss weights), under the builders' own names. ``model.pretrained`` (a Hugging Face directory
or weights file, a torchmultimodal ``.pt``, or a torchflava run, export directory or training checkpoint
``<run>/checkpoints/step_<N>``, N padded or not) is read by a new run only: the sizes its config states where the section leaves defaults are recorded in the run's config.yaml,
and a resumed run loads its checkpoint's weights, so the file may since have moved or gone. The vocabulary
and ``codebook.pretrained``, read again on resume, must be what the run started with (their sha256 are
recorded in ``inputs.json``). The export (``model/``) is written whole, then renamed in. ``main(cfg)``
is importable; it returns the final report.
"""

from dataclasses import asdict, dataclass, field, replace
import functools
import math
from pathlib import Path
import sys
from typing import Optional, Union

import torch
from torch import nn

from torchflava.data import run_checks
from torchflava.data.flava import FLAVAPretrainingCollator, flava_pretraining_batches
from torchflava.data.mixing import MixedBatch, data_loss_report, format_data_losses
from torchflava.data.readers import ImageFolder, ImageTextFolder, TarShards, TextCorpus
from torchflava.data.samples import unusable_start
from torchflava.data.shapes import ALL_SCENES, ShapesWorld
from torchflava.data.shapes import MAX_LENGTH as SHAPES_MAX_LENGTH
from torchflava.data.streaming import (
    BrokenStream,
    StreamedSource,
    StreamingBatches,
    StreamingConfig,
    broken_stream_message,
    shard_texts,
    streaming_checks,
)
from torchflava.data.tokenizer import WordPieceTokenizer, read_vocabulary, run_vocabulary, source_texts
from torchflava.data.transforms import EvalImageTransform, PretrainingImageTransform
from torchflava.evaluation.shapes import evaluate_shapes, format_shapes_report, shapes_prompts_check
from torchflava.models import FLAVAForPretraining, FLAVAModel, flava_model, flava_model_for_pretraining
from torchflava.models.flava import flava_model_arguments
from torchflava.models.flava.convert_codebook import convert_codebook_to_torchflava, load_codebook_weights
from torchflava.models.flava.convert_weights import load_flava_weights, local_flava_checkpoint
from torchflava.models.flava.pretraining import LOGIT_SCALE_MAX
from torchflava.modules.codebook import dalle_encoder
from torchflava.pretrained import load_pretrained, trained_arguments
from torchflava.training.checkpointing import export_model
from torchflava.training.config import ConfigError, DataPaths, builder_config
from torchflava.training.distributed import rank0_report, rank0_value
from torchflava.training.loop import StepOutput, fit, holds_run_directory, restore_data_position, start_run
from torchflava.training.metrics import plot_losses, read_metrics
from torchflava.training.recipe import run_recipe
from torchflava.training.schema import (
    OptimConfig,
    TrainingConfig,
    checkpoint_fits,
    contrastive_batch_check,
    contrastive_data_check,
    every_split_error,
    every_split_note,
    learnt_vocabulary,
    logit_scale_check,
    lr_multipliers_check,
    meta_build_checks,
    norm_eps_check,
    opened,
    opened_pairs,
    pair_file_checks,
    pair_source_key,
    path_check,
    raise_on_failed_checks,
    recorded_inputs_checks,
    rendered_size_check,
    smallest_vocab,
    state_digest,
    template_checks,
    tokenizer_digest,
    training_checks,
    unread_section_checks,
    vocab_checks,
    write_inputs_record,
)
from torchflava.utils.checkpoint import check_fits, first_line, is_remote, peek_state_dict, staged_directory
from torchflava.utils.cli import write_json
from torchflava.utils.meta import meta_device

# ----------------------------------------------------------------------------------------- config
# flava_model's arguments (the vocabulary size comes with the tokenizer; activation checkpointing
# is training.activation_checkpointing), and flava_model_for_pretraining's (the codebook runs in the
# data pipeline).
ModelConfig = builder_config(flava_model, name="ModelConfig", exclude=("vocab_size", "checkpoint_activations"))
PretrainingConfig = builder_config(
    flava_model_for_pretraining, name="PretrainingConfig", exclude=("backbone", "codebook", "build_codebook")
)


@dataclass
class CodebookConfig(builder_config(dalle_encoder, name="DalleEncoderConfig", exclude=("vocab_size", "freeze"))):
    """``dalle_encoder``'s arguments (its vocabulary is ``pretraining.image_vocab_size``) and its weights."""

    pretrained: Optional[str] = None  # dVAE weights (HF FlavaImageCodebook or torchmultimodal); else seeded init


@dataclass
class ShapesConfig:
    num_pairs: int = 100_000
    num_images: int = 100_000
    num_texts: int = 100_000
    num_test: int = 540
    image_size: int = 64  # rendered size (the crop resizes to model.image_size)
    seed: int = 0


@dataclass
class FilesConfig(DataPaths):
    PATHS = ("pairs_root", "pairs_captions", "pairs_shards", "images_root", "texts")  # naming files, folders, shards

    pairs_root: Optional[str] = None  # folder the image paths of pairs_captions are relative to (null: absolute)
    # captions file (.jsonl, .tsv, .csv, Karpathy, COCO or BLIP .json), or parquet files: a .parquet file, a glob of
    # them (/data/coco/data/train-*.parquet), a folder of them or a list of them (image and caption(s) in each row)
    pairs_captions: Optional[Union[str, list[str]]] = None
    pairs_split: Optional[list[str]] = None  # Karpathy .json, .parquet split column: the splits, e.g. [train, restval]
    pairs_image_key: Optional[str] = None  # key (.jsonl, BLIP .json) or column (.csv, .tsv) of the image paths
    pairs_text_key: Optional[str] = None  # ... and of the captions (null: image/caption, or open_clip's filepath/title)
    pairs_shards: Optional[str] = None  # or webdataset-style tar shards (glob; streamed: also brace patterns, URLs)
    images_root: Optional[str] = None  # images without captions
    texts: Optional[str] = None  # text corpus: one text per line, or a .jsonl of {"text": ...} objects


# Each kind's share of steps when its ratio is left unset (null) and the data has that kind.
DEFAULT_RATIOS = {"pairs": 0.7, "images": 0.15, "texts": 0.15}


@dataclass
class RatiosConfig:
    # null: DEFAULT_RATIOS where the data has the kind, else 0; a value > 0 for a kind the data lacks
    # is refused (it was dropped without a word, and the run trained on the other kinds only)
    pairs: Optional[float] = None
    images: Optional[float] = None
    texts: Optional[float] = None


@dataclass
class DataConfig(DataPaths):
    PATHS = ("vocab",)

    source: str = "shapes"  # shapes (built in) | files
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)  # the pairs; images/texts mixed in by ratio
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
    # zero-shot and retrieval on the held-out shapes split after training: data.source=shapes only (a run on
    # files says so as its training starts)
    enabled: bool = True
    batch_size: int = 128
    templates: list[str] = field(default_factory=lambda: ["a {}", "a small {}", "a large {}"])


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    pretraining: PretrainingConfig = field(default_factory=PretrainingConfig)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(output_dir="runs/flava"))
    eval: EvalConfig = field(default_factory=EvalConfig)

    def resume_ignored(self) -> set[str]:
        """Keys a resumed run may find changed without a change in what it trains: the ratios of the kinds its
        data gives no source (a run recorded before ratios could be unset states 0.15 for such a kind, which
        drew nothing; it now resolves to 0, and a value > 0 is refused), and ``model.pretrained``."""
        ratios = {f"data.ratios.{kind}" for kind in DEFAULT_RATIOS if kind not in data_kinds(self.data)}
        # model.pretrained is read by a new run only (its architecture recorded in the model section): a resumed
        # one loads its checkpoint's weights, so the file may have moved, gone, or be named null
        return ratios | {"model.pretrained"}


def data_kinds(d: DataConfig) -> list[str]:
    """The kinds of data (pairs, images, texts) the data section gives a source."""
    if d.source == "files":
        f = d.files
        given = {"pairs": f.pairs_shards or f.pairs_captions, "images": f.images_root, "texts": f.texts}
    else:
        given = {"pairs": d.shapes.num_pairs > 0, "images": d.shapes.num_images > 0, "texts": d.shapes.num_texts > 0}
    return [kind for kind, present in given.items() if present]


def source_keys(d: DataConfig) -> dict[str, str]:
    """For each kind, the key(s) of the data section that give it a source (for the messages)."""
    if d.source != "files":
        return {kind: f"data.shapes.num_{kind} > 0" for kind in DEFAULT_RATIOS}
    pairs = "data.files.pairs_shards" if d.streaming.enabled else "data.files.pairs_shards or data.files.pairs_captions"
    return {"pairs": pairs, "images": "data.files.images_root", "texts": "data.files.texts"}


def run_ratios(d: DataConfig) -> dict[str, float]:
    """Each kind's share of steps: as set, else its default where the data has the kind and 0 where not."""
    kinds = data_kinds(d)
    return {
        kind: (DEFAULT_RATIOS[kind] if kind in kinds else 0.0) if value is None else value
        for kind, value in asdict(d.ratios).items()
    }


def ratio_source_checks(d: DataConfig) -> list[tuple]:
    """A ratio set > 0 for a kind the data section gives no source, as ``(ok, key, expected, got)``."""
    kinds, keys = data_kinds(d), source_keys(d)
    return [
        (
            not value or kind in kinds,  # (NaN and inf fail the data.ratios check before this one)
            f"data.ratios.{kind}",
            f"a source of {kind} for a ratio > 0 (none is configured: set {keys[kind]}), or 0",
            value,
        )
        for kind, value in asdict(d.ratios).items()
    ]


def unread_key_checks(d: DataConfig) -> list[tuple]:
    """Keys set to other than their defaults that the run would not read, as ``(ok, key, expected, got)``:
    ``data.shapes.seed`` when ``data.source=files``, and ``data.vocab_training_texts`` when ``data.vocab``
    is read (no vocabulary is learnt). Only keys no shipped config sets: the other ``data.shapes`` keys and
    ``data.vocab_size`` are set by ``debug.yaml`` and ``tiny.yaml``, which a run may take with
    ``data.source=files`` or ``data.vocab`` (README: ``data.vocab`` overrides the tokenizer), and a value
    from a config file cannot be told from one the user typed."""
    defaults = DataConfig()
    return [
        (
            d.source != "files" or d.shapes.seed == defaults.shapes.seed,
            "data.shapes.seed",
            f"its default, {defaults.shapes.seed}, since data.source=files draws nothing from the shapes world",
            d.shapes.seed,
        ),
        (
            d.vocab is None or d.vocab_training_texts == defaults.vocab_training_texts,
            "data.vocab_training_texts",
            f"its default, {defaults.vocab_training_texts}, since data.vocab is read: no vocabulary is learnt",
            d.vocab_training_texts,
        ),
    ]


EXPORT_WEIGHTS = "flava_pretraining.safetensors"  # the export's weights file, in the run's model/
PRETRAINED = (
    "a FLAVA checkpoint (a Hugging Face directory or weights file, a torchmultimodal .pt, or a torchflava run, "
    "export directory or training checkpoint) that reads, whose config agrees with the model section"
)


def pretrained_arguments(m: ModelConfig) -> dict:
    """``flava_model``'s arguments for the model section and ``model.pretrained``: those the section leaves at
    their defaults as the checkpoint's config.json (or backbone_config.json) states them, as ``flava_model``
    builds it (the vocabulary size: the checkpoint's). Reads the checkpoint's header and config, no tensor data.
    A run's training checkpoint (``<run>/checkpoints/step_<N>``, N padded or not, or a run without an export)
    states its run's architecture, resolved as ``flava_model`` resolves it (:func:`trained_arguments`).

    Raises:
        OSError, ValueError, TypeError: if the checkpoint does not read, or contradicts the section.
    """
    section = {k: v for k, v in asdict(m).items() if k != "pretrained"}
    trained = trained_arguments(flava_model, m.pretrained, section)
    return trained[1] if trained is not None else flava_model_arguments(m.pretrained, **section)


def pretrained_check(m: ModelConfig) -> tuple:
    """That a local ``model.pretrained`` reads and its config agrees with the model section (a URL passes: it
    is read when the model is built), as ``(ok, key, expected, got)``."""
    if m.pretrained is None or is_remote(m.pretrained):
        return (True, "model.pretrained", "", None)
    try:
        pretrained_arguments(m)
    except (OSError, ValueError, TypeError) as error:
        return (False, "model.pretrained", PRETRAINED, f"{m.pretrained} ({first_line(error)})")
    return (True, "model.pretrained", "", None)


def resolved_model_section(m: ModelConfig) -> ModelConfig:
    """The model section with what a local ``model.pretrained``'s config states in place of the defaults the
    section leaves (:func:`pretrained_arguments`), so that the run's config.yaml records the architecture it
    trains and a resume rebuilds it without reading ``model.pretrained``; the section as it is without one,
    or where it does not read (a new run refuses it: :func:`pretrained_check`; a resume needs none)."""
    if m.pretrained is None or is_remote(m.pretrained):
        return m
    try:
        built = pretrained_arguments(m)
    except (OSError, ValueError, TypeError):
        return m
    return ModelConfig(pretrained=m.pretrained, **{k: v for k, v in built.items() if k != "vocab_size"})


def pretrained_fits_check(cfg: TrainConfig, vocab_size: int) -> tuple:
    """That a local ``model.pretrained``'s weights load into the model the run builds with its tokenizer's
    ``vocab_size`` (names and shapes, on the meta device: no tensor data read), as ``(ok, key, expected,
    got)``: word embeddings of another size name ``data.vocab`` (the vocabulary must be the checkpoint's). A
    run's training checkpoint holds its run's architecture (checked when it is read): its vocabulary size is
    compared."""
    m = cfg.model
    if m.pretrained is None or is_remote(m.pretrained):
        return (True, "model.pretrained", "", None)
    vocab = "the vocabulary model.pretrained was trained with (its vocab.txt), whose size its embeddings have"
    got_vocab = cfg.data.vocab or "null (a vocabulary learnt from the run's text)"
    try:
        section = {k: v for k, v in asdict(m).items() if k != "pretrained"}
        trained = trained_arguments(flava_model, m.pretrained, section)
        if trained is not None:
            run_vocab = trained[1]["vocab_size"]
            ok = run_vocab == vocab_size
            return (ok, "data.vocab", vocab, f"{got_vocab} ({vocab_size} tokens; the run's {run_vocab})")
        with meta_device():
            backbone = flava_model(**flava_model_kwargs(m, vocab_size))
        load_flava_weights(backbone, peek_state_dict(local_flava_checkpoint(m.pretrained)))
    except (OSError, ValueError, TypeError) as error:
        reason = first_line(error)
        if "vocab_size=" in reason:  # (the converter names the arguments the shapes contradict)
            return (False, "data.vocab", vocab, f"{got_vocab} ({vocab_size} tokens; {reason})")
        return (
            False,
            "model.pretrained",
            "a checkpoint whose weights fit the model section",
            f"{m.pretrained} ({reason})",
        )
    return (True, "model.pretrained", "", None)


def validate(cfg: TrainConfig, world_size: int) -> None:
    """Check what types cannot, before any work: choices, ranges, sizes that must agree, the model
    sections built on the meta device, the data files. Raises ConfigError naming the key. Sets ``cfg.model`` to
    the architecture a local ``model.pretrained`` states where the section leaves defaults
    (:func:`resolved_model_section`): what the run builds and records."""
    m, d, r = cfg.model, cfg.data, run_ratios(cfg.data)
    grid_ok = m.patch_size >= 1 and m.image_size >= m.patch_size and m.image_size % m.patch_size == 0
    patches = (m.image_size // m.patch_size) ** 2 if grid_ok else 0
    f, kinds = d.files, data_kinds(d)
    raise_on_failed_checks(
        training_checks(cfg.training, cfg.optim, world_size)
        + [
            (d.source in ("shapes", "files"), "data.source", "shapes or files", d.source),
            *unread_section_checks("data.files", f, d.source == "files", f"data.source={d.source} reads no files"),
            *unread_key_checks(d),
            (
                5 <= d.shapes.num_test <= len(ALL_SCENES),
                "data.shapes.num_test",
                f"in [5, {len(ALL_SCENES)}] (the evaluation reports retrieval R@5)",
                d.shapes.num_test,
            ),
            (d.shapes.image_size >= 8, "data.shapes.image_size", ">= 8", d.shapes.image_size),
            rendered_size_check("data.shapes.image_size", d.shapes.image_size),
            *[
                (
                    0 <= getattr(d.shapes, f"num_{k}") <= SHAPES_MAX_LENGTH,
                    f"data.shapes.num_{k}",
                    f"in [0, {SHAPES_MAX_LENGTH:,}]",
                    getattr(d.shapes, f"num_{k}"),
                )
                for k in ("pairs", "images", "texts")
            ],
            (m.patch_size >= 1, "model.patch_size", ">= 1", m.patch_size),
            (grid_ok, "model.image_size", f"a positive multiple of model.patch_size ({m.patch_size})", m.image_size),
            (
                0 <= d.num_masked_patches <= patches,
                "data.num_masked_patches",
                f"in [0, {patches}]",
                d.num_masked_patches,
            ),
            (
                # a larger block than the budget rarely fits it: most images get no masked patch
                d.min_mask_block >= 1 and (d.num_masked_patches == 0 or d.min_mask_block <= d.num_masked_patches),
                "data.min_mask_block",
                f"in [1, data.num_masked_patches = {d.num_masked_patches}]",
                d.min_mask_block,
            ),
            (
                2 <= d.max_text_length <= m.max_seq_len,
                "data.max_text_length",
                f"in [2, model.max_seq_len = {m.max_seq_len}]",
                d.max_text_length,
            ),
            (0 < d.crop_scale_min <= 1, "data.crop_scale_min", "in (0, 1]", d.crop_scale_min),
            (
                all(0 <= x < math.inf for x in r.values()) and (not kinds or sum(r[k] for k in kinds) > 0),
                "data.ratios",
                f"finite and >= 0 each, and > 0 for one kind the data has ({', '.join(kinds) or 'none'})",
                r,
            ),
            *ratio_source_checks(d),
            (0 < d.mlm_probability <= 1, "data.mlm_probability", "in (0, 1]", d.mlm_probability),
            (
                0 <= d.itm_negative_probability <= 1,
                "data.itm_negative_probability",
                "in [0, 1]",
                d.itm_negative_probability,
            ),
            (d.vocab_size >= 16, "data.vocab_size", ">= 16 (5 special tokens and the characters)", d.vocab_size),
            *vocab_checks(d.vocab, d.vocab_training_texts, read_vocabulary),
            # its header and config read, no tensor data; a resume needs none (main checks it for a new run)
            pretrained_check(cfg.model) if cfg.training.resume == "none" else (True, "model.pretrained", "", None),
            logit_scale_check("model.logit_scale_init", m.logit_scale_init, LOGIT_SCALE_MAX),
            norm_eps_check("model.norm_eps", m.norm_eps),
            norm_eps_check("pretraining.head_norm_eps", cfg.pretraining.head_norm_eps),
        ]
        # the contrastive loss runs on the pair batches
        + (
            [contrastive_batch_check(cfg.training)]
            if cfg.pretraining.global_contrastive_weight > 0 and "pairs" in kinds
            else []
        )
        + streaming_checks(
            d.streaming, source=d.source, shards=f.pairs_shards, world_size=world_size, num_workers=d.num_workers
        )
        + pair_file_checks(
            "data.files",
            f.pairs_shards,
            f.pairs_root,
            f.pairs_captions,
            required=False,
            streamed=d.streaming.enabled,
            split=f.pairs_split,
            image_key=f.pairs_image_key,
            text_key=f.pairs_text_key,
        )
        + [
            (
                d.source != "files" or bool(kinds),
                "data.files",
                "pairs_shards, pairs_captions (with pairs_root for relative image paths), images_root or texts",
                asdict(f),
            ),
            path_check("data.files.images_root", f.images_root, "directory"),
            path_check("data.files.texts", f.texts, "file"),
        ]
        + [
            (0 <= value < math.inf, f"pretraining.{name}", "a finite number >= 0", value)
            for name, value in asdict(cfg.pretraining).items()
            if name.endswith("_weight")
        ]
        + [
            (  # the collator writes -100 where there is no target: another value was a traceback at step 1
                cfg.pretraining.ignore_index == -100,
                "pretraining.ignore_index",
                "-100, the label the recipe's collator writes for positions without a target",
                cfg.pretraining.ignore_index,
            )
        ]
        + template_checks("eval.templates", cfg.eval.templates, cfg.eval.batch_size, "eval.batch_size")
    )
    cfg.model = resolved_model_section(cfg.model)  # the architecture model.pretrained states, as built
    # every size and choice of the model sections, checked by the builders themselves (no memory
    # used), then the multipliers' module names against the pretraining model around that same meta
    # backbone (built once: cached)
    backbone = functools.cache(lambda: flava_model(**flava_model_kwargs(m, max(d.vocab_size, 16))))
    pretraining = functools.cache(lambda: pretraining_model(cfg, backbone()))
    codebook = functools.cache(lambda: build_codebook(cfg, seeded=False))
    # (the smallest vocabulary for the memory: a learnt one is at most data.vocab_size, as the data gives)
    smallest = functools.cache(lambda: flava_model(**flava_model_kwargs(m, smallest_vocab(m.pad_token_id))))
    sections = [  # each built once: its builder's faults, then the memory it takes
        meta_build_checks("model", backbone, smallest=smallest, arguments=asdict(cfg.model)),
        meta_build_checks(
            "pretraining",
            pretraining,
            smallest=lambda: pretraining_model(cfg, smallest()),
            arguments=asdict(cfg.pretraining),
        ),
        meta_build_checks("codebook", codebook, arguments=asdict(cfg.codebook)),
    ]
    raise_on_failed_checks(
        [faults for faults, _ in sections]
        + [lr_multipliers_check(pretraining, cfg.optim)]
        + [fits for _, fits in sections]
    )

    def codebook_fits(tensors: dict) -> None:  # as load_codebook_weights checks them, on the meta codebook
        check_fits(convert_codebook_to_torchflava(tensors, codebook()), codebook())

    raise_on_failed_checks([checkpoint_fits("codebook.pretrained", cfg.codebook.pretrained, codebook_fits)])


# ------------------------------------------------------------------------------------------- data
def build_sources(cfg: DataConfig, *, resumed: bool = False) -> dict[str, torch.utils.data.Dataset]:
    """The pairs / images / texts sources the ratios draw from. A Karpathy split file, or parquet files whose split
    column holds several, read with ``files.pairs_split`` null (every split) is refused, except on a resume (``resumed``): a run started so
    before that was refused cannot change the key on resume, and resumes on what it was trained on."""
    if cfg.source == "shapes":
        s = cfg.shapes
        sizes = {"pairs": s.num_pairs, "images": s.num_images, "texts": s.num_texts}
        return {k: ShapesWorld(k, n, image_size=s.image_size, seed=s.seed) for k, n in sizes.items() if n > 0}
    f, sources = cfg.files, {}  # validate checked the keys; a file that does not read as data names its key
    streamed = cfg.streaming.enabled  # then build_data streams the pairs from data.files.pairs_shards
    if f.pairs_shards is not None and not streamed:
        sources["pairs"] = opened(
            "data.files.pairs_shards",
            f.pairs_shards,
            "uncompressed tar shards of samples",
            lambda: TarShards(f.pairs_shards),
            usable=unusable_start,
        )
    elif f.pairs_captions is not None and not streamed:
        sources["pairs"] = opened_pairs(
            "data.files",
            ImageTextFolder,
            f.pairs_root,
            f.pairs_captions,
            split=f.pairs_split,
            image_key=f.pairs_image_key,
            text_key=f.pairs_text_key,
            usable=unusable_start,
        )
        if not resumed and (refusal := every_split_error("data.files", sources["pairs"], f.pairs_split)) is not None:
            raise refusal  # (every split was trained on, the test images the retrieval benchmarks score among them)
    if f.images_root is not None:
        sources["images"] = opened(
            "data.files.images_root",
            f.images_root,
            "a directory of images",
            lambda: ImageFolder(f.images_root),
            usable=unusable_start,
        )
    if f.texts is not None:
        sources["texts"] = opened(
            "data.files.texts",
            f.texts,
            "a UTF-8 text file",  # (what a .jsonl corpus holds is said by the reason)
            lambda: TextCorpus(f.texts),
            usable=unusable_start,
        )
    return sources


def run_texts(cfg: DataConfig, sources: dict[str, torch.utils.data.Dataset]) -> list[str]:
    """The texts a learnt vocabulary is trained on (with the first shards' captions when streamed)."""
    texts = source_texts(sources, limit=cfg.vocab_training_texts)
    if cfg.streaming.enabled:  # (shards that give no sample: named, not data.vocab, which the vocabulary's error names)
        texts += opened(
            "data.files.pairs_shards",
            cfg.files.pairs_shards,
            "shards to stream",
            lambda: shard_texts(cfg.files.pairs_shards, cfg.vocab_training_texts),
        )
    return texts


def build_codebook(cfg: TrainConfig, *, seeded: bool = True) -> nn.Module:
    """The dVAE that turns the codebook view into MIM targets (in the data pipeline, fp32)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.training.seed)
        kwargs = asdict(cfg.codebook)
        kwargs.pop("pretrained")
        codebook = dalle_encoder(**kwargs, vocab_size=cfg.pretraining.image_vocab_size)
    if not seeded:  # only its arguments are being checked
        return codebook
    if cfg.codebook.pretrained is not None:
        load_codebook_weights(codebook, cfg.codebook.pretrained)
    return codebook


def run_inputs(cfg: TrainConfig, tokenizer: WordPieceTokenizer, codebook: nn.Module) -> dict:
    """What the run reads again at each start and records the digests of (a resume compares them:
    :func:`recorded_inputs_checks`): its vocabulary, and ``codebook.pretrained``'s weights as loaded."""
    vocab = cfg.data.vocab or "the vocabulary learnt at the run's start (its vocab.txt)"
    read = {"data.vocab": (tokenizer_digest(tokenizer), "vocabulary", vocab)}
    if cfg.codebook.pretrained is not None:
        read["codebook.pretrained"] = (state_digest(codebook), "codebook weights", cfg.codebook.pretrained)
    return read


def build_data(
    cfg: TrainConfig,
    sources: dict,
    tokenizer: WordPieceTokenizer,
    rank: int,
    world_size: int,
    *,
    codebook: nn.Module,
) -> torch.utils.data.Dataset:
    """This rank's micro-batches, step-indexed (MixedBatches) or streamed pairs (StreamingBatches):
    crops, masks, ITM negatives and the ids of ``codebook`` (:func:`build_codebook`) made here."""
    d, t = cfg.data, cfg.training
    grid = cfg.model.image_size // cfg.model.patch_size
    collator = FLAVAPretrainingCollator(
        tokenizer,
        PretrainingImageTransform(cfg.model.image_size, grid * 8, scale=(d.crop_scale_min, 1.0)),
        codebook=codebook,
        patch_grid=grid,
        max_text_length=d.max_text_length,
        num_masked_patches=d.num_masked_patches,
        min_mask_block=d.min_mask_block,
        mlm_probability=d.mlm_probability,
        itm_negative_probability=d.itm_negative_probability,
    )
    micro_batch = t.global_batch_size // t.grad_accumulation

    def step_indexed(kinds: dict) -> torch.utils.data.Dataset:
        return flava_pretraining_batches(
            kinds,
            run_ratios(d),
            collator,
            global_batch_size=micro_batch,
            num_steps=t.max_steps * t.grad_accumulation,
            rank=rank,
            world_size=world_size,
            seed=t.seed,
        )

    if not d.streaming.enabled:
        return step_indexed(sources)
    # The pairs streamed, the other kinds' steps step-indexed.
    mixed = step_indexed({"pairs": StreamedSource(), **sources}) if sources else None
    return opened(
        "data.files.pairs_shards",
        d.files.pairs_shards,
        "shards to stream",
        lambda: StreamingBatches(
            d.files.pairs_shards,
            collator,
            batch_size=micro_batch // world_size,
            rank=rank,
            world_size=world_size,
            num_workers=d.num_workers,
            seed=t.seed,
            shuffle_buffer=d.streaming.shuffle_buffer,
            resampled=d.streaming.resampled,
            mixed=mixed,
        ),
        usable=StreamingBatches.unusable_start,
    )


def resumed_data_checks(d: DataConfig, data: torch.utils.data.Dataset, loop_states: Optional[list]) -> None:
    """Refuse to resume on sources whose number of items changed since the checkpoint, or on another
    number of streamed shards (:func:`torchflava.data.run_checks.resumed_data_checks`: the resumed run
    would draw other items without a word). Raises ConfigError naming the key of the source."""
    keys = {"pairs": pair_source_key(d), "images": "data.files.images_root", "texts": "data.files.texts"}
    raise_on_failed_checks(run_checks.resumed_data_checks(data, loop_states, keys))


# ------------------------------------------------------------------------------------------ model
def flava_model_kwargs(cfg: ModelConfig, vocab_size: int) -> dict:
    """``flava_model`` arguments of the configured architecture (also written next to the export)."""
    kwargs = asdict(cfg)
    kwargs.pop("pretrained")
    return {**kwargs, "vocab_size": vocab_size}


def build_model(cfg: TrainConfig, vocab_size: int, pretrained: bool = True) -> FLAVAForPretraining:
    """The model the run trains; ``pretrained=False`` leaves ``model.pretrained``'s weights unread."""
    weights = cfg.model.pretrained if pretrained else None
    return pretraining_model(cfg, flava_model(pretrained=weights, **flava_model_kwargs(cfg.model, vocab_size)))


def pretraining_model(cfg: TrainConfig, backbone: FLAVAModel) -> FLAVAForPretraining:
    """``cfg.pretraining``'s heads and losses around ``backbone`` (the codebook runs in the data pipeline)."""
    return flava_model_for_pretraining(backbone=backbone, build_codebook=False, **asdict(cfg.pretraining))


def pretraining_step(model: nn.Module, item: MixedBatch) -> StepOutput:
    """One micro-batch: the losses its kind calls for, each summed over its items with their counts."""
    out = model(item.batch)
    return StepOutput(out.loss_sums, out.loss_counts)


# ------------------------------------------------------------------------------------------- main
@holds_run_directory  # one run per directory, given up however main ends
def main(cfg: TrainConfig) -> dict:
    # (the ratios resolved here and the data paths start_run makes absolute change a copy, not the caller's config)
    cfg = replace(cfg, data=replace(cfg.data, files=replace(cfg.data.files)))

    def validated(config: TrainConfig, world_size: int) -> None:
        validate(config, world_size)
        # the shares the run trains with, as config.yaml records them and a resume compares them: a run
        # recorded before unset ratios existed (0.7 / 0.15 / 0.15 stated) resumes with them unset
        config.data.ratios = RatiosConfig(**run_ratios(config.data))

    start = start_run(cfg, validated)  # validate, process group, run directory, resume point
    info, resume_from = start.info, start.resume_from
    t = cfg.training
    out_dir = Path(t.output_dir)
    if resume_from is None:  # (a resumed run's weights come from its checkpoint: model.pretrained is not read)
        raise_on_failed_checks([pretrained_check(cfg.model)])

    # Data: the vocabulary, then this rank's share of every step's batch (every rank builds the same
    # codebook from the seed).
    sources = build_sources(cfg.data, resumed=resume_from is not None)
    if info.is_main:  # (a shard of a parquet split left out of data.files.pairs_captions, as the commands warn)
        for warning in getattr(sources.get("pairs"), "warnings", ()):
            print(warning, file=sys.stderr)
    note = every_split_note("data.files", sources.get("pairs"), cfg.data.files.pairs_split)
    if info.is_main and note is not None:  # (a run started so before such a run was refused: resumed as started)
        print(note, file=sys.stderr)
    if "pairs" in sources and cfg.data.ratios.pairs > 0:  # (streamed pairs: not counted)
        raise_on_failed_checks([contrastive_data_check(t, len(sources["pairs"]), pair_source_key(cfg.data))])
    tokenizer = opened(  # a vocab.txt that does not read, or data without a usable text, names data.vocab
        "data.vocab",
        cfg.data.vocab,
        "a BERT vocab.txt, or null and data with text to learn one from",
        lambda: learnt_vocabulary(  # (a data.vocab_size too small for the text names that key)
            lambda: run_vocabulary(  # (in memory: fit writes it, once every check has passed)
                cfg.data.vocab,
                lambda: rank0_value(lambda: run_texts(cfg.data, sources)),  # rank 0's texts, on every rank
                out_dir,
                vocab_size=cfg.data.vocab_size,
                resumed=resume_from is not None,
            )
        ),
    )
    codebook = build_codebook(cfg)
    read_again = run_inputs(cfg, tokenizer, codebook)
    if resume_from is not None:  # a vocabulary or codebook changed since the run's start: refused, nothing written
        raise_on_failed_checks(recorded_inputs_checks(out_dir, read_again))
    data = build_data(cfg, sources, tokenizer, info.rank, info.world_size, codebook=codebook)
    resumed_data_checks(cfg.data, data, start.loop_states)  # before the run directory is written, too
    restore_data_position(data, start)  # a refused stream position: before the run directory is written
    if info.is_main and (note := run_checks.evaluation_note(cfg.data.source, cfg.eval.enabled)) is not None:
        print(note, file=sys.stderr)  # (the evaluation scores the shapes world only: said as training starts)
    evaluated = cfg.eval.enabled and cfg.data.source == "shapes"  # (prompts read apart: shapes_prompts_check)
    raise_on_failed_checks(
        [shapes_prompts_check(tokenizer, cfg.eval.templates, cfg.data.max_text_length, evaluated=evaluated)]
    )

    if resume_from is None:
        raise_on_failed_checks([pretrained_fits_check(cfg, tokenizer.vocab_size)])

    torch.manual_seed(t.seed)
    model = build_model(cfg, tokenizer.vocab_size, pretrained=resume_from is None).to(info.device)
    try:
        result = fit(
            model,
            pretraining_step,
            data,
            training=t,
            optim=cfg.optim,
            after_step=model.clamp_logit_scale_,
            num_workers=cfg.data.num_workers,
            description="pretraining",
            start=start,
            run_files=lambda run: (tokenizer.save(run), write_inputs_record(run, read_again)),  # with config.yaml,
        )  # once the resume is checked: nothing written before
    except BrokenStream as error:  # shards whose first samples read, broken further on
        raise ConfigError(broken_stream_message(error, cfg.data.files.pairs_shards)) from None

    # written whole beside the run and renamed in: model/ is the previous export or this one, never a part
    with staged_directory(out_dir / "model", writer=info.is_main) as staging:
        export_model(model, staging / EXPORT_WEIGHTS)
        if info.is_main:
            write_export_files(cfg, staging, tokenizer)
    export_path = out_dir / "model" / EXPORT_WEIGHTS
    losses = data_loss_report(result.skipped, data.lost_data)
    # rank 0 evaluates and reports; the others wait for it, however long, and are given its report (or its error)
    return rank0_report(
        lambda: _report(cfg, losses, export_path, tokenizer), run_timeout_s=cfg.training.collective_timeout_s
    )


def write_export_files(cfg: TrainConfig, directory: Path, tokenizer: WordPieceTokenizer) -> None:
    """The export's files beside its weights: the architecture, the tokenizer and the evaluation transform."""
    # the section states what was built (resolved against model.pretrained, which a resume does not read)
    built = flava_model_arguments(None, **flava_model_kwargs(cfg.model, tokenizer.vocab_size))
    write_json(directory / "backbone_config.json", built, allow_nan=True)  # what was built
    tokenizer.model_max_length = cfg.data.max_text_length  # the length it trained and is evaluated at:
    tokenizer.save(directory)  # the export's default
    EvalImageTransform(cfg.model.image_size).save(directory)  # preprocessor_config.json: how to evaluate it


def _report(cfg: TrainConfig, data_losses: dict, export_path: Path, tokenizer: WordPieceTokenizer) -> dict:
    out_dir = Path(cfg.training.output_dir)
    records = read_metrics(out_dir / "metrics.jsonl")
    report = {
        "steps": cfg.training.max_steps,
        "final_loss": records[-1]["loss"] if records else None,
        **data_losses,
    }
    if records:
        plot_losses(records, out_dir / "loss_curve.png")
    if cfg.eval.enabled and cfg.data.source == "shapes":
        report["eval"] = evaluate_export(cfg, export_path, tokenizer)
    write_json(out_dir / "report.json", report, allow_nan=True)
    print(format_report(report))
    return report


def evaluate_export(cfg: TrainConfig, export_path: Path, tokenizer: WordPieceTokenizer) -> dict:
    """Zero-shot colour-shape classification and retrieval on the held-out shapes split, from the export."""
    exported = load_pretrained(export_path.parent)  # the export directory: weights, architecture, vocab, transform
    s = cfg.data.shapes
    return evaluate_shapes(
        exported.model,
        lambda texts: tokenizer(list(texts), max_length=cfg.data.max_text_length),
        exported.image_transform,
        num_test=s.num_test,
        render_size=s.image_size,
        seed=s.seed,
        templates=cfg.eval.templates,
        batch_size=cfg.eval.batch_size,
    )


def format_report(report: dict) -> str:
    lines = [
        f"pretraining finished: {report['steps']} steps, final loss {report['final_loss']:.4f}",
        *format_data_losses(report),
    ]
    if report.get("eval"):
        lines += format_shapes_report(report["eval"])
    return "\n".join(lines)


if __name__ == "__main__":
    run_recipe(main, TrainConfig, sys.argv[1:])
