"""CLIP fine-tuning (examples/clip/finetune.py) from a CLIP weights file alone (OpenAI's ``~/.cache/clip/*.pt``, an
open_clip state dict) with ``model.tokenizer`` (and ``model.activation`` where the file does not say): the recipe
took checkpoint directories only, and refused OpenAI's file naming ``tokenizer``, a keyword it had no key for."""

import gzip
import json
from pathlib import Path
import shutil

import open_clip
import pytest
from safetensors.torch import save_file
import torch

from tests.examples.fault_runner import run_script
from tests.examples.test_clip_finetune import FINETUNE, SHAPES, _losses, finetune, write_tiny_clip_export
from tests.helpers import Killed, stop_fit_after
from tests.models.clip.test_convert_weights import _perturb
from torchflava import zero_shot
from torchflava.classify import load_clip_classifier
from torchflava.data.clip_tokenizer import CLIPTokenizer
from torchflava.data.finetuning import ShapesClassification
from torchflava.evaluation.shapes import DEFAULT_TEMPLATES
from torchflava.pretrained import LONE_FILE_TOKENIZERS, load_pretrained
from torchflava.training.config import load_config

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")

# a tiny OpenAI-layout CLIP: heads 64 wide (what a file alone tells), QuickGELU, 1000 tokens, 16 text positions
VISION = dict(image_size=32, patch_size=8, width=64, layers=1, head_width=64, mlp_ratio=2.0)
CFG = dict(embed_dim=16, quick_gelu=True, vision_cfg=VISION)
CFG.update(text_cfg=dict(context_length=16, vocab_size=1000, width=64, heads=1, layers=1, mlp_ratio=2.0))
ENTRIES = dict(input_resolution=32, context_length=16, vocab_size=1000)  # OpenAI's, beside its weights
RUN = ["training.max_steps=4", "training.checkpoint_every=2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """OpenAI's state dict (with its three entries) and open_clip's (without: it does not say its activation) of
    the same random weights, and a copy of CLIP's merges file."""
    root = tmp_path_factory.mktemp("lone_finetune")
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in _perturb(open_clip.model.CLIP(**CFG)).state_dict().items()}
    torch.save({**state, **{k: torch.tensor(v) for k, v in ENTRIES.items()}}, root / "ViT-tiny.pt")
    save_file(state, root / "open_clip_model.safetensors")
    shutil.copy(open_clip.tokenizer.default_bpe(), root / "bpe_simple_vocab_16e6.txt.gz")
    names = {"openai": "ViT-tiny.pt", "open_clip": "open_clip_model.safetensors", "bpe": "bpe_simple_vocab_16e6.txt.gz"}
    return {key: root / name for key, name in names.items()}


def _lone_config(weights: Path, tokenizer: Path, out: Path, *overrides: str):
    argv = [f"model.pretrained={weights}", f"model.tokenizer={tokenizer}", f"training.output_dir={out}", *SHAPES]
    return load_config(finetune.FinetuneConfig, [*argv, *RUN, *overrides])


