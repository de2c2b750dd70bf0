"""Checkpoint conversion: parity with Hugging Face's and torchmultimodal's FLAVA, round trips, strictness.

Every reference model gets its parameters perturbed (``randn * 0.05``) before it is saved, so that
tensors the references initialise to zero (CLS/mask tokens, positions, biases) are non-trivial and a
swapped or dropped tensor changes the outputs.
"""

import gc
import inspect
import json
import math
from pathlib import Path
import re
import shutil

import pytest
from safetensors import safe_open
from safetensors.torch import save_file
import torch
from torch import nn
import torch.nn.functional as F
from torch.testing import assert_close
from torchmultimodal.models.flava.model import (
    DalleEncoder,
    DalleVAEEncoder,
)
from torchmultimodal.models.flava.model import (
    FLAVAForPreTraining as TmmFLAVAForPreTraining,
)
from torchmultimodal.models.flava.model import (
    flava_model as tmm_flava_model,
)
from torchmultimodal.modules.losses.flava import FLAVAPretrainingLoss
from transformers import FlavaConfig, FlavaForPreTraining, FlavaModel

from tests.helpers import TINY_FLAVA, PickleExploit, padded_text, pickle_canary
from torchflava.models.flava import (
    FLAVAModel,
    convert_to_hf,
    convert_to_torchflava,
    flava_image_encoder,
    flava_model,
    flava_model_for_classification,
    flava_model_for_pretraining,
    load_flava_weights,
)
from torchflava.models.flava.convert_weights import flava_kwargs_from_hf_config
from torchflava.models.flava.pretraining import LossWeights
from torchflava.utils.checkpoint import save_state_dict
from torchflava.utils.distributed import GatherGrad

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecations

ATOL = 1e-4
T = TINY_FLAVA


# ---------------------------------------------------------------------------------------------- helpers


def _perturb(module: nn.Module, scale: float = 0.05) -> None:
    """Add ``randn * scale`` to every parameter, so zero-initialised tensors become non-trivial."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert_close(actual, expected, atol=ATOL, rtol=0)


def _tiny_hf_config(**encoders) -> FlavaConfig:
    """A transformers ``FlavaConfig`` with TINY_FLAVA's sizes (different width per tower); ``encoders``
    (e.g. ``layer_norm_eps``) go into all three encoder configs."""
    return FlavaConfig(
        image_config=dict(
            hidden_size=T["image_embed_dim"],
            num_hidden_layers=T["image_num_layers"],
            num_attention_heads=T["image_num_heads"],
            intermediate_size=T["image_mlp_dim"],
            image_size=T["image_size"],
            patch_size=T["patch_size"],
            vocab_size=16,  # size of the MIM head's codebook vocabulary (FlavaForPreTraining only)
            **encoders,
        ),
        text_config=dict(
            hidden_size=T["text_embed_dim"],
            num_hidden_layers=T["text_num_layers"],
            num_attention_heads=T["text_num_heads"],
            intermediate_size=T["text_mlp_dim"],
            vocab_size=T["vocab_size"],
            max_position_embeddings=T["max_seq_len"],
            **encoders,
        ),
        multimodal_config=dict(
            hidden_size=T["multimodal_embed_dim"],
            num_hidden_layers=T["multimodal_num_layers"],
            num_attention_heads=T["multimodal_num_heads"],
            intermediate_size=T["multimodal_mlp_dim"],
            **encoders,
        ),
        image_codebook_config=dict(hidden_size=8, vocab_size=16, num_blocks_per_group=1),
        projection_dim=T["projection_dim"],
    )


def _tiny_tmm_model() -> nn.Module:
    """torchmultimodal's FLAVAModel with TINY_FLAVA's sizes."""
    return tmm_flava_model(
        image_hidden_size=T["image_embed_dim"],
        image_num_attention_heads=T["image_num_heads"],
        image_num_hidden_layers=T["image_num_layers"],
        image_intermediate_size=T["image_mlp_dim"],
        image_size=T["image_size"],
        patch_size=T["patch_size"],
        text_hidden_size=T["text_embed_dim"],
        text_num_attention_heads=T["text_num_heads"],
        text_num_hidden_layers=T["text_num_layers"],
        text_intermediate_size=T["text_mlp_dim"],
        vocab_size=T["vocab_size"],
        max_position_embeddings=T["max_seq_len"],
        multimodal_hidden_size=T["multimodal_embed_dim"],
        multimodal_num_attention_heads=T["multimodal_num_heads"],
        multimodal_num_hidden_layers=T["multimodal_num_layers"],
        multimodal_intermediate_size=T["multimodal_mlp_dim"],
        text_and_image_proj_size=T["projection_dim"],
    ).eval()


def _hf_kwargs(directory: Path) -> dict:
    return flava_kwargs_from_hf_config(json.loads((directory / "config.json").read_text()))


def _tiny_inputs(batch: int = 3, length: int = 12, lengths=(12, 7, 3)):
    ids, mask = padded_text(batch, length, T["vocab_size"], list(lengths))
    images = torch.randn(batch, 3, T["image_size"], T["image_size"])
    return images, ids, mask


@torch.no_grad()
def _assert_matches_hf(ours: nn.Module, hf: FlavaModel, images, ids, mask) -> None:
    """Every output of ours equals the Hugging Face model's within ATOL."""
    ours.eval()
    hf.eval()
    ref = hf(input_ids=ids, pixel_values=images, attention_mask=mask)
    out = ours(images, ids, text_attention_mask=mask)
    _close(out.image_embeddings, ref.image_embeddings)
    _close(out.text_embeddings, ref.text_embeddings)
    _close(out.multimodal_embeddings, ref.multimodal_embeddings)
    _close(out.image_pooled, ref.image_output.pooler_output)
    _close(out.text_pooled, ref.text_output.pooler_output)
    _close(out.multimodal_pooled, ref.multimodal_output.pooler_output)
    # HF's get_*_features return the projection of every position, unnormalised; ours the CLS, L2-normalised.
    ref_image = F.normalize(hf.get_image_features(pixel_values=images)[:, 0], dim=-1)
    ref_text = F.normalize(hf.get_text_features(input_ids=ids, attention_mask=mask)[:, 0], dim=-1)
    _close(out.image_features, ref_image)
    _close(out.text_features, ref_text)
    _close(ours.encode_image(images), ref_image)
    _close(ours.encode_text(ids, mask), ref_text)
    _close(ours.logit_scale.detach(), hf.logit_scale.detach())


