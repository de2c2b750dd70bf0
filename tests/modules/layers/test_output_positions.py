"""Computing only some output positions in the last layer gives exactly those rows of the full output."""

import pytest
import torch

from torchflava.models.flava import flava_image_encoder
from torchflava.modules.encoders import transformer_encoder
from torchflava.modules.layers import TransformerEncoder


def test_encoder_output_positions_match_full_output():
    encoder = transformer_encoder(embed_dim=16, num_layers=3, num_heads=2, mlp_dim=24).eval()
    x = torch.randn(3, 9, 16)
    padding = torch.zeros(3, 9, dtype=torch.bool)
    padding[1, 6:] = True
    blocked = torch.rand(3, 9, 9) > 0.7
    blocked[:, torch.arange(9), torch.arange(9)] = False  # every query keeps itself
    positions = torch.tensor([0, 4, 8])
    with torch.no_grad():
        full = encoder(x, key_padding_mask=padding, attn_mask=blocked, return_hidden_states=True)
        part = encoder(
            x, key_padding_mask=padding, attn_mask=blocked, output_positions=positions, return_hidden_states=True
        )
        cls = encoder(x, key_padding_mask=padding, attn_mask=blocked, output_positions=slice(0, 1))
    assert part.last_hidden_state.shape == (3, 3, 16)
    torch.testing.assert_close(part.last_hidden_state, full.last_hidden_state[:, positions], atol=1e-6, rtol=0)
    torch.testing.assert_close(cls.last_hidden_state, full.last_hidden_state[:, :1], atol=1e-6, rtol=0)
    for a, b in zip(part.hidden_states[:-1], full.hidden_states[:-1]):
        torch.testing.assert_close(a, b)


def test_output_positions_gradients_match():
    encoder = flava_image_encoder(embed_dim=16, num_layers=2, num_heads=2, mlp_dim=24, image_size=16, patch_size=8)
    images = torch.randn(2, 3, 16, 16)
    full = encoder(images, return_pooled=False).last_hidden_state[:, 0].square().sum()
    grads_full = torch.autograd.grad(full, list(encoder.parameters()), allow_unused=True)
    part = encoder(images, output_positions=slice(0, 1), return_pooled=False).last_hidden_state[:, 0].square().sum()
    grads_part = torch.autograd.grad(part, list(encoder.parameters()), allow_unused=True)
    torch.testing.assert_close(part, full, atol=1e-5, rtol=0)
    for gf, gp in zip(grads_full, grads_part):
        if gf is None:
            assert gp is None
        else:
            torch.testing.assert_close(gp, gf, atol=1e-4, rtol=1e-4)


def _attention_and_input():
    from torchflava.modules.layers import MultiHeadSelfAttention

    torch.manual_seed(0)
    return MultiHeadSelfAttention(32, 4).eval(), torch.randn(2, 7, 32)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_positions_of_any_integer_dtype_are_indices(dtype):
    """torch indexes with uint8 as a mask: [6, 5, 4, 3, 2, 1, 1] gave positions 0..6 (0.21 off)."""
    attention, x = _attention_and_input()
    index = torch.tensor([6, 5, 4, 3, 2, 1, 1])
    with torch.no_grad():
        full = attention(x)[:, index]
        assert torch.allclose(attention(x, query_positions=index.to(dtype)), full, atol=1e-6)
        per_row = torch.tensor([[3, 1], [0, 6]])
        assert torch.allclose(
            attention(x, query_positions=per_row.to(dtype)), attention(x)[torch.arange(2)[:, None], per_row], atol=1e-6
        )


def test_positions_out_of_range_are_named_in_one_line():
    attention, x = _attention_and_input()
    with pytest.raises(ValueError, match=r"positions must be indices in \[-7, 7\), got \[7\]"):
        attention(x, query_positions=torch.tensor([7]))  # was an IndexError from inside torch


def test_the_query_shortcut_calls_a_hooked_or_subclassed_qkv():
    """It sliced qkv's weight, so a hook on qkv (or a LoRA-style subclass) was bypassed: 0.76 off."""
    from torchflava.modules.layers import Linear

    attention, x = _attention_and_input()
    calls = []
    handle = attention.qkv.register_forward_hook(lambda module, args, out: calls.append(1) or out * 1.5)
    with torch.no_grad():
        full = attention(x)[:, :1]
        calls.clear()
        assert torch.allclose(attention(x, query_positions=slice(0, 1)), full, atol=1e-6) and calls == [1]
    handle.remove()

    class Scaled(Linear):
        def forward(self, x):
            return super().forward(x) * 2.0

    scaled = Scaled(32, 96)
    scaled.load_state_dict(attention.qkv.state_dict())
    attention.qkv = scaled
    with torch.no_grad():
        assert torch.allclose(attention(x, query_positions=slice(0, 1)), attention(x)[:, :1], atol=1e-6)


def test_an_empty_stack_restricts_its_output_to_the_positions_asked():
    from torchflava.modules.layers import TransformerEncoder

    x = torch.randn(2, 5, 16)
    out = TransformerEncoder([])(x, output_positions=slice(0, 1), return_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 1, 16) and torch.equal(out.last_hidden_state, x[:, :1])  # was (2, 5, 16)
    assert torch.equal(out.hidden_states[-1], x[:, :1])


