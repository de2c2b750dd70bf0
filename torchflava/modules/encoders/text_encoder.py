"""Text transformer (BERT-style, or CLIP's with causal attention): (B, L) token ids -> (B, L, D)."""

from typing import Optional, Union

from torch import Tensor, nn

from torchflava.modules.encoders.output import CLS_POSITION, EncoderOutput, encoder_output
from torchflava.modules.layers.attention import Positions
from torchflava.modules.layers.pooler import Pooler
from torchflava.modules.layers.text_embedding import check_padding_mask, check_token_ids
from torchflava.modules.layers.transformer import TransformerEncoder, check_parts, check_stack
from torchflava.utils.checks import check_bools


class TextEncoder(nn.Module):
    """Text embedding, transformer stack, final norm and an optional pooler.

    Args:
        embeddings (nn.Module): token ids to vectors: BERT's :class:`TextEmbedding` or a
            :class:`TokenEmbedding` (token + position only).
        encoder (TransformerEncoder): the transformer stack.
        norm (nn.Module): final norm.
        pooler (Optional[nn.Module]): maps (B, L, D) to (B, D); none when None.

    Raises:
        TypeError: if a part is not a module, or ``encoder``'s forward does not take the keyword arguments
            a :class:`TransformerEncoder`'s does that the tower passes (a single layer, torch's encoder).
        ValueError: if the parts' widths differ where they can be read (see
            :func:`~torchflava.modules.layers.transformer.residual_widths`), or ``pooler`` is a
            :class:`~torchflava.modules.layers.Pooler` (it reads the first token) over a causal stack
            (where the first token sees only itself).
    """

    def __init__(
        self,
        embeddings: nn.Module,
        encoder: TransformerEncoder,
        norm: nn.Module,
        pooler: Optional[nn.Module] = None,
    ) -> None:
        parts = dict(embeddings=embeddings, encoder=encoder, norm=norm, pooler=pooler)
        check_parts("TextEncoder", parts, optional=["pooler"])
        check_stack(
            "TextEncoder",
            encoder,
            ("key_padding_mask", "attn_mask", "output_positions", "return_hidden_states", "checkpoint_activations"),
        )
        # read once here: walking every module in each forward cost ~0.4 ms a call for a 12-layer stack
        causal = _is_causal(encoder)
        if isinstance(pooler, Pooler) and causal:
            raise ValueError(
                "TextEncoder: pooler (Pooler) reads the first token, and the stack's attention is causal (the "
                "first token sees only itself): pool at each row's end token instead (output_positions=(B, 1) "
                "indices of it) and leave pooler None"
            )
        super().__init__()
        self.embeddings = embeddings
        self.encoder = encoder
        self.norm = norm
        self.pooler = pooler
        self._causal = causal  # whether the stack's attention is causal (as built)

    def forward(
        self,
        input_ids: Tensor,
        *,
        padding_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        output_positions: Optional[Positions] = None,
        return_hidden_states: bool = False,
        return_pooled: bool = True,
        checkpoint_activations: Optional[Union[bool, str]] = None,
    ) -> EncoderOutput:
        """Encode token ids.

        Args:
            input_ids (Tensor): (B, L) integer ids.
            padding_mask (Optional[Tensor]): (B, L) bool, ``True = padding`` (ignored as a key), with a
                token in every row; a Hugging Face ``attention_mask`` (1 = token) is its inverse
                (:func:`~torchflava.modules.layers.text_embedding.text_padding_mask` converts it).
            token_type_ids (Optional[Tensor]): (B, L) segment ids.
            position_ids (Optional[Tensor]): (B, L) positions; 0..L-1 when None.
            attn_mask (Optional[Tensor]): (B, L, L) bool, ``True`` = query i may not attend to key j.
            output_positions (Optional[Positions]): a slice, (P,) or (B, P) indices (per row):
                positions whose output alone is wanted; the last layer computes only those and the
                outputs are (B, P, D) (the pooler then reads the first of them). Or a (B, S) bool
                mask of them: the outputs stay (B, S, D), and at the other positions hold no
                encoding (the final norm of zeros): pooling
                then needs position 0 selected in every row (ValueError otherwise; a RuntimeError compiled).
            return_hidden_states (bool): also return every layer's output.
            return_pooled (bool): run the pooler (if any).
            checkpoint_activations (Optional[Union[bool, str]]): override the stack's activation checkpointing for this call.

        Returns:
            EncoderOutput: last_hidden_state (B, L, D) and the rest.

        Raises:
            TypeError: if ``padding_mask`` is not a bool tensor, ``return_hidden_states`` or ``return_pooled``
                not a bool (or as the embeddings and the stack raise).
            ValueError: if ``padding_mask`` is not (B, L), not on ``input_ids``' device or marks a whole row as
                padding, or
                ``output_positions`` is :data:`CLS_POSITION` over a causal stack (the first token sees
                only itself) (or as the embeddings and the stack raise).
        """
        if output_positions is CLS_POSITION and self._causal:
            raise ValueError(
                "output_positions is CLS_POSITION, but this TextEncoder's attention is causal: the first token "
                "sees only itself; select each row's end token ((B, 1) indices, e.g. (lengths - 1)[:, None])"
            )
        check_bools(return_hidden_states=return_hidden_states, return_pooled=return_pooled)
        if padding_mask is not None:  # named as given, before any work (the stack calls it key_padding_mask)
            check_token_ids(input_ids, None)  # (its shape and device are the mask's; its values the embeddings')
            check_padding_mask(padding_mask, tuple(input_ids.shape), device=input_ids.device)
        # token types only when given: a token + position embedding (CLIP's) has none
        types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        x = self.embeddings(input_ids, position_ids=position_ids, **types)
        out = self.encoder(
            x,
            key_padding_mask=padding_mask,
            attn_mask=attn_mask,
            output_positions=output_positions,
            return_hidden_states=return_hidden_states,
            checkpoint_activations=checkpoint_activations,
        )
        return encoder_output(out, self.norm, self.pooler, return_pooled, output_positions)


def _is_causal(encoder: nn.Module) -> bool:
    """Whether a layer of ``encoder`` has causal attention (an attention's ``is_causal``, where it tells)."""
    return any(getattr(module, "is_causal", False) is True for module in encoder.modules())
