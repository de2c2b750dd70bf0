"""Writing a micro-benchmark's rows to JSON, with what machine and torch measured them."""

import json
import os
from pathlib import Path
import platform

import torch

from torchflava.utils.checkpoint import atomic_write


def write_json(path: Path, args, rows: list[dict]) -> None:
    """``{"meta": machine, CPUs, torch; "args": the command line's; "rows": rows}``, written atomically."""
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__}
    results = {"meta": meta, "args": vars(args) | {"json": str(path)}, "rows": rows}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1) + "\n"))
