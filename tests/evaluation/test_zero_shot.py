"""Zero-shot evaluation on hand-built features with known answers."""

import itertools
import math

import pytest
import torch

from torchflava.evaluation import (
    classification_accuracy,
    mean_per_class_accuracy,
    retrieval_recall,
    zero_shot_classifier,
)
from torchflava.evaluation.zero_shot import class_credit, distinct_rows

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
    """L2-normalised image features e_i and text features whose dot products are SIMILARITY / 2: text j is
    column j halved (norm < 1, same rankings), completed to norm 1 along a fifth axis no image uses."""
    texts = SIMILARITY.T / 2
    texts = torch.cat([texts, (1 - texts.pow(2).sum(dim=1, keepdim=True)).sqrt()], dim=1)
    return torch.eye(4, 5), texts


def test_retrieval_recall_exact_values():
    images, texts = features()
    assert torch.equal(images @ texts.T, SIMILARITY / 2)
    torch.testing.assert_close(texts.norm(dim=1), torch.ones(4))
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
    with pytest.raises(ValueError, match="image_features holds NaN"):  # not "not normalised": NaN is named first
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
        retrieval_recall(images, texts, ks=(8,), image_of_text=image_of_text)


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
    images = torch.nn.functional.normalize(images, dim=-1)  # (scaling a row changes none of its rankings)
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
    images = torch.nn.functional.normalize(torch.tensor([[0.1, 0.9], [-0.7, -0.7], [0.9, 0.0]]), dim=-1)
    assert classification_accuracy(images, classes, torch.tensor([0, 1, 0])) == 1.0


def test_zero_shot_classifier_single_template_is_the_normalised_feature():
    fake = FakeTextModel()
    classes = zero_shot_classifier(fake.encode_text, fake.tokenize, ["dog", "cat"])
    assert fake.prompts == ["a dog", "a cat"]
    torch.testing.assert_close(classes, torch.tensor([[-1.0, 0.0], [0.6, 0.8]]), rtol=0, atol=1e-6)


def test_zero_shot_classifier_encodes_the_prompts_batch_size_at_a_time_with_the_same_embeddings():
    """All C x T prompts went to encode_text in one call: ImageNet's 1000 classes with CLIP's 80 templates
    held 80,000 prompts' activations at once. batch_size cuts the tokenised rows in order."""
    fake = FakeTextModel()
    calls = []

    def encode_text(ids, mask):
        calls.append(ids.shape[0])
        return fake.encode_text(ids, mask)

    templates = ("a {}", "the {}")
    whole = zero_shot_classifier(fake.encode_text, fake.tokenize, ["cat", "dog"], templates)
    batched = zero_shot_classifier(encode_text, fake.tokenize, ["cat", "dog"], templates, batch_size=3)
    assert calls == [3, 1]
    torch.testing.assert_close(batched, whole, rtol=0, atol=0)
    expected = torch.tensor([[1 / math.sqrt(10), 3 / math.sqrt(10)], [-1 / math.sqrt(2), -1 / math.sqrt(2)]])
    torch.testing.assert_close(batched, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"^batch_size must be >= 1, got 0$"):
        zero_shot_classifier(fake.encode_text, fake.tokenize, ["cat", "dog"], templates, batch_size=0)
    with pytest.raises(
        TypeError, match="tokenize must return a pair of tensors to be cut into batches, got list, list"
    ):
        zero_shot_classifier(encode_text, lambda texts: ([[1]] * 4, [[1]] * 4), ["cat", "dog"], templates, batch_size=3)


def test_clip_benchmark_templates_name_the_class_c_and_give_the_prompts_of_the_same_braces():
    """CLIP_benchmark's zeroshot_classification_templates.txt (and SLIP's) write {c} for the class name: it was
    refused for its lack of '{}'. A conversion or format spec ('{!r}') is refused: it prompted "a 'dog'"."""
    fake = FakeTextModel()
    c = zero_shot_classifier(fake.encode_text, fake.tokenize, ["dog", "cat"], ("a {c}", "the {}"))
    assert fake.prompts == ["a dog", "the dog", "a cat", "the cat"]
    braces = zero_shot_classifier(FakeTextModel().encode_text, fake.tokenize, ["dog", "cat"], ("a {}", "the {}"))
    torch.testing.assert_close(c, braces, rtol=0, atol=0)
    for template in ("a {c} {}", "a {c}{c}", "a {cls}", "a {c!r}", "a {!r}", "a {:>9}", "a {{c}}"):
        with pytest.raises(ValueError, match=r"templates must contain one '\{\}' \(or '\{c\}'\)"):
            zero_shot_classifier(fake.encode_text, fake.tokenize, ["dog", "cat"], (template,))


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


