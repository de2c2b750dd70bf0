"""Pre-norm TransformerEncoderLayer, the TransformerEncoder stack (hidden states, checkpointing), MLP, Pooler."""

import copy
import warnings

import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from torchflava.modules.layers import (
    MLP,
    MultiHeadSelfAttention,
    Pooler,
    TransformerEncoder,
    TransformerEncoderLayer,
    TransformerOutput,
    attention,
)
from torchflava.modules.layers import mlp as mlp_module

D, HEADS, HIDDEN = 24, 3, 40


def make_layer(dropout: float = 0.0) -> TransformerEncoderLayer:
    layer = TransformerEncoderLayer(
        MultiHeadSelfAttention(D, HEADS, dropout=dropout),
        MLP(D, HIDDEN, dropout=dropout),
        attn_norm=nn.LayerNorm(D),
        mlp_norm=nn.LayerNorm(D),
        dropout=dropout,
    )
    with torch.no_grad():  # distinct, non-trivial norms so swapping them is caught
        for norm in (layer.attn_norm, layer.mlp_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
    return layer


def make_encoder(num_layers: int = 3, dropout: float = 0.0, **kwargs) -> TransformerEncoder:
    return TransformerEncoder([make_layer(dropout) for _ in range(num_layers)], **kwargs)


def mlp_by_hand(mlp: MLP, x: torch.Tensor) -> torch.Tensor:
    hidden = x @ mlp.fc1.weight.T + mlp.fc1.bias
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / 2**0.5))  # exact GELU
    return hidden @ mlp.fc2.weight.T + mlp.fc2.bias


def layer_by_hand(layer: TransformerEncoderLayer, x: torch.Tensor, mask=None) -> torch.Tensor:
    def norm(module, t):
        return F.layer_norm(t, (D,), module.weight, module.bias, module.eps)

    h = x + layer.attn(norm(layer.attn_norm, x), key_padding_mask=mask)
    return h + mlp_by_hand(layer.mlp, norm(layer.mlp_norm, h))


def test_layer_matches_pre_norm_formula():
    layer = make_layer().eval()
    x = torch.randn(2, 6, D)
    assert_close(layer(x), layer_by_hand(layer, x), atol=1e-5, rtol=1e-5)
    mask = torch.tensor([[False] * 4 + [True] * 2, [False] * 6])
    out = layer(x, key_padding_mask=mask)
    assert_close(out, layer_by_hand(layer, x, mask), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0, :4], layer(x)[0, :4], atol=1e-4)  # the mask reaches attention


def test_layer_dropout_only_in_training():
    layer = make_layer(dropout=0.3).eval()
    x = torch.randn(2, 6, D)
    assert_close(layer(x), layer_by_hand(layer, x), atol=1e-5, rtol=1e-5)
    layer.train()
    assert not torch.allclose(layer(x), layer_by_hand(layer, x), atol=1e-3)


def test_encoder_applies_layers_in_order_and_returns_hidden_states():
    encoder = make_encoder(num_layers=3).eval()
    x = torch.randn(2, 5, D)
    mask = torch.tensor([[False, False, False, True, True], [False] * 5])
    out = encoder(x, key_padding_mask=mask, return_hidden_states=True)
    assert isinstance(out, TransformerOutput)
    assert len(out.hidden_states) == 3 + 1
    expected = x
    assert_close(out.hidden_states[0], x, atol=0, rtol=0)
    for i, layer in enumerate(encoder.layers):
        expected = layer_by_hand(layer, expected, mask)
        assert_close(out.hidden_states[i + 1], expected, atol=1e-5, rtol=1e-5)
    assert out.hidden_states[-1] is out.last_hidden_state


def test_encoder_hidden_states_none_unless_asked():
    encoder = make_encoder(num_layers=2).eval()
    x = torch.randn(2, 5, D)
    out = encoder(x)
    assert out.hidden_states is None
    assert out.last_hidden_state.shape == (2, 5, D)
    assert_close(out.last_hidden_state, encoder(x, return_hidden_states=True).last_hidden_state, atol=0, rtol=0)


def count_layer_calls(encoder: TransformerEncoder) -> list[int]:
    """How often each layer's attention was entered (the layer's own hooks fire once: it checkpoints inside)."""
    calls = [0] * len(encoder.layers)
    for i, layer in enumerate(encoder.layers):
        layer.attn.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


