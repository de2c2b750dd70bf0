"""CLIPModel: packed text equal to the padded pass, end-token pooling, outputs, loss, gradients, bad input."""

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from tests.models.clip.test_convert_weights import SMALL, HFCLIPModel, _perturb, _small_hf_config, captions
from torchflava.models import CLIPModel, clip_model, clip_vit_b16, clip_vit_b32, clip_vit_l14
from torchflava.models.clip import CLIPOutput, convert_to_torchflava
from torchflava.modules.layers.activation import QuickGELU
from torchflava.modules.losses import contrastive_loss

EOS = 97


def _small(**kwargs) -> CLIPModel:
    model = clip_model(**SMALL, eos_token_id=EOS, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # non-trivial biases and norms
    return model.eval()


def _padded_reference(model: CLIPModel, ids, mask):
    """Text features from one padded, causal pass over every column (no packing, no position pruning)."""
    out = model.text_encoder(ids, padding_mask=None if mask is None else mask == 0).last_hidden_state
    end = (ids == model.eos_token_id).int().argmax(dim=1) if model.eos_token_id is not None else ids.argmax(dim=1)
    return F.normalize(model.text_projection(out[torch.arange(len(ids)), end]), dim=-1)


@pytest.mark.parametrize("pack_tokens", [256, 12])  # one pack, or several (a row longer than the budget alone)
def test_encode_text_packed_equals_padded_pass(pack_tokens):
    model = _small()
    model.text_pack_tokens = pack_tokens
    ids, mask = captions([16, 3, 9, 14, 2], 16, vocab=99, bos=96, eos=EOS)
    with torch.no_grad():
        expected = _padded_reference(model, ids, mask)
        assert_close(model.encode_text(ids, mask), expected, atol=1e-5, rtol=0)
        assert_close(model.encode_text(ids), expected, atol=1e-5, rtol=0)  # padding after the end: no effect
        full = ids[:1]  # no padding at all: the unpacked path (last layer at the end token only)
        assert_close(model.encode_text(full), _padded_reference(model, full, None), atol=1e-5, rtol=0)
        raw = model.encode_text(ids, mask, normalize=False)
        assert_close(F.normalize(raw, dim=-1), expected, atol=1e-5, rtol=0)
        assert not torch.allclose(raw.norm(dim=-1), torch.ones(5))


def test_argmax_pooling_when_eos_token_id_is_none():
    model = _small()
    model.eos_token_id = None  # OpenAI's rule (clip_model sets it from HF's legacy configs)
    ids, mask = captions([7, 16, 4], 16, vocab=99, bos=90, eos=98)  # 98: the highest id of each row
    with torch.no_grad():
        features = model.encode_text(ids, mask)
        assert_close(features, _padded_reference(model, ids, mask), atol=1e-5, rtol=0)
        model.eos_token_id = 98
        assert_close(model.encode_text(ids, mask), features, atol=0, rtol=0)


def test_encode_image_reads_the_cls_token():
    model = _small()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        cls = model.image_encoder(images).last_hidden_state[:, 0]
        assert_close(model.encode_image(images), F.normalize(model.image_projection(cls), dim=-1), atol=1e-5, rtol=0)


def test_forward_outputs_and_loss_with_gradients():
    model = _small().train()
    images = torch.randn(4, 3, 32, 32)
    ids, mask = captions([16, 5, 9, 3], 16, vocab=99, bos=96, eos=EOS)
    out = model(images, ids, mask)
    assert isinstance(out, CLIPOutput) and torch.equal(out.logit_scale, model.logit_scale.detach())
    assert out.image_features.shape == out.text_features.shape == (4, 20)
    assert_close(out.image_features.norm(dim=-1), torch.ones(4))
    assert model(text=ids).image_features is None and model(images).text_features is None
    loss = contrastive_loss(out.image_features, out.text_features, out.logit_scale).loss  # the library's loss
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_init_weights_and_logit_scale():
    model = clip_model(**SMALL, logit_scale_init=1.5)
    assert model.logit_scale.item() == 1.5
    assert clip_model(**SMALL).logit_scale.item() == pytest.approx(2.6592, abs=1e-4)
    assert model.image_encoder.embeddings.proj.bias is None  # CLIP's patch projection has no bias
    assert model.image_projection.bias is None and model.text_projection.bias is None


def test_init_std():
    torch.manual_seed(0)
    model = clip_model(**SMALL, init_std=0.07)
    linear = torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)])
    assert abs(linear.std().item() - 0.07) < 0.0035
    embeddings = model.image_encoder.embeddings
    tokens = torch.cat([embeddings.pos_embed.detach().flatten(), embeddings.cls_token.detach().flatten()])
    assert abs(tokens.std().item() - 0.07) < 0.007
    assert abs(model.text_encoder.embeddings.word_embed.weight.std().item() - 0.07) < 0.007
    default = clip_model(**SMALL).image_encoder.embeddings.pos_embed
    assert abs(default.std().item() - 0.02) < 0.002
    for bad in (0, -1.0, "0.1"):
        with pytest.raises(ValueError, match=f"clip_model: init_std must be a positive number, got {bad!r}"):
            clip_model(**SMALL, init_std=bad)


