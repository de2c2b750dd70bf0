"""TorchvisionImages: CIFAR-10/100 and MNIST-family files as torchvision downloads them, read safely."""

import gzip
import os
from pathlib import Path
import pickle
import pickletools
import re
import struct
from typing import Optional, Sequence

import numpy as np
from PIL import Image
import pytest
import torchvision

from torchflava.data.torchvision_files import (
    MNIST_CLASSES,
    SafeUnpickler,
    TorchvisionFilesError,
    TorchvisionImages,
    is_torchvision_files,
    load_pickle,
    torchvision_split,
)

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def py2_pickle(value: object) -> bytes:
    """``value`` (a dict, list, int, bytes, None, bool or uint8 numpy array) pickled as Python 2's cPickle wrote
    CIFAR's files at protocol 2: a str as SHORT_BINSTRING/BINSTRING (read back as bytes), an array through
    ``numpy.core.multiarray._reconstruct`` with its dtype through ``numpy.dtype`` (Python 3's pickle writes bytes
    through ``_codecs.encode`` at protocol 2 instead)."""
    out = bytearray(b"\x80\x02")

    def emit(item: object) -> None:
        if isinstance(item, bool):
            out.extend(b"\x88" if item else b"\x89")
        elif item is None:
            out.extend(b"N")
        elif isinstance(item, int):
            if 0 <= item < 256:
                out.extend(b"K" + bytes([item]))
            elif 0 <= item < 65536:
                out.extend(b"M" + struct.pack("<H", item))
            else:
                out.extend(b"J" + struct.pack("<i", item))
        elif isinstance(item, bytes):
            out.extend(
                b"U" + bytes([len(item)]) + item if len(item) < 256 else b"T" + struct.pack("<i", len(item)) + item
            )
        elif isinstance(item, tuple):
            out.extend(b"(")
            for sub in item:
                emit(sub)
            out.extend(b"t")
        elif isinstance(item, list):
            out.extend(b"](")
            for sub in item:
                emit(sub)
            out.extend(b"e")
        elif isinstance(item, dict):
            out.extend(b"}(")
            for key, sub in item.items():
                emit(key)
                emit(sub)
            out.extend(b"u")
        elif isinstance(item, np.ndarray):
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            emit((0,))
            emit(b"b")
            out.extend(b"\x87R")  # TUPLE3, REDUCE
            code = {np.dtype(np.uint8): b"u1", np.dtype("<i8"): b"i8"}[item.dtype]
            state_dtype = b"|" if code == b"u1" else b"<"
            out.extend(b"(K\x01")
            emit(tuple(item.shape))
            out.extend(b"cnumpy\ndtype\n")
            emit(code)
            out.extend(b"K\x00K\x01\x87R")
            emit((3, state_dtype, None, None, None, -1, -1, 0))
            out.extend(b"b\x89")  # BUILD (the dtype's state), False (C order)
            emit(item.tobytes())
            out.extend(b"tb")  # the array's state tuple, BUILD
        else:
            raise TypeError(type(item))

    emit(value)
    return bytes(out + b".")


def cifar_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 3072), dtype=np.uint8)


