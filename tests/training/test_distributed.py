"""wrap_model: what data parallelism can wrap; rank0_value: rank 0's value (or error) on every rank."""

import functools

import pytest
from torch import nn

from torchflava.training import distributed
from torchflava.training.distributed import wrap_model


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
