"""meta_device: models built on the meta device with their initialisers' fills skipped, as shapes only,
and without importing torch._dynamo (the plain context's Python fill kernels import it: ~1-2 s of a
command's start)."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from tests.helpers import TINY_FLAVA
from torchflava.models import clip_model, flava_model
from torchflava.utils.meta import meta_device

TINY_CLIP = dict(
    embed_dim=16,
    image_size=32,
    patch_size=8,
    vision_width=32,
    vision_layers=1,
    vision_heads=2,
    vision_mlp_dim=64,
    context_length=24,
    text_width=24,
    text_layers=1,
    text_heads=2,
    text_mlp_dim=40,
    vocab_size=100,
)

# A fresh process: which of its steps imported torch._dynamo (the test process has it imported already).
CHILD = """
import json, sys, torch
from safetensors.torch import save_file
from torchflava.models import clip_model, flava_model
from torchflava.utils.meta import meta_device
clip, flava = json.loads(sys.argv[1]), json.loads(sys.argv[2])
steps = {}
with meta_device():
    clip_model(**clip), flava_model(**flava)
steps["meta_device builds"] = "torch._dynamo" in sys.modules
path = sys.argv[3]
save_file({k: v.contiguous() for k, v in clip_model(**clip).state_dict().items()}, path)
steps["built on the CPU"] = "torch._dynamo" in sys.modules
loaded = clip_model(**clip, pretrained=path)
steps["clip_model(pretrained=file)"] = "torch._dynamo" in sys.modules
with torch.device("meta"):
    torch.nn.init.normal_(torch.empty(3))
steps["torch.device('meta')"] = "torch._dynamo" in sys.modules
print(json.dumps(steps))
"""


def test_a_fresh_process_builds_and_loads_models_without_importing_dynamo(tmp_path):
    args = [sys.executable, "-c", CHILD, json.dumps(TINY_CLIP), json.dumps(TINY_FLAVA), str(tmp_path / "w.safetensors")]
    steps = json.loads(subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout)
    assert steps == {
        "meta_device builds": False,
        "built on the CPU": False,
        "clip_model(pretrained=file)": False,
        "torch.device('meta')": True,  # what meta_device avoids
    }


@pytest.mark.parametrize("build", [lambda: clip_model(**TINY_CLIP), lambda: flava_model(**TINY_FLAVA)])
def test_what_it_builds_has_the_plain_contexts_names_shapes_dtypes_and_modules(build):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with meta_device():
        skipped = build()
    assert torch.equal(torch.get_rng_state(), before)  # as the plain context: a real model built next is the same
    with torch.device("meta"):
        plain = build()
    cpu = build()
    described = lambda m: [(k, tuple(v.shape), v.dtype, v.device.type) for k, v in m.state_dict().items()]  # noqa: E731
    assert described(skipped) == described(plain)
    assert {device for *_, device in described(skipped)} == {"meta"}
    assert [(k, s, d) for k, s, d, _ in described(skipped)] == [(k, s, d) for k, s, d, _ in described(cpu)]
    assert [type(m) for m in skipped.modules()] == [type(m) for m in cpu.modules()]


def test_tensors_on_another_device_are_filled_and_shape_checks_still_run():
    torch.manual_seed(3)
    expected = nn.init.trunc_normal_(torch.empty(5, device="cpu"), std=0.02), torch.empty(4, device="cpu").normal_()
    torch.manual_seed(3)
    with meta_device():
        got = nn.init.trunc_normal_(torch.empty(5, device="cpu"), std=0.02), torch.empty(4, device="cpu").normal_()
        meta = nn.init.normal_(tensor=torch.empty(2, 3))  # by keyword too
        with pytest.raises(ValueError, match="fewer than 2 dimensions"):  # nn.init's own shape check
            nn.init.xavier_normal_(torch.empty(3))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert meta.is_meta and meta.shape == (2, 3)
    assert torch.empty(2).device.type == "cpu"  # the context is left
