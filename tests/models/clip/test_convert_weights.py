"""CLIP checkpoints: parity with transformers' CLIPModel and open_clip's ViT-B-16, round trips, strictness.

Every reference model gets its parameters perturbed (``randn * 0.02``; in the ViT-B models the
vectors only, the matrices are random already) before it is saved, so that tensors the references
initialise to constants (biases, norms) are non-trivial and a swapped or dropped tensor changes
the features.
"""

import json
import re
import shutil

import open_clip
import pytest
from safetensors.torch import load_file, save_file
import torch
from torch import nn
import torch.nn.functional as F
from torch.testing import assert_close
from transformers import CLIPConfig
from transformers import CLIPModel as HFCLIPModel

from tests.helpers import PickleExploit
from torchflava.models import clip_model, clip_vit_b16, clip_vit_b32
from torchflava.models.clip import convert_to_hf, convert_to_torchflava
from torchflava.modules.layers.activation import QuickGELU

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

ATOL = 1e-4
BOS, EOS = 49406, 49407
# A small CLIP: every width differs, so a transposed or swapped tensor cannot pass.
SMALL = dict(
    embed_dim=20,
    image_size=32,
    patch_size=8,
    vision_width=32,
    vision_layers=2,
    vision_heads=4,
    vision_mlp_dim=48,
    context_length=16,
    vocab_size=99,
    text_width=24,
    text_layers=2,
    text_heads=3,
    text_mlp_dim=40,
)
SMALL_HF = dict(SMALL, activation="quick_gelu")  # a lone HF-layout file does not state its activation


def _perturb(module: nn.Module, scale: float = 0.02, *, vectors_only: bool = False) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() <= 1 or not vectors_only:
                p.add_(torch.randn_like(p) * scale)
    return module.eval()


def _small_hf_config(act: str = "quick_gelu", **text) -> CLIPConfig:
    s = SMALL
    return CLIPConfig(
        projection_dim=s["embed_dim"],
        vision_config=dict(
            hidden_size=s["vision_width"],
            num_hidden_layers=s["vision_layers"],
            num_attention_heads=s["vision_heads"],
            intermediate_size=s["vision_mlp_dim"],
            image_size=s["image_size"],
            patch_size=s["patch_size"],
            hidden_act=act,
        ),
        text_config=dict(
            hidden_size=s["text_width"],
            num_hidden_layers=s["text_layers"],
            num_attention_heads=s["text_heads"],
            intermediate_size=s["text_mlp_dim"],
            vocab_size=s["vocab_size"],
            max_position_embeddings=s["context_length"],
            hidden_act=act,
            **text,
        ),
    )


def captions(lengths: list[int], context: int, *, vocab: int = 49408, bos: int = BOS, eos: int = EOS, pad: int = 0):
    """Token ids ``[bos, words..., eos, pad...]`` of the given lengths (bos and eos included), and the mask."""
    ids = torch.full((len(lengths), context), pad)
    mask = torch.zeros(len(lengths), context, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1, min(bos, vocab - 3), (n,))
        ids[row, 0], ids[row, n - 1] = bos, eos
        mask[row, :n] = 1
    return ids, mask


def _hf_features(hf: HFCLIPModel, images, ids, mask):
    with torch.no_grad():
        image = F.normalize(hf.get_image_features(pixel_values=images), dim=-1)
        text = F.normalize(hf.get_text_features(input_ids=ids, attention_mask=mask), dim=-1)
    return image, text


def _our_features(model, images, ids, mask):
    with torch.no_grad():
        out = model.eval()(images, ids, mask)
    return out.image_features, out.text_features


def test_hf_default_config_vit_b32(tmp_path):
    config = CLIPConfig()  # ViT-B/32, QuickGELU, eos_token_id 49407: HF pools at the first 49407
    assert config.text_config.eos_token_id == EOS
    hf = _perturb(HFCLIPModel(config), vectors_only=True)
    hf.save_pretrained(tmp_path)
    ours = clip_model(pretrained=tmp_path)
    assert ours.eos_token_id == EOS
    assert isinstance(ours.image_encoder.encoder.layers[0].mlp.activation, QuickGELU)
    assert_close(ours.logit_scale, hf.logit_scale)
    images = torch.randn(2, 3, 224, 224)
    ids, mask = captions([77, 9, 30, 2], 77, pad=1)  # a full row, short and long captions, an empty one
    expected = _hf_features(hf, images, ids, mask)
    for actual, reference in zip(_our_features(ours, images, ids, mask), expected):
        assert_close(actual, reference, atol=ATOL, rtol=0)
    # The preset of the same size takes the directory too (its activation read from config.json).
    assert_close(clip_vit_b32(pretrained=tmp_path).encode_text(ids, mask), expected[1], atol=ATOL, rtol=0)


def test_presets_take_a_checkpoints_own_image_size(tmp_path):
    # Like OpenAI's ViT-L/14@336px beside the 224-px preset: the preset's sizes, the checkpoint's image size.
    from transformers.modeling_utils import no_init_weights

    with no_init_weights():  # the weights' values do not matter here, their shapes do (and it is quick)
        hf = HFCLIPModel(CLIPConfig(vision_config={"image_size": 64}))
    positions = hf.vision_model.embeddings.position_embedding.weight
    with torch.no_grad():
        for parameter in hf.parameters():  # uninitialised memory may hold NaN, which loading refuses
            parameter.zero_()
        positions.copy_(torch.arange(positions.numel(), dtype=torch.float32).view_as(positions))
    hf.save_pretrained(tmp_path)
    ours = clip_vit_b32(pretrained=tmp_path)
    assert_close(ours.image_encoder.embeddings.pos_embed.flatten(0, -2), positions, atol=0, rtol=0)
    assert ours.encode_image(torch.randn(1, 3, 64, 64)).shape == (1, 512)
    assert clip_vit_b32().image_encoder.embeddings.pos_embed.flatten(0, -2).shape == (50, 768)  # 224 px
    with pytest.raises(ValueError, match=r"'image_size': \(224, 64\)"):  # a size given must still match
        clip_model(pretrained=tmp_path, image_size=224)


