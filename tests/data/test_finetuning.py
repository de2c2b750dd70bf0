"""Fine-tuning sources: class folders keep their ids whatever files each split holds."""

import io
import re

from PIL import Image
import pytest
import torch

from torchflava.data.finetuning import ImageClassFolder, empty_classes_warning


def test_class_ids_do_not_shift_when_a_class_folder_is_empty(tmp_path):
    for split in ("train", "val"):
        for name in ("cat", "dog", "fox"):
            (tmp_path / split / name).mkdir(parents=True)
            if not (split == "val" and name == "dog"):  # val/dog exists, without images
                Image.new("RGB", (4, 4)).save(tmp_path / split / name / "x.png")
    (tmp_path / "val" / ".hidden").mkdir()  # not a class
    train, val = ImageClassFolder(tmp_path / "train"), ImageClassFolder(tmp_path / "val")
    assert train.classes == val.classes == ["cat", "dog", "fox"]
    assert [val[i].label for i in range(len(val))] == [0, 2]  # fox keeps id 2
    with pytest.raises(ValueError, match=r"folders \['fox'\] are not among the classes"):
        ImageClassFolder(tmp_path / "val", ["cat", "dog"])
    assert (train.empty_classes, val.empty_classes) == ([], ["dog"])
    assert ImageClassFolder(tmp_path / "train", ["cat", "dog", "fox", "owl"]).empty_classes == ["owl"]  # named only
    assert empty_classes_warning(train, "data.train") is None
    assert empty_classes_warning(val, "data.val") == (
        "warning: data.val: 1 class(es) without an image, kept as classes (an output of the classifier, counted in "
        "chance): 'dog'"
    )


def test_synset_folders_warning_only_where_every_folder_is_a_wordnet_id():
    from torchflava.data.finetuning import synset_folders_warning

    folders = ["n01440764", "n01443537", "n01484850", "n01491361"]
    warning = synset_folders_warning(folders, "data.class_names")
    assert warning.startswith(
        "warning: data.class_names: null, so the class names are the folders' WordNet synset ids (n01440764, "
        'n01443537, n01484850, ...) and the prompts read "a photo of a n01440764."'
    )
    for other in (["n01440764", "goldfish"], ["cat", "dog"], ["n0144076"], ["n014407641"], []):
        assert synset_folders_warning(other, "data.class_names") is None, other


def test_glue_tsv_reads_a_byte_order_mark_and_refuses_non_finite_targets_and_other_encodings(tmp_path):
    from torchflava.data.finetuning import GlueTsv

    path = tmp_path / "stsb.tsv"
    path.write_bytes("\ufeffsentence1\tsentence2\tscore\na\tb\t3.5\n".encode("utf-8"))  # a BOM, as Excel writes
    assert GlueTsv(path, ["sentence1", "sentence2"], "score")[0].label == 3.5
    for bad in ("nan", "inf", "-inf", "three", "1_000"):  # (float reads "1_000" as 1000.0)
        path.write_text(f"sentence1\tsentence2\tscore\na\tb\t{bad}\n")
        match = rf"stsb.tsv: column 'score' row 0: expected a finite number \(a regression\), got '{bad}' \(line 2\)$"
        with pytest.raises(ValueError, match=match):
            GlueTsv(path, ["sentence1", "sentence2"], "score")
    path.write_bytes(b"sentence1\tsentence2\tscore\n\xe9t\xe9\tb\t1.0\n")  # latin-1
    with pytest.raises(ValueError, match=r"^expected a readable UTF-8 TSV file, got '.*stsb.tsv' \(invalid"):
        GlueTsv(path, ["sentence1", "sentence2"], "score")


@pytest.mark.parametrize(
    "lines, match",
    [
        ([{"image": "a.png", "text": "q", "answers": {"yes": "high"}}], "answer score 'high' is not a number in"),
        ([{"image": "a.png", "text": "q", "answers": {"yes": None}}], "answer score None is not a number in"),
        ([{"image": "a.png", "text": "q", "answers": ["yes"]}], "'answers' must be an object"),
        ([{"image": 5, "text": "q", "label": "yes"}], "'image' must be a path relative to root, got 5"),
        (
            [{"image": "a.png", "text": "q", "label": "yes"}, {"image": "a.png", "text": "q", "answers": {"no": 1}}],
            "'label' on every line or 'answers' on every line",  # was an error inside torch's collation
        ),
        (  # every answer outside the labels (YAML's yes/no as True/False): every target zero, silently
            [{"image": "a.png", "text": "q", "answers": {"maybe": 1.0}}] * 2,
            r"expected answers among the labels \['yes', 'no'\], got none on any line",
        ),
    ],
)
def test_image_text_labels_refuse_malformed_lines_naming_them(tmp_path, lines, match):
    import json

    from torchflava.data.finetuning import ImageTextLabels

    path = tmp_path / "vqa.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(ValueError, match=match):
        ImageTextLabels(tmp_path, path, ["yes", "no"])
    path.write_bytes(b'{"image": "a.png", "text": "caf\xe9", "label": "yes"}\n')
    with pytest.raises(ValueError, match="vqa.jsonl is not UTF-8 text"):
        ImageTextLabels(tmp_path, path, ["yes", "no"])