def test_a_weights_file_alone_with_its_tokenizer_fine_tunes_exports_and_resumes(files, tmp_path, monkeypatch):
    """From OpenAI's file alone and CLIP's merges file: step 0 is the zero-shot command's classifier of the file,
    the export loads back (load_clip_classifier: an image classifier, no text tower, so no tokenizer) predicting the
    trained model's logits, and a resume, with the file and the tokenizer moved away, ends as the uninterrupted run."""
    work = Path(shutil.copytree(files["openai"].parent, tmp_path / "cache"))
    weights, bpe = work / files["openai"].name, work / files["bpe"].name
    seen = {}

    def fit(model, *args, **kwargs):
        seen["model"] = model
        return real_fit(model, *args, **kwargs)

    real_fit = finetune.fit
    monkeypatch.setattr(finetune, "fit", fit)
    reference = finetune.main(_lone_config(weights, bpe, tmp_path / "reference"))
    monkeypatch.undo()
    out = tmp_path / "reference"
    assert f"  tokenizer: {bpe}\n  activation: null\n" in (out / "config.yaml").read_text()
    assert reference["steps"] == 4 and sorted(_losses(out)) == [1, 2, 3, 4]

    # step 0: exp(logit_scale) x the zero-shot scores of the file read with its tokenizer (OpenAI's preprocessing)
    pretrained = load_pretrained(weights, tokenizer=bpe)
    images = [ShapesClassification("test", 6, image_size=32)[i].image for i in range(6)]
    classes = list(ShapesClassification.classes)
    embeddings = zero_shot.class_embeddings(pretrained, classes, list(DEFAULT_TEMPLATES))
    expected = pretrained.model.logit_scale.detach().exp() * zero_shot.image_features(pretrained, images) @ embeddings.T
    start = load_clip_classifier(out / "zero_shot")
    pixels = torch.stack([start.image_transform(image) for image in images])
    with torch.no_grad():
        torch.testing.assert_close(start.model(pixels), expected, atol=1e-5, rtol=0)
    assert float(expected.std()) > 1e-3  # (scores that differ: not a vacuous match)

    names = {p.name for p in (out / "model").iterdir()}
    assert names == {"clip_classifier.safetensors", "clip_classifier_config.json", "preprocessor_config.json"}
    exported = load_clip_classifier(out)
    assert exported.labels == classes and exported.clip_kwargs["activation"] == "quick_gelu"
    with torch.no_grad():
        assert torch.equal(exported.model(pixels), seen["model"].eval()(pixels))
    with pytest.raises(ValueError, match=r"is a fine-tuned CLIP image classifier .*classify.load_clip_classifier"):
        load_pretrained(out / "model")

    stop_fit_after(monkeypatch, finetune, 3)  # after step 3's update: the last checkpoint is step 2's
    with pytest.raises(Killed):
        finetune.main(_lone_config(weights, bpe, tmp_path / "run"))
    monkeypatch.undo()
    shutil.move(work, tmp_path / "moved")  # the weights file and its tokenizer are gone from where the run read them
    resumed = finetune.main(_lone_config(weights, bpe, tmp_path / "run", "training.resume=auto"))
    assert _losses(tmp_path / "run") == _losses(out) and resumed == reference
    assert json.loads((tmp_path / "run" / "report.json").read_text()) == reference
    got, want = (load_clip_classifier(tmp_path / name).model.state_dict() for name in ("run", "reference"))
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_lone_file_without_its_tokenizer_and_misplaced_keys_exit_2_naming_the_recipes_key(files, tmp_path):
    """Each refused in one line naming model.tokenizer or model.activation, before any work (no run directory):
    the library named its own keyword (tokenizer), which the recipe had no key for."""
    directory = write_tiny_clip_export(tmp_path / "clip")
    openai, open_clip_file, bpe = files["openai"], files["open_clip"], files["bpe"]
    base = [*SHAPES, *RUN, f"training.output_dir={tmp_path / 'run'}"]
    cases = [
        (
            [f"model.pretrained={openai}"],
            f"key 'model.tokenizer': expected {LONE_FILE_TOKENIZERS}, with model.pretrained={openai}, a weights file "
            "alone, got null",
        ),
        (
            [f"model.pretrained={directory}", f"model.tokenizer={bpe}"],
            f"key 'model.tokenizer': expected null with model.pretrained={directory}, a checkpoint directory, which "
            f"holds its own, got '{bpe}'",
        ),
        (
            [f"model.pretrained={directory}", "model.activation=gelu"],
            f"key 'model.activation': expected null with model.pretrained={directory}, a checkpoint directory, "
            "which holds its own, got 'gelu'",
        ),
        (
            [f"model.pretrained={open_clip_file}", f"model.tokenizer={bpe}"],
            f"key 'model.activation': expected gelu or quick_gelu with model.pretrained={open_clip_file}, a Hugging "
            "Face or open_clip weights file alone that does not say which (no config beside it), got null",
        ),
        (
            [f"model.pretrained={openai}", f"model.tokenizer={bpe}", "model.activation=gelu"],
            f"key 'model.activation': expected null or the activation model.pretrained={openai} was trained with, "
            f"got 'gelu' ({openai}: OpenAI's CLIP weights (input_resolution, context_length, vocab_size) were "
            "trained with QuickGELU: build with activation='quick_gelu', got activation 'gelu')",
        ),
        (
            [f"model.pretrained={openai}", f"model.tokenizer={tmp_path / 'none.txt.gz'}"],
            f"key 'model.tokenizer': expected null or {LONE_FILE_TOKENIZERS}, got '{tmp_path / 'none.txt.gz'} (not "
            "there)'",
        ),
    ]
    for overrides, message in cases:
        result = run_script(FINETUNE, [*base, *overrides])
        assert result.returncode == 2 and result.stderr.strip() == f"error: {message}", result.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # refused before any work
    # open_clip's file with its activation told: valid
    cfg = _lone_config(open_clip_file, bpe, tmp_path / "run", "model.activation=quick_gelu")
    finetune.validate(cfg, 1)


