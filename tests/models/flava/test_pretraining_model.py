"""FLAVAForPretraining on its own: routing, work skipped, codebook use, temperature and bad input."""

import math

import pytest
import torch

from tests.helpers import TINY_FLAVA, padded_text
from torchflava.models import flava_model, flava_model_for_pretraining
from torchflava.models.flava import LossWeights
from torchflava.modules.codebook import dalle_encoder

VOCAB_IMAGE = 64


@pytest.fixture
def model():
    codebook = dalle_encoder(hidden_dim=8, blocks_per_group=1, vocab_size=VOCAB_IMAGE)
    return flava_model_for_pretraining(
        backbone=flava_model(**TINY_FLAVA), codebook=codebook, image_vocab_size=VOCAB_IMAGE
    ).train()


def batch(kind="pair", b=4):
    image = torch.randn(b, 3, 32, 32)
    patch_mask = torch.rand(b, 16) < 0.5
    patch_mask[:, 0] = True
    text, attention = padded_text(b, 10, 99, [10, 6, 3, 8][:b])
    labels = torch.full_like(text, -100)
    labels[:, 1] = text[:, 1]
    masked = text.clone()
    masked[:, 1] = 3
    full = dict(
        image=image,
        image_patch_mask=patch_mask,
        image_tokens=torch.randint(0, VOCAB_IMAGE, (b, 16)),
        text=text,
        text_masked=masked,
        text_attention_mask=attention,
        mlm_labels=labels,
        itm_labels=torch.tensor([1, 0, 1, 1][:b]),
    )
    keys = {
        "pair": full.keys(),
        "image": ("image", "image_patch_mask", "image_tokens"),
        "text": ("text_masked", "text_attention_mask", "mlm_labels"),
    }[kind]
    return {k: full[k] for k in keys}


def count_calls(model):
    calls = {"image": 0, "text": 0, "multimodal": 0}
    for name, module in (
        ("image", model.model.image_encoder),
        ("text", model.model.text_encoder),
        ("multimodal", model.model.multimodal_encoder),
    ):
        module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    return calls


@pytest.mark.parametrize(
    "kind, losses, passes",
    [
        ("image", {"mim"}, {"image": 1, "text": 0, "multimodal": 0}),
        ("text", {"mlm"}, {"image": 0, "text": 1, "multimodal": 0}),
        # a pair's masked and unmasked passes: one call each, the batch stacked on itself
        ("pair", {"itm", "global_contrastive", "mmm_image", "mmm_text"}, {"image": 1, "text": 1, "multimodal": 1}),
    ],
)
def test_each_batch_kind_runs_only_its_losses_and_passes(model, kind, losses, passes):
    calls = count_calls(model)
    out = model(batch(kind))
    present = {name for name, value in out.losses._asdict().items() if value is not None}
    assert present == losses
    assert calls == passes
    torch.testing.assert_close(out.loss, sum(v for v in out.losses if v is not None))
    assert torch.isfinite(out.loss)


def _text_batch_of_length(length: int, b: int = 3) -> dict:
    """A text-only batch of another padded length than batch()'s 10 columns."""
    text, attention = padded_text(b, length, 99, [length, 4, 2][:b])
    labels = torch.full_like(text, -100)
    labels[:, 1] = text[:, 1]
    masked = text.clone()
    masked[:, 1] = 3
    return dict(text_masked=masked, text_attention_mask=attention, mlm_labels=labels)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("text_length", [10, 14, 7])
