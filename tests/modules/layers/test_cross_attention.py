"""MultiHeadCrossAttention and layers that cross-attend to a memory: parity with torch's
nn.MultiheadAttention (outputs and gradients), padding, causal self-attention beside cross-attention,
argument checks, bf16 autocast, activation checkpointing, meta-device init, and a tiny CoCa-like
captioner trained by the shared loop."""

import copy

import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.testing import assert_close

from torchflava.modules.encoders import VisionEncoder, transformer_encoder
from torchflava.modules.init import init_weights
from torchflava.modules.layers import (
    MLP,
    MultiHeadCrossAttention,
    MultiHeadSelfAttention,
    PatchEmbedding,
    TokenEmbedding,
    TransformerEncoder,
    TransformerEncoderLayer,
    set_activation_checkpointing,
)
from torchflava.modules.layers.attention import math_attention_limits
from torchflava.training.loop import StepOutput, fit
from torchflava.training.metrics import read_metrics
from torchflava.training.schema import OptimConfig, TrainingConfig

D, H, KV = 24, 3, 16  # the stream's width, heads, the memory's width (another tower's)

# (B=3, S=6) memory padding: a row with trailing padding, one with none, one with interior padding
PADDING = torch.tensor(
    [
        [False, False, False, True, True, True],
        [False, False, False, False, False, False],
        [False, True, False, False, True, False],
    ]
)


def make_cross(**kwargs) -> MultiHeadCrossAttention:
    cross = MultiHeadCrossAttention(D, H, kv_dim=KV, **kwargs)
    with torch.no_grad():  # non-zero biases, so that a dropped bias shows
        for linear in (cross.q_proj, cross.kv_proj, cross.out_proj):
            linear.bias.normal_()
    return cross


def torch_reference(cross: MultiHeadCrossAttention) -> nn.MultiheadAttention:
    """torch's attention with ``cross``'s weights: q, k, v projections apart, biases in one vector."""
    ref = nn.MultiheadAttention(D, H, kdim=KV, vdim=KV, batch_first=True, dropout=cross.dropout)
    with torch.no_grad():
        ref.q_proj_weight.copy_(cross.q_proj.weight)
        ref.k_proj_weight.copy_(cross.kv_proj.weight[:D])
        ref.v_proj_weight.copy_(cross.kv_proj.weight[D:])
        ref.in_proj_bias.copy_(torch.cat([cross.q_proj.bias, cross.kv_proj.bias]))
        ref.out_proj.weight.copy_(cross.out_proj.weight)
        ref.out_proj.bias.copy_(cross.out_proj.bias)
    return ref


def reference_grads(ref: nn.MultiheadAttention) -> dict[str, torch.Tensor]:
    """The reference's parameter gradients under our names."""
    return {
        "q_proj.weight": ref.q_proj_weight.grad,
        "kv_proj.weight": torch.cat([ref.k_proj_weight.grad, ref.v_proj_weight.grad]),
        "q_proj.bias": ref.in_proj_bias.grad[:D],
        "kv_proj.bias": ref.in_proj_bias.grad[D:],
        "out_proj.weight": ref.out_proj.weight.grad,
        "out_proj.bias": ref.out_proj.bias.grad,
    }


def run_with_grads(fn, x, memory, grad):
    x, memory = x.clone().requires_grad_(), memory.clone().requires_grad_()
    out = fn(x, memory)
    out.backward(grad)
    return out.detach(), x.grad, memory.grad


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("kernel", ["sdpa", "matmul"])
def test_outputs_and_gradients_match_torchs_multihead_attention(padded, kernel):
    cross, x, memory = make_cross(), torch.randn(3, 5, D), torch.randn(3, 6, KV)
    ref = torch_reference(cross)
    mask = PADDING if padded else None
    grad = torch.randn(3, 5, D)
    # "matmul": the explicit-matmul kernel that bf16 CPU training runs, forced here in fp32 (L=5 queries, S=6 keys)
    limits = math_attention_limits({torch.float32: 64}) if kernel == "matmul" else math_attention_limits({})
    with limits:
        got = run_with_grads(lambda x, m: cross(x, m, memory_padding_mask=mask), x, memory, grad)
    want = run_with_grads(lambda x, m: ref(x, m, m, key_padding_mask=mask, need_weights=False)[0], x, memory, grad)
    for name, g, w in zip(("out", "x.grad", "memory.grad"), got, want):
        assert_close(g, w, atol=1e-5, rtol=0, msg=name)
    expected = reference_grads(ref)
    for name, p in cross.named_parameters():
        assert_close(p.grad, expected[name], atol=1e-5, rtol=0, msg=name)


