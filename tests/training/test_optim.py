"""Parameter groups of a tiny FLAVA, the warmup + cosine factor at known steps, gradient clipping."""

import math

import pytest
import torch
from torch import nn

from tests.helpers import TINY_FLAVA
from torchflava.models import flava_model
from torchflava.training.optim import clip_grad_norm, grad_norm, param_groups, warmup_cosine

# The weight matrices of a 2-layer tiny FLAVA: these, and only these, are decayed...
DECAYED = {
    f"{encoder}.encoder.layers.{i}.{name}"
    for encoder in ("image_encoder", "text_encoder", "multimodal_encoder")
    for i in (0, 1)
    for name in ("attn.qkv.weight", "attn.out_proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")
} | {
    "image_encoder.pooler.dense.weight",
    "text_encoder.pooler.dense.weight",
    "multimodal_encoder.pooler.dense.weight",
    "multimodal_encoder.image_proj.weight",
    "multimodal_encoder.text_proj.weight",
    "image_projection.weight",
    "text_projection.weight",
    "image_encoder.embeddings.proj.weight",
}
# ... and these tables and tokens are not, whatever their shape.
NOT_DECAYED_MATRICES = {
    "logit_scale",
    "image_encoder.embeddings.cls_token",
    "image_encoder.embeddings.mask_token",
    "image_encoder.embeddings.pos_embed",
    "text_encoder.embeddings.word_embed.weight",
    "text_encoder.embeddings.pos_embed.weight",
    "text_encoder.embeddings.type_embed.weight",
    "multimodal_encoder.cls_token",
}


@pytest.fixture(scope="module")
def tiny():
    return flava_model(**TINY_FLAVA)


def test_param_groups_of_tiny_flava(tiny):
    decay, no_decay = param_groups(tiny, weight_decay=0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert set(decay["names"]) == DECAYED and len(decay["names"]) == 32
    names = dict(tiny.named_parameters())
    assert set(no_decay["names"]) == set(names) - DECAYED
    assert NOT_DECAYED_MATRICES <= set(no_decay["names"])
    # Every norm weight and every bias lands in the no-decay group.
    for name in names:
        if name.endswith(".bias") or "norm" in name:
            assert name in no_decay["names"], name
    # The tensors are the model's, in the order of their names, each once.
    for group in (decay, no_decay):
        assert len(group["params"]) == len(group["names"])
        assert all(p is names[n] for p, n in zip(group["params"], group["names"]))
    assert len(decay["names"]) + len(no_decay["names"]) == len(names)
    optimizer = torch.optim.AdamW(param_groups(tiny, weight_decay=0.05), lr=1e-3)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]


def test_frozen_parameters_are_left_out():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["names"] == ["2.weight"]
    assert no_decay["names"] == ["0.bias", "1.weight", "1.bias", "2.bias"]


def test_a_word_table_tied_to_an_output_projection_is_not_decayed():
    """Embedding tables are not decayed; one that a linear layer shares (a language model's tied output
    projection) was, as a linear weight. The untied projection of the same model still is."""
    embed, head, untied = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False), nn.Linear(4, 4)
    head.weight = embed.weight
    for model in (
        nn.ModuleDict(dict(embed=embed, head=head, proj=untied)),
        nn.ModuleDict(dict(head=head, embed=embed)),
    ):
        decay, no_decay = param_groups(model, weight_decay=0.1)
        assert all(p is not embed.weight for p in decay["params"])
        assert sum(p is embed.weight for p in no_decay["params"]) == 1  # once, under its first name
    assert decay["names"] == [] and no_decay["names"] == ["head.weight"]
    decay, _ = param_groups(nn.ModuleDict(dict(embed=embed, head=head, proj=untied)), weight_decay=0.1)
    assert decay["names"] == ["proj.weight"]


def test_negative_weight_decay():
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(nn.Linear(2, 2), weight_decay=-0.1)


