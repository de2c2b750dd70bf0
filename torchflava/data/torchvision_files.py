"""Image-classification data in the files torchvision's CIFAR and MNIST-family datasets download.

``torchvision.datasets.CIFAR10(root, download=True)`` leaves ``root/cifar-10-batches-py/``: ``data_batch_1`` ...
``data_batch_5`` (the train split), ``test_batch`` and ``batches.meta``, each a Python 2 pickle of a dict with
bytes keys (``b"data"``: a uint8 (N, 3072) array, each row an image's 32 x 32 red, then green, then blue plane;
``b"labels"``: N class ids; the meta's ``b"label_names"``). ``CIFAR100`` leaves ``root/cifar-100-python/``:
``train``, ``test`` and ``meta`` alike (``b"fine_labels"``; ``b"fine_label_names"``: the 100 classes, not the 20
superclasses). ``MNIST``, ``FashionMNIST`` and ``KMNIST`` leave ``root/<that name>/raw/``:
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte`` (idx files: a magic number, big-endian int32 dimensions, then uint8 values), each also
as the ``.gz`` it was extracted from. :class:`TorchvisionImages` reads them.

The pickles are read by :class:`SafeUnpickler`, which never calls anything a file names: the three globals such a
file asks for (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``: a numpy array as Python
2's pickle wrote it) are stood in for by inert objects recording their arguments, from which the array is built
after the file is read and checked (integer dtypes only, as many bytes as its shape needs); any other global is
refused, naming the file and the global, before anything is called.
"""

import gzip
import io
import math
import os
import pickle
import pickletools
import re
from typing import Any, NamedTuple, Optional, Sequence, Union
import zlib

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from torchflava.data.finetuning import LabeledSample
from torchflava.data.readers import check_index, glob_files
from torchflava.data.samples import ArgumentRefusal
from torchflava.utils.checks import check_path

PathLike = Union[str, os.PathLike]
CIFAR10_SPLITS = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR100_SPLITS = {"train": ("train",), "test": ("test",)}
MNIST_SPLITS = {"train": "train", "test": "t10k"}  # split -> the stem of its idx files (t10k-images-idx3-ubyte)
# the folders torchvision downloads into under its root, each a dataset this module reads
TORCHVISION_FOLDERS = ("cifar-10-batches-py", "cifar-100-python", "MNIST", "FashionMNIST", "KMNIST")
# the MNIST family's class names, by the folder above raw/ as torchvision names it (the idx files hold none):
# MNIST's digits as CLIP's and CLIP_benchmark's prompts say them, the others as torchvision's ``classes`` list them
MNIST_CLASSES = {
    "MNIST": tuple(str(digit) for digit in range(10)),
    "FashionMNIST": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "KMNIST": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
}
# an idx .gz's header may give up to GZ_FREE bytes, else up to GZ_RATIO times the .gz's size (torchvision's
# MNIST-family files: 47 MB at most, under 5 times their .gz): a few KB of .gz decompressing to GBs are refused unread
GZ_FREE, GZ_RATIO = 1 << 27, 64
# the most containers and objects a pickle may make, and the opcodes that make one (each costs 50 bytes or more of
# memory from 1 to 4 of file: CIFAR's files make a few dozen)
MAX_CONTAINERS = 1 << 16
_MAKERS = frozenset(
    "EMPTY_LIST LIST EMPTY_DICT DICT EMPTY_SET FROZENSET TUPLE TUPLE1 TUPLE2 TUPLE3 REDUCE INST OBJ NEWOBJ NEWOBJ_EX".split()
)
_INTEGER_CODES = ("u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8")  # the dtypes an array of these files may have
_IMAGES, _LABELS = (0x08, 3), (0x08, 1)  # an idx file's (type code: unsigned byte, dimensions)
# a split file's rows, as a Python slice: train[:45000], train[45000:] (numbers int() takes: not 5,000 digits)
_ROWS = re.compile(r"(.+)\[(\d{0,18}):(\d{0,18})\]")


class TorchvisionFilesError(ArgumentRefusal):
    """A refusal of :class:`TorchvisionImages`; ``argument`` is the argument that answers for it: ``"paths"`` or
    ``"classes"``."""


class _Refused(pickle.UnpicklingError):
    """A global :class:`SafeUnpickler` does not admit (its message names it)."""


