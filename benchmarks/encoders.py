"""Embedding throughput and peak memory: torchflava against its peers, FLAVA-full or CLIP ViT-B/16, CPU.

``--model flava`` (the default):

Peers: Hugging Face transformers' ``FlavaModel`` (``get_image_features`` / ``get_text_features``)
and, when installed, torchmultimodal's ``FLAVAModel`` (``encode_image`` / ``encode_text`` with
projection). Ours: ``FLAVAModel.encode_image`` / ``encode_text``, as built (``ours``) and, in bf16
runs, after ``pack_linears`` (``ours+packed``: the linear weights cast to bf16 and packed for
oneDNN once, instead of on every call by autocast). Everyone gets the same inputs:
B images of 224 px, and B captions padded to 77 tokens with real lengths spread over 20..60.
Ours and HF's share the same weights (converted), and the script checks that their features agree.

``--model clip``: CLIP ViT-B/16 (open_clip's ``ViT-B-16`` config, exact GELU) against transformers'
``CLIPModel`` (``get_image_features`` / ``get_text_features``) and open_clip's ``CLIP``
(``encode_image`` / ``encode_text``), all three on the same (random) weights. Texts: B captions of
realistic length (``[BOS] words [EOS]``, 8..40 tokens, about COCO's spread), padded with zeros to 77
for open_clip (which takes only 77) and for ours (given the mask too), and to the longest caption
for HF (what its tokenizer's ``padding=True`` gives).

Timing: ``torch.inference_mode``, warm-up, then the implementations interleaved batch by batch
(A B C, B C A, ...: the order rotates), medians reported with the per-batch ratio peer/ours. ``--dtype bf16`` runs every
implementation under the same ``torch.autocast("cpu", bfloat16)``; on a CPU without oneDNN's bf16 kernels (AVX2
only) ours runs as the library's bf16 runs there, its bf16 products as fp32 GEMMs of the bf16 operands
(``torchflava.utils.precision``), the peers on PyTorch's bf16 kernels, as their users run them.

Memory: each implementation runs alone in a fresh process; after building the model and one
warm-up batch the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``), so the figure is
the peak resident memory while embedding (weights included), in MiB: the median of
``--memory-runs`` such processes (3 by default; one process's figure moves by tens of MiB from run
to run with where the allocator's pages land), all of which are kept in the JSON. Beside it, "live
MiB": the most memory one embedding call holds in use at once (after any op), above what was in
use before the call, read from glibc's ``mallinfo2`` (:func:`live_peak_mib`): what the
implementation itself needs, without the freed pages an allocator keeps.

CLIP images, ``--model clip``: the same run also times ``F.linear`` at ViT-B/16's linear shapes
(``vit_tower.gemm_benchmark``) before the models, and gives each image throughput as model TFLOP/s
(``vit_tower.vit_forward_flops``, the same count for every implementation) and as % of that
measured GEMM peak: how close to the machine's limit each implementation already is.

Usage::

    python benchmarks/encoders.py                      # FLAVA, fp32 and bf16, both modalities
    python benchmarks/encoders.py --model clip         # CLIP ViT-B/16 against HF and open_clip
    python benchmarks/encoders.py --dtype fp32 --reps 20 --json results.json
"""

import argparse
from contextlib import nullcontext
import ctypes
import gc
import json
from pathlib import Path
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Optional

from interleave import round_order
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from vit_tower import gemm_benchmark, vit_forward_flops

from torchflava.models import clip_vit_b16, flava_model
from torchflava.models.clip import convert_to_hf as clip_to_hf
from torchflava.models.clip import convert_to_torchflava as clip_to_torchflava
from torchflava.models.flava.convert_weights import convert_to_torchflava
from torchflava.modules.layers import pack_linears
from torchflava.pretrained import inference_precision

IMPLS = ("ours", "ours+packed", "hf", "tmm")
CLIP_IMPLS = ("ours", "ours+packed", "hf", "open_clip")
PEERS = ("hf", "tmm", "open_clip")
# "ours+packed": ours after torchflava.modules.layers.pack_linears (bf16 weights cast and packed for
# oneDNN once, instead of on every call under autocast); bf16 runs only, as it computes in bf16.
PACKED = "ours+packed"


def have_tmm() -> bool:
    try:
        import torchmultimodal.models.flava.model  # noqa: F401
    except ImportError:
        return False
    return True


def make_inputs(batch: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 224, 224, generator=g)
    lengths = torch.linspace(20, 60, batch).round().long()
    ids = torch.randint(1000, 30000, (batch, 77), generator=g)
    ids[:, 0] = 101  # [CLS]
    mask = (torch.arange(77)[None, :] < lengths[:, None]).long()
    ids[torch.arange(batch), lengths - 1] = 102  # [SEP]
    return {"images": images, "ids": ids * mask, "mask": mask}


