"""ImageTextFolder on captions files as researchers have them: Karpathy's split JSON, COCO's captions
JSON, open_clip's CSV/TSV; image paths under a root or absolute without one."""

import csv
import json
from pathlib import Path

import pytest

from tests.data.test_readers import assert_red_green, png_bytes, write
from torchflava.data import readers
from torchflava.data.readers import CaptionsError, ImageTextFolder
from torchflava.data.samples import BadSample


def pairs(dataset) -> list:
    """(image path, caption) of every item, or the BadSample's reason."""
    result = []
    for index in range(len(dataset)):
        try:
            result.append((dataset.image_path(index), dataset.caption(index)))
        except BadSample as bad:
            result.append(bad.reason)
    return result


def sentences(*raws):
    """Karpathy's sentences: raw text and its tokens."""
    return [
        {"tokens": raw.lower().strip(" .").split(), "raw": raw, "imgid": 0, "sentid": i} for i, raw in enumerate(raws)
    ]


def karpathy_coco(tmp_path: Path) -> Path:
    """dataset_coco.json as Karpathy's split files hold it (filepath, filename, split, five sentences)."""
    images = [
        {"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "split": "test", "cocoid": 42,
         "sentences": sentences("A cat on a mat.", "a CAT sits", "the cat", "cat and mat ", "one cat")},
        {"filepath": "train2014", "filename": "COCO_train2014_000000000007.jpg", "split": "train", "cocoid": 7,
         "sentences": sentences("Two dogs.", "dogs run", "a pair of dogs", "dogs", "puppies")},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000009.jpg", "split": "restval", "cocoid": 9,
         "sentences": sentences("A bus.")},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000011.jpg", "split": "test", "cocoid": 11,
         "sentences": [{"raw": "a red bus"}, {"tokens": ["no", "raw"]}, "not an object", {"raw": 3}]},
        {"filepath": "val2014", "split": "test", "sentences": sentences("no filename")},
        ["not", "an", "object"],
        {"filepath": "val2014", "filename": "COCO_val2014_000000000013.jpg", "split": "val", "sentences": []},
    ]  # fmt: skip
    return write(tmp_path / "dataset_coco.json", json.dumps({"images": images, "dataset": "coco"}))


def test_karpathy_coco_file_is_read_to_its_pairs_path_under_root_filepath(tmp_path):
    root = tmp_path / "coco"
    root.mkdir()
    dataset = ImageTextFolder(root, karpathy_coco(tmp_path))
    cat, dogs = (
        str(root / "val2014/COCO_val2014_000000000042.jpg"),
        str(root / "train2014/COCO_train2014_000000000007.jpg"),
    )
    bus = str(root / "val2014/COCO_val2014_000000000011.jpg")
    assert pairs(dataset) == [
        (cat, "A cat on a mat."),
        (cat, "a CAT sits"),
        (cat, "the cat"),
        (cat, "cat and mat"),
        (cat, "one cat"),
        (dogs, "Two dogs."),
        (dogs, "dogs run"),
        (dogs, "a pair of dogs"),
        (dogs, "dogs"),
        (dogs, "puppies"),
        (str(root / "val2014/COCO_val2014_000000000009.jpg"), "A bus."),
        (bus, "a red bus"),
        "dataset_coco.json images[3].sentences[1]: missing key 'raw'",
        "dataset_coco.json images[3].sentences[2]: expected a JSON object, got string",
        "dataset_coco.json images[3].sentences[3]: 'raw' must be a string, got number",
        "dataset_coco.json images[4]: missing key 'filename'",
        "dataset_coco.json images[5]: expected a JSON object, got list",
        "dataset_coco.json images[6]: no sentences",
    ]
    with pytest.raises(BadSample, match=r"^sample 0: dataset_coco.json images\[0\].sentences\[0\]: unreadable image"):
        dataset[0]  # (no image was written)


