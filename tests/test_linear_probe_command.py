"""python -m torchflava.linear_probe on class folders and on the built-in shapes task."""

import functools
import inspect

import pytest
import torch

from tests.helpers import write_tiny_export
from torchflava import linear_probe as command
from torchflava.data.finetuning import ImageClassFolder, ShapesClassification
from torchflava.data.shapes import ShapesWorld
from torchflava.evaluation import LinearProbeResult, linear_probe, percent
from torchflava.pretrained import load_pretrained


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    write_tiny_export(root)
    return root


def _folders(root, split, seed, n):
    world = ShapesWorld(split, n, image_size=32, seed=seed)
    for i in range(n):
        colour = world.scene(i).colour
        if colour in ("red", "blue", "green"):
            (root / colour).mkdir(parents=True, exist_ok=True)
            world[i].image.save(root / colour / f"{i}.png")
    return root


def test_folder_probe_equals_the_library_on_the_same_features(export, tmp_path):
    train, val, test = (
        _folders(tmp_path / name, "pairs", seed, 90) for name, seed in (("train", 1), ("val", 2), ("test", 3))
    )
    (train / "red" / "broken.png").write_text("x")
    report = command.main(["--checkpoint", str(export), "--train", str(train), "--val", str(val), "--test", str(test)])
    pretrained = load_pretrained(export)
    classes = ImageClassFolder(train).classes
    assert classes == ["blue", "green", "red"]
    features = [command.cls_features(pretrained, ImageClassFolder(d, classes)) for d in (train, val, test)]
    assert len(features[0][2]) == 1 and "unreadable image" in features[0][2][0]  # the broken file, named
    assert report["skipped_reasons"] == {"train": features[0][2], "val": [], "test": []}  # (the count was dropped)
    assert "broken.png" in report["skipped_reasons"]["train"][0]
    # counted as the other commands count them: num_inputs and skipped, split by split
    assert report["skipped"] == {"train": 1, "val": 0, "test": 0}
    assert report["num_inputs"] == {name: len(f[1]) for name, f in zip(("train", "val", "test"), features)}
    assert report["num_inputs"]["train"] == len(list(train.rglob("*.png"))) - 1  # (the broken one left out)
    expected = linear_probe(features[0][:2], features[1][:2], features[2][:2], num_classes=3)
    assert report["l2"] == expected.l2 and report["test_accuracy"] == pytest.approx(expected.test_accuracy)
    assert report["chance"] == pytest.approx(1 / 3)
    assert report["classes"] == classes  # (what the labels number, as zero_shot's --json names its classes)
    assert report["test_accuracy"] > 0.6  # colour is linearly readable even from a random tiny encoder


def test_cls_features_are_the_image_encoder_cls(export):
    pretrained = load_pretrained(export)
    source = ShapesClassification("test", 4, image_size=32)
    features, labels, skipped = command.cls_features(pretrained, source, batch_size=3)
    from torchflava.data.transforms import EvalImageTransform

    pixels = torch.stack([EvalImageTransform(32)(source[i].image) for i in range(4)])
    with torch.no_grad():
        expected = pretrained.model(image=pixels).image_embeddings[:, 0]
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
    assert labels.tolist() == [source[i].label for i in range(4)] and skipped == []


def test_shapes_probe_runs_and_needs_data(export):
    result = command.probe_shapes(
        load_pretrained(export), num_train=60, num_val=30, num_test=30, image_size=32, l2_values=(1e-3, 1.0)
    )
    assert set(result.val_accuracy) == {1e-3, 1.0} and 0 <= result.test_accuracy <= 1
    with pytest.raises(SystemExit):
        command.main(["--checkpoint", str(export)])


def test_a_split_without_a_readable_image_is_refused_in_one_line(tmp_path):
    from PIL import Image

    from tests.helpers import write_tiny_export
    from torchflava import linear_probe as command

    write_tiny_export(tmp_path / "export")
    for split in ("train", "val"):
        for name in ("red", "blue"):
            (tmp_path / split / name).mkdir(parents=True)
            if split == "train":
                Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / split / name / "0.png")
            else:
                (tmp_path / split / name / "0.png").write_text("not a png")
    arguments = ["--checkpoint", str(tmp_path / "export"), "--train", str(tmp_path / "train")]
    with pytest.raises(
        ValueError, match=r"^--val .*val: none of its 2 images is readable \(the first: \[.blue/0.png: unreadable"
    ):
        command.main([*arguments, "--val", str(tmp_path / "val")])