def make_clip_inputs(batch: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 224, 224, generator=g)
    lengths = torch.linspace(8, 40, batch).round().long()[torch.randperm(batch, generator=g)]
    ids = torch.randint(1, 49405, (batch, 77), generator=g)
    mask = (torch.arange(77)[None, :] < lengths[:, None]).long()
    ids[:, 0] = 49406  # <start_of_text>
    ids = ids * mask
    ids[torch.arange(batch), lengths - 1] = 49407  # <end_of_text>
    longest = int(lengths.max())
    return {"images": images, "ids": ids, "mask": mask, "hf_ids": ids[:, :longest], "hf_mask": mask[:, :longest]}


def build_clip(impl: str, same_weights: bool = True):
    """CLIP ViT-B/16; with ``same_weights``, every implementation on open_clip's random weights (seed 0)."""
    import open_clip
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    if impl == "open_clip" or same_weights:
        reference = open_clip.create_model("ViT-B-16", pretrained=None).eval()
        if impl == "open_clip":
            return reference
    ours = clip_vit_b16()
    if same_weights:
        ours.load_state_dict(clip_to_torchflava(reference.state_dict(), ours))
    if impl == "hf":
        gelu = dict(hidden_act="gelu")  # open_clip's ViT-B-16 config
        hf = CLIPModel(CLIPConfig(text_config=gelu, vision_config=dict(gelu, patch_size=16), projection_dim=512))
        if same_weights:
            hf.load_state_dict(clip_to_hf(ours.state_dict()), strict=True)
        return hf.eval()
    return pack_linears(ours.eval()) if impl == PACKED else ours.eval()


def build(impl: str, hf_state: dict | None = None, model: str = "flava"):
    """Build one implementation at FLAVA-full size (ours takes HF's weights when given), or CLIP ViT-B/16."""
    if model == "clip":
        return build_clip(impl, same_weights=False)
    torch.manual_seed(0)
    if impl in ("ours", PACKED):
        model = flava_model()
        if hf_state is not None:
            converted, _ = convert_to_torchflava(hf_state, model, layout="hf")
            model.load_state_dict(converted)
        if impl == PACKED:
            return pack_linears(model.eval())
    elif impl == "hf":
        from transformers import FlavaConfig, FlavaModel

        model = FlavaModel(FlavaConfig())
    elif impl == "tmm":
        from torchmultimodal.models.flava.model import flava_model as tmm_flava_model

        model = tmm_flava_model()
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    return model.eval()


def embed_fn(impl: str, model, modality: str, inputs: dict):
    """A zero-argument callable computing normalised features the way that library's users do."""
    images, ids, mask = inputs["images"], inputs["ids"], inputs["mask"]
    if "hf_ids" in inputs:  # CLIP
        if impl in ("ours", PACKED):
            return (lambda: model.encode_image(images)) if modality == "image" else lambda: model.encode_text(ids, mask)
        if impl == "open_clip":
            if modality == "image":
                return lambda: model.encode_image(images, normalize=True)
            return lambda: model.encode_text(ids, normalize=True)
        if modality == "image":
            return lambda: F.normalize(model.get_image_features(pixel_values=images), dim=-1)
        hf_ids, hf_mask = inputs["hf_ids"], inputs["hf_mask"]
        return lambda: F.normalize(model.get_text_features(input_ids=hf_ids, attention_mask=hf_mask), dim=-1)
    if impl in ("ours", PACKED):
        if modality == "image":
            return lambda: model.encode_image(images)
        return lambda: model.encode_text(ids, mask)
    if impl == "hf":
        if modality == "image":
            return lambda: F.normalize(model.get_image_features(pixel_values=images)[:, 0], dim=-1)
        return lambda: F.normalize(model.get_text_features(input_ids=ids, attention_mask=mask)[:, 0], dim=-1)
    if modality == "image":
        return lambda: F.normalize(model.encode_image(images, projection=True)[1], dim=-1)
    return lambda: F.normalize(model.encode_text(ids, projection=True)[1], dim=-1)


