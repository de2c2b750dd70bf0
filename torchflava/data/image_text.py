"""Contrastive image-text batches (CLIP): a seeded crop per image, captions tokenised and padded.

Use with :class:`~torchflava.data.mixing.MixedBatches` over one source of pairs; each item's crop
comes from its own seed, so an item is the same whichever batch or rank it lands in.
"""

from typing import Optional, Sequence

import torch
from torch import Tensor

from torchflava.data.mixing import Another
from torchflava.data.samples import Sample
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import RandomCropTransform


class ImageTextCollator:
    """Samples of image-text pairs -> ``{"image": (B, 3, H, W), "text": (B, L), "text_attention_mask": (B, L)}``.

    Text is padded to the longest caption of the batch (at most ``max_text_length`` ids, with the
    tokenizer's start and end tokens).

    Args:
        tokenizer (WordPieceTokenizer): text -> ids and attention mask.
        image_transform (RandomCropTransform): image + seed -> pixels.
        max_text_length (int): most ids per caption.

    Raises:
        ValueError: if ``max_text_length`` < 2.
    """

    def __init__(self, tokenizer: WordPieceTokenizer, image_transform: RandomCropTransform, *, max_text_length: int):
        if max_text_length < 2:
            raise ValueError(f"max_text_length must be >= 2 (start and end tokens), got {max_text_length}")
        self.tokenizer, self.image_transform, self.max_text_length = tokenizer, image_transform, max_text_length

    def __call__(
        self, kind: str, samples: Sequence[Sample], seeds: Sequence[int], *, another: Optional[Another] = None
    ) -> dict[str, Tensor]:
        """Build the batch of ``samples``, one seed each (``kind`` and ``another`` are not used).

        Raises:
            ValueError: if a sample lacks its image or its caption.
        """
        if any(s.image is None or s.text is None for s in samples):
            raise ValueError(f"ImageTextCollator needs image-text pairs; source {kind!r} gave a sample without both")
        ids, mask = self.tokenizer([s.text for s in samples], max_length=self.max_text_length)
        images = torch.stack([self.image_transform(s.image, seed) for s, seed in zip(samples, seeds)])
        return {"image": images, "text": ids, "text_attention_mask": mask}
