r"""Fine-tuned FLAVA classifiers: export, load and predict, and the command that runs one on new inputs; and
fine-tuned CLIP image classifiers (``examples/clip/finetune.py``: :func:`export_clip_classifier`,
:func:`load_clip_classifier`), which the command runs on ``--images DIR``.

    python -m torchflava.classify --checkpoint runs/finetune --images photos/
    python -m torchflava.classify --checkpoint runs/finetune --images food101/data/validation-*.parquet
    python -m torchflava.classify --checkpoint runs/qnli --text $'Is it red?\tThe ball is red.' @more.tsv
    python -m torchflava.classify --checkpoint runs/vqa --images coco/ --captions questions.jsonl --top-k 3
    python -m torchflava.classify --checkpoint runs/vqa --images coco/ --captions vqa/test-dev2015_questions.jsonl \
        --text-key question --vqa-submission test-dev2015_results.json

A fine-tuning run (``examples/flava/finetune.py``) exports its model with :func:`export_classifier`
into ``model/``: the weights (``flava_classification.safetensors``), the backbone's architecture
(``backbone_config.json``), the head's (``classification_config.json``: the arguments of
:func:`~torchflava.models.flava_model_for_classification`), the class names (``labels.json``, one
per output; none for a regression), the tokenizer with the text length it was trained at, and the
image preprocessing it was trained with, and whether its texts are sentence pairs
(``classifier_inputs.json``). :func:`load_classifier` builds it back from that directory
(or the run directory above it). The directory is also a FLAVA export for everything that takes one
(``load_pretrained``, ``flava_model(pretrained=...)``, the zero-shot command, a further fine-tuning):
the backbone loads from it, the head's weights are skipped as a pretraining head's are.

The command feeds the encoder the head reads: images (``--images DIR``), texts (``--text``, a text or
``@FILE`` of one a line; for a classifier fine-tuned on sentence pairs, each its two sentences separated
by a tab, encoded as fine-tuning read them: BERT's two segments; for an export from before
``classifier_inputs.json``, a pair as its two sentences joined by `` [SEP] ``, as it was fine-tuned on
them, and no text holding a tab) or image-text pairs
(``--images DIR --captions FILE``: any captions file the zero-shot command reads). It prints each
input's top classes with their probabilities (softmax; a sigmoid per class for a multi-label head such
as VQA's; the predicted values of a regression) and, when images lie in sub-folders named after the
classes, the accuracy. An image classifier also reads the images of parquet files as the Hugging Face Hub serves a
dataset (``data/validation-*.parquet``; ``--image-key``/``--label-key`` name other columns) and of webdataset tar
shards as CLIP_benchmark serves one (``wds_imagenet1k/test``, or the dataset's root: its ``test/`` split) and of the
files torchvision's CIFAR-10/100 and MNIST-family datasets download (``cifar-10-batches-py``: its test split; or
``test_batch``...), as the zero-shot command reads them, each image named by its file's row
(``validation-00000-of-00002.parquet[17]``, ``test_batch[0017]``) or its shard's sample (``0.tar:s0000017``); the
accuracy where each image's class, its class id's name (their ClassLabel names, the root's ``classnames.txt``,
CIFAR's meta file's), is one of the classifier's, matched by name as a sub-folder's is, else a
warning saying why there is none. ``--json`` also writes them. ``--vqa-submission`` writes VQA's results file for the
evaluation server (``[{"question_id", "answer"}]``: each question's top answer) of a questions file
``python -m torchflava.data.vqa`` wrote.

A text classifier also reads a GLUE TSV and writes GLUE's submission file (``index<TAB>prediction``
under that header: the class name, or the value of a regression):

    python -m torchflava.classify --checkpoint runs/qnli --tsv glue/QNLI/test.tsv --out QNLI.tsv

The file's header names its columns: the text columns the classifier was fine-tuned on
(``--text-columns``, else the run's ``config.yaml``'s ``data.text_columns``), an ``index`` column (else
rows are numbered from 0) and, in a dev file, the label column (``--label-column``, else the run's
``data.label_column``, else ``label``), with which the metrics of the fine-tuning run's report are printed:
accuracy, Matthews correlation (GLUE's CoLA metric) and, for two classes, F1 (MRPC's, QQP's); Pearson and
Spearman correlations for a regression (STS-B). A row of another number of fields or with a blank text is
skipped and named, as fine-tuning skips it (so it is missing from the submission file).
"""

import argparse
from collections.abc import Iterable, Mapping, Set
import inspect
import json
import math
import os
from pathlib import Path
import sys
from typing import ContextManager, NamedTuple, Optional, Sequence, Union

from PIL import Image
from safetensors import safe_open
import torch
from torch import Tensor, nn

from torchflava.data.finetuning import GlueTsv
from torchflava.data.parquet import LABEL_COLUMNS, ParquetImages
from torchflava.data.readers import ImageFolder, ImageTextFolder
from torchflava.data.samples import BadSample, readable_chunks
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import PREPROCESSOR_CONFIG, ImageTransform
from torchflava.data.vqa import submission, submission_questions
from torchflava.data.wds import CLASSES_FILE
from torchflava.evaluation.metrics import (
    TOP5,
    accuracy_summary,
    classification_metrics,
    correlation,
    pearson,
    percent,
    spearman,
    top_k_accuracy,
)
from torchflava.models import clip_model, flava_model, flava_model_for_classification
from torchflava.models.clip import CLIPModel, clip_model_arguments
from torchflava.models.flava import FLAVAModel
from torchflava.models.flava.classification import FLAVAForClassification, default_loss
from torchflava.modules.heads import NormalizedLinearClassifier
from torchflava.modules.layers.packed_linear import pack_linears
from torchflava.pretrained import (
    CLIP_CLASSIFIER_CONFIG,
    INFERENCE_DTYPE_NAMES,
    INFERENCE_DTYPES,
    CheckpointLayout,
    TokenizerlessDirectory,
    add_dtype_argument,
    checkpoint_image_transform,
    checkpoint_layout,
    clip_classifier_record,
    export_directory,
    found_intact,
    inference_precision,
    load_pretrained,
    local_directory,
    training_checkpoint,
)
from torchflava.training.checkpointing import export_model, read_model_weights
from torchflava.training.distributed import barrier
from torchflava.utils.checkpoint import (
    atomic_write,
    first_line,
    load_state_dict,
    mismatch,
    peek_state_dict,
    read_json_object,
    refuse_unmatched,
)
from torchflava.utils.cli import (
    at_file_lines,
    command_parser,
    finish_command,
    output_file,
    positive_int,
    refuse_overwritten_inputs,
    run_command,
    write_json,
)
from torchflava.utils.config_text import unescaped
from torchflava.utils.distributed import get_rank
from torchflava.utils.memory import keep_freed_memory
from torchflava.utils.meta import meta_device
from torchflava.utils.modes import eval_mode
from torchflava.zero_shot import (
    LABELLED_READERS,
    LabelledImages,
    folder_class,
    folder_labels,
    image_values,
    parquet_images_argument,
    shard_images_argument,
    source_kind,
    torchvision_images_argument,
    unmatched_folders_warning,
)

CLASSIFIER_CONFIG = "classification_config.json"  # flava_model_for_classification's arguments
LABELS_FILE = "labels.json"  # the class names, in output order
# what its text inputs are: {"sentence_pairs": true} for a head fine-tuned on sentence pairs; none (an
# export from before the file) reads single texts
INPUTS_FILE = "classifier_inputs.json"
GLUE_INDEX_COLUMN = "index"  # a GLUE test file's row ids, which its submission file repeats
CLASSIFIER_WEIGHTS = "flava_classification.safetensors"
# the arguments the config holds: the backbone has its own file, and comes loaded
_ARGUMENTS = tuple(
    name
    for name in inspect.signature(flava_model_for_classification).parameters
    if name not in ("backbone", "pretrained")
)


def classifier_arguments(model: FLAVAForClassification) -> dict:
    """The :func:`~torchflava.models.flava_model_for_classification` arguments that build ``model``'s head.

    Raises:
        TypeError: if ``model`` is not a FLAVAForClassification.
        ValueError: if its head is not the builder's (Linear, ReLU, Dropout, Linear): no config can rebuild it.
    """
    if not isinstance(model, FLAVAForClassification):
        raise TypeError(f"model must be a FLAVAForClassification, got {type(model).__name__}")
    head = model.classifier
    kinds = [type(m) for m in head] if isinstance(head, nn.Sequential) else [type(head)]
    if kinds != [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]:
        raise ValueError(
            "model.classifier must be classification_head's Linear, ReLU, Dropout, Linear to be exported with a "
            f"config, got {[kind.__name__ for kind in kinds]}"
        )
    return {
        "num_classes": head[3].out_features,
        "modality": model.modality,
        "loss": model.loss,
        "classifier_hidden_dim": head[0].out_features,
        "classifier_dropout": head[2].p,
    }


