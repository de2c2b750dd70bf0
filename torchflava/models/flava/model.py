"""FLAVA: image encoder, text encoder and a multimodal encoder over both.

Shapes: image (B, C, H, W) float; text (B, L) token ids; ``text_attention_mask`` (B, L) with
1 = real token and 0 = padding (the Hugging Face convention); N = number of image patches.
"""

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from torchflava.modules.encoders import CLS_POSITION, EncoderOutput, MultimodalEncoder, TextEncoder, VisionEncoder
from torchflava.modules.init import init_weights
from torchflava.modules.layers.patch_embedding import check_patch_mask
from torchflava.modules.layers.text_embedding import check_token_ids, text_padding_mask
from torchflava.modules.layers.transformer import check_parts, check_shared_space, linear_width
from torchflava.modules.packing import encode_rows
from torchflava.utils.checks import check_bool, check_module


class FLAVAOutput(NamedTuple):
    """Output of :meth:`FLAVAModel.forward`. A field is None when its input was not given.

    Attributes:
        image_embeddings (Optional[Tensor]): (B, 1 + N, D_i) image encoder output after its final norm.
        text_embeddings (Optional[Tensor]): (B, L, D_t) text encoder output after its final norm.
        multimodal_embeddings (Optional[Tensor]): (B, 1 + (1 + N) + L, D_m) multimodal encoder output,
            only when both image and text are given (and the multimodal encoder is not skipped).
        image_features (Optional[Tensor]): (B, P) projected image CLS, L2-normalised.
        text_features (Optional[Tensor]): (B, P) projected text CLS, L2-normalised.
        image_pooled (Optional[Tensor]): (B, D_i) image pooler output.
        text_pooled (Optional[Tensor]): (B, D_t) text pooler output.
        multimodal_pooled (Optional[Tensor]): (B, D_m) multimodal pooler output.
        image_hidden_states (Optional[tuple[Tensor, ...]]): every image layer's output (before the
            final norm), when ``return_hidden_states=True``.
        text_hidden_states (Optional[tuple[Tensor, ...]]): the same for text.
        multimodal_hidden_states (Optional[tuple[Tensor, ...]]): the same for the multimodal encoder.
    """

    image_embeddings: Optional[Tensor] = None
    text_embeddings: Optional[Tensor] = None
    multimodal_embeddings: Optional[Tensor] = None
    image_features: Optional[Tensor] = None
    text_features: Optional[Tensor] = None
    image_pooled: Optional[Tensor] = None
    text_pooled: Optional[Tensor] = None
    multimodal_pooled: Optional[Tensor] = None
    image_hidden_states: Optional[tuple[Tensor, ...]] = None
    text_hidden_states: Optional[tuple[Tensor, ...]] = None
    multimodal_hidden_states: Optional[tuple[Tensor, ...]] = None


