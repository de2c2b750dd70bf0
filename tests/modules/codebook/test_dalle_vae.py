"""The DALL-E dVAE encoder: shapes, token layout, freezing, sizes of the published encoder, bad input.

Numerical parity with the Hugging Face and torchmultimodal encoders is tested in
``tests/models/flava/test_convert_codebook.py``.
"""

import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.testing import assert_close

from torchflava.modules.codebook import DalleEncoder, DalleResidualBlock, dalle_encoder, map_pixels

TINY = dict(hidden_dim=16, blocks_per_group=1, vocab_size=40)


def _tiny(**overrides) -> DalleEncoder:
    return dalle_encoder(**{**TINY, **overrides})


def _pixels(batch: int = 2, height: int = 32, width: int = 48) -> torch.Tensor:
    """Mapped pixels: an 8x8-cell mosaic of random colours, so that token cells differ."""
    cells = torch.rand(batch, 3, height // 8, width // 8)
    return map_pixels(F.interpolate(cells, scale_factor=8, mode="nearest"))


# ------------------------------------------------------------------------------------------ shapes


def test_logits_shape_and_dtype():
    encoder = _tiny()
    logits = encoder(_pixels(2, 32, 48))
    assert logits.shape == (2, 40, 4, 6)
    assert logits.dtype == torch.float32


@pytest.mark.parametrize(
    "encoder_dtype, pixel_dtype",
    [(torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.float64, torch.float32)]
    + [(torch.float32, torch.float64), (torch.float32, torch.bfloat16)],
)
def test_pixels_of_another_dtype_are_cast_to_the_encoder(encoder_dtype, pixel_dtype):
    # a data pipeline's fp32 pixels into a model cast with .to(bfloat16): the conv refused them
    encoder, pixels = _tiny().to(encoder_dtype), _pixels(2, 16, 24).to(pixel_dtype)
    logits = encoder(pixels)
    assert logits.dtype == encoder_dtype
    assert_close(logits, encoder(pixels.to(encoder_dtype)), atol=0, rtol=0)
    assert torch.equal(encoder.tokens(pixels), encoder.tokens(pixels.to(encoder_dtype)))


def test_float64_pixels_under_autocast_give_the_float32_ones_logits():
    encoder, pixels = _tiny(), _pixels(2, 16, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = encoder(pixels.double())  # autocast casts no fp64 tensor: fp32 first, then bf16
        assert_close(logits, encoder(pixels), atol=0, rtol=0)
    assert logits.dtype == torch.bfloat16


def test_tokens_are_row_major_argmax_of_logits():
    encoder = _tiny()
    pixels = _pixels(2, 32, 48)
    tokens = encoder.tokens(pixels)
    assert tokens.shape == (2, 4 * 6)
    assert tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 40
    logits = encoder(pixels)
    assert torch.equal(tokens.view(2, 4, 6), logits.argmax(dim=1))
    # Row-major: token (r, c) of the grid is entry r * 6 + c.
    assert int(tokens[1, 2 * 6 + 5]) == int(logits[1, :, 2, 5].argmax())


def test_tokens_of_a_batch_equal_tokens_of_each_image():
    encoder = _tiny()
    pixels = _pixels(3, 16, 24)
    batch = encoder.tokens(pixels)
    singles = torch.cat([encoder.tokens(pixels[i : i + 1]) for i in range(3)])
    assert torch.equal(batch, singles)


def test_token_grid_of_a_112_px_image_is_14_by_14():
    encoder = _tiny()
    assert encoder.tokens(_pixels(1, 112, 112)).shape == (1, 196)


def test_properties():
    encoder = _tiny(in_channels=1)
    assert (encoder.in_channels, encoder.vocab_size, encoder.downsample) == (1, 40, 8)
    assert encoder.tokens(map_pixels(torch.rand(1, 1, 8, 16))).shape == (1, 2)


# ----------------------------------------------------------------------------------- architecture


def test_published_encoder_sizes():
    """dalle_encoder() is the published dVAE: 53,786,240 parameters (as transformers' FlavaImageCodebook)."""
    with torch.device("meta"):
        encoder = dalle_encoder()
    assert sum(p.numel() for p in encoder.parameters()) == 53_786_240
    assert tuple(encoder.stem.weight.shape) == (256, 3, 7, 7)
    assert [g[0].conv4.out_channels for g in encoder.groups] == [256, 512, 1024, 2048]
    assert [len(g) for g in encoder.groups] == [2, 2, 2, 2]
    assert tuple(encoder.head.weight.shape) == (8192, 2048, 1, 1)
    assert tuple(encoder.groups[1][0].conv1.weight.shape) == (128, 256, 3, 3)  # residual path: out / 4
    assert {b.post_gain for g in encoder.groups for b in g} == {1 / 64}


@pytest.mark.parametrize("blocks_per_group, post_gain", [(1, 1 / 16), (2, 1 / 64), (3, 1 / 144)])
def test_post_gain_is_inverse_square_of_block_count(blocks_per_group, post_gain):
    with torch.device("meta"):
        encoder = _tiny(blocks_per_group=blocks_per_group)
    gains = [b.post_gain for g in encoder.groups for b in g]
    assert len(gains) == 4 * blocks_per_group
    assert gains == [pytest.approx(post_gain)] * len(gains)


def test_skip_path_is_identity_only_where_width_is_kept():
    encoder = _tiny(blocks_per_group=2)
    skips = [type(b.skip) for g in encoder.groups for b in g]
    assert skips == [nn.Identity, nn.Identity, nn.Conv2d, nn.Identity, nn.Conv2d, nn.Identity, nn.Conv2d, nn.Identity]


def test_residual_block_is_skip_plus_scaled_residual_path():
    block = DalleResidualBlock(8, 16, post_gain=0.25)
    x = torch.randn(2, 8, 5, 7)
    h = x
    for conv in (block.conv1, block.conv2, block.conv3, block.conv4):
        h = conv(torch.relu(h))
    expected = block.skip(x) + 0.25 * h
    torch.testing.assert_close(block(x), expected, atol=0, rtol=0)
    assert x.min() < 0  # the input itself is not rectified by the block


def test_weights_use_dalle_init():
    """N(0, 1/fan_in) weights and zero biases, as OpenAI's encoder."""
    encoder = _tiny(hidden_dim=32)
    head = encoder.head.weight  # (40, 256, 1, 1): fan_in 256
    assert abs(float(head.std()) - 256**-0.5) < 0.1 * 256**-0.5
    assert all(float(m.bias.abs().max()) == 0 for m in encoder.modules() if isinstance(m, nn.Conv2d))


def test_an_encoder_built_on_the_meta_device_gets_dalle_init_from_init_weights():
    """Built on the meta device, materialised with to_empty and initialised with the library's generic
    init_weights (as a model built for FSDP is): every convolution gets DALL-E's N(0, 1/fan_in) and zero
    biases, as dalle_encoder() gives them, and the encoder stays frozen. It got the transformer rule's
    N(0, 0.02) (a head 3x too narrow)."""
    from torchflava.modules.init import init_weights

    with torch.device("meta"):
        encoder = _tiny(hidden_dim=32)
    encoder.to_empty(device="cpu")
    with torch.no_grad():
        for p in encoder.parameters():
            p.fill_(float("nan"))  # what to_empty may leave
    torch.manual_seed(0)
    init_weights(encoder)
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    for conv in (encoder.stem, encoder.head):
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]  # 147 and 256
        assert abs(float(conv.weight.std()) - fan_in**-0.5) < 0.1 * fan_in**-0.5
    assert all(float(m.bias.abs().max()) == 0 for m in convs)
    assert all(torch.isfinite(p).all() and not p.requires_grad for p in encoder.parameters())


def test_reset_parameters_takes_injected_convolutions_without_bias():
    stem, head = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Conv2d(8, 5, 1)
    encoder = DalleEncoder(stem, [DalleResidualBlock(8, 8, post_gain=1.0)], head)
    encoder.reset_parameters()
    assert stem.bias is None and float(head.bias.abs().max()) == 0
    assert abs(float(head.weight.std()) - 8**-0.5) < 0.5 * 8**-0.5  # (40 draws)


# ------------------------------------------------------------------------------------------ freezing


def test_frozen_by_default():
    encoder = _tiny()
    assert all(not p.requires_grad for p in encoder.parameters())
    pixels = _pixels().requires_grad_(True)
    assert not encoder.tokens(pixels).requires_grad
    assert encoder.tokens(pixels).grad_fn is None


def test_tokens_never_record_autograd_even_unfrozen():
    encoder = _tiny(freeze=False)
    tokens = encoder.tokens(_pixels())
    assert tokens.grad_fn is None
    assert all(p.grad is None for p in encoder.parameters())


def test_unfrozen_encoder_trains():
    encoder = _tiny(freeze=False)
    assert all(p.requires_grad for p in encoder.parameters())
    encoder(_pixels()).logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in encoder.parameters())


