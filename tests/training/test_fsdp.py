"""FSDP2 in the training loop on a one-process gloo group (in-process store, no port): what it must train
as a run without it does, and bf16 under it."""

import shutil
import warnings

import pytest
import torch
from torch import nn
import torch.distributed as dist
import torch.nn.functional as F

from tests.helpers import SeededLinear
from tests.training.test_loop import ToyData, settings
from torchflava.training.distributed import init_distributed, sync_replicated_grads, wrap_model
from torchflava.training.loop import StepOutput, fit


@pytest.fixture
def one_rank_group(monkeypatch):
    """A one-process gloo group for the test's length (destroyed after it, whatever happened)."""
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    init_distributed("fsdp", device="cpu")
    try:
        yield
    finally:
        dist.destroy_process_group()


class Gated(nn.Module):
    """A linear map whose scalar gain (replicated under FSDP2) is used on the steps told to use it only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.linear = nn.Linear(3, 2)
        self.gain = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor, use_gain: bool) -> torch.Tensor:
        y = self.linear(x)
        return y * self.gain if use_gain else y


def _gated_run(out, strategy: str) -> Gated:
    calls = [0]

    def step(model, item):  # every other step leaves the gain out, as a step of pairs-free kind does a logit scale
        calls[0] += 1
        prediction = model(item.batch["x"], calls[0] % 2 == 1)
        error = ((prediction - item.batch["y"]) ** 2).sum()
        return StepOutput({"error": error}, {"error": item.batch["x"].shape[0]})

    training, optim = settings(out, strategy=strategy, max_steps=4, checkpoint_every=4)
    model = Gated()
    fit(model, step, ToyData(4), training=training, optim=optim, shard_layers=())
    return model


def test_a_replicated_scalar_without_a_gradient_is_left_alone_as_in_one_process(tmp_path, one_rank_group):
    """sync_replicated_grads gave a scalar that no rank had a gradient for a zero gradient: AdamW's momentum
    then moved it on every step that did not use it (the gain ended at 0.897 against 0.926)."""
    reference = _gated_run(tmp_path / "none", "none")
    sharded = _gated_run(tmp_path / "fsdp", "fsdp")
    assert float(reference.gain.detach()) == pytest.approx(0.926131546, abs=1e-6)  # moved by the 2 steps that used it
    assert float(sharded.gain.detach()) == float(reference.gain.detach())
    weight = sharded.linear.weight.full_tensor()
    torch.testing.assert_close(weight, reference.linear.weight.detach(), rtol=1e-6, atol=1e-7)


def test_sync_replicated_grads_keeps_none_where_no_rank_has_a_gradient(one_rank_group):
    reference, x = Gated(), torch.arange(12.0).reshape(4, 3) / 10
    reference(x, use_gain=True).sum().backward()
    model = wrap_model(Gated(), "fsdp")
    model(x, use_gain=False).sum().backward()
    sync_replicated_grads(model)
    assert model.gain.grad is None  # (was tensor(0.))
    model(x, use_gain=True).sum().backward()
    sync_replicated_grads(model)
    assert float(model.gain.grad) == pytest.approx(float(reference.gain.grad), rel=1e-6)


def _classifier_loss(out, strategy: str) -> float:
    def step(model, item):  # cross-entropy: an op autocast runs in fp32
        logits = model(item.batch["x"])
        loss = F.cross_entropy(logits.flatten(0, 1), item.batch["y"].argmax(-1).flatten(), reduction="sum")
        return StepOutput({"ce": loss}, {"ce": logits.shape[0] * logits.shape[1]})

    training, optim = settings(out, strategy=strategy, max_steps=1, checkpoint_every=1, precision="bf16")
    return fit(SeededLinear(3, 2, seed=3), step, ToyData(1), training=training, optim=optim, shard_layers=()).loss


def test_bf16_under_fsdp_keeps_autocasts_fp32_ops_in_fp32(tmp_path, one_rank_group):
    """FSDP2's bf16 parameters ran without autocast: the whole step was bf16, the loss too (0.71875, a bf16
    number). Under autocast the product is bf16 either way (weights, bias and input rounded alike) and the
    cross-entropy fp32, so one rank under fsdp gives the loss of autocast without it."""
    autocast = _classifier_loss(tmp_path / "none", "none")
    sharded = _classifier_loss(tmp_path / "fsdp", "fsdp")
    assert autocast == pytest.approx(0.716840, abs=1e-6)
    assert sharded == autocast


class TwoHeads(nn.Module):
    """Two linear maps; the second one is used by the steps told to use it only (as FLAVA's heads are)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, use_b: bool) -> torch.Tensor:
        return self.a(x) + self.b(x) if use_b else self.a(x)


def _accumulated_run(out, strategy: str) -> tuple[float, torch.Tensor]:
    calls = [0]

    def step(model, item):  # the second micro-batch of each step alone uses b
        calls[0] += 1
        prediction = model(item.batch["x"], use_b=calls[0] % 2 == 0)
        return StepOutput({"error": ((prediction - item.batch["y"]) ** 2).sum()}, {"error": item.batch["x"].shape[0]})

    training, optim = settings(
        out, strategy=strategy, max_steps=2, checkpoint_every=2, precision="bf16", grad_accumulation=2
    )
    model = TwoHeads()
    result = fit(model, step, ToyData(2, accumulation=2), training=training, optim=optim, shard_layers=())
    weight = model.b.weight.full_tensor() if strategy == "fsdp" else model.b.weight
    return result.loss, weight.detach()


def test_bf16_under_fsdp_accumulates_a_parameter_first_used_in_the_last_micro_batch(tmp_path, one_rank_group):
    """FSDP2 failed inside torch, "FSDP reduce-scatter expects uniform gradient dtype but got {torch.bfloat16,
    torch.float32}": its fp32 accumulated gradients met b's first, bf16 one in the last micro-batch's reduction."""
    loss, weight = _accumulated_run(tmp_path / "none", "none")
    sharded_loss, sharded_weight = _accumulated_run(tmp_path / "fsdp", "fsdp")
    assert sharded_loss == pytest.approx(loss, rel=1e-6)
    torch.testing.assert_close(sharded_weight, weight, rtol=1e-6, atol=1e-7)


def _classifier_run(out, **changes):
    def step(model, item):
        logits = model(item.batch["x"])
        loss = F.cross_entropy(logits.flatten(0, 1), item.batch["y"].argmax(-1).flatten(), reduction="sum")
        return StepOutput({"ce": loss}, {"ce": logits.shape[0] * logits.shape[1]})

    training, optim = settings(out, max_steps=4, checkpoint_every=2, **changes)
    return fit(SeededLinear(3, 2, seed=3), step, ToyData(4), training=training, optim=optim, shard_layers=())


@pytest.mark.parametrize(
    "before, after, line",
    [
        (
            {"strategy": "fsdp", "precision": "bf16"},
            {"strategy": "none", "precision": "bf16"},
            "resume: training.strategy: 'fsdp' -> 'none' under training.precision=bf16: the parameters the steps "
            "compute with are fp32 under autocast from here on, FSDP2's bf16 before (the losses round otherwise)",
        ),
        (
            {"strategy": "none", "precision": "fp32"},
            {"strategy": "none", "precision": "bf16"},
            "resume: training.precision: 'fp32' -> 'bf16' (the steps from here on round otherwise)",
        ),
    ],
    ids=["fsdp_to_none_in_bf16", "fp32_to_bf16"],
)
def test_a_resume_that_changes_how_the_steps_round_says_so_in_one_line(
    tmp_path, one_rank_group, capsys, before, after, line
):
    """A run checkpointed under fsdp and bf16 resumed under none (autocast's fp32 parameters), or fit resumed
    with another precision, went on in another rounding without a word."""
    _classifier_run(tmp_path, **before)
    checkpoints = tmp_path / "checkpoints"
    shutil.rmtree(checkpoints / "step_00000004")
    capsys.readouterr()
    _classifier_run(tmp_path, resume="auto", **after)
    assert _resume_lines(capsys) == [f"{line}; {checkpoints / 'step_00000002'} was trained with the former"]


def _resume_lines(capsys) -> list[str]:
    return [text for text in capsys.readouterr().err.splitlines() if text.startswith("resume:")]


def test_a_strategy_change_in_fp32_says_nothing(tmp_path, one_rank_group, capsys):
    _classifier_run(tmp_path, strategy="fsdp")
    shutil.rmtree(tmp_path / "checkpoints" / "step_00000004")
    capsys.readouterr()
    _classifier_run(tmp_path, resume="auto", strategy="none")
    assert _resume_lines(capsys) == []


def test_clip_under_fsdp_returns_its_logit_scale_as_a_fresh_tensor_not_a_view(one_rank_group):
    from torchflava.models import clip_model

    torch.manual_seed(0)
    sizes = dict(embed_dim=8, image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2)
    sizes |= dict(context_length=6, vocab_size=50, text_width=16, text_layers=1, text_heads=2, eos_token_id=49)
    model = wrap_model(clip_model(**sizes), "fsdp")
    text = torch.tensor([[1, 2, 49, 0, 0, 0], [3, 4, 5, 6, 7, 49]])
    with warnings.catch_warnings(record=True) as caught:  # (FSDP2 warned: a returned view loses its hook)
        warnings.simplefilter("always")
        out = model(torch.randn(2, 3, 16, 16), text)
        (out.logit_scale * (out.image_features * out.text_features).sum()).backward()
    assert not [w for w in caught if "view tensor" in str(w.message)]
    assert out.logit_scale._base is None and out.logit_scale.item() == pytest.approx(2.6592600, abs=1e-6)
    assert model.logit_scale.grad is not None and torch.isfinite(model.logit_scale.grad)
