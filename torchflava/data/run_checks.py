"""What a pretraining recipe checks of its data against a run, shared by the FLAVA and CLIP recipes.

* :func:`resumed_data_checks`: a resume on data that is no longer the data the checkpoint was trained
  on, though its config keys are the same (a captions file appended to, images added to a folder, a
  shard glob that matches more), as ``(ok, key, expected, got)`` tuples for the recipe's
  ``raise_on_failed_checks``.
* :func:`evaluation_note`: the line a recipe prints when its evaluation cannot run on its data.
* :func:`absolute_data_paths`: a run's relative data paths made absolute before its config is compared and
  recorded, so that a resume from another working directory reads the same files or is refused.
"""

import itertools
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

from torch.utils.data import Dataset

from torchflava.data.mixing import MixedBatches
from torchflava.data.streaming import StreamingBatches, url_scheme

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


def absolute_data_paths(section: object, names: Sequence[str], run: Optional[Path] = None, key: str = "data") -> None:
    """Make the relative paths in the fields ``names`` of the data section ``section`` (a recipe's dataclass; a
    mapping field, e.g. ``data.extra_val``, has its values made so) absolute, against the working directory. Call it
    before the run's config is compared with a resumed one's and recorded: a run resumed from another working
    directory with the same relative paths read the files there (silently where they were of the same sizes); now
    those paths differ from the recorded ones, refused naming the key, and ``config=<run>/config.yaml`` reads the
    files the run read from any directory. URLs (``s3://...``, ``pipe:...``) are left as they are.

    Args:
        section (object): the data section.
        names (Sequence[str]): its fields that hold paths.
        run (Optional[Path]): the directory of the run a resume continues (its config.yaml; None: a new run). A
            path it recorded relative (a run from before paths were recorded absolute) is left as typed, so that it
            compares equal and is read as it was then, against the working directory.
        key (str): the section's dotted key in config.yaml (``data``, ``data.files``).
    """
    recorded: object = {}
    if run is not None:
        import yaml  # (PyYAML comes with the recipes, which wrote the run)

        try:
            recorded = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):  # (the resume comparison names the file)
            recorded = {}
        for part in key.split("."):
            recorded = recorded.get(part) if isinstance(recorded, dict) else None

    def absolute(value: object, was: object) -> object:
        if not isinstance(value, str) or not _relative_local(value):
            return value
        kept = isinstance(was, str) and not os.path.isabs(was)  # recorded relative: compared (and read) as then
        # joined, not normalised: abspath drops 'link/..' by its text, where the OS follows the link first
        return value if kept else os.path.join(os.getcwd(), value)

    for name in names:
        value, was = getattr(section, name), recorded.get(name) if isinstance(recorded, dict) else None
        if isinstance(value, dict):
            was = was if isinstance(was, dict) else {}
            setattr(section, name, {k: absolute(v, was.get(k)) for k, v in value.items()})
        else:
            setattr(section, name, absolute(value, was))


def _relative_local(value: str) -> bool:
    """Whether ``value`` is a local path relative to the working directory: not absolute, no URL (``s3://``,
    ``pipe:``, ``file:``), and, for a brace pattern opening with its group (``{train,extra}/{000..009}.tar``), none
    of that group's alternatives absolute or a URL (``{/data/a.tar,pipe:cat b.tar}``: its own paths, kept as typed)."""
    if value == "" or os.path.isabs(value) or "://" in value or url_scheme(value):
        return False
    if not value.startswith("{"):
        return True
    import braceexpand  # (the streamed shards' patterns: installed with webdataset)

    depths = itertools.accumulate({"{": 1, "}": -1}.get(char, 0) for char in value)
    end = next((index for index, depth in enumerate(depths) if depth == 0), len(value) - 1)  # (the group's close)
    return all(
        not os.path.isabs(alternative) and not url_scheme(alternative)
        for alternative in braceexpand.braceexpand(value[: end + 1])
    )
