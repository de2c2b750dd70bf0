"""The shared training loop on a toy model: global-count means, accumulation, 2-rank parity (gloo DDP and
FSDP2), resume (exact, and on another world size), the non-finite stop, the after-step hook, logging."""

from collections.abc import MutableMapping
from copy import deepcopy
from dataclasses import dataclass
from datetime import timedelta
import functools
import json
import math
import os
from pathlib import Path
import re
import shutil
import signal
import time
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn
import torch.distributed as dist
import torch.nn.functional as F
from torch.testing import assert_close
from torch.utils.data import Dataset

from tests.helpers import SeededLinear, run_ranks
from torchflava.modules.encoders import transformer_encoder
from torchflava.modules.layers import Linear, TransformerEncoderLayer
from torchflava.modules.layers import linear as linear_module
from torchflava.training import loop as loop_module
from torchflava.training import preemption as preemption_module
from torchflava.training.checkpointing import CheckpointManager, CheckpointWriteError
from torchflava.training.config import ConfigError, save_config
from torchflava.training.distributed import DistributedInfo
from torchflava.training.integrity import write_marker
from torchflava.training.loop import FitResult, RunStart, StepOutput, fit, release_run_directory, start_run
from torchflava.training.metrics import read_metrics
from torchflava.training.preemption import PREEMPTED_EXIT_CODE, Preempted
from torchflava.training.schema import NonFiniteLossError, OptimConfig, TrainingConfig
from torchflava.utils import precision as precision_module

ROWS, TOKENS, WORLD_SIZE = 8, 5, 2
JOIN_TIMEOUT_S = 180


def onednn_for_every_linear():
    """Within the block, even the toy's tiny fp32 products go to oneDNN (forward and backward): the loop,
    DDP and FSDP2 then run through torchflava's own linear autograd function, as full-size models do."""
    everything = {"inference": 0, "training": 0}
    return linear_module.onednn_fp32_thresholds(everything, everything)


class Toy(nn.Module):
    """A linear map per token with a scalar gain (a replicated parameter under FSDP2)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.linear = Linear(3, 2)
        self.gain = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.gain


class Killed(Exception):
    """Stands for a kill in the middle of a run."""


def killed_after(calls: int):
    """An ``after_step`` hook that raises :class:`Killed` at its ``calls``-th call (after that step's update)."""
    count = [0]

    def hook():
        count[0] += 1
        if count[0] == calls:
            raise Killed

    return hook


class ToyItem(NamedTuple):
    batch: dict
    kind: str
    skipped: list


class ToyData(Dataset):
    """Micro-batch ``i`` of a run: the ``i % accumulation``-th part of global step ``i // accumulation``'s
    batch of ROWS rows, this rank's share of it. Rows hold 1 to TOKENS valid tokens (all with ``full``)."""

    def __init__(self, steps, *, accumulation=1, rank=0, world_size=1, full=False) -> None:
        self.steps, self.accumulation, self.rank, self.world_size, self.full = (
            steps,
            accumulation,
            rank,
            world_size,
            full,
        )

    def __len__(self) -> int:
        return self.steps * self.accumulation

    def __getitem__(self, index: int) -> ToyItem:
        step, part = divmod(index, self.accumulation)
        g = torch.Generator().manual_seed(100 + step)
        x, y = torch.randn(ROWS, TOKENS, 3, generator=g), torch.randn(ROWS, TOKENS, 2, generator=g)
        lengths = torch.full((ROWS,), TOKENS) if self.full else torch.randint(1, TOKENS + 1, (ROWS,), generator=g)
        mask = torch.arange(TOKENS) < lengths[:, None]
        micro = ROWS // self.accumulation
        local = micro // self.world_size
        rows = slice(part * micro + self.rank * local, part * micro + (self.rank + 1) * local)
        skipped = [("toy", step, f"step {step} met a bad item")] if step % 3 == 0 and part == 0 else []
        return ToyItem({"x": x[rows], "y": y[rows], "mask": mask[rows]}, "toy", skipped)


def toy_sums(model, batch):
    """The toy's losses: squared error averaged over valid tokens, and 0.1 x a per-row penalty."""
    prediction = model(batch["x"])
    error = ((prediction - batch["y"]) ** 2).sum(-1)  # (B, T)
    rows = (prediction.mean(1) ** 2).sum(-1)  # (B,)
    sums = {"tokens": (error * batch["mask"]).sum(), "rows": 0.1 * rows.sum()}
    return sums, {"tokens": batch["mask"].sum(), "rows": torch.tensor(float(rows.numel()))}


def toy_step(model, item):
    return StepOutput(*toy_sums(model, item.batch))


def settings(out, **changes):
    training = dict(
        output_dir=str(out),
        max_steps=6,
        global_batch_size=ROWS,
        log_every=1,
        checkpoint_every=3,
        progress_bar=False,
        tensorboard=False,
        device="cpu",
    )
    optim = dict(
        lr=0.05,
        betas=[0.9, 0.999],
        warmup_steps=0,
        min_lr_ratio=0.0,
        weight_decay=0.0,
        clip_grad_norm=1.0,
        eps=1e-8,
        lr_multipliers={},
    )
    for key, value in changes.items():
        (optim if key in optim else training)[key] = value
    return TrainingConfig(**training), OptimConfig(**optim)


def run(out, *, data=None, step=toy_step, after_step=None, **changes) -> tuple[Toy, FitResult]:
    training, optim = settings(out, **changes)
    model = Toy()
    data = ToyData(training.max_steps, accumulation=training.grad_accumulation) if data is None else data
    with onednn_for_every_linear():
        return model, fit(model, step, data, training=training, optim=optim, after_step=after_step, shard_layers=())


def losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(Path(out) / "metrics.jsonl")}


def params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# ------------------------------------------------------------------------------------------- one process
def test_the_loss_is_each_sum_over_its_global_count(tmp_path):
    model, result = run(tmp_path, max_steps=1, checkpoint_every=1)
    batch = ToyData(1)[0].batch
    with torch.no_grad():
        sums, counts = toy_sums(Toy(), batch)
    expected = {name: float(sums[name] / counts[name]) for name in sums}
    record = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert record["loss/tokens"] == pytest.approx(expected["tokens"], rel=1e-6)
    assert record["loss/rows"] == pytest.approx(expected["rows"], rel=1e-6)
    assert record["loss"] == pytest.approx(sum(expected.values()), rel=1e-6) == result.loss
    assert record["kind"] == "toy" and record["samples_per_s"] > 0 and record["grad_norm"] > 0
    assert record["lr"] == 0.05  # the lr its one step trained with (the cosine's end, 0, is no step's)
    assert result.step == 1 and result.resumed_from is None
    assert result.skipped == [("toy", 0, "step 0 met a bad item")]


def test_accumulation_equals_one_big_batch(tmp_path):
    one, _ = run(tmp_path / "one", data=ToyData(6, full=True))
    two, _ = run(tmp_path / "two", data=ToyData(6, accumulation=2, full=True), grad_accumulation=2)
    assert losses(tmp_path / "one").keys() == losses(tmp_path / "two").keys() == set(range(1, 7))
    for step, value in losses(tmp_path / "one").items():
        assert losses(tmp_path / "two")[step] == pytest.approx(value, rel=1e-6), step
    for name, value in params(one).items():
        torch.testing.assert_close(params(two)[name], value, rtol=1e-6, atol=1e-6)


def test_accumulation_averages_the_micro_batch_means(tmp_path):
    """Micro-batches with other token counts: each is normalised by its own count, then averaged."""
    run(tmp_path, data=ToyData(1, accumulation=2), grad_accumulation=2, max_steps=1, checkpoint_every=1)
    data = ToyData(1, accumulation=2)
    with torch.no_grad():
        parts = [toy_sums(Toy(), data[i].batch) for i in range(2)]
    counts = [float(c["tokens"]) for _, c in parts]
    assert counts[0] != counts[1]  # the case where this differs from one big batch
    expected = sum(float(s["tokens"]) / c for (s, _), c in zip(parts, counts)) / 2
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["loss/tokens"] == pytest.approx(expected, rel=1e-6)


def test_a_loss_absent_from_a_step_is_left_out_of_its_logged_mean(tmp_path):
    """A step names every loss, one absent as 0 over 0 (as ranks must): it was logged as 0 for that step, and a
    record over several steps averaged those zeros in (a two-task model's 'loss/a' halved, alternating steps)."""
    toy = ToyData(4)
    data = [ToyItem(toy[i].batch, "ab"[i % 2], []) for i in range(4)]

    def step(model, item):
        sums, counts = toy_sums(model, item.batch)
        zero = sums["tokens"] * 0  # (a sum of 0 that still holds the graph)
        present = {"a": item.kind == "a", "b": item.kind == "b"}
        return StepOutput(
            {name: sums["tokens"] if on else zero for name, on in present.items()},
            {name: counts["tokens"] if on else 0 for name, on in present.items()},
        )

    run(tmp_path / "each", data=data, step=step, max_steps=4, lr=1e-9)
    each = read_metrics(tmp_path / "each" / "metrics.jsonl")
    assert [sorted(k for k in r if k.startswith("loss/")) for r in each] == [["loss/a"], ["loss/b"]] * 2
    run(tmp_path / "window", data=data, step=step, max_steps=4, lr=1e-9, log_every=4)
    (record,) = read_metrics(tmp_path / "window" / "metrics.jsonl")
    assert record["loss/a"] == pytest.approx((each[0]["loss/a"] + each[2]["loss/a"]) / 2, rel=1e-6)
    assert record["loss/b"] == pytest.approx((each[1]["loss/b"] + each[3]["loss/b"]) / 2, rel=1e-6)
    assert record["loss"] == pytest.approx(sum(r["loss"] for r in each) / 4, rel=1e-6)


@pytest.mark.parametrize("absent", ["zero-over-zero", "unnamed"])
def test_a_loss_absent_from_a_micro_batch_is_its_mean_over_the_micro_batches_that_computed_it(tmp_path, absent):
    """FLAVA's data draws a kind per micro-batch: with grad_accumulation 2, a step of a pairs and a texts
    micro-batch logged loss/itm as half the pairs' ITM (the micro-batch that had none counted as 0, named as
    0 over 0 or not named at all). The loss trained on (and logged as 'loss') still averages every micro-batch."""
    toy = ToyData(4)
    data = [ToyItem(toy[i].batch, "ab"[i % 2], []) for i in range(4)]

    def step(model, item):
        sums, counts = toy_sums(model, item.batch)
        if absent == "unnamed":
            return StepOutput({item.kind: sums["tokens"]}, {item.kind: counts["tokens"]})
        zero = sums["tokens"] * 0
        present = {"a": item.kind == "a", "b": item.kind == "b"}
        return StepOutput(
            {name: sums["tokens"] if on else zero for name, on in present.items()},
            {name: counts["tokens"] if on else 0 for name, on in present.items()},
        )

    run(tmp_path, data=data, step=step, max_steps=2, grad_accumulation=2, lr=1e-9)
    first = read_metrics(tmp_path / "metrics.jsonl")[0]
    with torch.no_grad():
        a, b = (toy_sums(Toy(), data[i].batch) for i in range(2))
    a, b = float(a[0]["tokens"] / a[1]["tokens"]), float(b[0]["tokens"] / b[1]["tokens"])
    assert first["loss/a"] == pytest.approx(a, rel=1e-6) and first["loss/b"] == pytest.approx(b, rel=1e-6)
    assert first["loss"] == pytest.approx((a + b) / 2, rel=1e-6)


class MappingItem(dict):
    """A micro-batch that is a mapping and says its kind and unusable samples as attributes."""


def test_an_item_that_is_a_mapping_keeps_its_type_and_attributes(tmp_path):
    """A dict subclass (or Hugging Face's BatchEncoding) reached the step as a plain dict: its kind and skipped
    samples were dropped without a word, and attribute access (item.input_ids) failed."""
    toy = ToyData(2)
    data = []
    for i in range(2):
        item = MappingItem(toy[i].batch)
        item.kind, item.skipped = f"kind{i}", [("mapping", i)]
        data.append(item)
    types = []

    def step(model, item):
        types.append(type(item))
        return StepOutput(*toy_sums(model, item))

    _, result = run(tmp_path, data=data, step=step, max_steps=2, checkpoint_every=2)
    assert types == [MappingItem, MappingItem]
    assert result.skipped == [("mapping", 0), ("mapping", 1)]
    assert [r["kind"] for r in read_metrics(tmp_path / "metrics.jsonl")] == ["kind0", "kind1"]


class StoredItem(MutableMapping):
    """A mapping that keeps its items in an attribute, as the ``MutableMapping`` recipe writes one."""

    def __init__(self, items: dict) -> None:
        self.items_ = dict(items)

    def __getitem__(self, key):
        return self.items_[key]

    def __setitem__(self, key, value) -> None:
        self.items_[key] = value

    def __delitem__(self, key) -> None:
        del self.items_[key]

    def __iter__(self):
        return iter(self.items_)

    def __len__(self) -> int:
        return len(self.items_)


def test_moving_an_item_to_the_device_leaves_the_data_s_own_item_as_it_was():
    """A shallow copy of a mapping keeping its items in an attribute shares them: the copy's update wrote the
    device tensors into the data's own item (a dataset held in memory was moved onto the accelerator, item by
    item). Such a mapping arrives as a plain dict; a dict subclass keeps its type, its own item untouched."""
    pixels = torch.zeros(2)
    stored, subclass = StoredItem({"pixels": pixels}), MappingItem(pixels=pixels)
    subclass.kind = "pairs"
    moved, moved_subclass = (loop_module._to_device(item, torch.device("meta")) for item in (stored, subclass))
    assert stored["pixels"] is pixels and subclass["pixels"] is pixels
    assert type(moved) is dict and moved["pixels"].device.type == "meta"
    assert type(moved_subclass) is MappingItem and moved_subclass.kind == "pairs"
    assert moved_subclass["pixels"].device.type == "meta"