def test_a_list_of_batches_equals_a_call_per_batch_with_each_encoder_run_once(model, recompute, text_length):
    """The all6 step (a pair, an image and a text batch) in one call: each encoder once over all
    their rows, texts of other lengths padded to the longest; the same losses and gradients."""
    torch.manual_seed(0)
    model.recompute_contrastive_passes = recompute
    batches = [batch("pair"), batch("image", b=3), _text_batch_of_length(text_length)]
    separate = [model(b) for b in batches]
    sum(out.loss for out in separate).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    calls = count_calls(model)
    together = model(batches)
    assert isinstance(together, list) and len(together) == 3
    # the contrastive-only unmasked passes run on their own when they are recomputed
    assert calls == {"image": 2 if recompute else 1, "text": 2 if recompute else 1, "multimodal": 1}
    for one, other in zip(together, separate):
        assert one.losses._fields == other.losses._fields
        for name, value in one.losses._asdict().items():
            if value is None:
                assert getattr(other.losses, name) is None
            else:
                torch.testing.assert_close(value, getattr(other.losses, name), rtol=1e-5, atol=1e-6)
        assert one.loss_counts.keys() == other.loss_counts.keys()
        for name, count in one.loss_counts.items():
            assert torch.equal(count, other.loss_counts[name])
        if one.mlm_logits is not None:
            torch.testing.assert_close(one.mlm_logits, other.mlm_logits, rtol=1e-5, atol=1e-5)
    sum(out.loss for out in together).backward()
    got = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    for name, grad in got.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_multimodal_last_layer_computes_only_the_positions_the_losses_read(model):
    """ITM reads the fused CLS, MMM the masked positions of matched rows: the last layer computes those
    alone, and the losses equal the heads on the full fused output."""
    torch.manual_seed(0)
    data = batch("pair")
    shapes = []
    model.model.multimodal_encoder.register_forward_hook(lambda m, a, out: shapes.append(out.last_hidden_state.shape))
    out = model(data)
    matched = data["itm_labels"] != 0
    needed = 1 + data["image_patch_mask"].sum(1) + (data["mlm_labels"] != -100).sum(1)
    assert shapes == [torch.Size([4, int(needed[matched].max()), 16])]  # of 1 + 17 + 10 = 28 positions

    m = model.model  # the same losses from the full fused output, as the heads read it
    padding = data["text_attention_mask"] == 0
    image = m.image_encoder(data["image"], patch_mask=data["image_patch_mask"], return_pooled=False)
    text = m.text_encoder(data["text_masked"], padding_mask=padding, return_pooled=False)
    fused = m.multimodal_encoder(
        image.prenorm_last_hidden_state, text.prenorm_last_hidden_state, text_padding_mask=padding, return_pooled=False
    ).last_hidden_state
    assert fused.shape[1] == 28
    targets = torch.where(data["image_patch_mask"], data["image_tokens"], -100)[matched]
    picked = targets != -100
    expected_image = torch.nn.functional.cross_entropy(
        model.mmm_image_head(fused[matched, 2:18][picked]), targets[picked]
    )
    labels = data["mlm_labels"][matched]
    expected_text = torch.nn.functional.cross_entropy(
        model.mmm_text_head(fused[matched, 18:][labels != -100]), labels[labels != -100]
    )
    expected_itm = torch.nn.functional.cross_entropy(model.itm_head(fused), data["itm_labels"])
    torch.testing.assert_close(out.losses.mmm_image, expected_image, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.losses.mmm_text, expected_text, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.losses.itm, expected_itm, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.mmm_image_targets, targets[picked])


def test_a_list_of_batches_is_checked_whole_before_any_encoder_runs(model):
    calls = count_calls(model)
    bad = batch("text")
    bad["mlm_labels"] = bad["mlm_labels"].float()
    with pytest.raises(TypeError, match="batch field mlm_labels must be an integer tensor"):
        model([batch("pair"), batch("image"), bad])
    assert calls == {"image": 0, "text": 0, "multimodal": 0}
    with pytest.raises(ValueError, match="batch: expected a batch, or a non-empty list of batches, got an empty list"):
        model([])
    single = model([batch("image")])
    assert isinstance(single, list) and len(single) == 1 and single[0].losses.mim is not None


def test_loss_sums_and_counts_are_each_weighted_loss_over_what_it_averages(model):
    model.weights = LossWeights(mmm_text=2.0, mim=0.5)
    data = batch("pair")
    out = model(data)
    matched = data["itm_labels"] == 1  # MMM and the contrastive loss leave the ITM negative out
    expected_counts = {
        "itm": 4,
        "global_contrastive": int(matched.sum()),
        "mmm_image": int(data["image_patch_mask"][matched].sum()),
        "mmm_text": int((data["mlm_labels"][matched] != -100).sum()),
    }
    image_data = batch("image")
    image, text = model(image_data), model(batch("text"))
    expected_counts_image = {"mim": int(image_data["image_patch_mask"].sum())}
    for output, counts in ((out, expected_counts), (image, expected_counts_image), (text, {"mlm": 4})):
        assert list(output.loss_counts) == list(counts) and list(output.loss_sums) == list(counts)
        for name, count in counts.items():
            assert output.loss_counts[name].dtype == torch.float32 and float(output.loss_counts[name]) == count
            torch.testing.assert_close(output.loss_sums[name], getattr(output.losses, name) * count)  # weighted
    # the weighted sums over the targets, recomputed from the logits
    weighted = 2.0 * torch.nn.functional.cross_entropy(out.mmm_text_logits, out.mmm_text_targets, reduction="sum")
    torch.testing.assert_close(out.loss_sums["mmm_text"], weighted)
    weighted = 0.5 * torch.nn.functional.cross_entropy(image.mim_logits, image.mim_targets, reduction="sum")
    torch.testing.assert_close(image.loss_sums["mim"], weighted)


