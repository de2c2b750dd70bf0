"""The training loop's bf16 step with gradient accumulation: weights cast once a step or once a micro-batch.

``torchflava.training.loop.fit`` runs a step's micro-batches in one autocast region, so autocast's
bf16 copy of each weight serves all of them. This script times ``fit`` itself on CLIP ViT-B/16's
image tower (random weights and images, loss ``encode_image(x).float().pow(2).mean()``, fused AdamW)
with ``training.precision=bf16`` and ``grad_accumulation`` micro-batches a step, against the same
run with autocast's weight cache off, where every micro-batch casts every weight again: what one
autocast region per micro-batch (the loop before) did for a model that uses each weight once a
forward. Step times come from the loop's after-step hook (the first step of each run is not
counted); the two settings alternate run by run; medians and their ratio.

Usage::

    python benchmarks/accumulation.py [--micro-batches 4] [--batch 8] [--steps 4] [--runs 3] [--json out.json]
"""

from pathlib import Path
import statistics
import tempfile
import time
from typing import Optional

from report import OneLineParser, write_json
import torch
from torch.utils.data import Dataset

from torchflava.models import clip_vit_b16
from torchflava.training.loop import StepOutput, fit
from torchflava.training.schema import OptimConfig, TrainingConfig

IMAGE_SIZE = 224


class Images(Dataset):
    """Micro-batch ``i``: ``batch`` random images of IMAGE_SIZE px (seeded by ``i``)."""

    def __init__(self, length: int, batch: int) -> None:
        self.length, self.batch = length, batch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.randn(self.batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(index))


def image_step(model, images: torch.Tensor) -> StepOutput:
    features = model.encode_image(images, normalize=False).float()
    return StepOutput({"square": features.pow(2).sum()}, {"square": torch.tensor(float(features.numel()))})


def run(cache: bool, args, out: Path) -> list[float]:
    """Seconds per optimiser step after the first, with autocast's weight cache on or off."""
    torch.manual_seed(0)
    model = clip_vit_b16().train()
    training = TrainingConfig(
        output_dir=str(out),
        max_steps=args.steps,
        global_batch_size=args.batch * args.micro_batches,
        grad_accumulation=args.micro_batches,
        device="cpu",
        precision="bf16",
        log_every=args.steps,
        checkpoint_every=args.steps,
        progress_bar=False,
        tensorboard=False,
    )
    optim = OptimConfig(lr=1e-5, warmup_steps=0, weight_decay=0.0, clip_grad_norm=1.0)
    stamps = [time.perf_counter()]
    previous = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(cache)
    try:
        fit(
            model,
            image_step,
            Images(args.steps * args.micro_batches, args.batch),
            training=training,
            optim=optim,
            after_step=lambda: stamps.append(time.perf_counter()),
        )
    finally:
        torch.set_autocast_cache_enabled(previous)
    return [b - a for a, b in zip(stamps[1:], stamps[2:])]


def main(argv: Optional[list[str]] = None) -> dict:
    parser = OneLineParser(description=__doc__)
    parser.add_argument("--micro-batches", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="images per micro-batch")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per run (the first is not timed)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each setting, alternated")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.micro_batches < 1 or args.batch < 1 or args.steps < 2 or args.runs < 1:
        parser.error("--micro-batches, --batch and --runs must be >= 1 and --steps >= 2")
    times = {"once a step": [], "once a micro-batch": []}
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.runs * 2):
            cache = index % 2 == 0
            name = "once a step" if cache else "once a micro-batch"
            times[name] += run(cache, args, Path(tmp) / str(index))
            print(
                f"  run {index + 1}: weights cast {name}: {', '.join(f'{t:.2f}' for t in times[name][-args.steps + 1 :])} s"
            )
    medians = {name: statistics.median(t) for name, t in times.items()}
    images = args.batch * args.micro_batches
    print(f"CLIP ViT-B/16 image tower, bf16, {args.micro_batches} micro-batches of {args.batch} images a step")
    for name, median in medians.items():
        print(f"  weights cast {name}: {median:.3f} s a step, {images / median:.2f} images/s")
    print(f"  speed-up: {medians['once a micro-batch'] / medians['once a step']:.3f}x")
    rows = [{"setting": name, "step_s": t, "median_s": medians[name]} for name, t in times.items()]
    if args.json:
        write_json(args.json, args, rows)
    return {"rows": rows, "speed_up": medians["once a micro-batch"] / medians["once a step"]}


if __name__ == "__main__":
    main()
