"""Image transforms: shapes, exact values on flat images, seeded crops, crop-box bounds, errors; a checkpoint's
preprocessing (preprocessor_config.json) against transformers' image processors on real photos; every PIL mode."""

import json
import random
import re

import numpy as np
from PIL import Image
import pytest
import torch
from transformers import CLIPImageProcessor, FlavaImageProcessor

from tests.helpers import photos
from torchflava.data.decode import to_rgb
from torchflava.data.shapes import ShapesWorld
from torchflava.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    EvalImageTransform,
    ImageTransform,
    ImageTransformSpec,
    PretrainingImageTransform,
    RandomCropTransform,
)


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


# ---------------------------------------------------------------- checkpoint preprocessing (preprocessor_config.json)

TWO_LEVELS = 0.035  # two 8-bit levels after CLIP normalisation: 2 / 255 / min(CLIP_STD) = 0.030


@pytest.fixture(scope="module")
def real_photos() -> dict:
    return photos()


def _hf_pixels(processor, image: Image.Image) -> torch.Tensor:
    """What transformers' image processor gives a user for one image, (3, H, W)."""
    return processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


def test_flava_full_preprocessing_equals_flava_image_processor_on_real_photos(real_photos):
    processor = FlavaImageProcessor()  # facebook/flava-full's: bicubic straight to 224 x 224, CLIP mean and std
    spec = ImageTransformSpec.from_preprocessor_config(processor.to_dict())
    assert (spec.resize_mode, spec.resize_size, spec.resample, spec.crop_size) == ("squash", (224, 224), 3, (224, 224))
    transform = ImageTransform(spec)
    for name, photo in real_photos.items():
        assert photo.width != photo.height, name
        expected = _hf_pixels(processor, photo)
        got = transform(photo)
        assert got.shape == expected.shape == (3, 224, 224)
        assert float((got - expected).abs().max()) <= TWO_LEVELS, name  # measured: 0 (same PIL arithmetic)
        # The short-side transform is far from it on non-square photos: the check has teeth.
        assert float((EvalImageTransform(224)(photo) - expected).abs().max()) > 1.0, name


@pytest.mark.parametrize(
    "settings",
    [
        dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.25, 0.125]),  # an edited mean and std are used
        dict(resample=2, size={"height": 48, "width": 40}, crop_size={"height": 32, "width": 24}),
        dict(resample=1, do_normalize=False),  # lanczos, pixels in [0, 1]
        dict(resample=0, do_rescale=False, do_center_crop=False),  # nearest, 0..255 normalised
        dict(size=64, crop_size=56, resample=4),  # ints are square sizes for FLAVA
    ],
)
def test_edited_flava_preprocessing_equals_flava_image_processor(real_photos, settings, tmp_path):
    processor = FlavaImageProcessor(**settings)
    processor.save_pretrained(tmp_path)  # read back from the file, as a checkpoint's
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    transform = ImageTransform(ImageTransformSpec.from_preprocessor_config(config))
    for name, photo in real_photos.items():
        expected = _hf_pixels(processor, photo)
        assert float((transform(photo) - expected).abs().max()) <= TWO_LEVELS * 1e-3, name


@pytest.mark.parametrize("resample", [2, 3])
def test_short_side_preprocessing_equals_clip_image_processor(real_photos, resample):
    processor = CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 40, "width": 40}, resample=resample)
    transform = ImageTransform(ImageTransformSpec.from_preprocessor_config(processor.to_dict()))
    for name, photo in real_photos.items():
        expected = _hf_pixels(processor, photo)
        assert float((transform(photo) - expected).abs().max()) <= 1e-5, name
    assert CLIPImageProcessor(size=30).to_dict()["size"] == {"shortest_edge": 30}  # an int is a short side for CLIP
    spec = ImageTransformSpec.from_preprocessor_config(
        {"image_processor_type": "CLIPImageProcessor", "size": 30, "crop_size": 30}
    )
    assert (spec.resize_mode, spec.resize_size) == ("short_side", 30)


