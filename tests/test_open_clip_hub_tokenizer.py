"""An open_clip Hub directory without tokenizer files (the ``timm/`` org's CLIP repositories: ``open_clip_config.json``,
open_clip's weights, timm's own ``config.json`` and ``model.safetensors``, a README; open_clip tokenizes with its own
merges file) with its tokenizer given apart: it was refused ("has none of the tokenizer files"), and so was
``tokenizer=`` with it ("a checkpoint directory, which holds its own"), so that it could not be loaded at all."""

import json
from pathlib import Path
import shutil

import numpy
import open_clip
from PIL import Image
import pytest
import torch

from tests.models.clip.test_convert_weights import _open_clip_hub_directory
from tests.test_lone_weights_file import CFG, CLASSES, _refused, _tokenizers, probe_folders
from torchflava import linear_probe, zero_shot
from torchflava.data.clip_tokenizer import CLIPTokenizer
from torchflava.data.transforms import ImageTransformSpec
from torchflava.pretrained import LONE_FILE_TOKENIZERS, load_pretrained
from torchflava.utils.architecture import UntoldArgument

# open_clip's own preprocessing of the directory, not OpenAI's (the defaults a weights file alone is read with)
PREPROCESS = {"interpolation": "bilinear", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 0.5]}
NONE = "has none of the tokenizer files vocab.txt, tokenizer.json, vocab.json"


def tokenizerless_hub(directory: Path) -> Path:
    """A timm-style open_clip Hub directory of a tiny perturbed QuickGELU CLIP (1000 tokens, 16 positions; CFG of
    the lone-file tests): no tokenizer file, its preprocessing bilinear with its own mean and std."""
    _open_clip_hub_directory(directory, CFG, config_json={"architecture": "vit_tiny_clip", "num_classes": 0})
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": CFG, "preprocess_cfg": PREPROCESS}))
    (directory / "README.md").write_text("---\nlibrary_name: open_clip\n---\n")
    return directory


@pytest.fixture(scope="module")
def hubs(tmp_path_factory) -> dict:
    """The directory without tokenizer files (``bare``), the same with CLIP's tokenizer saved inside (``full``: what
    the bare one read with the merges file should equal), CLIP's merges file, a folder of three images."""
    root = tmp_path_factory.mktemp("hub")
    bare = tokenizerless_hub(root / "bare")
    full = Path(shutil.copytree(bare, root / "full"))
    bpe = Path(open_clip.tokenizer.default_bpe())
    saveable = dict(reading="transformers", unescape_html=False, fix_text=False, model_max_length=16)
    CLIPTokenizer.from_bpe(bpe, vocab_size=1000, **saveable).save(full)
    images = root / "images"
    images.mkdir()
    generator = numpy.random.default_rng(0)
    for i, size in enumerate([(32, 32), (48, 32), (64, 48)]):
        Image.fromarray(generator.integers(0, 256, (size[1], size[0], 3), dtype=numpy.uint8)).save(images / f"{i}.png")
    return {"bare": bare, "full": full, "bpe": bpe, "images": images}


def test_a_directory_without_tokenizer_files_loads_with_its_tokenizer_as_with_it_inside(hubs):
    full = load_pretrained(hubs["full"])
    texts = ["a photo of a red circle.", "a blue square", "green"]
    photos = [Image.open(path) for path in sorted(hubs["images"].iterdir())]
    for tokenizer in (hubs["bpe"], hubs["full"]):  # CLIP's merges file, or a tokenizer directory
        bare = load_pretrained(hubs["bare"], tokenizer=tokenizer)
        assert bare.weights.parent == hubs["bare"] and bare.kwargs == full.kwargs and bare.text_length == 16
        assert (bare.tokenizer.vocab_size, bare.tokenizer.sep_id) == (1000, 999)
        # its own preprocessing (open_clip_config.json's preprocess_cfg), not OpenAI's of a weights file alone
        assert bare.image_transform.spec == full.image_transform.spec
        assert bare.image_transform.spec == ImageTransformSpec.from_open_clip_config({"preprocess_cfg": PREPROCESS}, 32)
        assert bare.image_transform.spec.resample == 2  # (bilinear)
        ids, mask = bare.tokenizer(texts)
        expected_ids, expected_mask = full.tokenizer(texts)
        assert torch.equal(ids, expected_ids) and torch.equal(mask, expected_mask)
        with torch.no_grad():
            text = bare.model.encode_text(ids, mask)
            pixels = torch.stack([bare.image_transform(photo) for photo in photos])
            torch.testing.assert_close(text, full.model.encode_text(expected_ids, expected_mask), rtol=0, atol=1e-6)
            torch.testing.assert_close(
                bare.model.encode_image(pixels), full.model.encode_image(pixels), rtol=0, atol=1e-6
            )
        assert float(text.std()) > 1e-3  # (features that differ: not a vacuous match)


