"""Sequence packing: run a padded text batch as a few dense sequences holding only real tokens.

A padded batch (B, L) with real lengths l_b costs B * L tokens per layer; packed, it costs about
sum(l_b). Rows are packed in order into P sequences (packs) of at most ``max_tokens`` tokens, as
evenly filled as P allows, and the packs are stacked into one (P, T) batch, so the encoder runs
once whatever the batch size. A block-diagonal attention mask keeps every row to itself (a pack's
trailing padding slots attend only to themselves), and each token keeps its column index as its
position, so every real token's output equals its output in the padded batch. A causal encoder
(CLIP's text tower) stays causal within each row, as a row's tokens keep their order in its pack.
:func:`encode_packed` runs an encoder that way and returns one output per row (its first or last
real token: BERT's CLS, CLIP's end of text); :func:`encode_rows` does so where packing serves, and
runs the padded batch elsewhere.
"""

from typing import Literal, NamedTuple, Optional

import torch
from torch import Tensor, nn

from torchflava.modules.encoders.output import CLS_POSITION
from torchflava.utils.checks import check_int, check_module, describe_tensor, is_integer_tensor


class PackedBatch(NamedTuple):
    """The real tokens of a padded (B, L) batch, packed into P sequences of T slots.

    Attributes:
        input_ids (Tensor): (P, T) the rows' real tokens, row after row; 0 in unused slots.
        position_ids (Tensor): (P, T) each token's column in the padded batch; 0 in unused slots.
        token_type_ids (Optional[Tensor]): (P, T) segment ids, when the batch had them.
        attn_mask (Tensor): (P, T, T) bool, ``True`` = blocked: a key of another row, or an unused slot.
        pack_of_row (Tensor): (B,) the pack holding each row.
        first_slot (Tensor): (B,) the slot in its pack of each row's first real token (its CLS when
            column 0 is real).
        real (Tensor): (P, T) bool, ``True`` where a slot holds a real token.
        last_slot (Tensor): (B,) the slot of each row's last real token.
        row_in_pack (Tensor): (B,) how many rows come before it in its pack.
    """

    input_ids: Tensor
    position_ids: Tensor
    token_type_ids: Optional[Tensor]
    attn_mask: Tensor
    pack_of_row: Tensor
    first_slot: Tensor
    real: Tensor
    last_slot: Tensor
    row_in_pack: Tensor