def test_karpathy_split_keeps_the_images_of_those_splits(tmp_path):
    captions = karpathy_coco(tmp_path)
    test = ImageTextFolder(tmp_path, captions, split="test")
    assert [pair[1] if isinstance(pair, tuple) else pair for pair in pairs(test)] == [
        "A cat on a mat.",
        "a CAT sits",
        "the cat",
        "cat and mat",
        "one cat",
        "a red bus",
        "dataset_coco.json images[3].sentences[1]: missing key 'raw'",
        "dataset_coco.json images[3].sentences[2]: expected a JSON object, got string",
        "dataset_coco.json images[3].sentences[3]: 'raw' must be a string, got number",
        "dataset_coco.json images[4]: missing key 'filename'",
        "dataset_coco.json images[5]: expected a JSON object, got list",  # its split cannot be known
    ]
    train = ImageTextFolder(tmp_path, captions, split=("train", "restval"))
    assert [pair[1] for pair in pairs(train)[:6]] == [
        "Two dogs.",
        "dogs run",
        "a pair of dogs",
        "dogs",
        "puppies",
        "A bus.",
    ]
    assert len(train) == 7  # and the image that is no object
    with pytest.raises(ValueError) as error:  # the val image has no sentences
        ImageTextFolder(tmp_path, captions, split=["val"])
    assert str(error.value) == (
        "captions must list at least one well-formed image-caption pair, none of the 2 entries of "
        f"{str(captions)!r} is (images[5]: expected a JSON object, got list)"
    )
    with pytest.raises(ValueError) as error:
        ImageTextFolder(tmp_path, captions, split="tset")
    assert str(error.value) == (
        f"split must name splits of the file, none of ['tset'] is a split of {str(captions)!r} "
        "(its splits: ['restval', 'test', 'train', 'val'])"
    )
    for wanted, named in (
        (["test", "tset"], "'tset' is not a split"),
        (["tset", "test", "x"], "'tset', 'x' are not splits"),
    ):
        with pytest.raises(CaptionsError) as error:  # one name lacking beside one kept: refused, not left out silently
            ImageTextFolder(tmp_path, captions, split=wanted)
        assert error.value.argument == "split" and str(error.value) == (
            f"split must name splits of the file, {named} of {str(captions)!r} "
            "(its splits: ['restval', 'test', 'train', 'val'])"
        )
    tsv = write(tmp_path / "c.tsv", "a.png\tx\n")
    with pytest.raises(ValueError) as error:
        ImageTextFolder(tmp_path, tsv, split="test")
    assert str(error.value) == f"split is for Karpathy's split files (.json), {str(tsv)!r} is not one"
    with pytest.raises(ValueError, match="^split must be None, a split name or non-empty names"):
        ImageTextFolder(tmp_path, captions, split=["test", ""])
    with pytest.raises(TypeError, match="^split must be None, a split name or names, got int"):
        ImageTextFolder(tmp_path, captions, split=3)


def test_karpathy_flickr30k_file_has_no_filepath(tmp_path):
    write(tmp_path / "flickr30k-images" / "1000092795.jpg", png_bytes())
    images = [
        {"filename": "1000092795.jpg", "split": "test", "imgid": 0, "sentids": [0, 1],
         "sentences": sentences("Two young guys with shaggy hair look at their hands .", "Two friends enjoy time .")},
        {"filename": "10002456.jpg", "split": "train", "imgid": 1, "sentences": sentences("Workers look down .")},
    ]  # fmt: skip
    captions = write(tmp_path / "dataset_flickr30k.json", json.dumps({"images": images, "dataset": "flickr30k"}))
    dataset = ImageTextFolder(tmp_path / "flickr30k-images", captions, split="test")
    image = str(tmp_path / "flickr30k-images" / "1000092795.jpg")
    assert pairs(dataset) == [
        (image, "Two young guys with shaggy hair look at their hands ."),
        (image, "Two friends enjoy time ."),
    ]
    assert_red_green(dataset[1].image)
    images[1]["split"] = 5
    images.append({"filename": "1001.jpg", "sentences": sentences("No split .")})
    write(captions, json.dumps({"images": images}))
    assert pairs(ImageTextFolder(tmp_path / "flickr30k-images", captions, split="test"))[2:] == [
        "dataset_flickr30k.json images[1]: 'split' must be a string, got number",
        "dataset_flickr30k.json images[2]: missing key 'split'",
    ]
    assert len(ImageTextFolder(tmp_path, captions)) == 4  # the split is not read without split=


