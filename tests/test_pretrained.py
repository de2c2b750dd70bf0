"""load_pretrained on Hugging Face FLAVA directories saved as transformers' users save them: the image
transform and tokenizer are the checkpoint's own (preprocessor_config.json, tokenizer_config.json)."""

import dataclasses
import functools
import json
import re
import shutil

from PIL import Image
import pytest
from safetensors.torch import load_file, save_file
import torch
from transformers import BertTokenizerFast, FlavaImageProcessor

from tests.helpers import TINY_FLAVA, VARIED_TEXTS, fifo_that_cannot_hang, photos, write_hf_flava, write_tiny_export
from torchflava.data.transforms import CLIP_STD, EvalImageTransform, ImageTransform
from torchflava.pretrained import checkpoint_image_transform, checkpoint_layout, clip_classifier_record, load_pretrained

TWO_LEVELS = 0.035  # two 8-bit levels after CLIP normalisation
TEXTS = VARIED_TEXTS + ["a photo of a Cat.", "A PHOTO OF A ROCKET", "a Café in space", "Woman, astronaut!"]


@pytest.fixture(scope="module", params=["uncased", "cased"])
def hf_directory(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    write_hf_flava(directory, lowercase=request.param == "uncased")
    return directory, request.param == "uncased"


@pytest.fixture(scope="module")
def real_photos() -> dict:
    return photos()


def _hf_pixels(processor, images) -> torch.Tensor:
    return processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]


def test_image_transform_equals_the_directory_image_processor(hf_directory, real_photos):
    directory, _ = hf_directory
    pretrained = load_pretrained(directory)
    assert isinstance(pretrained.image_transform, ImageTransform)
    assert pretrained.image_transform.spec.resize_mode == "squash" and pretrained.image_transform.spec.resample == 3
    expected = _hf_pixels(FlavaImageProcessor.from_pretrained(directory), real_photos.values())
    got = torch.stack([pretrained.image_transform(photo) for photo in real_photos.values()])
    assert got.shape == expected.shape == (len(real_photos), 3, 32, 32)
    assert float((got - expected).abs().max()) <= TWO_LEVELS  # measured: 0


def test_flava_full_preprocessing_at_224(tmp_path, real_photos):
    FlavaImageProcessor().save_pretrained(tmp_path)  # facebook/flava-full's settings
    transform = checkpoint_image_transform(tmp_path, image_size=224)
    expected = _hf_pixels(FlavaImageProcessor.from_pretrained(tmp_path), real_photos.values())
    got = torch.stack([transform(photo) for photo in real_photos.values()])
    assert float((got - expected).abs().max()) <= TWO_LEVELS
    old = torch.stack([EvalImageTransform(224)(photo) for photo in real_photos.values()])
    assert float((old - expected).abs().max()) > 2.5  # what #14 reported (up to 3.8)


def test_tokenizer_ids_equal_bert_tokenizer_fast(hf_directory, tmp_path):
    directory, lowercase = hf_directory
    tokenizer = load_pretrained(directory).tokenizer
    # transformers' 1e30 (no limit): the model's text positions, what it takes (it was None: no default)
    assert (tokenizer.lowercase, tokenizer.model_max_length) == (lowercase, TINY_FLAVA["max_seq_len"])
    hf = BertTokenizerFast.from_pretrained(directory)
    expected = hf(TEXTS, padding=True, truncation=True, max_length=40, return_tensors="pt")
    ids, mask = tokenizer(TEXTS, max_length=40)
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])
    cat = hf.convert_tokens_to_ids("Cat")
    assert bool((ids == cat).any()) != lowercase  # "Cat" keeps its own id only when cased
    # Without vocab.txt the vocabulary comes from tokenizer.json.
    shutil.copytree(directory, tmp_path / "no_vocab")
    (tmp_path / "no_vocab" / "vocab.txt").unlink()
    assert torch.equal(load_pretrained(tmp_path / "no_vocab").tokenizer(TEXTS, max_length=40)[0], expected["input_ids"])