def test_padded_memory_positions_change_nothing():
    cross, x, memory = make_cross().eval(), torch.randn(3, 5, D), torch.randn(3, 6, KV)
    changed = memory.clone()
    changed[PADDING] = 100 * torch.randn(int(PADDING.sum()), KV)
    out = cross(x, memory, memory_padding_mask=PADDING)
    assert_close(cross(x, changed, memory_padding_mask=PADDING), out, atol=1e-6, rtol=0)
    assert not torch.allclose(cross(x, changed), cross(x, memory), atol=1e-2)  # without the mask they count
    memory = memory.clone().requires_grad_()
    cross(x, memory, memory_padding_mask=PADDING).sum().backward()
    assert (memory.grad[PADDING] == 0).all() and (memory.grad[~PADDING] != 0).any()


def test_a_row_whose_memory_is_all_padding_gets_the_output_bias_alone():
    cross, x, memory = make_cross(), torch.randn(2, 4, D), torch.randn(2, 3, KV)
    mask = torch.tensor([[False, True, False], [True, True, True]])
    out = cross(x, memory, memory_padding_mask=mask)
    assert_close(out[1], cross.out_proj.bias.expand(4, D), atol=0, rtol=0)
    assert torch.isfinite(out).all()


def test_memory_of_the_streams_width_by_default_and_of_any_length():
    cross = MultiHeadCrossAttention(D, H)
    assert (cross.kv_dim, cross.head_dim, cross.kv_proj.weight.shape) == (D, D // H, (2 * D, D))
    assert cross(torch.randn(2, 5, D), torch.randn(2, 1, D)).shape == (2, 5, D)
    assert cross(torch.randn(0, 5, D), torch.randn(0, 9, D)).shape == (0, 5, D)  # an empty batch


def test_dropout_only_in_training():
    cross, x, memory = make_cross(dropout=0.5), torch.randn(2, 5, D), torch.randn(2, 6, KV)
    ref = torch_reference(cross).eval()
    cross.eval()
    assert_close(cross(x, memory), ref(x, memory, memory, need_weights=False)[0], atol=1e-5, rtol=0)
    cross.train()
    assert not torch.allclose(cross(x, memory), cross(x, memory), atol=1e-3)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((24, 5), ValueError, "embed_dim must be a positive multiple of num_heads, got embed_dim=24, num_heads=5"),
        ((24, 0), ValueError, "num_heads must be >= 1, got 0"),
        ((24, 3, {"kv_dim": 0}), ValueError, "kv_dim must be >= 1, got 0"),
        ((24, 3, {"kv_dim": 16.0}), TypeError, "kv_dim must be an int, got float"),
        ((24, 3, {"dropout": 1.0}), ValueError, r"dropout must be in \[0, 1\)"),
        ((24, 3, {"bias": "no"}), TypeError, "bias must be a bool"),
    ],
)
def test_bad_construction_is_named(args, error, match):
    *sizes, kwargs = args if isinstance(args[-1], dict) else (*args, {})
    with pytest.raises(error, match=match):
        MultiHeadCrossAttention(*sizes, **kwargs)