def test_equal_class_embeddings_of_any_direction_tie_wherever_they_sit_among_the_classes():
    """Equal class rows tied only for directions like ones(8) / sqrt(8): an fp32 matmul scores two equal
    columns values a bit apart where they sit in different places of its tiles (3 images, 30 classes of 20
    dims), so collapsed class embeddings scored 0.011-0.024, not 1/30, and an image of one of two classes
    sharing an embedding (ImageNet's two 'crane' synsets) 0 or 1, not the 0.5 of a random tie-break."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        images = torch.nn.functional.normalize(torch.randn(3, 20, generator=generator), dim=-1)
        direction = torch.nn.functional.normalize(torch.randn(1, 20, generator=generator), dim=-1)
        labels = torch.tensor([0, 7, 29])
        assert classification_accuracy(images, direction.repeat(30, 1), labels) == pytest.approx(1 / 30, abs=1e-7)
        classes = torch.nn.functional.normalize(torch.randn(30, 20, generator=generator), dim=-1)
        classes[29] = classes[0]  # two classes of one embedding, at either end
        on_it = classes[[0, 0, 29]]  # images exactly on it: the two rank first, level
        assert classification_accuracy(on_it, classes, torch.tensor([0, 29, 29])) == pytest.approx(0.5, abs=1e-7)
        assert mean_per_class_accuracy(on_it, classes, torch.tensor([0, 29, 29])) == pytest.approx(0.5, abs=1e-7)


def test_class_credit_ties_equal_rows_in_place_changes_and_inference_tensors_alike():
    """class_credit sorts the class rows to score equal ones through one column: a caller scoring chunks passes that
    sort on (distinct_rows, worked out once); nothing is kept between calls, so an in-place change (through .data
    too) counts at once, and tensors made under torch.inference_mode (no version counter) score as any."""
    generator = torch.Generator().manual_seed(1)
    classes = torch.nn.functional.normalize(torch.randn(30, 20, generator=generator), dim=-1)
    on_it = classes[[0, 0]].clone()
    labels = torch.tensor([0, 29])
    assert classification_accuracy(on_it, classes, labels) == pytest.approx(0.5, abs=1e-7)  # (0 right, 29 not)
    classes[29] = classes[0]  # in place: now two classes of one embedding
    assert class_credit(on_it, classes, labels).tolist() == [0.5, 0.5]
    sorted_once = distinct_rows(classes)
    assert class_credit(on_it, classes, labels, distinct=sorted_once).tolist() == [0.5, 0.5]
    assert distinct_rows(classes[:29]) == (None, None)
    classes.data[29] = torch.nn.functional.normalize(torch.randn(20, generator=generator), dim=-1)
    assert class_credit(on_it, classes, labels).tolist() == [1.0, 0.0]
    with torch.inference_mode():
        made = torch.nn.functional.normalize(classes.clone(), dim=-1)
        made[29] = made[0]
    assert class_credit(on_it, made, labels).tolist() == [0.5, 0.5]
    assert classification_accuracy(made[[3, 5]].clone(), made, torch.tensor([3, 5])) == 1.0


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

    with pytest.raises(
        TypeError, match=r"^class_names must be a sequence of str \(a list or tuple, in order\), got str$"
    ):  # was 3 classes: c, a, t
        zero_shot_classifier(encode, tokenize, "cat")
    with pytest.raises(ValueError, match="class_names must be distinct non-empty names"):
        zero_shot_classifier(encode, tokenize, ["cat", "", "dog"])


def _tokenize(texts):
    ids = torch.arange(len(texts))[:, None]
    return ids, torch.ones_like(ids)


@pytest.mark.parametrize(
    "encode_text, error, message",
    [
        # 2 rows for the 4 prompts were reshaped into a (2, 2) result; 5 rows into garbage; (4,) into (2, 1)
        (
            lambda ids, mask: torch.randn(2, 3),
            ValueError,
            "encode_text must return (4, D) features, one row per prompt, got shape (2, 3)",
        ),
        (
            lambda ids, mask: torch.randn(5, 3),
            ValueError,
            "encode_text must return (4, D) features, one row per prompt, got shape (5, 3)",
        ),
        (
            lambda ids, mask: torch.randn(4),
            ValueError,
            "encode_text must return (4, D) features, one row per prompt, got shape (4,)",
        ),
        (
            lambda ids, mask: torch.zeros(4, 0),
            ValueError,
            "encode_text must return (4, D) features, one row per prompt, got shape (4, 0)",
        ),
        (
            lambda ids, mask: torch.ones(4, 3, dtype=torch.long),
            ValueError,
            "encode_text must return floating-point features, got torch.int64",
        ),
        (lambda ids, mask: [[1.0]] * 4, TypeError, "encode_text must return a tensor, got list"),
        # NaN embeddings were returned as the classifier
        (
            lambda ids, mask: torch.full((4, 3), float("nan")),
            ValueError,
            "encode_text's output holds NaN or infinite values (a diverged model?)",
        ),
        (
            lambda ids, mask: torch.full((4, 3), float("inf")),
            ValueError,
            "encode_text's output holds NaN or infinite values (a diverged model?)",
        ),
    ],
)
def test_zero_shot_classifier_refuses_what_encode_text_returns_unless_one_finite_row_per_prompt(
    encode_text, error, message
):
    with pytest.raises(error) as info:
        zero_shot_classifier(encode_text, _tokenize, ["cat", "dog"], ("a {}", "the {}"))
    assert str(info.value) == message


@pytest.mark.parametrize(
    "tokenize, message",
    [
        # a (2, L) tensor unpacked into two rows, read as ids and mask
        (
            lambda texts: torch.zeros(2, 3, dtype=torch.long),
            "tokenize must return a pair (ids, attention mask), got Tensor",
        ),
        (lambda texts: (*_tokenize(texts), None), "tokenize must return a pair (ids, attention mask), got tuple of 3"),
        (
            lambda texts: {"input_ids": _tokenize(texts)[0]},
            "tokenize must return a pair (ids, attention mask), got dict",
        ),
    ],
)
def test_zero_shot_classifier_refuses_a_tokenize_that_does_not_return_a_pair(tokenize, message):
    encoded = []

    def encode_text(ids, mask):
        encoded.append(ids)
        return torch.randn(ids.shape[0], 3)

    with pytest.raises(TypeError) as info:
        zero_shot_classifier(encode_text, tokenize, ["cat", "dog"])
    assert str(info.value) == message and encoded == []


@pytest.mark.parametrize("names", [{"cat", "dog"}, frozenset({"cat", "dog"}), {"cat": 0, "dog": 1}.keys()])
def test_zero_shot_classifier_refuses_an_unordered_set_of_class_names(names):
    """The class embeddings' rows followed the set's iteration order (the hash seed), not the caller's."""
    fake = FakeTextModel()
    with pytest.raises(TypeError) as info:
        zero_shot_classifier(fake.encode_text, fake.tokenize, names)
    assert str(info.value) == (
        f"class_names must be a sequence of str (a list or tuple, in order), got {type(names).__name__}"
    )
    assert fake.prompts is None


