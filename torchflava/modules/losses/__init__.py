"""Training losses: the global image-text contrastive loss."""

from torchflava.modules.losses.contrastive import ContrastiveLoss, ContrastiveOutput, contrastive_loss
from torchflava.utils.distributed import GatherGrad

__all__ = ["ContrastiveLoss", "ContrastiveOutput", "GatherGrad", "contrastive_loss"]
