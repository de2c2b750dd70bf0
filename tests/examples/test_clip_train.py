"""The CLIP recipe on the shared loop: learns, exports what clip_model loads, 2 DDP ranks equal 1 process,
a killed run resumes to the uninterrupted loss sequence, config errors name the key."""

import dataclasses
import json
import math
import os
from pathlib import Path
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.examples.fault_runner import recipe_env, run_script
from tests.helpers import (
    assert_a_grown_captions_file_refuses_resume,
    assert_relative_paths_resume_the_run_s_own_files,
    load_recipe,
    served_directory,
)
from tests.test_zero_shot_command import write_hf_clip
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import CLIP_MEAN, CLIP_STD, EvalImageTransform, ImageTransformSpec
from torchflava.training.config import load_config
from torchflava.training.integrity import write_marker

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "clip" / "train.py"
DEBUG = REPO / "examples" / "clip" / "configs" / "debug.yaml"
# the contrastive recipe's configs (finetune_<task>.yaml are examples/clip/finetune.py's: test_clip_finetune.py)
CONFIGS = sorted(
    p for p in (REPO / "examples" / "clip" / "configs").glob("*.yaml") if not p.stem.startswith("finetune_")
)


train = load_recipe("examples/clip/train.py", "clip_train_recipe")


def _config(*overrides):
    return load_config(train.TrainConfig, [f"config={DEBUG}", *overrides])


def _losses(output_dir):
    return {r["step"]: r["loss"] for r in train.read_metrics(Path(output_dir) / "metrics.jsonl")}


def _run(args, *, nproc=1, popen=False):
    """The recipe in a process of its own: one forked from fault_runner's server (imports done) or, for
    ``popen`` or several ranks, a new one."""
    launcher = (
        [sys.executable]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    )
    command = [*launcher, str(SCRIPT), f"config={DEBUG}", *args]
    if popen:
        return subprocess.Popen(
            command, cwd=REPO, env=recipe_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    if nproc == 1:
        result = run_script("examples/clip/train.py", [f"config={DEBUG}", *args])
    else:
        result = subprocess.run(command, cwd=REPO, env=recipe_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def test_a_run_learns_exports_and_reports(tmp_path):
    report = train.main(_config(f"training.output_dir={tmp_path}", "training.max_steps=30", "optim.warmup_steps=3"))
    losses = _losses(tmp_path)
    assert losses[30] < losses[2] - 0.3  # the contrastive loss falls (log 16 = 2.77 at chance)
    e = report["eval"]
    assert e["test_items"] == 60 and 0 <= e["zero_shot_accuracy"] <= 1 and 0 <= e["zero_shot_shape_right"] <= 1
    # (30 steps of this model learn no colour yet: its zero-shot figures are at chance, the fall of the loss above is
    # what it learns; "colour right > 1/6" passed only as float32's 10/60, 0.16666667163, above 1/6)
    assert e["zero_shot_chance"] == pytest.approx(1 / 30)
    kwargs = json.loads((tmp_path / "model" / "clip_config.json").read_text())
    recorded = json.loads((tmp_path / "model" / "preprocessor_config.json").read_text())
    assert ImageTransformSpec.from_preprocessor_config(recorded) == EvalImageTransform(kwargs["image_size"]).spec
    model = train.clip_model(pretrained=tmp_path / "model" / "clip.safetensors", **kwargs).eval()
    assert model.eos_token_id == kwargs["eos_token_id"] == 3  # [SEP] of the learnt WordPiece vocabulary
    ids = torch.tensor([[2, 7, 9, 3, 0], [2, 8, 3, 0, 0]])
    features = model.encode_text(ids, (ids != 0).long())
    assert features.shape == (2, kwargs["embed_dim"]) and torch.allclose(features.norm(dim=-1), torch.ones(2))
    assert float(model.logit_scale.detach()) <= train.MAX_LOGIT_SCALE + 1e-6
    # the report names the parameter as every CLIP does (it held the multiplier exp(logit_scale) under that name)
    assert report["final_logit_scale"] == float(model.logit_scale.detach()) != 0.0
    assert report["final_temperature_multiplier"] == pytest.approx(math.exp(report["final_logit_scale"]), rel=1e-6)
    from torchflava.pretrained import load_pretrained  # what the zero-shot and linear-probe commands open

    pretrained = load_pretrained(tmp_path)
    assert pretrained.kwargs == kwargs and pretrained.tokenizer.sep_id == 3
    assert torch.equal(pretrained.model.encode_text(ids, (ids != 0).long()), features)
    assert 0 <= float(model.logit_scale.detach())  # clamped to [0, log 100]: a multiplier >= 1
    assert (tmp_path / "loss_curve.png").is_file() and (tmp_path / "report.json").is_file()


def test_the_export_evaluates_at_the_text_length_the_run_trained_at(tmp_path):
    """The export's tokenizer had no model_max_length, so load_pretrained (and the commands) encoded at
    the context length: other retrieval figures than the run's report."""
    from torchflava.pretrained import load_pretrained

    train.main(
        _config(
            f"training.output_dir={tmp_path}", "training.max_steps=2", "optim.warmup_steps=1", "data.max_text_length=12"
        )
    )
    assert load_pretrained(tmp_path / "model").text_length == 12


def test_two_ddp_processes_match_one_process(tmp_path):
    steps = ["training.max_steps=5", "eval.enabled=false"]
    train.main(_config(f"training.output_dir={tmp_path / 'single'}", *steps))
    ddp = _run([f"training.output_dir={tmp_path / 'ddp'}", "training.strategy=ddp", *steps], nproc=2)
    single, double = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert single.keys() == double.keys() and max(single) == 5
    for step in single:
        assert double[step] == pytest.approx(single[step], rel=1e-5, abs=1e-6), step
    # every parameter takes part in every step: DDP runs without its per-step search for unused ones (whose
    # warning each rank printed, "find_unused_parameters=True was specified in DDP constructor, but did not ...")
    assert "find_unused_parameters=True" not in ddp.stderr, ddp.stderr[-2000:]


def test_compiled_training_matches_eager(tmp_path):
    torch._dynamo.reset()
    steps = ["training.max_steps=4", "training.log_every=1", "eval.enabled=false"]
    train.main(_config(f"training.output_dir={tmp_path / 'eager'}", *steps))
    train.main(_config(f"training.output_dir={tmp_path / 'compiled'}", "training.compile=true", *steps))
    eager, compiled = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert eager.keys() == compiled.keys() and max(eager) == 4
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], abs=1e-4), step


def test_killed_run_resumes_with_the_same_loss_sequence(tmp_path):
    common = ["training.max_steps=16", "training.checkpoint_every=4", "training.log_every=1", "eval.enabled=false"]
    _run([f"training.output_dir={tmp_path / 'reference'}", *common])
    killed = tmp_path / "killed"
    process = _run([f"training.output_dir={killed}", *common], popen=True)
    marker = killed / "checkpoints" / "step_00000008" / "COMPLETE"
    deadline = time.time() + 240
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert max(_losses(killed)) < 16
    _run([f"training.output_dir={killed}", "training.resume=auto", *common])
    assert _losses(killed) == _losses(tmp_path / "reference")  # exactly, step for step


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.vision_widht=3", "model.vision_widht"),
        ("data.max_text_length=100", "data.max_text_length"),
        ("data.source=web", "data.source"),
    ],
)
def test_config_errors_name_the_key(override, key, tmp_path):
    with pytest.raises(train.ConfigError, match=key.replace(".", r"\.")):
        train.main(_config(f"training.output_dir={tmp_path}", override))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_clip_config_loads_and_validates(path, hf_clip, tmp_path):
    cfg = load_config(train.TrainConfig, [f"config={path}"])
    if cfg.data.source == "files":  # a config for your data: point it at some
        _write_shard(tmp_path / "pairs.tar", 2)
        cfg.data.files.pairs_shards = str(tmp_path / "pairs.tar")
    if path.name.startswith("finetune"):  # a config for your checkpoint: a Hugging Face CLIP directory
        cfg.model.pretrained = str(hf_clip)
    train.validate(cfg, world_size=8 if cfg.training.strategy != "none" else 1)


def test_help_shows_the_multi_line_commands_as_they_are_typed():
    """``--help`` printed each backslash-continued command of the module docstring as one line with a gap
    of spaces (a plain string reads a backslash and newline as a line continuation)."""
    from torchflava.training.recipe import usage

    text = usage(train.main, train.TrainConfig)
    assert "configs/vit_b16.yaml \\\n        data.files.pairs_shards='/data/pairs/shard-*.tar'\n" in text
    assert text.count(" \\\n") == 5


