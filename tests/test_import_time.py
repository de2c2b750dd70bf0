"""Start-up time: loading a pretrained checkpoint, and the commands and training modules, do not import
``torch.distributed.checkpoint`` (DCP) nor ``torch.distributed.tensor`` (DTensor): 0.65 s of every command's
start on 2 cores, with sympy. Reading or writing a training checkpoint imports them when it runs."""

import subprocess
import sys

from tests.helpers import REPO

HEAVY = ("torch.distributed.checkpoint", "torch.distributed.tensor")
PROBE = f"import sys\nloaded = lambda: [m for m in {HEAVY!r} if m in sys.modules]\n"


def run_python(code: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", PROBE + code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_commands_and_the_training_modules_import_neither_dcp_nor_dtensor():
    """`import torchflava.pretrained` took 2.5 s, 0.65 s of it in DCP (imported by the checkpointing and
    integrity modules), and torchflava.training.optim imported DTensor: every command paid for them."""
    modules = [
        "torchflava.models",
        "torchflava.pretrained",
        "torchflava.zero_shot",
        "torchflava.linear_probe",
        "torchflava.classify",
        "torchflava.training",
        "torchflava.training.checkpointing",
        "torchflava.training.integrity",
        "torchflava.training.optim",
        "torchflava.training.loop",
    ]
    assert run_python(f"import {', '.join(modules)}\nprint(loaded())") == ["[]"]


def test_a_fresh_process_clips_without_dtensor_then_saves_and_reads_a_checkpoint_importing_dcp(tmp_path):
    """The probe can tell, and the imports moved into the functions work in a process that had none of them."""
    code = f"""
import torch
from torch import nn
from torchflava.training.checkpointing import CheckpointManager, read_model_weights
from torchflava.training.optim import clip_grad_norm

model = nn.Linear(2, 1, bias=False)
model.weight.grad = torch.tensor([[3.0, 4.0]])
print(clip_grad_norm(model.parameters(), 1.0).item(), [round(g, 5) for g in model.weight.grad[0].tolist()], loaded())
manager = CheckpointManager({str(tmp_path)!r})
path = manager.save(3, model, torch.optim.SGD(model.parameters(), lr=0.1), {{"step": 3}})
weights = read_model_weights(path)
print(sorted(weights), torch.equal(weights["weight"], model.weight.detach()), loaded())
"""
    norm, after_save = run_python(code)
    assert norm == "5.0 [0.6, 0.8] []"  # (the norm is divided by 5 + 1e-6)
    assert after_save == "['weight'] True ['torch.distributed.checkpoint', 'torch.distributed.tensor']"
