"""Linear probes on frozen features: L2-regularised logistic regression with the penalty chosen on a
validation split (the protocol of the FLAVA and CLIP papers), solved in full batch with L-BFGS."""

from collections import abc
import math
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor
import torch.nn.functional as F

from torchflava.evaluation.metrics import top_k_accuracy
from torchflava.evaluation.zero_shot import per_class_mean
from torchflava.utils.checks import check_int, describe_tensor, is_integer_tensor

DEFAULT_L2 = tuple(10.0**e for e in range(-6, 3))
# a training feature whose std is at most this share of its largest magnitude is constant (float32
# features vary by ~6e-8 of their size from rounding alone: an encoder's dead unit computed in another
# batch size); it is centred but not scaled
CONSTANT_FEATURE_RTOL = 1e-6


class LinearProbeResult(NamedTuple):
    """Result of :func:`linear_probe`.

    Attributes:
        l2 (float): the chosen penalty.
        val_accuracy (dict): validation accuracy for every penalty tried.
        test_accuracy (Optional[float]): accuracy on the test split of the model refitted on
            train + validation with the chosen penalty (None without a test split).
        weight (Tensor): (C, D) of the final model (on standardised features).
        bias (Tensor): (C,).
        mean (Tensor): (D,) training feature mean used for standardising.
        std (Tensor): (D,) training feature population std used for standardising (1 for a feature
            constant on train).
        test_mean_per_class_accuracy (Optional[float]): the test accuracy of each class over its own
            items, averaged over the classes the test split holds (the CLIP paper's figure for unbalanced
            sets); None without a test split.
        test_top5_accuracy (Optional[float]): the share of test items whose label is among the probe's 5 highest
            scores, past 5 classes (:func:`~torchflava.evaluation.metrics.top_k_accuracy`, as the zero-shot and
            classify commands report it); None without a test split or with 5 classes or fewer.
    """

    l2: float
    val_accuracy: dict
    test_accuracy: Optional[float]
    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor
    test_mean_per_class_accuracy: Optional[float] = None
    test_top5_accuracy: Optional[float] = None

    def predict(self, features: Tensor) -> Tensor:
        """(N,) predicted classes of raw (unstandardised) ``features``, (N, D) finite and real
        (floating-point or integer, as :func:`linear_probe` takes) with the probe's D; ValueError naming
        ``features`` otherwise (NaN rows were given a class)."""
        return self.logits(features).argmax(dim=1)

    def logits(self, features: Tensor) -> Tensor:
        """(N, C) float32 scores of raw (unstandardised) ``features``: ``((features - mean) / std) @ weight.T +
        bias``; ValueError as :meth:`predict`."""
        width = self.weight.shape[1]
        real = isinstance(features, Tensor) and (features.is_floating_point() or is_integer_tensor(features))
        if not real or features.shape[1:] != (width,):
            raise ValueError(
                f"features must be a (N, {width}) real (floating-point or integer) tensor (the probe's width), "
                f"got {describe_tensor(features)}"
            )
        if not bool(torch.isfinite(features).all()):
            raise ValueError("features hold NaN or infinite values")
        return ((features.float() - self.mean) / self.std) @ self.weight.T + self.bias


