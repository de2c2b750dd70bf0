"""Image-classification data in parquet files, as the Hugging Face Hub serves datasets.

``huggingface-cli download --repo-type dataset food101 --local-dir food101`` gives
``food101/data/validation-00000-of-00003.parquet``...: each row an image and its class id. Hugging Face's
``datasets`` writes the features in the schema's metadata, under the key ``huggingface`` (JSON
``{"info": {"features": {"image": {"_type": "Image"}, "label": {"names": [...], "_type": "ClassLabel"}}}}``);
its ``Image`` column is a struct ``{bytes: binary, path: string}`` (the encoded file, or where ``bytes`` is null a
path, read relative to the parquet file's folder), others hold the bytes alone (binary) or a path (string).
:class:`ParquetImages` reads such files a row group at a time (never every image's bytes at once: ImageNet's
validation split is 6.4 GB), with the class names of the ``ClassLabel`` metadata.

pyarrow is optional (the ``parquet`` extra): it is imported when a parquet file is read, and its absence is one
line saying what to install.
"""

import bisect
import io
import json
import os
import re
from typing import Any, NamedTuple, Optional, Sequence, Union

from torch.utils.data import Dataset

from torchflava.data.decode import DEFAULT_MAX_PIXELS
from torchflava.data.finetuning import LabeledSample
from torchflava.data.readers import check_index, check_max_pixels, glob_files, read_image
from torchflava.data.samples import ArgumentRefusal, BadSample
from torchflava.utils.checks import check_path

PathLike = Union[str, os.PathLike]
MISSING_PYARROW = (
    "reading parquet files needs pyarrow: pip install 'torchflava[parquet]' (or pip install 'pyarrow>=14')"
)
IMAGE_COLUMNS = ("image", "img")  # the image column's usual names, where no column is of Hugging Face's Image feature
LABEL_COLUMNS = ("label", "labels", "fine_label")  # the label column's (CIFAR-100's fine_label beside coarse_label)
ROWS_READ = 16  # rows decoded from the file at a time (a row group of one large file is streamed, not read whole)
_SHARD = re.compile(r"(.+)-(\d{5})-of-(\d{5})\.parquet")  # Hugging Face's shard names: validation-00000-of-00008


class ParquetError(ArgumentRefusal):
    """A refusal of :class:`ParquetImages`; ``argument`` is the argument that answers for it: ``"paths"``,
    ``"image_key"``, ``"label_key"`` or ``"classes"``."""


def import_pyarrow() -> Any:
    """``pyarrow.parquet``, imported now; ImportError in one line naming what to install where pyarrow is absent."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(MISSING_PYARROW) from None
    return pq


def is_parquet(value: PathLike) -> bool:
    """Whether a path given for images names parquet data: a ``.parquet`` file or glob pattern, or a folder
    holding ``.parquet`` files at its top (a Hugging Face download's ``data/``)."""
    text = os.fspath(value)
    if text.lower().endswith(".parquet"):
        return True
    if os.path.isdir(text):
        return any(name.lower().endswith(".parquet") and not name.startswith(".") for name in os.listdir(text))
    return False


def parquet_hint(folder: PathLike) -> str:
    """Where a folder without images holds parquet files in a sub-folder (a Hugging Face download's root, its files
    in ``data/``), what to give instead: ``; it holds parquet files in data/ (validation-00000-of-00003.parquet...):
    give them, e.g. food101/data/validation-*.parquet``; else an empty string."""
    for directory, subfolders, names in os.walk(folder):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        found = sorted(name for name in names if name.lower().endswith(".parquet") and not name.startswith("."))
        if found:
            where = os.path.relpath(directory, folder)
            match = _SHARD.fullmatch(found[0])
            example = os.path.join(directory, f"{match[1]}-*.parquet" if match else found[0])
            return f"; it holds parquet files in {where}/ ({found[0]}...): give them, e.g. {example}"
        if os.path.relpath(directory, folder).count(os.sep) >= 2:  # (a download's data/ or data/<config>/ is near)
            subfolders[:] = []
    return ""


def parquet_files(paths: Union[PathLike, Sequence[PathLike]]) -> list[str]:
    """The parquet files ``paths`` names, sorted, each once: a file, a glob pattern (``data/validation-*.parquet``),
    a folder (its ``.parquet`` files at its top), or a list of them; ParquetError (``paths``) where one names none,
    or a folder holds the files of several splits (``train-*`` and ``validation-*``: give one)."""
    values = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"paths must be a path, a glob pattern or a list of them, got {paths!r}")
    found = []
    for value in values:
        text = check_path("paths", value)
        if os.path.isdir(text):
            names = sorted(n for n in os.listdir(text) if n.lower().endswith(".parquet") and not n.startswith("."))
            files = [os.path.join(text, n) for n in names if os.path.isfile(os.path.join(text, n))]
            splits = sorted({match[1] for n in names if (match := _SHARD.fullmatch(n))})
            if len(splits) > 1:
                raise ParquetError(
                    "paths",
                    f"{text} holds the parquet files of {len(splits)} splits ({', '.join(splits)}): give one, e.g. "
                    f"{os.path.join(text, splits[-1])}-*.parquet",
                )
        elif os.path.isfile(text):
            files = [text]
        elif any(char in text for char in "*?["):
            files = glob_files(text)
        else:
            files = []
        if not files:
            raise ParquetError("paths", f"expected a parquet file, a glob pattern or a folder of them, got {text!r}")
        found += files
    return sorted(dict.fromkeys(os.path.abspath(file) for file in found))