class FLAVAModel(nn.Module):
    """The FLAVA backbone (Singh et al. 2021).

    Contrastive features are the L2-normalised projections of each encoder's CLS output (after the
    final norm). The multimodal encoder sees the unimodal states *before* their final norms, as in the
    released checkpoints.

    Args:
        image_encoder (VisionEncoder): image tower.
        text_encoder (TextEncoder): text tower.
        multimodal_encoder (MultimodalEncoder): multimodal encoder (owns the image/text-to-multimodal projections).
        image_projection (nn.Module): image CLS to the shared contrastive space (width P).
        text_projection (nn.Module): text CLS to the shared contrastive space.
        logit_scale_init (float): initial log of the contrastive temperature multiplier.
        init_std (float): std of the normal initialisation of weights, tokens and positions.

    Raises:
        TypeError: if a part is not a module.
        ValueError: if a tower's width is not what its projection or the multimodal encoder's projection
            of it reads, or the two projections' output widths differ (where the parts tell their widths:
            :func:`~torchflava.modules.layers.transformer.check_shared_space`).
    """

    def __init__(
        self,
        image_encoder: VisionEncoder,
        text_encoder: TextEncoder,
        multimodal_encoder: MultimodalEncoder,
        image_projection: nn.Module,
        text_projection: nn.Module,
        *,
        logit_scale_init: float = math.log(1 / 0.07),
        init_std: float = 0.02,
    ) -> None:
        check_shared_space("FLAVAModel", image=(image_encoder, image_projection), text=(text_encoder, text_projection))
        check_module("multimodal_encoder", multimodal_encoder)
        for name, tower in (("image", image_encoder), ("text", text_encoder)):  # the fusion reads their states
            proj = getattr(multimodal_encoder, f"{name}_proj", None)
            reads = linear_width(f"multimodal_encoder.{name}_proj", proj, "in_features")
            check_parts("FLAVAModel", {f"{name}_encoder": tower}, reads)
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.multimodal_encoder = multimodal_encoder
        self.image_projection = image_projection
        self.text_projection = text_projection
        self.logit_scale_init, self.init_std = logit_scale_init, init_std
        self.text_pack_tokens = 256  # token budget of one packed sequence (one row of a pack batch) in encode_text
        self.logit_scale = nn.Parameter(torch.empty(()))
        self.init_weights()

    def init_weights(self) -> None:
        """(Re-)initialise every parameter: N(0, ``init_std``) weights, zero biases, unit norms,
        truncated-normal tokens and positions, and ``logit_scale = logit_scale_init``
        (:func:`torchflava.modules.init.init_weights`, which calls :meth:`reset_parameters`)."""
        init_weights(self, std=self.init_std)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``logit_scale = logit_scale_init``: the one parameter the model owns itself."""
        self.logit_scale.fill_(self.logit_scale_init)

    def forward(
        self,
        image: Optional[Tensor] = None,
        text: Optional[Tensor] = None,
        *,
        text_attention_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
        image_patch_mask: Optional[Tensor] = None,
        skip_multimodal: bool = False,
        return_hidden_states: bool = False,
    ) -> FLAVAOutput:
        """Encode an image batch, a text batch, or both (then also jointly).

        Args:
            image (Optional[Tensor]): (B, C, H, W) float pixels.
            text (Optional[Tensor]): (B, L) token ids.
            text_attention_mask (Optional[Tensor]): (B, L), 1 (True) = token, 0 (False) = padding: Hugging Face's
                ``attention_mask``, the inverse of a padding mask. Padding is ignored
                as an attention key in the text and multimodal encoders.
            token_type_ids (Optional[Tensor]): (B, L) segment ids.
            image_patch_mask (Optional[Tensor]): (B, N) bool, ``True`` = replace the patch by the mask token.
            skip_multimodal (bool): do not run the multimodal encoder even when both inputs are given.
            return_hidden_states (bool): also return every layer's output.

        Returns:
            FLAVAOutput: embeddings, features and pooled outputs of what was computed.

        Raises:
            TypeError: if ``text`` is not an integer tensor, or a flag not a bool.
            ValueError: if neither image nor text is given, a text-only argument comes without text,
                an image-only argument without image, ``text`` is not (B, L) ids in [0, vocab_size),
                or the batch sizes differ. The encoders raise on bad image shapes and dtypes.
        """
        if image is None and text is None:
            raise ValueError("FLAVAModel needs at least one of image or text; both were None")
        check_bool("skip_multimodal", skip_multimodal)  # ("no" is truthy: it skipped the fusion)
        check_bool("return_hidden_states", return_hidden_states)
        if text is None and (text_attention_mask is not None or token_type_ids is not None):
            raise ValueError("text_attention_mask and token_type_ids need text, which was None")
        if image is None and image_patch_mask is not None:
            raise ValueError("image_patch_mask needs image, which was None")
        if text is not None:
            check_token_ids(text, self.text_encoder.embeddings.vocab_size, name="text", device=self.logit_scale.device)
        embed = getattr(self.image_encoder, "embeddings", None)
        p = getattr(embed, "patch_size", None)
        if image_patch_mask is not None and isinstance(image, Tensor) and image.dim() == 4 and isinstance(p, int):
            h, w = image.shape[-2:]
            if h > 0 and w > 0 and h % p == 0 and w % p == 0:  # (else the encoder names the image)
                check_patch_mask(image_patch_mask, image.shape[0], (h // p, w // p), name="image_patch_mask")
        if image is not None and text is not None and isinstance(image, Tensor) and isinstance(text, Tensor):
            if image.shape[0] != text.shape[0]:
                raise ValueError(f"image and text batch sizes differ: {image.shape[0]} vs {text.shape[0]}")
        image_out = text_out = fused = None
        padding = None
        if image is not None:
            image_out = self.image_encoder(
                image, patch_mask=image_patch_mask, return_hidden_states=return_hidden_states
            )
        if text is not None:
            padding = text_padding_mask(text, text_attention_mask)
            text_out = self.text_encoder(
                text, padding_mask=padding, token_type_ids=token_type_ids, return_hidden_states=return_hidden_states
            )
        if image_out is not None and text_out is not None and not skip_multimodal:
            fused = self.multimodal_encoder(
                image_out.prenorm_last_hidden_state,
                text_out.prenorm_last_hidden_state,
                text_padding_mask=padding,
                return_hidden_states=return_hidden_states,
            )
        return FLAVAOutput(
            image_embeddings=_field(image_out, "last_hidden_state"),
            text_embeddings=_field(text_out, "last_hidden_state"),
            multimodal_embeddings=_field(fused, "last_hidden_state"),
            image_features=None if image_out is None else self._project(self.image_projection, image_out),
            text_features=None if text_out is None else self._project(self.text_projection, text_out),
            image_pooled=_field(image_out, "pooled_output"),
            text_pooled=_field(text_out, "pooled_output"),
            multimodal_pooled=_field(fused, "pooled_output"),
            image_hidden_states=_field(image_out, "hidden_states"),
            text_hidden_states=_field(text_out, "hidden_states"),
            multimodal_hidden_states=_field(fused, "hidden_states"),
        )

    @staticmethod
    def _project(projection: nn.Module, out: EncoderOutput, normalize: bool = True) -> Tensor:
        projected = projection(out.last_hidden_state[:, 0])
        return F.normalize(projected, dim=-1) if normalize else projected

    def encode_image(self, image: Tensor, *, normalize: bool = True) -> Tensor:
        """Contrastive image features: the projected CLS after the final norm.

        Only the CLS output is computed in the last layer (the other positions cannot affect it there).

        Args:
            image (Tensor): (B, C, H, W) float pixels.
            normalize (bool): L2-normalise the features.

        Returns:
            Tensor: (B, P).
        """
        check_bool("normalize", normalize)
        out = self.image_encoder(image, output_positions=CLS_POSITION, return_pooled=False)
        return self._project(self.image_projection, out, normalize)

    def encode_text(
        self,
        text: Tensor,
        text_attention_mask: Optional[Tensor] = None,
        *,
        token_type_ids: Optional[Tensor] = None,
        normalize: bool = True,
    ) -> Tensor:
        """Contrastive text features: the projected CLS after the final norm.

        A right-padded batch is run packed (:mod:`torchflava.modules.packing`): only real tokens are
        computed, with a block-diagonal attention mask, which gives the same features as the padded
        batch for less work.

        Args:
            text (Tensor): (B, L) token ids.
            text_attention_mask (Optional[Tensor]): (B, L), 1 (True) = token, 0 (False) = padding: Hugging Face's
                ``attention_mask``, the inverse of a padding mask.
            token_type_ids (Optional[Tensor]): (B, L) segment ids.
            normalize (bool): L2-normalise the features.

        Returns:
            Tensor: (B, P).
        """
        check_token_ids(text, self.text_encoder.embeddings.vocab_size, name="text", device=self.logit_scale.device)
        check_bool("normalize", normalize)
        padding = text_padding_mask(text, text_attention_mask)
        cls_states = encode_rows(
            self.text_encoder, text, padding, token_type_ids=token_type_ids, max_tokens=self.text_pack_tokens
        )
        projected = self.text_projection(cls_states)
        return F.normalize(projected, dim=-1) if normalize else projected


def _field(out: Optional[EncoderOutput], name: str):
    return None if out is None else getattr(out, name)
