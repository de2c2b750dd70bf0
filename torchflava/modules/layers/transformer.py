"""Pre-norm transformer encoder layer and a stack of them; a layer may also cross-attend to a memory.

Shapes: x (B, S, D) -> (B, S, D); key_padding_mask (B, S) bool, ``True = padding``;
attn_mask (B, S, S) bool, ``True`` = query i may not attend to key j; memory (B, S_m, D_kv), another
sequence (e.g. an image tower's output) that layers with a ``cross_attn`` attend to, and
memory_padding_mask (B, S_m) bool, ``True = padding``.
"""

import functools
import inspect
from typing import Iterable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from torchflava.modules.layers.attention import (
    MultiHeadSelfAttention,
    Positions,
    check_hidden_states,
    check_position_mask,
    is_position_mask,
    take_positions,
)
from torchflava.modules.layers.cross_attention import check_memory
from torchflava.modules.layers.linear import Linear
from torchflava.modules.layers.mlp import can_overwrite
from torchflava.utils.checks import check_bool, check_dropout, check_input_dtype, check_module, describe_tensor

_aten = torch.ops.aten
# Ops whose outputs selective checkpointing keeps: the matmuls and fused attention, i.e. the work
# that is expensive to redo. Everything else in a layer (norms, GELU, residual adds, reshapes,
# dtype casts) is recomputed in backward from those and from the layer's input.
_ATTENTION_KERNELS = ("flash_attention_for_cpu", "flash_attention", "efficient_attention", "cudnn_attention")
_SAVED_BY_SELECTIVE = frozenset(
    getattr(namespace, name).default
    for namespace, names in (
        (_aten, ("mm", "addmm", "bmm", "baddbmm", *(f"_scaled_dot_product_{k}" for k in _ATTENTION_KERNELS))),
        (torch.ops.mkldnn, ("_linear_pointwise",)),  # torchflava's fp32 linear on oneDNN (layers/linear.py)
    )
    for name in names
    if hasattr(namespace, name)
)

CHECKPOINT_MODES = ("none", "selective", "full")


def _save_matmuls_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_BY_SELECTIVE else CheckpointPolicy.PREFER_RECOMPUTE


_selective_contexts = functools.partial(create_selective_checkpoint_contexts, _save_matmuls_policy)


def run_checkpointed(layer, x: Tensor, mode: str, **kwargs) -> Tensor:
    """``layer(x, **kwargs)``, keeping for backward what ``mode`` (one of :data:`CHECKPOINT_MODES`) says.

    Called inside a compiled region (a :class:`TransformerEncoderLayer`'s forward under
    ``torch.compile``), the checkpoint is traced into the graph and selective checkpointing's policy is
    applied when the graph is compiled; eagerly, selective checkpointing decides op by op at run time.
    Under ``torch.func`` transforms (``grad``, ``vmap``: per-sample gradients) the layer runs plainly, keeping
    everything (the same values): their autograd has no saved-tensors hooks, which checkpointing is made of.
    """
    if mode == "none" or (not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()):
        # (torch.func.grad over a checkpointed layer failed inside torch: "don't yet support saved tensor hooks")
        return layer(x, **kwargs)
    if mode == "selective":
        return checkpoint(
            _without_autocast_cache, layer, x, use_reentrant=False, context_fn=_selective_contexts, **kwargs
        )
    return checkpoint(layer, x, use_reentrant=False, **kwargs)


def _without_autocast_cache(layer, x: Tensor, **kwargs) -> Tensor:
    """``layer(x, **kwargs)`` with autocast's weight-cast cache off, if autocast is on.

    Selective checkpointing replays a layer's forward op by op in backward. Autocast caches each
    weight's cast on its first use, so a second pass through the same layer in one autocast region
    (a FLAVA pair step's masked and unmasked passes) issues no casts, while its recomputation does:
    the replay no longer matches. Casting on every call makes forward and replay issue the same ops.
    """
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return layer(x, **kwargs)
    with torch.autocast(device, dtype=torch.get_autocast_dtype(device), cache_enabled=False):
        return layer(x, **kwargs)


