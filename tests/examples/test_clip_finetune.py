"""CLIP image-classification fine-tuning (examples/clip/finetune.py): the zero-shot head at step 0, learning,
exact resume (killed, and on another number of ranks), the export and the config errors."""

import json
from pathlib import Path
import re
import shutil
import signal
import subprocess

import pytest
import torch

from tests.examples.fault_runner import run_script
from tests.helpers import (
    Killed,
    assert_a_changed_folder_refuses_resume,
    load_recipe,
    photos,
    stop_fit_after,
    two_class_folder,
    write_tiny_export,
)
from torchflava import zero_shot
from torchflava.classify import CLIPImageTower, load_clip_classifier
from torchflava.data.finetuning import ShapesClassification, training_source_key
from torchflava.modules.heads import NormalizedLinearClassifier
from torchflava.pretrained import load_pretrained
from torchflava.training.config import ConfigError, load_config
from torchflava.training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
FINETUNE = "examples/clip/finetune.py"
finetune = load_recipe(FINETUNE, "clip_finetune_recipe")

# the built-in shapes task from a tiny random CLIP (seconds a run)
SHAPES = [
    "data.task=shapes",
    "data.shapes_train=400",
    "data.shapes_val=120",
    "data.image_size=32",
    "training.global_batch_size=16",
    "training.log_every=1",
    "training.progress_bar=false",
    "training.tensorboard=false",
    "optim.lr=3e-3",
    "optim.warmup_steps=2",
    "eval.batch_size=64",
]
# the class-folder task on SHAPES' settings: the shapes task's keys, which it does not read, back at their defaults
FOLDERS = ["data.task=image_folder", "data.shapes_train=3000", "data.shapes_val=540", "data.image_size=64"]


def write_tiny_clip_export(root: Path, texts: tuple[str, ...] = ()) -> Path:
    """A torchflava CLIP export as examples/clip/train.py writes one: clip.safetensors, clip_config.json (every
    clip_model argument), a WordPiece vocabulary of the shapes captions (and ``texts``) and the preprocessing. Random
    weights, drawn wide (init_std 0.2) so that the tiny towers' features are not all alike."""
    from safetensors.torch import save_file

    from torchflava.data.shapes import ShapesWorld
    from torchflava.data.tokenizer import WordPieceTokenizer
    from torchflava.data.transforms import EvalImageTransform
    from torchflava.models.clip import clip_model, clip_model_arguments

    world = ShapesWorld("texts", 300, image_size=32)
    tokenizer = WordPieceTokenizer.train([world.caption(i) for i in range(300)] + list(texts), vocab_size=120)
    sizes = dict(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2)
    sizes.update(vision_mlp_dim=64, context_length=24, text_width=32, text_layers=1, text_heads=2, text_mlp_dim=64)
    kwargs = clip_model_arguments(
        **sizes, vocab_size=tokenizer.vocab_size, eos_token_id=tokenizer.sep_id, activation="quick_gelu", init_std=0.2
    )
    torch.manual_seed(0)
    model = clip_model(**kwargs)
    root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "clip.safetensors")
    (root / "clip_config.json").write_text(json.dumps(kwargs))
    tokenizer.model_max_length = 24
    tokenizer.save(root)
    EvalImageTransform(32).save(root)
    return root


@pytest.fixture(scope="module")
def clip_export(tmp_path_factory):
    return write_tiny_clip_export(tmp_path_factory.mktemp("clip_export"))


def _config_overrides(export, out) -> list[str]:
    return [f"model.pretrained={export}", f"training.output_dir={out}", *SHAPES]


def _config(export, out, *overrides):
    return load_config(finetune.FinetuneConfig, [*_config_overrides(export, out), *overrides])


def _losses(out) -> dict:
    return {r["step"]: r["loss"] for r in read_metrics(Path(out) / "metrics.jsonl")}


@pytest.fixture(scope="module")
def trained(clip_export, tmp_path_factory):
    """A 30-step run on shapes, and the model object fit trained (to compare the export with)."""
    out = tmp_path_factory.mktemp("shapes_run")
    seen = {}

    def fit(model, *args, **kwargs):
        seen["model"] = model
        return real_fit(model, *args, **kwargs)

    real_fit, finetune.fit = finetune.fit, fit
    try:
        report = finetune.main(
            _config(
                clip_export,
                out,
                "training.max_steps=30",
                "training.checkpoint_every=30",
                "training.global_batch_size=32",
                "optim.lr=1e-2",
            )
        )
    finally:
        finetune.fit = real_fit
    return out, report, seen["model"]


# --------------------------------------------------------------------------- the head at step 0
@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecations
def test_step_zero_logits_are_the_zero_shot_classifiers_scaled_scores_on_a_hugging_face_checkpoint(tmp_path):
    """On a Hugging Face CLIPModel directory (save_pretrained, tiny random config): the classifier the recipe builds
    scores each image as exp(logit_scale) x (normalised image features) . (class embeddings), the zero-shot
    command's scores (tested against transformers in tests/test_zero_shot_command.py)."""
    from tests.test_zero_shot_command import write_hf_clip

    write_hf_clip(tmp_path / "clip")
    pretrained = load_pretrained(tmp_path / "clip")
    classes, templates = ["cat", "coffee cup", "rocket", "astronaut"], ["a photo of a {}.", "a {}."]
    images = list(photos().values())
    head = finetune.zero_shot_head(pretrained, classes, templates, batch_size=3)  # (prompts in 3 calls)
    model = NormalizedLinearClassifier(CLIPImageTower(pretrained.model), head)
    assert head.weight.shape == (4, 16) and torch.equal(head.bias, torch.zeros(4))
    with torch.no_grad():
        logits = model(torch.stack([pretrained.image_transform(image) for image in images]))
    features = zero_shot.image_features(pretrained, images)
    embeddings = zero_shot.class_embeddings(pretrained, classes, templates)
    expected = pretrained.model.logit_scale.detach().exp() * features @ embeddings.T
    assert logits.shape == (6, 4)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert float(expected.std()) > 1e-3  # (scores that differ: not a vacuous match)
    # the text tower is not part of the classifier
    assert not any(name.startswith("encoder.text") for name in model.state_dict())


