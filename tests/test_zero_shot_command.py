"""python -m torchflava.zero_shot and torchflava.pretrained on checkpoints the test writes."""

import itertools
import json
import math
import os
from pathlib import Path
import pickle
import re
import shutil
import sys
import tarfile

import numpy
from PIL import Image
import pytest
import torch
import torch.nn.functional as F
from transformers import FlavaModel, FlavaProcessor

from tests.examples.fault_runner import run_script
from tests.helpers import hf_parquet_of, photos, wds_of, write_hf_flava, write_tiny_export
from tests.models.flava.test_convert_weights import _perturb, _tiny_hf_config
from torchflava import zero_shot
from torchflava.data.shapes import ShapesWorld
from torchflava.data.transforms import EvalImageTransform
from torchflava.evaluation import percent, retrieval_recall
from torchflava.pretrained import checkpoint_layout, load_pretrained

CLASSES = ["red circle", "blue square", "green triangle"]


def _every_probability(result: dict) -> torch.Tensor:
    """(N, C) probabilities of a classify_folder result whose top-k holds every class (C <= k), in class order."""
    top = result["top_classes"]
    assert top.shape[1] == len(result["classes"])
    return torch.zeros(top.shape, dtype=torch.float32).scatter_(1, top, result["top_probabilities"])


