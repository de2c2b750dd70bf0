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


def test_init_weights_runs_a_parents_reset_after_its_childrens_as_module_apply_orders_them():
    """A block whose reset_parameters re-initialises a child that has a reset of its own (a zero-initialised token,
    a re-drawn learned query) has the last word, as with nn.Module.apply: the child's own reset ran after the
    parent's and undid it. The children's resets still run; the leaves' rule runs first."""
    from torchflava.modules.init import init_weights

    class Token(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.value = nn.Parameter(torch.empty(4))

        def reset_parameters(self, std: float = 0.02) -> None:
            nn.init.normal_(self.value, std=std)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token, self.other, self.proj = Token(), Token(), nn.Linear(4, 4)

        def reset_parameters(self) -> None:
            nn.init.zeros_(self.token.value)  # the block's own choice for its child
            nn.init.zeros_(self.proj.weight)

    torch.manual_seed(0)
    model = nn.Sequential(Block(), Block())
    model[1].other = model[0].other  # shared: reset once, where first met
    init_weights(model, std=0.5)
    for block in model:
        assert torch.equal(block.token.value, torch.zeros(4)) and torch.equal(block.proj.weight, torch.zeros(4, 4))
        assert block.other.value.abs().min() > 0 and torch.equal(block.proj.bias, torch.zeros(4))
