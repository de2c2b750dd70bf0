r"""FLAVA fine-tuning recipe: text (GLUE TSV), image (class folders, shapes) or image+text (jsonl) tasks.

    python examples/flava/finetune.py config=examples/flava/configs/finetuning/shapes.yaml model.pretrained=runs/tiny
    python examples/flava/finetune.py config=examples/flava/configs/finetuning/qnli.yaml \
        model.pretrained=/models/flava-full data.train=/glue/QNLI/train.tsv data.val=/glue/QNLI/dev.tsv

Reads top to bottom: config -> process group -> data (step-indexed batches of the training split,
``MixedBatches`` with one source) -> ``flava_model_for_classification`` (the ``model`` section holds
its arguments; ``model.pretrained`` is a checkpoint directory that brings the vocabulary, or a run's
training checkpoint ``<run>/checkpoints/step_<N>``; read by a new run only, which records the backbone's
arguments, tokenizer and preprocessing in its directory for its resume) -> ``fit``
(the training loop the pretraining recipe uses: DDP/FSDP2, exact resume, also on another number
of ranks, metrics) -> the classifier exported -> validation report: the export (what a user loads) on
``data.val`` and on each named set of ``data.extra_val`` (MNLI's matched and mismatched dev sets in one
run), each rank predicting its share of every set a batch at a time, rank 0 scoring.
``main(cfg)`` returns the report.
"""

import copy
from dataclasses import asdict, dataclass, field, replace
import functools
from pathlib import Path
import sys
from typing import Optional

import torch
from torch import nn

from torchflava.classify import export_classifier, load_classifier
from torchflava.data.finetuning import (
    ClassificationCollator,
    GlueTsv,
    ImageClassFolder,
    ImageTextLabels,
    empty_classes_warning,
    shapes_task_checks,
    shapes_task_splits,
    training_source_key,
    unread_task_key_checks,
)
from torchflava.data.mixing import MixedBatch, MixedBatches, data_loss_report
from torchflava.data.run_checks import resumed_data_checks
from torchflava.data.samples import BadSample, readable_chunks, unusable_start
from torchflava.data.transforms import PREPROCESSOR_CONFIG
from torchflava.evaluation.metrics import correlation, percent, prediction_metrics, predictions_and_targets
from torchflava.models import flava_model, flava_model_for_classification
from torchflava.models.flava import flava_model_arguments
from torchflava.models.flava.classification import LOSSES, MODALITIES, read_inputs
from torchflava.pretrained import (
    RUN_ARGUMENTS,
    Pretrained,
    checkpoint_image_transform,
    checkpoint_layout,
    directory_tokenizer,
    load_pretrained,
    local_directory,
    read_run_arguments,
    text_positions,
    training_checkpoint,
)
from torchflava.training.config import ConfigError, DataPaths, builder_config
from torchflava.training.distributed import barrier, gather_shares, rank0_report
from torchflava.training.loop import StepOutput, fit, holds_run_directory, start_run, trained_config
from torchflava.training.metrics import write_fine_tuning_report
from torchflava.training.recipe import run_recipe
from torchflava.training.schema import (
    OptimConfig,
    TrainingConfig,
    lr_multipliers_check,
    memory_check,
    opened,
    path_check,
    raise_on_failed_checks,
    rendered_size_check,
    resumed_run_records,
    training_checks,
)
from torchflava.utils.checkpoint import staged_directory
from torchflava.utils.cli import write_json

TASKS = ("glue", "image_folder", "image_text", "shapes")

# flava_model_for_classification's arguments; num_classes follows from the data, the backbone from
# ``pretrained`` (a run, export or Hugging Face directory, loaded with its vocabulary).
_ModelArguments = builder_config(
    flava_model_for_classification, name="FinetuneModelConfig", exclude=("num_classes", "backbone")
)


@dataclass
class FinetuneModelConfig(_ModelArguments):
    # null: the task's one modality (glue: text; image_folder and shapes: image), or image_text's
    # multimodal (the builder's default); set so before the run's config is recorded
    modality: Optional[str] = None


DEFAULT_TEXT_LENGTH = 128  # data.max_text_length's null, at most the checkpoint's text positions
MAX_LISTED_LABELS = 10  # the integer labels a refusal shows (data.labels=[...])