class CountOps(TorchDispatchMode):
    """Counts the aten ops dispatched while active."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func] = self.counts.get(func, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", [True, "full", "selective"])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_activation_checkpointing_gives_identical_outputs_and_gradients(dropout, mode):
    plain = make_encoder(num_layers=3, dropout=dropout).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.checkpoint_activations = mode
    calls_plain, calls_ckpt = count_layer_calls(plain), count_layer_calls(checkpointed)
    x = torch.randn(2, 6, D)
    mask = torch.tensor([[False] * 4 + [True] * 2, [False] * 6])
    weights = torch.randn(2, 6, D)
    outputs, input_grads, backward_ops = [], [], []
    for encoder in (plain, checkpointed):
        x_ = x.clone().requires_grad_(True)
        torch.manual_seed(1)  # the same dropout masks for both (checkpointing must replay them)
        out = encoder(x_, key_padding_mask=mask, return_hidden_states=True)
        with CountOps() as ops:
            (out.last_hidden_state * weights).sum().backward()
        outputs.append(out)
        input_grads.append(x_.grad)
        backward_ops.append(ops.counts)
    assert_close(outputs[1].last_hidden_state, outputs[0].last_hidden_state, atol=0, rtol=0)
    for h_ckpt, h_plain in zip(outputs[1].hidden_states, outputs[0].hidden_states):
        assert_close(h_ckpt, h_plain, atol=0, rtol=0)
    assert_close(input_grads[1], input_grads[0], atol=1e-7, rtol=1e-6)
    params_plain = dict(plain.named_parameters())
    for name, p in checkpointed.named_parameters():
        assert p.grad is not None and params_plain[name].grad is not None, name
        assert_close(p.grad, params_plain[name].grad, atol=1e-7, rtol=1e-6, msg=name)
    # Checkpointing really happened: every layer's attention was entered again during backward (a pre-hook:
    # the recomputation stops early once it has what backward needs, so forward hooks never fire).
    assert calls_plain == [1, 1, 1]
    assert calls_ckpt == [2, 2, 2]
    # What was recomputed: backward itself runs no addmm (its GEMMs are mm), so an addmm in backward
    # is a forward projection done again. Full recomputation redoes qkv, out_proj and fc1 of every
    # layer, and fc2 only when a dropout mask after it must be replayed; selective keeps every matmul output and redoes none, but
    # does redo the cheap ops it did not keep (layer norms, GELU).
    addmm = torch.ops.aten.addmm.default
    assert backward_ops[0].get(addmm, 0) == 0
    recomputed_addmm = backward_ops[1].get(addmm, 0)
    assert recomputed_addmm == (0 if mode == "selective" else (3 if dropout == 0 else 4) * 3)
    norms = torch.ops.aten.native_layer_norm.default
    assert backward_ops[0].get(norms, 0) == 0 and backward_ops[1].get(norms, 0) == 2 * 3


def test_selective_checkpointing_keeps_the_onednn_linear_products(monkeypatch):
    from torchflava.modules.layers import linear

    if not linear._ONEDNN:
        pytest.skip("this PyTorch build has no oneDNN linear")
    monkeypatch.setattr(linear, "ONEDNN_FP32_MIN_MACS", {"inference": 0, "training": 0})
    monkeypatch.setattr(linear, "ONEDNN_FP32_MIN_WIDTH", {"inference": 0, "training": 0})
    product, counts = torch.ops.mkldnn._linear_pointwise.default, {}
    for mode in ("none", "selective", "full"):
        encoder = make_encoder(num_layers=2).train()
        encoder.checkpoint_activations = mode
        out = encoder(torch.randn(2, 6, D, requires_grad=True)).last_hidden_state
        with CountOps() as ops:
            out.sum().backward()
        counts[mode] = ops.counts.get(product, 0)
    # Backward's own products: the weight gradient of each of the 4 linears of each layer; full
    # redoes the 4 forward products too, selective keeps them (it redid them all before).
    assert counts == {"none": 8, "selective": 8, "full": 16}


def test_checkpoint_mode_values():
    encoder = make_encoder(num_layers=1)
    for value, mode in (
        (False, "none"),
        (True, "full"),
        ("none", "none"),
        ("selective", "selective"),
        ("full", "full"),
    ):
        encoder.checkpoint_activations = value
        assert encoder.checkpoint_activations == mode
    for bad in ("partial", 1, None):
        with pytest.raises(ValueError, match="checkpoint_activations"):
            encoder.checkpoint_activations = bad
    with pytest.raises(ValueError, match="checkpoint_activations"):
        encoder(torch.randn(1, 3, D), checkpoint_activations="everything")
    with pytest.raises(ValueError, match="checkpoint_activations"):
        make_encoder(num_layers=1, checkpoint_activations="yes")


def test_no_checkpointing_in_eval_or_without_grad():
    encoder = make_encoder(num_layers=2, checkpoint_activations=True)
    calls = count_layer_calls(encoder)
    x = torch.randn(1, 4, D, requires_grad=True)
    encoder.eval()
    encoder(x).last_hidden_state.sum().backward()
    assert calls == [1, 1]
    encoder.train()
    with torch.no_grad():
        encoder(x)
    assert calls == [2, 2]


GRAD_FREE = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@pytest.mark.parametrize("context", GRAD_FREE)
def test_grad_free_forward_gives_the_same_values_and_leaves_the_input_alone(context):
    # Without autograd the layers reuse their own fresh buffers (in-place GELU and residual add).
    encoder = make_encoder(num_layers=3).eval()
    x = torch.randn(2, 6, D)
    mask = torch.tensor([[False] * 4 + [True] * 2, [False] * 6])
    expected = encoder(x, key_padding_mask=mask, return_hidden_states=True)
    x_before = x.clone()
    with GRAD_FREE[context]():
        out = encoder(x, key_padding_mask=mask, return_hidden_states=True)
        last_only = encoder(x, key_padding_mask=mask, output_positions=slice(0, 1)).last_hidden_state
    assert_close(x, x_before, atol=0, rtol=0)
    assert out.hidden_states[0] is x
    for got, want in zip(out.hidden_states, expected.hidden_states):
        assert_close(got, want, atol=0, rtol=0)
    assert_close(last_only, expected.last_hidden_state[:, :1], atol=1e-6, rtol=1e-6)


def test_grad_free_forward_under_autocast_keeps_the_float32_residual_stream(monkeypatch):
    # SDPA in both passes (with autograd, bf16 would take the matmul path: other roundings).
    monkeypatch.setattr(attention, "MATH_ATTENTION_MAX_KEYS", {})
    encoder = make_encoder(num_layers=2).eval()
    x = torch.randn(2, 6, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = encoder(x).last_hidden_state
        with torch.inference_mode():
            out = encoder(x).last_hidden_state
    assert expected.dtype == out.dtype == torch.float32
    assert_close(out, expected, atol=0, rtol=0)


@pytest.mark.parametrize("context", GRAD_FREE)
def test_grad_free_layers_write_each_residual_sum_into_the_branch_they_add(context):
    # Without autograd both sums go into fresh memory of the layer's own (the attention's out_proj output,
    # then the stream): no (B, S, D) tensor is allocated for them, none kept beside the MLP's.
    encoder = make_encoder(num_layers=3).eval()
    x = torch.randn(2, 6, D)
    expected = encoder(x).last_hidden_state
    with GRAD_FREE[context](), CountOps() as ops:
        out = encoder(x).last_hidden_state
    assert_close(out, expected, atol=0, rtol=0)
    assert ops.counts.get(torch.ops.aten.add.Tensor, 0) == 0
    assert ops.counts[torch.ops.aten.add_.Tensor] == 2 * 3


def test_grad_free_residual_sum_leaves_what_a_hook_kept_alone():
    # A forward hook on the attention's output projection may keep its output: that tensor is then not
    # written into.
    layer = make_layer().eval()
    kept = []
    layer.attn.out_proj.register_forward_hook(lambda module, args, out: kept.append((out, out.clone())))
    with torch.no_grad():
        layer(torch.randn(2, 6, D))
    assert_close(kept[0][0], kept[0][1], atol=0, rtol=0)


@pytest.mark.parametrize("activation", [None, nn.GELU(approximate="tanh"), nn.ReLU()])
def test_mlp_grad_free_forward_gives_the_same_values(activation):
    mlp = MLP(D, HIDDEN, activation=activation).eval()
    x = torch.randn(3, 5, D)
    expected = mlp(x)
    with torch.no_grad(), CountOps() as ops:
        assert_close(mlp(x), expected, atol=0, rtol=0)
    # GELU overwrites fc1's output rather than allocating another (..., hidden) tensor.
    assert ops.counts.get(torch.ops.aten.gelu_.default, 0) == (0 if isinstance(activation, nn.ReLU) else 1)


def test_mlp():
    mlp = MLP(D, HIDDEN).eval()
    x = torch.randn(2, 5, D)
    out = mlp(x)
    assert out.shape == (2, 5, D)
    assert isinstance(mlp.activation, nn.GELU) and mlp.activation.approximate == "none"
    assert_close(out, mlp_by_hand(mlp, x), atol=1e-5, rtol=1e-5)
    other = MLP(D, HIDDEN, 7, activation=nn.ReLU())
    assert other(x).shape == (2, 5, 7)
    assert_close(other(x), F.relu(x @ other.fc1.weight.T + other.fc1.bias) @ other.fc2.weight.T + other.fc2.bias)


def test_mlp_dropout_only_in_training():
    mlp = MLP(D, HIDDEN, dropout=0.5).eval()
    x = torch.randn(3, D)
    assert_close(mlp(x), mlp_by_hand(mlp, x), atol=1e-5, rtol=1e-5)
    mlp.train()
    assert not torch.allclose(mlp(x), mlp_by_hand(mlp, x), atol=1e-3)


def test_pooler():
    pooler = Pooler(D)
    x = torch.randn(3, 5, D)
    out = pooler(x)
    assert out.shape == (3, D)
    assert_close(out, torch.tanh(x[:, 0] @ pooler.dense.weight.T + pooler.dense.bias))
    changed = x.clone()
    changed[:, 1:] = torch.randn(3, 4, D)
    assert_close(pooler(changed), out, atol=0, rtol=0)  # only the first token matters


def test_set_activation_checkpointing_sets_every_stack_and_refuses_bad_input():
    from torchflava.modules.layers import set_activation_checkpointing

    def stack():
        layer = TransformerEncoderLayer(
            MultiHeadSelfAttention(8, 2), MLP(8, 16), attn_norm=nn.LayerNorm(8), mlp_norm=nn.LayerNorm(8)
        )
        return TransformerEncoder([layer])

    model = nn.ModuleDict({"a": stack(), "b": nn.Sequential(stack())})
    assert set_activation_checkpointing(model, "selective") == 2
    assert model["a"].checkpoint_activations == "selective" and model["b"][0].checkpoint_activations == "selective"
    assert set_activation_checkpointing(model, True) == 2 and model["a"].checkpoint_activations == "full"
    with pytest.raises(ValueError, match="mode must be a bool or one of"):
        set_activation_checkpointing(model, "sometimes")
    with pytest.raises(ValueError, match="no TransformerEncoder"):
        set_activation_checkpointing(nn.Linear(2, 2), "full")


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_checkpointing_under_autocast_with_two_passes_through_one_encoder(mode, monkeypatch):
    # Checkpointed layers run GELU and fc2 as they are (their saved-tensors hooks decide what is kept);
    # so does the reference here, whose fc2 weight gradients autocast then sums in bf16 (see mlp.py).
    monkeypatch.setattr(mlp_module, "RECOMPUTE_GELU_FOR_FC2", False)
    # A FLAVA pair step runs each encoder twice (masked and unmasked) under one autocast region:
    # autocast's weight-cast cache then serves the second pass, and recomputing in backward must
    # not depend on what that cache held (selective checkpointing replays the forward's ops one by one).
    plain = make_encoder(num_layers=2).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.checkpoint_activations = mode
    x1, x2 = torch.randn(2, 6, D), torch.randn(2, 6, D)

    def grads(encoder, cache_enabled=True):
        encoder.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache_enabled):
            loss = encoder(x1).last_hidden_state.float().pow(2).mean() + encoder(x2).last_hidden_state.float().mean()
        loss.backward()
        return {name: p.grad for name, p in encoder.named_parameters()}

    reference = grads(plain)
    # Selective checkpointing casts each weight on every call (a cached cast would not be replayed):
    # exactly what autocast without its cache computes, and within bf16 rounding of the cached run
    # (there the two passes' weight gradients are summed in bf16 before the cast back).
    exact = grads(plain, cache_enabled=False) if mode == "selective" else reference
    for name, grad in grads(checkpointed).items():
        assert grad is not None, name
        assert_close(grad, exact[name], atol=0, rtol=0, msg=name)
        assert_close(grad, reference[name], atol=1e-3, rtol=2e-2, msg=name)


def test_forward_hooks_see_what_they_saw_under_no_grad_too():
    from torchflava.modules.encoders import transformer_encoder

    layer = transformer_encoder(embed_dim=16, num_layers=1, num_heads=2, mlp_dim=32).layers[0].eval()
    x = torch.randn(2, 5, 16)
    seen = {}
    layer.mlp_norm.register_forward_pre_hook(lambda module, args: seen.__setitem__("residual", args[0]))
    layer.mlp.fc1.register_forward_hook(lambda module, args, out: seen.__setitem__("fc1", out))
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            out = layer(x)
        residual = x + layer.attn(layer.attn_norm(x))  # the post-attention residual the hook kept
        assert torch.allclose(seen["residual"], residual, atol=1e-6), grad  # not overwritten by the MLP's add
        assert torch.allclose(seen["fc1"], layer.mlp.fc1(layer.mlp_norm(residual)), atol=1e-6), grad  # not by GELU
        assert not torch.allclose(seen["residual"], out)


def test_a_hook_on_the_mlp_keeps_its_input_under_an_identity_norm():
    layer = TransformerEncoderLayer(
        MultiHeadSelfAttention(16, 2), MLP(16, 32), attn_norm=nn.LayerNorm(16), mlp_norm=nn.Identity()
    ).eval()
    x, seen = torch.randn(2, 5, 16), {}
    layer.mlp.register_forward_pre_hook(lambda module, args: seen.__setitem__("input", args[0]))
    with torch.no_grad():
        out = layer(x)
        residual = x + layer.attn(layer.attn_norm(x))  # what the MLP was given: the residual itself
    assert torch.allclose(seen["input"], residual, atol=1e-6) and not torch.allclose(seen["input"], out)


def test_an_attention_without_query_positions_composes_into_a_layer():
    class TorchAttention(nn.Module):  # the documented contract, without the optional keyword
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x, *, key_padding_mask=None, attn_mask=None):
            return self.mha(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0]

    attn = TorchAttention()
    layer = TransformerEncoderLayer(attn, MLP(16, 32), attn_norm=nn.LayerNorm(16), mlp_norm=nn.LayerNorm(16)).eval()
    x = torch.randn(2, 5, 16)
    h = x + attn(layer.attn_norm(x))
    assert torch.allclose(layer(x), h + layer.mlp(layer.mlp_norm(h)), atol=1e-6)


@pytest.mark.parametrize(
    "positions",
    [slice(0, 1), torch.tensor([[4], [1]]), torch.tensor([[True, False, False, True, False], [False] * 4 + [True]])],
    ids=["cls", "per-row", "mask"],
)
def test_an_attention_without_query_positions_serves_a_stack_asked_for_some_positions(positions):
    """The contract's attention (no query_positions keyword) under a stack's output_positions (a CLS-pooled
    tower's last layer): it attends from every position and the layer keeps the chosen ones. It failed in
    the last layer with ``forward() got an unexpected keyword argument 'query_positions'``."""

    class TorchAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(D, HEADS, batch_first=True)

        def forward(self, x, *, key_padding_mask=None, attn_mask=None):
            return self.mha(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0]

    def layer() -> TransformerEncoderLayer:
        return TransformerEncoderLayer(
            TorchAttention(), MLP(D, HIDDEN), attn_norm=nn.LayerNorm(D), mlp_norm=nn.LayerNorm(D)
        )

    stack = TransformerEncoder([layer(), layer()]).eval()
    x, padding = torch.randn(2, 5, D), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    full = stack(x, key_padding_mask=padding).last_hidden_state
    out = stack(x, key_padding_mask=padding, output_positions=positions).last_hidden_state
    if isinstance(positions, slice):
        expected = full[:, positions]
    elif positions.dtype == torch.bool:  # (B, S) outputs, zeros where not chosen
        expected = full.masked_fill(~positions[..., None], 0.0)
    else:
        expected = full[torch.arange(2)[:, None], positions]
    assert out.shape == expected.shape
    assert_close(out, expected, atol=1e-6, rtol=1e-5)
    # an attention swapped in after the layers were built is read anew (the flag read at build went stale:
    # the swapped-in one was passed query_positions)
    built = TransformerEncoder([make_layer(), make_layer()]).eval()
    for old, new in zip(built.layers, stack.layers):
        old.attn, old.attn_norm, old.mlp, old.mlp_norm = new.attn, new.attn_norm, new.mlp, new.mlp_norm
    swapped = built(x, key_padding_mask=padding, output_positions=positions).last_hidden_state
    assert_close(swapped, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_torch_func_gradients_of_a_checkpointed_stack_are_autograds(mode):
    """torch.func.grad (and vmap over it: per-sample gradients) of a stack set to checkpoint its layers
    (set_activation_checkpointing on a built model): the gradients of plain autograd, the layers run without
    checkpointing. It failed inside torch ("torch.func.{grad, ...} don't yet support saved tensor hooks")."""
    from torch.func import functional_call, grad, vmap

    stack = make_encoder(num_layers=2, checkpoint_activations=mode).train()
    x = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(0))
    params = {name: p.detach() for name, p in stack.named_parameters()}

    def loss(params, rows):
        return functional_call(stack, params, (rows,)).last_hidden_state.square().sum()

    whole = grad(loss)(params, x)
    per_row = vmap(grad(loss), in_dims=(None, 0))(params, x[:, None])
    loss(dict(stack.named_parameters()), x).backward()
    for name, p in stack.named_parameters():
        assert_close(whole[name], p.grad, atol=1e-5, rtol=1e-5)
        assert_close(per_row[name].sum(0), p.grad, atol=1e-4, rtol=1e-4)


def test_selective_checkpointing_compiles_with_the_layer():
    # training.compile compiles each layer's forward; selective checkpointing runs inside it, so its
    # policy is applied when the layer compiles (eagerly it decides op by op, a Python call per op).
    from torchflava.training.loop import compile_blocks

    reference = make_encoder(num_layers=2).train()
    x = torch.randn(2, 6, D)
    mask = torch.tensor([[False] * 4 + [True] * 2, [False] * 6])

    def run(encoder):
        saved = []

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        x_ = x.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = encoder(x_, key_padding_mask=mask).last_hidden_state
        out.pow(2).sum().backward()
        return out, x_.grad, {n: p.grad for n, p in encoder.named_parameters()}, sum(saved)

    expected = run(reference)
    saved = {}
    for mode in ("none", "selective"):
        compiled = copy.deepcopy(reference)
        compiled.zero_grad(set_to_none=True)
        compiled.checkpoint_activations = mode
        compile_blocks(compiled, (TransformerEncoderLayer,))
        out, x_grad, grads, saved[mode] = run(compiled)
        assert_close(out, expected[0], atol=1e-5, rtol=1e-5)
        assert_close(x_grad, expected[1], atol=1e-5, rtol=1e-5)
        for name, grad in grads.items():
            assert_close(grad, expected[2][name], atol=1e-5, rtol=1e-5, msg=name)
    # The compiled graph itself keeps the matmul and attention outputs and drops the norms' and GELU's
    # (a checkpoint around the compiled layer would save only the layer's input, and decide at run time).
    assert 0.5 * saved["none"] < saved["selective"] < 0.9 * saved["none"], saved
    torch._dynamo.reset()


def test_selective_checkpointing_of_a_layer_whose_forward_is_its_own():
    # A subclass with its own forward (no ``checkpointing`` argument) is checkpointed from outside, as any layer.
    class Scaled(TransformerEncoderLayer):
        def forward(self, x, *, key_padding_mask=None, attn_mask=None, query_positions=None):
            return 0.5 * super().forward(
                x, key_padding_mask=key_padding_mask, attn_mask=attn_mask, query_positions=query_positions
            )

    bases = [make_layer() for _ in range(2)]
    plain = TransformerEncoder(
        [Scaled(b.attn, b.mlp, attn_norm=b.attn_norm, mlp_norm=b.mlp_norm) for b in bases]
    ).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.checkpoint_activations = "selective"
    x = torch.randn(2, 5, D)
    grads = []
    for encoder in (plain, checkpointed):
        x_ = x.clone().requires_grad_(True)
        encoder(x_).last_hidden_state.pow(2).sum().backward()
        grads.append(x_.grad)
    assert_close(grads[1], grads[0], atol=0, rtol=0)


@pytest.mark.parametrize("value, recomputed", [("none", False), (False, False), ("full", True), (True, True)])
def test_a_layer_called_with_a_checkpointing_setting_recomputes_as_it_says(value, recomputed):
    layer = make_layer().train()
    calls = [0]
    layer.attn.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    layer(torch.randn(2, 5, D, requires_grad=True), checkpointing=value).sum().backward()
    assert calls[0] == (2 if recomputed else 1)
    with pytest.raises(ValueError, match=r"^checkpointing must be a bool or one of .* got None$"):
        layer(torch.randn(2, 5, D), checkpointing=None)


def test_an_encoder_whose_weights_cannot_fit_in_memory_is_refused_before_it_is_built(monkeypatch):
    """num_layers=10**6 allocated for minutes before the process was killed."""
    import os

    from torchflava.modules.encoders import transformer_encoder

    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": (1 << 30) // 4096}  # a 1 GiB machine
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    size = dict(embed_dim=512, num_heads=8, mlp_dim=2048)  # 3.1M weights a layer, 12.6 MB in fp32
    with pytest.raises(ValueError, match=r"num_layers=100, embed_dim=512, mlp_dim=2048 makes 3.15e\+08 weights"):
        transformer_encoder(num_layers=100, **size)
    assert len(transformer_encoder(num_layers=2, **size).layers) == 2
    with torch.device("meta"):  # nothing allocated: not checked
        assert transformer_encoder(num_layers=100, **size).layers[0].mlp.fc1.weight.is_meta


def test_an_encoder_deeper_than_max_layers_is_refused_on_any_device_naming_the_builder():
    """A meta build takes no memory but time a layer: num_layers=10**12 (a recipe's config check) ran until
    killed. The message named no builder, where transformer_encoder's other refusals do."""
    from torchflava.modules.encoders import transformer_encoder
    from torchflava.modules.encoders.builders import MAX_LAYERS

    assert MAX_LAYERS == 10_000
    for device, layers in (("meta", 10**12), ("cpu", 10**12), ("meta", MAX_LAYERS + 1)):
        expected = rf"^transformer_encoder: num_layers must be at most 10000 \(no stack is deeper\), got {layers}$"
        with torch.device(device), pytest.raises(ValueError, match=expected):
            transformer_encoder(embed_dim=1, num_layers=layers, num_heads=1, mlp_dim=1)


def test_encoder_refuses_layers_it_cannot_call_when_built():
    """A layer must be a module whose forward takes the stack's keywords; torch's own encoder layer
    (``src_mask``, ``src_key_padding_mask``) is refused at construction, naming the layer and what it lacks."""
    torch_layer = nn.TransformerEncoderLayer(D, 2, batch_first=True)
    with pytest.raises(TypeError, match=r"layers\[1\] \(torch\.nn\.modules\.transformer\.TransformerEncoderLayer\) "):
        TransformerEncoder([make_layer(), torch_layer])
    with pytest.raises(TypeError, match="it lacks key_padding_mask, attn_mask, query_positions"):
        TransformerEncoder([torch_layer])
    with pytest.raises(TypeError, match=r"layers\[0\] must be an nn.Module, got function"):
        TransformerEncoder([lambda x: x])

    class Partial(nn.Module):  # masks but no query_positions: the last layer would fail only at run time
        def forward(self, x, *, key_padding_mask=None, attn_mask=None):
            return x

    with pytest.raises(TypeError, match="it lacks query_positions$"):
        TransformerEncoder([Partial()])

    class Anything(nn.Module):  # **kwargs: its own business
        def forward(self, x, **kwargs):
            return 2 * x

    x = torch.randn(2, 3, D)
    assert_close(TransformerEncoder([Anything(), Anything()])(x).last_hidden_state, 4 * x)
    assert len(TransformerEncoder(make_layer() for _ in range(3)).layers) == 3  # a generator, checked and kept


def test_layer_refuses_parts_of_different_widths_when_built():
    with pytest.raises(
        ValueError,
        match=r"share one width, got attn_norm.normalized_shape 8, attn.embed_dim 8, "
        r"mlp_norm.normalized_shape 8, mlp.fc1.in_features 12, mlp.fc2.out_features 12",
    ):
        TransformerEncoderLayer(
            MultiHeadSelfAttention(8, 2), MLP(12, 16), attn_norm=nn.LayerNorm(8), mlp_norm=nn.LayerNorm(8)
        )
    with pytest.raises(ValueError, match="attn_norm.normalized_shape 6, attn.embed_dim 8"):
        TransformerEncoderLayer(
            MultiHeadSelfAttention(8, 2), MLP(8, 16), attn_norm=nn.LayerNorm(6), mlp_norm=nn.LayerNorm(8)
        )
    with pytest.raises(TypeError, match="mlp_norm must be an nn.Module, got builtin_function_or_method"):
        TransformerEncoderLayer(MultiHeadSelfAttention(8, 2), MLP(8, 16), attn_norm=nn.LayerNorm(8), mlp_norm=abs)
    # an MLP that widens the stream is refused too; parts with no readable width are trusted
    with pytest.raises(ValueError, match="mlp.fc2.out_features 10"):
        TransformerEncoderLayer(
            MultiHeadSelfAttention(8, 2), MLP(8, 16, out_dim=10), attn_norm=nn.LayerNorm(8), mlp_norm=nn.LayerNorm(8)
        )
    layer = TransformerEncoderLayer(
        MultiHeadSelfAttention(8, 2), nn.Sequential(nn.Linear(8, 8)), attn_norm=nn.Identity(), mlp_norm=nn.Identity()
    )
    assert layer(torch.randn(2, 3, 8)).shape == (2, 3, 8)


def test_a_layer_refuses_torchs_multihead_attention_when_built():
    """Built, it failed in the first forward in torch's words (forward() missing 2 required positional
    arguments: 'key' and 'value'); so did an attention without the masks' keywords."""
    mlp = lambda: MLP(8, 16)  # noqa: E731
    with pytest.raises(
        TypeError,
        match=r"^attn \(torch.nn.modules.activation.MultiheadAttention\) must be a self-attention called as "
        r"attn\(x, key_padding_mask=..., attn_mask=...\) .* its forward requires key, value too$",
    ):
        TransformerEncoderLayer(
            nn.MultiheadAttention(8, 2, batch_first=True), mlp(), attn_norm=nn.LayerNorm(8), mlp_norm=nn.LayerNorm(8)
        )

    class Unmasked(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match=r"its forward lacks key_padding_mask, attn_mask$"):
        TransformerEncoderLayer(Unmasked(), mlp(), attn_norm=nn.LayerNorm(8), mlp_norm=nn.LayerNorm(8))


def test_a_layer_reads_the_widths_of_an_mlp_written_as_a_sequential():
    """open_clip's MLP (c_fc, gelu, c_proj) as an nn.Sequential that narrows the stream was built and failed
    in the first forward inside torch (the size of tensor a (8) must match the size of tensor b (6))."""
    with pytest.raises(ValueError, match=r"share one width, got mlp\[0\].in_features 8, mlp\[2\].out_features 6"):
        TransformerEncoderLayer(
            MultiHeadSelfAttention(8, 2),
            nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 6)),
            attn_norm=nn.LayerNorm(8),
            mlp_norm=nn.LayerNorm(8),
        )
    good = TransformerEncoderLayer(
        MultiHeadSelfAttention(8, 2),
        nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)),
        attn_norm=nn.LayerNorm(8),
        mlp_norm=nn.LayerNorm(8),
    ).eval()
    x = torch.randn(2, 3, 8)
    h = x + good.attn(good.attn_norm(x))
    assert torch.allclose(good(x), h + good.mlp(good.mlp_norm(h)), atol=1e-6)