def test_eval_transform_is_recorded_and_read_back_exactly(real_photos, tmp_path):
    transform = EvalImageTransform(40)
    path = transform.save(tmp_path)
    assert path == tmp_path / "preprocessor_config.json"
    config = json.loads(path.read_text())
    assert config == {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 40},
        "resample": 2,
        "do_center_crop": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "crop_size": {"height": 40, "width": 40},
        "rescale_factor": 1 / 255,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
    }
    read = ImageTransform(ImageTransformSpec.from_preprocessor_config(config))
    assert read.spec == transform.spec
    # transformers reads the record the same way: its CLIPImageProcessor gives the same pixels.
    processor = CLIPImageProcessor.from_pretrained(tmp_path)
    for name, photo in real_photos.items():
        assert torch.equal(read(photo), transform(photo)), name
        assert float((_hf_pixels(processor, photo) - transform(photo)).abs().max()) <= 1e-5, name


@pytest.mark.parametrize(
    "spec",
    [
        ImageTransformSpec(resize_mode="squash", resize_size=(30, 20), resample=3, crop_size=None),
        ImageTransformSpec(
            resize_mode="short_side",
            resize_size=16,
            resample=5,
            crop_size=(16, 12),
            rescale_factor=None,
            mean=None,
            std=None,
        ),
        ImageTransformSpec(
            resize_mode="squash", resize_size=[8, 8], resample=0, crop_size=[4, 6], mean=[0, 0, 0], std=[1, 2, 3]
        ),
    ],
)
def test_spec_round_trips_through_the_config(spec):
    assert ImageTransformSpec.from_preprocessor_config(json.loads(json.dumps(spec.to_preprocessor_config()))) == spec


def test_short_side_resize_rounds_the_long_side_down_and_crops_from_the_floor_centre():
    transform = ImageTransform(
        ImageTransformSpec(
            resize_mode="short_side", resize_size=10, resample=0, crop_size=(10, 10), mean=None, std=None
        )
    )
    assert transform.resized_size(20, 59) == (10, 29) and transform.resized_size(59, 20) == (29, 10)
    # 10 x 29 after resizing: the crop starts at column (29 - 10) // 2 = 9.
    columns = Image.fromarray(np.tile(np.arange(29, dtype=np.uint8) * 8, (10, 1)), "L")
    out = transform(columns)
    assert out.shape == (3, 10, 10)
    assert torch.equal(out[0, 0], (torch.arange(9, 19, dtype=torch.float64) * 8 / 255).float())
    assert transform.output_size == (10, 10)
    assert ImageTransformSpec(resize_mode="short_side", resize_size=10, resample=0, crop_size=None).output_size is None


@pytest.mark.parametrize(
    "config, match",
    [
        ({"do_resize": False}, "preprocessor_config.json: do_resize must be true"),
        ({"do_center_crop": "yes"}, "preprocessor_config.json: do_center_crop must be true or false, got 'yes'"),
        ({"size": {"longest_edge": 224}}, r'preprocessor_config.json: size must be \{"height": H, "width": W\}'),
        ({"size": {"height": 224}}, "preprocessor_config.json: size must be"),
        ({"size": {"height": 0, "width": 224}}, "preprocessor_config.json: size height must be a positive int, got 0"),
        ({"size": {"shortest_edge": -1}}, "preprocessor_config.json: size shortest_edge must be a positive int"),
        ({"size": "224"}, "preprocessor_config.json: size must be"),
        ({"resample": 9}, "preprocessor_config.json: resample must be a PIL filter code"),
        ({"resample": "bicubic"}, "preprocessor_config.json: resample must be a PIL filter code"),
        ({"crop_size": 256}, r"preprocessor_config.json: crop_size must fit in the resized image .*got \(256, 256\)"),
        ({"rescale_factor": 0}, "preprocessor_config.json: rescale_factor must be a positive number, got 0"),
        ({"image_mean": [0.5, 0.5]}, "preprocessor_config.json: image_mean must be three finite numbers"),
        ({"image_std": [0.5, 0.0, 0.5]}, "preprocessor_config.json: image_std must be three positive numbers"),
        ({"image_std": "0.5"}, "preprocessor_config.json: image_std must be three positive numbers"),
    ],
)
def test_preprocessor_config_errors_name_the_key(config, match):
    with pytest.raises(ValueError, match=match):
        ImageTransformSpec.from_preprocessor_config(config)


