"""CLIP: builders, the model and its outputs, and checkpoint conversion."""

from torchflava.models.clip.builders import clip_model, clip_model_arguments, clip_vit_b16, clip_vit_b32, clip_vit_l14
from torchflava.models.clip.convert_weights import convert_to_hf, convert_to_torchflava
from torchflava.models.clip.model import CLIPModel, CLIPOutput

__all__ = ["CLIPModel", "CLIPOutput", "clip_model", "clip_vit_b16", "clip_vit_b32"]
__all__ += ["clip_model_arguments", "clip_vit_l14", "convert_to_hf", "convert_to_torchflava"]
