"""torchflava.hf_export: a checkpoint written as a Hugging Face directory that transformers loads and computes alike."""

import json
import logging
import math
from pathlib import Path
import shutil
import subprocess
import sys
import warnings

import open_clip
from PIL import Image
import pytest
from safetensors import safe_open
from safetensors.torch import save_file
import torch
import torch.nn.functional as F
import transformers

from tests.examples.fault_runner import run_script
from tests.helpers import EXPORT_FLAVA, REPO, TINY_FLAVA, load_recipe, write_hf_flava, write_tiny_export
from tests.models.clip.test_convert_weights import OPEN_CLIP_CFG, _open_clip_hub_directory
from torchflava import hf_export
from torchflava.data.clip_tokenizer import CLIPTokenizer
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import EvalImageTransform, ImageTransform, ImageTransformSpec
from torchflava.hf_export import hf_clip_config, main, save_hf_directory
from torchflava.models.clip import clip_model, clip_model_arguments
from torchflava.models.clip.convert_weights import hf_config_kwargs
from torchflava.models.flava import flava_model_arguments
from torchflava.models.flava.convert_weights import flava_kwargs_from_hf_config, hf_config_from_flava_kwargs
from torchflava.pretrained import load_pretrained
from torchflava.training.config import load_config

ATOL = 1e-4
HF_MODELS = {"clip": transformers.CLIPModel, "flava": transformers.FlavaModel}
RECIPES = {  # the recipes' debug configs: tiny models (recipe, config)
    "flava": ("examples/flava/train.py", "examples/flava/configs/pretraining/debug.yaml"),
    "clip": ("examples/clip/train.py", "examples/clip/configs/debug.yaml"),
}
BPE = Path(open_clip.tokenizer.default_bpe())
CAPTIONS = ["a photo of a cat.", "Two DOGS playing in the snow, far away!", "red", "a blue square above a green circle"]
# A small CLIP: every width differs, so that a transposed or swapped tensor cannot pass.
SIZES = dict(embed_dim=20, image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=4)
SIZES.update(vision_mlp_dim=48, context_length=16, text_width=24, text_layers=2, text_heads=3, text_mlp_dim=40)
SAVEABLE = dict(reading="transformers", unescape_html=False, fix_text=False)  # a merges file read as transformers does


def write_clip_export(root: Path, *, tokenizer=None, transform=None, **kwargs) -> Path:
    """A torchflava CLIP export (clip.safetensors, clip_config.json, tokenizer, preprocessing) of random weights drawn
    wide, so that the tiny towers' features differ; CLIP's BPE tokenizer on a 1000-token vocabulary by default."""
    tokenizer = tokenizer or CLIPTokenizer.from_bpe(BPE, vocab_size=1000, model_max_length=16, **SAVEABLE)
    given = dict(vocab_size=tokenizer.vocab_size, eos_token_id=tokenizer.sep_id, activation="quick_gelu")
    arguments = clip_model_arguments(**{**SIZES, **given, "init_std": 0.2, **kwargs})
    torch.manual_seed(0)
    model = clip_model(**arguments)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(50.0))  # (trained: no longer its initial value)
    root.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "clip.safetensors")
    (root / "clip_config.json").write_text(json.dumps(arguments))
    tokenizer.save(root)
    (transform or EvalImageTransform(32)).save(root)
    return root


@pytest.fixture
def transformers_warnings(caplog):
    """What transformers logs at warning level and above, and Python's warnings, while the test loads."""
    transformers.utils.logging.enable_propagation()
    caught = warnings.catch_warnings(record=True)
    recorded = caught.__enter__()
    warnings.simplefilter("always")
    with caplog.at_level(logging.WARNING):
        yield lambda: [r.getMessage() for r in caplog.records] + [str(w.message) for w in recorded]
    caught.__exit__(None, None, None)
    transformers.utils.logging.disable_propagation()


def _images(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _loaded_without_warnings(cls, directory: Path, logged) -> torch.nn.Module:
    before = len(logged())  # (transformers' FLAVA warns of its own deprecated arguments as it computes)
    model, info = cls.from_pretrained(directory, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}, info  # no missing, unexpected or mismatched key
    assert logged()[before:] == []
    return model.eval()


def _assert_ids_equal(directory: Path, ours) -> None:
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    ids, mask = ours(CAPTIONS)
    expected = theirs(CAPTIONS, padding=True, truncation=True, return_tensors="pt")
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])
    assert theirs.model_max_length == ours.model_max_length


