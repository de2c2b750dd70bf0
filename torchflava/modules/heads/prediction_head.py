"""Heads over encoder states: (N, D) -> (N, V) token logits; (B, S, D) -> (B, 2) match logits."""

from typing import Optional

from torch import Tensor, nn

from torchflava.modules.layers.linear import Linear
from torchflava.modules.layers.pooler import Pooler
from torchflava.utils.checks import check_input_dtype, check_int, check_module, check_positive_number, describe_tensor


class MaskedPredictionHead(nn.Module):
    """BERT-style prediction head: ``decoder(norm(activation(dense(x))))``.

    Used for masked language modelling (text vocabulary) and masked image modelling (codebook ids).
    Apply it only to the masked positions: selecting them first is much cheaper than decoding every
    position into V logits.

    Args:
        embed_dim (int): input width D.
        vocab_size (int): number of classes V.
        norm_eps (float): LayerNorm epsilon.
        activation (Optional[nn.Module]): activation; exact GELU when None.

    Raises:
        TypeError: if a width is not an int, ``activation`` neither an nn.Module nor None.
        ValueError: if a width is < 1 or ``norm_eps`` is not a positive finite number.
    """

    def __init__(
        self, embed_dim: int, vocab_size: int, *, norm_eps: float = 1e-12, activation: Optional[nn.Module] = None
    ) -> None:
        super().__init__()
        check_int("vocab_size", vocab_size, 1)
        self.embed_dim = check_int("embed_dim", embed_dim, 1)
        check_positive_number("norm_eps", norm_eps)  # (a negative or NaN one gave NaN logits; a str failed in forward)
        check_module("activation", activation, optional=True)  # (nn.GELU, the class, failed in forward)
        self.dense = Linear(embed_dim, embed_dim)
        self.activation = nn.GELU() if activation is None else activation
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.decoder = Linear(embed_dim, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        """Predict.

        Args:
            x (Tensor): (..., D) states of the masked positions.

        Returns:
            Tensor: (..., V) logits.

        Raises:
            ValueError: if ``x`` is not a floating-point tensor of width ``embed_dim`` (last dimension) on the
                head's device.
            TypeError: if ``x`` is not of the head's dtype (outside autocast over fp32 parameters).
        """
        if not isinstance(x, Tensor) or x.dim() == 0 or not x.is_floating_point() or x.shape[-1] != self.embed_dim:
            raise ValueError(f"x must be a (..., {self.embed_dim}) floating-point tensor, got {describe_tensor(x)}")
        check_input_dtype(x, self.dense.weight if isinstance(self.dense, nn.Linear) else None)
        return self.decoder(self.norm(self.activation(self.dense(x))))


class ITMHead(nn.Module):
    """Image-text matching head: pool the first token (tanh dense), then a 2-way classifier.

    Args:
        embed_dim (int): input width D.
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.pooler = Pooler(embed_dim)
        self.classifier = Linear(embed_dim, 2)

    def forward(self, x: Tensor) -> Tensor:
        """Classify.

        Args:
            x (Tensor): (B, S, D) fused states; position 0 is the multimodal CLS.

        Returns:
            Tensor: (B, 2) logits, index 1 = matched pair.

        Raises:
            ValueError: if ``x`` is not a (B, S, D) floating-point tensor with S >= 1 (see :class:`Pooler`).
        """
        return self.classifier(self.pooler(x))
