"""VisionEncoder, TextEncoder and MultimodalEncoder, built small through the FLAVA builders."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from tests.helpers import TINY_FLAVA, padded_text
from torchflava.models.flava import flava_image_encoder, flava_multimodal_encoder, flava_text_encoder
from torchflava.modules.encoders import (
    CLS_POSITION,
    EncoderOutput,
    MultimodalEncoder,
    TextEncoder,
    VisionEncoder,
    transformer_encoder,
)
from torchflava.modules.layers import PatchEmbedding, Pooler, TokenEmbedding

T = TINY_FLAVA
IMAGE_TOKENS = 1 + (T["image_size"] // T["patch_size"]) ** 2  # 17


def image_encoder(**kwargs) -> VisionEncoder:
    return flava_image_encoder(
        embed_dim=T["image_embed_dim"],
        num_layers=T["image_num_layers"],
        num_heads=T["image_num_heads"],
        mlp_dim=T["image_mlp_dim"],
        image_size=T["image_size"],
        patch_size=T["patch_size"],
        **kwargs,
    ).eval()


def text_encoder(**kwargs) -> TextEncoder:
    return flava_text_encoder(
        embed_dim=T["text_embed_dim"],
        num_layers=T["text_num_layers"],
        num_heads=T["text_num_heads"],
        mlp_dim=T["text_mlp_dim"],
        vocab_size=T["vocab_size"],
        max_seq_len=T["max_seq_len"],
        **kwargs,
    ).eval()


def multimodal_encoder(**kwargs) -> MultimodalEncoder:
    return flava_multimodal_encoder(
        embed_dim=T["multimodal_embed_dim"],
        num_layers=T["multimodal_num_layers"],
        num_heads=T["multimodal_num_heads"],
        mlp_dim=T["multimodal_mlp_dim"],
        image_dim=T["image_embed_dim"],
        text_dim=T["text_embed_dim"],
        **kwargs,
    ).eval()


def randomise_norm(norm):
    with torch.no_grad():  # a non-identity final norm so "norm applied" is a real check
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()


def check_common(encoder, out: EncoderOutput, seq: int, width: int, batch: int = 2):
    assert isinstance(out, EncoderOutput)
    assert out.last_hidden_state.shape == (batch, seq, width)
    assert out.prenorm_last_hidden_state.shape == (batch, seq, width)
    assert_close(out.last_hidden_state, encoder.norm(out.prenorm_last_hidden_state), atol=0, rtol=0)
    assert not torch.allclose(out.last_hidden_state, out.prenorm_last_hidden_state, atol=1e-2)
    assert out.pooled_output.shape == (batch, width)
    assert_close(out.pooled_output, encoder.pooler(out.last_hidden_state), atol=0, rtol=0)
    assert out.hidden_states is None


def test_vision_encoder():
    encoder = image_encoder()
    randomise_norm(encoder.norm)
    images = torch.randn(2, 3, T["image_size"], T["image_size"])
    out = encoder(images)
    check_common(encoder, out, IMAGE_TOKENS, T["image_embed_dim"])
    full = encoder(images, return_hidden_states=True)
    assert len(full.hidden_states) == T["image_num_layers"] + 1
    assert_close(full.hidden_states[0], encoder.embeddings(images), atol=0, rtol=0)
    assert full.hidden_states[-1] is full.prenorm_last_hidden_state
    assert encoder(images, return_pooled=False).pooled_output is None


def test_vision_encoder_patch_mask():
    encoder = image_encoder()
    images = torch.randn(2, 3, T["image_size"], T["image_size"])
    mask = torch.zeros(2, IMAGE_TOKENS - 1, dtype=torch.bool)
    mask[:, :3] = True
    out = encoder(images, patch_mask=mask, return_hidden_states=True)
    assert_close(out.hidden_states[0], encoder.embeddings(images, patch_mask=mask), atol=0, rtol=0)
    assert not torch.allclose(out.last_hidden_state, encoder(images).last_hidden_state, atol=1e-4)
    assert image_encoder(use_mask_token=False).embeddings.mask_token is None


def test_text_encoder():
    encoder = text_encoder()
    randomise_norm(encoder.norm)
    ids, _ = padded_text(2, 7, T["vocab_size"], [7, 7])
    out = encoder(ids)
    check_common(encoder, out, 7, T["text_embed_dim"])
    full = encoder(ids, return_hidden_states=True)
    assert len(full.hidden_states) == T["text_num_layers"] + 1
    assert_close(full.hidden_states[0], encoder.embeddings(ids), atol=0, rtol=0)
    assert full.hidden_states[-1] is full.prenorm_last_hidden_state
    assert encoder(ids, return_pooled=False).pooled_output is None
    types = torch.ones_like(ids)
    assert not torch.allclose(encoder(ids, token_type_ids=types).last_hidden_state, out.last_hidden_state, atol=1e-4)


def test_text_encoder_honours_padding():
    encoder = text_encoder()
    ids, mask = padded_text(2, 9, T["vocab_size"], [5, 9])
    padding = mask == 0
    changed = ids.clone()
    changed[padding] = torch.randint(1, T["vocab_size"], (int(padding.sum()),))
    assert not torch.equal(changed, ids)
    out = encoder(ids, padding_mask=padding).last_hidden_state
    out_changed = encoder(changed, padding_mask=padding).last_hidden_state
    assert_close(out_changed[~padding], out[~padding])
    # Without the mask the padded tokens do leak into the real positions.
    unmasked = encoder(changed).last_hidden_state
    assert not torch.allclose(unmasked[0, :5], out[0, :5], atol=1e-4)


def multimodal_inputs(batch: int = 2, length: int = 7):
    image_states = torch.randn(batch, IMAGE_TOKENS, T["image_embed_dim"])
    text_states = torch.randn(batch, length, T["text_embed_dim"])
    return image_states, text_states


def test_multimodal_encoder():
    encoder = multimodal_encoder()
    randomise_norm(encoder.norm)
    image_states, text_states = multimodal_inputs()
    out = encoder(image_states, text_states)
    check_common(encoder, out, 1 + IMAGE_TOKENS + 7, T["multimodal_embed_dim"])
    full = encoder(image_states, text_states, return_hidden_states=True)
    assert len(full.hidden_states) == T["multimodal_num_layers"] + 1
    expected_input = torch.cat(
        [
            encoder.cls_token.expand(2, -1, -1),
            encoder.image_proj(image_states),
            encoder.text_proj(text_states),
        ],
        dim=1,
    )
    assert_close(full.hidden_states[0], expected_input, atol=0, rtol=0)
    assert full.hidden_states[-1] is full.prenorm_last_hidden_state
    assert encoder(image_states, text_states, return_pooled=False).pooled_output is None


def test_multimodal_encoder_honours_text_padding():
    encoder = multimodal_encoder()
    image_states, text_states = multimodal_inputs(length=9)
    _, mask = padded_text(2, 9, T["vocab_size"], [4, 9])
    padding = mask == 0
    changed = text_states.clone()
    changed[padding] = 10 * torch.randn(int(padding.sum()), T["text_embed_dim"])
    out = encoder(image_states, text_states, text_padding_mask=padding).last_hidden_state
    out_changed = encoder(image_states, changed, text_padding_mask=padding).last_hidden_state
    real = torch.cat([torch.ones(2, 1 + IMAGE_TOKENS, dtype=torch.bool), ~padding], dim=1)
    assert_close(out_changed[real], out[real])
    unmasked = encoder(image_states, changed).last_hidden_state
    assert not torch.allclose(unmasked[0, 0], out[0, 0], atol=1e-4)


def test_multimodal_encoder_batch_mismatch():
    image_states, _ = multimodal_inputs(batch=2)
    _, text_states = multimodal_inputs(batch=3)
    with pytest.raises(ValueError, match="image and text batch sizes differ: 2 images, 3 texts"):
        multimodal_encoder()(image_states, text_states)


@pytest.mark.parametrize("shape", [(2, 6), (3, 7), (2, 7, 1)])
def test_multimodal_encoder_wrong_padding_mask_shape(shape):
    image_states, text_states = multimodal_inputs()
    with pytest.raises(ValueError, match=r"text_padding_mask must have shape \(2, 7\)"):
        multimodal_encoder()(image_states, text_states, text_padding_mask=torch.zeros(shape, dtype=torch.bool))


def test_multimodal_encoder_refuses_states_it_cannot_project():
    """States of another width or rank, a list, or a mask that is no tensor failed inside torch (mat1 and mat2
    shapes, torch.cat, AttributeError)."""
    image_states, text_states = multimodal_inputs()  # widths 32 and 24
    encoder = multimodal_encoder().eval()
    for kwargs, match in (
        (dict(image_states=image_states[..., :24]), r"^image_states must be a \(B, S, 32\) floating-point tensor, got"),
        (
            dict(text_states=text_states[0]),
            r"^text_states must be a \(B, S, 24\) floating-point tensor, got torch.float32",
        ),
        (
            dict(image_states=image_states.tolist()),
            r"^image_states must be a \(B, S, 32\) floating-point tensor, got list$",
        ),
    ):
        with pytest.raises(ValueError, match=match):
            encoder(**{"image_states": image_states, "text_states": text_states, **kwargs})
    with pytest.raises(TypeError, match="^text_padding_mask must be a bool tensor \\(True = padding\\), got list$"):
        encoder(image_states, text_states, text_padding_mask=[[False] * 7] * 2)


def test_encoders_refuse_parts_of_different_widths_when_built():
    """Composed from modules, an encoder whose embedding, stack and norm disagree on the width is refused
    when built, naming each width, not in its first forward deep inside torch."""
    from torch import nn

    from torchflava.modules.encoders.builders import transformer_encoder
    from torchflava.modules.layers import Linear, PatchEmbedding, TokenEmbedding

    def stack(width):
        return transformer_encoder(embed_dim=width, num_layers=1, num_heads=2, mlp_dim=2 * width)

    with pytest.raises(
        ValueError, match=r"^VisionEncoder: the parts must share one width, got embeddings.embed_dim 8, "
    ):
        VisionEncoder(PatchEmbedding(16, 8, 3, 8), stack(12), nn.LayerNorm(12))
    with pytest.raises(ValueError, match=r"encoder.layers\[0\].attn.embed_dim 12, .*norm.normalized_shape 8$"):
        VisionEncoder(PatchEmbedding(16, 8, 3, 12), stack(12), nn.LayerNorm(8))
    with pytest.raises(ValueError, match=r"^TextEncoder: .* embeddings.embed_dim 16, encoder.layers\[0\]"):
        TextEncoder(TokenEmbedding(50, 16, 10), stack(8), nn.LayerNorm(8))
    with pytest.raises(TypeError, match="norm must be an nn.Module, got the class LayerNorm"):
        TextEncoder(TokenEmbedding(50, 8, 10), stack(8), nn.LayerNorm)
    with pytest.raises(
        ValueError, match=r"^MultimodalEncoder: .*embed_dim 8, image_proj.out_features 8, text_proj.out_features 6"
    ):
        MultimodalEncoder(Linear(12, 8), Linear(10, 6), stack(8), nn.LayerNorm(8), embed_dim=8)
    with pytest.raises(ValueError, match=r"^MultimodalEncoder: the parts must share one width, got embed_dim 16, "):
        MultimodalEncoder(Linear(12, 8), Linear(10, 8), stack(8), nn.LayerNorm(8), embed_dim=16)
    # a pooler or a patch embedding's pre-norm of another width failed in the first forward
    from torchflava.modules.layers import Pooler

    with pytest.raises(ValueError, match=r"^TextEncoder: .*norm.normalized_shape 8, pooler.embed_dim 6$"):
        TextEncoder(TokenEmbedding(50, 8, 10), stack(8), nn.LayerNorm(8), Pooler(6))
    with pytest.raises(ValueError, match=r"^PatchEmbedding: the parts must share one width, got embed_dim 8, norm"):
        PatchEmbedding(16, 8, 3, 8, norm=nn.LayerNorm(4))
    with pytest.raises(TypeError, match="^pooler must be an nn.Module or None, got str$"):
        VisionEncoder(PatchEmbedding(16, 8, 3, 8), stack(8), nn.LayerNorm(8), "cls")
    # consistent parts build and run; a stack with no layers and parts that tell no width are trusted
    encoder = TextEncoder(TokenEmbedding(50, 8, 10), stack(8), nn.LayerNorm(8))
    assert encoder(torch.randint(0, 50, (2, 5))).last_hidden_state.shape == (2, 5, 8)
    from torchflava.modules.layers import TransformerEncoder

    VisionEncoder(PatchEmbedding(16, 8, 3, 8), TransformerEncoder([]), nn.Identity())


def test_text_encoder_names_its_padding_mask_and_refuses_an_attention_mask_given_as_one():
    """A Hugging Face attention_mask (1 = token) given as ``padding_mask``: as integers the error named the
    attention's ``key_padding_mask``; as bools it ran, every unpadded row then all padding, its tokens
    encoded without attention to any (a batch without padding: every row)."""
    encoder = text_encoder()
    ids, mask = padded_text(2, 9, T["vocab_size"], [5, 9])
    with pytest.raises(
        TypeError,
        match=r"^padding_mask must be a bool tensor \(True = padding\), got torch.int64; a Hugging Face "
        r"attention_mask \(1 = token\) is its inverse: pass attention_mask == 0$",
    ):
        encoder(ids, padding_mask=mask)
    with pytest.raises(
        ValueError, match=r"^padding_mask \(True = padding\) must leave a token in every row, got rows \[1\]"
    ):
        encoder(ids, padding_mask=mask.bool())
    with pytest.raises(ValueError, match=r"^padding_mask must have shape \(2, 9\), got \(2, 8\)$"):
        encoder(ids, padding_mask=torch.zeros(2, 8, dtype=torch.bool))
    assert_close(
        encoder(ids, padding_mask=mask == 0).last_hidden_state[0, :5], encoder(ids[:1, :5]).last_hidden_state[0]
    )


def test_multimodal_encoder_refuses_a_text_row_all_padding():
    image_states, text_states = multimodal_inputs()
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[0] = True  # (an attention_mask given as the padding mask: the unpadded row all True)
    with pytest.raises(
        ValueError, match=r"^text_padding_mask \(True = padding\) must leave a token in every row, got rows \[0\]"
    ):
        multimodal_encoder()(image_states, text_states, text_padding_mask=padding)


def test_a_vision_encoder_without_a_cls_token_pools_its_patches():
    torch.manual_seed(0)
    stack = transformer_encoder(embed_dim=16, num_layers=2, num_heads=2, mlp_dim=32)
    encoder = VisionEncoder(PatchEmbedding(16, 4, 3, 16, use_cls_token=False), stack, nn.LayerNorm(16)).eval()
    images = torch.randn(2, 3, 16, 16)
    out = encoder(images).last_hidden_state
    assert out.shape == (2, 16, 16)
    assert_close(out, encoder.norm(stack(encoder.embeddings(images)).last_hidden_state))
    assert_close(encoder(images, output_positions=slice(0, 4)).last_hidden_state, out[:, :4])
    pooled = out.mean(dim=1)  # mean pooling over the patches, a gradient reaching every parameter
    pooled.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


@pytest.mark.parametrize(
    "stack",
    [
        lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, batch_first=True), 2),
        lambda: nn.TransformerEncoderLayer(16, 2, batch_first=True),
        lambda: transformer_encoder(embed_dim=16, num_layers=1, num_heads=2, mlp_dim=32).layers[0],
        lambda: nn.Sequential(*transformer_encoder(embed_dim=16, num_layers=2, num_heads=2, mlp_dim=32).layers),
    ],
)
def test_towers_refuse_an_encoder_that_is_no_stack_when_built(stack):
    """Before, these built and failed in the first forward in torch's words ("TransformerEncoder.forward()
    got an unexpected keyword argument 'key_padding_mask'", naming torch's class beside ours)."""
    builds = {
        "TextEncoder": lambda: TextEncoder(TokenEmbedding(10, 16, 8), stack(), nn.LayerNorm(16)),
        "VisionEncoder": lambda: VisionEncoder(PatchEmbedding(8, 4, 3, 16), stack(), nn.LayerNorm(16)),
        "MultimodalEncoder": lambda: MultimodalEncoder(
            nn.Linear(8, 16), nn.Linear(8, 16), stack(), nn.LayerNorm(16), 16
        ),
    }
    for owner, build in builds.items():
        with pytest.raises(TypeError, match=rf"^{owner}: encoder \([\w.]+\) must be a stack whose forward"):
            build()


