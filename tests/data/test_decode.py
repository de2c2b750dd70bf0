"""decode_image: every PIL mode to the right RGB, alpha dropped as PIL's convert("RGB") drops it (or composited on a
background given), 16-bit scaled, EXIF applied, size bounded."""

import io
from pathlib import Path
import re

import numpy as np
from PIL import Image
import pytest
import torch

from torchflava.data.decode import ImageDecodeError, decode_image, to_rgb
from torchflava.data.samples import BadSample, load_rgb


def encoded(image: Image.Image, format: str = "PNG", **kwargs) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **kwargs)
    buffer.seek(0)
    return buffer


def rgb(source, **kwargs) -> np.ndarray:
    out = decode_image(source, **kwargs)
    assert out.mode == "RGB"
    return np.asarray(out).astype(int)


def test_sixteen_bit_gradient_keeps_its_brightness():
    truth = np.linspace(0, 65535, 256)[None].repeat(32, 0)
    png = encoded(Image.fromarray(truth.astype(np.uint16)))
    assert Image.open(io.BytesIO(png.getvalue())).mode == "I;16"
    out = rgb(png)
    assert abs(out.mean() - truth.mean() / 257) / (truth.mean() / 257) < 0.02  # within 2% of the truth
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, -1].tolist() == [255, 255, 255]


def test_thirty_two_bit_and_float_greyscale_are_scaled():
    ints = Image.fromarray((np.arange(64).reshape(8, 8) * 1000).astype(np.int32), mode="I")
    out = rgb(encoded(ints, "TIFF"))
    assert out[-1, -1, 0] == round(63000 * 255 / 65535) and out[0, 0, 0] == 0
    floats = Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), mode="F")
    out = rgb(encoded(floats, "TIFF"))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and abs(out[4, 0, 0] - round(32 / 63 * 255)) <= 1


def test_a_nan_pixel_of_a_float_image_is_dark_not_the_whole_image():
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    values[2, 3], values[5, 5] = np.nan, np.inf
    out = rgb(encoded(Image.fromarray(values, mode="F"), "TIFF"))
    assert out[2, 3, 0] == 0 and out[5, 5, 0] == 0 and out[-1, -1, 0] == 255  # the rest keeps its 0..1 scale
    assert abs(int(out[4, 0, 0]) - round(32 / 63 * 255)) <= 1


def test_bilevel_and_greyscale():
    bits = Image.new("1", (4, 2), 0)
    bits.putpixel((1, 0), 1)
    out = rgb(encoded(bits))
    assert out[0, 1].tolist() == [255] * 3 and out[0, 0].tolist() == [0] * 3
    assert rgb(encoded(Image.new("L", (3, 3), 77)))[1, 1].tolist() == [77] * 3


def test_palette_images_give_their_colours_and_transparency_is_composited():
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    assert rgb(encoded(palette)).tolist() == [[[255, 0, 0], [0, 0, 255]]]  # colours, not grey indices
    out = rgb(encoded(palette, transparency=1), background=(0, 255, 0))
    assert out.tolist() == [[[255, 0, 0], [0, 255, 0]]]
    assert rgb(encoded(palette, transparency=1)).tolist() == [[[255, 0, 0], [0, 0, 255]]]  # by default: dropped


def test_the_transparent_colour_of_an_rgb_png_is_composited():
    image = Image.new("RGB", (2, 1), (0, 0, 0))
    image.putpixel((1, 0), (10, 20, 30))
    out = rgb(encoded(image, transparency=(0, 0, 0)), background=(0, 128, 0))
    assert out.tolist() == [[[0, 128, 0], [10, 20, 30]]]
    assert rgb(encoded(image, transparency=(0, 0, 0))).tolist() == [[[0, 0, 0], [10, 20, 30]]]  # by default: dropped