def _check_labels(labels: object, num_classes: int, loss: str, name: str) -> Optional[list[str]]:
    """``labels`` as a list: None, or one distinct non-empty str per class (none for a regression)."""
    if labels is None:
        return None
    if loss == "mse":
        raise ValueError(f"{name}: a regression head (loss 'mse') has no class names, got {labels!r:.80}")
    if not isinstance(labels, (list, tuple)) or not all(isinstance(label, str) and label for label in labels):
        raise TypeError(f"{name} must be a list of non-empty str (the class names), got {labels!r:.80}")
    if len(labels) != num_classes or len(set(labels)) != len(labels):
        raise ValueError(
            f"{name} must name each of the head's {num_classes} classes once, got {len(labels)} names "
            f"({len(labels) - len(set(labels))} repeated)"
        )
    return list(labels)


def export_classifier(
    model: FLAVAForClassification,
    directory: Union[str, Path],
    *,
    backbone_kwargs: dict,
    tokenizer: WordPieceTokenizer,
    image_transform: ImageTransform,
    labels: Optional[Sequence[str]] = None,
    sentence_pairs: bool = False,
) -> Path:
    """Write a fine-tuned classifier that :func:`load_classifier` builds back (collective: every rank calls it).

    Args:
        model (FLAVAForClassification): the classifier (possibly wrapped for data parallelism in place,
            as FSDP2 does), with :func:`~torchflava.models.flava.classification.classification_head`'s head.
        directory (Union[str, Path]): the export directory, made if missing.
        backbone_kwargs (dict): the :func:`~torchflava.models.flava_model` arguments of its backbone.
        tokenizer (WordPieceTokenizer): its tokenizer; its ``model_max_length`` is the text length the
            command tokenises at.
        image_transform (ImageTransform): the preprocessing of its training images.
        labels (Optional[Sequence[str]]): the class names in output order (None: ids only; a regression).
        sentence_pairs (bool): whether it was fine-tuned on sentence pairs (two segments, token types 0
            and 1): :meth:`Classifier.scores` then reads pairs, and refuses single texts.

    Returns:
        Path: ``directory``.

    Raises:
        TypeError, ValueError: for a model without the builder's head, ``backbone_kwargs`` that do not build
            its backbone (the export would not load), labels that do not name each class once, or
            ``sentence_pairs`` not a bool or true for a head that reads no text — before anything is written.
    """
    kwargs = classifier_arguments(model)
    _check_sentence_pairs(sentence_pairs, kwargs["modality"], "sentence_pairs")
    labels = _check_labels(labels, kwargs["num_classes"], kwargs["loss"], "labels")
    _check_backbone_kwargs(backbone_kwargs, model.model)
    directory = Path(directory)
    if get_rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CLASSIFIER_CONFIG).unlink(missing_ok=True)  # (its presence marks a finished export)
    barrier()
    export_model(model, directory / CLASSIFIER_WEIGHTS)
    if get_rank() == 0:
        write_json(directory / "backbone_config.json", backbone_kwargs, allow_nan=True)
        tokenizer.save(directory)
        image_transform.save(directory)
        if labels is None:
            (directory / LABELS_FILE).unlink(missing_ok=True)  # (an earlier export's names are not this head's)
        else:
            write_json(directory / LABELS_FILE, labels)
        write_json(directory / INPUTS_FILE, {"sentence_pairs": sentence_pairs})
        write_json(directory / CLASSIFIER_CONFIG, kwargs, allow_nan=True)  # last: the export is whole
    barrier()
    return directory


def _check_sentence_pairs(value: object, modality: str, name: str) -> bool:
    """``value``; TypeError naming ``name`` unless a bool, ValueError if true for a head that reads no text."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r:.40}")
    if value and modality == "image":
        raise ValueError(f"{name}: a head of modality 'image' reads no text, got sentence_pairs=True")
    return value


def _check_backbone_kwargs(backbone_kwargs: object, backbone: nn.Module) -> None:
    """TypeError/ValueError naming ``backbone_kwargs`` unless flava_model builds from them (on the meta device)
    a backbone with ``backbone``'s tensors: same names and shapes (an FSDP2-sharded one's are its whole shapes)."""
    if not isinstance(backbone_kwargs, dict):
        raise TypeError(
            f"backbone_kwargs must be a dict of flava_model arguments, got {type(backbone_kwargs).__name__}"
        )
    try:
        with meta_device():
            built = flava_model(**backbone_kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"backbone_kwargs: {first_line(error)}") from None

    def shapes(module: nn.Module) -> dict[str, tuple]:
        return {name: tuple(t.shape) for name, t in [*module.named_parameters(), *module.named_buffers()]}

    stated, actual = shapes(built), shapes(backbone)
    differ = sorted(name for name in stated.keys() | actual.keys() if stated.get(name) != actual.get(name))
    if differ:
        first = differ[0]
        raise ValueError(
            f"backbone_kwargs must be the flava_model arguments of the model's backbone (the export would not "
            f"load), got a build whose {len(differ)} tensors differ, first {first}: {stated.get(first)} for "
            f"the model's {actual.get(first)}"
        )


class Classifier(NamedTuple):
    """A loaded fine-tuned classifier.

    Attributes:
        model (FLAVAForClassification): the model, in eval mode.
        labels (Optional[list[str]]): the class names in output order (None: none were exported).
        tokenizer (WordPieceTokenizer): its tokenizer (``model_max_length``: the text length).
        image_transform (ImageTransform): PIL image -> pixels, as in its training.
        kwargs (dict): the :func:`~torchflava.models.flava_model_for_classification` arguments.
        backbone_kwargs (dict): the :func:`~torchflava.models.flava_model` arguments.
        weights (Path): the weights file.
        dtype (torch.dtype): the precision it runs in (:meth:`precision`).
        sentence_pairs (bool): whether its texts are sentence pairs (fine-tuned on two segments).
    """

    model: FLAVAForClassification
    labels: Optional[list[str]]
    tokenizer: WordPieceTokenizer
    image_transform: ImageTransform
    kwargs: dict
    backbone_kwargs: dict
    weights: Path
    dtype: torch.dtype = torch.float32
    sentence_pairs: bool = False

    def precision(self) -> ContextManager:
        """bf16 autocast for a bf16 classifier, else nothing."""
        return inference_precision(self.model, self.dtype)

    @property
    def needs(self) -> tuple[str, ...]:
        """The inputs the head's encoder reads: ``("image",)``, ``("text",)`` or both."""
        return {"image": ("image",), "text": ("text",), "multimodal": ("image", "text")}[self.model.modality]

    def class_name(self, index: int) -> str:
        """The name of output ``index`` (its number where no names were exported)."""
        return str(index) if self.labels is None else self.labels[index]

    @property
    def loss(self) -> str:
        """The head's loss: what its scores are (:meth:`scores`)."""
        return self.model.loss

    @property
    def num_classes(self) -> int:
        """The head's outputs."""
        return self.kwargs["num_classes"]

    def scores(self, images: Optional[Iterable] = None, texts: Optional[Iterable[str]] = None) -> Tensor:
        """(N, num_classes) fp32 scores of N inputs, one batch: class probabilities (softmax) for a
        cross-entropy head, each class's probability (sigmoid) for a binary-cross-entropy one, the
        predicted values for a regression: :meth:`logits` so activated (arguments and errors as there)."""
        return activated(self.loss, self.logits(images, texts))

    @torch.no_grad()
    def logits(self, images: Optional[Iterable] = None, texts: Optional[Iterable[str]] = None) -> Tensor:
        """(N, num_classes) fp32 outputs of the head for N inputs, one batch, before :meth:`scores`' softmax or
        sigmoid (what ranks the classes: a sigmoid rounds every logit above ~17 to 1.0 in fp32).

        Args:
            images (Optional[Iterable]): PIL images (modalities image and multimodal): a list, a tuple, a
                generator... (not a set: the order pairs images with texts).
            texts (Optional[Iterable]): texts (modalities text and multimodal), the i-th paired with the
                i-th image, tokenised at the tokenizer's ``model_max_length``: str, or for a classifier
                fine-tuned on sentence pairs (:attr:`sentence_pairs`) (first, second) tuples of str, encoded
                as fine-tuning read them (BERT's two segments, truncated longest first).

        Raises:
            TypeError: if ``images`` are not an ordered iterable of PIL images, or ``texts`` of str (of
                pairs of str for a sentence-pair classifier).
            ValueError: if an input the head needs is missing or one it does not read is given, none is
                given, or images and texts differ in number.
        """
        given = {
            "image": _inputs("images", images, Image.Image, "PIL images"),
            "text": self._texts(texts),
        }
        images, texts = given["image"], given["text"]
        wanted = {name for name, values in given.items() if values is not None}
        if wanted != set(self.needs):
            raise ValueError(
                f"this classifier (modality {self.model.modality!r}) reads {' and '.join(n + 's' for n in self.needs)}, "
                f"got {' and '.join(sorted(n + 's' for n in wanted)) or 'neither'}"
            )
        counts = {name: len(values) for name, values in given.items() if values is not None}
        if empty := [name + "s" for name, count in counts.items() if count == 0]:  # (only those given none)
            raise ValueError(f"{' and '.join(empty)}: expected at least one input, got none")
        if len(set(counts.values())) > 1:
            raise ValueError(
                f"images and texts: expected as many images as texts (pairs), got {counts['image']} and {counts['text']}"
            )
        inputs = {}
        if images is not None:
            inputs["image"] = torch.stack([self.image_transform(image) for image in images])
        if texts is not None and self.sentence_pairs:
            firsts, seconds = [first for first, _ in texts], [second for _, second in texts]
            inputs["text"], inputs["text_attention_mask"], inputs["token_type_ids"] = self.tokenizer.encode_pairs(
                firsts, seconds
            )
        elif texts is not None:
            inputs["text"], inputs["text_attention_mask"] = self.tokenizer(texts)
        device = next(self.model.parameters()).device  # (a model moved to an accelerator: its inputs follow)
        inputs = {name: value.to(device) for name, value in inputs.items()}
        with self.precision(), eval_mode(self.model):
            return self.model(**inputs).logits.float().cpu()

    def _texts(self, texts: Optional[Iterable]) -> Optional[list]:
        """``texts`` as a list (:func:`_inputs`), each a (first, second) tuple of str for a sentence-pair
        classifier: TypeError naming the first that is not (a single text the classifier never read)."""
        if not self.sentence_pairs:
            return _inputs("texts", texts, str, "str")
        texts = _inputs("texts", texts, object, "(first, second) sentence pairs")
        for index, pair in enumerate(texts or ()):
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                what = "a single text" if isinstance(pair, str) else type(pair).__name__
                raise TypeError(
                    f"texts must be (first, second) tuples of str (this classifier was fine-tuned on sentence "
                    f"pairs), got {what} {pair!r:.60} at texts[{index}]"
                )
        return texts


