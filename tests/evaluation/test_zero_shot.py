"""Zero-shot evaluation on hand-built features with known answers."""

import math

import pytest
import torch

from torchflava.evaluation import classification_accuracy, retrieval_recall, zero_shot_classifier

# similarity[i, j] = score of image i against text j; row i's right answer is column i.
SIMILARITY = torch.tensor(
    [
        [0.9, 0.1, 0.2, 0.0],  # image 0: its text ranks first
        [0.5, 0.3, 0.4, 0.1],  # image 1: two texts above it -> rank 2
        [0.1, 0.2, 0.6, 0.7],  # image 2: one above -> rank 1
        [0.8, 0.7, 0.9, 0.2],  # image 3: three above -> rank 3
    ]
)
# Per text (column): text 0 first; texts 1, 2, 3 each have one image above them -> ranks 0, 1, 1, 1.


def features() -> tuple[torch.Tensor, torch.Tensor]:
    """Image features e_i and text features whose dot products are SIMILARITY."""
    return torch.eye(4), SIMILARITY.T.contiguous()


def test_retrieval_recall_exact_values():
    images, texts = features()
    assert torch.allclose(images @ texts.T, SIMILARITY)
    recall = retrieval_recall(images, texts, ks=(1, 2, 3, 4))
    assert recall == {
        "image_to_text_R@1": 0.25,
        "text_to_image_R@1": 0.25,
        "image_to_text_R@2": 0.5,
        "text_to_image_R@2": 1.0,
        "image_to_text_R@3": 0.75,
        "text_to_image_R@3": 1.0,
        "image_to_text_R@4": 1.0,
        "text_to_image_R@4": 1.0,
    }
    assert list(recall) == [f"{d}_R@{k}" for k in (1, 2, 3, 4) for d in ("image_to_text", "text_to_image")]


def test_retrieval_recall_of_normalised_features_and_a_permutation():
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=-1)
    perfect = retrieval_recall(images, images.clone(), ks=(1,))
    assert perfect == {"image_to_text_R@1": 1.0, "text_to_image_R@1": 1.0}
    # Texts shifted by one row: image i's best match is text i + 1 (itself), so its own text is never first.
    shifted = retrieval_recall(images, images.roll(1, dims=0), ks=(1, 8))
    assert shifted["image_to_text_R@1"] == 0.0 and shifted["text_to_image_R@1"] == 0.0
    assert shifted["image_to_text_R@8"] == 1.0 and shifted["text_to_image_R@8"] == 1.0
    default = retrieval_recall(images, images, ks=(1, 5))
    assert set(default) == {"image_to_text_R@1", "text_to_image_R@1", "image_to_text_R@5", "text_to_image_R@5"}
    assert set(retrieval_recall(torch.eye(10), torch.eye(10))) == {
        f"{d}_R@{k}" for k in (1, 5, 10) for d in ("image_to_text", "text_to_image")
    }


def test_retrieval_recall_accepts_half_precision():
    images, texts = features()
    assert retrieval_recall(images.half(), texts.half(), ks=(1, 2)) == retrieval_recall(images, texts, ks=(1, 2))


def test_nan_features_are_an_error_not_perfect_recall():
    nan = torch.full((4, 3), float("nan"))
    with pytest.raises(ValueError, match="image_features holds NaN"):
        retrieval_recall(nan, nan, ks=(1,))
    with pytest.raises(ValueError, match="image_features holds NaN"):
        classification_accuracy(nan, torch.eye(3), torch.zeros(4, dtype=torch.long))


def test_collapsed_identical_features_score_no_better_than_last():
    same = torch.nn.functional.normalize(torch.ones(5, 3), dim=-1)
    recall = retrieval_recall(same, same, ks=(1, 5))
    assert recall["image_to_text_R@1"] == 0.0 and recall["text_to_image_R@5"] == 1.0


@pytest.mark.parametrize(
    "images, texts, ks, match",
    [
        (torch.eye(4), torch.eye(3, 4), (1,), "text_features"),
        (torch.eye(4), torch.eye(4)[:, :3], (1,), "image_features"),
        (torch.ones(4), torch.ones(4), (1,), "image_features"),
        (torch.eye(4), torch.eye(4), (0,), "ks"),
        (torch.eye(4), torch.eye(4), (1, 5), "ks"),
    ],
)
def test_retrieval_recall_errors(images, texts, ks, match):
    with pytest.raises(ValueError, match=match):
        retrieval_recall(images, texts, ks=ks)


