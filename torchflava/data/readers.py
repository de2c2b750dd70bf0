"""Map-style sources on local files: captioned image folders (JSON lines, Karpathy's, COCO's and BLIP's
captions JSON, open_clip's CSV/TSV), text corpora, image folders, tar shards.

Each source is a ``torch.utils.data.Dataset`` of :class:`~torchflava.data.samples.Sample` items. An
item that cannot be used (malformed index entry, missing or corrupt image, blank or undecodable text,
missing tar member) raises :class:`~torchflava.data.samples.BadSample` and nothing else, so one bad
item costs one item and ``len(source)`` counts it honestly. An index outside ``[0, len)`` raises
``IndexError``; negative indices do not wrap around. Sources hold paths and plain lists only and open
files per read, so they pickle into ``DataLoader`` workers. Image decoding is
:func:`~torchflava.data.samples.load_rgb`; text checking is :func:`~torchflava.data.samples.checked_text`.
"""

from collections.abc import Iterable, Iterator, Mapping, Sequence
import contextlib
import csv
import gc
import glob
import hashlib
import io
import itertools
import json
import operator
import os
import posixpath
import re
import tarfile
import threading
from typing import BinaryIO, NamedTuple, Optional, Union
import warnings

from PIL import Image
from torch.utils.data import Dataset

from torchflava.data.decode import DEFAULT_MAX_PIXELS
from torchflava.data.samples import BadSample, Sample, checked_text, load_rgb
from torchflava.utils.checks import check_path
from torchflava.utils.distributed import get_rank
from torchflava.utils.globs import glob_files

PathLike = Union[str, os.PathLike]

# (every format decode_image reads that image folders hold; a file left out here is left out silently:
# .jfif and .jpe are JPEGs as browsers save them, .avif what phones and the web now use; a PIL built
# without AVIF makes such files counted bad samples rather than files nobody hears of; the netpbm files,
# which torchvision's ImageFolder lists too, hold GTSRB's traffic signs (.ppm) and the ORL and Yale faces (.pgm))
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".webp", ".avif", ".gif", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm",
)  # fmt: skip


def existing_path(name: str, value: object, *, directory: bool) -> str:
    """Absolute path of an existing file (or directory); raise naming ``name`` otherwise."""
    path = check_path(name, value)
    exists = os.path.isdir(path) if directory else os.path.isfile(path)
    if not exists:
        kind = "directory" if directory else "file"
        raise FileNotFoundError(f"{name} must be an existing {kind}, got {path!r}")
    return os.path.abspath(path)


def check_extensions(name: str, extensions: object) -> tuple[str, ...]:
    """Lower-case extensions without the leading dot (``".JPG"`` and ``"jpg"`` both give ``"jpg"``)."""
    if isinstance(extensions, (str, bytes)) or not isinstance(extensions, Iterable):
        raise TypeError(f"{name} must be a tuple of extensions like ('jpg', 'png'), got {extensions!r}")
    result = []
    for extension in extensions:
        if not isinstance(extension, str):
            raise TypeError(f"{name} must hold strings, got {type(extension).__name__}")
        if not extension.lstrip("."):
            raise ValueError(f"{name} must not hold an empty extension, got {extension!r}")
        result.append(extension.lstrip(".").lower())
    if not result:
        raise ValueError(f"{name} must hold at least one extension")
    return tuple(dict.fromkeys(result))


def check_max_pixels(value: object) -> int:
    """``max_image_pixels`` checked: a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_image_pixels must be a positive int, got {value!r}")
    return value


class CaptionsError(ValueError):
    """A refusal of :class:`ImageTextFolder` that one argument other than ``captions`` answers for:
    ``argument`` is ``"root"``, ``"split"``, ``"image_key"`` or ``"text_key"`` (a config naming them
    otherwise names its own key, e.g. a split the file lacks: the one check of split names)."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument


def check_index(index: object, length: int) -> int:
    """``index`` as an int in ``[0, length)``: TypeError if not an integer, IndexError if out of range."""
    if isinstance(index, bool):
        raise TypeError("index must be an int, got bool")
    try:
        position = operator.index(index)
    except TypeError:
        raise TypeError(f"index must be an int, got {type(index).__name__}") from None
    if not 0 <= position < length:
        raise IndexError(f"index {position} is out of range [0, {length})")
    return position


def read_image(source: Union[str, BinaryIO], index: int, where: str, max_pixels: int) -> Image.Image:
    """:func:`load_rgb` with ``where`` in the reason; any decoder failure becomes :class:`BadSample`."""
    try:
        return load_rgb(source, index, max_pixels=max_pixels)
    except BadSample as error:
        raise BadSample(index, f"{where}: {error.reason}") from None
    except MemoryError:
        raise
    except Exception as error:  # corrupt files can trip decoder errors that load_rgb does not list
        raise BadSample(index, f"{where}: unreadable image ({type(error).__name__}: {error})") from None


def _text(text: object, index: int, where: str) -> str:
    """:func:`checked_text` with ``where`` in the reason."""
    try:
        return checked_text(text, index)
    except BadSample as error:
        raise BadSample(index, f"{where}: {error.reason}") from None


def _lines(path: str) -> Iterator[tuple[int, Optional[str]]]:
    """(1-based line number, line) for each non-blank line; the line is None when it is not UTF-8. A file
    without a single ``\\n`` whose text holds ``\\r`` has its lines ended by ``\\r`` alone (classic Mac OS,
    Excel for Mac's text exports), as Python's ``open`` reads it: those are its lines, not one line."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            if number == 1 and not raw.endswith(b"\n") and b"\r" in raw.rstrip(b"\r"):
                raws = enumerate(raw.split(b"\r"), start=1)  # (no "\n" at all: the file is this one raw line)
            else:
                raws = ((number, raw),)
            for place, text in raws:
                try:
                    line = text.decode("utf-8-sig" if place == 1 else "utf-8")
                except UnicodeDecodeError:
                    yield place, None
                    continue
                if line.strip():
                    yield place, line


class _Entry(NamedTuple):
    """One caption of a captions file: image path and caption as written, or why the entry is malformed.

    ``place`` is the line number (JSON lines, TSV, CSV) or the index in the JSON file's ``images``
    (Karpathy) or ``annotations`` (COCO) list; ``sentence`` the index in a Karpathy image's
    ``sentences`` (-1 otherwise)."""

    place: int
    image: str
    text: str
    error: Optional[str] = None
    sentence: int = -1


def _jsonl_entry(number: int, line: str, image_key: str, text_key: str) -> _Entry:
    """Parse one JSON-lines record into an :class:`_Entry`."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as error:
        return _Entry(number, "", "", f"not valid JSON ({error})")
    if not isinstance(record, dict):
        return _Entry(number, "", "", f"expected a JSON object, got {type(record).__name__}")
    for key in (image_key, text_key):
        if key not in record:
            return _Entry(number, "", "", f"missing key {key!r}")
        if not isinstance(record[key], str):
            return _Entry(number, "", "", f"{key!r} must be a string, got {type(record[key]).__name__}")
    return _Entry(number, record[image_key], record[text_key])


def _tsv_entry(number: int, line: str) -> _Entry:
    """Parse one ``image<TAB>caption`` line into an :class:`_Entry`: a field quoted as Python's csv
    module and pandas write one with a tab delimiter (wrapped in quotes, its quotes doubled: a caption
    holding a quote or a tab) is read unquoted; any other quote is text, as a file written by hand has it."""
    text = line.rstrip("\r\n")
    try:
        columns = next(csv.reader([text], delimiter="\t", strict=True))
    except csv.Error:  # a quote that opens no well-formed quoted field on this line: the line as written
        columns = text.split("\t")
    if len(columns) != 2:
        return _Entry(number, "", "", f"expected 2 tab-separated columns (image, caption), got {len(columns)}")
    return _Entry(number, columns[0], columns[1])


_JSON_SHAPES = (
    "Karpathy's split file ({'images': [{'filepath', 'filename', 'split', 'sentences': [{'raw'}]}]}), COCO's "
    "captions file ({'images': [{'id', 'file_name'}], 'annotations': [{'image_id', 'caption'}]}) or a list of "
    "captions as BLIP's ([{'image', 'caption'}], the caption a string or a list of them)"
)