@pytest.mark.parametrize(
    "name, preset", [("ViT-B-32", clip_vit_b32), ("ViT-B-16", clip_vit_b16), ("ViT-L-14", clip_vit_l14)]
)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_presets_match_open_clip_configs(name, preset):
    with torch.device("meta"):
        reference, ours, quick = open_clip.create_model(name, device="meta"), preset(), preset(activation="quick_gelu")
    # Every open_clip tensor maps onto ours with its shape (convert_to_torchflava checks them all).
    assert len(convert_to_torchflava(reference.state_dict(), ours)) == len(ours.state_dict())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    assert type(ours.text_encoder.encoder.layers[0].mlp.activation) is torch.nn.GELU
    assert type(quick.image_encoder.encoder.layers[0].mlp.activation) is QuickGELU


def test_bad_inputs():
    model = _small()
    ids, mask = captions([6, 4], 16, vocab=99, bos=96, eos=EOS)
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="expected image or text"):
        model()
    with pytest.raises(ValueError, match="text_attention_mask: expected text"):
        model(images, text_attention_mask=mask)
    lacking = ids.clone()
    lacking[1, 3] = 5
    with pytest.raises(ValueError, match=r"end token 97 in every row, rows \[1\] lack it"):
        model.encode_text(lacking)
    cut = mask.clone()
    cut[0, 5] = 0
    with pytest.raises(ValueError, match="expected 1 at every row's end token"):
        model.encode_text(ids, cut)
    with pytest.raises(ValueError, match=r"shape of text \(2, 16\), got \(2, 15\)"):
        model.encode_text(ids, mask[:, :15])
    with pytest.raises(TypeError, match="text_attention_mask must be a torch.Tensor, got list"):
        model.encode_text(ids, mask.tolist())
    with pytest.raises(TypeError, match="integer tensor"):
        model.encode_text(ids.float())
    with pytest.raises(ValueError, match=r"in \[0, 99\)"):
        model.encode_text(ids + 5)


def test_hand_built_model_refuses_parts_that_do_not_compose():
    """CLIPModel built from parts: a projection whose input is not its tower's width, projections into
    spaces of different widths, or a part that is no module are refused when built, naming each width,
    not in the first forward deep inside torch; parts that tell no width (a custom projection) are trusted."""
    from torch import nn

    m = _small()  # towers of widths 32 (image) and 24 (text), projections to 20
    towers = (m.image_encoder, m.text_encoder)
    with pytest.raises(
        ValueError,
        match=r"^CLIPModel: the parts must share one width, got text_projection.in_features 32, "
        r"text_encoder.norm.normalized_shape 24$",
    ):
        CLIPModel(*towers, m.image_projection, nn.Linear(32, 20, bias=False))
    with pytest.raises(ValueError, match=r"got image_projection.out_features 20, text_projection.out_features 8$"):
        CLIPModel(*towers, m.image_projection, nn.Linear(24, 8, bias=False))
    with pytest.raises(TypeError, match="^image_projection must be an nn.Module, got Tensor"):
        CLIPModel(*towers, m.image_projection.weight.detach(), m.text_projection)
    with pytest.raises(TypeError, match="^text_encoder must be an nn.Module, got str"):
        CLIPModel(m.image_encoder, "text", m.image_projection, m.text_projection)
    built = CLIPModel(*towers, nn.Sequential(nn.Linear(32, 20)), m.text_projection, eos_token_id=EOS)
    assert built.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 20)
    # its own settings: torch's "normal expects std >= 0.0", a NaN temperature, True taken as end token 1
    with pytest.raises(ValueError, match="^CLIPModel: init_std must be a positive number, got -1$"):
        CLIPModel(*towers, m.image_projection, m.text_projection, init_std=-1)
    with pytest.raises(ValueError, match="^CLIPModel: logit_scale_init must be a finite number, got nan$"):
        CLIPModel(*towers, m.image_projection, m.text_projection, logit_scale_init=float("nan"))
    ids, mask = captions([5, 3], 8, vocab=99, bos=96, eos=EOS)
    with pytest.raises(TypeError, match="^end_token_id must be an int id or None, got bool True$"):
        CLIPModel(*towers, m.image_projection, m.text_projection, eos_token_id=True).encode_text(ids, mask)