@torch.no_grad()
def _assert_clip_features(directory: Path, source: Path, logged) -> None:
    hf = _loaded_without_warnings(transformers.CLIPModel, directory, logged)
    ours = load_pretrained(source)
    ids, mask = ours.tokenizer(CAPTIONS)  # a padded batch of captions of mixed lengths
    assert mask.sum(1).unique().numel() > 2
    images = _images()
    image = F.normalize(hf.get_image_features(pixel_values=images), dim=-1)
    text = F.normalize(hf.get_text_features(input_ids=ids, attention_mask=mask), dim=-1)
    torch.testing.assert_close(image, ours.model.encode_image(images), atol=ATOL, rtol=0)
    torch.testing.assert_close(text, ours.model.encode_text(ids, mask), atol=ATOL, rtol=0)
    torch.testing.assert_close(hf.logit_scale, ours.model.logit_scale, atol=0, rtol=0)
    back = load_pretrained(directory)  # round trip: the directory reads back to the same model
    assert torch.equal(back.model.encode_image(images), ours.model.encode_image(images))
    assert torch.equal(back.model.encode_text(ids, mask), ours.model.encode_text(ids, mask))
    _assert_ids_equal(directory, back.tokenizer)
    assert back.tokenizer(CAPTIONS)[0].tolist() == ids.tolist()
    assert back.image_transform.spec == ours.image_transform.spec


def test_a_clip_export_loads_in_transformers_with_its_features_tokenizer_and_preprocessing(
    tmp_path, transformers_warnings
):
    source = write_clip_export(tmp_path / "export")
    export = save_hf_directory(source, tmp_path / "hf")
    assert export.family == "clip" and export.notes == []
    assert export.files == [
        "config.json",
        "merges.txt",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["CLIPModel"] and config["torch_dtype"] == "float32"
    assert config["text_config"]["hidden_act"] == config["vision_config"]["hidden_act"] == "quick_gelu"
    assert config["text_config"]["eos_token_id"] == 999 and config["text_config"]["bos_token_id"] == 998
    _assert_clip_features(tmp_path / "hf", source, transformers_warnings)
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "hf")
    photo = Image.fromarray(torch.randint(0, 256, (40, 56, 3), dtype=torch.uint8).numpy())
    pixels = processor(images=photo, return_tensors="pt")["pixel_values"][0]
    assert torch.equal(pixels, load_pretrained(source).image_transform(photo))  # (the slow processor's arithmetic)
    _assert_pipeline_scores(tmp_path / "hf", photo)
    with _safetensors(tmp_path / "hf" / "model.safetensors") as f:
        assert f.metadata() == {"format": "pt"}
        assert all(f.get_tensor(k).dtype == torch.float32 and f.get_tensor(k).is_contiguous() for k in f.keys())


@torch.no_grad()
def _assert_pipeline_scores(directory: Path, photo: Image.Image) -> None:
    """transformers' zero-shot pipeline on the directory scores as our model does."""
    labels = ["cat", "dog", "red circle"]
    scores = transformers.pipeline("zero-shot-image-classification", model=str(directory))(
        photo, candidate_labels=labels
    )
    ours = load_pretrained(directory)
    text = ours.model.encode_text(*ours.tokenizer([f"This is a photo of {label}." for label in labels]))
    image = ours.model.encode_image(ours.image_transform(photo)[None])
    probabilities = (ours.model.logit_scale.exp() * image @ text.T).softmax(-1)[0]
    got = {score["label"]: score["score"] for score in scores}
    assert got == pytest.approx(dict(zip(labels, probabilities.tolist())), abs=ATOL)


def _safetensors(path: Path):
    return safe_open(str(path), framework="pt")


