"""Vision transformer: (B, C, H, W) -> (B, 1 + N, D), or (B, N, D) for an embedding without a CLS token."""

from typing import Optional, Union

from torch import Tensor, nn

from torchflava.modules.encoders.output import EncoderOutput
from torchflava.modules.layers.attention import Positions
from torchflava.modules.layers.patch_embedding import PatchEmbedding
from torchflava.modules.layers.transformer import TransformerEncoder, check_parts, check_stack


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
            :func:`~torchflava.modules.layers.transformer.residual_widths`).
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
                encoding (the final norm of zeros).
            return_hidden_states (bool): also return every layer's output.
            return_pooled (bool): run the pooler (if any).
            checkpoint_activations (Optional[Union[bool, str]]): override the stack's activation checkpointing for this call.

        Returns:
            EncoderOutput: last_hidden_state (B, 1 + N, D) ((B, N, D) for an embedding without a CLS
            token) and the rest.
        """
        x = self.embeddings(images, patch_mask=patch_mask)
        out = self.encoder(
            x,
            output_positions=output_positions,
            return_hidden_states=return_hidden_states,
            checkpoint_activations=checkpoint_activations,
        )
        normed = self.norm(out.last_hidden_state)
        pooled = self.pooler(normed) if (return_pooled and self.pooler is not None) else None
        return EncoderOutput(normed, pooled, out.hidden_states, out.last_hidden_state)
