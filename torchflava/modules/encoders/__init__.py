"""Encoders assembled from layers: vision transformer, text transformer, multimodal encoder, and the
generic ``transformer_encoder`` builder."""

from torchflava.modules.encoders.builders import transformer_encoder
from torchflava.modules.encoders.multimodal_encoder import MultimodalEncoder
from torchflava.modules.encoders.output import CLS_POSITION, EncoderOutput
from torchflava.modules.encoders.text_encoder import TextEncoder
from torchflava.modules.encoders.vision_encoder import VisionEncoder

__all__ = ["CLS_POSITION", "EncoderOutput", "MultimodalEncoder", "TextEncoder", "VisionEncoder", "transformer_encoder"]
