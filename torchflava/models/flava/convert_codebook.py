"""Checkpoint key maps for FLAVA's image codebook (the DALL-E dVAE encoder).

Layouts, each possibly under a prefix when the codebook sits inside a larger checkpoint:

* ``hf``: Hugging Face transformers' ``FlavaImageCodebook`` (``blocks.input.weight``,
  ``blocks.group_1.group.block_1.res_path.path.conv_1.weight``, ...; e.g.
  ``facebook/flava-image-codebook``), or ``FlavaForPreTraining``'s ``image_codebook.*``.
* ``tmm``: torchmultimodal's ``DalleEncoder`` / OpenAI's DALL-E encoder (``blocks.input.w``,
  ``blocks.group_1.block_1.res_path.conv_1.w``, ... with raw ``w``/``b`` parameters),
  ``DalleVAEEncoder`` (the same under ``encoder.``), ``FLAVAForPreTraining``
  (``image_codebook.encoder.``) or a wrapper of it (``model.image_codebook.encoder.``).
* ``torchflava``: :class:`~torchflava.modules.codebook.DalleEncoder` (``stem.weight``, ...).

All three store convolution weights as (out, in, k, k) and biases as (out,), so the tensors are
taken as they are. The map is driven by our model's own keys: a key the model needs and the
checkpoint lacks is *missing*, a checkpoint key (under the codebook's prefix) nothing maps to is
*unexpected*, and both raise. Keys outside the prefix belong to the rest of a larger checkpoint
(the FLAVA backbone, heads) and are ignored.
"""

import re
from typing import Optional

from torch import Tensor, nn

from torchflava.utils.checkpoint import PathLike, check_fits, load_state_dict, refuse_unmatched

CODEBOOK_LAYOUTS = ("torchflava", "hf", "tmm")

# The stem's weight in each layout: found at the end of a key, it tells the layout and the prefix.
_ANCHORS = {"torchflava": "stem.weight", "hf": "blocks.input.weight", "tmm": "blocks.input.w"}
# Our block-level key -> (hf, tmm); {g}/{b} are 1-based group and block numbers.
_BLOCK = {
    "skip": ("blocks.group_{g}.group.block_{b}.id_path", "blocks.group_{g}.block_{b}.id_path"),
    "conv1": ("blocks.group_{g}.group.block_{b}.res_path.path.conv_1", "blocks.group_{g}.block_{b}.res_path.conv_1"),
    "conv2": ("blocks.group_{g}.group.block_{b}.res_path.path.conv_2", "blocks.group_{g}.block_{b}.res_path.conv_2"),
    "conv3": ("blocks.group_{g}.group.block_{b}.res_path.path.conv_3", "blocks.group_{g}.block_{b}.res_path.conv_3"),
    "conv4": ("blocks.group_{g}.group.block_{b}.res_path.path.conv_4", "blocks.group_{g}.block_{b}.res_path.conv_4"),
}
_OTHER = {"stem": ("blocks.input", "blocks.input"), "head": ("blocks.output.conv", "blocks.output.conv")}
_SUFFIX = {"hf": {"weight": "weight", "bias": "bias"}, "tmm": {"weight": "w", "bias": "b"}}
_BLOCK_RE = re.compile(r"^groups\.(\d+)\.(\d+)\.(\w+)\.(weight|bias)$")
_OTHER_RE = re.compile(r"^(stem|head)\.(weight|bias)$")


def _reference_name(key: str, layout: str) -> str:
    """The reference key (without prefix) holding our ``key``."""
    if layout == "torchflava":
        return key
    col = 0 if layout == "hf" else 1
    m = _BLOCK_RE.match(key)
    if m is not None and m.group(3) in _BLOCK:
        group, block, part, kind = m.groups()
        return f"{_BLOCK[part][col].format(g=int(group) + 1, b=int(block) + 1)}.{_SUFFIX[layout][kind]}"
    m = _OTHER_RE.match(key)
    if m is not None:
        return f"{_OTHER[m.group(1)][col]}.{_SUFFIX[layout][m.group(2)]}"
    raise KeyError(f"no reference name for codebook key {key!r} in layout {layout!r}")


def _find_prefix(state_dict: dict[str, Tensor], layout: str) -> Optional[str]:
    """The prefix under which ``layout``'s stem weight sits; None if absent.

    Raises:
        ValueError: if the stem weight appears under several prefixes.
    """
    anchor = _ANCHORS[layout]
    prefixes = sorted(k[: -len(anchor)] for k in state_dict if k == anchor or k.endswith("." + anchor))
    if len(prefixes) > 1:
        raise ValueError(f"state_dict holds several {layout} codebooks, under prefixes {prefixes}")
    return prefixes[0] if prefixes else None


