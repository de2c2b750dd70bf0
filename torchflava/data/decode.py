"""One image-decoding function for every reader: any PIL mode to correct 8-bit RGB, bounded in size.

* Size is checked from the header before any pixel is decoded (``max_pixels``), so one 13000 x
  13000 PNG cannot take gigabytes; PIL's own decompression-bomb limit still applies on top.
* EXIF orientation is applied (phone photos stored sideways come out upright), as transformers'
  ``load_image`` does; an image processor given ``Image.open(path)`` itself sees the stored pixels.
* Alpha (RGBA, LA, PA, and the transparent colour of palette, 1-bit, 8/16-bit greyscale and RGB
  PNGs) is dropped, as PIL's ``convert("RGB")`` drops it: the colours stored under it are kept (a
  half-transparent red pixel stays red). The peers all convert so (transformers'
  ``CLIPImageProcessor`` through ``convert_to_rgb``, open_clip's and timm's transforms; a user of
  ``FlavaImageProcessor`` must convert first, as it refuses RGBA), and a checkpoint gives its users'
  results only on their pixels. Given a ``background`` colour, alpha is composited on it instead.
* 16- and 32-bit integer and float greyscale (I;16*, I, F) are scaled from their value range to
  0..255, where ``convert("RGB")`` clips them (the peers' pixels are then almost white for a 16-bit
  photo: no result to match there).
* Palette images expand to their colours, CMYK and YCbCr/LAB/HSV convert to RGB, 1-bit to 0/255,
  premultiplied alpha (La, RGBa) is un-premultiplied first.
"""

import os
from typing import BinaryIO, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from torchflava.utils.checkpoint import special_file_kind

DEFAULT_MAX_PIXELS = 50_000_000  # 50 MP: e.g. 8660 x 5774; larger images are refused (counted as bad samples)

_HIGH_BIT_DEPTH_RANGE = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535}


class ImageDecodeError(ValueError):
    """The image cannot be decoded into a usable RGB image (the reason says why)."""