def _json_type(value: object) -> str:
    """The JSON name of ``value``'s type."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _dropping_tokens(record: dict) -> dict:
    """JSON object hook: Karpathy's per-sentence ``tokens`` lists are dropped as they are parsed (they
    hold most of the file and are never read)."""
    record.pop("tokens", None)
    return record


def _json_entries(
    path: str,
    split: Optional[frozenset],
    found: set[str],
    keys: Optional[tuple[str, str]],
    key_argument: str = "image_key",
) -> tuple[str, list[_Entry]]:
    """("karpathy", "coco" or "list", the entries) of a ``.json`` captions file; ValueError naming the
    file, the shapes expected and what it holds when it is none of them. ``found`` receives a Karpathy
    file's splits (when ``split`` is given); ``keys`` (image, text) name those of a list of captions
    (None: ``image`` and ``caption``), and are refused for the other shapes (a
    :class:`CaptionsError` of ``key_argument``, the key the caller gave)."""
    try:
        with open(path, encoding="utf-8-sig") as file:  # (text mode: the bytes are never held whole beside it)
            text = file.read()
    except UnicodeDecodeError as error:
        raise ValueError(f"captions must be {_JSON_SHAPES}; {path!r} is not UTF-8 ({error})") from None
    try:
        data = json.loads(text, object_hook=_dropping_tokens)
    except (ValueError, RecursionError) as error:
        hint = " (JSON lines belong in a .jsonl file)" if "Extra data" in str(error) else ""
        raise ValueError(f"captions must be {_JSON_SHAPES}; {path!r} is not valid JSON ({error}){hint}") from None
    del text
    images = data.get("images") if isinstance(data, dict) else None
    if isinstance(data, list):  # BLIP's and LAVIS's caption files: [{"image": path, "caption": text(s)}, ...]
        image_key, text_key = keys or ("image", "caption")
        if data and not any(isinstance(item, dict) and image_key in item for item in data):
            kinds = sorted({_json_type(item) for item in data})
            raise ValueError(
                f"captions must be {_JSON_SHAPES}; {path!r} holds a JSON list of {len(data)} item(s) "
                f"({', '.join(kinds)}), no object with {image_key!r}"
            )
        if split is not None:
            raise CaptionsError("split", f"split is for Karpathy's split files, {path!r} is a list of captions")
        return "list", _caption_list_entries(data, image_key, text_key)
    # (keys for Karpathy's or COCO's file: refused once its shape is known; another shape is named as such)
    keyed = f"image_key and text_key are for .jsonl, .csv and .tsv files and JSON lists of captions, {path!r} is"
    if isinstance(data, dict) and isinstance(images, list):
        if "annotations" in data:
            annotations = data["annotations"]
            if not isinstance(annotations, list):
                got = f"an 'annotations' {_json_type(annotations)}, not a list"
            elif annotations and not any(isinstance(a, dict) and "caption" in a for a in annotations):
                got = "annotations without 'caption' (COCO instances or keypoints, not captions?)"
            elif split is not None:
                raise CaptionsError("split", f"split is for Karpathy's split files, {path!r} is a COCO captions file")
            elif keys is not None:
                raise CaptionsError(key_argument, f"{keyed} a COCO captions file")
            else:
                return "coco", _coco_entries(images, annotations)
        elif any(isinstance(image, dict) and "sentences" in image for image in images):
            if keys is not None:
                raise CaptionsError(key_argument, f"{keyed} Karpathy's split file")
            return "karpathy", _karpathy_entries(path, images, split, found)
        else:
            got = f"'images' ({len(images)}) without 'sentences' and no 'annotations'"
    elif isinstance(data, dict):
        keys = sorted(data)
        shown = ", ".join(repr(k) for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
        got = f"an object of keys {shown}" if keys else "an empty object"
        if images is not None:
            got += f", its 'images' a {_json_type(images)}"
    else:
        got = f"a JSON {_json_type(data)}"
    raise ValueError(f"captions must be {_JSON_SHAPES}; {path!r} holds {got}")


def _karpathy_entries(path: str, images: list, split: Optional[frozenset], found: set[str]) -> list[_Entry]:
    """One entry per sentence of each image (of the wanted splits): path ``filepath/filename``; ``found``
    receives the splits of the file (when ``split`` is given). A :class:`CaptionsError` of ``split`` when
    a name of ``split`` is no split of the file, naming the file's splits."""
    entries: list[_Entry] = []
    kept = 0  # images of the wanted splits
    for number, image in enumerate(images):
        if not isinstance(image, dict):
            entries.append(_Entry(number, "", "", f"expected a JSON object, got {_json_type(image)}"))
            continue
        if split is not None:
            name = image.get("split")
            if not isinstance(name, str):
                problem = (
                    "missing key 'split'"
                    if "split" not in image
                    else f"'split' must be a string, got {_json_type(name)}"
                )
                entries.append(_Entry(number, "", "", problem))
                continue
            found.add(name)
            if name not in split:
                continue
        kept += 1
        problem = None
        for key in ("filename", "filepath", "sentences"):
            kind = list if key == "sentences" else str
            if key not in image and key != "filepath":  # (Flickr30k's images have no filepath)
                problem = f"missing key {key!r}"
            elif key in image and not isinstance(image[key], kind):
                problem = f"{key!r} must be a {_json_type(kind())}, got {_json_type(image[key])}"
            if problem:
                break
        if problem is None and not image["sentences"]:
            problem = "no sentences"
        if problem is not None:
            entries.append(_Entry(number, "", "", problem))
            continue
        folder = image.get("filepath", "")
        file = posixpath.join(folder, image["filename"]) if folder else image["filename"]  # one str per image
        for position, sentence in enumerate(image["sentences"]):
            if not isinstance(sentence, dict):
                entries.append(_Entry(number, "", "", f"expected a JSON object, got {_json_type(sentence)}", position))
            elif not isinstance(sentence.get("raw"), str):
                problem = (
                    "missing key 'raw'"
                    if "raw" not in sentence
                    else f"'raw' must be a string, got {_json_type(sentence['raw'])}"
                )
                entries.append(_Entry(number, "", "", problem, position))
            else:
                entries.append(_Entry(number, file, sentence["raw"], None, position))
    lacking = sorted(split - found) if split is not None else []
    if lacking:  # (one name lacking beside others kept: a typo whose images would be left out silently)
        if not kept:
            named = f"none of {sorted(split)} is a split"
        else:
            named = ", ".join(repr(name) for name in lacking) + (
                " is not a split" if len(lacking) == 1 else " are not splits"
            )
        raise CaptionsError(
            "split", f"split must name splits of the file, {named} of {path!r} (its splits: {sorted(found)})"
        )
    return entries


def _caption_list_entries(items: list, image_key: str, text_key: str) -> list[_Entry]:
    """One entry per caption of each object of a list of captions (BLIP's ``coco_karpathy_train.json``:
    one object per caption; its val and test files: one per image, ``caption`` a list)."""
    entries: list[_Entry] = []
    for number, item in enumerate(items):
        problem = None
        if not isinstance(item, dict):
            problem = f"expected a JSON object, got {_json_type(item)}"
        else:
            missing = [key for key in (image_key, text_key) if key not in item]
            image, caption = item.get(image_key), item.get(text_key)
            if missing:
                problem = f"missing key {missing[0]!r}"
            elif not isinstance(image, str):
                problem = f"{image_key!r} must be a string, got {_json_type(image)}"
            elif not isinstance(caption, (str, list)):
                problem = f"{text_key!r} must be a string or a list of strings, got {_json_type(caption)}"
            elif not caption and isinstance(caption, list):
                problem = f"{text_key!r} is an empty list"
        if problem is not None:
            entries.append(_Entry(number, "", "", problem))
        elif isinstance(caption, str):
            entries.append(_Entry(number, image, caption))
        else:
            for position, text in enumerate(caption):
                if isinstance(text, str):
                    entries.append(_Entry(number, image, text, None, position))
                else:
                    entries.append(_Entry(number, "", "", f"expected a string, got {_json_type(text)}", position))
    return entries


def _coco_entries(images: list, annotations: list) -> list[_Entry]:
    """One entry per annotation, its image's ``file_name`` found by ``image_id``."""
    files: dict[Union[int, str], Union[str, _Entry]] = {}  # image id -> file name, or why it has none
    for number, image in enumerate(images):
        if (
            not isinstance(image, dict)
            or isinstance(image.get("id"), bool)
            or not isinstance(image.get("id"), (int, str))
        ):
            continue  # no id: no annotation can name it, so no caption is lost
        key, name = image["id"], image.get("file_name")
        if key in files:
            files[key] = _Entry(number, "", "", f"image id {key!r} is listed twice in 'images'")
        elif not isinstance(name, str):
            problem = "no 'file_name'" if "file_name" not in image else f"a {_json_type(name)} 'file_name'"
            files[key] = _Entry(number, "", "", f"image id {key!r} (images[{number}]) has {problem}")
        else:
            files[key] = name
    entries = []
    for number, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            entries.append(_Entry(number, "", "", f"expected a JSON object, got {_json_type(annotation)}"))
            continue
        problem = None
        for key in ("image_id", "caption"):
            if key not in annotation:
                problem = f"missing key {key!r}"
                break
        if problem is None and not isinstance(annotation["caption"], str):
            problem = f"'caption' must be a string, got {_json_type(annotation['caption'])}"
        if problem is None:
            key = annotation["image_id"]
            file = files.get(key) if isinstance(key, (int, str)) and not isinstance(key, bool) else None
            if file is None:
                problem = f"image_id {key!r} is not the id of an image in 'images'"
            elif isinstance(file, _Entry):
                problem = file.error
        if problem is not None:
            entries.append(_Entry(number, "", "", problem))
        else:
            entries.append(_Entry(number, file, annotation["caption"]))
    return entries


