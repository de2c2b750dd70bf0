"""Prediction heads: masked token prediction (MLM / MIM) and binary matching (ITM)."""

from torchflava.modules.heads.prediction_head import ITMHead, MaskedPredictionHead

__all__ = ["ITMHead", "MaskedPredictionHead"]
