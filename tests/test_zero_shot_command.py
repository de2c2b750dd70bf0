"""python -m torchflava.zero_shot and torchflava.pretrained on checkpoints the test writes."""

import json

import pytest
import torch
from transformers import FlavaModel

from tests.helpers import write_tiny_export
from tests.models.flava.test_convert_weights import _perturb, _tiny_hf_config
from torchflava import zero_shot
from torchflava.data.shapes import ShapesWorld
from torchflava.evaluation import retrieval_recall
from torchflava.pretrained import checkpoint_layout, load_pretrained

CLASSES = ["red circle", "blue square", "green triangle"]


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
    assert result["num_images"] == 12 and result["skipped"] == 1
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
    assert json.loads(out.read_text())["num_images"] == 12


def test_retrieval_command_matches_retrieval_recall(export, images):
    directory, _ = export
    result = zero_shot.main(
        ["--checkpoint", str(directory), "--images", str(images), "--captions", str(images / "captions.jsonl")]
    )
    assert result["num_pairs"] == 12 and result["R@5_chance"] == pytest.approx(5 / 12)
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
    weights, kwargs, vocab = checkpoint_layout(tmp_path)
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
    with pytest.raises(ValueError, match="at least two distinct classes"):
        zero_shot.main(["--checkpoint", str(export[0]), "--images", str(images), "--classes", "red circle"])
    with pytest.raises(SystemExit):
        zero_shot.main(["--checkpoint", str(export[0]), "--images", str(images)])  # neither mode given