def test_edited_configs_are_honoured(tmp_path, real_photos):
    write_hf_flava(tmp_path, lowercase=True)
    original = load_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    config.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25], resample=2)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    settings.update(do_lower_case=False, model_max_length=6)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    edited = load_pretrained(tmp_path)
    images = list(real_photos.values())
    expected = _hf_pixels(FlavaImageProcessor.from_pretrained(tmp_path), images)
    got = torch.stack([edited.image_transform(photo) for photo in images])
    assert float((got - expected).abs().max()) <= TWO_LEVELS
    assert float((got - torch.stack([original.image_transform(p) for p in images])).abs().max()) > 0.5
    assert edited.tokenizer.lowercase is False and edited.tokenizer.model_max_length == 6 and edited.text_length == 6
    hf = BertTokenizerFast.from_pretrained(tmp_path)
    assert hf.model_max_length == 6 and not hf.do_lower_case
    expected = hf(TEXTS, padding=True, truncation=True, return_tensors="pt")["input_ids"]  # its default length
    assert torch.equal(edited.tokenizer(TEXTS)[0], expected)


def test_exports_without_preprocessor_config_get_the_eval_transform(tmp_path):
    write_tiny_export(tmp_path)  # as exports were written before they recorded their transform
    pretrained = load_pretrained(tmp_path)
    assert type(pretrained.image_transform) is EvalImageTransform and pretrained.image_transform.image_size == 32
    assert pretrained.text_length == 32  # min(77, the model's 32 positions)
    EvalImageTransform(32, mean=(0.5, 0.5, 0.5)).save(tmp_path)
    assert load_pretrained(tmp_path).image_transform.spec.mean == (0.5, 0.5, 0.5)
    image = Image.new("RGB", (40, 32), (255, 255, 255))
    expected = (0.5 / torch.tensor(CLIP_STD))[:, None, None].expand(3, 32, 32)  # (1 - 0.5) / std
    torch.testing.assert_close(load_pretrained(tmp_path).image_transform(image), expected, rtol=0, atol=1e-6)


def test_errors(tmp_path):
    write_hf_flava(tmp_path, lowercase=True)
    assert checkpoint_layout(tmp_path).directory == tmp_path
    path = tmp_path / "preprocessor_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "crop_size": 16}))
    with pytest.raises(
        ValueError, match=r"preprocessor_config.json: crop_size must give the model's 32 x 32 images, got \(16, 16\)"
    ):
        load_pretrained(tmp_path)
    path.write_text(json.dumps({**config, "size": {"shortest_edge": 32}, "do_center_crop": False}))
    with pytest.raises(
        ValueError, match="preprocessor_config.json: size must give the model's 32 x 32 images, got any size"
    ):
        load_pretrained(tmp_path)
    path.write_text("{")
    with pytest.raises(ValueError, match="preprocessor_config.json: .* is not JSON"):
        load_pretrained(tmp_path)
    path.write_text(json.dumps(config))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": "false"}))
    with pytest.raises(ValueError, match="tokenizer_config.json: do_lower_case must be true or false"):
        load_pretrained(tmp_path)
    (tmp_path / "vocab.txt").unlink()
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(
        FileNotFoundError, match="has none of the tokenizer files vocab.txt, tokenizer.json, vocab.json"
    ):
        load_pretrained(tmp_path)


def test_a_tokenizer_larger_than_the_model_and_a_second_weights_file_are_refused(tmp_path):
    write_tiny_export(tmp_path / "export")
    vocab = tmp_path / "export" / "vocab.txt"
    size = json.loads((tmp_path / "export" / "backbone_config.json").read_text())["vocab_size"]
    tokens = vocab.read_text().split("\n")[:-1]
    vocab.write_text("".join(f"{t}\n" for t in tokens + [f"extra{i}" for i in range(size - len(tokens) + 1)]))
    with pytest.raises(ValueError, match=f"at most the model's vocab_size {size} tokens in .*, got {size + 1}"):
        load_pretrained(tmp_path / "export")
    vocab.write_text("".join(f"{t}\n" for t in tokens))
    load_pretrained(tmp_path / "export")  # as written
    (tmp_path / "export" / "a_stale.safetensors").write_bytes(
        (tmp_path / "export" / "weights.safetensors").read_bytes()
    )
    with pytest.raises(
        ValueError,
        match=r": expected one .safetensors weights file, got \['a_stale.safetensors', 'weights.safetensors'\]",
    ):
        load_pretrained(tmp_path / "export")