def test_the_vit_b16_config_is_openais_vit_b16_with_its_optimiser():
    cfg = load_config(train.TrainConfig, [f"config={REPO / 'examples' / 'clip' / 'configs' / 'vit_b16.yaml'}"])
    from torchflava.models import clip_vit_b16

    with torch.device("meta"):
        model, reference = train.clip_model(**train.section_kwargs(cfg), vocab_size=49408), clip_vit_b16()
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    o, t = cfg.optim, cfg.training
    assert (o.lr, o.betas, o.eps, o.weight_decay, o.warmup_steps) == (5e-4, [0.9, 0.98], 1e-6, 0.2, 2000)
    assert (t.global_batch_size, t.strategy, t.precision, t.activation_checkpointing) == (32768, "fsdp", "bf16", "full")


def test_a_second_run_in_the_same_directory_is_refused_and_the_first_finishes_intact(tmp_path):
    common = [f"training.output_dir={tmp_path}", "training.max_steps=20", "training.resume=auto", "eval.enabled=false"]
    first = _run(common, popen=True)
    lock = tmp_path / ".run.lock"
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text().strip()) and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # held where it is, its lock with it, while the second run starts
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        second = subprocess.run(
            [sys.executable, str(SCRIPT), f"config={DEBUG}", *common], cwd=REPO, env=env, capture_output=True, text=True
        )
    finally:
        first.send_signal(signal.SIGCONT)
    first_rc = first.wait(timeout=300)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"error: key 'training.output_dir': {tmp_path} is in use by another run (pid {first.pid} on" in second.stderr
    assert first_rc == 0 and sorted(_losses(tmp_path)) == list(range(2, 21, 2))  # one run's records, complete


def test_resume_refuses_architecture_and_data_changes_and_applies_optimiser_changes(tmp_path, capsys):
    base = [f"training.output_dir={tmp_path}", "training.max_steps=6", "training.log_every=1", "eval.enabled=false"]
    train.main(_config(*base))
    lr_before = {r["step"]: r["lr"] for r in train.read_metrics(tmp_path / "metrics.jsonl")}
    saved = (tmp_path / "config.yaml").read_text()
    for change in (
        "model.vision_width=48",
        "data.max_text_length=20",
        "training.seed=3",
        "optim.lr_multipliers.text_encoder=0.1",
    ):
        with pytest.raises(train.ConfigError, match=rf"key '{change.split('=')[0]}' \(.* -> .*\): expected the values"):
            train.main(_config(*base, "training.resume=auto", "training.max_steps=8", change))
        assert (tmp_path / "config.yaml").read_text() == saved  # nothing rewritten
    capsys.readouterr()
    train.main(_config(*base, "training.resume=auto", "training.max_steps=8", "optim.lr=0.5"))
    err = capsys.readouterr().err
    assert "resume: optim.lr: 0.001 -> 0.5 (applied from here on)" in err
    assert "resume: training.max_steps: 6 -> 8 (applied from here on)" in err
    records = {r["step"]: r for r in train.read_metrics(tmp_path / "metrics.jsonl")}
    assert [records[s]["lr"] for s in range(1, 7)] == [lr_before[s] for s in range(1, 7)]
    assert records[7]["lr"] > 100 * lr_before[6]  # the new peak lr, on the schedule of the longer run
    assert "lr: 0.5" in (tmp_path / "config.yaml").read_text()


def test_a_resume_refused_by_the_checkpoint_leaves_the_run_directory_as_it_was(tmp_path):
    """data.vocab's file grew a token since the run began (the same config): the checkpoint no longer loads
    into the model, which fit alone can find; the recipe had rewritten config.yaml (here with the new lr)
    and the run's vocabulary before it, so both described a run its checkpoints do not belong to."""
    vocab = tmp_path / "vocab.txt"
    WordPieceTokenizer.train(["a red square", "a blue circle"], vocab_size=60).save(tmp_path)
    out = tmp_path / "run"
    base = [f"training.output_dir={out}", "training.max_steps=2", "training.checkpoint_every=2", "optim.warmup_steps=0"]
    base += ["eval.enabled=false"]
    train.main(_config(*base, f"data.vocab={vocab}"))
    saved = {name: (out / name).read_text() for name in ("config.yaml", "vocab.txt", "metrics.jsonl", "inputs.json")}
    vocab.write_text(vocab.read_text() + "zebra\n")
    resumed = _config(*base, f"data.vocab={vocab}", "training.resume=auto", "training.max_steps=4", "optim.lr=0.5")
    with pytest.raises(train.ConfigError, match=r"^key 'data.vocab': expected the tokenizer the run started with"):
        train.main(resumed)  # (the vocabulary's digest, recorded at the run's start)
    assert {name: (out / name).read_text() for name in saved} == saved
    (out / "inputs.json").unlink()  # a run recorded before the digests: the checkpoint itself refuses it
    del saved["inputs.json"]
    with pytest.raises(train.ConfigError, match=r"^key 'training.resume': .*step_00000002 does not load into this"):
        train.main(resumed)
    assert {name: (out / name).read_text() for name in saved} == saved


def test_resuming_another_runs_checkpoint_compares_with_that_runs_config(tmp_path, monkeypatch):
    first = [f"training.output_dir={tmp_path / 'first'}", "training.max_steps=4", "eval.enabled=false"]
    train.main(_config(*first))
    checkpoint = next((tmp_path / "first" / "checkpoints").glob("step_*"))
    built = []
    monkeypatch.setattr(train, "build_pairs", lambda *a, **k: built.append(1))  # no data work before the refusal
    second = [f"training.output_dir={tmp_path / 'second'}", "training.max_steps=6", "eval.enabled=false"]
    with pytest.raises(train.ConfigError, match=r"key 'model.vision_width' \(.* -> 48\): expected the values"):
        train.main(_config(*second, f"training.resume={checkpoint}", "model.vision_width=48"))
    assert built == [] and not (tmp_path / "second" / "config.yaml").exists()


