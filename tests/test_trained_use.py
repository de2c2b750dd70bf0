"""Using what a run trained: the builders' ``pretrained=`` pointed at a run, its export and its training
checkpoints (``<run>/checkpoints/step_<N>``), as the commands take them."""

from dataclasses import replace
import json
import shutil

import pytest
import torch

from tests.helpers import REPO, load_recipe
from torchflava.models import clip_model, flava_model
from torchflava.models.flava import flava_model_for_classification
from torchflava.pretrained import checkpoint_image_transform, checkpoint_layout, load_pretrained, read_clip_checkpoint
from torchflava.training.config import load_config
from torchflava.training.integrity import CheckpointIntegrityError

RECIPES = {"flava": "examples/flava/train.py", "clip": "examples/clip/train.py"}
CONFIGS = {"flava": "examples/flava/configs/pretraining/debug.yaml", "clip": "examples/clip/configs/debug.yaml"}
BUILDERS = {"flava": flava_model, "clip": clip_model}


@pytest.fixture(scope="module", params=["flava", "clip"])
def run(request, tmp_path_factory):
    """(family, run directory): a tiny run trained 2 steps, a checkpoint after each, and its export."""
    out = tmp_path_factory.mktemp(f"trained_{request.param}")
    train = load_recipe(RECIPES[request.param], f"trained_use_{request.param}_train")
    overrides = [f"training.output_dir={out}", "training.max_steps=2", "training.checkpoint_every=1"]
    overrides += ["training.keep_checkpoints=2", "optim.warmup_steps=0", "eval.enabled=false"]
    train.main(load_config(train.TrainConfig, [f"config={REPO / CONFIGS[request.param]}", *overrides]))
    return request.param, out


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_the_builders_take_a_training_checkpoint_as_the_commands_do(run):
    """``flava_model(pretrained=<run>/checkpoints/step_<N>)`` was refused (no model.safetensors; for CLIP no
    config.json; unpadded N: not found) where ``load_pretrained`` and the commands took it."""
    family, out = run
    builder = BUILDERS[family]
    exported = builder(pretrained=out / "model")
    for name in ("step_00000002", "step_2"):
        assert _same_weights(builder(pretrained=out / "checkpoints" / name), exported), name
    first = builder(pretrained=str(out / "checkpoints" / "step_1"))
    assert _same_weights(first, load_pretrained(out / "checkpoints" / "step_00000001").model)
    assert not _same_weights(first, exported)  # (the weights of that step, not the run's last)
    assert _same_weights(builder(pretrained=f"file://{out}/checkpoints/step_00000002"), exported)


def test_a_run_killed_before_its_export_builds_from_its_latest_intact_checkpoint(run, tmp_path, capsys):
    family, out = run
    copy = tmp_path / "killed"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("model"))
    torn = copy / "checkpoints" / "step_00000003"  # newer, half-written
    shutil.copytree(copy / "checkpoints" / "step_00000002", torn)
    (torn / "__0_0.distcp").write_bytes(b"torn")
    model = BUILDERS[family](pretrained=copy)
    assert _same_weights(model, BUILDERS[family](pretrained=out))
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "checkpoints/step_00000002" in line and "step_00000003 is damaged" in line


def test_the_arguments_given_must_match_the_run_but_a_dropout_overrides(run):
    family, out = run
    checkpoint = out / "checkpoints" / "step_2"
    if family == "flava":
        with pytest.raises(ValueError, match=r"^flava_model: expected arguments that match .*config.yaml, got "):
            flava_model(pretrained=checkpoint, image_num_layers=3)
        model = flava_model(pretrained=checkpoint, dropout=0.25)
        assert model.text_encoder.embeddings.dropout.p == 0.25
        assert _same_weights(model, flava_model(pretrained=out))
    else:
        with pytest.raises(ValueError, match=r"^clip_model: expected arguments that match .*config.yaml, got .*"):
            clip_model(pretrained=checkpoint, vision_layers=3)
        assert _same_weights(
            clip_model(pretrained=checkpoint, vision_layers=1, embed_dim=16), clip_model(pretrained=out)
        )


