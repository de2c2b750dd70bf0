"""Streamed tar shards (webdataset): local, ``pipe:``, http(s) and fsspec (``s3://``, ``gs://``) shards.

:class:`StreamingBatches` is an ``IterableDataset`` of micro-batches for the training loop, read
front to back from webdataset-style shards (``.tar``, or compressed as webdataset writes them:
``.tar.gz``, ``.tar.bz2``, ``.tar.xz``) with the webdataset library: no process indexes or opens
every shard. Its stream is cut into *slots*, one per (rank, loader worker): ``slot = rank * K +
worker`` with ``K = max(1, num_workers)`` workers per rank.

Order. Epoch ``e`` permutes the shard list with a generator seeded from (seed, e) and gives slot
``s`` the shards at positions ``s, s + R*K, s + 2*R*K ...`` (R ranks), so within an epoch every
sample of every readable shard is read by exactly one slot, once. A slot reads its shards in turn
and cuts its samples into blocks of ``shuffle_buffer`` consecutive samples; each block is shuffled
with a generator seeded from (seed, epoch, slot, block). A slot that finishes its shards starts its
next epoch (slots may be on different epochs). ``shuffle_buffer=0`` reads the shards in the given
order without any shuffling. In *resampled* mode the slot's ``j``-th shard is drawn with
replacement from (seed, slot, j): the stream never ends, for sources mixed by ratio that must not
run dry; the blocks are shuffled the same way.

Position and resume. Each batch carries its slot's position after it: ``[epoch, block, shard,
offset, index, batches, slots]`` (the current block starts at the ``offset``-th sample of the slot's
``shard``-th shard of the epoch, ``index`` of its samples are used, the slot has given ``batches``
batches, of ``slots`` slots per rank). :meth:`StreamingBatches.load_state_dict` restarts every slot
there: it re-reads the block's start shard from its beginning up to the offset (the bytes only, no
image is decoded), re-reads and re-shuffles the block with its seed, and drops the used samples.
The loader takes batches from its workers in turn; a resumed stream starts at the worker whose turn
was next. So a resumed run sees exactly the batches, in the order, crops and masks, of an
uninterrupted one, in both modes, as long as it runs on the same number of ranks and loader
workers (checked) and the shards are unchanged. A sample is therefore never seen twice nor skipped
within an epoch across a kill.

Mixing. With ``mixed`` (a :class:`~torchflava.data.mixing.MixedBatches` over step-indexed sources of
other kinds and a :class:`StreamedSource` for the streamed one), micro-step ``n`` draws its kind by
ratio from (seed, n) as without streaming; steps of the other kinds are ``mixed[n]``, and the
streamed kind's steps take the stream's next batch. A worker knows which micro-steps are its own
(the loader takes ``n = batches * K + worker``), so this holds with any number of workers and
across a resume. Resampled mode suits a streamed kind whose share of a long run would exceed one
epoch of a small set of shards (its stream has no epoch boundary).

Bad data. A sample without a required member, or whose image or text does not decode
(:func:`~torchflava.data.decode.decode_image`, the same rules as the random-access readers), is
skipped and reported in its batch's ``skipped`` list as ``(kind, "<url>:<key>", reason)``. A shard
that cannot be opened or breaks off (a cut file, a failed command or download, a tar, compressed or
not, whose data ends before its end-of-archive block or holds a corrupt header) keeps the samples
read before the break, counts its last one as bad (it may be partial), and is reported as
``(kind, "<url>", "shard unreadable after <n> sample(s): ...")`` with <n> the samples read before the break, the one counted bad included, with the first
sample of the block read past the break. Each slot reports each unusable sample and shard once per
run, though it may read them every epoch, so what the training loop checkpoints does not grow with
the epochs; a slot restarted at a position does not report again what it met before it (the shards
it read whole, the samples it used of those it had begun), so a resumed run reports what an
uninterrupted one does (with unchanged shards). An empty shard is no error:
a slot whose shards of an epoch are all empty goes on to its next epoch (shuffled, another draw of
shards); it raises :class:`BrokenStream` only when no later epoch can give a sample (unshuffled, the
same shards again; or every shard of the stream read empty in epochs in a row). Shards that cannot be
read (an error before any sample: a failed command, a refused download) are no empty shards:
``max_bad_in_a_row`` of them in a row, over a slot's epochs, raise :class:`BrokenStream` (credentials
missing, a wrong bucket), without trying every shard of the stream first.
"""

from dataclasses import dataclass
import functools
import io
import itertools
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tarfile
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence, Union
import zlib

import numpy as np
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from torchflava.data.decode import DEFAULT_MAX_PIXELS
from torchflava.data.mixing import SOURCE_FILES, SOURCE_SIZES, MixedBatches, SkippedSample, item_seed
from torchflava.data.readers import (
    APART,
    check_extensions,
    check_max_pixels,
    glob_files,
    members_read,
    missing_members,
    read_image,
    text_member,
)
from torchflava.data.samples import BadSample, Sample
from torchflava.utils.checkpoint import url_scheme
from torchflava.utils.checks import check_int, usable_cores

# Opened with fsspec; pipe: and CURL_SCHEMES as commands (:class:`ShardCommand`); every other scheme
# (none: a local path; file:, ...) with webdataset's gopen.
FSSPEC_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "abfss")
CURL_SCHEMES = ("http", "https", "sftp", "ftps", "scp")  # read with curl, as webdataset's gopen reads them
# curl retries transient failures (a timeout, a 5xx answer) 30 times before it gives up on a shard
_CURL = ("curl", "--connect-timeout", "30", "--retry", "30", "--retry-delay", "2", "-f", "-s", "-L")
_CLOSED_EARLY = (141, 23)  # a command's status when its reader closed the pipe first (SIGPIPE; curl's)
# A shard command ignores the stop signals (set before its own command runs, inherited by what it starts): a
# scheduler signals every process of the job, and a command it ended cut the shard under the step that the
# run finishes before it stops, so a whole shard read as broken (its rest lost for the epoch) in the checkpoint.
_IGNORE_STOP_SIGNALS = "trap '' TERM INT USR1; "
# ...and the command runs in the background of its shell, which waits for it: a SIGHUP (sent by the kernel when
# the thread that started the shell ends, :func:`_hang_up_with_parent`) then kills the command's whole group, where
# a reader that left without closing it (a loader worker ends through os._exit; a process killed) left it running.
_RUN_UNTIL_HANGUP = """trap 'kill -KILL 0' HUP; eval "$1" & wait $!"""
_PR_SET_PDEATHSIG = 1  # prctl's option (linux/prctl.h)


