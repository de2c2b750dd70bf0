"""Image-codebook conversion: parity with Hugging Face's FlavaImageCodebook and torchmultimodal's
DalleVAEEncoder, checkpoints nested in pretraining models, layout detection, strictness.

Reference weights are redrawn as N(0, 4 / fan_in) weights and N(0, 0.05^2) biases before saving, so
that every tensor is non-trivial. With random weights the logits of every cell share one large
component, which would make every token the same; the head's bias is set to cancel it on the test
images (``_center_head``) so that the tokens follow each cell's content (15-25 distinct tokens out
of 48 cells) and an argmax mismatch would show. The inputs are mosaics of random colours in 8x8
cells, so that neighbouring token cells see different content.
"""

import math
import re
from typing import Optional

import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torchmultimodal.models.flava.model import DalleEncoder as TmmDalleEncoder
from torchmultimodal.models.flava.model import DalleVAEEncoder
from transformers import FlavaConfig, FlavaForPreTraining, FlavaImageCodebook, FlavaImageCodebookConfig

from torchflava.models.flava.convert_codebook import (
    convert_codebook_to_torchflava,
    detect_codebook_layout,
    load_codebook_weights,
)
from torchflava.modules.codebook import dalle_encoder, map_pixels
from torchflava.utils.checkpoint import save_state_dict

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecations

ATOL = 1e-4
HIDDEN, VOCAB = 16, 48


# ---------------------------------------------------------------------------------------------- helpers


def _redraw(module: nn.Module, gain: float = 2.0) -> nn.Module:
    """Conv weights N(0, gain^2 / fan_in), biases N(0, 0.05^2): non-trivial, varied tokens."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 4:
                p.copy_(torch.randn_like(p) * gain / math.sqrt(p[0].numel()))
            else:
                p.copy_(torch.randn_like(p) * 0.05)
    return module.eval()


def _center_head(blocks: nn.Sequential, pixels: torch.Tensor) -> None:
    """Set the output conv's bias to minus the logits' mean over ``pixels``' cells (plus noise).

    Args:
        blocks (nn.Sequential): a reference encoder's ``blocks`` (Hugging Face or torchmultimodal),
            whose last entry ``output`` is ReLU + ``conv``.
        pixels (torch.Tensor): (B, 3, H, W) test images.
    """
    conv = blocks.output.conv
    weight, bias = (conv.weight, conv.bias) if isinstance(conv, nn.Conv2d) else (conv.w, conv.b)
    with torch.no_grad():
        mean_features = torch.relu(blocks[:-1](pixels)).mean(dim=(0, 2, 3))  # (C,)
        bias.copy_(-weight.flatten(1) @ mean_features + 0.05 * torch.randn_like(bias))


def _pixels(batch: int = 2, height: int = 32, width: int = 48) -> torch.Tensor:
    cells = torch.rand(batch, 3, height // 8, width // 8)
    return map_pixels(F.interpolate(cells, scale_factor=8, mode="nearest"))


def _hf_codebook(blocks_per_group: int = 1, pixels: Optional[torch.Tensor] = None) -> FlavaImageCodebook:
    """A tiny transformers FlavaImageCodebook, redrawn (and its head centred on ``pixels`` if given)."""
    config = FlavaImageCodebookConfig(
        hidden_size=HIDDEN, num_groups=4, num_blocks_per_group=blocks_per_group, vocab_size=VOCAB
    )
    hf = _redraw(FlavaImageCodebook(config))
    if pixels is not None:
        _center_head(hf.blocks, pixels)
    return hf


def _tmm_vae(blocks_per_group: int = 2, pixels: Optional[torch.Tensor] = None) -> DalleVAEEncoder:
    """torchmultimodal's DalleVAEEncoder with a tiny DalleEncoder in place of the published one."""
    with torch.device("meta"):  # skip materialising the published encoder that gets replaced
        vae = DalleVAEEncoder(image_size=32, pretrained=False)
    vae.encoder = TmmDalleEncoder(group_count=4, n_hid=HIDDEN, n_blk_per_group=blocks_per_group, vocab_size=VOCAB)
    _redraw(vae)
    if pixels is not None:
        _center_head(vae.encoder.blocks, pixels)
    return vae


def _ours(blocks_per_group: int = 1, **kwargs):
    return dalle_encoder(hidden_dim=HIDDEN, blocks_per_group=blocks_per_group, vocab_size=VOCAB, **kwargs)