@pytest.mark.parametrize(
    "x, memory, mask, error, match",
    [
        ((2, 5, 32), (2, 6, KV), None, ValueError, r"x must be a \(B, S, 24\) floating-point tensor, got torch.float32 of shape \(2, 5, 32\)"),
        ((2, 5, D), (2, 6, 24), None, ValueError, r"memory must be a \(B, S, 16\) floating-point tensor, got torch.float32 of shape \(2, 6, 24\)"),
        ((2, 5, D), (6, KV), None, ValueError, r"memory must be a \(B, S, 16\) floating-point tensor, got torch.float32 of shape \(6, 16\)"),
        ((2, 5, D), (2, 0, KV), None, ValueError, r"memory must hold at least one position \(S >= 1\), got shape \(2, 0, 16\)"),
        ((2, 5, D), (3, 6, KV), None, ValueError, r"memory must have x's batch size 2, got shape \(3, 6, 16\)"),
        ((2, 5, D), (2, 6, KV), torch.zeros(2, 6), TypeError, r"memory_padding_mask must be a bool tensor \(True = padding\), got torch.float32 of shape \(2, 6\)"),
        ((2, 5, D), (2, 6, KV), torch.zeros(2, 5, dtype=torch.bool), ValueError, r"memory_padding_mask must have shape \(B, S\) = \(2, 6\) for memory of shape \(2, 6, 16\), got \(2, 5\)"),
        ((2, 5, D), (2, 6, KV), torch.zeros(2, 6, dtype=torch.bool, device="meta"), ValueError, "memory_padding_mask must be on x's device cpu, got meta"),
    ],
)  # fmt: skip
def test_bad_inputs_are_named_in_one_line(x, memory, mask, error, match):
    cross = make_cross()
    with pytest.raises(error, match=match):
        cross(torch.randn(x), torch.randn(memory), memory_padding_mask=mask)


def test_memory_of_another_dtype_than_the_parameters_is_named():
    cross = make_cross()
    with pytest.raises(TypeError, match="memory must be torch.float32, the dtype of the layer's parameters"):
        cross(torch.randn(2, 5, D), torch.randn(2, 6, KV, dtype=torch.float64))
    with pytest.raises(ValueError, match="memory must be on x's device cpu, got meta"):
        cross(torch.randn(2, 5, D), torch.randn(2, 6, KV, device="meta"))


def test_bf16_autocast_forward_and_backward_run_near_fp32():
    cross, x, memory = make_cross(), torch.randn(3, 5, D), torch.randn(3, 6, KV)
    grad = torch.randn(3, 5, D)
    fp32 = run_with_grads(lambda x, m: cross(x, m, memory_padding_mask=PADDING), x, memory, grad)
    for grad_enabled in (True, False):  # with autograd: the matmul kernel; without: SDPA
        with torch.set_grad_enabled(grad_enabled), torch.autocast("cpu", dtype=torch.bfloat16):
            out = cross(x, memory, memory_padding_mask=PADDING)
        assert out.dtype == torch.bfloat16
        assert_close(out.float(), fp32[0], atol=0.1, rtol=0.02)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = run_with_grads(lambda x, m: cross(x, m, memory_padding_mask=PADDING), x, memory, grad)
    for g, w in zip(bf16[1:], fp32[1:]):
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        assert (g - w).abs().max() <= 0.05 * w.abs().max()


# --- a layer with a cross-attention sub-block, and the stack passing memory through ---


def make_layer(*, cross: bool = True, causal: bool = True, dropout: float = 0.0) -> TransformerEncoderLayer:
    parts = dict(cross_attn=make_cross(), cross_attn_norm=nn.LayerNorm(D)) if cross else {}
    return TransformerEncoderLayer(
        MultiHeadSelfAttention(D, H, is_causal=causal),
        MLP(D, 2 * D),
        attn_norm=nn.LayerNorm(D),
        mlp_norm=nn.LayerNorm(D),
        dropout=dropout,
        **parts,
    )


