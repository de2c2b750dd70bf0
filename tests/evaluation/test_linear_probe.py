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


@pytest.mark.parametrize(
    "features, message",
    [
        # NaN rows were given a class
        (torch.full((2, 4), float("nan")), "features hold NaN or infinite values"),
        (torch.tensor([[0.0, float("inf"), 0.0, 0.0]]), "features hold NaN or infinite values"),
        # a RuntimeError of broadcasting, deep inside
        (
            torch.randn(2, 5),
            "features must be a (N, 4) real (floating-point or integer) tensor (the probe's width), got torch.float32 of shape (2, 5)",
        ),
        (  # an IndexError of argmax(dim=1)
            torch.randn(4),
            "features must be a (N, 4) real (floating-point or integer) tensor (the probe's width), got torch.float32 of shape (4,)",
        ),
        (
            torch.ones(2, 4, dtype=torch.bool),
            "features must be a (N, 4) real (floating-point or integer) tensor (the probe's width), got torch.bool "
            "of shape (2, 4)",
        ),
        (
            torch.ones(2, 4, dtype=torch.complex64),
            "features must be a (N, 4) real (floating-point or integer) tensor (the probe's width), got "
            "torch.complex64 of shape (2, 4)",
        ),
        (
            [[0.0] * 4],
            "features must be a (N, 4) real (floating-point or integer) tensor (the probe's width), got list",
        ),
    ],
)
def test_predict_refuses_features_that_are_not_finite_rows_of_the_probe_width(features, message):
    result = linear_probe(_blobs(30, 0), _blobs(30, 1), l2_values=(1.0,), max_iter=20)
    with pytest.raises(ValueError) as info:
        result.predict(features)
    assert str(info.value) == message
    x, y = _blobs(30, 2)
    assert result.predict(x.half()).tolist() == result.predict(x.half().float()).tolist()


def test_fit_logistic_regression_takes_labels_of_any_integer_dtype():
    """int32 labels failed inside F.cross_entropy (expected Long)."""
    x, y = _blobs(60, 0)
    weight, bias = fit_logistic_regression(x, y, 3, l2=0.1)
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
        other_weight, other_bias = fit_logistic_regression(x, y.to(dtype), 3, l2=0.1)
        assert torch.equal(other_weight, weight) and torch.equal(other_bias, bias)
    with pytest.raises(ValueError) as info:  # an IndexError (tuple index out of range)
        fit_logistic_regression(torch.tensor(1.0), torch.tensor([0]), 2, l2=0.1)
    assert str(info.value) == "features: features must be (N, D) with labels (N,), got () and (1,)"


@pytest.mark.parametrize(
    "train, error, message",
    [
        # AttributeError: 'numpy.ndarray' object has no attribute 'dim'
        (
            lambda x, y: (x.numpy(), y.numpy()),
            TypeError,
            "train must be a (features, labels) pair of tensors, got tuple of ndarray, ndarray",
        ),
        # ValueError: too many values to unpack (expected 2)
        (
            lambda x, y: (x, y, 1),
            TypeError,
            "train must be a (features, labels) pair of tensors, got tuple of Tensor, Tensor, int",
        ),
        (lambda x, y: x, TypeError, "train must be a (features, labels) pair of tensors, got Tensor"),
        # ValueError: cannot convert float NaN to integer (num_classes read off the labels)
        (
            lambda x, y: (x, torch.cat([y[:-1].float(), torch.tensor([float("nan")])])),
            ValueError,
            "train: labels must be integer class ids, got torch.float32",
        ),
    ],
)
def test_probe_refuses_a_split_that_is_not_a_pair_of_tensors_naming_it(train, error, message):
    x, y = _blobs(30, 0)
    with pytest.raises(error) as info:
        linear_probe(train(x, y), (x, y))
    assert str(info.value) == message
    with pytest.raises(error) as info:
        linear_probe((x, y), (x, y), train(x, y))
    assert str(info.value) == message.replace("train", "test", 1)