def _write_shard(path, count):
    """A tar shard of ``count`` shapes pairs (``NNNN.png`` + ``NNNN.txt``)."""
    import io
    import tarfile

    from torchflava.data.shapes import ShapesWorld

    world = ShapesWorld("pairs", count, image_size=32)
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            buffer = io.BytesIO()
            world[i].image.save(buffer, format="PNG")
            for extension, data in (("png", buffer.getvalue()), ("txt", world.caption(i).encode())):
                info = tarfile.TarInfo(f"{i:04d}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_a_truncated_shard_is_reported_with_its_partial_sample(tmp_path, capsys):
    import tarfile

    _write_shard(tmp_path / "full.tar", 20)
    with tarfile.open(tmp_path / "full.tar") as tar:
        text = tar.getmember("0013.txt")
    end = text.offset_data + 3  # 13 whole pairs, then 3 bytes of the 14th pair's caption
    (tmp_path / "cut.tar").write_bytes((tmp_path / "full.tar").read_bytes()[:end])
    overrides = ["data.source=files", f"data.files.pairs_shards={tmp_path / 'cut.tar'}", "eval.enabled=false"]
    with pytest.warns(UserWarning, match="cut.tar is truncated"):
        # (8 a batch: at most the 14 pairs the shard holds; 64 draws as before)
        report = train.main(
            _config(
                f"training.output_dir={tmp_path / 'run'}",
                "training.max_steps=8",
                "training.global_batch_size=8",
                *overrides,
            )
        )
    lost = (
        f"pairs: cut.tar is truncated: the file ends at byte {end}, inside the data of member '0013.txt'; any "
        "samples after that are lost, and how many cannot be known from the file"
    )
    assert report["lost_data"] == [lost]
    assert report["skipped_samples"] == 1  # 64 draws from 14 items meet the partial pair
    assert report["skipped_examples"] == [
        f"pairs[13]: cut.tar:0013: text member truncated (3 of {text.size} bytes) (the shard breaks off after it, "
        f"at byte {end})"
    ]
    printed = capsys.readouterr().out
    assert f"data lost outside any sample (not in the count above): 1 source file(s)\n  {lost}" in printed
    assert json.loads((tmp_path / "run" / "report.json").read_text())["lost_data"] == [lost]


# ------------------------------------------------------------------------------ a public checkpoint
# The debug config's model sizes left out: a checkpoint brings its own.
FROM_CHECKPOINT = [f"model.{f.name}=null" for f in dataclasses.fields(train.ModelConfig) if f.name != "pretrained"]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # the checkpoint's preprocessing: not CLIP's
CAPTION = ["A red circle above a blue Square, 2 of them!"]


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    """A Hugging Face CLIPModel directory (tiny random weights, CLIP's real vocabulary in vocab.json +
    merges.txt) whose preprocessor_config.json states its own mean and std."""
    directory = tmp_path_factory.mktemp("hf_clip")
    write_hf_clip(directory)
    config = json.loads((directory / "preprocessor_config.json").read_text())
    config.update(image_mean=list(MEAN), image_std=list(STD))
    (directory / "preprocessor_config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecations
def test_fine_tuning_a_hugging_face_clip_checkpoint_uses_its_tokenizer_weights_and_mean_std(hf_clip, tmp_path):
    from transformers import CLIPModel as HFCLIPModel

    from torchflava.data.clip_tokenizer import CLIPTokenizer
    from torchflava.data.image_text import ImageTextCollator
    from torchflava.data.transforms import RandomCropTransform
    from torchflava.pretrained import load_pretrained

    run = tmp_path / "run"
    overrides = [f"training.output_dir={run}", f"model.pretrained={hf_clip}", *FROM_CHECKPOINT]
    overrides += ["training.max_steps=2", "optim.warmup_steps=1", "training.log_every=1", "training.checkpoint_every=2"]
    report = train.main(_config(*overrides))
    ids = CLIPTokenizer.from_directory(hf_clip)(CAPTION, max_length=77)[0]
    assert ids[0, 0] == 49406 and ids[0, -1] == 49407 and ids.shape[1] > 10  # CLIP's BPE, not a learnt WordPiece
    for directory in (run, run / "model"):  # the run's tokenizer, saved beside its config and in the export
        assert torch.equal(CLIPTokenizer.from_directory(directory)(CAPTION, max_length=77)[0], ids)

    # Step 1's loss is transformers' CLIPModel's on the run's first batch, the checkpoint's tokenizer
    # and mean and std: the weights were loaded; with CLIP's mean and std the loss is another.
    cfg = _config(*overrides)
    hf = HFCLIPModel.from_pretrained(hf_clip).eval()

    def first_loss(mean, std):
        crop = RandomCropTransform(32, scale=(cfg.data.crop_scale_min, 1.0), mean=mean, std=std)
        collator = ImageTextCollator(CLIPTokenizer.from_directory(hf_clip), crop, max_text_length=24)
        batch = train.build_batches(cfg, train.build_pairs(cfg.data), collator, 0, 1)[0].batch
        with torch.no_grad():
            out = hf(
                input_ids=batch["text"],
                attention_mask=batch["text_attention_mask"],
                pixel_values=batch["image"],
                return_loss=True,
            )
        return float(out.loss)

    losses = _losses(run)
    assert losses[1] == pytest.approx(first_loss(MEAN, STD), abs=1e-4)
    assert abs(losses[1] - first_loss(CLIP_MEAN, CLIP_STD)) > 1e-3

    # The export loads as the commands load it: the checkpoint's architecture, tokenizer and preprocessing.
    exported, original = load_pretrained(run), load_pretrained(hf_clip)
    assert torch.equal(exported.tokenizer(CAPTION, max_length=77)[0], ids) and exported.text_length == 24
    assert exported.image_transform.spec == original.image_transform.spec and exported.image_transform.spec.mean == MEAN
    assert {k: exported.kwargs[k] for k in original.kwargs} == original.kwargs
    assert report["eval"]["test_items"] == 60

    # Resumed: the same tokenizer, the loss sequence continued.
    train.main(_config(*overrides, "training.max_steps=3", "training.resume=auto"))
    assert {s: v for s, v in _losses(run).items() if s <= 2} == losses and max(_losses(run)) == 3
    assert torch.equal(load_pretrained(run).tokenizer(CAPTION, max_length=77)[0], ids)


def test_weights_with_no_tokenizer_need_data_vocab_unless_the_sizes_match(hf_clip, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(hf_clip / "model.safetensors", lone / "weights.safetensors")  # no config, no tokenizer
    sizes = ["model.vision_layers=2", "model.vision_heads=4", "model.text_layers=2", "model.text_heads=4"]
    base = [f"model.pretrained={lone / 'weights.safetensors'}", *sizes, "model.context_length=77"]
    out = tmp_path / "run"
    with pytest.raises(train.ConfigError) as caught:
        train.main(_config(f"training.output_dir={out}", *base))
    assert str(caught.value) == (
        "key 'data.vocab': expected a tokenizer for model.pretrained's 49408 token embeddings (a BERT vocab.txt or "
        "a directory holding one, or a CLIP tokenizer directory (tokenizer.json, or vocab.json + merges.txt); "
        f"{lone / 'weights.safetensors'} has none beside it, and a vocabulary learnt from the captions cannot match "
        "pretrained embeddings), or data.vocab_size 49408, got 'null (data.vocab_size 120)'"
    )
    assert not out.exists()  # refused before any work: nothing written, no lock file left
    train.validate(_config(*base, "data.vocab_size=49408"), 1)  # the sizes match
    train.validate(_config(*base, f"data.vocab={hf_clip}"), 1)  # a CLIP tokenizer directory
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(49405))]
    (tmp_path / "vocab.txt").write_text("".join(f"{w}\n" for w in words))  # 49410 tokens: 2 without an embedding
    with pytest.raises(train.ConfigError) as caught:
        train.validate(_config(*base, f"data.vocab={tmp_path / 'vocab.txt'}"), 1)
    assert str(caught.value) == (
        "key 'data.vocab': expected a tokenizer of at most the 49408 tokens model.pretrained embeds, got "
        f"'{tmp_path / 'vocab.txt'} (49410 tokens)'"
    )
    for name in ("vocab.json", "merges.txt"):  # or the tokenizer beside the weights
        shutil.copy(hf_clip / name, lone / name)
    train.validate(_config(*base), 1)
    # A Hugging Face directory without its tokenizer files: its config states the end token 49407, which a
    # learnt vocabulary's [SEP] (3) is not, whatever its size.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(hf_clip / name, bare / name)
    with pytest.raises(train.ConfigError) as caught:
        train.validate(_config(f"model.pretrained={bare}", *FROM_CHECKPOINT, "data.vocab_size=49408"), 1)
    assert str(caught.value).startswith("key 'data.vocab': expected a tokenizer for model.pretrained's 49408 token")
    assert str(caught.value).endswith("cannot match pretrained embeddings), got 'null (data.vocab_size 49408)'")
    train.validate(_config(f"model.pretrained={bare}", *FROM_CHECKPOINT, f"data.vocab={hf_clip}"), 1)


def test_the_sample_a_vocabulary_is_learnt_from_is_refused_where_the_tokenizer_is_read(hf_clip, tmp_path):
    """data.vocab_training_texts was accepted and ignored where the tokenizer is read, model.pretrained's
    included: nothing is learnt. data.vocab_size, set by debug.yaml, is left to the tokenizer as before."""
    base = [f"model.pretrained={hf_clip}", *FROM_CHECKPOINT]
    train.validate(_config(*base, "data.vocab_size=120"), 1)  # (debug.yaml's value: the tokenizer's decides)
    with pytest.raises(train.ConfigError) as caught:
        train.validate(_config(*base, "data.vocab_training_texts=500"), 1)
    assert str(caught.value) == (
        "key 'data.vocab_training_texts': expected its default, 20000, since the tokenizer is read from "
        "model.pretrained: no vocabulary is learnt, got 500"
    )
    train.validate(_config("data.vocab_training_texts=500"), 1)  # learnt from the shapes captions: read


def test_a_tokenizer_that_does_not_fit_the_checkpoint_is_refused_naming_its_key(hf_clip, tmp_path):
    (tmp_path / "vocab.txt").write_text("".join(f"{t}\n" for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]))
    base = [f"model.pretrained={hf_clip}", *FROM_CHECKPOINT]
    with pytest.raises(train.ConfigError) as caught:  # BERT's [SEP] (3) is not the checkpoint's end token
        train.validate(_config(*base, f"data.vocab={tmp_path / 'vocab.txt'}"), 1)
    assert str(caught.value) == (
        "key 'data.vocab': expected a tokenizer whose end token is model.pretrained's eos_token_id 49407, got "
        f"'{tmp_path / 'vocab.txt'} (end token 3)'"
    )
    with pytest.raises(train.ConfigError, match=r"^key 'data\.vocab': expected a BERT vocab\.txt or a directory"):
        train.validate(_config(*base, f"data.vocab={tmp_path}/nowhere"), 1)