def _load_prctl() -> Optional[Callable]:
    """libc's ``prctl`` on Linux (None elsewhere, or where it cannot be loaded)."""
    if not sys.platform.startswith("linux"):  # (os.uname does not exist on Windows)
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def expand_shards(shards: Union[str, Sequence[str]]) -> list[str]:
    """The shard URLs of a spec: brace patterns (``shard-{000..099}.tar``) expanded, local globs matched.

    Each string is brace-expanded in order; a local path (no scheme) that names no file and holds ``*``,
    ``?`` or ``[`` is a glob (``**`` recurses) and gives its matching files sorted; any other must be a file.
    URLs (``pipe:``, ``http(s)://``, ``s3://``, ``gs://`` ...) are kept as they are: they are
    opened only when read.

    Args:
        shards (Union[str, Sequence[str]]): one spec or several.

    Returns:
        list[str]: the shards in order (duplicates kept).

    Raises:
        TypeError: if ``shards`` is not a string or a sequence of strings.
        FileNotFoundError: if a local path names no file, or a glob matches none.
        ValueError: if the spec gives no shard.
    """
    import braceexpand

    specs = [shards] if isinstance(shards, str) else shards
    if not isinstance(specs, (list, tuple)) or not all(isinstance(spec, str) for spec in specs):
        raise TypeError(f"shards must be a string or a list of strings, got {shards!r}")
    urls = []
    for url in (url for spec in specs for url in braceexpand.braceexpand(spec)):
        if url_scheme(url) or os.path.isfile(url):  # (a file named with [ ] is itself, as TarShards reads it)
            urls.append(url)
        elif any(char in url for char in "*?["):
            matches = glob_files(url)  # (each real folder once: a linked folder's loop ends)
            if not matches:
                raise FileNotFoundError(f"shards: no file matches {url!r}")
            urls.extend(matches)
        else:
            raise FileNotFoundError(f"shards: {url!r} is not a file")
    if not urls:
        raise ValueError(f"shards must name at least one shard, got {shards!r}")
    return urls


def open_shard(url: str):
    """Open shard ``url`` for reading.

    Args:
        url (str): a local path, ``file:``, ``pipe:<command>`` (a :class:`ShardCommand` of the shell
            command), a URL of :data:`CURL_SCHEMES` (``http(s)://``: a :class:`ShardCommand` of curl), or
            a URL of :data:`FSSPEC_SCHEMES` (fsspec, e.g. ``s3://`` with s3fs).

    Returns:
        A binary stream with ``read`` and ``close``.

    Raises:
        OSError, ValueError: from the opener (a missing file, an unknown scheme, a refused request).
    """
    scheme = url_scheme(url)
    if scheme in FSSPEC_SCHEMES:
        import fsspec

        return fsspec.open(url, "rb").open()
    if scheme == "pipe":
        command = url[len("pipe:") :]
        return ShardCommand(command, url, name=f"the command {command!r}")
    if scheme in CURL_SCHEMES:
        return ShardCommand(f"exec {' '.join(map(shlex.quote, (*_CURL, url)))}", url, name="curl")
    from webdataset.gopen import gopen

    return gopen(url, "rb")


def _hang_up_with_parent(parent: int) -> None:
    """In a shard command's shell before it runs (Linux): the kernel sends it ``SIGHUP`` when the thread that
    started it ends, and the shell then kills its group (:data:`_RUN_UNTIL_HANGUP`). A parent gone before the
    request (the shell already adopted by another) ends the shell at once. (A ``preexec_fn`` makes Python fork
    rather than vfork: ~0.1 s a shard from a 2 GiB process, small beside reading a shard.)"""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGHUP)
        if os.getppid() != parent:
            os._exit(1)


class ShardCommand:
    """The output of a shell command that writes a shard (``pipe:``, or curl for a URL), read as a stream.

    The command runs in a process group of its own and ignores ``SIGTERM``, ``SIGINT`` and ``SIGUSR1``: a
    scheduler's stop signal reaches every process of the job (SLURM), or its process group (a terminal's
    Ctrl-C), and a command it ended cut the shard that the run still reads to finish its step before it
    stops (:mod:`torchflava.training.preemption`); that shard then counted as broken and the rest of it was
    lost for the epoch, in the checkpoint too, so a resumed run did not see the samples an uninterrupted
    one sees. A stream closed before the command's output ended (the run stopped, the reader gave up)
    kills the command's group at once, rather than wait for it; on Linux so does the end of the thread that
    started it without closing it (a loader worker leaving through ``os._exit``, a process killed).

    Args:
        command (str): the shell command (``/bin/sh -c``).
        url (str): the shard it writes.
        name (str): the command as messages name it.

    Raises:
        OSError: from ``read`` at the end of the output, if the command exited with a status other than 0
            (or one of a reader that closed early, :data:`_CLOSED_EARLY`); from the start, if no shell runs.
    """

    def __init__(self, command: str, url: str, *, name: str) -> None:
        self.url, self.name, self.ended = url, name, False
        # (the command is an argument of the trap's shell, evaluated as sh -c would run it: its text unchanged)
        self.process = subprocess.Popen(
            ["/bin/sh", "-c", _IGNORE_STOP_SIGNALS + _RUN_UNTIL_HANGUP, "sh", command],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,  # (a background group that reads the terminal is stopped: it would hang)
            start_new_session=True,  # (its group's id is its pid: close kills the group)
            preexec_fn=functools.partial(_hang_up_with_parent, os.getpid()),
        )

    def __str__(self) -> str:
        return self.url

    def read(self, size: int = -1) -> bytes:
        data = self.process.stdout.read(size)
        if not data and size != 0:  # the end of its output: its status says whether that was all of it
            self.ended = True
            status = self.process.wait()
            if status != 0:
                raise OSError(f"{self.name} exited with status {status}")
        return data

    def close(self) -> None:
        """Close the stream; a command whose output was not read to its end is killed (its status unread)."""
        if self.process.stdout.closed:
            return
        self.process.stdout.close()
        if not self.ended:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # (pid: its group's id) what it started, too
            except ProcessLookupError:  # already gone
                pass
            self.process.wait()
            return
        status = self.process.wait()
        if status not in (0, *_CLOSED_EARLY):
            raise OSError(f"{self.name} exited with status {status}")


