"""Sequence packing: layout of pack_batch, and a packed encoder pass equal to the padded one."""

import pytest
import torch
from torch.testing import assert_close

from tests.helpers import padded_text
from torchflava.models import flava_text_encoder
from torchflava.modules.encoders import TextEncoder
from torchflava.modules.encoders.builders import transformer_encoder
from torchflava.modules.layers.text_embedding import TokenEmbedding
from torchflava.modules.packing import can_pack, encode_packed, encode_rows, pack_batch


def test_pack_batch_layout():
    ids, mask = padded_text(5, 10, 50, [10, 3, 7, 1, 8])
    packed = pack_batch(ids, mask == 0, max_tokens=12)
    # Greedy at 12 needs 3 packs (10 | 3 + 7 + 1 | 8); 10 tokens per pack is the least that still
    # gives 3 packs, so T = 10 and the packs hold rows [0], [1, 2], [3, 4].
    assert packed.input_ids.shape == (3, 10)
    assert packed.pack_of_row.tolist() == [0, 1, 1, 2, 2]
    assert packed.first_slot.tolist() == [0, 0, 3, 0, 1]
    assert packed.last_slot.tolist() == [9, 2, 9, 0, 8]
    assert packed.row_in_pack.tolist() == [0, 0, 1, 0, 1]
    assert_close(packed.input_ids[1], torch.cat([ids[1, :3], ids[2, :7]]))
    assert_close(packed.position_ids[1], torch.tensor([0, 1, 2, 0, 1, 2, 3, 4, 5, 6]))
    assert_close(packed.input_ids[2], torch.cat([ids[3, :1], ids[4, :8], torch.zeros(1, dtype=ids.dtype)]))
    assert_close(packed.position_ids[2], torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 7, 0]))
    assert packed.real.sum(dim=1).tolist() == [10, 10, 9]
    blocked = packed.attn_mask[1]
    assert not blocked[:3, :3].any() and not blocked[3:, 3:].any()
    assert blocked[:3, 3:].all() and blocked[3:, :3].all()
    assert not packed.attn_mask[0].any()  # one row filling its pack: nothing blocked
    # Pack 2: row 3 (slot 0), row 4 (slots 1-8) and an unused slot 9, which attends to itself alone
    # and to which no real token attends.
    blocked = packed.attn_mask[2]
    assert not blocked[0, 0] and blocked[0, 1:].all() and not blocked[1:9, 1:9].any()
    assert blocked[9].tolist() == [True] * 9 + [False] and blocked[:9, 9].all()


@pytest.mark.parametrize(
    "lengths, max_tokens, shape",
    [
        ([20, 20, 20, 20], 40, (2, 40)),  # exactly full
        ([5, 5, 5, 5, 5, 5], 100, (1, 30)),  # everything in one pack
        ([30, 2, 2], 10, (2, 30)),  # a row longer than the budget gets a pack of its own
        ([9, 1, 1, 9], 10, (2, 10)),  # balanced: [9, 1] [1, 9] rather than [9, 1] [1] [9]
    ],
)
def test_pack_batch_sizes(lengths, max_tokens, shape):
    ids, mask = padded_text(len(lengths), max(lengths), 50, lengths)
    packed = pack_batch(ids, mask == 0, max_tokens=max_tokens)
    assert tuple(packed.input_ids.shape) == shape
    assert int(packed.real.sum()) == sum(lengths)
    assert_close(packed.input_ids[packed.real], ids[mask.bool()])  # every real token once, in order


