"""Prediction heads: masked token prediction (MLM / MIM) and image-text matching; bad input."""

import pytest
import torch
from torch import nn

from torchflava.modules.heads import ITMHead, MaskedPredictionHead


def test_masked_prediction_head_shapes():
    head = MaskedPredictionHead(8, 5)
    assert head(torch.randn(3, 8)).shape == (3, 5)
    assert head(torch.randn(2, 3, 8)).shape == (2, 3, 5)
    assert head(torch.randn(0, 8)).shape == (0, 5)  # no masked position: no logits


def test_itm_head_pools_the_first_position():
    head = ITMHead(8)
    x = torch.randn(3, 4, 8)
    assert head(x).shape == (3, 2)
    torch.testing.assert_close(head(x), head.classifier(torch.tanh(head.pooler.dense(x[:, 0]))), atol=0, rtol=0)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        # the class instead of an instance failed in forward, inside layer_norm
        (dict(activation=nn.GELU), TypeError, r"^activation must be an nn.Module or None, got the class GELU"),
        (dict(activation="gelu"), TypeError, r"^activation must be an nn.Module or None, got str$"),
        # a negative or NaN eps gave NaN logits; a str one failed in forward
        (dict(norm_eps=-1e-5), ValueError, r"^norm_eps must be a positive number, got -1e-05$"),
        (dict(norm_eps=float("nan")), ValueError, r"^norm_eps must be a positive number, got nan$"),
        (dict(norm_eps="1e-5"), ValueError, r"^norm_eps must be a positive number, got '1e-5'$"),
    ],
)
def test_masked_prediction_head_refuses_bad_settings(kwargs, error, message):
    with pytest.raises(error, match=message):
        MaskedPredictionHead(8, 5, **kwargs)


@pytest.mark.parametrize(
    "x, got",
    [
        (torch.randn(3, 7), r"torch.float32 of shape \(3, 7\)"),  # was "mat1 and mat2 shapes cannot be multiplied"
        (torch.ones(3, 8, dtype=torch.long), r"torch.int64 of shape \(3, 8\)"),
        (torch.tensor(1.0), r"torch.float32 of shape \(\)"),
        ([[0.0] * 8], "list"),
    ],
)
def test_masked_prediction_head_names_bad_states(x, got):
    with pytest.raises(ValueError, match=rf"^x must be a \(\.\.\., 8\) floating-point tensor, got {got}$"):
        MaskedPredictionHead(8, 5)(x)


@pytest.mark.parametrize(
    "x, message",
    [
        # (B, S, T, D) was pooled at position 0 of S into (B, T, 2) logits, silently
        (
            torch.randn(2, 3, 4, 8),
            r"^x must be a \(B, S, 8\) floating-point tensor, got torch.float32 of shape \(2, 3, 4, 8\)$",
        ),
        # (B, D) pooled a (D,)-wide row: "mat1 and mat2 shapes cannot be multiplied (1x3 and 8x8)"
        (torch.randn(3, 8), r"^x must be a \(B, S, 8\) floating-point tensor, got torch.float32 of shape \(3, 8\)$"),
        (
            torch.randn(3, 4, 7),
            r"^x must be a \(B, S, 8\) floating-point tensor, got torch.float32 of shape \(3, 4, 7\)$",
        ),
        # no position to pool: an IndexError
        (torch.randn(3, 0, 8), r"^x must hold at least one position \(S >= 1\), got shape \(3, 0, 8\)$"),
    ],
)
def test_itm_head_names_bad_states(x, message):
    with pytest.raises(ValueError, match=message):
        ITMHead(8)(x)


def test_heads_refuse_states_of_another_dtype_or_device_naming_x():
    # (a float64 or meta input failed inside torch's product, naming nothing)
    dtype = r"^x must be torch.float32, the dtype of the layer's parameters .* got torch.float64$"
    for head, x in ((MaskedPredictionHead(8, 10), torch.randn(3, 8)), (ITMHead(8), torch.randn(2, 3, 8))):
        with pytest.raises(TypeError, match=dtype):
            head(x.double())
        with pytest.raises(ValueError, match=r"^x must be on the layer's device cpu, got meta$"):
            head(x.to("meta"))
        assert head(x).dtype == torch.float32