def test_bf16_cls_features_are_float_and_within_bf16_rounding(export):
    source = ShapesClassification("test", 4, image_size=32)
    reference, labels, _ = command.cls_features(load_pretrained(export), source)
    features, same_labels, _ = command.cls_features(load_pretrained(export, dtype=torch.bfloat16), source)
    assert features.dtype == torch.float32 and torch.equal(labels, same_labels)
    scale = reference.abs().max()
    assert (features - reference).abs().max() < 3e-2 * scale and not torch.equal(features, reference)


def test_cls_features_encode_on_the_model_s_device(export):
    # the meta device stands in for an accelerator (none here): CPU pixels failed in the patch embedding
    pretrained = load_pretrained(export)
    pretrained.model.to("meta")
    seen = []
    pretrained.model.image_encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].device))
    features, labels, skipped = command.cls_features(pretrained, ShapesClassification("test", 4, image_size=32))
    assert [d.type for d in seen] == ["meta"] and features.device.type == "meta"
    assert tuple(features.shape) == (4, 32) and labels.device.type == "cpu" and len(labels) == 4 and skipped == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shapes", "--train", "."], "argument --shapes: the built-in task, not with --train"),  # DIR was ignored
        (
            ["--train", ".", "--val", "/nowhere"],
            "argument --val: expected a folder of class sub-folders, got '/nowhere'",
        ),
        (["--train", ".", "--val", ".", "--test", "/nowhere"], "argument --test: expected a folder of class"),
        # the penalty was chosen on the training images, or the refit scored on images it was fitted on
        (
            ["--train", "{empty}", "--val", "{empty}/."],
            "argument --val: expected another folder than --train's, got '{empty}/.' (the splits must not share images)",
        ),
        (["--train", "{empty}", "--val", "/", "--test", "/"], "argument --test: expected another folder than --val's"),
        (["--shapes", "--batch-size", "0"], "argument --batch-size: expected an int >= 1, got 0"),
        # was 'argument --train: root must hold a file ending in ...'
        (
            ["--train", "{empty}", "--val", "."],
            "argument --train: expected a folder of class sub-folders, got '{empty}' (no",
        ),
    ],
)
def test_bad_folders_and_conflicting_options_exit_2_before_the_checkpoint_is_loaded(
    argv, message, capsys, monkeypatch, tmp_path
):
    argv, message = [a.replace("{empty}", str(tmp_path)) for a in argv], message.replace("{empty}", str(tmp_path))
    monkeypatch.setattr(command, "command_pretrained", lambda *a, **k: pytest.fail("loaded the checkpoint"))
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--checkpoint", "/unused", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "layout, message",
    [
        # "num_classes must be >= 2, got 1", after the features of every split, naming no option
        (
            {"train": ["red"], "val": ["red"]},
            "argument --train: expected at least 2 class sub-folders, got 1 (['red'] in '{train}')",
        ),
        # "root: folders ['green'] are not among ...", after the checkpoint was loaded
        (
            {"train": ["blue", "red"], "val": ["green", "red"]},
            "argument --val: folders ['green'] are not among the classes ['blue', 'red']",
        ),
        (
            {"train": ["blue", "red"], "val": ["red"], "test": ["blue", "purple"]},
            "argument --test: folders ['purple'] are not among the classes ['blue', 'red']",
        ),
    ],
)
def test_class_folders_that_cannot_be_probed_exit_2_naming_the_option_before_any_work(
    layout, message, tmp_path, capsys, monkeypatch
):
    from PIL import Image

    monkeypatch.setattr(command, "command_pretrained", lambda *a, **k: pytest.fail("loaded the checkpoint"))
    monkeypatch.setattr(command, "cls_features", lambda *a, **k: pytest.fail("extracted features"))
    arguments = ["--checkpoint", "/unused"]
    for split, classes in layout.items():
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / "0.png")
        arguments += [f"--{split}", str(tmp_path / split)]
    with pytest.raises(SystemExit) as exit_info:
        command.main(arguments)
    error = capsys.readouterr().err.splitlines()[-1]
    assert exit_info.value.code == 2
    assert error == "python -m torchflava.linear_probe: error: " + message.format(train=tmp_path / "train")


