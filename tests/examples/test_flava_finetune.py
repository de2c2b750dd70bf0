"""The fine-tuning recipe: GLUE-format classification and regression, VQA-style soft scores, errors."""

import json
from pathlib import Path
import re
import signal

from PIL import Image
import pytest
import torch

from tests.examples.fault_runner import run_script
from tests.helpers import (
    Killed,
    assert_a_changed_folder_refuses_resume,
    load_recipe,
    stop_fit_after,
    two_class_folder,
    write_tiny_export,
)
from torchflava.data.finetuning import GlueTsv, ImageTextLabels, training_source_key
from torchflava.data.shapes import ShapesWorld
from torchflava.training.config import load_config

REPO = Path(__file__).resolve().parents[2]
finetune = load_recipe("examples/flava/finetune.py", "flava_finetune_recipe")
FINETUNE = "examples/flava/finetune.py"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    write_tiny_export(root)
    return root


def _overrides(export, out, *overrides) -> list[str]:
    return [
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
    ]


def _run(export, out, *overrides):
    return finetune.main(load_config(finetune.FinetuneConfig, _overrides(export, out, *overrides)))


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
    assert set(report["validation"]) == {"accuracy", "f1", "matthews", "items", "skipped", "skipped_examples", "chance"}
    assert (report["validation"]["skipped"], report["validation"]["skipped_examples"]) == (0, [])
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


