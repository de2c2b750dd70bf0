"""DCP's file reader and load planner, made safe: what :mod:`torchflava.training.checkpointing` reads a
training checkpoint's DCP files with. The reader unpickles the metadata through
:mod:`~torchflava.training.integrity`'s allow-list and checks each entry's bytes before DCP's ``torch.load`` reads
them; the planner reads non-tensor entries with ``weights_only=True``. A module of its own because it imports DCP
(0.65 s on two cores, with DTensor and sympy), which loading a pretrained checkpoint or finding a run's newest
intact checkpoint does without: it is imported as a DCP checkpoint is read.
"""

import io
import os
import pickle
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from torchflava.training.integrity import CheckpointIntegrityError, read_dcp_metadata
from torchflava.utils.checkpoint import check_zip_expansion


class SafeFileSystemReader(dcp.FileSystemReader):
    """DCP's file reader with the metadata unpickled through the allow-list, and each entry's data
    checked before DCP's ``torch.load`` reads it (:func:`~torchflava.utils.checkpoint.check_zip_expansion`)."""

    def _slice_file(self, file, sinfo):  # DCP's hook for the bytes of one entry: tensor or value
        try:
            check_zip_expansion(_Slice(file, sinfo.offset, sinfo.length), f"{self.path}/{sinfo.relative_path}")
        except ValueError as error:
            raise CheckpointIntegrityError(f"{error} (the entry at byte {sinfo.offset})") from None
        return super()._slice_file(file, sinfo)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_dcp_metadata(self.path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(dcp.DefaultLoadPlanner):
    """DCP's default planner, reading non-tensor entries with ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError:
            raise CheckpointIntegrityError(
                f"checkpoint entry {read_item.dest_index.fqn!r} holds a value that is not plain data "
                "(it would need code to be unpickled); refusing to load it"
            ) from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


class _Slice(io.RawIOBase):
    """``length`` bytes of the seekable ``file`` from ``offset``, as a file of their own (DCP's view
    seeks from the end the wrong way, and tells the underlying file's position)."""

    def __init__(self, file, offset: int, length: int) -> None:
        super().__init__()
        self.file, self.offset, self.length, self.position = file, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = offset + {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.length}[whence]
        if position < 0:
            raise OSError(f"cannot seek to {position}, before the start")
        self.position = position
        return position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self.length - self.position))
        self.file.seek(self.offset + self.position)
        data = self.file.read(count)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)