def test_a_layer_names_a_stream_of_another_dtype_than_its_parameters():
    """An fp32 stream into a bf16 stack (a user's fp32 position table added to bf16 tokens), or a bf16 one
    into an fp32 stack outside autocast, failed inside torch naming nothing (mixed dtype (CPU): expect
    parameter to have scalar type of Float; mat1 and mat2 must have the same dtype)."""
    from torchflava.modules.encoders import transformer_encoder  # (as the tests above: modules.layers first)

    torch.manual_seed(0)
    stack = transformer_encoder(embed_dim=16, num_layers=1, num_heads=2, mlp_dim=32)
    x = torch.randn(2, 3, 16)
    with pytest.raises(
        TypeError, match=r"^x must be torch.float32, the dtype of the layer's parameters .* got torch.bfloat16$"
    ):
        stack(x.bfloat16())
    with torch.autocast("cpu", torch.bfloat16):  # autocast casts fp32 parameters: either stream runs
        bf16, fp32 = stack(x.bfloat16()).last_hidden_state, stack(x.bfloat16().float()).last_hidden_state
        assert_close(bf16.float(), fp32, atol=0.1, rtol=0)
    half = copy.deepcopy(stack).bfloat16()
    for autocast in (False, True):  # bf16 parameters: autocast does not cast an fp32 stream for them
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            with pytest.raises(TypeError, match=r"^x must be torch.bfloat16, .* got torch.float32$"):
                half(x)
    assert half(x.bfloat16()).last_hidden_state.dtype == torch.bfloat16
    for norm in (m for m in half.modules() if isinstance(m, nn.LayerNorm)):  # fp32 norms in a bf16 model run
        norm.float()
    assert half(x.bfloat16()).last_hidden_state.dtype == torch.bfloat16


