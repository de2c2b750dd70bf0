"""WdsImages: image-classification samples of webdataset tar shards as CLIP_benchmark serves its datasets."""

import io
from pathlib import Path
import pickle
import tarfile
from typing import Optional, Sequence
import warnings

from PIL import Image
import pytest

from torchflava.data.samples import BadSample
from torchflava.data.wds import WdsCaptions, WdsError, WdsImages, is_tar_shards, shard_files


def encoded(value: int, kind: str = "webp", size: int = 4) -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (size, size), (value, 0, 0)).save(
        data, kind.upper(), **({"lossless": True} if kind == "webp" else {})
    )
    return data.getvalue()


def write_shard(path: Path, samples: Sequence[tuple[str, dict]]) -> None:
    """A tar of ``(key, {extension: bytes})`` samples, each sample's members next to each other, as webdataset's
    ShardWriter writes them."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_wds(
    root: Path,
    samples: Sequence[dict],
    *,
    split: str = "test",
    shards: int = 2,
    classes: Optional[Sequence[str]] = None,
    templates: Optional[Sequence[str]] = None,
) -> list[Path]:
    """``root`` laid out as a CLIP_benchmark webdataset dataset: ``split/0.tar``... (samples keyed ``s0000000``...,
    split evenly) and ``split/nshards.txt``, ``classnames.txt`` and ``zeroshot_classification_templates.txt`` at
    the root; returns the shards."""
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(samples) // shards)
    paths = []
    for shard in range(shards):
        keyed = [(f"s{i:07d}", samples[i]) for i in range(shard * step, min((shard + 1) * step, len(samples)))]
        write_shard(folder / f"{shard}.tar", keyed)
        paths.append(folder / f"{shard}.tar")
    (folder / "nshards.txt").write_text(f"{shards}\n")
    if classes is not None:
        (root / "classnames.txt").write_text("".join(f"{name}\n" for name in classes))
    if templates is not None:
        (root / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in templates))
    return paths


NAMES = ["cat", "dog", "bird"]


@pytest.fixture
def dataset(tmp_path):
    """wds_tiny/test/{0,1,2}.tar: 7 samples; s0000002 lacks its .cls, s0000004 its image, s0000005's image is not
    one; a train/ split beside."""
    samples = [{"webp": encoded(10 * i), "cls": f"{i % 3}".encode()} for i in range(7)]
    samples[1] = {"jpg": encoded(10, "jpeg"), "cls": b"1\n"}  # (the id as text, a newline after it)
    del samples[2]["cls"]
    del samples[4]["webp"]
    samples[5]["webp"] = b"not an image"
    root = tmp_path / "wds_tiny"
    write_wds(root, samples, shards=3, classes=NAMES, templates=["a photo of a {c}."])
    write_wds(root, samples[:2], split="train", shards=1)
    return root


def test_a_dataset_root_takes_its_test_split_with_the_classnames_and_reads_each_sample(dataset):
    images = WdsImages(dataset)
    assert images.taken == [f"the test/ split of {dataset} taken (beside train/)"]
    assert images.files == [str(dataset / "test" / f"{i}.tar") for i in range(3)]
    assert images.classes == NAMES and images.root == str(dataset) and images.warnings == []
    assert [images.relative_path(i) for i in range(len(images))] == [f"{i // 3}.tar:s{i:07d}" for i in range(7)]
    assert images.labels == [0, 1, None, 0, 1, 2, 0]
    for index in (0, 1, 3, 6):
        sample = images[index]
        assert sample.image.mode == "RGB" and sample.image.getpixel((0, 0)) == (10 * index, 0, 0)
        assert sample.label == images.labels[index] and sample.text is None
    for index, reason in [
        (2, "0.tar:s0000002: no .cls member"),
        (4, "1.tar:s0000004: no image member"),
        (5, "1.tar:s0000005: unreadable image"),
    ]:
        with pytest.raises(BadSample) as bad:
            images[index]
        assert bad.value.index == index and bad.value.reason.startswith(reason)
    assert pickle.loads(pickle.dumps(images))[6].label == 0  # (to DataLoader workers)
    # the split folder, a glob, a brace pattern and the files themselves name the same samples
    for value in (dataset / "test", f"{dataset}/test/*.tar", f"{dataset}/test/{{0..2}}.tar"):
        assert WdsImages(value).files == images.files and WdsImages(value).labels == images.labels
    assert WdsImages([str(p) for p in images.files]).taken == []
    assert all(is_tar_shards(v) for v in (dataset, dataset / "test", f"{dataset}/test/{{0..2}}.tar"))
    assert not is_tar_shards(dataset / "test" / "nshards.txt") and not is_tar_shards(dataset.parent / "none")


def test_shards_numbered_past_nine_come_in_their_number_order(tmp_path):
    write_wds(tmp_path, [{"png": encoded(i, "png"), "cls": b"0"} for i in range(11)], shards=11)
    assert [Path(f).name for f in shard_files(tmp_path / "test").files] == [f"{i}.tar" for i in range(11)]
    names = [WdsImages(tmp_path / "test", classes=["a"]).relative_path(i) for i in (9, 10)]
    assert names == ["9.tar:s0000009", "10.tar:s0000010"]


def test_bad_datasets_are_refused_in_one_line_naming_the_argument(dataset, tmp_path):
    cases = [
        (
            dataset,
            {"classes": ["cat", "dog"]},
            "classes: expected a name for each class id of the shards, got 2 names ",
        ),
        (tmp_path / "none", {}, "paths: expected .tar shards"),
        (f"{dataset}/test/{{0..3}}.tar", {}, f"paths: '{dataset}/test/3.tar' is not a file (of the pattern"),
    ]
    (tmp_path / "only_train").mkdir()
    write_wds(tmp_path / "only_train", [{"png": encoded(1, "png"), "cls": b"0"}], split="train", shards=1)
    write_wds(tmp_path / "only_train", [{"png": encoded(1, "png"), "cls": b"0"}], split="val", shards=1)
    cases.append((tmp_path / "only_train", {}, "holds the splits train/, val/ and no test/: give one, e.g. "))
    write_wds(tmp_path / "words", [{"png": encoded(1, "png"), "cls": b"cat"}], shards=1)
    cases.append((tmp_path / "words" / "test", {}, "paths: expected a class id (an integer) in 0.tar:s0000000's .cls"))
    write_wds(tmp_path / "coco", [{"webp": encoded(1), "txt": b"a cat\na dog"}], shards=1)
    (tmp_path / "coco" / "dataset_type.txt").write_text("retrieval\n")
    cases.append((tmp_path / "coco", {}, "dataset_type.txt says 'retrieval': its samples hold no .cls class id"))
    write_wds(tmp_path / "gap", [{"png": encoded(1, "png"), "cls": b"0"}], shards=1, classes=["a", "", "b"])
    cases.append((tmp_path / "gap", {}, "classnames.txt: line 2 is blank (expected one entry a line)"))
    (tmp_path / "text.tar").write_text("not a tar")
    cases.append(
        (tmp_path / "text.tar", {}, f"paths: must be uncompressed tar files, '{tmp_path / 'text.tar'}' is not one")
    )
    for value, kwargs, message in cases:
        with pytest.raises(WdsError) as error:
            WdsImages(value, **kwargs)
        assert message in str(error.value) and "\n" not in str(error.value), (value, str(error.value))
    ids = WdsImages(dataset, classes=["cat", "dog", "bird", "fish"])
    assert ids.classes[3] == "fish" and ids.empty_classes == ["fish"]


def test_a_download_missing_shards_that_nshards_counts_is_warned_of(dataset):
    (dataset / "test" / "2.tar").unlink()
    images = WdsImages(dataset / "test")
    assert images.warnings == [
        f"warning: 2 of the 3 shards nshards.txt counts in {dataset / 'test'} given, their images read: 2.tar absent"
    ]
    assert len(images) == 6


def test_a_truncated_shard_is_one_of_the_readers_warning_lines(dataset):
    """A download cut short in its last shard: the lost tail is said in one `warning:` line among the reader's
    warnings, which the commands print; it came as Python's UserWarning, two lines naming wds.py and its source."""
    shard = dataset / "test" / "2.tar"
    shard.write_bytes(shard.read_bytes()[:700])  # (into the first member's data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (none escapes)
        images = WdsImages(dataset / "test")
    assert len(images.warnings) == 1 and images.warnings[0].startswith(
        f"warning: {shard.name} is truncated: the file ends at byte 700"
    )
    assert images.warnings[0].count("\n") == 0