def test_a_config_json_error_names_the_file(tmp_path):
    write_hf_flava(tmp_path, lowercase=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"] = {**config.get("text_config", {}), "hidden_act": "relu"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"checkpoint: {re.escape(str(tmp_path / 'config.json'))}: .*hidden_act"):
        load_pretrained(tmp_path)


def test_an_open_clip_hub_directory_and_a_single_tower_one(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from tests.models.clip.test_convert_weights import OPEN_CLIP_CFG, _open_clip_hub_directory
    from tests.test_zero_shot_command import write_hf_clip

    cfg = dict(OPEN_CLIP_CFG, text_cfg=dict(OPEN_CLIP_CFG["text_cfg"], vocab_size=49408, context_length=77))
    reference = _open_clip_hub_directory(tmp_path / "open_clip", cfg)
    write_hf_clip(tmp_path / "hf")  # its tokenizer files, CLIP's real vocabulary
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(tmp_path / "hf" / name, tmp_path / "open_clip" / name)
    loaded = load_pretrained(tmp_path / "open_clip")
    assert loaded.weights.name == "open_clip_model.safetensors" and loaded.kwargs["activation"] == "quick_gelu"
    images = torch.randn(2, 3, 32, 32)
    ids, mask = loaded.tokenizer(["a photo of a cat", "a dog"], max_length=77)
    with torch.no_grad():
        padded = torch.nn.functional.pad(ids * mask, (0, 77 - ids.shape[1]))  # open_clip's rows: 77, zeros after
        expected = reference.encode_image(images, normalize=True), reference.encode_text(padded, normalize=True)
        assert torch.allclose(loaded.model.encode_image(images), expected[0], atol=1e-5)
        assert torch.allclose(loaded.model.encode_text(ids, mask), expected[1], atol=1e-5)
    tower = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPVisionConfig(**tower, image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "tower")
    with pytest.raises(ValueError, match=r"model_type 'flava' or 'clip' \(a whole FlavaModel or CLIPModel, both"):
        load_pretrained(tmp_path / "tower")


def test_a_missing_path_or_a_file_is_named_as_such(tmp_path):
    """A path that does not exist was 'neither a torchflava run/export directory ... nor a Hugging Face
    directory' (found by an adversarial review). A file is read as a CLIP weights file alone
    (tests/test_lone_weights_file.py): one that is none is named as such."""
    with pytest.raises(FileNotFoundError, match=r"checkpoint: .*nowhere does not exist"):
        checkpoint_layout(tmp_path / "nowhere")
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"^could not read .*weights.safetensors as a safetensors file: "):
        checkpoint_layout(tmp_path / "weights.safetensors")


@pytest.mark.parametrize(
    "name",
    ["weights.safetensors", "model/weights.safetensors", "model/backbone_config.json", "preprocessor_config.json"]
    + ["tokenizer_config.json", "vocab.txt"],
)
def test_a_fifo_in_the_checkpoint_directory_is_refused_before_any_work(tmp_path, name):
    """A FIFO as the weights waited forever; as preprocessor_config.json or tokenizer_config.json it
    was taken for a missing file (the default transform, the default tokenizer settings); as the run
    directory's model/backbone_config.json, the directory was "neither a run/export directory..."."""
    directory = tmp_path / "run" if name.startswith("model/") else tmp_path / "export"
    write_tiny_export(directory / "model" if name.startswith("model/") else directory)
    (directory / name).unlink(missing_ok=True)
    with fifo_that_cannot_hang(directory / name) as fifo:
        with pytest.raises(ValueError) as caught:
            load_pretrained(directory)
        assert str(caught.value) == (
            f"{fifo} is a FIFO (named pipe), not a regular file: expected a config, tokenizer or weights file"
        )
        if name == "preprocessor_config.json":
            with pytest.raises(ValueError) as caught:
                checkpoint_image_transform(directory, image_size=32)
            assert str(caught.value) == (
                f"{fifo} is a FIFO (named pipe), not a regular file: expected a JSON preprocessor_config.json"
            )


def test_an_export_whose_weights_hold_nan_is_refused(tmp_path):
    """It loaded a model with NaN parameters (every feature NaN) without a word."""
    write_tiny_export(tmp_path)
    weights = load_file(tmp_path / "weights.safetensors")
    key = next(k for k in weights if "image_encoder" in k and weights[k].is_floating_point())
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, tmp_path / "weights.safetensors")
    with pytest.raises(ValueError) as caught:
        load_pretrained(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'weights.safetensors'}: expected finite weights, got NaN or +inf values in 1 tensors, "
        f"first [{key!r}] (a damaged or diverged checkpoint)"
    )