def test_batch_size_sets_the_images_encoded_at_a_time_and_a_file_url_names_the_checkpoint(
    export, tmp_path, monkeypatch
):
    """There was no --batch-size (128 images a time, whatever the memory), and a file:// URL of the
    checkpoint was 'checkpoint: file:/... does not exist'."""
    train, val = (_folders(tmp_path / name, "pairs", seed, 40) for name, seed in (("train", 1), ("val", 2)))
    arguments = ["--checkpoint", export.as_uri(), "--train", str(train), "--val", str(val)]
    chunks = []

    def recorded(read, indices, batch_size, skipped):
        for chunk in command_chunks(read, indices, batch_size, skipped):
            chunks.append(len(chunk))
            yield chunk

    class Fitted(Exception):
        """Raised where the probe would be fitted: the features are what this test checks (the fit is slow)."""

    def features_to_fit(*splits, **settings):
        probed.append(splits[:2])  # (train, val): no --test
        raise Fitted

    command_chunks, probed = command.readable_chunks, []
    monkeypatch.setattr(command, "readable_chunks", recorded)
    monkeypatch.setattr(command, "linear_probe", features_to_fit)
    with pytest.raises(Fitted):
        command.main(arguments)
    assert max(chunks) > 7
    chunks.clear()
    with pytest.raises(Fitted):
        command.main([*arguments, "--batch-size", "7"])
    assert max(chunks) == 7 and sum(chunks) == len(ImageClassFolder(train)) + len(ImageClassFolder(val))
    for (default, default_labels), (batched, labels) in zip(*probed):
        torch.testing.assert_close(batched, default, atol=1e-5, rtol=1e-5)
        assert torch.equal(labels, default_labels)


def test_a_class_folder_without_a_readable_training_image_is_warned_of_and_the_per_class_mean_reported(
    export, tmp_path, capsys, monkeypatch
):
    """An empty --train class folder is a class (ids must not shift) that the probe can never predict: it
    was said nowhere. The test split's class-balanced accuracy comes beside the overall one."""
    train, val, test = (
        _folders(tmp_path / name, "pairs", seed, 60) for name, seed in (("train", 1), ("val", 2), ("test", 3))
    )
    (train / "yellow").mkdir()
    (train / "purple").mkdir()
    (train / "purple" / "broken.png").write_text("x")
    # one short fit (the untrained classes' weights run down: seconds of L-BFGS per penalty)
    monkeypatch.setattr(command, "linear_probe", functools.partial(linear_probe, l2_values=(1.0,), max_iter=20))
    report = command.main(["--checkpoint", str(export), "--train", str(train), "--val", str(val), "--test", str(test)])
    out, err = capsys.readouterr()
    assert "warning: no readable --train image in the class folder(s) ['purple', 'yellow']: the probe never" in err
    assert report["chance"] == pytest.approx(1 / 5)
    classes = ["blue", "green", "purple", "red", "yellow"]
    pretrained = load_pretrained(export)
    features = [command.cls_features(pretrained, ImageClassFolder(d, classes))[:2] for d in (train, val, test)]
    expected = linear_probe(*features, num_classes=5, l2_values=(1.0,), max_iter=20)
    assert report["test_mean_per_class_accuracy"] == pytest.approx(expected.test_mean_per_class_accuracy)
    predicted, labels = expected.predict(features[2][0]), features[2][1]
    per_class = [(predicted[labels == c] == c).float().mean().item() for c in labels.unique().tolist()]
    assert report["test_mean_per_class_accuracy"] == pytest.approx(sum(per_class) / len(per_class))
    assert f"mean per class {percent(report['test_mean_per_class_accuracy'])}" in out


def test_the_summary_prints_a_3000_class_chance_and_a_99_96_percent_accuracy_as_they_are(export, monkeypatch, capsys):
    """The summary printed one decimal: a chance of 1/3000 classes read "chance 0.0%" and an accuracy of 0.9996
    "100.0%". Every share is now printed by torchflava.evaluation.percent."""
    none = torch.zeros(0)
    result = LinearProbeResult(0.1, {0.1: 0.9996}, 0.99996, none, none, none, none, 0.995)
    monkeypatch.setattr(command, "probe_shapes", lambda pretrained, **sizes: result)
    monkeypatch.setattr(command.ShapesClassification, "classes", [f"class {i}" for i in range(3000)])
    capsys.readouterr()
    report = command.main(["--checkpoint", str(export), "--shapes"])
    assert report["chance"] == 1 / 3000
    assert capsys.readouterr().out == (
        "3000 train, 1000 val, 540 test images, 0 unreadable skipped; chosen L2 0.1: validation accuracy 99.96%; "
        "test accuracy 99.996% (chance 0.033%), mean per class 99.5%\n"
    )


