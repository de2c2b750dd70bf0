r"""CLIP image-classification fine-tuning, the head initialised with the zero-shot classifier (WiSE-FT's baseline) or
a linear probe (LP-FT).

    python examples/clip/train.py config=examples/clip/configs/tiny.yaml    # a small CLIP in runs/clip-tiny
    python examples/clip/finetune.py config=examples/clip/configs/finetune_shapes.yaml
    python examples/clip/finetune.py config=examples/clip/configs/finetune_classes.yaml \
        model.pretrained=/models/clip-vit-base-patch16 data.train=/data/pets/train data.val=/data/pets/val
    python examples/clip/finetune.py config=examples/clip/configs/finetune_classes.yaml \
        model.pretrained=~/.cache/clip/ViT-B-32.pt model.tokenizer=bpe_simple_vocab_16e6.txt.gz \
        data.train=/data/pets/train data.val=/data/pets/val
    torchrun --nproc_per_node 8 examples/clip/finetune.py config=examples/clip/configs/finetune_classes.yaml \
        model.pretrained=/models/clip-vit-base-patch16 data.train=/data/imagenet/train data.val=/data/imagenet/val \
        data.class_names='[tench, goldfish, ...]' data.crop_scale_min=0.9

Reads top to bottom: config -> process group -> data (step-indexed batches of the training split, ``MixedBatches``
with one source: class folders, ``data.task=image_folder``, or the built-in shapes, ``data.task=shapes``; with
``data.crop_scale_min``, random resized crops as open_clip's training preprocess) -> model
(``model.pretrained``, a CLIP checkpoint: a Hugging Face CLIPModel directory, an open_clip Hub directory, a
torchflava CLIP run, export or ``<run>/checkpoints/step_<N>``; or a CLIP weights file alone, OpenAI's
``~/.cache/clip/ViT-B-32.pt`` (TorchScript too) or an open_clip ``.bin``/``.safetensors``, with its tokenizer in
``model.tokenizer`` (CLIP's merges file, a ``tokenizer.json`` or a tokenizer directory), ``model.activation`` where
the file does not say which, and OpenAI's preprocessing; an open_clip Hub directory without tokenizer files, timm's,
with ``model.tokenizer`` too: :func:`~torchflava.pretrained.load_pretrained`'s); its image
tower and projection, the features L2-normalised, then a linear head whose weight is ``exp(logit_scale)`` times
the zero-shot class embeddings of the class names (the folder names, or ``data.class_names``: "tench" for
``n01440764/``) in ``model.templates`` and whose bias is 0, so that step 0 predicts what zero-shot classification
does;
``model.head_init=random`` for a head of random weights; the text tower builds the head and is not kept;
``model.head_init=linear_probe`` for LP-FT (Kumar et al. 2022): a logistic-regression probe
(:func:`torchflava.evaluation.linear_probe.linear_probe`) of the frozen tower's L2-normalised features of the
first ``model.probe_max_items`` training items in an order drawn from ``training.seed``, taken through the
evaluation transform (no augmentation), each rank a share of the items (unreadable ones skipped), its penalty
``model.probe_l2`` or the best on the last fifth of them, fitted on rank 0, made the head with its standardisation
folded into the weight and bias, so that step 0 predicts what the probe does) -> ``fit``
(the shared loop: accumulation, DDP/FSDP2, autocast, clipping, checkpoints, exact resume also on another number of
ranks, logging) -> export (``<output_dir>/model``: :func:`torchflava.classify.load_clip_classifier` loads it,
``python -m torchflava.classify --checkpoint <output_dir> --images DIR`` runs it) ->
validation report: top-1 accuracy on ``data.val`` of the zero-shot head (the weights the run started from; named
``linear_probe`` for LP-FT) and of the fine-tuned model, and with ``eval.wise_ft_alpha`` of their weight-space
ensemble (WiSE-FT, ``(1 - alpha) * start + alpha * fine-tuned``), printed in one line and written to
``report.json`` (each rank decodes every ``world_size``-th validation image once for the three models, rank 0 scores
them all). A new run records what it started from before training: the zero-shot classifier
(``<output_dir>/zero_shot``, an export as ``model/`` is: weights, ``clip_model`` arguments, class names,
preprocessing; also with ``model.head_init=random``, for the report; the linear-probe classifier with
``model.head_init=linear_probe``); a resume builds the model, the class names, the preprocessing and the zero-shot
(or linear-probe) and WiSE-FT reference from that record alone (a probe is not fitted again), never reading
``model.pretrained`` (which may have moved, gone or changed), and is refused, naming ``training.resume``, where the
record is missing or does not read. ``main(cfg)`` returns the report.
"""