def missing_shards(files: Sequence[str]) -> list[str]:
    """The one-line warnings of Hugging Face shards (``validation-00003-of-00008.parquet``) left out of ``files``:
    a glob or folder copied in part loses those images silently."""
    present: dict[tuple[str, str, int], set[int]] = {}
    for file in files:
        match = _SHARD.fullmatch(os.path.basename(file))
        if match:
            present.setdefault((os.path.dirname(file), match[1], int(match[3])), set()).add(int(match[2]))
    warnings = []
    for (folder, split, total), indices in sorted(present.items()):
        absent = [f"{i:05d}" for i in range(total) if i not in indices]
        if absent:
            shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
            warnings.append(
                f"warning: {len(indices)} of the {total} files {os.path.join(folder, split)}-*-of-{total:05d}.parquet "
                f"given, their images read: {shown} absent"
            )
    return warnings


class _File(NamedTuple):
    path: str
    name: str  # how its rows are named: its path relative to the files' common folder
    row_groups: list[int]  # the first row of each row group, then the number of rows
    size: int  # its size in bytes, as listed


class _Cursor:
    """The open file and the rows last read of one process: a fork's child opens its own (a handle is no part of
    what a DataLoader worker receives)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.file: Optional[int] = None
        self.handle: Any = None
        self.group: Optional[int] = None
        self.batches: Any = None  # the iterator over the row group's batches
        self.start = 0  # the row group's row of the first value of ``values``
        self.values: list = []


def _features(schema: Any) -> dict:
    """The Hugging Face features of a parquet schema's metadata (``{}`` where it has none)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return {}
    try:
        features = json.loads(raw)["info"]["features"]
    except (ValueError, KeyError, TypeError):
        return {}
    return features if isinstance(features, dict) else {}


def _kind(feature: object) -> Optional[str]:
    return feature.get("_type") if isinstance(feature, dict) else None


