"""Multi-head self-attention on ``F.scaled_dot_product_attention``, or on explicit matmuls where they win.

On the CPU with autograd recording, short bf16 sequences run :func:`math_attention` (the same
fp32 scores and softmax, the backward 2-4x faster than the fused kernel's); elsewhere SDPA's kernels.

Shapes: x (B, S, D) -> (B, S, D); key_padding_mask (B, S) bool with ``True = padding``
(that key is ignored by every query); attn_mask (B, S, S) bool with ``True = blocked``
(query i may not attend to key j), e.g. block-diagonal for packed sequences, or (S, S) for every
row. Causal attention (``is_causal=True``) also blocks every key after the query. A query left with
no key to attend to gets a zero output.

Positions whose output alone is wanted (``query_positions``, P of them) are a slice, a (P,) long
tensor (the same positions in every row) or a (B, P) long tensor (per-row positions, e.g. each
row's end-of-text token); outputs are then (B, P, D). A (B, S) bool mask selects positions that
differ in number from row to row (e.g. a row's masked tokens beside another row's CLS alone);
outputs are then (T, D), the T selected positions in row-major order (``x[mask]``).
"""

from contextlib import contextmanager
import threading
from typing import Iterator, Optional, Union

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
import torch.nn.functional as F

from torchflava.modules.layers.hooks import hooked
from torchflava.modules.layers.linear import ONEDNN_BF16, Linear, linear
from torchflava.utils.checks import (
    check_bool,
    check_dropout,
    check_input_dtype,
    check_int,
    describe_tensor,
    require,
)

Positions = Union[Tensor, slice]


def is_position_mask(positions: Optional[Positions]) -> bool:
    """Whether ``positions`` is a (B, S) bool mask of positions (see the module's docstring)."""
    return isinstance(positions, Tensor) and positions.dtype == torch.bool


def check_position_mask(mask: Tensor, x: Tensor, name: str = "positions") -> Tensor:
    """``mask``, a (B, S) bool mask of x's positions; ValueError naming ``name`` when its shape is not x's (B, S), or
    on the meta device (what a mask selects depends on its values, which a meta tensor has not)."""
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"{name} as a bool mask must have shape (B, S) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}"
        )
    if mask.is_meta or x.is_meta:  # (torch's NotImplementedError from inside nonzero named nothing)
        raise ValueError(
            f"{name} as a bool mask selects by its values, which a meta tensor has not: on the meta device pass "
            "(B, P) indices (a dry run of shapes)"
        )
    return mask


def check_hidden_states(x: object, width: Optional[int], name: str = "x") -> None:
    """ValueError naming ``name`` unless ``x`` is a (B, S, ``width``) floating-point tensor (any width
    where ``width`` is None) with S >= 1: checked where a sequence enters a block, before a norm or product
    that would fail on it inside torch. An empty batch (B = 0) passes, its output empty as torch's
    ``nn.MultiheadAttention`` and timm's blocks give it; an empty sequence (S = 0) is refused: a block over
    it returned (B, 0, D) and a pooled (B, D) read downstream failed inside torch or averaged to NaN."""
    if not isinstance(x, Tensor) or x.dim() != 3 or not x.is_floating_point() or width not in (None, x.shape[-1]):
        expected = f"a (B, S, {'D' if width is None else width}) floating-point tensor"
        raise ValueError(f"{name} must be {expected}, got {describe_tensor(x)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one position (S >= 1), got shape {tuple(x.shape)}")


