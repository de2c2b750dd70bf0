"""Computing only some output positions in the last layer gives exactly those rows of the full output."""

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
