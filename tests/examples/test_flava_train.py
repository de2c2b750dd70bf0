"""The pretraining recipe end to end: config errors, DDP/FSDP parity, kill-and-resume, bad data, NaN stop."""

import dataclasses
import importlib.util
import inspect
import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time

from PIL import Image
import pytest
import torch
import yaml

from tests.examples.fault_runner import run_script
from tests.helpers import (
    assert_a_grown_captions_file_refuses_resume,
    assert_relative_paths_resume_the_run_s_own_files,
    load_recipe,
    write_tiny_export,
)
from torchflava.modules.layers import TransformerEncoderLayer
from torchflava.training.checkpointing import CheckpointManager
from torchflava.training.config import load_config
from torchflava.training.schema import NonFiniteLossError

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "flava" / "train.py"
DEBUG = REPO / "examples" / "flava" / "configs" / "pretraining" / "debug.yaml"


train = load_recipe("examples/flava/train.py", "flava_train_recipe")


def _config(*overrides):
    return load_config(train.TrainConfig, [f"config={DEBUG}", *overrides])


def _losses(output_dir):
    return {r["step"]: r["loss"] for r in train.read_metrics(Path(output_dir) / "metrics.jsonl")}


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return env


def _run(args, *, nproc=1, check=True):
    """The recipe in a process of its own, or as ``nproc`` ranks under torchrun's environment: forked from
    fault_runner's server (imports done once; ``test_clip_train`` runs its DDP test under torchrun itself)."""
    command = [sys.executable, str(SCRIPT), f"config={DEBUG}", *args]
    result = run_script("examples/flava/train.py", command[2:], nproc=nproc)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


# ------------------------------------------------------------------------------------------ config
def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(train.ConfigError, match="max_stepz"):
        _config("training.max_stepz=3")


def test_wrong_type_is_an_error_naming_the_key():
    with pytest.raises(train.ConfigError, match="max_steps"):
        _config("training.max_steps=many")


def test_help_shows_the_multi_line_commands_as_they_are_typed():
    """The module docstring's commands end their lines in a backslash: a plain string read each backslash and
    newline as a line continuation, so ``--help`` printed each command as one line with a gap of spaces."""
    from torchflava.training.recipe import usage

    text = usage(train.main, train.TrainConfig)
    assert "pretraining/full.yaml \\\n        training.strategy=fsdp training.precision=bf16\n" in text
    assert "full.yaml         training" not in text
    assert text.count(" \\\n") == 3  # each continued line, as written


def test_unknown_top_level_section_in_yaml_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: 3\n")
    with pytest.raises(train.ConfigError, match="trainer"):
        load_config(train.TrainConfig, [f"config={bad}"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("training.strategy=zero3", "training.strategy"),
        ("training.precision=fp8", "training.precision"),
        ("training.activation_checkpointing=some", "training.activation_checkpointing"),
        ("training.global_batch_size=6", "training.global_batch_size"),  # not divisible by accumulation 4
        ("model.image_size=30", "model.image_size"),
        ("data.num_masked_patches=17", "data.num_masked_patches"),
        ("optim.warmup_steps=8", "optim.warmup_steps"),
        ("data.source=web", "data.source"),
        ("pretraining.mlm_weight=-1", "pretraining.mlm_weight"),
        ("model.max_seq_len=16", "data.max_text_length"),
    ],
)
def test_semantic_validation_names_the_key(override, key):
    cfg = _config(override, "training.grad_accumulation=4" if "global_batch" in override else "training.seed=0")
    with pytest.raises(train.ConfigError, match=key.replace(".", r"\.")):
        train.validate(cfg, world_size=1)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "data.streaming.shuffle_buffer=5",
            "'data.streaming.shuffle_buffer': expected its default, 1000, since {}, got 5",
        ),
        (
            "data.streaming.resampled=true",
            "'data.streaming.resampled': expected its default, False, since {}, got True",
        ),
    ],
)
def test_streaming_settings_without_streaming_are_refused(override, message):
    """Local tar shards are indexed and sampled by step: a shuffle buffer or resampling set without
    data.streaming.enabled was ignored without a word."""
    with pytest.raises(train.ConfigError) as caught:
        train.validate(_config("data.source=files", "data.files.texts=README.md", override), world_size=1)
    assert str(caught.value) == "key " + message.format("data.streaming.enabled=false")