def checkpoint_mode(value: Union[bool, str], name: str = "checkpoint_activations") -> str:
    """Normalise an activation-checkpointing setting to one of :data:`CHECKPOINT_MODES`.

    ``False``/``"none"``: store every activation. ``"selective"``: store the outputs of the matmuls
    and of attention, recompute the cheap elementwise work (norms, GELU, residual adds) in
    backward, and the CPU matmul attention's fp32 scores (its (S, S) product with the keys, which
    kept would be a layer's largest tensor): about a third less activation memory for a few
    percent more time when the layer is compiled (the policy goes into its graph) or the device is
    slow; eagerly each op is a Python decision (~40 µs on a GPU's host, which made a small-batch
    GPU step 3.6x slower). ``True``/``"full"``: store only each layer's input and recompute the
    whole layer (one more forward).

    Args:
        value (Union[bool, str]): the setting.
        name (str): the argument's name, for the error.

    Returns:
        str: one of ``CHECKPOINT_MODES``.

    Raises:
        ValueError: if ``value`` is neither a bool nor one of ``CHECKPOINT_MODES``.
    """
    if isinstance(value, bool):
        return "full" if value else "none"
    if isinstance(value, str) and value in CHECKPOINT_MODES:
        return value
    raise ValueError(f"{name} must be a bool or one of {CHECKPOINT_MODES}, got {value!r}")


class TransformerOutput(NamedTuple):
    """Output of :class:`TransformerEncoder`.

    Attributes:
        last_hidden_state (Tensor): (B, S, D) output of the last layer.
        hidden_states (Optional[tuple[Tensor, ...]]): num_layers + 1 tensors of (B, S, D): the input,
            then each layer's output. None unless requested.
    """

    last_hidden_state: Tensor
    hidden_states: Optional[tuple[Tensor, ...]] = None


_LAYER_PARTS = ("attn_norm", "attn", "mlp_norm", "mlp")
_CROSS_PARTS = ("cross_attn_norm", "cross_attn")  # optional: both or neither


def residual_widths(name: str, part: nn.Module) -> list[tuple[str, int]]:
    """``(label, width)`` for each width of the residual stream that ``part`` (called ``name``) reads or
    writes, where its attributes tell: an embedding's or attention's ``embed_dim``, an MLP's ``fc1``
    input and ``fc2`` output, a norm's ``normalized_shape``; a stack by its first layer (with
    :func:`sequential_mlp_widths`); a tower (an
    ``encoder`` stack and a final ``norm``) by its norm. Empty for a part that tells none (it is trusted)."""
    if isinstance(part, TransformerEncoder):
        return residual_widths(f"{name}.layers[0]", part.layers[0]) if len(part.layers) else []
    if isinstance(part, TransformerEncoderLayer):
        subs = [sub for sub in _LAYER_PARTS + _CROSS_PARTS if getattr(part, sub, None) is not None]
        found = [pair for sub in subs for pair in residual_widths(f"{name}.{sub}", getattr(part, sub))]
        return found + sequential_mlp_widths(f"{name}.mlp", part.mlp)
    encoder, norm = getattr(part, "encoder", None), getattr(part, "norm", None)
    if isinstance(encoder, TransformerEncoder) and isinstance(norm, nn.Module):  # a tower (VisionEncoder,
        # TextEncoder, MultimodalEncoder: their parts checked when built): the width its final norm outputs
        return residual_widths(f"{name}.norm", norm) or residual_widths(f"{name}.encoder", encoder)
    found = []
    if isinstance(getattr(part, "embed_dim", None), int):  # our embeddings and attention, nn.MultiheadAttention
        found.append((f"{name}.embed_dim", part.embed_dim))
    for attr, side in (("fc1", "in_features"), ("fc2", "out_features")):  # MLP
        if isinstance(getattr(getattr(part, attr, None), side, None), int):
            found.append((f"{name}.{attr}.{side}", getattr(getattr(part, attr), side)))
    shape = getattr(part, "normalized_shape", None)  # LayerNorm, RMSNorm
    if isinstance(shape, (tuple, list)) and len(shape) == 1 and isinstance(shape[0], int):
        found.append((f"{name}.normalized_shape", shape[0]))
    return found


def sequential_mlp_widths(name: str, mlp: object) -> list[tuple[str, int]]:
    """The residual stream's widths that a layer's ``mlp`` written as an ``nn.Sequential`` (open_clip's
    ``c_fc``, ``gelu``, ``c_proj``) reads and writes: its first ``nn.Linear``'s input and its last one's
    output; empty for anything else. (Only a layer's MLP: a projection head may change the width.)"""
    if not isinstance(mlp, nn.Sequential) or not len(mlp):
        return []
    last = len(mlp) - 1
    return linear_width(f"{name}[0]", mlp[0], "in_features") + linear_width(
        f"{name}[{last}]", mlp[last], "out_features"
    )


def linear_width(name: str, part: object, side: str) -> list[tuple[str, int]]:
    """``[(f"{name}.{side}", width)]`` for an ``nn.Linear`` ``part`` (``side``: ``"in_features"`` or
    ``"out_features"``), for :func:`check_parts`; empty for anything else (trusted)."""
    return [(f"{name}.{side}", getattr(part, side))] if isinstance(part, nn.Linear) else []


