"""Computing only some output positions in the last layer gives exactly those rows of the full output."""

import pytest
import torch

from torchflava.models.flava import flava_image_encoder
from torchflava.modules.encoders import transformer_encoder


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