def _synset_folders(images: Path, root: Path, synsets: list[str]) -> Path:
    """``root`` laid out as ImageNet's validation set: the shape images of each class of CLASSES copied from the
    ``images`` fixture's folder named after it into a folder named after its synset (``synsets``, in CLASSES'
    order)."""
    for name, synset in zip(CLASSES, synsets, strict=True):
        shutil.copytree(images / name, root / synset)
    return root


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """An export directory as the pretraining recipe writes it, with random weights."""
    root = tmp_path_factory.mktemp("export")
    return root, write_tiny_export(root)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Class sub-folders of shapes, a corrupt file, and a captions file for retrieval."""
    root = tmp_path_factory.mktemp("images")
    test = ShapesWorld("test", 540, image_size=32)
    lines, written = [], 0
    for i in range(540):
        scene = test.scene(i)
        if scene.label in CLASSES and written < 12:
            (root / scene.label).mkdir(exist_ok=True)
            test[i].image.save(root / scene.label / f"{i}.png")
            lines.append({"image": f"{scene.label}/{i}.png", "caption": test[i].text})
            written += 1
    (root / "red circle" / "broken.png").write_text("not a png")
    (root / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def test_classification_command_matches_the_library(export, images, tmp_path):
    directory, model = export
    out = tmp_path / "result.json"
    result = zero_shot.main(
        [
            "--checkpoint",
            str(directory),
            "--images",
            str(images),
            "--classes",
            ",".join(CLASSES),
            "--template",
            "a {}",
            "--json",
            str(out),
        ]
    )
    assert result["num_inputs"] == 12 and result["skipped"] == 1
    assert len(result["skipped_reasons"]) == 1 and "unreadable image" in result["skipped_reasons"][0]  # named
    assert result["chance"] == pytest.approx(1 / 3)
    pretrained = load_pretrained(directory)
    files = sorted(result["predictions"])
    from PIL import Image

    features = zero_shot.image_features(pretrained, [Image.open(images / f).convert("RGB") for f in files])
    classes = zero_shot.class_embeddings(pretrained, CLASSES, ["a {}"])
    expected = [CLASSES[int(i)] for i in (features @ classes.T).argmax(dim=1)]
    assert [result["predictions"][f] for f in files] == expected
    truth = [f.split("/")[0] for f in files]
    assert result["accuracy"] == pytest.approx(sum(p == t for p, t in zip(expected, truth)) / 12)
    assert json.loads(out.read_text())["num_inputs"] == 12


def test_retrieval_command_matches_retrieval_recall(export, images):
    directory, _ = export
    result = zero_shot.main(
        ["--checkpoint", str(directory), "--images", str(images), "--captions", str(images / "captions.jsonl")]
    )
    assert result["num_pairs"] == 12 and result["text_to_image_R@5_chance"] == pytest.approx(5 / 12)
    assert result["image_to_text_R@5_chance"] == pytest.approx(5 / 12)  # (one caption an image: the same)
    pretrained = load_pretrained(directory)
    lines = [json.loads(line) for line in (images / "captions.jsonl").read_text().splitlines()]
    from PIL import Image

    image_features = zero_shot.image_features(
        pretrained, [Image.open(images / l["image"]).convert("RGB") for l in lines]
    )
    text_features = zero_shot.text_features(pretrained, [l["caption"] for l in lines])
    expected = retrieval_recall(image_features, text_features, ks=(1, 5, 10))
    for key, value in expected.items():
        assert result[key] == pytest.approx(value)


def test_retrieval_decodes_each_listed_image_once_a_chunk_at_a_time(export, images, tmp_path, monkeypatch):
    from torchflava.data import readers

    directory, _ = export
    files = sorted(str(p.relative_to(images)) for p in images.glob("*/*.png") if p.name != "broken.png")[:5]
    lines = [(files[i % 5], f"caption {i} of {files[i % 5]}") for i in range(13)]  # images listed 2-3 times
    lines += [("red circle/broken.png", "a corrupt image"), ("missing.png", "no file")]
    text = "".join(json.dumps({"image": image, "caption": caption}) + "\n" for image, caption in lines)
    captions = tmp_path / "captions.jsonl"
    captions.write_text(text + '{"image": "x.png"}\n')  # a line without a caption
    decoded, chunk_sizes = [], []
    real_read, real_features = readers.read_image, zero_shot.image_features
    monkeypatch.setattr(readers, "read_image", lambda path, *a, **k: decoded.append(path) or real_read(path, *a, **k))
    monkeypatch.setattr(
        zero_shot, "image_features", lambda p, ims, **k: chunk_sizes.append(len(ims)) or real_features(p, ims, **k)
    )
    pretrained = load_pretrained(directory)
    result = zero_shot.retrieval(pretrained, str(images), str(captions), batch_size=2)
    assert sorted(decoded) == sorted(str(images / f) for f in files + ["red circle/broken.png", "missing.png"])
    assert chunk_sizes == [2, 2, 1]  # five readable images, never more than batch_size decoded at once
    assert result["num_images"] == 5 and result["num_pairs"] == 13 and result["skipped"] == 3
    reasons = result["skipped_reasons"]  # each named: the caption-less line, the corrupt and the missing image
    assert len(reasons) == 3 and any("broken.png" in r for r in reasons) and any("missing.png" in r for r in reasons)
    monkeypatch.undo()
    image_features = zero_shot.image_features(pretrained, [Image.open(images / f).convert("RGB") for f in files])
    text_features = zero_shot.text_features(pretrained, [caption for _, caption in lines[:13]])
    expected = retrieval_recall(image_features, text_features, ks=(1, 5), image_of_text=torch.arange(13) % 5)
    assert {k: result[k] for k in expected} == pytest.approx(expected)


def test_loaded_export_equals_the_saved_model(export):
    directory, model = export
    pretrained = load_pretrained(directory)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(pretrained.model.state_dict()[name], value, rtol=0, atol=0)
    assert pretrained.image_size == 32 and pretrained.max_text_length == 32


def test_hugging_face_directory_loads_like_flava_model(tmp_path, export):
    hf = FlavaModel(_tiny_hf_config()).eval()
    _perturb(hf)
    hf.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text((export[0] / "vocab.txt").read_text())
    layout = checkpoint_layout(tmp_path)
    kwargs = layout.kwargs
    assert layout.directory == tmp_path and layout.family == "flava" and layout.config == tmp_path / "config.json"
    assert layout.image_transform is None  # (a Hugging Face directory's files state it: read where it is asked for)
    pretrained = load_pretrained(tmp_path)
    pixels = torch.randn(2, 3, kwargs["image_size"], kwargs["image_size"])
    with torch.no_grad():
        torch.testing.assert_close(
            pretrained.model.encode_image(pixels),
            torch.nn.functional.normalize(hf.get_image_features(pixels)[:, 0], dim=-1),
            atol=1e-5,
            rtol=1e-5,
        )


def test_errors(tmp_path, export, images):
    with pytest.raises(FileNotFoundError, match="neither"):
        load_pretrained(tmp_path)
    with pytest.raises(ValueError, match="at least two distinct classes"):  # the library's own check
        zero_shot.classify_folder(load_pretrained(export[0]), str(images), ["red circle"])
    with pytest.raises(SystemExit):
        zero_shot.main(["--checkpoint", str(export[0]), "--images", str(images)])  # neither mode given


def test_feature_functions_refuse_bad_arguments_naming_them(export, images):
    pretrained = load_pretrained(export[0])
    picture = Image.open(next(images.glob("*/*[0-9].png"))).convert("RGB")
    with pytest.raises(ValueError, match="max_length must be >= 2, got 0"):  # was read as "the default"
        zero_shot.text_features(pretrained, ["a red circle"], max_length=0)
    with pytest.raises(TypeError, match="max_length must be an int, got float"):
        zero_shot.text_features(pretrained, ["a red circle"], max_length=8.0)
    limit = pretrained.max_text_length
    with pytest.raises(ValueError, match=f"max_length must be at most the model's {limit} text positions, got 1000"):
        zero_shot.text_features(pretrained, ["a red circle"], max_length=1000)  # was the encoder's input_ids error
    assert zero_shot.text_features(pretrained, ["a red circle"], max_length=limit).shape[0] == 1
    with pytest.raises(TypeError, match="images must be a sequence of PIL images, got list holding Tensor"):
        zero_shot.image_features(pretrained, [torch.zeros(3, 32, 32)])  # was an AttributeError
    with pytest.raises(TypeError, match="images must be a sequence of PIL images, got list holding str"):
        zero_shot.image_features(pretrained, ["red circle/1.png"])
    with pytest.raises(TypeError, match="images must be a sequence of PIL images, got Image"):
        zero_shot.image_features(pretrained, picture)
    with pytest.raises(TypeError, match="texts must be a sequence of str, got list holding int, str"):
        zero_shot.text_features(pretrained, ["a red circle", 3])
    # a generator passed the item check (consumed by it) and failed in len() naming no argument; a set
    # in indexing, its order the hash seed's
    pictures = (picture for _ in range(2))
    with pytest.raises(TypeError, match="^images must be a sequence of PIL images, got generator$"):
        zero_shot.image_features(pretrained, pictures)
    with pytest.raises(TypeError, match="^texts must be a sequence of str, got map$"):
        zero_shot.text_features(pretrained, map(str.lower, ["A red circle", "A blue square"]))
    with pytest.raises(TypeError, match="^texts must be a sequence of str, got set$"):
        zero_shot.text_features(pretrained, {"a red circle", "a blue square"})
    assert zero_shot.image_features(pretrained, (picture, picture)).shape == (2, 20)  # a tuple is a sequence
    with pytest.raises(TypeError, match="checkpoint: the path must be a str or os.PathLike, got int"):
        load_pretrained(123)  # was Python's own "expected str, bytes or os.PathLike object"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-size", "0"], "argument --batch-size: expected an int >= 1, got 0"),  # was range()'s error, late
        (["--json", "/nonexistent/dir/out.json"], "argument --json: expected a file path in a writable directory"),
        (["--template", "a {} {colour}"], "argument --template: expected one '{}'"),  # was a KeyError traceback
        (["--template", "a {} and a {}"], "argument --template: expected one '{}'"),
        (["--template", "a {} }"], "argument --template: expected one '{}'"),
        (["--dtype", "fp16"], "argument --dtype: invalid choice: 'fp16'"),
        (["--top-k", "0"], "argument --top-k: expected an int >= 1, got 0"),
        (["--all-probabilities", "{empty}/p.json"], "argument --all-probabilities: expected a .npy file path, got"),
        (
            ["--captions", __file__, "--all-probabilities", "{empty}/p.npy"],
            "argument --all-probabilities: for --classes (classification) only",
        ),
        # refused after the checkpoint was loaded, or (an empty name) silently dropped
        (["--classes", "red circle"], "argument --classes: expected at least two distinct non-empty names"),
        (
            ["--classes", "cat,,dog"],
            "argument --classes: expected non-empty names, got an empty one at position 1 of 3",
        ),
        # (was the whole list, 1000 names for ImageNet's, without saying which repeat)
        (
            ["--classes", "cat,dog,cat,crane,crane"],
            "argument --classes: expected distinct names, got 2 repeated of the 5: ['cat', 'crane']",
        ),
        (["--images", "/nowhere"], "argument --images: expected an image folder, got '/nowhere'"),
        (["--captions", "/nowhere.jsonl"], "argument --captions: expected a .jsonl or .tsv captions file"),
        (["--captions", __file__, "--template", "a {}"], "argument --template: for --classes"),  # was ignored
        # found after the checkpoint was loaded, naming root or captions
        (["--images", "{empty}"], "argument --images: expected an image folder, got '{empty}' (no file ending in"),
        (["--captions", "{empty}/c.tsv"], "argument --captions: captions must list at least one image-caption pair"),
        (
            ["--captions", __file__],
            "argument --captions: captions must be a .jsonl, .json, .csv, .tsv or .parquet file",
        ),
    ],
)
def test_bad_arguments_exit_2_naming_them_before_any_work(export, images, extra, message, capsys, tmp_path):
    (tmp_path / "c.tsv").write_text("\n")  # a folder without images, a captions file without pairs
    extra, message = [e.replace("{empty}", str(tmp_path)) for e in extra], message.replace("{empty}", str(tmp_path))
    command = ["--checkpoint", "/nonexistent", "--images", str(images)]
    mode = [] if {"--classes", "--captions"} & set(extra) else ["--classes", ",".join(CLASSES)]
    command += mode + extra
    with pytest.raises(SystemExit) as exit_info:
        zero_shot.main(command)  # the checkpoint is never opened: the arguments are refused first
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_diverged_checkpoint_is_refused_not_classified(tmp_path, images):
    from safetensors.torch import load_file, save_file

    write_tiny_export(tmp_path)
    weights = tmp_path / "weights.safetensors"
    state = load_file(str(weights))
    key = next(k for k in state if k.endswith("image_projection.weight"))
    args = ["--checkpoint", str(tmp_path), "--images", str(images), "--classes", ",".join(CLASSES)]
    out = tmp_path / "result.json"
    state[key] = torch.full_like(state[key], float("nan"))  # refused as the weights load
    save_file(state, str(weights))
    with pytest.raises(
        ValueError, match=rf"expected finite weights, got NaN or \+inf values in 1 tensors, first \['{key}'\]"
    ):
        zero_shot.main([*args, "--json", str(out)])
    state[key] = torch.full_like(state[key], 3e38)  # finite weights whose features overflow
    save_file(state, str(weights))
    with pytest.raises(ValueError, match="image_features holds NaN or infinite values"):
        zero_shot.main([*args, "--json", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("value", [1e10, 100.0])  # exp(100) overflows float32 (a NaN is refused as it loads)
def test_a_checkpoint_whose_temperature_is_not_finite_is_refused_before_any_image(tmp_path, images, value):
    from safetensors.torch import load_file, save_file

    write_tiny_export(tmp_path)
    weights = tmp_path / "weights.safetensors"
    state = load_file(str(weights))
    state["model.logit_scale"] = torch.full_like(state["model.logit_scale"], value)
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"exp\(logit_scale\) holds NaN or infinite values"):
        zero_shot.classify_folder(load_pretrained(tmp_path), str(tmp_path / "no such folder"), CLASSES)


PHOTO_CLASSES = ["Cat", "coffee cup", "Rocket", "astronaut", "woman in space"]


@torch.no_grad()
def _transformers_zero_shot(directory, files: list, templates) -> torch.Tensor:
    """(N, C) zero-shot probabilities as a transformers user computes them with FlavaProcessor + FlavaModel:
    the images' and prompts' projected CLS, L2-normalised, each class the normalised mean of its prompts,
    softmax over exp(logit_scale) x cosine similarity."""
    processor = FlavaProcessor.from_pretrained(directory)
    model = FlavaModel.from_pretrained(directory).eval()
    pixels = processor(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt")["pixel_values"]
    images = F.normalize(model.get_image_features(pixel_values=pixels)[:, 0], dim=-1)
    classes = []
    for name in PHOTO_CLASSES:
        text = processor(text=[t.format(name) for t in templates], padding=True, return_tensors="pt")
        prompts = F.normalize(model.get_text_features(**text)[:, 0], dim=-1)
        classes.append(F.normalize(prompts.mean(dim=0), dim=-1))
    return (model.logit_scale.exp() * images @ torch.stack(classes).T).softmax(dim=1)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecations
@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_probabilities_equal_transformers_on_a_hugging_face_directory(tmp_path, lowercase):
    directory, folder, out = tmp_path / "flava", tmp_path / "photos", tmp_path / "result.json"
    write_hf_flava(directory, lowercase=lowercase)
    folder.mkdir()
    for name, photo in photos().items():  # non-square real photos, one greyscale
        photo.save(folder / f"{name}.png")
    command = ["--checkpoint", str(directory), "--images", str(folder)]
    every = tmp_path / "probabilities.npy"  # (the --json holds each image's top-k only)
    command += ["--classes", ",".join(PHOTO_CLASSES), "--json", str(out), "--all-probabilities", str(every)]
    finished = run_script("-m torchflava.zero_shot", command)  # (a process forked with the imports done)
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads(out.read_text())
    files = list(result["predictions"])  # the rows' order
    assert len(files) == 6 and result["skipped"] == 0 and result["probabilities_file"] == str(every)
    ours = torch.from_numpy(numpy.load(every))
    expected = _transformers_zero_shot(directory, [folder / f for f in files], zero_shot.DEFAULT_TEMPLATES)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
    assert float(expected.max() - expected.min()) > 0.05  # not uniform: the comparison has teeth
    assert [result["predictions"][f] for f in files] == [PHOTO_CLASSES[int(i)] for i in expected.argmax(dim=1)]
    # With the resize + centre crop used before (#14), the probabilities differ.
    pretrained = load_pretrained(directory)
    before = pretrained._replace(image_transform=EvalImageTransform(pretrained.image_size))
    features = zero_shot.image_features(before, [Image.open(folder / f) for f in files])
    classes = zero_shot.class_embeddings(before, PHOTO_CLASSES)
    old = (pretrained.model.logit_scale.detach().exp() * features @ classes.T).softmax(dim=1)
    assert float((old - expected).abs().max()) > 1e-3


def write_hf_clip(directory, *, image_size: int = 32) -> None:
    """A Hugging Face CLIPModel directory as the Hub holds one: random tiny weights, CLIP's real
    vocabulary (vocab.json + merges.txt from the merges file open_clip ships) and a CLIP image processor."""
    import gzip

    import open_clip
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from torchflava.data.clip_tokenizer import CLIPTokenizer as OurTokenizer

    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(tower, vocab_size=49408, max_position_embeddings=77),
        vision_config=dict(tower, image_size=image_size, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(directory)
    bpe = open_clip.tokenizer.default_bpe()
    vocab = OurTokenizer.from_bpe(bpe)._tokenizer.get_vocab(with_added_tokens=False)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:48895]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    CLIPTokenizer(directory / "vocab.json", directory / "merges.txt").save_pretrained(directory)
    size = dict(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    CLIPImageProcessor(**size).save_pretrained(directory)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecations
def test_clip_zero_shot_and_retrieval_equal_transformers_on_a_hugging_face_clip_directory(tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    directory, folder = tmp_path / "clip", tmp_path / "photos"
    write_hf_clip(directory)
    folder.mkdir()
    pictures = photos()
    for name, photo in pictures.items():
        photo.save(folder / f"{name}.png")
    pretrained = load_pretrained(directory)
    assert checkpoint_layout(directory).family == "clip" and pretrained.text_length == 77
    templates = ("a photo of a {}.", "a {}.")
    result = zero_shot.classify_folder(pretrained, str(folder), PHOTO_CLASSES, templates)
    files, ours = list(result["predictions"]), _every_probability(result)

    processor, model = CLIPProcessor.from_pretrained(directory), CLIPModel.from_pretrained(directory).eval()
    with torch.no_grad():
        images = [Image.open(folder / f).convert("RGB") for f in files]
        image = F.normalize(model.get_image_features(**processor(images=images, return_tensors="pt")), dim=-1)
        classes = []
        for name in PHOTO_CLASSES:
            text = processor(text=[t.format(name) for t in templates], padding=True, return_tensors="pt")
            classes.append(F.normalize(F.normalize(model.get_text_features(**text), dim=-1).mean(dim=0), dim=-1))
        expected = (model.logit_scale.exp() * image @ torch.stack(classes).T).softmax(dim=1)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
    assert float(expected.max() - expected.min()) > 0.01  # not uniform: the comparison has teeth

    captions = tmp_path / "captions.tsv"
    captions.write_text("".join(f"{name}.png\ta picture called {name}\n" for name in pictures))
    recall = zero_shot.retrieval(pretrained, str(folder), str(captions))
    with torch.no_grad():
        names = sorted(pictures)
        image = model.get_image_features(
            **processor(images=[Image.open(folder / f"{n}.png").convert("RGB") for n in names], return_tensors="pt")
        )
        text = processor(text=[f"a picture called {n}" for n in names], padding=True, return_tensors="pt")
        reference = retrieval_recall(
            F.normalize(image, dim=-1), F.normalize(model.get_text_features(**text), dim=-1), ks=(1, 5)
        )
    assert {k: recall[k] for k in reference} == pytest.approx(reference)


def test_clip_zero_shot_equals_open_clip_on_an_open_clip_hub_directory(tmp_path):
    """open_clip's own pipeline (its image_transform, tokenizer and model) on the photos, against the
    zero-shot command on its Hub directory: the images were preprocessed with the recipes' bilinear
    transform before (probabilities up to 0.07 off on these random weights)."""
    import open_clip
    from open_clip.transform import image_transform

    from tests.models.clip.test_convert_weights import OPEN_CLIP_CFG, _open_clip_hub_directory

    directory, folder = tmp_path / "open_clip", tmp_path / "photos"
    cfg = dict(OPEN_CLIP_CFG, text_cfg=dict(OPEN_CLIP_CFG["text_cfg"], vocab_size=49408, context_length=77))
    reference = _open_clip_hub_directory(directory, cfg)
    write_hf_clip(tmp_path / "hf")  # the tokenizer files such a directory holds: CLIP's real vocabulary
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(tmp_path / "hf" / name, directory / name)
    folder.mkdir()
    for name, photo in photos().items():
        photo.save(folder / f"{name}.png")
    templates = ("a photo of a {}.", "a {}.")
    result = zero_shot.classify_folder(load_pretrained(directory), str(folder), PHOTO_CLASSES, templates)
    files, ours = list(result["predictions"]), _every_probability(result)

    preprocess, tokenizer = image_transform(32, is_train=False), open_clip.get_tokenizer("ViT-B-16")
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.open(folder / f).convert("RGB")) for f in files])
        image = reference.encode_image(pixels, normalize=True)
        classes = [
            F.normalize(
                reference.encode_text(tokenizer([t.format(n) for t in templates]), normalize=True).mean(0), dim=-1
            )
            for n in PHOTO_CLASSES
        ]
        expected = (reference.logit_scale.exp() * image @ torch.stack(classes).T).softmax(dim=1)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert float(expected.max() - expected.min()) > 0.01  # not uniform: the comparison has teeth


def test_bf16_packs_every_linear_once_and_classifies_within_bf16_rounding_of_fp32(export, images):
    from torchflava.modules.layers import PackedLinear

    directory, _ = export
    command = ["--checkpoint", str(directory), "--images", str(images), "--classes", ",".join(CLASSES)]
    fp32, bf16 = zero_shot.main(command), zero_shot.main([*command, "--dtype", "bf16"])
    assert bf16["num_inputs"] == fp32["num_inputs"] == 12 and bf16["skipped"] == 1
    for file, top in fp32["top"].items():
        for name, p in top:  # (3 classes: the top-5 holds them all)
            assert abs(dict(bf16["top"][file])[name] - p) < 0.02
    pretrained = load_pretrained(directory, dtype=torch.bfloat16)
    assert pretrained.dtype == torch.bfloat16 and not pretrained.model.training
    linears = [m for m in pretrained.model.modules() if isinstance(m, (torch.nn.Linear, PackedLinear))]
    assert linears and all(isinstance(m, PackedLinear) for m in linears)
    pictures = [
        Image.open(images / "red circle" / f).convert("RGB")
        for f in sorted(os.listdir(images / "red circle"))[:3]
        if f != "broken.png"
    ]
    ours = zero_shot.image_features(pretrained, pictures)
    reference = zero_shot.image_features(load_pretrained(directory), pictures)
    assert ours.dtype == torch.float32 and torch.allclose(ours, reference, atol=3e-2)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(pictures)), atol=1e-6)  # normalised in fp32
    assert not any(p.requires_grad for p in pretrained.model.parameters())  # frozen: callable with grad on
    with pretrained.precision():
        assert pretrained.model.encode_image(torch.randn(1, 3, 32, 32)).shape[0] == 1
    assert not torch.equal(ours, reference)  # it did run in bf16
    texts = zero_shot.text_features(pretrained, ["a red circle", "a blue square"])
    assert texts.dtype == torch.float32
    assert torch.allclose(
        texts, zero_shot.text_features(load_pretrained(directory), ["a red circle", "a blue square"]), atol=3e-2
    )
    with pytest.raises(ValueError, match=r"dtype must be one of \(torch.float32, torch.bfloat16\), got torch.float16"):
        load_pretrained(directory, dtype=torch.float16)


def test_bf16_where_the_cpu_has_no_native_bf16_warns_that_it_is_slower(export, monkeypatch):
    from torchflava import pretrained as pretrained_module

    monkeypatch.setattr(pretrained_module, "onednn_packing_available", lambda dtype: False)
    with pytest.warns(UserWarning, match="no native torch.bfloat16 matmuls; slower than fp32"):
        load_pretrained(export[0], dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_clip")
    write_hf_clip(directory)
    return directory


def _edited_clip(hf_clip, tmp_path, edit):
    directory = tmp_path / "clip"
    shutil.copytree(hf_clip, directory)
    edit(directory)
    return directory


def _config_edit(tower, key, value):
    def edit(directory):
        config = json.loads((directory / "config.json").read_text())
        config[tower][key] = value
        (directory / "config.json").write_text(json.dumps(config))

    return edit


CLIP_CONFIG_ERRORS = [  # (edit, the end of the message); each names config.json
    (_config_edit("vision_config", "image_size", 32.0), "clip_model: image_size must be an int, got float"),
    (_config_edit("text_config", "hidden_size", "32"), "clip_model: text_width must be an int, got str"),
    (
        _config_edit("vision_config", "layer_norm_eps", 0),
        "expected one hidden_act, layer_norm_eps, attention_dropout for",
    ),
    (_config_edit("vision_config", "image_size", 0), "clip_model: image_size must be >= 1, got 0"),
]


@pytest.mark.parametrize("edit, message", CLIP_CONFIG_ERRORS, ids=["float size", "str width", "eps", "size 0"])
def test_a_bad_clip_config_value_is_one_line_naming_the_file(hf_clip, tmp_path, edit, message, capsys):
    """Was a TypeError traceback from the commands (exit 1), or a message naming no file (through
    load_pretrained, which passed the config's values as arguments); the image size 0 was blamed on
    preprocessor_config.json."""
    directory = _edited_clip(hf_clip, tmp_path, edit)
    with pytest.raises(ValueError, match=rf"^checkpoint: {re.escape(str(directory / 'config.json'))}: .*"):
        load_pretrained(directory)
    with pytest.raises(ValueError) as error:
        load_pretrained(directory)
    assert message in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "images").mkdir()  # a folder with an image: one without is refused before the checkpoint is read
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "0.png")
    result = run_script(
        "-m torchflava.zero_shot",
        ["--checkpoint", str(directory), "--images", str(tmp_path / "images"), "--classes", "a,b"],
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_an_export_config_naming_pretrained_and_a_merges_file_not_utf8_are_named(hf_clip, tmp_path):
    from torchflava.utils.checkpoint import save_state_dict

    loaded, out = load_pretrained(hf_clip), tmp_path / "export"  # an export: clip_model's arguments and weights
    out.mkdir()
    save_state_dict(loaded.model.state_dict(), out / "clip.safetensors")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(hf_clip / name, out / name)
    (out / "clip_config.json").write_text(json.dumps(loaded.kwargs))
    load_pretrained(out)  # as written, it loads
    (out / "clip_config.json").write_text(json.dumps({**loaded.kwargs, "pretrained": "elsewhere"}))
    with pytest.raises(ValueError, match=r"^checkpoint: .*clip_config.json states arguments clip_model does not"):
        load_pretrained(out)  # was clip_model()'s TypeError: got multiple values for keyword argument 'pretrained'
    broken = _edited_clip(hf_clip, tmp_path, lambda d: (d / "merges.txt").write_bytes(b"#version: 0.2\n\xff\xfe a b\n"))
    with pytest.raises(ValueError, match=rf"^merges.txt: {re.escape(str(broken / 'merges.txt'))} is not UTF-8 text"):
        load_pretrained(broken)


def test_feature_functions_refuse_a_string_no_input_and_a_bad_batch_size(export):
    """A str was split into letters (12 rows for 'a red circle'); batch_size 0 failed in range(), [] in torch.cat."""
    pretrained = load_pretrained(export[0])
    with pytest.raises(TypeError, match="texts must be a sequence of str, got str"):
        zero_shot.text_features(pretrained, "a red circle")
    with pytest.raises(ValueError, match="texts must not be empty"):
        zero_shot.text_features(pretrained, [])
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        zero_shot.text_features(pretrained, ["a red circle"], batch_size=0)
    with pytest.raises(TypeError, match="batch_size must be an int, got float"):
        zero_shot.image_features(pretrained, [Image.new("RGB", (32, 32))], batch_size=2.0)
    with pytest.raises(ValueError, match="images must not be empty"):
        zero_shot.image_features(pretrained, [])


@pytest.mark.parametrize(
    "class_names, templates, error, message",
    [
        (
            ["red circle", ""],
            ("a {}",),
            ValueError,
            "class_names must be distinct non-empty names, got ['red circle', '']",
        ),
        (
            ["red circle", "blue square"],
            ["a photo"],
            ValueError,
            "templates must contain one '{}' (or '{c}') for the class name and no other braces, got ['a photo']",
        ),
        ("ab", ("a {}",), TypeError, "class_names must be a sequence of str (a list or tuple, in order), got str"),
        (  # one embedding for both: every red circle went to the first, and the accuracy counted a tie
            ["red circle", "blue square", "Red  Circle"],
            ("a {}", "a large {}"),
            ValueError,
            "class_names must differ in what the tokenizer keeps, got 'red circle' and 'Red  Circle': their prompts "
            "are the same tokens (the tokenizer's case, spacing, unknown characters or truncation), so no image could "
            "be told apart between them",
        ),
        (
            {"red circle", "blue square"},
            ("a {}",),
            TypeError,
            "class_names must be a sequence of str (a list or tuple, in order), got set",
        ),
    ],
)
def test_classify_folder_checks_classes_and_templates_before_any_image_is_encoded(
    export, images, monkeypatch, class_names, templates, error, message
):
    """These were zero_shot_classifier's errors, raised after every image had been encoded."""
    pretrained = load_pretrained(export[0])
    monkeypatch.setattr(zero_shot, "image_features", lambda *a, **k: pytest.fail("encoded the images"))
    with pytest.raises(error) as info:
        zero_shot.classify_folder(pretrained, str(images), class_names, templates)
    assert str(info.value) == message


def test_feature_functions_run_a_training_model_in_eval_mode_and_give_its_modes_back(hf_clip, tmp_path):
    """Features of a model being fine-tuned (dropout on) are its eval-mode features: they were drawn through
    the attention dropout, different on every call."""
    directory = _edited_clip(hf_clip, tmp_path, _config_edit("vision_config", "attention_dropout", 0.5))
    _config_edit("text_config", "attention_dropout", 0.5)(directory)
    reference = load_pretrained(directory)
    pretrained = load_pretrained(directory)
    pretrained.model.train()
    frozen = next(m for m in pretrained.model.modules() if m is not pretrained.model)
    frozen.eval()
    modes = [m.training for m in pretrained.model.modules()]
    pictures = [Image.new("RGB", (40, 36), colour) for colour in ("red", "navy", "olive")]
    texts = ["a red circle", "a photo of a blue square"]
    for _ in range(2):
        torch.testing.assert_close(
            zero_shot.image_features(pretrained, pictures), zero_shot.image_features(reference, pictures)
        )
        torch.testing.assert_close(
            zero_shot.text_features(pretrained, texts), zero_shot.text_features(reference, texts)
        )
    assert [m.training for m in pretrained.model.modules()] == modes
    assert pretrained.model.training and not frozen.training


def karpathy_file(images, tmp_path, splits) -> tuple:
    """dataset_coco.json-style split file over the fixture's images: one image per split given, five
    sentences each; (the file, the images of split "test", their captions in order)."""
    files = sorted(p.relative_to(images) for p in images.glob("*/*.png") if p.name != "broken.png")[: len(splits)]
    entries, test_files, test_captions = [], [], []
    for number, (file, split) in enumerate(zip(files, splits)):
        raws = [f"caption {k} of {file.parent.name} number {number}" for k in range(5)]
        sentences = [{"tokens": raw.split(), "raw": raw, "imgid": number} for raw in raws]
        entries.append({"filepath": file.parent.name, "filename": file.name, "split": split, "sentences": sentences})
        if split == "test":
            test_files.append(images / file)
            test_captions += raws
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path, test_files, test_captions


def test_retrieval_on_a_karpathy_split_counts_each_test_image_once_with_its_five_captions(
    export, images, tmp_path, capsys
):
    directory, _ = export
    captions, files, texts = karpathy_file(images, tmp_path, ["test", "train", "test", "val", "test", "test"])
    pretrained = load_pretrained(directory)
    result = zero_shot.retrieval(pretrained, str(images), str(captions), split="test", batch_size=3)
    assert result["num_images"] == 4 and result["num_pairs"] == 20 and result["skipped"] == 0
    image_features = zero_shot.image_features(pretrained, [Image.open(f).convert("RGB") for f in files])
    text_features = zero_shot.text_features(pretrained, texts)
    expected = retrieval_recall(image_features, text_features, ks=(1,), image_of_text=torch.arange(20) // 5)
    assert {k: result[k] for k in expected} == pytest.approx(expected)
    # image->text ranks the 20 captions: its R@5 and R@10 are reported (they were not, K being capped at the
    # 4 images); text->image ranks the 4 images, so none past R@1 (R@5 would be 1.0 whatever the model)
    five = retrieval_recall(image_features, text_features, ks=(1, 5, 10), image_of_text=torch.arange(20) // 5)
    assert sorted(k for k in result if "R@" in k and "chance" not in k) == sorted(five)
    assert sorted(five) == ["image_to_text_R@1", "image_to_text_R@10", "image_to_text_R@5", "text_to_image_R@1"]
    assert {k: result[k] for k in five} == pytest.approx(five)
    assert result["image_to_text_R@5_chance"] == pytest.approx(1 - math.comb(15, 5) / math.comb(20, 5))
    assert "text_to_image_R@5_chance" not in result
    command = ["--checkpoint", str(directory), "--images", str(images), "--captions", str(captions)]
    capsys.readouterr()
    assert zero_shot.main([*command, "--split", "test"]) == {**result, "weights": str(pretrained.weights)}
    printed = capsys.readouterr().out
    chance = percent(1 - math.comb(15, 10) / math.comb(20, 10))  # 98.4%
    assert f"  image_to_text_R@10: {percent(result['image_to_text_R@10'])}  (chance {chance})\n" in printed
    assert "text_to_image_R@5" not in printed
    everything = zero_shot.main(command)  # no --split: every split, said before the checkpoint loads
    assert everything["num_images"] == 6 and everything["num_pairs"] == 30
    warning = (
        f"warning: {captions} is a Karpathy split file and no --split was given: the 30 captions of every split "
        "(train included) are evaluated; --split test keeps the test set"
    )
    assert capsys.readouterr().err.splitlines()[0] == warning
    # image->text's chance was reported as text->image's, 5 / 6: with five captions of 30 an image misses
    # the first 5 with the chance C(25, 5) / C(30, 5)
    assert everything["text_to_image_R@5_chance"] == pytest.approx(5 / 6)
    assert everything["image_to_text_R@5_chance"] == pytest.approx(1 - math.comb(25, 5) / math.comb(30, 5))
    assert "R@5_chance" not in everything


def test_retrieval_chance_is_that_of_every_ranking_of_the_texts_equally_likely():
    """Counted over every order of 5 texts, 3 images holding 1, 3 and 1 of them."""
    owners = [0, 1, 1, 1, 2]  # the image of each text
    orders = list(itertools.permutations(range(5)))
    chance = zero_shot.retrieval_chance([1, 3, 1], 5, [1, 2, 3])
    for k in (1, 2, 3):
        found = sum(any(owners[t] == image for t in order[:k]) for order in orders for image in range(3))
        assert chance[f"image_to_text_R@{k}_chance"] == pytest.approx(found / (3 * len(orders)))
        assert chance[f"text_to_image_R@{k}_chance"] == pytest.approx(k / 3)
    assert chance["image_to_text_R@3_chance"] == pytest.approx((0.6 + 1 + 0.6) / 3)  # 1 - C(4, 3) / C(5, 3) = 0.6


def test_retrieval_on_an_open_clip_csv_of_absolute_paths_without_images(export, images, tmp_path):
    directory, _ = export
    files = sorted(p for p in images.glob("*/*.png") if p.name != "broken.png")[:4]
    rows = [f'{i},"a shape, number {i}\nof {f.parent.name}",{f}' for i, f in enumerate(files)]
    captions = tmp_path / "train.csv"
    captions.write_text("key,title,filepath\n" + "\n".join(rows) + "\n")
    result = zero_shot.main(["--checkpoint", str(directory), "--captions", str(captions)])  # no --images
    assert result["num_images"] == 4 and result["num_pairs"] == 4 and result["skipped"] == 0
    pretrained = load_pretrained(directory)
    image_features = zero_shot.image_features(pretrained, [Image.open(f).convert("RGB") for f in files])
    texts = [f"a shape, number {i}\nof {f.parent.name}" for i, f in enumerate(files)]
    expected = retrieval_recall(image_features, zero_shot.text_features(pretrained, texts), ks=(1,))
    assert {k: result[k] for k in expected} == pytest.approx(expected)
    tsv = tmp_path / "pairs.tsv"  # custom columns, named on the command line
    tsv.write_text("caption text\tpath\n" + "".join(f"{t.replace(chr(10), ' ')}\t{f}\n" for t, f in zip(texts, files)))
    command = [
        "--checkpoint",
        str(directory),
        "--captions",
        str(tsv),
        "--image-key",
        "path",
        "--text-key",
        "caption text",
    ]
    assert zero_shot.main(command)["num_pairs"] == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--classes", "a,b", "--split", "test"], "arguments --split, --image-key and --text-key: for --captions"),
        (["--classes", "a,b", "--image-key", "x"], "arguments --split, --image-key and --text-key: for --captions"),
        (["--classes", "a,b", "--no-images"], "argument --images: required for --classes (classification)"),
    ],
)
def test_retrieval_arguments_are_refused_with_classification_before_any_work(images, extra, message, capsys):
    command = ["--checkpoint", "/nonexistent"] + ([] if "--no-images" in extra else ["--images", str(images)])
    with pytest.raises(SystemExit) as exit_info:
        zero_shot.main(command + [e for e in extra if e != "--no-images"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_captions_file_of_the_wrong_shape_is_refused_before_the_checkpoint_loads(images, tmp_path, capsys):
    captions, _, _ = karpathy_file(images, tmp_path, ["test", "train"])
    command = ["--checkpoint", "/nonexistent", "--images", str(images), "--captions", str(captions)]
    with pytest.raises(SystemExit) as exit_info:
        zero_shot.main([*command, "--split", "tset"])  # (the checkpoint, which does not exist, is never opened)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2
    assert error.startswith("python -m torchflava.zero_shot: error: argument --split: split must name splits of")
    assert "none of ['tset'] is a split of" in error
    absolute = tmp_path / "absolute.csv"
    absolute.write_text(f"filepath,title\n{images / 'red circle' / 'x.png'},a caption\n")
    with pytest.raises(SystemExit):
        zero_shot.main(["--checkpoint", "/nonexistent", "--images", str(images), "--captions", str(absolute)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("python -m torchflava.zero_shot: error: argument --images: ")  # (what to leave out)
    assert re.search(
        r"is absolute \(e\.g\. .*\); give no root \(root=None; the retrieval command without --images\)", error
    )
    columns = tmp_path / "columns.csv"
    columns.write_text("path,text\nred circle/x.png,a caption\n")
    with pytest.raises(SystemExit):  # a column the header lacks: named after the option that gave it
        zero_shot.main(
            ["--checkpoint", "/nonexistent", "--images", str(images), "--captions", str(columns), "--image-key", "file"]
        )
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("python -m torchflava.zero_shot: error: argument --image-key: "), error
    with pytest.raises(SystemExit):  # --text-key alone: the image column, no default of which the header has
        zero_shot.main(
            ["--checkpoint", "/nonexistent", "--images", str(images), "--captions", str(columns), "--text-key", "text"]
        )
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        "python -m torchflava.zero_shot: error: argument --image-key: captions must start with a comma-separated "
        f"header row naming the columns 'image' (or open_clip's 'filepath') and 'text'; line 1 of {str(columns)!r} "
        "is ['path', 'text']"
    )


def test_a_split_name_the_karpathy_file_lacks_beside_one_it_holds_is_refused(images, tmp_path, capsys):
    """Found by an adversarial review: --split test,tset (a typo) evaluated the test images alone, silently
    (only a --split of no name the file holds was refused); the recipes refuse such a name."""
    captions, _, _ = karpathy_file(images, tmp_path, ["test", "train", "val"])
    command = ["--checkpoint", "/nonexistent", "--images", str(images), "--captions", str(captions)]
    with pytest.raises(SystemExit) as exit_info:
        zero_shot.main([*command, "--split", "test,tset"])  # (the checkpoint, which does not exist, is never opened)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2
    assert error == (
        "python -m torchflava.zero_shot: error: argument --split: split must name splits of the file, 'tset' is not a "
        f"split of {str(captions)!r} (its splits: ['test', 'train', 'val'])"
    )
    with pytest.raises(
        ValueError, match=r"^split must .* 'tset' is not a split of .* \(its splits: \['test', 'train', 'val'\]\)"
    ):
        zero_shot.retrieval(None, str(images), str(captions), split=["test", "tset"])
    for value in ("", "test,,val"):  # (refused naming --captions, the split check's ValueError having no argument)
        with pytest.raises(SystemExit) as exit_info:
            zero_shot.main([*command, "--split", value])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            "python -m torchflava.zero_shot: error: argument --split: expected comma-separated split names (test, or "
            f"train,restval), got {value!r}"
        )


def test_classes_from_a_file_and_folders_matched_to_them_case_and_spaces_aside(export, images, tmp_path, capsys):
    """Folders named as the classes but for case gave no accuracy, silently; --classes @FILE (names one a
    line, so they may hold commas) did not exist; a file:// URL of the checkpoint was a false 'does not exist'."""
    directory, _ = export
    names = tmp_path / "classes.txt"
    names.write_text("\ufeff Red Circle \n\nBLUE SQUARE\ngreen triangle\n\n", encoding="utf-8")  # a BOM, blanks
    command = ["--checkpoint", directory.as_uri(), "--images", str(images), "--classes", f"@{names}"]
    result = zero_shot.main(command)
    assert result["classes"] == ["Red Circle", "BLUE SQUARE", "green triangle"]
    right = [name.casefold() == file.split("/")[0] for file, name in result["predictions"].items()]
    assert result["accuracy"] == pytest.approx(sum(right) / len(right))
    out, err = capsys.readouterr()
    assert f"accuracy {percent(result['accuracy'])}" in out and "warning" not in err
    names.write_text("red circle, large\nblue square\n", encoding="utf-8")  # a comma inside a name
    result = zero_shot.main(command)
    assert set(result["predictions"].values()) <= {"red circle, large", "blue square"} and "accuracy" not in result


def test_folders_matching_no_class_are_warned_of_in_one_line(export, images, capsys):
    """--classes "cat,dog" on folders named otherwise printed no accuracy line and no reason."""
    directory, _ = export
    result = zero_shot.main(["--checkpoint", str(directory), "--images", str(images), "--classes", "cat,dog"])
    assert "accuracy" not in result and result["num_inputs"] == 12
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warnings == [
        "warning: no accuracy: the image sub-folders ['blue square', 'green triangle', 'red circle'] match none of "
        "the classes ['cat', 'dog'] (each image should lie in a sub-folder named after its class)"
    ]
    assert zero_shot.folder_class("CAT ", ["cat", "dog"]) == 0 and zero_shot.folder_class("dog", ["Dog", "dog"]) == 1
    assert zero_shot.folder_class("DOG", ["Dog", "dog"]) is None  # two classes: neither is taken
    assert zero_shot.unmatched_folders_warning(["a.png", "b.png"], ["cat", "dog"]) is None  # no sub-folders at all


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\n  \n", "argument --classes: {file} holds no class name (expected one a line)"),
        # (was 'cannot read {file} as UTF-8 text (...)', not the expected/got shape --text @FILE's refusal has)
        (
            b"caf\xe9\ndog\n",
            "argument --classes: expected @FILE naming a UTF-8 file of class names, got '@{file}' (UnicodeDecodeError",
        ),
        (None, "argument --classes: expected @FILE naming a UTF-8 file of class names, got '@{file}' (not a file)"),
    ],
)
def test_a_classes_file_that_names_no_class_exits_2_naming_it(images, tmp_path, content, message, capsys):
    file = tmp_path / "classes.txt"
    if content is not None:
        file.write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        zero_shot.main(["--checkpoint", "/nonexistent", "--images", str(images), "--classes", f"@{file}"])
    assert exit_info.value.code == 2 and message.format(file=file) in capsys.readouterr().err


def test_folder_order_maps_synset_folders_to_the_classes_in_sorted_order(export, images, tmp_path, capsys):
    """ImageNet's validation folders are synsets (n01440764, ...) with the class names listed in their sorted
    order (torchvision's ImageFolder numbering): no folder names a class, so there was no accuracy."""
    directory, _ = export
    synsets = {"red circle": "n03", "blue square": "n01", "green triangle": "n02"}  # sorted: blue, green, red
    ordered = ["blue square", "green triangle", "red circle"]
    root = _synset_folders(images, tmp_path / "val", [synsets[name] for name in CLASSES])
    (root / "n04_empty").mkdir()  # an empty class folder still takes its place in the order
    names = tmp_path / "classes.txt"
    names.write_text("\n".join([*ordered, "yellow cross"]) + "\n")
    command = ["--checkpoint", str(directory), "--images", str(root), "--classes", f"@{names}", "--template", "a {}"]
    result = zero_shot.main([*command, "--folder-order"])
    by_name = zero_shot.main([*command[:3], str(images), *command[4:]])  # the same images in named folders
    assert result["accuracy"] == pytest.approx(by_name["accuracy"])
    truth = {synset: name for name, synset in synsets.items()}
    right = [truth[file.split("/")[0]] == name for file, name in result["predictions"].items()]
    assert result["accuracy"] == pytest.approx(sum(right) / len(right)) and len(right) == 12
    assert "accuracy" not in zero_shot.main(command)  # without the flag: the folders name no class
    capsys.readouterr()


def test_folder_order_takes_folders_named_by_class_id_in_number_order(tmp_path):
    """ImageNetV2 names its class folders 0 to 999 by class id: sorted as text, folder 10 was class 2 and 2 was
    class 12, so every class past the tenth was scored against another class's name, without a word."""
    from torchflava.data.readers import ImageFolder

    root = tmp_path / "v2"
    for number in range(12):
        (root / str(number)).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(root / str(number) / "a.png")
    assert zero_shot.ordered_folders(root, 12, ImageFolder(root)) == {str(i): i for i in range(12)}
    (root / "1").rename(root / "12")  # 0, 2, ..., 12: not the class ids 0 to 11, so torchvision's text order
    assert list(zero_shot.ordered_folders(root, 12, ImageFolder(root))) == sorted(str(i) for i in (0, *range(2, 13)))


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"n01": 1, "n02": 1}, "argument --folder-order: expected one sub-folder of {root} per class (3), got 2"),
        (
            {"n01": 1, "n02": 1, "n03": 1, ".": 1},
            "argument --folder-order: expected every image in a class sub-folder, got 1 at the top of {root}",
        ),
        ({"n01": 1, "n02": 1, "n03": 1}, None),
        # a hidden folder (Jupyter's, macOS's) is no class: its images are not listed either (it was counted,
        # so 3 classes' folders were refused as 4 sub-folders)
        ({"n01": 1, "n02": 1, "n03": 1, ".ipynb_checkpoints": 1}, None),
    ],
)
def test_folder_order_is_checked_before_the_checkpoint_loads(images, tmp_path, layout, message, capsys, monkeypatch):
    root = tmp_path / "val"
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shutil.copy(next((images / "red circle").glob("[0-9]*.png")), root / folder / f"{i}.png")
    monkeypatch.setattr(zero_shot, "command_pretrained", lambda *a, **k: pytest.fail("loaded") if message else None)
    command = ["--checkpoint", "unused", "--images", str(root), "--classes", "a,b,c", "--folder-order"]
    if message is None:  # a fitting layout gets as far as loading the checkpoint
        with pytest.raises(AttributeError):
            zero_shot.main(command)
        return
    with pytest.raises(SystemExit) as caught:
        zero_shot.main(command)
    assert caught.value.code == 2 and message.format(root=root) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        zero_shot.main(
            ["--checkpoint", "x", "--images", str(root), "--captions", str(images / "captions.jsonl"), "--folder-order"]
        )
    assert "argument --folder-order: for --classes (classification) only" in capsys.readouterr().err