def test_after_step_hook_runs_after_every_optimiser_step(tmp_path):
    seen = []

    def step(model, item):
        seen.append(float(model.gain.detach()))
        sums, counts = toy_sums(model, item.batch)
        return StepOutput({**sums, "push": -10 * model.gain * counts["rows"]}, {**counts, "push": counts["rows"]})

    def clamp():
        calls.append(len(seen))
        with torch.no_grad():
            clamped.gain.clamp_(max=1.02)

    calls = []
    free, _ = run(tmp_path / "free", step=step)
    seen.clear()
    training, optim = settings(tmp_path / "clamped")
    clamped = Toy()
    fit(clamped, step, ToyData(6), training=training, optim=optim, after_step=clamp, shard_layers=())
    assert float(free.gain.detach()) > 1.05  # without the hook the gain keeps growing
    assert calls == [1, 2, 3, 4, 5, 6]  # once per step, after that step's forward
    assert float(clamped.gain.detach()) == pytest.approx(1.02) and all(g <= 1.02 + 1e-6 for g in seen)
    steps = []  # a hook that takes an argument gets the step just taken (an EMA's schedule needs it)
    run(tmp_path / "steps", after_step=steps.append, max_steps=3)
    assert steps == [1, 2, 3]


def test_the_loop_keeps_freed_memory_unless_told_not_to(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(loop_module, "keep_freed_memory", lambda: calls.append(1) or True)
    kept, _ = run(tmp_path / "default", max_steps=2)
    assert calls == [1]  # once, before the first step
    off, _ = run(tmp_path / "off", max_steps=2, keep_freed_memory=False)
    assert calls == [1]
    assert torch.equal(kept.gain, off.gain)  # an allocator setting: the same training


@pytest.mark.parametrize("native", [False, True], ids=["no-native-bf16", "native-bf16"])
def test_bf16_on_a_cpu_without_native_bf16_runs_its_products_in_fp32_and_says_so(tmp_path, monkeypatch, capsys, native):
    """On an AVX2-only CPU PyTorch's bf16 matmuls run ~7-60x slower than fp32: a run asked to train in bf16 there
    computes them as fp32 products of the bf16 operands, in its forwards and backwards, and says so on stderr once,
    before its first step; fp32 and native bf16 say nothing and leave the products to PyTorch."""
    from torchflava.training import schema as schema_module

    monkeypatch.setattr(schema_module.precision_note, "__defaults__", (native,))
    monkeypatch.setattr(precision_module, "NATIVE_CPU_BF16", native)
    note = "training.precision: bf16 on this CPU (oneDNN's bf16 kernels need AVX-512): its matmuls and attention run "
    seen = []  # (in forward, in backward): whether a bf16 product equalled the fp32 one rounded

    class Probe(torch.autograd.Function):  # a bf16 product in the step's forward and in its backward
        @staticmethod
        def forward(ctx, x):
            seen.append(("forward", _product_rounded_once()))
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            seen.append(("backward", _product_rounded_once()))
            return grad

    def step(model, item):
        sums, counts = toy_sums(model, item.batch)
        return StepOutput({name: Probe.apply(value) for name, value in sums.items()}, counts)

    for precision in ("bf16", "fp32"):
        seen.clear()
        run(tmp_path / precision, step=step, max_steps=1, checkpoint_every=1, precision=precision)
        said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("training.precision")]
        emulated = precision == "bf16" and not native
        assert len(said) == (1 if emulated else 0)
        assert all(line.startswith(note) and line.endswith("(fp32 is faster for small ones)") for line in said)
        assert set(seen) == {("forward", emulated), ("backward", emulated)}
    bf16 = settings(tmp_path, precision="bf16")[0]
    assert schema_module.precision_note(bf16, torch.device("cpu"), False) is not None
    assert schema_module.precision_note(bf16, torch.device("cuda"), False) is None  # a GPU's bf16 is its own
    compiled = settings(tmp_path, precision="bf16", compile=True)[0]
    assert "training.compile=false computes them" in schema_module.precision_note(compiled, torch.device("cpu"), False)
    assert not precision_module.emulates_bf16_products(torch.device("cpu"), "bf16", compiled=True)


def _product_rounded_once() -> bool:
    """Whether bf16 products compute here as fp32 products of their operands rounded to bf16: the region is open
    and a product's every value is the rounded fp32 one."""
    stack = torch.utils._python_dispatch._get_current_dispatch_mode_stack()
    if not any(isinstance(mode, precision_module._mode()) for mode in stack):
        return False
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 4096, generator=g).bfloat16(), torch.randn(4096, 16, generator=g).bfloat16()
    assert torch.equal(a @ b, (a.float() @ b.float()).bfloat16())
    return True


class _WeightCasts(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts casts of the given parameters' storage to bf16."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.pointers = {p.data_ptr() for p in model.parameters()}
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16:
            self.count += args[0].data_ptr() in self.pointers
        return func(*args, **kwargs)


@pytest.mark.parametrize(
    "model_fn, step, checkpointing",
    [(Toy, toy_step, "none"), (lambda: ToyEncoder(), lambda m, i: encoder_step(m, i), "full")],
    ids=["toy", "encoder-checkpointed"],
)
def test_bf16_weights_are_cast_once_per_optimiser_step_not_per_micro_batch(tmp_path, model_fn, step, checkpointing):
    """One autocast region spans a step's micro-batches (backward runs with autocast off inside it), so
    autocast's bf16 copy of each weight serves all of them, activation checkpointing's recomputations
    too; the same training as one region per micro-batch, which is what the loop does with autocast's
    weight cache off."""
    data = ToyData(2, accumulation=4, full=True)
    changes = dict(precision="bf16", grad_accumulation=4, max_steps=2, checkpoint_every=2)
    runs, counts = {}, {}
    previous = torch.is_autocast_cache_enabled()
    for cache in (True, False):  # off: every micro-batch (and recomputation) casts again
        training, optim = settings(tmp_path / str(cache), activation_checkpointing=checkpointing, **changes)
        torch.set_autocast_cache_enabled(cache)
        try:
            model = model_fn()
            with _WeightCasts(model) as casts:
                fit(model, step, data, training=training, optim=optim, shard_layers=())
        finally:
            torch.set_autocast_cache_enabled(previous)
        runs[cache], counts[cache] = model, casts.count
    # each linear's weight and bias; those in transformer layers are cast again when they are recomputed
    weights = 2 * sum(isinstance(m, nn.Linear) for m in runs[True].modules())
    layers = [m for m in runs[True].modules() if isinstance(m, TransformerEncoderLayer)]
    recomputed = 2 * sum(isinstance(m, nn.Linear) for layer in layers for m in layer.modules())
    assert (checkpointing == "full") == (recomputed > 0)
    # once in each of the 2 steps; the last micro-batch's backward runs after the region, so that its
    # copies are freed as it goes: its recomputation casts again
    assert counts[True] == 2 * (weights + recomputed)
    assert counts[False] == 2 * 4 * (weights + recomputed)  # in each micro-batch and each recomputation
    assert losses(tmp_path / "True") == losses(tmp_path / "False")
    for name, value in params(runs[False]).items():
        assert torch.equal(params(runs[True])[name], value), name


def test_a_stopped_run_resumes_to_exactly_the_uninterrupted_run(tmp_path):
    reference, full = run(tmp_path / "reference", max_steps=8)

    killed = killed_after(5)  # after step 5's update: step 4 was logged, the last checkpoint is step 3
    with pytest.raises(Killed):
        run(tmp_path / "stopped", max_steps=8, after_step=killed)
    assert max(losses(tmp_path / "stopped")) == 4
    assert [p.name for p in CheckpointManager(tmp_path / "stopped" / "checkpoints").complete()] == ["step_00000003"]
    resumed, result = run(tmp_path / "stopped", max_steps=8, resume="auto")
    assert result.resumed_from.name == "step_00000003"
    assert losses(tmp_path / "stopped") == losses(tmp_path / "reference")  # exactly, step for step
    for name, value in params(reference).items():
        assert torch.equal(params(resumed)[name], value), name
    assert result.skipped == full.skipped == [("toy", s, f"step {s} met a bad item") for s in (0, 3, 6)]
    _, again = run(tmp_path / "stopped", max_steps=8, resume="auto")  # a finished run: nothing left to do
    assert again.loss is None and again.step == 8 and again.skipped == full.skipped


@pytest.fixture
def interruptible():
    """SIGINT at Python's default for the test: a process started in the background by a shell (`make test &`,
    a CI runner's) inherits SIGINT ignored, which fit rightly leaves alone."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def signalled_after(calls: int, number: int = signal.SIGTERM):
    """An ``after_step`` hook that sends this process the signal ``number`` at its ``calls``-th call, as a
    scheduler would; the loop must have taken the signal over (the old loop had not: it raises
    :class:`Killed` rather than let the signal kill the test process)."""
    count = [0]

    def hook():
        count[0] += 1
        if count[0] == calls:
            if signal.getsignal(number) in (signal.SIG_DFL, signal.default_int_handler):
                raise Killed(f"fit left {signal.Signals(number).name} to its default action")
            signal.raise_signal(number)

    return hook


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_stop_signal_checkpoints_the_step_and_exits_for_resume_auto(tmp_path, number, capsys, interruptible):
    """SLURM's SIGTERM (or --signal=USR1, Ctrl-C's SIGINT) killed the run mid-step: every step since the last
    checkpoint was lost. Now the step ends, is checkpointed, and the run exits with status 75."""
    reference, _ = run(tmp_path / "reference", max_steps=8)
    with pytest.raises(Preempted) as stopped:  # sent after step 4's losses were summed: read with step 5's
        run(tmp_path / "run", max_steps=8, after_step=signalled_after(4, number))
    name = signal.Signals(number).name
    assert (stopped.value.code, stopped.value.step, stopped.value.signal_name) == (PREEMPTED_EXIT_CODE, 5, name)
    assert stopped.value.checkpoint == tmp_path / "run" / "checkpoints" / "step_00000005"
    assert [p.name for p in CheckpointManager(tmp_path / "run" / "checkpoints").complete()] == [
        "step_00000003",  # (checkpoints are every 3 steps)
        "step_00000005",
    ]
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"stopped by {name} after step 5: checkpoint {stopped.value.checkpoint} written; continue with "
        "training.resume=auto (exit status 75)"
    )
    assert max(losses(tmp_path / "run")) == 5
    assert signal.getsignal(number) in (signal.SIG_DFL, signal.default_int_handler)  # given back
    resumed, result = run(tmp_path / "run", max_steps=8, resume="auto")
    assert result.resumed_from.name == "step_00000005"
    assert losses(tmp_path / "run") == losses(tmp_path / "reference")  # exactly, step for step
    for key, value in params(reference).items():
        assert torch.equal(params(resumed)[key], value), key


def test_fit_in_a_thread_other_than_the_main_one_trains_without_taking_signals(tmp_path):
    import threading

    results = []
    thread = threading.Thread(target=lambda: results.append(run(tmp_path, max_steps=2)[1]))
    thread.start()
    thread.join(timeout=60)
    assert [r.step for r in results] == [2]  # (signal handlers can only be set in the main thread)


def test_a_signal_while_fit_sets_up_stops_after_the_first_step_checkpointed(tmp_path, monkeypatch):
    """A SIGTERM while fit wrapped the model or loaded the checkpoint (seconds to minutes at scale) killed the
    rank, and the other ranks failed with gloo's 'Connection closed by peer'."""
    real = loop_module.setup_training

    def signalled_setup(*args, **kwargs):
        signalled_after(1)()
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "setup_training", signalled_setup)
    with pytest.raises(Preempted) as stopped:
        run(tmp_path, max_steps=8)
    assert (stopped.value.step, stopped.value.checkpoint.name) == (1, "step_00000001")
    assert list(losses(tmp_path)) == [1]


def test_a_repeat_within_the_window_is_the_same_stop_a_later_one_acts_at_once(tmp_path, monkeypatch, interruptible):
    """SLURM signals every process and torchrun forwards its own SIGTERM to its workers: two arrive within
    milliseconds, and the second one killed the worker mid-step (no checkpoint) when any repeat acted."""

    def twice(number):
        def hook():
            signal.raise_signal(number)
            signal.raise_signal(number)

        return hook

    with pytest.raises(Preempted) as stopped:
        run(tmp_path / "twice", max_steps=8, after_step=twice(signal.SIGTERM))
    assert (stopped.value.step, stopped.value.checkpoint.name) == (2, "step_00000002")
    monkeypatch.setattr(preemption_module, "REPEAT_WINDOW_S", 0.0)  # a later repeat: whoever cannot wait
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "later", after_step=twice(signal.SIGINT))
    assert CheckpointManager(tmp_path / "later" / "checkpoints").complete() == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back


def test_a_signal_in_the_last_step_stops_the_run_after_its_final_checkpoint(tmp_path, capsys):
    """A signal after the last step's losses were reduced (during its checkpoint or after_step) was swallowed:
    fit returned, and the recipe went on to export and evaluate until the scheduler's SIGKILL."""
    with pytest.raises(Preempted) as stopped:
        run(tmp_path, max_steps=4, after_step=signalled_after(4))
    assert (stopped.value.step, stopped.value.checkpoint.name) == (4, "step_00000004")
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("stopped by SIGTERM after step 4: checkpoint")
    _, again = run(tmp_path, max_steps=4, resume="auto")  # the resumed job: nothing left to train
    assert again.step == 4 and again.loss is None


class SlowFrom(ToyData):
    """ToyData whose items from ``slow_from`` on take a minute to read (a stalled network read)."""

    def __init__(self, steps, slow_from) -> None:
        super().__init__(steps)
        self.slow_from = slow_from

    def __getitem__(self, index: int) -> ToyItem:
        if index >= self.slow_from:
            time.sleep(60)
        return super().__getitem__(index)


def test_a_stopped_run_ends_its_loader_workers_even_in_the_middle_of_a_slow_read(tmp_path):
    """Workers ignore a scheduler's SIGTERM (it would kill them before the step ends), and torch's own
    shutdown of them is a SIGTERM: a worker in a slow read outlived the stopped run, which could not exit."""
    import multiprocessing

    before = {p.pid for p in multiprocessing.active_children()}
    training, optim = settings(tmp_path, max_steps=8)
    started = time.monotonic()
    with pytest.raises(Preempted) as stopped:
        fit(
            Toy(),
            toy_step,
            SlowFrom(8, slow_from=4),
            training=training,
            optim=optim,
            num_workers=1,
            after_step=signalled_after(2),
            shard_layers=(),
        )
    assert stopped.value.step == 3
    assert time.monotonic() - started < 40  # (the worker's read would take 60 s)
    assert [p.pid for p in multiprocessing.active_children() if p.pid not in before] == []


