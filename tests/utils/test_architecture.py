"""What a checkpoint tells of its architecture: sizes from shapes, heads, layouts, an export's files."""

import pytest
import torch

from torchflava.utils.architecture import (
    disagreeing,
    export_files,
    first_file,
    implied_heads,
    implied_sizes,
    layout_of,
)

RULES = dict(width=("cls", -1), depth=("blocks.{}.fc.weight", None), mlp=("blocks.{}.fc.weight", 0), out=("proj", 0))


def test_implied_sizes_read_dims_count_layers_and_flip_transposed_tensors():
    state = {"ref.cls": torch.zeros(1, 1, 8), "ref.proj": torch.zeros(8, 4)}  # the projection kept transposed
    state.update({f"ref.blocks.{i}.fc.weight": torch.zeros(16, 8) for i in (0, 1, 2)})
    state["ref.blocks.10x.fc.weight"] = torch.zeros(1)  # not a layer index: not counted
    sizes = implied_sizes(state, RULES, lambda key: "ref." + key, transposed=["proj"])
    assert sizes == dict(width=8, depth=3, mlp=16, out=4)
    assert implied_sizes({"cls": torch.zeros(())}, RULES) == {}  # no such dim, no such keys: nothing told
    told = implied_sizes(state, RULES, lambda key: "ref." + key, transposed=["proj"], sources=True)
    assert told == dict(  # each with the tensor that tells it, as the checkpoint holds it (a layer count: the last)
        width=(8, "ref.cls", (1, 1, 8)),
        depth=(3, "ref.blocks.2.fc.weight", (16, 8)),
        mlp=(16, "ref.blocks.0.fc.weight", (16, 8)),
        out=(4, "ref.proj", (8, 4)),
    )
    assert disagreeing(dict(width=8, depth=3), told) == {}  # values and triples compare by value
    assert disagreeing(dict(width=4), told) == {"width": (4, 8)}
    assert implied_heads({"vision_width": (128, "cls", (1, 1, 128))}, ("vision",), {}, "w.pt") == dict(
        vision_width=128, vision_heads=2
    )


def test_implied_heads_are_64_wide_and_a_width_of_no_64_wide_heads_must_be_given():
    sizes = dict(vision_width=128, text_width=64)
    assert implied_heads(sizes, ("vision", "text"), {}, "w.pt") == dict(sizes, vision_heads=2, text_heads=1)
    assert implied_heads(sizes, ("vision",), {"vision_heads": 8}, "w.pt") == sizes  # the given one is the caller's
    with pytest.raises(ValueError) as err:
        implied_heads(dict(vision_width=48), ("vision",), {}, "w.pt")
    assert str(err.value) == "w.pt: expected vision_heads (its vision_width 48 tells no 64-wide heads), got none"


def test_layout_of_and_disagreeing():
    probes = {"ours": "encoder.", "theirs": "model."}
    assert layout_of({"model.x": torch.zeros(1)}, probes, "state_dict: expected keys") == "theirs"
    with pytest.raises(ValueError) as err:
        layout_of({"other.x": torch.zeros(1)}, probes, "state_dict: expected keys")
    assert str(err.value) == "state_dict: expected keys (ours, theirs), got ['other.x']"
    assert disagreeing(dict(width=8, depth=2), dict(width=16, depth=2, heads=4)) == {"width": (8, 16)}


def test_export_files_find_the_config_and_its_one_weights_file(tmp_path):
    assert export_files(tmp_path, "clip_config.json") is None
    export = tmp_path / "model"
    export.mkdir()
    (export / "clip_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"model: expected the .safetensors weights beside clip_config.json"):
        export_files(export, "clip_config.json")
    (export / "clip.safetensors").write_bytes(b"")
    found = (export / "clip_config.json", export / "clip.safetensors")
    assert export_files(export, "clip_config.json") == export_files(tmp_path, "clip_config.json") == found  # or its run
    (export / "old.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"expected one .safetensors weights file, got \['clip.safetensors', 'old"):
        export_files(export, "clip_config.json")
    assert first_file(export, ["none.bin", "old.safetensors"], "here") == export / "old.safetensors"
    with pytest.raises(FileNotFoundError, match=r"model: expected a.bin or b.bin beside it, got neither$"):
        first_file(export, ["a.bin", "b.bin"], "beside it")
