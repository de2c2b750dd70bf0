"""CLIP's image-text batches: one crop seed per caption, and settings checked when the collator is built."""

from PIL import Image
import pytest
import torch

from torchflava.data.image_text import ImageTextCollator
from torchflava.data.samples import Sample
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import RandomCropTransform


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> WordPieceTokenizer:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb\n")
    return WordPieceTokenizer.from_vocab(path)


def test_a_batch_pairs_each_caption_with_its_own_crop(tokenizer):
    image = Image.new("RGB", (20, 20), (200, 10, 10))
    collator = ImageTextCollator(tokenizer, RandomCropTransform(8), max_text_length=8)
    batch = collator("pairs", [Sample(image, "a"), Sample(image, "b a")], [0, 1])
    assert batch["image"].shape == (2, 3, 8, 8)
    assert batch["text"].tolist() == [[2, 5, 3, 0], [2, 6, 5, 3]]
    assert batch["text_attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


@pytest.mark.parametrize("seeds", [[0], [0, 1, 2]])
def test_a_seed_per_sample_is_required(tokenizer, seeds):
    image = Image.new("RGB", (20, 20))
    collator = ImageTextCollator(tokenizer, RandomCropTransform(8), max_text_length=8)
    with pytest.raises(ValueError, match=rf"^seeds: expected one per sample \(2\), got {len(seeds)}$"):
        collator("pairs", [Sample(image, "a"), Sample(image, "b")], seeds)
    with pytest.raises(ValueError, match="^samples: expected at least one sample, got none$"):
        collator("pairs", [], [])


@pytest.mark.parametrize(
    "max_text_length, error, message",
    [
        (None, TypeError, "max_text_length must be an int, got NoneType"),
        (2.5, TypeError, "max_text_length must be an int, got float"),
        (True, TypeError, "max_text_length must be an int, got bool"),
        (1, ValueError, "max_text_length must be >= 2, got 1"),
    ],
)
def test_max_text_length_is_checked_when_built(tokenizer, max_text_length, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        ImageTextCollator(tokenizer, RandomCropTransform(8), max_text_length=max_text_length)


def test_the_tokenizer_and_transform_must_be_callable(tokenizer):
    with pytest.raises(TypeError, match="^image_transform must be callable, got NoneType$"):
        ImageTextCollator(tokenizer, None, max_text_length=8)
    with pytest.raises(TypeError, match="^tokenizer must be callable, got str$"):
        ImageTextCollator("vocab.txt", RandomCropTransform(8), max_text_length=8)
    assert torch.equal(  # a collator built right still works with the same objects
        ImageTextCollator(tokenizer, RandomCropTransform(8), max_text_length=2)(
            "pairs", [Sample(Image.new("RGB", (9, 9)), "a b")], [3]
        )["text"],
        torch.tensor([[2, 3]]),
    )
