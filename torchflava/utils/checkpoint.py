"""Reading and writing state dicts: local paths or URLs (via iopath), safetensors or torch files.

Loading never runs pickled code: torch files are read with ``weights_only=True``.
Writing is atomic: a file is written under a temporary name in the same directory, then renamed.
"""

import json
import os
from pathlib import Path
import re
from typing import Callable, Union
import urllib.parse
import urllib.request

from iopath.common.file_io import HTTPURLHandler, PathManager
from safetensors.torch import load_file, save_file
import torch
from torch import Tensor

PathLike = Union[str, os.PathLike]

# Names Hugging Face uses inside a checkpoint directory, in order of preference.
_DIRECTORY_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _local_path(path: PathLike) -> Path:
    """Resolve a path or URL to a local path; ``file://`` URLs name local files, other URLs are
    downloaded once into iopath's cache."""
    text = os.fspath(path)
    if text.startswith("file://"):
        parsed = urllib.parse.urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URLs must name a local file (file:///path), got {text!r}")
        text = urllib.request.url2pathname(parsed.path)
    elif "://" in text:
        manager = PathManager()  # a local manager: no process-wide registry is touched
        manager.register_handler(HTTPURLHandler())
        text = manager.get_local_path(text)
    local = Path(text).expanduser()
    if not local.exists():
        raise FileNotFoundError(f"checkpoint not found: {path!s}")
    return local


def _load_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix == ".json":  # a sharded checkpoint's index
        index = json.loads(path.read_text())
        shards = sorted(set(index.get("weight_map", {}).values()))
        if not shards:
            raise ValueError(f"{path} has no 'weight_map' entries")
        merged: dict[str, Tensor] = {}
        for shard in shards:
            merged.update(_load_file(path.parent / shard))
        return merged
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickled code, a truncated file, or not a torch file at all
        raise ValueError(f"could not read {path} as a state dict with weights_only=True: {err}") from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return obj


def load_state_dict(path: PathLike) -> dict[str, Tensor]:
    """Read a state dict from a file, a Hugging Face checkpoint directory or a URL.

    Args:
        path (PathLike): a ``.safetensors`` file, a torch file (``.pt``, ``.pth``, ``.bin``), a sharded
            index (``*.index.json``), a directory holding one of ``model.safetensors``,
            ``model.safetensors.index.json``, ``pytorch_model.bin`` or ``pytorch_model.bin.index.json``,
            or an http(s) URL of a file.

    Returns:
        dict[str, Tensor]: the tensors by name, on CPU.

    Raises:
        FileNotFoundError: if the path does not exist or a directory holds no known checkpoint file.
        ValueError: if the file is not a state dict or cannot be read without unpickling code.
    """
    local = _local_path(path)
    if local.is_dir():
        for name in _DIRECTORY_FILES:
            if (local / name).exists():
                return _load_file(local / name)
        raise FileNotFoundError(f"{path!s} is a directory without any of {', '.join(_DIRECTORY_FILES)}")
    return _load_file(local)


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Write a file so that it appears complete or not at all.

    The content goes to ``.<name>.<pid>.tmp`` beside ``path`` and is renamed over it. Temporary
    files that killed writers left for the same path (their process is gone) are removed first.
    The file gets the usual permissions (0666 less the umask), not a temporary file's 0600.

    Args:
        path (PathLike): the final path.
        write (Callable[[str], None]): writes the content to the temporary path it is given.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_stale_temporaries(final: Path) -> None:
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(\d+)\.tmp$")
    for candidate in final.parent.glob(f".{final.name}.*.tmp"):
        match = pattern.match(candidate.name)
        if match and not _process_alive(int(match.group(1))):
            candidate.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover from an earlier, interrupted write
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_state_dict(state_dict: dict[str, Tensor], path: PathLike) -> None:
    """Save tensors atomically: safetensors for a ``.safetensors`` path, else ``torch.save``.

    Args:
        state_dict (dict[str, Tensor]): the tensors by name.
        path (PathLike): where to write.
    """
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    if Path(path).suffix == ".safetensors":
        atomic_write(path, lambda tmp: save_file(tensors, tmp))
    else:
        atomic_write(path, lambda tmp: torch.save(tensors, tmp))
