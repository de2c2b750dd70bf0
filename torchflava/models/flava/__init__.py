"""FLAVA: builders, the model and its output type, and checkpoint conversion."""

from torchflava.models.flava.builders import (
    flava_image_encoder,
    flava_model,
    flava_multimodal_encoder,
    flava_text_encoder,
    transformer_encoder,
)
from torchflava.models.flava.convert_weights import convert_to_hf, convert_to_torchflava, load_flava_weights
from torchflava.models.flava.model import FLAVAModel, FLAVAOutput

__all__ = [
    "FLAVAModel",
    "FLAVAOutput",
    "convert_to_hf",
    "convert_to_torchflava",
    "flava_image_encoder",
    "flava_model",
    "flava_multimodal_encoder",
    "flava_text_encoder",
    "load_flava_weights",
    "transformer_encoder",
]
