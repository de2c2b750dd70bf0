r"""CLIP contrastive training recipe on the shared loop: one CPU, one GPU, or many with torchrun.

    python examples/clip/train.py config=examples/clip/configs/tiny.yaml
    torchrun --nproc_per_node 8 examples/clip/train.py config=examples/clip/configs/vit_b16.yaml \
        data.files.pairs_shards='/data/pairs/shard-*.tar'
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $HEAD:29500 examples/clip/train.py \
        config=... data.source=files data.streaming.enabled=true data.num_workers=4 \
        data.files.pairs_shards='pipe:aws s3 cp s3://bucket/pairs/shard-{000000..006999}.tar -'
    python examples/clip/train.py config=examples/clip/configs/finetune.yaml \
        model.pretrained=/models/clip-vit-base-patch16 data.files.pairs_shards='/data/pairs/shard-*.tar'
    python examples/clip/train.py config=... data.source=files data.files.pairs_captions=/data/train.csv
    python examples/clip/train.py config=... data.source=files data.files.pairs_root=/data/coco \
        data.files.pairs_captions=/data/dataset_coco.json data.files.pairs_split=[train,restval]

Reads top to bottom: config -> process group -> data (image-text pairs: the built-in shapes world,
a captions file (open_clip's CSV of absolute paths, Karpathy's split file, ...) with
the folder its relative image paths are under, or tar shards, indexed or streamed) -> ``clip_model`` -> ``fit`` (the shared loop: wrapping,
accumulation, checkpoints, exact resume, logging) -> export -> zero-shot and retrieval report
(``torchflava.evaluation``). The ``model`` section holds ``clip_model``'s own arguments; with
``model.pretrained`` (a Hugging Face, open_clip Hub or torchflava checkpoint directory, or a weights
file; an http(s) URL of one needs ``data.vocab``) those left null come from the checkpoint, and so do the
tokenizer (unless ``data.vocab``), the vocabulary size, the end token and the image mean and std (read by
:func:`torchflava.pretrained.read_clip_checkpoint`). It is read by a new run only: the sizes it gives are
recorded in the run's config.yaml, its ``clip_model`` arguments, preprocessing and tokenizer in the run directory,
and a resume trains from those, so the checkpoint may since have moved or gone (a run recorded before reads it
again). ``main(cfg)`` is importable; it returns the report.
"""

from dataclasses import asdict, dataclass, field, replace
import functools
import math
from pathlib import Path
import sys
from typing import NamedTuple, Optional, Union

import torch
from torch import nn
import yaml

from torchflava.data import run_checks
from torchflava.data.clip_tokenizer import read_tokenizer
from torchflava.data.image_text import ImageTextCollator
from torchflava.data.mixing import MixedBatch, MixedBatches, data_loss_report, format_data_losses
from torchflava.data.readers import ImageTextFolder, TarShards
from torchflava.data.samples import unusable_start
from torchflava.data.shapes import ALL_SCENES, ShapesWorld
from torchflava.data.shapes import MAX_LENGTH as SHAPES_MAX_LENGTH
from torchflava.data.streaming import (
    BrokenStream,
    StreamingBatches,
    StreamingConfig,
    broken_stream_message,
    shard_texts,
    streaming_checks,
)
from torchflava.data.tokenizer import SPECIAL_TOKENS, run_vocabulary, source_texts
from torchflava.data.transforms import PREPROCESSOR_CONFIG, EvalImageTransform, ImageTransform, RandomCropTransform
from torchflava.evaluation.shapes import DEFAULT_TEMPLATES, evaluate_shapes, format_shapes_report, shapes_prompts_check
from torchflava.models import clip_model
from torchflava.models.clip import clip_model_arguments
from torchflava.modules.losses import contrastive_loss
from torchflava.pretrained import (
    RUN_ARGUMENTS,
    CLIPCheckpoint,
    SizeMisfit,
    checkpoint_image_transform,
    holds_tokenizer,
    load_pretrained,
    read_clip_checkpoint,
    read_run_arguments,
    resolved_image_transform,
)
from torchflava.training.checkpointing import export_model
from torchflava.training.config import ConfigError, DataPaths, builder_config
from torchflava.training.distributed import rank0_report, rank0_value
from torchflava.training.loop import StepOutput, fit, holds_run_directory, restore_data_position, start_run
from torchflava.training.metrics import plot_losses, read_metrics
from torchflava.training.recipe import run_recipe
from torchflava.training.schema import (
    OptimConfig,
    TrainingConfig,
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
    raise_on_failed_checks,
    recorded_inputs_checks,
    rendered_size_check,
    resumed_run_records,
    template_checks,
    tokenizer_digest,
    training_checks,
    unread_section_checks,
    vocab_checks,
    write_inputs_record,
)
from torchflava.utils.architecture import UntoldArgument
from torchflava.utils.checkpoint import (
    check_url,
    is_remote,
    local_checkpoint,
    staged_directory,
    without_prefix,
)
from torchflava.utils.cli import write_json

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learnt temperature multiplier at 100
CONTEXT_LENGTH = 77  # clip_model's text context where neither the model section nor a checkpoint states one
LOGIT_SCALE_TOLERANCE = 1e-4  # a config's rounded log(1 / 0.07), 2.6592, is the 2.65926 weights hold


# ----------------------------------------------------------------------------------------- config
# clip_model's arguments; the vocabulary (size and end token) comes with the tokenizer.
ModelConfig = builder_config(clip_model, name="ModelConfig", exclude=("vocab_size", "eos_token_id"))


@dataclass
class ShapesConfig:
    num_pairs: int = 100_000
    num_test: int = 540
    image_size: int = 64  # rendered size (the crop resizes to model.image_size)
    seed: int = 0