def test_a_bf16_layer_takes_an_fp32_stream_under_autocast_off_the_cpu(monkeypatch):
    """CUDA's autocast runs layer norms in fp32: a bf16 model under it gets an fp32 stream from its text
    embedding's norm, and ran before the dtype check, which refused it (only the CPU's autocast leaves a
    bf16 norm to fail on an fp32 stream). No GPU here: a meta-device layer, autocast reported on for it."""
    from torchflava.modules.encoders import transformer_encoder
    from torchflava.modules.layers.transformer import _check_stream_dtype

    with torch.device("meta"):
        attn = transformer_encoder(embed_dim=16, num_layers=1, num_heads=2, mlp_dim=32).bfloat16().layers[0].attn
    x = torch.empty(2, 3, 16, device="meta")
    enabled = {"meta": False, "cpu": True}  # (torch's own call raises for the meta device)
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type="cuda": enabled[device_type])
    with pytest.raises(TypeError, match=r"^x must be torch.bfloat16, .* got torch.float32$"):
        _check_stream_dtype(x, attn)  # outside autocast (on the CPU's alone, which does not cast norms): refused
    enabled["meta"] = True
    assert _check_stream_dtype(x, attn) is None


def test_stack_flag_and_set_activation_checkpointing_arguments_are_checked():
    from torchflava.modules.layers import set_activation_checkpointing

    encoder = make_encoder(2)
    with pytest.raises(TypeError, match=r"^return_hidden_states must be a bool, got str 'no'$"):
        encoder(torch.randn(2, 5, D), return_hidden_states="no")  # (truthy: every layer's output was kept)
    with pytest.raises(TypeError, match=r"^model must be an nn.Module, got str$"):
        set_activation_checkpointing("encoder", True)  # (an AttributeError on .modules() before)
    assert set_activation_checkpointing(encoder, "selective") == 1 and encoder.checkpoint_activations == "selective"


