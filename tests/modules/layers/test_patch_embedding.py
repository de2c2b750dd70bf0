"""PatchEmbedding: shapes, CLS/positions, patch masking, position interpolation and input checks."""

import pytest
import torch
from torch.testing import assert_close

from torchflava.modules.layers import PatchEmbedding

B, C, SIZE, PATCH, D = 2, 3, 32, 8, 16
N = (SIZE // PATCH) ** 2  # 16


def make_embedding(**kwargs) -> PatchEmbedding:
    return PatchEmbedding(SIZE, PATCH, C, D, **kwargs).eval()


def patches(pe: PatchEmbedding, images: torch.Tensor) -> torch.Tensor:
    """The conv patch projections, (B, N, D), row-major over the patch grid."""
    return pe.proj(images).flatten(2).transpose(1, 2)


def test_shape_and_composition():
    pe = make_embedding()
    images = torch.randn(B, C, SIZE, SIZE)
    out = pe(images)
    assert out.shape == (B, 1 + N, D)
    assert pe.num_patches == N and pe.grid_size == SIZE // PATCH
    tokens = out - pe.pos_embed  # undo the positions
    assert_close(tokens[:, 0], pe.cls_token[0].expand(B, -1))
    assert_close(tokens[:, 1:], patches(pe, images))


def test_patch_order_is_row_major():
    pe = make_embedding()
    images = torch.zeros(1, C, SIZE, SIZE)
    images[:, :, 0:PATCH, PATCH : 2 * PATCH] = 1.0  # grid row 0, column 1 -> patch index 1
    tokens = (pe(images) - pe.pos_embed)[0, 1:]
    bias_only = pe.proj.bias.expand(N, -1).clone()
    changed = [i for i in range(N) if not torch.allclose(tokens[i], bias_only[i])]
    assert changed == [1]


def test_patch_mask_replaces_exactly_the_masked_patches():
    pe = make_embedding(use_mask_token=True)
    images = torch.randn(B, C, SIZE, SIZE)
    mask = torch.zeros(B, N, dtype=torch.bool)
    mask[0, [0, 5, 15]] = True
    mask[1, [3]] = True
    out = pe(images, patch_mask=mask)
    assert out.shape == (B, 1 + N, D)
    tokens = out - pe.pos_embed  # values before positions were added
    proj = patches(pe, images)
    assert_close(tokens[:, 1:][mask], pe.mask_token[0].expand(int(mask.sum()), -1))
    assert_close(tokens[:, 1:][~mask], proj[~mask])
    assert_close(tokens[:, 0], pe.cls_token[0].expand(B, -1))
    # An all-False mask is a no-op; an integer 0/1 mask acts like the boolean one.
    assert_close(pe(images, patch_mask=torch.zeros(B, N, dtype=torch.bool)), pe(images))
    assert_close(pe(images, patch_mask=mask.long()), out)


def test_patch_mask_on_the_patch_grid():
    pe = make_embedding(use_mask_token=True)
    images = torch.randn(B, C, SIZE, SIZE)
    grid_mask = torch.rand(B, SIZE // PATCH, SIZE // PATCH) < 0.4
    assert grid_mask.any() and not grid_mask.all()
    assert_close(pe(images, patch_mask=grid_mask), pe(images, patch_mask=grid_mask.flatten(1)))


def test_native_grid_returns_pos_embed_unchanged():
    pe = make_embedding()
    assert pe.position_embedding(SIZE // PATCH, SIZE // PATCH) is pe.pos_embed


def test_interpolated_positions_for_other_image_sizes():
    pe = make_embedding()
    images = torch.randn(B, C, 48, 24)  # 6 x 3 patch grid
    out = pe(images)
    assert out.shape == (B, 1 + 18, D)
    pos = pe.position_embedding(6, 3)
    assert pos.shape == (1, 1 + 18, D)
    assert_close(pos[:, 0], pe.pos_embed[:, 0])  # the CLS position is never interpolated
    tokens = out - pos
    assert_close(tokens[:, 0], pe.cls_token[0].expand(B, -1))
    assert_close(tokens[:, 1:], patches(pe, images))
    # Bicubic interpolation of constant patch positions stays constant.
    with torch.no_grad():
        pe.pos_embed[:, 1:] = torch.arange(D, dtype=torch.float32)
    assert_close(pe.position_embedding(5, 7)[0, 1:], torch.arange(D, dtype=torch.float32).expand(35, -1))


def test_interpolation_keeps_gradients_to_pos_embed():
    pe = make_embedding()
    pe(torch.randn(1, C, 40, 40)).sum().backward()
    assert pe.pos_embed.grad is not None and pe.pos_embed.grad[0, 1:].abs().sum() > 0


def test_patch_size_must_divide_image_size():
    with pytest.raises(ValueError, match="patch_size must divide image_size"):
        PatchEmbedding(30, 8, C, D)


def test_wrong_channel_count():
    pe = make_embedding()
    with pytest.raises(ValueError, match=r"image must have shape \(B, 3, H, W\) with B >= 1, got \(2, 1, 32, 32\)"):
        pe(torch.randn(2, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match="image must have shape"):
        pe(torch.randn(C, SIZE, SIZE))  # no batch dimension


@pytest.mark.parametrize("height, width", [(30, 30), (32, 20), (4, 32)])
def test_size_not_divisible_by_patch(height, width):
    pe = make_embedding()
    with pytest.raises(ValueError, match=f"multiples of patch_size=8, got {height}x{width}"):
        pe(torch.randn(1, C, height, width))


def test_integer_image():
    pe = make_embedding()
    with pytest.raises(TypeError, match="image must be a floating-point tensor, got dtype torch.uint8"):
        pe(torch.randint(0, 255, (1, C, SIZE, SIZE), dtype=torch.uint8))
    with pytest.raises(TypeError, match="image must be a torch.Tensor"):
        pe([[0.0]])


@pytest.mark.parametrize(
    "shape", [(B, N + 1), (B + 1, N), (N,), (B, 2, 8), (B, 4, 5)], ids=["N+1", "B+1", "1d", "2x8 grid", "4x5 grid"]
)
def test_patch_mask_wrong_shape(shape):
    pe = make_embedding(use_mask_token=True)
    with pytest.raises(ValueError, match=r"patch_mask must have shape \(B, N\) = \(2, 16\)"):
        pe(torch.randn(B, C, SIZE, SIZE), patch_mask=torch.zeros(shape, dtype=torch.bool))


def test_patch_mask_without_mask_token():
    pe = make_embedding(use_mask_token=False)
    assert pe.mask_token is None
    with pytest.raises(ValueError, match="patch_mask was given but this PatchEmbedding has no mask token"):
        pe(torch.randn(B, C, SIZE, SIZE), patch_mask=torch.zeros(B, N, dtype=torch.bool))


def test_float_patch_mask():
    pe = make_embedding(use_mask_token=True)
    with pytest.raises(TypeError, match="patch_mask must be a bool"):
        pe(torch.randn(B, C, SIZE, SIZE), patch_mask=torch.zeros(B, N))


def _conv_reference(embed: PatchEmbedding, images: torch.Tensor) -> torch.Tensor:
    x = torch.nn.functional.conv2d(images, embed.proj.weight, embed.proj.bias, stride=embed.patch_size)
    x = torch.cat([embed.cls_token.expand(len(images), -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    return embed.norm(x + embed.pos_embed)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_patch_gemm_equals_the_strided_conv_with_gradients(layout):
    torch.manual_seed(0)
    embed = PatchEmbedding(16, 4, 3, 8)
    images = torch.randn(2, 3, 16, 16)
    if layout == "channels_last":
        images = images.contiguous(memory_format=torch.channels_last)
    got = embed(images.requires_grad_())
    want = _conv_reference(embed, images)
    assert_close(got, want, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(got.pow(2).sum(), [images, embed.proj.weight, embed.proj.bias])
    want_grads = torch.autograd.grad(want.pow(2).sum(), [images, embed.proj.weight, embed.proj.bias])
    for g, w in zip(grads, want_grads):
        assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_hooks_and_parametrizations_on_the_projection_still_run():
    torch.manual_seed(0)
    embed = PatchEmbedding(16, 4, 3, 8)
    images = torch.randn(2, 3, 16, 16, requires_grad=True)
    calls = []
    embed.proj.register_forward_hook(lambda m, i, o: calls.append("forward"))
    embed.proj.register_full_backward_hook(lambda m, gi, go: calls.append("backward"))
    embed(images).sum().backward()
    assert calls == ["forward", "backward"]
    zeroed = PatchEmbedding(16, 4, 3, 8)  # a hook that replaces the projection's output is obeyed
    zeroed.proj.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    cls = zeroed.cls_token.expand(2, -1, -1)
    assert_close(zeroed(images), torch.cat([cls, torch.zeros(2, 16, 8)], 1) + zeroed.pos_embed)
    normed = PatchEmbedding(16, 4, 3, 8)
    torch.nn.utils.parametrizations.weight_norm(normed.proj)  # changes the module's class
    before = normed(images).detach()
    with torch.no_grad():
        normed.proj.parametrizations.weight.original0.mul_(2)
    assert not torch.allclose(normed(images), before)


def test_integer_patch_mask_holds_only_zeros_and_ones():
    """A 0/1 integer mask is a mask; 2 or -1 were taken as "masked", silently."""
    pe = make_embedding(use_mask_token=True).eval()
    images, mask = torch.randn(B, C, SIZE, SIZE), torch.zeros(B, N, dtype=torch.long)
    mask[0, 3] = 1
    assert torch.equal(pe(images, patch_mask=mask), pe(images, patch_mask=mask.bool()))
    for bad in (2, -1):
        mask[1, 5] = bad
        with pytest.raises(
            ValueError, match=rf"^patch_mask must hold only 0 and 1, got the values \[{min(0, bad)}, .*\]$"
        ):
            pe(images, patch_mask=mask)


def test_without_a_cls_token_the_patches_alone_are_embedded_at_any_grid():
    """A ViT pooled over its patches (no CLS): before, every PatchEmbedding prepended a CLS token, which
    the patches then attended to (a learnt extra token, not the model asked for)."""
    torch.manual_seed(0)
    pe = make_embedding(use_cls_token=False, use_mask_token=True)
    assert pe.cls_token is None and pe.pos_embed.shape == (1, N, D)
    assert sorted(name for name, _ in pe.named_parameters()) == ["mask_token", "pos_embed", "proj.bias", "proj.weight"]
    images = torch.randn(B, C, SIZE, SIZE)
    assert_close(pe(images), patches(pe, images) + pe.pos_embed)
    mask = torch.zeros(B, N, dtype=torch.bool)
    mask[0, 3] = True
    assert_close(pe(images, patch_mask=mask)[0, 3], pe.mask_token[0, 0] + pe.pos_embed[0, 3])
    # another grid: the patch positions interpolated as with a CLS token
    with_cls = make_embedding()
    with torch.no_grad():
        with_cls.pos_embed[:, 1:] = pe.pos_embed
        with_cls.proj.load_state_dict(pe.proj.state_dict())
    wide = torch.randn(B, C, SIZE, 2 * SIZE)
    assert pe(wide).shape == (B, 2 * N, D)
    assert_close(pe(wide), with_cls(wide)[:, 1:])
    with pytest.raises(TypeError, match="use_cls_token"):
        make_embedding(use_cls_token=1)


def test_images_and_patch_mask_on_another_device_are_refused_naming_them():
    # (torch's "Tensor on device cpu is not on the expected device meta!" named neither)
    emb, images = PatchEmbedding(32, 8, 3, 16, use_mask_token=True), torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"^image must be on the model's device cpu, got meta$"):
        emb(images.to("meta"))
    with pytest.raises(ValueError, match=r"^patch_mask must be on the image's device cpu, got meta$"):
        emb(images, patch_mask=torch.zeros(2, 16, dtype=torch.bool, device="meta"))
    with torch.device("meta"):
        meta = PatchEmbedding(32, 8, 3, 16)
    assert meta(images.to("meta")).shape == (2, 17, 16)
