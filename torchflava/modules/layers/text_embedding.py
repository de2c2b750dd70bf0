"""Text embeddings: (B, L) token ids -> (B, L, D).

:class:`TextEmbedding` is BERT's: word + absolute position + token type embeddings, then LayerNorm
and dropout. :class:`TokenEmbedding` is word + absolute position only (CLIP's text tower, GPT-2).
"""

from typing import Optional

import torch
from torch import Tensor, nn

from torchflava.utils.checks import (
    check_dropout,
    check_fits_in_memory,
    check_int,
    check_positive_number,
    is_integer_tensor,
    require,
)


def check_token_ids(
    input_ids: Tensor, vocab_size: Optional[int], *, name: str = "input_ids", device: Optional[torch.device] = None
) -> None:
    """Validate a batch of token ids.

    Args:
        input_ids (Tensor): expected (B, L) integer ids in [0, vocab_size).
        vocab_size (Optional[int]): size of the vocabulary; None checks only the type and shape.
        name (str): argument name used in error messages.
        device (Optional[torch.device]): the device of the table the ids index (not checked when None).

    Raises:
        TypeError: if ``input_ids`` is not an integer tensor.
        ValueError: if it is not (B, L) with B, L >= 1, is not on ``device``, or holds ids outside [0, vocab_size).
    """
    if not isinstance(input_ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if not is_integer_tensor(input_ids):
        raise TypeError(f"{name} must be an integer tensor (torch.long), got dtype {input_ids.dtype}")
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"{name} must have shape (B, L) with B >= 1 and L >= 1, got {tuple(input_ids.shape)}")
    if device is not None and input_ids.device != device:  # (meta ids into a CPU table gave CPU garbage, silently)
        raise ValueError(f"{name} must be on the model's device {device}, got {input_ids.device}")
    if input_ids.is_meta or vocab_size is None:
        return  # shapes only (the meta device has no values; None: the caller checks the range itself)
    expected = f"{name} must be in [0, {vocab_size}) (the vocabulary size)"
    ids = input_ids.long()  # (compared as uint8, a vocabulary size over 255 wrapped round)
    require(
        ((ids >= 0) & (ids < vocab_size)).all(),
        lambda: f"{expected}, got values in [{int(input_ids.min())}, {int(input_ids.max())}]",
        f"{expected}, got values outside it",
    )


def text_padding_mask(text: Tensor, text_attention_mask: Optional[Tensor]) -> Optional[Tensor]:
    """Turn a (B, L) attention mask (1 = token, 0 = padding) into a boolean padding mask.

    Args:
        text (Tensor): (B, L) token ids the mask belongs to.
        text_attention_mask (Optional[Tensor]): (B, L) bool, integer or float mask, or None.

    Returns:
        Optional[Tensor]: (B, L) bool, ``True = padding``; None when no mask was given.

    Raises:
        TypeError: if the mask is not a tensor.
        ValueError: if its shape or device differs from ``text``'s, or (not on the meta device) it holds a
            value other than 0 and 1, or a row is all padding.
    """
    if text_attention_mask is None:
        return None
    if not isinstance(text_attention_mask, Tensor):
        raise TypeError(f"text_attention_mask must be a torch.Tensor, got {type(text_attention_mask).__name__}")
    if tuple(text_attention_mask.shape) != tuple(text.shape):
        raise ValueError(
            f"text_attention_mask must have the shape of text {tuple(text.shape)}, "
            f"got {tuple(text_attention_mask.shape)}"
        )
    if text_attention_mask.device != text.device:  # (a meta mask failed inside torch, on Tensor.item())
        raise ValueError(
            f"text_attention_mask must be on text's device {text.device}, got {text_attention_mask.device}"
        )
    padding = text_attention_mask == 0
    if padding.is_meta:  # shapes only: the meta device has no values to check
        return padding
    valid = (padding | (text_attention_mask == 1)).all() & ~padding.all(dim=1).any()  # one read of the device
    require(
        valid,
        lambda: _mask_fault(text_attention_mask, padding),
        "text_attention_mask must hold 1 (token) and 0 (padding) only, with a token in every row",
    )
    return padding