@dataclass
class FinetuneDataConfig(DataPaths):
    PATHS = ("train", "val", "extra_val", "image_root")  # the keys naming files or folders

    task: str = "glue"  # glue (TSV) | image_folder | image_text (jsonl + images) | shapes (built in)
    train: Optional[str] = None  # TSV / jsonl file, or image folder
    val: Optional[str] = None
    val_name: str = "val"  # data.val's name in the report's validation_sets
    # more validation sets, name -> path as data.val (a null path: give it), evaluated after data.val;
    # data.extra_val=null drops those a config names
    extra_val: Optional[dict[str, Optional[str]]] = field(default_factory=dict)
    image_root: Optional[str] = None  # images of an image_text task
    text_columns: list[str] = field(default_factory=lambda: ["sentence"])
    label_column: str = "label"
    # class / answer names in id order; null: glue labels are regression targets (labels all written as
    # integers are refused then, unless model.loss=mse)
    labels: Optional[list[str]] = None
    columns: Optional[list[str]] = None  # glue: a TSV's column names in order if it has no header row (CoLA)
    # the text tasks' (glue, image_text) tokens per text; null: 128, at most the checkpoint's text positions (set so
    # before the run's config is recorded, for every task); a set value must fit those positions
    max_text_length: Optional[int] = None
    # null: whether data.text_columns names two columns (a glue sentence pair, encoded as BERT's two segments
    # [CLS] a [SEP] b [SEP] with token types 0 and 1), set so before the run's config is recorded; a set
    # value must say the same. Recorded so that a run from before pairs were so encoded (joined by [SEP] into
    # one segment) is not resumed on the other encoding
    sentence_pairs: Optional[bool] = None
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

    def resume_ignored(self) -> set[str]:
        """Keys the training loop's resume comparison leaves to the recipe: ``data.max_text_length``, which
        :func:`text_length_resume_check` compares knowing the checkpoint's text positions (a run recorded
        before the length was resolved states 128 where it trained at the checkpoint's fewer positions), and
        ``data.sentence_pairs``, which :func:`sentence_pairs_resume_check` compares (a run recorded before the
        key existed states none: a single-text one resumes, a sentence-pair one trained on another encoding).
        And ``model.pretrained`` where the run resumed records what it read of it (:func:`run_records`): it is
        not read again, so it may have moved, gone, or be named null. And the data keys the task does not read
        (:data:`TASK_KEYS`): a run started while they were accepted (ignored) resumes with them back at their defaults."""
        recorded = {"model.pretrained"} if run_records(self) is not None else set()
        return {"data.max_text_length", "data.sentence_pairs"} | recorded | unread_task_keys(self.data)


def unread_task_keys(d: FinetuneDataConfig) -> set[str]:
    """The keys of :data:`TASK_KEYS` that ``d.task`` does not read."""
    return {f"data.{name}" for name, tasks in TASK_KEYS.items() if d.task not in tasks}


def run_records(cfg: FinetuneConfig) -> Optional[Path]:
    """The directory of the run a resume continues where it recorded at its start what it read of
    ``model.pretrained``: the backbone's arguments (:data:`RUN_ARGUMENTS`), its preprocessing
    (``preprocessor_config.json``) and its tokenizer (``vocab.txt``); None for a new run or one recorded before
    (:func:`resumed_run_records`)."""
    return resumed_run_records(cfg.training, (RUN_ARGUMENTS, PREPROCESSOR_CONFIG, "vocab.txt"))


def recorded_backbone(run: Path) -> dict:
    """The backbone's ``flava_model`` arguments ``run`` recorded at its start (ConfigError naming
    ``training.resume`` where the record does not read)."""
    file = run / RUN_ARGUMENTS
    return opened(
        "training.resume",
        str(file),
        "the backbone arguments the run recorded at its start (a JSON object)",
        lambda: read_run_arguments(file),
    )


def recorded_pretrained(run: Path, kwargs: dict) -> Pretrained:
    """What a resumed run takes of ``model.pretrained`` from ``run``'s records instead: the backbone built from
    its recorded arguments (its weights come with the checkpoint resumed from), the tokenizer and the
    preprocessing the run saved at its start."""
    tokenizer = opened(
        "training.resume",
        str(run),
        "a run directory holding the tokenizer it saved at its start",
        lambda: directory_tokenizer(run, "flava"),
    )
    transform = opened(
        "training.resume",
        str(run / PREPROCESSOR_CONFIG),
        "the preprocessing the run recorded at its start",
        lambda: checkpoint_image_transform(run, image_size=kwargs["image_size"]),
    )
    return Pretrained(flava_model(**kwargs).eval(), tokenizer, kwargs, run, transform)


def record_start(run: Path, pretrained: Pretrained, transform) -> None:
    """Record in ``run`` what its start read of ``model.pretrained``: the backbone's arguments, every one stated
    (:data:`RUN_ARGUMENTS`), its tokenizer and the preprocessing it trains with, each atomically."""
    write_json(run / RUN_ARGUMENTS, flava_model_arguments(**pretrained.kwargs), allow_nan=True)
    pretrained.tokenizer.save(run)
    transform.save(run)


# Which encoder's CLS each task can feed: its inputs are text (glue), images (image_folder, shapes) or both.
TASK_MODALITIES = {
    "glue": ("text",),
    "image_folder": ("image",),
    "shapes": ("image",),
    "image_text": ("text", "image", "multimodal"),
}
PRETRAINED = "a FLAVA checkpoint directory"
# What data.train / data.val name for each file task.
TASK_FILES = {"glue": "file", "image_text": "file", "image_folder": "directory"}
# The data keys only some tasks read (set for another, refused: they were silently ignored); data.train, data.val,
# data.extra_val and data.labels, which the shapes task alone does not read, have their own checks (_unread_checks)
TASK_KEYS = {
    "image_root": ("image_text",),
    "max_text_length": ("glue", "image_text"),  # (the image tasks read no text)
    "text_columns": ("glue",),
    "label_column": ("glue",),
    "columns": ("glue",),
    "shapes_train": ("shapes",),
    "shapes_val": ("shapes",),
    "image_size": ("shapes",),
}


