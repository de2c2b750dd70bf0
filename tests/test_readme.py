"""The README's "Compose your own model" snippet runs as written and trains."""

from pathlib import Path
import re

import torch

from torchflava.models import flava_model_for_pretraining

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(heading: str, level: str = "##") -> str:
    text = README.read_text()
    section = re.split(r"\n#{2,3} ", text.split(f"\n{level} {heading}\n", 1)[1], maxsplit=1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, f"expected one python block under '{heading}', found {len(blocks)}"
    return blocks[0]


def test_compose_your_own_model_snippet_runs_and_gives_gradients():
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(section_code("Compose your own model"), str(README), "exec"), scope)  # our own README
    model, loss, logit_scale = scope["model"], scope["loss"], scope["logit_scale"]
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    assert logit_scale.grad is not None and float(logit_scale.grad.abs()) > 0
    without_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not without_grad, f"parameters without a gradient: {without_grad}"
    assert model["text"].encoder.checkpoint_activations == "selective"
    assert model["image"].embeddings.proj.bias is None


def test_cross_attention_snippet_trains_a_captioner_reading_the_image():
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(section_code("Cross-attention: a captioning decoder", "###"), str(README), "exec"), scope)
    model, loss = scope["model"], scope["loss"]
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    without_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not without_grad, f"parameters without a gradient: {without_grad}"  # the image tower's included
    layer = model["decoder"].layers[0]
    assert layer.cross_attn.kv_dim == 48 and layer.cross_attn.embed_dim == 64
    # each token reads the image: other images change every position's output; a later token changes no earlier one
    ids, memory = scope["ids"], scope["memory"].detach()
    with torch.no_grad():
        out = model["decoder"](model["embed"](ids), memory=memory).last_hidden_state
        moved = model["decoder"](model["embed"](ids), memory=memory.roll(1, dims=0)).last_hidden_state
        later = ids.clone()
        later[:, -1] = (later[:, -1] + 1) % 1000
        changed = model["decoder"](model["embed"](later), memory=memory).last_hidden_state
    assert bool(((out - moved).abs().amax(dim=-1) > 1e-4).all())
    torch.testing.assert_close(changed[:, :-1], out[:, :-1], atol=1e-6, rtol=0)


def _small_flava_for_pretraining(**kwargs):
    """The snippet's builder at FLAVA-full's image grid, vocabularies and codebook ids, narrow and shallow: the
    snippet's calls and shapes are what is tested (FLAVA-full's numbers are the checkpoint parity tests'), and the
    full model's step took ~40 s of the suite."""
    from torchflava.models import flava_model
    from torchflava.modules.codebook.dalle_vae import dalle_encoder

    backbone = flava_model(
        **{f"{tower}_{name}": value for tower in ("image", "text", "multimodal") for name, value in SMALL.items()},
        projection_dim=16,
    )
    codebook = dalle_encoder(hidden_dim=8, blocks_per_group=1)
    return flava_model_for_pretraining(backbone=backbone, codebook=codebook, **kwargs)


SMALL = dict(embed_dim=32, num_layers=1, num_heads=2, mlp_dim=64)


def test_pretraining_losses_snippet_computes_every_loss_it_names(monkeypatch):
    import torchflava.models

    monkeypatch.setattr(torchflava.models, "flava_model_for_pretraining", _small_flava_for_pretraining)
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(section_code("Pretraining losses"), str(README), "exec"), scope)  # our own README
    assert scope["model"].model.image_encoder.embeddings.proj.weight.shape[:1] == (32,)  # the small one ran
    out = scope["out"]
    named = ("mim", "mlm", "itm", "global_contrastive", "mmm_image", "mmm_text")  # the snippet's comment
    assert set(out.losses._fields) == set(named)
    missing = [name for name in named if getattr(out.losses, name) is None]
    assert not missing, f"losses the snippet names but does not compute: {missing}"
    assert all(bool(torch.isfinite(getattr(out.losses, name))) for name in named)
    grads = [p.grad for p in scope["model"].mim_head.parameters()] + [
        p.grad for p in scope["model"].mlm_head.parameters()
    ]
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)