def activated(loss: str, logits: Tensor) -> Tensor:
    """A head's (N, C) ``logits`` as its scores: softmax probabilities (``cross_entropy``), a sigmoid per class
    (``binary_cross_entropy``), the values themselves (``mse``)."""
    if loss == "cross_entropy":
        return logits.softmax(dim=-1)
    return logits.sigmoid() if loss == "binary_cross_entropy" else logits


def _inputs(name: str, values: Optional[Iterable], kind: type, what: str) -> Optional[list]:
    """``values`` as a list (None stays None); TypeError naming ``name`` unless an ordered iterable of ``kind``:
    a str, bytes or PIL image is one input, not several, and a mapping or set has no order to pair inputs by."""
    if values is None:
        return None
    one = isinstance(values, (str, bytes, Image.Image, Mapping, Set)) or not isinstance(values, Iterable)
    listed = [] if one else list(values)  # (a generator is read once: here)
    if one or not all(isinstance(v, kind) for v in listed):
        held = sorted({type(v).__name__ for v in listed})
        raise TypeError(
            f"{name} must be a sequence of {what}, got {type(values).__name__}"
            + (f" holding {', '.join(held)}" if held else "")
        )
    return listed


class ClassifierConfig(NamedTuple):
    """What a classifier export states, read and checked without its weights (:func:`classifier_config`)."""

    layout: CheckpointLayout  # the backbone's: weights, its arguments, the directory
    file: Path  # classification_config.json
    kwargs: dict  # flava_model_for_classification's arguments
    labels: Optional[list[str]]  # labels.json's class names, None without one
    sentence_pairs: bool = False  # classifier_inputs.json's: its texts are sentence pairs

    @property
    def modality(self) -> str:
        return self.kwargs.get("modality") or "multimodal"


def classifier_config(path: Union[str, Path]) -> ClassifierConfig:
    """Read and check a classifier export's configs, and the head's tensor names and shapes against them from
    the weights file's header (:func:`load_classifier`'s first step: no tensor read).

    Raises:
        TypeError, FileNotFoundError, ValueError: as :func:`load_classifier`.
    """
    local = local_directory(path)
    if isinstance(local, (str, os.PathLike)) and os.path.isfile(local):  # (read as a CLIP file: its tokenizer asked)
        raise ValueError(
            f"classifier: expected a fine-tuned classifier's export (a fine-tuning run or its model/ directory), got "
            f"{local}, a weights file alone (a pretrained CLIP file is classified zero-shot: python -m "
            f"torchflava.zero_shot --checkpoint {local} --tokenizer MERGES_FILE --images DIR --classes ...)"
        )
    not_a_classifier = lambda directory, family: FileNotFoundError(  # noqa: E731
        f"classifier: {directory} holds no {CLASSIFIER_CONFIG}; expected a fine-tuned classifier's export (a "
        f"fine-tuning run or its model/ directory), got a pretrained {family} checkpoint (or an export cut short "
        "before its config was written)"
    )
    try:
        layout = checkpoint_layout(local)
    except TokenizerlessDirectory:  # (a CLIP directory without tokenizer files: no classifier either)
        raise not_a_classifier(local, "CLIP") from None
    config_file = layout.directory / CLASSIFIER_CONFIG
    if layout.family != "flava" or not config_file.is_file():
        raise not_a_classifier(layout.directory, layout.family.upper())
    kwargs = read_json_object(config_file)
    unknown = sorted(set(kwargs) - set(_ARGUMENTS))
    if unknown or "num_classes" not in kwargs:
        raise ValueError(
            f"classifier: {config_file}: expected the arguments num_classes and any of {list(_ARGUMENTS[1:])}, "
            f"got {sorted(kwargs)}"
        )
    backbone = _meta_backbone(layout)
    try:  # the head's arguments checked on the meta device (no memory, no weights read)
        with meta_device():
            head = flava_model_for_classification(backbone=backbone, **kwargs).classifier
    except (TypeError, ValueError) as error:
        raise ValueError(f"classifier: {config_file}: {first_line(error)}") from None
    _check_head_weights(layout.weights, head, config_file)
    labels_file = layout.directory / LABELS_FILE
    labels = _read_labels(labels_file, kwargs) if labels_file.exists() else None
    pairs = _read_sentence_pairs(layout.directory / INPUTS_FILE, kwargs.get("modality") or "multimodal")
    return ClassifierConfig(layout=layout, file=config_file, kwargs=kwargs, labels=labels, sentence_pairs=pairs)


def _meta_backbone(layout: CheckpointLayout) -> FLAVAModel:
    """The backbone ``backbone_config.json`` states, built on the meta device; ValueError naming that file
    (not the head's config) for an argument flava_model does not take or a bad value."""
    try:
        with meta_device():
            return flava_model(**layout.kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"classifier: {layout.config}: {first_line(error)}") from None


def _check_head_weights(weights: Path, head: nn.Module, config_file: Path) -> None:
    """ValueError naming ``weights`` and the ``classifier.*`` keys it lacks, holds beyond ``head``'s, or holds
    with another shape or a non-float dtype; read from the file's header alone, so that a head of other sizes
    than the config's is refused before anything is read or allocated (a huge hidden_dim included)."""
    stored = {key: value for key, value in peek_state_dict(weights).items() if key.startswith("classifier.")}
    expected = {f"classifier.{key}": value for key, value in head.state_dict().items()}
    _refuse_misfit(weights, stored, expected, f"The head is built from {config_file}.")


def _refuse_misfit(weights: Path, stored: Mapping[str, Tensor], expected: Mapping[str, Tensor], hint: str) -> None:
    """ValueError naming ``weights`` and the keys of ``expected`` (a model's state dict) that ``stored`` lacks, holds
    beyond them, or holds with another shape or a non-float dtype (:func:`refuse_unmatched`, ``hint`` after)."""
    wrong = [bad for key, value in stored.items() if key in expected and (bad := mismatch(key, [value], expected[key]))]
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    refuse_unmatched(f"classifier: {weights}", missing, unexpected, wrong, hint=hint)


def load_classifier(path: Union[str, Path], *, dtype: torch.dtype = torch.float32) -> Classifier:
    """Build a fine-tuned classifier from its export (:func:`export_classifier`) or its run directory.

    Args:
        path (Union[str, Path]): the export directory, the run directory holding it in ``model/``, or a
            ``file://`` URL of either.
        dtype (torch.dtype): ``torch.float32``, or ``torch.bfloat16`` for inference under bf16 autocast
            with the linear weights cast and packed once (see :func:`~torchflava.pretrained.load_pretrained`).

    Returns:
        Classifier: the model (eval mode), class names, tokenizer, preprocessing and arguments.

    Raises:
        TypeError, FileNotFoundError: as :func:`~torchflava.pretrained.checkpoint_layout`; FileNotFoundError
            too for a FLAVA checkpoint without ``classification_config.json`` (not a fine-tuned classifier).
        ValueError: if ``dtype`` is unknown, the config or ``labels.json`` holds a bad value (the file
            named), or the weights do not fit the architecture — before the weights are read.
    """
    if dtype not in INFERENCE_DTYPES:
        raise ValueError(f"dtype must be one of {INFERENCE_DTYPES}, got {dtype!r}")
    config = classifier_config(path)
    layout, kwargs = config.layout, config.kwargs
    backbone = load_pretrained(layout.directory)  # its tokenizer, preprocessing and backbone, checked
    # a tokenizer_config.json stating more than the model's text positions (an edited or foreign one) would
    # make every long text fail in the model: texts are truncated at its positions instead
    backbone.tokenizer.model_max_length = backbone.text_length
    model = flava_model_for_classification(backbone=backbone.model, **kwargs)
    model.classifier.load_state_dict(_head_tensors(layout.weights))  # (keys and shapes checked by classifier_config)
    model.eval()
    if dtype != torch.float32:
        pack_linears(model.requires_grad_(False), dtype)
    return Classifier(
        model=model,
        labels=config.labels,
        tokenizer=backbone.tokenizer,
        image_transform=backbone.image_transform,
        kwargs=kwargs,
        backbone_kwargs=layout.kwargs,
        weights=layout.weights,
        dtype=dtype,
        sentence_pairs=config.sentence_pairs,
    )