def test_unmasked_pair_reuses_its_passes(model):
    calls = count_calls(model)
    data = batch("pair")
    del data["image_patch_mask"], data["text_masked"], data["image_tokens"]
    out = model(data)
    assert calls == {"image": 1, "text": 1, "multimodal": 1}  # the masked passes are the unmasked ones
    assert out.losses.global_contrastive is not None and out.losses.mmm_image is None


def test_unimodal_losses_on_pairs(model):
    model.unimodal_losses_on_pairs = True
    out = model(batch("pair"))
    assert out.losses.mim is not None and out.losses.mlm is not None


def test_pair_gradients_reach_backbone_and_heads(model):
    model(batch("pair")).loss.backward()
    for name in (
        "model.image_encoder.embeddings.mask_token",
        "model.multimodal_encoder.cls_token",
        "model.logit_scale",
        "itm_head.classifier.weight",
        "mmm_image_head.decoder.weight",
        "mmm_text_head.decoder.weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and bool(grad.abs().sum() > 0), name
    assert all(p.grad is None for p in model.codebook.parameters())


def test_codebook_pixels_give_the_same_loss_as_precomputed_tokens(model):
    data = batch("image")
    pixels = torch.rand(4, 3, 32, 32) * 0.8 + 0.1
    from_pixels = model({**{k: v for k, v in data.items() if k != "image_tokens"}, "codebook_pixels": pixels})
    tokens = model.codebook.tokens(pixels)
    from_tokens = model({**data, "image_tokens": tokens})
    torch.testing.assert_close(from_pixels.loss, from_tokens.loss)
    masked = data["image_patch_mask"]
    torch.testing.assert_close(from_tokens.mim_targets, tokens[masked])


def test_logit_scale_is_clamped_without_editing_the_parameter(model):
    with torch.no_grad():
        model.model.logit_scale.fill_(10.0)
    out = model(batch("pair"))
    assert model.model.logit_scale.item() == 10.0  # forward did not touch it
    row = out.contrastive_logits_per_image
    assert row.abs().max() <= 100.0 + 1e-4  # exp(ln 100) times a cosine
    out.loss.backward()
    assert model.model.logit_scale.grad.item() == 0.0  # clamped: no gradient outside the range
    model.clamp_logit_scale_()
    assert model.model.logit_scale.item() == pytest.approx(math.log(100.0))
    assert flava_model_for_pretraining(
        backbone=flava_model(**TINY_FLAVA), build_codebook=False, image_vocab_size=VOCAB_IMAGE
    ).model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_trailing_padding_is_trimmed_without_changing_losses(model):
    data = batch("pair")
    padded = dict(data)
    for key in ("text", "text_masked", "text_attention_mask"):
        padded[key] = torch.cat([data[key], torch.zeros(4, 5, dtype=data[key].dtype)], dim=1)
    padded["mlm_labels"] = torch.cat([data["mlm_labels"], torch.full((4, 5), -100)], dim=1)
    model.eval()
    torch.testing.assert_close(model(padded).loss, model(data).loss, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda d: d.update(image=d["image"][:3]), ValueError, "disagree in batch size"),
        (lambda d: d["mlm_labels"].__setitem__((0, 1), 99), ValueError, "mlm_labels must be in"),
        (lambda d: d.update(mlm_labels=d["mlm_labels"][:, :5]), ValueError, "mlm_labels must have the shape of text"),
        (
            lambda d: d.update(image_tokens=d["image_tokens"] + VOCAB_IMAGE),
            ValueError,
            "image_tokens must be codebook ids",
        ),
        (
            lambda d: d.update(image_patch_mask=d["image_patch_mask"][:, :9]),
            ValueError,
            "image_patch_mask must have shape",
        ),
        (lambda d: d.update(itm_labels=torch.tensor([1, 2, 0, 1])), ValueError, "itm_labels must be"),
        (lambda d: d.update(captions=d["text"]), TypeError, "unknown batch field"),
        (lambda d: [d.pop(k) for k in list(d) if k != "image"], ValueError, "calls for no loss"),
    ],
)
def test_bad_batches_name_the_field(model, change, error, match):
    data = batch("pair")
    change(data)
    with pytest.raises(error, match=match):
        model(data)