def test_the_summary_and_json_give_top5_beside_the_test_accuracy_and_the_images_counted(export, monkeypatch, capsys):
    """zero_shot and classify print "N images, K unreadable skipped; accuracy A (chance C), mean per class M, top-5
    T"; the probe printed its chance after everything, no top-5 and no count of the images it read (its JSON had
    skipped as lists of reasons where the others have a count): it now reads as they do."""
    none = torch.zeros(0)
    result = LinearProbeResult(1.0, {1.0: 0.5}, 0.25, none, none, none, none, 0.3, 0.75)
    monkeypatch.setattr(command, "probe_shapes", lambda pretrained, **sizes: result)
    monkeypatch.setattr(command.ShapesClassification, "classes", [f"class {i}" for i in range(8)])
    capsys.readouterr()
    report = command.main(["--checkpoint", str(export), "--shapes"])
    assert capsys.readouterr().out == (
        "3000 train, 1000 val, 540 test images, 0 unreadable skipped; chosen L2 1: validation accuracy 50.0%; "
        "test accuracy 25.0% (chance 12.5%), mean per class 30.0%, top-5 75.0%\n"
    )
    assert report["test_top5_accuracy"] == 0.75
    assert report["num_inputs"] == {"train": 3000, "val": 1000, "test": 540}
    # split by split, as a folder probe reports them (report["skipped"]["test"] was a KeyError here alone)
    assert report["skipped"] == {"train": 0, "val": 0, "test": 0}
    assert report["skipped_reasons"] == {"train": [], "val": [], "test": []}


def test_the_shapes_splits_are_probe_shapes_defaults_and_read_only(export, monkeypatch):
    """--shapes reports SHAPES_SPLITS as the images of each split and probe_shapes drew its defaults: two lists of
    the same numbers, now one (probe_shapes's defaults read SHAPES_SPLITS, which cannot be changed in place)."""
    defaults = inspect.signature(command.probe_shapes).parameters
    assert {name: defaults[f"num_{name}"].default for name in ("train", "val", "test")} == dict(command.SHAPES_SPLITS)
    assert dict(command.SHAPES_SPLITS) == {"train": 3000, "val": 1000, "test": 540}
    with pytest.raises(TypeError):
        command.SHAPES_SPLITS["train"] = 10
    called = {}
    none = torch.zeros(0)
    result = LinearProbeResult(1.0, {1.0: 0.5}, 0.25, none, none, none, none, 0.3)
    monkeypatch.setattr(command, "probe_shapes", lambda pretrained, **sizes: called.update(sizes) or result)
    report = command.main(["--checkpoint", str(export), "--shapes"])
    assert report["num_inputs"] == {name: called[f"num_{name}"] for name in ("train", "val", "test")}


def _flatten(folders, flat, labels, *, header=False):
    """The images of class ``folders`` copied into one ``flat`` folder, labelled by the file ``labels``: Kaggle's
    LOC_val_solution.csv (ImageId without the extension, then the class and a box) with ``header``, else
    FILE<TAB>CLASS lines."""
    flat.mkdir()
    rows = ["ImageId,PredictionString"] if header else []
    for file in sorted(folders.glob("*/*.png")):
        (flat / file.name).write_bytes(file.read_bytes())
        rows.append(f"{file.stem},{file.parent.name} 0 0 9 9" if header else f"{file.name}\t{file.parent.name}")
    labels.write_text("\n".join(rows) + "\n")
    return flat