@dataclass
class FilesConfig(DataPaths):
    PATHS = ("pairs_root", "pairs_captions", "pairs_shards")  # the keys naming files, folders or shards

    pairs_root: Optional[str] = None  # folder the image paths of pairs_captions are relative to (null: absolute)
    # captions file (.jsonl, .tsv, .csv, Karpathy, COCO or BLIP .json), or parquet files: a .parquet file, a glob of
    # them (/data/coco/data/train-*.parquet), a folder of them or a list of them (image and caption(s) in each row)
    pairs_captions: Optional[Union[str, list[str]]] = None
    pairs_split: Optional[list[str]] = None  # Karpathy .json, .parquet split column: the splits, e.g. [train, restval]
    pairs_image_key: Optional[str] = None  # key (.jsonl, BLIP .json) or column (.csv, .tsv) of the image paths
    pairs_text_key: Optional[str] = None  # ... and of the captions (null: image/caption, or open_clip's filepath/title)
    pairs_shards: Optional[str] = None  # or webdataset-style tar shards (glob; streamed: also brace patterns, URLs)


@dataclass
class DataConfig(DataPaths):
    PATHS = ("vocab",)

    source: str = "shapes"  # shapes (built in) | files
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    # BERT vocab.txt (or a directory holding one) or a CLIP tokenizer directory (tokenizer.json, or vocab.json +
    # merges.txt); else model.pretrained's tokenizer where its directory holds one; else learnt from the captions
    vocab: Optional[str] = None
    vocab_size: int = 30522  # size of a learnt vocabulary (a tokenizer read gives its own: recorded as the run's)
    vocab_training_texts: int = 20_000
    max_text_length: Optional[int] = None  # null: the model's text context (model.pretrained's, or the section's)
    crop_scale_min: float = 0.9
    num_workers: int = 0


@dataclass
class EvalConfig:
    # zero-shot and retrieval on the held-out shapes split after training: data.source=shapes only (a run on
    # files says so as its training starts)
    enabled: bool = True
    batch_size: int = 128
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(output_dir="runs/clip"))
    eval: EvalConfig = field(default_factory=EvalConfig)

    def resume_ignored(self) -> set[str]:
        """Keys a resumed run may find changed without a change in what it trains: ``data.vocab_size`` where
        the tokenizer is read (``data.vocab``, or ``model.pretrained``'s), not learnt: the run records the
        tokenizer's size there (a run recorded before that states the unused 30522); a learnt one is sized
        by it, and read back from the run directory when resumed. And ``model.pretrained`` where the run resumed
        records what it read of it (:func:`run_records`): it is not read again, so it may have moved, gone, or
        be named null."""
        read = {"data.vocab_size"} if self.data.vocab is not None or self.model.pretrained is not None else set()
        return read | ({"model.pretrained"} if run_records(self) is not None else set())


def run_records(cfg: TrainConfig) -> Optional[Path]:
    """The directory of the run a resume continues, where that run started from ``model.pretrained`` and recorded
    at its start what it read of it: the model's arguments (:data:`RUN_ARGUMENTS`), its preprocessing
    (``preprocessor_config.json``) and tokenizer (:func:`resumed_run_records`)."""
    return resumed_run_records(cfg.training, (RUN_ARGUMENTS, PREPROCESSOR_CONFIG))


def validate(cfg: TrainConfig, world_size: int, *, resumed: bool = False) -> Optional["FromCheckpoint"]:
    """Check what types cannot: choices, ranges and sizes that must agree. Raises ConfigError. Returns
    what a local ``model.pretrained`` brings and was checked with (None: none, or a URL's), read once:
    ``main`` trains from it. ``resumed``: a resume of a run that records what it read of ``model.pretrained``
    (:func:`run_records`), which is not read (None is returned)."""
    d, m, t = cfg.data, cfg.model, cfg.training
    raise_on_failed_checks(
        training_checks(cfg.training, cfg.optim, world_size)
        + [
            (d.source in ("shapes", "files"), "data.source", "shapes or files", d.source),
            (
                5 <= d.shapes.num_test <= len(ALL_SCENES),
                "data.shapes.num_test",
                f"in [5, {len(ALL_SCENES)}] (the evaluation reports retrieval R@5)",
                d.shapes.num_test,
            ),
            (d.shapes.image_size >= 8, "data.shapes.image_size", ">= 8", d.shapes.image_size),
            rendered_size_check("data.shapes.image_size", d.shapes.image_size),
            contrastive_batch_check(t),
            logit_scale_check("model.logit_scale_init", m.logit_scale_init, MAX_LOGIT_SCALE),
            norm_eps_check("model.norm_eps", m.norm_eps),
            # (before data.max_text_length's range, [2, context], which a context below 2 empties: it was blamed)
            (
                m.context_length is None or m.context_length >= 2,
                "model.context_length",
                "null or >= 2 (the start and end tokens)",
                m.context_length,
            ),
            text_length_check(cfg, text_context(cfg, None)),  # (model.pretrained's context: once it is read)
            (0 < d.crop_scale_min <= 1, "data.crop_scale_min", "in (0, 1]", d.crop_scale_min),
            (
                d.source != "shapes" or 0 < d.shapes.num_pairs <= SHAPES_MAX_LENGTH,
                "data.shapes.num_pairs",
                f"in [1, {SHAPES_MAX_LENGTH:,}]",
                d.shapes.num_pairs,
            ),
            (d.vocab_size >= 16, "data.vocab_size", ">= 16 (5 special tokens and the characters)", d.vocab_size),
            *vocab_checks(d.vocab, d.vocab_training_texts, read_tokenizer, expected=TOKENIZER),
            (
                d.source != "files" or d.shapes.seed == ShapesConfig().seed,
                "data.shapes.seed",
                f"its default, {ShapesConfig().seed}, since data.source=files draws nothing from the shapes world",
                d.shapes.seed,
            ),
        ]
        + unread_section_checks("data.files", d.files, d.source == "files", f"data.source={d.source} reads no files")
        + streaming_checks(
            d.streaming,
            source=d.source,
            shards=d.files.pairs_shards,
            world_size=world_size,
            num_workers=d.num_workers,
        )
        + (
            pair_file_checks(
                "data.files",
                d.files.pairs_shards,
                d.files.pairs_root,
                d.files.pairs_captions,
                required=True,
                streamed=d.streaming.enabled,
                split=d.files.pairs_split,
                image_key=d.files.pairs_image_key,
                text_key=d.files.pairs_text_key,
            )
            if d.source == "files"
            else []
        )
        + template_checks("eval.templates", cfg.eval.templates, cfg.eval.batch_size, "eval.batch_size")
    )
    # every size and choice of the model section, checked by clip_model itself on the meta device,
    # then the multipliers' module names against that same meta model (built once: cached)
    kwargs = {k: v for k, v in asdict(m).items() if k != "pretrained"}
    build = functools.cache(lambda: clip_model(**kwargs, vocab_size=max(d.vocab_size, 16)))
    if cfg.model.pretrained is None:
        # (the smallest vocabulary for the memory: a learnt one is at most data.vocab_size, as the data gives)
        smallest = functools.partial(clip_model, **kwargs, vocab_size=16)
        raise_on_failed_checks(meta_build_checks("model", build, smallest=smallest, arguments=asdict(m)))
    checked = None if resumed else checked_checkpoint(cfg)  # its header read, no tensor data
    raise_on_failed_checks(
        [
            text_length_check(cfg, text_context(cfg, None if checked is None else checked.checkpoint)),
            lr_multipliers_check(build, cfg.optim),
            *loaded_logit_scale_checks(cfg, None if checked is None else checked.checkpoint),
            learnt_vocabulary_check(cfg, None if checked is None else checked.checkpoint),
        ]
    )
    return checked


