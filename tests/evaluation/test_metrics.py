"""Fine-tuning metrics: values against a direct count, and malformed inputs refused (they broadcast,
gave nan, or a wrong number)."""

import pytest
import torch

from torchflava.evaluation.metrics import accuracy, binary_f1, pearson, soft_accuracy, task_metrics

LOGITS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])  # predicts 0, 1, 1, 0
LABELS = torch.tensor([0, 1, 1, 1])


def test_values_equal_a_direct_count():
    assert accuracy(LOGITS, LABELS) == pytest.approx(0.75)
    assert binary_f1(LOGITS, LABELS) == pytest.approx(2 * 2 / (2 + 3))  # tp 2, predicted 2, true 3
    assert task_metrics(LOGITS, LABELS, "cross_entropy") == pytest.approx({"accuracy": 0.75, "f1": 0.8})
    scores = torch.tensor([[1.0, 0.0], [0.0, 0.3], [0.6, 0.9], [0.0, 1.0]])
    assert soft_accuracy(LOGITS, scores) == pytest.approx((1.0 + 0.3 + 0.9 + 0.0) / 4)
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.5])) == pytest.approx(
        0.9979487, abs=1e-6
    )  # numpy.corrcoef


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: accuracy(LOGITS, LABELS[:, None]), r"labels must be \(4,\) integer class ids"),  # broadcast: 0.5
        (lambda: binary_f1(LOGITS, LABELS[:, None]), r"labels must be \(4,\) integer class ids"),  # F1 2.4
        (lambda: accuracy(LOGITS, LABELS[:3]), r"labels must be \(4,\)"),
        (lambda: accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)), "N >= 1"),  # nan
        (lambda: accuracy(LOGITS, torch.tensor([0, 1, 2, 1])), r"labels must be class ids in \[0, 2\)"),
        (lambda: accuracy(LOGITS.clone().fill_(float("nan")), LABELS), "logits hold NaN"),  # 0.25
        (lambda: soft_accuracy(LOGITS, torch.zeros(4, 3)), r"scores must have the logits' shape \(4, 2\)"),
        (lambda: pearson(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0])), "predictions must be"),  # 0.0
        (lambda: task_metrics(LOGITS, LABELS, "crossentropy"), "loss must be one of"),  # accuracy and F1 silently
    ],
)
def test_malformed_inputs_are_refused_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
