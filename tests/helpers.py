"""Helpers shared by the tests: tiny configs and reference models built with random weights."""

from pathlib import Path

import torch

# A tiny FLAVA: every dimension differs so that a transposed or swapped tensor cannot pass.
TINY_FLAVA = dict(
    image_embed_dim=32,
    image_num_layers=2,
    image_num_heads=4,
    image_mlp_dim=48,
    image_size=32,
    patch_size=8,
    text_embed_dim=24,
    text_num_layers=2,
    text_num_heads=3,
    text_mlp_dim=40,
    vocab_size=99,
    max_seq_len=40,
    multimodal_embed_dim=16,
    multimodal_num_layers=2,
    multimodal_num_heads=2,
    multimodal_mlp_dim=36,
    projection_dim=20,
)


def padded_text(batch: int, length: int, vocab_size: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids with right padding (id 0) and the matching 1/0 attention mask.

    Args:
        batch (int): rows.
        length (int): columns.
        vocab_size (int): ids are drawn from [1, vocab_size).
        lengths (list[int]): real length of each row.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: ids (B, L) and mask (B, L).
    """
    ids = torch.randint(1, vocab_size, (batch, length))
    mask = torch.zeros(batch, length, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return ids * mask, mask


def pickle_canary(marker: str) -> None:
    """Write a marker file: proof that unpickling ran code."""
    Path(marker).write_text("executed")


class PickleExploit:
    """An object whose unpickling calls :func:`pickle_canary` (for weights_only loading tests)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return pickle_canary, (self.marker,)


def write_tiny_export(root: Path, *, seed: int = 0):
    """A checkpoint directory as the pretraining recipe exports it (random weights, a shapes vocabulary).

    Returns the FLAVAModel whose weights were written.
    """
    import json

    from safetensors.torch import save_file

    from torchflava.data.shapes import ShapesWorld
    from torchflava.data.tokenizer import WordPieceTokenizer
    from torchflava.models import flava_model

    world = ShapesWorld("texts", 300, image_size=32)
    tokenizer = WordPieceTokenizer.train([world.caption(i) for i in range(300)], vocab_size=120)
    torch.manual_seed(seed)
    kwargs = dict(EXPORT_FLAVA, vocab_size=tokenizer.vocab_size)
    model = flava_model(**kwargs)
    root.mkdir(parents=True, exist_ok=True)
    save_file({f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}, root / "weights.safetensors")
    (root / "backbone_config.json").write_text(json.dumps(kwargs))
    tokenizer.save(root)
    return model.eval()


EXPORT_FLAVA = dict(
    image_embed_dim=32,
    image_num_layers=1,
    image_num_heads=2,
    image_mlp_dim=48,
    image_size=32,
    patch_size=8,
    text_embed_dim=24,
    text_num_layers=1,
    text_num_heads=2,
    text_mlp_dim=40,
    max_seq_len=32,
    multimodal_embed_dim=16,
    multimodal_num_layers=1,
    multimodal_num_heads=2,
    multimodal_mlp_dim=36,
    projection_dim=20,
)


REPO = Path(__file__).resolve().parents[1]


def load_recipe(relative: str, name: str):
    """Import a recipe script (``examples/...py``) as a module, to call its ``main`` in-process."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_ranks(worker, args: tuple, *, nprocs: int, timeout_s: float) -> None:
    """Run ``worker(rank, *args)`` on ``nprocs`` spawned processes; fail (never hang) past ``timeout_s``.

    A rank that raises fails the caller with its traceback; when time runs out every process is killed.
    """
    import time

    import pytest
    import torch.multiprocessing as mp

    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):  # raises if a rank failed
            if time.monotonic() >= deadline:
                pytest.fail(f"the {nprocs} ranks did not finish within {timeout_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join(timeout=10)
