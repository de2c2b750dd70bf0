"""CLIP (Radford et al. 2021). Shapes: image (B, C, H, W) float; text (B, L) token ids; text masks
(B, L) with 1 = token, 0 = padding (Hugging Face's convention); P the width of the shared space."""

import math
from typing import Optional

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from torchflava.modules.encoders import CLS_POSITION, TextEncoder, VisionEncoder
from torchflava.modules.init import init_weights
from torchflava.modules.layers.text_embedding import beyond_end_token, check_token_ids
from torchflava.modules.layers.transformer import check_shared_space
from torchflava.modules.outputs import DualEncoderOutput
from torchflava.modules.packing import encode_rows
from torchflava.utils.checks import check_architecture, check_bool

OptTensor = Optional[Tensor]


# Output of CLIPModel.forward: normalised image and text features, log-temperature, and HF's logits.
CLIPOutput = DualEncoderOutput


class CLIPModel(nn.Module):
    """CLIP: features are the projected CLS (image) and end-of-text (text) tokens after the final norms.

    Args:
        image_encoder, text_encoder (VisionEncoder, TextEncoder): the image tower, the causal text tower.
        image_projection, text_projection (nn.Module): each tower's width to P, no bias (widths checked: ValueError).
        eos_token_id (Optional[int]): text features are read at its first position in each row (HF's
            rule); None: at the row's highest id (open_clip's argmax; the same for CLIP's tokenizer).
        logit_scale_init, init_std (float): initial log-temperature; std of the weights' normal initialisation.
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
        init_std: float = 0.02,
    ) -> None:
        check_shared_space("CLIPModel", image=(image_encoder, image_projection), text=(text_encoder, text_projection))
        check_architecture("CLIPModel", locals(), sizes=[], positive=["init_std"], finite=["logit_scale_init"])
        super().__init__()
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.image_projection, self.text_projection = image_projection, text_projection
        self.eos_token_id, self.logit_scale_init, self.init_std = eos_token_id, logit_scale_init, init_std
        self.text_pack_tokens = 256  # token budget of one packed sequence of texts
        self.logit_scale = nn.Parameter(torch.empty(()))
        self.init_weights()

    def init_weights(self) -> None:
        """(Re-)initialise every parameter: :func:`torchflava.modules.init.init_weights` with ``init_std``."""
        init_weights(self, std=self.init_std)

    @torch.no_grad()
    def reset_parameters(self) -> None:  # the parameter the model owns itself (init_weights calls it)
        self.logit_scale.fill_(self.logit_scale_init)

    def encode_image(self, image: Tensor, *, normalize: bool = True) -> Tensor:
        """(B, P) features of (B, C, H, W) float pixels, L2-normalised if ``normalize`` (last layer: the CLS only)."""
        check_bool("normalize", normalize)
        cls = self.image_encoder(image, output_positions=CLS_POSITION, return_pooled=False).last_hidden_state[:, 0]
        features = self.image_projection(cls)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: Tensor, mask: Optional[Tensor] = None, *, normalize: bool = True) -> Tensor:
        """(B, P) text features at each row's end token; the tower is causal, so the tokens after it are never
        computed, nor is padding (the rows run packed, :func:`~torchflava.modules.packing.encode_packed`).

        Args:
            text (Tensor): (B, L) token ids.
            mask (Optional[Tensor]): (B, L), 1 = token, 0 = padding (ignored as a key).
            normalize (bool): L2-normalise the features.

        Raises:
            TypeError: if ``text`` is not an integer tensor or ``mask`` not a tensor.
            ValueError: if ``text`` is not (B, L) ids of the vocabulary, a row lacks the end token,
                or ``mask`` has another shape or marks an end token as padding.
        """
        check_token_ids(text, self.text_encoder.embeddings.vocab_size, name="text", device=self.logit_scale.device)
        check_bool("normalize", normalize)
        drop = beyond_end_token(text, self.eos_token_id, mask)  # (B, L) True = not computed
        states = encode_rows(self.text_encoder, text, drop, output="last", max_tokens=self.text_pack_tokens)
        features = self.text_projection(states)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(
        self, image: OptTensor = None, text: OptTensor = None, text_attention_mask: OptTensor = None
    ) -> CLIPOutput:
        """The :class:`CLIPOutput` of an image batch, a text batch (its size may differ), or both.

        Args:
            image, text (Optional[Tensor]): (B, C, H, W) float pixels; (B', L) token ids.
            text_attention_mask (Optional[Tensor]): (B', L), 1 = token, 0 = padding.

        Raises:
            ValueError: if neither input is given, a mask comes without text, or see :meth:`encode_text`.
        """
        if image is None and text is None:
            raise ValueError("CLIPModel: expected image or text, got neither")
        if text is None and text_attention_mask is not None:
            raise ValueError("text_attention_mask: expected text with it, got text=None")
        text = None if text is None else self.encode_text(text, text_attention_mask)
        image = None if image is None else self.encode_image(image)
        return CLIPOutput(image, text, self.logit_scale.clone())  # DDP refuses a returned parameter, FSDP2 a view