def test_flat_splits_with_labels_files_probe_as_the_same_images_in_class_folders(export, tmp_path, capsys, monkeypatch):
    """ImageNet's validation set comes flat with Kaggle's LOC_val_solution.csv; --train/--val/--test read class
    sub-folders only. --train-labels, --val-labels and --test-labels read such files: the report is the folders'."""
    folders = {
        name: _folders(tmp_path / name, "pairs", seed, 60) for name, seed in (("train", 1), ("val", 2), ("test", 3))
    }
    (folders["test"] / "red" / "broken.png").write_text("x")
    flat = {}
    for name, header in (("train", False), ("val", False), ("test", True)):
        flat[name] = _flatten(folders[name], tmp_path / f"flat_{name}", tmp_path / f"{name}.csv", header=header)
    monkeypatch.setattr(command, "linear_probe", functools.partial(linear_probe, l2_values=(0.1, 1.0), max_iter=20))
    base = ["--checkpoint", str(export), "--batch-size", "1"]  # (one image a batch: the same features either way)
    by_folder = command.main([*base, *(a for n in folders for a in (f"--{n}", str(folders[n])))])
    labelled = [a for n in flat for a in (f"--{n}", str(flat[n]), f"--{n}-labels", str(tmp_path / f"{n}.csv"))]
    by_labels = command.main([*base, *labelled])
    reasons = by_labels.pop("skipped_reasons"), by_folder.pop("skipped_reasons")
    assert by_labels == by_folder and by_labels["classes"] == ["blue", "green", "red"]
    assert reasons[0]["test"][0].startswith("broken.png: ") and reasons[1]["test"][0].startswith("red/broken.png: ")
    assert by_labels["skipped"] == {"train": 0, "val": 0, "test": 1} and by_labels["test_accuracy"] > 0.5
    # flat test images beside training class folders (ImageNet's train/ as extracted, val/ flat) probe alike
    mixed = command.main([*base, "--train", str(folders["train"]), "--val", str(folders["val"]), *labelled[-4:]])
    assert mixed["test_accuracy"] == by_folder["test_accuracy"] and mixed["l2"] == by_folder["l2"]
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--test-labels", "{labels}"], "argument --test-labels: labels the images of --test, which was not given"),
        (["--val-labels", "/nowhere.csv"], "argument --val-labels: expected a labels file, got '/nowhere.csv'"),
        (
            ["--train-labels", "{labels}"],
            "argument --train-labels: expected a flat folder of images beside a labels file, got 2 images in",
        ),
        (["--val", "{flat}", "--val-labels", "{purple}"], "argument --val-labels: {purple}: 1 class(es) among none of"),
        (["--val", "{flat}", "--val-labels", "{header}"], "argument --val-labels: {header}: line 1 names no image"),
        (
            ["--val", "{flat}", "--val-labels", "{one}", "--test", "{flat}", "--test-labels", "{both}"],
            "argument --test-labels: expected other images than --val-labels's, got 1 of them (first '1.png'; the "
            "splits must not share images)",
        ),
    ],
)
def test_bad_labels_files_exit_2_naming_the_option_before_the_checkpoint_is_loaded(
    argv, message, tmp_path, capsys, monkeypatch
):
    from PIL import Image

    monkeypatch.setattr(command, "command_pretrained", lambda *a, **k: pytest.fail("loaded the checkpoint"))
    for colour in ("red", "blue"):
        (tmp_path / "train" / colour).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / colour / "0.png")
    (tmp_path / "flat").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / "flat" / f"{i}.png")
    files = {"labels": "0.png\tred\n", "purple": "0.png\tred\n1.png\tpurple\n", "header": "file\tclass\n0.png\tred\n"}
    files.update(one="0.png\tred\n1.png\tblue\n", both="1.png\tblue\n2.png\tred\n")
    paths = {"flat": str(tmp_path / "flat")}
    for name, content in files.items():
        (tmp_path / f"{name}.tsv").write_text(content)
        paths[name] = str(tmp_path / f"{name}.tsv")
    argv = [a.format(**paths) for a in argv]
    val = [] if "--val" in argv else ["--val", str(tmp_path / "flat"), "--val-labels", paths["one"]]
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--checkpoint", "/unused", "--train", str(tmp_path / "train"), *val, *argv])
    error = capsys.readouterr().err.splitlines()[-1]
    assert exit_info.value.code == 2 and message.format(**paths) in error


