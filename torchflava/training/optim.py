"""AdamW parameter groups, the warmup + cosine schedule, and gradient clipping that works under FSDP2."""

import math
import sys
from typing import Iterable, Mapping, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

# Modules whose ``weight`` is decayed (convolutions: transposed ones too), and nn.MultiheadAttention's
# input projections, held as raw parameters beside its nn.Linear out_proj.
_DECAYED_MODULES = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
_ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def _dtensor_types() -> tuple[type, ...]:
    """``(DTensor,)``, or ``()`` while ``torch.distributed.tensor`` was never imported: no tensor can be one
    then, and importing it (over half a second, with sympy) for an ``isinstance`` check would slow every command."""
    module = sys.modules.get("torch.distributed.tensor")
    return (module.DTensor,) if module is not None and hasattr(module, "DTensor") else ()


def checkpoint_name(name: str) -> str:
    """``name`` (a parameter's, from ``named_parameters``) without the ``_orig_mod`` parts that a
    ``torch.compile``-wrapped module adds: the name a checkpoint gives it (DCP's state dicts drop them), so
    that a compiled run and an eager one name their parameters alike (a resume compares the names)."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def param_groups(
    model: nn.Module, weight_decay: float, lr_multipliers: Optional[Mapping[str, float]] = None
) -> list[dict]:
    """Split trainable parameters into a decayed group and a group without weight decay, and
    apart again for each learning-rate multiplier.

    Only the weights of linear and convolution layers (the patch projection included; ``nn.Bilinear``,
    transposed convolutions, ``nn.MultiheadAttention``'s input projections, and a parametrized weight's
    stored ``original``, e.g. under spectral norm) are decayed. Biases, norms, embedding tables, position
    embeddings, CLS and mask tokens and the logit scale are not; nor is an embedding table that a linear
    layer shares (a language model's output projection tied to its word table). A parameter held raw
    (``self.scale = nn.Parameter(...)``) is not decayed whatever its shape: a (D,) scale, a (1, D) learned
    query, but also a projection matrix (open_clip's ``proj``), which decays in an ``nn.Linear``.

    Args:
        model (nn.Module): the model.
        weight_decay (float): decay of the decayed group, >= 0.
        lr_multipliers (Optional[Mapping[str, float]]): module name -> factor on the learning rate of
            its parameters (0 freezes them in effect). A name matches a parameter when it is a part
            of its dotted path (``"text_encoder"`` matches ``model.text_encoder.norm.weight``); a tied
            parameter (a word table two towers share) by any of its paths, which must all get one multiplier.

    Returns:
        list[dict]: the decayed and the undecayed group at multiplier 1 (the decayed one alone when both would
        be empty), then the same pair for each multiplier in the order given (empty groups left out). Each group
        has ``names`` (its
        parameter names, as checkpoints name them: without ``torch.compile``'s ``_orig_mod``),
        ``weight_decay`` and ``lr_multiplier``.

    Raises:
        ValueError: if ``weight_decay`` is negative, a multiplier is not a number >= 0, a name
            matches no trainable parameter, a parameter matches names of different multipliers, or a tied
            parameter's names get different multipliers (1 where no name matches one of them).
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    multipliers = dict(lr_multipliers or {})
    for key, value in multipliers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"lr_multipliers[{key!r}] must be a number >= 0, got {value!r}")
    decayed = {id(w) for m in model.modules() for w in _stored_weights(m, _decayed_names(m))}
    tables = (m for m in model.modules() if isinstance(m, nn.Embedding))
    decayed -= {id(w) for m in tables for w in _stored_weights(m, ("weight",))}  # (a tied word table)
    factors = sorted(set(multipliers.values()) - {1.0}, key=list(multipliers.values()).index)
    groups = {(d, f): ([], []) for f in [1.0, *factors] for d in (True, False)}
    # every name of each parameter: a tied one (a decoder's word table shared with the text tower's) is one
    # parameter under several, and named_parameters gives it under its first alone
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(checkpoint_name(name))
    used = set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = checkpoint_name(name)
        matched = {alias: _matching_keys(alias, multipliers) for alias in aliases[id(param)]}
        used.update(key for keys in matched.values() for key in keys)
        factor = _tied_multiplier(name, matched, multipliers)
        params, names = groups[(id(param) in decayed, factor)]
        params.append(param)
        names.append(name)
    unused = [k for k in multipliers if k not in used]
    if unused:
        raise ValueError(f"lr_multipliers: {unused} name no module with trainable parameters in the model")
    # The groups at multiplier 1 are kept empty (the first one's lr is the run's), but not both: torch's distributed
    # state dict, which checkpoints go through, loads an optimiser with one empty group at most (every parameter
    # under another multiplier: a run that trained and checkpointed, and whose resume was refused)
    base = bool(groups[(True, 1.0)][0] or groups[(False, 1.0)][0])
    return [
        {"params": p, "names": n, "weight_decay": weight_decay if d else 0.0, "lr_multiplier": f}
        for (d, f), (p, n) in groups.items()
        if p or (f == 1.0 and (d or base))
    ]


def _matching_keys(name: str, multipliers: Mapping[str, float]) -> list[str]:
    """The keys of ``multipliers`` that are a part of the dotted path ``name``; refused if their factors differ."""
    keys = [k for k in multipliers if f".{k}." in f".{name}."]
    if len({multipliers[k] for k in keys}) > 1:
        raise ValueError(f"lr_multipliers: {name} is matched by {keys}, which give it different multipliers")
    return keys


def _tied_multiplier(name: str, matched: Mapping[str, list[str]], multipliers: Mapping[str, float]) -> float:
    """The multiplier of the parameter first named ``name``, from the keys ``matched`` by each of its names (1.0
    where none is): refused where its names get different ones (a tied table would otherwise take its first
    name's, and the other towers' keys would be left out without a word)."""
    factors = {alias: float(multipliers[keys[0]]) if keys else 1.0 for alias, keys in matched.items()}
    if len(set(factors.values())) > 1:
        said = ", ".join(f"{a} {f} ({repr(matched[a][0]) if matched[a] else 'no key'})" for a, f in factors.items())
        raise ValueError(
            f"lr_multipliers: {name} is one parameter under {len(factors)} names (tied), which get different "
            f"multipliers: {said}; give all its names one multiplier"
        )
    return factors[name]


def _decayed_names(module: nn.Module) -> tuple[str, ...]:
    """The names of ``module``'s weights that :func:`param_groups` decays (empty for other modules)."""
    if isinstance(module, _DECAYED_MODULES):
        return ("weight",)
    return _ATTENTION_WEIGHTS if isinstance(module, nn.MultiheadAttention) else ()


def _stored_weights(module: nn.Module, names: Iterable[str]) -> list[nn.Parameter]:
    """The parameters stored for ``module``'s ``names``: a parametrized one's ``original``, read without
    computing the weight (``module.weight`` would run the parametrization: a spectral norm's power
    iteration, which updates its vectors in training mode); None entries (no bias, no q_proj) left out."""
    found = []
    for name in names:
        if parametrize.is_parametrized(module, name):
            found.append(getattr(module.parametrizations[name], "original", None))
        else:
            found.append(module._parameters.get(name))
    return [weight for weight in found if weight is not None]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over ``warmup_steps``, then half a cosine down to ``min_ratio`` x lr.

    Optimiser step k (1-based) trains at ``k / warmup_steps`` x lr up to ``warmup_steps`` (the first
    step at lr / ``warmup_steps``, not at 0 as in transformers' ``get_cosine_schedule_with_warmup``),
    then at ``min_ratio + (1 - min_ratio) (1 + cos(pi p)) / 2`` x lr with ``p = (k - 1 - warmup_steps)
    / (total_steps - warmup_steps)``: the peak again at step ``warmup_steps + 1``, and ``min_ratio`` x lr
    reached after the last step (held by any step past it).

    Args:
        optimizer (torch.optim.Optimizer): the optimiser; its lr is the peak.
        warmup_steps (int): steps of linear warmup, >= 0.
        total_steps (int): steps of the whole schedule, > ``warmup_steps``.
        min_ratio (float): final lr as a fraction of the peak, in [0, 1].

    Returns:
        torch.optim.lr_scheduler.LambdaLR: step it once per optimiser step.

    Raises:
        ValueError: if the steps or ``min_ratio`` are out of range.
    """
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")
    if not 0 <= min_ratio <= 1:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def grad_norm(grads: Iterable[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of ``grads`` (plain tensors, FSDP2-sharded ``DTensor`` ones, or a mix: the
    norm of the full, unsharded gradients), as a plain CPU scalar; 0 for none.

    Plain gradients' norms are accumulated in float32 whatever their narrower dtype: a model whose parameters
    are fp16 (or bf16) had each norm rounded to that dtype, so finite fp16 gradients of norm over 65504
    gave an infinite norm (the loop stopped as on a NaN, and clipping zeroed them). float64 gradients' in
    float64 (asked for float32, torch refused them, and fit failed on an fp64 model's first step)."""
    grads, dtensor = list(grads), _dtensor_types()
    squares = []
    sharded = [g for g in grads if isinstance(g, dtensor)]
    if sharded:
        norm = torch.nn.utils.get_total_norm(sharded)
        norm = norm.full_tensor() if isinstance(norm, dtensor) else norm
        squares.append(norm.float().cpu() ** 2)
    by_device: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in grads:
        if not isinstance(g, dtensor):  # (float32 for narrower dtypes, float64 for float64)
            by_device.setdefault((g.device, torch.promote_types(g.dtype, torch.float32)), []).append(g)
    for (_, dtype), group in by_device.items():
        norms = torch._foreach_norm(group, 2, dtype=dtype)  # (torch's own clipping uses it too)
        squares.append(torch.linalg.vector_norm(torch.stack(norms)).cpu() ** 2)
    return torch.stack(squares).sum().sqrt() if squares else torch.tensor(0.0)


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale gradients so their global L2 norm is at most ``max_norm``; return the norm before.

    Works for plain tensors, FSDP2-sharded ``DTensor`` gradients, and a mix of both (FSDP2 with
    replicated scalar parameters): the norm is the one of the full, unsharded gradients.

    Args:
        parameters (Iterable[nn.Parameter]): parameters whose ``.grad`` to clip.
        max_norm (float): the bound, > 0.

    Returns:
        torch.Tensor: the total norm before clipping (a plain scalar tensor).

    Raises:
        ValueError: if ``max_norm`` is not positive.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    grads = [p.grad for p in parameters if p.grad is not None]
    total, dtensor = grad_norm(grads), _dtensor_types()
    coefficient = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for grad in grads:
        grad.mul_(coefficient.to(grad.device, grad.dtype) if not isinstance(grad, dtensor) else coefficient.item())
    return total