def test_a_url_checkpoint_needs_data_vocab_and_a_well_formed_url_before_any_work(hf_clip, tmp_path):
    """An http(s) model.pretrained (downloaded when the model is built) was not checked: with no data.vocab the
    run learnt a WordPiece vocabulary from the captions, which cannot match the checkpoint's embeddings, and
    failed when the weights were fetched; a malformed URL failed there too, as a traceback."""
    url = "http://127.0.0.1:9/clip.safetensors"  # the discard port: nothing answers there (and nothing is asked)
    out = tmp_path / "run"
    with pytest.raises(train.ConfigError) as caught:
        train.main(_config(f"training.output_dir={out}", f"model.pretrained={url}", *FROM_CHECKPOINT))
    needs_vocab = (
        "key 'data.vocab': expected a tokenizer for the embeddings of the checkpoint model.pretrained downloads (a "
        "BERT vocab.txt or a directory holding one, or a CLIP tokenizer directory (tokenizer.json, or vocab.json + "
        "merges.txt); a URL brings none, and a vocabulary learnt from the captions cannot match pretrained "
        "embeddings), got 'null'"
    )
    assert str(caught.value) == needs_vocab
    assert not out.exists() or [p.name for p in out.iterdir()] == [".run.lock"]  # refused before any work
    train.validate(_config(f"model.pretrained={url}", *FROM_CHECKPOINT, f"data.vocab={hf_clip}"), 1)
    with pytest.raises(train.ConfigError) as caught:
        train.validate(_config("model.pretrained=ftp://host/clip.safetensors", f"data.vocab={hf_clip}"), 1)
    assert str(caught.value) == (
        f"key 'model.pretrained': expected {train.PRETRAINED}, got 'ftp://host/clip.safetensors' (checkpoint URLs "
        "must be http(s)://host/.../file (ASCII, percent-encoded) or file:///path, got 'ftp://host/clip.safetensors')"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # the command line: one line, exit 2
    command = [sys.executable, str(SCRIPT), f"config={DEBUG}", f"training.output_dir={out}", f"model.pretrained={url}"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.strip() == f"error: {needs_vocab}", result.stderr[-2000:]


@pytest.fixture
def served(tmp_path):
    """A loopback HTTP server of ``tmp_path / 'served'``; yields the folder and its base URL."""
    root = tmp_path / "served"
    root.mkdir()
    with served_directory(root) as url:
        yield root, url


def test_a_downloaded_checkpoint_is_checked_as_a_local_file_and_trains_as_one(hf_clip, served, tmp_path):
    """A URL's weights were loaded unchecked: a tokenizer with more tokens than its embeddings was a
    ValueError naming the download cache, a failed download a ConnectionError, both tracebacks mid-run."""
    root, base = served
    shutil.copy(hf_clip / "model.safetensors", root / "weights.safetensors")
    sizes = ["model.vision_layers=2", "model.vision_heads=4", "model.text_layers=2", "model.text_heads=4"]
    sizes += ["model.context_length=77", "training.max_steps=1", "optim.warmup_steps=0", "training.log_every=1"]
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(49405))]
    (tmp_path / "vocab.txt").write_text("".join(f"{w}\n" for w in words))  # 49410 tokens: 2 without an embedding
    out, url = tmp_path / "run", f"{base}/weights.safetensors"
    with pytest.raises(train.ConfigError) as caught:
        train.main(
            _config(f"training.output_dir={out}", f"model.pretrained={url}", *sizes, f"data.vocab={tmp_path}/vocab.txt")
        )
    assert str(caught.value) == (
        "key 'data.vocab': expected a tokenizer of at most the 49408 tokens model.pretrained embeds, got "
        f"'{tmp_path / 'vocab.txt'} (49410 tokens)'"
    )
    assert not out.exists()  # refused before anything was written
    missing = f"{base}/nothere.safetensors"
    with pytest.raises(train.ConfigError) as caught:
        train.main(
            _config(f"training.output_dir={out}", f"model.pretrained={missing}", *sizes, f"data.vocab={hf_clip}")
        )
    assert str(caught.value) == (
        f"key 'model.pretrained': expected {train.PRETRAINED}, got '{missing}' (checkpoint: could not download "
        f"{missing}: HTTP Error 404: File not found)"
    )
    assert not out.exists()
    # Downloaded, the weights train as the same file given locally: the same first loss.
    local = tmp_path / "lone"
    local.mkdir()
    shutil.copy(hf_clip / "model.safetensors", local / "weights.safetensors")
    train.main(_config(f"training.output_dir={out}", f"model.pretrained={url}", *sizes, f"data.vocab={hf_clip}"))
    again = tmp_path / "local_run"
    weights = local / "weights.safetensors"
    train.main(_config(f"training.output_dir={again}", f"model.pretrained={weights}", *sizes, f"data.vocab={hf_clip}"))
    assert _losses(out) == _losses(again) and set(_losses(out)) == {1}


def test_a_logit_scale_init_the_loaded_weights_override_is_refused(hf_clip, tmp_path):
    """model.logit_scale_init with a weights file whose config does not state it was silently ignored: the
    weights' logit_scale was loaded over it, and the export's clip_config.json recorded the value given."""
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(hf_clip / "model.safetensors", lone / "weights.safetensors")
    sizes = ["model.vision_layers=2", "model.vision_heads=4", "model.text_layers=2", "model.text_heads=4"]
    base = [
        f"model.pretrained={lone / 'weights.safetensors'}",
        *sizes,
        "model.context_length=77",
        f"data.vocab={hf_clip}",
    ]
    with pytest.raises(train.ConfigError) as caught:
        train.validate(_config(*base, "model.logit_scale_init=4.0"), 1)
    assert str(caught.value) == (
        "key 'model.logit_scale_init': expected null or the 2.6592 model.pretrained's weights hold (they are loaded "
        "over the initial value), got 4.0"
    )
    train.validate(_config(*base, "model.logit_scale_init=2.65926"), 1)  # the value they hold, within 1e-4
    train.validate(_config(*base, "model.logit_scale_init=null"), 1)


def test_a_logit_scale_init_equal_to_the_weights_is_taken_where_the_config_states_the_initial_one(hf_clip, tmp_path):
    """A trained checkpoint's weights hold another log temperature than its config's initial one
    (OpenAI's 4.6052 against config.json's logit_scale_init_value 2.6592): the value the weights hold was
    refused as clashing with the config, and the config's as not what the weights hold, so none passed."""
    from safetensors.torch import load_file, save_file

    trained = tmp_path / "trained"
    shutil.copytree(hf_clip, trained)
    tensors = load_file(trained / "model.safetensors")
    tensors["logit_scale"] = torch.tensor(4.0)
    save_file(tensors, trained / "model.safetensors", metadata={"format": "pt"})
    assert json.loads((trained / "config.json").read_text())["logit_scale_init_value"] == pytest.approx(2.6592)
    base = [f"model.pretrained={trained}", *FROM_CHECKPOINT]
    train.validate(_config(*base, "model.logit_scale_init=4.0"), 1)  # what the weights hold
    train.validate(_config(*base, "model.logit_scale_init=null"), 1)
    with pytest.raises(train.ConfigError) as caught:
        train.validate(_config(*base, "model.logit_scale_init=2.6592"), 1)  # the config's initial value
    assert str(caught.value) == (
        "key 'model.logit_scale_init': expected null or the 4 model.pretrained's weights hold (they are loaded "
        "over the initial value), got 2.6592"
    )


def _recorded(run: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))


def test_a_url_checkpoints_text_length_and_vocabulary_are_recorded_resolved_and_resume(hf_clip, served, tmp_path):
    """A URL's weights were downloaded after the run had recorded its config: data.max_text_length null
    stayed null in config.yaml (the run trained at the weights' 77 positions), and data.vocab_size stated a
    learnt vocabulary's 30522 (debug.yaml's 120 here) for a run on CLIP's 49408-token tokenizer."""
    root, base = served
    shutil.copy(hf_clip / "model.safetensors", root / "weights.safetensors")
    sizes = ["model.vision_layers=2", "model.vision_heads=4", "model.text_layers=2", "model.text_heads=4"]
    sizes += ["model.context_length=null", "data.max_text_length=null", "optim.warmup_steps=0", "training.log_every=1"]
    run = tmp_path / "run"
    overrides = [f"training.output_dir={run}", f"model.pretrained={base}/weights.safetensors", f"data.vocab={hf_clip}"]
    train.main(_config(*overrides, *sizes, "training.max_steps=1", "training.checkpoint_every=1"))
    recorded = _recorded(run)["data"]
    assert (recorded["max_text_length"], recorded["vocab_size"]) == (77, 49408)
    checkpoint = next((run / "checkpoints").iterdir()) / "config.yaml"  # what a resume compares with
    assert "max_text_length: 77" in checkpoint.read_text() and "vocab_size: 49408" in checkpoint.read_text()
    train.main(_config(*overrides, *sizes, "training.max_steps=2", "training.resume=auto"))  # not refused
    assert set(_losses(run)) == {1, 2} and _recorded(run)["data"]["max_text_length"] == 77


