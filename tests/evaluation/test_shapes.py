"""The held-out shapes task for any dual encoder, and its colour/shape breakdown."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torchflava.data.shapes import CLASS_NAMES, COLOURS, SHAPES
from torchflava.evaluation.shapes import attribute_agreement, evaluate_shapes, format_shapes_report


def index(name: str) -> int:
    return CLASS_NAMES.index(name)


def test_attribute_agreement_counts_colour_and_shape_separately():
    labels = torch.tensor([index("red circle"), index("blue square"), index("green cross"), index("red circle")])
    predicted = torch.tensor([index("red square"), index("blue square"), index("red cross"), index("blue triangle")])
    got = attribute_agreement(predicted, labels)
    assert got == {"colour_right": 0.5, "shape_right": 0.5}
    assert attribute_agreement(labels, labels) == {"colour_right": 1.0, "shape_right": 1.0}
    with pytest.raises(ValueError, match=r"predicted and labels must be \(N,\) with N >= 1"):
        attribute_agreement(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="class names must be '<colour> <shape>'"):
        attribute_agreement(torch.tensor([0]), torch.tensor([0]), ["red", "blue"])


class Oracle(torch.nn.Module):
    """Knows the colour from the pixels and the shape from nothing: an encoder that learnt only colour."""

    def encode_image(self, pixels):
        colours = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255
        mean = pixels.flatten(2).amax(dim=2)  # the shape's colour: the brightest value per channel
        colour = torch.cdist(mean, colours).argmin(dim=1)
        return F.one_hot(colour, len(COLOURS) + len(SHAPES)).float()

    def encode_text(self, ids, mask):
        # ids carry the colour in column 0 and the shape in column 1 (see tokenize below); the text
        # feature knows colour only (the tokens keep both: classes the tokenizer merges are refused)
        return F.one_hot(ids[:, 0] % len(COLOURS), len(COLOURS) + len(SHAPES)).float()


def test_an_encoder_that_knows_only_colour_scores_colour_right_and_shape_at_chance():
    def tokenize(texts):
        rows = []
        for text in texts:
            words = text.split()
            colour = next(w for w in words if w in COLOURS)
            shape = next(w for w in words if w in SHAPES)
            rows.append([list(COLOURS).index(colour), SHAPES.index(shape)])
        ids = torch.tensor(rows)
        return ids, torch.ones_like(ids)

    def transform(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)

    report = evaluate_shapes(Oracle(), tokenize, transform, num_test=540)
    assert report["zero_shot_colour_right"] == 1.0
    assert report["zero_shot_shape_right"] == pytest.approx(0.2)  # ties go to the first class: one shape of 5
    assert report["zero_shot_accuracy"] == pytest.approx(0.2)
    lines = format_shapes_report(report)
    assert "colour right 100.0%, shape right 20.0%" in lines[1]


@pytest.mark.parametrize("bad", [-1, 30])
def test_attribute_agreement_refuses_indices_that_are_not_classes(bad):
    """-1 wrapped round to the last class (0.5 and 0.5 reported); 30 was an IndexError."""
    from torchflava.evaluation.shapes import attribute_agreement

    with pytest.raises(ValueError, match=r"labels must be integer class indices in \[0, 30\)"):
        attribute_agreement(torch.tensor([0, 1]), torch.tensor([0, bad]))


def test_attribute_agreement_reads_uint8_indices_as_indices_not_a_mask():
    """A uint8 index tensor was a boolean mask: it picked the classes where it was non-zero."""
    labels = torch.tensor([index("red circle"), index("blue square"), index("green cross")])
    predicted = torch.tensor([index("red square"), index("blue square"), index("red cross")])
    expected = {"colour_right": pytest.approx(2 / 3), "shape_right": pytest.approx(2 / 3)}
    assert attribute_agreement(predicted, labels) == expected
    assert attribute_agreement(predicted.to(torch.uint8), labels.to(torch.uint8)) == expected
    with pytest.raises(ValueError, match=r"^predicted must be integer class indices in \[0, 30\)$"):
        attribute_agreement(predicted.to(torch.complex64), labels)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_test": 3}, r"num_test must be >= 5, got 3"),  # R@5's error, after every scene was encoded
        ({"num_test": 541}, r"num_test must be at most the 540"),
        ({"batch_size": 2.5}, r"batch_size must be an int, got float"),  # range()'s error
        ({"templates": ["a photo"]}, r"templates must be a non-empty sequence, each with one"),  # after encoding
    ],
)
def test_evaluate_shapes_checks_its_arguments_before_encoding(kwargs, match):
    class Untouchable(torch.nn.Module):
        def encode_image(self, pixels):
            pytest.fail("encoded before the arguments were checked")

        encode_text = encode_image

    with pytest.raises((ValueError, TypeError), match=match):
        evaluate_shapes(Untouchable(), lambda texts: None, lambda image: None, **kwargs)


def _colour_tokenize(texts):
    rows = []
    for text in texts:
        words = text.split()
        rows.append(
            [
                list(COLOURS).index(next(w for w in words if w in COLOURS)),
                SHAPES.index(next(w for w in words if w in SHAPES)),
            ]
        )
    ids = torch.tensor(rows)
    return ids, torch.ones_like(ids)


def _to_tensor(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


def test_evaluate_shapes_runs_in_eval_mode_and_gives_each_module_its_mode_back():
    """The model was left in eval mode: a recipe evaluating mid-training went on with dropout off."""

    class Recorded(Oracle):
        def __init__(self):
            super().__init__()
            self.dropout = torch.nn.Dropout(0.1)
            self.frozen = torch.nn.Dropout(0.1).eval()  # a submodule the caller keeps in eval mode
            self.seen = set()

        def encode_image(self, pixels):
            self.seen.add((self.training, self.dropout.training, torch.is_grad_enabled()))
            return super().encode_image(pixels)

    model = Recorded().train()
    model.frozen.eval()
    evaluate_shapes(model, _colour_tokenize, _to_tensor, num_test=10)
    assert model.seen == {(False, False, False)}
    assert model.training and model.dropout.training and not model.frozen.training
    model.eval()
    evaluate_shapes(model, _colour_tokenize, _to_tensor, num_test=10)
    assert not model.training and not model.dropout.training


def test_evaluate_shapes_of_a_bfloat16_model_equals_its_float32_result():
    """bf16 image features met the fp32 class embeddings in a matmul that failed inside torch."""

    class Half(Oracle):
        def encode_image(self, pixels):
            return super().encode_image(pixels).bfloat16()

        def encode_text(self, ids, mask):
            return super().encode_text(ids, mask).bfloat16()

    expected = evaluate_shapes(Oracle(), _colour_tokenize, _to_tensor, num_test=10)
    assert evaluate_shapes(Half(), _colour_tokenize, _to_tensor, num_test=10) == expected


def test_evaluate_shapes_refuses_a_model_that_is_not_a_module():
    with pytest.raises(TypeError) as info:
        evaluate_shapes(object(), _colour_tokenize, _to_tensor, num_test=10)
    assert str(info.value) == "model must be an nn.Module, got object"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_evaluate_shapes_of_a_model_on_a_gpu_equals_its_cpu_result():
    """The pixels and token ids stayed on the CPU for a model on a GPU: its first layer failed on them."""

    class OnDevice(Oracle):
        def __init__(self):
            super().__init__()
            self.zero = torch.nn.Parameter(torch.zeros(()))  # where the model is

        def encode_image(self, pixels):  # (a CUDA 0-dim parameter plus CPU pixels fails, as a real layer would)
            return super().encode_image((pixels + self.zero).cpu()).to(self.zero.device)

        def encode_text(self, ids, mask):
            return super().encode_text(ids, mask) + self.zero

    expected = evaluate_shapes(OnDevice(), _colour_tokenize, _to_tensor, num_test=10)
    assert evaluate_shapes(OnDevice().cuda(), _colour_tokenize, _to_tensor, num_test=10) == expected


def test_the_report_prints_a_small_chance_and_an_accuracy_short_of_100_percent_as_they_are():
    """One decimal printed R@1's chance over 3000 scenes as 0.0% and a recall of 0.9996 as 100.0%."""
    report = {"test_items": 3000, "num_classes": 30, "zero_shot_accuracy": 0.9996, "zero_shot_chance": 1 / 30}
    report.update(zero_shot_colour_right=1.0, zero_shot_shape_right=0.99996, **{"R@1_chance": 1 / 3000})
    report.update({"R@5_chance": 5 / 3000, "image_to_text_R@1": 0.9996, "text_to_image_R@1": 0.5})
    report.update({"image_to_text_R@5": 1.0, "text_to_image_R@5": 0.0})
    assert format_shapes_report(report)[1:] == [
        "  zero-shot classification (30 colour-shape classes): 99.96%   (chance 3.3%); colour right 100.0%, "
        "shape right 99.996% (chance 16.7% / 20.0%)",
        "  image->text R@1: 99.96%   text->image R@1: 50.0%   (chance 0.033%)",
        "  image->text R@5: 100.0%   text->image R@5: 0.0%   (chance 0.17%)",
    ]