def learnt_vocabulary_check(cfg: TrainConfig, checkpoint: Optional[CLIPCheckpoint]) -> tuple:
    """That ``data.vocab_training_texts`` is its default where the tokenizer is read (``data.vocab``, or
    ``model.pretrained``'s: :func:`tokenizer_source`), not learnt: nothing would read another value.
    ``data.vocab_size`` is left as it comes (the shipped configs set it, a read tokenizer overrides it and
    the run records the tokenizer's size there), as are the ``data.shapes`` keys but the seed with
    ``data.source=files`` (``debug.yaml`` sets them, and a config file's value cannot be told from a
    typed one)."""
    default = DataConfig().vocab_training_texts
    source, key = tokenizer_source(cfg, checkpoint)
    expected = f"its default, {default}, since the tokenizer is read from {key}: no vocabulary is learnt"
    return (
        source is None or cfg.data.vocab_training_texts == default,
        "data.vocab_training_texts",
        expected,
        cfg.data.vocab_training_texts,
    )


def loaded_logit_scale_checks(cfg: TrainConfig, checkpoint: Optional[CLIPCheckpoint]) -> list[tuple]:
    """That a set ``model.logit_scale_init`` is the log temperature ``model.pretrained``'s weights hold: they
    are loaded over the initial value, so another one would be silently ignored (and written to the export's
    clip_config.json as if the run had started from it). None passes, as does a checkpoint holding none."""
    given = cfg.model.logit_scale_init
    tensors = {} if checkpoint is None or checkpoint.tensors is None else checkpoint.tensors
    held = without_prefix(tensors, "module.").get("logit_scale")  # (an open_clip DDP run's prefix, as told_sizes)
    if given is None or held is None or held.is_meta:  # (a one-element tensor is peeked with its value)
        return []
    value = float(held)
    expected = f"null or the {value:.6g} model.pretrained's weights hold (they are loaded over the initial value)"
    return [(abs(given - value) <= LOGIT_SCALE_TOLERANCE, "model.logit_scale_init", expected, given)]


def text_context(cfg: TrainConfig, checkpoint: Optional[CLIPCheckpoint]) -> Optional[int]:
    """The model's text context: ``model.context_length``; else ``model.pretrained``'s (``checkpoint``,
    what it states; None while a URL's is not downloaded); else ``clip_model``'s default."""
    if cfg.model.context_length is not None:  # (a checkpoint stating another is refused by its size checks)
        return cfg.model.context_length
    if cfg.model.pretrained is None:
        return CONTEXT_LENGTH
    return None if checkpoint is None else checkpoint.stated.get("context_length", CONTEXT_LENGTH)


def text_length_check(cfg: TrainConfig, context: Optional[int]) -> tuple:
    """The check of a set ``data.max_text_length``: room for the start and end tokens, within the model's
    text ``context`` (:func:`text_context`; None: not known yet, the lower bound alone). Null passes: the
    run takes the context itself (:func:`resolve_text_length`)."""
    length = cfg.data.max_text_length
    if context is None:
        return (length is None or length >= 2, "data.max_text_length", "in [2, model.pretrained's context]", length)
    whose = " (model.pretrained's)" if cfg.model.pretrained is not None and cfg.model.context_length is None else ""
    return (length is None or 2 <= length <= context, "data.max_text_length", f"in [2, {context}]{whose}", length)


def resolve_vocab_size(cfg: TrainConfig, tokenizer) -> None:
    """Record a read ``tokenizer``'s size (None: learnt, sized by ``data.vocab_size``) as ``data.vocab_size``, so
    that the run's config.yaml states the vocabulary it trains with, not the unused size of a learnt one."""
    if tokenizer is not None:
        cfg.data.vocab_size = tokenizer.vocab_size


def resolve_text_length(cfg: TrainConfig, context: Optional[int]) -> None:
    """Set a null ``data.max_text_length`` to the model's text ``context`` (None: not known yet), so that the
    collator, the export's tokenizer, the evaluation prompts and the run's config.yaml (which a resume
    compares with) all hold the length the run trains at."""
    if cfg.data.max_text_length is None:
        cfg.data.max_text_length = context


# ------------------------------------------------------------------------------------- pretrained
TOKENIZER = (
    "a BERT vocab.txt or a directory holding one, or a CLIP tokenizer directory (tokenizer.json, or vocab.json "
    "+ merges.txt)"
)
PRETRAINED = (
    "a CLIP checkpoint: a Hugging Face CLIPModel, open_clip Hub or torchflava run or export directory, a "
    "torchflava training checkpoint, or a weights file"
)


def section_kwargs(cfg: TrainConfig) -> dict:
    """The model section: ``clip_model``'s arguments but ``pretrained`` (None: from the checkpoint or default).
    With ``model.pretrained``, ``logit_scale_init`` is left None: the weights' own log temperature is loaded
    over it (:func:`loaded_logit_scale_checks` holds a set one to that value), while a checkpoint's config
    states the value its training started from, which a set one would otherwise have to equal too."""
    section = {k: v for k, v in asdict(cfg.model).items() if k != "pretrained"}
    if cfg.model.pretrained is not None:
        section["logit_scale_init"] = None
    return section


