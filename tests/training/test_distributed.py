"""wrap_model: what data parallelism can wrap."""

import pytest
from torch import nn

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