def test_features_still_in_an_encoder_graph_are_fitted_as_values():
    """Features computed with grad enabled failed in L-BFGS's second backward ("Trying to backward
    through the graph a second time"); a leaf that required grad was given a .grad by the fit."""
    x, y = _blobs(60, 0)
    weight, bias = fit_logistic_regression(x, y, 3, l2=0.1, max_iter=50)
    projection = torch.eye(4, requires_grad=True)
    in_graph = x @ projection  # x's values, in a graph back to `projection`
    assert torch.equal(fit_logistic_regression(in_graph, y, 3, l2=0.1, max_iter=50)[0], weight)
    leaf = x.clone().requires_grad_()
    got = fit_logistic_regression(leaf, y, 3, l2=0.1, max_iter=50)
    assert torch.equal(got[0], weight) and torch.equal(got[1], bias) and leaf.grad is None
    expected = linear_probe(_blobs(60, 0), _blobs(30, 1), _blobs(30, 2), l2_values=(0.1, 1.0), max_iter=50)
    split = _blobs(60, 0)
    result = linear_probe(
        (split[0] @ projection, split[1]), _blobs(30, 1), _blobs(30, 2), l2_values=(0.1, 1.0), max_iter=50
    )
    assert result.val_accuracy == expected.val_accuracy and result.test_accuracy == expected.test_accuracy
    assert not result.mean.requires_grad and not result.std.requires_grad and projection.grad is None


@pytest.mark.parametrize(
    "l2_values, message",
    [
        (None, "l2_values must be a sequence of numbers, got NoneType"),  # len()'s "no len()" TypeError
        (1.0, "l2_values must be a sequence of numbers, got float"),
        ((v for v in (1.0,)), "l2_values must be a sequence of numbers, got generator"),
        ("1.0", "l2_values must be a sequence of numbers, got str"),
    ],
)
def test_l2_values_that_are_not_a_sequence_are_refused_naming_them(l2_values, message):
    split = _blobs(30, 0)
    with pytest.raises(TypeError) as info:
        linear_probe(split, split, l2_values=l2_values)
    assert str(info.value) == message


def test_zero_width_and_complex_features_are_refused_naming_the_split():
    """(N, 0) features gave a bias-only probe and its accuracy; complex ones lost their imaginary
    part in the cast to float, with only a warning."""
    x, y = _blobs(30, 0)
    with pytest.raises(ValueError) as info:
        linear_probe((x[:, :0], y), (x[:, :0], y), l2_values=(1.0,))
    assert str(info.value) == (
        "train: features must be (N, D), N >= 1 and D >= 1, with labels (N,), got (30, 0) and (30,)"
    )
    with pytest.raises(ValueError) as info:
        linear_probe((x, y), (x.to(torch.complex64), y), l2_values=(1.0,))
    assert str(info.value) == "val: features must be real (floating-point or integer), got torch.complex64"
    with pytest.raises(ValueError) as info:
        fit_logistic_regression(x.to(torch.complex64), y, 3, l2=0.1)
    assert str(info.value) == "features: features must be real (floating-point or integer), got torch.complex64"


def test_predict_takes_the_integer_features_linear_probe_takes():
    """A probe fitted on integer features (counts, quantised codes) refused them at predict."""
    x, y = _blobs(40, 0)
    counts = (x * 3).round().to(torch.int32)
    result = linear_probe((counts, y), (counts, y), l2_values=(1.0,), max_iter=30)
    for dtype in (torch.int32, torch.int64, torch.uint8):
        features = counts.clamp(min=0).to(dtype)
        assert result.predict(features).tolist() == result.predict(features.float()).tolist()


@pytest.mark.parametrize("features, labels", [([[0.0, 1.0]], torch.tensor([0])), (torch.eye(2), [0, 1])])
def test_fit_logistic_regression_refuses_what_is_not_a_tensor_with_a_type_error(features, labels):
    with pytest.raises(TypeError) as info:
        fit_logistic_regression(features, labels, 2, l2=1.0)
    got = f"{type(features).__name__} and {type(labels).__name__}"
    assert str(info.value) == f"features and labels must be tensors with at least one row, got {got}"


