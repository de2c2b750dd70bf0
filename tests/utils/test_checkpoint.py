"""Reading and writing state dicts: file formats, Hugging Face directories, sharded indexes, atomic writes."""

import email.utils
import functools
import gzip
import http.server
import io
import json
import math
import os
from pathlib import Path
import re
import shutil
import socket
import threading
import time
import urllib.request

import pytest
from safetensors.torch import load_file, save_file
import torch
from torch import nn

from tests.helpers import PickleExploit, fifo_that_cannot_hang, run_threads, scripted_server
import torchflava.utils.checkpoint as checkpoint
from torchflava.utils.checkpoint import atomic_write, load_state_dict, peek_state_dict, save_state_dict


def _tensors() -> dict[str, torch.Tensor]:
    return {
        "a.weight": torch.randn(3, 4),
        "a.bias": torch.randn(3),
        "b.scale": torch.tensor(2.5),
        "c.ids": torch.arange(5),
        "d.half": torch.randn(2, 2).half(),
    }


def _assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert actual[key].device.type == "cpu", key
        assert torch.equal(actual[key], value), key


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------------------------------- loading


def test_load_safetensors_file(tmp_path):
    tensors = _tensors()
    save_file(tensors, str(tmp_path / "w.safetensors"))
    _assert_same(load_state_dict(tmp_path / "w.safetensors"), tensors)
    _assert_same(load_state_dict(str(tmp_path / "w.safetensors")), tensors)  # str paths too


@pytest.mark.parametrize("name", ["w.pt", "w.pth", "pytorch_model.bin"])
def test_load_torch_file(tmp_path, name):
    tensors = _tensors()
    torch.save(tensors, tmp_path / name)
    _assert_same(load_state_dict(tmp_path / name), tensors)


def test_load_torch_file_unwraps_state_dict_entry(tmp_path):
    tensors = _tensors()
    torch.save({"state_dict": tensors}, tmp_path / "ckpt.pt")
    _assert_same(load_state_dict(tmp_path / "ckpt.pt"), tensors)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_load_directory(tmp_path, name):
    tensors = _tensors()
    if name.endswith(".safetensors"):
        save_file(tensors, str(tmp_path / name))
    else:
        torch.save(tensors, tmp_path / name)
    (tmp_path / "config.json").write_text("{}")
    _assert_same(load_state_dict(tmp_path), tensors)


def test_directory_prefers_safetensors(tmp_path):
    safe, pickled = {"x": torch.ones(2)}, {"x": torch.zeros(2)}
    save_file(safe, str(tmp_path / "model.safetensors"))
    torch.save(pickled, tmp_path / "pytorch_model.bin")
    _assert_same(load_state_dict(tmp_path), safe)


def _write_sharded(directory: Path, tensors: dict[str, torch.Tensor], safetensors: bool) -> Path:
    keys = sorted(tensors)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    ext = "safetensors" if safetensors else "bin"
    stem = "model" if safetensors else "pytorch_model"
    weight_map = {}
    for i, part in enumerate(halves, start=1):
        shard = f"{stem}-{i:05d}-of-00002.{ext}"
        chunk = {k: tensors[k] for k in part}
        if safetensors:
            save_file(chunk, str(directory / shard))
        else:
            torch.save(chunk, directory / shard)
        weight_map.update({k: shard for k in part})
    index = directory / f"{stem}.{ext}.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


@pytest.mark.parametrize("safetensors", [True, False])
def test_load_sharded_index_and_directory(tmp_path, safetensors):
    tensors = _tensors()
    index = _write_sharded(tmp_path, tensors, safetensors)
    _assert_same(load_state_dict(index), tensors)  # the index json itself
    _assert_same(load_state_dict(tmp_path), tensors)  # the directory holding it


def test_index_without_weight_map_raises(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ValueError, match="weight_map"):
        load_state_dict(tmp_path)


def test_missing_path_and_empty_directory_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        load_state_dict(tmp_path)


def test_non_state_dict_torch_files_raise(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="state dict"):
        load_state_dict(tmp_path / "list.pt")
    # text, gzip, random bytes: said to be neither kind (torch's own message advised unpickling them)
    (tmp_path / "garbage.pt").write_bytes(b"this is not a torch file")
    (tmp_path / "random.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "notes.gz").write_bytes(gzip.compress(b"weights"))
    for name in ("garbage.pt", "random.bin", "notes.gz"):
        with pytest.raises(ValueError, match=r"is neither a safetensors file nor a torch checkpoint") as error:
            load_state_dict(tmp_path / name)
        assert "weights_only set to False" not in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "broken.pt").write_bytes(b"\x80\x02 not really a pickle")  # starts as one: torch's reason
    with pytest.raises(ValueError, match="weights_only"):
        load_state_dict(tmp_path / "broken.pt")


# A payload that records its own execution when unpickled.
def test_pickled_code_is_not_run(tmp_path):
    marker = tmp_path / "executed.txt"
    torch.save({"w": torch.zeros(1), "x": PickleExploit(marker)}, tmp_path / "evil.bin")
    with pytest.raises(ValueError, match="weights_only"):
        load_state_dict(tmp_path / "evil.bin")
    assert not marker.exists()
    # Also through a directory (pytorch_model.bin is a pickle too).
    os.replace(tmp_path / "evil.bin", tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="weights_only"):
        load_state_dict(tmp_path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- saving


@pytest.mark.parametrize("name", ["w.safetensors", "w.pt"])
def test_save_round_trip(tmp_path, name):
    tensors = _tensors()
    path = tmp_path / "sub" / "dir" / name  # parents are created
    save_state_dict(tensors, path)
    assert _files(path.parent) == [name]  # no temporary file left behind
    _assert_same(load_state_dict(path), tensors)


def test_save_safetensors_is_really_safetensors(tmp_path):
    tensors = _tensors()
    save_state_dict(tensors, tmp_path / "w.safetensors")
    _assert_same(load_file(str(tmp_path / "w.safetensors")), tensors)


def test_save_handles_views_and_parameters(tmp_path):
    base = torch.randn(4, 6)
    param = torch.nn.Parameter(torch.randn(3))
    tensors = {"t": base.t(), "slice": base[:, 1:3], "param": param}
    for name in ("w.safetensors", "w.pt"):
        save_state_dict(tensors, tmp_path / name)
        loaded = load_state_dict(tmp_path / name)
        assert torch.equal(loaded["t"], base.t())
        assert torch.equal(loaded["slice"], base[:, 1:3])
        assert torch.equal(loaded["param"], param.detach())
        assert not loaded["param"].requires_grad


def test_save_overwrites_existing(tmp_path):
    path = tmp_path / "w.safetensors"
    save_state_dict({"x": torch.zeros(2)}, path)
    save_state_dict({"x": torch.ones(3)}, path)
    _assert_same(load_state_dict(path), {"x": torch.ones(3)})
    assert _files(tmp_path) == ["w.safetensors"]


def _half_then_fail(exc: BaseException):
    """A writer that writes part of a file to the path it is given, then fails."""

    def write(obj, target, *args, **kwargs):
        # safetensors' save_file takes (tensors, filename); torch.save takes (obj, f).
        Path(target).write_bytes(b"partial")
        raise exc

    return write


@pytest.mark.parametrize("name, writer", [("w.safetensors", "save_file"), ("w.pt", "torch.save")])
@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_save_leaves_destination_untouched(tmp_path, monkeypatch, name, writer, exc):
    path = tmp_path / name
    old = {"x": torch.arange(4.0)}
    save_state_dict(old, path)
    before = path.read_bytes()

    if writer == "save_file":
        monkeypatch.setattr(checkpoint, "save_file", _half_then_fail(exc))
    else:
        monkeypatch.setattr(checkpoint.torch, "save", _half_then_fail(exc))
    with pytest.raises(type(exc)):
        save_state_dict({"x": torch.zeros(100)}, path)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert _files(tmp_path) == [name]  # the partial temporary file was removed
    _assert_same(load_state_dict(path), old)


def test_failed_first_save_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "save_file", _half_then_fail(OSError("boom")))
    with pytest.raises(OSError, match="boom"):
        save_state_dict({"x": torch.zeros(1)}, tmp_path / "w.safetensors")
    assert _files(tmp_path) == []