def test_coco_captions_file_is_read_to_its_pairs(tmp_path):
    write(tmp_path / "val2017" / "000000179765.jpg", png_bytes())
    data = {
        "info": {"description": "COCO 2017 Dataset"},
        "licenses": [],
        "images": [
            {"license": 3, "file_name": "000000179765.jpg", "height": 480, "width": 640, "id": 179765},
            {"license": 1, "file_name": "000000190236.jpg", "id": 190236},
            {"id": 5},  # no file name
            {"file_name": "twice.jpg", "id": 7},
            {"file_name": "again.jpg", "id": 7},
            {"file_name": "no-id.jpg"},
        ],
        "annotations": [
            {"image_id": 179765, "id": 38, "caption": "A black Honda motorcycle parked in front of a garage."},
            {"image_id": 190236, "id": 401, "caption": "An office cubicle with four different types of computers."},
            {"image_id": 179765, "id": 182, "caption": "A Honda motorcycle parked in a grass driveway\n"},
            {"image_id": 999, "id": 1, "caption": "an image that is not listed"},
            {"image_id": 5, "id": 2, "caption": "x"},
            {"image_id": 7, "id": 3, "caption": "x"},
            {"id": 4, "caption": "x"},
            {"image_id": 179765, "id": 5, "caption": None},
            "not an object",
        ],
    }
    captions = write(tmp_path / "annotations" / "captions_val2017.json", json.dumps(data))
    dataset = ImageTextFolder(tmp_path / "val2017", captions)
    image, office = str(tmp_path / "val2017/000000179765.jpg"), str(tmp_path / "val2017/000000190236.jpg")
    assert pairs(dataset) == [
        (image, "A black Honda motorcycle parked in front of a garage."),
        (office, "An office cubicle with four different types of computers."),
        (image, "A Honda motorcycle parked in a grass driveway"),
        "captions_val2017.json annotations[3]: image_id 999 is not the id of an image in 'images'",
        "captions_val2017.json annotations[4]: image id 5 (images[2]) has no 'file_name'",
        "captions_val2017.json annotations[5]: image id 7 is listed twice in 'images'",
        "captions_val2017.json annotations[6]: missing key 'image_id'",
        "captions_val2017.json annotations[7]: 'caption' must be a string, got null",
        "captions_val2017.json annotations[8]: expected a JSON object, got string",
    ]
    assert_red_green(dataset[2].image)
    with pytest.raises(ValueError) as error:
        ImageTextFolder(tmp_path, captions, split="test")
    assert str(error.value) == f"split is for Karpathy's split files, {str(captions)!r} is a COCO captions file"


OPEN_CLIP_CSV = (  # as pandas' to_csv writes it: quoted where a field holds a comma, a quote or a newline
    "title,id,filepath\r\n"
    'A dog, running,1,{root}/a.png\r\n'
    '"She said ""hi""",2,{root}/sub/b.png\r\n'
    '"two\r\nlines",3,{root}/a.png\r\n'
    "\r\n"
    "plain caption,4,{root}/c.png\r\n"
    '"closed" then text,5,{root}/a.png\r\n'
    "too,many,columns,{root}/a.png\r\n"
    "last,6,{root}/a.png\r\n"
)  # fmt: skip


def test_open_clip_csv_with_absolute_paths_and_quoted_fields(tmp_path):
    root = tmp_path / "images"
    write(root / "a.png", png_bytes())
    captions = write(tmp_path / "train.csv", OPEN_CLIP_CSV.format(root=root))
    dataset = ImageTextFolder(None, captions)  # open_clip's default columns, filepath and title
    assert pairs(dataset) == [
        "train.csv line 2: expected 3 comma-separated columns as in the header, got 4",  # an unquoted comma
        (str(root / "sub/b.png"), 'She said "hi"'),
        (str(root / "a.png"), "two\r\nlines"),
        (str(root / "c.png"), "plain caption"),
        (str(root / "a.png"), "closed then text"),  # as pandas reads it (it was a bad sample)
        "train.csv line 9: expected 3 comma-separated columns as in the header, got 4",
        (str(root / "a.png"), "last"),
    ]
    assert dataset[2].text == "two\r\nlines" and dataset[6].text == "last"
    assert_red_green(dataset[6].image)


