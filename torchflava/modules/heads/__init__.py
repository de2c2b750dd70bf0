"""Prediction heads: masked token prediction (MLM / MIM), binary matching (ITM), and a classifier over
normalised features (a zero-shot classifier or a linear probe made trainable)."""

from torchflava.modules.heads.classifier import NormalizedLinearClassifier, embedding_head, standardised_head
from torchflava.modules.heads.prediction_head import ITMHead, MaskedPredictionHead

__all__ = ["ITMHead", "MaskedPredictionHead", "NormalizedLinearClassifier", "embedding_head", "standardised_head"]