def _head_tensors(weights: Path) -> dict[str, Tensor]:
    """The head's tensors (``classifier.*``, the prefix dropped) of the weights file: from a ``.safetensors``
    file those alone are read (the whole file was, its values checked finite, by :func:`load_pretrained`)."""
    if weights.suffix != ".safetensors":
        tensors = load_state_dict(weights)
    else:
        with safe_open(str(weights), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys() if key.startswith("classifier.")}
    return {key.removeprefix("classifier."): v for key, v in tensors.items() if key.startswith("classifier.")}


def _read_sentence_pairs(path: Path, modality: str) -> bool:
    """``classifier_inputs.json``'s ``sentence_pairs`` (false without the file: an export from before it,
    whose texts were single, a pair joined by [SEP]); ValueError naming the file for another content."""
    if not path.exists():
        return False
    inputs = read_json_object(path)
    if set(inputs) != {"sentence_pairs"}:
        raise ValueError(f"classifier: {path}: expected the key sentence_pairs alone, got {sorted(inputs)}")
    try:
        return _check_sentence_pairs(inputs["sentence_pairs"], modality, f"classifier: {path}: sentence_pairs")
    except TypeError as error:
        raise ValueError(first_line(error)) from None


def _read_labels(path: Path, kwargs: dict) -> list[str]:
    """The class names of ``labels.json``; ValueError naming it unless a JSON list naming each class once."""
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as error:  # (nested too deeply)
        raise ValueError(f"classifier: {path} is not a JSON list of class names ({first_line(error)})") from None
    if labels is None:  # (a file that states null names no class: not the same as no labels.json)
        raise ValueError(f"classifier: {path} must be a list of non-empty str (the class names), got null")
    try:
        loss = kwargs.get("loss") or default_loss(kwargs["num_classes"])
        return _check_labels(labels, kwargs["num_classes"], loss, str(path))
    except TypeError as error:
        raise ValueError(f"classifier: {error}") from None


# what the command classifies: an image folder, image-text pairs, labelled images (None: texts)
Inputs = Optional[Union[ImageFolder, ImageTextFolder, LabelledImages]]


def _image_source(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    parquet: Optional[list[str]],
    shards: Optional[list[str]],
    tvfiles: Optional[list[str]],
) -> Optional[LabelledImages]:
    """The parquet files', tar shards' or torchvision's files' images ``--images`` names, listed and their labels read
    (no image; torchvision's files read), as the zero-shot command reads them; None for other inputs. Exits 2 naming
    the option where they are refused, or where ``--json`` names one of their files."""
    if parquet is not None:
        source = parquet_images_argument(parser, parquet, image_key=args.image_key, label_key=args.label_key)
    elif shards is not None:
        source = shard_images_argument(parser, shards)
    elif tvfiles is not None:
        source = torchvision_images_argument(parser, tvfiles)
    else:
        return None
    read = source.files if isinstance(source, ParquetImages) else source.dataset_files
    refuse_overwritten_inputs(parser, {"--json": args.json}, {"--images": read})
    return source


def _listed_inputs(args: argparse.Namespace) -> Optional[Union[ImageFolder, ImageTextFolder]]:
    """The image folder or image-text pairs the arguments name, listed (none read); None for texts."""
    if args.captions is not None:
        return ImageTextFolder(args.images, args.captions, image_key=args.image_key, text_key=args.text_key)
    return None if args.images is None else ImageFolder(args.images)


def _chunks(args: argparse.Namespace, folder: Inputs, skipped: list):
    """(records, images, texts, class ids) chunks of ``--batch-size`` inputs of ``folder`` (an image folder or image-
    text pairs as :func:`_listed_inputs` lists them, parquet files' or tar shards' images), or of the texts: each
    record names its input (an image path relative to ``--images``, a parquet file's row, a shard's sample, a text);
    the class ids are parquet or shard images' own (None for others); unreadable images and malformed captions are
    added to ``skipped``."""
    size = args.batch_size
    if isinstance(folder, ImageTextFolder):  # image-text pairs
        root = Path(args.images)
        for chunk in readable_chunks(folder.__getitem__, range(len(folder)), size, skipped):
            records = [{"image": _relative(folder.image_path(i), root), "text": s.text} for i, s in chunk]
            yield records, [s.image for _, s in chunk], [s.text for _, s in chunk], None
    elif folder is not None:
        labelled = isinstance(folder, LABELLED_READERS)  # (each with its class id, or None)
        for chunk in readable_chunks(folder.__getitem__, range(len(folder)), size, skipped):
            ids = [s.label for _, s in chunk] if labelled else None
            yield [{"image": folder.relative_path(i)} for i, _ in chunk], [s.image for _, s in chunk], None, ids
    else:
        for start in range(0, len(args.text), size):
            texts = args.text[start : start + size]
            # (a sentence pair: a tuple, recorded as its two sentences)
            records = [{"text": t} if isinstance(t, str) else {"text": t[0], "text_pair": t[1]} for t in texts]
            yield records, None, texts, None


def _relative(path: str, root: Path) -> str:
    """``path`` relative to ``root`` where it lies under it, else as it is."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def classify(classifier: Union[Classifier, "CLIPClassifier"], args: argparse.Namespace, folder: Inputs = None) -> dict:
    """The command's result: ``predictions`` (each input's record with its ``top`` classes and scores, or
    ``prediction``: the values of a regression), ``num_inputs``, ``skipped`` and ``skipped_reasons``, and
    ``accuracy``, ``mean_per_class_accuracy`` and ``chance`` (and ``top5_accuracy`` past 5 classes) where every image
    lies in a sub-folder named after its class, else a ``warning`` naming the sub-folders that name no class (where there are any);
    for parquet files' or tar shards' images, where each image's class (its class id's name) is one of the
    classifier's, matched by name as a sub-folder is (:func:`~torchflava.zero_shot.folder_class`), else a
    ``warning`` saying why there is no accuracy. ``folder``: the inputs ``args`` name as :func:`_listed_inputs` lists
    them (listed here when None), or parquet files' or tar shards' images."""
    folder = _listed_inputs(args) if folder is None else folder
    predictions, skipped, ranks, ids = [], [], [], []
    regression = classifier.loss == "mse"
    top_k = min(args.top_k, classifier.num_classes)
    ranked_k = min(max(top_k, TOP5), classifier.num_classes)  # (top-5's 5 kept, whatever --top-k prints)
    for records, images, texts, labels in _chunks(args, folder, skipped):
        ids += labels or []
        logits = classifier.logits(images, texts)
        for record, row, scores in zip(records, logits, activated(classifier.loss, logits)):
            if regression:
                record["prediction"] = scores.tolist()
            else:  # ranked by the logits: a sigmoid gives every answer above ~17 a score of 1.0, tied in any order
                indices = row.topk(ranked_k).indices
                record["top"] = [[classifier.class_name(int(i)), float(scores[i])] for i in indices[:top_k]]
                ranks.append(indices)
            predictions.append(record)
    if not predictions:
        first = f": {skipped[0]}" if skipped else ""  # (finish_command, which lists them all, is not reached)
        option = "--captions" if args.captions is not None else "--images"  # (texts are never unreadable)
        raise ValueError(f"argument {option}: expected a readable input, got none ({len(skipped)} unreadable{first})")
    result = {
        "predictions": predictions,
        "num_inputs": len(predictions),
        "skipped": len(skipped),
        "skipped_reasons": skipped,
    }
    single_label = classifier.loss == "cross_entropy" and classifier.labels is not None
    if single_label and isinstance(folder, LABELLED_READERS):
        labels, warning = _source_labels(folder, ids, classifier.labels)
        if labels is not None:
            result.update(_accuracies(ranks, labels, classifier.num_classes))
        else:
            result["warning"] = warning
    elif single_label and args.captions is None and args.images is not None:
        files = [record["image"] for record in predictions]
        labels = folder_labels(files, classifier.labels)
        if labels is not None:
            result.update(_accuracies(ranks, labels, classifier.num_classes))
        elif warning := unmatched_folders_warning(files, classifier.labels):  # (zero_shot's: which folders, why)
            result["warning"] = warning
    return result


def _accuracies(ranks: list[Tensor], labels: list[int], num_classes: int) -> dict:
    """``accuracy`` (and ``top5_accuracy`` past 5 classes, as zero_shot and linear_probe report them),
    ``mean_per_class_accuracy`` and ``chance`` of the inputs' ranked class indices against their true classes."""
    result = top_k_accuracy(torch.stack(ranks), torch.tensor(labels), num_classes)
    right = [int(r[0]) == t for r, t in zip(ranks, labels)]
    per_class = [[r for r, t in zip(right, labels) if t == c] for c in sorted(set(labels))]
    result["mean_per_class_accuracy"] = sum(sum(c) / len(c) for c in per_class) / len(per_class)
    result["chance"] = 1 / num_classes
    return result


