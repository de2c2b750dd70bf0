"""BERT masked-language-model corruption of a batch of token ids.

Each eligible token (not a special token, not padding) is selected with probability
``probability``; a selected token becomes the mask token (80%), a random ordinary token (10%) or
stays as it is (10%), and the model is trained to predict the original id at every selected
position (Devlin et al., "BERT", section 3.1).
"""

from collections.abc import Sequence
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from torchflava.modules.layers.text_embedding import check_token_ids
from torchflava.utils.checks import check_int, check_probability


class MaskedTokens(NamedTuple):
    """Output of :func:`mask_tokens`.

    Attributes:
        input_ids (Tensor): (B, L) the corrupted copy of the input ids, same dtype and device.
        labels (Tensor): (B, L) long, the original id at selected positions, ``ignore_index``
            elsewhere.
    """

    input_ids: Tensor
    labels: Tensor


def _check_id(name: str, value: object, vocab_size: int) -> int:
    """Return ``value`` if it is an int token id in [0, vocab_size)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int token id, got {type(value).__name__}")
    if not 0 <= value < vocab_size:
        raise ValueError(f"{name} must be in [0, {vocab_size}) (the vocabulary size), got {value}")
    return value


def mask_tokens(
    input_ids: Tensor,
    *,
    vocab_size: int,
    mask_token_id: int,
    special_token_ids: Sequence[int],
    padding_mask: Optional[Tensor] = None,
    probability: float = 0.15,
    replace_with_mask: float = 0.8,
    replace_with_random: float = 0.1,
    ignore_index: int = -100,
    generator: Optional[torch.Generator] = None,
) -> MaskedTokens:
    """Select tokens for masked language modelling and corrupt them as BERT does.

    A token is eligible unless its id is in ``special_token_ids`` or ``padding_mask`` marks it.
    Each eligible token is selected independently with ``probability``. Every row that has at
    least one eligible token gets at least one selected token: a row where the draw selected none
    gets one eligible position chosen uniformly at random (otherwise an all-ignored row, or batch,
    gives the MLM loss nothing to average over and FLAVA's loss would be NaN). Rows without
    eligible tokens get none. A selected token becomes ``mask_token_id`` with probability
    ``replace_with_mask``, a random id with probability ``replace_with_random`` (uniform over
    [0, vocab_size) without ``special_token_ids`` and ``mask_token_id``), and is left unchanged
    otherwise. The input is never modified.

    Args:
        input_ids (Tensor): (B, L) integer token ids in [0, vocab_size).
        vocab_size (int): number of token ids, >= 1.
        mask_token_id (int): id of the mask token, in [0, vocab_size).
        special_token_ids (Sequence[int]): ids never selected (CLS, SEP, PAD, ...), each in
            [0, vocab_size).
        padding_mask (Optional[Tensor]): (B, L) bool, ``True = padding`` (never selected).
        probability (float): selection probability of an eligible token, in (0, 1].
        replace_with_mask (float): share of selected tokens replaced by the mask token, in [0, 1].
        replace_with_random (float): share replaced by a random ordinary token, in [0, 1];
            ``replace_with_mask + replace_with_random <= 1``.
        ignore_index (int): label of positions that are not selected.
        generator (Optional[torch.Generator]): source of randomness (torch's default one if None);
            it must live on ``input_ids.device``.

    Returns:
        MaskedTokens: ``input_ids`` (B, L), the corrupted copy, and ``labels`` (B, L) long.

    Raises:
        TypeError: if ``input_ids`` is not an integer tensor, ``padding_mask`` not a bool tensor,
            or a scalar argument has the wrong type.
        ValueError: if ``input_ids`` is not (B, L) or holds ids outside [0, vocab_size), the
            ``padding_mask`` shape differs, a probability is out of range, the two replacement
            shares sum to more than 1, a token id is outside [0, vocab_size), or random
            replacement is asked for but every id is special.
    """
    check_int("vocab_size", vocab_size, 1)
    check_token_ids(input_ids, vocab_size)
    _check_id("mask_token_id", mask_token_id, vocab_size)
    if isinstance(special_token_ids, (str, bytes)) or not isinstance(special_token_ids, Sequence):
        got = type(special_token_ids).__name__
        raise TypeError(f"special_token_ids must be a sequence of ints, got {got}")
    for token_id in special_token_ids:
        _check_id("special_token_ids", token_id, vocab_size)
    if padding_mask is not None:
        if not isinstance(padding_mask, Tensor) or padding_mask.dtype != torch.bool:
            got = padding_mask.dtype if isinstance(padding_mask, Tensor) else type(padding_mask).__name__
            raise TypeError(f"padding_mask must be a bool tensor (True = padding), got {got}")
        if padding_mask.shape != input_ids.shape:
            raise ValueError(
                f"padding_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(padding_mask.shape)}"
            )
    probability = check_probability("probability", probability, allow_zero=False)
    replace_with_mask = check_probability("replace_with_mask", replace_with_mask)
    replace_with_random = check_probability("replace_with_random", replace_with_random)
    if replace_with_mask + replace_with_random > 1 + 1e-9:
        raise ValueError(
            f"replace_with_mask + replace_with_random must be <= 1, got {replace_with_mask} + {replace_with_random}"
        )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")

    device = input_ids.device
    special = torch.tensor(list(special_token_ids), dtype=input_ids.dtype, device=device)
    if replace_with_random > 0:
        ordinary = torch.ones(vocab_size, dtype=torch.bool, device=device)
        ordinary[special.long()] = False
        ordinary[mask_token_id] = False
        ordinary_ids = ordinary.nonzero().squeeze(1)
        if ordinary_ids.numel() == 0:
            raise ValueError(
                "replace_with_random > 0 needs an id that is neither special nor the mask token, "
                f"but special_token_ids and mask_token_id cover all of vocab_size={vocab_size}"
            )
    eligible = ~torch.isin(input_ids, special)
    if padding_mask is not None:
        eligible &= ~padding_mask.to(device)

    # Selection, then one forced pick per row that has eligible tokens but drew none: the
    # eligible position with the smallest draw, uniform among them since the draws are i.i.d.
    draw = torch.rand(input_ids.shape, generator=generator, device=device)
    selected = eligible & (draw < probability)
    draw = draw.masked_fill(~eligible, 2.0)
    forced = eligible.any(dim=1) & ~selected.any(dim=1)
    first = torch.zeros_like(selected).scatter_(1, draw.argmin(dim=1, keepdim=True), True)
    selected |= first & forced.unsqueeze(1)

    # Corruption: [0, mask) -> mask token, [mask, mask + random) -> random ordinary id, rest kept.
    action = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = selected & (action < replace_with_mask)
    to_random = selected & (action >= replace_with_mask) & (action < replace_with_mask + replace_with_random)
    corrupted = input_ids.masked_fill(to_mask, mask_token_id)
    if replace_with_random > 0:
        index = torch.randint(ordinary_ids.numel(), input_ids.shape, generator=generator, device=device)
        corrupted = torch.where(to_random, ordinary_ids[index].to(input_ids.dtype), corrupted)
    labels = torch.where(selected, input_ids.long(), torch.full_like(input_ids, ignore_index, dtype=torch.long))
    return MaskedTokens(corrupted, labels)
