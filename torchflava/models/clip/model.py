"""CLIP (Radford et al. 2021): a ViT and a causal text transformer, contrasted in one space.

Shapes: image (B, C, H, W) float; text (B, L) token ids; text masks (B, L) with 1 = token and
0 = padding (the Hugging Face convention); P the width of the shared space.
"""

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from torchflava.modules.encoders import TextEncoder, VisionEncoder
from torchflava.modules.encoders.output import CLS_POSITION
from torchflava.modules.init import init_weights
from torchflava.modules.layers.text_embedding import check_token_ids
from torchflava.modules.losses import contrastive_loss
from torchflava.modules.packing import encode_packed
from torchflava.utils.distributed import GatherGrad


class CLIPOutput(NamedTuple):
    """Output of :meth:`CLIPModel.forward`: (B, P) L2-normalised features (None for a missing
    input) and the learnable log-temperature ``logit_scale`` (logits are ``exp(logit_scale) * cos``)."""

    image_features: Optional[Tensor]
    text_features: Optional[Tensor]
    logit_scale: Tensor


class CLIPLossOutput(NamedTuple):
    """Output of :meth:`CLIPModel.contrastive_loss`: the () loss, a mean over ``num_pairs`` local pairs."""

    loss: Tensor
    num_pairs: int


