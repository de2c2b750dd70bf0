"""Heads over encoder states: (N, D) -> (N, V) token logits; (B, S, D) -> (B, 2) match logits."""

from typing import Optional

from torch import Tensor, nn

from torchflava.modules.layers.linear import Linear
from torchflava.modules.layers.pooler import Pooler
from torchflava.utils.checks import check_int


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
    """

    def __init__(
        self, embed_dim: int, vocab_size: int, *, norm_eps: float = 1e-12, activation: Optional[nn.Module] = None
    ) -> None:
        super().__init__()
        check_int("vocab_size", vocab_size, 1)
        self.dense = Linear(check_int("embed_dim", embed_dim, 1), embed_dim)
        self.activation = nn.GELU() if activation is None else activation
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.decoder = Linear(embed_dim, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        """Predict.

        Args:
            x (Tensor): (..., D) states of the masked positions.

        Returns:
            Tensor: (..., V) logits.
        """
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
        """
        return self.classifier(self.pooler(x))
