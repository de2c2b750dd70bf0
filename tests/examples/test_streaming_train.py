"""Both pretraining recipes on streamed shards (data.streaming.enabled): webdataset.ShardWriter shards
served over loopback HTTP by the test and read through `pipe:cat`, named by brace patterns; a bad sample is
counted in the report; a streamed CLIP run killed with SIGKILL resumes to exactly the uninterrupted losses;
a resume on other loader workers is refused."""

import io
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time

import pytest
import webdataset as wds

from tests.examples.fault_runner import run_script
from tests.helpers import load_recipe, served_directory
from torchflava.data.shapes import ShapesWorld
from torchflava.data.streaming import STREAM_SHARDS, StreamedSource, StreamingBatches
from torchflava.training.config import load_config

REPO = Path(__file__).resolve().parents[2]
CLIP = load_recipe("examples/clip/train.py", "streaming_clip_recipe")
FLAVA = load_recipe("examples/flava/train.py", "streaming_flava_recipe")
CLIP_DEBUG = REPO / "examples" / "clip" / "configs" / "debug.yaml"
FLAVA_DEBUG = REPO / "examples" / "flava" / "configs" / "pretraining" / "debug.yaml"
STREAM = ["data.source=files", "data.streaming.enabled=true", "eval.enabled=false"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """8 shards of 16 shapes pairs (32 x 32 PNG + caption); shard 5's third sample has a broken image."""
    root = tmp_path_factory.mktemp("pairs")
    world = ShapesWorld("pairs", 128, image_size=32, seed=1)
    with wds.ShardWriter(str(root / "pairs-%02d.tar"), maxcount=16, verbose=0) as writer:
        for index in range(128):
            buffer = io.BytesIO()
            world[index].image.save(buffer, format="PNG")
            image = b"\x89PNG broken" if index == 5 * 16 + 2 else buffer.getvalue()
            writer.write({"__key__": f"{index:05d}", "png": image, "txt": world.caption(index)})
    return root


@pytest.fixture
def served(shards, monkeypatch):
    """The shards over HTTP on 127.0.0.1, from a thread of this test (curl told not to use a proxy)."""
    with served_directory(shards, monkeypatch) as url:
        yield url


def _losses(output_dir: Path) -> dict:
    return {r["step"]: r["loss"] for r in CLIP.read_metrics(Path(output_dir) / "metrics.jsonl")}


def test_clip_trains_on_shards_streamed_over_http_and_counts_the_bad_sample(served, tmp_path):
    cfg = load_config(
        CLIP.TrainConfig,
        [
            f"config={CLIP_DEBUG}",
            *STREAM,
            f"data.files.pairs_shards={served}/pairs-{{00..07}}.tar",
            "data.num_workers=2",
            "data.streaming.shuffle_buffer=20",
            f"training.output_dir={tmp_path}",
        ],
    )
    report = CLIP.main(cfg)  # 8 steps of 16 = one epoch of 128 samples over the 2 workers' 4 shards each
    losses = _losses(tmp_path)
    assert sorted(losses) == [2, 4, 6, 8] and all(0 < loss < 10 for loss in losses.values())
    assert report["skipped_samples"] == 1
    assert report["skipped_examples"][0].startswith(f"pairs[{served}/pairs-05.tar:00082]: ")
    assert "unreadable image" in report["skipped_examples"][0]
    assert (tmp_path / "model" / "clip.safetensors").is_file()


def test_flava_trains_on_shards_streamed_through_pipe_cat_mixed_with_a_text_corpus(shards, tmp_path):
    """Streamed pairs and a local text corpus, mixed by ratio: each step's kind is the one a run without
    streaming would draw."""
    corpus = tmp_path / "texts.txt"
    corpus.write_text("".join(ShapesWorld("texts", 60, image_size=32).caption(i) + "\n" for i in range(60)))
    cfg = load_config(
        FLAVA.TrainConfig,
        [
            f"config={FLAVA_DEBUG}",
            *STREAM,
            f"data.files.pairs_shards=pipe:cat {shards}/pairs-{{00..07}}.tar",
            f"data.files.texts={corpus}",
            "data.ratios.pairs=0.5",
            "data.ratios.texts=0.5",
            "data.num_workers=2",
            "training.max_steps=6",
            f"training.output_dir={tmp_path / 'run'}",
        ],
    )
    report = FLAVA.main(cfg)
    assert report["steps"] == 6 and report["final_loss"] > 0
    records = FLAVA.read_metrics(tmp_path / "run" / "metrics.jsonl")
    kinds = FLAVA.flava_pretraining_batches(
        {"pairs": StreamedSource(), "texts": StreamedSource()},  # only the kinds are read
        {"pairs": 0.5, "texts": 0.5},
        None,
        global_batch_size=8,
        num_steps=6,
    )
    assert [r["step"] for r in records] == list(range(1, 7))
    assert [r["kind"] for r in records] == [kinds.kind(step) for step in range(6)]
    assert {r["kind"] for r in records} == {"pairs", "texts"}


SCRIPT = "examples/clip/train.py"


def _command(args):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return [sys.executable, str(REPO / SCRIPT), f"config={CLIP_DEBUG}", *args], env


def test_a_killed_streamed_run_resumes_to_the_same_losses(shards, tmp_path):
    """Two loader workers, blocks of 10 shuffled samples across shard ends: the run killed after its
    step-8 checkpoint restarts each worker inside its block and sees the uninterrupted batches."""
    common = [
        *STREAM,
        f"data.files.pairs_shards=pipe:cat {shards}/pairs-{{00..07}}.tar",
        "data.num_workers=2",
        "data.streaming.shuffle_buffer=10",
        "training.max_steps=24",
        "training.checkpoint_every=4",
        "training.log_every=1",
        "training.global_batch_size=6",
    ]
    reference = run_script(SCRIPT, [f"config={CLIP_DEBUG}", f"training.output_dir={tmp_path / 'reference'}", *common])
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = tmp_path / "killed"
    command, env = _command([f"training.output_dir={killed}", *common])
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "step_00000008" / "COMPLETE"
    deadline = time.time() + 240
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert max(_losses(killed)) < 24
    # Resumed at once: the killed run's loader workers may still be alive, but they never hold its lock.
    result = run_script(
        SCRIPT, [f"config={CLIP_DEBUG}", f"training.output_dir={killed}", "training.resume=auto", *common]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _losses(killed) == _losses(tmp_path / "reference")  # exactly, step for step


def test_a_streamed_run_resumes_only_with_its_loader_workers(shards, tmp_path):
    base = [f"config={CLIP_DEBUG}", *STREAM, f"data.files.pairs_shards={shards}/pairs-*.tar"]
    base += [f"training.output_dir={tmp_path}", "training.max_steps=4"]
    CLIP.main(load_config(CLIP.TrainConfig, base))
    again = load_config(CLIP.TrainConfig, [*base, "training.resume=auto", "training.max_steps=6"])
    again.data.num_workers = 2
    with pytest.raises(CLIP.ConfigError) as caught:
        CLIP.main(again)
    assert str(caught.value).startswith("key 'data.num_workers': ")
    assert "for 1 loader worker slot(s) per rank" in str(caught.value)


def test_a_refused_stream_resume_leaves_the_run_directory_as_it_was(shards, tmp_path):
    """Refused only inside fit: the run's config.yaml was rewritten with the refused config first, and the
    checkpoints newer than the one resumed from were moved aside."""
    base = [f"config={CLIP_DEBUG}", *STREAM, f"data.files.pairs_shards={shards}/pairs-*.tar"]
    base += [f"training.output_dir={tmp_path}", "training.max_steps=4", "training.checkpoint_every=2"]
    CLIP.main(load_config(CLIP.TrainConfig, base))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".run.lock"}
    older = tmp_path / "checkpoints" / "step_00000002"
    again = load_config(CLIP.TrainConfig, [*base, f"training.resume={older}", "training.max_steps=6"])
    again.data.num_workers = 2
    # (the key once, not "key 'data.num_workers': data.num_workers: ...")
    with pytest.raises(CLIP.ConfigError, match="^key 'data.num_workers': the checkpoint's stream positions are for "):
        CLIP.main(again)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".run.lock"}
    assert after == before  # config.yaml as the run wrote it, step_00000004 where it was