def given_kwargs(cfg: TrainConfig) -> dict:
    """The arguments the model section sets (not None)."""
    return {k: v for k, v in section_kwargs(cfg).items() if v is not None}


def read_checkpoint(cfg: TrainConfig, *, download: bool = False) -> Optional[CLIPCheckpoint]:
    """What ``model.pretrained`` brings; None without one, or for an http(s) URL unless ``download`` (the
    run downloads it; validation does not: no tokenizer or preprocessing comes with it, only its weights).
    A ConfigError naming ``model.pretrained`` if it does not read, or the section's key of a size its
    weights do not tell (the head count of a weights file's width that is no multiple of 64)."""
    pretrained = cfg.model.pretrained
    if pretrained is None or is_remote(pretrained) and not download:
        return None
    try:
        return opened(
            "model.pretrained",
            pretrained,
            PRETRAINED,
            # (a local path as the reader resolves it: a run's step_<N>, padded or not, too; a URL downloaded)
            lambda: read_clip_checkpoint(
                local_checkpoint(pretrained) if is_remote(pretrained) else pretrained, given=section_kwargs(cfg)
            ),
        )
    except ConfigError as error:  # (opened raises from None: the reader's own error is its context)
        untold = error.__context__
        if isinstance(untold, UntoldArgument) and hasattr(cfg.model, untold.argument):
            expected = f"a value, which the weights of model.pretrained do not tell ({untold})"
            raise ConfigError(f"key 'model.{untold.argument}': expected {expected}, got null") from None
        raise


def tokenizer_source(cfg: TrainConfig, checkpoint: Optional[CLIPCheckpoint]) -> tuple[Optional[str], str]:
    """Where the run's tokenizer comes from and the key naming it: ``data.vocab``; else the checkpoint's
    directory when it holds tokenizer files; else (None, ``data.vocab``): learnt from the captions."""
    if cfg.data.vocab is not None:
        return cfg.data.vocab, "data.vocab"
    if checkpoint is not None and checkpoint.holds_tokenizer:
        return str(checkpoint.directory), "model.pretrained"
    return None, "data.vocab"


def tokenizer_checks(checkpoint: Optional[CLIPCheckpoint], tokenizer, source: Optional[str], key: str) -> list[tuple]:
    """That ``tokenizer`` suits the checkpoint (:meth:`CLIPCheckpoint.tokenizer_misfits`), naming ``key``."""
    got, checks = source or "a vocabulary learnt from the captions", []
    for misfit in [] if checkpoint is None else checkpoint.tokenizer_misfits(tokenizer):
        if misfit.name == "vocab_size":
            expected = f"a tokenizer of at most the {misfit.expected} tokens model.pretrained embeds"
            checks.append((False, key, expected, f"{got} ({misfit.got} tokens)"))
        else:
            stated = checkpoint.stated["eos_token_id"]
            what = "its last id (model.pretrained pools at each row's highest id)" if stated is None else f"{stated}"
            expected = f"a tokenizer whose end token is model.pretrained's eos_token_id {what}"
            checks.append((False, key, expected, f"{got} (end token {misfit.got})"))
    return checks


class FromCheckpoint(NamedTuple):
    """What validation read of ``model.pretrained`` (a URL's: once downloaded, :func:`downloaded_checkpoint`)
    and checked the run against, which ``main`` trains from as it is: neither the checkpoint, nor the
    tokenizer, nor its preprocessing is read, nor checked, again.

    Attributes:
        checkpoint (Optional[CLIPCheckpoint]): its header and config (no tensor data); None for what a resumed
            run's own records give (:func:`recorded_start`).
        tokenizer: the run's tokenizer, found to fit it; None where the run learns one from the captions
            (``main`` checks it once learnt).
        kwargs (Optional[dict]): ``clip_model``'s arguments, found to fit its weights; None with a learnt
            tokenizer.
        transforms (Optional[tuple]): the training crop and evaluation transform (:func:`image_transforms`)
            for ``kwargs``' image size; None with a learnt tokenizer.
    """

    checkpoint: Optional[CLIPCheckpoint]
    tokenizer: object = None
    kwargs: Optional[dict] = None
    transforms: Optional[tuple] = None


def checked_checkpoint(cfg: TrainConfig) -> Optional[FromCheckpoint]:
    """``model.pretrained`` read and checked against the tokenizer the run will use, the model section
    (the weights' shapes) and its preprocessing, before any work (no tensor data; with a vocabulary
    learnt from the captions, its size now and the rest once it is learnt). An http(s) URL brings no
    tokenizer: it needs ``data.vocab`` (``main`` downloads its weights and checks them as a local
    file's right after, before the run records its config: :func:`downloaded_checkpoint`). ConfigError,
    naming the key, otherwise.

    Returns:
        Optional[FromCheckpoint]: what a local checkpoint brings, with the tokenizer and ``clip_model``
        arguments checked against it; None without one, or for a URL.
    """
    pretrained = cfg.model.pretrained
    if pretrained is not None and is_remote(pretrained):
        opened("model.pretrained", pretrained, PRETRAINED, lambda: check_url(pretrained))
        expected = (
            f"a tokenizer for the embeddings of the checkpoint model.pretrained downloads ({TOKENIZER}; a URL "
            "brings none, and a vocabulary learnt from the captions cannot match pretrained embeddings)"
        )
        raise_on_failed_checks([(cfg.data.vocab is not None, "data.vocab", expected, "null")])
        return None
    checkpoint = read_checkpoint(cfg)
    if checkpoint is None:
        return None
    source, key = tokenizer_source(cfg, checkpoint)
    if source is None:  # learnt: its size is data.vocab_size's at most, its end token [SEP]
        d, rows, learnt_end = cfg.data, checkpoint.vocab_size, SPECIAL_TOKENS.index("[SEP]")
        end_fits = checkpoint.stated.get("eos_token_id", learnt_end) == learnt_end
        expected = (
            f"a tokenizer for model.pretrained's {rows} token embeddings ({TOKENIZER}; {cfg.model.pretrained} has "
            "none beside it, and a vocabulary learnt from the captions cannot match pretrained embeddings)"
        )
        expected += f", or data.vocab_size {rows}" if end_fits else ""
        ok = end_fits and (rows is None or d.vocab_size == rows)
        raise_on_failed_checks([(ok, "data.vocab", expected, f"null (data.vocab_size {d.vocab_size})")])
        return FromCheckpoint(checkpoint)
    return checked_with_tokenizer(cfg, checkpoint, source, key)


