"""FLAVA builders and checkpoints refuse bad input with one-line errors naming it, before any work."""

import json

import pytest
from safetensors.torch import save_file
import torch

from tests.helpers import TINY_FLAVA, write_tiny_export
from torchflava.models import flava_model, flava_model_for_pretraining
from torchflava.models.flava.convert_weights import convert_to_hf
from torchflava.pretrained import load_pretrained


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"image_embed_dim": -1}, ValueError, "flava_model: image_embed_dim must be >= 1, got -1"),
        ({"text_num_layers": 2.5}, TypeError, "flava_model: text_num_layers must be an int, got float"),
        ({"multimodal_num_heads": 5}, ValueError, "flava_model: multimodal_embed_dim must be a multiple of"),
        ({"norm_eps": -1.0}, ValueError, "flava_model: norm_eps must be a positive number"),
        ({"dropout": 1.5}, ValueError, r"flava_model: dropout must be in \[0, 1\), got 1.5"),
        ({"logit_scale_init": float("inf")}, ValueError, "flava_model: logit_scale_init must be a finite number"),
        ({"pad_token_id": 99}, ValueError, "flava_model: pad_token_id must be an int id below vocab_size = 99"),
        ({"init_std": 0}, ValueError, "flava_model: init_std must be a positive number"),
    ],
)
def test_bad_arguments_are_refused_naming_them(kwargs, error, match):
    with pytest.raises(error, match=match):
        flava_model(**{**TINY_FLAVA, **kwargs})


def _hf_file(tmp_path, edit):
    state = convert_to_hf(flava_model(**TINY_FLAVA).state_dict())
    path = tmp_path / "hf.safetensors"
    save_file({k: v.contiguous() for k, v in edit(state).items()}, str(path))
    return path


def test_fused_parts_that_cannot_be_joined_are_listed_not_raised_from_torch(tmp_path):
    key = "text_model.encoder.layer.0.attention.attention.key.weight"

    def narrow_key(state):
        assert key in state
        state[key] = torch.zeros(24, 20)
        return state

    with pytest.raises(
        ValueError, match=r"does not match the model: .*wrong 1 \['text_encoder.encoder.layers.0.attn.qkv"
    ):
        flava_model(pretrained=_hf_file(tmp_path, narrow_key), **TINY_FLAVA)


def test_integer_weights_are_refused(tmp_path):
    key = "text_projection.weight"

    def integer(state):
        state[key] = state[key].to(torch.int16)
        return state

    with pytest.raises(ValueError, match=r"text_projection.weight torch.int16 for a torch.float32 tensor"):
        flava_model(pretrained=_hf_file(tmp_path, integer), **TINY_FLAVA)


def test_mis_shaped_pretraining_heads_are_refused_in_one_line(tmp_path):
    model = flava_model_for_pretraining(backbone=flava_model(**TINY_FLAVA), build_codebook=False, image_vocab_size=64)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "ours.safetensors"))
    with pytest.raises(ValueError, match=r"mim_head.decoder.weight \[64, 32\] for \[32, 32\]") as info:
        flava_model_for_pretraining(
            backbone=flava_model(**TINY_FLAVA),
            build_codebook=False,
            image_vocab_size=32,
            pretrained=tmp_path / "ours.safetensors",
        )
    assert "\n" not in str(info.value)


def test_malformed_checkpoint_configs_name_the_file(tmp_path):
    write_tiny_export(tmp_path / "export")
    (tmp_path / "export" / "backbone_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"backbone_config.json must hold a JSON object, got a list"):
        load_pretrained(tmp_path / "export")
    (tmp_path / "export" / "backbone_config.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"backbone_config.json is not JSON"):
        load_pretrained(tmp_path / "export")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(
        json.dumps({"image_config": [], "text_config": {}, "multimodal_config": {}})
    )
    (tmp_path / "hf" / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(ValueError, match="config image_config must be an object, got list"):
        load_pretrained(tmp_path / "hf")


def test_an_unknown_backbone_config_key_names_the_file(tmp_path):
    write_tiny_export(tmp_path / "export")
    config = json.loads((tmp_path / "export" / "backbone_config.json").read_text())
    (tmp_path / "export" / "backbone_config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(
        ValueError, match=r"export/backbone_config.json states arguments flava_model does not take: \['hidden_act'\]"
    ):
        load_pretrained(tmp_path / "export")


def test_a_checkpoint_that_does_not_fit_is_refused_before_the_real_model_is_built(tmp_path, monkeypatch):
    """Found by an adversarial review: flava_model built and initialised a full FLAVA-full (1.8 s,
    1.4 GB) before refusing a tiny file; names and shapes are now checked on a meta-device model."""
    from torchflava.models.flava import builders
    from torchflava.utils.checkpoint import save_state_dict

    torch.manual_seed(0)
    save_state_dict(flava_model(**TINY_FLAVA).state_dict(), tmp_path / "tiny.safetensors")
    devices, build = [], builders._build_flava
    monkeypatch.setattr(builders, "_build_flava", lambda a: devices.append(torch.get_default_device().type) or build(a))
    with pytest.raises(ValueError, match=r"does not match the model: .*cls_token \[1, 1, 32\] for \[1, 1, 768\]"):
        flava_model(pretrained=tmp_path / "tiny.safetensors")
    assert devices == ["meta"]
    devices.clear()
    loaded = flava_model(**TINY_FLAVA, pretrained=tmp_path / "tiny.safetensors")
    assert devices == ["meta", "cpu"] and not any(p.is_meta for p in loaded.parameters())


def test_a_clip_checkpoint_is_named_as_one(tmp_path):
    """Found by an adversarial review: a Hugging Face CLIP file was read as FLAVA's HF layout (both have
    text_model.*) and refused for one mis-shaped tensor, with advice to pass the architecture."""
    from transformers import CLIPConfig, CLIPModel

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(text_config=small, vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    expected = r"^flava_model: expected pretrained to be a FLAVA checkpoint, got .*clip, a CLIP checkpoint \(build it"
    with pytest.raises(ValueError, match=expected):
        flava_model(pretrained=tmp_path / "clip")  # its config.json says so
    (tmp_path / "alone").mkdir()
    (tmp_path / "clip" / "model.safetensors").rename(tmp_path / "alone" / "clip.safetensors")
    with pytest.raises(ValueError, match="CLIP checkpoint, not FLAVA's .*load it with torchflava.models.clip_model"):
        flava_model(pretrained=tmp_path / "alone" / "clip.safetensors")  # the file alone
