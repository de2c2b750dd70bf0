"""benchmarks/accumulation.py on a tiny CLIP: both settings run through the loop, the figures it derives,
its JSON, and its argument errors."""

import importlib
import json
from pathlib import Path
import sys

import pytest
import torch

from torchflava.models import clip_model

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def accumulation():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("accumulation")
    finally:
        sys.path.remove(str(BENCHMARKS))


def tiny_clip():
    return clip_model(
        embed_dim=16, image_size=32, patch_size=16, vision_width=32, vision_layers=2, vision_heads=2,
        vision_mlp_dim=64, context_length=8, vocab_size=64, text_width=32, text_layers=1, text_heads=2,
        text_mlp_dim=64,
    )  # fmt: skip


def test_both_settings_train_and_the_speed_up_is_the_ratio_of_medians(accumulation, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(accumulation, "clip_vit_b16", tiny_clip)
    monkeypatch.setattr(accumulation, "IMAGE_SIZE", 32)
    settings = []
    real_run = accumulation.run

    def run(cache, args, out):  # the setting is autocast's weight cache, restored after each run
        settings.append((cache, torch.is_autocast_cache_enabled()))
        times = real_run(cache, args, out)
        assert torch.is_autocast_cache_enabled() is settings[-1][1]
        return times

    monkeypatch.setattr(accumulation, "run", run)
    path = tmp_path / "figures.json"
    result = accumulation.main(
        ["--micro-batches", "2", "--batch", "2", "--steps", "3", "--runs", "2", "--json", str(path)]
    )
    assert [cache for cache, _ in settings] == [True, False, True, False]
    rows = {row["setting"]: row for row in result["rows"]}
    assert set(rows) == {"once a step", "once a micro-batch"}
    for row in rows.values():
        assert len(row["step_s"]) == 2 * 2 and all(t > 0 for t in row["step_s"])  # 2 runs x (3 steps - the first)
    assert result["speed_up"] == pytest.approx(rows["once a micro-batch"]["median_s"] / rows["once a step"]["median_s"])
    assert json.loads(path.read_text())["rows"] == result["rows"]
    assert f"speed-up: {result['speed_up']:.3f}x" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--steps", "1"], ["--micro-batches", "0"], ["--runs", "0"], ["--batch", "-1"]])
def test_a_bad_argument_is_one_line_and_exit_2_before_any_work(accumulation, capsys, monkeypatch, argv):
    monkeypatch.setattr(accumulation, "clip_vit_b16", lambda: pytest.fail("built a model"))
    with pytest.raises(SystemExit) as exit_info:
        accumulation.main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "--steps >= 2" in err