def test_atomic_write_writes_to_a_temporary_name_in_the_same_directory(tmp_path):
    seen = []

    def write(tmp: str) -> None:
        seen.append(Path(tmp))
        assert not (tmp_path / "out.bin").exists()  # the destination appears only at the end
        Path(tmp).write_bytes(b"done")

    atomic_write(tmp_path / "out.bin", write)
    assert seen[0].parent == tmp_path and seen[0].name != "out.bin"
    assert (tmp_path / "out.bin").read_bytes() == b"done"
    assert _files(tmp_path) == ["out.bin"]


def test_atomic_write_syncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    """Without the syncs a crash after the rename could leave the name pointing at an empty file."""
    synced, fsync = [], os.fsync

    def recording(fd):
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        synced.append((path.name, (tmp_path / "out.bin").exists()))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    atomic_write(tmp_path / "out.bin", lambda tmp: Path(tmp).write_bytes(b"done"))
    (tmp_name, final_existed), (directory, _) = synced
    assert tmp_name.startswith(".out.bin.") and not final_existed  # the content, before the rename
    assert directory == tmp_path.name  # then the directory's entry
    assert (tmp_path / "out.bin").read_bytes() == b"done"


def test_atomic_write_succeeds_where_the_directory_cannot_be_opened_and_the_file_is_write_only(tmp_path, monkeypatch):
    """A drop-box directory (writable, not readable) raised after the file was in place; a file its writer
    made write-only could not be opened to sync it."""
    real_open, opened = os.open, []

    def guarded(path, flags, *args):
        if Path(path) == tmp_path or (Path(path).name.startswith(".out.bin.") and flags == os.O_RDONLY):
            raise PermissionError(13, "Permission denied", str(path))
        opened.append((Path(path).name, flags))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", guarded)
    atomic_write(tmp_path / "out.bin", lambda tmp: Path(tmp).write_bytes(b"done"))
    assert (tmp_path / "out.bin").read_bytes() == b"done"
    assert [flags for name, flags in opened if name.startswith(".out.bin.")] == [os.O_WRONLY]


def test_file_urls_name_local_files(tmp_path):
    tensors = {"w": torch.arange(3.0)}
    save_state_dict(tensors, tmp_path / "my weights.safetensors")
    url = (tmp_path / "my weights.safetensors").as_uri()  # file:///.../my%20weights.safetensors
    assert url.startswith("file:///")
    assert torch.equal(load_state_dict(url)["w"], tensors["w"])
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_state_dict((tmp_path / "missing.pt").as_uri())
    with pytest.raises(ValueError, match="file URLs must name a local file"):
        load_state_dict("file://otherhost/weights.pt")


def test_exports_get_normal_permissions_and_a_killed_writers_temporary_is_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".model.safetensors.{dead.pid}.tmp"
    stale.write_bytes(b"half an export")
    live = tmp_path / f".model.safetensors.{os.getppid()}.tmp"  # a live process's write in progress
    live.write_bytes(b"being written")
    old_umask = os.umask(0o022)
    try:
        save_state_dict({"w": torch.ones(2)}, tmp_path / "model.safetensors")
    finally:
        os.umask(old_umask)
    assert not stale.exists() and live.exists()
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------------------- bad checkpoints
@pytest.mark.parametrize("content", [b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{}", b"\x05\x00 neither"])
def test_malformed_safetensors_files_raise_value_error_naming_the_file(tmp_path, content):
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), str(path))
    truncated = path.read_bytes()[:-7]
    for data in (content, truncated):
        path.write_bytes(data)
        with pytest.raises(ValueError, match=r"could not read .*model\.safetensors as a safetensors file") as info:
            load_state_dict(tmp_path)
        assert "\n" not in str(info.value)


def test_files_are_read_by_their_content_not_their_name(tmp_path):
    tensors = _tensors()
    save_file(tensors, str(tmp_path / "weights.pt"))  # safetensors under a torch name
    torch.save(tensors, tmp_path / "blob")  # a Hub cache blob: no suffix
    torch.save(tensors, tmp_path / "weights.safetensors")  # a torch file under the other name
    for name in ("weights.pt", "blob", "weights.safetensors"):
        _assert_same(load_state_dict(tmp_path / name), tensors)
        assert peek_state_dict(tmp_path / name).keys() == tensors.keys()
    (tmp_path / "zip.safetensors").write_bytes(b"PK\x03\x04 a zip, not a torch archive")
    with pytest.raises(ValueError, match=r"zip\.safetensors is truncated or damaged: not a valid torch checkpoint"):
        load_state_dict(tmp_path / "zip.safetensors")  # (a zip archive that cannot be read, not a safetensors file)