# the names of a CSV or TSV header's image and text columns that image_key or text_key left unnamed
# (None), in order of preference: ours, then open_clip's defaults
_DEFAULT_COLUMNS = (("image", "filepath"), ("caption", "title"))
_Keys = tuple[Optional[str], Optional[str]]  # (image_key, text_key) as given, None where not


def _column(header: list[str], name: str) -> Optional[int]:
    """Index of column ``name``: the one spelled exactly so, else the only one equal to it in any case
    and surrounding spaces; None if there is no such column."""
    if header.count(name) == 1:
        return header.index(name)
    loose = [i for i, column in enumerate(header) if column.strip().lower() == name.lower()]
    return loose[0] if len(loose) == 1 else None


def _found_columns(header: Optional[list[str]], keys: _Keys) -> tuple[Optional[int], Optional[int]]:
    """The (image, text) column indices of ``header``: those ``keys`` name, and for a key not given the
    first of its :data:`_DEFAULT_COLUMNS` it has (apart from the other column); None for one it lacks."""
    if header is None:
        return None, None
    found = [None if key is None else _column(header, key) for key in keys]
    for side, names in enumerate(_DEFAULT_COLUMNS):
        if keys[side] is None:  # (so text_key="title" alone reads open_clip's filepath,title header)
            taken = found[1 - side]
            indices = (_column(header, name) for name in names)
            found[side] = next((i for i in indices if i is not None and i != taken), None)
    return found[0], found[1]


def _header_columns(header: Optional[list[str]], keys: _Keys) -> Optional[tuple[int, int]]:
    """:func:`_found_columns` when it finds two distinct columns; None otherwise."""
    image, text = _found_columns(header, keys)
    return (image, text) if image is not None and text is not None and image != text else None


def _missing_column_error(header: Optional[list[str]], keys: _Keys, message: str) -> ValueError:
    """The refusal of a header without the columns: a :class:`CaptionsError` of the key that answers for
    it (the one given that names no column before one left to its defaults), a ValueError of the file
    when no key was given or no header read."""
    if keys == (None, None) or header is None:
        return ValueError(message)
    found = _found_columns(header, keys)
    missing = [name for name, column in zip(("image_key", "text_key"), found) if column is None] or ["text_key"]
    given = [name for name, key in zip(("image_key", "text_key"), keys) if key is not None]
    return CaptionsError(next((name for name in missing if name in given), missing[0]), message)


# The longest field (characters) a CSV or TSV captions file may hold: far above any caption (dense
# descriptions run to some thousands), Python's csv default (131072) is not; it bounds what a quote left
# open takes in before the file is refused (4 bytes a character as the csv module gathers a field).
MAX_FIELD_CHARS = 1 << 24
_END_OF_FILE = "\0end of the captions file\0"  # fed to the csv reader after the last line (no caption ends so)
_FIELD_LIMIT_LOCK = threading.Lock()  # (two readers restoring in turn must not leave the other's limit)


@contextlib.contextmanager
def _csv_field_limit() -> Iterator[None]:
    """Python's process-wide ``csv.field_size_limit`` set to :data:`MAX_FIELD_CHARS` for the block, then
    restored (unless other code set its own meanwhile), so that other code's csv reading keeps its limit."""
    with _FIELD_LIMIT_LOCK:
        previous = csv.field_size_limit(MAX_FIELD_CHARS)
        try:
            yield
        finally:
            if csv.field_size_limit() == MAX_FIELD_CHARS:
                csv.field_size_limit(previous)


def _table_entries(path: str, delimiter: str, keys: _Keys) -> list[_Entry]:
    """:func:`_read_table` under :func:`_csv_field_limit`."""
    with _csv_field_limit():
        return _read_table(path, delimiter, keys)


def _read_table(path: str, delimiter: str, keys: _Keys) -> list[_Entry]:
    """The entries of a ``.csv`` or ``.tsv`` file: a header row naming the columns (read as open_clip's
    pandas reads them: quoted fields, extra columns ignored; a ``.csv`` whose header names the columns
    only when split on tabs is tab-separated, open_clip's default), or a TSV of exactly ``image<TAB>caption``
    (header ``image<TAB>caption`` optional; split on tabs per line, see :func:`_tsv_entry`)."""
    tsv = delimiter == "\t"
    first, header = None, None  # the first line that is not blank nor a row of blank fields, and its columns
    for number, line in _lines(path):
        if line is None:  # not UTF-8: no header
            first = (number, line)
            break
        try:
            row = next(csv.reader([line], delimiter=delimiter, strict=True), [])
        except csv.Error:  # a quote not closed on its line, or misplaced: no header
            first = (number, line)
            break
        if any(field.strip() for field in row):
            first, header = (number, line), row
            break
    if first is None:
        return []
    number, line = first
    # (the keys that image<TAB>caption lines, with or without that header, answer to)
    legacy = tsv and keys[0] in (None, "image") and keys[1] in (None, "caption")
    if legacy and line is not None and line.strip().lower() == "image\tcaption":
        return _legacy_tsv_entries(path)
    columns = _header_columns(header, keys)
    if columns is None and not tsv and line is not None and "\t" in line:
        # open_clip's --csv-separator is a tab by default: its train.csv files are tab-separated
        try:
            tabbed = next(csv.reader([line], delimiter="\t", strict=True), [])
        except csv.Error:
            tabbed = None
        if tabbed is not None and _header_columns(tabbed, keys) is not None:
            delimiter, columns = "\t", _header_columns(tabbed, keys)
    if columns is None:
        if legacy:  # no header: image<TAB>caption lines
            return _legacy_tsv_entries(path)
        wanted = " and ".join(
            repr(key) if key is not None else f"{names[0]!r} (or open_clip's {names[1]!r})"
            for key, names in zip(keys, _DEFAULT_COLUMNS)
        )
        if keys == (None, None):
            wanted = "'image' and 'caption' (or open_clip's 'filepath' and 'title')"
        got = "not UTF-8" if line is None else repr(header if header is not None else line.rstrip("\r\n"))
        name = "tab" if tsv else "comma"
        message = (
            f"captions must start with a {name}-separated header row naming the columns {wanted}; line {number} of "
            f"{path!r} is {got}"
        )
        raise _missing_column_error(header, keys, message)
    return _csv_entries(path, delimiter, columns)


def _legacy_tsv_entries(path: str) -> list[_Entry]:
    """``image<TAB>caption`` lines, a first line ``image<TAB>caption`` (any case) skipped as a header."""
    entries: list[_Entry] = []
    for number, line in _lines(path):
        if line is None:
            entries.append(_Entry(number, "", "", "not valid UTF-8"))
        elif entries or line.strip().lower() != "image\tcaption":
            entries.append(_tsv_entry(number, line))
    return entries


def _csv_entries(path: str, delimiter: str, columns: tuple[int, int]) -> list[_Entry]:
    """Rows after the header, each an entry (a record spanning lines is named by its first), read as
    pandas reads them: a quoted field followed by more text is that text unquoted and the rest
    (``"Hello" she said`` is ``Hello she said``). A quote left open at the end of the file, or a field
    longer than :data:`MAX_FIELD_CHARS`, is a ValueError (the rest of the file would be one field)."""
    kind = "tab-separated" if delimiter == "\t" else "comma-separated"
    entries: list[_Entry] = []
    width = None  # the header's number of columns
    # (undecodable bytes kept as lone surrogates: that row is a bad sample, not the file refused)
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
        # strict=False reads a quote left open to the end of the file as a field: the marker after the
        # last line ends up inside it then, and is a row of its own otherwise
        reader = csv.reader(itertools.chain(file, [_END_OF_FILE]), delimiter=delimiter, strict=False)
        start = 1  # the line the next record starts on
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                if "field limit" in str(error):  # (the reader would go on from inside the field)
                    raise ValueError(
                        f"captions must hold fields of at most {MAX_FIELD_CHARS} characters; the record starting on "
                        f"line {start} of {path!r} holds a longer one (a quote left open?)"
                    ) from None
                entries.append(_Entry(start, "", "", f"malformed {kind} record ({error})"))
                start = reader.line_num + 1
                continue
            if row and row[-1].endswith(_END_OF_FILE):
                if row == [_END_OF_FILE]:
                    break
                raise ValueError(
                    f"captions must close every quoted field; the quote of the record starting on line {start} of "
                    f"{path!r} is still open at the end of the file (line {reader.line_num - 1})"
                )
            number, start = start, reader.line_num + 1
            if not any(field.strip() for field in row):  # a blank line, or a row of blank fields: no item
                continue
            if width is None:
                width = len(row)
                continue
            if len(row) != width:
                entries.append(
                    _Entry(number, "", "", f"expected {width} {kind} columns as in the header, got {len(row)}")
                )
                continue
            image, text = row[columns[0]], row[columns[1]]
            if _SURROGATE_ESCAPES.search(image) or _SURROGATE_ESCAPES.search(text):
                entries.append(_Entry(number, "", "", "not valid UTF-8"))
            else:
                entries.append(_Entry(number, image, text))
    return entries