class _DtypeArgs:
    """Stands for the ``numpy.dtype`` a pickle builds: its type code and the state given to it (slots: a file's
    BUILD sets nothing else on it)."""

    __slots__ = ("code", "state")

    def __init__(self, code: Any, align: Any = 0, copy: Any = 1) -> None:
        self.code = code
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _ArrayArgs:
    """Stands for the array ``numpy.core.multiarray._reconstruct`` makes: the state given to it (version, shape,
    dtype, Fortran order, raw bytes), turned into an array by :func:`_array` once the file is read."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _StandIn:
    """What a global :class:`SafeUnpickler` admits stands for: ``numpy.ndarray`` (``call`` None: only
    ``_reconstruct``'s argument), ``numpy.dtype`` (:class:`_DtypeArgs`) or ``_reconstruct`` (:func:`_reconstruct`).
    An instance without attributes of its own (empty slots), so that a file's BUILD naming it can change nothing
    for the next file read (a class or a function given out would take the attributes it sets)."""

    __slots__ = ("_call", "_name")

    def __init__(self, name: str, call: Any) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_call", call)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{self._name} takes no attribute")

    def __call__(self, *args: Any) -> Any:
        if self._call is None:
            raise TypeError(f"{self._name} is not called by these files")
        return self._call(*args)

    def __repr__(self) -> str:
        return self._name


def _number(value: int) -> str:
    """An int as a message gives it: its digits, or its size where Python would refuse to write so many."""
    return str(value) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _ArrayArgs:
    if subtype is not _NDARRAY:  # (numpy's own pickles pass ndarray; a subclass would be another global)
        raise pickle.UnpicklingError(f"expected numpy.ndarray to be reconstructed, got {subtype!r}")
    return _ArrayArgs()


_NDARRAY = _StandIn("numpy.ndarray", None)


class SafeUnpickler(pickle.Unpickler):
    """A pickle reader that calls nothing a file names: ``find_class`` admits only the globals of a numpy array
    as Python 2 pickled it, given as inert stand-ins (:class:`_ArrayArgs`; :func:`load_pickle` makes the arrays);
    any other raises ``pickle.UnpicklingError`` naming it. The file's opcodes are read before any is loaded:
    an extension code (EXT1/2/4: copyreg's cache would give out a global no ``find_class`` is asked for), a memo
    index past the opcodes before it (the memo grows to the largest index) and more than :data:`MAX_CONTAINERS`
    lists, dicts, tuples and objects raise it too. Bytes stay bytes (``encoding="bytes"``)."""

    ADMITTED = {
        ("numpy.core.multiarray", "_reconstruct"): _StandIn("numpy.core.multiarray._reconstruct", _reconstruct),
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _StandIn("numpy.dtype", _DtypeArgs),
    }

    def __init__(self, file: Any) -> None:
        data = file.read()  # (read whole: its opcodes checked first, then loaded from the bytes checked)
        opcodes = made = 0  # (opcodes read; containers and objects they make)
        try:
            for opcode, argument, _ in pickletools.genops(data):
                opcodes += 1
                if opcode.name in ("EXT1", "EXT2", "EXT4"):  # (copyreg's extension cache gives out what an earlier
                    # load of that code got, find_class not asked: whatever function the process registered)
                    raise _Refused(
                        f"refused the extension code {argument} ({opcode.name}: a global named by copyreg's "
                        "registry; these files hold numpy arrays, lists, numbers and strings only: nothing in them "
                        "was run)"
                    )
                if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and argument >= opcodes:
                    # (the memo is a list as long as its largest index: LONG_BINPUT 2**26 in 11 bytes took 1 GB)
                    raise pickle.UnpicklingError(
                        f"a memo index {argument} past the {opcodes} opcodes before it (pickle writes them in turn)"
                    )
                made += opcode.name in _MAKERS
                if made > MAX_CONTAINERS:  # (an empty list is 1 byte of pickle and 56 of memory)
                    raise pickle.UnpicklingError(
                        f"more than {MAX_CONTAINERS} lists, dicts, tuples and objects (CIFAR's files: a few dozen)"
                    )
        except ValueError as error:  # (truncated, an unknown opcode: what the load would have met)
            raise pickle.UnpicklingError(str(error)) from None
        super().__init__(io.BytesIO(data), encoding="bytes")

    def find_class(self, module: str, name: str) -> Any:
        found = self.ADMITTED.get((module, name))
        if found is None:
            raise _Refused(
                f"refused to load the global {module}.{name} (these files hold numpy arrays, lists, numbers and "
                "strings only: nothing in them was run)"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"refused a persistent id ({pid!r})")


def _array(value: _ArrayArgs) -> np.ndarray:
    """The array a pickle's stand-in records: an integer dtype and exactly the bytes its shape needs, else
    ValueError saying what is wrong."""
    state = value.state
    if isinstance(state, tuple) and len(state) == 5:
        state = state[1:]  # (version 1: the version first)
    if not isinstance(state, tuple) or len(state) != 4:
        raise ValueError(f"an array's state is not numpy's (shape, dtype, order, data), got {type(state).__name__}")
    shape, dtype, fortran, raw = state
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        got = (
            [_number(n) if isinstance(n, int) else type(n).__name__ for n in shape[:8]]
            if isinstance(shape, tuple)
            else []
        )
        raise ValueError(
            f"an array's shape is not a tuple of sizes, got {'(' + ', '.join(got) + ')' if got else type(shape).__name__}"
        )
    code = dtype.code.decode("latin-1") if isinstance(dtype, _DtypeArgs) and isinstance(dtype.code, bytes) else None
    code = dtype.code if code is None and isinstance(dtype, _DtypeArgs) else code
    order = dtype.state[1] if isinstance(dtype, _DtypeArgs) and isinstance(dtype.state, tuple) else None
    order = order.decode("latin-1") if isinstance(order, bytes) else order
    if code not in _INTEGER_CODES or order not in ("|", "<", ">", "="):
        raise ValueError(f"expected an array of integers, got dtype {code!r} (byte order {order!r})")
    kind = np.dtype(("|" if code in ("u1", "i1") else order) + code)
    if not isinstance(raw, bytes) or len(raw) != math.prod(shape) * kind.itemsize:
        size = len(raw) if isinstance(raw, bytes) else type(raw).__name__
        shown = "(" + ", ".join(_number(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"an array of shape {shown} and dtype {code} holds {size} bytes of data")
    return np.frombuffer(raw, dtype=kind).reshape(shape, order="F" if fortran else "C")


def _arrays(value: Any) -> Any:
    """``value`` with the arrays its stand-ins record made, in place (in a dict's values, a list's items); ValueError
    where a stand-in lies anywhere else (a tuple, a set, a dict's key) or an admitted global stands where data
    belongs. Each object is visited once, however often the file refers to it (a list holding one list twice, that
    one another twice... is a tree of 2**depth lists from a file of a few bytes a level), and without recursion (a
    list nested 60,000 deep, or holding itself, costs what its file holds)."""
    if isinstance(value, _ArrayArgs):
        return _array(value)
    made: dict[int, tuple] = {}  # id of an array's stand-in -> (it, kept alive; its array): one array for one stand-in
    seen, left = {id(value)}, [value]  # (every object is held by ``value`` or ``made``: ids stay unique)

    def visit(sub: object) -> None:
        if id(sub) not in seen:
            seen.add(id(sub))
            left.append(sub)

    while left:
        item = left.pop()
        if isinstance(item, (dict, list)):
            arrays = []  # (key, stand-in) of each array to make: set once the container is walked
            for key, sub in item.items() if isinstance(item, dict) else enumerate(item):
                if isinstance(sub, _ArrayArgs):
                    arrays.append((key, sub))
                else:
                    visit(sub)
                if isinstance(item, dict):
                    visit(key)
            for key, sub in arrays:
                if id(sub) not in made:
                    made[id(sub)] = (sub, _array(sub))
                item[key] = made[id(sub)][1]
        elif isinstance(item, (tuple, set, frozenset)):
            for sub in item:
                visit(sub)
        elif isinstance(item, (_ArrayArgs, _DtypeArgs, _StandIn)) or callable(item):
            where = "an array" if isinstance(item, _ArrayArgs) else f"a {type(item).__name__}"
            raise ValueError(f"{where} stands where data belongs (arrays are a dict's values or a list's items)")
    return value


def load_pickle(path: str) -> dict:
    """The dict a CIFAR pickle holds, its keys as str (Python 2 wrote them as bytes), read by
    :class:`SafeUnpickler`; TorchvisionFilesError (``paths``) in one line naming the file where it refuses a
    global, the file is damaged (truncated, not a pickle) or it holds no dict."""
    try:
        with open(path, "rb") as handle:
            value = _arrays(SafeUnpickler(handle).load())
    except _Refused as error:
        raise TorchvisionFilesError("paths", f"{path}: {error}") from None
    except Exception as error:  # (a damaged file: whatever it raises, it is this file's fault, said in one line)
        reason = " ".join(str(error).split()) or "no detail"
        raise TorchvisionFilesError(
            "paths", f"{path} is not a readable CIFAR pickle ({type(error).__name__}: {reason})"
        ) from None
    if not isinstance(value, dict):
        raise TorchvisionFilesError("paths", f"{path}: expected a pickled dict, got {type(value).__name__}")
    return {key.decode("latin-1") if isinstance(key, bytes) else key: item for key, item in value.items()}


def _read_idx(path: str, expected: tuple[int, int]) -> np.ndarray:
    """The uint8 array of an idx file (``.gz`` or not) with ``expected`` (type code, dimensions);
    TorchvisionFilesError (``paths``) naming the file where its magic or size is wrong or it does not read."""
    try:
        with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as handle:
            magic = handle.read(4)
            if len(magic) == 4 and magic[:2] == b"\0\0" and (magic[2], magic[3]) == expected:
                dims = [int.from_bytes(handle.read(4), "big") for _ in range(expected[1])]
                packed = os.path.getsize(path) if path.endswith(".gz") else None
                if packed is not None and math.prod(dims) > max(GZ_FREE, GZ_RATIO * packed):
                    raise TorchvisionFilesError(
                        "paths",
                        f"{path}: its header gives a shape of {tuple(dims)}, {math.prod(dims)} bytes, from a .gz of "
                        f"{packed} bytes: more than {GZ_RATIO} times it (torchvision's are under 5 times theirs), "
                        "refused before decompressing",
                    )
                data = _read_up_to(handle, math.prod(dims))
                extra = handle.read(1)
    except (OSError, EOFError, zlib.error) as error:  # (gzip.BadGzipFile is an OSError)
        kind = "zlib.error" if isinstance(error, zlib.error) else type(error).__name__  # (zlib's is named error)
        raise TorchvisionFilesError("paths", f"{path} does not read ({kind}: {error})") from None
    what = "images" if expected == _IMAGES else "labels"
    if len(magic) != 4 or magic[:2] != b"\0\0" or (magic[2], magic[3]) != expected:
        raise TorchvisionFilesError(
            "paths",
            f"{path}: expected an idx file of {what} (magic 0x0000{expected[0]:02X}{expected[1]:02X}), got magic "
            f"0x{magic.hex().upper() or 'nothing'}",
        )
    if len(data) != math.prod(dims) or extra:
        size = f"{len(data)} bytes" if not extra else "more bytes"
        raise TorchvisionFilesError(
            "paths", f"{path}: its header gives {what} of shape {tuple(dims)}, {math.prod(dims)} bytes; it holds {size}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _read_up_to(handle: Any, size: int) -> bytes:
    """Up to ``size`` bytes of ``handle``, a chunk at a time: a header claiming more than the file holds costs what
    the file holds, not an allocation of the size it claims."""
    chunks, left = [], size
    while left > 0:
        chunk = handle.read(min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class _Dataset(NamedTuple):
    kind: str  # "CIFAR-10", "CIFAR-100" or "MNIST" (the family)
    folder: str  # the folder of its files (cifar-10-batches-py, MNIST/raw)


def _dataset_at(folder: str) -> Optional[_Dataset]:
    """The torchvision dataset whose files lie in ``folder`` itself, or None."""
    if os.path.isfile(os.path.join(folder, "batches.meta")):
        return _Dataset("CIFAR-10", folder)
    if os.path.isfile(os.path.join(folder, "meta")) and any(
        os.path.isfile(os.path.join(folder, name)) for name in ("train", "test")
    ):
        return _Dataset("CIFAR-100", folder)
    if any(_mnist_part(name) is not None for name in _listdir(folder)):
        return _Dataset("MNIST", folder)
    return None


def _listdir(folder: str) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _mnist_part(name: str) -> Optional[str]:
    """The split (``train``/``test``) an MNIST-family file name is of (images or labels, ``.gz`` or not), or None."""
    for split, stem in MNIST_SPLITS.items():
        for part in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            if name in (f"{stem}-{part}", f"{stem}-{part}.gz"):
                return split
    return None


def _datasets_in(folder: str) -> list[_Dataset]:
    """The datasets a folder given names: its own files, else its ``raw/``'s (MNIST's folder), else those of its
    sub-folders named as torchvision names them (torchvision's root; several: each)."""
    here = _dataset_at(folder)
    if here is not None:
        return [here]
    raw = _dataset_at(os.path.join(folder, "raw"))
    if raw is not None and raw.kind == "MNIST":
        return [raw]
    found = []
    for name in TORCHVISION_FOLDERS:
        sub = os.path.join(folder, name)
        dataset = _dataset_at(sub) or _dataset_at(os.path.join(sub, "raw"))
        if dataset is not None:
            found.append(dataset)
    return found


def _file_part(path: str) -> Optional[tuple[_Dataset, str]]:
    """(dataset, the part it is: a CIFAR batch's name, an MNIST split) of a file of a torchvision dataset, or None."""
    folder, name = os.path.split(os.path.abspath(path))
    dataset = _dataset_at(folder)
    if dataset is None:
        return None
    if dataset.kind == "CIFAR-10" and name in CIFAR10_SPLITS["train"] + CIFAR10_SPLITS["test"]:
        return dataset, name
    if dataset.kind == "CIFAR-100" and name in ("train", "test"):
        return dataset, name
    if dataset.kind == "MNIST" and _mnist_part(name) is not None:
        return dataset, _mnist_part(name)
    return None


class _Value(NamedTuple):
    path: str
    rows: tuple[Optional[int], Optional[int]]  # (start, stop) as a slice's: (None, None) for every row


def _expanded(value: PathLike) -> list[_Value]:
    """The paths a value names, each with the rows it names: a file's rows (``train[:45000]``, where ``train`` is a
    file), a glob pattern's files (where no such path exists), or the path."""
    text = check_path("paths", value)
    match = _ROWS.fullmatch(text)
    if match is not None and os.path.isfile(match[1]) and not os.path.exists(text):
        return [_Value(match[1], tuple(int(n) if n else None for n in match.group(2, 3)))]
    if not os.path.exists(text) and any(char in text for char in "*?["):
        return [_Value(path, (None, None)) for path in glob_files(text)]
    return [_Value(text, (None, None))]


def is_torchvision_files(value: PathLike) -> bool:
    """Whether a path given for images names torchvision's CIFAR or MNIST-family files: their folder (or MNIST's
    folder holding ``raw/``, or torchvision's root holding such folders), one of their split files
    (``test_batch``, ``t10k-images-idx3-ubyte``) or its rows (``cifar-100-python/train[:45000]``), or a glob pattern
    of them (``data_batch_*``)."""
    for path, _ in _expanded(value):
        if os.path.isdir(path) and _datasets_in(path):
            return True
        if os.path.isfile(path) and _file_part(path) is not None:
            return True
    return False


class Part(NamedTuple):
    """A part of a dataset read: a CIFAR batch file by name or an MNIST split (``train``, ``test``), and its rows
    (``start``, ``stop``, as a slice's: None for its first or last)."""

    name: str
    start: Optional[int] = None
    stop: Optional[int] = None


class TorchvisionSplit(NamedTuple):
    """What ``--images``-style values name: the dataset, its parts read, and where a folder's test split was taken,
    the sentence saying so."""

    dataset: _Dataset
    parts: list[Part]
    taken: Optional[str]


def torchvision_split(paths: Union[PathLike, Sequence[PathLike]]) -> TorchvisionSplit:
    """The dataset and parts ``paths`` name: one folder (its test split, saying so), or files of one dataset's
    folder (``data_batch_1`` ... ``data_batch_4``; an MNIST split's images or labels file, ``.gz`` or not), each
    whole or some of its rows (``train[:45000]``, a slice's ``start:stop``), or glob patterns of them;
    TorchvisionFilesError (``paths``) where a value names none, a folder several datasets, or the files are of two
    datasets or a folder is given beside files."""
    values = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"paths must be a path, a glob pattern or a list of them, got {paths!r}")
    expanded = []
    for value in values:
        found = _expanded(value)
        if not found:  # (a glob pattern no file matches: else nothing of it read, said nowhere)
            raise TorchvisionFilesError(
                "paths", f"expected torchvision's CIFAR or MNIST files, got {os.fspath(value)!r}: no file matches it"
            )
        expanded += found
    folders = [path for path, _ in expanded if os.path.isdir(path)]
    if folders:
        if len(expanded) > 1:
            raise TorchvisionFilesError(
                "paths",
                f"expected one dataset folder or split files, got the folder {folders[0]} among {len(expanded)} paths",
            )
        found = _datasets_in(folders[0])
        if len(found) != 1:
            shown = ", ".join(os.path.relpath(d.folder, folders[0]) for d in found) or "none"
            raise TorchvisionFilesError(
                "paths", f"{folders[0]} holds {len(found)} torchvision datasets ({shown}): give one's folder"
            )
        dataset = found[0]
        parts = [Part("test_batch" if dataset.kind == "CIFAR-10" else "test")]
        train = (
            "data_batch_1..5" if dataset.kind == "CIFAR-10" else "train" if dataset.kind == "CIFAR-100" else "train-*"
        )
        test = "test_batch" if dataset.kind == "CIFAR-10" else "test" if dataset.kind == "CIFAR-100" else "t10k-*"
        taken = f"the test split of {dataset.folder} ({test}) taken (its train split: its {train} files)"
        return TorchvisionSplit(dataset, parts, taken)
    dataset, parts = None, []
    for path, rows in expanded:
        found = _file_part(path) if os.path.isfile(path) else None
        if found is None:
            raise TorchvisionFilesError(
                "paths",
                f"expected a CIFAR or MNIST folder as torchvision downloads it, or its split files (test_batch, "
                f"t10k-images-idx3-ubyte), got {path!r}",
            )
        if dataset is not None and found[0] != dataset:
            raise TorchvisionFilesError(
                "paths", f"expected the files of one dataset, got files of {dataset.folder} and of {found[0].folder}"
            )
        dataset = found[0]
        part = Part(found[1], *rows)
        parts += [] if part in parts else [part]
    order = list(CIFAR10_SPLITS["train"] + CIFAR10_SPLITS["test"]) + ["train", "test"]
    return TorchvisionSplit(dataset, sorted(parts, key=lambda p: (order.index(p.name), p.start or 0)), None)


class TorchvisionImages(Dataset):
    """The images of torchvision's CIFAR-10, CIFAR-100 or MNIST-family files (see the module's docstring) and their
    class ids; items are :class:`~torchflava.data.finetuning.LabeledSample` ``(image, None, class id)``, the image
    a 32 x 32 (CIFAR) or 28 x 28 (MNIST, grey given as RGB) PIL RGB image, as
    :class:`~torchflava.data.parquet.ParquetImages`' are.

    Every file of the split is read and checked at construction (CIFAR-10's train split: 150 MB held): the CIFAR
    pickles by :class:`SafeUnpickler`, which runs nothing a file names. An item's name (:meth:`relative_path`) is its
    file's and its row's: ``test_batch[0017]``, ``t10k-images-idx3-ubyte[0017]``. A file's rows may be given as a
    slice's, ``cifar-100-python/train[:45000]``: a linear probe's validation split held out of the train split
    (CIFAR-100's and MNIST's have no other).

    The class names: CIFAR's meta file's (``batches.meta``'s ``label_names``; ``meta``'s ``fine_label_names``, the
    100 classes). The idx files name none: an MNIST-family folder is known by the name torchvision gives the folder
    above ``raw/``: ``MNIST`` (the digits ``"0"`` ... ``"9"``; torchvision's ``classes`` say ``"0 - zero"``),
    ``FashionMNIST`` and ``KMNIST`` (torchvision's names, :data:`MNIST_CLASSES`; a link's name, else the folder it
    links to); under another name :attr:`classes` is None unless ``classes`` gives them. :attr:`classes_from` says where they come from (the meta file,
    ``torchvision's FashionMNIST``, ``classes``; None for none).

    Args:
        paths (Union[PathLike, Sequence[PathLike]]): the dataset's folder (``cifar-10-batches-py``, ``MNIST/raw`` or
            ``MNIST``, or torchvision's root holding one of them): its test split, :attr:`taken` saying so; or files
            of one dataset (``data_batch_1``, ``test_batch``, ``cifar-100-python/train``,
            ``t10k-images-idx3-ubyte(.gz)`` or its labels file: that split), each whole or rows of it
            (``train[45000:]``), glob patterns of them, or a list.
        classes (Optional[Sequence[str]]): class names in id order, instead of the dataset's; as many as the meta
            file names (CIFAR), at least 10 (MNIST).

    Raises:
        TypeError: if ``paths`` is not a path or a list of them.
        TorchvisionFilesError: (a ValueError naming the argument that answers for it) if a path names none of these
            files, a folder holds several datasets, a file of the split is absent, damaged (truncated, not a pickle,
            a wrong idx magic or size), holds images of another shape or another number of labels than images, or a
            pickle names any global but a numpy array's; if rows given lie past a file's or name none, or two of one
            file overlap; if a label is negative or past the classes, or
            ``classes`` has another number of names than the meta file (all when constructed).
    """

    item_noun = "an image"

    def __init__(self, paths: Union[PathLike, Sequence[PathLike]], *, classes: Optional[Sequence[str]] = None) -> None:
        split = torchvision_split(paths)
        self.kind, self.root = split.dataset
        self.taken = [] if split.taken is None else [split.taken]  # the sentence saying a folder's split was taken
        self.warnings: list[str] = []
        self._images: list[np.ndarray] = []  # per part: (N, H, W, 3) or (N, H, W) uint8
        self.labels: list[int] = []
        self._reads: list[_Read] = []  # per part: its file, its rows
        if self.kind == "MNIST":
            family = os.path.basename(os.path.dirname(os.path.abspath(self.root)))
            if family not in MNIST_CLASSES:  # (a link to torchvision's folder, data/digits -> MNIST: the real name)
                family = os.path.basename(os.path.dirname(os.path.realpath(self.root)))
            names = MNIST_CLASSES.get(family)
            for part in split.parts:
                self._read_mnist(part)
            meta = None
        else:
            meta, names = self._cifar_classes()
            for part in split.parts:
                self._read_cifar(part)
        self._check_overlaps()
        # where the class names come from, for messages: the meta file, or the folder's name
        self.classes_from = meta if meta is not None else f"torchvision's {family}" if names is not None else None
        if classes is not None:
            if names is not None and meta is not None and len(classes) != len(names):
                raise TorchvisionFilesError(
                    "classes", f"expected the {len(names)} classes of {meta}, got {len(classes)} names"
                )
            names, self.classes_from = classes, "classes"
        self.classes = None if names is None else list(names)
        self._meta = meta
        bound = 10 if self.classes is None else len(self.classes)  # (the MNIST family's 10 classes)
        for read, start in zip(self._reads, self._starts()):
            for row in range(read.count):
                label = self.labels[start + row]
                if not 0 <= label < bound:
                    which = f"the {bound} classes" + (f" of {meta}" if meta is not None and classes is None else "")
                    raise TorchvisionFilesError(
                        "classes" if classes is not None else "paths",
                        f"expected class ids among {which}, 0..{bound - 1}, got {_number(label)} at row "
                        f"{read.first + row} of {read.label_file}",
                    )

    def _starts(self) -> list[int]:
        starts, total = [], 0
        for read in self._reads:
            starts.append(total)
            total += read.count
        return starts

    def _cifar_classes(self) -> tuple[str, list[str]]:
        """(the CIFAR meta file, its class names: CIFAR-100's fine ones)."""
        meta = os.path.join(self.root, "batches.meta" if self.kind == "CIFAR-10" else "meta")
        key = "label_names" if self.kind == "CIFAR-10" else "fine_label_names"
        names = load_pickle(meta).get(key)
        if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names) or not names:
            raise TorchvisionFilesError("paths", f"{meta}: expected {key!r}, a list of class names")
        return meta, [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]

    def _keep(self, part: Part, path: str, label_file: str, images: np.ndarray, labels: list[int]) -> None:
        """Keep ``part``'s rows of a file's ``images`` and ``labels``; TorchvisionFilesError (``paths``) where they
        lie past its rows or name none."""
        total = len(images)
        start = 0 if part.start is None else part.start
        stop = total if part.stop is None else part.stop
        if start > total or stop > total or start >= stop:
            raise TorchvisionFilesError(
                "paths",
                f"expected rows of {path}, which holds {total} rows (0..{total - 1}), got "
                f"[{'' if part.start is None else part.start}:{'' if part.stop is None else part.stop}]",
            )
        self._images.append(images[start:stop])
        self.labels += labels[start:stop]
        stat = os.stat(path)  # (the file's identity: the same file by a link, or a linked folder, is the same rows)
        read = _Read(os.path.basename(path), os.path.abspath(path), label_file, start, stop - start, total)
        self._reads.append(read._replace(identity=(stat.st_dev, stat.st_ino)))

    def _read_cifar(self, part: Part) -> None:
        """Read a CIFAR batch file's rows."""
        path = os.path.join(self.root, part.name)
        labels_key = "labels" if self.kind == "CIFAR-10" else "fine_labels"
        if not os.path.isfile(path):
            raise TorchvisionFilesError("paths", f"{path} is absent (a {self.kind} split file)")
        batch = load_pickle(path)
        data, labels = batch.get("data"), batch.get(labels_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise TorchvisionFilesError(
                "paths", f"{path}: expected 'data' a uint8 (N, 3072) array (32 x 32 RGB planes), got {got}"
            )
        if isinstance(labels, np.ndarray) and labels.ndim == 1:
            labels = labels.tolist()
        if not isinstance(labels, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
            raise TorchvisionFilesError("paths", f"{path}: expected {labels_key!r}, a list of class ids")
        if len(labels) != len(data):
            raise TorchvisionFilesError(
                "paths", f"{path}: expected a label for each of its {len(data)} images, got {len(labels)} labels"
            )
        self._keep(part, path, path, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)  # (N, H, W, C)

    def _read_mnist(self, part: Part) -> None:
        """Read an MNIST-family split's rows: its images and labels file, uncompressed where present (torchvision
        keeps the ``.gz`` beside it), else the ``.gz``."""
        found = []
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            name = f"{MNIST_SPLITS[part.name]}-{kind}"
            path = next(
                (p for p in (os.path.join(self.root, n) for n in (name, name + ".gz")) if os.path.isfile(p)), None
            )
            if path is None:
                raise TorchvisionFilesError("paths", f"{os.path.join(self.root, name)} (or .gz) is absent")
            found.append(path)
        images, labels = _read_idx(found[0], _IMAGES), _read_idx(found[1], _LABELS)
        if 0 in images.shape[1:]:  # (a 0 x 0 image would fail in the transform, naming no file)
            raise TorchvisionFilesError(
                "paths",
                f"{found[0]}: expected images of 1 x 1 pixels or more, got {images.shape[1]} x {images.shape[2]}",
            )
        if len(images) != len(labels):
            raise TorchvisionFilesError(
                "paths",
                f"{found[1]}: expected a label for each of the {len(images)} images of {found[0]}, got "
                f"{len(labels)} labels",
            )
        self._keep(part, found[0], os.path.abspath(found[1]), images, labels.tolist())

    def _check_overlaps(self) -> None:
        """TorchvisionFilesError (``paths``) where two parts read rows of one file twice."""
        for i, read in enumerate(self._reads):
            for other in self._reads[:i]:
                if (shared := _shared(read, other)) is not None:
                    raise TorchvisionFilesError("paths", f"expected each row once, got {shared} twice")

    def shared_rows(self, other: "TorchvisionImages") -> Optional[str]:
        """Which rows of a file both ``self`` and ``other`` read (``rows 45000..45999 of .../train``), else None:
        two splits must not share images."""
        for read in self._reads:
            for theirs in other._reads:
                if (shared := _shared(read, theirs)) is not None:
                    return shared
        return None

    @property
    def files(self) -> list[str]:
        """The split's files read, absolute paths in the order of their rows (an MNIST split: its images file)."""
        return list(dict.fromkeys(read.path for read in self._reads))

    @property
    def dataset_files(self) -> list[str]:
        """Every file these images are read with: the split's, their labels files (an MNIST split's) and CIFAR's
        meta file (files no command's output may be written over)."""
        read = self.files + [read.label_file for read in self._reads]
        if self._meta is not None:
            read.append(os.path.abspath(self._meta))
        return list(dict.fromkeys(read))

    @property
    def empty_classes(self) -> list[str]:
        """The classes no image is labelled with."""
        present = set(self.labels)
        return [name for i, name in enumerate(self.classes or ()) if i not in present]

    def __len__(self) -> int:
        return len(self.labels)

    def _where(self, index: int) -> tuple[int, int]:
        for part, (read, start) in enumerate(zip(self._reads, self._starts())):
            if index < start + read.count:
                return part, index - start
        raise AssertionError(index)  # (check_index bounds it)

    def relative_path(self, index: int) -> str:
        """Item ``index``'s name: its file's and its row's in the file, ``test_batch[0017]`` (zero-padded: names
        sort in row order)."""
        part, row = self._where(check_index(index, len(self)))
        read = self._reads[part]
        return f"{read.name}[{read.first + row:0{len(str(max(read.total - 1, 0)))}d}]"

    def __getitem__(self, index: int) -> LabeledSample:
        index = check_index(index, len(self))
        part, row = self._where(index)
        pixels = np.ascontiguousarray(self._images[part][row])
        image = Image.fromarray(pixels).convert("RGB")  # ((H, W, 3) uint8: RGB; (H, W): grey, L)
        return LabeledSample(image, None, self.labels[index])


class _Read(NamedTuple):
    """The rows kept of a file: its name (for item names), absolute path, labels file, first row, rows kept, rows,
    and which file it is (device, inode)."""

    name: str
    path: str
    label_file: str
    first: int
    count: int
    total: int
    identity: tuple = ()  # (device, inode): which file it is, whatever path names it


def _shared(read: _Read, other: _Read) -> Optional[str]:
    """``rows A..B of FILE`` where ``read`` and ``other`` hold rows of one file in common, else None."""
    low, high = max(read.first, other.first), min(read.first + read.count, other.first + other.count)
    if read.identity != other.identity or low >= high:
        return None
    return f"rows {low}..{high - 1} of {read.path}"