def test_a_checkpoint_of_the_other_family_or_damaged_is_refused_in_one_line(run, tmp_path):
    family, out = run
    other = BUILDERS["clip" if family == "flava" else "flava"]
    checkpoint = out / "checkpoints" / "step_00000002"
    with pytest.raises(ValueError, match=rf"^{other.__name__}: expected pretrained to be a checkpoint of a "):
        other(pretrained=checkpoint)
    torn = tmp_path / "run" / "checkpoints" / "step_00000002"
    shutil.copytree(checkpoint, torn)
    shutil.copy(out / "config.yaml", tmp_path / "run" / "config.yaml")
    (torn / "__0_0.distcp").write_bytes((torn / "__0_0.distcp").read_bytes()[:-10])
    with pytest.raises(CheckpointIntegrityError, match=r"^checkpoint: cannot read .*__0_0.distcp has \d+ bytes"):
        BUILDERS[family](pretrained=torn)
    with pytest.raises(FileNotFoundError, match=r"step_7 does not exist \(complete checkpoints in .*: 1, 2\)$"):
        BUILDERS[family](pretrained=out / "checkpoints" / "step_7")


def test_fine_tuning_builds_its_backbone_from_a_training_checkpoint(run):
    family, out = run
    if family != "flava":
        pytest.skip("a FLAVA classifier")
    classifier = flava_model_for_classification(3, modality="image", pretrained=out / "checkpoints" / "step_2")
    backbone = flava_model(pretrained=out)
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in classifier.model.state_dict().items())


def test_a_training_checkpoint_or_a_run_killed_before_its_export_has_a_layout(run, tmp_path, capsys):
    """``checkpoint_layout`` (what the fine-tuning recipe checks ``model.pretrained`` with before any work) refused
    both as 'neither a torchflava run/export directory ... nor a Hugging Face ... directory' while
    ``load_pretrained`` read them."""
    family, out = run
    exported = load_pretrained(out / "model")
    layout = checkpoint_layout(out / "checkpoints" / "step_2")
    assert layout.weights == out / "checkpoints" / "step_00000002" and layout.directory == out
    assert layout.family == family and layout.kwargs == exported.kwargs
    assert layout.config == out / "checkpoints" / "step_00000002" / "config.yaml"
    copy = tmp_path / "killed"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("model"))
    killed = checkpoint_layout(copy)
    assert killed.weights == copy / "checkpoints" / "step_00000002" and killed.kwargs == exported.kwargs
    assert capsys.readouterr().err == ""  # (the loader that reads the weights names the checkpoint)


def test_a_clip_training_checkpoint_reads_as_a_clip_checkpoint_to_train_from(run):
    """``read_clip_checkpoint`` (the CLIP recipe's ``model.pretrained``) refused a run's ``step_<N>``
    ('config.json not found')."""
    family, out = run
    checkpoint = out / "checkpoints" / "step_00000002"
    if family == "flava":
        with pytest.raises(ValueError, match=r"^checkpoint: expected a CLIP run's checkpoint, got .*, a FLAVA run's$"):
            read_clip_checkpoint(checkpoint)
        return
    exported = load_pretrained(out / "model")
    read = read_clip_checkpoint(str(checkpoint))
    assert read.weights == checkpoint and read.directory == out and read.holds_tokenizer
    kwargs = read.model_arguments(exported.tokenizer)
    assert kwargs == exported.kwargs and read.tokenizer_misfits(exported.tokenizer) == []
    assert _same_weights(clip_model(pretrained=read.weights, **kwargs), exported.model)
    transform = checkpoint_image_transform(read.directory, image_size=kwargs["image_size"])
    assert transform.spec == exported.image_transform.spec


def test_a_clip_run_started_from_a_checkpoint_keeps_its_preprocessing_at_its_training_checkpoints(run, tmp_path):
    """Its run directory (where its training checkpoints' tokenizer is) has no preprocessor_config.json: the
    recipes' transform would have been taken, not the mean and std of the checkpoint the run trained from."""
    import yaml

    family, out = run
    if family != "clip":
        pytest.skip("a CLIP run")
    start = tmp_path / "start"
    shutil.copytree(out / "model", start)
    config = json.loads((start / "preprocessor_config.json").read_text())
    config.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    (start / "preprocessor_config.json").write_text(json.dumps(config))
    tuned = tmp_path / "tuned"
    (tuned / "checkpoints").mkdir(parents=True)
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    recorded["model"] = {**{k: None for k in recorded["model"]}, "pretrained": str(start)}
    (tuned / "config.yaml").write_text(yaml.safe_dump(recorded))
    spec = checkpoint_image_transform(tuned, image_size=32).spec
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.25, 0.25, 0.25)
    assert checkpoint_image_transform(out, image_size=32).spec == load_pretrained(out).image_transform.spec


