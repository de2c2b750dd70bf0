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
        """(B, C) logits of ``x`` (the encoder's input, e.g. (B, C, H, W) pixels); errors as :meth:`features`.

        Raises:
            TypeError: if, outside ``torch.autocast``, the features are not of the head's dtype (a bf16 encoder
                and an fp32 head, or the reverse).
        """
        features = self.features(x)
        # (the product failed inside torch, "mat1 and mat2 must have the same dtype"; autocast casts both, and a
        # PackedLinear head, pack_linears', casts its input; torch has no autocast state for the meta device: taken as off)
        head = self.head
        dtype = head.weight.dtype if isinstance(head, nn.Linear) else features.dtype
        if features.dtype != dtype and (features.is_meta or not torch.is_autocast_enabled(features.device.type)):
            raise TypeError(
                f"encoder must return features of the head's dtype {dtype} (convert the whole classifier to one "
                f"dtype, e.g. classifier.to({features.dtype}), or run it under torch.autocast), got {features.dtype}"
            )
        return head(features)


@torch.no_grad()
def embedding_head(class_embeddings: Tensor, scale: float) -> nn.Linear:
    """The linear head whose logits are a zero-shot classifier's: weight ``scale * class_embeddings``, bias 0.

    Args:
        class_embeddings (Tensor): (C, P) the classes' (normalised) text embeddings.
        scale (float): the temperature multiplier (CLIP's ``exp(logit_scale)``), finite and > 0.

    Returns:
        nn.Linear: P -> C, of the embeddings' dtype and device (meta embeddings: a meta head, values unchecked).

    Raises:
        TypeError: if ``class_embeddings`` is not a tensor.
        ValueError: if it is not (C, P) floating point and finite with C, P >= 1, or ``scale`` is not finite and > 0.
    """
    if not isinstance(class_embeddings, Tensor):
        raise TypeError(f"class_embeddings must be a (C, P) tensor, got {type(class_embeddings).__name__}")
    e = class_embeddings
    # (a meta tensor has no values to read, "Tensor.item() cannot be called on meta tensors": a meta head)
    if e.dim() != 2 or 0 in e.shape or not e.is_floating_point() or not (e.is_meta or bool(torch.isfinite(e).all())):
        raise ValueError(f"class_embeddings must be (C, P) finite floating-point, got {describe_tensor(e)}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    head = nn.Linear(e.shape[1], e.shape[0], dtype=e.dtype, device=e.device)
    head.weight.copy_(e * scale)
    head.bias.zero_()
    return head


@torch.no_grad()
def standardised_head(weight: Tensor, bias: Tensor, mean: Tensor, std: Tensor) -> nn.Linear:
    """The linear head whose logits on raw features ``x`` are those of a linear model fitted on standardised ones,
    ``((x - mean) / std) @ weight.T + bias``: the standardisation folded in (a linear probe's, e.g.
    :func:`torchflava.evaluation.linear_probe.linear_probe`'s result, made a head; folded in float64).

    Args:
        weight (Tensor): (C, P) the model's weight on standardised features.
        bias (Tensor): (C,) its bias.
        mean (Tensor): (P,) the features' mean.
        std (Tensor): (P,) the features' scale, every entry > 0.

    Returns:
        nn.Linear: P -> C, float32, on ``weight``'s device: weight ``weight / std``, bias ``bias - (weight / std) @
        mean`` (meta tensors: a meta head, values unchecked).

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: if the shapes do not fit (C, P) with C, P >= 1, a value is not finite, or ``std`` not > 0
            (naming the first such argument).
    """
    given = {"weight": weight, "bias": bias, "mean": mean, "std": std}
    for name, value in given.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    c, p = weight.shape if weight.dim() == 2 else (0, 0)
    shapes = {"weight": (c, p), "bias": (c,), "mean": (p,), "std": (p,)}
    if c < 1 or p < 1 or any(value.shape != shapes[name] for name, value in given.items()):
        got = ", ".join(f"{name} {tuple(value.shape)}" for name, value in given.items())
        raise ValueError(f"weight must be (C, P) with bias (C,), mean and std (P,), C, P >= 1, got {got}")
    values_read = not any(value.is_meta for value in given.values())  # (meta: no values to read, a meta head)
    if values_read:
        for name, value in given.items():  # (the first failing argument named, and how many of its entries)
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise ValueError(
                    f"{name} must hold finite values, got NaN or infinite values in {bad} of its {value.numel()} entries"
                )
        if not bool((std > 0).all()):
            index, count = int((std <= 0).nonzero()[0, 0]), int((std <= 0).sum())
            raise ValueError(
                f"std must be > 0 everywhere, got {float(std[index]):g} at entry {index} ({count} of its {p} entries <= 0)"
            )
    scaled = weight.double() / std.double().to(weight.device)
    head = nn.Linear(p, c, device=weight.device)
    head.weight.copy_(scaled)
    head.bias.copy_(bias.double().to(weight.device) - scaled @ mean.double().to(weight.device))
    return head
