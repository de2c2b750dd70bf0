"""FLAVAModel built through flava_model: outputs, features, padding trimming, gradients, init and input checks."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from tests.helpers import TINY_FLAVA, padded_text
from torchflava.models import FLAVAModel, FLAVAOutput, flava_model
from torchflava.models.flava.builders import flava_image_encoder, flava_multimodal_encoder, flava_text_encoder
from torchflava.modules.layers import pack_linears

T = TINY_FLAVA
B, L = 2, 7
IMAGE_TOKENS = 1 + (T["image_size"] // T["patch_size"]) ** 2  # 17
FIELDS = FLAVAOutput._fields


@pytest.fixture
def model() -> FLAVAModel:
    return flava_model(**T).eval()


def images(batch: int = B) -> torch.Tensor:
    return torch.randn(batch, 3, T["image_size"], T["image_size"])


def text(batch: int = B, length: int = L, lengths=None):
    return padded_text(batch, length, T["vocab_size"], lengths or [length] * batch)


def present(out: FLAVAOutput) -> set[str]:
    return {name for name in FIELDS if getattr(out, name) is not None}


def test_image_only(model):
    out = model(image=images())
    assert present(out) == {"image_embeddings", "image_features", "image_pooled"}
    assert out.image_embeddings.shape == (B, IMAGE_TOKENS, T["image_embed_dim"])
    assert out.image_features.shape == (B, T["projection_dim"])
    assert out.image_pooled.shape == (B, T["image_embed_dim"])


def test_text_only(model):
    ids, mask = text(lengths=[4, 7])
    out = model(text=ids, text_attention_mask=mask)
    assert present(out) == {"text_embeddings", "text_features", "text_pooled"}
    assert out.text_embeddings.shape == (B, L, T["text_embed_dim"])
    assert out.text_features.shape == (B, T["projection_dim"])
    assert out.text_pooled.shape == (B, T["text_embed_dim"])


def test_image_and_text(model):
    pixels = images()
    ids, mask = text(lengths=[4, 7])
    out = model(pixels, ids, text_attention_mask=mask)
    hidden = {"image_hidden_states", "text_hidden_states", "multimodal_hidden_states"}
    assert present(out) == set(FIELDS) - hidden
    assert out.multimodal_embeddings.shape == (B, 1 + IMAGE_TOKENS + L, T["multimodal_embed_dim"])
    assert out.multimodal_pooled.shape == (B, T["multimodal_embed_dim"])
    # The unimodal parts do not depend on the other modality.
    assert_close(out.image_embeddings, model(image=pixels).image_embeddings, atol=0, rtol=0)
    assert_close(out.text_features, model(text=ids, text_attention_mask=mask).text_features, atol=0, rtol=0)
    # The multimodal encoder sees the text padding: changing padded ids leaves the fused CLS unchanged.
    changed = ids.clone()
    changed[0, 4:] = torch.arange(1, 4)
    fused = model(pixels, changed, text_attention_mask=mask).multimodal_embeddings
    assert_close(fused[:, 0], out.multimodal_embeddings[:, 0])


def test_skip_multimodal(model):
    pixels, (ids, _) = images(), text()
    out = model(pixels, ids, skip_multimodal=True)
    assert present(out) == {
        "image_embeddings",
        "text_embeddings",
        "image_features",
        "text_features",
        "image_pooled",
        "text_pooled",
    }
    full = model(pixels, ids)
    assert_close(out.image_features, full.image_features, atol=0, rtol=0)
    assert_close(out.text_features, full.text_features, atol=0, rtol=0)


def test_features_are_unit_norm(model):
    out = model(images(), text(lengths=[3, 7])[0])
    for features in (out.image_features, out.text_features):
        assert_close(features.norm(dim=-1), torch.ones(B))
    assert not torch.allclose(out.image_features[0], out.image_features[1], atol=1e-4)


def test_encode_image_and_encode_text_equal_forward_features(model):
    pixels = images()
    ids, mask = text(lengths=[5, 7])
    out = model(pixels, ids, text_attention_mask=mask)
    assert_close(model.encode_image(pixels), out.image_features)
    assert_close(model.encode_text(ids, mask), out.text_features)
    unnormalised = model.encode_image(pixels, normalize=False)
    assert_close(unnormalised, model.image_projection(out.image_embeddings[:, 0]))
    assert not torch.allclose(unnormalised.norm(dim=-1), torch.ones(B), atol=1e-3)


def test_encode_text_ignores_the_padded_tail(model):
    ids, mask = text(length=12, lengths=[4, 6])  # columns 6..11 are padding in every row
    features = model.encode_text(ids, mask)
    assert features.shape == (B, T["projection_dim"])
    assert_close(features, model.encode_text(ids[:, :6], mask[:, :6]))
    assert_close(features, model(text=ids, text_attention_mask=mask).text_features)
    # What sits in the padded positions does not matter.
    changed = ids.clone()
    changed[mask == 0] = 5
    assert_close(model.encode_text(changed, mask), features)
    # Each row is encoded on its own: a row's features do not depend on the other rows.
    assert_close(model.encode_text(ids[1:, :6], mask[1:, :6]), features[1:])
    assert_close(model.encode_text(ids[:1, :4], mask[:1, :4]), features[:1])


def test_encode_text_in_several_packs_equals_the_padded_batch(model):
    ids, mask = text(batch=7, length=9, lengths=[9, 2, 5, 1, 7, 3, 8])
    expected = model(text=ids, text_attention_mask=mask).text_features
    model.text_pack_tokens = 10  # four packs of up to 10 tokens, some with unused slots
    assert_close(model.encode_text(ids, mask), expected, atol=1e-6, rtol=1e-5)
    model.text_pack_tokens = 1  # every row alone
    assert_close(model.encode_text(ids, mask), expected, atol=1e-6, rtol=1e-5)


def test_encode_text_without_padding(model):
    ids, mask = text(lengths=[L, L])
    assert_close(model.encode_text(ids, mask), model.encode_text(ids))
    assert_close(model.encode_text(ids), model(text=ids).text_features)
    types = torch.ones_like(ids)
    assert_close(model.encode_text(ids, token_type_ids=types), model(text=ids, token_type_ids=types).text_features)


def test_return_hidden_states(model):
    pixels, (ids, mask) = images(), text(lengths=[4, 7])
    out = model(pixels, ids, text_attention_mask=mask, return_hidden_states=True)
    expected = {
        "image_hidden_states": (T["image_num_layers"], (B, IMAGE_TOKENS, T["image_embed_dim"])),
        "text_hidden_states": (T["text_num_layers"], (B, L, T["text_embed_dim"])),
        "multimodal_hidden_states": (T["multimodal_num_layers"], (B, 1 + IMAGE_TOKENS + L, T["multimodal_embed_dim"])),
    }
    for name, (num_layers, shape) in expected.items():
        states = getattr(out, name)
        assert len(states) == num_layers + 1, name
        assert all(s.shape == shape for s in states), name
    assert_close(model.image_encoder.norm(out.image_hidden_states[-1]), out.image_embeddings, atol=0, rtol=0)
    assert_close(model.text_encoder.norm(out.text_hidden_states[-1]), out.text_embeddings, atol=0, rtol=0)
    assert_close(out.multimodal_embeddings, model(pixels, ids, text_attention_mask=mask).multimodal_embeddings)


def test_every_parameter_gets_a_finite_nonzero_gradient(model):
    model.train()
    pixels = images()
    ids, mask = text(lengths=[4, 7])
    types = torch.zeros_like(ids)
    types[:, 2:] = 1
    patch_mask = torch.zeros(B, IMAGE_TOKENS - 1, dtype=torch.bool)
    patch_mask[:, ::3] = True
    out = model(pixels, ids, text_attention_mask=mask, token_type_ids=types, image_patch_mask=patch_mask)
    # Random weights: a plain sum of LayerNorm outputs or unit vectors would have (near) zero gradient.
    loss = sum((t * torch.randn_like(t)).sum() for t in out if t is not None)
    logits = model.logit_scale.exp() * out.image_features @ out.text_features.T  # the contrastive loss's use
    loss = loss + nn.functional.cross_entropy(logits, torch.arange(B))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    pad = model.text_encoder.embeddings.word_embed.padding_idx
    assert_close(model.text_encoder.embeddings.word_embed.weight.grad[pad], torch.zeros(T["text_embed_dim"]))


def test_packed_linears_give_the_autocast_outputs(model):
    # pack_linears: bf16 linear weights cast and packed once; the same model under autocast otherwise.
    packed = pack_linears(copy.deepcopy(model))
    pixels = images()
    ids, mask = text(lengths=[L, 4])
    tolerance = dict(atol=3e-2, rtol=2e-2)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, out = (
            model(image=pixels, text=ids, text_attention_mask=mask),
            packed(image=pixels, text=ids, text_attention_mask=mask),
        )
        for name in FIELDS:
            if getattr(expected, name) is not None:
                assert_close(getattr(out, name).float(), getattr(expected, name).float(), **tolerance, msg=name)
        assert_close(packed.encode_image(pixels).float(), model.encode_image(pixels).float(), **tolerance)
        assert_close(packed.encode_text(ids, mask).float(), model.encode_text(ids, mask).float(), **tolerance)
    with pytest.raises(ValueError, match="eval mode"):
        pack_linears(flava_model(**T))


def test_default_config_parameter_count_on_meta_device():
    with torch.device("meta"):
        model = flava_model()
    assert isinstance(model, FLAVAModel)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert sum(p.numel() for p in model.parameters()) == 241_356_289
    assert model.image_encoder.embeddings.pos_embed.shape == (1, 197, 768)
    assert model.text_encoder.embeddings.word_embed.weight.shape == (30522, 768)
    assert len(model.multimodal_encoder.encoder.layers) == 6


def test_misspelt_builder_kwarg():
    with pytest.raises(TypeError, match="image_embed_dims"):
        flava_model(**T, image_embed_dims=32)


def test_init(model):
    assert_close(model.logit_scale, torch.tensor(math.log(1 / 0.07)))
    linear_weights, num_norms, num_linears = [], 0, 0
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            num_norms += 1
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            num_linears += 1
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
            linear_weights.append(module.weight.detach().flatten())
    # 3 + 2 norms per layer of the 6 layers, 1 in the text embedding: 3 + 12 + 1.
    assert num_norms == 16
    assert num_linears > 20
    assert abs(torch.cat(linear_weights).std().item() - 0.02) < 0.001
    word = model.text_encoder.embeddings.word_embed
    assert word.padding_idx == 0
    assert torch.equal(word.weight[0], torch.zeros(T["text_embed_dim"]))
    assert abs(word.weight[1:].std().item() - 0.02) < 0.002
    for pos in (model.image_encoder.embeddings.pos_embed, model.text_encoder.embeddings.pos_embed.weight):
        assert abs(pos.std().item() - 0.02) < 0.004
        assert abs(pos.mean().item()) < 0.004


@pytest.mark.parametrize("std", [0.06, 0.1])
def test_init_std_sets_every_normal_init(std):
    torch.manual_seed(0)
    model = flava_model(**T, init_std=std)
    linear = torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, nn.Linear)])
    assert abs(linear.std().item() - std) < 0.05 * std
    word = model.text_encoder.embeddings.word_embed.weight[1:]
    tokens = [model.image_encoder.embeddings.pos_embed, model.image_encoder.embeddings.cls_token]
    tokens += [model.multimodal_encoder.cls_token, model.text_encoder.embeddings.pos_embed.weight]
    for p in [word, torch.cat([t.detach().flatten() for t in tokens])]:
        assert abs(p.std().item() - std) < 0.1 * std
    model.init_weights()  # re-initialising keeps the model's init_std
    assert abs(model.image_encoder.embeddings.pos_embed.std().item() - std) < 0.1 * std


@pytest.mark.parametrize("std", [0, -0.02, math.inf, "0.02", True])
def test_init_std_must_be_positive(std):
    with pytest.raises(ValueError, match=f"init_std must be a positive number, got {std!r}"):
        flava_model(**T, init_std=std)


@pytest.mark.parametrize(
    "builder, kwargs",
    [
        (flava_model, dict(T)),
        (flava_image_encoder, dict(embed_dim=32, num_layers=1, num_heads=2, mlp_dim=64, image_size=16, patch_size=8)),
        (flava_text_encoder, dict(embed_dim=32, num_layers=1, num_heads=2, mlp_dim=64, vocab_size=50)),
        (
            flava_multimodal_encoder,
            dict(embed_dim=32, num_layers=1, num_heads=2, mlp_dim=64, image_dim=32, text_dim=32),
        ),
    ],
)
@pytest.mark.parametrize("name", ["dropout", "attention_dropout"])
def test_a_dropout_of_one_is_refused_naming_the_argument(builder, kwargs, name):
    """A dropout of 1 zeroes all it drops (flava_model(dropout=1.0) built a model with a constant output)."""
    with pytest.raises(ValueError) as caught:
        builder(**kwargs, **{name: 1.0})
    assert str(caught.value) == f"{builder.__name__}: {name} must be in [0, 1), got 1.0"
    builder(**kwargs, **{name: 0.9})


def test_init_weights_restores_the_init(model):
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
        model.image_encoder.norm.weight.fill_(5.0)
        model.text_projection.bias.fill_(1.0)
    model.init_weights()
    assert_close(model.logit_scale, torch.tensor(math.log(1 / 0.07)))
    assert torch.equal(model.image_encoder.norm.weight, torch.ones(T["image_embed_dim"]))
    assert torch.equal(model.text_projection.bias, torch.zeros(T["projection_dim"]))


# Bad input: every error names the argument and what was expected.


def test_image_with_one_channel(model):
    with pytest.raises(ValueError, match=r"image must have shape \(B, 3, H, W\) with B >= 1, got \(2, 1, 32, 32\)"):
        model(image=torch.randn(B, 1, 32, 32))


def test_image_size_not_a_multiple_of_the_patch(model):
    expected = "image height and width must be positive multiples of patch_size=8, got 30x30"
    with pytest.raises(ValueError, match=expected):
        model(image=torch.randn(B, 3, 30, 30))


@pytest.mark.parametrize("bad", [T["vocab_size"], -1])
def test_text_ids_outside_the_vocabulary(model, bad):
    ids, _ = text()
    ids[0, 2] = bad
    with pytest.raises(ValueError, match=r"text must be in \[0, 99\) \(the vocabulary size\)"):
        model(text=ids)
    with pytest.raises(ValueError, match=r"text must be in \[0, 99\)"):
        model.encode_text(ids)


def test_text_attention_mask_shape(model):
    ids, mask = text()
    with pytest.raises(ValueError, match=r"text_attention_mask must have the shape of text \(2, 7\), got \(2, 6\)"):
        model(text=ids, text_attention_mask=mask[:, :6])
    with pytest.raises(ValueError, match=r"text_attention_mask must have the shape of text \(2, 7\)"):
        model.encode_text(ids, mask[:1])


def test_neither_image_nor_text(model):
    with pytest.raises(ValueError, match="needs at least one of image or text"):
        model()


def test_float_text_ids(model):
    with pytest.raises(TypeError, match=r"text must be an integer tensor \(torch.long\), got dtype torch.float32"):
        model(text=torch.zeros(B, L))
    with pytest.raises(TypeError, match="text must be an integer tensor"):
        model.encode_text(torch.zeros(B, L))
    with pytest.raises(TypeError, match="text must be a torch.Tensor"):
        model(text=[[1, 2, 3]])


def test_text_ids_wrong_rank(model):
    with pytest.raises(ValueError, match=r"text must have shape \(B, L\)"):
        model(text=torch.ones(L, dtype=torch.long))


def test_batch_size_mismatch(model):
    with pytest.raises(ValueError, match="image and text batch sizes differ: 2 vs 3"):
        model(images(2), text(batch=3)[0])


def test_text_attention_mask_without_text(model):
    with pytest.raises(ValueError, match="text_attention_mask and token_type_ids need text"):
        model(image=images(), text_attention_mask=torch.ones(B, L))


def test_token_type_ids_without_text(model):
    with pytest.raises(ValueError, match="text_attention_mask and token_type_ids need text"):
        model(image=images(), token_type_ids=torch.zeros(B, L, dtype=torch.long))


def test_image_patch_mask_without_image(model):
    with pytest.raises(ValueError, match="image_patch_mask needs image"):
        model(text=text()[0], image_patch_mask=torch.zeros(B, IMAGE_TOKENS - 1, dtype=torch.bool))


def test_encode_text_equals_forward_for_masks_with_gaps(model):
    # Masks as users build them: gaps inside a row ([1, 0, 0, 1]), left padding, a one-token row.
    ids, _ = text(batch=4, length=6)
    mask = torch.tensor(
        [[1, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 0, 1, 0, 1]], dtype=torch.long
    )
    features = model.encode_text(ids, mask)
    assert_close(features, model(text=ids, text_attention_mask=mask).text_features, atol=1e-5, rtol=0)
    # masked-out positions do not matter, wherever they are, in rows whose pooled position 0 is real
    changed = ids.clone()
    changed[mask == 0] = 7
    kept = [0, 2, 3]
    assert_close(model.encode_text(changed, mask)[kept], features[kept], atol=1e-5, rtol=0)


def test_hand_built_model_refuses_parts_that_do_not_compose(model):
    """FLAVAModel built from parts: a contrastive projection or a multimodal input projection that does not
    read its tower's width, or projections into spaces of different widths, are refused when built."""
    parts = [model.image_encoder, model.text_encoder, model.multimodal_encoder, model.image_projection]
    with pytest.raises(
        ValueError,
        match=r"^FLAVAModel: the parts must share one width, got text_projection.in_features 32, "
        r"text_encoder.norm.normalized_shape 24$",
    ):
        FLAVAModel(*parts, nn.Linear(32, 20))
    with pytest.raises(ValueError, match=r"got image_projection.out_features 20, text_projection.out_features 16$"):
        FLAVAModel(*parts, nn.Linear(24, 16))
    fusion = copy.deepcopy(model.multimodal_encoder)
    fusion.text_proj = nn.Linear(32, 16)
    with pytest.raises(
        ValueError,
        match=r"^FLAVAModel: .* got multimodal_encoder.text_proj.in_features 32, text_encoder.norm.normalized_shape 24$",
    ):
        FLAVAModel(parts[0], parts[1], fusion, parts[3], model.text_projection)
    with pytest.raises(TypeError, match="^multimodal_encoder must be an nn.Module, got NoneType"):
        FLAVAModel(parts[0], parts[1], None, parts[3], model.text_projection)
    rebuilt = FLAVAModel(*parts, model.text_projection).eval()
    assert rebuilt(image=images()).image_features.shape == (B, 20)


