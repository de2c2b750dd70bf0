"""ParquetImages: image-classification rows of parquet files as the Hugging Face Hub serves them."""

import io
import json
import pickle
import sys
from typing import Optional, Sequence

from PIL import Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from torchflava.data.parquet import MISSING_PYARROW, ParquetError, ParquetImages
from torchflava.data.samples import BadSample

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # Hugging Face's Image feature


def hf_features(names: Optional[Sequence[str]], *, image: str = "image", label: str = "label") -> dict:
    """The schema metadata ``datasets`` writes: {"huggingface": '{"info": {"features": ...}}'}."""
    features = {image: {"_type": "Image"}}
    if names is not None:
        features[label] = {"names": list(names), "_type": "ClassLabel"}
    return {"huggingface": json.dumps({"info": {"features": features}})}


def write_hf_parquet(
    path,
    images: Sequence[Optional[bytes]],
    labels: Sequence[Optional[int]],
    names: Optional[Sequence[str]],
    *,
    row_group_size: int = 100,
) -> None:
    """A parquet file as ``datasets`` writes an Image + ClassLabel dataset (row groups of 100 rows: its size for
    image datasets): the struct {bytes, path}, the class ids int64, the features in the schema's metadata."""
    column = pa.array(
        [None if b is None else {"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)], IMAGE_STRUCT
    )
    table = pa.table({"image": column, "label": pa.array(labels, pa.int64())})
    pq.write_table(table.replace_schema_metadata(hf_features(names)), path, row_group_size=row_group_size)


def png(value: int, size: int = 4) -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (size, size), (value, 0, 0)).save(data, "PNG")
    return data.getvalue()


NAMES = ["cat", "dog", "bird"]


@pytest.fixture
def shards(tmp_path):
    """validation-0000{0,1}-of-00002.parquet beside a train file: 7 + 5 rows, row 3 a null image."""
    data = tmp_path / "data"
    data.mkdir()
    images = [png(10 * i) for i in range(12)]
    images[3] = None
    labels = [i % 3 for i in range(12)]
    write_hf_parquet(data / "validation-00000-of-00002.parquet", images[:7], labels[:7], NAMES, row_group_size=3)
    write_hf_parquet(data / "validation-00001-of-00002.parquet", images[7:], labels[7:], NAMES, row_group_size=3)
    return data, labels


def _red(source, index):
    return source[index].image.getpixel((0, 0))[0]


def test_shards_read_as_hugging_face_writes_them_with_the_classlabel_names(shards):
    data, labels = shards
    source = ParquetImages(str(data / "validation-*.parquet"))
    assert len(source) == 12 and source.classes == NAMES and source.labels == labels
    assert (source.image_key, source.label_key, source.warnings) == ("image", "label", [])
    assert [_red(source, i) for i in (0, 1, 2, 4, 6, 7, 11)] == [0, 10, 20, 40, 60, 70, 110]
    assert [source[i].label for i in (0, 1, 2, 4, 11)] == [0, 1, 2, 1, 2]
    assert source.relative_path(7) == "validation-00001-of-00002.parquet[0]"
    assert source.relative_path(2) == "validation-00000-of-00002.parquet[2]"
    with pytest.raises(BadSample, match=r"validation-00000-of-00002.parquet\[3\]: no image \(null 'image'\)"):
        source[3]
    # a folder of them, and the files listed (as a shell expands the glob), read alike
    for paths in (data, sorted(str(p) for p in data.glob("*.parquet"))):
        other = ParquetImages(paths)
        assert other.files == source.files and other.labels == labels


def test_rows_read_in_any_order_even_in_one_large_row_group(tmp_path):
    """A file of one row group (pyarrow's and pandas' default) is streamed ROWS_READ rows at a time: a row behind
    the rows read restarts the group, one ahead reads on."""
    write_hf_parquet(tmp_path / "one.parquet", [png(i) for i in range(40)], [i % 2 for i in range(40)], ["a", "b"])
    source = ParquetImages(tmp_path / "one.parquet")
    order = [39, 0, 17, 16, 35, 1, 2, 30, 3]
    assert [_red(source, i) for i in order] == order


def test_a_path_column_and_a_binary_column_without_metadata(tmp_path):
    """A struct whose bytes are null reads its path relative to the parquet file; a string column is such a path;
    a binary column the bytes; no metadata: the columns named image/img and label, classes unknown."""
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (4, 4), (77, 0, 0)).save(tmp_path / "pics" / "a.png")
    structs = pa.array([{"bytes": None, "path": "pics/a.png"}, {"bytes": png(5), "path": None}], IMAGE_STRUCT)
    pq.write_table(pa.table({"image": structs, "label": [0, 4]}), tmp_path / "s.parquet")
    source = ParquetImages(tmp_path / "s.parquet")
    assert (_red(source, 0), _red(source, 1), source.labels, source.classes) == (77, 5, [0, 4], None)
    pq.write_table(pa.table({"img": ["pics/a.png", "pics/none.png"]}), tmp_path / "p.parquet")
    source = ParquetImages(tmp_path / "p.parquet")
    assert (source.image_key, source.label_key, source.labels, _red(source, 0)) == ("img", None, None, 77)
    assert source[0].label is None
    with pytest.raises(BadSample, match=r"p.parquet\[1\] \(pics/none.png\): unreadable image"):
        source[1]
    pq.write_table(pa.table({"jpg": pa.array([png(9)], pa.large_binary()), "cls": [1]}), tmp_path / "b.parquet")
    source = ParquetImages(tmp_path / "b.parquet", image_key="jpg", label_key="cls", classes=["x", "y"])
    assert (_red(source, 0), source[0].label, source.classes) == (9, 1, ["x", "y"])