def checked_with_tokenizer(cfg: TrainConfig, checkpoint: CLIPCheckpoint, source: str, key: str) -> FromCheckpoint:
    """The checkpoint with the tokenizer read from ``source`` (named by ``key``), the ``clip_model`` arguments
    and the image transforms, each checked against it (:func:`fitted_model_kwargs`); ConfigError otherwise."""
    tokenizer = opened(key, source, TOKENIZER, lambda: read_tokenizer(source))
    kwargs = fitted_model_kwargs(cfg, tokenizer, checkpoint, source, key)
    transforms = opened(  # (preprocessor_config.json read here once: main trains with these)
        "model.pretrained",
        cfg.model.pretrained,
        f"{PRETRAINED}, whose preprocessing gives the model's images",
        lambda: image_transforms(kwargs["image_size"], cfg.data, checkpoint),
    )
    return FromCheckpoint(checkpoint, tokenizer, kwargs, transforms)


def recorded_start(cfg: TrainConfig, run: Path) -> FromCheckpoint:
    """What a resume of ``run`` (:func:`run_records`) trains with, from the run's records alone, as its start
    read them from ``model.pretrained``: the model's arguments, the tokenizer (:func:`recorded_tokenizer_source`;
    None: learnt, read back by ``main``) and the transforms. ConfigError naming ``training.resume`` for a record
    that does not read."""
    arguments = run / RUN_ARGUMENTS
    kwargs = opened(
        "training.resume",
        str(arguments),
        "the model arguments the run recorded at its start (a JSON object)",
        lambda: read_run_arguments(arguments),
    )
    source, key = recorded_tokenizer_source(cfg, run)
    tokenizer = None if source is None else opened(key, source, TOKENIZER, lambda: read_tokenizer(source))
    transforms = opened(
        "training.resume",
        str(run / PREPROCESSOR_CONFIG),
        "the preprocessing the run recorded at its start",
        lambda: image_transforms(kwargs["image_size"], cfg.data, None, directory=run),
    )
    return FromCheckpoint(None, tokenizer, kwargs, transforms)


def recorded_tokenizer_source(cfg: TrainConfig, run: Path) -> tuple[Optional[str], str]:
    """:func:`tokenizer_source` for a resume of ``run`` (which records its start: it read ``model.pretrained``,
    whose tokenizer it saved, unless it read ``data.vocab``): ``data.vocab``; else the tokenizer the run saved.
    ConfigError naming ``training.resume`` where the run holds none (a learnt vocabulary would not fit the
    pretrained embeddings: it failed inside the first step)."""
    if cfg.data.vocab is not None:
        return cfg.data.vocab, "data.vocab"
    expected = f"the tokenizer the run saved at its start beside its records ({TOKENIZER})"
    raise_on_failed_checks([(holds_tokenizer(run), "training.resume", expected, f"{run}, which holds none")])
    return str(run), "model.pretrained"


def resolve_model_section(cfg: TrainConfig, checked: Optional[FromCheckpoint], keep: frozenset = frozenset()) -> None:
    """Set the model section's null sizes to those ``model.pretrained`` gave (``checked.kwargs``), so that the
    run's config.yaml states the architecture it trains and its resume rebuilds it without reading
    ``model.pretrained`` (a resume's, from the run's records: the same command line resumes); but those in
    ``keep`` (:func:`recorded_nulls`). ``logit_scale_init`` stays as set: the weights' own value is loaded over it."""
    if checked is None or checked.kwargs is None:
        return
    m = cfg.model
    built = {
        k: v
        for k, v in checked.kwargs.items()
        if hasattr(m, k) and k not in ("pretrained", "logit_scale_init", *keep) and getattr(m, k) is None
    }
    cfg.model = replace(m, **built)


def recorded_nulls(cfg: TrainConfig) -> frozenset:
    """The model keys a resumed run's config.yaml records as null: a run from ``model.pretrained`` recorded before
    the sizes were resolved into it (it reads ``model.pretrained`` again, and its config compares equal with them
    null); empty for a new run, or a config.yaml that does not read (start_run names it)."""
    run = resumed_run_records(cfg.training, ())
    try:
        section = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["model"]
    except (TypeError, OSError, KeyError, ValueError, yaml.YAMLError):  # (TypeError: no run; a config not a mapping)
        return frozenset()
    return frozenset(k for k, v in section.items() if v is None) if isinstance(section, dict) else frozenset()


def downloaded_checkpoint(cfg: TrainConfig) -> Optional[FromCheckpoint]:
    """An http(s) ``model.pretrained`` downloaded and checked as a local file's with ``data.vocab`` (which
    :func:`validate` requires of a URL), so that its text context resolves ``data.max_text_length`` before
    the run records its config; None for any other ``model.pretrained``. ConfigError, naming the key, for
    a failed download or a tokenizer or section that does not fit the weights."""
    if cfg.model.pretrained is None or not is_remote(cfg.model.pretrained):
        return None
    checkpoint = read_checkpoint(cfg, download=True)
    raise_on_failed_checks(loaded_logit_scale_checks(cfg, checkpoint))
    return checked_with_tokenizer(cfg, checkpoint, cfg.data.vocab, "data.vocab")


def fitted_model_kwargs(
    cfg: TrainConfig, tokenizer, checkpoint: Optional[CLIPCheckpoint], source: Optional[str], key: str
) -> dict:
    """:func:`model_kwargs`, once the tokenizer (from ``source``, named by ``key``) is found to fit the
    checkpoint, the checkpoint's context to hold ``data.max_text_length`` and its weights to fit the model
    (:func:`weight_checks`); ConfigError otherwise."""
    raise_on_failed_checks(tokenizer_checks(checkpoint, tokenizer, source, key))
    if checkpoint is not None and (misfits := checkpoint.size_misfits(given_kwargs(cfg))):
        raise_on_failed_checks([size_check(cfg, checkpoint, misfits, set_here=True)])  # a size its weights refute
    kwargs = opened(
        "model.pretrained", cfg.model.pretrained, PRETRAINED, lambda: model_kwargs(cfg, tokenizer, checkpoint)
    )
    raise_on_failed_checks([text_length_check(cfg, kwargs["context_length"])])
    if checkpoint is not None:
        raise_on_failed_checks(weight_checks(cfg, checkpoint, kwargs))
    return kwargs