def test_a_tokenizer_that_does_not_fit_the_file_exits_2_naming_model_tokenizer_before_any_work(files, tmp_path):
    """A tokenizer directory of 2000 tokens with the 1000-token file was read (the merges, not the size, checked),
    then refused once the run had started, naming model.pretrained; a cut merges file named "path"."""
    big, short = tmp_path / "big", tmp_path / "short_merges.txt"
    saveable = dict(reading="transformers", unescape_html=False, fix_text=False)
    CLIPTokenizer.from_bpe(files["bpe"], vocab_size=2000, **saveable).save(big)
    with gzip.open(files["bpe"], "rt", encoding="utf-8") as merges:
        short.write_text("".join(next(merges) for _ in range(100)), encoding="utf-8")
    base = [*SHAPES, *RUN, f"training.output_dir={tmp_path / 'run'}", f"model.pretrained={files['openai']}"]
    expected = f"{LONE_FILE_TOKENIZERS} (for {files['openai']}, of its vocab_size 1000 tokens), got"
    cases = [
        (
            big,
            f"key 'model.tokenizer': expected a tokenizer of at most {files['openai']}'s vocab_size 1000 tokens, got "
            f"{big} of 2000 tokens",
        ),
        (
            short,
            f"key 'model.tokenizer': expected {expected} {short} (path: expected at least 486 merges in {short}, "
            "got 99)",
        ),
    ]
    for tokenizer, message in cases:
        result = run_script(FINETUNE, [*base, f"model.tokenizer={tokenizer}"])
        assert result.returncode == 2 and result.stderr.strip() == f"error: {message}", result.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # refused before any work