def test_a_directory_without_tokenizer_files_names_tokenizer_and_its_misfits(hubs, tmp_path):
    with pytest.raises(UntoldArgument) as caught:
        load_pretrained(hubs["bare"])
    assert caught.value.argument == "tokenizer" and str(caught.value) == (
        f"checkpoint: {hubs['bare']} {NONE}: expected tokenizer ({LONE_FILE_TOKENIZERS}), got none"
    )
    big = _tokenizers(hubs, tmp_path)["big"]  # 2000 tokens
    with pytest.raises(ValueError) as caught:
        load_pretrained(hubs["bare"], tokenizer=big)
    assert str(caught.value) == (
        f"tokenizer: expected a tokenizer of at most {hubs['bare']}'s vocab_size 1000 tokens, got {big} of 2000 tokens"
    )
    with pytest.raises(FileNotFoundError, match=rf"^tokenizer: expected .*, got {tmp_path / 'none'} \(not there\)$"):
        load_pretrained(hubs["bare"], tokenizer=tmp_path / "none")
    # the directory's config states its activation, and a directory with tokenizer files its tokenizer: refused
    with pytest.raises(UntoldArgument, match=r"^checkpoint: expected activation only with a CLIP weights file alone,"):
        load_pretrained(hubs["bare"], tokenizer=hubs["bpe"], activation="quick_gelu")
    with pytest.raises(UntoldArgument) as caught:
        load_pretrained(hubs["full"], tokenizer=hubs["bpe"])
    assert str(caught.value) == (
        "checkpoint: expected tokenizer only with a CLIP weights file alone or a directory without tokenizer files, "
        f"got {hubs['bpe']} with {hubs['full']}, a checkpoint directory, which holds its own"
    )


def _zero_shot(hubs: dict, out: Path, checkpoint: Path, *extra: str) -> numpy.ndarray:
    """Every image's probability of every class, from the command (its --json report in ``out``.json)."""
    command = ["--checkpoint", str(checkpoint), "--images", str(hubs["images"]), "--classes", CLASSES]
    zero_shot.main([*command, "--all-probabilities", f"{out}.npy", "--json", f"{out}.json", *extra])
    return numpy.load(f"{out}.npy")


def test_the_commands_read_it_with_tokenizer_and_report_it(hubs, tmp_path):
    expected = _zero_shot(hubs, tmp_path / "full", hubs["full"])
    assert float(expected.max() - expected.min()) > 0.05  # not uniform: the comparison has teeth
    got = _zero_shot(hubs, tmp_path / "bare", hubs["bare"], "--tokenizer", str(hubs["bpe"]))
    numpy.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    told = {"weights": str(hubs["bare"] / "open_clip_model.safetensors"), "tokenizer": str(hubs["bpe"])}
    report = json.loads((tmp_path / "bare.json").read_text())
    assert {k: report.get(k) for k in (*told, "activation")} == {**told, "activation": None}
    assert "tokenizer" not in json.loads((tmp_path / "full.json").read_text())  # (a directory's own: not given)
    probe = [*probe_folders(tmp_path, hubs["images"]), "--json", str(tmp_path / "p.json")]
    linear_probe.main(["--checkpoint", str(hubs["bare"]), "--tokenizer", str(hubs["bpe"]), *probe])
    assert {k: v for k, v in json.loads((tmp_path / "p.json").read_text()).items() if k in told} == told


@pytest.mark.parametrize("command", [zero_shot, linear_probe])
def test_the_commands_refuse_it_in_one_line_naming_tokenizer(hubs, command, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torchflava.models.clip.builders.load_state_dict", lambda *a, **k: pytest.fail("read"))
    inputs = ["--images", str(hubs["images"]), "--classes", CLASSES] if command is zero_shot else ["--shapes"]
    bare, full, bpe = hubs["bare"], hubs["full"], hubs["bpe"]
    assert _refused(command.main, ["--checkpoint", str(bare), *inputs], capsys) == (
        f"error: argument --tokenizer: expected {LONE_FILE_TOKENIZERS}, with --checkpoint {bare}, a directory holding "
        "none of the tokenizer files vocab.txt, tokenizer.json, vocab.json, got none\n"
    )
    big = _tokenizers(hubs, tmp_path)["big"]
    assert _refused(command.main, ["--checkpoint", str(bare), "--tokenizer", str(big), *inputs], capsys) == (
        f"error: argument --tokenizer: expected a tokenizer of at most {bare}'s vocab_size 1000 tokens, got {big} of "
        "2000 tokens\n"
    )
    assert _refused(command.main, ["--checkpoint", str(full), "--tokenizer", str(bpe), *inputs], capsys) == (
        "error: argument --tokenizer: expected only with a CLIP weights file alone or a directory without tokenizer "
        f"files as --checkpoint, got {bpe} with {full}, a checkpoint directory, which holds its own\n"
    )
    argv = ["--checkpoint", str(bare), "--tokenizer", str(bpe), "--activation", "gelu", *inputs]
    assert _refused(command.main, argv, capsys) == (
        f"error: argument --activation: expected only with a CLIP weights file alone as --checkpoint, got gelu with "
        f"{bare}, a checkpoint directory, which holds its own\n"
    )


def test_classify_refuses_it_as_the_pretrained_checkpoint_it_is(hubs, capsys):
    """classify reads fine-tuned classifiers, and has no --tokenizer: a directory without tokenizer files was refused
    asking for a tokenizer the command cannot take; it is a pretrained CLIP checkpoint, as the same with one is."""
    from torchflava import classify

    for hub in (hubs["bare"], hubs["full"]):
        error = _refused(classify.main, ["--checkpoint", str(hub), "--images", str(hubs["images"])], capsys)
        assert error == (
            f"error: classifier: {hub} holds no classification_config.json; expected a fine-tuned classifier's export "
            "(a fine-tuning run or its model/ directory), got a pretrained CLIP checkpoint (or an export cut short "
            "before its config was written)\n"
        )