def test_a_run_s_checkpoints_folder_is_named_as_such(run):
    """Named for a checkpoint, it was 'neither a torchflava run/export directory ... nor a Hugging Face FLAVA
    or CLIP directory' (the commands) or 'a directory without any of model.safetensors, ...' (the builders)."""
    family, out = run
    expected = (
        f"checkpoint: {out / 'checkpoints'} is a run's checkpoints folder; expected one of its checkpoints "
        f"({out / 'checkpoints'}/step_<N>; complete: 1, 2) or its run directory {out}"
    )
    for load in (load_pretrained, lambda path: BUILDERS[family](pretrained=path), checkpoint_layout):
        with pytest.raises(FileNotFoundError) as caught:
            load(out / "checkpoints")
        assert str(caught.value) == expected


def test_a_flava_run_or_its_export_reads_as_a_state_dict(run):
    """``load_state_dict`` / ``peek_state_dict`` (what the pretraining recipe checks ``model.pretrained`` with)
    refused a run and its export ('a directory without any of model.safetensors, ...') that ``flava_model`` loads."""
    from safetensors.torch import load_file

    from torchflava.utils.checkpoint import load_state_dict, peek_state_dict

    family, out = run
    if family != "flava":
        with pytest.raises(FileNotFoundError, match="nor a torchflava FLAVA export"):
            peek_state_dict(out)
        return
    exported = load_file(out / "model" / "flava_pretraining.safetensors")
    for path in (out, out / "model"):
        loaded = load_state_dict(path)
        assert loaded.keys() == exported.keys() and all(torch.equal(loaded[k], exported[k]) for k in exported)
        assert {k: (v.shape, v.dtype) for k, v in peek_state_dict(path).items()} == {
            k: (v.shape, v.dtype) for k, v in exported.items()
        }


def test_the_commands_json_names_the_weights_a_killed_run_resolved_to(run, tmp_path):
    """A run without an export is evaluated at its latest intact checkpoint, said on stderr only: the --json
    (what a results table is built from) did not say which step was evaluated."""
    from torchflava import linear_probe, zero_shot
    from torchflava.data.shapes import ShapesWorld

    family, out = run
    copy = tmp_path / "killed"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("model"))
    shutil.rmtree(copy / "checkpoints" / "step_00000002")  # killed before its last checkpoint
    images = tmp_path / "images"
    images.mkdir()
    ShapesWorld("test", 1, image_size=32)[0].image.save(images / "0.png")
    args = ["--checkpoint", str(copy), "--images", str(images), "--classes", "red circle,blue square"]
    zero_shot.main([*args, "--json", str(tmp_path / "zs.json")])
    assert json.loads((tmp_path / "zs.json").read_text())["weights"] == str(copy / "checkpoints" / "step_00000001")
    scenes = ShapesWorld("test", 4, image_size=32)
    for split, name, i in (("train", "a", 0), ("train", "b", 1), ("val", "a", 2), ("val", "b", 3)):
        (tmp_path / split / name).mkdir(parents=True)
        scenes[i].image.save(tmp_path / split / name / f"{i}.png")
    folders = ["--train", str(tmp_path / "train"), "--val", str(tmp_path / "val")]
    report = linear_probe.main(["--checkpoint", str(out), *folders])
    assert report["weights"] == str(next((out / "model").glob("*.safetensors")))