def layer_by_torch(layer: TransformerEncoderLayer, x, memory, mask=None, key_padding_mask=None):
    """The pre-norm decoder layer written with torch's nn.MultiheadAttention for both attentions (weights copied)."""
    s = x.shape[1]
    self_ref = nn.MultiheadAttention(D, H, batch_first=True)
    with torch.no_grad():
        self_ref.in_proj_weight.copy_(layer.attn.qkv.weight)
        self_ref.in_proj_bias.copy_(layer.attn.qkv.bias)
        self_ref.out_proj.weight.copy_(layer.attn.out_proj.weight)
        self_ref.out_proj.bias.copy_(layer.attn.out_proj.bias)
    cross_ref = torch_reference(layer.cross_attn)
    causal = torch.ones(s, s, dtype=torch.bool).triu(1)  # True = blocked
    h = layer.attn_norm(x)
    x = x + self_ref(h, h, h, attn_mask=causal, key_padding_mask=key_padding_mask, need_weights=False)[0]
    h = layer.cross_attn_norm(x)
    x = x + cross_ref(h, memory, memory, key_padding_mask=mask, need_weights=False)[0]
    return x + layer.mlp.fc2(F.gelu(layer.mlp.fc1(layer.mlp_norm(x))))


def test_decoder_layer_matches_torch_with_causal_self_attention_and_padded_memory():
    layer, x, memory = make_layer(), torch.randn(3, 5, D), torch.randn(3, 6, KV)
    grad = torch.randn(3, 5, D)
    got = run_with_grads(lambda x, m: layer(x, memory=m, memory_padding_mask=PADDING), x, memory, grad)
    want = run_with_grads(lambda x, m: layer_by_torch(layer, x, m, PADDING), x, memory, grad)
    for name, g, w in zip(("out", "x.grad", "memory.grad"), got, want):
        assert_close(g, w, atol=1e-5, rtol=0, msg=name)


def test_causal_self_attention_beside_cross_attention():
    layer, x, memory = make_layer(), torch.randn(2, 6, D), torch.randn(2, 4, KV)
    later = x.clone()
    later[:, 3:] = torch.randn(2, 3, D)  # change the tokens after position 2
    out, out_later = layer(x, memory=memory), layer(later, memory=memory)
    assert_close(out_later[:, :3], out[:, :3], atol=0, rtol=0)
    assert not torch.allclose(out_later[:, 3:], out[:, 3:], atol=1e-3)
    # Not causal: the first position sees the change too.
    both = make_layer(causal=False)
    assert not torch.allclose(both(later, memory=memory)[:, 0], both(x, memory=memory)[:, 0], atol=1e-3)


def test_layer_and_stack_refuse_memory_that_does_not_fit_before_any_work():
    layer, plain = make_layer(), make_layer(cross=False)
    x, memory = torch.randn(2, 5, D), torch.randn(2, 6, KV)
    calls = []
    layer.attn.register_forward_pre_hook(lambda *_: calls.append(1))
    cases = [
        (layer, {}, "memory must be given to a layer with cross_attn"),
        (layer, {"memory": torch.randn(2, 6, D)}, r"memory must be a \(B, S, 16\) floating-point tensor"),
        (layer, {"memory": torch.randn(3, 6, KV)}, "memory must have x's batch size 2"),
        (layer, {"memory": memory, "memory_padding_mask": PADDING}, r"memory_padding_mask must have shape \(B, S\) = \(2, 6\)"),
        (plain, {"memory": memory}, "memory must be None for a layer without cross_attn, got torch.float32 of shape"),
        (plain, {"memory_padding_mask": PADDING[:2]}, "memory_padding_mask must be None for a layer without cross_attn"),
        (TransformerEncoder([plain]), {"memory": memory}, "memory must be None for a stack with no layer that attends"),
        (TransformerEncoder([layer]), {"memory_padding_mask": PADDING[:2]}, "memory_padding_mask must come with memory"),
        (TransformerEncoder([plain, layer]), {}, "memory must be given to a layer with cross_attn"),
    ]  # fmt: skip
    for module, kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            module(x, **kwargs)
    with pytest.raises(TypeError, match="memory must be torch.float32, the dtype of the layer's parameters"):
        layer(x, memory=memory.double())
    assert calls == []  # every error came before the layer's self-attention ran