def _save_hf(model: nn.Module, directory: Path, variant: str) -> Path:
    """Save a transformers model the way ``variant`` says; return the path to load from."""
    if variant == "safetensors_dir":
        model.save_pretrained(directory)
        return directory
    if variant == "safetensors_file":
        model.save_pretrained(directory)
        return directory / "model.safetensors"
    if variant == "bin_dir":
        model.save_pretrained(directory, safe_serialization=False)
        assert (directory / "pytorch_model.bin").is_file()
        return directory
    if variant == "sharded_safetensors":
        model.save_pretrained(directory, max_shard_size="50KB")
        assert (directory / "model.safetensors.index.json").is_file()
        assert len(list(directory.glob("model-*-of-*.safetensors"))) > 1
        assert not (directory / "model.safetensors").exists()
        return directory
    if variant == "sharded_bin":
        model.save_pretrained(directory, max_shard_size="50KB", safe_serialization=False)
        assert (directory / "pytorch_model.bin.index.json").is_file()
        assert len(list(directory.glob("pytorch_model-*-of-*.bin"))) > 1
        assert not (directory / "pytorch_model.bin").exists()
        return directory
    if variant == "sharded_index_file":
        model.save_pretrained(directory, max_shard_size="50KB")
        return directory / "model.safetensors.index.json"
    raise AssertionError(variant)


def _file_keys(directory: Path) -> set[str]:
    """Tensor names in a (possibly sharded) safetensors checkpoint directory, read without our loader."""
    keys: set[str] = set()
    for shard in directory.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as f:
            keys.update(f.keys())
    return keys


# --------------------------------------------------------------------------- 1. Hugging Face, tiny sizes


def test_kwargs_from_hf_config_match_tiny_flava(tmp_path):
    FlavaModel(_tiny_hf_config()).save_pretrained(tmp_path)
    kwargs = _hf_kwargs(tmp_path)
    assert {k: kwargs[k] for k in TINY_FLAVA} == TINY_FLAVA
    assert kwargs["norm_eps"] == 1e-12
    assert kwargs["logit_scale_init"] == pytest.approx(2.6592)


@pytest.mark.parametrize(
    "variant",
    ["safetensors_dir", "safetensors_file", "bin_dir", "sharded_safetensors", "sharded_bin", "sharded_index_file"],
)
def test_hf_flava_model_parity(tmp_path, variant):
    hf = FlavaModel(_tiny_hf_config()).eval()
    _perturb(hf)
    path = _save_hf(hf, tmp_path, variant)

    ours = flava_model(pretrained=path, **_hf_kwargs(tmp_path))

    _assert_matches_hf(ours, hf, *_tiny_inputs())


def test_hf_flava_for_pretraining_skips_heads_and_codebook(tmp_path):
    hf = FlavaForPreTraining(_tiny_hf_config()).eval()
    _perturb(hf)
    hf.save_pretrained(tmp_path)
    file_keys = _file_keys(tmp_path)
    head_keys = {k for k in file_keys if not k.startswith("flava.")}
    # The checkpoint really holds the heads and the codebook beside the backbone.
    assert any(k.startswith("image_codebook.") for k in head_keys)
    for head in ("mim_head.", "mlm_head.", "itm_head.", "mmm_image_head.", "mmm_text_head."):
        assert any(k.startswith(head) for k in head_keys), head

    ours = flava_model(**_hf_kwargs(tmp_path))
    skipped = load_flava_weights(ours, tmp_path)

    assert set(skipped) == head_keys
    assert len(skipped) == len(head_keys)
    _assert_matches_hf(ours, hf.flava, *_tiny_inputs())
    # flava_model(pretrained=...) takes the same route.
    _assert_matches_hf(flava_model(pretrained=tmp_path, **_hf_kwargs(tmp_path)), hf.flava, *_tiny_inputs())


# -------------------------------------------------------------------------- 2. Hugging Face, full size


@pytest.mark.slow
def test_hf_flava_model_parity_full_size(tmp_path):
    directory = tmp_path / "flava-full-random"
    try:
        hf = FlavaModel(FlavaConfig(init_codebook=False)).eval()
        _perturb(hf)
        hf.save_pretrained(directory)
        kwargs = _hf_kwargs(directory)
        assert kwargs["image_embed_dim"] == kwargs["text_embed_dim"] == kwargs["multimodal_embed_dim"] == 768
        assert (kwargs["image_num_layers"], kwargs["text_num_layers"], kwargs["multimodal_num_layers"]) == (12, 12, 6)
        ours = flava_model(pretrained=directory, **kwargs)
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())

        ids, mask = padded_text(2, 16, kwargs["vocab_size"], [16, 9])
        images = torch.randn(2, 3, 224, 224)
        _assert_matches_hf(ours, hf, images, ids, mask)
    finally:
        shutil.rmtree(directory, ignore_errors=True)  # ~1 GB: do not leave it to pytest's tmp retention
        hf = ours = None
        gc.collect()


# ----------------------------------------------------------------------------------- 3. torchmultimodal


def test_tmm_flava_model_parity(tmp_path):
    tmm = _tiny_tmm_model()
    _perturb(tmm)
    path = tmp_path / "tmm_flava.pt"
    torch.save(tmm.state_dict(), path)

    ours = flava_model(pretrained=path, **TINY_FLAVA).eval()

    images, ids, mask = _tiny_inputs()
    with torch.no_grad():
        # Padded text: torchmultimodal masks id 0 itself; ours gets the matching attention mask.
        ref = tmm(image=images, text=ids, required_embedding="mm", skip_unmasked_mm_encoder=False)
        out = ours(images, ids, text_attention_mask=mask)
        _close(out.image_embeddings, ref.image.last_hidden_state)
        _close(out.text_embeddings, ref.text.last_hidden_state)
        _close(out.image_pooled, ref.image.pooler_output)
        _close(out.text_pooled, ref.text.pooler_output)
        _close(out.image_features, F.normalize(ref.projected_image_embeddings, dim=-1))
        _close(out.text_features, F.normalize(ref.projected_text_embeddings, dim=-1))
        _close(ours.encode_image(images), F.normalize(ref.projected_image_embeddings, dim=-1))
        _close(ours.encode_text(ids, mask), F.normalize(ref.projected_text_embeddings, dim=-1))

        # Multimodal: torchmultimodal gives its multimodal encoder no padding mask, so compare unpadded text.
        full_ids, full_mask = padded_text(3, 12, T["vocab_size"], [12, 12, 12])
        assert bool((full_ids != 0).all())
        ref = tmm(image=images, text=full_ids, required_embedding="mm", skip_unmasked_mm_encoder=False)
        out = ours(images, full_ids, text_attention_mask=full_mask)
        _close(out.multimodal_embeddings, ref.multimodal.last_hidden_state)
        _close(out.multimodal_pooled, ref.multimodal.pooler_output)
        _close(ours(images, full_ids).multimodal_embeddings, ref.multimodal.last_hidden_state)

    # torchmultimodal's FLAVAModel has no temperature: ours keeps its initial value.
    assert ours.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    other = flava_model(pretrained=path, **TINY_FLAVA, logit_scale_init=1.5)
    assert other.logit_scale.item() == pytest.approx(1.5)


