"""Task metrics for fine-tuning: accuracy, binary F1, Matthews correlation, Pearson and Spearman
correlations, VQA soft accuracy.

Each checks its inputs first (a ValueError naming the argument): labels of another shape broadcast
silently, an empty input gives nan, an out-of-range label or a NaN logit a wrong number. Labels (or
scores, targets) on another device than the logits (predictions) are copied to theirs, as most
libraries do for CPU labels and CUDA logits (a copy of N values, exact); a tensor on the meta device
holds no values to score and is refused.

:func:`predictions_and_targets` keeps two numbers per row of what :func:`task_metrics` reads, and
:func:`prediction_metrics` gives the figures from those: a validation worked out in shares gathers
those instead of (N, C) rows. :func:`task_metrics` is the two in one call (one implementation).

:func:`percent` is how every evaluation command and recipe prints a share (an accuracy, a chance level),
:func:`correlation` how they print a correlation (Matthews, Pearson, Spearman), :func:`top_k_accuracy` the
top-1 and top-5 accuracies the classification commands report alike, and :func:`accuracy_summary` how the
zero-shot and classify commands print them.
"""

import math
from numbers import Real
from typing import Optional

import torch
from torch import Tensor

from torchflava.utils.checks import check_int, describe_tensor, is_integer_tensor

LOSSES = ("cross_entropy", "binary_cross_entropy", "mse")
TOP5 = 5  # the second top-k accuracy reported (``top5_accuracy``), where there are more classes than that


def reported_ks(num_classes: int) -> tuple[int, ...]:
    """The top-k accuracies a classification over ``num_classes`` classes reports: top-1 always, and top-5 where
    there are more than 5 classes (with 5 or fewer every image is right in its top 5: 100%, which says nothing)."""
    return (1, TOP5) if check_int("num_classes", num_classes, 1) > TOP5 else (1,)


