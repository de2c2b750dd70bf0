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


def add_keep_freed_memory(parser: argparse.ArgumentParser) -> None:
    """``--keep-freed-memory``: glibc malloc keeps freed memory (``keep_freed_memory()``), what
    torchflava's training loop sets by default; process-wide, so every implementation alike."""
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="set glibc malloc to keep freed memory, as torchflava's training loop does, for every "
        "implementation alike (default: glibc's own thresholds)",
    )


def apply_keep_freed_memory(args) -> None:
    """Apply ``--keep-freed-memory``, saying so; SystemExit(2) where the C library is not glibc."""
    if args.keep_freed_memory:
        from torchflava.utils.memory import keep_freed_memory

        if not keep_freed_memory():
            sys.stderr.write("--keep-freed-memory: the C library is not glibc, nothing to set\n")
            raise SystemExit(2)
        print("glibc malloc keeps freed memory (keep_freed_memory), for every implementation")


def write_json(path: Path, args, rows: list[dict]) -> None:
    """``{"meta": machine, CPUs, torch; "args": the command line's; "rows": rows}``, written atomically."""
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__}
    results = {"meta": meta, "args": vars(args) | {"json": str(path)}, "rows": rows}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1) + "\n"))
