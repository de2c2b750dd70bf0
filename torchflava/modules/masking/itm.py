"""Image-text matching (ITM) negatives: give some images the caption of another row.

FLAVA's ITM head classifies (image, text) pairs as matched or not; negatives are made inside the
batch by pairing an image with another row's caption.
"""

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from torchflava.utils.checks import check_generator, check_int, check_probability


class ItmSample(NamedTuple):
    """Output of :func:`itm_negatives`.

    Attributes:
        source (Tensor): (B,) long, the row whose caption image b is paired with (b itself when
            matched).
        labels (Tensor): (B,) long, 1 = matched (``source[b] == b``), 0 = mismatched.
    """

    source: Tensor
    labels: Tensor


def itm_negatives(
    batch_size: int, *, probability: float = 0.1, generator: Optional[torch.Generator] = None
) -> ItmSample:
    """Choose, for each row, whether its image is paired with its own caption or another row's.

    Each row independently becomes a negative with ``probability``; a negative takes the caption
    of another row chosen uniformly among the other B - 1 rows (never its own). With
    ``batch_size == 1`` there is no other row, so every label is 1. Apply as
    ``text_ids[sample.source]`` (and the same for the text padding mask).

    Args:
        batch_size (int): number of rows B, >= 1.
        probability (float): chance that a row is a negative, in [0, 1].
        generator (Optional[torch.Generator]): source of randomness (torch's default one if None);
            the results live on its device (the CPU when None).

    Returns:
        ItmSample: ``source`` (B,) long and ``labels`` (B,) long.

    Raises:
        TypeError: if ``batch_size`` is not an int, ``probability`` not a number or ``generator`` not a
            ``torch.Generator``.
        ValueError: if ``batch_size`` < 1 or ``probability`` is outside [0, 1].
    """
    check_int("batch_size", batch_size, 1)
    probability = check_probability("probability", probability)
    check_generator("generator", generator)

    device = generator.device if generator is not None else torch.device("cpu")
    rows = torch.arange(batch_size, device=device)
    negative = torch.rand(batch_size, generator=generator, device=device) < probability
    # Uniform over the other rows: draw in [0, B - 1) and skip over the row itself.
    other = torch.randint(max(batch_size - 1, 1), (batch_size,), generator=generator, device=device)
    other += (other >= rows).long()
    if batch_size == 1:
        negative.zero_()
    source = torch.where(negative, other, rows)
    return ItmSample(source, (~negative).long())