def check_shared_space(owner: str, **towers: tuple[nn.Module, nn.Module]) -> None:
    """Check towers projected into one shared space (CLIP's and FLAVA's image and text), each given as
    ``name=(encoder, projection)`` and named ``{name}_encoder``, ``{name}_projection`` in errors: TypeError
    if a part is no module; ValueError naming ``owner`` if a tower's width (see :func:`residual_widths`) is
    not its projection's input width, or the projections' output widths differ (where they are ``nn.Linear``)."""
    outputs = []
    for name, (encoder, projection) in towers.items():
        reads = linear_width(f"{name}_projection", projection, "in_features")
        check_parts(owner, {f"{name}_encoder": encoder, f"{name}_projection": projection}, reads)
        outputs += linear_width(f"{name}_projection", projection, "out_features")
    check_parts(owner, {}, outputs)


def check_parts(
    owner: str, parts: dict, widths: Sequence[tuple[str, int]] = (), *, optional: Sequence[str] = ()
) -> None:
    """TypeError naming a part of ``parts`` (name -> module; those named in ``optional`` may be None, and are
    then left out) that is no module; ValueError naming
    ``owner`` and every width found if the parts (see :func:`residual_widths`) and the given ``widths``
    do not all agree: parts composed with different widths would otherwise fail only in the first
    forward, deep inside torch."""
    for name, part in parts.items():
        check_module(name, part, optional=name in optional)
    parts = {name: part for name, part in parts.items() if part is not None}
    found = [*widths, *(pair for name, part in parts.items() for pair in residual_widths(name, part))]
    if len({width for _, width in found}) > 1:
        described = ", ".join(f"{label} {width}" for label, width in found)
        raise ValueError(f"{owner}: the parts must share one width, got {described}")


