"""The pretraining recipes on image-caption pairs in a parquet file (as the Hugging Face Hub serves one, each row an
image's bytes and its caption) through ``data.files.pairs_captions``: the same losses as the same pairs in a
.jsonl, DataLoader workers included, and a run killed after a step resumes to the uninterrupted losses."""

import io
import json
from pathlib import Path
import signal

import pytest

from tests.examples.fault_runner import run_script

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

REPO = Path(__file__).resolve().parents[2]
CLIP = REPO / "examples" / "clip" / "configs" / "debug.yaml"
COMMON = ["data.source=files", "training.max_steps=4", "training.checkpoint_every=2", "training.keep_checkpoints=1"]
COMMON += ["training.log_every=1", "training.resume=auto", "optim.warmup_steps=0", "eval.enabled=false"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """40 shapes scenes as a Hugging Face image-caption parquet file (row groups of 7 rows) and as a .jsonl of the
    same pairs, their PNG files under ``img/``: (parquet file, jsonl file, image folder)."""
    from torchflava.data.shapes import ShapesWorld

    folder = tmp_path_factory.mktemp("pairs")
    (folder / "img").mkdir()
    world = ShapesWorld("pairs", 40, image_size=32)
    encoded, captions = [], []
    for i in range(40):
        buffer = io.BytesIO()
        world[i].image.save(buffer, "PNG")
        encoded.append(buffer.getvalue())
        captions.append(world.caption(i))
        (folder / "img" / f"{i:02d}.png").write_bytes(buffer.getvalue())
    lines = [json.dumps({"image": f"{i:02d}.png", "caption": c}) + "\n" for i, c in enumerate(captions)]
    (folder / "pairs.jsonl").write_text("".join(lines))
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {"image": pa.array([{"bytes": b, "path": None} for b in encoded], image), "caption": pa.array(captions)}
    )
    features = {"image": {"_type": "Image"}, "caption": {"dtype": "string", "_type": "Value"}}
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, folder / "pairs.parquet", row_group_size=7)
    return folder / "pairs.parquet", folder / "pairs.jsonl", folder / "img"


def _losses(output_dir: Path) -> dict:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, filter(str.strip, lines))}


def _run(recipe: str, config: Path, out: Path, *overrides: str, point: str = "none", n: int = 0):
    arguments = [f"config={config}", *COMMON, f"training.output_dir={out}", *overrides]
    return run_script(recipe, arguments, point, n)


