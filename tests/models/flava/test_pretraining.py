"""FLAVAForPretraining against Hugging Face's FlavaForPreTraining (same weights, masks and labels)."""

import json
import re

import pytest
import torch
from transformers import FlavaConfig, FlavaForPreTraining

from tests.helpers import padded_text
from torchflava.models import flava_model, flava_model_for_pretraining
from torchflava.models.flava.convert_weights import flava_kwargs_from_hf_config

IMAGE_VOCAB = 64
LOSS_NAMES = ("mim", "mlm", "itm", "global_contrastive", "mmm_image", "mmm_text")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """An HF FlavaForPreTraining with perturbed random weights, and ours loaded from its checkpoint."""
    torch.manual_seed(0)
    config = FlavaConfig(
        image_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            image_size=32,
            patch_size=8,
            vocab_size=IMAGE_VOCAB,
        ),
        text_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=40,
            vocab_size=99,
            max_position_embeddings=40,
        ),
        multimodal_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=8, intermediate_size=36),
        hidden_size=32,  # HF's ITM head reads the top-level width; its MMM heads need equal tower widths
        image_codebook_config=dict(hidden_size=8, num_groups=4, num_blocks_per_group=1, vocab_size=IMAGE_VOCAB),
        projection_dim=20,
    )
    hf = FlavaForPreTraining(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    directory = tmp_path_factory.mktemp("hf_pretraining")
    hf.save_pretrained(directory)
    kwargs = flava_kwargs_from_hf_config(json.loads((directory / "config.json").read_text()))
    ours = flava_model_for_pretraining(
        backbone=flava_model(**kwargs), build_codebook=False, image_vocab_size=IMAGE_VOCAB, pretrained=directory
    )
    return hf.train(), ours.train()


def make_batch(kind: str):
    g = torch.Generator().manual_seed(1)
    b, n = 4, 16
    image = torch.randn(b, 3, 32, 32, generator=g)
    patch_mask = torch.rand(b, n, generator=g) < 0.4
    patch_mask[:, 0] = True
    tokens = torch.randint(0, IMAGE_VOCAB, (b, n), generator=g)
    text, attention = padded_text(b, 12, 99, [12, 9, 5, 11])
    mlm_labels = torch.full_like(text, -100)
    text_masked = text.clone()
    chosen = (torch.rand(text.shape, generator=g) < 0.3) & (attention == 1)
    chosen[:, 1] = True
    mlm_labels[chosen] = text[chosen]
    text_masked[chosen] = 3
    itm = torch.tensor([1, 1, 0, 1])
    batch = dict(
        image=image,
        image_patch_mask=patch_mask,
        image_tokens=tokens,
        text=text,
        text_masked=text_masked,
        text_attention_mask=attention,
        mlm_labels=mlm_labels,
        itm_labels=itm,
    )
    if kind == "image":
        batch = {k: batch[k] for k in ("image", "image_patch_mask", "image_tokens")}
    elif kind == "text":
        batch = {"text_masked": text_masked, "text_attention_mask": attention, "mlm_labels": mlm_labels}
    return batch


def hf_outputs(hf, batch):
    args = dict(return_loss=True)
    if "image" in batch:
        args.update(
            pixel_values=batch["image"],
            bool_masked_pos=batch["image_patch_mask"],
            mim_labels=batch["image_tokens"].clone(),
        )  # HF writes into its labels
    if "text_masked" in batch:
        args.update(
            input_ids=batch.get("text", batch["text_masked"]),
            input_ids_masked=batch["text_masked"],
            attention_mask=batch["text_attention_mask"],
            mlm_labels=batch["mlm_labels"],
        )
    if "itm_labels" in batch:
        args.update(itm_labels=batch["itm_labels"])
    return hf(**args).loss_info


SHARED = {  # our parameter -> HF parameter, for gradient comparison
    "model.image_encoder.embeddings.proj.weight": "flava.image_model.embeddings.patch_embeddings.projection.weight",
    "model.image_encoder.embeddings.mask_token": "flava.image_model.embeddings.mask_token",
    "model.image_encoder.encoder.layers.1.mlp.fc2.weight": "flava.image_model.encoder.layer.1.output.dense.weight",
    "model.text_encoder.embeddings.word_embed.weight": "flava.text_model.embeddings.word_embeddings.weight",
    "model.text_encoder.encoder.layers.0.mlp.fc1.weight": "flava.text_model.encoder.layer.0.intermediate.dense.weight",
    "model.text_encoder.norm.weight": "flava.text_model.layernorm.weight",
    "model.multimodal_encoder.cls_token": "flava.multimodal_model.cls_token",
    "model.multimodal_encoder.image_proj.weight": "flava.image_to_mm_projection.weight",
    "model.multimodal_encoder.encoder.layers.1.attn.out_proj.weight": "flava.multimodal_model.encoder.layer.1.attention.output.dense.weight",
    "model.image_projection.weight": "flava.image_projection.weight",
    "model.logit_scale": "flava.logit_scale",
    "mim_head.decoder.weight": "mim_head.decoder.weight",
    "mlm_head.norm.weight": "mlm_head.transform.LayerNorm.weight",
    "mmm_image_head.dense.weight": "mmm_image_head.transform.dense.weight",
    "mmm_text_head.decoder.bias": "mmm_text_head.bias",
    "itm_head.classifier.weight": "itm_head.seq_relationship.weight",
}


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("pair", ("itm", "global_contrastive", "mmm_image", "mmm_text")),
        ("image", ("mim",)),
        ("text", ("mlm",)),
    ],
)
def test_losses_and_gradients_match_hf(pair, kind, expected):
    hf, ours = pair
    batch = make_batch(kind)
    theirs = hf_outputs(hf, batch)
    mine = ours(batch).losses
    present = tuple(name for name in LOSS_NAMES if getattr(mine, name) is not None)
    assert present == expected
    ours_params = dict(ours.named_parameters())
    hf_params = dict(hf.named_parameters())
    for name in expected:
        ref, got = getattr(theirs, name), getattr(mine, name)
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
        # Gradients of this loss with respect to the parameters both models share.
        pairs = [(o, h) for o, h in SHARED.items() if ours_params[o].requires_grad]
        g_ours = torch.autograd.grad(got, [ours_params[o] for o, _ in pairs], retain_graph=True, allow_unused=True)
        g_hf = torch.autograd.grad(ref, [hf_params[h] for _, h in pairs], retain_graph=True, allow_unused=True)
        compared = 0
        for (o, h), a, b in zip(pairs, g_ours, g_hf):
            if b is None or not bool(b.abs().sum() > 0):
                assert a is None or not bool(a.abs().sum() > 0), f"{name}: {o} gets a gradient, HF's {h} does not"
                continue
            assert a is not None, f"{name}: {o} gets no gradient but HF's {h} does"
            torch.testing.assert_close(
                a, b, atol=1e-4, rtol=1e-4, msg=lambda m, name=name, o=o: f"{name} grad {o}: {m}"
            )
            compared += 1
        assert compared >= 3, f"{name}: only {compared} shared parameters had gradients to compare"


