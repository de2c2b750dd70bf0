"""Key maps between our :class:`CLIPModel` and transformers' ``CLIPModel`` (``hf``) or open_clip's
``CLIP`` and OpenAI's state dicts (``open_clip``). Our fused ``attn.qkv`` is HF's q, k, v
concatenated (open_clip's ``in_proj``); open_clip keeps projections as ``x @ proj`` (D, P)."""

from pathlib import Path
import re
from typing import Optional

import torch
from torch import Tensor, nn

from torchflava.utils.checkpoint import mismatch, read_json_object, without_prefix

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
_LAYOUTS = {"torchflava": "image_encoder.", "hf": "vision_model.", "open_clip": "visual."}  # and a key of each
# Buffers and metadata some checkpoints hold: recognised, not loaded.
_IGNORED = re.compile(r"^(\w+_model\.embeddings\.position_ids|attn_mask|input_resolution|context_length|vocab_size)$")
_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_LAYER = re.compile(r"^((image|text)_encoder\.encoder\.layers\.)(\d+)\.(.+)\.(weight|bias)$")


def _names(key: str, layout: str) -> list[str]:
    """The reference key(s) holding our ``key``: HF's q, k, v for a fused qkv tensor, else one."""
    if layout == "torchflava":
        return [key]
    col = layout == "open_clip"
    m = _LAYER.match(key)
    if m is not None:
        stack, _, index, inner, kind = m.groups()
        prefix = _KEYS[stack + "#."][col].replace("#", index)
        if inner == "attn.qkv":
            return [f"{prefix}attn.in_proj_{kind}"] if col else [f"{prefix}self_attn.{p}_proj.{kind}" for p in "qkv"]
        return [prefix + _KEYS[inner + ".{}"][col].format(kind)]
    base, _, kind = key.rpartition(".")
    if (row := _KEYS.get(key) or _KEYS.get(base + ".{}")) is None:
        raise ValueError(f"state_dict: expected CLIPModel keys, got {key!r}")
    return [row[col].format(kind)]


def convert_to_torchflava(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map an HF, open_clip/OpenAI or torchflava CLIP state dict onto ``model``'s keys, strictly.

    Args:
        state_dict (dict[str, Tensor]): the checkpoint (a DDP ``module.`` prefix is dropped).
        model (nn.Module): the :class:`CLIPModel` whose keys and shapes drive the map.

    Returns:
        dict[str, Tensor]: a state dict that ``model.load_state_dict(strict=True)`` accepts.

    Raises:
        ValueError: if the layout is unknown, or keys are missing, unexpected or mis-shaped (all listed).
    """
    source = without_prefix(state_dict, "module.")
    layout = next((n for n, probe in _LAYOUTS.items() if any(k.startswith(probe) for k in source)), None)
    if layout is None:
        raise ValueError(f"state_dict: expected CLIP keys ({', '.join(_LAYOUTS)}), got {sorted(source)[:5]}")
    expected, out, used, missing, wrong = model.state_dict(), {}, set(), [], []
    for key, target in expected.items():
        names = _names(key, layout)
        used.update(n for n in names if n in source)
        missing += [n for n in names if n not in source]
        if not all(n in source for n in names):
            continue
        transposed = layout == "open_clip" and key.endswith("projection.weight")
        if bad := mismatch(key, [source[n] for n in names], target, transposed=transposed, squeezable=True):
            wrong.append(bad)
            continue
        value = torch.cat([source[n] for n in names]) if len(names) > 1 else source[names[0]]
        value = value.t() if transposed else value
        out[key] = value.reshape(target.shape).to(target.dtype).contiguous()  # CLS, positions; fp16 files
    unexpected = sorted(k for k in source if k not in used and not _IGNORED.match(k))
    if missing or unexpected or wrong:
        raise ValueError(
            f"state_dict ({layout} layout): expected the model's keys and shapes, got missing {len(missing)} "
            f"{missing[:12]}, unexpected {len(unexpected)} {unexpected[:12]}, wrong {len(wrong)} {wrong[:6]} "
            "(do the architecture arguments match the checkpoint?)"
        )
    return out


def convert_to_hf(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map our state dict to transformers' ``CLIPModel`` keys (qkv split; CLS and positions lose leading 1s).

    Args:
        state_dict (dict[str, Tensor]): a :class:`CLIPModel` state dict.

    Returns:
        dict[str, Tensor]: the tensors under HF's names, for ``CLIPModel.load_state_dict(strict=True)``.
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict of tensors (model.state_dict()), got {type(state_dict).__name__}")
    out = {}
    for key, value in state_dict.items():
        names = _names(key, "hf")
        if len(names) > 1 and value.shape[0] % len(names):
            raise ValueError(f"state_dict: {key} must hold q, k and v (rows a multiple of 3), got {list(value.shape)}")
        value = value.flatten() if key.endswith("cls_token") else value[0] if value.dim() == 3 else value
        out.update(zip(names, value.chunk(len(names)) if len(names) > 1 else [value]))
    return out


def file_config(path: Path, state_dict: dict[str, Tensor], given: dict) -> tuple[Optional[Path], dict]:
    """The config.json and :func:`clip_model` arguments a weights file implies where ``given`` is silent:
    a Hugging Face-layout file's config.json beside it (ValueError if there is none and no activation
    is given: only it tells); QuickGELU for OpenAI's weights (their ``input_resolution``); else none."""
    state_dict = without_prefix(state_dict, "module.")  # (meta tensors will do: only the names are read)
    if "input_resolution" in state_dict:
        return None, {} if "activation" in given else {"activation": "quick_gelu"}
    if not any(key.startswith(_LAYOUTS["hf"]) for key in state_dict):
        return None, {}
    if (path.parent / "config.json").is_file():
        return path.parent / "config.json", hf_config_kwargs(read_json_object(path.parent / "config.json"))
    if "activation" not in given:
        what = f"the config.json of the Hugging Face-layout weights {path} beside them, or activation="
        raise ValueError(f"clip_model: expected {what} ('quick_gelu' for OpenAI's weights), got neither")
    return None, {}


