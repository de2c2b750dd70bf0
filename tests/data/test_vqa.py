"""The VQA v2 converter: scores, the official answer normalisation, the vocabulary, refusals, atomic writes, and
the written config running the fine-tuning recipe."""

from fractions import Fraction
import json
import os
from pathlib import Path
import pickle

from PIL import Image
import pytest
import torch

from tests.examples.fault_runner import run_script
from tests.helpers import load_recipe, write_tiny_export
from torchflava.classify import main as classify_main
from torchflava.data import vqa
from torchflava.data.finetuning import ImageTextLabels
from torchflava.data.readers import ImageTextFolder
from torchflava.data.vqa import answer_scores, answer_vocabulary, normalize_answer, vqa_accuracy
from torchflava.training.config import load_config
from torchflava.utils.cli import run_command

REPO = Path(__file__).resolve().parents[2]


def test_vqa_accuracy_of_ten_annotators():
    # (c * min(1, (c-1)/3) + (10-c) * min(1, c/3)) / 10, by hand: c=1: 9/3/10; c=2: (2/3 + 8*2/3)/10;
    # c=3: (3*2/3 + 7)/10; c=4: (4 + 6)/10
    assert [vqa_accuracy(c) for c in range(11)] == [0.0, 0.3, 0.6, 0.9] + [1.0] * 7


def test_vqa_accuracy_of_three_annotators_is_the_same_leave_one_out_average():
    # c=1: (0 + 2 * 1/3) / 3 = 2/9; c=2: (2 * 1/3 + 2/3) / 3 = 4/9; c=3: 3 * 2/3 / 3 = 2/3
    assert [vqa_accuracy(c, 3) for c in range(4)] == [0.0, float(Fraction(2, 9)), float(Fraction(4, 9)), 2 / 3]
    assert vqa_accuracy(1, 1) == 0.0  # (no other annotator to match)
    with pytest.raises(ValueError, match="count=4, total=3"):
        vqa_accuracy(4, 3)


def test_answer_scores_count_normalised_answers():
    answers = ["Yes", "yes.", "YES", "yes", "no", "No", "two", "2", "2", "?"]
    assert answer_scores(answers) == {"yes": 1.0, "no": 0.6, "2": 0.9}  # ("?" normalises to nothing)
    assert answer_scores(["red", "red", "blue"]) == {"red": float(Fraction(4, 9)), "blue": float(Fraction(2, 9))}


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("  Yes\n", "yes"),  # strip, lower case
        ("red\tand\nwhite", "red and white"),  # newlines and tabs to spaces
        ("1,000", "1000"),  # a comma between digits removed
        ("1,5 x-y", "15 xy"),  # ... and then every mark removed, not spaced
        ("red, white", "red white"),  # a mark beside a space removed
        ("black-white", "black white"),  # a mark between letters replaced by a space
        ("black - white", "black white"),
        ("(3)", "3"),
        ("hi!? @home", "hi home"),  # "@ " is not in the text, " @" is: removed
        ('what;/[]"{}=+\\_><`', "what"),
        ("yes.", "yes"),  # a period not before a digit removed
        ("2.5", "2.5"),  # a period before a digit kept
        ("5.", "5"),
        ("mr.smith", "mrsmith"),
        ("two", "2"),  # number words to digits
        ("zero one three ten eleven", "0 1 3 10 eleven"),
        ("none", "0"),  # (the official map's)
        ("The dog", "dog"),  # articles dropped
        ("a cat an apple", "cat apple"),
        ("dont", "don't"),  # contractions restored
        ("its oclock", "its o'clock"),
        ("shed", "shed"),  # a word in its own right is left alone
        ("hed weve whens maam twas", "he'd we've when's ma'am 'twas"),  # (the whole official map)
        ("couldnt've couldn'tve yall'll", "couldn't've couldn't've y'all'll"),  # (one apostrophe missing)
        ("lets shes im ive", "lets shes im ive"),  # (its keys "let's", "she's", "Im", "Ive": never a lower-case word)
        ("somebody'd", "somebodyd"),  # (its map's, too)
        ("50% #1 $5 10:30 o'clock", "50% #1 $5 10:30 o'clock"),  # kept marks
        ("?", ""),
    ],
)
def test_normalize_answer_follows_the_official_rules(answer, expected):
    assert normalize_answer(answer) == expected


