"""Helpers shared by the tests: tiny configs and reference models built with random weights."""

import contextlib
import functools
import http.server
import math
import os
from pathlib import Path
import subprocess
import threading
from typing import Callable, Iterator, Optional

import pytest
import torch
from torch import nn

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
    """Run ``worker(rank, *args)`` on ``nprocs`` new processes; fail (never hang) past ``timeout_s``.

    A rank that raises fails the caller with its traceback; when time runs out every process is killed.
    The ranks are forked from a fork server (a fresh interpreter, started once per test process, that has
    imported torch and torchflava and run nothing): a rank starts in milliseconds where a spawned one
    imported them anew (~4 s on 2 cores). The server keeps the environment it started with: a worker sets
    what it needs (MASTER_PORT...) itself.
    """
    import time

    import pytest
    import torch.multiprocessing as mp

    forkserver = mp.get_context("forkserver")
    forkserver.set_forkserver_preload(["torch", "torch.distributed", "torchflava.training", "torchflava.models"])
    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="forkserver")
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


def photos() -> dict:
    """Real non-square photos (scikit-image's bundled ones), name -> PIL image; one is greyscale (mode L)."""
    from PIL import Image
    from skimage import data

    return {
        "chelsea": Image.fromarray(data.chelsea()),  # 451 x 300
        "coffee": Image.fromarray(data.coffee()),  # 600 x 400
        "rocket": Image.fromarray(data.rocket()),  # 640 x 427: odd margins when the short side goes to 224
        "astronaut_wide": Image.fromarray(data.astronaut()[100:401]),  # 512 x 301
        "astronaut_tall": Image.fromarray(data.astronaut()[:, 150:397]),  # 247 x 512
        "camera_grey": Image.fromarray(data.camera()[:333]),  # 512 x 333, mode L
    }


# A vocabulary of whole words in both cases, and every letter alone and as a continuation, within
# TINY_FLAVA's 99 ids: cased text maps to other ids than its lower-cased form.
HF_WORDS = ["an", "photo", "of", "the", "cat", "Cat", "coffee", "Coffee", "cup", "rocket", "Rocket"]
HF_WORDS += ["astronaut", "Astronaut", "space", "woman", "Woman", "in", ".", ",", "!", "café", "Café"]
HF_LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]


def write_hf_flava(directory: Path, *, lowercase: bool, image_size: int = 32, seed: int = 0):
    """A Hugging Face FLAVA directory as transformers' users save one: ``FlavaModel.save_pretrained``
    (TINY_FLAVA sizes, perturbed random weights) and ``FlavaProcessor.save_pretrained`` (a
    ``FlavaImageProcessor`` at ``image_size`` and a ``BertTokenizerFast`` over :data:`HF_WORDS`).

    Returns the FlavaModel written, in eval mode.
    """
    from transformers import BertTokenizerFast, FlavaImageProcessor, FlavaModel, FlavaProcessor

    from tests.models.flava.test_convert_weights import _perturb, _tiny_hf_config

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *HF_WORDS, *HF_LETTERS, *(f"##{c}" for c in HF_LETTERS)]
    assert len(tokens) == len(set(tokens)) <= TINY_FLAVA["vocab_size"]
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "source_vocab.txt"
    vocab.write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=lowercase)
    vocab.unlink()
    size = {"height": image_size, "width": image_size}
    FlavaProcessor(image_processor=FlavaImageProcessor(size=size, crop_size=size), tokenizer=tokenizer).save_pretrained(
        directory
    )
    torch.manual_seed(seed)
    model = FlavaModel(_tiny_hf_config()).eval()
    _perturb(model)
    with torch.no_grad():
        model.logit_scale.fill_(4.6052)  # log 100, a trained model's: probabilities far from uniform
    model.save_pretrained(directory)
    return model


