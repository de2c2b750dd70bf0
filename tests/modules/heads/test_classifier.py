"""NormalizedLinearClassifier, embedding_head and standardised_head: a zero-shot classifier's or a linear probe's
scores, made trainable."""

import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from torchflava.modules.heads import NormalizedLinearClassifier, embedding_head, standardised_head


def test_embedding_head_scores_normalised_features_as_the_zero_shot_classifier_does():
    embeddings = F.normalize(torch.randn(5, 8), dim=-1)
    encoder = nn.Linear(12, 8)
    model = NormalizedLinearClassifier(encoder, embedding_head(embeddings, 100.0))
    x = torch.randn(3, 12)
    expected = 100.0 * F.normalize(encoder(x), dim=-1) @ embeddings.T
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
    assert model.num_classes == 5 and torch.equal(model.head.bias, torch.zeros(5))
    assert torch.equal(model.head.weight, 100.0 * embeddings)
    model(x).sum().backward()  # trainable end to end
    assert encoder.weight.grad is not None and model.head.weight.grad is not None


def test_features_are_unit_vectors_whatever_the_encoders_scale():
    model = NormalizedLinearClassifier(nn.Linear(4, 6), nn.Linear(6, 2))
    norms = model.features(1000 * torch.randn(7, 4)).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(7))


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="encoder must be an nn.Module, got str"):
        NormalizedLinearClassifier("vit", nn.Linear(4, 2))
    with pytest.raises(TypeError, match="head must be an nn.Linear, got Sequential"):
        NormalizedLinearClassifier(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 2)))
    model = NormalizedLinearClassifier(nn.Linear(4, 3), nn.Linear(6, 2))
    with pytest.raises(ValueError, match=r"encoder must return \(B, 6\) features, got torch.float32 of shape \(2, 3\)"):
        model(torch.randn(2, 4))
    with pytest.raises(TypeError, match="class_embeddings must be a \\(C, P\\) tensor, got list"):
        embedding_head([[1.0, 0.0]], 1.0)
    with pytest.raises(ValueError, match="class_embeddings must be \\(C, P\\) finite floating-point"):
        embedding_head(torch.tensor([[math.nan, 1.0]]), 1.0)
    for scale in (0.0, -1.0, math.inf, True):
        with pytest.raises(ValueError, match="scale must be a finite number > 0"):
            embedding_head(torch.eye(2), scale)


def test_a_standardised_head_computes_the_probes_logits_on_raw_features():
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(5, 8, generator=generator), torch.randn(5, generator=generator)
    mean, std = torch.randn(8, generator=generator), torch.rand(8, generator=generator) + 0.01
    x = torch.randn(20, 8, generator=generator)
    head = standardised_head(weight, bias, mean, std)
    torch.testing.assert_close(head(x), ((x - mean) / std) @ weight.T + bias, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match=r"weight must be \(C, P\) with bias \(C,\), mean and std \(P,\)"):
        standardised_head(weight, bias, mean[:7], std)
    # the first failing argument named (the message named none: which of the four held a NaN was left to guess)
    with pytest.raises(ValueError, match=r"^std must be > 0 everywhere, got 0 at entry 0 \(8 of its 8 entries <= 0\)$"):
        standardised_head(weight, bias, mean, torch.zeros(8))
    with pytest.raises(
        ValueError, match=r"^std must be > 0 everywhere, got -0.5 at entry 3 \(2 of its 8 entries <= 0\)$"
    ):
        standardised_head(weight, bias, mean, std.index_fill(0, torch.tensor([3, 6]), -0.5))
    nan = mean.index_fill(0, torch.tensor([1, 2, 4]), math.nan).index_fill(0, torch.tensor([5]), math.inf)
    with pytest.raises(
        ValueError, match=r"^mean must hold finite values, got NaN or infinite values in 4 of its 8 entries$"
    ):
        standardised_head(weight, bias, nan, std)
    with pytest.raises(
        ValueError, match=r"^bias must hold finite values, got NaN or infinite values in 1 of its 5 entries$"
    ):
        standardised_head(weight, bias.index_fill(0, torch.tensor([2]), math.nan), nan, std)  # bias before mean
    with pytest.raises(
        ValueError, match=r"^std must hold finite values, got NaN or infinite values in 1 of its 8 entries$"
    ):
        standardised_head(weight, bias, mean, std.index_fill(0, torch.tensor([0]), math.inf))
    with pytest.raises(TypeError, match="bias must be a tensor, got list"):
        standardised_head(weight, [0.0] * 5, mean, std)


