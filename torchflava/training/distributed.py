"""Process groups and data-parallel wrapping (DDP, or FSDP2 ``fully_shard`` per layer).

Launch with ``torchrun``: ranks come from its environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``); a plain ``python`` launch is one process without a process group.
"""

from contextlib import contextmanager
from datetime import timedelta
import math
import numbers
import os
import pickle
import re
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Type, TypeVar

import torch
from torch import nn
import torch.distributed as dist
from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout

from torchflava.utils.checks import check_int

STRATEGIES = ("none", "ddp", "fsdp")
T = TypeVar("T")


class DistributedInfo(NamedTuple):
    """Where this process stands: rank, world size, local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints reports."""
        return self.rank == 0


def init_distributed(
    strategy: str, *, device: str = "auto", collective_timeout_s: Optional[float] = None
) -> DistributedInfo:
    """Start the process group the strategy needs (NCCL on GPUs, Gloo on CPUs).

    Args:
        strategy (str): ``"none"``, ``"ddp"`` or ``"fsdp"``.
        device (str): ``"auto"`` (this rank's GPU when there is one, else the CPU), ``"cpu"`` or
            ``"cuda"``.
        collective_timeout_s (Optional[float]): how long a rank waits in a collective for the others
            before failing (see :func:`set_collective_timeout`); None keeps torch's default (Gloo 30
            min, NCCL 10 min). The rendezvous keeps torch's default: ranks may start far apart.

    Returns:
        DistributedInfo: rank, world size, local rank and device.

    Raises:
        ValueError: if ``strategy`` or ``device`` is unknown, ``collective_timeout_s`` is not None or a
            finite number > 0, or several processes were launched with ``strategy="none"``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    _check_timeout(collective_timeout_s)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if strategy == "none" and world_size > 1:
        raise ValueError(f"strategy='none' runs one process, but WORLD_SIZE={world_size}; use ddp or fsdp")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    torch_device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(torch_device)
    if strategy != "none" and not dist.is_initialized():
        backend, device_id = "nccl" if use_cuda else "gloo", torch_device if use_cuda else None
        if "MASTER_ADDR" in os.environ or world_size > 1:
            dist.init_process_group(backend, device_id=device_id)
        else:  # one process asked for ddp/fsdp without torchrun: an in-process store, no port to collide on
            dist.init_process_group(backend, device_id=device_id, store=dist.HashStore(), rank=0, world_size=1)
    set_collective_timeout(collective_timeout_s)
    return DistributedInfo(rank, world_size, local_rank, torch_device)


def _check_timeout(seconds: object) -> None:
    """ValueError unless ``seconds`` is None or a finite real number > 0 (no bool)."""
    number = isinstance(seconds, numbers.Real) and not isinstance(seconds, bool)
    if seconds is not None and not (number and 0 < seconds < math.inf):
        raise ValueError(f"collective_timeout_s must be None or a finite number of seconds > 0, got {seconds!r}")


def set_collective_timeout(seconds: Optional[float]) -> None:
    """Make the running process group's collectives fail after ``seconds`` of waiting for another rank,
    instead of torch's default (Gloo 30 min, NCCL 10 min): a rank that hangs, rather than dies, then
    stops the others that soon. Gloo raises in the waiting rank; NCCL's watchdog aborts the process.
    A no-op for None or without a process group.

    Raises:
        ValueError: if ``seconds`` is not None or a finite number > 0.
    """
    _check_timeout(seconds)
    if seconds is None or not dist.is_initialized():
        return
    _apply_timeout(timedelta(seconds=float(seconds)))


def _apply_timeout(timeout: timedelta) -> None:
    # (public from torch 2.7 on; the private name before, down to the oldest torch setup.py allows)
    set_timeout = getattr(dist, "set_timeout", None) or dist.distributed_c10d._set_pg_timeout
    set_timeout(timeout)


class CollectiveTimeout(RuntimeError):
    """A collective waited past its timeout for another rank (stuck, or slower than the timeout allows)."""


class RankLost(RuntimeError):
    """A collective failed because another rank left it: that rank exited, crashed or was killed, and its own
    output says why."""


# What a timed-out collective says: Gloo's "Timed out waiting 1000ms for recv operation", NCCL's
# (under TORCH_NCCL_BLOCKING_WAIT) "Watchdog caught collective operation timeout"
_TIMED_OUT = re.compile(r"Timed out waiting \d+ ?ms|collective operation timeout")
# What Gloo's transport says when the rank at the other end of a connection is gone ("[.../gloo/transport/tcp/
# pair.cc:561] Connection closed by peer [127.0.0.1]:21894", or a read's or write's "Connection reset by peer")
_PEER_GONE = re.compile(r"gloo/transport/\S+\].*(Connection closed by peer|Connection reset by peer|Broken pipe)")


@contextmanager
def collective_timeout_named(
    key: str, seconds: Optional[float], where: Optional[Callable[[], str]] = None
) -> Iterator[None]:
    """Turn a collective's timeout raised inside the block into a :class:`CollectiveTimeout` naming the
    setting ``key`` (and its value ``seconds``; None: torch's default), so that the user learns which
    setting decided how long the rank waited, and what the run was doing; a collective that failed because
    another rank left it (Gloo's "Connection closed by peer") into a :class:`RankLost` saying so, in one line
    where the recipes printed torch's traceback on every surviving rank, burying the lost rank's own error;
    every other error passes unchanged.

    Args:
        key (str): the setting, as the message names it.
        seconds (Optional[float]): its value.
        where (Optional[Callable[[], str]]): what the run was doing when the collective timed out, asked
            then (``"in step 5"``, say); None says nothing of it.

    Raises:
        CollectiveTimeout: for a timed-out collective under a running process group.
        RankLost: for a collective that lost another rank, under a running process group.
    """
    try:
        yield
    except RuntimeError as error:
        if isinstance(error, (CollectiveTimeout, RankLost)) or not dist.is_initialized():
            raise
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        during = "" if where is None else f" {where()}"
        if _PEER_GONE.search(str(error)):
            raise RankLost(
                f"rank {dist.get_rank()} lost another rank in a collective{during}: that rank exited, crashed or was "
                f"killed, and its own output says why ({reason})"
            ) from error
        if not _TIMED_OUT.search(str(error)):
            raise
        waited = f"{key}={seconds:g} s" if seconds is not None else f"torch's default timeout ({key} is null)"
        raise CollectiveTimeout(
            f"key '{key}': rank {dist.get_rank()} waited in a collective{during} past {waited} for another rank, which is "
            f"stuck or slower than that (raise {key} if its work takes that long) ({reason})"
        ) from error


def wrap_model(
    model: nn.Module,
    strategy: str,
    *,
    layer_types: Iterable[Type[nn.Module]] = (),
    param_dtype: Optional[torch.dtype] = None,
    find_unused_parameters: bool = True,
) -> nn.Module:
    """Wrap ``model`` for data parallelism.

    * ``"none"``: returned as is.
    * ``"ddp"``: ``DistributedDataParallel`` (``find_unused_parameters`` for models whose loss
      uses different parts on different steps, as FLAVA's does).
    * ``"fsdp"``: FSDP2 ``fully_shard`` on every module of ``layer_types``, then on the root.
      Scalar parameters (FSDP2 cannot shard them, e.g. a logit scale) stay replicated: call
      :func:`sync_replicated_grads` after backward to average their gradients.

    Args:
        model (nn.Module): the model, on its device.
        strategy (str): ``"none"``, ``"ddp"`` or ``"fsdp"``.
        layer_types (Iterable[Type[nn.Module]]): module classes sharded one by one under FSDP.
        param_dtype (Optional[torch.dtype]): FSDP mixed precision: compute dtype of parameters
            (gradients are reduced in fp32). None keeps fp32.
        find_unused_parameters (bool): passed to DDP: True has it search the autograd graph after every
            backward for the trainable parameters left without a gradient; False skips that search, and
            DDP raises at the next step if one was (frozen parameters are not its to reduce either way).

    Returns:
        nn.Module: the wrapped model (the same object under ``"none"`` and ``"fsdp"``).

    Raises:
        ValueError: if ``strategy`` is unknown or needs a process group that is not running, or
            ``param_dtype`` is given with a strategy other than ``"fsdp"`` (it would be ignored: bf16
            there is an autocast context).
        TypeError: if ``strategy`` is ``"ddp"`` or ``"fsdp"`` and ``model`` has no forward of its own
            (an ``nn.ModuleDict`` of towers): both work through the wrapped model's forward.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if param_dtype is not None and strategy != "fsdp":
        raise ValueError(
            f"param_dtype: expected None with strategy={strategy!r} (only FSDP casts parameters; use torch.autocast "
            f"for bf16 there), got {param_dtype}"
        )
    if strategy == "none":
        return model
    # (DDP's wrapper was then indexed in the step, "'DistributedDataParallel' object is not subscriptable",
    # or skipped, its gradient hooks with it; fully_shard refused the container from inside torch)
    if type(model).forward is nn.Module.forward:
        raise TypeError(
            f"model: strategy={strategy!r} trains a model through its forward (DDP and FSDP2 hook it), got a "
            f"{type(model).__name__} without one: put the parts in a module whose forward the step calls"
        )
    if not dist.is_initialized():
        raise ValueError(f"strategy={strategy!r} needs a process group; call init_distributed first")
    if strategy == "ddp":
        device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    scalars = {p for p in model.parameters() if p.dim() == 0}
    layer_types = tuple(layer_types)
    for module in model.modules():
        if layer_types and isinstance(module, layer_types):
            fully_shard(module, mp_policy=policy, ignored_params=scalars)
    fully_shard(model, mp_policy=policy, ignored_params=scalars)
    model._replicated_params = sorted(scalars, key=id)  # noqa: SLF001 (read by sync_replicated_grads)
    return model


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (the CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return torch.device("cpu") if first is None else first.device


def sync_replicated_grads(model: nn.Module) -> None:
    """Average, over ranks, the gradients of parameters FSDP left replicated (no-op otherwise).

    A rank without a gradient for one counts as a zero, as under DDP; a parameter no rank has a gradient
    for keeps none, so the optimiser skips it as it would in one process (a zero gradient still moves a
    parameter under AdamW's momentum: a logit scale on the steps of a kind without a contrastive loss).
    """
    params = getattr(model, "_replicated_params", [])
    if not params or not dist.is_initialized():
        return
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    has_grad = [torch.tensor(float(p.grad is not None), device=p.device) for p in params]
    flat = torch.stack([g.reshape(()).float() for g in grads + has_grad])
    dist.all_reduce(flat)  # [gradient sums, ranks that had a gradient], in one collective
    sums, ranks_with_grad = flat[: len(params)] / dist.get_world_size(), flat[len(params) :].tolist()
    for p, value, ranks in zip(params, sums, ranks_with_grad):
        p.grad = value.to(p.dtype).reshape(p.shape) if ranks > 0 else None


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (a copy; the identity without a process group)."""
    tensor = tensor.detach().clone()
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()


# How long the other ranks wait for rank 0's work after training (the final evaluation and report of a recipe:
# minutes over a large validation set, decoded by one process), or for the slowest rank's share of it
# (gather_shares); what a rank raises there ends them at once
RANK0_WORK_TIMEOUT_S = 24 * 3600.0


def rank0_report(
    compute: Callable[[], T], *, run_timeout_s: Optional[float], collective_timeout_s: float = RANK0_WORK_TIMEOUT_S
) -> T:
    """What rank 0 makes alone after training (a recipe's evaluation and report), given to every rank as
    :func:`rank0_value` gives it (what it raised is raised on every rank), while the others wait with the process
    group's timeout raised to ``collective_timeout_s``: the run's own (``training.collective_timeout_s``, or torch's
    NCCL 10 min) aborted ranks that were only waiting for a long report. The run's, ``run_timeout_s``, is put back
    after (None: torch's default for the group's backend).

    Raises:
        ValueError: if a timeout is not a finite number > 0 (``run_timeout_s`` may be None; before ``compute`` runs).
        Exception: what ``compute`` raised on rank 0, on every rank.
    """
    _check_long_wait(run_timeout_s, collective_timeout_s)
    if not dist.is_initialized():
        return compute()
    with _waiting_longer(run_timeout_s, collective_timeout_s):
        return rank0_value(compute)


def _check_long_wait(run_timeout_s: Optional[float], collective_timeout_s: float) -> None:
    """ValueError unless ``collective_timeout_s`` is a finite number > 0 and ``run_timeout_s`` None or one."""
    if collective_timeout_s is None:  # (set_collective_timeout's None keeps the run's: not what is asked here)
        raise ValueError("collective_timeout_s must be a finite number of seconds > 0, got None")
    _check_timeout(collective_timeout_s)
    _check_timeout(run_timeout_s)


@contextmanager
def _waiting_longer(run_timeout_s: Optional[float], collective_timeout_s: float) -> Iterator[None]:
    """The running process group's timeout raised to ``collective_timeout_s`` inside the block, the run's
    (``run_timeout_s``; None: torch's default for the group's backend) put back after it."""
    _apply_timeout(timedelta(seconds=float(collective_timeout_s)))
    try:
        yield
    finally:
        default = default_pg_nccl_timeout if dist.get_backend() == "nccl" else default_pg_timeout
        _apply_timeout(default if run_timeout_s is None else timedelta(seconds=float(run_timeout_s)))


def raised_on_rank(error: BaseException) -> Optional[int]:
    """The rank that raised ``error`` where :func:`rank0_value` or :func:`gather_shares` raised it again on this one
    (that rank says it: a recipe prints it there alone); None for an error raised here."""
    return getattr(error, "_raised_on_rank", None)


def _raised_on(error: Exception, rank: int) -> Exception:
    """``error``, marked as raised on ``rank`` (see :func:`raised_on_rank`)."""
    error._raised_on_rank = rank  # noqa: SLF001 (read by raised_on_rank)
    return error


def _picklable(error: Exception) -> Exception:
    """``error`` itself where it pickles and loads back, for another rank to raise; else a RuntimeError of its type
    and message (an exception that does not would fail the collective that sends it, on every rank)."""
    try:  # (both ways: an exception whose __init__ takes other arguments than it keeps pickles, then fails to load)
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def rank0_value(compute: Callable[[], T]) -> T:
    """``compute()`` run on rank 0 alone, its value given to every rank (collective; ``compute()`` without
    a process group). What it raised is raised on every rank: the others would wait for it for good.

    Args:
        compute (Callable[[], T]): makes a picklable value (e.g. reads texts from the data).

    Returns:
        T: rank 0's value.
    """
    if not dist.is_initialized():
        return compute()
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = (True, compute())
        except Exception as error:
            box[0] = (False, _picklable(error))
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise _raised_on(value, 0)
    return value


def rank_share(count: int) -> range:
    """This rank's share of ``count`` items that the ranks work through together: every ``world_size``-th index
    from its rank on (``range(rank, count, world_size)``; a fixed split, so that the values can be put back in
    index order); every index without a process group.

    Raises:
        TypeError: if ``count`` is not an int.
        ValueError: if ``count`` < 0.
    """
    check_int("count", count, 0)
    if not dist.is_initialized():
        return range(count)
    return range(dist.get_rank(), count, dist.get_world_size())


def gather_shares(
    compute: Callable[[range], list],
    count: int,
    *,
    run_timeout_s: Optional[float],
    collective_timeout_s: float = RANK0_WORK_TIMEOUT_S,
) -> list:
    """The values of ``count`` items worked out by the ranks in shares, put back in index order and given to every
    rank (collective; ``compute(range(count))`` without a process group): each rank runs ``compute`` on its
    :func:`rank_share` of the indices, which returns one picklable value per index of it, in its order (None, say,
    for an item it could not read). The ranks that finish first wait for the others with the process group's
    timeout raised to ``collective_timeout_s``, the run's, ``run_timeout_s``, put back after, as
    :func:`rank0_report` does: a large share can take longer than the run's timeout.

    Args:
        compute (Callable[[range], list]): the values of the items of a share (e.g. a validation set's predictions).
        count (int): how many items there are.
        run_timeout_s (Optional[float]): the run's collective timeout (None: torch's default for the backend).
        collective_timeout_s (float): how long a rank waits for the others' shares.

    Returns:
        list: ``count`` values, the one of index ``i`` at position ``i``.

    Raises:
        TypeError: if ``count`` is not an int.
        ValueError: if ``count`` < 0 or a timeout is not a finite number > 0 (before ``compute`` runs), or a rank's
            ``compute`` returned no list of one value per index of its share (on every rank).
        Exception: what ``compute`` raised on a rank, on every rank (the lowest such rank's, where several raised;
            its own on a rank that raised).
    """
    share = rank_share(count)
    _check_long_wait(run_timeout_s, collective_timeout_s)
    if not dist.is_initialized():
        values = compute(share)
        _check_share(0, values, share)
        return values
    try:
        outcome = (True, compute(share))
    except Exception as error:
        outcome, raised = (False, _picklable(error)), error
    else:
        raised = None
    outcomes: list = [None] * dist.get_world_size()
    with _waiting_longer(run_timeout_s, collective_timeout_s):
        dist.all_gather_object(outcomes, outcome)
    if raised is not None:
        raise raised
    failed = next(((rank, value) for rank, (ok, value) in enumerate(outcomes) if not ok), None)
    if failed is not None:
        raise _raised_on(failed[1], failed[0])
    merged: list = [None] * count
    for rank, (_, values) in enumerate(outcomes):
        shared = range(rank, count, len(outcomes))
        _check_share(rank, values, shared)
        merged[rank :: len(outcomes)] = values  # (item i on rank i % world_size, at i // world_size there)
    return merged


def _check_share(rank: int, values: object, share: range) -> None:
    """ValueError unless ``values`` is a list of one value per index of ``share`` (rank ``rank``'s)."""
    if not isinstance(values, list) or len(values) != len(share):
        got = f"a list of {len(values)}" if isinstance(values, list) else f"a {type(values).__name__}"
        raise ValueError(
            f"compute: expected a list of one value per index of rank {rank}'s share ({len(share)} indices), got {got}"
        )