def test_uint8_and_int32_indices_are_indices_not_a_mask():
    """A uint8 image_of_text was read as a boolean mask: a wrong R@1 silently (2 texts), an IndexError
    (3 texts); uint8 labels failed inside gather."""
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    texts = torch.nn.functional.normalize(images[[0, 1, 2, 2]] + 0.3 * torch.randn(4, 8, generator=g), dim=-1)
    rows = torch.tensor([0, 1, 2, 2])
    expected = retrieval_recall(images, texts, ks=(1, 2), image_of_text=rows)
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
        assert retrieval_recall(images, texts, ks=(1, 2), image_of_text=rows.to(dtype)) == expected
    two = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    assert retrieval_recall(two, two, ks=(1,), image_of_text=torch.tensor([0, 1], dtype=torch.uint8)) == {
        "image_to_text_R@1": 1.0,
        "text_to_image_R@1": 1.0,
    }
    labels = torch.tensor([0, 1, 2, 1])
    expected = classification_accuracy(texts, images, labels)
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
        assert classification_accuracy(texts, images, labels.to(dtype)) == expected
    for bad in (rows.bool(), rows.float(), rows.to(torch.complex64)):
        with pytest.raises(ValueError) as info:
            retrieval_recall(images, texts, ks=(1,), image_of_text=bad)
        assert (
            str(info.value)
            == f"image_of_text must be (4,) integer rows of image_features, got {bad.dtype} of shape (4,)"
        )
    with pytest.raises(ValueError, match=r"^labels must be \(4,\) integer class indices, got torch.complex64"):
        classification_accuracy(texts, images, labels.to(torch.complex64))