def test_a_hidden_folder_holding_an_image_is_no_class(tmp_path):
    """train/.thumbnails/x.png made '.thumbnails' class 0 in train only: every id shifted against val."""
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / name / "x.png")
    (tmp_path / "train" / ".thumbnails").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / ".thumbnails" / "x.png")
    train, val = ImageClassFolder(tmp_path / "train"), ImageClassFolder(tmp_path / "val")
    assert train.classes == val.classes == ["cat", "dog"]
    assert len(train) == 2 and [train[i].label for i in range(2)] == [val[i].label for i in range(2)] == [0, 1]


def test_glue_tsv_names_the_files_own_line_and_a_field_too_long_for_csv(tmp_path):
    from torchflava.data.finetuning import GlueTsv

    path = tmp_path / "blank.tsv"
    path.write_text("sentence\tlabel\na\t0\n\n\nb\t7\n")  # blank lines: the bad label is on line 5
    with pytest.raises(
        ValueError,
        match=r"blank.tsv: column 'label' row 1: expected one of the class names \['0', '1'\], got '7' \(line 5\)$",
    ):
        GlueTsv(path, ["sentence"], "label", ["0", "1"])
    path.write_text("sentence\tlabel\na\t0\n" + "x" * 200_000 + "\t1\n")
    with pytest.raises(ValueError, match=r"blank.tsv line 3: field larger than field limit"):  # was _csv.Error
        GlueTsv(path, ["sentence"], "label", ["0", "1"])


def test_classification_batches_keep_float_targets_and_refuse_mixed_layouts():
    """Labels [0, 1.5] became [0, 1] (the first label's type decided); a first sample without an image
    dropped every other row's image."""
    from torchflava.data.finetuning import ClassificationCollator, LabeledSample

    collator = ClassificationCollator(None, image_size=8)
    batch = collator("train", [LabeledSample(None, None, 0), LabeledSample(None, None, 1.5)], [0, 1])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [0.0, 1.5]
    image = Image.new("RGB", (8, 8))
    with pytest.raises(
        ValueError, match=r"expected a image field in every sample of a batch or in none, got \[False, True\]"
    ):
        collator("train", [LabeledSample(None, None, 0), LabeledSample(image, None, 1)], [0, 1])


def test_classification_collator_refuses_text_without_a_tokenizer_and_bad_settings():
    """tokenizer=None with text samples failed with "'NoneType' object is not callable"."""
    from torchflava.data.finetuning import ClassificationCollator, LabeledSample

    collator = ClassificationCollator(None, image_size=8)
    with pytest.raises(
        ValueError, match="samples have text but this ClassificationCollator was built with tokenizer=None"
    ):
        collator("train", [LabeledSample(None, "a caption", 0)], [0])
    with pytest.raises(TypeError, match="tokenizer must be a tokenizer .callable. or None, got str"):
        ClassificationCollator("vocab.txt", image_size=8)
    with pytest.raises(ValueError, match="max_text_length must be >= 2, got 1"):  # [CLS] and [SEP]
        ClassificationCollator(None, image_size=8, max_text_length=1)
    ClassificationCollator(None, image_size=8, max_text_length=None)  # the tokenizer's own limit


def test_the_crop_box_is_never_empty():
    from torchflava.data.transforms import RandomCropTransform

    crop = RandomCropTransform(8, scale=(0.08, 0.5), ratio=(3.0, 4.0))
    for height in range(1, 12):
        for width in range(1, 12):
            for seed in range(5):
                top, left, h, w = crop.crop_box(height, width, seed)
                assert h >= 1 and w >= 1 and top + h <= height and left + w <= width, (height, width, seed)


@pytest.mark.parametrize(
    "labels, error, message",
    [
        (["pos", "pos", "neg"], ValueError, r"labels must name each label once, got \['pos'\] more than once"),
        ("posneg", TypeError, "labels must be a list of label names, got str 'posneg'"),
        (5, TypeError, "labels must be a list of label names, got int 5"),
        ([], ValueError, "labels must name at least one label, got none"),
    ],
)
def test_glue_tsv_label_names_are_a_list_naming_each_label_once(tmp_path, labels, error, message):
    """["pos", "pos", "neg"] gave the ids [0, 2]: id 1 named no class."""
    from torchflava.data.finetuning import GlueTsv

    path = tmp_path / "sst.tsv"
    path.write_text("sentence\tlabel\nhello\tpos\nbye\tneg\n")
    assert [item.label for item in GlueTsv(path, ["sentence"], "label", ["pos", "neg"])] == [0, 1]
    with pytest.raises(error, match=f"^{message}$"):
        GlueTsv(path, ["sentence"], "label", labels)


def test_glue_tsv_refuses_the_label_as_input_repeated_columns_and_paths_that_are_no_path(tmp_path):
    """The label column given as the text was the model's input; a header naming "label" twice read the last."""
    from torchflava.data.finetuning import GlueTsv

    path = tmp_path / "sst.tsv"
    path.write_text("sentence\tlabel\nhello\tpos\n")
    with pytest.raises(ValueError, match=r"^text_columns must not hold the label_column 'label', got \['label'\]$"):
        GlueTsv(path, ["label"], "label", ["pos"])
    with pytest.raises(
        ValueError, match=r"^text_columns must name each column once, got \['sentence'\] more than once$"
    ):
        GlueTsv(path, ["sentence", "sentence"], "label", ["pos"])
    with pytest.raises(TypeError, match="^text_columns must be a list of column names, got int 5$"):
        GlueTsv(path, 5, "label", ["pos"])
    with pytest.raises(TypeError, match="^path must be a str or os.PathLike path, got int$"):
        GlueTsv(5, ["sentence"], "label", ["pos"])
    with pytest.raises(FileNotFoundError, match="^path must be an existing file, got .*nowhere.tsv'$"):
        GlueTsv(tmp_path / "nowhere.tsv", ["sentence"], "label", ["pos"])
    path.write_text("sentence\tlabel\tlabel\nhello\t1\t2\n")
    with pytest.raises(ValueError, match=r"sst.tsv: the header names column\(s\) \['label'\] more than once$"):
        GlueTsv(path, ["sentence"], "label")
    path.write_text("sentence\tsentence\tlabel\nhello\tbye\t1\n")  # a text column too
    with pytest.raises(ValueError, match=r"sst.tsv: the header names column\(s\) \['sentence'\] more than once$"):
        GlueTsv(path, ["sentence"], "label")
    path.write_text("sentence\tx\tx\tlabel\nhello\t\t\t1\n")  # a column not read may repeat its name
    assert GlueTsv(path, ["sentence"], "label")[0] == (None, "hello", 1.0)