def test_packed_text_encoder_matches_padded():
    encoder = flava_text_encoder(embed_dim=24, num_layers=2, num_heads=3, mlp_dim=40, vocab_size=99, max_seq_len=40)
    encoder.eval()
    ids, mask = padded_text(6, 20, 99, [20, 4, 11, 1, 17, 9])
    padding = mask == 0
    types = torch.randint(0, 2, ids.shape)
    with torch.no_grad():
        padded = encoder(ids, padding_mask=padding, token_type_ids=types).last_hidden_state
        packed = pack_batch(ids, padding, token_type_ids=types, max_tokens=25)
        assert packed.input_ids.shape[0] == 4  # [20, 4] [11, 1] [17] [9]
        out = encoder(
            packed.input_ids,
            token_type_ids=packed.token_type_ids,
            position_ids=packed.position_ids,
            attn_mask=packed.attn_mask,
        ).last_hidden_state
        assert_close(out[packed.real], padded[~padding], atol=1e-5, rtol=0)
        assert_close(out[packed.pack_of_row, packed.first_slot], padded[:, 0], atol=1e-5, rtol=0)


def test_pack_batch_takes_any_padding_and_rejects_bad_arguments():
    ids, mask = padded_text(2, 6, 50, [6, 3])
    holes = mask.flip(1).clone()  # row 1: left padding, then a hole in the middle
    holes[1, 4] = 0
    assert not can_pack(holes == 0)
    packed = pack_batch(ids, holes == 0)
    assert packed.first_slot.tolist() == [0, 6] and packed.last_slot.tolist() == [5, 7]
    assert_close(packed.input_ids[0, 6:], ids[1, [3, 5]])
    assert_close(packed.position_ids[0, 6:], torch.tensor([3, 5]))  # tokens keep their columns
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"real token in every row, got rows \[1\] all padding"):
        pack_batch(ids, empty == 0)
    with pytest.raises(ValueError, match="padding_mask must have"):
        pack_batch(ids, (mask == 0)[:, :4])
    with pytest.raises(ValueError, match="token_type_ids must have"):
        pack_batch(ids, mask == 0, token_type_ids=ids[:, :3])
    with pytest.raises(ValueError, match="max_tokens"):
        pack_batch(ids, mask == 0, max_tokens=0)
    with pytest.raises(ValueError, match="output: expected 'first' or 'last'"):
        encode_packed(None, ids, mask == 0, output="middle")


def _causal_encoder() -> TextEncoder:
    """A causal text tower (CLIP's kind): vocabulary 99, width 24, 20 positions."""
    return TextEncoder(
        TokenEmbedding(99, 24, 20),
        transformer_encoder(embed_dim=24, num_layers=2, num_heads=3, mlp_dim=40, is_causal=True),
        torch.nn.LayerNorm(24),
    ).eval()


@pytest.mark.parametrize("max_tokens", [40, 9])
def test_encode_packed_causal_last_and_bidirectional_first(max_tokens):
    # A causal encoder (CLIP's text tower): each row's last kept token, packed, equals the padded pass.
    causal = _causal_encoder()
    ids, mask = padded_text(5, 20, 99, [20, 4, 11, 1, 17])
    mask[2, :3] = 0  # left padding in one row
    padding = mask == 0
    last = 19 - (~padding).flip(1).int().argmax(dim=1)  # column of each row's last real token
    with torch.no_grad():
        padded = causal(ids, padding_mask=padding).last_hidden_state[torch.arange(5), last]
        assert_close(
            encode_packed(causal, ids, padding, output="last", max_tokens=max_tokens), padded, atol=1e-5, rtol=0
        )
    # A bidirectional one (FLAVA's): the CLS of each row.
    bert = flava_text_encoder(embed_dim=24, num_layers=2, num_heads=3, mlp_dim=40, vocab_size=99, max_seq_len=20).eval()
    ids, mask = padded_text(5, 20, 99, [20, 4, 11, 1, 17])
    types = torch.randint(0, 2, ids.shape)
    with torch.no_grad():
        padded = bert(ids, padding_mask=mask == 0, token_type_ids=types).last_hidden_state[:, 0]
        packed = encode_packed(bert, ids, mask == 0, token_type_ids=types, max_tokens=max_tokens)
        assert_close(packed, padded, atol=1e-5, rtol=0)