import copy
from dataclasses import dataclass, field
import json
import math
import os
from pathlib import Path
import sys
from typing import Callable, Optional

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from torchflava.classify import (
    CLIPClassifier,
    CLIPImageTower,
    export_clip_classifier,
    load_clip_classifier,
)
from torchflava.data.finetuning import (
    ClassificationCollator,
    ImageClassFolder,
    empty_classes_warning,
    shapes_task_checks,
    shapes_task_splits,
    synset_folders_warning,
    training_source_key,
    unread_task_key_checks,
)
from torchflava.data.mixing import MixedBatch, MixedBatches, check_seeds, data_loss_report
from torchflava.data.run_checks import resumed_data_checks
from torchflava.data.samples import readable_chunks, unusable_start
from torchflava.data.transforms import RandomCropTransform
from torchflava.evaluation.linear_probe import DEFAULT_L2, LinearProbeResult, linear_probe
from torchflava.evaluation.metrics import classification_metrics, percent
from torchflava.evaluation.shapes import DEFAULT_TEMPLATES as SHAPES_TEMPLATES
from torchflava.models.clip import clip_model, clip_model_arguments
from torchflava.modules.heads import NormalizedLinearClassifier, embedding_head, standardised_head
from torchflava.modules.layers.activation import ACTIVATIONS
from torchflava.pretrained import (
    CLIP_CLASSIFIER_START,
    LONE_FILE_TOKENIZERS,
    TokenizerlessDirectory,
    UnfitTokenizer,
    checkpoint_layout,
    fitted_tokenizer,
    load_pretrained,
    local_directory,
    lone_file_needs,
)
from torchflava.training.config import ConfigError, DataPaths
from torchflava.training.distributed import barrier, gather_shares, rank0_report
from torchflava.training.loop import StepOutput, fit, holds_run_directory, start_run
from torchflava.training.metrics import write_fine_tuning_report
from torchflava.training.recipe import run_recipe
from torchflava.training.schema import (
    OptimConfig,
    TrainingConfig,
    lr_multipliers_check,
    opened,
    path_check,
    raise_on_failed_checks,
    rendered_size_check,
    resumed_run_records,
    template_checks,
    training_checks,
)
from torchflava.utils.architecture import ContradictedArgument, UntoldArgument
from torchflava.utils.checkpoint import first_line, staged_directory
from torchflava.utils.cli import write_json
from torchflava.zero_shot import DEFAULT_TEMPLATES, class_embeddings

TASKS = ("image_folder", "shapes")
# the data keys the shapes task alone reads (set for image_folder, refused: they were silently ignored)
TASK_KEYS = {"shapes_train": ("shapes",), "shapes_val": ("shapes",), "image_size": ("shapes",)}
HEAD_INITS = ("zero_shot", "random", "linear_probe")
# the prompts a null model.templates stands for: the shapes world's captions say "a small red circle"
TASK_TEMPLATES = {"image_folder": list(DEFAULT_TEMPLATES), "shapes": list(SHAPES_TEMPLATES)}
PRETRAINED = (
    "a CLIP checkpoint directory (a Hugging Face CLIPModel, an open_clip Hub directory, or a torchflava CLIP "
    "run, export or <run>/checkpoints/step_<N>; one without tokenizer files with model.tokenizer), or a CLIP weights "
    "file alone with model.tokenizer"
)
LONE_FILE_KEYS = ("tokenizer", "activation")  # model.<name>: load_pretrained's arguments of a weights file alone
# the zero-shot classifier a run records in its directory at its start (export_clip_classifier's files): its resume
# builds the model, class names, preprocessing and WiSE-FT reference from it, never reading model.pretrained again;
# load_clip_classifier reads the run's training checkpoints with it
ZERO_SHOT_RECORD = CLIP_CLASSIFIER_START
CLASS_FOLDERS = "class_folders.json"  # in the record: the training class folders in id order (or shapes' classes)


@dataclass
class ModelConfig:
    pretrained: Optional[str] = None  # the CLIP checkpoint (see PRETRAINED)
    # zero_shot (exp(logit_scale) x the class embeddings, bias 0) | random | linear_probe (LP-FT: a logistic-regression
    # probe of the frozen tower's L2-normalised features of data.train, its standardisation folded into the head)
    head_init: str = "zero_shot"
    # linear_probe: the training items the probe reads, the first N of an order drawn from training.seed; null: all
    probe_max_items: Optional[int] = 10000
    # linear_probe: the probe's L2 penalty (fit_logistic_regression's l2); null: the one of 1e-6 .. 1e2 that scores
    # best on the last fifth of those items (linear_probe's choice), the probe then refitted on them all
    probe_l2: Optional[float] = None
    # prompts of the zero-shot head, each with one {} for the class name; null: the task's (image_folder:
    # "a photo of a {}." and "a {}."; shapes: the shapes world's), set so before the run's config is recorded
    templates: Optional[list[str]] = None
    # with a CLIP weights file alone as model.pretrained (OpenAI's ~/.cache/clip/ViT-B-32.pt, TorchScript too; an
    # open_clip .bin or .safetensors), which holds no tokenizer: its tokenizer (CLIP's merges file
    # bpe_simple_vocab_16e6.txt.gz, a tokenizer.json, or a tokenizer directory); so too with an open_clip Hub
    # directory without tokenizer files (timm's CLIP repositories); null with a checkpoint directory holding its own
    tokenizer: Optional[str] = None
    # gelu | quick_gelu, for a weights file alone that does not say which (Hugging Face's or open_clip's without
    # their config beside it; OpenAI's say QuickGELU); null otherwise
    activation: Optional[str] = None


@dataclass
class DataConfig(DataPaths):
    PATHS = ("train", "val")  # the keys naming folders

    task: str = "image_folder"  # image_folder (class sub-folders) | shapes
    train: Optional[str] = None  # image_folder: the training folder
    # image_folder: the class names of the prompts and the export, one per training class folder in the folders'
    # sorted order ("golden retriever" for golden_retriever/, "tench" for n01440764/); null: the folder names
    class_names: Optional[list[str]] = None
    val: Optional[str] = None  # image_folder: the validation folder, sub-folders among the training classes
    shapes_train: int = 3000
    shapes_val: int = 540
    image_size: int = 64  # shapes rendering size (the checkpoint's preprocessing resizes it)
    # training augmentation as open_clip's training preprocess: random resized crops of [crop_scale_min, 1] of each
    # image's area, normalised as the checkpoint's preprocessing; null: none (that preprocessing, as validation's)
    crop_scale_min: Optional[float] = None