def test_config_sections_hold_the_builders_own_arguments():
    def arguments(builder, supplied):
        return set(inspect.signature(builder).parameters) - set(supplied)

    def names(section):
        return {f.name for f in dataclasses.fields(section)}

    assert names(train.ModelConfig) == arguments(train.flava_model, ["vocab_size", "checkpoint_activations"])
    supplied = ["backbone", "codebook", "build_codebook"]
    assert names(train.PretrainingConfig) == arguments(train.flava_model_for_pretraining, supplied)
    assert names(train.CodebookConfig) == arguments(train.dalle_encoder, ["vocab_size", "freeze"]) | {"pretrained"}
    cfg = _config("pretraining.mlm_weight=0.5", "model.text_num_layers=2", "model.image_mlp_dim=40")
    model = train.build_model(cfg, vocab_size=50)
    layers = [m for m in model.model.text_encoder.modules() if isinstance(m, TransformerEncoderLayer)]
    assert model.weights.mlm == 0.5 and len(layers) == 2 and model.model.text_encoder.embeddings.vocab_size == 50
    assert model.model.image_encoder.encoder.layers[0].mlp.fc1.out_features == 40
    with pytest.raises(train.ConfigError, match="hidden_dim"):  # the old renamed keys are gone
        _config("model.hidden_dim=32")


def test_refuses_to_mix_runs_in_one_output_dir(tmp_path):
    cfg = _config(
        f"training.output_dir={tmp_path}", "training.max_steps=3", "training.checkpoint_every=3", "eval.enabled=false"
    )
    train.main(cfg)
    cfg = _config(f"training.output_dir={tmp_path}", "training.max_steps=3", "training.resume=none")
    with pytest.raises(train.ConfigError, match="training.resume"):
        train.main(cfg)


# ---------------------------------------------------------------------------------- single process
def test_single_process_run_writes_everything_and_learns(tmp_path):
    report = train.main(_config(f"training.output_dir={tmp_path}", "training.max_steps=12"))
    losses = _losses(tmp_path)
    assert sorted(losses) == list(range(1, 13))
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "checkpoints" / "step_00000012" / "COMPLETE").is_file()
    assert (tmp_path / "model" / "flava_pretraining.safetensors").is_file()
    assert report["skipped_samples"] == 0
    evaluation = report["eval"]
    assert evaluation["test_items"] == 64 and evaluation["num_classes"] == 30
    assert 0.0 <= evaluation["zero_shot_accuracy"] <= 1.0
    # the exported backbone is a plain FLAVAModel that the evaluation (and users) can load
    exported = train.load_pretrained(tmp_path)
    assert exported.model.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 32)
    # ... with the recipe's evaluation transform, recorded in preprocessor_config.json
    assert (tmp_path / "model" / "preprocessor_config.json").is_file()
    assert exported.image_transform.spec == train.EvalImageTransform(32).spec
    assert exported.image_transform.spec.resize_mode == "short_side" and exported.image_transform.spec.resample == 2


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    train.main(_config(f"training.output_dir={tmp_path / 'one'}", "training.max_steps=4", "eval.enabled=false"))
    train.main(
        _config(
            f"training.output_dir={tmp_path / 'acc'}",
            "training.max_steps=4",
            "eval.enabled=false",
            "training.grad_accumulation=2",
        )
    )
    one, acc = _losses(tmp_path / "one"), _losses(tmp_path / "acc")
    assert one.keys() == acc.keys()
    # the first step sees the same weights: the losses agree closely (micro-batches may be of other kinds later)
    assert acc[1] == pytest.approx(one[1], rel=0.5)


# ------------------------------------------------------------------------------ distributed (gloo)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process(tmp_path, strategy):
    steps = ["training.max_steps=6", "eval.enabled=false"]
    train.main(_config(f"training.output_dir={tmp_path / 'single'}", *steps))
    _run([f"training.output_dir={tmp_path / strategy}", f"training.strategy={strategy}", *steps], nproc=2)
    single, double = _losses(tmp_path / "single"), _losses(tmp_path / strategy)
    assert single.keys() == double.keys() == set(range(1, 7))
    for step in single:
        assert double[step] == pytest.approx(single[step], rel=1e-5), step