def test_two_ranks_with_two_workers_each_resume_their_own_stream_positions(shards, tmp_path):
    """torchrun with 2 ranks x 2 loader workers (8 shards, one epoch in 8 steps): the step-8 checkpoint is
    removed as if the run had died after step 4's, and the resumed ranks, each restoring its own workers'
    positions, log exactly the losses of the whole run."""
    run = tmp_path / "run"
    args = [
        f"config={CLIP_DEBUG}",
        *STREAM,
        f"data.files.pairs_shards=pipe:cat {shards}/pairs-{{00..07}}.tar",
        "data.num_workers=2",
        "data.streaming.shuffle_buffer=12",
        "training.strategy=ddp",
        "training.log_every=1",
        f"training.output_dir={run}",
    ]
    first = run_script(SCRIPT, args, nproc=2)  # as torchrun's 2 ranks, forked from fault_runner's server
    assert first.returncode == 0, first.stderr[-3000:]
    whole = _losses(run)
    assert sorted(whole) == list(range(1, 9))
    shutil.rmtree(run / "checkpoints" / "step_00000008")
    result = run_script(SCRIPT, [*args, "training.resume=auto"], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _losses(run) == whole  # steps 5-8 again, from the restored positions


def _shard(path: Path, *, good: int, bad: int) -> Path:
    """``good`` shapes pairs, then ``bad`` pairs whose image does not decode."""
    world = ShapesWorld("pairs", good + bad, image_size=32, seed=1)
    with wds.TarWriter(str(path)) as writer:
        for index in range(good + bad):
            buffer = io.BytesIO()
            world[index].image.save(buffer, format="PNG")
            image = buffer.getvalue() if index < good else b"\x89PNG broken"
            writer.write({"__key__": f"{index:05d}", "png": image, "txt": world.caption(index)})
    return path


def test_shards_without_usable_samples_are_a_one_line_error_naming_the_key(tmp_path):
    """Found at the start when the first samples are all unusable, else when the stream gives up (was a
    27-line traceback ending in RuntimeError after the run's work had started)."""
    for good, found in ((0, "none of the first 50 samples of slot 0's shards decodes; the first: "), (2, "the ")):
        shard = _shard(tmp_path / f"good{good}.tar", good=good, bad=60)
        cfg = load_config(
            CLIP.TrainConfig,
            [f"config={CLIP_DEBUG}", *STREAM, f"data.files.pairs_shards={shard}", "data.streaming.shuffle_buffer=0"]
            + [f"training.output_dir={tmp_path / f'run{good}'}", "training.max_steps=2", "optim.warmup_steps=0"],
        )
        with pytest.raises(CLIP.ConfigError) as caught:
            CLIP.main(cfg)
        message = str(caught.value)
        expected = "shards to stream" if good == 0 else "shards with usable samples"
        assert message.startswith(f"key 'data.files.pairs_shards': expected {expected}, got '{shard}' ({found}")
        assert "\n" not in message and "unreadable image" in message
    assert message.endswith("); the data looks broken)")
    assert not (tmp_path / "run0").exists()  # nothing written: not the vocabulary learnt from the captions either


def test_a_flava_run_refused_for_its_shards_leaves_no_learnt_vocabulary(tmp_path):
    """The vocabulary learnt from the captions was written into the run directory before the streamed data
    was built; shards whose images do not decode then refused the run, leaving a run directory holding
    only the vocabulary of a run that never started."""
    shard = _shard(tmp_path / "bad.tar", good=0, bad=60)
    overrides = [f"config={FLAVA_DEBUG}", *STREAM, f"data.files.pairs_shards={shard}", "training.max_steps=2"]
    overrides += ["data.streaming.shuffle_buffer=0", "optim.warmup_steps=0", f"training.output_dir={tmp_path / 'run'}"]
    with pytest.raises(FLAVA.ConfigError, match=r"^key 'data.files.pairs_shards': expected shards to stream"):
        FLAVA.main(load_config(FLAVA.TrainConfig, overrides))
    assert not (tmp_path / "run").exists()


def test_a_flava_resume_on_another_number_of_shards_is_refused_naming_the_key(shards):
    """A glob that matches more shards than at the checkpoint deals each epoch's shards in another order:
    the resumed stream would read other samples (some twice) without a word."""
    cfg = load_config(
        FLAVA.TrainConfig, [f"config={FLAVA_DEBUG}", *STREAM, f"data.files.pairs_shards={shards}/pairs-*.tar"]
    )
    data = StreamingBatches(cfg.data.files.pairs_shards, lambda *args, **kwargs: None, batch_size=1)
    FLAVA.resumed_data_checks(cfg.data, data, [{"data": {STREAM_SHARDS: 8, "0": [0, 0, 0, 3, 0, 1, 1]}}])
    with pytest.raises(FLAVA.ConfigError) as caught:
        FLAVA.resumed_data_checks(cfg.data, data, [{"data": {STREAM_SHARDS: 7, "0": [0, 0, 0, 3, 0, 1, 1]}}])
    assert str(caught.value).startswith(
        "key 'data.files.pairs_shards': expected the 7 shards the checkpoint's stream was dealt from, since each "
        "epoch deals a permutation of them seeded by their number"
    )
    assert str(caught.value).endswith("got '8 shards'")


def test_every_pretraining_data_path_typed_with_a_tilde_is_the_home_directorys(shards, tmp_path, monkeypatch):
    """~ kept as typed (a YAML file, a quoted override) was taken literally: shards at '~/shards/{00..07}.tar' were
    'no such file', a vocabulary or captions file refused as missing. Every data path key expands it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "shards").symlink_to(shards)
    keys = ["pairs_root", "pairs_captions", "pairs_shards"]
    for recipe, more in ((CLIP, []), (FLAVA, ["images_root", "texts"])):
        cfg = load_config(recipe.TrainConfig, [f"data.files.{key}=~/{key}" for key in keys + more] + ["data.vocab=~/v"])
        assert {key: getattr(cfg.data.files, key) for key in keys + more} == {k: f"{tmp_path}/{k}" for k in keys + more}
        assert cfg.data.vocab == f"{tmp_path}/v"
    cfg = load_config(
        FLAVA.TrainConfig,
        [f"config={FLAVA_DEBUG}", *STREAM, "data.files.pairs_shards=~/shards/pairs-{00..07}.tar"]
        + [f"training.output_dir={tmp_path / 'run'}", "data.num_workers=2", "training.strategy=ddp"],
    )
    FLAVA.validate(cfg, 2)  # 8 shards for 2 ranks x 2 workers
    assert cfg.data.files.pairs_shards == f"{tmp_path}/shards/pairs-{{00..07}}.tar"


@pytest.mark.parametrize("count", [2, 50])
def test_shards_that_give_no_sample_are_named_not_data_vocab_when_the_vocabulary_is_learnt(tmp_path, count):
    """Streamed shards that could not be read, and no data.vocab: the vocabulary learnt from their captions was
    refused naming data.vocab ('none given and the data holds no text'), the real fault unsaid."""
    for index in range(count):
        (tmp_path / f"bad-{index:02d}.tar").write_bytes(b"not a tar")
    pattern = f"{tmp_path}/bad-{{00..{count - 1:02d}}}.tar"
    for recipe, config in ((CLIP, CLIP_DEBUG), (FLAVA, FLAVA_DEBUG)):
        overrides = [f"config={config}", *STREAM, f"data.files.pairs_shards={pattern}", "training.max_steps=2"]
        overrides += ["optim.warmup_steps=0", f"training.output_dir={tmp_path / 'run'}"]
        with pytest.raises(recipe.ConfigError) as caught:
            recipe.main(load_config(recipe.TrainConfig, overrides))
        reason = f"none of the {count} shard(s) gave a sample" if count == 2 else "50 shards in a row could not be read"
        assert str(caught.value).startswith(
            f"key 'data.files.pairs_shards': expected shards to stream, got '{pattern}' (shards: {reason} (shard "
            "unreadable after 0 sample(s): ReadError: "
        )
        assert not (tmp_path / "run").exists()


def test_data_num_workers_is_bounded_before_any_worker_is_started(tmp_path):
    """data.num_workers=100000 forked loader workers until the machine died."""
    cores = len(os.sched_getaffinity(0))  # (what torch's loader counts)
    bound = max(32, 4 * cores)
    for recipe, config in ((CLIP, CLIP_DEBUG), (FLAVA, FLAVA_DEBUG)):
        for streamed in ([], STREAM):
            overrides = [f"config={config}", *streamed, f"data.num_workers={bound}"]
            if not streamed:  # (the bound itself passes; a stream would need as many shards)
                recipe.validate(load_config(recipe.TrainConfig, [*overrides, f"training.output_dir={tmp_path}"]), 1)
            overrides[-1] = f"data.num_workers={bound + 1}"
            cfg = load_config(recipe.TrainConfig, [*overrides, f"training.output_dir={tmp_path / 'run'}"])
            with pytest.raises(recipe.ConfigError) as caught:
                recipe.validate(cfg, 1)
            assert str(caught.value) == (
                f"key 'data.num_workers': expected in [0, {bound}] (loader worker processes per rank: at most 4 x "
                f"the {cores} cores this process may use, or 32; more only oversubscribe them), got {bound + 1}"
            )
    assert not (tmp_path / "run").exists()