def _source_labels(
    source: LabelledImages, ids: list[Optional[int]], class_names: Sequence[str]
) -> tuple[Optional[list[int]], Optional[str]]:
    """The classifier's class of each image read of parquet files, tar shards or torchvision's files (class ids
    ``ids``): its class id's name (the files' ClassLabel names, the shards' ``classnames.txt``, CIFAR's meta file's)
    matched to ``class_names`` as an image
    sub-folder's name is (:func:`~torchflava.zero_shot.folder_class`: ``apple_pie`` for ``apple pie``); or None and
    the warning saying why there is no accuracy (no labels, no class names, a class the classifier lacks, two
    classes matched to one of the classifier's: ``apple_pie`` and ``apple pie``, or ``Apple pie`` and ``apple pie``,
    to its ``apple pie``)."""
    kind = source_kind(source)
    if any(i is None for i in ids):
        reason = getattr(source, "unlabelled", None) or (
            f"the parquet files have no label column (none of {', '.join(LABEL_COLUMNS)}, nor a ClassLabel one); "
            "--label-key names it"
        )
        return None, f"warning: no accuracy: {reason}"
    if source.classes is None:
        missing = {"tar shards": f"no {CLASSES_FILE}", "parquet files": "no ClassLabel names in their metadata"}.get(
            kind, "their folder above raw/ not named MNIST, FashionMNIST or KMNIST"
        )
        return None, f"warning: no accuracy: the {kind} name no classes ({missing}) to match the classifier's by name"
    matched = {i: folder_class(source.classes[i], class_names) for i in set(ids)}
    unmatched = sorted({source.classes[i] for i, c in matched.items() if c is None})
    if unmatched:
        more = f" ({len(unmatched)} in all)" if len(unmatched) > 10 else ""
        return None, (
            f"warning: no accuracy: the classes {unmatched[:10]}{more} of the {kind} are none of the classifier's "
            f"{len(class_names)} classes (each matched by name, as an image sub-folder is)"
        )
    merged: dict[int, list[str]] = {}  # (two classes of the files, apple_pie and apple pie, matched to one)
    for i in sorted(matched):
        merged.setdefault(matched[i], []).append(source.classes[i])
    both = next((names for names in merged.values() if len(set(names)) > 1), None)
    if both is not None:
        return None, (
            f"warning: no accuracy: the classes {sorted(set(both))} of the {kind} are all the classifier's class "
            f"{class_names[folder_class(both[0], class_names)]!r} (each matched by name, as an image sub-folder is, "
            "underscores and case aside): their images would be scored as one class"
        )
    return [matched[i] for i in ids], None


