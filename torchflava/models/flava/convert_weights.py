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

from pathlib import Path
import re
from typing import Optional, Union

import torch
from torch import Tensor, nn

from torchflava.models.flava.convert_codebook import convert_codebook_to_torchflava
from torchflava.modules.layers.patch_embedding import patch_geometry
from torchflava.utils.architecture import disagreeing, export_files, implied_sizes
from torchflava.utils.checkpoint import (
    PathLike,
    check_fits,
    check_state_dict,
    load_state_dict,
    local_checkpoint,
    map_state_dict,
    peek_state_dict,
    read_json_object,
    refuse_mismatches,
    refuse_unmatched,
    to_reference,
    without_prefix,
)
from torchflava.utils.checks import hf_sub_configs
from torchflava.utils.distributed import GatherGrad

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
    "torchflava": re.compile(r"^(codebook|mlm_head|mim_head|mmm_text_head|mmm_image_head|itm_head|classifier)\."),
}
# flava_model's sizes, by the key and dim of our state dict that holds each (dim None: a count of layers).
_SIZES = dict(
    image_embed_dim=("image_encoder.embeddings.cls_token", -1),
    patch_size=("image_encoder.embeddings.proj.weight", -1),
    in_channels=("image_encoder.embeddings.proj.weight", 1),
    text_embed_dim=("text_encoder.embeddings.word_embed.weight", 1),
    vocab_size=("text_encoder.embeddings.word_embed.weight", 0),
    max_seq_len=("text_encoder.embeddings.pos_embed.weight", 0),
    type_vocab_size=("text_encoder.embeddings.type_embed.weight", 0),
    multimodal_embed_dim=("multimodal_encoder.cls_token", -1),
    projection_dim=("image_projection.weight", 0),
)
for _tower in ("image", "text", "multimodal"):
    _SIZES[f"{_tower}_mlp_dim"] = (f"{_tower}_encoder.encoder.layers.{{}}.mlp.fc1.weight", 0)
    _SIZES[f"{_tower}_num_layers"] = (f"{_tower}_encoder.encoder.layers.{{}}.mlp.fc1.weight", None)
_POS = "image_encoder.embeddings.pos_embed"
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
    clip = ("vision_model.", "visual.", "vision_tower.", "transformer.resblocks.", "clip_model.")
    if any(k.startswith(clip) for k in keys) and not any("multimodal" in k or "mm_encoder" in k for k in keys):
        raise ValueError(
            f"a CLIP checkpoint, not FLAVA's (keys such as {next(k for k in keys if k.startswith(clip))!r} and no "
            "multimodal encoder): load it with torchflava.models.clip_model"
        )
    if any(k.startswith(("multimodal_encoder.", "model.multimodal_encoder.")) for k in keys):
        return "torchflava"
    if any(k.startswith(("image_model.", "text_model.", "multimodal_model.", "flava.")) for k in keys):
        return "hf"
    if any(k.startswith(("mm_encoder.", "image_encoder.encoder.layer.", "model.image_encoder.")) for k in keys):
        return "tmm"
    top = list(dict.fromkeys(k.split(".", 1)[0] for k in keys))
    raise ValueError(
        "not a FLAVA checkpoint in a known layout: expected keys under image_model/text_model/multimodal_model "
        "(Hugging Face, also under flava.), image_encoder/text_encoder/mm_encoder (torchmultimodal, also under "
        f"model.) or image_encoder/text_encoder/multimodal_encoder (torchflava), got top-level names {top[:8]}"
        + (f" (first key {keys[0]!r})" if keys else "")
    )


