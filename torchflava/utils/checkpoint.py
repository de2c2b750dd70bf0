"""Reading and writing state dicts: local paths or URLs, safetensors or torch files.

Loading never runs pickled code: torch files are read with ``weights_only=True``, TorchScript archives
(OpenAI's CLIP ``.pt``) by :mod:`torchflava.utils.torchscript`, their weights alone.
Writing is atomic: a file is written under a temporary name in the same directory, then renamed.
"""

import collections
import contextlib
import email.utils
import hashlib
import http.client
import importlib
import json
import math
import os
from pathlib import Path
import re
import shutil
import socket
import stat
import threading
import time
from typing import BinaryIO, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence, Union
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile

from iopath.common.file_io import get_cache_dir
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
import torch
from torch import Tensor, nn

from torchflava.utils.architecture import export_files
from torchflava.utils.torchscript import is_torchscript, torchscript_state_dict

PathLike = Union[str, os.PathLike]

# Names Hugging Face uses inside a checkpoint directory, in order of preference.
# A torchflava FLAVA export's architecture file (the pretraining recipe's model/ directory), beside its weights file.
_FLAVA_EXPORT_CONFIG = "backbone_config.json"
_DIRECTORY_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# Seconds a download may wait for the server at any one point (connecting, or between reads).
DOWNLOAD_TIMEOUT_S = 60.0
# A download (or a HEAD) stalls, and ends, when fewer than DOWNLOAD_MIN_BYTES_PER_S bytes a second of the file
# arrive averaged over any DOWNLOAD_STALL_S seconds from its request (curl's --speed-limit/--speed-time): a
# server that trickles a byte now and then never lets DOWNLOAD_TIMEOUT_S fire. The headers count as no bytes,
# so the answer (its redirects included) must begin within DOWNLOAD_STALL_S seconds.
DOWNLOAD_MIN_BYTES_PER_S = 1024
DOWNLOAD_STALL_S = 60.0
# Bytes a download leaves free on the disk it writes to, at the least: a file larger than the disk, or a
# server that never ends its body, is refused rather than filling the disk the run's checkpoints go to.
MIN_FREE_BYTES = 1 << 30
_SPACE_CHECK_BYTES = 64 << 20  # how often (bytes written) a download of no announced length looks again


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when it has none), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def local_checkpoint(path: PathLike) -> Path:
    """Resolve a checkpoint path or URL to a local path that exists.

    ``file://`` URLs name local files; http(s) URLs are downloaded into a cache (see :func:`_download`).

    Raises:
        TypeError: if ``path`` is not a str or os.PathLike.
        ValueError: if it is empty or a malformed URL.
        FileNotFoundError: if it does not exist.
        ConnectionError: if a URL cannot be downloaded.
    """
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise TypeError(f"checkpoint path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    text = os.fspath(path)
    if not text.strip():
        raise ValueError("checkpoint path must name a file, a directory or a URL, got an empty string")
    if text.startswith("file://"):
        parsed = urllib.parse.urlparse(text)
        if parsed.netloc not in ("", "localhost") or not parsed.path:  # (no path: the working directory)
            raise ValueError(f"file URLs must name a local file (file:///path), got {text!r}")
        text = urllib.request.url2pathname(parsed.path)
    elif "://" in text:
        text = _download(text)
    local = Path(os.path.expanduser(text))  # (Path.expanduser raises RuntimeError for an unknown ~user)
    if not local.exists():
        raise FileNotFoundError(f"checkpoint not found: {path!s}")
    return local


def training_run_model(builder: Callable, pretrained: object, given: dict) -> Optional[nn.Module]:
    """What ``builder`` builds for a ``pretrained`` that names a recipe run's training checkpoint (or a run without
    an export): :func:`torchflava.pretrained.trained_model`, imported only where ``pretrained`` may name one (a
    local directory or path; it reads runs, above the models); None for None, a URL of another scheme than
    ``file:`` or a file.

    Raises:
        As :func:`torchflava.pretrained.trained_model`.
    """
    if not isinstance(pretrained, (str, os.PathLike)) or not isinstance(os.fspath(pretrained), str):
        return None
    if is_remote(pretrained) or (not os.fspath(pretrained).startswith("file:") and Path(pretrained).is_file()):
        return None
    return importlib.import_module("torchflava.pretrained").trained_model(builder, pretrained, given)


_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")


def url_scheme(url: str) -> str:
    """The scheme of ``url`` in lower case (``"pipe"``, ``"https"``, ``"s3"``), or ``""`` for a local path."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match is not None and len(match.group(1)) > 1 else ""


def is_remote(path: object) -> bool:
    """Whether ``path`` is a URL that :func:`local_checkpoint` downloads.

    Args:
        path (object): a checkpoint path or URL (anything else: False).

    Returns:
        bool: whether it is a ``scheme://`` URL of any scheme but ``file:`` (which names a local file).
    """
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    return isinstance(text, str) and "://" in text and not text.startswith("file:")


def check_url(url: str) -> str:
    """Check a checkpoint URL that :func:`local_checkpoint` is to download, without any connection.

    Args:
        url (str): the URL.

    Returns:
        str: the name of the file it downloads (percent-decoded).

    Raises:
        ValueError: unless ``url`` is ``http(s)://host/.../file`` (ASCII, percent-encoded) without
            ``..`` or ``.`` path segments or a ``/`` hidden in the file name (``%2F``).
    """
    parsed = urllib.parse.urlparse(url)
    name = urllib.parse.unquote(parsed.path.rpartition("/")[2])
    if parsed.scheme not in ("http", "https") or not parsed.netloc or not name or not url.isascii():
        raise ValueError(
            f"checkpoint URLs must be http(s)://host/.../file (ASCII, percent-encoded) or file:///path, got {url!r}"
        )
    if ".." in urllib.parse.unquote(parsed.path).split("/") or name == ".":
        raise ValueError(f"checkpoint URLs must not hold '..' or '.' path segments, got {url!r}")
    if "/" in name:
        raise ValueError(f"checkpoint URLs must not hide a '/' in the file name (%2F), got {url!r}")
    if not name.isprintable():  # a NUL (%00) or a newline is no file name
        raise ValueError(f"checkpoint URLs must not hide control characters in the file name, got {url!r}")
    return name


def _download(url: str) -> str:
    """The local copy of an http(s) URL, kept in a cache directory of its own (a hash of the whole
    URL: host, port, path and query) under iopath's cache, and checked with the server on every
    call: with an ETag, a conditional GET (``If-None-Match``); with only a Last-Modified date, a HEAD
    whose date and length must equal the copy's (a date is not trusted where the file changed in the
    second it was served, RFC 7232's weak validator); else downloaded again.

    The download ends with ConnectionError naming the URL, nothing of the file kept, when the server stops
    answering for :data:`DOWNLOAD_TIMEOUT_S` seconds or stalls (fewer than :data:`DOWNLOAD_MIN_BYTES_PER_S`
    bytes a second over any :data:`DOWNLOAD_STALL_S` seconds, see :class:`_Watch`); when the file would leave
    less than :data:`MIN_FREE_BYTES` free on the cache's disk; when the answer is not the whole file as it is
    (see :func:`_check_answer`: a 206 part, a gzip Content-Encoding...); and when a redirect leads off http(s)
    or from https down to http (see :class:`_Redirects`). A server that cannot be reached, does not begin
    to answer within :data:`DOWNLOAD_STALL_S` seconds or fails (5xx) leaves a copy downloaded before in use,
    with a warning."""
    name = check_url(url)
    directory = _download_directory(url)
    local = (
        directory
        / "file"
        / (name if len(name) <= 128 else hashlib.sha256(name.encode()).hexdigest() + Path(name).suffix[:16])
    )
    validators = directory / "validators.json"
    try:
        saved = json.loads(validators.read_text()) if local.is_file() else None
    except (OSError, ValueError, RecursionError):  # none, or unreadable: download again
        saved = None
    cached = isinstance(saved, dict)
    try:
        if cached and _unchanged(url, saved):
            return str(local)
        request = urllib.request.Request(url)
        if cached and _saved_etag(saved) is not None:
            request.add_header("If-None-Match", _saved_etag(saved))
        with _Watch() as watch, _open(request, watch) as response:
            _check_answer(response)
            validators.unlink(missing_ok=True)  # (a copy without its validators is downloaded again)
            atomic_write(local, lambda tmp: _copy_response(response, tmp, watch))
            found = {key: response.headers.get(header) for key, header in _VALIDATORS}
        atomic_write(validators, lambda tmp: Path(tmp).write_text(json.dumps(found)))
    except urllib.error.HTTPError as error:
        reason = " ".join(str(error.reason).split())  # (urllib's redirect-loop reason spans three lines)
        if error.code == 304 and cached:  # not modified
            return str(local)
        if error.code >= 500 and cached:
            return _stale(url, local, f"HTTP Error {error.code}: {reason}")
        raise ConnectionError(f"checkpoint: could not download {url}: HTTP Error {error.code}: {reason}") from None
    except (OSError, http.client.HTTPException) as error:  # refused, unreachable, timed out, cut short, empty
        if cached and isinstance(error, (urllib.error.URLError, http.client.RemoteDisconnected, _NoAnswer)):
            return _stale(url, local, first_line(error))
        raise ConnectionError(f"checkpoint: could not download {url}: {first_line(error)}") from None
    return str(local)


_VALIDATORS = (("etag", "ETag"), ("last_modified", "Last-Modified"), ("date", "Date"), ("length", "Content-Length"))


def _download_directory(url: str) -> Path:
    return Path(get_cache_dir()) / "torchflava" / hashlib.sha256(url.encode()).hexdigest()[:32]


def _saved_etag(saved: dict) -> Optional[str]:
    """The ETag saved with a copy, if it is one that can be sent back (RFC 9110's characters: visible
    ASCII and obs-text); None for none, or for a damaged one (not a string, a newline or a character
    beyond latin-1 in it: http.client would raise on sending it, naming no URL)."""
    etag = saved.get("etag")
    return etag if isinstance(etag, str) and re.fullmatch(r"[\x21-\x7e\x80-\xff]+", etag) else None


def _unchanged(url: str, saved: dict) -> bool:
    """Whether a copy without an ETag is still the server's file: the same Last-Modified and length
    (a HEAD answered 200), the date strong (at least a second before the copy was served)."""
    if _saved_etag(saved) is not None or not all(isinstance(saved.get(k), str) for k in ("last_modified", "date")):
        return False
    try:
        modified = email.utils.parsedate_to_datetime(saved["last_modified"])
        served = email.utils.parsedate_to_datetime(saved["date"])
    except (TypeError, ValueError):
        return False
    if (served - modified).total_seconds() < 1:  # weak: it may have changed again within that second
        return False
    with _Watch() as watch, _open(urllib.request.Request(url, method="HEAD"), watch) as response:
        return response.status == 200 and (
            response.headers.get("Last-Modified"),
            response.headers.get("Content-Length"),
        ) == (saved["last_modified"], saved.get("length"))


class _NoAnswer(TimeoutError):
    """A server that did not begin its answer within :data:`DOWNLOAD_STALL_S` seconds (as one that cannot
    be reached, a copy downloaded before stands in for its file)."""


class _Watch:
    """Watches one HTTP exchange, its redirects included, for a stall: fewer than
    :data:`DOWNLOAD_MIN_BYTES_PER_S` bytes a second of the body (``received``, counted by the reader)
    averaged over any :data:`DOWNLOAD_STALL_S` seconds from the request. The headers count as no bytes,
    so the answer must begin within that time. A thread of its own looks every eighth of the window and,
    on a stall, shuts the exchange's sockets down: that ends a read blocked on them, where a socket
    timeout (:data:`DOWNLOAD_TIMEOUT_S`) fires only on a silence and never on a trickle; ``stalled`` then
    says why, in one line. Use it as a context manager around the exchange."""

    def __init__(self) -> None:
        self.received = 0
        self.answered = False
        self.stalled: Optional[str] = None
        self._sockets: list = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-download-watch", daemon=True)

    def __enter__(self) -> "_Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def stop(self) -> None:
        """Stop watching (``stalled`` stays as it is from then on)."""
        self._done.set()
        self._thread.join()

    def connection(self, kind: type) -> Callable[..., http.client.HTTPConnection]:
        """A maker of ``kind`` (an http.client connection class) whose sockets are watched."""

        def make(host: str, **kwargs) -> http.client.HTTPConnection:
            made = kind(host, **kwargs)
            create = made._create_connection  # (http.client opens every socket it uses through this)

            def watched(*args, **create_kwargs):
                sock = create(*args, **create_kwargs)
                self._add(sock)
                return sock

            made._create_connection = watched
            return made

        return make

    def _add(self, sock) -> None:
        # Shut down through a descriptor of our own: TLS detaches the connection's, and shutdown acts on
        # the socket that every descriptor of it shares.
        with self._lock:
            self._sockets.append(sock.dup())
        if self.stalled is not None:
            self._shut()

    def _shut(self) -> None:
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # (closed at the other end already)
                    pass

    def _run(self) -> None:
        window, least = DOWNLOAD_STALL_S, DOWNLOAD_MIN_BYTES_PER_S * DOWNLOAD_STALL_S
        if not 0 < window < math.inf or not least > 0:  # the rule switched off (e.g. DOWNLOAD_STALL_S = inf)
            return
        samples = collections.deque([(time.monotonic(), 0)])  # (when, bytes received by then)
        while not self._done.wait(window / 8):
            now, received = time.monotonic(), self.received
            samples.append((now, received))
            while samples[1][0] <= now - window:  # the first sample: the newest a whole window old
                samples.popleft()
            since, before = samples[0]
            if now - since < window or received - before >= least:
                continue
            if not self.answered:
                self.stalled = f"the server did not answer within {window:g} s (DOWNLOAD_STALL_S)"
            else:
                self.stalled = (
                    f"the download stalled: {received - before} bytes in {now - since:.3g} s, fewer than "
                    f"{DOWNLOAD_MIN_BYTES_PER_S} bytes/s (DOWNLOAD_MIN_BYTES_PER_S) over {window:g} s (DOWNLOAD_STALL_S)"
                )
            self._shut()
            return


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watch: _Watch) -> None:
        super().__init__()
        self._watch = watch

    def http_open(self, req):
        return self.do_open(self._watch.connection(http.client.HTTPConnection), req)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watch: _Watch) -> None:
        super().__init__()
        self._watch = watch

    def https_open(self, req):
        return self.do_open(self._watch.connection(http.client.HTTPSConnection), req, context=self._context)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects (at most 10, 4 to one URL; it refuses ``file:`` and ``data:`` targets itself),
    to http(s) URLs only: not to ``ftp:``, which it would follow, and not from https down to http, where
    the file would come unencrypted and unauthenticated from a server the user never named."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        source, target = urllib.parse.urlparse(req.full_url).scheme, urllib.parse.urlparse(newurl).scheme
        if target not in ("http", "https"):
            refusal = f"the server redirected to a {target!r} URL; checkpoints are downloaded over http(s) only"
        elif (source, target) == ("https", "http"):
            refusal = "the server redirected from https down to http (unencrypted), which is refused"
        else:
            return super().redirect_request(req, fp, code, msg, headers, newurl)
        fp.close()
        raise ConnectionError(refusal)


def _open(request: urllib.request.Request, watch: _Watch):
    """``urlopen(request)`` with :data:`DOWNLOAD_TIMEOUT_S`, redirects by :class:`_Redirects`, its sockets
    watched by ``watch``; :class:`_NoAnswer` where ``watch`` found no answer in time."""
    opener = urllib.request.build_opener(_WatchedHTTPHandler(watch), _WatchedHTTPSHandler(watch), _Redirects())
    try:
        response = opener.open(request, timeout=DOWNLOAD_TIMEOUT_S)
    except (OSError, http.client.HTTPException):
        if watch.stalled is None:
            raise
        raise _NoAnswer(watch.stalled) from None
    watch.answered = True
    return response


def _stale(url: str, local: Path, reason: str) -> str:
    warnings.warn(f"checkpoint: {url} cannot be reached ({reason}); using the copy downloaded before", stacklevel=3)
    return str(local)


def _free_bytes(directory: str) -> int:
    """Bytes free for this process on the disk of ``directory``."""
    return shutil.disk_usage(directory).free


def _announced_length(response) -> Optional[int]:
    """The Content-Length of ``response``, or None without one; OSError for one that is no number of
    bytes (``-1``, ``abc``, ``²``: http.client reads such a body to its end, of any length)."""
    value = response.headers.get("Content-Length")
    if value is None:
        return None
    if re.fullmatch(r"[0-9]+", value.strip()) is None:
        raise OSError(f"the server announced a Content-Length of {value!r}, not a number of bytes")
    return int(value)


def _check_answer(response) -> None:
    """OSError unless ``response`` to a plain GET holds the whole file as it is: status 200 (a 206 is a
    part of it), no Content-Encoding but identity (urllib decodes none: a gzip body would be saved as
    the checkpoint), no Transfer-Encoding that http.client leaves undecoded (anything but chunked) and
    a Content-Length, if any, that is a number."""
    if response.status != 200:
        raise OSError(f"the server answered {response.status} {response.reason}, expected 200 with the whole file")
    encoding = response.headers.get("Content-Encoding", "identity")
    if encoding.strip().lower() != "identity":
        raise OSError(f"the server sent the file with Content-Encoding {encoding!r}, expected it as it is (identity)")
    transfer = response.headers.get("Transfer-Encoding")
    if transfer is not None and not response.chunked:
        raise OSError(f"the server sent the file with Transfer-Encoding {transfer!r}, expected chunked or none")
    _announced_length(response)


def _copy_response(response, path: str, watch: _Watch) -> None:
    """The body of an HTTP response into ``path``, each read counted in ``watch``; OSError if it is
    empty or shorter than announced, if writing it would leave less than :data:`MIN_FREE_BYTES` free on
    its disk (told before the first byte from an announced length; without one, looked at every 64 MiB
    as it is written), or (TimeoutError) if ``watch`` found it stalled."""
    announced = _announced_length(response)
    directory = os.path.dirname(os.path.abspath(path))

    def check_space(to_write: int) -> None:
        free = _free_bytes(directory)
        if free - to_write < MIN_FREE_BYTES:
            raise OSError(
                f"the download would leave less than {MIN_FREE_BYTES} bytes (MIN_FREE_BYTES) free on the disk of "
                f"{directory} ({free} free, {to_write} more announced)"
            )

    if announced is not None:
        check_space(announced)
    size = checked = 0
    try:
        with open(path, "wb") as file:
            # read1: one read of the socket at a time, so that the watch sees a slow body arrive (read()
            # waits for the whole chunk); 64 KiB, as a TLS read gives 16 KiB at most, a plain one what is there
            while chunk := response.read1(1 << 16):
                file.write(chunk)
                size += len(chunk)
                watch.received = size
                if announced is None and size - checked >= _SPACE_CHECK_BYTES:
                    checked = size
                    check_space(0)
    except (OSError, http.client.HTTPException):
        if watch.stalled is None:
            raise
    watch.stop()  # (a stalled watch shut the socket: the body ended early, or its read failed)
    if watch.stalled is not None:
        raise TimeoutError(watch.stalled)
    if size == 0:
        raise OSError("the server sent an empty file")
    if announced is not None and announced != size:
        raise OSError(f"the download stopped at {size} of {announced} bytes")


# What a path that is no regular file is, by its stat mode.
_SPECIAL_FILES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def special_file_kind(path: PathLike) -> Optional[str]:
    """What ``path`` is when it is no regular file (``"a FIFO (named pipe)"``, ``"a directory"``, ``"a
    socket"``, ``"a character device"``...), or None for a regular file (links followed). Check it before
    opening a file a user names: reading a FIFO waits for a writer forever, a device may never end.

    Raises:
        OSError: if ``path`` cannot be looked up (FileNotFoundError when nothing is there).
    """
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return None
    return next((kind for is_kind, kind in _SPECIAL_FILES if is_kind(mode)), "a special file")


def check_regular_file(path: PathLike, expected: str) -> None:
    """ValueError, naming ``path``, what it is and the ``expected`` file, unless ``path`` is a regular
    file (:func:`special_file_kind`); nothing is opened."""
    kind = special_file_kind(path)
    if kind is not None:
        raise ValueError(f"{os.fspath(path)} is {kind}, not a regular file: expected {expected}")


def present_file(path: PathLike, expected: str) -> bool:
    """Whether ``path`` is a regular file: False when nothing is there (an optional file), ValueError (see
    :func:`check_regular_file`) when something else is (a FIFO, a directory...), which ``is_file()``
    would pass over as absent, so that defaults would stand in for it silently."""
    if not os.path.lexists(path):
        return False
    check_regular_file(path, expected)
    return True


def _file_kind(path: Path) -> str:
    """``"index"``, ``"safetensors"`` or ``"torch"``: by the file's first bytes where they tell (a
    Hub cache blob has no suffix; a safetensors file may be named ``.pt``), else by its suffix.

    Raises:
        ValueError: for a Git LFS pointer (the weights were never fetched), a ``.json`` file that is
            not a sharded checkpoint's ``*.index.json`` (e.g. a ``config.json``), a file that starts as
            neither a torch checkpoint nor a safetensors file (text, gzip, random bytes), or a path that
            is no regular file (a FIFO: reading it would wait for a writer forever).
    """
    check_regular_file(path, "a checkpoint file (safetensors, torch or *.index.json)")
    if path.suffix.lower() == ".json":
        if not path.name.lower().endswith(".index.json"):
            raise ValueError(
                f"{path} is not a sharded checkpoint's *.index.json: pass the checkpoint's directory or its weights file"
            )
        return "index"
    with open(path, "rb") as handle:
        head = handle.read(32)
    if head.startswith(b"version https://git-lfs"):
        raise ValueError(f"{path} is a Git LFS pointer, not the weights: fetch them first (git lfs pull)")
    if head[8:9] == b"{":  # safetensors: an 8-byte header length, then its JSON header (first: the
        return "safetensors"  # length's first byte may be 0x80; a zip or a torch pickle has no "{" there)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch's zip archive, or its older pickle
        return "torch"
    if path.suffix.lower() == ".safetensors":
        return "safetensors"  # (its reader says what is wrong with it)
    raise ValueError(
        f"{path} is neither a safetensors file nor a torch checkpoint (a zip archive or a pickle): it starts "
        f"with {head[:8]!r}"
    )


def _refusal(error: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line: the unpickler's own reason
    (e.g. ``Unsupported global: GLOBAL argparse.Namespace``), not torch's advice to unpickle."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines()
    reason = next(
        (line.split("WeightsUnpickler error:", 1)[1] for line in lines if "WeightsUnpickler error:" in line), ""
    )
    reason = reason.strip(" |").split(" was not an allowed global")[0]
    if not reason:  # e.g. "Trying to load unsupported GLOBAL posix.system whose module posix is blocked."
        reason = next((line.strip().rstrip(".") for line in lines if "GLOBAL" in line), "")
    if not reason and "weights_only" in str(error):  # never torch's advice to unpickle
        reason = "the restricted unpickler refused it"
    return reason or first_line(error)


# Entries training scripts wrap a state dict in, beside an epoch, an optimiser state...
_WRAPPERS = ("state_dict", "model")


def _load_file(path: Path, *, mmap: bool = False) -> dict[str, Tensor]:
    kind = _file_kind(path)
    if kind == "index":
        return _load_index(path)
    if kind == "safetensors":
        try:
            return _checked_tensors(path, load_file(str(path)))
        except SafetensorError as error:  # empty, truncated, or not safetensors at all
            raise ValueError(f"could not read {path} as a safetensors file: {first_line(error)}") from error
    # (peek_state_dict maps the file to read names and shapes: no tensor data is read or checked)
    _check_zip(path, crcs=not mmap)
    obj = torchscript_state_dict(str(path), mmap=mmap) if is_torchscript(str(path)) else _torch_file(path, mmap)
    wrapper = next((k for k in _WRAPPERS if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
    obj = obj[wrapper] if wrapper is not None else obj
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        found = f"entries {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors), got {found}")
    _refuse_repeated_storage(path, obj)
    return _checked_tensors(path, obj, values=not mmap)


def _torch_file(path: Path, mmap: bool) -> object:
    """What a torch file holds, read with ``weights_only`` (ValueError naming it if refused or cut short)."""
    try:
        return _torch_load(path, mmap)
    except Exception as err:  # pickled code, a truncated file, or not a torch file at all
        if isinstance(err, EOFError) or "unexpected EOF" in str(err):  # a legacy (pickle) file cut short
            raise ValueError(f"{path} is truncated: not a valid torch checkpoint (download or copy it again)") from err
        raise ValueError(
            f"could not read {path} as a state dict with weights_only=True (no pickled code is run): {_refusal(err)}"
        ) from err


def _refuse_repeated_storage(path: Path, tensors: dict[str, Tensor]) -> None:
    """ValueError naming the file if its tensors span more than 4 times its size: strides that repeat a
    storage (``expand``: a (2**20, 2**20) tensor over 4 bytes) or many names for one storage, which the
    finiteness check would scan, and copies of shared tensors or ``contiguous()`` would allocate, whole."""
    dense = {key: value for key, value in tensors.items() if value.layout == torch.strided and not value.is_meta}
    spanned = sum(value.numel() * value.element_size() for value in dense.values())  # (meta, sparse: refused after)
    size = path.stat().st_size
    if spanned > _MAX_ZIP_EXPANSION * size + (1 << 20):
        largest = max(dense, key=lambda key: dense[key].numel() * dense[key].element_size())
        value = dense[largest]
        raise ValueError(
            f"{path}: expected tensors the file holds, got {spanned} bytes of tensors from a {size}-byte file (tensors "
            f"repeating their storage: e.g. {largest!r} of shape {list(value.shape)}, strides {list(value.stride())})"
        )


# How many times its own size a torch zip's entries may expand to: torch.save stores them uncompressed,
# and weights compress little; a compressed archive that expands further (a zip bomb) would have
# torch.load allocate every entry's full size.
_MAX_ZIP_EXPANSION = 4


def _check_zip(path: Path, *, crcs: bool) -> None:
    """ValueError naming the file if a zip-format torch file is truncated or otherwise not a readable
    zip archive (torch said ``[Errno 22] Invalid argument``), or, with ``crcs``, naming the entry that
    fails its CRC-32 check (torch.load reads damaged tensor data without a word: a few flipped bytes
    became weights of 3e32)."""
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":  # a legacy torch file (zipfile would search its end for an index)
            return
    try:
        with zipfile.ZipFile(path) as archive:  # reads the archive's directory, at the end of the file
            _refuse_expansion(archive, path.stat().st_size, str(path))
            damaged = archive.testzip() if crcs else None
    except (zipfile.BadZipFile, EOFError):  # (zipfile finds no archive directory in a file cut short)
        raise ValueError(
            f"{path} is truncated or damaged: not a valid torch checkpoint (its zip archive cannot be read; "
            "download or copy it again)"
        ) from None
    if damaged is not None:
        raise ValueError(f"{path} is damaged: its entry {damaged!r} fails its CRC check (download or copy it again)")


def _refuse_expansion(archive: zipfile.ZipFile, size: int, what: str) -> None:
    expanded = sum(info.file_size for info in archive.infolist())
    if expanded > _MAX_ZIP_EXPANSION * size + (1 << 20):
        raise ValueError(
            f"{what}: expected a torch checkpoint (whose entries torch.save stores uncompressed), got a zip "
            f"archive whose entries expand to {expanded} bytes from {size}: refusing to read it"
        )


def check_zip_expansion(file: BinaryIO, what: str) -> None:
    """ValueError naming ``what`` if the seekable binary ``file`` is a zip archive (a torch file, from
    its start) whose entries expand to more than 4 times its size (compressed entries, which
    ``torch.save`` never writes: a zip bomb, whose every entry ``torch.load`` would allocate whole).
    Anything else, a damaged archive included, is left to ``torch.load`` to read or refuse; ``file``
    is left at its start. Call it before ``torch.load`` of a file someone else may have written."""
    file.seek(0)
    if file.read(4) == b"PK\x03\x04":
        size = file.seek(0, os.SEEK_END)
        file.seek(0)
        try:
            with zipfile.ZipFile(file) as archive:
                _refuse_expansion(archive, size, what)
        except (zipfile.BadZipFile, EOFError, OSError):
            pass
    file.seek(0)


def _torch_load(path: Path, mmap: bool) -> object:
    """``torch.load`` with ``weights_only``; memory-mapped when asked and the file allows it."""
    if path.suffix.lower() == ".safetensors":  # torch.load hands such a path to safetensors: give it the bytes
        with open(path, "rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    if mmap:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:  # an old non-zip file cannot be mapped: read it
            if "mmap" not in str(error):
                raise
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _load_index(path: Path) -> dict[str, Tensor]:
    """The tensors of the shards a sharded checkpoint's index names, all beside it (checked against
    the index by :func:`_check_shard_keys`)."""
    merged: dict[str, Tensor] = {}
    weight_map, found_in = _index_weight_map(path), {}
    for shard in _index_shards(path):
        tensors = _load_file(path.parent / shard)
        _check_shard_keys(path, shard, list(tensors), weight_map, found_in)
        merged.update(tensors)
    return merged


def _check_shard_keys(index: Path, shard: str, keys: list[str], weight_map: dict, found_in: dict[str, str]) -> None:
    """ValueError naming the ``index`` unless ``shard`` holds none that an earlier shard held
    (``found_in``: tensor name -> shard, updated) and, a torch file, every tensor its ``weight_map``
    puts there: a merge would silently keep one of two tensors of a name, or lack one the index lists.
    A safetensors shard may lack names the index lists: safetensors stores no aliases, so a tied
    weight's second name is dropped from the file while the index keeps it (safetensors' ``convert``,
    the Hub's conversion bot, writes the ``.bin`` index's names over the converted shards); the
    models' loaders name any tensor they need that is missing."""
    twice = [key for key in keys if key in found_in]
    if twice:
        raise ValueError(
            f"{index}: expected each tensor in one shard, got {twice[0]!r} in both {found_in[twice[0]]} and {shard} "
            f"({len(twice)} such tensor(s))"
        )
    aliases_dropped = _file_kind(index.parent / shard) == "safetensors"
    absent = [] if aliases_dropped else sorted(set(k for k, name in weight_map.items() if name == shard) - set(keys))
    if absent:
        raise ValueError(
            f"{index}: its weight_map puts {len(absent)} tensor(s) in {shard}, which does not hold them: {absent[:5]}"
        )
    found_in.update(dict.fromkeys(keys, shard))


