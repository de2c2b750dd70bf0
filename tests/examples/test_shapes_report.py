"""examples/flava/shapes_report.py refuses a bad run directory or override in one line, exit 2, before the
linear probe runs (it printed a traceback, exit 1, after the probe)."""

import importlib.util
import json
from pathlib import Path
import subprocess
import sys
import types

import pytest

from tests.helpers import write_tiny_export

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "flava" / "shapes_report.py"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    write_tiny_export(run / "model")
    report = {"zero_shot_accuracy": 0.5, "zero_shot_chance": 1 / 30, "test_items": 540}
    (run / "report.json").write_text(json.dumps({"eval": report}))
    return run


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--run", "/nowhere"], "error: --run: expected a pretraining run directory with a report.json"),
        (["data.shapes_vall=3"], "error: key 'data.shapes_vall'"),
    ],
)
def test_bad_runs_and_overrides_exit_2_in_one_line_before_any_work(run_dir, arguments, message):
    command = [
        sys.executable,
        str(SCRIPT),
        *(arguments if arguments[0] == "--run" else ["--run", str(run_dir), *arguments]),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=SCRIPT.parents[2])
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith(message), (
        result.stderr
    )
    assert not (run_dir / "finetune_shapes").exists() and not (run_dir / "shapes_report.json").exists()


def _script():
    spec = importlib.util.spec_from_file_location("shapes_report_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_probe_and_the_fine_tuning_score_as_many_held_out_scenes_as_the_zero_shot(tmp_path, monkeypatch):
    """The report printed the zero-shot's scene count over the probe's and fine-tuning's fixed 540."""
    run = tmp_path / "run"
    write_tiny_export(run / "model")
    eval_report = {"zero_shot_accuracy": 0.5, "zero_shot_chance": 1 / 30, "test_items": 120}
    (run / "report.json").write_text(json.dumps({"eval": eval_report}))
    script, seen = _script(), {}
    finetune = script._finetune_module()

    def probe(pretrained, num_test):
        seen["probe"] = num_test
        return types.SimpleNamespace(test_accuracy=0.25, l2=0.1)

    def tune(cfg):
        seen["fine_tuned"] = cfg.data.shapes_val
        return {"validation": {"accuracy": 0.75}}

    monkeypatch.setattr(script, "probe_shapes", probe)
    monkeypatch.setattr(finetune, "main", tune)
    monkeypatch.setattr(script, "_finetune_module", lambda: finetune)
    report = script.main(["--run", str(run)])
    assert seen == {"probe": 120, "fine_tuned": 120}
    assert report["test_items"] == report["fine_tuned_test_items"] == 120
    report = script.main(["--run", str(run), "data.shapes_val=60"])  # the user's own count, reported as such
    assert seen["fine_tuned"] == 60 and report["fine_tuned_test_items"] == 60
    (run / "report.json").write_text(json.dumps({"eval": {**eval_report, "test_items": None}}))
    with pytest.raises(script.ConfigError, match="eval.test_items must be the zero-shot scene count, got None"):
        script.main(["--run", str(run)])


def _printed_table(tmp_path, monkeypatch, capsys, zero_shot, probe, tuned, chance) -> list[str]:
    """The four lines of shares the script prints for a run with these shares (probe and fine-tuning stubbed)."""
    run = tmp_path / "run"
    write_tiny_export(run / "model")
    eval_report = {"zero_shot_accuracy": zero_shot, "zero_shot_chance": chance, "test_items": 120}
    (run / "report.json").write_text(json.dumps({"eval": eval_report}))
    script = _script()
    finetune = script._finetune_module()
    monkeypatch.setattr(
        script, "probe_shapes", lambda pretrained, num_test: types.SimpleNamespace(test_accuracy=probe, l2=0.1)
    )
    monkeypatch.setattr(finetune, "main", lambda cfg: {"validation": {"accuracy": tuned}})
    monkeypatch.setattr(script, "_finetune_module", lambda: finetune)
    capsys.readouterr()
    script.main(["--run", str(run)])
    return capsys.readouterr().out.splitlines()[-4:]


def test_a_3000_class_chance_and_a_99_96_percent_accuracy_are_printed_as_they_are(tmp_path, monkeypatch, capsys):
    """The report printed one decimal: a chance of 1/3000 read 0.0% and an accuracy of 0.9996 100.0%. Every share is
    now printed by torchflava.evaluation.percent, right-aligned in one column."""
    assert _printed_table(tmp_path, monkeypatch, capsys, 0.5, 0.9996, 0.99996, 1 / 3000) == [
        "  zero shot       50.0%",
        "  linear probe   99.96%",
        "  fine tuned    99.996%",
        "  chance         0.033%",
    ]


@pytest.mark.parametrize(
    "shares",
    [(1.0, 0.998, 0.0, 1 / 30), (0.0, 1.0, 0.9996, 1 / 30), (0.99996, 0.5, 1.0, 1 / 3000), (1.0, 1.0, 1.0, 1.2e-6)],
)
def test_the_shares_column_is_aligned_from_0_to_100_percent(tmp_path, monkeypatch, capsys, shares):
    """The column was six characters wide: '100.0%' and ' 99.8%' aligned, but a seven-character share ('99.996%',
    '0.0046%') pushed its line one character right of the others."""
    lines = _printed_table(tmp_path, monkeypatch, capsys, *shares)
    names = [line[:16] for line in lines]
    assert names == ["  zero shot     ", "  linear probe  ", "  fine tuned    ", "  chance        "]
    assert len({len(line) for line in lines}) == 1, lines  # every share ends in one column
    printed = [float(line[16:].strip().removesuffix("%")) for line in lines]  # each line's own share, in order
    assert printed == pytest.approx([100 * share for share in shares], rel=0.02), lines
