"""Adversarial checkpoints: code in the metadata or in a non-tensor entry, flipped bytes, a rewritten
marker, a killed deletion. Nothing is executed, nothing damaged is loaded, and an intact older
checkpoint is found."""

import json
import os
import pickle
import shutil

import pytest
import torch
from torch import nn
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict

from tests.helpers import PickleExploit, run_ranks
from torchflava.training.checkpointing import CheckpointManager
from torchflava.training.integrity import CheckpointIntegrityError, damage, read_dcp_metadata, write_marker


def build(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def saved_pair(tmp_path):
    model, optimizer = build(0)
    manager = CheckpointManager(tmp_path / "ckpt", keep=3)
    older = manager.save(1, model, optimizer, {"step": 1})
    newer = manager.save(2, model, optimizer, {"step": 2})
    return manager, older, newer


def flip_bytes(path, fraction: float, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    at = int(len(data) * fraction)
    for i in range(at, min(at + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_intact_checkpoints_verify(tmp_path):
    manager, older, newer = saved_pair(tmp_path)
    assert damage(older) is None and damage(newer) is None
    assert manager.latest_intact() == (newer, [])


@pytest.mark.parametrize("fraction", [0.05, 0.5])
def test_flipped_bytes_in_a_shard_are_caught_and_the_older_checkpoint_is_used(tmp_path, fraction):
    manager, older, newer = saved_pair(tmp_path)
    flip_bytes(newer / "__0_0.distcp", fraction)
    assert "__0_0.distcp does not match its SHA-256 digest" in damage(newer)
    path, passed_over = manager.latest_intact()
    assert path == older and len(passed_over) == 1 and "step_00000002 is damaged" in passed_over[0]
    with pytest.raises(CheckpointIntegrityError, match=r"cannot resume from .*step_00000002: file __0_0.distcp"):
        manager.load(newer, *build(1))
    manager.load(older, *build(1))  # the intact one loads


def test_a_truncated_or_missing_file_is_caught(tmp_path):
    manager, _, newer = saved_pair(tmp_path)
    (newer / "rank0.pt").write_bytes((newer / "rank0.pt").read_bytes()[:10])
    assert "rank0.pt has 10 bytes" in damage(newer)
    (newer / "rank0.pt").unlink()
    assert damage(newer) == "file rank0.pt is missing"


def test_a_marker_rewritten_to_another_step_is_caught(tmp_path):
    manager, older, newer = saved_pair(tmp_path)
    marker = json.loads((newer / "COMPLETE").read_text())
    marker["step"] = 7
    (newer / "COMPLETE").write_text(json.dumps(marker))
    assert damage(newer) == (
        "its COMPLETE marker does not match its own SHA-256 digest (corrupted or changed after it was written)"
    )
    assert manager.latest_intact()[0] == older
    del marker["sha256"]  # a marker written before it had a digest of its own: its fields are still checked
    (newer / "COMPLETE").write_text(json.dumps(marker))
    assert damage(newer) == "its COMPLETE marker says step 7 but the directory is step_00000002"


@pytest.mark.parametrize("digest", [True, False], ids=["marker digest", "older marker"])
def test_a_marker_rewritten_to_another_world_size_is_caught(tmp_path, digest):
    """One flipped bit (1 -> 3) made a resume take the other-world-size path, skip restoring the RNG
    and train a different trajectory, with every file's digest intact."""
    manager, older, newer = saved_pair(tmp_path)
    marker = json.loads((newer / "COMPLETE").read_text())
    marker["world_size"] = 3
    if not digest:
        del marker["sha256"]
    (newer / "COMPLETE").write_text(json.dumps(marker))
    expected = (
        "does not match its own SHA-256 digest" if digest else "says 3 rank(s) wrote it, its files are ['rank0.pt']"
    )
    assert expected in damage(newer)
    assert manager.latest_intact()[0] == older


@pytest.mark.parametrize(
    "content, reason",
    [
        ('{"step": 2', "is unreadable (JSONDecodeError)"),
        ('{"step": 2, "world_size": 1}', "with a digest manifest"),  # written by an older version
        ("\xff\xfe", "is unreadable"),
        ('{"step": 2, "files": {}}', "with a digest manifest"),  # no world size
        ('{"step": 2, "world_size": "2", "files": {}}', "with a digest manifest"),
        ('{"step": 2, "world_size": 0, "files": {}}', "with a digest manifest"),
        ("[" * 100_000 + "]" * 100_000, "is unreadable (RecursionError)"),  # nested too deeply for json
    ],
)
def test_unreadable_or_old_markers_are_refused_in_one_line(tmp_path, content, reason):
    manager, older, newer = saved_pair(tmp_path)
    (newer / "COMPLETE").write_bytes(content.encode("latin-1"))
    assert reason in damage(newer) and "\n" not in damage(newer)
    assert manager.latest_intact()[0] == older


def test_metadata_that_would_run_code_is_refused_even_with_a_forged_manifest(tmp_path):
    manager, _, newer = saved_pair(tmp_path)
    canary = tmp_path / "executed.txt"
    (newer / ".metadata").write_bytes(pickle.dumps(PickleExploit(canary)))
    write_marker(newer, 2, 1)  # the attacker rewrites the manifest to match
    assert damage(newer) is None  # digests alone cannot tell: the allow-list must
    with pytest.raises(CheckpointIntegrityError, match=r"refers to tests\.helpers\.pickle_canary, which is not DCP"):
        manager.load(newer, *build(1))
    with pytest.raises(CheckpointIntegrityError, match="not DCP metadata"):
        read_dcp_metadata(newer)
    assert not canary.exists()


def test_a_non_tensor_entry_that_would_run_code_is_refused(tmp_path):
    canary = tmp_path / "executed.txt"
    model, optimizer = build(0)
    model_state, optim_state = get_state_dict(model, optimizer)
    optim_state["param_groups"][0]["lr"] = PickleExploit(canary)  # stored by DCP as pickled bytes
    target = tmp_path / "ckpt" / "step_00000003"
    target.mkdir(parents=True)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(target))
    torch.save({"step": 3}, target / "rank0.pt")
    write_marker(target, 3, 1)
    with pytest.raises(CheckpointIntegrityError, match="holds a value that is not plain data"):
        CheckpointManager(tmp_path / "ckpt").load(target, *build(1))
    assert not canary.exists()


def test_a_kill_during_deletion_leaves_no_checkpoint_that_looks_complete(tmp_path):
    manager, older, newer = saved_pair(tmp_path)
    # the deletion renames first; a kill after the rename leaves a hidden, partly deleted directory
    doomed = older.with_name(f".{older.name}.deleting")
    os.replace(older, doomed)
    (doomed / "__0_0.distcp").unlink()
    assert manager.complete() == [newer] and manager.latest_intact() == (newer, [])
    model, optimizer = build(2)
    manager.save(3, model, optimizer, {"step": 3})
    assert not doomed.exists()  # the next save removes the leftovers
    assert sorted(p.name for p in manager.root.iterdir()) == ["step_00000002", "step_00000003"]


def test_nothing_intact_gives_none_with_every_reason(tmp_path):
    manager, older, newer = saved_pair(tmp_path)
    for path in (older, newer):
        flip_bytes(path / ".metadata", 0.5)
    path, passed_over = manager.latest_intact()
    assert path is None and len(passed_over) == 2
    shutil.rmtree(manager.root)
    assert manager.latest_intact() == (None, [])


def test_resume_auto_falls_back_with_one_line_and_an_explicit_damaged_path_is_a_config_error(tmp_path, capsys):
    from torchflava.training.config import ConfigError
    from torchflava.training.schema import resume_point

    manager, older, newer = saved_pair(tmp_path)
    assert resume_point(manager, "auto") == newer and capsys.readouterr().err == ""
    flip_bytes(newer / "__0_0.distcp", 0.05)
    assert resume_point(manager, "auto") == older
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step_00000002 is damaged: file __0_0.distcp does not match" in err[0]
    assert err[0].endswith(f"resuming from {older}")
    with pytest.raises(
        ConfigError,
        match=r"key 'training.resume': expected an intact checkpoint directory, got '.*"
        r"step_00000002' \(file __0_0.distcp does not match",
    ):
        resume_point(manager, str(newer))
    with pytest.raises(ConfigError, match=r"got '.*nowhere' \(.*nowhere is not a complete checkpoint"):
        resume_point(manager, str(tmp_path / "nowhere"))
    assert resume_point(manager, str(older)) == older
    (tmp_path / "notes.txt").write_text("not a checkpoint")  # were 'no COMPLETE file' and 'COMPLETE is unreadable'
    for path, kind in ((tmp_path / "nowhere", "no such directory"), (tmp_path / "notes.txt", "not a directory")):
        with pytest.raises(ConfigError) as error:
            resume_point(manager, str(path))
        assert str(error.value) == (
            f"key 'training.resume': expected an intact checkpoint directory, got {str(path)!r} ({path} is not a "
            f"complete checkpoint ({kind}))"
        )


def _fsdp_worker(rank: int, init_file: str, root: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model, optimizer = build(0)
        fully_shard(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        manager = CheckpointManager(root)
        manager.save(5, model, optimizer, {"step": 5})
        fresh, _ = build(1)
        fully_shard(fresh)
        fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.01)
        manager.load(manager.latest_intact()[0], fresh, fresh_optimizer)
        same = all(
            torch.equal(a.full_tensor(), b.full_tensor()) for a, b in zip(model.parameters(), fresh.parameters())
        )
        torch.save({"same": same}, f"{root}/result{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sharded_fsdp_checkpoints_verify_and_load_through_the_allow_list(tmp_path):
    root = tmp_path / "ckpt"
    run_ranks(_fsdp_worker, (str(tmp_path / "init"), str(root)), nprocs=2, timeout_s=180)
    assert all(torch.load(root / f"result{r}.pt", weights_only=True)["same"] for r in range(2))
    saved = root / "step_00000005"
    assert damage(saved) is None and {"__0_0.distcp", "__1_0.distcp", "rank1.pt"} <= set(
        json.loads((saved / "COMPLETE").read_text())["files"]
    )
    model, optimizer = build(2)  # one process reads what two sharded ranks wrote
    CheckpointManager(root).load(saved, model, optimizer)
    reference, _ = build(0)
    assert not torch.equal(model[0].weight, reference[0].weight)  # trained one step further than build(0)


@pytest.mark.parametrize("where", ["absolute", "parent"])
def test_metadata_pointing_at_data_outside_the_checkpoint_is_refused_even_with_a_forged_manifest(tmp_path, where):
    manager, _, newer = saved_pair(tmp_path)
    model, optimizer = build(5)
    other = CheckpointManager(tmp_path / "other").save(2, model, optimizer, {"step": 2})
    metadata = read_dcp_metadata(newer)
    for info in metadata.storage_data.values():  # DCP joins the directory and this name
        info.relative_path = (
            str(other / info.relative_path) if where == "absolute" else f"../../other/{other.name}/{info.relative_path}"
        )
    (newer / ".metadata").write_bytes(pickle.dumps(metadata))
    write_marker(newer, 2, 1)
    assert damage(newer) is None  # the manifest lists the files in the directory alone
    with pytest.raises(CheckpointIntegrityError, match=r"expected tensor data in files of the checkpoint directory"):
        manager.load(newer, *build(1))  # (it loaded the other run's weights)
    metadata = read_dcp_metadata(other)
    next(iter(metadata.storage_data.values())).offset = -8
    (other / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointIntegrityError, match=r"expected a non-negative int offset and length"):
        read_dcp_metadata(other)
    info = next(iter(metadata.storage_data.values()))
    info.offset, info.transform_descriptors = 0, ["zstandard/1"]  # (decompressed past any check of the bytes)
    (other / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointIntegrityError, match=r"stored as written .* got \['zstandard/1'\]"):
        read_dcp_metadata(other)


def _zip_bomb(value: object) -> bytes:
    """``torch.save(value)`` with its first storage replaced by 64 MiB of zeros, deflated (~64 KB)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    torch.save(value, buffer)
    with zipfile.ZipFile(buffer) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    entries[next(name for name in entries if name.endswith("data/0"))] = bytes(64 << 20)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return out.getvalue()


def test_a_zip_bomb_in_a_shard_or_a_rank_file_is_refused_before_torch_load_allocates_it(tmp_path):
    manager, _, newer = saved_pair(tmp_path)
    (newer / "rank0.pt").write_bytes(_zip_bomb({"step": 2, "t": torch.zeros(4)}))
    write_marker(newer, 2, 1)
    with pytest.raises(CheckpointIntegrityError, match=r"rank0.pt: expected a torch checkpoint .* expand to \d+ bytes"):
        manager.load(newer, *build(1))
    metadata = read_dcp_metadata(newer)
    index, info = next((i, s) for i, s in metadata.storage_data.items() if i.fqn == "model.0.weight")
    shard = newer / info.relative_path
    info.offset, bomb = shard.stat().st_size, _zip_bomb(torch.zeros(8, 4))
    info.length = len(bomb)
    shard.write_bytes(shard.read_bytes() + bomb)
    (newer / ".metadata").write_bytes(pickle.dumps(metadata))
    (newer / "rank0.pt").write_bytes(pickle.dumps({"step": 2}))
    write_marker(newer, 2, 1)
    with pytest.raises(
        CheckpointIntegrityError, match=r"__0_0.distcp: expected a torch checkpoint .* \(the entry at byte"
    ):
        manager.load(newer, *build(1))


def _forge_manifest(checkpoint, name, entry) -> None:
    """Add ``name: entry`` to the checkpoint's manifest, its marker digest made to match."""
    from torchflava.training.integrity import _marker_digest

    marker = json.loads((checkpoint / "COMPLETE").read_text())
    marker["files"][name] = entry
    marker.pop("sha256")
    marker["sha256"] = _marker_digest(marker)
    (checkpoint / "COMPLETE").write_text(json.dumps(marker))


@pytest.mark.parametrize(
    "name, entry, reason",
    [
        ("/proc/self/mem", {"bytes": 0, "sha256": "0"}, "lists '/proc/self/mem', not a file of the checkpoint"),
        ("../../x", {"bytes": 0, "sha256": "0"}, "lists '../../x', not a file of the checkpoint directory"),
        ("link", {"bytes": 0, "sha256": "0"}, "file link cannot be read (OSError"),  # (a link to /proc/self/mem)
        ("rank0.pt", [1, 2], "lists file rank0.pt with [1, 2], not its bytes and SHA-256"),
    ],
)
def test_a_manifest_naming_files_outside_or_unreadable_gives_a_reason_not_an_error(tmp_path, name, entry, reason):
    manager, older, newer = saved_pair(tmp_path)
    (newer / "link").symlink_to("/proc/self/mem")  # a regular file of 0 bytes whose read fails (EIO)
    _forge_manifest(newer, name, entry)
    assert reason in damage(newer)  # (an OSError or AttributeError came out of damage, and out of the resume)
    assert manager.latest_intact()[0] == older