def test_retrieval_recall_with_several_captions_per_image():
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    image_of_text = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    # A perfect model: each caption's features are its image's. Listed pair by pair (each image
    # repeated) this scored R@1 = 0, the copies of the right image tying with it.
    perfect = retrieval_recall(images, images[image_of_text], ks=(1,), image_of_text=image_of_text)
    assert perfect == {"image_to_text_R@1": 1.0, "text_to_image_R@1": 1.0}
    # Random texts: against a count done by hand, text by text and image by image.
    texts = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=-1)
    sim = images @ texts.T
    for k in (1, 2, 3):
        t2i = [
            sum(sim[i, t] >= sim[image_of_text[t], t] for i in range(4) if i != image_of_text[t]) < k for t in range(7)
        ]
        i2t = []
        for i in range(4):
            best = max(sim[i, t] for t in range(7) if image_of_text[t] == i)
            i2t.append(sum(sim[i, t] >= best for t in range(7) if image_of_text[t] != i) < k)
        got = retrieval_recall(images, texts, ks=(k,), image_of_text=image_of_text)
        assert got[f"text_to_image_R@{k}"] == pytest.approx(sum(t2i) / 7)
        assert got[f"image_to_text_R@{k}"] == pytest.approx(sum(i2t) / 4)
    with pytest.raises(ValueError, match="every one of the 4 images at least one text"):
        retrieval_recall(images, texts[:3], ks=(1,), image_of_text=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="ks must lie in"):
        retrieval_recall(images, texts, ks=(5,), image_of_text=image_of_text)


def test_classification_accuracy_exact():
    classes = torch.eye(3)  # class c points along axis c
    images = torch.tensor(
        [
            [0.9, 0.1, 0.0],
            [0.2, 0.7, 0.1],
            [0.1, 0.1, 0.8],
            [0.6, 0.3, 0.1],
            [0.0, 0.4, 0.6],
            [0.3, 0.3, 0.4],
            [0.5, 0.4, 0.1],
            [0.2, 0.5, 0.3],
        ]
    )
    # nearest classes: 0, 1, 2, 0, 2, 2, 0, 1
    labels = torch.tensor([0, 1, 2, 1, 2, 0, 0, 1])
    assert classification_accuracy(images, classes, labels) == 0.75  # 6 of 8
    assert classification_accuracy(images, classes, torch.tensor([0, 1, 2, 0, 2, 2, 0, 1])) == 1.0
    assert classification_accuracy(images, classes, torch.tensor([1, 2, 0, 1, 0, 0, 1, 2])) == 0.0
    assert isinstance(classification_accuracy(images, classes, labels), float)


@pytest.mark.parametrize(
    "images, classes, labels, match",
    [
        (torch.eye(4, 3), torch.eye(2, 4), torch.zeros(4, dtype=torch.long), "class_embeddings"),
        (torch.ones(3), torch.eye(3), torch.zeros(3, dtype=torch.long), "image_features"),
        (torch.eye(4, 3), torch.eye(3), torch.zeros(3, dtype=torch.long), "labels"),
        (torch.eye(4, 3), torch.eye(3), torch.zeros(4, 1, dtype=torch.long), "labels"),
        (torch.eye(4, 3), torch.eye(3), torch.tensor([0, 1, 2, 3]), "labels"),
        (torch.eye(4, 3), torch.eye(3), torch.tensor([0, -1, 2, 1]), "labels"),
    ],
)
def test_classification_accuracy_errors(images, classes, labels, match):
    with pytest.raises(ValueError, match=match):
        classification_accuracy(images, classes, labels)


class FakeTextModel:
    """tokenize: prompt -> its row in TABLE; encode_text: ids -> TABLE rows (not normalised)."""

    TABLE = {"a cat": [3.0, 4.0], "the cat": [0.0, 2.0], "a dog": [-5.0, 0.0], "the dog": [0.0, -0.5]}

    def __init__(self):
        self.prompts = None

    def tokenize(self, prompts):
        self.prompts = list(prompts)
        ids = torch.tensor([[list(self.TABLE).index(p)] for p in prompts])
        return ids, torch.ones_like(ids)

    def encode_text(self, ids, mask):
        assert mask.shape == ids.shape
        rows = torch.tensor(list(self.TABLE.values()), requires_grad=True)
        return rows[ids[:, 0]] * 1.0