def is_checkpoint_directory(value: Optional[str]) -> bool:
    """Whether ``model.pretrained`` names a directory: a path, or a ``file://`` URL of one; or a run's training
    checkpoint, ``<run>/checkpoints/step_<N>`` with N padded or not (:func:`training_checkpoint`, as the
    checkpoint is loaded; a step that is not there passes: :func:`checkpoint_layout` names the steps there are)."""
    try:
        local = None if value is None else Path(local_directory(value))
    except (ValueError, FileNotFoundError):  # another URL, or a file:// URL of nothing
        return False
    if local is None or local.is_dir():
        return local is not None
    try:
        return training_checkpoint(local, quiet=True) is not None
    except FileNotFoundError:  # a run's step_<N> that is not there: refused with the steps there are
        return True


def task_modality(cfg: FinetuneConfig) -> str:
    """``model.modality``, or for null the task's only one (image_text: the builder's default, multimodal)."""
    if cfg.model.modality is not None:
        return cfg.model.modality
    fitting = TASK_MODALITIES.get(cfg.data.task, ())
    return fitting[0] if len(fitting) == 1 else "multimodal"


def validate(cfg: FinetuneConfig, world_size: int, *, recorded: Optional[dict] = None) -> int:
    """Check every key types cannot, before any work: choices, ranges, the task's files and whether
    the model, loss and labels fit the task. Raises ConfigError naming the key. ``recorded``: the backbone
    arguments a resumed run recorded (:func:`recorded_backbone`), checked in place of ``model.pretrained``'s,
    which is not read.

    Returns:
        int: the text positions of ``model.pretrained`` (what a null ``data.max_text_length`` is capped at).
    """
    d, m = cfg.data, cfg.model
    labels = d.labels
    modality = task_modality(cfg)
    kind = TASK_FILES.get(d.task)
    raise_on_failed_checks(
        training_checks(cfg.training, cfg.optim, world_size)
        + [
            (d.task in TASKS, "data.task", f"one of {TASKS}", d.task),
            (kind is None or d.train is not None, "data.train", f"a {kind} for data.task={d.task}", d.train),
            (kind is None or d.val is not None, "data.val", f"a {kind} for data.task={d.task}", d.val),
            *([path_check("data.train", d.train, kind), path_check("data.val", d.val, kind)] if kind else []),
            (modality in MODALITIES, "model.modality", f"null or one of {MODALITIES}", m.modality),
            (
                modality in TASK_MODALITIES.get(d.task, MODALITIES),
                "model.modality",
                f"null or one of {TASK_MODALITIES.get(d.task)} for data.task={d.task}",
                m.modality,
            ),
            (m.loss in (None, *LOSSES), "model.loss", f"null or one of {LOSSES}", m.loss),
            (m.loss in (None, *task_losses(d)), "model.loss", _task_loss_expected(d), m.loss),
            (m.classifier_hidden_dim >= 1, "model.classifier_hidden_dim", ">= 1", m.classifier_hidden_dim),
            (0 <= m.classifier_dropout < 1, "model.classifier_dropout", "in [0, 1)", m.classifier_dropout),
            (
                recorded is not None or is_checkpoint_directory(m.pretrained),
                "model.pretrained",
                "a checkpoint directory, or a file:// URL of one (it brings the vocabulary)",
                m.pretrained,
            ),
            (
                labels is None or (len(labels) >= 2 and len(set(labels)) == len(labels)),
                "data.labels",
                "null or at least 2 distinct class names",
                labels,
            ),
            (
                labels is not None or d.task != "image_text",
                "data.labels",
                "the class / answer names for image_text",
                labels,
            ),
            (
                d.max_text_length is None or 2 <= d.max_text_length,
                "data.max_text_length",
                "null or >= 2",
                d.max_text_length,
            ),
            (
                d.max_text_length is None or 3 <= d.max_text_length or not reads_sentence_pairs(d),
                "data.max_text_length",
                "null or >= 3 for sentence pairs ([CLS] and two [SEP])",
                d.max_text_length,
            ),
            (
                d.sentence_pairs in (None, reads_sentence_pairs(d)),
                "data.sentence_pairs",
                f"null or {reads_sentence_pairs(d)} (whether data.task=glue with two data.text_columns: "
                f"{list(d.text_columns)})",
                d.sentence_pairs,
            ),
        ]
        + _task_checks(d)
        + _extra_val_checks(d, kind)
        + _unread_checks(d)
    )
    # its config files only (weights are read when it is loaded): a CLIP checkpoint has no FLAVA backbone
    if recorded is None:
        layout = opened(
            "model.pretrained", m.pretrained, PRETRAINED, lambda: checkpoint_layout(local_directory(m.pretrained))
        )
        got = f"{m.pretrained} (a {layout.family.upper()} checkpoint)"
        if layout.family == "clip":  # (which the CLIP recipe fine-tunes as an image classifier)
            got = f"{m.pretrained} (a CLIP checkpoint: examples/clip/finetune.py fine-tunes one)"
        raise_on_failed_checks([(layout.family == "flava", "model.pretrained", PRETRAINED, got)])
    backbone_kwargs = layout.kwargs if recorded is None else recorded
    positions = text_positions("flava", backbone_kwargs)
    raise_on_failed_checks(
        # (data.max_text_length: what a run records, resolved for every task, accepted too; its config.yaml loads)
        unread_task_key_checks(d, d.task, TASK_KEYS, recorded={"max_text_length": min(DEFAULT_TEXT_LENGTH, positions)})
        + [
            (
                d.max_text_length is None or d.max_text_length <= positions,
                "data.max_text_length",
                f"null ({DEFAULT_TEXT_LENGTH}, at most the checkpoint's positions) or at most {positions}, the text positions of "
                f"model.pretrained ({m.pretrained})",
                d.max_text_length,
            )
        ]
    )
    loss = m.loss or task_losses(d)[0]  # the module names are what is checked: any fitting head will do

    @functools.cache  # (built once on the meta device, for both checks)
    def classifier() -> nn.Module:
        kwargs = {**asdict(m), "modality": modality, "pretrained": None, "loss": loss}
        return flava_model_for_classification(
            1 if loss == "mse" else 2, backbone=flava_model(**backbone_kwargs), **kwargs
        )

    # the head's size (the backbone is the checkpoint's): a width of 10^12 was an allocator's traceback
    raise_on_failed_checks(
        [memory_check("model.classifier_hidden_dim", classifier), lr_multipliers_check(classifier, cfg.optim)]
    )
    return positions