@pytest.mark.parametrize("eos", [97, 2])  # 2: HF's legacy configs, which pool at each row's highest id
@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_hf_small_config(tmp_path, eos, weights):
    hf = _perturb(HFCLIPModel(_small_hf_config("gelu", eos_token_id=eos, bos_token_id=96)))
    hf.save_pretrained(tmp_path, safe_serialization=weights.endswith("safetensors"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", weights]
    ours = clip_model(pretrained=tmp_path)
    assert ours.eos_token_id == (None if eos == 2 else eos)
    images = torch.randn(3, 3, 32, 32)
    ids, mask = captions([16, 5, 11], 16, vocab=99, bos=96, eos=98 if eos == 2 else eos)
    # Left padding in row 1: the padded keys are ignored by HF, and by us (not computed).
    ids[1], mask[1] = ids[1].roll(6), mask[1].roll(6)
    for actual, reference in zip(_our_features(ours, images, ids, mask), _hf_features(hf, images, ids, mask)):
        assert_close(actual, reference, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def open_clip_b16():
    torch.manual_seed(0)
    return _perturb(open_clip.create_model("ViT-B-16", pretrained=None), vectors_only=True)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_open_clip_vit_b16(tmp_path, open_clip_b16, suffix):
    reference = open_clip_b16
    path = tmp_path / f"open_clip{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    ours = clip_vit_b16(pretrained=path, activation="gelu")  # (open_clip's ViT-B-16: a file alone does not say)
    images = torch.randn(2, 3, 224, 224)
    ids, _ = captions([12, 77, 40], 77)  # open_clip's texts: 77 ids, zeros after the end token
    with torch.no_grad():
        expected_image = reference.encode_image(images, normalize=True)
        expected_text = reference.encode_text(ids, normalize=True)
        assert_close(ours.encode_image(images), expected_image, atol=ATOL, rtol=0)
        assert_close(ours.encode_text(ids), expected_text, atol=ATOL, rtol=0)
        # With the mask too (1 up to the end token): the same features.
        assert_close(ours.encode_text(ids, (ids != 0).long()), expected_text, atol=ATOL, rtol=0)
    assert_close(ours.logit_scale, reference.logit_scale)


def test_round_trip_through_hf_layout(tmp_path):
    ours = _perturb(clip_model(**SMALL, activation="quick_gelu", eos_token_id=97))
    hf = HFCLIPModel(_small_hf_config(eos_token_id=97)).eval()
    hf.load_state_dict(convert_to_hf(ours.state_dict()), strict=True)
    images, (ids, mask) = torch.randn(2, 3, 32, 32), captions([4, 13], 16, vocab=99, bos=96, eos=97)
    for actual, reference in zip(_our_features(ours, images, ids, mask), _hf_features(hf, images, ids, mask)):
        assert_close(actual, reference, atol=ATOL, rtol=0)
    # And back: HF layout -> ours gives the same tensors.
    hf.save_pretrained(tmp_path)
    back = clip_model(pretrained=tmp_path)
    for key, value in ours.state_dict().items():
        assert_close(back.state_dict()[key], value, atol=0, rtol=0)
    assert_close(convert_to_torchflava(ours.state_dict(), back)["logit_scale"], ours.logit_scale.detach())


def _hf_file(tmp_path, edit=lambda state: state):
    hf = HFCLIPModel(_small_hf_config())
    path = tmp_path / "hf.safetensors"
    save_file(edit(dict(hf.state_dict())), path)
    return path


def test_missing_and_unexpected_keys_listed_in_one_error(tmp_path):
    def edit(state):
        del state["text_model.encoder.layers.1.self_attn.k_proj.weight"]
        state["text_model.extra.weight"] = torch.zeros(2)
        return state

    with pytest.raises(ValueError) as err:
        clip_model(pretrained=_hf_file(tmp_path, edit), **SMALL_HF)
    assert str(err.value) == (  # (the wording FLAVA's and the codebook's checkpoints use too)
        "state_dict (hf layout) does not match the model: missing 1 key(s) "
        "['text_model.encoder.layers.1.self_attn.k_proj.weight'], unexpected 1 key(s) ['text_model.extra.weight']. "
        "Check that the architecture arguments match the checkpoint."
    )


def test_wrong_shapes_and_architecture_raise(tmp_path):
    # A bare file's shapes state its sizes: one given otherwise is refused before the weights are read.
    path = _hf_file(tmp_path)
    with pytest.raises(ValueError, match=r"hf.safetensors, got \(given, config\) \{'vision_mlp_dim': \(64, 48\)\}$"):
        clip_model(pretrained=path, **dict(SMALL_HF, vision_mlp_dim=64))
    with pytest.raises(ValueError, match=r"hf.safetensors, got \(given, config\) \{'text_layers': \(3, 2\)\}$"):
        clip_model(pretrained=path, **dict(SMALL_HF, text_layers=3))
    # A Hugging Face directory whose config.json disagrees with the arguments given.
    HFCLIPModel(_small_hf_config()).save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match=r"'patch_size': \(16, 8\)"):
        clip_vit_b16(pretrained=tmp_path / "hf")


def test_not_a_clip_checkpoint_raises(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="expected CLIP keys"):
        clip_model(pretrained=path, **SMALL)
    with pytest.raises(FileNotFoundError):
        clip_model(pretrained=tmp_path / "absent.pt", **SMALL)
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ValueError, match="expected model_type 'clip'"):
        clip_model(pretrained=tmp_path / "vit")


def test_pickle_bearing_file_is_refused_and_not_executed(tmp_path):
    marker, path = tmp_path / "executed.txt", tmp_path / "evil.pt"
    torch.save({"logit_scale": torch.zeros(()), "payload": PickleExploit(marker)}, path)
    with pytest.raises(ValueError, match="weights_only"):
        clip_model(pretrained=path, **SMALL)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the canary works: unpickling would have run it
    assert marker.exists()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"embed_dim": 0}, ValueError, "clip_model: embed_dim must be >= 1, got 0"),
        ({"vision_layers": -2}, ValueError, "clip_model: vision_layers must be >= 1, got -2"),
        ({"text_width": 24.0}, TypeError, "clip_model: text_width must be an int, got float"),
        ({"vision_heads": True}, TypeError, "clip_model: vision_heads must be an int, got bool"),
        ({"text_heads": 5}, ValueError, "clip_model: text_width must be a multiple of text_heads = 5, got 24"),
        ({"norm_eps": -1.0}, ValueError, "clip_model: norm_eps must be a positive number"),
        ({"logit_scale_init": float("nan")}, ValueError, "clip_model: logit_scale_init must be a finite number"),
        ({"activation": "relu"}, ValueError, "clip_model: activation must be one of"),
        ({"eos_token_id": 99}, ValueError, "clip_model: eos_token_id must be an int id below vocab_size = 99"),
        ({"eos_token_id": "97"}, ValueError, "clip_model: eos_token_id must be an int id below vocab_size"),
    ],
)
def test_bad_arguments_are_refused_naming_them(kwargs, error, match):
    with pytest.raises(error, match=match):
        clip_model(**{**SMALL, **kwargs})


def test_the_end_token_defaults_to_the_vocabularys_last_id():
    assert clip_model(**SMALL).eos_token_id == SMALL["vocab_size"] - 1
    assert clip_model(**dict(SMALL, vocab_size=49408)).eos_token_id == EOS  # OpenAI's


