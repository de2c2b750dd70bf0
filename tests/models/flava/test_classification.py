"""flava_model_for_classification: heads, losses, HF weights, bad input."""

import pytest
import torch
from transformers import FlavaModel

from tests.helpers import TINY_FLAVA as T
from tests.helpers import padded_text
from tests.models.flava.test_convert_weights import _hf_kwargs, _perturb, _tiny_hf_config
from torchflava.models import flava_model, flava_model_for_classification


def _inputs(batch=3):
    ids, mask = padded_text(batch, 10, T["vocab_size"], [10, 6, 3][:batch])
    return torch.randn(batch, 3, T["image_size"], T["image_size"]), ids, mask


def _model(num_classes=4, **kwargs):
    torch.manual_seed(0)
    return flava_model_for_classification(num_classes, backbone=flava_model(**T), classifier_hidden_dim=12, **kwargs)


def _read_inputs(modality, images, ids, mask, **text_extra):
    """The inputs a head of ``modality`` reads (it refuses the others)."""
    text = {"text": ids, "text_attention_mask": mask, **text_extra}
    return {"image": {"image": images}, "text": text, "multimodal": {"image": images, **text}}[modality]


@pytest.mark.parametrize(
    "modality, width",
    [("text", T["text_embed_dim"]), ("image", T["image_embed_dim"]), ("multimodal", T["multimodal_embed_dim"])],
)
def test_head_reads_the_cls_of_its_encoder(modality, width):
    model = _model(modality=modality).eval()
    images, ids, mask = _inputs()
    read = _read_inputs(modality, images, ids, mask)
    with torch.no_grad():
        full = model.model(image=images, text=ids, text_attention_mask=mask)
        cls = model.cls_state(**read)
        out = model(**read)
    expected = {"text": full.text_embeddings, "image": full.image_embeddings, "multimodal": full.multimodal_embeddings}[
        modality
    ]
    assert cls.shape == (3, width)
    torch.testing.assert_close(cls, expected[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, model.classifier(cls))
    assert out.logits.shape == (3, 4) and out.loss is None


def test_hf_weights_give_the_encoder_outputs_of_flava_model_and_hf(tmp_path):
    hf = FlavaModel(_tiny_hf_config()).eval()
    _perturb(hf)
    hf.save_pretrained(tmp_path)
    kwargs = _hf_kwargs(tmp_path)
    reference = flava_model(pretrained=tmp_path, **kwargs).eval()
    images, ids, mask = _inputs()
    with torch.no_grad():
        ref = reference(image=images, text=ids, text_attention_mask=mask)
        hf_out = hf(pixel_values=images, input_ids=ids, attention_mask=mask)
        for modality, states in (
            ("image", ref.image_embeddings),
            ("text", ref.text_embeddings),
            ("multimodal", ref.multimodal_embeddings),
        ):
            model = flava_model_for_classification(
                2, modality=modality, backbone=flava_model(**kwargs), pretrained=tmp_path
            ).eval()
            cls = model.cls_state(**_read_inputs(modality, images, ids, mask))
            torch.testing.assert_close(cls, states[:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cls, hf_out.multimodal_embeddings[:, 0], atol=1e-4, rtol=1e-4)


def test_losses_match_their_definitions():
    images, ids, mask = _inputs()
    ce = _model(modality="image")
    out = ce(images, labels=torch.tensor([0, 3, 1]))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 3, 1])))
    bce = _model(modality="multimodal", loss="binary_cross_entropy")
    scores = torch.tensor([[1.0, 0.3, 0, 0], [0, 0, 0.6, 0], [0, 0, 0, 0]])
    out = bce(images, ids, text_attention_mask=mask, labels=scores)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, scores) * 4
    torch.testing.assert_close(out.loss, expected)
    reg = _model(1, modality="text")
    assert reg.loss == "mse"
    out = reg(text=ids, text_attention_mask=mask, labels=torch.tensor([0.5, 4.0, 2.5]))
    torch.testing.assert_close(out.loss, ((out.logits[:, 0] - torch.tensor([0.5, 4.0, 2.5])) ** 2).mean())
    out.loss.backward()
    assert reg.classifier[0].weight.grad.abs().sum() > 0
    assert reg.model.text_encoder.embeddings.word_embed.weight.grad.abs().sum() > 0
    assert reg.model.image_encoder.embeddings.proj.weight.grad is None  # the image encoder never ran


