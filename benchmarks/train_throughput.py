"""Samples/s of the pretraining recipe on the built-in data, fp32 against bf16 autocast, one process.

Runs examples/flava/train.py (the same code as `make train`) as separate processes, alternating
fp32 and bf16 runs, and reads the recipe's own samples/s from its metrics log, skipping the first
``--skip`` logged windows (start-up, warm-up). Prints the median of each precision and the ratio.

    python benchmarks/train_throughput.py --config examples/flava/configs/pretraining/tiny.yaml --steps 60
"""

import argparse
import json
import os
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile

REPO = Path(__file__).resolve().parents[1]


def run_once(config: str, precision: str, steps: int, log_every: int, extra: list[str]) -> list[float]:
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            str(REPO / "examples" / "flava" / "train.py"),
            f"config={config}",
            f"training.output_dir={out}",
            f"training.max_steps={steps}",
            f"training.precision={precision}",
            f"training.log_every={log_every}",
            f"training.checkpoint_every={steps}",
            "training.progress_bar=false",
            f"optim.warmup_steps={steps // 10}",
            "training.tensorboard=false",
            "eval.enabled=false",
            "training.resume=none",
            *extra,
        ]
        result = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO))
        )
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r["samples_per_s"] for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "examples/flava/configs/pretraining/tiny.yaml"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--skip", type=int, default=1, help="logged windows to skip at the start of each run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args()

    windows: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for precision in ("fp32", "bf16"):
            windows[precision] += run_once(args.config, precision, args.steps, args.log_every, args.overrides)[
                args.skip :
            ]
    medians = {p: statistics.median(v) for p, v in windows.items()}
    print(f"config: {args.config}  steps/run: {args.steps}  runs per precision: {args.repeats}  torch threads: default")
    for precision, values in windows.items():
        print(
            f"  {precision}: median {medians[precision]:8.1f} samples/s  (windows of {args.log_every} steps: "
            f"{', '.join(f'{v:.0f}' for v in values)})"
        )
    print(f"  bf16 / fp32: {medians['bf16'] / medians['fp32']:.2f}x")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"config": args.config, "steps": args.steps, "windows": windows, "median_samples_per_s": medians},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