_SURROGATE_ESCAPES = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of bytes that are not UTF-8


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused: reading a file of 600k captions creates millions of
    objects and no cycle, and each collection would walk them all (half the time of a Karpathy file)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _check_split(split: object) -> Optional[frozenset]:
    """``split`` as a set of split names: None, a name, or names (e.g. ("train", "restval"))."""
    if split is None:
        return None
    names = [split] if isinstance(split, str) else split
    if isinstance(names, (bytes, dict)) or not isinstance(names, Iterable):
        raise TypeError(f"split must be None, a split name or names, got {type(split).__name__}")
    names = list(names)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(
            f"split must be None, a split name or non-empty names like ('train', 'restval'), got {split!r}"
        )
    return frozenset(names)


def _names_parquet(captions: object) -> bool:
    """Whether ImageTextFolder's ``captions`` names parquet files: a list of paths, a ``.parquet`` path or glob
    pattern, a folder holding ``.parquet`` files at its top, or a glob pattern (not a file of that name)."""
    if isinstance(captions, (list, tuple)):
        return True
    if not isinstance(captions, (str, os.PathLike)) or not isinstance(os.fspath(captions), str):
        return False
    from torchflava.data.parquet import is_parquet

    text = os.fspath(captions)
    return is_parquet(text) or (glob.has_magic(text) and not os.path.isfile(text))