def _walked_parameter(module: nn.Module):
    """What the layer's dtype check read before: the first floating parameter of a full walk."""
    return next((p for p in module.parameters() if p.is_floating_point()), None)


def test_a_training_forward_walks_no_module_tree(monkeypatch):
    """Each layer's forward walked its attention's parameters (the dtype check) and its parts' modules
    (whether a sum may be written in place, decided only without grad) on every call: 4-5% of a
    2-layer width-64 encoder's training forward at batch 8. Now neither walk runs with grad on."""
    walks = []
    original = nn.Module.named_modules

    def counted(self, *args, **kwargs):
        walks.append(type(self).__name__)
        return original(self, *args, **kwargs)

    encoder = make_encoder(2).train()
    x = torch.randn(2, 5, D)
    expected = encoder(x).last_hidden_state
    monkeypatch.setattr(nn.Module, "named_modules", counted)
    out = encoder(x).last_hidden_state
    assert walks == []
    assert_close(out, expected, atol=0, rtol=0)


class _OwnFirst(nn.Module):
    """An attention holding a parameter of its own, before its children's."""

    def __init__(self, inner: nn.Module, first: torch.Tensor) -> None:
        super().__init__()
        self.first = nn.Parameter(first, requires_grad=first.is_floating_point())
        self.inner = inner
        self.embed_dim = inner.embed_dim

    def forward(self, x, *, key_padding_mask=None, attn_mask=None):
        return self.inner(x, key_padding_mask=key_padding_mask, attn_mask=attn_mask)


