"""Fine-tuned classifiers: the recipe's export, load_classifier, and the ``torchflava.classify`` command."""

import json
import os
from pathlib import Path
import re
import shutil
import signal
from typing import Iterable, Sequence

from PIL import Image
import pytest
import safetensors.torch
from safetensors.torch import load_file, save_file
import torch

from tests.helpers import TINY_FLAVA, load_recipe, write_tiny_export
from torchflava.classify import (
    CLASSIFIER_CONFIG,
    LABELS_FILE,
    export_classifier,
    load_classifier,
    main,
)
from torchflava.data.finetuning import ShapesClassification
from torchflava.data.shapes import ShapesWorld
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import EvalImageTransform
from torchflava.evaluation import percent
from torchflava.models import flava_model
from torchflava.models.flava import flava_model_for_classification
from torchflava.pretrained import load_pretrained
from torchflava.training.config import load_config
from torchflava.utils.cli import run_command

finetune = load_recipe("examples/flava/finetune.py", "flava_finetune_recipe_for_classify")


def _finetune(export: Path, out: Path, *overrides: str) -> dict:
    cfg = load_config(
        finetune.FinetuneConfig,
        [
            f"model.pretrained={export}",
            f"training.output_dir={out}",
            "training.max_steps=12",
            "training.global_batch_size=16",
            "training.log_every=4",
            "training.checkpoint_every=12",
            "training.progress_bar=false",
            "training.tensorboard=false",
            "optim.lr=3e-3",
            "optim.warmup_steps=2",
            "model.classifier_hidden_dim=16",
            "model.classifier_dropout=0.0",
            *overrides,
        ],
    )
    return finetune.main(cfg)


def _write_tsv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """Write a GLUE-style TSV: the header ``columns`` (no header row when empty), then each row's fields
    tab-separated, one row a line. Returns ``path``."""
    lines = ["\t".join(columns)] if columns else []
    lines += ["\t".join(str(field) for field in row) for row in rows]
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


SHAPES = (
    "data.task=shapes",
    "data.shapes_train=64",
    "data.shapes_val=40",
    "data.image_size=32",
    "model.modality=image",
)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    write_tiny_export(root)
    return root


@pytest.fixture(scope="module")
def image_run(pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("image_run")
    return out, _finetune(pretrained, out, *SHAPES)


@pytest.fixture(scope="module")
def text_run(pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("text_run")
    world = ShapesWorld("texts", 60, image_size=32, seed=2)
    rows = [(world.caption(i), world.scene(i).size) for i in range(60)]
    for name in ("train.tsv", "dev.tsv"):
        _write_tsv(out / name, ["sentence", "label"], rows)
    report = _finetune(
        pretrained,
        out / "run",
        "data.task=glue",
        f"data.train={out / 'train.tsv'}",
        f"data.val={out / 'dev.tsv'}",
        "data.labels=[large,small]",
        "model.modality=text",
        "data.max_text_length=20",
    )
    return out / "run", report, [t for t, _ in rows]


def test_a_fine_tuned_run_loads_back_and_predicts_as_its_validation_did(image_run):
    out, report = image_run
    classifier = load_classifier(out)  # the run directory: its model/ export
    val = ShapesClassification("test", 40, image_size=32)
    assert classifier.labels == list(val.classes) and len(classifier.labels) == 30
    assert classifier.kwargs == {
        "num_classes": 30,
        "modality": "image",
        "loss": "cross_entropy",
        "classifier_hidden_dim": 16,
        "classifier_dropout": 0.0,
    }
    assert not classifier.model.training
    scores = classifier.scores([val[i].image for i in range(len(val))])
    assert scores.shape == (40, 30)
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(40))  # probabilities
    labels = torch.tensor([val[i].label for i in range(len(val))])
    accuracy = (scores.argmax(dim=1) == labels).float().mean().item()
    assert accuracy == pytest.approx(report["validation"]["accuracy"], abs=1e-6)
    assert (out / "loss_curve.png").stat().st_size > 0  # fine-tuning draws its curve, as pretraining does


def test_the_export_is_also_a_backbone_for_load_pretrained_and_flava_model(image_run):
    out, _ = image_run
    classifier = load_classifier(out / "model")
    backbone = load_pretrained(out).model  # the classifier's head skipped, as a pretraining head is
    rebuilt = flava_model(pretrained=out / "model")
    for name, value in classifier.model.model.state_dict().items():
        assert torch.equal(backbone.state_dict()[name], value), name
        assert torch.equal(rebuilt.state_dict()[name], value), name


def test_a_fine_tuned_run_fine_tunes_again_from_its_export(image_run, tmp_path):
    out, _ = image_run
    report = _finetune(
        out, tmp_path / "again", *SHAPES, "training.max_steps=2", "training.checkpoint_every=2", "optim.warmup_steps=0"
    )
    assert report["steps"] == 2 and report["num_classes"] == 30


def test_the_text_export_keeps_the_trained_text_length_and_the_command_classifies_texts(text_run, tmp_path, capsys):
    run, report, texts = text_run
    classifier = load_classifier(run)
    assert classifier.tokenizer.model_max_length == 20
    assert classifier.labels == ["large", "small"]
    (tmp_path / "more.txt").write_text("\n".join(texts[1:4]) + "\n\n")
    result = main(
        ["--checkpoint", str(run), "--text", texts[0], f"@{tmp_path / 'more.txt'}", "--json", str(tmp_path / "r.json")]
    )
    assert [p["text"] for p in result["predictions"]] == texts[:4]
    expected = classifier.scores(texts=texts[:4])
    for record, row in zip(result["predictions"], expected):
        assert [name for name, _ in record["top"]] == [classifier.labels[i] for i in row.argsort(descending=True)]
        assert [score for _, score in record["top"]] == pytest.approx(sorted(row.tolist(), reverse=True), abs=1e-6)
    assert json.loads((tmp_path / "r.json").read_text()) == result
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{texts[0]}\t") and printed[-1] == "4 inputs, 0 unreadable skipped"


def test_the_command_reports_accuracy_on_class_folders_and_skips_unreadable_images(image_run, tmp_path, capsys):
    out, _ = image_run
    classifier = load_classifier(out)
    val = ShapesClassification("test", 12, image_size=32)
    for i in range(12):
        folder = tmp_path / "images" / classifier.labels[val[i].label]
        folder.mkdir(parents=True, exist_ok=True)
        val[i].image.save(folder / f"{i}.png")
    (tmp_path / "images" / classifier.labels[0]).mkdir(exist_ok=True)
    (tmp_path / "images" / classifier.labels[0] / "broken.png").write_bytes(b"not a png")
    result = main(["--checkpoint", str(out), "--images", str(tmp_path / "images"), "--top-k", "2", "--batch-size", "5"])
    assert result["num_inputs"] == 12 and result["skipped"] == 1 and "broken.png" in result["skipped_reasons"][0]
    assert all(len(record["top"]) == 2 for record in result["predictions"])
    images = [val[i].image for i in range(12)]
    predicted = classifier.scores(images).argmax(dim=1)
    truth = torch.tensor([val[i].label for i in range(12)])
    assert result["accuracy"] == pytest.approx((predicted == truth).float().mean().item())
    assert result["chance"] == pytest.approx(1 / 30)
    # top-5 past 5 classes, whatever --top-k keeps, as zero_shot and linear_probe report it (classify did not)
    top5 = (classifier.logits(images).topk(5, dim=1).indices == truth[:, None]).any(dim=1).double().mean().item()
    assert result["top5_accuracy"] == pytest.approx(top5)
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"12 inputs, 1 unreadable skipped; accuracy {percent(result['accuracy'])} (chance 3.3%), mean per class "
        f"{percent(result['mean_per_class_accuracy'])}, top-5 {percent(top5)}"
    )


def test_bf16_classifier_agrees_with_fp32(image_run):
    out, _ = image_run
    images = [ShapesClassification("test", 8, image_size=32)[i].image for i in range(8)]
    fp32 = load_classifier(out).scores(images)
    bf16 = load_classifier(out, dtype=torch.bfloat16).scores(images)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, atol=0.03, rtol=0)


def _tiny_classifier(**kwargs):
    return flava_model_for_classification(3, backbone=flava_model(**TINY_FLAVA), classifier_hidden_dim=8, **kwargs)


def test_export_refuses_a_head_no_config_rebuilds_and_labels_that_do_not_name_each_class(tmp_path):
    model = _tiny_classifier(modality="image")
    tokenizer = WordPieceTokenizer.train(["a red circle", "a blue square"], vocab_size=40)
    args = dict(backbone_kwargs=TINY_FLAVA, tokenizer=tokenizer, image_transform=EvalImageTransform(32))
    with pytest.raises(ValueError, match=r"^labels must name each of the head's 3 classes once, got 2 names"):
        export_classifier(model, tmp_path / "a", labels=["x", "y"], **args)
    with pytest.raises(ValueError, match=r"1 repeated"):
        export_classifier(model, tmp_path / "a", labels=["x", "y", "x"], **args)
    with pytest.raises(TypeError, match=r"^labels must be a list of non-empty str"):
        export_classifier(model, tmp_path / "a", labels=["x", "", "z"], **args)
    model.classifier = torch.nn.Linear(32, 3)
    with pytest.raises(ValueError, match=r"^model.classifier must be classification_head's .* got \['Linear'\]"):
        export_classifier(model, tmp_path / "a", labels=["x", "y", "z"], **args)
    assert not (tmp_path / "a").exists()  # nothing written