# ------------------------------------------------------------------------------ kill and resume
def test_killed_run_resumes_with_the_same_loss_sequence(tmp_path):
    common = ["training.max_steps=12", "training.checkpoint_every=3", "eval.enabled=false"]
    reference = tmp_path / "reference"
    _run([f"training.output_dir={reference}", *common])
    killed = tmp_path / "killed"
    command = [sys.executable, str(SCRIPT), f"config={DEBUG}", f"training.output_dir={killed}", *common]
    process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "step_00000006" / "COMPLETE"
    deadline = time.time() + 240
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_before_kill = max(_losses(killed))
    assert done_before_kill < 12
    _run([f"training.output_dir={killed}", "training.resume=auto", *common])
    assert _losses(killed) == _losses(reference)  # exactly, step for step


def test_an_incomplete_checkpoint_is_never_resumed_from(tmp_path):
    train.main(
        _config(
            f"training.output_dir={tmp_path}",
            "training.max_steps=4",
            "training.checkpoint_every=2",
            "eval.enabled=false",
        )
    )
    torn = tmp_path / "checkpoints" / "step_00000006"  # a directory without the COMPLETE marker
    torn.mkdir()
    (tmp_path / "checkpoints" / ".step_00000008.tmp").mkdir()
    manager = CheckpointManager(tmp_path / "checkpoints")
    assert manager.latest().name == "step_00000004"