def test_undecodable_bytes_are_a_bad_sample_named_by_file_and_row(tmp_path):
    write_hf_parquet(tmp_path / "x.parquet", [png(1), b"not a png"], [0, 1], ["a", "b"])
    source = ParquetImages(tmp_path / "x.parquet")
    with pytest.raises(BadSample, match=r"x.parquet\[1\]: unreadable image \(UnidentifiedImageError"):
        source[1]


def _items(batch):
    return batch


def test_dataloader_workers_read_the_rows_the_main_process_reads(shards):
    """Two forked workers, after the parent opened a file, and a pickled copy (a spawned worker's) read alike."""
    data, labels = shards
    source = ParquetImages(data)
    expected = [_red(source, i) for i in range(12) if i != 3]  # (the parent's file now open)
    good = [i for i in range(12) if i != 3]
    loader = DataLoader(_Subset(source, good), batch_size=2, num_workers=2, collate_fn=_items)
    read = [(sample.image.getpixel((0, 0))[0], sample.label) for batch in loader for sample in batch]
    assert read == [(value, labels[i]) for value, i in zip(expected, good)]
    copy = pickle.loads(pickle.dumps(source))
    assert [_red(copy, i) for i in good] == expected


class _Subset:
    def __init__(self, source, indices):
        self.source, self.indices = source, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.source[self.indices[i]]


def test_a_shard_left_out_of_a_hugging_face_split_is_warned_of(shards):
    data, _ = shards
    source = ParquetImages(data / "validation-00001-of-00002.parquet")
    assert len(source) == 5
    assert source.warnings == [
        f"warning: 1 of the 2 files {data}/validation-*-of-00002.parquet given, their images read: 00000 absent"
    ]


def _table(tmp_path, name, columns, metadata=None):
    table = pa.table(columns)
    pq.write_table(table.replace_schema_metadata(metadata) if metadata else table, tmp_path / name)
    return str(tmp_path / name)


