import pytest
import torch

from torchflava.modules.masking import block_mask, block_masks


def components(mask: torch.Tensor) -> list[int]:
    """Sizes of the 4-connected components of a (H, W) bool mask."""
    grid = mask.tolist()
    height, width = len(grid), len(grid[0])
    seen, sizes = set(), []
    for i in range(height):
        for j in range(width):
            if not grid[i][j] or (i, j) in seen:
                continue
            stack, size = [(i, j)], 0
            seen.add((i, j))
            while stack:
                a, b = stack.pop()
                size += 1
                for c, d in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                    if 0 <= c < height and 0 <= d < width and grid[c][d] and (c, d) not in seen:
                        seen.add((c, d))
                        stack.append((c, d))
            sizes.append(size)
    return sizes


def bounding_box(mask: torch.Tensor) -> tuple[int, int]:
    rows, cols = mask.nonzero(as_tuple=True)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.fixture(scope="module")
def default_draws():
    """200 masks with FLAVA's defaults (14 x 14 grid, 75 patches, blocks of >= 16)."""
    return block_masks(200, generator=torch.Generator().manual_seed(0))


def test_shapes_and_dtype(default_draws):
    assert default_draws.shape == (200, 196) and default_draws.dtype == torch.bool
    one = block_mask(generator=torch.Generator().manual_seed(0))
    assert one.shape == (14, 14) and one.dtype == torch.bool
    assert block_mask((3, 7), num_masked=5, min_block=2, generator=torch.Generator().manual_seed(0)).shape == (3, 7)
    assert block_masks(4, (3, 7), num_masked=5, min_block=2).shape == (4, 21)


def test_deterministic_given_the_generator_seed(default_draws):
    again = block_masks(200, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, default_draws)
    other = block_masks(200, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other, default_draws)
    assert (other != default_draws).any(dim=1).sum() > 150  # not just one row differing
    # block_mask and block_masks consume the generator the same way.
    g = torch.Generator().manual_seed(0)
    assert torch.equal(torch.stack([block_mask(generator=g).flatten() for _ in range(3)]), default_draws[:3])
    # The draws in a batch are not all the same.
    assert len({tuple(row.tolist()) for row in default_draws}) == 200


def test_default_masks_about_75_patches_never_more(default_draws):
    counts = default_draws.sum(dim=1)
    assert int(counts.max()) == 75
    # BEiT's algorithm stops when a round of 10 attempts adds nothing, so a draw can fall a few
    # patches short; the reference implementation hits exactly 75 in about 2/3 of the draws.
    assert (counts == 75).float().mean() > 0.55
    assert int(counts.min()) >= 60
    assert abs(counts.float().mean().item() / 196 - 75 / 196) < 0.01


def test_positions_are_uniform(default_draws):
    frequency = default_draws.float().mean(dim=0).view(14, 14)
    assert bool((frequency > 0).all())  # every patch, corners included, gets masked sometimes
    # Uniform positions: no side is favoured (a block covers the centre more often than a corner).
    top, bottom = frequency[:7].mean().item(), frequency[7:].mean().item()
    left, right = frequency[:, :7].mean().item(), frequency[:, 7:].mean().item()
    assert abs(top - bottom) < 0.03 and abs(left - right) < 0.03
    assert frequency[5:9, 5:9].mean() > 3 * frequency[[0, 0, -1, -1], [0, -1, 0, -1]].mean()


def test_masked_regions_are_large_blocks(default_draws):
    sizes = [components(mask) for mask in default_draws.view(-1, 14, 14)]
    # 75 patches in blocks of about >= 16: a handful of regions, the largest at least a block.
    assert max(len(s) for s in sizes) <= 75 // 16 + 1
    assert all(max(s) >= 16 for s in sizes)
    all_sizes = torch.tensor([size for s in sizes for size in s])
    assert (all_sizes >= 16).float().mean() > 0.75
    # The contrast: single-patch blocks scatter into many small regions.
    scattered = block_masks(20, num_masked=75, min_block=1, max_block=1, generator=torch.Generator().manual_seed(0))
    assert sum(len(components(m)) for m in scattered.view(-1, 14, 14)) / 20 > 15


