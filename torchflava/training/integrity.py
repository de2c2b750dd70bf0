"""Checkpoint integrity: a digest manifest written at save, verified before anything is read, and DCP
reading that never runs code from the files.

``torch.distributed.checkpoint`` reads its ``.metadata`` file with plain ``pickle.load`` and its
non-tensor entries with ``torch.load(weights_only=False)``, so a checkpoint directory someone else
wrote could run arbitrary code on resume. :class:`~torchflava.training.safe_dcp.SafeFileSystemReader`
unpickles the metadata with an allow-list of DCP's own metadata classes (anything else is refused before it
is built), and :class:`~torchflava.training.safe_dcp.SafeLoadPlanner` reads the non-tensor entries with
``weights_only=True``. Tensors are already read with ``weights_only=True`` by DCP.

The manifest (``{"files": {name: {"bytes": n, "sha256": hex}}}`` inside the ``COMPLETE`` marker)
catches corruption and tampering with the files after the save: flipped bytes, a truncated shard,
a marker rewritten to another step or world size (the marker holds a digest of its own fields too).

DCP is imported (0.65 s on two cores: it brings DTensor and sympy) only as DCP's files are read: the
manifest's checks, all that finding a run's newest intact checkpoint needs, do without it; DCP's reader and
planner made safe live in :mod:`torchflava.training.safe_dcp`, which imports DCP.
"""

import hashlib
import json
import os
from pathlib import Path
import pickle
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from torch.distributed.checkpoint.metadata import Metadata

MARKER = "COMPLETE"
MANIFEST_FORMAT = 1

