"""Library inputs users really pass: empty batches, small integer ids, other float dtypes, over-long
rows, meta tensors. Each gives a clear error naming the argument, or the correct result."""

import pytest
import torch
from torch.testing import assert_close

from tests.helpers import TINY_FLAVA as TINY
from torchflava.models import flava_model
from torchflava.models.flava.builders import flava_image_encoder, flava_multimodal_encoder, flava_text_encoder


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return flava_model(**TINY).eval()


def test_empty_batches_name_the_argument(model):
    with pytest.raises(ValueError, match=r"image must have shape \(B, 3, H, W\) with B >= 1, got \(0, 3, 32, 32\)"):
        model.encode_image(torch.zeros(0, 3, 32, 32))
    with pytest.raises(ValueError, match=r"text must have shape \(B, L\) with B >= 1 and L >= 1, got \(0, 5\)"):
        model.encode_text(torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"text must have shape \(B, L\) with B >= 1 and L >= 1, got \(2, 0\)"):
        model(text=torch.zeros(2, 0, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_small_integer_ids_give_the_long_result(model, dtype):
    ids = torch.tensor([[1, 5, 9, 2], [1, 7, 2, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        expected = model.encode_text(ids, mask)
        assert_close(model.encode_text(ids.to(dtype), mask), expected)
        assert_close(
            model(text=ids.to(dtype), text_attention_mask=mask).text_embeddings,
            model(text=ids, text_attention_mask=mask).text_embeddings,
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_pixels_of_another_float_dtype_are_cast_to_the_model(model, dtype):
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.encode_image(pixels.to(dtype).float())
        got = model.encode_image(pixels.to(dtype))
    assert got.dtype == torch.float32
    assert_close(got, expected)


def test_rows_longer_than_the_position_table_say_so(model):
    length = TINY["max_seq_len"] + 3
    ids = torch.randint(1, 50, (2, length))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # a padded batch takes the packed path, whose positions come from the columns
    with pytest.raises(
        ValueError,
        match=rf"position_ids must be in \[0, {TINY['max_seq_len']}\) \(the learned positions, max_seq_len: is a "
        r"text longer\?\), got values in",
    ):
        model.encode_text(ids, mask)
    with pytest.raises(ValueError, match=rf"length {length}, more than the {TINY['max_seq_len']} learned positions"):
        model.encode_text(ids)


def test_meta_tensors_give_meta_results():
    with torch.device("meta"):
        model = flava_model(**TINY)
    ids = torch.zeros(2, 6, dtype=torch.long, device="meta")
    out = model(text=ids, image=torch.zeros(2, 3, 32, 32, device="meta"))
    assert out.text_embeddings.is_meta and out.text_embeddings.shape == (2, 6, TINY["text_embed_dim"])
    assert out.multimodal_embeddings.shape[:2] == (2, 1 + 17 + 6)


def test_float_batch_fields_name_the_field():
    from torchflava.models import flava_model_for_pretraining

    torch.manual_seed(0)
    model = flava_model_for_pretraining(backbone=flava_model(**TINY), build_codebook=False, image_vocab_size=16)
    ids = torch.randint(5, 50, (2, 6))
    batch = dict(
        image=torch.randn(2, 3, 32, 32),
        text=ids,
        text_attention_mask=torch.ones_like(ids),
        itm_labels=torch.tensor([1.0, 0.0]),
    )
    with pytest.raises(
        TypeError,
        match=r"batch field itm_labels must be an integer tensor \(torch.long\), got dtype "
        r"torch.float32",
    ):
        model(batch)
    batch.update(itm_labels=torch.tensor([1, 0]), text=ids.float())
    with pytest.raises(TypeError, match="batch field text must be an integer tensor"):
        model(batch)


# ---------------------------------------------------------------------- pretraining batch fields
INTEGERS = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.fixture(scope="module")
def pretraining():
    from torchflava.models import flava_model_for_pretraining

    torch.manual_seed(0)
    model = flava_model_for_pretraining(
        backbone=flava_model(**TINY), build_codebook=False, image_vocab_size=16, unimodal_losses_on_pairs=True
    )
    ids = torch.randint(5, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    mlm = torch.full_like(ids, -100)
    mlm[:, 2] = ids[:, 2]
    patches = torch.zeros(2, 16, dtype=torch.bool)
    patches[:, :3] = True
    batch = dict(
        image=torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)),
        image_patch_mask=patches,
        image_tokens=torch.randint(0, 16, (2, 16), generator=torch.Generator().manual_seed(3)),
        text=ids,
        text_masked=ids,
        text_attention_mask=torch.ones_like(ids),
        mlm_labels=mlm,
        itm_labels=torch.tensor([1, 0]),
    )
    with torch.no_grad():
        losses = model(batch).losses
    assert all(loss is not None for loss in losses)  # every loss runs, so every field is read
    return model, batch, losses


def _outcome(model, batch, name, value):
    with torch.no_grad():
        return model({**batch, name: value}).losses


CASTS = (
    [(name, dtype) for name in ("text", "text_masked", "image_tokens", "itm_labels") for dtype in INTEGERS]
    + [("mlm_labels", dtype) for dtype in INTEGERS if dtype != torch.uint8]  # -100 needs a signed type
    + [("itm_labels", torch.bool), ("image", torch.float64), ("image", torch.float16)]
    + [(name, dtype) for name in ("image_patch_mask", "text_attention_mask") for dtype in [torch.bool, *INTEGERS]]
    + [("text_attention_mask", dtype) for dtype in FLOATS]
)


@pytest.mark.parametrize("name, dtype", CASTS, ids=[f"{n}-{d}" for n, d in CASTS])
def test_batch_fields_of_any_integer_dtype_give_the_long_result(pretraining, name, dtype):
    model, batch, expected = pretraining
    got = _outcome(model, batch, name, batch[name].to(dtype))
    tolerance = dict(atol=2e-2, rtol=2e-2) if dtype == torch.float16 else dict(atol=1e-5, rtol=1e-5)
    for loss, want in zip(got, expected):
        assert_close(loss, want, **tolerance)


WRONG_DTYPES = (
    [(name, dtype, "a floating-point tensor of normalised pixels") for name in ("image",) for dtype in INTEGERS]
    + [("image", torch.bool, "a floating-point tensor of normalised pixels")]
    + [(name, dtype, r"an integer tensor \(torch.long\)") for name in ("text", "mlm_labels") for dtype in FLOATS]
    + [(name, torch.bool, r"an integer tensor \(torch.long\)") for name in ("text", "text_masked", "mlm_labels")]
    + [("image_tokens", torch.bool, r"an integer tensor \(torch.long\)")]
    + [("itm_labels", torch.float32, r"an integer tensor \(torch.long\)")]
    + [("image_patch_mask", dtype, "a bool or integer tensor") for dtype in FLOATS]
    + [("text_attention_mask", torch.complex64, "a bool, integer or float tensor")]
)


@pytest.mark.parametrize("name, dtype, expected", WRONG_DTYPES, ids=[f"{n}-{d}" for n, d, _ in WRONG_DTYPES])
def test_a_batch_field_of_a_wrong_dtype_is_a_type_error_naming_it(pretraining, name, dtype, expected):
    model, batch, _ = pretraining
    with pytest.raises(TypeError, match=rf"^batch field {name} must be {expected}, got dtype {dtype}$"):
        _outcome(model, batch, name, batch[name].to(dtype))


def test_integer_codebook_pixels_name_the_field(pretraining):
    model, batch, _ = pretraining
    with pytest.raises(TypeError, match=r"^batch field codebook_pixels must be a floating-point tensor of normalised"):
        _outcome(model, batch, "codebook_pixels", torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize(
    "name",
    [
        "image",
        "image_patch_mask",
        "image_tokens",
        "text",
        "text_masked",
        "text_attention_mask",
        "mlm_labels",
        "itm_labels",
    ],
)
@pytest.mark.parametrize(
    "convert", [lambda t: t.tolist(), lambda t: t.numpy(), lambda t: 3], ids=["list", "numpy", "int"]
)
def test_a_batch_field_that_is_not_a_tensor_is_a_type_error_naming_it(pretraining, name, convert):
    model, batch, _ = pretraining
    value = convert(batch[name])
    with pytest.raises(TypeError, match=rf"^batch field {name} must be a torch.Tensor, got {type(value).__name__}$"):
        _outcome(model, batch, name, value)


def test_mlm_labels_whose_dtype_cannot_hold_the_ignore_index_are_out_of_range(pretraining):
    model, batch, _ = pretraining  # -100 wraps to 156 in uint8: not an id of this vocabulary
    with pytest.raises(ValueError, match=r"^mlm_labels must be in \[0, 99\) or ignore_index=-100$"):
        _outcome(model, batch, "mlm_labels", batch["mlm_labels"].to(torch.uint8))


def test_a_bad_image_patch_mask_is_named_as_the_caller_passed_it_before_any_encoder_runs(model, monkeypatch):
    """The image encoder's own check called it patch_mask, after it had embedded the images."""
    image = torch.randn(2, 3, 32, 32)
    monkeypatch.setattr(model.image_encoder, "forward", lambda *a, **k: pytest.fail("the encoder ran"))
    with pytest.raises(ValueError, match=r"image_patch_mask must have shape \(B, N\) = \(2, 16\) or \(B, H/p, W/p\)"):
        model(image=image, image_patch_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="image_patch_mask must be a bool .* tensor, got torch.float32"):
        model(image=image, image_patch_mask=torch.ones(2, 16))
    with pytest.raises(TypeError, match="image_patch_mask must be a bool .* tensor, got list"):
        model(image=image, image_patch_mask=[[True] * 16] * 2)


def test_an_image_of_the_wrong_size_is_named_rather_than_its_patch_mask(model):
    with pytest.raises(
        ValueError, match="image height and width must be positive multiples of patch_size=8, got 36x36"
    ):
        model(image=torch.randn(2, 3, 36, 36), image_patch_mask=torch.ones(2, 25, dtype=torch.bool))


@pytest.mark.parametrize(
    "builder, change, error, match",
    [
        (flava_multimodal_encoder, dict(image_dim=0), ValueError, "flava_multimodal_encoder: image_dim must be >= 1"),
        (flava_multimodal_encoder, dict(image_dim=-1), ValueError, "flava_multimodal_encoder: image_dim must be >= 1"),
        (flava_multimodal_encoder, dict(text_dim=1.5), TypeError, "flava_multimodal_encoder: text_dim must be an int"),
        (flava_image_encoder, dict(patch_size=0), ValueError, "flava_image_encoder: patch_size must be >= 1, got 0"),
        (flava_image_encoder, dict(norm_eps=0.0), ValueError, "flava_image_encoder: norm_eps must be a positive"),
        (flava_text_encoder, dict(pad_token_id=5), ValueError, "flava_text_encoder: pad_token_id must be an int id"),
        (flava_text_encoder, dict(num_heads=5), ValueError, "flava_text_encoder: embed_dim must be a multiple"),
    ],
)
def test_flava_tower_builders_name_a_bad_argument_before_building(builder, change, error, match):
    with pytest.raises(error, match=match):
        builder(**{**dict(embed_dim=8, num_layers=1, num_heads=2, mlp_dim=16), **change}, **_tower_sizes(builder))


def _tower_sizes(builder) -> dict:
    return {flava_image_encoder: dict(image_size=32), flava_text_encoder: dict(vocab_size=5)}.get(builder, {})


def test_text_on_another_device_than_the_model_is_refused_naming_it(model):
    # meta ids into the CPU model gave CPU outputs of garbage values, silently
    text = torch.randint(1, TINY["vocab_size"], (2, 5), device="meta")
    with pytest.raises(ValueError, match=r"^text must be on the model's device cpu, got meta$"):
        model(text=text)
    with pytest.raises(ValueError, match=r"^text must be on the model's device cpu, got meta$"):
        model.encode_text(text)
    with pytest.raises(ValueError, match=r"^image must be on the model's device cpu, got meta$"):
        model.encode_image(torch.randn(2, 3, 32, 32, device="meta"))


@pytest.mark.parametrize("flag", ["skip_multimodal", "return_hidden_states"])
def test_forward_flags_must_be_bools(model, flag):
    # "no" is truthy: the multimodal encoder was skipped, or hidden states returned, silently
    text, image = torch.randint(1, TINY["vocab_size"], (2, 5)), torch.randn(2, 3, 32, 32)
    with pytest.raises(TypeError, match=rf"^{flag} must be a bool, got str 'no'$"):
        model(image, text, **{flag: "no"})


def test_attention_mask_on_another_device_than_the_text_is_refused_naming_it(model):
    # (a meta mask failed inside torch, on Tensor.item() of the mask's value check)
    text = torch.randint(1, TINY["vocab_size"], (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long, device="meta")
    for call in (lambda: model(text=text, text_attention_mask=mask), lambda: model.encode_text(text, mask)):
        with pytest.raises(ValueError, match=r"^text_attention_mask must be on text's device cpu, got meta$"):
            call()


def test_meta_tensors_with_an_attention_mask_give_meta_results():
    # (the mask's value check read a meta tensor: Tensor.item() failed inside torch)
    with torch.device("meta"):
        model = flava_model(**TINY)
    ids, mask = torch.zeros(2, 6, dtype=torch.long, device="meta"), torch.ones(2, 6, dtype=torch.long, device="meta")
    out = model(text=ids, image=torch.zeros(2, 3, 32, 32, device="meta"), text_attention_mask=mask)
    assert out.text_embeddings.is_meta and out.text_embeddings.shape == (2, 6, TINY["text_embed_dim"])
    assert out.multimodal_embeddings.shape == (2, 1 + 17 + 6, TINY["multimodal_embed_dim"])