@pytest.mark.parametrize("scale", [2.0, 0.5, 1.02, 0.0])
def test_features_that_are_not_l2_normalised_are_refused_naming_them(scale):
    """A longer row ranked first whatever its direction: wrong recall and accuracy, silently."""
    images = torch.eye(3)
    longer = images.clone()
    longer[1] *= scale
    lo, hi = min(scale, 1.0), max(scale, 1.0)
    expected = "{} must hold L2-normalised rows (norm 1 within a relative 0.01), got norms in [{:.4g}, {:.4g}] (torch.nn.functional.normalize(x, dim=-1))"
    for call, name in (
        (lambda: retrieval_recall(longer, images, ks=(1,)), "image_features"),
        (lambda: retrieval_recall(images, longer, ks=(1,)), "text_features"),
        (lambda: classification_accuracy(longer, images, torch.tensor([0, 1, 2])), "image_features"),
        (lambda: classification_accuracy(images, longer, torch.tensor([0, 1, 2])), "class_embeddings"),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value) == expected.format(name, lo, hi)


def test_features_normalised_in_half_precision_pass_the_norm_check():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 512, generator=g)
    for dtype in (torch.bfloat16, torch.float16):
        low = torch.nn.functional.normalize(x.to(dtype), dim=-1)  # normalised in the low precision itself
        assert (low.float().norm(dim=-1) - 1).abs().max() > 1e-4  # (not exactly 1)
        reference = retrieval_recall(
            torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(x, dim=-1), ks=(1,)
        )
        assert retrieval_recall(low, low, ks=(1,)) == reference
        assert classification_accuracy(low, low[:8], torch.arange(64) % 8) == classification_accuracy(
            low.float(), low[:8].float(), torch.arange(64) % 8
        )


def test_retrieval_ks_may_be_any_iterable_read_once():
    """A generator was consumed by the checks: the result was {}."""
    images, texts = features()
    expected = retrieval_recall(images, texts, ks=[1, 2])
    assert len(expected) == 4
    assert retrieval_recall(images, texts, ks=(k for k in [1, 2])) == expected
    assert retrieval_recall(images, texts, ks=range(1, 3)) == expected
    with pytest.raises(ValueError) as info:
        retrieval_recall(images, texts, ks=(k for k in [1, 7]))
    assert str(info.value) == "ks must lie in [1, 4] (the texts image->text ranks), got [1, 7]"
    with pytest.raises(ValueError) as info:
        retrieval_recall(images, texts, ks=iter([]))
    assert str(info.value) == "ks must be a non-empty sequence of ints, got []"


def test_class_names_the_tokenizer_reads_as_one_are_refused_before_any_text_is_encoded():
    """An uncased tokenizer gave 'Dog' and 'dog' one embedding: every dog image was predicted 'Dog',
    and the accuracy counted each as a two-way tie (0.5), with no sign that a class was unreachable."""
    vocabulary = {"a": 1, "the": 2, "cat": 3, "dog": 4}

    def tokenize(texts):  # lower-cases and splits on spaces, as an uncased tokenizer does
        ids = torch.tensor([[vocabulary[w] for w in t.lower().split()] for t in texts])
        return ids, torch.ones_like(ids)

    encoded = []

    def encode_text(ids, mask):
        encoded.append(ids)
        return torch.randn(ids.shape[0], 3)

    with pytest.raises(ValueError) as info:
        zero_shot_classifier(encode_text, tokenize, ["Dog", "cat", "dog"], ("a {}", "the {}"))
    assert str(info.value) == (
        "class_names must differ in what the tokenizer keeps, got 'Dog' and 'dog': their prompts are the same "
        "tokens (the tokenizer's case, spacing, unknown characters or truncation), so no image could be told "
        "apart between them"
    )
    assert encoded == []
    # a class whose prompts share only some tokens with another's (one template each) is a class of its own
    assert zero_shot_classifier(encode_text, tokenize, ["Dog", "cat"], ("a {}", "the {}")).shape == (2, 3)