def test_a_vision_encoder_without_a_cls_token_refuses_what_would_read_the_first_patch_as_one():
    """Before, both quietly gave the first patch's encoding where a CLS encoding was asked for."""
    torch.manual_seed(0)
    stack = transformer_encoder(embed_dim=16, num_layers=1, num_heads=2, mlp_dim=32)
    patches = PatchEmbedding(16, 4, 3, 16, use_cls_token=False)
    with pytest.raises(ValueError, match=r"^VisionEncoder: pooler \(Pooler\) reads the first token, and embeddings"):
        VisionEncoder(patches, stack, nn.LayerNorm(16), Pooler(16))
    encoder = VisionEncoder(patches, stack, nn.LayerNorm(16)).eval()
    images = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"^output_positions is CLS_POSITION, but this VisionEncoder's embeddings"):
        encoder(images, output_positions=CLS_POSITION)
    # the first patch asked for as such, and a CLS embedding's CLS_POSITION, still select position 0
    first = encoder(images).last_hidden_state[:, :1]
    assert_close(encoder(images, output_positions=slice(0, 1)).last_hidden_state, first)
    with_cls = VisionEncoder(PatchEmbedding(16, 4, 3, 16), stack, nn.LayerNorm(16), Pooler(16)).eval()
    out = with_cls(images, output_positions=CLS_POSITION)
    assert out.last_hidden_state.shape == (2, 1, 16)
    assert_close(out.last_hidden_state, with_cls(images).last_hidden_state[:, :1])


