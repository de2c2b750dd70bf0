"""Step-indexed batches from weighted sources, for any collator.

:class:`MixedBatches` is a map-style dataset whose item ``step`` is this rank's share of the global
batch of (micro-)step ``step``. Everything random about a batch (which source it comes from, which
items, and each item's seed, from which a collator draws crops, masks, negatives...) is a pure
function of (seed, step, slot in the global batch), so:

* a run resumes exactly from any step, on any number of ranks (the position follows from the step),
* N ranks with B/N items each see exactly the items of one process with B items, and
* the result does not depend on the number of data-loader workers.

Unusable items (:class:`~torchflava.data.samples.BadSample`) are replaced by other items drawn for
the same slot and reported in the batch's ``skipped`` list, so they are counted, never fatal and
never the cause of a lost epoch. Data lost outside any item (a tar shard cut short: see a source's
``lost_data``) is listed by :attr:`MixedBatches.lost_data`; :func:`data_loss_report` puts both in a
run's report.

A run resumes exactly only on the sources it was checkpointed with: each item's ``position`` gives the
sources' sizes, which the training loop saves, and :meth:`MixedBatches.changed_sizes` finds a source
that grew or shrank since (the same files with lines or images added).
"""

import operator
import random
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, TypeVar

import numpy as np
from torch.utils.data import Dataset

from torchflava.data.samples import BadSample
from torchflava.utils.checks import check_int

T = TypeVar("T")

# another(row, seed, read): ``read(source, index)`` of an item of the batch's source other than row's
# own (drawn from ``seed``), or None when the source has a single item.
Another = Callable[[int, int, Callable[[Dataset, int], T]], Optional[T]]