def test_a_fine_tuning_run_records_its_tokenizers_vocabulary_size(hf_clip, tmp_path, monkeypatch):
    """config.yaml stated data.vocab_size 30522 (a learnt vocabulary's default, unused) for a run on the
    checkpoint's 49408-token CLIP tokenizer; a run recorded so still resumes (the key is free then). The
    checkpoint's preprocessor_config.json was read twice at start-up (validation's check, then main's)."""
    import torchflava.pretrained

    reads, read = [], train.checkpoint_image_transform
    counted = lambda *a, **kw: reads.append(a) or read(*a, **kw)  # noqa: E731
    for reader in (train, torchflava.pretrained):  # (the recipe's own name, and resolved_image_transform's)
        monkeypatch.setattr(reader, "checkpoint_image_transform", counted)
    run = tmp_path / "run"
    overrides = [f"training.output_dir={run}", f"model.pretrained={hf_clip}", *FROM_CHECKPOINT, "data.vocab_size=30522"]
    overrides += ["optim.warmup_steps=0", "training.checkpoint_every=1", "training.log_every=1"]
    train.main(_config(*overrides, "training.max_steps=1"))
    assert _recorded(run)["data"]["vocab_size"] == 49408 and [a for a in reads if a[0] == hf_clip] == [(hf_clip,)]
    checkpoint = next((run / "checkpoints").iterdir())
    for saved in (run / "config.yaml", checkpoint / "config.yaml"):  # as before the fix
        saved.write_text(saved.read_text().replace("vocab_size: 49408", "vocab_size: 30522"))
    write_marker(checkpoint, 1, 1)  # (its manifest digests its config: else damaged, and passed over)
    train.main(_config(*overrides, "training.max_steps=2", "training.resume=auto"))
    assert set(_losses(run)) == {1, 2} and not (run / "checkpoints" / "abandoned").exists()  # resumed, not afresh
    assert train.TrainConfig().resume_ignored() == set()  # learnt from scratch: its size is what it trains with
    scratch = tmp_path / "scratch"  # from scratch on a CLIP tokenizer: debug.yaml's 120 was recorded
    train.main(
        _config(
            f"training.output_dir={scratch}",
            f"data.vocab={hf_clip}",
            "training.max_steps=1",
            "optim.warmup_steps=0",
            "eval.enabled=false",
        )
    )
    assert _recorded(scratch)["data"]["vocab_size"] == 49408


# ------------------------------------------------------------------------- captions files as researchers have them
PAIRS_RUN = ["data.source=files", "training.max_steps=1", "optim.warmup_steps=0", "training.log_every=1"]
PAIRS_RUN += ["eval.enabled=false"]


def _scenes(folder: Path, count: int) -> list[str]:
    """``count`` shapes scenes saved as ``folder/NN.png``; their captions."""
    from torchflava.data.shapes import ShapesWorld

    world = ShapesWorld("pairs", count, image_size=32)
    folder.mkdir(parents=True)
    for i in range(count):
        world[i].image.save(folder / f"{i:02d}.png")
    return [world.caption(i) for i in range(count)]


def _first_loss(out: Path, *overrides: str) -> float:
    train.main(_config(f"training.output_dir={out}", *PAIRS_RUN, *overrides))
    return _losses(out)[1]


def _jsonl(path: Path, pairs) -> Path:
    path.write_text("".join(json.dumps({"image": image, "caption": caption}) + "\n" for image, caption in pairs))
    return path


def test_an_open_clip_csv_of_absolute_paths_trains_with_no_root(tmp_path):
    """open_clip's train.csv (filepath, title; absolute paths, quoted captions, other columns): no
    pairs_root, and the same pairs as the .jsonl of relative paths under a root, in the same order."""
    images = tmp_path / "images"
    captions = _scenes(images, 20)
    rows = [f'{i},"{images / f"{i:02d}.png"}","{caption}, seen from above"\n' for i, caption in enumerate(captions)]
    (tmp_path / "train.csv").write_text("id,filepath,title\n" + "".join(rows))
    pairs = [(f"{i:02d}.png", f"{caption}, seen from above") for i, caption in enumerate(captions)]
    jsonl = _jsonl(tmp_path / "train.jsonl", pairs)
    from_csv = _first_loss(tmp_path / "csv", f"data.files.pairs_captions={tmp_path / 'train.csv'}")
    from_jsonl = _first_loss(
        tmp_path / "jsonl", f"data.files.pairs_captions={jsonl}", f"data.files.pairs_root={images}"
    )
    assert from_csv == from_jsonl
    # (the first loss tells the pairs apart: the same pairs in another order give another)
    shuffled = _jsonl(tmp_path / "shuffled.jsonl", pairs[1:] + pairs[:1])
    moved = _first_loss(tmp_path / "moved", f"data.files.pairs_captions={shuffled}", f"data.files.pairs_root={images}")
    assert moved != from_jsonl


def test_a_karpathy_split_file_trains_on_the_splits_named(tmp_path):
    """dataset_coco.json with data.files.pairs_split=[train, restval]: the sentences of those images, in
    the file's order, as the same pairs written as .jsonl (val and test images left out), or as BLIP's
    caption list."""
    root = tmp_path / "coco"
    captions = _scenes(root / "train2014", 24)
    splits = ["train", "val", "restval", "test"]
    images, pairs, blip = [], [], []  # (and BLIP's list of the same: one object per image, its captions a list)
    for i, caption in enumerate(captions):
        sentences = [caption, f"there is {caption}"]
        split = splits[i % 4]
        images.append(
            {
                "filepath": "train2014",
                "filename": f"{i:02d}.png",
                "imgid": i,
                "split": split,
                "sentences": [{"raw": s, "tokens": s.split(), "imgid": i} for s in sentences],
            }
        )
        if split in ("train", "restval"):
            pairs += [(f"train2014/{i:02d}.png", s) for s in sentences]
            blip.append({"image": f"train2014/{i:02d}.png", "caption": sentences, "image_id": f"coco_{i}"})
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    karpathy = _first_loss(
        tmp_path / "karpathy",
        f"data.files.pairs_captions={tmp_path / 'dataset_coco.json'}",
        f"data.files.pairs_root={root}",
        "data.files.pairs_split=[train,restval]",
    )
    jsonl = _first_loss(
        tmp_path / "jsonl",
        f"data.files.pairs_captions={_jsonl(tmp_path / 'pairs.jsonl', pairs)}",
        f"data.files.pairs_root={root}",
    )
    (tmp_path / "coco_karpathy_train.json").write_text(json.dumps(blip))
    from_blip = _first_loss(
        tmp_path / "blip",
        f"data.files.pairs_captions={tmp_path / 'coco_karpathy_train.json'}",
        f"data.files.pairs_root={root}",
    )
    assert len(pairs) == 24 and karpathy == jsonl == from_blip
    every = _first_loss(
        tmp_path / "every",
        f"data.files.pairs_captions={tmp_path / 'dataset_coco.json'}",
        f"data.files.pairs_root={root}",
        "data.files.pairs_split=[train,val,restval,test]",
    )
    assert every != karpathy  # (every split named: all 48 sentences)
    # null trained on every split, the test images the retrieval benchmarks score among them, without a word (as
    # FLAVA pretraining refuses it)
    with pytest.raises(train.ConfigError) as caught:
        _first_loss(
            tmp_path / "null",
            f"data.files.pairs_captions={tmp_path / 'dataset_coco.json'}",
            f"data.files.pairs_root={root}",
        )
    assert str(caught.value) == (
        "key 'data.files.pairs_split': expected the splits of the Karpathy file to train on, e.g. [train, restval] "
        "(null trained on every split, the test images included: name them all to mean it), got None"
    )


def test_a_resumed_run_may_not_change_which_pairs_it_reads(tmp_path):
    """The captions keys choose the pairs trained on: refused on resume like the files themselves; a run
    saved before they existed resumes with them unset."""
    from torchflava.training.config import check_resume_config, save_config

    base = ["data.source=files", f"data.files.pairs_captions={tmp_path / 'dataset_coco.json'}"]
    base += ["data.files.pairs_split=[train]"]
    save_config(_config(*base), tmp_path / "config.yaml")
    for change in ("data.files.pairs_split=[train,restval]", "data.files.pairs_image_key=image"):
        key = change.split("=")[0]
        with pytest.raises(train.ConfigError, match=rf"^key '{key}' \(.* -> .*\): expected the values"):
            check_resume_config(tmp_path / "config.yaml", _config(*base, change))
    saved = (tmp_path / "config.yaml").read_text()
    new_keys = ("    pairs_split:\n    - train\n", "    pairs_image_key: null\n", "    pairs_text_key: null\n")
    assert all(line in saved for line in new_keys)
    for line in new_keys:
        saved = saved.replace(line, "")
    (tmp_path / "older.yaml").write_text(saved)  # as a run saved it before these keys
    assert check_resume_config(tmp_path / "older.yaml", _config("data.source=files", base[1])) == []


RESUMED = ["training.checkpoint_every=2", "optim.warmup_steps=1", "training.log_every=1"]


def test_a_resume_on_a_captions_file_that_grew_is_refused_naming_its_key(tmp_path, capsys):
    """Each pass over the pairs is a permutation seeded by their number: resumed on a captions file with
    more lines, the run drew other pairs than the one it continues (some twice, others never) without a
    word. The evaluation, which scores the shapes world only, is said to be off at the start."""
    captions = _scenes(tmp_path / "images", 20)
    jsonl = _jsonl(tmp_path / "pairs.jsonl", [(f"{i:02d}.png", caption) for i, caption in enumerate(captions)])
    common = [f"training.output_dir={tmp_path / 'run'}", "data.source=files", f"data.files.pairs_captions={jsonl}"]
    common += [f"data.files.pairs_root={tmp_path / 'images'}", *RESUMED]
    assert_a_grown_captions_file_refuses_resume(train, _config, common, jsonl, tmp_path / "run")
    assert capsys.readouterr().err.startswith(  # (the first run's)
        "eval: no evaluation after this run: eval.* scores the held-out split of the built-in shapes world "
        "(data.source=shapes), and data.source=files trains on your files (set eval.enabled=false to drop this line)\n"
    )