# --------------------------------------------------------------------------- learning, report, export
def test_a_tiny_run_on_shapes_beats_its_zero_shot_accuracy_and_lowers_the_loss(trained):
    out, report, _ = trained
    losses = _losses(out)
    assert sorted(losses) == list(range(1, 31))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (28, 29, 30)) / 3
    assert first > 3.3 and last < first - 0.3, (first, last)  # from about ln 30
    validation = report["validation"]
    assert list(validation) == ["zero_shot", "fine_tuned"] and report["steps"] == 30
    assert validation["fine_tuned"]["items"] == validation["zero_shot"]["items"] == 120
    assert validation["zero_shot"]["accuracy"] < 0.1  # random towers: about chance, 1/30
    assert validation["fine_tuned"]["accuracy"] > validation["zero_shot"]["accuracy"] + 0.05
    assert json.loads((out / "report.json").read_text()) == report
    assert "templates:\n  - a {}\n  - a small {}\n  - a large {}" in (out / "config.yaml").read_text()  # resolved


def test_the_export_loads_back_and_predicts_the_trained_models_logits(trained):
    out, report, model = trained
    names = {p.name for p in (out / "model").iterdir()}
    assert names == {"clip_classifier.safetensors", "clip_classifier_config.json", "preprocessor_config.json"}
    loaded = load_clip_classifier(out)  # the run directory: its model/
    assert loaded.labels == list(ShapesClassification.classes) and len(loaded.labels) == 30
    world = ShapesClassification("test", 8, image_size=32)
    images = [world[i].image for i in range(8)]
    pixels = torch.stack([loaded.image_transform(image) for image in images])
    with torch.no_grad():
        expected, got = model.eval()(pixels), loaded.model(pixels)
    assert torch.equal(got, expected)
    torch.testing.assert_close(loaded.scores(images), expected.softmax(dim=-1))
    assert not any(".text" in key for key in loaded.model.state_dict())
    bf16 = load_clip_classifier(out / "model", dtype=torch.bfloat16)  # inference in bf16: within its rounding
    torch.testing.assert_close(bf16.scores(images), expected.softmax(dim=-1), atol=3e-2, rtol=0)


def test_wise_ft_interpolates_every_weight_linearly():
    zero_shot = {"w": torch.tensor([0.0, 2.0]), "b": torch.tensor([4.0], dtype=torch.float64)}
    fine_tuned = {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0], dtype=torch.float64)}
    mixed = finetune.wise_ft(zero_shot, fine_tuned, 0.25)
    assert torch.equal(mixed["w"], torch.tensor([0.25, 1.5])) and torch.equal(
        mixed["b"], torch.tensor([3.0], dtype=torch.float64)
    )
    assert mixed["b"].dtype == torch.float64
    assert all(torch.equal(finetune.wise_ft(zero_shot, fine_tuned, 1.0)[k], fine_tuned[k]) for k in fine_tuned)


def test_the_classify_command_runs_the_export_on_class_folders(trained, tmp_path, capsys):
    from torchflava.classify import main as classify_main

    out, _, _ = trained
    world = ShapesClassification("test", 12, image_size=32)
    images = []
    for i in range(12):
        image, label = world[i].image, world.classes[world[i].label]
        (tmp_path / "images" / label).mkdir(parents=True, exist_ok=True)
        image.save(tmp_path / "images" / label / f"{i:02d}.png")
        images.append((f"{label}/{i:02d}.png", image, world[i].label))
    result = classify_main(["--checkpoint", str(out), "--images", str(tmp_path / "images"), "--top-k", "2"])
    loaded = load_clip_classifier(out / "model")
    images.sort()  # (the command lists the folder in sorted order)
    predicted = loaded.scores([image for _, image, _ in images]).argmax(dim=-1).tolist()
    assert [r["image"] for r in result["predictions"]] == [name for name, _, _ in images]
    assert [r["top"][0][0] for r in result["predictions"]] == [loaded.labels[i] for i in predicted]
    right = sum(p == label for p, (_, _, label) in zip(predicted, images))
    assert result["num_inputs"] == 12 and result["accuracy"] == pytest.approx(right / 12)
    assert f"12 inputs, 0 unreadable skipped; accuracy {100 * right / 12:.1f}%" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # an image classifier reads no texts
        classify_main(["--checkpoint", str(out), "--text", "a red circle"])
    assert "this CLIP image classifier reads --images DIR, got --text" in capsys.readouterr().err


def test_a_random_head_starts_elsewhere_and_wise_ft_is_reported(clip_export, tmp_path):
    report = finetune.main(
        _config(clip_export, tmp_path, "training.max_steps=3", "model.head_init=random", "eval.wise_ft_alpha=0.0")
    )
    validation = report["validation"]
    # alpha 0 is the zero-shot weights themselves: the same predictions as the zero-shot head
    assert validation["wise_ft"] == validation["zero_shot"]
    # the run's record holds the zero-shot classifier all the same (bias 0), the report's reference on a resume
    assert torch.equal(load_clip_classifier(tmp_path / "zero_shot").model.head.bias, torch.zeros(30))
    head = finetune.random_head(16, 30, seed=0)
    assert torch.equal(head.weight, finetune.random_head(16, 30, seed=0).weight)  # drawn from the seed alone
    assert float(head.weight.detach().abs().max()) <= 0.25 and float(head.weight.detach().std()) > 0.05