def _index_weight_map(path: Path) -> dict[str, str]:
    """A sharded checkpoint index's ``weight_map`` (tensor name -> shard file name), its types checked."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:  # (nested too deeply)
        raise ValueError(f"{path} is not a JSON checkpoint index: {first_line(error)}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{path}: expected a 'weight_map' of tensor names to shard file names, got {weight_map!r:.80}")
    return weight_map


def _index_shards(path: Path) -> list[str]:
    """The shard files a sharded checkpoint's index names (checked: files beside it, all present)."""
    shards = sorted(set(_index_weight_map(path).values()))
    if not shards:
        raise ValueError(f"{path} has no 'weight_map' entries")
    stray = [s for s in shards if Path(s).name != s or s in (".", "..") or Path(s).suffix == ".json"]
    if stray:
        raise ValueError(f"{path}: expected shard files beside the index (no directories, no index), got {stray[:3]}")
    for shard in shards:
        if not (path.parent / shard).exists():
            raise FileNotFoundError(f"{path}: shard {shard} not found beside the index")
        check_regular_file(path.parent / shard, f"a shard of the checkpoint {path}")
    return shards


def read_json_object(path: PathLike) -> dict:
    """The JSON object (a dict) a config file holds; ValueError naming the file otherwise (one that
    is no regular file is not opened), FileNotFoundError when there is none."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} not found")
    check_regular_file(path, "a JSON file")
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:  # (nested too deeply)
        raise ValueError(f"{path} is not JSON: {first_line(error)}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got a {type(value).__name__}")
    return value


def check_state_dict(state_dict: object, name: str = "state_dict") -> None:
    """TypeError, naming ``name``, unless ``state_dict`` is a mapping of str keys to tensors."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{name} must be a mapping of names to tensors, got {type(state_dict).__name__}")
    bad = [(k, type(v).__name__) for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise TypeError(f"{name} must map str names to tensors, got {bad[:3]} (key, value type)")


def without_prefix(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """``state_dict`` with ``prefix`` (e.g. DDP's ``module.``) dropped from its keys; TypeError unless
    a mapping of str names to tensors, ValueError if dropping the prefix makes two keys one."""
    check_state_dict(state_dict)
    out = {key.removeprefix(prefix): value for key, value in state_dict.items()}
    if len(out) < len(state_dict):
        twice = sorted(k for k in out if k in state_dict and prefix + k in state_dict)
        raise ValueError(f"state_dict: expected each key once with or without {prefix!r}, got both for {twice[:5]}")
    return out


# Keys of open_clip models whose towers torchflava's CLIP does not build (their first match), and what they are.
OPEN_CLIP_UNBUILT = {
    r"^text_decoder\.": "CoCa's captioning decoder",
    r"^logit_bias$": "SigLIP's sigmoid-loss bias",
    r"^visual\.trunk\.": "a timm image tower (ConvNeXt, EVA, SigLIP, ViTamin, MobileCLIP...)",
    r"^visual\.(layer1|attnpool)\.": "a ResNet image tower",
    r"^visual\.attn_pool\.": "an attention-pooled image tower (CoCa)",
    r"^text\.": "a text tower of its own (a Hugging Face or custom one: MobileCLIP, SigLIP, NLLB, RoBERTa...)",
    r"\.ls_[12]\.": "layer scale",
}


def clip_source(state_dict: dict[str, Tensor], where: object = "state_dict") -> dict[str, Tensor]:
    """``state_dict`` without DDP's ``module.`` (:func:`without_prefix`); ValueError naming ``where``, the first key
    of an open_clip model whose towers torchflava's CLIP does not build and what it is (:data:`OPEN_CLIP_UNBUILT`)."""
    out = without_prefix(state_dict, "module.")
    for probe, what in OPEN_CLIP_UNBUILT.items():
        if (key := next((k for k in out if re.search(probe, k)), None)) is not None:
            raise ValueError(
                f"{where}: expected CLIP's ViT towers, got {key!r}: {what}, which torchflava does not build"
            )
    return out


def mismatch(
    key: str, parts: Sequence[Tensor], target: Tensor, *, transposed: bool = False, squeezable: bool = False
) -> Optional[str]:
    """Why ``parts`` cannot fill the model's ``target`` tensor ``key``, or None when they can.

    The parts are joined along dim 0 (a fused tensor: q, k and v), then transposed when asked (a
    projection kept as ``x @ W``); the result must have the target's shape (with ``squeezable``,
    leading 1s may be missing: a CLS token, a position table) and be floating point where the
    target is.
    """
    shapes = [tuple(p.shape) for p in parts]
    joined: Optional[tuple] = shapes[0]
    if len(parts) > 1:
        same = all(s and s[1:] == shapes[0][1:] for s in shapes)
        joined = (sum(s[0] for s in shapes), *shapes[0][1:]) if same else None
    if transposed:
        joined = joined[::-1] if joined is not None and len(joined) == 2 else None
    allowed, squeezed = {tuple(target.shape)}, tuple(target.shape)
    while squeezable and squeezed and squeezed[0] == 1:
        squeezed = squeezed[1:]
        allowed.add(squeezed)
    if joined not in allowed:
        got = [list(s) for s in shapes] if len(shapes) > 1 else list(shapes[0])
        if transposed and target.dim() == 2:  # the shape the file should hold, not the model's (they differ)
            return f"{key} {got} for {list(target.shape)[::-1]} (kept as x @ W: the model's {list(target.shape)}, transposed)"
        return f"{key} {got} for {list(target.shape)}"
    if target.is_floating_point() and not all(p.is_floating_point() for p in parts):
        return f"{key} {parts[0].dtype} for a {target.dtype} tensor"
    return None


def check_fits(state_dict: dict[str, Tensor], model: nn.Module) -> None:
    """ValueError listing the tensors of ``state_dict`` whose shape or dtype cannot fill ``model``'s
    tensor of the same name (one line, before ``load_state_dict`` would fail inside torch)."""
    expected = model.state_dict()
    refuse_mismatches([bad for k, v in state_dict.items() if k in expected and (bad := mismatch(k, [v], expected[k]))])


class MappedStateDict(NamedTuple):
    """What :func:`map_state_dict` found: the tensors under the model's names, the reference names
    that are absent, the mis-shaped or non-float tensors (:func:`mismatch`), and the names used."""

    tensors: dict[str, Tensor]
    missing: list[str]
    wrong: list[str]
    used: set[str]


def map_state_dict(
    source: dict[str, Tensor],
    expected: dict[str, Tensor],
    names: Callable[[str], list[str]],
    *,
    transposed: Callable[[str], bool] = lambda key: False,
    squeezable: bool = False,
) -> MappedStateDict:
    """Fill each of the model's tensors ``expected`` from ``source``'s tensors ``names(key)`` (several
    parts are joined along dim 0: q, k and v), transposed where ``transposed(key)``, reshaped (leading
    1s) and cast to the model's tensor; what cannot be filled is listed, not raised."""
    out, missing, wrong, used = {}, [], [], set()
    for key, target in expected.items():
        parts = names(key)
        used.update(n for n in parts if n in source)  # parts of a fused tensor are expected, not unexpected
        if not all(n in source for n in parts):
            missing += [n for n in parts if n not in source]
        elif bad := mismatch(
            key, [source[n] for n in parts], target, transposed=transposed(key), squeezable=squeezable
        ):
            wrong.append(bad)
        else:
            value = torch.cat([source[n] for n in parts]) if len(parts) > 1 else source[parts[0]]
            value = value.t() if transposed(key) else value
            out[key] = value.reshape(target.shape).to(target.dtype).contiguous()  # CLS, positions; fp16 files
    return MappedStateDict(out, missing, wrong, used)


def refuse_mismatches(wrong: list[str]) -> None:
    """ValueError listing the :func:`mismatch` findings ``wrong``, if any."""
    if wrong:
        raise ValueError(
            f"checkpoint tensor shapes or dtypes do not match the model (pass the checkpoint's architecture to "
            f"the builder): {len(wrong)} {wrong[:10]}"
        )


def refuse_unmatched(
    what: str,
    missing: Sequence[str],
    unexpected: Sequence[str],
    wrong: Sequence[str] = (),
    hint: str = "Check that the architecture arguments match the checkpoint.",
    *,
    disagree: Optional[Mapping[str, tuple[object, object]]] = None,
) -> None:
    """ValueError naming ``what`` (a checkpoint and its layout) and listing, on one line, up to 5 keys the model
    needs and it lacks, it holds and nothing maps, and (up to 3) of the wrong shape, if any; then the builder
    arguments ``disagree`` names with their (built, checkpoint's) values (those its shapes tell), else ``hint``."""
    if missing or unexpected or wrong:
        shapes = f", wrong {len(wrong)} {list(wrong[:3])}" if wrong else ""
        if disagree:  # what to change, where the shapes tell it: the keys alone name no argument
            pairs = ", ".join(
                f"{name}={built!r} (checkpoint: {implied!r})" for name, (built, implied) in disagree.items()
            )
            hint = f"Arguments that disagree with the checkpoint's shapes: {pairs}."
        raise ValueError(
            f"{what} does not match the model: missing {len(missing)} key(s) {list(missing[:5])}, unexpected "
            f"{len(unexpected)} key(s) {list(unexpected[:5])}{shapes}. {hint}"
        )


def to_reference(
    state_dict: dict[str, Tensor],
    names: Callable[[str], list[str]],
    dims: Callable[[str, Tensor], int] = lambda key, value: value.dim(),
) -> dict[str, Tensor]:
    """``state_dict`` (str names to tensors, else TypeError) under a reference's keys ``names(key)``: a
    tensor with several (a fused q, k, v) cut along its rows into that many, and leading 1s dropped down
    to ``dims(key, value)`` dims; ValueError naming a key whose tensor does not cut or squeeze so."""
    check_state_dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        parts = names(key)
        out.update(zip(parts, _split_rows(key, _without_leading_ones(key, value, dims(key, value)), len(parts))))
    return out


def _split_rows(key: str, value: Tensor, parts: int) -> list[Tensor]:
    """``value`` cut along dim 0 into ``parts`` equal tensors (a fused q, k, v into three), or ``[value]``;
    ValueError naming ``key`` if its rows do not divide so."""
    if parts == 1:
        return [value]
    if value.dim() == 0 or value.shape[0] % parts:
        raise ValueError(
            f"state_dict: {key} must hold q, k and v (rows a multiple of {parts}), got {tuple(value.shape)}"
        )
    return list(value.chunk(parts))


def _without_leading_ones(key: str, value: Tensor, dims: int) -> Tensor:
    """``value`` with ``dims`` dims, its extra leading ones dropped (a (1, 1, D) token to (D,)); ValueError
    naming ``key`` if an extra one is not of size 1 (its data would be dropped with it)."""
    extra = value.dim() - dims
    if extra > 0 and any(size != 1 for size in value.shape[:extra]):
        raise ValueError(f"state_dict: {key} must be {dims}-D after leading 1s, got {tuple(value.shape)}")
    return value.reshape(value.shape[extra:]) if extra > 0 else value


def _checked_tensors(path: Path, state: dict, *, values: bool = True) -> dict[str, Tensor]:
    """``state`` with string names and dense tensors that hold data, with ``values`` finite floating
    point values (one pass of ``aminmax`` over each: ~0.2 s for FLAVA-full's 358M floats on one core,
    where ``isfinite(...).all()`` takes 1.7 s); tensors sharing memory (tied weights in a
    ``torch.save`` file) become copies, so that no two loaded parameters alias."""
    seen: set[int] = set()
    non_finite: list[str] = []
    for key, value in state.items():
        if not isinstance(key, str):
            raise ValueError(f"{path}: expected tensor names that are strings, got {key!r}")
        if value.layout != torch.strided or value.is_meta:
            kind = "meta (no data)" if value.is_meta else str(value.layout)
            raise ValueError(f"{path}: tensor {key!r} must be a dense tensor with data, got a {kind} tensor")
        if value.numel():
            address = value.untyped_storage().data_ptr()
            state[key] = value.clone() if address in seen else value
            seen.add(address)
            if values and value.is_floating_point() and not _finite(value):
                non_finite.append(key)
    if non_finite:
        raise ValueError(
            f"{path}: expected finite weights, got NaN or +inf values in {len(non_finite)} tensors, "
            f"first {non_finite[:5]} (a damaged or diverged checkpoint)"
        )
    return state


def _finite(value: Tensor) -> bool:
    """Whether a floating point tensor holds no NaN and no +inf, from its min and max (NaN propagates).
    -inf is let through: it is how attention masks (which some checkpoints hold) block a position."""
    low, high = torch.aminmax(value if value.element_size() > 1 else value.float())  # (none for fp8)
    return bool(not torch.isnan(low) and torch.isfinite(high))


def load_state_dict(path: PathLike) -> dict[str, Tensor]:
    """Read a state dict from a file, a Hugging Face checkpoint directory or a URL.

    Args:
        path (PathLike): a ``.safetensors`` file, a torch file (``.pt``, ``.pth``, ``.bin``), a sharded
            index (``*.index.json``), a directory holding one of ``model.safetensors``,
            ``model.safetensors.index.json``, ``pytorch_model.bin`` or ``pytorch_model.bin.index.json``,
            a torchflava FLAVA export (its weights file beside ``backbone_config.json``) or a pretraining
            run directory holding one in ``model/``, or an http(s) URL of a file. A torch file may hold the state dict under a ``"state_dict"``
            or ``"model"`` entry, as training scripts save it (beside an epoch, an optimiser's state...):
            that entry is read, its keys as saved (the models' loaders drop a DDP ``module.`` prefix).
            A TorchScript archive (``torch.jit.save``) gives its module's state dict, none of its code run.

    Returns:
        dict[str, Tensor]: the tensors by name, on CPU.

    Raises:
        FileNotFoundError: if the path does not exist or a directory holds no known checkpoint file.
        ValueError: if the file is not a state dict (names to dense tensors), cannot be read without
            unpickling code, is a malformed safetensors file or index, or is one shard of a sharded
            checkpoint whose ``*.index.json`` is beside it (pass the index or the directory).
        TypeError: if ``path`` is not a str or os.PathLike.
        ConnectionError: if a URL cannot be downloaded.
    """
    local = _checkpoint_file(path)
    try:
        return _load_file(local)
    except ValueError:
        text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
        if not text.startswith(("http://", "https://")):
            raise
        shutil.rmtree(_download_directory(text), ignore_errors=True)  # a damaged copy: fetched once more
        return _load_file(_checkpoint_file(path))


def _checkpoint_file(path: PathLike) -> Path:
    """The local file of ``path``: the file itself, or the first of ``_DIRECTORY_FILES`` in a directory."""
    local = local_checkpoint(path)
    if not local.is_dir():
        _refuse_shard(local)
        return local
    name = next((name for name in _DIRECTORY_FILES if (local / name).exists()), None)
    if name is not None:
        return local / name
    # a FLAVA export, or a pretraining run holding one in model/ (as flava_model reads them; a CLIP export's
    # reader is clip_model's, which reads its config too)
    if (export := export_files(local, _FLAVA_EXPORT_CONFIG)) is not None:
        return export[1]
    raise FileNotFoundError(
        f"{path!s} is a directory without any of {', '.join(_DIRECTORY_FILES)}, nor a torchflava FLAVA export "
        f"({_FLAVA_EXPORT_CONFIG} beside its .safetensors weights, or a run directory's model/)"
    )


# A shard's name as save_pretrained writes it ("model-00001-of-00003.safetensors"): its index is the name
# without the "-00001-of-00003" part, plus ".index.json" ("model.safetensors.index.json").
_SHARD_NAME = re.compile(r"^(?P<stem>.+)-\d+-of-\d+(?P<suffix>\.[^.]+)$")


def _possible_indices(file: Path) -> list[Path]:
    """The index files beside ``file`` that could name it as a shard, in name order: that of its shard name
    pattern, one named after the file itself, and Hugging Face's two index names. Only these are looked at
    (a few stats), not every file of the folder (a run directory may hold thousands of images beside
    the weights, or lie on a network filesystem)."""
    names = {f"{file.name}.index.json", *(name for name in _DIRECTORY_FILES if name.endswith(".index.json"))}
    if match := _SHARD_NAME.match(file.name):
        names.add(f"{match['stem']}{match['suffix']}.index.json")
    return [file.parent / name for name in sorted(names) if (file.parent / name).is_file()]


def _refuse_shard(file: Path) -> None:
    """ValueError if ``file`` is one shard of a sharded checkpoint whose index is beside it (``save_pretrained``'s
    ``max_shard_size``): read alone, its tensors are a fraction of the model's, refused later as missing keys.
    The only file an index names (some tools index an unsharded checkpoint) is the whole checkpoint: read."""
    if file.name.lower().endswith(".index.json"):
        return
    for index in _possible_indices(file):
        try:
            shards = set(_index_weight_map(index).values())
        except (OSError, ValueError):  # an unreadable index of another checkpoint: not this file's concern
            continue
        if file.name in shards and len(shards) > 1:
            raise ValueError(
                f"{file} is one of the {len(shards)} shards of the checkpoint indexed by {index}: expected the "
                f"whole checkpoint, its directory {file.parent} or that index, got one shard"
            )


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def peek_state_dict(path: PathLike, *, scalars: bool = False) -> dict[str, Tensor]:
    """A local checkpoint's tensor names, shapes and dtypes, as meta tensors, reading no tensor data
    (with ``scalars``, but that of one-element tensors: metadata some checkpoints hold beside the weights).

    The layouts and checks of :func:`load_state_dict`; safetensors headers are read alone and torch
    files (TorchScript archives too) are memory-mapped (an old non-zip torch file is read whole). For checking that a
    checkpoint fits a model before any work (e.g. the model's converter on a meta-device model).

    Raises:
        As :func:`load_state_dict` (URLs are not peeked at: ValueError).
    """
    if is_remote(path):
        raise ValueError(f"only local checkpoints can be peeked at, got the URL {os.fspath(path)!r}")
    local = _checkpoint_file(path)
    files, index = [local], None
    if _file_kind(local) == "index":
        index, weight_map, found_in = local, _index_weight_map(local), {}
        files = [local.parent / shard for shard in sorted(set(_index_shards(local)))]
    out: dict[str, Tensor] = {}
    for file in files:
        part_out: dict[str, Tensor] = {}
        if _file_kind(file) == "safetensors":
            try:
                with safe_open(str(file), framework="pt") as handle:
                    for key in handle.keys():
                        part = handle.get_slice(key)
                        dtype = _SAFETENSORS_DTYPES.get(part.get_dtype(), torch.uint8)  # rarer ones: bytes
                        meta = torch.empty(part.get_shape(), dtype=dtype, device="meta")
                        part_out[key] = handle.get_tensor(key) if scalars and meta.numel() == 1 else meta
            except SafetensorError as error:
                raise ValueError(f"could not read {file} as a safetensors file: {first_line(error)}") from error
        else:
            tensors = _load_file(file, mmap=True).items()
            part_out = {k: v.clone() if scalars and v.numel() == 1 else v.to("meta") for k, v in tensors}
        if index is not None:
            _check_shard_keys(index, file.name, list(part_out), weight_map, found_in)
        out.update(part_out)
    return out


def unused_path(directory: PathLike, name: str) -> Path:
    """``directory/name``, or the first of ``name.1``, ``name.2``... that does not exist there (a file
    or a directory set aside beside earlier ones of that name)."""
    target, suffix = Path(directory) / name, 1
    while target.exists():
        target, suffix = Path(directory) / f"{name}.{suffix}", suffix + 1
    return target


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Write a file so that it appears complete or not at all.

    The content goes to ``.<name>.<pid>.<thread>.tmp`` beside ``path``, reaches the disk (fsync) and is then
    renamed over it, and the rename is made durable too (fsync of the directory), so that after a
    crash or power loss the path holds the old content or the new, never an empty or partial file.
    Temporary files that killed writers left for the same path (their process is gone) are removed
    first. The file gets the usual permissions (0666 less the umask), not a temporary file's 0600.

    Args:
        path (PathLike): the final path.
        write (Callable[[str], None]): writes the content to the temporary path it is given.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # a name per thread
    try:
        write(str(tmp))
        fsync_path(tmp)  # (before the chmod: a umask may leave the file unreadable to its owner)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
    fsync_path(final.parent)  # the rename itself


@contextlib.contextmanager
def staged_directory(path: PathLike, *, writer: bool = True) -> Iterator[Path]:
    """Write a directory (a model export) so that ``path`` holds the previous one whole or the new one whole,
    never some files of each nor a part of the new one.

    The body writes into ``.<name>.staging`` beside ``path``, made empty first (what a killed writer left there
    is removed). When the body ends without an error, the previous directory is renamed aside
    (``.<name>.previous``), the new one renamed in and the previous one deleted; on an error the staging
    directory is removed and ``path`` is left as it was. A previous directory that a kill between the two
    renames left aside (``path`` missing) is put back first.

    Args:
        path (PathLike): the directory to write.
        writer (bool): whether this process writes it (rank 0 of a collective export): the others are given
            the staging path and touch nothing.

    Yields:
        Path: the staging directory to write the files into.

    Raises:
        ValueError: if ``path`` is a link or something other than a directory (before anything is written).
    """
    final = Path(path)
    staging, previous = final.with_name(f".{final.name}.staging"), set_aside(final)
    if writer:
        if final.is_symlink() or (final.exists() and not final.is_dir()):
            raise ValueError(f"{final}: expected a directory to write an export into, got a file or link of that name")
        if not final.exists() and previous.is_dir():  # (killed between the renames: the last whole export)
            os.replace(previous, final)
        for leftover in (staging, previous):
            _remove(leftover)
        staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        if writer:
            _remove(staging)
        raise
    if writer:
        fsync_path(staging)  # (its files were synced as they were written; its entries now)
        if final.exists():
            os.replace(final, previous)
        os.replace(staging, final)
        fsync_path(final.parent)  # the renames themselves
        _remove(previous)


def set_aside(path: PathLike) -> Path:
    """Where :func:`staged_directory` puts the previous directory at ``path`` aside while it renames the new one in
    (``.<name>.previous`` beside it)."""
    final = Path(path)
    return final.with_name(f".{final.name}.previous")


def written_directory(path: PathLike) -> Path:
    """The last whole directory :func:`staged_directory` wrote at ``path``: ``path`` itself; where a kill between its
    two renames left nothing there, the previous one it had set aside (:func:`set_aside`; its next write puts it
    back), so that readers do not take the directory for never written until then."""
    final = Path(path)
    aside = set_aside(final)
    return aside if not final.exists() and not final.is_symlink() and aside.is_dir() else final


def fsync_path(path: PathLike) -> None:
    """Flush a file's data, or a directory's entries (a rename, a new file), to the disk.

    A directory that cannot be opened or synced (one the process may write but not read, a file
    system that cannot sync directories) is left as it is: the files in it were synced themselves.
    A file that cannot be is an error.
    """
    if Path(path).is_dir():
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except PermissionError:  # a file its writer made write-only
        fd = os.open(path, os.O_WRONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Remove a temporary file, or a directory a writer made there (unlink would raise, hiding its error)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_stale_temporaries(final: Path) -> None:
    """Remove temporaries of ``final`` whose writer is gone: another process that ended, or this
    thread's own earlier, interrupted write (another thread of ours may be writing its own)."""
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(\d+)(?:\.(\d+))?\.tmp$")
    for candidate in final.parent.glob(f".{final.name}.*.tmp"):
        match = pattern.match(candidate.name)
        if match is None:
            continue
        pid, thread = int(match.group(1)), match.group(2)
        if pid == os.getpid():
            stale = thread is None or int(thread) == threading.get_ident()
        else:
            stale = not _process_alive(pid)
        if stale:
            _remove(candidate)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_state_dict(state_dict: dict[str, Tensor], path: PathLike) -> None:
    """Save tensors atomically: safetensors for a ``.safetensors`` path, else ``torch.save``.

    Args:
        state_dict (dict[str, Tensor]): the tensors by name.
        path (PathLike): where to write.

    Raises:
        TypeError: unless ``state_dict`` maps str names to tensors.
        ValueError: for a sparse or meta tensor (nothing to write), or a ``path`` that is a directory or
            has no file name — before anything is written.
    """
    check_state_dict(state_dict)
    odd = [k for k, v in state_dict.items() if v.is_meta or v.layout != torch.strided]
    if odd:
        raise ValueError(f"state_dict: expected dense tensors with data, got meta or sparse ones {odd[:3]}")
    if not Path(path).name or Path(path).is_dir():
        raise ValueError(
            f"path must be a file path, got {os.fspath(path)!r} ({'a directory' if Path(path).name else 'no file name'})"
        )
    tensors, seen = {}, set()
    for key, value in state_dict.items():
        value = value.detach().contiguous()
        storage = value.untyped_storage().data_ptr()
        # Tied weights (an LM head sharing the embedding's) are one tensor under two names: safetensors
        # stores no aliases, so the second name gets a copy (loading ties them again, or not, as the model does).
        tensors[key] = value.clone() if storage in seen and value.numel() else value
        seen.add(storage)
    if Path(path).suffix == ".safetensors":
        atomic_write(path, lambda tmp: save_file(tensors, tmp))
    else:
        atomic_write(path, lambda tmp: torch.save(tensors, tmp))
