"""fp32 linear layers on the CPU: ``F.linear`` (PyTorch's BLAS) against torchflava's ``linear`` (oneDNN).

``torchflava.modules.layers.linear`` sends fp32 CPU products of at least ``ONEDNN_FP32_MIN_MACS``
multiply-adds to oneDNN. This script measures both libraries at the linear shapes of our towers
(ViT-B/16 at batch 8: 1576 tokens; BERT-base text at batch 8 x 77; the tiny FLAVA of ``make train``:
64 images x 37 tokens, width 128) and at small ones, inference (forward) and training (forward and
backward of a fixed output gradient, all three gradients), with both paths forced
(``ONEDNN_FP32_MIN_MACS`` 0 or None, no minimum width). It prints GFLOP/s, the time ratio and the largest difference
between the two results; the thresholds (products and widths) are read off the ratio column.

Timing: the two paths interleaved call by call, the order alternating; medians.

Usage::

    python benchmarks/linear.py [--reps 15] [--json out.json]
"""

import argparse
from pathlib import Path
import statistics
import time

from interleave import round_order
from report import write_json
import torch

from torchflava.modules.layers import linear as linear_mod

SHAPES = {  # name -> (M, K, N): x (M, K) @ weight (N, K).T
    "vit-b16 qkv": (1576, 768, 2304),
    "vit-b16 out": (1576, 768, 768),
    "vit-b16 fc1": (1576, 768, 3072),
    "vit-b16 fc2": (1576, 3072, 768),
    "bert text fc1": (616, 768, 3072),
    "vit-b16 b1 out": (197, 768, 768),
    "vit-b16 b2 out": (394, 768, 768),
    "vit-b16 b1 fc1": (197, 768, 3072),
    "vit-b16 b2 fc1": (394, 768, 3072),
    "width 256 fc1": (2048, 256, 1024),
    "width 256 fc2": (2048, 1024, 256),
    "width 256 out": (2048, 256, 256),
    "width 384 fc1": (1024, 384, 1536),
    "tiny qkv": (2368, 128, 384),
    "tiny fc1": (2368, 128, 512),
    "tiny fc2": (2368, 512, 128),
    "tiny out": (2368, 128, 128),
    "small fc1": (256, 128, 512),
    "small out": (256, 128, 128),
}
PATHS = {"F.linear": None, "oneDNN": {"inference": 0, "training": 0}}  # ONEDNN_FP32_MIN_MACS forcing each
ALL_WIDTHS = {"inference": 0, "training": 0}  # ONEDNN_FP32_MIN_WIDTH: no minimum


def call(path: str, x, w, b, grad, train: bool) -> float:
    with linear_mod.onednn_fp32_thresholds(PATHS[path], ALL_WIDTHS):
        start = time.perf_counter()
        if train:
            linear_mod.linear(x, w, b).backward(grad)
            x.grad = w.grad = b.grad = None
        else:
            with torch.inference_mode():
                linear_mod.linear(x, w, b)
        return time.perf_counter() - start


def run(args) -> list[dict]:
    rows, gen = [], torch.Generator().manual_seed(0)
    for name, (m, k, n) in SHAPES.items():
        x = torch.randn(m, k, generator=gen).requires_grad_()
        w = (torch.randn(n, k, generator=gen) * k**-0.5).requires_grad_()
        b = torch.randn(n, generator=gen).requires_grad_()
        grad = torch.randn(m, n, generator=gen)
        outs = {}
        for path in PATHS:
            with linear_mod.onednn_fp32_thresholds(PATHS[path], ALL_WIDTHS), torch.no_grad():
                outs[path] = linear_mod.linear(x, w, b)
        diff = (outs["F.linear"] - outs["oneDNN"]).abs().max().item()
        for mode in ("inference", "train"):
            times = {path: [] for path in PATHS}
            for rep in range(args.reps + 2):
                for path in round_order(list(PATHS), rep):
                    seconds = call(path, x, w, b, grad, mode == "train")
                    if rep >= 2:
                        times[path].append(seconds)
            flop = 2 * m * k * n * (3 if mode == "train" else 1)
            med = {path: statistics.median(t) for path, t in times.items()}
            row = {"shape": name, "mnk": [m, k, n], "mode": mode, "max_abs_diff": diff}
            row |= {f"{path}_gflops": flop / med[path] / 1e9 for path in PATHS}
            row["speedup"] = med["F.linear"] / med["oneDNN"]
            rows.append(row)
            print(
                f"{name:14} {m:5}x{k:4}x{n:4} {mode:9}  F.linear {row['F.linear_gflops']:6.1f}  "
                f"oneDNN {row['oneDNN_gflops']:6.1f} GFLOP/s  oneDNN faster {row['speedup']:.2f}x  "
                f"MACs {m * k * n / 2**20:6.0f} Mi  max diff {diff:.1e}",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, CPU {linear_mod.cpu_vendor() or 'unknown'} "
        f"{torch.backends.cpu.get_cpu_capability()}, default ONEDNN_FP32_MIN_MACS = "
        f"{linear_mod.ONEDNN_FP32_MIN_MACS}, ONEDNN_FP32_MIN_WIDTH = {linear_mod.ONEDNN_FP32_MIN_WIDTH}"
    )
    rows = run(args)
    if args.json is not None:
        write_json(args.json, args, rows)


if __name__ == "__main__":
    main()