class ImageTextFolder(Dataset):
    """Image-caption pairs listed in a captions file, in the formats researchers have them.

    ``captions`` is read by its extension (in any case), one item per caption:

    * ``.jsonl``: one JSON object per line, the image path under ``image_key`` (default ``"image"``)
      and the caption under ``text_key`` (default ``"caption"``).
    * ``.json``: Karpathy's split file (``dataset_coco.json``, ``dataset_flickr30k.json``: each of
      ``images`` gives ``filepath``/``filename``, absent ``filepath`` for Flickr30k, and its
      ``sentences``' ``raw`` captions) or COCO's captions file (``captions_val2017.json``: each of
      ``annotations`` gives a ``caption`` of the image whose ``id`` is its ``image_id``, at that
      image's ``file_name``), or a list of captions as BLIP and LAVIS write them (``[{"image": path,
      "caption": text}, ...]``: ``coco_karpathy_train.json`` has an object per caption, its val and
      test files an object per image whose ``caption`` is a list; the keys are ``image_key`` and
      ``text_key``, default ``"image"`` and ``"caption"``), told apart by their structure; ``split``
      keeps the Karpathy images of those splits (``"test"``, or ``("train", "restval")``; None keeps
      all). Karpathy's ``tokens`` are dropped as the file is parsed.
    * ``.csv`` / ``.tsv``: a header row naming the columns, read as open_clip's pandas reads them
      (comma or tab separated, quoted fields that may hold separators and newlines, a quoted field
      followed by text read as pandas does, fields up to :data:`MAX_FIELD_CHARS` characters, other
      columns ignored, any order): ``image_key`` and ``text_key``, matched exactly or else in any
      case; a key not given names ``image`` (``caption``), or where the header has no such column
      open_clip's ``filepath`` (``title``), so ``text_key="title"`` alone reads open_clip's file. A
      ``.csv`` whose header names them only when split on tabs is tab-separated (open_clip's
      ``--csv-separator`` default: its ``train.csv`` files are tab-separated). A ``.tsv`` whose
      first line names no such columns, or is ``image<TAB>caption``, is ``image<TAB>caption`` per
      line, split on tabs; a field quoted as the csv module writes one (wrapped in quotes, its quotes
      doubled) is read unquoted, any other quote is text.
    * ``.parquet`` (a file, a glob pattern of them, a folder holding them or a list of them: the shards of a split,
      as the Hugging Face Hub serves image-caption datasets, read in order; one left out of the split is warned
      of in ``warnings``): the
      images in the files themselves (``image_key``: by default the column of Hugging Face's ``Image`` feature,
      else ``image`` or ``img``; see :class:`~torchflava.data.parquet.ParquetImages`), the caption under
      ``text_key`` (by default ``caption``, ``captions``, ``text`` or ``sentences``), a string or a list of
      strings (COCO's five captions of an image: five items); ``split`` keeps the rows whose ``split`` column is
      among them (Flickr30k's ``test``). ``root`` must be None. Needs pyarrow (the ``parquet`` extra).

    Image paths are relative to ``root`` (Karpathy's COCO paths ``root/filepath/filename``). With
    ``root=None`` they must be absolute instead: a CSV of absolute paths (open_clip's usual form) is
    the user's own list of files, while a data file read under a root is not trusted to leave it.
    So each item is refused that is absolute under a root, leaves the root through ``..`` (checked
    on the path text; symbolic links inside root are followed), or is relative without a root; a
    file whose paths are all of the wrong kind is refused whole, naming the other setting.

    Blank lines are not items. A malformed entry (bad JSON, CSV quoting or UTF-8, a missing key or
    column, a non-string value, a wrong column count, a COCO ``image_id`` of no image) is still an
    item, whose read raises :class:`BadSample` naming the file and the entry (``line 7``,
    ``images[12].sentences[3]``, ``annotations[5]``, ``[4]`` or ``[4].caption[1]`` in a list of
    captions). So are a blank caption, a missing or corrupt image and a refused path. A file of the wrong shape (other JSON, a ``.csv`` without the header,
    a quote open at the end, no well-formed entry) is a ValueError naming it, before any image is
    read; no image is read at construction.

    Args:
        root (Optional[PathLike]): directory the image paths are relative to; None for absolute paths.
        captions (Union[PathLike, Sequence[PathLike]]): the ``.jsonl``, ``.json``, ``.csv`` or ``.tsv`` file, or
            parquet files (a file, a glob pattern, a folder or a list of them).
        image_key (Optional[str]): JSON key (JSON lines, a list of captions) or column of the image
            path (None: ``image``, or in a header without that column open_clip's ``filepath``).
        text_key (Optional[str]): JSON key or column of the caption (None: ``caption``, or in a header
            without that column open_clip's ``title``).
        split (Union[None, str, Iterable[str]]): Karpathy splits to keep (Karpathy files only).
        max_image_pixels (int): images with more pixels are bad samples (checked before decoding).

    Attributes:
        splits (Optional[tuple[str, ...]]): with ``split`` given, every split of the Karpathy file,
            sorted; None without ``split``.
        held_splits (tuple[str, ...]): the splits of parquet files' ``split`` column, sorted, whatever
            ``split`` keeps (empty without that column, and for other files).
        files_digest (Optional[str]): the parquet files read, by name (relative to their common folder), number
            of rows and size, as their count and a digest (``"4 files, sha1 0123456789abcdef"``): a shard of a
            glob renamed, or swapped for another of as many rows, changes it; None for other files.
        warnings (list[str]): one line per shard of a parquet split left out of the files given
            (``train-00002-of-00004.parquet`` absent); empty for other files.

    Raises:
        TypeError: if a path is not a str or PathLike, or a key or split not a str.
        ValueError: if ``captions`` has another extension or the wrong shape, holds no item, the keys
            are equal, or ``split`` is given for another format or names a split the file lacks. A
            :class:`CaptionsError` (a ValueError) where another argument answers for it, named in its
            ``argument``: ``split`` (given for another format, naming a split the file lacks: the
            message names the file's splits),
            ``image_key`` or ``text_key`` (given for Karpathy's or COCO's file, equal, a column no
            header has, a key no line of a ``.jsonl`` or object of a list of captions has), ``root`` (given for absolute paths, or missing for
            relative ones).
        FileNotFoundError: if ``root`` is not a directory or ``captions`` not a file.
    """

    def __init__(
        self,
        root: Optional[PathLike],
        captions: Union[PathLike, Sequence[PathLike]],
        *,
        image_key: Optional[str] = None,
        text_key: Optional[str] = None,
        split: Union[None, str, Iterable[str]] = None,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self._max_pixels = check_max_pixels(max_image_pixels)
        self._root = None if root is None else existing_path("root", root, directory=True)
        self._parquet = None  # the images of the parquet files' rows
        self.warnings: list[str] = []  # the parquet files' (a shard of the split left out)
        self.held_splits: tuple[str, ...] = ()  # the splits of the parquet files' split column, read or not
        self.files_digest: Optional[str] = None  # the parquet files read, by name, rows and size (a resume compares it)
        if isinstance(captions, (list, tuple)) and not (
            captions and all(isinstance(c, (str, os.PathLike)) for c in captions)
        ):
            raise TypeError(f"captions must be a path, or a non-empty list of parquet files' paths, got {captions!r}")
        if _names_parquet(captions):
            self._read_parquet(captions, image_key, text_key, split)
            return
        suffix = os.path.splitext(check_path("captions", captions))[1].lower()
        if suffix not in (".jsonl", ".json", ".csv", ".tsv"):
            raise ValueError(
                f"captions must be a .jsonl, .json, .csv, .tsv or .parquet file, got {os.fspath(captions)!r}"
            )
        self._captions = existing_path("captions", captions, directory=False)
        for name, key in (("image_key", image_key), ("text_key", text_key)):
            if key is not None and not isinstance(key, str):
                raise TypeError(f"image_key and text_key must be str or None, got {type(key).__name__} for {name}")
        keys = None  # neither given: the defaults, open_clip's columns among them
        if image_key is not None or text_key is not None:  # one given: "image" or "caption" for the other
            keys = (image_key if image_key is not None else "image", text_key if text_key is not None else "caption")
            if keys[0] == keys[1]:
                raise CaptionsError(
                    "text_key" if text_key is not None else "image_key",
                    f"image_key and text_key must differ, got {keys[0]!r} for both",
                )
        wanted = _check_split(split)
        if wanted is not None and suffix != ".json":
            raise CaptionsError("split", f"split is for Karpathy's split files (.json), {self._captions!r} is not one")
        self._format = "lines"  # how entries are named: "lines", "karpathy", "coco" or "list"
        self._text_key = keys[1] if keys else "caption"  # (a list of captions names its captions by it)
        found: set[str] = set()  # the splits of a Karpathy file, when split is given
        if suffix == ".jsonl":
            keys = keys or ("image", "caption")
            with _collection_paused():
                self._entries = [
                    _Entry(number, "", "", "not valid UTF-8") if line is None else _jsonl_entry(number, line, *keys)
                    for number, line in _lines(self._captions)
                ]
        elif suffix == ".json":
            with _collection_paused():
                given_key = "image_key" if image_key is not None else "text_key"
                self._format, self._entries = _json_entries(self._captions, wanted, found, keys, given_key)
        else:  # (a key not given: the first of its defaults the header has, open_clip's among them)
            with _collection_paused():
                delimiter = "," if suffix == ".csv" else "\t"
                self._entries = _table_entries(self._captions, delimiter, (image_key, text_key))
        if not self._entries:
            raise ValueError(f"captions must list at least one image-caption pair, {self._captions!r} has none")
        # the splits the file holds, when split is given (a Karpathy file): to tell a split name it lacks
        self.splits: Optional[tuple[str, ...]] = tuple(sorted(found)) if wanted is not None else None
        if all(entry.error is not None for entry in self._entries):  # e.g. every line lacks text_key
            first = self._entries[0]
            unit = "lines" if self._format == "lines" else "entries"
            message = (
                f"captions must list at least one well-formed image-caption pair, none of the {len(self._entries)} "
                f"{unit} of {self._captions!r} is ({self._place(first)}: {first.error})"
            )
            given = {f"missing key {k!r}": n for n, k in (("image_key", image_key), ("text_key", text_key)) if k}
            one_fault = len({e.error for e in self._entries}) == 1
            if (suffix == ".jsonl" or self._format == "list") and one_fault and first.error in given:
                raise CaptionsError(given[first.error], message)  # every line lacks the key named: the key is wrong
            raise ValueError(message)
        well_formed = [entry for entry in self._entries if entry.error is None and entry.image]
        absolute = bool(well_formed) and os.path.isabs(well_formed[0].image)
        if (
            well_formed
            and absolute == (self._root is not None)
            and all(os.path.isabs(e.image) == absolute for e in well_formed)
        ):
            example = well_formed[0].image
            raise CaptionsError(
                "root",
                f"captions: every image path of {self._captions!r} is absolute (e.g. {example!r}); give no root "
                "(root=None; the retrieval command without --images) to read a file of absolute paths"
                if absolute
                else f"captions: every image path of {self._captions!r} is relative (e.g. {example!r}); give the root "
                "folder they are relative to",
            )

    def _read_parquet(
        self,
        captions: Union[PathLike, Sequence[PathLike]],
        image_key: Optional[str],
        text_key: Optional[str],
        split: object,
    ) -> None:
        """Read the captions of parquet files (a file, a glob pattern, a folder or a list of them: every shard of a
        split, in order, a shard left out of the split warned of in :attr:`warnings`): the images stay in the
        files, read by row."""
        from torchflava.data.parquet import ParquetError, ParquetImages, parquet_captions, parquet_files

        if self._root is not None:
            raise CaptionsError("root", "root must be None for a .parquet captions file, which holds its images")
        for name, key in (("image_key", image_key), ("text_key", text_key)):
            if key is not None and not isinstance(key, str):
                raise TypeError(f"image_key and text_key must be str or None, got {type(key).__name__} for {name}")
        wanted = _check_split(split)
        try:
            files = parquet_files(captions)
            others = [file for file in files if not file.lower().endswith(".parquet")]
            if others:  # (a glob of a split's shards that also matches the dataset's README.md or .json)
                raise ParquetError("paths", f"expected parquet files alone, got {len(others)} other(s): {others[0]}")
            self._parquet = ParquetImages(files, image_key=image_key, labelled=False)
            rows, found, text_key = parquet_captions(self._parquet, text_key, wanted)
        except ParquetError as error:
            if error.argument == "paths":
                raise ValueError(f"captions: {error.reason}") from None
            raise CaptionsError(error.argument, f"{error.argument}: {error.reason}") from None
        self.warnings = list(self._parquet.warnings)
        self._captions = self._parquet.files[0]
        self._format, self._text_key = "parquet", text_key
        self._entries = [_Entry(r.row, self._parquet.relative_path(r.row), r.text, r.error, r.sentence) for r in rows]
        self.splits = found if wanted is not None else None
        self.held_splits = found
        listing = json.dumps(self._parquet.file_rows).encode()
        self.files_digest = f"{len(self._parquet.files)} files, sha1 {hashlib.sha1(listing).hexdigest()[:16]}"
        if not self._entries:
            shown = os.fspath(captions) if isinstance(captions, (str, os.PathLike)) else list(map(os.fspath, captions))
            raise ValueError(f"captions must list at least one image-caption pair, {shown!r} has none")

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def format(self) -> str:
        """How the captions file was read: ``"lines"`` (JSON lines, CSV, TSV), ``"karpathy"`` (a split
        file), ``"coco"`` (a captions file), ``"list"`` (a list of captions) or ``"parquet"``."""
        return self._format

    def __getitem__(self, index: int) -> Sample:
        """Read item ``index``.

        Args:
            index (int): position in ``[0, len(self))``.

        Returns:
            Sample: the decoded RGB image and the stripped caption.

        Raises:
            BadSample: if the entry is malformed, the caption blank or the image unusable.
            IndexError: if ``index`` is out of range.
            TypeError: if ``index`` is not an int.
        """
        index, entry, where = self._entry(index)
        text = _text(entry.text, index, where)
        if self._parquet is not None:  # (the image of the entry's row, in the file)
            try:
                return Sample(image=self._parquet[entry.place].image, text=text)
            except BadSample as bad:
                raise BadSample(index, bad.reason) from None
        return Sample(
            image=read_image(self._image_path(entry.image, index, where), index, where, self._max_pixels), text=text
        )

    def caption(self, index: int) -> str:
        """The caption of item ``index`` without reading its image (for ITM negatives).

        Raises:
            BadSample: if the entry is malformed or the caption blank.
            IndexError: if ``index`` is out of range.
        """
        index, entry, where = self._entry(index)
        return _text(entry.text, index, where)

    def image_path(self, index: int) -> str:
        """The resolved path of item ``index``'s image, without reading it (to find the items that
        share an image: several captions of one picture).

        Raises:
            BadSample: if the entry is malformed or the path empty or refused (see the class).
            IndexError: if ``index`` is out of range.
        """
        index, entry, where = self._entry(index)
        if self._parquet is not None:  # (its row's name: the image of that row)
            return entry.image
        return self._image_path(entry.image, index, where)

    def _where(self, entry: _Entry) -> str:
        """The file and the entry, for messages: ``c.tsv line 3``, ``dataset_coco.json images[2].sentences[4]``."""
        if self._parquet is not None:  # (its row's name, and its caption's place in a list)
            return entry.image + (f".{self._text_key}[{entry.sentence}]" if entry.sentence >= 0 else "")
        return f"{os.path.basename(self._captions)} {self._place(entry)}"

    def _place(self, entry: _Entry) -> str:
        """The entry in its file: ``line 3``, ``images[2].sentences[4]`` (Karpathy), ``annotations[5]`` (COCO),
        ``[7]`` or ``[7].caption[2]`` (a list of captions)."""
        if self._format == "lines":
            return f"line {entry.place}"
        if self._format == "coco":
            return f"annotations[{entry.place}]"
        if self._format == "list":
            return f"[{entry.place}]" + (f".{self._text_key}[{entry.sentence}]" if entry.sentence >= 0 else "")
        return f"images[{entry.place}]" + (f".sentences[{entry.sentence}]" if entry.sentence >= 0 else "")

    def _entry(self, index: int) -> tuple[int, _Entry, str]:
        """Item ``index`` checked, its entry, and where it is (for messages); BadSample if the entry is
        malformed."""
        index = check_index(index, len(self._entries))
        entry = self._entries[index]
        where = self._where(entry)
        if entry.error is not None:
            raise BadSample(index, f"{where}: {entry.error}")
        return index, entry, where

    def _image_path(self, written: str, index: int, where: str) -> str:
        """Absolute path of ``written``: under root, or absolute without a root; BadSample if it is empty,
        absolute under a root, relative without one, or leaves root."""
        if not written:
            raise BadSample(index, f"{where}: empty image path")
        if self._root is None:
            if not os.path.isabs(written):
                raise BadSample(index, f"{where}: image path {written!r} is relative, and no root was given")
            return os.path.normpath(written)
        if os.path.isabs(written):
            raise BadSample(index, f"{where}: image path {written!r} is absolute, not relative to root")
        path = os.path.normpath(os.path.join(self._root, written))
        if os.path.commonpath([self._root, path]) != self._root:
            raise BadSample(index, f"{where}: image path {written!r} leaves root")
        return path


# Files of records, not of texts: read line by line, their columns or markup would be trained on as words.
_NOT_TEXT_LINES = (".json", ".csv", ".tsv", ".parquet", ".arrow")


class TextCorpus(Dataset):
    """A UTF-8 text file, one text per non-blank line (stripped), or a ``.jsonl`` file of one JSON object
    per line holding the text under ``text_key`` (the language-model corpora's form: ``{"text": ...}``);
    items are ``Sample(None, text)``.

    The lines are loaded at construction. A line that is not valid UTF-8 (in a ``.jsonl``: not a JSON
    object with a string under ``text_key``) is an item whose read raises :class:`BadSample`; a leading
    byte-order mark is dropped.

    Args:
        path (PathLike): the text file, or the ``.jsonl`` file.
        text_key (str): the key of the text in each object of a ``.jsonl`` file.

    Raises:
        TypeError: if ``path`` is not a str or PathLike, or ``text_key`` not a str.
        FileNotFoundError: if ``path`` is not a file.
        ValueError: if ``path`` holds no non-blank line, is not UTF-8 text (UTF-16, gzip, binary), is a
            file of records (``.json``, ``.csv``, ``.tsv``, ``.parquet``, ``.arrow``: read line by line, a
            caption file's image paths or a table's columns were trained on as text), or is a ``.jsonl``
            none of whose lines holds a string under ``text_key``.
    """

    def __init__(self, path: PathLike, *, text_key: str = "text") -> None:
        self._path = existing_path("path", path, directory=False)
        if not isinstance(text_key, str):
            raise TypeError(f"text_key must be a str, got {type(text_key).__name__}")
        suffix = os.path.splitext(self._path)[1].lower()
        if suffix in _NOT_TEXT_LINES:
            raise ValueError(
                f"path must be a text file of one text per line, or a .jsonl of objects with a {text_key!r} key, "
                f"got {self._path!r} (a {suffix} file: its lines hold records, not texts)"
            )
        with open(self._path, "rb") as file:
            head = file.read(4096)
        kind = None  # read as UTF-8, these give lines of garbage
        if head.startswith(b"\x1f\x8b"):
            kind = "gzip-compressed"
        elif head[:2] in (b"\xff\xfe", b"\xfe\xff"):
            kind = "UTF-16"
        elif head.count(b"\x00") > len(head) // 10:  # UTF-16 without a BOM, or not text
            kind = "binary (one byte in ten or more is NUL)"
        if kind is not None:
            raise ValueError(f"path must be UTF-8 text, {self._path!r} is {kind}")
        self._texts: list[str] = []
        self._bad: dict[int, str] = {}  # item index -> reason
        undecodable = malformed = 0
        for number, line in _lines(self._path):
            index = len(self._texts)
            if line is None:
                self._bad[index], undecodable = f"line {number}: not valid UTF-8", undecodable + 1
            else:  # checked once here, not at every read (a line of only control or format characters)
                try:
                    line = checked_text(_json_text(line, text_key) if suffix == ".jsonl" else line, index)
                except _MalformedLine as error:
                    self._bad[index], malformed, line = f"line {number}: {error}", malformed + 1, None
                except BadSample as bad:
                    self._bad[index] = f"line {number}: {bad.reason}"
            self._texts.append("" if line is None else line.strip())
        if not self._texts:
            raise ValueError(f"path must hold at least one non-blank line, {self._path!r} holds none")
        if undecodable == len(self._texts):
            raise ValueError(f"path must be UTF-8 text, {self._path!r} holds no line of it")
        if malformed + undecodable == len(self._texts):
            first = next(iter(self._bad.values()))
            raise ValueError(
                f"path must be a .jsonl of objects with a string under text_key={text_key!r}, none of the "
                f"{len(self._texts)} lines of {self._path!r} is one ({first})"
            )

    def __len__(self) -> int:
        return len(self._texts)

    def __getitem__(self, index: int) -> Sample:
        """Read item ``index``.

        Args:
            index (int): position in ``[0, len(self))``.

        Returns:
            Sample: ``image=None`` and the stripped line.

        Raises:
            BadSample: if the line is not valid UTF-8.
            IndexError: if ``index`` is out of range.
            TypeError: if ``index`` is not an int.
        """
        index = check_index(index, len(self._texts))
        if index in self._bad:
            raise BadSample(index, f"{os.path.basename(self._path)} {self._bad[index]}")
        return Sample(image=None, text=self._texts[index])


class _MalformedLine(ValueError):
    """A ``.jsonl`` corpus line that holds no text (the reason says why)."""


def _json_text(line: str, key: str) -> object:
    """The value under ``key`` of the JSON object on ``line`` (checked as a text afterwards)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as error:
        raise _MalformedLine(f"not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise _MalformedLine(f"expected a JSON object, got {_json_type(record)}")
    if key not in record:
        raise _MalformedLine(f"missing key {key!r}")
    if not isinstance(record[key], str):
        raise _MalformedLine(f"{key!r} must be a string, got {_json_type(record[key])}")
    return record[key]


class ImageFolder(Dataset):
    """Every image file under ``root`` (recursive); items are ``Sample(image, None)``.

    Files are matched by extension (any case, with or without the dot) and sorted by their relative
    path written with ``/``, so the order does not depend on the file system. Linked sub-folders are
    followed (each real folder once). Every other entry with such a name is an item: one that is no
    regular file (a FIFO, a socket, a link to a device or to nothing) is a bad sample, refused without
    being opened (reading a FIFO would block), as an unreadable image is. Hidden files and folders
    under ``root`` (a name starting with ``.``) are no items, as Hugging Face datasets'
    image folders leave them out: macOS's ``._photo.jpg`` AppleDouble twins, ``.ipynb_checkpoints``,
    ``.thumbnails``, a ``.Trash-1000`` are copies or metadata, not the user's images. A file that
    does not decode is an item whose read raises :class:`BadSample`.

    Args:
        root (PathLike): the directory to scan.
        extensions (tuple[str, ...]): file extensions that are images.
        max_image_pixels (int): images with more pixels are bad samples (checked before decoding).

    Raises:
        TypeError: if ``root`` is not a str or PathLike, or ``extensions`` not a tuple of strings.
        FileNotFoundError: if ``root`` is not a directory.
        ValueError: if ``root`` holds no file with one of ``extensions`` (hidden ones aside), or an
            extension is empty.
    """

    def __init__(
        self,
        root: PathLike,
        *,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self._max_pixels = check_max_pixels(max_image_pixels)
        self._root = existing_path("root", root, directory=True)
        suffixes = tuple("." + extension for extension in check_extensions("extensions", extensions))
        files, seen, hidden = [], set(), 0
        # Linked sub-folders are followed (each real folder once: a link loop ends). Every other entry is
        # an item: read_image refuses one that is no regular file without opening it (a FIFO named x.png
        # would block the read forever), a bad sample that summaries count (left out, they said "0
        # unreadable"). Hidden files and folders are skipped: a folder copied from a Mac holds a ._x.jpg
        # beside each x.jpg, which sorted first and failed to decode, so the first items of a folder were
        # all unreadable and the folder refused.
        for directory, subfolders, names in os.walk(self._root, followlinks=True):
            real = os.path.realpath(directory)
            if real in seen:
                subfolders[:] = []
                continue
            seen.add(real)
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
            for name in names:
                path = os.path.join(directory, name)
                if name.lower().endswith(suffixes):  # (names: no folder, nor a link to one, os.walk's split)
                    if name.startswith("."):
                        hidden += 1
                    else:
                        files.append(os.path.relpath(path, self._root).replace(os.sep, "/"))
        if not files:
            aside = f" (hidden files aside: {hidden} whose names start with '.')" if hidden else ""
            raise ValueError(f"root must hold a file ending in one of {suffixes}, {self._root!r} holds none{aside}")
        self._files: list[str] = sorted(files)

    def __len__(self) -> int:
        return len(self._files)

    def relative_path(self, index: int) -> str:
        """Path of item ``index`` relative to ``root``, with ``/`` separators."""
        return self._files[check_index(index, len(self._files))]

    def __getitem__(self, index: int) -> Sample:
        """Read item ``index``.

        Args:
            index (int): position in ``[0, len(self))``.

        Returns:
            Sample: the decoded RGB image and ``text=None``.

        Raises:
            BadSample: if the file is gone or does not decode.
            IndexError: if ``index`` is out of range.
            TypeError: if ``index`` is not an int.
        """
        index = check_index(index, len(self._files))
        relative = self._files[index]
        return Sample(
            image=read_image(os.path.join(self._root, relative), index, relative, self._max_pixels), text=None
        )


def text_member(data: bytes, json_text_key: Optional[str], index: object, where: str) -> str:
    """The stripped UTF-8 text of a tar member, or the ``json_text_key`` string of a JSON member
    (``json_text_key`` None: the member is plain text).

    Raises:
        BadSample: if the member is not UTF-8, not JSON with that key, or the text is blank.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadSample(index, f"{where}: text member is not valid UTF-8") from None
    if json_text_key is None:
        return _text(text, index, where)
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise BadSample(index, f"{where}: json member is not valid JSON ({error})") from None
    if not isinstance(record, dict) or json_text_key not in record:
        raise BadSample(index, f"{where}: json member has no {json_text_key!r} key")
    return _text(record[json_text_key], index, where)


class _TarSample(NamedTuple):
    """Where one sample's members lie: shard number, key, and (data offset, size) of each member."""

    shard: int
    key: str
    image: Optional[tuple[int, int]]
    text: Optional[tuple[int, int]]
    text_is_json: bool
    others: tuple[str, ...] = ()  # extensions of its members that are neither image, text nor json
    apart: bool = False  # its key has members elsewhere in the shard, not next to these


# Why a sample whose key has members elsewhere in its shard lacks some (a tar written from a folder in directory
# order, `tar cf x.tar -C dir .`, scatters them: every sample was refused as lacking a member that the shard holds)
APART = (
    "; its key has other members elsewhere in the shard, not next to these: a sample's members must be consecutive "
    "in the tar, as webdataset writes them (tar --sort=name orders a folder's files so)"
)


def missing_members(
    missing: list[str], others: Iterable[str], *, read: Optional[Mapping[str, str]] = None, apart: bool = False
) -> str:
    """A sample's reason for lacking the ``missing`` members, naming its ``others`` (extensions the reader
    does not know): ``photo.v2.jpg`` is key ``photo`` with extension ``v2.jpg``, as webdataset splits it;
    an extension without a dot (``caption``) is one the reader does not read, and ``read`` (what it reads
    for each modality, ``{"text": ".txt members, or .json's 'caption'"}``) says what it reads instead.
    ``apart``: the sample's key has other members elsewhere in the shard (:data:`APART`)."""
    if apart:
        return f"no {' and no '.join(missing)} member{APART}"
    reason = f"no {' and no '.join(missing)} member"
    others = sorted(others)
    if others and any("." in other for other in others):
        reason += (
            f" (its other members' extensions: {', '.join(others)}; a key ends at the member name's first dot, "
            "so a key with a dot gives such extensions)"
        )
    elif others:
        wanted = "; ".join(f"{name}s are read from {read[name]}" for name in missing if name in (read or {}))
        reason += f" (its other members' extensions: {', '.join(others)}{'; ' + wanted if wanted else ''})"
    return reason


def members_read(image_extensions: Sequence[str], text_extensions: Sequence[str], json_text_key: Optional[str]) -> dict:
    """What a shard reader reads for each modality, for :func:`missing_members`."""
    text = ", ".join(f".{e}" for e in text_extensions) + " members"
    return {
        "image": ", ".join(f".{e}" for e in image_extensions) + " members",
        "text": text if json_text_key is None else f"{text}, or .json's {json_text_key!r}",
    }


def _shard_paths(shards: object) -> list[str]:
    """Resolve a path, glob pattern or iterable of paths to the sorted absolute paths of the files."""
    if isinstance(shards, (str, os.PathLike)):
        pattern = check_path("shards", shards)
        if os.path.isfile(pattern):
            paths = [pattern]
        elif any(char in pattern for char in "*?["):
            paths = glob_files(pattern)
        else:
            paths = []
        if not paths:
            raise FileNotFoundError(f"shards must name at least one file, no file matches {pattern!r}")
    elif isinstance(shards, Iterable) and not isinstance(shards, bytes):
        paths = [check_path("shards", path) for path in shards]
        for path in paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"shards must list existing files, {path!r} is not one")
        if not paths:
            raise FileNotFoundError("shards must name at least one file, got an empty sequence")
    else:
        raise TypeError(f"shards must be a path, a glob pattern or paths, got {type(shards).__name__}")
    return sorted(os.path.abspath(path) for path in paths)