def test_encode_rows_packs_where_it_serves_and_runs_padded_elsewhere(monkeypatch):
    import torchflava.modules.packing as packing

    causal = _causal_encoder()
    bert = flava_text_encoder(embed_dim=24, num_layers=2, num_heads=3, mlp_dim=40, vocab_size=99, max_seq_len=20).eval()
    ids, mask = padded_text(4, 20, 99, [20, 4, 11, 17])
    left = mask.clone()
    left[1, 0] = 0  # a row whose CLS is padding: cannot be packed, runs padded
    packs = []
    monkeypatch.setattr(packing, "encode_packed", lambda *a, **k: packs.append(1) or encode_packed(*a, **k))
    last = 19 - mask.flip(1).argmax(dim=1)
    with torch.no_grad():
        for encoder, output, leave_out, packed in (
            (causal, "last", mask == 0, True),
            (causal, "last", None, False),
            (bert, "first", mask == 0, True),
            (bert, "first", left == 0, False),
            (bert, "first", torch.zeros_like(mask, dtype=torch.bool), False),  # nothing to leave out
        ):
            packs.clear()
            full = encoder(ids, padding_mask=leave_out).last_hidden_state
            expected = full[torch.arange(4), last if leave_out is not None else 19] if output == "last" else full[:, 0]
            got = packing.encode_rows(encoder, ids, leave_out, output=output, max_tokens=40)
            assert_close(got, expected, atol=1e-5, rtol=0)
            assert bool(packs) == packed
        compiled = torch.compile(packing.encode_rows, fullgraph=True, backend="eager")  # a graph runs padded
        expected = causal(ids, padding_mask=mask == 0).last_hidden_state[torch.arange(4), last]
        assert_close(compiled(causal, ids, mask == 0, output="last"), expected, atol=1e-5, rtol=0)


def test_a_row_longer_than_the_budget_leaves_no_pack_empty_or_over_budget():
    """[20, 5, 6] at a budget of 10 gave packs holding [20, 11, 0] tokens: one over budget, one empty."""
    for lengths, budget in (([20, 5, 6], 10), ([77] + [4] * 16, 8)):
        width = max(lengths)
        mask = torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None]  # right padding
        packed = pack_batch(torch.ones(len(lengths), width, dtype=torch.long), mask, max_tokens=budget)
        per_pack = packed.real.sum(dim=1).tolist()  # real tokens in each pack
        assert all(t > 0 for t in per_pack), per_pack
        assert all(t <= budget or t == max(lengths) for t in per_pack), per_pack


@pytest.mark.parametrize(
    "mask, budget, error, match",
    [
        (torch.tensor([[0, 0, 1]]), 8, TypeError, "padding_mask must be a bool tensor"),  # negative lengths
        (torch.tensor([[False, False, True]]), "8", TypeError, "max_tokens must be an int"),
        (torch.tensor([[False, False, True]]), 2.5, TypeError, "max_tokens must be an int"),
        (torch.zeros(0, 3, dtype=torch.bool), 8, ValueError, "padding_mask must have the"),  # min() of nothing
    ],
)
def test_pack_batch_names_bad_input(mask, budget, error, match):
    with pytest.raises(error, match=match):
        pack_batch(torch.ones(mask.shape, dtype=torch.long), mask, max_tokens=budget)


def test_encode_rows_checks_output_on_every_path():
    from torchflava.modules.encoders import transformer_encoder
    from torchflava.modules.packing import encode_rows

    with pytest.raises(ValueError, match="output: expected 'first' or 'last', got 'LAST'"):
        encode_rows(
            transformer_encoder(embed_dim=8, num_layers=1, num_heads=2, mlp_dim=16),
            torch.ones(2, 3, dtype=torch.long),
            None,
            output="LAST",
        )