class _Watched:
    """A read-only stream named by its shard's URL that ends a read looping past its end."""

    def __init__(self, stream, url: str) -> None:
        self.stream, self.url = stream, url
        self.reads_at_end = 0

    def __str__(self) -> str:  # webdataset names the stream in its errors
        return self.url

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if not data and size != 0:
            # tarfile skips a member by reading its claimed size block by block, on past the end: a header
            # claiming 2**40 bytes (or 2**80: base-256 sizes) kept it reading nothing for hours
            self.reads_at_end += 1
            if self.reads_at_end > _READS_AT_END:
                raise EOFError("the shard ends before the data its last member header claims")
        return data

    def drain(self) -> None:
        """Read what tarfile left after the end-of-archive block (a command's exit status comes with its end)."""
        while self.read(1 << 20):
            pass


_READS_AT_END = 64  # reads past a shard's end before it counts as cut short (tarfile reads a few there)


class _EndOfArchive(tarfile.TarInfo):
    """A ``TarInfo`` that records on the ``TarFile`` reading it (``stopped_by``) the header error that ended
    its members. tarfile's stream mode ends them alike at the end-of-archive block, at the end of the data
    (a shard cut at or inside a header) and at a corrupt header: a cut ``.tar.gz`` (when its decompressed
    data broke off there) or a tar with a damaged header mid-shard lost the rest of the shard without a word,
    where :class:`~torchflava.data.readers.TarShards` reports the damage."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as error:
            tar.stopped_by = error
            raise


def _end_fault(tar: tarfile.TarFile) -> Optional[Exception]:
    """Why a shard whose members ``tar`` gave until its end broke off: None when it ended at an
    end-of-archive block, the error to report when its data ended (cut) or a header is not valid."""
    stop = getattr(tar, "stopped_by", None)
    if isinstance(stop, (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)):
        return EOFError("the shard ends without tar's end-of-archive blocks: it was cut short")
    if isinstance(stop, tarfile.InvalidHeaderError):
        return tarfile.ReadError(
            f"the block at byte {tar.offset} of the tar is not a valid header ({stop}); the rest of the shard is lost"
        )
    return None


def _grouped(files: Iterator[dict], started: Optional[list] = None) -> Iterator[dict]:
    """The samples of a stream of tar members: runs of consecutive members with one key (the path up
    to the basename's first dot; the rest, lower-cased, is the extension). A key that comes back, or
    a member repeated within a run, starts another sample, as :class:`~torchflava.data.readers.TarShards`
    indexes them (webdataset's grouping drops a repeated member and stops counting the shard's samples).
    A sample whose key came before another key's members is marked ``"__apart__"`` (its reason says so).

    ``started[0]``, when given, counts the samples begun so far: a sample is given only once the
    next one begins, so when ``files`` fails this is how many samples were read before the failure."""
    from webdataset.tariterators import base_plus_ext

    current: Optional[dict] = None
    seen: set = set()  # the shard's keys so far: one that comes back after others has members apart
    for member in files:
        key, extension = base_plus_ext(member["fname"])
        if key is None:
            continue
        extension = extension.lower()
        if current is None or key != current["__key__"] or extension in current:
            apart = key in seen and (current is None or key != current["__key__"])
            if current is not None:
                yield current
            current = {"__key__": key, "__url__": member.get("__url__"), **({"__apart__": True} if apart else {})}
            seen.add(key)
            if started is not None:
                started[0] += 1
        current[extension] = member["data"]
    if current is not None:
        yield current


def raw_samples(url: str, errors: list) -> Iterator[dict]:
    """The samples of one shard as webdataset groups them, in order, undecoded.

    When the shard cannot be read, from the start or from some point on, ``(url, samples read,
    error)`` is appended to ``errors`` (once per reading; the samples begun before that point, the
    one given as cut included) and the samples before that point are still given; nothing is raised.
    When the stream broke off (a cut file or download, a failed command, a tar whose data ends
    before its end-of-archive block or holds a corrupt header) the last sample may be incomplete: it is given as
    ``{"__key__": key, "__cut__": reason}`` instead.

    Args:
        url (str): the shard (see :func:`open_shard`).
        errors (list): where reading errors are appended.

    Yields:
        dict: ``{"__key__": key, "<extension>": bytes, ...}`` per sample.
    """
    # (counted where the members are grouped: this generator holds a sample back, and the grouping
    # one more, so the samples given lag the samples read when a member fails)
    started, failed = [0], []

    def keep_going(error: Exception) -> bool:
        if not failed:
            errors.append((url, started[0], error))
        failed.append(error)  # (a refused member may come before the break: each is looked at)
        return True

    try:
        stream = _Watched(open_shard(url), url)
    except Exception as error:  # a missing file, an unknown scheme, a store that refuses
        keep_going(error)
        return
    try:
        files = _tar_members(stream, url, keep_going)
        previous = None
        for sample in _grouped(files, started):
            if previous is not None:
                yield previous
            previous = sample
        try:
            if not failed:
                stream.drain()
        except Exception as error:  # a command's exit status, raised by a read once it ended (pipe:)
            keep_going(error)
        if previous is not None and any(
            isinstance(e, (tarfile.TarError, EOFError, OSError, zlib.error)) for e in failed
        ):
            # the stream broke off (a cut file or download, a failed command): the last sample may be partial
            previous = {"__key__": previous["__key__"], "__cut__": "the shard breaks off in or after this sample"}
        if previous is not None:
            yield previous
    finally:
        try:
            stream.stream.close()
        except Exception as error:  # a command that exits with an error status (pipe:, curl)
            keep_going(error)


# Most bytes a tar member may hold: each is read whole into memory, and a compressed shard's member
# may expand a thousandfold (1 MB of .tar.gz held 1 GiB of zeros). Larger members are not read.
MAX_MEMBER_BYTES = 1 << 30
_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, skipped as it skips them


def _tar_members(stream: "_Watched", url: str, handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """webdataset's ``tar_file_expander`` over one shard (its members as ``{"fname", "data", "__url__"}``,
    its errors to ``handler`` as it gives them), but a member claiming more than
    :data:`MAX_MEMBER_BYTES` is refused from its header (ValueError to ``handler``) before any of it is
    read into memory."""
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_EndOfArchive)
        for info in tar:
            name = info.name
            try:
                if not info.isreg() or name is None or _META_MEMBER.match(name):
                    continue
                if "/" not in name and name.startswith("__") and name.endswith("__"):
                    continue
                if info.size > MAX_MEMBER_BYTES:
                    raise ValueError(
                        f"member {name!r} holds {info.size} bytes, more than {MAX_MEMBER_BYTES} (MAX_MEMBER_BYTES: a "
                        "member is read whole into memory); it is not read"
                    )
                data = tar.extractfile(info).read()
                yield {"fname": name, "data": data, "__url__": url}
                tar.members = []  # (stream mode keeps every member's header otherwise)
            except Exception as error:
                if error.args:
                    error.args = (f"{error.args[0]} @ {stream}",) + error.args[1:]
                if not handler(error):
                    return
        fault = _end_fault(tar)
        if fault is not None:
            handler(fault)
    except Exception as error:  # opening the shard, or reading a header (the report names the shard)
        handler(error)


def _text_of(members: dict, text_extensions: tuple, json_text_key: Optional[str]) -> tuple:
    """``(text member bytes or None, json key or None)``: the first text extension, else ``.json``."""
    text = next((members[e] for e in text_extensions if e in members), None)
    if text is None and json_text_key is not None and "json" in members:
        return members["json"], json_text_key
    return text, None


def shard_texts(
    shards: Union[str, Sequence[str]],
    limit: int,
    *,
    text_extensions: tuple[str, ...] = ("txt",),
    json_text_key: Optional[str] = "caption",
    max_unreadable_in_a_row: int = 50,
) -> list[str]:
    """Up to ``limit`` usable texts, read from the shards in their given order (no image is decoded):
    what a run learns its vocabulary from.

    Raises:
        FileNotFoundError, TypeError, ValueError: as :func:`expand_shards`.
        ValueError: naming ``shards``, when ``max_unreadable_in_a_row`` shards in a row before ``limit``
            texts cannot be read (an error, no sample), with the last errors, rather than try every shard, or when
            no shard gives a sample (a vocabulary learnt from them was refused as if no vocabulary were given); or
            naming ``max_unreadable_in_a_row`` where it is not an int >= 1 (TypeError for a non-int).
    """
    check_int("max_unreadable_in_a_row", max_unreadable_in_a_row, 1)
    texts: list[str] = []
    errors: list = []
    unreadable = 0
    urls = expand_shards(shards)
    read_any = False
    for url in urls:
        failed, given = len(errors), False
        for raw in raw_samples(url, errors):
            given = True
            members = {name.lower(): value for name, value in raw.items() if not name.startswith("__")}
            text, json_key = _text_of(members, tuple(text_extensions), json_text_key)
            if text is None:
                continue
            try:
                texts.append(text_member(text, json_key, url, url))
            except BadSample:  # counted by the training data, not here
                continue
            if len(texts) >= limit:
                return texts
        read_any = read_any or given
        unreadable = 0 if given or len(errors) == failed else unreadable + 1
        if unreadable >= max_unreadable_in_a_row:
            raise ValueError(f"shards: {unreadable} shards in a row could not be read ({_errors(errors)})")
    if not read_any:  # (every shard unreadable, or empty)
        raise ValueError(f"shards: none of the {len(urls)} shard(s) gave a sample ({_errors(errors)})")
    return texts


class BrokenStream(RuntimeError):
    """A stream's data looks broken: many unusable samples, or shards without a sample, in a row."""