def test_a_blank_line_between_class_names_read_in_class_id_order_is_refused(images, tmp_path, capsys, monkeypatch):
    """With --folder-order (and parquet or tar shard images) the i-th name of --classes @FILE is class id i: a blank
    line between names was skipped, every later name moved onto the next id without a word. Refused naming the
    line; trailing blank lines, and blank lines where classes are matched by folder name, still pass."""
    root = tmp_path / "val"
    for folder in ("n01", "n02", "n03"):
        (root / folder).mkdir(parents=True)
        shutil.copy(next((images / "red circle").glob("[0-9]*.png")), root / folder / "0.png")
    monkeypatch.setattr(zero_shot, "command_pretrained", lambda *a, **k: None)  # (AttributeError past the checks)
    names = tmp_path / "names.txt"
    names.write_text("\na\nb\n\nc\n\n")
    command = ["--checkpoint", "unused", "--images", str(root), "--classes", f"@{names}"]
    with pytest.raises(SystemExit) as caught:
        zero_shot.main([*command, "--folder-order"])
    assert caught.value.code == 2
    assert f"argument --classes: {names} line 4 is blank, between class names: read in class-id order" in (
        capsys.readouterr().err
    )
    with pytest.raises(AttributeError):  # matched by name: the blank line is nothing
        zero_shot.main(command)
    names.write_text("a\nb\nc\n\n")
    with pytest.raises(AttributeError):
        zero_shot.main([*command, "--folder-order"])
    names.write_text("\na\nb\nc\n")  # (a blank first line: before the names, test_a_blank_line_before_...)
    with pytest.raises(SystemExit):
        zero_shot.main([*command, "--folder-order"])
    assert f"argument --classes: {names} line 1 is blank, before the class names" in capsys.readouterr().err


