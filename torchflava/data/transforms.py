"""Image transforms: a seeded random crop (CLIP, fine-tuning), the same crop also at codebook size (FLAVA),
and the evaluation resize + centre crop."""

import math
import random
from typing import Sequence

from PIL import Image
import torch
from torch import Tensor
from torchvision.transforms import v2

from torchflava.modules.codebook import map_pixels

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_size(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


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
        ValueError: if ``image_size`` is not a positive int, or ``scale`` / ``ratio`` are out of range.
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
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {tuple(scale)}")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got {tuple(ratio)}")
        self.scale, self.ratio = (float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1]))
        self.normalize = v2.Normalize(mean=list(mean), std=list(std))

    def crop_box(self, image_height: int, image_width: int, seed: int) -> tuple[int, int, int, int]:
        """RandomResizedCrop's box (top, left, height, width), drawn from ``seed``.

        Ten tries at an area in ``scale`` and a log-uniform aspect ratio in ``ratio`` that fits the
        image; otherwise the largest centred box within ``ratio``.
        """
        rng = random.Random(seed)
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
        if aspect < self.ratio[0]:
            width, height = image_width, round(image_width / self.ratio[0])
        elif aspect > self.ratio[1]:
            height, width = image_height, round(image_height * self.ratio[1])
        else:
            width, height = image_width, image_height
        return (image_height - height) // 2, (image_width - width) // 2, height, width

    def crop(self, image: Image.Image, seed: int) -> Tensor:
        """The seeded crop at model size, (3, image_size, image_size) in [0, 1], not normalised."""
        top, left, height, width = self.crop_box(image.height, image.width, seed)
        pixels = v2.functional.to_dtype(v2.functional.pil_to_tensor(image), torch.float32, scale=True)
        return v2.functional.resized_crop(
            pixels, top, left, height, width, [self.image_size, self.image_size], antialias=True
        )

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
        self._codebook_resize = v2.Resize(codebook_size, antialias=True)

    def crop_box(self, image_height: int, image_width: int, seed: int) -> tuple[int, int, int, int]:
        """The crop's box (top, left, height, width): :meth:`RandomCropTransform.crop_box`."""
        return self.random_crop.crop_box(image_height, image_width, seed)

    def __call__(self, image: Image.Image, seed: int) -> tuple[Tensor, Tensor]:
        """Crop ``image`` with randomness drawn from ``seed``.

        Args:
            image (Image.Image): an RGB image.
            seed (int): the crop's seed.

        Returns:
            tuple[Tensor, Tensor]: pixels (3, image_size, image_size) normalised, and codebook
            pixels (3, codebook_size, codebook_size) in [0.1, 0.9].
        """
        crop = self.random_crop.crop(image, seed)
        codebook = map_pixels(self._codebook_resize(crop).clamp(0, 1))
        return self.random_crop.normalize(crop), codebook


class EvalImageTransform:
    """Resize the short side to ``image_size``, centre-crop, CLIP-normalise (evaluation and features).

    Args:
        image_size (int): output side.
        mean (Sequence[float]): per-channel normalisation mean.
        std (Sequence[float]): per-channel normalisation std.
    """

    def __init__(self, image_size: int = 224, *, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        self.image_size = _check_size("image_size", image_size)
        self._transform = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(image_size, antialias=True),
                v2.CenterCrop(image_size),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(mean), std=list(std)),
            ]
        )

    def __call__(self, image: Image.Image) -> Tensor:
        """(3, image_size, image_size) normalised pixels of ``image``."""
        return self._transform(image)
