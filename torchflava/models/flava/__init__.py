"""FLAVA: builders, the model and its output type, and checkpoint conversion."""

from torchflava.models.flava.builders import (
    flava_image_encoder,
    flava_model,
    flava_model_arguments,
    flava_model_for_classification,
    flava_model_for_pretraining,
    flava_multimodal_encoder,
    flava_text_encoder,
)
from torchflava.models.flava.classification import ClassificationOutput, FLAVAForClassification
from torchflava.models.flava.convert_weights import convert_to_hf, convert_to_torchflava, load_flava_weights
from torchflava.models.flava.model import FLAVAModel, FLAVAOutput
from torchflava.models.flava.pretraining import (
    FLAVAForPretraining,
    FLAVALosses,
    FLAVAPretrainingOutput,
    LossWeights,
    PretrainingBatch,
)

__all__ = [
    "flava_model_arguments",
    "ClassificationOutput",
    "FLAVAForClassification",
    "flava_model_for_classification",
    "FLAVAForPretraining",
    "FLAVALosses",
    "FLAVAModel",
    "FLAVAOutput",
    "FLAVAPretrainingOutput",
    "LossWeights",
    "PretrainingBatch",
    "convert_to_hf",
    "convert_to_torchflava",
    "flava_image_encoder",
    "flava_model",
    "flava_model_for_pretraining",
    "flava_multimodal_encoder",
    "flava_text_encoder",
    "load_flava_weights",
]