@dataclass
class EvalConfig:
    batch_size: int = 128  # images (and class prompts) a forward
    # WiSE-FT: also report the weight-space ensemble (1 - alpha) * zero-shot + alpha * fine-tuned; null: not
    wise_ft_alpha: Optional[float] = None


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=500, weight_decay=0.1))
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(
            output_dir="runs/clip-classes", max_steps=2000, global_batch_size=256, checkpoint_every=500
        )
    )
    eval: EvalConfig = field(default_factory=EvalConfig)

    def resume_ignored(self) -> set[str]:
        """For a resume, the keys of what the run recorded at its start (:func:`run_record`) and reads instead:
        ``model.pretrained`` (the checkpoint may since have moved, gone, or be named otherwise or null) with its
        ``model.tokenizer`` and ``model.activation`` (a weights file alone's), and the
        probe's ``model.probe_max_items`` and ``model.probe_l2`` (the recorded head is never refitted; a run
        recorded before the keys existed states none). And the data keys the task does not read (:data:`TASK_KEYS`),
        and with ``model.head_init=linear_probe`` ``model.templates`` (its head is the probe's: :func:`_probe_checks`):
        a run started while they were accepted (ignored) resumes with them back at their defaults."""
        unread = {f"data.{name}" for name, tasks in TASK_KEYS.items() if self.data.task not in tasks}
        unread |= {"model.templates"} if self.model.head_init == "linear_probe" else set()
        if run_record(self) is None:
            return unread
        recorded = {
            "model.pretrained",
            "model.tokenizer",
            "model.activation",
            "model.probe_max_items",
            "model.probe_l2",
        }
        return recorded | unread


def run_record(cfg: FinetuneConfig) -> Optional[Path]:
    """Where the run a resume continues recorded its zero-shot classifier (``<run>/zero_shot``, there or not);
    None for a new run (:func:`~torchflava.training.schema.resumed_run_records`)."""
    run = resumed_run_records(cfg.training, ())
    return None if run is None else run / ZERO_SHOT_RECORD


def recorded_zero_shot(record: Path) -> CLIPClassifier:
    """The zero-shot classifier a resumed run recorded at its start; ConfigError naming ``training.resume`` where
    the record is missing or does not read (the resume would otherwise depend on model.pretrained as it is now)."""

    def read() -> CLIPClassifier:
        try:
            return load_clip_classifier(record)
        except RuntimeError as error:  # (weights that do not fit the recorded architecture: torch's own error)
            raise ValueError(first_line(error)) from None

    expected = "a run that recorded its zero-shot classifier at its start (a resume reads it, not model.pretrained)"
    return opened("training.resume", str(record), expected, read)


def recorded_folders(record: Path, recorded: CLIPClassifier, class_names: Optional[list[str]]) -> Optional[list[str]]:
    """The training class folders a resumed run started with: :data:`CLASS_FOLDERS` of its record; for a record
    without it (written before the file was), its class names where they were the folder names
    (``data.class_names`` null), else None (not known). ConfigError naming ``training.resume`` where the file does
    not read as a list of names."""
    if not (record / CLASS_FOLDERS).exists():
        return list(recorded.labels) if class_names is None else None

    def read() -> list[str]:
        folders = json.loads((record / CLASS_FOLDERS).read_text(encoding="utf-8"))
        if not isinstance(folders, list) or not all(isinstance(name, str) for name in folders):
            raise ValueError(f"{record / CLASS_FOLDERS}: expected a list of class folder names")
        return folders

    expected = f"a run that recorded its class folders at its start ({CLASS_FOLDERS} in {record})"
    return opened("training.resume", str(record), expected, read)


def class_folders_check(started: list[str], folders: list[str], train: Optional[str]) -> tuple:
    """``(ok, key, expected, got)`` of a resume's training class folders against those its run started with,
    naming the first id whose folder differs (or the counts)."""
    if folders == started:
        return True, "data.train", "", ""
    first = next((i for i, (a, b) in enumerate(zip(started, folders)) if a != b), min(len(started), len(folders)))
    was, now = (repr(names[first]) if first < len(names) else "no folder" for names in (started, folders))
    expected = f"the {len(started)} class folders the run started with, in their order"
    return (
        False,
        "data.train",
        expected,
        f"{train} ({len(folders)} class folders; class {first}: {was} then, {now} now)",
    )


# ----------------------------------------------------------------------------------------- config checks
def validate(cfg: FinetuneConfig, world_size: int, *, recorded: Optional[CLIPClassifier] = None) -> None:
    """Check every key types cannot, before any work: choices, ranges, the task's folders, the prompts and that
    ``model.pretrained`` is a CLIP checkpoint (its config files only: the weights are read by ``main``); for a
    resume, whose start was ``recorded`` (:func:`recorded_zero_shot`), ``model.pretrained`` is not read.

    Raises:
        ConfigError: naming the key, in one line.
    """
    d, m = cfg.data, cfg.model
    folders = d.task == "image_folder"
    templates = TASK_TEMPLATES.get(d.task, []) if m.templates is None else list(m.templates)
    alpha, crop = cfg.eval.wise_ft_alpha, d.crop_scale_min
    raise_on_failed_checks(
        training_checks(cfg.training, cfg.optim, world_size)
        + [
            (d.task in TASKS, "data.task", f"one of {TASKS} (CLIP fine-tuning classifies images)", d.task),
            (m.head_init in HEAD_INITS, "model.head_init", f"one of {HEAD_INITS}", m.head_init),
            *_probe_checks(m, d.task),
            (recorded is not None or m.pretrained is not None, "model.pretrained", PRETRAINED, m.pretrained),
            *(_lone_file_checks(m) if recorded is None else []),
            (alpha is None or 0 <= alpha <= 1, "eval.wise_ft_alpha", "null or in [0, 1]", alpha),
            (crop is None or 0 < crop <= 1, "data.crop_scale_min", "null or in (0, 1]", crop),
        ]
        + template_checks("model.templates", templates, cfg.eval.batch_size, "eval.batch_size")
        + (_folder_checks(d) if folders else _shapes_checks(d))
        + _class_names_checks(d)
        + (unread_task_key_checks(d, d.task, TASK_KEYS) if d.task in TASKS else [])
    )
    kwargs = pretrained_kwargs(m) if recorded is None else recorded.clip_kwargs
    # optim.lr_multipliers names modules of the classifier (encoder.image_encoder, head, ...): built on meta
    build = lambda: NormalizedLinearClassifier(CLIPImageTower(clip_model(**kwargs)), nn.Linear(1, 2))  # noqa: E731
    raise_on_failed_checks([lr_multipliers_check(build, cfg.optim)])