def _caption_numbers(kind, samples, seeds, *, another=None):
    """A collator for the toy: each caption's number (``caption 7``) as a one-feature row."""
    return {"x": torch.tensor([[float(sample.text.split()[1]) / 64] for sample in samples])}


def _pipe_stream(shards, num_workers: int, tail: str = ""):
    """Batches of 4 from the four shards under ``shards``, each written by ``pipe:cat`` (and ``tail``)."""
    from torchflava.data.streaming import StreamingBatches

    return StreamingBatches(
        f"pipe:cat {shards}/shard-{{000..003}}.tar{tail}",
        _caption_numbers,
        batch_size=4,
        num_workers=num_workers,
        seed=1,
        shuffle_buffer=0,
        require=("text",),
    )


def _streamed_run(out, shards, num_workers, *, after_step=None, resume="none") -> tuple[list, FitResult]:
    """A run of 8 steps on streamed ``pipe:cat`` shards; the sample keys of each step it took, and its result
    (or the Preempted that stopped it)."""
    data = _pipe_stream(shards, num_workers)
    keys = []

    def step(model, item):
        keys.append(list(item.keys))
        prediction = model(item.batch["x"])
        return StepOutput({"l": (prediction**2).sum()}, {"l": torch.tensor(float(prediction.numel()))})

    training, optim = settings(out, max_steps=8, global_batch_size=4, checkpoint_every=100, resume=resume)
    try:
        result = fit(
            SeededLinear(1, 1, seed=0),
            step,
            data,
            training=training,
            optim=optim,
            num_workers=num_workers,
            after_step=after_step,
        )
    except Preempted as stopped:
        return keys, stopped
    return keys, result


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_run_that_ends_leaves_no_shard_command_running_anywhere(tmp_path, num_workers):
    """A loader worker leaves through os._exit without closing its open shard, and the command writing it
    ignores the stop signals: it ran on after the run, adopted by init (so not among the run's descendants),
    until it ended by itself. It now dies with the worker."""
    from tests.data.test_streaming import write_large_shards

    write_large_shards(tmp_path / "shards", shards=4, per_shard=12)
    mark = f"sleep 29.{700 + num_workers}{os.getpid()}"  # (each shard's command ends with it: found by it)
    data = _pipe_stream(tmp_path / "shards", num_workers, tail=f"; {mark}")

    def step(model, item):
        prediction = model(item.batch["x"])
        return StepOutput({"l": (prediction**2).sum()}, {"l": torch.tensor(float(prediction.numel()))})

    training, optim = settings(tmp_path / "run", max_steps=2, global_batch_size=4, checkpoint_every=100)
    fit(SeededLinear(1, 1, seed=0), step, data, training=training, optim=optim, num_workers=num_workers)
    left = []
    for _ in range(20):  # (the kernel's signal and the shell's kill take a moment)
        left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p).endswith(mark)]
        if not left:
            break
        time.sleep(0.05)
    assert left == []


def _cmdline(process: Path) -> str:
    try:
        return (process / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:  # (gone meanwhile)
        return ""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_stop_signal_to_the_whole_job_resumes_a_pipe_stream_exactly(tmp_path, num_workers):
    """SLURM's SIGTERM also reaches the `pipe:` commands: with the shards read in the main process, the shard
    under way read on as cut while the run finished its step (its rest lost for the epoch, a broken shard in
    the report), and the resumed run did not see the samples an uninterrupted one sees."""
    from tests.data.test_streaming import descendants, signal_the_job, write_large_shards  # (webdataset: here)

    write_large_shards(tmp_path / "shards", shards=4, per_shard=12)
    reference, full = _streamed_run(tmp_path / "reference", tmp_path / "shards", num_workers)
    before = frozenset(descendants())
    count = [0]

    def stop_the_job():  # after step 3's update: read with step 4's losses, the run stops after step 4
        count[0] += 1
        if count[0] == 3:
            signal_the_job(spared=before)

    first, stopped = _streamed_run(tmp_path / "run", tmp_path / "shards", num_workers, after_step=stop_the_job)
    assert (stopped.code, stopped.step, stopped.checkpoint.name) == (PREEMPTED_EXIT_CODE, 4, "step_00000004")
    assert descendants() - before == set()  # (the shard command under way was killed, not left running)
    rest, result = _streamed_run(tmp_path / "run", tmp_path / "shards", num_workers, resume="auto")
    assert first + rest == reference  # the same samples, in the same steps
    assert result.skipped == full.skipped == []
    assert losses(tmp_path / "run") == losses(tmp_path / "reference")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_stream_that_runs_dry_is_a_one_line_error_and_its_workers_end(tmp_path, num_workers):
    """A stream shorter than max_steps x grad_accumulation left fit as a bare StopIteration()."""
    import multiprocessing

    from torch.utils.data import IterableDataset

    class Short(IterableDataset):
        def __iter__(self):
            return iter([ToyData(1)[0]])  # one micro-batch per loader process

        def load_state_dict(self, position):
            pass

    before = set(multiprocessing.active_children())
    training, optim = settings(tmp_path, max_steps=4, grad_accumulation=1)
    with pytest.raises(ValueError) as error:
        fit(Toy(), toy_step, Short(), training=training, optim=optim, num_workers=num_workers, shard_layers=())
    got = max(1, num_workers)
    assert str(error.value) == (
        "data: expected a stream of at least (max_steps - 0) x grad_accumulation = 4 micro-batches from step 1 on, "
        f"got one that ended after {got} (in step {got + 1})"
    )
    assert [p for p in multiprocessing.active_children() if p not in before] == []


def _sleep_a_while():
    time.sleep(30)


def test_fit_ends_its_loader_workers_and_no_other_process(tmp_path):
    """fit kills its loader's workers that outlive torch's shutdown, and only those: a process the user's
    step started during the run (a pool, an upload) is not the loader's."""
    import multiprocessing

    started = []

    def step(model, item):
        if not started:
            started.append(multiprocessing.get_context("spawn").Process(target=_sleep_a_while, daemon=True))
            started[0].start()
        return toy_step(model, item)

    training, optim = settings(tmp_path, max_steps=2, grad_accumulation=1)
    try:
        fit(Toy(), step, ToyData(8), training=training, optim=optim, num_workers=1, shard_layers=())
        assert started[0].is_alive()
    finally:
        started[0].kill()
        started[0].join()


def test_a_handler_of_the_programs_own_is_left_alone(tmp_path):
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda number, frame: seen.append(number))
    try:  # (e.g. faulthandler.register(SIGUSR1) to dump tracebacks): still the program's during the run
        _, result = run(tmp_path / "own", max_steps=2, after_step=lambda: signal.raise_signal(signal.SIGUSR1))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert result.step == 2 and seen == [signal.SIGUSR1, signal.SIGUSR1]


def test_a_record_holds_the_mean_losses_since_the_last_one_also_across_a_resume(tmp_path):
    """With training.log_every > 1 the record held the logged step's own loss (one step in ten, say),
    not the mean over the steps it stands for; the window's sums travel in the checkpoint, so a run
    resumed inside a window logs what the uninterrupted one does."""
    run(tmp_path / "every", max_steps=7, log_every=1)
    each = read_metrics(tmp_path / "every" / "metrics.jsonl")
    run(tmp_path / "windows", max_steps=7, log_every=4, checkpoint_every=3)
    windows = read_metrics(tmp_path / "windows" / "metrics.jsonl")
    assert [r["step"] for r in windows] == [4, 7]
    for record, steps in zip(windows, (each[0:4], each[4:7])):
        for key in ("loss", "loss/tokens", "loss/rows"):
            assert record[key] == sum(r[key] for r in steps) / len(steps), key
        assert record["grad_norm"] == steps[-1]["grad_norm"] and record["lr"] == steps[-1]["lr"]
    assert windows[0]["loss"] != each[3]["loss"]

    killed = killed_after(5)  # after step 5's update: step 4 was logged, the last checkpoint is step 3
    with pytest.raises(Killed):
        run(tmp_path / "stopped", max_steps=7, log_every=4, checkpoint_every=3, after_step=killed)
    run(tmp_path / "stopped", max_steps=7, log_every=4, checkpoint_every=3, resume="auto")  # from step 3's
    resumed = read_metrics(tmp_path / "stopped" / "metrics.jsonl")
    drop = ("samples_per_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == [
        {k: v for k, v in r.items() if k not in drop} for r in windows
    ]


def test_a_non_finite_loss_stops_naming_the_last_good_checkpoint(tmp_path):
    def step(model, item):
        calls["n"] += 1
        sums, counts = toy_sums(model, item.batch)
        if calls["n"] == 5:
            sums["tokens"] = sums["tokens"] * float("nan")
        return StepOutput(sums, counts)

    calls = {"n": 0}
    with pytest.raises(NonFiniteLossError, match="at step 5 .*kind toy") as error:
        run(tmp_path, step=step, max_steps=8, checkpoint_every=2)
    last = tmp_path / "checkpoints" / "step_00000004"
    # the loss of step 5 came from the weights of step 4: resuming from there with a lower lr meets it again
    assert f"The last good checkpoint, {last}, holds the weights this step started from" in str(error.value)
    assert f"resume from an earlier checkpoint ({last.parent / 'step_00000002'})" in str(error.value)
    calls["n"] = -3  # the 8th call: step 8's, two steps after the last checkpoint, whose weights may do
    with pytest.raises(NonFiniteLossError) as error:
        run(tmp_path / "b", step=step, max_steps=8, checkpoint_every=3)
    last = tmp_path / "b" / "checkpoints" / "step_00000006"
    assert f"The last good checkpoint is {last}; lower optim.lr" in str(error.value)
    assert f"resume with training.resume={last}" in str(error.value)
    assert [p.name for p in CheckpointManager(tmp_path / "checkpoints").complete()] == [
        "step_00000002",
        "step_00000004",
    ]
    assert sorted(losses(tmp_path)) == [1, 2, 3, 4]


