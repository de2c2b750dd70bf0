"""wrap_model: what data parallelism can wrap; rank0_value: rank 0's value (or error) on every rank; the
collective timeout (training.collective_timeout_s)."""

import contextlib
from dataclasses import dataclass, field
import functools
import io
import json
import os
from pathlib import Path
import socket
import time

import pytest
import torch
from torch import nn
import torch.distributed as dist

from tests.helpers import run_ranks
from tests.training.test_loop import Toy, ToyData, settings, toy_step
from torchflava.training import distributed
from torchflava.training.distributed import init_distributed, rank0_report, wrap_model
from torchflava.training.loop import StepOutput, fit
from torchflava.training.recipe import run_recipe
from torchflava.training.schema import TrainingConfig


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_container_without_a_forward_is_refused_before_the_process_group_is_asked_for(strategy):
    """A ModuleDict of towers trained under DDP met "'DistributedDataParallel' object is not subscriptable"
    in the step (or, called around the wrapper, skipped its gradient hooks); fully_shard refused it from
    inside torch. Both strategies work through the model's forward."""
    towers = nn.ModuleDict({"image": nn.Linear(4, 4), "text": nn.Linear(4, 4)})
    with pytest.raises(TypeError) as info:
        wrap_model(towers, strategy)
    assert str(info.value) == (
        f"model: strategy={strategy!r} trains a model through its forward (DDP and FSDP2 hook it), got a "
        "ModuleDict without one: put the parts in a module whose forward the step calls"
    )
    assert wrap_model(towers, "none") is towers  # one process: the step may call the parts themselves
    with pytest.raises(ValueError, match=r"^strategy='ddp' needs a process group"):  # a forward: on to the group
        wrap_model(nn.Sequential(nn.Linear(4, 4)), "ddp")


class _FakeGroup:
    """Stands for a two-rank process group seen from ``rank``: the broadcast hands on rank 0's object."""

    def __init__(self, rank: int, sent: list) -> None:
        self.rank, self.sent = rank, sent

    def is_initialized(self) -> bool:
        return True

    def get_rank(self) -> int:
        return self.rank

    def broadcast_object_list(self, objects: list, src: int) -> None:
        assert src == 0
        if self.rank == 0:
            self.sent.append(objects[0])
        else:
            objects[0] = self.sent.pop(0)


def test_rank0_value_gives_every_rank_rank_0s_value_and_its_error(monkeypatch):
    """The recipes learn a vocabulary from texts rank 0 alone reads; a failed read must stop every rank
    with rank 0's error, not leave the others waiting for a value."""
    assert distributed.rank0_value(lambda: 5) == 5  # no process group: computed here
    sent, calls = [], []

    def read(rank: int) -> list:
        calls.append(rank)
        return ["read on rank 0"]

    def fail(unpicklable: bool) -> None:
        raise ValueError("texts: unreadable", (lambda: 0) if unpicklable else 0)

    for rank in (0, 1):
        monkeypatch.setattr(distributed, "dist", _FakeGroup(rank, sent))
        assert distributed.rank0_value(functools.partial(read, rank)) == ["read on rank 0"]
        for unpicklable in (False, True):
            expected = ValueError if rank == 0 or not unpicklable else RuntimeError
            with pytest.raises(expected, match="texts: unreadable"):
                distributed.rank0_value(functools.partial(fail, unpicklable))
    assert calls == [0] and sent == []  # rank 1 read nothing, and took every value rank 0 sent


# A collective waits this long for another rank here (torch's default: Gloo 30 min, NCCL 10 min)
TIMEOUT_S = 1.0
HANG_CAP_S = 60  # how long the stuck rank stays stuck at most, should rank 0 never report
# the stuck-rank run's: its two ranks' setup (spawned imports, fit's resume checks and wrapping) drifted past 1 s
# apart on a loaded 2-core machine, and the timeout fired before the step it is about
STUCK_TIMEOUT_S = 5.0