def test_a_retrieval_datasets_samples_give_a_caption_an_item_each_line_of_their_txt(tmp_path):
    """wds_mscoco_captions' samples: an image and a .txt of its five captions, one a line; a sample without a .txt
    and a blank line among the captions are one bad item each, named."""
    samples = [
        {"webp": encoded(10), "txt": b"a red square\r\nthe red one\n"},
        {"webp": encoded(20)},
        {"webp": encoded(30), "txt": "a café\n\n  dark  \n".encode()},
    ]
    write_wds(tmp_path / "coco", samples, shards=1)
    (tmp_path / "coco" / "dataset_type.txt").write_text("retrieval\n")
    captions = WdsCaptions(tmp_path / "coco")
    assert captions.dataset_type == "retrieval" and len(captions) == 6
    assert [captions.caption(i) for i in (0, 1, 3, 5)] == ["a red square", "the red one", "a café", "dark"]
    assert [captions.image_path(i) for i in (0, 1, 3, 5)] == ["0.tar:s0000000"] * 2 + ["0.tar:s0000002"] * 2
    assert captions[5].image.getpixel((0, 0)) == (30, 0, 0) and captions[5].text == "dark"
    for index, reason in [(2, "0.tar:s0000001: no .txt member"), (4, "0.tar:s0000002: caption line 2 is blank")]:
        for read in (captions.caption, captions.image_path, captions.__getitem__):
            with pytest.raises(BadSample) as bad:
                read(index)
            assert bad.value.index == index and bad.value.reason.startswith(reason)
    with pytest.raises(WdsError, match="dataset_type.txt says 'retrieval': its samples hold no .cls class id"):
        WdsImages(tmp_path / "coco")


