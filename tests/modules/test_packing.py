import pytest
import torch

from torchflava.models import flava_text_encoder
from torchflava.modules.packing import can_pack, pack_rows
from tests.helpers import padded_text


def test_pack_rows_layout():
    ids, mask = padded_text(5, 10, 50, [10, 3, 7, 1, 9])
    packs = pack_rows(ids, mask == 0, max_tokens=12)
    # 10 | 3 + 7 + 1 = 11 <= 12 | 9: rows are packed in order while they fit.
    assert [(p.rows.start, p.rows.stop) for p in packs] == [(0, 1), (1, 4), (4, 5)]
    # Rows 1, 2, 3 (3, 7 and 1 tokens): positions restart, CLS indices at 0, 3 and 10.
    torch.testing.assert_close(packs[1].position_ids, torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 0]]))
    torch.testing.assert_close(packs[1].input_ids, torch.cat([ids[1, :3], ids[2, :7], ids[3, :1]])[None])
    assert packs[1].first_token.tolist() == [0, 3, 10]
    blocked = packs[1].attn_mask[0]
    assert not blocked[:3, :3].any() and not blocked[3:10, 3:10].any() and not blocked[10, 10]
    assert blocked[:3, 3:].all() and blocked[3:10, :3].all() and blocked[3:10, 10].all() and blocked[10, :10].all()
    assert packs[0].attn_mask is None  # a single row needs no mask


def test_packed_text_encoder_matches_padded():
    encoder = flava_text_encoder(embed_dim=24, num_layers=2, num_heads=3, mlp_dim=40, vocab_size=99, max_seq_len=40)
    encoder.eval()
    ids, mask = padded_text(6, 20, 99, [20, 4, 11, 1, 17, 9])
    padding = mask == 0
    types = torch.randint(0, 2, ids.shape)
    with torch.no_grad():
        padded = encoder(ids, padding_mask=padding, token_type_ids=types).last_hidden_state
        for pack in pack_rows(ids, padding, token_type_ids=types, max_tokens=25):
            out = encoder(
                pack.input_ids,
                token_type_ids=pack.token_type_ids,
                position_ids=pack.position_ids,
                attn_mask=pack.attn_mask,
            ).last_hidden_state[0]
            real = ~padding[pack.rows]
            torch.testing.assert_close(out, padded[pack.rows][real], atol=1e-5, rtol=0)


def test_pack_rows_rejects_left_padding_and_bad_shapes():
    ids, mask = padded_text(2, 6, 50, [6, 3])
    left = mask.flip(1) == 0
    assert not can_pack(left)
    with pytest.raises(ValueError, match="column 0"):
        pack_rows(ids, left)
    with pytest.raises(ValueError, match="padding_mask must have shape"):
        pack_rows(ids, (mask == 0)[:, :4])