def _assert_parity(ours, ref_logits: torch.Tensor, ref_indices: torch.Tensor, pixels: torch.Tensor) -> None:
    """Logits within ATOL, tokens identical, and the tokens are not all one value."""
    logits = ours(pixels)
    assert logits.shape == ref_logits.shape
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)
    tokens = ours.tokens(pixels)
    assert tokens.shape == (pixels.shape[0], ref_indices[0].numel())
    assert torch.equal(tokens, ref_indices.flatten(1))
    assert tokens.unique().numel() >= 3


# ------------------------------------------------------------------------------------------ Hugging Face


@pytest.mark.parametrize("blocks_per_group", [1, 2])
def test_hf_codebook_parity_through_save_pretrained(tmp_path, blocks_per_group):
    pixels = _pixels()
    hf = _hf_codebook(blocks_per_group, pixels)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    ours = _ours(blocks_per_group)
    load_codebook_weights(ours, tmp_path)
    with torch.no_grad():
        ref_logits, ref_indices = hf(pixels), hf.get_codebook_indices(pixels)
    assert ref_indices.shape == (2, 4, 6)
    _assert_parity(ours, ref_logits, ref_indices, pixels)
    assert all(not p.requires_grad for p in ours.parameters())  # loading keeps the encoder frozen


def test_hf_flava_for_pretraining_checkpoint(tmp_path):
    """The codebook inside a FlavaForPreTraining checkpoint (``image_codebook.*``); the rest is ignored."""
    config = FlavaConfig(
        image_config=dict(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=24,
            image_size=16,
            patch_size=8,
            vocab_size=VOCAB,
        ),
        text_config=dict(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=24,
            vocab_size=50,
            max_position_embeddings=16,
        ),
        multimodal_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24),
        image_codebook_config=dict(hidden_size=HIDDEN, num_blocks_per_group=2, vocab_size=VOCAB),
        projection_dim=8,
    )
    hf = FlavaForPreTraining(config)
    pixels = _pixels()
    _redraw(hf.image_codebook)
    _center_head(hf.image_codebook.blocks, pixels)
    hf.save_pretrained(tmp_path)
    ours = _ours(blocks_per_group=2)
    load_codebook_weights(ours, tmp_path / "model.safetensors")
    with torch.no_grad():
        ref_logits, ref_indices = hf.image_codebook(pixels), hf.image_codebook.get_codebook_indices(pixels)
    _assert_parity(ours, ref_logits, ref_indices, pixels)


@pytest.mark.slow
def test_hf_codebook_parity_full_size():
    """The published size (53.8M parameters, vocabulary 8192) on one 112 px image."""
    hf = _redraw(FlavaImageCodebook(FlavaImageCodebookConfig()), gain=1.0)
    ours = dalle_encoder()
    state = {f"image_codebook.{k}": v for k, v in hf.state_dict().items()}
    ours.load_state_dict(convert_codebook_to_torchflava(state, ours))
    pixels = map_pixels(F.interpolate(torch.rand(1, 3, 14, 14), scale_factor=8, mode="nearest"))
    with torch.no_grad():
        ref_logits, ref_indices = hf(pixels), hf.get_codebook_indices(pixels)
        logits = ours(pixels)
    assert logits.shape == ref_logits.shape == (1, 8192, 14, 14)
    scale = float(ref_logits.abs().max())
    assert float((logits - ref_logits).abs().max()) <= 1e-3 * scale
    tokens = ours.tokens(pixels)
    assert tokens.shape == (1, 196)
    assert torch.equal(tokens, ref_indices.flatten(1))
    assert tokens.unique().numel() >= 5


# ------------------------------------------------------------------------------------- torchmultimodal


@pytest.mark.parametrize("prefix", ["", "image_codebook.", "model.image_codebook."])
def test_tmm_dalle_vae_encoder_parity(tmp_path, prefix):
    """DalleVAEEncoder (``encoder.*``), alone or inside FLAVAForPreTraining / a wrapper of it."""
    pixels = _pixels()
    vae = _tmm_vae(blocks_per_group=2, pixels=pixels)
    state = {f"{prefix}{k}": v for k, v in vae.state_dict().items()}
    assert f"{prefix}encoder.blocks.group_2.block_1.id_path.w" in state  # raw w/b parameters
    if prefix:  # the backbone and loss beside the codebook are ignored
        state[prefix.replace("image_codebook.", "model.image_encoder.layernorm.weight")] = torch.ones(4)
        state[prefix.replace("image_codebook.", "loss.mim_loss.weight")] = torch.ones(4)
    path = tmp_path / "checkpoint.pt"
    torch.save(state, path)
    ours = _ours(blocks_per_group=2)
    load_codebook_weights(ours, path)
    with torch.no_grad():
        ref_logits, ref_indices = vae.encoder(pixels), vae.get_codebook_indices(pixels)
        assert torch.equal(vae(pixels), ref_indices)
    _assert_parity(ours, ref_logits, ref_indices, pixels)