@pytest.mark.parametrize(
    "edit, error, match",
    [
        (lambda c: "{not json", ValueError, r"config.json is not JSON"),
        (lambda c: "[]", ValueError, r"config.json must hold a JSON object, got a list"),
        (
            lambda c: json.dumps({**c, "vision_config": []}),
            ValueError,
            "config.json vision_config must be an object, got list",
        ),
        (
            lambda c: json.dumps({**c, "vision_config": {**c["vision_config"], "hidden_size": "32"}}),
            TypeError,
            r"clip_model: vision_width \(from .*config.json\) must be an int, got str",
        ),
        (
            lambda c: json.dumps({**c, "text_config": {**c["text_config"], "layer_norm_eps": "1e-5"}}),
            ValueError,
            r"^config.json: expected one hidden_act, layer_norm_eps, attention_dropout for vision_config and "
            r"text_config, got \(vision_config, text_config\) \{'layer_norm_eps': \[1e-05, '1e-5'\]\}$",
        ),
        (
            lambda c: json.dumps(
                {**c, **{f"{t}_config": {**c[f"{t}_config"], "hidden_act": "relu"} for t in ("vision", "text")}}
            ),
            ValueError,
            r"clip_model: activation \(from .*config.json\) must be one of",
        ),
    ],
)
def test_malformed_config_json_is_refused_naming_the_file(tmp_path, edit, error, match):
    HFCLIPModel(_small_hf_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(edit(config))
    with pytest.raises(error, match=match):
        clip_model(pretrained=tmp_path)


def test_a_directory_without_config_json_is_refused(tmp_path):
    HFCLIPModel(_small_hf_config()).save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()  # open_clip's defaults (GELU) would silently miss QuickGELU
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        clip_model(pretrained=tmp_path)


def test_hf_tanh_gelu_configs_load_exactly(tmp_path):
    hf = _perturb(HFCLIPModel(_small_hf_config("gelu_new", eos_token_id=97, bos_token_id=96)))
    hf.save_pretrained(tmp_path)
    ours = clip_model(pretrained=tmp_path)
    images, (ids, mask) = torch.randn(2, 3, 32, 32), captions([5, 16], 16, vocab=99, bos=96, eos=97)
    for actual, reference in zip(_our_features(ours, images, ids, mask), _hf_features(hf, images, ids, mask)):
        assert_close(actual, reference, atol=ATOL, rtol=0)


def test_mis_shaped_and_non_float_tensors_are_listed_not_raised_from_torch(tmp_path):
    def fused_part(state):  # a k projection of another width: q, k and v cannot be joined
        state["text_model.encoder.layers.0.self_attn.k_proj.weight"] = torch.zeros(24, 20)
        return state

    with pytest.raises(
        ValueError, match=r"wrong 1 \['text_encoder.encoder.layers.0.attn.qkv.weight \[\[24, 24\], \[24, 20\]"
    ):
        clip_model(pretrained=_hf_file(tmp_path, fused_part), **SMALL_HF)
    with pytest.raises(ValueError, match=r"expected arguments that match .*hf.*'patch_size': \(16, 8\)"):
        clip_model(pretrained=_hf_file(tmp_path), **dict(SMALL_HF, patch_size=16))  # the file's own geometry
    with pytest.raises(ValueError, match=r"wrong 2 \['image_encoder.embeddings.pos_embed \[17, 32\] for \[1, 5, 32\]"):
        convert_to_torchflava(load_file(_hf_file(tmp_path)), clip_model(**dict(SMALL, patch_size=16)))

    def integer(state):
        state["text_projection.weight"] = state["text_projection.weight"].to(torch.int8)
        return state

    with pytest.raises(ValueError, match=r"text_projection.weight torch.int8 for a torch.float32 tensor"):
        clip_model(pretrained=_hf_file(tmp_path, integer), **SMALL_HF)


@pytest.mark.parametrize("shape", [(1, 32, 20), (20, 32)], ids=["rank 3", "saved transposed"])
def test_open_clip_projection_of_the_wrong_shape_is_listed_with_the_shape_the_file_should_hold(shape):
    """open_clip keeps projections as x @ W, (D, P): the message gives that shape (it gave the model's,
    so a projection saved as (P, D) read '[20, 32] for [20, 32]')."""
    expected = r"\[32, 20\] \(kept as x @ W: the model's \[20, 32\], transposed\)"
    with pytest.raises(ValueError, match=rf"image_projection.weight {re.escape(str(list(shape)))} for {expected}"):
        convert_to_torchflava({"visual.proj": torch.zeros(shape)}, clip_model(**SMALL))


def test_a_key_with_and_without_the_ddp_prefix_is_refused():
    model = clip_model(**SMALL)
    state = model.state_dict()
    with pytest.raises(ValueError, match=r"each key once with or without 'module.', got both for \['logit_scale'\]"):
        convert_to_torchflava({**state, "module.logit_scale": state["logit_scale"]}, model)


def test_convert_to_hf_refuses_what_is_not_our_state_dict():
    state = clip_model(**SMALL).state_dict()
    with pytest.raises(TypeError, match="state_dict must be a mapping of names to tensors"):
        convert_to_hf(clip_model(**SMALL))
    with pytest.raises(ValueError, match="expected CLIPModel keys, got 'foo'"):
        convert_to_hf({"foo": torch.zeros(1)})
    qkv = "image_encoder.encoder.layers.0.attn.qkv.weight"
    with pytest.raises(ValueError, match=f"{qkv} must hold q, k and v"):
        convert_to_hf({**state, qkv: state[qkv][:-1]})
    # a 0-dim fused tensor (was an IndexError), a layer key of no known part (a KeyError), and positions or a
    # CLS token whose leading dims are not 1s (were cut to the first slice or flattened, silently)
    with pytest.raises(
        ValueError, match=rf"^state_dict: {qkv} must hold q, k and v \(rows a multiple of 3\), got \(\)$"
    ):
        convert_to_hf({qkv: torch.tensor(1.0)})
    with pytest.raises(
        ValueError, match=r"^state_dict: expected CLIPModel keys, got 'image_encoder.encoder.layers.0.foo.weight'$"
    ):
        convert_to_hf({"image_encoder.encoder.layers.0.foo.weight": torch.zeros(2)})
    pos, cls = "image_encoder.embeddings.pos_embed", "image_encoder.embeddings.cls_token"
    with pytest.raises(ValueError, match=rf"^state_dict: {pos} must be 2-D after leading 1s, got \(2, 17, 32\)$"):
        convert_to_hf({pos: state[pos].expand(2, -1, -1)})
    with pytest.raises(ValueError, match=rf"^state_dict: {cls} must be 1-D after leading 1s, got \(1, 3, 32\)$"):
        convert_to_hf({cls: torch.zeros(1, 3, 32)})
    hf = convert_to_hf({pos: state[pos], cls: state[cls]})
    assert hf["vision_model.embeddings.position_embedding.weight"].shape == (17, 32)
    assert hf["vision_model.embeddings.class_embedding"].shape == (32,)


@pytest.mark.parametrize("value", [2, 0.5, float("nan")])
def test_attention_masks_hold_only_zeros_and_ones(value):
    model = clip_model(**SMALL, eos_token_id=97).eval()
    ids, mask = captions([5, 9], 16, vocab=99, bos=96, eos=97)
    bad = mask.float()
    bad[1, 2] = value
    with pytest.raises(ValueError, match=r"text_attention_mask must hold 1 \(token\) and 0 \(padding\) only, got"):
        model.encode_text(ids, bad)


def test_a_hugging_face_weights_file_reads_the_config_json_beside_it(tmp_path):
    hf = _perturb(HFCLIPModel(_small_hf_config("quick_gelu", eos_token_id=97, bos_token_id=96)))  # not our GELU
    hf.save_pretrained(tmp_path)
    images, (ids, mask) = torch.randn(2, 3, 32, 32), captions([16, 5], 16, vocab=99, bos=96, eos=97)
    expected = _hf_features(hf, images, ids, mask)
    ours = clip_model(pretrained=tmp_path / "model.safetensors")  # the file, not the directory
    assert isinstance(ours.image_encoder.encoder.layers[0].mlp.activation, QuickGELU)
    for actual, reference in zip(_our_features(ours, images, ids, mask), expected):
        assert_close(actual, reference, atol=ATOL, rtol=0)
    lone = tmp_path / "alone"
    lone.mkdir()
    (tmp_path / "model.safetensors").rename(lone / "weights.safetensors")
    with pytest.raises(
        ValueError, match=r"expected the config.json beside the weights .* or activation=.* got neither"
    ):
        clip_model(pretrained=lone / "weights.safetensors", **SMALL)  # GELU or QuickGELU: nothing says
    assert isinstance(clip_model(pretrained=lone / "weights.safetensors", **SMALL_HF), nn.Module)


def test_a_torchflava_weights_file_reads_the_clip_config_json_of_its_export(tmp_path):
    """The CLIP recipe's export (clip.safetensors beside clip_config.json) loaded by its weights file: the
    activation, eps and end token come from the config (they loaded as GELU, 1e-5 and the last id, silently)."""
    from torchflava.utils.checkpoint import save_state_dict

    settings = dict(activation="quick_gelu", norm_eps=1e-2, eos_token_id=97)
    source = _perturb(clip_model(**SMALL, **settings)).eval()
    save_state_dict(source.state_dict(), tmp_path / "clip.safetensors")
    (tmp_path / "clip_config.json").write_text(json.dumps({**SMALL, **settings, "init_std": None}))
    images, (ids, mask) = torch.randn(2, 3, 32, 32), captions([16, 5], 16, vocab=99, bos=96, eos=97)
    loaded = clip_model(pretrained=tmp_path / "clip.safetensors", **SMALL).eval()
    assert isinstance(loaded.image_encoder.encoder.layers[0].mlp.activation, QuickGELU)
    assert (loaded.eos_token_id, loaded.image_encoder.norm.eps) == (97, 1e-2)
    for actual, reference in zip(_our_features(loaded, images, ids, mask), _our_features(source, images, ids, mask)):
        assert_close(actual, reference, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"'activation': \('gelu', 'quick_gelu'\)"):  # a contradiction is named
        clip_model(pretrained=tmp_path / "clip.safetensors", activation="gelu")
    (tmp_path / "clip_config.json").write_text(json.dumps({**SMALL, "widht": 3}))
    with pytest.raises(
        ValueError, match=r"^clip_model: expected only its arguments, got \['widht'\] \(from .*clip_config.json\)$"
    ):
        clip_model(pretrained=tmp_path / "clip.safetensors")


def test_openai_weights_default_to_quick_gelu(tmp_path):
    reference = _perturb(open_clip.create_model("ViT-B-16-quickgelu", pretrained=None), vectors_only=True)
    state = {k: (v.half() if v.dim() >= 2 else v) for k, v in reference.state_dict().items()}  # OpenAI's fp16
    state.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(state, tmp_path / "ViT-B-16.pt")
    reference.load_state_dict({k: v.float() for k, v in state.items() if k in reference.state_dict()})
    ours = clip_vit_b16(pretrained=tmp_path / "ViT-B-16.pt")
    assert isinstance(ours.image_encoder.encoder.layers[0].mlp.activation, QuickGELU)
    ids, _ = captions([12, 77], 77)
    with torch.no_grad():
        expected = F.normalize(reference.eval().encode_text(ids), dim=-1)
        assert_close(ours.eval().encode_text(ids), expected, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=r"were trained with QuickGELU: build with activation='quick_gelu', got"):
        clip_vit_b16(pretrained=tmp_path / "ViT-B-16.pt", activation="gelu")  # (it loaded as GELU, silently)


# A small CLIP as OpenAI's released state dicts hold it: open_clip's keys (OpenAI's layout) and three entries.
OPENAI_SMALL = dict(SMALL, text_mlp_dim=48, vision_mlp_dim=48)  # the sizes of OPEN_CLIP_CFG's towers
OPENAI_ENTRIES = dict(input_resolution=32, context_length=16, vocab_size=99)


def _openai_file(path, **entries):
    """OpenAI's QuickGELU weights of OPEN_CLIP_CFG's sizes saved with the entries (``entries`` replace values)."""
    torch.manual_seed(0)
    reference = _perturb(open_clip.model.CLIP(**OPEN_CLIP_CFG)).eval()
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    state.update({k: torch.tensor(v) for k, v in {**OPENAI_ENTRIES, **entries}.items()})
    save_file(state, path) if path.suffix == ".safetensors" else torch.save(state, path)
    return reference, state


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("key, value", [("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)])
def test_openai_entries_must_hold_the_models_sizes(tmp_path, monkeypatch, suffix, key, value):
    """Matching entries load (the features are open_clip's); one that disagrees with the model is refused, naming
    the key, the file's value and the model's, before the weights are read (they were ignored, whatever they held)."""
    reference, _ = _openai_file(tmp_path / f"good{suffix}")
    ours = clip_model(pretrained=tmp_path / f"good{suffix}", **OPENAI_SMALL).eval()
    assert isinstance(ours.text_encoder.encoder.layers[0].mlp.activation, QuickGELU)
    images, (ids, _) = torch.randn(2, 3, 32, 32), captions([5, 16], 16, vocab=99, bos=97, eos=98)
    with torch.no_grad():
        assert_close(ours.encode_image(images), reference.encode_image(images, normalize=True), atol=ATOL, rtol=0)
        assert_close(ours.encode_text(ids), reference.encode_text(ids, normalize=True), atol=ATOL, rtol=0)
    _, state = _openai_file(tmp_path / f"bad{suffix}", **{key: value})
    with pytest.raises(
        ValueError, match=rf"^state_dict: expected {key} {OPENAI_ENTRIES[key]} \(the model's\), got {value}$"
    ):
        convert_to_torchflava(state, ours)
    monkeypatch.setattr("torchflava.models.clip.builders.load_state_dict", lambda *_: pytest.fail("weights read"))
    path = re.escape(str(tmp_path / f"bad{suffix}"))
    with pytest.raises(
        ValueError, match=rf"^{path}: expected {key} {OPENAI_ENTRIES[key]} \(the model's\), got {value}$"
    ):
        clip_model(pretrained=tmp_path / f"bad{suffix}", **OPENAI_SMALL)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_openai_weights_refuse_a_model_without_quick_gelu(tmp_path, monkeypatch, activation):
    """OpenAI's weights were trained with QuickGELU: a model built with another activation is refused, by
    clip_model before the weights are read and by convert_to_torchflava (they loaded, silently wrong)."""
    _, state = _openai_file(tmp_path / "openai.safetensors")
    expected = (
        r"OpenAI's CLIP weights \(input_resolution, context_length, vocab_size\) were trained with QuickGELU: build "
        rf"with activation='quick_gelu', got activation '{activation}'$"
    )
    with pytest.raises(ValueError, match=rf"^state_dict: {expected}"):
        convert_to_torchflava(state, clip_model(**OPENAI_SMALL, activation=activation))
    monkeypatch.setattr("torchflava.models.clip.builders.load_state_dict", lambda *_: pytest.fail("weights read"))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'openai.safetensors'))}: {expected}"):
        clip_model(pretrained=tmp_path / "openai.safetensors", **OPENAI_SMALL, activation=activation)
    del state["input_resolution"], state["vocab_size"]  # any of the three marks OpenAI's weights
    with pytest.raises(ValueError, match=r"^state_dict: OpenAI's CLIP weights \(context_length\) were trained"):
        convert_to_torchflava(state, clip_model(**OPENAI_SMALL, activation=activation))


def test_hf_attention_dropout_is_read_into_both_towers(tmp_path):
    """config.json's attention_dropout was ignored: the model fine-tuned without it."""
    hf = _perturb(HFCLIPModel(_small_hf_config(eos_token_id=97, bos_token_id=96, attention_dropout=0.25)))
    assert hf.config.vision_config.attention_dropout == 0.0  # (the text tower's only, so far)
    hf.config.vision_config.attention_dropout = 0.25
    hf.save_pretrained(tmp_path)
    ours = clip_model(pretrained=tmp_path)
    towers = (ours.image_encoder, ours.text_encoder)
    assert [layer.attn.dropout for tower in towers for layer in tower.encoder.layers] == [0.25] * 4
    hf = HFCLIPModel.from_pretrained(tmp_path).eval()  # evaluation: no dropout, HF's features
    images, (ids, mask) = torch.randn(2, 3, 32, 32), captions([5, 16], 16, vocab=99, bos=96, eos=97)
    for actual, reference in zip(_our_features(ours, images, ids, mask), _hf_features(hf, images, ids, mask)):
        assert_close(actual, reference, atol=ATOL, rtol=0)
    torch.manual_seed(0)
    with torch.no_grad():
        first, second = (ours.train().encode_image(images) for _ in range(2))
    assert (first - second).abs().max() > 1e-3  # training: attention probabilities dropped
    # a training setting: one given overrides the config's (as transformers' from_pretrained(..., attention_dropout=))
    tuned = clip_model(pretrained=tmp_path, attention_dropout=0.0)
    assert {
        layer.attn.dropout for tower in (tuned.image_encoder, tuned.text_encoder) for layer in tower.encoder.layers
    } == {0.0}
    with pytest.raises(ValueError, match=r"^clip_model: expected arguments that match .*'text_width': \(32, 24\)"):
        clip_model(pretrained=tmp_path, text_width=32)  # (the network's own sizes must still match)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vision_config"]["attention_dropout"] = 0.5
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError,
        match=r"^config.json: expected one hidden_act, layer_norm_eps, attention_dropout for vision_config and "
        r"text_config, got \(vision_config, text_config\) \{'attention_dropout': \[0.5, 0.25\]\}$",
    ):
        clip_model(pretrained=tmp_path)


