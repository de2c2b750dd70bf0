"""Key maps between our :class:`CLIPModel` and transformers' ``CLIPModel`` (``hf``) or open_clip's
``CLIP`` and OpenAI's state dicts (``open_clip``). Our fused ``attn.qkv`` is HF's q, k, v
concatenated (open_clip's ``in_proj``); open_clip keeps projections as ``x @ proj`` (D, P)."""

from pathlib import Path
import re
from typing import Optional

from torch import Tensor, nn

from torchflava.modules.layers.mlp import check_activations
from torchflava.modules.layers.patch_embedding import patch_geometry
from torchflava.utils import architecture as arch
from torchflava.utils.checkpoint import clip_source, map_state_dict, read_json_object, refuse_unmatched, to_reference
from torchflava.utils.checks import check_entries, config_number, hf_sub_configs, shared_values, unsupported_settings

# Ours, HF's, open_clip's names; "{}" stands for weight or bias, "#" for a layer index.
_ROWS = """
image_encoder.embeddings.cls_token     vision_model.embeddings.class_embedding           visual.class_embedding
image_encoder.embeddings.pos_embed     vision_model.embeddings.position_embedding.weight visual.positional_embedding
image_encoder.embeddings.proj.weight   vision_model.embeddings.patch_embedding.weight    visual.conv1.weight
image_encoder.embeddings.norm.{}       vision_model.pre_layrnorm.{}                      visual.ln_pre.{}
image_encoder.norm.{}                  vision_model.post_layernorm.{}                    visual.ln_post.{}
image_projection.weight                visual_projection.weight                          visual.proj
text_encoder.embeddings.word_embed.weight text_model.embeddings.token_embedding.weight   token_embedding.weight
text_encoder.embeddings.pos_embed.weight text_model.embeddings.position_embedding.weight positional_embedding
text_encoder.norm.{}                   text_model.final_layer_norm.{}                    ln_final.{}
text_projection.weight                 text_projection.weight                            text_projection
logit_scale                            logit_scale                                       logit_scale
image_encoder.encoder.layers.#.        vision_model.encoder.layers.#.                    visual.transformer.resblocks.#.
text_encoder.encoder.layers.#.         text_model.encoder.layers.#.                      transformer.resblocks.#.
attn.out_proj.{}                       self_attn.out_proj.{}                             attn.out_proj.{}
attn_norm.{}                           layer_norm1.{}                                    ln_1.{}
mlp_norm.{}                            layer_norm2.{}                                    ln_2.{}
mlp.fc1.{}                             mlp.fc1.{}                                        mlp.c_fc.{}
mlp.fc2.{}                             mlp.fc2.{}                                        mlp.c_proj.{}
"""
_KEYS = {ours: refs for ours, *refs in map(str.split, _ROWS.strip().splitlines())}
LAYOUTS = {"torchflava": "image_encoder.", "hf": "vision_model.", "open_clip": "visual."}  # and a key of each
OPENAI_ENTRIES = ("input_resolution", "context_length", "vocab_size")  # beside OpenAI's released weights
_IGNORED = re.compile(rf"^(\w+_model\.embeddings\.position_ids|attn_mask|{'|'.join(OPENAI_ENTRIES)})$")  # not loaded
_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
# open_clip settings (model_cfg) read or not changing what ours computes; others: off or as _OPEN_CLIP_AS_BUILT.
_OPEN_CLIP_READ = set("embed_dim quick_gelu layers width head_width heads mlp_ratio patch_size image_size".split())
_OPEN_CLIP_READ |= set("context_length vocab_size init_logit_scale cast_dtype patch_dropout output_tokens".split())
_OPEN_CLIP_READ |= set("final_ln_after_pool pad_id hf_tokenizer_name tokenizer_kwargs".split())
_OPEN_CLIP_AS_BUILT = dict(pos_embed_type="learnable", proj_type="linear", block_type="default")
_OPEN_CLIP_AS_BUILT.update({"vision_cfg.pool_type": "tok", "text_cfg.pool_type": "argmax"})
_HEAD_WIDTHS = dict(vision_width={1280: 80, 1408: 88, 1664: 104, 1792: 112})  # open_clip's ViT-H, g, bigG, e: 16 heads
_LAYER = re.compile(r"^((image|text)_encoder\.encoder\.layers\.)(\d+)\.(.+)\.(weight|bias)$")
_BY_LAYER = (("mlp_dim", 0), ("layers", None))  # (an MLP's rows; how many layers hold one: see implied_sizes)
_WORDS, _MLP = "text_encoder.embeddings.word_embed.weight", "_encoder.encoder.layers.{}.mlp.fc1.weight"
_SIZES = dict(vision_width=("image_encoder.embeddings.cls_token", -1), text_width=(_WORDS, 1), vocab_size=(_WORDS, 0))
_SIZES.update({f"{t}_{n}": (i + _MLP, d) for t, i in (("vision", "image"), ("text", "text")) for n, d in _BY_LAYER})
_SIZES.update(context_length=("text_encoder.embeddings.pos_embed.weight", 0), embed_dim=("image_projection.weight", 0))