def write_cifar10(
    folder: Path, counts: Sequence[int] = (3, 2, 2, 2, 2), test: int = 4, names: Sequence[str] = CIFAR10_NAMES
) -> Path:
    """``folder`` as torchvision's ``cifar-10-batches-py``: ``data_batch_1..5`` of ``counts`` images, a
    ``test_batch`` of ``test``, ``batches.meta``; labels cycle over the classes."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [(f"data_batch_{i + 1}", n) for i, n in enumerate(counts)] + [("test_batch", test)]
    for number, (name, count) in enumerate(files):
        labels = [(number + i) % len(names) for i in range(count)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": cifar_images(count, number)}
        batch[b"filenames"] = [f"img_{i:06d}.png".encode() for i in range(count)]
        (folder / name).write_bytes(py2_pickle(batch))
    meta = {b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in names], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return folder


def write_cifar100(folder: Path, train: int = 5, test: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    fine = [f"class_{i:02d}" for i in range(100)]
    for number, (name, count) in enumerate((("train", train), ("test", test))):
        labels = [(97 + 3 * i + number) % 100 for i in range(count)]
        batch = {b"filenames": [b"x.png"] * count, b"batch_label": name.encode(), b"fine_labels": labels}
        batch.update({b"coarse_labels": [label // 5 for label in labels], b"data": cifar_images(count, 10 + number)})
        (folder / name).write_bytes(py2_pickle(batch))
    meta = {b"fine_label_names": [n.encode() for n in fine], b"coarse_label_names": [b"super"] * 20}
    (folder / "meta").write_bytes(py2_pickle(meta))
    return folder


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">i", n) for n in array.shape) + array.tobytes()


def write_mnist(
    parent: Path, name: str = "MNIST", train: int = 5, test: int = 3, *, gz: bool = False, raw: bool = True
) -> Path:
    """``parent/name/raw`` as torchvision's MNIST-family download: the idx files of each split (uncompressed, and
    with ``gz`` their ``.gz`` beside them; with ``raw`` False only the ``.gz``)."""
    folder = parent / name / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name))
    for stem, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = np.array([(7 * i + len(stem)) % 10 for i in range(count)], dtype=np.uint8)
        for part, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            if raw:
                (folder / f"{stem}-{part}").write_bytes(data)
            if gz or not raw:
                (folder / f"{stem}-{part}.gz").write_bytes(gzip.compress(data, mtime=0))
    return folder


def _torchvision_cifar(base: type, names: tuple) -> type:
    """torchvision's dataset class reading the files it would download, their md5 sums not checked (tiny files
    written here have others): ``check_integrity`` without an md5 checks that the file exists."""
    lists = {key: [[name, None] for name in files] for key, files in names[0].items()}
    return type(
        f"Unchecked{base.__name__}",
        (base,),
        {"train_list": lists["train"], "test_list": lists["test"], "meta": {**base.meta, "md5": None}},
    )


UncheckedCIFAR10 = _torchvision_cifar(
    torchvision.datasets.CIFAR10, ({"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},)
)
UncheckedCIFAR100 = _torchvision_cifar(torchvision.datasets.CIFAR100, ({"train": ["train"], "test": ["test"]},))


def _same_as_torchvision(ours: TorchvisionImages, theirs, classes: Optional[list] = None) -> None:
    assert len(ours) == len(theirs)
    assert ours.classes == (theirs.classes if classes is None else classes)
    for index in range(len(ours)):
        image, text, label = ours[index]
        expected, expected_label = theirs[index]
        assert text is None and label == expected_label
        assert image.mode == "RGB" and image.size == expected.size
        assert np.array_equal(np.asarray(image), np.asarray(expected.convert("RGB")))


@pytest.mark.parametrize("train", [True, False])
def test_cifar10_reads_as_torchvision_does(tmp_path, train):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py")
    values = [folder / f"data_batch_{i}" for i in range(1, 6)] if train else [folder]
    ours = TorchvisionImages(values)
    _same_as_torchvision(ours, UncheckedCIFAR10(tmp_path, train=train, download=False))
    assert ours.classes == CIFAR10_NAMES and len(ours) == (11 if train else 4)
    assert ours.taken == (
        [] if train else [f"the test split of {folder} (test_batch) taken (its train split: its data_batch_1..5 files)"]
    )
    assert ours.relative_path(0) == ("data_batch_1[0]" if train else "test_batch[0]")
    assert ours.relative_path(len(ours) - 1) == ("data_batch_5[1]" if train else "test_batch[3]")
    assert ours.dataset_files[-1] == str(folder / "batches.meta")


@pytest.mark.parametrize("train", [True, False])
def test_cifar100_reads_as_torchvision_does(tmp_path, train):
    folder = write_cifar100(tmp_path / "cifar-100-python")
    ours = TorchvisionImages(folder / ("train" if train else "test"))
    _same_as_torchvision(ours, UncheckedCIFAR100(tmp_path, train=train, download=False))
    assert len(ours.classes) == 100 and ours.labels[0] == (97 if train else 98)
    assert ours.files == [str(folder / ("train" if train else "test"))]


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST", "KMNIST"])
@pytest.mark.parametrize("train", [True, False])
def test_mnist_family_reads_as_torchvision_does(tmp_path, name, train):
    raw = write_mnist(tmp_path, name)
    theirs = getattr(torchvision.datasets, name)(tmp_path, train=train, download=False)
    value = raw / ("train-labels-idx1-ubyte" if train else "t10k-images-idx3-ubyte") if train else raw.parent
    ours = TorchvisionImages(value)
    # MNIST's digits as CLIP's prompts say them ("0"), where torchvision's classes say "0 - zero"
    expected = [c.split(" - ")[0] for c in theirs.classes] if name == "MNIST" else None
    _same_as_torchvision(ours, theirs, expected)
    assert list(MNIST_CLASSES[name]) == (expected or theirs.classes)
    assert ours.relative_path(0) == ("train-images-idx3-ubyte[0]" if train else "t10k-images-idx3-ubyte[0]")


def test_mnist_gz_alone_reads_as_the_uncompressed_files(tmp_path):
    plain = TorchvisionImages(write_mnist(tmp_path / "a"))
    packed = TorchvisionImages(write_mnist(tmp_path / "b", raw=False) / "t10k-images-idx3-ubyte.gz")
    assert packed.files == [str(tmp_path / "b/MNIST/raw/t10k-images-idx3-ubyte.gz")]
    assert packed.labels == plain.labels and len(packed) == 3
    assert all(np.array_equal(np.asarray(packed[i].image), np.asarray(plain[i].image)) for i in range(3))


def test_mnist_under_another_name_has_no_classes_unless_given(tmp_path):
    raw = write_mnist(tmp_path, "digits")
    assert TorchvisionImages(raw).classes is None
    assert TorchvisionImages(raw, classes=list("abcdefghij")).classes == list("abcdefghij")
    # a link to torchvision's folder, under another name: the folder's name is torchvision's
    (tmp_path / "fashion").symlink_to(write_mnist(tmp_path, "FashionMNIST").parent)
    linked = TorchvisionImages(tmp_path / "fashion/raw/t10k-images-idx3-ubyte")
    assert linked.classes == list(MNIST_CLASSES["FashionMNIST"]) and linked.classes_from == "torchvision's FashionMNIST"
    assert TorchvisionImages(tmp_path / "fashion").classes == list(MNIST_CLASSES["FashionMNIST"])


def test_torchvision_root_and_detection(tmp_path):
    write_cifar10(tmp_path / "root/cifar-10-batches-py")
    assert TorchvisionImages(tmp_path / "root").root == str(tmp_path / "root/cifar-10-batches-py")
    write_mnist(tmp_path / "root")
    with pytest.raises(
        TorchvisionFilesError,
        match=r"root holds 2 torchvision datasets \(cifar-10-batches-py, MNIST/raw\): give one's folder",
    ):
        TorchvisionImages(tmp_path / "root")
    assert is_torchvision_files(tmp_path / "root/MNIST")
    assert is_torchvision_files(str(tmp_path / "root/cifar-10-batches-py/data_batch_*"))
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "photos/a.png")
    assert not is_torchvision_files(tmp_path / "photos")
    assert not is_torchvision_files(tmp_path / "photos/a.png")
    assert not is_torchvision_files(tmp_path / "root/cifar-10-batches-py/batches.meta")  # (no split)
    parts = torchvision_split(str(tmp_path / "root/cifar-10-batches-py/data_batch_*")).parts
    assert [part.name for part in parts] == [f"data_batch_{i}" for i in range(1, 6)]


def test_rows_of_a_file_hold_out_a_validation_split_of_the_train_split(tmp_path):
    """CIFAR-100's and MNIST's train split is one file: a slice of its rows (train[:3], train[3:]) gives the linear
    probe a validation split, each row its own item once."""
    folder = write_cifar100(tmp_path / "cifar-100-python")
    whole = TorchvisionImages(folder / "train")
    head, tail = TorchvisionImages(f"{folder}/train[:3]"), TorchvisionImages(f"{folder}/train[3:]")
    assert (len(head), len(tail)) == (3, 2) and head.labels + tail.labels == whole.labels
    assert [tail.relative_path(i) for i in range(2)] == ["train[3]", "train[4]"]
    assert np.array_equal(np.asarray(tail[1].image), np.asarray(whole[4].image))
    assert head.shared_rows(tail) is None and head.files == tail.files == [str(folder / "train")]
    assert whole.shared_rows(tail) == f"rows 3..4 of {folder / 'train'}"
    assert is_torchvision_files(f"{folder}/train[1:2]") and not is_torchvision_files(f"{folder}/nothing[1:2]")
    raw = write_mnist(tmp_path, train=6)
    assert (
        TorchvisionImages(f"{raw}/train-labels-idx1-ubyte[4:]").labels
        == TorchvisionImages(raw / "train-images-idx3-ubyte").labels[4:]
    )
    cases = [
        ([f"{folder}/train[3:9]"], f"expected rows of {folder / 'train'}, which holds 5 rows (0..4), got [3:9]"),
        ([f"{folder}/train[3:3]"], f"expected rows of {folder / 'train'}, which holds 5 rows (0..4), got [3:3]"),
        ([f"{folder}/train[6:]"], f"expected rows of {folder / 'train'}, which holds 5 rows (0..4), got [6:]"),
        (
            [f"{folder}/train[:3]", f"{folder}/train[2:]"],
            f"expected each row once, got rows 2..2 of {folder / 'train'} twice",
        ),
    ]
    for values, message in cases:
        with pytest.raises(TorchvisionFilesError) as caught:
            TorchvisionImages(values)
        assert str(caught.value) == f"paths: {message}"


def test_genuine_files_ask_for_three_numpy_globals_only(tmp_path):
    folder = write_cifar10(tmp_path / "c", counts=(2,) * 5, test=2)
    asked = {
        arg.replace(" ", ".")
        for name in ("data_batch_1", "batches.meta")
        for op, arg, _ in pickletools.genops((folder / name).read_bytes())
        if op.name == "GLOBAL"
    }
    assert asked == {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"}
    assert set(SafeUnpickler.ADMITTED) == {tuple(g.rsplit(".", 1)) for g in asked}
    # the bytes Python 2 wrote read as pickle.load with numpy reads them
    batch = load_pickle(str(folder / "data_batch_1"))
    with open(folder / "data_batch_1", "rb") as handle:
        reference = pickle.load(handle, encoding="bytes")
    assert np.array_equal(batch["data"], reference[b"data"]) and batch["labels"] == reference[b"labels"]


class _Runs:
    def __init__(self, call: object, *args: object) -> None:
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("call", ["os.system", "builtins.eval", "builtins.exec", "numpy.load"])
def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path, call):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "marker"
    module, name = call.rsplit(".", 1)
    command = {
        "system": f"touch {marker}",
        "eval": f"open({str(marker)!r}, 'w')",
        "exec": f"open({str(marker)!r}, 'w')",
        "load": str(marker),
    }[name]
    target = getattr(__import__(module), name)
    payload = {"data": _Runs(target, command), "labels": [0]}  # (str keys: bytes would name _codecs.encode first)
    (folder / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(TorchvisionFilesError) as caught:
        TorchvisionImages(folder)
    # (pickle's protocol 2 names builtins as Python 2 did)
    global_name = {"system": "posix.system", "load": "numpy.load"}.get(name, f"__builtin__.{name}")
    assert str(caught.value) == (
        f"paths: {folder / 'test_batch'}: refused to load the global {global_name} (these files hold numpy arrays, "
        "lists, numbers and strings only: nothing in them was run)"
    )
    assert not marker.exists()


def test_admitted_globals_cannot_be_turned_to_other_use(tmp_path):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py")
    # numpy.dtype called with an object dtype, and an array of that dtype: refused, no object made
    data = bytearray(py2_pickle({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}))
    data = data.replace(b"U\x02u1", b"U\x02O8", 1)
    (folder / "test_batch").write_bytes(bytes(data))
    with pytest.raises(
        TorchvisionFilesError,
        match=r"test_batch is not a readable CIFAR pickle \(ValueError: "
        r"expected an array of integers, got dtype 'O8'",
    ):
        TorchvisionImages(folder)
    # _reconstruct given another class than ndarray: refused
    data = py2_pickle({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}).replace(
        b"cnumpy\nndarray\n", b"cnumpy\ndtype\n", 1
    )
    (folder / "test_batch").write_bytes(data)
    with pytest.raises(TorchvisionFilesError, match="expected numpy.ndarray to be reconstructed"):
        TorchvisionImages(folder)


@pytest.mark.parametrize(
    "build",
    [
        b"cnumpy\nndarray\nN}X\x05\x00\x00\x00_callcnumpy\ndtype\ns\x86b.",  # (BUILD's slot state: setattr)
        b"cnumpy\ndtype\n}X\x05\x00\x00\x00_callK\x01sb.",  # (BUILD's dict state: the __dict__ updated)
        b"cnumpy.core.multiarray\n_reconstruct\nN}X\x08\x00\x00\x00__code__K\x01s\x86b.",
    ],
)
def test_a_pickle_cannot_change_what_the_next_file_is_read_with(tmp_path, build):
    """BUILD on an admitted global set attributes on it: on a class or function given out, a change every later
    file would be read with."""
    folder = write_cifar10(tmp_path / "cifar-10-batches-py")
    (folder / "data_batch_1").write_bytes(b"\x80\x02" + build)
    with pytest.raises(TorchvisionFilesError, match=r"data_batch_1 is not a readable CIFAR pickle \(AttributeError: "):
        TorchvisionImages(folder / "data_batch_1")
    assert all(
        getattr(found, "_call", None) is not None
        for (_, name), found in SafeUnpickler.ADMITTED.items()
        if name != "ndarray"
    )
    assert TorchvisionImages(folder / "data_batch_2").labels == [1, 2]


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated", r"test_batch is not a readable CIFAR pickle \((EOFError|UnpicklingError): "),
        ("not a pickle", r"test_batch is not a readable CIFAR pickle \(UnpicklingError: "),
        (
            "wrong shape",
            r"test_batch: expected 'data' a uint8 \(N, 3072\) array \(32 x 32 RGB planes\), got uint8 \(2, 1024\)",
        ),
        ("labels count", r"test_batch: expected a label for each of its 2 images, got 3 labels"),
        (
            "label past",
            r"expected class ids among the 10 classes of .*batches.meta, 0..9, got 10 at row 1 of .*test_batch$",
        ),
        ("array short", r"an array of shape \(2, 3073\) and dtype u1 holds 6144 bytes of data"),
        ("no dict", r"test_batch: expected a pickled dict, got list"),
        ("absent", r"test_batch is absent \(a CIFAR-10 split file\)"),
    ],
)
def test_damaged_cifar_files_are_refused_in_one_line(tmp_path, damage, message):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py")
    path = folder / "test_batch"
    good = path.read_bytes()
    data = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "not a pickle":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + good)
    elif damage == "wrong shape":
        path.write_bytes(py2_pickle({**data, b"data": np.zeros((2, 1024), np.uint8)}))
    elif damage == "labels count":
        path.write_bytes(py2_pickle({**data, b"labels": [0, 1, 2]}))
    elif damage == "label past":
        path.write_bytes(py2_pickle({**data, b"labels": [0, 10]}))
    elif damage == "array short":
        path.write_bytes(py2_pickle(data).replace(b"(K\x02M\x00\x0ct", b"(K\x02M\x01\x0ct", 1))  # (shape (2, 3073))
    elif damage == "no dict":
        path.write_bytes(py2_pickle([1, 2]))
    elif damage == "absent":
        path.unlink()
    with pytest.raises(TorchvisionFilesError) as caught:
        TorchvisionImages(folder)
    assert "\n" not in str(caught.value) and caught.value.argument == "paths"
    assert re.search(message, str(caught.value)), str(caught.value)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("magic", r"t10k-images-idx3-ubyte: expected an idx file of images \(magic 0x00000803\), got magic 0x00000801"),
        (
            "truncated",
            r"t10k-images-idx3-ubyte: its header gives images of shape \(3, 28, 28\), 2352 bytes; it holds 2000 bytes",
        ),
        (
            "claims more",
            r"t10k-images-idx3-ubyte: its header gives images of shape \(2147483647, 28, 28\), 1683627179248 bytes; "
            r"it holds 2352 bytes",
        ),
        (
            "longer",
            r"t10k-images-idx3-ubyte: its header gives images of shape \(3, 28, 28\), 2352 bytes; it holds more bytes",
        ),
        (
            "labels count",
            r"t10k-labels-idx1-ubyte: expected a label for each of the 3 images of .*t10k-images-idx3-ubyte, got 2 labels",
        ),
        ("label past", r"expected class ids among the 10 classes, 0..9, got 12 at row 0 of .*t10k-labels-idx1-ubyte$"),
        ("no pixels", r"t10k-images-idx3-ubyte: expected images of 1 x 1 pixels or more, got 28 x 0$"),
        ("bad gz", r"t10k-images-idx3-ubyte.gz does not read \(zlib.error: Error -3 while decompressing data"),
        ("absent", r"t10k-labels-idx1-ubyte \(or .gz\) is absent"),
    ],
)
def test_damaged_idx_files_are_refused_in_one_line(tmp_path, damage, message):
    raw = write_mnist(tmp_path, raw=damage != "bad gz")
    images, labels = raw / "t10k-images-idx3-ubyte", raw / "t10k-labels-idx1-ubyte"
    if damage == "magic":
        images.write_bytes(labels.read_bytes())
    elif damage == "truncated":
        images.write_bytes(images.read_bytes()[:2016])
    elif damage == "claims more":  # (read as far as the file goes: no allocation of the 1.7 TB claimed)
        images.write_bytes(images.read_bytes()[:4] + struct.pack(">i", 2**31 - 1) + images.read_bytes()[8:])
    elif damage == "longer":
        images.write_bytes(images.read_bytes() + b"\0")
    elif damage == "labels count":
        labels.write_bytes(idx_bytes(np.array([1, 2], np.uint8)))
    elif damage == "label past":
        labels.write_bytes(idx_bytes(np.array([12, 2, 3], np.uint8)))
    elif damage == "no pixels":
        images.write_bytes(idx_bytes(np.zeros((3, 28, 0), np.uint8)))
    elif damage == "bad gz":
        Path(str(images) + ".gz").write_bytes(b"\x1f\x8b\x08\x00garbage" * 4)
    elif damage == "absent":
        labels.unlink()
    with pytest.raises(TorchvisionFilesError) as caught:
        TorchvisionImages(raw)
    assert "\n" not in str(caught.value)
    assert re.search(message, str(caught.value)), str(caught.value)


def test_bad_values_name_the_argument(tmp_path):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py")
    write_mnist(tmp_path)
    with pytest.raises(TorchvisionFilesError, match="classes: expected the 10 classes of .*batches.meta, got 3 names"):
        TorchvisionImages(folder, classes=["a", "b", "c"])
    with pytest.raises(TorchvisionFilesError, match="paths: expected the files of one dataset, got files of"):
        TorchvisionImages([folder / "test_batch", tmp_path / "MNIST/raw/t10k-images-idx3-ubyte"])
    with pytest.raises(TorchvisionFilesError, match="paths: expected a CIFAR or MNIST folder as torchvision"):
        TorchvisionImages([folder / "test_batch", folder / "batches.meta"])
    with pytest.raises(
        TorchvisionFilesError, match="paths: expected one dataset folder or split files, got the folder"
    ):
        TorchvisionImages([folder, folder / "test_batch"])
    with pytest.raises(TypeError, match="paths must be a path"):
        TorchvisionImages([])
    assert os.path.isdir(folder)


def cifar_of(
    folder: Path, root: Path, names: list[str], batches: Sequence[str] = ("test_batch", "data_batch_1")
) -> Path:
    """The readable 32 x 32 images of ``folder``'s class sub-folders (in ImageFolder's order) as a CIFAR-10 folder,
    ``root`` (``cifar-10-batches-py``): each of its ``batches`` files of them, labelled by their folder's place in
    ``names``, and ``batches.meta`` naming ``names``; returns ``root``."""
    from torchflava.data.readers import ImageFolder

    listed = ImageFolder(folder)
    rows, labels = [], []
    for index in range(len(listed)):
        path = listed.relative_path(index)
        try:
            image = Image.open(folder / path).convert("RGB")
        except OSError:
            continue
        assert image.size == (32, 32)
        rows.append(np.asarray(image).transpose(2, 0, 1).reshape(-1))  # (3072,): the R, G, B planes
        labels.append(names.index(path.split("/")[0]))
    root.mkdir(parents=True, exist_ok=True)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": np.stack(rows)}
    for name in batches:
        (root / name).write_bytes(py2_pickle(batch))
    (root / "batches.meta").write_bytes(py2_pickle({b"label_names": [n.encode() for n in names]}))
    return root


_RAN = []  # (what a function a pickle reached was called with)


def _ran(*args: object) -> list:
    _RAN.append(args)
    return [0]


@pytest.mark.parametrize("code", [0xF3, 0xF003, 0x7FFFFFF3])  # (EXT1, EXT2, EXT4)
def test_an_extension_code_is_refused_where_copyreg_has_a_function_for_it(tmp_path, code):
    """copyreg's extension cache gives out the object an earlier load of a code got, without find_class: a process
    that registered and loaded one handed it to any pickle naming the code."""
    import copyreg

    folder = write_cifar10(tmp_path / "cifar-10-batches-py")
    ext = b"\x82" + bytes([code]) if code < 256 else b"\x83" + struct.pack("<H", code) if code < 65536 else b""
    ext = ext or b"\x84" + struct.pack("<i", code)
    copyreg.add_extension(__name__, "_ran", code)
    try:
        assert pickle.loads(b"\x80\x02" + ext + b".") is _ran  # (the cache now holds it)
        # {"labels": _ran("run"), "data": ...}: REDUCE on what the code names
        good = (folder / "test_batch").read_bytes()
        (folder / "test_batch").write_bytes(b"\x80\x02}X\x06\x00\x00\x00labels" + ext + b"X\x03\x00\x00\x00run\x85Rs.")
        with pytest.raises(TorchvisionFilesError) as caught:
            TorchvisionImages(folder)
    finally:
        copyreg.remove_extension(__name__, "_ran", code)
    assert _RAN == []
    name = {1: "EXT1", 2: "EXT2"}.get(len(ext) - 1, "EXT4")
    assert str(caught.value) == (
        f"paths: {folder / 'test_batch'}: refused the extension code {code} ({name}: a global named by copyreg's "
        "registry; these files hold numpy arrays, lists, numbers and strings only: nothing in them was run)"
    )
    (folder / "test_batch").write_bytes(good)
    assert len(TorchvisionImages(folder)) == 4


def _dag(depth: int) -> bytes:
    """A pickle's opcodes (protocol 2, after PROTO) of a list holding one list twice, that one another list twice...
    ``depth`` levels: 2**depth lists from ~9 bytes a level, each list memoized once (BINPUT) and fetched (BINGET)."""
    body = b"]q\x000"  # [] as memo 0, popped
    for level in range(1, depth):
        body += b"(h" + bytes([level - 1]) + b"h" + bytes([level - 1]) + b"lq" + bytes([level]) + b"0"
    return body + b"h" + bytes([depth - 1])


def test_nested_and_shared_containers_cost_what_the_file_holds(tmp_path):
    """A pickle's memo lets a few bytes refer to one list over and over: the arrays are made with each object visited
    once (a 60-level tree of 2**60 lists, 500 bytes of file, read in time), without recursion (60,000 lists deep,
    a list holding itself), and a stand-in out of an array's place (a tuple, a set, a dict's key) is refused."""
    import time

    folder = write_cifar10(tmp_path / "cifar-10-batches-py")
    path = folder / "test_batch"
    array = py2_pickle(np.zeros((1, 3072), np.uint8))[2:-1]  # (its opcodes: the array, memo free)
    cases = {
        "shared": _dag(60),
        "deep": b"]" * 60_000 + b"a" * 59_999,
        "itself": b"]q\x00h\x00a",
        "tuple": b"(" + array + b"t",
        "key": b"}" + array + b"K\x00s",
        "set": b"\x8f(" + array + b"\x90",  # (protocol 4's EMPTY_SET, MARK, ADDITEMS)
    }
    expected = {
        "tuple": "an array stands where data belongs (arrays are a dict's values or a list's items)",
        "key": "an array stands where data belongs (arrays are a dict's values or a list's items)",
        "set": "an array stands where data belongs (arrays are a dict's values or a list's items)",
    }
    for name, labels in cases.items():
        path.write_bytes(b"\x80\x04}(X\x06\x00\x00\x00labels" + labels + b"X\x04\x00\x00\x00data" + array + b"u.")
        start = time.perf_counter()
        with pytest.raises(TorchvisionFilesError) as caught:
            TorchvisionImages(folder)
        assert time.perf_counter() - start < 5, name  # (the tree: 2**60 list copies, never done, before)
        message = expected.get(name)
        if message is None:
            assert str(caught.value) == f"paths: {path}: expected 'labels', a list of class ids", name
        else:
            assert str(caught.value) == f"paths: {path} is not a readable CIFAR pickle (ValueError: {message})"
    # one array referred to twice (BINPUT, BINGET): one array in both places
    path.write_bytes(b"\x80\x02}(X\x04\x00\x00\x00data" + array + b"q\x09X\x01\x00\x00\x00x]h\x09au.")
    batch = load_pickle(str(path))
    assert batch["x"][0] is batch["data"] and batch["data"].shape == (1, 3072)


def test_a_label_too_long_to_write_is_refused_in_one_line(tmp_path):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py")
    data = py2_pickle({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})
    huge = b"\x8b" + struct.pack("<i", 3000) + b"\x7f" * 3000  # (LONG4: a 24,000-bit int, past str()'s 4300 digits)
    (folder / "test_batch").write_bytes(data.replace(b"](K\x00e", b"](" + huge + b"e", 1))
    with pytest.raises(TorchvisionFilesError) as caught:
        TorchvisionImages(folder)
    assert str(caught.value) == (
        f"paths: expected class ids among the 10 classes of {folder / 'batches.meta'}, 0..9, got an integer of 23999 "
        f"bits at row 0 of {folder / 'test_batch'}"
    )
    # as an array's size
    (folder / "test_batch").write_bytes(data.replace(b"(K\x01M\x00\x0ct", b"(K\x01" + huge + b"t", 1))
    with pytest.raises(TorchvisionFilesError) as caught:
        TorchvisionImages(folder)
    assert str(caught.value).endswith(
        "(ValueError: an array of shape (1, an integer of 23999 bits) and dtype u1 holds 3072 bytes of data)"
    )


def test_an_idx_gz_claiming_far_more_than_it_holds_is_refused_unread(tmp_path):
    """A header claiming 160 MB (over GZ_FREE) from a .gz of a few hundred bytes (a gzip bomb's ratio, ~1000 to 1,
    would have decompressed GBs from MBs, held in memory) is refused before decompressing."""
    from torchflava.data.torchvision_files import GZ_FREE

    raw = write_mnist(tmp_path, raw=False)
    packed = raw / "t10k-images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + struct.pack(">iii", 204_000, 28, 28)
    packed.write_bytes(gzip.compress(header + bytes(1 << 16), mtime=0))
    size = packed.stat().st_size
    assert 204_000 * 784 > GZ_FREE and size < 1000
    with pytest.raises(TorchvisionFilesError) as caught:
        TorchvisionImages(raw)
    assert str(caught.value) == (
        f"paths: {packed}: its header gives a shape of (204000, 28, 28), 159936000 bytes, from a .gz of {size} bytes: "
        "more than 64 times it (torchvision's are under 5 times theirs), refused before decompressing"
    )


def test_rows_shared_through_a_link_are_found(tmp_path):
    """The linear probe's splits must not share rows: the same file through a linked folder or a hard link is the
    same file."""
    folder = write_cifar100(tmp_path / "cifar-100-python")
    (tmp_path / "linked").symlink_to(folder)
    head = TorchvisionImages(f"{folder}/train[:3]")
    assert head.shared_rows(TorchvisionImages(f"{tmp_path}/linked/train[2:]")) == f"rows 2..2 of {folder}/train"
    assert head.shared_rows(TorchvisionImages(f"{tmp_path}/linked/train[3:]")) is None
    test = TorchvisionImages(folder / "test")
    hard = tmp_path / "hard" / "cifar-100-python"
    hard.mkdir(parents=True)
    for name in ("meta", "train"):
        (hard / name).write_bytes((folder / name).read_bytes())
    os.link(folder / "test", hard / "test")
    assert TorchvisionImages(hard / "test").shared_rows(test) == f"rows 0..2 of {hard}/test"


def test_a_pattern_matching_nothing_is_refused(tmp_path):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py")
    for values in (f"{folder}/data_batch_9*", [str(folder / "data_batch_1"), f"{folder}/data_batch_9*"]):
        with pytest.raises(TorchvisionFilesError) as caught:
            TorchvisionImages(values)
        assert str(caught.value) == (
            f"paths: expected torchvision's CIFAR or MNIST files, got '{folder}/data_batch_9*': no file matches it"
        )
    with pytest.raises(TorchvisionFilesError, match="got '.*/train\\[9{30}:\\]': no file matches it"):
        TorchvisionImages(f"{write_cifar100(tmp_path / 'cifar-100-python')}/train[{'9' * 30}:]")


def test_a_few_bytes_of_pickle_cannot_claim_gigabytes(tmp_path):
    """The memo is a list as long as its largest index: LONG_BINPUT 2**26 (11 bytes of file) took 1 GB, 2**31 would
    take 32 GB; refused, as are more lists and objects than MAX_CONTAINERS (1 byte of file, 56 of memory each),
    before anything is loaded."""
    from torchflava.data.torchvision_files import MAX_CONTAINERS

    folder = write_cifar10(tmp_path / "cifar-10-batches-py")
    path = folder / "test_batch"
    cases = [
        (
            b"\x80\x02}r" + struct.pack("<I", 1 << 31) + b".",
            "a memo index 2147483648 past the 3 opcodes before it (pickle writes them in turn)",
        ),
        (
            b"\x80\x02}p2000000000\n.",
            "a memo index 2000000000 past the 3 opcodes before it (pickle writes them in turn)",
        ),  # (PUT: in decimal)
        (
            b"\x80\x02(" + b"]" * (MAX_CONTAINERS + 1) + b"l.",
            f"more than {MAX_CONTAINERS} lists, dicts, tuples and objects (CIFAR's files: a few dozen)",
        ),
    ]
    for data, message in cases:
        path.write_bytes(data)
        with pytest.raises(TorchvisionFilesError) as caught:
            TorchvisionImages(folder)
        assert str(caught.value) == f"paths: {path} is not a readable CIFAR pickle (UnpicklingError: {message})"
    assert MAX_CONTAINERS == 65536