def broken_stream_reason(error: BrokenStream) -> str:
    """The stream's own one-line reason for ``error``, also when a loader worker raised it (the loader
    raises it again with the worker's traceback in its message, the reason on the last line)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].split(f"{BrokenStream.__name__}: ", 1)[-1] if lines else BrokenStream.__name__


def broken_stream_message(error: BrokenStream, shards: object) -> str:
    """The recipes' one-line error, naming ``data.files.pairs_shards``, for streamed ``shards`` whose first
    samples read but that broke further on (``error``)."""
    reason = broken_stream_reason(error)
    return f"key 'data.files.pairs_shards': expected shards with usable samples, got {shards!r} ({reason})"


# Names of compressed tars, which only a stream reads (TarShards seeks in uncompressed ones): a .tar.bz2 or
# .tar.xz given without streaming was refused as 'not an uncompressed tar', without the pointer a .tar.gz has
_COMPRESSED_SUFFIXES = (".gz", ".tgz", ".bz2", ".tbz", ".tbz2", ".xz", ".txz")


USABLE_CORES = usable_cores()
# The most loader worker processes a recipe's rank may start (data.num_workers): each is a process with its own copy
# of the data pipeline, and torch's loader warns past the cores it may use; 100000 forked until the machine died.
MAX_NUM_WORKERS = max(32, 4 * USABLE_CORES)


def num_workers_check(num_workers: int) -> tuple:
    """The ``(ok, key, expected, got)`` check of a recipe's ``data.num_workers``: in [0, :data:`MAX_NUM_WORKERS`]."""
    expected = (
        f"in [0, {MAX_NUM_WORKERS}] (loader worker processes per rank: at most 4 x the {USABLE_CORES} cores this "
        "process may use, or 32; more only oversubscribe them)"
    )
    return (0 <= num_workers <= MAX_NUM_WORKERS, "data.num_workers", expected, num_workers)


@dataclass
class StreamingConfig:
    """A recipe's ``data.streaming`` section (see :func:`streaming_checks`)."""

    enabled: bool = False  # stream data.files.pairs_shards (webdataset) instead of indexing local tar files
    shuffle_buffer: int = 1000  # samples shuffled together per block (0: the shards' order, unshuffled)
    resampled: bool = False  # draw shards with replacement, without epochs


def streaming_checks(
    streaming: StreamingConfig, *, source: str, shards: Optional[str], world_size: int, num_workers: int
) -> list[tuple]:
    """The checks of a recipe's ``data.streaming`` section against ``data.source``,
    ``data.files.pairs_shards`` and ``data.num_workers``, as ``(ok, key, expected, got)`` tuples: put
    them before the shard path checks. ``data.num_workers`` is bounded here whatever the source (the recipes'
    one check of it: :func:`num_workers_check`). Without streaming, shards that only a stream reads (URLs,
    brace patterns, ``.tar.gz``) are refused with a pointer to ``data.streaming.enabled``, and so are
    ``shuffle_buffer`` and ``resampled`` set to other than their defaults (nothing would read them)."""
    key = "data.files.pairs_shards"
    checks = [
        (streaming.shuffle_buffer >= 0, "data.streaming.shuffle_buffer", ">= 0", streaming.shuffle_buffer),
        num_workers_check(num_workers),
    ]
    if not streaming.enabled:
        only_streamed = shards is not None and (
            bool(url_scheme(shards)) or "{" in shards or shards.endswith(_COMPRESSED_SUFFIXES)
        )
        expected = (
            "local uncompressed tar files (a path or glob); URLs, brace patterns and .tar.gz need "
            "data.streaming.enabled=true"
        )
        # (a shuffle buffer or resampling set for a run that streams nothing was ignored without a word:
        # local tar shards are indexed and sampled by step)
        defaults = StreamingConfig()
        unread = [
            (False, f"data.streaming.{name}", f"its default, {default!r}, since data.streaming.enabled=false", value)
            for name, value, default in (
                ("shuffle_buffer", streaming.shuffle_buffer, defaults.shuffle_buffer),
                ("resampled", streaming.resampled, defaults.resampled),
            )
            if value != default
        ]
        return checks + [(not only_streamed, key, expected, shards)] + unread
    checks.append((source == "files", "data.streaming.enabled", "false unless data.source=files", True))
    checks.append((shards is not None, key, "shards to stream, since data.streaming.enabled=true", None))
    if shards is None or not num_workers_check(num_workers)[0]:
        return checks
    try:
        count = len(expand_shards(shards))
    except (OSError, ValueError, TypeError) as error:
        expected = f"local shard files, a glob or brace pattern, or pipe:, http(s)://, s3:// or gs:// URLs ({error})"
        return checks + [(False, key, expected, shards)]
    slots = world_size * max(1, num_workers)
    expected = (
        f"at least ranks x loader workers = {world_size} x {max(1, num_workers)} = {slots} shards (one per "
        "slot), or data.streaming.resampled=true"
    )
    return checks + [(streaming.resampled or count >= slots, key, expected, f"{count} shard(s) from {shards}")]