def without_wrapper_prefix(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` without the prefix a training wrapper puts on every key.

    DDP's ``module.``, and the ``model.`` of a Lightning module that holds the model as ``.model``
    (torchmultimodal's FLAVA examples: ``model.model.*`` beside ``model.loss.*``), are dropped.

    Args:
        state_dict (dict[str, Tensor]): the checkpoint.

    Returns:
        dict[str, Tensor]: the checkpoint (itself when no wrapper prefix is found).

    Raises:
        ValueError: if a key is there both with and without the prefix.
    """
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = without_prefix(state_dict, "module.")
    wrapped = state_dict and all(k.startswith("model.") for k in state_dict)
    if wrapped and any(k.startswith("model.model.") for k in state_dict):
        state_dict = without_prefix(state_dict, "model.")
    return state_dict


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
        state_dict (dict[str, Tensor]): the checkpoint (a DDP or Lightning wrapper's prefix is dropped).
        model (nn.Module): a :class:`FLAVAModel` whose keys drive the map.
        layout (Optional[str]): ``"hf"``, ``"tmm"`` or ``"torchflava"``; detected when None.
        strict (bool): raise on missing or unexpected keys.

    Returns:
        tuple[dict[str, Tensor], list[str]]: our state dict, and the checkpoint keys skipped because
        they belong to the pretraining heads or the codebook.

    Raises:
        TypeError: unless ``state_dict`` maps str names to tensors and ``model`` is an ``nn.Module``.
        ValueError: on an unknown layout, or on mis-shaped tensors or (strict) missing or unexpected keys,
            listing them (strict: and naming the arguments whose sizes the shapes tell otherwise).
    """
    check_state_dict(state_dict)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (a FLAVAModel), got {type(model).__name__}")
    state_dict = without_wrapper_prefix(state_dict)
    layout = detect_layout(state_dict) if layout is None else layout
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    source = _strip_prefix(state_dict, layout)
    converted, missing, wrong, used = map_state_dict(
        source, model.state_dict(), lambda key: _reference_names(key, layout)
    )
    if layout == "tmm" and _OTHER["logit_scale"][1] in missing:  # torchmultimodal's FLAVAModel keeps none (its loss)
        missing.remove(_OTHER["logit_scale"][1])
        converted["logit_scale"] = torch.tensor(float(model.logit_scale_init))
    skipped = sorted(k for k in source if k not in used and _SKIPPED[layout].search(k))
    unexpected = sorted(k for k in source if k not in used and not _SKIPPED[layout].search(k))
    if strict:  # the arguments whose sizes the shapes tell otherwise named, the keys alone name none
        disagree = disagreeing(_implied_sizes(model.state_dict(), "torchflava"), _implied_sizes(source, layout))
        refuse_unmatched(f"checkpoint ({layout} layout)", missing, unexpected, wrong, disagree=disagree)
    refuse_mismatches(wrong)  # (not strict: keys may be missing, but no tensor may be mis-shaped)
    return converted, skipped


def _implied_sizes(state_dict: dict[str, Tensor], layout: str) -> dict[str, int]:
    """The :func:`flava_model` sizes the shapes of ``state_dict`` (in ``layout``, prefixes stripped) imply: each
    tower's width, depth and MLP width, the patch and image size, vocabularies, positions, ``projection_dim``."""
    name = lambda key: _reference_names(key, layout)[0]
    geometry = patch_geometry(*(state_dict.get(name(key)) for key in (_SIZES["patch_size"][0], _POS)))
    return {**implied_sizes(state_dict, _SIZES, name), **geometry}


def convert_to_hf(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map our state dict to Hugging Face ``FlavaModel`` keys (split QKV into query/key/value).

    Args:
        state_dict (dict[str, Tensor]): a :class:`FLAVAModel` state dict.

    Returns:
        dict[str, Tensor]: the same tensors under ``FlavaModel`` names (prefix them with ``flava.``
        for a ``FlavaForPreTraining``).

    Raises:
        TypeError: unless ``state_dict`` maps str names to tensors.
        ValueError: for a key that is not a :class:`FLAVAModel`'s, or a fused q/k/v tensor whose rows
            are not a multiple of 3 (it was split into unequal parts, or two).
    """

    def names(key: str) -> list[str]:
        try:
            return _reference_names(key, "hf")
        except KeyError:
            raise ValueError(f"state_dict: {key!r} is not a key of a FLAVAModel state dict") from None

    return {name: value.clone() for name, value in to_reference(state_dict, names).items()}


def load_flava_weights(
    model: nn.Module, path: Union[PathLike, dict[str, Tensor]], *, layout: Optional[str] = None, strict: bool = True
) -> list[str]:
    """Load FLAVA weights from a path or URL into ``model``, whatever the checkpoint's layout.

    Args:
        model (nn.Module): a :class:`FLAVAModel`.
        path (Union[PathLike, dict[str, Tensor]]): file, Hugging Face checkpoint directory, torchflava
            export directory or URL (see :func:`torchflava.utils.checkpoint.load_state_dict`), or the
            checkpoint's tensors already read.
        layout (Optional[str]): force a layout instead of detecting it.
        strict (bool): raise on missing or unexpected keys.

    Returns:
        list[str]: checkpoint keys skipped because they belong to pretraining heads or the codebook.

    Raises:
        ValueError: on key mismatches (strict), tensor shapes that differ from the model's (naming the
            arguments the shapes contradict), or a Hugging Face directory whose config.json states another
            LayerNorm eps than the model's.
    """
    converted, skipped = convert_to_torchflava(_read_checkpoint(path, model), model, layout=layout, strict=strict)
    model.load_state_dict(converted, strict=strict)
    return skipped


def _read_checkpoint(path: Union[PathLike, dict[str, Tensor]], model: nn.Module) -> dict[str, Tensor]:
    """The tensors of ``path`` without a wrapper's prefix; for a Hugging Face directory, after checking
    that every LayerNorm of ``model`` has its config.json's eps (nothing else would tell)."""
    if isinstance(path, dict):
        return without_wrapper_prefix(path)
    local = local_flava_checkpoint(path)
    config_file, config = hf_directory_kwargs(local)
    if config_file is not None and config_file.name == "config.json":  # (an export's states no head eps)
        check_norm_eps(model, config["norm_eps"], config_file)
    return without_wrapper_prefix(load_state_dict(local))


def local_flava_checkpoint(path: PathLike) -> Path:
    """:func:`~torchflava.utils.checkpoint.local_checkpoint` of ``path``; for a torchflava export directory (its
    ``backbone_config.json`` beside one .safetensors file; or a run holding it in ``model/``), that file."""
    local = local_checkpoint(path)
    export = export_files(local, "backbone_config.json") if local.is_dir() else None
    return local if export is None else export[1]


def check_norm_eps(model: nn.Module, eps: float, config_file: Path) -> None:
    """ValueError if a LayerNorm of ``model`` has another eps than ``eps``, the ``layer_norm_eps`` of
    ``config_file`` (a Hugging Face config.json)."""
    found = sorted({m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)} - {eps})
    if found:
        raise ValueError(
            f"expected a model whose LayerNorm eps is {config_file}'s layer_norm_eps {eps}, got eps {found} "
            "(flava_model(pretrained=<directory>) builds the backbone from config.json)"
        )


def hf_directory_kwargs(local: Path, names: Optional[dict[str, Tensor]] = None) -> tuple[Optional[Path], dict]:
    """The config.json of a Hugging Face FLAVA directory, or of a weights file in one, and the
    builder arguments it states; or the ``backbone_config.json`` beside a torchflava export's weights
    file (:func:`local_flava_checkpoint`) and the :func:`flava_model` arguments it holds (None: not set).

    Args:
        local (Path): a local checkpoint file or directory.
        names (Optional[dict[str, Tensor]]): the file's tensors (meta ones will do) when the caller
            has already peeked at it; else it is peeked at here (for a file beside a config.json).

    Returns:
        tuple[Optional[Path], dict]: config.json and the arguments of :func:`flava_kwargs_from_hf_config`
        and :func:`flava_pretraining_kwargs_from_hf_config` together (or an export's, above); ``(None, {})``
        when ``local`` is not a directory holding a config.json, nor a Hugging Face-layout file beside a
        FLAVA one, nor a torchflava-layout file beside a backbone_config.json.

    Raises:
        ValueError: naming config.json, if it is not JSON or states what we do not build.
    """
    config_file = (local if local.is_dir() else local.parent) / "config.json"
    export = local.parent / "backbone_config.json"  # (beside a weights file: a torchflava export's)
    if not config_file.exists() and (local.is_dir() or not export.exists()):  # (a FIFO is refused when read)
        return None, {}
    if not local.is_dir():  # a file: only Hugging Face-layout weights are what a config.json beside them states
        try:
            layout = detect_layout(without_wrapper_prefix(peek_state_dict(local) if names is None else names))
        except ValueError:
            return None, {}  # not FLAVA weights at all: loading them says so
        if layout == "torchflava" and export.exists():  # our export's weights: flava_model's own arguments
            return export, {k: v for k, v in read_json_object(export).items() if v is not None}
        if not config_file.exists():
            return None, {}
    config = read_json_object(config_file)
    if not local.is_dir() and (layout != "hf" or config.get("model_type") != "flava"):
        return None, {}  # e.g. our export or a torchmultimodal file beside an unrelated config.json
    try:
        return config_file, {**flava_kwargs_from_hf_config(config), **flava_pretraining_kwargs_from_hf_config(config)}
    except ValueError as error:
        raise ValueError(f"{config_file}: {error}") from None


# transformers' FlavaConfig defaults: its config.json holds only the fields that differ from them.
_HF_ENCODER = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    qkv_bias=True,
)
_HF_DEFAULTS = {
    "image_config": dict(_HF_ENCODER, image_size=224, patch_size=16, num_channels=3, vocab_size=8192, mask_token=True),
    "text_config": dict(
        _HF_ENCODER,
        vocab_size=30522,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=0,
        position_embedding_type="absolute",
    ),
    "multimodal_config": dict(_HF_ENCODER, num_hidden_layers=6, use_cls_token=True),
    "": dict(projection_dim=768, logit_scale_init_value=2.6592, ce_ignore_index=-100, global_backprop_contrastive=True),
}
# FlavaImageCodebookConfig's sizes (the published DALL-E dVAE's)
_HF_DEFAULTS["image_codebook_config"] = dict(
    hidden_size=256, num_groups=4, num_blocks_per_group=2, input_channels=3, vocab_size=8192
)
_HF_LOSS_WEIGHTS = ("mim", "mlm", "itm", "global_contrastive", "mmm_image", "mmm_text")  # FlavaConfig's *_weight
_HF_DEFAULTS[""].update({f"{name}_weight": 1.0 for name in _HF_LOSS_WEIGHTS})
_HF_SIZES = dict(embed_dim="hidden_size", num_layers="num_hidden_layers", num_heads="num_attention_heads")
# What each of our encoders computes: transformers' default (another activation, or no q/k/v biases, is refused).
_HF_AS_BUILT = dict(hidden_act="gelu", qkv_bias=True)
# Each encoder's dropouts (transformers' places: embeddings and both residual branches; attention
# probabilities), by flava_model's names.
_HF_DROPOUTS = dict(hidden_dropout_prob="dropout", attention_probs_dropout_prob="attention_dropout")
_HF_SIZES.update(mlp_dim="intermediate_size")


def _hf_fields(config: dict) -> dict[str, dict]:
    """The top level (``""``) and the three encoder sub-configs of a ``FlavaConfig``; a legacy
    ``*_config_dict`` replaces its sub-config whole, as in transformers (its absent fields are the
    defaults, not the sub-config's), and an absent sub-config is all defaults."""
    if not isinstance(config, dict):
        raise ValueError(f"config must be a FlavaConfig object, got {type(config).__name__}")
    if config.get("model_type", "flava") != "flava":
        raise ValueError(f"config: expected model_type 'flava', got {config['model_type']!r}")
    names = ("image_config", "text_config", "multimodal_config")
    return {"": config, **dict(zip(names, hf_sub_configs(config, names)))}


def _hf_field(sections: dict[str, dict], section: str, name: str) -> object:
    """One field of a ``FlavaConfig`` (transformers' default when absent), checked to be of the default's type."""
    default = _HF_DEFAULTS[section][name]
    value = sections[section].get(name, default)
    if isinstance(default, bool):
        fits = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        number = int if isinstance(default, int) else (int, float)
        fits = isinstance(value, number) and not isinstance(value, bool) or (name == "pad_token_id" and value is None)
    else:
        fits = isinstance(value, str)
    if not fits:
        where = f"{section}.{name}" if section else name
        expected = {bool: "a bool", int: "an int", float: "a number", str: "a string"}[type(default)]
        raise ValueError(f"config {where} must be {expected}, got {type(value).__name__} {value!r}")
    return value


def flava_kwargs_from_hf_config(config: dict) -> dict:
    """``flava_model`` keyword arguments for a Hugging Face ``FlavaConfig`` (its ``config.json`` as a dict).

    A field the config omits takes transformers' ``FlavaConfig`` default, as ``FlavaConfig(**config)`` does.
    Read: each encoder's sizes, ``layer_norm_eps``, ``hidden_dropout_prob`` and
    ``attention_probs_dropout_prob`` (one value each for the three encoders), the image and patch size,
    channels, text vocabulary, positions, token types, ``pad_token_id``, ``projection_dim`` and
    ``logit_scale_init_value``. Refused unless at what we build: ``hidden_act`` (``"gelu"``),
    ``qkv_bias`` (true), ``position_embedding_type`` (``"absolute"``), ``use_cls_token`` and the image
    ``mask_token`` (true). Not read, as nothing ``FlavaModel`` computes depends on them: the
    ``initializer_range`` fields (initialisation), the top-level ``layer_norm_eps`` (unused) and
    ``hidden_size`` (``FlavaForPreTraining``'s ITM head width, which its weights' shapes tell), the image
    ``vocab_size`` and the pretraining loss settings (``*_weight``, ``ce_ignore_index``,
    ``global_backprop_contrastive``: ``flava_model_for_pretraining``'s, read by
    :func:`flava_pretraining_kwargs_from_hf_config`), ``skip_unmasked_multimodal_encoder`` (whether
    ``FlavaForPreTraining`` also returns an unmasked multimodal pass no loss reads), ``return_loss``,
    ``init_codebook`` and ``image_codebook_config`` (the codebook's, whose weights tell its sizes).

    Args:
        config (dict): the config, with ``image_config``, ``text_config`` and ``multimodal_config``.

    Returns:
        dict: keyword arguments for :func:`torchflava.models.flava_model`.

    Raises:
        ValueError: naming the field, if one has the wrong type, or states an activation or layout we
            do not build, or the encoders state different eps or dropouts; or if the config is not a
            FlavaConfig.
    """
    sections = _hf_fields(config)
    towers = ("image", "text", "multimodal")
    field = lambda section, name: _hf_field(sections, section, name)  # noqa: E731
    built = [(f"{tower}_config", name, value) for tower in towers for name, value in _HF_AS_BUILT.items()]
    built += [("text_config", "position_embedding_type", "absolute"), ("multimodal_config", "use_cls_token", True)]
    built += [("image_config", "mask_token", True)]  # (without it, a FlavaModel holds no mask token we could load)
    for section, name, value in built:
        if field(section, name) != value:
            raise ValueError(
                f"{section}.{name} must be {value!r} (the only one we build), got {field(section, name)!r}"
            )
    shared = {}  # flava_model takes one value of each for the three towers
    for hf, ours in (("layer_norm_eps", "norm_eps"), *_HF_DROPOUTS.items()):
        values = {field(f"{tower}_config", hf) for tower in towers}
        if len(values) != 1:
            raise ValueError(f"the three encoders use different {hf} {sorted(values)}; flava_model takes one")
        shared[ours] = values.pop()
    kwargs = {f"{tower}_{ours}": field(f"{tower}_config", hf) for tower in towers for ours, hf in _HF_SIZES.items()}
    return dict(
        kwargs,
        image_size=field("image_config", "image_size"),
        patch_size=field("image_config", "patch_size"),
        in_channels=field("image_config", "num_channels"),
        vocab_size=field("text_config", "vocab_size"),
        max_seq_len=field("text_config", "max_position_embeddings"),
        type_vocab_size=field("text_config", "type_vocab_size"),
        pad_token_id=field("text_config", "pad_token_id"),
        projection_dim=field("", "projection_dim"),
        **shared,
        mlp_dropout=0.0,  # transformers' FlavaIntermediate has no dropout after the activation
        logit_scale_init=field("", "logit_scale_init_value"),
    )


def hf_config_from_flava_kwargs(kwargs: dict) -> dict:
    """The Hugging Face ``FlavaConfig`` (its ``config.json`` as a dict) of a ``FlavaModel`` that computes as
    :func:`flava_model` built with ``kwargs``: the inverse of :func:`flava_kwargs_from_hf_config`, which reads it
    back to ``kwargs`` but ``init_std`` (written as every ``initializer_range``) and ``mlp_dropout``.

    transformers' FLAVA has no dropout after the MLP's activation: ``mlp_dropout`` (None: ``dropout``) is not
    written, and the config trains without it (inference is the same: no dropout runs in eval mode).

    Args:
        kwargs (dict): every argument of :func:`flava_model` but ``pretrained`` (e.g. ``flava_model_arguments()``).

    Returns:
        dict: the config, with ``model_type``, ``architectures`` and the three encoder sub-configs.

    Raises:
        ValueError: naming the arguments ``kwargs`` lacks.
    """
    sizes = [f"{tower}_{ours}" for tower in ("image", "text", "multimodal") for ours in _HF_SIZES]
    needed = [*sizes, "image_size", "patch_size", "in_channels", "vocab_size", "max_seq_len", "type_vocab_size"]
    needed += ["pad_token_id", "projection_dim", "dropout", "attention_dropout", "norm_eps", "logit_scale_init"]
    if missing := [name for name in [*needed, "init_std"] if name not in kwargs]:  # (mlp_dropout is not written)
        raise ValueError(f"kwargs: expected every flava_model argument, got none for {missing}")
    shared = dict(_HF_AS_BUILT, layer_norm_eps=kwargs["norm_eps"], initializer_range=kwargs["init_std"])
    shared.update({hf: kwargs[ours] for hf, ours in _HF_DROPOUTS.items()})
    towers = {
        tower: dict(shared, **{hf: kwargs[f"{tower}_{ours}"] for ours, hf in _HF_SIZES.items()})
        for tower in ("image", "text", "multimodal")
    }
    towers["image"].update(image_size=kwargs["image_size"], patch_size=kwargs["patch_size"], mask_token=True)
    towers["image"].update(num_channels=kwargs["in_channels"])
    towers["text"].update(vocab_size=kwargs["vocab_size"], max_position_embeddings=kwargs["max_seq_len"])
    towers["text"].update(type_vocab_size=kwargs["type_vocab_size"], pad_token_id=kwargs["pad_token_id"])
    towers["text"]["position_embedding_type"] = "absolute"
    towers["multimodal"]["use_cls_token"] = True
    return dict(
        model_type="flava",
        architectures=["FlavaModel"],
        **{f"{tower}_config": config for tower, config in towers.items()},
        hidden_size=kwargs["multimodal_embed_dim"],  # (FlavaForPreTraining's ITM head width)
        layer_norm_eps=kwargs["norm_eps"],
        projection_dim=kwargs["projection_dim"],
        logit_scale_init_value=kwargs["logit_scale_init"],
        initializer_range=kwargs["init_std"],
    )


def flava_pretraining_kwargs_from_hf_config(config: dict) -> dict:
    """``flava_model_for_pretraining``'s head and loss arguments for a Hugging Face ``FlavaConfig``: the MIM
    vocabulary (``image_config.vocab_size``), the heads' LayerNorm eps (the encoders'), and the loss
    settings ``FlavaForPreTraining`` computes with: the six ``*_weight``, ``ce_ignore_index``
    (``ignore_index``) and ``global_backprop_contrastive`` (``contrastive_gather``: true
    ``GatherGrad.GLOBAL``; false ``GatherGrad.LOCAL``, transformers' gather without autograd, where only
    each rank's own rows carry gradient).

    Args:
        config (dict): the config (see :func:`flava_kwargs_from_hf_config`).

    Returns:
        dict: ``image_vocab_size``, ``head_norm_eps``, the ``*_weight``, ``ignore_index`` and
        ``contrastive_gather``.

    Raises:
        ValueError: as :func:`flava_kwargs_from_hf_config`.
    """
    eps = flava_kwargs_from_hf_config(config)["norm_eps"]
    sections = _hf_fields(config)
    losses = {f"{name}_weight": _hf_field(sections, "", f"{name}_weight") for name in _HF_LOSS_WEIGHTS}
    backprop = _hf_field(sections, "", "global_backprop_contrastive")
    return dict(
        image_vocab_size=_hf_field(sections, "image_config", "vocab_size"),
        head_norm_eps=eps,
        **losses,
        ignore_index=_hf_field(sections, "", "ce_ignore_index"),
        contrastive_gather=GatherGrad.GLOBAL if backprop else GatherGrad.LOCAL,
    )


# The least dVAE sizes dalle_encoder builds, by image_codebook_config field, and why where it is not 1.
_HF_CODEBOOK_LEAST = dict(hidden_size=4, num_blocks_per_group=1, input_channels=1, vocab_size=2)
_HF_CODEBOOK_WHY = dict(
    hidden_size=" (the residual paths are hidden_size // 4 wide)",
    vocab_size=" (one codebook id tells no patch from another)",
)


def hf_codebook_kwargs(config: dict) -> dict:
    """``dalle_encoder`` keyword arguments for the dVAE a Hugging Face ``FlavaConfig`` states
    (``image_codebook_config``, as ``FlavaForPreTraining`` builds its ``image_codebook``; a field it omits takes
    transformers' default, the published dVAE's).

    Args:
        config (dict): the config (see :func:`flava_kwargs_from_hf_config`).

    Returns:
        dict: ``hidden_dim``, ``blocks_per_group``, ``vocab_size`` and ``in_channels``.

    Raises:
        ValueError: for a field of the wrong type, a ``num_groups`` other than 4 (``dalle_encoder`` builds the
            dVAE's four groups) or a size below what it builds (``hidden_size`` >= 4, ``num_blocks_per_group``
            and ``input_channels`` >= 1, ``vocab_size`` >= 2), naming the field.
    """
    sections = {**_hf_fields(config), "image_codebook_config": hf_sub_configs(config, ["image_codebook_config"])[0]}
    field = {name: _hf_field(sections, "image_codebook_config", name) for name in _HF_DEFAULTS["image_codebook_config"]}
    if field["num_groups"] != 4:
        raise ValueError(
            f"config image_codebook_config.num_groups must be 4 (the dVAE's groups, as dalle_encoder builds them), "
            f"got {field['num_groups']!r}"
        )
    # checked here, not by dalle_encoder once the backbone is built, so that the error names the field given
    for name, least in _HF_CODEBOOK_LEAST.items():
        if field[name] < least:
            why = _HF_CODEBOOK_WHY.get(name, "")
            raise ValueError(f"config image_codebook_config.{name} must be >= {least}{why}, got {field[name]!r}")
    return dict(
        hidden_dim=field["hidden_size"],
        blocks_per_group=field["num_blocks_per_group"],
        vocab_size=field["vocab_size"],
        in_channels=field["input_channels"],
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


def load_flava_pretraining_weights(
    model: nn.Module, path: Union[PathLike, dict[str, Tensor]], *, strict: bool = True
) -> list[str]:
    """Load a whole pretraining checkpoint (backbone, heads and, when present, the codebook).

    Accepts Hugging Face ``FlavaForPreTraining``, torchmultimodal ``FLAVAForPreTraining`` and our own
    :class:`FLAVAForPretraining` state dicts, also under a DDP or Lightning wrapper's prefix.

    Args:
        model (nn.Module): a :class:`FLAVAForPretraining`.
        path (Union[PathLike, dict[str, Tensor]]): file, Hugging Face directory or URL, or the
            checkpoint's tensors already read.
        strict (bool): raise on missing or unexpected keys.

    Returns:
        list[str]: checkpoint keys left unused (the codebook's, when the model has none).

    Raises:
        ValueError: on key or shape mismatches, or a Hugging Face directory whose config.json states
            another LayerNorm eps than the model's (heads included).
    """
    source = _read_checkpoint(path, model)
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
    if strict:
        refuse_unmatched(f"pretraining checkpoint ({layout} layout)", missing, leftover)
    check_fits(state, model)
    model.load_state_dict(state, strict=strict)
    return sorted(k for k in codebook_keys if k not in used)
