"""Masking for pre-training: BEiT block masks over image patches, BERT token masking, ITM negatives.

Boolean masks mean ``True = masked``; every function draws from an optional ``torch.Generator``.
"""

from torchflava.modules.masking.block_masking import block_mask, block_masks
from torchflava.modules.masking.itm import ItmSample, itm_negatives
from torchflava.modules.masking.token_masking import MaskedTokens, TokenMasker, mask_tokens

__all__ = [
    "ItmSample",
    "MaskedTokens",
    "TokenMasker",
    "block_mask",
    "block_masks",
    "itm_negatives",
    "mask_tokens",
]
