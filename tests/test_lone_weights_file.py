"""A CLIP weights file alone (OpenAI's ``~/.cache/clip/ViT-B-32.pt``, an OpenAI or open_clip state dict) with its
tokenizer given apart: the commands and ``load_pretrained`` refused any file ("expected a checkpoint directory"),
so OpenAI's own released checkpoint could not be zero-shot without building a Hugging Face directory by hand."""

import copy
import gzip
import json
from pathlib import Path
import shutil

import numpy
import open_clip
from PIL import Image
import pytest
from safetensors.torch import save_file
import torch

from tests.helpers import TINY_FLAVA
from tests.models.clip.test_convert_weights import _perturb
from torchflava import classify, linear_probe, zero_shot
from torchflava.data.clip_tokenizer import CLIPTokenizer
from torchflava.data.transforms import CLIP_MEAN, CLIP_STD
from torchflava.models import clip_model, flava_model
from torchflava.models.clip import convert_to_hf
from torchflava.pretrained import LONE_FILE_TOKENIZERS, load_pretrained
from torchflava.utils.architecture import UntoldArgument
from torchflava.utils.cli import run_command

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")

# Heads 64 wide (what a file alone tells: OpenAI's loader's rule), QuickGELU (OpenAI's), 1000 tokens, 16 positions.
VISION = dict(image_size=32, patch_size=8, width=128, layers=1, head_width=64, mlp_ratio=2.0)
CFG = dict(embed_dim=32, quick_gelu=True, vision_cfg=VISION)
CFG.update(text_cfg=dict(context_length=16, vocab_size=1000, width=64, heads=1, layers=1, mlp_ratio=2.0))
ENTRIES = dict(input_resolution=32, context_length=16, vocab_size=1000)  # OpenAI's, beside its weights
CLASSES = "red,green,blue"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """The same random weights (fp16-representable, as OpenAI's released ones) as OpenAI's state dict, OpenAI's
    TorchScript archive, open_clip's state dict alone and a Hugging Face directory (convert_to_hf of the model
    clip_model builds from the state dict); CLIP's merges file; a folder of three images."""
    root = tmp_path_factory.mktemp("lone")
    torch.manual_seed(0)
    reference = _perturb(open_clip.model.CLIP(**CFG)).half().float().eval()
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    out = {"bpe": Path(open_clip.tokenizer.default_bpe()), "openai": root / "openai" / "ViT-tiny.pt"}
    out["openai"].parent.mkdir()
    torch.save({**state, **{k: torch.tensor(v) for k, v in ENTRIES.items()}}, out["openai"])
    out["open_clip"] = root / "open_clip" / "open_clip_model.safetensors"  # (no open_clip_config.json beside it)
    out["open_clip"].parent.mkdir()
    save_file(state, out["open_clip"])
    scripted = copy.deepcopy(reference).half()
    for key, value in ENTRIES.items():  # OpenAI's archives hold the three entries as buffers
        scripted.__dict__.pop(key, None)
        scripted.register_buffer(key, torch.tensor(value))
    out["torchscript"] = root / "jit" / "ViT-tiny.pt"
    out["torchscript"].parent.mkdir()
    torch.jit.save(torch.jit.script(scripted), str(out["torchscript"]))

    hf = out["hf"] = root / "hf"
    hf.mkdir()
    save_file(convert_to_hf(clip_model(pretrained=out["openai"]).state_dict()), hf / "model.safetensors")
    tower = dict(hidden_act="quick_gelu", layer_norm_eps=1e-5, num_hidden_layers=1)
    vision = dict(tower, hidden_size=128, intermediate_size=256, num_attention_heads=2, image_size=32, patch_size=8)
    text = dict(tower, hidden_size=64, intermediate_size=128, num_attention_heads=1, max_position_embeddings=16)
    text.update(vocab_size=1000, eos_token_id=999)
    config = dict(model_type="clip", projection_dim=32, vision_config=vision, text_config=text)
    (hf / "config.json").write_text(json.dumps(config))
    saveable = dict(reading="transformers", unescape_html=False, fix_text=False, model_max_length=16)
    CLIPTokenizer.from_bpe(out["bpe"], vocab_size=1000, **saveable).save(hf)
    processor = dict(image_processor_type="CLIPImageProcessor", size={"shortest_edge": 32}, resample=3)
    processor.update(
        do_center_crop=True, crop_size={"height": 32, "width": 32}, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )
    (hf / "preprocessor_config.json").write_text(json.dumps(processor))

    # (sizes whose centre crop has an even margin: transformers' crop and torchvision's, OpenAI's, place it alike)
    images = out["images"] = root / "images"
    images.mkdir()
    generator = numpy.random.default_rng(0)
    for i, size in enumerate([(32, 32), (48, 32), (64, 48)]):
        pixels = generator.integers(0, 256, (size[1], size[0], 3), dtype=numpy.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
    return out


def _zero_shot(files: dict, tmp_path: Path, checkpoint: Path, *extra: str) -> numpy.ndarray:
    """Every image's probability of every class, from the command."""
    out = tmp_path / f"probabilities_{len(list(tmp_path.iterdir()))}.npy"
    command = ["--checkpoint", str(checkpoint), "--images", str(files["images"]), "--classes", CLASSES]
    zero_shot.main([*command, "--all-probabilities", str(out), *extra])
    return numpy.load(out)


def test_openai_state_dict_alone_zero_shots_as_its_hugging_face_directory(files, tmp_path):
    expected = _zero_shot(files, tmp_path, files["hf"])
    assert float(expected.max() - expected.min()) > 0.05  # not uniform: the comparison has teeth
    lone = _zero_shot(files, tmp_path, files["openai"], "--tokenizer", str(files["bpe"]))
    assert numpy.array_equal(lone, expected)
    # its tokenizer as a directory (vocab.json + merges.txt) does too; the HF directory's, given apart
    assert numpy.array_equal(_zero_shot(files, tmp_path, files["openai"], "--tokenizer", str(files["hf"])), expected)


def test_what_a_file_alone_is_loaded_with(files):
    loaded = load_pretrained(files["openai"], tokenizer=files["bpe"])
    assert loaded.kwargs["activation"] == "quick_gelu" and loaded.weights == files["openai"]
    assert loaded.text_length == 16 and loaded.tokenizer.vocab_size == 1000 and loaded.tokenizer.sep_id == 999
    spec = loaded.image_transform.spec  # OpenAI's: bicubic short side, torchvision's centre crop, CLIP's mean/std
    assert (spec.resize_mode, spec.resize_size, spec.resample, spec.crop_size) == ("short_side", 32, 3, (32, 32))
    assert (spec.crop_rounding, spec.mean, spec.std) == ("half_even", CLIP_MEAN, CLIP_STD)


def test_openai_torchscript_archive_alone_zero_shots_as_its_state_dict(files, tmp_path):
    expected = _zero_shot(files, tmp_path, files["openai"], "--tokenizer", str(files["bpe"]))
    assert numpy.array_equal(
        _zero_shot(files, tmp_path, files["torchscript"], "--tokenizer", str(files["bpe"])), expected
    )


def test_an_open_clip_file_alone_needs_its_activation_and_with_it_zero_shots_alike(files, tmp_path, capsys):
    argv = ["--checkpoint", str(files["open_clip"]), "--tokenizer", str(files["bpe"])]
    argv += ["--images", str(files["images"]), "--classes", CLASSES]
    with pytest.raises(SystemExit) as exit_info:
        run_command(lambda: zero_shot.main(argv))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: argument --activation: expected gelu or quick_gelu with --checkpoint {files['open_clip']}, a Hugging "
        "Face or open_clip weights file alone that does not say which (no config beside it), got none\n"
    )
    expected = _zero_shot(files, tmp_path, files["openai"], "--tokenizer", str(files["bpe"]))
    lone = _zero_shot(
        files, tmp_path, files["open_clip"], "--tokenizer", str(files["bpe"]), "--activation", "quick_gelu"
    )
    assert numpy.array_equal(lone, expected)
    gelu = _zero_shot(files, tmp_path, files["open_clip"], "--tokenizer", str(files["bpe"]), "--activation", "gelu")
    assert not numpy.array_equal(gelu, expected)  # (the flag is what the model is built with)