def test_a_clip_with_bert_s_tokenizer_and_gelu_and_the_tanh_gelu(tmp_path, transformers_warnings):
    vocab = WordPieceTokenizer.train(CAPTIONS * 3, vocab_size=60)
    vocab.model_max_length = None  # no limit stated: the model's 16 positions
    source = write_clip_export(tmp_path / "bert", tokenizer=vocab, activation="gelu", norm_eps=1e-6)
    save_hf_directory(source, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["vision_config"]["hidden_act"] == "gelu" and config["text_config"]["layer_norm_eps"] == 1e-6
    tokenizer_config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 16 and tokenizer_config["mask_token"] == "[MASK]"
    _assert_clip_features(tmp_path / "hf", source, transformers_warnings)
    tanh = write_clip_export(tmp_path / "tanh", activation="gelu_tanh")
    save_hf_directory(tanh, tmp_path / "hf_tanh")
    assert json.loads((tmp_path / "hf_tanh" / "config.json").read_text())["text_config"]["hidden_act"] == (
        "gelu_pytorch_tanh"
    )
    _assert_clip_features(tmp_path / "hf_tanh", tanh, transformers_warnings)


def test_a_clip_weights_file_alone_is_written_with_transformers_reading_of_texts_and_a_note(tmp_path):
    heads_64_wide = dict(vision_width=128, vision_heads=2, text_width=64, text_heads=1)  # (what a file alone tells)
    source = write_clip_export(tmp_path / "export", **heads_64_wide)
    lone = tmp_path / "lone" / "weights.safetensors"
    lone.parent.mkdir()
    shutil.copy(source / "clip.safetensors", lone)
    export = save_hf_directory(lone, tmp_path / "hf", tokenizer=BPE)
    assert len(export.notes) == 2
    assert export.notes[0].startswith("the preprocessing crops with half_even rounding")
    assert export.notes[1].startswith("the tokenizer read texts as open_clip does")
    back = load_pretrained(tmp_path / "hf")
    _assert_ids_equal(tmp_path / "hf", back.tokenizer)
    texts = ["a cat &amp; a dog", "<end_of_text> is text here"]  # where open_clip's reading and transformers' differ
    read_as_open_clip = load_pretrained(lone, tokenizer=BPE).tokenizer
    assert back.tokenizer(texts)[0].tolist() != read_as_open_clip(texts)[0].tolist()
    assert back.tokenizer(CAPTIONS)[0].tolist() == read_as_open_clip(CAPTIONS)[0].tolist()


def test_a_flava_export_loads_in_transformers_with_its_features_and_tokenizer(tmp_path, transformers_warnings):
    ours = write_tiny_export(tmp_path / "export")
    export = save_hf_directory(tmp_path / "export", tmp_path / "hf")
    assert export.family == "flava" and export.notes == []
    assert export.files == ["config.json", "model.safetensors", "preprocessor_config.json"] + [
        "tokenizer_config.json",
        "vocab.txt",
    ]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "flava" and config["architectures"] == ["FlavaModel"]
    hf = _loaded_without_warnings(transformers.FlavaModel, tmp_path / "hf", transformers_warnings)
    tokenizer = WordPieceTokenizer.from_directory(tmp_path / "export")
    ids, mask = tokenizer(CAPTIONS, max_length=32)
    assert mask.sum(1).unique().numel() > 2
    images = _images()
    with torch.no_grad():
        image = F.normalize(hf.get_image_features(pixel_values=images)[:, 0], dim=-1)
        text = F.normalize(hf.get_text_features(input_ids=ids, attention_mask=mask)[:, 0], dim=-1)
        torch.testing.assert_close(image, ours.encode_image(images), atol=ATOL, rtol=0)
        torch.testing.assert_close(text, ours.encode_text(ids, mask), atol=ATOL, rtol=0)
        back = load_pretrained(tmp_path / "hf")
        assert torch.equal(back.model.encode_image(images), ours.encode_image(images))
        assert torch.equal(back.model.encode_text(ids, mask), ours.encode_text(ids, mask))
    stated = flava_model_arguments(**EXPORT_FLAVA, vocab_size=tokenizer.vocab_size)
    assert back.kwargs == {**{k: v for k, v in stated.items() if k != "init_std"}, "mlp_dropout": 0.0}
    _assert_ids_equal(tmp_path / "hf", back.tokenizer)
    assert back.tokenizer(CAPTIONS, max_length=32)[0].tolist() == ids.tolist()


def test_hugging_face_directories_are_written_back_as_they_compute(tmp_path, transformers_warnings):
    torch.manual_seed(0)
    tower = dict(num_hidden_layers=1, hidden_act="quick_gelu", intermediate_size=48)
    vision = dict(tower, hidden_size=32, num_attention_heads=4, image_size=32, patch_size=8)
    text = dict(tower, hidden_size=24, num_attention_heads=3, vocab_size=1000, max_position_embeddings=16)
    legacy = transformers.CLIPConfig(projection_dim=20, vision_config=vision, text_config=dict(text, eos_token_id=2))
    original = transformers.CLIPModel(legacy).eval()  # pooling at each row's highest id (openai/clip-vit-base-*'s)
    original.save_pretrained(tmp_path / "clip")
    CLIPTokenizer.from_bpe(BPE, vocab_size=1000, model_max_length=16, **SAVEABLE).save(tmp_path / "clip")
    EvalImageTransform(32).save(tmp_path / "clip")
    save_hf_directory(tmp_path / "clip", tmp_path / "hf_clip")
    assert json.loads((tmp_path / "hf_clip" / "config.json").read_text())["text_config"]["eos_token_id"] == 2
    _assert_clip_features(tmp_path / "hf_clip", tmp_path / "clip", transformers_warnings)

    original = write_hf_flava(tmp_path / "flava", lowercase=False)
    save_hf_directory(tmp_path / "flava", tmp_path / "hf_flava")
    written, stated = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("hf_flava", "flava"))
    for tower in ("image_config", "text_config", "multimodal_config"):
        assert {k: v for k, v in stated[tower].items() if k in written[tower]} == {
            k: v for k, v in written[tower].items() if k in stated[tower]
        }
    hf = _loaded_without_warnings(transformers.FlavaModel, tmp_path / "hf_flava", transformers_warnings)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "flava")
    inputs = theirs(CAPTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        for name in ("image_embeddings", "text_embeddings", "multimodal_embeddings"):
            expected = getattr(original(**inputs, pixel_values=_images(len(CAPTIONS))), name)
            assert torch.equal(getattr(hf(**inputs, pixel_values=_images(len(CAPTIONS))), name), expected)
    _assert_ids_equal(tmp_path / "hf_flava", load_pretrained(tmp_path / "hf_flava").tokenizer)


def test_flava_s_mlp_dropout_is_left_out_with_a_note(tmp_path):
    write_tiny_export(tmp_path / "export")
    config = tmp_path / "export" / "backbone_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "dropout": 0.1}))  # (mlp_dropout None: 0.1)
    export = save_hf_directory(tmp_path / "export", tmp_path / "hf")
    assert export.notes == [
        "mlp_dropout 0.1 is not written: transformers' FLAVA has no dropout after the MLP's activation (inference "
        "is the same; fine-tuning in transformers trains without it)"
    ]
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert {written[f"{t}_config"]["hidden_dropout_prob"] for t in ("image", "text", "multimodal")} == {0.1}


def test_the_config_mappings_are_each_other_s_inverse():
    clip = clip_model_arguments(**SIZES, vocab_size=1000, activation="gelu_tanh", norm_eps=1e-6, attention_dropout=0.1)
    clip.update(logit_scale_init=1.5, init_std=0.05)
    assert hf_config_kwargs(hf_clip_config(clip)) == {k: v for k, v in clip.items() if k != "init_std"}
    pooled_at_highest_id = dict(clip, eos_token_id=None)
    assert hf_config_kwargs(hf_clip_config(pooled_at_highest_id))["eos_token_id"] is None
    flava = flava_model_arguments(**EXPORT_FLAVA, dropout=0.1, attention_dropout=0.2, mlp_dropout=0.0, norm_eps=1e-6)
    flava.update(in_channels=1, type_vocab_size=3, pad_token_id=5, logit_scale_init=1.5, init_std=0.05)
    assert flava_kwargs_from_hf_config(hf_config_from_flava_kwargs(flava)) == {
        k: v for k, v in flava.items() if k != "init_std"
    }
    with pytest.raises(ValueError, match=r"^kwargs: expected every flava_model argument, got none for \['norm_eps'\]"):
        hf_config_from_flava_kwargs({k: v for k, v in flava.items() if k != "norm_eps"})


def test_an_end_token_of_id_2_is_refused_before_anything_is_written(tmp_path):
    words = ["[PAD]", "[UNK]", "[SEP]", "[CLS]", "[MASK]", "a", "cat", "dog"]  # [SEP], the end token, is id 2
    (tmp_path / "vocab.txt").write_text("".join(f"{w}\n" for w in words))
    vocab = WordPieceTokenizer.from_vocab(tmp_path / "vocab.txt")
    assert vocab.sep_id == 2
    source = write_clip_export(tmp_path / "export", tokenizer=vocab)
    message = r"^eos_token_id: expected an end token id other than 2, which transformers' CLIPConfig cannot state"
    with pytest.raises(ValueError, match=message):
        save_hf_directory(source, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "vocab.txt"]  # nor a staging directory


def test_an_existing_directory_is_replaced_only_when_forced_and_never_the_checkpoint(tmp_path):
    source = write_clip_export(tmp_path / "export")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "old.txt").write_text("kept")
    with pytest.raises(ValueError, match=r"^out: expected a new or empty directory \(or force / --force"):
        save_hf_directory(source, tmp_path / "hf")
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["old.txt"]
    save_hf_directory(source, tmp_path / "hf", force=True)
    assert not (tmp_path / "hf" / "old.txt").exists() and (tmp_path / "hf" / "model.safetensors").is_file()
    for out in (source, tmp_path):  # the checkpoint itself, or a directory holding it: --force would delete it
        with pytest.raises(ValueError, match=r"^out: expected a directory apart from the checkpoint"):
            save_hf_directory(source, out, force=True)
    assert (source / "clip.safetensors").is_file()
    (tmp_path / "empty").mkdir()
    save_hf_directory(source, tmp_path / "empty")  # an empty directory is taken
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "export", "hf"]  # no staging left behind


