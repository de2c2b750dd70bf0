"""Library inputs users really pass: empty batches, small integer ids, other float dtypes, over-long
rows, meta tensors. Each gives a clear error naming the argument, or the correct result."""

import pytest
import torch
from torch.testing import assert_close

from tests.helpers import TINY_FLAVA as TINY
from torchflava.models import flava_model


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
        match=rf"more than the {TINY['max_seq_len']} learned positions|beyond the "
        rf"{TINY['max_seq_len']} learned positions",
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