def test_export_refuses_backbone_kwargs_that_do_not_build_the_models_backbone(tmp_path):
    model = _tiny_classifier(modality="image")
    tokenizer = WordPieceTokenizer.train(["a red circle", "a blue square"], vocab_size=40)
    args = dict(tokenizer=tokenizer, image_transform=EvalImageTransform(32), labels=["x", "y", "z"])
    cases = [  # each was written, and the export then failed to load
        ({**TINY_FLAVA, "image_num_layers": 1}, r"whose 12 tensors differ, first image_encoder.encoder.layers.1.attn"),
        (
            {},
            r"whose \d+ tensors differ, first image_encoder.embeddings.cls_token: \(1, 1, 768\) for the model's \(1, 1, 32\)$",
        ),
    ]
    for backbone_kwargs, message in cases:
        with pytest.raises(
            ValueError, match=r"^backbone_kwargs must be the flava_model arguments of the model's backbone .*" + message
        ):
            export_classifier(model, tmp_path / "a", backbone_kwargs=backbone_kwargs, **args)
    with pytest.raises(
        ValueError, match=r"^backbone_kwargs: flava_model\(\) got an unexpected keyword argument 'bogus'$"
    ):
        export_classifier(model, tmp_path / "a", backbone_kwargs={**TINY_FLAVA, "bogus": 1}, **args)
    with pytest.raises(TypeError, match=r"^backbone_kwargs must be a dict of flava_model arguments, got list$"):
        export_classifier(model, tmp_path / "a", backbone_kwargs=[], **args)
    assert not (tmp_path / "a").exists()  # nothing written
    export_classifier(model, tmp_path / "a", backbone_kwargs=TINY_FLAVA, **args)
    assert load_classifier(tmp_path / "a").labels == ["x", "y", "z"]


def test_load_classifier_names_what_is_wrong_before_reading_weights(image_run, pretrained, tmp_path, monkeypatch):
    out, _ = image_run
    with pytest.raises(FileNotFoundError, match=r"holds no classification_config.json; expected a fine-tuned"):
        load_classifier(pretrained)  # a pretraining export
    with pytest.raises(ValueError, match=r"^dtype must be one of"):
        load_classifier(out, dtype=torch.float16)
    copy = tmp_path / "copy"
    shutil.copytree(out / "model", copy)
    monkeypatch.setattr("torchflava.classify.load_state_dict", lambda path: pytest.fail("weights read"))
    monkeypatch.setattr("torchflava.classify.load_pretrained", lambda path: pytest.fail("weights read"))
    config = json.loads((copy / CLASSIFIER_CONFIG).read_text())
    cases = [
        (CLASSIFIER_CONFIG, {**config, "classifier_dropout": 1.5}, r"classification_config.json: classifier_dropout"),
        (CLASSIFIER_CONFIG, {**config, "hidden": 3}, r"classification_config.json: expected the arguments num_classes"),
        (CLASSIFIER_CONFIG, {**config, "modality": "audio"}, r"classification_config.json: modality must be one of"),
        (LABELS_FILE, ["a", "b"], r"labels.json must name each of the head's 30 classes once, got 2 names"),
        (LABELS_FILE, {"0": "a"}, r"labels.json must be a list of non-empty str"),
    ]
    for name, value, message in cases:
        saved = (copy / name).read_text()
        (copy / name).write_text(json.dumps(value))
        with pytest.raises(ValueError, match=message):
            load_classifier(copy)
        (copy / name).write_text(saved)
    (copy / LABELS_FILE).write_text("[not json")
    with pytest.raises(ValueError, match=r"labels.json is not a JSON list of class names"):
        load_classifier(copy)


def test_head_weights_that_do_not_fit_the_config_are_refused_naming_the_keys_before_reading_them(
    image_run, tmp_path, monkeypatch
):
    out, _ = image_run
    copy = tmp_path / "copy"
    shutil.copytree(out / "model", copy)
    config = json.loads((copy / CLASSIFIER_CONFIG).read_text())
    weights = copy / "flava_classification.safetensors"
    tensors = load_file(weights)
    monkeypatch.setattr("torchflava.classify.load_state_dict", lambda path: pytest.fail("weights read"))
    monkeypatch.setattr("torchflava.classify.load_pretrained", lambda path: pytest.fail("weights read"))
    head = r"missing 0 key\(s\) \[\], unexpected 0 key\(s\) \[\], wrong "
    cases = [  # (classification_config.json, the weights' head, the message after the weights file's name)
        ({**config, "classifier_hidden_dim": 24}, {}, head + r"3 \['classifier.0.bias \[16\] for \[24\]'"),
        # a head far too large to build: refused from the file's header, not by the allocator
        (
            {**config, "classifier_hidden_dim": 10**12},
            {},
            head + r"3 \['classifier.0.bias \[16\] for \[1000000000000\]'",
        ),
        (config, {"classifier.5.weight": torch.zeros(3)}, r"unexpected 1 key\(s\) \['classifier.5.weight'\]"),
        (config, {"classifier.3.bias": None}, r"missing 1 key\(s\) \['classifier.3.bias'\]"),
        (config, {"classifier.3.bias": torch.zeros(30, dtype=torch.int64)}, r"classifier.3.bias torch.int64 for a"),
    ]
    for kwargs, change, message in cases:
        (copy / CLASSIFIER_CONFIG).write_text(json.dumps(kwargs))
        changed = {k: v for k, v in {**tensors, **change}.items() if v is not None}
        save_file(changed, weights)
        with pytest.raises(
            ValueError, match=r"^classifier: .*flava_classification.safetensors does not match the model: .*" + message
        ) as error:
            load_classifier(copy)
        assert str(error.value).endswith(f"The head is built from {copy / CLASSIFIER_CONFIG}.")


