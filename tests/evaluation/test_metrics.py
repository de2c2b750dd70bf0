"""Fine-tuning metrics: values against a direct count, and malformed inputs refused (they broadcast,
gave nan, or a wrong number)."""

import math

import pytest
import torch

from torchflava.evaluation.metrics import (
    accuracy,
    accuracy_summary,
    binary_f1,
    classification_metrics,
    correlation,
    matthews,
    pearson,
    percent,
    prediction_metrics,
    predictions_and_targets,
    reported_ks,
    soft_accuracy,
    spearman,
    task_metrics,
    top_k_accuracy,
)

LOGITS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])  # predicts 0, 1, 1, 0
LABELS = torch.tensor([0, 1, 1, 1])


def test_values_equal_a_direct_count():
    assert accuracy(LOGITS, LABELS) == pytest.approx(0.75)
    assert binary_f1(LOGITS, LABELS) == pytest.approx(2 * 2 / (2 + 3))  # tp 2, predicted 2, true 3
    assert task_metrics(LOGITS, LABELS, "cross_entropy") == pytest.approx(
        {"accuracy": 0.75, "f1": 0.8, "matthews": 1 / math.sqrt(3)}  # tp 2, tn 1, fp 0, fn 1: 2 / sqrt(2*3*1*2)
    )
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
        (lambda: matthews(LOGITS, torch.tensor([0, 1, 2, 1])), r"labels must be class ids in \[0, 2\)"),
        (lambda: matthews(LOGITS, LABELS[:, None]), r"labels must be \(4,\) integer class ids"),
        (lambda: spearman(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0])), "predictions must be"),
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
        (
            lambda: spearman(torch.arange(3.0), torch.arange(4.0)),
            "predictions and targets must have one shape, got (3,) and (4,)",
        ),
        (
            lambda: spearman(torch.ones(3, dtype=torch.bool), torch.arange(3.0)),
            "predictions must be a (N,) real tensor with N >= 2, got torch.bool of shape (3,)",
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
    assert task_metrics(predictions, torch.tensor([1, 2, 4, 3]), "mse") == {
        "pearson": pytest.approx(expected),
        "spearman": pytest.approx(1.0),  # one order: ranks 1, 2, 4, 3 on both sides
    }
    assert expected == pytest.approx(0.9899495, abs=1e-6)  # numpy.corrcoef


def test_pearson_of_a_constant_vector_is_nan_as_in_scipy_not_zero():
    """A collapsed regressor (one prediction for every row) or constant targets leave the correlation
    undefined: scipy.stats.pearsonr gives nan; 0.0 was reported, which reads as a measured value."""
    targets = torch.tensor([1.0, 2.0, 4.0, 3.0])
    assert math.isnan(pearson(torch.full((4,), 2.5), targets))  # scipy.stats.pearsonr: nan
    assert math.isnan(pearson(targets, torch.full((4,), 3, dtype=torch.long)))  # scipy.stats.pearsonr: nan
    collapsed = task_metrics(torch.full((4, 1), -0.7), targets, "mse")
    assert math.isnan(collapsed["pearson"]) and math.isnan(collapsed["spearman"])
    # ties are not constant: scipy.stats.pearsonr([1, 1, 2, 2], [1, 2, 4, 3]) = 0.8944271909999159
    assert pearson(torch.tensor([1.0, 1.0, 2.0, 2.0]), targets) == pytest.approx(0.8944271909999159, abs=1e-12)


def test_matthews_correlation_for_any_number_of_classes():
    """GLUE's CoLA metric, in the multi-class form of sklearn.metrics.matthews_corrcoef: with t_k / p_k
    the rows labelled / predicted k and c the correct ones, (c N - sum t_k p_k) / sqrt((N^2 - sum p_k^2)
    (N^2 - sum t_k^2))."""
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = 2 * torch.eye(3)[torch.tensor([0, 1, 1, 1, 2, 0])]  # c = 4, p = (2, 3, 1), t = (2, 2, 2)
    expected = (4 * 6 - (2 * 2 + 3 * 2 + 1 * 2)) / math.sqrt((36 - (4 + 9 + 1)) * (36 - 12))  # 12 / sqrt(528)
    assert matthews(logits, labels) == pytest.approx(0.5222329678670935, abs=1e-12)
    assert expected == pytest.approx(0.5222329678670935, abs=1e-12)
    assert task_metrics(logits, labels, "cross_entropy") == pytest.approx({"accuracy": 4 / 6, "matthews": expected})
    assert matthews(logits, torch.tensor([0, 1, 1, 1, 2, 0])) == pytest.approx(1.0)  # every row right
    assert matthews(LOGITS, 1 - LOGITS.argmax(dim=1)) == pytest.approx(-1.0)  # every row wrong, 2 classes
    assert matthews(logits, labels.to(torch.uint8)) == pytest.approx(expected)  # any integer dtype


def test_matthews_is_zero_where_its_denominator_is_as_in_sklearn():
    """One class predicted for every row, or one class in the labels: the denominator is 0 and
    sklearn.metrics.matthews_corrcoef returns 0.0 (not nan), even when every row is right."""
    one_class = torch.tensor([[0.0, 1.0, 0.0]]).repeat(4, 1)  # predicts 1 everywhere
    assert matthews(one_class, torch.tensor([0, 1, 2, 1])) == 0.0
    assert matthews(one_class, torch.tensor([1, 1, 1, 1])) == 0.0  # all right
    assert matthews(LOGITS, torch.tensor([1, 1, 1, 1])) == 0.0  # the labels one class, the predictions not


def test_spearman_ranks_ties_by_their_average_as_scipy():
    # ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): 4.5 / sqrt(4.5 * 5) = sqrt(0.9); scipy.stats.spearmanr agrees
    assert spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0, 4.0])) == pytest.approx(
        math.sqrt(0.9), abs=1e-12
    )
    # ranks (1, 4, 2, 3) and (1, 2, 3, 4): 1 - 6 * 6 / (4 * 15) = 0.4, where Pearson is -0.24 (the outlier)
    predictions = torch.tensor([0.1, 10.0, 0.2, 0.3], dtype=torch.float64)  # the values scipy was given
    targets = torch.tensor([1, 2, 3, 4])
    assert spearman(predictions, targets) == pytest.approx(0.4, abs=1e-12)
    assert pearson(predictions, targets) == pytest.approx(-0.24235715009596281, abs=1e-12)  # scipy.stats.pearsonr
    report = task_metrics(predictions[:, None], targets.float(), "mse")
    assert report == pytest.approx({"pearson": -0.24235715009596281, "spearman": 0.4}, abs=1e-12)
    assert math.isnan(spearman(torch.full((4,), 2.5), targets))  # constant: undefined, as pearson
    assert math.isnan(spearman(targets, torch.full((4,), 3, dtype=torch.long)))


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