def test_a_git_lfs_pointer_and_a_config_json_are_named_for_what_they_are(tmp_path):
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 605247071\n"
    (tmp_path / "pytorch_model.bin").write_text(pointer)
    with pytest.raises(ValueError, match=r"pytorch_model\.bin is a Git LFS pointer, not the weights: fetch them"):
        load_state_dict(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    for read in (load_state_dict, peek_state_dict):
        with pytest.raises(ValueError, match=r"config\.json is not a sharded checkpoint's \*\.index\.json: pass the"):
            read(tmp_path / "config.json")


def test_wrapped_state_dicts_are_unwrapped_and_other_objects_named(tmp_path):
    tensors = _tensors()
    for wrapper in ("state_dict", "model"):
        torch.save({wrapper: tensors, "epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "run.pt")
        _assert_same(load_state_dict(tmp_path / "run.pt"), tensors)
    torch.save({"epoch": 3, "weights": [torch.ones(1)]}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"does not hold a state dict .*, got entries \['epoch', 'weights'\]"):
        load_state_dict(tmp_path / "other.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"does not hold a state dict .*, got a list"):
        load_state_dict(tmp_path / "list.pt")


def test_refused_pickles_are_reported_in_one_line(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": PickleExploit(str(tmp_path / "ran"))}, path)
    with pytest.raises(
        ValueError, match=r"weights_only=True .*: Unsupported global: GLOBAL tests.helpers.pickle_canary$"
    ) as info:
        load_state_dict(path)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
    assert "weights_only` set to `False`" not in str(info.value)  # not torch's advice to unpickle it
    assert not (tmp_path / "ran").exists()


def test_a_torchscript_archive_gives_its_weights(tmp_path):
    # OpenAI's original CLIP .pt files are TorchScript archives: their weights are read, their code never run
    # (tests/utils/test_torchscript.py: hostile archives)
    path = tmp_path / "ViT-B-32.pt"
    module = nn.Linear(3, 2)
    torch.jit.save(torch.jit.script(module), str(path))
    _assert_same(load_state_dict(path), {k: v.detach() for k, v in module.state_dict().items()})
    assert {k: v.shape for k, v in peek_state_dict(path).items()} == {"weight": (2, 3), "bias": (2,)}


@pytest.mark.parametrize(
    "index, match",
    [
        ("{not json", "is not a JSON checkpoint index"),
        (json.dumps({"weight_map": ["a.safetensors"]}), "expected a 'weight_map' of tensor names"),
        (json.dumps({"weight_map": {"a": 3}}), "expected a 'weight_map' of tensor names"),
        (json.dumps({"weight_map": {"a": "model.safetensors.index.json"}}), "no directories, no index"),
        (json.dumps({"weight_map": {"a": "../outside.safetensors"}}), "no directories, no index"),
        (json.dumps({"weight_map": {"a": "/etc/passwd"}}), "no directories, no index"),
    ],
)
def test_malformed_indexes_raise_before_reading_any_shard(tmp_path, index, match):
    save_file(_tensors(), str(tmp_path / "outside.safetensors"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "model.safetensors.index.json").write_text(index)
    with pytest.raises(ValueError, match=match):
        load_state_dict(tmp_path / "d")


def test_index_naming_a_missing_shard_names_it(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "part-1.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="shard part-1.safetensors not found"):
        load_state_dict(tmp_path)


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
def test_state_dicts_without_dense_data_or_with_odd_names_are_refused(tmp_path):
    cases = {
        "meta": ({"w": torch.empty(2, 2, device="meta")}, "'w' must be a dense tensor with data, got a meta"),
        "sparse": ({"w": torch.eye(3).to_sparse()}, "'w' must be a dense tensor with data, got a torch.sparse_coo"),
        "names": ({3: torch.ones(2)}, "expected tensor names that are strings, got 3"),
    }
    for name, (state, match) in cases.items():
        torch.save(state, tmp_path / f"{name}.pt")
        with pytest.raises(ValueError, match=match):
            load_state_dict(tmp_path / f"{name}.pt")


@pytest.mark.parametrize("read", [load_state_dict, peek_state_dict])
def test_a_model_sized_meta_state_dict_is_refused_as_meta_not_as_repeated_storage(tmp_path, read):
    """Found by an adversarial review: a state dict saved from a model built on the meta device (no data),
    of a real model's size, was refused as "tensors repeating their storage" (its tensors span more than 4
    times the file): the refusal of small ones, naming the meta tensor, is the one that says what happened."""
    torch.save({"w": torch.empty(4096, 4096, device="meta")}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match="'w' must be a dense tensor with data, got a meta"):
        read(tmp_path / "meta.pt")


def test_tensors_sharing_memory_are_loaded_as_separate_copies(tmp_path):
    base = torch.randn(6, 4)
    torch.save({"tied.a": base, "tied.b": base, "view": base[2:4]}, tmp_path / "tied.pt")
    loaded = load_state_dict(tmp_path / "tied.pt")
    assert torch.equal(loaded["tied.a"], base) and torch.equal(loaded["tied.b"], base)
    assert torch.equal(loaded["view"], base[2:4])
    pointers = {t.untyped_storage().data_ptr() for t in loaded.values()}
    assert len(pointers) == 3  # editing one parameter loaded from it cannot change another


@pytest.mark.parametrize("path, error", [(True, TypeError), (7, TypeError), (b"/tmp", TypeError), ("", ValueError)])
def test_checkpoint_paths_of_the_wrong_kind_are_refused(path, error):
    with pytest.raises(error, match="checkpoint path must"):
        load_state_dict(path)


@pytest.mark.parametrize("url", ["ftp://host/model.safetensors", "http://host/", "http:///model.safetensors"])
def test_malformed_urls_are_refused_before_any_download(url):
    with pytest.raises(ValueError, match="checkpoint URLs must be"):
        load_state_dict(url)


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass


def test_urls_download_and_failures_name_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))  # iopath's cache, not the home directory's
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    (tmp_path / "served").mkdir()
    tensors = _tensors()
    save_file(tensors, str(tmp_path / "served" / "model.safetensors"))
    handler = functools.partial(_Files, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        _assert_same(load_state_dict(f"{base}/model.safetensors"), tensors)
        with pytest.raises(ConnectionError, match=rf"could not download {base}/missing.safetensors: HTTP Error 404"):
            load_state_dict(f"{base}/missing.safetensors")
    finally:
        server.shutdown()
        server.server_close()


class _Recorded(_Files):
    requests: list = []  # (method, status) of every answer
    failing: list = []  # status codes to answer with instead, one a request

    def send_response(self, code, message=None):
        self.requests.append((self.command, int(code)))
        super().send_response(code, message)

    def do_GET(self):
        if self.failing:
            self.send_error(self.failing.pop(0))
            return
        super().do_GET()


def _serve(directory):
    handler = functools.partial(_Recorded, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _write(path, tensors, age_s):
    """Save ``tensors`` at ``path`` with a modification time ``age_s`` seconds ago."""
    save_file(tensors, str(path))
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_downloads_are_cached_by_the_whole_url_and_revalidated(tmp_path, monkeypatch):
    """Found by adversarial reviews: iopath's cache was keyed by the URL's path alone, so two servers
    (or ports, or queries) with the same path gave the first one's weights, a file changed on the server
    was never downloaded again, and '..' in a URL read any cached file without connecting; then a file
    changed within the second it was served, or replaced by an older copy, passed If-Modified-Since."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    first, second, third = (
        _tensors(),
        {k: v + 1 for k, v in _tensors().items()},
        {k: v + 2 for k, v in _tensors().items()},
    )
    for name, tensors in (("a", first), ("b", second)):
        (tmp_path / name).mkdir()
        _write(tmp_path / name / "model.safetensors", tensors, age_s=100)
    (server_a, base_a), (server_b, base_b) = _serve(tmp_path / "a"), _serve(tmp_path / "b")
    url = f"{base_a}/model.safetensors"
    try:
        _assert_same(load_state_dict(f"{base_b}/model.safetensors"), second)
        _assert_same(load_state_dict(url), first)  # same path, another server
        _Recorded.requests.clear()
        _assert_same(load_state_dict(url), first)
        assert _Recorded.requests == [("HEAD", 200)]  # asked again, not downloaded again
        _write(tmp_path / "a" / "model.safetensors", second, age_s=50)  # changed on the server
        _assert_same(load_state_dict(url), second)
        _write(tmp_path / "a" / "model.safetensors", third, age_s=200)  # an older copy put back (cp -p)
        _assert_same(load_state_dict(url), third)
        # served in the second it changed, and changed again in it: the same Last-Modified and length. The date
        # is set ahead of the server's clock (a weak date however long the serving takes: written "now", the test
        # failed on a busy machine once the write and the serve fell in different seconds)
        _write(tmp_path / "a" / "model.safetensors", first, age_s=-30)
        _assert_same(load_state_dict(url), first)
        stamp = (tmp_path / "a" / "model.safetensors").stat().st_mtime
        save_file(second, str(tmp_path / "a" / "model.safetensors"))
        os.utime(tmp_path / "a" / "model.safetensors", (stamp, stamp))
        _assert_same(load_state_dict(url), second)  # a weak date is not trusted: downloaded again
        _Recorded.failing[:] = [503]
        with pytest.warns(UserWarning, match="HTTP Error 503.*using the copy downloaded before"):
            _assert_same(load_state_dict(url), second)
        with pytest.raises(ValueError, match="must not hold '..' or '.' path segments"):
            load_state_dict(f"{base_a}/x/../model.safetensors")
        with pytest.raises(ValueError, match="must not hide a '/' in the file name"):
            load_state_dict(f"{base_a}/x%2Fmodel.safetensors")
        with pytest.raises(ValueError, match="checkpoint URLs must be .*ASCII"):
            load_state_dict(f"{base_a}/modèle.safetensors")
    finally:
        _Recorded.failing.clear()  # (class-level: a failure above must not answer the next test's first request)
        for server in (server_a, server_b):
            server.shutdown()
            server.server_close()
    with pytest.warns(UserWarning, match="cannot be reached .*using the copy downloaded before"):
        _assert_same(load_state_dict(url), second)  # the server is gone


def test_a_damaged_download_is_fetched_again_and_threads_do_not_share_a_temporary(tmp_path, monkeypatch):
    """Found by an adversarial review: a cached copy damaged after its download was revalidated and
    refused forever; two threads loading one URL wrote to one temporary file and one got a truncated copy."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    (tmp_path / "served").mkdir()
    big = {"w": torch.randn(1 << 20)}
    torch.save(big, tmp_path / "served" / "model.pt")
    then = time.time() - 100
    os.utime(tmp_path / "served" / "model.pt", (then, then))
    server, base = _serve(tmp_path / "served")
    url = f"{base}/model.pt"
    try:
        _assert_same(load_state_dict(url), big)
        (copy,) = (tmp_path / "cache" / "torchflava").glob("*/file/model.pt")
        data = bytearray(copy.read_bytes())
        data[len(data) // 2] ^= 0xFF
        copy.write_bytes(data)
        _assert_same(load_state_dict(url), big)  # damaged: dropped and downloaded again
        shutil.rmtree(tmp_path / "cache")
        results, errors = run_threads(lambda: load_state_dict(url), 4)
        assert errors == [] and len(results) == 4
        for result in results:
            _assert_same(result, big)
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_stops_answering_ends_the_download(tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(checkpoint, "DOWNLOAD_TIMEOUT_S", 0.5)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections (the kernel does), never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/model.safetensors"
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionError, match=f"could not download {url}"):
            load_state_dict(url)
        assert time.monotonic() - started < 10
        assert socket.getdefaulttimeout() is None  # the process-wide default is restored
    finally:
        silent.close()


def test_read_json_object_names_the_file():
    from torchflava.utils.checkpoint import read_json_object

    with pytest.raises(FileNotFoundError, match="config.json not found"):
        read_json_object("/nonexistent/config.json")


@pytest.mark.parametrize("layout", ["model.safetensors", "model.pt", "legacy.pt", "index"])
def test_peek_gives_names_shapes_and_dtypes_without_reading_data(tmp_path, layout):
    from torchflava.utils.checkpoint import peek_state_dict

    tensors = _tensors()
    if layout == "index":
        save_file({k: v for k, v in tensors.items() if k.startswith("a.")}, str(tmp_path / "part-1.safetensors"))
        save_file({k: v for k, v in tensors.items() if not k.startswith("a.")}, str(tmp_path / "part-2.safetensors"))
        weight_map = {k: "part-1.safetensors" if k.startswith("a.") else "part-2.safetensors" for k in tensors}
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        path = tmp_path
    elif layout.endswith("safetensors"):
        path = tmp_path / layout
        save_file(tensors, str(path))
    else:
        path = tmp_path / layout
        torch.save(tensors, path, _use_new_zipfile_serialization=layout != "legacy.pt")
    peeked = checkpoint.peek_state_dict(path)
    assert peeked.keys() == tensors.keys()
    for key, value in tensors.items():
        assert peeked[key].is_meta and peeked[key].shape == value.shape, key
        assert peeked[key].dtype == value.dtype, key
    with pytest.raises(ValueError, match="could not read .* as a safetensors file"):
        (tmp_path / "bad.safetensors").write_bytes(b"\x10" * 64)
        peek_state_dict(tmp_path / "bad.safetensors")


def test_tied_weights_are_saved_under_both_names(tmp_path):
    embedding = nn.Embedding(5, 3)
    head = nn.Linear(3, 5, bias=False)
    head.weight = embedding.weight  # an LM head tied to the token embedding
    state = {"embed.weight": embedding.weight, "head.weight": head.weight, "other": torch.ones(2)}
    for name in ("tied.safetensors", "tied.pt"):
        save_state_dict(state, tmp_path / name)
        loaded = load_state_dict(tmp_path / name)
        assert loaded.keys() == state.keys()
        assert torch.equal(loaded["embed.weight"], embedding.weight) and torch.equal(loaded["head.weight"], head.weight)


def test_a_safetensors_file_whose_header_length_starts_with_0x80_is_safetensors(tmp_path):
    path = tmp_path / "blob"  # a Hub cache blob: only the content tells
    for length in range(1, 300):  # a name of some length makes the header length's low byte 0x80
        save_file({"w" * length: torch.ones(2)}, str(path))
        if path.read_bytes()[:1] == b"\x80":  # also the first byte of a torch pickle
            break
    assert path.read_bytes()[:1] == b"\x80"
    assert torch.equal(load_state_dict(path)["w" * length], torch.ones(2))


@pytest.mark.parametrize(
    "state_dict, error, match",
    [
        ({"w": 1}, TypeError, r"state_dict must map str names to tensors, got \[\('w', 'int'\)\]"),  # 'detach'
        ([("w", torch.zeros(1))], TypeError, "state_dict must be a mapping of names to tensors, got list"),
        ({1: torch.zeros(1)}, TypeError, "state_dict must map str names to tensors"),
        ({"w": torch.zeros(2, device="meta")}, ValueError, "expected dense tensors with data, got meta or sparse"),
        ({"w": torch.eye(2).to_sparse()}, ValueError, "expected dense tensors with data, got meta or sparse"),
    ],
)
def test_save_state_dict_checks_what_it_writes_first(tmp_path, state_dict, error, match):
    with pytest.raises(error, match=match):
        save_state_dict(state_dict, tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_save_state_dict_and_export_refuse_a_directory_path_before_writing(tmp_path):
    """It wrote the whole file, then failed renaming the temporary file onto the directory."""
    from torch import nn

    from torchflava.training.checkpointing import export_model

    (tmp_path / "w.safetensors").mkdir()
    with pytest.raises(ValueError, match=r"path must be a file path, got .*w.safetensors' \(a directory\)"):
        save_state_dict({"w": torch.zeros(1)}, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=r"path must be a .safetensors file path"):
        export_model(nn.Linear(2, 2), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=r"path must be a .safetensors file path, got .*model.pt"):  # a torch file
        export_model(nn.Linear(2, 2), tmp_path / "model.pt")
    with pytest.raises(TypeError, match="model must be an nn.Module, got dict"):  # unhashable type: 'dict'
        export_model({"w": torch.zeros(1)}, tmp_path / "x.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_atomic_write_removes_a_directory_its_writer_made_and_keeps_the_writers_error(tmp_path):
    """unlink raised IsADirectoryError, hiding the writer's error and leaving the directory, which then
    made every later write to the path fail."""
    from torchflava.utils.checkpoint import atomic_write

    def writer(tmp):
        os.mkdir(tmp)
        raise RuntimeError("the writer's own error")

    with pytest.raises(RuntimeError, match="the writer's own error"):
        atomic_write(tmp_path / "out.bin", writer)
    assert list(tmp_path.iterdir()) == []
    atomic_write(tmp_path / "out.bin", lambda tmp: Path(tmp).write_bytes(b"x"))
    assert (tmp_path / "out.bin").read_bytes() == b"x"


def test_a_damaged_torch_file_is_refused_naming_its_entry(tmp_path):
    """Found by an adversarial review: torch.load read 200 zeroed bytes as weights (values of 3e32)."""
    torch.save({"w": torch.randn(1000, 1000)}, tmp_path / "ok.pt")
    data = bytearray((tmp_path / "ok.pt").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 200] = bytes(200)
    (tmp_path / "bad.pt").write_bytes(data)
    with pytest.raises(ValueError, match=r"bad.pt is damaged: its entry 'ok/data/0' fails its CRC check"):
        load_state_dict(tmp_path / "bad.pt")
    assert load_state_dict(tmp_path / "ok.pt")["w"].shape == (1000, 1000)


def test_a_blocked_global_is_named_without_the_advice_to_unpickle(tmp_path):
    """A module-level callable (os.system here) gave torch's advice to re-run with weights_only=False."""

    class CallsSystem:
        def __reduce__(self):
            return os.system, ("true",)

    torch.save({"w": torch.zeros(1), "x": CallsSystem()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError) as caught:
        load_state_dict(tmp_path / "evil.pt")
    message = str(caught.value)
    assert "unsupported GLOBAL posix.system" in message and "weights_only` set to `False" not in message


# ------------------------------------------------------------------------- FIFOs, NaN, truncated files

CHECKPOINT_FILE = "a checkpoint file (safetensors, torch or *.index.json)"


@pytest.mark.parametrize(
    "name", ["w.safetensors", "w.pt", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]
)
def test_a_fifo_is_refused_without_being_opened(tmp_path, name):
    """A FIFO given as the weights (or found in the checkpoint's directory) blocked the read forever."""
    with fifo_that_cannot_hang(tmp_path / name) as fifo:
        given = tmp_path if name.startswith(("model.", "pytorch_model")) else fifo
        expected = f"{fifo} is a FIFO (named pipe), not a regular file: expected {CHECKPOINT_FILE}"
        for load in (load_state_dict, peek_state_dict):
            with pytest.raises(ValueError) as caught:
                load(given)
            assert str(caught.value) == expected


def test_a_fifo_shard_or_config_and_a_device_are_refused_without_being_opened(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "part-1.safetensors"}}))
    with fifo_that_cannot_hang(tmp_path / "part-1.safetensors") as shard:
        with pytest.raises(ValueError) as caught:
            load_state_dict(tmp_path)
        expected = f"{shard} is a FIFO (named pipe), not a regular file: expected a shard of the checkpoint {index}"
        assert str(caught.value) == expected
    with fifo_that_cannot_hang(tmp_path / "config.json") as config:
        with pytest.raises(ValueError) as caught:
            checkpoint.read_json_object(config)
        assert str(caught.value) == f"{config} is a FIFO (named pipe), not a regular file: expected a JSON file"
    with pytest.raises(ValueError) as caught:  # was read as an empty file: "neither a safetensors file nor..."
        load_state_dict("/dev/null")
    assert str(caught.value) == f"/dev/null is a character device, not a regular file: expected {CHECKPOINT_FILE}"
    with pytest.raises(ValueError, match=rf"^{tmp_path} is a directory, not a regular file: expected a JSON file$"):
        checkpoint.read_json_object(tmp_path)  # was FileNotFoundError: "... not found"


def test_every_weights_loader_refuses_a_fifo_before_building_anything(tmp_path):
    """flava_model, clip_model (a directory holding a FIFO model.safetensors) and the codebook's loader
    (the FLAVA recipe's codebook.pretrained) all waited forever on the FIFO."""
    from torchflava.models import clip_model, flava_model
    from torchflava.models.flava.convert_codebook import load_codebook_weights
    from torchflava.modules.codebook import dalle_encoder

    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with (
        fifo_that_cannot_hang(tmp_path / "w.safetensors") as fifo,
        fifo_that_cannot_hang(tmp_path / "clip" / "model.safetensors") as clip_fifo,
    ):
        calls = [
            (fifo, lambda: flava_model(pretrained=fifo)),
            (clip_fifo, lambda: clip_model(pretrained=tmp_path / "clip")),
            (fifo, lambda: load_codebook_weights(dalle_encoder(hidden_dim=4, blocks_per_group=1, vocab_size=16), fifo)),
        ]
        for path, call in calls:
            with pytest.raises(ValueError) as caught:
                call()
            assert str(caught.value) == f"{path} is a FIFO (named pipe), not a regular file: expected {CHECKPOINT_FILE}"
    # a FLAVA directory whose config.json is a FIFO: it was passed over, and the model built with defaults
    (tmp_path / "flava").mkdir()
    save_state_dict({"w": torch.zeros(1)}, tmp_path / "flava" / "model.safetensors")
    with fifo_that_cannot_hang(tmp_path / "flava" / "config.json") as config:
        with pytest.raises(
            ValueError, match=f"^{re.escape(str(config))} is a FIFO \\(named pipe\\), not a regular file"
        ):
            flava_model(pretrained=tmp_path / "flava")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn])
def test_weights_with_nan_or_infinity_are_refused_naming_the_file_and_tensors(tmp_path, suffix, dtype):
    """A tensor of NaN loaded without a word: the model's outputs were all NaN."""
    tensors = {
        "a.weight": torch.randn(3, 4),
        "b.weight": torch.randn(5),
        "c.ids": torch.arange(4),
        "d.bias": torch.ones(2),
    }
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    path = tmp_path / f"w{suffix}"
    save_state_dict(tensors, path)
    assert load_state_dict(path).keys() == tensors.keys()
    tensors["b.weight"][4] = float("nan")
    tensors["d.bias"][0] = float("inf") if dtype != torch.float8_e4m3fn else float("nan")  # (e4m3fn has no inf)
    save_state_dict(tensors, path)
    with pytest.raises(ValueError) as caught:
        load_state_dict(path)
    assert str(caught.value) == (
        f"{path}: expected finite weights, got NaN or +inf values in 2 tensors, first ['b.weight', 'd.bias'] "
        "(a damaged or diverged checkpoint)"
    )
    assert peek_state_dict(path)["b.weight"].shape == (5,)  # names and shapes only: no data read
    # -inf alone is how an attention mask blocks a position (some CLIP checkpoints hold one): loaded
    masked = {"attn_mask": torch.full((3, 3), float("-inf")).triu(1), "w": torch.ones(2)}
    save_state_dict(masked, path)
    assert torch.equal(load_state_dict(path)["attn_mask"], masked["attn_mask"])


def test_a_shard_with_an_infinity_is_named(tmp_path):
    save_file({"a": torch.zeros(2)}, str(tmp_path / "part-1.safetensors"))
    save_file({"b": torch.tensor([1.0, float("inf")])}, str(tmp_path / "part-2.safetensors"))
    weight_map = {"a": "part-1.safetensors", "b": "part-2.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError) as caught:
        load_state_dict(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'part-2.safetensors'}: expected finite weights, got NaN or +inf values in 1 tensors, "
        "first ['b'] (a damaged or diverged checkpoint)"
    )


@pytest.mark.parametrize("zip_format", [True, False])
@pytest.mark.parametrize("keep", [0.5, 0.99, 100])
def test_a_truncated_torch_file_is_named_as_truncated(tmp_path, zip_format, keep):
    """A zip-format file cut short gave "... : [Errno 22] Invalid argument"."""
    torch.save({"w": torch.randn(100, 100)}, tmp_path / "ok.pt", _use_new_zipfile_serialization=zip_format)
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    expected = (
        f"{tmp_path / 'cut.pt'} is truncated or damaged: not a valid torch checkpoint (its zip archive cannot be "
        "read; download or copy it again)"
        if zip_format
        else f"{tmp_path / 'cut.pt'} is truncated: not a valid torch checkpoint (download or copy it again)"
    )
    for load in (load_state_dict, peek_state_dict):
        with pytest.raises(ValueError) as caught:
            load(tmp_path / "cut.pt")
        assert str(caught.value) == expected


@pytest.mark.parametrize("save", ["safetensors", "torch"])
def test_peek_reads_the_data_of_one_element_tensors_only_when_asked(tmp_path, save):
    tensors = {"w": torch.randn(3, 2), "size": torch.tensor(224), "scale": torch.tensor([2.5])}
    save_file(tensors, str(tmp_path / "f")) if save == "safetensors" else torch.save(tensors, tmp_path / "f")
    assert all(value.is_meta for value in peek_state_dict(tmp_path / "f").values())
    peeked = peek_state_dict(tmp_path / "f", scalars=True)
    assert peeked["w"].is_meta and peeked["w"].shape == (3, 2)
    assert peeked["size"].item() == 224 and peeked["scale"].tolist() == [2.5] and not peeked["size"].is_meta


@pytest.mark.parametrize("read", [load_state_dict, peek_state_dict])
def test_an_index_and_its_shards_must_agree_on_every_tensor(tmp_path, read):
    save_file({"a": torch.ones(2)}, str(tmp_path / "s1.safetensors"))
    save_file({"a": torch.full((2,), 7.0), "b": torch.ones(3)}, str(tmp_path / "s2.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}))
    with pytest.raises(ValueError, match=r"expected each tensor in one shard, got 'a' in both s1.safetensors and s2"):
        read(tmp_path)  # (merging kept s2's 'a', silently, where the index names s1's)
    torch.save({"a": torch.ones(2)}, tmp_path / "s1.bin")  # (a torch file keeps every name: one absent is lost)
    (tmp_path / "s1.safetensors").unlink()
    index.write_text(json.dumps({"weight_map": {"a": "s1.bin", "gone": "s1.bin"}}))
    with pytest.raises(ValueError, match=r"weight_map puts 1 tensor\(s\) in s1.bin, which does not hold them"):
        read(index)


@pytest.mark.parametrize("read", [load_state_dict, peek_state_dict])
def test_a_converted_safetensors_shard_lacking_a_tied_name_its_index_lists_reads(tmp_path, read):
    """Found by an adversarial review: safetensors' convert (the Hub's conversion bot) drops a tied weight's
    second name from each shard (safetensors stores no aliases) and writes the .bin index's names over the
    shards: such a checkpoint, which transformers loads, was refused ("weight_map puts 1 tensor(s) in ...")."""
    embedding = torch.randn(5, 3)
    shard = {"embeddings.weight": embedding, "head.bias": torch.zeros(5)}  # head.weight: tied, dropped
    save_file(shard, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"layer.weight": torch.ones(2)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = dict.fromkeys(["embeddings.weight", "head.weight", "head.bias"], "model-00001-of-00002.safetensors")
    weight_map["layer.weight"] = "model-00002-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    tensors = read(tmp_path)
    assert sorted(tensors) == ["embeddings.weight", "head.bias", "layer.weight"]
    if read is load_state_dict:
        assert torch.equal(tensors["embeddings.weight"], embedding)


@pytest.mark.parametrize("name", ["model.safetensors.index.json", "config.json"])
def test_json_nested_too_deeply_is_a_value_error_naming_the_file(tmp_path, name):
    (tmp_path / name).write_text("[" * 100_000 + "]" * 100_000)  # json.loads: RecursionError
    read = load_state_dict if name.endswith("index.json") else checkpoint.read_json_object
    with pytest.raises(ValueError, match=f"{name} is not (a )?JSON"):
        read(tmp_path / name)


@pytest.mark.parametrize("read", [load_state_dict, peek_state_dict])
def test_a_zip_bomb_is_refused_before_torch_allocates_its_entries(tmp_path, read):
    import zipfile

    torch.save({"w": torch.zeros(4)}, tmp_path / "w.pt")
    with zipfile.ZipFile(tmp_path / "w.pt") as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    data = next(name for name in entries if name.endswith("data/0"))
    entries[data] = bytes(64 << 20)  # deflates to ~64 KB; torch.load would allocate all of it
    with zipfile.ZipFile(tmp_path / "bomb.pt", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    with pytest.raises(ValueError, match=r"bomb.pt: expected a torch checkpoint .* entries expand to \d+ bytes from"):
        read(tmp_path / "bomb.pt")


def test_urls_hiding_control_characters_in_the_file_name_are_refused():
    with pytest.raises(ValueError, match="must not hide control characters"):
        load_state_dict("http://127.0.0.1:9/model%00.safetensors")


@pytest.mark.parametrize("read", [load_state_dict, peek_state_dict])
@pytest.mark.parametrize("kind", ["expanded", "many names"])
def test_tensors_spanning_far_more_than_the_file_are_refused(tmp_path, read, kind):
    base = torch.zeros(2**16)
    if kind == "expanded":  # 1.6 KB on disk, 1 GiB to scan (the finiteness check) or copy
        state = {"w": torch.zeros(1).expand(2**14, 2**14)}
    else:  # one 256 KiB storage under 64 names: each would be copied (tied tensors become copies)
        state = {f"w{i}": base for i in range(64)}
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"w.pt: expected tensors the file holds, got \d+ bytes of tensors from a"):
        read(tmp_path / "w.pt")
    # Hugging Face's position_ids (stride 0 on a dim of size 1: nothing repeated) and tied weights still load
    ok = {"position_ids": torch.arange(64).expand(1, -1), "tied.a": base, "tied.b": base}
    torch.save(ok, tmp_path / "ok.pt")
    assert {key: value.shape for key, value in read(tmp_path / "ok.pt").items()} == {k: v.shape for k, v in ok.items()}


class _Endless(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a body of no announced length: 1 MiB chunks until 48 MiB, or the reader leaves."""

    sent: list = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Connection", "close")  # (no Content-Length: the body ends when the connection does)
        self.end_headers()
        try:
            for _ in range(48):
                self.wfile.write(bytes(1 << 20))
                self.sent.append(1 << 20)
        except OSError:
            pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # (the reader leaving mid-body: expected here)
        pass


def test_a_download_that_would_fill_the_disk_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    """A body larger than the disk, or one that never ends, was written until the disk was full (the disk
    the run's own checkpoints go to); only then did the download fail."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FVCORE_CACHE", str(cache))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    budget = 8 << 20  # what the disk holds beyond the space a download must leave
    monkeypatch.setattr(checkpoint, "MIN_FREE_BYTES", 1 << 30)
    monkeypatch.setattr(checkpoint, "_SPACE_CHECK_BYTES", 1 << 20)
    written = lambda: sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())  # noqa: E731
    monkeypatch.setattr(checkpoint, "_free_bytes", lambda directory: (1 << 30) + budget - written())
    server = _QuietServer(("127.0.0.1", 0), _Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/model.safetensors"
    try:
        with pytest.raises(ConnectionError) as caught:
            load_state_dict(url)
    finally:
        server.shutdown()
        server.server_close()
    assert str(caught.value).startswith(
        f"checkpoint: could not download {url}: the download would leave less than 1073741824 bytes (MIN_FREE_BYTES) "
        "free on the disk of "
    )
    assert sum(_Endless.sent) < 24 << 20 and written() == 0  # stopped near the budget; no partial file kept
    # An announced length that does not fit is refused before the first byte is written.
    (tmp_path / "served").mkdir()
    save_file({"w": torch.zeros(1 << 20)}, str(tmp_path / "served" / "model.safetensors"))  # 4 MiB
    budget = 2 << 20
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Files, directory=str(tmp_path / "served"))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/model.safetensors"
    try:
        size = (tmp_path / "served" / "model.safetensors").stat().st_size
        with pytest.raises(ConnectionError, match=rf"\(\d+ free, {size} more announced\)$"):
            load_state_dict(url)
        assert written() == 0
        budget = 64 << 20
        assert torch.equal(load_state_dict(url)["w"], torch.zeros(1 << 20))  # with room, as before
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------- hostile servers


def _answer(handler, body: bytes, status: int = 200, headers: dict | None = None, gap_s: float = 0.0) -> None:
    """Write a raw HTTP/1.0 answer: status line, ``headers`` (Content-Length of ``body`` unless given),
    then ``body``, a ``gap_s`` pause before each of its 100-byte pieces when ``gap_s`` is set."""
    headers = {"Content-Length": str(len(body)), **(headers or {})}
    lines = [f"HTTP/1.0 {status} Answer"] + [f"{key}: {value}" for key, value in headers.items()]
    handler.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if handler.command == "HEAD":
        return
    pieces = [body[i : i + 100] for i in range(0, len(body), 100)] if gap_s else [body]
    for piece in pieces:
        time.sleep(gap_s)
        handler.wfile.write(piece)
        handler.wfile.flush()


def _trickle(handler, data: bytes, limit_s: float = 3.0) -> None:
    """Write ``data`` a byte every 20 ms (for ``limit_s`` at most, so that a test that fails still ends)."""
    for byte in data[: int(limit_s / 0.02)]:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(0.02)


def _cached_files(cache: Path) -> list[Path]:
    return [path for path in cache.rglob("*") if path.is_file()] if cache.exists() else []


@pytest.fixture
def stall_fast(tmp_path, monkeypatch):
    """Downloads into ``tmp_path / "cache"`` that stall below 1000 bytes/s over 0.2 s."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(checkpoint, "DOWNLOAD_STALL_S", 0.2)
    monkeypatch.setattr(checkpoint, "DOWNLOAD_MIN_BYTES_PER_S", 1000)
    return tmp_path / "cache"


def test_a_body_that_trickles_stalls_and_nothing_of_it_is_kept(stall_fast, monkeypatch):
    """A server that sent a byte now and then never let the socket timeout (a silent gap) fire: the
    download could hang for days. A slow body that keeps up the least rate still downloads."""
    body = bytes(range(256)) * 8  # 2048 bytes

    def answer(handler):
        if handler.path.startswith("/trickle"):
            handler.wfile.write(f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            _trickle(handler, body)
        elif handler.path.startswith("/short"):  # 20 bytes in 0.4 s: stalled, by the rule
            handler.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Length: 20\r\n\r\n")
            _trickle(handler, body[:20])
        else:  # 5000 bytes/s, over two stall windows: slow, not stalled
            _answer(handler, body, gap_s=0.02)

    with scripted_server(answer, monkeypatch) as base:
        url = f"{base}/trickle/model.safetensors"
        started = time.monotonic()
        with pytest.raises(ConnectionError) as caught:
            checkpoint.local_checkpoint(url)
        assert time.monotonic() - started < 1
        assert re.fullmatch(
            rf"checkpoint: could not download {url}: the download stalled: \d+ bytes in 0\.2\d* s, fewer than "
            r"1000 bytes/s \(DOWNLOAD_MIN_BYTES_PER_S\) over 0\.2 s \(DOWNLOAD_STALL_S\)",
            str(caught.value),
        )
        assert _cached_files(stall_fast) == []  # no partial file, no temporary
        started = time.monotonic()
        assert checkpoint.local_checkpoint(f"{base}/slow/model.safetensors").read_bytes() == body
        assert time.monotonic() - started > 0.3
        # the rule switched off: the trickle is waited for (its thread once raised on an infinite window)
        monkeypatch.setattr(checkpoint, "DOWNLOAD_STALL_S", math.inf)
        raised = []
        monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
        assert checkpoint.local_checkpoint(f"{base}/short/model.safetensors").read_bytes() == body[:20]
        assert raised == []


def test_headers_that_trickle_stall_the_head_and_the_get(stall_fast, monkeypatch):
    """The headers had no deadline either: a HEAD revalidating a copy, or a GET, whose answer trickled
    in hung; now the answer must begin within DOWNLOAD_STALL_S (a copy downloaded before stands in)."""
    body, trickling = b"weights" * 100, []
    served = email.utils.formatdate(time.time(), usegmt=True)
    modified = email.utils.formatdate(time.time() - 100, usegmt=True)

    def answer(handler):
        if trickling:
            _trickle(handler, b"HTTP/1.0 200 OK\r\n" + b"X-Padding: x\r\n" * 20)
        else:
            _answer(handler, body, headers={"Last-Modified": modified, "Date": served})

    with scripted_server(answer, monkeypatch) as base:
        url = f"{base}/model.safetensors"
        local = checkpoint.local_checkpoint(url)
        trickling.append(True)
        started = time.monotonic()
        with pytest.warns(UserWarning) as warned:
            assert checkpoint.local_checkpoint(url) == local and local.read_bytes() == body
        assert time.monotonic() - started < 1
        assert [str(w.message) for w in warned] == [
            f"checkpoint: {url} cannot be reached (the server did not answer within 0.2 s (DOWNLOAD_STALL_S)); "
            "using the copy downloaded before"
        ]
        shutil.rmtree(stall_fast)
        with pytest.raises(ConnectionError) as caught:
            checkpoint.local_checkpoint(url)
        assert str(caught.value) == (
            f"checkpoint: could not download {url}: the server did not answer within 0.2 s (DOWNLOAD_STALL_S)"
        )
        assert time.monotonic() - started < 2 and _cached_files(stall_fast) == []


def test_a_head_answered_with_another_status_than_200_does_not_vouch_for_the_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    bodies = [b"old weights", b"new weights"]
    served = email.utils.formatdate(time.time(), usegmt=True)
    modified = email.utils.formatdate(time.time() - 100, usegmt=True)

    def answer(handler):  # (the same length and date for both: only the HEAD's status tells)
        status = 204 if handler.command == "HEAD" else 200
        _answer(handler, bodies[0], status, {"Last-Modified": modified, "Date": served})

    with scripted_server(answer, monkeypatch) as base:
        url = f"{base}/model.safetensors"
        assert checkpoint.local_checkpoint(url).read_bytes() == b"old weights"
        bodies.pop(0)
        assert checkpoint.local_checkpoint(url).read_bytes() == b"new weights"


def _redirect(handler, location: str) -> None:
    _answer(handler, b"", 302, {"Location": location})


def test_redirects_lead_to_http_urls_only_and_end(tmp_path, monkeypatch):
    """urllib followed a redirect to ftp:// (a checkpoint fetched from anywhere), and its redirect-loop
    error spanned three lines."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))

    def answer(handler):
        kind, _, rest = handler.path.strip("/").partition("/")
        if kind == "ftp":
            _redirect(handler, "ftp://127.0.0.1:9/model.safetensors")
        elif kind == "file":
            _redirect(handler, "file:///etc/hostname")
        elif kind == "hops":  # /hops/N/...: N more redirects, then the file
            hops, _, name = rest.partition("/")
            if int(hops):
                _redirect(handler, f"/hops/{int(hops) - 1}/{name}")
            else:
                _answer(handler, b"weights")

    with scripted_server(answer, monkeypatch) as base:
        with pytest.raises(ConnectionError) as caught:
            checkpoint.local_checkpoint(f"{base}/ftp/model.safetensors")
        assert str(caught.value) == (
            f"checkpoint: could not download {base}/ftp/model.safetensors: the server redirected to a 'ftp' URL; "
            "checkpoints are downloaded over http(s) only"
        )
        with pytest.raises(ConnectionError) as caught:
            checkpoint.local_checkpoint(f"{base}/file/model.safetensors")
        assert str(caught.value) == (
            f"checkpoint: could not download {base}/file/model.safetensors: HTTP Error 302: Answer - Redirection "
            "to url 'file:///etc/hostname' is not allowed"
        )
        assert checkpoint.local_checkpoint(f"{base}/hops/10/model.safetensors").read_bytes() == b"weights"
        with pytest.raises(ConnectionError) as caught:
            checkpoint.local_checkpoint(f"{base}/hops/11/model.safetensors")  # urllib's limit: 10 redirects
        assert str(caught.value) == (
            f"checkpoint: could not download {base}/hops/11/model.safetensors: HTTP Error 302: The HTTP server "
            "returned a redirect error that would lead to an infinite loop. The last 30x error message was: Answer"
        )
    # only the download that came through redirects within the limit is kept
    assert sorted(p.name for p in _cached_files(tmp_path / "cache")) == ["model.safetensors", "validators.json"]


def test_a_redirect_from_https_down_to_http_is_refused():
    """No https server here: the redirect handler the downloads use is given the redirect itself."""
    redirects, secure = checkpoint._Redirects(), urllib.request.Request("https://host/model.safetensors")
    answer = io.BytesIO(b"")
    with pytest.raises(ConnectionError, match=r"^the server redirected from https down to http \(unencrypted\)"):
        redirects.redirect_request(secure, answer, 302, "Found", {}, "http://host/model.safetensors")
    assert answer.closed
    for allowed, target in (
        (secure, "https://cdn/x.safetensors"),
        (urllib.request.Request("http://h/m"), "http://cdn/x"),
    ):
        assert redirects.redirect_request(allowed, io.BytesIO(), 302, "Found", {}, target).full_url == target


@pytest.mark.parametrize(
    "status, headers, refusal",
    [
        (
            200,
            {"Content-Encoding": "gzip"},
            "the server sent the file with Content-Encoding 'gzip', expected it as it is (identity)",
        ),
        (206, {"Content-Range": "bytes 0-9/100"}, "the server answered 206 Answer, expected 200 with the whole file"),
        (200, {"Content-Length": "-1"}, "the server announced a Content-Length of '-1', not a number of bytes"),
        (200, {"Content-Length": "\u00b2"}, "the server announced a Content-Length of '\u00b2', not a number of bytes"),
        (
            200,
            {"Transfer-Encoding": "gzip, chunked"},
            "the server sent the file with Transfer-Encoding 'gzip, chunked', expected chunked or none",
        ),
    ],
)
def test_an_answer_that_is_not_the_whole_file_as_it_is_is_refused(tmp_path, monkeypatch, status, headers, refusal):
    """urllib decodes no Content-Encoding: a gzip body was saved as the checkpoint; a 206 part of the file
    was saved as the file; a Content-Length of '²' raised a bare ValueError naming no URL, one of '-1' let a
    body of any length be written unchecked; a Transfer-Encoding http.client does not decode was saved raw."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    body = gzip.compress(b"weights") if "Content-Encoding" in headers else b"weights"

    def answer(handler):
        if "identity" in handler.path:
            _answer(handler, b"weights", 200, {"Content-Encoding": "identity"})
        else:
            _answer(handler, body, status, headers)

    with scripted_server(answer, monkeypatch) as base:
        url = f"{base}/model.safetensors"
        with pytest.raises(ConnectionError) as caught:
            checkpoint.local_checkpoint(url)
        assert str(caught.value) == f"checkpoint: could not download {url}: {refusal}"
        assert _cached_files(tmp_path / "cache") == []
        assert checkpoint.local_checkpoint(f"{base}/identity/model.safetensors").read_bytes() == b"weights"


@pytest.mark.parametrize("etag", ["v1\nX-Injected: 1", "\u0100", 5, None])
def test_a_damaged_saved_etag_is_not_sent_back_and_the_file_is_downloaded_again(tmp_path, monkeypatch, etag):
    """A saved ETag with a newline or a character beyond latin-1 (a damaged validators.json) made
    http.client raise a bare ValueError or UnicodeEncodeError naming no URL, on every later load."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    asked = []  # the If-None-Match of every request

    def answer(handler):
        asked.append(handler.headers.get("If-None-Match"))
        _answer(handler, b"weights", headers={"ETag": '"v1"'})

    with scripted_server(answer, monkeypatch) as base:
        url = f"{base}/model.safetensors"
        local = checkpoint.local_checkpoint(url)
        assert checkpoint.local_checkpoint(url) == local and asked == [None, '"v1"']  # sent back as saved
        validators = local.parent.parent / "validators.json"
        validators.write_text(json.dumps({**json.loads(validators.read_text()), "etag": etag}))
        assert checkpoint.local_checkpoint(url).read_bytes() == b"weights"
    assert asked == [None, '"v1"', None]


@pytest.mark.parametrize("read", [load_state_dict, peek_state_dict])
def test_a_shard_is_told_by_the_index_names_it_can_have_without_listing_its_folder(tmp_path, read, monkeypatch):
    """Every load or peek of a file globbed its folder for *.index.json: ~20 ms a call beside 20,000 images
    (measured), more on a network filesystem. The index is found by the shard's own name pattern
    ("weights-00002-of-00002.safetensors": "weights.safetensors.index.json") and Hugging Face's names."""
    save_file({"a": torch.ones(2)}, str(tmp_path / "weights-00001-of-00002.safetensors"))
    save_file({"c": torch.ones(1)}, str(tmp_path / "weights-00002-of-00002.safetensors"))
    save_file({"b": torch.ones(3)}, str(tmp_path / "lone.safetensors"))
    shards = {"a": "weights-00001-of-00002.safetensors", "c": "weights-00002-of-00002.safetensors"}
    (tmp_path / "weights.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))

    def listed(*args, **kwargs):
        raise AssertionError(f"the folder was listed: {args}")

    monkeypatch.setattr(os, "scandir", listed)
    monkeypatch.setattr(os, "listdir", listed)
    for shard in shards.values():
        with pytest.raises(ValueError, match=rf"{shard} is one of the 2 shards of the checkpoint indexed by .*"):
            read(tmp_path / shard)
    assert read(tmp_path / "lone.safetensors")["b"].shape == (3,)


@pytest.mark.parametrize("read", [load_state_dict, peek_state_dict])
def test_the_only_file_an_index_names_is_read_whole_and_a_shard_of_two_refused(tmp_path, read):
    """An index of a single shard (as some tools write for an unsharded checkpoint) names the whole checkpoint:
    that file was refused as 'one of the 1 shards', though reading it alone lacks nothing."""
    save_file({"a": torch.ones(2), "b": torch.full((3,), 2.0)}, str(tmp_path / "model-00001-of-00001.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"}})
    )
    found = read(tmp_path / "model-00001-of-00001.safetensors")
    assert sorted(found) == ["a", "b"] and found["b"].shape == (3,)
    save_file({"c": torch.ones(1)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index.write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors", "c": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(ValueError, match=r"is one of the 2 shards of the checkpoint indexed by .*, got one shard$"):
        read(tmp_path / "model-00002-of-00002.safetensors")


def test_written_directory_is_the_one_set_aside_only_where_a_kill_left_nothing_in_its_place(tmp_path):
    """What readers of an export take (staged_directory's renames: the previous aside, then the new one in)."""
    from torchflava.utils.checkpoint import set_aside, staged_directory, written_directory

    final = tmp_path / "model"
    assert set_aside(final) == tmp_path / ".model.previous" and written_directory(final) == final  # never written
    with staged_directory(final) as staging:
        (staging / "a.json").write_text("{}")
    assert written_directory(final) == final
    final.rename(set_aside(final))  # killed between the two renames
    assert written_directory(final) == tmp_path / ".model.previous"
    (tmp_path / "model").mkdir()  # the new one renamed in, the previous one not yet deleted: the new one
    assert written_directory(str(final)) == final