@pytest.mark.parametrize(
    "make, kwargs, argument, message",
    [
        (lambda t: str(t / "nothing-*.parquet"), {}, "paths", "expected a parquet file, a glob pattern or a folder"),
        (
            lambda t: (t / "x.parquet").write_text("a,b\n") and str(t / "x.parquet"),
            {},
            "paths",
            "is not a parquet file",
        ),
        (
            lambda t: _table(t, "a.parquet", {"image": [png(1)], "label": [0]}),
            {"image_key": "jpg"},
            "image_key",
            "expected a column of the files, got 'jpg' (columns: image: binary, label: int64)",
        ),
        (
            lambda t: _table(t, "a.parquet", {"image": [png(1)], "label": [0]}),
            {"label_key": "fine_label"},
            "label_key",
            "expected a column of the files, got 'fine_label'",
        ),
        (
            lambda t: _table(t, "a.parquet", {"image": [png(1)], "label": [5]}, hf_features(NAMES)),
            {},
            "label_key",
            "expected 'label' among the 3 classes, 0..2, got 5 at row 0 of",
        ),
        (
            lambda t: _table(t, "a.parquet", {"image": [png(1), png(2)], "label": [0, -2]}, hf_features(NAMES)),
            {},
            "label_key",
            "expected 'label' among the 3 classes, 0..2, got -2 at row 1 of {t}/a.parquet",
        ),
        (
            lambda t: _table(t, "a.parquet", {"image": [1, 2], "label": [0, 1]}),
            {},
            "image_key",
            "expected 'image' to hold images (Hugging Face's struct {bytes: binary, path: string}, binary bytes or a "
            "string path), got int64",
        ),
        (
            lambda t: _table(t, "a.parquet", {"image": [png(1)], "label": [0.5]}),
            {},
            "label_key",
            "expected a column of integer class ids or of class names (strings), got 'label' of type double",
        ),
        (
            lambda t: _table(t, "a.parquet", {"image": [png(1), png(2)], "label": ["cat", "cow"]}),
            {"classes": NAMES},
            "label_key",
            "expected 'label' to name one of the 3 classes ('cat', 'dog', 'bird'), got 'cow' at row 1 of",
        ),
        (
            lambda t: _table(t, "a.parquet", {"image": [png(1)], "label": ["cat"]}),
            {"classes": ["cat", "dog", "cat"]},
            "classes",
            "expected each class named once, got 'cat' 2 times",
        ),
        (
            lambda t: _table(t, "a.parquet", {"photo": [png(1)], "label": [0]}),
            {},
            "image_key",
            "expected an image column (of Hugging Face's Image feature, or named image or img), got the columns "
            "photo: binary, label: int64: name one",
        ),
        (
            lambda t: _table(t, "a.parquet", {"image": [png(1)], "label": [0]}, hf_features(NAMES)),
            {"classes": ["a", "b"]},
            "classes",
            "expected the 3 classes of 'label''s ClassLabel in",
        ),
        (
            lambda t: [
                _table(t, "a.parquet", {"image": [png(1)], "label": [0]}),
                _table(t, "b.parquet", {"image": [png(1)], "label": pa.array([0], pa.int32())}),
            ],
            {},
            "paths",
            "expected files of one schema, got {t}/a.parquet (image: binary, label: int64) and {t}/b.parquet (image: "
            "binary, label: int32)",
        ),
        (
            lambda t: [
                _table(t, "a.parquet", {"image": [png(1)], "label": [0]}, hf_features(NAMES)),
                _table(t, "b.parquet", {"image": [png(1)], "label": [0]}, hf_features(["x", "y", "z"])),
            ],
            {},
            "paths",
            "expected files of one schema",
        ),
        (
            lambda t: _table(t, "a.parquet", {"image": pa.array([], pa.binary()), "label": pa.array([], pa.int64())}),
            {},
            "paths",
            "hold(s) no row",
        ),
        (
            lambda t: (
                [
                    _table(t, "train-00000-of-00001.parquet", {"image": [png(1)]}),
                    _table(t, "test-00000-of-00001.parquet", {"image": [png(1)]}),
                ]
                and str(t)
            ),
            {},
            "paths",
            "holds the parquet files of 2 splits (test, train): give one, e.g. {t}/train-*.parquet",
        ),
    ],
)
def test_bad_input_is_refused_naming_the_argument_before_any_image_is_read(tmp_path, make, kwargs, argument, message):
    paths = make(tmp_path)
    with pytest.raises(ParquetError) as error:
        ParquetImages(paths, **kwargs)
    assert error.value.argument == argument
    assert message.replace("{t}", str(tmp_path)) in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith(f"{argument}: ")