def test_a_bf16_multimodal_encoder_takes_fp32_tower_states():
    """fp32 towers' states into a bf16 fusion failed inside torch (mat1 and mat2 must have the same dtype);
    they are now cast to the projections' dtype, as a patch embedding casts its pixels."""
    image_states, text_states = multimodal_inputs()
    encoder = multimodal_encoder().to(torch.bfloat16)
    out = encoder(image_states, text_states).last_hidden_state
    assert out.dtype == torch.bfloat16
    expected = encoder(image_states.bfloat16(), text_states.bfloat16()).last_hidden_state
    assert_close(out, expected, atol=0, rtol=0)


def test_multimodal_encoder_overrides_the_stacks_checkpointing_for_one_call():
    """Vision and text towers took checkpoint_activations for one call; the multimodal encoder raised
    TypeError (unexpected keyword argument)."""
    image_states, text_states = multimodal_inputs()
    encoder = multimodal_encoder().train()
    encoder.encoder.checkpoint_activations = "full"
    calls = []
    encoder.encoder.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    for override, forwards in ((None, 2), ("none", 1), (False, 1)):  # full: the layer runs again in backward
        calls.clear()
        kwargs = {} if override is None else {"checkpoint_activations": override}
        encoder(image_states, text_states, **kwargs).last_hidden_state.sum().backward()
        assert len(calls) == forwards, override
    with pytest.raises(ValueError, match=r"checkpoint_activations must be a bool or one of"):
        encoder(image_states, text_states, checkpoint_activations="some")