def test_the_transparent_grey_of_1_bit_and_16_bit_pngs_is_composited():
    bits = Image.new("1", (2, 1), 0)
    bits.putpixel((1, 0), 1)
    out = rgb(encoded(bits, transparency=0), background=(0, 255, 0))
    assert out.tolist() == [[[0, 255, 0], [255, 255, 255]]]  # black is the transparent value
    deep = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.uint16))
    assert Image.open(encoded(deep, transparency=1000)).mode.startswith("I")  # PIL decodes it 16-bit
    out = rgb(encoded(deep, transparency=1000), background=(0, 255, 0))
    assert out.tolist() == [[[0, 0, 0], [0, 255, 0], [255, 255, 255]]]
    assert rgb(encoded(deep, transparency=1000)).tolist() == [[[0, 0, 0], [4, 4, 4], [255, 255, 255]]]  # dropped
    assert rgb(encoded(deep))[0, 1].tolist() == [4, 4, 4]  # no tRNS: 1000 / 65535 of white


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_the_background(mode):
    values = [(200, 0), (200, 255), (200, 128)]  # (grey, alpha): transparent, opaque, half
    image = Image.new("RGBA", (3, 1))
    for x, (grey, alpha) in enumerate(values):
        image.putpixel((x, 0), (grey, grey, grey, alpha))
    image = image.convert(mode)
    out = rgb(encoded(image), background=(0, 0, 0))
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [200] * 3
    assert abs(out[0, 2, 0] - 100) <= 1
    # By default alpha is dropped, as PIL's convert("RGB") (and so the peers) drops it: the stored grey.
    assert rgb(encoded(image)).tolist() == [[[200] * 3] * 3]


def test_cmyk_converts_to_rgb():
    cyan = Image.new("CMYK", (2, 2), (255, 0, 0, 0))
    assert rgb(encoded(cyan, "JPEG", quality=100))[0, 0].tolist() == pytest.approx([0, 255, 255], abs=3)
    assert rgb(encoded(cyan, "TIFF"))[0, 0].tolist() == [0, 255, 255]


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (4, 2), (10, 20, 30))
    image.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turned 90 degrees clockwise
    out = decode_image(encoded(image, "JPEG", exif=exif, quality=100))
    assert out.size == (2, 4)
    assert np.asarray(out)[0, 1].min() > 200  # the top-left marker is now top-right


def test_size_is_bounded_before_decoding():
    big = encoded(Image.new("1", (13000, 13000)))  # 169 MP: under PIL's bomb limit, far over ours
    with pytest.raises(ImageDecodeError, match="13000x13000 = 169000000 pixels, more than max_pixels=50000000"):
        decode_image(big)
    small = encoded(Image.new("RGB", (10, 10)))
    assert decode_image(small, max_pixels=100).size == (10, 10)
    small.seek(0)
    with pytest.raises(ImageDecodeError, match="more than max_pixels=99"):
        decode_image(small, max_pixels=99)


