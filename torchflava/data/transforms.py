"""Image transforms: a checkpoint's own evaluation preprocessing, the evaluation resize + centre crop,
a seeded random crop (CLIP, fine-tuning) and the same crop also at codebook size (FLAVA).

* :class:`ImageTransform` does what an :class:`ImageTransformSpec` states: the resize (squash to
  (H, W), or short side to S and the long side in proportion) with a PIL filter, a centre crop,
  rescaling and normalisation, in the order and arithmetic of transformers' (PIL-based) image
  processors. The spec is read from a checkpoint's ``preprocessor_config.json``
  (:meth:`ImageTransformSpec.from_preprocessor_config`) and written to one
  (:meth:`ImageTransform.save`).
* :class:`EvalImageTransform` is the one torchflava's recipes evaluate with: short side, bilinear,
  centre crop, CLIP normalisation. Their exports record it in ``preprocessor_config.json``.

Every transform accepts a PIL image of any mode (RGBA, LA, P, CMYK, I;16, ...): it is converted
with :func:`~torchflava.data.decode.to_rgb` first, as :func:`~torchflava.data.decode.decode_image`
does: alpha is dropped as PIL's ``convert("RGB")`` (and so transformers' ``CLIPImageProcessor``,
open_clip and timm) drops it, and 16-bit values are scaled rather than clipped.

The tensor steps (PIL to uint8, uint8 to [0, 1], bilinear antialiased resize, normalisation) are
written here on ``torch.nn.functional.interpolate`` with the arithmetic of torchvision's
``transforms.v2`` (the tests check them equal to the bit) rather than imported from it: importing
torchvision imports ``torch._dynamo`` (~2 s on 2 cores for every process that imports this package,
e.g. a spawned data worker).
"""

from dataclasses import dataclass
import json
import math
import numbers
import os
from pathlib import Path
import random
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image
import torch
from torch import Tensor
import torch.nn.functional as F

from torchflava.data.decode import to_rgb
from torchflava.modules.codebook import map_pixels
from torchflava.utils.checkpoint import atomic_write
from torchflava.utils.checks import check_int, check_positive_number

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def pil_to_uint8(image: Image.Image, box: Optional[tuple[int, int, int, int]] = None) -> Tensor:
    """(C, H, W) uint8 pixels of an 8-bit PIL image, a channels-last view of a copy of its data.

    Args:
        image (Image.Image): an image of mode RGB (or L).
        box (Optional[tuple[int, int, int, int]]): (top, left, height, width): only this region
            (inside the image); None for the whole image.

    Returns:
        Tensor: (C, H, W) uint8, strides (1, W * C, C).

    Raises:
        ValueError: if ``box`` is empty or reaches outside the image.
    """
    array = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, -1)
    if box is not None:
        top, left, height, width = box
        if not (0 <= top and 0 <= left and 0 < height <= image.height - top and 0 < width <= image.width - left):
            raise ValueError(
                f"box (top, left, height, width) must lie inside the {image.width}x{image.height} image, got {box}"
            )
        array = array[top : top + height, left : left + width]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # a writable, C-ordered copy


def uint8_to_unit(pixels: Tensor) -> Tensor:
    """uint8 pixels as float32 in [0, 1]: ``x * (1 / 255)``."""
    return pixels.to(torch.float32).mul_(1.0 / 255)


def resize_bilinear(pixels: Tensor, height: int, width: int) -> Tensor:
    """Bilinear, antialiased resize of (C, H, W) float pixels to (C, height, width) (half-pixel centres).

    Args:
        pixels (Tensor): (C, H, W) float32 or float64.
        height (int): output height.
        width (int): output width.

    Returns:
        Tensor: (C, height, width); ``pixels`` itself when the size is already that.
    """
    if tuple(pixels.shape[-2:]) == (height, width):
        return pixels
    out = F.interpolate(pixels.unsqueeze(0), size=[height, width], mode="bilinear", align_corners=False, antialias=True)
    return out.squeeze(0)