def test_crop_scale_min_trains_on_seeded_random_crops_and_validates_as_before(clip_export, trained, tmp_path):
    """data.crop_scale_min: the training images are RandomCropTransform crops (normalised as the checkpoint's
    preprocessing) drawn from each sample's seed, not the evaluation transform's; validation reads the latter."""
    seen = {}

    def fit(model, step, data, **kwargs):
        seen["data"] = data
        return real_fit(model, step, data, **kwargs)

    real_fit, finetune.fit = finetune.fit, fit
    try:
        report = finetune.main(_config(clip_export, tmp_path, "training.max_steps=3", "data.crop_scale_min=0.3"))
    finally:
        finetune.fit = real_fit
    data = seen["data"]
    cropped = data[0].batch
    evaluation = finetune.ClassificationCollator(None, image_size=32, image_transform=data.collator.collator.transform)
    data.collator = evaluation  # the same samples and labels through the evaluation transform
    plain = data[0].batch
    assert torch.equal(cropped["labels"], plain["labels"]) and cropped["image"].shape == plain["image"].shape
    assert float((cropped["image"] - plain["image"]).abs().mean()) > 0.05
    spec = evaluation.transform.spec
    crop = finetune.RandomCropTransform(32, scale=(0.3, 1.0), mean=spec.mean, std=spec.std)
    data.collator = lambda kind, samples, seeds, another=None: torch.stack(
        [crop(s.image, seed) for s, seed in zip(samples, seeds)]
    )
    assert torch.equal(data[0].batch, cropped["image"])  # exactly the seeded crops of the shared transform
    # validation on the evaluation transform: the zero-shot head scores as in a run without crops
    assert report["validation"]["zero_shot"] == trained[1]["validation"]["zero_shot"]
    assert finetune.training_collator(evaluation, 32, None) is evaluation  # null: the checkpoint's preprocessing


# --------------------------------------------------------------------------- resume
def test_a_stopped_run_resumes_to_exactly_the_uninterrupted_losses(clip_export, tmp_path, monkeypatch):
    common = ["training.max_steps=8", "training.checkpoint_every=4"]
    finetune.main(_config(clip_export, tmp_path / "reference", *common))
    stop_fit_after(monkeypatch, finetune, 6)  # after step 6's update: the last checkpoint is step 4's
    with pytest.raises(Killed):
        finetune.main(_config(clip_export, tmp_path / "run", *common))
    monkeypatch.undo()
    assert sorted(_losses(tmp_path / "run")) == [1, 2, 3, 4, 5]
    report = finetune.main(_config(clip_export, tmp_path / "run", *common, "training.resume=auto"))
    assert _losses(tmp_path / "run") == _losses(tmp_path / "reference")  # exactly, step for step
    reference = json.loads((tmp_path / "reference" / "report.json").read_text())
    assert report["validation"] == reference["validation"]


def test_a_resume_reads_the_recorded_start_not_the_moved_checkpoint(clip_export, tmp_path, monkeypatch):
    """The run records its zero-shot classifier before training; its resume, with model.pretrained moved away,
    ends as the uninterrupted run does (losses, exported weights, report); without the record it is refused."""
    pretrained = shutil.copytree(clip_export, tmp_path / "clip")
    common = ["training.max_steps=4", "training.checkpoint_every=2", "eval.wise_ft_alpha=0.5"]
    reference = finetune.main(_config(pretrained, tmp_path / "reference", *common))
    stop_fit_after(monkeypatch, finetune, 3)  # after step 3's update: the last checkpoint is step 2's
    with pytest.raises(Killed):
        finetune.main(_config(pretrained, tmp_path / "run", *common))
    monkeypatch.undo()
    recorded = load_clip_classifier(tmp_path / "run" / "zero_shot")
    assert recorded.labels == list(ShapesClassification.classes)
    start = load_clip_classifier(tmp_path / "reference" / "zero_shot").model.state_dict()
    assert all(torch.equal(v, start[k]) for k, v in recorded.model.state_dict().items())
    shutil.move(pretrained, tmp_path / "moved")  # the public checkpoint is gone from where the run read it
    report = finetune.main(_config(pretrained, tmp_path / "run", *common, "training.resume=auto"))
    losses = _losses(tmp_path / "run")
    assert losses == _losses(tmp_path / "reference") and sorted(losses) == [1, 2, 3, 4]
    assert report == reference and list(report["validation"]) == ["zero_shot", "fine_tuned", "wise_ft"]
    got, expected = (load_clip_classifier(tmp_path / name).model.state_dict() for name in ("run", "reference"))
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    # the record gone: refused in one line naming training.resume, before any work (model.pretrained is not read)
    shutil.rmtree(tmp_path / "run" / "zero_shot")
    run = [*SHAPES, *common, f"model.pretrained={pretrained}", f"training.output_dir={tmp_path / 'run'}"]
    result = run_script(FINETUNE, [*run, "training.resume=auto"])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: key 'training.resume': expected a run that recorded its zero-shot classifier")
    assert str(tmp_path / "run" / "zero_shot") in lines[0]