def test_attention_dropout_is_checked_naming_the_argument():
    with pytest.raises(ValueError, match=r"^clip_model: attention_dropout must be in \[0, 1\), got 1.0"):
        clip_model(**SMALL, attention_dropout=1.0)
    model = clip_model(**SMALL, attention_dropout=0.1, eos_token_id=97)
    assert {layer.attn.dropout for t in (model.image_encoder, model.text_encoder) for layer in t.encoder.layers} == {
        0.1
    }


def test_legacy_config_dict_entries_override_as_in_transformers(tmp_path):
    _perturb(HFCLIPModel(_small_hf_config("gelu", eos_token_id=97, bos_token_id=96))).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for tower in ("text", "vision"):
        config[f"{tower}_config_dict"] = config[f"{tower}_config"]  # the settings in effect
        config[f"{tower}_config"] = {**config[f"{tower}_config"], "hidden_act": "quick_gelu", "hidden_size": 8}
    (tmp_path / "config.json").write_text(json.dumps(config))
    hf = HFCLIPModel.from_pretrained(tmp_path).eval()
    assert hf.config.text_config.hidden_act == "gelu"  # transformers reads the *_dict entries
    ours = clip_model(pretrained=tmp_path)
    assert not isinstance(ours.text_encoder.encoder.layers[0].mlp.activation, QuickGELU)
    images, (ids, mask) = torch.randn(2, 3, 32, 32), captions([16, 5], 16, vocab=99, bos=96, eos=97)
    for actual, reference in zip(_our_features(ours, images, ids, mask), _hf_features(hf, images, ids, mask)):
        assert_close(actual, reference, atol=ATOL, rtol=0)
    # The _dict replaces its sub-config whole: a field it leaves out is CLIPConfig's default, not the sub-config's.
    for tower in ("text", "vision"):
        config[f"{tower}_config"]["hidden_act"] = "gelu"
        del config[f"{tower}_config_dict"]["hidden_act"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert HFCLIPModel.from_pretrained(tmp_path).config.text_config.hidden_act == "quick_gelu"
    assert isinstance(clip_model(pretrained=tmp_path).text_encoder.encoder.layers[0].mlp.activation, QuickGELU)


def test_arguments_are_checked_before_the_weights_are_read(tmp_path, monkeypatch):
    path = _hf_file(tmp_path)
    from torchflava.models.clip import builders

    read = []
    monkeypatch.setattr(builders, "load_state_dict", lambda p: read.append(p))
    with pytest.raises(ValueError, match="clip_model: vision_width must be a multiple of vision_heads"):
        clip_model(pretrained=path, **dict(SMALL_HF, vision_heads=5))
    assert read == []  # the header was peeked at, no tensor read


# open_clip's model config of a small QuickGELU CLIP (as in its open_clip_config.json on the Hub).
OPEN_CLIP_CFG = dict(embed_dim=20, quick_gelu=True)
OPEN_CLIP_CFG.update(vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=2, head_width=8, mlp_ratio=1.5))
OPEN_CLIP_CFG.update(text_cfg=dict(context_length=16, vocab_size=99, width=24, heads=3, layers=2, mlp_ratio=2.0))


