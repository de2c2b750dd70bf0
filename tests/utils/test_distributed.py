"""Distributed helpers and the gathered contrastive loss, on 2 spawned gloo processes (CPU).

One spawn (the ``two_ranks`` fixture) runs every multi-process scenario, each rank saving its
results to a file; the tests compare them with single-process computations on the whole batch.

How the ranks are compared with one process. Rank r holds b_r of the N = sum_r b_r rows and its
loss L_r is the mean over its own rows of terms computed against the gathered (global) columns,
so each term equals the single-process term of the same row and the single-process loss is
L = sum_r (b_r / N) L_r. With GatherGrad.GLOBAL the gather's backward sums over ranks, so rank r's
parameter gradient is d(sum_s c_s L_s)/d(theta) restricted to the path through its own rows, when
every rank s backpropagates c_s L_s. Averaging the ranks' gradients (what DDP does) therefore
gives d(sum_s c_s L_s / W)/d(theta), which is dL/d(theta) for c_r = W b_r / N. Each rank thus
backpropagates (W b_r / N) L_r: for equal halves the factor is 1 (mean of rank losses == L and
mean of rank gradients == single-process gradient); for 3 and 5 rows it is 6/8 and 10/8.
"""

from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import nn
import torch.distributed as dist
import torch.nn.functional as F

from tests.helpers import run_ranks
from torchflava.modules.losses import ContrastiveLoss
from torchflava.utils.distributed import (
    GatherGrad,
    all_gather_with_grad,
    gather_features,
    get_rank,
    get_world_size,
    is_distributed,
)

WORLD_SIZE = 2
JOIN_TIMEOUT_S = 120  # generous for 2 shared cores; a hang fails the tests instead of blocking them
COLLECTIVE_TIMEOUT = timedelta(seconds=60)
SPLITS = {"equal": [4, 4], "unequal": [3, 5]}
GATHER_SIZES = [3, 5]  # rows per rank in the gather tests, trailing shape (2, 3)
MASK = torch.tensor([True, False, True, True, False, True, False, True])  # ITM positives of the 8 rows


def _models() -> tuple[nn.Module, nn.Module, ContrastiveLoss]:
    """The same image and text "encoders" and loss on every rank and in the parent (fixed seed)."""
    torch.manual_seed(1234)
    return nn.Linear(8, 6), nn.Linear(5, 6), ContrastiveLoss()


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(8, 8) image inputs and (8, 5) text inputs of the global batch."""
    generator = torch.Generator().manual_seed(99)
    return torch.randn(8, 8, generator=generator), torch.randn(8, 5, generator=generator)


def _gather_inputs(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s rows to gather and the weights it applies to the gathered (8, 2, 3) tensor."""
    generator = torch.Generator().manual_seed(10 + rank)
    rows = torch.randn(GATHER_SIZES[rank], 2, 3, generator=generator)
    return rows, torch.randn(sum(GATHER_SIZES), 2, 3, generator=generator)


def _parameters(*modules: nn.Module) -> dict[str, nn.Parameter]:
    return {f"{i}.{name}": p for i, module in enumerate(modules) for name, p in module.named_parameters()}


def _encode(image_encoder, text_encoder, images, texts):
    return F.normalize(image_encoder(images), dim=-1), F.normalize(text_encoder(texts), dim=-1)


def _contrastive_step(rank: int, sizes: list[int], gather: GatherGrad) -> dict:
    """One rank's share of a training step: encode its rows, loss against all ranks, weighted backward."""
    image_encoder, text_encoder, loss_module = _models()
    loss_module.gather = gather
    images, texts = _global_batch()
    rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    image, text = _encode(image_encoder, text_encoder, images[rows], texts[rows])
    out = loss_module(image, text)
    (out.loss * WORLD_SIZE * sizes[rank] / sum(sizes)).backward()
    masked = loss_module(image.detach(), text.detach(), positive_rows=MASK[rows]).loss
    return {
        "loss": out.loss.detach(),
        "masked_loss": masked.detach(),
        "logits_per_image": out.logits_per_image.detach(),
        "logits_per_text": out.logits_per_text.detach(),
        "labels": out.labels,
        "grads": {name: p.grad for name, p in _parameters(image_encoder, text_encoder, loss_module).items()},
    }


