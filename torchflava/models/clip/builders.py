"""CLIP builders: the two towers wired from ``torchflava.modules``, and the published sizes."""

import contextlib
import math
from typing import Optional

from torch import nn

from torchflava.models.clip.convert_weights import convert_to_torchflava, directory_config, file_config
from torchflava.models.clip.model import CLIPModel
from torchflava.modules.encoders import TextEncoder, VisionEncoder
from torchflava.modules.encoders.builders import transformer_encoder
from torchflava.modules.layers import PatchEmbedding, TokenEmbedding
from torchflava.modules.layers.activation import ACTIVATIONS
from torchflava.utils.checkpoint import PathLike, load_state_dict, local_checkpoint, peek_state_dict, training_run_model
from torchflava.utils.checks import check_architecture, check_builder_arguments, with_config
from torchflava.utils.meta import meta_device

_B16 = dict(embed_dim=512, image_size=224, patch_size=16, context_length=77, vocab_size=49408)
_B16.update(vision_width=768, vision_layers=12, vision_heads=12, vision_mlp_dim=3072)
_B16.update(text_width=512, text_layers=12, text_heads=8, text_mlp_dim=2048)
_L14 = dict(_B16, embed_dim=768, patch_size=14, vision_width=1024, vision_layers=24, vision_heads=16)
_L14.update(vision_mlp_dim=4096, text_width=768, text_heads=12, text_mlp_dim=3072, image_size=None)
_DEFAULTS = dict(_B16, activation="gelu", norm_eps=1e-5, logit_scale_init=math.log(1 / 0.07), init_std=0.02)
_DEFAULTS.update(attention_dropout=0.0)
_MULTIPLES = [("vision_width", "vision_heads"), ("text_width", "text_heads"), ("image_size", "patch_size")]
_CHECKS = dict(sizes=_B16, multiples=_MULTIPLES, positive=["norm_eps", "init_std"], finite=["logit_scale_init"])
_CHECKS.update(choices={"activation": ACTIVATIONS}, ids={"eos_token_id": "vocab_size"}, dropouts=["attention_dropout"])
_CHECKS.update(known=[*_DEFAULTS, "eos_token_id"])  # a config file's other keys are refused


def clip_model(
    *,
    pretrained: Optional[PathLike] = None,
    embed_dim: Optional[int] = None,
    image_size: Optional[int] = None,
    patch_size: Optional[int] = None,
    vision_width: Optional[int] = None,
    vision_layers: Optional[int] = None,
    vision_heads: Optional[int] = None,
    vision_mlp_dim: Optional[int] = None,
    context_length: Optional[int] = None,
    vocab_size: Optional[int] = None,
    text_width: Optional[int] = None,
    text_layers: Optional[int] = None,
    text_heads: Optional[int] = None,
    text_mlp_dim: Optional[int] = None,
    activation: Optional[str] = None,
    norm_eps: Optional[float] = None,
    attention_dropout: Optional[float] = None,
    logit_scale_init: Optional[float] = None,
    eos_token_id: Optional[int] = None,
    init_std: Optional[float] = None,
) -> CLIPModel:
    """CLIP, initialised or loaded: a pre-norm ViT (no conv bias, ``ln_pre``, CLS pooled) and a causal text transformer.

    An argument left None comes from ``pretrained``'s config (HF's config.json, open_clip's or a torchflava export's
    clip_config.json, in its directory or beside its weights; else the sizes a weights file's shapes tell, heads 64
    wide (ViT-H/g/bigG/e: 16); given ones must match, ``attention_dropout`` overrides), else open_clip's ``ViT-B-16``:
    GELU (an HF or open_clip weights file alone must be given it, but OpenAI's: QuickGELU), eps 1e-5, end token the last id.

    Args:
        pretrained (Optional[PathLike]): a torchflava export, run or its ``checkpoints/step_<N>``, HF ``CLIPModel`` or
            open_clip directory, or an OpenAI (TorchScript too), open_clip or torchflava weights file (.safetensors, .bin, .pt; no code run), strictly.
        embed_dim, image_size, patch_size (Optional[int]): width P of the shared space; image, patch side (px).
        vision_width, vision_layers, vision_heads, vision_mlp_dim, text_width, text_layers, text_heads,
            text_mlp_dim (Optional[int]): each tower's width, depth, attention heads and MLP width.
        context_length, vocab_size (Optional[int]): learned text positions; number of token ids.
        activation (Optional[str]): ``"gelu"``, ``"quick_gelu"`` (OpenAI's weights) or ``"gelu_tanh"``.
        norm_eps, logit_scale_init (Optional[float]): LayerNorm epsilon; initial log-temperature.
        attention_dropout (Optional[float]): dropout on both towers' attention probabilities, in [0, 1) (0).
        eos_token_id (Optional[int]): end-of-text id, where text features are read (the vocabulary's last).
        init_std (Optional[float]): std of the normal initialisation (0.02; e.g. 0.06 at width 128).

    Raises:
        ValueError: if an argument is out of range or contradicts the config or checkpoint's shapes (all named),
            or a checkpoint or config file is malformed, describes a model ours does not build or tells no head count or activation.
        TypeError, FileNotFoundError: if a size is not an int or ``pretrained`` not a path; not there.
    """
    kwargs = dict(locals())
    if (trained := training_run_model(clip_model, pretrained, kwargs)) is not None:
        return trained  # a run's checkpoints/step_<N>, or a run without export: its config and weights at that step
    kwargs["pretrained"] = None if pretrained is None else local_checkpoint(pretrained)  # (fetched once)
    with meta_device() if pretrained is not None else contextlib.nullcontext():  # no init: loaded next
        model = _build(clip_model_arguments(**kwargs))  # (checked first)
    if (local := kwargs["pretrained"]) is not None:  # the arguments checked first: no tensor data read before
        weights = directory_config(local)[2] if local.is_dir() else local  # (a directory of HF's: itself)
        convert_to_torchflava(peek_state_dict(weights, scalars=True), model, str(weights))  # refused before a read
        model.load_state_dict(convert_to_torchflava(load_state_dict(weights), model), assign=True)
    return model