def check_padding_mask(
    padding_mask: object,
    shape: tuple[int, ...],
    name: str = "padding_mask",
    *,
    device: Optional[torch.device] = None,
    masked: str = "input_ids",
) -> Tensor:
    """``padding_mask``, checked: a (B, L) bool tensor of ``shape``, ``True = padding``, with a token in
    every row. A row all padding is refused: attention over it has no key, and it is what a Hugging Face
    ``attention_mask`` (1 or True = token) given here, inverted, makes of every unpadded row; its
    conversion is :func:`text_padding_mask`.

    Args:
        padding_mask (object): the mask given.
        shape (tuple[int, ...]): (B, L) of the text it masks.
        name (str): the argument's name in the messages.
        device (Optional[torch.device]): the device of the text it masks (not checked when None).
        masked (str): the name of the text it masks, in the messages.

    Returns:
        Tensor: ``padding_mask``.

    Raises:
        TypeError: if it is not a bool tensor (an integer or float one says how to convert an attention_mask).
        ValueError: if its shape is not ``shape``, it is not on ``device``, or (not on the meta device) a
            row is all padding.
    """
    if not isinstance(padding_mask, Tensor) or padding_mask.dtype != torch.bool:
        got = getattr(padding_mask, "dtype", type(padding_mask).__name__)
        hint = (
            "; a Hugging Face attention_mask (1 = token) is its inverse: pass attention_mask == 0"
            if isinstance(padding_mask, Tensor)
            else ""
        )
        raise TypeError(f"{name} must be a bool tensor (True = padding), got {got}{hint}")
    if tuple(padding_mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(padding_mask.shape)}")
    if device is not None and padding_mask.device != device:  # (else named by the attention, under its own name)
        raise ValueError(f"{name} must be on {masked}' device {device}, got {padding_mask.device}")
    if not padding_mask.is_meta:
        expected = f"{name} (True = padding) must leave a token in every row"
        require(
            ~padding_mask.all(dim=1).any(),
            lambda: (
                f"{expected}, got rows {padding_mask.all(dim=1).nonzero().flatten().tolist()} all padding (a "
                "Hugging Face attention_mask, 1 = token, is its inverse: pass attention_mask == 0)"
            ),
            f"{expected}, got a row all padding",
        )
    return padding_mask


def beyond_end_token(text: Tensor, end_token_id: Optional[int], mask: Optional[Tensor] = None) -> Tensor:
    """The tokens a causal text tower read at each row's end token need not compute: those after a
    row's first end token (they cannot reach it), and padding (``mask`` 0).

    Args:
        text (Tensor): (B, L) token ids (checked by the caller: :func:`check_token_ids`).
        end_token_id (Optional[int]): the end token; None: each row's highest id (open_clip's argmax).
        mask (Optional[Tensor]): (B, L), 1 = token, 0 = padding.

    Returns:
        Tensor: (B, L) bool, ``True`` = not needed; each row's end token is its last ``False``. On the meta
        device (a dry run of shapes), a meta mask of that shape, unchecked: there are no values to read.

    Raises:
        ValueError: if a row lacks the end token, or ``mask`` is malformed or marks an end token as padding.
    """
    if end_token_id is not None and type(end_token_id) is not int:  # (True was taken as id 1)
        raise TypeError(f"end_token_id must be an int id or None, got {type(end_token_id).__name__} {end_token_id!r}")
    checked = not text.is_meta  # (a value read on the meta device fails inside torch, on Tensor.item())
    is_end = text == (text.amax(dim=1, keepdim=True) if end_token_id is None else end_token_id)
    expected = f"text: expected the end token {end_token_id} in every row"
    if checked:
        require(
            is_end.any(dim=1).all(),
            lambda: f"{expected}, rows {(~is_end.any(dim=1)).nonzero().flatten().tolist()} lack it",
            f"{expected}, a row lacks it",
        )
    end = is_end.int().argmax(dim=1)  # the first end token of each row
    drop = torch.arange(text.shape[1], device=text.device) > end[:, None]
    if mask is not None:
        drop = drop | text_padding_mask(text, mask)
        message = "text_attention_mask: expected 1 at every row's end token, got 0"
        if checked:
            require(~drop[torch.arange(text.shape[0]), end].any(), lambda: message, message)
    return drop