@pytest.mark.parametrize(
    "loss, num_classes, labels",
    [
        ("cross_entropy", 4, torch.tensor([0, 3, 1])),
        ("binary_cross_entropy", 4, torch.tensor([[1.0, 0.3, 0, 0], [0, 0, 0.6, 0], [0, 0, 0, 0]])),
        ("mse", 1, torch.tensor([0.5, 4.0, 2.5])),
    ],
)
def test_loss_sums_and_counts_are_the_loss_over_the_rows(loss, num_classes, labels):
    images, _, _ = _inputs()
    model = _model(num_classes, modality="image", loss=loss)
    out = model(images, labels=labels)
    assert set(out.loss_sums) == set(out.loss_counts) == {loss}
    assert out.loss_counts[loss].dtype == torch.float32 and float(out.loss_counts[loss]) == 3.0
    torch.testing.assert_close(out.loss_sums[loss], out.loss * 3)
    out.loss_sums[loss].backward()  # the sum carries the gradient
    assert model.classifier[0].weight.grad.abs().sum() > 0
    unlabelled = model(images)
    assert unlabelled.loss is None and unlabelled.loss_sums is None and unlabelled.loss_counts is None


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_classes=0), ValueError, "num_classes"),
        (dict(num_classes=2.0), TypeError, "num_classes"),
        (dict(num_classes=2, modality="audio"), ValueError, "modality"),
        (dict(num_classes=2, loss="hinge"), ValueError, "loss"),
        (dict(num_classes=1, loss="cross_entropy"), ValueError, "num_classes must be >= 2 for loss='cross_entropy'"),
        (dict(num_classes=2, classifier_hidden_dim=0), ValueError, "classifier_hidden_dim must be >= 1"),
        (dict(num_classes=2, classifier_dropout=1.5), ValueError, "classifier_dropout must be in"),
        (
            dict(num_classes=2, classifier_dropout=1.0),  # the head's output would not depend on its input
            ValueError,
            r"^classifier_dropout must be in \[0, 1\), got 1.0$",
        ),
    ],
)
def test_builder_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        flava_model_for_classification(backbone=flava_model(**T), **kwargs)


def test_bad_inputs_and_labels_name_what_is_wrong():
    images, ids, mask = _inputs()
    with pytest.raises(ValueError, match="missing \\['text'\\]"):
        _model(modality="multimodal")(images)
    with pytest.raises(ValueError, match="labels must be class ids in \\[0, 4\\)"):
        _model(modality="image")(images, labels=torch.tensor([0, 4, 1]))
    # the label and its row (min and max were named, not where the bad one was)
    at_row_2 = r"^labels must be class ids in \[0, 4\) \(num_classes=4\), got 7 at row 2 of the batch$"
    with pytest.raises(ValueError, match=at_row_2):
        _model(modality="image")(images, labels=torch.tensor([3, 0, 7]))
    with pytest.raises(ValueError, match="integer class ids"):
        _model(modality="image")(images, labels=torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="scores in \\[0, 1\\]"):
        _model(modality="image", loss="binary_cross_entropy")(images, labels=torch.full((3, 4), 2.0))
    with pytest.raises(ValueError, match="labels must be"):
        _model(1, modality="image")(images, labels=torch.ones(3, 2))
    nan = torch.tensor([0.5, float("nan"), 0.2])
    with pytest.raises(ValueError, match="labels must be finite"):  # was a NaN loss under mse and bce
        _model(1, modality="image")(images, labels=nan)
    with pytest.raises(ValueError, match="labels must be finite"):
        _model(modality="image", loss="binary_cross_entropy")(images, labels=nan[:, None].expand(3, 4))
    with pytest.raises(TypeError, match="labels must be a torch.Tensor, got list"):
        _model(modality="image")(images, labels=[0, 1, 2])
    with pytest.raises(ValueError, match="integer class ids"):
        _model(modality="image")(images, labels=torch.tensor([True, False, True]))
    model = _model(modality="image").eval()  # no dropout: two calls compare
    expected = model(images, labels=torch.tensor([0, 3, 1])).loss
    assert torch.equal(model(images, labels=torch.tensor([0, 3, 1], dtype=torch.int32)).loss, expected)
    with pytest.raises(TypeError, match="backbone must be a FLAVAModel"):
        flava_model_for_classification(2, backbone="x")