class CLIPModel(nn.Module):
    """CLIP's two towers, their projections and the temperature.

    Image features are the projected CLS token after the final norm (``ln_post``), text features
    the projected end-of-text token after the final norm. The text tower is causal, so nothing
    after a row's end token reaches its feature: those tokens and padding are never computed (the
    rows run packed, :func:`torchflava.modules.packing.encode_packed`).

    Args:
        image_encoder (VisionEncoder): the image tower.
        text_encoder (TextEncoder): the causal text tower.
        image_projection (nn.Module): image width to P (CLIP's has no bias).
        text_projection (nn.Module): text width to P.
        eos_token_id (Optional[int]): end-of-text id; text features are read at its first position
            in each row (HF's rule). None: at the row's highest id (OpenAI's and open_clip's argmax,
            the same position with CLIP's tokenizer, whose end token 49407 is its largest id).
        logit_scale_init (float): initial log-temperature.
    """

    def __init__(
        self,
        image_encoder: VisionEncoder,
        text_encoder: TextEncoder,
        image_projection: nn.Module,
        text_projection: nn.Module,
        *,
        eos_token_id: Optional[int] = 49407,
        logit_scale_init: float = math.log(1 / 0.07),
    ) -> None:
        super().__init__()
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.image_projection, self.text_projection = image_projection, text_projection
        self.eos_token_id, self.logit_scale_init = eos_token_id, logit_scale_init
        self.text_pack_tokens = 256  # token budget of one packed sequence of texts
        self.logit_scale = nn.Parameter(torch.empty(()))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re-)initialise: :func:`torchflava.modules.init.init_weights`, ``logit_scale = logit_scale_init``."""
        init_weights(self)
        self.logit_scale.fill_(self.logit_scale_init)

    def encode_image(self, image: Tensor, *, normalize: bool = True) -> Tensor:
        """Image features; the last layer computes only the CLS token.

        Args:
            image (Tensor): (B, C, H, W) float pixels.
            normalize (bool): L2-normalise the features.

        Returns:
            Tensor: (B, P).
        """
        cls = self.image_encoder(image, output_positions=CLS_POSITION, return_pooled=False).last_hidden_state[:, 0]
        features = self.image_projection(cls)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: Tensor, mask: Optional[Tensor] = None, *, normalize: bool = True) -> Tensor:
        """Text features at each row's end token; only the tokens up to it are computed.

        Args:
            text (Tensor): (B, L) token ids.
            mask (Optional[Tensor]): (B, L), 1 = token, 0 = padding (ignored as a key); padding after
                the end token changes nothing (the tower is causal).
            normalize (bool): L2-normalise the features.

        Returns:
            Tensor: (B, P).

        Raises:
            TypeError: if ``text`` is not an integer tensor or ``mask`` not a tensor.
            ValueError: if ``text`` is not (B, L) ids of the vocabulary, a row lacks the end token,
                or ``mask`` has another shape or marks an end token as padding.
        """
        check_token_ids(text, self.text_encoder.embeddings.vocab_size, name="text")
        if self.eos_token_id is None:
            end = text.argmax(dim=1)
        else:
            lacking = (~(text == self.eos_token_id).any(dim=1)).nonzero().flatten().tolist()
            if lacking:
                raise ValueError(
                    f"text: expected the end token {self.eos_token_id} in every row, rows {lacking} lack it"
                )
            end = (text == self.eos_token_id).int().argmax(dim=1)
        drop = torch.arange(text.shape[1], device=text.device) > end[:, None]  # (B, L) True = not computed
        if mask is not None:
            if not isinstance(mask, Tensor):
                raise TypeError(f"text_attention_mask: expected a Tensor, got {type(mask).__name__}")
            if mask.shape != text.shape:
                raise ValueError(f"text_attention_mask: expected shape {tuple(text.shape)}, got {tuple(mask.shape)}")
            drop = drop | (mask == 0)
            if bool(drop[torch.arange(text.shape[0]), end].any()):
                raise ValueError("text_attention_mask: expected 1 at every row's end token, got 0")
        if bool(drop.any()):
            states = encode_packed(self.text_encoder, text, drop, output="last", max_tokens=self.text_pack_tokens)
        else:
            states = self.text_encoder(text, output_positions=end[:, None], return_pooled=False).last_hidden_state[:, 0]
        features = self.text_projection(states)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(
        self,
        image: Optional[Tensor] = None,
        text: Optional[Tensor] = None,
        text_attention_mask: Optional[Tensor] = None,
    ) -> CLIPOutput:
        """Normalised features of an image batch, a text batch, or both (batch sizes may differ).

        Args:
            image (Optional[Tensor]): (B, C, H, W) float pixels.
            text (Optional[Tensor]): (B', L) token ids.
            text_attention_mask (Optional[Tensor]): (B', L), 1 = token, 0 = padding.

        Returns:
            CLIPOutput: the features of what was given, and ``logit_scale``.

        Raises:
            ValueError: if neither image nor text is given, a mask comes without text, or an input
                is malformed (see :meth:`encode_image`, :meth:`encode_text`).
        """
        if image is None and text is None:
            raise ValueError("CLIPModel: expected image or text, got neither")
        if text is None and text_attention_mask is not None:
            raise ValueError("text_attention_mask: expected text with it, got text=None")
        image_features = None if image is None else self.encode_image(image)
        text_features = None if text is None else self.encode_text(text, text_attention_mask)
        return CLIPOutput(image_features, text_features, self.logit_scale)

    def contrastive_loss(
        self, image: Tensor, text: Tensor, text_attention_mask: Optional[Tensor] = None, *, gather=GatherGrad.GLOBAL
    ) -> CLIPLossOutput:
        """CLIP's loss on B pairs, by :func:`torchflava.modules.losses.contrastive_loss` (which gathers
        the features of every rank under ``torch.distributed``).

        Args:
            image (Tensor): (B, C, H, W) float pixels.
            text (Tensor): (B, L) token ids; row i describes image i.
            text_attention_mask (Optional[Tensor]): (B, L), 1 = token, 0 = padding.
            gather (GatherGrad): gradient mode of the cross-rank gather.

        Returns:
            CLIPLossOutput: the loss and the number of pairs it averages over.

        Raises:
            ValueError: if the batch sizes differ or an input is malformed.
        """
        if isinstance(image, Tensor) and isinstance(text, Tensor) and image.shape[0] != text.shape[0]:
            raise ValueError(f"text: expected {image.shape[0]} rows (one per image), got {text.shape[0]}")
        image_features, text_features, logit_scale = self(image, text, text_attention_mask)
        return CLIPLossOutput(
            contrastive_loss(image_features, text_features, logit_scale, gather=gather).loss, len(image)
        )