def _timeout_worker(rank: int, port: str, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    init_distributed("ddp", device="cpu", collective_timeout_s=STUCK_TIMEOUT_S)
    reported = Path(root) / "rank0.txt"

    def step(model, item):
        if rank == 1:  # hangs (it does not die) in its first step, until rank 0 has given up waiting for it
            deadline = time.monotonic() + HANG_CAP_S
            while not reported.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return toy_step(model, item)

    training, optim = settings(Path(root) / "run", strategy="ddp", max_steps=2, collective_timeout_s=STUCK_TIMEOUT_S)
    started, outcome = time.monotonic(), "finished"
    try:
        fit(Toy(), step, ToyData(2, rank=rank, world_size=2), training=training, optim=optim, shard_layers=())
    except Exception as error:  # (rank 1 then meets rank 0's exit: whatever torch says, not asserted)
        outcome = f"{type(error).__name__}: {error}"
    if rank == 0:
        waited = time.monotonic() - started
        (Path(root) / "rank0.tmp").write_text(f"{waited}\n{outcome}")
        (Path(root) / "rank0.tmp").rename(reported)
    dist.destroy_process_group()


def test_a_rank_stuck_in_its_step_fails_the_others_after_the_collective_timeout_naming_the_key(tmp_path):
    """The process group kept torch's default timeout (Gloo 30 min, NCCL 10 min), with no setting: a rank
    that hangs rather than dies held the others that long. Now rank 0 gives up after
    training.collective_timeout_s and says which key decided it."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    run_ranks(_timeout_worker, (port, str(tmp_path)), nprocs=2, timeout_s=HANG_CAP_S + 60)
    waited, outcome = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert outcome.startswith(
        "CollectiveTimeout: key 'training.collective_timeout_s': rank 0 waited in a collective in step 1 (its "
        "forward, backward and the reduction of its losses and gradients) past "
        f"training.collective_timeout_s={STUCK_TIMEOUT_S:g} s for another rank, which is stuck or slower than that "
        "(raise training.collective_timeout_s if its work takes that long) ("
    ), outcome
    assert f"Timed out waiting {STUCK_TIMEOUT_S * 1000:.0f}ms" in outcome, outcome
    assert float(waited) < HANG_CAP_S / 3, waited  # rank 0 did not wait for rank 1 to come back


def _lost_rank_worker(rank: int, port: str, root: str) -> None:
    """A recipe that fits on two ranks, rank 1 dying in its second step; rank 0's status and stderr written down."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)

    calls = []

    def step(model, item):
        calls.append(item)
        if rank == 1 and len(calls) == 2:  # step 2 (one micro-batch a step)
            os._exit(0)  # a crash: the process is gone, its sockets closed, nothing said to the others
        return toy_step(model, item)

    def main(config: _RecipeConfig) -> None:
        init_distributed("ddp", device="cpu")
        training, optim = settings(Path(root) / "run", strategy="ddp", max_steps=3, checkpoint_every=10)
        fit(Toy(), step, ToyData(3, rank=rank, world_size=2), training=training, optim=optim, shard_layers=())

    stderr, status = io.StringIO(), None
    try:
        with contextlib.redirect_stderr(stderr):
            run_recipe(main, _RecipeConfig, [])
    except SystemExit as exit_:
        status = exit_.code
    except Exception as error:  # what the old code let through: torch's RuntimeError, with its traceback
        status = type(error).__name__
    if rank == 0:
        (Path(root) / "rank0.txt").write_text(f"{status}\n{stderr.getvalue()}")


def test_a_rank_that_dies_mid_run_leaves_the_others_one_line_and_status_1_not_torchs_traceback(tmp_path):
    """A rank that crashed (its loader raised, it was killed) left every other rank with Gloo's 'Connection
    closed by peer' raised from inside torch.distributed and its traceback: under torchrun one such traceback a
    surviving rank, burying the dead rank's own error above them. Now they say it in one line and exit 1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    run_ranks(_lost_rank_worker, (port, str(tmp_path)), nprocs=2, timeout_s=60)
    status, stderr = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert status == "1", stderr
    assert stderr.startswith(
        "error: rank 0 lost another rank in a collective in step 2 (its forward, backward and the reduction of its "
        "losses and gradients): that rank exited, crashed or was killed, and its own output says why ("
    ), stderr
    assert " by peer" in stderr and stderr.count("\n") == 1, stderr  # (closed or reset, as the timing falls)


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan"), float("inf"), True, "30"])
def test_a_collective_timeout_that_is_no_positive_number_is_refused_before_the_process_group(seconds, monkeypatch):
    started = []
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *args, **kwargs: started.append(args))
    message = f"collective_timeout_s must be None or a finite number of seconds > 0, got {seconds!r}"
    with pytest.raises(ValueError) as info:
        init_distributed("ddp", device="cpu", collective_timeout_s=seconds)
    assert str(info.value) == message and started == []
    with pytest.raises(ValueError) as info:
        distributed.set_collective_timeout(seconds)
    assert str(info.value) == message


@dataclass
class _RecipeConfig:
    training: TrainingConfig = field(default_factory=TrainingConfig)


def _vocabulary_timeout_worker(rank: int, port: str, root: str) -> None:
    """A recipe whose rank 0 alone reads the texts of a vocabulary (rank0_value) for longer than the timeout."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    reported = Path(root) / "rank1.txt"

    def read_texts() -> list:
        deadline = time.monotonic() + HANG_CAP_S
        while not reported.exists() and time.monotonic() < deadline:  # until rank 1 has given up waiting
            time.sleep(0.05)
        return ["a text"]

    def main(config: _RecipeConfig) -> None:
        init_distributed("ddp", device="cpu", collective_timeout_s=config.training.collective_timeout_s)
        distributed.rank0_value(read_texts)

    stderr, status = io.StringIO(), None
    try:
        with contextlib.redirect_stderr(stderr):
            run_recipe(main, _RecipeConfig, [f"training.collective_timeout_s={TIMEOUT_S}"])
    except SystemExit as exit_:
        status = exit_.code
    except Exception as error:  # (rank 0 meets rank 1's exit: whatever torch says, not asserted)
        status = type(error).__name__
    if rank == 1:
        (Path(root) / "rank1.tmp").write_text(f"{status}\n{stderr.getvalue()}")
        (Path(root) / "rank1.tmp").rename(reported)


def test_a_recipes_own_collective_that_times_out_names_the_key_and_where_it_was(tmp_path):
    """A collective of the recipe outside start_run and fit (rank 0 learning the vocabulary from texts it
    reads alone while the others wait in its broadcast, or the barrier after the export) that timed out left
    the recipe with torch's raw 'Timed out waiting 1000ms for recv operation' and a traceback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    run_ranks(_vocabulary_timeout_worker, (port, str(tmp_path)), nprocs=2, timeout_s=HANG_CAP_S + 60)
    status, stderr = (tmp_path / "rank1.txt").read_text().split("\n", 1)
    assert status == "1", stderr
    assert stderr.startswith(
        "error: key 'training.collective_timeout_s': rank 1 waited in a collective outside start_run and fit (before "
        "fit, e.g. while rank 0 alone read the texts a vocabulary is learnt from; or after it, e.g. while rank 0 "
        "wrote the export and report) past training.collective_timeout_s=1 s for another rank"
    ), stderr
    assert stderr.count("\n") == 1, stderr


@pytest.mark.parametrize("strategy", ["none", "ddp"])
def test_a_parameter_dtype_without_fsdp_is_refused_not_ignored(strategy):
    """wrap_model(model, "ddp", param_dtype=torch.bfloat16) returned a model that trained in fp32, without a word."""
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError) as info:
        wrap_model(model, strategy, param_dtype=torch.bfloat16)
    assert str(info.value) == (
        f"param_dtype: expected None with strategy={strategy!r} (only FSDP casts parameters; use torch.autocast "
        "for bf16 there), got torch.bfloat16"
    )
    assert wrap_model(model, "none", param_dtype=None) is model


def _rank0_report_worker(rank: int, port: str, root: str) -> None:
    from torchflava.training import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    init_distributed("ddp", device="cpu", collective_timeout_s=TIMEOUT_S)  # the run's setting: 1 s

    def report() -> dict:
        time.sleep(2 * TIMEOUT_S)  # a report longer than the run's collective timeout
        return {"accuracy": 0.5}

    def failing() -> dict:
        raise ValueError("data.val: an unreadable file")

    outcomes = [rank0_report(report, run_timeout_s=TIMEOUT_S)]
    try:
        rank0_report(failing, run_timeout_s=TIMEOUT_S)
    except ValueError as error:
        outcomes.append(str(error))
    try:  # the run's own timeout put back: a rank that now waits past it fails
        if rank == 1:
            time.sleep(2 * TIMEOUT_S)
        distributed.barrier()
        outcomes.append("waited")
    except RuntimeError:
        outcomes.append("timed out")
    (Path(root) / f"rank{rank}.json").write_text(json.dumps(outcomes))
    dist.destroy_process_group()


def test_the_ranks_wait_for_rank_0s_report_longer_than_the_runs_collective_timeout(tmp_path):
    """The recipes' last barrier (the others waiting while rank 0 evaluates and reports) kept the run's collective
    timeout: a report longer than it (NCCL's default 10 min: a large validation set decoded by one process) failed
    the waiting ranks; and a report that failed on rank 0 left them waiting. Every rank is given rank 0's report,
    or its error, and the run's timeout is put back."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    run_ranks(_rank0_report_worker, (port, str(tmp_path)), nprocs=2, timeout_s=60)
    expected = [{"accuracy": 0.5}, "data.val: an unreadable file"]
    outcomes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert outcomes[0] == [*expected, "timed out"]  # rank 0 waited for the late rank 1 past the run's 1 s again
    assert outcomes[1][:2] == expected  # (rank 1 then meets a group rank 0 has left: whatever torch says)
    for bad in (0, None, float("inf")):
        with pytest.raises(ValueError, match="collective_timeout_s must be"):
            rank0_report(dict, run_timeout_s=None, collective_timeout_s=bad)
    with pytest.raises(ValueError, match="collective_timeout_s must be"):
        rank0_report(dict, run_timeout_s=-1)


def _report_error_worker(rank: int, port: str, root: str) -> None:
    """A recipe whose report fails on rank 0 (a config error), then whose share of a validation set fails on
    rank 1; each rank's exit status and stderr written down."""
    from torchflava.training.config import ConfigError

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")

    def report() -> dict:
        raise ConfigError("key 'data.val': the class 'cat' is not a training class")

    def share(indices: range) -> list:
        if rank == 1:
            raise FileNotFoundError(2, "No such file or directory", "/data/val/3.png")
        return list(indices)

    def main(config: _RecipeConfig) -> None:
        init_distributed("ddp", device="cpu")
        if config.training.max_steps == 1:
            rank0_report(report, run_timeout_s=None)
        distributed.gather_shares(share, 4, run_timeout_s=None)

    said = []
    for steps in (1, 2):  # (max_steps picks which one fails; run_recipe leaves the process group after each)
        stderr, status = io.StringIO(), None
        try:
            with contextlib.redirect_stderr(stderr):
                run_recipe(main, _RecipeConfig, [f"training.max_steps={steps}"], config_errors=(FileNotFoundError,))
        except SystemExit as exit_:
            status = exit_.code
        said.append([status, stderr.getvalue()])
    (Path(root) / f"rank{rank}.json").write_text(json.dumps(said))


def test_an_error_one_rank_raised_for_every_rank_is_printed_by_that_rank_alone(tmp_path):
    """rank0_report and gather_shares raise on every rank what one rank raised (rank 0's report; a rank's share of
    a validation set): every rank then printed the same 'error: ...' line, once a rank."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    run_ranks(_report_error_worker, (port, str(tmp_path)), nprocs=2, timeout_s=60)
    said = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    report_error = "error: key 'data.val': the class 'cat' is not a training class\n"
    share_error = "error: [Errno 2] No such file or directory: '/data/val/3.png'\n"
    assert said[0] == [[2, report_error], [2, ""]]
    assert said[1] == [[2, ""], [2, share_error]]


# the run's collective timeout in the shares test: a rank's share takes longer (SHARE_WORK_S), which the gather allows
SHARE_TIMEOUT_S = 0.3
SHARE_WORK_S = 2 * SHARE_TIMEOUT_S


def _gather_shares_worker(rank: int, port: str, root: str) -> None:
    from torchflava.training.distributed import gather_shares, rank_share

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    init_distributed("ddp", device="cpu", collective_timeout_s=SHARE_TIMEOUT_S)
    shares = [list(rank_share(count)) for count in (5, 1)]

    def tagged(share: range) -> list:  # which rank worked out each item; item 3 unreadable
        if rank == 1:
            time.sleep(SHARE_WORK_S)  # longer than the run's collective timeout
        return [None if i == 3 else [i, rank] for i in share]

    def failing(share: range) -> list:
        if rank == 1:
            raise ValueError("data.val: image 3 does not decode")
        return list(share)

    def short(share: range) -> list:
        return list(share)[:1]

    outcomes = [shares, gather_shares(tagged, 5, run_timeout_s=SHARE_TIMEOUT_S)]
    outcomes.append(gather_shares(lambda share: [i * 10 for i in share], 1, run_timeout_s=None))
    for compute in (failing, short):
        try:
            gather_shares(compute, 5, run_timeout_s=SHARE_TIMEOUT_S)
            outcomes.append("returned")
        except ValueError as error:
            outcomes.append(str(error))
    (Path(root) / f"rank{rank}.json").write_text(json.dumps(outcomes))
    dist.destroy_process_group()


def test_gather_shares_puts_every_ranks_values_back_in_index_order_on_every_rank(tmp_path):
    """A recipe's final evaluation ran on rank 0 alone while the others waited (rank0_report): 8 ranks, one decoding.
    Each rank now works out every world_size-th item and all get the values in index order, a rank slower than the
    run's collective timeout waited for, and what a rank raised (or a share of the wrong length) raised on all."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    run_ranks(_gather_shares_worker, (port, str(tmp_path)), nprocs=2, timeout_s=60)
    outcomes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert outcomes[0][0] == [[0, 2, 4], [0]] and outcomes[1][0] == [[1, 3], []]
    short = "compute: expected a list of one value per index of rank 1's share (2 indices), got a list of 1"
    for outcome in outcomes:
        assert outcome[1:] == [
            [[0, 0], [1, 1], [2, 0], None, [4, 0]],
            [0],  # (rank 1 had no item: an empty share)
            "data.val: image 3 does not decode",
            short.replace("rank 1's", "rank 0's").replace("(2 indices)", "(3 indices)"),
        ]


def test_gather_shares_without_a_process_group_computes_every_index_in_one_process():
    assert distributed.rank_share(4) == range(4)
    assert distributed.gather_shares(lambda share: [i * i for i in share], 4, run_timeout_s=None) == [0, 1, 4, 9]
    assert distributed.gather_shares(lambda share: list(share), 0, run_timeout_s=None) == []
    with pytest.raises(ValueError) as info:
        distributed.gather_shares(lambda share: list(share)[:2], 4, run_timeout_s=None)
    assert str(info.value) == (
        "compute: expected a list of one value per index of rank 0's share (4 indices), got a list of 2"
    )
    with pytest.raises(ValueError) as info:
        distributed.gather_shares(lambda share: tuple(share), 4, run_timeout_s=None)
    assert str(info.value).endswith("(4 indices), got a tuple")
    with pytest.raises(TypeError, match=r"^count must be an int, got float$"):
        distributed.gather_shares(list, 4.0, run_timeout_s=None)
    ran = []
    with pytest.raises(ValueError, match=r"^collective_timeout_s must be None or a finite number"):
        distributed.gather_shares(ran.append, 4, run_timeout_s=0)
    assert ran == []  # refused before any work


class _TwoArguments(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a} {b}")  # (keeps one argument: it pickles, then fails to load with a missing b)


def test_an_error_that_pickles_but_does_not_load_back_is_sent_as_its_type_and_message():
    """Only pickling was tried: such an error passed, then failed to load inside the collective on every rank
    ("__init__() missing 1 required positional argument: 'b'"), its own message lost."""
    from torchflava.training.distributed import _picklable

    sent = _picklable(_TwoArguments("data.val:", "unreadable"))
    assert type(sent) is RuntimeError and str(sent) == "_TwoArguments: data.val: unreadable"
    plain = ValueError("key 'x': bad")
    assert _picklable(plain) is plain


class _WithSpare(Toy):
    """The toy with a parameter its forward never uses: frozen (``requires_grad`` False), or trainable."""

    def __init__(self, *, frozen: bool) -> None:
        super().__init__()
        self.spare = nn.Parameter(torch.full((2,), 3.0), requires_grad=not frozen)


def _unused_search_worker(rank: int, port: str, root: str) -> None:
    """Fits the toy with a frozen spare parameter with and without DDP's search for unused parameters, then the
    toy with a trainable one without it; each run's losses (or error) written down by rank 0."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    init_distributed("ddp", device="cpu")
    outcomes = {}
    for name, frozen, search in (("searched", True, True), ("frozen", True, False), ("trainable", False, False)):
        training, optim = settings(Path(root) / name, strategy="ddp", max_steps=3, checkpoint_every=3)
        model = _WithSpare(frozen=frozen)
        try:
            fit(
                model,
                toy_step,
                ToyData(3, rank=rank, world_size=2),
                training=training,
                optim=optim,
                shard_layers=(),
                find_unused_parameters=search,
            )
            metrics = [json.loads(line) for line in (Path(root) / name / "metrics.jsonl").read_text().splitlines()]
            outcomes[name] = {"losses": [r["loss"] for r in metrics], "spare": model.spare.tolist()}
        except RuntimeError as error:
            outcomes[name] = {"error": str(error)}
        dist.barrier()
    if rank == 0:
        (Path(root) / "outcomes.json").write_text(json.dumps(outcomes))
    dist.destroy_process_group()


def test_ddp_without_the_unused_parameter_search_trains_past_a_frozen_parameter_and_refuses_an_unused_one(tmp_path):
    """find_unused_parameters=False (the CLIP recipes' choice): a frozen parameter is not DDP's to reduce, and the run
    takes the searched run's losses; a trainable parameter without a gradient makes DDP raise at the next step."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    run_ranks(_unused_search_worker, (port, str(tmp_path)), nprocs=2, timeout_s=120)
    outcomes = json.loads((tmp_path / "outcomes.json").read_text())
    assert len(outcomes["searched"]["losses"]) == 3
    assert outcomes["frozen"] == outcomes["searched"]
    assert outcomes["frozen"]["spare"] == [3.0, 3.0]
    assert "error" in outcomes["trainable"], outcomes["trainable"]
    assert "Expected to have finished reduction in the prior iteration" in outcomes["trainable"]["error"]


@pytest.mark.parametrize("search", [True, False])
def test_fit_hands_its_unused_parameter_search_to_wrap_model(search, tmp_path, monkeypatch):
    """fit(find_unused_parameters=...) reaches wrap_model (True, FLAVA's need, unless told otherwise)."""
    from torchflava.training import schema

    seen = []

    def spy(model, strategy, **kwargs):
        seen.append(kwargs["find_unused_parameters"])
        return wrap_model(model, strategy, **kwargs)

    monkeypatch.setattr(schema, "wrap_model", spy)
    training, optim = settings(tmp_path / "given", max_steps=1, checkpoint_every=1)
    fit(Toy(), toy_step, ToyData(1), training=training, optim=optim, shard_layers=(), find_unused_parameters=search)
    training, optim = settings(tmp_path / "default", max_steps=1, checkpoint_every=1)
    fit(Toy(), toy_step, ToyData(1), training=training, optim=optim, shard_layers=())
    assert seen == [search, True]
    with pytest.raises(TypeError) as info:
        fit(Toy(), toy_step, ToyData(1), training=training, optim=optim, find_unused_parameters=0)
    assert str(info.value) == "find_unused_parameters must be a bool, got int"


class _TwoHeads(Toy):
    """The toy's linear map read by two heads, one per call of the forward (a captioner's and a matcher's)."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})

    def forward(self, x: torch.Tensor, head: str) -> torch.Tensor:
        return self.heads[head](self.linear(x) * self.gain)


def _two_calls_step(model, item):
    """Calls the model twice: the last call leaves head "a", which the first one used, without a use of its own."""
    b = item.batch
    sums = {head: (((model(b["x"], head) - b["y"]) ** 2).sum(-1) * b["mask"]).sum() for head in ("a", "b")}
    return StepOutput(sums, {head: b["mask"].sum() for head in sums})


def _two_calls_worker(rank: int, port: str, root: str) -> None:
    """Fits the two-headed toy on two ranks with DDP's unused-parameter search; its weights saved by rank 0."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    init_distributed("ddp", device="cpu")
    training, optim = settings(Path(root) / "ddp", strategy="ddp", max_steps=3, checkpoint_every=3, grad_accumulation=2)
    model = _TwoHeads()
    data = ToyData(3, accumulation=2, rank=rank, world_size=2)
    fit(model, _two_calls_step, data, training=training, optim=optim, shard_layers=())
    if rank == 0:
        torch.save(model.state_dict(), Path(root) / "ddp.pt")
    dist.destroy_process_group()


def test_a_step_that_calls_the_model_twice_trains_under_ddp_as_one_process(tmp_path):
    """DDP's search for unused parameters ran from each call's outputs, the last call's counting: a head the first
    call used and the last did not was taken as unused, then got its gradient in the backward, and DDP raised
    ("heads.a.bias has been marked as ready twice") in step 1. The search now runs from the step's loss."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    run_ranks(_two_calls_worker, (port, str(tmp_path)), nprocs=2, timeout_s=120)
    training, optim = settings(tmp_path / "one", max_steps=3, checkpoint_every=3, grad_accumulation=2)
    model = _TwoHeads()
    fit(model, _two_calls_step, ToyData(3, accumulation=2), training=training, optim=optim, shard_layers=())
    ranks = torch.load(tmp_path / "ddp.pt", weights_only=True)
    expected = model.state_dict()
    assert ranks.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(ranks[name], value, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(expected["heads.a.weight"], _TwoHeads().heads.a.weight)  # (trained)