SCORES = torch.tensor([[1.0, 0.0], [0.0, 0.3], [0.6, 0.9], [0.0, 1.0]])
PREDICTIONS, TARGETS = torch.tensor([0.1, 10.0, 0.2, 0.3]), torch.tensor([1.0, 2.0, 3.0, 4.0])
# every public metric, with its two tensor arguments' names and its value on LOGITS / LABELS and the
# regression pair (the values asserted in the tests above)
METRICS = [
    ("accuracy", accuracy, ("logits", "labels"), (LOGITS, LABELS), 0.75),
    ("binary_f1", binary_f1, ("logits", "labels"), (LOGITS, LABELS), 0.8),
    ("matthews", matthews, ("logits", "labels"), (LOGITS, LABELS), 1 / math.sqrt(3)),
    ("pearson", pearson, ("predictions", "targets"), (PREDICTIONS, TARGETS), -0.24235715009596281),
    ("spearman", spearman, ("predictions", "targets"), (PREDICTIONS, TARGETS), 0.4),
    ("soft_accuracy", soft_accuracy, ("logits", "scores"), (LOGITS, SCORES), (1.0 + 0.3 + 0.9 + 0.0) / 4),
    (
        "task_metrics",
        lambda logits, labels: task_metrics(logits, labels, "cross_entropy"),
        ("logits", "labels"),
        (LOGITS, LABELS),
        {"accuracy": 0.75, "f1": 0.8, "matthews": 1 / math.sqrt(3)},
    ),
    (
        "task_metrics_mse",
        lambda logits, labels: task_metrics(logits, labels, "mse"),
        ("logits", "labels"),
        (PREDICTIONS[:, None], TARGETS),
        {"pearson": -0.24235715009596281, "spearman": 0.4},
    ),
    (
        "task_metrics_bce",
        lambda logits, labels: task_metrics(logits, labels, "binary_cross_entropy"),
        ("logits", "labels"),
        (LOGITS, SCORES),
        {"vqa_accuracy": 0.55},
    ),
]