def resolve_defaults(cfg: FinetuneConfig, positions: int) -> None:
    """Set the nulls that follow from the task and the checkpoint (its text ``positions``): the model's
    modality (:func:`task_modality`) and the text length (128, at most ``positions``), so that the model,
    the collator, the export's tokenizer, the report and the run's config.yaml (which a resume compares
    with) all hold what the run trains with."""
    cfg.model.modality = task_modality(cfg)
    cfg.data.sentence_pairs = reads_sentence_pairs(cfg.data)
    if cfg.data.max_text_length is None:
        cfg.data.max_text_length = min(DEFAULT_TEXT_LENGTH, positions)


def text_length_resume_check(saved: Path, cfg: FinetuneConfig, positions: int) -> None:
    """Refuse a resumed run whose text length differs from the one the checkpoint trained at. The
    ``saved`` config.yaml may state a length above the checkpoint's text ``positions`` (recorded before
    the length was resolved, while it was capped silently): that run trained at ``positions``. A task that
    reads no text (image_folder, shapes) trained nothing with it: any length resumes (also one a run set
    while it was accepted, and ignored, for such a task).

    Raises:
        ConfigError: in the training loop's form for a refused resume change, naming data.max_text_length.
    """
    from omegaconf import OmegaConf

    if cfg.data.task not in TASK_KEYS["max_text_length"]:
        return
    recorded = OmegaConf.select(OmegaConf.load(saved), "data.max_text_length")
    length = cfg.data.max_text_length
    trained_at = positions if isinstance(recorded, int) and recorded > positions else recorded
    if trained_at != length:
        raise ConfigError(
            f"key 'data.max_text_length' ({recorded!r} -> {length!r}): expected the value the checkpoint was trained "
            f"with ({saved}), since a resumed run cannot change what it trains; start a new run in another "
            "training.output_dir"
        )


def reads_sentence_pairs(d: FinetuneDataConfig) -> bool:
    """Whether the task's items are sentence pairs: a glue task with two data.text_columns."""
    return d.task == "glue" and len(d.text_columns) == 2


def sentence_pairs_resume_check(saved: Path, cfg: FinetuneConfig) -> None:
    """Refuse a resumed run whose sentence pairs the checkpoint trained on another encoding: a ``saved``
    config.yaml without ``data.sentence_pairs`` is a run from before pairs were encoded as two segments,
    which trained a pair task on the two sentences joined by ``[SEP]`` into one segment.

    Raises:
        ConfigError: in the training loop's form for a refused resume change, naming data.sentence_pairs.
    """
    from omegaconf import OmegaConf

    recorded = OmegaConf.select(OmegaConf.load(saved), "data.sentence_pairs")
    pairs = cfg.data.sentence_pairs
    if recorded == pairs or (recorded is None and not pairs):  # (a single-text run from before: the same inputs)
        return
    why = ""
    if recorded is None:
        why = (
            " (it was recorded before sentence pairs were encoded as two segments with token types: it trained "
            "on each pair joined by [SEP] into one)"
        )
    raise ConfigError(
        f"key 'data.sentence_pairs' ({recorded!r} -> {pairs!r}): expected the value the checkpoint was trained "
        f"with ({saved}){why}, since a resumed run cannot change what it trains; start a new run in another "
        "training.output_dir"
    )


def _task_loss_expected(d: FinetuneDataConfig) -> str:
    """What model.loss must be for the task's targets (what a glue task without data.labels needs to classify; which
    loss fits which targets of an image_text file, whose kind is known only once it is read)."""
    expected = f"null or one of {task_losses(d)} for this task"
    if d.task == "glue" and d.labels is None:  # read as numbers: regression targets
        expected += " (its labels are read as regression targets; cross_entropy needs the class names in data.labels)"
    elif d.task == "image_text":  # (else mse refused, cross_entropy was then refused for soft scores: two tries)
        expected += " (cross_entropy for class labels, binary_cross_entropy for answer scores)"
    return expected