def test_frozen_encoder_inside_a_model_gets_no_gradients():
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.codebook = _tiny()
            self.embed = nn.Embedding(40, 8)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.embed(self.codebook.tokens(pixels)).sum()

    model = Model().train()
    pixels = _pixels()
    tokens_train = model.codebook.tokens(pixels)
    model(pixels).backward()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["embed.weight"]
    assert all(p.grad is None for p in model.codebook.parameters())
    assert model.embed.weight.grad is not None
    assert torch.equal(model.eval().codebook.tokens(pixels), tokens_train)  # no train/eval-dependent layers


def test_gradients_flow_to_pixels_through_a_frozen_encoder():
    encoder = _tiny()
    pixels = _pixels().requires_grad_(True)
    encoder(pixels).sum().backward()
    assert pixels.grad is not None and float(pixels.grad.abs().sum()) > 0


def test_tokens_in_a_data_pipeline():
    """A CPU DataLoader whose collate function maps pixels and tokenises the batch."""
    encoder = _tiny()
    images = [torch.rand(3, 16, 16) for _ in range(4)]

    def collate(batch):
        pixels = map_pixels(torch.stack(batch))
        return pixels, encoder.tokens(pixels)

    loader = torch.utils.data.DataLoader(images, batch_size=2, collate_fn=collate)
    batches = list(loader)
    assert [tuple(t.shape) for _, t in batches] == [(2, 4), (2, 4)]
    assert torch.equal(batches[1][1], encoder.tokens(map_pixels(torch.stack(images[2:]))))


