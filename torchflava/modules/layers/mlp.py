"""Two-layer feed-forward block: (..., in_dim) -> (..., out_dim)."""

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _torch_module

from torchflava.modules.layers.linear import Linear


def can_overwrite(*modules: nn.Module) -> bool:
    """Whether a tensor that ``modules`` saw may be overwritten in place: no graph records (no
    autograd saved it), and no forward hook on them, or a global one, may have kept it."""
    if torch.is_grad_enabled() or _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


class MLP(nn.Module):
    """``fc2(dropout(activation(fc1(x))))``.

    Args:
        in_dim (int): input width.
        hidden_dim (int): width of the hidden layer.
        out_dim (Optional[int]): output width; ``in_dim`` when None.
        activation (Optional[nn.Module]): activation module; exact (erf) GELU when None.
        dropout (float): dropout after the activation.
        bias (bool): whether both linear layers have biases.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: Optional[int] = None,
        *,
        activation: Optional[nn.Module] = None,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.fc1 = Linear(in_dim, hidden_dim, bias=bias)
        self.activation = nn.GELU() if activation is None else activation
        self.dropout = nn.Dropout(dropout)
        self.fc2 = Linear(hidden_dim, in_dim if out_dim is None else out_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x (Tensor): (..., in_dim).

        Returns:
            Tensor: (..., out_dim).
        """
        hidden = self.fc1(x)
        if type(self.activation) is nn.GELU and can_overwrite(self.fc1, self.activation):
            # Nothing keeps it: GELU overwrites fc1's fresh output instead of allocating a second
            # (..., hidden_dim) tensor, the largest in a transformer layer. Same values.
            hidden = torch.ops.aten.gelu_(hidden, approximate=self.activation.approximate)
        else:
            hidden = self.activation(hidden)
        return self.fc2(self.dropout(hidden))
