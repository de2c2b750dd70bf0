"""Task metrics for fine-tuning: accuracy, binary F1, Pearson correlation, VQA soft accuracy."""

from torch import Tensor


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of rows whose argmax is the label: logits (N, C), labels (N,) class ids."""
    return (logits.argmax(dim=1) == labels).float().mean().item()


def binary_f1(logits: Tensor, labels: Tensor, positive: int = 1) -> float:
    """F1 of class ``positive`` for logits (N, 2) and labels (N,) (0 when it is never predicted nor true)."""
    predicted = logits.argmax(dim=1) == positive
    truth = labels == positive
    tp = (predicted & truth).sum().item()
    denominator = predicted.sum().item() + truth.sum().item()
    return 2 * tp / denominator if denominator else 0.0


def pearson(predictions: Tensor, targets: Tensor) -> float:
    """Pearson correlation of two (N,) vectors (0 when either is constant)."""
    x, y = predictions.double().flatten(), targets.double().flatten()
    x, y = x - x.mean(), y - y.mean()
    denominator = (x.norm() * y.norm()).item()
    return (x @ y).item() / denominator if denominator > 0 else 0.0


def soft_accuracy(logits: Tensor, scores: Tensor) -> float:
    """VQA accuracy: mean score (N, C) of the predicted answer."""
    return scores.gather(1, logits.argmax(dim=1, keepdim=True)).mean().item()


def task_metrics(logits: Tensor, labels: Tensor, loss: str) -> dict[str, float]:
    """The metrics that fit a loss: accuracy (+ F1 for 2 classes), soft accuracy, or Pearson.

    Args:
        logits (Tensor): (N, C) outputs.
        labels (Tensor): the targets in the loss's format.
        loss (str): ``cross_entropy``, ``binary_cross_entropy`` or ``mse``.

    Returns:
        dict[str, float]: metric name -> value.
    """
    if loss == "mse":
        return {"pearson": pearson(logits[:, 0], labels.float())}
    if loss == "binary_cross_entropy":
        return {"vqa_accuracy": soft_accuracy(logits, labels)}
    out = {"accuracy": accuracy(logits, labels)}
    if logits.shape[1] == 2:
        out["f1"] = binary_f1(logits, labels)
    return out
