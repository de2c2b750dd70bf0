"""Two-layer feed-forward block: (..., in_dim) -> (..., out_dim)."""

from typing import Optional

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from torchflava.modules.layers.activation import activation_name
from torchflava.modules.layers.hooks import hooked, saved_tensors_hooks_active
from torchflava.modules.layers.linear import Linear, has_tangent, onednn_linear_wins
from torchflava.utils.architecture import ContradictedArgument
from torchflava.utils.checks import (
    check_bool,
    check_dropout,
    check_input_dtype,
    check_int,
    check_module,
    describe_tensor,
)


def can_overwrite(*modules: nn.Module) -> bool:
    """Whether a tensor that ``modules`` saw may be overwritten in place: no graph records (no
    autograd saved it), and no forward hook on them, or a global one, may have kept it. Never while
    ``torch.jit.trace`` records: its check traces again without grad, and a graph that wrote in place there
    alone differed from the first ("Graphs differed across invocations"): every model with an MLP failed it."""
    return not torch.is_grad_enabled() and not torch.jit.is_tracing() and not hooked(*modules, backward=False)


# Whether MLP.forward may use _GeluLinear (False: autograd through GELU and fc2 as they are).
RECOMPUTE_GELU_FOR_FC2 = True


class _GeluLinear(torch.autograd.Function):
    """``F.linear(gelu(h), weight, bias)`` that saves h alone for backward and computes gelu(h) again
    there, where autograd would keep both h (for GELU's gradient) and gelu(h) (for the weight's):
    a (..., hidden_dim) tensor less per MLP, the largest a transformer layer keeps (FLAVA-full's
    pretraining step: 490 MiB less peak memory in fp32, 400 MiB under bf16 autocast). The same ops in
    the same dtypes (under autocast the weight is cast again in backward rather than kept), so the
    same gradients, bit for bit, for one pass, except the weight's in bf16: it is the product of a
    contiguous copy of dy^T, which oneDNN may sum in another order past ~1000 rows (a rounding
    apart). For several passes through one MLP in one autocast region the weight's
    gradients are summed in its own dtype (fp32), where autocast's cached cast sums them in bf16
    before casting back.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Optional[Tensor], approximate: str) -> Tensor:
        out = F.linear(F.gelu(h, approximate=approximate), weight, bias)
        # the dtype the product ran in: autocast's where it cast (fp32 weights), else the weight's own
        ctx.product_dtype, ctx.approximate, ctx.has_bias = out.dtype, approximate, bias is not None
        ctx.save_for_backward(h, weight)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Optional[Tensor], ...]:
        # Written with differentiable ops (no once_differentiable): a gradient of the gradient
        # (gradient penalties, Hessian-vector products) goes through it as through autograd's own.
        h, weight = ctx.saved_tensors
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(ctx.product_dtype)
            activated = F.gelu(h, approximate=ctx.approximate)
            grad_out2 = grad_out.reshape(-1, grad_out.shape[-1])  # (M, out)
            grad_weight = grad_bias = grad_h = None
            if ctx.needs_input_grad[1]:  # (out, M) @ (M, hidden)
                left = grad_out2.t()
                if left.dtype == torch.bfloat16:
                    # oneDNN reads a transposed bf16 left operand far slower than a row-major one:
                    # copying dy^T (the smaller operand) first makes this product 1.2-1.6x faster.
                    left = left.contiguous()
                grad_weight = (left @ activated.reshape(-1, activated.shape[-1])).to(weight.dtype)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_bias = grad_out2.sum(0).to(weight.dtype)
            if ctx.needs_input_grad[0]:
                grad_h = torch.ops.aten.gelu_backward(grad_out @ w, h, approximate=ctx.approximate)
        return grad_h, grad_weight, grad_bias, None


class MLP(nn.Module):
    """``fc2(dropout(activation(fc1(x))))``.

    Args:
        in_dim (int): input width.
        hidden_dim (int): width of the hidden layer.
        out_dim (Optional[int]): output width; ``in_dim`` when None.
        activation (Optional[nn.Module]): activation module; exact (erf) GELU when None.
        dropout (float): dropout after the activation.
        bias (bool): whether both linear layers have biases.

    Raises:
        TypeError: if a width is not an int, ``activation`` neither an nn.Module nor None, ``dropout``
            not a number or ``bias`` not a bool.
        ValueError: if a width is below 1, or ``dropout`` is not in [0, 1).
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
        for name, value in (
            ("in_dim", in_dim),
            ("hidden_dim", hidden_dim),
            ("out_dim", in_dim if out_dim is None else out_dim),
        ):
            check_int(name, value, 1)
        check_module("activation", activation, optional=True)
        check_dropout("dropout", dropout)
        check_bool("bias", bias)
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

        Raises:
            ValueError: if ``x`` is not a tensor of width ``in_dim`` (last dimension) on the parameters' device.
            TypeError: if ``x`` is not of the parameters' dtype (outside autocast over fp32 parameters).
        """
        fc1 = self.fc1  # (the product failed inside torch, naming neither: a dtype, width or device apart)
        if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[-1] != getattr(fc1, "in_features", x.shape[-1]):
            raise ValueError(f"x must be a (..., {fc1.in_features}) tensor, got {describe_tensor(x)}")
        check_input_dtype(x, fc1.weight if isinstance(fc1, nn.Linear) else None)
        hidden = fc1(x)
        if self._gelu_then_fc2_saves_hidden_only(hidden):
            return _GeluLinear.apply(hidden, self.fc2.weight, self.fc2.bias, self.activation.approximate)
        if type(self.activation) is nn.GELU and type(self.fc1) is Linear and can_overwrite(self.fc1, self.activation):
            # Nothing keeps it: GELU overwrites fc1's fresh output instead of allocating a second
            # (..., hidden_dim) tensor, the largest in a transformer layer. Same values.
            hidden = torch.ops.aten.gelu_(hidden, approximate=self.activation.approximate)
        else:
            hidden = self.activation(hidden)
        return self.fc2(self.dropout(hidden))

    def _gelu_then_fc2_saves_hidden_only(self, hidden: Tensor) -> bool:
        """Whether :class:`_GeluLinear` may stand for ``fc2(dropout(activation(hidden)))`` here: autograd
        records, exact GELU or its tanh form, no dropout, plain CPU tensors, fc2 a plain :class:`Linear`
        on ``F.linear`` (not oneDNN's fp32 path), no hook on the modules it bypasses, and no
        saved-tensors hook (activation checkpointing, offloading: what is kept is then theirs to say)."""
        fc2, weight = self.fc2, self.fc2.weight
        return (
            RECOMPUTE_GELU_FOR_FC2
            and torch.is_grad_enabled()
            and type(self.activation) is nn.GELU
            and type(fc2) is Linear
            and (self.dropout.p == 0.0 or not self.training)
            and type(hidden) is Tensor
            and hidden.device.type == "cpu"  # where it was measured (benchmarks/README.md)
            and type(weight) in (Tensor, nn.Parameter)
            and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()  # a traced graph cannot hold a Python autograd function
            and not torch._C._are_functorch_transforms_active()
            and not has_tangent(hidden, weight, fc2.bias)  # forward-mode AD: no jvp rule here
            and not hooked(self.activation, self.dropout, fc2)
            and not saved_tensors_hooks_active()
            and not onednn_linear_wins(hidden, weight, training=True)
        )


def mlp_activations(model: nn.Module) -> set[str]:
    """The activations of ``model``'s :class:`MLP` modules, by name (:func:`.activation.activation_name`)."""
    return {activation_name(module.activation) for module in model.modules() if isinstance(module, MLP)}


def check_activations(model: nn.Module, name: str, why: str) -> None:
    """:class:`~torchflava.utils.architecture.ContradictedArgument` (a ValueError naming ``activation``; ``why``:
    build with ``activation=name``) unless every :class:`MLP` of ``model`` uses ``name``."""
    if others := " and ".join(map(repr, sorted(mlp_activations(model) - {name}))):
        raise ContradictedArgument("activation", f"{why}: build with activation={name!r}, got activation {others}")