# Key of a batch's position under which it gives the number of shards its stream was dealt from (each
# epoch's permutation of them is seeded by that number: see :meth:`StreamingBatches.changed_shards`).
STREAM_SHARDS = "stream_shards"


class StreamedSource(Dataset):
    """Stands for a streamed kind among the sources of a :class:`~torchflava.data.mixing.MixedBatches`
    that :class:`StreamingBatches` mixes in (it draws that kind's steps; its items are never read)."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> Sample:
        raise RuntimeError("a streamed kind's items come from its StreamingBatches, not from MixedBatches")


class StreamBatch(NamedTuple):
    """Item of :class:`StreamingBatches`.

    Attributes:
        batch (Any): the collated batch.
        kind (str): the source's kind name.
        skipped (list): :class:`~torchflava.data.mixing.SkippedSample` entries met building it.
        position (dict): ``{str(slot): [epoch, block, shard, offset, index, batches, slots]}``, the
            slot's position after this batch (what the training loop checkpoints), with the number of
            shards under :data:`STREAM_SHARDS` (:meth:`StreamingBatches.changed_shards`) and, with
            ``mixed``, ``mixed.sizes`` under :data:`~torchflava.data.mixing.SOURCE_SIZES`
            (:meth:`~torchflava.data.mixing.MixedBatches.changed_sizes`); :func:`slot_positions` keeps
            the slots'.
        keys (list[str]): ``"<url>:<key>"`` of each row.
    """

    batch: Any
    kind: str
    skipped: list
    position: dict
    keys: list


class _Read(NamedTuple):
    """One raw sample of a slot's stream and the slot's position after it; ``report``: whether to record it
    if it is unusable (False: the slot recorded it before a restart), ``faults``: the ``(url, count,
    error)`` shard faults to record with it."""

    position: tuple
    url: str
    raw: dict
    seed: int
    report: bool
    faults: tuple


class StreamingBatches(IterableDataset):
    """This rank's micro-batches, read from streamed shards (see the module docstring for the order,
    the split over ranks and loader workers, resume and bad data).

    Each batch is ``collator(kind, samples, seeds, another=another)``, as for
    :class:`~torchflava.data.mixing.MixedBatches`: the ``batch_size`` usable samples, one seed each
    (from the sample's place in the stream), and ``another(row, seed, read)``, which gives
    ``read(samples, j)`` for another row ``j`` of the same batch drawn from ``seed`` (ITM negatives),
    or None for a batch of one.

    Args:
        shards (Union[str, Sequence[str]]): shard spec(s), see :func:`expand_shards`.
        collator (Callable): samples -> batch, as above.
        batch_size (int): samples per batch on this rank.
        kind (str): the name batches and skipped samples carry.
        rank (int): this rank.
        world_size (int): number of ranks.
        num_workers (int): the loader's worker processes (0: the loading process itself).
        seed (int): data seed.
        shuffle_buffer (int): samples per shuffled block; 0 reads in the given order, unshuffled.
        resampled (bool): draw shards with replacement, without end (the stream has no epochs).
        require (tuple[str, ...]): the modalities a sample must have, a subset of ``("image", "text")``.
        image_extensions (tuple[str, ...]): extensions of image members, in order of preference.
        text_extensions (tuple[str, ...]): extensions of UTF-8 text members, in order of preference.
        json_text_key (Optional[str]): key of the text in a ``.json`` member; None ignores ``.json``.
        max_image_pixels (int): images with more pixels are bad samples.
        max_bad_in_a_row (int): consecutive unusable samples, or shards that cannot be read, after which
            the data is declared broken.
        mixed (Optional[MixedBatches]): step-indexed batches of other kinds to mix in by ratio, built
            with a :class:`StreamedSource` for ``kind``: micro-step ``n`` is ``mixed[n]`` when
            ``mixed.kind(n)`` is another kind, else the stream's next batch (the stream ends after
            ``len(mixed)`` steps). Which kind a step takes is a function of the step, as without
            streaming; the stream's share of the steps reads it in its own order.

    Raises:
        ValueError: if a size, rank or ``require`` is invalid, or (not resampled) there are fewer
            shards than slots (ranks x workers), so that a slot would have none.
        FileNotFoundError, TypeError: as :func:`expand_shards`.
    """

    def __init__(
        self,
        shards: Union[str, Sequence[str]],
        collator: Callable,
        *,
        batch_size: int,
        kind: str = "pairs",
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        require: tuple[str, ...] = ("image", "text"),
        image_extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "webp"),
        text_extensions: tuple[str, ...] = ("txt",),
        json_text_key: Optional[str] = "caption",
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        max_bad_in_a_row: int = 50,
        mixed: Optional[MixedBatches] = None,
    ) -> None:
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("world_size", world_size, 1),
            ("num_workers", num_workers, 0),
            ("seed", seed, 0),
            ("shuffle_buffer", shuffle_buffer, 0),
            ("max_bad_in_a_row", max_bad_in_a_row, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in [0, world_size = {world_size}), got {rank!r}")
        if isinstance(require, str) or not require or any(name not in ("image", "text") for name in require):
            raise ValueError(f"require must be a non-empty subset of ('image', 'text'), got {require!r}")
        if json_text_key is not None and not isinstance(json_text_key, str):
            raise TypeError(f"json_text_key must be a str or None, got {type(json_text_key).__name__}")
        self.urls = expand_shards(shards)
        self.workers = max(1, num_workers)
        self.num_slots = world_size * self.workers
        if not resampled and len(self.urls) < self.num_slots:
            raise ValueError(
                f"shards: expected at least ranks x loader workers = {world_size} x {self.workers} = "
                f"{self.num_slots} shards (one per slot), got {len(self.urls)}; use fewer workers or resampled mode"
            )
        self.collator, self.batch_size, self.kind = collator, batch_size, kind
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle_buffer, self.resampled, self.max_bad_in_a_row = shuffle_buffer, resampled, max_bad_in_a_row
        self.require = tuple(name for name in ("image", "text") if name in require)
        self.image_extensions = check_extensions("image_extensions", image_extensions)
        self.text_extensions = check_extensions("text_extensions", text_extensions)
        self.json_text_key = json_text_key
        self.max_pixels = check_max_pixels(max_image_pixels)
        if mixed is not None and not isinstance(mixed.sources.get(kind), StreamedSource):
            raise ValueError(f"mixed: expected MixedBatches with a StreamedSource for kind {kind!r}, got {mixed!r}")
        if mixed is not None and (mixed.rank, mixed.world_size) != (rank, world_size):  # (duplicated data)
            raise ValueError(
                f"mixed: expected MixedBatches of this rank {rank} of {world_size}, got rank {mixed.rank} of "
                f"{mixed.world_size}"
            )
        self.mixed = mixed
        self._start: dict[str, list[int]] = {}
        self._rotation = 0

    @property
    def lost_data(self) -> list:
        """Empty: shards that cannot be read or break off are reported with the skipped samples."""
        return []

    # ----------------------------------------------------------------------------------- position
    def load_state_dict(self, state: dict) -> None:
        """Start each slot of this rank where a checkpoint left it (the loop's merged batch positions).

        Call before iterating. An empty state starts from the beginning; the sizes batches give with
        their positions are no slot's (a recipe checks them: :meth:`changed_shards`).

        Raises:
            ValueError: naming ``state`` if a position holds anything but ints >= 0; naming
                ``num_workers`` if the positions are not 7 ints, are for another number of slots per rank,
                or for slots of another rank; then naming ``state`` if a position names a shard past its
                slot's last (a shard list shorter than the checkpoint's).
        """
        mine = {str(self.rank * self.workers + worker) for worker in range(self.workers)}
        state = slot_positions(state)
        for slot, position in state.items():
            # [epoch, block, shard, offset, index, batches, slots]: ints >= 0, the shard one of the slot's
            if not isinstance(position, (list, tuple)) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in position
            ):
                raise ValueError(f"state: expected positions of 7 ints >= 0, got {position!r} for slot {slot!r}")
            # the worker count first: positions of another count name shards of another deal, so the shard
            # bound below would refuse them as a bad checkpoint (training.resume) rather than name num_workers
            if len(position) != 7 or position[6] != self.workers or slot not in mine:
                slots = position[6] if len(position) == 7 else "?"
                raise ValueError(
                    f"num_workers: the checkpoint's stream positions are for {slots} loader worker slot(s) per "
                    f"rank (slot {slot}), this run has {self.workers} on rank {self.rank}; a streamed run resumes "
                    "with the ranks and loader workers it was started with"
                )
            if not self.resampled:
                shards = len(range(int(slot), len(self.urls), self.num_slots))
                if position[2] > shards:  # (== shards: at the end of its epoch)
                    raise ValueError(
                        f"state: slot {slot} has {shards} shard(s) an epoch, its position names shard {position[2]}"
                    )
        self._start = {slot: list(position) for slot, position in state.items()}
        self._rotation = sum(position[5] for position in self._start.values()) % self.workers

    def changed_shards(self, state: dict) -> Optional[tuple[int, int]]:
        """``(recorded, now)`` when the number of shards differs from the one a checkpointed ``state`` (the
        loop's merged batch positions) records; None when it does not or nothing is recorded.

        Every epoch deals a permutation of the shards seeded by their number, and positions name a slot's
        shards by their place in it: on a shard list that grew or shrank, a restarted slot would read other
        shards from other offsets (some twice in the epoch, others never). A recipe refuses such a resume.
        """
        recorded = state.get(STREAM_SHARDS) if isinstance(state, dict) else None
        if not isinstance(recorded, int) or recorded == len(self.urls):
            return None
        return recorded, len(self.urls)

    def _shard(self, slot: int, epoch: int, number: int) -> Optional[str]:
        """URL of the slot's ``number``-th shard of ``epoch``; None past its last."""
        if self.resampled:
            return self.urls[int(np.random.default_rng([self.seed, slot, number]).integers(len(self.urls)))]
        mine = self._slot_order(slot, epoch)
        return self.urls[int(mine[number])] if number < len(mine) else None

    def _slot_order(self, slot: int, epoch: int) -> np.ndarray:
        """Indices (into ``urls``) of the slot's shards of ``epoch``, in its order (not resampled)."""
        order = np.arange(len(self.urls))
        if self.shuffle_buffer:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.urls))
        return order[slot :: self.num_slots]

    def _epoch_shards(self, slot: int, epoch: int) -> list[str]:
        """URLs of the slot's shards of ``epoch``, in its order (not resampled: that stream has no epochs)."""
        return [self.urls[int(i)] for i in self._slot_order(slot, epoch)]

    def _read_before(self, slot: int, epoch: int, shard: int) -> set:
        """URLs of the shards the slot read whole before its ``shard``-th of ``epoch`` (where a restarted
        slot starts): what they hold was recorded before the restart."""
        urls: set = set()
        every = len(set(self.urls))
        if self.resampled:  # (one endless epoch of draws)
            for number in range(shard):
                urls.add(self._shard(slot, epoch, number))
                if len(urls) == every:
                    break
            return urls
        for past in range(epoch) if self.shuffle_buffer else range(min(epoch, 1)):  # (unshuffled: all alike)
            urls.update(self._epoch_shards(slot, past))
            if len(urls) == every:
                return urls
        return urls | set(self._epoch_shards(slot, epoch)[:shard])

    def _nothing_to_wait_for(self, slot: int, epoch: int, silent: set) -> bool:
        """After the slot's ``epoch`` gave no sample (its shards all empty): whether a later epoch cannot
        give one either. ``silent`` gathers the shards such epochs in a row read; a later epoch may
        draw another shard unless the order never changes (``shuffle_buffer=0``) or every shard of
        the stream was read empty."""
        if self.resampled:  # (no epochs: its reads end only by max_bad_in_a_row empty shards in a row)
            return True
        silent.update(self._epoch_shards(slot, epoch))
        return not self.shuffle_buffer or len(silent) == len(set(self.urls))

    def _reads(
        self,
        slot: int,
        epoch: int,
        shard: int,
        offset: int,
        errors: list,
        passed: Optional[set] = None,
        unreadable: Optional[list] = None,
    ) -> Iterator[tuple]:
        """``(shard, offset, url, raw)`` of the slot's samples of ``epoch`` from the ``offset``-th
        sample of its ``shard``-th shard on (the skipped ones read but not decoded, their names added to
        ``passed`` when given), and after the samples of a shard whose reading failed, ``(shard, None,
        url, fault)`` with its ``(url, count, error)``: a fault has a place in the stream, as a sample
        has, however the shard is read (from its start, or past an offset in a restart).

        ``unreadable[0]`` (kept across the epochs of a slot) counts the shards in a row that could not be
        read (an error, no sample): at ``max_bad_in_a_row`` the stream is broken (:class:`BrokenStream`)."""
        empty_in_a_row = 0
        unreadable = [0] if unreadable is None else unreadable
        for number in itertools.count(shard):
            url = self._shard(slot, epoch, number)
            if url is None:
                return
            start, given, failed = (offset if number == shard else 0), False, len(errors)
            for place, raw in enumerate(raw_samples(url, errors)):
                given = True
                if place >= start:
                    yield number, place, url, raw
                elif passed is not None:
                    passed.add(_sample_name(url, raw))
            for fault in errors[failed:]:
                yield number, None, url, fault
            empty_in_a_row = 0 if given else empty_in_a_row + 1
            # (shards that cannot be opened, e.g. every aws s3 cp without credentials: each was tried, a slot's
            # epochs over, until every shard of the stream had been read in vain, hours for thousands of shards)
            unreadable[0] = 0 if given or len(errors) == failed else unreadable[0] + 1
            if unreadable[0] >= self.max_bad_in_a_row:
                raise BrokenStream(
                    f"{self.kind}: {unreadable[0]} shards in a row could not be read ({_errors(errors)})"
                )
            if self.resampled and empty_in_a_row >= self.max_bad_in_a_row:
                raise BrokenStream(f"{self.kind}: {empty_in_a_row} shards in a row gave no sample ({_errors(errors)})")

    def _samples(self, slot: int, position: list, errors: list) -> Iterator[_Read]:
        """The slot's raw samples in block-shuffled order, from ``position`` on, without end.

        The shard faults read with a block go with its first sample given. What a slot restarted at
        ``position`` met before was recorded then, and is marked not to report: the shards it read whole
        (:meth:`_read_before`), and the samples it used of those it had begun (the start shard's before
        ``offset``, the block's first ``index``) wherever they come again."""
        epoch, block, shard, offset, index = position[:5]
        silent: set = set()  # shards read by whole epochs in a row that gave no sample
        before, used = self._read_before(slot, epoch, shard), set()
        faulted = set(before)  # shards whose fault was recorded
        faults: list = []  # faults to record, with the next sample given
        unreadable = [0]  # shards in a row that could not be read, over epochs
        while True:
            reads = self._reads(slot, epoch, shard, offset, errors, used, unreadable)
            found = False
            while True:
                chunk, read_faults, trailing = _block(reads, max(1, self.shuffle_buffer))
                order = np.arange(len(chunk))
                if self.shuffle_buffer:
                    order = np.random.default_rng([self.seed, epoch, slot, block]).permutation(len(chunk))
                if index:  # restarted inside this block: its first samples, and the faults given with them, used
                    used.update(_sample_name(url, raw) for _, _, url, raw in (chunk[i] for i in order[:index]))
                    faulted.update(url for _, _, url, _ in read_faults)
                    read_faults = []
                faults += [fault for _, _, url, fault in read_faults if url not in faulted]
                later = [fault for _, _, url, fault in trailing if url not in faulted]  # the next block's
                if not chunk:
                    faults += later
                    break
                found = True
                last_shard, last_offset = chunk[-1][:2]
                for place in range(index, len(chunk)):
                    _, _, url, raw = chunk[order[place]]
                    after = (epoch, block, shard, offset, place + 1)
                    if place + 1 == len(chunk):  # the next block starts after this one's last sample
                        after = (epoch, block + 1, last_shard, last_offset + 1, 0)
                    seed = item_seed(self.seed, self.kind, epoch, slot, block, place)
                    report = url not in before and _sample_name(url, raw) not in used
                    given, faults = tuple(faults), []
                    yield _Read(after, url, raw, seed, report, given)
                faults += later
                block, shard, offset, index = block + 1, last_shard, last_offset + 1, 0
            if found:
                silent.clear()
            elif (block, shard, offset) == (0, 0, 0) and self._nothing_to_wait_for(slot, epoch, silent):
                raise BrokenStream(
                    f"{self.kind}: slot {slot}'s shards of epoch {epoch} gave no sample ({_errors(errors)})"
                )
            epoch, block, shard, offset, index = epoch + 1, 0, 0, 0, 0

    def unusable_start(self) -> Optional[str]:
        """None when one of the first ``max_bad_in_a_row`` samples of this rank's first slot decodes
        (reading its first shards until one does); else why not, naming the first sample's fault: a
        stream without a usable sample is refused before any work, not after its first steps."""
        slot, errors, first, count = self.rank * self.workers, [], None, 0
        silent: set = set()
        unreadable = [0]
        try:
            for epoch in itertools.count():  # past epochs of empty shards only, while another may follow
                reads = self._reads(slot, epoch, 0, 0, errors, unreadable=unreadable)
                samples = (read for read in reads if read[1] is not None)
                for _, _, url, raw in itertools.islice(samples, self.max_bad_in_a_row):
                    count += 1
                    try:
                        self.decode(url, raw)
                        return None
                    except BadSample as bad:  # (the first; else the first whose key's members lie apart, which
                        # says why: the first piece of such a key cannot know the rest comes later)
                        if first is None or (APART in bad.reason and APART not in first.reason):
                            first = bad
                if count or self._nothing_to_wait_for(slot, epoch, silent):
                    break
        except BrokenStream as error:
            return str(error)
        if first is None:
            return f"slot {slot}'s shards gave no sample ({_errors(errors)})"
        which = "one" if APART in first.reason else "the first"
        return f"none of the first {count} samples of slot {slot}'s shards decodes; {which}: {first.reason}"

    # ------------------------------------------------------------------------------------ samples
    def decode(self, url: str, raw: dict) -> Sample:
        """Decode one raw sample (as :func:`raw_samples` gives it) with the random-access readers' rules.

        Args:
            url (str): its shard, for messages.
            raw (dict): ``{"__key__": key, "<extension>": bytes, ...}``.

        Returns:
            Sample: the required modalities (RGB image, stripped text); None for the others.

        Raises:
            BadSample: naming ``<url>:<key>``, if a required member is missing or does not decode, or
                the sample was cut.
        """
        where = _sample_name(url, raw)
        if "__cut__" in raw:
            raise BadSample(where, f"{where}: {raw['__cut__']}")
        members = {name.lower(): value for name, value in raw.items() if not name.startswith("__")}
        image = next((members[e] for e in self.image_extensions if e in members), None)
        text, json_key = _text_of(members, self.text_extensions, self.json_text_key)
        missing = [name for name, data in (("image", image), ("text", text)) if name in self.require and data is None]
        if missing:
            known = {*self.image_extensions, *self.text_extensions, "json"}
            others = (e for e in members if e not in known)
            read = members_read(self.image_extensions, self.text_extensions, self.json_text_key)
            reason = missing_members(missing, others, read=read, apart="__apart__" in raw)
            raise BadSample(where, f"{where}: {reason}")
        return Sample(
            image=read_image(io.BytesIO(image), where, where, self.max_pixels) if "image" in self.require else None,
            text=text_member(text, json_key, where, where) if "text" in self.require else None,
        )

    def texts(self, limit: int) -> list[str]:
        """:func:`shard_texts` of these shards, with this stream's text members."""
        return shard_texts(
            self.urls,
            limit,
            text_extensions=self.text_extensions,
            json_text_key=self.json_text_key,
            max_unreadable_in_a_row=self.max_bad_in_a_row,
        )

    # ------------------------------------------------------------------------------------ batches
    def __iter__(self) -> Iterator[StreamBatch]:
        """This slot's batches, from its restored position on (in a loader worker: that worker's slot).

        Raises:
            ValueError: if the loader has another number of workers than ``num_workers``.
            BrokenStream: if the data looks broken (``max_bad_in_a_row`` unusable samples or shards that
                cannot be read in a row, or the slot's epochs give no sample when no later epoch can: see the
                module's "Bad data").
        """
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers != self.workers:
            raise ValueError(
                f"num_workers: the stream was built for {self.workers} loader worker(s), the loader has {workers}"
            )
        local = (worker + self._rotation) % self.workers
        slot = self.rank * self.workers + local
        position = self._start.get(str(slot), [0, 0, 0, 0, 0, 0, self.workers])
        batches, where = position[5], tuple(position[:5])
        errors: list = []
        recorded: set = set()  # each unusable sample and shard once per run (shards are read every epoch)
        reads = self._samples(slot, position, errors)
        # every batch gives the number of shards and the mixed-in sources' sizes, which a resumed run checks
        # (changed_shards, MixedBatches.changed_sizes)
        sizes = {STREAM_SHARDS: len(self.urls), **({} if self.mixed is None else {SOURCE_SIZES: self.mixed.sizes})}

        def record(skipped: list, index: str, reason: str) -> None:
            if index not in recorded:
                recorded.add(index)
                skipped.append(SkippedSample(self.kind, index, reason))

        while True:
            step = batches * self.workers + local  # the loader takes its workers' batches in turn
            if self.mixed is not None:
                if step >= len(self.mixed):
                    return
                if self.mixed.kind(step) != self.kind:  # a step of a step-indexed kind
                    item = self.mixed[step]
                    batches += 1
                    position = {**sizes, str(slot): [*where, batches, self.workers]}
                    yield StreamBatch(item.batch, item.kind, item.skipped, position, [])
                    continue
            samples, seeds, keys, skipped, bad_in_a_row = [], [], [], [], 0
            while len(samples) < self.batch_size:
                read = next(reads)
                try:
                    samples.append(self.decode(read.url, read.raw))
                    seeds.append(read.seed)
                    keys.append(_sample_name(read.url, read.raw))
                    bad_in_a_row = 0
                except BadSample as bad:
                    if read.report:
                        record(skipped, bad.index, bad.reason)
                    bad_in_a_row += 1
                    if bad_in_a_row >= self.max_bad_in_a_row:
                        raise BrokenStream(
                            f"the {self.kind} stream gave {bad_in_a_row} unusable samples in a row (last: "
                            f"{bad.reason}); the data looks broken"
                        ) from None
                for url, count, error in read.faults:
                    record(skipped, url, _shard_fault(url, count, error))
            batches, where = batches + 1, read.position
            batch = self.collator(
                self.kind, samples, seeds, another=lambda row, seed, read, rows=samples: _another(rows, row, seed, read)
            )
            yield StreamBatch(batch, self.kind, skipped, {**sizes, str(slot): [*where, batches, self.workers]}, keys)