def _open_clip_hub_directory(directory, cfg=OPEN_CLIP_CFG, config_json=None):
    """open_clip's Hub layout: open_clip_config.json and open_clip_model.safetensors; the reference model."""
    torch.manual_seed(0)
    reference = _perturb(open_clip.model.CLIP(**cfg)).eval()
    directory.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, directory / "open_clip_model.safetensors")
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    if config_json is not None:  # e.g. timm's Hub folders: a config.json of their own beside
        (directory / "config.json").write_text(json.dumps(config_json))
    return reference


@pytest.mark.parametrize("what", ["directory", "file", "timm folder"])
def test_open_clip_config_json_gives_the_architecture_and_quick_gelu(tmp_path, what):
    reference = _open_clip_hub_directory(
        tmp_path, config_json={"architecture": "vit"} if what == "timm folder" else None
    )
    ours = clip_model(pretrained=tmp_path / "open_clip_model.safetensors" if what == "file" else tmp_path).eval()
    assert isinstance(ours.text_encoder.encoder.layers[0].mlp.activation, QuickGELU)  # GELU before: 1.8e-3 off
    assert (
        ours.image_encoder.encoder.layers[0].attn.num_heads == 4
        and ours.text_encoder.encoder.layers[0].mlp.fc1.out_features == 48
    )
    images = torch.randn(2, 3, 32, 32)
    ids, _ = captions([5, 16], 16, vocab=99, bos=97, eos=98)  # open_clip pools at the highest id
    with torch.no_grad():
        assert_close(ours.encode_image(images), reference.encode_image(images, normalize=True), atol=ATOL, rtol=0)
        assert_close(ours.encode_text(ids), reference.encode_text(ids, normalize=True), atol=ATOL, rtol=0)
    with pytest.raises(
        ValueError,
        match=r"expected arguments that match .*open_clip_config.json, got .*'activation': \('gelu', 'quick_gelu'\)",
    ):
        clip_model(pretrained=tmp_path, activation="gelu")


@pytest.mark.parametrize(
    "vision, text, top",
    [
        ({"pool_type": "avg"}, {}, {}),  # features 0.5 off had it loaded
        ({}, {"no_causal_mask": True, "pool_type": "last"}, {}),
        ({"ls_init_value": 1e-5, "timm_model_name": None}, {}, {"init_logit_bias": -10.0}),  # layer scale; SigLIP
        ({}, {"hf_model_name": "roberta-base"}, {"custom_text": True}),
    ],
)
def test_open_clip_settings_ours_does_not_build_are_refused_before_reading_weights(
    tmp_path, vision, text, top, monkeypatch
):
    _open_clip_hub_directory(tmp_path)
    cfg = dict(OPEN_CLIP_CFG, **top)
    cfg.update(vision_cfg={**cfg["vision_cfg"], **vision}, text_cfg={**cfg["text_cfg"], **text})
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    refused = {f"vision_cfg.{k}": v for k, v in vision.items() if v is not None}
    refused.update({f"text_cfg.{k}": v for k, v in text.items()}, **top)
    monkeypatch.setattr("torchflava.models.clip.builders.load_state_dict", lambda *_: pytest.fail("weights read"))
    with pytest.raises(
        ValueError, match="open_clip_config.json: expected only settings torchflava's CLIP builds"
    ) as error:
        clip_model(pretrained=tmp_path)
    assert all(f"'{key}': {value!r}" in str(error.value) for key, value in refused.items()), str(error.value)


