"""The fine-tuning recipe: GLUE-format classification and regression, VQA-style soft scores, errors."""

import json
from pathlib import Path
import signal
import sys

import pytest

from tests.examples.test_fault_injection import run_with_fault
from tests.helpers import load_recipe, write_tiny_export
from torchflava.data.finetuning import GlueTsv, ImageTextLabels
from torchflava.data.shapes import ShapesWorld

REPO = Path(__file__).resolve().parents[2]
finetune = load_recipe("examples/flava/finetune.py", "flava_finetune_recipe")
FINETUNE = "examples/flava/finetune.py"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    write_tiny_export(root)
    return root


def _run(export, out, *overrides):
    cfg = finetune.load_config(
        finetune.FinetuneConfig,
        [
            f"model.pretrained={export}",
            f"training.output_dir={out}",
            "training.max_steps=30",
            "training.global_batch_size=16",
            "training.log_every=5",
            "training.checkpoint_every=30",
            "training.progress_bar=false",
            "training.tensorboard=false",
            "optim.lr=3e-3",
            "optim.warmup_steps=3",
            "model.classifier_hidden_dim=32",
            "model.classifier_dropout=0.0",
            *overrides,
        ],
    )
    return finetune.main(cfg)


def _write_glue(path: Path, rows, header):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))


def _sentences(n, seed):
    world = ShapesWorld("texts", n, image_size=32, seed=seed)
    return [world.scene(i) for i in range(n)], [world.caption(i) for i in range(n)]


def test_glue_sentence_pair_classification_learns(export, tmp_path):
    # label: is the first caption's shape red or blue (the second sentence is a distractor)
    scenes, texts = _sentences(800, 1)
    pairs = [(s, t) for s, t in zip(scenes, texts) if s.colour in ("red", "blue")]
    rows = [(i, t, texts[-1 - i], "red" if s.colour == "red" else "blue") for i, (s, t) in enumerate(pairs[:280])]
    _write_glue(tmp_path / "train.tsv", rows[:200], ["index", "question", "sentence", "label"])
    _write_glue(tmp_path / "dev.tsv", rows[200:], ["index", "question", "sentence", "label"])
    report = _run(
        export,
        tmp_path / "run",
        "data.task=glue",
        f"data.train={tmp_path / 'train.tsv'}",
        f"data.val={tmp_path / 'dev.tsv'}",
        "data.text_columns=[question,sentence]",
        "data.labels=[blue,red]",
        "model.modality=text",
        "training.max_steps=120",
    )
    assert report["loss"] == "cross_entropy" and report["num_classes"] == 2
    assert set(report["validation"]) == {"accuracy", "f1", "matthews", "items", "skipped", "chance"}
    assert report["validation"]["skipped"] == 0
    assert report["validation"]["items"] == len(rows) - 200 > 20
    majority = max(sum(r[3] == "red" for r in rows[200:]), sum(r[3] == "blue" for r in rows[200:])) / (len(rows) - 200)
    assert report["validation"]["accuracy"] > max(0.75, majority)
    assert report["validation"]["matthews"] > 0.5  # 0.0 for a majority-class guess
    assert json.loads((tmp_path / "run" / "report.json").read_text()) == report
    assert (tmp_path / "run" / "model" / "flava_classification.safetensors").is_file()


def test_glue_regression_reports_pearson_and_spearman(export, tmp_path):
    scenes, texts = _sentences(200, 3)
    rows = [(t, 5.0 if s.size == "large" else 1.0) for s, t in zip(scenes, texts)]
    _write_glue(tmp_path / "train.tsv", rows[:160], ["sentence", "score"])
    _write_glue(tmp_path / "dev.tsv", rows[160:], ["sentence", "score"])
    report = _run(
        export,
        tmp_path / "run",
        "data.task=glue",
        f"data.train={tmp_path / 'train.tsv'}",
        f"data.val={tmp_path / 'dev.tsv'}",
        "data.label_column=score",
        "data.labels=null",
        "model.modality=text",
        "training.max_steps=150",
    )
    assert report["loss"] == "mse" and report["num_classes"] == 1
    assert report["validation"]["pearson"] > 0.5
    assert report["validation"]["spearman"] > 0.5
    assert json.loads((tmp_path / "run" / "report.json").read_text()) == report