def test_a_causal_text_encoder_refuses_what_would_read_its_first_token_as_the_sentence():
    """Before, a Pooler over a causal stack, or CLS_POSITION, quietly gave the first token's encoding, which
    has seen only itself (the same for every caption that starts alike)."""
    torch.manual_seed(0)
    stack = transformer_encoder(embed_dim=16, num_layers=1, num_heads=2, mlp_dim=32, is_causal=True)
    with pytest.raises(ValueError, match=r"^TextEncoder: pooler \(Pooler\) reads the first token, and the stack's"):
        TextEncoder(TokenEmbedding(50, 16, 8), stack, nn.LayerNorm(16), Pooler(16))
    encoder = TextEncoder(TokenEmbedding(50, 16, 8), stack, nn.LayerNorm(16)).eval()
    ids = torch.tensor([[3, 4, 5, 49], [3, 7, 49, 0]])
    with pytest.raises(ValueError, match=r"^output_positions is CLS_POSITION, but this TextEncoder's attention is"):
        encoder(ids, output_positions=CLS_POSITION)
    end = ids.argmax(dim=-1, keepdim=True)  # each row's end token: what a causal tower is read at
    full = encoder(ids).last_hidden_state
    assert_close(encoder(ids, output_positions=end).last_hidden_state[:, 0], full[torch.arange(2), end[:, 0]])
    # a bidirectional stack keeps its Pooler and CLS_POSITION
    bert = TextEncoder(
        TokenEmbedding(50, 16, 8),
        transformer_encoder(embed_dim=16, num_layers=1, num_heads=2, mlp_dim=32),
        nn.LayerNorm(16),
        Pooler(16),
    ).eval()
    assert_close(bert(ids, output_positions=CLS_POSITION).last_hidden_state, bert(ids).last_hidden_state[:, :1])


