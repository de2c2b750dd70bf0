"""torch.compile: FLAVA's and CLIP's encoders and forward compile whole (fullgraph) and agree with eager."""

import warnings

import pytest
import torch
from torch.testing import assert_close

from tests.helpers import TINY_FLAVA
from tests.models.clip.test_convert_weights import SMALL, captions
from torchflava.models import clip_model, flava_model

EOS = 97


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them as traced."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


@pytest.fixture(scope="module")
def flava():
    torch.manual_seed(0)
    return flava_model(**TINY_FLAVA).eval()


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model = clip_model(**SMALL, eos_token_id=EOS)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # non-trivial biases and norms
    return model.eval()


def _flava_batch(lengths: list[int], width: int):
    ids = torch.randint(5, TINY_FLAVA["vocab_size"], (len(lengths), width))
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).long()
    return ids, mask


def test_flava_encoders_and_forward_compile_whole_and_match_eager(flava):
    torch._dynamo.reset()
    side = TINY_FLAVA["image_size"]
    images = torch.randn(3, 3, side, side)
    ids, mask = _flava_batch([9, 4, 7], 9)  # padded: eager runs it packed, the compiled graph padded
    with torch.no_grad():  # the encoders whole through AOT autograd; inductor's code for them runs in forward's
        assert_close(
            torch.compile(flava.encode_image, fullgraph=True, backend="aot_eager")(images),
            flava.encode_image(images),
            atol=1e-4,
            rtol=0,
        )
        assert_close(
            torch.compile(flava.encode_text, fullgraph=True, backend="aot_eager")(ids, mask),
            flava.encode_text(ids, mask),
            atol=1e-4,
            rtol=0,
        )
        compiled = torch.compile(flava, fullgraph=True)(images, ids, text_attention_mask=mask)
        eager = flava(images, ids, text_attention_mask=mask)
    for name in ("image_features", "text_features", "multimodal_embeddings", "multimodal_pooled"):
        assert_close(getattr(compiled, name), getattr(eager, name), atol=1e-4, rtol=0, msg=name)


def test_clip_encoders_and_forward_compile_whole_and_match_eager(clip):
    torch._dynamo.reset()
    images = torch.randn(2, 3, SMALL["image_size"], SMALL["image_size"])
    ids, mask = captions([6, 11], 16, vocab=99, bos=96, eos=EOS)
    with torch.no_grad():  # as FLAVA's: the encoders whole through AOT autograd, inductor in forward
        assert_close(
            torch.compile(clip.encode_image, fullgraph=True, backend="aot_eager")(images),
            clip.encode_image(images),
            atol=1e-4,
            rtol=0,
        )
        assert_close(
            torch.compile(clip.encode_text, fullgraph=True, backend="aot_eager")(ids, mask),
            clip.encode_text(ids, mask),
            atol=1e-4,
            rtol=0,
        )
        compiled, eager = torch.compile(clip, fullgraph=True)(images, ids, mask), clip(images, ids, mask)
    assert_close(compiled.image_features, eager.image_features, atol=1e-4, rtol=0)
    assert_close(compiled.text_features, eager.text_features, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["flava", "clip"])
def test_text_of_varying_length_compiles_at_most_twice(family, flava, clip):
    torch._dynamo.reset()
    backend = CountingBackend()
    model = flava if family == "flava" else clip
    encode = torch.compile(model.encode_text, fullgraph=True, backend=backend)
    for width in (7, 9, 12, 14, 16):
        if family == "flava":
            ids, mask = _flava_batch([width, width - 2, 3], width)
        else:
            ids, mask = captions([width, width - 2, 3], width, vocab=99, bos=96, eos=EOS)
        with torch.no_grad():
            assert_close(encode(ids, mask), model.encode_text(ids, mask), atol=1e-5, rtol=0)
    assert backend.graphs == 2  # the first width, then one graph dynamic in the length


def test_value_checks_hold_inside_compiled_graphs(flava, clip):
    torch._dynamo.reset()
    ids, mask = _flava_batch([5, 3], 5)
    encode = torch.compile(flava.encode_text, fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError, match=r"text must be in \[0, 99\) \(the vocabulary size\), got values outside it"):
        encode(ids + 200, mask)
    for bad in (mask * 0, mask * 2):  # a row without a token; a value other than 0 and 1
        with pytest.raises(
            RuntimeError, match="must hold 1 \\(token\\) and 0 \\(padding\\) only, with a token in every row"
        ):
            encode(ids, bad)
    ids, mask = captions([6, 4], 8, vocab=99, bos=96, eos=EOS)
    lacking = ids.clone()
    lacking[1, 3] = 5
    encode = torch.compile(clip.encode_text, fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError, match="expected the end token 97 in every row, a row lacks it"):
        encode(lacking, mask)
    cut = mask.clone()
    cut[0, 5] = 0
    with pytest.raises(RuntimeError, match="expected 1 at every row's end token, got 0"):
        encode(ids, cut)


@pytest.mark.parametrize("family", ["flava", "clip"])
def test_traced_encode_text_runs_the_padded_batch_and_serves_other_lengths(family, flava, clip):
    # Eager runs a padded batch packed, with packs laid out by its lengths; a trace would have fixed
    # the first batch's layout and scattered every later batch by it (0.69 off on CLIP).
    model = flava if family == "flava" else clip
    if family == "flava":
        (ids_a, mask_a), (ids_b, mask_b) = _flava_batch([9, 4, 7], 9), _flava_batch([3, 9, 5], 9)
    else:
        ids_a, mask_a = captions([9, 4, 7], 9, vocab=99, bos=96, eos=EOS)
        ids_b, mask_b = captions([3, 9, 5], 9, vocab=99, bos=96, eos=EOS)
    with torch.no_grad():
        with warnings.catch_warnings():  # torch.jit.trace is deprecated, still used to export
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace_module(model, {"encode_text": (ids_a, mask_a)}, check_trace=False)
        for ids, mask in ((ids_a, mask_a), (ids_b, mask_b)):
            assert_close(traced.encode_text(ids, mask), model.encode_text(ids, mask), atol=1e-5, rtol=0)