def test_a_run_killed_with_sigkill_resumes_to_exactly_the_uninterrupted_losses(clip_export, tmp_path):
    overrides = [*SHAPES, f"model.pretrained={clip_export}", "training.max_steps=6", "training.checkpoint_every=3"]
    overrides.append("training.resume=auto")
    reference = run_script(FINETUNE, [*overrides, f"training.output_dir={tmp_path / 'reference'}"])
    assert reference.returncode == 0, reference.stderr[-3000:]
    run = [*overrides, f"training.output_dir={tmp_path / 'run'}"]
    killed = run_script(FINETUNE, run, "after_optimizer_step", 5)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run_script(FINETUNE, run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _losses(tmp_path / "run") == _losses(tmp_path / "reference")
    assert "fine-tuning finished: 6 steps" in resumed.stdout


def _shapes_folders(root: Path, *, train: int, val: int) -> tuple[Path, Path]:
    """Class folders of shapes images: ``train`` training images, then ``val`` validation ones among their classes
    and, second in the validation folder's order, one file that is no image."""
    world, kept = ShapesClassification("pairs", 4 * (train + val), image_size=32), 0
    for i in range(len(world)):
        sample = world[i]
        split, name = ("train" if i < train else "val"), world.classes[sample.label]
        if split == "val" and (kept == val or not (root / "train" / name).is_dir()):
            continue  # (a validation class must be a training one)
        kept += split == "val"
        (root / split / name).mkdir(parents=True, exist_ok=True)
        sample.image.save(root / split / name / f"{i:03d}.png")
    first = sorted(sorted((root / "val").iterdir())[0].iterdir())[0]  # item 0
    # item 1 (on rank 1 of 2): "012_unreadable.png" sorts after "012.png"
    (first.parent / f"{first.stem}_unreadable.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root / "train", root / "val"


# runs the recipe as torchrun does, each rank writing down which validation items it decoded (a readable_chunks call)
SHARE_RECORDER = """
import json, os, runpy, sys
from torchflava.data import samples

real, folder = samples.readable_chunks, sys.argv[1]


def recorded(read, keys, size, skipped, **options):
    keys = list(keys)
    with open(os.path.join(folder, "reads" + os.environ["RANK"] + ".jsonl"), "a") as out:
        out.write(json.dumps(keys) + "\\n")
    return real(read, keys, size, skipped, **options)


samples.readable_chunks = recorded  # (before the recipe imports it)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_two_recorded_ranks(tmp_path: Path, common: list[str]) -> subprocess.CompletedProcess:
    """The recipe as ``torchrun``'s 2 CPU ranks (DDP, one thread each; forked by fault_runner's server) into
    ``tmp_path / "two"``, each rank's ``readable_chunks`` calls written down in ``tmp_path / "reads<RANK>.jsonl"``
    (:data:`SHARE_RECORDER`); it must exit 0."""
    (tmp_path / "recorder.py").write_text(SHARE_RECORDER)
    command = [str(tmp_path), str(REPO / FINETUNE), f"training.output_dir={tmp_path / 'two'}", "training.strategy=ddp"]
    result = run_script(str(tmp_path / "recorder.py"), [*command, *common], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_ddp_processes_match_one_and_resume_on_one(clip_export, tmp_path):
    """Two ranks train as one process does, and report exactly what it does: each rank decodes every other
    validation image (rank 0 decoded them all while rank 1 waited), an unreadable one skipped where it falls."""
    train, val = _shapes_folders(tmp_path / "data", train=48, val=8)  # 9 validation items, one unreadable
    common = [f"model.pretrained={clip_export}", *SHAPES, *FOLDERS, f"data.train={train}"]
    common += [f"data.val={val}", "training.max_steps=6", "training.checkpoint_every=3", "eval.wise_ft_alpha=0.5"]
    finetune.main(load_config(finetune.FinetuneConfig, [*common, f"training.output_dir={tmp_path / 'one'}"]))
    run_two_recorded_ranks(tmp_path, common)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), step
    reads = [[json.loads(line) for line in (tmp_path / f"reads{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert reads == [[[0, 2, 4, 6, 8]], [[1, 3, 5, 7]]]
    reports = [json.loads((tmp_path / run / "report.json").read_text()) for run in ("one", "two")]
    assert reports[1] == reports[0]
    assert set(reports[0]["validation"]) == {"zero_shot", "fine_tuned", "wise_ft"}
    assert all(v["items"] == 8 and v["skipped"] == 1 for v in reports[0]["validation"].values())
    # the 2-rank run stopped after step 3 resumes on one process: the same steps, data and losses
    shutil.rmtree(tmp_path / "two" / "checkpoints" / "step_00000006")
    cfg = load_config(
        finetune.FinetuneConfig, [*common, f"training.output_dir={tmp_path / 'two'}", "training.resume=auto"]
    )
    assert finetune.main(cfg)["steps"] == 6
    resumed = _losses(tmp_path / "two")
    for step in one:
        assert resumed[step] == pytest.approx(one[step], rel=1e-5), step


# --------------------------------------------------------------------------- class folders and config errors
def _class_folders(root: Path, classes: dict[str, list[str]]) -> Path:
    pictures = photos()
    for name, files in classes.items():
        (root / name).mkdir(parents=True)
        for file in files:
            pictures[file].convert("RGB").save(root / name / f"{file}.png")
    return root


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_class_folders_report_the_zero_shot_commands_accuracy_before_training(tmp_path):
    from tests.test_zero_shot_command import write_hf_clip

    write_hf_clip(tmp_path / "clip")
    folders = {"cat": ["chelsea"], "coffee": ["coffee"], "rocket": ["rocket"], "astronaut": ["astronaut_wide"]}
    train = _class_folders(tmp_path / "train", folders)
    val = _class_folders(tmp_path / "val", {**folders, "astronaut": ["astronaut_tall", "camera_grey"]})
    overrides = [f"model.pretrained={tmp_path / 'clip'}", f"training.output_dir={tmp_path / 'run'}"]
    overrides += [f"data.train={train}", f"data.val={val}", "training.max_steps=1", "training.global_batch_size=4"]
    overrides += ["optim.warmup_steps=0", "training.progress_bar=false", "training.tensorboard=false"]
    report = finetune.main(load_config(finetune.FinetuneConfig, [*FOLDERS, *overrides]))
    classes = ["astronaut", "cat", "coffee", "rocket"]  # the sorted folder names
    expected = zero_shot.classify_folder(load_pretrained(tmp_path / "clip"), str(val), classes)
    assert report["validation"]["zero_shot"]["items"] == expected["num_inputs"] == 5
    assert report["validation"]["zero_shot"]["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
    assert load_clip_classifier(tmp_path / "run").labels == classes


def test_class_names_replace_the_folder_names_in_the_prompts_and_the_export(clip_export, tmp_path):
    """Folders named as ids (sorted: 0_rc, 1_bs, 2_gt) and data.class_names: the head is the zero-shot classifier
    of the names, which the record and the export carry as the labels."""
    folders = {"0_rc": ["chelsea"], "1_bs": ["coffee"], "2_gt": ["rocket"]}
    train = _class_folders(tmp_path / "train", folders)
    names = ["red circle", "blue square", "green triangle"]
    overrides = [*FOLDERS, f"data.train={train}", f"data.val={train}", "training.max_steps=1"]
    overrides += ["training.global_batch_size=3", "optim.warmup_steps=0", "model.head_init=random"]
    overrides += ["data.class_names=[red circle,blue square,green triangle]"]
    finetune.main(load_config(finetune.FinetuneConfig, [*_config_overrides(clip_export, tmp_path / "run"), *overrides]))
    pretrained = load_pretrained(clip_export)
    templates = list(finetune.DEFAULT_TEMPLATES)
    expected = pretrained.model.logit_scale.detach().exp() * zero_shot.class_embeddings(pretrained, names, templates)
    recorded = load_clip_classifier(tmp_path / "run" / "zero_shot")
    torch.testing.assert_close(recorded.model.head.weight, expected, atol=1e-6, rtol=0)
    assert float((expected[0] - expected[1]).abs().max()) > 1e-3  # (names whose embeddings differ)
    assert recorded.labels == load_clip_classifier(tmp_path / "run").labels == names


def test_bad_configs_exit_2_with_one_line_naming_the_key(clip_export, tmp_path):
    flava = tmp_path / "flava"
    write_tiny_export(flava)
    folders = {"cat": ["chelsea"], "coffee": ["coffee"]}
    train = _class_folders(tmp_path / "train", folders)
    val = _class_folders(tmp_path / "val", {"cat": ["chelsea"], "dog": ["coffee"]})
    base = [*SHAPES, f"model.pretrained={clip_export}", f"training.output_dir={tmp_path / 'run'}"]
    cases = {
        "data.task": (["data.task=glue"], "one of ('image_folder', 'shapes')"),
        "model.head_init": (["model.head_init=lp"], "one of ('zero_shot', 'random', 'linear_probe')"),
        "model.pretrained": ([f"model.pretrained={flava}"], "(a FLAVA checkpoint)"),
        "data.val": ([*FOLDERS, f"data.train={train}", f"data.val={val}"], "['dog'] are not among"),
        "eval.wise_ft_alpha": (["eval.wise_ft_alpha=1.5"], "null or in [0, 1]"),
        "data.crop_scale_min": (["data.crop_scale_min=0"], "null or in (0, 1]"),
        "model.templates": (["model.templates=[a photo]"], "each with one '{}'"),
        "data.image_size": (["data.image_size=1000000000000"], "at most 4096"),  # was an overflow traceback
    }
    folder_task = [*FOLDERS, f"data.train={train}", f"data.val={train}"]
    names = [  # data.class_names: one distinct non-empty name per training folder (cat, coffee), not with shapes
        ([*folder_task, "data.class_names=[cat]"], "2 names, one per class folder of data.train in sorted order"),
        ([*folder_task, "data.class_names=[cat,cat]"], "(['cat'] repeated)"),
        ([*folder_task, "data.class_names=[cat,' ']"], "(an empty name)"),
        (["data.class_names=[a,b]"], "null, since data.task=shapes names its own classes"),
    ]
    # a key the class-folder task does not read, set (SHAPES' size, for the shapes task): was silently ignored
    unread = (
        [*folder_task, "data.image_size=32", "training.max_steps=3"],
        "its default, 64, since data.task=image_folder",
    )
    for key, (overrides, says) in [
        *cases.items(),
        *(("data.class_names", case) for case in names),
        ("data.image_size", unread),
    ]:
        result = run_script(FINETUNE, [*base, *overrides])
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (key, result.stderr[-2000:])
        assert lines[0].startswith(f"error: key '{key}': expected") and says in lines[0], (key, lines[0])
    assert not (tmp_path / "run").exists()  # refused before any work
    with pytest.raises(ConfigError, match="key 'data.train': expected null, since data.task=shapes reads no files"):
        finetune.main(_config(clip_export, tmp_path / "run", f"data.train={train}"))


def test_help_shows_the_commands_as_they_are_typed_with_the_shipped_configs():
    """``--help`` printed each backslash-continued command of the module docstring as one line with a gap of
    spaces (a plain string reads a backslash and newline as a line continuation), and named configs that are not
    shipped (finetune_shapes_debug.yaml)."""
    from torchflava.training.recipe import usage

    text = usage(finetune.main, finetune.FinetuneConfig)
    assert "finetune_classes.yaml \\\n        model.pretrained=/models/clip-vit-base-patch16 data.train=" in text
    assert "model.pretrained=~/.cache/clip/ViT-B-32.pt model.tokenizer=bpe_simple_vocab_16e6.txt.gz \\\n" in text
    assert text.count(" \\\n") == 5
    named = re.findall(r"config=(\S+\.yaml)", text)
    assert "examples/clip/configs/finetune_shapes.yaml" in named and len(named) == 5
    assert all((REPO / path).is_file() for path in named), named
    assert "output_dir: runs/clip-tiny" in (REPO / "examples/clip/configs/tiny.yaml").read_text()  # shapes' start


def test_the_shipped_configs_load_and_validate(clip_export, tmp_path):
    folders = _class_folders(tmp_path / "train", {"cat": ["chelsea"], "coffee": ["coffee"]})
    for name, overrides in {
        "finetune_classes": [f"data.train={folders}", f"data.val={folders}"],
        "finetune_shapes": ["data.image_size=32"],
    }.items():
        argv = [f"config=examples/clip/configs/{name}.yaml", f"model.pretrained={clip_export}", *overrides]
        cfg = load_config(finetune.FinetuneConfig, [*argv, f"training.output_dir={tmp_path / name}"])
        finetune.validate(cfg, 1)
        assert cfg.model.head_init == "zero_shot" and cfg.eval.wise_ft_alpha == 0.5
    assert cfg.data.task == "shapes" and cfg.training.max_steps == 60 and cfg.optim.lr == 1e-4


def test_a_file_where_the_run_records_its_start_is_refused_before_any_work(clip_export, tmp_path):
    """A file named zero_shot in training.output_dir failed only after the weights were loaded and the head built,
    inside the staged write of the record (a ValueError from torchflava.utils.checkpoint, not a config error)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "zero_shot").write_text("my notes")
    with pytest.raises(ConfigError) as caught:
        finetune.main(_config(clip_export, out))
    assert str(caught.value) == (
        "key 'training.output_dir': expected a directory this process can create or write, with no entry of "
        f"another kind where a run writes one, got '{out} (its zero_shot is a file, where a run writes a directory)'"
    )
    assert [p.name for p in out.iterdir()] == ["zero_shot"]