def channel_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor]:
    """``mean`` and ``std`` as float32 (C, 1, 1) tensors, the shape :func:`normalize_channels` takes.

    Raises:
        ValueError: unless each holds 3 finite numbers (RGB), ``std`` all positive (0 gave -inf pixels).
    """
    for name, values in (("mean", mean), ("std", std)):
        try:
            floats = [float(v) for v in values]
        except (TypeError, ValueError):
            floats = []
        ok = len(floats) == 3 and all(math.isfinite(v) for v in floats)
        if not ok or (name == "std" and min(floats) <= 0):
            raise ValueError(f"{name} must be 3 finite numbers (RGB){', > 0' if name == 'std' else ''}, got {values!r}")
    return tuple(torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in (mean, std))


def normalize_channels(pixels: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(pixels - mean) / std`` per channel: pixels (C, H, W), mean and std (C, 1, 1)."""
    return pixels.sub(mean).div_(std)


def _check_size(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _number_pair(name: str, value: object) -> tuple[float, float]:
    """``value`` as a (low, high) pair of floats, else TypeError (not numbers: 0.5 raised "object of type
    'float' has no len()", ("a", "b") "'<' not supported") or ValueError (not two) naming ``name``."""
    message = f"{name} must be a (low, high) pair of numbers, got {value!r}"
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(message)
    values = list(value)
    try:
        if any(isinstance(v, (bool, str, bytes)) for v in values):
            raise TypeError
        floats = [float(v) for v in values]
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(message) from None
    if len(floats) != 2:
        raise ValueError(message)
    return floats[0], floats[1]


class RandomCropTransform:
    """Seeded RandomResizedCrop to ``image_size``, CLIP-normalised (contrastive training, fine-tuning).

    Randomness comes only from ``seed``: the same image and seed give the same crop in any process,
    and no global random state is read or changed.

    Args:
        image_size (int): side of the encoder input.
        scale (Sequence[float]): range of the crop's area fraction.
        ratio (Sequence[float]): range of the crop's aspect ratio.
        mean (Sequence[float]): per-channel normalisation mean.
        std (Sequence[float]): per-channel normalisation std.

    Raises:
        TypeError: if ``scale`` or ``ratio`` does not hold numbers.
        ValueError: if ``image_size`` is not a positive int, or ``scale`` / ``ratio`` are not two numbers
            in range.
    """

    def __init__(
        self,
        image_size: int = 224,
        *,
        scale: Sequence[float] = (0.9, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        self.image_size = _check_size("image_size", image_size)
        self.scale, self.ratio = _number_pair("scale", scale), _number_pair("ratio", ratio)
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {tuple(scale)}")
        if not 0 < self.ratio[0] <= self.ratio[1] < math.inf:
            raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got {tuple(ratio)}")
        self._mean, self._std = channel_stats(mean, std)

    def crop_box(self, image_height: int, image_width: int, seed: int) -> tuple[int, int, int, int]:
        """RandomResizedCrop's box (top, left, height, width), drawn from ``seed``.

        Ten tries at an area in ``scale`` and a log-uniform aspect ratio in ``ratio`` that fits the
        image; otherwise the largest centred box within ``ratio``.

        Raises:
            TypeError: if ``seed`` is not an int (None drew from the clock: another crop at each call),
                or a size not an int.
            ValueError: if a size is below 1.
        """
        check_int("image_height", image_height, 1)
        check_int("image_width", image_width, 1)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int (the crop's only randomness), got {type(seed).__name__}")
        rng = random.Random(int(seed))
        area = image_height * image_width
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(log_low, log_high))
            width = round(math.sqrt(target * aspect))
            height = round(math.sqrt(target / aspect))
            if 0 < width <= image_width and 0 < height <= image_height:
                return rng.randint(0, image_height - height), rng.randint(0, image_width - width), height, width
        aspect = image_width / image_height
        if aspect < self.ratio[0]:  # (at least a pixel: a 1-2 px side rounded to an empty box)
            width, height = image_width, max(1, round(image_width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            height, width = image_height, max(1, round(image_height * self.ratio[1]))
        else:
            width, height = image_width, image_height
        return (image_height - height) // 2, (image_width - width) // 2, height, width

    def crop(self, image: Image.Image, seed: int) -> Tensor:
        """The seeded crop at model size, (3, image_size, image_size) in [0, 1], not normalised."""
        image = to_rgb(image)
        top, left, height, width = self.crop_box(image.height, image.width, seed)
        pixels = pil_to_uint8(image, box=(top, left, height, width))  # only the crop is converted
        return resize_bilinear(uint8_to_unit(pixels), self.image_size, self.image_size)

    def normalize(self, pixels: Tensor) -> Tensor:
        """(3, H, W) pixels in [0, 1], normalised with this transform's mean and std."""
        return normalize_channels(pixels, self._mean, self._std)

    def __call__(self, image: Image.Image, seed: int) -> Tensor:
        """(3, image_size, image_size) normalised pixels of a crop of ``image`` drawn from ``seed``."""
        return self.normalize(self.crop(image, seed))


class PretrainingImageTransform:
    """:class:`RandomCropTransform` plus the codebook view of the same crop (FLAVA's MIM targets).

    The codebook view is the model-size crop resized to ``codebook_size`` and mapped into
    [0.1, 0.9] (:func:`~torchflava.modules.codebook.map_pixels`), the dVAE encoder's input.

    Args:
        image_size (int): side of the encoder input (224 for FLAVA-full).
        codebook_size (int): side of the codebook input (112 for FLAVA-full: 8 px per patch id).
        scale (Sequence[float]): range of the crop's area fraction.
        ratio (Sequence[float]): range of the crop's aspect ratio.
        mean (Sequence[float]): per-channel normalisation mean.
        std (Sequence[float]): per-channel normalisation std.

    Raises:
        ValueError: if a size is not a positive int or ``scale`` is not within (0, 1].
    """

    def __init__(
        self,
        image_size: int = 224,
        codebook_size: int = 112,
        *,
        scale: Sequence[float] = (0.9, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        self.random_crop = RandomCropTransform(image_size, scale=scale, ratio=ratio, mean=mean, std=std)
        self.image_size, self.scale, self.ratio = image_size, self.random_crop.scale, self.random_crop.ratio
        self.codebook_size = _check_size("codebook_size", codebook_size)

    def crop_box(self, image_height: int, image_width: int, seed: int) -> tuple[int, int, int, int]:
        """The crop's box (top, left, height, width): :meth:`RandomCropTransform.crop_box`."""
        return self.random_crop.crop_box(image_height, image_width, seed)

    def __call__(self, image: Image.Image, seed: int) -> tuple[Tensor, Tensor]:
        """Crop ``image`` with randomness drawn from ``seed``.

        Args:
            image (Image.Image): an image of any mode (converted with :func:`~torchflava.data.decode.to_rgb`).
            seed (int): the crop's seed.

        Returns:
            tuple[Tensor, Tensor]: pixels (3, image_size, image_size) normalised, and codebook
            pixels (3, codebook_size, codebook_size) in [0.1, 0.9].
        """
        crop = self.random_crop.crop(image, seed)  # square
        codebook = map_pixels(resize_bilinear(crop, self.codebook_size, self.codebook_size).clamp(0, 1))
        return self.random_crop.normalize(crop), codebook


# PIL's filter codes, as transformers stores ``resample`` in preprocessor_config.json.
RESAMPLE_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
BILINEAR, BICUBIC = 2, 3
RESIZE_MODES = ("squash", "short_side")
# Where a centre crop's top-left corner goes when the margin is odd: "floor" ((H - h) // 2, transformers'
# processors), "half_even" (round((H - h) / 2), halves to even: torchvision's CenterCrop, so open_clip's).
CROP_ROUNDINGS = ("floor", "half_even")
PREPROCESSOR_CONFIG = "preprocessor_config.json"
OPEN_CLIP_CONFIG = "open_clip_config.json"
# open_clip's interpolation names, as PIL filter codes.
OPEN_CLIP_INTERPOLATIONS = {"bicubic": BICUBIC, "bilinear": BILINEAR, "random": BICUBIC}  # random: bicubic at inference


def _size_pair(name: str, value: object) -> tuple[int, int]:
    """A (height, width) pair of positive ints, or raise naming ``name``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a (height, width) pair of positive ints, got {value!r}")
    return _check_size(f"{name} height", value[0]), _check_size(f"{name} width", value[1])


def _channels(name: str, value: object, *, positive: bool) -> tuple[float, float, float]:
    """Three finite per-channel numbers (positive ones if ``positive``), or raise naming ``name``."""
    numbers = value if isinstance(value, (tuple, list)) else None
    if (
        numbers is None
        or len(numbers) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers)
        or (positive and not all(v > 0 for v in numbers))
    ):
        kind = "positive" if positive else "finite"
        raise ValueError(f"{name} must be three {kind} numbers (one per RGB channel), got {value!r}")
    return float(numbers[0]), float(numbers[1]), float(numbers[2])


def _per_channel(value: object) -> object:
    """A number as the same value for each of the three channels; anything else as given."""
    return [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _filter_code(name: str, value: object) -> int:
    """A PIL filter code (PIL's Resampling enum reads as its code), or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in RESAMPLE_FILTERS:
        raise ValueError(f"{name} must be a PIL filter code in {RESAMPLE_FILTERS}, got {value!r}")
    return int(value)


def crop_offset(margin: int, rounding: str) -> int:
    """Offset of a centre crop that leaves ``margin`` pixels of a side out, by ``rounding`` (:data:`CROP_ROUNDINGS`)."""
    return margin // 2 if rounding == "floor" else round(margin / 2)  # (Python's round: halves to even)


def _crop_fits(crop: tuple[int, int], resize_mode: str, resize_size: Union[int, tuple[int, int]]) -> bool:
    """Whether a centre crop fits in every image resized so (the short side is the smallest one)."""
    smallest = resize_size if resize_mode == "squash" else (resize_size, resize_size)
    return crop[0] <= smallest[0] and crop[1] <= smallest[1]


# Resized images of more pixels than this (64 MiB as PIL holds RGB) are resized in the crop's box only.
_MAX_WHOLE_RESIZE_PIXELS = 1 << 24


@dataclass(frozen=True)
class ImageTransformSpec:
    """What an evaluation image transform does, in the terms of a ``preprocessor_config.json``.

    Attributes:
        resize_mode (str): ``"squash"`` resizes to ``resize_size`` = (height, width) whatever the
            aspect ratio (transformers' FLAVA and ViT processors); ``"short_side"`` resizes the short
            side to ``resize_size`` (an int) and the long side in proportion, rounded down (CLIP's
            processor and :class:`EvalImageTransform`).
        resize_size (Union[int, tuple[int, int]]): see ``resize_mode``.
        resample (int): PIL filter code: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming.
        crop_size (Optional[tuple[int, int]]): (height, width) of the centre crop, None for none.
        rescale_factor (Optional[float]): factor on the 0..255 values (1/255 gives 0..1), None for none.
        mean (Optional[tuple[float, float, float]]): per-channel normalisation mean, None for none.
        std (Optional[tuple[float, float, float]]): per-channel normalisation std, None with ``mean``.
        crop_rounding (str): where the crop goes when its margin is odd (:data:`CROP_ROUNDINGS`):
            ``"floor"`` as transformers' processors, ``"half_even"`` as torchvision's ``CenterCrop``
            (open_clip's transform); one pixel apart.

    Raises:
        ValueError: if a field is out of range, or the crop does not fit in every resized image.
    """

    resize_mode: str
    resize_size: Union[int, tuple[int, int]]
    resample: int
    crop_size: Optional[tuple[int, int]]
    rescale_factor: Optional[float] = 1 / 255
    mean: Optional[tuple[float, float, float]] = CLIP_MEAN
    std: Optional[tuple[float, float, float]] = CLIP_STD
    crop_rounding: str = "floor"

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # frozen: fields are normalised (lists to tuples) once, here
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.crop_rounding not in CROP_ROUNDINGS:
            raise ValueError(f"crop_rounding must be one of {CROP_ROUNDINGS}, got {self.crop_rounding!r}")
        if self.resize_mode == "squash":
            set_field(self, "resize_size", _size_pair("resize_size", self.resize_size))
        else:
            _check_size("resize_size", self.resize_size)
        set_field(self, "resample", _filter_code("resample", self.resample))
        if self.crop_size is not None:
            set_field(self, "crop_size", _size_pair("crop_size", self.crop_size))
            if not _crop_fits(self.crop_size, self.resize_mode, self.resize_size):
                raise ValueError(
                    f"crop_size must fit in the resized image ({self.resize_mode} {self.resize_size}), "
                    f"got {self.crop_size}"
                )
        if self.rescale_factor is not None:
            set_field(self, "rescale_factor", check_positive_number("rescale_factor", self.rescale_factor))
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"mean and std must both be given or both be None, got {self.mean!r} and {self.std!r}")
        if self.mean is not None:
            set_field(self, "mean", _channels("mean", self.mean, positive=False))
            set_field(self, "std", _channels("std", self.std, positive=True))

    @property
    def output_size(self) -> Optional[tuple[int, int]]:
        """(height, width) of every output, or None when it follows the image (short side, no crop)."""
        if self.crop_size is not None:
            return self.crop_size
        return self.resize_size if self.resize_mode == "squash" else None

    @classmethod
    def from_preprocessor_config(cls, config: Mapping) -> "ImageTransformSpec":
        """Read a transformers image processor's settings (a parsed ``preprocessor_config.json``).

        Keys read, with ``FlavaImageProcessor``'s defaults where absent or null: ``do_resize`` (only
        true is supported), ``size`` (``{"height", "width"}``: squash; ``{"shortest_edge"}``: short
        side; an int: square, or the short side for CLIP processors, as transformers reads it),
        ``resample`` (default bicubic), ``do_center_crop`` and ``crop_size`` (an int is square),
        ``do_rescale`` and ``rescale_factor``, ``do_normalize``, ``image_mean`` and ``image_std`` (a
        number applies to every channel), and torchflava's own ``crop_rounding`` (``"floor"`` where
        absent: transformers ignores the key). Other keys (codebook and masking settings) are not about
        evaluation and are ignored. Images are always converted to RGB. Every config is read with the
        PIL arithmetic of the slow processors; transformers' ``...Fast`` processors resize with
        torchvision instead, about one 8-bit level away.

        Args:
            config (Mapping): the parsed JSON object.

        Returns:
            ImageTransformSpec: the transform it states.

        Raises:
            TypeError: if ``config`` is not a mapping.
            ValueError: naming the key, if a value is malformed or not supported.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"{PREPROCESSOR_CONFIG} must hold a JSON object, got {type(config).__name__}")

        def get(key: str, default: object) -> object:
            return default if config.get(key) is None else config[key]

        def flag(key: str) -> bool:
            value = get(key, True)
            if not isinstance(value, bool):
                raise ValueError(f"{PREPROCESSOR_CONFIG}: {key} must be true or false, got {value!r}")
            return value

        def pair(key: str, value: object) -> tuple[int, int]:
            if isinstance(value, int) and not isinstance(value, bool):
                value = {"height": value, "width": value}
            if not isinstance(value, Mapping) or set(value) != {"height", "width"}:
                raise ValueError(
                    f'{PREPROCESSOR_CONFIG}: {key} must be {{"height": H, "width": W}} or an int, got {value!r}'
                )
            return _size_pair(f"{PREPROCESSOR_CONFIG}: {key}", (value["height"], value["width"]))

        if not flag("do_resize"):
            raise ValueError(
                f"{PREPROCESSOR_CONFIG}: do_resize must be true (the model takes one image size), got false"
            )
        kind = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
        size = get("size", {"height": 224, "width": 224})
        if isinstance(size, Mapping):
            size = {k: v for k, v in size.items() if v is not None}
        if isinstance(size, int) and not isinstance(size, bool) and kind.startswith("CLIP"):
            size = {"shortest_edge": size}
        if isinstance(size, Mapping) and set(size) == {"shortest_edge"}:
            mode, resize = (
                "short_side",
                _check_size(f"{PREPROCESSOR_CONFIG}: size shortest_edge", size["shortest_edge"]),
            )
        else:
            mode, resize = "squash", pair("size", size)
        resample = _filter_code(f"{PREPROCESSOR_CONFIG}: resample", get("resample", BICUBIC))
        crop = pair("crop_size", get("crop_size", 224)) if flag("do_center_crop") else None
        if crop is not None and not _crop_fits(crop, mode, resize):
            raise ValueError(
                f"{PREPROCESSOR_CONFIG}: crop_size must fit in the resized image (size {size}), got {crop}"
            )
        factor = None
        if flag("do_rescale"):
            factor = check_positive_number(f"{PREPROCESSOR_CONFIG}: rescale_factor", get("rescale_factor", 1 / 255))
        mean = std = None
        if flag("do_normalize"):
            mean, std = get("image_mean", CLIP_MEAN), get("image_std", CLIP_STD)
            mean, std = _per_channel(mean), _per_channel(std)
            mean = _channels(f"{PREPROCESSOR_CONFIG}: image_mean", mean, positive=False)
            std = _channels(f"{PREPROCESSOR_CONFIG}: image_std", std, positive=True)
        rounding = get("crop_rounding", "floor")
        if rounding not in CROP_ROUNDINGS:
            raise ValueError(f"{PREPROCESSOR_CONFIG}: crop_rounding must be one of {CROP_ROUNDINGS}, got {rounding!r}")
        return cls(
            resize_mode=mode,
            resize_size=resize,
            resample=resample,
            crop_size=crop,
            rescale_factor=factor,
            mean=mean,
            std=std,
            crop_rounding=rounding,
        )

    @classmethod
    def from_open_clip_config(cls, config: Mapping, image_size: int) -> "ImageTransformSpec":
        """Read open_clip's evaluation preprocessing (a parsed ``open_clip_config.json``).

        Its ``preprocess_cfg`` over open_clip's defaults, as open_clip's inference transform applies
        them: ``resize_mode`` ``"shortest"`` (the default: the short side to ``image_size``, the long
        side in proportion rounded down, a centre crop of ``image_size`` placed as torchvision's
        ``CenterCrop`` places it) or ``"squash"`` (straight to ``image_size`` squared);
        ``interpolation`` ``"bicubic"`` (the default; ``"random"`` is bicubic at inference) or
        ``"bilinear"``; ``mean`` and ``std`` (default CLIP's); values divided by 255. The size is the
        model's ``image_size``, whatever ``size`` says (open_clip sets it from the model, too); a null
        value is an absent one; ``fill_color`` and keys open_clip does not know are not read. The
        pixels equal open_clip's for RGB images (other modes: :func:`to_rgb` before the resize, where
        open_clip converts after it).

        Args:
            config (Mapping): the parsed JSON object (``model_cfg``, ``preprocess_cfg``).
            image_size (int): the model's image side.

        Returns:
            ImageTransformSpec: the transform it states.

        Raises:
            TypeError: if ``config`` is not a mapping.
            ValueError: naming the key, if ``preprocess_cfg`` is no object or a value is malformed or
                not supported (``resize_mode`` ``"longest"``: a padded resize; a ``mode`` other than RGB).
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"{OPEN_CLIP_CONFIG} must hold a JSON object, got {type(config).__name__}")
        where = f"{OPEN_CLIP_CONFIG}: preprocess_cfg"
        preprocess = config.get("preprocess_cfg") or {}
        if not isinstance(preprocess, Mapping):
            raise ValueError(f"{where} must be a JSON object, got {preprocess!r}")

        def get(key: str, default: object) -> object:
            return default if preprocess.get(key) is None else preprocess[key]

        side = _check_size("image_size", image_size)
        if get("mode", "RGB") != "RGB":
            raise ValueError(f"{where}.mode must be 'RGB', got {preprocess['mode']!r}")
        interpolation = get("interpolation", "bicubic")
        if not isinstance(interpolation, str) or interpolation not in OPEN_CLIP_INTERPOLATIONS:
            raise ValueError(
                f"{where}.interpolation must be one of {list(OPEN_CLIP_INTERPOLATIONS)}, got {interpolation!r}"
            )
        resize_mode = get("resize_mode", "shortest")
        if resize_mode not in ("shortest", "squash"):
            raise ValueError(
                f"{where}.resize_mode must be 'shortest' or 'squash' ('longest', a padded resize, is not "
                f"supported), got {resize_mode!r}"
            )
        mean, std = _per_channel(get("mean", CLIP_MEAN)), _per_channel(get("std", CLIP_STD))
        shortest = resize_mode == "shortest"
        return cls(
            resize_mode="short_side" if shortest else "squash",
            resize_size=side if shortest else (side, side),
            resample=OPEN_CLIP_INTERPOLATIONS[interpolation],
            crop_size=(side, side) if shortest else None,
            rescale_factor=1 / 255,
            mean=_channels(f"{where}.mean", mean, positive=False),
            std=_channels(f"{where}.std", std, positive=True),
            crop_rounding="half_even",
        )

    def to_preprocessor_config(self) -> dict:
        """The ``preprocessor_config.json`` object that states this transform.

        transformers reads it too: a squash spec as a ``FlavaImageProcessor``, a short-side one as a
        ``CLIPImageProcessor`` (which resizes, crops and normalises the same way).

        Returns:
            dict: JSON-serialisable settings; :meth:`from_preprocessor_config` reads them back to
            an equal spec.
        """
        squash = self.resize_mode == "squash"
        config = {
            "image_processor_type": "FlavaImageProcessor" if squash else "CLIPImageProcessor",
            "do_resize": True,
            "size": {"height": self.resize_size[0], "width": self.resize_size[1]}
            if squash
            else {"shortest_edge": self.resize_size},
            "resample": self.resample,
            "do_center_crop": self.crop_size is not None,
            "do_rescale": self.rescale_factor is not None,
            "do_normalize": self.mean is not None,
        }
        if not squash:
            config["do_convert_rgb"] = True
        if self.crop_size is not None:
            config["crop_size"] = {"height": self.crop_size[0], "width": self.crop_size[1]}
        if self.rescale_factor is not None:
            config["rescale_factor"] = self.rescale_factor
        if self.mean is not None:
            config["image_mean"], config["image_std"] = list(self.mean), list(self.std)
        if self.crop_rounding != "floor":
            config["crop_rounding"] = self.crop_rounding
        return config


class ImageTransform:
    """PIL image of any mode -> (3, H, W) float pixels, as ``spec`` states, in transformers' arithmetic.

    The steps are those of transformers' PIL-based image processors (``FlavaImageProcessor``,
    ``CLIPImageProcessor``), so a checkpoint's own preprocessing is reproduced: :func:`to_rgb`; PIL
    resize of the 8-bit image with ``spec.resample``; centre crop with its top-left corner at
    ((H - h) // 2, (W - w) // 2) (or rounded halves to even: ``spec.crop_rounding``); values times ``rescale_factor`` (in float64, then float32); then
    (x - mean) / std in float32. The pixels equal the processor's to the bit, except for strips whose
    resized image would exceed 2**24 pixels (over 334 times as long as wide, at 224): only the crop's
    part of them is resized (the whole takes 64 MiB and up), a few 8-bit levels from the processor.

    Args:
        spec (ImageTransformSpec): what to do.

    Raises:
        TypeError: if ``spec`` is not an :class:`ImageTransformSpec`.
    """

    def __init__(self, spec: ImageTransformSpec) -> None:
        if not isinstance(spec, ImageTransformSpec):
            raise TypeError(f"spec must be an ImageTransformSpec, got {type(spec).__name__}")
        self.spec = spec
        self._mean, self._std = (None, None) if spec.mean is None else channel_stats(spec.mean, spec.std)

    @property
    def output_size(self) -> Optional[tuple[int, int]]:
        """(height, width) of every output, or None when it follows the image."""
        return self.spec.output_size

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) an image of that size is resized to (before the crop); TypeError / ValueError
        unless both are ints >= 1."""
        check_int("height", height, 1)
        check_int("width", width, 1)
        if self.spec.resize_mode == "squash":
            return self.spec.resize_size
        side = self.spec.resize_size
        if height <= width:
            return side, int(side * width / height)
        return int(side * height / width), side

    def __call__(self, image: Image.Image) -> Tensor:
        """(3, H, W) float32 pixels of ``image`` (any PIL mode; converted with :func:`to_rgb`)."""
        image = to_rgb(image)
        height, width = self.resized_size(image.height, image.width)
        crop = self.spec.crop_size
        rounding = self.spec.crop_rounding
        top, left = (
            (0, 0)
            if crop is None
            else (crop_offset(height - crop[0], rounding), crop_offset(width - crop[1], rounding))
        )
        if crop is not None and min(top, left) >= 0 and height * width > _MAX_WHOLE_RESIZE_PIXELS:
            # An extreme aspect ratio (a 50000 x 1 strip): resizing it whole would take gigabytes for
            # a crop of a few hundred pixels. Resize only the part the crop keeps (PIL's box: the
            # same filter centres, but PIL may then run its two passes in the other order, and a
            # bicubic or lanczos filter's overshoot is clipped to 8 bits between them: a few levels
            # off). Every image whose resize fits in 2**24 pixels (aspect ratios up to 334:1 at 224)
            # takes the exact path below: a box path for smaller ones was 2 levels off on photos.
            sy, sx = image.height / height, image.width / width
            box = (left * sx, top * sy, (left + crop[1]) * sx, (top + crop[0]) * sy)
            image = image.resize((crop[1], crop[0]), resample=self.spec.resample, box=box)
        else:
            image = image.resize((width, height), resample=self.spec.resample)
            if crop is not None:
                image = image.crop((left, top, left + crop[1], top + crop[0]))
        pixels = pil_to_uint8(image)  # (3, H, W)
        if self.spec.rescale_factor is not None:
            pixels = (pixels.double() * self.spec.rescale_factor).float()
        else:
            pixels = pixels.float()
        if self._mean is not None:
            pixels = normalize_channels(pixels, self._mean, self._std)
        return pixels

    def save(self, directory: Union[str, os.PathLike]) -> Path:
        """Write ``preprocessor_config.json`` stating this transform into ``directory`` (atomically).

        Args:
            directory (Union[str, os.PathLike]): where (created if missing).

        Returns:
            Path: the file written.
        """
        path = Path(directory) / PREPROCESSOR_CONFIG
        text = json.dumps(self.spec.to_preprocessor_config(), indent=2) + "\n"
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return path


class EvalImageTransform(ImageTransform):
    """Resize the short side to ``image_size`` (bilinear), centre-crop, CLIP-normalise.

    The transform torchflava's recipes evaluate and fine-tune with; their exports record it with
    :meth:`~ImageTransform.save` (a ``CLIPImageProcessor``-style ``preprocessor_config.json``), and it
    is what a checkpoint without a ``preprocessor_config.json`` is evaluated with.

    Args:
        image_size (int): output side.
        mean (Sequence[float]): per-channel normalisation mean.
        std (Sequence[float]): per-channel normalisation std.

    Raises:
        ValueError: if ``image_size`` is not a positive int, or ``mean`` / ``std`` are not three numbers.
    """

    def __init__(self, image_size: int = 224, *, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        self.image_size = _check_size("image_size", image_size)
        spec = ImageTransformSpec(
            resize_mode="short_side",
            resize_size=image_size,
            resample=BILINEAR,
            crop_size=(image_size, image_size),
            mean=tuple(mean),
            std=tuple(std),
        )
        super().__init__(spec)
