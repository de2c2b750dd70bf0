"""Writing a micro-benchmark's rows to JSON, with what machine and torch measured them; one-line
argument errors."""

import argparse
import json
import os
from pathlib import Path
import platform
import sys

import torch

from torchflava.utils.checkpoint import atomic_write


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def write_json(path: Path, args, rows: list[dict]) -> None:
    """``{"meta": machine, CPUs, torch; "args": the command line's; "rows": rows}``, written atomically."""
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__}
    results = {"meta": meta, "args": vars(args) | {"json": str(path)}, "rows": rows}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1) + "\n"))