def test_class_folder_names_are_a_list_naming_each_class_once(tmp_path):
    """["a", "a", "b"] gave labels 0 and 2 and 3 classes; "ab" was read as the classes "a" and "b"."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "x.png")
    folder = ImageClassFolder(tmp_path, ("b", "a"))
    assert folder.classes == ["b", "a"] and [folder[i].label for i in range(2)] == [1, 0]
    with pytest.raises(ValueError, match=r"^classes must name each class once, got \['a'\] more than once$"):
        ImageClassFolder(tmp_path, ["a", "a", "b"])
    with pytest.raises(TypeError, match="^classes must be a list of class names, got str 'ab'$"):
        ImageClassFolder(tmp_path, "ab")
    with pytest.raises(ValueError, match="^classes must name at least one class, got none$"):
        ImageClassFolder(tmp_path, [])


def test_image_text_labels_refuse_repeated_or_str_labels_and_a_path_that_is_no_file(tmp_path):
    """["no", "yes", "yes"] scored "yes" under id 1 and left id 2 at 0; "yes" was read letter by letter
    (every target 0); a missing path raised a bare Errno error."""
    import json

    from torchflava.data.finetuning import ImageTextLabels

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    path = tmp_path / "vqa.jsonl"
    path.write_text(json.dumps({"image": "a.png", "text": "q", "answers": {"yes": 1.0}}) + "\n")
    assert ImageTextLabels(tmp_path, path, ["no", "yes"])[0].label.tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match=r"^labels must name each label once, got \['yes'\] more than once$"):
        ImageTextLabels(tmp_path, path, ["no", "yes", "yes"])
    with pytest.raises(TypeError, match="^labels must be a list of label names, got str 'yes'$"):
        ImageTextLabels(tmp_path, path, "yes")
    with pytest.raises(FileNotFoundError, match="^path must be an existing file, got .*nowhere.jsonl'$"):
        ImageTextLabels(tmp_path, tmp_path / "nowhere.jsonl", ["yes"])
    with pytest.raises(FileNotFoundError, match=f"^path must be an existing file, got '{tmp_path}'$"):
        ImageTextLabels(tmp_path, tmp_path, ["yes"])


@pytest.mark.parametrize(
    "labels, error, message",
    [
        ([float("nan"), 1.0], ValueError, r"samples\[0\].label must be finite, got nan"),
        ([0.5, float("inf")], ValueError, r"samples\[1\].label must be finite, got inf"),
        ([1, -3], ValueError, r"samples\[1\].label must be a class id >= 0, got -3"),
        (
            [1, torch.zeros(3)],
            ValueError,
            r"samples: expected score tensors for every label of a batch or for none, got \['int', 'Tensor'\]",
        ),
        (
            [torch.zeros(3), torch.zeros(4)],
            ValueError,
            r"samples\[1\].label must be a 1-D score tensor of the shape of samples\[0\]'s \(3,\), got shape \(4,\)",
        ),
        (
            [torch.tensor(2)],
            ValueError,
            r"samples\[0\].label must be a 1-D score tensor or a class id \(int, e.g. tensor.item\(\)\), "
            r"got a 0-D tensor of shape \(\)",
        ),
        (
            [torch.tensor([0.0, float("nan")])],
            ValueError,
            r"samples\[0\].label must hold finite scores, got \[0.0, nan\]",
        ),
        (
            [1, "cat"],
            TypeError,
            r"samples\[1\].label must be a class id \(int\), a target \(float\) or a score tensor, got str 'cat'",
        ),
        (
            [True],
            TypeError,
            r"samples\[0\].label must be a class id \(int\), a target \(float\) or a score tensor, got bool True",
        ),
    ],
)
def test_classification_labels_are_checked(labels, error, message):
    """A NaN target and a class id of -3 passed into the batch; int and tensor labels mixed raised a
    TypeError from inside torch."""
    from torchflava.data.finetuning import ClassificationCollator, LabeledSample

    collator = ClassificationCollator(None, image_size=8)
    with pytest.raises(error, match=f"^{message}$"):
        collator("train", [LabeledSample(None, None, label) for label in labels], [0] * len(labels))


def test_classification_batches_of_each_label_kind_and_none_refused():
    from torchflava.data.finetuning import ClassificationCollator, LabeledSample

    collator = ClassificationCollator(None, image_size=8)
    collate = lambda labels: collator("train", [LabeledSample(None, None, x) for x in labels], [0] * len(labels))  # noqa: E731
    ids = collate([2, 0])["labels"]
    assert ids.dtype == torch.long and ids.tolist() == [2, 0]
    targets = collate([-1.5, 2])["labels"]  # regression targets may be negative
    assert targets.dtype == torch.float32 and targets.tolist() == [-1.5, 2.0]
    numpy = pytest.importorskip("numpy")  # labels read from an array: numpy scalars, as Python's numbers
    ids = collate([numpy.int64(2), numpy.int32(0)])["labels"]
    assert ids.dtype == torch.long and ids.tolist() == [2, 0]
    targets = collate([numpy.float32(-1.5), numpy.int64(2)])["labels"]
    assert targets.dtype == torch.float32 and targets.tolist() == [-1.5, 2.0]
    scores = collate([torch.tensor([0.0, 1.0]), torch.tensor([0.3, 0.0])])["labels"]
    assert torch.equal(scores, torch.tensor([[0.0, 1.0], [0.3, 0.0]]))
    with pytest.raises(ValueError, match="^samples: expected at least one sample, got none$"):  # was IndexError
        collator("train", [], [])


def test_glue_tsv_reads_a_file_without_a_header_row_by_its_columns(tmp_path):
    """CoLA's train.tsv and dev.tsv have no header: their first row was read as one, and refused as
    "missing column(s)" without saying why."""
    from torchflava.data.finetuning import GlueTsv

    cola, columns = tmp_path / "cola.tsv", ["source", "label", "original_label", "sentence"]
    cola.write_text('gj04\t1\t\tThe dog "barked.\ngj04\t0\t*\tDog the barked.\n')  # a lone quote is a character
    source = GlueTsv(cola, ["sentence"], "label", ["0", "1"], columns=columns)
    assert [source[i] for i in range(len(source))] == [(None, 'The dog "barked.', 1), (None, "Dog the barked.", 0)]
    with pytest.raises(
        ValueError,
        match=r"cola.tsv: missing column\(s\) \['sentence', 'label'\]; the header has \['gj04', '1', '', 'The dog "
        r"\"barked.'\]; line 1 reads as data: a file without a header row needs its columns named$",
    ):
        GlueTsv(cola, ["sentence"], "label", ["0", "1"])
    with pytest.raises(
        ValueError,
        match=r"^columns must hold the text and label columns, \['label'\] are not among \['source', 'sentence'\]$",
    ):
        GlueTsv(cola, ["sentence"], "label", ["0", "1"], columns=["source", "sentence"])
    with pytest.raises(TypeError, match="^columns must be a list of column names, got str 'sentence'$"):
        GlueTsv(cola, ["sentence"], "label", ["0", "1"], columns="sentence")
    sst = tmp_path / "sst.tsv"
    sst.write_text("sentence\tlabel\nhello\t1\n")
    with pytest.raises(
        ValueError,
        match=r"sst.tsv line 1: \['sentence', 'label'\] is a header row; columns name the columns of a file without one$",
    ):
        GlueTsv(sst, ["sentence"], "label", ["0", "1"], columns=["sentence", "label"])
    with pytest.raises(
        ValueError, match=r"sst.tsv: missing column\(s\) \['text'\]; the header has \['sentence', 'label'\]$"
    ):
        GlueTsv(sst, ["text"], "label", ["0", "1"])  # a header that reads as one: no word of data


def test_glue_tsv_rows_of_another_width_are_unusable_items_naming_their_line(tmp_path):
    """QQP's train.tsv has rows missing fields: the first of them refused the whole file ("label None
    is not one of ['0', '1']"); a row split by a stray tab misplaced its label."""
    from torchflava.data.finetuning import GlueTsv
    from torchflava.data.samples import BadSample, unusable_start

    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    path = tmp_path / "qqp.tsv"
    path.write_text(
        header + "1\t1\t2\tWhy?\tHow?\t0\n2\t3\t4\tWhat is it?\n\n3\t5\t6\ta\tb\tc\t1\n4\t7\t8\tWho?\tWhom?\t1\n"
    )
    qqp = GlueTsv(path, ["question1", "question2"], "is_duplicate", ["0", "1"])
    assert len(qqp) == 4 and (qqp[0], qqp[3]) == ((None, ("Why?", "How?"), 0), (None, ("Who?", "Whom?"), 1))
    columns = r"\['id', 'qid1', 'qid2', 'question1', 'question2', 'is_duplicate'\]"
    with pytest.raises(
        BadSample, match=rf"^sample 1: .*qqp.tsv line 3: expected 6 fields, got 4 \(the columns {columns}\)$"
    ):
        qqp[1]
    with pytest.raises(
        BadSample, match=rf"^sample 2: .*qqp.tsv line 5: expected 6 fields, got 7 \(the columns {columns}\)$"
    ):
        qqp[2]  # (after a blank line, which is no row)
    path.write_text(header + "1\t2\n")
    fault = unusable_start(GlueTsv(path, ["question1", "question2"], "is_duplicate", ["0", "1"]))
    assert fault.startswith("none of its 1 items reads; the first: sample 0: ") and "got 2 (the columns" in fault