def test_an_export_whose_config_does_not_fit_its_weights_is_refused_in_one_line_naming_the_file(trained, tmp_path):
    """A changed width, fewer labels or another image size failed inside torch's load_state_dict (a multi-line
    size-mismatch RuntimeError; the classify command printed a 49-line traceback), an unknown argument was a bare
    TypeError from clip_model, and repeated class names loaded without a word."""
    out, _, _ = trained
    config = json.loads((out / "model" / "clip_classifier_config.json").read_text())
    cases = {
        "width": ({**config, "clip_model": {**config["clip_model"], "vision_width": 48}}, "does not match the model"),
        "labels": ({**config, "labels": config["labels"][:-1]}, "wrong 2 ['head.bias [30] for [29]'"),
        "size": ({**config, "clip_model": {**config["clip_model"], "image_size": 64}}, "does not match the model"),
        "unknown": ({**config, "clip_model": {**config["clip_model"], "foo": 1}}, "'clip_model': "),
        "repeated": ({**config, "labels": ["a", "a", *config["labels"][2:]]}, "'labels' must be distinct non-empty"),
        "empty": ({**config, "labels": ["", *config["labels"][1:]]}, "'labels' must be distinct non-empty"),
    }
    for name, (edited, says) in cases.items():
        export = tmp_path / name
        shutil.copytree(out / "model", export)
        (export / "clip_classifier_config.json").write_text(json.dumps(edited))
        with pytest.raises(ValueError) as caught:
            load_clip_classifier(export)
        message = str(caught.value)
        assert says in message and "\n" not in message, (name, message)
        assert str(export) in message, (name, message)


