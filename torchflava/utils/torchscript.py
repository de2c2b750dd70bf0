"""The weights of a TorchScript archive (``torch.jit.save``: OpenAI's original CLIP ``.pt`` files), read
without running or compiling anything in it and without ``torch.jit.load``.

An archive is a zip with one top folder: ``data.pkl`` pickles the module tree (each module an object of
a ``__torch__.`` class, its attributes a dict), ``data/<key>`` holds each tensor storage's raw bytes and
``code/`` the modules' TorchScript source. ``data.pkl`` is read by an unpickler that knows only a few
names (:data:`_ALLOWED`: its tensor and list builders, OrderedDict, the storage types), each mapped to
a function of ours; a ``__torch__.`` class becomes a passive :class:`ScriptObject` that stores its
attributes and does nothing else. Anything else it names is refused before it is called. Which
attributes are parameters and buffers (a module's state dict) is read from the ``__parameters__ = [...]``
and ``__buffers__ = [...]`` lines of ``code/``, as text; a class that declares none gives all its tensors.
"""

import collections
import math
import mmap as mmap_module
import os
import pickle
import re
import struct
import sys
from typing import Any, BinaryIO, Callable, NamedTuple, Optional
import zipfile

import torch
from torch import Tensor

# The storage types a persistent id names (torch.<Name>Storage), by the element type they hold.
_STORAGES = {
    f"{name}Storage": dtype
    for name, dtype in (
        ("Double", torch.float64),
        ("Float", torch.float32),
        ("Half", torch.float16),
        ("BFloat16", torch.bfloat16),
        ("Long", torch.int64),
        ("Int", torch.int32),
        ("Short", torch.int16),
        ("Char", torch.int8),
        ("Byte", torch.uint8),
        ("Bool", torch.bool),
    )
}
_MAX_INDEX = 1 << 62  # sizes, strides and element counts below int64's range
_KEY = re.compile(r"^\w+$")  # a storage's entry name under data/ (TorchScript numbers them)
_CLASS = re.compile(r"^class ([\w.]+)\(Module\):\n((?:  \S.*\n)*)", re.MULTILINE)
_DECLARED = re.compile(r"^  __(parameters|buffers)__ = \[(.*)\]$", re.MULTILINE)


class ScriptObject:
    """An object of a TorchScript class (a module), passive: its pickled attributes kept in ``state``."""

    qualified_name = ""  # (each __torch__ class gets a subclass naming it)

    def __setstate__(self, state: object) -> None:
        self.state = state


# What the pickle gets for a storage type, a storage and a tensor: immutable records (a tuple takes no
# BUILD), never a tensor, whose __setstate__ would let the pickle re-point it (``set_``). The tensors are
# made from the records once the pickle is read.
class _StorageType(NamedTuple):
    dtype: torch.dtype


class _Storage(NamedTuple):
    key: str
    data: Tensor  # 1-D, of the storage's dtype


class _TensorRecord(NamedTuple):
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple


