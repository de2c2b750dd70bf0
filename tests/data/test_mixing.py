"""The generic step mixer with a plain collator: any kind names, the collator's view, draws of another item."""

from collections import Counter

import pytest
from torch.utils.data import Dataset

from torchflava.data.mixing import (
    SOURCE_SIZES,
    MixedBatch,
    MixedBatches,
    SkippedSample,
    data_loss_report,
    format_data_losses,
    item_seed,
)
from torchflava.data.samples import BadSample


class Numbers(Dataset):
    """Items ``offset + i``; the indices in ``bad`` are unusable."""

    def __init__(self, size, offset=0, bad=()):
        self.size, self.offset, self.bad = size, offset, set(bad)

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        if index in self.bad:
            raise BadSample(index, f"number {index} is broken")
        return self.offset + index


def listing(kind, samples, seeds, *, another=None):
    """A collator that keeps everything it is given (and one draw of another item per row)."""
    others = [another(row, seed, lambda source, index: source[index]) for row, seed in enumerate(seeds)]
    return {"kind": kind, "samples": list(samples), "seeds": list(seeds), "others": others}


def mixer(sources=None, ratios=None, **kwargs):
    sources = {"odd": Numbers(10, 1000), "even": Numbers(6, 2000)} if sources is None else sources
    ratios = {"odd": 1.0, "even": 1.0} if ratios is None else ratios
    kwargs = {"global_batch_size": 4, "num_steps": 30, **kwargs}
    return MixedBatches(sources, ratios, listing, **kwargs)


def test_items_are_step_indexed_and_seeded():
    data = mixer()
    item = data[3]
    assert isinstance(item, MixedBatch) and item.kind == data.kind(3) and item.kind in ("odd", "even")
    assert item.batch["kind"] == item.kind and item.skipped == []
    assert mixer()[3] == item  # a new mixer, the same item
    assert [mixer(seed=1).kind(s) for s in range(30)] != [data.kind(s) for s in range(30)]
    # the seeds are per (seed, kind, stream position): distinct within a batch and across steps
    seeds = [seed for step in range(30) for seed in data[step].batch["seeds"]]
    assert len(set(seeds)) == len(seeds)


def test_batches_give_their_sources_sizes_and_a_resume_finds_a_source_that_changed():
    """Each pass is a permutation seeded by the source's size: a source that grew between a checkpoint and
    its resume gives other items for the same steps, so the sizes go with the position a loop checkpoints."""
    item = mixer()[3]
    assert item.position == {SOURCE_SIZES: {"odd": 10, "even": 6}}
    grown = mixer(sources={"odd": Numbers(12, 1000), "even": Numbers(6, 2000)})
    assert [grown[s].batch["samples"] for s in range(30)] != [mixer()[s].batch["samples"] for s in range(30)]
    assert grown.changed_sizes(item.position) == {"odd": (10, 12)}
    assert mixer().changed_sizes(item.position) == {}
    assert mixer().changed_sizes({}) == {}  # a checkpoint written before batches gave their sizes
    assert mixer().changed_sizes({SOURCE_SIZES: {"odd": 10}}) == {}  # a kind it does not record


def test_each_pass_over_a_source_reads_every_item_once():
    data = mixer(sources={"only": Numbers(8)}, ratios={"only": 1.0})
    first = data[0].batch["samples"] + data[1].batch["samples"]
    second = data[2].batch["samples"] + data[3].batch["samples"]
    assert sorted(first) == sorted(second) == list(range(8)) and first != second


def test_ranks_split_each_global_batch():
    whole = mixer()
    parts = [mixer(rank=r, world_size=2) for r in (0, 1)]
    for step in range(10):
        assert parts[0][step].kind == parts[1][step].kind == whole[step].kind
        for field in ("samples", "seeds", "others"):
            assert parts[0][step].batch[field] + parts[1][step].batch[field] == whole[step].batch[field], field


def test_ratios_of_any_kind_names():
    data = mixer(ratios={"odd": 3.0, "even": 1.0}, num_steps=2000)
    counts = Counter(data.kind(step) for step in range(2000))
    assert abs(counts["odd"] / 2000 - 0.75) < 0.03
    assert {mixer(ratios={"even": 1.0}).kind(s) for s in range(30)} == {"even"}  # a kind without a ratio: never


def test_another_is_another_item_of_the_same_source_and_reports_unusable_ones():
    clean = mixer(sources={"only": Numbers(6)}, ratios={"only": 1.0}, global_batch_size=6, num_steps=4)
    for step in range(4):
        item = clean[step]
        assert all(o in range(6) and o != s for s, o in zip(item.batch["samples"], item.batch["others"]))
    data = mixer(sources={"only": Numbers(6, bad={2})}, ratios={"only": 1.0}, global_batch_size=6, num_steps=4)
    skipped = []
    for step in range(4):
        item = data[step]
        assert 2 not in item.batch["samples"] and 2 not in item.batch["others"]  # replaced, never returned
        assert len(item.batch["samples"]) == 6
        skipped += item.skipped
    assert skipped and set(skipped) == {SkippedSample("only", 2, "number 2 is broken")}
    single = mixer(sources={"one": Numbers(1)}, ratios={"one": 1.0}, global_batch_size=2)
    assert single[0].batch["others"] == [None, None]