def test_the_command_refuses_inputs_the_classifier_does_not_read_before_loading_it(
    image_run, text_run, tmp_path, monkeypatch, capsys
):
    out, _ = image_run
    run, _, _ = text_run
    monkeypatch.setattr("torchflava.classify.load_classifier", lambda *a, **k: pytest.fail("loaded"))
    (tmp_path / "images").mkdir()
    cases = [
        (
            ["--checkpoint", str(out), "--text", "a red circle"],
            "this classifier (modality 'image') reads --images DIR, got --text",
        ),
        (
            ["--checkpoint", str(run), "--images", str(tmp_path / "images")],
            "(modality 'text') reads --text, got --images DIR",
        ),
        (["--checkpoint", str(run), "--text", "x", "--images", str(tmp_path)], "argument --text: not with --images"),
        (["--checkpoint", str(run)], "arguments --images or --text: one is required"),
        (["--checkpoint", str(run), "--text", "@" + str(tmp_path / "none.txt")], "argument --text: expected @FILE"),
        (["--checkpoint", str(run), "--text", " "], "argument --text: expected non-empty texts"),
        (["--checkpoint", str(out), "--images", str(tmp_path / "images")], "argument --images: "),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_a_vqa_style_multimodal_classifier_scores_each_answer_by_sigmoid_through_the_command(pretrained, tmp_path):
    world = ShapesWorld("pairs", 24, image_size=32, seed=5)
    (tmp_path / "images").mkdir()
    answers = ["red", "green", "blue", "yellow", "purple", "orange"]
    lines = []
    for i in range(24):
        world[i].image.save(tmp_path / "images" / f"{i}.png")
        lines.append({"image": f"{i}.png", "text": "what colour?", "answers": {world.scene(i).colour: 1.0}})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = _finetune(
        pretrained,
        tmp_path / "run",
        "data.task=image_text",
        f"data.train={tmp_path / 'train.jsonl'}",
        f"data.val={tmp_path / 'train.jsonl'}",
        f"data.image_root={tmp_path / 'images'}",
        f"data.labels=[{','.join(answers)}]",
        "model.modality=multimodal",
    )
    assert report["loss"] == "binary_cross_entropy"
    argv = ["--checkpoint", str(tmp_path / "run"), "--images", str(tmp_path / "images")]
    result = main([*argv, "--captions", str(tmp_path / "train.jsonl"), "--text-key", "text", "--top-k", "6"])
    assert [(r["image"], r["text"]) for r in result["predictions"]] == [(f"{i}.png", "what colour?") for i in range(24)]
    classifier = load_classifier(tmp_path / "run")
    scores = classifier.scores([world[i].image for i in range(3)], ["what colour?"] * 3)
    assert bool(((scores > 0) & (scores < 1)).all()) and not torch.allclose(scores.sum(dim=1), torch.ones(3))
    for record, row in zip(result["predictions"], scores):
        assert dict(record["top"]) == pytest.approx(dict(zip(answers, row.tolist())), abs=1e-6)
    with pytest.raises(
        ValueError, match=r"^images and texts: expected as many images as texts \(pairs\), got 3 and 2$"
    ):
        classifier.scores([world[i].image for i in range(3)], ["a", "b"])
    with pytest.raises(ValueError, match=r"^images and texts: expected at least one input, got none$"):
        classifier.scores([], [])
    with pytest.raises(ValueError, match=r"^images: expected at least one input, got none$"):  # (texts has one)
        classifier.scores([], ["what colour?"])
    with pytest.raises(ValueError, match=r"reads images and texts, got images"):
        classifier.scores([world[0].image])
    with pytest.raises(TypeError, match=r"^texts must be a sequence of str, got str$"):
        classifier.scores([world[0].image], "what colour?")


def test_a_regression_exports_no_class_names_and_the_command_prints_its_values(pretrained, tmp_path, capsys):
    world = ShapesWorld("texts", 40, image_size=32, seed=6)
    rows = [(world.caption(i), 5.0 if world.scene(i).size == "large" else 1.0) for i in range(40)]
    _write_tsv(tmp_path / "train.tsv", ["sentence", "score"], rows)
    args = (f"data.train={tmp_path / 'train.tsv'}", f"data.val={tmp_path / 'train.tsv'}", "data.label_column=score")
    report = _finetune(pretrained, tmp_path / "run", "data.task=glue", *args, "data.labels=null", "model.modality=text")
    assert report["loss"] == "mse"
    assert not (tmp_path / "run" / "model" / LABELS_FILE).exists()
    classifier = load_classifier(tmp_path / "run")
    assert classifier.labels is None and classifier.kwargs["num_classes"] == 1
    capsys.readouterr()  # (the recipe's report)
    result = main(["--checkpoint", str(tmp_path / "run"), "--text", world.caption(0), world.caption(1)])
    values = classifier.scores(texts=[world.caption(0), world.caption(1)])
    assert [r["prediction"][0] for r in result["predictions"]] == pytest.approx(values[:, 0].tolist(), abs=1e-6)
    assert capsys.readouterr().out.splitlines()[0] == f"{world.caption(0)}\t{values[0, 0].item():.4g}"
    # a GLUE TSV (STS-B style): each row's value, and the correlations with the label column's
    texts = [world.caption(i) for i in range(6)]
    truth = [1.0, 2.0, 2.0, 4.0, 5.0, 3.5]
    _write_tsv(tmp_path / "dev.tsv", ["sentence", "score"], zip(texts, truth))
    out = tmp_path / "sts.tsv"
    result = main(
        [
            "--checkpoint",
            str(tmp_path / "run"),
            "--tsv",
            str(tmp_path / "dev.tsv"),
            "--out",
            str(out),
            "--label-column",
            "score",
        ]
    )
    values = classifier.scores(texts=texts)[:, 0].double()
    assert out.read_text() == "index\tprediction\n" + "".join(f"{i}\t{v:.6g}\n" for i, v in enumerate(values.tolist()))
    import numpy as np
    from scipy import stats

    assert result["pearson"] == pytest.approx(np.corrcoef(values.numpy(), truth)[0, 1], abs=1e-9)
    assert result["spearman"] == pytest.approx(stats.spearmanr(values.numpy(), truth).statistic, abs=1e-9)


@pytest.fixture(scope="module")
def regression_run(pretrained, tmp_path_factory):
    """An STS-B style regression fine-tuned on the label column ``score``: the run, its texts."""
    out = tmp_path_factory.mktemp("regression_run")
    world = ShapesWorld("texts", 40, image_size=32, seed=6)
    rows = [(world.caption(i), 5.0 if world.scene(i).size == "large" else 1.0) for i in range(40)]
    _write_tsv(out / "train.tsv", ["sentence", "score"], rows)
    args = (f"data.train={out / 'train.tsv'}", f"data.val={out / 'train.tsv'}", "data.label_column=score")
    _finetune(pretrained, out / "run", "data.task=glue", *args, "data.labels=null", "model.modality=text")
    return out / "run", [text for text, _ in rows]


def test_a_tsv_is_scored_on_the_label_column_the_run_fine_tuned_on(regression_run, tmp_path):
    """The command read the run's data.text_columns but not its data.label_column: an STS-B dev file (label
    column ``score``) got no correlations, silently, unless --label-column was given again."""
    run, texts = regression_run
    _write_tsv(tmp_path / "dev.tsv", ["sentence", "score"], zip(texts[:6], [1.0, 2.0, 2.0, 4.0, 5.0, 3.5]))
    dev = ["--checkpoint", str(run), "--tsv", str(tmp_path / "dev.tsv")]
    result = main([*dev, "--out", str(tmp_path / "a.tsv")])
    stated = main([*dev, "--out", str(tmp_path / "b.tsv"), "--label-column", "score"])
    assert set(result) == {"num_inputs", "out", "skipped", "skipped_reasons", "pearson", "spearman"}
    assert (result["pearson"], result["spearman"]) == (stated["pearson"], stated["spearman"])
    assert -1 <= result["pearson"] <= 1
    # a label column the file lacks, stated: read as a test file (no labels, no correlations)
    result = main([*dev, "--out", str(tmp_path / "c.tsv"), "--label-column", "label"])
    assert set(result) == {"num_inputs", "out", "skipped", "skipped_reasons"}


def test_an_undefined_correlation_is_null_in_the_json_not_an_error_after_the_predictions(
    regression_run, tmp_path, capsys
):
    """Constant labels (or predictions) leave Pearson and Spearman undefined: the command wrote the
    predictions, printed nan, then failed writing --json (nan is no JSON) with exit 2 and no file."""
    run, texts = regression_run
    _write_tsv(tmp_path / "dev.tsv", ["sentence", "score"], [(text, 3.0) for text in texts[:4]])
    out, report = tmp_path / "p.tsv", tmp_path / "r.json"
    capsys.readouterr()
    argv = ["--checkpoint", str(run), "--tsv", str(tmp_path / "dev.tsv"), "--out", str(out), "--json", str(report)]
    argv += ["--label-column", "score"]
    expected = {"num_inputs": 4, "out": str(out), "skipped": 0, "skipped_reasons": [], "pearson": None}
    expected["spearman"] = None
    assert main(argv) == expected
    assert json.loads(report.read_text()) == expected
    assert (
        capsys.readouterr().out == f"4 rows classified into {out}; Pearson nan, Spearman nan\n"
    )  # (as the recipe prints it)
    assert len(out.read_text().splitlines()) == 5


def test_a_dev_file_without_a_header_is_read_by_the_columns_the_run_named(pretrained, tmp_path, capsys):
    """CoLA's dev.tsv has no header row: the run read it by data.columns, but the command could not read it at
    all (its error asked for the columns to be named, which it had no way to), so no accuracy for CoLA."""
    world = ShapesWorld("texts", 40, image_size=32, seed=8)
    rows = [("gj04", int(world.scene(i).size == "large"), "", world.caption(i)) for i in range(40)]
    _write_tsv(tmp_path / "dev.tsv", [], rows)
    report = _finetune(
        pretrained,
        tmp_path / "run",
        "data.task=glue",
        f"data.train={tmp_path / 'dev.tsv'}",
        f"data.val={tmp_path / 'dev.tsv'}",
        "data.columns=[source,label,original_label,sentence]",
        "data.labels=['0','1']",
        "model.modality=text",
    )
    capsys.readouterr()  # (the recipe's report)
    run = ["--checkpoint", str(tmp_path / "run")]
    result = main([*run, "--tsv", str(tmp_path / "dev.tsv"), "--out", str(tmp_path / "dev_predictions.tsv")])
    assert result["num_inputs"] == 40
    # CoLA's metric is Matthews correlation: the command printed accuracy alone; it now gives the report's metrics
    # of the same rows, to the last digit
    metrics = {k: report["validation"][k] for k in ("accuracy", "matthews", "f1")}
    assert {k: result[k] for k in metrics} == metrics
    # CoLA's test.tsv has a header (index, sentence): read by it, as before
    _write_tsv(tmp_path / "test.tsv", ["index", "sentence"], [(i + 5, row[3]) for i, row in enumerate(rows[:3])])
    result = main([*run, "--tsv", str(tmp_path / "test.tsv"), "--out", str(tmp_path / "test_predictions.tsv")])
    predicted = (tmp_path / "dev_predictions.tsv").read_text().splitlines()[1:4]
    expected = [f"{i + 5}\t{line.split()[1]}" for i, line in enumerate(predicted)]
    assert (tmp_path / "test_predictions.tsv").read_text().splitlines() == ["index\tprediction", *expected]
    # a file that reads neither way is named by its header's error
    _write_tsv(tmp_path / "bad.tsv", ["index", "text"], [(0, "a red circle")])
    with pytest.raises(SystemExit):
        main([*run, "--tsv", str(tmp_path / "bad.tsv"), "--out", str(tmp_path / "p.tsv")])
    assert f"{tmp_path / 'bad.tsv'}: missing column(s) ['sentence']" in capsys.readouterr().err


def test_a_bad_backbone_config_is_named_not_the_head_config(image_run, tmp_path):
    out, _ = image_run
    copy = tmp_path / "copy"
    shutil.copytree(out / "model", copy)
    backbone = json.loads((copy / "backbone_config.json").read_text())
    (copy / "backbone_config.json").write_text(json.dumps({**backbone, "image_num_heads": 5}))
    with pytest.raises(ValueError, match=r"^classifier: .*/backbone_config.json: flava_model: image_embed_dim must be"):
        load_classifier(copy)


def test_labels_json_nested_too_deeply_or_null_is_refused_naming_it(image_run, tmp_path):
    out, _ = image_run
    copy = tmp_path / "copy"
    shutil.copytree(out / "model", copy)
    (copy / LABELS_FILE).write_text("[" * 100_000 + "]" * 100_000)  # was a RecursionError
    with pytest.raises(ValueError, match=r"labels.json is not a JSON list of class names \(maximum recursion"):
        load_classifier(copy)
    (copy / LABELS_FILE).write_text("null")  # was read as no labels.json: class ids instead of the names
    with pytest.raises(ValueError, match=r"labels.json must be a list of non-empty str \(the class names\), got null$"):
        load_classifier(copy)


def test_scores_takes_any_ordered_iterable_and_names_the_argument_otherwise(image_run, text_run):
    out, _ = image_run
    images = [ShapesClassification("test", 3, image_size=32)[i].image for i in range(3)]
    classifier = load_classifier(out)
    torch.testing.assert_close(classifier.scores(image for image in images), classifier.scores(images))
    run, _, texts = text_run
    classifier = load_classifier(run)
    torch.testing.assert_close(classifier.scores(texts=iter(texts[:2])), classifier.scores(texts=texts[:2]))
    for value, got in [(5, "int"), ({"a": 1}, "dict"), ({"a", "b"}, "set"), ([b"a"], "list holding bytes")]:
        with pytest.raises(TypeError, match=rf"^texts must be a sequence of str, got {got}$"):
            classifier.scores(texts=value)


def test_the_command_names_why_when_no_input_is_readable(image_run, tmp_path):
    out, _ = image_run
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(
        ValueError, match=r"^argument --images: expected a readable input, got none \(1 unreadable: broken.png: .+\)$"
    ):
        main(["--checkpoint", str(out), "--images", str(tmp_path / "images")])


def test_a_stated_text_length_beyond_the_models_positions_truncates_at_its_positions(text_run, tmp_path):
    run, _, _ = text_run
    copy = tmp_path / "copy"
    shutil.copytree(run / "model", copy)
    tokenizer_config = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "model_max_length": 100_000}))
    classifier = load_classifier(copy)
    positions = json.loads((copy / "backbone_config.json").read_text())["max_seq_len"]
    assert classifier.tokenizer.model_max_length == positions == 32
    long = "a red circle " * 200  # was: "input_ids has length 602, more than the 32 learned positions"
    ids = classifier.tokenizer([long])[0]
    assert ids.shape == (1, 32)
    assert classifier.scores(texts=[long]).shape == (1, 2)