def decode_image(
    source: Union[str, os.PathLike, BinaryIO],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: Optional[tuple[int, int, int]] = None,
) -> Image.Image:
    """Open ``source`` and decode it fully into an 8-bit RGB image.

    Args:
        source (Union[str, os.PathLike, BinaryIO]): a path or a binary file object.
        max_pixels (int): most pixels (width x height) an image may have; checked before decoding.
        background (Optional[tuple[int, int, int]]): None to drop alpha as PIL's ``convert("RGB")``
            does (the peers' pixels), or the RGB colour to composite it on.

    Returns:
        Image.Image: mode ``"RGB"``, EXIF orientation applied.

    Raises:
        ImageDecodeError: if the file is not an image, is truncated, or is larger than ``max_pixels``.
        ValueError: if ``max_pixels`` < 1 or ``background`` is neither None nor three 0..255 ints.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    _check_background(background)
    try:
        if isinstance(source, (str, os.PathLike)) and (kind := special_file_kind(source)) is not None:
            # a FIFO would block the read forever; a directory or a device is no image either
            raise ImageDecodeError(f"unreadable image ({os.fspath(source)} is not a regular file: {kind})")
        with Image.open(source) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} = {width * height} pixels, more than max_pixels={max_pixels}"
                )
            image.load()  # decode now: a truncated file fails here, not later in a worker
            return to_rgb(ImageOps.exif_transpose(image), background=background)
    except (ImageDecodeError, MemoryError):
        raise
    except UnidentifiedImageError as error:
        raise ImageDecodeError(f"unreadable image (UnidentifiedImageError: {_unidentified(source, error)})") from None
    except Exception as error:  # PIL's plugins fail on malformed files in many ways (struct.error, IndexError...)
        raise ImageDecodeError(f"unreadable image ({type(error).__name__}: {error})") from None


def _unidentified(source: Union[str, os.PathLike, BinaryIO], error: UnidentifiedImageError) -> str:
    """PIL's reason for data it identifies as no image format, for a file object without the repr PIL names
    it by (``<_io.BytesIO object at 0x7f...>``: a memory address, other in every run, where a tar member's
    report wants what the data is), but with its size: an empty member is told from one of another format."""
    if isinstance(source, (str, os.PathLike)):
        return str(error)  # (it names the file)
    try:
        size = source.seek(0, os.SEEK_END)
    except (AttributeError, OSError, ValueError):  # a stream that cannot seek, or one closed
        return "cannot identify image file (not a format PIL reads)"
    if size == 0:
        return "cannot identify image file (empty: 0 bytes)"
    return f"cannot identify image file ({size} bytes of no format PIL reads)"


def to_rgb(image: Image.Image, *, background: Optional[tuple[int, int, int]] = None) -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit RGB (see the module docstring for the rules):
    PIL's ``convert("RGB")``, as transformers' ``CLIPImageProcessor`` and open_clip convert, but for
    16/32-bit and float greyscale (scaled, not clipped) and premultiplied La (which PIL cannot convert).

    Args:
        image (Image.Image): a decoded image.
        background (Optional[tuple[int, int, int]]): None to drop alpha and a transparent colour as
            ``convert("RGB")`` does, or the RGB colour to composite them on.

    Returns:
        Image.Image: mode ``"RGB"`` (the same object when it already is).

    Raises:
        TypeError: if ``image`` is not a PIL image (a tensor or an array: convert it with
            ``Image.fromarray``).
        ValueError: if it has no pixel, a mode PIL cannot convert to RGB, or ``background`` is
            neither None nor three 0..255 ints.
    """
    _check_background(background)
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image (PIL.Image.Image), got {type(image).__name__}")
    if image.width < 1 or image.height < 1:  # (a ZeroDivisionError or a reshape error further on)
        raise ValueError(f"image must have at least one pixel, got a {image.width}x{image.height} image")
    mode, transparency = image.mode, image.info.get("transparency")
    if mode == "La":  # premultiplied alpha: PIL converts it to LA only (which un-premultiplies it)
        image, mode = image.convert("LA"), "LA"
    if mode == "RGB" and (transparency is None or background is None):
        return image
    if mode in _HIGH_BIT_DEPTH_RANGE or mode in ("I", "F"):
        grey = Image.fromarray(_scaled_to_uint8(image), mode="L")
        if mode == "F" or not isinstance(transparency, int) or background is None:
            return grey.convert("RGB")
        # A 16-bit PNG's tRNS grey value: PIL's own conversion drops it (and clips the greys).
        alpha = np.where(np.asarray(image) == transparency, 0, 255).astype(np.uint8)
        image = Image.merge("LA", (grey, Image.fromarray(alpha, mode="L"))).convert("RGBA")
    elif mode == "P":  # (through RGBA: PIL warns of a palette's byte transparency converted to RGB)
        image = image.convert("RGBA" if transparency is not None else "RGB")
    elif mode in ("LA", "PA", "RGBa") or (mode in ("1", "L", "RGB") and transparency is not None):
        image = image.convert("RGBA")
    if image.mode == "RGBA" and background is None:  # the peers' pixels: the colours under the alpha
        return image.convert("RGB")
    if image.mode == "RGBA":
        base = Image.new("RGB", image.size, background)
        base.paste(image, mask=image.getchannel("A"))
        return base
    return _converted(image, "RGB")


def _converted(image: Image.Image, mode: str) -> Image.Image:
    """``image.convert(mode)``; a one-line ValueError naming the mode where PIL cannot convert it."""
    try:
        return image.convert(mode)
    except ValueError:  # a mode this PIL version has and cannot convert
        raise ValueError(f"image mode {image.mode!r} cannot be converted to {mode}") from None


def _check_background(background: object) -> None:
    """ValueError unless ``background`` is None or three ints in 0..255."""
    if background is None:
        return
    if (
        not isinstance(background, (tuple, list))
        or len(background) != 3
        or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in background)
    ):
        raise ValueError(f"background must be None or three ints in 0..255, got {background!r}")


def _scaled_to_uint8(image: Image.Image) -> np.ndarray:
    """Greyscale values of a 16-bit, 32-bit integer or float image mapped to 0..255.

    16-bit modes use their full range 0..65535. ``I`` (32-bit int; PIL also decodes some 16-bit
    PNGs so) and ``F`` (float) use the smallest of 0..1 (floats only), 0..255 and 0..65535 that
    holds every value, else the image's own min..max (of its finite values: a NaN or infinite pixel
    becomes the darkest).
    """
    values = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(values)
    low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
    values = np.where(finite, values, low)  # a NaN or infinite pixel is dark, not the whole image
    if image.mode in _HIGH_BIT_DEPTH_RANGE:
        top = float(_HIGH_BIT_DEPTH_RANGE[image.mode])
    else:
        ranges = ((1.0,) if image.mode == "F" else ()) + (255.0, 65535.0)
        top = next((r for r in ranges if low >= 0 and high <= r), None)
        if top is None:
            values, top = values - low, max(high - low, 1e-12)
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
