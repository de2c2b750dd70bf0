"""Evaluation on top of a trained model: zero-shot classification and cross-modal retrieval."""

from torchflava.evaluation.zero_shot import (
    classification_accuracy,
    retrieval_recall,
    zero_shot_classifier,
)

__all__ = ["classification_accuracy", "retrieval_recall", "zero_shot_classifier"]