# Text that exercises BERT normalisation and WordPiece: case, accents (composed and combining),
# CJK and other scripts, emoji, control and zero-width characters, whitespace, punctuation,
# special-token spellings, a word over 100 characters, and the empty string.
VARIED_TEXTS = [
    "a photo of a cat.",
    "A Photo Of A Cat!",
    "The CAFÉ on the corner",
    "café crème brûlée",
    "naïve résumé façade",
    "Ångström über Straße",
    "ÉCOLE normale supérieure",
    "São Paulo, Brasil",
    "Zürich's cheese",
    "東京タワーの写真",
    "北京 is in 中国",
    "한국어 텍스트",
    "emoji 😀 and 🚀 rocket",
    "tabs\tand\nnewlines\r\nhere",
    "  leading and trailing  ",
    "multiple     spaces",
    "hyphen-ated words and under_scores",
    "numbers 12345 and 3.14159",
    "$100 & 50% off!!!",
    "quotes \"double\" and 'single'",
    "(brackets) [square] {curly}",
    "e-mail: someone@example.com",
    "url https://example.org/path?q=1",
    "[MASK] is special, [CLS] too",
    "[mask] in lower case is not",
    "x" * 120,
    "supercalifragilisticexpialidocious",
    "zero\u200bwidth space",
    "control\x00char\x07s",
    "combining e\u0301 accent",
    "Ελληνικά κείμενα",
    "Русский текст",
    "العربية",
    "हिन्दी",
    "ﬁ ligature",
    "full-width ＡＢＣ",
    "Mixed CASE wOrDs",
    "",
]


def run_threads(fn: Callable[[], object], n: int) -> tuple[list, list[BaseException]]:
    """Run ``fn`` in ``n`` threads at once: (what each returned, what each raised), in finishing order."""
    results, errors = [], []

    def call():
        try:
            results.append(fn())
        except Exception as error:  # noqa: BLE001 (returned for the caller's assertion)
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


