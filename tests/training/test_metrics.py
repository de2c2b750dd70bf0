"""Metrics JSONL: records, resume truncation, torn lines, and the loss plot."""

import json
import sys

import pytest

from torchflava.training.metrics import MetricsLogger, plot_losses, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def log_steps(path, steps, **kwargs) -> None:
    logger = MetricsLogger(path, **kwargs)
    for step in steps:
        logger.log(step, {"loss": 10.0 / step, "loss/mlm": 5.0 / step, "kind": "pairs"})
    logger.close()


def test_records_are_written_one_per_line(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"  # the directory is created
    log_steps(path, [1, 2])
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "loss": 10.0, "loss/mlm": 5.0, "kind": "pairs"},
        {"step": 2, "loss": 5.0, "loss/mlm": 2.5, "kind": "pairs"},
    ]
    assert read_metrics(path) == [json.loads(line) for line in lines]


def test_log_is_flushed_at_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    logger = MetricsLogger(path)
    logger.log(7, {"loss": 1.5})
    assert read_metrics(path) == [{"step": 7, "loss": 1.5}]  # readable before close (a killed run keeps it)
    logger.close()


def test_resume_keeps_records_up_to_the_resume_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log_steps(path, [1, 2, 3, 4, 5])
    log_steps(path, [4], resume_step=3)  # steps 4 and 5 of the killed run are dropped, then step 4 again
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]
    log_steps(path, [], resume_step=0)
    assert read_metrics(path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary file left


def test_new_run_starts_a_new_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log_steps(path, [1, 2, 3])
    log_steps(path, [1])  # resume_step None: a fresh file
    assert [r["step"] for r in read_metrics(path)] == [1]


def test_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log_steps(path, [1, 2])
    with path.open("a") as f:
        f.write('{"step": 3, "loss": 3.')  # the run was killed mid-write
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    log_steps(path, [3], resume_step=2)  # resuming drops the torn line too
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert path.read_text().endswith("}\n") and path.read_text().count("\n") == 3


def test_lines_that_are_not_records_are_ignored_and_resume_still_works(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log_steps(path, [1, 2])
    with path.open("a") as f:
        f.write('[1, 2]\n{"step": "7"}\n"text"\n{"loss": 1.0}\n')  # valid JSON, but no record of a step
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    log_steps(path, [3], resume_step=2)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]


def test_plot_losses_writes_a_png(tmp_path):
    records = [{"step": s, "loss": 10.0 / s, "loss/mim": 4.0 / s, "loss/mlm": 3.0 / s, "lr": 0.1} for s in range(1, 30)]
    path = tmp_path / "losses.png"
    plot_losses(records, path)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["losses.png"]
    chosen = tmp_path / "mim.png"
    plot_losses(records, chosen, keys=["loss/mim"])
    assert chosen.read_bytes()[:8] == PNG_SIGNATURE
    assert chosen.read_bytes() != data  # a different set of curves
    bare = tmp_path / "losses"  # no suffix: a PNG still (matplotlib read the format off the temporary name)
    plot_losses(records, bare)
    assert bare.read_bytes()[:8] == PNG_SIGNATURE


def test_dropped_records_are_set_aside_in_a_new_file(tmp_path):
    path, aside = tmp_path / "metrics.jsonl", tmp_path / "abandoned"
    log_steps(path, [1, 2, 3, 4])
    logger = MetricsLogger(path, resume_step=2, set_aside=aside)  # a new trajectory from step 2
    logger.close()
    assert logger.set_aside_file == aside / "metrics.jsonl"
    assert [r["step"] for r in read_metrics(aside / "metrics.jsonl")] == [3, 4]
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    logger = MetricsLogger(path, set_aside=aside)  # a fresh start: everything goes, into a new file
    logger.close()
    assert logger.set_aside_file == aside / "metrics.jsonl.1"
    assert [r["step"] for r in read_metrics(aside / "metrics.jsonl.1")] == [1, 2]
    assert read_metrics(path) == [] and [r["step"] for r in read_metrics(aside / "metrics.jsonl")] == [3, 4]
    logger = MetricsLogger(path, resume_step=0, set_aside=aside)  # nothing to drop: no file
    logger.close()
    assert logger.set_aside_file is None and sorted(p.name for p in aside.iterdir()) == [
        "metrics.jsonl",
        "metrics.jsonl.1",
    ]


def test_a_line_nested_too_deeply_is_ignored_as_other_unreadable_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}]  # (json.loads raised RecursionError)


def test_tensorboard_asked_for_but_not_installed_is_said_in_one_line(tmp_path, monkeypatch, capsys):
    """training.tensorboard=true (the default) without the package wrote no events, silently."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    log_steps(tmp_path / "metrics.jsonl", [1], tensorboard_dir=tmp_path / "tensorboard")
    assert capsys.readouterr().err == (
        f"metrics: no TensorBoard events in {tmp_path / 'tensorboard'}: the tensorboard package is not installed "
        f"(pip install tensorboard, or set training.tensorboard=false); metrics go to {tmp_path / 'metrics.jsonl'} "
        "alone\n"
    )
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]
    assert not (tmp_path / "tensorboard").exists()
    monkeypatch.undo()
    log_steps(tmp_path / "metrics.jsonl", [1], tensorboard_dir=tmp_path / "tensorboard")  # installed: silent
    assert capsys.readouterr().err == "" and any((tmp_path / "tensorboard").iterdir())


def test_tensorboard_keeps_the_resume_steps_own_record_and_hides_only_the_killed_runs_later_ones(tmp_path):
    """purge_step was the resume step: TensorBoard hid the record of that very step, which the JSONL keeps
    and the resumed run does not log again; a fresh restart showed the killed run's curve under its own."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def shown() -> list[tuple[int, float]]:
        events = EventAccumulator(str(tmp_path / "tensorboard"))
        events.Reload()
        return [(e.step, pytest.approx(e.value)) for e in events.Scalars("loss")]  # (float32 there)

    board = tmp_path / "tensorboard"
    log_steps(tmp_path / "metrics.jsonl", [1, 2, 3, 4, 5], tensorboard_dir=board)  # killed after step 5
    log_steps(tmp_path / "metrics.jsonl", [4, 5, 6], resume_step=3, tensorboard_dir=board)  # its checkpoint: 3
    assert shown() == [(1, 10.0), (2, 5.0), (3, 10.0 / 3), (4, 2.5), (5, 2.0), (6, 10.0 / 6)]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    log_steps(tmp_path / "metrics.jsonl", [1, 2], tensorboard_dir=board)  # restarted afresh: the old curve goes
    assert shown() == [(1, 10.0), (2, 5.0)]