# ---------------------------------------------------------------------------------------- bad data
def _write_pairs(root: Path) -> int:
    images = root / "images"
    images.mkdir(parents=True)
    lines, bad = [], 0
    colours = ["red", "green", "blue", "yellow", "purple"]
    for i in range(20):
        name = f"{i:02d}.png"
        Image.new("RGB", (40, 40), (i * 12, 255 - i * 12, 90)).save(images / name)
        lines.append({"image": name, "caption": f"a {colours[i % 5]} square number {i}"})
    (images / "03.png").write_bytes((images / "03.png").read_bytes()[:30])  # truncated
    (images / "07.png").write_text("not an image")
    lines[11]["image"] = "missing.png"
    lines[15]["caption"] = "   "
    bad = 4
    (root / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return bad


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    bad = _write_pairs(tmp_path / "data")
    report = train.main(
        _config(
            f"training.output_dir={tmp_path / 'run'}",
            "training.max_steps=10",
            "data.source=files",
            f"data.files.pairs_root={tmp_path / 'data' / 'images'}",
            f"data.files.pairs_captions={tmp_path / 'data' / 'captions.jsonl'}",
            "data.ratios.pairs=1",
            "data.ratios.images=0",
            "data.ratios.texts=0",
        )
    )
    assert report["skipped_samples"] == bad
    assert len(_losses(tmp_path / "run")) == 10
    reasons = " ".join(report["skipped_examples"])
    assert "unreadable image" in reasons and "empty" in reasons


def test_a_resume_on_a_source_that_grew_is_refused_naming_its_key(tmp_path):
    """Each pass over a source is a permutation seeded by its size: resumed on a captions file with more
    lines, the run drew other pairs than the one it continues (some twice, others never) without a word."""
    _write_pairs(tmp_path / "data")
    captions = tmp_path / "data" / "captions.jsonl"
    common = [
        f"training.output_dir={tmp_path / 'run'}",
        "data.source=files",
        f"data.files.pairs_root={tmp_path / 'data' / 'images'}",
        f"data.files.pairs_captions={captions}",
        "eval.enabled=false",
        "training.checkpoint_every=2",
        "optim.warmup_steps=1",
    ]
    assert_a_grown_captions_file_refuses_resume(train, _config, common, captions, tmp_path / "run")


def test_relative_data_paths_and_output_dir_are_recorded_absolute(tmp_path, monkeypatch):
    """A run started with relative data.files.* / data.vocab paths recorded them as typed: resumed from another
    working directory holding files of the same names and sizes, it trained on those without a word; and
    config=<run>/config.yaml there started a new run. Both recorded absolute: refused naming each key, and the run's
    own config.yaml resumes it, on its files, from anywhere."""
    from torchflava.data.tokenizer import WordPieceTokenizer

    def write(folder: Path) -> None:
        _write_pairs(folder / "data")
        (folder / "texts.txt").write_text("a red square\na blue circle\n")
        WordPieceTokenizer.train(["a red green blue square number"], vocab_size=60).save(folder)

    paths = {"data.files.pairs_root": "data/images", "data.files.pairs_captions": "data/captions.jsonl"}
    paths |= {"data.files.texts": "texts.txt", "data.vocab": "vocab.txt"}
    common = ["data.source=files", "eval.enabled=false", "training.checkpoint_every=2", "optim.warmup_steps=1"]
    config = lambda *overrides: _config(*common, *overrides)  # noqa: E731
    assert_relative_paths_resume_the_run_s_own_files(train, config, write, paths, tmp_path, monkeypatch)


def test_a_jsonl_text_corpus_trains_on_its_texts_and_a_captions_tsv_is_refused(tmp_path):
    """data.files.texts=corpus.jsonl trained on the JSON records as text; a captions .tsv on its image paths."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "a red square", "id": 0}\n{"text": "two blue circles", "id": 1}\n')
    sources = train.build_sources(_config("data.source=files", f"data.files.texts={corpus}").data)
    assert [sources["texts"][i].text for i in range(2)] == ["a red square", "two blue circles"]
    captions = tmp_path / "captions.tsv"
    captions.write_text("images/0.png\ta red square\n")
    with pytest.raises(train.ConfigError) as caught:
        train.build_sources(_config("data.source=files", f"data.files.texts={captions}").data)
    assert str(caught.value) == (
        f"key 'data.files.texts': expected a UTF-8 text file, got {str(captions)!r} (path must be a text file of one "
        f"text per line, or a .jsonl of objects with a 'text' key, got {str(captions)!r} (a .tsv file: its lines "
        "hold records, not texts))"
    )


def test_a_karpathy_file_without_pairs_split_is_refused(tmp_path):
    """null kept every split: pretraining on dataset_coco.json trained on the Karpathy test images that the
    retrieval benchmarks score, without a word."""
    images = [
        {"filepath": "", "filename": f"{i}.png", "split": split, "sentences": [{"raw": f"a square number {i}"}]}
        for i, split in enumerate(["train", "restval", "val", "test"])
    ]
    for image in images:
        Image.new("RGB", (8, 8)).save(tmp_path / image["filename"])
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    files = [
        "data.source=files",
        f"data.files.pairs_root={tmp_path}",
        f"data.files.pairs_captions={tmp_path}/dataset_coco.json",
    ]
    with pytest.raises(train.ConfigError) as caught:
        train.build_sources(_config(*files).data)
    assert str(caught.value) == (
        "key 'data.files.pairs_split': expected the splits of the Karpathy file to train on, e.g. [train, restval] "
        "(null trained on every split, the test images included: name them all to mean it), got None"
    )
    pairs = train.build_sources(_config(*files, "data.files.pairs_split=[train,restval]").data)["pairs"]
    assert [pairs[i].text for i in range(len(pairs))] == ["a square number 0", "a square number 1"]
    everything = train.build_sources(_config(*files, "data.files.pairs_split=[train,restval,val,test]").data)
    assert len(everything["pairs"]) == 4


def test_a_run_on_every_karpathy_split_started_before_the_refusal_still_resumes(tmp_path, monkeypatch, capsys):
    """A run started on a Karpathy file with pairs_split null before such runs were refused could not be
    resumed at all: null was refused, and naming every split was refused by the resume as a changed key."""
    images = [
        {"filepath": "", "filename": f"{i}.png", "split": split, "sentences": [{"raw": f"a red square number {i}"}]}
        for i, split in enumerate(["train", "restval", "val", "test"] * 4)
    ]
    for image in images:
        Image.new("RGB", (8, 8), (16 * len(image["filename"]), 60, 90)).save(tmp_path / image["filename"])
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    common = [
        f"training.output_dir={tmp_path / 'run'}",
        "data.source=files",
        f"data.files.pairs_root={tmp_path}",
        f"data.files.pairs_captions={tmp_path}/dataset_coco.json",
        "eval.enabled=false",
        "training.checkpoint_every=2",
        "optim.warmup_steps=1",
        "training.global_batch_size=8",
    ]
    with monkeypatch.context() as before:  # the run as the recipe started it then (null read every split)
        before.setattr(train.ImageTextFolder, "format", property(lambda folder: "unchecked"))
        train.main(_config(*common, "training.max_steps=2"))
    capsys.readouterr()
    with pytest.raises(train.ConfigError, match=r"^key 'data.files.pairs_split': expected the splits of the Karpathy"):
        train.main(_config(*common, f"training.output_dir={tmp_path / 'fresh'}", "training.max_steps=2"))
    train.main(_config(*common, "training.max_steps=4", "training.resume=auto"))
    assert sorted(_losses(tmp_path / "run")) == [1, 2, 3, 4]
    assert (
        "data.files.pairs_split: null, this run trains on every split of the Karpathy file" in capsys.readouterr().err
    )


def test_an_open_clip_csv_of_absolute_paths_needs_no_pairs_root(tmp_path):
    """data.files.pairs_captions alone (open_clip's filepath/title CSV of absolute paths) trains on the
    pairs the .jsonl of relative paths under pairs_root lists, with the same losses."""
    _write_pairs(tmp_path / "data")
    images = tmp_path / "data" / "images"
    lines = [json.loads(line) for line in (tmp_path / "data" / "captions.jsonl").read_text().splitlines()]
    rows = [f'"{images / line["image"]}","{line["caption"]}"\n' for line in lines]
    (tmp_path / "data" / "train.csv").write_text("filepath,title\n" + "".join(rows))
    run = ["training.max_steps=2", "optim.warmup_steps=1", "data.source=files", "data.ratios.pairs=1"]
    run += ["data.ratios.images=0", "data.ratios.texts=0", "eval.enabled=false", "training.log_every=1"]
    from_csv = train.main(
        _config(
            f"training.output_dir={tmp_path / 'csv'}",
            *run,
            f"data.files.pairs_captions={tmp_path / 'data' / 'train.csv'}",
        )
    )
    train.main(
        _config(
            f"training.output_dir={tmp_path / 'jsonl'}",
            *run,
            f"data.files.pairs_captions={tmp_path / 'data' / 'captions.jsonl'}",
            f"data.files.pairs_root={images}",
        )
    )
    assert _losses(tmp_path / "csv") == _losses(tmp_path / "jsonl") and len(_losses(tmp_path / "csv")) == 2
    assert from_csv["steps"] == 2


# ---------------------------------------------------------------------------------------- NaN stop
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = train.flava_model_for_pretraining

    def poisoned(**kwargs):
        model = original(**kwargs)
        calls = {"n": 0}
        forward = model.forward

        def forward_with_nan(batch):
            calls["n"] += 1
            out = forward(batch)
            if calls["n"] != 5:
                return out
            name = next(iter(out.loss_sums))
            return out._replace(loss_sums={**out.loss_sums, name: out.loss_sums[name] * float("nan")})

        model.forward = forward_with_nan
        return model

    monkeypatch.setattr(train, "flava_model_for_pretraining", poisoned)
    cfg = _config(f"training.output_dir={tmp_path}", "training.max_steps=8", "training.checkpoint_every=2")
    with pytest.raises(NonFiniteLossError, match="step 5") as error:
        train.main(cfg)
    assert "step_00000004" in str(error.value)
    assert [p.name for p in CheckpointManager(tmp_path / "checkpoints").complete()] == [
        "step_00000002",
        "step_00000004",
    ]


# ------------------------------------------------------------------------- precision and memory options
@pytest.mark.parametrize("mode", ["selective", "full"])
def test_activation_checkpointing_changes_no_loss(tmp_path, mode):
    common = ["training.max_steps=3", "eval.enabled=false"]
    train.main(_config(f"training.output_dir={tmp_path / 'plain'}", *common))
    train.main(
        _config(f"training.output_dir={tmp_path / 'ckpt'}", f"training.activation_checkpointing={mode}", *common)
    )
    plain, recomputed = _losses(tmp_path / "plain"), _losses(tmp_path / "ckpt")
    assert plain.keys() == recomputed.keys()
    for step in plain:
        assert recomputed[step] == pytest.approx(plain[step], rel=1e-6), step


def test_bf16_autocast_run_stays_close_to_fp32_and_writes_tensorboard(tmp_path):
    common = ["training.max_steps=3", "eval.enabled=false"]
    train.main(_config(f"training.output_dir={tmp_path / 'fp32'}", *common))
    train.main(
        _config(
            f"training.output_dir={tmp_path / 'bf16'}", "training.precision=bf16", "training.tensorboard=true", *common
        )
    )
    fp32, bf16 = _losses(tmp_path / "fp32"), _losses(tmp_path / "bf16")
    assert fp32[1] != bf16[1]  # it really ran in bf16 ...
    assert bf16[1] == pytest.approx(fp32[1], rel=2e-2)  # ... and stays close on the first step
    assert list((tmp_path / "bf16" / "tensorboard").glob("events.out.tfevents.*"))


def test_fsdp_with_bf16_parameters_runs_and_stays_close(tmp_path):
    common = ["training.max_steps=3", "eval.enabled=false"]
    train.main(_config(f"training.output_dir={tmp_path / 'fp32'}", *common))
    _run(
        [f"training.output_dir={tmp_path / 'fsdp_bf16'}", "training.strategy=fsdp", "training.precision=bf16", *common],
        nproc=2,
    )
    fp32, bf16 = _losses(tmp_path / "fp32"), _losses(tmp_path / "fsdp_bf16")
    assert bf16.keys() == fp32.keys()
    assert bf16[1] != fp32[1] and bf16[1] == pytest.approx(fp32[1], rel=3e-2)


# ------------------------------------------------------------------------------------ shipped configs
@pytest.mark.parametrize(
    "path", sorted((REPO / "examples" / "flava" / "configs" / "pretraining").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_pretraining_config_loads_and_validates(path, tmp_path):
    cfg = load_config(train.TrainConfig, [f"config={path}"])
    if cfg.data.source == "files":  # a config for your data: point it at some
        (tmp_path / "texts.txt").write_text("a text\n")
        cfg.data.files.texts = str(tmp_path / "texts.txt")
    world = 8 if cfg.training.strategy != "none" else 1
    train.validate(cfg, world_size=world)


@pytest.mark.parametrize(
    "path", sorted((REPO / "examples" / "flava" / "configs" / "finetuning").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_finetuning_config_loads_and_validates(path, tmp_path):
    spec = importlib.util.spec_from_file_location("flava_finetune_for_configs", REPO / "examples/flava/finetune.py")
    finetune = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = finetune
    spec.loader.exec_module(finetune)
    for name in ("t", "v"):  # the data files are checked for existence only here (validate opens nothing)
        (tmp_path / name).write_text("")
    (tmp_path / "i").mkdir()
    write_tiny_export(tmp_path / "ckpt")  # validate reads its config files (a FLAVA one, not CLIP)
    overrides = [] if "shapes" in path.name else [f"data.train={tmp_path / 't'}", f"data.val={tmp_path / 'v'}"]
    overrides += [f"model.pretrained={tmp_path / 'ckpt'}"]
    cfg = load_config(finetune.FinetuneConfig, [f"config={path}", *overrides])
    if cfg.data.task == "image_text":  # (the one task that reads data.image_root: set for another, it is refused)
        cfg = load_config(finetune.FinetuneConfig, [f"config={path}", *overrides, f"data.image_root={tmp_path / 'i'}"])
    for name, val in (cfg.data.extra_val or {}).items():  # a set the config names for your file (MNLI's mismatched)
        assert val is None, name
        cfg.data.extra_val[name] = str(tmp_path / "v")
    finetune.validate(cfg, world_size=1)


def test_unset_ratios_are_recorded_as_trained_and_resume_a_run_that_stated_them(tmp_path):
    """A run recorded before ratios could be left unset (0.7 / 0.15 / 0.15 stated) resumes with them unset:
    config.yaml holds the shares the run trains with, not null (which a resume would read as a change)."""
    common = [
        f"training.output_dir={tmp_path}",
        "eval.enabled=false",
        "training.checkpoint_every=2",
        "training.progress_bar=false",
        "optim.warmup_steps=1",
    ]
    stated = ["data.ratios.pairs=0.7", "data.ratios.images=0.15", "data.ratios.texts=0.15"]
    train.main(_config(*common, "training.max_steps=2", *stated))
    cfg = _config(*common, "training.max_steps=4", "training.resume=auto")
    assert cfg.data.ratios == train.RatiosConfig(None, None, None)
    train.main(cfg)
    assert max(_losses(tmp_path)) == 4
    recorded = yaml.safe_load((tmp_path / "config.yaml").read_text())["data"]["ratios"]
    assert recorded == {"pairs": 0.7, "images": 0.15, "texts": 0.15}
    assert cfg.data.ratios == train.RatiosConfig(None, None, None)  # the caller's config left as given


def test_a_run_recorded_with_a_ratio_for_a_kind_it_had_no_source_of_resumes(tmp_path):
    """Before ratios could be unset, a run whose data lacked a kind recorded the default 0.15 for it (the
    mixer drew nothing of it). Unset now, that ratio resolves to 0, and 0.15 is refused: the resume is still
    the same training, so the comparison lets that key differ (and no other)."""
    from omegaconf import OmegaConf

    from torchflava.training.config import check_resume_config

    old = _config("data.shapes.num_images=0")
    old.data.ratios = train.RatiosConfig(0.7, 0.15, 0.15)  # as the recipe recorded it then
    saved = tmp_path / "config.yaml"
    saved.write_text(OmegaConf.to_yaml(OmegaConf.structured(old)))
    new = _config("data.shapes.num_images=0")
    new.data.ratios = train.RatiosConfig(**train.run_ratios(new.data))  # as main resolves it
    assert new.data.ratios.images == 0.0
    assert check_resume_config(saved, new) == []
    changed = _config("data.shapes.num_images=0", "data.ratios.texts=0.3")
    changed.data.ratios = train.RatiosConfig(**train.run_ratios(changed.data))
    with pytest.raises(train.ConfigError, match=r"^key 'data.ratios.texts' \(0.15 -> 0.3\): expected the values"):
        check_resume_config(saved, changed)  # a kind the data has: its share is what it trains


def test_a_pairs_batch_larger_than_the_pairs_is_refused_before_any_work(tmp_path):
    """A contrastive batch over more pairs than the data has repeats them, each copy a negative of its own."""
    cfg = _config(f"training.output_dir={tmp_path}", "data.shapes.num_pairs=12", "training.global_batch_size=16")
    with pytest.raises(train.ConfigError) as caught:
        train.main(cfg)
    assert str(caught.value).startswith(
        "key 'training.global_batch_size': expected at most the 12 training pairs of data.shapes.num_pairs per "
        "contrastive micro-batch (global_batch_size / grad_accumulation = 16)"
    )
    assert not (tmp_path / "config.yaml").exists()


def test_a_run_on_files_says_as_it_starts_training_that_it_is_not_evaluated(tmp_path, capsys, monkeypatch):
    """The evaluation scores the built-in shapes world's held-out split: after a run on files it was skipped
    without a word, eval.* keys and all. Said as training starts: not by a run refused before (its batch)."""
    _write_pairs(tmp_path / "data")
    files = ["data.source=files", f"data.files.pairs_root={tmp_path / 'data' / 'images'}"]
    files += [f"data.files.pairs_captions={tmp_path / 'data' / 'captions.jsonl'}", "training.max_steps=1"]
    files += ["optim.warmup_steps=0"]
    with pytest.raises(train.ConfigError, match="^key 'training.global_batch_size': expected at most the 20"):
        train.main(_config(f"training.output_dir={tmp_path / 'refused'}", *files, "training.global_batch_size=32"))
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(train, "fit", lambda *args, **kwargs: pytest.fail("stopped where training starts"))
    with pytest.raises(pytest.fail.Exception, match="stopped where training starts"):  # (the run itself: not needed)
        train.main(_config(f"training.output_dir={tmp_path / 'run'}", *files))
    assert capsys.readouterr().err.splitlines()[0] == (
        "eval: no evaluation after this run: eval.* scores the held-out split of the built-in shapes world "
        "(data.source=shapes), and data.source=files trains on your files (set eval.enabled=false to drop this line)"
    )


# ------------------------------------------------------------------------------------- model.pretrained
def _debug_export(root: Path, **stated) -> int:
    """An export of debug.yaml's model (random weights, the vocabulary debug.yaml's run learns), as the
    recipe writes ``model/``: weights, backbone_config.json (with ``stated`` arguments), vocab.txt. Returns
    the vocabulary's size."""
    from safetensors.torch import save_file

    from torchflava.models import flava_model

    sized = _config()
    sources = train.build_sources(sized.data)
    tokenizer = train.WordPieceTokenizer.train(train.run_texts(sized.data, sources), vocab_size=sized.data.vocab_size)
    kwargs = {**train.flava_model_kwargs(sized.model, tokenizer.vocab_size), **stated}
    torch.manual_seed(1)
    model = flava_model(**kwargs)
    root.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "flava.safetensors")
    (root / "backbone_config.json").write_text(json.dumps(kwargs))
    tokenizer.save(root)
    return tokenizer.vocab_size


