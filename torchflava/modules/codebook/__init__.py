"""Image codebooks: image -> discrete visual tokens (the DALL-E dVAE encoder FLAVA uses)."""

from torchflava.modules.codebook.dalle_vae import DalleEncoder, DalleResidualBlock, dalle_encoder, map_pixels

__all__ = ["DalleEncoder", "DalleResidualBlock", "dalle_encoder", "map_pixels"]
