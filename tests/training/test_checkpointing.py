"""Checkpoints in one process without a process group: layout, keep, latest, exact restore, RNG, export."""

import errno
import json
import os
from pathlib import Path
import random
import warnings

import numpy as np
import pytest
from safetensors.torch import load_file
import torch
from torch import nn

import torchflava.training.checkpointing as checkpointing_module
from torchflava.training.checkpointing import (
    CheckpointManager,
    CheckpointWriteError,
    export_model,
    rng_state,
    set_rng_state,
)
from torchflava.training.integrity import CheckpointIntegrityError


def build(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 3))
    return model, torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(5, 4, generator=g)).pow(2).mean().backward()
        optimizer.step()


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_keep_one_leaves_only_the_newest(tmp_path):
    model, optimizer = build(0)
    manager = CheckpointManager(tmp_path / "ckpt", keep=1)
    assert manager.complete() == [] and manager.latest() is None  # the root does not exist yet
    train(model, optimizer, 2, seed=0)
    first = manager.save(2, model, optimizer, {"step": 2})
    assert first == tmp_path / "ckpt" / "step_00000002"
    assert (first / "COMPLETE").is_file() and (first / "rank0.pt").is_file() and (first / ".metadata").is_file()
    train(model, optimizer, 2, seed=1)
    second = manager.save(4, model, optimizer, {"step": 4})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_00000004"]  # step 2 deleted, no tmp left
    marker = json.loads((second / "COMPLETE").read_text())
    assert {k: marker[k] for k in ("step", "world_size")} == {"step": 4, "world_size": 1}
    assert set(marker["files"]) == {".metadata", "__0_0.distcp", "rank0.pt"}
    assert marker["files"]["rank0.pt"]["bytes"] == (second / "rank0.pt").stat().st_size
    assert manager.complete() == [second] and manager.latest() == second


def disk_full(real, *, after: int = 0):
    """``real``, except that every call after the first ``after`` fails as a full disk does."""
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] > after:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("where", ["shards", "rank_state", "marker", "directory"])
def test_a_full_disk_fails_the_save_in_one_line_removes_its_part_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, where
):
    """A full disk mid-save raised DCP's multi-line CheckpointException (a BaseException, past `except
    Exception`), or the bare OSError, and left the partial .step_<N>.tmp on the full disk."""
    model, optimizer = build(0)
    manager = CheckpointManager(tmp_path / "ckpt", keep=1)
    first = manager.save(2, model, optimizer, {"step": 2})
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, optimizer, 2, seed=1)
    import torch.distributed.checkpoint.filesystem as dcp_files

    target = {
        "shards": (dcp_files, "_write_item"),
        "rank_state": (checkpointing_module.torch, "save"),
        "marker": (checkpointing_module, "write_marker"),
        "directory": (Path, "mkdir"),
    }[where]
    monkeypatch.setattr(*target, disk_full(getattr(*target)))
    with pytest.raises(CheckpointWriteError) as failed:
        manager.save(4, model, optimizer, {"step": 4})
    monkeypatch.undo()
    assert str(failed.value) == (
        f"cannot write checkpoint step 4 in {tmp_path / 'ckpt'} (rank 0: OSError: [Errno 28] No space left on "
        f"device); what was written of it is removed and the newest complete checkpoint, {first}, is intact: free "
        "space or fix the directory, then resume (training.resume=auto)"
    )
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_00000002"]  # no .step_00000004.tmp
    fresh, fresh_optimizer = build(1)
    assert manager.load(first, fresh, fresh_optimizer) == {"step": 2}
    assert_same_state(fresh.state_dict(), saved)


def test_a_rotation_that_fails_after_the_rename_warns_and_the_save_stands(tmp_path, monkeypatch, capsys):
    """The checkpoint is complete once renamed (resume=auto picks it): a failure of the rotation after it
    was reported as a failed save whose files were removed, and stopped the run."""
    model, optimizer = build(0)
    manager = CheckpointManager(tmp_path / "ckpt", keep=1)
    manager.save(2, model, optimizer, {"step": 2})
    monkeypatch.setattr(checkpointing_module, "_discard", disk_full(checkpointing_module._discard))
    final = manager.save(4, model, optimizer, {"step": 4})
    monkeypatch.undo()
    assert final == tmp_path / "ckpt" / "step_00000004"
    assert [p.name for p in manager.complete()] == ["step_00000002", "step_00000004"]  # the old one left
    assert manager.latest() == final
    err = capsys.readouterr().err
    assert err.startswith(f"warning: checkpoint {final} is complete, but after it was written [Errno 28] No space")
    assert err.count("\n") == 1
    fresh, fresh_optimizer = build(1)
    assert manager.load(final, fresh, fresh_optimizer) == {"step": 4}