def _to_bf16(layer):
    return layer.to(torch.bfloat16)


def _packed(layer):
    from torchflava.modules.layers import pack_linears

    return pack_linears(layer.eval())


def _checkpointed(layer):
    from torchflava.modules.layers import set_activation_checkpointing

    encoder = TransformerEncoder([layer])
    set_activation_checkpointing(encoder, "full")
    return encoder.layers[0]


def _assigned_fp64(layer):
    layer.load_state_dict({k: v.double() for k, v in layer.state_dict().items()}, assign=True)
    return layer


def _qkv_replaced(layer):  # a part replaced by hand: its new weight decides
    layer.attn.qkv = nn.Linear(D, 3 * D, dtype=torch.float64)
    return layer


def _own_parameter_first(layer):
    layer.attn = _OwnFirst(layer.attn, torch.zeros(2, dtype=torch.float64))
    return layer


def _integer_parameter_first(layer):  # not floating: the walk goes on to qkv's fp32 weight
    layer.attn = _OwnFirst(layer.attn, torch.zeros(2, dtype=torch.int64))
    return layer


def _first_child_none(layer):
    layer.attn._modules = {"unset": None, **layer.attn._modules}  # a child set to None, first in order
    return layer


@pytest.mark.parametrize(
    "change",
    [
        lambda layer: layer,
        _to_bf16,
        _packed,
        _checkpointed,
        _assigned_fp64,
        _qkv_replaced,
        _own_parameter_first,
        _integer_parameter_first,
        _first_child_none,
    ],
    ids=[
        "built",
        "to_bf16",
        "pack_linears",
        "checkpointing",
        "assign_fp64",
        "qkv_replaced",
        "own_first",
        "int_first",
        "none_child",
    ],
)
def test_the_dtype_check_reads_the_parameter_a_full_walk_finds(change):
    """The dtype check reads the first floating parameter by a short descent where it can: the same one
    as the walk of ``parameters()``, however the layer was changed after it was built."""
    from torchflava.modules.layers.transformer import _first_floating_parameter

    layer = change(make_layer())
    found = _first_floating_parameter(layer.attn)
    assert found is _walked_parameter(layer.attn)
    dtype = None if found is None else found.dtype
    for stream in (torch.float32, torch.bfloat16, torch.float64):
        x = torch.randn(2, 5, D, dtype=stream)
        if dtype is not None and stream != dtype:
            with pytest.raises(TypeError, match=rf"^x must be {dtype}, the dtype of the layer's parameters"):
                layer(x)