def test_text_at_file_refuses_a_fifo_without_waiting_and_drops_a_bom(text_run, tmp_path, capsys):
    run, _, texts = text_run
    os.mkfifo(tmp_path / "fifo")

    def waited(signum, frame):
        raise TimeoutError("read the FIFO: waited for a writer")

    previous = signal.signal(signal.SIGALRM, waited)  # (a guard: the old code waited forever)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["--checkpoint", str(run), "--text", f"@{tmp_path / 'fifo'}"])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert exit_.value.code == 2
    assert f"argument --text: expected @FILE naming a UTF-8 text file, got '@{tmp_path / 'fifo'}' (not a file)" in (
        capsys.readouterr().err
    )
    (tmp_path / "bom.txt").write_text(f"{texts[0]}\n{texts[1]}\n", encoding="utf-8-sig")  # as Windows' Notepad saves
    result = main(["--checkpoint", str(run), "--text", f"@{tmp_path / 'bom.txt'}"])
    assert [record["text"] for record in result["predictions"]] == texts[:2]


def test_the_head_alone_is_read_a_second_time_and_a_non_finite_head_is_refused_by_the_first(
    image_run, tmp_path, monkeypatch
):
    out, _ = image_run
    reference = load_classifier(out).scores([ShapesClassification("test", 2, image_size=32)[i].image for i in range(2)])
    with monkeypatch.context() as patch:  # the backbone is read by load_pretrained, the head from the header on
        patch.setattr("torchflava.classify.load_state_dict", lambda path: pytest.fail("whole weights read again"))
        again = load_classifier(out).scores([ShapesClassification("test", 2, image_size=32)[i].image for i in range(2)])
    assert torch.equal(again, reference)
    copy = tmp_path / "copy"
    shutil.copytree(out / "model", copy)
    tensors = safetensors.torch.load_file(copy / "flava_classification.safetensors")
    tensors["classifier.3.bias"][1] = float("nan")
    safetensors.torch.save_file(tensors, copy / "flava_classification.safetensors")
    with pytest.raises(
        ValueError, match=r"safetensors: expected finite weights, got NaN .* first \['classifier.3.bias'\]"
    ):
        load_classifier(copy)


def test_a_text_holding_a_tab_or_line_break_is_printed_quoted_on_one_line(text_run, capsys):
    run, _, texts = text_run
    capsys.readouterr()
    result = main(["--checkpoint", str(run), "--text", f"{texts[0]}\twith a tab", f"two\nlines {texts[1]}"])
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3  # two inputs and the summary
    assert printed[0].startswith(repr(f"{texts[0]}\twith a tab") + "\t")
    assert printed[1].startswith(repr(f"two\nlines {texts[1]}") + "\t")
    assert result["predictions"][1]["text"] == f"two\nlines {texts[1]}"  # the JSON keeps the text as given


def test_an_interrupted_export_reads_as_not_a_classifier_saying_so(image_run, tmp_path):
    out, _ = image_run
    shutil.copytree(out / "model", tmp_path / "cut")
    (tmp_path / "cut" / CLASSIFIER_CONFIG).unlink()  # written last: a kill before it leaves the rest
    with pytest.raises(FileNotFoundError, match=r"got a pretrained FLAVA checkpoint \(or an export cut short before"):
        load_classifier(tmp_path / "cut")


def test_folders_naming_no_class_get_a_warning_and_named_ones_a_mean_per_class_accuracy(image_run, tmp_path, capsys):
    """Folders named otherwise than the classes (red_circle for 'red circle') gave no accuracy and no reason."""
    out, _ = image_run
    classifier = load_classifier(out)
    val = ShapesClassification("test", 6, image_size=32)
    for i in range(6):
        (tmp_path / "odd" / f"folder_{i % 2}").mkdir(parents=True, exist_ok=True)
        val[i].image.save(tmp_path / "odd" / f"folder_{i % 2}" / f"{i}.png")
    capsys.readouterr()
    result = main(["--checkpoint", str(out), "--images", str(tmp_path / "odd")])
    assert "accuracy" not in result
    assert result["warning"].startswith(
        "warning: no accuracy: the image sub-folders ['folder_0', 'folder_1'] match none"
    )
    assert result["warning"] in capsys.readouterr().err
    named = tmp_path / "named"
    for i in range(6):
        (named / classifier.labels[val[i].label]).mkdir(parents=True, exist_ok=True)
        val[i].image.save(named / classifier.labels[val[i].label] / f"{i}.png")
    result = main(["--checkpoint", str(out), "--images", str(named)])
    predicted = classifier.scores([val[i].image for i in range(6)]).argmax(dim=1).tolist()
    truth = [val[i].label for i in range(6)]
    per_class = [sum(p == t for p, t in zip(predicted, truth) if t == c) / truth.count(c) for c in sorted(set(truth))]
    assert result["mean_per_class_accuracy"] == pytest.approx(sum(per_class) / len(per_class))
    assert (
        "warning" not in result
        and f"mean per class {percent(result['mean_per_class_accuracy'])}" in capsys.readouterr().out
    )


@pytest.fixture(scope="module")
def pair_run(pretrained, tmp_path_factory):
    """A sentence-pair task (is the first caption's shape large?) fine-tuned on BERT's two segments."""
    out = tmp_path_factory.mktemp("pair_run")
    world = ShapesWorld("texts", 40, image_size=32, seed=3)
    pairs = [(world.caption(i), world.caption(39 - i)) for i in range(40)]
    labels = [world.scene(i).size for i in range(40)]
    for name in ("train.tsv", "dev.tsv"):
        _write_tsv(out / name, ["question", "sentence", "label"], [(a, b, y) for (a, b), y in zip(pairs, labels)])
    report = _finetune(
        pretrained,
        out / "run",
        "data.task=glue",
        f"data.train={out / 'train.tsv'}",
        f"data.val={out / 'dev.tsv'}",
        "data.text_columns=[question,sentence]",
        "data.labels=[large,small]",
        "data.max_text_length=16",
        "training.max_steps=4",
        "training.checkpoint_every=4",
        "optim.warmup_steps=1",
    )
    return out / "run", report, pairs, labels


def test_a_sentence_pair_classifier_records_its_pairs_and_scores_them_as_fine_tuning_read_them(pair_run, text_run):
    """The export of a pair task read pairs as one text joined by " [SEP] " (token type 0): now it records
    them and encodes each pair as the collator did, so its scores give the run's validation accuracy."""
    run, report, pairs, labels = pair_run
    assert json.loads((run / "model" / "classifier_inputs.json").read_text()) == {"sentence_pairs": True}
    assert "sentence_pairs: true\n" in (run / "config.yaml").read_text()
    classifier = load_classifier(run)
    assert classifier.sentence_pairs and classifier.tokenizer.model_max_length == 16
    scores = classifier.scores(texts=pairs)
    truth = torch.tensor([classifier.labels.index(y) for y in labels])
    accuracy = (scores.argmax(dim=1) == truth).float().mean().item()
    assert accuracy == pytest.approx(report["validation"]["accuracy"], abs=1e-6)
    ids, mask, types = classifier.tokenizer.encode_pairs([a for a, _ in pairs], [b for _, b in pairs])
    assert types.sum() > 0 and ids.shape[1] <= 16
    with torch.no_grad():
        logits = classifier.model(text=ids, text_attention_mask=mask, token_type_ids=types).logits
        joined_ids, joined_mask = classifier.tokenizer([f"{a} [SEP] {b}" for a, b in pairs])
        joined = classifier.model.cls_state(text=joined_ids, text_attention_mask=joined_mask)
        paired = classifier.model.cls_state(text=ids, text_attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(scores, logits.softmax(dim=-1))
    assert (joined - paired).abs().max() > 1e-3  # the old encoding (token types 0) reads other states
    with pytest.raises(TypeError, match=r"got a single text 'a red circle' at texts\[0\]"):
        classifier.scores(texts=["a red circle"])
    single_run, _, texts = text_run
    assert json.loads((single_run / "model" / "classifier_inputs.json").read_text()) == {"sentence_pairs": False}
    assert not load_classifier(single_run).sentence_pairs


def test_the_command_reads_a_pair_as_two_tab_separated_sentences_and_refuses_a_single_text(pair_run, tmp_path, capsys):
    run, _, pairs, _ = pair_run
    _write_tsv(tmp_path / "more.tsv", [], pairs[1:3])  # (an @file of --text: no header)
    capsys.readouterr()
    result = main(["--checkpoint", str(run), "--text", "\t".join(pairs[0]), f"@{tmp_path / 'more.tsv'}"])
    assert [(p["text"], p["text_pair"]) for p in result["predictions"]] == pairs[:3]
    expected = load_classifier(run).scores(texts=pairs[:3])
    for record, row in zip(result["predictions"], expected):
        assert record["top"][0][1] == pytest.approx(float(row.max()), abs=1e-6)
    assert capsys.readouterr().out.splitlines()[0].startswith("\t".join(pairs[0]) + "\t")
    for text, fields in ((pairs[0][0], "1 field"), ("a\tb\tc", "3 fields"), ("a\t ", "2 fields")):
        with pytest.raises(SystemExit) as exit_:
            main(["--checkpoint", str(run), "--text", text])
        assert exit_.value.code == 2
        assert (
            "argument --text: this classifier was fine-tuned on sentence pairs: expected each text as its two "
            f"sentences separated by a tab, got {text!r} ({fields})"
        ) in capsys.readouterr().err


def test_an_export_from_before_the_inputs_file_reads_single_texts_and_a_bad_one_is_named(pair_run, tmp_path):
    run, _, _, _ = pair_run
    copy = tmp_path / "model"
    shutil.copytree(run / "model", copy)
    (copy / "classifier_inputs.json").unlink()  # an export from before: trained on pairs joined by [SEP]
    assert not load_classifier(copy).sentence_pairs
    (copy / "classifier_inputs.json").write_text('{"sentence_pairs": "yes"}')
    with pytest.raises(
        ValueError, match=r"classifier_inputs.json: sentence_pairs must be True or False, got str 'yes'"
    ):
        load_classifier(copy)
    (copy / "classifier_inputs.json").write_text('{"pairs": true}')
    with pytest.raises(
        ValueError, match=r"classifier_inputs.json: expected the key sentence_pairs alone, got \['pairs'\]"
    ):
        load_classifier(copy)


def test_an_export_refuses_sentence_pairs_that_are_no_bool_or_for_a_head_reading_no_text(image_run, tmp_path):
    out, _ = image_run
    c = load_classifier(out)
    kwargs = dict(backbone_kwargs=c.backbone_kwargs, tokenizer=c.tokenizer, image_transform=c.image_transform)
    with pytest.raises(
        ValueError, match="^sentence_pairs: a head of modality 'image' reads no text, got sentence_pairs=True$"
    ):
        export_classifier(c.model, tmp_path / "a", sentence_pairs=True, **kwargs)
    with pytest.raises(TypeError, match="^sentence_pairs must be True or False, got int 1$"):
        export_classifier(c.model, tmp_path / "b", sentence_pairs=1, **kwargs)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before anything is written


def test_the_command_refuses_a_tab_for_an_export_from_before_the_inputs_file(pair_run, tmp_path, capsys):
    """Such an export of a pair task was fine-tuned on each pair joined by " [SEP] " into one segment: a pair
    given tab-separated, as the help now says, was silently read as one text without its [SEP]."""
    run, _, pairs, _ = pair_run
    copy = tmp_path / "model"
    shutil.copytree(run / "model", copy)
    (copy / "classifier_inputs.json").unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(copy), "--text", "a red circle", "a red circle\ta blue square"])
    assert exit_.value.code == 2
    expected = (
        "argument --text: this classifier's export predates classifier_inputs.json, so whether it reads sentence "
        "pairs is not recorded: expected a single text without a tab (a tab reads as a space), or a pair as its "
        "two sentences joined by ' [SEP] ' (as such an export was fine-tuned on pairs), got "
        "'a red circle\\ta blue square'"
    )
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(expected)
    joined = f"{pairs[0][0]} [SEP] {pairs[0][1]}"  # the encoding it was fine-tuned on, read as before
    result = main(["--checkpoint", str(copy), "--text", joined])
    score = load_classifier(copy).scores(texts=[joined])[0].max().item()
    assert result["predictions"][0]["top"][0][1] == pytest.approx(score, abs=1e-6)