def test_encode_rows_names_a_bad_leave_out_encoder_or_budget_on_every_path():
    """A leave_out narrower than the batch that left nothing out ran the padded batch and returned each row's
    output at the wrong column, silently; the budget was checked on the packed path only."""
    from torchflava.modules.encoders import transformer_encoder
    from torchflava.modules.packing import encode_rows

    encoder = transformer_encoder(embed_dim=8, num_layers=1, num_heads=2, mlp_dim=16)
    ids = torch.ones(2, 6, dtype=torch.long)
    narrow = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(
        ValueError, match=r"^leave_out must have the shape of input_ids torch.int64 of shape \(2, 6\), got \(2, 3\)$"
    ):
        encode_rows(encoder, ids, narrow, output="last")
    with pytest.raises(
        TypeError, match=r"^leave_out must be a bool tensor \(True = leave out\) or None, got torch.int64 of"
    ):
        encode_rows(encoder, ids, torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="^max_tokens must be >= 1, got 0$"):
        encode_rows(encoder, ids, None, max_tokens=0)
    with pytest.raises(TypeError, match="^encoder must be an nn.Module, got NoneType$"):
        encode_rows(None, ids, None)


def test_pack_batch_names_float_ids_and_token_type_ids_that_are_no_tensor():
    ids, mask = padded_text(2, 6, 50, [6, 3])
    with pytest.raises(TypeError, match="^input_ids must be an integer tensor of token ids, got torch.float32$"):
        pack_batch(ids.float(), mask == 0)  # packed as floats before
    with pytest.raises(TypeError, match="^token_type_ids must be an integer tensor or None, got list$"):
        pack_batch(ids, mask == 0, token_type_ids=[[0] * 6] * 2)  # AttributeError before


def test_masks_on_another_device_than_the_ids_are_refused_naming_them():
    # (a meta mask failed inside torch: on a copy out of it, or on Tensor.item())
    ids, mask = padded_text(2, 5, 20, [5, 3])
    padding = (mask == 0).to("meta")
    with pytest.raises(ValueError, match=r"^padding_mask must be on input_ids' device cpu, got meta$"):
        pack_batch(ids, padding)
    encoder = flava_text_encoder(embed_dim=8, num_layers=1, num_heads=2, mlp_dim=16, vocab_size=20, max_seq_len=6)
    with pytest.raises(ValueError, match=r"^leave_out must be on input_ids' device cpu, got meta$"):
        encode_rows(encoder, ids, padding)


def test_token_type_ids_on_another_device_than_the_ids_are_refused_naming_them():
    ids, mask = padded_text(2, 5, 20, [5, 3])
    with pytest.raises(ValueError, match=r"^token_type_ids must be on input_ids' device cpu, got meta$"):
        pack_batch(ids, mask == 0, token_type_ids=torch.zeros_like(ids, device="meta"))  # failed inside torch
    encoder = flava_text_encoder(embed_dim=8, num_layers=1, num_heads=2, mlp_dim=16, vocab_size=20, max_seq_len=6)
    with pytest.raises(ValueError, match=r"^token_type_ids must be on input_ids' device cpu, got meta$"):
        encode_packed(encoder, ids, mask == 0, token_type_ids=torch.zeros_like(ids, device="meta"))


def test_meta_batches_run_padded_and_pack_batch_refuses_them_naming_the_mask():
    # (packing reads the rows' lengths: on the meta device that failed inside torch, on Tensor.item())
    with torch.device("meta"):
        encoder = flava_text_encoder(embed_dim=8, num_layers=1, num_heads=2, mlp_dim=16, vocab_size=20, max_seq_len=6)
    ids, mask = padded_text(2, 5, 20, [5, 3])
    ids, padding = ids.to("meta"), (mask == 0).to("meta")
    for output in ("first", "last"):
        out = encode_rows(encoder, ids, padding, output=output)
        assert out.is_meta and out.shape == (2, 8)
    with pytest.raises(
        ValueError, match=r"^padding_mask: expected a tensor with values to pack the rows by, got one on"
    ):
        pack_batch(ids, padding)