def capturing_graph() -> bool:
    """Whether a graph is being captured (``torch.compile``, ``torch.export``, ``torch.jit.trace``): packing's
    shapes and indices depend on the data, and a graph would fix them at the first batch's, so models
    run the padded batch instead (the same features)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def can_pack(padding_mask: Tensor) -> bool:
    """Whether every row's column 0 is a real token (needed to find each row's CLS in a pack).

    Args:
        padding_mask (Tensor): (B, L) bool, ``True = padding``.

    Returns:
        bool: True when no row starts with padding.
    """
    return not bool(padding_mask[:, 0].any())


def _greedy_packs(lengths: list[int], capacity: int) -> list[int]:
    """Pack index of each row when consecutive rows fill packs of ``capacity`` (a longer row alone)."""
    pack, used, packs = 0, 0, []
    for length in lengths:
        if used and used + length > capacity:
            pack, used = pack + 1, 0
        packs.append(pack)
        used += length
    return packs


def pack_batch(
    input_ids: Tensor, padding_mask: Tensor, *, token_type_ids: Optional[Tensor] = None, max_tokens: int = 256
) -> PackedBatch:
    """Pack the real tokens of a padded batch, in row order, into one (P, T) batch of packs.

    P is the number of packs of at most ``max_tokens`` tokens that consecutive rows need (a row
    longer than ``max_tokens`` gets a pack of its own); T is the smallest pack length that still
    fits the rows into P packs, so the packs are about evenly filled.

    Args:
        input_ids (Tensor): (B, L) token ids.
        padding_mask (Tensor): (B, L) bool, ``True = padding``; every row needs a real token.
        token_type_ids (Optional[Tensor]): (B, L) segment ids.
        max_tokens (int): token budget of one pack.

    Returns:
        PackedBatch: the packs and where each row went.

    Raises:
        TypeError: if an input is not a tensor, the ids not integer, ``padding_mask`` not bool or ``max_tokens``
            not an int.
        ValueError: if some row is all padding, the shapes or devices differ, there is no row, ``max_tokens`` < 1,
            or the mask is on the meta device (no values to pack by).
    """
    for name, value in (("input_ids", input_ids), ("padding_mask", padding_mask)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if padding_mask.dtype != torch.bool:  # (~ on 0/1 ints is a bitwise not: negative row lengths)
        raise TypeError(f"padding_mask must be a bool tensor (True = padding), got {padding_mask.dtype}")
    check_int("max_tokens", max_tokens, 1)
    if tuple(padding_mask.shape) != tuple(input_ids.shape) or input_ids.dim() != 2 or input_ids.shape[0] == 0:
        raise ValueError(
            f"padding_mask must have the (B, L) shape of input_ids {tuple(input_ids.shape)}, got {tuple(padding_mask.shape)}"
        )
    if padding_mask.device != input_ids.device:  # (a meta mask failed inside torch, on a copy out of it)
        raise ValueError(f"padding_mask must be on input_ids' device {input_ids.device}, got {padding_mask.device}")
    if not is_integer_tensor(input_ids):  # (float ids were packed as they came)
        raise TypeError(f"input_ids must be an integer tensor of token ids, got {input_ids.dtype}")
    if token_type_ids is not None and not is_integer_tensor(token_type_ids):
        raise TypeError(f"token_type_ids must be an integer tensor or None, got {describe_tensor(token_type_ids)}")
    if token_type_ids is not None and tuple(token_type_ids.shape) != tuple(input_ids.shape):
        raise ValueError(f"token_type_ids must have shape {tuple(input_ids.shape)}, got {tuple(token_type_ids.shape)}")
    if token_type_ids is not None and token_type_ids.device != input_ids.device:  # (failed inside torch, scattered)
        raise ValueError(f"token_type_ids must be on input_ids' device {input_ids.device}, got {token_type_ids.device}")
    if padding_mask.is_meta:  # (failed inside torch, on the lengths' read)
        raise ValueError(
            "padding_mask: expected a tensor with values to pack the rows by, got one on the meta device (for a "
            "dry run of shapes, encode_rows runs the padded batch)"
        )
    device = input_ids.device
    real = ~padding_mask
    lengths = real.sum(dim=1).tolist()
    if min(lengths) == 0:
        empty = [row for row, length in enumerate(lengths) if length == 0]
        raise ValueError(f"padding_mask: expected a real token in every row, got rows {empty} all padding")
    packs = _greedy_packs(lengths, max_tokens)
    num_packs = packs[-1] + 1
    if max(lengths) <= max_tokens:
        # The smallest capacity that keeps the rows in num_packs packs (bisection over whole tokens). Not
        # with a row longer than the budget: a capacity that fits it let the others share packs past the
        # budget, leaving packs empty.
        low, high = max(lengths), max_tokens
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if _greedy_packs(lengths, middle)[-1] < num_packs else (middle + 1, high)
        packs = _greedy_packs(lengths, low)
    # Each row starts where the rows before it in the same pack end.
    first_slot, row_in_pack, filled, rows = [], [], [0] * num_packs, [0] * num_packs
    for pack, length in zip(packs, lengths):
        first_slot.append(filled[pack])
        row_in_pack.append(rows[pack])
        filled[pack] += length
        rows[pack] += 1
    slots = max(filled)
    pack_of_row = torch.tensor(packs, device=device)
    first_slot = torch.tensor(first_slot, device=device)

    columns = torch.arange(input_ids.shape[1], device=device).expand_as(input_ids)
    # (B, L) flat slot of each real token: its pack's start, its row's start, its rank among the row's real tokens.
    destination = (pack_of_row * slots + first_slot)[:, None] + real.cumsum(dim=1) - 1
    flat = destination[real]

    def scatter(values: Tensor, fill: int) -> Tensor:
        out = values.new_full((num_packs * slots,), fill)
        out[flat] = values[real]
        return out.view(num_packs, slots)

    row_of_slot = scatter(torch.arange(len(lengths), device=device)[:, None].expand_as(input_ids), -1)
    used = row_of_slot >= 0
    # Unused slots get ids of their own (-1, -2, ...): they attend to themselves alone, so no
    # attention row is empty, and no real token attends to them.
    unused_id = -1 - torch.arange(num_packs * slots, device=device).view(num_packs, slots)
    row_of_slot = torch.where(used, row_of_slot, unused_id)
    return PackedBatch(
        input_ids=scatter(input_ids, 0),
        position_ids=scatter(columns, 0),
        token_type_ids=None if token_type_ids is None else scatter(token_type_ids, 0),
        attn_mask=row_of_slot[:, :, None] != row_of_slot[:, None, :],
        pack_of_row=pack_of_row,
        first_slot=first_slot,
        real=used,
        last_slot=first_slot + torch.tensor(lengths, device=device) - 1,
        row_in_pack=torch.tensor(row_in_pack, device=device),
    )


def encode_packed(
    encoder: nn.Module,
    input_ids: Tensor,
    padding_mask: Tensor,
    *,
    output: Literal["first", "last"] = "first",
    token_type_ids: Optional[Tensor] = None,
    max_tokens: int = 256,
) -> Tensor:
    """One output per row of a padded batch, from a text encoder run once over the batch packed.

    The encoder's last layer computes only the wanted slots (per pack: those of its rows), and
    each row then takes its own; the values are those of the padded batch at the same tokens.

    Args:
        encoder (nn.Module): a :class:`~torchflava.modules.encoders.TextEncoder` (bidirectional or causal).
        input_ids (Tensor): (B, L) token ids.
        padding_mask (Tensor): (B, L) bool, ``True`` = leave the token out (padding, or anything
            that cannot reach the wanted token, e.g. what follows it in a causal encoder).
        output (Literal["first", "last"]): which real token of each row to return: the first
            (BERT's CLS, when column 0 is real) or the last (CLIP's end of text).
        token_type_ids (Optional[Tensor]): (B, L) segment ids.
        max_tokens (int): token budget of one pack.

    Returns:
        Tensor: (B, D) the encoder's output (after its final norm) at each row's chosen token.

    Raises:
        TypeError: see :func:`pack_batch`, or if ``encoder`` is not an ``nn.Module``.
        ValueError: see :func:`pack_batch`, or if ``output`` is not "first" or "last".
    """
    if output not in ("first", "last"):
        raise ValueError(f"output: expected 'first' or 'last', got {output!r}")
    check_module("encoder", encoder)
    packed = pack_batch(input_ids, padding_mask, token_type_ids=token_type_ids, max_tokens=max_tokens)
    slots = packed.first_slot if output == "first" else packed.last_slot
    positions = slots.new_zeros(packed.input_ids.shape[0], int(packed.row_in_pack.max()) + 1)  # (P, rows per pack)
    positions[packed.pack_of_row, packed.row_in_pack] = slots
    extra = {} if token_type_ids is None else {"token_type_ids": packed.token_type_ids}
    out = encoder(
        packed.input_ids,
        position_ids=packed.position_ids,
        attn_mask=packed.attn_mask,
        output_positions=positions,
        return_pooled=False,
        **extra,
    )
    return out.last_hidden_state[packed.pack_of_row, packed.row_in_pack]


def encode_rows(
    encoder: nn.Module,
    input_ids: Tensor,
    leave_out: Optional[Tensor],
    *,
    output: Literal["first", "last"] = "first",
    token_type_ids: Optional[Tensor] = None,
    max_tokens: int = 256,
) -> Tensor:
    """One output per row, as :func:`encode_packed` gives it: packed where the batch leaves tokens out
    (and, for ``"first"``, every row's column 0 is kept: :func:`can_pack`); else, while a graph is
    being captured (:func:`capturing_graph`) and on the meta device, the padded batch with ``leave_out``
    masked as keys.

    Args:
        encoder, input_ids, output, token_type_ids, max_tokens: as :func:`encode_packed`'s.
        leave_out (Optional[Tensor]): (B, L) bool, ``True`` = leave the token out; None: none.

    Returns:
        Tensor: (B, D) the encoder's output at each row's first or last kept token.

    Raises:
        TypeError: if ``encoder`` is not an ``nn.Module``, ``max_tokens`` not an int or ``leave_out`` not a
            bool tensor.
        ValueError: if ``output`` is not "first" or "last", ``max_tokens`` < 1, ``leave_out`` differs in
            shape or device from ``input_ids``, or as :func:`encode_packed`.
    """
    if output not in ("first", "last"):  # (checked by encode_packed only on the packed path)
        raise ValueError(f"output: expected 'first' or 'last', got {output!r}")
    check_module("encoder", encoder)
    check_int("max_tokens", max_tokens, 1)  # (checked by pack_batch only on the packed path)
    if leave_out is not None:  # (a narrower mask that left nothing out ran the padded batch, positions wrong)
        if not isinstance(leave_out, Tensor) or leave_out.dtype != torch.bool:
            raise TypeError(
                f"leave_out must be a bool tensor (True = leave out) or None, got {describe_tensor(leave_out)}"
            )
        if not isinstance(input_ids, Tensor) or leave_out.shape != input_ids.shape:
            raise ValueError(
                f"leave_out must have the shape of input_ids {describe_tensor(input_ids)}, got {tuple(leave_out.shape)}"
            )
        if leave_out.device != input_ids.device:  # (a meta one failed inside torch, on Tensor.item())
            raise ValueError(f"leave_out must be on input_ids' device {input_ids.device}, got {leave_out.device}")
    # Packing reads the mask's values: not while a graph is captured, nor on the meta device (a dry run of
    # shapes, where a read fails inside torch); both run the padded batch, the mask taken as it is.
    unread = capturing_graph() or (leave_out is not None and leave_out.is_meta)
    masked = leave_out is not None and (unread or bool(leave_out.any()))
    if masked and not unread and (output == "last" or can_pack(leave_out)):
        return encode_packed(
            encoder, input_ids, leave_out, output=output, token_type_ids=token_type_ids, max_tokens=max_tokens
        )
    positions = CLS_POSITION
    if output == "last":  # each row's last kept column
        kept = torch.ones_like(input_ids, dtype=torch.bool) if leave_out is None else ~leave_out
        positions = (input_ids.shape[1] - 1 - kept.flip(1).int().argmax(dim=1))[:, None]
    out = encoder(
        input_ids,
        padding_mask=leave_out if masked else None,
        token_type_ids=token_type_ids,
        output_positions=positions,
        return_pooled=False,
    )
    return out.last_hidden_state[:, 0]