def _image_text_task(tmp_path, train: list, val: list) -> list[str]:
    """Write ``train`` and ``val`` (JSON lines of images under ``tmp_path / "images"``): the recipe's overrides."""
    for name, lines in (("train", train), ("val", val)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return [
        "data.task=image_text",
        f"data.train={tmp_path / 'train.jsonl'}",
        f"data.val={tmp_path / 'val.jsonl'}",
        f"data.image_root={tmp_path / 'images'}",
    ]


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
    report = _run(
        export,
        tmp_path / "run",
        *_image_text_task(tmp_path, lines[:90] + lines[-1:], lines[90:120]),
        f"data.labels=[{','.join(answers)}]",
        "model.modality=multimodal",
        "training.max_steps=300",
        "optim.lr=1e-3",
    )
    assert report["loss"] == "binary_cross_entropy" and report["num_classes"] == 6
    assert report["skipped_samples"] == 1
    assert report["validation"]["vqa_accuracy"] > 0.33  # chance is about (1 + 0.3) / 6 = 0.22 (0.40 measured)


@pytest.mark.parametrize("modality", ["text", "image"])
def test_an_image_text_task_trains_a_text_or_image_head_on_its_own_inputs(export, tmp_path, modality):
    """data.task=image_text with model.modality=text or image (both allowed): the collator's batches hold
    the image and the text, which the head, refusing an input its modality does not read, was given whole."""
    world = ShapesWorld("pairs", 24, image_size=32, seed=5)
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(24):
        world[i].image.save(tmp_path / "images" / f"{i}.png")
        lines.append({"image": f"{i}.png", "text": world[i].text, "answers": {world.scene(i).colour: 1.0}})
    report = _run(
        export,
        tmp_path / "run",
        *_image_text_task(tmp_path, lines[:16], lines[16:]),
        "data.labels=[red,green,blue,yellow,purple,orange]",
        f"model.modality={modality}",
        "training.max_steps=2",
        "optim.warmup_steps=0",
    )
    assert report["steps"] == 2 and report["modality"] == modality
    assert report["validation"]["items"] == 8


def test_a_validation_file_of_the_other_kind_of_targets_is_refused_naming_its_key_before_any_work(export, tmp_path):
    """A VQA-style training file (answer scores) with a validation file of class labels, or the other way round,
    trained every step and then failed in the metrics ("scores must have the logits' shape (8, 3), got (8,)")."""
    from torchflava.training.config import ConfigError

    world = ShapesWorld("pairs", 8, image_size=32, seed=4)
    (tmp_path / "images").mkdir()
    scored, labelled = [], []
    for i in range(8):
        world[i].image.save(tmp_path / "images" / f"{i}.png")
        colour = "red" if world.scene(i).colour == "red" else "blue"
        scored.append({"image": f"{i}.png", "text": "what colour?", "answers": {colour: 1.0, "green": 0.3}})
        labelled.append({"image": f"{i}.png", "text": "what colour?", "label": colour})
    for train, val, kinds in [
        (scored, labelled, ("answer scores ('answers' on each line)", "class labels ('label' on each line)")),
        (labelled, scored, ("class labels ('label' on each line)", "answer scores ('answers' on each line)")),
    ]:
        overrides = _image_text_task(tmp_path, train, val)
        expected = (
            rf"key 'data.val': expected a file of {re.escape(kinds[0])}, as data.train holds, got "
            rf"\"{tmp_path / 'val.jsonl'} {re.escape('(' + kinds[1] + ')')}\"$"
        )
        with pytest.raises(ConfigError, match=expected):
            _run(export, tmp_path / "run", *overrides, "data.labels=[red,green,blue]")
        assert not (tmp_path / "run").exists()
    overrides = _image_text_task(tmp_path, scored, scored)  # an extra set of the other kind, named by its key
    (tmp_path / "extra.jsonl").write_text("".join(json.dumps(line) + "\n" for line in labelled))
    with pytest.raises(ConfigError, match=r"^key 'data.extra_val.extra': expected a file of answer scores"):
        _run(
            export,
            tmp_path / "run",
            *overrides,
            "data.labels=[red,green,blue]",
            f"data.extra_val.extra={tmp_path / 'extra.jsonl'}",
        )


def test_data_errors_name_the_problem(tmp_path):
    _write_glue(tmp_path / "a.tsv", [("x", "pos")], ["sentence", "label"])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['question'\]"):
        GlueTsv(tmp_path / "a.tsv", ["question"], "label", ["pos", "neg"])
    _write_glue(tmp_path / "b.tsv", [("x", "maybe")], ["sentence", "label"])
    with pytest.raises(
        ValueError, match=r"column 'label' row 0: expected one of the class names .*, got 'maybe' \(line 2\)"
    ):
        GlueTsv(tmp_path / "b.tsv", ["sentence"], "label", ["pos", "neg"])
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": "x.png", "text": "q", "answers": {"yes": 2.0}}) + "\n")
    with pytest.raises(ValueError, match=r"is not a number in \[0, 1\]"):
        ImageTextLabels(tmp_path, tmp_path / "c.jsonl", ["yes"])


def test_config_errors(export, tmp_path):
    with pytest.raises(finetune.ConfigError, match="data.task"):
        _run(export, tmp_path / "r1", "data.task=audio")
    with pytest.raises(finetune.ConfigError, match="data.train"):
        _run(export, tmp_path / "r2", "data.task=glue")
    with pytest.raises(finetune.ConfigError, match=r"key 'model\.modality': expected null or one of .*got 'video'"):
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


def test_a_stopped_run_resumes_to_exactly_the_uninterrupted_losses(export, tmp_path, monkeypatch):
    common = [*SHAPES, "training.max_steps=10", "training.checkpoint_every=4", "model.classifier_dropout=0.3"]
    _run(export, tmp_path / "reference", *common)
    # after step 7's update: steps 5 and 6 were logged, the last checkpoint is step 4
    stop_fit_after(monkeypatch, finetune, 7)
    with pytest.raises(Killed):
        _run(export, tmp_path / "run", *common)
    monkeypatch.undo()
    assert sorted(_records(tmp_path / "run")) == [1, 2, 3, 4, 5, 6]
    _run(export, tmp_path / "run", *common, "training.resume=auto")
    after, before = _records(tmp_path / "run"), _records(tmp_path / "reference")
    assert sorted(after) == list(range(1, 11))
    assert {s: r["loss"] for s, r in after.items()} == {s: r["loss"] for s, r in before.items()}  # exactly


def test_a_resumed_run_may_evaluate_on_another_validation_set_and_trains_exactly_as_before(
    export, tmp_path, monkeypatch
):
    """data.val (and data.shapes_val) is read only after training, to evaluate the final model: a run that
    resumed with another validation set was refused, though its training stream is the same."""
    from torchflava.training.config import check_resume_config, config_yaml

    scenes, texts = _sentences(120, 5)
    rows = [(t, "red" if s.colour == "red" else "other") for s, t in zip(scenes, texts)]
    _write_glue(tmp_path / "train.tsv", rows[:80], ["sentence", "label"])
    _write_glue(tmp_path / "dev.tsv", rows[80:100], ["sentence", "label"])
    _write_glue(tmp_path / "other_dev.tsv", rows[80:], ["sentence", "label"])
    common = ["data.task=glue", f"data.train={tmp_path / 'train.tsv'}", "data.labels=[other,red]"]
    common += ["model.modality=text", "training.log_every=1", "training.checkpoint_every=2", "optim.warmup_steps=0"]
    common += ["model.classifier_dropout=0.3", "training.max_steps=4"]  # the RNG stream matters too
    dev, other = f"data.val={tmp_path / 'dev.tsv'}", f"data.val={tmp_path / 'other_dev.tsv'}"
    assert _run(export, tmp_path / "reference", *common, dev)["validation"]["items"] == 20
    stop_fit_after(monkeypatch, finetune, 3)  # after step 3's update: the last checkpoint is step 2's
    with pytest.raises(Killed):
        _run(export, tmp_path / "run", *common, dev)
    monkeypatch.undo()
    report = _run(export, tmp_path / "run", *common, other, "training.resume=auto")
    assert report["validation"]["items"] == 40  # the new set's
    after, before = _records(tmp_path / "run"), _records(tmp_path / "reference")
    assert sorted(after) == [1, 2, 3, 4]
    assert {s: r["loss"] for s, r in after.items()} == {s: r["loss"] for s, r in before.items()}  # exactly
    assert f"val: {tmp_path / 'other_dev.tsv'}" in (tmp_path / "run" / "config.yaml").read_text()
    shapes = load_config(finetune.FinetuneConfig, SHAPES)
    (tmp_path / "shapes.yaml").write_text(config_yaml(shapes))
    held_out = load_config(finetune.FinetuneConfig, [*SHAPES, "data.shapes_val=60"])
    assert check_resume_config(tmp_path / "shapes.yaml", held_out) == []


KILLED = [*SHAPES, "training.max_steps=10", "training.checkpoint_every=4", "model.classifier_dropout=0.3"]
KILLED += ["training.global_batch_size=16", "training.progress_bar=false", "training.tensorboard=false"]
KILLED += ["optim.lr=3e-3", "optim.warmup_steps=3", "model.classifier_hidden_dim=32", "training.resume=auto"]


@pytest.fixture(scope="module")
def uninterrupted(export, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = run_script(FINETUNE, [*KILLED, f"model.pretrained={export}", f"training.output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return {s: r["loss"] for s, r in _records(out).items()}


# mid-step after the step-4 checkpoint (steps 5 and 6 logged), and inside the step-8 checkpoint's write
@pytest.mark.parametrize("point, n", [("after_optimizer_step", 7), ("before_dcp_write", 2)])
def test_a_run_killed_with_sigkill_resumes_to_exactly_the_uninterrupted_losses(
    export, uninterrupted, tmp_path, point, n
):
    overrides = [*KILLED, f"model.pretrained={export}", f"training.output_dir={tmp_path}"]
    killed = run_script(FINETUNE, overrides, point, n)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(_records(tmp_path)) == list(range(1, 7 if point == "after_optimizer_step" else 9))
    resumed = run_script(FINETUNE, overrides)
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
    import shutil

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
    cfg = load_config(finetune.FinetuneConfig, [f"training.output_dir={tmp_path / 'one'}", *common])
    finetune.main(cfg)
    two = [f"training.output_dir={tmp_path / 'two'}", "training.strategy=ddp", *common]
    result = run_script("examples/flava/finetune.py", two, nproc=2)  # torchrun's 2 ranks, forked with imports done
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert one.keys() == two.keys() == set(range(1, 7))
    for step in one:
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], rel=1e-5), step
    # The 2-rank run stopped after step 3 resumes on one process: the same step, schedule, data position.
    shutil.rmtree(tmp_path / "two" / "checkpoints" / "step_00000006")
    cfg = load_config(
        finetune.FinetuneConfig, [f"training.output_dir={tmp_path / 'two'}", "training.resume=auto", *common]
    )
    report = finetune.main(cfg)
    resumed = _records(tmp_path / "two")
    assert sorted(resumed) == list(range(1, 7)) and report["steps"] == 6
    for step in one:
        assert resumed[step]["loss"] == pytest.approx(one[step]["loss"], rel=1e-5), step
        assert resumed[step]["lr"] == pytest.approx(one[step]["lr"], rel=1e-12), step


# --------------------------------------------------------------------------- GLUE's files as distributed
# Each task's train and dev files line for line in the format of GLUE's download: CoLA's train/dev
# without a header, MRPC with the MSR corpus' one, MNLI's dev_matched with five annotators' labels, a
# row of QQP's train missing fields (the real one has a few), an unbalanced double quote in a field of
# each (read as a character: GLUE's files are read without quoting). Then what the task's config
# reads from each file: (text, label) per row, None for an unusable row.
MNLI_TRAIN = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse"
MNLI_TRAIN += "\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
MNLI_DEV = MNLI_TRAIN.replace("label1\t", "label1\tlabel2\tlabel3\tlabel4\tlabel5\t")
PAIRS = "index\tsentence1\tsentence2\tlabel"  # RTE's and WNLI's header
GLUE_TASKS = {
    "cola": (
        ['gj04\t1\t\tThe dog "barked at the mail carrier.', "bc01\t0\t*\tMail the carrier barked dog."],
        ["cj99\t0\t*\tQuickly the of ran.", "cj99\t1\t\tShe ran quickly."],
        [('The dog "barked at the mail carrier.', 1), ("Mail the carrier barked dog.", 0)],
        [("Quickly the of ran.", 0), ("She ran quickly.", 1)],
    ),
    "sst2": (
        ["sentence\tlabel", 'a warm , funny " film \t1', "the plot goes nowhere \t0"],
        ["sentence\tlabel", "it 's a dull mess . \t0", "a gem of a movie . \t1"],
        [('a warm , funny " film', 1), ("the plot goes nowhere", 0)],
        [("it 's a dull mess .", 0), ("a gem of a movie .", 1)],
    ),
    "mrpc": (
        [
            "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
            '1\t10\t11\tHe said " the plan was fine .\tThe plan was fine , he said .',
            "0\t12\t13\tShares rose 5 percent .\tThe company hired a new chief .",
        ],
        [
            "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
            "0\t20\t21\tIt rained all day .\tSales fell in May .",
            "1\t22\t23\tA cat sat .\tA cat was sitting .",
        ],
        [
            ('He said " the plan was fine . [SEP] The plan was fine , he said .', 1),
            ("Shares rose 5 percent . [SEP] The company hired a new chief .", 0),
        ],
        [("It rained all day . [SEP] Sales fell in May .", 0), ("A cat sat . [SEP] A cat was sitting .", 1)],
    ),
    "qqp": (
        [
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            '5\t11\t12\tHow do I learn "Python?\tWhat is the best way to learn Python?\t1',
            "6\t13\t14\tWhy is the sky blue?",
            "7\t15\t16\tWhat is a black hole?\tHow tall is Everest?\t0",
        ],
        [
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            "8\t17\t18\tIs tea healthy?\tIs green tea good for you?\t1",
            "9\t19\t20\tWho won?\tWhere is Rome?\t0",
        ],
        [
            ('How do I learn "Python? [SEP] What is the best way to learn Python?', 1),
            None,
            ("What is a black hole? [SEP] How tall is Everest?", 0),
        ],
        [("Is tea healthy? [SEP] Is green tea good for you?", 1), ("Who won? [SEP] Where is Rome?", 0)],
    ),
    "mnli": (
        [
            MNLI_TRAIN,
            '0\t31\t31e\tfiction\t( ( A man ) sleeps )\t( ( A man ) rests )\t(ROOT (S))\t(ROOT (S))\tA man "sleeps.\tA man rests.\tentailment\tentailment',
            "1\t32\t32c\ttravel\t( Rome )\t( Paris )\t(ROOT (NP))\t(ROOT (NP))\tThe city is Rome.\tThe city is Paris.\tcontradiction\tcontradiction",
            "2\t33\t33n\tslate\t( It )\t( It )\t(ROOT (S))\t(ROOT (S))\tIt snowed.\tIt snowed a lot.\tneutral\tneutral",
        ],
        [
            MNLI_DEV,
            "9\t41\t41n\tfiction\t( x )\t( y )\t(ROOT (S))\t(ROOT (S))\tShe sang.\tShe sang well.\tneutral\tneutral\tentailment\tneutral\tneutral\tneutral",
            "10\t42\t42e\ttravel\t( x )\t( y )\t(ROOT (S))\t(ROOT (S))\tWe flew.\tWe travelled.\tentailment\tentailment\tentailment\tentailment\tneutral\tentailment",
        ],
        [
            ('A man "sleeps. [SEP] A man rests.', 0),
            ("The city is Rome. [SEP] The city is Paris.", 2),
            ("It snowed. [SEP] It snowed a lot.", 1),
        ],
        [("She sang. [SEP] She sang well.", 1), ("We flew. [SEP] We travelled.", 0)],
    ),
    "qnli": (
        [
            "index\tquestion\tsentence\tlabel",
            '0\tWho wrote "Hamlet?\tHamlet was written by Shakespeare.\tentailment',
            "1\tHow old is it?\tIt is red.\tnot_entailment",
        ],
        [
            "index\tquestion\tsentence\tlabel",
            "0\tWhen did it end?\tThe war was long.\tnot_entailment",
            "1\tWhere is Oslo?\tOslo is in Norway.\tentailment",
        ],
        [('Who wrote "Hamlet? [SEP] Hamlet was written by Shakespeare.', 0), ("How old is it? [SEP] It is red.", 1)],
        [("When did it end? [SEP] The war was long.", 1), ("Where is Oslo? [SEP] Oslo is in Norway.", 0)],
    ),
    "rte": (
        [
            PAIRS,
            '0\tThe "bank closed at noon.\tThe bank closed.\tentailment',
            "1\tIt rained.\tIt was dry.\tnot_entailment",
        ],
        [PAIRS, "0\tOil prices rose.\tOil got cheaper.\tnot_entailment", "1\tAnn won.\tAnn took part.\tentailment"],
        [('The "bank closed at noon. [SEP] The bank closed.', 0), ("It rained. [SEP] It was dry.", 1)],
        [("Oil prices rose. [SEP] Oil got cheaper.", 1), ("Ann won. [SEP] Ann took part.", 0)],
    ),
    "wnli": (
        [
            PAIRS,
            '0\tThe cup fell because "it was tipped.\tThe cup was tipped.\t1',
            "1\tI met Jo; she waved.\tI waved.\t0",
        ],
        [
            PAIRS,
            "0\tTom thanked Bob because he helped.\tTom helped.\t0",
            "1\tThe box held the ball; it was big.\tThe box was big.\t1",
        ],
        [
            ('The cup fell because "it was tipped. [SEP] The cup was tipped.', 1),
            ("I met Jo; she waved. [SEP] I waved.", 0),
        ],
        [
            ("Tom thanked Bob because he helped. [SEP] Tom helped.", 0),
            ("The box held the ball; it was big. [SEP] The box was big.", 1),
        ],
    ),
    "stsb": (
        [
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
            '0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane "takes off.\tA jet takes off.\t5.000',
            "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man plays a flute.\tA man plays a drum.\t1.750",
        ],
        [
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
            "0\tmain-news\theadlines\t2015\t0002\tnone\tnone\tStocks fell.\tA man sings.\t0.250",
            "1\tmain-news\theadlines\t2015\t0003\tnone\tnone\tRates rose.\tRates went up.\t4.800",
        ],
        [('A plane "takes off. [SEP] A jet takes off.', 5.0), ("A man plays a flute. [SEP] A man plays a drum.", 1.75)],
        [("Stocks fell. [SEP] A man sings.", 0.25), ("Rates rose. [SEP] Rates went up.", 4.8)],
    ),
}
# MNLI's dev_mismatched.tsv (genres absent from its train.tsv), in dev_matched.tsv's format, and what
# mnli.yaml's data.extra_val.mismatched reads from it.
MNLI_MISMATCHED = (
    [
        MNLI_DEV,
        "20\t51\t51c\tletters\t( x )\t( y )\t(ROOT (S))\t(ROOT (S))\tDear Sir, we won.\tWe lost.\tcontradiction\tcontradiction\tcontradiction\tneutral\tcontradiction\tcontradiction",
        '21\t52\t52e\tverbatim\t( x )\t( y )\t(ROOT (S))\t(ROOT (S))\tHe "said it twice.\tHe said it.\tentailment\tentailment\tentailment\tentailment\tentailment\tentailment',
        "22\t53\t53n\toup\t( x )\t( y )\t(ROOT (S))\t(ROOT (S))\tThe book sold.\tThe book sold well.\tneutral\tneutral\tneutral\tcontradiction\tneutral\tneutral",
    ],
    [
        ("Dear Sir, we won. [SEP] We lost.", 2),
        ('He "said it twice. [SEP] He said it.', 0),
        ("The book sold. [SEP] The book sold well.", 1),
    ],
)
# What each task's report holds (GLUE's metrics: Matthews for CoLA, F1 for MRPC and QQP, ...).
GLUE_METRICS = {
    **dict.fromkeys(["cola", "sst2", "mrpc", "qqp", "qnli", "rte", "wnli"], {"accuracy", "matthews", "f1"}),
    "mnli": {"accuracy", "matthews"},
    "stsb": {"pearson", "spearman"},
}


def _write_glue_task(root: Path, task: str) -> tuple[Path, Path]:
    """The task's train.tsv and dev.tsv (MNLI's dev_matched.tsv, and its dev_mismatched.tsv) under ``root``."""
    paths = root / "train.tsv", root / ("dev_matched.tsv" if task == "mnli" else "dev.tsv")
    for path, lines in zip(paths, GLUE_TASKS[task][:2]):
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    if task == "mnli":
        (root / "dev_mismatched.tsv").write_text("".join(line + "\n" for line in MNLI_MISMATCHED[0]), encoding="utf-8")
    return paths


def test_every_glue_task_reads_its_distributed_files_through_its_config(export, tmp_path):
    from dataclasses import asdict

    from torchflava.data.samples import BadSample
    from torchflava.models import flava_model_for_classification
    from torchflava.pretrained import load_pretrained

    pretrained = load_pretrained(export)
    assert set(GLUE_TASKS) == {p.stem for p in (REPO / "examples/flava/configs/finetuning").glob("*.yaml")} - {
        "shapes",
        "vqa",
    }
    for task, (_, _, train_items, dev_items) in GLUE_TASKS.items():
        (tmp_path / task).mkdir()
        train_path, dev_path = _write_glue_task(tmp_path / task, task)
        config = REPO / "examples/flava/configs/finetuning" / f"{task}.yaml"
        extra = [f"data.extra_val.mismatched={tmp_path / task / 'dev_mismatched.tsv'}"] if task == "mnli" else []
        cfg = load_config(
            finetune.FinetuneConfig,
            [
                f"config={config}",
                f"data.train={train_path}",
                f"data.val={dev_path}",
                f"model.pretrained={export}",
                *extra,
            ],
        )
        finetune.validate(cfg, world_size=1)
        train, val, classes = finetune.build_splits(cfg.data)
        sets = [(train, train_items), (val, dev_items)]
        for name, path in (cfg.data.extra_val or {}).items():  # MNLI's mismatched dev set, read as the matched one
            sets.append((finetune.open_val_set(cfg.data, classes, f"data.extra_val.{name}", path), MNLI_MISMATCHED[1]))
        assert len(sets) == (3 if task == "mnli" else 2)
        for source, expected in sets:
            assert len(source) == len(expected), task
            for index, item in enumerate(expected):
                if item is None:  # the row missing fields: an unusable item naming its line
                    with pytest.raises(BadSample, match=rf"train.tsv line {index + 2}: expected 6 fields, got 4 \("):
                        source[index]
                else:  # (a pair's two sentences, written below as one text joined by " [SEP] ")
                    text, label = item
                    text = tuple(text.split(" [SEP] ")) if " [SEP] " in text else text
                    assert source[index] == (None, text, label), task
        loss = finetune.task_losses(cfg.data)[0]
        kwargs = {**asdict(cfg.model), "pretrained": None, "loss": loss}
        model = flava_model_for_classification(
            1 if classes is None else len(classes), backbone=pretrained.model, **kwargs
        )
        collator = finetune.ClassificationCollator(
            pretrained.tokenizer, image_size=pretrained.image_size, max_text_length=pretrained.max_text_length
        )
        for source, items in sets:
            report = finetune.evaluate(model, source, collator, loss)
            assert set(report) == GLUE_METRICS[task] | {"items", "skipped", "skipped_examples"}, task
            assert (report["items"], report["skipped"]) == (sum(i is not None for i in items), items.count(None))


def test_cola_fine_tunes_on_its_headerless_files_counting_a_damaged_row(export, tmp_path):
    """CoLA's train.tsv and dev.tsv have no header row: data.columns names their columns."""
    scenes, texts = _sentences(60, 5)
    rows = [
        ("src", "1" if s.size == "large" else "0", "" if s.size == "large" else "*", t) for s, t in zip(scenes, texts)
    ]
    rows[3] = ("src", "1", "", 'a "quoted caption')
    lines = ["\t".join(r) for r in rows]
    (tmp_path / "train.tsv").write_text("\n".join([*lines[:40], "src\t1\ta row cut short"]) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(lines[40:]) + "\n")
    config = REPO / "examples/flava/configs/finetuning/cola.yaml"
    report = _run(
        export,
        tmp_path / "run",
        f"config={config}",
        f"data.train={tmp_path / 'train.tsv'}",
        f"data.val={tmp_path / 'dev.tsv'}",
    )
    assert (report["task"], report["loss"], report["num_classes"], report["steps"]) == ("glue", "cross_entropy", 2, 30)
    assert report["skipped_samples"] == 1  # the row cut short, drawn in 30 steps of 16 over 41 rows
    assert report["skipped_examples"][0].startswith("train[40]: ")
    assert report["skipped_examples"][0].endswith(
        "train.tsv line 41: expected 4 fields, got 3 (the columns ['source', 'label', 'original_label', 'sentence'])"
    )
    assert set(report["validation"]) == {"accuracy", "matthews", "f1", "items", "skipped", "skipped_examples", "chance"}
    assert (report["validation"]["items"], report["validation"]["skipped"]) == (20, 0)


MNLI_CONFIG = REPO / "examples/flava/configs/finetuning/mnli.yaml"


def _write_mnli(root: Path) -> None:
    """train.tsv (40 rows), dev_matched.tsv (20) and dev_mismatched.tsv (13, other genres and texts) under
    ``root``, in MNLI's formats: 12 columns for train.tsv, 16 for the dev sets (five annotators' labels
    before gold_label), a double quote in a dev_mismatched.tsv field."""
    labels = ["entailment", "neutral", "contradiction"]

    def rows(texts, genre):
        return [
            (str(i), str(i), f"{i}x", genre, "( x )", "( y )", "(ROOT)", "(ROOT)", t, "a shape", labels[i % 3])
            for i, t in enumerate(texts)
        ]

    matched, mismatched = rows(_sentences(60, 6)[1], "fiction"), rows(_sentences(13, 7)[1], "letters")
    mismatched[4] = (*mismatched[4][:8], 'a "quoted caption', *mismatched[4][9:])
    train = [MNLI_TRAIN] + ["\t".join((*r, r[-1])) for r in matched[:40]]
    (root / "train.tsv").write_text("\n".join(train) + "\n")
    for name, dev in (("dev_matched.tsv", matched[40:]), ("dev_mismatched.tsv", mismatched)):
        lines = [MNLI_DEV] + ["\t".join((*r, r[-1], r[-1], r[-1], r[-1], r[-1])) for r in dev]
        (root / name).write_text("\n".join(lines) + "\n")


def test_mnli_fine_tunes_on_its_many_column_files_with_three_classes(export, tmp_path):
    """MNLI's train.tsv has 12 columns, dev_matched.tsv 16 (five annotators' labels before gold_label)."""
    _write_mnli(tmp_path)
    report = _run(
        export,
        tmp_path / "run",
        f"config={MNLI_CONFIG}",
        f"data.train={tmp_path / 'train.tsv'}",
        f"data.val={tmp_path / 'dev_matched.tsv'}",
        f"data.extra_val.mismatched={tmp_path / 'dev_mismatched.tsv'}",
    )
    assert (report["loss"], report["num_classes"], report["skipped_samples"]) == ("cross_entropy", 3, 0)
    assert set(report["validation"]) == {"accuracy", "matthews", "items", "skipped", "skipped_examples", "chance"}
    assert (report["validation"]["items"], report["validation"]["chance"]) == (20, 1 / 3)


def test_mnli_reports_matched_and_mismatched_in_one_run_as_two_single_set_runs_would(export, tmp_path):
    """mnli.yaml evaluates dev_matched.tsv (data.val, the primary set) and dev_mismatched.tsv
    (data.extra_val.mismatched) after one training run; each set's metrics equal those of a run with
    the same seed that evaluates that set alone."""
    _write_mnli(tmp_path)
    files = [f"config={MNLI_CONFIG}", f"data.train={tmp_path / 'train.tsv'}"]
    matched, mismatched = f"data.val={tmp_path / 'dev_matched.tsv'}", tmp_path / "dev_mismatched.tsv"
    report = _run(export, tmp_path / "both", *files, matched, f"data.extra_val.mismatched={mismatched}")
    sets = report["validation_sets"]
    assert list(sets) == ["matched", "mismatched"]  # data.val's first, by the names mnli.yaml gives
    assert report["validation"] == sets["matched"]  # the primary set's
    assert (sets["matched"]["items"], sets["mismatched"]["items"]) == (20, 13)
    assert sets["matched"]["skipped"] == sets["mismatched"]["skipped"] == 0
    for metrics in sets.values():
        assert set(metrics) == {"accuracy", "matthews", "items", "skipped", "skipped_examples", "chance"}
        assert metrics["chance"] == 1 / 3
    assert json.loads((tmp_path / "both" / "report.json").read_text()) == report
    # data.extra_val=null drops the config's further sets: one set a run, the same training
    alone = {
        "matched": _run(export, tmp_path / "matched", *files, matched, "data.extra_val=null"),
        "mismatched": _run(
            export,
            tmp_path / "mismatched",
            *files,
            f"data.val={mismatched}",
            "data.val_name=mismatched",
            "data.extra_val=null",
        ),
    }
    for name, single in alone.items():
        assert list(single["validation_sets"]) == [name]
        assert single["validation"] == single["validation_sets"][name] == sets[name], name  # exactly
        assert single["steps"] == report["steps"] == 30
    assert sets["matched"] != sets["mismatched"]
    losses = {run: {s: r["loss"] for s, r in _records(tmp_path / run).items()} for run in ("both", *alone)}
    assert losses["matched"] == losses["mismatched"] == losses["both"]  # the same training, step for step


def test_a_missing_extra_validation_set_exits_2_with_one_line_before_any_work(export, tmp_path):
    _write_mnli(tmp_path)
    common = [
        f"config={MNLI_CONFIG}",
        f"model.pretrained={export}",
        f"data.train={tmp_path / 'train.tsv'}",
        f"data.val={tmp_path / 'dev_matched.tsv'}",
        f"training.output_dir={tmp_path / 'run'}",
        "training.max_steps=2",  # were the set not checked, a short run, not mnli.yaml's
        "optim.warmup_steps=1",
        "training.global_batch_size=4",
        "training.progress_bar=false",
        "training.tensorboard=false",
    ]
    expected = {
        # mnli.yaml names the set; its path is the user's, as data.val's is
        "": "error: key 'data.extra_val.mismatched': expected a file for data.task=glue (validation set "
        "'mismatched'; data.extra_val=null drops the sets), got None",
        f"data.extra_val.mismatched={tmp_path / 'nowhere.tsv'}": "error: key 'data.extra_val.mismatched': expected "
        f"an existing file, got '{tmp_path / 'nowhere.tsv'}'",
    }
    for override, line in expected.items():
        result = run_script(  # a process forked with the imports done, in a minimal environment
            FINETUNE,
            [*common, *([override] if override else [])],
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
            timeout=120,
        )
        assert (result.returncode, result.stderr.strip()) == (2, line), result.stderr[-3000:]
        assert not (tmp_path / "run").exists() or [p.name for p in (tmp_path / "run").iterdir()] == [".run.lock"]
    # a set whose rows do not read as the task's (the labels of another task) is named before training
    (tmp_path / "other.tsv").write_text("index\tsentence1\tsentence2\tgold_label\n0\ta\tb\tnot_entailment\n")
    with pytest.raises(
        finetune.ConfigError, match=r"^key 'data.extra_val.mismatched': expected a TSV file with a header"
    ):
        _run(export, tmp_path / "run", *common[:4], f"data.extra_val.mismatched={tmp_path / 'other.tsv'}")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_run_from_before_validation_sets_resumes_and_may_add_one(tmp_path):
    """data.val_name and data.extra_val change only what is evaluated after training: a run whose
    config.yaml predates them (or lists other sets) resumes."""
    from torchflava.training.config import check_resume_config, save_config

    _write_mnli(tmp_path)
    files = [f"data.train={tmp_path / 'train.tsv'}", f"data.val={tmp_path / 'dev_matched.tsv'}", "data.task=glue"]
    cfg = load_config(finetune.FinetuneConfig, files)
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    old = "".join(line for line in text.splitlines(keepends=True) if "val_name" not in line and "extra_val" not in line)
    assert old != text
    (tmp_path / "config.yaml").write_text(old)
    more = [*files, "data.val_name=matched", f"data.extra_val.mismatched={tmp_path / 'dev_mismatched.tsv'}"]
    assert check_resume_config(tmp_path / "config.yaml", load_config(finetune.FinetuneConfig, more)) == []
    with pytest.raises(finetune.ConfigError, match="data.train"):
        check_resume_config(tmp_path / "config.yaml", load_config(finetune.FinetuneConfig, [*more, "data.train=x"]))


def test_glue_column_errors_name_the_key(export, tmp_path):
    train, dev = _write_glue_task(tmp_path, "cola")
    files = [f"data.train={train}", f"data.val={dev}", "data.text_columns=[sentence]", "data.labels=['0','1']"]
    files += ["model.modality=text"]
    with pytest.raises(
        finetune.ConfigError,
        match=r"^key 'data.columns': expected null \(a header row names them\) or distinct column names holding "
        r"\['sentence', 'label'\], got \['source', 'sentence'\]$",
    ):
        _run(export, tmp_path / "r1", *files, "data.columns=[source,sentence]")
    with pytest.raises(
        finetune.ConfigError,
        match=r"^key 'data.train': expected a TSV file with a header holding .*line 1 reads as data",
    ):  # CoLA's file read as if it had a header
        _run(export, tmp_path / "r2", *files)


def _glue_files(tmp_path, labels, n=24):
    """train.tsv and dev.tsv of ``n`` sentences with ``labels`` (as written) in turn; their overrides, with
    data.labels left null."""
    rows = [(f"sentence {i}", labels[i % len(labels)]) for i in range(n)]
    _write_glue(tmp_path / "train.tsv", rows, ["sentence", "label"])
    _write_glue(tmp_path / "dev.tsv", rows[: n // 2], ["sentence", "label"])
    return ["data.task=glue", f"data.train={tmp_path / 'train.tsv'}", f"data.val={tmp_path / 'dev.tsv'}"]


def test_integer_glue_labels_without_data_labels_exit_2_naming_both_ways_out(export, tmp_path):
    """SST-2's header and 0/1 labels with data.labels null trained a regression (mse, Pearson) without a word."""
    files = _glue_files(tmp_path, ["0", "1"])
    out = tmp_path / "run"
    result = run_script(FINETUNE, [*files, f"model.pretrained={export}", f"training.output_dir={out}"])
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == (
        f"error: key 'data.labels': expected the class names, since every label of {tmp_path / 'train.tsv'} is an "
        "integer: data.labels=[0,1] (the 2 values found, sorted) to classify, or model.loss=mse for a regression on "
        "integer targets, got None"
    )
    assert not out.exists() or [p.name for p in out.iterdir()] == [".run.lock"]


def test_integer_glue_labels_list_at_most_ten_values_sorted(export, tmp_path):
    (tmp_path / "ratings").mkdir()
    files = _glue_files(tmp_path / "ratings", ["3", "1", "5", "2", "4"])
    with pytest.raises(finetune.ConfigError, match=r"data\.labels=\[1,2,3,4,5\] \(the 5 values found, sorted\)"):
        _run(export, tmp_path / "r1", *files)
    files = _glue_files(tmp_path, [str(v) for v in range(-2, 10)])
    with pytest.raises(
        finetune.ConfigError, match=r"data\.labels=\[-2,-1,0,1,2,3,4,5,6,7,\.\.\.\] \(the first 10 of the 12 values"
    ):
        _run(export, tmp_path / "r2", *files)


def test_integer_glue_labels_train_a_regression_with_model_loss_mse_and_decimals_stay_one(export, tmp_path):
    (tmp_path / "ints").mkdir()
    files = _glue_files(tmp_path / "ints", ["1", "5"])
    report = _run(export, tmp_path / "r1", *files, "model.loss=mse", "training.max_steps=2", "optim.warmup_steps=1")
    assert (report["loss"], report["num_classes"], report["modality"]) == ("mse", 1, "text")
    assert set(report["validation"]) == {"pearson", "spearman", "items", "skipped", "skipped_examples"}
    # a label written with a decimal point or an exponent is a number, not a class: read as regression targets
    for name, labels in (("decimals", ["1.0", "5.0"]), ("exponent", ["1", "5e0"]), ("scores", ["3.800", "1"])):
        (tmp_path / name).mkdir()
        files = _glue_files(tmp_path / name, labels)
        cfg = load_config(finetune.FinetuneConfig, [*files, f"model.pretrained={export}"])
        train, _, classes = finetune.build_splits(cfg.data)
        assert classes is None and {train[i].label for i in range(2)} == {float(v) for v in labels}, name


def test_numeric_glue_labels_listed_in_data_labels_are_classes(export, tmp_path):
    files = _glue_files(tmp_path, ["0", "1"])
    cfg = load_config(finetune.FinetuneConfig, [*files, "data.labels=[0,1]", f"model.pretrained={export}"])
    assert cfg.data.labels == ["0", "1"]
    train, val, classes = finetune.build_splits(cfg.data)
    assert classes == ["0", "1"] and [train[i].label for i in range(4)] == [0, 1, 0, 1]
    report = _run(export, tmp_path / "run", *files, "data.labels=[0,1]", "training.max_steps=2", "optim.warmup_steps=1")
    assert (report["loss"], report["num_classes"], report["validation"]["chance"]) == ("cross_entropy", 2, 0.5)
    assert json.loads((tmp_path / "run" / "model" / "labels.json").read_text()) == ["0", "1"]


def test_glue_errors_without_data_labels_say_how_to_classify(export, tmp_path):
    files = _glue_files(tmp_path, ["negative", "positive"])
    with pytest.raises(
        finetune.ConfigError,
        match=r"^key 'data.train': expected .*and numeric labels \(regression targets; to classify, list the class "
        r"names in data.labels\), got .*expected a finite number \(a regression\), got 'negative' \(line 2\)\)$",
    ):
        _run(export, tmp_path / "r1", *files)
    with pytest.raises(
        finetune.ConfigError,
        match=r"^key 'model.loss': expected null or one of \('mse',\) for this task \(its labels are read as "
        r"regression targets; cross_entropy needs the class names in data.labels\), got 'cross_entropy'$",
    ):
        _run(export, tmp_path / "r2", *files, "model.loss=cross_entropy")


def test_model_modality_null_is_the_tasks_only_one_and_a_wrong_one_is_still_refused(export, tmp_path):
    files = _glue_files(tmp_path, ["neg", "pos"])
    report = _run(
        export, tmp_path / "glue", *files, "data.labels=[neg,pos]", "training.max_steps=2", "optim.warmup_steps=1"
    )
    assert report["modality"] == "text"
    assert "modality: text" in (tmp_path / "glue" / "config.yaml").read_text()
    shapes = ["data.task=shapes", "data.shapes_train=16", "data.shapes_val=8", "data.image_size=32"]
    report = _run(export, tmp_path / "shapes", *shapes, "training.max_steps=2", "optim.warmup_steps=1")
    assert report["modality"] == "image"
    for task, modality in (("image_folder", "image"), ("image_text", "multimodal")):
        cfg = load_config(finetune.FinetuneConfig, [f"data.task={task}"])
        assert (cfg.model.modality, finetune.task_modality(cfg)) == (None, modality)
    with pytest.raises(
        finetune.ConfigError, match=r"^key 'model.modality': expected null or one of \('text',\) for data.task=glue"
    ):
        _run(export, tmp_path / "wrong", *files, "data.labels=[neg,pos]", "model.modality=image")


def test_max_text_length_null_is_128_at_most_the_checkpoints_positions_and_recorded(export, tmp_path):
    files = [*_glue_files(tmp_path, ["neg", "pos"]), "data.labels=[neg,pos]"]
    _run(export, tmp_path / "run", *files, "training.max_steps=2", "optim.warmup_steps=1")
    assert "max_text_length: 32\n" in (tmp_path / "run" / "config.yaml").read_text()  # the export has 32 positions
    tokenizer = json.loads((tmp_path / "run" / "model" / "tokenizer_config.json").read_text())
    assert tokenizer["model_max_length"] == 32
    _run(export, tmp_path / "short", *files, "data.max_text_length=12", "training.max_steps=2", "optim.warmup_steps=1")
    assert "max_text_length: 12\n" in (tmp_path / "short" / "config.yaml").read_text()
    with pytest.raises(
        finetune.ConfigError,
        match=rf"^key 'data.max_text_length': expected null \(128, at most the checkpoint's positions\) or at most 32, "
        rf"the text positions of model.pretrained \({export}\), got 64$",
    ):
        _run(export, tmp_path / "long", *files, "data.max_text_length=64")
    assert not (tmp_path / "long").exists()


def test_a_run_recorded_with_128_above_the_checkpoints_positions_resumes_with_the_default(export, tmp_path):
    """A run recorded before the length was resolved states 128 where it trained at the checkpoint's 32
    positions: the default (null, now 32) resumes it; a recorded length it did train at is compared as it is."""
    from torchflava.training.config import check_resume_config, save_config

    files = [*_glue_files(tmp_path, ["neg", "pos"]), "data.labels=[neg,pos]", f"model.pretrained={export}"]
    for recorded, given, ok in ((128, None, True), (40, 32, True), (16, None, False), (32, 16, False)):
        # (a run recorded then states its modality: there was no null)
        old = load_config(finetune.FinetuneConfig, [*files, "model.modality=text", f"data.max_text_length={recorded}"])
        save_config(old, tmp_path / "config.yaml")
        cfg = load_config(finetune.FinetuneConfig, [*files, f"data.max_text_length={given or 'null'}"])
        positions = finetune.validate(cfg, 1)
        finetune.resolve_defaults(cfg, positions)
        assert positions == 32 and cfg.data.max_text_length == (given or 32)
        assert check_resume_config(tmp_path / "config.yaml", cfg) == []  # the recipe compares the length
        if ok:
            finetune.text_length_resume_check(tmp_path / "config.yaml", cfg, positions)
        else:
            with pytest.raises(
                finetune.ConfigError,
                match=rf"^key 'data.max_text_length' \({recorded} -> {given or 32}\): expected the value the checkpoint",
            ):
                finetune.text_length_resume_check(tmp_path / "config.yaml", cfg, positions)


def test_the_report_ends_with_one_human_line(export, tmp_path, capsys):
    files = [*_glue_files(tmp_path, ["neg", "pos"]), "data.labels=[neg,pos]"]
    report = _run(export, tmp_path / "run", *files, "training.max_steps=2", "optim.warmup_steps=1")
    printed = capsys.readouterr().out.strip().splitlines()
    v = report["validation"]
    assert json.loads("\n".join(printed[:-1])) == report
    assert printed[-1] == (
        f"fine-tuning finished: 2 steps; validation val (12 items) accuracy {100 * v['accuracy']:.1f}%, matthews "
        f"{v['matthews']:.3f}, f1 {100 * v['f1']:.1f}% (chance 50.0%); classifier exported to {tmp_path / 'run' / 'model'} "
        f"(python -m torchflava.classify --checkpoint {tmp_path / 'run'})"
    )
    assert finetune.format_report(
        {"steps": 5, "validation_sets": {"dev": {"pearson": 0.91234, "spearman": float("nan"), "items": 3}}},
        Path("runs/stsb"),
    ) == (
        "fine-tuning finished: 5 steps; validation dev (3 items) pearson 0.912, spearman nan; classifier exported to "
        "runs/stsb/model (python -m torchflava.classify --checkpoint runs/stsb)"
    )


def test_unusable_dev_rows_are_named_in_the_report_and_counted_in_the_human_line(export, tmp_path, capsys):
    """A dev row missing a field (a stray tab, a cut line) was left out of the figures with only a count in the
    report's JSON: the human line said "(12 items)" and no line named which rows the figures left out."""
    files = [*_glue_files(tmp_path, ["neg", "pos"]), "data.labels=[neg,pos]"]
    dev = tmp_path / "dev.tsv"
    dev.write_text(dev.read_text() + "a sentence\twith a tab\tpos\nno label\n")
    report = _run(export, tmp_path / "run", *files, "training.max_steps=2", "optim.warmup_steps=1")
    v = report["validation"]
    assert (v["items"], v["skipped"]) == (12, 2)
    assert v["skipped_examples"] == [
        f"{dev} line 14: expected 2 fields, got 3 (the columns ['sentence', 'label'])",
        f"{dev} line 15: expected 2 fields, got 1 (the columns ['sentence', 'label'])",
    ]
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith("fine-tuning finished: 2 steps; validation val (12 items, 2 unusable skipped) accuracy ")


def test_a_hugging_face_checkpoint_fine_tunes_with_its_own_preprocessing_and_dropout(tmp_path):
    """From a Hugging Face FLAVA directory the recipe trained on EvalImageTransform's pixels (CLIP's mean
    and std, bilinear short side) whatever its preprocessor_config.json stated, exported that as the
    classifier's preprocessing, and trained without the dropout its config.json set."""
    from transformers import FlavaImageProcessor

    from tests.helpers import write_hf_flava
    from torchflava.classify import load_classifier

    hf = tmp_path / "hf"
    write_hf_flava(hf, lowercase=True)
    stats = dict(image_mean=[0.5, 0.25, 0.75], image_std=[0.2, 0.3, 0.4])
    preprocessor = json.loads((hf / "preprocessor_config.json").read_text())
    (hf / "preprocessor_config.json").write_text(json.dumps({**preprocessor, **stats}))
    config = json.loads((hf / "config.json").read_text())
    for tower in ("image_config", "text_config", "multimodal_config"):
        config[tower]["hidden_dropout_prob"] = 0.1
    (hf / "config.json").write_text(json.dumps(config))
    for split in ("train", "val"):
        for name, colour in (("red", (250, 10, 10)), ("blue", (10, 10, 250))):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40 + 3 * i, 30), colour).save(tmp_path / split / name / f"{i}.png")
    run = tmp_path / "run"
    image_folder = ["data.task=image_folder", f"data.train={tmp_path / 'train'}", f"data.val={tmp_path / 'val'}"]
    _run(hf, run, *image_folder, "training.max_steps=2", "optim.warmup_steps=1", "training.global_batch_size=4")

    exported = json.loads((run / "model" / "preprocessor_config.json").read_text())
    assert {k: exported[k] for k in stats} == stats
    image = Image.new("RGB", (45, 31), (120, 200, 30))
    expected = FlavaImageProcessor.from_pretrained(hf)(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(load_classifier(run).image_transform(image), expected, atol=1e-6, rtol=0)
    backbone = json.loads((run / "model" / "backbone_config.json").read_text())
    assert (backbone["dropout"], backbone["attention_dropout"], backbone["mlp_dropout"]) == (0.1, 0.0, 0.0)


def test_a_pair_run_recorded_before_sentence_pairs_were_two_segments_is_not_resumed_on_them(export, tmp_path):
    """data.sentence_pairs is recorded; a config.yaml without it resumes a single-text run, and refuses a
    pair run (it trained on the pair joined by [SEP] into one segment), naming the key; a set value must say
    what the text columns do."""
    from torchflava.training.config import check_resume_config, save_config

    rows = [(i, f"sentence {i}", f"other {i}", "ab"[i % 2]) for i in range(12)]
    _write_glue(tmp_path / "train.tsv", rows, ["index", "question", "sentence", "label"])
    files = ["data.task=glue", f"data.train={tmp_path / 'train.tsv'}", f"data.val={tmp_path / 'train.tsv'}"]
    files += ["data.labels=[a,b]", f"model.pretrained={export}"]
    for columns, pairs in (("[sentence]", False), ("[question,sentence]", True)):
        cfg = load_config(finetune.FinetuneConfig, [*files, f"data.text_columns={columns}"])
        finetune.resolve_defaults(cfg, finetune.validate(cfg, 1))
        assert cfg.data.sentence_pairs is pairs
        save_config(cfg, tmp_path / "config.yaml")
        assert f"sentence_pairs: {str(pairs).lower()}\n" in (tmp_path / "config.yaml").read_text()
        finetune.sentence_pairs_resume_check(tmp_path / "config.yaml", cfg)  # recorded with the key: the same
        text = (tmp_path / "config.yaml").read_text()
        (tmp_path / "config.yaml").write_text(
            "".join(line for line in text.splitlines(True) if "sentence_pairs" not in line)
        )
        assert check_resume_config(tmp_path / "config.yaml", cfg) == []  # the recipe compares the key
        if not pairs:
            finetune.sentence_pairs_resume_check(tmp_path / "config.yaml", cfg)
            continue
        with pytest.raises(
            finetune.ConfigError,
            match=r"^key 'data.sentence_pairs' \(None -> True\): expected the value the checkpoint was trained with "
            r".* \(it was recorded before sentence pairs were encoded as two segments with token types: it trained "
            r"on each pair joined by \[SEP\] into one\)",
        ):
            finetune.sentence_pairs_resume_check(tmp_path / "config.yaml", cfg)
    bad = [*files, "data.text_columns=[sentence]", "data.sentence_pairs=true"]
    with pytest.raises(
        finetune.ConfigError,
        match=r"key 'data.sentence_pairs': expected null or False \(whether data.task=glue with two "
        r"data.text_columns: \['sentence'\]\), got True",
    ):
        finetune.validate(load_config(finetune.FinetuneConfig, bad), 1)
    short = [*files, "data.text_columns=[question,sentence]", "data.max_text_length=2"]
    with pytest.raises(
        finetune.ConfigError, match=r"key 'data.max_text_length': expected null or >= 3 for sentence pairs"
    ):
        finetune.validate(load_config(finetune.FinetuneConfig, short), 1)


def test_a_resumed_run_needs_not_the_checkpoint_it_started_from(export, tmp_path):
    """A resumed fine-tuning run loaded model.pretrained again (its tokenizer, sizes and preprocessing): once
    the checkpoint had moved, the resume was refused, and a new path there was refused as a changed config.
    The run now records at its start what it read of it (the backbone's arguments, its tokenizer and
    preprocessing) and a resume trains from those, to exactly the uninterrupted losses."""
    import shutil

    started = tmp_path / "started"
    shutil.copytree(export, started)
    common = [*SHAPES, "training.max_steps=6", "training.checkpoint_every=3", "training.log_every=1"]
    _run(started, tmp_path / "run", *common)
    run = tmp_path / "run"
    uninterrupted = {s: r["loss"] for s, r in _records(run).items()}
    assert sorted(uninterrupted) == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "model_arguments.json").read_text()) == json.loads(
        (run / "model" / "backbone_config.json").read_text()
    )
    assert (run / "vocab.txt").read_text() == (export / "vocab.txt").read_text()
    started.rename(tmp_path / "moved")
    for pretrained in (started, tmp_path / "elsewhere", None):
        shutil.rmtree(run / "checkpoints" / "step_00000006")
        overrides = [*common, "training.resume=auto"] + (["model.pretrained=null"] if pretrained is None else [])
        _run(tmp_path / "moved" if pretrained is None else pretrained, run, *overrides)
        assert {s: r["loss"] for s, r in _records(run).items()} == uninterrupted  # exactly


def test_help_shows_the_multi_line_commands_as_they_are_typed():
    """``--help`` printed the backslash-continued command of the module docstring as one line with a gap of
    spaces (a plain string reads a backslash and newline as a line continuation)."""
    from torchflava.training.recipe import usage

    text = usage(finetune.main, finetune.FinetuneConfig)
    assert "finetuning/qnli.yaml \\\n        model.pretrained=/models/flava-full data.train=" in text
    assert text.count(" \\\n") == 1


def test_a_training_class_folder_without_images_is_named_in_one_warning(export, tmp_path, capsys):
    for name, colour in (("red", (250, 10, 10)), ("blue", (10, 10, 250))):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), colour).save(tmp_path / "train" / name / f"{i}.png")
    (tmp_path / "train" / "zempty").mkdir()  # a stray empty folder: a class no image shows
    folders = ["data.task=image_folder", f"data.train={tmp_path / 'train'}", f"data.val={tmp_path / 'train'}"]
    _run(
        export,
        tmp_path / "run",
        *folders,
        "training.max_steps=2",
        "optim.warmup_steps=1",
        "training.global_batch_size=4",
    )
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: data.train")]
    assert warnings == [
        "warning: data.train: 1 class(es) without an image, kept as classes (an output of the classifier, counted in "
        "chance): 'zempty'"
    ]


