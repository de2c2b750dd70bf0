"""Evaluating a run at one of its training checkpoints (``<run>/checkpoints/step_<N>``), as its export."""

import json
import shutil

import pytest
import torch

from tests.helpers import load_recipe
from torchflava import zero_shot
from torchflava.data.shapes import ShapesWorld
from torchflava.pretrained import load_pretrained
from torchflava.training.config import load_config
from torchflava.training.integrity import CheckpointIntegrityError

CLASSES = ["red circle", "blue square", "green triangle"]
RECIPES = {"flava": "examples/flava/train.py", "clip": "examples/clip/train.py"}
CONFIGS = {"flava": "examples/flava/configs/pretraining/debug.yaml", "clip": "examples/clip/configs/debug.yaml"}
STEP = "step_00000002"


def _train(family: str, out) -> None:
    from tests.helpers import REPO

    train = load_recipe(RECIPES[family], f"midrun_{family}_train")
    overrides = [f"training.output_dir={out}", "training.max_steps=2", "training.checkpoint_every=2"]
    overrides += ["optim.warmup_steps=0", "eval.enabled=false"]
    train.main(load_config(train.TrainConfig, [f"config={REPO / CONFIGS[family]}", *overrides]))


@pytest.fixture(scope="module", params=["flava", "clip"])
def run(request, tmp_path_factory):
    """A tiny run trained 2 steps, with a checkpoint at the last step and its export."""
    out = tmp_path_factory.mktemp(f"run_{request.param}")
    _train(request.param, out)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    test = ShapesWorld("test", 300, image_size=32)
    for i in range(300):
        if test.scene(i).label in CLASSES:
            (root / test.scene(i).label).mkdir(exist_ok=True)
            test[i].image.save(root / test.scene(i).label / f"{i}.png")
    return root


def _scores(checkpoint, images, tmp_path) -> dict:
    out = tmp_path / "result.json"
    args = ["--checkpoint", str(checkpoint), "--images", str(images), "--classes", ",".join(CLASSES)]
    zero_shot.main([*args, "--json", str(out)])
    return json.loads(out.read_text())


def test_zero_shot_from_the_last_checkpoint_equals_the_export(run, images, tmp_path):
    from_export = _scores(run / "model", images, tmp_path)
    from_checkpoint = _scores(run / "checkpoints" / STEP, images, tmp_path)
    assert from_checkpoint == {**from_export, "weights": str(run / "checkpoints" / STEP)} and from_export["num_inputs"]
    exported, loaded = load_pretrained(run / "model"), load_pretrained(run / "checkpoints" / "step_2")  # unpadded
    assert loaded.kwargs == exported.kwargs and loaded.text_length == exported.text_length
    assert loaded.image_transform.spec == exported.image_transform.spec
    for (name, a), (_, b) in zip(exported.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_run_without_export_uses_its_latest_complete_checkpoint(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("model"))
    shutil.copytree(copy / "checkpoints" / STEP, copy / "checkpoints" / "step_00000001")  # older one
    (copy / "checkpoints" / "step_00000001" / "COMPLETE").unlink()  # (and incomplete)
    partial = copy / "checkpoints" / "step_00000003"  # newer, half-written: never used
    shutil.copytree(copy / "checkpoints" / STEP, partial)
    (partial / "__0_0.distcp").write_bytes(b"torn")
    loaded, exported = load_pretrained(copy), load_pretrained(run / "model")
    line = capsys.readouterr().err.strip()
    assert line.count("\n") == 0 and f"checkpoints/{STEP}" in line and "step_00000003 is damaged" in line
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), exported.model.state_dict().values())
    )


def test_bad_checkpoints_are_refused_in_one_line(run, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"step_00000007 does not exist \(complete checkpoints in .*: 2\)$"):
        load_pretrained(run / "checkpoints" / "step_00000007")
    torn = tmp_path / "run" / "checkpoints" / STEP
    shutil.copytree(run / "checkpoints" / STEP, torn)
    (torn / "__0_0.distcp").write_bytes((torn / "__0_0.distcp").read_bytes()[:-10])  # half-written shard
    with pytest.raises(CheckpointIntegrityError, match=r"__0_0.distcp has \d+ bytes, the manifest says"):
        load_pretrained(torn)
    shutil.copy(run / "config.yaml", tmp_path / "run" / "config.yaml")
    shutil.copy(run / "vocab.txt", tmp_path / "run" / "vocab.txt")
    (tmp_path / "run" / "checkpoints" / "step_00000001").mkdir()  # neither marker nor shards
    with pytest.raises(CheckpointIntegrityError, match="not a complete checkpoint \\(no COMPLETE file\\)"):
        load_pretrained(tmp_path / "run" / "checkpoints" / "step_00000001")
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no export \\(model/\\) and no complete, intact checkpoint"):
        load_pretrained(empty)