def detect_codebook_layout(state_dict: dict[str, Tensor]) -> tuple[str, str]:
    """Tell which layout an image-codebook state dict uses, and under which prefix.

    Args:
        state_dict (dict[str, Tensor]): the checkpoint: a codebook alone or a larger checkpoint
            holding one (e.g. ``FlavaForPreTraining``'s, under ``image_codebook.``).

    Returns:
        tuple[str, str]: the layout (``"torchflava"``, ``"hf"`` or ``"tmm"``) and the prefix of its
        keys (``""`` when none, else ending with ``"."``; ``"encoder."`` for a ``DalleVAEEncoder``).

    Raises:
        ValueError: if no layout's stem weight is found, or several are.
    """
    found = [(layout, _find_prefix(state_dict, layout)) for layout in CODEBOOK_LAYOUTS]
    found = [(layout, prefix) for layout, prefix in found if prefix is not None]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({found})"
        raise ValueError(
            f"state_dict must hold exactly one image codebook in a known layout; found {what} "
            f"(looked for keys ending with {sorted(_ANCHORS.values())}; first keys: {list(state_dict)[:5]})"
        )
    return found[0]


def convert_codebook_to_torchflava(
    state_dict: dict[str, Tensor], model: nn.Module, *, layout: Optional[str] = None, strict: bool = True
) -> dict[str, Tensor]:
    """Map an image-codebook state dict (Hugging Face, torchmultimodal/OpenAI or ours) onto ``model``'s keys.

    Args:
        state_dict (dict[str, Tensor]): the checkpoint; keys outside the codebook's prefix (the rest
            of a ``FlavaForPreTraining`` checkpoint, say) are ignored.
        model (nn.Module): a :class:`~torchflava.modules.codebook.DalleEncoder` whose keys drive the map.
        layout (Optional[str]): ``"hf"``, ``"tmm"`` or ``"torchflava"``; detected when None.
        strict (bool): raise on missing or unexpected keys.

    Returns:
        dict[str, Tensor]: our state dict (the checkpoint's tensors, not copies); without ``strict``
        it lacks the missing keys.

    Raises:
        ValueError: on an unknown layout, a checkpoint without that layout's codebook, tensor shapes
            that differ from the model's, or (strict) missing or unexpected keys, listing them.
    """
    if layout is None:
        layout, prefix = detect_codebook_layout(state_dict)
    elif layout not in CODEBOOK_LAYOUTS:
        raise ValueError(f"layout must be one of {CODEBOOK_LAYOUTS}, got {layout!r}")
    else:
        found = _find_prefix(state_dict, layout)
        if found is None:
            raise ValueError(f"state_dict holds no {layout} codebook (no key ending with {_ANCHORS[layout]!r})")
        prefix = found
    source = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    converted: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for key in model.state_dict():
        name = _reference_name(key, layout)
        if name in source:
            converted[key] = source[name]
            used.add(name)
        else:
            missing.append(prefix + name)
    unexpected = sorted(prefix + k for k in source if k not in used)
    if strict:
        hint = "Check hidden_dim, blocks_per_group, vocab_size and in_channels against the checkpoint."
        refuse_unmatched(f"codebook checkpoint ({layout} layout, prefix {prefix!r})", missing, unexpected, hint=hint)
    expected = model.state_dict()
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in converted.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise ValueError(
            "codebook checkpoint tensor shapes do not match the model (pass the checkpoint's sizes to "
            f"dalle_encoder): {wrong[:10]}"
        )
    return converted


def load_codebook_weights(
    model: nn.Module, path: PathLike, *, layout: Optional[str] = None, strict: bool = True
) -> None:
    """Load image-codebook weights from a path or URL into ``model``, whatever the checkpoint's layout.

    Args:
        model (nn.Module): a :class:`~torchflava.modules.codebook.DalleEncoder`.
        path (PathLike): file, Hugging Face checkpoint directory or URL (see
            :func:`torchflava.utils.checkpoint.load_state_dict`); a codebook alone or a checkpoint
            holding one (``FlavaForPreTraining``, torchmultimodal's ``FLAVAForPreTraining``).
        layout (Optional[str]): force a layout instead of detecting it.
        strict (bool): raise on missing or unexpected keys.

    Raises:
        ValueError: as :func:`convert_codebook_to_torchflava`, or if the file is not a state dict.
        FileNotFoundError: if the path does not exist.
    """
    converted = convert_codebook_to_torchflava(load_state_dict(path), model, layout=layout, strict=strict)
    check_fits(converted, model)
    model.load_state_dict(converted, strict=strict)