def _probe_checks(m: ModelConfig, task: str) -> list[tuple]:
    """The probe's keys: model.probe_max_items null or an int >= 5 (a fifth held out), model.probe_l2 null or a
    finite number >= 0; each at its default with another head_init, which fits no probe. And model.templates null (or
    the task's, which a run records) with linear_probe, whose head is the probe's: no prompt is read. (A key set so
    was silently ignored.)"""
    items, l2 = m.probe_max_items, m.probe_l2
    number = isinstance(l2, (int, float)) and not isinstance(l2, bool)
    integer = isinstance(items, int) and not isinstance(items, bool)
    probe, default_items, prompts = (
        m.head_init == "linear_probe",
        ModelConfig().probe_max_items,
        TASK_TEMPLATES.get(task),
    )
    no_probe = f"since model.head_init={m.head_init} fits no probe"
    templates = None if m.templates is None else list(m.templates)
    no_prompts = "since model.head_init=linear_probe makes the head of the probe, reading no prompt"
    return [
        (items is None or (integer and items >= 5), "model.probe_max_items", PROBE_ITEMS, items),
        (probe or items == default_items, "model.probe_max_items", f"its default, {default_items}, {no_probe}", items),
        (l2 is None or (number and 0 <= l2 < math.inf), "model.probe_l2", "null or a finite number >= 0", l2),
        (l2 is None or probe, "model.probe_l2", f"null, {no_probe}", l2),
        (
            not probe or templates in (None, prompts),
            "model.templates",
            f"null (or data.task={task}'s {prompts}, which a run records), {no_prompts}",
            templates,
        ),
    ]


PROBE_ITEMS = "null (every training item) or an int >= 5 (the probe holds out a fifth to choose its penalty)"


def _lone_file_checks(m: ModelConfig) -> list[tuple]:
    """A new run's model.tokenizer (null, or a path that is there) and model.activation (null or an activation)."""
    there = m.tokenizer is None or Path(os.path.expanduser(m.tokenizer)).exists()
    return [
        (there, "model.tokenizer", f"null or {LONE_FILE_TOKENIZERS}", f"{m.tokenizer} (not there)"),
        (m.activation in (None, *ACTIVATIONS), "model.activation", f"null or one of {ACTIVATIONS}", m.activation),
    ]


def read_pretrained(m: ModelConfig, read: Callable):
    """``read(tokenizer=model.tokenizer, activation=model.activation)`` (:func:`checkpoint_layout` or
    :func:`load_pretrained` of ``model.pretrained``), its errors a ConfigError naming ``model.pretrained``, or
    ``model.tokenizer`` or ``model.activation`` where the reader names that argument (:class:`UntoldArgument`)
    missing (a weights file alone, which does not hold or tell it) or misplaced (with a checkpoint directory,
    which holds its own), and ``model.activation`` where the weights contradict it."""
    call = lambda: read(tokenizer=m.tokenizer, activation=m.activation)  # noqa: E731
    try:
        return opened("model.pretrained", m.pretrained, PRETRAINED, call)
    except ConfigError as error:  # (opened raises from None: the reader's error is its context)
        untold = error.__context__
        if isinstance(untold, UnfitTokenizer):  # (the tokenizer given with a weights file alone)
            raise _tokenizer_error(untold) from None
        if isinstance(untold, ContradictedArgument) and untold.argument == "activation" and m.activation is not None:
            # (one the weights contradict: OpenAI's were trained with QuickGELU)
            expected = f"null or the activation model.pretrained={m.pretrained} was trained with"
            raise ConfigError(f"key 'model.activation': expected {expected}, got {m.activation!r} ({untold})") from None
        name = getattr(untold, "argument", None) if isinstance(untold, UntoldArgument) else None
        if name not in LONE_FILE_KEYS:
            raise
        value = getattr(m, name)
        if value is not None:
            expected = f"null with model.pretrained={m.pretrained}, a checkpoint directory, which holds its own"
            raise ConfigError(f"key 'model.{name}': expected {expected}, got {value!r}") from None
        directory = isinstance(untold, TokenizerlessDirectory)  # (one without tokenizer files)
        expected = lone_file_needs(name, f"model.pretrained={m.pretrained}", directory=directory)
        raise ConfigError(f"key 'model.{name}': expected {expected}, got null") from None


def pretrained_kwargs(m: ModelConfig) -> dict:
    """The ``clip_model`` arguments of ``model.pretrained`` (its config files, or a weights file's header, only),
    which must be a CLIP checkpoint, and for a weights file alone its tokenizer read (:func:`read_pretrained`);
    ConfigError naming the key otherwise."""
    layout = read_pretrained(m, lambda **given: checkpoint_layout(local_directory(m.pretrained), **given))
    got = f"{m.pretrained} (a {layout.family.upper()} checkpoint)"
    raise_on_failed_checks([(layout.family == "clip", "model.pretrained", PRETRAINED, got)])
    if layout.tokenizer is not None:  # (given with a file alone or a tokenizer-less directory: read before any work)
        try:
            fitted_tokenizer(layout)
        except UnfitTokenizer as error:
            raise _tokenizer_error(error) from None
    return layout.kwargs


def _tokenizer_error(error: UnfitTokenizer) -> ConfigError:
    """``error`` ("tokenizer: expected ..., got ...") naming model.tokenizer."""
    return ConfigError(f"key 'model.tokenizer': {str(error).removeprefix('tokenizer: ')}")


