"""Outputs shared by the models built from these modules."""

from typing import NamedTuple, Optional

from torch import Tensor


class DualEncoderOutput(NamedTuple):
    """Output of a two-tower (dual-encoder) model such as CLIP: each tower's (B, P) normalised features (None
    for a modality not given; the batches may differ in size) and the learnable log-temperature."""

    image_features: Optional[Tensor]
    text_features: Optional[Tensor]
    logit_scale: Tensor

    @property
    def logits_per_image(self) -> Tensor:
        """(B, B') image-text cosine similarities times exp(logit_scale), as Hugging Face's CLIPModel returns them.

        Raises:
            ValueError: if the image or the text features are None (naming them).
        """
        if missing := [name for name in ("image_features", "text_features") if getattr(self, name) is None]:
            raise ValueError(f"logits: expected image and text features, got {' and '.join(missing)}=None")
        return self.logit_scale.exp() * (self.image_features @ self.text_features.T)

    @property
    def logits_per_text(self) -> Tensor:
        """(B', B): :attr:`logits_per_image` transposed (ValueError as there if features are None)."""
        return self.logits_per_image.T