class ParquetImages(Dataset):
    """The images of parquet files, one a row, and their class ids; items are
    :class:`~torchflava.data.finetuning.LabeledSample` ``(image, None, class id)`` (class id None where the files
    have no label column), as :class:`~torchflava.data.finetuning.ImageClassFolder`'s.

    Rows are read a row group (at most :data:`ROWS_READ` rows) at a time, in the process that reads them, so the
    dataset goes to ``DataLoader`` workers (forked or spawned) as its file names. An item's name
    (:meth:`relative_path`) is its file's and its row's: ``validation-00000-of-00008.parquet[0017]``.

    Args:
        paths (Union[PathLike, Sequence[PathLike]]): a parquet file, a glob pattern, a folder of parquet files (at
            its top), or a list of them (every file of one schema).
        image_key (Optional[str]): the image column; by default the one column of Hugging Face's ``Image``
            feature, else ``image`` or ``img``. A struct ``{bytes, path}`` (Hugging Face's), binary bytes, or a
            string path (relative to the parquet file's folder).
        label_key (Optional[str]): the column of class ids (integers), or of class names (strings: each row's
            class is its name's place in ``classes``); by default the ``ClassLabel`` column (``label``, ``labels``
            or ``fine_label`` of several), else one so named; none of them: unlabelled.
        classes (Optional[Sequence[str]]): class names in id order; by default the label column's ``ClassLabel``
            names, or for a column of names the names it holds, sorted (None where there are none: :attr:`classes`
            is then None).
        labelled (bool): False: no label column is looked for (the images of image-caption rows).
        max_image_pixels (int): images with more pixels are bad samples (checked before decoding).

    Raises:
        ImportError: if pyarrow is not installed (one line: what to install).
        TypeError: if ``paths`` is not a path or a list of them.
        ParquetError: (a ValueError naming the argument that answers for it) if a path names no parquet file, a file
            is no parquet file (or its labels do not read) or holds no row, the files' schemas differ, a key names no
            column, the image column is of another type, the label column holds neither integers nor strings, a
            label is outside the classes (a name: not among them, or among them twice; a row whose label is null
            or -1 is left out of the items, one line in :attr:`warnings` saying how many; every label -1 (or
            null) is an unlabelled split: :attr:`labels` None, :attr:`unlabelled` saying so), or ``classes`` has
            another number of names than the ``ClassLabel`` (all before any image is read).
    """

    item_noun = "an image"

    def __init__(
        self,
        paths: Union[PathLike, Sequence[PathLike]],
        *,
        image_key: Optional[str] = None,
        label_key: Optional[str] = None,
        classes: Optional[Sequence[str]] = None,
        labelled: bool = True,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self._max_pixels = check_max_pixels(max_image_pixels)
        pq = import_pyarrow()
        import pyarrow as pa

        files = parquet_files(paths)
        self.warnings = missing_shards(files)
        common = os.path.commonpath([os.path.dirname(f) for f in files])
        schema, self._files = None, []
        for path in files:
            try:
                handle = pq.ParquetFile(path)
            except (pa.ArrowException, OSError) as error:
                raise ParquetError("paths", f"{path} is not a parquet file ({type(error).__name__}: {error})") from None
            with handle:
                meta = handle.metadata
                here = handle.schema_arrow
                starts = [0]
                for group in range(meta.num_row_groups):
                    starts.append(starts[-1] + meta.row_group(group).num_rows)
            if schema is None:
                schema, first = here, path
            elif not here.remove_metadata().equals(schema.remove_metadata()) or _features(here) != _features(schema):
                raise ParquetError(
                    "paths",
                    f"expected files of one schema, got {first} ({_columns(schema)}) and {path} ({_columns(here)})",
                )
            name = os.path.relpath(path, common).replace(os.sep, "/")
            self._files.append(_File(path, name, starts, os.path.getsize(path)))
        self._ends = list(_accumulate(f.row_groups[-1] for f in self._files))  # each file's end, in all rows
        if self._ends[-1] == 0:
            raise ParquetError("paths", f"{_shown(files)} hold(s) no row")
        features = _features(schema)
        self.image_key = _image_column(schema, features, image_key)
        _check_image_type(schema, self.image_key)
        self.schema = schema  # (the files' one schema, its metadata included)
        self.label_key = _label_column(schema, features, label_key) if labelled else None
        feature = features.get(self.label_key)
        names = feature.get("names") if _kind(feature) == "ClassLabel" else None
        names = list(names) if isinstance(names, list) and all(isinstance(n, str) for n in names) else None
        if classes is not None and names is not None and len(classes) != len(names):
            raise ParquetError(
                "classes",
                f"expected the {len(names)} classes of {self.label_key!r}'s ClassLabel in {self._files[0].path}, "
                f"got {len(classes)} names",
            )
        self.classes = list(classes) if classes is not None else names
        self.label_names = names  # the ClassLabel names of the files, in id order, whatever ``classes`` gives
        self.unlabelled: Optional[str] = None  # why the files are unlabelled though they have a label column
        self._rows: Optional[list[int]] = None  # the rows that are items, where unlabelled ones are left out
        self.labels = None if self.label_key is None else self._read_labels(schema.field(self.label_key).type)

    def _read_labels(self, kind: Any) -> Optional[list[int]]:
        """Every row's class id, read from the label column (a few bytes a row), checked; None where every one is
        -1 (Hugging Face's unlabelled split: its test split, the ClassLabel column kept), saying so in
        :attr:`unlabelled`."""
        import pyarrow as pa

        value = kind.value_type if pa.types.is_dictionary(kind) else kind  # (a dictionary-encoded column's values)
        named = pa.types.is_string(value) or pa.types.is_large_string(value)
        if not pa.types.is_integer(value) and not named:
            raise ParquetError(
                "label_key",
                f"expected a column of integer class ids or of class names (strings), got {self.label_key!r} of type "
                f"{kind}",
            )
        read = [read_columns(file.path, [self.label_key])[0] for file in self._files]
        if all(value == -1 for values in read for value in values):
            self.unlabelled = f"every {self.label_key!r} of the parquet files is -1 (Hugging Face's unlabelled split)"
            return None
        if all(value is None or value == -1 for values in read for value in values):
            self.unlabelled = f"every {self.label_key!r} of the parquet files is null or -1 (an unlabelled split)"
            return None
        read = self._leave_out_unlabelled(read)
        if named:
            return self._named_labels(read)
        labels: list[int] = []
        for file, values in zip(self._files, read):
            bound = len(self.classes) if self.classes is not None else None
            for row, value in values:
                if value < 0 or (bound is not None and value >= bound):
                    among = f"the {bound} classes, 0..{bound - 1}" if bound is not None else "the class ids, 0 or more"
                    raise ParquetError(
                        "label_key",
                        f"expected {self.label_key!r} among {among}, got {value} at row {row} of {file.path}",
                    )
                labels.append(value)
        return labels

    def _leave_out_unlabelled(self, read: list[list]) -> list[list[tuple[int, Any]]]:
        """Each file's labelled rows, (row, label), of its label column ``read``: a row whose label is null (or -1,
        Hugging Face's unlabelled row) is left out of the dataset's items (:attr:`_rows`), as an image a labels file
        does not name is left out of a folder, with one warning (in :attr:`warnings`) saying how many."""
        kept, rows, start, absent = [], [], 0, 0
        for values in read:
            labelled = [(row, value) for row, value in enumerate(values) if value is not None and value != -1]
            kept.append(labelled)
            rows += [start + row for row, _ in labelled]
            absent += len(values) - len(labelled)
            start += len(values)
        if absent:
            self._rows = rows
            first = next(
                _row_name(file, row)
                for file, values in zip(self._files, read)
                for row, value in enumerate(values)
                if value is None or value == -1
            )
            self.warnings.append(
                f"warning: {absent} of the {start} rows of the parquet files have no {self.label_key!r} (null or -1, "
                f"unlabelled) and are left out (first {first})"
            )
        return kept

    def _named_labels(self, read: list[list]) -> list[int]:
        """Each row's class id where the label column names the classes (strings, as some Hub datasets store them
        instead of ClassLabel ids): its name's place in :attr:`classes`, which are the names in sorted order where
        not given (as class folders are sorted); ParquetError where a row names none of them, or a name two."""
        if self.classes is None:
            self.classes = sorted({name for values in read for _, name in values})
        ids: dict[str, int] = {}
        for index, name in enumerate(self.classes):
            ids.setdefault(name, index)
        labels: list[int] = []
        for file, values in zip(self._files, read):
            for row, name in values:
                if name not in ids:
                    shown = ", ".join(map(repr, self.classes[:5])) + (", ..." if len(self.classes) > 5 else "")
                    raise ParquetError(
                        "label_key",
                        f"expected {self.label_key!r} to name one of the {len(self.classes)} classes ({shown}), got "
                        f"{name!r} at row {row} of {file.path}",
                    )
                if self.classes.count(name) > 1:
                    raise ParquetError(
                        "classes",
                        f"expected each class named once, got {name!r} {self.classes.count(name)} times "
                        f"(the rows of {self.label_key!r} name their class: which one would be ambiguous)",
                    )
                labels.append(ids[name])
        return labels

    def __len__(self) -> int:
        return self._ends[-1] if self._rows is None else len(self._rows)

    def _where(self, index: int) -> tuple[int, int]:
        """(file, row in it) of item ``index``."""
        index = index if self._rows is None else self._rows[index]  # (its row in all the files' rows)
        file = bisect.bisect_right(self._ends, index)
        return file, index - (self._ends[file - 1] if file else 0)

    def relative_path(self, index: int) -> str:
        """Item ``index``'s name: its file's path (relative to the files' common folder) and its row,
        ``validation-00000-of-00008.parquet[0017]`` (zero-padded: names sort in row order)."""
        file, row = self._where(check_index(index, len(self)))
        return _row_name(self._files[file], row)

    @property
    def files(self) -> list[str]:
        """The parquet files read, absolute paths in the order of their rows."""
        return [file.path for file in self._files]

    @property
    def file_rows(self) -> list[tuple[str, int, int]]:
        """Each file read, in order: its name (relative to the files' common folder), its number of rows and its size
        in bytes as listed."""
        return [(file.name, file.row_groups[-1], file.size) for file in self._files]

    @property
    def empty_classes(self) -> list[str]:
        """The classes no row is labelled with."""
        present = set(self.labels or ())
        return [name for i, name in enumerate(self.classes or ()) if i not in present]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_cursor", None)  # (an open file: each process opens its own)
        return state

    def _value(self, file: int, row: int) -> Any:
        """The image column's value at ``row`` of ``file``, read a row group's :data:`ROWS_READ` rows at a time."""
        cursor = self.__dict__.get("_cursor")
        if cursor is None or cursor.pid != os.getpid():
            cursor = self._cursor = _Cursor()
        starts = self._files[file].row_groups
        group = bisect.bisect_right(starts, row) - 1
        offset = row - starts[group]
        if cursor.file == file and cursor.group == group and cursor.start <= offset < cursor.start + len(cursor.values):
            return cursor.values[offset - cursor.start]
        if cursor.file != file:
            if cursor.handle is not None:
                cursor.handle.close()
            # (buffered: a large row group streams a page at a time, its rows not read whole)
            cursor.handle = import_pyarrow().ParquetFile(self._files[file].path, buffer_size=1 << 20, pre_buffer=False)
            cursor.file, cursor.group = file, None
        if cursor.group != group or offset < cursor.start:  # (a row behind the batches read: the group anew)
            cursor.group, cursor.start, cursor.values = group, 0, []
            cursor.batches = cursor.handle.iter_batches(
                batch_size=ROWS_READ, row_groups=[group], columns=[self.image_key], use_threads=False
            )
        while not cursor.start <= offset < cursor.start + len(cursor.values):
            cursor.start += len(cursor.values)
            cursor.values = []  # (the batch before dropped first)
            cursor.values = next(cursor.batches).column(0).to_pylist()
        return cursor.values[offset - cursor.start]

    def __getitem__(self, index: int) -> LabeledSample:
        """Read item ``index``; BadSample for a null image, a path to no file, or data that does not decode."""
        index = check_index(index, len(self))
        file, row = self._where(index)
        where = self.relative_path(index)
        import pyarrow as pa  # (imported when the files were listed)

        try:
            value = self._value(file, row)
        except (pa.ArrowException, OSError, StopIteration) as error:  # (a file changed or removed since listed)
            self._cursor = _Cursor()  # (its file read anew at the next row)
            reason = (
                f"{type(error).__name__}: {error}" if str(error) else f"{type(error).__name__}: fewer rows than listed"
            )
            raise BadSample(index, f"{where}: unreadable parquet row ({reason})") from None
        if isinstance(value, dict):  # Hugging Face's Image: the bytes, else a path
            value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
        if value is None:
            raise BadSample(index, f"{where}: no image (null {self.image_key!r})")
        if isinstance(value, str):
            path = os.path.join(os.path.dirname(self._files[file].path), value)
            image = read_image(path, index, f"{where} ({value})", self._max_pixels)
        else:
            image = read_image(io.BytesIO(value), index, where, self._max_pixels)
        return LabeledSample(image, None, None if self.labels is None else self.labels[index])


def read_columns(path: str, columns: Sequence[str]) -> list[list]:
    """The values of ``columns`` of parquet file ``path`` (a few bytes a row: labels, captions); ParquetError
    (``paths``) in one line where its data does not read (a file damaged after its footer was written: pyarrow's
    OSError, over several lines, named neither the file nor the argument)."""
    import pyarrow as pa

    try:
        table = import_pyarrow().read_table(path, columns=list(columns))
    except (pa.ArrowException, OSError) as error:
        reason = " ".join(str(error).split())  # (pyarrow's message, on one line)
        raise ParquetError(
            "paths", f"{path} is not a readable parquet file ({type(error).__name__}: {reason})"
        ) from None
    return [table.column(name).to_pylist() for name in columns]


def _row_name(file: _File, row: int) -> str:
    """Row ``row`` of ``file`` named as an item is: ``validation-00000-of-00008.parquet[0017]`` (zero-padded: names
    sort in row order)."""
    width = len(str(max(file.row_groups[-1] - 1, 0)))
    return f"{file.name}[{row:0{width}d}]"


def _accumulate(counts: Any) -> list[int]:
    total, out = 0, []
    for count in counts:
        total += count
        out.append(total)
    return out


def _shown(files: Sequence[str]) -> str:
    return files[0] if len(files) == 1 else f"the {len(files)} files {files[0]}..."


def _columns(schema: Any) -> str:
    return ", ".join(f"{field.name}: {field.type}" for field in schema)


def _image_column(schema: Any, features: dict, key: Optional[str]) -> str:
    """The image column: ``key``, else the one column of the Image feature, else ``image`` or ``img``."""
    if key is not None:
        if key not in schema.names:
            raise ParquetError(
                "image_key", f"expected a column of the files, got {key!r} (columns: {_columns(schema)})"
            )
        return key
    typed = [name for name in schema.names if _kind(features.get(name)) == "Image"]
    if len(typed) > 1:
        raise ParquetError("image_key", f"the files have {len(typed)} image columns, {typed}: name one")
    found = typed or [name for name in IMAGE_COLUMNS if name in schema.names]
    if not found:
        raise ParquetError(
            "image_key",
            f"expected an image column (of Hugging Face's Image feature, or named {' or '.join(IMAGE_COLUMNS)}), "
            f"got the columns {_columns(schema)}: name one",
        )
    return found[0]


def _check_image_type(schema: Any, key: str) -> None:
    """ParquetError unless column ``key`` holds images: a struct {bytes, path}, bytes, or a path."""
    import pyarrow as pa

    kind = schema.field(key).type
    # (the view types' tests are pyarrow 16's: an older one has no such column to test)
    binary = (pa.types.is_binary, pa.types.is_large_binary, getattr(pa.types, "is_binary_view", lambda kind: False))
    text = (pa.types.is_string, pa.types.is_large_string, getattr(pa.types, "is_string_view", lambda kind: False))
    if pa.types.is_struct(kind):
        fields = {kind.field(i).name: kind.field(i).type for i in range(kind.num_fields)}
        if "bytes" in fields and any(test(fields["bytes"]) for test in binary):
            if "path" not in fields or any(test(fields["path"]) for test in text):
                return
    elif any(test(kind) for test in binary + text):
        return
    raise ParquetError(
        "image_key",
        f"expected {key!r} to hold images (Hugging Face's struct {{bytes: binary, path: string}}, binary bytes or "
        f"a string path), got {kind}",
    )


def _label_column(schema: Any, features: dict, key: Optional[str]) -> Optional[str]:
    """The label column: ``key``, else the ClassLabel column (of several: ``label``, ``labels`` or ``fine_label``),
    else one so named, else None (unlabelled)."""
    if key is not None:
        if key not in schema.names:
            raise ParquetError(
                "label_key", f"expected a column of the files, got {key!r} (columns: {_columns(schema)})"
            )
        return key
    typed = [name for name in schema.names if _kind(features.get(name)) == "ClassLabel"]
    if len(typed) > 1:
        preferred = [name for name in LABEL_COLUMNS if name in typed]
        if not preferred:
            raise ParquetError("label_key", f"the files have {len(typed)} ClassLabel columns, {typed}: name one")
        typed = preferred[:1]
    found = typed or [name for name in LABEL_COLUMNS if name in schema.names]
    return found[0] if found else None


TEXT_COLUMNS = ("caption", "captions", "text", "sentences")  # the caption column's usual names


class CaptionRow(NamedTuple):
    """A caption of an image-caption parquet file: its row (in all the files' rows), its position in the row's list
    of captions (-1 for a string column), the caption, or why there is none."""

    row: int
    sentence: int
    text: str
    error: Optional[str] = None


def parquet_captions(
    images: ParquetImages, text_key: Optional[str], split: Optional[frozenset]
) -> tuple[list[CaptionRow], tuple[str, ...], str]:
    """The captions of parquet ``images``' rows, one a caption (COCO's five of an image in a list of strings are
    five), of the rows whose ``split`` column is among ``split`` (None: every row), the splits the files hold
    (none without a ``split`` column of strings, plain or dictionary-encoded), and the caption column; ParquetError (``text_key``, ``split``) where the caption column is missing or of
    another type, or the files have no ``split`` column of strings."""
    import pyarrow as pa

    schema = images.schema
    if text_key is None:
        found = [name for name in TEXT_COLUMNS if name in schema.names]
        if not found:
            raise ParquetError(
                "text_key", f"expected a caption column ({', '.join(TEXT_COLUMNS)}), got {_columns(schema)}: name one"
            )
        text_key = found[0]
    elif text_key not in schema.names:
        raise ParquetError(
            "text_key", f"expected a column of the files, got {text_key!r} (columns: {_columns(schema)})"
        )
    kind = schema.field(text_key).type
    strings = (pa.types.is_string, pa.types.is_large_string)
    listed = (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and any(t(kind.value_type) for t in strings)
    if not listed and not any(test(kind) for test in strings):
        raise ParquetError("text_key", f"expected {text_key!r} to hold a caption or a list of them, got {kind}")
    columns = [text_key]
    split_kind = schema.field("split").type if "split" in schema.names else None
    if split_kind is not None and pa.types.is_dictionary(split_kind):  # (pandas' category, written as a dictionary)
        split_kind = split_kind.value_type
    split_column = split_kind is not None and any(test(split_kind) for test in strings)
    if split is not None and not split_column:
        raise ParquetError("split", "split is for files with a 'split' column of strings, these have none")
    if split_column:  # (read with split None too: the splits the files hold, which a reader of every row may refuse)
        columns.append("split")
    rows: list[CaptionRow] = []
    splits: set[str] = set()
    start = 0
    for path in images.files:
        read = read_columns(path, columns)
        texts = read[0]
        kept = read[1] if split_column else [None] * len(texts)
        for row, (value, name) in enumerate(zip(texts, kept), start):
            if name is not None:
                splits.add(name)
            if split is not None and name not in split:
                continue
            if value is None:
                rows.append(CaptionRow(row, -1, "", f"null {text_key!r}"))
            elif isinstance(value, str):
                rows.append(CaptionRow(row, -1, value))
            elif not value:
                rows.append(CaptionRow(row, -1, "", f"an empty list of captions in {text_key!r}"))
            else:
                rows += [
                    CaptionRow(row, k, "" if t is None else t, None if t is not None else "null caption")
                    for k, t in enumerate(value)
                ]
        start += len(texts)
    if split is not None and not split <= splits:
        held = f"({', '.join(sorted(splits))})" if splits else "(none: every 'split' of the files is null)"
        raise ParquetError("split", f"expected splits of the files {held}, got {sorted(split - splits)}")
    return rows, tuple(sorted(splits)), text_key