def slot_positions(position: dict) -> dict:
    """The slots' positions of a batch's (or a checkpoint's merged) ``position``, without the sizes it
    gives (:data:`STREAM_SHARDS`, :data:`~torchflava.data.mixing.SOURCE_SIZES`)."""
    return {key: value for key, value in position.items() if key not in (STREAM_SHARDS, SOURCE_SIZES, SOURCE_FILES)}


def _sample_name(url: str, raw: dict) -> str:
    """``"<url>:<key>"``: a sample's name in batches' keys and skipped samples."""
    return f"{url}:{raw.get('__key__')}"


def _block(reads: Iterator[tuple], size: int) -> tuple[list, list, list]:
    """The next ``size`` samples of a slot's ``reads`` (fewer at the end of its epoch), the shard faults
    read before its last sample, and those after it (at the end of the epoch: the next block's, as a
    restart in this block or after it reads them too, so each fault goes with the block of the sample
    that follows it)."""
    samples: list = []
    faults: list = []
    within = 0
    for read in reads:
        if read[1] is None:
            faults.append(read)
            continue
        samples.append(read)
        within = len(faults)
        if len(samples) == size:
            break
    return samples, faults[:within], faults[within:]


def _another(rows: list, row: int, seed: int, read: Callable) -> Optional[Any]:
    """``read(rows, j)`` for a row ``j != row`` drawn from ``seed``; None for a single row."""
    if len(rows) < 2:
        return None
    other = random.Random(seed).randrange(len(rows) - 1)
    return read(rows, other + (other >= row))


def _shard_fault(url: str, count: int, error: BaseException) -> str:
    """One line for shard ``url`` that broke off after ``count`` samples read: the error's type and
    text, its whitespace folded (a command's or a server's message may span lines), then the shard
    (``@ <url>``, as webdataset names it) unless the text names it already."""
    text = " ".join(str(error).split())
    where = "" if url in text else f" @ {url}"
    return f"shard unreadable after {count} sample(s): {type(error).__name__}: {text}{where}"


def _errors(errors: list) -> str:
    """The last few shard errors, for a message."""
    return "; ".join(_shard_fault(url, count, error) for url, count, error in errors[-3:]) or "no readable sample"