def test_vqa_style_soft_scores(export, tmp_path):
    world = ShapesWorld("pairs", 120, image_size=32, seed=4)
    (tmp_path / "images").mkdir()
    answers = ["red", "green", "blue", "yellow", "purple", "orange"]
    lines = []
    for i in range(120):
        world[i].image.save(tmp_path / "images" / f"{i}.png")
        colour = world.scene(i).colour
        lines.append(
            {
                "image": f"{i}.png",
                "text": "what colour is the shape?",
                "answers": {colour: 1.0, answers[(answers.index(colour) + 1) % 6]: 0.3},
            }
        )
    (tmp_path / "images" / "bad.png").write_text("broken")
    lines.append({"image": "bad.png", "text": "what colour is the shape?", "answers": {"red": 1.0}})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines[:90] + lines[-1:]))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines[90:120]))
    report = _run(
        export,
        tmp_path / "run",
        "data.task=image_text",
        f"data.train={tmp_path / 'train.jsonl'}",
        f"data.val={tmp_path / 'val.jsonl'}",
        f"data.image_root={tmp_path / 'images'}",
        f"data.labels=[{','.join(answers)}]",
        "model.modality=multimodal",
        "training.max_steps=300",
        "optim.lr=1e-3",
    )
    assert report["loss"] == "binary_cross_entropy" and report["num_classes"] == 6
    assert report["skipped_samples"] == 1
    assert report["validation"]["vqa_accuracy"] > 0.33  # chance is about (1 + 0.3) / 6 = 0.22 (0.40 measured)


def test_data_errors_name_the_problem(tmp_path):
    _write_glue(tmp_path / "a.tsv", [("x", "pos")], ["sentence", "label"])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['question'\]"):
        GlueTsv(tmp_path / "a.tsv", ["question"], "label", ["pos", "neg"])
    _write_glue(tmp_path / "b.tsv", [("x", "maybe")], ["sentence", "label"])
    with pytest.raises(ValueError, match="line 2: label 'maybe' is not one of"):
        GlueTsv(tmp_path / "b.tsv", ["sentence"], "label", ["pos", "neg"])
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": "x.png", "text": "q", "answers": {"yes": 2.0}}) + "\n")
    with pytest.raises(ValueError, match=r"is not a number in \[0, 1\]"):
        ImageTextLabels(tmp_path, tmp_path / "c.jsonl", ["yes"])


def test_config_errors(export, tmp_path):
    with pytest.raises(finetune.ConfigError, match="data.task"):
        _run(export, tmp_path / "r1", "data.task=audio")
    with pytest.raises(finetune.ConfigError, match="data.train"):
        _run(export, tmp_path / "r2", "data.task=glue")
    with pytest.raises(finetune.ConfigError, match=r"key 'model\.modality': expected one of .*got 'video'"):
        _run(
            export,
            tmp_path / "r3",
            "data.task=shapes",
            "data.shapes_train=64",
            "data.shapes_val=32",
            "data.image_size=32",
            "model.modality=video",
            "training.max_steps=4",
        )


SHAPES = [
    "data.task=shapes",
    "data.shapes_train=200",
    "data.shapes_val=30",
    "data.image_size=32",
    "model.modality=image",
    "training.log_every=1",
]


def _records(out):
    from torchflava.training.metrics import read_metrics

    return {r["step"]: r for r in read_metrics(out / "metrics.jsonl")}


class _Killed(Exception):
    """Stands for a kill in the middle of a run."""


def test_a_stopped_run_resumes_to_exactly_the_uninterrupted_losses(export, tmp_path, monkeypatch):
    common = [*SHAPES, "training.max_steps=10", "training.checkpoint_every=4", "model.classifier_dropout=0.3"]
    _run(export, tmp_path / "reference", *common)
    fit, calls = finetune.fit, {"n": 0}

    def killed():
        calls["n"] += 1
        if calls["n"] == 7:  # after step 7's update: steps 5 and 6 were logged, the last checkpoint is step 4
            raise _Killed

    monkeypatch.setattr(finetune, "fit", lambda *args, **kwargs: fit(*args, **kwargs, after_step=killed))
    with pytest.raises(_Killed):
        _run(export, tmp_path / "run", *common)
    monkeypatch.undo()
    assert sorted(_records(tmp_path / "run")) == [1, 2, 3, 4, 5, 6]
    _run(export, tmp_path / "run", *common, "training.resume=auto")
    after, before = _records(tmp_path / "run"), _records(tmp_path / "reference")
    assert sorted(after) == list(range(1, 11))
    assert {s: r["loss"] for s, r in after.items()} == {s: r["loss"] for s, r in before.items()}  # exactly