def test_bf16_weights_are_written_when_asked(tmp_path, transformers_warnings):
    source = write_clip_export(tmp_path / "export")
    save_hf_directory(source, tmp_path / "hf", dtype=torch.bfloat16)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with _safetensors(tmp_path / "hf" / "model.safetensors") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    _loaded_without_warnings(transformers.CLIPModel, tmp_path / "hf", transformers_warnings)
    assert {v.dtype for v in load_pretrained(tmp_path / "hf").model.state_dict().values()} == {torch.float32}
    with pytest.raises(ValueError, match=r"^dtype: expected one of \[torch.float32"):
        save_hf_directory(source, tmp_path / "other", dtype=torch.float64)


def test_the_command_writes_the_directory_and_refuses_in_one_line(tmp_path, capsys):
    source = write_clip_export(tmp_path / "export")
    report = main(["--checkpoint", str(source), "--out", str(tmp_path / "hf"), "--json", str(tmp_path / "r.json")])
    assert report["family"] == "clip" and report["weights"] == str(source / "clip.safetensors")
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert capsys.readouterr().out.startswith(f"wrote a Hugging Face CLIP directory: {tmp_path / 'hf'} (config.json")
    done = run_script("-m torchflava.hf_export", ["--checkpoint", str(source), "--out", str(tmp_path / "hf")])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("python -m torchflava.hf_export: error: argument --out: ")
    lone = ["--checkpoint", str(source / "clip.safetensors"), "--out", str(tmp_path / "lone")]
    done = run_script("-m torchflava.hf_export", lone)  # (python -m in a process forked with the imports done)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: argument --tokenizer: expected ")
    assert not (tmp_path / "lone").exists()