def test_the_recipes_take_a_step_unpadded_as_model_pretrained(run):
    """``model.pretrained=<run>/checkpoints/step_1`` was refused by the recipes ('expected a checkpoint directory',
    'checkpoint not found', FLAVA pretraining even the padded step_00000001) where the library loads it."""
    family, out = run
    step, padded = out / "checkpoints" / "step_1", out / "checkpoints" / "step_00000001"
    if family == "clip":
        train = load_recipe(RECIPES["clip"], "trained_use_clip_pretrained")
        cfg = load_config(train.TrainConfig, [f"config={REPO / CONFIGS['clip']}", f"model.pretrained={step}"])
        assert train.read_checkpoint(cfg).weights == padded
        return
    finetune = load_recipe("examples/flava/finetune.py", "trained_use_finetune_pretrained")
    config = REPO / "examples/flava/configs/finetuning/shapes.yaml"
    cfg = load_config(finetune.FinetuneConfig, [f"config={config}", f"model.pretrained={step}"])
    assert finetune.validate(cfg, 1) == load_pretrained(padded).max_text_length
    cfg = load_config(finetune.FinetuneConfig, [f"config={config}", f"model.pretrained={out}/checkpoints/step_7"])
    with pytest.raises(finetune.ConfigError, match=r"step_7 does not exist \(complete checkpoints in .*: 1, 2\)\)$"):
        finetune.validate(cfg, 1)
    train = load_recipe(RECIPES["flava"], "trained_use_flava_pretrained")
    cfg = load_config(train.TrainConfig, [f"config={REPO / CONFIGS['flava']}", f"model.pretrained={step}"])
    assert train.pretrained_check(cfg.model)[0]
    section = train.resolved_model_section(cfg.model)
    assert train.flava_model_kwargs(section, 0) == {**load_pretrained(padded).kwargs, "vocab_size": 0}
    vocab_size = load_pretrained(padded).kwargs["vocab_size"]
    assert train.pretrained_fits_check(cfg, vocab_size)[0]
    ok, key, _, got = train.pretrained_fits_check(cfg, vocab_size + 2)
    assert not ok and key == "data.vocab" and got.endswith(f"({vocab_size + 2} tokens; the run's {vocab_size})")
    model = train.build_model(replace(cfg, model=section), vocab_size)
    assert _same_weights(model.model, flava_model(pretrained=padded))
    assert not _same_weights(model.model, flava_model(pretrained=out))


def test_a_checkpoint_directory_of_the_other_family_is_named_as_such(run, tmp_path):
    """``clip_model(pretrained=<a FLAVA run or export>)`` said 'config.json not found', and the FLAVA recipe's
    ``model.pretrained=<a CLIP run, export or open_clip directory>`` 'a directory without any of model.safetensors'."""
    family, out = run
    if family == "flava":
        for path in (out, out / "model"):
            expected = rf"^clip_model: expected pretrained to be a CLIP checkpoint, got {path}, a FLAVA checkpoint "
            with pytest.raises(ValueError, match=expected + r"\(build it with flava_model\)$"):
                clip_model(pretrained=path)
            with pytest.raises(ValueError, match=rf"^checkpoint: expected a CLIP checkpoint, got {path}, a FLAVA"):
                read_clip_checkpoint(path)
        return
    hub = tmp_path / "open_clip_hub"
    hub.mkdir()
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}}))
    train = load_recipe(RECIPES["flava"], "trained_use_flava_other_family")
    for path in (out, out / "model", hub):
        with pytest.raises(
            ValueError, match=rf"^flava_model: expected pretrained to be a FLAVA checkpoint, got {path}, "
        ):
            flava_model(pretrained=path)
        cfg = load_config(train.TrainConfig, [f"config={REPO / CONFIGS['flava']}", f"model.pretrained={path}"])
        with pytest.raises(train.ConfigError, match=r"^key 'model.pretrained': .*, a CLIP checkpoint \(build it with"):
            train.validate(cfg, 1)


def test_a_run_killed_before_its_export_is_verified_once_per_load(run, tmp_path, monkeypatch):
    """Loading a run without an export hashed its newest checkpoint's files twice: once as its newest intact one
    was found, again before its weights were read (0.17 s a time for a 262 MB checkpoint). Once now, by
    load_pretrained and checkpoint_layout alike; a checkpoint named is still verified before it is read."""
    import torchflava.pretrained as pretrained_module
    import torchflava.training.checkpointing as checkpointing

    family, out = run
    copy = tmp_path / "killed"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("model"))
    hashed = []
    for module, name in ((pretrained_module, "damage"), (checkpointing, "damage_on_every_rank")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda path, _f=original: hashed.append(path.name) or _f(path))
    assert _same_weights(load_pretrained(copy).model, load_pretrained(out).model)
    assert hashed == ["step_00000002"]
    hashed.clear()
    assert checkpoint_layout(copy).weights == copy / "checkpoints" / "step_00000002"
    assert hashed == ["step_00000002"]
    hashed.clear()
    (copy / "checkpoints" / "step_00000002" / "__0_0.distcp").write_bytes(b"torn")  # named: verified
    with pytest.raises(CheckpointIntegrityError):
        load_pretrained(copy / "checkpoints" / "step_2")
    assert hashed == ["step_00000002"]
