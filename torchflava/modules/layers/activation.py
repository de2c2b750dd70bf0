"""Activations by name, for builders: exact GELU, tanh-approximated GELU, and CLIP's QuickGELU."""

import torch
from torch import Tensor, nn

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the GELU approximation OpenAI's CLIP weights were trained with."""

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation.

        Args:
            x (Tensor): any shape.

        Returns:
            Tensor: the same shape.
        """
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    """The activation module called ``name``.

    Args:
        name (str): ``"gelu"`` (exact, erf), ``"gelu_tanh"`` (tanh approximation) or ``"quick_gelu"``.

    Returns:
        nn.Module: a fresh module.

    Raises:
        ValueError: if ``name`` is not one of :data:`ACTIVATIONS`.
    """
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def activation_name(module: nn.Module) -> str:
    """The name in :data:`ACTIVATIONS` of an activation module :func:`activation` builds, else its class name."""
    if isinstance(module, QuickGELU):
        return "quick_gelu"
    if type(module) is nn.GELU:
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    return type(module).__name__