def test_a_text_for_a_legacy_image_classifier_is_refused_for_its_modality_not_for_a_tab(image_run, tmp_path, capsys):
    copy = tmp_path / "model"
    shutil.copytree(image_run[0] / "model", copy)
    (copy / "classifier_inputs.json").unlink(missing_ok=True)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(copy), "--text", "a\tb"])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and "predates" not in error and "--images DIR" in error


def test_the_command_writes_glue_predictions_for_a_tsv_and_the_accuracy_of_its_labels(
    pair_run, text_run, tmp_path, capsys
):
    """A text classifier could only print predictions for --text: now a GLUE TSV becomes GLUE's submission
    file, reading the columns the run fine-tuned on (both of a sentence pair) and scoring a dev file's labels."""
    run, report, pairs, labels = pair_run
    classifier = load_classifier(run)
    rows = [(i + 10, b, a, y) for i, ((a, b), y) in enumerate(zip(pairs, labels))]
    _write_tsv(tmp_path / "dev.tsv", ["index", "sentence", "question", "label"], rows)  # (columns in another order)
    capsys.readouterr()
    result = main(["--checkpoint", str(run), "--tsv", str(tmp_path / "dev.tsv"), "--out", str(tmp_path / "p.tsv")])
    names = [classifier.labels[int(i)] for i in classifier.scores(texts=pairs).argmax(dim=1)]
    assert (tmp_path / "p.tsv").read_text() == "index\tprediction\n" + "".join(
        f"{i + 10}\t{name}\n" for i, name in enumerate(names)
    )
    assert result["accuracy"] == pytest.approx(report["validation"]["accuracy"], abs=1e-6)  # the same rows
    assert result["num_inputs"] == 40
    out = capsys.readouterr().out
    shown = f"accuracy {percent(result['accuracy'])}, Matthews {result['matthews']:.3f}, F1 {percent(result['f1'])}"
    assert out == f"40 rows classified into {tmp_path / 'p.tsv'}; {shown}\n"
    # a test file: no labels, no index column (rows numbered from 0); a single-text classifier's one column
    single, _, texts = text_run
    _write_tsv(tmp_path / "test.tsv", ["sentence"], [(t,) for t in texts[:3]])
    result = main(["--checkpoint", str(single), "--tsv", str(tmp_path / "test.tsv"), "--out", str(tmp_path / "s.tsv")])
    scores = load_classifier(single).scores(texts=texts[:3])
    assert (tmp_path / "s.tsv").read_text() == "index\tprediction\n" + "".join(
        f"{i}\t{['large', 'small'][int(j)]}\n" for i, j in enumerate(scores.argmax(dim=1))
    )
    assert "accuracy" not in result


def test_the_command_names_a_bad_tsv_or_export_before_loading_weights(
    pair_run, image_run, tmp_path, capsys, monkeypatch
):
    run, _, pairs, _ = pair_run
    import torchflava.classify as classify_module

    monkeypatch.setattr(classify_module, "load_classifier", lambda *a, **k: pytest.fail("weights loaded"))
    _write_tsv(tmp_path / "one.tsv", ["index", "sentence"], [(0, "a red circle")])
    _write_tsv(tmp_path / "short.tsv", ["question", "sentence"], [("only one",)])
    _write_tsv(tmp_path / "bad_label.tsv", ["question", "sentence", "label"], [(*pairs[0], "huge")])
    (tmp_path / "latin1.tsv").write_bytes("question\tsentence\ncaf\xe9\tb\n".encode("latin-1"))
    out = str(tmp_path / "p.tsv")
    cases = [
        (
            [str(run), "--tsv", str(tmp_path / "one.tsv")],
            f"argument --tsv: {tmp_path / 'one.tsv'}: missing column(s) ['question']; the header has ['index', 'sentence']",
        ),
        (
            [str(run), "--tsv", str(tmp_path / "short.tsv")],
            f"argument --tsv: expected a usable row, got none (1 unusable: {tmp_path / 'short.tsv'} line 2: "
            "expected 2 fields, got 1",
        ),
        (
            [str(run), "--tsv", str(tmp_path / "bad_label.tsv")],
            f"argument --tsv: {tmp_path / 'bad_label.tsv'}: column 'label' row 0: expected one of the class names ['large', 'small'], got 'huge'",
        ),
        ([str(run), "--tsv", str(tmp_path / "latin1.tsv")], "argument --tsv: expected a readable UTF-8 TSV file, got"),
        ([str(run), "--tsv", str(tmp_path / "missing.tsv")], "argument --tsv: expected a readable UTF-8 TSV file, got"),
        (
            [str(run), "--tsv", str(tmp_path / "one.tsv"), "--text-columns", "sentence"],
            "argument --text-columns: expected two (it was fine-tuned on sentence pairs) columns, got ['sentence']",
        ),
        (
            [str(image_run[0]), "--tsv", str(tmp_path / "one.tsv")],
            "argument --checkpoint: --tsv reads texts for a text classifier, got a classifier of modality 'image'",
        ),
    ]
    _write_tsv(tmp_path / "blank.tsv", ["question", "sentence"], [(pairs[0][0], " ")])
    cases.append(
        (
            [str(run), "--tsv", str(tmp_path / "blank.tsv")],
            f"argument --tsv: expected a usable row, got none (1 unusable: {tmp_path / 'blank.tsv'} line 2: expected "
            f"a text in each of ['question', 'sentence'], got [{pairs[0][0]!r}, ' ']",
        )
    )
    for arguments, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["--checkpoint", *arguments, "--out", out])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    for arguments, message in (
        (["--tsv", str(tmp_path / "one.tsv")], "arguments --tsv and --out: expected both"),
        (["--tsv", str(tmp_path / "one.tsv"), "--out", out, "--text", "a"], "argument --tsv: not with --text"),
        (["--text", "a", "--text-columns", "a"], "arguments --text-columns and --label-column: for --tsv only"),
    ):
        with pytest.raises(SystemExit):
            main(["--checkpoint", str(run), *arguments])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "p.tsv").exists()
    moved = tmp_path / "export"  # an export without its run's config.yaml: the columns must be named
    shutil.copytree(run / "model", moved)
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(moved), "--tsv", str(tmp_path / "one.tsv"), "--out", out])
    assert (
        f"argument --text-columns: expected the TSV columns the classifier was fine-tuned on, got none (its export "
        f"does not record them and {tmp_path / 'config.yaml'} states no data.text_columns)"
    ) in capsys.readouterr().err