@contextlib.contextmanager
def fifo_that_cannot_hang(path: Path) -> Iterator[Path]:
    """A FIFO at ``path`` for a test of code that must refuse it without opening it. Should the code open
    it for reading after all (a regression), it would wait for a writer forever: a shell opens and
    closes the write end, again and again, so that every open and read ends (at EOF) and the test fails
    on what the code then raises instead of hanging the suite; and it fails at the end of the block
    even if the code raised what the test expects. (A process, not a thread: a reader that blocks
    holding the GIL, as safetensors' does, would stop a thread too.)"""
    os.mkfifo(path)
    writer = subprocess.Popen(  # each `: >` waits in open() until a reader comes, then closes at once
        ["sh", "-c", 'while :; do : > "$1" && echo opened; done', "sh", str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        yield path
    finally:
        writer.kill()
        opened = writer.communicate()[0]
    assert not opened, f"{path} was opened for reading"


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # (no request lines in the test output)
        pass


@contextlib.contextmanager
def served_directory(root: Path, monkeypatch=None) -> Iterator[str]:
    """``root`` served over HTTP on 127.0.0.1 by a thread of the test; yields its base URL. With pytest's
    ``monkeypatch``, proxies are unset for the test (curl, which streams shards, must not use one)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietFiles, directory=str(root)))
    with _serving(server, monkeypatch) as base:
        yield base


class _Scripted(http.server.BaseHTTPRequestHandler):
    answer: Callable[[http.server.BaseHTTPRequestHandler], None]

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        try:
            type(self).answer(self)
        except OSError:  # the client left (a download the test expects to be refused or cut short)
            self.close_connection = True

    do_HEAD = do_GET


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # (a client that left mid-answer: expected)
        pass


@contextlib.contextmanager
def scripted_server(answer: Callable[[http.server.BaseHTTPRequestHandler], None], monkeypatch=None) -> Iterator[str]:
    """An HTTP server on 127.0.0.1, run by a thread of the test, that answers every GET and HEAD by calling
    ``answer(handler)`` (``handler.command``, ``handler.path``; it writes the status line, the headers and
    the body itself, to ``handler.wfile``, as a hostile server may); yields its base URL. ``answer`` should
    end within a few seconds even when the client stays (the server waits for it on closing); proxies are
    unset as by :func:`served_directory`."""
    server = _QuietServer(("127.0.0.1", 0), type("Answer", (_Scripted,), {"answer": answer}))
    with _serving(server, monkeypatch) as base:
        yield base


@contextlib.contextmanager
def _serving(server: http.server.ThreadingHTTPServer, monkeypatch=None) -> Iterator[str]:
    if monkeypatch is not None:
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    # (polled every 50 ms: shutdown waits for the poll, 0.5 s by default, at the end of every test)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def assert_a_grown_captions_file_refuses_resume(
    recipe, config: Callable[..., object], common: list[str], captions: Path, run_dir: Path
) -> None:
    """The shared body of the FLAVA and CLIP recipes' tests that a resume on a captions file that grew is
    refused: each pass over the pairs is a permutation seeded by their number, so a resume on more lines
    drew other pairs than the run it continues. ``recipe.main(config(*common, ...))`` trains 2 steps into
    ``run_dir``; ``captions`` then grows by 3 copies of its first line, and the resume to 4 steps must raise
    ``recipe.ConfigError`` naming ``data.files.pairs_captions`` and both counts, training nothing."""
    recipe.main(config(*common, "training.max_steps=2"))
    written = captions.read_text()
    pairs = len(written.splitlines())
    captions.write_text(written + written.splitlines(keepends=True)[0] * 3)
    with pytest.raises(recipe.ConfigError) as caught:
        recipe.main(config(*common, "training.max_steps=4", "training.resume=auto"))
    assert str(caught.value).startswith(
        f"key 'data.files.pairs_captions': expected the {pairs} pairs the checkpoint was trained on, since a "
        "resumed run"
    )
    assert str(caught.value).endswith(f"got '{pairs + 3} items'")
    assert max(r["step"] for r in recipe.read_metrics(run_dir / "metrics.jsonl")) == 2  # nothing trained


def two_class_folder(train: Path) -> Path:
    """``train``/blue and ``train``/red, 3 flat 32 px images each (a fine-tuning recipe's class folders)."""
    from PIL import Image

    for name, colour in (("blue", (10, 10, 250)), ("red", (250, 10, 10))):
        (train / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), colour).save(train / name / f"{i}.png")
    return train


def assert_a_changed_folder_refuses_resume(recipe_file: str, overrides: list[str], train: Path, run_dir: Path) -> None:
    """The shared body of the fine-tuning recipes' tests that a resume on a training folder of another size is
    refused: ``python recipe_file *overrides`` (a resume of ``run_dir``, trained on :func:`two_class_folder`'s 6
    images) must exit 2 in one line naming ``data.train`` and both counts, with an image more and with one less,
    writing nothing in ``run_dir``; the folder is left as it was."""
    from tests.examples.fault_runner import run_script

    def files() -> dict:  # the run directory's files, but its lock (which names the process holding it)
        return {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".run.lock"}

    written = files()

    def refused(size: int) -> None:
        result = run_script(recipe_file, overrides)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
        expected = "error: key 'data.train': expected the 6 train the checkpoint was trained on, since"
        assert lines[0].startswith(expected), lines[0]
        assert lines[0].endswith(f"got '{size} items'"), lines[0]
        assert files() == written  # refused before anything is written in the run directory

    extra, moved, aside = train / "red" / "3.png", train / "red" / "2.png", run_dir.parent / "2.png"
    extra.write_bytes((train / "red" / "0.png").read_bytes())
    refused(7)  # an image more
    extra.unlink()
    moved.rename(aside)
    refused(5)  # an image less
    aside.rename(moved)  # the folder as it was


class SeededLinear(nn.Module):
    """One ``nn.Linear(in_dim, out_dim)`` whose weights come from ``torch.manual_seed(seed)``: a toy model for
    the training loop's tests (the same weights in every run and every process)."""

    def __init__(self, in_dim: int, out_dim: int, *, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class Killed(Exception):
    """What :func:`stop_fit_after` raises in a recipe's ``fit``: the run stops there, as a kill would stop it."""


def stop_fit_after(monkeypatch, recipe, steps: int) -> None:
    """Make the ``fit`` that module ``recipe`` calls raise :class:`Killed` after its ``steps``-th optimiser step
    (through fit's ``after_step`` hook; ``monkeypatch.undo()`` puts the real one back)."""
    fit, calls = recipe.fit, [0]

    def after_step() -> None:
        calls[0] += 1
        if calls[0] == steps:
            raise Killed

    monkeypatch.setattr(recipe, "fit", lambda *args, **kwargs: fit(*args, **kwargs, after_step=after_step))


def assert_relative_paths_resume_the_run_s_own_files(
    recipe, config: Callable[..., object], write: Callable[[Path], None], paths: dict, tmp_path: Path, monkeypatch
) -> None:
    """The shared body of the FLAVA and CLIP pretraining recipes' tests that relative data paths and a relative
    ``training.output_dir`` are recorded absolute. ``write(folder)`` writes the data under ``tmp_path/a`` and, the
    same sizes, under ``tmp_path/b``; ``paths`` gives each data key's relative value. A run started in ``a`` (2
    steps into ``run``) records ``a``'s paths; the same relative paths resumed from ``b`` read ``b``'s files without
    a word, and are refused naming each key; ``config=<run>/config.yaml training.resume=auto`` from ``b`` resumed
    nothing (a new run in ``b/run``, on ``b``'s files) and now resumes the run, on ``a``'s files, to step 4."""
    import yaml

    from torchflava.training.config import load_config

    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        write(folder)
    typed = [f"{key}={value}" for key, value in paths.items()]
    monkeypatch.chdir(a)
    first = config(*typed, "training.output_dir=run", "training.max_steps=2")
    recipe.main(first)
    assert [functools.reduce(getattr, key.split("."), first) for key in paths] == list(paths.values())  # (as typed:
    assert first.training.output_dir == "run"  # the caller's config is not changed)
    saved = yaml.safe_load((a / "run" / "config.yaml").read_text())
    recorded = {key: functools.reduce(lambda node, part: node[part], key.split("."), saved) for key in paths}
    assert recorded == {key: str(a / value) for key, value in paths.items()}
    assert saved["training"]["output_dir"] == str(a / "run")
    monkeypatch.chdir(b)
    with pytest.raises(recipe.ConfigError) as caught:
        recipe.main(config(*typed, f"training.output_dir={a / 'run'}", "training.max_steps=4", "training.resume=auto"))
    listed = ", ".join(f"'{key}' ({str(a / value)!r} -> {str(b / value)!r})" for key, value in sorted(paths.items()))
    assert str(caught.value).startswith(f"key{'s' if len(paths) > 1 else ''} {listed}: expected the values the ")
    assert max(r["step"] for r in recipe.read_metrics(a / "run" / "metrics.jsonl")) == 2  # nothing trained
    recipe.main(
        load_config(
            recipe.TrainConfig, [f"config={a / 'run' / 'config.yaml'}", "training.resume=auto", "training.max_steps=4"]
        )
    )
    assert [r["step"] for r in recipe.read_metrics(a / "run" / "metrics.jsonl")][-2:] == [3, 4]
    assert not (b / "run").exists() and yaml.safe_load((a / "run" / "config.yaml").read_text())["data"] == saved["data"]


def hf_parquet_of(folder: Path, data: Path, names: list[str], *, shards: int = 2, with_names: bool = True) -> list[str]:
    """The images (and unreadable files) of ``folder``'s class sub-folders as the Hugging Face Hub serves such a
    split, ``data/validation-0000i-of-0000n.parquet`` (the Image struct, ClassLabel ``names``), rows in the
    folder's order; returns the files."""
    from tests.data.test_parquet import write_hf_parquet
    from torchflava.data.readers import ImageFolder

    listed = ImageFolder(folder)
    files = [listed.relative_path(i) for i in range(len(listed))]
    data.mkdir(parents=True, exist_ok=True)
    paths, step = [], math.ceil(len(files) / shards)
    for shard in range(shards):
        part = files[shard * step : (shard + 1) * step]
        path = data / f"validation-{shard:05d}-of-{shards:05d}.parquet"
        labels = [names.index(f.split("/")[0]) for f in part]
        write_hf_parquet(path, [(folder / f).read_bytes() for f in part], labels, names if with_names else None)
        paths.append(str(path))
    return paths


def wds_of(folder: Path, root: Path, names: list[str], *, templates: Optional[list[str]] = None) -> Path:
    """The images (and unreadable files) of ``folder``'s class sub-folders as a CLIP_benchmark webdataset dataset,
    ``root/test/{0,1}.tar`` (``.png`` and ``.cls`` members keyed ``s0000000``...) with ``classnames.txt``
    (and ``zeroshot_classification_templates.txt``), samples in the folder's order; returns ``root``."""
    from tests.data.test_wds import write_wds
    from torchflava.data.readers import ImageFolder

    listed = ImageFolder(folder)
    files = [listed.relative_path(i) for i in range(len(listed))]
    samples = [{"png": (folder / f).read_bytes(), "cls": str(names.index(f.split("/")[0])).encode()} for f in files]
    write_wds(root, samples, classes=names, templates=templates)
    return root
