"""A recipe's process: its config read from the command line, its errors said in one line, its exit status.

Every recipe ends with ``run_recipe(main, ConfigClass)``. What a user can act on is printed as
``error: ...`` on stderr, one line, without a traceback, and the process exits with a status a job
script can tell apart:

* 2: the config (a key, a value, a file it names) is wrong: nothing was trained
  (:class:`~torchflava.training.config.ConfigError`);
* 1: the run stopped: a non-finite loss (naming the last good checkpoint), a checkpoint that could not
  be written (the last complete one is intact), or a rank that waited in a collective past
  ``training.collective_timeout_s`` (in fit, start_run, or the recipe's own: its vocabulary's broadcast,
  its last barrier), or that lost another rank there (which exited: its own error is the one to read);
* 75: stopped by a scheduler's signal after checkpointing (:class:`~torchflava.training.preemption.Preempted`
  exits with it itself): ``training.resume=auto`` continues.

Anything else is a bug of ours or the machine's, and keeps its traceback.
"""

import dataclasses
import sys
from typing import Callable, Sequence, Type, TypeVar

import torch.distributed as dist

from torchflava.training.checkpointing import CheckpointWriteError
from torchflava.training.config import ConfigError, load_config
from torchflava.training.distributed import CollectiveTimeout, RankLost, collective_timeout_named, raised_on_rank
from torchflava.training.loop import OUTSIDE_FIT, TIMEOUT_KEY
from torchflava.training.schema import NonFiniteLossError

T = TypeVar("T")

# the run stopped on something said in one line: exit status 1
STOPPED = (NonFiniteLossError, CheckpointWriteError, CollectiveTimeout, RankLost)


HELP = ("-h", "--help")


def usage(main: Callable, schema: type) -> str:
    """What ``--help`` prints: the recipe's module description and how its command line is read (``config=FILE``
    and ``key=value`` overrides of the schema's sections, named)."""
    description = (sys.modules[main.__module__].__doc__ or "").strip()
    sections = ", ".join(f.name for f in dataclasses.fields(schema)) if dataclasses.is_dataclass(schema) else ""
    return (
        f"{description}\n\narguments: config=FILE (a YAML file of the sections, optional) and key=value overrides "
        f"(e.g. training.max_steps=5), no dashes; sections: {sections}"
    ).lstrip()


def run_recipe(
    main: Callable[[T], object],
    schema: Type[T],
    argv: Sequence[str] = (),
    *,
    config_errors: tuple[type[BaseException], ...] = (),
) -> None:
    """Run ``main`` on the config ``argv`` gives (``config=FILE`` and ``key=value`` overrides, read into
    ``schema``), then leave the process group; exit 2 for a config error (also for ``config_errors``, e.g.
    a data file the config names that is missing), 1 for a run stopped on a one-line error (:data:`STOPPED`),
    each said on stderr as ``error: ...`` (by the rank that raised it alone, where
    :func:`~torchflava.training.distributed.rank0_value` or ``gather_shares`` raised it again on the others). With ``-h`` or ``--help`` among the arguments, it prints
    :func:`usage` and returns (exit 0), running nothing.

    Args:
        main (Callable[[T], object]): the recipe, given the config.
        schema (Type[T]): the recipe's config dataclass.
        argv (Sequence[str]): the command line's arguments (``sys.argv[1:]``).
        config_errors (tuple[type[BaseException], ...]): more exceptions that mean the config is wrong.
    """
    if any(arg in HELP for arg in argv):  # (nothing else is read: the recipe's description and its sections)
        print(usage(main, schema))
        return
    try:
        config = load_config(schema, argv)
        seconds = getattr(getattr(config, "training", None), "collective_timeout_s", None)
        with collective_timeout_named(TIMEOUT_KEY, seconds, where=lambda: OUTSIDE_FIT):  # the recipe's own
            main(config)
    except (ConfigError, *config_errors, *STOPPED) as error:
        if raised_on_rank(error) is None:  # (one that rank 0's report, say, raised on every rank: said there)
            print(f"error: {error}", file=sys.stderr)
        sys.exit(1 if isinstance(error, STOPPED) else 2)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