class TransformerEncoderLayer(nn.Module):
    """Pre-norm block: ``h = x + drop(attn(attn_norm(x)))``, ``out = h + drop(mlp(mlp_norm(h)))``.

    With a ``cross_attn`` (a decoder's or a fusion encoder's layer) a cross-attention sub-block runs between
    the two: ``h = h + drop(cross_attn(cross_attn_norm(h), memory))``, each position of the stream attending
    to its row's ``memory`` (e.g. an image tower's states), which every call then passes.

    Args:
        attn (nn.Module): self-attention called as ``attn(x, *, key_padding_mask, attn_mask)``, and
            also with ``query_positions=`` (then returning (B, P, D)) when only some positions'
            outputs are asked for (e.g. a CLS-only last layer), where its forward takes that keyword
            (:class:`MultiHeadSelfAttention` does); one whose forward lacks it attends from every position,
            and the layer keeps its output at those positions.
        mlp (nn.Module): feed-forward block.
        attn_norm (nn.Module): norm before attention.
        mlp_norm (nn.Module): norm before the MLP.
        dropout (float): dropout on every residual branch.
        cross_attn (Optional[nn.Module]): cross-attention called as ``cross_attn(h, memory,
            memory_padding_mask=...)`` returning (B, S, D), as
            :class:`~torchflava.modules.layers.MultiHeadCrossAttention` is; None (the default): none.
        cross_attn_norm (Optional[nn.Module]): norm before the cross-attention; given with ``cross_attn``
            only.

    Raises:
        TypeError: if a part is not a module, ``attn``'s forward cannot be called as above (torch's
            ``nn.MultiheadAttention`` requires key and value too), ``cross_attn``'s as above, or ``dropout``
            not a number.
        ValueError: if the parts' widths, where they can be read (an attention's ``embed_dim``, an
            MLP's ``fc1`` input and ``fc2`` output, or an ``nn.Sequential`` MLP's first and last linear
            layer's, a norm's ``normalized_shape``), differ, ``dropout`` is not in [0, 1), or one of
            ``cross_attn`` and ``cross_attn_norm`` is given without the other.
    """

    def __init__(
        self,
        attn: nn.Module,
        mlp: nn.Module,
        *,
        attn_norm: nn.Module,
        mlp_norm: nn.Module,
        dropout: float = 0.0,
        cross_attn: Optional[nn.Module] = None,
        cross_attn_norm: Optional[nn.Module] = None,
    ) -> None:
        if (cross_attn is None) != (cross_attn_norm is None):
            given, missing = (
                ("cross_attn", "cross_attn_norm") if cross_attn is not None else ("cross_attn_norm", "cross_attn")
            )
            raise ValueError(
                f"TransformerEncoderLayer: {given} needs {missing} too (both or neither), got {missing}=None"
            )
        parts = dict(zip(_LAYER_PARTS, (attn_norm, attn, mlp_norm, mlp)))
        check_parts(
            "TransformerEncoderLayer",
            {**parts, "cross_attn_norm": cross_attn_norm, "cross_attn": cross_attn},
            sequential_mlp_widths("mlp", mlp),
            optional=_CROSS_PARTS,
        )
        _check_self_attention(attn)
        if cross_attn is not None:
            _check_cross_attention(cross_attn)
        check_dropout("dropout", dropout)
        super().__init__()
        # the stream's width where a part tells it (None: any), checked on the input before the norm sees it
        self.embed_dim = next((w for name, part in parts.items() for _, w in residual_widths(name, part)), None)
        # whether attn computes chosen queries alone, read once per attention module (a signature per call costs,
        # and breaks graphs; an attn replaced after building is read anew); one whose forward lacks query_positions
        # attends from every position, and the layer then keeps those
        self._positions_read = (attn, not missing_keywords(attn, ("query_positions",)))
        self.attn_norm = attn_norm
        self.attn = attn
        self.cross_attn_norm = cross_attn_norm  # (None: a plain attribute, nothing in the state dict)
        self.cross_attn = cross_attn
        self.mlp_norm = mlp_norm
        self.mlp = mlp
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        *,
        key_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        query_positions: Optional[Positions] = None,
        memory: Optional[Tensor] = None,
        memory_padding_mask: Optional[Tensor] = None,
        checkpointing: Union[bool, str] = "none",
    ) -> Tensor:
        """Run the block.

        Args:
            x (Tensor): (B, S, D).
            key_padding_mask (Optional[Tensor]): (B, S) bool, ``True = padding``.
            attn_mask (Optional[Tensor]): (B, S, S) bool, ``True = blocked``.
            query_positions (Optional[Positions]): a slice, (P,) or (B, P) indices, or a (B, S) bool
                mask: positions whose output alone is computed.
            memory (Optional[Tensor]): (B, S_m, D_kv), what ``cross_attn`` attends to: given exactly when the
                layer has one.
            memory_padding_mask (Optional[Tensor]): (B, S_m) bool, ``True = padding``; with ``memory`` only.
            checkpointing (Union[bool, str]): see :func:`checkpoint_mode`, what the block keeps for backward
                (:class:`TransformerEncoder` passes its setting). Inside the forward, so that a compiled
                block compiles its checkpointing too.

        Returns:
            Tensor: (B, S, D), or (B, P, D) with ``query_positions`` ((B, S, D) for a mask, zeros at
            the positions it does not select: computed for the selected ones alone, or, compiled,
            for all and then zeroed).

        Raises:
            ValueError: if ``x`` is not a (B, S, D) floating-point tensor of the layer's width; if ``memory`` is
                given to a layer without ``cross_attn``, or missing for one with it, is not a (B, S_m, D_kv)
                floating-point tensor of x's batch size and device (D_kv the ``cross_attn``'s ``kv_dim``
                where it tells it), or ``memory_padding_mask`` comes without it or is not (B, S_m).
            TypeError: if ``x`` (or ``memory``) is not of the dtype of the attention's (cross-attention's)
                parameters (an fp32 input into a bf16 layer), except under autocast over fp32 parameters or
                off the CPU; if ``memory_padding_mask`` is not a bool tensor.
        """
        check_hidden_states(x, self.embed_dim)
        _check_stream_dtype(x, self.attn)
        cross = {}
        if memory is not None or memory_padding_mask is not None or self.cross_attn is not None:
            self._check_memory(x, memory, memory_padding_mask)
            cross = {"memory": memory, "memory_padding_mask": memory_padding_mask}
        mode = checkpoint_mode(checkpointing, "checkpointing")
        selected = query_positions if is_position_mask(query_positions) else None
        if selected is not None:
            check_position_mask(selected, x, "query_positions")
            if torch.compiler.is_compiling():  # a graph holds no data-dependent shape: compute all, zero some
                out = run_checkpointed(
                    self._block, x, mode, key_padding_mask=key_padding_mask, attn_mask=attn_mask, **cross
                )
                return out.masked_fill(~selected[..., None], 0.0)
        out = run_checkpointed(
            self._block,
            x,
            mode,
            key_padding_mask=key_padding_mask,
            attn_mask=attn_mask,
            query_positions=query_positions,
            **cross,
        )
        if selected is not None:  # (T, D) -> (B, S, D), zeros where not selected (outside the checkpointed
            # region: a recomputation then stops at fc2, as for every other layer)
            out = out.new_zeros(*selected.shape, out.shape[-1]).index_put((selected,), out)
        return out

    def _check_memory(self, x: Tensor, memory: object, memory_padding_mask: object) -> None:
        """The errors of :meth:`forward` for ``memory`` and ``memory_padding_mask``, before any work."""
        if self.cross_attn is None:
            given, value = ("memory", memory) if memory is not None else ("memory_padding_mask", memory_padding_mask)
            raise ValueError(f"{given} must be None for a layer without cross_attn, got {describe_tensor(value)}")
        if memory is None:
            raise ValueError(
                "memory must be given to a layer with cross_attn (the (B, S_m, D_kv) states it attends to), got None"
            )
        kv_dim = getattr(self.cross_attn, "kv_dim", None)
        check_memory(memory, memory_padding_mask, x, kv_dim if isinstance(kv_dim, int) else None)
        weight = getattr(self.cross_attn, "kv_proj", None)  # the parameter that reads memory, where it tells it
        weight = weight.weight if isinstance(weight, nn.Linear) else _first_floating_parameter(self.cross_attn)
        check_input_dtype(memory, weight, "memory")  # (no walk of the module tree per training call)

    def _attn_takes_positions(self) -> bool:
        """Whether ``self.attn``'s forward takes ``query_positions`` (read when first asked of this module)."""
        read, takes = self._positions_read
        if read is not self.attn:  # (the attention was replaced after the layer was built)
            takes = not missing_keywords(self.attn, ("query_positions",))
            self._positions_read = (self.attn, takes)
        return takes

    def _block(
        self,
        x: Tensor,
        *,
        key_padding_mask: Optional[Tensor],
        attn_mask: Optional[Tensor],
        query_positions: Optional[Positions] = None,
        memory: Optional[Tensor] = None,
        memory_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        passed = query_positions is not None and self._attn_takes_positions()  # a user's attn may lack the keyword
        positions = {"query_positions": query_positions} if passed else {}
        attended = self.attn(self.attn_norm(x), key_padding_mask=key_padding_mask, attn_mask=attn_mask, **positions)
        if query_positions is not None:
            x = take_positions(x, query_positions)
            if not passed:  # every position attended: keep the chosen ones (their values, for more work)
                attended = take_positions(attended, query_positions)
        attended = self.dropout(attended)
        if (
            type(self.attn) is MultiHeadSelfAttention  # its output is its out_proj's fresh tensor, a user's may not be
            and attended.dtype == x.dtype  # (under autocast a bf16 branch joins an fp32 stream: the sum is fp32)
            and not torch.is_grad_enabled()  # (first: training walks no module tree per call)
            and can_overwrite(*self.attn.modules(), self.dropout)
        ):  # write the sum into the branch's memory: one (B, S, D) tensor fewer for the MLP to sit beside
            x = attended.add_(x)
        else:
            x = x + attended
        del attended
        if self.cross_attn is not None:
            x = x + self.dropout(self._cross_attend(x, memory, memory_padding_mask, query_positions))
        update = self.dropout(self.mlp(self.mlp_norm(x)))
        if not torch.is_grad_enabled() and can_overwrite(self.mlp_norm, *self.mlp.modules()):  # x is the fresh
            # sum above, kept by nothing (the MLP sees x itself under an identity norm): reuse its memory
            return x.add_(update)
        return x + update

    def _cross_attend(
        self, x: Tensor, memory: Tensor, memory_padding_mask: Optional[Tensor], query_positions: Optional[Positions]
    ) -> Tensor:
        """The cross-attention branch for the stream ``x``: (B, S | P, D), or (T, D) for a bool mask of positions
        (put back in their rows, zeros elsewhere, so that each attends to its own row's memory: queries
        attend independently, so the others change nothing)."""
        normed = self.cross_attn_norm(x)
        if not is_position_mask(query_positions):
            return self.cross_attn(normed, memory, memory_padding_mask=memory_padding_mask)
        rows = normed.new_zeros(*query_positions.shape, normed.shape[-1]).index_put((query_positions,), normed)
        return self.cross_attn(rows, memory, memory_padding_mask=memory_padding_mask)[query_positions]


_LAYER_KEYWORDS = ("key_padding_mask", "attn_mask", "query_positions")


def _check_stream_dtype(x: Tensor, attn: nn.Module, name: str = "x") -> None:
    """:func:`~torchflava.utils.checks.check_input_dtype` of ``x`` against ``attn``'s (a layer's attention's)
    first floating parameter, whatever the attention is. An fp32 stream into a bf16 model (e.g. a user's fp32
    position table added to bf16 tokens), or a bf16 one into an fp32 model outside autocast, failed inside
    torch, naming nothing (mixed dtype (CPU): expect parameter to have scalar type of Float; mat1 and mat2
    must have the same dtype)."""
    check_input_dtype(x, _first_floating_parameter(attn), name)


def _first_floating_parameter(module: nn.Module) -> Optional[Tensor]:
    """The first floating-point parameter that ``module.parameters()`` yields (None: it has none).

    Read on every forward: for the attention this module builds (a :class:`MultiHeadSelfAttention` of no
    parameter of its own, its first part the ``qkv`` :class:`~torchflava.modules.layers.linear.Linear` it made)
    that is ``qkv.weight``, read directly, as registered now (converted, loaded with ``assign=True``, or FSDP2's);
    any other attention, or one whose parts were replaced (:func:`pack_linears`), takes the walk itself.
    """
    if type(module) is MultiHeadSelfAttention and not module._parameters:
        first = next(iter(module._modules.values()), None)
        weight = first._parameters.get("weight") if type(first) is Linear else None
        if weight is not None and next(iter(first._parameters)) == "weight" and weight.is_floating_point():
            return weight
    return next((p for p in module.parameters() if p.is_floating_point()), None)


def _check_self_attention(attn: nn.Module) -> None:
    """TypeError naming ``attn`` unless its forward can be called as a layer calls it, ``attn(x,
    key_padding_mask=..., attn_mask=...)``: torch's ``nn.MultiheadAttention`` (query, key, value) was built
    and failed in the first forward, in torch's words (missing 2 required positional arguments)."""
    try:
        parameters = list(inspect.signature(attn.forward).parameters.values())
    except (TypeError, ValueError):  # no signature to read: trusted
        return
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p.name for p in parameters if p.kind in positional and p.default is inspect.Parameter.empty]
    missing = missing_keywords(attn, _LAYER_KEYWORDS[:2])
    if len(required) > 1 or missing:
        lacks = f"requires {', '.join(required[1:])} too" if len(required) > 1 else f"lacks {', '.join(missing)}"
        raise TypeError(
            f"attn ({type(attn).__module__}.{type(attn).__qualname__}) must be a self-attention called as "
            f"attn(x, key_padding_mask=..., attn_mask=...) returning (B, S, D), as "
            f"torchflava.modules.layers.MultiHeadSelfAttention is; its forward {lacks}"
        )