def test_tmm_flava_for_pretraining_loads_logit_scale_and_skips_heads(tmp_path):
    tmm = _tiny_tmm_model()
    codebook = DalleVAEEncoder(image_size=16, pretrained=False)
    codebook.encoder = DalleEncoder(n_hid=8, n_blk_per_group=1, vocab_size=16)  # a small stand-in codebook
    loss = FLAVAPretrainingLoss(
        logit_scale=1.2345, hidden_size=T["multimodal_embed_dim"], text_vocab_size=T["vocab_size"], image_vocab_size=16
    )
    wrapped = TmmFLAVAForPreTraining(model=tmm, image_codebook=codebook, loss=loss)
    _perturb(tmm)
    state = wrapped.state_dict()
    assert state["loss.contrastive_loss.logit_scale"].item() == pytest.approx(1.2345)
    assert any(k.startswith("loss.mlm_loss.") for k in state)
    assert any(k.startswith("image_codebook.") for k in state)
    path = tmp_path / "tmm_flava_for_pretraining.pt"
    torch.save(state, path)

    ours = flava_model(**TINY_FLAVA)
    skipped = load_flava_weights(ours, path)

    assert ours.logit_scale.item() == pytest.approx(1.2345)
    expected_skipped = {k for k in state if k.startswith(("loss.", "image_codebook."))}
    expected_skipped.discard("loss.contrastive_loss.logit_scale")
    assert set(skipped) == expected_skipped
    assert "loss.contrastive_loss.logit_scale" not in skipped
    assert not any(k.startswith("model.") for k in skipped)

    images, ids, mask = _tiny_inputs()
    with torch.no_grad():
        ref = tmm(image=images, text=ids, required_embedding="mm", skip_unmasked_mm_encoder=False)
        ours.eval()
        out = ours(images, ids, text_attention_mask=mask)
    _close(out.image_embeddings, ref.image.last_hidden_state)
    _close(out.text_embeddings, ref.text.last_hidden_state)
    _close(out.image_features, F.normalize(ref.projected_image_embeddings, dim=-1))
    _close(out.text_features, F.normalize(ref.projected_text_embeddings, dim=-1))


# ----------------------------------------------------------------------------- our own layout, and 4.


@pytest.mark.parametrize("prefix", ["", "model."])
def test_torchflava_layout_round_trip(tmp_path, prefix):
    source = flava_model(**TINY_FLAVA)
    _perturb(source)
    path = tmp_path / "ours.safetensors"
    save_state_dict({prefix + k: v for k, v in source.state_dict().items()}, path)

    loaded = flava_model(pretrained=path, **TINY_FLAVA)

    expected = source.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_convert_to_hf_round_trip_into_transformers(tmp_path):
    ours = flava_model(**TINY_FLAVA).eval()
    _perturb(ours)
    hf = FlavaModel(_tiny_hf_config()).eval()

    converted = convert_to_hf(ours.state_dict())
    assert set(converted) == set(hf.state_dict())
    result = hf.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    _assert_matches_hf(ours, hf, *_tiny_inputs())

    # And back: the fused QKV is rebuilt exactly.
    back, skipped = convert_to_torchflava(converted, ours)
    assert skipped == []
    for key, value in ours.state_dict().items():
        assert torch.equal(back[key], value), key
    # convert_to_hf copies: changing its output leaves the model alone.
    converted["text_model.encoder.layer.0.attention.attention.query.weight"].add_(1.0)
    assert torch.equal(
        ours.text_encoder.encoder.layers[0].attn.qkv.weight[: T["text_embed_dim"]],
        hf.text_model.encoder.layer[0].attention.attention.query.weight,
    )


# ---------------------------------------------------------------------------------------- 5. strictness


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed by a failed load"


def _layout_state(layout: str) -> dict[str, torch.Tensor]:
    state = flava_model(**TINY_FLAVA).state_dict()
    return convert_to_hf(state) if layout == "hf" else dict(state)


_A_KEY = {
    "hf": "text_model.encoder.layer.1.attention.attention.key.weight",
    "torchflava": "text_encoder.encoder.layers.1.attn.qkv.weight",
}
_EXTRA_KEY = {"hf": "text_model.encoder.extra.weight", "torchflava": "text_encoder.extra.weight"}


@pytest.mark.parametrize("layout", ["hf", "torchflava"])
def test_missing_key_raises_and_names_it(tmp_path, layout):
    state = _layout_state(layout)
    del state[_A_KEY[layout]]
    path = tmp_path / "ckpt.safetensors"
    save_file(state, str(path))
    model = flava_model(**TINY_FLAVA)
    before = _state(model)

    with pytest.raises(ValueError, match="missing 1 key") as err:
        load_flava_weights(model, path)

    assert repr(_A_KEY[layout]) in str(err.value)
    assert "unexpected 0 key" in str(err.value)
    _assert_unchanged(model, before)


@pytest.mark.parametrize("layout", ["hf", "torchflava"])
def test_unexpected_key_raises_and_names_it(tmp_path, layout):
    state = _layout_state(layout)
    state[_EXTRA_KEY[layout]] = torch.zeros(3)
    path = tmp_path / "ckpt.safetensors"
    save_file(state, str(path))
    model = flava_model(**TINY_FLAVA)
    before = _state(model)

    with pytest.raises(ValueError, match="unexpected 1 key") as err:
        load_flava_weights(model, path)

    assert repr(_EXTRA_KEY[layout]) in str(err.value)
    assert "missing 0 key" in str(err.value)
    _assert_unchanged(model, before)


def test_extra_layer_is_unexpected(tmp_path):
    deeper = flava_model(**{**TINY_FLAVA, "text_num_layers": 3})
    path = tmp_path / "deeper.safetensors"
    save_file(convert_to_hf(deeper.state_dict()), str(path))

    with pytest.raises(ValueError, match="unexpected") as err:
        flava_model(pretrained=path, **TINY_FLAVA)
    assert "text_model.encoder.layer.2." in str(err.value)


