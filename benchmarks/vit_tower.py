"""The ViT-B/16 image tower at 224 px: torchflava against timm and open_clip, inference and train step, CPU or GPU.

Implementations (random weights; speed does not depend on their values):

- ``ours``: torchflava's CLIP ViT-B/16 image tower, ``clip_vit_b16().encode_image(images, normalize=False)``
  (projected CLS, 512 wide); in bf16 inference also ``ours+packed``, the same after ``pack_linears``
  (bf16 linear weights cast and packed for oneDNN once; inference only, as in ``encoders.py``).
- ``timm``: ``timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)``, the pooled
  CLS (768 wide; ``num_classes=0`` drops the 768 x 1000 classifier, 0.004% of the FLOPs).
- ``open_clip``: ``open_clip.create_model("ViT-B-16", pretrained=None).visual`` (projected CLS, 512 wide).
- ``ours+fp32gemm`` and ``timm+fp32gemm`` (bf16, eager): ``ours`` and ``timm`` in
  ``torchflava.utils.precision.bf16_products_in_fp32()``, their bf16 matrix products and attention computed
  as fp32 GEMMs of the bf16 operands, rounded to bf16: how the training loop runs bf16 on a CPU without
  oneDNN's bf16 kernels (AVX2 only), where PyTorch's bf16 kernels are a slow reference path. ``timm``'s is
  the region alone on another model: the loop gives it to any model it trains.

All three are the same network up to details (timm: qkv bias and no pre-norm; open_clip and ours: a
pre-norm and no patch-conv bias), 12 layers of width 768, 12 heads, MLP 3072, 197 tokens.

Configs: ``inference`` (``torch.inference_mode``, model in eval mode) and ``train`` (model in train
mode: forward, ``loss = out.float().pow(2).mean()``, backward, then ``zero_grad(set_to_none=True)``;
no optimiser step); fp32 and bf16 (everyone under the same ``torch.autocast("cpu", bfloat16)``, a
region per step, as the training loop opens one per optimiser step);
eager and, with ``--compile``, ``torch.compile`` (default mode) of the forward (and loss), and for
inference also with ``torch._inductor.config.freezing = True``. Timing: warm-up, then the
implementations interleaved batch by batch, the order rotating (A B C, B C A, ...); medians; the
speed of each against the fastest peer is the median of the per-batch ratios peer/this (paired).

GEMM micro-benchmark, in the same run (before and after the models): ``F.linear`` (and in fp32
also torchflava's ``linear``, which calls oneDNN at these shapes) at ViT-B/16's linear shapes for
batch B (M = B * 197 tokens: qkv 768 -> 2304, attention out 768 -> 768, fc1 768 -> 3072, fc2
3072 -> 768), fp32 and bf16 operands, interleaved; the best median TFLOP/s of any shape and
library is the "measured GEMM peak" of that dtype. Every throughput is also given as model TFLOP/s
and as % of that peak, with the model's FLOPs counted analytically (:func:`vit_forward_flops`:
2 FLOPs per multiply-add, GEMMs and attention, ~35.1 GFLOP per 224 px image forward, i.e. the
~17.6 GMACs usually quoted; a train step counts 3x the forward). The same count is used for every
implementation, so ours, whose last layer computes only the CLS token, gets no credit for the
work it skips.

``--device cuda`` runs the same on the first GPU (without ``ours+packed``, a oneDNN path), every timed
call between two device synchronisations; the GEMM peak is then cuBLAS's at the same shapes.

Usage::

    python benchmarks/vit_tower.py                               # eager, fp32 and bf16, inference and train
    python benchmarks/vit_tower.py --compile infer,freeze,train  # also the compiled configs (slow to compile)
    python benchmarks/vit_tower.py --reps 3 --json benchmarks/results/vit-tower-....json
    python benchmarks/vit_tower.py --device cuda --batch 128 --reps 10 --impls ours,timm,open_clip
"""

from contextlib import nullcontext
import copy
import json
import os
from pathlib import Path
import platform
import statistics
import time
from typing import Optional
import warnings