def test_the_codebook_of_a_hugging_face_directory_is_built_at_the_sizes_its_config_states(tmp_path):
    # It was built at the published dVAE's sizes whatever image_codebook_config said: a FlavaForPreTraining
    # with another dVAE was refused for 32 missing codebook keys, naming sizes no argument of the builder takes.
    from torchflava.modules.codebook.dalle_vae import map_pixels

    torch.manual_seed(0)
    tower = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48)
    config = dict(
        image_config=dict(tower, image_size=32, patch_size=8, vocab_size=16),
        text_config=dict(tower, vocab_size=99, max_position_embeddings=40),
        multimodal_config=tower,
        hidden_size=32,
        image_codebook_config=dict(hidden_size=8, num_groups=4, num_blocks_per_group=1, vocab_size=16),
        projection_dim=20,
    )
    hf = FlavaForPreTraining(FlavaConfig(**config)).eval()
    with torch.no_grad():  # (at its init every patch got one id: the comparison would have no teeth)
        for p in hf.image_codebook.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    hf.save_pretrained(tmp_path)
    ours = flava_model_for_pretraining(pretrained=tmp_path).eval()
    pixels = map_pixels(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        expected = hf.image_codebook.get_codebook_indices(pixels).flatten(1)
        assert torch.equal(ours.codebook.tokens(pixels), expected) and expected.unique().numel() > 1

    written = json.loads((tmp_path / "config.json").read_text())
    for edit, message in [
        (dict(num_groups=3), "image_codebook_config.num_groups must be 4 (the dVAE's groups, as dalle_encoder builds"),
        (dict(vocab_size=32), "expected image_codebook_config.vocab_size to be image_vocab_size, 16 (the MIM heads'"),
        # (each refused by dalle_encoder once the backbone was built, naming its own hidden_dim, blocks_per_group...)
        (dict(hidden_size=0), "image_codebook_config.hidden_size must be >= 4 (the residual paths are hidden_size"),
        (dict(hidden_size=3), "image_codebook_config.hidden_size must be >= 4 (the residual paths are hidden_size"),
        (dict(num_blocks_per_group=-1), "image_codebook_config.num_blocks_per_group must be >= 1, got -1"),
        (dict(num_blocks_per_group=0), "image_codebook_config.num_blocks_per_group must be >= 1, got 0"),
        (dict(input_channels=0), "image_codebook_config.input_channels must be >= 1, got 0"),
        (dict(vocab_size=1), "image_codebook_config.vocab_size must be >= 2 (one codebook id tells no patch from"),
    ]:
        (tmp_path / "config.json").write_text(
            json.dumps({**written, "image_codebook_config": {**written["image_codebook_config"], **edit}})
        )
        with pytest.raises(
            ValueError, match=rf"^flava_model_for_pretraining: {tmp_path / 'config.json'}: .*{re.escape(message)}"
        ):
            flava_model_for_pretraining(pretrained=tmp_path)
