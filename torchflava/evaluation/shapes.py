"""The built-in held-out task: zero-shot colour-shape classification and retrieval on the shapes world.

Works for any dual encoder with ``encode_image(pixels) -> (N, P)`` and ``encode_text(ids, mask) ->
(N, P)`` normalised features (FLAVA, CLIP, a model of your own). Besides accuracy over the 30
colour-shape classes it reports how often the predicted class has the right colour and the right
shape, since the two are learnt at different speeds.
"""

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from torchflava.data.shapes import ALL_SCENES, CLASS_NAMES, ShapesWorld
from torchflava.evaluation.metrics import percent
from torchflava.evaluation.zero_shot import (
    check_distinct_tokens,
    classification_accuracy,
    retrieval_recall,
    zero_shot_classifier,
)
from torchflava.utils.checkpoint import first_line
from torchflava.utils.checks import check_int, check_module, fill_template, is_integer_tensor, is_prompt_template
from torchflava.utils.modes import eval_mode

DEFAULT_TEMPLATES = ("a {}", "a small {}", "a large {}")


def attribute_agreement(predicted: Tensor, labels: Tensor, class_names: Sequence[str] = CLASS_NAMES) -> dict:
    """How often the predicted ``"<colour> <shape>"`` class names the true colour, and the true shape.

    Args:
        predicted (Tensor): (N,) predicted class indices into ``class_names``.
        labels (Tensor): (N,) true class indices.
        class_names (Sequence[str]): names of the form ``"<colour> <shape>"``.

    Returns:
        dict: ``colour_right`` and ``shape_right``, shares in [0, 1].

    Raises:
        ValueError: if the shapes differ, the tensors are empty, an index is not a class's, or a name is
            not two words.
    """
    if predicted.shape != labels.shape or predicted.dim() != 1 or predicted.numel() == 0:
        raise ValueError(
            f"predicted and labels must be (N,) with N >= 1, got {tuple(predicted.shape)} and {tuple(labels.shape)}"
        )
    parts = [name.split(" ") for name in class_names]
    if any(len(p) != 2 for p in parts):
        raise ValueError(f"class names must be '<colour> <shape>', got {list(class_names)[:3]}...")
    for name, indices in (("predicted", predicted), ("labels", labels)):  # -1 wrapped round; 30 an IndexError
        if not is_integer_tensor(indices) or not bool(((indices >= 0) & (indices < len(parts))).all()):
            raise ValueError(f"{name} must be integer class indices in [0, {len(parts)})")
    predicted, labels = predicted.long(), labels.long()  # a uint8 index would be read as a mask
    colours = torch.tensor([sorted({p[0] for p in parts}).index(p[0]) for p in parts])
    shapes = torch.tensor([sorted({p[1] for p in parts}).index(p[1]) for p in parts])
    return {
        "colour_right": float((colours[predicted] == colours[labels]).double().mean()),
        "shape_right": float((shapes[predicted] == shapes[labels]).double().mean()),
    }


@torch.no_grad()
def evaluate_shapes(
    model: nn.Module,
    tokenize: Callable[[Sequence[str]], tuple[Tensor, Tensor]],
    image_transform: Callable,
    *,
    num_test: int = 540,
    render_size: int = 64,
    seed: int = 0,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 128,
) -> dict:
    """Zero-shot colour-shape classification and image-text retrieval on the held-out shapes split.

    The model runs in eval mode under ``torch.no_grad``; each of its modules gets its own mode back.

    Args:
        model (nn.Module): has ``encode_image(pixels)`` and ``encode_text(ids, mask)``, normalised.
        tokenize (Callable[[Sequence[str]], tuple[Tensor, Tensor]]): texts -> (ids, attention mask).
        image_transform (Callable): PIL image -> (3, H, W) model input.
        num_test (int): held-out scenes (at most the 540 distinct ones).
        render_size (int): side the scenes are drawn at.
        seed (int): the world's seed.
        templates (Sequence[str]): zero-shot prompt templates, each with one ``{}``.
        batch_size (int): encoder batch size.

    Returns:
        dict: ``test_items``, ``zero_shot_accuracy``, ``zero_shot_colour_right``,
        ``zero_shot_shape_right``, ``num_classes``, recall at 1 and 5 both ways, and the chance level of
        each.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``, or ``batch_size`` or ``num_test`` not an int.
        ValueError: if ``batch_size`` is below 1, ``num_test`` is not in [5, 540] (recall at 5 needs 5
            scenes), or a template lacks ``{}`` — all before anything is encoded.
    """
    check_int("batch_size", batch_size, 1)  # (2.5 failed inside range())
    if check_int("num_test", num_test, 5) > len(ALL_SCENES):
        raise ValueError(f"num_test must be at most the {len(ALL_SCENES)} held-out scenes, got {num_test}")
    bad = [t for t in templates if not is_prompt_template(t)]
    if isinstance(templates, str) or not templates or bad:
        raise ValueError(
            f"templates must be a non-empty sequence, each with one '{{}}' (or '{{c}}'), got {templates!r}"
        )
    check_module("model", model)
    with eval_mode(model):
        return _evaluate(model, tokenize, image_transform, num_test, render_size, seed, templates, batch_size)