def test_captions_longer_than_the_csv_modules_default_field_limit_are_read(tmp_path, monkeypatch):
    """Found by a review: a caption over 131072 characters (csv.field_size_limit's default) was a bad
    sample in a CSV or a headed TSV; the limit is raised to MAX_FIELD_CHARS for the read only."""
    limit = csv.field_size_limit()
    long = "a dense description " * 10_000 + "end"  # 200003 characters
    for name, text in (
        ("long.csv", f'image,caption\na.png,{long}\nb.png,"{long}"\nc.png,short\n'),
        ("long.tsv", f"filepath\ttitle\na.png\t{long}\nb.png\t{long}\nc.png\tshort\n"),
        ("legacy.tsv", f"a.png\t{long}\nb.png\t{long}\nc.png\tshort\n"),
    ):
        dataset = ImageTextFolder(tmp_path, write(tmp_path / name, text))
        assert [dataset.caption(i) for i in range(3)] == [long, long, "short"], name
        assert csv.field_size_limit() == limit  # (other code's csv reading keeps its limit)
    monkeypatch.setattr(readers, "MAX_FIELD_CHARS", 1000)  # a quote left open in a large file: refused
    unclosed = write(tmp_path / "open.csv", 'image,caption\na.png,fine\nb.png,"never closed\n' + "c.png,x\n" * 200)
    with pytest.raises(ValueError) as error:
        ImageTextFolder(tmp_path, unclosed)
    assert str(error.value) == (
        "captions must hold fields of at most 1000 characters; the record starting on line 3 of "
        f"{str(unclosed)!r} holds a longer one (a quote left open?)"
    )
    assert csv.field_size_limit() == limit


def test_a_quoted_field_followed_by_text_is_read_as_pandas_reads_it(tmp_path):
    """Found by a review: a caption starting with a quoted word (``"Hello" she said``) was a bad sample;
    pandas' read_csv (open_clip's reader) and Python's csv without strict give ``Hello she said``."""
    captions = write(tmp_path / "c.csv", 'caption,image\n"Hello" she said,a.png\nplain,"b".png\n')
    assert pairs(ImageTextFolder(tmp_path, captions)) == [
        (str(tmp_path / "a.png"), "Hello she said"),
        (str(tmp_path / "b.png"), "plain"),
    ]


def test_a_tsv_without_header_written_by_the_csv_module_is_read_unquoted(tmp_path):
    """Found by a review: a caption the csv module (or pandas) quoted in a tab-separated file kept its
    quotes, doubled ones included; a quote that opens no quoted field stays text (files written by hand)."""
    captions = ['She said "hi"', "a\ttab", '"quoted"', "plain, with a comma"]
    path = tmp_path / "written.tsv"
    with open(path, "w", newline="") as file:
        csv.writer(file, delimiter="\t").writerows((f"{i}.png", caption) for i, caption in enumerate(captions))
    assert [text for _, text in pairs(ImageTextFolder(tmp_path, path))] == captions
    by_hand = write(tmp_path / "hand.tsv", 'a.png\t"Hello" she said\nb.png\t5" tall\nc.png\t"open\n')
    assert [text for _, text in pairs(ImageTextFolder(tmp_path, by_hand))] == ['"Hello" she said', '5" tall', '"open']


