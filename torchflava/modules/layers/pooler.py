"""BERT-style pooler: tanh(dense(first token)). (B, S, D) -> (B, D)."""

from torch import Tensor, nn

from torchflava.modules.layers.linear import Linear
from torchflava.utils.checks import check_int


class Pooler(nn.Module):
    """Pool a sequence by its first token through a dense layer and tanh.

    Args:
        embed_dim (int): width D.
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = check_int("embed_dim", embed_dim, 1)  # (read by the encoders' width checks)
        self.dense = Linear(embed_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Pool.

        Args:
            x (Tensor): (B, S, D).

        Returns:
            Tensor: (B, D).
        """
        return self.dense(x[:, 0]).tanh()
