"""Checkpoint key maps between torchflava and the two public FLAVA layouts.

* ``hf``: Hugging Face transformers' ``FlavaModel`` (keys ``image_model.*``, ``text_model.*``,
  ``multimodal_model.*``, ...) and ``FlavaForPreTraining`` (the same under ``flava.``, plus heads
  and the image codebook), e.g. ``facebook/flava-full``.
* ``tmm``: torchmultimodal's ``FLAVAModel`` (``image_encoder.*``, ``text_encoder.*``, ``mm_encoder.*``)
  and ``FLAVAForPreTraining`` / ``FLAVAForClassification`` (the same under ``model.``).

The maps are driven by our model's own state-dict keys, so every key is accounted for: a key the
model needs and the checkpoint lacks is *missing*, a checkpoint key nothing maps to is *unexpected*,
and both raise. Keys that belong to the pretraining heads or the image codebook are recognised and
returned as skipped. Our fused QKV projection is the concatenation of the references' query, key
and value projections.
"""

import re
from typing import Optional

import torch
from torch import Tensor, nn

from torchflava.models.flava.convert_codebook import convert_codebook_to_torchflava
from torchflava.utils.checkpoint import PathLike, check_fits, load_state_dict, mismatch, refuse_mismatches

LAYOUTS = ("torchflava", "hf", "tmm")

# Tower prefixes: ours -> (hf, tmm).
_TOWERS = {
    "image_encoder": ("image_model", "image_encoder"),
    "text_encoder": ("text_model", "text_encoder"),
    "multimodal_encoder": ("multimodal_model", "mm_encoder"),
}
# Keys inside one transformer layer: ours -> (hf, tmm). attn.q/k/v are parts of our fused attn.qkv.
_LAYER = {
    "attn.q": ("attention.attention.query", "attention.query"),
    "attn.k": ("attention.attention.key", "attention.key"),
    "attn.v": ("attention.attention.value", "attention.value"),
    "attn.out_proj": ("attention.output.dense", "attention.output"),
    "mlp.fc1": ("intermediate.dense", "feedforward.model.0"),
    "mlp.fc2": ("output.dense", "feedforward.model.2"),
    "attn_norm": ("layernorm_before", "attention_layernorm"),
    "mlp_norm": ("layernorm_after", "feedforward_layernorm"),
}
# Every other key (the ``{}`` is weight/bias): ours -> (hf, tmm).
_OTHER = {
    "image_encoder.embeddings.cls_token": ("image_model.embeddings.cls_token", "image_encoder.embeddings.cls_token"),
    "image_encoder.embeddings.mask_token": ("image_model.embeddings.mask_token", "image_encoder.embeddings.mask_token"),
    "image_encoder.embeddings.pos_embed": (
        "image_model.embeddings.position_embeddings",
        "image_encoder.embeddings.position_embeddings",
    ),
    "image_encoder.embeddings.proj.{}": (
        "image_model.embeddings.patch_embeddings.projection.{}",
        "image_encoder.embeddings.patch_embeddings.projection.{}",
    ),
    "text_encoder.embeddings.word_embed.weight": (
        "text_model.embeddings.word_embeddings.weight",
        "text_encoder.embeddings.word_embeddings.weight",
    ),
    "text_encoder.embeddings.pos_embed.weight": (
        "text_model.embeddings.position_embeddings.weight",
        "text_encoder.embeddings.position_embeddings.weight",
    ),
    "text_encoder.embeddings.type_embed.weight": (
        "text_model.embeddings.token_type_embeddings.weight",
        "text_encoder.embeddings.token_type_embeddings.weight",
    ),
    "text_encoder.embeddings.norm.{}": ("text_model.embeddings.LayerNorm.{}", "text_encoder.embeddings.layer_norm.{}"),
    "multimodal_encoder.cls_token": ("multimodal_model.cls_token", "mm_encoder.cls_token"),
    "multimodal_encoder.image_proj.{}": ("image_to_mm_projection.{}", "image_to_mm_projection.{}"),
    "multimodal_encoder.text_proj.{}": ("text_to_mm_projection.{}", "text_to_mm_projection.{}"),
    "image_projection.{}": ("image_projection.{}", "image_projection.{}"),
    "text_projection.{}": ("text_projection.{}", "text_projection.{}"),
    "logit_scale": ("logit_scale", "loss.contrastive_loss.logit_scale"),
}
for _ours, (_hf, _tmm) in _TOWERS.items():
    _OTHER[f"{_ours}.norm.{{}}"] = (f"{_hf}.layernorm.{{}}", f"{_tmm}.layernorm.{{}}")
    _OTHER[f"{_ours}.pooler.dense.{{}}"] = (f"{_hf}.pooler.dense.{{}}", f"{_tmm}.pooler.dense.{{}}")