class _NaNGradient(torch.autograd.Function):
    """The identity, whose backward gives NaN: a finite loss with non-finite gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_non_finite_gradients_stop_the_run_without_clipping_too(tmp_path):
    def step(model, item):
        calls["n"] += 1
        sums, counts = toy_sums(model, item.batch)
        if calls["n"] == 3:
            sums["tokens"] = _NaNGradient.apply(sums["tokens"])
        return StepOutput(sums, counts)

    calls = {"n": 0}
    with pytest.raises(NonFiniteLossError, match=r"gradient norm nan at step 3"):
        run(tmp_path, step=step, max_steps=4, checkpoint_every=2, clip_grad_norm=None)
    assert sorted(losses(tmp_path)) == [1, 2]  # no step was taken with the NaN gradients
    assert [p.name for p in CheckpointManager(tmp_path / "checkpoints").complete()] == ["step_00000002"]
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["grad_norm"] > 0  # logged unclipped as well


def test_resuming_from_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path):
    run(tmp_path, max_steps=6, checkpoint_every=2, keep_checkpoints=3)
    old = tmp_path / "checkpoints" / "step_00000002"
    run(tmp_path, max_steps=6, checkpoint_every=1, keep_checkpoints=2, resume=str(old), lr=0.02)
    # Rotation kept the new trajectory's newest (not the abandoned run's step 4 and 6), and auto
    # would resume from it; the abandoned checkpoints are kept aside, not deleted.
    assert [p.name for p in CheckpointManager(tmp_path / "checkpoints").complete()] == [
        "step_00000005",
        "step_00000006",
    ]
    abandoned = tmp_path / "checkpoints" / "abandoned"
    assert sorted(p.name for p in abandoned.iterdir()) == ["metrics.jsonl", "step_00000004", "step_00000006"]
    # The abandoned trajectory's records after step 2 went with its checkpoints; the log holds the new one's.
    assert [r["step"] for r in read_metrics(abandoned / "metrics.jsonl")] == [3, 4, 5, 6]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_a_fresh_start_over_damaged_checkpoints_sets_them_aside(tmp_path, capsys):
    run(tmp_path, max_steps=8, checkpoint_every=4)
    root = tmp_path / "checkpoints"
    for step in (4, 8):  # one byte changed in each: resume=auto finds nothing intact
        metadata = root / f"step_{step:08d}" / ".metadata"
        data = bytearray(metadata.read_bytes())
        data[20] ^= 0xFF
        metadata.write_bytes(bytes(data))
    capsys.readouterr()
    _, result = run(tmp_path, max_steps=2, checkpoint_every=2, resume="auto")
    assert result.resumed_from is None
    err = capsys.readouterr().err
    assert f"starting afresh (moving them to {root / 'abandoned'})" in err
    assert "resume: step_00000008 is newer than this fresh run's start; moved to" in err
    # Rotation kept the fresh run's own checkpoint (not the damaged, higher-numbered ones), auto
    # resumes from it, and the damaged ones are kept aside, not deleted.
    assert [p.name for p in CheckpointManager(root).complete()] == ["step_00000002"]
    assert sorted(p.name for p in (root / "abandoned").iterdir()) == ["metrics.jsonl", "step_00000004", "step_00000008"]
    assert f"metrics: the earlier records not continued here moved to {root / 'abandoned' / 'metrics.jsonl'}" in err
    assert [r["step"] for r in read_metrics(root / "abandoned" / "metrics.jsonl")] == list(range(1, 9))
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    _, again = run(tmp_path, max_steps=2, checkpoint_every=2, resume="auto")
    assert again.resumed_from == root / "step_00000002" and again.loss is None
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]  # resuming sets nothing aside
    assert len(list((root / "abandoned").glob("metrics.jsonl*"))) == 1


@pytest.mark.parametrize("kind", ["file", "link"])
def test_a_file_or_link_named_like_a_checkpoint_is_refused_at_the_start_and_left_as_it_was(tmp_path, kind):
    """A plain file checkpoints/step_<N> was renamed to .step_<N>.deleting when the run saved step N, and
    kept there for good (rmtree cannot remove a file): now the run refuses to start, naming it."""
    root = tmp_path / "checkpoints"
    root.mkdir()
    stray = root / "step_00000003"
    if kind == "file":
        stray.write_text("notes")
    else:
        (tmp_path / "elsewhere").mkdir()
        stray.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError) as caught:
        run(tmp_path, max_steps=6, checkpoint_every=3, resume="auto")
    assert str(caught.value) == (
        f"key 'training.output_dir': expected only checkpoint directories named step_<N> in {root}, got 1 "
        f"file(s) or link(s) of such a name ({stray}); move them elsewhere"
    )
    assert sorted(p.name for p in root.iterdir()) == ["step_00000003"] and stray.is_symlink() == (kind == "link")
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_checkpoint_of_another_model_is_refused_in_one_line(tmp_path):
    run(tmp_path / "a", max_steps=4, checkpoint_every=2)  # (the schedule resumed: the same, checked first)
    training, optim = settings(
        tmp_path / "b", max_steps=4, resume=str(tmp_path / "a" / "checkpoints" / "step_00000002")
    )
    wider = Toy()
    wider.linear = Linear(3, 5)
    with pytest.raises(
        ConfigError, match=r"key 'training.resume': .*step_00000002 does not load into this run's model"
    ) as error:
        fit(wider, toy_step, ToyData(4), training=training, optim=optim, shard_layers=())
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "before, after", [({}, {"linear": 0.5}), ({"linear": 0.5}, {}), ({"linear": 0.5}, {"gain": 0.5})]
)
def test_a_checkpoint_trained_with_other_lr_multipliers_is_refused_in_one_line(tmp_path, before, after):
    """Other multipliers build other parameter groups: without the run's config.yaml to compare with (a
    checkpoint copied away), loading one failed inside torch's state-dict code (or at the next scheduler
    step, or silently gave modules another learning rate)."""
    run(tmp_path / "a", max_steps=4, checkpoint_every=2, lr_multipliers=before)  # (the schedule resumed: the same)
    resume = str(tmp_path / "a" / "checkpoints" / "step_00000002")
    with pytest.raises(ConfigError, match=r"^key 'optim.lr_multipliers': expected the multipliers .*step_00000002 was"):
        run(tmp_path / "b", max_steps=4, resume=resume, lr_multipliers=after)
    model, result = run(tmp_path / "c", max_steps=4, resume=resume, lr_multipliers=before)  # the same: resumes
    assert result.resumed_from == Path(resume) and result.step == 4


def test_a_checkpoint_whose_groups_hold_other_parameters_names_them_not_the_multipliers(tmp_path, monkeypatch):
    """Groups of the same multipliers holding other parameters (param_groups' decay rule changed since the
    checkpoint, as it did for nn.MultiheadAttention's in_proj_weight): the refusal blamed optim.lr_multipliers,
    saying the same multipliers were expected and given."""
    run(tmp_path / "a", max_steps=4, checkpoint_every=2, weight_decay=0.1)  # groups: [linear.weight], [bias, gain]
    import torchflava.training.schema as schema_module

    built = schema_module.param_groups

    def gain_decayed(*args, **kwargs):  # the rule as it might have changed: the scalar gain decayed too
        groups = built(*args, **kwargs)
        for group in groups:
            keep = [i for i, name in enumerate(group["names"]) if name != "gain"]
            if len(keep) < len(group["names"]) and group["weight_decay"] == 0.0:
                gain = group["params"][group["names"].index("gain")]
                group["params"], group["names"] = [group["params"][i] for i in keep], [group["names"][i] for i in keep]
        decayed = next(g for g in groups if g["weight_decay"] > 0)
        decayed["params"].append(gain)
        decayed["names"].append("gain")
        return groups

    monkeypatch.setattr(schema_module, "param_groups", gain_decayed)
    resume = str(tmp_path / "a" / "checkpoints" / "step_00000002")
    with pytest.raises(ConfigError) as error:
        run(tmp_path / "b", max_steps=4, resume=resume, weight_decay=0.1)
    assert str(error.value).startswith(
        f"key 'training.resume': expected {resume}'s optimiser to group the parameters as this run's does under "
        "the same optim.lr_multipliers, got 1 in another group (gain): "
    )


@dataclass
class _Model:
    activation: str = "gelu"


@dataclass
class _Run:
    model: _Model
    training: TrainingConfig
    optim: OptimConfig


def _started(out, activation="gelu", **changes) -> tuple[_Run, RunStart]:
    """A recipe's start (:func:`start_run`) for a toy config: the run directory taken, the resume point
    found, and for a resumed run the config compared and the loop states read."""
    config = _Run(_Model(activation), *settings(out, **changes))
    try:
        return config, start_run(config, lambda config, world_size: None)
    finally:
        release_run_directory(config.training)


def test_a_checkpoint_records_its_config_and_a_resume_is_checked_against_it_alone(tmp_path):
    """A run directory without config.yaml (deleted, or a checkpoint copied alone) was resumed with
    another model or data and no complaint; the checkpoint now holds the config it was trained with."""
    config, start = _started(tmp_path / "a", max_steps=2, checkpoint_every=2)
    fit(Toy(), toy_step, ToyData(2), training=config.training, optim=config.optim, shard_layers=(), start=start)
    checkpoint = tmp_path / "a" / "checkpoints" / "step_00000002"
    assert (checkpoint / "config.yaml").read_text() == start.config
    assert "activation: gelu" in start.config
    assert "config.yaml" in json.loads((checkpoint / "COMPLETE").read_text())["files"]  # under the digest
    assert (tmp_path / "a" / "config.yaml").read_text() == start.config  # the run's, written by the loop
    shutil.copytree(checkpoint, tmp_path / "copied" / "step_00000002")
    for out, resume in ((tmp_path / "a", "auto"), (tmp_path / "b", str(tmp_path / "copied" / "step_00000002"))):
        recorded = Path(resume if resume != "auto" else checkpoint) / "config.yaml"
        with pytest.raises(ConfigError) as caught:
            _started(out, activation="relu", max_steps=4, resume=resume)
        assert str(caught.value) == (
            f"key 'model.activation' ('gelu' -> 'relu'): expected the values the checkpoint was trained with "
            f"({recorded}), since a resumed run cannot change what it trains; start a new run in another "
            "training.output_dir"
        )
        _, again = _started(out, max_steps=4, resume=resume)  # the same model: resumes
        assert again.resume_from == recorded.parent and len(again.loop_states) == 1


def test_a_relative_output_dir_is_recorded_absolute_so_the_run_s_config_resumes_it_from_anywhere(tmp_path, monkeypatch):
    """config.yaml recorded training.output_dir as typed: config=<run>/config.yaml training.resume=auto from another
    working directory found no checkpoint there and started a new run, without a word. It is recorded absolute
    (against the working directory at the start); the caller's config keeps what was typed."""
    import yaml

    for place in ("a", "b"):
        (tmp_path / place).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    training, optim = settings("run", max_steps=2, checkpoint_every=2)
    config = _Run(_Model(), training, optim)
    try:
        start = start_run(config, lambda config, world_size: None)
        fit(Toy(), toy_step, ToyData(2), training=config.training, optim=optim, shard_layers=(), start=start)
    finally:
        release_run_directory(config.training)
    assert (training.output_dir, config.training.output_dir) == ("run", str(tmp_path / "a" / "run"))
    recorded = yaml.safe_load((tmp_path / "a" / "run" / "config.yaml").read_text())["training"]["output_dir"]
    assert recorded == str(tmp_path / "a" / "run")
    monkeypatch.chdir(tmp_path / "b")
    _, again = _started(recorded, max_steps=4, resume="auto")  # (the run's config.yaml, from elsewhere)
    assert again.resume_from == tmp_path / "a" / "run" / "checkpoints" / "step_00000002"
    assert list((tmp_path / "b").iterdir()) == []


def test_a_resume_refused_inside_fit_leaves_the_runs_config_and_files_as_they_were(tmp_path):
    """The recipes wrote config.yaml (and their vocabulary) before fit, whose loading of the checkpoint could
    still refuse the resume: config.yaml then described a run (here lr 0.5) its checkpoints do not belong
    to. fit writes both now, once the checkpoint has loaded."""
    written = []

    def run_files(directory: Path) -> None:
        written.append(directory)
        (directory / "vocab.txt").write_text(f"vocab of run {len(written)}\n")

    def fitted(model, steps: int, config, start):
        fit(
            model,
            toy_step,
            ToyData(steps),
            training=config.training,
            optim=config.optim,
            shard_layers=(),
            start=start,
            run_files=run_files,
        )

    config, start = _started(tmp_path, max_steps=2, checkpoint_every=2)
    fitted(Toy(), 2, config, start)
    assert written == [tmp_path] and (tmp_path / "config.yaml").read_text() == start.config
    saved = {name: (tmp_path / name).read_text() for name in ("config.yaml", "vocab.txt", "metrics.jsonl")}
    config, start = _started(tmp_path, max_steps=4, resume="auto", lr=0.5)  # an applied change: start_run passes it
    wider = Toy()
    wider.linear = Linear(3, 5)  # a checkpoint that does not load: refused inside fit
    with pytest.raises(ConfigError, match=r"^key 'training.resume': .*step_00000002 does not load into this run's"):
        fitted(wider, 4, config, start)
    assert written == [tmp_path]  # not called
    assert {name: (tmp_path / name).read_text() for name in saved} == saved
    fitted(Toy(), 4, config, start)
    assert "lr: 0.5" in (tmp_path / "config.yaml").read_text() and written == [tmp_path, tmp_path]


def test_a_resumes_applied_changes_are_said_by_rank_0_alone(tmp_path, monkeypatch, capsys):
    """start_run printed 'resume: optim.lr: ... (applied from here on)' on every rank: under torchrun each
    change once a rank (8 lines for one change on 8 GPUs)."""
    config, start = _started(tmp_path, max_steps=2, checkpoint_every=2)
    fit(Toy(), toy_step, ToyData(2), training=config.training, optim=config.optim, shard_layers=(), start=start)
    capsys.readouterr()
    said = {}
    for rank in (0, 1):  # start_run as each of two ranks sees it (their own process group left out)
        info = DistributedInfo(rank, 2, rank, torch.device("cpu"))
        monkeypatch.setattr(loop_module, "init_distributed", lambda *args, info=info, **kwargs: info)
        _, resumed = _started(tmp_path, max_steps=4, resume="auto", lr=0.5)
        assert resumed.resume_from.name == "step_00000002"
        said[rank] = capsys.readouterr().err
    changes = ["optim.lr: 0.05 -> 0.5", "training.max_steps: 2 -> 4"]
    assert said == {0: "".join(f"resume: {change} (applied from here on)\n" for change in changes), 1: ""}


def test_a_checkpoint_that_records_no_config_is_refused_without_its_runs_config(tmp_path):
    run(tmp_path / "a", max_steps=2, checkpoint_every=2)  # fit without a recipe's start: no config recorded
    checkpoint = tmp_path / "a" / "checkpoints" / "step_00000002"
    assert not (checkpoint / "config.yaml").exists()
    with pytest.raises(ConfigError) as caught:
        _started(tmp_path / "a", max_steps=4, resume="auto")
    assert str(caught.value) == (
        "key 'training.resume': expected a checkpoint whose config can be compared with this run's, but "
        f"{checkpoint / 'config.yaml'} is missing, so what it was trained with cannot be verified; start a new "
        "run in another training.output_dir"
    )
    # a checkpoint written before checkpoints recorded their config is checked against its run's config.yaml
    save_config(_Run(_Model("gelu"), *settings(tmp_path / "a", max_steps=2)), tmp_path / "a" / "config.yaml")
    with pytest.raises(ConfigError, match=r"^key 'model.activation' \('gelu' -> 'relu'\): expected the values"):
        _started(tmp_path / "a", activation="relu", max_steps=4, resume="auto")
    assert _started(tmp_path / "a", max_steps=4, resume="auto")[1].resume_from == checkpoint


class _Code:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def _set(state: dict, key: str, value) -> dict:
    state = dict(state)
    state[key] = value
    return state


@pytest.mark.parametrize(
    "tamper, fault",
    [
        (
            lambda s: _set(s, "evil", _Code()),
            "holds a value that is not plain data (it would need code to be unpickled)",
        ),
        (lambda s: torch.zeros(1), "holds a Tensor, not the training loop's state (a dict)"),
        (lambda s: {k: v for k, v in s.items() if k != "rng"}, "lacks ['rng']"),
        (
            lambda s: _set(s, "rng", {**s["rng"], "torch": torch.zeros(3)}),
            "rng is not the random states it saves (TypeError: RNG state must be a torch.ByteTensor)",
        ),
        (
            lambda s: _set(s, "rng", {**s["rng"], "python": (3, (1, 2), None)}),
            "rng is not the random states it saves (ValueError: state vector is the wrong size)",
        ),
        (
            lambda s: _set(s, "scheduler", {"foo": 1}),
            "scheduler is not a learning-rate schedule's state (base_lrs and last_epoch)",
        ),
        (lambda s: _set(s, "skipped", 5), "skipped is not a list of unusable samples, got int"),
        (lambda s: _set(s, "step", 5), "says step 5, the checkpoint is of step 3"),
        (
            lambda s: _set(s, "groups", [[["linear.weight"], 1.0]] * 7),
            "groups are not one [names, multiplier] per scheduled group (2)",
        ),
        (
            lambda s: _set(s, "window", {"steps": 2, "loss": 1.0, "parts": {"tokens": [1.0, 3]}}),
            "window parts are not [sum, steps] per loss name",
        ),
        (
            lambda s: _set(s, "window", {"steps": -1, "loss": "x", "parts": {}}),
            "window has steps -1 and loss 'x', expected a count >= 0 and a number",
        ),
        (lambda s: _set(s, "window", [1]), "window is not the logged window's sums (steps, loss and parts)"),
        *(
            (
                functools.partial(_set, key="grad_accumulation", value=value),
                f"grad_accumulation is not a number of micro-batches (an int >= 1), got {value!r}",
            )
            for value in ("2", 0, -1, True, 2.0)
        ),
    ],
)
def test_a_malformed_loop_state_is_refused_in_one_line_before_anything_is_written(tmp_path, tamper, fault, capsys):
    """A rank0.pt changed after the save (its COMPLETE marker recomputed) gave a traceback from deep in the
    loop or torch (with torch's advice to load it with weights_only=False), after work had started."""
    config, start = _started(tmp_path, max_steps=3, checkpoint_every=3)
    fit(Toy(), toy_step, ToyData(3), training=config.training, optim=config.optim, shard_layers=(), start=start)
    checkpoint = tmp_path / "checkpoints" / "step_00000003"
    torch.save(tamper(torch.load(checkpoint / "rank0.pt", weights_only=True)), checkpoint / "rank0.pt")
    write_marker(checkpoint, 3, 1)
    metrics = (tmp_path / "metrics.jsonl").read_text()
    capsys.readouterr()
    for resume in (
        lambda: _started(tmp_path, max_steps=6, resume="auto"),
        lambda: run(tmp_path, max_steps=6, resume="auto"),
    ):
        with pytest.raises(ConfigError) as caught:
            resume()
        assert (
            str(caught.value)
            == f"key 'training.resume': {checkpoint} does not load into this run: its rank0.pt {fault}"
        )
    assert (tmp_path / "metrics.jsonl").read_text() == metrics  # nothing rewritten
    assert capsys.readouterr().out == ""  # no code ran


def test_resuming_past_max_steps_is_refused(tmp_path):
    run(tmp_path, max_steps=6, checkpoint_every=3)
    with pytest.raises(
        ConfigError, match=r"key 'training.max_steps': expected at least the step of the checkpoint .* 6"
    ):
        run(tmp_path, max_steps=4, resume="auto")


@pytest.mark.parametrize(
    "change, key",
    [
        ({"precision": "fp16"}, "training.precision"),  # was trained in fp32 without a word
        ({"clip_grad_norm": 0.0}, "optim.clip_grad_norm"),  # was clipping switched off
        ({"checkpoint_every": 0}, "training.checkpoint_every"),  # was a ZeroDivisionError after a step
        ({"grad_accumulation": 0}, "training.grad_accumulation"),
        ({"seed": 2**64}, "training.seed"),
        ({"eps": float("inf")}, "optim.eps"),
    ],
)
def test_fit_checks_its_settings_before_any_work(tmp_path, change, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        run(tmp_path, data=ToyData(6), **change)
    assert not (tmp_path / "metrics.jsonl").exists()


class ToyEncoder(nn.Module):
    """Tokens through two transformer layers (the blocks ``training.compile`` compiles), padding masked."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.embed, self.head = nn.Linear(3, 16), nn.Linear(16, 2)
        self.encoder = transformer_encoder(embed_dim=16, num_layers=2, num_heads=2, mlp_dim=32)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x), key_padding_mask=padding).last_hidden_state)


def encoder_step(model, item):
    b = item.batch
    error = ((model(b["x"], ~b["mask"]) - b["y"]) ** 2).sum(-1)
    return StepOutput({"tokens": (error * b["mask"]).sum()}, {"tokens": b["mask"].sum()})


def test_compile_trains_like_eager(tmp_path):
    torch._dynamo.reset()
    # The toy has no repeated block: its whole forward is compiled.
    eager, _ = run(tmp_path / "eager")
    compiled, _ = run(tmp_path / "compiled", compile=True)
    assert compiled.forward.__func__ is not Toy.forward  # really compiled
    for name, value in params(eager).items():
        assert_close(params(compiled)[name], value, atol=1e-6, rtol=0, msg=name)
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), abs=1e-6)
    copy = deepcopy(compiled)  # e.g. an EMA teacher: it runs its own weights, not the original's
    x = torch.randn(2, 3)
    with torch.no_grad():
        before = copy(x)
        compiled.linear.weight.add_(1.0)
        assert_close(copy(x), before, atol=0, rtol=0)
        copy.linear.weight.add_(1.0)
        assert_close(copy(x), compiled(x), atol=1e-6, rtol=0)
    # Transformer layers are compiled one by one; the state dict keeps its names.
    runs = {}
    for compile_ in (False, True):
        # Adam's eps well above rounding noise: a key bias has a zero gradient up to rounding,
        # which Adam with a tiny eps would turn into full-size steps of random sign.
        training, optim = settings(tmp_path / f"encoder-{compile_}", compile=compile_, max_steps=4, eps=1e-4)
        model = ToyEncoder()
        fit(model, encoder_step, ToyData(4), training=training, optim=optim)
        runs[compile_] = model
    layers = [m for m in runs[True].modules() if isinstance(m, TransformerEncoderLayer)]
    assert len(layers) == 2 and all(m.forward.__func__ is not TransformerEncoderLayer.forward for m in layers)
    assert runs[True].state_dict().keys() == runs[False].state_dict().keys()
    for name, value in params(runs[False]).items():
        assert_close(params(runs[True])[name], value, atol=1e-5, rtol=0, msg=name)
    assert losses(tmp_path / "encoder-True") == pytest.approx(losses(tmp_path / "encoder-False"), abs=1e-5)


class TwoTowers(nn.Module):
    """Two encoders of identical layers, called two ways each: the image tower on 5 tokens with its last layer
    computing the first position alone, the text tower on text of the step's length with padding masked."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.embed, self.head = nn.Linear(3, 16), nn.Linear(16, 2)
        self.position = nn.Parameter(torch.randn(8, 16) * 0.1)
        self.image = transformer_encoder(embed_dim=16, num_layers=2, num_heads=2, mlp_dim=32)
        self.text = transformer_encoder(embed_dim=16, num_layers=2, num_heads=2, mlp_dim=32)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        # (with the positions added, a first layer's input is no view: dynamo guards a view's base, and a view
        # and a tensor of its own, once the length is dynamic, would take a graph each)
        return self.embed(x) + self.position[: x.shape[1]]

    def forward(self, image: torch.Tensor, text: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        pooled = self.image(self.tokens(image), output_positions=slice(0, 1)).last_hidden_state[:, 0]
        tokens = self.text(self.tokens(text), key_padding_mask=padding).last_hidden_state
        return self.head(tokens + pooled[:, None])


TEXT_LENGTHS = (4, 6, 5, 7, 3)


class TowerData(Dataset):
    """Step ``i``: 8 images of 5 tokens, 8 texts of TEXT_LENGTHS[i] tokens (rows 1 to that long)."""

    def __len__(self) -> int:
        return len(TEXT_LENGTHS)

    def __getitem__(self, index: int) -> ToyItem:
        g, length = torch.Generator().manual_seed(300 + index), TEXT_LENGTHS[index]
        image, text, y = torch.randn(8, 5, 3, generator=g), torch.randn(8, length, 3, generator=g), torch.randn(8, 2)
        mask = torch.arange(length) < torch.tensor([length, 1, length - 1, 2] * 2)[:, None]
        return ToyItem({"image": image, "text": text, "mask": mask, "y": y}, "toy", [])


def tower_step(model, item):
    b = item.batch
    error = ((model(b["image"], b["text"], ~b["mask"]) - b["y"][:, None]) ** 2).sum(-1)
    return StepOutput({"tokens": (error * b["mask"]).sum()}, {"tokens": b["mask"].sum()})


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and their runs, running them as traced."""

    def __init__(self) -> None:
        self.graphs, self.runs = 0, 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1

        def run(*args):
            self.runs += 1
            return graph_module.forward(*args)

        return run


def compiled_tower_run(out, monkeypatch, *, limit: int, compile_=True, steps=len(TEXT_LENGTHS)):
    """TwoTowers trained ``steps`` steps (compiled through a :class:`CountingBackend` with dynamo's recompile
    limit at ``limit``): (model, backend, calls of its layers)."""
    backend, calls = CountingBackend(), [0]
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    model = TwoTowers()
    for layer in (m for m in model.modules() if isinstance(m, TransformerEncoderLayer)):
        layer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    training, optim = settings(out, compile=compile_, max_steps=steps, eps=1e-4)
    with torch._dynamo.config.patch(recompile_limit=limit):
        fit(model, tower_step, TowerData(), training=training, optim=optim)
    monkeypatch.undo()
    return model, backend, calls[0]


def test_every_group_of_blocks_compiles_within_its_own_recompile_limit(tmp_path, monkeypatch, capsys):
    # One compiled TransformerEncoderLayer.forward, one code object, for every layer: dynamo's recompile limit
    # (8) was the model's, and the calls past it ran eagerly, said in a log line at most (FLAVA with 2 layers a
    # tower, bf16 and full activation checkpointing hit it: the 9th graph). Each encoder's layers now compile
    # their own copy: here two ways of calling a tower, two graphs a tower, within a limit of 2.
    torch._dynamo.reset()
    model, backend, calls = compiled_tower_run(tmp_path / "compiled", monkeypatch, limit=2)
    assert calls == 4 * len(TEXT_LENGTHS) and backend.runs == calls  # every layer's every call ran compiled
    # the image tower: its layers, its last layer at one position; the text: its first length, then any length
    assert backend.graphs == 4
    assert "training.compile" not in capsys.readouterr().err
    eager, _, _ = compiled_tower_run(tmp_path / "eager", monkeypatch, limit=2, compile_=False)
    for name, value in params(eager).items():
        assert_close(params(model)[name], value, atol=1e-6, rtol=0, msg=name)
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), abs=1e-6)
    text, image = model.text.layers, model.image.layers  # a compiled forward for each encoder's layers
    assert text[0].forward.__func__ is text[1].forward.__func__ is not image[0].forward.__func__
    assert model.state_dict().keys() == eager.state_dict().keys()


def test_text_of_varying_length_compiles_at_most_twice_a_group(tmp_path, monkeypatch):
    torch._dynamo.reset()
    _, backend, _ = compiled_tower_run(tmp_path / "one", monkeypatch, limit=8, steps=1)
    assert backend.graphs == 3  # the image tower's two graphs, the text's first length
    torch._dynamo.reset()
    _, backend, _ = compiled_tower_run(tmp_path / "all", monkeypatch, limit=8)
    assert backend.graphs == 4  # then one text graph for every other length


def test_calls_past_a_groups_recompile_limit_are_said_once_and_run_eagerly(tmp_path, monkeypatch, capsys):
    torch._dynamo.reset()
    model, backend, calls = compiled_tower_run(tmp_path / "compiled", monkeypatch, limit=1)
    err = capsys.readouterr().err
    limit = "reached torch._dynamo.config.recompile_limit (1): calls unlike those compiled run eagerly"
    for group in ("image.layers", "text.layers"):
        assert err.count(f"training.compile: the TransformerEncoderLayer blocks of {group} {limit}") == 1, err
    assert err.count("training.compile") == 2
    # compiled: the image tower's first layer at every step, the text's two layers at the first step's length
    assert backend.graphs == 2 and backend.runs == len(TEXT_LENGTHS) + 2 and calls == 20
    eager, _, _ = compiled_tower_run(tmp_path / "eager", monkeypatch, limit=1, compile_=False)
    for name, value in params(eager).items():
        assert_close(params(model)[name], value, atol=1e-6, rtol=0, msg=name)


class Breaking(nn.Module):
    """A block whose forward does not trace whole (a graph break)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._dynamo.graph_break()
        return torch.tanh(self.linear(x))


class BreakingStack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.blocks, self.out = nn.Sequential(Breaking(), Breaking()), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(x))


def test_blocks_that_do_not_compile_whole_are_said_once_and_run_eagerly(tmp_path, capsys):
    # A graph break in a block was compiled around in pieces, without a word.
    torch._dynamo.reset()
    runs = {}
    for compile_ in (False, True):
        training, optim = settings(tmp_path / f"{compile_}", compile=compile_, max_steps=3)
        runs[compile_] = BreakingStack()
        fit(runs[compile_], toy_step, ToyData(3), training=training, optim=optim, shard_layers=(Breaking,))
    lines = [line for line in capsys.readouterr().err.splitlines() if "training.compile" in line]
    assert lines == [
        "training.compile: the Breaking blocks of blocks do not compile whole: they run eagerly from here on "
        "(Call to `torch._dynamo.graph_break()`)"
    ]
    for name, value in params(runs[False]).items():
        assert_close(params(runs[True])[name], value, atol=0, rtol=0, msg=name)
    # an error of the call itself is raised as eagerly, with nothing said
    encoder = ToyEncoder()
    loop_module.compile_blocks(encoder, (TransformerEncoderLayer,))
    with pytest.raises(ValueError, match=r"x must be a \(B, S, 16\) floating-point tensor, got .*\(2, 3, 7\)") as error:
        encoder.encoder.layers[0](torch.randn(2, 3, 7))
    assert error.value.__context__ is None  # (not raised while dynamo's own error was handled)
    assert "training.compile" not in capsys.readouterr().err


def test_a_whole_model_with_a_graph_break_is_compiled_around_it(tmp_path, capsys):
    # Without repeated blocks the model's own forward is compiled: its data-dependent glue may break the graph, and
    # it is compiled in pieces (as torch.compile does), not run eagerly from then on.
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    runs = {}
    for compile_ in (False, True):
        training, optim = settings(tmp_path / f"{compile_}", compile=compile_, max_steps=3)
        runs[compile_] = BreakingStack()
        fit(runs[compile_], toy_step, ToyData(3), training=training, optim=optim)
    assert "training.compile" not in capsys.readouterr().err
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # (the pieces around the breaks)
    for name, value in params(runs[False]).items():
        assert_close(params(runs[True])[name], value, atol=1e-6, rtol=0, msg=name)


def test_a_run_of_a_torch_compiled_model_resumes_eagerly(tmp_path):
    # fit(torch.compile(model)) recorded its optimiser's groups by the wrapper's names ('_orig_mod.embed.weight'):
    # resuming the same model uncompiled (or with training.compile) was refused, "the model changed".
    torch._dynamo.reset()
    eager = ToyEncoder()
    training, optim = settings(tmp_path / "eager", max_steps=4, checkpoint_every=2, eps=1e-4)
    fit(eager, encoder_step, ToyData(4), training=training, optim=optim)
    training, optim = settings(tmp_path / "compiled", max_steps=4, checkpoint_every=2, eps=1e-4)
    fit(torch.compile(ToyEncoder()), encoder_step, ToyData(4), training=training, optim=optim)
    saved = torch.load(tmp_path / "compiled" / "checkpoints" / "step_00000002" / "rank0.pt", weights_only=True)
    names = [name for group, _ in saved["groups"] for name in group]
    assert len(names) == 28 and names[0] == "embed.weight" and not [n for n in names if "_orig_mod" in n]
    shutil.rmtree(tmp_path / "compiled" / "checkpoints" / "step_00000004")
    training, optim = settings(tmp_path / "compiled", max_steps=4, checkpoint_every=2, eps=1e-4, resume="auto")
    resumed = ToyEncoder()
    result = fit(resumed, encoder_step, ToyData(4), training=training, optim=optim)
    assert Path(result.resumed_from).name == "step_00000002"
    for name, value in params(eager).items():
        assert_close(params(resumed)[name], value, atol=1e-5, rtol=0, msg=name)
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), abs=1e-5)
    # a checkpoint written before the names dropped _orig_mod (its groups so named) resumes too
    from torchflava.training.integrity import write_marker

    step_2 = tmp_path / "compiled" / "checkpoints" / "step_00000002"
    shutil.rmtree(tmp_path / "compiled" / "checkpoints" / "step_00000004")
    saved["groups"] = [[[f"_orig_mod.{name}" for name in group], m] for group, m in saved["groups"]]
    torch.save(saved, step_2 / "rank0.pt")
    write_marker(step_2, 2, 1)  # (the manifest digests rank0.pt)
    older = ToyEncoder()
    result = fit(older, encoder_step, ToyData(4), training=training, optim=optim)
    assert Path(result.resumed_from).name == "step_00000002"
    for name, value in params(eager).items():
        assert_close(params(older)[name], value, atol=1e-5, rtol=0, msg=name)