def test_a_run_from_an_export_resumes_without_it_and_records_what_it_built(tmp_path):
    """model.pretrained may name the recipe's export directory (README), which the recipe refused (its
    header check peeked at the directory as a Hugging Face one). A resumed run loads its checkpoint's
    weights: the export moved away (or named null) must not stop it, and the architecture the export
    stated (its dropout, left at the default by the section) is recorded, so the resume rebuilds it and
    continues the uninterrupted losses."""
    export = tmp_path / "export"
    _debug_export(export, dropout=0.1)
    vocab = tmp_path / "vocab.txt"
    (export / "vocab.txt").rename(vocab)  # (kept where it was: data.vocab is data, which a resume may not change)
    common = [
        f"training.output_dir={tmp_path / 'run'}",
        f"data.vocab={vocab}",
        "eval.enabled=false",
        "training.max_steps=2",
        "training.checkpoint_every=1",
        "optim.warmup_steps=1",
    ]
    train.main(_config(*common, f"model.pretrained={export}"))
    uninterrupted = _losses(tmp_path / "run")
    assert sorted(uninterrupted) == [1, 2]
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]
    assert recorded["dropout"] == 0.1 and recorded["pretrained"] == str(export)
    built = json.loads((tmp_path / "run" / "model" / "backbone_config.json").read_text())
    assert built["dropout"] == 0.1
    export.rename(tmp_path / "moved")  # the run's config names a path that is gone
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_00000002")
    with pytest.raises(train.ConfigError) as caught:  # the section alone: the export's dropout is no longer stated
        train.main(_config(*common, f"model.pretrained={export}", "training.resume=auto"))
    assert str(caught.value).startswith("key 'model.dropout' (0.1 -> 0.0): expected the values the checkpoint")
    for pretrained in (str(export), "null"):  # the run's own config: what it built, the export not read
        recorded = load_config(
            train.TrainConfig,
            [f"config={tmp_path / 'run' / 'config.yaml'}", f"model.pretrained={pretrained}", "training.resume=auto"],
        )
        train.main(recorded)
        assert _losses(tmp_path / "run") == pytest.approx(uninterrupted, abs=1e-6)
        shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_00000002")