def test_a_line_nested_too_deeply_is_refused_naming_it(tmp_path):
    from torchflava.data.finetuning import ImageTextLabels

    path = tmp_path / "vqa.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")  # json.loads: RecursionError
    with pytest.raises(
        ValueError,
        match=r"vqa.jsonl line 1: needs 'image' \(or 'img'\) and 'text', or SNLI-VE's 'Flickr30K_ID' and 'sentence2' \(maximum recursion depth",
    ):
        ImageTextLabels(tmp_path, path, ["yes", "no"])


def test_label_and_class_names_must_be_strings_as_files_hold_them(tmp_path):
    """With int names, a JSON label true or 1.0 was the class 1 (True == 1.0 == 1), an answer (a JSON
    key, a str) matched none (every score 0) and a TSV label (a str) no name (each row refused)."""
    import json

    from torchflava.data.finetuning import GlueTsv, ImageTextLabels

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    path = tmp_path / "memes.jsonl"
    path.write_text(json.dumps({"image": "a.png", "text": "q", "label": True}) + "\n")
    with pytest.raises(TypeError, match=r"^labels must hold label names \(str\), got int 0 at position 0$"):
        ImageTextLabels(tmp_path, path, [0, 1])
    with pytest.raises(ValueError, match=r"memes.jsonl line 1: label True is not one of \['0', '1'\]$"):
        ImageTextLabels(tmp_path, path, ["0", "1"])
    path.write_text(json.dumps({"image": "a.png", "text": "q", "answers": {"1": 1.0}}) + "\n")
    assert ImageTextLabels(tmp_path, path, ["0", "1"])[0].label.tolist() == [0.0, 1.0]
    with pytest.raises(TypeError, match=r"^labels must hold label names \(str\), got float 1.0 at position 1$"):
        ImageTextLabels(tmp_path, path, ["0", 1.0])
    tsv = tmp_path / "sst.tsv"
    tsv.write_text("sentence\tlabel\nhello\t1\n")
    with pytest.raises(TypeError, match=r"^labels must hold label names \(str\), got int 1 at position 1$"):
        GlueTsv(tsv, ["sentence"], "label", ["0", 1])
    with pytest.raises(TypeError, match=r"^classes must hold class names \(str\), got NoneType None at position 0$"):
        ImageClassFolder(tmp_path, [None])
    with pytest.raises(TypeError, match=r"^text_columns must hold column names \(str\), got int 0 at position 0$"):
        GlueTsv(tsv, [0], "label")