def weight_checks(cfg: TrainConfig, checkpoint: CLIPCheckpoint, kwargs: dict) -> list[tuple]:
    """That the checkpoint's weights load into the model ``kwargs`` build, as ``clip_model`` will load them
    (their names and shapes, no data read): a size their shapes tell otherwise named by its key
    (:func:`size_check`), anything else by ``model.pretrained``."""
    if misfits := checkpoint.size_misfits(kwargs):
        return [size_check(cfg, checkpoint, misfits)]
    opened(  # what the sizes do not tell: every key and shape
        "model.pretrained",
        cfg.model.pretrained,
        "a checkpoint whose weights fit the model section",
        lambda: checkpoint.check_weights(kwargs),
    )
    return []


def size_check(
    cfg: TrainConfig, checkpoint: CLIPCheckpoint, misfits: list[SizeMisfit], *, set_here: bool = False
) -> tuple:
    """The failed check of the first size the checkpoint's weights hold otherwise than the model, with the
    others they tell and the heads left to set (no shape tells them): set them all at once. Named by the
    model section's key where the section sets that size (``set_here``: every one of ``misfits``) or leaves
    it to the default; by ``model.pretrained`` where its config states it (or it is the vocabulary's)."""
    first, others = misfits[0], ", ".join(f"{m.name} {m.expected}" for m in misfits[1:])
    if first.name.endswith("_layers"):
        told = f"the checkpoint's layers end at {first.tensor}"
    else:
        told = f"the checkpoint's {first.tensor} is {first.shape}"
    told += f"; its weights also hold {others}" if others else ""
    unset = [k for k in ("vision_heads", "text_heads") if k not in checkpoint.stated and getattr(cfg.model, k) is None]
    told += f"; no shape tells the heads: set {' and '.join('model.' + k for k in unset)} too" if unset else ""
    stated = first.name in checkpoint.stated and checkpoint.config is not None and not set_here
    if stated or not hasattr(cfg.model, first.name):
        expected = f"weights of the {first.name} {first.got} its config states ({told})"
        return (False, "model.pretrained", expected, cfg.model.pretrained)
    got = getattr(cfg.model, first.name)
    got = f"null (the default, {first.got})" if got is None else got
    return (False, f"model.{first.name}", f"{first.expected} ({told})", got)


def model_kwargs(cfg: TrainConfig, tokenizer, checkpoint: Optional[CLIPCheckpoint]) -> dict:
    """``clip_model``'s arguments for this run, every one stated (they are written next to the export): the
    model section, the tokenizer's vocabulary size and end token; with a checkpoint, what it states
    (:meth:`CLIPCheckpoint.model_arguments`)."""
    if checkpoint is not None:
        return checkpoint.model_arguments(tokenizer, **section_kwargs(cfg))
    vocab = {"vocab_size": tokenizer.vocab_size, "eos_token_id": tokenizer.sep_id}
    return clip_model_arguments(cfg.model.pretrained, **section_kwargs(cfg), **vocab)


def image_transforms(
    image_size: int, d: DataConfig, checkpoint: Optional[CLIPCheckpoint], *, directory: Optional[Path] = None
) -> tuple[RandomCropTransform, ImageTransform]:
    """The training crop (RandomResizedCrop to the model's image size) and the evaluation transform.

    From scratch: CLIP's mean and std, and :class:`EvalImageTransform`. From a checkpoint: its own
    preprocessing (``preprocessor_config.json``, open_clip's ``preprocess_cfg``; else
    :class:`EvalImageTransform`) evaluates, and the crops are normalised with its mean and std (none:
    0 and 1), as the weights were trained. ``directory``: a resumed run's, whose ``preprocessor_config.json``
    records the preprocessing its start read of its checkpoint.
    """
    if directory is not None:
        evaluation = checkpoint_image_transform(directory, image_size=image_size)
    elif checkpoint is None:
        evaluation = EvalImageTransform(image_size)
    else:
        evaluation = resolved_image_transform(checkpoint, image_size=image_size)  # (a run's checkpoint: as read)
    spec = evaluation.spec
    mean, std = (spec.mean, spec.std) if spec.mean is not None else ((0.0,) * 3, (1.0,) * 3)
    return RandomCropTransform(image_size, scale=(d.crop_scale_min, 1.0), mean=mean, std=std), evaluation


# ------------------------------------------------------------------------------------------- data
def build_pairs(cfg: DataConfig, *, resumed: bool = False) -> Optional[torch.utils.data.Dataset]:
    """The image-text pairs to train on (validate checked the keys; a file that does not read as
    data names its key); None when they are streamed. A Karpathy split file, or parquet files whose split column
    holds several, read with ``files.pairs_split`` null (every split, the test images included) is refused, except
    on a resume (``resumed``: a run started so before that was refused resumes on what it was trained on)."""
    if cfg.streaming.enabled:
        return None
    if cfg.source == "shapes":
        return ShapesWorld("pairs", cfg.shapes.num_pairs, image_size=cfg.shapes.image_size, seed=cfg.shapes.seed)
    f = cfg.files
    if f.pairs_shards is not None:
        return opened(
            "data.files.pairs_shards",
            f.pairs_shards,
            "uncompressed tar shards of samples",
            lambda: TarShards(f.pairs_shards),
            usable=unusable_start,
        )
    pairs = opened_pairs(
        "data.files",
        ImageTextFolder,
        f.pairs_root,
        f.pairs_captions,
        split=f.pairs_split,
        image_key=f.pairs_image_key,
        text_key=f.pairs_text_key,
        usable=unusable_start,
    )
    if not resumed and (refusal := every_split_error("data.files", pairs, f.pairs_split)) is not None:
        raise refusal
    return pairs


