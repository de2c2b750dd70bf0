"""Two-layer feed-forward block: (..., in_dim) -> (..., out_dim)."""

from typing import Optional

import torch
from torch import Tensor, nn

from torchflava.modules.layers.linear import Linear


class MLP(nn.Module):
    """``fc2(dropout(activation(fc1(x))))``.

    Args:
        in_dim (int): input width.
        hidden_dim (int): width of the hidden layer.
        out_dim (Optional[int]): output width; ``in_dim`` when None.
        activation (Optional[nn.Module]): activation module; exact (erf) GELU when None.
        dropout (float): dropout after the activation.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: Optional[int] = None,
        *,
        activation: Optional[nn.Module] = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.fc1 = Linear(in_dim, hidden_dim)
        self.activation = nn.GELU() if activation is None else activation
        self.dropout = nn.Dropout(dropout)
        self.fc2 = Linear(hidden_dim, in_dim if out_dim is None else out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x (Tensor): (..., in_dim).

        Returns:
            Tensor: (..., out_dim).
        """
        hidden = self.fc1(x)
        if type(self.activation) is nn.GELU and not torch.is_grad_enabled():
            # No graph to keep: GELU overwrites fc1's fresh output instead of allocating a second
            # (..., hidden_dim) tensor, the largest in a transformer layer. Same values.
            hidden = torch.ops.aten.gelu_(hidden, approximate=self.activation.approximate)
        else:
            hidden = self.activation(hidden)
        return self.fc2(self.dropout(hidden))
