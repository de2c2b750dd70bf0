"""BEiT block-wise patch masking for masked image modelling.

Rectangles of patches are placed at random on the (H, W) patch grid until ``num_masked`` patches
are covered (Bao et al., "BEiT: BERT Pre-Training of Image Transformers", Algorithm 1). FLAVA
masks its image patches the same way (14 x 14 grid, 75 patches, blocks of at least 16).
"""

import math
from typing import Optional, Union

import torch
from torch import Tensor

from torchflava.utils.checks import check_generator, check_int

#: Placement attempts per rectangle before a round gives up (as in BEiT).
MAX_ATTEMPTS = 10


def _grid_shape(grid_size: Union[int, tuple[int, int]]) -> tuple[int, int]:
    """(H, W) from an int (square grid) or a pair of ints."""
    if isinstance(grid_size, (tuple, list)):
        if len(grid_size) != 2:
            raise ValueError(f"grid_size must be an int or a pair (H, W), got {tuple(grid_size)}")
        return check_int("grid_size", grid_size[0], 1), check_int("grid_size", grid_size[1], 1)
    size = check_int("grid_size", grid_size, 1)
    return size, size


def _check_block_args(
    grid_size: Union[int, tuple[int, int]],
    num_masked: int,
    min_block: int,
    max_block: Optional[int],
    min_aspect: float,
    max_aspect: Optional[float],
) -> tuple[int, int, int, float, float]:
    """Validate the block-masking arguments; return (H, W, max_block, min_aspect, max_aspect) resolved."""
    height, width = _grid_shape(grid_size)
    check_int("num_masked", num_masked, 0)
    if num_masked > height * width:
        raise ValueError(f"num_masked must be in [0, H*W] = [0, {height * width}], got {num_masked}")
    check_int("min_block", min_block, 1)
    if max_block is None:
        max_block = num_masked
    else:
        check_int("max_block", max_block, 1)
        if max_block < min_block:
            raise ValueError(f"max_block must be >= min_block = {min_block}, got {max_block}")
    for name, value in (("min_aspect", min_aspect), ("max_aspect", max_aspect)):
        if (value is not None or name == "min_aspect") and (
            isinstance(value, bool) or not isinstance(value, (int, float))
        ):
            raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not (math.isfinite(min_aspect) and min_aspect > 0):
        raise ValueError(f"min_aspect must be > 0, got {min_aspect}")
    if max_aspect is None:
        max_aspect = 1.0 / min_aspect
    if not (math.isfinite(max_aspect) and max_aspect >= min_aspect):
        raise ValueError(f"max_aspect must be >= min_aspect = {min_aspect}, got {max_aspect}")
    return height, width, max_block, float(min_aspect), float(max_aspect)


def _place_block(
    grid: list[bytearray],
    budget: int,
    min_block: int,
    log_aspect: tuple[float, float],
    generator: Optional[torch.Generator],
) -> int:
    """Try up to MAX_ATTEMPTS random rectangles; mask the first one that adds 1..``budget`` patches.

    ``grid`` holds the mask's rows, 1 = masked (plain Python: at these sizes a tensor's per-call cost
    would dominate).

    Returns:
        int: the number of newly masked patches (0 when every attempt failed).
    """
    height, width = len(grid), len(grid[0])
    device = generator.device if generator is not None else "cpu"
    for _ in range(MAX_ATTEMPTS):
        draws = torch.rand(4, generator=generator, dtype=torch.float64, device=device)
        u_area, u_aspect, u_top, u_left = draws.tolist()
        # Uniform in [min_block, budget]; between budget and min_block when the budget is smaller (as BEiT).
        area = min_block + (budget - min_block) * u_area
        aspect = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * u_aspect)
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if not (1 <= h <= height and 1 <= w <= width):
            continue
        top = min(int(u_top * (height - h + 1)), height - h)
        left = min(int(u_left * (width - w + 1)), width - w)
        rows = grid[top : top + h]
        added = h * w - sum(sum(row[left : left + w]) for row in rows)
        if 0 < added <= budget:
            for row in rows:
                row[left : left + w] = b"\x01" * w
            return added
    return 0