def _refused(main, argv: list, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_command(lambda: main(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("command", [zero_shot, linear_probe])
def test_a_file_alone_without_tokenizer_is_refused_before_any_weight_is_read(files, command, capsys, monkeypatch):
    monkeypatch.setattr("torchflava.models.clip.builders.load_state_dict", lambda *a, **k: pytest.fail("read"))
    inputs = ["--images", str(files["images"]), "--classes", CLASSES] if command is zero_shot else ["--shapes"]
    err = _refused(command.main, ["--checkpoint", str(files["openai"]), *inputs], capsys)
    assert err == (
        "error: argument --tokenizer: expected a CLIP merges file such as bpe_simple_vocab_16e6.txt.gz, a "
        f"tokenizer.json, or a directory of vocab.json + merges.txt or tokenizer.json, with --checkpoint "
        f"{files['openai']}, a weights file alone, got none\n"
    )
    with pytest.raises(UntoldArgument, match=r"^checkpoint: .*ViT-tiny.pt is a weights file alone, which holds no "):
        load_pretrained(files["openai"])


def test_tokenizer_or_activation_with_a_checkpoint_directory_is_refused(files, capsys):
    inputs = ["--images", str(files["images"]), "--classes", CLASSES]
    err = _refused(
        zero_shot.main, ["--checkpoint", str(files["hf"]), "--tokenizer", str(files["bpe"]), *inputs], capsys
    )
    assert err == (
        f"error: argument --tokenizer: expected only with a CLIP weights file alone or a directory without tokenizer "
        f"files as --checkpoint, got {files['bpe']} with {files['hf']}, a checkpoint directory, which holds its own\n"
    )
    err = _refused(zero_shot.main, ["--checkpoint", str(files["hf"]), "--activation", "gelu", *inputs], capsys)
    assert err.startswith("error: argument --activation: expected only with a CLIP weights file alone as --check")


def test_a_flava_file_alone_is_refused_naming_what_to_give(files, tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "flava.safetensors"
    save_file({k: v.contiguous() for k, v in flava_model(**TINY_FLAVA).state_dict().items()}, path)
    inputs = ["--images", str(files["images"]), "--classes", CLASSES]
    err = _refused(zero_shot.main, ["--checkpoint", str(path), "--tokenizer", str(files["bpe"]), *inputs], capsys)
    assert err == (
        f"error: checkpoint: {path} is a FLAVA weights file alone, which is read from its directory: expected a FLAVA "
        "checkpoint directory (a run, its model/ export, or a Hugging Face facebook/flava-full-style directory with "
        "its config.json, tokenizer and preprocessor_config.json beside the weights)\n"
    )
    assert _refused(zero_shot.main, ["--checkpoint", str(path), *inputs], capsys) == err  # (before the tokenizer)


def test_classify_refuses_a_weights_file_alone_naming_the_zero_shot_command(files, capsys):
    err = _refused(classify.main, ["--checkpoint", str(files["openai"]), "--images", str(files["images"])], capsys)
    assert err == (
        f"error: classifier: expected a fine-tuned classifier's export (a fine-tuning run or its model/ directory), "
        f"got {files['openai']}, a weights file alone (a pretrained CLIP file is classified zero-shot: python -m "
        f"torchflava.zero_shot --checkpoint {files['openai']} --tokenizer MERGES_FILE --images DIR --classes ...)\n"
    )


def test_json_output_naming_the_weights_file_or_the_tokenizer_is_refused_before_any_work(files, tmp_path, capsys):
    """A weights file alone is an input the --json or --all-probabilities output must not be written over."""
    for option, path in (("--checkpoint", tmp_path / "ViT.pt"), ("--tokenizer", tmp_path / "bpe.txt.gz")):
        path.write_bytes(b"irreplaceable")
        argv = ["--checkpoint", str(files["openai"]), "--tokenizer", str(files["bpe"]), option, str(path)]
        argv += ["--images", str(files["images"]), "--classes", CLASSES, "--json", str(path)]
        with pytest.raises(SystemExit) as exit_info:
            zero_shot.main(argv)
        assert exit_info.value.code == 2 and path.read_bytes() == b"irreplaceable"
        message = f"argument --json: expected another file than {option}'s, got '{path}' (it would be written over)"
        assert message in capsys.readouterr().err


def _tokenizers(files: dict, root: Path) -> dict:
    """Tokenizers users have at hand that do not fit the tiny model's 1000 tokens: CLIP's merges cut to 99 merges,
    a CLIP tokenizer directory of 2000 tokens, a FLAVA (BERT WordPiece vocab.txt) tokenizer directory."""
    short = root / "short_merges.txt"
    with gzip.open(files["bpe"], "rt", encoding="utf-8") as merges:
        short.write_text("".join(next(merges) for _ in range(100)), encoding="utf-8")
    saveable = dict(reading="transformers", unescape_html=False, fix_text=False)
    CLIPTokenizer.from_bpe(files["bpe"], vocab_size=2000, **saveable).save(root / "big")
    (root / "bert").mkdir()
    (root / "bert" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "blue"]))
    return {"short": short, "big": root / "big", "bert": root / "bert"}


def test_a_tokenizer_that_does_not_fit_the_file_is_refused_as_tokenizer_before_any_weight_is_read(
    files, tmp_path, capsys, monkeypatch
):
    """Was "error: checkpoint: expected a tokenizer of at most ...", "error: path: expected at least 486 merges" and,
    for a FLAVA tokenizer directory, BERT's WordPiece read as the CLIP file's: none named --tokenizer."""
    monkeypatch.setattr("torchflava.models.clip.builders.load_state_dict", lambda *a, **k: pytest.fail("read"))
    given = _tokenizers(files, tmp_path)
    inputs = ["--checkpoint", str(files["openai"]), "--images", str(files["images"]), "--classes", CLASSES]
    expected = f"{LONE_FILE_TOKENIZERS} (for {files['openai']}, of its vocab_size 1000 tokens), got"
    errors = {
        name: _refused(zero_shot.main, [*inputs, "--tokenizer", str(path)], capsys) for name, path in given.items()
    }
    assert errors == {
        "short": f"error: argument --tokenizer: expected {expected} {given['short']} (path: expected at least 486 "
        f"merges in {given['short']}, got 99)\n",
        "big": f"error: argument --tokenizer: expected a tokenizer of at most {files['openai']}'s vocab_size 1000 "
        f"tokens, got {given['big']} of 2000 tokens\n",
        "bert": f"error: argument --tokenizer: expected {expected} {given['bert']} (directory: {given['bert']} has "
        "neither tokenizer.json nor vocab.json and merges.txt)\n",
    }
    with pytest.raises(ValueError, match=r"^tokenizer: expected a tokenizer of at most .*, got .*big of 2000 tokens$"):
        load_pretrained(files["openai"], tokenizer=given["big"])


def test_the_json_report_names_the_tokenizer_and_activation_a_file_alone_was_read_with(files, tmp_path):
    """Was the weights alone: a report of a file alone did not say which tokenizer (or activation) gave its scores."""
    argv = ["--checkpoint", str(files["open_clip"]), "--tokenizer", str(files["bpe"]), "--activation", "quick_gelu"]
    zero_shot.main([*argv, "--images", str(files["images"]), "--classes", CLASSES, "--json", str(tmp_path / "z.json")])
    probe = [*probe_folders(tmp_path, files["images"]), "--json", str(tmp_path / "p.json")]
    linear_probe.main([*argv, *probe])
    told = {"weights": str(files["open_clip"]), "tokenizer": str(files["bpe"]), "activation": "quick_gelu"}
    for report in ("z.json", "p.json"):
        assert {k: v for k, v in json.loads((tmp_path / report).read_text()).items() if k in told} == told
    zero_shot.main(
        [
            "--checkpoint",
            str(files["hf"]),
            "--images",
            str(files["images"]),
            "--classes",
            CLASSES,
            "--json",
            str(tmp_path / "d"),
        ]
    )
    assert "tokenizer" not in json.loads((tmp_path / "d").read_text())  # (a directory's own: not given)


def test_an_activation_the_weights_contradict_is_named_as_the_option(files, capsys):
    """OpenAI's weights were trained with QuickGELU: --activation gelu with one is refused naming --activation (the
    library's error, a ContradictedArgument, says why), before any image is read."""
    argv = ["--checkpoint", str(files["openai"]), "--tokenizer", str(files["bpe"]), "--activation", "gelu"]
    with pytest.raises(SystemExit) as exit_info:
        run_command(lambda: zero_shot.main([*argv, "--images", str(files["images"]), "--classes", CLASSES]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: argument --activation: expected none or the activation --checkpoint {files['openai']} was trained "
        "with, got gelu ("
    ), err
    assert "were trained with QuickGELU: build with activation='quick_gelu', got activation 'gelu')" in err
    assert err.count("\n") == 1


def probe_folders(root: Path, images: Path) -> list[str]:
    """The linear-probe command's ``--train`` and ``--val`` arguments: two class folders, ``a`` and ``b``, under
    ``root/train`` and ``root/val``, each with the images ``0.png`` and ``1.png`` of ``images``."""
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for image in ("0.png", "1.png"):
                shutil.copy(images / image, root / split / label / image)
    return ["--train", str(root / "train"), "--val", str(root / "val")]


def test_a_config_beside_that_contradicts_the_weights_is_not_blamed_on_an_activation_not_given(files, tmp_path, capsys):
    """OpenAI's weights beside an open_clip_config.json saying GELU, no --activation: the library's error as it is
    (it was named as --activation, "expected none ..., got None", the very value given)."""
    weights = tmp_path / "oc" / "ViT-tiny.pt"
    weights.parent.mkdir()
    shutil.copy(files["openai"], weights)
    (weights.parent / "open_clip_config.json").write_text(json.dumps({"model_cfg": dict(CFG, quick_gelu=False)}))
    argv = ["--checkpoint", str(weights), "--tokenizer", str(files["bpe"])]
    with pytest.raises(SystemExit) as exit_info:
        run_command(lambda: zero_shot.main([*argv, "--images", str(files["images"]), "--classes", CLASSES]))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: {weights}: OpenAI's CLIP weights (input_resolution, context_length, vocab_size) were trained with "
        "QuickGELU: build with activation='quick_gelu', got activation 'gelu'\n"
    )


def test_an_activation_a_config_beside_contradicts_is_named_as_the_option(files, tmp_path, capsys):
    """open_clip's weights beside an open_clip_config.json saying GELU, --activation quick_gelu: the builder's clash
    ("clip_model: expected arguments that match ...") was printed without naming --activation."""
    weights = tmp_path / "oc" / "open_clip_model.safetensors"
    weights.parent.mkdir()
    shutil.copy(files["open_clip"], weights)
    config = weights.parent / "open_clip_config.json"
    config.write_text(json.dumps({"model_cfg": dict(CFG, quick_gelu=False)}))
    argv = ["--checkpoint", str(weights), "--tokenizer", str(files["bpe"]), "--activation", "quick_gelu"]
    with pytest.raises(SystemExit) as exit_info:
        run_command(lambda: zero_shot.main([*argv, "--images", str(files["images"]), "--classes", CLASSES]))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: argument --activation: expected none or the activation --checkpoint {weights} was trained with, got "
        f"quick_gelu (clip_model: expected arguments that match {config}, got (given, config) "
        "{'activation': ('quick_gelu', 'gelu')})\n"
    )