def test_a_layer_refuses_cross_parts_it_cannot_use_when_built():
    with pytest.raises(ValueError, match="cross_attn needs cross_attn_norm too"):
        TransformerEncoderLayer(MultiHeadSelfAttention(D, H), MLP(D, 8), attn_norm=nn.LayerNorm(D),
                                mlp_norm=nn.LayerNorm(D), cross_attn=make_cross())  # fmt: skip
    with pytest.raises(ValueError, match=r"the parts must share one width, got .*cross_attn.embed_dim 32"):
        TransformerEncoderLayer(MultiHeadSelfAttention(D, H), MLP(D, 8), attn_norm=nn.LayerNorm(D),
                                mlp_norm=nn.LayerNorm(D), cross_attn=MultiHeadCrossAttention(32, 4),
                                cross_attn_norm=nn.LayerNorm(32))  # fmt: skip
    with pytest.raises(TypeError, match=r"cross_attn \(torch.nn.modules.activation.MultiheadAttention\) must be a "
                       r"cross-attention called as cross_attn\(x, memory, memory_padding_mask=...\)"):  # fmt: skip
        TransformerEncoderLayer(MultiHeadSelfAttention(D, H), MLP(D, 8), attn_norm=nn.LayerNorm(D),
                                mlp_norm=nn.LayerNorm(D), cross_attn=nn.MultiheadAttention(D, H),
                                cross_attn_norm=nn.LayerNorm(D))  # fmt: skip
    with pytest.raises(TypeError, match="cross_attn_norm must be"):
        TransformerEncoderLayer(MultiHeadSelfAttention(D, H), MLP(D, 8), attn_norm=nn.LayerNorm(D),
                                mlp_norm=nn.LayerNorm(D), cross_attn=make_cross(), cross_attn_norm="ln")  # fmt: skip


def test_a_training_forward_of_a_cross_attending_stack_walks_no_module_tree(monkeypatch):
    stack = TransformerEncoder([make_layer(), make_layer()]).train()
    x, memory = torch.randn(2, 5, D), torch.randn(2, 6, KV)
    expected = stack(x, memory=memory).last_hidden_state
    walks = []
    original = nn.Module.named_modules
    monkeypatch.setattr(nn.Module, "named_modules", lambda self, *a, **k: walks.append(self) or original(self, *a, **k))
    assert_close(stack(x, memory=memory).last_hidden_state, expected, atol=0, rtol=0)
    assert walks == []


def test_a_layer_without_cross_attention_keeps_its_state_dict_and_values():
    torch.manual_seed(3)
    plain = make_layer(cross=False)
    assert not any("cross" in key for key in plain.state_dict())
    assert plain.cross_attn is None and plain.cross_attn_norm is None
    torch.manual_seed(3)
    decoder = make_layer(cross=True)
    assert sorted(set(decoder.state_dict()) - set(plain.state_dict())) == sorted(
        f"cross_attn{part}" for part in (".q_proj.weight", ".q_proj.bias", ".kv_proj.weight", ".kv_proj.bias",
                                         ".out_proj.weight", ".out_proj.bias", "_norm.weight", "_norm.bias")
    )  # fmt: skip


def test_stack_passes_memory_to_the_cross_attending_layers_only():
    # Flamingo-like interleaving: cross-attention in every other layer
    layers = [make_layer(cross=i % 2 == 1) for i in range(4)]
    stack = TransformerEncoder(layers).eval()
    x, memory = torch.randn(3, 5, D), torch.randn(3, 6, KV)
    out = stack(x, memory=memory, memory_padding_mask=PADDING, return_hidden_states=True)
    h = x
    for i, layer in enumerate(layers):
        h = layer(h, memory=memory, memory_padding_mask=PADDING) if i % 2 else layer(h)
        assert_close(out.hidden_states[i + 1], h, atol=0, rtol=0)
    assert_close(out.last_hidden_state, h, atol=0, rtol=0)