def test_features_that_are_not_floating_point_are_refused_naming_them():
    """Complex features lost their imaginary part in the cast to float, with only a warning: R@1 0.0
    where the real features give 1.0."""
    g = torch.Generator().manual_seed(0)
    real = torch.nn.functional.normalize(torch.randn(4, 6, generator=g), dim=-1)
    twisted = (real * 1j).to(torch.complex64)  # the same rankings as `real`; its real part is all zero
    with pytest.raises(ValueError) as info:
        retrieval_recall(twisted, twisted, ks=(1,))
    assert str(info.value) == "image_features must be floating-point features, got torch.complex64"
    with pytest.raises(ValueError) as info:
        retrieval_recall(real, real.to(torch.int64), ks=(1,))
    assert str(info.value) == "text_features must be floating-point features, got torch.int64"
    with pytest.raises(ValueError) as info:
        classification_accuracy(real, twisted[:2], torch.tensor([0, 1, 0, 1]))
    assert str(info.value) == "class_embeddings must be floating-point features, got torch.complex64"


def test_features_on_two_devices_are_refused_naming_both():
    """The similarity's matmul failed inside torch (a cuda image feature against cpu text ones);
    the meta device stands in for another device on a machine without a GPU."""
    features = torch.eye(4)
    elsewhere = torch.empty(4, 4, device="meta")
    with pytest.raises(ValueError) as info:
        retrieval_recall(features, elsewhere, ks=(1,))
    assert str(info.value) == "image_features and text_features must be on one device, got cpu and meta"
    with pytest.raises(ValueError) as info:
        classification_accuracy(elsewhere, features[:2], torch.tensor([0, 1, 0, 1]))
    assert str(info.value) == "image_features and class_embeddings must be on one device, got meta and cpu"


def test_half_and_single_precision_features_may_be_compared():
    images, texts = features()
    expected = retrieval_recall(images, texts, ks=(1, 2))
    assert retrieval_recall(images.bfloat16(), texts, ks=(1, 2)) == expected
    assert classification_accuracy(images.bfloat16(), torch.eye(4, 5), torch.arange(4)) == 1.0


def test_accuracy_over_a_single_class_is_refused_not_perfect():
    """With one class every image was right: 1.0 whatever the features."""
    images = torch.nn.functional.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    for classes in (images[:1], images[:0]):  # (no class at all read "labels must be in [0, 0)")
        with pytest.raises(ValueError) as info:
            classification_accuracy(images, classes, torch.zeros(4, dtype=torch.long))
        assert str(info.value) == (
            f"class_embeddings must hold at least 2 classes (with one every image is right), got {classes.shape[0]}"
        )


def test_retrieval_over_no_image_or_no_text_names_the_features_not_ks():
    """It read "ks must lie in [1, 0], got [1]": the empty features went unnamed."""
    images = torch.eye(3)
    with pytest.raises(ValueError) as info:
        retrieval_recall(images[:0], images[:0], ks=(1,))
    assert str(info.value) == "image_features and text_features must hold at least one row each, got 0 and 0"
    with pytest.raises(ValueError) as info:
        retrieval_recall(images, images[:0], ks=(1,), image_of_text=torch.zeros(0, dtype=torch.long))
    assert str(info.value) == "image_features and text_features must hold at least one row each, got 3 and 0"


def _tie_break_expectation(similarity, labels, k):
    """Per image: the share of the orders a random tie-break can give (every permutation of the classes
    that keeps the scores descending) in which the label is among the first k."""
    credits = []
    for row, label in zip(similarity.tolist(), labels.tolist()):
        orders = [p for p in itertools.permutations(range(len(row))) if all(row[a] >= row[b] for a, b in zip(p, p[1:]))]
        credits.append(sum(label in p[:k] for p in orders) / len(orders))
    return torch.tensor(credits, dtype=torch.float64)


# four classes along the axes; images level with two or three of them, or with none
_CLASSES = torch.eye(4)
_IMAGES = torch.nn.functional.normalize(
    torch.tensor(
        [
            [1.0, 1.0, 0.0, 0.0],  # 0 and 1 tied first, 2 and 3 tied last
            [0.0, 0.5, 0.5, 0.5],  # 1, 2, 3 tied first
            [0.9, 0.1, 0.3, 0.2],  # 0, 2, 3, 1
            [0.0, 0.0, 0.0, 1.0],  # 3 first, the rest tied
            [0.4, 0.3, 0.2, 0.1],  # 0, 1, 2, 3
        ]
    ),
    dim=-1,
)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 3], [2, 0, 1, 0, 2], [3, 3, 3, 2, 1]])
def test_top_k_accuracy_is_the_expectation_over_random_tie_breaks(k, labels):
    labels = torch.tensor(labels)
    expected = _tie_break_expectation(_IMAGES @ _CLASSES.T, labels, k)
    assert classification_accuracy(_IMAGES, _CLASSES, labels, k=k) == pytest.approx(expected.mean().item(), abs=1e-6)


