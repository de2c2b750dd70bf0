"""Sequence packing: run a padded text batch as few dense sequences holding only real tokens.

A padded batch (B, L) with real lengths l_b costs B * L tokens per layer; packed, it costs
sum(l_b). Rows are packed in order into sequences of at most ``max_tokens`` tokens; a
block-diagonal attention mask keeps every row to itself and each token keeps its column index
as its position, so every real token's output equals its output in the padded batch.
"""

from typing import NamedTuple, Optional

import torch
from torch import Tensor


class PackedRows(NamedTuple):
    """Consecutive rows of a padded batch packed into one sequence of T real tokens.

    Attributes:
        input_ids (Tensor): (1, T) the rows' real tokens, row after row.
        position_ids (Tensor): (1, T) each token's column in the padded batch.
        token_type_ids (Optional[Tensor]): (1, T) segment ids, when the batch had them.
        attn_mask (Optional[Tensor]): (1, T, T) bool, ``True`` = blocked (the key belongs to another
            row); None when the pack holds a single row.
        rows (slice): the padded batch's rows held here.
        first_token (Tensor): (R,) index in T of each row's column-0 token (its CLS).
    """

    input_ids: Tensor
    position_ids: Tensor
    token_type_ids: Optional[Tensor]
    attn_mask: Optional[Tensor]
    rows: slice
    first_token: Tensor


def can_pack(padding_mask: Tensor) -> bool:
    """Whether every row's column 0 is a real token (needed to find each row's CLS in a pack).

    Args:
        padding_mask (Tensor): (B, L) bool, ``True = padding``.

    Returns:
        bool: True when no row starts with padding.
    """
    return not bool(padding_mask[:, 0].any())


def pack_rows(
    input_ids: Tensor, padding_mask: Tensor, *, token_type_ids: Optional[Tensor] = None, max_tokens: int = 256
) -> list[PackedRows]:
    """Pack the real tokens of a padded batch, in row order, into sequences of <= ``max_tokens``.

    A row longer than ``max_tokens`` gets a pack of its own.

    Args:
        input_ids (Tensor): (B, L) token ids.
        padding_mask (Tensor): (B, L) bool, ``True = padding``; column 0 must be real in every row.
        token_type_ids (Optional[Tensor]): (B, L) segment ids.
        max_tokens (int): token budget of one pack.

    Returns:
        list[PackedRows]: the packs, covering rows 0..B-1 in order.

    Raises:
        ValueError: if some row starts with padding, or the shapes differ.
    """
    if tuple(padding_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"padding_mask must have shape {tuple(input_ids.shape)}, got {tuple(padding_mask.shape)}")
    if not can_pack(padding_mask):
        raise ValueError("pack_rows needs a real token in column 0 of every row (right padding)")
    real = ~padding_mask
    lengths = real.sum(dim=1).tolist()
    columns = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    packs, start = [], 0
    while start < len(lengths):
        stop, total = start + 1, lengths[start]
        while stop < len(lengths) and total + lengths[stop] <= max_tokens:
            total += lengths[stop]
            stop += 1
        keep = real[start:stop]
        row_of_token = torch.arange(start, stop, device=input_ids.device)[:, None].expand_as(keep)[keep]
        attn_mask = None
        if stop - start > 1:
            attn_mask = (row_of_token[:, None] != row_of_token[None, :]).unsqueeze(0)
        first = torch.tensor([0] + lengths[start:stop - 1], device=input_ids.device).cumsum(0)
        packs.append(
            PackedRows(
                input_ids=input_ids[start:stop][keep].unsqueeze(0),
                position_ids=columns[start:stop][keep].unsqueeze(0),
                token_type_ids=None if token_type_ids is None else token_type_ids[start:stop][keep].unsqueeze(0),
                attn_mask=attn_mask,
                rows=slice(start, stop),
                first_token=first,
            )
        )
        start = stop
    return packs