def test_different_size_raises_on_shapes(tmp_path):
    wider = flava_model(**{**TINY_FLAVA, "image_embed_dim": 48})
    path = tmp_path / "wider.safetensors"
    save_file(convert_to_hf(wider.state_dict()), str(path))
    model = flava_model(**TINY_FLAVA)
    before = _state(model)

    with pytest.raises(ValueError, match="shape") as err:
        load_flava_weights(model, path)

    assert "image_encoder.embeddings.cls_token [1, 1, 48] for [1, 1, 32]" in str(err.value)
    assert "text_encoder" not in str(err.value)  # only the image tower differs
    _assert_unchanged(model, before)


def test_unknown_layout_raises_naming_the_top_level_keys(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"backbone.layer0.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match=r"known layout.*got top-level names \['backbone', 'head'\]"):
        flava_model(pretrained=path, **TINY_FLAVA)


def test_unknown_forced_layout_raises(tmp_path):
    path = tmp_path / "ours.safetensors"
    save_file(flava_model(**TINY_FLAVA).state_dict(), str(path))
    with pytest.raises(ValueError, match="layout must be one of"):
        load_flava_weights(flava_model(**TINY_FLAVA), path, layout="timm")


def test_directory_without_checkpoint_raises(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "weights.txt").write_text("not a checkpoint")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        flava_model(pretrained=tmp_path, **TINY_FLAVA)


def test_missing_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        flava_model(pretrained=tmp_path / "does-not-exist.safetensors", **TINY_FLAVA)


# A payload that records its own execution: unpickling a PickleExploit instance calls pickle_canary(marker).
def test_pickled_object_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "executed.txt"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": PickleExploit(marker)}, path)
    assert not marker.exists()

    with pytest.raises(ValueError, match="weights_only"):
        flava_model(pretrained=path, **TINY_FLAVA)
    assert not marker.exists()

    # The canary works: unpickling with weights_only=False would have run it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "executed"


def test_pickled_function_is_refused(tmp_path):
    marker = tmp_path / "executed.txt"
    path = tmp_path / "function.pt"
    torch.save({"weight": torch.zeros(2), "hook": pickle_canary}, path)
    with pytest.raises(ValueError, match="weights_only"):
        flava_model(pretrained=path, **TINY_FLAVA)
    assert not marker.exists()


def test_torch_file_without_tensors_raises(tmp_path):
    path = tmp_path / "not_a_state_dict.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ValueError, match="state dict"):
        flava_model(pretrained=path, **TINY_FLAVA)


def test_error_messages_list_names_not_regex_noise(tmp_path):
    # A missing fused tensor lists all three reference names it is built from.
    state = convert_to_hf(flava_model(**TINY_FLAVA).state_dict())
    removed = [f"image_model.encoder.layer.0.attention.attention.{p}.bias" for p in ("query", "key", "value")]
    for key in removed:
        del state[key]
    path = tmp_path / "ckpt.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=re.escape(f"missing 3 key(s) {removed}")):
        flava_model(pretrained=path, **TINY_FLAVA)


# ------------------------------------------------------------- 6. a Hugging Face directory's config.json


def _saved_hf(tmp_path: Path, config: FlavaConfig, model_class=FlavaModel) -> nn.Module:
    hf = model_class(config).eval()
    _perturb(hf)
    hf.save_pretrained(tmp_path)
    return hf


def _norm_eps(model: nn.Module) -> set[float]:
    return {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)}


def test_hf_directory_config_gives_the_arguments_left_at_their_defaults(tmp_path):
    hf = _saved_hf(tmp_path, _tiny_hf_config(layer_norm_eps=1e-5))

    sized = flava_model(pretrained=tmp_path, **TINY_FLAVA)  # sizes given, eps left to config.json
    bare = flava_model(pretrained=tmp_path)  # everything from config.json
    weights = next(tmp_path.glob("*.safetensors"))
    beside = flava_model(pretrained=weights)  # the weights file: the config.json beside it

    for ours in (sized, bare, beside):
        assert _norm_eps(ours) == {1e-5}
        _assert_matches_hf(ours, hf, *_tiny_inputs())
    # flava_model_for_classification builds its backbone the same way.
    classifier = flava_model_for_classification(3, pretrained=tmp_path)
    _assert_matches_hf(classifier.model, hf, *_tiny_inputs())


def test_hf_directory_arguments_contradicting_config_raise_listing_them(tmp_path):
    _saved_hf(tmp_path, _tiny_hf_config(layer_norm_eps=1e-5))
    config_file = re.escape(str(tmp_path / "config.json"))

    with pytest.raises(ValueError, match=rf"flava_model: expected arguments that match {config_file}") as err:
        flava_model(pretrained=tmp_path, **{**TINY_FLAVA, "image_num_layers": 3}, norm_eps=1e-6)
    assert "(given, config) {'image_num_layers': (3, 2), 'norm_eps': (1e-06, 1e-05)}" in str(err.value)