def test_relative_data_paths_and_output_dir_are_recorded_absolute(tmp_path, monkeypatch):
    """A run started with relative data.files.* / data.vocab paths recorded them as typed: resumed from another
    working directory holding files of the same names and sizes, it trained on those without a word; and
    config=<run>/config.yaml there started a new run. Both recorded absolute: refused naming each key, and the run's
    own config.yaml resumes it, on its files, from anywhere."""

    def write(folder: Path) -> None:
        captions = _scenes(folder / "images", 20)
        _jsonl(folder / "pairs.jsonl", [(f"{i:02d}.png", caption) for i, caption in enumerate(captions)])
        WordPieceTokenizer.train(captions, vocab_size=60).save(folder)

    paths = {"data.files.pairs_root": "images", "data.files.pairs_captions": "pairs.jsonl", "data.vocab": "vocab.txt"}
    common = ["data.source=files", "eval.enabled=false", *RESUMED]
    config = lambda *overrides: _config(*common, *overrides)  # noqa: E731
    assert_relative_paths_resume_the_run_s_own_files(train, config, write, paths, tmp_path, monkeypatch)


def test_a_streamed_resume_on_more_shards_is_refused_naming_the_key(tmp_path, capsys):
    """Each epoch deals the shards in a permutation seeded by their number: resumed on a glob that matches
    one more, the stream read other shards from other offsets (some twice, others never) without a word."""
    (tmp_path / "shards").mkdir()
    for index in range(2):
        _write_shard(tmp_path / "shards" / f"pairs-{index}.tar", 20)
    common = [f"training.output_dir={tmp_path / 'run'}", "data.source=files", "data.streaming.enabled=true"]
    common += [f"data.files.pairs_shards={tmp_path / 'shards'}/pairs-*.tar", "eval.enabled=false", *RESUMED]
    train.main(_config(*common, "training.max_steps=2"))
    assert "eval:" not in capsys.readouterr().err  # (the evaluation turned off: nothing to say)
    _write_shard(tmp_path / "shards" / "pairs-2.tar", 20)
    with pytest.raises(train.ConfigError) as caught:
        train.main(_config(*common, "training.max_steps=4", "training.resume=auto"))
    assert str(caught.value).startswith(
        "key 'data.files.pairs_shards': expected the 2 shards the checkpoint's stream was dealt from, since each "
        "epoch deals a permutation of them seeded by their number"
    )
    assert str(caught.value).endswith("got '3 shards'")
    assert max(_losses(tmp_path / "run")) == 2  # nothing trained


# ------------------------------------------------------------------------------ open_clip checkpoints
OPEN_CLIP_RUN = [*FROM_CHECKPOINT, "data.max_text_length=16", "training.max_steps=2", "optim.warmup_steps=0"]
OPEN_CLIP_RUN += ["training.log_every=1", "eval.enabled=false"]


def _open_clip_hub(directory: Path, *, context_length: int = 16):
    """An open_clip Hub directory (open_clip_config.json and open_clip_model.safetensors of a tiny perturbed
    open_clip CLIP: 99 token ids, ``context_length`` positions, QuickGELU) with a WordPiece vocabulary of at
    most 99 tokens learnt from shapes captions beside it; the reference open_clip model."""
    from tests.models.clip.test_convert_weights import OPEN_CLIP_CFG, _open_clip_hub_directory
    from torchflava.data.shapes import ShapesWorld

    cfg = dict(OPEN_CLIP_CFG, text_cfg=dict(OPEN_CLIP_CFG["text_cfg"], context_length=context_length))
    reference = _open_clip_hub_directory(directory, cfg)
    world = ShapesWorld("pairs", 200, image_size=32)
    tokenizer = WordPieceTokenizer.train([world.caption(i) for i in range(200)], vocab_size=99)
    assert tokenizer.vocab_size <= 99
    tokenizer.save(directory)
    return reference


@pytest.fixture(scope="module")
def open_clip_hub(tmp_path_factory):
    """:func:`_open_clip_hub` of 16 positions, and the same weights as a bare open_clip state dict (.bin)."""
    root = tmp_path_factory.mktemp("open_clip")
    reference = _open_clip_hub(root / "hub")
    torch.save(reference.state_dict(), root / "open_clip_sd.bin")
    return root / "hub", root / "open_clip_sd.bin"


def test_fine_tuning_an_open_clip_hub_directory_loads_its_weights_reading_it_once(open_clip_hub, tmp_path, monkeypatch):
    """The recipe refused open_clip's Hub directory, which clip_model loads: its start-up check peeked at the
    directory for Hugging Face's weights file names only. And main read the checkpoint again after validate."""
    from torchflava.data.image_text import ImageTextCollator
    import torchflava.pretrained
    from torchflava.pretrained import read_clip_checkpoint

    hub, _ = open_clip_hub
    reads, calls = [], {"model_arguments": 0, "told_sizes": 0}
    monkeypatch.setattr(train, "read_clip_checkpoint", lambda *a, **k: reads.append(a) or read_clip_checkpoint(*a, **k))
    for owner, name in ((train.CLIPCheckpoint, "model_arguments"), (torchflava.pretrained, "told_sizes")):
        counted = getattr(owner, name)
        monkeypatch.setattr(
            owner, name, lambda *a, _f=counted, _n=name, **k: calls.update({_n: calls[_n] + 1}) or _f(*a, **k)
        )
    run = tmp_path / "run"
    cfg = _config(f"training.output_dir={run}", f"model.pretrained={hub}", *OPEN_CLIP_RUN)
    train.main(cfg)
    assert [tuple(map(Path, a)) for a in reads] == [(hub,)]  # validate's reading, trained from
    # and main trained from validate's checks: it read the checkpoint's config and told its weights' sizes
    # again (model_arguments 2, told_sizes 4); told once for the sizes the section sets, once for the arguments
    assert calls == {"model_arguments": 1, "told_sizes": 2}
    kwargs = json.loads((run / "model" / "clip_config.json").read_text())
    sizes = ("vision_width", "vision_heads", "text_width", "text_heads", "vocab_size", "context_length", "activation")
    assert [kwargs[k] for k in sizes] == [32, 4, 24, 3, 99, 16, "quick_gelu"]  # its open_clip_config.json's
    # Step 1's loss is the checkpoint's own model's on the run's first batch, with its tokenizer and preprocessing.
    tokenizer = WordPieceTokenizer.from_directory(hub)
    crop, _ = train.image_transforms(32, cfg.data, read_clip_checkpoint(hub))
    batch = train.build_batches(
        cfg, train.build_pairs(cfg.data), ImageTextCollator(tokenizer, crop, max_text_length=16), 0, 1
    )[0]
    model = train.clip_model(pretrained=hub, **kwargs)
    with torch.no_grad():
        step = train.contrastive_step(model, batch)
    first = float(step.loss_sums["contrastive"]) / step.counts["contrastive"]
    assert _losses(run)[1] == pytest.approx(first, abs=1e-5)


def test_a_weights_file_of_other_sizes_is_refused_in_one_line_naming_the_key_before_any_work(open_clip_hub, tmp_path):
    """A bare open_clip state dict whose sizes the model section does not build was a ~1,900-character
    ValueError traceback (exit 1) from clip_model, after the data was opened."""

    hub, bare = open_clip_hub
    out = tmp_path / "run"
    overrides = [f"config={DEBUG}", f"training.output_dir={out}", f"model.pretrained={bare}", f"data.vocab={hub}"]
    # (the activation first: a lone open_clip file does not tell QuickGELU, which its hub's config says, from GELU)
    untold = run_script("examples/clip/train.py", [*overrides, *FROM_CHECKPOINT, "data.max_text_length=16"])
    assert untold.returncode == 2 and untold.stderr == (
        "error: key 'model.activation': expected a value, which the weights of model.pretrained do not tell "
        f"(clip_model: expected the open_clip_config.json beside the weights {bare}, or activation= ('quick_gelu' or "
        "'gelu'), got neither), got null\n"
    )
    overrides += [*FROM_CHECKPOINT, "model.activation=quick_gelu"]
    result = run_script("examples/clip/train.py", [*overrides, "data.max_text_length=16"])
    assert result.returncode == 2, result.stderr[-3000:]
    # the sizes its shapes tell are taken; its width of 32 tells no 64-wide heads: the head count is to set
    assert result.stderr == (
        "error: key 'model.vision_heads': expected a value, which the weights of model.pretrained do not tell "
        f"({bare}: expected vision_heads (its vision_width 32 tells no 64-wide heads), got none), got null\n"
    )
    assert not out.exists() or [p.name for p in out.iterdir()] == [".run.lock"]  # nothing written
    width = run_script(  # a size the section sets that the weights refute: named by its key
        "examples/clip/train.py",
        [*overrides, "data.max_text_length=16", "model.vision_heads=4", "model.text_heads=3"]
        + ["model.vision_width=768"],
    )
    assert width.returncode == 2, width.stderr[-3000:]
    assert width.stderr == (
        "error: key 'model.vision_width': expected 32 (the checkpoint's visual.class_embedding is (32,)), got 768\n"
    )
    assert not out.exists() or [p.name for p in out.iterdir()] == [".run.lock"]