def is_torchscript(path: str) -> bool:
    """Whether ``path`` is a zip archive that ``torch.jit.save`` wrote: one holding ``<top>/constants.pkl``
    (torch's own test; a ``torch.save`` archive has none).

    Args:
        path (str): a file (a torch checkpoint).

    Returns:
        bool: whether it is a TorchScript archive (False for anything else, a damaged zip included).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return False
    top = names[0].split("/")[0] if names else ""
    return f"{top}/constants.pkl" in names


def torchscript_state_dict(path: str, *, mmap: bool = False) -> dict[str, Tensor]:
    """The state dict of the module a TorchScript archive holds (``torch.jit.load(path).state_dict()``'s
    names, order and values: parameters and buffers, a submodule's under its dotted name; a submodule
    held twice, under its first name alone), none of its code run.

    Check the archive's expansion first (``torchflava.utils.checkpoint.load_state_dict`` does): this reads its
    ``code/`` text, which ``torch.jit.save`` compresses; its tensor data must be stored uncompressed.

    Args:
        path (str): the archive.
        mmap (bool): map the file (copy on write) and view the tensors in it, reading no tensor data
            until it is used (what ``peek_state_dict`` needs: names and shapes); else each storage is read.

    Returns:
        dict[str, Tensor]: the tensors by name, on CPU, in the archive's dtypes.

    Raises:
        ValueError: naming the file, if ``data.pkl`` names anything but TorchScript classes, tensors and
            lists (e.g. ``posix.system``: refused before it is called), a storage's entry is missing,
            compressed or of another size than its storage claims, a tensor reaches past its storage, or
            the archive is malformed.
    """
    with zipfile.ZipFile(path) as archive:
        top = next(iter(archive.namelist()), "").split("/")[0]  # (an empty zip: data.pkl is missing)
        mapped = None
        if mmap and os.path.getsize(path) > 0:
            with open(path, "rb") as file:  # (the map outlives the file object, as long as a tensor uses it)
                mapped = mmap_module.mmap(file.fileno(), 0, access=mmap_module.ACCESS_COPY)
        root = _Unpickler(archive, top, path, mapped).load_root()
        declared = _declarations(archive, top, path)
    return _flatten(root, declared, path)


class _Unpickler(pickle._Unpickler):  # noqa: SLF001 (Python's own: its memo is a dict, see below)
    # Python's pure unpickler, not the C one: the C one sizes its memo by the largest index a pickle puts
    # there (a 183-byte data.pkl storing at index 2**30 made it write 16 GiB); this one keeps a dict.
    """Unpickles an archive's ``data.pkl`` knowing the names of :data:`_ALLOWED` alone, storages read from its entries."""

    def __init__(self, archive: zipfile.ZipFile, top: str, path: str, mapped: Optional[mmap_module.mmap]) -> None:
        self.archive, self.top, self.path, self.mapped = archive, top, path, mapped
        self.storages: dict[str, _Storage] = {}
        self.classes: dict[str, type] = {}
        super().__init__(_data_pickle(archive, top, path))

    def load_root(self) -> ScriptObject:
        try:
            root = self.load()
        except Exception as error:  # ours (refused), or a truncated or garbled pickle: every pickle error type
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            if isinstance(error, ValueError) and reason.startswith(f"{self.path}: "):
                raise
            raise ValueError(f"{self.path}: its data.pkl is not a TorchScript module's pickle: {reason}") from None
        if not isinstance(root, ScriptObject):
            raise ValueError(f"{self.path}: expected a TorchScript module in its data.pkl, got a {type(root).__name__}")
        return root

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if module.startswith("__torch__.") and not module.startswith("__torch__.torch.classes."):
            if qualified not in self.classes:  # a passive stand-in: no method of the archive's class is run
                self.classes[qualified] = type(name, (ScriptObject,), {"qualified_name": qualified})
            return self.classes[qualified]
        if module == "torch" and name in _STORAGES:
            return _StorageType(_STORAGES[name])
        if qualified not in _ALLOWED:
            raise ValueError(
                f"{self.path}: expected a TorchScript archive of modules and tensors, got the global {qualified!r} "
                "in its data.pkl; refusing to read it (nothing in it was run)"
            )
        return _ALLOWED[qualified]  # (a _Builder: a BUILD cannot set attributes on our functions)

    def persistent_load(self, pid: object) -> _Storage:
        """The storage a ``('storage', <type>, key, location, numel)`` id names, read from ``data/<key>``."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise ValueError(f"{self.path}: expected ('storage', type, key, location, numel) ids, got {pid!r:.100}")
        _, kind, key, _, numel = pid
        if not isinstance(key, str) or not _KEY.match(key) or type(numel) is not int or numel < 0:
            raise ValueError(
                f"{self.path}: expected a storage key (letters, digits) and a numel >= 0, got {pid!r:.100}"
            )
        if key not in self.storages:
            self.storages[key] = _Storage(key, self._read(f"{self.top}/data/{key}", kind.dtype, numel))
        storage = self.storages[key]
        if storage.data.dtype != kind.dtype or storage.data.numel() != numel:
            raise ValueError(f"{self.path}: expected one type and size for each storage, got two for {key!r}")
        return storage

    def _read(self, entry: str, dtype: torch.dtype, numel: int) -> Tensor:
        info = _stored_entry(self.archive, entry, self.path)
        claimed = numel * dtype.itemsize
        if info.file_size != claimed:  # (told before anything is read or allocated)
            raise ValueError(
                f"{self.path}: its entry {entry!r} holds {info.file_size} bytes, but its storage claims {numel} "
                f"{dtype} elements ({claimed} bytes)"
            )
        if numel == 0:
            return torch.empty(0, dtype=dtype)
        start = None if self.mapped is None else _data_start(self.mapped, info, self.path)
        if start is None or start % dtype.itemsize:  # (torch.jit.save aligns its entries to 64 bytes)
            return torch.frombuffer(bytearray(self.archive.read(info)), dtype=dtype)
        return torch.frombuffer(self.mapped, dtype=dtype, count=numel, offset=start)


def _data_start(mapped: mmap_module.mmap, info: zipfile.ZipInfo, path: str) -> int:
    """Where a stored entry's bytes begin in the file: after its local header (30 bytes, its name and its
    own extra field, which may differ from the central directory's)."""
    header = mapped[info.header_offset : info.header_offset + 30]
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ValueError(f"{path}: expected a zip local header for the entry {info.filename!r}, got none there")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_length + extra_length
    if start + info.file_size > len(mapped):
        raise ValueError(f"{path}: its entry {info.filename!r} reaches past the end of the file (cut short?)")
    return start