def test_a_training_checkpoint_and_a_run_killed_before_its_export_load_as_classifiers(trained, tmp_path, capsys):
    """A run's checkpoints/step_<N>, or a run without model/ (killed before its export), were read as pretraining
    runs and refused for their config ("expected the model section of a FLAVA or CLIP pretraining run"): they load
    with the architecture, class names and preprocessing the run recorded at its start."""
    from torchflava.training.integrity import CheckpointIntegrityError

    out, _, model = trained
    exported = load_clip_classifier(out)
    killed = tmp_path / "killed"
    shutil.copytree(out, killed, ignore=shutil.ignore_patterns("model"))
    world = ShapesClassification("test", 4, image_size=32)
    images = [world[i].image for i in range(4)]
    for named in (out / "checkpoints" / "step_30", killed):  # (unpadded: the checkpoint of step 30)
        loaded = load_clip_classifier(named)
        assert loaded.labels == exported.labels and loaded.clip_kwargs == exported.clip_kwargs
        assert torch.equal(loaded.scores(images), exported.scores(images))  # the last checkpoint is the export
    assert "has no export (model/); evaluating its latest complete checkpoint" in capsys.readouterr().err
    (tmp_path / "photos").mkdir()
    images[0].save(tmp_path / "photos" / "a.png")
    result = run_script("-m torchflava.classify", ["--checkpoint", str(killed), "--images", str(tmp_path / "photos")])
    best = exported.labels[int(exported.scores(images[:1]).argmax())]
    assert result.returncode == 0 and result.stdout.startswith(f"a.png\t{best} "), result.stderr[-2000:]
    shard = next((killed / "checkpoints" / "step_00000030").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-8] + b"12345678")  # one file's bytes changed
    with pytest.raises(CheckpointIntegrityError):
        load_clip_classifier(killed / "checkpoints" / "step_30")


