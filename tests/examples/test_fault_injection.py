"""Kill a run with SIGKILL at 12 points (mid-step, during checkpoint write, marker, rename, deletion,
export...), resume it with resume=auto: the loss sequence equals the uninterrupted run's exactly and
the export loads."""

import json
from pathlib import Path
import signal
import subprocess

import pytest
from safetensors.torch import load_file

from tests.examples.fault_runner import run_script

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "examples" / "clip" / "configs" / "debug.yaml"
COMMON = [
    f"config={CONFIG}",
    "training.max_steps=8",
    "training.checkpoint_every=2",
    "training.keep_checkpoints=1",
    "training.log_every=1",
    "training.resume=auto",
    "eval.enabled=false",
]
POINTS = [
    ("optimizer_step", 3),
    ("after_optimizer_step", 5),
    ("metrics_log", 4),
    ("before_dcp_write", 2),
    ("after_dcp_write", 2),
    ("rank_state_write", 3),
    ("before_marker", 1),
    ("after_marker_before_rename", 3),
    ("during_deletion", 1),
    ("during_deletion", 2),
    ("during_export", 1),
    ("after_optimizer_step", 8),
]


def _run(output_dir, point="none", n=0):
    return run_script("examples/clip/train.py", [*COMMON, f"training.output_dir={output_dir}"], point, n)


def _losses(output_dir):
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return {r["step"]: r["loss"] for r in records}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    result = _run(out)
    assert result.returncode == 0, result.stderr[-3000:]
    return _losses(out)


@pytest.mark.parametrize("point, n", POINTS, ids=[f"{p}-{n}" for p, n in POINTS])
def test_a_run_killed_there_resumes_to_the_same_losses(point, n, reference, tmp_path):
    killed = _run(tmp_path, point, n)
    assert killed.returncode == -signal.SIGKILL, f"not killed at {point} #{n}: {killed.stderr[-2000:]}"
    resumed = _run(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _losses(tmp_path) == reference  # exactly, step for step
    state = load_file(tmp_path / "model" / "clip.safetensors")  # the export is whole
    assert "logit_scale" in state and len(state) > 10
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # what the kill left (.tmp, .deleting) was removed by the resumed run's saves
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith(".")] == ["step_00000008"]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_scheduler_sigterm_checkpoints_the_step_exits_75_and_resumes_to_the_same_losses(workers, reference, tmp_path):
    """SLURM preempts a job with SIGTERM to every process (the loader's workers too): the run used to die
    mid-step, losing the steps since its last checkpoint. Now it ends the step under way, checkpoints it,
    and exits 75; resume=auto then continues to the uninterrupted run's losses."""
    overrides = [*COMMON, f"training.output_dir={tmp_path}", f"data.num_workers={workers}"]
    stopped = run_script("examples/clip/train.py", overrides, "sigterm_after_optimizer_step", 4)
    assert stopped.returncode == 75, stopped.stderr[-2000:]
    checkpoint = tmp_path / "checkpoints" / "step_00000005"  # signalled after step 4's update: seen in step 5
    assert stopped.stderr.splitlines()[-1] == (
        f"stopped by SIGTERM after step 5: checkpoint {checkpoint} written; continue with training.resume=auto "
        "(exit status 75)"
    )
    assert max(_losses(tmp_path)) == 5 and not (tmp_path / "model").exists()
    resumed = run_script("examples/clip/train.py", overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _losses(tmp_path) == reference  # exactly, step for step


def test_a_forked_run_reports_its_exit_status_output_and_hang_as_a_process_would(tmp_path):
    bad = run_script("examples/clip/train.py", [f"config={CONFIG}", "training.max_steps=0"])
    assert bad.returncode == 2 and bad.stderr.startswith("error: key 'training.max_steps'"), bad.stderr[-2000:]
    unknown = run_script("examples/clip/train.py", [f"config={CONFIG}"], "no_such_point", 1)
    assert unknown.returncode == 1 and "unknown point no_such_point" in unknown.stderr
    with pytest.raises(subprocess.TimeoutExpired):  # killed after its timeout, and the server goes on
        run_script("examples/clip/train.py", [*COMMON, f"training.output_dir={tmp_path}"], timeout=0.5)
    assert run_script("examples/clip/train.py", [f"config={CONFIG}", "training.max_steps=0"]).returncode == 2