@pytest.mark.parametrize("metric, names, inputs, expected", [m[1:] for m in METRICS], ids=[m[0] for m in METRICS])
@pytest.mark.parametrize("meta", [0, 1], ids=["first_on_meta", "second_on_meta"])
def test_a_meta_tensor_is_refused_in_one_line_naming_it(metric, names, inputs, expected, meta):
    """A meta tensor has a shape but no values: every metric failed deep inside with torch's "Tensor.item()
    cannot be called on meta tensors"; now the argument is named, with the devices expected and given."""
    assert metric(*inputs) == pytest.approx(expected, abs=1e-6)  # both on the CPU
    moved = [value.to("meta") if i == meta else value for i, value in enumerate(inputs)]
    with pytest.raises(ValueError) as info:
        metric(*moved)
    assert str(info.value) == (
        f"{names[meta]} must be a tensor with values (on cpu or an accelerator), got one on the meta device"
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("metric, names, inputs, expected", [m[1:] for m in METRICS], ids=[m[0] for m in METRICS])
def test_cpu_labels_with_cuda_logits_are_moved_to_the_logits_device(metric, names, inputs, expected):
    """CUDA logits and CPU labels (and the reverse) raised torch's device-mismatch error; the labels are
    copied to the logits' device, which is exact."""
    first, second = inputs
    assert metric(first.cuda(), second) == pytest.approx(expected, abs=1e-6)
    assert metric(first, second.cuda()) == pytest.approx(expected, abs=1e-6)


def test_classification_metrics_of_the_predicted_classes_equal_task_metrics_of_the_logits():
    """What a sharded evaluation gathers is each item's predicted class: its metrics must be the logits' (ties
    included: the first top class counts), without building (N, C) scores from it (one-hot rows took ~12 bytes a
    cell: 1.1 GiB at 20,000 items x 5,000 classes)."""
    generator = torch.Generator().manual_seed(0)
    for classes in (2, 3, 7):
        for _ in range(20):
            rows = int(torch.randint(1, 40, (), generator=generator))
            logits = torch.randint(0, 3, (rows, classes), generator=generator).float()  # many ties
            labels = torch.randint(0, classes, (rows,), generator=generator)
            expected = task_metrics(logits, labels, "cross_entropy")
            assert classification_metrics(logits.argmax(dim=1), labels, classes) == expected
    for bad, message in (
        ((torch.tensor([0.0]), torch.tensor([0]), 2), "predicted must be"),
        ((torch.tensor([2]), torch.tensor([0]), 2), r"predicted must be class ids in \[0, 2\)"),
        ((torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 2), "N >= 1"),
        ((torch.tensor([0]), torch.tensor([5]), 2), r"labels must be class ids in \[0, 2\)"),
    ):
        with pytest.raises(ValueError, match=message):
            classification_metrics(*bad)
    with pytest.raises(TypeError, match="num_classes"):
        classification_metrics(torch.tensor([0]), torch.tensor([0]), 2.0)


def _random_task(loss: str, rows: int, classes: int, generator: torch.Generator) -> tuple:
    """Logits and labels of ``loss``'s format, with ties among the logits (the first top column counts)."""
    if loss == "mse":
        return torch.randn(rows, 1, generator=generator), torch.randn(rows, generator=generator) * 3
    logits = torch.randint(0, 3, (rows, classes), generator=generator).float() / 7
    if loss == "cross_entropy":
        return logits, torch.randint(0, classes, (rows,), generator=generator)
    scores = torch.randint(0, 4, (rows, classes), generator=generator).float() / 3  # VQA's 0, 1/3, 2/3, 1
    return logits, scores


@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy", "mse"])
def test_metrics_of_the_predictions_and_targets_equal_task_metrics_of_the_logits(loss):
    """A sharded validation gathers per item the two numbers predictions_and_targets reads of its row (as Python
    numbers, in float64 or int64): prediction_metrics of those equals task_metrics of the logits exactly."""
    generator = torch.Generator().manual_seed(1)
    for classes in (2, 3, 7):
        for _ in range(15):
            rows = int(torch.randint(2, 50, (), generator=generator))
            logits, labels = _random_task(loss, rows, classes, generator)
            expected = task_metrics(logits, labels, loss)
            predicted, targets = predictions_and_targets(logits, labels, loss)
            assert predicted.shape == targets.shape == (rows,)
            assert prediction_metrics(predicted, targets, loss, classes if loss != "mse" else 1) == expected
            gathered = (  # as the recipe puts them back together from every rank's lists
                torch.tensor(predicted.tolist(), dtype=torch.float64 if loss == "mse" else torch.long),
                torch.tensor(targets.tolist(), dtype=torch.long if loss == "cross_entropy" else torch.float64),
            )
            assert prediction_metrics(*gathered, loss, classes) == expected


def test_predictions_and_targets_refuse_what_task_metrics_refuses():
    nan = torch.tensor([[float("nan"), 0.0], [0.0, 1.0]])
    for loss, labels in (("cross_entropy", LABELS[:2]), ("binary_cross_entropy", torch.zeros(2, 2))):
        with pytest.raises(ValueError, match="logits hold NaN or infinite values"):
            predictions_and_targets(nan, labels, loss)
    with pytest.raises(ValueError, match="logits hold NaN or infinite values"):
        predictions_and_targets(nan[:, :1], torch.zeros(2), "mse")
    for args, message in (
        ((LOGITS, LABELS, "crossentropy"), "loss must be one of"),
        ((LOGITS, torch.tensor([0, 1, 2, 1]), "cross_entropy"), r"labels must be class ids in \[0, 2\)"),
        ((LOGITS, torch.zeros(4, 3), "binary_cross_entropy"), r"scores must have the logits' shape \(4, 2\)"),
        ((LOGITS, torch.full((4, 2), float("inf")), "binary_cross_entropy"), "scores hold NaN or infinite"),
        ((LOGITS, torch.zeros(4), "mse"), r"logits must be \(N, 1\) for loss 'mse'"),
        ((LOGITS[:, :1], torch.zeros(4, 1), "mse"), r"labels must be \(4,\) real regression targets"),
    ):
        with pytest.raises(ValueError, match=message):
            predictions_and_targets(*args)
    for args, message in (
        ((torch.tensor([0, 1]), torch.tensor([0, 1]), "cross_entropy"), "num_classes must be the number of classes"),
        ((torch.tensor([0, 1]), torch.tensor([0.5, 1.0]), "binary"), "loss must be one of"),
        (
            (torch.tensor([0]), torch.tensor([0.5, 1.0]), "binary_cross_entropy"),
            r"predicted must have the targets' shape",
        ),
        ((torch.tensor([0, 1]), torch.tensor([0.5, math.nan]), "binary_cross_entropy"), "targets hold NaN"),
        ((torch.tensor([], dtype=torch.long), torch.tensor([]), "binary_cross_entropy"), "N >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            prediction_metrics(*args)


def test_shares_are_exact_fractions_not_float32_means():
    """81 right of 100 was reported as 0.8100000023841858 (a float32 mean), in report.json and the command's
    JSON: a count divided in float64 gives 0.81, as sklearn's accuracy_score does."""
    labels = torch.zeros(100, dtype=torch.long)
    predicted = torch.cat([torch.zeros(81, dtype=torch.long), torch.ones(19, dtype=torch.long)])
    logits = torch.nn.functional.one_hot(predicted, 2).float()
    assert accuracy(logits, labels) == 0.81
    assert classification_metrics(predicted, labels, 2)["accuracy"] == 0.81
    assert task_metrics(logits, labels, "cross_entropy")["accuracy"] == 0.81
    assert prediction_metrics(predicted, labels, "cross_entropy", 2)["accuracy"] == 0.81


def test_percent_shows_a_small_share_and_one_short_of_100_percent_as_they_are():
    """One decimal printed a chance of 1/3000 classes as 0.0% and an accuracy of 0.9996 as 100.0%: below 1% a
    share has its first two significant digits, short of 100% as many decimals as keep it below 100."""
    assert percent(1 / 3000) == "0.033%"
    assert percent(1 / 21843) == "0.0046%"  # ImageNet-21k's chance
    assert percent(1 / 2001) == "0.050%"
    assert percent(1 / 1000) == "0.10%"
    assert percent(0.00995) == "1.0%"  # (two digits would round it to 1.00)
    assert percent(1 / 30) == "3.3%"
    assert percent(0.75) == "75.0%"
    assert percent(0.999) == "99.9%"
    assert percent(0.9996) == "99.96%"
    assert percent(0.99996) == "99.996%"
    assert percent(1 - 1e-9) == "99.9999999%"
    assert (percent(0), percent(0.0), percent(1), percent(1.0), percent(math.nan)) == (
        "0.0%",
        "0.0%",
        "100.0%",
        "100.0%",
        "nan%",
    )
    for bad, error, message in (
        (1.5, ValueError, "share must be a fraction in [0, 1], got 1.5"),
        (-0.01, ValueError, "share must be a fraction in [0, 1], got -0.01"),
        (True, TypeError, "share must be a real number in [0, 1], got bool"),
        ("0.5", TypeError, "share must be a real number in [0, 1], got str"),
    ):
        with pytest.raises(error) as info:
            percent(bad)
        assert str(info.value) == message


def test_percent_takes_an_accuracy_worked_out_in_torch_and_prints_negative_zero_as_zero():
    """A 0-dim tensor ((predicted == labels).float().mean()) was refused as 'got Tensor', and -0.0 printed -0.0%."""
    predicted, labels = torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3, 0])
    assert percent((predicted == labels).float().mean()) == "75.0%"
    assert percent(torch.tensor(1 / 3000, dtype=torch.float64)) == "0.033%"
    assert percent(-0.0) == "0.0%"
    for bad in (torch.tensor([0.5]), torch.tensor(1), torch.tensor(0.5, device="meta")):
        with pytest.raises(TypeError, match="^share must be a real number in \\[0, 1\\], got Tensor$"):
            percent(bad)


BAD_TASK_INPUTS = [
    (LOGITS, LABELS, "crossentropy"),
    (LOGITS, LABELS[:, None], "cross_entropy"),
    (LOGITS, torch.tensor([0, 1, 2, 1]), "cross_entropy"),
    (LOGITS.to("meta"), LABELS, "cross_entropy"),
    (LOGITS, LABELS.to("meta"), "cross_entropy"),
    (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), "cross_entropy"),
    (LOGITS, torch.zeros(4, 3), "binary_cross_entropy"),
    (LOGITS, torch.full((4, 2), float("nan")), "binary_cross_entropy"),
    (LOGITS, SCORES.to("meta"), "binary_cross_entropy"),  # (predictions_and_targets named the labels "scores")
    (LOGITS, SCORES.bool(), "binary_cross_entropy"),
    (LOGITS, torch.zeros(4), "mse"),
    (PREDICTIONS[:, None], TARGETS[:, None], "mse"),
    (PREDICTIONS[:, None], TARGETS.to("meta"), "mse"),
    ([[1.0], [2.0]], TARGETS[:2], "mse"),
]


