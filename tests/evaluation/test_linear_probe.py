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
