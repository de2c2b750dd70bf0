"""Encoders assembled from layers: vision transformer, text transformer, fusion encoder."""

from torchflava.modules.encoders.fusion_encoder import FusionEncoder
from torchflava.modules.encoders.output import EncoderOutput
from torchflava.modules.encoders.text_encoder import TextEncoder
from torchflava.modules.encoders.vision_encoder import VisionEncoder

__all__ = ["EncoderOutput", "FusionEncoder", "TextEncoder", "VisionEncoder"]