# --------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "pixels, error, message",
    [
        ([[0.5]], TypeError, "pixels must be a torch.Tensor"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), TypeError, "pixels must be a floating-point tensor"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.int64), TypeError, "pixels must be a floating-point tensor"),
        (torch.rand(3, 16, 16), ValueError, r"pixels must have shape \(B, 3, H, W\), got \(3, 16, 16\)"),
        (torch.rand(1, 4, 16, 16), ValueError, r"pixels must have shape \(B, 3, H, W\), got \(1, 4, 16, 16\)"),
        (torch.rand(1, 3, 20, 16), ValueError, "pixels height and width must be positive multiples of 8, got 20x16"),
        (torch.rand(1, 3, 16, 12), ValueError, "pixels height and width must be positive multiples of 8, got 16x12"),
        (torch.rand(1, 3, 0, 16), ValueError, "pixels height and width must be positive multiples of 8, got 0x16"),
    ],
)
@pytest.mark.parametrize("method", ["forward", "tokens"])
def test_bad_pixels_raise(pixels, error, message, method):
    encoder = _tiny()
    call = encoder if method == "forward" else encoder.tokens
    with pytest.raises(error, match=message):
        call(pixels)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_dim=3), "hidden_dim must be >= 4"),
        (dict(blocks_per_group=0), "blocks_per_group must be >= 1"),
        (dict(vocab_size=0), "vocab_size must be >= 1"),
        (dict(in_channels=0), "in_channels must be >= 1"),
    ],
)
def test_builder_rejects_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _tiny(**kwargs)


def test_encoder_rejects_bad_parts():
    stem, head = nn.Conv2d(3, 8, 7, padding=3), nn.Conv2d(8, 5, 1)
    with pytest.raises(TypeError, match="stem must be an nn.Conv2d, got Linear"):
        DalleEncoder(nn.Linear(3, 8), [nn.Identity()], head)
    with pytest.raises(TypeError, match="head must be an nn.Conv2d, got Identity"):
        DalleEncoder(stem, [nn.Identity()], nn.Identity())
    with pytest.raises(ValueError, match="groups must hold at least one group"):
        DalleEncoder(stem, [], head)
    with pytest.raises(ValueError, match="out_dim must be >= 4"):
        DalleResidualBlock(8, 3, post_gain=1.0)


def test_encoder_and_block_name_arguments_of_the_wrong_type():
    """A str freeze froze the encoder by being truthy; None groups failed on len(); a str group met
    ModuleList's "str is not a Module subclass"; block widths of the wrong type failed inside nn.Conv2d
    or on a comparison, and a str post_gain in forward."""
    stem, head = nn.Conv2d(3, 8, 7, padding=3), nn.Conv2d(8, 5, 1)
    with pytest.raises(TypeError, match=r"^freeze must be a bool, got str 'no'$"):
        DalleEncoder(stem, [nn.Identity()], head, freeze="no")
    with pytest.raises(TypeError, match=r"^groups must be a sequence of nn.Module, got NoneType$"):
        DalleEncoder(stem, None, head)
    with pytest.raises(TypeError, match=r"^groups\[1\] must be an nn.Module, got str$"):
        DalleEncoder(stem, [nn.Identity(), "block"], head)
    for groups in ((nn.Identity(),), nn.ModuleList([nn.Identity()]), nn.Sequential(nn.Identity())):
        assert len(DalleEncoder(stem, groups, head).groups) == 1
    with pytest.raises(TypeError, match=r"^in_dim must be an int, got float$"):
        DalleResidualBlock(8.0, 8, post_gain=1.0)
    with pytest.raises(TypeError, match=r"^out_dim must be an int, got str$"):
        DalleResidualBlock(8, "8", post_gain=1.0)
    with pytest.raises(ValueError, match=r"^post_gain must be a finite number, got 'a'$"):
        DalleResidualBlock(8, 8, post_gain="a")