def test_a_text_encoder_reads_whether_its_stack_is_causal_once_when_built(monkeypatch):
    """The CLS_POSITION check walked every module of the stack in each forward that asked for the CLS
    position (FLAVA's text and classification paths, packing's encode): ~0.4 ms a call for a 12-layer
    stack, as much as a small GPU forward. It is read when the tower is built."""
    import torchflava.modules.encoders.text_encoder as text_encoder_module

    walks = []
    is_causal = text_encoder_module._is_causal
    monkeypatch.setattr(text_encoder_module, "_is_causal", lambda encoder: walks.append(1) or is_causal(encoder))
    stack = transformer_encoder(embed_dim=16, num_layers=2, num_heads=2, mlp_dim=32)
    encoder = TextEncoder(TokenEmbedding(50, 16, 8), stack, nn.LayerNorm(16)).eval()
    built = len(walks)  # (1: when built)
    ids = torch.tensor([[3, 4, 5, 49], [3, 7, 49, 0]])
    for _ in range(3):
        assert_close(
            encoder(ids, output_positions=CLS_POSITION).last_hidden_state, encoder(ids).last_hidden_state[:, :1]
        )
    assert built == len(walks) == 1  # none in the forwards


def test_multimodal_encoder_names_a_projection_that_does_not_reach_its_width():
    """An nn.Identity over a tower of another width, or a Sequential ending in another width, failed in
    torch.cat (sizes of tensors must match except in dimension 1)."""
    stack = transformer_encoder(embed_dim=48, num_layers=1, num_heads=4, mlp_dim=96)
    for image_proj, got in (
        (nn.Identity(), r"\(2, 5, 64\)"),
        (nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 40)), r"\(2, 5, 40\)"),
    ):
        encoder = MultimodalEncoder(image_proj, nn.Linear(32, 48), stack, nn.LayerNorm(48), 48)
        with pytest.raises(ValueError, match=rf"^image_proj\(image_states\) must be a \(B, S, 48\) .*{got}"):
            encoder(torch.randn(2, 5, 64), torch.randn(2, 3, 32))
    identity = MultimodalEncoder(nn.Identity(), nn.Linear(32, 48), stack, nn.LayerNorm(48), 48).eval()
    image, text = torch.randn(2, 5, 48), torch.randn(2, 3, 32)
    out = identity(image, text, return_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 9, 48)
    assert_close(out.hidden_states[0][:, 1:6], image, atol=0, rtol=0)  # the image states as they are