class ShardDamage(NamedTuple):
    """Where a shard stops being readable, found while indexing it: what follows is lost.

    Attributes:
        path (str): the shard.
        offset (int): the first byte that could not be indexed.
        size (int): the file's size in bytes.
        reason (str): what was found there (how the file ends, or what is broken).
        truncated (bool): the file ends early (its tail is missing), rather than holding a broken header.
    """

    path: str
    offset: int
    size: int
    reason: str
    truncated: bool

    def __str__(self) -> str:
        name = os.path.basename(self.path)
        unknown = "and how many cannot be known from the file"
        if self.truncated:
            return f"{name} is truncated: {self.reason}; any samples after that are lost, {unknown}"
        lost = f"bytes {self.offset} to {self.size} cannot be indexed: any samples there are lost, {unknown}"
        return f"{name} is damaged: {self.reason}; {lost}"


def _tail_damage(path: str, offset: int, size: int) -> Optional[ShardDamage]:
    """What lies where tarfile stopped reading headers: None for an end-of-archive block."""
    with open(path, "rb") as file:
        file.seek(offset)
        block = file.read(tarfile.BLOCKSIZE)
    if len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0"):
        return None
    if not block:
        reason = (
            f"the file ends at byte {size}, after a whole member, without tar's end-of-archive blocks (it was "
            "cut there, or written by a tool that leaves them out)"
        )
        return ShardDamage(path, offset, size, reason, truncated=True)
    if len(block) < tarfile.BLOCKSIZE:
        reason = f"the file ends at byte {size}, inside the member header that starts at byte {offset}"
        return ShardDamage(path, offset, size, reason, truncated=True)
    return ShardDamage(path, offset, size, f"the block at byte {offset} is not a valid tar header", truncated=False)


