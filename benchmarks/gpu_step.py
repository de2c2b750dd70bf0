"""GPU readiness (issue #13): FLAVA-full's pretraining step (tokens/s, MFU) and the encoders' throughput on CUDA.

Train step. ``flava_model_for_pretraining(build_codebook=False)`` at FLAVA-full's published sizes
(random weights) takes its codebook ids with the batch, as from the data pipeline (``ours`` in
``pretrain_step.py``). The batch is ``pretrain_step.make_batches(batch=--batch)``: 224 px images with
75 of 196 patches masked, 77-token captions with real lengths cycling through 52/35/20/41 and 15%
of their real tokens masked, ITM labels cycling through 1,1,1,0. One step = the forward of each
``--kinds`` batch built from it (default ``pair``: the contrastive, ITM, MMM-image and MMM-text
losses; ``pair,image,text`` is ``pretrain_step.py``'s "all6"), their losses summed, one backward,
the AdamW step (``fused=True`` on CUDA; the recipe's parameter groups, weight decay 0.1) and
``zero_grad``. Run as one process.

Configs (``--configs``, all in bf16, timed one after the other; the compiled ones after the others
and after the eager encoders, so that a run cut short keeps the quick figures): ``eager``, or a
``+``-joined set of

- ``fsdp``: FSDP2 through ``wrap_model(model, "fsdp", layer_types=(TransformerEncoderLayer,),
  param_dtype=torch.bfloat16)`` on a one-process group (NCCL on CUDA, Gloo on the CPU; an
  in-process store, so no port) that the script starts unless one is running. bf16 is then FSDP's
  parameter dtype and there is no autocast, as in the training loop; without ``fsdp`` it is
  ``torch.autocast(bfloat16)``.
- ``compile``: ``compile_blocks``, the training loop's ``training.compile`` (each transformer layer's
  forward compiled, the model's glue eager). It is applied after FSDP's ``fully_shard`` here (the
  loop compiles first): only ``forward`` is replaced, so the order does not change what runs.
- ``selective`` or ``full``: ``set_activation_checkpointing``. With ``compile``, selective checkpointing
  is compiled into each layer's graph (its policy applied by the compiler, not op by op at run time).

A config that raises a RuntimeError (out of memory, a compile failure, ...) is reported as failed,
with the error's first line, and the next one runs. ``--configs none`` times only the encoders.

Figures per config:

- step time: the median of ``--steps`` steps after ``--warmup`` untimed ones (at least 2 for compiled
  configs, whose first step compiles), each step between two device synchronisations, timed with
  ``time.perf_counter``; the first warm-up step's time is reported too (it includes compiling).
- samples/s = B / step time (each of the B samples once, however many kinds' batches hold it).
- tokens/s = tokens per step / step time. Tokens per step are the step's input tokens: for each kind's
  batch, 196 image patches per image (CLS and mask tokens not counted) and the real tokens of each
  caption ([CLS] and [SEP] included, padding not), counted once per kind however many encoder
  passes read them. For the default 32 pairs: 32 x 196 + 32 x 37 = 7456.
- model FLOPs per step: ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward of
  the step (no optimiser step) on the eager model without checkpointing, counted once: matmuls,
  convolutions and attention, 2 FLOPs per multiply-add (norms, activations, softmax and the optimiser
  are not counted). The same figure serves every config. Executed FLOPs: the same count on each
  config's own model (before compiling), which adds what full checkpointing recomputes in backward:
  each layer's forward but its last matmul (MLP fc2; the non-reentrant checkpoint stops recomputing
  once backward has what it needs). Selective checkpointing recomputes only uncounted work (norms,
  GELU, residual adds), so its executed FLOPs are the model's.
- TFLOP/s = model FLOPs / step time, and MFU = TFLOP/s / peak: recomputation earns no credit, so a
  checkpointed config's MFU is lower at the same hardware efficiency (executed TFLOP/s shows that).
  Peak: ``--peak-tflops``, else :data:`DATASHEET_BF16_TFLOPS` for the device's name. A measured peak
  is printed beside it: a bf16 ``--gemm-size`` cubed matmul (``--gemm-inner`` matmuls per timed
  sample, the median of 10 samples), and MFU is given against both.
- peak memory: ``torch.cuda.max_memory_allocated``, reset before the config puts its model on the
  device: weights, gradients, AdamW states and activations (on the CPU: not measured).

Encoders: ``encode_image`` and ``encode_text`` of FLAVA-full (``flava_model()``) and CLIP ViT-B/16
(``clip_vit_b16()``) on ``encoders.make_inputs`` / ``encoders.make_clip_inputs`` batches of
``--encoder-batch`` (224 px images; 77-token captions, FLAVA's with real lengths 20..60, CLIP's
8..40), under ``torch.inference_mode`` and bf16 autocast, eager and ``torch.compile``-d (a
compiled FLAVA ``encode_text`` runs the padded batch, the eager one packs the real tokens); items/s
= batch / median time per batch.

``--tiny`` swaps in a FLAVA and a CLIP smaller than ``examples/flava/configs/pretraining/tiny.yaml``'s
(64 wide, 2 + 2 + 1 layers) at the same input shapes: with ``--device cpu`` it runs every code
path on a machine without CUDA, so that the script cannot rot (its figures mean nothing). On the
CPU, FlopCounterMode is given the formula of the CPU attention kernel it lacks.

Usage::

    python benchmarks/gpu_step.py --json benchmarks/results/gpu_step-h100-pt2.14.1-YYYYMMDD.json
    python benchmarks/gpu_step.py --configs eager,fsdp+compile --batch 64 --encoder-modes eager
    python benchmarks/gpu_step.py --device cpu --tiny --batch 4 --steps 2 --configs eager,fsdp
"""