def test_normalize_must_be_a_bool(model):
    """normalize="no" was truthy: the features came back normalised."""
    with pytest.raises(TypeError, match="^normalize must be a bool, got str 'no'$"):
        model.encode_image(images(), normalize="no")
    with pytest.raises(TypeError, match="^normalize must be a bool, got NoneType None$"):
        model.encode_text(*text(), normalize=None)


def test_a_meta_model_takes_meta_inputs_for_a_dry_run_of_shapes():
    """Building on the meta device and calling it there is how a user checks shapes before allocating: packing
    a masked text batch read its lengths (Tensor.item() on a meta tensor failed inside torch)."""
    with torch.device("meta"):
        model = flava_model(**T)
    text = torch.randint(0, T["vocab_size"], (3, 7), device="meta")
    mask = torch.ones(3, 7, dtype=torch.long, device="meta")
    types = torch.zeros(3, 7, dtype=torch.long, device="meta")
    image = torch.randn(4, 3, T["image_size"], T["image_size"], device="meta")
    texts = [
        model.encode_text(text),
        model.encode_text(text, mask),
        model.encode_text(text, mask, token_type_ids=types),
    ]
    for features in texts:
        assert features.is_meta and features.shape == (3, T["projection_dim"])
    features = model.encode_image(image)
    assert features.is_meta and features.shape == (4, T["projection_dim"])