def block_mask(
    grid_size: Union[int, tuple[int, int]] = 14,
    *,
    num_masked: int = 75,
    min_block: int = 16,
    max_block: Optional[int] = None,
    min_aspect: float = 0.3,
    max_aspect: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Mask about ``num_masked`` patches of an (H, W) grid with random rectangles (BEiT).

    Rounds repeat until ``num_masked`` patches are masked or a round adds nothing. In each round
    up to 10 rectangles are tried: area uniform in [min_block, remaining budget] (the budget is
    capped by ``max_block``; when it is below ``min_block`` the area lies between the two),
    aspect ratio h / w log-uniform in [min_aspect, max_aspect], h = round(sqrt(area * aspect)),
    w = round(sqrt(area / aspect)), position uniform among those where the rectangle fits. The
    first rectangle that masks between 1 and the remaining budget new patches is kept.

    The result never masks more than ``num_masked`` patches and usually masks exactly that many;
    it can mask fewer when no rectangle fits (for example when ``min_block`` and the aspect
    ratios ask for rectangles larger than the grid). New blocks may overlap earlier ones, so a
    masked region is a union of rectangles, each of about ``min_block`` patches or more except
    possibly the last ones placed, which are limited by the remaining budget.

    Args:
        grid_size (int | tuple[int, int]): the patch grid, H = W = ``grid_size`` or (H, W).
        num_masked (int): patches to mask, in [0, H * W].
        min_block (int): smallest target area of one rectangle, >= 1.
        max_block (Optional[int]): largest number of patches one rectangle may add; None means
            ``num_masked``.
        min_aspect (float): smallest aspect ratio h / w, > 0.
        max_aspect (Optional[float]): largest aspect ratio, >= ``min_aspect``; None means
            ``1 / min_aspect``.
        generator (Optional[torch.Generator]): source of randomness (torch's default one if None).

    Returns:
        Tensor: (H, W) bool on the CPU, ``True = masked``.

    Raises:
        TypeError: if an argument has the wrong type (``generator`` not a ``torch.Generator`` or None).
        ValueError: if ``grid_size`` is not positive, ``num_masked`` lies outside [0, H * W],
            ``min_block`` < 1, ``max_block`` < ``min_block``, ``min_aspect`` <= 0 or
            ``max_aspect`` < ``min_aspect``.
    """
    height, width, max_block, min_aspect, max_aspect = _check_block_args(
        grid_size, num_masked, min_block, max_block, min_aspect, max_aspect
    )
    check_generator("generator", generator)
    return _block_mask(height, width, num_masked, min_block, max_block, min_aspect, max_aspect, generator)


def _block_mask(
    height: int,
    width: int,
    num_masked: int,
    min_block: int,
    max_block: int,
    min_aspect: float,
    max_aspect: float,
    generator: Optional[torch.Generator],
) -> Tensor:
    """block_mask on validated arguments."""
    grid = [bytearray(width) for _ in range(height)]
    log_aspect = (math.log(min_aspect), math.log(max_aspect))
    count = 0
    while count < num_masked:
        added = _place_block(grid, min(num_masked - count, max_block), min_block, log_aspect, generator)
        if added == 0:
            break
        count += added
    mask = torch.frombuffer(bytearray(b"".join(grid)), dtype=torch.bool).view(height, width)
    assert int(mask.sum()) == count <= num_masked
    return mask


def block_masks(
    batch_size: int,
    grid_size: Union[int, tuple[int, int]] = 14,
    *,
    num_masked: int = 75,
    min_block: int = 16,
    max_block: Optional[int] = None,
    min_aspect: float = 0.3,
    max_aspect: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """A batch of independent :func:`block_mask` draws, flattened to patch sequences.

    Args:
        batch_size (int): number of masks B, >= 1.
        grid_size (int | tuple[int, int]): the patch grid, H = W = ``grid_size`` or (H, W).
        num_masked (int): patches to mask per image, in [0, H * W].
        min_block (int): smallest target area of one rectangle, >= 1.
        max_block (Optional[int]): largest number of patches one rectangle may add; None means
            ``num_masked``.
        min_aspect (float): smallest aspect ratio h / w, > 0.
        max_aspect (Optional[float]): largest aspect ratio; None means ``1 / min_aspect``.
        generator (Optional[torch.Generator]): source of randomness (torch's default one if None).

    Returns:
        Tensor: (B, N) bool on the CPU with N = H * W in row-major patch order, ``True = masked``
        (the ``patch_mask`` layout of :class:`~torchflava.modules.layers.PatchEmbedding`).

    Raises:
        TypeError: if an argument has the wrong type (``generator`` not a ``torch.Generator`` or None).
        ValueError: if ``batch_size`` < 1 or another argument is out of range (see
            :func:`block_mask`).
    """
    check_int("batch_size", batch_size, 1)
    height, width, max_block, min_aspect, max_aspect = _check_block_args(
        grid_size, num_masked, min_block, max_block, min_aspect, max_aspect
    )
    check_generator("generator", generator)
    masks = [
        _block_mask(height, width, num_masked, min_block, max_block, min_aspect, max_aspect, generator).flatten()
        for _ in range(batch_size)
    ]
    return torch.stack(masks)