def test_the_size_the_checkpoint_disagrees_with_is_named_where_it_is_set(open_clip_hub, tmp_path):
    hub, bare = open_clip_hub
    sizes = dict(embed_dim=20, vision_width=32, vision_layers=2, vision_heads=4, vision_mlp_dim=48, text_width=24)
    sizes.update(text_layers=2, text_heads=3, text_mlp_dim=48, activation="quick_gelu")
    base = [
        f"model.pretrained={bare}",
        f"data.vocab={hub}",
        *OPEN_CLIP_RUN,
        *(f"model.{k}={v}" for k, v in sizes.items()),
    ]
    train.validate(_config(*base), 1)  # the sizes it holds
    for override, message in [
        (
            "model.text_width=30",
            "key 'model.text_width': expected 24 (the checkpoint's token_embedding.weight is (99, 24)), got 30",
        ),
        (
            "model.text_layers=3",
            "key 'model.text_layers': expected 2 (the checkpoint's layers end at transformer.resblocks.1.mlp.c_fc.weight), got 3",
        ),
        ("model.embed_dim=16", "key 'model.embed_dim': expected 20 (the checkpoint's visual.proj is (32, 20)), got 16"),
    ]:
        with pytest.raises(train.ConfigError) as caught:
            train.validate(_config(*base, override), 1)
        assert str(caught.value) == message
    # a size the section sets against the checkpoint's own config: named by the section's key (it was told to be
    # model.pretrained's "weights of the text_width 30 its config states", which states 24)
    with pytest.raises(train.ConfigError) as caught:
        train.validate(_config(f"model.pretrained={hub}", *OPEN_CLIP_RUN, "model.text_width=30"), 1)
    assert str(caught.value) == (
        "key 'model.text_width': expected 24 (the checkpoint's token_embedding.weight is (99, 24)), got 30"
    )