# Every global DCP's metadata pickle refers to (torch 2.4 - 2.14): its dataclasses, torch.Size, a
# layout helper and dtypes (checked separately), and the path the checkpoint was written to.
_METADATA_GLOBALS = frozenset(
    {
        ("torch.distributed.checkpoint.metadata", name)
        for name in (
            "Metadata",
            "MetadataIndex",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "TensorProperties",
            "StorageMeta",
            "_MEM_FORMAT_ENCODING",
        )
    }
    | {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch.serialization", "_get_layout"),
        ("torch", "Size"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"),
        ("collections", "OrderedDict"),
    }
)


class CheckpointIntegrityError(ValueError):
    """A checkpoint is damaged, was changed after it was written, or holds something we will not load."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = (module, name) in _METADATA_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        )
        if not allowed:
            raise CheckpointIntegrityError(
                f"checkpoint metadata refers to {module}.{name}, which is not DCP metadata; refusing to unpickle it"
            )
        return super().find_class(module, name)


def read_dcp_metadata(path: Union[str, os.PathLike]) -> "Metadata":
    """DCP's ``.metadata`` of checkpoint ``path``, unpickled with the allow-list (no code runs).

    Args:
        path (Union[str, os.PathLike]): the checkpoint directory.

    Returns:
        Metadata: DCP's metadata.

    Raises:
        CheckpointIntegrityError: if the file refers to anything but DCP's metadata classes, or is
            not a metadata pickle.
    """
    from torch.distributed.checkpoint.metadata import Metadata

    with open(Path(path) / ".metadata", "rb") as file:
        try:
            metadata = _MetadataUnpickler(file).load()
        except CheckpointIntegrityError:
            raise
        except Exception as error:  # truncated or garbled: every pickle error type
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]  # (a MemoryError has no text)
            raise CheckpointIntegrityError(f"{path}/.metadata is not readable DCP metadata ({reason})") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointIntegrityError(f"{path}/.metadata holds a {type(metadata).__name__}, not DCP metadata")
    _check_storage_data(path, metadata)
    return metadata


def _check_storage_data(path: Union[str, os.PathLike], metadata: "Metadata") -> None:
    """CheckpointIntegrityError unless every place the metadata reads data from is a file in the
    checkpoint directory (DCP joins the directory and the name: an absolute name, or one with ``..``,
    would read another checkpoint's tensors, outside the manifest) at a non-negative offset and length,
    stored without DCP's stream transforms (e.g. zstd compression: a decompression bomb)."""
    storage = metadata.storage_data
    if storage is None:
        return
    if not isinstance(storage, dict):
        raise CheckpointIntegrityError(f"{path}/.metadata: expected its storage_data to be a dict, got {storage!r:.80}")
    for info in storage.values():
        name, offset, length = (getattr(info, key, None) for key in ("relative_path", "offset", "length"))
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            raise CheckpointIntegrityError(
                f"{path}/.metadata: expected tensor data in files of the checkpoint directory, got the path {name!r}; "
                "refusing to read it"
            )
        if not all(type(value) is int and value >= 0 for value in (offset, length)):
            raise CheckpointIntegrityError(
                f"{path}/.metadata: expected a non-negative int offset and length for {name}, got {offset!r}, {length!r}"
            )
        if getattr(info, "transform_descriptors", None):  # (a decompressor's output is past any check of the bytes)
            raise CheckpointIntegrityError(
                f"{path}/.metadata: expected entries stored as written (checkpoints here are saved without DCP's "
                f"stream transforms), got {info.transform_descriptors!r:.80} for data in {name}"
            )


def file_digest(path: Union[str, os.PathLike]) -> str:
    """SHA-256 of a file, hex."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def write_marker(directory: Union[str, os.PathLike], step: int, world_size: int) -> None:
    """Write the ``COMPLETE`` marker of a fully written checkpoint: step, world size and every file's digest.

    Args:
        directory (Union[str, os.PathLike]): the (temporary) checkpoint directory, every file in it written.
        step (int): the step the checkpoint holds.
        world_size (int): how many ranks wrote it.
    """
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": file_digest(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MARKER
    }
    marker = {"format": MANIFEST_FORMAT, "step": step, "world_size": world_size, "files": files}
    marker["sha256"] = _marker_digest(marker)
    tmp = directory / f".{MARKER}.tmp"
    with open(tmp, "w") as file:
        json.dump(marker, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, directory / MARKER)


def _marker_digest(marker: dict) -> str:
    """SHA-256 of the marker's own fields (all but this digest), as canonical JSON: the manifest's files
    are checked against their digests, and the marker (step, world size, digests) against this one."""
    fields = {key: value for key, value in marker.items() if key != "sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def read_marker(path: Union[str, os.PathLike]) -> dict:
    """The parsed ``COMPLETE`` marker of checkpoint ``path`` (not verified against the files).

    Raises:
        CheckpointIntegrityError: if it is missing or not a marker.
    """
    marker_path = Path(path) / MARKER
    if not Path(path).is_dir():  # (it was 'no COMPLETE file', or its read's NotADirectoryError)
        kind = "no such directory" if not Path(path).exists() else "not a directory"
        raise CheckpointIntegrityError(f"{path} is not a complete checkpoint ({kind})")
    try:
        marker = json.loads(marker_path.read_text())
    except FileNotFoundError:
        raise CheckpointIntegrityError(f"{path} is not a complete checkpoint (no {MARKER} file)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:  # (nested too deeply)
        raise CheckpointIntegrityError(f"{marker_path} is unreadable ({type(error).__name__})") from None
    counts_ok = isinstance(marker, dict) and all(
        type(marker.get(key)) is int and marker[key] >= minimum for key, minimum in (("step", 0), ("world_size", 1))
    )
    if not counts_ok or "files" not in marker:
        raise CheckpointIntegrityError(
            f"{marker_path} is not a torchflava checkpoint marker with a digest manifest "
            "(written by an older version, or edited)"
        )
    return marker


def damage(path: Union[str, os.PathLike]) -> Optional[str]:
    """Why checkpoint ``path`` cannot be trusted, or None when every file matches its manifest.

    Checks that the marker's step is the directory's, and every listed file's size and SHA-256.

    Args:
        path (Union[str, os.PathLike]): a ``step_<N>`` checkpoint directory.

    Returns:
        Optional[str]: a one-line reason, or None for an intact checkpoint.
    """
    path = Path(path)
    try:
        marker = read_marker(path)
    except CheckpointIntegrityError as error:
        return str(error)
    # (markers written before it had a digest of its own are checked by their files' digests alone)
    if "sha256" in marker and marker["sha256"] != _marker_digest(marker):
        return f"its {MARKER} marker does not match its own SHA-256 digest (corrupted or changed after it was written)"
    expected_step = path.name.removeprefix("step_")
    if not expected_step.isdigit() or int(expected_step) != marker["step"]:
        return f"its {MARKER} marker says step {marker['step']} but the directory is {path.name}"
    files = marker["files"]
    if not isinstance(files, dict) or ".metadata" not in files:
        return f"its {MARKER} marker lists no DCP metadata"
    ranks = sorted(name for name in files if name.startswith("rank") and name.endswith(".pt"))
    if ranks != sorted(f"rank{rank}.pt" for rank in range(marker["world_size"])):
        return f"its {MARKER} marker says {marker['world_size']} rank(s) wrote it, its files are {ranks}"
    for name, entry in files.items():
        if not name or "\0" in name or Path(name).is_absolute() or ".." in Path(name).parts:
            return f"its {MARKER} marker lists {name!r}, not a file of the checkpoint directory"  # (as it writes them)
        file = path / name
        if not file.is_file():
            return f"file {name} is missing"
        if not isinstance(entry, dict):
            return f"its {MARKER} marker lists file {name} with {entry!r:.80}, not its bytes and SHA-256"
        if file.stat().st_size != entry.get("bytes"):
            return f"file {name} has {file.stat().st_size} bytes, the manifest says {entry.get('bytes')}"
        try:
            digest = file_digest(file)
        except OSError as error:  # (a link to a file that cannot be read: /proc/self/mem, no permission)
            return f"file {name} cannot be read ({type(error).__name__}: {error})"
        if digest != entry.get("sha256"):
            return f"file {name} does not match its SHA-256 digest (corrupted or changed after it was written)"
    return None


def damage_on_every_rank(path: Union[str, os.PathLike]) -> Optional[str]:
    """:func:`damage`, computed once on rank 0 and shared with every rank (collective under torch.distributed)."""
    if not dist.is_initialized():
        return damage(path)
    result = [damage(path) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(result, src=0)
    return result[0]


def unwrap_checkpoint_error(error: BaseException, path: Union[str, os.PathLike]) -> Exception:
    """One line for a failed DCP read: our own integrity error if a rank raised one, else the first failure."""
    failures = list(getattr(error, "failures", {}).values())
    exceptions = [failure[0] if isinstance(failure, tuple) else failure for failure in failures] or [error]
    for exception in exceptions:
        if isinstance(exception, CheckpointIntegrityError):
            return exception
    first = exceptions[0]
    summary = (str(first).splitlines() or [""])[0]
    return CheckpointIntegrityError(f"cannot read checkpoint {path}: {type(first).__name__}: {summary}")