def test_several_classlabel_columns_take_label_or_fine_label_else_ask_for_one(tmp_path):
    features = {
        "img": {"_type": "Image"},
        "fine_label": {"names": ["a", "b", "c"], "_type": "ClassLabel"},
        "coarse_label": {"names": ["x", "y"], "_type": "ClassLabel"},
    }
    metadata = {"huggingface": json.dumps({"info": {"features": features}})}
    columns = {"img": pa.array([{"bytes": png(1), "path": None}], IMAGE_STRUCT), "fine_label": [2], "coarse_label": [1]}
    source = ParquetImages(_table(tmp_path, "c.parquet", columns, metadata))  # CIFAR-100's layout
    assert (source.image_key, source.label_key, source.classes, source.labels) == (
        "img",
        "fine_label",
        ["a", "b", "c"],
        [2],
    )
    source = ParquetImages(tmp_path / "c.parquet", label_key="coarse_label")
    assert (source.classes, source.labels) == (["x", "y"], [1])


def test_without_pyarrow_the_error_is_one_line_saying_what_to_install(shards, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # (an import of it fails, as where it is not installed)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError) as error:
        ParquetImages(shards[0])
    assert str(error.value) == MISSING_PYARROW
    assert MISSING_PYARROW == (
        "reading parquet files needs pyarrow: pip install 'torchflava[parquet]' (or pip install 'pyarrow>=14')"
    )


def _module_level_imports(nodes) -> list[str]:
    """The modules imported by ``nodes`` outside any function (in a class body, an if or a try too)."""
    import ast

    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(node.module or "")
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            found += _module_level_imports(ast.iter_child_nodes(node))
    return found


def test_no_module_of_the_library_imports_pyarrow_when_imported():
    """pyarrow is optional: every import of it in torchflava lies inside a function (run when a file is read)."""
    import ast
    from pathlib import Path

    import torchflava

    modules = list(Path(torchflava.__file__).parent.rglob("*.py"))
    assert any(path.name == "parquet.py" for path in modules)
    found = [
        f"{path.name}: {name}"
        for path in modules
        for name in _module_level_imports(ast.parse(path.read_text()).body)
        if name.split(".")[0] == "pyarrow"
    ]
    assert found == []


def test_a_file_cut_short_after_it_was_listed_gives_bad_samples_not_a_traceback(tmp_path):
    write_hf_parquet(tmp_path / "x.parquet", [png(i) for i in range(6)], [0] * 6, ["a", "b"], row_group_size=3)
    source = ParquetImages(tmp_path / "x.parquet")
    write_hf_parquet(tmp_path / "x.parquet", [png(i) for i in range(2)], [0] * 2, ["a", "b"], row_group_size=3)
    assert _red(source, 1) == 1
    with pytest.raises(BadSample, match=r"x.parquet\[4\]: unreadable parquet row \("):
        source[4]
    (tmp_path / "x.parquet").unlink()
    with pytest.raises(BadSample, match=r"x.parquet\[0\]: unreadable parquet row \(FileNotFoundError"):
        source[0]


def _captions_file(tmp_path, captions, *, split=None, name="c.parquet"):
    """An image-caption parquet file as the Hub serves Flickr30k: the Image struct, a caption column (strings or
    lists of them), a split column."""
    images = pa.array([{"bytes": png(10 * i), "path": f"{i}.jpg"} for i in range(len(captions))], IMAGE_STRUCT)
    columns = {"image": images, "caption": captions}
    if split is not None:
        columns["split"] = split
    metadata = {"huggingface": json.dumps({"info": {"features": {"image": {"_type": "Image"}}}})}
    pq.write_table(pa.table(columns).replace_schema_metadata(metadata), tmp_path / name)
    return tmp_path / name


def test_image_caption_rows_are_image_text_folder_items_one_a_caption(tmp_path):
    from torchflava.data.readers import ImageTextFolder

    path = _captions_file(
        tmp_path,
        [["a red dot", "red"], ["a dark dot"], [], None, ["x", None]],
        split=["test", "train", "test", "test", "test"],
    )
    folder = ImageTextFolder(None, path)
    assert (len(folder), folder.format, folder.splits) == (7, "parquet", None)
    assert [folder.image_path(i) for i in (0, 1, 2)] == ["c.parquet[0]", "c.parquet[0]", "c.parquet[1]"]
    assert (folder[1].text, folder[1].image.getpixel((0, 0))[0], folder[2].image.getpixel((0, 0))[0]) == ("red", 0, 10)
    reasons = []
    for index in (3, 4, 6):
        with pytest.raises(BadSample) as bad:
            folder[index]
        reasons.append(bad.value.reason)
    assert reasons == [
        "c.parquet[2]: an empty list of captions in 'caption'",
        "c.parquet[3]: null 'caption'",
        "c.parquet[4].caption[1]: null caption",
    ]
    test = ImageTextFolder(None, path, split="test")
    assert (len(test), test.splits, test.caption(1)) == (6, ("test", "train"), "red")
    strings = ImageTextFolder(None, _captions_file(tmp_path, ["one", "two"], name="s.parquet"))
    assert [strings.caption(i) for i in range(2)] == ["one", "two"] and strings.image_path(1) == "s.parquet[1]"


@pytest.mark.parametrize(
    "kwargs, argument, message",
    [
        ({"root": True}, "root", "root must be None for a .parquet captions file, which holds its images"),
        ({"text_key": "title"}, "text_key", "text_key: expected a column of the files, got 'title'"),
        (
            {"text_key": "label"},
            "text_key",
            "text_key: expected 'label' to hold a caption or a list of them, got int64",
        ),
        ({"split": "test"}, "split", "split: split is for files with a 'split' column of strings, these have none"),
        ({"image_key": "jpg"}, "image_key", "image_key: expected a column of the files, got 'jpg'"),
    ],
)
def test_a_bad_image_caption_parquet_is_refused_naming_the_argument(tmp_path, kwargs, argument, message):
    from torchflava.data.readers import CaptionsError, ImageTextFolder

    images = pa.array([{"bytes": png(1), "path": None}], IMAGE_STRUCT)
    pq.write_table(pa.table({"image": images, "caption": ["a"], "label": [3]}), tmp_path / "c.parquet")
    root = kwargs.pop("root", None)
    with pytest.raises(CaptionsError) as error:
        ImageTextFolder(None if root is None else tmp_path, tmp_path / "c.parquet", **kwargs)
    assert error.value.argument == argument and str(error.value).startswith(message)


def test_a_split_the_caption_file_lacks_is_refused_naming_the_ones_it_has(tmp_path):
    from torchflava.data.readers import CaptionsError, ImageTextFolder

    path = _captions_file(tmp_path, ["a", "b"], split=["train", "val"])
    with pytest.raises(CaptionsError, match=r"^split: expected splits of the files \(train, val\), got \['test'\]$"):
        ImageTextFolder(None, path, split="test")


def _corrupt_column(path, column: int) -> None:
    """Zero the first row group's chunk of ``column`` in ``path``, its footer kept: a file damaged in its data, as a
    download cut and patched, or a disk fault, leaves it (listed as parquet, unreadable when that column is read)."""
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(column)
    data = bytearray(path.read_bytes())
    start = chunk.data_page_offset
    data[start : start + chunk.total_compressed_size] = bytes(chunk.total_compressed_size)
    path.write_bytes(bytes(data))


def test_a_file_damaged_in_its_label_or_caption_column_is_refused_naming_it_not_a_traceback(tmp_path):
    write_hf_parquet(tmp_path / "x.parquet", [png(i) for i in range(6)], [0, 1] * 3, ["a", "b"], row_group_size=3)
    _corrupt_column(tmp_path / "x.parquet", 1)
    with pytest.raises(ParquetError) as error:
        ParquetImages(tmp_path / "x.parquet")
    assert error.value.argument == "paths" and "\n" not in str(error.value)
    assert str(error.value).startswith(f"paths: {tmp_path / 'x.parquet'} is not a readable parquet file (")
    from torchflava.data.readers import ImageTextFolder

    path = _captions_file(tmp_path, ["a red cat", "a blue dog", "a green bird"])
    _corrupt_column(path, 1)
    with pytest.raises(ValueError) as error:
        ImageTextFolder(None, path)
    assert str(error.value).startswith(f"captions: {path} is not a readable parquet file (")
    assert "\n" not in str(error.value)


def test_a_split_whose_every_label_is_minus_one_is_unlabelled(tmp_path):
    """Hugging Face's test split of a labelled dataset (its ClassLabel kept, every row -1): no labels, the classes
    kept; rows -1 among labelled ones are left out (test_unlabelled_rows_...)."""
    write_hf_parquet(tmp_path / "test.parquet", [png(i) for i in range(5)], [-1] * 5, NAMES, row_group_size=2)
    source = ParquetImages(tmp_path / "test.parquet")
    assert (source.label_key, source.labels, source.classes) == ("label", None, NAMES)
    assert source.unlabelled == "every 'label' of the parquet files is -1 (Hugging Face's unlabelled split)"
    assert source[3].label is None and _red(source, 3) == 3
    write_hf_parquet(tmp_path / "train.parquet", [png(i) for i in range(2)], [1, 0], NAMES)
    assert ParquetImages(tmp_path / "train.parquet").unlabelled is None


def test_a_column_of_class_names_labels_its_rows_by_name(tmp_path):
    """Some Hub datasets store each row's class name (a string, not a ClassLabel id; dictionary-encoded as pandas
    writes a category): the classes are the names sorted (as class folders are), or those given, matched by name
    (non-ASCII names too); such a column was refused ('expected a column of integer class ids')."""
    names = ["chat", "été", "chat", "犬", "bird"]
    _table(tmp_path, "s.parquet", {"image": [png(i) for i in range(5)], "label": names})
    source = ParquetImages(tmp_path / "s.parquet")
    assert (source.classes, source.labels) == (["bird", "chat", "été", "犬"], [1, 2, 1, 3, 0])
    assert source[3].label == 3 and _red(source, 3) == 3
    given = ParquetImages(tmp_path / "s.parquet", classes=["犬", "été", "chat", "bird", "unused"])
    assert (given.classes, given.labels, given.empty_classes) == (
        ["犬", "été", "chat", "bird", "unused"],
        [2, 1, 2, 0, 3],
        ["unused"],
    )
    _table(tmp_path, "d.parquet", {"image": [png(i) for i in range(5)], "label": pa.array(names).dictionary_encode()})
    assert ParquetImages(tmp_path / "d.parquet").labels == [1, 2, 1, 3, 0]


def test_unlabelled_rows_among_labelled_ones_are_left_out_with_one_warning(tmp_path):
    """A split partly labelled (some rows' label null or -1) was refused whole ('got -1 at row 1'); as the images a
    labels file does not name are left out of a flat folder (--labels), those rows are now left out, one warning
    saying how many, the other rows' items, names and labels as they were, over several files."""
    write_hf_parquet(tmp_path / "d-00000-of-00002.parquet", [png(i) for i in range(4)], [0, -1, 2, None], NAMES)
    write_hf_parquet(tmp_path / "d-00001-of-00002.parquet", [png(i) for i in range(4, 7)], [None, 1, 1], NAMES)
    source = ParquetImages(tmp_path)
    assert source.warnings == [
        "warning: 3 of the 7 rows of the parquet files have no 'label' (null or -1, unlabelled) and are left out "
        "(first d-00000-of-00002.parquet[1])"
    ]
    assert len(source) == 4 and source.labels == [0, 2, 1, 1] and source.unlabelled is None
    names = [source.relative_path(i) for i in range(4)]
    assert names == [
        "d-00000-of-00002.parquet[0]",
        "d-00000-of-00002.parquet[2]",
        "d-00001-of-00002.parquet[1]",
        "d-00001-of-00002.parquet[2]",
    ]
    assert [(source[i].label, _red(source, i)) for i in range(4)] == [(0, 0), (2, 2), (1, 5), (1, 6)]
    with pytest.raises(IndexError):
        source[4]
    (tmp_path / "named").mkdir()
    _table(tmp_path / "named", "s.parquet", {"image": [png(i) for i in range(3)], "label": ["dog", None, "cat"]})
    named = ParquetImages(tmp_path / "named" / "s.parquet")
    assert (named.classes, named.labels, len(named), _red(named, 1)) == (["cat", "dog"], [1, 0], 2, 2)
    assert named.warnings[0].startswith("warning: 1 of the 3 rows of the parquet files have no 'label' (null or -1")
    write_hf_parquet(tmp_path / "none.parquet", [png(i) for i in range(3)], [None, -1, None], NAMES)
    unlabelled = ParquetImages(tmp_path / "none.parquet")
    assert (unlabelled.labels, len(unlabelled), unlabelled.warnings) == (None, 3, [])
    assert unlabelled.unlabelled == "every 'label' of the parquet files is null or -1 (an unlabelled split)"


def test_image_caption_rows_read_from_a_glob_a_folder_or_a_list_of_shards_in_order(tmp_path):
    """ImageTextFolder took a .parquet file or a pattern ending so; a folder of a split's shards, or a list of them,
    was 'captions must be a ... .parquet file': now each is read in order, a shard left out of the split warned of."""
    from torchflava.data.readers import ImageTextFolder

    for shard in range(3):
        rows = range(2 * shard, 2 * shard + 2)
        _table(
            tmp_path,
            f"train-{shard:05d}-of-00003.parquet",
            {"image": [png(i) for i in rows], "caption": [f"shape {i}" for i in rows]},
        )
    files = sorted(str(path) for path in tmp_path.glob("*.parquet"))
    for captions in (str(tmp_path / "train-*.parquet"), tmp_path, files, tuple(files)):
        pairs = ImageTextFolder(None, captions)
        assert [pairs.caption(i) for i in range(len(pairs))] == [f"shape {i}" for i in range(6)], captions
        assert [pairs[i].image.getpixel((0, 0))[0] for i in range(6)] == list(range(6)) and pairs.warnings == []
    part = ImageTextFolder(None, [files[0], files[2]])
    assert len(part) == 4 and part.warnings == [
        f"warning: 2 of the 3 files {tmp_path}/train-*-of-00003.parquet given, their images read: 00001 absent"
    ]
    (tmp_path / "train-notes.txt").write_text("not parquet")
    with pytest.raises(ValueError, match=r"^captions: expected parquet files alone, got 1 other\(s\): .*notes.txt$"):
        ImageTextFolder(None, str(tmp_path / "train-*"))
    with pytest.raises(TypeError, match=r"^captions must be a path, or a non-empty list of parquet files' paths, got"):
        ImageTextFolder(None, [])


def test_a_dictionary_encoded_split_column_holds_its_splits(tmp_path):
    """A split column written from a pandas category (a dictionary of strings) was 'split is for files with a
    'split' column of strings, these have none' for split=[train], and read without split it held no split, so the
    recipes' refusal of every split (the test rows trained on) and zero_shot's warning were skipped: its splits are
    now those of a string column."""
    from torchflava.data.readers import ImageTextFolder

    split = pa.array(["train", "test", "train", "val"]).dictionary_encode()
    columns = {"image": [png(i) for i in range(4)], "caption": [f"shape {i}" for i in range(4)], "split": split}
    _table(tmp_path, "s.parquet", columns)
    every = ImageTextFolder(None, tmp_path / "s.parquet")
    assert (len(every), every.held_splits, every.splits) == (4, ("test", "train", "val"), None)
    train = ImageTextFolder(None, tmp_path / "s.parquet", split=["train"])
    assert [train.caption(i) for i in range(len(train))] == ["shape 0", "shape 2"]
    assert (train.held_splits, train.splits) == (("test", "train", "val"), ("test", "train", "val"))


def test_a_split_column_of_nulls_is_named_so_when_a_split_is_asked_of_it(tmp_path):
    """split=[train] of files whose split column is all null was 'expected splits of the files (), got ['train']'."""
    from torchflava.data.readers import CaptionsError, ImageTextFolder

    split = pa.array([None, None], pa.string())
    _table(tmp_path, "s.parquet", {"image": [png(0), png(1)], "caption": ["a", "b"], "split": split})
    assert ImageTextFolder(None, tmp_path / "s.parquet").held_splits == ()
    with pytest.raises(CaptionsError) as caught:
        ImageTextFolder(None, tmp_path / "s.parquet", split=["train"])
    assert (
        str(caught.value)
        == "split: expected splits of the files (none: every 'split' of the files is null), got ['train']"
    )
