"""Evaluation on top of a trained model: zero-shot classification and cross-modal retrieval."""

from torchflava.evaluation.linear_probe import LinearProbeResult, fit_logistic_regression, linear_probe
from torchflava.evaluation.zero_shot import (
    classification_accuracy,
    mean_per_class_accuracy,
    retrieval_recall,
    zero_shot_classifier,
)

__all__ = [
    "LinearProbeResult",
    "fit_logistic_regression",
    "linear_probe",
    "classification_accuracy",
    "mean_per_class_accuracy",
    "retrieval_recall",
    "zero_shot_classifier",
]