def take_positions(x: Tensor, positions: Positions) -> Tensor:
    """Rows ``positions`` of dimension 1: (B, S, ...) -> (B, P, ...), or (T, ...) for a mask.

    Args:
        x (Tensor): (B, S, ...).
        positions (Positions): a slice, (P,) indices shared by all rows, (B, P) per-row indices, or
            a (B, S) bool mask of the positions to take (T of them in all).

    Returns:
        Tensor: (B, P, ...); (T, ...) for a mask, in row-major order.

    Raises:
        TypeError: if ``positions`` is not a slice, an integer tensor or a bool tensor.
        ValueError: if a (B, P) tensor or a mask does not match x, ``positions`` has more than 2 dims,
            or (on the CPU) an index is out of range; if a slice's step is below 1, or it selects nothing.
    """
    if isinstance(positions, slice):
        ends = (positions.start, positions.stop, positions.step)
        if not all(v is None or type(v) is int for v in ends) or (positions.step is not None and positions.step < 1):
            raise ValueError(f"positions must be a slice of ints with a step >= 1, got {positions}")
        if not torch.compiler.is_compiling() and not range(x.shape[1])[positions]:  # (past the end: nothing)
            raise ValueError(f"positions must select at least one of the {x.shape[1]} positions, got {positions}")
        return x[:, positions]
    if is_position_mask(positions):
        return x[check_position_mask(positions, x)]
    if not isinstance(positions, Tensor) or positions.is_floating_point() or positions.is_complex():
        raise TypeError(f"positions must be a slice, an integer tensor or a bool mask, got {_describe(positions)}")
    if positions.dim() not in (1, 2) or (positions.dim() == 2 and positions.shape[0] != x.shape[0]):
        raise ValueError(
            f"positions must be (P,) or (B, P) = ({x.shape[0]}, P) indices, got shape {tuple(positions.shape)}"
        )
    positions = positions.long()  # indices, whatever their integer dtype (torch reads uint8 as a mask)
    if positions.device.type == "cpu" and not torch.compiler.is_compiling() and positions.numel():
        # (on a GPU the check would wait for the device; require reads it under torch.func.vmap too)
        expected = f"positions must be indices in [-{x.shape[1]}, {x.shape[1]})"
        require(
            ((positions >= -x.shape[1]) & (positions < x.shape[1])).all(),
            lambda: f"{expected}, got {positions.tolist()}",
            f"{expected}, got some outside it",
        )
    if positions.dim() == 1:
        return x[:, positions]
    return x[torch.arange(x.shape[0], device=x.device)[:, None], positions]


def _describe(value: object) -> str:
    return f"tensor of dtype {value.dtype}" if isinstance(value, Tensor) else type(value).__name__


def _query_index(positions: Optional[Positions], seq_len: int, device: torch.device) -> Tensor:
    """Sequence index of each query: (S,) / (P,) / (B, P)."""
    index = torch.arange(seq_len, device=device)
    if positions is None:
        return index
    if isinstance(positions, slice):
        return index[positions]
    return positions.to(device) % seq_len  # -1 is the last position, as in take_positions


def default_math_attention_max_keys(amx: bool) -> dict[torch.dtype, int]:
    """Longest key sequence for which the matmul-and-softmax path beats SDPA's fused CPU kernel when
    autograd records, by input dtype (forward + backward, 2 cores; benchmarks/attention.py).

    In bf16 the fused kernel's backward is the slow part: 2-4x the matmul path's up to ~200 keys on
    an AVX-512 EPYC. With AMX (bf16 GEMMs ~2.8 TFLOP/s) the matmul path is 0.47-0.54x the fused
    kernel's time at 197 keys, 0.60-0.70x at 256, 0.66-0.74x at 320, 0.74-0.84x at 400 and 0.91-1.40x
    at 512 (a CLIP ViT-L/14 bf16 train step, 257 keys: 2.20-2.27 -> 1.92-1.99 s with 400 over 224).
    fp32 is not listed: there the matmul path won 10-30% on attention alone but nothing measurable in
    a whole training step (the tiny FLAVA recipe: 0.377 against 0.380 s per step, interleaved).

    Args:
        amx (bool): whether the CPU has AMX tiles.
    """
    return {torch.bfloat16: 400 if amx else 224}


def _has_amx() -> bool:
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.14: absent is no
    return bool(probe()) if probe is not None else False


MATH_ATTENTION_MAX_KEYS = default_math_attention_max_keys(_has_amx())


@contextmanager
def math_attention_limits(max_keys: dict[torch.dtype, int]) -> Iterator[None]:
    """Within the block, :func:`math_attention_wins` reads ``max_keys`` instead of
    :data:`MATH_ATTENTION_MAX_KEYS` (``{}``: SDPA's fused kernel at every length); restored after.

    Raises:
        ValueError: if ``max_keys`` is not a dict from torch dtypes to non-negative ints.
    """
    global MATH_ATTENTION_MAX_KEYS
    if not (
        isinstance(max_keys, dict)
        and all(isinstance(k, torch.dtype) for k in max_keys)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in max_keys.values())
    ):
        raise ValueError(f"max_keys must be a dict from torch dtypes to non-negative ints, got {max_keys!r}")
    saved, MATH_ATTENTION_MAX_KEYS = MATH_ATTENTION_MAX_KEYS, dict(max_keys)
    try:
        yield
    finally:
        MATH_ATTENTION_MAX_KEYS = saved