def test_sentence_pairs_read_their_token_types_as_hugging_face_flava_does(tmp_path):
    """A pair's second segment (token type 1) reaches the text encoder in the text and multimodal heads,
    and a Hugging Face checkpoint's text features of a pair (its processor's tokenizer with text_pair,
    token_type_ids into FlavaModel) equal ours within 1e-4 in fp32. Before, the head took no token types."""
    import torch.nn.functional as F
    from transformers import FlavaProcessor

    from tests.helpers import write_hf_flava
    from torchflava.pretrained import load_pretrained

    hf = write_hf_flava(tmp_path, lowercase=True)
    processor = FlavaProcessor.from_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    firsts = ["a photo of the cat", "an astronaut in space", "the coffee cup ! the coffee cup !"]
    seconds = ["the cat in space", "a woman", "a rocket"]
    ids, mask, types = ours.tokenizer.encode_pairs(firsts, seconds, max_length=12)
    ref = processor.tokenizer(firsts, seconds, truncation=True, max_length=12, padding=True, return_tensors="pt")
    assert (ids.tolist(), mask.tolist(), types.tolist()) == (
        ref["input_ids"].tolist(),
        ref["attention_mask"].tolist(),
        ref["token_type_ids"].tolist(),
    )
    assert types.sum() > 0  # a second segment in every row
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        hf_out = hf(pixel_values=images, input_ids=ids, attention_mask=mask, token_type_ids=types)
        hf_text = F.normalize(
            hf.get_text_features(input_ids=ids, attention_mask=mask, token_type_ids=types)[:, 0], dim=-1
        )
        torch.testing.assert_close(ours.model.encode_text(ids, mask, token_type_ids=types), hf_text, atol=1e-4, rtol=0)
        for modality, states in (("text", hf_out.text_embeddings), ("multimodal", hf_out.multimodal_embeddings)):
            model = flava_model_for_classification(2, modality=modality, backbone=ours.model).eval()
            cls = model.cls_state(**_read_inputs(modality, images, ids, mask, token_type_ids=types))
            torch.testing.assert_close(cls, states[:, 0], atol=1e-4, rtol=0)
            out = model(**_read_inputs(modality, images, ids, mask, token_type_ids=types))
            torch.testing.assert_close(out.logits, model.classifier(cls))
            # the segments matter: all-zero types (the joined encoding's) give other states
            single = model.cls_state(**_read_inputs(modality, images, ids, mask))
            assert (single - cls).abs().max() > 1e-3, modality
    image_head = flava_model_for_classification(2, modality="image", backbone=ours.model)
    with pytest.raises(
        ValueError, match=r"^token_type_ids: expected None for modality 'image' \(no text read\), got torch.int64 of"
    ):
        image_head(images, token_type_ids=types)


def test_labels_on_another_device_than_the_model_are_refused_naming_them():
    # (a meta tensor failed on Tensor.item() inside torch)
    image, ids, mask = _inputs(2)
    with pytest.raises(ValueError, match=r"^labels must be on the model's device cpu, got meta$"):
        _model(3)(image, ids, text_attention_mask=mask, labels=torch.tensor([0, 2], device="meta"))