def test_a_blank_line_before_class_names_read_in_class_id_order_is_refused(images, tmp_path, capsys):
    """A blank first line of a --classes @FILE read in class-id order was dropped, every name moved onto the id before
    its own without a word: CLIP_benchmark reads that classnames.txt with class 0 named '' (as WdsImages refuses it,
    line 1 blank), so --classes @classnames.txt gave the shards' class 1 images the name of class 0. Refused naming
    the line; trailing blank lines still pass."""
    root = wds_of(images, tmp_path / "wds_shapes", CLASSES)
    names = tmp_path / "names.txt"
    names.write_text("\n" + "".join(f"{name}\n" for name in CLASSES) + "\n")
    for given in ([str(root)], [str(root / "test" / "0.tar"), str(root / "test" / "1.tar")]):
        with pytest.raises(SystemExit) as caught:
            zero_shot.main(["--checkpoint", "/nonexistent", "--images", *given, "--classes", f"@{names}"])
        error = capsys.readouterr().err.splitlines()[-1]
        assert caught.value.code == 2 and f"argument --classes: {names} line 1 is blank, before the class names" in (
            error
        ), error


def test_classification_reports_the_class_balanced_and_top5_accuracy(export, images, capsys):
    directory, _ = export
    names = [*CLASSES, "yellow cross", "purple star", "orange heart"]  # six: top-5 is not right by count alone
    result = zero_shot.main(["--checkpoint", str(directory), "--images", str(images), "--classes", ",".join(names)])
    pretrained = load_pretrained(directory)
    from PIL import Image

    files = list(result["predictions"])
    features = zero_shot.image_features(pretrained, [Image.open(images / f).convert("RGB") for f in files])
    scores = features @ zero_shot.class_embeddings(pretrained, names).T
    truth = [names.index(f.split("/")[0]) for f in files]
    ranks = [int((row > row[t]).sum()) for row, t in zip(scores, truth)]  # (random features: no ties)
    assert result["top5_accuracy"] == pytest.approx(sum(r < 5 for r in ranks) / len(ranks))
    per_class = [sum(r == 0 for r, t in zip(ranks, truth) if t == c) / truth.count(c) for c in sorted(set(truth))]
    assert result["mean_per_class_accuracy"] == pytest.approx(sum(per_class) / len(per_class))
    assert f", mean per class {percent(result['mean_per_class_accuracy'])}, top-5 " in capsys.readouterr().out
    three = zero_shot.main(["--checkpoint", str(directory), "--images", str(images), "--classes", ",".join(CLASSES)])
    assert "top5_accuracy" not in three and "mean_per_class_accuracy" in three