def test_the_report_decodes_each_validation_image_once_for_all_three_models(clip_export, tmp_path, monkeypatch):
    """The zero-shot, fine-tuned and WiSE-FT figures each read the whole validation set again (three decodes of
    every image, on rank 0 alone while the other ranks waited at a barrier)."""
    reads = []

    def counted(read, indices, *args, **kwargs):
        reads.append(len(indices))
        return real(read, indices, *args, **kwargs)

    real = finetune.readable_chunks
    monkeypatch.setattr(finetune, "readable_chunks", counted)
    overrides = ("training.max_steps=3", "data.shapes_val=12", "eval.wise_ft_alpha=0.5", "eval.batch_size=5")
    report = finetune.main(_config(clip_export, tmp_path / "run", *overrides))
    assert reads == [12]
    assert set(report["validation"]) == {"zero_shot", "fine_tuned", "wise_ft"}
    assert all(figures["items"] == 12 for figures in report["validation"].values())


def test_an_unreadable_validation_image_is_named_in_the_report_and_counted_in_the_human_line(
    clip_export, tmp_path, capsys
):
    """An unreadable validation image was left out of the figures with only a count in report.json: the human line
    said "validation (4 items)" and nothing named the image the figures left out."""
    train, val = _shapes_folders(tmp_path / "data", train=16, val=4)
    bad = next(val.rglob("*_unreadable.png"))
    folders = [*FOLDERS, f"data.train={train}", f"data.val={val}", "eval.wise_ft_alpha=0.5"]
    report = finetune.main(
        _config(clip_export, tmp_path / "run", *folders, "training.max_steps=1", "optim.warmup_steps=0")
    )
    assert set(report["validation"]) == {"zero_shot", "fine_tuned", "wise_ft"}
    for figures in report["validation"].values():
        assert (figures["items"], figures["skipped"], len(figures["skipped_examples"])) == (4, 1, 1)
        assert figures["skipped_examples"][0].startswith(f"{bad.relative_to(val)}: unreadable image (")
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith("fine-tuning finished: 1 steps; validation (4 items, 1 unreadable skipped) top-1 ")


def test_a_training_class_folder_without_images_is_named_in_one_warning(clip_export, tmp_path, capsys):
    """An empty class folder became a class without a word: a row of the zero-shot head that took predictions
    (its name's prompt) and a share of chance."""
    train = _class_folders(tmp_path / "train", {"cat": ["chelsea"], "coffee": ["coffee"]})
    (train / "zempty").mkdir()
    folder_task = [*FOLDERS, f"data.train={train}", f"data.val={train}", "training.max_steps=1"]
    overrides = [*folder_task, "optim.warmup_steps=0", "training.global_batch_size=2"]
    report = finetune.main(_config(clip_export, tmp_path / "run", *overrides))
    warning = "warning: data.train: 1 class(es) without an image, kept as classes (an output of the classifier, "
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: data.train")] == [
        warning + "counted in chance): 'zempty'"
    ]
    assert report["num_classes"] == 3


def test_imagenet_s_synset_folders_without_class_names_are_named_in_one_warning(tmp_path, capsys):
    """ImageNet's class folders are WordNet ids: with data.class_names null the zero-shot head was built, without a
    word, from prompts such as "a photo of a n01440764.", which start it near chance; named names say nothing."""
    train = _class_folders(tmp_path / "train", {"n01440764": ["chelsea"], "n01443537": ["coffee"]})
    clip_export = write_tiny_clip_export(tmp_path / "export", texts=("n01440764 n01443537",))  # (digits in its vocab)
    folder_task = [*FOLDERS, f"data.train={train}", f"data.val={train}", "training.max_steps=1"]
    overrides = [*folder_task, "optim.warmup_steps=0", "training.global_batch_size=2"]
    finetune.main(_config(clip_export, tmp_path / "run", *overrides))
    assert [line for line in capsys.readouterr().err.splitlines() if "synset" in line] == [
        "warning: data.class_names: null, so the class names are the folders' WordNet synset ids (n01440764, "
        'n01443537) and the prompts read "a photo of a n01440764.": set data.class_names to the class names, one per '
        "folder in sorted order (ImageNet's: tench, goldfish, ...)"
    ]
    named = [*overrides, "data.class_names=[tench, goldfish]"]
    finetune.main(_config(clip_export, tmp_path / "named", *named))
    assert "synset" not in capsys.readouterr().err


def test_a_run_killed_between_its_exports_renames_loads_the_export_set_aside(trained, tmp_path):
    out, _, _ = trained
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("checkpoints"))
    (run / "model").rename(run / ".model.previous")  # the kill: the old export aside, the new one not yet in
    images = [ShapesClassification("test", 2, image_size=32)[i].image for i in range(2)]
    assert torch.equal(load_clip_classifier(run).scores(images), load_clip_classifier(out).scores(images))


def test_a_resume_whose_class_folders_were_renamed_is_refused_naming_data_train(clip_export, tmp_path, monkeypatch):
    """Only the number of classes was compared with the record: a class folder renamed (cat -> zebra) keeps the
    count and shifts the sorted order, so each label id trained another class's row of the head and the export kept
    the old names."""
    train = _class_folders(tmp_path / "train", {"cat": ["chelsea"], "coffee": ["coffee"], "rocket": ["rocket"]})
    folder_task = [*FOLDERS, f"data.train={train}", f"data.val={train}", "training.max_steps=3"]
    common = [*folder_task, "training.checkpoint_every=1", "optim.warmup_steps=0", "training.global_batch_size=3"]
    stop_fit_after(monkeypatch, finetune, 2)
    with pytest.raises(Killed):
        finetune.main(_config(clip_export, tmp_path / "run", *common))
    monkeypatch.undo()
    assert json.loads((tmp_path / "run" / "zero_shot" / "class_folders.json").read_text()) == [
        "cat",
        "coffee",
        "rocket",
    ]
    (train / "cat").rename(train / "zebra")
    with pytest.raises(ConfigError) as caught:
        finetune.main(_config(clip_export, tmp_path / "run", *common, "training.resume=auto"))
    assert str(caught.value) == (
        "key 'data.train': expected the 3 class folders the run started with, in their order, got "
        f"\"{train} (3 class folders; class 0: 'cat' then, 'coffee' now)\""
    )
    record = tmp_path / "run" / "zero_shot" / "class_folders.json"
    record.rename(record.with_suffix(".kept"))  # a record written before the file was: its labels are the folders
    with pytest.raises(ConfigError, match="class 0: 'cat' then, 'coffee' now"):
        finetune.main(_config(clip_export, tmp_path / "run", *common, "training.resume=auto"))
    record.with_suffix(".kept").rename(record)
    assert finetune.class_folders_check(["a", "b"], ["a", "b", "none"], "train")[3] == (
        "train (3 class folders; class 2: no folder then, 'none' now)"
    )
    (train / "zebra").rename(train / "cat")  # put back: the resume runs to the end
    report = finetune.main(_config(clip_export, tmp_path / "run", *common, "training.resume=auto"))
    assert report["steps"] == 3 and load_clip_classifier(tmp_path / "run").labels == ["cat", "coffee", "rocket"]


