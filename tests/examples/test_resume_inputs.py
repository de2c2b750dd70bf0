"""A resumed run reads its vocabulary (``data.vocab``, a CLIP checkpoint's tokenizer) and the FLAVA codebook's
weights (``codebook.pretrained``) again: a file changed since the run's start silently changed the token ids or
the MIM targets it trains on. The run records their digests at its start (``inputs.json``) and a resume whose
files differ is refused, naming the key; a run recorded before the digests were resumes as it did."""

from pathlib import Path

import pytest

from tests.helpers import load_recipe
from torchflava.data.shapes import ShapesWorld
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.training.config import ConfigError, load_config
from torchflava.training.schema import INPUTS_RECORD, read_inputs_record, state_digest, tokenizer_digest
from torchflava.utils.checkpoint import save_state_dict

REPO = Path(__file__).resolve().parents[2]
RECIPES = {
    "flava": ("examples/flava/train.py", "examples/flava/configs/pretraining/debug.yaml"),
    "clip": ("examples/clip/train.py", "examples/clip/configs/debug.yaml"),
}


def _run(family: str, out: Path, steps: int, extra: list[str]) -> dict:
    script, config = RECIPES[family]
    module = load_recipe(script, f"resume_inputs_{family}")
    overrides = [f"config={REPO / config}", f"training.output_dir={out}", f"training.max_steps={steps}"]
    overrides += ["optim.warmup_steps=0", "eval.enabled=false", "training.resume=auto", *extra]
    return module.main(load_config(module.TrainConfig, overrides))


def _swap_two_tokens(vocab: Path) -> None:
    """The same number of tokens (the model still fits), two of them at each other's ids."""
    lines = vocab.read_text().splitlines()
    lines[-1], lines[-2] = lines[-2], lines[-1]
    vocab.write_text("\n".join(lines) + "\n")


def _vocab(path: Path) -> Path:
    """A vocab.txt learnt from the shapes world's captions (what the debug configs train on)."""
    world = ShapesWorld("pairs", 100, image_size=32)
    WordPieceTokenizer.train([world.caption(i) for i in range(100)], vocab_size=80).save(path.parent)
    return path


def _flava_config(module, *overrides: str):
    return load_config(module.TrainConfig, [f"config={REPO / RECIPES['flava'][1]}", *overrides])


def test_a_flava_resume_refuses_a_vocabulary_or_codebook_changed_since_the_run_s_start(tmp_path):
    vocab = _vocab(tmp_path / "vocab.txt")
    module = load_recipe(RECIPES["flava"][0], "resume_inputs_flava")
    codebook = module.build_codebook(_flava_config(module))  # seeded: the weights a file brings
    dvae = tmp_path / "dvae.safetensors"
    save_state_dict(codebook.state_dict(), dvae)
    run, files = tmp_path / "run", [f"data.vocab={vocab}", f"codebook.pretrained={dvae}"]
    _run("flava", run, 1, files)
    recorded = read_inputs_record(run)
    assert recorded["codebook.pretrained"] == state_digest(codebook)
    assert recorded["data.vocab"] == tokenizer_digest(module.read_vocabulary(vocab))
    _run("flava", run, 2, files)  # the same files: resumed
    assert read_inputs_record(run) == recorded

    save_state_dict({k: v + 0.01 for k, v in codebook.state_dict().items()}, dvae)  # retrained, same shapes
    with pytest.raises(ConfigError) as caught:
        _run("flava", run, 3, files)
    retrained = module.build_codebook(_flava_config(module, f"codebook.pretrained={dvae}"))
    old, new = recorded["codebook.pretrained"][:12], state_digest(retrained)[:12]
    assert str(caught.value) == (
        f"key 'codebook.pretrained': expected the codebook weights the run started with (sha256 {old}; a changed "
        f"one would change what the resumed run trains on), got '{dvae} (sha256 {new})'"
    )
    save_state_dict(codebook.state_dict(), dvae)
    _swap_two_tokens(vocab)
    with pytest.raises(
        ConfigError,
        match=rf"^key 'data.vocab': expected the vocabulary the run started with \(sha256 "
        rf"{recorded['data.vocab'][:12]}; .*, got '{vocab} \(sha256 [0-9a-f]{{12}}\)'$",
    ):
        _run("flava", run, 3, files)
    assert max(int(p.name[5:]) for p in (run / "checkpoints").iterdir()) == 2  # nothing trained

    (run / INPUTS_RECORD).unlink()  # a run recorded before the digests: resumed as before, recorded now
    _run("flava", run, 3, files)
    assert read_inputs_record(run)["data.vocab"] == tokenizer_digest(module.read_vocabulary(vocab))


def test_a_clip_resume_refuses_a_tokenizer_changed_since_the_run_s_start(tmp_path):
    vocab, run = _vocab(tmp_path / "vocab.txt"), tmp_path / "run"
    _run("clip", run, 1, [f"data.vocab={vocab}"])
    _swap_two_tokens(vocab)
    with pytest.raises(ConfigError, match=r"^key 'data.vocab': expected the tokenizer the run started with \(sha256 "):
        _run("clip", run, 2, [f"data.vocab={vocab}"])
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000001"]  # nothing trained
