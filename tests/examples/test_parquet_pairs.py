"""The pretraining recipes on image-caption pairs in a parquet file (as the Hugging Face Hub serves one, each row an
image's bytes and its caption) through ``data.files.pairs_captions``: the same losses as the same pairs in a
.jsonl, DataLoader workers included, and a run killed after a step resumes to the uninterrupted losses."""

import io
import json
from pathlib import Path
import signal

import pytest

from tests.examples.test_fault_injection import run_with_fault

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
    return run_with_fault(recipe, arguments, point, n)


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