def test_top_k_accuracy_by_hand():
    labels = torch.tensor([2, 0, 1, 0, 2])
    # k=2: row 0's class 2 is behind 2 classes (0); row 1's 0 is behind 3 (0); row 2's 1 is last (0);
    # row 3's 0 is tied with 1 and 2 for the one place behind 3 (1/3); row 4's 2 is third (0)
    assert classification_accuracy(_IMAGES, _CLASSES, labels, k=2) == pytest.approx((1 / 3) / 5)
    # k=3: row 0: one place left for 2 and 3 (1/2); row 1: 0 is last (0); row 2: 1 is fourth (0);
    # row 3: two places for three tied (2/3); row 4: third (1)
    assert classification_accuracy(_IMAGES, _CLASSES, labels, k=3) == pytest.approx((1 / 2 + 2 / 3 + 1) / 5)
    collapsed = torch.nn.functional.normalize(torch.ones(4, 4), dim=-1)
    assert classification_accuracy(_IMAGES, collapsed, labels, k=2) == pytest.approx(0.5)  # 2 places of 4


@pytest.mark.parametrize(
    "classes, k, error, message",
    [
        (
            3,
            3,
            ValueError,
            "k must be below the number of classes, 3 (top-3 of them is right whatever the model), got 3",
        ),
        (3, 5, ValueError, "k must be below the number of classes, 3 (top-5 of them"),  # top-5 of 3 classes
        (3, 0, ValueError, "k must be >= 1, got 0"),
        (3, 1.0, TypeError, "k must be an int, got float"),
        (3, True, TypeError, "k must be an int, got bool"),
    ],
)
def test_top_k_at_or_beyond_the_number_of_classes_is_refused_not_perfect(classes, k, error, message):
    images, labels = torch.eye(4)[:2], torch.tensor([0, 1])
    for metric in (classification_accuracy, mean_per_class_accuracy):
        with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
            metric(images, torch.eye(4)[:classes], labels, k=k)


def test_mean_per_class_accuracy_averages_the_classes_that_have_images():
    classes = torch.eye(3)
    images = torch.eye(3)[[0, 0, 1, 0, 1]]  # predicted 0, 0, 1, 0, 1
    labels = torch.tensor([0, 0, 0, 1, 1])  # class 0: 2 of 3 right; class 1: 1 of 2; class 2: no image
    assert classification_accuracy(images, classes, labels) == pytest.approx(3 / 5)
    # class 2 is left out of the mean (not a 0/0 nan, nor a 0 or a 1 that moves it)
    assert mean_per_class_accuracy(images, classes, labels) == pytest.approx((2 / 3 + 1 / 2) / 2)
    # k=2: the second place is shared by the two classes level at 0: class 0 (1 + 1 + 1/2) / 3, class 1
    # (1/2 + 1) / 2
    assert mean_per_class_accuracy(images, classes, labels, k=2) == pytest.approx((5 / 6 + 3 / 4) / 2)
    # with ties the per-image credits are averaged within each class first
    collapsed = torch.nn.functional.normalize(torch.ones(3, 3), dim=-1)
    assert mean_per_class_accuracy(images, collapsed, labels) == pytest.approx(1 / 3)
    assert isinstance(mean_per_class_accuracy(images, classes, labels), float)


def test_mean_per_class_accuracy_weighs_a_rare_class_as_a_common_one():
    classes = torch.eye(2)
    images = torch.eye(2)[[0] * 9 + [0]]  # every image predicted 0
    labels = torch.tensor([0] * 9 + [1])
    assert classification_accuracy(images, classes, labels) == pytest.approx(0.9)
    assert mean_per_class_accuracy(images, classes, labels) == pytest.approx(0.5)


def test_a_prompt_encoded_as_a_zero_feature_is_refused_naming_it():
    # F.normalize left the zero row zero, so "cat" was the mean of one unit vector and a zero: the
    # other prompt's direction alone, without a word
    fake = FakeTextModel()

    def encode_text(ids, mask):
        features = fake.encode_text(ids, mask).detach().clone()
        features[1] = 0.0
        return features

    with pytest.raises(ValueError, match="encode_text returned a zero feature .* for the prompt 'the cat'"):
        zero_shot_classifier(encode_text, fake.tokenize, ["cat", "dog"], templates=("a {}", "the {}"))