def test_the_tsv_is_read_as_fine_tuning_read_its_files(pair_run, tmp_path, capsys, monkeypatch):
    """--tsv had a reader of its own beside fine-tuning's GlueTsv: a header naming a text column twice read
    the first, a text of a zero-width space alone passed (to reach the tokenizer once the weights had
    loaded), and a field too long for the csv module was "not a readable UTF-8 TSV file". GlueTsv reads it now."""
    run, _, pairs, _ = pair_run
    import torchflava.classify as classify_module

    monkeypatch.setattr(classify_module, "load_classifier", lambda *a, **k: pytest.fail("weights loaded"))
    _write_tsv(tmp_path / "twice.tsv", ["question", "sentence", "question"], [(*pairs[0], "x")])
    _write_tsv(tmp_path / "zero.tsv", ["question", "sentence"], [(pairs[0][0], "\u200b")])
    _write_tsv(tmp_path / "long.tsv", ["question", "sentence"], [("a", "b"), ("x" * 200_000, "c")])
    for name, message in (
        ("twice.tsv", "twice.tsv: the header names column(s) ['question'] more than once"),
        ("zero.tsv", "zero.tsv line 2: expected a text in each of ['question', 'sentence'], got"),
        ("long.tsv", "long.tsv line 3: field larger than field limit (131072)"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["--checkpoint", str(run), "--tsv", str(tmp_path / name), "--out", str(tmp_path / "p.tsv")])
        assert exit_.value.code == 2
        unusable = "expected a usable row, got none (1 unusable: " if name == "zero.tsv" else ""
        assert f"argument --tsv: {unusable}{tmp_path / message}" in capsys.readouterr().err


def test_a_pair_export_from_before_the_inputs_file_reads_a_tsvs_two_columns_joined_by_sep(pair_run, tmp_path):
    """Such an export was fine-tuned on each pair joined by " [SEP] " into one text: its TSV rows are read so."""
    run, _, pairs, _ = pair_run
    shutil.copytree(run / "model", tmp_path / "run" / "model")
    shutil.copy(run / "config.yaml", tmp_path / "run" / "config.yaml")
    (tmp_path / "run" / "model" / "classifier_inputs.json").unlink()
    _write_tsv(tmp_path / "test.tsv", ["question", "sentence"], pairs[:4])
    main(["--checkpoint", str(tmp_path / "run"), "--tsv", str(tmp_path / "test.tsv"), "--out", str(tmp_path / "p.tsv")])
    legacy = load_classifier(tmp_path / "run")
    assert not legacy.sentence_pairs
    scores = legacy.scores(texts=[f"{a} [SEP] {b}" for a, b in pairs[:4]])
    assert (tmp_path / "p.tsv").read_text() == "index\tprediction\n" + "".join(
        f"{i}\t{legacy.labels[int(j)]}\n" for i, j in enumerate(scores.argmax(dim=1))
    )


def test_a_classifier_loads_without_pyyaml(tmp_path, monkeypatch):
    """load_classifier needs only the library's and the data extra's packages (README, "Dependencies"):
    torchflava.classify imported PyYAML, a recipes dependency, for the one case of reading a run's
    config.yaml. A fresh copy of the module is run with yaml unimportable (the modules it imports are the
    ones already loaded)."""
    import importlib.util
    import sys

    import torchflava.classify

    model = _tiny_classifier(modality="image")
    tokenizer = WordPieceTokenizer.train(["a red circle", "a blue square"], vocab_size=40)
    export_classifier(
        model,
        tmp_path,
        backbone_kwargs=TINY_FLAVA,
        tokenizer=tokenizer,
        image_transform=EvalImageTransform(32),
        labels=["x", "y", "z"],
    )
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now raises ModuleNotFoundError
    spec = importlib.util.spec_from_file_location("classify_without_yaml", torchflava.classify.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classifier = module.load_classifier(tmp_path)
    assert classifier.labels == ["x", "y", "z"]
    images = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(classifier.model(image=images).logits, model.eval()(image=images).logits)


@pytest.mark.parametrize(
    "outputs, message",
    [
        (("--out", "test.tsv"), "argument --out: expected another file than --tsv's"),
        (("--out", "./sub/../test.tsv"), "argument --out: expected another file than --tsv's"),
        (("--out", "out.tsv", "--json", "out.tsv"), "argument --json: expected another file than --out's"),
    ],
)
def test_an_output_naming_the_tsv_read_or_the_other_output_is_refused_before_anything_is_written(
    text_run, tmp_path, monkeypatch, outputs, message, capsys
):
    # The submission file was written over the test set it classified (exit 0), or the --json over it.
    run, _, texts = text_run
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    tsv = _write_tsv(tmp_path / "test.tsv", ["index", "sentence"], enumerate(texts[:3]))
    content = tsv.read_text()
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(run), "--tsv", "test.tsv", *outputs])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert tsv.read_text() == content and not (tmp_path / "out.tsv").exists()


def test_a_json_naming_a_text_file_read_is_refused(text_run, tmp_path, capsys):
    run, _, texts = text_run
    (tmp_path / "texts.txt").write_text("".join(f"{text}\n" for text in texts[:2]))
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(run), "--text", f"@{tmp_path / 'texts.txt'}", "--json", str(tmp_path / "texts.txt")])
    assert (
        exit_info.value.code == 2 and "argument --json: expected another file than --text's" in capsys.readouterr().err
    )
    assert (tmp_path / "texts.txt").read_text() == f"{texts[0]}\n{texts[1]}\n"


def test_a_fine_tuning_run_without_its_export_is_named_as_such_not_as_a_bad_pretraining_run(
    image_run, tmp_path, capsys
):
    # It was "expected the model section of a FLAVA or CLIP pretraining run": classify was told it wanted
    # a pretraining run, when a fine-tuning run's export is what it loads.
    out, _ = image_run
    killed = tmp_path / "killed"
    shutil.copytree(out, killed, ignore=shutil.ignore_patterns("model"))
    with pytest.raises(SystemExit) as exit_info:
        run_command(lambda: main(["--checkpoint", str(killed), "--images", str(tmp_path)]))
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and error == (
        f"error: checkpoint: {killed / 'checkpoints' / 'step_00000012'} is a training checkpoint of a FLAVA "
        f"fine-tuning run ({killed / 'checkpoints' / 'step_00000012' / 'config.yaml'}), which loads only from the "
        f"export a fine-tuning run writes when it finishes ({killed / 'model'})"
    )


def test_answers_whose_sigmoid_rounds_to_one_are_ranked_by_their_logits(tmp_path):
    """A confident multi-label (VQA-style) head gives every answer whose logit is above ~17 a score of exactly 1.0
    in fp32; the command ranked the scores, so those answers came in topk's arbitrary order among ties and the
    prediction was not the head's best answer (logits 18, 20, 30: 'a' predicted, not 'c'). They are ranked by
    their logits now, their scores unchanged."""
    model = _tiny_classifier(modality="image", loss="binary_cross_entropy")
    last = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([18.0, 20.0, 30.0]))  # every image: sigmoid 1.0 for all three
    tokenizer = WordPieceTokenizer.train(["a red circle", "a blue square"], vocab_size=40)
    export_classifier(
        model,
        tmp_path / "vqa",
        labels=["a", "b", "c"],
        backbone_kwargs=TINY_FLAVA,
        tokenizer=tokenizer,
        image_transform=EvalImageTransform(32),
    )
    (tmp_path / "images").mkdir()
    ShapesWorld("pairs", 1, image_size=32)[0].image.save(tmp_path / "images" / "0.png")
    result = main(["--checkpoint", str(tmp_path / "vqa"), "--images", str(tmp_path / "images"), "--top-k", "3"])
    assert result["predictions"][0]["top"] == [["c", 1.0], ["b", 1.0], ["a", 1.0]]
    logits = load_classifier(tmp_path / "vqa").logits([Image.open(tmp_path / "images" / "0.png")])
    torch.testing.assert_close(logits, torch.tensor([[18.0, 20.0, 30.0]]))


def test_a_dev_file_with_unusable_rows_is_scored_without_them_naming_them_as_fine_tuning_does(
    pair_run, tmp_path, capsys
):
    """A row of another number of fields or a blank text refused the whole file, where fine-tuning skips and
    names it (QQP's files have a few): the command now leaves such rows out, counts and names them, and scores
    the others as it scores a file without them."""
    run, _, pairs, labels = pair_run
    good = [(i, a, b, y) for i, ((a, b), y) in enumerate(zip(pairs[:8], labels[:8]))]
    _write_tsv(tmp_path / "clean.tsv", ["index", "question", "sentence", "label"], good)
    bad = [*good[:3], (100, "a stray\ttab", pairs[0][1], labels[0]), *good[3:6], (101, " ", "b", labels[0]), *good[6:]]
    _write_tsv(tmp_path / "dev.tsv", ["index", "question", "sentence", "label"], bad)
    argv = ["--checkpoint", str(run), "--out"]
    clean = main([*argv, str(tmp_path / "clean_p.tsv"), "--tsv", str(tmp_path / "clean.tsv")])
    capsys.readouterr()
    result = main(
        [*argv, str(tmp_path / "p.tsv"), "--tsv", str(tmp_path / "dev.tsv"), "--json", str(tmp_path / "r.json")]
    )
    reasons = [
        f"{tmp_path / 'dev.tsv'} line 5: expected 4 fields, got 5 (the columns ['index', 'question', 'sentence', "
        "'label'])",
        f"{tmp_path / 'dev.tsv'} line 9: expected a text in each of ['question', 'sentence'], got [' ', 'b']",
    ]
    assert result["skipped"] == 2 and result["skipped_reasons"] == reasons
    assert result["num_inputs"] == 8
    assert {k: result[k] for k in ("accuracy", "matthews", "f1")} == {
        k: clean[k] for k in ("accuracy", "matthews", "f1")
    }
    assert (tmp_path / "p.tsv").read_text() == (tmp_path / "clean_p.tsv").read_text()
    assert json.loads((tmp_path / "r.json").read_text()) == result
    captured = capsys.readouterr()
    assert captured.out.startswith(f"8 rows classified into {tmp_path / 'p.tsv'} (2 unusable rows skipped: not in it)")
    assert captured.err.splitlines() == [f"skipped: {reason}" for reason in reasons]