def test_missing_targets_and_bad_arguments(model):
    data = batch("image")
    del data["image_tokens"]
    model.codebook = None
    with pytest.raises(ValueError, match="image_tokens, or codebook_pixels"):
        model(data)
    with pytest.raises(TypeError, match="PretrainingBatch or a mapping"):
        model([1, 2, 3])
    with pytest.raises(ValueError, match="mim_weight must be >= 0, got -1.0"):
        flava_model_for_pretraining(backbone=flava_model(**TINY_FLAVA), build_codebook=False, mim_weight=-1.0)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(image_vocab_size=0), ValueError, "flava_model_for_pretraining: image_vocab_size must be >= 1, got 0"),
        (
            dict(image_vocab_size=1),  # one codebook id: MIM and MMM-image losses of 0 at every step
            ValueError,
            r"^flava_model_for_pretraining: image_vocab_size must be >= 2 \(one codebook id: the image losses are "
            r"always 0\), got 1$",
        ),
        (dict(image_vocab_size=8.0), TypeError, "flava_model_for_pretraining: image_vocab_size must be an int"),
        (dict(head_norm_eps=0.0), ValueError, "flava_model_for_pretraining: head_norm_eps must be a positive"),
        (dict(mmm_text_weight=float("nan")), ValueError, "mmm_text_weight must be a finite number, got nan"),
        (dict(itm_weight="1"), ValueError, "itm_weight must be a finite number, got '1'"),
    ],
)
def test_bad_head_arguments_are_named_before_the_backbone_is_built(change, error, match, monkeypatch):
    import torchflava.models.flava.builders as builders

    monkeypatch.setattr(
        builders, "flava_model", lambda **kwargs: pytest.fail("built before the arguments were checked")
    )
    with pytest.raises(error, match=match):
        flava_model_for_pretraining(build_codebook=False, **change)


def test_loads_a_torchmultimodal_pretraining_checkpoint(tmp_path):
    from torchmultimodal.models.flava.model import DalleVAEEncoder, FLAVAForPreTraining
    from torchmultimodal.models.flava.model import flava_model as tmm_flava_model
    from torchmultimodal.modules.losses.flava import FLAVAPretrainingLoss

    sizes = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=48)
    tmm = FLAVAForPreTraining(
        tmm_flava_model(
            **{f"{tower}_{k}": v for tower in ("image", "text", "multimodal") for k, v in sizes.items()},
            image_size=32,
            patch_size=8,
            vocab_size=99,
            text_and_image_proj_size=20,
        ),
        DalleVAEEncoder(image_size=32, pretrained=False),
        FLAVAPretrainingLoss(logit_scale=1.5, hidden_size=32, text_vocab_size=99, image_vocab_size=8192),
    )
    with torch.no_grad():
        for p in tmm.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save(tmm.state_dict(), tmp_path / "tmm.pt")
    ours = flava_model_for_pretraining(
        backbone=flava_model(
            image_embed_dim=32,
            image_num_layers=2,
            image_num_heads=4,
            image_mlp_dim=48,
            image_size=32,
            patch_size=8,
            text_embed_dim=32,
            text_num_layers=2,
            text_num_heads=4,
            text_mlp_dim=48,
            vocab_size=99,
            multimodal_embed_dim=32,
            multimodal_num_layers=2,
            multimodal_num_heads=4,
            multimodal_mlp_dim=48,
            projection_dim=20,
        ),
        pretrained=tmp_path / "tmm.pt",
        head_norm_eps=1e-5,
    )
    reference = tmm.state_dict()
    assert ours.model.logit_scale.item() == pytest.approx(reference["loss.contrastive_loss.logit_scale"].item())
    torch.testing.assert_close(ours.mlm_head.decoder.bias, reference["loss.mlm_loss.cls.bias"])
    torch.testing.assert_close(ours.mmm_image_head.norm.weight, reference["loss.mmm_loss.mim.cls.layer_norm.weight"])
    torch.testing.assert_close(ours.itm_head.classifier.weight, reference["loss.itm_loss.cls.seq_relationship.weight"])
    torch.testing.assert_close(ours.model.multimodal_encoder.cls_token, reference["model.mm_encoder.cls_token"])
    pixels = torch.rand(2, 3, 32, 32) * 0.8 + 0.1
    torch.testing.assert_close(ours.codebook.tokens(pixels), tmm.image_codebook(pixels).flatten(1))