def test_hf_directory_with_another_activation_raises_naming_config_json(tmp_path):
    _saved_hf(tmp_path, _tiny_hf_config(hidden_act="quick_gelu"))
    message = (
        f"{tmp_path / 'config.json'}: image_config.hidden_act must be 'gelu' (the only one we build), got 'quick_gelu'"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        flava_model(pretrained=tmp_path, **TINY_FLAVA)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_flava_weights(flava_model(**TINY_FLAVA), tmp_path)


def test_loading_a_hf_directory_into_a_model_with_another_eps_raises(tmp_path):
    _saved_hf(tmp_path, _tiny_hf_config(layer_norm_eps=1e-5))
    model = flava_model(**TINY_FLAVA)  # eps 1e-12
    before = _state(model)

    with pytest.raises(
        ValueError, match=re.escape(f"{tmp_path / 'config.json'}'s layer_norm_eps 1e-05, got eps [1e-12]")
    ):
        load_flava_weights(model, tmp_path)
    _assert_unchanged(model, before)
    with pytest.raises(ValueError, match="layer_norm_eps 1e-05"):
        flava_model_for_classification(3, backbone=flava_model(**TINY_FLAVA), pretrained=tmp_path)


_HF_TOWERS = {"image": "image_model", "text": "text_model", "multimodal": "multimodal_model"}


def _dropout_sites(model: nn.Module) -> dict[str, float]:
    """The dropout probability at each place transformers' FLAVA drops, and after the MLP's activation,
    by tower: ours (a FLAVAModel) or transformers' FlavaModel, read from their modules."""
    sites = {}
    for tower, (ours, hf) in {
        "image": ("image_encoder", "image_model"),
        "text": ("text_encoder", "text_model"),
    }.items():
        part = getattr(model, ours if isinstance(model, FLAVAModel) else hf)
        sites[f"{tower}.embeddings"] = part.embeddings.dropout.p
    towers = {"image": "image_encoder", "text": "text_encoder", "multimodal": "multimodal_encoder"}
    for tower, ours in towers.items():
        if isinstance(model, FLAVAModel):
            layer = getattr(model, ours).encoder.layers[0]
            found = dict(attention=layer.attn.dropout, attention_output=layer.dropout.p, output=layer.dropout.p)
            found["mlp_hidden"] = layer.mlp.dropout.p
        else:
            layer = getattr(model, _HF_TOWERS[tower]).encoder.layer[0]
            found = dict(
                attention=layer.attention.attention.dropout.p, attention_output=layer.attention.output.dropout.p
            )
            found.update(output=layer.output.dropout.p, mlp_hidden=0.0)  # FlavaIntermediate: dense + activation only
        sites.update({f"{tower}.{k}": v for k, v in found.items()})
    return sites


def test_hf_config_dropouts_are_trained_with_where_transformers_drops(tmp_path):
    """config.json's hidden_dropout_prob and attention_probs_dropout_prob were not read: a model fine-tuned
    from a checkpoint that sets them trained without dropout. Now each place transformers' FlavaModel drops
    at in training mode drops alike, and the MLP's hidden activations (where it has none) not at all."""
    hf = _saved_hf(tmp_path, _tiny_hf_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2))
    expected = _dropout_sites(hf)
    assert set(expected.values()) == {0.0, 0.1, 0.2}
    loaded = flava_model(pretrained=tmp_path)
    classifier = flava_model_for_classification(3, pretrained=tmp_path, modality="text")
    for ours in (loaded, classifier.model, flava_model(pretrained=next(tmp_path.glob("*.safetensors")))):
        assert _dropout_sites(ours) == expected
    assert flava_kwargs_from_hf_config(json.loads((tmp_path / "config.json").read_text()))["dropout"] == 0.1
    images, ids, mask = _tiny_inputs()
    loaded.train()
    first, second = (loaded.encode_text(ids, text_attention_mask=mask) for _ in range(2))
    assert (first - second).abs().max() > 1e-3  # dropout is on in training
    _assert_matches_hf(loaded, hf, images, ids, mask)  # and off in eval mode: the same features


def test_a_dropout_given_overrides_the_hf_configs(tmp_path):
    """A training setting, as transformers' from_pretrained(..., hidden_dropout_prob=...): no clash."""
    _saved_hf(tmp_path, _tiny_hf_config(hidden_dropout_prob=0.1))
    sites = _dropout_sites(flava_model(pretrained=tmp_path, dropout=0.3, attention_dropout=0.05))
    assert sites["text.embeddings"] == sites["multimodal.output"] == 0.3
    assert sites["image.attention"] == 0.05 and sites["image.mlp_hidden"] == 0.0  # (config.json's placement)
    sites = _dropout_sites(flava_model(pretrained=tmp_path, mlp_dropout=0.25))
    assert sites["text.mlp_hidden"] == 0.25 and sites["text.output"] == 0.1


def test_hf_towers_with_different_dropouts_are_refused_naming_the_key(tmp_path):
    config = _tiny_hf_config()
    config.text_config.hidden_dropout_prob = 0.1
    _saved_hf(tmp_path, config)
    message = f"{tmp_path / 'config.json'}: the three encoders use different hidden_dropout_prob [0.0, 0.1]"
    with pytest.raises(ValueError, match="^" + re.escape(message) + "; flava_model takes one$"):
        flava_model(pretrained=tmp_path)


@pytest.mark.parametrize(
    "section, key", [("image_config", "qkv_bias"), ("text_config", "qkv_bias"), ("image_config", "mask_token")]
)
def test_hf_config_without_qkv_biases_or_mask_token_is_refused_naming_the_key(tmp_path, section, key):
    """Such a FlavaModel lacks tensors ours has: the refusal listed missing keys and asked to check the
    architecture arguments, none of which says so."""
    config = _tiny_hf_config()
    setattr(getattr(config, section), key, False)
    _saved_hf(tmp_path, config)
    message = f"{tmp_path / 'config.json'}: {section}.{key} must be True (the only one we build), got False"
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        flava_model(pretrained=tmp_path)


def test_an_image_its_patches_do_not_tile_is_refused_naming_the_builder_and_config_json(tmp_path):
    """PatchEmbedding refused it naming its own arguments: neither flava_model nor config.json was named."""
    config = _tiny_hf_config()
    config.image_config.image_size = 36  # patch_size 8
    _saved_hf(tmp_path, config)
    message = f"flava_model: image_size (from {tmp_path / 'config.json'}) must be a multiple of patch_size = 8, got 36"
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        flava_model(pretrained=tmp_path)
    with pytest.raises(
        ValueError, match=r"^flava_image_encoder: image_size must be a multiple of patch_size = 16, got 40$"
    ):
        flava_image_encoder(image_size=40, patch_size=16)


def test_mlp_dropout_defaults_to_dropout_and_is_checked():
    """Without a checkpoint, ``dropout`` still drops after the MLP's activation (torchmultimodal's placement)."""
    assert _dropout_sites(flava_model(**TINY_FLAVA, dropout=0.1))["image.mlp_hidden"] == 0.1
    sites = _dropout_sites(flava_model(**TINY_FLAVA, dropout=0.1, mlp_dropout=0.0))
    assert sites["multimodal.mlp_hidden"] == 0.0 and sites["multimodal.output"] == 0.1
    with pytest.raises(ValueError, match=r"^flava_model: mlp_dropout must be in \[0, 1\), got 1.0"):
        flava_model(**TINY_FLAVA, mlp_dropout=1.0)


_WIDTH_32 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
_TOWER_32 = dict(embed_dim=32, num_layers=2, num_heads=4, mlp_dim=48)  # _WIDTH_32 under our names
_WIDTH_32_KWARGS = {f"{t}_{k}": v for t in ("image", "text", "multimodal") for k, v in _TOWER_32.items()}
_WIDTH_32_KWARGS.update(image_size=32, patch_size=8, vocab_size=99, max_seq_len=40, projection_dim=20)


def _hf_pretraining_config(**encoders) -> FlavaConfig:
    """A FlavaForPreTraining config whose towers share one width (HF's MMM heads read the tower widths)."""
    return FlavaConfig(
        image_config=dict(_WIDTH_32, image_size=32, patch_size=8, vocab_size=16, **encoders),
        text_config=dict(_WIDTH_32, vocab_size=99, max_position_embeddings=40, **encoders),
        multimodal_config=dict(_WIDTH_32, **encoders),
        hidden_size=32,
        image_codebook_config=dict(hidden_size=8, vocab_size=16, num_blocks_per_group=1),
        projection_dim=20,
    )