def _gather_step(rank: int, mode: GatherGrad) -> dict:
    """Gather (b_r, 2, 3) rows, backpropagate sum(gathered * weights_r), report the gradient of the rows."""
    rows, weights = _gather_inputs(rank)
    rows.requires_grad_(True)
    if mode is GatherGrad.GLOBAL:
        gathered, offset = all_gather_with_grad(rows), None
    else:
        gathered, offset = gather_features(rows, mode)
    result = {"gathered": gathered.detach(), "offset": offset, "requires_grad": gathered.requires_grad}
    if gathered.requires_grad:
        (gathered * weights).sum().backward()
        result["grad"] = rows.grad
    return result


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE, timeout=COLLECTIVE_TIMEOUT
    )
    try:
        results = {"is_distributed": is_distributed(), "rank": get_rank(), "world_size": get_world_size()}
        for name, sizes in SPLITS.items():
            results[f"global_{name}"] = _contrastive_step(rank, sizes, GatherGrad.GLOBAL)
        results["local_equal"] = _contrastive_step(rank, SPLITS["equal"], GatherGrad.LOCAL)
        results["gather_offset"] = gather_features(_gather_inputs(rank)[0], GatherGrad.GLOBAL)[1]
        for mode in GatherGrad:
            results[f"gather_{mode.name}"] = _gather_step(rank, mode)
        try:  # trailing shapes (2, 3) on rank 0 and (2, 4) on rank 1: every rank must raise, none hang
            gather_features(torch.zeros(2, 2, 3 + rank), GatherGrad.GLOBAL)
            results["mismatch_error"] = None
        except ValueError as err:
            results["mismatch_error"] = str(err)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    """Run ``_worker`` on 2 spawned processes; fail (never hang) if they do not finish in time."""
    directory = tmp_path_factory.mktemp("dist")
    run_ranks(_worker, (str(directory / "init"), str(directory)), nprocs=WORLD_SIZE, timeout_s=JOIN_TIMEOUT_S)
    return [torch.load(directory / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


def _single_process(positive_rows=None):
    """Loss, logits and parameter gradients of one process on the whole batch."""
    image_encoder, text_encoder, loss_module = _models()
    images, texts = _global_batch()
    out = loss_module(*_encode(image_encoder, text_encoder, images, texts), positive_rows=positive_rows)
    out.loss.backward()
    grads = {name: p.grad for name, p in _parameters(image_encoder, text_encoder, loss_module).items()}
    return out, grads


def _assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------- one process


def test_single_process_identities():
    assert not is_distributed()
    assert (get_rank(), get_world_size()) == (0, 1)
    tensor = torch.randn(3, 4, requires_grad=True)
    assert all_gather_with_grad(tensor) is tensor
    for mode in GatherGrad:
        gathered, offset = gather_features(tensor, mode)
        assert gathered is tensor and offset == 0


def test_gather_features_bad_inputs():
    with pytest.raises(TypeError, match="mode must be a GatherGrad"):
        gather_features(torch.zeros(2, 3), "global")
    with pytest.raises(TypeError, match="tensor must be a Tensor"):
        gather_features([1.0, 2.0], GatherGrad.GLOBAL)
    with pytest.raises(ValueError, match="tensor must have at least one dimension"):
        all_gather_with_grad(torch.tensor(1.0))


# -------------------------------------------------------------------------------- two processes


def test_ranks_see_the_process_group(two_ranks):
    assert [(r["is_distributed"], r["rank"], r["world_size"]) for r in two_ranks] == [(True, 0, 2), (True, 1, 2)]
    assert not is_distributed()  # the parent never joined a process group


@pytest.mark.parametrize("split", list(SPLITS))
def test_global_contrastive_matches_single_process(two_ranks, split):
    sizes = SPLITS[split]
    total = sum(sizes)
    reference, reference_grads = _single_process()
    offsets = [0, sizes[0]]
    image_encoder, text_encoder, loss_module = _models()
    with torch.no_grad():
        image, text = _encode(image_encoder, text_encoder, *_global_batch())
    for rank, result in enumerate(two_ranks):
        result = result[f"global_{split}"]
        rows = slice(offsets[rank], offsets[rank] + sizes[rank])
        # Each rank scores its rows against all N columns, exactly the single-process rows.
        assert result["logits_per_image"].shape == (sizes[rank], total)
        _assert_close(result["logits_per_image"], reference.logits_per_image[rows])
        _assert_close(result["logits_per_text"], reference.logits_per_text[rows])
        assert result["labels"].tolist() == list(range(rows.start, rows.stop))
        # L_r is the single-process mean over rank r's rows (the mask selects them), with or without ITM mask.
        own = torch.zeros(total, dtype=torch.bool)
        own[rows] = True
        _assert_close(result["loss"], loss_module(image, text, positive_rows=own).loss.detach())
        _assert_close(result["masked_loss"], loss_module(image, text, positive_rows=own & MASK).loss.detach())
    losses = torch.stack([r[f"global_{split}"]["loss"] for r in two_ranks])
    weights = torch.tensor(sizes, dtype=losses.dtype) / total
    _assert_close((weights * losses).sum(), reference.loss.detach())
    if split == "equal":
        _assert_close(losses.mean(), reference.loss.detach())
    for name, expected in reference_grads.items():  # DDP-style average of the ranks' gradients
        average = sum(r[f"global_{split}"]["grads"][name] for r in two_ranks) / WORLD_SIZE
        assert torch.isfinite(average).all() and expected.abs().sum() > 0
        _assert_close(average, expected)


def test_local_contrastive_misses_cross_rank_gradients(two_ranks):
    """LOCAL: same forward values as GLOBAL, but the ranks' gradients no longer add up to one process's."""
    _, reference_grads = _single_process()
    for result in two_ranks:
        _assert_close(result["local_equal"]["loss"], result["global_equal"]["loss"])
        _assert_close(result["local_equal"]["logits_per_image"], result["global_equal"]["logits_per_image"])
    # logit_scale is not gathered: its gradient is the same in both modes.
    scale_grads = [r["local_equal"]["grads"]["2.logit_scale"] for r in two_ranks]
    _assert_close(sum(scale_grads) / WORLD_SIZE, reference_grads["2.logit_scale"])
    weight = "0.weight"
    average = sum(r["local_equal"]["grads"][weight] for r in two_ranks) / WORLD_SIZE
    assert (average - reference_grads[weight]).abs().max() > 1e-3


def test_gather_concatenates_unequal_batches(two_ranks):
    expected = torch.cat([_gather_inputs(rank)[0] for rank in range(WORLD_SIZE)])
    assert expected.shape == (8, 2, 3)
    for result in two_ranks:
        for mode in GatherGrad:
            assert torch.equal(result[f"gather_{mode.name}"]["gathered"], expected)
    assert [r["gather_offset"] for r in two_ranks] == [0, GATHER_SIZES[0]]
    assert [r["gather_LOCAL"]["offset"] for r in two_ranks] == [0, GATHER_SIZES[0]]


def test_all_gather_with_grad_sums_gradients_over_ranks(two_ranks):
    """GLOBAL: rank r's rows get sum over ranks s of d(sum(gathered * weights_s)) = sum_s weights_s[rows of r]."""
    total_weights = sum(_gather_inputs(rank)[1] for rank in range(WORLD_SIZE))
    offset = 0
    for rank, result in enumerate(two_ranks):
        rows = slice(offset, offset + GATHER_SIZES[rank])
        assert result["gather_GLOBAL"]["requires_grad"]
        _assert_close(result["gather_GLOBAL"]["grad"], total_weights[rows])
        offset = rows.stop


def test_local_gather_gives_gradient_only_through_local_slice(two_ranks):
    """LOCAL: rank r's rows get only its own weights on its own slice; NONE: no gradient at all."""
    offset = 0
    for rank, result in enumerate(two_ranks):
        rows = slice(offset, offset + GATHER_SIZES[rank])
        own_weights = _gather_inputs(rank)[1]
        assert result["gather_LOCAL"]["requires_grad"]
        _assert_close(result["gather_LOCAL"]["grad"], own_weights[rows])
        assert not result["gather_NONE"]["requires_grad"] and "grad" not in result["gather_NONE"]
        offset = rows.stop


def test_mismatched_trailing_shapes_raise_on_every_rank(two_ranks):
    for result in two_ranks:
        assert result["mismatch_error"] is not None
        assert "same trailing shape on every rank" in result["mismatch_error"]
        assert "[(2, 2, 3), (2, 2, 4)]" in result["mismatch_error"]