import argparse
from contextlib import nullcontext
import copy
import datetime
import functools
import gc
import json
import math
from pathlib import Path
import platform
import statistics
import sys
import time
from typing import Callable, NamedTuple, Optional

from encoders import embed_fn, make_clip_inputs, make_inputs
from pretrain_step import loss_fn, make_batches
from report import OneLineParser
import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from torchflava.models import clip_model, clip_vit_b16, flava_model, flava_model_for_pretraining
from torchflava.modules.layers import TransformerEncoderLayer, set_activation_checkpointing
from torchflava.training.distributed import sync_replicated_grads, wrap_model
from torchflava.training.loop import compile_blocks
from torchflava.training.optim import param_groups
from torchflava.utils.checkpoint import atomic_write
from torchflava.utils.cli import int_at_least

FLAGS = ("fsdp", "compile", "selective", "full")
DEFAULT_CONFIGS = "eager,selective,full,fsdp,fsdp+selective,fsdp+full,compile,compile+selective,fsdp+compile"
ENCODER_MODES = ("eager", "compile")
KINDS = ("pair", "image", "text")
COMPILED_WARMUP = 2  # the first step compiles (and recompiles the lengths it meets again as dynamic)

# The smoke mode's models: half tiny.yaml's width (64) and fewer layers (2 + 2 + 1), so that a CPU runs a
# step in a fraction of a second; the input shapes stay the benchmark's (224 px, 16 px patches, 77 tokens).
TINY_FLAVA = dict(
    image_embed_dim=64,
    image_num_layers=2,
    image_num_heads=2,
    image_mlp_dim=256,
    text_embed_dim=64,
    text_num_layers=2,
    text_num_heads=2,
    text_mlp_dim=256,
    multimodal_embed_dim=64,
    multimodal_num_layers=1,
    multimodal_num_heads=2,
    multimodal_mlp_dim=256,
    projection_dim=64,
)
TINY_CLIP = dict(
    embed_dim=64,
    vision_width=64,
    vision_layers=2,
    vision_heads=2,
    vision_mlp_dim=256,
    text_width=64,
    text_layers=2,
    text_heads=2,
    text_mlp_dim=256,
)