def test_lr_multipliers_split_the_groups_by_module(tiny):
    groups = param_groups(tiny, 0.05, {"text_encoder": 0.01, "text_projection": 0.01, "logit_scale": 2})
    assert [(g["weight_decay"], g["lr_multiplier"]) for g in groups] == [
        (0.05, 1.0),
        (0.0, 1.0),
        (0.05, 0.01),
        (0.0, 0.01),
        (0.0, 2.0),  # the logit scale is not decayed: the empty decayed group at 2 is left out
    ]
    slow = set(groups[2]["names"]) | set(groups[3]["names"])
    names = dict(tiny.named_parameters())
    assert slow == {n for n in names if n.startswith(("text_encoder.", "text_projection."))}
    assert "multimodal_encoder.text_proj.weight" in groups[0]["names"]  # a part of the path, not a prefix of a part
    assert groups[4]["names"] == ["logit_scale"]
    assert sum(len(g["names"]) for g in groups) == len(names)
    assert set(groups[2]["names"]) == {n for n in DECAYED if n.startswith(("text_encoder.", "text_projection."))}
    # A dotted path works too, and a multiplier of 1 is the base groups.
    dotted = param_groups(tiny, 0.05, {"text_encoder.encoder.layers.1": 0.5, "image_encoder": 1})
    assert len(dotted) == 4 and all(n.startswith("text_encoder.encoder.layers.1.") for n in dotted[2]["names"])


def test_every_parameter_under_a_multiplier_leaves_one_empty_group_at_multiplier_1():
    """Both groups at multiplier 1 were kept empty: torch's state-dict code, which checkpoints go through, loads an
    optimiser with one empty group at most, and such a run's resume was refused (tests/training/test_loop.py)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    layout = [(g["weight_decay"], g["lr_multiplier"], g["names"]) for g in param_groups(model, 0.1, {"0": 2, "1": 0.5})]
    assert layout == [
        (0.1, 1.0, []),
        (0.1, 2.0, ["0.weight"]),
        (0.0, 2.0, ["0.bias"]),
        (0.0, 0.5, ["1.weight", "1.bias"]),
    ]
    layout = [(g["weight_decay"], g["lr_multiplier"], g["names"]) for g in param_groups(model, 0.1, {"0": 2})]
    assert layout[:2] == [(0.1, 1.0, []), (0.0, 1.0, ["1.weight", "1.bias"])]  # (one empty: both kept, as before)


@pytest.mark.parametrize(
    "multipliers, message",
    [
        ({"text_tower": 0.1}, r"\['text_tower'\] name no module with trainable parameters"),
        ({"text_encoder": -0.1}, r"lr_multipliers\['text_encoder'\] must be a number >= 0, got -0.1"),
        ({"text_encoder": True}, "must be a number >= 0, got True"),
        ({"text_encoder": 0.1, "text_encoder.norm": 0.2}, "text_encoder.norm.weight is matched by"),
    ],
)
def test_bad_lr_multipliers(tiny, multipliers, message):
    with pytest.raises(ValueError, match=message):
        param_groups(tiny, 0.05, multipliers)


def tied_towers() -> nn.ModuleDict:
    """A text tower, a decoder whose word table is the text tower's, and an output head tied to it too."""
    text = nn.ModuleDict(dict(embed=nn.Embedding(10, 4), proj=nn.Linear(4, 4)))
    decoder = nn.ModuleDict(dict(embed=nn.Embedding(10, 4), fc=nn.Linear(4, 4)))
    head = nn.Linear(4, 10, bias=False)
    decoder.embed.weight = head.weight = text.embed.weight
    return nn.ModuleDict(dict(text=text, decoder=decoder, head=head))


