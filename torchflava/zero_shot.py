"""Zero-shot image classification and image-text retrieval with a FLAVA or CLIP checkpoint.

    python -m torchflava.zero_shot --checkpoint runs/tiny --images DIR --classes "red circle,blue square"
    python -m torchflava.zero_shot --checkpoint runs/tiny/checkpoints/step_2000 --images DIR --classes @classes.txt
    python -m torchflava.zero_shot --checkpoint /models/flava-full --images DIR --captions captions.jsonl
    python -m torchflava.zero_shot --checkpoint /models/flava-full --images coco --captions dataset_coco.json --split test
    python -m torchflava.zero_shot --checkpoint /models/clip-vit-base-patch32 --images DIR --classes "cat,dog"
    python -m torchflava.zero_shot --checkpoint file:///models/flava-full --images DIR --classes @classes.txt
    python -m torchflava.zero_shot --checkpoint DIR --images imagenet/val --classes @imagenet_classes.txt --folder-order
    python -m torchflava.zero_shot --checkpoint DIR --images imagenet/val --classes @LOC_synset_mapping.txt
    python -m torchflava.zero_shot --checkpoint DIR --images ILSVRC/Data/CLS-LOC/val --labels LOC_val_solution.csv --classes @LOC_synset_mapping.txt
    python -m torchflava.zero_shot --checkpoint ~/.cache/clip/ViT-B-32.pt --tokenizer bpe_simple_vocab_16e6.txt.gz --images DIR --classes "cat,dog"
    python -m torchflava.zero_shot --checkpoint DIR --images food101/data/validation-*.parquet
    python -m torchflava.zero_shot --checkpoint DIR --images wds_imagenet1k
    python -m torchflava.zero_shot --checkpoint DIR --images data/cifar-10-batches-py

Images go through the checkpoint's own preprocessing and text through its own tokenizer and its
settings (``preprocessor_config.json``, ``tokenizer_config.json``; see :mod:`torchflava.pretrained`),
so a Hugging Face ``facebook/flava-full`` or ``CLIPModel`` directory gives the numbers its
transformers users get. A CLIP weights file alone (OpenAI's ``~/.cache/clip/ViT-B-32.pt``, an open_clip
``.bin`` or ``.safetensors``) takes its tokenizer from ``--tokenizer`` (CLIP's merges file or a tokenizer
directory), OpenAI's preprocessing, and ``--activation`` where the file does not say which. An open_clip Hub
directory without tokenizer files (timm's CLIP repositories) takes its tokenizer from ``--tokenizer`` too, its
preprocessing its own.

Classification: every image under ``--images`` gets the class whose prompts' mean text embedding
is closest, and the probabilities softmax(exp(logit_scale) x cosine similarity) of its ``--top-k``
(5) most probable classes go to ``--json`` (``top``: [class, probability] pairs, most probable first;
every class's to ``--all-probabilities FILE.npy``, an (images, classes) float32 array, so that
ImageNet's 50,000 x 1000 are not Python floats); when the images sit in sub-folders named after the
classes (case, surrounding spaces, underscores for spaces and Unicode normalisation aside, where that
names one class), the accuracy is
reported too, else a warning says which folders match no class; with ``--folder-order`` the i-th class
is the i-th sub-folder in sorted order instead (torchvision's ``ImageFolder`` numbering: ImageNet's
synset folders, with the class names listed in that order; sub-folders named ``0`` to ``N-1``, as ImageNetV2's
are, in number order: each folder's number is its class id). A flat folder, as ImageNet's validation set
is distributed (``ILSVRC2012_val_00000001.JPEG``...), takes its labels from ``--labels``: Kaggle's
``LOC_val_solution.csv``, or ``FILE<TAB>CLASS`` / ``FILE,CLASS`` lines, each class written as its
sub-folder would be named; images it names that are absent are skipped and counted as unreadable ones,
images it does not name left out, both with a warning. Parquet files as the Hugging Face Hub serves a dataset
(``huggingface-cli download --repo-type dataset food101 --local-dir food101`` gives
``food101/data/validation-00000-of-00003.parquet``...; a glob, a folder of them or several files) hold the images
and their class ids, the class names in their ``ClassLabel`` metadata unless ``--classes`` names them, in id order
(``--image-key``/``--label-key`` name other columns; needs pyarrow: ``pip install 'torchflava[parquet]'``).
Webdataset tar shards as LAION's CLIP_benchmark serves its datasets (``huggingface-cli download --repo-type dataset
clip-benchmark/wds_imagenet1k --local-dir wds_imagenet1k``: ``wds_imagenet1k/test/0.tar``...) hold the images and
their ``.cls`` class ids: ``--images`` takes the split folder, a glob or brace pattern of shards (``test/{0..3}.tar``),
the shards, or the dataset's root (its ``test/`` split, said on stderr); the classes are the root's
``classnames.txt`` and the templates its ``zeroshot_classification_templates.txt`` unless ``--classes`` /
``--template`` give others (see :class:`~torchflava.data.wds.WdsImages`). A retrieval dataset's shards
(``wds_flickr30k``, ``wds_mscoco_captions``: the root's ``dataset_type.txt`` says ``retrieval``) hold each image with
a ``.txt`` of its captions, one a line (COCO's five): without ``--classes`` they are evaluated for retrieval
(:class:`~torchflava.data.wds.WdsCaptions`). The files torchvision's ``CIFAR10``, ``CIFAR100``, ``MNIST``,
``FashionMNIST`` and ``KMNIST`` download (``root/cifar-10-batches-py``, ``root/cifar-100-python``,
``root/MNIST/raw``) hold the images and their class ids: ``--images`` takes the dataset's folder (its test split,
said on stderr; MNIST's folder or its ``raw/``; torchvision's root holding one of them), or split files
(``test_batch``, ``data_batch_*``, ``cifar-100-python/test``, ``t10k-images-idx3-ubyte``, ``.gz`` or not); the
classes are CIFAR's meta file's and torchvision's names of the MNIST family, known by the folder above ``raw/``
(MNIST's the digits ``0`` to ``9``; under another folder name ``--classes`` names them), unless ``--classes`` gives
others. Their pickles are read without running anything they name
(:class:`~torchflava.data.torchvision_files.TorchvisionImages`).
``--classes @FILE`` reads the class names from a
UTF-8 file, one a line (names may hold commas; blank lines are ignored); a line may name the class's
sub-folder first, every line alike: ``FOLDER<TAB>NAME``, or ImageNet's names files
(``LOC_synset_mapping.txt``: ``n01440764 tench, Tinca tinca``), the prompts then holding the names and the
folders giving the labels (two classes may then share a name, ImageNet's two ``crane``: they share its
prompts, a warning says so, and an image of either counts half right when they rank first). ``--template``
(repeatable) gives the prompt templates, ``--template @FILE`` a UTF-8 file of them, one a line. Retrieval:
``--captions`` pairs images with captions (an image may be listed with several): ``.jsonl``, Karpathy's
split ``.json`` (``--split test`` for the COCO 5k / Flickr30k 1k test sets; without ``--split`` every split
is evaluated, with a warning), COCO's captions ``.json``, BLIP's caption list ``.json``, an
open_clip-style ``.csv``/``.tsv`` (``--image-key``/``--text-key`` name its columns), see
``ImageTextFolder``; without ``--images`` the file's image paths must be absolute. A ``.parquet`` file (or a glob
of them) holds the images with their captions, a caption or a list of them a row (COCO's five), without
``--images`` (``--split test`` keeps the rows of its ``split`` column's test split). Recall@1/5/10 are
reported in both directions, each beside the recall of a random ranking in that direction. Unreadable images
or empty captions are skipped and counted.
"""

import argparse
import collections
import math
import os
from pathlib import Path
import re
import shutil
import sys
import tempfile
from typing import Callable, Optional, Sequence, Union
import unicodedata

from numpy.lib import format as npy_format
from PIL import Image
import torch
from torch import Tensor
import torch.nn.functional as F

from torchflava.data.image_labels import LabelledImageFolder
from torchflava.data.parquet import LABEL_COLUMNS, ParquetError, ParquetImages, is_parquet, parquet_hint
from torchflava.data.readers import IMAGE_EXTENSIONS, ImageFolder, ImageTextFolder
from torchflava.data.samples import ArgumentRefusal, BadSample, readable_chunks
from torchflava.data.torchvision_files import TorchvisionImages, is_torchvision_files
from torchflava.data.wds import (
    CLASSES_FILE,
    TEMPLATES_FILE,
    WdsCaptions,
    WdsError,
    WdsImages,
    is_tar_shards,
    shards_dataset_type,
)
from torchflava.evaluation import percent, retrieval_recall, zero_shot_classifier
from torchflava.evaluation.metrics import TOP5, accuracy_summary, reported_ks
from torchflava.evaluation.zero_shot import (
    check_class_prompts,
    check_finite,
    class_credit,
    distinct_rows,
    per_class_mean,
)
from torchflava.pretrained import (
    Pretrained,
    add_checkpoint_argument,
    add_dtype_argument,
    add_lone_file_arguments,
    command_inputs,
    command_pretrained,
)
from torchflava.utils.checkpoint import atomic_write
from torchflava.utils.checks import check_int, is_prompt_template
from torchflava.utils.cli import (
    at_file_lines,
    command_parser,
    finish_command,
    output_file,
    positive_int,
    refuse_overwritten_inputs,
    run_command,
)
from torchflava.utils.memory import keep_freed_memory
from torchflava.utils.modes import eval_mode