# ------------------------------------------------------------------ an open_clip Hub directory without tokenizer files
def test_an_open_clip_directory_without_tokenizer_files_fine_tunes_with_model_tokenizer_and_resumes(
    tmp_path, monkeypatch
):
    """A timm-style open_clip Hub directory (no tokenizer file) with CLIP's merges file as model.tokenizer: it was
    refused ("has none of the tokenizer files"), and so was model.tokenizer with it. Step 0 is the zero-shot
    classifier of the same directory with the tokenizer inside (and its own preprocessing, not OpenAI's); a resume,
    with the directory and the tokenizer moved away, ends as the uninterrupted run (both recorded at the start)."""
    from tests.test_open_clip_hub_tokenizer import tokenizerless_hub

    work = tmp_path / "cache"
    work.mkdir()
    hub = tokenizerless_hub(work / "hub")
    bpe = Path(shutil.copy(open_clip.tokenizer.default_bpe(), work / "bpe_simple_vocab_16e6.txt.gz"))
    full = Path(shutil.copytree(hub, tmp_path / "full"))  # the same with the tokenizer inside
    saveable = dict(reading="transformers", unescape_html=False, fix_text=False, model_max_length=16)
    CLIPTokenizer.from_bpe(bpe, vocab_size=1000, **saveable).save(full)

    reference = finetune.main(_lone_config(hub, bpe, tmp_path / "reference"))
    out = tmp_path / "reference"
    assert f"  pretrained: {hub}\n" in (out / "config.yaml").read_text()
    assert f"  tokenizer: {bpe}\n  activation: null\n" in (out / "config.yaml").read_text()
    assert reference["steps"] == 4 and sorted(_losses(out)) == [1, 2, 3, 4]

    pretrained = load_pretrained(full)  # step 0: its zero-shot scores, its preprocessing (bilinear: its own)
    images = [ShapesClassification("test", 6, image_size=32)[i].image for i in range(6)]
    classes = list(ShapesClassification.classes)
    embeddings = zero_shot.class_embeddings(pretrained, classes, list(DEFAULT_TEMPLATES))
    expected = pretrained.model.logit_scale.detach().exp() * zero_shot.image_features(pretrained, images) @ embeddings.T
    start = load_clip_classifier(out / "zero_shot")
    assert start.image_transform.spec == pretrained.image_transform.spec and start.image_transform.spec.resample == 2
    pixels = torch.stack([start.image_transform(image) for image in images])
    with torch.no_grad():
        torch.testing.assert_close(start.model(pixels), expected, atol=1e-5, rtol=0)
    assert float(expected.std()) > 1e-3  # (scores that differ: not a vacuous match)

    stop_fit_after(monkeypatch, finetune, 3)  # after step 3's update: the last checkpoint is step 2's
    with pytest.raises(Killed):
        finetune.main(_lone_config(hub, bpe, tmp_path / "run"))
    monkeypatch.undo()
    shutil.move(work, tmp_path / "moved")  # the directory and its tokenizer are gone from where the run read them
    resumed = finetune.main(_lone_config(hub, bpe, tmp_path / "run", "training.resume=auto"))
    assert _losses(tmp_path / "run") == _losses(out) and resumed == reference
    got, want = (load_clip_classifier(tmp_path / name).model.state_dict() for name in ("run", "reference"))
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_an_open_clip_directory_without_tokenizer_files_is_refused_naming_model_tokenizer(files, tmp_path):
    """Without model.tokenizer: the directory holds none of the tokenizer files, and model.tokenizer gives one (was
    "key 'model.pretrained': ... has none of the tokenizer files", naming no way to give it); a tokenizer that does
    not fit it, or one given with the directory holding its own, named as model.tokenizer."""
    from tests.test_open_clip_hub_tokenizer import tokenizerless_hub

    hub = tokenizerless_hub(tmp_path / "hub")
    full = Path(shutil.copytree(hub, tmp_path / "full"))
    saveable = dict(reading="transformers", unescape_html=False, fix_text=False)
    CLIPTokenizer.from_bpe(files["bpe"], vocab_size=1000, **saveable).save(full)
    big = tmp_path / "big"
    CLIPTokenizer.from_bpe(files["bpe"], vocab_size=2000, **saveable).save(big)
    base = [*SHAPES, *RUN, f"training.output_dir={tmp_path / 'run'}"]
    result = run_script(FINETUNE, [*base, f"model.pretrained={hub}"])
    assert result.returncode == 2 and result.stderr == (
        f"error: key 'model.tokenizer': expected {LONE_FILE_TOKENIZERS}, with model.pretrained={hub}, a directory "
        "holding none of the tokenizer files vocab.txt, tokenizer.json, vocab.json, got null\n"
    ), result.stderr[-2000:]
    cases = [
        (
            [f"model.pretrained={hub}", f"model.tokenizer={big}"],
            f"key 'model.tokenizer': expected a tokenizer of at most {hub}'s vocab_size 1000 tokens, got {big} of "
            "2000 tokens",
        ),
        (
            [f"model.pretrained={full}", f"model.tokenizer={files['bpe']}"],
            f"key 'model.tokenizer': expected null with model.pretrained={full}, a checkpoint directory, which holds "
            f"its own, got '{files['bpe']}'",
        ),
        (
            [f"model.pretrained={hub}", f"model.tokenizer={files['bpe']}", "model.activation=quick_gelu"],
            f"key 'model.activation': expected null with model.pretrained={hub}, a checkpoint directory, which holds "
            "its own, got 'quick_gelu'",
        ),
    ]
    for overrides, message in cases:
        with pytest.raises(finetune.ConfigError) as caught:
            finetune.validate(load_config(finetune.FinetuneConfig, [*base, *overrides]), 1)
        assert str(caught.value) == message
    assert not (tmp_path / "run").exists()  # refused before any work
    # with a tokenizer that fits it (CLIP's merges file, or the tokenizer directory of its copy): valid
    for tokenizer in (files["bpe"], full):
        finetune.validate(
            load_config(finetune.FinetuneConfig, [*base, f"model.pretrained={hub}", f"model.tokenizer={tokenizer}"]), 1
        )


def test_a_config_beside_that_contradicts_the_weights_names_model_pretrained_not_an_activation_not_given(
    files, tmp_path
):
    """OpenAI's weights beside an open_clip_config.json saying GELU, model.activation null: named as
    model.pretrained (it was named as model.activation, "expected null ..., got None", the very value given)."""
    weights = tmp_path / "oc" / "ViT-tiny.pt"
    weights.parent.mkdir()
    shutil.copy(files["openai"], weights)
    (weights.parent / "open_clip_config.json").write_text(json.dumps({"model_cfg": dict(CFG, quick_gelu=False)}))
    m = _lone_config(weights, files["bpe"], tmp_path / "run").model
    with pytest.raises(finetune.ConfigError) as error:
        finetune.read_pretrained(m, lambda **given: load_pretrained(m.pretrained, **given))
    assert str(error.value).startswith("key 'model.pretrained': expected a CLIP checkpoint directory "), error.value
    assert str(error.value).endswith(
        f"got '{weights}' ({weights}: OpenAI's CLIP weights (input_resolution, context_length, vocab_size) were "
        "trained with QuickGELU: build with activation='quick_gelu', got activation 'gelu')"
    )