def test_injected_parts_set_downsampling():
    """Two groups pool once: a downsampling factor of 2."""
    stem, head = nn.Conv2d(3, 8, 7, padding=3), nn.Conv2d(8, 5, 1)
    groups = [DalleResidualBlock(8, 8, post_gain=0.5), DalleResidualBlock(8, 8, post_gain=0.5)]
    encoder = DalleEncoder(stem, groups, head)
    assert encoder.downsample == 2
    assert encoder(torch.rand(1, 3, 6, 10)).shape == (1, 5, 3, 5)


# -------------------------------------------------------------------------------------- map_pixels


def test_map_pixels_values_and_range():
    assert map_pixels(torch.tensor([0.0, 0.5, 1.0])).tolist() == pytest.approx([0.1, 0.5, 0.9])
    mapped = map_pixels(torch.rand(2, 3, 8, 8))
    assert float(mapped.min()) >= 0.1 and float(mapped.max()) <= 0.9


def test_map_pixels_is_affine_and_keeps_shape_and_dtype():
    x = torch.rand(3, 16, 16, dtype=torch.float64)
    mapped = map_pixels(x)
    assert mapped.shape == x.shape and mapped.dtype == torch.float64
    torch.testing.assert_close(mapped, 0.8 * x + 0.1, atol=1e-12, rtol=0)
    assert map_pixels(torch.rand(4, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "pixels, message",
    [
        (torch.zeros(3, 8, 8, dtype=torch.uint8), "dtype torch.uint8"),
        (torch.zeros(3, 8, 8, dtype=torch.int64), "dtype torch.int64"),
        (torch.zeros(3, 8, 8, dtype=torch.bool), "dtype torch.bool"),
        ([0.5, 0.2], "pixels must be a torch.Tensor, got list"),
    ],
)
def test_map_pixels_rejects_non_float_input(pixels, message):
    with pytest.raises(TypeError, match=message):
        map_pixels(pixels)


@pytest.mark.parametrize(
    "pixels, got",
    [
        (torch.full((1, 3, 16, 16), 200.0), r"\[200.0, 200.0\]"),  # [0, 255] pixels, not divided nor mapped
        (torch.full((1, 3, 16, 16), -1.5), r"\[-1.5, -1.5\]"),  # normalised with a mean and std
        (torch.full((1, 3, 16, 16), float("nan")), r"\[nan, nan\]"),
    ],
)
def test_tokens_name_pixels_that_were_not_mapped(pixels, got):
    """Each was tokenised without a word before."""
    expected = r"^pixels must be finite and mapped into \[0.1, 0.9\] with map_pixels, got values in "
    with pytest.raises(ValueError, match=expected + got + "$"):
        _tiny().tokens(pixels)


def test_tokens_take_mapped_pixels_rounded_in_bfloat16():
    pixels = map_pixels(torch.tensor([0.0, 1.0]).repeat(8 * 16 * 3).view(1, 3, 16, 16).bfloat16())
    assert float(pixels.max()) > 0.9  # (0.8 * 1 + 0.1 rounds up)
    assert _tiny().to(torch.bfloat16).tokens(pixels).shape == (1, 4)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(hidden_dim="16"), TypeError, "^hidden_dim must be an int, got str$"),
        (dict(vocab_size=40.0), TypeError, "^vocab_size must be an int, got float$"),
        (dict(blocks_per_group=None), TypeError, "^blocks_per_group must be an int, got NoneType$"),
        (dict(freeze="no"), TypeError, "^freeze must be a bool, got str 'no'$"),
    ],
)
def test_builder_names_arguments_of_the_wrong_type(kwargs, error, message):
    """A str or None failed on '<', a float inside torch, and freeze='no' froze the encoder."""
    with pytest.raises(error, match=message):
        _tiny(**kwargs)


def test_pixels_on_another_device_than_the_encoder_are_refused_naming_them():
    # (meta pixels into a CPU encoder gave meta "tokens"; on a GPU, torch's conv error naming neither)
    encoder, pixels = _tiny(), _pixels()
    for call in (encoder, encoder.tokens):
        with pytest.raises(ValueError, match=r"^pixels must be on the encoder's device cpu, got meta$"):
            call(pixels.to("meta"))
    assert encoder.tokens(pixels).shape == (2, 4 * 6)