def test_a_pretrained_checkpoint_that_does_not_fit_is_refused_before_any_work(tmp_path):
    """An export's weights file whose sizes contradict the model section, or whose word embeddings are not the
    run's vocabulary's size, was a ValueError traceback from flava_model once the data and vocabulary were built
    (exit 1, not 2)."""
    size = _debug_export(tmp_path / "export")
    run = [f"training.output_dir={tmp_path / 'run'}", f"model.pretrained={tmp_path / 'export' / 'flava.safetensors'}"]
    with pytest.raises(train.ConfigError) as caught:
        train.main(_config(*run, "model.image_mlp_dim=48"))
    assert str(caught.value).startswith("key 'model.pretrained': expected a FLAVA checkpoint")
    assert "{'image_mlp_dim': (48, 64)}" in str(caught.value)
    with pytest.raises(train.ConfigError) as caught:
        train.main(_config(*run, f"data.vocab_size={size - 10}"))  # a vocabulary learnt smaller
    assert str(caught.value).startswith("key 'data.vocab': expected the vocabulary model.pretrained was trained with")
    assert f"vocab_size={size - 10} (checkpoint: {size})" in str(caught.value)
    missing = [f"training.output_dir={tmp_path / 'run'}", f"model.pretrained={tmp_path / 'nowhere'}"]
    with pytest.raises(train.ConfigError, match="^key 'model.pretrained': expected a FLAVA checkpoint"):
        train.main(_config(*missing, "training.resume=auto"))  # a new run, though resume=auto: it is read
    assert not (tmp_path / "run").exists()