def test_csv_and_tsv_columns_named_by_the_keys_in_any_order_and_case(tmp_path):
    write(tmp_path / "a.png", png_bytes())
    csv = write(tmp_path / "c.CSV", 'id,Caption Text,URL\n1,"a, b",a.png\n2,plain,sub/../a.png\n')
    dataset = ImageTextFolder(tmp_path, csv, image_key="url", text_key="caption text")
    assert pairs(dataset) == [(str(tmp_path / "a.png"), "a, b"), (str(tmp_path / "a.png"), "plain")]
    tsv = write(tmp_path / "c.tsv", 'filepath\ttitle\tkey\na.png\t"tab\there"\t1\nb.png\tno quotes\t2\n')
    assert pairs(ImageTextFolder(tmp_path, tsv)) == [
        (str(tmp_path / "a.png"), "tab\there"),
        (str(tmp_path / "b.png"), "no quotes"),
    ]
    extra = write(tmp_path / "d.tsv", "image\tcaption\tscore\na.png\tx\t0.3\n")  # more than image<TAB>caption
    assert pairs(ImageTextFolder(tmp_path, extra)) == [(str(tmp_path / "a.png"), "x")]
    bad = write(tmp_path / "e.csv", b"image,caption\na.png,caf\xe9\n\xff.png,fine\na.png,ok\n")
    assert pairs(ImageTextFolder(tmp_path, bad)) == [
        "e.csv line 2: not valid UTF-8",
        "e.csv line 3: not valid UTF-8",
        (str(tmp_path / "a.png"), "ok"),
    ]
    ignored = write(tmp_path / "f.csv", b"image,note,caption\na.png,\xff,ok\n")  # (in a column not read)
    assert pairs(ImageTextFolder(tmp_path, ignored)) == [(str(tmp_path / "a.png"), "ok")]
    blank_rows = write(tmp_path / "g.csv", "\ufeff,,\n\nimage,caption,\n,,\na.png,x,\n")  # (pandas' index column)
    assert pairs(ImageTextFolder(tmp_path, blank_rows)) == [(str(tmp_path / "a.png"), "x")]
    legacy = write(tmp_path / "h.tsv", 'a.png\t"an open quote\nb.png\tx\n')  # no header: quotes are text, as before
    assert pairs(ImageTextFolder(tmp_path, legacy)) == [
        (str(tmp_path / "a.png"), '"an open quote'),
        (str(tmp_path / "b.png"), "x"),
    ]


