"""Pre-norm transformer encoder layer and a stack of them.

Shapes: x (B, S, D) -> (B, S, D); key_padding_mask (B, S) bool, ``True = padding``;
attn_mask (B, S, S) bool, ``True`` = query i may not attend to key j.
"""

from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import nn, Tensor
from torch.utils.checkpoint import checkpoint


class TransformerOutput(NamedTuple):
    """Output of :class:`TransformerEncoder`.

    Attributes:
        last_hidden_state (Tensor): (B, S, D) output of the last layer.
        hidden_states (Optional[tuple[Tensor, ...]]): num_layers + 1 tensors of (B, S, D): the input,
            then each layer's output. None unless requested.
    """

    last_hidden_state: Tensor
    hidden_states: Optional[tuple[Tensor, ...]] = None


class TransformerEncoderLayer(nn.Module):
    """Pre-norm block: ``h = x + drop(attn(attn_norm(x)))``, ``out = h + drop(mlp(mlp_norm(h)))``.

    Args:
        attn (nn.Module): self-attention taking ``(x, *, key_padding_mask, attn_mask)``.
        mlp (nn.Module): feed-forward block.
        attn_norm (nn.Module): norm before attention.
        mlp_norm (nn.Module): norm before the MLP.
        dropout (float): dropout on both residual branches.
    """

    def __init__(
        self,
        attn: nn.Module,
        mlp: nn.Module,
        *,
        attn_norm: nn.Module,
        mlp_norm: nn.Module,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.attn_norm = attn_norm
        self.attn = attn
        self.mlp_norm = mlp_norm
        self.mlp = mlp
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        *,
        key_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        query_positions: Optional[Union[Tensor, slice]] = None,
    ) -> Tensor:
        """Run the block.

        Args:
            x (Tensor): (B, S, D).
            key_padding_mask (Optional[Tensor]): (B, S) bool, ``True = padding``.
            attn_mask (Optional[Tensor]): (B, S, S) bool, ``True = blocked``.
            query_positions (Optional[Union[Tensor, slice]]): (P,) indices or a slice: positions whose output alone is computed.

        Returns:
            Tensor: (B, S, D), or (B, P, D) with ``query_positions``.
        """
        attended = self.attn(
            self.attn_norm(x), key_padding_mask=key_padding_mask, attn_mask=attn_mask, query_positions=query_positions
        )
        if query_positions is not None:
            x = x[:, query_positions]
        x = x + self.dropout(attended)
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class TransformerEncoder(nn.Module):
    """A stack of encoder layers, with optional per-layer activation checkpointing.

    Args:
        layers (Sequence[nn.Module]): the layers, applied in order.
        checkpoint_activations (bool): recompute each layer's activations in backward instead of
            storing them (saves memory, costs one more forward). Can be changed later via the attribute.
    """

    def __init__(self, layers: Sequence[nn.Module], *, checkpoint_activations: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.checkpoint_activations = checkpoint_activations

    def forward(
        self,
        x: Tensor,
        *,
        key_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        output_positions: Optional[Union[Tensor, slice]] = None,
        return_hidden_states: bool = False,
        checkpoint_activations: Optional[bool] = None,
    ) -> TransformerOutput:
        """Run all layers.

        Args:
            x (Tensor): (B, S, D).
            key_padding_mask (Optional[Tensor]): (B, S) bool, ``True = padding``.
            attn_mask (Optional[Tensor]): (B, S, S) bool, ``True = blocked``.
            output_positions (Optional[Union[Tensor, slice]]): (P,) indices or a slice: positions whose final output alone is wanted:
                the last layer computes only those (e.g. the CLS token for pooled features), which
                gives the same values for less work.
            return_hidden_states (bool): also return the input and every layer's output.
            checkpoint_activations (Optional[bool]): override the module's setting for this call (e.g.
                to recompute only some of several passes through the same encoder).

        Returns:
            TransformerOutput: the last layer's output, (B, S, D) or (B, P, D), and, if asked, all
            hidden states (the last one restricted like the output).
        """
        hidden_states = [x] if return_hidden_states else None
        wanted = self.checkpoint_activations if checkpoint_activations is None else checkpoint_activations
        use_checkpoint = wanted and self.training and torch.is_grad_enabled()
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            kwargs = dict(
                key_padding_mask=key_padding_mask,
                attn_mask=attn_mask,
                query_positions=output_positions if i == last else None,
            )
            if use_checkpoint:
                x = checkpoint(layer, x, use_reentrant=False, **kwargs)
            else:
                x = layer(x, **kwargs)
            if hidden_states is not None:
                hidden_states.append(x)
        return TransformerOutput(x, None if hidden_states is None else tuple(hidden_states))
