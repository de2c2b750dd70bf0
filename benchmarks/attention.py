"""Attention forward + backward on the CPU: SDPA's fused kernel against the matmul path, by length.

Issue #13: at the sequence lengths of our towers (77 text tokens, 197 image tokens) the backward
of ``F.scaled_dot_product_attention``'s fused CPU kernel is slow; ``math_attention`` (explicit
matmuls, fp32 scores and softmax, as the fused kernel computes them) can be faster. This script
measures both at each key length, fp32 and bf16 inputs, with and without a key-padding mask, and
prints the time ratio and each one's error against an fp64 reference (output and dq, relative to
the largest value). ``MATH_ATTENTION_MAX_KEYS`` in ``torchflava/modules/layers/attention.py`` is
read off this table: the longest key length at which the matmul path still wins.

Timing: q, k, v (B, H, S, hd) with ``requires_grad``, forward then backward of a fixed output
gradient; the two implementations interleaved call by call; medians.

Usage::

    python benchmarks/attention.py [--reps 9] [--batch 8] [--heads 12] [--head-dim 64] [--json out.json]
"""

import argparse
from pathlib import Path
import statistics
import time

from report import write_json
import torch
import torch.nn.functional as F

from torchflava.modules.layers.attention import MATH_ATTENTION_MAX_KEYS, math_attention

LENGTHS = (16, 37, 64, 77, 96, 128, 160, 197, 256, 320, 400, 512)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sdpa(q, k, v, allowed):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


IMPLS = {"sdpa": sdpa, "math": math_attention}


def fwd_bwd_seconds(fn, q, k, v, allowed, grad) -> float:
    start = time.perf_counter()
    fn(q, k, v, allowed).backward(grad)
    elapsed = time.perf_counter() - start
    q.grad = k.grad = v.grad = None
    return elapsed


def errors(fn, q, k, v, allowed, grad) -> tuple[float, float]:
    """(max |out - ref| / max |ref|, max |dq - dq_ref| / max |dq_ref|) against fp64 SDPA."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = sdpa(*leaves, allowed)
    ref.backward(grad.double())
    out = fn(q, k, v, allowed)
    out.backward(grad)
    dq = q.grad.double()
    q.grad = k.grad = v.grad = None
    rel = lambda a, b: ((a.double() - b).abs().max() / b.abs().max()).item()  # noqa: E731
    return rel(out, ref), rel(dq, leaves[0].grad)


def run(args) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for dtype_name, dtype in DTYPES.items():
        for length in LENGTHS:
            for masked in (False, True):
                shape = (args.batch, args.heads, length, args.head_dim)
                q, k, v = (torch.randn(shape, generator=gen).to(dtype).requires_grad_() for _ in range(3))
                grad = torch.randn(shape, generator=gen).to(dtype)
                allowed = None
                if masked:  # each row keeps a random prefix of at least half its keys
                    lengths = torch.randint(length // 2, length + 1, (args.batch,), generator=gen)
                    allowed = (torch.arange(length)[None, :] < lengths[:, None])[:, None, None, :]
                times = {name: [] for name in IMPLS}
                for rep in range(args.reps + 2):
                    for name, fn in IMPLS.items():
                        seconds = fwd_bwd_seconds(fn, q, k, v, allowed, grad)
                        if rep >= 2:
                            times[name].append(seconds)
                med = {name: statistics.median(t) for name, t in times.items()}
                err = {name: errors(fn, q, k, v, allowed, grad) for name, fn in IMPLS.items()}
                row = {
                    "dtype": dtype_name,
                    "keys": length,
                    "masked": masked,
                    "sdpa_ms": med["sdpa"] * 1e3,
                    "math_ms": med["math"] * 1e3,
                    "math_over_sdpa": med["math"] / med["sdpa"],
                    "sdpa_err_out": err["sdpa"][0],
                    "math_err_out": err["math"][0],
                    "sdpa_err_dq": err["sdpa"][1],
                    "math_err_dq": err["math"][1],
                }
                rows.append(row)
                print(
                    f"{dtype_name:5} S={length:4} {'mask' if masked else '    '}  sdpa {row['sdpa_ms']:7.2f} ms  "
                    f"math {row['math_ms']:7.2f} ms  math/sdpa {row['math_over_sdpa']:.2f}  "
                    f"rel err out {row['sdpa_err_out']:.1e} / {row['math_err_out']:.1e}  "
                    f"dq {row['sdpa_err_dq']:.1e} / {row['math_err_dq']:.1e}",
                    flush=True,
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, B={args.batch} H={args.heads} hd={args.head_dim}")
    print(f"MATH_ATTENTION_MAX_KEYS = { {str(k): v for k, v in MATH_ATTENTION_MAX_KEYS.items()} }")
    rows = run(args)
    if args.json is not None:
        write_json(args.json, args, rows)


if __name__ == "__main__":
    main()