def test_clip_on_parquet_pairs_trains_as_the_same_jsonl_pairs_and_resumes_exactly(pairs, tmp_path):
    parquet, jsonl, images = pairs
    recipe = "examples/clip/train.py"
    from_jsonl = _run(
        recipe, CLIP, tmp_path / "jsonl", f"data.files.pairs_captions={jsonl}", f"data.files.pairs_root={images}"
    )
    assert from_jsonl.returncode == 0, from_jsonl.stderr[-3000:]
    given = [f"data.files.pairs_captions={parquet}", "data.num_workers=2"]
    reference = _run(recipe, CLIP, tmp_path / "parquet", *given)
    assert reference.returncode == 0, reference.stderr[-3000:]
    losses = _losses(tmp_path / "parquet")
    assert losses == _losses(tmp_path / "jsonl") and max(losses) == 4  # the same pairs, batch for batch
    killed = _run(recipe, CLIP, tmp_path / "killed", *given, point="after_optimizer_step", n=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert max(_losses(tmp_path / "killed")) < 4  # (killed after step 3's update, before its log)
    resumed = _run(recipe, CLIP, tmp_path / "killed", *given)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _losses(tmp_path / "killed") == losses  # exactly, step for step


def test_clip_on_the_train_rows_of_a_parquet_split_column_trains_as_those_pairs(pairs, tmp_path):
    """data.files.pairs_split keeps the rows of a parquet file's split column (ImageTextFolder's split, Flickr30k's
    layout on the Hub); the recipes refused it for any file but a Karpathy .json ('splits are those of Karpathy's
    split files')."""
    parquet, jsonl, images = pairs
    table = pq.read_table(parquet)
    split = ["train" if i % 3 else "test" for i in range(len(table))]
    pq.write_table(table.append_column("split", pa.array(split)), tmp_path / "split.parquet", row_group_size=7)
    lines = jsonl.read_text().splitlines(keepends=True)
    (tmp_path / "train.jsonl").write_text("".join(line for line, s in zip(lines, split) if s == "train"))
    recipe, steps = "examples/clip/train.py", ["training.max_steps=2"]
    kept = _run(
        recipe,
        CLIP,
        tmp_path / "split",
        f"data.files.pairs_captions={tmp_path / 'split.parquet'}",
        *steps,
        "data.files.pairs_split=[train]",
    )
    assert kept.returncode == 0, kept.stderr[-3000:]
    train = _run(
        recipe,
        CLIP,
        tmp_path / "train",
        f"data.files.pairs_captions={tmp_path / 'train.jsonl'}",
        f"data.files.pairs_root={images}",
        *steps,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert _losses(tmp_path / "split") == _losses(tmp_path / "train") and len(_losses(tmp_path / "train")) == 2
    unknown = _run(
        recipe,
        CLIP,
        tmp_path / "unknown",
        f"data.files.pairs_captions={tmp_path / 'split.parquet'}",
        *steps,
        "data.files.pairs_split=[val]",
    )
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: key 'data.files.pairs_split': expected")
    assert "expected splits of the files (test, train), got ['val']" in unknown.stderr


RECIPES = {"clip": ("examples/clip/train.py", CLIP)}
RECIPES["flava"] = ("examples/flava/train.py", REPO / "examples" / "flava" / "configs" / "pretraining" / "debug.yaml")


def _recipe(name: str):
    from tests.helpers import load_recipe

    return load_recipe(RECIPES[name][0], f"parquet_pairs_{name}")


def _load(module, out: Path, *overrides: str):
    from torchflava.training.config import load_config

    config = CLIP if module.__name__.endswith("clip") else RECIPES["flava"][1]
    arguments = [f"config={config}", *COMMON, "training.max_steps=2", f"training.output_dir={out}"]
    return load_config(module.TrainConfig, [*arguments, *overrides])


def _main(name: str, out: Path, *overrides: str):
    module = _recipe(name)
    return module, module.main(_load(module, out, *overrides))


@pytest.fixture(scope="module")
def shards(pairs, tmp_path_factory):
    """The 40 rows of ``pairs`` as the Hub serves a split, ``data/train-0000i-of-00004.parquet`` (10 rows each, in
    order), with a ``split`` column (every 4th row ``test``) in ``split/``: (data folder, split folder)."""
    folder = tmp_path_factory.mktemp("shards")
    table = pq.read_table(pairs[0])
    split = pa.array(["test" if i % 4 == 0 else "train" for i in range(len(table))])
    for name, whole in (("data", table), ("split", table.append_column("split", split))):
        (folder / name).mkdir()
        for shard in range(4):
            part = whole.slice(10 * shard, 10)
            pq.write_table(part, folder / name / f"train-{shard:05d}-of-00004.parquet", row_group_size=7)
    return folder / "data", folder / "split"


def test_the_shards_of_a_split_train_as_their_rows_in_one_file_given_as_a_glob_a_folder_or_a_list(
    pairs, shards, tmp_path, capsys
):
    """data.files.pairs_captions=/data/coco/data/train-*.parquet (a split as the Hub serves it) was refused as no
    existing file, a folder of shards and a list of them alike: now every shard is read, in order (the pairs of the
    one file of their rows), and a shard left out of the split is warned of as the evaluation commands warn of it."""
    from torchflava.training.config import load_config
    from torchflava.training.schema import pair_file_checks, raise_on_failed_checks

    data, module = shards[0], _recipe("clip")

    def read(value) -> list:  # the captions keys checked as validate checks them, then the pairs trained on
        arguments = [f"config={CLIP}", *COMMON, f"data.files.pairs_captions={value}"]
        cfg = load_config(module.TrainConfig, [*arguments, f"training.output_dir={tmp_path / 'run'}"])
        f = cfg.data.files
        raise_on_failed_checks(
            pair_file_checks("data.files", f.pairs_shards, f.pairs_root, f.pairs_captions, required=True)
        )
        pairs = module.build_pairs(cfg.data)
        return [(pairs.caption(i), pairs[i].image.tobytes()) for i in range(len(pairs))]

    one = read(pairs[0])
    listed = ",".join(str(data / f"train-{i:05d}-of-00004.parquet") for i in range(4))
    for value in (data / "train-*.parquet", data, f"[{listed}]"):
        assert read(value) == one and len(one) == 40, value
    part = ",".join(str(data / f"train-{i:05d}-of-00004.parquet") for i in (0, 2))
    capsys.readouterr()
    for recipe in ("clip", "flava"):
        _main(recipe, tmp_path / f"part_{recipe}", f"data.files.pairs_captions=[{part}]", "training.max_steps=1")
        assert (
            f"warning: 2 of the 4 files {data}/train-*-of-00004.parquet given, their images read: 00001, 00003 absent\n"
            in capsys.readouterr().err
        )


@pytest.mark.parametrize("recipe", ["clip", "flava"])
def test_a_glob_matching_nothing_or_other_files_too_is_refused_naming_the_key(recipe, shards, tmp_path):
    data = shards[0]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "train-00000-of-00001.parquet").write_bytes((data / "train-00000-of-00004.parquet").read_bytes())
    (mixed / "train-info.json").write_text("{}")
    both = tmp_path / "both"  # (a download's data/: data/*.parquet trained on the test split, as the folder is refused)
    both.mkdir()
    (tmp_path / "empty").mkdir()
    for split in ("test", "train"):
        (both / f"{split}-00000-of-00001.parquet").write_bytes((data / "train-00000-of-00004.parquet").read_bytes())
    expected = (
        "key 'data.files.pairs_captions': expected an existing captions file, or parquet files: a glob pattern of "
        "them (data/train-*.parquet), a folder holding them or a list of them, got "
    )
    cases = [
        (data / "test-*.parquet", f"'{data}/test-*.parquet (a pattern matching no file)'"),
        (
            mixed / "train-*",
            f"'{mixed}/train-* (it matches 1 file(s) other than parquet, {mixed}/train-info.json: give parquet files)'",
        ),
        (
            f"[{mixed}/train-00000-of-00001.parquet,{mixed}/train-info.json]",
            f"\"['{mixed}/train-00000-of-00001.parquet', '{mixed}/train-info.json'] ({mixed}/train-info.json: not a "
            '.parquet file (a list is of parquet files))"',
        ),
        (both.parent / "empty", f"'{tmp_path}/empty (a folder holding no .parquet file)'"),
        (  # (a download's root: its shards in a sub-folder, as the evaluation commands say)
            tmp_path,
            f"'{tmp_path} (a folder holding no .parquet file; it holds them in both/ (test-00000-of-00001.parquet...): "
            f"give them, e.g. {both}/test-*.parquet)'",
        ),
        (
            both / "*.parquet",
            f"'{both}/*.parquet (it matches the shards of 2 splits (test, train): give one, e.g. {both}/train-*.parquet "
            "(a list of patterns to train on several))'",
        ),
    ]
    module = _recipe(recipe)
    for value, got in cases:
        with pytest.raises(module.ConfigError) as caught:
            _main(recipe, tmp_path / "run", f"data.files.pairs_captions={value}")
        assert str(caught.value) == expected + got
        assert not (tmp_path / "run").exists()
    from torchflava.training.schema import captions_paths_fault  # (both splits named, one pattern each: meant)

    assert captions_paths_fault([str(both / "train-*.parquet"), str(both / "test-*.parquet")]) is None


def test_a_resume_on_a_glob_that_matches_another_shard_is_refused(shards, tmp_path):
    """The checkpoint records the pairs of every shard read: a shard added to the glob's folder changes them."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"train-{i:05d}-of-00004.parquet").write_bytes(
            (shards[0] / f"train-{i:05d}-of-00004.parquet").read_bytes()
        )
    given = [f"data.files.pairs_captions={data}/train-*.parquet", "training.checkpoint_every=2"]
    _main("clip", tmp_path / "run", *given)
    (data / "train-00003-of-00004.parquet").write_bytes((shards[0] / "train-00003-of-00004.parquet").read_bytes())
    module = _recipe("clip")
    with pytest.raises(module.ConfigError) as caught:
        _main("clip", tmp_path / "run", *given, "training.max_steps=4")
    assert str(caught.value).startswith(
        "key 'data.files.pairs_captions': expected the 30 pairs the checkpoint was trained on"
    ), caught.value
    assert str(caught.value).endswith("got '40 items'")


@pytest.mark.parametrize("recipe", ["clip", "flava"])
def test_parquet_files_of_several_splits_without_pairs_split_are_refused_naming_their_splits(recipe, shards, tmp_path):
    """A split column (Flickr30k's layout on the Hub) read with data.files.pairs_split null trained on every row, the
    test images the retrieval benchmarks score among them, without a word; a Karpathy file is refused so."""
    module = _recipe(recipe)
    given = f"data.files.pairs_captions={shards[1]}"
    with pytest.raises(module.ConfigError) as caught:
        _main(recipe, tmp_path / "every", given)
    assert str(caught.value) == (
        "key 'data.files.pairs_split': expected the splits of the parquet files' split column to train on, among "
        "[test, train] (null trained on every split, the test images included: name them all to mean it), got None"
    )
    assert not (tmp_path / "every").exists()
    _main(recipe, tmp_path / "all", given, "data.files.pairs_split=[train,test]")
    assert len(_losses(tmp_path / "all")) == 2


def test_a_clip_run_on_every_split_started_before_the_refusal_still_resumes(shards, tmp_path, monkeypatch, capsys):
    """A run started with pairs_split null before such runs were refused resumes on what it trained on (naming
    every split would be refused by the resume as a changed key), saying so."""
    module = _recipe("clip")
    given = [f"data.files.pairs_captions={shards[1]}", "training.checkpoint_every=2"]
    with monkeypatch.context() as before:  # the run as the recipe started it then
        before.setattr(module, "every_split_error", lambda *arguments: None)
        module.main(_load(module, tmp_path / "run", *given))
    capsys.readouterr()
    module.main(_load(module, tmp_path / "run", *given, "training.max_steps=4"))
    assert sorted(_losses(tmp_path / "run")) == [1, 2, 3, 4]
    assert (
        "data.files.pairs_split: null, this run trains on every split of the parquet files' split column, its test "
        "images included (kept on resume; a new run names the splits, among [test, train])\n"
    ) in capsys.readouterr().err


def test_a_recursive_glob_under_a_folder_linked_back_up_is_checked_at_once(shards, tmp_path):
    """``data.files.pairs_captions=<root>/**/*.parquet`` where the folder holds two links back up: the recipes' check
    listed every match with glob.glob (each link followed 40 levels deep, 2**40 paths: a hang before any work),
    where the reader walks each real folder once; ``pairs_shards``' check of such a glob matching no tar file hung
    alike. Both now answer as the reader does: the 40 rows of the 4 shards, each once; no tar file, refused."""
    from torchflava.training.config import load_config
    from torchflava.training.schema import pair_file_checks, raise_on_failed_checks

    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    for shard in shards[0].iterdir():
        (root / "data" / shard.name).write_bytes(shard.read_bytes())
    (root / "data" / "up").symlink_to("..")
    (root / "data" / "up2").symlink_to("..")
    module = _recipe("clip")

    class Hung(Exception):
        pass

    def timeout(*arguments):
        raise Hung("the check did not end in 30 s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(30)
    try:
        captions = f"{root}/**/*.parquet"
        cfg = load_config(module.TrainConfig, [f"config={CLIP}", *COMMON, f"data.files.pairs_captions={captions}"])
        f = cfg.data.files
        raise_on_failed_checks(pair_file_checks("data.files", None, None, f.pairs_captions, required=True))
        assert len(module.build_pairs(cfg.data)) == 40
        with pytest.raises(module.ConfigError, match=r"^key 'data.files.pairs_shards': expected a file or a glob"):
            raise_on_failed_checks(pair_file_checks("data.files", f"{root}/**/*.tar", None, None, required=True))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_parquet_files_that_do_not_read_as_pairs_are_refused_saying_what_parquet_files_should_be(
    pairs, shards, tmp_path
):
    """A folder of two splits' shards, files of two schemas, a pairs_root or no image column were refused as
    'expected a captions file (.jsonl, .tsv, .csv, or Karpathy's, COCO's or BLIP's .json) of absolute image paths'
    and 'the key or column of the image paths ... (a .jsonl, .csv or .tsv ...)': what a parquet file is not."""
    data = shards[0]
    two = tmp_path / "two"
    two.mkdir()
    for split in ("test", "train"):
        (two / f"{split}-00000-of-00001.parquet").write_bytes((data / "train-00000-of-00004.parquet").read_bytes())
    (tmp_path / "other").mkdir()
    pq.write_table(pq.read_table(pairs[0]).append_column("x", pa.array([1] * 40)), tmp_path / "other" / "x.parquet")
    pq.write_table(pa.table({"caption": ["a", "b"]}), tmp_path / "captions.parquet")
    module = _recipe("clip")
    files = "parquet files of one schema, an image and its caption(s) in each row"
    cases = [
        (
            [f"data.files.pairs_captions={two}"],
            f"key 'data.files.pairs_captions': expected {files}, got '{two}' (captions: {two} holds the parquet files "
            f"of 2 splits (test, train): give one, e.g. {two}/train-*.parquet)",
        ),
        (
            [f"data.files.pairs_captions=[{pairs[0]},{tmp_path / 'other' / 'x.parquet'}]"],
            f"key 'data.files.pairs_captions': expected {files}, got ['{pairs[0]}', '{tmp_path}/other/x.parquet'] "
            "(captions: expected files of one schema, got",
        ),
        (
            [f"data.files.pairs_captions={pairs[0]}", f"data.files.pairs_root={tmp_path}"],
            "key 'data.files.pairs_root': expected null for parquet data.files.pairs_captions, whose rows hold their "
            f"images, got '{tmp_path}' (root must be None for a .parquet captions file, which holds its images)",
        ),
        (
            [f"data.files.pairs_captions={tmp_path / 'captions.parquet'}"],
            "key 'data.files.pairs_image_key': expected null, or the column of the images in the parquet files of "
            "data.files.pairs_captions, got None (image_key: expected an image column",
        ),
    ]
    for overrides, message in cases:
        with pytest.raises(module.ConfigError) as caught:
            _main("clip", tmp_path / "run", *overrides)
        assert str(caught.value).startswith(message), caught.value
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change", ["rename", "swap"])
def test_a_resume_on_a_glob_whose_shard_was_renamed_or_swapped_for_as_many_rows_is_refused(change, shards, tmp_path):
    """The checkpoint recorded the number of pairs alone: a shard renamed (its rows now first in the order) or
    swapped for another shard of as many rows resumed on other items at each index of the pass, some drawn twice
    and others never, without a word. The files read, by name, rows and size, are recorded and compared now."""
    data = tmp_path / "data"
    data.mkdir()
    for i, name in enumerate(("b", "c", "d")):
        (data / f"{name}.parquet").write_bytes((shards[0] / f"train-{i:05d}-of-00004.parquet").read_bytes())
    given = [f"data.files.pairs_captions={data}/*.parquet", "training.checkpoint_every=2"]
    _main("clip", tmp_path / "run", *given)
    if change == "rename":
        (data / "d.parquet").rename(data / "a.parquet")
    else:
        (data / "d.parquet").write_bytes((shards[0] / "train-00003-of-00004.parquet").read_bytes())
    module = _recipe("clip")
    with pytest.raises(module.ConfigError) as caught:
        _main("clip", tmp_path / "run", *given, "training.max_steps=4")
    message = str(caught.value)
    assert message.startswith(
        "key 'data.files.pairs_captions': expected the parquet files the checkpoint was trained on (3 files, sha1 "
    ), message
    assert ": by name, rows and size), since a resumed run draws item i of the pass from where it was" in message
    assert message.endswith("got '3 files, sha1 " + message.split("got '3 files, sha1 ")[1]) and "; restore" in message
    if change == "rename":  # (named back: the run resumes as it was)
        (data / "a.parquet").rename(data / "d.parquet")
        _main("clip", tmp_path / "run", *given, "training.max_steps=4")
        assert sorted(_losses(tmp_path / "run")) == [1, 2, 3, 4]