# Dense bf16 tensor-core peaks, TFLOP/s: NVIDIA's datasheet figures without sparsity (half the starred
# sparse ones), by the model in torch.cuda.get_device_name(). H100 / H200 NVL are left out (their
# per-GPU figure differs between datasheet revisions): pass --peak-tflops for them and anything else.
DATASHEET_BF16_TFLOPS = {
    "H100 SXM": 989.4,
    "H100 PCIe": 756.0,
    "H200 SXM": 989.4,
    "A100": 312.0,
    "A30": 165.0,
    "A10": 125.0,
    "L40S": 362.05,
    "L40": 181.05,
    "L4": 121.0,
}


class Config(NamedTuple):
    """One timed train-step configuration."""

    name: str
    fsdp: bool
    compile: bool
    checkpointing: str  # "none", "selective" or "full"


def parse_config(name: str) -> Config:
    """``eager`` or a ``+``-joined set of :data:`FLAGS` (at most one of selective, full); ValueError otherwise."""
    flags = [] if name == "eager" else name.split("+")
    if not set(flags) <= set(FLAGS) or len(set(flags)) < len(flags):
        raise ValueError(f"unknown config {name!r}: 'eager' or a '+'-joined set of {', '.join(FLAGS)}")
    if {"selective", "full"} <= set(flags):
        raise ValueError(f"config {name!r} names both selective and full checkpointing")
    mode = "full" if "full" in flags else "selective" if "selective" in flags else "none"
    return Config(name, "fsdp" in flags, "compile" in flags, mode)


def datasheet_peak(device_name: str) -> tuple[Optional[float], Optional[str]]:
    """The dense bf16 datasheet peak (TFLOP/s) of a CUDA device by its name, and which entry; (None, None) if unknown."""
    words = [w for w in device_name.replace("-", " ").split() if w != "NVIDIA"]
    if not words:
        return None, None
    key = words[0]
    if key in ("H100", "H200"):
        if "NVL" in words:
            return None, None
        key += " PCIe" if "PCIe" in words else " SXM"
    tflops = DATASHEET_BF16_TFLOPS.get(key)
    return (tflops, f"datasheet {key}") if tflops is not None else (None, None)


# ------------------------------------------------------------------------------------------ arguments
def _positive(kind: type) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


_non_negative_int = int_at_least(0)