def _check_cross_attention(cross_attn: nn.Module) -> None:
    """TypeError naming ``cross_attn`` unless its forward can be called as a layer calls it, ``cross_attn(x,
    memory, memory_padding_mask=...)``: torch's ``nn.MultiheadAttention`` (query, key, value) failed in the
    first forward otherwise, in torch's words."""
    try:
        parameters = list(inspect.signature(cross_attn.forward).parameters.values())
    except (TypeError, ValueError):  # no signature to read: trusted
        return
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    takes_two = sum(p.kind in positional for p in parameters) >= 2 or any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters
    )
    required = [p.name for p in parameters if p.kind in positional and p.default is inspect.Parameter.empty]
    missing = missing_keywords(cross_attn, ("memory_padding_mask",))
    if len(required) > 2 or missing or not takes_two:
        lacks = (
            f"requires {', '.join(required[2:])} too"
            if len(required) > 2
            else f"lacks {', '.join(missing) or 'a second positional argument (memory)'}"
        )
        raise TypeError(
            f"cross_attn ({type(cross_attn).__module__}.{type(cross_attn).__qualname__}) must be a cross-attention "
            "called as cross_attn(x, memory, memory_padding_mask=...) returning (B, S, D), as "
            f"torchflava.modules.layers.MultiHeadCrossAttention is; its forward {lacks}"
        )