def test_a_resume_on_a_training_folder_that_changed_size_exits_2_naming_data_train(export, tmp_path, monkeypatch):
    """Each pass over the training split is a permutation seeded by its size: a resume on a folder with an image
    more (or less) drew another order without a word (items seen twice, others never), as the pretraining recipes
    refuse; the folder as it was resumes."""
    train = two_class_folder(tmp_path / "train")
    common = ["data.task=image_folder", f"data.train={train}", f"data.val={train}", "training.max_steps=3"]
    common += [
        "training.checkpoint_every=2",
        "training.log_every=1",
        "optim.warmup_steps=0",
        "training.global_batch_size=4",
    ]
    stop_fit_after(monkeypatch, finetune, 3)  # after step 3's update: the last checkpoint is step 2's
    with pytest.raises(Killed):
        _run(export, tmp_path / "run", *common)
    monkeypatch.undo()

    run = _overrides(export, tmp_path / "run", *common, "training.resume=auto")
    assert_a_changed_folder_refuses_resume(FINETUNE, run, train, tmp_path / "run")
    assert _run(export, tmp_path / "run", *common, "training.resume=auto")["steps"] == 3
    assert sorted(_records(tmp_path / "run")) == [1, 2, 3]


def test_the_training_source_is_named_by_the_key_that_sets_its_size():
    tasks = {"shapes": "data.shapes_train", "glue": "data.train", "image_folder": "data.train"}
    for task, key in tasks.items():
        assert training_source_key(task) == key