def test_the_dtype_check_reads_fully_shards_parameters():
    """FSDP2's ``fully_shard`` replaces each parameter by a DTensor (and by the unsharded tensor during a
    forward): the check reads the one registered at the time, as the walk did. One gloo rank, in process."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from torchflava.modules.layers.transformer import _first_floating_parameter

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        layer = make_layer()
        expected = layer(torch.randn(2, 5, D))
        fully_shard(layer, mesh=init_device_mesh("cpu", (1,)))
        found = _first_floating_parameter(layer.attn)
        assert type(found).__name__ == "DTensor" and found is _walked_parameter(layer.attn)
        assert layer(torch.randn(2, 5, D)).shape == expected.shape
        with pytest.raises(TypeError, match=r"^x must be torch.float32, the dtype of the layer's parameters"):
            layer(torch.randn(2, 5, D, dtype=torch.float64))
    finally:
        dist.destroy_process_group()


def test_a_stack_traces_with_torch_jit_trace_and_its_own_check():
    """torch.jit.trace checks a trace by tracing again without grad; the MLP's GELU and the layer's residual adds
    were then written in place, there alone, and every model with a layer failed that check ("Graphs differed
    across invocations"), unless traced under no_grad or with check_trace=False."""

    class Last(nn.Module):  # (a trace returns tensors: the stack's last hidden state)
        def __init__(self) -> None:
            super().__init__()
            self.stack = TransformerEncoder([make_layer(), make_layer()])

        def forward(self, x):
            return self.stack(x).last_hidden_state

    torch.manual_seed(0)
    model = Last().eval()
    x = torch.randn(2, 5, D)
    with warnings.catch_warnings():  # torch.jit.trace is deprecated, still used to export
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, (x,))
    assert_close(traced(x), model(x), atol=0, rtol=0)
    with torch.no_grad():  # inference outside a trace still writes in place (the same values)
        assert_close(model(x), traced(x), atol=0, rtol=0)