def test_lr_multipliers_scale_each_modules_learning_rate(tmp_path):
    base, _ = run(tmp_path / "base", max_steps=3)
    frozen, _ = run(tmp_path / "frozen", max_steps=3, lr_multipliers={"linear": 0.0})
    assert_close(params(frozen)["linear.weight"], params(Toy())["linear.weight"], atol=0, rtol=0)
    assert_close(params(frozen)["linear.bias"], params(Toy())["linear.bias"], atol=0, rtol=0)
    assert float(frozen.gain.detach()) != 1.0 and not torch.equal(
        params(base)["linear.weight"], params(Toy())["linear.weight"]
    )

    # The schedule scales every group from its own peak; a resumed run keeps the multipliers.
    killed, half = killed_after(4), {"linear": 0.5}  # the last checkpoint is step 3
    with pytest.raises(Killed):
        run(tmp_path / "resumed", lr_multipliers=half, warmup_steps=2, after_step=killed)
    resumed, _ = run(tmp_path / "resumed", lr_multipliers=half, warmup_steps=2, resume="auto")
    straight, _ = run(tmp_path / "straight", lr_multipliers=half, warmup_steps=2)
    for name, value in params(straight).items():
        assert torch.equal(params(resumed)[name], value), name
    expected = r"key 'optim.lr_multipliers': expected names of the model's modules .* \(\['head'\] name no module"
    with pytest.raises(ConfigError, match=expected):
        run(tmp_path / "bad", lr_multipliers={"head": 0.1})