# --------------------------------------------------------------------------- validation: streamed, in shares
@torch.no_grad()
def _evaluated_whole(model, source, collator, loss):
    """The validation as it was before it was streamed and sharded (the reference its figures must equal): every
    item of ``source`` read into a list first, then forwarded 128 at a time, task_metrics of all the logits."""
    from torchflava.data.samples import BadSample
    from torchflava.evaluation.metrics import task_metrics
    from torchflava.models.flava.classification import read_inputs

    model.eval()
    items, skipped = [], []
    for index in range(len(source)):
        try:
            items.append(source[index])
        except BadSample as bad:
            skipped.append(bad.reason)
    logits, labels = [], []
    for start in range(0, len(items), 128):
        batch = collator("eval", items[start : start + 128], [])
        labels.append(batch.pop("labels"))
        logits.append(model(**read_inputs(batch, model.modality)).logits.float())
    metrics = task_metrics(torch.cat(logits), torch.cat(labels), loss)
    return {**metrics, "items": len(items), "skipped": len(skipped), "skipped_examples": skipped[:10]}


def _colour_glue(tmp_path) -> list[str]:
    """A glue task (is the caption's shape red or blue) whose dev.tsv (2 batches of 128) and extra.tsv each hold
    rows missing their label, unusable: the recipe's overrides."""
    scenes, texts = _sentences(900, 11)
    rows = [(t, s.colour) for s, t in zip(scenes, texts) if s.colour in ("red", "blue")]
    _write_glue(tmp_path / "train.tsv", rows[:64], ["sentence", "label"])
    dev = [*rows[64:100], (rows[100][0],), *rows[101:200], (rows[200][0],), *rows[201:240]]
    _write_glue(tmp_path / "dev.tsv", dev, ["sentence", "label"])
    _write_glue(tmp_path / "extra.tsv", [*rows[240:250], (rows[250][0],), *rows[251:270]], ["sentence", "label"])
    return [
        "data.task=glue",
        f"data.train={tmp_path / 'train.tsv'}",
        f"data.val={tmp_path / 'dev.tsv'}",
        f"data.extra_val.extra={tmp_path / 'extra.tsv'}",
        "data.labels=[blue,red]",
        "model.modality=text",
    ]