def _folder_checks(d: DataConfig) -> list[tuple]:
    """image_folder: both folders named and there (the shapes keys, which it does not read: TASK_KEYS)."""
    return [
        (d.train is not None, "data.train", "a folder of class sub-folders for data.task=image_folder", d.train),
        (d.val is not None, "data.val", "a folder of class sub-folders for data.task=image_folder", d.val),
        path_check("data.train", d.train, "directory"),
        path_check("data.val", d.val, "directory"),
    ]


CLASS_NAMES = "null (the class folder names) or distinct non-empty names, one per training class folder"


def _class_names_checks(d: DataConfig) -> list[tuple]:
    """data.class_names: null, or distinct non-empty names for class folders (their count is checked against the
    training folders once listed, :func:`build_splits`)."""
    if d.class_names is None:
        return []
    names = list(d.class_names)
    repeated = sorted({name for name in names if names.count(name) > 1})
    return [
        (d.task == "image_folder", "data.class_names", "null, since data.task=shapes names its own classes", names),
        (all(name.strip() for name in names), "data.class_names", CLASS_NAMES, f"{names} (an empty name)"),
        (not repeated, "data.class_names", CLASS_NAMES, f"{names} ({repeated} repeated)"),
    ]


def _shapes_checks(d: DataConfig) -> list[tuple]:
    """shapes: the split sizes; data.train and data.val would be silently ignored (it renders its scenes)."""
    return [
        (d.train is None, "data.train", "null, since data.task=shapes reads no files", d.train),
        (d.val is None, "data.val", "null, since data.task=shapes reads no files", d.val),
        *shapes_task_checks(d.shapes_train, d.shapes_val, d.image_size),
        rendered_size_check("data.image_size", d.image_size),
    ]


def resolve_defaults(cfg: FinetuneConfig) -> None:
    """Set the nulls that follow from the task (the prompts), so that the head, the report and the run's
    config.yaml (which a resume compares with) hold what the run trained from."""
    if cfg.model.templates is None:
        cfg.model.templates = list(TASK_TEMPLATES[cfg.data.task])


# ----------------------------------------------------------------------------------------- data
def build_splits(d: DataConfig) -> tuple:
    """Train and validation sources and the class names (``data.class_names``, else the folder names); a folder
    that does not read as class folders (or a validation folder with a class the training one lacks) is a
    ConfigError naming its key, and so are class names that are not one per training folder."""
    if d.task == "shapes":
        return shapes_task_splits(d.shapes_train, d.shapes_val, d.image_size)
    train = opened("data.train", d.train, "a folder of class sub-folders of images", lambda: ImageClassFolder(d.train))
    classes = train.classes
    raise_on_failed_checks([(len(classes) >= 2, "data.train", "a folder of at least 2 class sub-folders", d.train)])
    expected = f"a folder of sub-folders among the training classes {classes[:10]}"
    val = opened("data.val", d.val, expected, lambda: ImageClassFolder(d.val, classes))
    # a first readable image among the first training ones, and one among every validation image
    for key, path, fault in (
        ("data.train", d.train, unusable_start(train)),
        ("data.val", d.val, unusable_start(val, limit=None)),
    ):
        raise_on_failed_checks([(fault is None, key, "a folder with a readable image", f"{path} ({fault})")])
    if d.class_names is None:
        return train, val, classes
    expected = f"{len(classes)} names, one per class folder of data.train in sorted order {classes[:10]}"
    got = f"{len(d.class_names)} names {list(d.class_names)[:10]}"
    raise_on_failed_checks([(len(d.class_names) == len(classes), "data.class_names", expected, got)])
    return train, val, list(d.class_names)


class CroppedBatches:
    """The training batches with open_clip's training augmentation: each image a random resized crop of
    ``crop`` drawn from the sample's own seed (so from (seed, step, slot): the same on any number of ranks and
    on a resume); the labels as ``collator`` gives them.

    Args:
        crop (RandomCropTransform): the crop, normalised as the checkpoint's preprocessing.
        collator (ClassificationCollator): the evaluation collator, for the labels.
    """

    def __init__(self, crop: RandomCropTransform, collator: ClassificationCollator) -> None:
        self.crop, self.collator = crop, collator

    def __call__(self, kind: str, samples: list, seeds: list[int], *, another=None) -> dict:
        """``{"image", "labels"}`` of ``samples``, the i-th image cropped with ``seeds[i]``.

        Raises:
            ValueError: if there are not as many seeds as samples, or the collator refuses the labels.
        """
        check_seeds(samples, seeds)
        batch = self.collator(kind, [sample._replace(image=None) for sample in samples], seeds)  # (labels only)
        batch["image"] = torch.stack([self.crop(sample.image, seed) for sample, seed in zip(samples, seeds)])
        return batch


def training_collator(collator: ClassificationCollator, image_size: int, crop_scale_min: Optional[float]):
    """What collates the training batches: ``collator`` (the checkpoint's preprocessing, validation's) for a null
    ``crop_scale_min``; else :class:`CroppedBatches` with crops of ``(crop_scale_min, 1)`` of the area resized to
    ``image_size``, normalised with that preprocessing's mean and std (none: 0 and 1), as examples/clip/train.py's."""
    if crop_scale_min is None:
        return collator
    spec = collator.transform.spec
    mean, std = (spec.mean, spec.std) if spec.mean is not None else ((0.0,) * 3, (1.0,) * 3)
    return CroppedBatches(RandomCropTransform(image_size, scale=(crop_scale_min, 1.0), mean=mean, std=std), collator)