@pytest.mark.parametrize("flag", ["return_hidden_states", "return_pooled"])
def test_encoder_flags_must_be_bools(flag):
    # "no" is truthy: the pooler ran, or every layer's output was kept, silently
    image, text = torch.randn(2, 3, T["image_size"], T["image_size"]), torch.randint(0, T["vocab_size"], (2, 5))
    states = (torch.randn(2, 3, T["image_embed_dim"]), torch.randn(2, 5, T["text_embed_dim"]))
    for encoder, inputs in ((image_encoder(), (image,)), (text_encoder(), (text,)), (multimodal_encoder(), states)):
        with pytest.raises(TypeError, match=rf"^{flag} must be a bool, got str 'no'$"):
            encoder(*inputs, **{flag: "no"})
        assert encoder(*inputs, **{flag: False}).last_hidden_state.shape[0] == 2


def test_multimodal_states_on_another_device_are_refused_naming_them():
    # (torch's "Tensor on device cpu is not on the expected device meta!" named neither)
    image, text = torch.randn(2, 3, T["image_embed_dim"]), torch.randn(2, 5, T["text_embed_dim"])
    with pytest.raises(ValueError, match=r"^image_states must be on the model's device cpu, got meta$"):
        multimodal_encoder()(image.to("meta"), text)
    with pytest.raises(ValueError, match=r"^text_states must be on the model's device cpu, got meta$"):
        multimodal_encoder()(image, text.to("meta"))


def test_a_padding_mask_on_another_device_than_the_text_is_refused_under_the_name_it_was_given():
    # (the attention refused it as key_padding_mask, an argument the caller never gave)
    ids, mask = padded_text(2, 9, T["vocab_size"], [9, 5])
    with pytest.raises(ValueError, match=r"^padding_mask must be on input_ids' device cpu, got meta$"):
        text_encoder()(ids, padding_mask=(mask == 0).to("meta"))
    image_states, text_states = multimodal_inputs()
    padding = torch.zeros(2, 7, dtype=torch.bool, device="meta")
    with pytest.raises(ValueError, match=r"^text_padding_mask must be on text_states' device cpu, got meta$"):
        multimodal_encoder()(image_states, text_states, text_padding_mask=padding)
    with torch.device("meta"):
        encoder = text_encoder()
    out = encoder(ids.to("meta"), padding_mask=(mask == 0).to("meta"))  # all on meta: shapes only
    assert out.last_hidden_state.shape == (2, 9, T["text_embed_dim"]) and out.last_hidden_state.is_meta