def missing_keywords(module: nn.Module, names: Sequence[str]) -> list[str]:
    """The keyword arguments of ``names`` that ``module``'s forward does not take (none when it takes
    ``**kwargs``, or when Python cannot read its signature: trusted as it is)."""
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return []
    taken = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return [name for name in names if name not in taken]


def _check_layer(layer: object, index: int) -> None:
    """TypeError naming ``layers[index]`` unless it is a module whose forward takes the keywords the
    stack passes (or ``**kwargs``)."""
    check_module(f"layers[{index}]", layer)
    if missing := missing_keywords(layer, _LAYER_KEYWORDS):
        raise TypeError(
            f"layers[{index}] ({type(layer).__module__}.{type(layer).__qualname__}) must take the keyword "
            f"arguments {', '.join(_LAYER_KEYWORDS)} in forward, as TransformerEncoderLayer does; it lacks "
            f"{', '.join(missing)}"
        )


def check_stack(owner: str, encoder: nn.Module, keywords: Sequence[str]) -> None:
    """TypeError naming ``owner``'s ``encoder`` unless its forward takes the ``keywords`` the tower passes, as
    :class:`TransformerEncoder` does: a single layer, ``nn.Sequential`` or torch's own encoder failed only in
    the first forward, in torch's words (``TransformerEncoder.forward() got an unexpected keyword argument``)."""
    if missing := missing_keywords(encoder, keywords):
        raise TypeError(
            f"{owner}: encoder ({type(encoder).__module__}.{type(encoder).__qualname__}) must be a stack whose "
            f"forward takes the keyword arguments {', '.join(keywords)}, as "
            "torchflava.modules.layers.TransformerEncoder does (transformer_encoder(...) builds one, "
            f"TransformerEncoder([layer, ...]) wraps layers); it lacks {', '.join(missing)}"
        )