def test_zero_shot_classifier_averages_normalised_prompts():
    fake = FakeTextModel()
    classes = zero_shot_classifier(fake.encode_text, fake.tokenize, ["cat", "dog"], templates=("a {}", "the {}"))
    assert fake.prompts == ["a cat", "the cat", "a dog", "the dog"]  # class-major order
    # cat: mean of (0.6, 0.8) and (0, 1) = (0.3, 0.9), normalised; dog: mean of (-1, 0) and (0, -1).
    expected = torch.tensor([[1 / math.sqrt(10), 3 / math.sqrt(10)], [-1 / math.sqrt(2), -1 / math.sqrt(2)]])
    torch.testing.assert_close(classes, expected, rtol=0, atol=1e-6)
    assert classes.dtype == torch.float32 and not classes.requires_grad
    # The class embeddings plug straight into classification_accuracy.
    images = torch.tensor([[0.1, 0.9], [-0.7, -0.7], [0.9, 0.0]])
    assert classification_accuracy(images, classes, torch.tensor([0, 1, 0])) == 1.0


def test_zero_shot_classifier_single_template_is_the_normalised_feature():
    fake = FakeTextModel()
    classes = zero_shot_classifier(fake.encode_text, fake.tokenize, ["dog", "cat"])
    assert fake.prompts == ["a dog", "a cat"]
    torch.testing.assert_close(classes, torch.tensor([[-1.0, 0.0], [0.6, 0.8]]), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "names, templates, match",
    [([], ("a {}",), "class_names"), (["cat"], (), "templates"), (["cat"], ("a {}", "a photo"), "templates")],
)
def test_zero_shot_classifier_errors(names, templates, match):
    fake = FakeTextModel()
    with pytest.raises(ValueError, match=match):
        zero_shot_classifier(fake.encode_text, fake.tokenize, names, templates=templates)
    assert fake.prompts is None  # rejected before any text is encoded


def test_classes_tied_at_the_top_share_the_credit_whatever_the_labels():
    """Collapsed class embeddings scored 1.0 when every label was 0 and 0.0 when every label was 2
    (argmax took the lowest index); now 1/C either way, a random tie-break's expectation."""
    features = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    collapsed = torch.nn.functional.normalize(torch.ones(3, 8), dim=-1)
    for label in range(3):
        assert classification_accuracy(features, collapsed, torch.full((4,), label)) == pytest.approx(1 / 3)
    classes = torch.eye(8)[:3]
    images = torch.eye(8)[[0, 1, 2, 1]]
    assert classification_accuracy(images, classes, torch.tensor([0, 1, 2, 0])) == pytest.approx(0.75)  # no tie


@pytest.mark.parametrize(
    "labels, error, match",
    [
        (torch.tensor([0.5, 0.5]), ValueError, "labels must be \\(2,\\) integer class indices, got torch.float32"),
        (torch.tensor([True, False]), ValueError, "integer class indices, got torch.bool"),
        ([0, 1], TypeError, "labels must be a tensor, got list"),
        (torch.tensor([0, 3]), ValueError, r"labels must be in \[0, 3\)"),
    ],
)
def test_classification_accuracy_refuses_labels_that_are_not_class_indices(labels, error, match):
    with pytest.raises(error, match=match):
        classification_accuracy(torch.eye(8)[:2], torch.eye(8)[:3], labels)
    with pytest.raises(ValueError, match="at least one row"):  # was nan
        classification_accuracy(torch.zeros(0, 8), torch.eye(8)[:3], torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("ks", [(1.5,), (True,), ("1",), (), 1])
def test_retrieval_ks_must_be_ints(ks):
    """(1.5,) gave a key R@1.5 holding R@2; ("1",) a comparison error; () on no features an IndexError."""
    features = torch.eye(4)
    with pytest.raises(ValueError, match="ks must be a non-empty sequence of ints"):
        retrieval_recall(features, features, ks=ks)


def test_a_class_names_string_is_not_split_into_letters():
    def encode(ids, mask):
        return torch.nn.functional.one_hot(ids[:, 0], 8).float()

    def tokenize(texts):
        ids = torch.tensor([[len(t) % 8] for t in texts])
        return ids, torch.ones_like(ids)

    with pytest.raises(TypeError, match="class_names must be a sequence of str, got str"):  # was 3 classes: c, a, t
        zero_shot_classifier(encode, tokenize, "cat")
    with pytest.raises(ValueError, match="class_names must be distinct non-empty names"):
        zero_shot_classifier(encode, tokenize, ["cat", "", "dog"])