def test_weights_that_do_not_fit_their_own_config_name_model_pretrained(open_clip_hub, tmp_path):
    hub, bare = open_clip_hub
    other = tmp_path / "other"  # a directory whose config states another size than its weights hold
    shutil.copytree(hub, other)
    config = json.loads((other / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["width"] = 30
    (other / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(train.ConfigError) as caught:
        train.validate(_config(f"model.pretrained={other}", *OPEN_CLIP_RUN), 1)
    assert str(caught.value) == (
        "key 'model.pretrained': expected weights of the text_width 30 its config states (the checkpoint's "
        f"token_embedding.weight is (99, 24); its weights also hold text_mlp_dim 48), got '{other}'"
    )
    # what the sizes do not tell (a tensor missing): as clip_model would refuse it, in one line
    weights = torch.load(bare)
    del weights["ln_final.weight"]
    torch.save(weights, other / "open_clip_pytorch_model.bin")
    (other / "open_clip_model.safetensors").unlink()
    (other / "open_clip_config.json").write_text((hub / "open_clip_config.json").read_text())
    with pytest.raises(train.ConfigError) as caught:
        train.validate(_config(f"model.pretrained={other}", *OPEN_CLIP_RUN), 1)
    message = str(caught.value)
    assert message.startswith("key 'model.pretrained': expected a checkpoint whose weights fit the model section, got ")
    assert "(state_dict (open_clip layout) does not match the model: missing 1 key(s) ['ln_final.weight']" in message
    assert "\n" not in message


def test_a_null_max_text_length_trains_at_the_context_of_a_shorter_checkpoint(tmp_path, monkeypatch):
    """data.max_text_length was an int, 77 by default and in finetune.yaml: a checkpoint of 64 positions was
    refused (exit 2) unless the user looked its context up and set it. Null (now the default) is the model's
    context: every consumer, and the config a resume compares with, hold the resolved 64."""
    from torchflava.pretrained import load_pretrained

    hub = tmp_path / "hub"
    _open_clip_hub(hub, context_length=64)
    images = tmp_path / "images"
    captions = _scenes(images, 20)  # captions of well over 64 tokens: truncated to the context
    jsonl = _jsonl(tmp_path / "pairs.jsonl", [(f"{i:02d}.png", " ".join([c] * 20)) for i, c in enumerate(captions)])
    widths, step = [], train.contrastive_step
    monkeypatch.setattr(
        train, "contrastive_step", lambda m, item: widths.append(item.batch["text"].shape[1]) or step(m, item)
    )
    run = tmp_path / "run"
    data = [f"data.files.pairs_captions={jsonl}", f"data.files.pairs_root={images}"]
    base = [f"training.output_dir={run}", f"model.pretrained={hub}", *FROM_CHECKPOINT, *PAIRS_RUN, *data]
    cfg = _config(*base, "data.max_text_length=null")
    report = train.main(cfg)
    assert cfg.data.max_text_length is None  # (resolved in the run's own copy)
    assert widths == [64] and report["steps"] == 1
    assert load_pretrained(run / "model").text_length == 64  # the export's tokenizer, as the report evaluates
    assert "  max_text_length: 64\n" in (run / "config.yaml").read_text()

    class Resumed(Exception):
        pass

    def resumed(*args, **kwargs):
        raise Resumed

    monkeypatch.setattr(train, "build_pairs", resumed)  # (past the resume's config comparison: no need to train)
    with pytest.raises(Resumed):  # resumed with null: it resolves to the 64 recorded, which the comparison accepts
        train.main(_config(*base, "data.max_text_length=null", "training.max_steps=2", "training.resume=auto"))
    with pytest.raises(train.ConfigError) as caught:  # a length set is checked as before
        train.validate(_config(*base, "data.max_text_length=77"), 1)
    assert str(caught.value) == "key 'data.max_text_length': expected in [2, 64] (model.pretrained's), got 77"


def test_a_length_set_is_bounded_by_the_checkpoints_context_not_77(tmp_path):
    """With model.pretrained and no model.context_length, a length set was first checked against 77, the
    default context: a checkpoint of 96 positions could not train at 90."""
    hub = tmp_path / "hub"
    _open_clip_hub(hub, context_length=96)
    train.validate(_config(f"model.pretrained={hub}", *FROM_CHECKPOINT, "data.max_text_length=90"), 1)
    with pytest.raises(train.ConfigError) as caught:
        train.validate(_config(f"model.pretrained={hub}", *FROM_CHECKPOINT, "data.max_text_length=97"), 1)
    assert str(caught.value) == "key 'data.max_text_length': expected in [2, 96] (model.pretrained's), got 97"


def test_a_contrastive_batch_larger_than_the_data_is_refused_before_any_work(tmp_path):
    """finetune.yaml's batch of 256 on 18 pairs repeated each pair ~14 times a batch: its copies are negatives
    of it, the loss sat at ln 256 and nothing said why."""
    _write_shard(tmp_path / "pairs.tar", 10)
    overrides = ["data.source=files", f"data.files.pairs_shards={tmp_path / 'pairs.tar'}", "eval.enabled=false"]
    with pytest.raises(train.ConfigError) as caught:
        train.main(_config(f"training.output_dir={tmp_path / 'run'}", "training.global_batch_size=16", *overrides))
    assert str(caught.value) == (
        "key 'training.global_batch_size': expected at most the 10 training pairs of data.files.pairs_shards per "
        "contrastive micro-batch (global_batch_size / grad_accumulation = 16): a larger batch repeats pairs, each "
        "copy a false negative of its own, got 16"
    )
    assert not (tmp_path / "run" / "config.yaml").exists() and not (tmp_path / "run" / "checkpoints").exists()
    accumulated = (*overrides, "training.global_batch_size=16", "training.grad_accumulation=2", "training.max_steps=3")
    report = train.main(_config(f"training.output_dir={tmp_path / 'run2'}", *accumulated))  # 8 a micro-batch: fits
    assert report["steps"] == 3


def _started_run(hf_clip, tmp_path):
    """A run of 3 steps from a copy of ``hf_clip`` (checkpoints at each step, no evaluation), the copy then
    moved away. Returns (run, the run's overrides, the uninterrupted losses)."""
    started, run = tmp_path / "started", tmp_path / "run"
    shutil.copytree(hf_clip, started)
    overrides = [f"training.output_dir={run}", f"model.pretrained={started}", *FROM_CHECKPOINT, "eval.enabled=false"]
    overrides += ["training.max_steps=3", "optim.warmup_steps=1", "training.log_every=1", "training.checkpoint_every=1"]
    train.main(_config(*overrides))
    started.rename(tmp_path / "moved")  # the run's config names a checkpoint that is gone
    return run, overrides, _losses(run)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_run_from_a_checkpoint_resumes_without_it_to_the_same_losses(hf_clip, tmp_path):
    """A resumed run read model.pretrained again (its tokenizer, sizes and preprocessing): once the checkpoint it
    started from had moved, the resume was refused, and a new path there was refused as a changed config. The
    run now records at its start what it read of it (the sizes in config.yaml, its arguments, its
    preprocessing, its tokenizer) and a resume trains from those records alone, to the uninterrupted losses."""
    run, overrides, uninterrupted = _started_run(hf_clip, tmp_path)
    started = tmp_path / "started"
    assert sorted(uninterrupted) == [1, 2, 3]
    recorded = load_config(train.TrainConfig, [f"config={run / 'config.yaml'}"])
    assert recorded.model.pretrained == str(started)
    assert (recorded.model.vision_width, recorded.model.text_width, recorded.model.context_length) == (32, 32, 77)
    assert json.loads((run / "model_arguments.json").read_text()) == json.loads(
        (run / "model" / "clip_config.json").read_text()
    )
    assert (
        ImageTransformSpec.from_preprocessor_config(json.loads((run / "preprocessor_config.json").read_text())).mean
        == MEAN
    )
    resumes = [[f"config={run / 'config.yaml'}", f"model.pretrained={p}"] for p in (tmp_path / "elsewhere", "null")]
    for resume in [[f"config={DEBUG}", *overrides], *resumes]:  # the same command line (null sizes), the run's config
        shutil.rmtree(run / "checkpoints" / "step_00000003")
        train.main(load_config(train.TrainConfig, [*resume, "training.resume=auto"]))
        assert _losses(run) == uninterrupted  # exactly: the same tokenizer, model, preprocessing and data


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_resume_from_the_records_reads_the_tokenizer_the_run_saved_whatever_its_inputs_record(hf_clip, tmp_path):
    """A run with its start records but no readable inputs.json was resumed with a vocabulary learnt anew from the
    captions (written into the run), which failed inside its first step; the run's saved tokenizer is read, and a
    run whose tokenizer is gone is refused in one line naming training.resume."""
    run, overrides, uninterrupted = _started_run(hf_clip, tmp_path)
    (run / "inputs.json").unlink()
    shutil.rmtree(run / "checkpoints" / "step_00000003")
    train.main(load_config(train.TrainConfig, [f"config={run / 'config.yaml'}", "training.resume=auto"]))
    assert _losses(run) == uninterrupted and not (run / "vocab.txt").exists()
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        (run / name).unlink(missing_ok=True)
    with pytest.raises(train.ConfigError, match=r"^key 'training.resume': expected the tokenizer the run saved"):
        train.main(load_config(train.TrainConfig, [f"config={run / 'config.yaml'}", "training.resume=auto"]))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_start_record_without_the_image_size_is_named_in_one_line(hf_clip, tmp_path):
    """model_arguments.json holding a JSON object without image_size gave a bare KeyError('image_size'), on resume
    and when the run without its export was loaded."""
    from torchflava.pretrained import load_pretrained

    run = _started_run(hf_clip, tmp_path)[0]
    (run / "model_arguments.json").write_text("{}")
    shutil.rmtree(run / "checkpoints" / "step_00000003")
    expected = (
        f"{run / 'model_arguments.json'}: expected the model arguments with an int image_size, got image_size=None"
    )
    with pytest.raises(train.ConfigError, match="^key 'training.resume': ") as error:
        train.main(load_config(train.TrainConfig, [f"config={run / 'config.yaml'}", "training.resume=auto"]))
    assert expected in str(error.value) and "\n" not in str(error.value)
    shutil.rmtree(run / "model")
    with pytest.raises(ValueError, match=f"{re.escape(expected)}$"):
        load_pretrained(run)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_run_recorded_before_its_start_records_resumes_from_model_pretrained(hf_clip, tmp_path, monkeypatch):
    """A run from model.pretrained recorded before runs recorded their start (its config.yaml's model sizes null,
    no model_arguments.json nor preprocessor_config.json) was refused on resume: the resume resolved the null sizes
    from model.pretrained and found them changed (None -> 32). It resumes again, to the uninterrupted losses."""
    started, run = tmp_path / "started", tmp_path / "run"
    shutil.copytree(hf_clip, started)
    overrides = [f"training.output_dir={run}", f"model.pretrained={started}", *FROM_CHECKPOINT, "eval.enabled=false"]
    overrides += ["training.max_steps=3", "optim.warmup_steps=1", "training.log_every=1", "training.checkpoint_every=1"]
    with monkeypatch.context() as before:  # the start of a run of that time: nothing resolved, nothing recorded
        before.setattr(train, "resolve_model_section", lambda *args, **kwargs: None)
        before.setattr(train, "record_start", lambda *args, **kwargs: None)
        train.main(_config(*overrides))
    assert load_config(train.TrainConfig, [f"config={run / 'config.yaml'}"]).model.vision_width is None
    assert not (run / "model_arguments.json").exists()
    uninterrupted = _losses(run)
    shutil.rmtree(run / "checkpoints" / "step_00000003")
    train.main(_config(*overrides, "training.resume=auto"))
    assert _losses(run) == uninterrupted


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_run_killed_before_its_export_loads_without_the_checkpoint_it_started_from(hf_clip, tmp_path):
    """Loading a CLIP run without an export (its newest training checkpoint) read the checkpoint it started from
    (config.yaml's model.pretrained) for its arguments and preprocessing: once moved, it failed. It now reads what
    the run recorded at its start: the checkpoint's mean and std, the export's arguments, the trained weights."""
    from torchflava.pretrained import load_pretrained

    run = _started_run(hf_clip, tmp_path)[0]
    exported = load_pretrained(run / "model")
    shutil.rmtree(run / "model")  # killed before its export
    loaded = load_pretrained(run)
    assert loaded.image_transform.spec == exported.image_transform.spec and loaded.image_transform.spec.mean == MEAN
    assert loaded.kwargs == exported.kwargs and loaded.text_length == exported.text_length == 24
    state, expected = loaded.model.state_dict(), exported.model.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_training_checkpoint_of_a_run_recorded_before_its_start_records_reads_its_start_once(
    hf_clip, tmp_path, monkeypatch
):
    """Fine-tuning from (or laying out) a training checkpoint of a CLIP run recorded before runs recorded their
    start read the checkpoint that run started from twice: once for its arguments (with its preprocessing, then
    dropped), once more for the run directory's preprocessing (checkpoint_image_transform of the run). One
    resolution now serves both: the start is read once per load, and its preprocessing (mean and std) is kept."""
    import torchflava.pretrained as pretrained

    started, run = tmp_path / "started", tmp_path / "run"
    shutil.copytree(hf_clip, started)
    overrides = [f"training.output_dir={run}", f"model.pretrained={started}", *FROM_CHECKPOINT, "eval.enabled=false"]
    overrides += ["training.max_steps=1", "optim.warmup_steps=0", "training.checkpoint_every=1"]
    with monkeypatch.context() as before:  # the start of a run of that time: nothing resolved, nothing recorded
        before.setattr(train, "resolve_model_section", lambda *args, **kwargs: None)
        before.setattr(train, "record_start", lambda *args, **kwargs: None)
        train.main(_config(*overrides))
    assert not (run / "model_arguments.json").exists() and not (run / "preprocessor_config.json").exists()
    step = run / "checkpoints" / "step_00000001"
    reads, read = [], pretrained.read_clip_checkpoint
    monkeypatch.setattr(pretrained, "read_clip_checkpoint", lambda *a, **k: reads.append(Path(a[0])) or read(*a, **k))
    checkpoint = read(step)  # what the recipe's model.pretrained=<that step> reads, then its transforms
    kwargs = checkpoint.model_arguments(pretrained.directory_tokenizer(run, "clip"))
    crop, evaluation = train.image_transforms(kwargs["image_size"], _config().data, checkpoint)
    assert reads == [started] and evaluation.spec.mean == MEAN and evaluation.spec.std == STD
    assert evaluation.spec == pretrained.checkpoint_image_transform(started, image_size=kwargs["image_size"]).spec
    reads.clear()
    layout = pretrained.checkpoint_layout(step)  # a layout's transform: the same, the start read once
    assert pretrained.resolved_image_transform(layout, image_size=kwargs["image_size"]).spec == evaluation.spec
    assert reads == [started]
    with pytest.raises(ValueError, match=r"^image_size: expected the side of the images .*step_00000001 was trained"):
        pretrained.resolved_image_transform(layout, image_size=kwargs["image_size"] + 8)