@pytest.mark.parametrize(
    "positions",
    [slice(-1, None), torch.tensor([0, 3]), torch.tensor([[4], [1], [2]]), "mask"],
    ids=["slice", "shared", "per-row", "mask"],
)
def test_a_stack_asked_for_some_positions_gives_those_of_the_full_output(positions):
    stack = TransformerEncoder([make_layer(), make_layer()]).eval()
    x, memory = torch.randn(3, 5, D), torch.randn(3, 6, KV)
    full = stack(x, memory=memory, memory_padding_mask=PADDING).last_hidden_state
    if isinstance(positions, str):
        positions = torch.tensor([[True, False, False, False, True], [False] * 5, [False, True, True, False, False]])
        got = stack(x, memory=memory, memory_padding_mask=PADDING, output_positions=positions).last_hidden_state
        assert_close(got[positions], full[positions], atol=1e-6, rtol=0)
        assert (got[~positions] == 0).all()
        return
    got = stack(x, memory=memory, memory_padding_mask=PADDING, output_positions=positions).last_hidden_state
    want = full[:, positions] if positions.__class__ is slice or positions.dim() == 1 else full.gather(
        1, positions[..., None].expand(-1, -1, D))  # fmt: skip
    assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_covers_cross_attention_layers(mode):
    plain = TransformerEncoder([make_layer(dropout=0.1), make_layer(dropout=0.1)]).train()
    checkpointed = copy.deepcopy(plain)
    assert set_activation_checkpointing(nn.ModuleDict({"decoder": checkpointed}), mode) == 1
    entered = [0]
    for layer in checkpointed.layers:
        layer.cross_attn.register_forward_pre_hook(lambda *_: entered.__setitem__(0, entered[0] + 1))
    x, memory, weights = torch.randn(3, 5, D), torch.randn(3, 6, KV), torch.randn(3, 5, D)
    results = []
    for stack in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout masks: checkpointing must replay them
        got = run_with_grads(
            lambda x, m, stack=stack: stack(x, memory=m, memory_padding_mask=PADDING).last_hidden_state,
            x,
            memory,
            weights,
        )
        results.append((got, {n: p.grad for n, p in stack.named_parameters()}))
    for g, w in zip(results[1][0], results[0][0]):
        assert_close(g, w, atol=1e-6, rtol=1e-5)
    for name, grad in results[0][1].items():
        assert_close(results[1][1][name], grad, atol=1e-6, rtol=1e-5, msg=name)
    assert entered[0] == 4  # each layer's cross-attention entered again in backward: recomputed


def test_meta_device_then_to_empty_then_init_weights():
    with torch.device("meta"):
        stack = TransformerEncoder([make_layer(), make_layer()])
    assert all(p.is_meta for p in stack.parameters())
    stack.to_empty(device="cpu")
    init_weights(stack, std=0.02)
    cross = stack.layers[0].cross_attn
    for linear in (cross.q_proj, cross.kv_proj, cross.out_proj):
        assert (linear.bias == 0).all()
        assert 0.015 < linear.weight.std().item() < 0.025
    assert (stack.layers[1].cross_attn_norm.weight == 1).all()
    out = stack(torch.randn(2, 5, D), memory=torch.randn(2, 3, KV)).last_hidden_state
    assert out.shape == (2, 5, D) and torch.isfinite(out).all()


# --- a tiny CoCa-like captioner: image tower -> memory; causal text decoder with cross-attention; LM loss ---

VOCAB, TEXT_LEN, IMAGE_WIDTH, BATCH = 12, 6, 16, 8