def test_a_tsv_is_ranked_by_the_logits_not_by_scores_that_round_to_ties(tmp_path):
    """--tsv took the argmax of the scores: a multi-label text head's sigmoid gives every logit above ~17 the
    score 1.0 in fp32, so of logits 18, 20, 30 the first class, 'a', was written, not the head's best, 'c'."""
    model = _tiny_classifier(modality="text", loss="binary_cross_entropy")
    last = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([18.0, 20.0, 30.0]))
    tokenizer = WordPieceTokenizer.train(["a red circle", "a blue square"], vocab_size=40)
    export = tmp_path / "tags"
    args = dict(backbone_kwargs=TINY_FLAVA, tokenizer=tokenizer, image_transform=EvalImageTransform(32))
    export_classifier(model, export, labels=["a", "b", "c"], **args)
    _write_tsv(tmp_path / "test.tsv", ["sentence"], [("a red circle",), ("a blue square",)])
    argv = ["--checkpoint", str(export), "--tsv", str(tmp_path / "test.tsv"), "--out", str(tmp_path / "p.tsv")]
    main([*argv, "--text-columns", "sentence"])
    assert (tmp_path / "p.tsv").read_text() == "index\tprediction\n0\tc\n1\tc\n"


def test_the_summaries_print_a_3000_class_chance_and_a_99_96_percent_accuracy_as_they_are(
    image_run, pair_run, tmp_path, monkeypatch, capsys
):
    """The summaries printed accuracies and F1 to one decimal: 0.9996 read "100.0%". Every share is now printed by
    torchflava.evaluation.percent (a chance of 1/3000 classes: 0.033%)."""
    from torchflava import classify as command

    out, _ = image_run
    classifier = load_classifier(out)
    val = ShapesClassification("test", 4, image_size=32)
    for i in range(4):
        (tmp_path / "images" / classifier.labels[val[i].label]).mkdir(parents=True, exist_ok=True)
        val[i].image.save(tmp_path / "images" / classifier.labels[val[i].label] / f"{i}.png")
    shares = {"accuracy": 0.9996, "chance": 1 / 3000, "mean_per_class_accuracy": 0.99996, "top5_accuracy": 0.99999}
    classify = command.classify
    monkeypatch.setattr(command, "classify", lambda *args: {**classify(*args), **shares})
    capsys.readouterr()
    main(["--checkpoint", str(out), "--images", str(tmp_path / "images")])
    assert capsys.readouterr().out.splitlines()[-1] == (
        "4 inputs, 0 unreadable skipped; accuracy 99.96% (chance 0.033%), mean per class 99.996%, top-5 99.999%"
    )  # (top-5 since it is reported past 5 classes)
    run, _, pairs, labels = pair_run
    _write_tsv(tmp_path / "dev.tsv", ["sentence", "question", "label"], [(b, a, y) for (a, b), y in zip(pairs, labels)])
    classify_tsv = command.classify_tsv
    monkeypatch.setattr(
        command, "classify_tsv", lambda *args: {**classify_tsv(*args), "accuracy": 0.9996, "f1": 0.99951}
    )
    main(["--checkpoint", str(run), "--tsv", str(tmp_path / "dev.tsv"), "--out", str(tmp_path / "p.tsv")])
    shown = (
        rf"40 rows classified into {re.escape(str(tmp_path / 'p.tsv'))}; accuracy 99\.96%, Matthews \S+, F1 99\.95%\n"
    )
    assert re.fullmatch(shown, capsys.readouterr().out)


def test_help_shows_its_examples_as_typed(capsys):
    """The module doc (the --help text) was a plain string: the VQA example's line continuation joined its two lines
    with a run of spaces, and the QNLI example's $'...\\t...' showed a real tab where the shell needs the backslash."""
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert "--text $'Is it red?\\tThe ball is red.' @more.tsv\n" in shown
    assert "--captions vqa/test-dev2015_questions.jsonl \\\n        --text-key question --vqa-submission" in shown


def test_a_label_column_holding_interpolation_text_is_read_as_the_run_recorded_it(regression_run, tmp_path):
    """config.yaml records a ${ escaped, as OmegaConf reads it back (torchflava.utils.config_text); the command reads
    it with PyYAML, which kept the escape: a run's data.label_column 'sc${o}re' was read as 'sc\\${o}re', a column
    the dev file lacks, and no correlation was computed."""
    run, texts = regression_run
    shutil.copytree(run, tmp_path / "run")
    recorded = (tmp_path / "run" / "config.yaml").read_text()
    assert "label_column: score\n" in recorded
    (tmp_path / "run" / "config.yaml").write_text(
        recorded.replace("label_column: score\n", "label_column: sc\\${o}re\n")
    )
    _write_tsv(tmp_path / "dev.tsv", ["sentence", "sc${o}re"], zip(texts[:6], [1.0, 2.0, 2.0, 4.0, 5.0, 3.5]))
    dev = ["--checkpoint", str(tmp_path / "run"), "--tsv", str(tmp_path / "dev.tsv")]
    result = main([*dev, "--out", str(tmp_path / "a.tsv")])
    stated = main([*dev, "--out", str(tmp_path / "b.tsv"), "--label-column", "sc${o}re"])
    assert "pearson" in stated and (result["pearson"], result["spearman"]) == (stated["pearson"], stated["spearman"])


@pytest.fixture(scope="module")
def class_folders(image_run, tmp_path_factory):
    """12 shapes in class sub-folders named as datasets name them (``red_circle`` for the class ``red circle``), and
    an unreadable file; and the folders' names in sorted order (the classes of their parquet files and shards: class
    ids other than the classifier's)."""
    out, _ = image_run
    labels = load_classifier(out).labels
    root = tmp_path_factory.mktemp("class_folders") / "images"
    val = ShapesClassification("test", 12, image_size=32)
    for i in range(12):
        folder = root / labels[val[i].label].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        val[i].image.save(folder / f"{i}.png")
    (root / labels[val[0].label].replace(" ", "_") / "broken.png").write_bytes(b"not a png")
    names = sorted(path.name for path in root.iterdir())
    assert [labels.index(name.replace("_", " ")) for name in names] != list(range(len(names)))  # (ids differ)
    return root, names


_REPORTED = ("num_inputs", "skipped", "accuracy", "top5_accuracy", "mean_per_class_accuracy", "chance")


def _same_report(got: dict, folders: dict) -> None:
    assert "accuracy" in folders and "warning" not in got
    for key in _REPORTED:
        assert got.get(key) == folders.get(key), key  # (top-5: past 5 classes only)
    assert [record["top"] for record in got["predictions"]] == [record["top"] for record in folders["predictions"]]


def test_parquet_files_give_the_report_of_the_same_images_in_class_folders(image_run, class_folders, tmp_path, capsys):
    """The command took image folders only ("expected an image folder ... (not a directory)")."""
    from tests.helpers import hf_parquet_of

    out, _ = image_run
    images, names = class_folders
    files = hf_parquet_of(images, tmp_path / "data", names)  # (ClassLabel names: the folders', sorted)
    common = ["--checkpoint", str(out), "--top-k", "3", "--batch-size", "5"]
    folders = main(common + ["--images", str(images)])
    summary = capsys.readouterr().out.splitlines()[-1]
    parquet = main(common + ["--images", *files, "--json", str(tmp_path / "p.json")])
    _same_report(parquet, folders)
    assert capsys.readouterr().out.splitlines()[-1] == summary
    assert parquet["predictions"][0]["image"] == "validation-00000-of-00002.parquet[0]"
    assert re.fullmatch(
        r"validation-0000[01]-of-00002\.parquet\[\d+\]: unreadable image .*", parquet["skipped_reasons"][0]
    )
    assert json.loads((tmp_path / "p.json").read_text())["accuracy"] == folders["accuracy"]
    # a column of class names (no ClassLabel): the names sorted are the classes, matched by name alike
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in files:
        table = pq.read_table(path)
        named = pa.array([names[i] for i in table.column("label").to_pylist()])
        pq.write_table(table.drop_columns(["label"]).append_column("name", named), path)
    by_name = main(common + ["--images", str(tmp_path / "data"), "--label-key", "name"])
    _same_report(by_name, folders)


def test_tar_shards_give_the_report_of_the_same_images_in_class_folders(image_run, class_folders, tmp_path, capsys):
    from tests.helpers import wds_of

    out, _ = image_run
    images, names = class_folders
    root = wds_of(images, tmp_path / "wds_shapes", names)
    folders = main(["--checkpoint", str(out), "--images", str(images)])
    capsys.readouterr()
    shards = main(["--checkpoint", str(out), "--images", str(root)])  # (the root: its test/ split, said)
    _same_report(shards, folders)
    assert shards["predictions"][0]["image"] == "0.tar:s0000000"
    assert capsys.readouterr().err.splitlines()[0] == f"the test/ split of {root} taken"
    pattern = main(["--checkpoint", str(out), "--images", f"{root}/test/{{0..1}}.tar"])
    _same_report(pattern, folders)