def test_lr_multipliers_on_every_parameter_resume_as_the_run_goes_on(tmp_path):
    """Every parameter under a multiplier other than 1 left both groups at multiplier 1 empty: the run trained and
    wrote its checkpoints, but its resume was refused ("does not load into this run's model: There are param groups
    that have zero parameters ..."): torch's state-dict code loads an optimiser with one empty group at most."""
    every = {"linear": 0.5, "gain": 2.0}
    with pytest.raises(Killed):
        run(tmp_path / "resumed", lr_multipliers=every, warmup_steps=2, after_step=killed_after(4))
    resumed, result = run(tmp_path / "resumed", lr_multipliers=every, warmup_steps=2, resume="auto")
    straight, _ = run(tmp_path / "straight", lr_multipliers=every, warmup_steps=2)
    assert result.resumed_from.name == "step_00000003"
    for name, value in params(straight).items():
        assert torch.equal(params(resumed)[name], value), name
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    assert not torch.equal(params(straight)["gain"], params(Toy())["gain"])


def scheduled_lr(step: int, *, peak: float, warmup: int, total: int, floor: float = 0.0) -> float:
    """The lr optimiser step ``step`` (1-based) trains with: ``peak x step / warmup`` up to the warmup's
    end, then half a cosine from the peak (step ``warmup + 1``) towards ``floor x peak`` at ``total + 1``."""
    if step <= warmup:
        return peak * step / warmup
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (step - 1 - warmup) / (total - warmup))))


def test_the_logged_lr_is_the_one_each_step_trained_with(tmp_path):
    """A record's lr is the lr of the update it reports (with its loss and gradient norm), not the
    next step's: the first step's warmup lr is logged, the cosine's end (which no step uses) is not,
    and a resume that changes the schedule logs the lr its first step takes."""
    first = dict(max_steps=4, warmup_steps=2, min_lr_ratio=0.2, checkpoint_every=4)
    config, start = _started(tmp_path, **first)  # (a recipe's start: its checkpoint records the config)
    fit(Toy(), toy_step, ToyData(4), training=config.training, optim=config.optim, shard_layers=(), start=start)
    records = read_metrics(tmp_path / "metrics.jsonl")
    expected = [scheduled_lr(s, peak=0.05, warmup=2, total=4, floor=0.2) for s in range(1, 5)]
    assert expected == pytest.approx([0.025, 0.05, 0.05, 0.03], rel=1e-12)
    assert [r["lr"] for r in records] == pytest.approx(expected, rel=1e-12)
    # Independently: Adam's first update moves each weight by its lr (times g / (|g| + eps), g ~ 1 here).
    one, _ = run(tmp_path / "one", max_steps=1, warmup_steps=0)
    moved = (params(one)["linear.weight"] - params(Toy())["linear.weight"]).abs()
    assert read_metrics(tmp_path / "one" / "metrics.jsonl")[0]["lr"] == pytest.approx(float(moved.max()), rel=1e-5)
    # A finished run continued with a longer schedule and another peak: step 5 trains with the new schedule's lr.
    # (through start_run, which compares the configs and lets the schedule change; fit alone refuses it)
    longer = dict(max_steps=8, lr=0.1, warmup_steps=2, min_lr_ratio=0.2, checkpoint_every=4, resume="auto")
    with pytest.raises(ConfigError, match=r"^key 'training.max_steps' \(4 -> 8\): expected the schedule "):
        run(tmp_path, **longer)
    config, start = _started(tmp_path, **longer)
    assert start.resume_from.name == "step_00000004"
    fit(Toy(), toy_step, ToyData(8), training=config.training, optim=config.optim, shard_layers=(), start=start)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    resumed = [scheduled_lr(s, peak=0.1, warmup=2, total=8, floor=0.2) for s in range(5, 9)]
    assert [r["lr"] for r in records] == pytest.approx(expected + resumed, rel=1e-12)
    assert resumed[0] == pytest.approx(0.1 * (0.2 + 0.8 * 0.75), rel=1e-12)  # cos(pi / 3): a third of the way down


def test_progress_bar_and_samples_per_second(tmp_path, capsys):
    run(tmp_path, progress_bar=True, log_every=2)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6] and all(r["samples_per_s"] > 0 for r in records)
    err = capsys.readouterr().err
    assert "training" in err and "6/6" in err


def test_bad_arguments_are_named_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="at least max_steps x grad_accumulation = 12 micro-batches, got 6"):
        run(tmp_path, data=ToyData(6), grad_accumulation=2)
    assert not (tmp_path / "metrics.jsonl").exists()
    with pytest.raises(ValueError, match=r"loss_sums and counts must name the same losses .*\['a'\] and \['b'\]"):
        run(tmp_path / "keys", step=lambda m, item: StepOutput({"a": m.gain * 1}, {"b": 1}))
    with pytest.raises(TypeError, match="StepOutput"):
        run(tmp_path / "type", step=lambda m, item: m.gain)
    with pytest.raises(ConfigError, match="key 'training.activation_checkpointing'"):  # the loop applies it
        run(tmp_path / "checkpointing", activation_checkpointing="selective")
    with pytest.raises(ConfigError, match="training.resume"):
        run(tmp_path / "resume", resume=str(tmp_path / "nowhere"))
    run(tmp_path / "twice", max_steps=1, checkpoint_every=1)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        run(tmp_path / "twice", max_steps=1)


def test_a_new_run_is_refused_where_a_finished_run_kept_its_results(tmp_path):
    """A finished run whose checkpoints were deleted to save space (its export and report kept): a new run
    with training.resume none or auto there overwrote its metrics, report and export without a word."""
    for name in ("model", "report.json"):
        out = tmp_path / name.split(".")[0]
        run(out, max_steps=2, checkpoint_every=1)
        shutil.rmtree(out / "checkpoints")
        (out / "model").mkdir() if name == "model" else (out / name).write_text("{}")
        before = (out / "metrics.jsonl").read_bytes()
        for resume in ("none", "auto"):
            with pytest.raises(ConfigError, match=rf"^key 'training.output_dir': .* \(it holds {name}, which this "):
                run(out, max_steps=1, resume=resume)
        assert (out / "metrics.jsonl").read_bytes() == before and not (out / "checkpoints").exists()
        (out / "model").rmdir() if name == "model" else (out / name).unlink()
        _, result = run(out, max_steps=1, resume="auto")  # (auto starts afresh where nothing finished is left)
        assert sorted(losses(out)) == [1]
    # its checkpoints kept but every one damaged: auto would start afresh (moving them aside) over its results
    out = tmp_path / "damaged"
    run(out, max_steps=2, checkpoint_every=1)
    (out / "report.json").write_text("{}")
    for checkpoint in (out / "checkpoints").glob("step_*"):
        (checkpoint / "rank0.pt").write_bytes(b"damaged")
    with pytest.raises(ConfigError, match=r"^key 'training.output_dir': .* \(it holds report.json, which this "):
        run(out, max_steps=1, resume="auto")
    assert (out / "report.json").read_text() == "{}" and len(list((out / "checkpoints").glob("step_*"))) == 2


def test_an_output_dir_the_system_refuses_to_create_is_a_config_error():
    """A directory that passes the writability check but that mkdir refuses (under /proc; a full disk, a
    mount's own rules) was a FileNotFoundError traceback from the run lock, exit 1, not one line naming the key."""
    training = TrainingConfig(output_dir="/proc/torchflava-no-such-run", progress_bar=False, tensorboard=False)
    with pytest.raises(ConfigError, match=r"^key 'training.output_dir': .*'/proc/torchflava-no-such-run' \("):
        loop_module.resume_checkpoint(training)
    assert not Path(training.output_dir).exists()


class _Stream(torch.utils.data.IterableDataset):
    """A stream of the toy's micro-batches with no position to restart from."""

    def __iter__(self):
        return (ToyData(6)[i] for i in range(6))


@pytest.mark.parametrize(
    "change, error",
    [
        (
            dict(data=torch.utils.data.DataLoader(ToyData(6), batch_size=None)),
            "data must be a dataset of micro-batches .* got a DataLoader",
        ),
        (dict(data=(ToyData(6)[i] for i in range(6))), "data must be a step-indexed dataset .* got generator"),
        (dict(data=_Stream()), r"data \(_Stream\) is an IterableDataset without load_state_dict"),
        (dict(training={"max_steps": 6}), "training must be a TrainingConfig, got dict"),
        (dict(optim=None), "optim must be an OptimConfig, got NoneType"),
        (dict(model=lambda x: x), "model must be an nn.Module, got function"),
        (dict(step="toy_step"), r"step must be a function step\(model, item\) -> StepOutput, got str"),
        # the optional ones: each failed after the first optimiser step (after_step) or once the run directory
        # was taken, in Python's or torch's words ('int' object is not callable, 'int' object has no attribute
        # 'config', num_workers option should be non-negative)
        (dict(after_step=1), r"^after_step must be a function called after every optimiser step, .* got int$"),
        (dict(after_step=lambda model, step: None), r"^after_step must be callable as hook\(\) or hook\(step\), "),
        (dict(after_step=lambda *, step: None), r"got one that also requires step$"),
        (dict(shard_layers=TransformerEncoderLayer), r"^shard_layers must be .* got the class TransformerEncoderLayer"),
        (dict(shard_layers=["layers"]), r"^shard_layers must be a sequence of module classes, got 'layers' among"),
        (dict(num_workers=1.5), r"^num_workers must be an int >= 0, got float 1.5$"),
        (dict(num_workers=-1), r"^num_workers must be an int >= 0 \(0: the items are read in this process\), got -1$"),
        (dict(start=1), r"^start must be the RunStart start_run returns, or None, got int$"),
        (dict(run_files="files"), r"^run_files must be a function run_files\(directory\), or None, got str$"),
    ],
)
def test_fit_names_an_argument_of_the_wrong_kind_before_any_work(tmp_path, change, error):
    # each failed later in torch's or Python's words ('DataLoader' object is not subscriptable, 'dict'
    # object has no attribute 'grad_accumulation'), after the run directory was taken
    training, optim = settings(tmp_path / "run")
    arguments = {**dict(model=Toy(), step=toy_step, data=ToyData(6), training=training, optim=optim), **change}
    model = arguments.pop("model")
    with pytest.raises((TypeError, ValueError), match=error) as raised:
        fit(model, arguments.pop("step"), arguments.pop("data"), **arguments)
    assert raised.type is (ValueError if change.get("num_workers") == -1 else TypeError)
    assert not (tmp_path / "run").exists()
    if "model" not in change:  # no step was taken
        assert all(torch.equal(value, params(Toy())[name]) for name, value in params(model).items())


class _RefusingStream(_Stream):
    """A stream whose ``load_state_dict`` refuses every position with ``message``, as a stream's own does."""

    def __init__(self, message: str):
        self.message = message

    def load_state_dict(self, state: dict) -> None:
        raise ValueError(self.message)