@pytest.mark.parametrize("logits, labels, loss", BAD_TASK_INPUTS)
def test_task_metrics_and_predictions_and_targets_refuse_bad_input_alike_in_one_line(logits, labels, loss):
    """task_metrics is predictions_and_targets then prediction_metrics: one input refused by one message, one line
    naming the argument (a meta tensor of soft scores was "scores" to one and "labels" to the other)."""
    messages = []
    for call in (task_metrics, predictions_and_targets):
        with pytest.raises(ValueError) as info:
            call(logits, labels, loss)
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "\n" not in messages[0]
    assert messages[0].split()[0] in ("loss", "logits", "labels", "scores", "predictions")


def test_task_metrics_equal_prediction_metrics_exactly_on_each_kind_of_target():
    """Classification, soft-score and regression inputs: the two ways to the figures give the same floats."""
    cases = [
        (LOGITS, LABELS, "cross_entropy", {"accuracy": 0.75, "f1": 0.8, "matthews": 1 / math.sqrt(3)}),
        (LOGITS, SCORES, "binary_cross_entropy", {"vqa_accuracy": (1.0 + 0.3 + 0.9 + 0.0) / 4}),
        (PREDICTIONS[:, None], TARGETS, "mse", {"pearson": -0.24235715009596281, "spearman": 0.4}),
    ]
    for logits, labels, loss, expected in cases:
        metrics = task_metrics(logits, labels, loss)
        assert metrics == pytest.approx(expected, rel=1e-6)  # (SCORES are float32)
        assert prediction_metrics(*predictions_and_targets(logits, labels, loss), loss, logits.shape[1]) == metrics


