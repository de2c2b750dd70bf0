"""TextEmbedding: word + token type + position, LayerNorm, and token id checks."""

import pytest
import torch
from torch.testing import assert_close

from torchflava.modules.layers import TextEmbedding

VOCAB, D, MAX_LEN = 99, 24, 40


def make_embedding(**kwargs) -> TextEmbedding:
    emb = TextEmbedding(VOCAB, D, MAX_LEN, **kwargs).eval()
    with torch.no_grad():  # a non-trivial norm so a skipped affine transform is caught
        emb.norm.weight.uniform_(0.5, 1.5)
        emb.norm.bias.normal_()
    return emb


def by_hand(emb: TextEmbedding, ids: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
    length = ids.shape[1]
    x = emb.word_embed.weight[ids] + emb.type_embed.weight[types] + emb.pos_embed.weight[:length][None]
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-12) * emb.norm.weight + emb.norm.bias


def test_shape():
    emb = make_embedding()
    assert emb(torch.randint(0, VOCAB, (3, 11))).shape == (3, 11, D)
    assert emb(torch.randint(0, VOCAB, (1, MAX_LEN))).shape == (1, MAX_LEN, D)


def test_matches_word_type_position_then_layernorm():
    emb = make_embedding()
    ids = torch.randint(0, VOCAB, (3, 9))
    assert_close(emb(ids), by_hand(emb, ids, torch.zeros_like(ids)), atol=1e-5, rtol=1e-5)


def test_token_type_ids_are_used():
    emb = make_embedding()
    ids = torch.randint(0, VOCAB, (2, 9))
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    out = emb(ids, token_type_ids=types)
    assert_close(out, by_hand(emb, ids, types), atol=1e-5, rtol=1e-5)
    default = emb(ids)
    assert_close(emb(ids, token_type_ids=torch.zeros_like(ids)), default)
    assert_close(out[:, :5], default[:, :5])
    assert not torch.allclose(out[:, 5:], default[:, 5:], atol=1e-3)


def test_positions_are_absolute():
    emb = make_embedding()
    ids = torch.randint(0, VOCAB, (2, 9))
    assert_close(emb(ids)[:, :4], emb(ids[:, :4]))  # a prefix embeds the same as in the longer text
    same_token = torch.full((1, 5), 7)
    out = emb(same_token)[0]
    assert not torch.allclose(out[0], out[1], atol=1e-3)  # the position makes equal tokens differ


def test_padding_row_starts_at_zero_and_gets_no_gradient():
    emb = TextEmbedding(VOCAB, D, MAX_LEN, pad_token_id=3)
    assert_close(emb.word_embed.weight[3], torch.zeros(D), atol=0, rtol=0)
    emb(torch.tensor([[3, 4, 3, 5]])).square().sum().backward()
    assert_close(emb.word_embed.weight.grad[3], torch.zeros(D), atol=0, rtol=0)
    assert emb.word_embed.weight.grad[4].abs().sum() > 0


def test_dropout_only_in_training():
    emb = make_embedding(dropout=0.5)
    ids = torch.randint(0, VOCAB, (2, 9))
    expected = by_hand(emb, ids, torch.zeros_like(ids))
    assert_close(emb(ids), expected, atol=1e-5, rtol=1e-5)
    emb.train()
    assert not torch.allclose(emb(ids), expected, atol=1e-3)


def test_float_ids():
    with pytest.raises(TypeError, match=r"input_ids must be an integer tensor \(torch.long\), got dtype torch.float32"):
        make_embedding()(torch.zeros(2, 5))


def test_bool_ids():
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        make_embedding()(torch.zeros(2, 5, dtype=torch.bool))


@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 50, -1])
def test_ids_out_of_vocabulary(bad):
    ids = torch.randint(0, VOCAB, (2, 5))
    ids[1, 3] = bad
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 99\) \(the vocabulary size\)"):
        make_embedding()(ids)


def test_longer_than_max_seq_len():
    # (named as the models' encode_text(text) users meet it too: input_ids is the module's argument)
    with pytest.raises(
        ValueError,
        match=r"^input_ids \(the text's token ids\) has length 41, more than the 40 learned positions \(max_seq_len\)$",
    ):
        make_embedding()(torch.randint(0, VOCAB, (1, MAX_LEN + 1)))


@pytest.mark.parametrize("shape", [(5,), (2, 5, 1), (2, 0)])
def test_ids_must_be_batch_by_length(shape):
    with pytest.raises(ValueError, match=r"input_ids must have shape \(B, L\)"):
        make_embedding()(torch.zeros(shape, dtype=torch.long))


def test_token_type_ids_wrong_shape():
    ids = torch.randint(0, VOCAB, (2, 5))
    with pytest.raises(ValueError, match=r"token_type_ids must have the shape of input_ids \(2, 5\), got \(2, 4\)"):
        make_embedding()(ids, token_type_ids=torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("bad", [2, -1])
def test_token_type_ids_out_of_range(bad):
    ids = torch.randint(0, VOCAB, (2, 5))
    types = torch.zeros_like(ids)
    types[0, 1] = bad
    with pytest.raises(ValueError, match=r"token_type_ids must be in \[0, 2\)"):
        make_embedding()(ids, token_type_ids=types)


def test_float_token_type_ids():
    ids = torch.randint(0, VOCAB, (2, 5))
    with pytest.raises(TypeError, match="token_type_ids must be an integer tensor"):
        make_embedding()(ids, token_type_ids=torch.zeros(2, 5))


def test_ids_on_another_device_than_the_table_are_refused_naming_them():
    # meta ids into a CPU table gave a CPU output of garbage values, silently (on a GPU, torch's error)
    from torchflava.modules.layers import TokenEmbedding

    ids = torch.randint(0, VOCAB, (2, 5))
    for emb in (make_embedding(), TokenEmbedding(VOCAB, D, MAX_LEN)):
        with pytest.raises(ValueError, match=r"^input_ids must be on the model's device cpu, got meta$"):
            emb(ids.to("meta"))
        with pytest.raises(ValueError, match=r"^position_ids must be on the model's device cpu, got meta$"):
            emb(ids, position_ids=torch.zeros(2, 5, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match=r"^token_type_ids must be on the model's device cpu, got meta$"):
        make_embedding()(ids, token_type_ids=torch.zeros(2, 5, dtype=torch.long, device="meta"))
    with torch.device("meta"):
        meta = make_embedding()
    assert meta(ids.to("meta")).shape == (2, 5, D)  # one device: shapes alone, as before
    with pytest.raises(ValueError, match=r"^input_ids must be on the model's device meta, got cpu$"):
        meta(ids)


def test_token_type_and_position_ids_given_as_lists_are_refused_naming_them():
    # (an AttributeError on .shape before)
    emb, ids = make_embedding(), torch.randint(0, VOCAB, (2, 5))
    with pytest.raises(TypeError, match=r"^token_type_ids must be a torch.Tensor of token ids, got list$"):
        emb(ids, token_type_ids=[[0] * 5] * 2)
    with pytest.raises(TypeError, match=r"^position_ids must be a torch.Tensor of token ids, got list$"):
        emb(ids, position_ids=[list(range(5))] * 2)