def test_a_tied_parameter_takes_its_multiplier_from_every_name_it_has():
    """A table shared by two towers was matched by its first name alone: ``{"decoder": 2.0}`` trained the decoder's
    tied word table at 1.0 without a word, and ``{"head": 2.0}`` (a head whose one weight is the tied table) was
    refused as naming no module with trainable parameters. The multipliers of all its names must now agree."""
    model = tied_towers()
    table = model.text.embed.weight
    groups = param_groups(model, 0.1, {"decoder": 2.0, "text": 2.0, "head": 2})  # every name of it at 2: trained at 2
    assert [(g["weight_decay"], g["lr_multiplier"], g["names"]) for g in groups] == [
        (0.1, 1.0, []),
        (0.1, 2.0, ["text.proj.weight", "decoder.fc.weight"]),
        (0.0, 2.0, ["text.embed.weight", "text.proj.bias", "decoder.fc.bias"]),  # the table once, by its first name
    ]
    assert sum(p is table for g in groups for p in g["params"]) == 1
    refused = [
        ({"decoder": 2.0}, "text.embed.weight 1.0 (no key), decoder.embed.weight 2.0 ('decoder'), head.weight 1.0"),
        ({"head": 2.0}, "text.embed.weight 1.0 (no key), decoder.embed.weight 1.0 (no key), head.weight 2.0 ('head')"),
        ({"text": 0.5, "decoder": 0.5}, "decoder.embed.weight 0.5 ('decoder'), head.weight 1.0 (no key)"),
    ]
    for multipliers, detail in refused:
        with pytest.raises(ValueError) as info:
            param_groups(model, 0.1, multipliers)
        assert str(info.value).startswith(
            "lr_multipliers: text.embed.weight is one parameter under 3 names (tied), which get different "
            "multipliers: text.embed.weight "
        ), str(info.value)
        assert detail in str(info.value) and str(info.value).endswith("; give all its names one multiplier")


def schedule_lrs(steps: int, **kwargs) -> list[float]:
    """The lr used at steps 0..steps-1 with a peak lr of 2.0."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = warmup_cosine(optimizer, **kwargs)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_cosine_factor_at_known_steps():
    lrs = schedule_lrs(16, warmup_steps=4, total_steps=12, min_ratio=0.1)
    assert lrs[:5] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0], rel=1e-12)  # linear to the peak, which step 4 keeps
    assert lrs[8] == pytest.approx(2.0 * 0.55, rel=1e-12)  # half way down: 0.1 + 0.9 / 2
    assert lrs[6] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))), rel=1e-12)
    assert lrs[12:] == pytest.approx([0.2] * 4, rel=1e-12)  # the floor, held after the end
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))  # never rises after the warmup


def test_warmup_cosine_without_warmup_or_floor():
    lrs = schedule_lrs(11, warmup_steps=0, total_steps=10)
    assert lrs[0] == 2.0 and lrs[5] == pytest.approx(1.0, rel=1e-12) and lrs[10] == pytest.approx(0.0, abs=1e-15)
    flat = schedule_lrs(6, warmup_steps=2, total_steps=5, min_ratio=1.0)
    assert flat == pytest.approx([1.0, 2.0, 2.0, 2.0, 2.0, 2.0], rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(warmup_steps=12, total_steps=12), "warmup_steps"),
        (dict(warmup_steps=-1, total_steps=12), "warmup_steps"),
        (dict(warmup_steps=0, total_steps=0), "total_steps"),
        (dict(warmup_steps=2, total_steps=12, min_ratio=-0.1), "min_ratio"),
        (dict(warmup_steps=2, total_steps=12, min_ratio=1.5), "min_ratio"),
    ],
)
def test_warmup_cosine_errors(kwargs, match):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=match):
        warmup_cosine(optimizer, **kwargs)


def params_with_grads(scale: float) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.zeros(shape)) for shape in ((3, 4), (5,), (2, 2, 2))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * scale
    return params


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e6])
def test_clip_grad_norm_matches_torch(max_norm):
    ours, theirs = params_with_grads(1.0), params_with_grads(1.0)
    before = torch.sqrt(sum((p.grad**2).sum() for p in ours))
    norm = clip_grad_norm(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert norm.shape == () and norm.device.type == "cpu"
    torch.testing.assert_close(norm, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(norm, before, rtol=1e-6, atol=0)  # the norm before clipping
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)
    after = torch.sqrt(sum((p.grad**2).sum() for p in ours))
    if max_norm < float(before):
        assert float(after) == pytest.approx(max_norm, rel=1e-5)
    else:  # below the bound: the gradients are left exactly as they were
        assert all(torch.equal(p.grad, q.grad) for p, q in zip(ours, params_with_grads(1.0)))


def test_clip_grad_norm_skips_missing_grads():
    params = params_with_grads(1.0) + [nn.Parameter(torch.ones(3))]  # the last has no grad
    reference = params_with_grads(1.0)
    norm = clip_grad_norm(iter(params), 1.0)  # any iterable, e.g. model.parameters()
    torch.testing.assert_close(norm, torch.nn.utils.clip_grad_norm_(reference, 1.0), rtol=1e-6, atol=0)
    assert params[-1].grad is None
    empty = clip_grad_norm([nn.Parameter(torch.ones(2))], 1.0)
    assert empty.shape == () and float(empty) == 0.0


def test_clip_grad_norm_of_float64_gradients_is_a_float64_norm():
    """fit on an fp64 model (a numerical check against a reference) failed at its first step inside torch:
    'linalg.vector_norm: the dtype of the input (Double) should be convertible without narrowing'."""
    ours = [nn.Parameter(p.detach().double()) for p in params_with_grads(1.0)]
    theirs = [nn.Parameter(p.detach().double()) for p in params_with_grads(1.0)]
    for a, b, p in zip(ours, theirs, params_with_grads(1.0)):
        a.grad, b.grad = p.grad.double(), p.grad.double()
    norm = clip_grad_norm(ours + [nn.Parameter(torch.ones(2))], 0.5)  # (one without a gradient beside them)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    assert norm.dtype == torch.float64 and norm.shape == ()
    torch.testing.assert_close(norm, expected, rtol=1e-15, atol=0)  # float64 throughout: not rounded to float32
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-14, atol=0)
    mixed = params_with_grads(1.0) + [theirs[0]]  # float32 and float64 gradients together
    expected = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in mixed))
    torch.testing.assert_close(grad_norm(p.grad for p in mixed).double(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan")])
def test_clip_grad_norm_errors(max_norm):
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(params_with_grads(1.0), max_norm)


class _UsersModule(nn.Module):
    """What a user's model holds beside linear layers: raw parameters, torch's attention (open_clip's
    attentional pooler), a transposed convolution, a bilinear layer, a spectral-normed linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8))  # (D,): bias-like
        self.query = nn.Parameter(torch.zeros(1, 8))  # a learned query
        self.proj = nn.Parameter(torch.zeros(8, 4))  # a projection held raw
        self.pool = nn.MultiheadAttention(8, 2)
        self.up = nn.ConvTranspose2d(8, 4, 2)
        self.pair = nn.Bilinear(8, 8, 4)
        self.normed = nn.utils.parametrizations.spectral_norm(nn.Linear(8, 8))
        self.lin = nn.Linear(8, 8)


