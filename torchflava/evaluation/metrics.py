"""Task metrics for fine-tuning: accuracy, binary F1, Pearson correlation, VQA soft accuracy.

Each checks its inputs first (a ValueError naming the argument): labels of another shape broadcast
silently, an empty input gives nan, an out-of-range label or a NaN logit a wrong number.
"""

import math

import torch
from torch import Tensor

from torchflava.utils.checks import check_int, describe_tensor, is_integer_tensor

LOSSES = ("cross_entropy", "binary_cross_entropy", "mse")


def _check_logits(logits: object) -> int:
    """The number of rows of (N, C) finite float ``logits`` (N >= 1)."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point() or logits.shape[0] == 0:
        raise ValueError(f"logits must be a (N, C) floating-point tensor with N >= 1, got {describe_tensor(logits)}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits hold NaN or infinite values")
    return logits.shape[0]


def _is_real(value: object) -> bool:
    """Whether ``value`` is a tensor of real numbers: floating-point or integer (not bool nor complex)."""
    return isinstance(value, Tensor) and (value.is_floating_point() or is_integer_tensor(value))


def _check_labels(labels: object, rows: int, classes: int) -> None:
    """(rows,) integer class ids in [0, classes)."""
    if not is_integer_tensor(labels) or labels.shape != (rows,):
        raise ValueError(f"labels must be ({rows},) integer class ids, got {describe_tensor(labels)}")
    if bool(((labels < 0) | (labels >= classes)).any()):
        raise ValueError(
            f"labels must be class ids in [0, {classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
        )


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of rows whose argmax is the label: logits (N, C), labels (N,) class ids."""
    _check_labels(labels, _check_logits(logits), logits.shape[1])
    return (logits.argmax(dim=1) == labels).float().mean().item()


def binary_f1(logits: Tensor, labels: Tensor, positive: int = 1) -> float:
    """F1 of class ``positive`` for logits (N, 2) and labels (N,) (0 when it is never predicted nor true);
    TypeError unless ``positive`` is an int, ValueError unless it is one of the logits' classes."""
    _check_labels(labels, _check_logits(logits), logits.shape[1])
    if check_int("positive", positive, 0) >= logits.shape[1]:  # (a class that cannot occur scored 0.0)
        raise ValueError(f"positive must be a class id in [0, {logits.shape[1]}), got {positive}")
    predicted = logits.argmax(dim=1) == positive
    truth = labels == positive
    tp = (predicted & truth).sum().item()
    denominator = predicted.sum().item() + truth.sum().item()
    return 2 * tp / denominator if denominator else 0.0


def pearson(predictions: Tensor, targets: Tensor) -> float:
    """Pearson correlation of two (N,) vectors; nan when either is constant (the correlation is
    undefined there, as in ``scipy.stats.pearsonr``: a collapsed regressor that predicts one value for
    every row reported 0.0, which reads as a measured absence of correlation)."""
    for name, value in (("predictions", predictions), ("targets", targets)):
        if not _is_real(value) or value.dim() != 1 or value.numel() < 2:
            raise ValueError(f"{name} must be a (N,) real tensor with N >= 2, got {describe_tensor(value)}")
        if not bool(torch.isfinite(value.double()).all()):
            raise ValueError(f"{name} must be a tensor of finite values, got NaN or infinite ones")
    if predictions.shape != targets.shape:  # (a (2, 3) and a (3, 2) were paired value by value)
        raise ValueError(
            f"predictions and targets must have one shape, got {tuple(predictions.shape)} and {tuple(targets.shape)}"
        )
    x, y = predictions.double(), targets.double()
    x, y = x - x.mean(), y - y.mean()
    denominator = (x.norm() * y.norm()).item()
    return (x @ y).item() / denominator if denominator > 0 else math.nan


def soft_accuracy(logits: Tensor, scores: Tensor) -> float:
    """VQA accuracy: mean score (N, C) of the predicted answer (scores floating-point or integer)."""
    _check_logits(logits)
    if not isinstance(scores, Tensor) or scores.shape != logits.shape:
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must have the logits' shape {tuple(logits.shape)}, got {got}")
    if not _is_real(scores):
        raise ValueError(f"scores must be floating-point or integer, got {scores.dtype}")
    if not bool(torch.isfinite(scores).all()):  # (the mean was nan)
        raise ValueError("scores hold NaN or infinite values")
    return scores.gather(1, logits.argmax(dim=1, keepdim=True)).double().mean().item()


def task_metrics(logits: Tensor, labels: Tensor, loss: str) -> dict[str, float]:
    """The metrics that fit a loss: accuracy (+ F1 for 2 classes), soft accuracy, or Pearson.

    Args:
        logits (Tensor): (N, C) outputs; (N, 1) for ``mse`` (one regression output).
        labels (Tensor): the targets in the loss's format: (N,) class ids, (N, C) soft scores, or (N,)
            real regression targets for ``mse``.
        loss (str): ``cross_entropy``, ``binary_cross_entropy`` or ``mse``.

    Returns:
        dict[str, float]: metric name -> value (``pearson`` is nan where the predictions or the
        targets are constant: see :func:`pearson`).

    Raises:
        ValueError: if ``loss`` is not one of :data:`LOSSES`, or an input is malformed (see above).
    """
    if loss not in LOSSES:  # a misspelt loss returned accuracy and F1
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss == "mse":
        rows = _check_logits(logits)
        if logits.shape[1] != 1:  # (the Pearson of column 0 was returned)
            raise ValueError(f"logits must be (N, 1) for loss 'mse' (one regression output), got {tuple(logits.shape)}")
        if not _is_real(labels) or labels.shape != (rows,):
            raise ValueError(
                f"labels must be ({rows},) real regression targets for loss 'mse', got {describe_tensor(labels)}"
            )
        return {"pearson": pearson(logits[:, 0], labels)}
    if loss == "binary_cross_entropy":
        return {"vqa_accuracy": soft_accuracy(logits, labels)}
    out = {"accuracy": accuracy(logits, labels)}
    if logits.shape[1] == 2:
        out["f1"] = binary_f1(logits, labels)
    return out
