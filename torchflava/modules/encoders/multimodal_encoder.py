"""Multimodal (early-fusion) encoder: image states (B, S_i, D_i) + text states (B, L, D_t) -> (B, 1 + S_i + L, D).

Both inputs are linearly projected to width D, concatenated as ``[CLS_M, image..., text...]`` and
run through a transformer stack. Text padding is carried into the fused attention as a key mask; an
``attn_mask`` over the fused sequence shapes who reads whom (e.g. a prefix language model's: text causal,
image and CLS_M not reading the text).
"""

from typing import Optional, Union

import torch
from torch import Tensor, nn

from torchflava.modules.encoders.output import CLS_POSITION, EncoderOutput, encoder_output
from torchflava.modules.encoders.text_encoder import _is_causal
from torchflava.modules.layers.attention import Positions, check_hidden_states
from torchflava.modules.layers.patch_embedding import in_weight_dtype
from torchflava.modules.layers.pooler import Pooler
from torchflava.modules.layers.text_embedding import check_padding_mask
from torchflava.modules.layers.transformer import TransformerEncoder, check_parts, check_stack, linear_width
from torchflava.utils.checks import check_bools, check_int


class MultimodalEncoder(nn.Module):
    """Early-fusion encoder over projected image and text states with a learned CLS token.

    Args:
        image_proj (nn.Module): maps image states to width D.
        text_proj (nn.Module): maps text states to width D.
        encoder (TransformerEncoder): the transformer stack.
        norm (nn.Module): final norm.
        embed_dim (int): width D (size of the CLS token).
        pooler (Optional[nn.Module]): maps (B, S, D) to (B, D); none when None.

    Raises:
        TypeError: if a part is not a module, or ``encoder``'s forward does not take the keyword arguments
            a :class:`TransformerEncoder`'s does that the tower passes (a single layer, torch's encoder).
        ValueError: if the parts' widths differ where they can be read (see
            :func:`~torchflava.modules.layers.transformer.residual_widths`), or ``pooler`` is a
            :class:`~torchflava.modules.layers.Pooler` (it reads CLS_M, the first token) over a causal stack
            (where the first token sees only itself).
    """

    def __init__(
        self,
        image_proj: nn.Module,
        text_proj: nn.Module,
        encoder: TransformerEncoder,
        norm: nn.Module,
        embed_dim: int,
        pooler: Optional[nn.Module] = None,
    ) -> None:
        check_int("embed_dim", embed_dim, 1)
        parts = dict(image_proj=image_proj, text_proj=text_proj, encoder=encoder, norm=norm, pooler=pooler)
        # the projections write the stream: their output widths (a Linear's out_features) join the check
        projected = [w for n, p in parts.items() for w in linear_width(n, p, "out_features")]
        check_parts("MultimodalEncoder", parts, [("embed_dim", embed_dim), *projected], optional=["pooler"])
        check_stack(
            "MultimodalEncoder",
            encoder,
            ("key_padding_mask", "attn_mask", "output_positions", "return_hidden_states", "checkpoint_activations"),
        )
        causal = _is_causal(encoder)  # (read once: a walk of every module per forward costs)
        if isinstance(pooler, Pooler) and causal:
            raise ValueError(_CAUSAL_CLS.format(what="pooler (Pooler) reads"))
        super().__init__()
        self.image_proj = image_proj
        self.text_proj = text_proj
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim))
        self.encoder = encoder
        self.norm = norm
        self.pooler = pooler
        self._causal = causal  # whether the stack's attention is causal (as built)
        self.reset_parameters()

    def reset_parameters(self, *, std: float = 0.02) -> None:
        """Truncated-normal (``std``) CLS token."""
        nn.init.trunc_normal_(self.cls_token, std=std)

    def forward(
        self,
        image_states: Tensor,
        text_states: Tensor,
        *,
        text_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        output_positions: Optional[Positions] = None,
        return_hidden_states: bool = False,
        return_pooled: bool = True,
        checkpoint_activations: Optional[Union[bool, str]] = None,
    ) -> EncoderOutput:
        """Fuse image and text states.

        Args:
            image_states (Tensor): (B, S_i, D_i).
            text_states (Tensor): (B, L, D_t).
            text_padding_mask (Optional[Tensor]): (B, L) bool, ``True = padding``.
            attn_mask (Optional[Tensor]): (S, S) or (B, S, S) bool over the fused sequence of S = 1 + S_i + L
                positions (``[CLS_M, image..., text...]``), ``True`` = query i may not attend to key j: e.g. a
                prefix language model's, the text causal and reading the image, CLS_M and the image not
                reading the text.
            output_positions (Optional[Positions]): a slice, (P,) or (B, P) indices (per row) of the
                fused sequence: positions whose output alone is wanted; the last layer computes only
                those and the outputs are (B, P, D) (the pooler then reads the first of them). Or a
                (B, 1 + S_i + L) bool mask of them: the outputs stay full length, and at the other
                positions hold no encoding (the final norm of zeros): pooling
                then needs position 0 selected in every row (ValueError otherwise; a RuntimeError compiled).
            return_hidden_states (bool): also return every layer's output.
            return_pooled (bool): run the pooler (if any).
            checkpoint_activations (Optional[Union[bool, str]]): override the stack's activation
                checkpointing for this call (e.g. for one of several passes through the encoder).

        Returns:
            EncoderOutput: last_hidden_state (B, 1 + S_i + L, D), or (B, P, D) with
            ``output_positions`` as indices, and the rest.

        Raises:
            ValueError: if ``output_positions`` is :data:`CLS_POSITION` over a causal stack (CLS_M sees only itself),
                if the states are not (B, S, D) floating-point tensors of the widths the input
                projections read (where they tell them) on their device, a projection's output is not of width D (an
                ``nn.Identity`` over a tower of another width), the batch sizes differ, the mask does
                not match the text or a row of it is all padding, or ``attn_mask`` is not (S, S) or (B, S, S) for
                the fused length S or not on the states' device.
            TypeError: if a mask is not a bool tensor, or ``return_hidden_states`` or ``return_pooled`` not a bool.
        """
        if output_positions is CLS_POSITION and self._causal:
            raise ValueError(_CAUSAL_CLS.format(what="output_positions is CLS_POSITION: it reads"))
        check_bools(return_hidden_states=return_hidden_states, return_pooled=return_pooled)
        for name, states, proj in (
            ("image_states", image_states, self.image_proj),
            ("text_states", text_states, self.text_proj),
        ):
            check_hidden_states(states, getattr(proj, "in_features", None), name)
            weight = getattr(proj, "weight", None)
            if isinstance(weight, Tensor) and states.device != weight.device:  # (torch's error named neither)
                raise ValueError(f"{name} must be on the model's device {weight.device}, got {states.device}")
        b = image_states.shape[0]
        if text_states.shape[0] != b:
            raise ValueError(f"image and text batch sizes differ: {b} images, {text_states.shape[0]} texts")
        if attn_mask is not None:  # (before any work; the stack would name it only after the projections)
            _check_fused_mask(attn_mask, b, 1 + image_states.shape[1] + text_states.shape[1], image_states.device)
        image = self.image_proj(_in_dtype_of(image_states, self.image_proj))
        text = self.text_proj(_in_dtype_of(text_states, self.text_proj))
        for name, projected in (("image_proj(image_states)", image), ("text_proj(text_states)", text)):
            # a projection that tells no width (nn.Identity, a Sequential) failed in torch.cat otherwise
            check_hidden_states(projected, self.cls_token.shape[-1], name)
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(image.dtype), image, text], dim=1)
        key_padding_mask = None
        if text_padding_mask is not None:
            check_padding_mask(
                text_padding_mask,
                text_states.shape[:2],
                "text_padding_mask",
                device=text_states.device,
                masked="text_states",
            )
            keep_image = text_padding_mask.new_zeros(b, 1 + image.shape[1])  # CLS_M and image never padded
            key_padding_mask = torch.cat([keep_image, text_padding_mask], dim=1)
        out = self.encoder(
            x,
            key_padding_mask=key_padding_mask,
            attn_mask=attn_mask,
            output_positions=output_positions,
            return_hidden_states=return_hidden_states,
            checkpoint_activations=checkpoint_activations,
        )
        return encoder_output(out, self.norm, self.pooler, return_pooled, output_positions)