# ----------------------------------------------------------------------------------------- model
def zero_shot_head(pretrained, classes: list[str], templates: list[str], batch_size: int) -> nn.Linear:
    """The head that scores as zero-shot classification does: ``exp(logit_scale)`` x the class embeddings
    (:func:`torchflava.zero_shot.class_embeddings`: each class's normalised mean prompt embedding), bias 0. Class
    names whose prompts tokenise alike (``Red`` and ``red``) are a ConfigError naming ``data.class_names`` (or the
    folder names they default to), other prompt faults one naming ``model.templates``."""

    def embedded():
        try:
            return class_embeddings(pretrained, classes, templates, batch_size=batch_size)
        except ValueError as error:  # (the names' fault, blamed on model.templates before)
            if not str(error).startswith("class_names must differ"):
                raise
            expected = "class names the checkpoint's tokenizer tells apart (data.class_names, else the folder names)"
            raise ConfigError(f"key 'data.class_names': expected {expected}, got {list(classes)} ({error})") from None

    embeddings = opened(
        "model.templates", list(templates), f"prompts that tell the classes apart ({len(classes)} classes)", embedded
    )
    return embedding_head(embeddings, float(pretrained.model.logit_scale.detach().exp()))


def zero_shot_classifier(m: ModelConfig, classes: list[str], batch_size: int) -> CLIPClassifier:
    """A new run's start, read from ``model.pretrained``: its image tower with the zero-shot head of ``classes``
    (:func:`zero_shot_head`), the class names, its preprocessing and every ``clip_model`` argument (the text tower
    builds the head and is not kept)."""
    pretrained = read_pretrained(m, lambda **given: load_pretrained(m.pretrained, **given))
    if m.head_init == "linear_probe":  # (the probe's head replaces this one before anything reads it: no prompts)
        head = nn.Linear(pretrained.model.image_projection.out_features, len(classes))
    else:
        head = zero_shot_head(pretrained, classes, m.templates, batch_size)
    model = NormalizedLinearClassifier(CLIPImageTower(pretrained.model), head)
    kwargs = clip_model_arguments(**pretrained.kwargs)  # every argument stated: the record's architecture
    return CLIPClassifier(model, list(classes), pretrained.image_transform, kwargs)


def random_head(width: int, num_classes: int, seed: int) -> nn.Linear:
    """A head of nn.Linear's own initialisation, drawn from ``seed`` (the same on every rank and resume)."""
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(width, num_classes)
    with torch.no_grad():
        bound = 1 / width**0.5  # nn.Linear's default range, from a generator of its own
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    return head


