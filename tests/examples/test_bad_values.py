"""Every bad recipe value is refused before any work: one line naming the key, exit 2, nothing written."""

from pathlib import Path
import subprocess
import sys

import pytest

from tests.helpers import load_recipe

REPO = Path(__file__).resolve().parents[2]
FLAVA = (
    REPO / "examples" / "flava" / "train.py",
    REPO / "examples" / "flava" / "configs" / "pretraining" / "debug.yaml",
)
CLIP = (REPO / "examples" / "clip" / "train.py", REPO / "examples" / "clip" / "configs" / "debug.yaml")


RECIPES = {
    "flava": (load_recipe("examples/flava/train.py", "bad_values_flava"), FLAVA[1]),
    "clip": (load_recipe("examples/clip/train.py", "bad_values_clip"), CLIP[1]),
}

SHARED = [
    ("training.grad_accumulation=0", "training.grad_accumulation"),
    ("training.seed=-1", "training.seed"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.eps=0", "optim.eps"),
    ("optim.clip_grad_norm=-1", "optim.clip_grad_norm"),
    ("optim.betas=[0.9,1.5]", "optim.betas"),
    ("training.threads=0", "training.threads"),
    ("training.keep_checkpoints=0", "training.keep_checkpoints"),
    ("training.strategy=horovod", "training.strategy"),
    ("training.device=tpu", "training.device"),
    ("training.max_steps=0", "training.max_steps"),
    ("training.global_batch_size=-4", "training.global_batch_size"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("eval.templates=[]", "eval.templates"),
    ("eval.templates=[a photo]", "eval.templates"),
    ("training.resume=/nowhere/step_00000001", "training.resume"),
]
FLAVA_ONLY = [
    ("model.patch_size=0", "model.patch_size"),
    ("model.image_embed_dim=-32", "model"),
    ("model.text_num_heads=5", "model"),
    ("data.ratios.pairs=0", "data.ratios"),  # debug.yaml's ratios are pairs only... all zero then
    ("data.mlm_probability=1.5", "data.mlm_probability"),
    ("data.itm_negative_probability=-0.1", "data.itm_negative_probability"),
    ("data.vocab_size=3", "data.vocab_size"),
    ("data.num_masked_patches=999", "data.num_masked_patches"),
    ("data.max_text_length=1", "data.max_text_length"),
    ("data.vocab=/nowhere/vocab.txt", "data.vocab"),
    ("codebook.hidden_dim=0", "codebook"),
]
CLIP_ONLY = [
    ("model.vision_heads=5", "model"),
    ("model.patch_size=0", "model"),
    ("data.max_text_length=100", "data.max_text_length"),
    ("data.shapes.num_pairs=0", "data.shapes.num_pairs"),
]
CASES = [("flava", *c) for c in SHARED + FLAVA_ONLY] + [("clip", *c) for c in SHARED + CLIP_ONLY]


@pytest.mark.parametrize("recipe, override, key", CASES, ids=[f"{r}-{o}" for r, o, _ in CASES])
def test_a_bad_value_is_refused_before_any_work(recipe, override, key, tmp_path):
    module, config = RECIPES[recipe]
    out = tmp_path / "run"
    overrides = [f"config={config}", f"training.output_dir={out}", override]
    if recipe == "flava" and override.startswith("data.ratios"):
        overrides += ["data.ratios.images=0", "data.ratios.texts=0"]
    cfg = module.load_config(module.TrainConfig, overrides)
    with pytest.raises(module.ConfigError) as caught:
        module.main(cfg)
    message = str(caught.value)
    assert message.startswith(f"key '{key}") and "\n" not in message, message
    assert not out.exists() or [p.name for p in out.iterdir()] in ([], [".run.lock"])  # nothing written


def test_the_command_line_exits_2_with_one_line(tmp_path):
    script, config = CLIP
    result = subprocess.run(
        [sys.executable, str(script), f"config={config}", f"training.output_dir={tmp_path}", "optim.lr=-1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: key 'optim.lr': expected a finite number > 0, got -1.0"


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    module, config = RECIPES["clip"]
    (tmp_path / "file").write_text("not a directory")
    cfg = module.load_config(module.TrainConfig, [f"config={config}", f"training.output_dir={tmp_path / 'file'}"])
    with pytest.raises(module.ConfigError, match="key 'training.output_dir': expected a directory path"):
        module.main(cfg)