def math_attention_wins(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether :func:`math_attention` is the faster choice for these inputs: on the CPU, with
    autograd recording, for short key sequences (:data:`MATH_ATTENTION_MAX_KEYS`), outside ``torch.func``
    transforms and ``torch.jit.trace``. Without autograd the fused kernel's forward is as fast and keeps no
    (S_q, S) matrix.
    """
    limit = MATH_ATTENTION_MAX_KEYS.get(q.dtype)
    return (
        limit is not None
        and not torch._C._are_functorch_transforms_active()  # vmap, torch.func.grad: SDPA's rules
        and not torch.jit.is_tracing()  # a traced graph cannot hold a Python autograd function (nor be saved)
        and q.device.type == "cpu"
        and k.shape[-2] <= limit
        and torch.is_grad_enabled()
        and (q.requires_grad or k.requires_grad or v.requires_grad)
    )


def math_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Optional[Tensor] = None) -> Tensor:
    """``softmax(q k^T / sqrt(hd)) v`` with explicit matmuls, computed as SDPA's fused CPU kernel does.

    Scores and softmax are fp32 for fp32 and narrower inputs (bf16/fp16 inputs are upcast for the
    score matmul), fp64 for fp64; the probabilities are rounded to ``v``'s dtype for the matmul
    with ``v``, and a query row with no allowed key gives zeros, as SDPA does. Autocast is off
    inside (forward and backward), so the fp32 score matmul stays fp32. For backward it keeps q, k,
    v and the rounded probabilities, nothing else; the backward's products run in the inputs'
    dtype, the softmax gradient accumulated in fp32: as accurate as SDPA's fused kernel, and on a
    2-core AMX Xeon 1.8x (197 keys) to 4.5x (77 keys) faster forward + backward. No dropout:
    callers use SDPA when dropout is active.

    Args:
        q (Tensor): (B, H, S_q, hd) queries.
        k (Tensor): (B, H, S, hd) keys.
        v (Tensor): (B, H, S, hd) values.
        allowed (Optional[Tensor]): bool, broadcastable to (B, H, S_q, S), ``True`` = may attend.

    Returns:
        Tensor: (B, H, S_q, hd) in ``v``'s dtype.
    """
    return _MathAttention.apply(q, k, v, allowed)


# Whether math_attention's score product of bf16 queries and keys runs on the CPU's bf16 units
# (AVX512-BF16 / AMX) where it has them: exact (the products of bf16 values are exact in fp32 and
# accumulate in fp32, as in the float32 product), 2x faster than the float32 GEMM at ViT-B's shapes,
# a ViT-B/16 bf16 train step 2.4% faster (benchmarks/README.md). Off by default: it switches
# oneDNN's float32 matmul precision, a process-wide setting, to "bf16" for the length of that
# product, and a float32 matmul another thread starts meanwhile runs on bf16 units too (errors
# ~1e-2 where ~1e-6 was due), while torch.get_float32_matmul_precision() raises there. Turn it on
# (True) only where no other thread runs float32 matmuls during training.
BF16_SCORE_PRODUCTS = False
_BF16_UNITS = ONEDNN_BF16 and hasattr(torch.backends.mkldnn, "matmul")
_PRECISION_LOCK = threading.Lock()  # the precision is process-wide: one thread sets and restores it at a time


@contextmanager
def _float32_products_on_bf16_units(enabled: bool) -> Iterator[None]:
    """Within the block, oneDNN runs float32 matmuls on bf16 units (its fpmath mode ``bf16``):
    for float32 tensors holding bf16 values only, where that is exact. Restored after, also on error.
    Not while compiling (a process-wide setting is no graph op) or where the CPU has no such units."""
    on = enabled and BF16_SCORE_PRODUCTS and _BF16_UNITS and torch.backends.mkldnn.enabled
    if not on or torch.compiler.is_compiling():
        yield
        return
    with _PRECISION_LOCK:
        saved = torch.backends.mkldnn.matmul.fp32_precision
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        try:
            yield
        finally:
            torch.backends.mkldnn.matmul.fp32_precision = saved


def _attend(q: Tensor, k: Tensor, v: Tensor, allowed: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """:func:`math_attention`'s forward, autocast off, on contiguous q, k, v: (output, probabilities
    rounded to ``v``'s dtype)."""
    wide = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    queries = q.to(wide).flatten(0, -3)
    keys = k.to(wide).expand(*q.shape[:-2], *k.shape[-2:]).flatten(0, -3)
    # The scores go into a tensor of our own (the out= form), which selective checkpointing does not
    # keep (it keeps what the matmuls return), so the softmax may overwrite them: one fp32 (S_q, S)
    # tensor per call rather than two. The 1/sqrt(hd) scale is applied to the fp32 sums.
    scores = queries.new_empty(*q.shape[:-1], k.shape[-2])
    flat = scores.flatten(0, -3)
    bf16_values = q.dtype == torch.bfloat16 and k.dtype == torch.bfloat16 and q.device.type == "cpu"
    with _float32_products_on_bf16_units(bf16_values):
        torch.baddbmm(flat, queries, keys.transpose(-2, -1), beta=0, alpha=q.shape[-1] ** -0.5, out=flat)
    if allowed is not None:
        scores.masked_fill_(~allowed, float("-inf"))
    probs = torch.ops.aten._softmax.out(scores, -1, False, out=scores)
    if allowed is not None and (torch.compiler.is_compiling() or not bool(allowed.any(dim=-1).all())):
        probs = probs.nan_to_num_(0.0)  # a row with every key blocked: zeros, not NaN
    probs = probs.to(v.dtype)
    return probs @ v, probs


def _attend_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`_attend` for q, k and v, in the probabilities' dtype, autocast off.

    dS = P (dP - rowsum(dP P)) is one pass of the native softmax backward in that dtype (accumulated
    in fp32, rounded once), so that all four products run in it (bf16 GEMMs, not fp32 ones) and none
    needs a transposed (S_q, S) copy; the 1/sqrt(hd) scale is applied inside the products for q and k.
    """
    scale = q.shape[-1] ** -0.5
    grad_out = grad_out.to(v.dtype).contiguous()
    grad_v = (grad_out.transpose(-2, -1) @ probs).transpose(-2, -1)
    # blocked keys (and rows with no key) have probability 0, so their scores get no gradient
    grad_probs = grad_out @ v.transpose(-2, -1)
    grad_scores = torch.ops.aten._softmax_backward_data.out(  # in place on dP, row by row
        grad_probs, probs, -1, probs.dtype, grad_input=grad_probs
    )
    batch = grad_scores.shape[:-2]
    flat_scores = grad_scores.flatten(0, -3)
    keys = k.to(probs.dtype).expand(*batch, *k.shape[-2:]).flatten(0, -3)
    queries_t = q.to(probs.dtype).flatten(0, -3).transpose(-2, -1)
    grad_q = torch.baddbmm(flat_scores.new_empty(()), flat_scores, keys, beta=0, alpha=scale)
    grad_k = torch.baddbmm(flat_scores.new_empty(()), queries_t, flat_scores, beta=0, alpha=scale)
    return grad_q.view(q.shape), grad_k.view(*batch, *k.shape[-1:], k.shape[-2]).transpose(-2, -1), grad_v


class _MathAttention(torch.autograd.Function):
    """:func:`math_attention` with a hand-written backward that saves q, k, v and the probabilities
    as rounded for the product with v, nothing else (autograd through the same ops would also keep
    fp32 copies of q, k and the probabilities: ~3x the memory)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, allowed: Optional[Tensor]) -> Tensor:
        with torch.autocast(q.device.type, enabled=False):
            # One copy each (q, k, v are usually strided views of a fused projection): every product
            # here and in backward then reads them, or their transposes, without a copy of its own.
            q, k, v = (t.contiguous() for t in (q, k, v))
            out, probs = _attend(q, k, v, allowed)
        ctx.save_for_backward(q, k, v, probs)
        return out

    @staticmethod
    @once_differentiable  # the backward is not itself differentiable: a gradient of it raises
    def backward(ctx, grad_out: Tensor) -> tuple[Optional[Tensor], ...]:
        q, k, v, probs = ctx.saved_tensors
        with torch.autocast(q.device.type, enabled=False):
            grad_q, grad_k, grad_v = _attend_backward(grad_out, q, k, v, probs)
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v, None


