"""Layers: self- and cross-attention, MLP, embeddings, transformer layers and the encoder stack.

Shape legend used throughout: B batch, S sequence length, D embedding width, H heads,
N number of image patches, L text length. Boolean masks mean ``True = masked`` (ignored).
"""

from torchflava.modules.layers.activation import QuickGELU, activation
from torchflava.modules.layers.attention import MultiHeadSelfAttention
from torchflava.modules.layers.cross_attention import MultiHeadCrossAttention
from torchflava.modules.layers.linear import Linear
from torchflava.modules.layers.mlp import MLP
from torchflava.modules.layers.packed_linear import PackedLinear, pack_linears
from torchflava.modules.layers.patch_embedding import PatchEmbedding
from torchflava.modules.layers.pooler import Pooler
from torchflava.modules.layers.text_embedding import TextEmbedding, TokenEmbedding
from torchflava.modules.layers.transformer import (
    TransformerEncoder,
    TransformerEncoderLayer,
    TransformerOutput,
    set_activation_checkpointing,
)

__all__ = [
    "activation",
    "Linear",
    "MLP",
    "MultiHeadCrossAttention",
    "MultiHeadSelfAttention",
    "pack_linears",
    "PackedLinear",
    "PatchEmbedding",
    "QuickGELU",
    "Pooler",
    "TextEmbedding",
    "TokenEmbedding",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "TransformerOutput",
    "set_activation_checkpointing",
]
