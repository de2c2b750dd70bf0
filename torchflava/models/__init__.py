"""Models assembled from ``torchflava.modules``: ``from torchflava.models import clip_model, flava_model``."""

from torchflava.models.clip import CLIPModel, CLIPOutput, clip_model, clip_vit_b16, clip_vit_b32, clip_vit_l14
from torchflava.models.flava import (
    FLAVAForClassification,
    FLAVAForPretraining,
    FLAVAModel,
    FLAVAOutput,
    PretrainingBatch,
    flava_image_encoder,
    flava_model,
    flava_model_for_classification,
    flava_model_for_pretraining,
    flava_multimodal_encoder,
    flava_text_encoder,
)

__all__ = [
    "CLIPModel",
    "CLIPOutput",
    "clip_model",
    "clip_vit_b16",
    "clip_vit_b32",
    "clip_vit_l14",
    "FLAVAForClassification",
    "flava_model_for_classification",
    "FLAVAForPretraining",
    "PretrainingBatch",
    "flava_model_for_pretraining",
    "FLAVAModel",
    "FLAVAOutput",
    "flava_image_encoder",
    "flava_model",
    "flava_multimodal_encoder",
    "flava_text_encoder",
]