def _extra_val_checks(d: FinetuneDataConfig, kind: Optional[str]) -> list[tuple]:
    """data.val_name and data.extra_val: distinct names, and each set a path like data.val's."""
    extra = d.extra_val or {}
    checks = [
        (bool(d.val_name), "data.val_name", "a non-empty name", d.val_name),
        (
            all(extra) and d.val_name not in extra,
            "data.extra_val",
            f"non-empty names other than data.val_name ({d.val_name!r})",
            list(extra),
        ),
        (
            kind is not None or not extra,
            "data.extra_val",
            f"no sets for data.task={d.task} (its one held-out split is data.shapes_val)",
            dict(extra),
        ),
    ]
    for name, path in extra.items() if kind is not None else ():
        key = f"data.extra_val.{name}"
        expected = f"a {kind} for data.task={d.task} (validation set {name!r}; data.extra_val=null drops the sets)"
        if path is not None and not isinstance(path, str):  # data.extra_val.a.b=... nests a mapping
            checks.append((False, key, f"a path (the name {name!r} without dots)", path))
        else:
            checks += [(path is not None, key, expected, path), path_check(key, path, kind)]
    return checks


def task_losses(d: FinetuneDataConfig, soft_scores: Optional[bool] = None) -> tuple[str, ...]:
    """The losses the task's targets fit: mse for regression (glue without labels), binary
    cross-entropy for soft answer scores, cross-entropy for class ids (image_text files hold either,
    known once read: ``soft_scores``)."""
    if d.task == "glue" and d.labels is None:
        return ("mse",)
    if d.task != "image_text" or soft_scores is False:
        return ("cross_entropy",)
    return ("binary_cross_entropy",) if soft_scores else ("cross_entropy", "binary_cross_entropy")


def _unread_checks(d: FinetuneDataConfig) -> list[tuple]:
    """The shapes task's data and classes are its own: data.train, data.val and data.labels set there
    would be silently ignored (it trained on its scenes with data.train naming a file). The keys only some tasks
    read are :data:`TASK_KEYS`' checks."""
    if d.task != "shapes":
        return []
    why = {"train": "reads no files (it renders its scenes)", "labels": "names its own classes"}
    why["val"] = why["train"]
    return [
        (getattr(d, name) is None, f"data.{name}", f"null, since data.task=shapes {why[name]}", getattr(d, name))
        for name in ("train", "val", "labels")
    ]


def _task_checks(d: FinetuneDataConfig) -> list[tuple]:
    """The keys only one task reads."""
    if d.task == "glue":
        columns = list(d.text_columns)
        return [
            (
                len(columns) in (1, 2) and all(columns) and len(set(columns)) == len(columns),
                "data.text_columns",
                "1 or 2 distinct column names",
                columns,
            ),
            (
                bool(d.label_column) and d.label_column not in columns,
                "data.label_column",
                "a column other than the text",
                d.label_column,
            ),
            (
                d.columns is None
                or (
                    all(d.columns)
                    and len(set(d.columns)) == len(d.columns)
                    and {*columns, d.label_column} <= set(d.columns)
                ),
                "data.columns",
                f"null (a header row names them) or distinct column names holding {[*columns, d.label_column]}",
                d.columns,
            ),
        ]
    if d.task == "image_text":
        return [
            (d.image_root is not None, "data.image_root", "the image directory for image_text", d.image_root),
            path_check("data.image_root", d.image_root, "directory"),
        ]
    if d.task == "shapes":
        return [
            *shapes_task_checks(d.shapes_train, d.shapes_val, d.image_size),
            rendered_size_check("data.image_size", d.image_size),
        ]
    return []


def build_splits(d: FinetuneDataConfig, loss: Optional[str] = None) -> tuple:
    """Train and validation (data.val) sources and the class names (None for regression); a file that
    does not read as the task's data is a ConfigError naming its key. :func:`open_val_set` opens the
    sets of data.extra_val. With ``loss`` (model.loss) null, a glue task without data.labels whose
    training labels are all integers is refused (:func:`integer_labels_check`)."""
    if d.task == "shapes":
        return shapes_task_splits(d.shapes_train, d.shapes_val, d.image_size)
    if d.task == "glue":
        train = opened("data.train", d.train, _glue_expected(d), lambda: _glue_tsv(d, d.train))
        if d.labels is None and loss is None:
            raise_on_failed_checks([integer_labels_check(d, train)])
        return train, open_val_set(d, d.labels, "data.val", d.val), d.labels
    if d.task == "image_folder":
        expected = "a folder of class sub-folders of images"
        train = opened("data.train", d.train, expected, lambda: ImageClassFolder(d.train, d.labels))
        raise_on_failed_checks([(len(train.classes) >= 2, "data.train", "a folder of at least 2 classes", d.train)])
        return train, open_val_set(d, train.classes, "data.val", d.val), train.classes
    expected = f"a jsonl file of image, text and labels in {d.labels}"
    train = opened("data.train", d.train, expected, lambda: ImageTextLabels(d.image_root, d.train, d.labels))
    return train, open_val_set(d, d.labels, "data.val", d.val), d.labels