def pair_texts(cfg: DataConfig, pairs: Optional[torch.utils.data.Dataset]) -> list[str]:
    """The captions a learnt vocabulary is trained on (the first shards' when streamed)."""
    if pairs is None:  # (shards that give no sample: named, not data.vocab, which the vocabulary's error names)
        return opened(
            "data.files.pairs_shards",
            cfg.files.pairs_shards,
            "shards to stream",
            lambda: shard_texts(cfg.files.pairs_shards, cfg.vocab_training_texts),
        )
    return source_texts({"pairs": pairs}, limit=cfg.vocab_training_texts)


def build_batches(
    cfg: TrainConfig, pairs: Optional[torch.utils.data.Dataset], collator, rank: int, world_size: int
) -> torch.utils.data.Dataset:
    """This rank's micro-batches: step-indexed over ``pairs``, or streamed from the shards."""
    t, d = cfg.training, cfg.data
    micro_batch = t.global_batch_size // t.grad_accumulation
    if pairs is None:
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
            ),
            usable=StreamingBatches.unusable_start,
        )
    return MixedBatches(
        {"pairs": pairs},
        {"pairs": 1.0},
        collator,
        global_batch_size=micro_batch,
        num_steps=t.max_steps * t.grad_accumulation,
        rank=rank,
        world_size=world_size,
        seed=t.seed,
    )


def run_tokenizer(cfg: TrainConfig, source: Optional[str], key: str, pairs, *, resumed: bool):
    """The run's tokenizer: read from ``source`` (:func:`tokenizer_source`), else learnt from the captions of
    ``pairs`` (rank 0's, on every rank; in memory: ``fit`` writes it once every check has passed). A
    tokenizer that does not read, or data without a usable text, names its ``key``."""
    d = cfg.data
    return opened(
        key,
        source,
        f"{TOKENIZER}, or null and data with text to learn one from",
        lambda: (
            read_tokenizer(source)
            if source is not None
            else learnt_vocabulary(  # (a data.vocab_size too small for the text names that key)
                lambda: run_vocabulary(
                    None,
                    lambda: rank0_value(lambda: pair_texts(d, pairs)),
                    Path(cfg.training.output_dir),
                    vocab_size=d.vocab_size,
                    resumed=resumed,
                )
            )
        ),
    )


def contrastive_step(model: nn.Module, item: MixedBatch) -> StepOutput:
    """One micro-batch: CLIP's loss (features gathered over ranks), summed over this rank's pairs."""
    out = model(**item.batch)
    loss = contrastive_loss(out.image_features, out.text_features, out.logit_scale).loss
    pairs = out.image_features.shape[0]
    return StepOutput({"contrastive": loss * pairs}, {"contrastive": pairs})


def record_start(run: Path, kwargs: dict, eval_transform: ImageTransform) -> None:
    """Record in ``run`` what its start read of ``model.pretrained`` beside the tokenizer it saves: the model's
    arguments (:data:`RUN_ARGUMENTS`) and its preprocessing (``preprocessor_config.json``), each atomically."""
    write_json(run / RUN_ARGUMENTS, kwargs, allow_nan=True)
    eval_transform.save(run)