def test_files_of_the_wrong_shape_are_refused_naming_them(tmp_path):
    expected = (
        "Karpathy's split file ({'images': [{'filepath', 'filename', 'split', 'sentences': [{'raw'}]}]}), COCO's "
        "captions file ({'images': [{'id', 'file_name'}], 'annotations': [{'image_id', 'caption'}]}) or a list of "
        "captions as BLIP's ([{'image', 'caption'}], the caption a string or a list of them)"
    )
    cases = [
        ("list.json", "[1, 2]", "holds a JSON list of 2 item(s) (number), no object with 'image'"),
        ("lists.json", '[["a.png", "x"], {"file": "a.png"}]', "holds a JSON list of 2 item(s) (list, object), no object with 'image'"),
        ("other.json", '{"data": [], "version": 2}', "holds an object of keys 'data', 'version'"),
        ("images.json", '{"images": {"a": 1}}', "holds an object of keys 'images', its 'images' a object"),
        ("plain.json", '{"images": [{"file_name": "a.png"}]}', "holds 'images' (1) without 'sentences' and no 'annotations'"),
        (
            "instances.json",
            '{"images": [], "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1]}]}',
            "holds annotations without 'caption' (COCO instances or keypoints, not captions?)",
        ),
        ("anns.json", '{"images": [], "annotations": {}}', "holds an 'annotations' object, not a list"),
    ]  # fmt: skip
    for name, text, got in cases:
        path = write(tmp_path / name, text)
        with pytest.raises(ValueError) as error:
            ImageTextFolder(tmp_path, path)
        assert str(error.value) == f"captions must be {expected}; {str(path)!r} {got}"
    lines = write(tmp_path / "lines.json", '{"image": "a.png", "caption": "x"}\n{"image": "a.png", "caption": "y"}\n')
    with pytest.raises(ValueError) as error:
        ImageTextFolder(tmp_path, lines)
    assert str(error.value) == (
        f"captions must be {expected}; {str(lines)!r} is not valid JSON (Extra data: line 2 column 1 (char 35)) "
        "(JSON lines belong in a .jsonl file)"
    )
    headerless = write(tmp_path / "c.csv", "a.png,a caption\n")
    with pytest.raises(ValueError) as error:
        ImageTextFolder(tmp_path, headerless)
    assert str(error.value) == (
        "captions must start with a comma-separated header row naming the columns 'image' and 'caption' (or "
        f"open_clip's 'filepath' and 'title'); line 1 of {str(headerless)!r} is ['a.png', 'a caption']"
    )
    tsv = write(tmp_path / "c.tsv", "path\ttext\na.png\tx\n")
    with pytest.raises(ValueError) as error:
        ImageTextFolder(tmp_path, tsv, image_key="filepath", text_key="title")
    assert str(error.value) == (
        "captions must start with a tab-separated header row naming the columns 'filepath' and 'title'; line 1 of "
        f"{str(tsv)!r} is ['path', 'text']"
    )
    unclosed = write(tmp_path / "u.csv", 'filepath,title\na.png,fine\nb.png,"never closed\nc.png,x\n')
    with pytest.raises(ValueError) as error:
        ImageTextFolder(tmp_path, unclosed)
    assert str(error.value) == (
        f"captions must close every quoted field; the quote of the record starting on line 3 of {str(unclosed)!r} "
        "is still open at the end of the file (line 4)"
    )
    with pytest.raises(
        ValueError, match=r"^captions must be a .jsonl, .json, .csv, .tsv or .parquet file, got '.*c.txt'$"
    ):
        ImageTextFolder(tmp_path, write(tmp_path / "c.txt", "a.png\tx\n"))
    with pytest.raises(ValueError) as error:
        ImageTextFolder(tmp_path, karpathy_coco(tmp_path), image_key="a", text_key="b")
    assert str(error.value) == (
        "image_key and text_key are for .jsonl, .csv and .tsv files and JSON lists of captions, "
        f"{str(tmp_path / 'dataset_coco.json')!r} is Karpathy's split file"
    )
    with pytest.raises(ValueError, match=r"'path' and 'caption' \(or open_clip's 'title'\); line 1 of"):  # the defaults
        ImageTextFolder(tmp_path, tsv, image_key="path")
    assert pairs(ImageTextFolder(tmp_path, tsv, image_key="path", text_key="text")) == [(str(tmp_path / "a.png"), "x")]
    headerless = write(tmp_path / "h.tsv", "a.png\tx\n")  # the default keys, given: image<TAB>caption as before
    assert pairs(ImageTextFolder(tmp_path, headerless, image_key="image")) == [(str(tmp_path / "a.png"), "x")]
    with pytest.raises(ValueError, match="^image_key and text_key must differ, got 'caption' for both$"):
        ImageTextFolder(tmp_path, tsv, image_key="caption")


def test_one_key_given_the_other_column_is_ours_or_open_clips_default(tmp_path):
    """Found by a review: text_key="title" alone on open_clip's CSV (filepath,title) was refused, the
    image column taken to be "image" only; a header lacking both names is refused naming image_key."""
    write(tmp_path / "a.png", png_bytes())
    open_clip = write(tmp_path / "train.csv", "filepath,title,text\na.png,a title,a text\n")
    for keys, caption in (({"text_key": "title"}, "a title"), ({"text_key": "text"}, "a text"), ({}, "a title")):
        assert pairs(ImageTextFolder(tmp_path, open_clip, **keys)) == [(str(tmp_path / "a.png"), caption)], keys
    mixed = write(tmp_path / "mixed.tsv", "filepath\tcaption\na.png\tx\n")  # ours and open_clip's
    assert pairs(ImageTextFolder(tmp_path, mixed)) == [(str(tmp_path / "a.png"), "x")]
    assert pairs(ImageTextFolder(tmp_path, mixed, image_key="filepath")) == [(str(tmp_path / "a.png"), "x")]
    other = write(tmp_path / "other.csv", "path,title\na.png,x\n")
    with pytest.raises(CaptionsError) as error:
        ImageTextFolder(tmp_path, other, text_key="title")
    assert error.value.argument == "image_key" and str(error.value) == (
        "captions must start with a comma-separated header row naming the columns 'image' (or open_clip's "
        f"'filepath') and 'title'; line 1 of {str(other)!r} is ['path', 'title']"
    )
    with pytest.raises(CaptionsError) as error:  # the key given names no column: it answers for it
        ImageTextFolder(tmp_path, other, text_key="text")
    assert error.value.argument == "text_key"