def open_val_set(d: FinetuneDataConfig, classes: Optional[list[str]], key: str, path: str):
    """The validation source at ``path`` (data.val or a set of data.extra_val, named by ``key``) read
    as the task's data, with the training split's ``classes`` (a file task's); a ConfigError naming
    ``key`` when it does not read so."""
    if d.task == "glue":
        return opened(key, path, _glue_expected(d), lambda: _glue_tsv(d, path))
    if d.task == "image_folder":
        expected = f"a folder of sub-folders among the classes {classes}"
        return opened(key, path, expected, lambda: ImageClassFolder(path, classes))
    expected = f"a jsonl file of image, text and labels in {d.labels}"
    return opened(key, path, expected, lambda: ImageTextLabels(d.image_root, path, d.labels))


def target_kind_check(train, key: str, path: str, source) -> tuple:
    """The check that validation set ``source`` (at ``path``, set by ``key``) holds the targets ``train`` holds: an
    image_text file's lines hold class labels (``label``) or answer scores (``answers``), and a set of the other
    kind trained every step and then failed in the metrics. Other sources pass.

    Returns:
        tuple: ``(ok, key, expected, got)`` for :func:`raise_on_failed_checks`.
    """
    kinds = [getattr(split, "soft_scores", None) for split in (train, source)]
    names = {True: "answer scores ('answers' on each line)", False: "class labels ('label' on each line)"}
    if None in kinds or kinds[0] == kinds[1]:
        return (True, key, "", None)
    return (False, key, f"a file of {names[kinds[0]]}, as data.train holds", f"{path} ({names[kinds[1]]})")


def integer_labels_check(d: FinetuneDataConfig, train: GlueTsv) -> tuple:
    """The check that a glue task read without data.labels (as regression targets) is not a
    classification by mistake: training labels all written as integers (SST-2's 0 and 1, ratings 1 to
    5) fail it, to be named as classes in data.labels or trained as a regression with model.loss=mse.

    Returns:
        tuple: ``(ok, key, expected, got)`` for :func:`raise_on_failed_checks`.
    """
    values = _integer_labels(d, train)
    if values is None:
        return (True, "data.labels", "", None)
    listed = ",".join(str(v) for v in values[:MAX_LISTED_LABELS])
    found = f"the {len(values)} values found"
    if len(values) > MAX_LISTED_LABELS:
        listed, found = f"{listed},...", f"the first {MAX_LISTED_LABELS} of the {len(values)} values found"
    expected = (
        f"the class names, since every label of {d.train} is an integer: data.labels=[{listed}] ({found}, "
        "sorted) to classify, or model.loss=mse for a regression on integer targets"
    )
    return (False, "data.labels", expected, None)


def _integer_labels(d: FinetuneDataConfig, train: GlueTsv) -> Optional[list[int]]:
    """The distinct labels of ``train`` (read as numbers), sorted, when there are at least 2 and every one
    is written as an integer, without a decimal point or exponent ("0", "5", not STS-B's "5.000"); else None."""
    values = set()
    for index in range(len(train)):
        try:
            label = train[index].label
        except BadSample:  # an unusable row: skipped in training, so no evidence either way
            continue
        if not float(label).is_integer():
            return None
        values.add(int(label))
    if len(values) < 2:
        return None
    try:  # read again naming the values as written integers: "1.0" or "1e0" is not among them
        _glue_tsv(replace(d, labels=[str(v) for v in sorted(values)]), d.train)
    except ValueError:
        return None
    return sorted(values)


def _glue_tsv(d: FinetuneDataConfig, path: str) -> GlueTsv:
    return GlueTsv(path, d.text_columns, d.label_column, d.labels, columns=d.columns)


def _glue_expected(d: FinetuneDataConfig) -> str:
    """What data.train, data.val and the data.extra_val sets of a glue task must be."""
    read = [*d.text_columns, d.label_column]
    columns = f"a TSV file of the columns {d.columns}"
    if d.columns is None:
        columns = f"a TSV file with a header holding {read} (data.columns names those of a file without one)"
    if d.labels:
        return f"{columns} and labels in {d.labels}"
    # data.labels null reads the labels as regression targets: class names must be listed
    return f"{columns} and numeric labels (regression targets; to classify, list the class names in data.labels)"


@torch.no_grad()
def predict(model: nn.Module, source, share: range, collator, loss: str, batch_size: int = 128) -> list:
    """What the metrics read of ``model``'s output on each item of ``share`` (indices of ``source``): one
    ``(prediction, target)`` pair of numbers per index (:func:`predictions_and_targets`: the predicted class and
    the label, the predicted value and the target, or the predicted answer and its score), or for an unusable
    item (skipped, as in training) the reason it is unusable, a str (its file and line, its image). Items are read
    and forwarded ``batch_size`` readable ones at a time: one batch of decoded items is held at once, never the
    whole set.

    Raises:
        ValueError: if the logits hold NaN or infinite values, or the labels do not fit ``loss``.
    """
    model.eval()
    device = next(model.parameters()).device
    values, skipped = {}, []
    # (an unusable item's reason in its place: its row is named in the report)
    for chunk in readable_chunks(source.__getitem__, share, batch_size, skipped, skipped_keys=values):
        batch = collator("eval", [item for _, item in chunk], [])
        indices = [index for index, _ in chunk]
        del chunk  # (its items freed before the next chunk is read)
        labels = batch.pop("labels")
        inputs = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in read_inputs(batch, model.modality).items()
        }
        predicted, targets = predictions_and_targets(model(**inputs).logits.float(), labels, loss)
        values.update(zip(indices, zip(predicted.tolist(), targets.tolist())))
    return [values[index] for index in share]