OPEN_CLIP_PREPROCESSING = [
    {},  # open_clip's defaults: bicubic, the short side, a centre crop, CLIP's mean and std
    {"interpolation": "bilinear", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    {"resize_mode": "squash", "interpolation": "random", "size": 999, "fill_color": 7, "mode": None},
]


@pytest.mark.parametrize("preprocess_cfg", OPEN_CLIP_PREPROCESSING)
@pytest.mark.parametrize("image_size", [224, 48])
def test_an_open_clip_hub_directory_preprocesses_images_as_open_clip_does(
    tmp_path, real_photos, preprocess_cfg, image_size
):
    """Such a directory (no preprocessor_config.json) was given the bilinear EvalImageTransform with
    transformers' crop placement: 21-34 8-bit levels off open_clip's bicubic transform on photos, and
    a pixel's shift where the crop's margin is odd (the rocket at 224: torchvision's CenterCrop rounds
    the half up to even, transformers down). Found by an adversarial review."""
    from open_clip.transform import image_transform

    config = {"model_cfg": {"vision_cfg": {"image_size": image_size}}, "preprocess_cfg": preprocess_cfg}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    transform = checkpoint_image_transform(tmp_path, image_size=image_size)
    settings = {k: v for k, v in preprocess_cfg.items() if k in ("mean", "std", "resize_mode", "interpolation")}
    reference = image_transform(image_size, is_train=False, **settings)  # size: the model's, as open_clip sets it
    for name, photo in real_photos.items():
        expected = reference(photo.convert("RGB"))
        got = transform(photo)
        assert got.shape == expected.shape == (3, image_size, image_size), name
        assert torch.equal(got, expected), (name, float((got - expected).abs().max()))


@pytest.mark.parametrize(
    "preprocess_cfg, message",
    [
        (
            {"resize_mode": "longest"},
            r"preprocess_cfg.resize_mode must be 'shortest' or 'squash' \('longest', a padded",
        ),
        (
            {"interpolation": "lanczos"},
            r"preprocess_cfg.interpolation must be one of \['bicubic', 'bilinear', 'random'\]",
        ),
        ({"mean": [0.5, 0.5]}, r"preprocess_cfg.mean must be three finite numbers"),
        ({"std": [0.5, 0.0, 0.5]}, r"preprocess_cfg.std must be three positive numbers"),
        ({"mode": "L"}, r"preprocess_cfg.mode must be 'RGB', got 'L'"),
        ({"interpolation": ["bicubic"]}, r"preprocess_cfg.interpolation must be one of .*, got \['bicubic'\]"),
        ({"mean": 0.5, "std": "wide"}, r"preprocess_cfg.std must be three positive numbers .*, got 'wide'"),
        (["bicubic"], r"preprocess_cfg must be a JSON object, got \['bicubic'\]"),
    ],
)
def test_bad_open_clip_preprocessing_is_named(tmp_path, preprocess_cfg, message):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}, "preprocess_cfg": preprocess_cfg}))
    with pytest.raises(ValueError, match=rf"^open_clip_config.json: {message}"):
        checkpoint_image_transform(tmp_path, image_size=224)
    (tmp_path / "open_clip_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"open_clip_config.json: .* is not JSON"):
        checkpoint_image_transform(tmp_path, image_size=224)


def test_the_crop_rounding_survives_a_saved_preprocessor_config(tmp_path, real_photos):
    """An open_clip transform saved as preprocessor_config.json (an export of it) reads back the same."""
    from transformers import CLIPImageProcessor

    (tmp_path / "open_clip_config.json").write_text(json.dumps({"preprocess_cfg": {}}))
    transform = checkpoint_image_transform(tmp_path, image_size=224)
    (tmp_path / "export").mkdir()
    transform.save(tmp_path / "export")
    again = checkpoint_image_transform(tmp_path / "export", image_size=224)
    assert again.spec == transform.spec and again.spec.crop_rounding == "half_even"
    rocket = real_photos["rocket"]  # odd margin at 224: the two roundings are a pixel apart
    assert torch.equal(again(rocket), transform(rocket))
    hf = CLIPImageProcessor.from_pretrained(tmp_path / "export")  # transformers reads the file (its own crop)
    floor = ImageTransform(dataclasses.replace(transform.spec, crop_rounding="floor"))
    assert torch.equal(hf(images=rocket, return_tensors="pt")["pixel_values"][0], floor(rocket))
    assert not torch.equal(floor(rocket), transform(rocket))
    with pytest.raises(
        ValueError, match=r"preprocessor_config.json: crop_rounding must be one of \('floor', 'half_even'\), got 'up'"
    ):
        config = json.loads((tmp_path / "export" / "preprocessor_config.json").read_text())
        (tmp_path / "export" / "preprocessor_config.json").write_text(json.dumps({**config, "crop_rounding": "up"}))
        checkpoint_image_transform(tmp_path / "export", image_size=224)


def test_a_preprocessor_config_nested_too_deeply_is_a_value_error_naming_it(tmp_path):
    from torchflava import pretrained

    (tmp_path / "preprocessor_config.json").write_text("[" * 100_000 + "]" * 100_000)  # json.loads: RecursionError
    with pytest.raises(ValueError, match="preprocessor_config.json: .* is not JSON"):
        pretrained._json_object(tmp_path / "preprocessor_config.json")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecations
def test_the_tokenizer_checks_are_read_checkpoint_s_and_come_before_the_weights_are_read(tmp_path, monkeypatch):
    """load_pretrained checked the end token with logic of its own (beside CLIPCheckpoint.tokenizer_misfits)
    and only after the model was built and its weights read; both now share tokenizer_misfits, and a
    tokenizer that does not fit is refused before any tensor data is read."""
    from tests.test_zero_shot_command import write_hf_clip
    import torchflava.pretrained as pretrained

    write_hf_clip(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"]["eos_token_id"] = 49406  # the model reads its text features at <|startoftext|>
    (tmp_path / "config.json").write_text(json.dumps(config))
    build = pretrained.BUILDERS["clip"]

    @functools.wraps(build)  # (its signature: load_pretrained checks the config's names against it)
    def no_weights(pretrained=None, **kwargs):
        assert pretrained is None, "the weights were read before the tokenizer was checked"
        return build(**kwargs)

    monkeypatch.setitem(pretrained.BUILDERS, "clip", no_weights)
    message = f"^checkpoint: expected the tokenizer in {tmp_path} to end texts with the model's eos_token_id 49406, got 49407$"
    with pytest.raises(ValueError, match=message):
        load_pretrained(tmp_path)
    checkpoint = pretrained.read_clip_checkpoint(tmp_path)
    tokenizer = pretrained.checkpoint_tokenizer(checkpoint_layout(tmp_path))
    assert checkpoint.tokenizer_misfits(tokenizer) == [pretrained.TokenizerMisfit("eos_token_id", 49406, 49407)]
    assert re.fullmatch(message[1:-1], pretrained.misfit_message(checkpoint.tokenizer_misfits(tokenizer)[0], tmp_path))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecations
def test_a_clip_config_pooling_at_the_highest_id_needs_the_tokenizer_s_last_id_as_end_token(tmp_path):
    """A config's eos_token_id 2 (transformers' legacy: the model pools at each row's highest id) is None
    for the model built from the checkpoint; the check must read it so (not as the vocabulary's last id,
    the builder's default without the checkpoint), as CLIPCheckpoint.tokenizer_misfits does."""
    from tests.test_zero_shot_command import write_hf_clip
    import torchflava.pretrained as pretrained

    write_hf_clip(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"]["eos_token_id"] = 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert pretrained.built_vocabulary(checkpoint_layout(tmp_path)) == {"vocab_size": 49408, "eos_token_id": None}
    loaded = load_pretrained(tmp_path)
    assert loaded.model.eos_token_id is None and loaded.tokenizer.sep_id == 49407


def test_a_tokenizer_stating_no_limit_truncates_to_the_model_s_text_positions(tmp_path):
    """A tokenizer_config.json without model_max_length: tokenizer(texts) raised "max_length must be given"
    although the model's text length is known (transformers' would not truncate: the model then fails)."""
    write_hf_flava(tmp_path, lowercase=True)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.pop("model_max_length", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    pretrained = load_pretrained(tmp_path)
    positions = TINY_FLAVA["max_seq_len"]
    assert pretrained.tokenizer.model_max_length == pretrained.max_text_length == positions
    ids, mask = pretrained.tokenizer(["a photo of a cat", " ".join(["cat"] * 3 * positions)])
    assert ids.shape == mask.shape == (2, positions)  # the long one truncated to what the model takes
    assert int(ids[1, -1]) == pretrained.tokenizer.sep_id and int(mask[0].sum()) < positions
    with torch.no_grad():
        assert pretrained.model.encode_text(ids, mask).shape[0] == 2
    assert pretrained.text_length == positions
    config["model_max_length"] = 8  # a stated limit is kept
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_pretrained(tmp_path).tokenizer.model_max_length == 8


def test_a_file_url_names_a_checkpoint_directory(tmp_path):
    """file:// URLs worked in the builders but not here: "checkpoint: file:/... does not exist" (the
    URL mangled into a path, the message false)."""
    write_hf_flava(tmp_path / "hf", lowercase=True)
    by_path, by_url = load_pretrained(tmp_path / "hf"), load_pretrained((tmp_path / "hf").as_uri())
    assert by_url.weights == by_path.weights == tmp_path / "hf" and by_url.kwargs == by_path.kwargs
    for name, value in by_path.model.state_dict().items():
        assert torch.equal(by_url.model.state_dict()[name], value), name
    weights = next((tmp_path / "hf").glob("*.safetensors"))
    with pytest.raises(  # (a file is read as a CLIP weights file alone: a FLAVA one is named, and its directory)
        ValueError,
        match=rf"^checkpoint: {re.escape(str(weights))} is a FLAVA weights file alone, .*: {re.escape(str(weights.parent))}, which holds it, is one$",
    ):
        load_pretrained(weights.as_uri())
    with pytest.raises(FileNotFoundError, match=r"^checkpoint not found: file://.*/nowhere$"):
        load_pretrained((tmp_path / "nowhere").as_uri())
    with pytest.raises(
        ValueError, match=r"^checkpoint: expected a local checkpoint directory or a file:// URL of one "
    ):
        load_pretrained("https://example.com/flava")
    with pytest.raises(ValueError, match=r"^file URLs must name a local file \(file:///path\), got 'file://host/x'$"):
        load_pretrained("file://host/x")


def test_a_home_relative_path_loads_as_in_the_builders_and_no_path_is_not_the_working_directory(tmp_path, monkeypatch):
    """``~/...`` loaded in ``flava_model(pretrained=)`` but was "does not exist" here; an empty path, or a
    ``file://`` URL of none, loaded whatever checkpoint the process ran in; ``~nosuchuser`` was a
    RuntimeError from inside pathlib in the builders."""
    from torchflava.models import clip_model

    write_tiny_export(tmp_path / "models" / "tiny")
    monkeypatch.setenv("HOME", str(tmp_path))
    by_home, by_path = load_pretrained("~/models/tiny"), load_pretrained(tmp_path / "models" / "tiny")
    assert by_home.weights == by_path.weights and by_home.kwargs == by_path.kwargs
    monkeypatch.chdir(tmp_path / "models" / "tiny")  # a checkpoint here: nothing names it
    for empty in ("", " "):
        with pytest.raises(ValueError, match=r"^checkpoint path must name a file, a directory or a URL, got an empty"):
            load_pretrained(empty)
    for url in ("file://", "file://localhost"):
        with pytest.raises(ValueError, match=rf"^file URLs must name a local file \(file:///path\), got '{url}'$"):
            load_pretrained(url)
    with pytest.raises(FileNotFoundError, match=r"^checkpoint not found: ~nosuchuser/clip.safetensors$"):
        clip_model(pretrained="~nosuchuser/clip.safetensors")


def test_a_model_directory_named_step_n_loads_as_before_and_an_empty_one_is_an_incomplete_checkpoint(tmp_path):
    """A Hugging Face or export directory that a user named ``step_<N>`` was taken for a training checkpoint
    and refused as incomplete (no COMPLETE file): it holds its config, which no training checkpoint does."""
    from torchflava.training.integrity import CheckpointIntegrityError

    write_hf_flava(tmp_path / "hf" / "step_1000", lowercase=True)
    exported = write_tiny_export(tmp_path / "exports" / "step_2000")
    hf = load_pretrained(tmp_path / "hf" / "step_1000")
    assert type(hf.model).__name__ == "FLAVAModel" and hf.kwargs["image_size"] == 32
    loaded = load_pretrained(tmp_path / "exports" / "step_2000")
    for name, value in exported.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    (tmp_path / "checkpoints" / "step_3").mkdir(parents=True)  # a training checkpoint killed before its files
    with pytest.raises(CheckpointIntegrityError, match=r"step_3 is not a complete checkpoint \(no COMPLETE file\)$"):
        load_pretrained(tmp_path / "checkpoints" / "step_3")


def test_a_hugging_face_directory_beside_a_checkpoints_folder_loads_as_before(tmp_path):
    """A model directory that also holds a ``checkpoints/`` folder (another trainer's) was taken for a run
    without an export and refused for having no complete checkpoint; its config.json says what it is."""
    write_hf_flava(tmp_path / "hf", lowercase=True)
    (tmp_path / "hf" / "checkpoints" / "step_5").mkdir(parents=True)
    loaded = load_pretrained(tmp_path / "hf")
    assert type(loaded.model).__name__ == "FLAVAModel" and loaded.kwargs["image_size"] == 32


def test_an_export_loads_without_pyyaml(tmp_path, monkeypatch):
    """The library's load_pretrained needs only the library's and the data extra's packages (README,
    "Dependencies"): PyYAML, a recipes dependency, was imported by torchflava.pretrained itself, so
    `pip install torchflava[data]` could not load even an export. A fresh copy of the module is run with
    yaml unimportable (the modules it imports are the ones already loaded)."""
    import importlib.util
    import sys

    import torchflava.pretrained

    model = write_tiny_export(tmp_path)
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now raises ModuleNotFoundError
    spec = importlib.util.spec_from_file_location("pretrained_without_yaml", torchflava.pretrained.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loaded = module.load_pretrained(tmp_path)
    assert type(loaded.model) is type(model) and loaded.text_length == 32
    expected = model.state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in loaded.model.state_dict().items())


def test_a_fine_tuned_clip_classifier_is_refused_as_a_checkpoint_naming_what_loads_it(tmp_path, monkeypatch):
    """It was "neither a torchflava run/export directory ... nor a Hugging Face directory" (the export), or its run
    printed that its latest training checkpoint was evaluated and failed on the config's model section."""
    from torchflava.classify import clip_image_classifier, export_clip_classifier, load_clip_classifier
    from torchflava.models import clip_model
    from torchflava.zero_shot import main as zero_shot_main

    sizes = dict(embed_dim=8, image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2)
    sizes |= dict(context_length=6, vocab_size=50, text_width=16, text_layers=1, text_heads=2, eos_token_id=49)
    export = tmp_path / "run" / "model"
    export.mkdir(parents=True)
    (tmp_path / "run" / "checkpoints").mkdir()
    export_clip_classifier(
        clip_image_classifier(sizes, 2),
        export,
        clip_kwargs=sizes,
        labels=["a", "b"],
        image_transform=EvalImageTransform(16),
    )
    assert load_clip_classifier(tmp_path / "run").labels == ["a", "b"]  # what does load it
    for named in (export, tmp_path / "run"):
        with pytest.raises(ValueError, match=r"is a fine-tuned CLIP image classifier .*load_clip_classifier") as caught:
            load_pretrained(named)
        assert "\n" not in str(caught.value)
        with pytest.raises(ValueError, match="fine-tuned CLIP image classifier"):
            checkpoint_layout(named)
    with pytest.raises(SystemExit) as exited:
        zero_shot_main(["--checkpoint", str(tmp_path / "run"), "--images", str(tmp_path), "--classes", "a,b"])
    assert exited.value.code == 2
    # a fine-tuning run killed before its export (its start recorded in zero_shot/), and one of its checkpoints
    killed = tmp_path / "killed"
    (killed / "checkpoints" / "step_00000003").mkdir(parents=True)
    shutil.copytree(export, killed / "zero_shot")
    for named in (killed, killed / "checkpoints" / "step_3", killed / "checkpoints" / "step_00000003"):
        with pytest.raises(
            ValueError, match=r"is a fine-tuned CLIP image classifier .*zero_shot.*load_clip_classifier"
        ):
            load_pretrained(named)
        with pytest.raises(ValueError, match="fine-tuned CLIP image classifier"):
            clip_model(pretrained=named)
    monkeypatch.chdir(killed / "checkpoints")  # a relative step_<N>: its run lies above the working directory
    with pytest.raises(ValueError, match="fine-tuned CLIP image classifier"):
        load_pretrained("step_00000003")
    assert clip_classifier_record("step_00000003") == killed / "zero_shot"
    (tmp_path / "link").symlink_to(killed / "checkpoints" / "step_00000003")  # links and ".." resolved too
    for named in (tmp_path / "link", killed / "checkpoints" / "step_00000003" / ".." / "step_00000003"):
        assert clip_classifier_record(named) == killed / "zero_shot", named
    # a directory two levels below such a run, not a checkpoint of it, is no classifier
    assert clip_classifier_record(killed / "sub" / "clip_run") is None
    assert clip_classifier_record(killed / "checkpoints" / "notes") is None


def test_a_directory_s_tokenizer_is_read_by_family_without_a_layout(tmp_path):
    """A run's saved tokenizer (a resumed fine-tuning run's, a training checkpoint's run) was reached through a
    CheckpointLayout built with a dummy weights path and arguments: directory_tokenizer reads it from the
    directory and family alone, as checkpoint_tokenizer does for a layout; a family it does not know is named."""
    from tests.test_zero_shot_command import write_hf_clip
    from torchflava.data.clip_tokenizer import CLIPTokenizer
    from torchflava.data.tokenizer import WordPieceTokenizer
    from torchflava.pretrained import checkpoint_tokenizer, directory_tokenizer

    write_hf_flava(tmp_path / "flava", lowercase=True)
    write_hf_clip(tmp_path / "clip")
    for family in ("flava", "clip"):
        read = directory_tokenizer(tmp_path / family, family)
        expected = checkpoint_tokenizer(checkpoint_layout(tmp_path / family))
        assert type(read) is type(expected) is (WordPieceTokenizer if family == "flava" else CLIPTokenizer)
        ids, expected_ids = read(TEXTS, max_length=16)[0], expected(TEXTS, max_length=16)[0]
        assert (
            torch.equal(ids, expected_ids) and read.vocab_size == expected.vocab_size and read.sep_id == expected.sep_id
        )
    with pytest.raises(ValueError, match=r"^family: expected one of \['clip', 'flava'\], got 'bert'$"):
        directory_tokenizer(tmp_path / "flava", "bert")


def test_a_run_killed_between_its_export_s_renames_loads_the_export_set_aside(tmp_path, capsys):
    """staged_directory renames the previous export aside (.model.previous), then the new one in: a kill between
    the two left no model/ until the next export, and the run was read as one without an export (its training
    checkpoints: here none complete, so refused) although its last whole export waited beside it."""
    from torchflava.pretrained import checkpoint_directory, directory_family, training_checkpoint
    from torchflava.utils.checkpoint import staged_directory

    run = tmp_path / "run"
    model = write_tiny_export(run / "model")
    (run / "checkpoints" / "step_00000003").mkdir(parents=True)  # incomplete: no export there to fall back on
    before = load_pretrained(run)
    (run / "model").rename(run / ".model.previous")  # the kill, between the renames
    assert training_checkpoint(run) is None and capsys.readouterr().err == ""
    assert checkpoint_directory(run) == run / ".model.previous" and directory_family(run) == "flava"
    layout = checkpoint_layout(run)
    assert layout.directory == run / ".model.previous" and layout.kwargs == before.kwargs
    loaded = load_pretrained(run)
    expected = model.state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in loaded.model.state_dict().items())
    assert torch.equal(loaded.tokenizer(TEXTS, max_length=16)[0], before.tokenizer(TEXTS, max_length=16)[0])
    with staged_directory(run / "model") as staging:  # the next export puts it back, then replaces it
        assert (run / "model" / "backbone_config.json").is_file() and not (run / ".model.previous").exists()
        write_tiny_export(staging, seed=1)
    assert checkpoint_layout(run).directory == run / "model" and not (run / ".model.previous").exists()


@pytest.mark.parametrize("native", [False, True], ids=["no-native-bf16", "native-bf16"])
def test_bf16_inference_on_a_cpu_without_bf16_kernels_computes_its_products_in_fp32(monkeypatch, native):
    """The commands' bf16 region (zero-shot, retrieval, linear probe, classify) is autocast, and on a CPU without
    oneDNN's bf16 kernels also the region computing bf16 products as fp32 GEMMs of the operands (PyTorch's own
    bf16 products are many times slower there); fp32 is neither."""
    from torchflava import pretrained
    from torchflava.utils import precision

    monkeypatch.setattr(precision, "NATIVE_CPU_BF16", native)
    model = torch.nn.Linear(4096, 16)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4096, generator=g)
    rounded = (x.bfloat16().float() @ model.weight.bfloat16().float().T + model.bias.bfloat16().float()).bfloat16()
    with torch.no_grad(), pretrained.inference_precision(model, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        stack = torch.utils._python_dispatch._get_current_dispatch_mode_stack()
        assert [type(mode).__name__ for mode in stack] == ([] if native else ["Bf16ProductsInFp32"])
        out = model(x)
    assert out.dtype == torch.bfloat16
    if not native:
        assert torch.equal(out, rounded)
    with pretrained.inference_precision(model, torch.float32):
        assert (
            not torch.is_autocast_enabled("cpu") and not torch.utils._python_dispatch._get_current_dispatch_mode_stack()
        )