def test_long_class_lists_are_shortened_in_the_warning_which_suggests_folder_order(export, images, tmp_path, capsys):
    """A thousand ImageNet names were all printed in the one-line warning; synset folders, as many as the
    classes, get the hint to number them with --folder-order."""
    directory, _ = export
    root = _synset_folders(images, tmp_path / "val", ["n01", "n02", "n03"])
    names = ["red", "blue", "green"]  # (words the tiny tokenizer knows)
    zero_shot.main(["--checkpoint", str(directory), "--images", str(root), "--classes", ",".join(names)])
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warning == [
        "warning: no accuracy: the image sub-folders ['n01', 'n02', 'n03'] match none of the classes ['red', "
        "'blue', 'green'] (each image should lie in a sub-folder named after its class; or --folder-order, if "
        "the i-th class is the i-th sub-folder in sorted order (ImageNet's synsets))"
    ]
    many = [f"class {i}" for i in range(1000)]
    text = zero_shot.unmatched_folders_warning(["n01/a.png"], many)
    assert (
        "['class 0', 'class 1', 'class 2', 'class 3', 'class 4', 'class 5', 'class 6', 'class 7', 'class 8', '...'] (1000 in all)"
        in text
    )
    assert "folder-order" not in text  # (one folder for 1000 classes; and no hint unless asked)


def test_retrieval_recalls_print_in_k_order(export, images, capsys):
    directory, _ = export
    zero_shot.main(
        ["--checkpoint", str(directory), "--images", str(images), "--captions", str(images / "captions.jsonl")]
    )
    printed = [line.split(":")[0].strip() for line in capsys.readouterr().out.splitlines() if "R@" in line]
    assert printed == [f"{d}_R@{k}" for k in (1, 5, 10) for d in ("image_to_text", "text_to_image")]


def test_class_prompts_are_encoded_text_batch_size_at_a_time(export, monkeypatch):
    """The command encoded every class prompt in one call (1000 ImageNet classes x 80 templates: 80,000
    prompts' activations at once); now TEXT_BATCH_SIZE at a time, the embeddings those of one call."""
    pretrained = load_pretrained(export[0])
    templates = ("a {}", "a big {}")
    whole = zero_shot.class_embeddings(pretrained, CLASSES, templates, batch_size=100)
    rows = []
    encode_text = pretrained.model.encode_text
    monkeypatch.setattr(
        pretrained.model, "encode_text", lambda ids, *a, **k: rows.append(len(ids)) or encode_text(ids, *a, **k)
    )
    monkeypatch.setattr(zero_shot, "TEXT_BATCH_SIZE", 4)
    batched = zero_shot.class_embeddings(pretrained, CLASSES, templates)
    assert rows == [4, 2]
    torch.testing.assert_close(batched, whole, rtol=0, atol=1e-6)


def test_a_names_file_maps_imagenet_synset_folders_and_tab_separated_folders_to_the_class_names(
    export, images, tmp_path, capsys
):
    """ImageNet's names file (LOC_synset_mapping.txt: 'n01440764 tench, Tinca tinca') was read as class
    names holding the synset ids: the prompts said 'a n01440764 tench, Tinca tinca' and no folder matched,
    so there was no accuracy (or, with --folder-order, prompts holding the ids). Each line now gives the
    folder and the name, in any order; FOLDER<TAB>NAME lines do the same for other datasets."""
    directory, _ = export
    root = _synset_folders(images, tmp_path / "val", ["n00000003", "n00000001", "n00000002"])
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("n00000003 red circle\nn00000002 green triangle\nn00000001 blue square\n")
    command = ["--checkpoint", str(directory), "--images", str(root), "--classes", f"@{mapping}"]
    result = zero_shot.main([*command, "--template", "a {}"])
    by_name = zero_shot.main(  # the same images in folders named after the classes
        ["--checkpoint", str(directory), "--images", str(images), "--classes", "red circle,green triangle,blue square"]
        + ["--template", "a {}"]
    )
    assert result["classes"] == ["red circle", "green triangle", "blue square"]
    assert sorted(result["predictions"].values()) == sorted(by_name["predictions"].values())
    assert result["accuracy"] == pytest.approx(by_name["accuracy"]) and result["num_inputs"] == 12
    assert result["mean_per_class_accuracy"] == pytest.approx(by_name["mean_per_class_accuracy"])
    tabbed = tmp_path / "classes.tsv"
    tabbed.write_text("n00000001\tblue square\nn00000003\t red circle\nn00000002\tgreen triangle\n")
    command[-1] = f"@{tabbed}"
    assert zero_shot.main([*command, "--template", "a {}"])["accuracy"] == pytest.approx(by_name["accuracy"])
    capsys.readouterr()
    for content, message in [
        (
            "n00000001\tblue square\nred circle\n",
            f"{tabbed}: expected every line FOLDER<TAB>NAME (as some are), got 'red circle'",
        ),
        ("a\tblue square\na\tred circle\n", "expected one line per folder, got ['a'] repeated"),
    ]:
        tabbed.write_text(content)
        with pytest.raises(SystemExit) as exit_info:
            zero_shot.main(["--checkpoint", "/nonexistent", *command[2:]])
        assert exit_info.value.code == 2 and f"error: argument --classes: {message}" in capsys.readouterr().err
    tabbed.write_text("n00000001\tblue square\nn00000002\tred circle\n")
    with pytest.raises(SystemExit):
        zero_shot.main(["--checkpoint", "/nonexistent", *command[2:], "--folder-order"])
    assert (
        "argument --folder-order: not with a --classes file that names each class's folder" in capsys.readouterr().err
    )
    pretrained = load_pretrained(directory)
    with pytest.raises(ValueError, match=r"^class_folders must name one folder per class \(2\), got 1$"):
        zero_shot.classify_folder(pretrained, str(root), ["red circle", "blue square"], class_folders=["n00000003"])


def test_templates_from_a_file_one_a_line_equal_the_same_templates_given_one_by_one(export, images, tmp_path, capsys):
    """CLIP's 80 ImageNet prompts come as a list: --template @FILE was taken as a template '@FILE' and
    refused for its missing '{}'; it now reads the file's lines as --classes @FILE does."""
    directory, _ = export
    templates = tmp_path / "templates.txt"
    templates.write_text("\ufeffa photo of a {}.\n\n  a drawing of the {}.  \n", encoding="utf-8")
    command = ["--checkpoint", str(directory), "--images", str(images), "--classes", ",".join(CLASSES)]
    output = tmp_path / "result.json"
    from_file = zero_shot.main([*command, "--template", f"@{templates}", "--template", "a {}", "--json", str(output)])
    one_by_one = zero_shot.main(
        [*command, "--template", "a photo of a {}.", "--template", "a drawing of the {}.", "--template", "a {}"]
    )
    assert from_file["top"] == one_by_one["top"]
    # the --json records the prompts it was made with (it held neither the templates nor the classes' order)
    assert from_file["templates"] == ["a photo of a {}.", "a drawing of the {}.", "a {}"]
    assert from_file["classes"] == CLASSES
    written = json.loads(output.read_text(encoding="utf-8"))
    assert written["templates"] == from_file["templates"] and written["classes"] == CLASSES
    pretrained = load_pretrained(directory)
    expected = zero_shot.classify_folder(
        pretrained, str(images), CLASSES, ["a photo of a {}.", "a drawing of the {}.", "a {}"]
    )
    assert from_file["accuracy"] == pytest.approx(expected["accuracy"])
    capsys.readouterr()
    for content, message in [
        ("\n \n", f"argument --template: {templates} holds no template (expected one a line)"),
        (
            "a {}\nno braces\n",
            "argument --template: expected one '{}' (or CLIP_benchmark's '{c}') for the class name and no other braces, got ['no braces']",
        ),
    ]:
        templates.write_text(content)
        with pytest.raises(SystemExit) as exit_info:
            zero_shot.main(["--checkpoint", "/nonexistent", *command[2:], "--template", f"@{templates}"])
        assert exit_info.value.code == 2 and capsys.readouterr().err.strip().endswith(f"error: {message}")


def test_a_folder_named_with_decomposed_accents_as_macos_writes_them_is_its_class(tmp_path, images, capsys):
    """A class folder unzipped from macOS spells 'café' as 'e' + a combining accent: it matched no class
    typed as one character (no accuracy, and a warning naming 'café' beside 'café')."""
    directory = tmp_path / "hf"
    write_hf_flava(directory, lowercase=True)
    decomposed, composed = tmp_path / "nfd", tmp_path / "nfc"
    for root, name in ((decomposed, "cafe\u0301"), (composed, "caf\u00e9")):
        shutil.copytree(images / "red circle", root / name)
        shutil.copytree(images / "blue square", root / "cat")
    command = ["--checkpoint", str(directory), "--classes", "caf\u00e9,cat", "--template", "a {}"]
    result = zero_shot.main([*command, "--images", str(decomposed)])
    expected = zero_shot.main([*command, "--images", str(composed)])
    assert "warning" not in capsys.readouterr().err
    assert result["num_inputs"] == expected["num_inputs"] == 10  # (the broken file skipped)
    assert result["accuracy"] == pytest.approx(expected["accuracy"])
    assert result["mean_per_class_accuracy"] == pytest.approx(expected["mean_per_class_accuracy"])
    assert sorted(result["predictions"].values()) == sorted(expected["predictions"].values())


def test_folders_named_with_underscores_are_the_classes_named_with_spaces(export, images, tmp_path, capsys):
    """Food-101's apple_pie/, Oxford Pets' american_bulldog/: folders named so matched no class written
    as the prompts want it ('apple pie'), so there was no accuracy (or the user put underscores in the
    prompts). A class spelt with the underscore itself is still matched first."""
    directory, _ = export
    root = tmp_path / "val"
    for name in CLASSES:
        shutil.copytree(images / name, root / name.replace(" ", "_"))
    command = ["--checkpoint", str(directory), "--classes", ",".join(CLASSES), "--template", "a {}"]
    result = zero_shot.main([*command, "--images", str(root)])
    expected = zero_shot.main([*command, "--images", str(images)])  # the same images in folders named with spaces
    assert "warning" not in capsys.readouterr().err
    assert result["accuracy"] == pytest.approx(expected["accuracy"]) and result["num_inputs"] == 12
    assert result["mean_per_class_accuracy"] == pytest.approx(expected["mean_per_class_accuracy"])
    assert zero_shot.folder_class("red_circle", ["red circle", "red_circle"]) == 1  # its very name first
    assert zero_shot.folder_class("red_circle", ["red circle", "Red Circle"]) is None  # two classes: neither


NUM_STUB_CLASSES, NUM_STUB_IMAGES, STUB_DIM = 1000, 2000, 16