# ------------------------------------------------------------------------------------------- main
@holds_run_directory  # one run per directory, given up however main ends
def main(cfg: TrainConfig) -> dict:
    # (data.max_text_length and vocab_size resolved here, and the paths start_run makes absolute: not the caller's)
    cfg = replace(cfg, data=replace(cfg.data, files=replace(cfg.data.files)))
    checked = None  # what validate read of model.pretrained (a URL's: downloaded) and checked: neither done again
    tokenizer = None  # a tokenizer read (data.vocab, model.pretrained's) by then; None: not yet, or learnt later
    records = None  # a resumed run's directory, whose records of model.pretrained it trains with (not read again)

    def from_pretrained(config: TrainConfig, read: Optional[FromCheckpoint]) -> None:  # a new run's start
        nonlocal checked, tokenizer
        checked = read or downloaded_checkpoint(config)  # (read: validate's reading of model.pretrained, checked)
        tokenizer = None if checked is None else checked.tokenizer
        if checked is None and config.data.vocab is not None:  # from scratch with a tokenizer: read once, here
            tokenizer = run_tokenizer(config, config.data.vocab, "data.vocab", None, resumed=False)

    def validated(config: TrainConfig, world_size: int) -> None:
        nonlocal checked, tokenizer, records
        records = run_records(config)
        if records is not None:
            checked = recorded_start(config, records)
            resolve_model_section(config, checked)  # null sizes: the run's, as a new run resolves them
            validate(config, world_size, resumed=True)
            tokenizer = checked.tokenizer
        else:  # (a run recorded before the records resumes with the nulls its config.yaml states)
            from_pretrained(config, validate(config, world_size))
            resolve_model_section(config, checked, keep=recorded_nulls(config))  # model.pretrained's architecture
        # before start_run compares the config with a resumed checkpoint's and records it
        resolve_text_length(config, text_context(config, None if checked is None else checked.checkpoint))
        resolve_vocab_size(config, tokenizer)

    start = start_run(cfg, validated)  # validate, process group, run directory, resume point
    info, resume_from = start.info, start.resume_from
    t, d = cfg.training, cfg.data
    out_dir = Path(t.output_dir)
    if records is not None and resume_from is None:  # no intact checkpoint left: a new run, from model.pretrained
        records = None
        from_pretrained(cfg, checked_checkpoint(cfg))

    pairs = build_pairs(d, resumed=resume_from is not None)
    if info.is_main:  # (a shard of a parquet split left out of data.files.pairs_captions, as the commands warn)
        for warning in getattr(pairs, "warnings", ()):
            print(warning, file=sys.stderr)
        if (note := every_split_note("data.files", pairs, d.files.pairs_split)) is not None:
            print(note, file=sys.stderr)  # (a run started so before such a run was refused: resumed as started)
    num_pairs = None if pairs is None else len(pairs)  # (streamed: not known)
    raise_on_failed_checks([contrastive_data_check(t, num_pairs, pair_source_key(d))])
    checkpoint = None if checked is None else checked.checkpoint
    if records is not None and tokenizer is None:  # a resumed run's learnt vocabulary, read back
        tokenizer = run_tokenizer(cfg, None, "data.vocab", pairs, resumed=True)
    if checked is not None and checked.kwargs is not None:  # validate's tokenizer, arguments and transforms, checked
        kwargs, (train_transform, eval_transform) = checked.kwargs, checked.transforms
    else:  # a learnt tokenizer (from scratch or for a weights file alone), or data.vocab from scratch: now
        source, key = tokenizer_source(cfg, checkpoint)  # data.vocab, else learnt
        if tokenizer is None:
            tokenizer = run_tokenizer(cfg, source, key, pairs, resumed=resume_from is not None)
        kwargs = fitted_model_kwargs(cfg, tokenizer, checkpoint, source, key)
        train_transform, eval_transform = image_transforms(kwargs["image_size"], d, checkpoint)
    # the tokenizer read again at each start (data.vocab, model.pretrained's, the run's learnt one): a resume
    # whose files changed since the run's start is refused (a changed vocabulary changes the token ids)
    source, key = tokenizer_source(cfg, checkpoint) if records is None else recorded_tokenizer_source(cfg, records)
    learnt = "the vocabulary learnt at the run's start (its vocab.txt)"
    read_again = {key: (tokenizer_digest(tokenizer), "tokenizer", source or learnt)}
    if resume_from is not None:
        raise_on_failed_checks(recorded_inputs_checks(out_dir, read_again))
    assert d.max_text_length is not None  # (resolved by validated, before the config was recorded)
    collator = ImageTextCollator(tokenizer, train_transform, max_text_length=d.max_text_length)
    data = build_batches(cfg, pairs, collator, info.rank, info.world_size)
    # a captions file or shard set that changed size since the checkpoint: refused before anything is written
    raise_on_failed_checks(run_checks.resumed_data_checks(data, start.loop_states, {"pairs": pair_source_key(d)}))
    restore_data_position(data, start)  # a refused stream position: before the run directory is written
    if info.is_main and (note := run_checks.evaluation_note(d.source, cfg.eval.enabled)) is not None:
        print(note, file=sys.stderr)  # (the evaluation scores the shapes world only: said as training starts)
    evaluated = cfg.eval.enabled and d.source == "shapes"  # (prompts read apart: shapes_prompts_check)
    raise_on_failed_checks(
        [shapes_prompts_check(tokenizer, cfg.eval.templates, d.max_text_length, evaluated=evaluated)]
    )

    recorded_sizes = records is not None or checkpoint is not None and checked.kwargs is not None
    torch.manual_seed(t.seed)
    weights = checkpoint.weights if checkpoint is not None else None
    model = clip_model(pretrained=weights, **kwargs).to(info.device)

    @torch.no_grad()
    def clamp_logit_scale() -> None:
        model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)  # a multiplier in [1, 100], as open_clip and FLAVA

    try:
        result = fit(
            model,
            contrastive_step,
            data,
            training=t,
            optim=cfg.optim,
            after_step=clamp_logit_scale,
            num_workers=d.num_workers,
            description="clip",
            start=start,
            find_unused_parameters=False,  # both towers and the logit scale take part in every step's loss
            run_files=lambda run: (
                tokenizer.save(run),
                write_inputs_record(run, read_again),
                # what a run started from a checkpoint read of it, where its config.yaml records the sizes it
                # resolved (not with a vocabulary learnt for a weights file: that run reads it again)
                record_start(run, kwargs, eval_transform) if recorded_sizes else None,
            ),  # with config.yaml, once the resume is checked: nothing written before
        )
    except BrokenStream as error:  # shards whose first samples read, broken further on
        raise ConfigError(broken_stream_message(error, d.files.pairs_shards)) from None

    # written whole beside the run and renamed in: model/ is the previous export or this one, never a part
    with staged_directory(out_dir / "model", writer=info.is_main) as staging:
        export_model(model, staging / "clip.safetensors")
        if info.is_main:
            write_json(staging / "clip_config.json", kwargs, allow_nan=True)
            tokenizer.model_max_length = d.max_text_length  # the length it trained and is evaluated at: the
            tokenizer.save(staging)  # export's default (load_pretrained read the context length)
            eval_transform.save(staging)  # how to evaluate it: preprocessor_config.json
    export_path = out_dir / "model" / "clip.safetensors"
    losses = data_loss_report(result.skipped, data.lost_data)
    # rank 0 evaluates and reports; the others wait for it, however long, and are given its report (or its error)
    return rank0_report(
        lambda: _report(cfg, losses, export_path, tokenizer), run_timeout_s=cfg.training.collective_timeout_s
    )


def _report(cfg: TrainConfig, data_losses: dict, export_path: Path, tokenizer) -> dict:
    out_dir = Path(cfg.training.output_dir)
    records = read_metrics(out_dir / "metrics.jsonl")
    report = {
        "steps": cfg.training.max_steps,
        "final_loss": records[-1]["loss"] if records else None,
        "final_logit_scale": None,  # the learnt log-temperature, as model.logit_scale holds it
        "final_temperature_multiplier": None,  # exp of it: the factor the similarities are scaled by
        **data_losses,
    }
    if records:
        plot_losses(records, out_dir / "loss_curve.png")
    exported = load_pretrained(export_path.parent)  # what a user loads: weights, architecture, tokenizer, transform
    logit_scale = exported.model.logit_scale.detach()
    report["final_logit_scale"] = float(logit_scale)
    report["final_temperature_multiplier"] = float(logit_scale.exp())
    if cfg.eval.enabled and cfg.data.source == "shapes":
        s = cfg.data.shapes
        report["eval"] = evaluate_shapes(
            exported.model,
            lambda texts: tokenizer(list(texts), max_length=cfg.data.max_text_length),
            exported.image_transform,
            num_test=s.num_test,
            render_size=s.image_size,
            seed=s.seed,
            templates=cfg.eval.templates,
            batch_size=cfg.eval.batch_size,
        )
    write_json(out_dir / "report.json", report, allow_nan=True)
    lines = [
        f"clip training finished: {report['steps']} steps, final loss {report['final_loss']:.4f}, "
        f"temperature multiplier {report['final_temperature_multiplier']:.1f}",
        *format_data_losses(report),
    ]
    if "eval" in report:
        lines += format_shapes_report(report["eval"])
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    run_recipe(main, TrainConfig, sys.argv[1:])