def clip_model_arguments(pretrained: Optional[PathLike] = None, *, stated: Optional[tuple] = None, **kwargs) -> dict:
    """The checked arguments :func:`clip_model` builds with for ``pretrained`` and ``kwargs`` (None: not given), no
    tensor data read (the CLIP recipe's export records them); its errors, or ValueError for a name not its.
    ``stated``: (config file, arguments) already read from ``pretrained`` (e.g. ``read_clip_checkpoint``'s), not again."""
    check_builder_arguments("clip_model_arguments", clip_model, kwargs)
    given = {k: v for k, v in kwargs.items() if v is not None}
    local = None if pretrained is None else local_checkpoint(pretrained)
    if stated is not None:  # read by the caller
        config_file, config = stated
    elif local is None or local.is_dir():  # an export's, HF's or open_clip's directory: its config
        config_file, config, _ = (None, {}, None) if local is None else directory_config(local)
    else:  # a file: its keys and shapes (from its header, no data read), or a config beside it, tell
        config_file, config = file_config(local, peek_state_dict(local, scalars=True), given)  # (+ OpenAI's)
    a, source = with_config("clip_model", _DEFAULTS, config, given, config_file, settings=["attention_dropout"])
    a.setdefault("eos_token_id", a["vocab_size"] - 1)  # OpenAI's end token is the vocabulary's last id
    check_architecture("clip_model", a, **_CHECKS, source=source)  # (errors name where a value came from)
    return a


def _build(a: dict) -> CLIPModel:
    def stack(tower: str, is_causal: bool = False) -> nn.Module:
        names = dict(embed_dim="width", num_layers="layers", num_heads="heads", mlp_dim="mlp_dim")
        shared = {k: a[k] for k in ("norm_eps", "activation", "attention_dropout")}
        return transformer_encoder(**{k: a[f"{tower}_{v}"] for k, v in names.items()}, **shared, is_causal=is_causal)

    vw, tw, norm = a["vision_width"], a["text_width"], lambda width: nn.LayerNorm(width, eps=a["norm_eps"])
    patches = PatchEmbedding(a["image_size"], a["patch_size"], 3, vw, conv_bias=False, norm=norm(vw))
    return CLIPModel(
        VisionEncoder(patches, stack("vision"), norm(vw)),
        TextEncoder(TokenEmbedding(a["vocab_size"], tw, a["context_length"]), stack("text", True), norm(tw)),
        *(nn.Linear(width, a["embed_dim"], bias=False) for width in (vw, tw)),
        **{k: a[k] for k in ("eos_token_id", "logit_scale_init", "init_std")},
    )


def clip_vit_b32(*, pretrained: Optional[PathLike] = None, activation: Optional[str] = None) -> CLIPModel:
    """CLIP ViT-B/32 (open_clip's ``ViT-B-32``, HF's ``CLIPConfig()``; 224 px or a checkpoint's own), as :func:`clip_model`."""
    return clip_model(pretrained=pretrained, activation=activation, **dict(_B16, patch_size=32, image_size=None))


def clip_vit_b16(*, pretrained: Optional[PathLike] = None, activation: Optional[str] = None) -> CLIPModel:
    """CLIP ViT-B/16, open_clip's ``ViT-B-16``; as :func:`clip_vit_b32` otherwise."""
    return clip_model(pretrained=pretrained, activation=activation, **dict(_B16, image_size=None))


def clip_vit_l14(*, pretrained: Optional[PathLike] = None, activation: Optional[str] = None) -> CLIPModel:
    """CLIP ViT-L/14, open_clip's ``ViT-L-14``; as :func:`clip_vit_b32` otherwise."""
    return clip_model(pretrained=pretrained, activation=activation, **_L14)
