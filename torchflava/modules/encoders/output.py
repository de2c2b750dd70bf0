"""The output type shared by all encoders."""

from typing import NamedTuple, Optional

from torch import Tensor, nn

from torchflava.modules.layers.attention import Positions, is_position_mask
from torchflava.modules.layers.transformer import TransformerOutput
from torchflava.utils.checks import require

# ``output_positions`` of the first token (a ViT's or BERT's CLS): the last layer computes only it.
CLS_POSITION = slice(0, 1)


class EncoderOutput(NamedTuple):
    """What an encoder returns.

    Attributes:
        last_hidden_state (Tensor): (B, S, D) after the encoder's final norm.
        pooled_output (Optional[Tensor]): (B, D) pooler output on the first token; None when the
            encoder has no pooler or pooling was not asked for.
        hidden_states (Optional[tuple[Tensor, ...]]): num_layers + 1 tensors of (B, S, D), the
            embedding output then every layer's output, all before the final norm; None unless asked for.
        prenorm_last_hidden_state (Optional[Tensor]): (B, S, D) the last layer's output before the final
            norm (what FLAVA feeds into its multimodal encoder).
    """

    last_hidden_state: Tensor
    pooled_output: Optional[Tensor] = None
    hidden_states: Optional[tuple[Tensor, ...]] = None
    prenorm_last_hidden_state: Optional[Tensor] = None


def encoder_output(
    out: TransformerOutput,
    norm: nn.Module,
    pooler: Optional[nn.Module],
    return_pooled: bool,
    output_positions: Optional[Positions] = None,
) -> EncoderOutput:
    """What a tower returns of its stack's output ``out``: the last state through the final ``norm``, pooled by
    ``pooler`` where there is one and ``return_pooled`` asks for it, every layer's states, and the last state before
    the norm (the vision, text and multimodal encoders alike).

    Raises:
        ValueError: if pooling is asked of an output restricted by a (B, S) bool ``output_positions`` that leaves
            the first position, which the pooler reads, unselected in a row (it holds no encoding there).
        RuntimeError: the same, while compiled by ``torch.compile`` (an in-graph assertion).
    """
    pool = return_pooled and pooler is not None
    if pool and is_position_mask(output_positions):
        _check_first_selected(output_positions)
    normed = norm(out.last_hidden_state)
    pooled = pooler(normed) if pool else None
    return EncoderOutput(normed, pooled, out.hidden_states, out.last_hidden_state)


def _check_first_selected(mask: Tensor) -> None:
    """ValueError naming the rows of the (B, S) bool ``mask`` that leave position 0 unselected; while compiled, an
    in-graph assertion (RuntimeError, a static message: the graph keeps the check, where skipping it pooled the
    norm of zeros without a word); none on the meta device (no values: a dry run of shapes)."""
    if mask.shape[1] == 0:
        return
    first = mask[:, 0]
    static = (
        "output_positions as a bool mask leaves position 0, which the pooler reads, unselected in some row: "
        "select it in every row, or pass return_pooled=False"
    )
    require(first.all(), lambda: _unselected_message(first), static)


def _unselected_message(first: Tensor) -> str:
    rows = (~first).nonzero().flatten().tolist()
    shown = ", ".join(map(str, rows[:8])) + (", ..." if len(rows) > 8 else "")
    return (
        f"output_positions as a bool mask leaves position 0, which the pooler reads, unselected in row(s) "
        f"{shown} of {first.shape[0]}: select it in every row, or pass return_pooled=False"
    )
