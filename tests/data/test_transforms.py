"""Image transforms: shapes, exact values on flat images, seeded crops, crop-box bounds, errors."""

import random

from PIL import Image
import pytest
import torch

from torchflava.data.shapes import ShapesWorld
from torchflava.data.transforms import CLIP_MEAN, CLIP_STD, EvalImageTransform, PretrainingImageTransform


def normalised(rgb) -> torch.Tensor:
    """CLIP-normalised value of an 8-bit colour, (3,)."""
    return (torch.tensor(rgb, dtype=torch.float32) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A 60 x 40 image with detail everywhere, so that different crops give different pixels."""
    noise = torch.randint(0, 256, (40, 60, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return Image.fromarray(noise.numpy(), "RGB")


def test_output_shapes_and_dtypes(photo):
    pixels, codebook = PretrainingImageTransform(24, 12)(photo, seed=0)
    assert pixels.shape == (3, 24, 24) and codebook.shape == (3, 12, 12)
    assert pixels.dtype == codebook.dtype == torch.float32
    assert EvalImageTransform(20)(photo).shape == (3, 20, 20)


def test_flat_image_gives_exact_values():
    colour = (200, 30, 90)
    pixels, codebook = PretrainingImageTransform(16, 8)(Image.new("RGB", (50, 30), colour), seed=3)
    expected = normalised(colour)[:, None, None].expand(3, 16, 16)
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-5)
    # The codebook view is the crop mapped into [0.1, 0.9]: 0.1 + 0.8 x.
    expected_codebook = (0.1 + 0.8 * torch.tensor(colour) / 255)[:, None, None].expand(3, 8, 8)
    torch.testing.assert_close(codebook, expected_codebook, rtol=0, atol=1e-6)
    black = PretrainingImageTransform(16, 8)(Image.new("RGB", (20, 20), (0, 0, 0)), seed=0)[1]
    white = PretrainingImageTransform(16, 8)(Image.new("RGB", (20, 20), (255, 255, 255)), seed=0)[1]
    torch.testing.assert_close(black, torch.full((3, 8, 8), 0.1), rtol=0, atol=1e-6)
    torch.testing.assert_close(white, torch.full((3, 8, 8), 0.9), rtol=0, atol=1e-6)


def test_same_seed_same_output_other_seeds_other_crops(photo):
    transform = PretrainingImageTransform(24, 12, scale=(0.3, 1.0))
    a, b = transform(photo, seed=5), PretrainingImageTransform(24, 12, scale=(0.3, 1.0))(photo, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    outputs = [transform(photo, seed=s)[0] for s in range(10)]
    distinct = {tuple(o.flatten()[:50].tolist()) for o in outputs}
    assert len(distinct) == 10
    boxes = {transform.crop_box(40, 60, s) for s in range(30)}
    assert len(boxes) >= 25


def test_codebook_view_within_0_1_and_0_9():
    transform = PretrainingImageTransform(32, 16)
    world = ShapesWorld("images", 6, image_size=48)
    for i in range(6):
        _, codebook = transform(world[i].image, seed=i)
        assert float(codebook.min()) >= 0.1 - 1e-6 and float(codebook.max()) <= 0.9 + 1e-6
        assert float(codebook.max() - codebook.min()) > 0.3  # a shape on a background: not flat


@pytest.mark.parametrize(
    "scale, ratio", [((0.9, 1.0), (3 / 4, 4 / 3)), ((0.08, 1.0), (3 / 4, 4 / 3)), ((0.2, 0.5), (0.5, 2.0))]
)
def test_crop_box_inside_image_with_area_and_ratio_in_range(scale, ratio):
    transform = PretrainingImageTransform(8, 8, scale=scale, ratio=ratio)
    height, width = 800, 1000
    for seed in range(200):
        top, left, h, w = transform.crop_box(height, width, seed)
        assert 0 <= top and 0 <= left and 0 < h and 0 < w
        assert top + h <= height and left + w <= width
        # Rounding each side to whole pixels moves the area by less than (h + w) / 2 + 1 pixels.
        slack = (h + w) / 2 + 1
        assert scale[0] * height * width - slack <= h * w <= scale[1] * height * width + slack
        assert ratio[0] - 2 / h <= w / h <= ratio[1] + 2 / h


def test_crop_box_falls_back_to_a_centred_box():
    transform = PretrainingImageTransform(8, 8)  # scale (0.9, 1), ratio (3/4, 4/3)
    for seed in range(5):
        # No box of >= 90% area has a ratio within [3/4, 4/3] in a 10 x 1000 strip.
        assert transform.crop_box(10, 1000, seed) == (0, 493, 10, 13)  # width round(10 * 4/3)
        assert transform.crop_box(1000, 10, seed) == (493, 0, 13, 10)  # height round(10 / (3/4))
    square = PretrainingImageTransform(8, 8, scale=(1.0, 1.0), ratio=(0.5, 0.5))
    # A square image is too wide for ratio 1/2: full height, width 30 / 2, centred.
    assert square.crop_box(30, 30, 0) == (0, 7, 30, 15)
    wide = PretrainingImageTransform(8, 8, scale=(1.0, 1.0), ratio=(2.0, 3.0))
    # ... and too tall for ratios in [2, 3]: full width, height 30 / 2, centred.
    assert wide.crop_box(30, 30, 0) == (7, 0, 15, 30)


def test_global_random_state_untouched(photo):
    transform = PretrainingImageTransform(24, 12, scale=(0.3, 1.0))
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    transform(photo, seed=1)
    transform.crop_box(40, 60, 2)
    EvalImageTransform(16)(photo)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state


def test_eval_transform_resizes_short_side_then_centre_crops():
    # Three 20-pixel vertical stripes: the centre crop of a 60 x 20 image is the green one.
    stripes = Image.new("RGB", (60, 20), (255, 0, 0))
    stripes.paste((0, 255, 0), (20, 0, 40, 20))
    stripes.paste((0, 0, 255), (40, 0, 60, 20))
    out = EvalImageTransform(20)(stripes)
    torch.testing.assert_close(out, normalised((0, 255, 0))[:, None, None].expand(3, 20, 20), rtol=0, atol=1e-5)
    # Downscaled by 2 (short side 20 -> 10): still the middle stripe, centred.
    half = EvalImageTransform(10)(stripes)
    green = normalised((0, 255, 0))[:, None, None].expand(3, 10, 6)
    torch.testing.assert_close(half[:, :, 2:8], green, rtol=0, atol=1e-5)
    # Deterministic: no randomness in evaluation.
    assert torch.equal(EvalImageTransform(10)(stripes), half)


def test_eval_transform_custom_normalisation():
    out = EvalImageTransform(4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))(Image.new("RGB", (8, 8), (255, 255, 255)))
    assert torch.allclose(out[:, 0, 0], torch.tensor([2.0, 1.0, 0.5]), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=0), "image_size"),
        (dict(image_size=2.5), "image_size"),
        (dict(image_size=True), "image_size"),
        (dict(codebook_size=-4), "codebook_size"),
        (dict(codebook_size="8"), "codebook_size"),
        (dict(scale=(0.0, 1.0)), "scale"),
        (dict(scale=(0.5, 1.2)), "scale"),
        (dict(scale=(0.9, 0.5)), "scale"),
        (dict(scale=(0.5,)), "scale"),
        (dict(ratio=(2.0, 1.0)), "ratio"),
        (dict(ratio=(0.0, 1.0)), "ratio"),
        (dict(ratio=(1.0, 2.0, 3.0)), "ratio"),
    ],
)
def test_pretraining_transform_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PretrainingImageTransform(**kwargs)


@pytest.mark.parametrize("size", [0, -1, 3.0, False])
def test_eval_transform_errors(size):
    with pytest.raises(ValueError, match="image_size"):
        EvalImageTransform(size)


def test_default_sizes_are_flava_full():
    transform = PretrainingImageTransform()
    assert (transform.image_size, transform.codebook_size) == (224, 112)
    assert transform.scale == (0.9, 1.0) and transform.ratio == pytest.approx((0.75, 4 / 3))
    assert EvalImageTransform().image_size == 224