def test_another_is_never_the_replacement_that_stands_in_for_an_unusable_item():
    # Item 2 is replaced by item 0 or 1 in its slot; the other item drawn for that row must not be the
    # replacement itself (the stream position's item 2 was excluded instead: 200 of the 600 rows got
    # their own item back, an ITM "negative" with the pair's own caption).
    data = mixer(sources={"only": Numbers(3, bad={2})}, ratios={"only": 1.0}, global_batch_size=3, num_steps=200)
    pairs = [pair for step in range(200) for pair in zip(data[step].batch["samples"], data[step].batch["others"])]
    assert len(pairs) == 600 and all(other in (0, 1) and other != own for own, other in pairs)


class Cut(Numbers):
    """Numbers whose source file lost a tail that no item covers."""

    lost_data = ("numbers.bin ends early", "another.bin ends early")


def test_data_lost_outside_the_items_is_listed_and_reported_apart_from_the_count():
    data = mixer(sources={"cut": Cut(10, bad=[3]), "whole": Numbers(6)}, ratios={"cut": 1.0, "whole": 1.0})
    assert data.lost_data == ["cut: numbers.bin ends early", "cut: another.bin ends early"]
    assert mixer().lost_data == []
    skipped = [("cut", 3, "number 3 is broken"), ("cut", 3, "number 3 is broken"), ("cut", 4, "other")]
    report = data_loss_report(skipped, data.lost_data, examples=1)
    assert report == {
        "skipped_samples": 2,  # distinct samples
        "skipped_examples": ["cut[3]: number 3 is broken"],
        "lost_data": ["cut: numbers.bin ends early", "cut: another.bin ends early"],
    }
    assert format_data_losses(report) == [
        "unusable samples skipped: 2",
        "  cut[3]: number 3 is broken",
        "data lost outside any sample (not in the count above): 2 source file(s)",
        "  cut: numbers.bin ends early",
        "  cut: another.bin ends early",
    ]
    assert format_data_losses(data_loss_report([], [])) == ["unusable samples skipped: 0"]


def test_item_seed_is_stable():
    assert item_seed(0, "odd", 5) == item_seed(0, "odd", 5) != item_seed(0, "odd", 6)
    assert 0 <= item_seed("x") < 2**63


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(sources={}), "sources"),
        (dict(ratios={"odd": 1.0, "prime": 1.0}), r"ratios: expected kinds among the sources .*'prime'"),
        (dict(ratios={"odd": 0.0}), "ratios"),
        (dict(ratios={"odd": -1.0, "even": 2.0}), "ratios"),
        (dict(sources={"odd": Numbers(0)}, ratios={"odd": 1.0}), r"sources\['odd'\] is empty"),
        (dict(global_batch_size=6, world_size=4), "global_batch_size"),
        (dict(num_steps=0), "num_steps"),
        (dict(rank=2, world_size=2), "rank"),
        (dict(ratios={"odd": float("nan"), "even": 1.0}), "ratios: expected finite values"),  # NaN picked "odd"
        (dict(ratios={"odd": float("inf"), "even": 1.0}), "ratios: expected finite values"),
        (dict(max_attempts=0), "max_attempts must be >= 1"),
        (dict(seed=-1), "seed must be >= 0"),
        (dict(global_batch_size=4.0), "global_batch_size must be an int"),
    ],
)
def test_argument_errors(change, match):
    with pytest.raises((ValueError, TypeError), match=match):
        mixer(**change)


def test_ratios_rank_and_types_are_checked_when_built():
    """Ratios of 1e308 summed to inf: every step drew the kind of ratio 0; rank 0.5 failed in numpy."""
    from torchflava.data.mixing import MixedBatches

    sources = {"a": list(range(4)), "b": list(range(4)), "c": list(range(4))}
    build = lambda ratios, **kw: MixedBatches(sources, ratios, None, global_batch_size=2, num_steps=10, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="ratios: expected finite values"):
        build({"a": 1e308, "b": 1e308, "c": 0})
    with pytest.raises(TypeError, match="ratios must map kinds to numbers"):
        build({"a": "x"})
    with pytest.raises(TypeError, match="ratios must map kinds to numbers"):
        build(["a"])
    with pytest.raises(TypeError, match="rank must be an int, got float"):
        build({"a": 1}, rank=0.5, world_size=2)


def test_sources_collator_and_steps_are_checked():
    """A list of sources raised "unhashable type: 'list'", a collator that is not callable failed at the
    first item, and a step of 0.5 raised numpy's IndexError."""
    with pytest.raises(TypeError, match="^sources must map kind names to map-style datasets, got list$"):
        MixedBatches([Numbers(4)], {}, listing, global_batch_size=2, num_steps=2)
    with pytest.raises(TypeError, match=r"^collator must be callable \(or None for the schedule only\), got str$"):
        MixedBatches({"odd": Numbers(4)}, {"odd": 1}, "listing", global_batch_size=2, num_steps=2)
    schedule = MixedBatches({"odd": Numbers(4)}, {"odd": 1}, None, global_batch_size=2, num_steps=2)
    assert [schedule.kind(step) for step in range(2)] == ["odd", "odd"]
    with pytest.raises(
        TypeError, match="^collator is None: these MixedBatches give the kind of each step only, not batches$"
    ):
        schedule[0]  # was "'NoneType' object is not callable"
    data = mixer()
    for step, kind in ((0.5, "float"), ("1", "str"), (True, "bool")):
        with pytest.raises(TypeError, match=f"^step must be an int, got {kind}$"):
            data[step]
    import numpy as np

    assert data[np.int64(3)].batch == data[3].batch