def autocast(dtype: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def as_the_library_runs(impl: str, dtype: str, model, fn):
    """``fn``, for ours in bf16 in the region the library's bf16 inference runs in
    (``torchflava.pretrained.inference_precision``: on a CPU without oneDNN's bf16 kernels its bf16 products as
    fp32 GEMMs of the bf16 operands); the peers' as their users run them, under autocast alone."""
    if impl not in ("ours", PACKED) or dtype != "bf16":
        return fn

    def in_region():
        with inference_precision(model, torch.bfloat16):
            return fn()

    return in_region


def time_interleaved(models: dict, inputs: dict, modality: str, dtype: str, warmup: int, reps: int) -> dict:
    fns = {
        impl: as_the_library_runs(impl, dtype, m, embed_fn(impl, m, modality, inputs))
        for impl, m in models.items()
        if dtype == "bf16" or impl != PACKED
    }
    times = {impl: [] for impl in fns}
    with torch.inference_mode(), autocast(dtype):
        for rep in range(warmup + reps):
            for impl in round_order(fns, rep):
                start = time.perf_counter()
                fns[impl]()
                elapsed = time.perf_counter() - start
                if rep >= warmup:
                    times[impl].append(elapsed)
    return times


def check_agreement(models: dict, inputs: dict, peer: str = "hf") -> dict:
    """Max abs difference between our features and a peer's (same weights): fp32, and under bf16 autocast."""
    out = {}
    for dtype in ("fp32", "bf16"):
        with torch.inference_mode(), autocast(dtype):
            for modality in ("image", "text"):
                reference = embed_fn(peer, models[peer], modality, inputs)().float()
                for impl in ("ours", PACKED) if dtype == "bf16" else ("ours",):
                    if impl in models:
                        ours = as_the_library_runs(
                            impl, dtype, models[impl], embed_fn(impl, models[impl], modality, inputs)
                        )()
                        ours = ours.float()
                        out[f"{impl} {modality} {dtype}"] = float((ours - reference).abs().max())
    return out


def peak_rss_child(impl: str, modality: str, dtype: str, batch: int, reps: int, model_name: str = "flava") -> None:
    """Run in a fresh process: build, warm up, reset the peak counter, embed, print peak RSS and live peak (MiB)."""
    model = build(impl, model=model_name)  # random weights: memory does not depend on their values
    inputs = make_clip_inputs(batch) if model_name == "clip" else make_inputs(batch)
    fn = as_the_library_runs(impl, dtype, model, embed_fn(impl, model, modality, inputs))
    with torch.inference_mode(), autocast(dtype):
        fn()
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        for _ in range(reps):
            fn()
        hwm_kib = next(
            int(line.split()[1])
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("VmHWM")
        )
        live = live_peak_mib(fn)
    print(
        json.dumps(
            {
                "peak_rss_mib": hwm_kib / 1024,
                "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "live_peak_mib": live,
            }
        )
    )


class _MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2 (malloc.h)
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


class _LivePeak(TorchDispatchMode):
    """The most bytes malloc holds in use (heap chunks and mapped blocks) after any op while active."""

    def __init__(self, mallinfo2) -> None:
        super().__init__()
        self.mallinfo2, self.peak = mallinfo2, 0

    def in_use(self) -> int:
        info = self.mallinfo2()
        return info.uordblks + info.hblkhd

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, self.in_use())
        return out


def live_peak_mib(fn) -> Optional[float]:
    """The live memory one call of ``fn`` adds at its peak, MiB above what malloc held in use before it: the
    tensors (and oneDNN's buffers) alive together after any op, read from glibc's ``mallinfo2``. Unlike
    peak RSS it does not count freed memory the allocator keeps, which moves by tens of MiB with where a
    process's pages land; None off glibc."""
    mallinfo2 = getattr(ctypes.CDLL(None), "mallinfo2", None)
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    mode = _LivePeak(mallinfo2)
    before = mode.in_use()
    with mode:
        fn()
    return (mode.peak - before) / 2**20


