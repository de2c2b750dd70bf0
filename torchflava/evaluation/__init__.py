"""Evaluation on top of a trained model: zero-shot classification and cross-modal retrieval, the fine-tuning
metrics, and how a share is printed (:func:`percent`)."""

from torchflava.evaluation.linear_probe import LinearProbeResult, fit_logistic_regression, linear_probe
from torchflava.evaluation.metrics import percent
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
    "percent",
    "retrieval_recall",
    "zero_shot_classifier",
]