def test_per_sample_gradients_of_a_text_encoder_under_vmap_with_its_checks_kept():
    """torch.func.vmap over the rows of a padded text batch (per-sample gradients, as for DP-SGD): each row's
    gradients are its own backward's, and out-of-range ids or a row all padding are still refused, naming
    the argument. The value checks failed inside torch ("data-dependent control flow") on every call."""
    from torch.func import functional_call, grad, vmap

    encoder = text_encoder().train()
    ids, mask = padded_text(3, 7, T["vocab_size"], [7, 4, 2])
    padding = mask == 0
    params = {name: p.detach() for name, p in encoder.named_parameters()}

    def loss(params, row, row_padding):
        out = functional_call(encoder, params, (row[None],), {"padding_mask": row_padding[None]})
        return out.pooled_output.square().sum()

    per_row = vmap(grad(loss), in_dims=(None, 0, 0))(params, ids, padding)
    for row in (1, 2):
        encoder.zero_grad()
        loss(dict(encoder.named_parameters()), ids[row], padding[row]).backward()
        for name, p in encoder.named_parameters():
            assert_close(per_row[name][row], p.grad, atol=1e-5, rtol=1e-4)
    encode = vmap(lambda row, row_padding: encoder(row[None], padding_mask=row_padding[None]).last_hidden_state)
    bad_ids = ids.clone()
    bad_ids[1, 0] = T["vocab_size"]
    with pytest.raises(ValueError, match=rf"^input_ids must be in \[0, {T['vocab_size']}\) .*got values outside it$"):
        encode(bad_ids, padding)
    all_padding = padding.clone()
    all_padding[2] = True
    with pytest.raises(ValueError, match="^padding_mask .* must leave a token in every row, got a row all padding$"):
        encode(ids, all_padding)


def test_a_causal_text_tower_reads_each_rows_end_token_under_vmap():
    """Per-row output_positions (each row's end token) under torch.func.vmap: the batch's values, and an
    index past the text still refused naming positions (its range check failed inside torch)."""
    from torch.func import vmap

    tower = TextEncoder(
        TokenEmbedding(vocab_size=30, embed_dim=12, max_seq_len=10),
        transformer_encoder(embed_dim=12, num_layers=2, num_heads=3, mlp_dim=20, is_causal=True),
        nn.LayerNorm(12),
    ).eval()
    ids, end = torch.randint(1, 30, (3, 10), generator=torch.Generator().manual_seed(0)), torch.tensor([[9], [4], [2]])
    encode = vmap(lambda row, row_end: tower(row[None], output_positions=row_end[None]).last_hidden_state[0])
    assert_close(encode(ids, end), tower(ids, output_positions=end).last_hidden_state, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"^positions must be indices in \[-10, 10\), got some outside it$"):
        encode(ids, end + 3)


def test_multimodal_encoder_takes_an_attention_mask_over_the_fused_sequence():
    """A prefix language model (a captioner: text causal and reading the image, the image not reading the text)
    is a mask over the fused sequence. The stack took one; the multimodal encoder did not pass it on
    (``forward() got an unexpected keyword argument 'attn_mask'``), so such a model needed a class of its own."""
    torch.manual_seed(0)
    encoder = multimodal_encoder()
    image_states, text_states = multimodal_inputs(length=5)
    s, prefix = 1 + IMAGE_TOKENS + 5, 1 + IMAGE_TOKENS
    blocked = torch.ones(s, s, dtype=torch.bool).triu(1)  # causal over the text ...
    blocked[:prefix, :prefix] = False  # ... CLS_M and the image reading one another
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    out = encoder(image_states, text_states, text_padding_mask=padding, attn_mask=blocked).last_hidden_state
    projected = torch.cat(
        [encoder.cls_token.expand(2, -1, -1), encoder.image_proj(image_states), encoder.text_proj(text_states)], 1
    )
    keys = torch.cat([torch.zeros(2, prefix, dtype=torch.bool), padding], 1)
    stack = encoder.encoder(projected, key_padding_mask=keys, attn_mask=blocked).last_hidden_state
    assert_close(out, encoder.norm(stack), atol=0, rtol=0)
    # a later word changes neither the image's encoding nor an earlier word's
    changed = text_states.clone()
    changed[:, 3] += 5
    again = encoder(image_states, changed, text_padding_mask=padding, attn_mask=blocked.expand(2, s, s))
    assert_close(again.last_hidden_state[:, : prefix + 3], out[:, : prefix + 3], atol=1e-6, rtol=0)
    assert not torch.allclose(again.last_hidden_state[0, prefix + 4], out[0, prefix + 4], atol=1e-3)
    # refused before any work, naming the fused length
    for mask, error, message in (
        (blocked[:-1, :-1], ValueError, rf"^attn_mask must have shape \({s}, {s}\) or \(2, {s}, {s}\) over the fused"),
        (blocked.int(), TypeError, r"^attn_mask must be a bool tensor \(True = blocked\), got torch.int32$"),
        (blocked.to("meta"), ValueError, r"^attn_mask must be on the states' device cpu, got meta$"),
    ):
        with pytest.raises(error, match=message):
            encoder(image_states, text_states, attn_mask=mask)