SKIPPED_EXAMPLES = 10  # the unusable items of a validation set its report names


def validation_metrics(predictions: list, loss: str, num_classes: int) -> dict:
    """The metrics of ``loss`` over the usable items of ``predictions`` (:func:`predict`'s, of a whole set), with
    the number of those and of the unusable ones, and the reasons of the first :data:`SKIPPED_EXAMPLES` of those
    (``skipped_examples``: a dev row left out of the figures is named, as a training one is); the figures
    :func:`task_metrics` gives of those items' logits."""
    usable = [p for p in predictions if not isinstance(p, str)]
    reasons = [p for p in predictions if isinstance(p, str)]
    # class ids as integers; values and scores as float64, which holds the float32 ones exactly
    predicted = torch.tensor([p for p, _ in usable], dtype=torch.float64 if loss == "mse" else torch.long)
    targets = torch.tensor([t for _, t in usable], dtype=torch.long if loss == "cross_entropy" else torch.float64)
    metrics = prediction_metrics(predicted, targets, loss, num_classes)
    return {**metrics, "items": len(usable), "skipped": len(reasons), "skipped_examples": reasons[:SKIPPED_EXAMPLES]}


def evaluate(model: nn.Module, source, collator, loss: str, batch_size: int = 128) -> dict:
    """Metrics of ``model`` over every usable item of ``source`` in this process (:func:`predict` of every index,
    :func:`validation_metrics`), with the number of those and of the unusable ones (skipped as in training)."""
    predictions = predict(model, source, range(len(source)), collator, loss, batch_size)
    return validation_metrics(predictions, loss, model.num_classes)


def format_report(report: dict, out_dir: Path) -> str:
    """The one human line after the report: steps, each validation set's metrics, where the classifier is."""
    sets = "; ".join(
        f"validation {name} ({metrics['items']} items{_skipped(metrics)}) {_format_metrics(metrics)}"
        for name, metrics in report["validation_sets"].items()
    )
    return (
        f"fine-tuning finished: {report['steps']} steps; {sets}; classifier exported to {out_dir / 'model'} "
        f"(python -m torchflava.classify --checkpoint {out_dir})"
    )


def _skipped(metrics: dict) -> str:
    """ ", N unusable skipped" for a set with unusable items (left out of its figures; named in the report)."""
    return f", {metrics['skipped']} unusable skipped" if metrics.get("skipped") else ""


def _format_metrics(metrics: dict) -> str:
    """Fractions (accuracy, F1, VQA accuracy) as percentages, correlations as they are, chance last."""
    shown = []
    for name, value in metrics.items():
        if name in ("accuracy", "f1", "vqa_accuracy"):
            shown.append(f"{name} {percent(value)}")
        elif name in ("matthews", "pearson", "spearman"):
            shown.append(f"{name} {correlation(value)}")  # (as classify --tsv prints them)
    chance = f" (chance {percent(metrics['chance'])})" if "chance" in metrics else ""
    return ", ".join(shown) + chance


def classification_step(model: nn.Module, item: MixedBatch, *, modality: str) -> StepOutput:
    """One micro-batch: the task loss summed over its rows, and the row count; of an image + text task's
    batch a text or image head is given its own inputs only (it refuses the other's)."""
    out = model(**read_inputs(item.batch, modality))
    return StepOutput(out.loss_sums, out.loss_counts)