def test_preprocessor_config_defaults_and_ignored_keys():
    spec = ImageTransformSpec.from_preprocessor_config(
        {"image_mean": None, "codebook_size": 112, "do_map_pixels": True}
    )
    assert spec == ImageTransformSpec(resize_mode="squash", resize_size=(224, 224), resample=3, crop_size=(224, 224))
    assert ImageTransformSpec.from_preprocessor_config({"image_mean": 0.5, "image_std": 0.25}).mean == (0.5, 0.5, 0.5)
    with pytest.raises(TypeError, match="preprocessor_config.json must hold a JSON object, got list"):
        ImageTransformSpec.from_preprocessor_config([])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(resize_mode="fit"), "resize_mode must be one of"),
        (dict(resize_size=224), r"resize_size must be a \(height, width\) pair"),
        (dict(resample=True), "resample must be a PIL filter code"),
        (dict(crop_size=(300, 10)), "crop_size must fit in the resized image"),
        (dict(rescale_factor=-1.0), "rescale_factor must be a positive number, got -1.0"),
        (dict(mean=None), "mean and std must both be given or both be None"),
        (dict(std=(1.0, 1.0, float("nan"))), "std must be three positive numbers"),
    ],
)
def test_spec_errors(kwargs, match):
    fields = {**dict(resize_mode="squash", resize_size=(224, 224), resample=3, crop_size=(224, 224)), **kwargs}
    with pytest.raises(ValueError, match=match):
        ImageTransformSpec(**fields)
    with pytest.raises(TypeError, match="spec must be an ImageTransformSpec, got dict"):
        ImageTransform(fields)


# ---------------------------------------------------------------- any PIL mode, as decode_image's to_rgb reads it


def _every_mode() -> list[tuple[str, Image.Image, tuple[int, int, int]]]:
    """(mode, flat 12 x 8 image of that mode, its right 8-bit RGB colour)."""
    palette = Image.new("P", (12, 8), 1)
    palette.putpalette([0, 0, 0, 200, 30, 90] + [0] * 762)
    transparent_palette = palette.copy()
    transparent_palette.info["transparency"] = 1
    return [
        ("1", Image.new("1", (12, 8), 1), (255, 255, 255)),
        ("L", Image.new("L", (12, 8), 77), (77, 77, 77)),
        ("P", palette, (200, 30, 90)),
        ("P+transparency", transparent_palette, (200, 30, 90)),  # transparency dropped, as convert("RGB") drops it
        ("LA", Image.new("LA", (12, 8), (77, 0)), (77, 77, 77)),  # fully transparent: its stored grey
        ("La", Image.new("La", (12, 8), (0, 0)), (0, 0, 0)),  # premultiplied (PIL converts it to LA only)
        ("RGBA", Image.new("RGBA", (12, 8), (200, 30, 90, 255)), (200, 30, 90)),
        ("RGBA half", Image.new("RGBA", (12, 8), (0, 0, 0, 128)), (0, 0, 0)),  # black at half alpha: black
        ("CMYK", Image.new("CMYK", (12, 8), (255, 0, 0, 0)), (0, 255, 255)),
        ("I;16", Image.fromarray(np.full((8, 12), 65535, dtype=np.uint16)), (255, 255, 255)),
        ("I", Image.fromarray(np.full((8, 12), 51 * 257, dtype=np.int32), mode="I"), (51, 51, 51)),
        ("F", Image.fromarray(np.full((8, 12), 0.2, dtype=np.float32), mode="F"), (51, 51, 51)),
    ]