def _evaluate(
    model: nn.Module,
    tokenize: Callable[[Sequence[str]], tuple[Tensor, Tensor]],
    image_transform: Callable,
    num_test: int,
    render_size: int,
    seed: int,
    templates: Sequence[str],
    batch_size: int,
) -> dict:
    """:func:`evaluate_shapes` on checked arguments, the model in eval mode."""
    test = ShapesWorld("test", num_test, image_size=render_size, seed=seed)
    samples = [test[i] for i in range(len(test))]
    images = torch.stack([image_transform(s.image) for s in samples])
    # a model on an accelerator gets its inputs there (the CPU pixels and ids failed inside its first layer), and
    # its features come back to the CPU, where the labels and the class names' indices are
    device = next(model.parameters(), torch.empty(0)).device

    def encode_text(ids: Tensor, mask: Tensor) -> Tensor:
        return torch.cat(
            [
                model.encode_text(ids[i : i + batch_size].to(device), mask[i : i + batch_size].to(device)).cpu()
                for i in range(0, len(ids), batch_size)
            ]
        )

    image_features = torch.cat(
        [model.encode_image(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    )
    text_features = encode_text(*tokenize([s.text for s in samples]))
    classes = zero_shot_classifier(encode_text, tokenize, CLASS_NAMES, templates)
    labels = torch.tensor([CLASS_NAMES.index(test.scene(i).label) for i in range(len(test))])
    # (fp32 as classes are: bf16 features failed inside the matmul)
    agreement = attribute_agreement((image_features.float() @ classes.T).argmax(dim=1), labels)
    n = len(test)
    return {
        "test_items": n,
        "zero_shot_accuracy": classification_accuracy(image_features, classes, labels),
        "zero_shot_colour_right": agreement["colour_right"],
        "zero_shot_shape_right": agreement["shape_right"],
        "zero_shot_chance": 1 / len(CLASS_NAMES),
        "num_classes": len(CLASS_NAMES),
        **retrieval_recall(image_features, text_features, ks=(1, 5)),
        "R@1_chance": 1 / n,
        "R@5_chance": 5 / n,
    }


def format_shapes_report(e: dict) -> list[str]:
    """The lines a recipe prints for :func:`evaluate_shapes`'s result."""
    lines = [
        f"held-out shapes split ({e['test_items']} scenes, unique captions):",
        f"  zero-shot classification ({e['num_classes']} colour-shape classes): "
        f"{percent(e['zero_shot_accuracy'])}   (chance {percent(e['zero_shot_chance'])}); "
        f"colour right {percent(e['zero_shot_colour_right'])}, shape right {percent(e['zero_shot_shape_right'])} "
        "(chance 16.7% / 20.0%)",
    ]
    for k in (1, 5):
        lines.append(
            f"  image->text R@{k}: {percent(e[f'image_to_text_R@{k}'])}   text->image R@{k}: "
            f"{percent(e[f'text_to_image_R@{k}'])}   (chance {percent(e[f'R@{k}_chance'])})"
        )
    return lines


def shapes_prompts_check(
    tokenize: Callable[..., tuple], templates: Sequence[str], max_length: int, *, evaluated: bool
) -> tuple:
    """A check that ``tokenize(prompts, max_length=)`` (the run's tokenizer) keeps the zero-shot prompts of the
    shapes world's classes (``eval.templates`` filled with each class name) apart at ``max_length``
    (``data.max_text_length``), where the run is ``evaluated`` on that world after training: the evaluation
    raised for two classes whose prompts read the same, a traceback once the run had trained (prompts cut
    short by a small ``data.max_text_length``, or a vocabulary learnt from a few pairs, without the class words).

    Returns:
        tuple: ``(ok, key, expected, got)`` for :func:`raise_on_failed_checks`: ``data.max_text_length`` where
        longer prompts are told apart (the length they need), else ``eval.enabled``.
    """
    if not evaluated:
        return (True, "eval.enabled", "", None)
    prompts = [fill_template(template, name) for name in CLASS_NAMES for template in templates]

    def fault(length: int) -> Optional[str]:
        try:
            check_distinct_tokens(CLASS_NAMES, len(templates), *tokenize(prompts, max_length=length))
        except ValueError as error:
            return first_line(error)
        return None

    reason = fault(max_length)
    if reason is None:
        return (True, "eval.enabled", "", None)
    longest = int(tokenize(prompts, max_length=2**20)[1].sum(dim=1).max())  # (rows padded to the longest only)
    needed = next((n for n in range(max_length + 1, longest + 1) if fault(n) is None), None)
    if needed is not None:
        expected = (
            f"at least {needed}, where the tokenizer keeps the zero-shot prompts of the held-out shapes classes "
            f"apart (the evaluation after training), or eval.enabled=false ({reason})"
        )
        return (False, "data.max_text_length", expected, max_length)
    expected = (
        "false: the run's tokenizer reads the zero-shot prompts of two held-out shapes classes as the same tokens "
        f"(the evaluation after training could not score it; {reason})"
    )
    return (False, "eval.enabled", expected, True)
