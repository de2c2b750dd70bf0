"""Contrastive loss in one process: hand-computed reference, HF FLAVA parity, masks, gradients, clamping.

The multi-process (gathered) behaviour is tested in tests/utils/test_distributed.py.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import FlavaConfig
from transformers.models.flava.modeling_flava import FlavaGlobalContrastiveHead

from torchflava.modules.losses import ContrastiveLoss, ContrastiveOutput, GatherGrad, contrastive_loss

B, P = 5, 7


def _features(batch: int = B, dim: int = P) -> tuple[torch.Tensor, torch.Tensor]:
    return F.normalize(torch.randn(batch, dim), dim=-1), F.normalize(torch.randn(batch, dim), dim=-1)


def _reference(image, text, logit_scale, rows=None):
    """The loss written out: explicit logits, F.cross_entropy on the selected rows (all when None)."""
    scale = logit_scale.exp()
    logits_per_image = scale * image @ text.T
    logits_per_text = scale * text @ image.T
    labels = torch.arange(image.shape[0])
    if rows is not None:
        logits_per_image, logits_per_text, labels = logits_per_image[rows], logits_per_text[rows], labels[rows]
    loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    return loss, scale * image @ text.T, scale * text @ image.T


def _hf_loss(image, text, logit_scale, pos_pairs=None):
    """FlavaForPreTraining's global contrastive loss (weight 1) on FlavaGlobalContrastiveHead's logits."""
    head = FlavaGlobalContrastiveHead(FlavaConfig(global_backprop_contrastive=True))
    logits_per_image, logits_per_text, labels = head(image, text, logit_scale)
    if pos_pairs is not None:  # as in FlavaForPreTraining.forward: ITM positives, all rows if there are none
        pos_mask = torch.where(pos_pairs.any(), pos_pairs, pos_pairs.new([True]))
        logits_per_image, logits_per_text = logits_per_image[pos_mask], logits_per_text[pos_mask]
        labels = labels[pos_mask]
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


MASKS = {
    "none": None,
    "some": torch.tensor([True, False, True, True, False]),
    "one": torch.tensor([False, False, False, True, False]),
    "all_false": torch.zeros(B, dtype=torch.bool),
}


def test_matches_hand_computed_reference():
    image, text = _features()
    logit_scale = torch.tensor(math.log(1 / 0.07))
    out = contrastive_loss(image, text, logit_scale)
    loss, logits_per_image, logits_per_text = _reference(image, text, logit_scale)
    assert isinstance(out, ContrastiveOutput)
    assert out.loss.shape == () and out.logits_per_image.shape == (B, B) and out.logits_per_text.shape == (B, B)
    assert out.labels.dtype == torch.long and out.labels.tolist() == list(range(B))
    torch.testing.assert_close(out.logits_per_image, logits_per_image, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.logits_per_text, logits_per_text, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.loss, loss, atol=1e-6, rtol=0)
    assert out.loss.item() > 0.1  # not a degenerate value


@pytest.mark.parametrize("mask_name", list(MASKS))
def test_matches_hf_flava(mask_name):
    image, text = _features()
    logit_scale = torch.tensor(2.3)
    mask = MASKS[mask_name]
    out = contrastive_loss(image, text, logit_scale, positive_rows=mask)
    expected = _hf_loss(image, text, logit_scale, pos_pairs=mask)
    assert abs(out.loss.item() - expected.item()) <= 1e-6
    head = FlavaGlobalContrastiveHead(FlavaConfig())
    hf_logits_per_image, hf_logits_per_text, hf_labels = head(image, text, logit_scale)
    torch.testing.assert_close(out.logits_per_image, hf_logits_per_image, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.logits_per_text, hf_logits_per_text, atol=1e-6, rtol=0)
    assert torch.equal(out.labels, hf_labels)


def test_mask_selects_rows_and_keeps_all_columns():
    image, text = _features()
    image.requires_grad_(True)
    text.requires_grad_(True)
    logit_scale = torch.tensor(1.5)
    mask = MASKS["some"]
    out = contrastive_loss(image, text, logit_scale, positive_rows=mask)
    loss, _, _ = _reference(image, text, logit_scale, rows=mask)
    torch.testing.assert_close(out.loss, loss, atol=1e-6, rtol=0)
    unmasked = contrastive_loss(image, text, logit_scale).loss
    assert abs(out.loss.item() - unmasked.item()) > 1e-3  # the mask does change the loss
    # Logits are (B, B) whatever the mask: rows dropped from the loss are still columns (negatives).
    assert out.logits_per_image.shape == (B, B) and out.labels.shape == (B,)
    out.loss.backward()
    dropped = ~mask
    assert (image.grad[dropped].abs().sum(dim=1) > 0).all()
    assert (text.grad[dropped].abs().sum(dim=1) > 0).all()


def test_all_false_mask_counts_every_row():
    image, text = _features()
    logit_scale = torch.tensor(2.0)
    masked = contrastive_loss(image, text, logit_scale, positive_rows=torch.zeros(B, dtype=torch.bool))
    full = contrastive_loss(image, text, logit_scale)
    all_true = contrastive_loss(image, text, logit_scale, positive_rows=torch.ones(B, dtype=torch.bool))
    torch.testing.assert_close(masked.loss, full.loss, atol=1e-7, rtol=0)
    torch.testing.assert_close(all_true.loss, full.loss, atol=1e-7, rtol=0)


@pytest.mark.parametrize("mask_name", ["none", "some"])
def test_gradients_match_reference(mask_name):
    mask = MASKS[mask_name]
    image, text = _features()
    leaves = [image.requires_grad_(True), text.requires_grad_(True), torch.tensor(2.0, requires_grad=True)]
    ref_leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    contrastive_loss(*leaves, positive_rows=mask).loss.backward()
    _reference(*ref_leaves, rows=mask)[0].backward()
    for leaf, ref in zip(leaves, ref_leaves):
        assert torch.isfinite(leaf.grad).all()
        assert leaf.grad.abs().sum() > 0
        torch.testing.assert_close(leaf.grad, ref.grad, atol=1e-6, rtol=0)


def test_gather_mode_makes_no_difference_in_one_process():
    image, text = _features()
    logit_scale = torch.tensor(2.0)
    grads = []
    for mode in GatherGrad:
        leaf = image.clone().requires_grad_(True)
        out = contrastive_loss(leaf, text, logit_scale, gather=mode)
        out.loss.backward()
        grads.append((out.loss.detach(), leaf.grad))
    for loss, grad in grads[1:]:
        torch.testing.assert_close(loss, grads[0][0], atol=0, rtol=0)
        torch.testing.assert_close(grad, grads[0][1], atol=0, rtol=0)


# ---------------------------------------------------------------------------------- the module


def test_module_owns_only_logit_scale():
    module = ContrastiveLoss()
    assert [name for name, _ in module.named_parameters()] == ["logit_scale"]
    assert list(module.buffers()) == []
    assert module.logit_scale.shape == ()
    assert module.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert (module.logit_scale_min, module.logit_scale_max) == (0.0, pytest.approx(math.log(100)))
    assert module.gather is GatherGrad.GLOBAL
    image, text = _features()
    mask = MASKS["some"]
    out = module(image, text, positive_rows=mask)
    expected = contrastive_loss(image, text, module.logit_scale.detach(), positive_rows=mask)
    torch.testing.assert_close(out.loss, expected.loss, atol=0, rtol=0)
    out.loss.backward()
    assert torch.isfinite(module.logit_scale.grad) and module.logit_scale.grad != 0


@pytest.mark.parametrize("value, used", [(5.0, math.log(100)), (-0.5, 0.0), (3.0, 3.0)])
def test_forward_clamps_functionally(value, used):
    module = ContrastiveLoss()
    with torch.no_grad():
        module.logit_scale.fill_(value)
    image, text = _features()
    out = module(image, text)
    expected = contrastive_loss(image, text, torch.tensor(used))
    torch.testing.assert_close(out.loss, expected.loss, atol=1e-6, rtol=0)
    assert module.logit_scale.item() == value  # forward never edits the parameter
    out.loss.backward()
    inside = 0.0 <= value <= math.log(100)
    assert (module.logit_scale.grad != 0).item() == inside  # zero gradient outside the range
    # clamp_logit_scale_ moves the parameter into range, in place and outside autograd.
    parameter = module.logit_scale
    module.clamp_logit_scale_()
    assert module.logit_scale is parameter and parameter.grad_fn is None and parameter.requires_grad
    assert parameter.item() == pytest.approx(used)


def test_clamp_bounds_are_configurable():
    module = ContrastiveLoss(logit_scale_init=1.0, logit_scale_min=0.5, logit_scale_max=2.0, gather=GatherGrad.LOCAL)
    with torch.no_grad():
        module.logit_scale.fill_(0.1)
    module.clamp_logit_scale_()
    assert module.logit_scale.item() == 0.5
    assert module.gather is GatherGrad.LOCAL
    assert "gather=LOCAL" in repr(module)


# --------------------------------------------------------------------------------- bad inputs

_IMAGE, _TEXT = torch.full((B, P), 0.5), torch.full((B, P), -0.5)
_SCALE = torch.tensor(1.0)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(image_features=_IMAGE.numpy()), TypeError, "image_features must be a Tensor"),
        (dict(text_features=torch.ones(B, P, dtype=torch.long)), TypeError, "text_features must be a floating-point"),
        (dict(image_features=_IMAGE[0]), ValueError, r"image_features must have shape \(B, P\)"),
        (dict(image_features=_IMAGE[:0], text_features=_TEXT[:0]), ValueError, "image_features must have shape"),
        (dict(text_features=_TEXT[:3]), ValueError, r"text_features must have the shape of image_features \(5, 7\)"),
        (dict(text_features=_TEXT[:, :4]), ValueError, "text_features must have the shape"),
        (dict(logit_scale=1.0), TypeError, "logit_scale must be a Tensor"),
        (dict(logit_scale=torch.ones(1)), ValueError, r"logit_scale must be a scalar tensor .* got shape \(1,\)"),
        (dict(positive_rows=[True] * B), TypeError, "positive_rows must be a Tensor or None"),
        (dict(positive_rows=torch.ones(B, dtype=torch.long)), TypeError, "positive_rows must be a bool tensor"),
        (
            dict(positive_rows=torch.ones(B + 1, dtype=torch.bool)),
            ValueError,
            r"positive_rows must have shape \(5,\), got \(6,\)",
        ),
        (dict(positive_rows=torch.ones(B, 1, dtype=torch.bool)), ValueError, r"positive_rows must have shape \(5,\)"),
        (dict(gather="global"), TypeError, "gather must be a GatherGrad"),
    ],
)
def test_bad_inputs(kwargs, error, message):
    arguments = dict(image_features=_IMAGE, text_features=_TEXT, logit_scale=_SCALE) | kwargs
    image, text, scale = (arguments.pop(k) for k in ("image_features", "text_features", "logit_scale"))
    with pytest.raises(error, match=message):
        contrastive_loss(image, text, scale, **arguments)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(logit_scale_init=5.0), ValueError, "logit_scale_init must lie in"),
        (dict(logit_scale_min=3.0, logit_scale_max=1.0), ValueError, "logit_scale_min .* must be <= logit_scale_max"),
        (dict(logit_scale_max=math.inf), ValueError, "logit_scale_max must be finite"),
        (dict(gather=None), TypeError, "gather must be a GatherGrad"),
    ],
)
def test_bad_module_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        ContrastiveLoss(**kwargs)


def test_module_refuses_a_maximum_whose_exp_overflows_float32():
    """logit_scale_max is a log: 100 (the multiplier CLIP caps at) was accepted, and once the parameter
    grew past 88.72 exp() overflowed and the loss was NaN, with clamp_logit_scale_ keeping it there."""
    with pytest.raises(
        ValueError, match=r"^logit_scale_max must be <= 88.72 \(exp overflows float32 beyond it\); .* got 100.0$"
    ):
        ContrastiveLoss(logit_scale_max=100.0)
    module = ContrastiveLoss(logit_scale_max=88.72)  # the largest accepted
    with torch.no_grad():
        module.logit_scale.fill_(100.0)  # clamped to 88.72 in forward
    image, text = _features()
    assert not torch.isnan(module(image, text).loss)


def test_module_forward_validates():
    with pytest.raises(ValueError, match="positive_rows must have shape"):
        ContrastiveLoss()(_IMAGE, _TEXT, positive_rows=torch.ones(2, dtype=torch.bool))


def test_features_of_two_float_dtypes_meet_in_the_wider_one():
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    scale = torch.tensor(2.0)
    mixed = contrastive_loss(image, text.double(), scale).loss  # was a torch dtype error in the matmul
    assert mixed.dtype == torch.float64
    torch.testing.assert_close(mixed, contrastive_loss(image.double(), text.double(), scale).loss)


def test_inputs_on_different_devices_and_a_non_number_scale_are_named():
    from torchflava.modules.losses.contrastive import ContrastiveLoss, contrastive_loss

    features = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    with pytest.raises(ValueError, match="image_features, text_features and logit_scale must be on one device"):
        contrastive_loss(features, features.to("meta"), torch.tensor(1.0))  # torch's error named none
    with pytest.raises(TypeError, match="logit_scale_init must be a number, got str"):
        ContrastiveLoss(logit_scale_init="2")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            dict(logit_scale=torch.tensor(2)),
            TypeError,
            "^logit_scale must be a floating-point tensor, got torch.int64$",
        ),
        (
            dict(image_features=_IMAGE[:, :0], text_features=_TEXT[:, :0]),  # every logit 0: a loss of log B
            ValueError,
            r"^image_features must have shape \(B, P\) with B >= 1 and P >= 1, got \(5, 0\)$",
        ),
    ],
)
def test_an_integer_scale_and_empty_features_are_named(kwargs, error, message):
    """Each was accepted before: log B from features of width 0."""
    test_bad_inputs(kwargs, error, message)


def test_non_finite_values_give_a_non_finite_loss_for_the_loop_to_stop_on():
    """A diverging run's NaN features are not a caller's mistake: the loss is NaN (not an exception), and
    the training loop stops on it naming the last good checkpoint."""
    loss = contrastive_loss(_IMAGE * math.nan, _TEXT, torch.tensor(1.0)).loss
    assert torch.isnan(loss)


@pytest.mark.parametrize("value, used", [(5.0, math.log(100)), (-0.5, 0.0), (3.0, 3.0)])
def test_the_function_clamps_with_the_bounds_it_is_given_as_the_module_does(value, used):
    """The function used the scale as given, the module clamped it: a raw logit_scale parameter (the
    README's towers from parts) had no way to the module's clamp but by hand. Given bounds, the function
    clamps functionally as the module does (the same loss, zero gradient outside); without, as before."""
    image, text = _features()
    scale = torch.tensor(value, requires_grad=True)
    out = contrastive_loss(image, text, scale, logit_scale_min=0.0, logit_scale_max=math.log(100))
    module = ContrastiveLoss()
    with torch.no_grad():
        module.logit_scale.fill_(value)
    torch.testing.assert_close(out.loss, module(image, text).loss, atol=0, rtol=0)
    torch.testing.assert_close(out.loss, contrastive_loss(image, text, torch.tensor(used)).loss, atol=1e-6, rtol=0)
    out.loss.backward()
    assert (scale.grad != 0).item() == (0.0 <= value <= math.log(100))
    assert scale.item() == value  # the parameter itself is left as it is
    unclamped = contrastive_loss(image, text, torch.tensor(value)).logits_per_image
    torch.testing.assert_close(unclamped, math.exp(value) * image @ text.T, atol=1e-5, rtol=1e-5)
    only_max = contrastive_loss(image, text, torch.tensor(-0.5), logit_scale_max=math.log(100)).logits_per_image
    torch.testing.assert_close(only_max, math.exp(-0.5) * image @ text.T, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "bounds, error, message",
    [
        (dict(logit_scale_max=100.0), ValueError, r"^logit_scale_max must be <= 88.72 \(exp overflows float32"),
        (dict(logit_scale_min=89.0), ValueError, r"^logit_scale_min must be <= 88.72 \(exp overflows float32"),
        (dict(logit_scale_min=3.0, logit_scale_max=1.0), ValueError, r"^logit_scale_min \(3.0\) must be <= "),
        (dict(logit_scale_min=math.nan), ValueError, r"^logit_scale_min must be finite, got nan$"),
        (dict(logit_scale_max="4.6"), TypeError, r"^logit_scale_max must be a number, got str$"),
    ],
)
def test_the_functions_bounds_are_checked_as_the_modules(bounds, error, message):
    with pytest.raises(error, match=message):
        contrastive_loss(_IMAGE, _TEXT, _SCALE, **bounds)