def _first_right_position(scores, right):
    """0-based position of the first right candidate once the candidates are ordered by descending score,
    the wrong ones before the right ones among equal scores (ties never in the query's favour)."""
    order = sorted(range(len(scores)), key=lambda c: (-scores[c], right[c]))
    return next(position for position, c in enumerate(order) if right[c])


def test_retrieval_recall_equals_a_sort_by_score_with_ties_against_the_query():
    g = torch.Generator().manual_seed(5)
    image_of_text = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4, 5, 5, 6])  # COCO's 5
    # features from a few directions, so that many similarities tie exactly
    directions = torch.nn.functional.normalize(torch.randn(4, 6, generator=g), dim=-1)
    images = directions[torch.randint(0, 4, (7,), generator=g)]
    texts = directions[torch.randint(0, 4, (24,), generator=g)]
    # the exact scores: an fp32 matmul gave one (image, text) pair of directions values a bit apart
    sim = (images.double() @ texts.double().T).float().tolist()
    m, t = 7, 24
    assert len({round(v, 6) for row in sim for v in row}) < m * t / 4  # (ties are the point)
    for k in range(1, m + 1):
        got = retrieval_recall(images, texts, ks=(k,), image_of_text=image_of_text)
        i2t = [_first_right_position(sim[i], [int(image_of_text[c]) == i for c in range(t)]) < k for i in range(m)]
        t2i = [
            _first_right_position([sim[i][c] for i in range(m)], [i == int(image_of_text[c]) for i in range(m)]) < k
            for c in range(t)
        ]
        assert got[f"image_to_text_R@{k}"] == pytest.approx(sum(i2t) / m)
        assert got[f"text_to_image_R@{k}"] == pytest.approx(sum(t2i) / t)


def test_an_image_listed_twice_under_two_rows_ties_with_itself_against_its_texts():
    # the same picture as rows 0 and 1 (two ids of one file, one caption each): each caption finds the
    # other copy level with its own image, and the tie counts against it, so text->image R@1 is lost for
    # both; each copy sees the other's caption level with (or above) its own, so image->text R@1 too
    images = torch.eye(4)[[0, 0, 2, 3]]
    image_of_text = torch.tensor([0, 1, 2, 3])
    texts = torch.eye(4)[[0, 0, 2, 3]]
    got = retrieval_recall(images, texts, ks=(1, 2), image_of_text=image_of_text)
    assert got["text_to_image_R@1"] == 0.5 and got["text_to_image_R@2"] == 1.0
    assert got["image_to_text_R@1"] == 0.5 and got["image_to_text_R@2"] == 1.0


def test_a_caption_shared_by_two_images_counts_for_each_as_its_own_row():
    # "a dog" is caption 1 of image 0 and caption 2 of image 1 (identical features): for image 0, the
    # copy listed under image 1 is a wrong text level with its right one, and ranks before it
    images = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    dog = torch.nn.functional.normalize(torch.tensor([1.0, 1.0, 0.0]), dim=-1)
    texts = torch.stack([torch.tensor([0.0, 0.0, 1.0]), dog, dog, torch.tensor([0.0, 0.0, 1.0])])
    image_of_text = torch.tensor([2, 0, 1, 2])
    got = retrieval_recall(images, texts, ks=(1, 2), image_of_text=image_of_text)
    # image 0 and 1 each see their "a dog" level with the other's: R@1 lost, R@2 found; image 2 has its two
    assert got["image_to_text_R@1"] == pytest.approx(1 / 3) and got["image_to_text_R@2"] == 1.0
    # text->image: the two "a dog" rows each find images 0 and 1 level: R@1 lost for both
    assert got["text_to_image_R@1"] == 0.5 and got["text_to_image_R@2"] == 1.0


def _whole_matrix_recalls(images, texts, image_of_text, ks):
    """retrieval_recall's recalls as they were computed before the blocks: the whole (M, T) matrix at once
    (scores summed in fp64 and rounded to fp32, as the blocks' are)."""
    m, t = images.shape[0], texts.shape[0]
    similarity = (images.double() @ texts.double().T).float()
    right = image_of_text[None, :] == torch.arange(m)[:, None]
    own = similarity[image_of_text, torch.arange(t)]
    t2i = ((similarity >= own[None, :]) & ~right).sum(dim=0)
    best = similarity.masked_fill(~right, float("-inf")).amax(dim=1)
    i2t = ((similarity >= best[:, None]) & ~right).sum(dim=1)
    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = (i2t < k).double().mean().item()
        out[f"text_to_image_R@{k}"] = (t2i < k).double().mean().item()
    return out