@pytest.fixture(scope="module")
def stub_folder(tmp_path_factory):
    """2,000 tiny images in the folders of 10 of 1,000 classes; image i's colour spells i."""
    root = tmp_path_factory.mktemp("stub")
    names = [f"class {c:04d}" for c in range(NUM_STUB_CLASSES)]
    for i in range(NUM_STUB_IMAGES):
        folder = root / names[i % 10]
        folder.mkdir(exist_ok=True)
        Image.new("RGB", (2, 2), (i % 256, i // 256, 0)).save(folder / f"{i}.png")
    return root, names


def _stub_model(monkeypatch, generator_seed: int = 0):
    """A stub encoder (per-image features looked up by colour, random class embeddings) and a stub
    Pretrained that only has the logit scale; returns (pretrained, image table, class embeddings)."""
    generator = torch.Generator().manual_seed(generator_seed)
    table = F.normalize(torch.randn(NUM_STUB_IMAGES, STUB_DIM, generator=generator), dim=-1)
    classes = F.normalize(torch.randn(NUM_STUB_CLASSES, STUB_DIM, generator=generator), dim=-1)
    placed = torch.arange(0, NUM_STUB_IMAGES, 7)
    table[placed] = classes[placed % 10]  # every 7th image on its class: right and confident

    def features(pretrained, images, **kwargs):
        return table[[image.getpixel((0, 0))[0] + 256 * image.getpixel((0, 0))[1] for image in images]]

    monkeypatch.setattr(zero_shot, "image_features", features)
    monkeypatch.setattr(zero_shot, "class_embeddings", lambda pretrained, names, templates: classes)
    model = torch.nn.Module()
    model.logit_scale = torch.nn.Parameter(torch.tensor(math.log(100.0)))
    return type("StubPretrained", (), {"model": model})(), table, classes


def test_a_folder_of_2000_images_and_1000_classes_keeps_each_images_top_k_not_every_probability(
    stub_folder, monkeypatch, tmp_path
):
    """Every image's probability of every class was kept as a Python dict (~120 MB of RSS per 1000
    images at 1000 classes, ~6 GB for ImageNet's val) and written to --json; the result now holds each
    image's top-k as (N, k) tensors, and every probability only in a .npy when asked for."""
    from torchflava.evaluation import classification_accuracy, mean_per_class_accuracy

    root, names = stub_folder
    pretrained, table, classes = _stub_model(monkeypatch)
    every = tmp_path / "every.npy"
    result = zero_shot.classify_folder(pretrained, str(root), names, batch_size=256, probabilities_file=every)
    assert "probabilities" not in result and result["num_inputs"] == NUM_STUB_IMAGES
    assert result["top_classes"].shape == result["top_probabilities"].shape == (NUM_STUB_IMAGES, 5)
    assert result["top_classes"].dtype == torch.int64 and result["top_probabilities"].dtype == torch.float32
    # no per-image container of every class anywhere in the result: a few numbers an image
    per_image = [v for v in result.values() if isinstance(v, dict)]
    assert [len(v) for v in per_image] == [NUM_STUB_IMAGES] and all(isinstance(c, str) for c in per_image[0].values())
    files = list(result["predictions"])
    index = torch.tensor([int(Path(f).stem) for f in files])
    similarity = table[index] @ classes.T
    probabilities = (pretrained.model.logit_scale.detach().exp() * similarity).softmax(dim=1)
    expected_top = similarity.sort(dim=1, descending=True, stable=True).indices[:, :5]
    assert torch.equal(result["top_classes"], expected_top)
    torch.testing.assert_close(result["top_probabilities"], probabilities.gather(1, expected_top), rtol=0, atol=1e-6)
    assert [result["predictions"][f] for f in files] == [names[int(i)] for i in similarity.argmax(dim=1)]
    # the accuracy as the whole-matrix functions give it
    labels = torch.tensor([int(Path(f).parent.name.split()[1]) for f in files])
    assert result["accuracy"] == pytest.approx(classification_accuracy(table[index], classes, labels), abs=1e-7)
    assert result["accuracy"] >= 1 / 7  # (the images placed on their class)
    assert result["top5_accuracy"] == pytest.approx(
        classification_accuracy(table[index], classes, labels, k=5), abs=1e-7
    )
    expected_mean = mean_per_class_accuracy(table[index], classes, labels)
    assert result["mean_per_class_accuracy"] == pytest.approx(expected_mean, abs=1e-7)
    # every probability: a (N, C) float32 .npy, rows in the predictions' order, columns in the classes'
    written = numpy.load(every)
    assert written.shape == (NUM_STUB_IMAGES, NUM_STUB_CLASSES) and written.dtype == numpy.float32
    torch.testing.assert_close(torch.from_numpy(written), probabilities, rtol=0, atol=1e-6)
    assert result["probabilities_file"] == str(every) and [p.name for p in tmp_path.iterdir()] == ["every.npy"]
    # --json's form: each file's top-k [class, probability] pairs, most probable first
    written_json = zero_shot.json_result(result)
    assert "top_classes" not in written_json and "probabilities" not in written_json
    first = written_json["top"][files[0]]
    assert [name for name, _ in first] == [names[int(i)] for i in expected_top[0]]
    assert [p for _, p in first] == result["top_probabilities"][0].tolist()
    json.dumps(written_json)  # (JSON throughout)


def test_the_json_holds_each_images_top_k_pairs_in_order_and_top_k_chooses_how_many(export, images, tmp_path):
    directory, _ = export
    out = tmp_path / "result.json"
    command = ["--checkpoint", str(directory), "--images", str(images), "--classes", ",".join(CLASSES)]
    result = zero_shot.main([*command, "--json", str(out), "--top-k", "2"])
    written = json.loads(out.read_text())
    assert written == result and "probabilities" not in written and len(written["top"]) == 12
    for file, top in written["top"].items():
        assert len(top) == 2 and top[0][0] == written["predictions"][file] and top[0][1] >= top[1][1]
    three = zero_shot.main(command)  # the default 5, capped at the 3 classes: every class, summing to 1
    for file, top in three["top"].items():
        assert sorted(name for name, _ in top) == sorted(CLASSES) and top[:2] == written["top"][file]
        assert sum(p for _, p in top) == pytest.approx(1, abs=1e-6)
    assert three["accuracy"] == written["accuracy"]


@pytest.mark.parametrize(
    "outputs, message",
    [
        (["--json", "{classes}"], "argument --json: expected another file than --classes's"),
        (["--json", "{link}"], "argument --json: expected another file than --classes's"),  # (named with ..)
        (["--all-probabilities", "{npy}", "--json", "{npy}"], "argument --json: expected another file than --all-p"),
        (["--json", "{templates}"], "argument --json: expected another file than --template's"),
    ],
)
def test_an_output_naming_an_input_file_or_the_other_output_is_refused_before_anything_is_written(
    export, images, tmp_path, outputs, message, capsys
):
    # The --json written over the class names (or the probabilities under the --json) ran to exit 0.
    directory, _ = export
    classes, templates = tmp_path / "classes.txt", tmp_path / "templates.txt"
    classes.write_text("".join(f"{name}\n" for name in CLASSES))
    templates.write_text("a {}\n")
    (tmp_path / "names").mkdir()
    (tmp_path / "names" / "link").symlink_to(classes)
    paths = dict(classes=classes, templates=templates, npy=tmp_path / "p.npy", link=tmp_path / "names/../classes.txt")
    argv = ["--checkpoint", str(directory), "--images", str(images), "--classes", f"@{tmp_path / 'names' / 'link'}"]
    argv += ["--template", f"@{templates}", *(value.format(**paths) for value in outputs)]
    with pytest.raises(SystemExit) as exit_info:
        zero_shot.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert classes.read_text() == "red circle\nblue square\ngreen triangle\n" and templates.read_text() == "a {}\n"
    assert not (tmp_path / "p.npy").exists()


def test_imagenet_names_file_naming_two_classes_alike_classifies_them_as_a_tie(export, images, tmp_path, capsys):
    """ImageNet's LOC_synset_mapping.txt, which the command's help names, gives two synsets the one name
    'crane' (n02012849, the bird; n03126707, the machine): the command refused the real file ('expected
    distinct names, got 1 repeated of the 1000'). Where a folder labels each class, both now share the name's
    embedding, a warning names them, and an image of either ranked first among them counts half right."""
    directory, _ = export
    root = _synset_folders(images, tmp_path / "val", ["n00000001", "n00000002", "n00000003"])
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("n00000001 crane\nn00000002 crane\nn00000003 green triangle\n")
    command = ["--checkpoint", str(directory), "--images", str(root), "--classes", f"@{mapping}", "--template", "a {}"]
    result = zero_shot.main(command)
    assert result["classes"] == ["crane", "crane", "green triangle"]
    assert result["class_folders"] == ["n00000001", "n00000002", "n00000003"]
    err = capsys.readouterr().err
    assert "warning: --classes names several classes alike: 'crane' for n00000001, n00000002;" in err
    pretrained = load_pretrained(directory)
    files = sorted(result["predictions"])
    features = zero_shot.image_features(pretrained, [Image.open(root / f) for f in files])
    crane, triangle = (features @ zero_shot.class_embeddings(pretrained, ["crane", "green triangle"], ["a {}"]).T).T
    credit = [  # the classes of one name tie: half right when they rank first
        (0.5 * float(c > t)) if f.startswith(("n00000001", "n00000002")) else float(t > c)
        for f, c, t in zip(files, crane.tolist(), triangle.tolist())
    ]
    assert 0 < sum(credit) < len(files)  # (both kinds of image scored: the check has teeth)
    assert result["accuracy"] == pytest.approx(sum(credit) / len(files))
    assert {result["predictions"][f] for f in files} <= {"crane", "green triangle"}
    # folders in sorted order give the same, the repeated name warned of with its folders
    names = tmp_path / "names.txt"
    names.write_text("crane\ncrane\ngreen triangle\n")
    ordered = zero_shot.main([*command[:5], f"@{names}", "--template", "a {}", "--folder-order"])
    assert ordered["accuracy"] == pytest.approx(result["accuracy"])
    assert "'crane' for n00000001, n00000002;" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # without folders a repeated name cannot label an image
        zero_shot.main([*command[:5], f"@{names}"])
    assert exit_info.value.code == 2
    assert "argument --classes: expected distinct names, got 1 repeated of the 3: ['crane']" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_model_moved_to_a_gpu_classifies_a_folder_as_on_the_cpu(export, images):
    """The features come back to the CPU, but exp(logit_scale) stayed on the model's device: the first chunk's
    probabilities failed with torch's 'Expected all tensors to be on the same device' (a CUDA 0-dim tensor
    times CPU similarities)."""
    on_cpu = zero_shot.classify_folder(load_pretrained(export[0]), str(images), CLASSES, ("a {}",))
    pretrained = load_pretrained(export[0])
    pretrained.model.cuda()
    on_gpu = zero_shot.classify_folder(pretrained, str(images), CLASSES, ("a {}",))
    assert on_gpu["predictions"] == on_cpu["predictions"] and on_gpu["accuracy"] == pytest.approx(on_cpu["accuracy"])
    torch.testing.assert_close(on_gpu["top_probabilities"], on_cpu["top_probabilities"], rtol=0, atol=1e-4)


def test_the_summary_prints_a_3000_class_chance_and_a_99_96_percent_accuracy_as_they_are(
    export, images, monkeypatch, capsys
):
    """The summary printed its accuracies to one decimal: 0.9996 read "accuracy 100.0%" (and a chance of 1/3000
    classes "0.0%", before percent). Every share is now printed by torchflava.evaluation.percent."""
    classify_folder = zero_shot.classify_folder
    shares = {"accuracy": 0.9996, "chance": 1 / 3000, "mean_per_class_accuracy": 0.99996, "top5_accuracy": 0.9999}
    monkeypatch.setattr(
        zero_shot, "classify_folder", lambda *args, **kwargs: {**classify_folder(*args, **kwargs), **shares}
    )
    capsys.readouterr()
    command = ["--checkpoint", str(export[0]), "--images", str(images), "--classes", ",".join(CLASSES)]
    zero_shot.main([*command, "--template", "a {}"])
    assert capsys.readouterr().out.splitlines()[-1] == (
        "12 images, 1 unreadable skipped; accuracy 99.96% (chance 0.033%), mean per class 99.996%, top-5 99.99%"
    )


SYNSETS = ["n00000001", "n00000002", "n00000003"]  # CLASSES' (as LOC_synset_mapping.txt gives ImageNet's)


def _flat_imagenet(images, tmp_path) -> tuple:
    """The ``images`` fixture as ImageNet's validation set is distributed: every image in one folder, labelled by a
    Kaggle LOC_val_solution.csv with the synsets, and a LOC_synset_mapping.txt of the class names."""
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = ["ImageId,PredictionString"]
    for file in sorted(images.glob("*/*.png")):
        shutil.copy(file, flat / file.name)
        rows.append(f"{file.stem},{SYNSETS[CLASSES.index(file.parent.name)]} 1 2 30 31")
    solution, mapping = tmp_path / "LOC_val_solution.csv", tmp_path / "LOC_synset_mapping.txt"
    solution.write_text("\n".join(rows) + "\n")
    mapping.write_text("".join(f"{synset} {name}\n" for synset, name in zip(SYNSETS, CLASSES)))
    return flat, solution, mapping


def test_a_flat_folder_with_a_labels_file_reports_as_the_same_images_in_class_folders(export, images, tmp_path, capsys):
    """ImageNet's validation set comes flat (ILSVRC2012_val_00000001.JPEG...) with Kaggle's LOC_val_solution.csv:
    the command read class sub-folders only, so users moved 50,000 files into folders first. --labels reads the
    file; the report is the one the same images in synset folders give, file for file."""
    directory, _ = export
    flat, solution, mapping = _flat_imagenet(images, tmp_path)
    tree = _synset_folders(images, tmp_path / "tree", SYNSETS)
    reports = []
    for name, layout in [
        ("flat", ["--images", str(flat), "--labels", str(solution)]),
        ("tree", ["--images", str(tree)]),
    ]:
        out, npy = tmp_path / f"{name}.json", tmp_path / f"{name}.npy"
        command = ["--checkpoint", str(directory), *layout, "--classes", f"@{mapping}", "--template", "a {}"]
        # (one image a batch: a batch's other images change a feature's last bits, and the flat order differs)
        zero_shot.main(
            [*command, "--top-k", "2", "--json", str(out), "--all-probabilities", str(npy), "--batch-size", "1"]
        )
        report = json.loads(out.read_text())
        rows = dict(zip(report["predictions"], numpy.load(npy)))
        by_name = {key: {Path(f).name: v for f, v in report.pop(key).items()} for key in ("predictions", "top")}
        report["skipped_reasons"] = [re.sub(r"\S*broken.png", "broken.png", r) for r in report["skipped_reasons"]]
        report.pop("probabilities_file")
        reports.append((report, by_name, {Path(f).name: row for f, row in rows.items()}))
    (flat_report, flat_files, flat_rows), (tree_report, tree_files, tree_rows) = reports
    assert flat_report == tree_report and flat_files == tree_files
    assert flat_report["num_inputs"] == 12 and flat_report["skipped"] == 1 and 0 < flat_report["accuracy"] < 1
    assert flat_report["skipped_reasons"][0].startswith("broken.png: ") and "mean_per_class_accuracy" in flat_report
    assert sorted(flat_rows) == sorted(tree_rows) and all((flat_rows[f] == tree_rows[f]).all() for f in flat_rows)
    assert "warning" not in capsys.readouterr().err  # (every image labelled, every class matched)
    # a two-column file of class names, written as folders are named (case and underscores aside), gives the same
    by_name = zero_shot.main(["--checkpoint", str(directory), "--images", str(images), "--classes", ",".join(CLASSES)])
    tabbed = tmp_path / "labels.tsv"
    tabbed.write_text("".join(f"{f.name}\t{f.parent.name.upper().replace(' ', '_')}\n" for f in images.glob("*/*.png")))
    result = zero_shot.main(
        ["--checkpoint", str(directory), "--images", str(flat), "--labels", str(tabbed), "--classes", ",".join(CLASSES)]
    )
    assert result["accuracy"] == by_name["accuracy"] and result["num_inputs"] == 12
    assert result["mean_per_class_accuracy"] == by_name["mean_per_class_accuracy"]
    pretrained = load_pretrained(directory)  # the library function reads it alike
    library = zero_shot.classify_folder(pretrained, str(flat), CLASSES, labels=tabbed)
    assert library["accuracy"] == by_name["accuracy"]
    with pytest.raises(ValueError, match="^labels and folder_order both say which class an image is of: give one$"):
        zero_shot.classify_folder(pretrained, str(flat), CLASSES, labels=tabbed, folder_order=True)


def test_labels_naming_absent_images_skip_them_and_unlabelled_images_are_left_out_with_warnings(
    export, images, tmp_path, capsys
):
    """An image the labels file names that is not there is skipped and named as an unreadable one is (a partly
    extracted tar); an image it does not name is left out; each said in a warning before any weight is read."""
    directory, _ = export
    flat, solution, mapping = _flat_imagenet(images, tmp_path)
    rows = solution.read_text().splitlines()
    unlabelled = rows.pop(3).split(",")[0]  # an image without a row
    rows.append("ILSVRC2012_val_00050000,n00000002 1 2 3 4")  # a row without an image
    solution.write_text("\n".join(rows) + "\n")
    command = ["--images", str(flat), "--labels", str(solution), "--classes", f"@{mapping}"]
    absent = tmp_path / "absent"  # (/nonexistent is a directory on some machines: "is neither" there)
    with pytest.raises(FileNotFoundError, match=f"^checkpoint: {absent} does not exist$"):  # (said before it loads)
        zero_shot.main(["--checkpoint", str(absent), *command])
    err = capsys.readouterr().err
    assert (
        f"warning: --labels names 1 image(s) that are not under --images, skipped and counted as unreadable (first "
        f"ILSVRC2012_val_00050000: no such image under the folder ({solution} line 14))" in err
    )
    assert (
        f"warning: 1 image(s) under --images have no row in --labels and are left out (first '{unlabelled}.png')" in err
    )
    result = zero_shot.main(["--checkpoint", str(directory), *command])
    assert result["num_inputs"] == 11 and result["skipped"] == 2 and f"{unlabelled}.png" not in result["predictions"]
    assert result["skipped_reasons"][1].startswith("ILSVRC2012_val_00050000: no such image under the folder")


@pytest.mark.parametrize(
    "content, extra, message",
    [
        ("{rows}0.png,n00000002\n", [], "line 16 gives '0.png' the class 'n00000002', line 15 gave it 'n00000001'"),
        ("{rows}", ["--folder-order"], "argument --labels: not with --folder-order"),
        (
            "{rows}",
            ["--images", "{images}"],
            "argument --labels: expected a flat folder of images beside a labels file",
        ),
        ("{rows}", ["--captions", "{solution}"], "argument --labels: for --classes (classification) only"),
        ("{rows}", ["--labels", "/nowhere.csv"], "argument --labels: expected a labels file, got '/nowhere.csv'"),
        ("{rows}", ["--json", "{solution}"], "argument --json: expected another file than --labels's"),
        ("{rows}x.png,n00000009\n", [], ": 1 class(es) among none of the 3 classes: ['n00000009'] (first at line 16)"),
        ("ImageId;PredictionString\n", [], "expected Kaggle's ImageId,PredictionString header or FILE<TAB>CLASS"),
        ("image,label\n0.png,n00000001\n", [], "line 1 names no image of the folder, 'image': a header?"),
        ("ILSVRC2012_val_00000001.JPEG,n00000001\n", [], "names none of the 14 images of"),
        # ImageNet's class names alone (no synsets) beside Kaggle's synset labels: said what to give
        (
            "{rows}",
            ["--classes", ",".join(CLASSES)],
            "3 class(es) among none of the 3 classes: ['n00000002', 'n00000003', 'n00000001'] (first at line 2); the "
            "file labels images by their ImageNet synset: give --classes a file naming each class's synset",
        ),
    ],
)
def test_a_bad_labels_file_exits_2_naming_the_option_before_the_checkpoint_loads(
    images, tmp_path, content, extra, message, capsys
):
    flat, solution, mapping = _flat_imagenet(images, tmp_path)
    (flat / "0.png").write_bytes((flat / next(p.name for p in flat.iterdir())).read_bytes())
    rows = solution.read_text() + "0.png,n00000001 0 0 1 1\n"  # (line 15)
    solution.write_text(content.format(rows=rows))
    paths = {"images": str(images), "solution": str(solution)}
    extra = [value.format(**paths) for value in extra]
    command = ["--checkpoint", "/nonexistent", "--images", str(flat), "--labels", str(solution)]
    command += [] if {"--captions", "--classes"} & set(extra) else ["--classes", f"@{mapping}"]
    with pytest.raises(SystemExit) as exit_info:
        zero_shot.main([*command, *extra])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "argument --" in err.splitlines()[-1]


def test_parquet_images_give_the_report_of_the_same_images_in_class_folders(export, images, tmp_path, capsys):
    """A Hugging Face split's parquet shards (listed, as a shell expands data/validation-*.parquet), classes from
    their ClassLabel: the accuracies, predictions and probabilities of the class folders, the same unreadable
    image skipped."""
    directory, _ = export
    shards = hf_parquet_of(images, tmp_path / "data", CLASSES)
    common = ["--checkpoint", str(directory), "--template", "a {}"]
    folders = zero_shot.main(common + ["--images", str(images), "--classes", ",".join(CLASSES)])
    parquet = zero_shot.main(common + ["--images", *shards, "--json", str(tmp_path / "p.json")])
    assert parquet["num_inputs"] == folders["num_inputs"] == 12 and parquet["skipped"] == folders["skipped"] == 1
    assert parquet["skipped_reasons"][0].startswith("validation-00001-of-00002.parquet[5]: unreadable image")
    assert parquet["classes"] == CLASSES
    for key in ("accuracy", "mean_per_class_accuracy", "chance"):
        assert parquet[key] == folders[key]
    assert list(parquet["predictions"].values()) == list(folders["predictions"].values())
    assert list(parquet["top"].values()) == list(folders["top"].values())  # (probabilities, bit for bit)
    assert json.loads((tmp_path / "p.json").read_text())["accuracy"] == folders["accuracy"]
    # a glob pattern, and --classes naming the classes in id order (other names: other prompts)
    pattern = str(tmp_path / "data" / "validation-*.parquet")
    named = zero_shot.main(common + ["--images", pattern, "--classes", ",".join(CLASSES)])
    assert list(named["top"].values()) == list(folders["top"].values())
    assert capsys.readouterr().err.count("warning") == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--classes", "a,b"], "argument --classes: expected the 3 classes of 'label''s ClassLabel in"),
        (["--labels", __file__], "argument --labels: not with parquet --images (their label column gives the classes)"),
        (["--folder-order"], "argument --folder-order: not with parquet --images"),
        (["--label-key", "fine"], "argument --label-key: expected a column of the files, got 'fine' (columns: image:"),
        (["--image-key", "jpg"], "argument --image-key: expected a column of the files, got 'jpg'"),
        (["--json", "{shard}"], "argument --json: expected another file than --images's, got"),
        (["--captions", __file__], "argument --captions: not with parquet --images"),
    ],
)
def test_bad_arguments_with_parquet_images_exit_2_naming_them_before_the_checkpoint_loads(
    images, tmp_path, extra, message, capsys
):
    shards = hf_parquet_of(images, tmp_path / "data", CLASSES)
    extra = [e.replace("{shard}", shards[0]) for e in extra]
    with pytest.raises(SystemExit) as exit_info:
        zero_shot.main(["--checkpoint", "/nonexistent", "--images", *shards, *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_parquet_and_folder_images_refused_in_one_line_before_the_checkpoint_loads(
    images, tmp_path, capsys, monkeypatch
):
    unnamed = hf_parquet_of(images, tmp_path / "plain", CLASSES, shards=1, with_names=False)
    (tmp_path / "text.parquet").write_text("image,label\n")
    hf_parquet_of(images, tmp_path / "food101" / "data", CLASSES, shards=1)  # (a Hugging Face download)
    (tmp_path / "food101" / "README.md").write_text("---\n")
    cases = [
        (["--images", *unnamed], "argument --classes: required: the parquet files name no classes"),
        (["--images", str(tmp_path / "text.parquet")], "argument --images: " + str(tmp_path / "text.parquet")),
        (
            ["--images", str(images), str(images)],
            "argument --images: expected one image folder, or parquet files, got 2",
        ),
        (["--images", str(images)], "one of the arguments --classes --captions is required"),
        (  # a Hugging Face download's root: README.md, data/validation-*.parquet
            ["--images", str(tmp_path / "food101"), "--classes", "a,b"],
            f"(no file ending in one of .jpg, .jpeg, .jfif, .jpe, .png, .bmp, .webp, .avif, .gif, .tif, .tiff, .ppm, "
            f".pgm, .pbm, .pnm under it; it holds parquet files in data/ (validation-00000-of-00001.parquet...): give "
            f"them, e.g. {tmp_path}/food101/data/validation-*.parquet)",
        ),
        (
            ["--images", str(images), "--classes", "a,b", "--label-key", "x"],
            "argument --label-key: for parquet --images",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            zero_shot.main(["--checkpoint", "/nonexistent", *argv])
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in error, (argv, error)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # (as where pyarrow is not installed)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(SystemExit):
        zero_shot.main(["--checkpoint", "/nonexistent", "--images", *unnamed, "--classes", "a,b,c"])
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m torchflava.zero_shot: error: argument --images: reading parquet files needs pyarrow: pip install "
        "'torchflava[parquet]' (or pip install 'pyarrow>=14')"
    )


def test_retrieval_on_an_image_caption_parquet_equals_the_same_pairs_in_a_captions_file(export, images, tmp_path):
    """A Hub image-caption split (the Image struct, a list of captions a row, as COCO's five) ranks as the same
    images and captions listed in a .jsonl: every recall equal, the unreadable image skipped alike."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.data.test_parquet import IMAGE_STRUCT

    directory, _ = export
    lines = [json.loads(line) for line in (images / "captions.jsonl").read_text().splitlines()]
    lines.append({"image": "red circle/broken.png", "caption": "a broken one"})
    pairs = [{"image": line["image"], "caption": text} for line in lines for text in (line["caption"], "a shape")]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    rows = pa.array(
        [{"bytes": (images / line["image"]).read_bytes(), "path": line["image"]} for line in lines], IMAGE_STRUCT
    )
    table = pa.table({"image": rows, "sentences": [[line["caption"], "a shape"] for line in lines]})
    pq.write_table(table, tmp_path / "test-00000-of-00001.parquet", row_group_size=5)
    common = ["--checkpoint", str(directory)]
    listed = zero_shot.main(common + ["--images", str(images), "--captions", str(tmp_path / "pairs.jsonl")])
    parquet = zero_shot.main(common + ["--captions", str(tmp_path / "test-*.parquet")])
    assert (parquet["num_pairs"], parquet["num_images"], parquet["skipped"]) == (24, 12, 2)
    assert {k: v for k, v in parquet.items() if k != "skipped_reasons"} == {
        k: v for k, v in listed.items() if k != "skipped_reasons"
    }
    assert parquet["skipped_reasons"][0].startswith("test-00000-of-00001.parquet[12]: unreadable image")
    with pytest.raises(SystemExit):  # (its images are in it)
        zero_shot.main(common + ["--images", str(images), "--captions", str(tmp_path / "test-*.parquet")])


def test_parquet_captions_of_several_splits_without_split_are_evaluated_whole_with_a_warning(
    tmp_path, monkeypatch, capsys
):
    """A split column (Flickr30k's layout on the Hub) read without --split evaluated every split, the training
    images among them, without the word a Karpathy file gets; said before the checkpoint loads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.data.test_parquet import IMAGE_STRUCT, png

    rows = pa.array([{"bytes": png(i), "path": None} for i in range(4)], IMAGE_STRUCT)
    table = pa.table({"image": rows, "caption": [f"a shape {i}" for i in range(4)]})
    pq.write_table(table.append_column("split", pa.array(["train", "test", "val", "test"])), tmp_path / "s.parquet")

    class Loaded(Exception):
        pass

    def load(*arguments):  # (the checkpoint's load, after every check: stopped there)
        raise Loaded

    monkeypatch.setattr(zero_shot, "command_pretrained", load)
    with pytest.raises(Loaded):
        zero_shot.main(["--checkpoint", "/unused", "--captions", str(tmp_path / "s.parquet")])
    assert capsys.readouterr().err == (
        "warning: the split column of the parquet --captions holds 3 splits (test, train, val) and no --split was "
        "given: the 4 captions of every split are evaluated; --split names those to keep\n"
    )
    with pytest.raises(Loaded):
        zero_shot.main(["--checkpoint", "/unused", "--captions", str(tmp_path / "s.parquet"), "--split", "test"])
    assert capsys.readouterr().err == ""


def test_parquet_images_without_a_label_column_are_classified_without_accuracy(export, images, tmp_path, capsys):
    import pyarrow.parquet as pq

    directory, _ = export
    (path,) = hf_parquet_of(images, tmp_path / "data", CLASSES, shards=1)
    pq.write_table(pq.read_table(path).drop_columns(["label"]), path)  # (an unlabelled test split)
    common = ["--checkpoint", str(directory), "--template", "a {}", "--classes", ",".join(CLASSES)]
    result = zero_shot.main(common + ["--images", path])
    folders = zero_shot.main(common + ["--images", str(images)])
    assert "accuracy" not in result and list(result["top"].values()) == list(folders["top"].values())
    assert "warning: no accuracy: the parquet files have no label column (none of label, labels, fine_label" in (
        capsys.readouterr().err
    )


def test_a_hugging_face_test_split_labelled_minus_one_is_classified_without_accuracy(export, images, tmp_path, capsys):
    """Hugging Face marks an unlabelled split's rows -1 (a ClassLabel column kept, as in its other splits): every
    row -1 is such a split, classified as one without a label column; it was refused (naming -1 as an unlabelled
    split, with no way to classify it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory, _ = export
    (path,) = hf_parquet_of(images, tmp_path / "data", CLASSES, shards=1)
    table = pq.read_table(path)
    table = table.set_column(1, "label", pa.array([-1] * len(table), pa.int64())).replace_schema_metadata(
        table.schema.metadata
    )
    pq.write_table(table, path)
    common = ["--checkpoint", str(directory), "--template", "a {}"]
    result = zero_shot.main(common + ["--images", path])  # (the classes: the ClassLabel's names)
    folders = zero_shot.main(common + ["--images", str(images), "--classes", ",".join(CLASSES)])
    assert "accuracy" not in result and list(result["top"].values()) == list(folders["top"].values())
    assert (
        "warning: no accuracy: every 'label' of the parquet files is -1 (Hugging Face's unlabelled split)"
        in capsys.readouterr().err
    )


def test_parquet_images_labelled_by_class_name_give_the_report_of_classlabel_ids(export, images, tmp_path, capsys):
    """A label column of class names (strings, as some Hub datasets store them) labels each row by its name's place
    in --classes, or in the names sorted; it was refused (expected integer class ids)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory, _ = export
    (path,) = hf_parquet_of(images, tmp_path / "data", CLASSES, shards=1)
    common = ["--checkpoint", str(directory), "--template", "a {}"]
    ids = zero_shot.main(common + ["--images", path])
    table = pq.read_table(path)
    names = [CLASSES[i] for i in table.column("label").to_pylist()]
    pq.write_table(table.drop_columns(["label"]).append_column("label", pa.array(names)), path)  # (no ClassLabel)
    named = zero_shot.main(common + ["--images", path, "--classes", ",".join(CLASSES)])
    assert ids["accuracy"] == named["accuracy"] and ids["top"] == named["top"]
    assert 0 < ids["num_inputs"] == named["num_inputs"]
    by_name = zero_shot.main(common + ["--images", path])  # (the classes: the names sorted)
    assert by_name["accuracy"] == named["accuracy"] and by_name["predictions"] == named["predictions"]


def test_tar_shards_give_the_report_of_the_same_images_in_class_folders(export, images, tmp_path, capsys):
    """CLIP_benchmark's layout (wds_imagenet1k/test/0.tar...): the dataset root, its classnames.txt and its {c}
    templates taken by default, gives the class folders' accuracies, predictions and probabilities, the same
    unreadable image skipped; so do the split folder, a brace pattern and the shards listed with --classes and
    --template."""
    directory, _ = export
    root = wds_of(images, tmp_path / "wds_shapes", CLASSES, templates=["a {c}", "a photo of the {c}."])
    (root / "train").mkdir()
    shutil.copy(root / "test" / "0.tar", root / "train" / "0.tar")
    templates = ["--template", "a {}", "--template", "a photo of the {}."]
    folders = zero_shot.main(
        ["--checkpoint", str(directory), "--images", str(images), "--classes", ",".join(CLASSES)] + templates
    )
    capsys.readouterr()
    shards = zero_shot.main(["--checkpoint", str(directory), "--images", str(root), "--json", str(tmp_path / "w.json")])
    err = capsys.readouterr().err.splitlines()
    assert err[2].startswith("skipped: 1.tar:s0000012: unreadable image") and err[:2] == [
        f"the test/ split of {root} taken (beside train/)",
        f"the 3 classes of {root}/classnames.txt and the 2 templates of {root}/zeroshot_classification_templates.txt "
        "taken (--classes, --template give others)",
    ]
    assert shards["num_inputs"] == folders["num_inputs"] == 12 and shards["skipped"] == folders["skipped"] == 1
    assert shards["skipped_reasons"][0].startswith("1.tar:s0000012: unreadable image")
    assert shards["classes"] == CLASSES and shards["templates"] == ["a {c}", "a photo of the {c}."]
    for key in ("accuracy", "mean_per_class_accuracy", "chance"):
        assert shards[key] == folders[key]
    assert list(shards["predictions"].values()) == list(folders["predictions"].values())
    assert list(shards["top"].values()) == list(folders["top"].values())  # (probabilities, bit for bit)
    assert json.loads((tmp_path / "w.json").read_text())["accuracy"] == folders["accuracy"]
    given = ["--classes", f"@{root}/classnames.txt", "--template", f"@{root}/zeroshot_classification_templates.txt"]
    for value in (
        [str(root / "test")],
        [f"{root}/test/{{0..1}}.tar"],
        [str(root / "test" / "0.tar"), str(root / "test" / "1.tar")],
    ):
        again = zero_shot.main(["--checkpoint", str(directory), "--images", *value, *given])
        assert list(again["top"].values()) == list(folders["top"].values()), value
    assert capsys.readouterr().err.count("\n") == 3  # (each run's one skipped image, nothing else)


def test_bad_tar_shard_arguments_exit_2_in_one_line_before_the_checkpoint_loads(images, tmp_path, capsys):
    root = wds_of(images, tmp_path / "wds_shapes", CLASSES)
    bare = wds_of(images, tmp_path / "bare", CLASSES)
    (bare / "classnames.txt").unlink()
    (tmp_path / "splits" / "train").mkdir(parents=True)
    shutil.copy(root / "test" / "0.tar", tmp_path / "splits" / "train" / "0.tar")
    bad_template = tmp_path / "bad_template"
    shutil.copytree(root, bad_template)
    (bad_template / "zeroshot_classification_templates.txt").write_text("a {c} of {}\n")
    cases = [
        (
            [str(root), "--classes", "a,b"],
            "argument --classes: expected a name for each class id of the shards, got 2 names for class id 2 of",
        ),
        ([str(bare)], "argument --classes: required: the tar shards have no classnames.txt"),
        (
            [str(tmp_path / "splits")],
            f"argument --images: {tmp_path / 'splits'} holds the splits train/ and no test/: give one, e.g. {tmp_path / 'splits' / 'train'}",
        ),
        (
            [str(root), "--labels", __file__],
            "argument --labels: not with tar shard --images (their .cls members give the classes)",
        ),
        ([str(root), "--folder-order"], "argument --folder-order: not with tar shard --images"),
        ([str(root), "--captions", __file__], "argument --captions: not with tar shard --images"),
        ([str(root), "--json", str(root / "test" / "0.tar")], "argument --json: expected another file than --images's"),
        ([str(root), "--json", str(root / "classnames.txt")], "argument --json: expected another file than --images's"),
        ([str(root), "--json", str(root / "test" / "nshards.txt")], "argument --json: expected another file than"),
        (
            [str(bad_template)],
            f"argument --images: {bad_template}/zeroshot_classification_templates.txt: expected one '{{}}' or '{{c}}'",
        ),
        ([str(root), "--template", "a {c} {}"], "argument --template: expected one '{}' (or CLIP_benchmark's '{c}')"),
        ([f"{root}/test/{{0..2}}.tar"], f"argument --images: '{root}/test/2.tar' is not a file (of the pattern"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            zero_shot.main(["--checkpoint", "/nonexistent", "--images", *argv])
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in error.splitlines()[-1], (argv, error)


def test_retrieval_on_a_retrieval_datasets_shards_equals_the_same_pairs_in_a_captions_file(
    export, images, tmp_path, capsys
):
    """CLIP_benchmark's wds_flickr30k / wds_mscoco_captions (dataset_type.txt: retrieval): each sample an image and a
    .txt of its captions, one a line; with neither --captions nor --classes the recalls are those of the same pairs
    as a .jsonl, an unreadable image's captions skipped alike."""
    from tests.data.test_wds import write_wds

    directory, _ = export
    lines = [json.loads(line) for line in (images / "captions.jsonl").read_text().splitlines()]
    lines.append({"image": "red circle/broken.png", "caption": "nothing"})
    samples, pairs = [], []
    for number, line in enumerate(lines):
        captions = (
            [line["caption"], f"picture {number}"] if number % 2 else [line["caption"]]
        )  # (COCO's five, here two)
        samples.append({"png": (images / line["image"]).read_bytes(), "txt": "\n".join(captions).encode()})
        pairs += [{"image": str(images / line["image"]), "caption": caption} for caption in captions]
    root = write_wds(tmp_path / "wds_shapes_captions", samples)[0].parent.parent
    (root / "dataset_type.txt").write_text("retrieval\n")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    shards = zero_shot.main(["--checkpoint", str(directory), "--images", str(root)])
    listed = zero_shot.main(["--checkpoint", str(directory), "--captions", str(tmp_path / "pairs.jsonl")])
    assert shards["num_pairs"] == listed["num_pairs"] == len(pairs) - 1 == 18 and shards["num_images"] == 12
    assert shards["skipped"] == listed["skipped"] == 1
    assert shards["skipped_reasons"][0].startswith("1.tar:s0000012: unreadable image")
    recalls = [key for key in listed if "R@" in key]
    assert len(recalls) == 12 and all(shards[key] == listed[key] for key in recalls)
    for extra, message in [
        (["--template", "a {}"], "argument --template: for classification only, not with a retrieval dataset's shards"),
        (["--classes", "a,b"], "dataset_type.txt says 'retrieval': its samples hold no .cls class id to classify by"),
        (["--all-probabilities", str(tmp_path / "p.npy")], "argument --all-probabilities: for --classes"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            zero_shot.main(["--checkpoint", "/nonexistent", "--images", str(root), *extra])
        error = capsys.readouterr().err.splitlines()
        assert exit_info.value.code == 2 and message in error[-1], error


def test_an_image_folder_holding_a_tar_file_is_classified_as_an_image_folder(images, tmp_path, monkeypatch):
    """Class folders with the .tar they were unpacked from beside them (or in one of them) were taken for tar shards
    and refused (argument --images: ... no .cls member); they are classified as the image folder they are."""
    root = tmp_path / "images"
    shutil.copytree(images, root)
    with tarfile.open(root / "images.tar", "w") as tar:
        tar.add(root / "red circle", arcname="red circle")
    shutil.copy(root / "images.tar", root / "red circle" / "backup.tar")
    monkeypatch.setattr(zero_shot, "command_pretrained", lambda *a, **k: None)  # (AttributeError past the checks)
    with pytest.raises(AttributeError):
        zero_shot.main(["--checkpoint", "unused", "--images", str(root), "--classes", ",".join(CLASSES)])


def test_a_cifar_folder_gives_the_report_of_the_same_images_in_class_folders(export, images, tmp_path, capsys):
    """torchvision's cifar-10-batches-py (its test split, said; the classes of its batches.meta) gives the class
    folders' predictions, probabilities and accuracies, bit for bit; so does its test_batch given with --classes."""
    from tests.data.test_torchvision_files import cifar_of

    directory, _ = export
    root = cifar_of(images, tmp_path / "cifar-10-batches-py", CLASSES)
    folders = zero_shot.main(["--checkpoint", str(directory), "--images", str(images), "--classes", ",".join(CLASSES)])
    capsys.readouterr()
    cifar = zero_shot.main(["--checkpoint", str(directory), "--images", str(tmp_path)])  # (torchvision's root)
    assert capsys.readouterr().err.splitlines() == [
        f"the test split of {root} (test_batch) taken (its train split: its data_batch_1..5 files)",
        f"the 3 classes of {root}/batches.meta taken (--classes gives others)",
    ]
    assert cifar["num_inputs"] == folders["num_inputs"] == 12 and cifar["skipped"] == 0
    assert cifar["classes"] == CLASSES and sorted(cifar["predictions"])[:2] == ["test_batch[00]", "test_batch[01]"]
    for key in ("accuracy", "mean_per_class_accuracy", "chance"):
        assert cifar[key] == folders[key]
    assert list(cifar["predictions"].values()) == list(folders["predictions"].values())
    assert list(cifar["top"].values()) == list(folders["top"].values())  # (probabilities, bit for bit)
    again = zero_shot.main(
        ["--checkpoint", str(directory), "--images", str(root / "test_batch"), "--classes", ",".join(CLASSES)]
    )
    assert list(again["top"].values()) == list(folders["top"].values())
    assert capsys.readouterr().err == ""


def test_bad_torchvision_arguments_exit_2_in_one_line_before_the_checkpoint_loads(images, tmp_path, capsys):
    from tests.data.test_torchvision_files import _Runs, cifar_of, write_mnist

    root = cifar_of(images, tmp_path / "cifar-10-batches-py", CLASSES)
    raw = write_mnist(tmp_path / "other", "digits")
    evil = cifar_of(images, tmp_path / "evil" / "cifar-10-batches-py", CLASSES)
    marker = tmp_path / "marker"
    (evil / "test_batch").write_bytes(pickle.dumps({"data": _Runs(os.system, f"touch {marker}")}, protocol=2))
    cases = [
        ([str(root), "--classes", "a,b"], f"argument --classes: expected the 3 classes of {root}/batches.meta, got 2"),
        ([str(raw)], f"argument --classes: required: the MNIST-family files of {raw} name no classes"),
        ([str(root), "--labels", __file__], "argument --labels: not with torchvision's --images (their labels give"),
        ([str(root), "--folder-order"], "argument --folder-order: not with torchvision's --images"),
        ([str(root), "--captions", __file__], "argument --captions: not with torchvision's --images"),
        ([str(root), "--json", str(root / "test_batch")], "argument --json: expected another file than --images's"),
        ([str(root), "--json", str(root / "batches.meta")], "argument --json: expected another file than --images's"),
        ([str(root), "--label-key", "x"], "argument --label-key: for parquet --images (classification) only"),
        (
            [str(evil)],
            f"argument --images: {evil}/test_batch: refused to load the global posix.system (these files hold numpy "
            "arrays, lists, numbers and strings only: nothing in them was run)",
        ),
        (
            [str(root / "test_batch"), str(raw / "t10k-images-idx3-ubyte")],
            f"argument --images: expected the files of one dataset, got files of {root} and of {raw}",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            zero_shot.main(["--checkpoint", str(tmp_path / "absent"), "--images", *argv])
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in error.splitlines()[-1], (argv, error)
    assert not marker.exists()
