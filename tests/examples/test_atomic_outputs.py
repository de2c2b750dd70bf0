"""The recipes write their JSON outputs (export configs, reports) atomically: a write torn midway (a kill,
a full disk) leaves the previous file or none, never a truncated one under the final name."""

import json
from pathlib import Path

import pytest

from tests.helpers import load_recipe
from torchflava.training.config import load_config

REPO = Path(__file__).resolve().parents[2]
RUNS = {
    "clip": ("examples/clip/train.py", "examples/clip/configs/debug.yaml", ("model/clip_config.json", "report.json")),
    "flava": (
        "examples/flava/train.py",
        "examples/flava/configs/pretraining/debug.yaml",
        ("model/backbone_config.json", "report.json"),
    ),
}


def tear_writes_to(monkeypatch, names: set) -> None:
    """``Path.write_text`` to a file of ``names`` writes half the text, then fails (as a kill would)."""
    real = Path.write_text

    def write_text(self, data, *args, **kwargs):
        if self.name in names:
            real(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(f"torn write of {self.name}")
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


@pytest.mark.parametrize("recipe", RUNS)
def test_json_outputs_are_never_written_in_place(recipe, tmp_path, monkeypatch):
    script, config, outputs = RUNS[recipe]
    module = load_recipe(script, f"atomic_outputs_{recipe}")
    cfg = load_config(
        module.TrainConfig,
        [
            f"config={REPO / config}",
            f"training.output_dir={tmp_path}",
            "training.max_steps=2",
            "optim.warmup_steps=1",
            "training.progress_bar=false",
            "training.tensorboard=false",
        ],
    )
    tear_writes_to(monkeypatch, {Path(name).name for name in outputs})
    report = module.main(cfg)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    exported = json.loads((tmp_path / outputs[0]).read_text())
    assert exported["vocab_size"] > 16 and exported["image_size"] == cfg.model.image_size


# ------------------------------------------------------------------------------------------ exports
EXPORTS = {
    "clip": ("examples/clip/train.py", "examples/clip/configs/debug.yaml", ["eval.enabled=false"]),
    "flava": ("examples/flava/train.py", "examples/flava/configs/pretraining/debug.yaml", ["eval.enabled=false"]),
    "finetune": ("examples/flava/finetune.py", "examples/flava/configs/finetuning/shapes.yaml", []),
}


@pytest.fixture(scope="module")
def flava_export(tmp_path_factory):
    """A tiny FLAVA pretraining run's directory (its export: what fine-tuning starts from)."""
    out = tmp_path_factory.mktemp("flava_export")
    module = load_recipe(EXPORTS["flava"][0], "atomic_exports_flava_start")
    overrides = [f"config={REPO / EXPORTS['flava'][1]}", f"training.output_dir={out}", "training.max_steps=1"]
    module.main(load_config(module.TrainConfig, [*overrides, "optim.warmup_steps=0", "eval.enabled=false"]))
    return out


def _files(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("recipe", EXPORTS)
def test_an_export_that_fails_midway_leaves_the_previous_one_whole(recipe, flava_export, tmp_path, monkeypatch):
    """The exports were written file by file into ``<run>/model``: a failure (a kill, a full disk) after the
    weights left the new weights beside the previous export's configs and tokenizer."""
    from torchflava.data.tokenizer import WordPieceTokenizer

    script, config, extra = EXPORTS[recipe]
    module = load_recipe(script, f"atomic_exports_{recipe}")
    schema = module.FinetuneConfig if recipe == "finetune" else module.TrainConfig
    overrides = [f"config={REPO / config}", f"training.output_dir={tmp_path}", "optim.warmup_steps=0", *extra]
    overrides += ["training.resume=auto"] + ([f"model.pretrained={flava_export}"] if recipe == "finetune" else [])
    module.main(load_config(schema, [*overrides, "training.max_steps=1"]))
    previous = _files(tmp_path / "model")
    real = WordPieceTokenizer.save

    def save(self, directory, *args, **kwargs):  # the export's tokenizer, written after its weights
        if Path(directory).name in ("model", ".model.staging"):
            raise OSError("No space left on device")
        return real(self, directory, *args, **kwargs)

    monkeypatch.setattr(WordPieceTokenizer, "save", save)
    with pytest.raises(OSError, match="No space left on device"):
        module.main(load_config(schema, [*overrides, "training.max_steps=2"]))
    assert _files(tmp_path / "model") == previous  # the previous export, whole
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".model")) == []
    monkeypatch.setattr(WordPieceTokenizer, "save", real)
    module.main(load_config(schema, [*overrides, "training.max_steps=2"]))  # the next export replaces it
    replaced = _files(tmp_path / "model")
    assert replaced.keys() == previous.keys() and replaced != previous
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".model")) == []


def test_a_kill_between_the_renames_leaves_the_previous_export_aside_and_it_is_put_back(tmp_path):
    from torchflava.utils.checkpoint import staged_directory

    aside = tmp_path / ".model.previous"
    aside.mkdir()
    (aside / "weights.safetensors").write_bytes(b"previous")
    (tmp_path / ".model.staging").mkdir()  # the new one, whole, not yet renamed in
    with pytest.raises(RuntimeError, match="killed"):
        with staged_directory(tmp_path / "model") as staging:
            assert staging == tmp_path / ".model.staging" and list(staging.iterdir()) == []
            raise RuntimeError("killed")
    assert _files(tmp_path / "model") == {"weights.safetensors": b"previous"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"file: expected a directory to write an export into, got a file or link"):
        with staged_directory(tmp_path / "file"):
            pass
