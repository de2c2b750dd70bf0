"""run_recipe: a recipe's config from its command line, its errors in one line, its exit status."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from torchflava.training.checkpointing import CheckpointWriteError
from torchflava.training.distributed import CollectiveTimeout
from torchflava.training.preemption import PREEMPTED_EXIT_CODE, Preempted
from torchflava.training.recipe import run_recipe
from torchflava.training.schema import NonFiniteLossError


@dataclass
class Section:
    steps: int = 3


@dataclass
class Config:
    training: Section = field(default_factory=Section)


def raising(error: BaseException):
    def main(cfg: Config) -> None:
        assert cfg.training.steps == 5  # the command line's override reached the recipe
        raise error

    return main


@pytest.mark.parametrize(
    "error",
    [
        CheckpointWriteError(
            "step 4: checkpoint directory /runs/x/checkpoints could not be written (rank 0): No space"
        ),
        NonFiniteLossError("loss is nan at step 3; the last good checkpoint is /runs/x/checkpoints/step_2"),
        CollectiveTimeout("key 'training.collective_timeout_s': rank 0 waited in a collective past 1 s"),
    ],
    ids=["checkpoint_write", "non_finite", "collective_timeout"],
)
def test_a_run_stopped_on_a_one_line_error_exits_1_saying_it_without_a_traceback(error, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_recipe(raising(error), Config, ["training.steps=5"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"error: {error}\n"


def test_a_config_error_exits_2_naming_the_key(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_recipe(raising(AssertionError("not reached")), Config, ["training.stpes=5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "training.stpes" in err and err.count("\n") == 1


def test_more_config_errors_exit_2_and_others_keep_their_traceback(capsys):
    missing = FileNotFoundError(2, "No such file or directory", "/data/train.tsv")
    with pytest.raises(SystemExit) as exit_info:
        run_recipe(raising(missing), Config, ["training.steps=5"], config_errors=(FileNotFoundError,))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {missing}\n"
    with pytest.raises(FileNotFoundError):  # not named a config error: a bug's traceback
        run_recipe(raising(missing), Config, ["training.steps=5"])
    with pytest.raises(RuntimeError, match="deep inside"):
        run_recipe(raising(RuntimeError("deep inside")), Config, ["training.steps=5"])


def test_a_preempted_run_exits_with_its_own_status(capsys):
    error = Preempted(4, Path("/runs/x/checkpoints/step_4"), "SIGTERM")
    with pytest.raises(SystemExit) as exit_info:
        run_recipe(raising(error), Config, ["training.steps=5"])
    assert exit_info.value.code == PREEMPTED_EXIT_CODE == 75
    assert capsys.readouterr().err == ""  # (the loop said it, on rank 0)


def test_help_prints_the_recipes_description_and_runs_nothing(capsys):
    """``--help`` was an error (exit 2: 'arguments must be key=value'); it prints the recipe's module description
    and how the command line is read, and returns without reading a config or running the recipe."""
    for flag in ("--help", "-h"):
        run_recipe(raising(AssertionError("not run")), Config, ["training.stpes=5", flag])
        out = capsys.readouterr().out
        assert out.startswith(__doc__.strip() + "\n\narguments: ")  # this module stands for the recipe
        assert out.rstrip().endswith(
            "arguments: config=FILE (a YAML file of the sections, optional) and key=value overrides "
            "(e.g. training.max_steps=5), no dashes; sections: training"
        )


def test_an_argument_with_dashes_is_refused_saying_so(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_recipe(raising(AssertionError("not reached")), Config, ["--training.steps=5"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: arguments must be key=value without dashes (e.g. config=tiny.yaml training.max_steps=5), "
        "got '--training.steps=5'\n"  # was: key '--training': Key '--training' not in 'Config'
    )