@pytest.mark.parametrize("task", ["shapes", "glue"])
def test_one_process_validation_report_equals_evaluating_the_trained_model_on_the_whole_sets(
    export, tmp_path, monkeypatch, task
):
    """The report's figures are exactly those of the trained model on each set read whole (the evaluation before
    it read the export a batch at a time, in shares), unusable rows counted as skipped; the export (what each rank
    evaluates) gives the trained model's logits bit for bit."""
    from torchflava.classify import load_classifier

    trained, collators, sources = [], [], {}  # what the run trained, collated with and validated on
    real_export, real_splits, real_open = finetune.export_classifier, finetune.build_splits, finetune.open_val_set

    def export_classifier(model, *args, **kwargs):
        trained.append(model)
        return real_export(model, *args, **kwargs)

    def build_splits(d, *args):
        splits = real_splits(d, *args)
        sources[d.val_name] = splits[1]
        return splits

    def open_val_set(d, classes, key, path):
        sources[key.rpartition(".")[2]] = real_open(d, classes, key, path)  # (data.val's too, for glue)
        return sources[key.rpartition(".")[2]]

    class Collator(finetune.ClassificationCollator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            collators.append(self)

    for name, spy in [("export_classifier", export_classifier), ("build_splits", build_splits)]:
        monkeypatch.setattr(finetune, name, spy)
    monkeypatch.setattr(finetune, "open_val_set", open_val_set)
    monkeypatch.setattr(finetune, "ClassificationCollator", Collator)
    overrides = [*SHAPES, "data.shapes_val=300"] if task == "shapes" else _colour_glue(tmp_path)
    report = _run(export, tmp_path / "run", *overrides, "training.max_steps=3", "optim.warmup_steps=1")

    expected = {}
    for name in ["val", *(["extra"] if task == "glue" else [])]:
        expected[name] = _evaluated_whole(trained[0], sources[name], collators[0], "cross_entropy")
        expected[name]["chance"] = 1 / report["num_classes"]
    assert report["validation_sets"] == expected
    assert report["validation"] == expected["val"]
    skipped = {"val": 2, "extra": 1} if task == "glue" else {"val": 0}
    assert {name: metrics["skipped"] for name, metrics in expected.items()} == skipped
    assert expected["val"]["items"] == (300 if task == "shapes" else 174)
    # the export's logits are the trained model's, bit for bit
    batch = collators[0]("eval", [sources["val"][i] for i in range(8)], [])
    batch.pop("labels")
    from torchflava.models.flava.classification import read_inputs

    exported = load_classifier(tmp_path / "run" / "model").model
    with torch.no_grad():
        inputs = read_inputs(batch, exported.modality)
        assert torch.equal(exported(**inputs).logits, trained[0].eval()(**inputs).logits)


def test_validation_holds_one_batch_of_items_at_a_time(export):
    """evaluate reads a batch of items, forwards it and lets it go before reading the next: it listed every item
    of a set first (VQA's 214k decoded images: over 100 GB). A source tracks which of the images it handed out
    are still alive at each read."""
    import weakref

    from torchflava.data.finetuning import shapes_task_splits
    from torchflava.data.samples import BadSample
    from torchflava.models import flava_model_for_classification
    from torchflava.pretrained import load_pretrained

    class Watched:
        def __init__(self, source):
            self.source, self.images, self.alive = source, [], []

        def __len__(self):
            return len(self.source)

        def __getitem__(self, index):
            if index % 7 == 3:
                raise BadSample(index, "unreadable")
            self.alive.append(sum(image() is not None for image in self.images))
            sample = self.source[index]
            self.images.append(weakref.ref(sample.image))
            return sample

    _, val, _ = shapes_task_splits(10, 23, 32)
    source = Watched(val)
    pretrained = load_pretrained(export)
    model = flava_model_for_classification(30, backbone=pretrained.model, modality="image", classifier_hidden_dim=8)
    collator = finetune.ClassificationCollator(None, image_size=pretrained.image_size)
    report = finetune.evaluate(model, source, collator, "cross_entropy", batch_size=4)
    assert (report["items"], report["skipped"]) == (20, 3)
    assert source.alive == [0, 1, 2, 3] * 5  # the previous batch's images freed before the next is read
    assert report == _evaluated_whole(model, Watched(val), collator, "cross_entropy")


# Runs the recipe recording, per rank, which items of each validation set it read after the export was written
# (what it evaluated: the sets' first items are read before training too, to check that they are usable).
SHARE_SPY = """
import json, os, sys
from tests.helpers import load_recipe

finetune = load_recipe("examples/flava/finetune.py", "flava_finetune_recipe")
reads, exported = {}, []
real_export, real_open = finetune.export_classifier, finetune.open_val_set


def export_classifier(*args, **kwargs):
    exported.append(True)
    return real_export(*args, **kwargs)


class Recorded:
    def __init__(self, key, source):
        self.key, self.source = key, source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        if exported:
            reads.setdefault(self.key, []).append(index)
        return self.source[index]


finetune.export_classifier = export_classifier
finetune.open_val_set = lambda d, classes, key, path: Recorded(key, real_open(d, classes, key, path))
try:
    finetune.run_recipe(finetune.main, finetune.FinetuneConfig, sys.argv[1:], config_errors=(FileNotFoundError,))
finally:
    with open(f"{sys.argv[-1].partition('=')[2]}/reads_{os.environ['RANK']}.json", "w") as file:
        json.dump(reads, file)
"""


def test_two_fsdp_processes_each_evaluate_their_share_of_every_set_and_report_one_process_figures(export, tmp_path):
    """Each rank loads the export and evaluates every other item of each validation set (it evaluated every
    set whole on every rank); the report's figures are those of the export evaluated whole in one process."""

    from torchflava.classify import load_classifier

    (tmp_path / "spy.py").write_text(SHARE_SPY)
    overrides = [
        *_colour_glue(tmp_path),
        f"model.pretrained={export}",
        "training.strategy=fsdp",
        "training.max_steps=3",
        "training.checkpoint_every=3",
        "training.global_batch_size=16",
        "training.progress_bar=false",
        "training.tensorboard=false",
        "optim.warmup_steps=1",
        "model.classifier_hidden_dim=32",
        f"training.output_dir={tmp_path / 'two'}",  # (last: the spy writes its records there)
    ]
    result = run_script(str(tmp_path / "spy.py"), overrides, nproc=2)  # as torchrun's 2 ranks
    assert result.returncode == 0, result.stderr[-3000:]
    sizes = {"data.val": 176, "data.extra_val.extra": 30}
    for rank in (0, 1):
        reads = json.loads((tmp_path / "two" / f"reads_{rank}.json").read_text())
        assert reads == {key: list(range(rank, size, 2)) for key, size in sizes.items()}, rank
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    classifier = load_classifier(tmp_path / "two" / "model")
    collator = finetune.ClassificationCollator(
        classifier.tokenizer, image_size=32, max_text_length=classifier.tokenizer.model_max_length
    )
    expected = {}
    for name, path in (("val", "dev.tsv"), ("extra", "extra.tsv")):
        source = GlueTsv(tmp_path / path, ["sentence"], "label", ["blue", "red"])
        expected[name] = {**_evaluated_whole(classifier.model, source, collator, "cross_entropy"), "chance": 0.5}
    assert report["validation_sets"] == expected
    assert (expected["val"]["items"], expected["val"]["skipped"], expected["extra"]["skipped"]) == (174, 2, 1)


def test_a_glue_class_without_a_training_row_is_named_in_one_warning(export, tmp_path, capsys):
    """MNLI's ``neutral`` listed in data.labels but held by the dev file only trained a head row never trained
    towards without a word; a training file holding every class gives no warning."""
    files = _glue_files(tmp_path, ["entailment", "contradiction"], n=8)
    short = ["training.max_steps=1", "optim.warmup_steps=0", "training.global_batch_size=4"]
    _run(export, tmp_path / "r1", *files, "data.labels=[entailment,neutral,contradiction]", *short)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: data.train")]
    assert warnings == [
        "warning: data.train: 1 class(es) without a row, kept as classes (an output of the classifier, counted in "
        "chance): 'neutral'"
    ]
    _run(export, tmp_path / "r2", *files, "data.labels=[entailment,contradiction]", *short)
    assert "warning: data.train" not in capsys.readouterr().err


def test_a_loss_refused_for_an_image_text_task_names_binary_cross_entropy_for_answer_scores(export, tmp_path):
    """model.loss=mse on VQA-style answer scores was refused offering cross_entropy, which was refused in turn once
    the scores were read: the first refusal now says which loss fits which targets, before any file is read."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "0.png")
    lines = [{"image": "0.png", "text": "what colour?", "answers": {"red": 1.0}}]
    files = [*_image_text_task(tmp_path, lines, lines), "data.labels=[red,blue]"]
    with pytest.raises(
        finetune.ConfigError,
        match=r"^key 'model.loss': expected null or one of \('cross_entropy', 'binary_cross_entropy'\) for this task "
        r"\(cross_entropy for class labels, binary_cross_entropy for answer scores\), got 'mse'$",
    ):
        _run(export, tmp_path / "r1", *files, "model.loss=mse")
    with pytest.raises(
        finetune.ConfigError,
        match=r"^key 'model.loss': expected null or binary_cross_entropy for the answer scores of .*train\.jsonl, "
        r"got 'cross_entropy'$",
    ):
        _run(export, tmp_path / "r2", *files, "model.loss=cross_entropy")


def test_the_human_line_prints_a_3000_class_chance_and_a_99_96_percent_accuracy_as_they_are():
    """One decimal printed an accuracy of 0.9996 as 100.0% and a chance of 1/3000 classes as 0.0%: every share is
    now printed by torchflava.evaluation.percent."""
    metrics = {"accuracy": 0.9996, "matthews": 0.5, "f1": 0.99996, "items": 9, "chance": 1 / 3000}
    assert finetune.format_report({"steps": 5, "validation_sets": {"dev": metrics}}, Path("runs/x")) == (
        "fine-tuning finished: 5 steps; validation dev (9 items) accuracy 99.96%, matthews 0.500, f1 99.996% "
        "(chance 0.033%); classifier exported to runs/x/model (python -m torchflava.classify --checkpoint runs/x)"
    )


def _glue_overrides(export, tmp_path, train, val) -> list[str]:
    return [f"model.pretrained={export}", f"training.output_dir={tmp_path / 'run'}", f"data.train={train}"] + [
        f"data.val={val}",
        "data.task=glue",
        "data.labels=[blue,red]",
    ]


def test_a_data_path_typed_with_a_tilde_is_the_home_directorys(export, tmp_path, monkeypatch):
    """A YAML file or a quoted override keeps ~ as typed: data.train=~/glue/train.tsv was refused as a missing
    file, or a folder named '~' under the working directory was read. Every data path key expands it (only it:
    not $HOME), and a missing one names what was typed and what it expanded to."""
    home, work = tmp_path / "home", tmp_path / "work"
    for root in (home, work / "~"):  # (the working directory's '~' holds a file of the same name)
        _write_glue(_mkdir(root / "glue") / "train.tsv", [("a red one", "red"), ("a blue one", "blue")], HEADER)
        _write_glue(root / "glue" / "dev.tsv", [("a red one", "red")], HEADER)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    overrides = _glue_overrides(export, tmp_path, "~/glue/train.tsv", "~/glue/dev.tsv")
    cfg = load_config(finetune.FinetuneConfig, [*overrides, "data.extra_val.more=~/glue/dev.tsv"])
    finetune.validate(cfg, 1)
    assert (cfg.data.train, cfg.data.val) == (str(home / "glue" / "train.tsv"), str(home / "glue" / "dev.tsv"))
    assert cfg.data.extra_val == {"more": str(home / "glue" / "dev.tsv")}
    assert len(finetune.build_splits(cfg.data)[0]) == 2
    images = load_config(finetune.FinetuneConfig, ["data.task=image_text", "data.image_root=~/images"])
    assert images.data.image_root == str(home / "images")
    assert (
        load_config(finetune.FinetuneConfig, ["data.train=$HOME/glue/train.tsv"]).data.train == "$HOME/glue/train.tsv"
    )
    cfg = load_config(finetune.FinetuneConfig, _glue_overrides(export, tmp_path, "~/glue/nope.tsv", "~/glue/dev.tsv"))
    with pytest.raises(finetune.ConfigError) as caught:
        finetune.validate(cfg, 1)
    assert str(caught.value) == (
        f"key 'data.train': expected an existing file, got '~/glue/nope.tsv' (= '{home / 'glue' / 'nope.tsv'}')"
    )


HEADER = ["sentence", "label"]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize(
    "task, key, value, got",
    [
        ("glue", "image_size", "32", 32),
        ("glue", "shapes_train", "100", 100),
        ("glue", "image_root", "{tmp_path}", "{tmp_path}"),
        ("image_folder", "text_columns", "[question,sentence]", ["question", "sentence"]),
        ("image_folder", "label_column", "score", "score"),
        ("shapes", "columns", "[sentence,label]", ["sentence", "label"]),
        ("image_text", "shapes_val", "30", 30),
    ],
)
def test_a_data_key_the_task_does_not_read_is_refused_naming_it_and_the_task(export, tmp_path, task, key, value, got):
    """A key only another task reads (the shapes task's data.image_size for a GLUE task) was silently ignored:
    the user believed it took effect."""
    files = {
        "glue": _glue_overrides(export, tmp_path, tmp_path / "train.tsv", tmp_path / "train.tsv")[2:],
        "image_folder": [f"data.train={two_class_folder(tmp_path / 'classes')}", f"data.val={tmp_path / 'classes'}"],
        "shapes": [],
        "image_text": [
            f"data.train={tmp_path / 'train.jsonl'}",
            f"data.val={tmp_path / 'train.jsonl'}",
            f"data.image_root={_mkdir(tmp_path / 'images')}",
            "data.labels=[cat,dog]",
        ],
    }[task]
    _write_glue(tmp_path / "train.tsv", [("a red one", "red"), ("a blue one", "blue")], HEADER)
    (tmp_path / "train.jsonl").write_text('{"image": "a.png", "text": "q", "label": "cat"}\n')
    overrides = [f"model.pretrained={export}", f"training.output_dir={tmp_path / 'run'}", f"data.task={task}", *files]
    cfg = load_config(finetune.FinetuneConfig, overrides)
    finetune.validate(cfg, 1)  # (the task's own settings pass)
    value, got = value.format(tmp_path=tmp_path), got.format(tmp_path=tmp_path) if isinstance(got, str) else got
    cfg = load_config(finetune.FinetuneConfig, [*overrides, f"data.{key}={value}"])
    with pytest.raises(finetune.ConfigError) as caught:
        finetune.validate(cfg, 1)
    default = repr(getattr(finetune.FinetuneDataConfig(), key))
    readers = " or ".join(f"data.task={t}" for t in finetune.TASK_KEYS[key])
    assert str(caught.value) == (
        f"key 'data.{key}': expected its default, {'null' if default == 'None' else default}, since data.task={task} "
        f"does not read it (only {readers} does), got {got!r}"
    )


def test_the_shipped_non_glue_configs_still_validate(export, tmp_path):
    """shapes.yaml sets the shapes task's keys, vqa.yaml an image_text task's (the GLUE ones: every glue task's
    test); each for its own task, which reads them."""
    (tmp_path / "vqa.jsonl").write_text('{"image": "a.png", "text": "q", "answers": {"yes": 1.0}}\n')
    for name, overrides in {
        "shapes": [],
        "vqa": [f"data.train={tmp_path / 'vqa.jsonl'}", f"data.val={tmp_path / 'vqa.jsonl'}"]
        + [f"data.image_root={tmp_path}"],
    }.items():
        argv = [f"config=examples/flava/configs/finetuning/{name}.yaml", f"model.pretrained={export}", *overrides]
        finetune.validate(load_config(finetune.FinetuneConfig, [*argv, f"training.output_dir={tmp_path / name}"]), 1)


def test_a_run_started_with_a_key_its_task_does_not_read_resumes_with_it_at_its_default(tmp_path):
    """Such a key, accepted and ignored before it was refused, is refused now; its run resumes without it (the
    resume comparison takes it as free: changing it changes nothing the task trains)."""
    from torchflava.training.config import check_resume_config, save_config

    started = finetune.FinetuneConfig(data=finetune.FinetuneDataConfig(task="glue", image_size=32, label_column="y"))
    save_config(started, tmp_path / "config.yaml")
    with pytest.raises(finetune.ConfigError, match=r"^key 'data.label_column' \('y' -> 'label'\): expected the"):
        check_resume_config(tmp_path / "config.yaml", finetune.FinetuneConfig())  # (glue reads that one)
    started.data.label_column = "label"
    save_config(started, tmp_path / "config.yaml")
    assert check_resume_config(tmp_path / "config.yaml", finetune.FinetuneConfig()) == []
    started.data.task = "shapes"  # (which reads it)
    save_config(started, tmp_path / "config.yaml")
    shapes = finetune.FinetuneConfig(data=finetune.FinetuneDataConfig(task="shapes"))
    with pytest.raises(finetune.ConfigError, match=r"^key 'data.image_size' \(32 -> 64\): expected the values"):
        check_resume_config(tmp_path / "config.yaml", shapes)


@pytest.mark.parametrize("task", ["image_folder", "shapes"])
def test_a_text_length_for_an_image_task_is_refused_but_the_one_a_run_records_loads(export, tmp_path, task):
    """data.max_text_length was accepted for the image tasks, which read no text: set, and ignored. It is refused as
    the other keys a task does not read are; null and the length every run records (128, at most the checkpoint's
    32 text positions) still load, so that a run's config.yaml (config=<run>/config.yaml) resumes."""
    files = [f"data.train={two_class_folder(tmp_path / 'classes')}", f"data.val={tmp_path / 'classes'}"]
    base = [f"model.pretrained={export}", f"training.output_dir={tmp_path / 'run'}", f"data.task={task}"]
    base += files if task == "image_folder" else []
    for length in ("null", "32"):
        cfg = load_config(finetune.FinetuneConfig, [*base, f"data.max_text_length={length}"])
        finetune.resolve_defaults(cfg, finetune.validate(cfg, 1))
        assert cfg.data.max_text_length == 32  # (what its config.yaml records)
    with pytest.raises(finetune.ConfigError) as refused:
        finetune.validate(load_config(finetune.FinetuneConfig, [*base, "data.max_text_length=16"]), 1)
    assert str(refused.value) == (
        f"key 'data.max_text_length': expected its default, null (or 32, which a run records), since data.task={task} "
        "does not read it (only data.task=glue or data.task=image_text does), got 16"
    )


def test_an_image_run_recorded_with_a_text_length_it_never_read_resumes(export, tmp_path):
    """A shapes run started with data.max_text_length=16 (accepted then, ignored) could not be resumed: the length is
    refused now, and the resume refused the checkpoint's 16 against the resolved 32. The image tasks trained nothing
    with it: any recorded length resumes; a text task's is still compared."""
    from torchflava.training.config import check_resume_config, save_config

    base = [f"model.pretrained={export}", f"training.output_dir={tmp_path / 'run'}"]
    for task, ok in (("shapes", True), ("glue", False)):
        files = [] if task == "shapes" else [*_glue_files(tmp_path, ["neg", "pos"]), "data.labels=[neg,pos]"]
        old = load_config(finetune.FinetuneConfig, [*base, *files, f"data.task={task}", "data.max_text_length=16"])
        finetune.resolve_defaults(old, 32)
        save_config(old, tmp_path / "config.yaml")
        cfg = load_config(finetune.FinetuneConfig, [*base, *files, f"data.task={task}"])
        positions = finetune.validate(cfg, 1)
        finetune.resolve_defaults(cfg, positions)
        assert check_resume_config(tmp_path / "config.yaml", cfg) == []  # (the recipe compares the length)
        if ok:
            finetune.text_length_resume_check(tmp_path / "config.yaml", cfg, positions)
        else:
            with pytest.raises(finetune.ConfigError, match=r"^key 'data.max_text_length' \(16 -> 32\): expected the"):
                finetune.text_length_resume_check(tmp_path / "config.yaml", cfg, positions)


def test_relative_data_paths_are_recorded_absolute_so_a_resume_elsewhere_reads_the_run_s_files(
    export, tmp_path, monkeypatch
):
    """A run started with relative data paths recorded them as typed: resumed from another working directory holding
    files of the same names and sizes (other labels here), it trained on those without a word. They are recorded
    absolute: the same relative override from there is refused naming data.train, and config=<run>/config.yaml
    resumes the run on its own files from any directory."""
    for place, labels in (("a", ["neg", "pos"]), ("b", ["pos", "neg"])):
        (tmp_path / place).mkdir()
        _glue_files(tmp_path / place, labels)
    relative = ["data.task=glue", "data.train=train.tsv", "data.val=dev.tsv", "data.labels=[neg,pos]"]
    relative += ["training.max_steps=3", "training.checkpoint_every=2", "optim.warmup_steps=0"]
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "a")
    stop_fit_after(monkeypatch, finetune, 3)  # after step 3: the last checkpoint is step 2's
    with pytest.raises(Killed):
        _run(export, run, *relative)
    monkeypatch.undo()
    saved = (run / "config.yaml").read_text()
    assert f"train: {tmp_path / 'a' / 'train.tsv'}\n" in saved and f"val: {tmp_path / 'a' / 'dev.tsv'}\n" in saved
    monkeypatch.chdir(tmp_path / "b")
    was, now = (re.escape(str(tmp_path / place / "train.tsv")) for place in ("a", "b"))
    with pytest.raises(finetune.ConfigError, match=rf"^key 'data.train' \('{was}' -> '{now}'\): expected the values"):
        _run(export, run, *relative, "training.resume=auto")
    report = finetune.main(
        load_config(finetune.FinetuneConfig, [f"config={run / 'config.yaml'}", "training.resume=auto"])
    )
    assert report["steps"] == 3 and f"train: {tmp_path / 'a' / 'train.tsv'}\n" in (run / "config.yaml").read_text()
