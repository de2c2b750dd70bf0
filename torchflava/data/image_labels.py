"""A flat folder of images labelled by a file, as ImageNet's validation set is distributed.

``ILSVRC2012_img_val.tar`` extracts to 50,000 files ``ILSVRC2012_val_00000001.JPEG``... in one folder;
their classes are in a separate file: Kaggle's ``LOC_val_solution.csv`` (header ``ImageId,PredictionString``,
rows ``ILSVRC2012_val_00008726,n02119789 255 142 454 329 ...``: the image's name without its extension, then
its synset and boxes), or one a user writes, ``FILE<TAB>CLASS`` or ``FILE,CLASS`` lines without a header.
:class:`LabelledImageFolder` reads such a folder as :class:`~torchflava.data.finetuning.ImageClassFolder`
reads one sub-folder per class, with no file moved.
"""

import csv
import os
from typing import Callable, NamedTuple, Optional, Sequence
import unicodedata

from torch.utils.data import Dataset

from torchflava.data.finetuning import LabeledSample
from torchflava.data.readers import IMAGE_EXTENSIONS, ImageFolder, PathLike, check_index, existing_path
from torchflava.data.samples import BadSample

KAGGLE_HEADER = ("ImageId", "PredictionString")  # LOC_val_solution.csv's (and LOC_train_solution.csv's) header


class _Row(NamedTuple):
    file: Optional[str]  # the image's path relative to the folder; None where no such image is there
    written: str  # the image as the labels file names it
    name: str  # its class as the labels file writes it
    line: int


