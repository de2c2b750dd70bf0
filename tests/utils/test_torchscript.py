"""The weights of TorchScript archives (OpenAI's CLIP .pt), read without running any of their code: the
state dict ``torch.jit.load`` gives for archives the tests script themselves, and hostile archives refused."""

from pathlib import Path
import pickle
import zipfile

import open_clip
import pytest
import torch
from torch import Tensor, nn

from tests.models.clip.test_convert_weights import OPEN_CLIP_CFG, _perturb
from torchflava.utils.checkpoint import load_state_dict, peek_state_dict
from torchflava.utils.torchscript import is_torchscript, torchscript_state_dict

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")


def _assert_identical(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """The same names in the same order, each tensor of the same dtype, shape, strides and bits."""
    assert list(actual) == list(expected)
    bits = lambda value: value.contiguous().reshape(-1).view(torch.uint8)  # noqa: E731 (NaN equals NaN)
    for key, value in expected.items():
        assert (actual[key].dtype, actual[key].shape, actual[key].stride()) == (
            value.dtype,
            value.shape,
            value.stride(),
        )
        assert torch.equal(bits(actual[key]), bits(value)), key


@pytest.fixture(scope="module")
def scripted_clip(tmp_path_factory) -> Path:
    """A small open_clip CLIP, scripted in fp16 as OpenAI's .pt files are, saved with torch.jit.save."""
    torch.manual_seed(0)
    model = _perturb(open_clip.model.CLIP(**OPEN_CLIP_CFG)).half()
    path = tmp_path_factory.mktemp("jit") / "ViT-tiny.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    return path


def test_a_scripted_clip_reads_as_torch_jit_load_gives_its_state_dict(scripted_clip):
    expected = torch.jit.load(str(scripted_clip)).state_dict()
    assert is_torchscript(str(scripted_clip)) and expected["visual.proj"].dtype == torch.float16
    _assert_identical(torchscript_state_dict(str(scripted_clip)), expected)
    _assert_identical(load_state_dict(scripted_clip), expected)  # (was refused: "it is a TorchScript archive")
    peeked = peek_state_dict(scripted_clip)
    assert {k: (v.shape, v.dtype) for k, v in peeked.items()} == {k: (v.shape, v.dtype) for k, v in expected.items()}


def test_a_mapped_read_views_the_file_and_reads_no_tensor_entry(scripted_clip, monkeypatch):
    """A peek (clip_model peeks twice before it loads) read every storage of the archive whole: three
    full reads of a ViT-L/14 file. Mapped, the tensors are views of the file, equal to the ones read."""
    expected = torchscript_state_dict(str(scripted_clip))
    read, entries = zipfile.ZipFile.read, []

    def recorded(self, name, *args, **kwargs):
        entries.append(name if isinstance(name, str) else name.filename)
        return read(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "read", recorded)
    _assert_identical(torchscript_state_dict(str(scripted_clip), mmap=True), expected)
    peeked = peek_state_dict(scripted_clip)
    assert [(k, v.shape, v.dtype) for k, v in peeked.items()] == [(k, v.shape, v.dtype) for k, v in expected.items()]
    assert entries and not [name for name in entries if "/data/" in name]
    torchscript_state_dict(str(scripted_clip))  # (the reads the record would show)
    assert len([name for name in entries if "/data/" in name]) == len(
        {v.untyped_storage().data_ptr() for v in expected.values()}
    )


class _Parts(nn.Module):
    """Parameters, buffers (an int one), a None bias, a plain tensor attribute and a module held twice."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(3)
        self.linear = nn.Linear(3, 2, bias=False)
        self.again = self.linear
        self.scale = nn.Parameter(torch.randn(2, 3)[:, 1])  # a view at an offset, strided
        self.register_buffer("table", torch.arange(6.0).reshape(2, 3).t())  # transposed: strides (1, 3)
        self.plain = torch.ones(4)  # an attribute, not a buffer: no state dict entry

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.norm(x)) * self.scale + self.plain.sum()


def test_buffers_none_parameters_views_and_attributes_read_as_torch_jit_load_gives_them(tmp_path):
    path = tmp_path / "parts.pt"
    torch.jit.save(torch.jit.script(_Parts()), str(path))
    expected = torch.jit.load(str(path)).state_dict()
    assert "plain" not in expected and "norm.num_batches_tracked" in expected and "linear.bias" not in expected
    actual = torchscript_state_dict(str(path))
    _assert_identical(actual, expected)
    assert actual["table"].stride() == (1, 3)

    # Without code/ (which declares parameters and buffers): every tensor attribute, the plain one too
    bare = tmp_path / "bare.pt"
    _rewrite(path, bare, drop=lambda name: "/code/" in name)
    assert list(torchscript_state_dict(str(bare))) == ["scale", "table", "plain", *list(expected)[2:]]


def test_a_plain_torch_save_file_is_no_torchscript_archive(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pt")
    (tmp_path / "text.pt").write_text("not a zip")
    assert not is_torchscript(str(tmp_path / "w.pt")) and not is_torchscript(str(tmp_path / "text.pt"))


def _rewrite(source: Path, target: Path, *, drop=lambda name: False, replace=None) -> None:
    """``source``'s entries into a new zip at ``target``, but those ``drop`` names; ``replace``: name -> bytes."""
    replace = replace or {}
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            if not drop(info.filename):
                new.writestr(info.filename, replace.get(info.filename, old.read(info)))


# Pickles written opcode by opcode (protocol 2), as a hostile archive's data.pkl would be.
def _value(value) -> bytes:
    """The opcodes pushing a str, an int or a tuple of them (a whole pickle's, less PROTO and STOP)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _global(qualified: str) -> bytes:
    module, name = qualified.rsplit(".", 1)
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tensor(key="0", numel=4, size=(2, 2), stride=(2, 1), offset=0, storage="torch.HalfStorage") -> bytes:
    """A tensor as TorchScript pickles it: _rebuild_tensor_v2 over a persistent ('storage', ...) id."""
    pid = b"(" + _value("storage") + _global(storage) + _value(key) + _value("cpu") + _value(numel) + b"tQ"
    hooks = _global("collections.OrderedDict") + b")R"
    args = b"(" + pid + _value(offset) + _value(size) + _value(stride) + b"\x89" + hooks + b"t"
    return _global("torch._utils._rebuild_tensor_v2") + args + b"R"


def _module(attributes: dict[str, bytes], cls: str = "__torch__.model.CLIP") -> bytes:
    """A TorchScript module object: its class, NEWOBJ, and its attributes BUILD into it."""
    items = b"".join(_value(name) + value for name, value in attributes.items())
    return _global(cls) + b")\x81}(" + items + b"ub"


def _archive(path: Path, data_pkl: bytes, entries: dict[str, bytes] = None, compress: bool = False) -> Path:
    """A TorchScript archive's layout: top/data.pkl, top/data/<key>, top/constants.pkl and top/version."""
    entries = {"data/0": torch.arange(4, dtype=torch.float16).numpy().tobytes(), **(entries or {})}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("top/data.pkl", data_pkl)
        for name, data in entries.items():
            archive.writestr(f"top/{name}", data, zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
        archive.writestr("top/constants.pkl", b"\x80\x02).")
        archive.writestr("top/version", b"3\n")
    return path


def test_a_crafted_archive_of_the_layout_reads(tmp_path):
    """The pickles the refusals below are told apart from: their layout alone reads."""
    data_pkl = b"\x80\x02" + _module({"w": _tensor(), "b": _tensor(size=(3,), stride=(1,), offset=1)}) + b"."
    state = load_state_dict(_archive(tmp_path / "good.pt", data_pkl))
    assert torch.equal(state["w"], torch.tensor([[0.0, 1], [2, 3]], dtype=torch.float16))
    assert torch.equal(state["b"], torch.tensor([1.0, 2, 3], dtype=torch.float16))


@pytest.mark.parametrize("target", ["os.system", "posix.system", "builtins.eval", "builtins.exec"])
def test_a_pickle_calling_a_function_is_refused_before_anything_runs(tmp_path, target):
    marker = tmp_path / "ran"
    command = f"open({str(marker)!r}, 'w').write('ran')" if target.startswith("builtins") else f"touch {marker}"
    call = _global(target) + _value((command,)) + b"R"
    for name, data_pkl in [
        ("alone", b"\x80\x02" + call + b"."),  # data.pkl is the call
        ("inside", b"\x80\x02" + _module({"w": _tensor(), "x": call}) + b"."),  # after a good tensor
    ]:
        path = _archive(tmp_path / f"{name}.pt", data_pkl)
        for read, argument in ((torchscript_state_dict, str(path)), (load_state_dict, path)):
            with pytest.raises(
                ValueError, match=rf"^{path}: expected .*, got the global '{target}' in its data.pkl"
            ) as info:
                read(argument)
            assert "\n" not in str(info.value)
        assert not marker.exists()


@pytest.mark.parametrize(
    "data_pkl, entries, match",
    [
        (_tensor(numel=5), {}, r"its entry 'top/data/0' holds 8 bytes, but its storage claims 5 torch.float16"),
        (_tensor(numel=2**40), {}, r"holds 8 bytes, but its storage claims 1099511627776 torch.float16"),
        (_tensor(key="7"), {}, r"expected the entry 'top/data/7' in this TorchScript archive, got none"),
        (_tensor(key="../0"), {}, r"expected a storage key \(letters, digits\)"),
        (_tensor(size=(3, 2)), {}, r"got one needing 6 elements of storage '0', which holds 4"),
        (_tensor(size=(2, 2), stride=(2, -1)), {}, r"sizes and strides in \[0, 2\*\*62\)"),
        (_tensor(size=(2**63,), stride=(0,)), {}, r"sizes and strides in \[0, 2\*\*62\)"),  # (as_strided overflowed)
        (_tensor(size=(2**32, 2**32), stride=(0, 0)), {}, r"expected a tensor of fewer than 2\*\*62 elements"),
        (_tensor(storage="torch.Tensor"), {}, r"got the global 'torch.Tensor'"),
        (_global("__torch__.torch.classes.quantized.LinearPackedParams"), {}, r"got the global '__torch__.torch"),
        (_value((1, 2)), {}, r"expected a TorchScript module in its data.pkl, got a tuple"),
        (_tensor(), {"byteorder": b"big"}, r"expected tensors stored little-endian, got b'big'"),
    ],
    ids=[
        "short entry",
        "huge numel",
        "missing entry",
        "key with a path",
        "past its storage",
        "negative stride",
        "size past int64",
        "numel past int64",
        "other global",
        "C++ class",
        "no module",
        "big-endian",
    ],
)
def test_a_malformed_archive_is_refused_naming_the_file_and_what_is_wrong(tmp_path, data_pkl, entries, match):
    if data_pkl.startswith(b"ctorch._utils"):  # a tensor: as a module's attribute
        data_pkl = _module({"w": data_pkl})
    path = _archive(tmp_path / "bad.pt", b"\x80\x02" + data_pkl + b".", entries)
    with pytest.raises(ValueError, match=rf"^{path}: .*{match}") as info:
        load_state_dict(path)
    assert "\n" not in str(info.value)


def test_a_build_into_a_tensor_is_refused(tmp_path):
    """A tensor's __setstate__ would re-point it (set_): the pickle only ever holds immutable records."""
    attack = _tensor() + b"(" + _value(0) + b"tb"  # BUILD with a state into the tensor just built
    path = _archive(tmp_path / "build.pt", b"\x80\x02" + _module({"w": attack}) + b".")
    with pytest.raises(ValueError, match=rf"^{path}: its data.pkl is not a TorchScript module's pickle: "):
        torchscript_state_dict(str(path))


def test_a_build_into_our_functions_is_refused_and_leaves_them_as_they_were(tmp_path):
    """The pickle was given our module's own functions: a BUILD set their __defaults__ and __name__, which
    lasted for every later load of the process."""
    from torchflava.utils import torchscript

    state = _value((None, {"__defaults__": (0, 0, 0, 0, 0, 0), "__name__": "changed"}))
    attack = _global("torch._utils._rebuild_tensor_v2") + state + b"b0"  # BUILD into it, then pop it
    path = _archive(tmp_path / "build.pt", b"\x80\x02" + attack + _module({"w": _tensor()}) + b".")
    with pytest.raises(
        ValueError, match=rf"^{path}: .*expected nothing set on a builder of the pickle, got '__defaults__'"
    ):
        torchscript_state_dict(str(path))
    assert (
        torchscript._rebuild_tensor.__defaults__ is None and torchscript._rebuild_tensor.__name__ == "_rebuild_tensor"
    )


def test_a_memo_index_far_beyond_the_pickle_allocates_nothing(tmp_path):
    """The C unpickler sized its memo by the index a pickle stored at: a 183-byte data.pkl storing at 2**30
    made it write 16 GiB. Read by Python's own unpickler (a dict memo), it costs nothing."""
    import resource
    import struct

    far = _value(0) + b"r" + struct.pack("<I", 2**26) + b"0"  # LONG_BINPUT at index 2**26 (1 GiB there), then pop
    path = _archive(tmp_path / "memo.pt", b"\x80\x02" + far + _module({"w": _tensor()}) + b".")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert list(torchscript_state_dict(str(path))) == ["w"]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 * 1024  # KiB: well under 1 GiB


def test_compressed_tensor_data_is_refused(tmp_path):
    path = _archive(tmp_path / "deflated.pt", b"\x80\x02" + _module({"w": _tensor()}) + b".", compress=True)
    with pytest.raises(ValueError, match=r"expected its entry 'top/data/0' stored uncompressed"):
        torchscript_state_dict(str(path))
