"""examples/flava/shapes_report.py refuses a bad run directory or override in one line, exit 2, before the
linear probe runs (it printed a traceback, exit 1, after the probe)."""

import json
from pathlib import Path
import subprocess
import sys

import pytest

from tests.helpers import write_tiny_export

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "flava" / "shapes_report.py"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    write_tiny_export(run / "model")
    (run / "report.json").write_text(json.dumps({"eval": {"zero_shot_accuracy": 0.5, "zero_shot_chance": 1 / 30}}))
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