def _texts(values: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """``--text``'s texts: each value a text, or ``@FILE``: a UTF-8 file's non-blank lines (a BOM dropped)."""
    texts = []
    for value in values:
        if not value.startswith("@"):
            texts.append(value)
            continue
        lines = at_file_lines(parser, "--text", value, "a UTF-8 text file")
        texts += [line for line in lines if line.strip()]
    if not texts or not all(text.strip() for text in texts):
        parser.error(f"argument --text: expected non-empty texts, got {texts!r:.80}")
    return texts


def _sentence_pairs(texts: list[str], parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """``--text``'s texts for a classifier fine-tuned on sentence pairs: each two non-blank sentences
    separated by a tab (a TSV line of two columns); a parser error naming the first that is not."""
    pairs = []
    for text in texts:
        fields = text.split("\t")
        if len(fields) != 2 or not all(field.strip() for field in fields):
            parser.error(
                "argument --text: this classifier was fine-tuned on sentence pairs: expected each text as its two "
                f"sentences separated by a tab, got {text!r:.80} ({len(fields)} field{'s' * (len(fields) != 1)})"
            )
        pairs.append((fields[0], fields[1]))
    return pairs


def _refuse_tabs(texts: list[str], parser: argparse.ArgumentParser) -> None:
    """A parser error for a ``--text`` holding a tab, given to an export from before ``classifier_inputs.json``:
    a pair task's such export was fine-tuned on each pair joined by `` [SEP] `` into one segment, and a pair
    given tab-separated (as for a newer export) would be read as one text without that ``[SEP]``."""
    tabbed = next((text for text in texts if "\t" in text), None)
    if tabbed is not None:
        parser.error(
            f"argument --text: this classifier's export predates {INPUTS_FILE}, so whether it reads sentence pairs "
            "is not recorded: expected a single text without a tab (a tab reads as a space), or a pair as its two "
            f"sentences joined by ' [SEP] ' (as such an export was fine-tuned on pairs), got {tabbed!r:.80}"
        )


class GlueRows(NamedTuple):
    """The rows of a GLUE TSV the command classifies (:func:`_glue_rows`)."""

    indices: list[str]  # the index column's values, else the row numbers from 0
    texts: list  # each row's text, or (first, second) pair for a sentence-pair classifier
    labels: Optional[list[str]]  # the label column's values, None without one
    skipped: list[str]  # why each unusable row (another number of fields, a blank text) is left out, naming its line


def _run_data_config(config: ClassifierConfig, key: str) -> object:
    """The value of ``data.<key>`` in the ``config.yaml`` of the fine-tuning run whose ``model/`` the export is;
    None where there is no such run beside it, or its config states none."""
    import yaml  # (PyYAML comes with the recipes, which wrote the run: loading a classifier needs none)

    recorded = config.layout.directory.parent / "config.yaml"
    try:
        value = (yaml.safe_load(recorded.read_text(encoding="utf-8")) or {}).get("data", {}).get(key)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return None
    return unescaped(value)  # (config.yaml escapes a ${ as OmegaConf reads it, PyYAML reads the escape)


def _label_column(args: argparse.Namespace, config: ClassifierConfig) -> str:
    """The TSV's label column: ``--label-column``, else the fine-tuning run's ``config.yaml``
    ``data.label_column`` (STS-B's ``score``, MRPC's ``Quality``), else ``label``."""
    if args.label_column is not None:
        return args.label_column
    recorded = _run_data_config(config, "label_column")
    return recorded if isinstance(recorded, str) and recorded else "label"


def _text_columns(args: argparse.Namespace, config: ClassifierConfig, parser: argparse.ArgumentParser) -> list[str]:
    """The TSV columns the classifier reads: ``--text-columns``, else the fine-tuning run's ``config.yaml``
    ``data.text_columns`` (the export in ``<run>/model``); a parser error when neither states them or
    their number is not the classifier's (two for sentence pairs)."""
    columns, source = args.text_columns, "argument --text-columns"
    if columns is None:
        recorded = config.layout.directory.parent / "config.yaml"
        columns = _run_data_config(config, "text_columns")  # (no run beside it: named below)
        if not (isinstance(columns, list) and all(isinstance(c, str) and c for c in columns)):
            parser.error(
                f"argument --text-columns: expected the TSV columns the classifier was fine-tuned on, got none (its "
                f"export does not record them and {recorded} states no data.text_columns)"
            )
        source = f"argument --text-columns ({recorded}'s data.text_columns)"
    if (config.layout.directory / INPUTS_FILE).exists():
        counts = (2,) if config.sentence_pairs else (1,)
    else:  # (an export from before the file: a pair task's two columns are joined by [SEP], as it trained)
        counts = (1, 2)
    if len(columns) not in counts:
        kind = {(2,): "two (it was fine-tuned on sentence pairs)", (1,): "one (it reads single texts)"}.get(
            counts, "one or two"
        )
        parser.error(f"{source}: expected {kind} columns, got {columns}")
    return list(columns)


def _glue_table(
    args: argparse.Namespace, text_columns: list[str], names: Optional[list[str]], config: ClassifierConfig
) -> GlueTsv:
    """``--tsv`` read by its header row; or, where that fails and the fine-tuning run's ``config.yaml`` names the
    columns of a file without one (``data.columns``: CoLA's dev.tsv), by those, as the run read its files, if its
    first row has that many fields.

    Raises:
        OSError, TypeError, ValueError: as :class:`~torchflava.data.finetuning.GlueTsv` reading the header row.
    """
    label_column = _label_column(args, config)

    def read(columns: Optional[list[str]]) -> GlueTsv:
        return GlueTsv(
            args.tsv,
            text_columns,
            label_column,
            names,
            columns=columns,
            label_required=False,
            index_column=GLUE_INDEX_COLUMN,
        )

    try:
        return read(None)
    except ValueError as error:
        recorded = _run_data_config(config, "columns")
        try:
            with open(args.tsv, encoding="utf-8-sig", newline="") as file:
                first = next((line for line in file if line.strip()), "")
        except (OSError, UnicodeDecodeError):  # (not UTF-8 text: named by the first error)
            first = ""
        # a first line of another number of fields is a header: the file is named by its error
        if not isinstance(recorded, list) or len(first.rstrip("\r\n").split("\t")) != len(recorded):
            raise error
        try:
            return read(recorded)
        except (ValueError, TypeError):
            raise error from None


def _glue_rows(
    args: argparse.Namespace, columns: list[str], parser: argparse.ArgumentParser, config: ClassifierConfig
) -> GlueRows:
    """The rows of ``--tsv``, read by :class:`~torchflava.data.finetuning.GlueTsv` as fine-tuning read its
    files (a header row, or the run's ``data.columns`` for a file without one; the label column and ``index``
    read where the file has them): a parser error
    naming the file for one that does not read, a missing column, a label the classifier cannot predict (not
    a class name, not a number for a regression), or no usable row. A row of another number of fields or a
    blank text is left out and named, as fine-tuning skips it (QQP's train.tsv has a few). Two ``columns`` of
    a classifier that reads no sentence pairs (an export from before ``classifier_inputs.json``) are joined
    by `` [SEP] ``, as such an export was fine-tuned on them."""
    regression = (config.kwargs.get("loss") or default_loss(config.kwargs["num_classes"])) == "mse"
    names = None if regression else config.labels or [str(i) for i in range(config.kwargs["num_classes"])]
    try:
        table = _glue_table(args, columns, names, config)
    except OSError as error:
        parser.error(f"argument --tsv: expected a readable UTF-8 TSV file, got {args.tsv!r} ({first_line(error)})")
    except (ValueError, TypeError) as error:
        parser.error(f"argument --tsv: {first_line(error)}")
    indices, texts, labels, skipped = [], [], [], []
    for row in range(len(table)):
        try:
            sample = table[row]
        except BadSample as error:  # skipped, as fine-tuning skips it (its validation names it in the report)
            skipped.append(error.reason)
            continue
        pair = isinstance(sample.text, tuple)
        indices.append(table.indices[row])
        texts.append(" [SEP] ".join(sample.text) if pair and not config.sentence_pairs else sample.text)
        labels.append(sample.label if regression or not table.labelled else names[sample.label])
    if not texts:  # (the tokenizer's refusal of a blank text would come after the weights)
        parser.error(f"argument --tsv: expected a usable row, got none ({len(skipped)} unusable: {skipped[0]})")
    return GlueRows(indices, texts, labels if table.labelled else None, skipped)


def classify_tsv(classifier: Classifier, rows: GlueRows, out: Path, batch_size: int) -> dict:
    """Classify ``rows`` and write GLUE's submission file ``out`` atomically: ``index<TAB>prediction``
    under that header, each prediction the top class's name (its number without names) or a regression's
    value (values joined by commas for several). Returns ``num_inputs``, ``out``, ``skipped`` and
    ``skipped_reasons`` (the unusable rows left out, named), and with labels the metrics the fine-tuning
    recipe's report gives of the same rows (:func:`~torchflava.evaluation.metrics.classification_metrics`:
    ``accuracy``, ``matthews`` (CoLA's) and for two classes ``f1`` (MRPC's, QQP's: of class 1); for a
    regression ``pearson`` and ``spearman``, None where undefined: constant predictions or labels)."""
    regression = classifier.model.loss == "mse"
    logits = torch.cat(
        [classifier.logits(texts=rows.texts[i : i + batch_size]) for i in range(0, len(rows.texts), batch_size)]
    )
    if regression:
        predictions = [",".join(f"{v:.6g}" for v in row.tolist()) for row in logits]
    else:  # ranked by the logits, as classify ranks them (a sigmoid rounds every logit above ~17 to 1.0)
        predicted = logits.argmax(dim=1)
        predictions = [classifier.class_name(int(i)) for i in predicted]
    lines = ["index\tprediction\n"] + [f"{i}\t{p}\n" for i, p in zip(rows.indices, predictions)]
    atomic_write(out, lambda tmp: Path(tmp).write_text("".join(lines), encoding="utf-8"))
    result = {"num_inputs": len(predictions), "out": str(out), "skipped": len(rows.skipped)}
    result["skipped_reasons"] = rows.skipped
    if rows.labels is not None and regression:
        truth, values = torch.tensor([float(v) for v in rows.labels], dtype=torch.float64), logits[:, 0].double()
        # undefined (nan) where the predictions or the labels are constant: None, which --json writes as null
        correlations = (pearson(values, truth), spearman(values, truth))
        result["pearson"], result["spearman"] = (None if math.isnan(value) else value for value in correlations)
    elif rows.labels is not None:
        ids = {classifier.class_name(i): i for i in range(classifier.num_classes)}
        truth = torch.tensor([ids[label] for label in rows.labels])
        result.update(classification_metrics(predicted, truth, classifier.num_classes))
    return result


def _main_tsv(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """``--tsv``: read and check the TSV and the export's configs, then load the classifier, classify the
    rows, write ``--out`` and print a summary."""
    config = classifier_config(args.checkpoint)
    if config.modality != "text":
        parser.error(
            f"argument --checkpoint: --tsv reads texts for a text classifier, got a classifier of modality "
            f"{config.modality!r} ({config.layout.directory})"
        )
    columns = _text_columns(args, config, parser)
    rows = _glue_rows(args, columns, parser, config)
    classifier = load_classifier(args.checkpoint, dtype=INFERENCE_DTYPE_NAMES[args.dtype])
    result = classify_tsv(classifier, rows, args.out, args.batch_size)
    summary = f"{result['num_inputs']} rows classified into {args.out}"
    if result["skipped"]:  # (a submission file lacking them is refused by GLUE's server)
        summary += f" ({result['skipped']} unusable rows skipped: not in it)"
    if "accuracy" in result:
        summary += f"; accuracy {percent(result['accuracy'])}, Matthews {correlation(result['matthews'])}"
        summary += f", F1 {percent(result['f1'])}" if "f1" in result else ""
    if "pearson" in result:
        summary += f"; Pearson {correlation(result['pearson'])}, Spearman {correlation(result['spearman'])}"
    print(summary)
    return finish_command(result, result["skipped_reasons"], args.json)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = command_parser("torchflava.classify", __doc__)
    parser.add_argument(
        "--checkpoint", required=True, help="fine-tuning run or its model/ export directory (or a file:// URL of one)"
    )
    parser.add_argument(
        "--images",
        nargs="+",
        help="image folder (image classifiers; with --captions: the pairs' images), or, for image classifiers, parquet "
        "files as the Hugging Face Hub gives them (data/validation-*.parquet, a folder of them, or several files) or "
        "webdataset tar shards as CLIP_benchmark gives them (wds_imagenet1k/test, a glob or brace pattern of .tar "
        "files, or the dataset's root), or torchvision's CIFAR-10/100 or MNIST-family files (cifar-10-batches-py: "
        "its test split; or split files, test_batch): the accuracy where their labels' class names are the "
        "classifier's",
    )
    parser.add_argument(
        "--text",
        nargs="+",
        help="texts to classify, or @FILE: a UTF-8 file of one text a line (a sentence-pair classifier: each its "
        "two sentences separated by a tab)",
    )
    parser.add_argument(
        "--captions", help="image-text pairs (multimodal classifiers): any captions file the zero-shot command reads"
    )
    parser.add_argument("--tsv", help="a GLUE TSV to classify (text classifiers): writes GLUE's submission file --out")
    parser.add_argument("--out", type=output_file, help="--tsv's predictions: index<TAB>prediction")
    parser.add_argument(
        "--text-columns", nargs="+", help="--tsv's text column(s) [the run's config.yaml data.text_columns]"
    )
    parser.add_argument(
        "--label-column",
        help="--tsv's label column, for the accuracy [the run's config.yaml data.label_column, else label]",
    )
    parser.add_argument(
        "--image-key",
        help="JSON key or CSV/TSV column of the image paths (--captions), or parquet --images' image column",
    )
    parser.add_argument(
        "--label-key", help="parquet --images' column of class ids, or of class names (default: their ClassLabel one)"
    )
    parser.add_argument("--text-key", help="JSON key or CSV/TSV column of the texts (--captions)")
    parser.add_argument("--top-k", type=positive_int, default=5, help="classes listed per input [5]")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    add_dtype_argument(parser)
    parser.add_argument("--json", type=output_file, help="also write the result here")
    parser.add_argument(
        "--vqa-submission",
        type=output_file,
        help="with --captions of python -m torchflava.data.vqa's questions: VQA's results file [{question_id, answer}]",
    )
    args = parser.parse_args(argv)
    inputs = {"--tsv": [args.tsv] if args.tsv is not None else []}
    inputs["--captions"] = [args.captions] if args.captions is not None else []
    inputs["--text"] = [t for t in args.text or () if t.startswith("@")]
    outputs = {"--out": args.out, "--json": args.json, "--vqa-submission": args.vqa_submission}
    refuse_overwritten_inputs(parser, outputs, inputs)
    if args.vqa_submission is not None and args.captions is None:
        parser.error("argument --vqa-submission: expected --captions too (the questions file to answer)")
    # every argument checked, and the classifier's configs read, before its weights are
    if (args.tsv is None) != (args.out is None):
        parser.error("arguments --tsv and --out: expected both (the TSV to classify and its predictions' file)")
    if args.tsv is None and (args.text_columns is not None or args.label_column is not None):
        parser.error("arguments --text-columns and --label-column: for --tsv only")
    if args.tsv is not None and (args.text is not None or args.images is not None or args.captions is not None):
        parser.error("argument --tsv: not with --text, --images or --captions")
    if args.tsv is not None:
        return _main_tsv(args, parser)
    # --images' parquet files (a shell expands data/validation-*.parquet into its files) or tar shards (CLIP_benchmark's
    # wds_imagenet1k/test), args.images then their values; else one image folder
    parquet = shards = tvfiles = None
    if args.images is not None:
        folder, parquet, shards, tvfiles = image_values(parser, args.images)
        args.images = folder if folder is not None else parquet or shards or tvfiles
    if (parquet is not None or shards is not None or tvfiles is not None) and args.captions is not None:
        kind = "parquet" if parquet is not None else "tar shard" if shards is not None else "torchvision's"
        parser.error(f"argument --captions: not with {kind} --images (image classifiers: the images alone)")
    if parquet is None and args.label_key is not None:
        parser.error("argument --label-key: for parquet --images only")
    if args.text is not None and (args.images is not None or args.captions is not None):
        parser.error("argument --text: not with --images or --captions (image-text pairs come from --captions)")
    if args.text is None and args.images is None:
        parser.error("arguments --images or --text: one is required (the inputs to classify)")
    if args.captions is None and (args.text_key or (args.image_key and parquet is None)):
        parser.error("arguments --image-key and --text-key: for --captions only (--image-key: or parquet --images)")
    if isinstance(args.images, str) and not Path(args.images).is_dir():
        parser.error(f"argument --images: expected an image folder, got {args.images!r} (not a directory)")
    if args.captions is not None and not Path(args.captions).is_file():
        parser.error(f"argument --captions: expected a captions file, got {args.captions!r} (not a file)")
    if is_clip_classifier(args.checkpoint):  # (an image classifier: parquet files or shards read, labels checked)
        return _main_clip(args, parser, _image_source(parser, args, parquet, shards, tvfiles))
    args.text = None if args.text is None else _texts(args.text, parser)
    config = classifier_config(args.checkpoint)
    if args.text is not None and config.sentence_pairs:
        args.text = _sentence_pairs(args.text, parser)
    elif args.text is not None and config.modality != "image" and not (config.layout.directory / INPUTS_FILE).exists():
        _refuse_tabs(args.text, parser)
    reads = {"image": "--images DIR", "text": "--text", "multimodal": "--images DIR --captions FILE"}
    given = "multimodal" if args.captions is not None else ("image" if args.images is not None else "text")
    if given != config.modality:  # (before parquet files or shards are read: a text classifier reads none)
        got = "parquet --images" if parquet is not None else "tar shard --images" if shards is not None else None
        got = "torchvision's --images" if tvfiles is not None else got
        parser.error(
            f"argument --checkpoint: this classifier (modality {config.modality!r}) reads {reads[config.modality]}, "
            f"got {got or reads[given]}"
        )
    source = _image_source(parser, args, parquet, shards, tvfiles)  # (their labels read and checked, no image)
    try:  # the inputs listed, not read, before the weights are loaded
        folder = _listed_inputs(args) if source is None else source
        keys = {"image_key": args.image_key or "image", "text_key": args.text_key or "caption"}
        questions = None if args.vqa_submission is None else submission_questions(args.captions, **keys)
    except ValueError as error:
        option = "--captions" if args.captions is not None else "--images"
        parser.error(f"argument {option}: {first_line(error)}")
    classifier = load_classifier(args.checkpoint, dtype=INFERENCE_DTYPE_NAMES[args.dtype])
    result = classify(classifier, args, folder)
    if questions is not None:
        results, unanswered = submission(result["predictions"], questions, args.images)
        write_json(args.vqa_submission, results)
        if unanswered:  # (the evaluation server expects every question of the split)
            print(
                f"warning: --vqa-submission: {len(unanswered)} question(s) unanswered (their images unreadable), e.g. "
                f"{unanswered[:3]}: the evaluation server refuses a results file lacking any question of the split",
                file=sys.stderr,
            )
    return _shown(result, args)


def _shown(result: dict, args: argparse.Namespace) -> dict:
    """Print each input's classes and the summary line, write ``--json``: the command's end."""
    for record in result["predictions"]:
        # (a text holding a tab or a line break would break the columns: such a text is shown quoted)
        shown_inputs = [record[key] for key in ("image", "text", "text_pair") if key in record]
        name = "\t".join(repr(text) if any(c in text for c in "\t\r\n") else text for text in shown_inputs)
        if "prediction" in record:
            shown = ", ".join(f"{value:.4g}" for value in record["prediction"])
        else:
            shown = ", ".join(f"{label} {score:.3f}" for label, score in record["top"])
        print(f"{name}\t{shown}")
    summary = f"{result['num_inputs']} inputs, {result['skipped']} unreadable skipped"
    print(summary + accuracy_summary(result))
    if "warning" in result:
        print(result["warning"], file=sys.stderr)
    return finish_command(result, result["skipped_reasons"], args.json)


# ------------------------------------------------------------------------ fine-tuned CLIP image classifiers
# examples/clip/finetune.py exports CLIP's image tower with a linear head over its normalised features
# (:class:`~torchflava.modules.heads.NormalizedLinearClassifier`): the weights, the clip_model arguments the tower
# is built with, the class names and the image preprocessing. It is not a CLIP checkpoint (no text tower).
# Its config is CLIP_CLASSIFIER_CONFIG ({"clip_model": {...}, "labels": [...]}: torchflava.pretrained, which refuses
# such an export as a checkpoint, names it), its weights:
CLIP_CLASSIFIER_WEIGHTS = "clip_classifier.safetensors"


class CLIPImageTower(nn.Module):
    """CLIP's image tower and projection alone: (B, C, H, W) pixels -> (B, P) unnormalised features, computed by
    :meth:`CLIPModel.encode_image` itself (the text tower is left behind).

    Args:
        clip (CLIPModel): the model whose ``image_encoder`` and ``image_projection`` are taken (shared, not copied).

    Raises:
        TypeError: if ``clip`` is not a CLIPModel.
    """

    def __init__(self, clip: CLIPModel) -> None:
        if not isinstance(clip, CLIPModel):
            raise TypeError(f"clip must be a CLIPModel, got {type(clip).__name__}")
        super().__init__()
        self.image_encoder, self.image_projection = clip.image_encoder, clip.image_projection

    def forward(self, image: Tensor) -> Tensor:
        """(B, P) features of (B, C, H, W) float pixels (CLIP's last-layer CLS, projected)."""
        return CLIPModel.encode_image(self, image, normalize=False)  # (one piece of code: the tower's own)


def clip_image_classifier(clip_kwargs: dict, num_classes: int) -> NormalizedLinearClassifier:
    """A CLIP image classifier of the architecture ``clip_kwargs`` (:func:`~torchflava.models.clip_model`'s
    arguments) with a ``num_classes`` head, initialised (the text tower is built, then dropped)."""
    tower = CLIPImageTower(clip_model(**clip_kwargs))
    return NormalizedLinearClassifier(tower, nn.Linear(tower.image_projection.out_features, num_classes))


class CLIPClassifier(NamedTuple):
    """A loaded fine-tuned CLIP image classifier.

    Attributes:
        model (NormalizedLinearClassifier): the model, in eval mode: (B, C, H, W) pixels -> (B, num_classes) logits.
        labels (list[str]): the class names in output order.
        image_transform (ImageTransform): PIL image -> pixels, as in its training.
        clip_kwargs (dict): the :func:`~torchflava.models.clip_model` arguments of its image tower.
    """

    model: NormalizedLinearClassifier
    labels: list[str]
    image_transform: ImageTransform
    clip_kwargs: dict
    dtype: torch.dtype = torch.float32

    loss = "cross_entropy"  # (what :func:`classify` reads of a classifier: one class per image)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def class_name(self, index: int) -> str:
        return self.labels[index]

    def scores(self, images: Iterable, texts: None = None) -> Tensor:
        """(N, num_classes) fp32 class probabilities (softmax of :meth:`logits`) of PIL ``images``; errors as there."""
        return activated(self.loss, self.logits(images, texts))

    @torch.no_grad()
    def logits(self, images: Iterable, texts: None = None) -> Tensor:
        """(N, num_classes) fp32 logits of PIL ``images``, before :meth:`scores`' softmax.

        Raises:
            TypeError: if ``images`` are not an ordered iterable of PIL images.
            ValueError: if none is given, or texts are (an image classifier reads none).
        """
        if texts is not None:
            raise ValueError("texts: expected none (a CLIP image classifier reads images only)")
        images = _inputs("images", images, Image.Image, "PIL images") or []
        if not images:
            raise ValueError("images: expected at least one input, got none")
        pixels = torch.stack([self.image_transform(image) for image in images])
        device = next(self.model.parameters()).device  # (a model moved to an accelerator: its inputs follow)
        with inference_precision(self.model, self.dtype), eval_mode(self.model):
            return self.model(pixels.to(device)).float().cpu()


def export_clip_classifier(
    model: nn.Module, directory: Path, *, clip_kwargs: dict, labels: Sequence[str], image_transform: ImageTransform
) -> None:
    """Write a fine-tuned CLIP image classifier into ``directory`` (collective: every rank calls it, rank 0 writes;
    written whole with :func:`~torchflava.utils.checkpoint.staged_directory` by the caller): the weights as
    safetensors, the tower's ``clip_model`` arguments with the class names, and the preprocessing.

    Raises:
        ValueError: if ``labels`` do not name the head's outputs one to one (before anything is gathered).
    """
    outputs = model.head.out_features if isinstance(model, NormalizedLinearClassifier) else None
    if not isinstance(labels, (list, tuple)) or len(set(labels)) != len(labels) or len(labels) != outputs:
        raise ValueError(f"labels: expected {outputs} distinct class names (the head's outputs), got {labels!r:.80}")
    export_model(model, directory / CLIP_CLASSIFIER_WEIGHTS)
    if get_rank() == 0:
        write_json(directory / CLIP_CLASSIFIER_CONFIG, {"clip_model": dict(clip_kwargs), "labels": list(labels)})
        image_transform.save(directory)
    barrier()


def clip_classifier_directory(path: Union[str, Path]) -> Optional[Path]:
    """The export directory of a fine-tuned CLIP image classifier ``path`` names (the export, or the run directory
    holding it in ``model/``, or a ``file://`` URL of either); None where it names none."""
    found = _clip_classifier_source(path)
    return None if found is None or found[1] is not None else found[0]


def _clip_classifier_source(path: Union[str, Path]) -> Optional[tuple[Path, Optional[Path]]]:
    """Where a fine-tuned CLIP image classifier ``path`` names is read from, found by its files' names alone
    (nothing hashed): (the directory holding its config, None) for an export or a run holding one in ``model/``;
    (the run's record of its start, ``path`` as a local path) for a run without an export or one of its
    ``checkpoints/step_<N>``, whose training checkpoint :func:`training_checkpoint` locates; None for anything else."""
    try:
        directory = Path(local_directory(path))
    except (ValueError, FileNotFoundError):  # another URL, or a file:// URL of nothing
        return None
    for candidate in (directory, export_directory(directory)):  # (model/, or the export a kill left set aside)
        if (candidate / CLIP_CLASSIFIER_CONFIG).is_file():
            return candidate, None
    record = clip_classifier_record(directory)  # a run, or a checkpoint of one (step_<N>, maybe unpadded)
    return None if record is None else (record, directory)


def is_clip_classifier(path: Union[str, Path]) -> bool:
    """Whether ``path`` names a fine-tuned CLIP image classifier: an export, a run (a killed one: its newest intact
    checkpoint) or one of its training checkpoints (:func:`load_clip_classifier`)."""
    return _clip_classifier_source(path) is not None


def load_clip_classifier(path: Union[str, Path], *, dtype: torch.dtype = torch.float32) -> CLIPClassifier:
    """Build a fine-tuned CLIP image classifier back from its export (:func:`export_clip_classifier`) or the run
    directory holding it in ``model/``; or, as it was at a step of its training, from a run's training checkpoint
    (``<run>/checkpoints/step_<N>``, or a run killed before its export: its newest intact one) with the architecture,
    class names and preprocessing the run recorded at its start (``<run>/zero_shot``).

    Args:
        path (Union[str, Path]): the export, the run directory, a training checkpoint, or a ``file://`` URL of one.
        dtype (torch.dtype): ``torch.float32``, or ``torch.bfloat16`` for inference under bf16 autocast with the
            linear weights cast and packed once (see :func:`~torchflava.pretrained.load_pretrained`).

    Raises:
        FileNotFoundError: if none holds :data:`CLIP_CLASSIFIER_CONFIG`.
        CheckpointIntegrityError: (a ValueError) if a training checkpoint is incomplete or damaged.
        ValueError: if ``dtype`` is unknown, the config holds no ``clip_model`` arguments or class names (the file
            named), or the weights do not fit the architecture.
    """
    if dtype not in INFERENCE_DTYPES:
        raise ValueError(f"dtype must be one of {INFERENCE_DTYPES}, got {dtype!r}")
    source = _clip_classifier_source(path)
    if source is None:
        raise FileNotFoundError(
            f"path: expected a CLIP classifier export holding {CLIP_CLASSIFIER_CONFIG}, or a CLIP fine-tuning run or "
            f"training checkpoint, got {path}"
        )
    directory, named = source
    checkpoint = None if named is None else training_checkpoint(named)  # (a run's: its newest intact one, said)
    if named is not None and checkpoint is None:
        raise FileNotFoundError(f"path: {named} is a CLIP fine-tuning run without an export or a training checkpoint")
    if not (directory / PREPROCESSOR_CONFIG).is_file():  # (every export writes it: the preprocessing it trained with)
        raise FileNotFoundError(f"{directory}: expected its preprocessing, {PREPROCESSOR_CONFIG}, which it lacks")
    config_file, weights = directory / CLIP_CLASSIFIER_CONFIG, directory / CLIP_CLASSIFIER_WEIGHTS
    kwargs, labels = _clip_classifier_config(config_file)
    try:  # the architecture checked, and the weights' keys and shapes against it, first
        with meta_device():
            kwargs = clip_model_arguments(**kwargs)
            expected = clip_image_classifier(kwargs, len(labels)).state_dict()
    except (TypeError, ValueError) as error:  # (an unknown or misspelt argument, a value out of its range)
        raise ValueError(f"{config_file}: 'clip_model': {first_line(error)}") from None
    if checkpoint is not None:  # (verified as a resume verifies it, once)
        weights, stored = checkpoint, read_model_weights(checkpoint, verified=found_intact(named, checkpoint))
    else:
        stored = peek_state_dict(weights)
    _refuse_misfit(weights, stored, expected, f"The classifier is built from {config_file}.")
    transform = checkpoint_image_transform(directory, image_size=kwargs["image_size"])
    model = clip_image_classifier(kwargs, len(labels))
    model.load_state_dict(load_state_dict(weights) if checkpoint is None else stored)
    model.eval()  # (before packing: packed linears cannot be trained)
    if dtype != torch.float32:
        pack_linears(model.requires_grad_(False), dtype)
    return CLIPClassifier(model, labels, transform, kwargs, dtype)


def _clip_classifier_config(config_file: Path) -> tuple[dict, list[str]]:
    """The ``clip_model`` arguments and the class names a CLIP classifier's config states; ValueError naming the
    file where they are not an object and distinct non-empty names (the arguments are checked by the builder)."""
    config = read_json_object(config_file)
    kwargs, labels = config.get("clip_model"), config.get("labels")
    if not isinstance(kwargs, dict) or not isinstance(labels, list) or not labels:
        raise ValueError(f"{config_file}: expected 'clip_model' (an object) and 'labels' (a list of names)")
    if not all(isinstance(label, str) and label for label in labels) or len(set(labels)) != len(labels):
        raise ValueError(f"{config_file}: 'labels' must be distinct non-empty class names, got {labels!r:.120}")
    return kwargs, labels


def _main_clip(args: argparse.Namespace, parser: argparse.ArgumentParser, source: Optional[LabelledImages]) -> dict:
    """The command for a fine-tuned CLIP image classifier: ``--images`` only (``source``: parquet files', tar
    shards' or torchvision's files' images it names, read, else None)."""
    if args.text is not None or args.captions is not None:  # (--images DIR or --text: checked by main)
        given = "--text" if args.text is not None else "--images DIR --captions FILE"
        parser.error(f"argument --checkpoint: this CLIP image classifier reads --images DIR, got {given}")
    try:  # the images listed, not read, before the weights are loaded
        folder = _listed_inputs(args) if source is None else source
    except ValueError as error:
        parser.error(f"argument --images: {first_line(error)}")
    classifier = load_clip_classifier(args.checkpoint, dtype=INFERENCE_DTYPE_NAMES[args.dtype])
    return _shown(classify(classifier, args, folder), args)


if __name__ == "__main__":
    keep_freed_memory()  # a command's own process: freed activations stay for the next batch (utils.memory)
    run_command(main)