def hf_config_kwargs(config: dict) -> dict:
    """:func:`clip_model` arguments from a transformers ``CLIPConfig`` (config.json as a dict).

    Absent fields take ``CLIPConfig()``'s defaults (``save_pretrained`` writes only differences);
    ``eos_token_id`` 2 marks HF's legacy configs, which pool at each row's highest id (None).
    """
    if config.get("model_type", "clip") != "clip":
        raise ValueError(f"config.json: expected model_type 'clip', got {config.get('model_type')!r}")
    parts = [config.get(f"{t}_config{s}") for t in ("vision", "text") for s in ("", "_dict")]
    if not all(isinstance(part, (dict, type(None))) for part in parts):
        raise ValueError(
            f"config.json: expected objects vision_config, text_config, got {parts[0]!r:.20} {parts[2]!r:.20}"
        )
    vision, text = ((parts[i] if parts[i + 1] is None else parts[i + 1]) or {} for i in (0, 2))  # *_dict wins
    acts, eps = (
        [c.get(k, d) for c in (vision, text)] for k, d in (("hidden_act", "quick_gelu"), ("layer_norm_eps", 1e-5))
    )
    if acts[0] != acts[1] or eps[0] != eps[1]:
        raise ValueError(f"config.json: expected one hidden_act and layer_norm_eps for both towers, got {acts}, {eps}")
    names = dict(hidden_size="width", num_hidden_layers="layers", num_attention_heads="heads")
    names.update(intermediate_size="mlp_dim")
    out = {f"vision_{ours}": vision.get(hf, d) for (hf, ours), d in zip(names.items(), (768, 12, 12, 3072))}
    out.update({f"text_{ours}": text.get(hf, d) for (hf, ours), d in zip(names.items(), (512, 12, 8, 2048))})
    out.update(embed_dim=config.get("projection_dim", 512))
    out.update(logit_scale_init=config.get("logit_scale_init_value", 2.6592))
    out.update(image_size=vision.get("image_size", 224), patch_size=vision.get("patch_size", 32))
    out.update(context_length=text.get("max_position_embeddings", 77), vocab_size=text.get("vocab_size", 49408))
    eos, activation = text.get("eos_token_id", 49407), _ACTIVATIONS.get(str(acts[0]), acts[0])
    return dict(out, activation=activation, norm_eps=eps[0], eos_token_id=None if eos == 2 else eos)