DEFAULT_TEMPLATES = ("a photo of a {}.", "a {}.")
TEXT_BATCH_SIZE = 256  # texts (captions, class prompts) encoded at a time
TOP_K = 5  # most probable classes kept (and written to --json) per image

# the images that come with their class ids: parquet files', tar shards', torchvision's CIFAR or MNIST files'
LABELLED_READERS = (ParquetImages, WdsImages, TorchvisionImages)
LabelledImages = Union[LABELLED_READERS]


@torch.no_grad()
def image_features(pretrained: Pretrained, images: Sequence, *, batch_size: int = 64) -> Tensor:
    """(N, D) normalised projected image features of PIL ``images`` (the checkpoint's preprocessing; the
    model in eval mode, each module's mode given back);
    TypeError unless a sequence (list or tuple: a generator has no length, a set no order) of PIL images
    or if ``batch_size`` is not an int, ValueError for no image or a ``batch_size`` below 1."""
    if not _is_sequence_of(images, Image.Image):
        raise TypeError(f"images must be a sequence of PIL images, got {_describe_items(images)}")
    _check_batch("images", images, batch_size)
    transform = pretrained.image_transform
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([transform(image) for image in images[start : start + batch_size]])
        chunks.append(_normalised(pretrained, pretrained.model.encode_image, pixels))
    return torch.cat(chunks)


@torch.no_grad()
def text_features(
    pretrained: Pretrained, texts: Sequence[str], *, batch_size: int = TEXT_BATCH_SIZE, max_length: Optional[int] = None
) -> Tensor:
    """(N, D) normalised projected text features of ``texts``, the model in eval mode (``max_length``: default
    :attr:`~torchflava.pretrained.Pretrained.text_length`, at most
    :attr:`~torchflava.pretrained.Pretrained.max_text_length`); TypeError unless a sequence of str (a
    str is not split into letters, a generator or a set is no sequence) or if ``batch_size`` or
    ``max_length`` is not an int, ValueError for none, a ``batch_size`` below 1 or a ``max_length`` outside
    [2, max_text_length]."""
    if not _is_sequence_of(texts, str):
        raise TypeError(f"texts must be a sequence of str, got {_describe_items(texts)}")
    _check_batch("texts", texts, batch_size)
    if max_length is None:
        max_length = pretrained.text_length
    else:  # past the model's positions the encoder would refuse the ids, not naming max_length
        check_int("max_length", max_length, 2)
        if max_length > pretrained.max_text_length:
            raise ValueError(
                f"max_length must be at most the model's {pretrained.max_text_length} text positions, got {max_length}"
            )
    chunks = []
    for start in range(0, len(texts), batch_size):
        ids, mask = pretrained.tokenizer(list(texts[start : start + batch_size]), max_length=max_length)
        chunks.append(_normalised(pretrained, pretrained.model.encode_text, ids, mask))
    return torch.cat(chunks)


def _is_sequence_of(items: object, kind: type) -> bool:
    """Whether ``items`` is a sequence (not a str or bytes, nor a single ``kind``) of ``kind`` objects: a
    generator or a set was read past its length or order, failing inside with no argument named."""
    if isinstance(items, (str, bytes, kind)) or not isinstance(items, Sequence):
        return False
    return all(isinstance(item, kind) for item in items)