def _names(key: str, layout: str) -> list[str]:
    """The reference key(s) holding our ``key``: HF's q, k, v for a fused qkv tensor, else one."""
    if layout == "torchflava":
        return [key]
    col, prefix, name = layout == "open_clip", "", key
    if (m := _LAYER.match(key)) is not None:  # a layer's: its stack's prefix, then the layer's own name
        stack, _, index, inner, kind = m.groups()
        prefix, name = _KEYS[stack + "#."][col].replace("#", index), f"{inner}.{kind}"
        if inner == "attn.qkv":
            return [f"{prefix}attn.in_proj_{kind}"] if col else [f"{prefix}self_attn.{p}_proj.{kind}" for p in "qkv"]
    base, _, kind = name.rpartition(".")
    if (row := _KEYS.get(name) or _KEYS.get(base + ".{}")) is None:
        raise ValueError(f"state_dict: expected CLIPModel keys, got {key!r}")
    return [prefix + row[col].format(kind)]


def convert_to_torchflava(state_dict: dict[str, Tensor], model: nn.Module, where: str = "state_dict") -> dict:
    """Map an HF, open_clip/OpenAI or torchflava CLIP state dict (``module.`` dropped) onto ``model``'s keys and shapes,
    for a strict load; ValueError naming ``where``: an unknown layout or tower, keys missing, unexpected, mis-shaped."""
    source = clip_source(state_dict, where)
    layout = arch.layout_of(source, LAYOUTS, "state_dict: expected CLIP keys")
    name = lambda key: _names(key, layout)
    flip = lambda key: layout == "open_clip" and key.endswith("projection.weight")  # kept as x @ W
    out, missing, wrong, used = map_state_dict(source, model.state_dict(), name, transposed=flip, squeezable=True)
    check_openai(source, model, where)
    unexpected = sorted(k for k in source if k not in used and not _IGNORED.match(k))
    disagree = arch.disagreeing(clip_sizes(model.state_dict(), "torchflava"), clip_sizes(source, layout))
    refuse_unmatched(f"state_dict ({layout} layout)", missing, unexpected, wrong, disagree=disagree)
    return out


def clip_sizes(tensors: dict[str, Tensor], layout: str) -> dict[str, tuple[int, str, tuple[int, ...]]]:
    """The :func:`clip_model` sizes ``tensors``' shapes (in ``layout``) imply (not heads, activation), ``sourced``."""
    name, flip = lambda key: _names(key, layout)[0], ["image_projection.weight"] if layout == "open_clip" else []
    proj, table = (name(f"image_encoder.embeddings.{k}") for k in ("proj.weight", "pos_embed"))
    keys = dict(patch_size=proj, image_size=table)
    geo = arch.sourced(patch_geometry(tensors.get(proj), tensors.get(table)), keys, tensors)
    return {**arch.implied_sizes(tensors, _SIZES, name, transposed=flip, sources=True), **geo}