def item_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (stable across processes and Python runs)."""
    return random.Random("/".join(map(str, parts))).getrandbits(63)


def check_seeds(samples: Sequence, seeds: Sequence[int]) -> None:
    """ValueError unless ``seeds`` holds one seed per sample of ``samples`` (a collator pairs them with
    ``zip``, which stops at the shorter: rows would be dropped from some fields and not others)."""
    if len(seeds) != len(samples):
        raise ValueError(f"seeds: expected one per sample ({len(samples)}), got {len(seeds)}")


class SkippedSample(NamedTuple):
    """An unusable item met while building a batch."""

    kind: str
    index: int
    reason: str


# Key of a batch's ``position`` under which it gives the sizes of the sources it was drawn from (the
# training loop saves positions in every checkpoint; see :meth:`MixedBatches.changed_sizes`).
SOURCE_SIZES = "source_sizes"
# ... and of the files each source read, where it names them (``files_digest``: parquet shards matched by a glob);
# see :meth:`MixedBatches.changed_files`
SOURCE_FILES = "source_files"


class MixedBatch(NamedTuple):
    """Item of :class:`MixedBatches`: the collated batch, the source it came from, the items it skipped,
    and ``position`` (``{SOURCE_SIZES: {kind: len(source)}}``, which the training loop checkpoints)."""

    batch: Any
    kind: str
    skipped: list
    position: Optional[dict] = None


class MixedBatches(Dataset):
    """Item ``step`` = this rank's share of the global batch of step ``step``.

    Each step draws its source ("kind") by ``ratios``; the items of a source are read in a fresh
    seeded permutation per pass over it. The batch is
    ``collator(kind, samples, seeds, another=another)``: the usable samples of this rank's slots,
    one seed per sample, and ``another(row, seed, read)``, which reads (``read(source, index)``) an
    item of the same source other than row ``row``'s own (the item in the batch, a replacement
    where the drawn one was unusable), drawn from ``seed`` (e.g. for negatives),
    or gives None when the source has one item; unusable ones met there are skipped and reported too.

    Args:
        sources (Mapping[str, Dataset]): map-style sources by kind name; the order of the keys fixes
            the stream of kinds.
        ratios (Mapping[str, float]): relative share of steps of each kind (a kind without a ratio,
            or with ratio 0, is never drawn).
        collator (Optional[Callable]): samples -> batch, as above; None builds only the schedule, whose
            :meth:`kind` of each step can be read (reading an item is then a TypeError).
        global_batch_size (int): items per step over all ranks.
        num_steps (int): number of steps (the dataset's length).
        rank (int): this rank.
        world_size (int): number of ranks; must divide ``global_batch_size``.
        seed (int): data seed.
        max_attempts (int): replacement draws for one slot before the data is declared broken.

    Raises:
        TypeError: if ``sources`` or ``ratios`` is not a mapping, ``collator`` is neither callable nor
            None, or a size, rank or seed is not an int.
        ValueError: if a ratio names no source, a ratio is negative or none is positive, a source
            is empty, or a size or rank is invalid.
    """

    def __init__(
        self,
        sources: Mapping[str, Dataset],
        ratios: Mapping[str, float],
        collator: Optional[Callable],
        *,
        global_batch_size: int,
        num_steps: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        max_attempts: int = 50,
    ) -> None:
        if not isinstance(sources, Mapping):  # (a list raised "unhashable type: 'list'")
            raise TypeError(f"sources must map kind names to map-style datasets, got {type(sources).__name__}")
        if not sources:
            raise ValueError("sources: expected at least one source, got none")
        if collator is not None and not callable(collator):  # (it failed at the first item)
            raise TypeError(f"collator must be callable (or None for the schedule only), got {type(collator).__name__}")
        if not isinstance(ratios, Mapping) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in ratios.values()
        ):
            raise TypeError(f"ratios must map kinds to numbers, got {ratios!r}")
        unknown = sorted(set(ratios) - set(sources))
        if unknown:
            raise ValueError(f"ratios: expected kinds among the sources {list(sources)}, got {unknown}")
        self.kinds = list(sources)
        weights = np.array([float(ratios.get(k, 0.0)) for k in self.kinds])
        with np.errstate(over="ignore"):  # a sum that overflows to inf is refused below (every step drew one kind)
            total = weights.sum()
        if not np.isfinite(weights).all() or (weights < 0).any() or not 0 < total < np.inf:  # NaN picked the first kind
            raise ValueError(
                f"ratios: expected finite values >= 0 with a positive one for a kind that has a source, got {dict(ratios)}"
            )
        for kind, source in sources.items():
            if len(source) < 1:
                raise ValueError(f"sources[{kind!r}] is empty")
        check_int("world_size", world_size, 1)
        check_int("rank", rank, 0)  # (0.5 failed at the first item, inside numpy)
        for name, value, minimum in (
            ("global_batch_size", global_batch_size, 1),
            ("num_steps", num_steps, 1),
            ("seed", seed, 0),
            ("max_attempts", max_attempts, 1),
        ):
            check_int(name, value, minimum)
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ValueError(
                f"global_batch_size ({global_batch_size}) must be a positive multiple of world_size ({world_size})"
            )
        if num_steps < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"num_steps must be >= 1 and rank in [0, world_size); got {num_steps}, {rank}, {world_size}"
            )
        self.sources, self.collator = dict(sources), collator
        self.global_batch_size, self.num_steps = global_batch_size, num_steps
        self.rank, self.world_size, self.seed, self.max_attempts = rank, world_size, seed, max_attempts
        # Kinds of all steps at once (a prefix of the same stream for any num_steps), and how many
        # earlier steps drew the same kind: the position of each step's items in its source's stream.
        draws = np.random.default_rng(seed).random(num_steps)
        cumulative = np.cumsum(weights / weights.sum())
        self._kinds = np.searchsorted(cumulative, draws, side="right").clip(max=len(self.kinds) - 1)
        self._rank_of_kind = np.zeros(num_steps, dtype=np.int64)
        for k in range(len(self.kinds)):
            chosen = self._kinds == k
            self._rank_of_kind[chosen] = np.arange(int(chosen.sum()))
        self._permutations: dict[tuple[str, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.num_steps

    @property
    def lost_data(self) -> list[str]:
        """``"kind: what was lost"`` for the data each source lost outside its items (its ``lost_data``
        attribute, when it has one: a truncated tar shard's tail, say), in the order of the kinds."""
        return [f"{kind}: {lost}" for kind in self.kinds for lost in getattr(self.sources[kind], "lost_data", ())]

    @property
    def sizes(self) -> dict[str, int]:
        """The number of items of each source, by kind."""
        return {kind: len(source) for kind, source in self.sources.items()}

    def changed_sizes(self, position: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
        """The sources whose size differs from the one a checkpointed ``position`` (the merged positions of
        a run's batches) records, as ``{kind: (recorded, now)}``; empty when none does or nothing is
        recorded (a checkpoint written before batches gave their sizes).

        Each pass over a source is a permutation seeded by its size, so a run resumed on a source that
        grew or shrank draws other items than the run it continues: some of the current pass again,
        others never. A recipe refuses such a resume with this.
        """
        recorded = position.get(SOURCE_SIZES) if isinstance(position, Mapping) else None
        if not isinstance(recorded, Mapping):
            return {}
        return {
            kind: (recorded[kind], size)
            for kind, size in self.sizes.items()
            if kind in recorded and recorded[kind] != size
        }

    @property
    def files(self) -> dict[str, str]:
        """The ``files_digest`` of each source that has one (the parquet files it read: names, rows, sizes), by kind."""
        digests = {kind: getattr(source, "files_digest", None) for kind, source in self.sources.items()}
        return {kind: digest for kind, digest in digests.items() if isinstance(digest, str)}

    def changed_files(self, position: Mapping[str, Any]) -> dict[str, tuple[str, Optional[str]]]:
        """The sources whose files (:attr:`files`) differ from those a checkpointed ``position`` records, as
        ``{kind: (recorded, now)}``; empty when none does or nothing is recorded. A shard of a glob renamed (its
        rows now elsewhere in the order) or swapped for another of as many rows keeps the size
        (:meth:`changed_sizes`) but not the items at each index: a resume would draw other items than the run it
        continues."""
        recorded = position.get(SOURCE_FILES) if isinstance(position, Mapping) else None
        if not isinstance(recorded, Mapping):
            return {}
        files = self.files
        return {kind: (was, files.get(kind)) for kind, was in recorded.items() if files.get(kind) != was}

    def kind(self, step: int) -> str:
        """Which source step ``step`` draws from."""
        return self.kinds[int(self._kinds[step])]

    def _index(self, kind: str, position: int) -> int:
        """Item of ``kind``'s source at ``position`` of its stream of seeded per-pass permutations."""
        size = len(self.sources[kind])
        epoch, offset = divmod(position, size)
        key = (kind, epoch)
        if key not in self._permutations:
            if len(self._permutations) > 6:
                self._permutations.clear()
            generator = np.random.default_rng([self.seed, self.kinds.index(kind), epoch])
            self._permutations[key] = generator.permutation(size)
        return int(self._permutations[key][offset])

    def _load(self, kind: str, position: int, skipped: list) -> tuple[Any, int, int]:
        """The usable sample for stream ``position`` (replacing unusable ones), its seed and its index."""
        source = self.sources[kind]
        index = self._index(kind, position)
        for attempt in range(self.max_attempts):
            if attempt:
                index = random.Random(item_seed(self.seed, kind, position, attempt)).randrange(len(source))
            try:
                return source[index], item_seed(self.seed, kind, position, attempt), index
            except BadSample as bad:
                skipped.append(SkippedSample(kind, index, bad.reason))
        raise RuntimeError(
            f"the {kind} source gave {self.max_attempts} unusable samples in a row for one slot (last: "
            f"{skipped[-1].reason}); the data looks broken"
        )

    def _another(self, kind: str, own: int, seed: int, read: Callable, skipped: list) -> Optional[Any]:
        """``read`` of an item of ``kind``'s source other than item ``own`` (the row's usable item: the
        replacement when the item of its stream position was unusable)."""
        source = self.sources[kind]
        if len(source) < 2:
            return None
        rng = random.Random(seed)
        for _ in range(self.max_attempts):
            index = rng.randrange(len(source) - 1)
            index += index >= own
            try:
                return read(source, index)
            except BadSample as bad:
                skipped.append(SkippedSample(kind, index, bad.reason))
        return None

    def __getitem__(self, step: int) -> MixedBatch:
        if isinstance(step, bool):
            raise TypeError("step must be an int, got bool")
        try:
            step = operator.index(step)
        except TypeError:  # (0.5 raised numpy's IndexError)
            raise TypeError(f"step must be an int, got {type(step).__name__}") from None
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} out of range [0, {self.num_steps})")
        if self.collator is None:
            raise TypeError("collator is None: these MixedBatches give the kind of each step only, not batches")
        kind = self.kind(step)
        local = self.global_batch_size // self.world_size
        first = int(self._rank_of_kind[step]) * self.global_batch_size + self.rank * local
        skipped: list = []
        loaded = [self._load(kind, first + slot, skipped) for slot in range(local)]
        batch = self.collator(
            kind,
            [sample for sample, _, _ in loaded],
            [seed for _, seed, _ in loaded],
            another=lambda row, seed, read: self._another(kind, loaded[row][2], seed, read, skipped),
        )
        files = self.files
        return MixedBatch(batch, kind, skipped, {SOURCE_SIZES: self.sizes, **({SOURCE_FILES: files} if files else {})})


def data_loss_report(skipped: Sequence[tuple], lost_data: Sequence[object], *, examples: int = 10) -> dict:
    """A run report's account of the data it could not use.

    Args:
        skipped (Sequence[tuple]): the ``(kind, index, reason)`` unusable samples met (a fit result's
            ``skipped``); the index is an item number, or a ``"<shard url>:<key>"`` string for a
            streamed sample (a shard's URL alone when the shard breaks off).
        lost_data (Sequence[object]): data lost outside any sample (:attr:`MixedBatches.lost_data`).
        examples (int): how many skipped samples to quote.

    Returns:
        dict: ``skipped_samples`` (distinct samples), ``skipped_examples`` (``"kind[index]: reason"``,
        one per distinct sample, its first reason) and ``lost_data`` (one line each).
    """
    # one entry per counted sample: the same sample (or shard) may come with several reasons (two
    # readings of a shard that broke at different places); the first is quoted
    first: dict = {}
    for kind, index, reason in skipped:
        first.setdefault((kind, index if isinstance(index, str) else int(index)), (kind, index, reason))
    return {
        "skipped_samples": len(first),
        "skipped_examples": [f"{kind}[{index}]: {reason}" for kind, index, reason in list(first.values())[:examples]],
        "lost_data": [str(lost) for lost in lost_data],
    }


def format_data_losses(report: Mapping[str, Any]) -> list[str]:
    """The lines a recipe prints for a :func:`data_loss_report`."""
    lines = [f"unusable samples skipped: {report['skipped_samples']}"]
    lines += [f"  {example}" for example in report["skipped_examples"]]
    if report["lost_data"]:
        lines.append(
            f"data lost outside any sample (not in the count above): {len(report['lost_data'])} source file(s)"
        )
        lines += [f"  {lost}" for lost in report["lost_data"]]
    return lines
