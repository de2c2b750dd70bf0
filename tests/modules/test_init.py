"""init_transformer_weights and init_weights: the BERT/ViT rule, and their arguments checked."""

import pytest
import torch
from torch import nn

from torchflava.modules.init import init_transformer_weights


def test_init_transformer_weights_follows_the_rule():
    torch.manual_seed(0)
    linear, norm = nn.Linear(400, 300), nn.LayerNorm(8)
    init_transformer_weights(linear, std=0.05)
    init_transformer_weights(norm)
    assert abs(linear.weight.std().item() - 0.05) < 2e-3 and torch.equal(linear.bias, torch.zeros(300))
    assert torch.equal(norm.weight, torch.ones(8)) and torch.equal(norm.bias, torch.zeros(8))


@pytest.mark.parametrize(
    "module, std, error, message",
    [
        (nn.Linear(2, 2), -1.0, ValueError, "std must be a positive number, got -1.0"),  # (torch's normal_ named none)
        (nn.Linear(2, 2), "0.02", ValueError, "std must be a positive number, got '0.02'"),
        ("linear", 0.02, TypeError, "module must be an nn.Module, got str"),  # (did nothing, silently)
    ],
)
def test_init_transformer_weights_arguments_are_checked(module, std, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        init_transformer_weights(module, std=std)