def test_hf_pretraining_directory_gives_its_loss_settings(tmp_path):
    """FlavaConfig's loss weights, ce_ignore_index and global_backprop_contrastive (what FlavaForPreTraining
    computes its loss with) were not read: pretraining from such a checkpoint weighed every loss 1."""
    config = _hf_pretraining_config()
    config.mlm_weight, config.itm_weight, config.mmm_text_weight = 0.5, 0.0, 2.0
    config.ce_ignore_index, config.global_backprop_contrastive = -1, False
    _saved_hf(tmp_path, config, FlavaForPreTraining)

    ours = flava_model_for_pretraining(pretrained=tmp_path, build_codebook=False)
    assert ours.weights == LossWeights(mim=1.0, mlm=0.5, itm=0.0, global_contrastive=1.0, mmm_image=1.0, mmm_text=2.0)
    assert (ours.ignore_index, ours.contrastive_gather) == (-1, GatherGrad.LOCAL)
    # training settings: one given overrides the config's
    given = flava_model_for_pretraining(pretrained=tmp_path, build_codebook=False, mlm_weight=0.25, ignore_index=-7)
    assert (given.weights.mlm, given.weights.mmm_text, given.ignore_index) == (0.25, 2.0, -7)


@torch.no_grad()
def test_hf_pretraining_directory_gives_backbone_and_heads(tmp_path):
    hf = _saved_hf(tmp_path, _hf_pretraining_config(layer_norm_eps=1e-5), FlavaForPreTraining)

    ours = flava_model_for_pretraining(pretrained=tmp_path, build_codebook=False).eval()

    assert _norm_eps(ours) == {1e-5}
    assert ours.mim_head.decoder.out_features == 16
    _assert_matches_hf(ours.model, hf.flava, *_tiny_inputs())
    hidden = torch.randn(5, 32) * 0.05  # small states: the LayerNorm eps shows
    for name in ("mlm_head", "mim_head", "mmm_text_head", "mmm_image_head"):
        _close(getattr(ours, name)(hidden), getattr(hf, name)(hidden))


def test_hf_pretraining_directory_refuses_contradicting_heads_and_backbone(tmp_path):
    _saved_hf(tmp_path, _hf_pretraining_config(layer_norm_eps=1e-5), FlavaForPreTraining)
    config_file = str(tmp_path / "config.json")

    with pytest.raises(
        ValueError, match=re.escape(f"{config_file}, got (given, config) {{'head_norm_eps': (1e-12, 1e-05)}}")
    ):
        flava_model_for_pretraining(pretrained=tmp_path, build_codebook=False, head_norm_eps=1e-12)
    with pytest.raises(ValueError, match=re.escape(f"{config_file}'s layer_norm_eps 1e-05, got eps [1e-12]")):
        flava_model_for_pretraining(pretrained=tmp_path, build_codebook=False, backbone=flava_model(**_WIDTH_32_KWARGS))


# ---------------------------------------------------------------------------- 7. training wrappers


@pytest.mark.parametrize("wrap", ["ddp", "ddp_under_state_dict", "under_model"])
def test_wrapped_hf_checkpoint_loads(tmp_path, wrap):
    hf = FlavaModel(_tiny_hf_config()).eval()
    _perturb(hf)
    state = hf.state_dict()
    ddp = {"module." + k: v for k, v in state.items()}
    saved = {
        "ddp": ddp,
        "ddp_under_state_dict": {"state_dict": ddp, "epoch": 3},
        "under_model": {"model": state, "epoch": 3},
    }
    path = tmp_path / "wrapped.pt"
    torch.save(saved[wrap], path)

    _assert_matches_hf(flava_model(pretrained=path, **TINY_FLAVA), hf, *_tiny_inputs())


def _tmm_pretraining() -> nn.Module:
    """torchmultimodal's FLAVAForPreTraining, one width for all towers, perturbed."""
    sizes = {f"{t}_{k}": v for t in ("image", "text", "multimodal") for k, v in _WIDTH_32.items()}
    backbone = tmm_flava_model(
        **sizes, image_size=32, patch_size=8, vocab_size=99, max_position_embeddings=40, text_and_image_proj_size=20
    )
    codebook = DalleVAEEncoder(image_size=32, pretrained=False)
    codebook.encoder = DalleEncoder(n_hid=8, n_blk_per_group=1, vocab_size=16)
    loss = FLAVAPretrainingLoss(logit_scale=1.5, hidden_size=32, text_vocab_size=99, image_vocab_size=16)
    tmm = TmmFLAVAForPreTraining(model=backbone, image_codebook=codebook, loss=loss).eval()
    _perturb(tmm)
    return tmm


def _tmm_heads(tmm: nn.Module) -> dict[str, nn.Module]:
    loss = tmm.loss
    return dict(
        mlm_head=loss.mlm_loss.cls,
        mim_head=loss.mim_loss.cls,
        mmm_text_head=loss.mmm_loss.mlm.cls,
        mmm_image_head=loss.mmm_loss.mim.cls,
    )


@torch.no_grad()
def test_tmm_pretraining_heads_take_its_layer_norm_eps(tmp_path):
    tmm = _tmm_pretraining()
    torch.save(tmm.state_dict(), tmp_path / "tmm.pt")
    hidden = torch.randn(5, 32) * 0.05  # small states: the LayerNorm eps shows

    ours = flava_model_for_pretraining(
        backbone=flava_model(**_WIDTH_32_KWARGS),
        pretrained=tmp_path / "tmm.pt",
        build_codebook=False,
        image_vocab_size=16,
    ).eval()
    # A value given is kept (and then differs from torchmultimodal's heads).
    given = flava_model_for_pretraining(
        backbone=flava_model(**_WIDTH_32_KWARGS),
        pretrained=tmp_path / "tmm.pt",
        build_codebook=False,
        image_vocab_size=16,
        head_norm_eps=1e-12,
    ).eval()

    for name, head in _tmm_heads(tmm).items():
        assert getattr(ours, name).norm.eps == 1e-5
        assert_close(getattr(ours, name)(hidden), head(hidden), atol=1e-6, rtol=0)
        assert getattr(given, name).norm.eps == 1e-12
        assert (getattr(given, name)(hidden) - head(hidden)).abs().max() > 1e-3
    # A config.json beside the file (a Hugging Face directory it was copied into) is not the file's.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "flava", "text_config": {"layer_norm_eps": 1e-12}}))
    beside = flava_model_for_pretraining(
        backbone=flava_model(**_WIDTH_32_KWARGS),
        pretrained=tmp_path / "tmm.pt",
        build_codebook=False,
        image_vocab_size=16,
    )
    assert all(getattr(beside, name).norm.eps == 1e-5 for name in _tmm_heads(tmm))