def test_bf16_attention_under_torch_func_takes_sdpa():
    """The matmul path is an autograd.Function without setup_context: torch.func.grad raised."""
    attention, x = _attention_and_input()
    attention.train()

    def loss(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return attention(x).float().pow(2).sum()

    grad = torch.func.grad(loss)(x)
    x.requires_grad_(True)
    loss(x).backward()
    assert torch.allclose(grad, x.grad, rtol=0.05, atol=0.05 * x.grad.abs().max().item())


def test_mlp_never_overwrites_its_input_when_fc1_returns_it():
    from torch import nn

    from torchflava.modules.layers import MLP

    mlp = MLP(16, 16)
    mlp.fc1 = nn.Identity()
    x = torch.randn(2, 3, 16)
    before = x.clone()
    with torch.no_grad():
        mlp(x)
    assert torch.equal(x, before)  # GELU ran in place on fc1's "fresh" output: the caller's x


def _mask(rows: list[list[int]], length: int) -> torch.Tensor:
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for row, positions in enumerate(rows):
        mask[row, positions] = True
    return mask


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bf16", [False, True])
def test_a_mask_of_output_positions_computes_each_rows_own_positions(causal, bf16):
    """A (B, S) bool mask: rows with all, one or a few positions in one call; the selected outputs
    and every gradient equal the full computation's, the others are zeros; the last layer runs its
    projections and MLP on the selected positions alone."""
    torch.manual_seed(0)
    encoder = transformer_encoder(embed_dim=16, num_layers=2, num_heads=2, mlp_dim=24, is_causal=causal).train()
    x = torch.randn(4, 9, 16)
    padding = torch.zeros(4, 9, dtype=torch.bool)
    padding[3, 7:] = True
    mask = _mask([list(range(9)), [0], [0, 3, 5, 8], []], 9)
    weights = torch.randn(4, 9, 16)
    rows = []
    encoder.layers[-1].mlp.fc1.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    results = []
    for positions in (None, mask):
        x_ = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = encoder(x_, key_padding_mask=padding, output_positions=positions).last_hidden_state
        loss = (out.float() * weights * mask[..., None]).sum()
        grads = torch.autograd.grad(loss, [x_, *encoder.parameters()])
        results.append((out.float(), grads))
    (full, full_grads), (part, part_grads) = results
    assert rows[-1] == int(mask.sum()) == 14  # (T, D): 9 + 1 + 4 + 0 rows
    assert part.shape == full.shape
    tolerance = dict(atol=2e-2, rtol=2e-2) if bf16 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part[mask], full[mask], **tolerance)
    assert torch.equal(part[~mask], torch.zeros_like(part[~mask]))
    for got, expected in zip(part_grads, full_grads):
        torch.testing.assert_close(got, expected, **tolerance)


def test_a_mask_of_output_positions_in_the_attention_and_its_checks():
    attention, x = _attention_and_input()
    mask = _mask([[1, 6], [0, 2, 3, 4]], 7)
    with torch.no_grad():
        full = attention(x)
        part = attention(x, query_positions=mask)
    assert part.shape == (6, 32)  # (T, D), row-major
    torch.testing.assert_close(part, full[mask], atol=1e-6, rtol=0)
    with pytest.raises(
        ValueError, match=r"query_positions as a bool mask must have shape \(B, S\) = \(2, 7\), got \(2, 6\)"
    ):
        attention(x, query_positions=torch.ones(2, 6, dtype=torch.bool))
    encoder = transformer_encoder(embed_dim=32, num_layers=1, num_heads=4, mlp_dim=8)
    with pytest.raises(
        ValueError, match=r"output_positions as a bool mask must have shape \(B, S\) = \(2, 7\), got \(7,\)"
    ):
        encoder(x, output_positions=torch.ones(7, dtype=torch.bool))


def test_a_mask_of_output_positions_compiles_to_the_same_values():
    """Compiled, the stack computes every position and zeroes the unselected ones (no data-dependent shape)."""
    torch.manual_seed(0)
    encoder = transformer_encoder(embed_dim=16, num_layers=2, num_heads=2, mlp_dim=24).eval()
    x, mask = torch.randn(3, 5, 16), _mask([[0], [1, 2, 4], list(range(5))], 5)
    with torch.no_grad():
        eager = encoder(x, output_positions=mask).last_hidden_state
        compiled = torch.compile(encoder, fullgraph=True)(x, output_positions=mask).last_hidden_state
        empty = TransformerEncoder([])(x, output_positions=mask)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    assert torch.equal(empty.last_hidden_state, x * mask[..., None])


def test_a_mask_of_output_positions_on_the_meta_device_is_refused_naming_it():
    """What a bool mask selects depends on its values, which a meta tensor has not: a dry run of shapes with one
    failed inside torch's nonzero (NotImplementedError, naming nothing); indices run there."""
    with torch.device("meta"):
        encoder = transformer_encoder(embed_dim=16, num_layers=2, num_heads=2, mlp_dim=24)
        x, mask = torch.randn(2, 5, 16), torch.zeros(2, 5, dtype=torch.bool)
        with pytest.raises(ValueError, match=r"^output_positions as a bool mask selects by its values, which a meta"):
            encoder(x, output_positions=mask)
        assert encoder(x, output_positions=torch.zeros(2, 1, dtype=torch.long)).last_hidden_state.shape == (2, 1, 16)