def test_classification_collator_uses_the_image_transform_given():
    """The fine-tuning batches took EvalImageTransform whatever the checkpoint's preprocessing stated."""
    from transformers import FlavaImageProcessor

    from torchflava.data.finetuning import ClassificationCollator, LabeledSample
    from torchflava.data.transforms import ImageTransform, ImageTransformSpec

    size = {"height": 8, "width": 8}
    processor = FlavaImageProcessor(size=size, crop_size=size, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    spec = ImageTransformSpec.from_preprocessor_config(processor.to_dict())
    image = Image.effect_mandelbrot((13, 10), (-2, -1, 1, 1), 50).convert("RGB")
    batch = ClassificationCollator(None, image_size=8, image_transform=ImageTransform(spec))(
        "train", [LabeledSample(image, None, 0)], [0]
    )
    expected = processor(images=image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(batch["image"], expected, atol=1e-6, rtol=0)
    default = ClassificationCollator(None, image_size=8)("train", [LabeledSample(image, None, 0)], [0])
    assert (default["image"] - expected).abs().max() > 0.1  # (CLIP's mean and std, bilinear short side)
    with pytest.raises(ValueError, match=r"^image_transform must give 16 x 16 images \(image_size\), got output"):
        ClassificationCollator(None, image_size=16, image_transform=ImageTransform(spec))
    with pytest.raises(TypeError, match="^image_transform must be an ImageTransform or None, got function$"):
        ClassificationCollator(None, image_size=8, image_transform=lambda image: image)


def test_glue_sentence_pairs_batch_as_bert_tokenizer_fast_encodes_text_with_text_pair(tmp_path):
    """A pair was one text joined by " [SEP] ": every token type 0, and a long pair cut at the end of the
    second sentence (not longest first). Single texts keep their batch (no token types) and ids."""
    from transformers import BertTokenizerFast

    from torchflava.data.finetuning import ClassificationCollator, GlueTsv, LabeledSample
    from torchflava.data.tokenizer import WordPieceTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "is", "it", "red", "?", "the", "ball", "a", "very", "big"]
    (tmp_path / "vocab.txt").write_text("".join(f"{w}\n" for w in words))
    hf = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    rows = [("is it red ?", "the ball is red"), ("is it a very very very big ball ?", "it is"), ("red", "a ball")]
    (tmp_path / "dev.tsv").write_text("question\tsentence\tlabel\n" + "".join(f"{a}\t{b}\t1\n" for a, b in rows))
    pairs = GlueTsv(tmp_path / "dev.tsv", ["question", "sentence"], "label", ["0", "1"])
    assert pairs[0] == LabeledSample(None, ("is it red ?", "the ball is red"), 1)
    collator = ClassificationCollator(
        WordPieceTokenizer.from_vocab(tmp_path / "vocab.txt"), image_size=8, max_text_length=9
    )
    batch = collator("train", [pairs[i] for i in range(3)], [0, 1, 2])
    ref = hf([a for a, _ in rows], [b for _, b in rows], truncation=True, max_length=9, padding=True)
    assert batch["text"].tolist() == ref["input_ids"]
    assert batch["text_attention_mask"].tolist() == ref["attention_mask"]
    assert batch["token_type_ids"].tolist() == ref["token_type_ids"]
    # the long first question gave up its tokens, the short answer kept "it is" (longest first)
    assert hf.convert_ids_to_tokens(batch["text"][1].tolist()) == [
        "[CLS]",
        "is",
        "it",
        "a",
        "very",
        "[SEP]",
        "it",
        "is",
        "[SEP]",
    ]
    assert batch["token_type_ids"][1].tolist() == [0] * 6 + [1] * 3
    single = collator("train", [LabeledSample(None, a, 0) for a, _ in rows], [0, 1, 2])
    assert set(single) == {"text", "text_attention_mask", "labels"}
    assert single["text"].tolist() == hf([a for a, _ in rows], truncation=True, max_length=9, padding=True)["input_ids"]
    with pytest.raises(
        ValueError, match=r"expected a sentence pair \(2 str\) as every text of a batch or none, got \[2, 'str'\]"
    ):
        collator("train", [pairs[0], LabeledSample(None, "red", 0)], [0, 1])


def test_classification_collator_refuses_a_pair_length_below_three_at_construction_or_names_it(tmp_path):
    """max_text_length=2 was accepted, then the first pair batch failed naming the tokenizer's max_length."""
    from torchflava.data.finetuning import ClassificationCollator, LabeledSample
    from torchflava.data.tokenizer import WordPieceTokenizer

    (tmp_path / "vocab.txt").write_text(
        "".join(f"{w}\n" for w in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "ball"])
    )
    tokenizer = WordPieceTokenizer.from_vocab(tmp_path / "vocab.txt")
    with pytest.raises(ValueError, match=r"^max_text_length must be >= 3, got 2$"):
        ClassificationCollator(tokenizer, image_size=8, max_text_length=2, sentence_pairs=True)
    with pytest.raises(TypeError, match=r"^sentence_pairs must be a bool or None, got str$"):
        ClassificationCollator(tokenizer, image_size=8, sentence_pairs="yes")
    pair, single = LabeledSample(None, ("red", "ball"), 0), LabeledSample(None, "red ball", 1)
    unknown = ClassificationCollator(tokenizer, image_size=8, max_text_length=2)  # single texts fit in 2
    assert unknown("train", [single], [0])["text"].tolist() == [[2, 3]]  # [CLS] [SEP]: truncated
    with pytest.raises(
        ValueError,
        match=r"^max_text_length must be >= 3 for a batch of sentence pairs \(\[CLS\] a \[SEP\] b \[SEP\]\), got 2$",
    ):
        unknown("train", [pair], [0])
    pairs = ClassificationCollator(tokenizer, image_size=8, max_text_length=3, sentence_pairs=True)
    batch = pairs("train", [pair], [0])  # [CLS] [SEP] [SEP]: both one-token sentences cut, longest first
    assert batch["text"].tolist() == [[2, 3, 3]] and batch["token_type_ids"].tolist() == [[0, 0, 1]]
    with pytest.raises(
        ValueError, match=r"^samples: expected sentence pairs \(sentence_pairs=True\), got single texts$"
    ):
        pairs("train", [single], [0])
    texts = ClassificationCollator(tokenizer, image_size=8, sentence_pairs=False)
    with pytest.raises(ValueError, match=r"^samples: expected single texts \(sentence_pairs=False\), got pairs$"):
        texts("train", [pair], [0])


