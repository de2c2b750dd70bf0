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
from torchflava.utils.checks import check_generator, check_int, check_probability


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


class TokenMasker:
    """BERT token masking with its settings checked once, for use on many batches.

    Each eligible token (not in ``special_token_ids``, not padding) is selected independently with
    ``probability``. Every row that has at least one eligible token gets at least one selected
    token: a row where the draw selected none gets one eligible position chosen uniformly at random
    (otherwise an all-ignored row, or batch, gives the MLM loss nothing to average over and FLAVA's
    loss would be NaN). Rows without eligible tokens get none. A selected token becomes
    ``mask_token_id`` with probability ``replace_with_mask``, a random id with probability
    ``replace_with_random`` (uniform over [0, vocab_size) without ``special_token_ids`` and
    ``mask_token_id``), and is left unchanged otherwise. The input is never modified.

    Args:
        vocab_size (int): number of token ids, >= 1.
        mask_token_id (int): id of the mask token, in [0, vocab_size).
        special_token_ids (Sequence[int]): ids never selected (CLS, SEP, PAD, ...), each in
            [0, vocab_size).
        probability (float): selection probability of an eligible token, in (0, 1].
        replace_with_mask (float): share of selected tokens replaced by the mask token, in [0, 1].
        replace_with_random (float): share replaced by a random ordinary token, in [0, 1];
            ``replace_with_mask + replace_with_random <= 1``.
        ignore_index (int): label of positions that are not selected.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if a probability is out of range, the two replacement shares sum to more than
            1, a token id is outside [0, vocab_size), or random replacement is asked for but every
            id is special.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        mask_token_id: int,
        special_token_ids: Sequence[int],
        probability: float = 0.15,
        replace_with_mask: float = 0.8,
        replace_with_random: float = 0.1,
        ignore_index: int = -100,
    ) -> None:
        self.vocab_size = check_int("vocab_size", vocab_size, 1)
        self.mask_token_id = _check_id("mask_token_id", mask_token_id, vocab_size)
        if isinstance(special_token_ids, (str, bytes)) or not isinstance(special_token_ids, Sequence):
            got = type(special_token_ids).__name__
            raise TypeError(f"special_token_ids must be a sequence of ints, got {got}")
        for token_id in special_token_ids:
            _check_id("special_token_ids", token_id, vocab_size)
        self.probability = check_probability("probability", probability, allow_zero=False)
        self.replace_with_mask = check_probability("replace_with_mask", replace_with_mask)
        self.replace_with_random = check_probability("replace_with_random", replace_with_random)
        if replace_with_mask + replace_with_random > 1 + 1e-9:
            raise ValueError(
                f"replace_with_mask + replace_with_random must be <= 1, got {replace_with_mask} + {replace_with_random}"
            )
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
        if 0 <= ignore_index < vocab_size:  # a selected token of that id would read as "no target"
            raise ValueError(f"ignore_index must lie outside the vocabulary [0, {vocab_size}), got {ignore_index}")
        self.ignore_index = ignore_index
        self._special = torch.tensor(list(special_token_ids), dtype=torch.long)
        self._ordinary_ids = None
        if replace_with_random > 0:
            ordinary = torch.ones(vocab_size, dtype=torch.bool)
            ordinary[self._special] = False
            ordinary[mask_token_id] = False
            self._ordinary_ids = ordinary.nonzero().squeeze(1)
            if self._ordinary_ids.numel() == 0:
                raise ValueError(
                    "replace_with_random > 0 needs an id that is neither special nor the mask token, "
                    f"but special_token_ids and mask_token_id cover all of vocab_size={vocab_size}"
                )

    def __call__(
        self,
        input_ids: Tensor,
        *,
        padding_mask: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> MaskedTokens:
        """Mask a batch, every draw from ``generator``.

        Args:
            input_ids (Tensor): (B, L) integer token ids in [0, vocab_size).
            padding_mask (Optional[Tensor]): (B, L) bool, ``True = padding`` (never selected).
            generator (Optional[torch.Generator]): source of randomness (torch's default one if
                None); it must live on ``input_ids.device``.

        Returns:
            MaskedTokens: ``input_ids`` (B, L), the corrupted copy, and ``labels`` (B, L) long.

        Raises:
            TypeError: if ``input_ids`` is not an integer tensor, ``padding_mask`` not a bool tensor or
                ``generator`` not a ``torch.Generator``.
            ValueError: if ``input_ids`` is not (B, L) or holds ids outside [0, vocab_size), the
                ``padding_mask`` shape differs, or ``generator`` lives on another device.
        """
        check_token_ids(input_ids, self.vocab_size)
        self._check_dtype(input_ids)
        if padding_mask is not None:
            if not isinstance(padding_mask, Tensor) or padding_mask.dtype != torch.bool:
                got = padding_mask.dtype if isinstance(padding_mask, Tensor) else type(padding_mask).__name__
                raise TypeError(f"padding_mask must be a bool tensor (True = padding), got {got}")
            if padding_mask.shape != input_ids.shape:
                raise ValueError(
                    f"padding_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                    f"got {tuple(padding_mask.shape)}"
                )
        check_generator("generator", generator)
        if generator is not None and generator.device.type != input_ids.device.type:  # (torch's error names neither)
            raise ValueError(
                f"generator must live on input_ids' device ({input_ids.device}), got a generator on {generator.device}"
            )
        device, shape = input_ids.device, input_ids.shape
        draw = torch.rand(shape, generator=generator, device=device)
        action = torch.rand(shape, generator=generator, device=device)
        index = None
        if self._ordinary_ids is not None:
            index = torch.randint(self._ordinary_ids.numel(), shape, generator=generator, device=device)
        padding = None if padding_mask is None else padding_mask.to(device)
        return self._corrupt(input_ids, padding, draw, action, index)

    def rows(self, input_ids: Tensor, lengths: Sequence[int], generators: Sequence[torch.Generator]) -> MaskedTokens:
        """Mask row b of ``input_ids`` as ``self(input_ids[b : b + 1, :lengths[b]], generator=generators[b])``
        would, in one pass over the batch: each row draws from its own generator (an item's masks
        then do not depend on the batch it lands in), positions past a row's length are padding.

        Args:
            input_ids (Tensor): (B, L) integer token ids in [0, vocab_size), on the CPU.
            lengths (Sequence[int]): B row lengths, each in [0, L] (a list of ints or an integer tensor).
            generators (Sequence[torch.Generator]): B CPU generators, one per row.

        Returns:
            MaskedTokens: as :meth:`__call__`; label ``ignore_index`` past each row's length.

        Raises:
            TypeError: if ``input_ids`` is not an integer tensor, a length not an int or a
                generator not a ``torch.Generator``.
            ValueError: if ``input_ids`` is not (B, L) on the CPU or holds ids outside [0, vocab_size),
                ``lengths`` or ``generators`` do not hold B entries, a length is outside [0, L], or a
                generator is not a CPU one.
        """
        check_token_ids(input_ids, self.vocab_size)
        self._check_dtype(input_ids)
        if input_ids.device.type != "cpu":  # (the CPU draws met it inside torch: "Expected all tensors ...")
            raise ValueError(f"input_ids must be on the CPU, got a tensor on {input_ids.device}")
        batch, width = input_ids.shape
        if isinstance(generators, torch.Generator) or not isinstance(generators, Sequence):
            got = type(generators).__name__
            raise TypeError(f"generators must be a sequence of torch.Generator, one per row, got {got}")
        lengths = lengths.tolist() if isinstance(lengths, Tensor) else list(lengths)
        if any(isinstance(n, bool) or not isinstance(n, int) for n in lengths):
            raise TypeError(f"lengths must be ints (or an integer tensor), got {lengths}")
        if len(lengths) != batch or len(generators) != batch:
            raise ValueError(
                f"lengths and generators must hold one entry per row ({batch}), got {len(lengths)} and {len(generators)}"
            )
        if any(not 0 <= n <= width for n in lengths):
            raise ValueError(f"lengths must be in [0, {width}] (the row width), got {lengths}")
        if any(not isinstance(g, torch.Generator) for g in generators):
            raise TypeError("generators must be torch.Generator objects")
        if any(g.device.type != "cpu" for g in generators):
            raise ValueError(
                f"generators must be CPU generators, got generators on {[str(g.device) for g in generators]}"
            )
        draw, action = torch.zeros(batch, width), torch.zeros(batch, width)
        index = None if self._ordinary_ids is None else torch.zeros(batch, width, dtype=torch.long)
        for row, (n, g) in enumerate(zip(lengths, generators)):
            draw[row, :n] = torch.rand(n, generator=g)
            action[row, :n] = torch.rand(n, generator=g)
            if index is not None:
                index[row, :n] = torch.randint(self._ordinary_ids.numel(), (n,), generator=g)
        padding = torch.arange(width) >= torch.tensor(lengths)[:, None]
        return self._corrupt(input_ids, padding, draw, action, index)

    def _check_dtype(self, input_ids: Tensor) -> None:
        """TypeError where ``input_ids``' dtype cannot hold every id of the vocabulary (the mask and random
        ids written into the copy, the special ids compared with: uint8 wrapped 300 round to 44)."""
        if torch.iinfo(input_ids.dtype).max < self.vocab_size - 1:
            raise TypeError(
                f"input_ids must have an integer dtype that holds ids up to {self.vocab_size - 1} (the vocabulary), "
                f"got {input_ids.dtype}"
            )

    def _corrupt(
        self, input_ids: Tensor, padding: Optional[Tensor], draw: Tensor, action: Tensor, index: Optional[Tensor]
    ) -> MaskedTokens:
        """Selection from ``draw``, then corruption from ``action`` and ``index`` (all (B, L))."""
        device = input_ids.device
        eligible = ~torch.isin(input_ids, self._special.to(device=device, dtype=input_ids.dtype))
        if padding is not None:
            eligible &= ~padding
        # Selection, then one forced pick per row that has eligible tokens but drew none: the
        # eligible position with the smallest draw, uniform among them since the draws are i.i.d.
        selected = eligible & (draw < self.probability)
        draw = draw.masked_fill(~eligible, 2.0)
        forced = eligible.any(dim=1) & ~selected.any(dim=1)
        first = torch.zeros_like(selected).scatter_(1, draw.argmin(dim=1, keepdim=True), True)
        selected |= first & forced.unsqueeze(1)

        # Corruption: [0, mask) -> mask token, [mask, mask + random) -> random ordinary id, rest kept.
        low, high = self.replace_with_mask, self.replace_with_mask + self.replace_with_random
        to_mask = selected & (action < low)
        corrupted = input_ids.masked_fill(to_mask, self.mask_token_id)
        if index is not None:
            to_random = selected & (action >= low) & (action < high)
            corrupted = torch.where(to_random, self._ordinary_ids.to(device)[index].to(input_ids.dtype), corrupted)
        labels = torch.where(
            selected, input_ids.long(), torch.full_like(input_ids, self.ignore_index, dtype=torch.long)
        )
        return MaskedTokens(corrupted, labels)


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
    """Select tokens for masked language modelling and corrupt them as BERT does (see
    :class:`TokenMasker`, which checks the settings once for many batches).

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
    masker = TokenMasker(
        vocab_size=vocab_size,
        mask_token_id=mask_token_id,
        special_token_ids=special_token_ids,
        probability=probability,
        replace_with_mask=replace_with_mask,
        replace_with_random=replace_with_random,
        ignore_index=ignore_index,
    )
    return masker(input_ids, padding_mask=padding_mask, generator=generator)
