import pytest
import torch

from torchflava.modules.masking import ItmSample, itm_negatives


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("probability", [0.1, 0.5])
def test_negative_rate_and_consistency(probability):
    sample = itm_negatives(20000, probability=probability, generator=gen())
    assert isinstance(sample, ItmSample)
    assert sample.source.shape == sample.labels.shape == (20000,)
    assert sample.source.dtype == sample.labels.dtype == torch.long
    rows = torch.arange(20000)
    negative = sample.labels == 0
    assert abs(negative.float().mean().item() - probability) < 0.015
    assert set(sample.labels.unique().tolist()) == {0, 1}
    # Labels agree with the source: matched rows keep their own caption, negatives never do.
    assert torch.equal(sample.labels, (sample.source == rows).long())
    assert bool((sample.source[negative] != rows[negative]).all())
    assert sample.source.min() >= 0 and sample.source.max() < 20000


def test_negative_captions_are_uniform_over_the_other_rows():
    g = gen()
    counts = torch.zeros(4, 4)
    for _ in range(1500):
        sample = itm_negatives(4, probability=1.0, generator=g)
        assert bool((sample.labels == 0).all())
        counts[torch.arange(4), sample.source] += 1
    assert bool((counts.diagonal() == 0).all())
    off = counts[~torch.eye(4, dtype=torch.bool)] / 1500
    assert bool(((off - 1 / 3).abs() < 0.06).all())


def test_edge_probabilities_and_batch_of_one():
    assert torch.equal(itm_negatives(50, probability=0.0, generator=gen()).labels, torch.ones(50, dtype=torch.long))
    assert torch.equal(itm_negatives(50, probability=0.0, generator=gen()).source, torch.arange(50))
    two = itm_negatives(2, probability=1.0, generator=gen())
    assert two.source.tolist() == [1, 0] and two.labels.tolist() == [0, 0]
    for seed in range(5):
        one = itm_negatives(1, probability=1.0, generator=gen(seed))
        assert one.source.tolist() == [0] and one.labels.tolist() == [1]


def test_deterministic_given_the_generator_seed():
    first, again, other = (itm_negatives(500, probability=0.3, generator=gen(seed)) for seed in (1, 1, 2))
    assert torch.equal(first.source, again.source) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.source, other.source)
    state = torch.get_rng_state()
    itm_negatives(10, generator=gen())
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone


@pytest.mark.parametrize(
    "batch_size, probability, error, match",
    [
        (0, 0.1, ValueError, "batch_size"),
        (-3, 0.1, ValueError, "batch_size"),
        (4.0, 0.1, TypeError, "batch_size"),
        (True, 0.1, TypeError, "batch_size"),
        (4, -0.1, ValueError, "probability"),
        (4, 1.5, ValueError, "probability"),
        (4, float("nan"), ValueError, "probability"),
        (4, None, TypeError, "probability"),
    ],
)
def test_bad_arguments(batch_size, probability, error, match):
    with pytest.raises(error, match=match):
        itm_negatives(batch_size, probability=probability)


@pytest.mark.parametrize("generator, got", [(7, "int 7 \\(seed one with"), ("seed", "str 'seed'$")])
def test_a_generator_that_is_not_one_is_named(generator, got):
    """It failed on a missing ``.device``, naming no argument."""
    with pytest.raises(TypeError, match=f"^generator must be a torch.Generator or None, got {got}"):
        itm_negatives(4, generator=generator)