def test_flava_model_arguments_are_what_flava_model_builds(tmp_path):
    from torchflava.models.flava import flava_model_arguments

    _saved_hf(tmp_path / "hf", _tiny_hf_config(layer_norm_eps=1e-5))
    arguments = flava_model_arguments(tmp_path / "hf", **TINY_FLAVA)  # the recipe's export records these
    assert arguments["norm_eps"] == 1e-5 and _norm_eps(flava_model(pretrained=tmp_path / "hf", **TINY_FLAVA)) == {1e-5}
    assert flava_model_arguments(None, **TINY_FLAVA) == {**flava_model_arguments(), **TINY_FLAVA}
    with pytest.raises(ValueError, match=r"expected arguments of flava_model, got \['hidden'\]"):
        flava_model_arguments(hidden=3)
    # Our own weights file in a directory that also holds a FLAVA config.json keeps its own arguments.
    ours = flava_model(**TINY_FLAVA)
    save_state_dict(ours.state_dict(), tmp_path / "hf" / "ours.safetensors")
    (tmp_path / "hf" / "model.safetensors").unlink()
    reloaded = flava_model(pretrained=tmp_path / "hf" / "ours.safetensors", **TINY_FLAVA)
    assert _norm_eps(reloaded) == _norm_eps(ours) == {TINY_FLAVA.get("norm_eps", 1e-12)}


@torch.no_grad()
def test_lightning_wrapped_tmm_pretraining_checkpoint_loads(tmp_path):
    tmm = _tmm_pretraining()
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in tmm.state_dict().items()}, "global_step": 10}, path)
    hidden = torch.randn(5, 32) * 0.05

    ours = flava_model_for_pretraining(
        backbone=flava_model(**_WIDTH_32_KWARGS), pretrained=path, build_codebook=False, image_vocab_size=16
    )
    backbone = flava_model(pretrained=path, **_WIDTH_32_KWARGS).eval()

    for name, head in _tmm_heads(tmm).items():
        assert_close(getattr(ours.eval(), name)(hidden), head(hidden), atol=1e-6, rtol=0)
    expected = tmm.loss.contrastive_loss.logit_scale.item()  # 1.5, perturbed
    assert ours.model.logit_scale.item() == expected
    assert backbone.logit_scale.item() == expected
    images, ids, mask = _tiny_inputs()
    ref = tmm.model(image=images, text=ids, required_embedding="mm", skip_unmasked_mm_encoder=False)
    for model in (ours.model.eval(), backbone):
        out = model(images, ids, text_attention_mask=mask)
        _close(out.image_embeddings, ref.image.last_hidden_state)
        _close(out.text_embeddings, ref.text.last_hidden_state)
        _close(out.text_features, F.normalize(ref.projected_text_embeddings, dim=-1))


# ------------------------------------------------------------------- 8. config.json fields and types


_FIELDS = [  # (section, field, our argument)
    ("image_config", "hidden_size", "image_embed_dim"),
    ("image_config", "patch_size", "patch_size"),
    ("text_config", "vocab_size", "vocab_size"),
    ("text_config", "max_position_embeddings", "max_seq_len"),
    ("text_config", "pad_token_id", "pad_token_id"),
    ("multimodal_config", "num_hidden_layers", "multimodal_num_layers"),
    ("multimodal_config", "intermediate_size", "multimodal_mlp_dim"),
    ("", "projection_dim", "projection_dim"),
]


@pytest.mark.parametrize("section, field, ours", _FIELDS)
def test_kwargs_from_hf_config_fill_absent_fields_as_transformers(section, field, ours):
    config = _tiny_hf_config(layer_norm_eps=1e-5).to_dict()
    del (config[section] if section else config)[field]
    filled = FlavaConfig(**config)  # transformers' own reading of the same config.json
    expected = getattr(getattr(filled, section) if section else filled, field)

    kwargs = flava_kwargs_from_hf_config(config)

    assert kwargs[ours] == expected
    assert kwargs == flava_kwargs_from_hf_config(filled.to_dict())
    assert kwargs["norm_eps"] == 1e-5


def test_kwargs_from_an_empty_hf_config_are_flava_full():
    kwargs = flava_kwargs_from_hf_config({})
    assert kwargs == flava_kwargs_from_hf_config(FlavaConfig().to_dict())
    defaults = {k: p.default for k, p in inspect.signature(flava_model).parameters.items()}
    defaults["mlp_dropout"] = 0.0  # (transformers' FLAVA drops nothing after the MLP's activation)
    assert kwargs == {k: pytest.approx(defaults[k], abs=1e-4) for k in kwargs}  # logit scale: 2.6592 ~ log(1/0.07)


@pytest.mark.parametrize(
    "section, field, value, message",
    [
        ("image_config", "hidden_size", "768", "config image_config.hidden_size must be an int, got str '768'"),
        ("text_config", "layer_norm_eps", True, "config text_config.layer_norm_eps must be a number, got bool True"),
        ("multimodal_config", "use_cls_token", "yes", "config multimodal_config.use_cls_token must be a bool, got str"),
        ("text_config", "hidden_act", None, "config text_config.hidden_act must be a string, got NoneType None"),
        ("", "projection_dim", 7.5, "config projection_dim must be an int, got float 7.5"),
    ],
)
def test_kwargs_from_hf_config_wrong_types_name_the_field(section, field, value, message):
    config = _tiny_hf_config().to_dict()
    (config[section] if section else config)[field] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        flava_kwargs_from_hf_config(config)


def test_kwargs_from_hf_config_refuse_another_model_type():
    with pytest.raises(ValueError, match="expected model_type 'flava', got 'clip'"):
        flava_kwargs_from_hf_config({"model_type": "clip", "text_config": {}, "vision_config": {}})


def test_a_legacy_config_dict_replaces_its_sub_config_as_in_transformers():
    config = {
        "text_config": {"layer_norm_eps": 1e-6, "num_hidden_layers": 3},
        "text_config_dict": {"num_hidden_layers": 6},
    }
    reference = FlavaConfig(**json.loads(json.dumps(config))).text_config
    assert (reference.num_hidden_layers, reference.layer_norm_eps) == (6, 1e-12)  # the _dict's fields, else defaults
    kwargs = flava_kwargs_from_hf_config(config)
    assert (kwargs["text_num_layers"], kwargs["norm_eps"]) == (6, 1e-12)