@pytest.mark.parametrize(
    "modality, extra, name, read",
    [
        ("text", {"image": "images"}, "image", "image"),
        ("image", {"text": "ids"}, "text", "text"),
        ("image", {"text_attention_mask": "mask"}, "text_attention_mask", "text"),
    ],
)
def test_a_head_refuses_an_input_its_modality_does_not_read(modality, extra, name, read):
    """An image given to a text head (or text, or its mask, to an image head) was ignored: the logits were
    those of the one modality, as if the head had read both. Refused, naming the input and the modality;
    a multimodal head reads everything."""
    images, ids, mask = _inputs()
    values = {"images": images, "ids": ids, "mask": mask}
    model = _model(modality=modality).eval()
    inputs = {**_read_inputs(modality, images, ids, mask), **{k: values[v] for k, v in extra.items()}}
    message = rf"^{name}: expected None for modality '{modality}' \(no {read} read\), got torch\.\w+ of shape "
    with pytest.raises(ValueError, match=message):
        model(**inputs)
    with pytest.raises(ValueError, match=message):
        model.cls_state(**inputs)
    with torch.no_grad():  # what it reads alone still works, and a multimodal head takes all three
        assert model(**_read_inputs(modality, images, ids, mask)).logits.shape == (3, 4)
        assert _model(modality="multimodal")(images, ids, text_attention_mask=mask).logits.shape == (3, 4)


def test_read_inputs_keeps_what_a_head_of_each_modality_reads():
    """An image + text dataset's batch (both kept by its collator) for a unimodal head: its inputs alone."""
    from torchflava.models.flava.classification import read_inputs

    images, ids, mask = _inputs()
    labels = torch.tensor([0, 1, 2])
    batch = {"image": images, "text": ids, "text_attention_mask": mask, "labels": labels}
    assert list(read_inputs(batch, "text")) == ["text", "text_attention_mask", "labels"]
    assert list(read_inputs(batch, "image")) == ["image", "labels"]
    assert read_inputs(batch, "multimodal") == batch
    with torch.no_grad():
        for modality in ("text", "image"):
            model = _model(modality=modality).eval()
            out = model(**read_inputs(batch, modality))
            torch.testing.assert_close(out.logits, model(**_read_inputs(modality, images, ids, mask)).logits)
    with pytest.raises(ValueError, match=r"^modality must be one of \('text', 'image', 'multimodal'\), got 'audio'$"):
        read_inputs(batch, "audio")


@pytest.mark.parametrize(
    "num_classes, loss, labels",
    [
        (4, "cross_entropy", lambda: torch.zeros(2, dtype=torch.long)),
        (4, "binary_cross_entropy", lambda: torch.zeros(2, 4)),
        (1, "mse", lambda: torch.zeros(2)),
    ],
)
def test_a_classifier_with_labels_runs_on_the_meta_device(num_classes, loss, labels):
    """A meta-device dry run of a fine-tuning step (shapes before memory is spent): the label checks read
    values, and failed inside torch ("Tensor.item() cannot be called on meta tensors"); their shape and
    dtype parts still refuse bad labels there."""
    with torch.device("meta"):
        model = flava_model_for_classification(
            num_classes, backbone=flava_model(**T), classifier_hidden_dim=12, loss=loss
        )
        ids = torch.zeros(2, 10, dtype=torch.long)
        out = model(torch.empty(2, 3, T["image_size"], T["image_size"]), ids, labels=labels())
        assert out.logits.shape == (2, num_classes) and out.logits.is_meta
        assert out.loss.shape == () and out.loss.is_meta
        assert out.loss_counts == {loss: out.loss_counts[loss]} and out.loss_counts[loss].is_meta
        wrong = torch.zeros(3, dtype=torch.long)  # three labels for two rows: refused on meta too
        with pytest.raises(ValueError, match=r"^labels must be "):
            model(torch.empty(2, 3, T["image_size"], T["image_size"]), ids, labels=wrong)