def test_one_flat_folder_may_give_two_splits_by_two_labels_files_that_share_no_image(tmp_path, monkeypatch):
    from PIL import Image

    for i, colour in enumerate(("red", "blue", "red", "blue")):
        (tmp_path / "train" / colour).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / colour / f"{i}.png")
        (tmp_path / "flat").mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "flat" / f"{i}.png")
    (tmp_path / "val.tsv").write_text("0.png\tred\n1.png\tblue\n")
    (tmp_path / "test.tsv").write_text("2.png\tred\n3.png\tblue\n")

    def loaded(args):
        raise RuntimeError("checked, loading")

    monkeypatch.setattr(command, "command_pretrained", loaded)
    with pytest.raises(RuntimeError, match="checked, loading"):  # (the one folder named twice was refused)
        flat, labels = str(tmp_path / "flat"), [str(tmp_path / "val.tsv"), str(tmp_path / "test.tsv")]
        command.main(
            ["--checkpoint", "/unused", "--train", str(tmp_path / "train"), "--val", flat, "--val-labels", labels[0]]
            + ["--test", flat, "--test-labels", labels[1]]
        )


def _parquet_split(folder, path, classes, *, labelled=True):
    """``folder``'s class sub-folders as one Hugging Face parquet file (Image struct, ClassLabel ``classes``), rows
    in the folder's order."""
    from tests.data.test_parquet import write_hf_parquet

    source = ImageClassFolder(folder, classes)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))
    labels = [classes.index(f.split("/")[0]) for f in files]
    assert labels == [source[i].label for i in range(len(source))]  # (the folder's order and ids)
    write_hf_parquet(path, [(folder / f).read_bytes() for f in files], labels, classes)
    if not labelled:
        import pyarrow.parquet as pq

        pq.write_table(pq.read_table(path).drop_columns(["label"]), path)
    return str(path)


def test_parquet_splits_probe_as_the_same_images_in_class_folders(export, tmp_path, monkeypatch, capsys):
    train, val, test = (
        _folders(tmp_path / name, "pairs", seed, 40) for name, seed in (("train", 1), ("val", 2), ("test", 3))
    )
    classes = ["blue", "green", "red"]
    files = {
        name: _parquet_split(d, tmp_path / f"{name}.parquet", classes) for name, d in zip(SPLITS, (train, val, test))
    }
    folders = command.main(["--checkpoint", str(export), "--train", str(train), "--val", str(val), "--test", str(test)])
    parquet = command.main(
        ["--checkpoint", str(export), "--train", files["train"], "--val", files["val"], "--test", files["test"]]
    )
    for key in ("l2", "val_accuracy", "test_accuracy", "test_mean_per_class_accuracy", "num_inputs", "classes"):
        assert parquet[key] == folders[key], key
    # refused before the checkpoint is loaded
    monkeypatch.setattr(command, "command_pretrained", lambda *a, **k: pytest.fail("loaded the checkpoint"))
    unlabelled = _parquet_split(val, tmp_path / "u.parquet", classes, labelled=False)
    from tests.data.test_parquet import png, write_hf_parquet

    write_hf_parquet(tmp_path / "minus.parquet", [png(1), png(2)], [-1, -1], classes)  # (Hugging Face's test split)
    # (another order of the same names: its class ids were taken as --train's, every image given another class)
    write_hf_parquet(tmp_path / "order.parquet", [png(1), png(2)], [0, 1], ["blue", "red", "green"])
    # (--train's classes named by its label column, sorted: the ClassLabel ids of --val were taken as those)
    from tests.data.test_parquet import _table

    named = _table(tmp_path, "named.parquet", {"image": [png(i) for i in range(3)], "label": ["red", "blue", "green"]})
    cases = [
        (
            ["--train", named, "--val", str(tmp_path / "order.parquet")],
            "argument --val: expected ClassLabel names in the order of --train's classes (its label names, sorted), "
            "got class id 1 named 'red' here and 'green' in --train",
        ),
        (
            ["--train", files["train"], "--val", str(tmp_path / "order.parquet")],
            "argument --val: expected the ClassLabel names of --train's files, in their id order, got class id 1 "
            "named 'red' here and 'green' in --train",
        ),
        (
            ["--train", files["train"], "--val", str(tmp_path / "minus.parquet")],
            "argument --val: expected labelled images, got every 'label' of the parquet files is -1 (Hugging Face's "
            "unlabelled split)",
        ),
        (["--train", files["train"], "--val", files["train"]], "argument --val: expected other files than --train's"),
        (["--train", files["train"], "--val", unlabelled], "argument --val: expected labelled images, got parquet"),
        (
            ["--train", files["train"], "--val", files["val"], "--val-labels", __file__],
            "argument --val-labels: not with",
        ),
        (["--train", str(train), "--val", str(val), "--image-key", "x"], "argument --image-key: for parquet --train"),
        (
            ["--train", files["train"], "--val", files["val"], "--label-key", "y"],
            "argument --label-key: expected a column",
        ),
        (
            ["--train", str(train), str(val), "--val", str(val)],
            "argument --train: expected one folder, or parquet files",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            command.main(["--checkpoint", "/unused", *argv])
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in error, (argv, error)


SPLITS = command.SPLITS


def _shard_split(folder, root, name, classes):
    """``folder``'s class sub-folders as CLIP_benchmark writes a split, ``root/name/{0,1}.tar`` (``.png`` and
    ``.cls`` members) with ``root/classnames.txt``, samples in the folder's order; returns the split folder."""
    from tests.data.test_wds import write_wds

    source = ImageClassFolder(folder, classes)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))
    labels = [classes.index(f.split("/")[0]) for f in files]
    assert labels == [source[i].label for i in range(len(source))]  # (the folder's order and ids)
    samples = [{"png": (folder / f).read_bytes(), "cls": str(label).encode()} for f, label in zip(files, labels)]
    write_wds(root, samples, split=name, classes=classes)
    return str(root / name)