def _mask_fault(mask: Tensor, padding: Tensor) -> str:
    """What is wrong with an attention mask that failed its check: a value, or rows without a token."""
    other = ~padding & (mask != 1)
    if bool(other.any()):
        return f"text_attention_mask must hold 1 (token) and 0 (padding) only, got {mask[other][0].item()}"
    rows = padding.all(dim=1).nonzero().flatten().tolist()
    return f"text_attention_mask marks every token of rows {rows} as padding; each text needs a token"


class TextEmbedding(nn.Module):
    """Word, position and token-type embeddings with a LayerNorm.

    Args:
        vocab_size (int): number of token ids.
        embed_dim (int): width D.
        max_seq_len (int): number of learned positions.
        type_vocab_size (int): number of token types (segments).
        pad_token_id (int): id of the padding token; its embedding row starts at zero and gets no gradient.
        norm_eps (float): LayerNorm epsilon.
        dropout (float): dropout on the output.

    Raises:
        TypeError: if a size is not an int or ``dropout`` not a number.
        ValueError: if a size is below 1, ``pad_token_id`` is not an id of the vocabulary, ``norm_eps``
            is not a positive number (NaN gave NaN outputs) or ``dropout`` is not in [0, 1).
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        max_seq_len: int,
        *,
        type_vocab_size: int = 2,
        pad_token_id: int = 0,
        norm_eps: float = 1e-12,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("embed_dim", embed_dim), ("max_seq_len", max_seq_len)):
            check_int(name, value, 1)
        check_int("type_vocab_size", type_vocab_size, 1)
        sizes = dict(vocab_size=vocab_size, max_seq_len=max_seq_len, embed_dim=embed_dim)
        check_fits_in_memory("TextEmbedding", (vocab_size + max_seq_len + type_vocab_size) * embed_dim, sizes)
        check_positive_number("norm_eps", norm_eps)
        check_dropout("dropout", dropout)
        if not 0 <= check_int("pad_token_id", pad_token_id, 0) < vocab_size:
            raise ValueError(f"pad_token_id must be an id below vocab_size {vocab_size}, got {pad_token_id}")
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.max_seq_len = max_seq_len
        self.type_vocab_size = type_vocab_size
        self.word_embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_token_id)
        self.pos_embed = nn.Embedding(max_seq_len, embed_dim)
        self.type_embed = nn.Embedding(type_vocab_size, embed_dim)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, input_ids: Tensor, *, token_type_ids: Optional[Tensor] = None, position_ids: Optional[Tensor] = None
    ) -> Tensor:
        """Embed token ids.

        Args:
            input_ids (Tensor): (B, L) integer ids, L <= ``max_seq_len``.
            token_type_ids (Optional[Tensor]): (B, L) integer segment ids; zeros when None.
            position_ids (Optional[Tensor]): (B, L) positions in [0, max_seq_len); 0..L-1 when None
                (give them for packed sequences, where positions restart for every sequence).

        Returns:
            Tensor: (B, L, D).

        Raises:
            TypeError: if ids are not integer tensors.
            ValueError: if ids are out of range or not on the embedding's device, or L exceeds ``max_seq_len``.
        """
        device = self.word_embed.weight.device
        check_token_ids(input_ids, self.vocab_size, device=device)
        x = self.word_embed(input_ids.long())  # uint8 / int16 / int32 ids index like long ones
        if token_type_ids is None:
            x = x + self.type_embed.weight[0]
        else:
            check_token_ids(token_type_ids, None, name="token_type_ids", device=device)  # (a list: TypeError)
            if tuple(token_type_ids.shape) != tuple(input_ids.shape):
                raise ValueError(
                    f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
                    f"got {tuple(token_type_ids.shape)}"
                )
            check_token_ids(token_type_ids, self.type_vocab_size, name="token_type_ids")
            x = x + self.type_embed(token_type_ids.long())
        x = add_positions(x, self.pos_embed, input_ids, position_ids)
        return self.dropout(self.norm(x))


def add_positions(x: Tensor, pos_embed: nn.Embedding, input_ids: Tensor, position_ids: Optional[Tensor]) -> Tensor:
    """``x`` plus learned absolute positions: 0..L-1, or ``position_ids`` (B, L) when given.

    Args:
        x (Tensor): (B, L, D) token embeddings.
        pos_embed (nn.Embedding): the position table (max_seq_len, D).
        input_ids (Tensor): (B, L) the ids ``x`` embeds (for shapes in messages).
        position_ids (Optional[Tensor]): (B, L) positions in [0, max_seq_len), e.g. restarting for
            every sequence of a packed batch.

    Returns:
        Tensor: (B, L, D).

    Raises:
        ValueError: if L exceeds the table, or ``position_ids`` has another shape or is out of range.
    """
    max_seq_len, length = pos_embed.num_embeddings, input_ids.shape[1]
    if position_ids is None:
        if length > max_seq_len:
            raise ValueError(
                f"input_ids (the text's token ids) has length {length}, more than the {max_seq_len} learned positions "
                "(max_seq_len)"
            )
        return x + pos_embed.weight[:length]
    check_token_ids(position_ids, None, name="position_ids", device=pos_embed.weight.device)  # (a list: TypeError)
    if tuple(position_ids.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"position_ids must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(position_ids.shape)}"
        )
    if not position_ids.is_meta:  # an in-graph check when compiled (no graph break)
        expected = f"position_ids must be in [0, {max_seq_len}) (the learned positions, max_seq_len: is a text longer?)"
        require(
            ((position_ids >= 0) & (position_ids < max_seq_len)).all(),
            lambda: f"{expected}, got values in [{int(position_ids.min())}, {int(position_ids.max())}]",
            f"{expected}, got values outside it",
        )
    return x + pos_embed(position_ids.long())


class TokenEmbedding(nn.Module):
    """Word and learned absolute position embeddings, summed (no token types, no norm).

    Args:
        vocab_size (int): number of token ids.
        embed_dim (int): width D.
        max_seq_len (int): number of learned positions (CLIP: the context length, 77).
        dropout (float): dropout on the output.

    Raises:
        TypeError: if a size is not an int or ``dropout`` not a number.
        ValueError: if a size is below 1 or ``dropout`` is not in [0, 1).
    """

    def __init__(self, vocab_size: int, embed_dim: int, max_seq_len: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("embed_dim", embed_dim), ("max_seq_len", max_seq_len)):
            check_int(name, value, 1)
        check_dropout("dropout", dropout)
        sizes = dict(vocab_size=vocab_size, max_seq_len=max_seq_len, embed_dim=embed_dim)
        check_fits_in_memory("TokenEmbedding", (vocab_size + max_seq_len) * embed_dim, sizes)
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.max_seq_len = max_seq_len
        self.word_embed = nn.Embedding(vocab_size, embed_dim)
        self.pos_embed = nn.Embedding(max_seq_len, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: Tensor, *, position_ids: Optional[Tensor] = None) -> Tensor:
        """Embed token ids.

        Args:
            input_ids (Tensor): (B, L) integer ids, L <= ``max_seq_len``.
            position_ids (Optional[Tensor]): (B, L) positions in [0, max_seq_len); 0..L-1 when None.

        Returns:
            Tensor: (B, L, D).

        Raises:
            TypeError: if ids are not integer tensors.
            ValueError: if ids are out of range or not on the embedding's device, or L exceeds ``max_seq_len``.
        """
        check_token_ids(input_ids, self.vocab_size, device=self.word_embed.weight.device)
        x = self.word_embed(input_ids.long())  # uint8 / int16 / int32 ids index like long ones
        return self.dropout(add_positions(x, self.pos_embed, input_ids, position_ids))
