"""Fine-tuning metrics: values against a direct count, and malformed inputs refused (they broadcast,
gave nan, or a wrong number)."""

import math

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


@pytest.mark.parametrize(
    "call, message",
    [
        # 2-D logits of a regression task: the Pearson of column 0 was returned
        (
            lambda: task_metrics(torch.randn(5, 3), torch.randn(5), "mse"),
            "logits must be (N, 1) for loss 'mse' (one regression output), got (5, 3)",
        ),
        (  # an IndexError
            lambda: task_metrics(torch.randn(5), torch.randn(5), "mse"),
            "logits must be a (N, C) floating-point tensor with N >= 1, got torch.float32 of shape (5,)",
        ),
        (  # a TypeError of list indices
            lambda: task_metrics([[1.0], [2.0]], torch.randn(2), "mse"),
            "logits must be a (N, C) floating-point tensor with N >= 1, got list",
        ),
        (  # an AttributeError ('list' object has no attribute 'float')
            lambda: task_metrics(torch.randn(5, 1), [1.0, 2.0, 3.0, 4.0, 5.0], "mse"),
            "labels must be (5,) real regression targets for loss 'mse', got list",
        ),
        (
            lambda: task_metrics(torch.randn(5, 1), torch.randn(5, 1), "mse"),
            "labels must be (5,) real regression targets for loss 'mse', got torch.float32 of shape (5, 1)",
        ),
        (
            lambda: task_metrics(torch.randn(5, 1), torch.ones(5, dtype=torch.bool), "mse"),
            "labels must be (5,) real regression targets for loss 'mse', got torch.bool of shape (5,)",
        ),
        (  # nan
            lambda: soft_accuracy(LOGITS, torch.full((4, 2), float("nan"))),
            "scores hold NaN or infinite values",
        ),
        (
            lambda: soft_accuracy(LOGITS, torch.ones(4, 2, dtype=torch.bool)),
            "scores must be floating-point or integer, got torch.bool",
        ),
        (  # only the number of values was compared: 0.714
            lambda: pearson(torch.arange(6.0).view(2, 3), torch.arange(6.0).view(3, 2).T.contiguous()),
            "predictions must be a (N,) real tensor with N >= 2, got torch.float32 of shape (2, 3)",
        ),
        (
            lambda: pearson(torch.arange(3.0), torch.arange(4.0)),
            "predictions and targets must have one shape, got (3,) and (4,)",
        ),
        (
            lambda: pearson(torch.arange(3.0), torch.tensor([1.0, float("inf"), 2.0])),
            "targets must be a tensor of finite values, got NaN or infinite ones",
        ),
    ],
)
def test_inputs_that_do_not_fit_the_metric_are_refused_in_one_line(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message


def test_integer_scores_and_regression_targets_are_read_as_numbers():
    """Integer VQA scores failed in mean(); integer regression targets are the floats they hold."""
    assert soft_accuracy(LOGITS, torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1]])) == pytest.approx(0.5)
    predictions = torch.tensor([[0.5], [1.0], [2.5], [2.0]])
    expected = pearson(predictions[:, 0], torch.tensor([1.0, 2.0, 4.0, 3.0]))
    assert task_metrics(predictions, torch.tensor([1, 2, 4, 3]), "mse") == {"pearson": pytest.approx(expected)}
    assert expected == pytest.approx(0.9899495, abs=1e-6)  # numpy.corrcoef


def test_pearson_of_a_constant_vector_is_nan_as_in_scipy_not_zero():
    """A collapsed regressor (one prediction for every row) or constant targets leave the correlation
    undefined: scipy.stats.pearsonr gives nan; 0.0 was reported, which reads as a measured value."""
    targets = torch.tensor([1.0, 2.0, 4.0, 3.0])
    assert math.isnan(pearson(torch.full((4,), 2.5), targets))  # scipy.stats.pearsonr: nan
    assert math.isnan(pearson(targets, torch.full((4,), 3, dtype=torch.long)))  # scipy.stats.pearsonr: nan
    assert math.isnan(task_metrics(torch.full((4, 1), -0.7), targets, "mse")["pearson"])
    # ties are not constant: scipy.stats.pearsonr([1, 1, 2, 2], [1, 2, 4, 3]) = 0.8944271909999159
    assert pearson(torch.tensor([1.0, 1.0, 2.0, 2.0]), targets) == pytest.approx(0.8944271909999159, abs=1e-12)


@pytest.mark.parametrize(
    "positive, error, message",
    [
        (2, ValueError, "positive must be a class id in [0, 2), got 2"),  # a class that cannot occur: F1 0.0
        (-1, ValueError, "positive must be >= 0, got -1"),
        (1.0, TypeError, "positive must be an int, got float"),
        (True, TypeError, "positive must be an int, got bool"),
    ],
)
def test_binary_f1_refuses_a_positive_class_the_logits_do_not_have(positive, error, message):
    logits, labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 1, 0])
    assert binary_f1(logits, labels, positive=1) == pytest.approx(2 / 3)
    assert binary_f1(logits, labels, positive=0) == pytest.approx(2 / 3)
    with pytest.raises(error) as info:
        binary_f1(logits, labels, positive=positive)
    assert str(info.value) == message