def test_tar_shard_splits_probe_as_the_same_images_in_class_folders(export, tmp_path, monkeypatch, capsys):
    """CLIP_benchmark's wds_cifar10/train and /test (a val split beside): the classes of the root's classnames.txt,
    the report of the class folders."""
    train, val, test = (
        _folders(tmp_path / name, "pairs", seed, 40) for name, seed in (("train", 1), ("val", 2), ("test", 3))
    )
    classes = ["blue", "green", "red"]
    root = tmp_path / "wds_pairs"
    splits = {name: _shard_split(d, root, name, classes) for name, d in zip(SPLITS, (train, val, test))}
    folders = command.main(["--checkpoint", str(export), "--train", str(train), "--val", str(val), "--test", str(test)])
    shards = command.main(
        ["--checkpoint", str(export), "--train", splits["train"], "--val", f"{splits['val']}/{{0..1}}.tar"]
        + ["--test", splits["test"]]
    )
    for key in ("l2", "val_accuracy", "test_accuracy", "test_mean_per_class_accuracy", "num_inputs", "classes"):
        assert shards[key] == folders[key], key
    monkeypatch.setattr(command, "command_pretrained", lambda *a, **k: pytest.fail("loaded the checkpoint"))
    cases = [
        (["--train", splits["train"], "--val", splits["train"]], "argument --val: expected other files than --train's"),
        (
            ["--train", str(root), "--val", splits["val"]],
            "argument --train: expected a split's shards, got a dataset root",
        ),
        (
            ["--train", splits["train"], "--val", splits["val"], "--val-labels", __file__],
            "argument --val-labels: not with tar",
        ),
        (  # (a file read, or the dataset's class names, written over by the report)
            ["--train", splits["train"], "--val", splits["val"], "--json", f"{splits['val']}/0.tar"],
            "argument --json: expected another file than --val's",
        ),
        (
            ["--train", splits["train"], "--val", splits["val"], "--json", str(root / "classnames.txt")],
            "argument --json: expected another file than --train's",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            command.main(["--checkpoint", "/unused", *argv])
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in error.splitlines()[-1], (argv, error)
    (root / "classnames.txt").write_text("blue\ngreen\n")  # (a class id, 2, past its names)
    with pytest.raises(SystemExit):
        command.main(["--checkpoint", "/unused", "--train", splits["train"], "--val", splits["val"]])
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith(
            f"argument --train: expected a name for each class id of the shards, got 2 names (of {root}/classnames.txt) "
            "for class id 2 of 1.tar:s0000010"  # (the first red one: the folders sort blue, green, red)
        )
    )


def test_torchvision_cifar_splits_probe_as_the_same_images_in_class_folders(export, tmp_path, monkeypatch, capsys):
    """torchvision's cifar-10-batches-py, its data_batch_1 the train split, data_batch_2 the val split and test_batch
    the test split: the classes of its batches.meta, the features and labels of the class folders given to the probe,
    bit for bit (the probe, tested with folders, not fitted here: it took 6 s)."""
    from tests.data.test_torchvision_files import cifar_of, write_cifar100, write_mnist

    given = []

    def probe(*args, **kwargs):
        given.append(args)
        zeros = torch.zeros(3, 1)
        return LinearProbeResult(1.0, {1.0: 0.5}, 0.5, zeros, zeros[:, 0], zeros[:, 0], zeros[:, 0], 0.5, None)

    monkeypatch.setattr(command, "linear_probe", probe)

    train, val, test = (
        _folders(tmp_path / name, "pairs", seed, 40) for name, seed in (("train", 1), ("val", 2), ("test", 3))
    )
    classes = ["blue", "green", "red"]
    root = tmp_path / "cifar-10-batches-py"
    for folder, batch in zip((train, val, test), ("data_batch_1", "data_batch_2", "test_batch")):
        cifar_of(folder, root, classes, [batch])
    folders = command.main(["--checkpoint", str(export), "--train", str(train), "--val", str(val), "--test", str(test)])
    cifar = command.main(
        ["--checkpoint", str(export), "--train", str(root / "data_batch_1"), "--val", str(root / "data_batch_2")]
        + ["--test", str(root / "test_batch")]
    )
    assert cifar["classes"] == folders["classes"] == classes and cifar["num_inputs"] == folders["num_inputs"]
    assert len(given) == 2 and len(given[0][0][1]) > 10  # (train, val, test) of each run; train's labels
    for ours, theirs in zip(given[1], given[0]):  # (train, val, test): features and labels
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    # CIFAR-100's train split is one file: its rows give --train and --val
    hundred = write_cifar100(tmp_path / "cifar-100-python")
    rows = command.main(
        ["--checkpoint", str(export), "--train", f"{hundred}/train[:3]", "--val", f"{hundred}/train[3:]"]
        + ["--test", str(hundred / "test")]
    )
    assert rows["num_inputs"] == {"train": 3, "val": 2, "test": 3} and len(rows["classes"]) == 100
    assert given[-1][0][1].tolist() == [97, 0, 3]  # (train's labels: rows 0..2 of the file)
    monkeypatch.setattr(command, "command_pretrained", lambda *a, **k: pytest.fail("loaded the checkpoint"))
    batches = ["--train", str(root / "data_batch_1"), "--val", str(root / "data_batch_2")]
    raw = write_mnist(tmp_path / "mnist")
    (tmp_path / "linked").symlink_to(hundred)
    cases = [
        (
            ["--train", str(root / "data_batch_1"), "--val", str(root / "data_batch_1")],
            f"argument --val: expected other images than --train's, got rows 0..15 of {root}/data_batch_1 (the splits "
            "must not share images)",
        ),
        (
            ["--train", str(root), "--val", str(root / "data_batch_2")],
            f"argument --train: expected a split's files, got the dataset folder {root}: give its files, e.g. "
            "data_batch_1 ... data_batch_4, and data_batch_5 for --val",
        ),
        ([*batches, "--val-labels", __file__], "argument --val-labels: not with torchvision's --val"),
        (
            ["--train", f"{hundred}/train[:3]", "--val", f"{hundred}/train[2:]"],
            f"argument --val: expected other images than --train's, got rows 2..2 of {hundred}/train (the splits "
            "must not share images)",
        ),
        (
            ["--train", str(hundred), "--val", f"{hundred}/train[2:]"],
            f"argument --train: expected a split's files, got the dataset folder {hundred}: give its files, e.g. "
            "'train[:45000]', and 'train[45000:]' for --val",
        ),
        (  # (the same file through a linked folder: the same rows)
            ["--train", f"{hundred}/train[:3]", "--val", f"{tmp_path}/linked/train[2:]"],
            f"argument --val: expected other images than --train's, got rows 2..2 of {tmp_path}/linked/train (the "
            "splits must not share images)",
        ),
        (
            ["--train", str(root / "data_batch_1"), f"{root}/data_batch_9*", "--val", str(root / "data_batch_2")],
            f"argument --train: expected torchvision's CIFAR or MNIST files, got '{root}/data_batch_9*': no file "
            "matches it",
        ),
        ([*batches, "--json", str(root / "data_batch_2")], "argument --json: expected another file than --val's"),
        ([*batches, "--json", str(root / "batches.meta")], "argument --json: expected another file than --train's"),
        (
            [*batches, "--test", str(raw / "t10k-images-idx3-ubyte")],
            "argument --test: expected class ids among the 3 classes, 0..2, got 4 at row 0 of "
            f"{raw}/t10k-labels-idx1-ubyte (the classes of --train)",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            command.main(["--checkpoint", "/unused", *argv])
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in error.splitlines()[-1], (argv, error)
