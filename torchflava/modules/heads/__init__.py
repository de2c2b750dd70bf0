"""Prediction heads: masked token prediction (MLM / MIM), binary matching (ITM), and a classifier over
normalised features (a zero-shot classifier made trainable)."""

from torchflava.modules.heads.classifier import NormalizedLinearClassifier, embedding_head
from torchflava.modules.heads.prediction_head import ITMHead, MaskedPredictionHead

__all__ = ["ITMHead", "MaskedPredictionHead", "NormalizedLinearClassifier", "embedding_head"]