# the other family's model section (debug sizes), to give a checkpoint the config of a model its weights are not
_TOWERS = {"layers": 1, "heads": 2, "mlp_dim": 64}
OTHER_SECTION = {
    "flava": {
        "embed_dim": 16,
        "image_size": 32,
        "patch_size": 8,
        "context_length": 24,
        "vision_width": 32,
        "text_width": 32,
        **{f"{t}_{k}": v for t in ("vision", "text") for k, v in _TOWERS.items()},
    },
    "clip": {
        "image_size": 32,
        "patch_size": 8,
        "max_seq_len": 32,
        "projection_dim": 32,
        **{
            f"{t}_{k}": v
            for t in ("image", "text", "multimodal")
            for k, v in {"embed_dim": 32, "num_layers": 1, "num_heads": 2, "mlp_dim": 64}.items()
        },
    },
}


def _with_config(run, tmp_path, edit) -> object:
    """A copy of ``run``'s last checkpoint whose recorded config ``edit`` changed, its manifest rewritten."""
    import yaml

    from torchflava.training.integrity import write_marker

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("model"))
    checkpoint = copy / "checkpoints" / STEP
    config = yaml.safe_load((checkpoint / "config.yaml").read_text())
    edit(config)
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(config))
    write_marker(checkpoint, 2, 1)
    return checkpoint


def test_a_checkpoint_of_another_model_or_recipe_is_refused_naming_it(run, tmp_path):
    family = "clip" if "vision_width" in (run / "config.yaml").read_text() else "flava"
    checkpoint = _with_config(run, tmp_path / "other", lambda c: c.update(model=OTHER_SECTION[family]))
    with pytest.raises(ValueError, match=rf"^checkpoint: {checkpoint}: its weights do not fit its run's \w+ model \("):
        load_pretrained(checkpoint)
    finetune = _with_config(run, tmp_path / "finetune", lambda c: c["model"].update(modality="text"))
    with pytest.raises(ValueError, match=r"expected the model section of a FLAVA or CLIP pretraining run .*'modality'"):
        load_pretrained(finetune)


def test_a_run_whose_export_is_older_than_its_newest_checkpoint_says_which_it_evaluates(run, tmp_path, capsys):
    """A run resumed past its export and stopped before the next one: its export (step 2) was evaluated with
    nothing said of the newer checkpoint; it still is, and says so in one line. A run whose export is of its
    newest checkpoint says nothing."""
    load_pretrained(run)
    assert capsys.readouterr().err == ""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.copytree(copy / "checkpoints" / STEP, copy / "checkpoints" / "step_00000005")
    loaded, exported = load_pretrained(copy), load_pretrained(run / "model")
    line = capsys.readouterr().err.strip()
    assert line == (
        f"checkpoint: evaluating {copy}'s export (model/, step 2), not its newer checkpoint "
        f"{copy / 'checkpoints' / 'step_00000005'} (name that checkpoint to evaluate it)"
    )
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), exported.model.state_dict().values())
    )


def test_a_checkpoint_whose_run_started_from_a_checkpoint_no_longer_there_names_the_config(run, tmp_path):
    """Its architecture and preprocessing come from the run's model.pretrained: where that has moved, the error
    named only that path ('checkpoint not found: ...'), as if it were the checkpoint asked for."""
    gone = tmp_path / "gone"
    checkpoint = _with_config(run, tmp_path / "moved", lambda c: c["model"].update(pretrained=str(gone)))
    expected = (
        f"checkpoint: {checkpoint / 'config.yaml'}: expected model.pretrained, the checkpoint the run started from "
        f"(its architecture and preprocessing), at {gone}, got checkpoint not found: {gone}"
    )
    with pytest.raises(FileNotFoundError) as caught:
        load_pretrained(checkpoint)
    assert str(caught.value) == expected


def test_a_checkpoint_whose_run_started_from_a_path_holding_interpolation_text_loads(run, tmp_path):
    """config.yaml records a ${ escaped (as OmegaConf reads it back: torchflava.utils.config_text); load_pretrained
    reads it with PyYAML, which kept the escape, and looked for model.pretrained at '.../e\\${x}/model'."""
    if "vision_width" not in (run / "config.yaml").read_text():
        pytest.skip("a FLAVA run reads no model.pretrained of its config")
    started = tmp_path / "e${x}" / "model"
    shutil.copytree(run / "model", started)
    escaped = str(started).replace("${", "\\${")  # (as config_yaml records it)
    checkpoint = _with_config(run, tmp_path / "moved", lambda c: c["model"].update(pretrained=escaped))
    assert "e\\${x}" in (checkpoint / "config.yaml").read_text()
    loaded, exported = load_pretrained(checkpoint), load_pretrained(run / "model")
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), exported.model.state_dict().values())
    )