# (a causal stack makes the image causal too: a captioner's text-only causality is an attn_mask instead)
_CAUSAL_CLS = (
    "MultimodalEncoder: {what} CLS_M, the first token, and the stack's attention is causal: CLS_M sees only "
    "itself, the same for every image-text pair; build the stack bidirectional (is_causal=False) and make the "
    "text causal with attn_mask, or read other positions"
)


def _check_fused_mask(attn_mask: object, batch: int, length: int, device: torch.device) -> None:
    """TypeError / ValueError naming ``attn_mask`` unless it is a bool (S, S) or (B, S, S) tensor on ``device``, S
    the fused length ``length`` (1 + S_i + L)."""
    if not isinstance(attn_mask, Tensor) or attn_mask.dtype != torch.bool:
        got = attn_mask.dtype if isinstance(attn_mask, Tensor) else type(attn_mask).__name__
        raise TypeError(f"attn_mask must be a bool tensor (True = blocked), got {got}")
    if tuple(attn_mask.shape) not in ((length, length), (batch, length, length)):
        raise ValueError(
            f"attn_mask must have shape ({length}, {length}) or ({batch}, {length}, {length}) over the fused sequence "
            f"of 1 + S_i + L = {length} positions (CLS_M, image, text), got {tuple(attn_mask.shape)}"
        )
    if attn_mask.device != device:
        raise ValueError(f"attn_mask must be on the states' device {device}, got {attn_mask.device}")


def _in_dtype_of(states: Tensor, proj: nn.Module) -> Tensor:
    """``states`` in the floating dtype of ``proj``'s weight, where it has one (see
    :func:`~torchflava.modules.layers.patch_embedding.in_weight_dtype`): a tower's fp32 output into a bf16
    fusion failed inside torch (``mat1 and mat2 must have the same dtype``)."""
    weight = getattr(proj, "weight", None)
    return in_weight_dtype(states, weight) if isinstance(weight, Tensor) and weight.is_floating_point() else states