def top_k_accuracy(ranked: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """``accuracy`` (top-1: the first ranked class) and, past 5 classes (:func:`reported_ks`), ``top5_accuracy``
    (the label among the first 5): what every classification command reports under those keys.

    Args:
        ranked (Tensor): (N, K) integer class ids, most probable first (the first is the prediction), N >= 1 and
            K >= 5 where top-5 is reported (else K >= 1); e.g. ``logits.sort(dim=1, descending=True,
            stable=True).indices``, whose first column is the logits' argmax.
        labels (Tensor): (N,) true class ids.
        num_classes (int): C.

    Returns:
        dict[str, float]: ``accuracy`` and, for C > 5, ``top5_accuracy``; shares counted, then divided in float64.

    Raises:
        TypeError: if ``num_classes`` is not an int.
        ValueError: if ``num_classes`` < 1, ``ranked`` is not (N, K) integer ids with enough columns, or ``labels``
            not (N,) ids in [0, C).
    """
    ks = reported_ks(num_classes)
    if not is_integer_tensor(ranked) or ranked.dim() != 2 or ranked.shape[0] == 0 or ranked.shape[1] < max(ks):
        raise ValueError(
            f"ranked must be (N, K) integer class ids with N >= 1 and K >= {max(ks)}, got {describe_tensor(ranked)}"
        )
    labels = _on_one_device(ranked, labels, ("ranked", "labels"))
    _check_labels(labels, ranked.shape[0], num_classes)
    hits = ranked[:, : max(ks)] == labels[:, None]  # (N, k): at most one True a row
    out = {"accuracy": int(hits[:, 0].sum()) / ranked.shape[0]}
    if TOP5 in ks:
        out["top5_accuracy"] = int(hits.any(dim=1).sum()) / ranked.shape[0]
    return out


def accuracy_summary(result: dict) -> str:
    """What the zero-shot and classify commands' summary line says of a classification's accuracies:
    ``"; accuracy A (chance C), mean per class M"`` and ``", top-5 T"`` where ``result`` holds ``top5_accuracy``
    (each share as :func:`percent` prints it); ``""`` where it holds no ``accuracy`` (the images were not labelled)."""
    if "accuracy" not in result:
        return ""
    summary = f"; accuracy {percent(result['accuracy'])} (chance {percent(result['chance'])})"
    summary += f", mean per class {percent(result['mean_per_class_accuracy'])}"
    if "top5_accuracy" in result:
        summary += f", top-5 {percent(result['top5_accuracy'])}"
    return summary


def correlation(value: Optional[float]) -> str:
    """A correlation (Matthews, Pearson, Spearman) as every command and recipe prints it: three decimals, and
    ``nan`` where it is undefined (NaN, or None as a command's JSON holds it), as :func:`percent` prints ``nan%``.

    Raises:
        TypeError: if ``value`` is neither a real number nor None.
    """
    if value is None:
        return "nan"
    if not isinstance(value, Real) or isinstance(value, bool):
        raise TypeError(f"value must be a real number or None, got {type(value).__name__}")
    return "nan" if math.isnan(value) else f"{float(value) + 0.0:.3f}"


def percent(share: float) -> str:
    """``share`` (a fraction in [0, 1]) as a percentage, one decimal unless that would misstate it: below 1% as
    many as its first two significant digits need (a chance of 1/3000 classes is 0.033%, which one decimal
    printed as 0.0%), and short of 100% as many as keep it below 100 (an accuracy of 0.9996 is 99.96%, which
    one decimal printed as 100.0%). 0 and 1 are 0.0% and 100.0%; NaN (an undefined figure) is nan%.

    Args:
        share (float): the fraction, a real number (int or float, not bool) or a 0-dim floating-point tensor.

    Returns:
        str: e.g. ``"75.0%"``, ``"0.0046%"``, ``"99.96%"``.

    Raises:
        TypeError: if ``share`` is not a real number.
        ValueError: if ``share`` is outside [0, 1].
    """
    if isinstance(share, Tensor) and share.dim() == 0 and share.dtype.is_floating_point and share.device.type != "meta":
        share = share.item()  # (an accuracy worked out in torch: (predicted == labels).float().mean())
    if not isinstance(share, Real) or isinstance(share, bool):
        raise TypeError(f"share must be a real number in [0, 1], got {type(share).__name__}")
    if math.isnan(share):  # (a figure that could not be worked out, printed as such rather than refused)
        return "nan%"
    if not 0 <= share <= 1:
        raise ValueError(f"share must be a fraction in [0, 1], got {share!r}")
    value = 100 * float(share) + 0.0  # (+ 0.0: -0.0 is 0.0%)
    if 0 < value < 1:
        shown = f"{value:.{1 - math.floor(math.log10(value))}f}"
        if float(shown) < 1:  # (0.995 rounds to 1.00: 1.0% then, as from 1% up)
            return f"{shown}%"
    decimals = 1
    while value < 100 and f"{value:.{decimals}f}".startswith("100") and decimals < 20:
        decimals += 1  # (99.96 is 100.0 to one decimal, 99.96 to two)
    return f"{value:.{decimals}f}%"


def _on_one_device(first: object, second: object, names: tuple[str, str]) -> object:
    """``second`` on ``first``'s device, after refusing a meta tensor on either side (ValueError naming
    it): the metrics compare the two elementwise, which torch refuses across devices. Anything that is
    not a tensor is returned as it is, for the checks that follow to refuse."""
    for name, value in zip(names, (first, second)):
        if isinstance(value, Tensor) and value.is_meta:
            raise ValueError(
                f"{name} must be a tensor with values (on cpu or an accelerator), got one on the meta device"
            )
    if isinstance(first, Tensor) and isinstance(second, Tensor) and second.device != first.device:
        return second.to(first.device)
    return second


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
    labels = _on_one_device(logits, labels, ("logits", "labels"))
    _check_labels(labels, _check_logits(logits), logits.shape[1])
    return _accuracy(logits.argmax(dim=1), labels)


def _accuracy(predicted: Tensor, labels: Tensor) -> float:
    # counted, then divided in Python (float64): a float32 mean reported 81 of 100 as 0.8100000023841858
    return int((predicted == labels).sum()) / predicted.shape[0]


def binary_f1(logits: Tensor, labels: Tensor, positive: int = 1) -> float:
    """F1 of class ``positive`` for logits (N, 2) and labels (N,) (0 when it is never predicted nor true);
    TypeError unless ``positive`` is an int, ValueError unless it is one of the logits' classes."""
    labels = _on_one_device(logits, labels, ("logits", "labels"))
    _check_labels(labels, _check_logits(logits), logits.shape[1])
    if check_int("positive", positive, 0) >= logits.shape[1]:  # (a class that cannot occur scored 0.0)
        raise ValueError(f"positive must be a class id in [0, {logits.shape[1]}), got {positive}")
    return _binary_f1(logits.argmax(dim=1), labels, positive)


def _binary_f1(predicted_classes: Tensor, labels: Tensor, positive: int) -> float:
    predicted, truth = predicted_classes == positive, labels == positive
    tp = (predicted & truth).sum().item()
    denominator = predicted.sum().item() + truth.sum().item()
    return 2 * tp / denominator if denominator else 0.0


def matthews(logits: Tensor, labels: Tensor) -> float:
    """Matthews correlation coefficient of the argmax of logits (N, C) and labels (N,) class ids, for any
    number of classes (Gorodkin's multi-class form, which is the phi coefficient for two; GLUE's CoLA
    metric), as ``sklearn.metrics.matthews_corrcoef``: with t_k and p_k the rows labelled and predicted
    k, c the correct ones, (c N - sum t_k p_k) / sqrt((N^2 - sum p_k^2) (N^2 - sum t_k^2)).

    0.0 where the denominator is 0 (every row predicted as one class, or every label one class, right
    or wrong): what ``matthews_corrcoef`` returns there by default, and so what GLUE evaluation code
    built on it reports; :func:`pearson` gives nan in the like case."""
    labels = _on_one_device(logits, labels, ("logits", "labels"))
    _check_labels(labels, _check_logits(logits), logits.shape[1])
    return _matthews(logits.argmax(dim=1), labels, logits.shape[1])


def _matthews(predicted: Tensor, labels: Tensor, classes: int) -> float:
    rows, truth = predicted.shape[0], labels.long()
    # Python ints: N^4 overflows int64 from N ~ 55,000 (sklearn counts in float64)
    p = torch.bincount(predicted, minlength=classes).tolist()
    t = torch.bincount(truth, minlength=classes).tolist()
    correct = int((predicted == truth).sum())
    covariance = correct * rows - sum(pk * tk for pk, tk in zip(p, t))
    variances = (rows * rows - sum(pk * pk for pk in p)) * (rows * rows - sum(tk * tk for tk in t))
    return covariance / math.sqrt(variances) if variances else 0.0


def _check_pair(predictions: object, targets: object) -> None:
    """Two (N,) finite real vectors of one shape, N >= 2."""
    for name, value in (("predictions", predictions), ("targets", targets)):
        if not _is_real(value) or value.dim() != 1 or value.numel() < 2:
            raise ValueError(f"{name} must be a (N,) real tensor with N >= 2, got {describe_tensor(value)}")
        if not bool(torch.isfinite(value.double()).all()):
            raise ValueError(f"{name} must be a tensor of finite values, got NaN or infinite ones")
    if predictions.shape != targets.shape:  # (a (2, 3) and a (3, 2) were paired value by value)
        raise ValueError(
            f"predictions and targets must have one shape, got {tuple(predictions.shape)} and {tuple(targets.shape)}"
        )


def _correlation(x: Tensor, y: Tensor) -> float:
    """Pearson correlation of two checked (N,) vectors; nan when either is constant."""
    x, y = x.double(), y.double()
    x, y = x - x.mean(), y - y.mean()
    denominator = (x.norm() * y.norm()).item()
    return (x @ y).item() / denominator if denominator > 0 else math.nan


def pearson(predictions: Tensor, targets: Tensor) -> float:
    """Pearson correlation of two (N,) vectors; nan when either is constant (the correlation is
    undefined there, as in ``scipy.stats.pearsonr``: a collapsed regressor that predicts one value for
    every row reported 0.0, which reads as a measured absence of correlation)."""
    targets = _on_one_device(predictions, targets, ("predictions", "targets"))
    _check_pair(predictions, targets)
    return _correlation(predictions, targets)


def _average_ranks(values: Tensor) -> Tensor:
    """1-based float64 ranks of a (N,) vector, tied values sharing the mean of their positions."""
    ordered, order = values.double().sort(stable=True)
    _, counts = torch.unique_consecutive(ordered, return_counts=True)
    ends = counts.cumsum(0).double()  # a run of equal values fills positions ends - counts + 1 .. ends
    shared = torch.repeat_interleave(ends - (counts.double() - 1) / 2, counts)
    return torch.empty_like(shared).scatter_(0, order, shared)


def spearman(predictions: Tensor, targets: Tensor) -> float:
    """Spearman rank correlation of two (N,) vectors (GLUE's second STS-B metric): the Pearson
    correlation of their ranks, ties given the average of the ranks they span, as
    ``scipy.stats.spearmanr``; nan when either is constant, as :func:`pearson`."""
    targets = _on_one_device(predictions, targets, ("predictions", "targets"))
    _check_pair(predictions, targets)
    return _correlation(_average_ranks(predictions), _average_ranks(targets))


def soft_accuracy(logits: Tensor, scores: Tensor) -> float:
    """VQA accuracy: mean score (N, C) of the predicted answer (scores floating-point or integer)."""
    scores = _checked_scores(logits, scores)
    return scores.gather(1, logits.argmax(dim=1, keepdim=True)).double().mean().item()


def _checked_scores(logits: object, scores: object) -> Tensor:
    """``scores`` on the logits' device, after checking (N, C) finite float logits and finite real scores of
    their shape."""
    scores = _on_one_device(logits, scores, ("logits", "scores"))
    _check_logits(logits)
    if not isinstance(scores, Tensor) or scores.shape != logits.shape:
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must have the logits' shape {tuple(logits.shape)}, got {got}")
    if not _is_real(scores):
        raise ValueError(f"scores must be floating-point or integer, got {scores.dtype}")
    if not bool(torch.isfinite(scores).all()):  # (the mean was nan)
        raise ValueError("scores hold NaN or infinite values")
    return scores


def _check_regression(logits: object, labels: object) -> None:
    """(N, 1) finite float logits (one regression output) and (N,) real targets."""
    rows = _check_logits(logits)
    if logits.shape[1] != 1:  # (the correlations of column 0 were returned)
        raise ValueError(f"logits must be (N, 1) for loss 'mse' (one regression output), got {tuple(logits.shape)}")
    if not _is_real(labels) or labels.shape != (rows,):
        raise ValueError(
            f"labels must be ({rows},) real regression targets for loss 'mse', got {describe_tensor(labels)}"
        )


def task_metrics(logits: Tensor, labels: Tensor, loss: str) -> dict[str, float]:
    """The metrics that fit a loss: accuracy and Matthews correlation (+ F1 for 2 classes), soft
    accuracy, or Pearson and Spearman correlations. :func:`prediction_metrics` of :func:`predictions_and_targets`
    (one implementation: what a sharded validation gathers and scores gives these figures exactly).

    Args:
        logits (Tensor): (N, C) outputs; (N, 1) for ``mse`` (one regression output).
        labels (Tensor): the targets in the loss's format: (N,) class ids, (N, C) soft scores, or (N,)
            real regression targets for ``mse``.
        loss (str): ``cross_entropy``, ``binary_cross_entropy`` or ``mse``.

    Returns:
        dict[str, float]: metric name -> value: ``accuracy``, ``matthews`` and, for 2 classes, ``f1``
        (``cross_entropy``); ``vqa_accuracy`` (``binary_cross_entropy``); ``pearson`` and ``spearman``
        (``mse``; nan where the predictions or the targets are constant: see :func:`pearson`).

    Raises:
        ValueError: if ``loss`` is not one of :data:`LOSSES`, an input is malformed (see above) or on
            the meta device (``labels`` on another device are copied to the logits' one).
    """
    predicted, targets = predictions_and_targets(logits, labels, loss)  # (every input checked there)
    return prediction_metrics(predicted, targets, loss, logits.shape[1])


def classification_metrics(predicted: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """:func:`task_metrics` of ``cross_entropy`` from the predicted classes alone (what those metrics read of the
    logits: their argmax), without (N, C) scores: accuracy and Matthews correlation, and F1 of class 1 for two
    classes.

    Args:
        predicted (Tensor): (N,) predicted class ids, N >= 1.
        labels (Tensor): (N,) true class ids.
        num_classes (int): C; every id must lie in [0, C).

    Raises:
        TypeError: if ``num_classes`` is not an int.
        ValueError: if ``num_classes`` < 1, or either tensor is not (N,) integer ids in [0, C) (labels on another
            device are copied to the predictions' one).
    """
    check_int("num_classes", num_classes, 1)
    if not is_integer_tensor(predicted) or predicted.dim() != 1 or predicted.shape[0] == 0:
        raise ValueError(f"predicted must be (N,) integer class ids with N >= 1, got {describe_tensor(predicted)}")
    if bool(((predicted < 0) | (predicted >= num_classes)).any()):
        raise ValueError(f"predicted must be class ids in [0, {num_classes})")
    labels = _on_one_device(predicted, labels, ("predicted", "labels"))
    _check_labels(labels, predicted.shape[0], num_classes)
    out = {"accuracy": _accuracy(predicted, labels), "matthews": _matthews(predicted.long(), labels, num_classes)}
    if num_classes == 2:
        out["f1"] = _binary_f1(predicted, labels, 1)
    return out


def predictions_and_targets(logits: Tensor, labels: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    """What :func:`task_metrics` reads of each row of the logits and labels, two (N,) vectors to score later with
    :func:`prediction_metrics` (e.g. after gathering rows worked out in shares, without (N, C) rows): the predicted
    class and the class id (``cross_entropy``), the predicted value and the target (``mse``), the predicted answer
    and its score (``binary_cross_entropy``: what VQA accuracy averages).

    Args:
        logits (Tensor): (N, C) outputs; (N, 1) for ``mse``.
        labels (Tensor): the targets in the loss's format, as :func:`task_metrics`'s.
        loss (str): ``cross_entropy``, ``binary_cross_entropy`` or ``mse``.

    Returns:
        tuple[Tensor, Tensor]: the (N,) predictions and the (N,) targets, on the logits' device.

    Raises:
        ValueError: as :func:`task_metrics`, for the same inputs (NaN or infinite logits included).
    """
    if loss not in LOSSES:  # (a misspelt loss returned accuracy and F1)
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    labels = _on_one_device(logits, labels, ("logits", "labels"))
    if loss == "binary_cross_entropy":
        scores = _checked_scores(logits, labels)
        predicted = logits.argmax(dim=1)
        return predicted, scores.gather(1, predicted[:, None])[:, 0]
    if loss == "mse":
        _check_regression(logits, labels)
        return logits[:, 0], labels
    _check_labels(labels, _check_logits(logits), logits.shape[1])
    return logits.argmax(dim=1), labels


def prediction_metrics(predicted: Tensor, targets: Tensor, loss: str, num_classes: Optional[int] = None) -> dict:
    """The fine-tuning metrics of ``loss`` from :func:`predictions_and_targets`'s two vectors (of every row,
    gathered): the implementation of :func:`task_metrics`, which calls it on the vectors of its logits.

    Args:
        predicted (Tensor): (N,) predicted classes (``cross_entropy``, ``binary_cross_entropy``) or values (``mse``).
        targets (Tensor): (N,) class ids, scores of the predicted answers, or regression targets.
        loss (str): ``cross_entropy``, ``binary_cross_entropy`` or ``mse``.
        num_classes (Optional[int]): C, the logits' columns; read for ``cross_entropy`` only, which needs it.

    Returns:
        dict[str, float]: as :func:`task_metrics`'s.

    Raises:
        ValueError: if ``loss`` is unknown, ``num_classes`` is missing for ``cross_entropy``, or the vectors are
            malformed (as :func:`classification_metrics`, :func:`pearson`; for ``binary_cross_entropy`` (N,) finite
            real scores, N >= 1, of the predictions' shape).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss == "cross_entropy":
        if num_classes is None:
            raise ValueError("num_classes must be the number of classes for loss 'cross_entropy', got None")
        return classification_metrics(predicted, targets, num_classes)
    if loss == "mse":
        return {"pearson": pearson(predicted, targets), "spearman": spearman(predicted, targets)}
    if not _is_real(targets) or targets.dim() != 1 or targets.shape[0] == 0:
        raise ValueError(f"targets must be (N,) real scores with N >= 1, got {describe_tensor(targets)}")
    if not isinstance(predicted, Tensor) or predicted.shape != targets.shape:
        raise ValueError(
            f"predicted must have the targets' shape {tuple(targets.shape)}, got {describe_tensor(predicted)}"
        )
    if not bool(torch.isfinite(targets).all()):
        raise ValueError("targets hold NaN or infinite values")
    return {"vqa_accuracy": targets.double().mean().item()}