def test_one_block_has_the_requested_area_and_aspect():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        square = block_mask(8, num_masked=16, min_block=16, min_aspect=1.0, generator=g)
        assert int(square.sum()) == 16 and bounding_box(square) == (4, 4)
        tall = block_mask(8, num_masked=16, min_block=16, min_aspect=4.0, max_aspect=4.0, generator=g)
        assert int(tall.sum()) == 16 and bounding_box(tall) == (8, 2)  # h = sqrt(16 * 4), w = sqrt(16 / 4)
        wide = block_mask((2, 8), num_masked=16, min_block=16, min_aspect=0.25, max_aspect=0.25, generator=g)
        assert bool(wide.all())
    # An 8 x 2 block does not fit a 6 x 6 grid: nothing is masked rather than something wrong.
    assert not block_mask(6, num_masked=16, min_block=16, min_aspect=4.0, max_aspect=4.0, generator=g).any()


def test_max_block_limits_each_block():
    g = torch.Generator().manual_seed(0)

    def not_in_a_full_2x2(mask):
        return [
            (i, j)
            for i, j in mask.nonzero().tolist()
            if not any(
                bool(mask[top : top + 2, left : left + 2].all())
                for top in (i - 1, i)
                for left in (j - 1, j)
                if 0 <= top <= mask.shape[0] - 2 and 0 <= left <= mask.shape[1] - 2
            )
        ]

    def has_full_3x3(mask):
        return bool((mask.float().unsqueeze(0).unfold(1, 3, 1).unfold(2, 3, 1).sum((-1, -2)) == 9).any())

    small = [block_mask(10, num_masked=30, min_block=4, max_block=4, min_aspect=1.0, generator=g) for _ in range(20)]
    for mask in small:
        assert 26 <= int(mask.sum()) <= 30
        # Square blocks of area <= 4 are 2 x 2; only when <= 2 patches are left can a 1 x 1 block fit.
        assert len(not_in_a_full_2x2(mask)) <= 2
    large = [block_mask(10, num_masked=30, min_block=4, min_aspect=1.0, generator=g) for _ in range(20)]
    assert sum(has_full_3x3(m) for m in large) > 2 * sum(has_full_3x3(m) for m in small)


def test_tiny_grids():
    g = torch.Generator().manual_seed(0)
    # A tiny grid can be masked completely; num_masked = 0 masks nothing.
    full = block_masks(10, (2, 3), num_masked=6, min_block=1, generator=g)
    assert int(full.sum(dim=1).max()) == 6 and int(full.sum(dim=1).min()) >= 4
    assert not block_masks(5, num_masked=0, generator=g).any()
    # A single row of patches: 1 x 4 blocks fit (a block may span the whole grid height).
    for _ in range(10):
        row = block_mask((1, 10), num_masked=4, min_block=4, min_aspect=0.25, max_aspect=0.25, generator=g)
        assert row.shape == (1, 10) and int(row.sum()) == 4 and bounding_box(row) == (1, 4)


def test_uses_only_the_given_generator():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    block_masks(5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(grid_size=0), ValueError, "grid_size"),
        (dict(grid_size=(14, 0)), ValueError, "grid_size"),
        (dict(grid_size=(2, 3, 4)), ValueError, "grid_size"),
        (dict(grid_size=14.0), TypeError, "grid_size"),
        (dict(num_masked=197), ValueError, "num_masked"),
        (dict(num_masked=-1), ValueError, "num_masked"),
        (dict(num_masked=7.5), TypeError, "num_masked"),
        (dict(min_block=0), ValueError, "min_block"),
        (dict(max_block=8), ValueError, "max_block"),
        (dict(min_aspect=0.0), ValueError, "min_aspect"),
        (dict(min_aspect=-1.0), ValueError, "min_aspect"),
        (dict(min_aspect="0.3"), TypeError, "min_aspect"),
        (dict(min_aspect=0.5, max_aspect=0.4), ValueError, "max_aspect"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        block_mask(**kwargs)
    with pytest.raises(error, match=match):
        block_masks(2, **kwargs)


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        block_masks(0)
    with pytest.raises(TypeError, match="batch_size"):
        block_masks(2.0)


def test_a_seed_for_the_generator_and_no_min_aspect_are_named():
    """Both failed inside: 'int' object has no attribute 'device', and math's 'must be real number'."""
    seed = "^generator must be a torch.Generator or None, got int 0 \\(seed one with torch.Generator\\(\\).manual_seed\\(seed\\)\\)$"
    with pytest.raises(TypeError, match=seed):
        block_mask(14, generator=0)
    with pytest.raises(TypeError, match=seed):
        block_masks(2, 14, generator=0)
    with pytest.raises(TypeError, match="^min_aspect must be a float, got NoneType$"):
        block_mask(14, min_aspect=None)