def test_broken_inputs_and_bad_arguments():
    png = encoded(Image.new("RGB", (64, 64), (1, 2, 3))).getvalue()
    with pytest.raises(ImageDecodeError, match="unreadable image"):
        decode_image(io.BytesIO(png[: len(png) // 2]))
    with pytest.raises(ImageDecodeError, match="unreadable image"):
        decode_image(io.BytesIO(b"not an image at all"))
    with pytest.raises(ValueError, match="max_pixels must be a positive int, got 0"):
        decode_image(io.BytesIO(png), max_pixels=0)
    with pytest.raises(ValueError, match=r"^background must be None or three ints in 0..255, got \(0, 0\)$"):
        decode_image(io.BytesIO(png), background=(0, 0))
    with pytest.raises(BadSample, match="sample 7: image is 64x64"):
        load_rgb(io.BytesIO(png), 7, max_pixels=100)


def test_data_of_no_image_format_is_named_by_its_size_not_by_a_memory_address(tmp_path):
    """A tar member that is no image was reported as "cannot identify image file <_io.BytesIO object at
    0x7f7acfd33290>": an address, other in every run, where the report wants to tell an empty member."""
    prefix = "^unreadable image \\(UnidentifiedImageError: cannot identify image file "
    with pytest.raises(ImageDecodeError, match=prefix + r"\(empty: 0 bytes\)\)$"):
        decode_image(io.BytesIO(b""))
    with pytest.raises(ImageDecodeError, match=prefix + r"\(19 bytes of no format PIL reads\)\)$"):
        decode_image(io.BytesIO(b"not an image at all"))
    (tmp_path / "notes.jpg").write_text("not an image")  # a path: PIL's own message, which names the file
    with pytest.raises(ImageDecodeError, match=prefix + re.escape(f"'{tmp_path / 'notes.jpg'}')") + "$"):
        decode_image(tmp_path / "notes.jpg")


# to_rgb on decoded images (what the transforms call on whatever image they are given).
MODES = {  # mode -> (a 2 x 2 image, its right RGB at the top-left pixel)
    "1": (Image.new("1", (2, 2), 1), [255, 255, 255]),
    "L": (Image.new("L", (2, 2), 77), [77, 77, 77]),
    "P": (Image.new("P", (2, 2), 1), [200, 30, 90]),
    "LA": (Image.new("LA", (2, 2), (200, 128)), [200, 200, 200]),  # alpha dropped: the stored grey
    "RGBA": (Image.new("RGBA", (2, 2), (0, 0, 255, 0)), [0, 0, 255]),  # transparent: its stored colour
    "La": (Image.new("La", (2, 2), (100, 128)), [199, 199, 199]),  # premultiplied: LA (199, 128), alpha dropped
    "CMYK": (Image.new("CMYK", (2, 2), (0, 255, 0, 0)), [255, 0, 255]),  # magenta
    "I;16": (Image.fromarray(np.full((2, 2), 32896, dtype=np.uint16)), [128, 128, 128]),  # 32896 / 257
    "I;16B": (Image.frombytes("I;16B", (2, 2), (4112).to_bytes(2, "big") * 4), [16, 16, 16]),
    "I": (Image.fromarray(np.full((2, 2), 200, dtype=np.int32), mode="I"), [200, 200, 200]),  # within 0..255
    "F": (Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32), mode="F"), [128, 128, 128]),  # within 0..1
}
MODES["P"][0].putpalette([0, 0, 0, 200, 30, 90] + [0] * 762)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_to_rgb_gives_the_right_colour_for_every_mode(mode):
    image, colour = MODES[mode]
    assert image.mode == mode
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    assert np.abs(np.asarray(out).astype(int) - colour).max() <= 1  # alpha blending rounds either way
    assert to_rgb(out) is out  # RGB is returned as it is


@pytest.mark.parametrize("mode", sorted(Image.MODES))
def test_to_rgb_converts_every_mode_pil_has(mode):
    """La raised PIL's "conversion from La to L not supported"."""
    out = to_rgb(Image.new(mode, (3, 2)))
    assert out.mode == "RGB" and out.size == (3, 2)


# Every mode but those PIL clips (16/32-bit and float greyscale: scaled here) or cannot convert (La).
PIL_CONVERTED_MODES = sorted(m for m in Image.MODES if m not in ("La", "I", "F") and not m.startswith("I;16"))


@pytest.mark.parametrize("mode", PIL_CONVERTED_MODES)
def test_to_rgb_converts_as_pil_s_convert_rgb_does(mode):
    """The peers' pixels (transformers' convert_to_rgb, open_clip, timm: convert("RGB")): alpha used to be
    composited on white, a half-transparent red becoming (255, 127, 127) where they see (255, 0, 0)."""
    size = len(Image.new(mode, (5, 3)).tobytes())  # random bytes: every channel, alpha included, varies
    image = Image.frombytes(mode, (5, 3), np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("RGB")))
    half_red = Image.new("RGBA", (2, 2), (255, 0, 0, 128))
    assert to_rgb(half_red).getpixel((0, 0)) == (255, 0, 0)
    assert to_rgb(half_red, background=(255, 255, 255)).getpixel((0, 0)) == (255, 127, 127)  # on request