def test_meta_embeddings_give_a_meta_head_with_the_shape_checks_kept():
    """Reading a meta tensor's values failed inside torch ("Tensor.item() cannot be called on meta tensors")."""
    head = embedding_head(torch.zeros(5, 8, device="meta", dtype=torch.bfloat16), 100.0)
    assert head.weight.is_meta and head.weight.shape == (5, 8) and head.weight.dtype == torch.bfloat16
    assert head.bias.is_meta and head.bias.shape == (5,)
    with pytest.raises(ValueError, match=r"class_embeddings must be \(C, P\) finite floating-point, got torch.int64"):
        embedding_head(torch.zeros(5, 8, device="meta", dtype=torch.long), 100.0)
    with pytest.raises(ValueError, match=r"finite floating-point, got torch.float32 of shape \(0, 8\)"):
        embedding_head(torch.zeros(0, 8, device="meta"), 100.0)
    meta = [torch.zeros(shape, device="meta") for shape in ((5, 8), (5,), (8,), (8,))]
    head = standardised_head(*meta)
    assert head.weight.is_meta and head.weight.shape == (5, 8) and head.bias.shape == (5,)
    with pytest.raises(ValueError, match=r"weight must be \(C, P\) with bias \(C,\), mean and std \(P,\)"):
        standardised_head(meta[0], meta[1], meta[2][:7], meta[3])


@pytest.mark.parametrize(
    "encoder_dtype, head_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)]
)
def test_an_encoder_and_a_head_of_two_dtypes_are_named_outside_autocast(encoder_dtype, head_dtype):
    """The product failed inside torch ("mat1 and mat2 must have the same dtype"); autocast casts both."""
    torch.manual_seed(0)
    model = NormalizedLinearClassifier(nn.Linear(4, 6).to(encoder_dtype), nn.Linear(6, 3).to(head_dtype))
    x = torch.randn(2, 4)
    with pytest.raises(
        TypeError,
        match=rf"^encoder must return features of the head's dtype {head_dtype} \(convert the whole classifier to one "
        rf"dtype, e.g. classifier.to\({encoder_dtype}\), or run it under torch.autocast\), got {encoder_dtype}$",
    ):
        model(x.to(encoder_dtype))
    # features() alone reads no head: the encoder's own dtype, no error (a probe of a bf16 tower's features)
    assert model.features(x.to(encoder_dtype)).dtype == encoder_dtype
    with torch.device("meta"):  # (no autocast state on meta: the same one-line error, not torch's RuntimeError)
        meta = NormalizedLinearClassifier(nn.Linear(4, 6).to(encoder_dtype), nn.Linear(6, 3).to(head_dtype))
    with pytest.raises(TypeError, match=rf"^encoder must return features of the head's dtype {head_dtype} "):
        meta(torch.zeros(2, 4, device="meta", dtype=encoder_dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    reference = model.to(torch.bfloat16)(x.bfloat16())  # autocast's bf16 products, the features' norm in bf16 too
    assert logits.dtype == torch.bfloat16 and logits.shape == (2, 3)
    torch.testing.assert_close(logits.float(), reference.float(), atol=0.02, rtol=0.02)
    assert model(x.bfloat16()).dtype == torch.bfloat16  # one dtype throughout: no check in the way


def test_a_packed_head_takes_features_of_any_float_dtype():
    """A PackedLinear head (pack_linears') casts its input: fp32 features are no dtype error."""
    from torchflava.modules.layers.packed_linear import PackedLinear

    torch.manual_seed(0)
    model = NormalizedLinearClassifier(nn.Linear(4, 6), nn.Linear(6, 3)).eval()
    x = torch.randn(2, 4)
    with torch.no_grad():
        features = model.features(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = model.head(features)
        model.head = PackedLinear.from_linear(model.head)
        assert torch.equal(model(x), expected) and expected.dtype == torch.bfloat16