def test_param_groups_decay_every_linear_and_convolution_weight_and_no_raw_parameter():
    """nn.MultiheadAttention's input projection (a raw parameter beside its decayed out_proj), a transposed
    convolution, a bilinear layer and a spectral-normed linear layer's weight went undecayed, against the
    docstring's rule (the weights of linear and convolution layers); raw parameters stay undecayed, whatever
    their shape, as it states. Reading a spectral-normed weight also ran its power iteration (in training
    mode, updating its vectors): its stored original is read instead."""
    model = _UsersModule()
    u = model.normed.parametrizations.weight[0]._u.clone()
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["names"] == [
        "pool.in_proj_weight",
        "pool.out_proj.weight",
        "up.weight",
        "pair.weight",
        "normed.parametrizations.weight.original",
        "lin.weight",
    ]
    assert no_decay["names"] == [
        "scale",
        "query",
        "proj",
        "pool.in_proj_bias",
        "pool.out_proj.bias",
        "up.bias",
        "pair.bias",
        "normed.bias",
        "lin.bias",
    ]
    assert torch.equal(model.normed.parametrizations.weight[0]._u, u)  # the power iteration did not run
    tied = nn.ModuleDict({"table": nn.Embedding(10, 8), "head": nn.Linear(8, 10, bias=False)})
    tied.head.weight = tied.table.weight  # a tied output projection: the table's, undecayed
    assert [g["names"] for g in param_groups(tied, weight_decay=0.1)] == [[], ["table.weight"]]