def test_openai_dalle_encoder_state_dict(tmp_path):
    """A bare DalleEncoder state dict (OpenAI's encoder keys, ``blocks.*.w``) converts without a prefix."""
    pixels = _pixels()
    encoder = _redraw(TmmDalleEncoder(n_hid=HIDDEN, n_blk_per_group=1, vocab_size=VOCAB))
    _center_head(encoder.blocks, pixels)
    assert detect_codebook_layout(encoder.state_dict()) == ("tmm", "")
    ours = _ours()
    ours.load_state_dict(convert_codebook_to_torchflava(encoder.state_dict(), ours))
    with torch.no_grad():
        ref_logits = encoder(pixels)
    _assert_parity(ours, ref_logits, ref_logits.argmax(dim=1), pixels)


# ----------------------------------------------------------------------------------------- torchflava


@pytest.mark.parametrize("prefix", ["", "codebook."])
def test_torchflava_layout_round_trip(tmp_path, prefix):
    source = _ours(blocks_per_group=2)
    _redraw(source)
    path = tmp_path / "ours.safetensors"
    save_state_dict({f"{prefix}{k}": v for k, v in source.state_dict().items()}, path)
    target = _ours(blocks_per_group=2)
    load_codebook_weights(target, path)
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), name
    pixels = _pixels()
    assert torch.equal(target.tokens(pixels), source.tokens(pixels))


# ----------------------------------------------------------------------------------- layout detection


@pytest.mark.parametrize(
    "make, prefix, expected",
    [
        ("hf", "", ("hf", "")),
        ("hf", "image_codebook.", ("hf", "image_codebook.")),
        ("tmm", "", ("tmm", "encoder.")),
        ("tmm", "image_codebook.", ("tmm", "image_codebook.encoder.")),
        ("tmm", "model.image_codebook.", ("tmm", "model.image_codebook.encoder.")),
        ("ours", "", ("torchflava", "")),
        ("ours", "codebook.", ("torchflava", "codebook.")),
    ],
)
def test_detect_codebook_layout(make, prefix, expected):
    with torch.device("meta"):
        model = {"hf": _hf_codebook, "tmm": _tmm_vae, "ours": _ours}[make]()
    state = {f"{prefix}{k}": v for k, v in model.state_dict().items()}
    assert detect_codebook_layout(state) == expected


def test_no_codebook_raises():
    with pytest.raises(ValueError, match=r"found no \(looked for keys ending with"):
        detect_codebook_layout({"image_model.embeddings.cls_token": torch.zeros(1)})
    with pytest.raises(ValueError, match="found no"):
        convert_codebook_to_torchflava({"x.weight": torch.zeros(1)}, _ours())


def test_two_codebooks_raise():
    hf = _hf_codebook().state_dict()
    state = {**{f"a.{k}": v for k, v in hf.items()}, **{f"b.{k}": v for k, v in hf.items()}}
    with pytest.raises(ValueError, match=re.escape("several hf codebooks, under prefixes ['a.', 'b.']")):
        detect_codebook_layout(state)


def test_codebooks_in_two_layouts_raise():
    state = {**_hf_codebook().state_dict(), **{f"c.{k}": v for k, v in _ours().state_dict().items()}}
    with pytest.raises(ValueError, match=re.escape("found 2 ([('torchflava', 'c.'), ('hf', '')])")):
        detect_codebook_layout(state)


def test_unknown_layout_raises():
    message = "layout must be one of ('torchflava', 'hf', 'tmm'), got 'openai'"
    with pytest.raises(ValueError, match=re.escape(message)):
        convert_codebook_to_torchflava(_hf_codebook().state_dict(), _ours(), layout="openai")