def _scan_shard(
    path: str, shard: int, image_extensions: tuple[str, ...], text_extensions: tuple[str, ...], json_text: bool
) -> tuple[list[_TarSample], Optional[ShardDamage]]:
    """Index one shard from its headers: samples in the order of their members, and where the shard
    stops being readable when it does so before its end-of-archive blocks (None otherwise)."""
    groups: list[tuple[str, dict[str, tuple[int, int]]]] = []  # (key, extension -> (offset, size)), in order
    size = os.path.getsize(path)
    if size == 0:
        return [], ShardDamage(path, 0, 0, "the file is empty", truncated=True)
    try:
        with tarfile.open(path, mode="r:") as tar:
            member = None
            while True:
                try:
                    following = tar.next()
                except (tarfile.ReadError, ValueError, OverflowError) as error:  # a member's data or a later header
                    # is cut (ValueError: a member claiming more bytes than a seek can reach, 2**80 in base-256)
                    if member is not None and tar.offset > size:  # the next header would start past the end
                        where = "data" if member.offset_data + member.size > size else "padding"
                        reason = f"the file ends at byte {size}, inside the {where} of member {member.name!r}"
                        damage = ShardDamage(path, size, size, reason, truncated=True)
                    else:
                        reason = f"unreadable header at byte {tar.offset} ({error})"
                        damage = ShardDamage(path, tar.offset, size, reason, truncated=False)
                    break
                if following is None:
                    damage = _tail_damage(path, tar.offset, size)
                    break
                member = following
                if not member.isreg() or member.issparse():
                    continue
                head, base = posixpath.split(member.name)
                stem, _, extension = base.partition(".")
                if stem and extension:  # webdataset: key = path up to the basename's first dot
                    key, extension = posixpath.join(head, stem), extension.lower()
                    # As webdataset groups a stream: consecutive members of one key form a sample; the
                    # key coming back later, or a member repeated, starts another (nothing is merged away).
                    if not groups or groups[-1][0] != key or extension in groups[-1][1]:
                        groups.append((key, {}))
                    groups[-1][1][extension] = (member.offset_data, member.size)
    except tarfile.TarError as error:
        raise ValueError(f"shards must be uncompressed tar files, {path!r} is not one ({error})") from None
    apart, seen = set(), set()  # keys whose members lie in runs apart, not next to each other
    for number, (key, _) in enumerate(groups):
        if key in seen and groups[number - 1][0] != key:
            apart.add(key)
        seen.add(key)
    samples = []
    for key, group in groups:
        image = next((group[e] for e in image_extensions if e in group), None)
        text = next((group[e] for e in text_extensions if e in group), None)
        from_json = text is None and json_text and "json" in group
        others = tuple(e for e in group if e not in image_extensions and e not in text_extensions and e != "json")
        text = group["json"] if from_json else text
        samples.append(_TarSample(shard, key, image, text, from_json, others, apart=key in apart))
    return samples, damage