def test_recomputing_contrastive_passes_changes_nothing_but_memory(model):
    """Also the one call for a pair's masked and unmasked passes (the reference) against two calls
    (recomputing runs the unmasked pass on its own): same loss, same gradients."""
    data = batch("pair")
    reference = model(data)
    reference.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.recompute_contrastive_passes = True
    model.model.multimodal_encoder.encoder.checkpoint_activations = True
    calls = {"layers": 0}
    model.model.image_encoder.encoder.layers[0].register_forward_pre_hook(  # pre-hooks also see recomputation
        lambda *_: calls.__setitem__("layers", calls["layers"] + 1)
    )
    out = model(data)
    out.loss.backward()
    assert calls["layers"] == 3  # masked pass, unmasked pass, and the unmasked pass again in backward
    torch.testing.assert_close(out.loss, reference.loss)
    for name, p in model.named_parameters():
        if name in grads:  # fp32 sums over other row counts (one call of 2B rows or two of B): rounding apart,
            scale = float(grads[name].abs().max())  # ~3e-6 of the largest entry on an AVX-512 EPYC's oneDNN
            torch.testing.assert_close(p.grad, grads[name], atol=2e-5 * scale, rtol=1e-5)


def test_own_pretraining_checkpoint_round_trips_and_is_strict(model, tmp_path):
    from torchflava.utils.checkpoint import save_state_dict

    save_state_dict(model.state_dict(), tmp_path / "ours.safetensors")
    fresh = flava_model_for_pretraining(
        backbone=flava_model(**TINY_FLAVA),
        codebook=dalle_encoder(hidden_dim=8, blocks_per_group=1, vocab_size=VOCAB_IMAGE),
        image_vocab_size=VOCAB_IMAGE,
        pretrained=tmp_path / "ours.safetensors",
    )
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(b, a, msg=name)
    state = dict(model.state_dict())
    state["mlm_head.extra.weight"] = torch.zeros(1)
    del state["itm_head.classifier.bias"]
    save_state_dict(state, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=r"(?s)itm_head\.classifier\.bias.*mlm_head\.extra\.weight"):
        flava_model_for_pretraining(
            backbone=flava_model(**TINY_FLAVA),
            build_codebook=False,
            image_vocab_size=VOCAB_IMAGE,
            pretrained=tmp_path / "bad.safetensors",
        )


def test_the_image_and_text_last_layers_compute_only_the_positions_the_losses_read(model):
    """In the all6 call a pair's masked passes feed the multimodal encoder (every position), its unmasked
    ones the contrastive loss (the CLS), an image batch MIM (its masked patches) and a text batch MLM (its
    masked tokens): each encoder's last layer runs its MLP on those positions alone (the losses
    themselves are checked against HF's full computation in test_pretraining.py)."""
    torch.manual_seed(0)
    batches = [batch("pair"), batch("image", b=3), batch("text", b=3)]
    rows = {}
    for name, encoder in (("image", model.model.image_encoder), ("text", model.model.text_encoder)):
        encoder.encoder.layers[-1].mlp.fc1.register_forward_pre_hook(
            lambda module, args, name=name: rows.__setitem__(name, tuple(args[0].shape[:-1]))
        )
    outputs = model(batches)
    masked_patches = int(batches[1]["image_patch_mask"].sum())
    assert rows["image"] == (4 * 17 + 4 + 3 + masked_patches,)  # of 10 * 17 rows
    assert rows["text"] == (4 * 10 + 4 + 3 * 2,)  # of 10 * 10: the text batch's CLS and its one masked token
    assert outputs[1].mim_targets.numel() == masked_patches
    assert all(torch.isfinite(out.loss) for out in outputs)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(ignore_index=5), ValueError, r"ignore_index must lie outside the heads' classes \[0, 99\), got 5"),
        (dict(ignore_index=1.5), TypeError, "ignore_index must be an int, got float 1.5"),
        (dict(contrastive_gather="global"), TypeError, "contrastive_gather must be a GatherGrad, got 'global'"),
        (dict(unimodal_losses_on_pairs="no"), TypeError, "unimodal_losses_on_pairs must be a bool, got str 'no'"),
        (dict(recompute_contrastive_passes=1), TypeError, "recompute_contrastive_passes must be a bool, got int 1"),
        (dict(build_codebook="no"), TypeError, "build_codebook must be a bool, got str 'no'"),
        (dict(codebook="dalle"), TypeError, "codebook must be an nn.Module or None, got str"),
        (dict(backbone="flava"), TypeError, "backbone must be a FLAVAModel, got str"),
    ],
)
def test_builder_settings_of_the_wrong_type_are_refused_naming_them(kwargs, error, message):
    # each was taken as given: an id of the vocabulary dropped its targets silently, "no" switched a flag on,
    # and the others failed in the first forward (or, a backbone, on an attribute)
    settings = dict(backbone=flava_model(**TINY_FLAVA), build_codebook=False, image_vocab_size=VOCAB_IMAGE)
    with pytest.raises(error, match=f"^{message}$"):
        flava_model_for_pretraining(**{**settings, **kwargs})


