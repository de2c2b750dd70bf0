"""FLAVA pretraining step: forward + backward time and peak memory, torchflava against the peers.

Peers: Hugging Face transformers' ``FlavaForPreTraining(FlavaConfig())`` (FLAVA-full, random
weights, its own random frozen codebook) and, when installed, torchmultimodal's
``FLAVAForPreTraining`` (its dVAE built with ``pretrained=False``: the stock builder downloads
OpenAI's weights). Ours: ``flava_model_for_pretraining()`` with HF's weights
converted. The same batch for everyone, built with a fixed seed: 4 image-text pairs (224 px images,
112 px codebook views, 77-token captions with real lengths 52/35/20/41, 15% of real tokens masked,
75 of 196 patches masked, ITM labels 1,1,1,0), and the same 4 samples as an image-only (MIM) and a
text-only (MLM) batch. The default step is the peers' "all6": the three forwards, their losses
summed, one backward (``--backward per-call`` times one backward per kind instead).

Ours: ``ours`` takes codebook ids from the data pipeline (``image_tokens``, how our recipe trains:
the tokenizer runs once per sample in the loader, not in the step); ``+codebook`` computes them
inside the step from the codebook pixels, as the peers do; ``+full`` / ``+selective`` turn on
activation checkpointing in every encoder; ``+rc`` recomputes the contrastive-only passes;
``+sdpa`` / ``+blas`` keep SDPA and F.linear everywhere; ``+calls`` takes the all6 step's three
batches in three forward calls, as the peers do, where ours by default takes them in one (a list of
batches: each encoder runs once over all their rows, the same losses and gradients; see OPTIONS).
Timed: zero_grad, forward, backward (no optimiser step), interleaved A B C, B C A, C A B (the order rotates), medians and
per-step ratios. ``--processes``: each implementation in a process of its own, the steps still
interleaved (the parent tells one process at a time to step), as a user runs one model; in one
process the implementations' steps share one heap, and each step then finds the pages the others
freed given back (ours, in one process with HF's: 100-166 thousand page faults a step, 0.35-1.1 s
of system time, against 2-85 thousand and under 0.14 s alone). Peak memory: each implementation alone in a fresh process, peak RSS during the timed
steps (``/proc/self/clear_refs`` reset after building and one warm-up step).

Usage::

    python benchmarks/pretrain_step.py [--steps 5] [--warmup 2] [--impls ours,ours+full,hf,tmm] [--bf16]
"""

import argparse
from contextlib import ExitStack, nullcontext
import gc
import json
import multiprocessing
from pathlib import Path
import statistics
import subprocess
import sys
import time

from interleave import round_order
from report import add_keep_freed_memory, apply_keep_freed_memory
import torch

from torchflava.models import flava_model, flava_model_for_pretraining
from torchflava.models.flava.convert_weights import convert_to_torchflava
from torchflava.modules.layers import attention, linear, set_activation_checkpointing

IMPLS = ("ours", "ours+full", "ours+full+codebook", "hf", "tmm")
# Ours takes options after "+": "codebook" (the dVAE runs inside the step, as in the peers),
# "selective" or "full" (activation checkpointing in every encoder: keep only matmul and attention
# outputs, or only each layer's input) and "rc" (recompute the contrastive-only unmasked passes of
# a pair batch), e.g. "ours+selective+rc"; "sdpa" (SDPA's fused attention kernel at every length,
# instead of the matmul path that bf16 training takes for short sequences: the attention before #13)
# and "blas" (every fp32 linear on F.linear, PyTorch's BLAS, instead of oneDNN for large products);
# "calls": the all6 step's three batches through three forward calls, as the peers take them (by
# default ours takes them in one call, a list of batches, each encoder run once over all their rows).
OPTIONS = ("codebook", "selective", "full", "rc", "sdpa", "blas", "calls")


def options(impl: str) -> set[str]:
    """The options of one of our implementation names; ValueError on anything else."""
    name, *opts = impl.split("+")
    if name != "ours" or not set(opts) <= set(OPTIONS) or {"selective", "full"} <= set(opts):
        raise ValueError(f"unknown implementation {impl!r}: hf, tmm, or ours with options from {OPTIONS}")
    return set(opts)