def test_an_answer_all_annotators_gave_is_scored_as_written_as_the_evaluation_compares_it():
    """The official evaluation normalises neither the prediction nor the answers where the annotators all gave one
    answer (text read in the image): only the answer as written scores there. Where they disagree, a vocabulary
    answer kept so scores as its normalised form, as the evaluation normalises the prediction ("A" is "")."""
    assert answer_scores(["A"] * 10) == {"A": 1.0}  # (was {}: "A" normalises to nothing)
    assert answer_scores(["two "] * 9 + ["two\n"]) == {"two": 1.0}  # (was {"2": 1.0}, which scores 0 there)
    assert answer_scores(["T-Shirt"] * 9 + ["t-shirt"]) == {"t shirt": 1.0}  # (two answers: normalised)
    aliases = {"t shirt": ["T-Shirt"], "": ["A"]}
    mixed = ["t-shirt"] * 2 + ["t shirt", "a", "the", "A", "red", "red", "red", "?"]
    assert answer_scores(mixed, aliases) == {"t shirt": 0.9, "red": 0.9, "T-Shirt": 0.9, "A": 1.0}
    assert answer_scores(["t shirt"] * 10, aliases) == {"t shirt": 1.0}  # ("T-Shirt" is not "t shirt" there)
    assert answer_vocabulary([["A"] * 10, ["a", "b"] * 5, ["T-Shirt"] * 10, ["T-Shirt", "t-shirt"] * 5], 9) == [
        "A",
        "T-Shirt",
        "t shirt",
        "b",
    ]


def test_the_converter_scores_each_vocabulary_answer_as_the_evaluation_would(vqa_files):
    questions = json.loads(Path(vqa_files["questions"]).read_text())

    def answers_of(q: dict) -> list[str]:  # image 1's questions: every annotator wrote "T-Shirt"
        return ["T-Shirt"] * 10 if q["image_id"] == 1 else ["t-shirt"] * 3 + ["red"] * 7

    Path(vqa_files["annotations"]).write_text(json.dumps(_annotations(questions, answers_of)))
    vqa.convert(**vqa_files)
    out = Path(vqa_files["out"])
    # red 42 annotators, "T-Shirt" 20 (kept as written), "t shirt" 18 (normalised)
    assert json.loads((out / "answers.json").read_text()) == ["red", "T-Shirt", "t shirt"]
    train = _lines(out / "train.jsonl")
    assert train[0]["answers"] == {"T-Shirt": 1.0}  # (where "t shirt" scores 0)
    assert train[2]["answers"] == {"t shirt": 0.9, "red": 1.0, "T-Shirt": 0.9}  # (predicted, "T-Shirt" is "t shirt")


def test_vocabulary_is_the_most_frequent_normalised_answers_ties_in_string_order():
    annotations = [["Yes", "yes", "no", "2"], ["two", "No", "blue", "?"], ["red", "Red", "blue", "?"]]
    # yes 2, no 2, 2 2, blue 2, red 2 (ties: string order); "" (from "?") is no answer
    assert answer_vocabulary(annotations, 10) == ["2", "blue", "no", "red", "yes"]
    assert answer_vocabulary(annotations + [["red"]], 2) == ["red", "2"]


# ---------------------------------------------------------------------------------------------- files

IMAGES = {"train2014": [1, 2, 3, 4], "val2014": [5, 6], "test2015": [7]}


def _questions(subtype: str, images: list[int]) -> dict:
    questions = [
        {"image_id": image, "question": f"What colour is it {k}?", "question_id": image * 10 + k}
        for image in images
        for k in range(2)
    ]
    return {
        "info": {},
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "data_subtype": subtype,
        "questions": questions,
    }


def _annotations(questions: dict, answers_of) -> dict:
    entries = []
    for q in questions["questions"]:
        answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers_of(q))]
        entries.append({"question_id": q["question_id"], "image_id": q["image_id"], "answers": answers})
    return {"annotations": entries}


def _colour(q: dict) -> list[str]:
    """10 answers: the image's colour 7 times (red for odd image ids), the other 3 times."""
    first, second = ("red", "Blue") if q["image_id"] % 2 else ("blue.", "red")
    return [first] * 7 + [second] * 3