def test_glue_tsv_reads_a_test_file_without_labels_and_its_index_column(tmp_path):
    """python -m torchflava.classify --tsv reads GLUE test files (no label column, an ``index`` column)
    with this reader: an unlabelled file reads with label_required=False, the rows' indices from the
    index column where the file has one, else the row numbers."""
    from torchflava.data.finetuning import GlueTsv

    path = tmp_path / "test.tsv"
    path.write_text("index\tquestion\tsentence\n7\tWhy?\tBecause.\n\n9\tHow?\tSo.\n")
    table = GlueTsv(path, ["question", "sentence"], "label", ["0", "1"], label_required=False, index_column="index")
    assert not table.labelled and table.indices == ["7", "9"]
    assert [table[i] for i in range(2)] == [(None, ("Why?", "Because."), None), (None, ("How?", "So."), None)]
    path.write_text("sentence\tlabel\na\t1\nb\t0\n")  # labelled, without an index column: rows numbered from 0
    table = GlueTsv(path, ["sentence"], "label", ["0", "1"], label_required=False, index_column="index")
    assert table.labelled and table.indices == ["0", "1"] and [table[i].label for i in range(2)] == [1, 0]
    with pytest.raises(ValueError, match=r"test.tsv: missing column\(s\) \['label'\]; the header has \['sentence'\]$"):
        path.write_text("sentence\na\n")
        GlueTsv(path, ["sentence"], "label", ["0", "1"])  # (required by default, as for fine-tuning)
    path.write_text("sentence\n")
    with pytest.raises(ValueError, match=r"test.tsv: expected rows below the header, got none$"):
        GlueTsv(path, ["sentence"], "label", label_required=False)


def test_glue_tsv_a_blank_text_is_an_unusable_row_naming_its_line(tmp_path):
    """A blank text was refused only when its item was read, as "sample 1: empty or missing text", without
    the line; a zero-width space is no text either."""
    from torchflava.data.finetuning import GlueTsv
    from torchflava.data.samples import BadSample

    path = tmp_path / "mrpc.tsv"
    path.write_text("label\ts1\ts2\n1\ta\tb\n\n0\t \tc\n1\td\t\u200b\n")
    table = GlueTsv(path, ["s1", "s2"], "label", ["0", "1"])
    assert len(table) == 3 and table[0] == (None, ("a", "b"), 1)
    with pytest.raises(
        BadSample, match=r"^sample 1: .*mrpc.tsv line 4: expected a text in each of \['s1', 's2'\], got \[' ', 'c'\]$"
    ):
        table[1]
    with pytest.raises(
        BadSample,
        match=r"^sample 2: .*mrpc.tsv line 5: expected a text in each of \['s1', 's2'\], got \['d', '\\u200b'\]$",
    ):
        table[2]