class _MathSelfAttention(torch.autograd.Function):
    """:func:`math_attention` over a fused projection's output (B, S, 3 * H * hd), laid out as
    (B, S, 3, H, hd): the values of :class:`_MathAttention` on its q, k and v, and the gradient
    written straight into that layout in one pass (through q, k and v separately, autograd stacks
    their gradients and then copies the stack into the projection's layout: two passes)."""

    @staticmethod
    def forward(ctx, qkv: Tensor, num_heads: int, allowed: Optional[Tensor]) -> Tensor:
        b, s, width = qkv.shape
        with torch.autocast(qkv.device.type, enabled=False):
            heads = qkv.view(b, s, 3, num_heads, width // (3 * num_heads)).permute(2, 0, 3, 1, 4)
            q, k, v = (t.contiguous() for t in heads.unbind(0))
            out, probs = _attend(q, k, v, allowed)
        ctx.save_for_backward(q, k, v, probs)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Optional[Tensor], ...]:
        q, k, v, probs = ctx.saved_tensors
        with torch.autocast(q.device.type, enabled=False):
            grads = _attend_backward(grad_out, q, k, v, probs)
            grad = torch.stack([g.transpose(1, 2).to(q.dtype) for g in grads], dim=2)  # (B, S, 3, H, hd)
        return grad.flatten(2), None, None


