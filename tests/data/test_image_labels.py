"""LabelledImageFolder: a flat image folder labelled by Kaggle's LOC_val_solution.csv or a two-column file."""

from PIL import Image
import pytest

from torchflava.data.image_labels import LabelledImageFolder
from torchflava.data.samples import BadSample


def _flat(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (4, 4), (10 * i, 0, 0)).save(root / name)
    return root


VAL = [f"ILSVRC2012_val_0000000{i}.JPEG" for i in range(1, 5)]


def test_kaggle_solution_labels_images_by_id_missing_ones_are_bad_samples_unlisted_ones_no_items(tmp_path):
    root = _flat(tmp_path / "val", VAL)
    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000002,n02119789 255 142 454 329 n02119789 44 21 322 295\n"
        "ILSVRC2012_val_00000001,n01440764 1 2 3 4\n"
        "ILSVRC2012_val_00000009,n01440764 1 1 1 1\n"
        "ILSVRC2012_val_00000003,n01440764 0 0 0 0 \n"
    )
    source = LabelledImageFolder(root, labels)
    assert source.format == "kaggle" and source.classes == ["n01440764", "n02119789"]
    assert [source.relative_path(i) for i in range(len(source))] == [*VAL[:3], "ILSVRC2012_val_00000009"]
    assert source.labels == [0, 1, 0, 0] and source.unlisted == [VAL[3]]
    assert source.missing == [f"ILSVRC2012_val_00000009: no such image under the folder ({labels} line 4)"]
    sample = source[1]
    assert sample.label == 1 and sample.image.getpixel((0, 0)) == (10, 0, 0)  # the second file's pixels
    with pytest.raises(BadSample, match="ILSVRC2012_val_00000009: no such image under the folder"):
        source[3]
    assert LabelledImageFolder(root, labels, ["n02119789", "x", "n01440764"]).labels == [2, 0, 2, 2]


def test_two_column_files_tab_or_comma_with_a_bom_quotes_and_paths_or_ids(tmp_path):
    root = _flat(tmp_path / "flat", ["a.png", "b.jpg", "c.png"])
    tabbed = tmp_path / "labels.tsv"
    tabbed.write_text("\ufeffa.png\tapple pie\n\nb\t cat \n./c.png\tapple pie\na.png\tapple pie\n", encoding="utf-8")
    source = LabelledImageFolder(root, tabbed)
    assert source.format == "two-column" and source.classes == ["apple pie", "cat"]
    assert source.labels == [0, 1, 0] and source.missing == [] and source.unlisted == []
    quoted = tmp_path / "labels.csv"
    quoted.write_text('a.png,"tench, Tinca tinca"\nb.jpg,cat\n')
    source = LabelledImageFolder(root, quoted)
    assert source.classes == ["cat", "tench, Tinca tinca"] and source.labels == [1, 0] and source.unlisted == ["c.png"]
    # a class as macOS or Linux writes its accent is one class (as ImageClassFolder's folders)
    quoted.write_text("a.png,cafe\u0301\nb.jpg,caf\u00e9\n")
    assert LabelledImageFolder(root, quoted).classes == ["caf\u00e9"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "holds no row"),
        ("ImageId,PredictionString\n", "holds no row under its header 'ImageId,PredictionString'"),
        (
            "a.png\n",
            "expected Kaggle's ImageId,PredictionString header or FILE<TAB>CLASS / FILE,CLASS lines, got line 1",
        ),
        ("a.png,cat\nb.png,cat,dog\n", "line 2: expected FILE,CLASS (quote a class holding a comma) as the first line"),
        ("a.png\tcat\nb.png\t\n", "line 2: expected FILE<TAB>CLASS as the first line, got 'b.png\\t'"),
        ("ImageId,PredictionString\na,\n", "line 2: expected ImageId,PredictionString (an image id, then its synset"),
        ("file,class\na.png,cat\n", "line 1 names no image of the folder, 'file': a header?"),
        ("a.png,cat\nb.png,dog\na,dog\n", "line 3 gives 'a' the class 'dog', line 1 gave it 'cat'"),
        ("x.png,cat\ny.png,dog\n", "names none of the 3 images of"),
        ("b,cat\n", "line 1: 'b' may be any of ['b.jpg', 'b.png']: name the file whole"),
    ],
)
def test_a_labels_file_of_no_known_shape_is_refused_naming_its_line(tmp_path, content, message):
    root = _flat(tmp_path / "flat", ["a.png", "b.jpg", "b.png"])
    labels = tmp_path / "labels.csv"
    labels.write_text(content)
    with pytest.raises(ValueError, match="^labels: ") as error:
        LabelledImageFolder(root, labels)
    assert message in str(error.value)


def test_classes_it_cannot_match_images_in_sub_folders_and_non_utf8_are_refused(tmp_path):
    root = _flat(tmp_path / "flat", ["a.png", "b.png"])
    labels = tmp_path / "labels.csv"
    labels.write_text("a.png,dog\nb.png,cow\n")
    with pytest.raises(
        ValueError, match=r"2 class\(es\) among none of the 2 classes: \['dog', 'cow'\] \(first at line 1\)"
    ):
        LabelledImageFolder(root, labels, ["cat", "bird"])
    assert LabelledImageFolder(root, labels, ["cat", "dog", "cow"], match=lambda name: len(name) - 2).labels == [1, 1]
    _flat(tmp_path / "flat" / "cat", ["c.png"])
    with pytest.raises(ValueError, match=r"^root: expected a flat folder of images beside a labels file, got 1 images"):
        LabelledImageFolder(root, labels)
    (tmp_path / "latin1.csv").write_bytes("a.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="^labels: expected a UTF-8 text file, got .*UnicodeDecodeError"):
        LabelledImageFolder(_flat(tmp_path / "flat2", ["a.png"]), tmp_path / "latin1.csv")


def test_a_first_row_naming_an_absent_image_by_its_id_is_skipped_not_taken_for_a_header(tmp_path):
    """A FILE<TAB>CLASS file naming images by id, beside a partly extracted folder that lacks its first image,
    was refused as having a header ("line 1 names no image of the folder ... a header?"), where an absent image
    later in the file is skipped and named. A header's class is written by no other row; an image's is."""
    root = _flat(tmp_path / "val", VAL[1:])
    labels = tmp_path / "val.tsv"
    labels.write_text("".join(f"{name[:-5]}\t{synset}\n" for name, synset in zip(VAL, ["n01", "n02", "n01", "n02"])))
    source = LabelledImageFolder(root, labels)
    assert [source.relative_path(i) for i in range(len(source))] == [*VAL[1:], "ILSVRC2012_val_00000001"]
    assert source.labels == [1, 0, 1, 0]
    assert source.missing == [f"ILSVRC2012_val_00000001: no such image under the folder ({labels} line 1)"]
    labels.write_text("image\tsynset\n" + labels.read_text())
    with pytest.raises(ValueError, match="line 1 names no image of the folder, 'image': a header?"):
        LabelledImageFolder(root, labels)