@pytest.mark.parametrize(
    "message, expected",
    [
        (  # loader workers: the one key the stream names
            "num_workers: the checkpoint's stream positions are for 1 loader worker slot(s) per rank",
            "key 'data.num_workers': the checkpoint's stream positions are for 1 loader worker slot(s) per rank",
        ),
        (  # a shard list shorter than the checkpoint's (was reported as data.num_workers, 'state: ...' kept)
            "state: slot 0 has 3 shard(s) an epoch, its position names shard 5",
            "key 'training.resume': expected a checkpoint whose stream positions this run's stream starts from (a "
            "streamed run resumes on the shards and loader workers it was started with), got '{path}': slot 0 has "
            "3 shard(s) an epoch, its position names shard 5",
        ),
        (  # malformed positions: the checkpoint's, not the workers'
            "state: expected positions of 7 ints >= 0, got 5 for slot '0'",
            "key 'training.resume': expected a checkpoint whose stream positions this run's stream starts from (a "
            "streamed run resumes on the shards and loader workers it was started with), got '{path}': expected "
            "positions of 7 ints >= 0, got 5 for slot '0'",
        ),
        (  # a stream of the user's own, its words whole
            "bad position",
            "key 'training.resume': expected a checkpoint whose stream positions this run's stream starts from (a "
            "streamed run resumes on the shards and loader workers it was started with), got '{path}': bad position",
        ),
    ],
)
def test_a_refused_stream_position_names_the_key_at_fault(tmp_path, monkeypatch, message, expected):
    monkeypatch.setattr(loop_module, "checkpoint_world_size", lambda path: 1)  # (saved by this one process)
    path = tmp_path / "checkpoints" / "step_00000004"
    start = RunStart(None, path, loop_states=[{"data": {"0": [0, 0, 5, 0, 0, 1, 1]}}])
    with pytest.raises(ConfigError) as caught:
        loop_module.restore_data_position(_RefusingStream(message), start)
    assert str(caught.value) == expected.format(path=path)


def _with_counts(count):
    def step(model, item):
        sums, counts = toy_sums(model, item.batch)
        return StepOutput(sums, {**counts, "tokens": count})

    return step


@pytest.mark.parametrize("count", [0, -8, float("nan"), torch.tensor(float("inf"))])
def test_a_count_that_cannot_average_its_sum_stops_the_run_naming_the_loss(tmp_path, count):
    with pytest.raises(ValueError, match=r"counts of \['tokens'\] at step 1 must be finite and >= 0"):
        run(tmp_path, step=_with_counts(count))
    assert not list(tmp_path.glob("checkpoints/step_*"))  # stopped before any optimiser step
    for fine in (5, 5.0, np.int64(5), np.float32(5), np.array(5), torch.tensor([5])):  # any positive number averages
        assert run(tmp_path / f"fine-{type(fine).__name__}", step=_with_counts(fine), max_steps=1)[1].loss > 0


def test_malformed_counts_and_detached_losses_are_named(tmp_path):
    with pytest.raises(
        TypeError, match=r"counts\['tokens'\] must be a number or a one-element tensor, got shape \(8,\)"
    ):
        run(tmp_path / "a", step=_with_counts(torch.ones(8)))
    with pytest.raises(TypeError, match=r"counts\['tokens'\] must be a number or a one-element tensor, got str"):
        run(tmp_path / "b", step=_with_counts("8"))

    def detached(model, item):
        sums, counts = toy_sums(model, item.batch)
        return StepOutput({k: v.detach() for k, v in sums.items()}, counts)

    with pytest.raises(ValueError, match=r"expected a loss sum that requires grad, got none of \['rows', 'tokens'\]"):
        run(tmp_path / "c", step=detached)


def test_a_fresh_run_seeds_torchs_rng_from_training_seed(tmp_path):
    def dropped(model, item):  # a step that draws from torch's RNG (dropout)
        sums, counts = toy_sums(model, {**item.batch, "x": F.dropout(item.batch["x"], 0.5)})
        return StepOutput(sums, counts)

    runs = {name: run(tmp_path / name, step=dropped, seed=seed)[0] for name, seed in (("a", 0), ("b", 0), ("c", 1))}
    for name, value in params(runs["a"]).items():  # the run's seed decides, not the model's own
        assert torch.equal(params(runs["b"])[name], value) and not torch.equal(params(runs["c"])[name], value)
    assert losses(tmp_path / "a") == losses(tmp_path / "b") != losses(tmp_path / "c")


# ------------------------------------------------------------------------------------ two ranks (gloo)
def _worker(rank: int, init_file: str, root: str) -> None:
    torch.set_num_threads(1)
    with onednn_for_every_linear():
        _run_rank(rank, init_file, root)


def _run_rank(rank: int, init_file: str, root: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=90)
    )
    try:
        root = Path(root)
        results = {}
        for strategy in ("ddp", "fsdp"):
            training, optim = settings(root / strategy, strategy=strategy)
            model = Toy()
            data = ToyData(6, rank=rank, world_size=WORLD_SIZE)
            fit(model, toy_step, data, training=training, optim=optim, shard_layers=())
            full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
            results[strategy] = {k: v.detach().clone() for k, v in full.items()}
        # resume on 2 ranks the single-process run stopped after step 3
        training, optim = settings(root / "one_to_two", strategy="ddp", resume="auto")
        model = Toy()
        fit(model, toy_step, ToyData(6, rank=rank, world_size=WORLD_SIZE), training=training, optim=optim)
        results["one_to_two"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

        # a scheduler's SIGTERM that reaches rank 1 alone, after step 3's losses were summed: both stop after step 4
        training, optim = settings(root / "preempted", strategy="ddp")
        hook = signalled_after(3) if rank == 1 else None
        try:
            fit(
                Toy(),
                toy_step,
                ToyData(6, rank=rank, world_size=WORLD_SIZE),
                training=training,
                optim=optim,
                after_step=hook,
            )
        except Preempted as stop:
            results["preempted"] = (stop.code, stop.step, stop.checkpoint.name, stop.signal_name)

        # rank 1's disk is full (its own state file): both ranks fail in one line, rank 0 does not wait for it forever
        training, optim = settings(root / "full_disk", strategy="ddp")
        real_save = torch.save
        if rank == 1:
            torch.save = lambda *args, **kwargs: (_ for _ in ()).throw(OSError(28, "No space left on device"))
        try:
            fit(Toy(), toy_step, ToyData(6, rank=rank, world_size=WORLD_SIZE), training=training, optim=optim)
        except CheckpointWriteError as error:
            results["full_disk"] = str(error)
        finally:
            torch.save = real_save

        def other_names(model, item):  # rank 1 names its second loss otherwise: refused, not summed into "rows"
            sums, counts = toy_sums(model, item.batch)
            if rank == 1:
                sums["rows2"], counts["rows2"] = sums.pop("rows"), counts.pop("rows")
            return StepOutput(sums, counts)

        training, optim = settings(root / f"names{rank}", strategy="ddp")
        try:
            fit(Toy(), other_names, ToyData(6, rank=rank, world_size=WORLD_SIZE), training=training, optim=optim)
        except ValueError as error:
            results["names"] = str(error)

        def around_the_wrapper(model, item):  # DDP's module called, not DDP: its gradients were not averaged
            return StepOutput(*toy_sums(model.module, item.batch))

        training, optim = settings(root / f"bypass{rank}", strategy="ddp")
        try:
            fit(Toy(), around_the_wrapper, ToyData(6, rank=rank, world_size=WORLD_SIZE), training=training, optim=optim)
        except ValueError as error:
            results["bypass"] = str(error)
        torch.save(results, root / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The single-process reference, then 2 spawned gloo ranks (DDP, FSDP2, resuming the reference)."""
    root = tmp_path_factory.mktemp("loop")
    single, _ = run(root / "single")
    shutil.copytree(root / "single", root / "one_to_two")
    shutil.rmtree(root / "one_to_two" / "checkpoints" / "step_00000006")  # as if stopped after step 3
    run_ranks(_worker, (str(root / "init"), str(root)), nprocs=WORLD_SIZE, timeout_s=JOIN_TIMEOUT_S)
    return root, params(single), torch.load(root / "rank0.pt", weights_only=True)


def test_ranks_that_name_different_losses_are_refused(two_ranks, tmp_path):
    root = two_ranks[0]
    for rank in range(WORLD_SIZE):
        message = torch.load(root / f"rank{rank}.pt", weights_only=True).get("names", "")
        assert "expected every rank to name the same losses at step 1" in message, rank


def test_a_ddp_step_that_does_not_call_the_model_it_is_given_is_refused(two_ranks):
    """A step calling ``model.module`` (or its parts) ran around DDP's forward: no gradient was averaged over
    ranks, and each rank's weights drifted apart without a word."""
    root = two_ranks[0]
    for rank in range(WORLD_SIZE):
        assert torch.load(root / f"rank{rank}.pt", weights_only=True).get("bypass") == (
            "step: under training.strategy=ddp a step must call the model it is given (its forward, model(...): DDP "
            "averages the gradients over ranks through it), got one that did not (e.g. it called model.module or "
            "its parts directly); give the model a forward that the step calls"
        ), rank


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "one_to_two"])
def test_two_ranks_reproduce_one_process(two_ranks, strategy):
    root, single, results = two_ranks
    reference = losses(root / "single")
    assert losses(root / strategy).keys() == reference.keys() == set(range(1, 7))
    for step, value in reference.items():
        assert losses(root / strategy)[step] == pytest.approx(value, rel=1e-5, abs=1e-6), step
    for name, value in single.items():
        torch.testing.assert_close(results[strategy][name], value, rtol=1e-5, atol=1e-6)


def test_a_signal_on_one_rank_stops_every_rank_after_the_same_step_and_resumes_on_one_process(two_ranks, tmp_path):
    root, single, _ = two_ranks
    on_rank = [torch.load(root / f"rank{rank}.pt", weights_only=True)["preempted"] for rank in range(WORLD_SIZE)]
    assert on_rank == [
        (PREEMPTED_EXIT_CODE, 4, "step_00000004", "a stop signal on another rank"),
        (PREEMPTED_EXIT_CODE, 4, "step_00000004", "SIGTERM"),
    ]
    saved = json.loads((root / "preempted" / "checkpoints" / "step_00000004" / "COMPLETE").read_text())
    assert (saved["step"], saved["world_size"]) == (4, 2)
    shutil.copytree(root / "preempted", tmp_path / "run")
    model, result = run(tmp_path / "run", resume="auto")
    assert result.resumed_from.name == "step_00000004"
    reference = losses(root / "single")
    assert losses(tmp_path / "run").keys() == reference.keys()
    for step, value in reference.items():
        assert losses(tmp_path / "run")[step] == pytest.approx(value, rel=1e-5, abs=1e-6), step
    for name, value in single.items():
        torch.testing.assert_close(params(model)[name], value, rtol=1e-5, atol=1e-6)


def test_a_write_that_fails_on_one_rank_fails_every_rank_in_one_line_without_a_hang(two_ranks):
    root = two_ranks[0]
    messages = [torch.load(root / f"rank{rank}.pt", weights_only=True)["full_disk"] for rank in range(WORLD_SIZE)]
    checkpoints = root / "full_disk" / "checkpoints"
    assert (
        messages
        == [
            f"cannot write checkpoint step 3 in {checkpoints} (rank 1: OSError: [Errno 28] No space left on device); "
            "what was written of it is removed and no checkpoint is complete: free space or fix the directory, then "
            "resume (training.resume=auto)"
        ]
        * WORLD_SIZE
    )
    assert list(checkpoints.iterdir()) == []


def test_a_two_rank_run_resumes_on_one_process(two_ranks, tmp_path):
    root, single, _ = two_ranks
    shutil.copytree(root / "ddp", tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_00000006")
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step_00000003" / "COMPLETE").read_text())
    assert (saved["step"], saved["world_size"]) == (3, 2)
    model, result = run(tmp_path / "run", resume="auto")
    assert result.resumed_from.name == "step_00000003"
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    reference = read_metrics(root / "single" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 7))
    for got, expected in zip(records, reference):
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5, abs=1e-6)
        assert got["lr"] == pytest.approx(expected["lr"], rel=1e-12)  # the schedule continues where it was
    for name, value in single.items():
        torch.testing.assert_close(params(model)[name], value, rtol=1e-5, atol=1e-6)
    # the unusable samples both ranks met before the stop, and the ones met after it
    assert result.skipped == [("toy", s, f"step {s} met a bad item") for s in (0, 3)]


def test_a_loop_state_that_is_a_zip_bomb_is_refused_before_torch_load_allocates_it(tmp_path):
    """rank<R>.pt was read with torch.load at once: a deflated archive of a few KB made it allocate 64 MiB
    (any size a forged file claims) before its contents were checked."""
    import io
    import zipfile

    config, start = _started(tmp_path, max_steps=3, checkpoint_every=3)
    fit(Toy(), toy_step, ToyData(3), training=config.training, optim=config.optim, shard_layers=(), start=start)
    checkpoint = tmp_path / "checkpoints" / "step_00000003"
    with zipfile.ZipFile(checkpoint / "rank0.pt") as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    storage = max((name for name in entries if "/data/" in name), key=lambda name: len(entries[name]))
    entries[storage] += bytes(64 << 20)  # the storage's own bytes first: the state still reads as before
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    (checkpoint / "rank0.pt").write_bytes(bomb.getvalue())
    assert (checkpoint / "rank0.pt").stat().st_size < 1 << 20
    write_marker(checkpoint, 3, 1)
    with pytest.raises(ConfigError) as caught:
        _started(tmp_path, max_steps=6, resume="auto")
    assert str(caught.value).startswith(
        f"key 'training.resume': {checkpoint} does not load into this run: its rank0.pt does not read (expected a "
        "torch checkpoint (whose entries torch.save stores uncompressed), got a zip archive whose entries expand to "
    )


class OneBadItemEveryStep(ToyData):
    """Every micro-batch meets the same unusable item (as a small source does, epoch after epoch)."""

    def __getitem__(self, index: int) -> ToyItem:
        item = super().__getitem__(index)
        return item._replace(skipped=[("toy", 7, "item 7 is broken")])