@pytest.fixture
def vqa_files(tmp_path) -> dict:
    """A tiny COCO tree and VQA files of its images: the converter's keyword arguments."""
    coco = tmp_path / "coco"
    for folder, ids in IMAGES.items():
        (coco / folder).mkdir(parents=True)
        for image in ids:
            colour = (200, 20, 20) if image % 2 else (20, 20, 200)
            Image.new("RGB", (32, 32), colour).save(coco / folder / f"COCO_{folder}_{image:012d}.jpg")
    files = {}
    for name, subtype, images in (("train", "train2014", IMAGES["train2014"]), ("val", "val2014", IMAGES["val2014"])):
        questions = _questions(subtype, images)
        files[f"{name}_q"] = tmp_path / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
        files[f"{name}_q"].write_text(json.dumps(questions))
        files[f"{name}_a"] = tmp_path / f"v2_mscoco_{subtype}_annotations.json"
        files[f"{name}_a"].write_text(json.dumps(_annotations(questions, _colour)))
    files["test"] = tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json"
    files["test"].write_text(json.dumps(_questions("test-dev2015", IMAGES["test2015"])))
    return {
        "images": str(coco),
        "out": str(tmp_path / "out"),
        "questions": str(files["train_q"]),
        "annotations": str(files["train_a"]),
        "val_questions": str(files["val_q"]),
        "val_annotations": str(files["val_a"]),
        "test_questions": [str(files["test"])],
    }


def _argv(kwargs: dict) -> list[str]:
    argv = []
    for name, value in kwargs.items():
        option = "--" + name.replace("_", "-")
        if isinstance(value, list):
            argv += [option, *value]
        elif value is True:
            argv.append(option)
        else:
            argv += [option, str(value)]
    return argv


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_converter_writes_the_recipes_files(vqa_files):
    result = vqa.convert(**vqa_files, answers=2)
    out = Path(vqa_files["out"])
    assert sorted(os.listdir(out)) == [
        "answers.json",
        "test-dev2015_questions.jsonl",
        "train.jsonl",
        "val.jsonl",
        "vqa.yaml",
    ]
    # red: 7 answers of 4 questions + 3 of 4; blue 3 * 4 + 7 * 4: a tie, broken in string order
    assert json.loads((out / "answers.json").read_text()) == ["blue", "red"]
    train = _lines(out / "train.jsonl")
    assert train[0] == {
        "image": "train2014/COCO_train2014_000000000001.jpg",
        "text": "What colour is it 0?",
        "answers": {"red": 1.0, "blue": 0.9},
        "question_id": 10,
    }
    assert [line["question_id"] for line in train] == [10, 11, 20, 21, 30, 31, 40, 41]
    assert _lines(out / "val.jsonl")[2]["answers"] == {"blue": 1.0, "red": 0.9}  # (image 6)
    assert _lines(out / "test-dev2015_questions.jsonl") == [
        {
            "image": "test2015/COCO_test2015_000000000007.jpg",
            "question": f"What colour is it {k}?",
            "question_id": 70 + k,
        }
        for k in range(2)
    ]
    assert result == {
        "out": str(out),
        "config": str(out / "vqa.yaml"),
        "num_answers": 2,
        "train.jsonl": 8,
        "val.jsonl": 4,
        "test-dev2015_questions.jsonl": 2,
    }
    # what the readers make of them: the training reader's targets, the classify command's pairs
    source = ImageTextLabels(vqa_files["images"], out / "train.jsonl", ["blue", "red"])
    assert source[0].label.tolist() == pytest.approx([0.9, 1.0]) and source[0].image.size == (32, 32)
    pairs = ImageTextFolder(vqa_files["images"], out / "test-dev2015_questions.jsonl", text_key="question")
    assert len(pairs) == 2 and pairs[1].text == "What colour is it 1?"
    assert pairs.image_path(0) == os.path.join(vqa_files["images"], "test2015", "COCO_test2015_000000000007.jpg")


finetune = load_recipe("examples/flava/finetune.py", "flava_finetune_recipe_vqa")


