"""Streamed shards (torchflava/data/streaming.py): shards written with webdataset.ShardWriter, read as
local paths, brace patterns, `pipe:cat`, loopback HTTP and `.tar.gz`; the split over 2 ranks x 2 loader
workers reads every sample exactly once per epoch; a restarted stream continues exactly; bad samples and
broken shards are counted."""

import collections
import gzip
import io
import os
from pathlib import Path
import shutil
import signal
import time

import numpy as np
from PIL import Image
import pytest
import torch
from torch.utils.data import DataLoader
import webdataset as wds

from tests.helpers import served_directory
from torchflava.data.mixing import SOURCE_SIZES, MixedBatches, data_loss_report
from torchflava.data.samples import Sample
from torchflava.data.streaming import (
    STREAM_SHARDS,
    BrokenStream,
    StreamedSource,
    StreamingBatches,
    StreamingConfig,
    broken_stream_reason,
    expand_shards,
    raw_samples,
    shard_texts,
    slot_positions,
    streaming_checks,
    url_scheme,
)


def png(index: int, size: int = 8) -> bytes:
    """A small PNG whose colour encodes ``index``."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (index % 256, (index * 7) % 256, 50)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(root: Path, *, shards: int, per_shard: int, suffix: str = ".tar") -> list[str]:
    """``shards`` shards of ``per_shard`` samples (key ``s00007``, a PNG and a caption ``caption 7``)."""
    root.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(root / f"shard-%03d{suffix}"), maxcount=per_shard, verbose=0) as writer:
        for index in range(shards * per_shard):
            writer.write({"__key__": f"s{index:05d}", "png": png(index), "txt": f"caption {index}"})
    return sorted(str(path) for path in root.glob(f"shard-*{suffix}"))


def captions(kind, samples, seeds, *, another=None):
    """A collator that keeps what the tests look at: the captions and the seeds."""
    assert all(sample.image is not None and sample.image.size == (8, 8) for sample in samples)
    return {"texts": [sample.text for sample in samples], "seeds": list(seeds)}


def stream(spec, **kwargs) -> StreamingBatches:
    options = dict(batch_size=5, seed=3, shuffle_buffer=4)
    options.update(kwargs)
    return StreamingBatches(spec, captions, **options)


def items(data: StreamingBatches, count: int, *, num_workers: int = 0) -> list:
    loader = DataLoader(data, batch_size=None, num_workers=num_workers, collate_fn=lambda item: item)
    iterator = iter(loader)
    try:
        return [next(iterator) for _ in range(count)]
    except Exception as error:  # its traceback held the loader's workers until a collection (5 s to stop)
        raise error.with_traceback(None) from None
    finally:
        del iterator


def texts(batches) -> list[str]:
    return [text for item in batches for text in item.batch["texts"]]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_shards(root, shards=8, per_shard=5)
    return root


ALL = sorted(f"caption {i}" for i in range(40))


def test_brace_pattern_glob_and_list_expand_to_the_shards(shard_dir):
    pattern = str(shard_dir / "shard-{000..007}.tar")
    assert expand_shards(pattern) == [str(shard_dir / f"shard-{i:03d}.tar") for i in range(8)]
    assert expand_shards(str(shard_dir / "shard-00[0-2].tar")) == expand_shards(str(shard_dir / "shard-{000..002}.tar"))
    assert expand_shards(["pipe:cat a-{0..1}.tar", "https://h/x.tar"]) == [
        "pipe:cat a-0.tar",
        "pipe:cat a-1.tar",
        "https://h/x.tar",
    ]
    assert [url_scheme(u) for u in ("s3://b/k.tar", "pipe:cat x", "/a/b.tar", "gs://b/x")] == ["s3", "pipe", "", "gs"]
    with pytest.raises(FileNotFoundError, match=r"shards: '.*shard-008.tar' is not a file"):
        expand_shards(str(shard_dir / "shard-{007..009}.tar"))
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_shards(str(shard_dir / "none-*.tar"))
    with pytest.raises(TypeError, match="shards must be a string or a list of strings, got 3"):
        expand_shards(3)


def test_a_shard_whose_name_holds_glob_characters_is_read_as_named(shard_dir, tmp_path):
    """A shard path with ``[`` in it (``laion[en]/...``) was taken for a glob, whose character class matched
    no file: a stream refused shards that TarShards and the recipes' path checks read."""
    folder = tmp_path / "laion[en]"
    folder.mkdir()
    for index in (0, 1):
        shutil.copy(shard_dir / f"shard-00{index}.tar", folder / f"shard-00{index}.tar")
    assert expand_shards(str(folder / "shard-{000..001}.tar")) == [str(folder / f"shard-00{i}.tar") for i in (0, 1)]
    assert texts(items(stream(str(folder / "shard-000.tar"), shuffle_buffer=0), 1)) == [
        f"caption {i}" for i in range(5)
    ]
    assert expand_shards(str(shard_dir / "shard-00[6-7].tar")) == [str(shard_dir / f"shard-00{i}.tar") for i in (6, 7)]


@pytest.mark.parametrize("name", ["p.tar.gz", "p.tgz", "p.tar.bz2", "p.tar.xz", "shard-*.tar.xz"])
def test_compressed_shards_without_streaming_point_to_it(name):
    """A .tar.bz2 or .tar.xz (read by a stream, as a .tar.gz) given without data.streaming.enabled was refused
    as "not an uncompressed tar" when indexed, without the pointer a .tar.gz has."""
    checks = streaming_checks(
        StreamingConfig(enabled=False), source="files", shards=f"/data/{name}", world_size=1, num_workers=0
    )
    assert [(key, expected, got) for ok, key, expected, got in checks if not ok] == [
        (
            "data.files.pairs_shards",
            "local uncompressed tar files (a path or glob); URLs, brace patterns and .tar.gz need "
            "data.streaming.enabled=true",
            f"/data/{name}",
        )
    ]
    assert all(
        ok
        for ok, *_ in streaming_checks(
            StreamingConfig(), source="files", shards="/d/p.tar", world_size=1, num_workers=0
        )
    )


def test_unshuffled_stream_reads_the_shards_in_order(shard_dir):
    data = stream(str(shard_dir / "shard-{000..007}.tar"), shuffle_buffer=0)
    first = items(data, 9)  # 45 samples: the 40 of epoch 0, then epoch 1 starts again at the first
    assert texts(first) == [f"caption {i}" for i in range(40)] + [f"caption {i}" for i in range(5)]
    assert first[0].keys == [f"{shard_dir}/shard-000.tar:s{i:05d}" for i in range(5)]
    assert slot_positions(first[-1].position) == {"0": [1, 5, 0, 5, 0, 9, 1]}  # epoch 1, next block: shard 0 from
    # its 6th sample; and the number of shards the epochs are dealt from (for a resume to check)
    assert first[-1].position[STREAM_SHARDS] == 8
    assert [item.skipped for item in first] == [[]] * 9


def test_shuffled_stream_is_seeded_and_each_epoch_is_a_permutation(shard_dir):
    spec = str(shard_dir / "shard-*.tar")
    first, again = texts(items(stream(spec), 16)), texts(items(stream(spec), 16))
    assert first == again  # the seed fixes the order
    assert sorted(first[:40]) == ALL and sorted(first[40:]) == ALL  # two epochs, each sample once in each
    assert first[:40] != [f"caption {i}" for i in range(40)] and first[:40] != first[40:]
    assert texts(items(stream(spec, seed=4), 8)) != first[:40]


def test_two_ranks_by_two_workers_read_each_sample_once_per_epoch(shard_dir):
    """8 shards over 4 slots: each slot reads 2 shards (10 samples, 2 batches) per epoch."""
    spec = str(shard_dir / "shard-{000..007}.tar")
    seen = {0: collections.Counter(), 1: collections.Counter()}
    for rank in (0, 1):
        batches = items(stream(spec, rank=rank, world_size=2, num_workers=2), 8, num_workers=2)
        slots = [next(iter(slot_positions(item.position))) for item in batches]
        assert slots == [str(2 * rank + w) for w in (0, 1)] * 4  # the loader alternates its workers
        epoch_of = [0, 0, 0, 0, 1, 1, 1, 1]  # batches 1-2 of each worker are epoch 0, 3-4 epoch 1
        for item, epoch in zip(batches, epoch_of):
            seen[epoch].update(item.batch["texts"])
    for epoch in (0, 1):
        assert sorted(seen[epoch]) == ALL and set(seen[epoch].values()) == {1}, epoch


@pytest.mark.parametrize("resampled", [False, True], ids=["epochs", "resampled"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_restarted_stream_continues_exactly(shard_dir, resampled, num_workers):
    """Positions merged from the batches consumed (as the training loop checkpoints them) restart every
    worker's stream inside its shuffled block: the batches that follow are the uninterrupted ones."""
    spec = str(shard_dir / "shard-*.tar")
    options = dict(batch_size=3, shuffle_buffer=7, resampled=resampled, num_workers=num_workers)
    reference = items(stream(spec, **options), 23, num_workers=num_workers)
    for done in (5, 14):  # odd: the next batch is the second worker's turn
        position: dict = {}
        for item in reference[:done]:
            position.update(item.position)
        restarted = stream(spec, **options)
        restarted.load_state_dict(position)
        rest = items(restarted, 23 - done, num_workers=num_workers)
        assert [item.batch for item in rest] == [item.batch for item in reference[done:]]  # texts and seeds
        assert [item.keys for item in rest] == [item.keys for item in reference[done:]]


def test_a_sample_whose_key_holds_a_dot_names_the_members_found(tmp_path):
    """webdataset keys end at a member name's first dot: ``photo.v2.png`` is extension ``v2.png``. The stream's
    refusal of such shards said only "no image and no text member"; it names what the sample holds."""
    root = tmp_path / "dots"
    root.mkdir()
    with wds.TarWriter(str(root / "a.tar")) as writer:
        for index in range(3):
            writer.write({"__key__": f"photo{index}", "v2.png": png(index), "v2.txt": f"caption {index}"})
    data = stream(str(root / "a.tar"), batch_size=1)
    assert data.unusable_start() == (
        f"none of the first 3 samples of slot 0's shards decodes; the first: {root}/a.tar:photo0: no image and no "
        "text member (its other members' extensions: v2.png, v2.txt; a key ends at the member name's first dot, "
        "so a key with a dot gives such extensions)"
    )


def test_a_restart_on_more_shards_is_told_apart(shard_dir, tmp_path):
    """Each epoch deals a permutation seeded by the number of shards: restarted from the same positions on a
    glob that now matches one more shard, the stream read other samples (some of the epoch twice) unseen.
    The positions carry the number, and changed_shards tells the change (a recipe refuses the resume)."""
    spec = str(shard_dir / "shard-*.tar")
    reference = items(stream(spec, batch_size=3, shuffle_buffer=7), 10)
    position: dict = {}
    for item in reference[:4]:
        position.update(item.position)
    assert position[STREAM_SHARDS] == 8 and stream(spec).changed_shards(position) is None
    grown = tmp_path / "grown"
    shutil.copytree(shard_dir, grown)
    write_shards(tmp_path / "extra", shards=1, per_shard=5)
    shutil.copy(tmp_path / "extra" / "shard-000.tar", grown / "shard-008.tar")
    restarted = stream(str(grown / "shard-*.tar"), batch_size=3, shuffle_buffer=7)
    assert restarted.changed_shards(position) == (8, 9)
    restarted.load_state_dict(position)  # (what the check is for: the positions load, and read other samples)
    assert [item.keys for item in items(restarted, 6)] != [item.keys for item in reference[4:]]
    assert restarted.changed_shards({}) is None  # a checkpoint from before positions gave the number


def test_positions_of_another_worker_count_are_refused(shard_dir):
    data = stream(str(shard_dir / "shard-*.tar"), num_workers=2)
    with pytest.raises(ValueError, match=r"^num_workers: .* for 1 loader worker slot\(s\) per rank .* has 2"):
        data.load_state_dict({"0": [0, 1, 0, 3, 0, 1, 1]})


def test_positions_recorded_before_the_shard_count_was_restart_the_stream_alike(shard_dir):
    """A checkpoint written before batches gave the number of shards holds the slots' positions alone: it
    loads, nothing is told changed, and the stream continues as from the positions with the count."""
    spec = str(shard_dir / "shard-*.tar")
    reference = items(stream(spec, batch_size=3), 6)
    position: dict = {}
    for item in reference[:2]:
        position.update(item.position)
    old = slot_positions(position)
    assert STREAM_SHARDS not in old and stream(spec).changed_shards(old) is None
    restarted = stream(spec, batch_size=3)
    restarted.load_state_dict(old)
    assert [item.keys for item in items(restarted, 4)] == [item.keys for item in reference[2:]]


def test_a_resume_on_more_workers_is_refused_as_such_before_the_shard_bound(shard_dir):
    """One worker's slot 0 dealt from all 8 shards can stand at shard 6; with 2 workers slot 0 has 4 shards an
    epoch, and the shard bound refused the position first ("state: ...", which the loop names training.resume),
    hiding that the run was resumed on another number of loader workers (data.num_workers)."""
    data = stream(str(shard_dir / "shard-*.tar"), num_workers=2)
    with pytest.raises(
        ValueError, match=r"^num_workers: .* for 1 loader worker slot\(s\) per rank \(slot 0\), .* has 2"
    ):
        data.load_state_dict({STREAM_SHARDS: 8, "0": [0, 7, 6, 3, 0, 7, 1]})


@pytest.mark.parametrize(
    "position, match",
    [
        ([0, 0, 99, 0, 0, 1, 1], r"slot 0 has \d+ shard\(s\) an epoch, its position names shard 99"),  # skipped epoch 0
        ([0, 0, 0, -3, 0, 1, 1], r"expected positions of 7 ints >= 0"),
        (5, r"expected positions of 7 ints >= 0, got 5"),  # len() of an int
        ([0, 0, "a", 0, 0, 1, 1], r"expected positions of 7 ints >= 0"),
    ],
)
def test_impossible_positions_are_refused(shard_dir, position, match):
    data = stream(str(shard_dir / "shard-*.tar"))
    with pytest.raises(ValueError, match=match):
        data.load_state_dict({"0": position})


def test_fewer_shards_than_slots_are_refused_unless_resampled(shard_dir):
    spec = str(shard_dir / "shard-{000..002}.tar")
    with pytest.raises(ValueError, match=r"at least ranks x loader workers = 2 x 2 = 4 shards .* got 3"):
        stream(spec, rank=1, world_size=2, num_workers=2)
    resampled = stream(spec, rank=1, world_size=2, num_workers=2, resampled=True)
    assert len(texts(items(resampled, 4, num_workers=2))) == 20


def test_bad_samples_and_a_cut_shard_are_counted(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    with wds.TarWriter(str(root / "a.tar")) as writer:
        writer.write({"__key__": "good0", "png": png(0), "txt": "caption 0"})
        writer.write({"__key__": "broken", "png": b"not an image", "txt": "caption x"})
        writer.write({"__key__": "notext", "png": png(1)})
        writer.write({"__key__": "blank", "png": png(2), "txt": "   "})
        writer.write({"__key__": "good1", "png": png(3), "json": b'{"caption": "caption 3"}'})
    write_shards(tmp_path / "cut", shards=1, per_shard=6)
    whole = (tmp_path / "cut" / "shard-000.tar").read_bytes()
    (root / "b.tar").write_bytes(whole[: int(len(whole) * 0.6)])  # cut inside a member
    data = stream(str(root / "{a,b}.tar"), batch_size=2, shuffle_buffer=0)
    batches = items(data, 4)  # a: 2 good; b: 4 whole samples, the 5th cut; then epoch 1 starts again
    skipped = [entry for item in batches for entry in item.skipped]
    reasons = {index.rsplit("/", 1)[-1]: reason for _, index, reason in skipped}
    assert texts(batches)[:2] == ["caption 0", "caption 3"]
    assert "a.tar:broken" in reasons and "unreadable image" in reasons["a.tar:broken"]
    assert reasons["a.tar:notext"].endswith("no text member")
    assert "empty or missing text" in reasons["a.tar:blank"]
    # (5 read: the 4 whole ones and the cut one, counted bad below)
    assert reasons["b.tar"].startswith("shard unreadable after 5 sample(s): EOFError: the shard ends without")
    assert texts(batches)[2:] == ["caption 0", "caption 1", "caption 2", "caption 3", "caption 0", "caption 3"]
    assert reasons["b.tar:s00004"].endswith("the shard breaks off in or after this sample")
    assert data_loss_report(skipped, [])["skipped_samples"] == 5


def test_tar_gz_and_pipe_cat_shards(tmp_path, shard_dir):
    gz = write_shards(tmp_path / "gz", shards=2, per_shard=5, suffix=".tar.gz")
    assert gzip.open(gz[0]).read(1) is not None
    assert sorted(texts(items(stream(gz), 2))) == sorted(f"caption {i}" for i in range(10))
    whole = Path(gz[1]).read_bytes()
    Path(gz[1]).write_bytes(whole[: len(whole) // 2])  # a download cut in the middle
    batches = items(stream(gz, shuffle_buffer=0, batch_size=1), 7)
    assert texts(batches)[:5] == [f"caption {i}" for i in range(5)]
    skipped = dict((index.rsplit("/", 1)[-1], reason) for item in batches for _, index, reason in item.skipped)
    assert len(skipped) == 2 and "ReadError" in skipped["shard-001.tar.gz"] and gz[1] in skipped["shard-001.tar.gz"]
    cut = [reason for name, reason in skipped.items() if name.startswith("shard-001.tar.gz:")]
    assert len(cut) == 1 and cut[0].endswith("the shard breaks off in or after this sample")
    piped = stream(f"pipe:cat {shard_dir}/shard-{{000..007}}.tar", shuffle_buffer=0)
    assert texts(items(piped, 8)) == [f"caption {i}" for i in range(40)]


def cut_in_a_header(root: Path, *, samples: int) -> Path:
    """A pax tar of 4 samples (as webdataset's shards: an extended header before each member), cut
    inside the headers of the member after the ``samples``-th sample's last one."""
    import tarfile

    root.mkdir(parents=True, exist_ok=True)
    path = root / "cut.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for index in range(4):
            for name, data in ((f"s{index}.png", png(index)), (f"s{index}.txt", f"caption {index}".encode())):
                info = tarfile.TarInfo(name)
                info.size, info.pax_headers = len(data), {"comment": "x"}
                tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        next_member = tar.getmembers()[2 * samples]
    path.write_bytes(path.read_bytes()[: next_member.offset + 808])  # (in the extended header's data block)
    return path


def test_a_shard_cut_in_a_header_is_reported_once_in_one_line_with_the_samples_read(tmp_path):
    """A shard cut in a header after 2 whole samples: it was reported as "after 0 sample(s)" (the
    count lagged the reading), with the stream object's repr and address in the text, and again in
    every epoch (the address differed, so the run's de-duplication kept each)."""
    write_shards(tmp_path / "ok", shards=1, per_shard=2)
    cut = str(cut_in_a_header(tmp_path / "bad", samples=2))
    errors = []
    samples = list(raw_samples(cut, errors))
    assert [sample["__key__"] for sample in samples] == ["s0", "s1"] and "__cut__" in samples[1]
    assert [(url, count) for url, count, _ in errors] == [(cut, 2)]
    data = stream([str(tmp_path / "ok" / "shard-000.tar"), cut], batch_size=1, shuffle_buffer=0)
    batches = items(data, 8)  # 4 epochs of: 2 good samples, s0, s1 counted bad
    assert texts(batches) == ["caption 0", "caption 1", "caption 0"] * 2 + ["caption 0", "caption 1"]
    shard_lines = [reason for item in batches for _, index, reason in item.skipped if index == cut]
    assert shard_lines == [f"shard unreadable after 2 sample(s): ReadError: empty header @ {cut}"]
    skipped = [entry for item in batches for entry in item.skipped]
    report = data_loss_report(sorted(set(skipped)), [])
    assert report["skipped_samples"] == len(report["skipped_examples"]) == 2


def _damaged_at_a_header(root: Path, damage: str) -> str:
    """A shard of 6 samples (a PNG and a caption each) damaged at the header of its 5th sample's first
    member: a ``.tar.gz`` whose tar stops 100 bytes into that header (the gzip stream itself whole, as a
    ``tar | gzip`` pipeline whose tar was stopped writes it), or a ``.tar`` whose header there is corrupt."""
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for index in range(6):
            for name, data in ((f"s{index}.png", png(index)), (f"s{index}.txt", f"caption {index}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = bytearray(buffer.getvalue())
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar:
        header = tar.getmembers()[2 * 4].offset
    root.mkdir(parents=True, exist_ok=True)
    if damage == "tar.gz cut in a header":
        path = root / "cut.tar.gz"
        path.write_bytes(gzip.compress(bytes(data[: header + 100])))
    else:
        path = root / "corrupt.tar"
        data[header + 148 : header + 156] = b"0000000\0"  # (a wrong header checksum)
        path.write_bytes(bytes(data))
    return str(path)


@pytest.mark.parametrize("damage", ["tar.gz cut in a header", "corrupt header"])
def test_a_shard_that_breaks_off_at_a_header_is_reported(tmp_path, damage):
    """tarfile's stream mode ends a shard's members alike at its end-of-archive block, at the end of its data
    and at a corrupt header: a .tar.gz cut in a header (a decompressor tells no cut there) and a tar with a
    damaged header mid-shard lost their last samples without a word, as if whole (TarShards reports the
    damage)."""
    shard = _damaged_at_a_header(tmp_path, damage)
    errors: list = []
    samples = list(raw_samples(shard, errors))
    assert [sample["__key__"] for sample in samples] == ["s0", "s1", "s2", "s3"]
    assert "__cut__" in samples[3] and "__cut__" not in samples[2]  # (it may have lost members to the break)
    assert [(url, count) for url, count, _ in errors] == [(shard, 4)]
    reason = {
        "tar.gz cut in a header": "EOFError: the shard ends without tar's end-of-archive blocks: it was cut short",
        "corrupt header": "ReadError: the block at byte 8192 of the tar is not a valid header (bad checksum); "
        "the rest of the shard is lost",
    }[damage]
    batches = items(stream(shard, batch_size=3, shuffle_buffer=0), 2)
    assert texts(batches) == ["caption 0", "caption 1", "caption 2"] * 2
    assert [entry for item in batches for entry in item.skipped] == [
        ("pairs", f"{shard}:s3", f"{shard}:s3: the shard breaks off in or after this sample"),
        ("pairs", shard, f"shard unreadable after 4 sample(s): {reason} @ {shard}"),
    ]


def test_a_tar_that_ends_with_one_zero_block_keeps_its_last_sample(tmp_path):
    """tar's end-of-archive is two zero blocks, but tarfile (and TarShards) stop at the first: a shard whose
    writer wrote one lost its last sample, counted as cut, and was reported as cut short."""
    whole = Path(write_shards(tmp_path, shards=1, per_shard=3)[0]).read_bytes()
    end = len(whole.rstrip(b"\0"))
    one = tmp_path / "one.tar"
    one.write_bytes(whole[: end + (-end % 512) + 512])
    errors: list = []
    assert [(sample["__key__"], "__cut__" in sample) for sample in raw_samples(str(one), errors)] == [
        ("s00000", False),
        ("s00001", False),
        ("s00002", False),
    ]
    assert errors == []


def _cut_and_whole(root: Path) -> list[str]:
    """A whole shard of 6 samples and a shard cut inside its 5th sample's members (4 whole samples)."""
    whole = write_shards(root / "whole", shards=1, per_shard=6)[0]
    cut = root / "cut.tar"
    data = Path(write_shards(root / "to_cut", shards=1, per_shard=6)[0]).read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])  # (as in test_bad_samples_and_a_cut_shard_are_counted)
    return [whole, str(cut)]


def _recorded(batches) -> dict:
    """How many times each unusable sample or shard is recorded, by slot."""
    counts: dict = collections.Counter()
    for item in batches:
        (slot,) = slot_positions(item.position)
        counts.update((slot, index) for _, index, _ in item.skipped)
    return counts


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_cut_shard_is_recorded_once_per_run_over_epochs_and_across_a_restart(tmp_path, num_workers):
    """The cut shard and its last (partial) sample were recorded again every epoch: the loop's checkpointed
    list grew by two entries an epoch. Each is now recorded once per slot for the run, and a stream
    restarted from any batch's position records neither again nor loses either."""
    whole, cut = _cut_and_whole(tmp_path)
    assert [sample["__key__"] for sample in raw_samples(cut, [])] == [f"s0000{i}" for i in range(5)]
    options = dict(batch_size=2, shuffle_buffer=3, num_workers=num_workers)
    reference = items(stream([whole, cut], **options), 24, num_workers=num_workers)
    assert len({key for item in reference for key in item.keys}) == 10  # 4 epochs or more
    counts = _recorded(reference)
    assert set(index for _, index in counts) == {cut, f"{cut}:s00004"} and set(counts.values()) == {1}
    if num_workers == 0:  # one slot: each recorded exactly once, in its first epoch
        assert sorted(counts) == [("0", cut), ("0", f"{cut}:s00004")]
    for done in range(1, 24) if num_workers == 0 else (3, 4, 9, 10, 12):  # (loader workers start slowly)
        position: dict = {}
        for item in reference[:done]:
            position.update(item.position)
        restarted = stream([whole, cut], **options)
        restarted.load_state_dict(position)
        rest = items(restarted, 24 - done, num_workers=num_workers)
        assert [item.batch for item in rest] == [item.batch for item in reference[done:]]
        assert _recorded(reference[:done] + rest) == counts, done


def test_the_data_loss_report_quotes_each_counted_sample_once():
    """One shard reported with two reasons (two loader workers whose readings broke at different
    places): it counted once but was quoted twice, so the examples outnumbered the count."""
    skipped = [
        ("pairs", "a.tar", "shard unreadable after 1 sample(s): ReadError: empty header @ a.tar"),
        ("pairs", "a.tar", "shard unreadable after 3 sample(s): ReadError: empty header @ a.tar"),
        ("pairs", "a.tar:s1", "a.tar:s1: no text member"),
    ]
    report = data_loss_report(skipped, [])
    assert report["skipped_samples"] == 2
    assert report["skipped_examples"] == [
        "pairs[a.tar]: shard unreadable after 1 sample(s): ReadError: empty header @ a.tar",
        "pairs[a.tar:s1]: a.tar:s1: no text member",
    ]


@pytest.mark.parametrize("suffix", [".tar.bz2", ".tar.xz"])
def test_bz2_and_xz_shards_keep_their_last_sample(tmp_path, suffix):
    """webdataset writes .tar.bz2 and .tar.xz shards; their tail is compressed data, not tar's zero
    blocks: each shard's last sample was counted as cut and dropped, the shard reported as cut short."""
    whole = write_shards(tmp_path / "whole", shards=2, per_shard=3, suffix=suffix)
    assert Path(whole[0]).read_bytes()[:3] in (b"BZh", b"\xfd7z")  # compressed, as the name says
    batches = items(stream(whole, shuffle_buffer=0, batch_size=3), 3)
    assert texts(batches) == [f"caption {i}" for i in range(6)] + ["caption 0", "caption 1", "caption 2"]
    assert [item.skipped for item in batches] == [[], [], []]
    data = Path(whole[1]).read_bytes()
    Path(whole[1]).write_bytes(data[: len(data) // 2])  # a download cut in the middle: still told
    batches = items(stream(whole, shuffle_buffer=0, batch_size=1), 4)
    assert texts(batches) == ["caption 0", "caption 1", "caption 2", "caption 0"]
    skipped = [(index, reason) for item in batches for _, index, reason in item.skipped]
    assert [index for index, _ in skipped] == [whole[1]]
    assert skipped[0][1].startswith("shard unreadable after 0 sample(s): ReadError: ")


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """A directory served over HTTP on 127.0.0.1 by a thread of the test (curl must not use a proxy)."""
    root = tmp_path / "served"
    root.mkdir()
    with served_directory(root, monkeypatch) as url:
        yield root, url


def test_http_shards_with_a_brace_pattern_and_a_missing_one(http_root, shard_dir):
    root, base = http_root
    for path in sorted(shard_dir.glob("shard-*.tar"))[:4]:
        shutil.copy(path, root / path.name)
    data = stream(f"{base}/shard-{{000..004}}.tar", shuffle_buffer=0)  # shard-004 is not served: a 404
    batches = items(data, 5)
    assert texts(batches)[:20] == [f"caption {i}" for i in range(20)]
    assert texts(batches)[20:] == [f"caption {i}" for i in range(5)]  # epoch 1
    missing = [entry for item in batches for entry in item.skipped]
    assert [(kind, index) for kind, index, _ in missing] == [("pairs", f"{base}/shard-004.tar")]


def test_texts_for_a_vocabulary_and_another_row_for_negatives(shard_dir):
    data = stream(str(shard_dir / "shard-{000..007}.tar"))
    assert data.texts(7) == [f"caption {i}" for i in range(7)]  # the shards in order, no image decoded
    rows = []

    def collate(kind, samples, seeds, *, another):
        rows.append([another(row, seed, lambda source, j: source[j].text) for row, seed in enumerate(seeds)])
        return [sample.text for sample in samples]

    batch = next(iter(StreamingBatches(str(shard_dir / "shard-*.tar"), collate, batch_size=4, shuffle_buffer=0)))
    assert batch.batch == [f"caption {i}" for i in range(4)]
    assert all(other in batch.batch and other != own for own, other in zip(batch.batch, rows[0]))
    alone = StreamingBatches(str(shard_dir / "shard-*.tar"), collate, batch_size=1, shuffle_buffer=0)
    next(iter(alone))
    assert rows[1] == [None]


def test_object_store_urls_are_read_through_fsspec(shard_dir, monkeypatch):
    """s3:// and gs:// go through fsspec; its in-memory file system stands in for a store here."""
    import fsspec

    import torchflava.data.streaming as streaming

    memory = fsspec.filesystem("memory")
    for path in sorted(shard_dir.glob("shard-00[0-1].tar")):
        memory.pipe(f"/bucket/{path.name}", path.read_bytes())
    monkeypatch.setattr(streaming, "FSSPEC_SCHEMES", (*streaming.FSSPEC_SCHEMES, "memory"))
    data = stream("memory://bucket/shard-{000..001}.tar", shuffle_buffer=0)
    assert texts(items(data, 2)) == [f"caption {i}" for i in range(10)]
    assert streaming.FSSPEC_SCHEMES[:2] == ("s3", "gs")


class _Texts(torch.utils.data.Dataset):
    """A step-indexed text source: item i is ``text i``."""

    def __len__(self) -> int:
        return 50

    def __getitem__(self, index: int):
        return Sample(image=None, text=f"text {index}")


def _mixed(num_steps: int, *, rank: int = 0, world_size: int = 1) -> MixedBatches:
    def collate(kind, samples, seeds, *, another=None):
        return {"texts": [sample.text for sample in samples], "seeds": list(seeds)}

    sources = {"pairs": StreamedSource(), "texts": _Texts()}
    ratios = {"pairs": 0.6, "texts": 0.4}
    return MixedBatches(
        sources,
        ratios,
        collate,
        global_batch_size=5 * world_size,
        num_steps=num_steps,
        rank=rank,
        world_size=world_size,
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streamed_pairs_mixed_with_a_step_indexed_source_by_ratio(shard_dir, num_workers):
    spec = str(shard_dir / "shard-*.tar")
    mixed = _mixed(20)
    reference = items(stream(spec, mixed=mixed, num_workers=num_workers), 20, num_workers=num_workers)
    assert [item.kind for item in reference] == [mixed.kind(step) for step in range(20)]
    assert {"pairs", "texts"} == {item.kind for item in reference}
    for step, item in enumerate(reference):
        if item.kind == "texts":
            assert item.batch == mixed[step].batch  # the step-indexed batch of that very step
    pairs = texts([item for item in reference if item.kind == "pairs"])
    alone = texts(items(stream(spec, num_workers=num_workers), len(pairs) // 5, num_workers=num_workers))
    if num_workers == 0:
        assert pairs == alone  # the stream's share of the steps reads it in its own order
        assert sorted(pairs[:40]) == ALL  # its first epoch
    assert len(pairs) == 50 and max(collections.Counter(pairs).values()) <= 2  # 1.25 epochs
    position: dict = {}
    for item in reference[:7]:
        position.update(item.position)
    # the mixed-in source's size goes with every position (a run's first steps may all be streamed), for a
    # resumed run to find it changed
    assert all(item.position[SOURCE_SIZES] == {"pairs": 1, "texts": 50} for item in reference)
    assert mixed.changed_sizes(position) == {}
    restarted = stream(spec, mixed=_mixed(20), num_workers=num_workers)
    restarted.load_state_dict(position)  # (the sizes are no slot's position)
    rest = items(restarted, 13, num_workers=num_workers)
    assert [(item.kind, item.batch) for item in rest] == [(item.kind, item.batch) for item in reference[7:]]
    with pytest.raises(ValueError, match="mixed: expected MixedBatches with a StreamedSource for kind 'texts'"):
        stream(spec, kind="texts", mixed=mixed)


def _no_caption_shard(path: Path, *, good: int, bad: int) -> str:
    """A shard of ``good`` usable samples followed by ``bad`` samples without a caption."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as writer:
        for index in range(good + bad):
            sample = {"__key__": f"s{index:03d}", "png": png(index)}
            writer.write({**sample, "txt": f"caption {index}"} if index < good else sample)
    return str(path)


def test_a_stream_without_a_usable_sample_is_found_before_it_is_iterated(tmp_path, shard_dir):
    """Shards with no usable sample failed after the run's work began, with a 27-line traceback."""
    shard = _no_caption_shard(tmp_path / "bad.tar", good=0, bad=5)
    assert stream(shard, max_bad_in_a_row=3).unusable_start() == (
        f"none of the first 3 samples of slot 0's shards decodes; the first: {shard}:s000: no text member"
    )
    assert stream(shard).unusable_start() == (  # the shards end before max_bad_in_a_row samples
        f"none of the first 5 samples of slot 0's shards decodes; the first: {shard}:s000: no text member"
    )
    empty = tmp_path / "empty.tar"
    with wds.TarWriter(str(empty)):
        pass
    assert stream(str(empty)).unusable_start().startswith("slot 0's shards gave no sample")
    assert stream(str(shard_dir / "shard-{000..003}.tar")).unusable_start() is None
    # usable at first, broken further on: the stream's own one-line reason, also from a loader worker
    late = _no_caption_shard(tmp_path / "late.tar", good=1, bad=8)
    for num_workers in (0, 1):
        data = stream(late, batch_size=2, shuffle_buffer=0, max_bad_in_a_row=4)
        assert data.unusable_start() is None
        with pytest.raises(BrokenStream) as caught:
            items(data, 1, num_workers=num_workers)
        assert broken_stream_reason(caught.value) == (
            f"the pairs stream gave 4 unusable samples in a row (last: {late}:s004: no text member); the data "
            "looks broken"
        )


def test_shards_that_cannot_be_read_in_a_row_break_the_stream_without_trying_every_shard(tmp_path, shard_dir):
    """Shards no command can fetch (aws s3 cp without credentials, a wrong bucket): the start check, a loader
    slot and a vocabulary's texts tried every shard, a slot's epochs over until each had failed (the start check
    ran 1050 commands for 200 shards on 4 slots; hours for thousands of shards), and the recipe then named
    data.vocab. They stop after max_bad_in_a_row shards in a row that could not be read."""
    log = tmp_path / "tried"
    urls = [f"pipe:echo {i} >> {log}; exit 3" for i in range(40)]

    def tried() -> int:
        count = len(log.read_text().split())
        log.unlink()
        return count

    broken = stream(urls, world_size=2, num_workers=2, max_bad_in_a_row=5)
    reason = broken.unusable_start()
    assert reason.startswith(
        "pairs: 5 shards in a row could not be read (shard unreadable after 0 sample(s): OSError: "
    )
    assert "exited with status 3" in reason and tried() == 5
    with pytest.raises(BrokenStream, match="^pairs: 5 shards in a row could not be read"):
        items(stream(urls, max_bad_in_a_row=5), 1)
    assert tried() == 5
    with pytest.raises(ValueError, match="^shards: 5 shards in a row could not be read"):
        shard_texts(urls, 10, max_unreadable_in_a_row=5)
    assert tried() == 5
    with pytest.raises(ValueError, match="^shards: 3 shards in a row could not be read"):
        stream(urls, max_bad_in_a_row=3).texts(10)  # (a stream's vocabulary texts stop at its own limit)
    assert tried() == 3
    with pytest.raises(ValueError, match="max_unreadable_in_a_row must be .*1.*got 0"):
        shard_texts(urls, 10, max_unreadable_in_a_row=0)  # (raised "0 shards in a row" after a readable one)
    # unreadable shards between readable ones are skipped and reported, as before
    mixed = [url for pair in zip(urls, sorted(map(str, shard_dir.glob("shard-*.tar")))) for url in pair]
    batches = items(stream(mixed, shuffle_buffer=0, max_bad_in_a_row=2), 8)
    assert texts(batches) == [f"caption {i}" for i in range(40)]
    assert len([entry for item in batches for entry in item.skipped]) == 8 and tried() == 8


def _shards_some_empty(root: Path, sizes: list[int]) -> list[str]:
    """One shard per size (0: an empty tar), captions ``"<shard>/<sample>"``."""
    root.mkdir(parents=True, exist_ok=True)
    urls = []
    for number, size in enumerate(sizes):
        url = str(root / f"part-{number}.tar")
        with wds.TarWriter(url) as writer:
            for index in range(size):
                writer.write({"__key__": f"k{number}_{index}", "png": png(index), "txt": f"{number}/{index}"})
        urls.append(url)
    return urls


def test_a_slot_whose_shards_of_an_epoch_are_all_empty_goes_on_to_its_next_epoch(tmp_path):
    """A valid dataset with empty shards stopped a run: slot 0 drew only the empty ones in epoch 0, so the
    stream was refused before any work ("slot 0's shards gave no sample") and raised BrokenStream when
    iterated. Found by the streaming review."""
    sizes = [3, 0, 2, 0]
    urls = _shards_some_empty(tmp_path / "some", sizes)
    seed = next(s for s in range(100) if set(np.random.default_rng([s, 0]).permutation(4)[0::2]) == {1, 3})
    options = dict(batch_size=1, shuffle_buffer=1, seed=seed, rank=0, world_size=2)
    data = stream(urls, **options)
    assert data.unusable_start() is None
    expected = []  # the slot's shards (every second of each epoch's permutation), their samples in order
    for epoch in range(6):
        for number in np.random.default_rng([seed, epoch]).permutation(4)[0::2]:
            expected += [f"{number}/{index}" for index in range(sizes[number])]
    assert texts(items(data, 8)) == expected[:8]
    assert texts(items(stream(urls, **options), 8)) == expected[:8]  # (and again: the same seed)

    empty = _shards_some_empty(tmp_path / "none", [0, 0, 0])
    for world_size in (1, 2):  # every shard read empty: nothing to wait for, in epoch 0 or after a few
        data = stream(empty, batch_size=1, rank=0, world_size=world_size)
        assert data.unusable_start().startswith("slot 0's shards gave no sample")
        with pytest.raises(BrokenStream, match=r"slot 0's shards of epoch \d+ gave no sample"):
            items(data, 1)
    unshuffled = stream(urls, batch_size=1, shuffle_buffer=0, rank=1, world_size=2)  # always shards 1 and 3
    assert unshuffled.unusable_start().startswith("slot 1's shards gave no sample")


@pytest.mark.parametrize("size", [2**40, 2**80])
def test_a_member_claiming_more_than_the_shard_holds_ends_the_shard_at_once(tmp_path, size):
    import signal
    import tarfile

    with tarfile.open(tmp_path / "a.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("ok.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
        info = tarfile.TarInfo("big.png")
        info.size = size  # (base-256 in the header)
        tar.fileobj.write(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
        tar.fileobj.write(png(0).ljust(512, b"\0"))

    class TooLong(BaseException):  # (webdataset's handler takes every Exception for a shard's error)
        pass

    def too_long(*args):
        raise TooLong("still reading the shard after 20 s")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(20)  # tarfile skipped the member by reading it block by block past the end: hours, or forever
    try:
        errors = []
        samples = list(raw_samples(str(tmp_path / "a.tar"), errors))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert [sample["__key__"] for sample in samples] == ["ok"] and "__cut__" in samples[0]
    assert len(errors) == 1 and errors[0][:2] == (str(tmp_path / "a.tar"), 1)  # (after "ok", read)


def test_a_member_larger_than_max_member_bytes_is_not_read_into_memory(tmp_path, monkeypatch):
    import tarfile

    import torchflava.data.streaming as streaming

    monkeypatch.setattr(streaming, "MAX_MEMBER_BYTES", 1 << 20)
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tar:  # ~8 KB: a gzip bomb in small
        for name, data in [
            ("a.png", png(0)),
            ("a.txt", b"x"),
            ("b.png", bytes(8 << 20)),
            ("b.txt", b"y"),
            ("c.txt", b"z"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    errors = []
    samples = list(raw_samples(str(tmp_path / "a.tar.gz"), errors))
    assert [sorted(sample) for sample in samples] == [
        ["__key__", "__url__", "png", "txt"],
        ["__key__", "__url__", "txt"],  # its png is not read: the sample has no image
        ["__key__", "__url__", "txt"],
    ]
    assert len(errors) == 1
    assert str(errors[0][2]).startswith("member 'b.png' holds 8388608 bytes, more than 1048576 (MAX_MEMBER_BYTES")


class _ExitsWithAnError:
    """What webdataset's ``pipe:`` gives for a command that wrote a whole shard and then exited with
    status 3: its exit status raised by the first read after the command ended."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        chunk = self.data.read(size)
        if not chunk and size != 0:
            raise OSError("('cat shard.tar; exit 3',): exit 3 (read)")
        return chunk

    def close(self) -> None:
        pass


def test_a_command_whose_exit_status_comes_past_the_tar_end_is_reported_not_raised(tmp_path, monkeypatch):
    """The status came with the read past the tar's end (looking for its end-of-archive blocks): the
    OSError left the stream, a traceback from the loader instead of the shard reported."""
    import torchflava.data.streaming as streaming

    (shard,) = write_shards(tmp_path, shards=1, per_shard=3)
    monkeypatch.setattr(streaming, "open_shard", lambda url: _ExitsWithAnError(Path(shard).read_bytes()))
    errors = []
    samples = list(raw_samples("pipe:cat shard.tar; exit 3", errors))
    assert [sample["__key__"] for sample in samples] == ["s00000", "s00001", "s00002"]
    assert "__cut__" in samples[2]  # (a failed command: its last sample may be partial)
    assert [(url, count, str(error)) for url, count, error in errors] == [
        ("pipe:cat shard.tar; exit 3", 3, "('cat shard.tar; exit 3',): exit 3 (read)")
    ]
    batches = items(stream("pipe:cat shard.tar; exit 3", batch_size=2, shuffle_buffer=0), 2)
    assert texts(batches) == ["caption 0", "caption 1"] * 2
    assert [index for item in batches for _, index, _ in item.skipped] == [
        "pipe:cat shard.tar; exit 3:s00002",
        "pipe:cat shard.tar; exit 3",
    ]


def write_large_shards(root: Path, *, shards: int, per_shard: int) -> list[str]:
    """Shards like :func:`write_shards`' whose samples also hold 20 kB of noise: a shard is larger than a
    pipe's buffer, so the command writing it is still running while the stream reads its first samples."""
    root.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0)
    with wds.ShardWriter(str(root / "shard-%03d.tar"), maxcount=per_shard, verbose=0) as writer:
        for index in range(shards * per_shard):
            sample = {"__key__": f"s{index:05d}", "png": png(index), "txt": f"caption {index}"}
            writer.write({**sample, "bin": noise.bytes(20_000)})
    return sorted(str(path) for path in root.glob("shard-*.tar"))


def descendants() -> set[int]:
    """The pids of this process's descendants (Linux: read from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # (a process that ended meanwhile)
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def signal_the_job(number: int = signal.SIGTERM, *, spared: frozenset = frozenset()) -> None:
    """Send ``number`` to every descendant of this process but ``spared``, then to this process: what a
    scheduler's stop does to the processes of a job (SLURM signals them all)."""
    for pid in descendants() - spared:
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass
    signal.raise_signal(number)


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")


@needs_proc
def test_a_stop_signal_to_the_whole_job_does_not_cut_a_pipe_shard(tmp_path):
    """SIGTERM ended `pipe:` commands with the job's other processes while the run finished its step: the
    shard read on as cut (OSError: exit -15), its last sample bad and the rest of it lost for the epoch."""
    (shard,) = write_large_shards(tmp_path, shards=1, per_shard=8)
    before, errors = frozenset(descendants()), []
    samples = raw_samples(f"pipe:cat {shard}", errors)
    first = next(samples)
    previous = signal.signal(signal.SIGTERM, lambda number, frame: None)  # (the loop's handler, as fit sets it)
    try:
        signal_the_job(spared=before)
        time.sleep(0.2)  # (for a command that the signal ends to be gone)
    finally:
        signal.signal(signal.SIGTERM, previous)
    keys = [first["__key__"]] + [sample["__key__"] for sample in samples]
    assert keys == [f"s{index:05d}" for index in range(8)]
    assert errors == []


@needs_proc
def test_a_pipe_shard_closed_before_its_end_kills_its_command_at_once(tmp_path):
    """Closing a stream early waited for the command to end by itself (webdataset's Pipe waits up to two
    hours): a stalled download, or a command with more to do, held up a stopped run's exit."""
    (shard,) = write_large_shards(tmp_path, shards=1, per_shard=8)
    before, errors = descendants(), []
    samples = raw_samples(f"pipe:cat {shard}; sleep 3", errors)
    assert next(samples)["__key__"] == "s00000"
    started = time.monotonic()
    samples.close()
    assert time.monotonic() - started < 1.5
    assert descendants() - before == set()
    assert errors == []  # (an abandoned command's status is not a fault of the shard)


def test_texts_of_shards_that_give_no_sample_are_an_error_naming_the_shards(shard_dir, tmp_path):
    """Every shard unreadable (or empty): no text, which the recipes reported as a missing data.vocab."""
    for name in ("a.tar", "b.tar"):
        (tmp_path / name).write_bytes(b"not a tar")
    with pytest.raises(ValueError) as caught:
        shard_texts([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")], 10)
    assert str(caught.value).startswith(
        "shards: none of the 2 shard(s) gave a sample (shard unreadable after 0 sample(s): ReadError: "
    )
    with wds.TarWriter(str(tmp_path / "empty.tar")):  # a tar without a member
        pass
    with pytest.raises(ValueError, match=r"^shards: none of the 1 shard\(s\) gave a sample \(no readable sample\)$"):
        shard_texts(str(tmp_path / "empty.tar"), 10)
    readable = sorted(map(str, shard_dir.glob("shard-*.tar")))[0]  # one readable among them: its texts
    assert shard_texts([str(tmp_path / "a.tar"), readable], 3) == ["caption 0", "caption 1", "caption 2"]