def _configs(text: str) -> list[Config]:
    if text == "none":
        return []
    try:
        configs = [parse_config(name.strip()) for name in text.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    flags = [(c.fsdp, c.compile, c.checkpointing) for c in configs]
    if len(set(flags)) < len(flags):
        raise argparse.ArgumentTypeError(f"names a config twice: {text!r}")
    return configs


def _choices(allowed: tuple[str, ...], none_ok: bool) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        if none_ok and text == "none":
            return []
        names = [name.strip() for name in text.split(",")]
        if not names or not set(names) <= set(allowed) or len(set(names)) < len(names):
            extra = " or none" if none_ok else ""
            raise argparse.ArgumentTypeError(f"expected distinct names from {', '.join(allowed)}{extra}, got {text!r}")
        return names

    return parse


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = OneLineParser(prog="gpu_step.py", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny FLAVA and CLIP (the CPU smoke mode)")
    parser.add_argument("--configs", type=_configs, default=_configs(DEFAULT_CONFIGS), help=f"[{DEFAULT_CONFIGS}]")
    parser.add_argument("--kinds", type=_choices(KINDS, False), default=["pair"], help="batch kinds per step [pair]")
    parser.add_argument("--batch", type=_positive(int), default=32, help="samples per kind's batch [32]")
    parser.add_argument("--steps", type=_positive(int), default=10, help="timed steps per config [10]")
    parser.add_argument("--warmup", type=_non_negative_int, default=3, help="untimed steps first [3]")
    parser.add_argument("--peak-tflops", type=_positive(float), help="peak for MFU [datasheet table]")
    parser.add_argument("--gemm-size", type=_positive(int), help="n of the n^3 GEMM [8192; 1024 on the CPU]")
    parser.add_argument("--gemm-inner", type=_positive(int), default=10, help="matmuls per timed GEMM sample [10]")
    parser.add_argument("--encoder-batch", type=_positive(int), default=256, help="[256]")
    parser.add_argument(
        "--encoder-modes", type=_choices(ENCODER_MODES, True), default=list(ENCODER_MODES), help="[eager,compile]"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write every figure here")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------ measuring
def _attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode has formulas for the CUDA attention kernels (flash, efficient, cuDNN), not the CPU one.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward_flops,
}


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts the CPU attention kernel."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of the matmuls, convolutions and attention that ``fn()`` runs."""
    with flop_counter() as counter:
        fn()
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, *, warmup: int, reps: int) -> tuple[list, list]:
    """Seconds of each of ``warmup`` then ``reps`` calls of ``fn``, each between two device synchronisations."""
    times = []
    for _ in range(warmup + reps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times[:warmup], times[warmup:]


def gemm_tflops(device: torch.device, size: int, inner: int) -> float:
    """Measured bf16 peak: TFLOP/s of ``inner`` back-to-back (size x size) @ (size x size) matmuls, median of 10."""
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    out = torch.empty_like(a)

    def matmuls() -> None:
        for _ in range(inner):
            torch.mm(a, b, out=out)

    _, times = timed(matmuls, device, warmup=2, reps=10)
    return 2 * size**3 * inner / statistics.median(times) / 1e12


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ train step
def build_pretraining(tiny: bool, seed: int):
    """FLAVA-full (or the tiny FLAVA) with its pretraining heads and no codebook, on the CPU, train mode."""
    torch.manual_seed(seed)
    backbone = flava_model(**TINY_FLAVA) if tiny else flava_model()
    return flava_model_for_pretraining(backbone=backbone, build_codebook=False).train()


def forward_backward_fn(model, data: dict, kinds: list[str], precision) -> Callable[[], None]:
    """One forward of each kind's batch under ``precision`` (a context), the losses summed, one backward."""
    losses = [loss_fn("ours", model, kind, data) for kind in kinds]

    def forward_backward() -> None:
        with precision:
            loss = sum(loss() for loss in losses)
        loss.backward()

    return forward_backward


def tokens_per_step(data: dict, kinds: list[str]) -> dict:
    """The step's input tokens: image patches of the kinds with images, real text tokens of those with text."""
    images = data["image"].shape[0] * data["tokens"].shape[1]  # (B, N) codebook ids: one per patch
    text = int(data["mask"].sum())
    counts = {
        "image_patches": sum(images for kind in kinds if kind in ("pair", "image")),
        "text_tokens": sum(text for kind in kinds if kind in ("pair", "text")),
    }
    counts["total"] = counts["image_patches"] + counts["text_tokens"]
    return counts


def bf16(config: Config, device: torch.device):
    """Autocast, unless FSDP's mixed precision already computes in bf16."""
    return nullcontext() if config.fsdp else torch.autocast(device.type, dtype=torch.bfloat16)


def run_config(config: Config, template, data: dict, args, device: torch.device) -> dict:
    """Put a copy of ``template`` on the device as ``config`` says, count its FLOPs, time its steps."""
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = copy.deepcopy(template).to(device)
    set_activation_checkpointing(model, config.checkpointing)
    if config.fsdp:
        model = wrap_model(model, "fsdp", layer_types=(TransformerEncoderLayer,), param_dtype=torch.bfloat16)
    forward_backward = forward_backward_fn(model, data, args.kinds, bf16(config, device))
    executed = count_flops(forward_backward)
    model.zero_grad(set_to_none=True)
    if config.compile:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        compile_blocks(model, (TransformerEncoderLayer,))
    optimizer = torch.optim.AdamW(
        param_groups(model, weight_decay=0.1), lr=1e-4, fused=True if device.type == "cuda" else None
    )

    def step() -> None:
        forward_backward()
        sync_replicated_grads(model)  # FSDP's replicated scalars, as the loop does (a no-op otherwise)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    warmup = max(args.warmup, COMPILED_WARMUP) if config.compile else args.warmup
    warm, times = timed(step, device, warmup=warmup, reps=args.steps)
    row = dict(config._asdict(), first_step_s=warm[0] if warm else None, step_times_s=times, executed_flops=executed)
    if config.compile:
        counters = torch._dynamo.utils.counters
        row.update(
            compiled_graphs=counters["stats"]["unique_graphs"], graph_breaks=sum(counters["graph_break"].values())
        )
    row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return row  # the model and optimiser go with this frame; guarded() frees the cache


def step_figures(row: dict, batch: int, tokens: int, model_flops: int, peak: Optional[float], gemm: float) -> dict:
    """Median step time and the rates derived from it."""
    median = statistics.median(row["step_times_s"])
    tflops = model_flops / median / 1e12
    return dict(
        median_step_s=median,
        min_step_s=min(row["step_times_s"]),
        max_step_s=max(row["step_times_s"]),
        samples_per_s=batch / median,
        tokens_per_s=tokens / median,
        model_flops=model_flops,
        achieved_tflops=tflops,
        executed_tflops=row["executed_flops"] / median / 1e12,
        mfu=None if peak is None else tflops / peak,
        mfu_vs_measured_gemm=tflops / gemm,
    )


# ------------------------------------------------------------------------------------------ encoders
def build_encoders(args) -> list[tuple[str, torch.nn.Module, dict]]:
    """FLAVA and CLIP (or the tiny ones) in eval mode on the CPU, each with its input batch."""
    torch.manual_seed(args.seed)
    flava = (flava_model(**TINY_FLAVA) if args.tiny else flava_model()).eval()
    clip = (clip_model(**TINY_CLIP) if args.tiny else clip_vit_b16()).eval()
    return [
        ("flava", flava, make_inputs(args.encoder_batch, args.seed)),
        ("clip_vit_b16", clip, make_clip_inputs(args.encoder_batch, args.seed)),
    ]


def encoder_rows(args, modes: list[str], device: torch.device, encoders: list):
    """Yield, per model, modality and mode, the row's name and a zero-argument timing of its batches."""
    for name, model, inputs in encoders:
        for modality in ("image", "text"):
            for mode in modes:
                yield (
                    dict(model=name, modality=modality, mode=mode),
                    functools.partial(time_encoder, embed_fn("ours", model, modality, inputs), mode, args, device),
                )


def time_encoder(fn: Callable[[], object], mode: str, args, device: torch.device) -> dict:
    """Items/s of ``fn`` (one batch of features), eager or compiled, in bf16 inference."""
    if mode == "compile":
        torch._dynamo.reset()
        fn = torch.compile(fn)
    warmup = max(args.warmup, COMPILED_WARMUP) if mode == "compile" else args.warmup
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        warm, times = timed(fn, device, warmup=warmup, reps=args.steps)
    median = statistics.median(times)
    return dict(
        first_call_s=warm[0] if warm else None,
        median_s=median,
        items_per_s=args.encoder_batch / median,
        times_s=times,
    )


# ------------------------------------------------------------------------------------------ main
def start_process_group(device: torch.device) -> bool:
    """A one-process group for FSDP2 (NCCL on CUDA, Gloo on the CPU, in-process store); False if one runs."""
    if dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    device_id = device if device.type == "cuda" else None
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, device_id=device_id)
    return True


def describe(device: torch.device) -> dict:
    """The device's name and memory, torch / CUDA / cuDNN versions and the date."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name, memory = props.name, props.total_memory / 2**30
    else:
        name, memory = platform.processor() or platform.machine(), None
    return dict(
        device=name,
        device_type=device.type,
        device_memory_gib=memory,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None,
        date=datetime.date.today().isoformat(),
    )


def guarded(row: dict, measure: Callable[[], dict], device: torch.device) -> dict:
    """``row`` with what ``measure()`` returns, or with ``error`` when it raises a RuntimeError (out of
    memory, a compile failure, ...): one config failing does not end the run."""
    try:
        row.update(measure())
    except RuntimeError as error:
        row["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        torch._dynamo.reset()
    free_memory(device)
    return row


def _fmt(value: Optional[float], spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}{spec}}"


STEP_HEADER = (
    f"{'config':22} {'step ms':>9} {'samples/s':>10} {'tokens/s':>11} {'TFLOP/s':>8} {'exec':>8} "
    f"{'MFU %':>7} {'gemm %':>7} {'peak GiB':>9} {'1st s':>7}"
)
ENCODER_HEADER = f"{'model':13} {'modality':8} {'mode':8} {'ms/batch':>9} {'items/s':>9} {'1st s':>7}"


def step_line(row: dict) -> str:
    if "error" in row:
        return f"{row['name']:22} failed: {row['error']}"
    return (
        f"{row['name']:22} {row['median_step_s'] * 1e3:9.1f} {row['samples_per_s']:10.1f} "
        f"{row['tokens_per_s']:11.0f} {row['achieved_tflops']:8.3f} {row['executed_tflops']:8.3f} "
        + _fmt(None if row["mfu"] is None else 100 * row["mfu"], ".1f", 7)
        + f" {100 * row['mfu_vs_measured_gemm']:7.1f} "
        + _fmt(row["peak_memory_gib"], ".2f", 9)
        + " "
        + _fmt(row["first_step_s"], ".1f", 7)
    )


def encoder_line(row: dict) -> str:
    name = f"{row['model']:13} {row['modality']:8} {row['mode']:8}"
    if "error" in row:
        return f"{name} failed: {row['error']}"
    return f"{name} {row['median_s'] * 1e3:9.1f} {row['items_per_s']:9.1f} " + _fmt(row["first_call_s"], ".1f", 7)


def train_step_section(
    args, configs: list[Config], device: torch.device, results: dict, save, template, data: dict
) -> None:
    """Count the model FLOPs (once per run), then time each config; rows go to ``results["configs"]``."""
    tokens = results["tokens_per_step"] = tokens_per_step(data, args.kinds)
    if "model_flops_per_step" not in results:
        model = copy.deepcopy(template).to(device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
        results["model_flops_per_step"] = count_flops(forward_backward_fn(model, data, args.kinds, autocast))
        del model
    flops = results["model_flops_per_step"]
    print(
        f"train step: {args.batch} samples, kinds {','.join(args.kinds)}: {tokens['total']} tokens "
        f"({tokens['image_patches']} image patches + {tokens['text_tokens']} text tokens), "
        f"{flops / 1e12:.4f} model TFLOP; {args.steps} timed steps after {args.warmup} "
        f"(compiled: {max(args.warmup, COMPILED_WARMUP)})"
    )
    print(STEP_HEADER)
    owns_group = any(c.fsdp for c in configs) and start_process_group(device)
    try:
        for config in configs:

            def measure(config: Config = config) -> dict:
                row = run_config(config, template, data, args, device)
                gemm = results["gemm"]["tflops"]
                return dict(row, **step_figures(row, args.batch, tokens["total"], flops, results["peak_tflops"], gemm))

            results["configs"].append(guarded(config._asdict(), measure, device))
            print(step_line(results["configs"][-1]), flush=True)
            save()
    finally:
        if owns_group:
            dist.destroy_process_group()


def encoder_section(args, modes: list[str], device: torch.device, results: dict, save, encoders: list) -> None:
    """Time the encoders in each mode; rows go to ``results["encoders"]``. The models (built on the CPU)
    are on the device only during the section, so the train-step configs' peak memory never holds them."""
    print(f"encoders: bf16 inference, batch {args.encoder_batch}")
    print(ENCODER_HEADER)
    on_device = [
        (name, model.to(device), {k: v.to(device) for k, v in inputs.items()}) for name, model, inputs in encoders
    ]
    try:
        for row, measure in encoder_rows(args, modes, device, on_device):
            results["encoders"].append(guarded(dict(row, batch=args.encoder_batch), measure, device))
            print(encoder_line(results["encoders"][-1]), flush=True)
            save()
    finally:
        del on_device
        for _, model, _ in encoders:
            model.to("cpu")
        free_memory(device)


def main(argv: Optional[list[str]] = None) -> dict:
    """Run the benchmark (see the module docstring): the uncompiled train-step configs and encoders
    first, the compiled ones last, so that a run cut short keeps the figures that are quick to get.

    Args:
        argv (Optional[list[str]]): the command line; ``sys.argv[1:]`` when None.

    Returns:
        dict: every figure, as ``--json`` writes them (after every row).

    Raises:
        SystemExit: status 2 on a bad argument, or without CUDA unless ``--device cpu``.
    """
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.stderr.write(
            "gpu_step.py: error: CUDA is required (no CUDA device is available); "
            "on a machine without one run the smoke mode: --device cpu --tiny\n"
        )
        raise SystemExit(2)
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    began = time.perf_counter()
    results = dict(describe(device), tiny=args.tiny, kinds=args.kinds, batch=args.batch, steps=args.steps)
    results.update(warmup=args.warmup, seed=args.seed, encoder_batch=args.encoder_batch, configs=[], encoders=[])

    def save() -> None:  # after every row, so that a run cut short keeps what it measured
        if args.json:
            atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2) + "\n"))

    size = args.gemm_size or (8192 if device.type == "cuda" else 1024)
    results["gemm"] = dict(size=size, inner=args.gemm_inner, tflops=gemm_tflops(device, size, args.gemm_inner))
    if args.peak_tflops is not None:
        results.update(peak_tflops=args.peak_tflops, peak_source="--peak-tflops")
    else:
        peak, source = datasheet_peak(results["device"]) if device.type == "cuda" else (None, None)
        results.update(peak_tflops=peak, peak_source=source)
    print(
        f"{results['device']} ({device.type}), torch {results['torch']}, CUDA {results['cuda']}, "
        f"{'tiny models' if args.tiny else 'FLAVA-full and CLIP ViT-B/16'}, bf16"
    )
    print(
        f"peak: {_fmt(results['peak_tflops'], '.1f', 0)} TFLOP/s ({results['peak_source'] or 'unknown: --peak-tflops'}); "
        f"measured bf16 GEMM ({size}^3): {results['gemm']['tflops']:.3f} TFLOP/s"
    )
    # Built once, on first use, for the uncompiled and the compiled sections alike.
    template = data = encoders = None
    for compiled in (False, True):
        configs = [config for config in args.configs if config.compile == compiled]
        modes = [mode for mode in args.encoder_modes if (mode == "compile") == compiled]
        if configs:
            if template is None:
                data = {key: value.to(device) for key, value in make_batches(args.seed, batch=args.batch).items()}
                template = build_pretraining(args.tiny, args.seed)
            train_step_section(args, configs, device, results, save, template, data)
        if modes:
            encoders = encoders or build_encoders(args)
            encoder_section(args, modes, device, results, save, encoders)
    results["wall_s"] = time.perf_counter() - began
    save()
    print(f"done in {results['wall_s']:.0f} s" + (f"; figures in {args.json}" if args.json else ""))
    return results


if __name__ == "__main__":
    main()
