"""Labelled data for fine-tuning and probes: GLUE-style TSV text, image class folders, image+text
jsonl (class labels or VQA-style soft answer scores), and the built-in shapes classification task.

Every source is a map-style dataset of :class:`LabeledSample`; an unusable item raises
:class:`~torchflava.data.samples.BadSample` (skipped and counted by the batch builder), a TSV row of
the wrong number of fields included, while a malformed file (missing column, unknown label) is an
error at construction naming what is wrong.
"""

from collections import Counter
import csv
import json
import math
import numbers
import os
import re
from typing import Callable, NamedTuple, Optional, Sequence, Union
import unicodedata

from PIL import Image
import torch
from torch import Tensor
from torch.utils.data import Dataset

from torchflava.data.decode import DEFAULT_MAX_PIXELS
from torchflava.data.readers import ImageFolder, existing_path, read_image
from torchflava.data.samples import BadSample, checked_text
from torchflava.data.shapes import ALL_SCENES, CLASS_NAMES, ShapesWorld
from torchflava.data.shapes import MAX_LENGTH as SHAPES_MAX_LENGTH
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import EvalImageTransform, ImageTransform
from torchflava.utils.checks import check_int

PathLike = Union[str, os.PathLike]


def _names(name: str, values: object, what: str) -> list:
    """``values`` as a list if it is a sequence (in id order) of at least one distinct name (a str); else
    TypeError (a str, read letter by letter, not a sequence, or holding another type) or ValueError
    (empty, or repeating a name, which left an id without a class) naming ``name`` and ``what`` it lists."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list of {what} names, got {type(values).__name__} {values!r:.80}")
    values = list(values)
    if not values:
        raise ValueError(f"{name} must name at least one {what}, got none")
    # names, as files hold them: an int one matched no TSV field or JSON answer key (each row refused, or
    # every score 0), and a JSON label true or 1.0 was taken for the class 1
    for position, value in enumerate(values):
        if not isinstance(value, str):
            raise TypeError(
                f"{name} must hold {what} names (str), got {type(value).__name__} {value!r:.40} at position {position}"
            )
    repeated = [value for value, count in Counter(values).items() if count > 1]
    if repeated:
        raise ValueError(f"{name} must name each {what} once, got {repeated} more than once")
    return values


class LabeledSample(NamedTuple):
    """An input (image, text or both) and its target.

    Attributes:
        image (Optional[Image.Image]): RGB image, or None.
        text (Optional[Union[str, tuple[str, str]]]): a text, a sentence pair (its two sentences, encoded
            as BERT's two segments), or None.
        label (Optional[Union[int, float, Tensor]]): class id, regression target, or (C,) soft scores;
            None for an unlabelled file (a GLUE test file read by :class:`GlueTsv`).
    """

    image: Optional[Image.Image]
    text: Optional[Union[str, tuple[str, str]]]
    label: Optional[Union[int, float, Tensor]]


class GlueTsv(Dataset):
    """A GLUE-format TSV file (tab-separated, no quoting): one or two text columns, a label column and
    optionally an index column, named by a header row or, for a file without one (CoLA's train.tsv and
    dev.tsv), by ``columns``. It reads both fine-tuning files and the files ``python -m
    torchflava.classify --tsv`` classifies (a test file: no label column; GLUE's ``index`` column).

    A row with another number of fields than the header (or ``columns``) names, or a blank text field,
    is unusable: its item raises :class:`~torchflava.data.samples.BadSample` naming the line (QQP's
    train.tsv has a few), to be skipped and counted like any unusable item. Blank lines are no rows.

    Args:
        path (PathLike): the ``.tsv`` file.
        text_columns (Sequence[str]): one column (the item's text a str), or two (a sentence pair: the
            item's text a tuple of the two sentences).
        label_column (str): the label column.
        labels (Optional[Sequence[str]]): distinct label names in class-id order; None reads the labels
            as float regression targets (e.g. STS-B).
        columns (Optional[Sequence[str]]): the names of the file's columns in order, for a file
            without a header row; None: the first row is the header.
        label_required (bool): False: a file without ``label_column`` reads as unlabelled (each item's
            label None, :attr:`labelled` False), as a GLUE test file.
        index_column (Optional[str]): a column whose values are the rows' :attr:`indices` where the file
            has it (GLUE's ``index``); else, and for None, the indices are the row numbers from 0.

    Attributes:
        labelled (bool): whether the file has the label column.
        indices (list[str]): each row's index (see ``index_column``), unusable rows included.

    Raises:
        FileNotFoundError: if ``path`` is not an existing file.
        TypeError: if ``path`` is not a path, ``labels``, ``text_columns`` or ``columns`` not a list of names.
        ValueError: if the file is not UTF-8 text, a column read is missing from or named twice in the
            header (or ``columns``), there are no rows, ``text_columns`` has not 1 or 2 distinct names or
            holds the label column, ``labels`` is empty or repeats a name, the first row of a file read
            with ``columns`` is a header, or a label is unknown (classification) or not a number
            (regression) — naming the row and its line.
    """

    item_noun = "a row"  # (what a class lacks, for :func:`empty_classes_warning`)

    def __init__(
        self,
        path: PathLike,
        text_columns: Sequence[str],
        label_column: str,
        labels: Optional[Sequence[str]] = None,
        *,
        columns: Optional[Sequence[str]] = None,
        label_required: bool = True,
        index_column: Optional[str] = None,
    ) -> None:
        path = existing_path("path", path, directory=False)
        text_columns = _names("text_columns", text_columns, "column")
        if len(text_columns) > 2:
            raise ValueError(f"text_columns must name 1 or 2 columns, got {text_columns!r}")
        if label_column in text_columns:  # the label would be the input
            raise ValueError(f"text_columns must not hold the label_column {label_column!r}, got {text_columns}")
        if columns is not None:
            columns = _names("columns", columns, "column")
            wanted = (*text_columns, label_column) if label_required else text_columns
            if missing := [c for c in wanted if c not in columns]:
                raise ValueError(f"columns must hold the text and label columns, {missing} are not among {columns}")
        self.labels = None if labels is None else _names("labels", labels, "label")
        self._where = os.fspath(path)
        rows = self._rows(path)
        headerless = columns is not None
        if headerless:
            self._refuse_header(rows, columns, [label_column] if label_column in columns else text_columns)
        else:
            columns = self._header(rows, text_columns, label_column, label_required)
        if not rows:
            raise ValueError(f"{self._where}: expected rows{'' if headerless else ' below the header'}, got none")
        self.labelled = label_column in columns
        index = columns.index(index_column) if index_column in columns else None
        self.indices = [str(row) if index is None else fields[index] for row, (_, fields) in enumerate(rows)]
        self._columns, self._text_columns, self._label_column = columns, text_columns, label_column
        # (texts, label) of each usable row; the reason an unusable row cannot be used
        self._items: list[Union[tuple[list, Optional[Union[int, float]]], str]] = [
            self._item(row, line, fields) for row, (line, fields) in enumerate(rows)
        ]

    def _rows(self, path: str) -> list[tuple[int, list[str]]]:
        """(line number, fields) of each non-blank line of the file: the file's line numbers, blank lines counted. A
        line of spaces and tabs alone is blank too (an editor's trailing line was an unusable row, named in the
        report as skipped), as the other readers' files take it."""
        try:  # utf-8-sig: a byte-order mark is not part of the first column's name
            with open(path, encoding="utf-8-sig", newline="") as file:
                reader = csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
                return [(reader.line_num, row) for row in reader if any(field.strip() for field in row)]
        except UnicodeDecodeError as error:
            raise ValueError(
                f"expected a readable UTF-8 TSV file, got {self._where!r} ({error.reason} at byte {error.start})"
            ) from None
        except csv.Error as error:  # e.g. a field longer than the csv module's limit (131072 characters)
            raise ValueError(f"{self._where} line {reader.line_num}: {error}") from None

    def _header(self, rows: list, text_columns: list, label_column: str, label_required: bool) -> list[str]:
        """The header row, popped from ``rows``; ValueError when it lacks a column read (the label column
        only if ``label_required``) or names one twice."""
        first, header = rows.pop(0) if rows else (1, [])
        wanted = (*text_columns, label_column)
        if missing := [c for c in wanted if c not in header and (c != label_column or label_required)]:
            hint = ""
            if any(self._parses(field) is not None for field in header):  # a label for a column name
                hint = f"; line {first} reads as data: a file without a header row needs its columns named"
            raise ValueError(f"{self._where}: missing column(s) {missing}; the header has {header}{hint}")
        if repeated := [c for c in wanted if header.count(c) > 1]:  # which one would be read?
            raise ValueError(f"{self._where}: the header names column(s) {repeated} more than once")
        return header

    def _refuse_header(self, rows: list, columns: list, named: list) -> None:
        """ValueError when the first of ``rows`` of a file read by its ``columns`` is a header row: it
        holds the ``named`` columns' names where ``columns`` place them."""
        first = rows[0][1] if rows else []
        if len(first) == len(columns) and all(first[columns.index(c)] == c for c in named):
            raise ValueError(
                f"{self._where} line {rows[0][0]}: {first} is a header row; columns name the columns of a file "
                "without one"
            )

    def _item(self, row: int, line: int, fields: list) -> Union[tuple[list, Optional[Union[int, float]]], str]:
        """Row ``row`` (on ``line``) as (texts, label), or why it is unusable; ValueError for a bad label."""
        columns, text_columns, label_column = self._columns, self._text_columns, self._label_column
        if len(fields) != len(columns):  # fields lost or split by a stray tab: none can be trusted
            return (
                f"{self._where} line {line}: expected {len(columns)} fields, got {len(fields)} (the columns {columns})"
            )
        texts = [fields[columns.index(c)] for c in text_columns]
        try:  # (here, not at the item: the line is named, and a classifier refuses it before its weights load)
            texts = [checked_text(text, row) for text in texts]
        except BadSample:
            return f"{self._where} line {line}: expected a text in each of {text_columns}, got {texts}"
        if not self.labelled:
            return texts, None
        raw = fields[columns.index(label_column)]
        label = self._parses(raw)
        if label is None:  # ("nan" and "inf" parse as floats: a NaN loss later)
            expected = (
                "a finite number (a regression)" if self.labels is None else f"one of the class names {self.labels}"
            )
            raise ValueError(
                f"{self._where}: column {label_column!r} row {row}: expected {expected}, got {raw!r} (line {line})"
            )
        return texts, label

    def _parses(self, raw: str) -> Optional[Union[int, float]]:
        """The label ``raw`` names (a class id, or a finite regression target), or None."""
        if self.labels is not None:
            return self.labels.index(raw) if raw in self.labels else None
        if "_" in raw:  # (float reads "1_000" as 1000.0: a typo in a score column, not a number)
            return None
        try:
            label = float(raw)
        except ValueError:
            return None
        return label if math.isfinite(label) else None

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> LabeledSample:
        item = self._items[index]
        if isinstance(item, str):
            raise BadSample(index, item)
        texts, label = item  # (texts checked when read)
        return LabeledSample(None, tuple(texts) if len(texts) == 2 else texts[0], label)

    @property
    def empty_classes(self) -> list[str]:
        """The classes of ``labels`` no usable row is labelled with (MNLI's ``neutral`` listed for a file without
        it); none for regression targets or an unlabelled file."""
        if self.labels is None or not self.labelled:
            return []
        present = {item[1] for item in self._items if not isinstance(item, str)}
        return [name for i, name in enumerate(self.labels) if i not in present]


class ImageClassFolder(Dataset):
    """Images in one sub-folder per class (``root/<class>/<file>``), classes in sorted order.

    A folder is the class of the same name in Unicode's composed form (NFC): macOS names a folder
    ``café`` with ``e`` and a combining accent, Linux and Windows with ``é``, so a split copied from
    one is still read with the class names of the other.

    Args:
        root (PathLike): the folder.
        classes (Optional[Sequence[str]]): distinct class names in id order (so that a validation
            folder uses the training ids); by default the sorted sub-folder names (empty ones included).

    Raises:
        TypeError: if ``classes`` is not a list of names.
        ValueError: if ``classes`` is empty or repeats a name (also in NFC: two sub-folders so named
            included), or an image lies outside a class sub-folder or in a folder not in ``classes``.
    """

    item_noun = "an image"  # (what a class lacks, for :func:`empty_classes_warning`)

    def __init__(self, root: PathLike, classes: Optional[Sequence[str]] = None) -> None:
        if classes is not None:
            classes = _names("classes", classes, "class")
        self._folder = ImageFolder(root)
        # (a hidden folder, .thumbnails or .ipynb_checkpoints, is no class, here or in another split: ImageFolder
        # leaves its images out, and the sub-folders below are listed without it, so class ids cannot shift)
        paths = [self._folder.relative_path(i) for i in range(len(self._folder))]
        folders = [path.split("/")[0] for path in paths]
        loose = [path for path in paths if "/" not in path]
        if loose:
            raise ValueError(f"root: images must lie in class sub-folders, found {loose[:3]}")
        named = "classes" if classes is not None else "root: sub-folders"  # (who gave the names, for an error)
        if classes is None:  # every sub-folder, an empty one too: ids must not shift with the files present
            subfolders = {e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")}
            classes = sorted(subfolders | set(folders))
        self.classes = list(classes)
        ids: dict[str, int] = {}  # class name in NFC -> class id
        for position, name in enumerate(self.classes):
            if ids.setdefault(unicodedata.normalize("NFC", name), position) != position:
                twin = self.classes[ids[unicodedata.normalize("NFC", name)]]
                raise ValueError(
                    f"{named} must name distinct classes in Unicode's composed form (NFC), got {twin!r} and "
                    f"{name!r}, one name written in two ways ({ascii(twin)} and {ascii(name)})"
                )
        unknown = sorted({f for f in folders if unicodedata.normalize("NFC", f) not in ids})
        if unknown:
            raise ValueError(f"root: folders {unknown} are not among the classes {self.classes}")
        self._labels = [ids[unicodedata.normalize("NFC", f)] for f in folders]

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> LabeledSample:
        return LabeledSample(self._folder[index].image, None, self._labels[index])

    @property
    def empty_classes(self) -> list[str]:
        """The classes no image of the folder is labelled with (an empty sub-folder, a class named but absent)."""
        present = set(self._labels)
        return [name for i, name in enumerate(self.classes) if i not in present]


def empty_classes_warning(source: Dataset, key: str) -> Optional[str]:
    """A one-line warning naming the classes of training ``source`` (read from the config key ``key``) that no
    item is labelled with, None where every class has one (or ``source`` has no ``empty_classes``): such a class
    still has a row of the classifier, never trained towards, and counts in chance (a stray empty folder, which
    torchvision's ImageFolder refuses, or a GLUE class only the dev file holds). The items are named by the
    source's ``item_noun`` (an :class:`ImageClassFolder`'s images, a :class:`GlueTsv`'s rows, an
    :class:`ImageTextLabels`' lines)."""
    empty = getattr(source, "empty_classes", [])
    if not empty:
        return None
    shown = ", ".join(repr(name) for name in empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
    noun = getattr(source, "item_noun", "an item")
    return (
        f"warning: {key}: {len(empty)} class(es) without {noun}, kept as classes (an output of the classifier, "
        f"counted in chance): {shown}"
    )


class ImageTextLabels(Dataset):
    """Image + text + target from a jsonl file: VQA, SNLI-VE, Hateful Memes style.

    Each line holds ``image`` (path under ``root``; Hateful Memes' ``img`` where there is no ``image``),
    ``text`` (question, hypothesis or meme text) and either ``label`` (a name in ``labels``; a JSON integer,
    as Hateful Memes' ``0`` and ``1``, names the class written so, ``"0"``, never a bool or ``1.0``) or
    ``answers`` (``{"answer": score}``, scores in [0, 1]: the target is the (C,) score vector over
    ``labels``; answers outside ``labels`` are dropped). SNLI-VE's lines are read as distributed
    (``snli_ve_*.jsonl``): where a line has none of those keys, its image is ``<Flickr30K_ID>.jpg`` under
    ``root`` (Flickr30k's images), its text the hypothesis ``sentence2`` and its label ``gold_label``.

    Args:
        root (PathLike): image directory.
        path (PathLike): the jsonl file.
        labels (Sequence[str]): distinct class or answer names in id order.

    Raises:
        FileNotFoundError: if ``root`` is not an existing directory or ``path`` an existing file.
        TypeError: if ``labels`` is not a list of names.
        ValueError: if ``labels`` is empty or repeats a name; on malformed lines, unknown labels or
            scores outside [0, 1], naming the line.
    """

    item_noun = "a line"  # (what a class lacks, for :func:`empty_classes_warning`)

    def __init__(self, root: PathLike, path: PathLike, labels: Sequence[str]) -> None:
        self.root = existing_path("root", root, directory=True)  # (each item would be unusable)
        path = existing_path("path", path, directory=False)
        self.labels = _names("labels", labels, "label")
        self._ids = {name: i for i, name in enumerate(self.labels)}  # (labels.index scanned VQA's 3129 per answer)
        # (image, text, target): a class id, or answer scores as {answer id: score}, made a (C,) tensor when read
        # (a tensor a line held VQA's 443,757 training questions' 3129 scores: 5.6 GB, in every rank and worker)
        self._items: list[tuple[str, object, Union[int, dict[int, float]]]] = []
        self._places: list[str] = []  # "<path> line <n>" of each item, for the reasons of its bad samples
        try:
            with open(path, encoding="utf-8-sig") as file:
                lines = file.read().split("\n")
        except UnicodeDecodeError as error:
            raise ValueError(f"{os.fspath(path)} is not UTF-8 text ({error.reason} at byte {error.start})") from None
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{os.fspath(path)} line {line_number}"
            try:
                record = _snli_ve_record(json.loads(line))
                # (Hateful Memes' lines name their image "img": {"id", "img", "label", "text"})
                image, text = record["image" if "image" in record or "img" not in record else "img"], record["text"]
            except (ValueError, KeyError, TypeError, RecursionError) as error:  # (RecursionError: nested too deeply)
                raise ValueError(
                    f"{where}: needs 'image' (or 'img') and 'text', or SNLI-VE's 'Flickr30K_ID' and 'sentence2' "
                    f"({error})"
                ) from None
            if not isinstance(image, str) or not image:
                raise ValueError(f"{where}: 'image' must be a path relative to root, got {image!r}")
            self._items.append((image, text, self._target(record, where)))
            self._places.append(where)
        if not self._items:
            raise ValueError(f"{os.fspath(path)} holds no items")
        if len({isinstance(target, dict) for _, _, target in self._items}) > 1:  # a batch needs one kind
            raise ValueError(f"{os.fspath(path)}: expected 'label' on every line or 'answers' on every line, got both")
        if self.soft_scores and not any(any(target.values()) for _, _, target in self._items):
            # (answers outside labels are dropped: with none kept, every target is zero and the run learns nothing)
            raise ValueError(
                f"{os.fspath(path)}: expected answers among the labels {self.labels[:10]}, got none on any line"
            )

    @property
    def soft_scores(self) -> bool:
        """Whether the targets are answer-score vectors (VQA style) rather than class ids."""
        return isinstance(self._items[0][2], dict)

    @property
    def empty_classes(self) -> list[str]:
        """The classes of ``labels`` no line's ``label`` names; none for answer scores (an answer no line scores is
        still a target, learnt as 0, as VQA's answer lists drawn from several splits hold many)."""
        if self.soft_scores:
            return []
        present = {target for _, _, target in self._items}
        return [name for i, name in enumerate(self.labels) if i not in present]

    def _target(self, record: dict, where: str) -> Union[int, dict[int, float]]:
        if "answers" in record:
            answers = record["answers"]
            if not isinstance(answers, dict):
                raise ValueError(f"{where}: 'answers' must be an object of answer -> score, got {answers!r:.60}")
            scores = {}
            for answer, score in answers.items():
                if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
                    raise ValueError(f"{where}: answer score {score!r} is not a number in [0, 1]")
                if answer in self._ids:
                    scores[self._ids[answer]] = float(score)
            return scores
        label = record.get("label")
        if type(label) is int:  # Hateful Memes' 0 and 1 name the classes "0" and "1" (True and 1.0 name none)
            label = str(label)
        if not isinstance(label, str) or label not in self._ids:
            raise ValueError(f"{where}: label {record.get('label')!r} is not one of {self.labels}")
        return self._ids[label]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> LabeledSample:
        image, text, target = self._items[index]
        if isinstance(target, dict):  # answer scores: the (C,) vector
            scores = torch.zeros(len(self.labels))
            scores[list(target)] = torch.tensor(list(target.values()))
            target = scores
        where = self._places[index]  # (a reason without it named no file: "unreadable image (... truncated)")
        path = os.path.normpath(os.path.join(self.root, image))
        if os.path.commonpath([self.root, path]) != self.root:
            raise BadSample(index, f"{where}: image path {image!r} leaves root")
        try:
            text = checked_text(text, index)
        except BadSample as bad:
            raise BadSample(index, f"{where}: {bad.reason}") from None
        return LabeledSample(read_image(path, index, f"{where}: {image}", DEFAULT_MAX_PIXELS), text, target)


def _snli_ve_record(record: object) -> object:
    """An SNLI-VE line (``Flickr30K_ID``, ``sentence2``, ``gold_label``, no ``image``/``img``/``text``) in
    :class:`ImageTextLabels`' keys: image ``<Flickr30K_ID>.jpg``, text ``sentence2``, label ``gold_label``;
    any other record as it is. KeyError for such a line without ``sentence2``, TypeError for an id that is
    no string or integer."""
    if not isinstance(record, dict) or "Flickr30K_ID" not in record or {"image", "img", "text"} & record.keys():
        return record
    image = record["Flickr30K_ID"]
    if isinstance(image, bool) or not isinstance(image, (str, int)) or image == "":
        raise TypeError(f"'Flickr30K_ID' must be a Flickr30k image id, got {image!r:.60}")
    snli = {"image": f"{image}.jpg", "text": record["sentence2"]}
    return {**record, **snli, **({"label": record["gold_label"]} if "gold_label" in record else {})}


class ShapesClassification(Dataset):
    """The built-in shapes world as a 30-class colour-shape image classification task.

    Args:
        split (str): a :class:`ShapesWorld` split (``"pairs"`` for training, ``"test"`` held out).
        length (int): number of items.
        image_size (int): rendered size.
        seed (int): world seed.
    """

    classes = CLASS_NAMES

    def __init__(self, split: str, length: int, *, image_size: int = 64, seed: int = 0) -> None:
        self._world = ShapesWorld(split, length, image_size=image_size, seed=seed)

    def __len__(self) -> int:
        return len(self._world)

    def __getitem__(self, index: int) -> LabeledSample:
        return LabeledSample(self._world[index].image, None, CLASS_NAMES.index(self._world.scene(index).label))


def shapes_task_checks(num_train: int, num_val: int, image_size: int) -> list[tuple]:
    """A fine-tuning recipe's ``(ok, key, expected, got)`` checks of the shapes task's sizes (``data.shapes_train``,
    ``data.shapes_val``, ``data.image_size``): as many training scenes as the world draws, held-out ones among its
    held-out split, images of 8 px or more."""
    return [
        (1 <= num_train <= SHAPES_MAX_LENGTH, "data.shapes_train", f"in [1, {SHAPES_MAX_LENGTH:,}]", num_train),
        (1 <= num_val <= len(ALL_SCENES), "data.shapes_val", f"in [1, {len(ALL_SCENES)}]", num_val),
        (image_size >= 8, "data.image_size", ">= 8", image_size),
    ]


def training_source_key(task: str) -> str:
    """The config key that sets a fine-tuning recipe's training source (and so its size, which a resume checks):
    ``data.shapes_train`` for the shapes task, ``data.train`` (the files) for every other."""
    return "data.shapes_train" if task == "shapes" else "data.train"


def unread_task_key_checks(
    section: object, task: str, read_by: dict[str, Sequence[str]], *, recorded: Optional[dict] = None
) -> list[tuple]:
    """A fine-tuning recipe's ``(ok, key, expected, got)`` checks that the data keys the task ``task`` does not read
    hold their defaults: ``read_by`` maps each key of the data section ``section`` (a dataclass) that only some
    tasks read to those tasks. A key set otherwise for another task (``data.image_size`` or ``data.image_root``
    for a GLUE task) was silently ignored, the run trained as if it were not set. ``recorded`` maps a key whose
    null default the recipe resolves for every task (``data.max_text_length``) to the value it resolves it to, also
    accepted: a run records that value in its config.yaml, which must still load.
    """
    defaults, recorded = type(section)(), recorded or {}
    checks = []
    for name, tasks in read_by.items():
        value, default = getattr(section, name), getattr(defaults, name)
        if task not in tasks and value != default and (name not in recorded or value != recorded[name]):
            readers = " or ".join(f"data.task={t}" for t in tasks)
            shown = "null" if default is None else repr(default)
            if name in recorded:
                shown += f" (or {recorded[name]!r}, which a run records)"
            expected = f"its default, {shown}, since data.task={task} does not read it (only {readers} does)"
            checks.append((False, f"data.{name}", expected, value))
    return checks


SYNSET_ID = re.compile(r"n\d{8}")  # a WordNet synset id, as ImageNet names its class folders (n01440764: tench)


def synset_folders_warning(folders: Sequence[str], key: str) -> Optional[str]:
    """A one-line warning where every class folder is named by a WordNet synset id (ImageNet's ``n01440764/``...)
    and the class names are those folder names (the config key ``key`` null): the prompts then read "a photo of a
    n01440764.", which no text tower was trained on, so a head built from them starts near chance. None otherwise."""
    if not folders or not all(SYNSET_ID.fullmatch(name) for name in folders):
        return None
    shown = ", ".join(folders[:3]) + (", ..." if len(folders) > 3 else "")
    return (
        f"warning: {key}: null, so the class names are the folders' WordNet synset ids ({shown}) and the prompts "
        f'read "a photo of a {folders[0]}.": set {key} to the class names, one per folder in sorted order '
        "(ImageNet's: tench, goldfish, ...)"
    )


def shapes_task_splits(num_train: int, num_val: int, image_size: int) -> tuple:
    """The shapes task's training and held-out validation sources and its 30 class names."""
    train = ShapesClassification("pairs", num_train, image_size=image_size)
    return train, ShapesClassification("test", num_val, image_size=image_size), list(train.classes)


class ClassificationCollator:
    """Samples -> ``{"image", "text", "text_attention_mask", "token_type_ids", "labels"}`` tensors (absent
    inputs omitted; ``token_type_ids`` for sentence pairs only).

    Images go through ``image_transform`` (the checkpoint's own preprocessing, e.g.
    :attr:`~torchflava.pretrained.Pretrained.image_transform`), else :class:`EvalImageTransform`
    (resize, centre crop, CLIP normalisation); text is padded to the longest row, a sentence pair encoded
    as BERT's ``[CLS] a [SEP] b [SEP]`` with token types 0 and 1 and truncated longest first (what
    ``BertTokenizerFast`` gives for ``text_pair``). Called as the
    collator of :class:`~torchflava.data.mixing.MixedBatches` (with one source).

    Args:
        tokenizer (Optional[WordPieceTokenizer]): needed for text inputs.
        image_size (int): model image size.
        max_text_length (Optional[int]): most ids per text row (>= 2; >= 3 for sentence pairs); None: the
            tokenizer's own limit.
        image_transform (Optional[ImageTransform]): PIL image -> (3, image_size, image_size) pixels;
            None: ``EvalImageTransform(image_size)``.
        sentence_pairs (Optional[bool]): whether every text is a sentence pair (True) or a single text
            (False); a batch of the other kind is refused. None: either, as each batch comes.

    Raises:
        TypeError: if ``tokenizer`` is not callable, ``image_transform`` not an ImageTransform, or
            ``sentence_pairs`` not a bool or None.
        ValueError: if ``max_text_length`` < 2 (< 3 with ``sentence_pairs=True``), or ``image_transform``
            gives images of another size.
    """

    def __init__(
        self,
        tokenizer: Optional[WordPieceTokenizer],
        *,
        image_size: int,
        max_text_length: Optional[int] = 128,
        image_transform: Optional[ImageTransform] = None,
        sentence_pairs: Optional[bool] = None,
    ):
        if tokenizer is not None and not callable(tokenizer):
            raise TypeError(f"tokenizer must be a tokenizer (callable) or None, got {type(tokenizer).__name__}")
        if sentence_pairs is not None and not isinstance(sentence_pairs, bool):
            raise TypeError(f"sentence_pairs must be a bool or None, got {type(sentence_pairs).__name__}")
        if max_text_length is not None:  # (None: the tokenizer's own model_max_length)
            # [CLS] and [SEP] at least; [CLS] a [SEP] b [SEP] for pairs (refused here, not at the first batch)
            check_int("max_text_length", max_text_length, 3 if sentence_pairs else 2)
        if image_transform is None:
            image_transform = EvalImageTransform(image_size)
        elif not isinstance(image_transform, ImageTransform):
            raise TypeError(f"image_transform must be an ImageTransform or None, got {type(image_transform).__name__}")
        elif image_transform.output_size != (image_size, image_size):  # (the model's positions: its error, deep)
            raise ValueError(
                f"image_transform must give {image_size} x {image_size} images (image_size), got output size "
                f"{image_transform.output_size}"
            )
        self.tokenizer, self.transform, self.max_text_length = tokenizer, image_transform, max_text_length
        self.sentence_pairs = sentence_pairs

    def __call__(
        self, kind: str, samples: Sequence[LabeledSample], seeds: Sequence[int], *, another: Optional[Callable] = None
    ) -> dict:
        """The batch of ``samples`` (``kind``, ``seeds`` and ``another`` are unused: no randomness here).

        Raises:
            TypeError: if a label is not an int, a float or a tensor.
            ValueError: if there are no samples, some have an image or a text and others not, a batch
                mixes sentence pairs with single texts, or score tensors with numbers, or a label is not finite, a class id below 0, or a
                score tensor not 1-D of the shape of the others; if the texts are not of the kind
                ``sentence_pairs`` states, or are pairs while ``max_text_length`` < 3.
        """
        if not samples:
            raise ValueError("samples: expected at least one sample, got none")
        batch = {}
        # every sample the layout of the first (a mixed one dropped the other rows' images or texts)
        for field in ("image", "text"):
            given = [getattr(s, field) is not None for s in samples]
            if any(given) and not all(given):
                raise ValueError(
                    f"samples: expected a {field} field in every sample of a batch or in none, got {given}"
                )
        if samples[0].image is not None:
            batch["image"] = torch.stack([self.transform(s.image) for s in samples])
        if samples[0].text is not None:
            if self.tokenizer is None:
                raise ValueError("samples have text but this ClassificationCollator was built with tokenizer=None")
            batch.update(self._text(samples))
        batch["labels"] = _label_tensor([s.label for s in samples])
        return batch

    def _text(self, samples: Sequence[LabeledSample]) -> dict:
        """The text inputs of ``samples``: ids and attention mask, and token types for sentence pairs."""
        pairs = [isinstance(s.text, tuple) for s in samples]
        if self.sentence_pairs is not None and any(pairs) != self.sentence_pairs:
            expected, got = ("sentence pairs", "single texts") if self.sentence_pairs else ("single texts", "pairs")
            raise ValueError(f"samples: expected {expected} (sentence_pairs={self.sentence_pairs}), got {got}")
        if not any(pairs):  # (no token types: a single text's numerics are those of every earlier run)
            ids, mask = self.tokenizer([s.text for s in samples], max_length=self.max_text_length)
            return {"text": ids, "text_attention_mask": mask}
        if not all(pairs) or any(len(s.text) != 2 for s in samples):
            shapes = [len(s.text) if isinstance(s.text, tuple) else "str" for s in samples]
            raise ValueError(
                f"samples: expected a sentence pair (2 str) as every text of a batch or none, got {shapes}"
            )
        if self.max_text_length is not None and self.max_text_length < 3:  # (the tokenizer names its max_length)
            raise ValueError(
                f"max_text_length must be >= 3 for a batch of sentence pairs ([CLS] a [SEP] b [SEP]), got "
                f"{self.max_text_length}"
            )
        ids, mask, types = self.tokenizer.encode_pairs(
            [s.text[0] for s in samples], [s.text[1] for s in samples], max_length=self.max_text_length
        )
        return {"text": ids, "text_attention_mask": mask, "token_type_ids": types}


def _label_tensor(labels: list) -> Tensor:
    """The labels of a batch as one tensor: (B, C) score vectors, (B,) float regression targets (any float
    among them: 1.5 was cast to 1) or (B,) long class ids; TypeError / ValueError naming the sample whose
    label is not one of those kinds, breaks the batch's kind or shape, is not finite or is a class id < 0."""
    # (numpy's integer and float scalars are numbers.Integral / numbers.Real: a label from an array)
    labels = [int(x) if isinstance(x, numbers.Integral) and not isinstance(x, bool) else x for x in labels]
    labels = [float(x) if isinstance(x, numbers.Real) and not isinstance(x, (int, bool)) else x for x in labels]
    for row, label in enumerate(labels):
        if isinstance(label, bool) or not isinstance(label, (int, float, Tensor)):
            raise TypeError(
                f"samples[{row}].label must be a class id (int), a target (float) or a score tensor, "
                f"got {type(label).__name__} {label!r:.40}"
            )
    if any(isinstance(label, Tensor) for label in labels):
        if not all(isinstance(label, Tensor) for label in labels):  # (a deep TypeError in torch.tensor)
            kinds = [type(label).__name__ for label in labels]
            raise ValueError(f"samples: expected score tensors for every label of a batch or for none, got {kinds}")
        for row, label in enumerate(labels):
            if label.dim() != 1:  # (a 0-d class id was told to have the shape of samples[0]'s, ())
                raise ValueError(
                    f"samples[{row}].label must be a 1-D score tensor or a class id (int, e.g. "
                    f"tensor.item()), got a {label.dim()}-D tensor of shape {tuple(label.shape)}"
                )
            if label.shape != labels[0].shape:
                raise ValueError(
                    f"samples[{row}].label must be a 1-D score tensor of the shape of samples[0]'s "
                    f"{tuple(labels[0].shape)}, got shape {tuple(label.shape)}"
                )
            if not torch.isfinite(label).all():
                raise ValueError(f"samples[{row}].label must hold finite scores, got {label.tolist()}")
        return torch.stack(labels)
    for row, label in enumerate(labels):
        if isinstance(label, float) and not math.isfinite(label):  # a NaN target makes every loss NaN
            raise ValueError(f"samples[{row}].label must be finite, got {label}")
    if any(isinstance(label, float) for label in labels):
        return torch.tensor(labels, dtype=torch.float32)
    if bad := [(row, label) for row, label in enumerate(labels) if label < 0]:
        raise ValueError(f"samples[{bad[0][0]}].label must be a class id >= 0, got {bad[0][1]}")
    return torch.tensor(labels, dtype=torch.long)