def test_a_resume_on_a_training_folder_that_changed_size_exits_2_naming_data_train(clip_export, tmp_path, monkeypatch):
    """Each pass over the training folder is a permutation seeded by its size: a resume on a folder with an image
    more (or less) drew another order without a word (items seen twice, others never), as the pretraining recipes
    refuse; the folder as it was resumes."""
    train = two_class_folder(tmp_path / "train")
    folder_task = [*FOLDERS, f"data.train={train}", f"data.val={train}", "training.max_steps=3"]
    common = [*folder_task, "training.checkpoint_every=2", "optim.warmup_steps=0", "training.global_batch_size=4"]
    stop_fit_after(monkeypatch, finetune, 3)  # after step 3's update: the last checkpoint is step 2's
    with pytest.raises(Killed):
        finetune.main(_config(clip_export, tmp_path / "run", *common))
    monkeypatch.undo()

    run = [*_config_overrides(clip_export, tmp_path / "run"), *common, "training.resume=auto"]
    assert_a_changed_folder_refuses_resume(FINETUNE, run, train, tmp_path / "run")
    report = finetune.main(_config(clip_export, tmp_path / "run", *common, "training.resume=auto"))
    assert report["steps"] == 3 and sorted(_losses(tmp_path / "run")) == [1, 2, 3]
    tasks = {"image_folder": "data.train", "shapes": "data.shapes_train"}  # (the key that sets the source's size)
    assert {task: training_source_key(task) for task in tasks} == tasks


def test_classifying_a_killed_run_verifies_its_checkpoint_once_and_an_export_needs_its_preprocessing(
    trained, tmp_path, monkeypatch
):
    """The command hashed the newest checkpoint of a run killed before its export twice (once to tell it was a
    CLIP classifier, again to load it); an export without its preprocessor_config.json loaded with a default
    transform, not the one it trained with."""
    from torchflava import classify, pretrained
    from torchflava.training.checkpointing import CheckpointManager

    out, _, _ = trained
    killed = tmp_path / "killed"
    shutil.copytree(out, killed, ignore=shutil.ignore_patterns("model"))
    (tmp_path / "photos").mkdir()
    ShapesClassification("test", 1, image_size=32)[0].image.save(tmp_path / "photos" / "a.png")
    calls = []
    real = CheckpointManager.latest_intact
    monkeypatch.setattr(pretrained.CheckpointManager, "latest_intact", lambda self: calls.append(1) or real(self))
    result = classify.main(["--checkpoint", str(killed), "--images", str(tmp_path / "photos")])
    assert len(result["predictions"]) == 1 and len(calls) == 1
    monkeypatch.undo()
    export = shutil.copytree(out / "model", tmp_path / "export")
    (export / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"export: expected its preprocessing, preprocessor_config.json"):
        load_clip_classifier(export)


def test_the_human_line_prints_a_3000_class_chance_and_a_99_96_percent_accuracy_as_they_are():
    """One decimal printed an accuracy of 0.9996 as 100.0% and a chance of 1/3000 classes as 0.0%: every share is
    now printed by torchflava.evaluation.percent."""
    validation = {"zero_shot": {"accuracy": 0.0004}, "fine_tuned": {"accuracy": 0.9996, "items": 9}}
    assert finetune.format_report({"steps": 5, "validation": validation, "chance": 1 / 3000}, Path("runs/x")) == (
        "fine-tuning finished: 5 steps; validation (9 items) top-1 zero_shot 0.040%, fine_tuned 99.96% (chance "
        "0.033%); classifier exported to runs/x/model (python -m torchflava.classify --checkpoint runs/x --images DIR)"
    )


def test_class_folders_typed_with_a_tilde_are_the_home_directorys(clip_export, tmp_path, monkeypatch):
    """data.train=~/pets/train, kept as typed by a YAML file or a quoted override, was refused as a missing
    folder (or a folder named '~' under the working directory was read)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    two_class_folder(tmp_path / "pets" / "train")
    overrides = [*FOLDERS, "data.train=~/pets/train", "data.val=~/pets/train"]
    cfg = _config(clip_export, tmp_path / "run", *overrides)
    finetune.validate(cfg, 1)
    assert cfg.data.train == cfg.data.val == str(tmp_path / "pets" / "train")
    with pytest.raises(ConfigError) as caught:
        finetune.validate(_config(clip_export, tmp_path / "run", *overrides, "data.val=~/pets/val"), 1)
    assert str(caught.value) == (
        f"key 'data.val': expected an existing directory, got '~/pets/val' (= '{tmp_path / 'pets' / 'val'}')"
    )