def test_image_text_labels_bad_samples_name_the_line_and_the_image(tmp_path):
    """An unusable VQA line was reported as "train[2]: unreadable image (OSError: image file is truncated
    ...)" or "empty or missing text (None)": the item's index (blank lines make it no line number) and no
    file, so the user could not find what to repair."""
    import json

    from torchflava.data.finetuning import ImageTextLabels
    from torchflava.data.samples import BadSample

    Image.new("RGB", (4, 4), (10, 20, 30)).save(tmp_path / "a.png")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 0, 0)).save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    path = tmp_path / "vqa.jsonl"
    lines = [
        {"image": "a.png", "text": "what colour?", "answers": {"yes": 1.0}},
        {"image": "cut.jpg", "text": "q", "answers": {"no": 1.0}},
        {"image": "a.png", "text": None, "answers": {"no": 1.0}},
        {"image": "../a.png", "text": "q", "answers": {"no": 1.0}},
    ]
    path.write_text(json.dumps(lines[0]) + "\n\n" + "\n".join(json.dumps(line) for line in lines[1:]) + "\n")
    data = ImageTextLabels(tmp_path, path, ["yes", "no"])
    assert data[0].image.getpixel((0, 0)) == (10, 20, 30) and data[0].label.tolist() == [1.0, 0.0]
    where = f"sample {{}}: {path} line {{}}: "
    for index, line, reason in (
        (1, 3, r"cut.jpg: unreadable image \(OSError: "),
        (2, 4, r"empty or missing text \(None\)$"),
        (3, 5, r"image path '../a.png' leaves root$"),
    ):
        with pytest.raises(BadSample, match="^" + re.escape(where.format(index, line)) + reason):
            data[index]


def test_image_class_folder_matches_folders_to_classes_in_unicode_composed_form(tmp_path):
    """A validation split copied from a Mac names its folder "café" with "e" and a combining accent (NFD),
    the training split from Linux with "é" (NFC): it was refused with "folders ['café'] are not among the
    classes ['café', 'dog']", two names that print the same."""
    import unicodedata

    for split, form in (("train", "NFC"), ("val", "NFD")):
        for name in ("café", "dog"):
            (tmp_path / split / unicodedata.normalize(form, name)).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / unicodedata.normalize(form, name) / "a.png")
    train = ImageClassFolder(tmp_path / "train")
    assert train.classes == ["caf\xe9", "dog"]
    val = ImageClassFolder(tmp_path / "val", train.classes)
    assert val.classes == ["caf\xe9", "dog"] and [val[i].label for i in range(len(val))] == [0, 1]
    (tmp_path / "val" / "caf\xe9").mkdir()  # the same class written both ways: which one is it?
    with pytest.raises(
        ValueError,
        match=r"^root: sub-folders must name distinct classes in Unicode's composed form \(NFC\), got 'cafe\u0301' and "
        r"'caf\xe9', one name written in two ways \('cafe\\u0301' and 'caf\\xe9'\)$",
    ):
        ImageClassFolder(tmp_path / "val")
    with pytest.raises(ValueError, match=r"^classes must name distinct classes .* \('caf\\xe9' and 'cafe\\u0301'\)$"):
        ImageClassFolder(tmp_path / "train", ["caf\xe9", "dog", "cafe\u0301"])


def test_glue_and_image_text_classes_without_a_training_item_are_named_in_the_warning(tmp_path):
    """A class data.labels lists but no training row or line holds (MNLI's ``neutral`` only in the dev file) got a
    head row never trained towards without a word, as image folders' empty classes already had one."""
    from torchflava.data.finetuning import GlueTsv, ImageTextLabels

    path = tmp_path / "train.tsv"
    path.write_text("premise\tlabel\na\tentailment\nb\tcontradiction\nc\tneutral\td\n")  # (row 3 unusable)
    mnli = ["entailment", "neutral", "contradiction"]
    assert GlueTsv(path, ["premise"], "label", mnli).empty_classes == ["neutral"]
    assert GlueTsv(path, ["premise"], "label", ["entailment", "contradiction"]).empty_classes == []
    assert (
        empty_classes_warning(GlueTsv(path, ["premise"], "label", ["entailment", "contradiction"]), "data.train")
        is None
    )
    assert empty_classes_warning(GlueTsv(path, ["premise"], "label", mnli), "data.train") == (
        "warning: data.train: 1 class(es) without a row, kept as classes (an output of the classifier, counted in "
        "chance): 'neutral'"
    )
    path.write_text("premise\tlabel\na\t0.5\n")
    assert GlueTsv(path, ["premise"], "label").empty_classes == []  # regression targets: no classes
    unlabelled = GlueTsv(path, ["premise"], "score", mnli, label_required=False)
    assert (unlabelled.labelled, unlabelled.empty_classes) == (False, [])
    lines = tmp_path / "train.jsonl"
    lines.write_text('{"image": "a.png", "text": "t", "label": "no"}\n{"image": "b.png", "text": "t", "label": "no"}\n')
    assert empty_classes_warning(ImageTextLabels(tmp_path, lines, ["yes", "no", "maybe"]), "data.train") == (
        "warning: data.train: 2 class(es) without a line, kept as classes (an output of the classifier, counted in "
        "chance): 'yes', 'maybe'"
    )
    lines.write_text('{"image": "a.png", "text": "t", "answers": {"no": 1.0}}\n')
    assert ImageTextLabels(tmp_path, lines, ["yes", "no"]).empty_classes == []  # answer scores: every answer a target