def test_transparent_palette_images_convert_as_pil_does_without_its_warning(recwarn):
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = bytes([255, 0])  # index 1 transparent, as a tRNS chunk gives it
    with pytest.warns(UserWarning, match="Transparency expressed in bytes"):
        expected = np.asarray(palette.convert("RGB"))
    recwarn.clear()
    assert np.array_equal(np.asarray(to_rgb(palette)), expected) and expected.tolist() == [[[255, 0, 0], [0, 0, 255]]]
    assert not recwarn.list


def test_to_rgb_refuses_what_is_no_image_and_an_image_without_pixels():
    """A tensor raised AttributeError 'info'; a 0-wide image failed later, in each transform its own way."""
    with pytest.raises(TypeError, match=r"^image must be a PIL image \(PIL.Image.Image\), got Tensor$"):
        to_rgb(torch.zeros(3, 4, 4))
    with pytest.raises(TypeError, match=r"^image must be a PIL image \(PIL.Image.Image\), got ndarray$"):
        to_rgb(np.zeros((4, 4, 3), np.uint8))
    for size in ((0, 5), (5, 0)):
        with pytest.raises(ValueError, match=rf"^image must have at least one pixel, got a {size[0]}x{size[1]} image$"):
            to_rgb(Image.new("RGB", size))


def test_to_rgb_keeps_the_brightness_of_a_sixteen_bit_gradient():
    truth = np.linspace(0, 65535, 512)[None].repeat(8, 0)
    for image in (Image.fromarray(truth.astype(np.uint16)), Image.fromarray(truth.astype(np.int32), mode="I")):
        out = np.asarray(to_rgb(image)).astype(float)
        assert abs(out.mean() - truth.mean() / 257) / (truth.mean() / 257) < 0.02, image.mode
        # convert("RGB") clips instead: almost white, the failure decode_image exists to avoid.
        assert np.asarray(image.convert("L").convert("RGB")).mean() > 1.8 * out.mean(), image.mode


def test_no_other_module_opens_images():
    """Every reader and command decodes through decode_image (one function for every reader)."""
    import torchflava

    root = Path(torchflava.__file__).parent
    sources = [*root.rglob("*.py"), *(root.parent / "examples").rglob("*.py")]
    opening = [
        str(p.relative_to(root.parent)) for p in sources if "Image.open(" in p.read_text() and p.name != "decode.py"
    ]
    assert opening == []


def test_readable_chunks_skip_bad_items_and_keep_the_chunk_size():
    from torchflava.data.samples import readable_chunks

    def read(key: int) -> int:
        if key % 3 == 0:
            raise BadSample(key, f"item {key} is bad")
        return key * 10

    skipped: list = []
    chunks = list(readable_chunks(read, range(10), 2, skipped))
    assert chunks == [[(1, 10), (2, 20)], [(4, 40), (5, 50)], [(7, 70), (8, 80)]]
    assert skipped == ["item 0 is bad", "item 3 is bad", "item 6 is bad", "item 9 is bad"]
    assert list(readable_chunks(read, [0, 3], 4, [])) == []  # nothing readable: no chunk


@pytest.mark.parametrize(
    "size, error, message",
    [(0, ValueError, "size must be >= 1, got 0"), (2.0, TypeError, "size must be an int, got float")],
)
def test_readable_chunks_check_the_chunk_size_when_called(size, error, message):
    """A size of 0 gave one chunk of every item (a whole folder decoded at once)."""
    from torchflava.data.samples import readable_chunks

    read = []
    with pytest.raises(error, match=f"^{message}$"):
        readable_chunks(read.append, range(5), size, [])  # not at the first chunk: when called
    assert read == []
