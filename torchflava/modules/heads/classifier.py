"""A classifier over normalised features: inputs -> encoder -> (B, P) features -> L2 norm -> (B, C) logits.

The form of a dual encoder's zero-shot classifier made trainable: with the head's weight the (C, P) normalised
class embeddings times the temperature multiplier and its bias 0 (:func:`embedding_head`), the logits are the
zero-shot scores; fine-tuning then starts from them (WiSE-FT's and FLYP's "zero-shot initialised head").
"""

import math

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from torchflava.utils.checks import check_module, describe_tensor


class NormalizedLinearClassifier(nn.Module):
    """``head(normalize(encoder(x)))``.

    Args:
        encoder (nn.Module): inputs -> (B, P) features (e.g. an image tower and its projection).
        head (nn.Linear): P -> C, the class scores.

    Raises:
        TypeError: if ``encoder`` is not an nn.Module or ``head`` not an nn.Linear.
    """

    def __init__(self, encoder: nn.Module, head: nn.Linear) -> None:
        check_module("encoder", encoder)
        if not isinstance(head, nn.Linear):  # (its in_features are the width the features are checked against)
            raise TypeError(f"head must be an nn.Linear, got {type(head).__name__}")
        super().__init__()
        self.encoder, self.head = encoder, head

    @property
    def num_classes(self) -> int:
        """C, the head's outputs."""
        return self.head.out_features

    def features(self, x: Tensor) -> Tensor:
        """(B, P) L2-normalised features of ``x``.

        Raises:
            ValueError: if the encoder does not give (B, P) floating-point features, P the head's input width.
        """
        features = self.encoder(x)
        width = self.head.in_features
        if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[1] != width:
            raise ValueError(f"encoder must return (B, {width}) features, got {describe_tensor(features)}")
        return F.normalize(features, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C) logits of ``x`` (the encoder's input, e.g. (B, C, H, W) pixels); errors as :meth:`features`."""
        return self.head(self.features(x))


@torch.no_grad()
def embedding_head(class_embeddings: Tensor, scale: float) -> nn.Linear:
    """The linear head whose logits are a zero-shot classifier's: weight ``scale * class_embeddings``, bias 0.

    Args:
        class_embeddings (Tensor): (C, P) the classes' (normalised) text embeddings.
        scale (float): the temperature multiplier (CLIP's ``exp(logit_scale)``), finite and > 0.

    Returns:
        nn.Linear: P -> C, of the embeddings' dtype and device.

    Raises:
        TypeError: if ``class_embeddings`` is not a tensor.
        ValueError: if it is not (C, P) floating point and finite with C, P >= 1, or ``scale`` is not finite and > 0.
    """
    if not isinstance(class_embeddings, Tensor):
        raise TypeError(f"class_embeddings must be a (C, P) tensor, got {type(class_embeddings).__name__}")
    e = class_embeddings
    if e.dim() != 2 or 0 in e.shape or not e.is_floating_point() or not bool(torch.isfinite(e).all()):
        raise ValueError(f"class_embeddings must be (C, P) finite floating-point, got {describe_tensor(e)}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    head = nn.Linear(e.shape[1], e.shape[0], dtype=e.dtype, device=e.device)
    head.weight.copy_(e * scale)
    head.bias.zero_()
    return head