def test_parquet_or_shard_classes_the_classifier_lacks_give_no_accuracy_saying_why(
    image_run, class_folders, tmp_path, capsys
):
    from tests.helpers import hf_parquet_of, wds_of

    out, _ = image_run
    images, names = class_folders
    shutil.copytree(images, tmp_path / "images")
    (tmp_path / "images" / names[0]).rename(tmp_path / "images" / "purple hexagon")  # (a class the classifier lacks)
    other = sorted(path.name for path in (tmp_path / "images").iterdir())
    files = hf_parquet_of(tmp_path / "images", tmp_path / "other", other)
    result = main(["--checkpoint", str(out), "--images", *files])
    assert "accuracy" not in result and len(result["predictions"]) == 12
    assert result["warning"] == (
        "warning: no accuracy: the classes ['purple hexagon'] of the parquet files are none of the classifier's 30 "
        "classes (each matched by name, as an image sub-folder is)"
    )
    assert result["warning"] in capsys.readouterr().err
    unnamed = hf_parquet_of(images, tmp_path / "unnamed", names, shards=1, with_names=False)
    result = main(["--checkpoint", str(out), "--images", *unnamed])
    assert result["warning"] == (
        "warning: no accuracy: the parquet files name no classes (no ClassLabel names in their metadata) to match "
        "the classifier's by name"
    )
    root = wds_of(images, tmp_path / "bare", names)
    (root / "classnames.txt").unlink()
    result = main(["--checkpoint", str(out), "--images", str(root / "test")])
    assert "accuracy" not in result and "the tar shards name no classes (no classnames.txt)" in result["warning"]


def test_bad_parquet_or_shard_inputs_are_refused_in_one_line_before_the_classifier_loads(
    image_run, text_run, class_folders, tmp_path, monkeypatch, capsys
):
    from tests.helpers import hf_parquet_of, wds_of

    out, _ = image_run
    run, _, _ = text_run
    images, names = class_folders
    files = hf_parquet_of(images, tmp_path / "data", names)
    root = wds_of(images, tmp_path / "wds_shapes", names)
    (tmp_path / "text.parquet").write_text("image,label\n")
    monkeypatch.setattr("torchflava.classify.load_classifier", lambda *a, **k: pytest.fail("loaded"))
    cases = [
        ([*files, "--captions", __file__], "argument --captions: not with parquet --images"),
        ([str(root), "--captions", __file__], "argument --captions: not with tar shard --images"),
        ([str(images), "--label-key", "label"], "argument --label-key: for parquet --images only"),
        ([str(root), "--image-key", "png"], "arguments --image-key and --text-key: for --captions only"),
        ([*files, "--label-key", "nope"], "argument --label-key: "),
        ([*files, "--image-key", "nope"], "argument --image-key: "),
        ([str(tmp_path / "text.parquet")], f"argument --images: {tmp_path / 'text.parquet'} is not a parquet file"),
        ([f"{root}/test/{{0..2}}.tar"], f"argument --images: '{root}/test/2.tar' is not a file (of the pattern"),
        ([*files, "--json", files[0]], "argument --json: expected another file than --images's"),
        ([str(root), "--json", str(root / "classnames.txt")], "argument --json: expected another file than --images's"),
        ([str(root), "--json", str(root / "test" / "nshards.txt")], "argument --json: expected another file than"),
        ([str(images), str(images)], "argument --images: expected one image folder, or parquet files, got 2 values"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["--checkpoint", str(out), "--images", *argv])
        error = capsys.readouterr().err
        assert exit_.value.code == 2 and message in error.splitlines()[-1], (argv, error)
    with pytest.raises(SystemExit):  # a text classifier reads no image
        main(["--checkpoint", str(run), "--images", *files])
    assert "(modality 'text') reads --text, got parquet --images" in capsys.readouterr().err


def test_a_text_classifier_given_parquet_files_or_shards_is_refused_for_its_modality_before_they_are_read(
    text_run, class_folders, tmp_path, monkeypatch, capsys
):
    """The files were read first: given a dataset root, the text classifier said which split it took (every shard's
    .cls read) before refusing; given a --label-key the files lack, it was refused for the column, not its modality;
    and the refusal said it got '--images DIR'."""
    from tests.helpers import hf_parquet_of, wds_of

    run, _, _ = text_run
    images, names = class_folders
    files = hf_parquet_of(images, tmp_path / "data", names)
    root = wds_of(images, tmp_path / "wds_shapes", names)
    for reader in ("ParquetImages", "WdsImages"):
        monkeypatch.setattr(f"torchflava.zero_shot.{reader}", lambda *a, **k: pytest.fail("read"))
    cases = [([str(root)], "tar shard --images"), ([*files, "--label-key", "nope"], "parquet --images")]
    for argv, given in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["--checkpoint", str(run), "--images", *argv])
        error = capsys.readouterr().err
        assert exit_.value.code == 2 and "taken" not in error, error
        assert error.splitlines()[-1] == (
            f"python -m torchflava.classify: error: argument --checkpoint: this classifier (modality 'text') reads "
            f"--text, got {given}"
        )


def test_a_clip_image_classifier_reads_parquet_files_and_shards_as_the_same_images_in_class_folders(
    class_folders, tmp_path, monkeypatch, capsys
):
    from tests.helpers import hf_parquet_of, wds_of
    from torchflava.classify import clip_image_classifier, export_clip_classifier

    images, names = class_folders
    two = tmp_path / "two"
    for name in names[:2]:
        shutil.copytree(images / name, two / name)
    sizes = dict(embed_dim=8, image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2)
    sizes |= dict(context_length=6, vocab_size=50, text_width=16, text_layers=1, text_heads=2, eos_token_id=49)
    export = tmp_path / "clip"
    export.mkdir()
    torch.manual_seed(0)
    labels = [name.replace("_", " ") for name in reversed(names[:2])]  # (class ids other than the files')
    model = clip_image_classifier(sizes, 2)
    export_clip_classifier(model, export, clip_kwargs=sizes, labels=labels, image_transform=EvalImageTransform(16))
    folders = main(["--checkpoint", str(export), "--images", str(two)])
    parquet = main(["--checkpoint", str(export), "--images", *hf_parquet_of(two, tmp_path / "data", names[:2])])
    _same_report(parquet, folders)
    shards = main(["--checkpoint", str(export), "--images", str(wds_of(two, tmp_path / "wds", names[:2]) / "test")])
    _same_report(shards, folders)
    monkeypatch.setattr("torchflava.classify.load_clip_classifier", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(export), "--images", str(tmp_path / "data"), "--label-key", "nope"])
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith("python -m torchflava.classify: error: argument --label-key: ")
    )


def test_torchvision_cifar_files_give_the_report_of_the_same_images_in_class_folders(
    image_run, text_run, class_folders, tmp_path, monkeypatch, capsys
):
    """torchvision's cifar-10-batches-py (its test split, said) gives the class folders' predictions and accuracies;
    an MNIST folder torchvision does not name gives none, saying why; bad inputs are refused before the classifier
    loads."""
    from tests.data.test_torchvision_files import cifar_of, write_mnist

    out, _ = image_run
    run, _, _ = text_run
    images, names = class_folders
    root = cifar_of(images, tmp_path / "cifar-10-batches-py", names)
    folders = main(["--checkpoint", str(out), "--images", str(images)])
    capsys.readouterr()
    cifar = main(["--checkpoint", str(out), "--images", str(root), "--json", str(tmp_path / "c.json")])
    assert capsys.readouterr().err.splitlines()[0] == (
        f"the test split of {root} (test_batch) taken (its train split: its data_batch_1..5 files)"
    )
    assert cifar["skipped"] == 0 and folders["skipped"] == 1  # (the folders' unreadable file)
    for key in ("num_inputs", "accuracy", "top5_accuracy", "mean_per_class_accuracy", "chance"):
        assert cifar.get(key) == folders.get(key), key
    assert [r["top"] for r in cifar["predictions"]] == [r["top"] for r in folders["predictions"]]
    assert cifar["predictions"][0]["image"] == "test_batch[00]"
    assert json.loads((tmp_path / "c.json").read_text())["accuracy"] == folders["accuracy"]
    digits = main(["--checkpoint", str(out), "--images", str(write_mnist(tmp_path, "digits"))])
    assert "accuracy" not in digits and digits["warning"] == (
        "warning: no accuracy: the MNIST files name no classes (their folder above raw/ not named MNIST, "
        "FashionMNIST or KMNIST) to match the classifier's by name"
    )
    monkeypatch.setattr("torchflava.classify.load_classifier", lambda *a, **k: pytest.fail("loaded"))
    cases = [
        ([str(root), "--captions", __file__], "argument --captions: not with torchvision's --images"),
        ([str(root), "--json", str(root / "batches.meta")], "argument --json: expected another file than --images's"),
        ([str(root), "--label-key", "label"], "argument --label-key: for parquet --images only"),
        ([str(root / "batches.meta")], "argument --images: expected an image folder, got"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["--checkpoint", str(out), "--images", *argv])
        error = capsys.readouterr().err
        assert exit_.value.code == 2 and message in error.splitlines()[-1], (argv, error)
    with pytest.raises(SystemExit):  # a text classifier reads no image
        main(["--checkpoint", str(run), "--images", str(root)])
    assert "(modality 'text') reads --text, got torchvision's --images" in capsys.readouterr().err


def test_two_parquet_classes_matched_to_one_class_of_the_classifier_give_no_accuracy_naming_both(
    image_run, class_folders, tmp_path, capsys
):
    """``apple_pie`` and ``apple pie`` (or two cases of a name) of the files' ClassLabel were both matched to the
    classifier's ``apple pie``, as a sub-folder is: two classes became one, scored so, without a word."""
    from tests.helpers import hf_parquet_of

    out, _ = image_run
    images, names = class_folders
    shutil.copytree(images, tmp_path / "images")
    twin = names[0].replace("_", " ")  # (the classifier's name of names[0]: its images now another class of it)
    (tmp_path / "images" / names[1]).rename(tmp_path / "images" / twin)
    classes = sorted(path.name for path in (tmp_path / "images").iterdir())
    files = hf_parquet_of(tmp_path / "images", tmp_path / "twins", classes)
    result = main(["--checkpoint", str(out), "--images", *files])
    assert "accuracy" not in result and len(result["predictions"]) == 12
    assert result["warning"] == (
        f"warning: no accuracy: the classes {sorted([twin, names[0]])} of the parquet files are all the classifier's "
        f"class {twin!r} (each matched by name, as an image sub-folder is, underscores and case aside): their images "
        "would be scored as one class"
    )
    assert result["warning"] in capsys.readouterr().err