def test_the_written_config_is_vqa_yamls_and_runs_the_recipe(vqa_files, tmp_path):
    vqa.convert(**vqa_files)
    config = Path(vqa_files["out"]) / "vqa.yaml"
    written = load_config(finetune.FinetuneConfig, [f"config={config}"])
    shipped = load_config(
        finetune.FinetuneConfig, ["config=" + str(REPO / "examples/flava/configs/finetuning/vqa.yaml")]
    )
    assert written.optim == shipped.optim and written.training == shipped.training and written.model == shipped.model
    assert (written.data.task, written.data.max_text_length) == ("image_text", None)
    assert written.data.train == str(Path(vqa_files["out"]) / "train.jsonl")
    assert written.data.val == str(Path(vqa_files["out"]) / "val.jsonl")
    assert written.data.image_root == vqa_files["images"] and written.data.labels == ["blue", "red"]
    write_tiny_export(tmp_path / "export")
    report = finetune.main(
        load_config(
            finetune.FinetuneConfig,
            [
                f"config={config}",
                f"model.pretrained={tmp_path / 'export'}",
                f"training.output_dir={tmp_path / 'run'}",
                "training.max_steps=2",
                "training.global_batch_size=4",
                "training.checkpoint_every=2",
                "training.progress_bar=false",
                "training.tensorboard=false",
                "optim.warmup_steps=1",
                "model.classifier_hidden_dim=16",
            ],
        )
    )
    assert report["loss"] == "binary_cross_entropy" and report["num_classes"] == 2
    assert report["skipped_samples"] == 0 and 0 <= report["validation"]["vqa_accuracy"] <= 1
    # the classify command answers the test-dev questions and writes VQA's results file
    results = tmp_path / "results.json"
    questions = str(Path(vqa_files["out"]) / "test-dev2015_questions.jsonl")
    argv = ["--checkpoint", str(tmp_path / "run"), "--images", vqa_files["images"], "--captions", questions]
    predicted = classify_main([*argv, "--text-key", "question", "--vqa-submission", str(results), "--top-k", "1"])
    top = [p["top"][0][0] for p in predicted["predictions"]]
    assert json.loads(results.read_text()) == [
        {"question_id": 70, "answer": top[0]},
        {"question_id": 71, "answer": top[1]},
    ]
    assert set(top) <= {"blue", "red"}


def test_labels_that_yaml_would_read_as_other_types_stay_strings(vqa_files):
    text = vqa.finetuning_config(Path("/t.jsonl"), Path("/v.jsonl"), Path("/i"), ["yes", "no", "1", "null", "1e3"])
    config_path = Path(vqa_files["out"] + ".yaml")
    config_path.write_text(text)
    labels = load_config(finetune.FinetuneConfig, [f"config={config_path}"]).data.labels
    assert labels == ["yes", "no", "1", "null", "1e3"]