def test_a_directory_holds_a_clip_config_json_or_open_clip_files(tmp_path):
    _open_clip_hub_directory(tmp_path, config_json={"architecture": "vit"})
    (tmp_path / "open_clip_model.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError, match="expected open_clip_model.safetensors or open_clip_pytorch_model.bin beside"
    ):
        clip_model(pretrained=tmp_path)
    (tmp_path / "open_clip_config.json").unlink()  # a config.json of another kind alone
    with pytest.raises(ValueError, match="config.json: expected model_type 'clip', got None"):
        clip_model(pretrained=tmp_path)


@pytest.mark.parametrize("layout", ["torchflava", "hf"])
def test_a_bare_weights_file_gives_its_own_patch_and_image_size(tmp_path, layout):
    # No config beside it: the patch projection and the position table say the geometry (a 48-px
    # model of 8-px patches: 1 + 36 positions), so no image_size need be given, and a wrong one clashes.
    sizes = {k: v for k, v in SMALL.items() if k not in ("image_size", "patch_size")}
    reference = _perturb(clip_model(**sizes, image_size=48, patch_size=8))
    state = reference.state_dict() if layout == "torchflava" else convert_to_hf(reference.state_dict())
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    extra = {} if layout == "torchflava" else {"activation": "gelu"}
    ours = clip_model(pretrained=path, **sizes, **extra)
    images = torch.randn(2, 3, 48, 48)
    assert_close(ours.encode_image(images), reference.encode_image(images), atol=1e-6, rtol=0)
    with pytest.raises(
        ValueError, match=r"expected arguments that match .*weights.safetensors.*'image_size': \(32, 48\)"
    ):
        clip_model(pretrained=path, **SMALL, **extra)


@pytest.mark.parametrize("layout", ["torchflava", "open_clip"])
def test_a_bare_weights_file_gives_its_own_vocabulary_size_and_context_length(tmp_path, layout):
    """No config beside it: the rows of the token and position tables say them (the defaults, 49408 and 77,
    were built and the weights refused as mis-shaped); a clashing one is refused naming the file."""
    from torchflava.models.clip import clip_model_arguments

    torch.manual_seed(0)
    if layout == "torchflava":
        reference = _perturb(clip_model(**OPENAI_SMALL, activation="quick_gelu"))
    else:
        reference = _perturb(open_clip.model.CLIP(**OPEN_CLIP_CFG))
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    sizes = {k: v for k, v in OPENAI_SMALL.items() if k not in ("vocab_size", "context_length")}
    arguments = clip_model_arguments(path, **sizes, activation="quick_gelu")  # (an open_clip file alone: not told)
    assert (arguments["vocab_size"], arguments["context_length"], arguments["eos_token_id"]) == (99, 16, 98)
    ours = clip_model(pretrained=path, **sizes, activation="quick_gelu").eval()
    ids, _ = captions([5, 16], 16, vocab=99, bos=97, eos=98)
    with torch.no_grad():
        assert_close(ours.encode_text(ids), reference.encode_text(ids, normalize=True), atol=ATOL, rtol=0)
    clash = r"\(given, config\) \{'context_length': \(77, 16\), 'vocab_size': \(49408, 99\)\}$"
    with pytest.raises(
        ValueError, match=rf"^clip_model: expected arguments that match {re.escape(str(path))}, got {clash}"
    ):
        clip_model(pretrained=path, **sizes, vocab_size=49408, context_length=77, activation="quick_gelu")


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_bare_open_clip_file_is_refused_without_its_activation_then_loads_with_it(tmp_path, monkeypatch, wrapped):
    """open_clip's weights alone (an open_clip training run's epoch_N.pt, DDP's module. and all; the old cache's
    ViT-B-32-quickgelu-laion400m_e32.pt) do not say whether they were trained with QuickGELU (open_clip's -quickgelu
    models) or GELU, and they loaded as GELU without a word: this QuickGELU model's text features 1e-3 off. Refused
    naming activation (UntoldArgument, which a recipe names as its key) before a tensor is read, as a Hugging Face
    file alone is; with it given they load as open_clip computes."""
    from torchflava.utils.architecture import UntoldArgument

    torch.manual_seed(0)
    reference = _perturb(open_clip.model.CLIP(**OPEN_CLIP_CFG)).eval()  # quick_gelu=True: a -quickgelu model's
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    path = tmp_path / "epoch_32.pt"
    torch.save({"epoch": 32, "state_dict": {f"module.{k}": v for k, v in state.items()}} if wrapped else state, path)
    monkeypatch.setattr("torchflava.models.clip.builders.load_state_dict", lambda *_: pytest.fail("weights read"))
    expected = (
        rf"^clip_model: expected the open_clip_config.json beside the weights {re.escape(str(path))}, "
        r"or activation= \('quick_gelu' or 'gelu'\), got neither$"
    )
    with pytest.raises(UntoldArgument, match=expected) as refused:
        clip_model(pretrained=path, **OPENAI_SMALL)
    assert refused.value.argument == "activation"
    monkeypatch.undo()
    ours = clip_model(pretrained=path, **OPENAI_SMALL, activation="quick_gelu").eval()
    images, (ids, _) = torch.randn(2, 3, 32, 32), captions([5, 16], 16, vocab=99, bos=97, eos=98)
    with torch.no_grad():
        assert_close(ours.encode_image(images), reference.encode_image(images, normalize=True), atol=ATOL, rtol=0)
        assert_close(ours.encode_text(ids), reference.encode_text(ids, normalize=True), atol=ATOL, rtol=0)
        gelu = clip_model(pretrained=path, **OPENAI_SMALL, activation="gelu").eval().encode_text(ids)  # (as it loaded)
        assert (gelu - reference.encode_text(ids, normalize=True)).abs().max() > 1e-3


def test_patch_geometry_only_for_a_square_grid_behind_a_cls():
    from torchflava.modules.layers.patch_embedding import patch_geometry

    proj = torch.empty(16, 3, 14, 14, device="meta")
    assert patch_geometry(proj, torch.empty(1, 577, 16, device="meta")) == {"patch_size": 14, "image_size": 336}
    assert patch_geometry(proj, torch.empty(257, 16)) == {"patch_size": 14, "image_size": 224}
    for positions in (torch.empty(256, 16), torch.empty(1, 16), torch.empty(16)):  # no CLS + square, no patches
        assert patch_geometry(proj, positions) == {}
    assert patch_geometry(torch.empty(16, 3, 14, 7), torch.empty(257, 16)) == {} and patch_geometry(None, None) == {}


@pytest.mark.parametrize(
    "tower, key, value, error, match",
    [
        ("vision", "head_width", 0, ValueError, r"vision_cfg.head_width must be >= 1, got 0"),  # ZeroDivisionError
        ("vision", "head_width", "8", TypeError, r"vision_cfg.head_width must be an int, got str"),
        ("text", "width", None, TypeError, r"text_cfg.width must be an int, got NoneType"),
        ("vision", "mlp_ratio", "1.5", ValueError, r"vision_cfg.mlp_ratio must be a positive number, got '1.5'"),
        ("text", "mlp_ratio", "2", ValueError, r"text_cfg.mlp_ratio must be a positive number, got '2'"),  # 10^511
        ("text", "mlp_ratio", None, ValueError, r"text_cfg.mlp_ratio must be a positive number, got None"),
        # open_clip's RN50: 'vision_layers must be an int, got list', not saying what the config is
        (
            "vision",
            "layers",
            [3, 4, 6, 3],
            ValueError,
            r"vision_cfg.layers: expected an int, got \[3, 4, 6, 3\] \(a ResNet",
        ),
    ],
)
def test_open_clip_config_values_computed_with_are_checked_first_naming_file_and_key(
    tmp_path, tower, key, value, error, match
):
    """Widths, head widths and MLP ratios are computed with before clip_model checks its arguments: a bad
    one was a ZeroDivisionError, a TypeError from Python's operators, or a layer 10^511 wide."""
    _open_clip_hub_directory(tmp_path)
    cfg = json.loads((tmp_path / "open_clip_config.json").read_text())
    cfg["model_cfg"][f"{tower}_cfg"][key] = value
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(error, match=rf"^open_clip_config.json: {match}"):
        clip_model(pretrained=tmp_path)