def check_heads(embed_dim: int, num_heads: int, dropout: float, bias: bool) -> None:
    """An attention layer's argument checks, naming the argument: sizes ints >= 1, ``embed_dim`` a multiple of
    ``num_heads``, ``dropout`` in [0, 1), ``bias`` a bool."""
    check_int("embed_dim", embed_dim, 1)
    check_int("num_heads", num_heads, 1)
    check_dropout("dropout", dropout)
    check_bool("bias", bias)
    if embed_dim % num_heads != 0:
        raise ValueError(
            f"embed_dim must be a positive multiple of num_heads, got embed_dim={embed_dim}, num_heads={num_heads}"
        )


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with one fused QKV projection and the fused SDPA kernel (:func:`math_attention`
    where SDPA's CPU backward is slow: bf16 training over short sequences, see :func:`math_attention_wins`).

    Args:
        embed_dim (int): width D of the input and output.
        num_heads (int): number of heads H; ``embed_dim`` must be divisible by it.
        dropout (float): dropout on the attention probabilities, active in training only.
        bias (bool): whether the projections have biases.
        is_causal (bool): each query attends only to keys at or before its own position (a text
            decoder's or CLIP's text tower); SDPA's causal kernel runs when no other mask is given.

    Raises:
        TypeError: if a size is not an int, ``dropout`` not a number, or ``bias`` or ``is_causal`` not a bool.
        ValueError: if ``embed_dim`` is not divisible by ``num_heads`` or ``dropout`` is not in [0, 1).
    """

    def __init__(
        self, embed_dim: int, num_heads: int, *, dropout: float = 0.0, bias: bool = True, is_causal: bool = False
    ) -> None:
        super().__init__()
        check_heads(embed_dim, num_heads, dropout, bias)
        check_bool("is_causal", is_causal)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.is_causal = is_causal
        self.qkv = Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias)

    def forward(
        self,
        x: Tensor,
        *,
        key_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        query_positions: Optional[Positions] = None,
    ) -> Tensor:
        """Attend every position to every position not masked out.

        Args:
            x (Tensor): (B, S, D) input.
            key_padding_mask (Optional[Tensor]): (B, S) bool, ``True`` marks keys to ignore.
            attn_mask (Optional[Tensor]): (B, S, S) or (S, S) bool, ``True`` blocks query i from key j.
            query_positions (Optional[Positions]): a slice, (P,) or (B, P) indices of the only
                positions whose output is wanted: queries are computed for them alone (keys and
                values for all S); or a (B, S) bool mask of them (their projections computed alone).

        Returns:
            Tensor: (B, S, D) output after the output projection; (B, P, D) with ``query_positions``
            ((T, D), the selected positions in row-major order, for a mask).

        Raises:
            TypeError: if a mask is not a bool tensor, or ``x`` not of the parameters' dtype (outside autocast
                over fp32 parameters).
            ValueError: if ``x`` is not a (B, S, embed_dim) floating-point tensor on the parameters' device, or
                a mask's shape or device does not fit it.
        """
        check_hidden_states(x, self.embed_dim)
        check_input_dtype(x, self.qkv.weight if isinstance(self.qkv, nn.Linear) else None)  # (PackedLinear casts)
        b, s, d = x.shape
        for name, mask, shapes in (
            ("key_padding_mask", key_padding_mask, [(b, s)]),
            ("attn_mask", attn_mask, [(s, s), (b, s, s)]),
        ):
            if mask is not None and (not isinstance(mask, Tensor) or mask.dtype != torch.bool):
                raise TypeError(f"{name} must be a bool tensor (True = masked), got {_describe(mask)}")
            if mask is not None and mask.device != x.device:  # (a meta mask gave garbage values, silently)
                raise ValueError(f"{name} must be on x's device {x.device}, got {mask.device}")
            if mask is not None and tuple(mask.shape) not in shapes:
                expected = " or ".join(str(shape) for shape in shapes)
                raise ValueError(
                    f"{name} must have shape {expected} for x of shape {(b, s, d)}, got {tuple(mask.shape)}"
                )
        if attn_mask is not None and attn_mask.dim() == 2:  # one (S, S) mask for every row
            attn_mask = attn_mask.expand(b, s, s)
        qkv = None
        selected = query_positions if is_position_mask(query_positions) else None
        if selected is not None:  # every query computed, the unselected ones from zeros, and dropped after
            check_position_mask(selected, x, "query_positions")
            query_positions = None
            q, k, v = self._project_subset(x, selected)
        elif query_positions is None:
            # (B, S, 3D) -> (3, B, H, S, hd)
            qkv = self.qkv(x)
            q, k, v = qkv.view(b, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = self._project_subset(x, query_positions)
            attn_mask = None if attn_mask is None else take_positions(attn_mask, query_positions)
        dropout_p = self.dropout if self.training else 0.0
        use_math = dropout_p == 0.0 and math_attention_wins(q, k, v)
        causal_only = self.is_causal and key_padding_mask is None and attn_mask is None and query_positions is None
        if causal_only and not use_math:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            allowed = self._allowed(s, key_padding_mask, attn_mask, query_positions, x.device)
            if use_math and qkv is not None:
                out = _MathSelfAttention.apply(qkv, self.num_heads, allowed)
            elif use_math:
                out = math_attention(q, k, v, allowed)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)
        out = out.transpose(1, 2).reshape(b, q.shape[2], d)  # (B, H, S_q, hd) -> (B, S_q, D)
        return self.out_proj(out if selected is None else out[selected])

    def _allowed(
        self,
        s: int,
        key_padding_mask: Optional[Tensor],
        attn_mask: Optional[Tensor],
        query_positions: Optional[Positions],
        device: torch.device,
    ) -> Optional[Tensor]:
        """SDPA's boolean mask (True = may attend), broadcastable to (B, H, S_q, S); None when all may."""
        allowed = None
        if key_padding_mask is not None:
            allowed = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
        if attn_mask is not None:
            blocked = attn_mask[:, None]  # (B, 1, S_q, S)
            allowed = ~blocked if allowed is None else allowed & ~blocked
        if self.is_causal:
            query = _query_index(query_positions, s, device)[..., None]  # (S_q, 1) or (B, P, 1)
            query = query[None, None] if query.dim() == 2 else query[:, None]  # (1 | B, 1, S_q, 1)
            keys = torch.arange(s, device=device)
            causal = keys <= query  # (1 | B, 1, S_q, S)
            allowed = causal if allowed is None else allowed & causal  # a query left with no key gives zeros
        return allowed

    def _project_subset(self, x: Tensor, query_positions: Positions) -> tuple[Tensor, Tensor, Tensor]:
        """Queries for the selected positions only, keys and values for all: (B, H, P | S, hd); for a
        (B, S) mask, (B, H, S, hd) queries, zeros at the positions it does not select."""
        b, s, d = x.shape
        if type(self.qkv) in (Linear, nn.Linear) and not hooked(self.qkv):  # (a subclass or a hook: call it)
            w, bias = self.qkv.weight, self.qkv.bias
            q = linear(take_positions(x, query_positions), w[:d], None if bias is None else bias[:d])
            kv = linear(x, w[d:], None if bias is None else bias[d:])
        else:  # a projection whose weight cannot be sliced (e.g. PackedLinear): project all, keep some
            qkv = self.qkv(x)
            q, kv = take_positions(qkv, query_positions)[..., :d], qkv[..., d:]
        if is_position_mask(query_positions):  # (T, D) -> (B, S, D)
            q = q.new_zeros(b, s, d).index_put((query_positions,), q)
        # (B, P, D) -> (B, H, P, hd): P named, as an empty batch leaves -1 ambiguous
        q = q.reshape(b, q.shape[1], self.num_heads, self.head_dim).transpose(1, 2)
        k, v = kv.view(b, s, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v
