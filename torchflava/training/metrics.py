"""Run metrics: a JSONL log (resumable), optional TensorBoard, and a loss-curve plot."""

import json
import os
from pathlib import Path
import sys
from typing import Mapping, Optional, Union

from torchflava.utils.checkpoint import atomic_write, unused_path
from torchflava.utils.cli import write_json


class MetricsLogger:
    """Appends one JSON object per logged step to ``path`` and mirrors scalars to TensorBoard.

    On resume from step ``resume_step`` the records of later steps (written by the interrupted
    run after its last checkpoint) are dropped first, so the file holds one record per step.

    Args:
        path (Union[str, os.PathLike]): the JSONL file.
        resume_step (Optional[int]): keep only records with ``step <= resume_step``; None starts
            a new file.
        tensorboard_dir (Optional[Union[str, os.PathLike]]): write TensorBoard events here when
            the ``tensorboard`` package is installed (without it, one line on stderr says none are
            written); None disables it.
        set_aside (Optional[Union[str, os.PathLike]]): a directory where the dropped records are
            kept, in a new file named like ``path`` (``.1``, ``.2``... appended if taken), written
            before ``path`` is rewritten: an abandoned run's log goes with its checkpoints.

    Attributes:
        set_aside_file (Optional[Path]): where the dropped records were kept; None when none were
            dropped or no ``set_aside`` directory was given.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        *,
        resume_step: Optional[int] = None,
        tensorboard_dir: Optional[Union[str, os.PathLike]] = None,
        set_aside: Optional[Union[str, os.PathLike]] = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        records = read_metrics(self.path) if self.path.is_file() else []
        kept = [r for r in records if resume_step is not None and r["step"] <= resume_step]
        dropped = [r for r in records if resume_step is None or r["step"] > resume_step]
        self.set_aside_file = None
        if dropped and set_aside is not None:
            self.set_aside_file = unused_path(set_aside, self.path.name)
            _write_records(self.set_aside_file, dropped)
        _write_records(self.path, kept)
        self._file = self.path.open("a")
        self._writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional, but a run that asked for it is told it gets none
                SummaryWriter = None
                print(
                    f"metrics: no TensorBoard events in {tensorboard_dir}: the tensorboard package is not installed "
                    "(pip install tensorboard, or set training.tensorboard=false); metrics go to "
                    f"{self.path} alone",
                    file=sys.stderr,
                )
            if SummaryWriter is not None:
                # TensorBoard hides the events of steps >= purge_step written before (a killed run's, past its
                # checkpoint; a fresh start's predecessor's): the steps logged from here on, as the JSONL drops them
                purge_step = 1 if resume_step is None else resume_step + 1
                self._writer = SummaryWriter(str(tensorboard_dir), purge_step=purge_step)

    def log(self, step: int, values: Mapping[str, object]) -> None:
        """Record ``values`` (JSON-serialisable) for ``step`` and flush."""
        record = {"step": step, **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close the files."""
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def _write_records(path: Path, records: list[dict]) -> None:
    """``records`` as JSONL at ``path``, atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in records)))


def read_metrics(path: Union[str, os.PathLike]) -> list[dict]:
    """The records of a metrics JSONL file: JSON objects with an int ``step``. Other lines (a torn
    last line from a killed run, an edit) are ignored."""
    records = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):  # (a line nested too deeply)
            continue
        if isinstance(record, dict) and type(record.get("step")) is int:
            records.append(record)
    return records


def plot_losses(records: list[dict], path: Union[str, os.PathLike], *, keys: Optional[list[str]] = None) -> None:
    """Plot ``loss`` and the per-loss curves of ``records`` against step into a PNG at ``path``.

    Args:
        records (list[dict]): metrics records with ``step`` and loss values.
        path (Union[str, os.PathLike]): the image file.
        keys (Optional[list[str]]): which keys to plot; by default ``loss`` and every ``loss/*``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = keys or ["loss"] + sorted({k for r in records for k in r if k.startswith("loss/")})
    figure, axis = plt.subplots(figsize=(8, 5))
    for key in keys:
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, label=key, linewidth=1.2 if key == "loss" else 0.8)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    # fixed margins that hold the labels: tight_layout measured every tick label's text (the log axis' are
    # mathtext) and took ~0.3 s of a tiny run's ~2 s
    figure.subplots_adjust(left=0.12, right=0.98, bottom=0.1, top=0.97)
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format=path.suffix[1:] or "png"))
    finally:
        plt.close(figure)


def write_fine_tuning_report(out_dir: Union[str, os.PathLike], report: dict, summary: str) -> None:
    """A fine-tuning run's end on rank 0: its loss curve (``loss_curve.png``, from ``metrics.jsonl``, where it has
    records), ``report.json`` (a metric NaN where it is undefined, not lost), and the report printed, then the
    one-line ``summary``."""
    out_dir = Path(out_dir)
    if records := read_metrics(out_dir / "metrics.jsonl"):
        plot_losses(records, out_dir / "loss_curve.png")
    write_json(out_dir / "report.json", report, allow_nan=True)
    print(json.dumps(report, indent=2))
    print(summary)