def test_normalize_must_be_a_bool():
    """normalize="no" was truthy: the features came back normalised."""
    model = _small()
    ids, mask = captions([5, 3], 8, vocab=99, bos=96, eos=EOS)
    with pytest.raises(TypeError, match="^normalize must be a bool, got str 'no'$"):
        model.encode_image(torch.randn(2, 3, 32, 32), normalize="no")
    with pytest.raises(TypeError, match="^normalize must be a bool, got int 0$"):
        model.encode_text(ids, mask, normalize=0)
    features = model.encode_text(ids, mask, normalize=False)
    assert not torch.allclose(features.norm(dim=-1), torch.ones(2))


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_logits_per_image_and_per_text_equal_hugging_faces(tmp_path):
    """CLIPOutput had the features and the log-temperature but not the logits every Hugging Face CLIP user
    reads; they are exp(logit_scale) times the cosine similarities, (images, texts) and its transpose."""
    hf = _perturb(HFCLIPModel(_small_hf_config("quick_gelu", eos_token_id=EOS, bos_token_id=96)))
    with torch.no_grad():
        hf.logit_scale.fill_(1.7)  # not the initial value: the loaded one must be used
    hf.save_pretrained(tmp_path)
    model = clip_model(pretrained=tmp_path).eval()
    images = torch.randn(2, 3, 32, 32)
    ids, mask = captions([16, 5, 11], 16, vocab=99, bos=96, eos=EOS)  # 2 images, 3 texts: the order shows
    with torch.no_grad():
        expected = hf(input_ids=ids, pixel_values=images, attention_mask=mask)
        out = model(images, ids, mask)
    assert out.logits_per_image.shape == (2, 3) and out.logits_per_text.shape == (3, 2)
    assert_close(out.logits_per_image, expected.logits_per_image, atol=1e-4, rtol=0)
    assert_close(out.logits_per_text, expected.logits_per_text, atol=1e-4, rtol=0)
    assert_close(out.logits_per_image, math.exp(1.7) * out.image_features @ out.text_features.T, atol=1e-5, rtol=0)


def test_logits_without_both_modalities_are_refused_naming_the_missing_features():
    model = _small()
    images, (ids, _) = torch.randn(2, 3, 32, 32), captions([6, 4], 16, vocab=99, bos=96, eos=EOS)
    with torch.no_grad():
        image_only, text_only = model(images), model(text=ids)
    for out, missing in ((image_only, "text_features"), (text_only, "image_features")):
        for name in ("logits_per_image", "logits_per_text"):
            with pytest.raises(ValueError) as info:
                getattr(out, name)
            assert str(info.value) == f"logits: expected image and text features, got {missing}=None"
    neither = CLIPOutput(None, None, torch.tensor(0.0))
    with pytest.raises(ValueError, match="got image_features and text_features=None$"):
        _ = neither.logits_per_text


def test_text_on_another_device_than_the_model_is_refused_naming_it():
    # (meta ids failed inside torch, on Tensor.item() of the end-token check)
    model = _small()
    text = torch.randint(0, SMALL["vocab_size"], (2, 5), device="meta")
    with pytest.raises(ValueError, match=r"^text must be on the model's device cpu, got meta$"):
        model.encode_text(text)
    with pytest.raises(ValueError, match=r"^image must be on the model's device cpu, got meta$"):
        model(image=torch.randn(2, 3, SMALL["image_size"], SMALL["image_size"], device="meta"))


def test_attention_mask_on_another_device_than_the_text_is_refused_naming_it():
    text = torch.randint(0, EOS, (2, 5))
    text[:, 3] = EOS
    with pytest.raises(ValueError, match=r"^text_attention_mask must be on text's device cpu, got meta$"):
        _small().encode_text(text, torch.ones(2, 5, dtype=torch.long, device="meta"))


def test_a_meta_model_takes_meta_inputs_for_a_dry_run_of_shapes():
    """Building on the meta device and calling it there is how a user checks shapes before allocating: the
    end-token check and packing read the text's values (Tensor.item() on a meta tensor failed inside torch)."""
    with torch.device("meta"):
        model = clip_model(**SMALL, eos_token_id=EOS)
    text = torch.randint(0, SMALL["vocab_size"], (3, 7), device="meta")
    mask = torch.ones(3, 7, dtype=torch.long, device="meta")
    image = torch.randn(4, 3, SMALL["image_size"], SMALL["image_size"], device="meta")
    for features in (model.encode_text(text), model.encode_text(text, mask), model.encode_image(image)):
        assert features.is_meta and features.shape[1] == SMALL["embed_dim"]
    assert model.encode_text(text, mask).shape == (3, SMALL["embed_dim"])
    assert model.encode_image(image).shape == (4, SMALL["embed_dim"])
    assert model(image=image, text=text, text_attention_mask=mask).logits_per_image.shape == (4, 3)