def test_an_image_folder_holding_a_tar_file_is_no_tar_shards(tmp_path):
    """A folder of images or of class sub-folders of images stays an image folder where a .tar file lies among them
    (the archive it was unpacked from, at its top or in a class folder): it was taken for tar shards (a folder of them,
    or a dataset root whose class folders were its splits), and the images refused."""
    for name in ("cat", "dog"):
        (tmp_path / "classes" / name).mkdir(parents=True)
        (tmp_path / "classes" / name / "0.png").write_bytes(encoded(1, "png"))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "0.jpg").write_bytes(encoded(1, "jpeg"))
    write_shard(tmp_path / "classes" / "cat" / "backup.tar", [("s0", {"png": encoded(1, "png"), "cls": b"0"})])
    assert not is_tar_shards(tmp_path / "classes")
    write_shard(tmp_path / "classes" / "images.tar", [("s0", {"png": encoded(1, "png"), "cls": b"0"})])
    write_shard(tmp_path / "flat" / "images.tar", [("s0", {"png": encoded(1, "png"), "cls": b"0"})])
    assert not is_tar_shards(tmp_path / "classes") and not is_tar_shards(tmp_path / "flat")
    write_wds(tmp_path / "wds", [{"png": encoded(1, "png"), "cls": b"0"}], shards=1)  # (its shards still are)
    assert is_tar_shards(tmp_path / "wds") and is_tar_shards(tmp_path / "wds" / "test")


def test_a_bom_before_dataset_type_and_nshards_is_no_part_of_them(tmp_path):
    """dataset_type.txt and nshards.txt saved with a BOM (as classnames.txt may be, and is read): 'retrieval' read
    as '\\ufeffretrieval' refused the captions (and named a BOM'd type), and a count read as no number lost the warning
    of absent shards."""
    write_wds(tmp_path / "coco", [{"webp": encoded(1), "txt": b"a cat\na dog"}] * 2, shards=2)
    (tmp_path / "coco" / "dataset_type.txt").write_text("\ufeffretrieval\r\n", encoding="utf-8")
    (tmp_path / "coco" / "test" / "nshards.txt").write_text("\ufeff3\r\n", encoding="utf-8")
    captions = WdsCaptions(tmp_path / "coco")
    assert captions.dataset_type == "retrieval" and [captions.caption(i) for i in range(4)] == ["a cat", "a dog"] * 2
    assert captions.warnings == [
        f"warning: 2 of the 3 shards nshards.txt counts in {tmp_path / 'coco' / 'test'} given, their images read: "
        "2.tar absent"
    ]