def check_openai(state_dict: dict[str, Tensor], model: nn.Module, where: str = "state_dict") -> None:
    """ValueError if ``state_dict`` holds OpenAI's :data:`OPENAI_ENTRIES` but ``model`` lacks their sizes, QuickGELU."""
    image, text = model.image_encoder.embeddings, model.text_encoder.embeddings
    check_entries(state_dict, dict(zip(OPENAI_ENTRIES, (image.image_size, text.max_seq_len, text.vocab_size))), where)
    if held := ", ".join(key for key in OPENAI_ENTRIES if key in state_dict):
        check_activations(model, "quick_gelu", f"{where}: OpenAI's CLIP weights ({held}) were trained with QuickGELU")


def convert_to_hf(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map our :class:`CLIPModel` state dict to transformers' ``CLIPModel`` keys, for its
    ``load_state_dict(strict=True)`` (qkv split; CLS and positions lose leading 1s)."""
    dims = lambda key, value: {"cls_token": 1, "pos_embed": 2}.get(key.rpartition(".")[2], value.dim())
    return to_reference(state_dict, lambda key: _names(key, "hf"), dims)


def file_config(path: Path, state_dict: dict[str, Tensor], given: dict) -> tuple[Optional[Path], dict]:
    """The config file and :func:`clip_model` arguments a weights file implies where ``given`` is silent: the config
    beside it of its layout (HF's config.json, open_clip's, an export's clip_config.json), else :func:`clip_sizes`,
    heads 64 wide (ViT-H/g/bigG/e: 16; else error); HF's or open_clip's alone need an activation (OpenAI's: QuickGELU)."""
    state_dict = clip_source(state_dict, path)  # (meta tensors will do: only names and shapes are read)
    layout = arch.layout_of(state_dict, LAYOUTS, f"{path}: expected CLIP keys")
    beside = path.parent / {"hf": "config.json", "open_clip": "open_clip_config.json"}.get(layout, "clip_config.json")
    if beside.is_file():
        return beside, _read_config(beside)
    openai, told = any(key in state_dict for key in OPENAI_ENTRIES), "activation" in given  # (OpenAI's: QuickGELU)
    if layout != "torchflava" and not openai and not told:  # HF's, open_clip's (-quickgelu too): a config tells
        what = f"the {beside.name} beside the weights {path}, or activation="
        raise arch.UntoldArgument("activation", f"clip_model: expected {what} ('quick_gelu' or 'gelu'), got neither")
    sizes = arch.implied_heads(clip_sizes(state_dict, layout), ("vision", "text"), given, path, _HEAD_WIDTHS)
    return path, {**sizes, "activation": "quick_gelu"} if openai and not told else sizes


def directory_config(directory: Path) -> tuple[Path, dict, Path]:
    """The config file, :func:`clip_model` arguments and weights of a torchflava export (clip_config.json, one
    .safetensors; or its run), a Hugging Face ``CLIPModel`` or open_clip's (where no CLIP config.json is beside)."""
    if (export := arch.export_files(directory, "clip_config.json")) is not None:
        return export[0], _read_config(export[0]), export[1]
    hf, config = directory / "config.json", directory / "open_clip_config.json"
    if not config.is_file() or (hf.is_file() and read_json_object(hf).get("model_type") == "clip"):
        return hf, _read_config(hf), directory
    names = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    return config, _read_config(config), arch.first_file(directory, names, f"beside {config}")


def _read_config(path: Path) -> dict:
    config = read_json_object(path)
    if path.name == "clip_config.json":  # a torchflava export's: clip_model's own arguments (None: not set)
        return {k: v for k, v in config.items() if v is not None}
    return open_clip_config_kwargs(config, path) if path.name == "open_clip_config.json" else hf_config_kwargs(config)


def open_clip_config_kwargs(config: dict, path: Path) -> dict:
    """:func:`clip_model` arguments from open_clip's ``open_clip_config.json`` (its ``model_cfg``) or a
    model config; ValueError naming each setting ours does not build (layer scale, a timm tower...)."""
    cfg = config.get("model_cfg", config)
    vision, text = (cfg.get(f"{tower}_cfg") if isinstance(cfg, dict) else None for tower in ("vision", "text"))
    if not isinstance(vision, dict) or not isinstance(text, dict):
        raise ValueError(f"{path.name}: expected a model_cfg with vision_cfg and text_cfg objects in {path}")
    if unsupported := unsupported_settings(cfg, ("vision_cfg", "text_cfg"), _OPEN_CLIP_READ, _OPEN_CLIP_AS_BUILT):
        raise ValueError(f"{path.name}: expected only settings torchflava's CLIP builds, got {unsupported} in {path}")
    v, t = (f"{path.name}: {tower}_cfg" for tower in ("vision", "text"))  # values computed with: checked first
    vw, tw = config_number(vision, "width", 768, v), config_number(text, "width", 512, t)
    out = dict(embed_dim=cfg.get("embed_dim", 512), activation="quick_gelu" if cfg.get("quick_gelu") else "gelu")
    out.update(image_size=vision.get("image_size", 224), patch_size=vision.get("patch_size", 16), vision_width=vw)
    out.update(vision_layers=config_number(vision, "layers", 12, v, if_list="a ResNet tower: ours builds ViTs"))
    out.update(vision_heads=vw // config_number(vision, "head_width", 64, v), text_heads=text.get("heads", 8))
    out.update(vision_mlp_dim=int(vw * config_number(vision, "mlp_ratio", 4.0, v, integer=False)), text_width=tw)
    out.update(text_layers=text.get("layers", 12))
    out.update(text_mlp_dim=int(tw * config_number(text, "mlp_ratio", 4.0, t, integer=False)))
    return dict(out, context_length=text.get("context_length", 77), vocab_size=text.get("vocab_size", 49408))


def hf_config_kwargs(config: dict) -> dict:
    """:func:`clip_model` arguments from a transformers ``CLIPConfig`` (config.json as a dict). Absent fields
    take ``CLIPConfig()``'s defaults (``save_pretrained`` writes only differences); ``eos_token_id`` 2
    marks HF's legacy configs, which pool at each row's highest id (None). Not read, as transformers' CLIPModel
    does not compute with them: ``dropout``, the towers' ``projection_dim``, ``initializer_*`` (initialisation)."""
    if config.get("model_type") != "clip":
        raise ValueError(f"config.json: expected model_type 'clip', got {config.get('model_type')!r}")
    vision, text = hf_sub_configs(config, ("vision_config", "text_config"), "config.json")
    shared = dict(hidden_act="quick_gelu", layer_norm_eps=1e-5, attention_dropout=0.0)  # clip_model takes one each
    act, eps, dropout = shared_values(dict(vision_config=vision, text_config=text), shared, "config.json").values()
    if vision.get("num_channels", 3) != 3:  # (the patch projection's input: RGB images)
        raise ValueError(f"config.json: expected vision_config.num_channels 3, got {vision['num_channels']!r}")
    names = dict(hidden_size="width", num_hidden_layers="layers", num_attention_heads="heads")
    names.update(intermediate_size="mlp_dim")
    out = {f"vision_{ours}": vision.get(hf, d) for (hf, ours), d in zip(names.items(), (768, 12, 12, 3072))}
    out.update({f"text_{ours}": text.get(hf, d) for (hf, ours), d in zip(names.items(), (512, 12, 8, 2048))})
    out.update(embed_dim=config.get("projection_dim", 512), image_size=vision.get("image_size", 224))
    out.update(logit_scale_init=config.get("logit_scale_init_value", 2.6592), patch_size=vision.get("patch_size", 32))
    out.update(context_length=text.get("max_position_embeddings", 77), vocab_size=text.get("vocab_size", 49408))
    out.update(activation=_ACTIVATIONS.get(str(act), act), norm_eps=eps, attention_dropout=dropout)
    return dict(out, eos_token_id=None if (eos := text.get("eos_token_id", 49407)) == 2 else eos)
