"""The composable parts: causal attention, per-row output positions, activations, CLIP-style embeddings,
the generic encoder builder and generic initialisation."""

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from torchflava.modules.encoders import TextEncoder, VisionEncoder, transformer_encoder
from torchflava.modules.init import init_weights
from torchflava.modules.layers import (
    MLP,
    Linear,
    MultiHeadSelfAttention,
    PatchEmbedding,
    QuickGELU,
    TextEmbedding,
    TokenEmbedding,
    TransformerEncoder,
    activation,
)
from torchflava.modules.layers.attention import take_positions


def reference_attention(attn: MultiHeadSelfAttention, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention with an explicit (B, S, S) mask (True = may attend), no SDPA."""
    b, s, d = x.shape
    h, hd = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).view(b, s, 3, h, hd).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return attn.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d))


@pytest.fixture
def causal_attention():
    torch.manual_seed(0)
    return MultiHeadSelfAttention(16, 4, is_causal=True).eval()


def test_causal_attention_equals_an_explicit_lower_triangular_mask(causal_attention):
    x = torch.randn(3, 7, 16)
    tril = torch.ones(7, 7, dtype=torch.bool).tril().expand(3, 7, 7)
    assert_close(causal_attention(x), reference_attention(causal_attention, x, tril), atol=1e-5, rtol=1e-5)
    # a later token cannot change an earlier output; an earlier one changes every later output
    changed = x.clone()
    changed[:, 4] += 1.0
    out, out_changed = causal_attention(x), causal_attention(changed)
    assert_close(out[:, :4], out_changed[:, :4])
    assert (out[:, 4:] - out_changed[:, 4:]).abs().amax() > 1e-3


def test_causal_attention_with_right_padding_matches_the_unpadded_rows(causal_attention):
    x = torch.randn(2, 6, 16)
    padding = torch.tensor([[False] * 4 + [True] * 2, [False] * 6])
    out = causal_attention(x, key_padding_mask=padding)
    assert_close(out[0, :4], causal_attention(x[:1, :4])[0], atol=1e-6, rtol=1e-5)
    assert_close(out[1], causal_attention(x[1:])[0], atol=1e-6, rtol=1e-5)


def test_causal_attention_with_left_padding_stays_finite_and_real_tokens_ignore_the_padding(causal_attention):
    x = torch.randn(1, 5, 16)
    padding = torch.tensor([[True, True, False, False, False]])
    out = causal_attention(x, key_padding_mask=padding)
    assert torch.isfinite(out).all()
    assert_close(out[0, 2:], causal_attention(x[:, 2:])[0], atol=1e-6, rtol=1e-5)


def test_causal_attention_combines_with_a_block_mask(causal_attention):
    x = torch.randn(1, 6, 16)  # two packed sequences of 3 tokens
    block = torch.ones(6, 6, dtype=torch.bool)
    block[:3, :3] = block[3:, 3:] = False
    out = causal_attention(x, attn_mask=block[None])
    assert_close(out[0, :3], causal_attention(x[:, :3])[0], atol=1e-6, rtol=1e-5)
    assert_close(out[0, 3:], causal_attention(x[:, 3:])[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("is_causal", [False, True])
def test_per_row_query_positions_equal_the_full_output_at_those_positions(is_causal):
    torch.manual_seed(1)
    attn = MultiHeadSelfAttention(16, 4, is_causal=is_causal).eval()
    x = torch.randn(3, 8, 16)
    padding = torch.zeros(3, 8, dtype=torch.bool)
    padding[0, 5:] = True
    positions = torch.tensor([[4], [7], [2]])  # e.g. each row's end-of-text token
    full = attn(x, key_padding_mask=padding)
    part = attn(x, key_padding_mask=padding, query_positions=positions)
    assert part.shape == (3, 1, 16)
    assert_close(part, take_positions(full, positions), atol=1e-6, rtol=1e-5)
    shared = attn(x, query_positions=torch.tensor([0, 5]))
    assert_close(shared, attn(x)[:, [0, 5]], atol=1e-6, rtol=1e-5)


def test_per_row_output_positions_through_an_encoder_match_and_carry_gradients():
    torch.manual_seed(2)
    encoder = transformer_encoder(embed_dim=16, num_layers=2, num_heads=2, mlp_dim=32, is_causal=True)
    x = torch.randn(4, 9, 16, requires_grad=True)
    positions = torch.tensor([[8], [3], [0], [5]])
    part = encoder(x, output_positions=positions).last_hidden_state
    full = encoder(x).last_hidden_state
    assert_close(part, take_positions(full, positions), atol=1e-5, rtol=1e-5)
    (grad_part,) = torch.autograd.grad(part.sum(), x)
    (grad_full,) = torch.autograd.grad(take_positions(full, positions).sum(), x)
    assert_close(grad_part, grad_full, atol=1e-5, rtol=1e-5)


def test_take_positions_refuses_bad_positions():
    x = torch.randn(2, 5, 3)
    with pytest.raises(
        TypeError, match="positions must be a slice, an integer tensor or a bool mask, got tensor of dtype"
    ):
        take_positions(x, torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"bool mask must have shape \(B, S\) = \(2, 5\), got \(2, 4\)"):
        take_positions(x, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, P\) = \(2, P\) indices, got shape \(3, 1\)"):
        take_positions(x, torch.zeros(3, 1, dtype=torch.long))
    # slices: past the end selected nothing (a (B, 0, D) output, silently), steps failed inside torch
    with pytest.raises(
        ValueError, match=r"^positions must select at least one of the 5 positions, got slice\(7, 9, None\)$"
    ):
        take_positions(x, slice(7, 9))
    for bad in (slice(0, 1, 0), slice(None, None, -1), slice(0.0, 1)):
        with pytest.raises(ValueError, match=r"^positions must be a slice of ints with a step >= 1, got slice"):
            take_positions(x, bad)
    assert take_positions(x, slice(-2, None)).shape == (2, 2, 3)
    attn = MultiHeadSelfAttention(3, 1).eval()  # query_positions go through the same check
    with pytest.raises(ValueError, match="positions must select at least one of the 5 positions"):
        attn(x, query_positions=slice(5, None))


def test_stacks_refuse_layers_of_different_widths_and_inputs_of_another_width():
    """A stack of layers of different widths, and an input of another width, dtype or type, are refused
    naming the widths (they failed inside LayerNorm: "Given normalized_shape=[4], expected input...")."""
    layer = lambda width: transformer_encoder(embed_dim=width, num_layers=1, num_heads=2, mlp_dim=8).layers[0]  # noqa: E731
    with pytest.raises(
        ValueError,
        match=r"^TransformerEncoder: the parts must share one width, got layers\[0\].attn_norm.normalized_shape 8, "
        r"layers\[1\].attn_norm.normalized_shape 4$",
    ):
        TransformerEncoder([layer(8), layer(4)])
    stack = transformer_encoder(embed_dim=8, num_layers=2, num_heads=2, mlp_dim=16)
    for x, got in (
        (torch.randn(2, 5, 4), r"torch.float32 of shape \(2, 5, 4\)"),
        (torch.ones(2, 5, 8, dtype=torch.long), r"torch.int64 of shape \(2, 5, 8\)"),
        (torch.randn(5, 8), r"torch.float32 of shape \(5, 8\)"),
        ([[0.0] * 8], "list"),
    ):
        with pytest.raises(ValueError, match=rf"^x must be a \(B, S, 8\) floating-point tensor, got {got}$"):
            stack(x)
        with pytest.raises(ValueError, match=rf"^x must be a \(B, S, 8\) floating-point tensor, got {got}$"):
            stack.layers[0](x)
    with pytest.raises(ValueError, match=r"^x must be a \(B, S, D\) floating-point tensor, got str$"):
        TransformerEncoder([])("x")  # (returned "x" as it was)
    assert stack(torch.randn(2, 5, 8)).last_hidden_state.shape == (2, 5, 8)


def test_attention_refuses_masks_on_another_device():
    """A mask on another device than x (here the meta device) gave values of 1e24-1e35, silently."""
    attn, x = MultiHeadSelfAttention(8, 2).eval(), torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="^key_padding_mask must be on x's device cpu, got meta$"):
        attn(x, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match="^attn_mask must be on x's device cpu, got meta$"):
        attn(x, attn_mask=torch.zeros(5, 5, dtype=torch.bool, device="meta"))


def test_activations_by_name():
    x = torch.linspace(-4, 4, 101)
    assert_close(activation("quick_gelu")(x), x * torch.sigmoid(1.702 * x))
    assert isinstance(activation("quick_gelu"), QuickGELU)
    assert_close(activation("gelu")(x), torch.nn.functional.gelu(x))
    assert_close(activation("gelu_tanh")(x), torch.nn.functional.gelu(x, approximate="tanh"))
    with pytest.raises(ValueError, match=r"activation must be one of .*got 'relu6'"):
        activation("relu6")
    with pytest.raises(ValueError, match="activation must be one of"):
        transformer_encoder(embed_dim=8, num_layers=1, num_heads=2, mlp_dim=8, activation="swish")


def test_transformer_encoder_builder_options():
    encoder = transformer_encoder(
        embed_dim=8,
        num_layers=2,
        num_heads=2,
        mlp_dim=12,
        norm_eps=1e-6,
        activation="quick_gelu",
        is_causal=True,
        bias=False,
    )
    layer = encoder.layers[1]
    assert layer.attn.is_causal and layer.attn.qkv.bias is None and layer.attn.out_proj.bias is None
    assert layer.mlp.fc1.bias is None and layer.mlp.fc2.bias is None and layer.attn_norm.bias is None
    assert not [name for name, _ in encoder.named_parameters() if name.endswith("bias")]  # bias-free throughout
    assert isinstance(layer.mlp.activation, QuickGELU) and layer.attn_norm.eps == 1e-6
    with pytest.raises(ValueError, match="transformer_encoder: num_layers must be >= 1, got 0"):
        transformer_encoder(embed_dim=8, num_layers=0, num_heads=2, mlp_dim=8)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(mlp_dim=0), ValueError, "transformer_encoder: mlp_dim must be >= 1, got 0"),  # was MLPs giving 0
        (dict(mlp_dim=-1), ValueError, "transformer_encoder: mlp_dim must be >= 1, got -1"),
        (dict(embed_dim=32.0), TypeError, "transformer_encoder: embed_dim must be an int, got float"),
        (dict(num_layers=2.5), TypeError, "transformer_encoder: num_layers must be an int, got float"),
        (dict(num_heads=3), ValueError, "transformer_encoder: embed_dim must be a multiple of num_heads = 3"),
        (dict(norm_eps=-1.0), ValueError, "transformer_encoder: norm_eps must be"),  # was NaN outputs
        (dict(dropout=1.5), ValueError, "transformer_encoder: dropout must be"),
        (dict(activation="relu"), ValueError, "transformer_encoder: activation must be one of"),
        # a truthy string or None was taken as it was: "false" built a causal stack, None one without biases
        (dict(is_causal="false"), TypeError, "transformer_encoder: is_causal must be a bool, got str 'false'"),
        (dict(bias=None), TypeError, "transformer_encoder: bias must be a bool, got NoneType None"),
        (dict(dropout=1.0), ValueError, r"transformer_encoder: dropout must be in \[0, 1\), got 1.0"),  # zeroed all
        (dict(attention_dropout=1), ValueError, r"transformer_encoder: attention_dropout must be in \[0, 1\), got 1"),
    ],
)
def test_transformer_encoder_names_a_bad_argument_before_building(change, error, match):
    with pytest.raises(error, match=match):
        transformer_encoder(**{**dict(embed_dim=32, num_layers=2, num_heads=4, mlp_dim=64), **change})


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: MLP(4, 8, activation="gelu"), TypeError, "activation must be an nn.Module or None, got str"),
        (
            lambda: MLP(4, 8, activation=nn.GELU),
            TypeError,
            "activation must be an nn.Module or None, got the class GELU",
        ),
        (lambda: PatchEmbedding(32, 16, 3, 8, norm="ln"), TypeError, "norm must be an nn.Module or None, got str"),
        (lambda: Linear(-1, 4), ValueError, "in_features must be >= 0, got -1"),
        (lambda: Linear(4, 2.0), TypeError, "out_features must be an int, got float"),
        # truthy strings and None were taken as they were ("no" kept the bias, made attention causal)
        (lambda: MultiHeadSelfAttention(8, 2, is_causal="no"), TypeError, "is_causal must be a bool, got str 'no'"),
        (lambda: MultiHeadSelfAttention(8, 2, bias=None), TypeError, "bias must be a bool, got NoneType None"),
        (lambda: MLP(8, 16, bias="false"), TypeError, "bias must be a bool, got str 'false'"),
        (lambda: PatchEmbedding(16, 8, 3, 8, conv_bias="no"), TypeError, "conv_bias must be a bool, got str 'no'"),
        (lambda: PatchEmbedding(16, 8, 3, 8, use_mask_token=1), TypeError, "use_mask_token must be a bool, got int 1"),
        # dropouts: a string failed inside nn.Dropout, NaN at the first training forward, 1 zeroed every output
        (lambda: MLP(8, 16, dropout="0.1"), TypeError, "dropout must be a float, got str"),
        (lambda: TokenEmbedding(10, 8, 4, dropout=float("nan")), ValueError, r"dropout must be in \[0, 1\), got nan"),
        (lambda: TextEmbedding(10, 8, 4, dropout=1.0), ValueError, r"dropout must be in \[0, 1\), got 1.0"),
        (lambda: PatchEmbedding(16, 8, 3, 8, dropout=-0.1), ValueError, r"dropout must be in \[0, 1\), got -0.1"),
        (lambda: MultiHeadSelfAttention(8, 2, dropout=True), TypeError, "dropout must be a float, got bool"),
        # a NaN or negative LayerNorm epsilon gave NaN outputs
        (lambda: TextEmbedding(10, 8, 4, norm_eps=float("nan")), ValueError, "norm_eps must be a positive number"),
        (lambda: TextEmbedding(10, 8, 4, norm_eps=-1.0), ValueError, "norm_eps must be a positive number, got -1.0"),
    ],
)
def test_layers_refuse_what_would_fail_only_when_called(build, error, match):
    with pytest.raises(error, match=match):  # was accepted, then "'str' object is not callable" in forward
        build()


def test_float64_pixels_embed_under_bf16_autocast_as_float32_ones_do():
    embed, images = PatchEmbedding(32, 8, 3, 12), torch.rand(2, 3, 32, 32, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_close(embed(images), embed(images.float()), atol=0, rtol=0)


def test_patch_embedding_without_conv_bias_and_with_a_pre_norm():
    torch.manual_seed(3)
    embed = PatchEmbedding(32, 8, 3, 12, conv_bias=False, norm=nn.LayerNorm(12))
    assert embed.proj.bias is None
    images = torch.randn(2, 3, 32, 32)
    patches = embed.proj(images).flatten(2).transpose(1, 2)
    raw = torch.cat([embed.cls_token.expand(2, -1, -1), patches], dim=1) + embed.pos_embed
    assert_close(embed(images), nn.functional.layer_norm(raw, (12,), embed.norm.weight, embed.norm.bias))
    assert "norm.weight" in embed.state_dict() and "proj.bias" not in embed.state_dict()
    # without a norm the state dict is what it always was (checkpoints keep loading)
    assert set(PatchEmbedding(32, 8, 3, 12).state_dict()) == {"proj.weight", "proj.bias", "cls_token", "pos_embed"}


def test_token_embedding_is_token_plus_position_only():
    torch.manual_seed(4)
    embed = TokenEmbedding(50, 8, 10)
    ids = torch.randint(0, 50, (2, 6))
    assert_close(embed(ids), embed.word_embed(ids) + embed.pos_embed.weight[:6])
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]] * 2)
    assert_close(embed(ids, position_ids=positions), embed.word_embed(ids) + embed.pos_embed(positions))
    assert set(embed.state_dict()) == {"word_embed.weight", "pos_embed.weight"}
    with pytest.raises(ValueError, match=r"length 11, more than the 10 learned positions \(max_seq_len\)"):
        embed(torch.zeros(1, 11, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 50\)"):
        embed(torch.tensor([[3, 50]]))
    with pytest.raises(TypeError, match="integer tensor"):
        embed(torch.zeros(1, 3))
    for bad in (-1, 10):
        with pytest.raises(ValueError, match=rf"position_ids must be in \[0, 10\) .*got values in \[{min(bad, 0)}, "):
            embed(ids, position_ids=torch.tensor([[0, 1, 2, 0, 1, bad]] * 2))
    # the range check holds in a whole compiled graph (it read Python ints before: no fullgraph)
    compiled = torch.compile(lambda i, p: embed(i, position_ids=p), fullgraph=True, backend="eager")
    assert_close(compiled(ids, positions), embed(ids, position_ids=positions))
    with pytest.raises(RuntimeError, match=r"position_ids must be in \[0, 10\) .*got values outside it"):
        compiled(ids, positions + 9)


def test_a_clip_style_text_tower_composes_without_wrappers_and_pools_per_row():
    torch.manual_seed(5)
    tower = TextEncoder(
        TokenEmbedding(40, 16, 12),
        transformer_encoder(
            embed_dim=16, num_layers=2, num_heads=2, mlp_dim=32, activation="quick_gelu", is_causal=True
        ),
        nn.LayerNorm(16),
    ).eval()
    ids = torch.tensor([[1, 5, 6, 39, 0, 0], [1, 7, 8, 9, 10, 39]])
    end = ids.argmax(dim=-1, keepdim=True)  # each row's end token (the largest id)
    full = tower(ids).last_hidden_state
    pooled = tower(ids, output_positions=end).last_hidden_state[:, 0]
    assert_close(pooled, full[torch.arange(2), end[:, 0]], atol=1e-5, rtol=1e-5)
    # causal: the padding after a row's end token cannot change its pooled feature
    changed = ids.clone()
    changed[0, 4:] = 17
    assert_close(tower(changed, output_positions=end).last_hidden_state[:, 0], pooled)


class _Scaled(nn.Module):
    """A user's own block with a raw parameter, initialised by its own reset_parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.empty(4))
        self.linear = nn.Linear(4, 4)

    def reset_parameters(self) -> None:
        nn.init.constant_(self.scale, 0.5)


def test_init_weights_is_generic():
    torch.manual_seed(6)
    model = nn.ModuleDict(
        {
            "vision": VisionEncoder(
                PatchEmbedding(16, 4, 3, 64, norm=nn.LayerNorm(64)),
                transformer_encoder(embed_dim=64, num_layers=1, num_heads=2, mlp_dim=256),
                nn.LayerNorm(64),
            ),
            "mine": _Scaled(),
        }
    )
    for p in model.parameters():
        nn.init.constant_(p, 7.0)
    init_weights(model, std=0.02)
    assert_close(model["mine"].scale, torch.full((4,), 0.5))
    assert not model["mine"].linear.bias.detach().any()
    fc1 = model["vision"].encoder.layers[0].mlp.fc1.weight.detach()
    assert abs(float(fc1.std()) - 0.02) < 0.002 and abs(float(fc1.mean())) < 0.002
    assert_close(model["vision"].embeddings.norm.weight, torch.ones(64))
    pos = model["vision"].embeddings.pos_embed.detach()
    assert abs(float(pos.std()) - 0.02) < 0.004
    init_weights(model, std=0.1)  # our modules take the std; a user's reset_parameters() without it still runs
    assert abs(float(model["vision"].embeddings.pos_embed.detach().std()) - 0.1) < 0.02
    assert abs(float(model["vision"].encoder.layers[0].mlp.fc1.weight.detach().std()) - 0.1) < 0.01
    assert_close(model["mine"].scale, torch.full((4,), 0.5))


def test_init_weights_covers_the_loss_and_torch_attention_and_names_what_it_cannot():
    from torchflava.modules.losses import ContrastiveLoss

    with torch.device("meta"):
        model = nn.ModuleDict({"loss": ContrastiveLoss(logit_scale_init=2.0), "mha": nn.MultiheadAttention(8, 2)})
    model.to_empty(device="cpu")
    for p in model.parameters():
        nn.init.constant_(p, 7.0)  # what to_empty may leave
    init_weights(model)
    assert float(model["loss"].logit_scale.detach()) == 2.0
    assert not model["mha"].in_proj_bias.detach().any() and float(model["mha"].in_proj_weight.detach().abs().max()) < 1
    model["raw"] = nn.Module()
    model["raw"].register_parameter("gain", nn.Parameter(torch.ones(3)))
    with pytest.raises(ValueError, match=r"expected a reset_parameters\(\) on the modules that own \['raw.gain'\]"):
        init_weights(model)
    assert float(model["loss"].logit_scale.detach()) == 2.0  # nothing changed before the error


def test_init_weights_runs_a_leaf_subclasss_own_reset_and_leaves_parameter_lists_to_their_owner():
    class LoRALinear(nn.Linear):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.lora_a, self.lora_b = nn.Parameter(torch.empty(2, 4)), nn.Parameter(torch.empty(3, 2))

        def reset_parameters(self) -> None:
            super().reset_parameters()
            if hasattr(self, "lora_a"):
                nn.init.normal_(self.lora_a, std=0.01)
                nn.init.zeros_(self.lora_b)

    class Gains(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gains = nn.ParameterList([nn.Parameter(torch.empty(3)) for _ in range(2)])

        def reset_parameters(self) -> None:
            for gain in self.gains:
                nn.init.ones_(gain)

    model = nn.Sequential(LoRALinear(4, 3), Gains())
    for p in model.parameters():
        nn.init.constant_(p, float("nan"))
    init_weights(model)
    assert not model[0].lora_b.detach().any() and model[0].lora_a.detach().isfinite().all()
    assert all(torch.equal(g.detach(), torch.ones(3)) for g in model[1].gains)


def test_init_weights_refuses_a_bad_std_or_model_before_changing_anything():
    """A negative or NaN std failed inside torch ("normal expects std >= 0.0") after some layers were reset."""
    model = MLP(4, 8)
    before = [p.clone() for p in model.parameters()]
    for std, match in (
        (-1, "^std must be a positive number, got -1$"),
        (float("nan"), "^std must be a positive number"),
    ):
        with pytest.raises(ValueError, match=match):
            init_weights(model, std=std)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(TypeError, match="^model must be an nn.Module, got NoneType$"):
        init_weights(None)


def test_sizes_beyond_memory_and_a_stack_that_is_no_sequence_are_refused_when_built():
    """An embedding table or position grid too large for the machine failed in torch's allocator; a
    stack given a number said "'int' object is not iterable"."""
    with pytest.raises(
        ValueError, match=r"^TokenEmbedding: vocab_size=100000000000, max_seq_len=4, embed_dim=8 makes 8e\+11 weights"
    ):
        TokenEmbedding(10**11, 8, 4)
    with pytest.raises(
        ValueError, match=r"^TextEmbedding: vocab_size=10, max_seq_len=100000000000, .* more than this machine's"
    ):
        TextEmbedding(10, 8, 10**11)
    with pytest.raises(ValueError, match=r"^PatchEmbedding: image_size=8000000, patch_size=8, embed_dim=768 makes"):
        PatchEmbedding(8 * 10**6, 8, 3, 768)
    with torch.device("meta"):  # built where no memory is taken: not checked
        assert TokenEmbedding(10**11, 8, 4).word_embed.weight.is_meta
    for layers, got in ((5, "int"), ("ab", "str"), (MLP(4, 8), "MLP")):
        with pytest.raises(TypeError, match=f"^layers must be a sequence of layer modules, got {got}$"):
            TransformerEncoder(layers)


def test_init_weights_leaves_a_padding_row_zero_under_a_tied_decoder():
    """A masked language model whose decoder shares the word table (as the README's language model does): the
    decoder, drawn after the embedding, wrote N(0, std) over the padding row the embedding had just zeroed, where
    TextEmbedding says the row starts at zero."""
    torch.manual_seed(0)
    embeddings = TextEmbedding(30, 16, 8, pad_token_id=2)
    decoder = nn.Linear(16, 30)
    decoder.weight = embeddings.word_embed.weight
    model = nn.ModuleDict({"embeddings": embeddings, "decoder": decoder})
    init_weights(model)
    table = embeddings.word_embed.weight.detach()
    assert decoder.weight is embeddings.word_embed.weight
    assert not table[2].any()
    assert table[[0, 1, *range(3, 30)]].all() and abs(float(table.std()) - 0.02) < 0.004