def _describe_items(items: object) -> str:
    """``items``' type, and the types of what it holds where it is a sequence."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        return type(items).__name__
    return f"{type(items).__name__} holding {', '.join(sorted({type(i).__name__ for i in items}))}"


def _check_batch(name: str, items: Sequence, batch_size: object) -> None:
    if len(items) == 0:  # (torch.cat's error otherwise)
        raise ValueError(f"{name} must not be empty")
    check_int("batch_size", batch_size, 1)


def _normalised(pretrained: Pretrained, encode: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
    """(N, D) features of ``encode`` (an encoder of ``pretrained.model``) in its precision, normalised
    in fp32 after the cast whatever that precision is; the inputs are moved to the model's device, the
    features come back on the CPU."""
    device = next(pretrained.model.parameters()).device  # (a model moved to an accelerator: inputs follow)
    with pretrained.precision(), eval_mode(pretrained.model):  # (a model being trained: no dropout here)
        features = encode(*(x.to(device) for x in inputs), normalize=False)
    return F.normalize(features.float(), dim=-1).cpu()


def class_embeddings(
    pretrained: Pretrained,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    batch_size: Optional[int] = None,
) -> Tensor:
    """(C, D) zero-shot classifier: the normalised mean embedding of each class's prompts, encoded
    ``batch_size`` prompts at a time (None: :data:`TEXT_BATCH_SIZE`; the C x T prompts at once held the
    activations of all of them, 80,000 for ImageNet with CLIP's 80 templates)."""
    max_length = pretrained.text_length
    return zero_shot_classifier(
        lambda ids, mask: _normalised(pretrained, pretrained.model.encode_text, ids, mask),
        lambda texts: pretrained.tokenizer(list(texts), max_length=max_length),
        class_names,
        templates,
        batch_size=TEXT_BATCH_SIZE if batch_size is None else batch_size,
    )


def classify_folder(
    pretrained: Pretrained,
    images_dir: Union[str, LabelledImages],
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    batch_size: int = 64,
    folder_order: bool = False,
    class_folders: Optional[Sequence[str]] = None,
    top_k: int = TOP_K,
    probabilities_file: Union[None, str, os.PathLike] = None,
    labels: Union[None, str, os.PathLike] = None,
) -> dict:
    """Zero-shot classification of every image under ``images_dir``, ``batch_size`` images at a time:
    what is kept of an image is its name, its best ``top_k`` classes and their probabilities, and its
    accuracy credit (ImageNet's 50,000 images with every probability of its 1000 classes as Python
    floats took ~6 GB; every probability goes to ``probabilities_file`` instead, row by row). ``images_dir`` may
    be parquet files' images (:class:`~torchflava.data.parquet.ParquetImages`, a Hugging Face Hub download's
    ``data/validation-*.parquet``), tar shards' (:class:`~torchflava.data.wds.WdsImages`) or torchvision's CIFAR or
    MNIST files' (:class:`~torchflava.data.torchvision_files.TorchvisionImages`): each row's class id is its label
    (names may then repeat, as sub-folders' may).

    Args:
        folder_order (bool): the i-th class is the i-th sub-folder of ``images_dir`` in sorted order (as
            torchvision's ``ImageFolder`` numbers them: ImageNet's synset folders ``n01440764``... with
            their class names listed in that order); every image must lie in one. False: a sub-folder is
            the class it is named after (:func:`folder_labels`).
        class_folders (Optional[Sequence[str]]): the sub-folder of each class's images, class by class
            (ImageNet's ``n01440764`` for ``tench``: a names file, see :func:`class_names_argument`), for
            the accuracy; None: a sub-folder is named after its class (or ``folder_order``).
        top_k (int): how many of each image's most probable classes are kept (fewer where there are
            fewer classes).
        probabilities_file (Union[None, str, os.PathLike]): a ``.npy`` file written (atomically) with
            the (N, C) float32 probabilities of every class, rows in the order of ``predictions``,
            columns in that of ``classes``; None: none written.
        labels (Union[None, str, os.PathLike]): a file labelling the images of a flat ``images_dir`` (ImageNet's
            validation set as distributed: Kaggle's ``LOC_val_solution.csv``, or ``FILE<TAB>CLASS`` /
            ``FILE,CLASS`` lines; :class:`~torchflava.data.image_labels.LabelledImageFolder`), each class
            written as a sub-folder would be named (matched to ``class_folders`` or the class names alike); only
            the images it names are classified, those it names that are absent skipped as unreadable ones are.

    Returns:
        dict: ``predictions`` (file -> class), ``top_classes`` (N, K) int64 class indices, most probable
        first (ties in class order; the first is the prediction) and ``top_probabilities`` (N, K)
        float32 (softmax over the classes of exp(logit_scale) x cosine similarity), rows in the order of
        ``predictions``, ``skipped`` and ``skipped_reasons`` (the unreadable images, named),
        ``num_inputs`` (the images classified), ``chance``, ``classes`` and ``templates`` (the prompts' class names and
        templates, in order), ``class_folders`` (where given), ``probabilities_file`` (str, where one was
        written), and ``accuracy`` and ``mean_per_class_accuracy`` (and ``top5_accuracy`` for more than 5
        classes) when the images lie in sub-folders named after the classes (:func:`folder_labels`), or with
        ``folder_order`` or ``labels``.
        :func:`json_result` gives it as ``--json`` writes it.

    Raises:
        TypeError: if ``class_names`` or ``templates`` is not a list or tuple of str, ``class_folders``
            not a list or tuple, or ``top_k`` not an int.
        ValueError: if there are fewer than two classes, an empty class name, a duplicated one (allowed
            where ``class_folders`` or ``folder_order`` labels the images: the classes of one name, as
            ImageNet's two ``crane`` synsets, share its embedding, a tie in the accuracy), two
            names the tokenizer reads as one (``Cat`` and ``cat`` for an uncased one), a template
            without one ``{}``, with ``folder_order`` not one sub-folder per class or an image outside
            them, ``class_folders`` not one distinct non-empty folder name per class or given with
            ``folder_order``, ``top_k`` below 1, ``probabilities_file`` not a ``.npy`` path in an
            existing directory, ``labels`` given with ``folder_order`` or refused by
            :class:`~torchflava.data.image_labels.LabelledImageFolder`, or parquet images given with ``labels``,
            ``folder_order`` or ``class_folders``, or labelled with a class id past the classes (all before any
            image is read).
    """
    if labels is not None and folder_order:
        raise ValueError("labels and folder_order both say which class an image is of: give one")
    # (parquet, shards or torchvision's files: rows hold class ids)
    self_labelled = isinstance(images_dir, LABELLED_READERS)
    if self_labelled:
        _check_self_labelled(images_dir, len(class_names), labels, folder_order, class_folders)
    labelled_by_folder = class_folders is not None or folder_order or self_labelled
    # the names prompted, once each: where a folder labels each class, two of one name (ImageNet's two cranes) share
    # an embedding, a tie that class_credit counts as such (the real LOC_synset_mapping.txt was refused)
    prompted = (
        list(dict.fromkeys(class_names)) if labelled_by_folder and _is_sequence_of(class_names, str) else class_names
    )
    check_class_prompts(prompted, templates)  # zero_shot_classifier's checks, before the images are encoded
    if len(class_names) < 2:
        raise ValueError(f"classes must name at least two distinct classes, got {list(class_names)}")
    if class_folders is not None:
        _check_class_folders(class_folders, len(class_names), folder_order)
    check_int("top_k", top_k, 1)
    if probabilities_file is not None:
        _check_npy_path(probabilities_file)
    # of the probabilities, on the CPU with the features (a model moved to an accelerator kept its scale there, and
    # torch refuses an accelerator's 0-dim tensor times CPU similarities)
    scale = pretrained.model.logit_scale.detach().float().exp().cpu()
    check_finite(**{"the checkpoint's exp(logit_scale)": scale})
    # (listed: no image read); a labels file's images are labelled by it, as by their folder
    if self_labelled:
        folder = images_dir
    else:
        folder = (
            ImageFolder(images_dir)
            if labels is None
            else labelled_images(images_dir, labels, class_names, class_folders)
        )
    ordered = ordered_folders(images_dir, len(class_names), folder) if folder_order else None
    classes = class_embeddings(pretrained, prompted, templates)  # (names the tokenizer merges: before any image)
    row = {name: index for index, name in enumerate(prompted)}
    classes = classes[[row[name] for name in class_names]]  # (C, D): a repeated name's row repeated
    check_finite(class_embeddings=classes)
    # a file's label: its folder's number, else the class whose folder (a names file's, or its name) it lies in
    matched = class_names if class_folders is None else class_folders
    tally = _Tally(len(class_names), min(top_k, len(class_names)))
    skipped = []
    with _ProbabilityRows(probabilities_file, len(class_names)) as rows:
        for chunk in readable_chunks(folder.__getitem__, range(len(folder)), batch_size, skipped):
            files = [folder.relative_path(index) for index, _ in chunk]
            features = image_features(pretrained, [sample.image for _, sample in chunk], batch_size=batch_size)
            check_finite(image_features=features)  # a diverged model predicts nothing
            if labels is not None or self_labelled:  # (the labels file's class, matched to a class when it was read)
                truth = [sample.label for _, sample in chunk]
            elif ordered is not None:
                truth = [ordered[image_folder(f)] for f in files]
            else:
                truth = [folder_class(image_folder(f), matched) for f in files]
            probabilities = tally.add(files, truth, features, classes, scale)
            rows.write(probabilities)
        if not tally.files:
            where = f"in {folder.files[0]}..." if self_labelled else f"under {images_dir}"  # (parquet files or shards)
            raise ValueError(f"images: no readable image {where} ({len(skipped)} unreadable)")
        rows.finish()
    top_classes = torch.cat(tally.top_classes)
    result = {
        "predictions": {f: class_names[p] for f, p in zip(tally.files, top_classes[:, 0].tolist())},
        "top_classes": top_classes,
        "top_probabilities": torch.cat(tally.top_probabilities),
        "skipped": len(skipped),
        "skipped_reasons": skipped,  # each unreadable image, named
        "num_inputs": len(tally.files),  # (the name classify and linear_probe give the count of inputs scored)
        "chance": 1 / len(class_names),
        "classes": list(class_names),  # (with the templates, what the --json needs to be reproduced)
        "templates": list(templates),
    }
    if class_folders is not None:  # (what tells two classes of one name apart)
        result["class_folders"] = list(class_folders)
    if probabilities_file is not None:
        result["probabilities_file"] = str(probabilities_file)
    return {**result, **tally.accuracies()}


class _Tally:
    """What :func:`classify_folder` keeps of the images, a chunk at a time: their names, top-k classes and
    probabilities, and, while every image so far lies in a class's folder, their labels and top-1 (and
    top-5) credits (:func:`~torchflava.evaluation.zero_shot.class_credit`), a few numbers an image."""

    def __init__(self, num_classes: int, k: int) -> None:
        self.num_classes, self.k = num_classes, k
        self.files: list[str] = []
        self.top_classes: list[Tensor] = []
        self.top_probabilities: list[Tensor] = []
        self.labels: Optional[list[Tensor]] = []  # None once an image lies outside the class folders
        self.credits: dict[int, list[Tensor]] = {k: [] for k in reported_ks(num_classes)}
        self.distinct: Optional[tuple] = None  # distinct_rows of the classes (one tensor for every chunk)

    def add(self, files: list[str], labels: list, features: Tensor, classes: Tensor, scale: Tensor) -> Tensor:
        """Keep a chunk of images (their files, class labels or None, (B, D) features); returns their
        (B, C) probabilities, which are not kept."""
        similarity = features @ classes.T  # (B, C) cosine similarities
        probabilities = (scale * similarity).softmax(dim=1)
        # stable: of tied classes the first comes first, as argmax (the prediction) picks it
        order = similarity.sort(dim=1, descending=True, stable=True).indices[:, : self.k]
        order = order.clone()  # (a slice kept the whole (B, C) indices alive: 8 kB an image at 1000 classes)
        self.files += files
        self.top_classes.append(order)
        self.top_probabilities.append(probabilities.gather(1, order))
        if self.labels is not None and any(label is None for label in labels):
            self.labels = None  # (no accuracy: the credits kept so far are dropped)
            self.credits = {k: [] for k in self.credits}
        if self.labels is not None:
            truth = torch.tensor(labels)
            self.labels.append(truth)
            for k in reported_ks(self.num_classes):  # (top-5 past 5 classes, as every command reports it)
                if self.distinct is None:  # (the classes' equal rows sorted out once for the folder)
                    self.distinct = distinct_rows(classes)
                self.credits[k].append(class_credit(features, classes, truth, k=k, distinct=self.distinct))
        return probabilities

    def accuracies(self) -> dict[str, float]:
        """``accuracy`` and ``mean_per_class_accuracy`` (and ``top5_accuracy`` past 5 classes) where
        every image had a label; else none."""
        if self.labels is None:
            return {}
        credit, labels = torch.cat(self.credits[1]), torch.cat(self.labels)
        out = {"accuracy": credit.double().mean().item()}  # (a float32 mean: 81 of 100 was 0.8100000023841858)
        # the class-balanced figure (some benchmarks report it), and top-5 where it is not right by count alone
        out["mean_per_class_accuracy"] = per_class_mean(credit, labels, self.num_classes)
        if TOP5 in reported_ks(self.num_classes):
            out["top5_accuracy"] = torch.cat(self.credits[TOP5]).double().mean().item()
        return out


def _check_self_labelled(
    images: LabelledImages,
    num_classes: int,
    labels: object,
    folder_order: bool,
    class_folders: object,
) -> None:
    """ValueError unless parquet ``images`` (or tar shards', or torchvision's files'), which label their rows
    themselves, come without ``labels``, ``folder_order`` and ``class_folders``, and with class ids below
    ``num_classes``."""
    kind = source_kind(images)
    if labels is not None or folder_order or class_folders is not None:
        raise ValueError(
            f"images: {kind} label their images themselves: not with labels, folder_order or class_folders"
        )
    if images.classes is not None and len(images.classes) != num_classes:
        raise ValueError(f"class_names: expected the {len(images.classes)} classes of the {kind}, got {num_classes}")
    ids = [label for label in images.labels or () if label is not None]
    if ids and max(ids) >= num_classes:
        raise ValueError(
            f"class_names: expected a name for each class id of the {kind}, got {num_classes} for ids up to {max(ids)}"
        )


def source_kind(images: LabelledImages) -> str:
    """What labelled ``images`` are, for messages: ``parquet files``, ``tar shards``, ``CIFAR-10 files``..."""
    if isinstance(images, TorchvisionImages):
        return f"{images.kind} files"
    return "tar shards" if isinstance(images, WdsImages) else "parquet files"


def _check_npy_path(path: object) -> None:
    """ValueError (TypeError for a type) unless ``path`` is a ``.npy`` file path in an existing directory."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"probabilities_file must be a path, got {type(path).__name__}")
    path = Path(path)
    if path.suffix != ".npy" or path.is_dir() or not path.parent.is_dir():
        raise ValueError(f"probabilities_file must be a .npy file path in an existing directory, got {str(path)!r}")


class _ProbabilityRows:
    """Rows of probabilities streamed to a ``.npy`` file: written raw to a temporary file beside it as
    they come (their number is known at the end only: unreadable images are skipped), then given the
    ``.npy`` header and moved in place atomically by :meth:`finish`. With no path, nothing is written."""

    def __init__(self, path: Union[None, str, os.PathLike], num_classes: int) -> None:
        self.path, self.num_classes, self.num_rows = path, num_classes, 0
        self.raw = None

    def __enter__(self) -> "_ProbabilityRows":
        if self.path is not None:  # (beside the file, not in /tmp: ImageNet's are 200 MB)
            self.raw = tempfile.TemporaryFile(dir=Path(self.path).parent)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.raw is not None:
            self.raw.close()

    def write(self, probabilities: Tensor) -> None:
        if self.raw is not None:
            self.raw.write(probabilities.float().numpy().astype("<f4", copy=False).tobytes())
            self.num_rows += probabilities.shape[0]

    def finish(self) -> None:
        if self.raw is None:
            return
        header = {"descr": "<f4", "fortran_order": False, "shape": (self.num_rows, self.num_classes)}

        def write(tmp: str) -> None:
            self.raw.seek(0)
            with open(tmp, "wb") as out:
                npy_format.write_array_header_1_0(out, header)
                shutil.copyfileobj(self.raw, out)

        atomic_write(self.path, write)


def json_result(result: dict) -> dict:
    """A :func:`classify_folder` result as ``--json`` writes it: its tensors given as ``top``, each file's
    ``[class, probability]`` pairs, most probable first (the top-k kept, not every class's: those are in
    ``probabilities_file`` where one was written)."""
    names = result["classes"]
    top = {}
    for file, ids, values in zip(
        result["predictions"], result["top_classes"].tolist(), result["top_probabilities"].tolist()
    ):
        top[file] = [[names[i], p] for i, p in zip(ids, values)]
    rest = {key: value for key, value in result.items() if key not in ("top_classes", "top_probabilities")}
    return {"predictions": rest.pop("predictions"), "top": top, **rest}


def _check_class_folders(class_folders: object, num_classes: int, folder_order: bool) -> None:
    """ValueError (TypeError for a type) unless ``class_folders`` lists one distinct non-empty folder name
    per class, without ``folder_order`` (which numbers the folders itself)."""
    if isinstance(class_folders, str) or not isinstance(class_folders, Sequence):
        raise TypeError(f"class_folders must be a list of folder names, got {type(class_folders).__name__}")
    if not all(isinstance(f, str) and f for f in class_folders) or len(set(class_folders)) != len(class_folders):
        raise ValueError(f"class_folders must be distinct non-empty folder names, got {_listed(class_folders)}")
    if len(class_folders) != num_classes:
        raise ValueError(f"class_folders must name one folder per class ({num_classes}), got {len(class_folders)}")
    if folder_order:
        raise ValueError("class_folders and folder_order both say which folder holds a class: give one")


def labelled_images(
    images_dir: Union[str, os.PathLike],
    labels: Union[str, os.PathLike],
    class_names: Sequence[str],
    class_folders: Optional[Sequence[str]] = None,
) -> LabelledImageFolder:
    """The images of a flat ``images_dir`` that the file ``labels`` labels, each class it writes matched to the
    classes as a sub-folder so named is (:func:`folder_class`: to ``class_folders`` where given, ImageNet's synsets
    of ``--classes @LOC_synset_mapping.txt``, else to the class names); ValueError where the file is refused
    (:class:`~torchflava.data.image_labels.LabelledImageFolder`) or a class it writes matches none."""
    matched = list(class_names if class_folders is None else class_folders)
    return LabelledImageFolder(images_dir, labels, matched, match=lambda name: folder_class(name, matched))


def ordered_folders(images_dir: Union[str, os.PathLike], num_classes: int, listed: ImageFolder) -> dict[str, int]:
    """Each sub-folder of ``images_dir`` -> its index in sorted order (torchvision's ``ImageFolder`` classes:
    every sub-folder, images in it or not, but for hidden ones, ``.ipynb_checkpoints``, whose images ``listed``
    leaves out too), or, where the sub-folders are named ``0`` to ``num_classes - 1`` (ImageNetV2's layout), its
    number, which is its class id (sorted as text, ``10`` would come before ``2``); ValueError unless there are
    ``num_classes`` of them and no image of ``listed`` (``images_dir``'s images, listed) lies outside them."""
    folders = sorted(e.name for e in os.scandir(images_dir) if e.is_dir() and not e.name.startswith("."))
    if set(folders) == {str(i) for i in range(num_classes)}:
        folders.sort(key=int)
    if len(folders) != num_classes:
        raise ValueError(
            f"folder_order: expected one sub-folder of {images_dir} per class ({num_classes}), got {len(folders)} "
            f"sub-folders"
        )
    outside = [f for f in map(listed.relative_path, range(len(listed))) if image_folder(f) is None]
    if outside:
        raise ValueError(
            f"folder_order: expected every image in a class sub-folder, got {len(outside)} at the top of "
            f"{images_dir} (first {outside[0]!r})"
        )
    return {folder: index for index, folder in enumerate(folders)}


def image_folder(file: str) -> Optional[str]:
    """The sub-folder of ``images`` a file (its relative path) lies in; None for one at the top."""
    parts = Path(file).parts
    return parts[0] if len(parts) > 1 else None


def folder_class(folder: Optional[str], class_names: Sequence[str]) -> Optional[int]:
    """The index of the class a sub-folder is named after: the class of its very name, else the one
    class equal to it with case, surrounding spaces, underscores for spaces and Unicode normalisation
    aside (``cat/`` for ``Cat``; ``apple_pie/``, as Food-101, Oxford Pets and Caltech-101 name their
    folders, for ``apple pie``; ``café/`` as macOS writes it, ``e`` and a combining accent, for ``café``
    typed as one character); None for none, or where several are (``Cat`` and ``cat`` both classes,
    ``CAT/`` naming neither)."""
    if folder is None:
        return None
    if folder in class_names:
        return list(class_names).index(folder)
    key = _loose_name(folder)
    found = [i for i, name in enumerate(class_names) if _loose_name(name) == key]
    return found[0] if len(found) == 1 else None


def _loose_name(name: str) -> str:
    """``name`` as :func:`folder_class` compares it: NFC-normalised (a folder unzipped from macOS spells
    accents decomposed), underscores read as spaces (folders hold no spaces in many datasets, prompts
    want them), stripped and case-folded."""
    return unicodedata.normalize("NFC", name).replace("_", " ").strip().casefold()


def folder_labels(files: Sequence[str], class_names: Sequence[str]) -> Optional[list[int]]:
    """The class index of each file (its path relative to the images folder) from the sub-folder it lies
    in (:func:`folder_class`), or None unless every file's folder names a class."""
    labels = [folder_class(image_folder(file), class_names) for file in files]
    return None if any(label is None for label in labels) else labels


def class_names_fault(names: Sequence[str], *, repeats_allowed: bool = False) -> Optional[str]:
    """What is wrong with a command's class names (fewer than two, an empty one, repeated ones, named), or None;
    ``repeats_allowed``: a name may be repeated (each class's folder is known: :func:`repeated_names_warning`)."""
    if len(names) < 2:
        return f"expected at least two distinct non-empty names, got {list(names)}"
    if not all(names):
        return f"expected non-empty names, got an empty one at position {list(names).index('')} of {len(names)}"
    repeated = sorted({name for name, count in collections.Counter(names).items() if count > 1})
    if repeated and not repeats_allowed:
        return f"expected distinct names, got {len(repeated)} repeated of the {len(names)}: {_listed(repeated)}"
    return None


def repeated_names_warning(names: Sequence[str], folders: Sequence[str]) -> Optional[str]:
    """The one-line warning of class names given to several classes, each with its own folder (``folders``, class
    by class: a names file's, or the sorted sub-folders of ``--folder-order``; ImageNet's ``crane`` is the bird
    n02012849 and the machine n03126707), or None where every name is distinct: their prompts are one, so the
    classifier cannot tell the classes apart."""
    by_name = collections.defaultdict(list)
    for name, folder in zip(names, folders):
        by_name[name].append(folder)
    repeated = {name: found for name, found in by_name.items() if len(found) > 1}
    if not repeated:
        return None
    listed = "; ".join(f"{name!r} for {', '.join(found)}" for name, found in list(repeated.items())[:10])
    more = f" ({len(repeated)} names in all)" if len(repeated) > 10 else ""
    return (
        f"warning: --classes names several classes alike: {listed}{more}; their prompts are the same, so the "
        "classifier cannot tell them apart (an image of one ranked first among them counts 1/n right); give each "
        "its own name to tell them apart"
    )


def _listed(names: Sequence[str], limit: int = 10) -> str:
    """``names`` as a list, its first ``limit`` and how many in all where there are more (1000 ImageNet classes)."""
    shown = list(names)[:limit]
    return f"{shown}" if len(names) <= limit else f"{shown[:-1] + ['...']} ({len(names)} in all)"


def unmatched_folders_warning(
    files: Sequence[str], class_names: Sequence[str], *, folder_order_hint: bool = False, listed_folders: bool = False
) -> Optional[str]:
    """The one-line warning of a classification without accuracy whose images lie in sub-folders: which
    folders name no class (None where every image lies at the top: no folder to match); with
    ``folder_order_hint``, where there are as many sub-folders as classes and every image lies in one, that
    ``--folder-order`` would number them; with ``listed_folders``, ``class_names`` are the folders a
    names file gave the classes."""
    folders = {image_folder(file) for file in files}
    if folders == {None}:
        return None
    unmatched = sorted(f for f in folders - {None} if folder_class(f, class_names) is None)
    top = " and images outside any sub-folder" if None in folders else ""
    hint = ""
    if folder_order_hint and None not in folders and len(folders) == len(class_names):
        hint = "; or --folder-order, if the i-th class is the i-th sub-folder in sorted order (ImageNet's synsets)"
    if listed_folders:
        return (
            f"warning: no accuracy: the image sub-folders {_listed(unmatched)}{top} are none of the class folders "
            f"the --classes file lists, {_listed(class_names)}"
        )
    return (
        f"warning: no accuracy: the image sub-folders {_listed(unmatched)}{top} match none of the classes "
        f"{_listed(class_names)} (each image should lie in a sub-folder named after its class{hint})"
    )


def retrieval(
    pretrained: Pretrained,
    images_dir: Optional[str],
    captions: str,
    *,
    split: Union[None, str, Sequence[str]] = None,
    image_key: Optional[str] = None,
    text_key: Optional[str] = None,
    batch_size: int = 64,
) -> dict:
    """Image->text and text->image Recall@1/5/10 over the pairs of a captions file (any format of
    :class:`~torchflava.data.readers.ImageTextFolder`: ``images_dir`` None for absolute image paths,
    ``split`` the Karpathy splits, ``image_key``/``text_key`` the JSON keys or columns); an image
    listed with several captions is one candidate, found when any of its captions ranks within K.

    Returns:
        dict: ``image_to_text_R@K``, ``text_to_image_R@K`` and the recall of a random ranking in each
        direction, ``image_to_text_R@K_chance`` and ``text_to_image_R@K_chance`` (:func:`retrieval_chance`),
        for each K of 1, 5 and 10 up to the number of captions (text->image's up to the number of readable
        images, which it ranks), ``num_pairs``, ``num_images``, ``skipped`` and
        ``skipped_reasons`` (each malformed captions entry and unreadable image, named).

    Raises:
        ValueError: if the captions file is refused (before any image is read), ``split`` names a split
            it does not hold, or fewer than two distinct images are readable.
    """
    folder = ImageTextFolder(images_dir, captions, image_key=image_key, text_key=text_key, split=split)
    return _folder_retrieval(pretrained, folder, batch_size)


def _folder_retrieval(pretrained: Pretrained, folder: Union[ImageTextFolder, WdsCaptions], batch_size: int) -> dict:
    """:func:`retrieval` over an opened, checked captions file."""
    lines, skipped = [], []  # (item, (image path, caption)) of the well-formed entries; why others are not
    for index in range(len(folder)):
        try:
            lines.append((index, (folder.image_path(index), folder.caption(index))))
        except BadSample as bad:
            skipped.append(bad.reason)
    first_line = {}  # image path -> its first line: an image listed with several captions is one candidate
    for index, (path, _) in lines:
        first_line.setdefault(path, index)

    def read(path: str) -> Image.Image:
        return folder[first_line[path]].image

    row, chunks = {}, []  # image path -> feature row; each image decoded once, a chunk at a time
    for chunk in readable_chunks(read, first_line, batch_size, skipped):
        for path, _ in chunk:
            row[path] = len(row)
        chunks.append(image_features(pretrained, [image for _, image in chunk], batch_size=batch_size))
    pairs = [(path, text) for _, (path, text) in lines if path in row]
    if len(row) < 2:
        raise ValueError(
            f"captions: need at least 2 readable images, got {len(row)} ({len(folder) - len(pairs)} captions skipped)"
        )
    images = torch.cat(chunks)
    texts = text_features(pretrained, [text for _, text in pairs])
    image_of_text = torch.tensor([row[path] for path, _ in pairs])
    ks = [k for k in (1, 5, 10) if k <= len(pairs)]  # (text->image's only up to the images: retrieval_recall)
    return {
        **retrieval_recall(images, texts, ks=ks, image_of_text=image_of_text),
        "num_pairs": len(pairs),
        "num_images": len(row),
        "skipped": len(folder) - len(pairs),
        "skipped_reasons": skipped,  # each malformed captions entry and unreadable image, named
        **retrieval_chance(torch.bincount(image_of_text, minlength=len(row)).tolist(), len(pairs), ks),
    }


def retrieval_chance(captions_per_image: Sequence[int], num_texts: int, ks: Sequence[int]) -> dict[str, float]:
    """The Recall@K of a random ranking in each direction: text->image K / M (one right image of the M);
    image->text the mean over the images of 1 - C(T - n, K) / C(T, K), the chance that at least one of an
    image's n captions is among the K first of the T texts (K / M only where every image has one caption).

    Returns:
        dict[str, float]: ``image_to_text_R@K_chance`` for each K, ``text_to_image_R@K_chance`` for each K <= M.
    """
    images, out = len(captions_per_image), {}
    for k in ks:
        missed = []  # per image: the chance that none of its captions is among the first k
        for n in captions_per_image:
            missed.append(
                math.prod((num_texts - n - j) / (num_texts - j) for j in range(k)) if k <= num_texts - n else 0
            )
        out[f"image_to_text_R@{k}_chance"] = 1 - sum(missed) / images
        if k <= images:  # (as retrieval_recall: text->image ranks the images)
            out[f"text_to_image_R@{k}_chance"] = k / images
    return out


# ImageTextFolder's arguments -> the options of the retrieval command that give them
_CAPTIONS_OPTIONS = {"root": "--images", "split": "--split", "image_key": "--image-key", "text_key": "--text-key"}


# a line of ImageNet's names files (LOC_synset_mapping.txt, synset_words.txt): the synset's folder, then its name
_SYNSET_LINE = re.compile(r"(n\d{8})\s+(\S.*)")


# ParquetImages' arguments -> the zero-shot options that give them
_PARQUET_OPTIONS = {"paths": "--images", "image_key": "--image-key", "label_key": "--label-key", "classes": "--classes"}


def image_values(
    parser: argparse.ArgumentParser, values: Sequence[str]
) -> tuple[Optional[str], Optional[list[str]], Optional[list[str]], Optional[list[str]]]:
    """``--images``' values (``nargs="+"``) as (an image folder, parquet files' values, tar shards' values,
    torchvision files' values), one of them given: parquet files where a value is one (a shell expands
    ``data/validation-*.parquet`` into its files), else tar shards where a value is (CLIP_benchmark's
    ``wds_imagenet1k/test``, or its root), else torchvision's CIFAR or MNIST files where a value is
    (``cifar-10-batches-py``, its ``test_batch``), else one folder; exits 2 naming the option for several values of
    none of them."""
    if any(is_parquet(value) for value in values):
        return None, list(values), None, None
    if any(is_tar_shards(value) for value in values):
        return None, None, list(values), None
    if any(is_torchvision_files(value) for value in values):
        return None, None, None, list(values)
    if len(values) > 1:
        parser.error(
            f"argument --images: expected one image folder, or parquet files, got {len(values)} values: "
            f"{_listed(values, 3)}"
        )
    return values[0], None, None, None


def parquet_images_argument(
    parser: argparse.ArgumentParser,
    values: Sequence[str],
    *,
    image_key: Optional[str],
    label_key: Optional[str],
    classes: Optional[list[str]] = None,
) -> ParquetImages:
    """The parquet ``--images`` listed, their labels read and checked (no image): exits 2 naming the option that
    answers for a refusal (``--image-key``, ``--label-key``, ``--classes``), and prints the files' warnings (a shard
    of the split left out) on stderr."""
    try:
        source = ParquetImages(values, image_key=image_key, label_key=label_key, classes=classes)
    except ParquetError as error:
        parser.error(f"argument {_PARQUET_OPTIONS[error.argument]}: {error.reason}")
    except ImportError as error:  # (pyarrow, an optional dependency)
        parser.error(f"argument --images: {error}")
    for warning in source.warnings:
        print(warning, file=sys.stderr)
    return source


def shard_images_argument(
    parser: argparse.ArgumentParser, values: Sequence[str], classes: Optional[list[str]] = None
) -> WdsImages:
    """The tar shard ``--images`` listed, their ``.cls`` read and checked (no image): exits 2 naming the option
    that answers for a refusal (``--classes`` for names given that are too few, else ``--images``), and prints on
    stderr which split of a dataset root was taken and the shards' warnings."""
    return _read_images_argument(parser, lambda: WdsImages(values, classes=classes), classes)


def torchvision_images_argument(
    parser: argparse.ArgumentParser, values: Sequence[str], classes: Optional[list[str]] = None
) -> TorchvisionImages:
    """The torchvision CIFAR or MNIST-family ``--images`` read and checked: exits 2 naming the option that answers
    for a refusal (``--classes`` for names given that do not fit, else ``--images``), and prints on stderr which
    split of a dataset folder was taken."""
    return _read_images_argument(parser, lambda: TorchvisionImages(values, classes=classes), classes)


def _read_images_argument(
    parser: argparse.ArgumentParser,
    read: Callable[[], Union[WdsImages, TorchvisionImages]],
    classes: Optional[list[str]],
) -> Union[WdsImages, TorchvisionImages]:
    """``read()``'s images, a refusal (an :class:`ArgumentRefusal`: ``argument`` and ``reason``) exiting 2 naming ``--classes``
    where the names given answer for it, else ``--images``; the split taken and the files' warnings on stderr."""
    try:
        source = read()
    except ArgumentRefusal as error:
        if error.argument == "classes" and classes is not None:
            parser.error(f"argument --classes: {error.reason}")
        parser.error(f"argument --images: {error.reason}")
    for line in source.taken + source.warnings:
        print(line, file=sys.stderr)
    return source


def _torchvision_images(
    parser: argparse.ArgumentParser, values: list[str], classes: Optional[list[str]]
) -> tuple[TorchvisionImages, list[str]]:
    """The torchvision CIFAR or MNIST-family ``--images`` (read and checked) and the classes: ``--classes``', else
    the dataset's (CIFAR's meta file's, the MNIST family's by its folder's name); exits 2 naming the option where
    they are refused or there are none, and says on stderr which split was taken and where the classes come from."""
    source = torchvision_images_argument(parser, values, classes)
    if classes is None:
        if source.classes is None:
            parser.error(
                f"argument --classes: required: the MNIST-family files of {source.root} name no classes (known by "
                "the folder above raw/ as torchvision names it: MNIST, FashionMNIST or KMNIST)"
            )
        classes = source.classes
        if fault := class_names_fault(classes, repeats_allowed=True):
            parser.error(f"argument --images: the class names of {source.root}: {fault}; give --classes")
        print(f"the {len(classes)} classes of {source.classes_from} taken (--classes gives others)", file=sys.stderr)
    return source, classes


def _parquet_images(
    parser: argparse.ArgumentParser, args: argparse.Namespace, values: list[str], classes: Optional[list[str]]
) -> tuple[ParquetImages, list[str]]:
    """The parquet ``--images`` (their labels read and checked, no image) and the classes: ``--classes``', else
    their ClassLabel's; exits 2 naming the option where they are refused, and warns of what is left out."""
    source = parquet_images_argument(
        parser, values, image_key=args.image_key, label_key=args.label_key, classes=classes
    )
    if classes is None:
        if source.classes is None:
            parser.error(
                f"argument --classes: required: the parquet files name no classes (their {source.label_key or 'label'!r} "
                "column has no ClassLabel names in their metadata)"
            )
        classes = source.classes
        if fault := class_names_fault(classes, repeats_allowed=True):
            parser.error(f"argument --images: the ClassLabel names of {source.label_key!r}: {fault}; give --classes")
        if any("_" in name for name in classes):
            print(
                f"warning: the ClassLabel names hold underscores ({next(n for n in classes if '_' in n)!r}): the "
                "prompts say them so; --classes @FILE names the classes otherwise, one a line in class-id order",
                file=sys.stderr,
            )
    if source.labels is None:
        reason = source.unlabelled or (
            f"the parquet files have no label column (none of {', '.join(LABEL_COLUMNS)}, nor a ClassLabel one); "
            "--label-key names it"
        )
        print(f"warning: no accuracy: {reason}", file=sys.stderr)
    return source, classes


def _shard_images(
    parser: argparse.ArgumentParser, args: argparse.Namespace, values: list[str], classes: Optional[list[str]]
) -> tuple[WdsImages, list[str]]:
    """The tar shard ``--images`` (their ``.cls`` read and checked, no image) and the classes: ``--classes``', else
    their dataset root's ``classnames.txt``; ``args.templates`` the root's ``zeroshot_classification_templates.txt``
    where no ``--template`` was given. Exits 2 naming the option where they are refused; says on stderr which split
    of a root was taken and which files gave the classes and templates."""
    source = shard_images_argument(parser, values, classes)
    defaults = []
    if classes is None:
        path = None if source.root is None else os.path.join(source.root, CLASSES_FILE)
        if source.classes is None:
            where = "" if path is None else f" in {source.root}"
            parser.error(
                f"argument --classes: required: the tar shards have no {CLASSES_FILE}{where} (nor beside them)"
            )
        classes = source.classes
        if fault := class_names_fault(classes, repeats_allowed=True):
            parser.error(f"argument --images: {path}: {fault}; give --classes")
        defaults.append(f"the {len(classes)} classes of {path}")
    templates_file = None if source.root is None else os.path.join(source.root, TEMPLATES_FILE)
    if args.templates is None and templates_file is not None and os.path.isfile(templates_file):
        args.templates = template_arguments([f"@{templates_file}"], parser)
        bad = [t for t in args.templates if not is_prompt_template(t)]
        if bad:
            parser.error(
                f"argument --images: {templates_file}: expected one '{{}}' or '{{c}}' for the class name in each "
                f"template, got {bad[:3]}; give --template"
            )
        defaults.append(f"the {len(args.templates)} templates of {templates_file}")
    if defaults:
        print(f"{' and '.join(defaults)} taken (--classes, --template give others)", file=sys.stderr)
    return source, classes


def class_names_argument(
    value: str, parser: argparse.ArgumentParser, *, in_id_order: bool = False
) -> tuple[list[str], Optional[list[str]]]:
    """The class names ``--classes`` gives, and the sub-folder of each where its file names them: comma-
    separated names, or ``@FILE``'s lines (UTF-8; stripped, blank lines ignored), each a class name, or
    each ``FOLDER<TAB>NAME``, or each as ImageNet's names files write a synset (``n01440764 tench, Tinca
    tinca``: the folder, then the name); exits 2 naming the option and the file where it cannot be read,
    names none, or mixes lines with and without a folder; and, ``in_id_order`` (the i-th name is class id i:
    parquet or tar shard images, ``--folder-order``), where a blank line stands before or between names (skipped,
    it shifted every later name onto the next class id without a word).

    Returns:
        tuple[list[str], Optional[list[str]]]: the class names, and their folders (None where not given).
    """
    if not value.startswith("@"):
        return [name.strip() for name in value.split(",")], None
    path = Path(value[1:])
    lines = at_file_lines(parser, "--classes", value, "a UTF-8 file of class names")
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        parser.error(f"argument --classes: {path} holds no class name (expected one a line)")
    filled = [number for number, line in enumerate(lines, 1) if line.strip()]
    blank = next((n for n in range(filled[0], filled[-1]) if not lines[n - 1].strip()), None)
    if in_id_order and blank is not None:
        parser.error(
            f"argument --classes: {path} line {blank} is blank, between class names: read in class-id order, each "
            "line is the next class id's name (name it, or remove the line)"
        )
    if in_id_order and filled[0] > 1:  # (CLIP_benchmark reads a blank first line of classnames.txt as class 0)
        parser.error(
            f"argument --classes: {path} line 1 is blank, before the class names: read in class-id order, line 1 is "
            "class id 0's name (name it, or remove the line)"
        )
    tabbed = [line for line in names if "\t" in line]
    if tabbed:  # FOLDER<TAB>NAME lines (a class name holds no tab)
        pairs = [[part.strip() for part in line.split("\t", 1)] for line in names]
        bad = next((names[i] for i, pair in enumerate(pairs) if len(pair) != 2 or not all(pair)), None)
        if bad is not None:
            parser.error(f"argument --classes: {path}: expected every line FOLDER<TAB>NAME (as some are), got {bad!r}")
        return [name for _, name in pairs], [folder for folder, _ in pairs]
    synsets = [_SYNSET_LINE.fullmatch(line) for line in names]
    if all(synsets):  # ImageNet's names file: the prompts hold the names, not the synset ids
        return [match[2] for match in synsets], [match[1] for match in synsets]
    return names, None


def template_arguments(values: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """The prompt templates ``--template`` gives, each value a template or ``@FILE``: its lines (UTF-8;
    stripped, blank lines ignored); exits 2 naming the option and the file where it cannot be read or
    holds no template."""
    templates = []
    for value in values:
        if not value.startswith("@"):
            templates.append(value)
            continue
        lines = [
            line.strip() for line in at_file_lines(parser, "--template", value, "a UTF-8 file of prompt templates")
        ]
        if not any(lines):
            parser.error(f"argument --template: {value[1:]} holds no template (expected one a line)")
        templates += [line for line in lines if line]
    return templates


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = command_parser("torchflava.zero_shot", __doc__)
    add_checkpoint_argument(parser)
    parser.add_argument(
        "--images",
        nargs="+",
        help="image folder (retrieval: the folder of the captions' image paths; leave out for absolute paths), or "
        "parquet files as the Hugging Face Hub gives them (data/validation-*.parquet, a folder of them, or several "
        "files; classification: the classes of their ClassLabel unless --classes names them), or webdataset tar "
        "shards as CLIP_benchmark gives them (wds_imagenet1k/test, a glob or brace pattern of .tar files, or the "
        "dataset's root: its test/ split; its classnames.txt and zeroshot_classification_templates.txt unless "
        "--classes / --template give others), or torchvision's CIFAR-10/100 or MNIST-family files (their folder, "
        "cifar-10-batches-py or MNIST: its test split; or split files, test_batch, t10k-images-idx3-ubyte)",
    )
    mode = parser.add_mutually_exclusive_group()  # (one of them required, but for parquet images: checked below)
    mode.add_argument(
        "--classes",
        help="comma-separated class names, or @FILE: a UTF-8 file of one class name a line, or of FOLDER<TAB>NAME or "
        "ImageNet's 'n01440764 tench' lines (classification)",
    )
    mode.add_argument(
        "--captions",
        help="captions pairing the images with text (retrieval): .jsonl, Karpathy's, COCO's or BLIP's .json, .csv or .tsv; "
        "or .parquet files (a file or a glob) holding the images and their captions",
    )
    parser.add_argument(
        "--split", help="Karpathy split(s) to keep, comma-separated (retrieval on a Karpathy .json: test, or val)"
    )
    parser.add_argument(
        "--image-key",
        help="JSON key or CSV/TSV column of the image paths (retrieval), or parquet --images' image column",
    )
    parser.add_argument(
        "--label-key",
        help="parquet --images' column of class ids, or of class names (default: their ClassLabel column)",
    )
    parser.add_argument("--text-key", help="JSON key or CSV/TSV column of the captions (retrieval)")
    parser.add_argument(
        "--template",
        action="append",
        dest="templates",
        help="prompt template with {} (or {c}) for the class name (repeatable), or @FILE: a UTF-8 file of one template a line "
        "(CLIP's 80 ImageNet prompts; CLIP_benchmark's {c} templates)",
    )
    parser.add_argument(
        "--folder-order",
        action="store_true",
        help="the i-th class is the i-th image sub-folder in sorted order (ImageNet's synset folders with "
        "--classes @FILE of their names in that order; folders named 0 to N-1, as ImageNetV2's, in number "
        "order), for the accuracy",
    )
    parser.add_argument(
        "--labels",
        help="file labelling the images of a flat --images folder (ImageNet's validation set as distributed): Kaggle's "
        "LOC_val_solution.csv, or FILE<TAB>CLASS or FILE,CLASS lines, each CLASS as a class sub-folder would be named",
    )
    parser.add_argument("--batch-size", type=positive_int, default=64)
    add_dtype_argument(parser)
    add_lone_file_arguments(parser)
    parser.add_argument(
        "--json",
        type=output_file,
        help="also write the result here (classification: each image's --top-k classes and probabilities; "
        "weights: the file or training checkpoint evaluated)",
    )
    parser.add_argument(
        "--top-k",
        type=positive_int,
        default=TOP_K,
        help=f"most probable classes kept per image for --json (classification; default {TOP_K})",
    )
    parser.add_argument(
        "--all-probabilities",
        type=output_file,
        metavar="FILE.npy",
        help="write every image's probability of every class here, a (images, classes) float32 .npy, rows in the "
        "order of the --json's predictions, columns in that of its classes (classification)",
    )
    args = parser.parse_args(argv)
    # the parquet files' values of --images (a shell expands data/validation-*.parquet into its files), or the tar
    # shards' (CLIP_benchmark's wds_imagenet1k/test, or its root), or torchvision's files' (cifar-10-batches-py);
    # args.images then None
    parquet = shards = tvfiles = None
    if args.images is not None:
        args.images, parquet, shards, tvfiles = image_values(parser, args.images)
    own_labels = parquet is not None or shards is not None or tvfiles is not None  # (their rows hold class ids)
    # a retrieval dataset's shards (CLIP_benchmark's dataset_type.txt: wds_flickr30k) hold the captions themselves
    shard_captions = shards is not None and args.classes is None and shards_dataset_type(shards[0]) == "retrieval"
    if not own_labels and args.classes is None and args.captions is None:
        parser.error("one of the arguments --classes --captions is required")
    if parquet is None and args.label_key is not None:
        parser.error("argument --label-key: for parquet --images (classification) only")
    if parquet is not None:  # (their label column says which class a row is of)
        if args.captions is not None:
            parser.error("argument --captions: not with parquet --images (classification: --classes, or none)")
        for option, given in (("--labels", args.labels), ("--folder-order", args.folder_order)):
            if given:
                parser.error(f"argument {option}: not with parquet --images (their label column gives the classes)")
    if shards is not None:  # (each sample's .cls says which class it is of)
        if args.captions is not None:
            parser.error("argument --captions: not with tar shard --images (classification: their .cls class ids)")
        for option, given in (("--labels", args.labels), ("--folder-order", args.folder_order)):
            if given:
                parser.error(f"argument {option}: not with tar shard --images (their .cls members give the classes)")
    if tvfiles is not None:  # (their labels say which class an image is of)
        if args.captions is not None:
            parser.error("argument --captions: not with torchvision's --images (classification: their class ids)")
        for option, given in (("--labels", args.labels), ("--folder-order", args.folder_order)):
            if given:
                parser.error(f"argument {option}: not with torchvision's --images (their labels give the classes)")
    inputs = {"--captions": [args.captions] if args.captions is not None else []}
    inputs["--classes"] = [args.classes] if args.classes is not None and args.classes.startswith("@") else []
    inputs["--template"] = [t for t in args.templates or () if t.startswith("@")]
    inputs["--labels"] = [args.labels] if args.labels is not None else []
    inputs["--checkpoint"] = [args.checkpoint] if os.path.isfile(args.checkpoint) else []  # (a weights file alone)
    inputs["--tokenizer"] = [args.tokenizer] if args.tokenizer is not None and os.path.isfile(args.tokenizer) else []
    refuse_overwritten_inputs(parser, {"--all-probabilities": args.all_probabilities, "--json": args.json}, inputs)
    if args.all_probabilities is not None and args.all_probabilities.suffix != ".npy":
        parser.error(f"argument --all-probabilities: expected a .npy file path, got {str(args.all_probabilities)!r}")
    if args.templates is not None:
        args.templates = template_arguments(args.templates, parser)
    bad = [t for t in args.templates or () if not is_prompt_template(t)]
    if bad:
        parser.error(
            f"argument --template: expected one '{{}}' (or CLIP_benchmark's '{{c}}') for the class name and no other braces, got {bad}"
        )
    # every argument checked before the checkpoint is loaded
    if args.images is None and not own_labels and args.classes is not None:
        parser.error("argument --images: required for --classes (classification)")
    if args.captions is None and (args.split or (args.image_key and parquet is None) or args.text_key):
        parser.error("arguments --split, --image-key and --text-key: for --captions (retrieval) only")
    if args.images is not None and not Path(args.images).is_dir():
        parser.error(f"argument --images: expected an image folder, got {args.images!r} (not a directory)")
    if shard_captions and args.templates:
        parser.error("argument --template: for classification only, not with a retrieval dataset's shards")
    if args.captions is not None and args.templates:  # retrieval embeds the captions as they are
        parser.error("argument --template: for --classes (classification) only, not with --captions")
    captions_parquet = args.captions is not None and args.captions.lower().endswith(".parquet")
    if captions_parquet and args.images is not None:
        parser.error("argument --images: not with a .parquet --captions, which holds its images")
    if args.captions is not None and not captions_parquet and not Path(args.captions).is_file():
        parser.error(
            f"argument --captions: expected a .jsonl or .tsv captions file, Karpathy's, COCO's or BLIP's .json, or a .csv, "
            f"got {args.captions!r} (not a file)"
        )
    in_id_order = own_labels or args.folder_order
    classes, class_folders = (
        (None, None) if args.classes is None else class_names_argument(args.classes, parser, in_id_order=in_id_order)
    )
    if own_labels and class_folders is not None:
        parser.error(
            "argument --classes: a file naming each class's folder is for image folders; with parquet, tar shard or "
            "torchvision's --images give the names alone, one a line in class-id order"
        )
    # (a name may then stand for two classes: a folder, or a parquet row's class id, tells them apart)
    labelled_by_folder = class_folders is not None or args.folder_order or own_labels
    if classes is not None and (fault := class_names_fault(classes, repeats_allowed=labelled_by_folder)):
        parser.error(f"argument --classes: {fault}")
    if class_folders is not None and len(set(class_folders)) != len(class_folders):
        repeated = sorted({f for f, count in collections.Counter(class_folders).items() if count > 1})
        parser.error(f"argument --classes: expected one line per folder, got {_listed(repeated)} repeated")
    if args.folder_order and classes is None:
        parser.error("argument --folder-order: for --classes (classification) only")
    if args.labels is not None and classes is None:
        parser.error("argument --labels: for --classes (classification) only")
    if args.labels is not None and args.folder_order:
        parser.error("argument --labels: not with --folder-order (each says which class an image is of)")
    if args.labels is not None and not Path(args.labels).is_file():
        parser.error(f"argument --labels: expected a labels file, got {args.labels!r} (not a file)")
    if args.all_probabilities is not None and classes is None and (not own_labels or shard_captions):
        parser.error("argument --all-probabilities: for --classes (classification) only")
    if args.folder_order and class_folders is not None:
        parser.error("argument --folder-order: not with a --classes file that names each class's folder")
    split = None if args.split is None else [name.strip() for name in args.split.split(",")]
    if split is not None and not all(split):  # (ImageTextFolder's refusal named --captions)
        parser.error(
            f"argument --split: expected comma-separated split names (test, or train,restval), got {args.split!r}"
        )
    if parquet is not None:  # their labels read and checked, no image, before the checkpoint is loaded
        source, classes = _parquet_images(parser, args, parquet, classes)
        refuse_overwritten_inputs(
            parser, {"--all-probabilities": args.all_probabilities, "--json": args.json}, {"--images": source.files}
        )
    elif shard_captions:  # their captions read, no image, before the checkpoint is loaded
        try:
            folder = WdsCaptions(shards)
        except WdsError as error:
            parser.error(f"argument --images: {error.reason}")
        for line in folder.taken + folder.warnings:
            print(line, file=sys.stderr)
        refuse_overwritten_inputs(parser, {"--json": args.json}, {"--images": folder.dataset_files})
    elif shards is not None:  # their .cls read and checked, no image, before the checkpoint is loaded
        source, classes = _shard_images(parser, args, shards, classes)
        refuse_overwritten_inputs(
            parser,
            {"--all-probabilities": args.all_probabilities, "--json": args.json},
            {"--images": source.dataset_files},
        )
    elif tvfiles is not None:  # read and checked, before the checkpoint is loaded
        source, classes = _torchvision_images(parser, tvfiles, classes)
        refuse_overwritten_inputs(
            parser,
            {"--all-probabilities": args.all_probabilities, "--json": args.json},
            {"--images": source.dataset_files},
        )
    try:  # the images (or captions) listed, not read, before the checkpoint is loaded
        if not own_labels and classes is not None:
            listed = ImageFolder(args.images)
            if args.labels is not None:  # (its images and classes checked here, before the checkpoint loads)
                try:
                    labelled = labelled_images(args.images, args.labels, classes, class_folders)
                except ValueError as error:
                    message = str(error).removeprefix("labels: ").removeprefix("root: ")
                    if class_folders is None and re.search(r"class\(es\) among none of .*\['n\d{8}'", message):
                        message += (  # (ImageNet's class names alone, with Kaggle's synset labels)
                            "; the file labels images by their ImageNet synset: give --classes a file naming each "
                            "class's synset, LOC_synset_mapping.txt"
                        )
                    parser.error(f"argument --labels: {message}")
                for warning in labelled.warnings("--labels", "--images"):
                    print(warning, file=sys.stderr)
        elif not own_labels:
            folder = ImageTextFolder(
                args.images, args.captions, image_key=args.image_key, text_key=args.text_key, split=split
            )
    except ImportError as error:  # (pyarrow, for a .parquet --captions)
        parser.error(f"argument --captions: {error}")
    except ValueError as error:  # (named after their argument, root or captions: the option is what was given)
        if classes is None:  # a CaptionsError names the argument that answers for it
            option = _CAPTIONS_OPTIONS.get(getattr(error, "argument", None), "--captions")
            parser.error(f"argument {option}: {error}")
        parser.error(
            f"argument --images: expected an image folder, got {args.images!r} (no file ending in one of "
            f"{', '.join(IMAGE_EXTENSIONS)} under it{parquet_hint(args.images)})"
        )
    if (
        classes is None and split is None and getattr(folder, "format", None) == "karpathy"
    ):  # (said before hours of encoding)
        print(
            f"warning: {args.captions} is a Karpathy split file and no --split was given: the {len(folder)} "
            "captions of every split (train included) are evaluated; --split test keeps the test set",
            file=sys.stderr,
        )
    # (the split column of parquet --captions, Flickr30k's on the Hub)
    held = getattr(folder, "held_splits", ()) if classes is None and split is None else ()
    if len(held) > 1:
        print(
            f"warning: the split column of the parquet --captions holds {len(held)} splits ({', '.join(held)}) and no "
            f"--split was given: the {len(folder)} captions of every split are evaluated; --split names those to keep",
            file=sys.stderr,
        )
    if args.folder_order:  # the folders counted against the classes, before the checkpoint is loaded
        try:
            class_folders_ordered = list(ordered_folders(args.images, len(classes), listed))
        except ValueError as error:
            parser.error(f"argument --folder-order: {str(error).removeprefix('folder_order: ')}")
    if own_labels and classes is not None:
        warning = repeated_names_warning(classes, [f"id {i}" for i in range(len(classes))])
        if warning:
            print(warning, file=sys.stderr)
    elif classes is not None and labelled_by_folder:
        warning = repeated_names_warning(classes, class_folders_ordered if class_folders is None else class_folders)
        if warning:
            print(warning, file=sys.stderr)
    pretrained = command_pretrained(args)  # (a weights file alone: its --tokenizer, and --activation)
    if classes is not None:
        result = classify_folder(
            pretrained,
            args.images if not own_labels else source,
            classes,
            args.templates or DEFAULT_TEMPLATES,
            batch_size=args.batch_size,
            folder_order=args.folder_order,
            class_folders=class_folders,
            top_k=args.top_k,
            probabilities_file=args.all_probabilities,
            labels=args.labels,
        )
        result = json_result(result)  # (what --json holds, and main returns)
        for file, name in sorted(result["predictions"].items()):
            print(f"{file}\t{name}")
        summary = f"{result['num_inputs']} images, {result['skipped']} unreadable skipped"
        print(summary + accuracy_summary(result))
        if class_folders is None:
            warning = unmatched_folders_warning(result["predictions"], classes, folder_order_hint=True)
        else:
            warning = unmatched_folders_warning(result["predictions"], class_folders, listed_folders=True)
        if "accuracy" not in result and warning and args.labels is None and not own_labels:
            print(warning, file=sys.stderr)
    else:
        result = _folder_retrieval(pretrained, folder, args.batch_size)  # (the file read and checked above)
        print(f"{result['num_pairs']} pairs, {result['skipped']} skipped")
        recalls = [k for k in result if "R@" in k and "chance" not in k]
        for key in sorted(recalls, key=lambda k: (int(k.split("@")[1]), k)):  # R@1, R@5, R@10 (not R@10 first)
            print(f"  {key}: {percent(result[key])}  (chance {percent(result[f'{key}_chance'])})")
    # what was evaluated: a run's export file, or the step_<N> its latest checkpoint resolved to
    result.update(command_inputs(args, pretrained))  # (and a weights file alone's --tokenizer and --activation)
    return finish_command(result, result["skipped_reasons"], args.json)


if __name__ == "__main__":
    keep_freed_memory()  # a command's own process: freed activations stay for the next batch (utils.memory)
    run_command(main)