def _two_class(n, seed, dead_value=None):
    """Two classes told apart by feature 0; feature 1 is noise, feature 2 noise or ``dead_value``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    features = torch.randn(n, 3, generator=g)
    features[:, 0] += 3.0 * labels
    if dead_value is not None:
        features[:, 2] = dead_value
    return features, labels


def _reference_fit(x, y, num_classes, l2):
    """The penalised logistic regression solved in float64 to a far tighter tolerance."""
    x = x.double()
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], max_iter=1000, tolerance_grad=1e-12, tolerance_change=1e-16, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


@pytest.mark.parametrize("l2", [1e-3, 0.1, 1.0])
def test_fit_on_overlapping_classes_equals_a_float64_reference(l2):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(80, 5, generator=g), torch.randint(0, 3, (80,), generator=g)  # not separable
    w, b = fit_logistic_regression(x, y, 3, l2=l2)
    w_ref, b_ref = _reference_fit(x, y, 3, l2)
    assert (w.double() - w_ref).abs().max() < 1e-3 and (b.double() - b_ref).abs().max() < 1e-3


def test_separable_classes_without_penalty_give_finite_weights_that_separate_them():
    x, y = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]]), torch.tensor([0, 0, 1, 1])
    w, b = fit_logistic_regression(x, y, 2, l2=0.0)
    assert bool(torch.isfinite(w).all()) and bool(torch.isfinite(b).all())
    assert ((x @ w.T + b).argmax(dim=1) == y).all()
    assert (w[1] - w[0]).item() > 5  # the margin keeps growing (no minimiser): far from the l2=1 weights


def test_standardisation_is_the_population_statistics_of_train_alone():
    train, val, test = _two_class(40, 0), _two_class(20, 1), _two_class(20, 2)
    result = linear_probe(train, val, test, l2_values=(1.0,))
    # the population std, as StandardScaler (the sample std scaled every feature by sqrt(N / (N - 1)))
    torch.testing.assert_close(result.mean, train[0].mean(dim=0), atol=1e-6, rtol=0)
    torch.testing.assert_close(result.std, train[0].std(dim=0, correction=0), atol=1e-6, rtol=1e-6)
    shifted = linear_probe(train, (val[0] * 5 + 7, val[1]), (test[0] - 100, test[1]), l2_values=(1.0,))
    assert torch.equal(shifted.mean, result.mean) and torch.equal(shifted.std, result.std)  # nothing from val/test


def test_a_feature_constant_on_train_is_centred_not_blown_up_by_its_zero_std():
    # a dead unit (all zero on train) that holds noise in validation and test: its ~0 std was clamped
    # at 1e-6, so those rows carried values ~1e6, the refit on train + val collapsed and the test
    # accuracy fell from ~0.93 to chance (0.51)
    train, val, test = _two_class(200, 0, dead_value=0.0), _two_class(200, 1), _two_class(200, 2)
    result = linear_probe(train, val, test, l2_values=(0.01, 1.0))
    assert result.mean[2].item() == 0.0 and result.std[2].item() == 1.0
    assert result.test_accuracy > 0.85
    alive = linear_probe(
        *((x[:, :2], y) for x, y in (train, val, test)), l2_values=(0.01, 1.0)
    )  # without the dead unit at all
    assert abs(result.test_accuracy - alive.test_accuracy) <= 0.02


def test_a_feature_varying_only_by_rounding_on_train_is_constant():
    train = _two_class(40, 0, dead_value=0.5)
    train[0][::2, 2] = torch.nextafter(torch.tensor(0.5), torch.tensor(1.0))  # one ulp of jitter
    result = linear_probe(train, _two_class(20, 1), l2_values=(1.0,))
    assert result.std[2].item() == 1.0 and result.mean[2].item() == pytest.approx(0.5)


def test_a_class_absent_from_train_is_never_predicted_and_its_test_items_count_as_wrong():
    train, val = _two_class(60, 0), _two_class(30, 1)
    test_x, test_y = _two_class(30, 2)
    test_y = test_y.clone()
    test_y[:4] = 2  # a third class only the test split holds
    result = linear_probe(train, val, (test_x, test_y), l2_values=(1.0,))
    predicted = result.predict(test_x)
    assert result.weight.shape == (3, 3) and not (predicted == 2).any()
    assert result.test_accuracy == pytest.approx((predicted == test_y).float().mean().item())
    assert result.test_accuracy == pytest.approx((predicted[4:] == test_y[4:]).float().sum().item() / 30)


def test_the_test_accuracy_comes_also_averaged_over_the_classes_of_an_unbalanced_test_split():
    """Six test items of class 0, all right, and two of class 1, one of them lying among class 0's:
    accuracy 7/8, each class's own 1 and 1/2, mean per class 3/4 (only the overall figure was given)."""
    x, y = _blobs(90, 0)
    test_x = torch.tensor([[3.0, 0, 0, 0]] * 6 + [[0, 3.0, 0, 0], [3.0, 0, 0, 0]])
    test_y = torch.tensor([0] * 6 + [1, 1])
    result = linear_probe((x, y), _blobs(30, 1), (test_x, test_y), l2_values=(1e-2,))
    assert result.predict(test_x).tolist() == [0] * 6 + [1, 0]
    assert result.test_accuracy == pytest.approx(7 / 8)
    assert result.test_mean_per_class_accuracy == pytest.approx(3 / 4)  # class 2, absent from test, left out
    assert linear_probe((x, y), _blobs(30, 1), l2_values=(1e-2,)).test_mean_per_class_accuracy is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_probe_of_gpu_features_with_cpu_labels_runs_on_the_gpu_as_on_the_cpu():
    splits = [_two_class(60, 0), _two_class(30, 1), _two_class(30, 2)]
    on_cpu = linear_probe(*splits, l2_values=(0.1, 1.0))
    on_gpu = linear_probe(*((x.cuda(), y) for x, y in splits), l2_values=(0.1, 1.0))  # failed in the matmul
    assert on_gpu.weight.is_cuda and on_gpu.l2 == on_cpu.l2
    torch.testing.assert_close(on_gpu.weight.cpu(), on_cpu.weight, atol=1e-3, rtol=1e-3)
    w, _ = fit_logistic_regression(splits[0][0].cuda(), splits[0][1], 2, l2=0.1)
    assert w.is_cuda
    with pytest.raises(ValueError, match="the features of every split must be on one device"):
        linear_probe(splits[0], (splits[1][0].cuda(), splits[1][1]))


