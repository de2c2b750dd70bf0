"""Weight initialisation shared by the transformer models."""

from torch import nn


def init_transformer_weights(module: nn.Module, *, std: float = 0.02) -> None:
    """BERT/ViT initialisation for one module (use with ``model.apply``).

    Linear, Conv2d and Embedding weights get N(0, std) and zero biases (the padding row of an
    embedding is zeroed); LayerNorms get weight 1 and bias 0. Modules with their own
    ``reset_parameters`` for raw parameters (tokens, positions) are left to it.

    Args:
        module (nn.Module): the module to initialise.
        std (float): standard deviation of the normal init.
    """
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