def make_batches(seed: int = 0, batch: int = 4) -> dict:
    """The benchmark's samples: ``batch`` pairs, real text lengths and ITM labels cycling through
    52/35/20/41 and 1,1,1,0 (the default 4 is the peers' batch; other sizes draw in the same order)."""
    g = torch.Generator().manual_seed(seed)
    b, length = batch, 77
    lengths = [(52, 35, 20, 41)[row % 4] for row in range(b)]
    image = torch.randn(b, 3, 224, 224, generator=g)
    codebook_pixels = torch.rand(b, 3, 112, 112, generator=g) * 0.8 + 0.1
    text = torch.randint(1000, 30000, (b, length), generator=g)
    mask = torch.zeros(b, length, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        text[row, 0], text[row, n - 1] = 101, 102
    text = text * mask
    mlm_labels = torch.full_like(text, -100)
    text_masked = text.clone()
    for row, n in enumerate(lengths):
        picks = torch.randperm(n - 2, generator=g)[: round(0.15 * n)] + 1
        mlm_labels[row, picks] = text[row, picks]
        text_masked[row, picks] = 103
    patch_mask = torch.zeros(b, 196, dtype=torch.bool)
    for row in range(b):
        patch_mask[row, torch.randperm(196, generator=g)[:75]] = True
    tokens = torch.randint(0, 8192, (b, 196), generator=g)
    itm = torch.tensor([(1, 1, 1, 0)[row % 4] for row in range(b)])
    return dict(
        image=image,
        codebook_pixels=codebook_pixels,
        text=text,
        text_masked=text_masked,
        mask=mask,
        mlm_labels=mlm_labels,
        patch_mask=patch_mask,
        tokens=tokens,
        itm=itm,
    )


def build(impl: str, hf_state=None):
    torch.manual_seed(0)
    if impl == "hf":
        from transformers import FlavaConfig, FlavaForPreTraining

        return FlavaForPreTraining(FlavaConfig()).train()
    if impl == "tmm":
        from torchmultimodal.models.flava.model import DalleVAEEncoder, FLAVAForPreTraining
        from torchmultimodal.models.flava.model import flava_model as tmm_flava_model
        from torchmultimodal.modules.losses.flava import FLAVAPretrainingLoss

        return FLAVAForPreTraining(
            tmm_flava_model(), DalleVAEEncoder(image_size=112, pretrained=False), FLAVAPretrainingLoss()
        ).train()
    opts = options(impl)
    mode = "full" if "full" in opts else "selective" if "selective" in opts else "none"
    backbone = flava_model()
    set_activation_checkpointing(backbone, mode)
    model = flava_model_for_pretraining(
        backbone=backbone,
        build_codebook="codebook" in opts,
        recompute_contrastive_passes="rc" in opts,
    )
    if hf_state is not None:
        converted, _ = convert_to_torchflava(hf_state, model.model, layout="hf")
        model.model.load_state_dict(converted)
    return model.train()


def loss_fn(impl: str, model, kind: str, d: dict):
    """A zero-argument callable running the forward of one batch kind and returning its total loss."""
    if impl == "hf":
        args = dict(return_loss=True)
        if kind in ("pair", "image"):
            args.update(
                pixel_values=d["image"], codebook_pixel_values=d["codebook_pixels"], bool_masked_pos=d["patch_mask"]
            )
        if kind in ("pair", "text"):
            args.update(
                input_ids=d["text"],
                input_ids_masked=d["text_masked"],
                attention_mask=d["mask"],
                mlm_labels=d["mlm_labels"],
            )
        if kind == "pair":
            args.update(itm_labels=d["itm"])

        def loss():
            return model(**args).loss
    elif impl == "tmm":
        args = dict(required_embedding={"pair": "mm", "image": "image", "text": "text"}[kind])
        if kind in ("pair", "image"):
            args.update(image=d["image"], image_for_codebook=d["codebook_pixels"], image_patches_mask=d["patch_mask"])
        if kind in ("pair", "text"):  # torchmultimodal infers padding from id 0 and ignores label -1
            args.update(text=d["text"], text_masked=d["text_masked"], mlm_labels=d["mlm_labels"].clamp(min=-1))
        if kind == "pair":
            args.update(itm_labels=d["itm"])

        def loss():
            return sum(v for v in model(**args).losses.values() if v is not None)
    else:
        batch = ours_batch(impl, kind, d)

        def loss():
            return model(batch).loss

    return loss


def ours_batch(impl: str, kind: str, d: dict) -> dict:
    """Our batch of one kind: a pair's, an image-only (MIM) or a text-only (MLM) batch's fields."""
    batch = {}
    if kind in ("pair", "image"):
        batch.update(image=d["image"], image_patch_mask=d["patch_mask"])
        if "codebook" not in options(impl):
            batch.update(image_tokens=d["tokens"])
        else:
            batch.update(codebook_pixels=d["codebook_pixels"])
    if kind in ("pair", "text"):
        batch.update(
            text=d["text"], text_masked=d["text_masked"], text_attention_mask=d["mask"], mlm_labels=d["mlm_labels"]
        )
    if kind == "pair":
        batch.update(itm_labels=d["itm"])
    return batch


def step_fn(impl: str, model, kinds: list[str], d: dict, bf16: bool = False):
    """A zero-argument callable doing zero_grad, the forward of every kind in ``kinds`` (under bf16
    autocast if ``bf16``), and one backward of their summed losses, outside autocast as the training
    loop runs it (one kind: a per-call step; all three: the peers' "all6" step, which ours takes in one
    forward call, a list of the kinds' batches, unless ``+calls``)."""
    opts = set() if impl in ("hf", "tmm") else options(impl)
    if impl in ("hf", "tmm") or len(kinds) == 1 or "calls" in opts:
        losses = [loss_fn(impl, model, kind, d) for kind in kinds]
    else:  # ours takes the kinds' batches in one forward call: each encoder runs once over all their rows
        batches = [ours_batch(impl, kind, d) for kind in kinds]
        losses = [lambda: sum(out.loss for out in model(batches))]

    def step():
        model.zero_grad(set_to_none=True)
        with ExitStack() as kernels:
            if "sdpa" in opts:  # SDPA's fused kernel at every length
                kernels.enter_context(attention.math_attention_limits({}))
            if "blas" in opts:  # F.linear for every product
                kernels.enter_context(linear.onednn_fp32_thresholds(None))
            with autocast(bf16):
                total = sum(loss() for loss in losses)
            total.backward()

    return step


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def step_units(kinds: list[str], joint: bool) -> dict[str, list[str]]:
    """The timed steps: one per kind (``per-call``), or one step over all kinds (``joint``, named "all6")."""
    return {"all6": kinds} if joint else {kind: [kind] for kind in kinds}


def peak_rss_child(impl: str, kinds: list[str], joint: bool, bf16: bool, steps: int) -> None:
    model = build(impl)
    data = make_batches()
    fns = [step_fn(impl, model, unit, data, bf16) for unit in step_units(kinds, joint).values()]
    for fn in fns:
        fn()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(steps):
        for fn in fns:
            fn()
    hwm = next(
        int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM")
    )
    print(json.dumps({"peak_rss_mib": hwm / 1024}))


def peak_rss(impl: str, kinds: list[str], joint: bool, bf16: bool, keep: bool = False) -> float:
    cmd = [sys.executable, __file__, "--child", impl, ",".join(kinds), "--backward", "joint" if joint else "per-call"]
    cmd += (["--bf16"] if bf16 else []) + (["--keep-freed-memory"] if keep else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]


def backbone_state(hf_model) -> dict:
    """HF ``FlavaForPreTraining``'s backbone weights (its ``flava.`` keys, the prefix dropped): what ours is built from."""
    return {k[len("flava.") :]: v for k, v in hf_model.state_dict().items() if k.startswith("flava.")}


def step_worker(impl: str, units: dict, bf16: bool, keep: bool, conn) -> None:
    """``--processes``: build one implementation (ours from HF's weights, built here as in one
    process), then run the step named by each message and send back its seconds; None ends."""
    if keep:
        from torchflava.utils.memory import keep_freed_memory

        keep_freed_memory()
    hf_state = None
    if impl not in ("hf", "tmm"):
        hf_state = backbone_state(build("hf"))
    model = build(impl, hf_state=hf_state)
    del hf_state
    gc.collect()
    data = make_batches()
    fns = {unit: step_fn(impl, model, unit_kinds, data, bf16) for unit, unit_kinds in units.items()}
    conn.send("ready")
    while (unit := conn.recv()) is not None:
        start = time.perf_counter()
        fns[unit]()
        conn.send(time.perf_counter() - start)


class Workers:
    """One :func:`step_worker` process per implementation; ``step(impl, unit)`` -> seconds."""

    def __init__(self, impls: list[str], units: dict, bf16: bool, keep: bool) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.conns, self.procs = {}, []
        for impl in impls:  # built one after the other: the peak of one build at a time
            parent, child = spawn.Pipe()
            proc = spawn.Process(target=step_worker, args=(impl, units, bf16, keep, child), daemon=True)
            proc.start()
            try:
                ready = parent.recv()
            except EOFError:  # it died building (out of memory, an import error: its stderr says)
                ready = None
            if ready != "ready":
                raise RuntimeError(f"the {impl} worker did not start")
            self.conns[impl] = parent
            self.procs.append(proc)

    def step(self, impl: str, unit: str) -> float:
        self.conns[impl].send(unit)
        return self.conns[impl].recv()

    def close(self) -> None:
        for conn in self.conns.values():
            conn.send(None)
        for proc in self.procs:
            proc.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    # two untimed steps for everyone: after one, ours' bf16 all6 step still varied 2.4-3.6 s over the next
    # steps (the heap still growing), after two 2.61-2.75 (benchmarks/README.md, 2026-12-05, fifth session)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--kinds", default="pair,image,text")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--bf16", action="store_true", help="run every implementation under bf16 autocast")
    parser.add_argument(
        "--backward",
        choices=("per-call", "joint"),
        default="joint",
        help="joint: the kinds' losses summed, one backward per step (the peers' 'all6'); "
        "per-call: one zero_grad + backward per kind",
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--processes",
        action="store_true",
        help="each implementation in a process of its own, steps still interleaved (default: all in this one)",
    )
    parser.add_argument("--json")
    add_keep_freed_memory(parser)
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "KINDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    apply_keep_freed_memory(args)
    if args.child:
        peak_rss_child(args.child[0], args.child[1].split(","), args.backward == "joint", args.bf16, steps=2)
        return

    impls, kinds, joint = args.impls.split(","), args.kinds.split(","), args.backward == "joint"
    for impl in impls:
        if impl not in ("hf", "tmm"):
            try:
                options(impl)
            except ValueError as error:
                parser.error(str(error))
    units = step_units(kinds, joint)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {'bf16 autocast' if args.bf16 else 'fp32'}, "
        f"backward {args.backward}, steps {args.steps} (+{args.warmup} warm-up), "
        + ("each implementation in a process of its own" if args.processes else "every implementation in this process")
    )
    results = {
        "torch": torch.__version__,
        "bf16": args.bf16,
        "backward": args.backward,
        "keep_freed_memory": args.keep_freed_memory,
        "processes": args.processes,
        "rows": [],
    }
    if args.processes:
        models = fns = None
        workers = Workers(impls, units, args.bf16, args.keep_freed_memory)
        run_step = workers.step
    else:
        models = {"hf": build("hf")} if "hf" in impls else {}
        hf_state = backbone_state(models["hf"]) if "hf" in models else None
        for impl in impls:
            if impl not in models:
                models[impl] = build(impl, hf_state=hf_state)
        data = make_batches()
        fns = {
            (impl, unit): step_fn(impl, models[impl], unit_kinds, data, args.bf16)
            for impl in impls
            for unit, unit_kinds in units.items()
        }

        def run_step(impl: str, unit: str) -> float:
            start = time.perf_counter()
            fns[impl, unit]()
            return time.perf_counter() - start

    times = {(impl, unit): [] for impl in impls for unit in units}
    for rep in range(args.warmup + args.steps):
        for impl in round_order(impls, rep):
            for unit in units:
                seconds = run_step(impl, unit)
                if rep >= args.warmup:
                    times[impl, unit].append(seconds)
    if args.processes:
        workers.close()
    peers = [p for p in ("hf", "tmm") if p in impls]

    def series(impl: str, unit: str) -> list[float]:
        if unit != "all":
            return times[impl, unit]
        return [sum(t) for t in zip(*(times[impl, u] for u in units))]

    print(
        f"{'step':6} {'impl':14} {'median s':>9} {'min':>7} {'max':>7} " + " ".join(f"{p + '/impl':>9}" for p in peers)
    )
    for kind in list(units) + ([] if joint else ["all"]):
        for impl in impls:
            mine = series(impl, kind)
            ratios = {p: statistics.median(a / b for a, b in zip(series(p, kind), mine)) for p in peers if p != impl}
            row = dict(
                kind=kind,
                impl=impl,
                median_s=statistics.median(mine),
                min_s=min(mine),
                max_s=max(mine),
                peer_time_over_impl_paired=ratios,
            )
            results["rows"].append(row)
            print(
                f"{kind:6} {impl:14} {row['median_s']:9.3f} {row['min_s']:7.3f} {row['max_s']:7.3f} "
                + " ".join(f"{ratios[p]:8.3f}x" if p in ratios else f"{'':>9}" for p in peers)
            )
    if not args.no_memory:
        del models, fns
        gc.collect()
        results["peak_rss_mib"] = {
            impl: peak_rss(impl, kinds, joint, args.bf16, args.keep_freed_memory) for impl in impls
        }
        print("peak RSS during the steps (MiB, each implementation alone):", results["peak_rss_mib"])
    whole = "all6" if joint else "all"
    if peers:
        median = {impl: statistics.median(series(impl, whole)) for impl in impls}
        fastest = min(peers, key=median.__getitem__)
        summary = {}
        for impl in impls:
            if impl in peers:
                continue
            row = {
                "fastest_peer": fastest,
                "speed_vs_fastest_peer": statistics.median(
                    a / b for a, b in zip(series(fastest, whole), series(impl, whole))
                ),
            }
            if "peak_rss_mib" in results:
                row["peak_rss_vs_fastest_peer"] = results["peak_rss_mib"][impl] / results["peak_rss_mib"][fastest]
            summary[impl] = row
            print(
                f"{impl:20} vs the fastest peer ({fastest}): {row['speed_vs_fastest_peer']:.3f}x speed"
                + (f", {row['peak_rss_vs_fastest_peer']:.3f}x peak RSS" if "peak_rss_vs_fastest_peer" in row else "")
            )
        results["summary"] = summary
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