def test_an_unusable_item_met_every_step_is_checkpointed_once(tmp_path):
    """The loop's checkpointed list of unusable samples grew by one entry each time one was met again."""
    with pytest.raises(Killed):  # after step 7: the last checkpoint is step 6's
        run(tmp_path, data=OneBadItemEveryStep(9), max_steps=9, checkpoint_every=3, after_step=killed_after(7))
    for step in (3, 6):
        state = torch.load(tmp_path / "checkpoints" / f"step_{step:08d}" / "rank0.pt", weights_only=True)
        assert state["skipped"] == [["toy", 7, "item 7 is broken"]]
    _, resumed = run(tmp_path, data=OneBadItemEveryStep(9), max_steps=9, checkpoint_every=3, resume="auto")
    state = torch.load(tmp_path / "checkpoints" / "step_00000009" / "rank0.pt", weights_only=True)
    assert state["skipped"] == [["toy", 7, "item 7 is broken"]] and resumed.skipped == [("toy", 7, "item 7 is broken")]


class _Half(nn.Module):
    """fp16 weights whose gradients are finite in fp16 (10^4 each) but of norm 10^5, beyond its range."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(100, dtype=torch.float16))

    def forward(self) -> torch.Tensor:
        return (self.weight.float() * 1e4).sum()


def test_an_fp16_model_with_finite_gradients_of_a_large_norm_trains(tmp_path):
    """Each gradient norm was rounded to fp16: 10^5 became inf, and the run stopped as on a NaN."""
    training, optim = settings(tmp_path, max_steps=2, clip_grad_norm=1.0, lr=0.01)
    model = _Half()
    result = fit(
        model, lambda m, item: StepOutput({"sum": m()}, {"sum": 1}), ToyData(2), training=training, optim=optim
    )
    assert result.step == 2
    assert [round(r["grad_norm"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [100000, 100000]
    assert bool((model.weight < 0).all())  # descended


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(max_steps=6.0), "key 'training.max_steps': expected an int, got 6.0"),  # 'float' object cannot be ...
        (dict(grad_accumulation=1.0), "key 'training.grad_accumulation': expected an int, got 1.0"),
        (dict(log_every=1.5), "key 'training.log_every': expected an int, got 1.5"),  # logged at steps 3 and 6
        (dict(lr="1e-3"), "key 'optim.lr': expected a float, got '1e-3'"),  # '>' not supported ... 'str'
        (dict(clip_grad_norm="1"), "key 'optim.clip_grad_norm': expected a float or null, got '1'"),
        (dict(progress_bar="false"), "key 'training.progress_bar': expected a bool, got 'false'"),
        (
            dict(lr_multipliers=["linear"]),
            r"key 'optim.lr_multipliers': expected a dict of str, float, got \['linear'\]",
        ),
    ],
)
def test_fit_checks_the_types_of_configs_built_in_python_before_any_work(tmp_path, change, message):
    """load_config types a recipe's config; one built in Python was not checked: each of these failed inside
    the loop or a comparison after the run directory was taken, or (log_every) logged other steps silently."""
    with pytest.raises(ConfigError, match=f"^{message}$"):
        run(tmp_path / "run", **change)
    assert not (tmp_path / "run").exists()
    # an int where a float is meant, a path as the output directory: as intended
    model, result = run(tmp_path / "fine", lr=1, clip_grad_norm=1, output_dir=tmp_path / "fine", max_steps=2)
    assert result.step == 2 and len(losses(tmp_path / "fine")) == 2


def test_fit_takes_numpy_numbers_for_int_and_float_fields(tmp_path):
    """np.int64 max_steps (a user's numpy arithmetic) was refused as "expected an int, got 6"."""
    steps = np.arange(8)[-1] - 5  # np.int64(2)
    model, result = run(tmp_path / "np", max_steps=steps, checkpoint_every=np.int32(1), lr=np.float32(0.05))
    assert type(result.step) is int and result.step == 2 and sorted(losses(tmp_path / "np")) == [1, 2]
    assert loop_module.read_loop_states(tmp_path / "np" / "checkpoints" / "step_00000002")[0]["step"] == 2
    reference, _ = run(tmp_path / "py", max_steps=2, checkpoint_every=1, lr=float(np.float32(0.05)))
    assert_close(params(model), params(reference), rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"^key 'training.max_steps': expected an int, got np.float64\(6.5\)$"):
        run(tmp_path / "half", max_steps=np.float64(6.5))
    with pytest.raises(ConfigError, match=r"^key 'training.max_steps': expected an int, got 6.5$"):
        run(tmp_path / "half", max_steps=6.5)
    with pytest.raises(ConfigError, match=r"^key 'training.max_steps': expected an int, got True$"):
        run(tmp_path / "bool", max_steps=True)


def test_fit_alone_resumed_with_other_optimiser_settings_applies_them_and_says_so(tmp_path, capsys):
    """fit without start_run resumed with another optim.lr, betas, eps or weight_decay: the config's values
    replaced the checkpoint's without a word (start_run reports such changes from the configs)."""
    with pytest.raises(Killed):
        run(tmp_path, after_step=killed_after(4))  # checkpoint of step 3, lr 0.05, betas (0.9, 0.999)
    capsys.readouterr()
    changed = dict(lr=0.01, betas=[0.8, 0.99], eps=1e-6, weight_decay=0.1)
    run(tmp_path, resume="auto", **changed)
    checkpoint = tmp_path / "checkpoints" / "step_00000003"
    assert capsys.readouterr().err.splitlines() == [
        f"resume: {key}: {old!r} -> {new!r} (applied from here on; {checkpoint} was trained with the former)"
        for key, old, new in (
            ("optim.lr", 0.05, 0.01),
            ("optim.betas", [0.9, 0.999], [0.8, 0.99]),
            ("optim.eps", 1e-8, 1e-6),
            ("optim.weight_decay", 0.0, 0.1),
        )
    ]
    # the config's values win: step 4 trained with the new peak lr at the cosine's factor for it (0.5)
    assert [r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["step"] == 4] == [
        pytest.approx(0.01 * 0.5, rel=1e-12)
    ]
    run(tmp_path, resume="auto", **changed)  # from step 6's checkpoint, on the settings it was trained with
    assert "optim." not in capsys.readouterr().err


def test_a_changed_lr_is_said_as_typed_not_as_the_peak_over_its_multiplier():
    """The old lr is the saved peak over the group's multiplier: 0.05 x 0.1 / 0.1 printed 0.05000000000000001."""
    saved = [{"params": [0], "initial_lr": 0.05 * 0.1, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}]
    layout = [{"lr_multiplier": 0.1, "weight_decay": 0.0}]
    changes = loop_module._optim_changes(saved, layout, OptimConfig(lr=0.01, betas=[0.9, 0.999], eps=1e-8))
    assert changes == ["optim.lr: 0.05 -> 0.01"]


def test_fit_alone_refuses_to_resume_on_another_schedule_and_old_checkpoints_resume_as_before(tmp_path, monkeypatch):
    """fit without start_run (which compares configs) resumed a run of max_steps=6 with max_steps=8 and
    stretched its cosine from the step reached, silently; the checkpoint now records the schedule."""
    with pytest.raises(Killed):
        run(tmp_path / "run", max_steps=6, warmup_steps=1, after_step=killed_after(4))  # checkpoint of step 3
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000003"
    assert loop_module.read_loop_states(checkpoint)[0]["schedule"] == {
        "training.max_steps": 6,
        "optim.warmup_steps": 1,
        "optim.min_lr_ratio": 0.0,
    }
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    for change, message in (
        (dict(max_steps=8), "key 'training.max_steps' (6 -> 8)"),
        (dict(max_steps=6, warmup_steps=2), "key 'optim.warmup_steps' (1 -> 2)"),
        (dict(max_steps=6, warmup_steps=1, min_lr_ratio=0.5), "key 'optim.min_lr_ratio' (0.0 -> 0.5)"),
    ):
        with pytest.raises(ConfigError) as caught:
            run(tmp_path / "run", resume="auto", **{"warmup_steps": 1, **change})
        assert str(caught.value) == (
            f"{message}: expected the schedule {checkpoint} was trained with (fit alone does not stretch a resumed "
            "cosine); start a new run in another training.output_dir, or resume through start_run, which compares "
            "the configs and applies the change"
        )
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics  # refused before any work
    _, result = run(tmp_path / "run", max_steps=6, warmup_steps=1, resume="auto")  # the same schedule: resumes
    assert result.resumed_from == checkpoint and result.step == 6

    written = loop_module._loop_state  # a checkpoint from before the schedule was recorded: resumes as before
    monkeypatch.setattr(
        loop_module, "_loop_state", lambda *args: {k: v for k, v in written(*args).items() if k != "schedule"}
    )
    with pytest.raises(Killed):
        run(tmp_path / "old", max_steps=6, after_step=killed_after(4))
    monkeypatch.undo()
    _, result = run(tmp_path / "old", max_steps=8, resume="auto")
    assert result.resumed_from.name == "step_00000003" and result.step == 8


def test_checkpointing_a_model_without_stacks_or_training_a_frozen_one_is_refused_before_the_directory_is_taken(
    tmp_path,
):
    """training.activation_checkpointing on a model without a TransformerEncoder raised set_activation_checkpointing's
    ValueError, naming no key, once the run directory was taken; a model with every parameter frozen reached its
    first step and was told its loss was 'detached?'."""
    with pytest.raises(ConfigError) as caught:
        run(tmp_path / "checkpointing", activation_checkpointing="full")
    assert str(caught.value) == (
        "key 'training.activation_checkpointing': expected a model that holds a TransformerEncoder (the stacks "
        "'full' applies to), got Toy, which holds none; set it to none"
    )
    assert not (tmp_path / "checkpointing").exists()
    training, optim = settings(tmp_path / "frozen")
    with pytest.raises(
        ValueError, match=r"^model: expected parameters to train \(requires_grad True\), got Toy with none$"
    ):
        fit(Toy().requires_grad_(False), toy_step, ToyData(6), training=training, optim=optim)
    assert not (tmp_path / "frozen").exists()


def test_loss_names_that_are_not_text_are_named():
    """A step naming its loss 0 failed inside the loop with 'sequence item 0: expected str instance, int found'."""
    model = Toy()
    out = StepOutput({0: model.gain * 2}, {0: 1})
    with pytest.raises(TypeError, match=r"^step output: loss names must be str, got 0 \(int\)$"):
        loop_module._global_loss(out, torch.device("cpu"))


def test_an_empty_loss_name_is_refused():
    """A loss named '' shared its key with the flag of ranks naming different losses: its count of 0 under a sum of
    5 trained on, unchecked (any other name stops the run)."""
    model = Toy()
    out = StepOutput({"": model.gain + 5}, {"": 0})
    with pytest.raises(ValueError, match=r"^step output: loss names must be non-empty, got ''$"):
        loop_module._global_loss(out, torch.device("cpu"))


def test_fit_alone_refuses_to_resume_with_another_grad_accumulation(tmp_path):
    """The data resumes at micro-batch step x grad_accumulation: a run of accumulation 2 resumed with 1 trained
    again on micro-batches 6 and 7 of its checkpoint of step 3 (with 4, it would pass micro-batches over), silently."""
    with pytest.raises(Killed):
        run(tmp_path / "run", grad_accumulation=2, after_step=killed_after(4))  # checkpoint of step 3
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000003"
    assert loop_module.read_loop_states(checkpoint)[0]["grad_accumulation"] == 2
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    for other in (1, 4):
        with pytest.raises(ConfigError) as caught:
            run(tmp_path / "run", grad_accumulation=other, resume="auto", data=ToyData(12, accumulation=2))
        assert str(caught.value) == (
            f"key 'training.grad_accumulation' (2 -> {other}): expected the accumulation {checkpoint} was trained with "
            "(its data resumes at micro-batch 3 x grad_accumulation, so another would repeat micro-batches or pass "
            "some over); start a new run in another training.output_dir"
        )
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics  # refused before anything is written
    _, result = run(tmp_path / "run", grad_accumulation=2, resume="auto")
    assert result.resumed_from == checkpoint and result.step == 6


def test_a_resume_its_loop_state_refuses_loads_no_weights(tmp_path, monkeypatch):
    """fit compared the recorded grad_accumulation and schedule with the run's only once the whole checkpoint
    (model and optimiser) had loaded: a refused resume read every weight first, for nothing."""
    with pytest.raises(Killed):  # checkpoint of step 3, grad_accumulation 2
        run(tmp_path / "run", grad_accumulation=2, after_step=killed_after(4))
    monkeypatch.setattr(CheckpointManager, "load", lambda *args, **kwargs: pytest.fail("the weights were loaded"))
    for change, key in (
        (dict(grad_accumulation=1), "training.grad_accumulation' (2 -> 1)"),
        (dict(grad_accumulation=2, max_steps=8), "training.max_steps' (6 -> 8)"),
    ):
        with pytest.raises(ConfigError, match=f"^key '{re.escape(key)}: expected the "):
            run(tmp_path / "run", resume="auto", **change)


def test_a_model_away_from_training_device_is_refused_before_any_work(tmp_path, monkeypatch):
    """fit trains where the model's parameters are and read training.device nowhere: training.device=cuda with a
    model left on the CPU trained on the CPU, silently."""
    with torch.device("meta"):
        on_meta = Toy()
    training, optim = settings(tmp_path / "meta")  # device="cpu"
    with pytest.raises(ConfigError) as caught:
        fit(on_meta, toy_step, ToyData(6), training=training, optim=optim)
    assert str(caught.value) == (
        "key 'training.device': expected the model's parameters on 'cpu', got them on 'meta': move the model there "
        "before fit (model.to('cpu')), or set training.device to auto"
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (training_checks refuses cuda without one)
    training, optim = settings(tmp_path / "cuda", device="cuda")
    with pytest.raises(ConfigError, match=r"^key 'training.device': expected the model's parameters on 'cuda', got"):
        fit(Toy(), toy_step, ToyData(6), training=training, optim=optim)
    assert not (tmp_path / "meta").exists() and not (tmp_path / "cuda").exists()
