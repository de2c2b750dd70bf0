"""The readers' shared refusal: named by argument, and whole across a pickle (as a loader worker raises it)."""

import pickle

import pytest

from torchflava.data.parquet import ParquetError
from torchflava.data.samples import ArgumentRefusal
from torchflava.data.torchvision_files import TorchvisionFilesError
from torchflava.data.wds import WdsError


@pytest.mark.parametrize("kind", [ParquetError, WdsError, TorchvisionFilesError])
def test_a_readers_refusal_names_its_argument_and_pickles_whole(kind):
    """Each reader's error had its own copy of the same class, and unpickling one (a loader worker's raise reaching
    the main process) failed with a TypeError about __init__'s arguments instead of the refusal."""
    error = kind("classes", "expected 10 names, got 3")
    assert isinstance(error, ArgumentRefusal) and isinstance(error, ValueError)
    assert str(error) == "classes: expected 10 names, got 3"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is kind and (copy.argument, copy.reason, str(copy)) == (error.argument, error.reason, str(error))