def probe_order(count: int, max_items: Optional[int], seed: int) -> list[int]:
    """The training items the linear probe reads: the first ``max_items`` (every one for None) of a permutation of
    ``range(count)`` drawn from ``seed`` (class folders list their items class by class: their first N alone would
    leave out the last classes)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return order if max_items is None else order[:max_items]


@torch.no_grad()
def probe_features(
    model: NormalizedLinearClassifier,
    source,
    items: list[int],
    collator: ClassificationCollator,
    batch_size: int,
    *,
    run_timeout_s: Optional[float],
) -> tuple[Tensor, Tensor, int]:
    """The features the head sees (``model.features``: the L2-normalised projections) of ``items`` of ``source``,
    through the evaluation transform (``collator``'s, no augmentation), ``batch_size`` images a forward, each rank
    every ``world_size``-th item (:func:`~torchflava.training.distributed.gather_shares`, as validation): (N, P)
    float32 features and (N,) labels on the CPU of the readable items in ``items``' order, on every rank, and the
    count of the unreadable ones (skipped, as training skips them)."""
    device = next(model.parameters()).device

    def share_features(share: range) -> list:
        rows, skipped = {}, []
        for chunk in readable_chunks(lambda i: source[items[i]], share, batch_size, skipped):
            batch = collator("eval", [sample for _, sample in chunk], [])
            features = model.eval().features(batch["image"].to(device)).float().cpu()
            for (i, _), row, label in zip(chunk, features, batch["labels"].tolist()):
                rows[i] = (row.clone(), label)  # (a row of its own: a view would pickle the whole batch)
        return [rows.get(i) for i in share]

    rows = gather_shares(share_features, len(items), run_timeout_s=run_timeout_s)
    readable = [row for row in rows if row is not None]
    expected = "at least 5 readable training images (the linear probe holds out a fifth to choose its penalty)"
    raise_on_failed_checks([(len(readable) >= 5, "data.train", expected, f"{len(readable)} of {len(rows)} read")])
    features = torch.stack([row for row, _ in readable])
    return features, torch.tensor([label for _, label in readable]), len(rows) - len(readable)


def fit_probe(features: Tensor, labels: Tensor, num_classes: int, l2: Optional[float]) -> LinearProbeResult:
    """:func:`~torchflava.evaluation.linear_probe.linear_probe` of the rows: fitted on the first four fifths (their
    mean and std standardise), the penalty ``l2`` (None: the one of ``DEFAULT_L2`` that scores best on the last
    fifth), refitted with it on every row; on the features' device, the result's tensors on the CPU."""
    cut = len(labels) - len(labels) // 5
    probe = linear_probe(
        (features[:cut], labels[:cut]),
        (features[cut:], labels[cut:]),
        num_classes=num_classes,
        l2_values=DEFAULT_L2 if l2 is None else [l2],
    )
    return probe._replace(**{k: getattr(probe, k).cpu() for k in ("weight", "bias", "mean", "std")})


def linear_probe_head(
    model: NormalizedLinearClassifier, source, cfg: FinetuneConfig, collator: ClassificationCollator, info
) -> nn.Linear:
    """LP-FT's head (``model.head_init=linear_probe``): a probe (:func:`fit_probe`, on rank 0, given to every rank) of
    ``model``'s features of the training items of :func:`probe_order` (:func:`probe_features`, read by every rank on
    ``info.device``), made a head that computes its logits on those features; ``model`` is left on the CPU."""
    m, t = cfg.model, cfg.training
    items = probe_order(len(source), m.probe_max_items, t.seed)
    model.to(info.device)
    try:
        features, labels, skipped = probe_features(
            model, source, items, collator, cfg.eval.batch_size, run_timeout_s=t.collective_timeout_s
        )
    finally:
        model.cpu()
    fit = lambda: fit_probe(features.to(info.device), labels, model.num_classes, m.probe_l2)  # noqa: E731
    probe = rank0_report(fit, run_timeout_s=t.collective_timeout_s)
    if info.is_main:
        scored = "set" if m.probe_l2 is not None else f"held-out accuracy {percent(probe.val_accuracy[probe.l2])}"
        print(f"linear probe: {len(labels)} training items ({skipped} unreadable), l2 {probe.l2:g} ({scored})")
    return standardised_head(probe.weight, probe.bias, probe.mean, probe.std)


def classification_step(model: nn.Module, item: MixedBatch) -> StepOutput:
    """One micro-batch: the cross-entropy summed over its rows, and the row count."""
    logits = model(item.batch["image"])
    labels = item.batch["labels"]
    loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    return StepOutput({"cross_entropy": loss}, {"cross_entropy": torch.tensor(labels.shape[0])})


# ----------------------------------------------------------------------------------------- report
@torch.no_grad()
def predict(
    models: dict[str, nn.Module], source, share: range, collator: ClassificationCollator, batch_size: int
) -> list:
    """Each of ``models``' top-1 class of every item of ``share`` (indices of ``source``): one ``(label, [class of
    each model, in models' order])`` per index, or for an unreadable item (skipped, as in training) the reason it
    is unreadable, a str naming its image; each image decoded once for all.

    Raises:
        ValueError: if a model's logits hold NaN or infinite values (the metrics would refuse them).
    """
    device = next(next(iter(models.values())).parameters()).device
    predicted, skipped = {}, []
    # (an unusable item's reason in its place: its image is named in the report)
    for chunk in readable_chunks(source.__getitem__, share, batch_size, skipped, skipped_keys=predicted):
        batch = collator("eval", [sample for _, sample in chunk], [])
        pixels = batch["image"].to(device)
        classes = []
        for name, model in models.items():
            logits = model.eval()(pixels).float()
            if not bool(torch.isfinite(logits).all()):
                raise ValueError(f"the {name} model's validation logits hold NaN or infinite values")
            classes.append(logits.argmax(dim=1).tolist())
        for row, ((index, _), label) in enumerate(zip(chunk, batch["labels"].tolist())):
            predicted[index] = (label, [column[row] for column in classes])
    return [predicted[index] for index in share]


SKIPPED_EXAMPLES = 10  # the unreadable validation images the report names


def validation_metrics(predictions: list, names: list[str], num_classes: int) -> dict:
    """Top-1 accuracy (and Matthews correlation) of each model of ``names`` over the readable items of
    ``predictions`` (:func:`predict`'s, of every validation item), with the number of those and of the unreadable
    ones, and the reasons of the first :data:`SKIPPED_EXAMPLES` of those (``skipped_examples``: an image left out
    of the figures is named, as a training one is): from the predicted classes alone (no (N, C) scores held,
    whatever the number of classes)."""
    readable = [p for p in predictions if not isinstance(p, str)]
    reasons = [p for p in predictions if isinstance(p, str)]
    labels = torch.tensor([label for label, _ in readable], dtype=torch.long)
    classes = torch.tensor([row for _, row in readable], dtype=torch.long).reshape(len(readable), len(names))
    counts = {"items": len(readable), "skipped": len(reasons), "skipped_examples": reasons[:SKIPPED_EXAMPLES]}
    return {
        name: {**classification_metrics(classes[:, i], labels, num_classes), **counts} for i, name in enumerate(names)
    }


def wise_ft(zero_shot: dict[str, Tensor], fine_tuned: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """WiSE-FT's weights: ``(1 - alpha) * zero_shot + alpha * fine_tuned``, key by key."""
    return {k: torch.lerp(zero_shot[k].float(), v.float(), alpha).to(v.dtype) for k, v in fine_tuned.items()}


def format_report(report: dict, out_dir: Path) -> str:
    """The one human line after the report: steps, the accuracies, chance, where the classifier is."""
    shown = [f"{name} {percent(metrics['accuracy'])}" for name, metrics in report["validation"].items()]
    items, skipped = report["validation"]["fine_tuned"]["items"], report["validation"]["fine_tuned"].get("skipped")
    items = f"{items} items, {skipped} unreadable skipped" if skipped else f"{items} items"
    return (
        f"fine-tuning finished: {report['steps']} steps; validation ({items}) top-1 {', '.join(shown)} "
        f"(chance {percent(report['chance'])}); classifier exported to {out_dir / 'model'} "
        f"(python -m torchflava.classify --checkpoint {out_dir} --images DIR)"
    )


# ----------------------------------------------------------------------------------------- recipe
@holds_run_directory  # one run per directory, given up however main ends
def main(cfg: FinetuneConfig) -> dict:
    recorded, record = None, None  # a resume's zero-shot classifier, as its run recorded it, and where

    def validated(config: FinetuneConfig, world_size: int) -> None:
        nonlocal recorded, record
        record = run_record(config)
        recorded = None if record is None else recorded_zero_shot(record)
        validate(config, world_size, recorded=recorded)
        resolve_defaults(config)  # before start_run compares the config with a resumed one's and records it

    start = start_run(cfg, validated)  # validate, process group, run directory, resume point
    info, t, d, m = start.info, cfg.training, cfg.data, cfg.model
    out_dir = Path(t.output_dir)
    if recorded is not None and start.resume_from is None:  # no intact checkpoint left: a new run, from its start
        recorded, record = None, None
        raise_on_failed_checks([(m.pretrained is not None, "model.pretrained", PRETRAINED, m.pretrained)])
        raise_on_failed_checks(_lone_file_checks(m))
        pretrained_kwargs(m)

    # the data checked before the weights are loaded
    train_source, val_source, classes = build_splits(d)
    if info.is_main and (warning := empty_classes_warning(train_source, "data.train")):
        print(warning, file=sys.stderr)
    folders = list(train_source.classes)  # (the class folders, in id order; the shapes world's classes)
    prompted = recorded is None and m.head_init == "zero_shot" and d.class_names is None  # (the folders' names)
    if info.is_main and prompted and (warning := synset_folders_warning(folders, "data.class_names")):
        print(warning, file=sys.stderr)
    if recorded is not None:  # (the config compared equal: only the training folders can have changed since)
        started = recorded_folders(record, recorded, d.class_names)
        if started is not None:
            raise_on_failed_checks([class_folders_check(started, folders, d.train)])
        elif info.is_main:
            print(
                f"warning: {record} records no {CLASS_FOLDERS}: the class folders' order is not checked",
                file=sys.stderr,
            )
    # the zero-shot classifier: a new run's from model.pretrained, a resume's as its start recorded it
    zero_shot = zero_shot_classifier(m, classes, cfg.eval.batch_size) if recorded is None else recorded
    image_size = zero_shot.clip_kwargs["image_size"]
    collator = ClassificationCollator(None, image_size=image_size, image_transform=zero_shot.image_transform)
    data = MixedBatches(
        {"train": train_source},
        {"train": 1.0},
        training_collator(collator, image_size, d.crop_scale_min),  # validation keeps the checkpoint's preprocessing
        global_batch_size=t.global_batch_size // t.grad_accumulation,
        num_steps=t.max_steps * t.grad_accumulation,
        rank=info.rank,
        world_size=info.world_size,
        seed=t.seed,
    )
    # a training source that changed size since the checkpoint: refused before the probe or the record
    raise_on_failed_checks(resumed_data_checks(data, start.loop_states, {"train": training_source_key(d.task)}))
    if recorded is None and m.head_init == "linear_probe":  # LP-FT: the probe's head is the start (a resume's too)
        zero_shot.model.head = linear_probe_head(zero_shot.model, train_source, cfg, collator, info)
    # recorded whole in the run directory before training (every rank, rank 0 writes), so that its resume needs
    # nothing but the run directory; a resume of this directory has it there already
    if recorded is None or record != out_dir / ZERO_SHOT_RECORD:
        with staged_directory(out_dir / ZERO_SHOT_RECORD, writer=info.is_main) as staging:
            export_clip_classifier(
                zero_shot.model,
                staging,
                clip_kwargs=zero_shot.clip_kwargs,
                labels=zero_shot.labels,
                image_transform=zero_shot.image_transform,
            )
            if info.is_main:  # (a resume compares its folders with them: a renamed one would shift every label)
                write_json(staging / CLASS_FOLDERS, folders)
    classes = zero_shot.labels

    # the recorded weights (zero-shot or linear-probe head) kept (CPU) for the report; the model trained from them
    # (or from a random head)
    zero_shot_state = {k: v.detach().clone() for k, v in zero_shot.model.state_dict().items()}
    tower, head = zero_shot.model.encoder, zero_shot.model.head
    head = head if m.head_init != "random" else random_head(head.in_features, len(classes), t.seed)
    model = NormalizedLinearClassifier(tower, copy.deepcopy(head)).to(info.device)
    clip_kwargs = zero_shot.clip_kwargs
    del zero_shot
    # (the tower and the head take part in every step's loss: DDP need not search for unused parameters)
    result = fit(
        model,
        classification_step,
        data,
        training=t,
        optim=cfg.optim,
        description="fine-tuning",
        start=start,
        find_unused_parameters=False,
    )

    # the weights, the tower's architecture, the class names and preprocessing, written whole and renamed in
    with staged_directory(out_dir / "model", writer=info.is_main) as staging:
        export_clip_classifier(
            model, staging, clip_kwargs=clip_kwargs, labels=classes, image_transform=collator.transform
        )

    # the recorded start (zero_shot; linear_probe for LP-FT), fine_tuned, wise_ft: the report's models, in the
    # predictions' order
    start_name = "linear_probe" if m.head_init == "linear_probe" else "zero_shot"
    names = [start_name, "fine_tuned"] + (["wise_ft"] if cfg.eval.wise_ft_alpha is not None else [])

    def predict_share(share: range) -> list:  # every rank its share, from the export (what a user loads)
        fine_tuned = load_clip_classifier(out_dir / "model").model
        states = {start_name: zero_shot_state, "fine_tuned": fine_tuned.state_dict()}
        if cfg.eval.wise_ft_alpha is not None:
            states["wise_ft"] = wise_ft(zero_shot_state, states["fine_tuned"], cfg.eval.wise_ft_alpha)
        models = {name: copy.deepcopy(fine_tuned).to(info.device) for name in names}
        for name in names:
            models[name].load_state_dict(states[name])
        return predict(models, val_source, share, collator, cfg.eval.batch_size)

    # rank 0's export renamed in before any rank loads it (its files were written before the export's own barrier)
    barrier()
    # each rank predicts every world_size-th validation item, the predictions put back in order on every rank
    predictions = gather_shares(predict_share, len(val_source), run_timeout_s=t.collective_timeout_s)

    def report_from_predictions() -> dict:
        report = {
            "task": d.task,
            "head_init": m.head_init,
            "num_classes": len(classes),
            "steps": result.step,
            **data_loss_report(result.skipped, data.lost_data),
            "chance": 1 / len(classes),
            "wise_ft_alpha": cfg.eval.wise_ft_alpha,
            "validation": validation_metrics(predictions, names, len(classes)),
        }
        write_fine_tuning_report(out_dir, report, format_report(report, out_dir))
        return report

    # rank 0 scores and reports; the others are given its report (or its error)
    return rank0_report(report_from_predictions, run_timeout_s=t.collective_timeout_s)


if __name__ == "__main__":
    run_recipe(main, FinetuneConfig, sys.argv[1:], config_errors=(FileNotFoundError,))