def test_a_causal_multimodal_encoder_refuses_what_would_read_its_cls_as_the_pair():
    """Before, a Pooler over a causal fusion stack, or CLS_POSITION, quietly gave CLS_M's encoding, which has
    seen only itself: the same pooled output for every image-text pair (as the text tower's first token was)."""
    torch.manual_seed(0)
    causal = transformer_encoder(embed_dim=16, num_layers=1, num_heads=2, mlp_dim=32, is_causal=True)
    with pytest.raises(ValueError, match=r"^MultimodalEncoder: pooler \(Pooler\) reads CLS_M, the first token, and"):
        MultimodalEncoder(nn.Linear(8, 16), nn.Linear(8, 16), causal, nn.LayerNorm(16), 16, Pooler(16))
    encoder = MultimodalEncoder(nn.Linear(8, 16), nn.Linear(8, 16), causal, nn.LayerNorm(16), 16).eval()
    image, text = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    first = encoder(image, text).last_hidden_state[:, 0]
    assert_close(first[0], first[1], atol=0, rtol=0)  # what it would have read: one value for both pairs
    with pytest.raises(ValueError, match=r"^MultimodalEncoder: output_positions is CLS_POSITION: it reads CLS_M"):
        encoder(image, text, output_positions=CLS_POSITION)
    # a bidirectional stack keeps its Pooler and CLS_POSITION
    bidirectional = transformer_encoder(embed_dim=16, num_layers=1, num_heads=2, mlp_dim=32)
    fused = MultimodalEncoder(nn.Linear(8, 16), nn.Linear(8, 16), bidirectional, nn.LayerNorm(16), 16, Pooler(16))
    out = fused.eval()(image, text, output_positions=CLS_POSITION)
    assert_close(out.last_hidden_state, fused(image, text).last_hidden_state[:, :1])


def test_pooling_an_output_restricted_by_a_mask_needs_the_first_position_in_every_row():
    """A (B, S) bool output_positions leaves the positions it does not select unencoded (zeros before the final
    norm): a pooler reading position 0 where a row leaves it out pooled the norm of zeros, a wrong feature given
    without a word. Refused naming the rows; selected in every row, the pooled output is the full pass's."""
    ids, padding = padded_text(2, 6, T["vocab_size"], lengths=[6, 4])
    image_states, text_states = multimodal_inputs()
    towers = {
        "image": (image_encoder(), (torch.randn(2, 3, T["image_size"], T["image_size"]),), {}, IMAGE_TOKENS),
        "text": (text_encoder(), (ids,), {"padding_mask": padding == 0}, 6),
        "multimodal": (multimodal_encoder(), (image_states, text_states), {}, 1 + IMAGE_TOKENS + 7),
    }
    for name, (encoder, args, kwargs, seq) in towers.items():
        assert encoder.pooler is not None, name
        full = encoder(*args, **kwargs).pooled_output
        mask = torch.zeros(2, seq, dtype=torch.bool)
        mask[0, 0] = mask[1, 2] = True  # row 1 selects another position only
        with pytest.raises(ValueError, match=r"^output_positions as a bool mask leaves position 0, which the pooler"):
            encoder(*args, output_positions=mask, **kwargs)
        out = encoder(*args, output_positions=mask, return_pooled=False, **kwargs)  # asked without pooling: served
        assert out.pooled_output is None and out.last_hidden_state.shape[:2] == (2, seq), name
        mask[1, 0] = True
        assert_close(encoder(*args, output_positions=mask, **kwargs).pooled_output, full, atol=1e-6, rtol=1e-5)


def test_a_compiled_encoder_pooling_an_output_restricted_by_a_mask_still_refuses_an_unselected_first_position():
    """Compiled (fullgraph), the check was skipped: the pooler read the final norm of zeros in row 1, the same wrong
    feature without a word that eager refuses. The graph keeps it as an assertion (RuntimeError, a static message)
    and still pools a mask that selects position 0 in every row as eager does."""
    torch._dynamo.reset()
    encoder = text_encoder()
    ids, padding = padded_text(2, 6, T["vocab_size"], lengths=[6, 4])
    compiled = torch.compile(
        lambda m: encoder(ids, padding_mask=padding == 0, output_positions=m).pooled_output,
        fullgraph=True,
        backend="eager",
    )
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 0] = mask[1, 2] = True
    with torch.no_grad(), pytest.raises(RuntimeError, match="output_positions as a bool mask leaves position 0"):
        compiled(mask)
    mask[1, 0] = True
    with torch.no_grad():
        assert_close(compiled(mask), encoder(ids, padding_mask=padding == 0).pooled_output, atol=1e-6, rtol=1e-5)
