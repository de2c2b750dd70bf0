"""Vision transformer: (B, C, H, W) -> (B, 1 + N, D), or (B, N, D) for an embedding without a CLS token."""

from typing import Optional, Union

from torch import Tensor, nn

from torchflava.modules.encoders.output import CLS_POSITION, EncoderOutput, encoder_output
from torchflava.modules.layers.attention import Positions
from torchflava.modules.layers.patch_embedding import PatchEmbedding
from torchflava.modules.layers.pooler import Pooler
from torchflava.modules.layers.transformer import TransformerEncoder, check_parts, check_stack
from torchflava.utils.checks import check_bools


class VisionEncoder(nn.Module):
    """Patch embedding, transformer stack, final norm and an optional pooler.

    Args:
        embeddings (PatchEmbedding): image to token embedding.
        encoder (TransformerEncoder): the transformer stack.
        norm (nn.Module): final norm.
        pooler (Optional[nn.Module]): maps (B, S, D) to (B, D); none when None.

    Raises:
        TypeError: if a part is not a module, or ``encoder``'s forward does not take the keyword arguments
            a :class:`TransformerEncoder`'s does that the tower passes (a single layer, torch's encoder).
        ValueError: if the parts' widths differ where they can be read (see
            :func:`~torchflava.modules.layers.transformer.residual_widths`), or ``pooler`` is a
            :class:`~torchflava.modules.layers.Pooler` (it reads the first token) over ``embeddings``
            without a CLS token (it would pool the first patch alone).
    """

    def __init__(
        self,
        embeddings: PatchEmbedding,
        encoder: TransformerEncoder,
        norm: nn.Module,
        pooler: Optional[nn.Module] = None,
    ) -> None:
        parts = dict(embeddings=embeddings, encoder=encoder, norm=norm, pooler=pooler)
        check_parts("VisionEncoder", parts, optional=["pooler"])
        check_stack("VisionEncoder", encoder, ("output_positions", "return_hidden_states", "checkpoint_activations"))
        if isinstance(pooler, Pooler) and not _has_cls_token(embeddings):
            raise ValueError(
                "VisionEncoder: pooler (Pooler) reads the first token, and embeddings has no CLS token "
                "(use_cls_token=False): it would pool the first patch alone; pool over the patches instead "
                "(last_hidden_state.mean(dim=1)) and leave pooler None"
            )
        super().__init__()
        self.embeddings = embeddings
        self.encoder = encoder
        self.norm = norm
        self.pooler = pooler

    def forward(
        self,
        images: Tensor,
        *,
        patch_mask: Optional[Tensor] = None,
        output_positions: Optional[Positions] = None,
        return_hidden_states: bool = False,
        return_pooled: bool = True,
        checkpoint_activations: Optional[Union[bool, str]] = None,
    ) -> EncoderOutput:
        """Encode images.

        Args:
            images (Tensor): (B, C, H, W) float.
            patch_mask (Optional[Tensor]): (B, N) bool, ``True`` = replace that patch by the mask token.
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
            EncoderOutput: last_hidden_state (B, 1 + N, D) ((B, N, D) for an embedding without a CLS
            token) and the rest.

        Raises:
            TypeError: if ``return_hidden_states`` or ``return_pooled`` is not a bool.
            ValueError: if ``output_positions`` is :data:`CLS_POSITION` and the embedding has no CLS
                token (the output would be the first patch's), or as the embeddings and the stack raise.
        """
        if output_positions is CLS_POSITION and not _has_cls_token(self.embeddings):
            raise ValueError(
                "output_positions is CLS_POSITION, but this VisionEncoder's embeddings have no CLS token "
                "(use_cls_token=False): it would select the first patch; pool over the patches "
                "(last_hidden_state.mean(dim=1)), or pass slice(0, 1) for the first patch"
            )
        check_bools(return_hidden_states=return_hidden_states, return_pooled=return_pooled)
        x = self.embeddings(images, patch_mask=patch_mask)
        out = self.encoder(
            x,
            output_positions=output_positions,
            return_hidden_states=return_hidden_states,
            checkpoint_activations=checkpoint_activations,
        )
        return encoder_output(out, self.norm, self.pooler, return_pooled, output_positions)


def _has_cls_token(embeddings: nn.Module) -> bool:
    """Whether ``embeddings`` puts a CLS token first; True for an embedding that does not say (trusted)."""
    return getattr(embeddings, "num_prefix_tokens", 1) > 0
