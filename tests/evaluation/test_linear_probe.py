"""linear_probe: logistic regression with the L2 penalty chosen on validation."""

import pytest
import torch
import torch.nn.functional as F

from torchflava.evaluation.linear_probe import fit_logistic_regression, linear_probe


def _blobs(n, seed, shift=3.0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.tensor([[shift, 0.0, 0, 0], [0, shift, 0, 0], [0, 0, shift, 0]])
    return centres[labels] + torch.randn(n, 4, generator=g), labels


def test_fit_reaches_the_stationary_point_of_the_penalised_loss():
    x, y = _blobs(60, 0)
    w, b = fit_logistic_regression(x, y, 3, l2=0.1)
    w, b = w.requires_grad_(), b.requires_grad_()
    loss = F.cross_entropy(x @ w.T + b, y) + 0.05 * w.pow(2).sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4


def test_probe_separates_blobs_and_picks_a_penalty_on_validation():
    result = linear_probe(_blobs(90, 0), _blobs(30, 1), _blobs(60, 2), l2_values=(1e-4, 1e-2, 1.0, 100.0))
    assert set(result.val_accuracy) == {1e-4, 1e-2, 1.0, 100.0}
    assert result.val_accuracy[result.l2] == max(result.val_accuracy.values())
    assert result.val_accuracy[100.0] < result.val_accuracy[result.l2] or result.l2 == 100.0
    assert result.test_accuracy > 0.9
    x, y = _blobs(60, 2)
    assert (result.predict(x) == y).float().mean().item() == pytest.approx(result.test_accuracy)


def test_probe_errors():
    x, y = _blobs(30, 0)
    with pytest.raises(ValueError, match="val: features must be"):
        linear_probe((x, y), (x[:5], y[:4]))
    with pytest.raises(ValueError, match="train: labels must be integer class ids"):
        linear_probe((x, y.float()), (x, y), num_classes=3)
    with pytest.raises(ValueError, match="NaN"):
        linear_probe((x * float("nan"), y), (x, y))
    with pytest.raises(ValueError, match="l2_values"):
        linear_probe((x, y), (x, y), l2_values=())


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(max_iter=0), ValueError, "max_iter must be >= 1"),  # returned an untrained probe
        (dict(num_classes=1), ValueError, "num_classes must be >= 2"),  # any probe would be 100% right
        (dict(num_classes=2.5), TypeError, "num_classes must be an int"),
        (dict(l2_values=(float("nan"),)), ValueError, "l2_values must be non-empty finite numbers"),
        (dict(l2_values=(float("inf"),)), ValueError, "l2_values must be non-empty finite numbers"),
    ],
)
def test_probe_settings_are_refused_naming_them(change, error, match):
    with pytest.raises(error, match=match):
        linear_probe(_blobs(30, 0), _blobs(30, 1), **change)


def test_probe_splits_are_checked_before_fitting():
    x, y = _blobs(30, 0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        linear_probe((x[:1], y[:1]), (x, y), num_classes=3)
    with pytest.raises(ValueError, match="one width D"):
        linear_probe((x, y), (x[:, :3], y))
    with pytest.raises(ValueError, match="N >= 1"):
        linear_probe((x, y), (x[:0], y[:0]))
    with pytest.raises(ValueError, match="labels must be integer class ids"):
        linear_probe((x, y.bool()), (x, y), num_classes=3)
    as_int32 = linear_probe((x, y.int()), (x, y.int()), l2_values=(1.0,))  # any integer dtype works
    assert as_int32.val_accuracy == linear_probe((x, y), (x, y), l2_values=(1.0,)).val_accuracy


@pytest.mark.parametrize(
    "change, match",
    [
        ({"l2": -1.0}, r"l2 must be a finite number >= 0, got -1.0"),  # was accepted
        ({"max_iter": 0}, r"max_iter must be >= 1, got 0"),  # an all-zero model
        ({"labels": torch.tensor([0, 5])}, r"labels must be integer class ids in \[0, 2\)"),  # IndexError
        ({"features": torch.tensor([[0.0, float("nan")], [1.0, 0.0]])}, "features hold NaN"),  # NaN weights
        ({"num_classes": 1}, r"num_classes must be >= 2"),
    ],
)
def test_fit_logistic_regression_checks_what_linear_probe_checks(change, match):
    from torchflava.evaluation.linear_probe import fit_logistic_regression

    args = {"features": torch.eye(2), "labels": torch.tensor([0, 1]), "num_classes": 2, "l2": 1.0, **change}
    with pytest.raises(ValueError, match=match):
        fit_logistic_regression(args.pop("features"), args.pop("labels"), args.pop("num_classes"), **args)


def test_linear_probe_refuses_a_bool_penalty():
    from torchflava.evaluation import linear_probe

    split = (torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="l2_values must be"):
        linear_probe(split, split, l2_values=(True,))