def _stored_entry(archive: zipfile.ZipFile, entry: str, path: str) -> zipfile.ZipInfo:
    """The zip entry ``entry`` of the archive, which must exist and be stored uncompressed."""
    try:
        info = archive.getinfo(entry)
    except KeyError:
        raise ValueError(f"{path}: expected the entry {entry!r} in this TorchScript archive, got none") from None
    if info.compress_type != zipfile.ZIP_STORED:  # (torch.jit.save never compresses: no bomb to expand)
        raise ValueError(f"{path}: expected its entry {entry!r} stored uncompressed, as torch.jit.save writes it")
    return info


def _data_pickle(archive: zipfile.ZipFile, top: str, path: str) -> BinaryIO:
    """The archive's ``data.pkl``, opened, once its tensors are known to be of this machine's byte order
    (archives older than torch 1.10 state none: little-endian)."""
    byteorder = f"{top}/byteorder"
    stated = archive.read(_stored_entry(archive, byteorder, path)) if byteorder in archive.namelist() else b"little"
    if stated != sys.byteorder.encode():
        raise ValueError(f"{path}: expected tensors stored {sys.byteorder}-endian, got {stated!r:.20}")
    return archive.open(_stored_entry(archive, f"{top}/data.pkl", path))


def _rebuild_tensor(
    storage: object, offset: object, size: object, stride: object, requires_grad: object, hooks: object, *metadata
) -> _TensorRecord:
    """A tensor's place in a storage that :meth:`_Unpickler.persistent_load` read, checked to lie in it."""
    # (int64 bounds: torch's as_strided overflowed with a multi-line TypeError or RuntimeError past them)
    ints = lambda value: isinstance(value, tuple) and all(type(n) is int and 0 <= n < _MAX_INDEX for n in value)  # noqa: E731
    if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0 or not ints(size) or not ints(stride):
        raise ValueError(
            f"expected a storage, an offset, sizes and strides in [0, 2**62), got {offset!r}, {size!r:.100}, {stride!r:.100}"
        )
    if len(size) != len(stride):
        raise ValueError(f"expected as many strides as sizes, got sizes {size} and strides {stride}")
    if math.prod(size) >= _MAX_INDEX:
        raise ValueError(f"expected a tensor of fewer than 2**62 elements, got sizes {size}")
    end = offset + sum((n - 1) * step for n, step in zip(size, stride)) + 1 if all(size) else 0  # (empty: none)
    if end > storage.data.numel():
        raise ValueError(
            f"expected each tensor inside its storage, got one needing {end} elements of storage {storage.key!r}, "
            f"which holds {storage.data.numel()}"
        )
    return _TensorRecord(storage, offset, size, stride)


def _rebuild_parameter(data: object, requires_grad: object, hooks: object, *state) -> _TensorRecord:
    if not isinstance(data, _TensorRecord):
        raise ValueError(f"expected a parameter's tensor, got a {type(data).__name__}")
    return data


def _list(values: object) -> list:
    if not isinstance(values, list):
        raise ValueError(f"expected a list, got a {type(values).__name__}")
    return values


def _restore_type_tag(value: object, type_name: object) -> object:
    return value  # (a typed list's or dict's element type: nothing to do in Python)


