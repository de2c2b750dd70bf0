"""Contrastive image-text batches (CLIP): a seeded crop per image, captions tokenised and padded.

Use with :class:`~torchflava.data.mixing.MixedBatches` over one source of pairs; each item's crop
comes from its own seed, so an item is the same whichever batch or rank it lands in.
"""

from typing import Optional, Sequence

import torch
from torch import Tensor

from torchflava.data.mixing import Another, check_seeds
from torchflava.data.samples import Sample
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import RandomCropTransform
from torchflava.utils.checks import check_int


class ImageTextCollator:
    """Samples of image-text pairs -> ``{"image": (B, 3, H, W), "text": (B, L), "text_attention_mask": (B, L)}``.

    Text is padded to the longest caption of the batch (at most ``max_text_length`` ids, with the
    tokenizer's start and end tokens).

    Args:
        tokenizer (WordPieceTokenizer): text -> ids and attention mask.
        image_transform (RandomCropTransform): image + seed -> pixels.
        max_text_length (int): most ids per caption.

    Raises:
        TypeError: if ``max_text_length`` is not an int, or the tokenizer or transform not callable.
        ValueError: if ``max_text_length`` < 2 (the start and end tokens).
    """

    def __init__(self, tokenizer: WordPieceTokenizer, image_transform: RandomCropTransform, *, max_text_length: int):
        for name, value in (("tokenizer", tokenizer), ("image_transform", image_transform)):
            if not callable(value):
                raise TypeError(f"{name} must be callable, got {type(value).__name__}")
        check_int("max_text_length", max_text_length, 2)  # a start and an end token
        self.tokenizer, self.image_transform, self.max_text_length = tokenizer, image_transform, max_text_length

    def __call__(
        self, kind: str, samples: Sequence[Sample], seeds: Sequence[int], *, another: Optional[Another] = None
    ) -> dict[str, Tensor]:
        """Build the batch of ``samples``, one seed each (``kind`` and ``another`` are not used).

        Raises:
            ValueError: if there are no samples, not one seed per sample, or a sample lacks its image or
                its caption.
        """
        if not samples:
            raise ValueError("samples: expected at least one sample, got none")
        check_seeds(samples, seeds)
        if any(s.image is None or s.text is None for s in samples):
            raise ValueError(f"ImageTextCollator needs image-text pairs; source {kind!r} gave a sample without both")
        ids, mask = self.tokenizer([s.text for s in samples], max_length=self.max_text_length)
        images = torch.stack([self.image_transform(s.image, seed) for s, seed in zip(samples, seeds)])
        return {"image": images, "text": ids, "text_attention_mask": mask}