def test_top_k_accuracy_counts_top_1_always_and_top_5_past_5_classes_only():
    """The one top-k rule of the classification commands: top-1 always, top-5 where there are more than 5 classes
    (with 5 every image is right in its top 5); zero_shot printed top-5, linear_probe and classify did not."""
    assert reported_ks(5) == (1,) and reported_ks(6) == (1, 5)
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3], [1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 0, 0, 1]])
    ranked = logits.sort(dim=1, descending=True, stable=True).indices
    labels = torch.tensor([0, 2, 2])  # row 0: top-1; row 1: 5th; row 2: 4th (after 6, then the tie in class order)
    assert top_k_accuracy(ranked, labels, 7) == {"accuracy": 1 / 3, "top5_accuracy": 1.0}
    assert top_k_accuracy(torch.tensor([[0], [4], [3]]), torch.tensor([0, 4, 1]), 5) == {"accuracy": 2 / 3}
    assert top_k_accuracy(ranked, labels, 7)["accuracy"] == accuracy(logits, labels)  # (the argmax, ties alike)
    with pytest.raises(ValueError, match=r"^ranked must be \(N, K\) integer class ids with N >= 1 and K >= 5, got"):
        top_k_accuracy(ranked[:, :4], labels, 7)
    with pytest.raises(ValueError, match=r"^labels must be class ids in \[0, 7\), got values in \[0, 9\]"):
        top_k_accuracy(ranked, torch.tensor([0, 2, 9]), 7)


def test_correlations_print_with_three_decimals_and_nan_where_undefined():
    """classify --tsv printed Matthews to 4 decimals and an undefined correlation as "undefined"; the recipe's report
    printed 3 decimals and "nan": one format now, the recipe's."""
    assert [correlation(v) for v in (0.12345, -0.5, 1, None, math.nan, -0.0)] == [
        "0.123", "-0.500", "1.000", "nan", "nan", "0.000"
    ]  # fmt: skip
    with pytest.raises(TypeError, match=r"^value must be a real number or None, got str"):
        correlation("0.5")


def test_accuracy_summary_is_the_part_the_zero_shot_and_classify_commands_print():
    """The two commands spelt the same accuracies line out each; accuracy_summary is now both's."""
    result = {"accuracy": 0.75, "chance": 1 / 3000, "mean_per_class_accuracy": 0.9996}
    assert accuracy_summary(result) == "; accuracy 75.0% (chance 0.033%), mean per class 99.96%"
    result["top5_accuracy"] = 1.0
    assert accuracy_summary(result).endswith("mean per class 99.96%, top-5 100.0%")
    assert accuracy_summary({"num_inputs": 3, "chance": 0.5}) == ""  # (unlabelled images: no accuracy)