def test_flava_model_checks_its_arguments_before_reading_the_tensors(tmp_path, monkeypatch):
    from torchflava.models.flava import builders

    _saved_hf(tmp_path, _tiny_hf_config())
    read = []
    monkeypatch.setattr(builders, "load_state_dict", lambda path: read.append(path))
    with pytest.raises(ValueError, match=r"flava_model: expected arguments that match .*'image_num_heads': \(5, 4\)"):
        flava_model(pretrained=tmp_path, **{**TINY_FLAVA, "image_num_heads": 5})
    assert read == []


def test_convert_to_hf_and_back_refuse_what_is_not_a_flava_state_dict():
    """A fused q/k/v of 95 or 2 rows was split silently (unequal parts; value dropped); other bad input
    failed with AttributeError or KeyError from inside."""
    from torchflava.models.flava.convert_weights import convert_to_hf, convert_to_torchflava

    model = torch.nn.Linear(2, 2)  # (the types are checked before the model is read)
    state = {"image_encoder.encoder.layers.0.attn.qkv.weight": torch.zeros(95, 32)}
    with pytest.raises(ValueError, match=r"must hold q, k and v \(rows a multiple of 3\), got \(95, 32\)"):
        convert_to_hf(state)
    with pytest.raises(ValueError, match=r"'foo.bar' is not a key of a FLAVAModel state dict"):
        convert_to_hf({"foo.bar": torch.zeros(1)})
    with pytest.raises(TypeError, match="state_dict must map str names to tensors"):
        convert_to_hf({"foo.bar": 1.0})
    with pytest.raises(TypeError, match="state_dict must be a mapping of names to tensors, got list"):
        convert_to_torchflava([("a", torch.zeros(1))], model)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        convert_to_torchflava({"a": torch.zeros(1)}, {"a": torch.zeros(1)})


# ------------------------------------------------------------- 7. a torchflava export (the pretraining recipe's)


EXPORT_FLAVA = dict(TINY_FLAVA, norm_eps=1e-6, type_vocab_size=3, pad_token_id=1)  # none of them the default


def _export_flava(run: Path) -> nn.Module:
    """``run``/model/ as examples/flava/train.py writes it: the whole pretraining model, heads included, in
    flava_pretraining.safetensors (by export_model), beside backbone_config.json (flava_model's arguments)."""
    from torchflava.models.flava import flava_model_arguments
    from torchflava.training.checkpointing import export_model

    torch.manual_seed(0)
    pretraining = flava_model_for_pretraining(
        backbone=flava_model(**EXPORT_FLAVA), build_codebook=False, image_vocab_size=64
    )
    _perturb(pretraining)
    (run / "model").mkdir(parents=True)
    export_model(pretraining, run / "model" / "flava_pretraining.safetensors")
    (run / "model" / "backbone_config.json").write_text(json.dumps(flava_model_arguments(**EXPORT_FLAVA)))
    return pretraining.eval()


def test_an_export_rebuilds_from_its_directory_or_weights_file_with_no_size_arguments(tmp_path):
    """Found by a new-user review: flava_model(pretrained=<run>/model) found no model.safetensors, and its
    weights file ignored the backbone_config.json beside it (FLAVA-full's sizes were built and refused)."""
    source = _export_flava(tmp_path)
    images, (text, mask) = torch.randn(2, 3, 32, 32), padded_text(2, 8, TINY_FLAVA["vocab_size"], [8, 5])
    with torch.no_grad():
        expected = source.model.encode_image(images), source.model.encode_text(text, mask)
    for pretrained in (tmp_path / "model", tmp_path, tmp_path / "model" / "flava_pretraining.safetensors"):
        loaded = flava_model(pretrained=pretrained).eval()
        assert _norm_eps(loaded) == {1e-6}
        with torch.no_grad():
            assert torch.equal(loaded.encode_image(images), expected[0])
            assert torch.equal(loaded.encode_text(text, mask), expected[1])
    heads = flava_model_for_pretraining(pretrained=tmp_path / "model", build_codebook=False)  # its MIM classes: 64
    assert heads.mim_head.decoder.out_features == 64
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in heads.state_dict().items())
    with pytest.raises(
        ValueError, match=r"backbone_config.json, got \(given, config\) \{'image_num_layers': \(3, 2\)\}$"
    ):
        flava_model(pretrained=tmp_path / "model", image_num_layers=3)
    config = json.loads((tmp_path / "model" / "backbone_config.json").read_text())
    (tmp_path / "model" / "backbone_config.json").write_text(json.dumps({**config, "hidden": 3}))
    with pytest.raises(ValueError, match=r"backbone_config.json: expected arguments of flava_model, got \['hidden'\]$"):
        flava_model(pretrained=tmp_path / "model")


def test_a_strict_load_names_the_arguments_the_shapes_disagree_with(tmp_path):
    """Found by a new-user review: the error listed up to 50 keys on one huge line and named no argument."""
    state = convert_to_hf(flava_model(**TINY_FLAVA).state_dict())
    with pytest.raises(ValueError) as err:
        load_flava_weights(flava_model(**dict(TINY_FLAVA, image_embed_dim=48, image_mlp_dim=64)), state)
    assert str(err.value) == (
        "checkpoint (hf layout) does not match the model: missing 0 key(s) [], unexpected 0 key(s) [], wrong 35 "
        "['image_encoder.embeddings.cls_token [1, 1, 32] for [1, 1, 48]', "
        "'image_encoder.embeddings.pos_embed [1, 17, 32] for [1, 17, 48]', "
        "'image_encoder.embeddings.mask_token [1, 1, 32] for [1, 1, 48]']. "
        "Arguments that disagree with the checkpoint's shapes: image_embed_dim=48 (checkpoint: 32), "
        "image_mlp_dim=64 (checkpoint: 48)."
    )
    with pytest.raises(ValueError) as err:
        load_flava_weights(flava_model(**dict(TINY_FLAVA, multimodal_num_layers=1)), state)
    assert str(err.value) == (
        "checkpoint (hf layout) does not match the model: missing 0 key(s) [], unexpected 16 key(s) "
        "['multimodal_model.encoder.layer.1.attention.attention.key.bias', "
        "'multimodal_model.encoder.layer.1.attention.attention.key.weight', "
        "'multimodal_model.encoder.layer.1.attention.attention.query.bias', "
        "'multimodal_model.encoder.layer.1.attention.attention.query.weight', "
        "'multimodal_model.encoder.layer.1.attention.attention.value.bias']. "
        "Arguments that disagree with the checkpoint's shapes: multimodal_num_layers=1 (checkpoint: 2)."
    )