class TinyCaptioner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = VisionEncoder(
            PatchEmbedding(8, 4, 3, IMAGE_WIDTH),
            transformer_encoder(embed_dim=IMAGE_WIDTH, num_layers=1, num_heads=2, mlp_dim=32),
            nn.LayerNorm(IMAGE_WIDTH),
        )
        self.embed = TokenEmbedding(VOCAB, D, TEXT_LEN)
        self.decoder = TransformerEncoder([make_layer(), make_layer()])
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, VOCAB)

    def forward(self, images, ids, padding):
        memory = self.image(images).last_hidden_state  # (B, 1 + 4, 16): another width than the text's
        hidden = self.decoder(self.embed(ids), memory=memory, memory_padding_mask=padding).last_hidden_state
        return self.head(self.norm(hidden))


class CaptionData(torch.utils.data.Dataset):
    """The same batch every step: captions that depend on the image (its class repeated)."""

    def __init__(self, steps: int) -> None:
        g = torch.Generator().manual_seed(5)
        labels = torch.arange(BATCH) % 4
        images = torch.randn(4, 3, 8, 8, generator=g)[labels] + 0.1 * torch.randn(BATCH, 3, 8, 8, generator=g)
        ids = (labels[:, None] * 2 + torch.arange(TEXT_LEN) % 2 + 1).clamp(max=VOCAB - 1)
        padding = torch.zeros(BATCH, 5, dtype=torch.bool)
        padding[::2, -1] = True  # some rows' last patch is padding
        self.batch, self.steps = {"images": images, "ids": ids, "padding": padding}, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> dict:
        return self.batch


def caption_step(model, batch) -> StepOutput:
    logits = model(batch["images"], batch["ids"], batch["padding"])[:, :-1]  # predict token t + 1 from t
    targets = batch["ids"][:, 1:]
    loss_sum = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), reduction="sum")
    return StepOutput({"lm": loss_sum}, {"lm": torch.tensor(float(targets.numel()))})


@pytest.mark.parametrize("checkpointing", ["full"])
def test_a_tiny_coca_like_captioner_trains_with_the_shared_loop(tmp_path, checkpointing):
    torch.manual_seed(0)
    model = TinyCaptioner()
    init_weights(model)
    training = TrainingConfig(
        output_dir=str(tmp_path), max_steps=8, global_batch_size=BATCH, log_every=1, checkpoint_every=8,
        progress_bar=False, tensorboard=False, device="cpu", activation_checkpointing=checkpointing,
    )  # fmt: skip
    optim = OptimConfig(lr=1e-2, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0)
    image_weight = model.image.encoder.layers[0].attn.qkv.weight.detach().clone()
    fit(model, caption_step, CaptionData(8), training=training, optim=optim)
    losses = [record["loss"] for record in read_metrics(tmp_path / "metrics.jsonl")]
    assert len(losses) == 8
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.6 * losses[0], losses
    assert model.decoder.checkpoint_activations == checkpointing
    # the image tower learnt through the memory the decoder attends to
    assert not torch.allclose(model.image.encoder.layers[0].attn.qkv.weight, image_weight, atol=1e-4)


def test_transformer_encoder_builds_cross_attending_layers_and_names_a_bad_width():
    from torchflava.modules.encoders import transformer_encoder

    stack = transformer_encoder(embed_dim=16, num_layers=2, num_heads=2, mlp_dim=32, cross_attention_dim=8)
    assert all(layer.cross_attn.kv_dim == 8 and layer.cross_attn.embed_dim == 16 for layer in stack.layers)
    plain = transformer_encoder(embed_dim=16, num_layers=2, num_heads=2, mlp_dim=32)
    assert set(stack.state_dict()) > set(plain.state_dict())  # (the plain stack's names unchanged)
    assert stack(torch.randn(2, 3, 16), memory=torch.randn(2, 5, 8)).last_hidden_state.shape == (2, 3, 16)
    for bad, error in ((0, ValueError), (2.5, TypeError)):
        with pytest.raises(error, match="cross_attention_dim"):
            transformer_encoder(embed_dim=16, num_layers=2, num_heads=2, mlp_dim=32, cross_attention_dim=bad)