@pytest.mark.parametrize("mode, image, colour", _every_mode(), ids=[m[0] for m in _every_mode()])
def test_every_transform_takes_every_mode_as_the_right_rgb(mode, image, colour):
    assert image.mode == mode.split()[0].split("+")[0]
    expected = normalised(colour)[:, None, None]
    assert abs(int(to_rgb(image).getpixel((0, 0))[0]) - colour[0]) <= 1
    transforms = {
        "eval": EvalImageTransform(6),
        "flava-full": ImageTransform(ImageTransformSpec.from_preprocessor_config({"size": 6, "crop_size": 6})),
        "random crop": lambda im: RandomCropTransform(6)(im, seed=0),
        "pretraining": lambda im: PretrainingImageTransform(6, 4)(im, seed=0)[0],
    }
    for name, transform in transforms.items():
        out = transform(image)
        assert out.shape == (3, 6, 6), name
        # One 8-bit level of slack (rounding of the premultiplied La).
        torch.testing.assert_close(out, expected.expand(3, 6, 6), rtol=0, atol=1.01 / 255 / min(CLIP_STD), msg=name)
    codebook = PretrainingImageTransform(6, 4)(image, seed=0)[1]
    torch.testing.assert_close(
        codebook, (0.1 + 0.8 * torch.tensor(colour) / 255)[:, None, None].expand(3, 4, 4), rtol=0, atol=0.8 / 255 + 1e-6
    )


def _half_transparent() -> Image.Image:
    """A 70 x 33 RGBA image of colours at every alpha: a red half-transparent band, the rest random."""
    values = np.random.default_rng(0).integers(0, 256, (33, 70, 4), dtype=np.uint8)
    values[:, :20] = (255, 0, 0, 128)
    return Image.fromarray(values, mode="RGBA")


def test_a_transparent_image_gives_the_image_processors_pixels_exactly():
    """Alpha was composited on white, a half-transparent red becoming (255, 127, 127); CLIPImageProcessor
    (convert_to_rgb: convert("RGB")), open_clip and timm drop it, giving (255, 0, 0)."""
    image = _half_transparent()
    clip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    expected = clip(images=image, return_tensors="pt")["pixel_values"][0]  # given the RGBA image itself
    got = ImageTransform(ImageTransformSpec.from_preprocessor_config(clip.to_dict()))(image)
    assert torch.equal(got, expected)
    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(got[:, 16, 0], red)  # the band's left edge, untouched by the resize
    # FlavaImageProcessor refuses RGBA ("Unable to infer channel dimension format"): its users convert("RGB").
    flava = FlavaImageProcessor(size=32, crop_size=32)
    with pytest.raises(ValueError, match="channel dimension"):
        flava(images=image, return_tensors="pt")
    got = ImageTransform(ImageTransformSpec.from_preprocessor_config(flava.to_dict()))(image)
    assert torch.equal(got, _hf_pixels(flava, image))