def test_direct_construction_checks_its_parts_and_weights(model):
    from torchflava.models.flava import FLAVAForPretraining

    parts = dict(mlm_head=model.mlm_head, mim_head=model.mim_head, mmm_text_head=model.mmm_text_head)
    parts.update(mmm_image_head=model.mmm_image_head, itm_head=model.itm_head)
    with pytest.raises(TypeError, match=r"^weights must be a LossWeights, got dict$"):
        FLAVAForPretraining(model.model, **parts, weights={"mim": 1.0})
    with pytest.raises(TypeError, match=r"^model must be a FLAVAModel, got str$"):
        FLAVAForPretraining("flava", **parts)
    assert FLAVAForPretraining(model.model, **parts, ignore_index=-1).ignore_index == -1


@pytest.mark.parametrize("field", ["image_tokens", "mlm_labels", "itm_labels", "text_masked"])
def test_batch_fields_on_another_device_than_the_model_are_refused_naming_them(model, field):
    # (a meta field failed inside torch, on Tensor.item() of a label check, or on a device mismatch)
    fields = batch()
    fields[field] = fields[field].to("meta")
    with pytest.raises(ValueError, match=rf"^batch field {field} must be on the model's device cpu, got meta$"):
        model(fields)


@pytest.mark.parametrize("kinds", [("pair",), ("image", "text")])
def test_a_meta_device_dry_run_gives_the_shapes_of_the_same_forward_on_the_cpu(kinds):
    """Built and fed on the meta device, the forward failed inside torch (``nonzero`` of the padding trim,
    ``bool()`` of the label checks): a dry run of the shapes (e.g. before FSDP materialises) could not run."""

    def build():
        codebook = dalle_encoder(hidden_dim=8, blocks_per_group=1, vocab_size=VOCAB_IMAGE)
        backbone = flava_model(**TINY_FLAVA)
        return flava_model_for_pretraining(backbone=backbone, codebook=codebook, image_vocab_size=VOCAB_IMAGE)

    batches = [batch(kind) for kind in kinds]
    cpu = build().train()(batches)
    with torch.device("meta"):
        meta = build().train()([{k: v.to("meta") for k, v in b.items()} for b in batches])
    for on_cpu, on_meta, b in zip(cpu, meta, batches):
        rows, columns = b["text_masked" if "text_masked" in b else "image_patch_mask"].shape
        for name, value in on_cpu._asdict().items():
            dry = getattr(on_meta, name)
            if isinstance(value, dict):  # loss_sums, loss_counts: one 0-dim value per loss
                assert {k: v.shape for k, v in dry.items()} == {k: v.shape for k, v in value.items()}, name
                assert all(v.is_meta for v in dry.values())
            elif name == "losses":
                assert [loss is None for loss in dry] == [loss is None for loss in value]
            elif value is None:
                assert dry is None, name
            elif name.startswith(("mim_", "mlm_", "mmm_")):  # every position's row: (B * S, V) and (B * S,)
                mmm_rows = rows * (1 + 1 + 16 + 10)  # (the fused sequence: CLS_M, image CLS, patches, text)
                assert dry.shape[0] == (mmm_rows if name.startswith("mmm_") else rows * columns), name
                assert dry.shape[1:] == value.shape[1:] and dry.dtype == value.dtype, name
            else:
                assert dry.is_meta and dry.shape == value.shape and dry.dtype == value.dtype, name
