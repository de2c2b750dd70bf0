"""BERT-style pooler: tanh(dense(first token)). (B, S, D) -> (B, D)."""

from torch import Tensor, nn

from torchflava.modules.layers.attention import check_hidden_states
from torchflava.modules.layers.linear import Linear
from torchflava.utils.checks import check_input_dtype, check_int


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

        Raises:
            ValueError: if ``x`` is not a (B, S, D) floating-point tensor with S >= 1 on the layer's device.
            TypeError: if ``x`` is not of the layer's dtype (outside autocast over fp32 parameters).
        """
        # (a (B, S, T, D) input pooled into (B, T, D) silently; a (B, D) one failed inside torch)
        check_hidden_states(x, self.embed_dim)
        check_input_dtype(x, self.dense.weight if isinstance(self.dense, nn.Linear) else None)
        return self.dense(x[:, 0]).tanh()