@holds_run_directory  # one run per directory, given up however main ends
def main(cfg: FinetuneConfig) -> dict:
    positions = None
    records, recorded = None, None  # a resumed run's directory and backbone arguments: model.pretrained not read

    def validated(config: FinetuneConfig, world_size: int) -> None:
        nonlocal positions, records, recorded
        records = run_records(config)
        recorded = None if records is None else recorded_backbone(records)
        positions = validate(config, world_size, recorded=recorded)
        resolve_defaults(config, positions)  # before start_run compares the config with a resumed one's and records it

    start = start_run(cfg, validated)  # validate, process group, run directory, resume point
    info = start.info
    t, d = cfg.training, cfg.data
    out_dir = Path(t.output_dir)
    if start.resume_from is not None:
        text_length_resume_check(trained_config(start.resume_from), cfg, positions)
        sentence_pairs_resume_check(trained_config(start.resume_from), cfg)

    # the data checked before the weights are loaded
    train_source, val_source, classes = build_splits(d, cfg.model.loss)
    if info.is_main and (warning := empty_classes_warning(train_source, "data.train")):
        print(warning, file=sys.stderr)
    # every validation set by name, data.val's first: the report's "validation" is that one's
    val_sets = {d.val_name: ("data.val", d.val, val_source)}
    for name, path in (d.extra_val or {}).items():
        key = f"data.extra_val.{name}"
        val_sets[name] = (key, path, open_val_set(d, classes, key, path))
    faults = {"train": unusable_start(train_source)}
    val_faults = {name: unusable_start(source, limit=None) for name, (_, _, source) in val_sets.items()}
    raise_on_failed_checks(
        [
            (
                faults["train"] is None,
                "data.train",
                "a split with usable items to train on",
                f"{d.train} ({faults['train']})",
            ),
            *(
                (
                    val_faults[name] is None,
                    key,
                    "a split with a usable item to evaluate",
                    f"{path} ({val_faults[name]})",
                )
                for name, (key, path, _) in val_sets.items()
            ),
            *(target_kind_check(train_source, key, path, source) for key, path, source in val_sets.values()),
        ]
    )
    num_classes = 1 if classes is None else len(classes)
    losses = task_losses(d, getattr(train_source, "soft_scores", None))
    targets = {"binary_cross_entropy": "answer scores", "mse": "regression targets"}.get(losses[0], "class labels")
    expected = f"null or {losses[0]} for the {targets} of {d.train}"
    raise_on_failed_checks([(cfg.model.loss in (None, *losses), "model.loss", expected, cfg.model.loss)])
    loss = cfg.model.loss or losses[0]
    if records is not None and start.resume_from is not None:  # the run's records: model.pretrained not read
        pretrained = recorded_pretrained(records, recorded)
    else:
        pretrained = opened(
            "model.pretrained",
            cfg.model.pretrained,
            PRETRAINED,
            lambda: load_pretrained(cfg.model.pretrained),
        )
    collator = ClassificationCollator(
        pretrained.tokenizer,
        image_size=pretrained.image_size,
        max_text_length=d.max_text_length,  # resolved, within the checkpoint's positions (validate)
        image_transform=pretrained.image_transform,  # the checkpoint's own (a Hugging Face one's mean, std, resize)
        sentence_pairs=d.sentence_pairs,  # resolved: a pair length below 3 is refused here, not at the first batch
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
    # a training source that changed size since the checkpoint: refused before the model is built
    raise_on_failed_checks(resumed_data_checks(data, start.loop_states, {"train": training_source_key(d.task)}))

    torch.manual_seed(t.seed)
    kwargs = {**asdict(cfg.model), "pretrained": None, "loss": loss}  # the backbone comes loaded
    model = flava_model_for_classification(num_classes, backbone=pretrained.model, **kwargs).to(info.device)
    raise_on_failed_checks([lr_multipliers_check(model, cfg.optim)])  # before the run directory is written
    # fit writes config.yaml once the resume is checked: nothing is written in the run directory before
    step = functools.partial(classification_step, modality=model.modality)
    result = fit(
        model,
        step,
        data,
        training=t,
        optim=cfg.optim,
        description="fine-tuning",
        start=start,
        # what the run read of model.pretrained, with config.yaml: its resume reads these instead
        run_files=lambda run: record_start(run, pretrained, collator.transform),
    )

    tokenizer = copy.copy(pretrained.tokenizer)
    tokenizer.model_max_length = collator.max_text_length  # the length it trained at: the export's default
    backbone = flava_model_arguments(**pretrained.kwargs)  # every argument stated
    # the weights, both architectures, class names, tokenizer and preprocessing: load_classifier's directory
    # written whole beside the run and renamed in: model/ is the previous export or this one, never a part
    with staged_directory(out_dir / "model", writer=info.is_main) as staging:
        export_classifier(
            model,
            staging,
            backbone_kwargs=backbone,
            tokenizer=tokenizer,
            image_transform=collator.transform,
            labels=classes,
            sentence_pairs=d.sentence_pairs,
        )
    # the trained model (sharded under FSDP) and its backbone freed: validation reads the export
    model = pretrained = None
    # rank 0's export renamed in before any rank loads it (its files were written before the export's own barrier)
    barrier()
    # loaded once, at the first set's share, in fp32 whatever training.precision (as load_classifier gives it)
    exported = functools.cache(lambda: load_classifier(out_dir / "model").model.to(info.device))

    def predict_share(source, share: range) -> list:  # every rank its share, from the export (what a user loads)
        return predict(exported(), source, share, collator, loss)

    # each rank predicts every world_size-th item of each set, set after set, the predictions put back in order
    predictions = {
        name: gather_shares(functools.partial(predict_share, source), len(source), run_timeout_s=t.collective_timeout_s)
        for name, (_, _, source) in val_sets.items()
    }

    def written_report() -> dict:  # rank 0 scores
        validation = {name: validation_metrics(values, loss, num_classes) for name, values in predictions.items()}
        report = {
            "task": d.task,
            "modality": cfg.model.modality,
            "loss": loss,
            "num_classes": num_classes,
            "steps": result.step,
            **data_loss_report(result.skipped, data.lost_data),
            "validation": validation[d.val_name],  # data.val's (the primary set's)
            "validation_sets": validation,  # every set by name, data.val's first
        }
        if classes is not None and loss == "cross_entropy":
            for metrics in validation.values():
                metrics["chance"] = 1 / num_classes
        write_fine_tuning_report(out_dir, report, format_report(report, out_dir))
        return report

    return rank0_report(
        written_report, run_timeout_s=cfg.training.collective_timeout_s
    )  # (the others are given rank 0's report, or its error)


if __name__ == "__main__":
    run_recipe(main, FinetuneConfig, sys.argv[1:], config_errors=(FileNotFoundError,))