def test_absolute_paths_only_without_a_root_and_relative_ones_only_under_it(tmp_path):
    write(tmp_path / "a.png", png_bytes())
    absolute = write(tmp_path / "abs.tsv", f"filepath\ttitle\n{tmp_path / 'a.png'}\tx\na.png\trelative\n")
    assert pairs(ImageTextFolder(None, absolute)) == [
        (str(tmp_path / "a.png"), "x"),
        "abs.tsv line 3: image path 'a.png' is relative, and no root was given",
    ]
    under_root = pairs(ImageTextFolder(tmp_path, absolute))  # (a file mixing both: each path judged)
    assert under_root[0] == f"abs.tsv line 2: image path {str(tmp_path / 'a.png')!r} is absolute, not relative to root"
    assert under_root[1] == (str(tmp_path / "a.png"), "relative")
    only_absolute = write(tmp_path / "only.csv", f"filepath,title\n{tmp_path / 'a.png'},x\n")
    with pytest.raises(ValueError) as error:
        ImageTextFolder(tmp_path, only_absolute)
    assert str(error.value) == (
        f"captions: every image path of {str(only_absolute)!r} is absolute (e.g. {str(tmp_path / 'a.png')!r}); give "
        "no root (root=None; the retrieval command without --images) to read a file of absolute paths"
    )
    only_relative = write(tmp_path / "rel.jsonl", '{"image": "a.png", "caption": "x"}\n')
    with pytest.raises(ValueError) as error:
        ImageTextFolder(None, only_relative)
    assert str(error.value) == (
        f"captions: every image path of {str(only_relative)!r} is relative (e.g. 'a.png'); give the root folder they "
        "are relative to"
    )
    outside = write(
        tmp_path / "out.jsonl", '{"image": "../a.png", "caption": "x"}\n{"image": "a.png", "caption": "y"}\n'
    )
    assert pairs(ImageTextFolder(tmp_path / ".", outside))[0] == "out.jsonl line 1: image path '../a.png' leaves root"


# BLIP's (and LAVIS's) caption files: coco_karpathy_train.json holds one object per caption, its val and
# test files one object per image with the captions in a list
BLIP_TRAIN = [
    {"caption": "A woman wearing a net on her head cutting a cake. ", "image": "val2014/COCO_val2014_000000522418.jpg", "image_id": "coco_522418"},
    {"caption": "A woman cutting a large white sheet cake.", "image": "val2014/COCO_val2014_000000522418.jpg", "image_id": "coco_522418"},
    {"caption": "A child holding a flowered umbrella.", "image": "train2014/COCO_train2014_000000000049.jpg", "image_id": "coco_49"},
]  # fmt: skip
BLIP_TEST = [
    {"image": "val2014/COCO_val2014_000000391895.jpg", "caption": ["A man with a red helmet on a small moped on a dirt road. ", "Man riding a motor bike on a dirt road on the countryside."]},
    {"image": "val2014/COCO_val2014_000000060623.jpg", "caption": ["A young girl inhales with the intent of blowing out a candle. "]},
]  # fmt: skip


def test_blip_caption_lists_give_one_item_per_caption(tmp_path):
    root = tmp_path / "coco"
    write(root / "val2014" / "COCO_val2014_000000522418.jpg", png_bytes())
    train = ImageTextFolder(root, write(tmp_path / "coco_karpathy_train.json", json.dumps(BLIP_TRAIN)))
    cake, umbrella = str(root / BLIP_TRAIN[0]["image"]), str(root / BLIP_TRAIN[2]["image"])
    assert pairs(train) == [
        (cake, "A woman wearing a net on her head cutting a cake."),
        (cake, "A woman cutting a large white sheet cake."),
        (umbrella, "A child holding a flowered umbrella."),
    ]
    assert_red_green(train[1].image)
    test = ImageTextFolder(root, write(tmp_path / "coco_karpathy_test.json", json.dumps(BLIP_TEST)))
    moped, candle = (str(root / item["image"]) for item in BLIP_TEST)
    assert pairs(test) == [
        (moped, "A man with a red helmet on a small moped on a dirt road."),
        (moped, "Man riding a motor bike on a dirt road on the countryside."),
        (candle, "A young girl inhales with the intent of blowing out a candle."),
    ]
    with pytest.raises(BadSample, match=r"^sample 2: coco_karpathy_test.json \[1\].caption\[0\]: unreadable image"):
        test[2]  # (no image was written)
    # other keys named by image_key and text_key (LAVIS-style annotations), one caption or several
    renamed = [{"img": item["image"], "text": item["caption"]} for item in BLIP_TEST]
    captions = write(tmp_path / "renamed.json", json.dumps(renamed))
    assert pairs(ImageTextFolder(root, captions, image_key="img", text_key="text")) == pairs(test)