def fit_logistic_regression(
    features: Tensor, labels: Tensor, num_classes: int, *, l2: float, max_iter: int = 300
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression minimising mean cross-entropy + ``l2`` * ||W||^2 / 2: scikit-learn's
    ``LogisticRegression(C=..., solver="lbfgs")`` objective (summed cross-entropy + ||W||^2 / (2 C), bias
    unpenalised) divided by N, so ``l2`` = 1 / (C N).

    Args:
        features (Tensor): (N, D) float.
        labels (Tensor): (N,) class ids in [0, num_classes), of any integer dtype.
        num_classes (int): C.
        l2 (float): penalty on the weights (not the bias), >= 0.
        max_iter (int): L-BFGS iterations.

    Returns:
        tuple[Tensor, Tensor]: weight (C, D) and bias (C,).

    Raises:
        TypeError: if ``features`` or ``labels`` is not a tensor.
        ValueError: on mismatched shapes, labels outside [0, num_classes), complex or non-finite
            features, a negative or non-finite ``l2``, ``max_iter`` < 1 or ``num_classes`` < 2 (what
            :func:`linear_probe` checks, for direct callers).
    """
    check_int("num_classes", num_classes, 2)
    check_int("max_iter", max_iter, 1)  # 0 returned an all-zero model
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not 0 <= l2 < math.inf:
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    if not isinstance(features, Tensor) or not isinstance(labels, Tensor):
        got = f"{type(features).__name__} and {type(labels).__name__}"
        raise TypeError(f"features and labels must be tensors with at least one row, got {got}")
    _check("features", features, labels, num_classes)  # (NaN features gave NaN weights; a bad label an IndexError)
    if features.shape[0] < 1:
        raise ValueError("features and labels must be tensors with at least one row")
    return _fit(features, labels.long(), num_classes, l2=l2, max_iter=max_iter)  # (cross_entropy takes long)


def _fit(features: Tensor, labels: Tensor, num_classes: int, *, l2: float, max_iter: int) -> tuple[Tensor, Tensor]:
    """:func:`fit_logistic_regression` on inputs already checked (:func:`linear_probe` checks each split once)."""
    # detached: features still in an encoder's graph failed in the second backward, and a leaf that
    # required grad was given one
    features = features.detach().float()
    labels = labels.to(features.device)  # (labels built on the CPU for features on a GPU)
    # on the features' device: CPU parameters failed on GPU features inside the first matmul
    weight = torch.zeros(num_classes, features.shape[1], device=features.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=features.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.T + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _check(name: str, features: Tensor, labels: Tensor, num_classes: int) -> None:
    if features.dim() != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
            f"{name}: features must be (N, D) with labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    if not is_integer_tensor(labels) or bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(f"{name}: labels must be integer class ids in [0, {num_classes})")
    if features.is_complex():  # (the cast to float dropped the imaginary part, with only a warning)
        raise ValueError(f"{name}: features must be real (floating-point or integer), got {features.dtype}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name}: features hold NaN or infinite values")


def _standardisation(features: Tensor) -> tuple[Tensor, Tensor]:
    """(D,) float32 mean and scale of (N, D) training ``features``: the population std (as
    ``sklearn.preprocessing.StandardScaler``), and 1 for a feature constant on train (a dead unit, or one
    that varies only by rounding, within a relative :data:`CONSTANT_FEATURE_RTOL` of its largest
    magnitude). Dividing such a feature by its ~0 std (clamped at 1e-6) multiplied whatever it held in
    validation or test rows by up to a million: the refit on train + val saw those rows as outliers of
    that size and collapsed to ~0 weights (test accuracy at chance)."""
    x = features.double()  # (float32 sums of many rows lose the digits a small std lives in)
    mean = x.mean(dim=0)
    std = x.std(dim=0, correction=0)
    constant = std <= CONSTANT_FEATURE_RTOL * x.abs().amax(dim=0)  # (an all-zero column: 0 <= 0)
    return mean.float(), torch.where(constant, torch.ones_like(std), std).float()


def linear_probe(
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    test: Optional[tuple[Tensor, Tensor]] = None,
    *,
    num_classes: Optional[int] = None,
    l2_values: Sequence[float] = DEFAULT_L2,
    max_iter: int = 300,
) -> LinearProbeResult:
    """Fit a logistic-regression probe for each penalty, keep the best on ``val``, refit, test.

    The fits run on the features' device (the labels may be anywhere). Features are standardised with
    the mean and population std of the training features only (never
    validation or test), a feature constant on train being centred but not scaled (see
    :data:`CONSTANT_FEATURE_RTOL`), as ``sklearn.preprocessing.StandardScaler`` fitted on train does.
    A class absent from train can still be given by ``num_classes`` or a later split's labels: the probe
    never predicts it, and its validation and test items count as wrong.

    Args:
        train (tuple[Tensor, Tensor]): features (N, D) and labels (N,).
        val (tuple[Tensor, Tensor]): the validation split that picks the penalty.
        test (Optional[tuple[Tensor, Tensor]]): scored with the model refitted on train + val.
        num_classes (Optional[int]): C; the largest label + 1 when None.
        l2_values (Sequence[float]): penalties to try (each >= 0).
        max_iter (int): L-BFGS iterations per fit.

    Returns:
        LinearProbeResult: the chosen penalty, accuracies (the test split's also averaged per class) and
        the final model.

    Raises:
        TypeError: if a split is not a (features, labels) pair of tensors, ``l2_values`` not a sequence,
            or ``num_classes`` or ``max_iter`` not an int.
        ValueError: on mismatched shapes, an empty split or zero-width features, bad labels, fewer
            than 2 classes, complex or non-finite features, features of two splits on two devices,
            ``max_iter`` < 1, or no/negative penalties.
    """
    if isinstance(l2_values, str) or not isinstance(l2_values, abc.Sequence):  # (len()'s TypeError)
        raise TypeError(f"l2_values must be a sequence of numbers, got {type(l2_values).__name__}")
    if len(l2_values) == 0 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf for v in l2_values
    ):
        raise ValueError(f"l2_values must be non-empty finite numbers >= 0, got {list(l2_values)}")
    check_int("max_iter", max_iter, 1)  # 0 returned an untrained probe
    splits = {"train": train, "val": val, **({"test": test} if test is not None else {})}
    for name, split in splits.items():
        if not isinstance(split, (tuple, list)) or len(split) != 2 or not all(isinstance(v, Tensor) for v in split):
            got = (
                f"{type(split).__name__} of {', '.join(type(v).__name__ for v in split)}"
                if isinstance(split, (tuple, list))
                else type(split).__name__
            )
            raise TypeError(f"{name} must be a (features, labels) pair of tensors, got {got}")
        features, labels = split
        if features.dim() != 2 or labels.shape != (features.shape[0],) or min(features.shape) < 1:
            raise ValueError(
                f"{name}: features must be (N, D), N >= 1 and D >= 1, with labels (N,), got "
                f"{tuple(features.shape)} and {tuple(labels.shape)}"
            )
        if not is_integer_tensor(labels):  # (before num_classes is read off them: a NaN label failed in int())
            raise ValueError(f"{name}: labels must be integer class ids, got {labels.dtype}")
    if num_classes is None:
        num_classes = int(max(int(s[1].max()) for s in splits.values())) + 1
    check_int("num_classes", num_classes, 2)  # one class makes any probe 100% right
    if train[0].shape[0] < 2 or len({s[0].shape[1] for s in splits.values()}) > 1:
        raise ValueError(
            f"train: expected at least 2 rows (for the feature std) and one width D across the splits, got "
            f"{ {name: tuple(s[0].shape) for name, s in splits.items()} }"
        )
    for name, (features, labels) in splits.items():
        _check(name, features, labels, num_classes)
    devices = {name: s[0].device for name, s in splits.items()}
    if len(set(devices.values())) > 1:  # (the standardisation failed inside torch on the second split)
        raise ValueError(f"the features of every split must be on one device, got {devices}")
    # any integer dtype: cross_entropy's long; features detached (the mean and std kept no encoder graph)
    device = train[0].device  # labels go where the features are (accuracies compare the two)
    train, val = (train[0].detach(), train[1].long().to(device)), (val[0].detach(), val[1].long().to(device))
    test = None if test is None else (test[0].detach(), test[1].long().to(device))
    mean, std = _standardisation(train[0])

    def standard(x: Tensor) -> Tensor:
        return (x.float() - mean) / std

    val_accuracy = {}
    train_x, val_x = standard(train[0]), standard(val[0])  # (the splits were checked above: _fit checks nothing)
    for l2 in l2_values:
        weight, bias = _fit(train_x, train[1], num_classes, l2=l2, max_iter=max_iter)
        predictions = (val_x @ weight.T + bias).argmax(dim=1)
        val_accuracy[l2] = (predictions == val[1]).double().mean().item()
    best = max(l2_values, key=lambda v: (val_accuracy[v], v))  # ties: the stronger penalty
    features = torch.cat([train_x, val_x])
    weight, bias = _fit(features, torch.cat([train[1], val[1]]), num_classes, l2=best, max_iter=max_iter)
    test_accuracy = per_class = top5 = None
    if test is not None:
        # stable: of tied classes the first comes first, as argmax (the prediction) picks it
        ranked = (standard(test[0]) @ weight.T + bias).sort(dim=1, descending=True, stable=True).indices
        scores = top_k_accuracy(ranked, test[1], num_classes)  # (the accuracy, and top-5 past 5 classes)
        test_accuracy, top5 = scores["accuracy"], scores.get("top5_accuracy")
        per_class = per_class_mean(ranked[:, 0] == test[1], test[1], num_classes)
    return LinearProbeResult(best, val_accuracy, test_accuracy, weight, bias, mean, std, per_class, top5)