class TransformerEncoder(nn.Module):
    """A stack of encoder layers, with optional per-layer activation checkpointing.

    Args:
        layers (Sequence[nn.Module]): the layers, applied in order: :class:`TransformerEncoderLayer`
            or any module called as ``layer(x, key_padding_mask=..., attn_mask=...,
            query_positions=...)`` that returns the (B, S, D) output (and also with ``memory=...,
            memory_padding_mask=...`` when the stack is given a memory and the layer cross-attends).
        checkpoint_activations (Union[bool, str]): what each layer keeps for backward (see
            :func:`checkpoint_mode`): ``False``/``"none"`` everything, ``"selective"`` only matmul and
            attention outputs, ``True``/``"full"`` only its input. Only in training with grad enabled,
            outside ``torch.func`` transforms (see :func:`run_checkpointed`).
            Can be changed later via the attribute.

    Raises:
        TypeError: if a layer is not a module, or its forward lacks one of those keywords (e.g.
            ``torch.nn.TransformerEncoderLayer``, called with ``src_mask``).
        ValueError: if the layers' widths, where they tell them, differ.
    """

    def __init__(self, layers: Sequence[nn.Module], *, checkpoint_activations: Union[bool, str] = False) -> None:
        super().__init__()
        if not isinstance(layers, Iterable) or isinstance(layers, (str, bytes)):  # (a lone layer is no Iterable)
            raise TypeError(f"layers must be a sequence of layer modules, got {type(layers).__name__}")
        layers = list(layers)  # a generator too, read once
        for index, layer in enumerate(layers):
            _check_layer(layer, index)
        # one width for all (each layer's parts were checked when built): the first width each layer tells
        told = [residual_widths(f"layers[{i}]", layer)[:1] for i, layer in enumerate(layers)]
        check_parts("TransformerEncoder", {}, [pair for pairs in told for pair in pairs])
        self.layers = nn.ModuleList(layers)
        self.checkpoint_activations = checkpoint_activations

    @property
    def checkpoint_activations(self) -> str:
        return self._checkpoint_mode

    @checkpoint_activations.setter
    def checkpoint_activations(self, value: Union[bool, str]) -> None:
        self._checkpoint_mode = checkpoint_mode(value)

    def forward(
        self,
        x: Tensor,
        *,
        key_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        output_positions: Optional[Positions] = None,
        return_hidden_states: bool = False,
        checkpoint_activations: Optional[Union[bool, str]] = None,
        memory: Optional[Tensor] = None,
        memory_padding_mask: Optional[Tensor] = None,
    ) -> TransformerOutput:
        """Run all layers.

        Args:
            x (Tensor): (B, S, D).
            key_padding_mask (Optional[Tensor]): (B, S) bool, ``True = padding``.
            attn_mask (Optional[Tensor]): (B, S, S) bool, ``True = blocked``.
            output_positions (Optional[Positions]): a slice, (P,) or (B, P) indices (per row): positions whose final
                output alone is wanted:
                the last layer computes only those (e.g. the CLS token for pooled features), which
                gives the same values for less work. Or a (B, S) bool mask of them, as many or few in
                each row as wanted (a row's masked tokens, another row's CLS): the output is then
                (B, S, D), zeros at the positions it does not select (not computed).
            return_hidden_states (bool): also return the input and every layer's output.
            checkpoint_activations (Optional[Union[bool, str]]): override the module's setting for this
                call (e.g. to recompute only some of several passes through the same encoder).
            memory (Optional[Tensor]): (B, S_m, D_kv) states the layers with a cross-attention attend to (an
                image tower's output for a captioning decoder or a fusion encoder), passed to those layers
                alone (a :class:`TransformerEncoderLayer` with ``cross_attn``, or a layer whose forward takes
                ``memory``), so that cross-attention may come every k-th layer.
            memory_padding_mask (Optional[Tensor]): (B, S_m) bool, ``True = padding``; with ``memory`` only.

        Returns:
            TransformerOutput: the last layer's output, (B, S, D) or (B, P, D), and, if asked, all
            hidden states (the last one restricted like the output).

        Raises:
            TypeError: if ``return_hidden_states`` is not a bool.
            ValueError: if ``x`` is not a (B, S, D) floating-point tensor of the layers' width, or a bool
                mask of ``output_positions`` is not (B, S); if ``memory`` is given to a stack with no layer that
                takes it (or missing for one with ``cross_attn``), or ``memory_padding_mask`` without ``memory``.
        """
        if not self.layers:  # (a layer checks its input)
            check_hidden_states(x, None)
        check_bool("return_hidden_states", return_hidden_states)  # ("no" is truthy: it kept every layer's output)
        cross = self._memory_kwargs(memory, memory_padding_mask)
        selected = output_positions if is_position_mask(output_positions) else None
        if selected is not None:
            check_position_mask(selected, x, "output_positions")
        hidden_states = [x] if return_hidden_states else None
        mode = (
            self.checkpoint_activations if checkpoint_activations is None else checkpoint_mode(checkpoint_activations)
        )
        if not (self.training and torch.is_grad_enabled()):
            mode = "none"
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            kwargs = dict(
                key_padding_mask=key_padding_mask,
                attn_mask=attn_mask,
                query_positions=output_positions if i == last else None,
                **cross[i],
            )
            if mode == "selective" and type(layer).forward is TransformerEncoderLayer.forward:
                # checkpointed inside the layer: a compiled layer applies the policy when it compiles, where
                # eager selective checkpointing pays for a Python decision per op (the GPU step's bottleneck).
                # Full checkpointing recomputes the layer as called, compiled or not (compiling it inside
                # failed in inductor's partitioner once lengths were dynamic: torch 2.14).
                x = layer(x, checkpointing=mode, **kwargs)
            else:
                x = run_checkpointed(layer, x, mode, **kwargs)
            if hidden_states is not None:
                hidden_states.append(x)
        if not self.layers and output_positions is not None:  # no last layer to restrict: the input's
            x = (
                x.masked_fill(~selected[..., None], 0.0)
                if selected is not None
                else take_positions(x, output_positions)
            )
            if hidden_states is not None:
                hidden_states[-1] = x
        return TransformerOutput(x, None if hidden_states is None else tuple(hidden_states))

    def _memory_kwargs(self, memory: Optional[Tensor], memory_padding_mask: Optional[Tensor]) -> list[dict]:
        """Each layer's memory keywords: for the layers that cross-attend, none for the others (all none
        without a memory: the stack's usual path)."""
        if memory is None:
            if memory_padding_mask is not None:
                raise ValueError(
                    f"memory_padding_mask must come with memory, got memory=None and {describe_tensor(memory_padding_mask)}"
                )
            return [{}] * len(self.layers)
        takes = [
            layer.cross_attn is not None
            if isinstance(layer, TransformerEncoderLayer)
            else not missing_keywords(layer, ("memory", "memory_padding_mask"))
            for layer in self.layers
        ]
        if self.layers and not any(takes):
            raise ValueError(
                "memory must be None for a stack with no layer that attends to it (no TransformerEncoderLayer with "
                f"cross_attn, nor a layer whose forward takes memory), got {describe_tensor(memory)}"
            )
        given = {"memory": memory, "memory_padding_mask": memory_padding_mask}
        return [given if take else {} for take in takes]


def set_activation_checkpointing(model: nn.Module, mode: Union[bool, str]) -> int:
    """Set what every :class:`TransformerEncoder` inside ``model`` keeps for backward.

    Applied to a built model, so builders need no checkpointing argument:
    ``set_activation_checkpointing(flava_model(), "selective")``.

    Args:
        model (nn.Module): any module holding transformer stacks (or one itself).
        mode (Union[bool, str]): see :func:`checkpoint_mode`.

    Returns:
        int: how many stacks were set.

    Raises:
        TypeError: if ``model`` is not an nn.Module.
        ValueError: if ``mode`` is not a checkpointing mode, or ``model`` holds no TransformerEncoder.
    """
    check_module("model", model)  # (a str failed on .modules(), naming nothing)
    mode = checkpoint_mode(mode, "mode")
    stacks = [m for m in model.modules() if isinstance(m, TransformerEncoder)]
    if not stacks:
        raise ValueError(f"model ({type(model).__name__}) holds no TransformerEncoder to set checkpointing on")
    for stack in stacks:
        stack.checkpoint_activations = mode
    return len(stacks)