def test_malformed_entries_of_a_caption_list_are_bad_samples_naming_file_and_index(tmp_path):
    items = [
        {"image": "a.png", "caption": "fine"},
        "not an object",
        {"caption": "no image"},
        {"image": "a.png"},
        {"image": 7, "caption": "x"},
        {"image": "a.png", "caption": None},
        {"image": "a.png", "caption": []},
        {"image": "a.png", "caption": ["one", 2, "  "]},
    ]
    dataset = ImageTextFolder(tmp_path, write(tmp_path / "c.json", json.dumps(items)))
    assert pairs(dataset) == [
        (str(tmp_path / "a.png"), "fine"),
        "c.json [1]: expected a JSON object, got string",
        "c.json [2]: missing key 'image'",
        "c.json [3]: missing key 'caption'",
        "c.json [4]: 'image' must be a string, got number",
        "c.json [5]: 'caption' must be a string or a list of strings, got null",
        "c.json [6]: 'caption' is an empty list",
        (str(tmp_path / "a.png"), "one"),
        "c.json [7].caption[1]: expected a string, got number",
        "c.json [7].caption[2]: empty or missing text ('  ')",
    ]
    with pytest.raises(BadSample) as bad:
        dataset[3]
    assert bad.value.reason == "c.json [3]: missing key 'caption'"
    none = write(tmp_path / "none.json", json.dumps([{"image": "a.png", "text": "x"}]))
    with pytest.raises(ValueError) as error:
        ImageTextFolder(tmp_path, none)
    assert str(error.value) == (
        "captions must list at least one well-formed image-caption pair, none of the 1 entries of "
        f"{str(none)!r} is ([0]: missing key 'caption')"
    )
    with pytest.raises(ValueError) as error:
        ImageTextFolder(tmp_path, none, split="train")
    assert str(error.value) == f"split is for Karpathy's split files, {str(none)!r} is a list of captions"
    empty = write(tmp_path / "empty.json", "[]")
    with pytest.raises(ValueError, match="^captions must list at least one image-caption pair, .* has none$"):
        ImageTextFolder(tmp_path, empty)


def test_open_clips_default_train_csv_is_tab_separated(tmp_path):
    """Found by an adversarial review: open_clip's --csv-separator defaults to a tab, so its train.csv is
    ``filepath<TAB>title`` rows; that .csv was refused ("comma-separated header row ... is ['filepath\\ttitle']")."""
    write(tmp_path / "a.png", png_bytes())
    image = str(tmp_path / "a.png")
    oc = write(tmp_path / "train.csv", f'\ufefffilepath\ttitle\r\n{image}\t"a dog, sitting"\r\n{image}\tcat\r\n')
    assert pairs(ImageTextFolder(None, oc)) == [(image, "a dog, sitting"), (image, "cat")]
    keyed = write(tmp_path / "k.csv", f"path\ttext\n{image}\tx\n")
    assert pairs(ImageTextFolder(None, keyed, image_key="path", text_key="text")) == [(image, "x")]
    comma = write(tmp_path / "c.csv", f'filepath,title\n{image},"tab\there"\n')  # a comma header: commas, as before
    assert pairs(ImageTextFolder(None, comma)) == [(image, "tab\there")]
    with pytest.raises(ValueError, match="comma-separated header row"):  # neither: refused as before
        ImageTextFolder(None, write(tmp_path / "n.csv", f"path\ttext\n{image}\tx\n"))