def _rows(path: str) -> tuple[str, list[tuple[int, str, str]]]:
    """The labels file's format (``kaggle`` or ``two-column``) and its (line, image, class) rows;
    ValueError naming the line where the file is of neither format."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:  # (a BOM, as Excel writes it, dropped)
            text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(
            f"labels: expected a UTF-8 text file, got {path!r} ({type(error).__name__}: {error})"
        ) from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"labels: {path} holds no row (expected FILE,CLASS lines or Kaggle's LOC_val_solution.csv)")
    first = lines[0][1]
    header = [cell.strip() for cell in next(csv.reader([first]))]
    kaggle = tuple(header) == KAGGLE_HEADER
    delimiter = "\t" if "\t" in first and not kaggle else ","
    if not kaggle and delimiter not in first:
        raise ValueError(
            f"labels: {path}: expected Kaggle's ImageId,PredictionString header or FILE<TAB>CLASS / FILE,CLASS "
            f"lines, got line {lines[0][0]} {first!r}"
        )
    rows = []
    for number, line in lines[1:] if kaggle else lines:
        cells = [cell.strip() for cell in next(csv.reader([line], delimiter=delimiter))]
        if kaggle:  # the synset, then its boxes: 'n02119789 255 142 454 329 n02119789 ...'
            if len(cells) != 2 or not cells[0] or not cells[1].split():
                raise ValueError(
                    f"labels: {path}: line {number}: expected ImageId,PredictionString (an image id, then its synset "
                    f"and boxes), got {line!r}"
                )
            rows.append((number, cells[0], cells[1].split()[0]))
            continue
        if len(cells) != 2 or not all(cells):
            shown = "FILE<TAB>CLASS" if delimiter == "\t" else "FILE,CLASS (quote a class holding a comma)"
            raise ValueError(f"labels: {path}: line {number}: expected {shown} as the first line, got {line!r}")
        rows.append((number, cells[0], cells[1]))
    if not rows:  # (Kaggle's header alone)
        raise ValueError(f"labels: {path} holds no row under its header {first!r}")
    return ("kaggle" if kaggle else "two-column"), rows


def _image_finder(files: Sequence[str], path: str) -> Callable[[str, int], Optional[str]]:
    """A function giving the image (relative path) a labels file's cell names: its path, or its path without
    the extension (Kaggle's ImageId); None where the folder holds no such image; ValueError where two do."""
    exact = set(files)
    by_stem: dict[str, list[str]] = {}
    for file in files:
        by_stem.setdefault(os.path.splitext(file)[0], []).append(file)

    def find(written: str, line: int) -> Optional[str]:
        key = written.replace("\\", "/").removeprefix("./")
        if key in exact:
            return key
        found = by_stem.get(key, [])
        if len(found) > 1:
            raise ValueError(f"labels: {path}: line {line}: {written!r} may be any of {found}: name the file whole")
        return found[0] if found else None

    return find


class LabelledImageFolder(Dataset):
    """The images of a flat folder, each labelled by a labels file; items are
    :class:`~torchflava.data.finetuning.LabeledSample` ``(image, None, class id)``.

    The labels file is Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString`` header; an id is the
    file's name without its extension, its class the first word of the prediction string, the synset), or
    headerless ``FILE<TAB>CLASS`` or ``FILE,CLASS`` lines (a CSV: a class holding a comma is quoted), a file
    named by its path in the folder or that path without its extension. The items are the folder's images the
    file labels, sorted by path, then the images it names that the folder lacks, each a bad sample (skipped
    and named, as an unreadable image is); :attr:`unlisted` are the folder's images it does not label (no item).

    Args:
        root (PathLike): the folder; its images must lie at its top (sub-folders would label them too).
        labels (PathLike): the labels file.
        classes (Optional[Sequence[str]]): the class names in id order; by default the distinct classes the file
            writes (in Unicode's composed form, NFC), sorted, as :class:`ImageClassFolder` sorts its folders.
        match (Optional[Callable[[str], Optional[int]]]): the class id of a class as the file writes it, None for
            none; by default the class of ``classes`` equal to it in NFC.

    Raises:
        TypeError: if ``root`` or ``labels`` is not a path.
        FileNotFoundError: if ``root`` is not a folder or ``labels`` not a file.
        ValueError: if ``root`` holds no image or images in sub-folders, the labels file is no UTF-8 text of one of
            those formats, is empty, names an image twice with two classes, names no image of ``root``, or names a
            class ``match`` finds no id of (all before any image is read).
    """

    item_noun = "an image"

    def __init__(
        self,
        root: PathLike,
        labels: PathLike,
        classes: Optional[Sequence[str]] = None,
        *,
        match: Optional[Callable[[str], Optional[int]]] = None,
    ) -> None:
        path = existing_path("labels", labels, directory=False)
        self._folder = ImageFolder(root)
        files = [self._folder.relative_path(i) for i in range(len(self._folder))]
        nested = [file for file in files if "/" in file]
        if nested:
            raise ValueError(
                f"root: expected a flat folder of images beside a labels file, got {len(nested)} images in "
                f"sub-folders of {os.fspath(root)!r} (first {nested[0]!r}): sub-folders label images themselves, "
                "give the labels file or class sub-folders, not both"
            )
        self.format, rows = _rows(path)
        find = _image_finder(files, path)
        labelled: dict[str, _Row] = {}  # image (or, where absent, as written) -> its row
        for line, written, name in rows:
            file = find(written, line)
            row = _Row(file, written, name, line)
            earlier = labelled.setdefault(written if file is None else file, row)
            if unicodedata.normalize("NFC", earlier.name) != unicodedata.normalize("NFC", name):
                raise ValueError(
                    f"labels: {path}: line {line} gives {written!r} the class {name!r}, line {earlier.line} gave it "
                    f"{earlier.name!r}"
                )
        line, written, name = rows[0]
        # a header: a first row naming no image of the folder, nor a file, with a class no other row writes (an
        # image absent from a partly extracted folder, by its id, has a class that others have: skipped, not refused)
        if (
            self.format == "two-column"
            and find(written, line) is None
            and not written.lower().endswith(IMAGE_EXTENSIONS)
            and sum(row[2] == name for row in rows) == 1
        ):
            raise ValueError(
                f"labels: {path}: line {line} names no image of the folder, {written!r}: a header? (FILE,CLASS and "
                "FILE<TAB>CLASS files have none; the one header read is Kaggle's ImageId,PredictionString)"
            )
        present = sorted((row for row in labelled.values() if row.file is not None), key=lambda row: row.file)
        if not present:
            raise ValueError(
                f"labels: {path} names none of the {len(files)} images of {os.fspath(root)!r} (line {line}: "
                f"{written!r})"
            )
        missing = sorted((row for row in labelled.values() if row.file is None), key=lambda row: row.line)
        self._rows = present + missing
        self.missing = [f"{row.written}: no such image under the folder ({path} line {row.line})" for row in missing]
        self._position = {file: i for i, file in enumerate(files)}  # image -> its index in the folder
        named = {row.file for row in present}
        self.unlisted = [file for file in files if file not in named]
        if classes is None:
            classes = sorted({unicodedata.normalize("NFC", row.name) for row in self._rows})
        self.classes = list(classes)
        if match is None:
            ids = {unicodedata.normalize("NFC", name): i for i, name in reversed(list(enumerate(self.classes)))}
            match = lambda name: ids.get(unicodedata.normalize("NFC", name))  # noqa: E731
        first_line: dict[str, int] = {}  # each class written -> the first line writing it
        for row in sorted(self._rows, key=lambda row: row.line):
            first_line.setdefault(row.name, row.line)
        found = {name: match(name) for name in first_line}
        unknown = [name for name, label in found.items() if label is None]  # (in the order of their first lines)
        if unknown:
            shown = unknown[:10] + (["..."] if len(unknown) > 10 else [])
            raise ValueError(
                f"labels: {path}: {len(unknown)} class(es) among none of the {len(self.classes)} classes: {shown} "
                f"(first at line {first_line[unknown[0]]})"
            )
        self.labels = [found[row.name] for row in self._rows]

    def __len__(self) -> int:
        return len(self._rows)

    def relative_path(self, index: int) -> str:
        """Item ``index``'s image: its path in the folder, or as the labels file names it where it is absent."""
        row = self._rows[index]
        return row.written if row.file is None else row.file

    def __getitem__(self, index: int) -> LabeledSample:
        """Read item ``index``; BadSample for an image the folder lacks or that does not decode."""
        index = check_index(index, len(self._rows))
        row = self._rows[index]
        if row.file is None:
            raise BadSample(index, self.missing[index - (len(self._rows) - len(self.missing))])
        return LabeledSample(self._folder[self._position[row.file]].image, None, self.labels[index])

    def warnings(self, labels_option: str, images_option: str) -> list[str]:
        """The one-line warnings of a labels file (given as ``labels_option``) that names images its folder
        (``images_option``) lacks (skipped, named in a report as unreadable images are) or leaves some of the folder's
        images unlabelled (left out)."""
        warnings = []
        if self.missing:
            warnings.append(
                f"warning: {labels_option} names {len(self.missing)} image(s) that are not under {images_option}, "
                f"skipped and counted as unreadable (first {self.missing[0]})"
            )
        if self.unlisted:
            warnings.append(
                f"warning: {len(self.unlisted)} image(s) under {images_option} have no row in {labels_option} and are "
                f"left out (first {self.unlisted[0]!r})"
            )
        return warnings

    @property
    def empty_classes(self) -> list[str]:
        """The classes no image of the file is labelled with."""
        present = set(self.labels)
        return [name for i, name in enumerate(self.classes) if i not in present]