def peak_rss(impl: str, modality: str, dtype: str, batch: int, model: str = "flava", runs: int = 3) -> list[dict]:
    """Peak RSS and live peak (MiB) of ``runs`` fresh processes, each embedding alone (:func:`peak_rss_child`)."""
    cmd = [sys.executable, __file__, "--child", impl, modality, dtype, "--batch", str(batch), "--model", model]
    figures = []
    for _ in range(runs):
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        figures.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", choices=("fp32", "bf16", "both"), default="both")
    parser.add_argument("--modality", choices=("image", "text", "both"), default="both")
    parser.add_argument("--model", choices=("flava", "clip"), default="flava")
    parser.add_argument("--impls", help="comma-separated subset of ours,ours+packed,hf,tmm (flava) or open_clip (clip)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-process peak memory runs")
    parser.add_argument("--memory-runs", type=int, default=3, help="fresh processes per memory figure (median)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", nargs=3, metavar=("IMPL", "MODALITY", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_rss_child(*args.child, batch=args.batch, reps=3, model_name=args.model)
        return

    clip = args.model == "clip"
    impls = (args.impls or ",".join(CLIP_IMPLS if clip else IMPLS)).split(",")
    impls = [i for i in impls if i != "tmm" or have_tmm()]
    if "ours" not in impls or len(impls) < 2:
        parser.error("--impls needs ours and at least one peer")
    dtypes = ("fp32", "bf16") if args.dtype == "both" else (args.dtype,)
    modalities = ("image", "text") if args.modality == "both" else (args.modality,)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}, batch {args.batch}, reps {args.reps}, "
        f"model {args.model}"
    )
    if clip:
        models = {impl: build_clip(impl) for impl in impls}
    else:
        models = {"hf": build("hf")} if "hf" in impls else {}
        for impl in ("ours", PACKED):
            if impl in impls:
                models[impl] = build(impl, hf_state=models["hf"].state_dict() if "hf" in models else None)
        for impl in impls:
            if impl not in models:
                models[impl] = build(impl)
        models = {impl: models[impl] for impl in impls}
    inputs = make_clip_inputs(args.batch) if clip else make_inputs(args.batch)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch, "rows": []}
    results["model"] = args.model
    for peer in [p for p in ("hf", "open_clip") if p in models]:
        results[f"max_abs_diff_vs_{peer}"] = check_agreement(models, inputs, peer)
        print(f"features against {peer}'s (same weights), max abs diff: {results[f'max_abs_diff_vs_{peer}']}")

    gemm = None
    if clip and "image" in modalities:
        gemm = gemm_benchmark(args.batch, warmup=2, reps=5, dtypes=dtypes)
        results["gemm"] = gemm
        for dtype in gemm:
            shapes = ", ".join(f"{s} {t:.3f}" for s, t in gemm[dtype]["tflops_per_shape"].items())
            print(f"GEMM {dtype}, TFLOP/s at ViT-B/16's linear shapes: {shapes}; peak {gemm[dtype]['peak_tflops']:.3f}")
    peers = [impl for impl in impls if impl in PEERS]
    print(
        f"{'modality':8} {'dtype':5} {'impl':11} {'median s/batch':>14} {'items/s':>8} "
        + " ".join(f"{'speed vs ' + p:>19}" for p in [*peers, "fastest"])
        + f" {'peak RSS MiB':>12} {'live MiB':>8}"
        + (f" {'TFLOP/s':>8} {'% peak':>7}" if gemm else "")
    )
    for modality in modalities:
        for dtype in dtypes:
            times = time_interleaved(models, inputs, modality, dtype, args.warmup, args.reps)
            for impl in times:
                med = statistics.median(times[impl])
                # this implementation's speed against each peer: the median of per-batch peer/this
                speedup = {
                    p: statistics.median(a / b for a, b in zip(times[p], times[impl])) for p in peers if p != impl
                }
                # and against the faster peer of this run (by median time)
                fastest = min(peers, key=lambda p: statistics.median(times[p]))
                speedup["fastest"] = statistics.median(a / b for a, b in zip(times[fastest], times[impl]))
                memory = (
                    [] if args.no_memory else peak_rss(impl, modality, dtype, args.batch, args.model, args.memory_runs)
                )
                rss_runs = [run["peak_rss_mib"] for run in memory]
                rss = statistics.median(rss_runs) if rss_runs else None
                live_runs = [run["live_peak_mib"] for run in memory if run["live_peak_mib"] is not None]
                live = statistics.median(live_runs) if live_runs else None
                row = {
                    "modality": modality,
                    "dtype": dtype,
                    "impl": impl,
                    "median_s": med,
                    "items_per_s": args.batch / med,
                    "speedup_vs_peer_paired": speedup,
                    "fastest_peer": fastest,
                    "peak_rss_mib": rss,
                    "peak_rss_mib_runs": rss_runs,
                    "live_peak_mib": live,
                    "live_peak_mib_runs": live_runs,
                }
                limit = ""
                if gemm and modality == "image":
                    row["model_tflops"] = vit_forward_flops()["total"] * args.batch / med / 1e12
                    row["pct_of_gemm_peak"] = 100 * row["model_tflops"] / gemm[dtype]["peak_tflops"]
                    limit = f" {row['model_tflops']:8.3f} {row['pct_of_gemm_peak']:6.1f}%"
                results["rows"].append(row)
                print(
                    f"{modality:8} {dtype:5} {impl:11} {med:14.4f} {args.batch / med:8.2f} "
                    + " ".join(f"{speedup[p]:18.3f}x" if p in speedup else f"{'':>19}" for p in [*peers, "fastest"])
                    + f" {'' if rss is None else f'{rss:.0f}':>12} {'' if live is None else f'{live:.1f}':>8}"
                    + limit
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