def test_an_hf_config_of_other_than_rgb_images_and_a_size_not_a_multiple_of_the_patch_are_refused(tmp_path):
    """num_channels was ignored (a 1-channel config loaded 3-channel weights as RGB); an image size that
    is not a multiple of the patch size was refused by the layer, naming no file."""
    HFCLIPModel(_small_hf_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(
        json.dumps({**config, "vision_config": {**config["vision_config"], "num_channels": 1}})
    )
    with pytest.raises(ValueError, match=r"^config.json: expected vision_config.num_channels 3, got 1$"):
        clip_model(pretrained=tmp_path)
    patch = config["vision_config"]["patch_size"]
    vision = {**config["vision_config"], "image_size": patch * 4 - 2}
    (tmp_path / "config.json").write_text(json.dumps({**config, "vision_config": vision}))
    with pytest.raises(
        ValueError, match=rf"clip_model: image_size \(from .*config.json\) must be a multiple of patch_size = {patch}"
    ):
        clip_model(pretrained=tmp_path)


def test_clip_model_arguments_are_what_clip_model_builds_and_the_vocabulary_is_the_embeddings(tmp_path):
    from torchflava.models.clip import clip_model_arguments

    hf = HFCLIPModel(_small_hf_config("gelu", eos_token_id=97, bos_token_id=96))
    hf.save_pretrained(tmp_path)
    arguments = clip_model_arguments(tmp_path, attention_dropout=0.1)  # the config's, and what is given
    assert arguments == {
        **SMALL,
        "activation": "gelu",
        "norm_eps": 1e-5,
        "logit_scale_init": pytest.approx(2.6592),
        "attention_dropout": 0.1,
        "init_std": 0.02,
        "eos_token_id": 97,
    }
    loaded, built = clip_model(pretrained=tmp_path, attention_dropout=0.1), clip_model(**arguments)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in built.state_dict().items()}
    assert built.eos_token_id == loaded.eos_token_id
    assert clip_model_arguments(None, vocab_size=99)["eos_token_id"] == 98  # the vocabulary's last id
    with pytest.raises(ValueError, match=r"clip_model: expected arguments that match .*'vision_width': \(48, "):
        clip_model_arguments(tmp_path, vision_width=48)
    with pytest.raises(ValueError, match=r"^clip_model_arguments: expected arguments of clip_model, got \['width'\]$"):
        clip_model_arguments(None, width=3)
    assert arguments["vocab_size"] == hf.text_model.embeddings.token_embedding.num_embeddings
    save_file(built.state_dict(), tmp_path / "ours.safetensors")  # ours, no config: its embeddings' rows
    heads = dict(vision_heads=SMALL["vision_heads"], text_heads=SMALL["text_heads"])  # (widths of no 64-wide heads)
    assert clip_model_arguments(tmp_path / "ours.safetensors", **heads)["vocab_size"] == SMALL["vocab_size"]


# A CLIP export as examples/clip/train.py writes it: none of its sizes, nor its activation, eps or end token, is
# clip_model's default, so that only its clip_config.json can give them.
EXPORT_CLIP = dict(SMALL, activation="quick_gelu", norm_eps=1e-6, eos_token_id=97)


def _export_clip(run):
    """``run``/model/: clip.safetensors (written by the recipes' export_model) beside clip_config.json."""
    from torchflava.models.clip import clip_model_arguments
    from torchflava.training.checkpointing import export_model

    torch.manual_seed(0)
    model = _perturb(clip_model(**EXPORT_CLIP))
    (run / "model").mkdir(parents=True)
    export_model(model, run / "model" / "clip.safetensors")
    (run / "model" / "clip_config.json").write_text(json.dumps(clip_model_arguments(None, **EXPORT_CLIP)))
    return model


def test_an_export_rebuilds_from_its_directory_or_weights_file_with_no_size_arguments(tmp_path):
    """Found by a new-user review: clip_model(pretrained=<run>/model) looked for a config.json and failed."""
    source = _export_clip(tmp_path)
    images, (ids, mask) = torch.randn(2, 3, 32, 32), captions([16, 5], 16, vocab=99, bos=96, eos=97)
    expected = _our_features(source, images, ids, mask)
    for pretrained in (tmp_path / "model", tmp_path, tmp_path / "model" / "clip.safetensors"):  # export, run, file
        loaded = clip_model(pretrained=pretrained)
        assert isinstance(loaded.image_encoder.encoder.layers[0].mlp.activation, QuickGELU)
        assert (loaded.eos_token_id, loaded.image_encoder.norm.eps) == (97, 1e-6)
        for actual, reference in zip(_our_features(loaded, images, ids, mask), expected):
            assert torch.equal(actual, reference)
    assert clip_model(pretrained=tmp_path / "model", vision_layers=2, attention_dropout=0.1) is not None  # agreeing
    with pytest.raises(ValueError, match=r"clip_config.json, got \(given, config\) \{'vision_layers': \(3, 2\)\}$"):
        clip_model(pretrained=tmp_path / "model", vision_layers=3)
    shutil.copy(tmp_path / "model" / "clip.safetensors", tmp_path / "model" / "old.safetensors")
    with pytest.raises(ValueError, match=r"expected one .safetensors weights file, got \['clip.safetensors', 'old"):
        clip_model(pretrained=tmp_path / "model")  # which is the model's cannot be told


def test_a_strict_load_names_the_arguments_the_shapes_disagree_with():
    """Found by a new-user review: the error listed up to 50 keys on one huge line and named no argument."""
    state = clip_model(**SMALL).state_dict()
    with pytest.raises(ValueError) as err:
        convert_to_torchflava(state, clip_model(**dict(SMALL, vision_width=48)))
    assert str(err.value) == (
        "state_dict (torchflava layout) does not match the model: missing 0 key(s) [], unexpected 0 key(s) [], "
        "wrong 30 ['image_encoder.embeddings.cls_token [1, 1, 32] for [1, 1, 48]', "
        "'image_encoder.embeddings.pos_embed [1, 17, 32] for [1, 17, 48]', "
        "'image_encoder.embeddings.proj.weight [32, 3, 8, 8] for [48, 3, 8, 8]']. "
        "Arguments that disagree with the checkpoint's shapes: vision_width=48 (checkpoint: 32)."
    )
    hf = convert_to_hf(state)  # in Hugging Face's layout, a tower one layer short and another context
    with pytest.raises(ValueError) as err:
        convert_to_torchflava(hf, clip_model(**dict(SMALL, text_layers=3, context_length=20)))
    assert str(err.value) == (
        "state_dict (hf layout) does not match the model: missing 16 key(s) "
        "['text_model.encoder.layers.2.layer_norm1.weight', 'text_model.encoder.layers.2.layer_norm1.bias', "
        "'text_model.encoder.layers.2.self_attn.q_proj.weight', 'text_model.encoder.layers.2.self_attn.k_proj.weight', "
        "'text_model.encoder.layers.2.self_attn.v_proj.weight'], unexpected 0 key(s) [], "
        "wrong 1 ['text_encoder.embeddings.pos_embed.weight [16, 24] for [20, 24]']. "
        "Arguments that disagree with the checkpoint's shapes: text_layers=3 (checkpoint: 2), "
        "context_length=20 (checkpoint: 16)."
    )