def test_image_text_labels_read_hateful_memes_lines_as_distributed(tmp_path):
    """Hateful Memes' train.jsonl lines are {"id", "img", "label", "text"} with the label a JSON 0 or 1: they were
    refused ("needs 'image' and 'text' ('image')", then "label 0 is not one of ['0', '1']")."""
    import json

    from torchflava.data.finetuning import ImageTextLabels

    (tmp_path / "img").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "42953.png")
    path = tmp_path / "train.jsonl"
    lines = [
        {"id": 42953, "img": "img/42953.png", "label": 0, "text": "its their character not their color that matters"},
        {"id": 23058, "img": "img/42953.png", "label": 1, "text": "don't be afraid to love again"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    memes = ImageTextLabels(tmp_path, path, ["0", "1"])
    assert [memes[i].label for i in range(2)] == [0, 1]
    assert memes[0].text == "its their character not their color that matters" and memes[0].image.size == (4, 4)
    assert ImageTextLabels(tmp_path, path, ["1", "0"])[0].label == 1  # the class named "0", wherever it is listed
    for label in (True, 1.0, 2):  # a bool or a float names no class; an integer no class is written as, neither
        path.write_text(json.dumps({**lines[0], "label": label}) + "\n")
        with pytest.raises(ValueError, match=rf"train.jsonl line 1: label {label!r} is not one of \['0', '1'\]$"):
            ImageTextLabels(tmp_path, path, ["0", "1"])
    path.write_text(json.dumps({"id": 1, "label": 0, "text": "no image"}) + "\n")
    with pytest.raises(
        ValueError,
        match=r"train.jsonl line 1: needs 'image' \(or 'img'\) and 'text', or SNLI-VE's 'Flickr30K_ID' and 'sentence2' \('image'\)$",
    ):
        ImageTextLabels(tmp_path, path, ["0", "1"])
    path.write_text(json.dumps({"image": "img/42953.png", "img": "elsewhere.png", "text": "q", "label": "1"}) + "\n")
    assert ImageTextLabels(tmp_path, path, ["0", "1"])[0].image.size == (4, 4)  # "image" first where both are


def test_snli_ve_lines_are_read_as_distributed(tmp_path):
    """The class said "SNLI-VE style" but read only image/text/label: SNLI-VE's own jsonl (Flickr30K_ID, the
    hypothesis sentence2, gold_label, beside SNLI's other fields) was refused line 1. Its image is the Flickr30k
    file <Flickr30K_ID>.jpg under root."""
    import json

    from torchflava.data.finetuning import ImageTextLabels

    Image.new("RGB", (4, 4), (10, 20, 30)).save(tmp_path / "3416050480.jpg")
    Image.new("RGB", (4, 4), (200, 0, 0)).save(tmp_path / "12.jpg")
    snli = {"annotator_labels": ["neutral"], "captionID": "3416050480.jpg#4", "pairID": "3416050480.jpg#4r1n"}
    lines = [
        {
            **snli,
            "Flickr30K_ID": "3416050480",
            "sentence1": "A man.",
            "sentence2": "A man sleeps.",
            "gold_label": "neutral",
        },
        {**snli, "Flickr30K_ID": 12, "sentence1": "A dog.", "sentence2": "An animal.", "gold_label": "entailment"},
    ]
    path = tmp_path / "snli_ve_dev.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    data = ImageTextLabels(tmp_path, path, ["entailment", "neutral", "contradiction"])
    assert [(data[i].text, data[i].label) for i in range(2)] == [("A man sleeps.", 1), ("An animal.", 0)]
    assert data[0].image.getpixel((0, 0)) == (10, 20, 30) and data[1].image.getpixel((0, 0)) == (200, 0, 0)
    path.write_text(json.dumps({**lines[0], "Flickr30K_ID": None}) + "\n")
    with pytest.raises(
        ValueError, match=r"snli_ve_dev.jsonl line 1: needs .* SNLI-VE's 'Flickr30K_ID' and 'sentence2'"
    ):
        ImageTextLabels(tmp_path, path, ["entailment", "neutral", "contradiction"])


def test_glue_tsv_lines_of_spaces_and_tabs_are_blank_as_in_a_file_saved_by_an_editor(tmp_path):
    """A BOM, CRLF line ends and trailing lines of spaces or a tab: those lines were rows, unusable ones
    ('expected 2 fields, got 1'), named as skipped in the run's report, where the other readers take them as
    blank. The line numbers stay the file's."""
    from torchflava.data.finetuning import GlueTsv

    path = tmp_path / "dev.tsv"
    path.write_bytes("\ufeffsentence\tlabel\r\na\tpos\r\n  \r\n\t\r\nb\tmaybe\r\n \t \r\n\r\n".encode("utf-8"))
    with pytest.raises(ValueError, match=r"column 'label' row 1: expected one of .*, got 'maybe' \(line 5\)$"):
        GlueTsv(path, ["sentence"], "label", ["pos", "neg"])
    path.write_bytes("\ufeffsentence\tlabel\r\na\tpos\r\n  \r\n\t\r\nb\tneg\r\n \t \r\n\r\n".encode("utf-8"))
    table = GlueTsv(path, ["sentence"], "label", ["pos", "neg"])
    assert [table[i] for i in range(len(table))] == [(None, "a", 0), (None, "b", 1)]
    assert table.indices == ["0", "1"]