def test_every_file_reaches_the_disk_before_the_marker_and_the_rename_after_it(tmp_path, monkeypatch):
    """A power loss after the rename must not leave a checkpoint whose files were still in the page
    cache: the newest checkpoint would fail its digests and the older ones are deleted by then."""
    synced, fsync = [], os.fsync

    def recording(fd):
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        synced.append((path.relative_to(tmp_path).as_posix(), (path.parent / "COMPLETE").exists()))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    model, optimizer = build(0)
    CheckpointManager(tmp_path / "ckpt", keep=1).save(2, model, optimizer, {"step": 2})
    names = [name for name, _ in synced]
    tmp = "ckpt/.step_00000002.tmp"
    for data in (f"{tmp}/__0_0.distcp", f"{tmp}/rank0.pt"):  # dcp.save syncs its shards; ours, the rank file
        assert (data, False) in synced
    assert names.index(f"{tmp}/rank0.pt") < names.index(f"{tmp}/.COMPLETE.tmp") < names.index(tmp)
    assert names[-1] == "ckpt"  # the rename, last


def test_keep_two_and_numeric_order(tmp_path):
    model, optimizer = build(0)
    manager = CheckpointManager(tmp_path, keep=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one process without a process group is a normal case: no warnings
        for step in (9, 10, 100):
            manager.save(step, model, optimizer, {})
        manager.load(tmp_path / "step_00000100", *build(1))
    assert [p.name for p in manager.complete()] == ["step_00000010", "step_00000100"]
    assert manager.latest().name == "step_00000100"


def test_unfinished_checkpoints_are_ignored(tmp_path):
    model, optimizer = build(0)
    manager = CheckpointManager(tmp_path, keep=1)
    saved = manager.save(4, model, optimizer, {"step": 4})
    (tmp_path / ".step_00000006.tmp").mkdir()  # a killed save before the rename
    (tmp_path / ".step_00000006.tmp" / "COMPLETE").write_text("{}")
    broken = tmp_path / "step_00000008"  # a directory without the COMPLETE marker
    broken.mkdir()
    (broken / "rank0.pt").write_bytes(b"partial")
    assert manager.latest() == saved and manager.complete() == [saved]
    with pytest.raises(CheckpointIntegrityError, match="COMPLETE"):
        manager.load(broken, *build(1))
    with pytest.raises(CheckpointIntegrityError, match="step_00000006"):
        manager.load(tmp_path / "step_00000006", *build(1))


def test_load_restores_model_and_adamw_state_exactly(tmp_path):
    model, optimizer = build(0)
    train(model, optimizer, 3, seed=0)
    optimizer.param_groups[0]["lr"] = 0.0037  # as a scheduler would leave it
    local = {
        "step": 3,
        "lr": 0.0037,
        "name": "tiny-run",
        "loader": {"position": 12, "seen": [3, 4]},
        "weights": torch.arange(5.0),
        "rng": rng_state(),
    }
    manager = CheckpointManager(tmp_path, keep=2)
    path = manager.save(3, model, optimizer, local)

    fresh, fresh_optimizer = build(1)  # other initial weights, no optimiser state yet
    assert not torch.equal(fresh[0].weight, model[0].weight)
    got = manager.load(path, fresh, fresh_optimizer)
    assert_same_state(fresh.state_dict(), model.state_dict())
    original, restored = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert restored["param_groups"][0]["lr"] == 0.0037
    assert restored["param_groups"] == original["param_groups"]
    assert_same_state(restored["state"], original["state"])
    assert float(restored["state"][0]["step"]) == 3.0
    # The local state comes back as saved, and loads with weights_only (tensors, numbers, strings).
    assert got.keys() == local.keys()
    assert got["step"] == 3 and got["lr"] == 0.0037 and got["name"] == "tiny-run"
    assert got["loader"] == {"position": 12, "seen": [3, 4]} and torch.equal(got["weights"], torch.arange(5.0))
    assert_same_state(torch.load(path / "rank0.pt", weights_only=True)["loader"], local["loader"])
    # Training on from the restored copy gives exactly what training on from the original gives.
    train(model, optimizer, 2, seed=5)
    train(fresh, fresh_optimizer, 2, seed=5)
    assert_same_state(fresh.state_dict(), model.state_dict())


def build_with_head(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.ModuleDict({"body": nn.Linear(4, 3), "head": nn.Linear(3, 2)})
    return model, torch.optim.AdamW(model.parameters(), lr=0.01)


def step_with_head(model: nn.Module, optimizer: torch.optim.Optimizer, use_head: bool, seed: int) -> None:
    optimizer.zero_grad()
    hidden = model["body"](torch.randn(5, 4, generator=torch.Generator().manual_seed(seed)))
    (model["head"](hidden) if use_head else hidden).pow(2).mean().backward()
    optimizer.step()


def test_parameters_without_optimizer_state_stay_without_it(tmp_path):
    model, optimizer = build_with_head(0)
    for seed in range(2):
        step_with_head(model, optimizer, use_head=False, seed=seed)  # the head's loss has not run yet
    assert len(optimizer.state) == 2  # body weight and bias only
    manager = CheckpointManager(tmp_path)
    path = manager.save(2, model, optimizer, {})
    fresh, fresh_optimizer = build_with_head(1)
    manager.load(path, fresh, fresh_optimizer)
    assert set(fresh_optimizer.state) == {fresh["body"].weight, fresh["body"].bias}
    assert_same_state(fresh_optimizer.state_dict()["state"], optimizer.state_dict()["state"])
    # When the head starts training, both copies start its AdamW moments from scratch in the same way.
    for seed in (5, 6):
        step_with_head(model, optimizer, use_head=True, seed=seed)
        step_with_head(fresh, fresh_optimizer, use_head=True, seed=seed)
    assert_same_state(fresh.state_dict(), model.state_dict())
    assert_same_state(fresh_optimizer.state_dict()["state"], optimizer.state_dict()["state"])


def test_load_into_a_model_with_weights_the_checkpoint_lacks(tmp_path):
    model, optimizer = build(0)
    path = CheckpointManager(tmp_path).save(1, model, optimizer, {})
    bigger = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"lacks model weights \['4.bias', '4.weight'\]"):
        CheckpointManager(tmp_path).load(path, bigger, torch.optim.AdamW(bigger.parameters()))


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save({"rng": rng_state()}, tmp_path / "rng.pt")
    first = (torch.rand(4), random.random(), np.random.rand(3), np.random.randn(2))
    state = torch.load(tmp_path / "rng.pt", weights_only=True)["rng"]
    set_rng_state(state)
    again = (torch.rand(4), random.random(), np.random.rand(3), np.random.randn(2))
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    assert np.array_equal(first[2], again[2]) and np.array_equal(first[3], again[3])
    # set_rng_state moved every generator back, not just one: the next draws differ from the restored ones.
    assert not torch.equal(torch.rand(4), first[0])


def test_rng_state_keeps_numpy_gaussian_cache():
    np.random.seed(0)
    np.random.randn()  # the polar method leaves the second normal cached
    state = rng_state()
    expected = np.random.randn(3)
    np.random.seed(9)
    set_rng_state(state)
    assert np.array_equal(np.random.randn(3), expected)


def test_export_model_writes_the_state_dict(tmp_path):
    model, optimizer = build(0)
    train(model, optimizer, 1, seed=0)
    path = tmp_path / "out" / "model.safetensors"
    path.parent.mkdir()
    export_model(model, path)
    assert path.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, then JSON
    tensors = load_file(str(path))
    expected = model.state_dict()
    assert tensors.keys() == expected.keys()
    for key in expected:
        assert torch.equal(tensors[key], expected[key]), key
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        CheckpointManager(tmp_path, keep=0)
    manager = CheckpointManager(tmp_path)
    with pytest.raises(CheckpointIntegrityError, match="not a complete checkpoint"):
        manager.load(tmp_path, *build(0))


def test_a_file_under_a_checkpoints_name_is_refused_never_renamed(tmp_path):
    """Saving step N over a plain file step_<N> renamed it to .step_<N>.deleting and left it there."""
    model, optimizer = build(0)
    root = tmp_path / "ckpt"
    root.mkdir()
    (root / "step_00000002").write_text("notes")
    manager = CheckpointManager(root, keep=1)
    assert manager.strays() == [root / "step_00000002"] and manager.complete() == []
    with pytest.raises(ValueError, match=r"step_00000002: expected a checkpoint directory to delete, got a file"):
        manager.save(2, model, optimizer, {"step": 2})
    assert (root / "step_00000002").read_text() == "notes"
    assert not (root / ".step_00000002.deleting").exists()