def test_retrieval_recall_in_blocks_of_images_equals_the_whole_matrix_exactly_ties_included():
    """COCO 5k's (5,000, 25,000) similarities were built whole (500 MB, and as much again for its masked
    copy); they are now built about block_size at a time, with the same recalls to the last bit."""
    g = torch.Generator().manual_seed(11)
    image_of_text = torch.arange(23).repeat_interleave(5)[:113]  # five captions an image, the last image three
    directions = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    tied_images = directions[torch.randint(0, 6, (23,), generator=g)]  # few directions: ties everywhere
    tied_texts = directions[torch.randint(0, 6, (113,), generator=g)]
    free_images = torch.nn.functional.normalize(torch.randn(23, 8, generator=g), dim=-1)
    free_texts = torch.nn.functional.normalize(free_images[image_of_text] + torch.randn(113, 8, generator=g), dim=-1)
    collapsed = (
        torch.nn.functional.normalize(torch.ones(23, 8), dim=-1),
        torch.nn.functional.normalize(torch.ones(113, 8), dim=-1),
    )
    ks = (1, 5, 10)
    for images, texts in [(tied_images, tied_texts), (free_images, free_texts), collapsed]:
        whole = _whole_matrix_recalls(images, texts, image_of_text, ks)
        assert 0 < sum(whole.values()) or images is collapsed[0]
        for chunk in (1, 30, 226, 565, 2486, 2599, 10**6):  # one row or column at a time, some, all
            assert retrieval_recall(images, texts, ks, image_of_text=image_of_text, block_size=chunk) == whole
    assert retrieval_recall(*collapsed, ks, image_of_text=image_of_text, block_size=4)["text_to_image_R@10"] == 0.0


@pytest.mark.parametrize("chunk, error", [(0, ValueError), (2.0, TypeError), (True, TypeError)])
def test_retrieval_recall_refuses_a_bad_block_size_naming_it(chunk, error):
    images, texts = features()
    with pytest.raises(error, match="^block_size"):
        retrieval_recall(images, texts, (1,), block_size=chunk)


def test_shares_of_images_are_exact_fractions_not_float32_means():
    """81 right of 100 images was 0.8100000023841858 (a float32 mean of the credits, of the hits)."""
    classes = torch.eye(2)
    images = torch.cat([classes[[0] * 81], classes[[1] * 19]])
    labels = torch.zeros(100, dtype=torch.long)
    assert classification_accuracy(images, classes, labels) == 0.81
    # image i's caption is text i; 19 images share one feature, so only the first of them finds its caption
    image_rows = torch.eye(100, 101)
    image_rows[81:] = torch.eye(101)[100]
    texts = image_rows.clone()
    recall = retrieval_recall(image_rows, texts, ks=(1,))
    assert recall == {"image_to_text_R@1": 0.81, "text_to_image_R@1": 0.81}


def test_image_to_text_recall_is_scored_up_to_the_number_of_texts():
    """K was refused above min(images, texts): 3 images with 5 captions each got no image->text R@5, though 15
    texts are ranked; text->image (3 images ranked) is scored only up to K = 3."""
    images = torch.eye(3, 4)
    image_of_text = torch.arange(15) // 5
    texts = images[image_of_text]  # a perfect model: every caption is its image
    recall = retrieval_recall(images, texts, ks=(1, 3, 5, 10), image_of_text=image_of_text)
    expected = {f"image_to_text_R@{k}": 1.0 for k in (1, 3, 5, 10)}
    assert recall == {**expected, "text_to_image_R@1": 1.0, "text_to_image_R@3": 1.0}
    # each caption is the next image: an image's own captions rank after 10 wrong ones (5 above, 5 tied with
    # them, which count against it), so image->text finds one within K = 11, text->image never within 1
    shifted = images[(image_of_text + 1) % 3]
    recall = retrieval_recall(images, shifted, ks=(1, 10, 11), image_of_text=image_of_text)
    assert recall == {
        "image_to_text_R@1": 0.0,
        "image_to_text_R@10": 0.0,
        "image_to_text_R@11": 1.0,
        **{"text_to_image_R@1": 0.0},
    }
    with pytest.raises(ValueError) as info:
        retrieval_recall(images, texts, ks=(16,), image_of_text=image_of_text)
    assert str(info.value) == "ks must lie in [1, 15] (the texts image->text ranks), got [16]"