class TarShards(Dataset):
    """Samples of webdataset-style tar shards, indexed at construction for random access.

    Members are grouped by key, the member path up to the first dot of its basename (``dir/0001.jpg``
    and ``dir/0001.txt`` form sample ``dir/0001`` of that shard); the rest of the basename is the
    extension, matched in any case. As webdataset groups a stream, a sample is a run of consecutive
    members with one key: a key that comes back later, or a member name repeated within the run,
    starts another sample (so the streaming reader sees the same samples, and none is merged away).
    Samples come in shard order (shards sorted by path), then in the order of their members. The index holds, per sample, the data offset and size of its
    image and text members, read from the tar headers only; a read seeks to them. When a sample has
    several candidates for a modality, the extension listed first wins; a ``.json`` member supplies
    the text (under ``json_text_key``) when no text member exists. Every key is an item: one that lacks
    a required member, or whose member is corrupt, truncated or not UTF-8, raises :class:`BadSample`.
    Shards must be uncompressed tars (compressed ones cannot be read at an offset).

    A shard that is cut short (or whose headers break off) keeps every sample indexed before the
    damage; the last of them, which may have lost members to the cut, says so when it is a bad
    sample. The lost tail belongs to no item: each damaged shard is a :class:`ShardDamage` in
    :attr:`lost_data` (which shard, from which byte, what was found there), reported with a
    ``UserWarning`` at construction. How many samples a lost tail held cannot be known from the file,
    so no number is made up for it.

    Args:
        shards (Union[PathLike, Iterable[PathLike]]): one path, a glob pattern (``**`` recurses) or
            paths; duplicates are kept.
        require (tuple[str, ...]): the modalities every item must have and that are returned, a
            non-empty subset of ``("image", "text")``; the other field of the Sample is None.
        image_extensions (tuple[str, ...]): extensions of image members, in order of preference.
        text_extensions (tuple[str, ...]): extensions of UTF-8 text members, in order of preference.
        json_text_key (Optional[str]): key of the text in a ``.json`` member; None ignores ``.json``.
        max_image_pixels (int): images with more pixels are bad samples (checked before decoding).

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if ``require`` is not a non-empty subset of ``("image", "text")``, the extension
            tuples are empty or overlap, a shard is not a tar file, or the shards hold no sample with
            every required member.
        FileNotFoundError: if ``shards`` names no existing file.

    Warns:
        UserWarning: once per damaged shard, with its :class:`ShardDamage` line (on rank 0 alone under a
            process group; every rank has the damage in :attr:`lost_data`).
    """

    def __init__(
        self,
        shards: Union[PathLike, Iterable[PathLike]],
        *,
        require: tuple[str, ...] = ("image", "text"),
        image_extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "webp"),
        text_extensions: tuple[str, ...] = ("txt",),
        json_text_key: Optional[str] = "caption",
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self._max_pixels = check_max_pixels(max_image_pixels)
        if isinstance(require, (str, bytes)) or not isinstance(require, Iterable):
            raise TypeError(f"require must be a tuple of modalities like ('image', 'text'), got {require!r}")
        wanted = tuple(require)
        if not wanted or any(name not in ("image", "text") for name in wanted):
            raise ValueError(f"require must be a non-empty subset of ('image', 'text'), got {wanted!r}")
        self._require = tuple(name for name in ("image", "text") if name in wanted)
        image_extensions = check_extensions("image_extensions", image_extensions)
        text_extensions = check_extensions("text_extensions", text_extensions)
        if set(image_extensions) & set(text_extensions):
            shared = sorted(set(image_extensions) & set(text_extensions))
            raise ValueError(f"image_extensions and text_extensions must not overlap, both hold {shared}")
        if json_text_key is not None and not isinstance(json_text_key, str):
            raise TypeError(f"json_text_key must be a str or None, got {type(json_text_key).__name__}")
        self._json_text_key = json_text_key
        self._members_read = members_read(image_extensions, text_extensions, json_text_key)
        self._paths = _shard_paths(shards)
        self._samples: list[_TarSample] = []
        self._damage: list[ShardDamage] = []
        self._cut_after: dict[int, ShardDamage] = {}  # index of a damaged shard's last sample -> its damage
        use_json = json_text_key is not None
        for shard, path in enumerate(self._paths):
            samples, damage = _scan_shard(path, shard, image_extensions, text_extensions, use_json)
            self._samples.extend(samples)
            if damage is not None:
                self._damage.append(damage)
                if get_rank() == 0:  # (every rank of a run indexes the same shards: one says so)
                    warnings.warn(str(damage), stacklevel=2)
                if samples:
                    self._cut_after[len(self._samples) - 1] = damage
        if not self._samples:
            raise ValueError(f"shards must hold at least one sample, {len(self._paths)} file(s) hold none")
        if not any(all(getattr(sample, name) is not None for name in self._require) for sample in self._samples):
            wanted = " and ".join(self._require)  # read from the headers: no item would be usable
            first = self._samples[0]
            missing = [name for name in self._require if getattr(first, name) is None]
            raise ValueError(
                f"shards must hold a sample with {wanted} members, none of {len(self)} sample(s) does (the first, "
                f"{os.path.basename(self._paths[first.shard])}:{first.key}: "
                f"{missing_members(missing, first.others, read=self._members_read, apart=first.apart)})"
            )

    @property
    def lost_data(self) -> list[ShardDamage]:
        """The damaged shards, in shard order: data lost beyond the items (empty when none is)."""
        return list(self._damage)

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> Sample:
        """Read item ``index`` from its shard.

        Args:
            index (int): position in ``[0, len(self))``.

        Returns:
            Sample: the required modalities (RGB image, stripped text); None for the others.

        Raises:
            BadSample: if a required member is missing, unreadable, truncated or does not decode.
            IndexError: if ``index`` is out of range.
            TypeError: if ``index`` is not an int.
        """
        return self._sample(check_index(index, len(self._samples)), self._require)

    def caption(self, index: int) -> str:
        """The text of item ``index`` without reading its image: an ITM negative or a learnt vocabulary
        needs only the text (reading it through ``self[index]`` decoded a whole image for it).

        Raises:
            BadSample: if the text member is missing, unreadable, truncated, not UTF-8 or blank.
            IndexError: if ``index`` is out of range.
            TypeError: if ``index`` is not an int.
            ValueError: if these shards read no text (``require`` without ``"text"``).
        """
        if "text" not in self._require:
            raise ValueError(f"caption: these shards read no text (require={self._require!r})")
        return self._sample(check_index(index, len(self._samples)), ("text",)).text

    def sample_key(self, index: int) -> tuple[str, str]:
        """Item ``index``'s shard (its absolute path) and key (``s0000017`` of ``s0000017.webp``), read from the
        index (no member is read).

        Raises:
            IndexError: if ``index`` is out of range.
            TypeError: if ``index`` is not an int.
        """
        sample = self._samples[check_index(index, len(self._samples))]
        return self._paths[sample.shard], sample.key

    def _sample(self, index: int, names: tuple[str, ...]) -> Sample:
        """The ``names`` modalities of item ``index`` (in range) read from its shard, or :class:`BadSample`
        (saying so when the shard breaks off after the item)."""
        try:
            return self._members(index, names)
        except BadSample as bad:
            if index not in self._cut_after:
                raise
            damage = self._cut_after[index]
            raise BadSample(index, f"{bad.reason} (the shard breaks off after it, at byte {damage.offset})") from None

    def _members(self, index: int, names: tuple[str, ...]) -> Sample:
        """The ``names`` modalities of item ``index`` (in range), or :class:`BadSample`."""
        sample = self._samples[index]
        where = f"{os.path.basename(self._paths[sample.shard])}:{sample.key}"
        missing = [name for name in names if getattr(sample, name) is None]
        if missing:
            reason = missing_members(missing, sample.others, read=self._members_read, apart=sample.apart)
            raise BadSample(index, f"{where}: {reason}")
        data = self._read(sample, names, index, where)
        image = read_image(io.BytesIO(data["image"]), index, where, self._max_pixels) if "image" in data else None
        json_key = self._json_text_key if sample.text_is_json else None
        text = text_member(data["text"], json_key, index, where) if "text" in data else None
        return Sample(image=image, text=text)

    def _read(self, sample: _TarSample, names: tuple[str, ...], index: int, where: str) -> dict[str, bytes]:
        """The bytes of the ``names`` members, read at their offsets in one opening of the shard."""
        data = {}
        try:
            with open(self._paths[sample.shard], "rb") as file:
                length = os.fstat(file.fileno()).st_size
                for name in names:
                    offset, size = getattr(sample, name)
                    if (
                        offset + size > length
                    ):  # a header claiming more than the file holds: read() would allocate it all
                        got = max(0, length - offset)
                        raise BadSample(index, f"{where}: {name} member truncated ({got} of {size} bytes)")
                    file.seek(offset)
                    data[name] = file.read(size)
                    if len(data[name]) != size:
                        got = len(data[name])
                        raise BadSample(index, f"{where}: {name} member truncated ({got} of {size} bytes)")
        except OSError as error:
            reason = f"cannot read the shard ({type(error).__name__}: {error})"
            raise BadSample(index, f"{where}: {reason}") from None
        return data