from interleave import round_order
from report import OneLineParser, add_keep_freed_memory, apply_keep_freed_memory
import torch
import torch.nn.functional as F

from torchflava.models import clip_vit_b16
from torchflava.modules.layers import linear as linear_mod
from torchflava.modules.layers import pack_linears
from torchflava.utils.checkpoint import atomic_write
from torchflava.utils.cli import int_at_least
from torchflava.utils.precision import bf16_products_in_fp32, bf16_products_region

IMPLS = ("ours", "ours+packed", "ours+fp32gemm", "timm", "timm+fp32gemm", "open_clip")
PEERS = ("timm", "open_clip")
PACKED = "ours+packed"  # bf16 inference only (pack_linears drops the trainable fp32 weights)
# bf16 eager only: the step in torchflava.utils.precision's region (its bf16 products as fp32 GEMMs), as the
# training loop runs bf16 on a CPU without oneDNN's bf16 kernels; timm's too, to show what the region alone does
FP32GEMM = "+fp32gemm"
COMPILE_MODES = ("infer", "freeze", "train")

# ViT-B/16 at 224 px
IMAGE_SIZE, PATCH, WIDTH, LAYERS, MLP = 224, 16, 768, 12, 3072
CPU = torch.device("cpu")
TOKENS = (IMAGE_SIZE // PATCH) ** 2 + 1  # 196 patches + CLS


def vit_forward_flops(
    image_size: int = IMAGE_SIZE, patch: int = PATCH, width: int = WIDTH, layers: int = LAYERS, mlp: int = MLP
) -> dict:
    """Forward FLOPs of one image through a ViT (2 per multiply-add; norms, GELU, softmax and the head left out).

    Returns:
        dict: FLOPs per part and ``total``.
    """
    patches = (image_size // patch) ** 2
    n = patches + 1
    parts = {
        "patch_embedding": 2 * patches * (3 * patch * patch) * width,
        "qkv": layers * 2 * n * width * 3 * width,
        "attention_scores_and_values": layers * 2 * (2 * n * n * width),
        "attention_out": layers * 2 * n * width * width,
        "mlp": layers * 2 * (2 * n * width * mlp),
    }
    parts["total"] = sum(parts.values())
    return parts


def gemm_shapes(batch: int) -> dict:
    """The linear layers of ViT-B/16 at this batch: name -> (M, K, N)."""
    m = batch * TOKENS
    return {"qkv": (m, WIDTH, 3 * WIDTH), "attn_out": (m, WIDTH, WIDTH), "fc1": (m, WIDTH, MLP), "fc2": (m, MLP, WIDTH)}


def gemm_benchmark(
    batch: int, warmup: int, reps: int, dtypes: tuple = ("fp32", "bf16"), device: torch.device = CPU
) -> dict:
    """Median TFLOP/s at each shape, dtype and library, interleaved; and the best per dtype.

    bf16: ``F.linear`` (oneDNN on the CPU). fp32: ``F.linear`` (PyTorch's BLAS) and, on the CPU,
    torchflava's ``linear`` (oneDNN at these shapes); the faster one's figure is the fp32 peak. On
    CUDA both are cuBLAS (``F.linear``; fp32 as PyTorch's default matmul precision says).
    """
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, dtype in [(n, d) for n, d in (("fp32", torch.float32), ("bf16", torch.bfloat16)) if n in dtypes]:
        oneDNN = name == "fp32" and device.type == "cpu"
        kernels = {"F.linear": F.linear} | ({"linear": linear_mod.linear} if oneDNN else {})
        operands = {shape: (x.to(device), w.to(device)) for shape, (x, w) in gemm_operands(batch, dtype, g).items()}
        times = {(shape, kernel): [] for shape in operands for kernel in kernels}
        with torch.inference_mode():
            for rep in range(warmup + reps):
                for (shape, kernel), t in times.items():
                    x, w = operands[shape]
                    synchronize(device)
                    start = time.perf_counter()
                    kernels[kernel](x, w)
                    synchronize(device)
                    elapsed = time.perf_counter() - start
                    if rep >= warmup:
                        t.append(elapsed)
        tflops = {kernel: {} for kernel in kernels}
        for (shape, kernel), t in times.items():
            m, k, n = gemm_shapes(batch)[shape]
            tflops[kernel][shape] = 2 * m * k * n / statistics.median(t) / 1e12
        best = {shape: max(tflops[kernel][shape] for kernel in kernels) for shape in operands}
        out[name] = {"tflops_per_kernel": tflops, "tflops_per_shape": best, "peak_tflops": max(best.values())}
    return out


def gemm_operands(batch: int, dtype: torch.dtype, g: torch.Generator) -> dict:
    """Random (x, weight) of each linear shape, keyed like :func:`gemm_shapes`."""
    return {
        shape: (torch.randn(m, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype))
        for shape, (m, k, n) in gemm_shapes(batch).items()
    }


def build(impl: str):
    """One implementation with random weights (seed 0), in eval mode."""
    torch.manual_seed(0)
    if impl.endswith(FP32GEMM):
        return build(impl.removesuffix(FP32GEMM))
    if impl in ("ours", PACKED):
        model = clip_vit_b16().eval()
        return pack_linears(model) if impl == PACKED else model
    if impl == "timm":
        import timm

        return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).eval()
    if impl == "open_clip":
        import open_clip

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return open_clip.create_model("ViT-B-16", pretrained=None).visual.eval()
    raise ValueError(f"unknown implementation {impl!r}")


def forward_fn(impl: str, model):
    """A one-argument callable: images -> the pooled output, the way that library's users get it."""
    if impl.endswith(FP32GEMM):
        forward = forward_fn(impl.removesuffix(FP32GEMM), model)

        def in_region(images):
            with bf16_products_in_fp32():
                return forward(images)

        return in_region
    if impl in ("ours", PACKED):
        return lambda images: model.encode_image(images, normalize=False)
    return model


def train_loss_fn(forward):
    return lambda images: forward(images).float().pow(2).mean()


def autocast(dtype: str, device: torch.device = CPU):
    return torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that a timer brackets it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def runs_in(impl: str, mode: str, dtype: str, compiled: str) -> bool:
    """Whether this implementation takes part in this config: packed only in bf16 eager inference, the fp32
    GEMMs of bf16 operands in bf16 eager."""
    if impl.endswith(FP32GEMM):
        return dtype == "bf16" and compiled == "eager"
    return impl != PACKED or (mode == "inference" and dtype == "bf16" and compiled == "eager")


def make_steps(models: dict, mode: str, dtype: str, compiled: str) -> dict:
    """impl -> a one-argument step (images) for this config; ``compiled``: "eager", "compile" or "compile+freezing"."""
    steps = {}
    for impl, model in models.items():
        model.train(mode == "train")
        if mode == "inference":
            fn = forward_fn(impl, model)
            steps[impl] = torch.compile(fn) if compiled != "eager" else fn
            continue
        loss_fn = train_loss_fn(forward_fn(impl, model))
        loss_fn = torch.compile(loss_fn) if compiled != "eager" else loss_fn

        def train_step(images, loss_fn=loss_fn, model=model, region=impl.endswith(FP32GEMM)):
            with bf16_products_region(region):  # (the backward's products too, as in the training loop)
                loss = loss_fn(images)
                loss.backward()
            model.zero_grad(set_to_none=True)
            return loss

        steps[impl] = train_step
    return steps


def time_interleaved(steps: dict, images, mode: str, dtype: str, warmup: int, reps: int) -> tuple[dict, dict]:
    """Per-implementation step times (s) after warm-up, interleaved; and the failures (impl -> error)."""
    times, errors = {impl: [] for impl in steps}, {}
    grad = torch.inference_mode() if mode == "inference" else nullcontext()
    with grad:
        for rep in range(warmup + reps):
            for impl in round_order(steps, rep):
                step = steps[impl]
                if impl in errors:
                    continue
                synchronize(images.device)
                start = time.perf_counter()
                try:
                    # an autocast region per step, as the training loop opens one per optimiser step: in
                    # one region for every step, autocast's cached casts of the weights (which require
                    # grad and do not change here) would spare everyone the casts after the first step
                    with autocast(dtype, images.device):
                        step(images)
                    synchronize(images.device)
                except Exception as e:  # a compiled config one library does not support: recorded, not fatal
                    errors[impl] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                    print(f"  {impl}: failed ({errors[impl]})")
                    continue
                elapsed = time.perf_counter() - start
                if rep >= warmup:
                    times[impl].append(elapsed)
                elif rep == 0:
                    print(f"  {impl}: first step {elapsed:.1f} s", flush=True)
    return {impl: t for impl, t in times.items() if impl not in errors}, errors


def machine_name(device: torch.device = CPU) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, {os.cpu_count()} CPUs"
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "",
    )
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def main(argv: Optional[list[str]] = None) -> None:
    parser = OneLineParser(prog="vit_tower.py", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int_at_least(1), default=8)
    parser.add_argument("--reps", type=int_at_least(1), default=3, help="timed batches per implementation and config")
    parser.add_argument(
        "--warmup", type=int_at_least(0), default=1, help="untimed batches first (compiled configs: at least 2)"
    )
    parser.add_argument("--dtype", choices=("fp32", "bf16", "both"), default="both")
    parser.add_argument("--mode", choices=("inference", "train", "both"), default="both")
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of " + ",".join(IMPLS))
    parser.add_argument(
        "--compile",
        default="",
        help="also time compiled configs, comma-separated subset of infer,freeze,train (default: none, eager only)",
    )
    parser.add_argument("--gemm-reps", type=int_at_least(1), default=10)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the first GPU [cpu]")
    parser.add_argument("--json", help="also write the results to this file")
    add_keep_freed_memory(parser)
    args = parser.parse_args(argv)
    impls = args.impls.split(",")
    compile_modes = [c for c in args.compile.split(",") if c]
    if bad := [i for i in impls if i not in IMPLS]:
        parser.error(f"--impls: unknown {bad}, expected a subset of {IMPLS}")
    if bad := [c for c in compile_modes if c not in COMPILE_MODES]:
        parser.error(f"--compile: unknown {bad}, expected a subset of {COMPILE_MODES}")
    if "ours" not in impls or not any(p in impls for p in PEERS):
        parser.error("--impls needs ours and at least one peer")
    if args.device == "cuda" and PACKED in impls:
        parser.error(f"--impls: {PACKED} packs weights for oneDNN, the CPU's library; leave it out with --device cuda")
    if args.device == "cuda" and (bad := [i for i in impls if i.endswith(FP32GEMM)]):
        parser.error(f"--impls: {bad} compute the CPU's bf16 products in fp32; leave them out with --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    apply_keep_freed_memory(args)
    device = torch.device(args.device)
    dtypes = ("fp32", "bf16") if args.dtype == "both" else (args.dtype,)
    modes = ("inference", "train") if args.mode == "both" else (args.mode,)

    flops = vit_forward_flops()
    results = {
        "torch": torch.__version__,
        "machine": machine_name(device),
        "device": device.type,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "batch": args.batch,
        "warmup": args.warmup,
        "reps": args.reps,
        "keep_freed_memory": args.keep_freed_memory,
        "train_step": "forward, loss = out.float().pow(2).mean(), backward, zero_grad(set_to_none=True); no optimiser",
        "forward_flops_per_image": flops,
        "rows": [],
    }
    print(
        f"torch {torch.__version__}, {results['machine']}, {results['threads']} threads, "
        f"cpu capability {results['cpu_capability']}, batch {args.batch}, warm-up {args.warmup}, reps {args.reps}; "
        f"ViT-B/16 forward {flops['total'] / 1e9:.2f} GFLOP per image"
    )

    gemm_before = gemm_benchmark(args.batch, 2, args.gemm_reps, dtypes, device)
    models = {impl: build(impl).to(device) for impl in impls}
    images = torch.randn(args.batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0)).to(device)

    configs = [(mode, dtype, "eager") for mode in modes for dtype in dtypes]
    for kind, mode in (("infer", "inference"), ("freeze", "inference"), ("train", "train")):
        if kind in compile_modes and mode in modes:
            configs += [(mode, dtype, "compile+freezing" if kind == "freeze" else "compile") for dtype in dtypes]
    timings = []
    for mode, dtype, compiled in configs:
        print(f"{mode} {dtype} {compiled} ...", flush=True)
        if compiled != "eager":
            torch._dynamo.reset()
            torch._inductor.config.freezing = compiled == "compile+freezing"
        # freezing folds the weights into constants: give it copies, so later configs see the originals
        config_models = {i: m for i, m in models.items() if runs_in(i, mode, dtype, compiled)}
        if compiled == "compile+freezing":
            config_models = {i: copy.deepcopy(m) for i, m in config_models.items()}
        steps = make_steps(config_models, mode, dtype, compiled)
        warmup = args.warmup if compiled == "eager" else max(args.warmup, 2)
        times, errors = time_interleaved(steps, images, mode, dtype, warmup, args.reps)
        timings.append((mode, dtype, compiled, times, errors))
        torch._inductor.config.freezing = False
    gemm_after = gemm_benchmark(args.batch, 2, args.gemm_reps, dtypes, device)
    gemm = {}
    for dtype in dtypes:
        per_shape = {
            shape: max(gemm_before[dtype]["tflops_per_shape"][shape], gemm_after[dtype]["tflops_per_shape"][shape])
            for shape in gemm_shapes(args.batch)
        }
        gemm[dtype] = {
            "tflops_per_shape_best_of_before_and_after": per_shape,
            "before": gemm_before[dtype]["tflops_per_shape"],
            "after": gemm_after[dtype]["tflops_per_shape"],
            "per_kernel_before": gemm_before[dtype]["tflops_per_kernel"],
            "per_kernel_after": gemm_after[dtype]["tflops_per_kernel"],
            "peak_tflops": max(per_shape.values()),
        }
    results["gemm"] = gemm
    print("\nGEMM, TFLOP/s, best of the runs before and after the models:")
    for dtype in gemm:
        for kernel, before in gemm[dtype]["per_kernel_before"].items():
            after = gemm[dtype]["per_kernel_after"][kernel]
            print(f"  {dtype} {kernel:8}: " + ", ".join(f"{s} {max(before[s], after[s]):.3f}" for s in before))
        print(f"  {dtype} measured peak {gemm[dtype]['peak_tflops']:.3f}")

    print(
        f"\n{'mode':9} {'dtype':5} {'compiled':16} {'impl':13} {'median s':>9} {'images/s':>9} "
        f"{'vs best peer':>12} {'TFLOP/s':>8} {'% peak':>7}"
    )
    for mode, dtype, compiled, times, errors in timings:
        step_flops = flops["total"] * args.batch * (3 if mode == "train" else 1)
        peers = [p for p in PEERS if p in times]
        best = min(peers, key=lambda p: statistics.median(times[p])) if peers else None
        for impl, t in times.items():
            med = statistics.median(t)
            speed = None
            if best is not None and impl not in PEERS:
                speed = statistics.median(a / b for a, b in zip(times[best], t))
            tflops = step_flops / med / 1e12
            row = {
                "mode": mode,
                "dtype": dtype,
                "compiled": compiled,
                "impl": impl,
                "times_s": t,
                "median_s": med,
                "images_per_s": args.batch / med,
                "best_peer": best,
                "speed_vs_best_peer_paired": speed,
                "model_tflops": tflops,
                "pct_of_gemm_peak": 100 * tflops / gemm[dtype]["peak_tflops"],
            }
            results["rows"].append(row)
            print(
                f"{mode:9} {dtype:5} {compiled:16} {impl:13} {med:9.3f} {args.batch / med:9.2f} "
                f"{'' if speed is None else f'{speed:.3f}x':>12} {tflops:8.3f} {row['pct_of_gemm_peak']:6.1f}%"
            )
        for impl, error in errors.items():
            results["rows"].append({"mode": mode, "dtype": dtype, "compiled": compiled, "impl": impl, "error": error})
            print(f"{mode:9} {dtype:5} {compiled:16} {impl:13} failed: {error}")
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2) + "\n"))


if __name__ == "__main__":
    main()