def test_a_squashing_preprocessing_is_written_as_flava_s_processor(tmp_path):
    spec = ImageTransformSpec(resize_mode="squash", resize_size=(32, 32), resample=3, crop_size=None)
    source = write_clip_export(tmp_path / "export", transform=ImageTransform(spec))
    save_hf_directory(source, tmp_path / "hf")
    written = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert written["image_processor_type"] == "FlavaImageProcessor" and written["size"] == {"height": 32, "width": 32}
    assert load_pretrained(tmp_path / "hf").image_transform.spec == spec


def test_a_config_that_would_describe_another_model_is_refused_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    source = write_clip_export(tmp_path / "export")
    with monkeypatch.context() as patch:  # (a mapping gone wrong: QuickGELU written as GELU)
        patch.setitem(hf_export._HF_ACTIVATIONS, "quick_gelu", "gelu")
        with pytest.raises(ValueError, match=r"^config.json: the config written would describe another model than"):
            save_hf_directory(source, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]

    def disk_full(self, directory):
        (Path(directory) / "preprocessor_config.json").write_text("{")
        raise OSError("No space left on device")

    monkeypatch.setattr(ImageTransform, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_hf_directory(source, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # neither the directory nor its staging


def test_the_command_imports_neither_transformers_nor_dcp():
    heavy = ("transformers", "torch.distributed.checkpoint")  # (transformers: a test-only dependency)
    probe = f"import sys, torchflava.hf_export; print(sorted(m for m in sys.modules if m.startswith({heavy})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


@pytest.mark.parametrize("family", ["flava", "clip"])
def test_a_recipe_s_training_checkpoint_and_its_run_are_written_as_they_compute(
    family, tmp_path, transformers_warnings
):
    recipe, config = RECIPES[family]
    train = load_recipe(recipe, f"hf_export_{family}_train")
    overrides = [f"training.output_dir={tmp_path / 'run'}", "training.max_steps=1", "training.checkpoint_every=1"]
    overrides += ["optim.warmup_steps=0", "eval.enabled=false"]
    train.main(load_config(train.TrainConfig, [f"config={REPO / config}", *overrides]))
    (step,) = (tmp_path / "run" / "checkpoints").iterdir()
    for source, out in ((step, tmp_path / "hf_step"), (tmp_path / "run", tmp_path / "hf_run")):
        save_hf_directory(source, out)
        ours, back = load_pretrained(source), load_pretrained(out)
        hf = _loaded_without_warnings(HF_MODELS[family], out, transformers_warnings)
        ids, mask = ours.tokenizer(CAPTIONS)
        size = ours.image_size
        images = torch.randn(len(CAPTIONS), 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            image, text = (
                hf.get_image_features(pixel_values=images),
                hf.get_text_features(input_ids=ids, attention_mask=mask),
            )
            if family == "flava":  # (every position's projection: the CLS's is the feature)
                image, text = image[:, 0], text[:, 0]
            torch.testing.assert_close(F.normalize(image, dim=-1), ours.model.encode_image(images), atol=ATOL, rtol=0)
            torch.testing.assert_close(F.normalize(text, dim=-1), ours.model.encode_text(ids, mask), atol=ATOL, rtol=0)
            assert torch.equal(back.model.encode_text(ids, mask), ours.model.encode_text(ids, mask))
        assert back.tokenizer(CAPTIONS)[0].tolist() == ids.tolist()
        assert back.image_transform.spec == ours.image_transform.spec


def test_an_open_clip_directory_computes_in_transformers_as_in_open_clip(tmp_path, transformers_warnings):
    cfg = dict(OPEN_CLIP_CFG, text_cfg=dict(OPEN_CLIP_CFG["text_cfg"], vocab_size=1000))
    reference = _open_clip_hub_directory(tmp_path / "open_clip", cfg)
    CLIPTokenizer.from_bpe(BPE, vocab_size=1000, model_max_length=16, **SAVEABLE).save(tmp_path / "open_clip")
    export = save_hf_directory(tmp_path / "open_clip", tmp_path / "hf")
    assert [note.split(" (")[0] for note in export.notes] == ["the preprocessing crops with half_even rounding"]
    hf = _loaded_without_warnings(transformers.CLIPModel, tmp_path / "hf", transformers_warnings)
    ids, mask = load_pretrained(tmp_path / "hf").tokenizer(CAPTIONS)
    images = _images(len(CAPTIONS))
    with torch.no_grad():
        image, text = (
            hf.get_image_features(pixel_values=images),
            hf.get_text_features(input_ids=ids, attention_mask=mask),
        )
        expected = reference.encode_image(images, normalize=True), reference.encode_text(ids, normalize=True)
    torch.testing.assert_close(F.normalize(image, dim=-1), expected[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(F.normalize(text, dim=-1), expected[1], atol=ATOL, rtol=0)


def test_a_clip_with_bert_s_tokenizer_runs_in_transformers_pipeline_and_processor(tmp_path):
    # (the CLIP recipe's runs: a WordPiece vocabulary, whose BertTokenizer gave token_type_ids, which CLIPModel takes
    # not: the pipeline and model(**processor(...)) failed with a TypeError)
    prompts = [f"This is a photo of {label}." for label in ("cat", "dog", "red circle")]  # (the pipeline's)
    vocab = WordPieceTokenizer.train((CAPTIONS + prompts) * 3, vocab_size=80)
    source = write_clip_export(tmp_path / "export", tokenizer=vocab)
    save_hf_directory(source, tmp_path / "hf")
    photo = Image.fromarray(torch.randint(0, 256, (40, 56, 3), dtype=torch.uint8).numpy())
    _assert_pipeline_scores(tmp_path / "hf", photo)
    inputs = transformers.AutoProcessor.from_pretrained(tmp_path / "hf")(
        text=CAPTIONS, images=photo, padding=True, return_tensors="pt"
    )
    assert sorted(inputs) == ["attention_mask", "input_ids", "pixel_values"]
    ours = load_pretrained(tmp_path / "hf")
    assert inputs["input_ids"].tolist() == ours.tokenizer(CAPTIONS)[0].tolist()
    with torch.no_grad():
        logits = transformers.CLIPModel.from_pretrained(tmp_path / "hf")(**inputs).logits_per_image
        image = ours.model.encode_image(ours.image_transform(photo)[None])
        expected = ours.model.logit_scale.exp() * image @ ours.model.encode_text(*ours.tokenizer(CAPTIONS)).T
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


def test_a_flava_export_resizing_the_short_side_reads_in_transformers_auto_processor(tmp_path):
    # (FlavaProcessor's image processor only squashes: AutoProcessor's, for every FLAVA recipe run's export, raised
    # "The `size` dictionary must contain the keys `height` and `width`" on any image)
    write_tiny_export(tmp_path / "export")
    save_hf_directory(tmp_path / "export", tmp_path / "hf")
    ours = load_pretrained(tmp_path / "hf")
    assert ours.image_transform.spec == EvalImageTransform(32).spec  # (the recipes' preprocessing)
    photo = Image.fromarray(torch.randint(0, 256, (45, 71, 3), dtype=torch.uint8).numpy())
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "hf")
    inputs = processor(text=CAPTIONS[:1], images=photo, padding=True, return_tensors="pt")
    assert torch.equal(inputs["pixel_values"][0], ours.image_transform(photo))
    assert inputs["input_ids"].tolist() == ours.tokenizer(CAPTIONS[:1])[0].tolist()
    with torch.no_grad():
        hf = transformers.FlavaModel.from_pretrained(tmp_path / "hf").eval()
        expected = ours.model(inputs["pixel_values"], inputs["input_ids"], text_attention_mask=inputs["attention_mask"])
        got = hf(**inputs).multimodal_embeddings
    torch.testing.assert_close(got, expected.multimodal_embeddings, atol=ATOL, rtol=0)


def test_forcing_onto_what_a_run_or_url_resolved_to_is_refused(tmp_path):
    # (the API checked only the path given: a run's model/ export, or the export of a file:// URL, was replaced)
    source = write_clip_export(tmp_path / "run" / "model")
    for checkpoint, out in ((tmp_path / "run", source), (source.as_uri(), source)):
        with pytest.raises(
            ValueError, match=r"^out: expected a directory apart from the checkpoint .*clip.safetensors"
        ):
            save_hf_directory(checkpoint, out, force=True)
    assert sorted(p.name for p in source.iterdir()) == sorted(p.name for p in (tmp_path / "run" / "model").iterdir())
    assert (source / "clip.safetensors").is_file() and (source / "clip_config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model"]  # nor a staging directory


def test_the_current_or_parent_directory_as_out_is_refused_naming_out_before_the_checkpoint_is_read(
    tmp_path, monkeypatch, capsys
):
    # (it was read, then "PosixPath('.') has an empty name" ended the command, naming no argument)
    source = write_clip_export(tmp_path / "export")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    for out in (".", "..", "/"):
        with pytest.raises(SystemExit) as caught:
            main(["--checkpoint", str(source), "--out", out, "--force"])
        assert caught.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"python -m torchflava.hf_export: error: argument --out: expected a directory named by its path "
            f"(e.g. ../hf-model), got {out}"
        )
    with pytest.raises(ValueError, match=r"^out: expected a directory named by its path \(e.g. ../hf-model\), got \.$"):
        save_hf_directory(source, ".")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "here"] and not any((tmp_path / "here").iterdir())


def test_an_open_clip_squash_without_a_crop_gets_no_crop_rounding_note(tmp_path):
    # (open_clip's squash preprocessing has no crop, yet the export noted "a centre crop one pixel off")
    cfg = dict(OPEN_CLIP_CFG, text_cfg=dict(OPEN_CLIP_CFG["text_cfg"], vocab_size=1000))
    _open_clip_hub_directory(tmp_path / "open_clip", cfg)
    squash = {"model_cfg": cfg, "preprocess_cfg": {"resize_mode": "squash"}}
    (tmp_path / "open_clip" / "open_clip_config.json").write_text(json.dumps(squash))
    CLIPTokenizer.from_bpe(BPE, vocab_size=1000, model_max_length=16, **SAVEABLE).save(tmp_path / "open_clip")
    export = save_hf_directory(tmp_path / "open_clip", tmp_path / "hf")
    spec = load_pretrained(tmp_path / "hf").image_transform.spec
    assert (spec.resize_mode, spec.crop_size) == ("squash", None) and export.notes == []


def test_a_weight_fp16_cannot_hold_is_refused_naming_dtype_before_anything_is_written(tmp_path):
    """fp16's largest value is 65504: a larger weight was written as inf, without a word."""
    source = write_clip_export(tmp_path / "export")
    pretrained = load_pretrained(source)
    with torch.no_grad():
        pretrained.model.logit_scale.fill_(70000.0)
    with pytest.raises(ValueError, match=r"^dtype: expected a precision that holds every weight, got float16, whose"):
        save_hf_directory(pretrained, tmp_path / "hf", dtype=torch.float16)
    assert not (tmp_path / "hf").exists()
    save_hf_directory(pretrained, tmp_path / "hf", dtype=torch.bfloat16)  # (bf16 holds it)
    with _safetensors(tmp_path / "hf" / "model.safetensors") as f:
        assert f.get_tensor("logit_scale").item() == 70144.0  # (bf16's nearest)


def test_a_fine_tuned_flava_classifier_is_written_as_its_backbone_with_a_note(tmp_path, transformers_warnings):
    """transformers has no FLAVA classifier: the export's backbone was written without a word that its head was not."""
    from torchflava.classify import export_classifier
    from torchflava.data.tokenizer import WordPieceTokenizer
    from torchflava.data.transforms import EvalImageTransform
    from torchflava.models import flava_model
    from torchflava.models.flava import flava_model_for_classification

    torch.manual_seed(0)
    model = flava_model_for_classification(3, backbone=flava_model(**TINY_FLAVA), classifier_hidden_dim=8).eval()
    tokenizer = WordPieceTokenizer.train(["a red circle", "a blue square"], vocab_size=TINY_FLAVA["vocab_size"])
    export_classifier(
        model,
        tmp_path / "run" / "model",
        backbone_kwargs=TINY_FLAVA,
        tokenizer=tokenizer,
        image_transform=EvalImageTransform(TINY_FLAVA["image_size"]),
        labels=["x", "y", "z"],
    )
    written = save_hf_directory(tmp_path / "run" / "model", tmp_path / "hf")
    assert written.family == "flava" and any(
        note.startswith("the checkpoint is a fine-tuned classifier: its backbone is written, not its classification")
        for note in written.notes
    )
    hf = _loaded_without_warnings(transformers.FlavaModel, tmp_path / "hf", transformers_warnings)
    pixels = _images(2)
    with torch.no_grad():
        ours = model.model.encode_image(pixels)
        theirs = F.normalize(hf.get_image_features(pixel_values=pixels)[:, 0], dim=-1)
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)
    # (a pretrained FLAVA export gets no such note: test_a_flava_export_loads_in_transformers_...)