def test_open_clip_shapes_imply_embed_dim_through_the_transposed_projection_and_layers_by_resblocks():
    from torchflava.models.clip.convert_weights import clip_sizes

    state = open_clip.model.CLIP(**OPEN_CLIP_CFG).state_dict()  # visual.proj: (32, 20), kept as x @ W
    told = clip_sizes(state, "open_clip")
    assert {k: v[0] for k, v in told.items()} == {k: v for k, v in OPENAI_SMALL.items() if not k.endswith("_heads")}
    assert told["embed_dim"] == (20, "visual.proj", (32, 20))  # the tensor that tells, as the checkpoint holds it
    assert told["text_layers"][1] == "transformer.resblocks.1.mlp.c_fc.weight"  # the last layer's
    assert clip_sizes({"visual.proj": torch.zeros(2, 3, 4)}, "open_clip") == {}  # no such shape: nothing told


# OpenAI's released CLIP, small: widths of 64-wide heads (2 and 1), QuickGELU, the entries beside the weights.
OPENAI_64 = dict(embed_dim=20, quick_gelu=True)
OPENAI_64.update(vision_cfg=dict(image_size=32, patch_size=8, width=128, layers=2, head_width=64, mlp_ratio=1.5))
OPENAI_64.update(text_cfg=dict(context_length=16, vocab_size=99, width=64, heads=1, layers=3, mlp_ratio=2.0))


def test_a_bare_weights_file_builds_the_model_its_shapes_state_with_64_wide_heads(tmp_path):
    """As OpenAI's loader builds its CLIP from a state dict (heads = width // 64): ViT-B-32.pt and the like
    load with no argument (they built ViT-B/16's sizes and were refused as mis-shaped)."""
    torch.manual_seed(0)
    reference = _perturb(open_clip.model.CLIP(**OPENAI_64)).eval()
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    torch.save({**state, **{k: torch.tensor(v) for k, v in OPENAI_ENTRIES.items()}}, tmp_path / "ViT-tiny.pt")
    ours = clip_model(pretrained=tmp_path / "ViT-tiny.pt").eval()
    assert (
        ours.image_encoder.encoder.layers[0].attn.num_heads,
        ours.text_encoder.encoder.layers[0].attn.num_heads,
    ) == (2, 1)
    assert isinstance(ours.text_encoder.encoder.layers[0].mlp.activation, QuickGELU)  # OpenAI's entries tell
    images, (ids, _) = torch.randn(2, 3, 32, 32), captions([5, 16], 16, vocab=99, bos=97, eos=98)
    with torch.no_grad():
        assert_close(ours.encode_image(images), reference.encode_image(images, normalize=True), atol=ATOL, rtol=0)
        assert_close(ours.encode_text(ids), reference.encode_text(ids, normalize=True), atol=ATOL, rtol=0)
    # No head count is told by a width of no 64-wide heads: it must be given (it was 12, silently).
    save_file({k: v.contiguous() for k, v in clip_model(**SMALL).state_dict().items()}, tmp_path / "small.safetensors")
    with pytest.raises(ValueError) as err:
        clip_model(pretrained=tmp_path / "small.safetensors")
    assert str(err.value) == (
        f"{tmp_path / 'small.safetensors'}: expected vision_heads (its vision_width 32 tells no 64-wide heads), got none"
    )
    assert clip_model(pretrained=tmp_path / "small.safetensors", vision_heads=4, text_heads=3) is not None


@pytest.mark.parametrize("width, head_width", [(1280, 80), (1664, 104)])
def test_a_lone_open_clip_file_of_a_vit_h_or_bigg_width_loads_with_its_16_heads(tmp_path, width, head_width):
    """open_clip's ViT-H/g/bigG/e image towers have 16 heads of 80/88/104/112, not 64: their weights file alone
    (e.g. a laion ``open_clip_pytorch_model.bin`` downloaded without its config) loaded with 20 or 26 heads, silently
    wrong. One layer of those widths, its MLP narrow, against open_clip's own features."""
    vision = dict(image_size=32, patch_size=16, width=width, layers=1, head_width=head_width, mlp_ratio=0.025)
    text = dict(context_length=16, vocab_size=99, width=64, heads=1, layers=1, mlp_ratio=0.5)  # heads 64 wide
    cfg = dict(embed_dim=20, vision_cfg=vision, text_cfg=text)
    torch.manual_seed(0)
    reference = _perturb(open_clip.model.CLIP(**cfg), vectors_only=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "weights.safetensors")
    ours = clip_model(pretrained=tmp_path / "weights.safetensors", activation="gelu").eval()  # (not told by the file)
    assert ours.image_encoder.encoder.layers[0].attn.num_heads == 16
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(ours.encode_image(images), reference.encode_image(images, normalize=True), atol=ATOL, rtol=0)
    given = clip_model(pretrained=tmp_path / "weights.safetensors", vision_heads=width // 64, activation="gelu")
    assert given.image_encoder.encoder.layers[0].attn.num_heads == width // 64  # a count given still wins


def _tiny_open_clip_state(**vision) -> dict:
    """A state dict of open_clip's CLIP of OPEN_CLIP_CFG's sizes, its image tower's settings updated by ``vision``."""
    cfg = dict(OPEN_CLIP_CFG, vision_cfg=dict(OPEN_CLIP_CFG["vision_cfg"], **vision))
    return {k: v.contiguous() for k, v in open_clip.model.CLIP(**cfg).state_dict().items()}


@pytest.mark.parametrize(
    "kind, message",
    [
        ("resnet", r"got 'visual\.(layer1|attnpool)\.[\w.]+': a ResNet image tower, which torchflava does not build"),
        ("layer scale", r"'visual.transformer.resblocks.0.ls_1.gamma': layer scale, which"),
        ("timm", r"'visual.trunk.blocks.0.norm1.weight': a timm image tower \(ConvNeXt, EVA, SigLIP"),
        ("siglip", "'logit_bias': SigLIP's sigmoid-loss bias, which"),
        ("coca", "'text_decoder.ln_final.weight': CoCa's captioning decoder, which"),
        ("clipa", r"missing 2 key\(s\) \['visual.ln_pre.weight', 'visual.ln_pre.bias'\]"),  # (no key tells it)
    ],
)
def test_a_lone_open_clip_file_of_towers_ours_does_not_build_is_refused_naming_them_before_a_read(
    tmp_path, monkeypatch, kind, message
):
    """A ResNet, timm, layer-scaled, SigLIP or CoCa model's weights alone were read whole (gigabytes for the large
    ones) and refused with a list of hundreds of missing and unexpected keys; the first foreign key and what it is
    now, from the file's header, no tensor read (CLIPA's ViT without ln_pre: its two missing keys)."""
    vision = dict(resnet=dict(layers=[1, 1, 1, 1], width=8), clipa=dict(no_ln_pre=True))
    state = _tiny_open_clip_state(**vision.get(kind, dict(ls_init_value=0.1) if kind == "layer scale" else {}))
    extra = dict(timm="visual.trunk.blocks.0.norm1.weight", siglip="logit_bias", coca="text_decoder.ln_final.weight")
    state.update({extra[kind]: torch.zeros(())} if kind in extra else {})
    save_file(state, tmp_path / "open_clip_model.safetensors")
    monkeypatch.setattr("torchflava.models.clip.builders.load_state_dict", lambda *_: pytest.fail("weights read"))
    with pytest.raises(ValueError, match=message):
        clip_model(pretrained=tmp_path / "open_clip_model.safetensors", vision_heads=4, text_heads=3, activation="gelu")
    with pytest.raises(ValueError, match=message):  # a state dict given to the converter: the same line
        convert_to_torchflava(state, clip_model(**OPENAI_SMALL))