# Checkpoint keys that are recognised but belong to other parts (heads, codebook) or are buffers.
_SKIPPED = {
    "hf": re.compile(
        r"^(image_codebook|mim_head|mlm_head|itm_head|mmm_image_head|mmm_text_head)\."
        r"|^text_model\.embeddings\.(position_ids|token_type_ids)$"
    ),
    "tmm": re.compile(r"^(image_codebook|loss|classifier)\.|^text_encoder\.embeddings\.position_ids$"),
    "torchflava": re.compile(r"^(codebook|mlm_head|mim_head|mmm_text_head|mmm_image_head|itm_head)\."),
}
_LAYER_RE = re.compile(r"^(\w+)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_OTHER_RE = re.compile(r"^(.+)\.(weight|bias)$")


def _reference_names(key: str, layout: str) -> list[str]:
    """The reference key(s) holding our ``key``: three for a fused QKV tensor, else one."""
    if layout == "torchflava":
        return [key]
    col = 0 if layout == "hf" else 1
    m = _LAYER_RE.match(key)
    if m is not None:
        tower, index, inner, kind = m.groups()
        prefix = f"{_TOWERS[tower][col]}.encoder.layer.{index}."
        parts = ("attn.q", "attn.k", "attn.v") if inner == "attn.qkv" else (inner,)
        return [f"{prefix}{_LAYER[p][col]}.{kind}" for p in parts]
    if key in _OTHER:
        return [_OTHER[key][col]]
    m = _OTHER_RE.match(key)
    if m is not None and f"{m.group(1)}.{{}}" in _OTHER:
        return [_OTHER[f"{m.group(1)}.{{}}"][col].format(m.group(2))]
    raise KeyError(f"no reference name for torchflava key {key!r} in layout {layout!r}")


def detect_layout(state_dict: dict[str, Tensor]) -> str:
    """Tell which layout a FLAVA state dict uses.

    Args:
        state_dict (dict[str, Tensor]): the checkpoint (with or without a ``flava.``/``model.`` prefix).

    Returns:
        str: ``"torchflava"``, ``"hf"`` or ``"tmm"``.

    Raises:
        ValueError: if the keys match none of them.
    """
    keys = list(state_dict)
    if any(k.startswith(("multimodal_encoder.", "model.multimodal_encoder.")) for k in keys):
        return "torchflava"
    if any(k.startswith(("image_model.", "text_model.", "multimodal_model.", "flava.")) for k in keys):
        return "hf"
    if any(k.startswith(("mm_encoder.", "image_encoder.encoder.layer.", "model.image_encoder.")) for k in keys):
        return "tmm"
    raise ValueError(f"not a FLAVA checkpoint in a known layout (first keys: {keys[:5]})")


def _strip_prefix(state_dict: dict[str, Tensor], layout: str) -> dict[str, Tensor]:
    prefix = {"hf": "flava.", "tmm": "model.", "torchflava": "model."}[layout]
    if not any(k.startswith(prefix) for k in state_dict):
        return dict(state_dict)
    # Wrapped checkpoints keep the backbone under the prefix and heads/codebook beside it.
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def convert_to_torchflava(
    state_dict: dict[str, Tensor], model: nn.Module, *, layout: Optional[str] = None, strict: bool = True
) -> tuple[dict[str, Tensor], list[str]]:
    """Map a reference FLAVA state dict onto ``model``'s keys.

    Args:
        state_dict (dict[str, Tensor]): the checkpoint.
        model (nn.Module): a :class:`FLAVAModel` whose keys drive the map.
        layout (Optional[str]): ``"hf"``, ``"tmm"`` or ``"torchflava"``; detected when None.
        strict (bool): raise on missing or unexpected keys.

    Returns:
        tuple[dict[str, Tensor], list[str]]: our state dict, and the checkpoint keys skipped because
        they belong to the pretraining heads or the codebook.

    Raises:
        ValueError: on an unknown layout, or (strict) on missing or unexpected keys, listing them.
    """
    layout = detect_layout(state_dict) if layout is None else layout
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    source = _strip_prefix(state_dict, layout)
    converted: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    wrong: list[str] = []
    for key, target in model.state_dict().items():
        names = _reference_names(key, layout)
        if all(n in source for n in names):
            if bad := mismatch(key, [source[n] for n in names], target):
                wrong.append(bad)
            else:
                converted[key] = source[names[0]] if len(names) == 1 else torch.cat([source[n] for n in names])
            used.update(names)
        elif key == "logit_scale" and layout == "tmm":
            # torchmultimodal's FLAVAModel keeps no temperature (only its pretraining loss does).
            converted[key] = torch.tensor(float(model.logit_scale_init))
        else:
            missing.extend(n for n in names if n not in source)
            used.update(n for n in names if n in source)  # parts of a fused tensor are expected, not unexpected
    refuse_mismatches(wrong)
    skipped = sorted(k for k in source if k not in used and _SKIPPED[layout].search(k))
    unexpected = sorted(k for k in source if k not in used and not _SKIPPED[layout].search(k))
    if strict and (missing or unexpected):
        raise ValueError(
            f"checkpoint ({layout} layout) does not match the model: "
            f"missing {len(missing)} key(s) {missing[:20]}, unexpected {len(unexpected)} key(s) {unexpected[:20]}. "
            "Check that the architecture arguments match the checkpoint."
        )
    return converted, skipped


def convert_to_hf(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map our state dict to Hugging Face ``FlavaModel`` keys (split QKV into query/key/value).

    Args:
        state_dict (dict[str, Tensor]): a :class:`FLAVAModel` state dict.

    Returns:
        dict[str, Tensor]: the same tensors under ``FlavaModel`` names (prefix them with ``flava.``
        for a ``FlavaForPreTraining``).
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        names = _reference_names(key, "hf")
        chunks = value.chunk(len(names), dim=0) if len(names) > 1 else (value,)
        out.update({n: c.clone() for n, c in zip(names, chunks)})
    return out


def load_flava_weights(
    model: nn.Module, path: PathLike, *, layout: Optional[str] = None, strict: bool = True
) -> list[str]:
    """Load FLAVA weights from a path or URL into ``model``, whatever the checkpoint's layout.

    Args:
        model (nn.Module): a :class:`FLAVAModel`.
        path (PathLike): file, Hugging Face checkpoint directory or URL (see
            :func:`torchflava.utils.checkpoint.load_state_dict`).
        layout (Optional[str]): force a layout instead of detecting it.
        strict (bool): raise on missing or unexpected keys.

    Returns:
        list[str]: checkpoint keys skipped because they belong to pretraining heads or the codebook.

    Raises:
        ValueError: on key mismatches (strict) or tensor shapes that differ from the model's.
    """
    converted, skipped = convert_to_torchflava(load_state_dict(path), model, layout=layout, strict=strict)
    model.load_state_dict(converted, strict=strict)
    return skipped


def flava_kwargs_from_hf_config(config: dict) -> dict:
    """``flava_model`` keyword arguments for a Hugging Face ``FlavaConfig`` (its ``config.json`` as a dict).

    Args:
        config (dict): the config, with ``image_config``, ``text_config`` and ``multimodal_config``.

    Returns:
        dict: keyword arguments for :func:`torchflava.models.flava_model`.

    Raises:
        ValueError: if a sub-config is missing, or uses an activation or layout we do not build.
    """
    try:
        image, text, mm = config["image_config"], config["text_config"], config["multimodal_config"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"config is not a FlavaConfig: it has no {err.args[0]!r}") from err
    for name, sub in (("image_config", image), ("text_config", text), ("multimodal_config", mm)):
        if not isinstance(sub, dict):
            raise ValueError(f"config {name} must be an object, got {type(sub).__name__}")
        if sub.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{name}.hidden_act must be 'gelu', got {sub['hidden_act']!r}")
    if not mm.get("use_cls_token", True):
        raise ValueError("multimodal_config.use_cls_token=False is not supported")
    eps = {image.get("layer_norm_eps", 1e-12), text.get("layer_norm_eps", 1e-12), mm.get("layer_norm_eps", 1e-12)}
    if len(eps) != 1:
        raise ValueError(f"the three encoders use different layer_norm_eps {sorted(eps)}; flava_model takes one")
    return dict(
        image_embed_dim=image["hidden_size"],
        image_num_layers=image["num_hidden_layers"],
        image_num_heads=image["num_attention_heads"],
        image_mlp_dim=image["intermediate_size"],
        image_size=image["image_size"],
        patch_size=image["patch_size"],
        in_channels=image.get("num_channels", 3),
        text_embed_dim=text["hidden_size"],
        text_num_layers=text["num_hidden_layers"],
        text_num_heads=text["num_attention_heads"],
        text_mlp_dim=text["intermediate_size"],
        vocab_size=text["vocab_size"],
        max_seq_len=text["max_position_embeddings"],
        type_vocab_size=text.get("type_vocab_size", 2),
        pad_token_id=text.get("pad_token_id", 0),
        multimodal_embed_dim=mm["hidden_size"],
        multimodal_num_layers=mm["num_hidden_layers"],
        multimodal_num_heads=mm["num_attention_heads"],
        multimodal_mlp_dim=mm["intermediate_size"],
        projection_dim=config.get("projection_dim", 768),
        norm_eps=eps.pop(),
        logit_scale_init=config.get("logit_scale_init_value", 2.6592),
    )


# Pretraining heads: ours -> (hf, tmm) prefixes, and the names inside one prediction head.
_HEADS = {
    "mlm_head": ("mlm_head", "loss.mlm_loss.cls"),
    "mim_head": ("mim_head", "loss.mim_loss.cls"),
    "mmm_text_head": ("mmm_text_head", "loss.mmm_loss.mlm.cls"),
    "mmm_image_head": ("mmm_image_head", "loss.mmm_loss.mim.cls"),
}
_PREDICTION_HEAD = {
    "dense.weight": ("transform.dense.weight", "dense.weight"),
    "dense.bias": ("transform.dense.bias", "dense.bias"),
    "norm.weight": ("transform.LayerNorm.weight", "layer_norm.weight"),
    "norm.bias": ("transform.LayerNorm.bias", "layer_norm.bias"),
    "decoder.weight": ("decoder.weight", "decoder.weight"),
    "decoder.bias": ("bias", "bias"),  # the references keep the decoder bias as the head's own `bias`
}
_ITM_HEAD = {
    "itm_head.pooler.dense.weight": ("itm_head.pooler.dense.weight", "loss.itm_loss.pooler.dense.weight"),
    "itm_head.pooler.dense.bias": ("itm_head.pooler.dense.bias", "loss.itm_loss.pooler.dense.bias"),
    "itm_head.classifier.weight": ("itm_head.seq_relationship.weight", "loss.itm_loss.cls.seq_relationship.weight"),
    "itm_head.classifier.bias": ("itm_head.seq_relationship.bias", "loss.itm_loss.cls.seq_relationship.bias"),
}
# The references also store each head's decoder bias a second time (a tied alias).
_HEAD_ALIASES = re.compile(
    r"^(mlm_head|mim_head|mmm_text_head|mmm_image_head)\.decoder\.bias$|^loss\..*cls\.decoder\.bias$"
)


def _head_reference_name(key: str, layout: str) -> str:
    if layout == "torchflava":
        return key
    col = 0 if layout == "hf" else 1
    if key in _ITM_HEAD:
        return _ITM_HEAD[key][col]
    head, _, inner = key.partition(".")
    return f"{_HEADS[head][col]}.{_PREDICTION_HEAD[inner][col]}"


def load_flava_pretraining_weights(model: nn.Module, path: PathLike, *, strict: bool = True) -> list[str]:
    """Load a whole pretraining checkpoint (backbone, heads and, when present, the codebook).

    Accepts Hugging Face ``FlavaForPreTraining``, torchmultimodal ``FLAVAForPreTraining`` and our own
    :class:`FLAVAForPretraining` state dicts.

    Args:
        model (nn.Module): a :class:`FLAVAForPretraining`.
        path (PathLike): file, Hugging Face directory or URL.
        strict (bool): raise on missing or unexpected keys.

    Returns:
        list[str]: checkpoint keys left unused (the codebook's, when the model has none).

    Raises:
        ValueError: on key or shape mismatches.
    """
    source = load_state_dict(path)
    layout = detect_layout(source)
    backbone, outside = convert_to_torchflava(source, model.model, layout=layout, strict=strict)
    state = {f"model.{k}": v for k, v in backbone.items()}
    # Heads and codebook: the keys the backbone map set aside (prefixes already stripped).
    rest = {k: v for k, v in _strip_prefix(source, layout).items() if k in set(outside)}
    used, missing = set(), []
    for key in model.state_dict():
        if key.startswith(("model.", "codebook.")):
            continue
        name = _head_reference_name(key, layout)
        if name in rest:
            state[key] = rest[name]
            used.add(name)
        else:
            missing.append(name)
    codebook_keys = [k for k in rest if re.match(r"^(image_)?codebook\.", k)]
    if model.codebook is not None:
        if codebook_keys:
            converted = convert_codebook_to_torchflava(
                {k: rest[k] for k in codebook_keys}, model.codebook, strict=strict
            )
            state.update({f"codebook.{k}": v for k, v in converted.items()})
            used.update(codebook_keys)
        else:
            missing.append("codebook.*")
    leftover = sorted(k for k in rest if k not in used and k not in codebook_keys and not _HEAD_ALIASES.search(k))
    if strict and (missing or leftover):
        raise ValueError(
            f"pretraining checkpoint ({layout} layout) does not match the model: missing {missing[:20]}, "
            f"unexpected {leftover[:20]}"
        )
    check_fits(state, model)
    model.load_state_dict(state, strict=strict)
    return sorted(k for k in codebook_keys if k not in used)