@pytest.mark.parametrize("size", [(48, 48), (224, 224), (37, 53), (64, 64), (80, 96)])
def test_the_tensor_steps_equal_torchvision_to_the_bit(photo, size):
    from torchvision.transforms import v2

    from torchflava.data.transforms import normalize_channels, pil_to_uint8, resize_bilinear, uint8_to_unit

    for image in (photo, photo.resize((224, 160)), photo.convert("L").convert("RGB")):
        reference = v2.functional.pil_to_tensor(image)
        ours = pil_to_uint8(image)
        assert torch.equal(ours, reference) and ours.stride() == reference.stride()
        unit = uint8_to_unit(ours)
        assert torch.equal(unit, v2.functional.to_dtype(reference, torch.float32, scale=True))
        box = (3, 5, image.height - 9, image.width - 7)  # top, left, height, width
        crop = unit[:, box[0] : box[0] + box[2], box[1] : box[1] + box[3]]
        expected = v2.functional.resized_crop(unit, *box, list(size), antialias=True)
        assert torch.equal(resize_bilinear(crop, *size), expected)
        boxed = pil_to_uint8(image, box=box)  # only the box converted: the same pixels and layout
        assert torch.equal(boxed, reference[:, box[0] : box[0] + box[2], box[1] : box[1] + box[3]])
        assert boxed.stride() == (1, box[3] * 3, 3)
        assert torch.equal(resize_bilinear(uint8_to_unit(boxed), *size), expected)
        mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
        assert torch.equal(
            normalize_channels(expected, mean, std), v2.Normalize(list(CLIP_MEAN), list(CLIP_STD))(expected)
        )
    same = uint8_to_unit(pil_to_uint8(photo))
    assert resize_bilinear(same, photo.height, photo.width) is same  # no resize to the same size
    for box in ((0, 0, photo.height + 1, 1), (-1, 0, 2, 2), (0, photo.width - 1, 1, 2), (0, 0, 0, 3)):
        with pytest.raises(ValueError, match=f"box \\(top, left, height, width\\) must lie inside the {photo.width}x"):
            pil_to_uint8(photo, box=box)


def test_the_pretraining_transform_equals_torchvision_s_pipeline(photo):
    from torchvision.transforms import v2

    from torchflava.modules.codebook import map_pixels

    transform = PretrainingImageTransform(48, 40)
    for seed in range(5):
        pixels, codebook = transform(photo, seed)
        top, left, height, width = transform.crop_box(photo.height, photo.width, seed)
        unit = v2.functional.to_dtype(v2.functional.pil_to_tensor(photo), torch.float32, scale=True)
        crop = v2.functional.resized_crop(unit, top, left, height, width, [48, 48], antialias=True)
        assert torch.equal(pixels, v2.Normalize(list(CLIP_MEAN), list(CLIP_STD))(crop))
        assert torch.equal(codebook, map_pixels(v2.Resize(40, antialias=True)(crop).clamp(0, 1)))


def test_importing_the_data_package_does_not_import_torchvision():
    import subprocess
    import sys

    code = "import sys, torchflava.data; print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_strip_of_extreme_aspect_ratio_is_resized_in_the_crop_box_only(monkeypatch):
    import torchflava.data.transforms as transforms_module

    rng = np.random.default_rng(0)
    strip = Image.fromarray(rng.integers(0, 255, (3, 2000, 3), dtype=np.uint8))  # 2000 x 3 pixels
    transform = EvalImageTransform(32)
    whole = transform(strip)  # resized to 32 x 21333 (682,656 pixels), then cropped
    monkeypatch.setattr(transforms_module, "_MAX_WHOLE_RESIZE_PIXELS", 32 * 32)  # force the box path
    boxed = transform(strip)  # resizes 32 x 32 only
    assert boxed.shape == whole.shape == (3, 32, 32)
    assert (boxed - whole).abs().max() < 0.03  # one 8-bit level, normalised: rounding of the filter centres
    huge = Image.new("RGB", (200_000, 1), (10, 20, 30))  # whole, it would be 224 x 44.8M pixels (30 GB)
    monkeypatch.setattr(transforms_module, "_MAX_WHOLE_RESIZE_PIXELS", 1 << 24)
    assert EvalImageTransform(224)(huge).shape == (3, 224, 224)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(std=(0.2, 0.0, 0.2)), "std must be 3 finite numbers"),  # was -inf pixels
        (dict(mean=(0.5, 0.5)), "mean must be 3 finite numbers"),  # was an error inside torch, per image
        (dict(mean=(0.5, float("nan"), 0.5)), "mean must be 3 finite numbers"),
        (dict(ratio=(0.75, float("inf"))), "ratio must be"),  # was an OverflowError in crop_box
    ],
)
def test_training_transforms_check_their_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandomCropTransform(32, **kwargs)
    with pytest.raises(ValueError, match=match):
        PretrainingImageTransform(32, 16, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scale=0.5), "scale must be a (low, high) pair of numbers, got 0.5"),  # was "has no len()"
        (dict(scale=("a", "b")), "scale must be a (low, high) pair of numbers, got ('a', 'b')"),  # "'<' not supported"
        (dict(scale=(0.5, True)), "scale must be a (low, high) pair of numbers, got (0.5, True)"),
        (dict(ratio=None), "ratio must be a (low, high) pair of numbers, got None"),
    ],
)
def test_crop_scale_and_ratio_must_be_pairs_of_numbers(kwargs, message):
    for build in (lambda: RandomCropTransform(32, **kwargs), lambda: PretrainingImageTransform(32, 16, **kwargs)):
        with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
            build()
    with pytest.raises(ValueError, match=r"^ratio must be a \(low, high\) pair of numbers, got \(1.0,\)$"):
        RandomCropTransform(32, ratio=(1.0,))
    assert RandomCropTransform(32, scale=[0.5, 1], ratio=np.array([0.5, 2.0])).scale == (0.5, 1.0)