def _refused(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        run_command(lambda: vqa.main(argv))
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    return lines[0]


def _write(path: str, value: object) -> None:
    Path(path).write_text(json.dumps(value))


@pytest.mark.parametrize(
    "break_it, argument, message",
    [
        (lambda f: _write(f["questions"], [1, 2]), "--questions", "with 'questions', got a JSON list"),
        (lambda f: _write(f["questions"], {"data": []}), "--questions", "with 'questions', got keys ['data']"),
        (
            lambda f: _write(f["questions"], {**_questions("train2014", [1]), "data_subtype": "abstract_v002"}),
            "--questions",
            "(data_subtype train2014 / val2014), got data_subtype 'abstract_v002' in",
        ),
        (
            lambda f: _write(f["questions"], {"data_subtype": "train2014", "questions": [{"image_id": "1"}]}),
            "--questions",
            "integer image_id and question_id",
        ),
        (lambda f: Path(f["questions"]).write_text("{"), "--questions", "expected a VQA JSON file"),
        (
            lambda f: _write(f["annotations"], _annotations(_questions("train2014", [1, 2, 3]), _colour)),
            "--annotations",
            "got 2 question(s) without annotations (e.g. [40, 41])",
        ),
        (
            lambda f: _write(f["val_annotations"], _annotations(_questions("val2014", [5, 6, 8]), _colour)),
            "--val-annotations",
            "got 2 annotation(s) of no question (e.g. [80, 81])",
        ),
        (
            lambda f: _write(f["annotations"], {"annotations": [{"question_id": 10, "answers": "yes"}]}),
            "--annotations",
            "annotations[0] must hold 'answers'",
        ),
        (lambda f: os.rename(f["images"] + "/val2014", f["images"] + "/v"), "--images", "COCO's val2014/ folder"),
        (lambda f: f.update(images=f["images"] + "x"), "--images", "(not a directory)"),
        (lambda f: f.update(questions=f["questions"] + "x"), "--questions", "(not a file)"),
        (lambda f: f.update(answers=0), "--answers", "expected an int >= 1, got 0"),
        (lambda f: Path(f["out"], "mine.txt").write_text("x", encoding=None), "--out", "is not empty (give --force"),
        (lambda f: f.update(test_questions=f["test_questions"] * 2), "--test-questions", "got test-dev2015 twice"),
        (lambda f: f.update(out=f["questions"] + "/out"), "--out", "expected a directory this user may write into"),
        (  # (each option sets one vocabulary: given with the other, it was to be ignored)
            lambda f: f.update(vocabulary="butd", answers=5),
            "--answers",
            "sets the size of --vocabulary train-top, got --answers 5 with butd",
        ),
        (
            lambda f: f.update(min_answer_count=3),
            "--min-answer-count",
            "sets --vocabulary butd's threshold, got --min-answer-count 3 with train-top",
        ),
        (
            lambda f: f.update(vocabulary="butd", min_answer_count=0),
            "--min-answer-count",
            "expected an int >= 1, got 0",
        ),
        (lambda f: f.update(vocabulary="butd"), "--annotations", "to hold its multiple_choice_answer (text; read by"),
        (
            lambda f: [
                _write(f["annotations"], _consensus_annotations(_questions("train2014", IMAGES["train2014"]))),
                _write(f["val_annotations"], _consensus_annotations(_questions("val2014", IMAGES["val2014"]))),
                f.update(vocabulary="butd", min_answer_count=4),
            ],
            "--min-answer-count",
            "no answer is the multiple_choice_answer of 4 or more of the 12 training and validation questions",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_argument_before_writing(
    vqa_files, capsys, break_it, argument, message
):
    if argument == "--out":
        Path(vqa_files["out"]).mkdir()
    break_it(vqa_files)
    line = _refused(capsys, _argv(vqa_files))
    assert line.startswith(f"error: argument {argument}: ") and message in line
    out = Path(vqa_files["out"])
    assert not out.exists() or os.listdir(out) == (["mine.txt"] if argument == "--out" else [])


def test_force_writes_into_a_non_empty_out_but_not_over_an_input(vqa_files, capsys):
    Path(vqa_files["out"]).mkdir()
    Path(vqa_files["out"], "mine.txt").write_text("kept")
    vqa.main(_argv({**vqa_files, "force": True}))
    assert Path(vqa_files["out"], "mine.txt").read_text() == "kept" and Path(vqa_files["out"], "vqa.yaml").is_file()
    capsys.readouterr()
    copied = Path(vqa_files["out"], "answers.json")
    copied.write_text(Path(vqa_files["annotations"]).read_text())
    line = _refused(capsys, _argv({**vqa_files, "annotations": str(copied), "force": True}))
    assert line == "error: argument --out: writing answers.json there would replace an input file"


def test_an_error_mid_file_leaves_no_partial_file_and_the_previous_one_whole(vqa_files, monkeypatch):
    out = Path(vqa_files["out"])
    vqa.convert(**vqa_files)
    before = {name: (out / name).read_text() for name in os.listdir(out)}
    calls = []

    def failing(answers, aliases=None):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # (as an interrupt would, mid train.jsonl)
        return {"x": 1.0}

    monkeypatch.setattr(vqa, "answer_scores", failing)
    with pytest.raises(KeyboardInterrupt):
        vqa.convert(**vqa_files, force=True)
    assert len(calls) == 3
    assert {name: (out / name).read_text() for name in os.listdir(out)} == before  # (no temporary file either)
    new = Path(vqa_files["out"] + "2")
    with pytest.raises(KeyboardInterrupt):
        calls.clear()
        vqa.convert(**{**vqa_files, "out": str(new)})
    assert os.listdir(new) == ["answers.json"]  # (written whole before train.jsonl; no config naming missing files)


def test_the_command_runs_as_a_module(vqa_files):
    done = run_script("-m torchflava.data.vqa", _argv({**vqa_files, "answers": 1}))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"1 answers; 8 training and 4 validation questions; config {vqa_files['out']}/vqa.yaml\n"


def test_the_shipped_vqa_yaml_points_at_the_converter():
    assert "python -m torchflava.data.vqa" in (REPO / "examples/flava/configs/finetuning/vqa.yaml").read_text()


def test_submission_answers_each_question_by_the_prediction_of_its_image_and_text(tmp_path):
    lines = [
        {"image": "test2015/a.jpg", "question": "Is it red? ", "question_id": 1},
        {"image": "test2015/b.jpg", "question": "Is it red?", "question_id": 2},  # (its image unreadable: skipped)
        {"image": "test2015/a.jpg", "question": "Is it red?", "question_id": 3},  # (the same input as 1)
        {"image": "test2015/a.jpg", "question": "How many?", "question_id": 4},
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    questions = vqa.submission_questions(str(path))
    assert questions[0] == ("test2015/a.jpg", "Is it red? ", 1) and len(questions) == 4
    predictions = [  # (as the command records them: the image relative to --images, or absolute)
        {"image": "test2015/a.jpg", "text": "Is it red?", "top": [["yes", 0.9], ["no", 0.1]]},
        {"image": str(tmp_path / "coco/test2015/a.jpg"), "text": "How many?", "top": [["2", 0.6]]},
    ]
    results, unanswered = vqa.submission(predictions, questions, str(tmp_path / "coco"))
    assert results == [
        {"question_id": 1, "answer": "yes"},
        {"question_id": 3, "answer": "yes"},
        {"question_id": 4, "answer": "2"},
    ]
    assert unanswered == [2]
    path.write_text('{"image": "a.jpg", "question": "q", "question_id": "1"}\n')
    with pytest.raises(ValueError, match="line 1: expected an integer question_id"):
        vqa.submission_questions(str(path))
    path.write_text('{"image": "a.jpg", "text": "q", "question_id": 1}\n')
    with pytest.raises(ValueError, match=r"line 1: expected a JSON object with \['image', 'question', 'question_id'\]"):
        vqa.submission_questions(str(path))


def test_classify_refuses_a_vqa_submission_without_captions_before_loading(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        classify_main(["--checkpoint", str(tmp_path), "--text", "a", "--vqa-submission", str(tmp_path / "r.json")])
    assert exit_.value.code == 2
    assert "argument --vqa-submission: expected --captions too" in capsys.readouterr().err


def test_the_training_reader_keeps_a_lines_few_scores_not_a_vector_of_every_answer(tmp_path):
    """ImageTextLabels over VQA's 3129 answers: each line's target is made a (3129,) vector when read. One held
    per line took 12.5 KB a question, 5.6 GB for VQA v2's 443,757 training questions in every rank and every
    DataLoader worker the source is pickled to (and 2 minutes to build)."""
    labels = [f"a{i}" for i in range(3129)]
    Image.new("RGB", (8, 8)).save(tmp_path / "x.jpg")
    lines = [{"image": "x.jpg", "text": "q", "answers": {f"a{i}": 1.0, "a7": 0.3, "other": 0.6}} for i in range(300)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    source = ImageTextLabels(tmp_path, tmp_path / "t.jsonl", labels)
    assert len(pickle.dumps(source)) < 1_000_000  # (a vector a line: 300 * 3129 * 4 bytes = 3.75 MB)
    expected = torch.zeros(3129)
    expected[5], expected[7] = 1.0, 0.3
    assert source.soft_scores and torch.equal(source[5].label, expected)
    assert torch.equal(pickle.loads(pickle.dumps(source))[5].label, expected)


# ---------------------------------------------------------------------------------------------- splits' subtypes


@pytest.mark.parametrize(
    "option, subtype, found",
    [
        (  # (was written as val2014_questions.jsonl, questions-only, without a word)
            "--test-questions",
            "val2014",
            "expected a test split's VQA questions file (data_subtype test2015 / test-dev2015), got data_subtype "
            "'val2014' in {path} (val2014 is annotated: give it as --questions or --val-questions)",
        ),
        (
            "--test-questions",
            "train2014",
            "expected a test split's VQA questions file (data_subtype test2015 / test-dev2015), got data_subtype "
            "'train2014' in {path} (train2014 is annotated: give it as --questions or --val-questions)",
        ),
        (  # (was refused for its annotations, which annotate other questions)
            "--questions",
            "test-dev2015",
            "expected an annotated split's VQA questions file (data_subtype train2014 / val2014), got data_subtype "
            "'test-dev2015' in {path} (test-dev2015 is a test split: give it as --test-questions)",
        ),
        (
            "--val-questions",
            "test2015",
            "expected an annotated split's VQA questions file (data_subtype train2014 / val2014), got data_subtype "
            "'test2015' in {path} (test2015 is a test split: give it as --test-questions)",
        ),
        (  # (was a TypeError: unhashable type: 'list')
            "--questions",
            ["train2014"],
            "expected an annotated split's VQA questions file (data_subtype train2014 / val2014), got data_subtype "
            "['train2014'] in {path}",
        ),
        (  # (no subtype, no image folder to find its images in)
            "--val-questions",
            None,
            "expected an annotated split's VQA questions file (data_subtype train2014 / val2014), got no "
            "data_subtype in {path}",
        ),
        (
            "--test-questions",
            None,
            "expected a test split's VQA questions file (data_subtype test2015 / test-dev2015), got no data_subtype "
            "in {path}",
        ),
    ],
)
def test_a_split_is_refused_where_its_data_subtype_is_the_other_kind(vqa_files, capsys, option, subtype, found):
    """--test-questions takes the unannotated test splits only, --questions and --val-questions the annotated
    ones, as each file's data_subtype names them: one line naming the option, the file and the subtype found."""
    key = {"--questions": "questions", "--val-questions": "val_questions", "--test-questions": "test_questions"}[option]
    path = vqa_files[key][0] if option == "--test-questions" else vqa_files[key]
    questions = json.loads(Path(path).read_text())
    if subtype is None:
        del questions["data_subtype"]
    else:
        questions["data_subtype"] = subtype
    Path(path).write_text(json.dumps(questions))
    assert _refused(capsys, _argv(vqa_files)) == f"error: argument {option}: " + found.format(path=path)
    assert not Path(vqa_files["out"]).exists()


def test_a_training_or_validation_split_may_be_either_annotated_one(vqa_files):
    """val2014 as the training split (and train2014's as the validation one) is a choice, not a mistake: kept."""
    for key, subtype in (("questions", "val2014"), ("val_questions", "train2014")):
        questions = json.loads(Path(vqa_files[key]).read_text())
        Path(vqa_files[key]).write_text(json.dumps({**questions, "data_subtype": subtype}))
    vqa.convert(**vqa_files)
    train = _lines(Path(vqa_files["out"]) / "train.jsonl")
    assert train[0]["image"] == "val2014/COCO_val2014_000000000001.jpg"  # (read under the folder it names)


# ---------------------------------------------------------------------------------------------- vqa.yaml's text

TRICKY_TEXT = [
    "${x}",  # an interpolation: a missing key
    "a ${x} b",
    "${oc.env:HOME}",  # a resolver: the environment's value
    "${",  # (a grammar error where OmegaConf reads it)
    "\\${x}",  # OmegaConf's escape, as text
    "\\\\${x}",
    "C:\\dir\\${x}\\",
    "$${x}$",
    "a\\b",
    'say "hi"',
    "yes",
    "null",
    "1e3",
    "a\tb",
    "a\nb",
    "x\x85y",  # (YAML's next-line, read as a line break)
    "x\u2028y",
    "\ufeffbom",
    "\x7f",
    "  spaced  ",
    "# not a comment",
    "key: value",
    "café 🚲",
    "",
]


def test_yaml_string_is_read_back_verbatim_by_omegaconf_and_the_recipes_config_reader(tmp_path):
    from omegaconf import OmegaConf

    config = tmp_path / "c.yaml"  # (labels "${x}", "${oc.env:HOME}", "${": read as interpolations, or refused)
    config.write_text(vqa.finetuning_config(Path("/t.jsonl"), Path("/v.jsonl"), Path("/i"), TRICKY_TEXT))
    assert load_config(finetune.FinetuneConfig, [f"config={config}"]).data.labels == TRICKY_TEXT
    text = "items:\n" + "".join(f"  - {vqa.yaml_string(item)}\n" for item in TRICKY_TEXT)
    assert OmegaConf.to_container(OmegaConf.create(text), resolve=True) == {"items": TRICKY_TEXT}


def test_answers_and_paths_holding_an_interpolation_reach_the_recipe_as_written(vqa_files, tmp_path):
    """An answer "${x}" was written into vqa.yaml as it is: OmegaConf read it as an interpolation, and loading the
    config failed (Interpolation key 'x' not found); a folder named with "${" broke it as well. (Normalised, "${x}"
    is "$ x": only an answer all annotators gave keeps its braces.)"""
    from omegaconf import OmegaConf

    images = tmp_path / "coco${HOME}"
    os.rename(vqa_files["images"], images)
    answers_of = lambda q: ["${x}" if q["image_id"] == 1 else "\\${y}"] * 10  # noqa: E731
    for key in ("annotations", "val_annotations"):
        questions = json.loads(Path(vqa_files[key.replace("annotations", "questions")]).read_text())
        Path(vqa_files[key]).write_text(json.dumps(_annotations(questions, answers_of)))
    out = tmp_path / "out${x}"
    vqa.convert(**{**vqa_files, "images": str(images), "out": str(out)})
    assert json.loads((out / "answers.json").read_text()) == ["\\${y}", "${x}"]
    read = OmegaConf.to_container(OmegaConf.load(out / "vqa.yaml"), resolve=True)
    assert read["data"]["labels"] == ["\\${y}", "${x}"] and read["data"]["image_root"] == str(images)
    config = load_config(finetune.FinetuneConfig, [f"config={out / 'vqa.yaml'}"])
    assert config.data.labels == ["\\${y}", "${x}"] and config.data.train == str(out / "train.jsonl")
    source = ImageTextLabels(config.data.image_root, config.data.train, config.data.labels)
    assert source[0].label.tolist() == [0.0, 1.0] and source[2].label.tolist() == [1.0, 0.0]
    assert source[0].image.size == (32, 32)


# ---------------------------------------------------------------------------------------------- butd vocabulary


def test_consensus_vocabulary_keeps_answers_of_min_count_questions_normalised():
    consensus = [(i, "Yes") for i in range(5)] + [(i, "yes.") for i in range(5, 9)] + [(i, "no") for i in range(9, 17)]
    consensus += [(17, "two"), (17, "two")]  # (one question listed twice counts once)
    assert vqa.consensus_vocabulary(consensus) == ["yes"]  # (9 questions; "no" has 8)
    assert vqa.consensus_vocabulary(consensus, 8) == ["yes", "no"]
    assert vqa.consensus_vocabulary(consensus, 1) == ["yes", "no", "2"]
    # the empty answer ("a", "the", "?" normalised) counts as any other, as in the literature's list
    assert vqa.consensus_vocabulary([(1, "a"), (2, "The"), (3, "?"), (4, "b")], 3) == [""]


# train's and val's questions (image 1-4 and 5-6, two each) and their multiple_choice_answer
CONSENSUS = {
    10: "Red",
    11: "red.",
    20: "blue",
    21: "two",
    30: "2",
    31: "the",
    40: "T-Shirt",
    41: "green",
    50: "blue",
    51: "Blue",
    60: "a",
    61: "green",
}


def _consensus_annotations(questions: dict) -> dict:
    """Each question's multiple_choice_answer 7 times, "blue" twice and "green" once, as annotations that name it."""
    document = _annotations(questions, lambda q: [CONSENSUS[q["question_id"]]] * 7 + ["blue"] * 2 + ["green"])
    for entry in document["annotations"]:
        entry["multiple_choice_answer"] = CONSENSUS[entry["question_id"]]
    return document


def test_the_butd_vocabulary_counts_train_and_val_consensus_answers_and_the_targets_follow_it(vqa_files):
    for key in ("annotations", "val_annotations"):
        questions = json.loads(Path(vqa_files[key.replace("annotations", "questions")]).read_text())
        Path(vqa_files[key]).write_text(json.dumps(_consensus_annotations(questions)))
    result = vqa.main(_argv({**vqa_files, "vocabulary": "butd", "min_answer_count": 2}))
    out = Path(vqa_files["out"])
    # normalised: blue 3 questions (1 training, 2 validation), then 2 each in string order: "" ("the", "a"),
    # 2 ("two", "2"), green (1 + 1), red ("Red", "red."); "t shirt" (1) falls short
    expected = ["blue", "", "2", "green", "red"]
    assert json.loads((out / "answers.json").read_text()) == expected and result["num_answers"] == 5
    assert load_config(finetune.FinetuneConfig, [f"config={out / 'vqa.yaml'}"]).data.labels == expected
    train = _lines(out / "train.jsonl")
    assert train[0]["answers"] == {"red": 1.0, "blue": 0.6, "green": 0.3}
    source = ImageTextLabels(vqa_files["images"], out / "train.jsonl", expected)
    targets = [source[i].label.tolist() for i in range(8)]
    assert targets[0] == pytest.approx([0.6, 0.0, 0.0, 0.3, 1.0])  # (question 10: Red)
    assert targets[3] == pytest.approx([0.6, 0.0, 1.0, 0.3, 0.0])  # (21: two)
    assert targets[5] == pytest.approx([0.6, 0.0, 0.0, 0.3, 0.0])  # (31: the: no answer is scored as empty)
    assert targets[6] == pytest.approx([0.6, 0.0, 0.0, 0.3, 0.0])  # (40: T-Shirt: "t shirt" is no class)
    val = ImageTextLabels(vqa_files["images"], out / "val.jsonl", expected)
    assert val[1].label.tolist() == pytest.approx([1.0, 0.0, 0.0, 0.3, 0.0])  # (51: Blue, 7 + 2 annotators)
    # the default is unchanged: the 3129 (here all 8) answers the training annotators gave most often
    vqa.convert(**{**vqa_files, "out": vqa_files["out"] + "2"})
    assert json.loads(Path(vqa_files["out"] + "2", "answers.json").read_text()) == [
        "blue",
        "green",
        "2",
        "red",
        "t shirt",
    ]
