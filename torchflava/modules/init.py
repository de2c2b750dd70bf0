"""Generic weight initialisation: torch's leaf layers by a BERT/ViT rule, every other module by its own
``reset_parameters``."""

import functools
import inspect

from torch import nn

from torchflava.utils.checks import check_module, check_positive_number

_TORCH_LEAVES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.LayerNorm)


def init_transformer_weights(module: nn.Module, *, std: float = 0.02) -> None:
    """BERT/ViT initialisation of one torch leaf layer (use with ``model.apply``); others untouched.

    Linear, convolution and Embedding weights get N(0, std) and zero biases (the padding row of an
    embedding is zeroed); LayerNorms get weight 1 and bias 0.

    Args:
        module (nn.Module): the module to initialise.
        std (float): standard deviation of the normal init.

    Raises:
        TypeError: if ``module`` is not a module (a str did nothing, silently).
        ValueError: if ``std`` is not a positive number (torch's ``normal_`` named no argument).
    """
    check_module("module", module)
    check_positive_number("std", std)
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
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


def init_weights(model: nn.Module, *, std: float = 0.02) -> None:
    """(Re-)initialise every parameter of ``model``, whatever modules it is composed of.

    torch's leaf layers (linear, convolution, embedding, LayerNorm) get the BERT/ViT rule of
    :func:`init_transformer_weights`; every other module that defines ``reset_parameters`` (ours: CLS
    and mask tokens, positions, temperatures; a user's own blocks; torch's other layers, or their
    ``_reset_parameters`` as ``nn.MultiheadAttention`` has) calls it for the raw parameters it owns,
    with ``std=std`` where it takes that keyword (ours do), after the leaf rule and after its children's resets, as
    ``nn.Module.apply`` orders them: a block that re-initialises its children (a zero-initialised output
    projection, a token module drawn its own way) has the last word. An embedding's padding row is zero after it, also
    where a linear layer shares the table (a tied decoder). Works on meta-device models once materialised
    with ``to_empty``.

    Args:
        model (nn.Module): the model (or any module).
        std (float): standard deviation of the normal init of the leaf layers.

    Raises:
        TypeError: if ``model`` is not a module.
        ValueError: if ``std`` is not a positive number, or, naming them, if modules own parameters and have
            no ``reset_parameters`` (nothing would initialise those; checked before any parameter changes).
    """
    check_module("model", model)
    check_positive_number("std", std)
    resets, uncovered, has_reset = {}, [], {}
    for name, module in model.named_modules():
        leaf = next((kind for kind in _TORCH_LEAVES if isinstance(module, kind)), None)
        reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
        if leaf is not None and getattr(type(module), "reset_parameters", None) is leaf.reset_parameters:
            has_reset[name] = True  # the BERT/ViT rule covers a plain leaf
            continue  # (a subclass with its own reset_parameters, e.g. a LoRA linear, also runs it)
        has_reset[name] = callable(reset)
        if callable(reset):
            resets[id(module)] = reset
        elif not (isinstance(module, (nn.ParameterList, nn.ParameterDict)) and has_reset.get(name.rpartition(".")[0])):
            # (a ParameterList's parameters are its owner's to initialise)
            uncovered += [f"{name}.{key}" if name else key for key, _ in module.named_parameters(recurse=False)]
    if uncovered:
        raise ValueError(
            f"init_weights: expected a reset_parameters() on the modules that own {uncovered}, got none "
            "(nothing would initialise them)"
        )
    model.apply(functools.partial(init_transformer_weights, std=std))
    for module in model.modules():  # an embedding's padding row again: a linear layer sharing the table (a tied
        # language-model or MLM decoder) was drawn after it, over the zeros (the row starts at zero, as untied)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    for module in _children_first(model):  # as nn.Module.apply: a parent's reset that sets a child's tensors wins
        reset = resets.get(id(module))
        if reset is not None:
            reset(std=std) if "std" in inspect.signature(reset).parameters else reset()


def _children_first(model: nn.Module) -> list[nn.Module]:
    """Every module of ``model`` once (a shared one where first met), each after its children (post-order)."""
    seen, order, stack = set(), [], [(model, False)]
    while stack:
        module, expanded = stack.pop()
        if expanded:
            order.append(module)
        elif id(module) not in seen:
            seen.add(id(module))
            stack.append((module, True))
            stack.extend((child, False) for child in reversed(list(module.children())))
    return order
