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