KILLED = [*SHAPES, "training.max_steps=10", "training.checkpoint_every=4", "model.classifier_dropout=0.3"]
KILLED += ["training.global_batch_size=16", "training.progress_bar=false", "training.tensorboard=false"]
KILLED += ["optim.lr=3e-3", "optim.warmup_steps=3", "model.classifier_hidden_dim=32", "training.resume=auto"]


@pytest.fixture(scope="module")
def uninterrupted(export, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = run_with_fault(FINETUNE, [*KILLED, f"model.pretrained={export}", f"training.output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return {s: r["loss"] for s, r in _records(out).items()}


# mid-step after the step-4 checkpoint (steps 5 and 6 logged), and inside the step-8 checkpoint's write
@pytest.mark.parametrize("point, n", [("after_optimizer_step", 7), ("before_dcp_write", 2)])
def test_a_run_killed_with_sigkill_resumes_to_exactly_the_uninterrupted_losses(
    export, uninterrupted, tmp_path, point, n
):
    overrides = [*KILLED, f"model.pretrained={export}", f"training.output_dir={tmp_path}"]
    killed = run_with_fault(FINETUNE, overrides, point, n)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(_records(tmp_path)) == list(range(1, 7 if point == "after_optimizer_step" else 9))
    resumed = run_with_fault(FINETUNE, overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(uninterrupted) == list(range(1, 11))
    assert {s: r["loss"] for s, r in _records(tmp_path).items()} == uninterrupted  # exactly, step for step
    assert (tmp_path / "model" / "flava_classification.safetensors").is_file()


def test_progress_bar_samples_per_second_and_loss_parts(export, tmp_path, capsys):
    _run(export, tmp_path / "run", *SHAPES, "training.max_steps=4", "training.progress_bar=true")
    records = _records(tmp_path / "run")
    assert sorted(records) == [1, 2, 3, 4]
    for record in records.values():
        assert record["samples_per_s"] > 0 and record["kind"] == "train"
        assert record["loss/cross_entropy"] == record["loss"]
    assert "fine-tuning" in capsys.readouterr().err  # the progress bar's label


def test_two_ddp_processes_match_one_and_resume_on_one(export, tmp_path):
    import os
    import shutil
    import subprocess

    common = [
        *SHAPES,
        "training.max_steps=6",
        "training.checkpoint_every=3",
        "model.classifier_dropout=0.0",
        f"model.pretrained={export}",
        "training.global_batch_size=16",
        "training.progress_bar=false",
        "training.tensorboard=false",
        "optim.warmup_steps=1",
        "model.classifier_hidden_dim=32",
    ]
    cfg = finetune.load_config(finetune.FinetuneConfig, [f"training.output_dir={tmp_path / 'one'}", *common])
    finetune.main(cfg)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / "examples" / "flava" / "finetune.py"),
        f"training.output_dir={tmp_path / 'two'}",
        "training.strategy=ddp",
        *common,
    ]
    result = subprocess.run(
        command,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert one.keys() == two.keys() == set(range(1, 7))
    for step in one:
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], rel=1e-5), step
    # The 2-rank run stopped after step 3 resumes on one process: the same step, schedule, data position.
    shutil.rmtree(tmp_path / "two" / "checkpoints" / "step_00000006")
    cfg = finetune.load_config(
        finetune.FinetuneConfig, [f"training.output_dir={tmp_path / 'two'}", "training.resume=auto", *common]
    )
    report = finetune.main(cfg)
    resumed = _records(tmp_path / "two")
    assert sorted(resumed) == list(range(1, 7)) and report["steps"] == 6
    for step in one:
        assert resumed[step]["loss"] == pytest.approx(one[step]["loss"], rel=1e-5), step
        assert resumed[step]["lr"] == pytest.approx(one[step]["lr"], rel=1e-12), step