def test_the_probes_logits_are_its_scores_on_standardised_features_and_predict_takes_their_argmax():
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 6, generator=generator) * 3 + 5, torch.arange(40) % 4
    probe = linear_probe((x[:30], y[:30]), (x[30:], y[30:]), l2_values=[0.1])
    logits = probe.logits(x)
    torch.testing.assert_close(logits, ((x - probe.mean) / probe.std) @ probe.weight.T + probe.bias)
    assert logits.shape == (40, 4) and torch.equal(probe.predict(x), logits.argmax(dim=1))
    with pytest.raises(ValueError, match=r"features must be a \(N, 6\) real"):
        probe.logits(x[:, :5])


def test_the_test_top5_accuracy_is_reported_past_5_classes_as_the_other_commands_do():
    """zero_shot reported top-5 accuracy past 5 classes, the linear probe did not: it now does, counted as
    top_k_accuracy counts it (the label among the refitted probe's 5 highest scores), and is None for 5 classes or
    fewer, or without a test split."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 6, generator=g) * 1.5  # 8 classes that overlap: some test items miss their top 1
    split = [(centres[torch.arange(n) % 8] + torch.randn(n, 6, generator=g), torch.arange(n) % 8) for n in (80, 40, 80)]
    result = linear_probe(*split, l2_values=(1e-2,), max_iter=50)
    x, y = split[2]
    top5 = (result.logits(x).topk(5, dim=1).indices == y[:, None]).any(dim=1).double().mean().item()
    assert result.test_top5_accuracy == pytest.approx(top5) and result.test_accuracy < top5 <= 1
    assert result.test_accuracy == (result.predict(x) == y).double().mean().item()  # (unchanged: the argmax)
    assert linear_probe(*split[:2], l2_values=(1e-2,), max_iter=20).test_top5_accuracy is None
    assert (
        linear_probe(_blobs(60, 0), _blobs(30, 1), _blobs(30, 2), l2_values=(1e-2,), max_iter=20).test_top5_accuracy
        is None
    )