def test_forced_layout_that_does_not_match_raises():
    with pytest.raises(ValueError, match=re.escape("holds no tmm codebook (no key ending with 'blocks.input.w')")):
        convert_codebook_to_torchflava(_hf_codebook().state_dict(), _ours(), layout="tmm")


def test_forced_layout_converts():
    ours = _ours()
    converted = convert_codebook_to_torchflava(_hf_codebook().state_dict(), ours, layout="hf")
    assert list(converted) == list(ours.state_dict())


# ----------------------------------------------------------------------------------------- strictness


@pytest.mark.parametrize(
    "layout, removed, ours_key, stem",
    [
        ("hf", "blocks.group_3.group.block_1.id_path.bias", "groups.2.0.skip.bias", "blocks.input.weight"),
        (
            "tmm",
            "encoder.blocks.group_4.block_1.res_path.conv_2.w",
            "groups.3.0.conv2.weight",
            "encoder.blocks.input.w",
        ),
    ],
)
def test_missing_key_raises_and_names_it(tmp_path, layout, removed, ours_key, stem):
    state = (_hf_codebook() if layout == "hf" else _tmm_vae(blocks_per_group=1)).state_dict()
    del state[removed]
    path = tmp_path / "checkpoint.pt"
    torch.save(state, path)
    ours = _ours()
    with pytest.raises(ValueError, match=re.escape(f"missing 1 key(s) ['{removed}'], unexpected 0 key(s) []")):
        load_codebook_weights(ours, path)
    # Not strict: the other tensors load, the missing one keeps its value.
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    converted = convert_codebook_to_torchflava(state, ours, strict=False)
    assert set(before) - set(converted) == {ours_key}
    load_codebook_weights(ours, path, strict=False)
    after = ours.state_dict()
    assert torch.equal(after[ours_key], before[ours_key])
    assert torch.equal(after["stem.weight"], state[stem])
    assert not torch.equal(after["stem.weight"], before["stem.weight"])


def test_unexpected_key_raises_and_names_it():
    state = _hf_codebook().state_dict()
    state["blocks.group_1.group.block_1.extra.weight"] = torch.zeros(3)
    message = "missing 0 key(s) [], unexpected 1 key(s) ['blocks.group_1.group.block_1.extra.weight']"
    with pytest.raises(ValueError, match=re.escape(message)):
        convert_codebook_to_torchflava(state, _ours())
    assert len(convert_codebook_to_torchflava(state, _ours(), strict=False)) == len(_ours().state_dict())


def test_unexpected_key_under_the_prefix_raises():
    state = {f"image_codebook.{k}": v for k, v in _hf_codebook().state_dict().items()}
    state["image_codebook.blocks.output.norm.weight"] = torch.zeros(3)
    state["flava.image_model.layernorm.weight"] = torch.zeros(3)  # outside the prefix: ignored
    with pytest.raises(ValueError, match=re.escape("unexpected 1 key(s) ['image_codebook.blocks.output.norm.weight']")):
        convert_codebook_to_torchflava(state, _ours())


def test_more_blocks_per_group_are_unexpected():
    state = _hf_codebook(blocks_per_group=2).state_dict()
    message = "missing 0 key(s) [], unexpected 32 key(s) ['blocks.group_1.group.block_2."
    with pytest.raises(ValueError, match=re.escape(message)):
        convert_codebook_to_torchflava(state, _ours(blocks_per_group=1))


def test_fewer_blocks_per_group_are_missing():
    state = _tmm_vae(blocks_per_group=1).state_dict()
    message = "missing 32 key(s) ['encoder.blocks.group_1.block_2.res_path.conv_1.w'"
    with pytest.raises(ValueError, match=re.escape(message)):
        convert_codebook_to_torchflava(state, _ours(blocks_per_group=2))


def test_different_sizes_raise_on_shapes():
    state = _hf_codebook().state_dict()
    message = f"head.weight: checkpoint ({VOCAB}, 128, 1, 1) vs model (64, 128, 1, 1)"
    with pytest.raises(ValueError, match=re.escape(message)):
        convert_codebook_to_torchflava(state, dalle_encoder(hidden_dim=HIDDEN, blocks_per_group=1, vocab_size=64))
    with pytest.raises(ValueError, match=re.escape("stem.weight: checkpoint (16, 3, 7, 7) vs model (32, 3, 7, 7)")):
        convert_codebook_to_torchflava(state, dalle_encoder(hidden_dim=32, blocks_per_group=1, vocab_size=VOCAB))
