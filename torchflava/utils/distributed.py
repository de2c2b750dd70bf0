"""torch.distributed helpers: rank queries that work without a process group, and all-gathers.

Every helper works whether or not ``torch.distributed`` is initialised: without a process group
(or with a single process) there is one rank, rank 0, and gathering returns the input itself.

The gathers are collectives on the default process group: every rank must call them in the same
order, with tensors of the same number of dimensions, trailing shape, dtype and device type. Only
the first dimension (the local batch size) may differ between ranks.
"""

import enum

import torch
from torch import Tensor
import torch.distributed as dist


class GatherGrad(enum.Enum):
    """Which gradient flows back through a gather (see :func:`gather_features`).

    Attributes:
        GLOBAL: every rank's rows get the gradient of every rank's loss: the backward pass
            all-reduces (sums) the gradient of the gathered tensor across ranks. Every rank must
            then run backward through the gathered tensor.
        LOCAL: only this rank's own rows carry gradient (of this rank's loss); the rows gathered
            from the other ranks are constants. No collective in the backward pass.
        NONE: the gathered tensor carries no gradient at all, this rank's rows included.
    """

    GLOBAL = "global"
    LOCAL = "local"
    NONE = "none"


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is available and its default process group initialised.

    Returns:
        bool: True inside an initialised process group (of any size).
    """
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank in the default process group.

    Returns:
        int: the rank; 0 when ``torch.distributed`` is not initialised.
    """
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes in the default process group.

    Returns:
        int: the world size; 1 when ``torch.distributed`` is not initialised.
    """
    return dist.get_world_size() if is_distributed() else 1


def _gather_sizes(tensor: Tensor) -> list[int]:
    """All-gather every rank's shape; check the trailing dimensions agree and return the row counts.

    Every rank sees every shape, so a mismatch raises on all ranks alike (no rank is left waiting).
    """
    shape = torch.tensor(tensor.shape, dtype=torch.long, device=tensor.device)
    shapes = [torch.empty_like(shape) for _ in range(get_world_size())]
    dist.all_gather(shapes, shape)
    shapes = [tuple(s.tolist()) for s in shapes]
    if any(s[1:] != shapes[0][1:] for s in shapes):
        raise ValueError(f"tensor must have the same trailing shape on every rank, got shapes {shapes} by rank")
    return [s[0] for s in shapes]


def _gather_padded(tensor: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate every rank's rows: pad to the largest row count, all-gather, drop the padding."""
    rows, max_rows = tensor.shape[0], max(sizes)
    if rows < max_rows:
        tensor = torch.cat([tensor, tensor.new_zeros((max_rows - rows, *tensor.shape[1:]))])
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in sizes]
    dist.all_gather(parts, tensor)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's rows. Backward: sum the gradient over ranks, keep our rows."""

    @staticmethod
    def forward(ctx, tensor: Tensor, sizes: list[int], offset: int) -> Tensor:
        ctx.rows = slice(offset, offset + tensor.shape[0])
        return _gather_padded(tensor, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        grad = grad.contiguous().clone()  # all_reduce works in place: never write into autograd's buffer
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rows], None, None


def gather_features(tensor: Tensor, mode: GatherGrad) -> tuple[Tensor, int]:
    """Concatenate every rank's (B_r, ...) tensor along dim 0; the B_r may differ between ranks.

    With a single process (``torch.distributed`` not initialised, or a world size of 1) nothing is
    gathered: the tensor itself comes back with offset 0, whatever the mode.

    Args:
        tensor (Tensor): (B_r, ...) this rank's rows.
        mode (GatherGrad): which gradient flows back through the gather (see :class:`GatherGrad`).

    Returns:
        tuple[Tensor, int]: the gathered (sum_r B_r, ...) tensor, rank 0's rows first, and the index
        of this rank's first row in it (the sum of the lower ranks' B_r).

    Raises:
        TypeError: if ``tensor`` is not a Tensor or ``mode`` not a GatherGrad.
        ValueError: if ``tensor`` has no dimensions, or the trailing shapes differ between ranks
            (raised on every rank).
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor must be a Tensor, got {type(tensor).__name__}")
    if not isinstance(mode, GatherGrad):
        raise TypeError(f"mode must be a GatherGrad, got {mode!r}")
    if tensor.dim() == 0:
        raise ValueError("tensor must have at least one dimension (the rows to gather), got a scalar")
    if get_world_size() == 1:
        return tensor, 0
    sizes = _gather_sizes(tensor)
    offset = sum(sizes[: get_rank()])
    if mode is GatherGrad.GLOBAL:
        return _AllGatherWithGrad.apply(tensor, sizes, offset), offset
    with torch.no_grad():
        gathered = _gather_padded(tensor.detach(), sizes)
    if mode is GatherGrad.LOCAL:
        gathered = torch.cat([gathered[:offset], tensor, gathered[offset + tensor.shape[0] :]])
    return gathered, offset


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate every rank's (B_r, ...) tensor along dim 0, with gradients to every rank.

    The backward pass sums the gathered tensor's gradient over all ranks and hands each rank the
    slice of its own rows, so each rank's rows get the gradient of the sum of all ranks' losses
    (:attr:`GatherGrad.GLOBAL`). Every rank must therefore run backward through the result.

    Args:
        tensor (Tensor): (B_r, ...) this rank's rows; the B_r may differ between ranks.

    Returns:
        Tensor: (sum_r B_r, ...) every rank's rows, rank 0's first; ``tensor`` itself with a single
        process.

    Raises:
        TypeError: if ``tensor`` is not a Tensor.
        ValueError: if ``tensor`` has no dimensions, or the trailing shapes differ between ranks.
    """
    return gather_features(tensor, GatherGrad.GLOBAL)[0]