@pytest.mark.parametrize("seed", [None, 1.5, "x", True, torch.tensor(3)])
def test_a_crop_needs_an_int_seed(photo, seed):
    """seed=None drew each crop from the clock (another crop at each call); 1.5 and "x" were hashed."""
    transform = RandomCropTransform(16)
    with pytest.raises(
        TypeError, match=rf"^seed must be an int \(the crop's only randomness\), got {type(seed).__name__}$"
    ):
        transform.crop_box(100, 100, seed)
    with pytest.raises(TypeError, match="^seed must be an int"):
        transform(photo, seed)
    assert transform.crop_box(100, 100, np.int64(7)) == transform.crop_box(100, 100, 7)


def test_an_image_without_pixels_or_that_is_no_pil_image_is_refused():
    """A 0-wide image raised ZeroDivisionError (resized_size) or a numpy reshape error (the random crop);
    a tensor raised AttributeError 'info'."""
    empty = Image.new("RGB", (0, 5))
    transforms = (
        EvalImageTransform(16),
        lambda im: RandomCropTransform(16)(im, 0),
        lambda im: PretrainingImageTransform(16, 8)(im, 0),
    )
    for transform in transforms:
        with pytest.raises(ValueError, match=r"^image must have at least one pixel, got a 0x5 image$"):
            transform(empty)
        with pytest.raises(TypeError, match=r"^image must be a PIL image \(PIL.Image.Image\), got Tensor$"):
            transform(torch.rand(3, 20, 20))
    with pytest.raises(ValueError, match="^height must be >= 1, got 0$"):
        EvalImageTransform(16).resized_size(0, 5)
    with pytest.raises(ValueError, match="^image_width must be >= 1, got 0$"):
        RandomCropTransform(16).crop_box(5, 0, 0)


@pytest.mark.parametrize("size", [(20, 400), (10, 512), (60, 1500), (3, 600), (1000, 4), (512, 20)])
def test_an_elongated_image_gives_the_image_processor_s_pixels_exactly(size):
    """Images over 16 times as long as wide were resized in the crop's box only, which PIL resamples in
    another order than the whole image (vertical pass first): up to 2 8-bit levels off on a 20 x 400
    photo strip, 17 on noise, for CLIPImageProcessor's bicubic filter."""
    width, height = size
    strip = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    processor = CLIPImageProcessor()  # short side 224, bicubic, centre crop 224
    transform = ImageTransform(ImageTransformSpec.from_preprocessor_config(processor.to_dict()))
    # (channels_last: a 3-pixel side reads as the channel axis to transformers otherwise)
    expected = processor(images=strip, return_tensors="pt", input_data_format="channels_last")["pixel_values"][0]
    assert torch.equal(transform(strip), expected)