class _Builder:
    """One of our functions as the pickle gets it: callable, and nothing else. A pickle's BUILD sets the
    attributes of what it is given (a function's ``__defaults__``, ``__name__``...), which on the function
    itself would last for every later load; this has no attribute to set."""

    __slots__ = ("_function",)

    def __init__(self, function: Callable) -> None:
        object.__setattr__(self, "_function", function)

    def __call__(self, *args: object) -> object:
        return self._function(*args)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"expected nothing set on a builder of the pickle, got {name!r}")


# The only globals a data.pkl may name besides __torch__ classes and storage types, each ours (OrderedDict:
# a built-in type, whose attributes cannot be set).
_ALLOWED: dict[str, Callable] = {
    "torch._utils._rebuild_tensor_v2": _Builder(_rebuild_tensor),
    "torch._utils._rebuild_parameter": _Builder(_rebuild_parameter),
    "torch._utils._rebuild_parameter_with_state": _Builder(_rebuild_parameter),
    "collections.OrderedDict": collections.OrderedDict,
    **{f"torch.jit._pickle.build_{kind}list": _Builder(_list) for kind in ("int", "double", "bool", "tensor")},
    "torch.jit._pickle.restore_type_tag": _Builder(_restore_type_tag),
}


def _declarations(archive: zipfile.ZipFile, top: str, path: str) -> dict[str, tuple[Optional[set], Optional[set]]]:
    """Each class's parameters and buffers (None where not declared) from ``code/``, read as text: a
    ``class Name(Module):`` in ``code/a/b.py`` is ``a.b.Name``, with ``__parameters__`` and ``__buffers__`` lines."""
    out = {}
    prefix = f"{top}/code/"
    for info in archive.infolist():
        if not (info.filename.startswith(prefix) and info.filename.endswith(".py")):
            continue
        module = info.filename[len(prefix) : -len(".py")].replace("/", ".")
        text = archive.read(info).decode("utf-8", errors="replace")  # (compressed: the caller checked expansion)
        for name, body in _CLASS.findall(text):
            lists = {kind: set(re.findall(r'"([^"]*)"', names)) for kind, names in _DECLARED.findall(body)}
            out[f"{module}.{name}"] = (lists.get("parameters"), lists.get("buffers"))
    return out


def _flatten(root: ScriptObject, declared: dict, path: str) -> dict[str, Tensor]:
    """The module tree's parameters and buffers under dotted names, as a scripted module's ``state_dict``
    orders them: a module's parameters, its buffers, then its submodules' (depth first). A module the
    tree holds twice (or within itself) is read once, under its first name."""
    out: dict[str, Tensor] = {}
    stack, seen = [("", root)], set()
    while stack:
        prefix, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        state = getattr(module, "state", None)
        if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
            raise ValueError(f"{path}: expected each module's attributes as a dict, got a {type(state).__name__}")
        for key in _state_keys(state, *declared.get(module.qualified_name, (None, None))):
            out[prefix + key] = _tensor(prefix + key, state[key], path)
        children = [(f"{prefix}{key}.", value) for key, value in state.items() if isinstance(value, ScriptObject)]
        stack.extend(reversed(children))
    return out


def _state_keys(state: dict, parameters: Optional[set], buffers: Optional[set]) -> list[str]:
    """The attributes of a module's state dict: its declared parameters, then its buffers (where its class
    declares none: every other tensor; where it declares neither: every tensor, in order). An optional one
    that is None (``bias=False``) is left out, as ``state_dict`` leaves it."""
    tensors = [key for key, value in state.items() if isinstance(value, _TensorRecord)]
    if parameters is None:
        return tensors
    buffers = set(tensors) - parameters if buffers is None else buffers - parameters
    keys = [key for key in state if key in parameters] + [key for key in state if key in buffers]
    return [key for key in keys if state[key] is not None]


def _tensor(name: str, value: object, path: str) -> Tensor:
    """The tensor a parameter's or buffer's record places in its storage (ValueError for anything else)."""
    if not isinstance(value, _TensorRecord):
        raise ValueError(
            f"{path}: expected the parameter or buffer {name!r} to be a tensor, got a {type(value).__name__}"
        )
    return value.storage.data.as_strided(value.size, value.stride, value.offset)
