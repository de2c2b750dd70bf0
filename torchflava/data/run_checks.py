"""What a pretraining recipe checks of its data against a run, shared by the FLAVA and CLIP recipes.

* :func:`resumed_data_checks`: a resume on data that is no longer the data the checkpoint was trained
  on, though its config keys are the same (a captions file appended to, images added to a folder, a
  shard glob that matches more), as ``(ok, key, expected, got)`` tuples for the recipe's
  ``raise_on_failed_checks``.
* :func:`evaluation_note`: the line a recipe prints when its evaluation cannot run on its data.
"""

from typing import Mapping, Optional, Sequence

from torch.utils.data import Dataset

from torchflava.data.mixing import MixedBatches
from torchflava.data.streaming import StreamingBatches

SHARDS_KEY = "data.files.pairs_shards"  # the key a recipe reads streamed shards from (as streaming_checks)
RESTORE = "restore the data, or start a new run in another training.output_dir"


def resumed_data_checks(
    data: Dataset, loop_states: Optional[Sequence[Mapping]], keys: Mapping[str, str]
) -> list[tuple]:
    """The checks that ``data`` is the size the checkpoint's batches recorded: each step-indexed source
    (:meth:`MixedBatches.changed_sizes`, the mixed-in kinds of a stream included) and the streamed shards
    (:meth:`StreamingBatches.changed_shards`). Every pass over a source is a permutation seeded by its
    size, and every epoch's deal of shards one seeded by their number, so a run resumed on a source that
    grew or shrank would draw other items than the run it continues, some of the pass twice and others
    never, without a word.

    Args:
        data (Dataset): the run's batches (:class:`MixedBatches` or :class:`StreamingBatches`; others
            record no sizes and pass).
        loop_states (Optional[Sequence[Mapping]]): the training-loop states the run resumes from
            (``RunStart.loop_states``); None or empty for a fresh run, which passes.
        keys (Mapping[str, str]): the config key of each kind of source ``data`` mixes (``{"pairs":
            "data.files.pairs_captions"}``), named by a failed check.

    Returns:
        list[tuple]: ``(ok, key, expected, got)`` for each source that changed (ok False), else empty.

    Raises:
        ValueError: if ``keys`` misses a kind of source ``data`` mixes.
    """
    mixed = getattr(data, "mixed", data)  # (streamed pairs: the kinds mixed in by ratio, or None)
    if isinstance(mixed, MixedBatches) and not set(mixed.kinds) <= set(keys):
        raise ValueError(f"keys: expected the config key of each kind {sorted(mixed.kinds)}, got {sorted(keys)}")
    if not loop_states:
        return []
    position = loop_states[0].get("data", {})
    changed = mixed.changed_sizes(position) if isinstance(mixed, MixedBatches) else {}
    checks = [
        (
            False,
            keys[kind],
            f"the {was} {kind} the checkpoint was trained on, since a resumed run draws each pass over its data "
            f"in an order seeded by its size (items of the pass would be seen twice, others never); {RESTORE}",
            f"{now} items",
        )
        for kind, (was, now) in changed.items()
    ]
    renamed = mixed.changed_files(position) if isinstance(mixed, MixedBatches) else {}
    checks += [
        (
            False,
            keys[kind],
            f"the parquet files the checkpoint was trained on ({was}: by name, rows and size), since a resumed run draws "
            f"item i of the pass from where it was (a shard renamed or swapped for another moves the items); {RESTORE}",
            f"{now or 'no parquet files'}",
        )
        for kind, (was, now) in renamed.items()
        if kind not in changed  # (a size changed: said above)
    ]
    shards = data.changed_shards(position) if isinstance(data, StreamingBatches) else None
    if shards is not None:
        expected = (
            f"the {shards[0]} shards the checkpoint's stream was dealt from, since each epoch deals a permutation "
            f"of them seeded by their number (shards of the epoch would be read twice, others never); {RESTORE}"
        )
        checks.append((False, SHARDS_KEY, expected, f"{shards[1]} shards"))
    return checks


def evaluation_note(source: str, enabled: bool) -> Optional[str]:
    """The line a recipe prints as training starts (every check passed) when its ``eval`` section cannot take
    effect: its
    evaluation scores the built-in shapes world's held-out split, which a run on ``data.source=files``
    neither trains on nor holds, so after such a run nothing is evaluated and ``eval.*`` is unread.
    None when the evaluation runs (``source`` shapes) or is off (``enabled`` False)."""
    if source != "files" or not enabled:
        return None
    return (
        "eval: no evaluation after this run: eval.* scores the held-out split of the built-in shapes world "
        "(data.source=shapes), and data.source=files trains on your files (set eval.enabled=false to drop this line)"
    )
