"""Image-classification data in webdataset tar shards, as LAION's CLIP_benchmark serves its datasets.

``huggingface-cli download --repo-type dataset clip-benchmark/wds_imagenet1k --local-dir wds_imagenet1k`` gives a
folder of splits of shards, ``wds_imagenet1k/test/0.tar``, ``1.tar``... (with ``nshards.txt``, their number), and at
the dataset's root ``classnames.txt`` (one class name a line, in class-id order) and
``zeroshot_classification_templates.txt`` (one prompt template a line, ``{c}`` where the class name goes). A sample
is an image member (``.webp``, ``.png``, ``.jpg`` or ``.jpeg``) and a ``.cls`` member, its class id as text; a root's
``dataset_type.txt`` says ``retrieval`` (captions in ``.txt``) or ``multilabel`` (``.npy``) where the samples hold
no ``.cls``. :class:`WdsImages` reads such shards an image at a time, at the offsets their tar headers give.
"""

import os
import re
from typing import NamedTuple, Optional, Sequence, Union
import warnings

from torch.utils.data import Dataset

from torchflava.data.decode import DEFAULT_MAX_PIXELS
from torchflava.data.finetuning import LabeledSample
from torchflava.data.readers import IMAGE_EXTENSIONS as READABLE_IMAGES
from torchflava.data.readers import TarShards, check_index, check_max_pixels, glob_files
from torchflava.data.samples import ArgumentRefusal, BadSample, Sample
from torchflava.utils.checks import check_path

PathLike = Union[str, os.PathLike]
IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")  # CLIP_benchmark's, in its order of preference
CLASSES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
TYPE_FILE = "dataset_type.txt"
_NUMBERED = re.compile(r"(\d+)\.tar")  # CLIP_benchmark's shard names: 0.tar, 1.tar...


class WdsError(ArgumentRefusal):
    """A refusal of :class:`WdsImages`; ``argument`` is the argument that answers for it: ``"paths"`` or
    ``"classes"``."""


class ShardSplit(NamedTuple):
    """The shard files a value names, and where a dataset root's split was taken, the sentence saying which."""

    files: list[str]
    taken: Optional[str]


def _tars_in(folder: str) -> list[str]:
    """The ``.tar`` files at the top of ``folder`` (hidden ones aside), sorted by their number where all are numbered
    (``2.tar`` before ``10.tar``), else by name."""
    names = [n for n in os.listdir(folder) if n.lower().endswith(".tar") and not n.startswith(".")]
    names = [n for n in names if os.path.isfile(os.path.join(folder, n))]
    numbered = all(_NUMBERED.fullmatch(n) for n in names)
    names.sort(key=(lambda n: (int(n[:-4]), n)) if numbered else (lambda n: (0, n)))
    return [os.path.join(folder, n) for n in names]


def _splits_in(folder: str) -> list[str]:
    """The sub-folders of ``folder`` holding ``.tar`` files at their top (a dataset root's ``test/``, ``train/``)."""
    return sorted(
        n
        for n in os.listdir(folder)
        if not n.startswith(".") and os.path.isdir(os.path.join(folder, n)) and _tars_in(os.path.join(folder, n))
    )


def _holds_images(folder: str) -> bool:
    """Whether image files lie at the top of ``folder`` or of one of its sub-folders (an image folder, or one of
    class sub-folders: a ``.tar`` among them is the archive they came from, no shard)."""
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.name.lower().endswith(READABLE_IMAGES):
            return True
        if entry.is_dir() and any(
            sub.is_file() and sub.name.lower().endswith(READABLE_IMAGES) for sub in os.scandir(entry.path)
        ):
            return True
    return False


def is_tar_shards(value: PathLike) -> bool:
    """Whether a path given for images names tar shards: a ``.tar`` file, a glob or brace pattern ending in
    ``.tar`` (``test/{0..3}.tar``), a folder of ``.tar`` files, or a dataset root whose split folders hold them; not
    a folder where images lie at its top or in its sub-folders (class folders beside the ``.tar`` they came from)."""
    text = os.fspath(value)
    if text.lower().endswith(".tar"):
        return True
    if os.path.isdir(text):
        return (bool(_tars_in(text)) or bool(_splits_in(text))) and not _holds_images(text)
    return False


def shard_files(value: PathLike) -> ShardSplit:
    """The tar shards one value names: a file, a folder of them (their number's order), a glob or brace pattern,
    or a dataset root of split folders, of which ``test/`` is taken (saying so); WdsError (``paths``) where it
    names none, or a root holds splits but no ``test/`` (naming them)."""
    text = check_path("paths", value)
    if os.path.isdir(text):
        files = _tars_in(text)
        if files:
            return ShardSplit(files, None)
        splits = _splits_in(text)
        if "test" in splits:
            others = [s for s in splits if s != "test"]
            also = f" (beside {', '.join(s + '/' for s in others)})" if others else ""
            return ShardSplit(_tars_in(os.path.join(text, "test")), f"the test/ split of {text} taken{also}")
        if splits:
            raise WdsError(
                "paths",
                f"{text} holds the splits {', '.join(s + '/' for s in splits)} and no test/: give one, e.g. "
                f"{os.path.join(text, splits[0])}",
            )
        raise WdsError(
            "paths", f"expected .tar shards, a glob or brace pattern of them or a folder of them, got {text!r}"
        )
    if os.path.isfile(text):
        return ShardSplit([text], None)
    patterns = [text]
    if "{" in text:  # (a brace pattern: braceexpand comes with webdataset, the data extra)
        try:
            import braceexpand
        except ImportError:
            raise WdsError(
                "paths", f"a brace pattern ({text}) needs braceexpand: pip install 'torchflava[data]'"
            ) from None
        patterns = list(braceexpand.braceexpand(text))
    files = []
    for pattern in patterns:
        if os.path.isfile(pattern):
            files.append(pattern)
        elif any(char in pattern for char in "*?["):
            files += glob_files(pattern)
        elif pattern != text:  # (a brace pattern naming a shard that is absent: a download cut short)
            raise WdsError("paths", f"{pattern!r} is not a file (of the pattern {text!r})")
    if not files:
        raise WdsError(
            "paths", f"expected .tar shards, a glob or brace pattern of them or a folder of them, got {text!r}"
        )
    return ShardSplit(files, None)


def dataset_root(files: Sequence[str]) -> Optional[str]:
    """The folder of the shards' ``classnames.txt``, ``zeroshot_classification_templates.txt`` or
    ``dataset_type.txt``: the shards' folder, else the one above it (a split's root); None where neither holds one."""
    folder = os.path.dirname(os.path.abspath(files[0]))
    for candidate in (folder, os.path.dirname(folder)):
        if any(os.path.isfile(os.path.join(candidate, name)) for name in (CLASSES_FILE, TEMPLATES_FILE, TYPE_FILE)):
            return candidate
    return None


def shards_dataset_type(value: PathLike) -> Optional[str]:
    """What the ``dataset_type.txt`` of the dataset whose shards ``value`` names says (``retrieval``,
    ``multilabel``), lower case; None where there is none, or ``value`` names no shard."""
    try:
        root = dataset_root(shard_files(value).files)
    except (WdsError, ImportError):
        return None
    if root is None:
        return None
    try:
        with open(os.path.join(root, TYPE_FILE), encoding="utf-8-sig") as handle:  # (a BOM dropped)
            return handle.read().strip().lower() or None
    except (OSError, UnicodeDecodeError):
        return None


def missing_shards(files: Sequence[str]) -> list[str]:
    """The one-line warnings of shards absent from ``files`` where their folder's ``nshards.txt`` (CLIP_benchmark's
    count of ``0.tar``... ``N-1.tar``) names more: a download cut short loses those images silently."""
    given: dict[str, set[int]] = {}
    for file in files:
        match = _NUMBERED.fullmatch(os.path.basename(file))
        if match:
            given.setdefault(os.path.dirname(os.path.abspath(file)), set()).add(int(match[1]))
    warnings = []
    for folder, numbers in sorted(given.items()):
        try:
            with open(os.path.join(folder, "nshards.txt"), encoding="utf-8-sig") as handle:
                count = int(handle.read().strip())
        except (OSError, ValueError):
            continue
        absent = [f"{i}.tar" for i in range(count) if i not in numbers]
        if absent:
            shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
            warnings.append(
                f"warning: {len(numbers)} of the {count} shards nshards.txt counts in {folder} given, their images "
                f"read: {shown} absent"
            )
    return warnings


class _Shards:
    """Tar shards located (:func:`shard_files`), indexed by :class:`~torchflava.data.readers.TarShards` reading the
    image and ``text_extension`` members of each sample, in the shards' order, each sample named."""

    def __init__(
        self,
        paths: Union[PathLike, Sequence[PathLike]],
        text_extension: str,
        max_image_pixels: int,
        types: tuple[Optional[str], ...],
        refused: str,
    ) -> None:
        check_max_pixels(max_image_pixels)
        values = [paths] if isinstance(paths, (str, os.PathLike)) else paths
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise TypeError(f"paths must be a path, a pattern or a list of them, got {paths!r}")
        files, taken = [], []
        for value in values:
            found = shard_files(value)
            files += found.files
            taken += [found.taken] if found.taken else []
        self.taken = taken  # the sentences saying which split of a dataset root was taken
        self.files = list(dict.fromkeys(os.path.abspath(f) for f in files))
        self.warnings = missing_shards(self.files)
        self.root = dataset_root(self.files)
        self.dataset_type = shards_dataset_type(self.files[0])
        if self.dataset_type not in types:  # (before the shards are indexed: their members are not those read)
            raise WdsError("paths", f"{os.path.join(self.root, TYPE_FILE)} says {self.dataset_type!r}: {refused}")
        self._extension = text_extension
        try:
            with warnings.catch_warnings():  # (a damaged shard: one of this reader's warning lines, below)
                warnings.simplefilter("ignore", UserWarning)
                self._tar = TarShards(
                    self.files,
                    require=("image", "text"),
                    image_extensions=IMAGE_EXTENSIONS,
                    text_extensions=(text_extension,),
                    json_text_key=None,
                    max_image_pixels=max_image_pixels,
                )
        except (ValueError, OSError) as error:
            message = (
                str(error)
                .removeprefix("shards ")
                .replace("image and text members", f"image and .{text_extension} members")
            )
            message = message.replace(f"; texts are read from .{text_extension} members", "")
            raise WdsError("paths", message.replace("no text member", f"no .{text_extension} member")) from None
        self.warnings += [f"warning: {damage}" for damage in self._tar.lost_data]
        order = {path: i for i, path in enumerate(self.files)}  # (TarShards reads them sorted by path)
        keys = [self._tar.sample_key(i) for i in range(len(self._tar))]
        self._order = sorted(range(len(keys)), key=lambda i: order[keys[i][0]])  # sample -> TarShards index
        common = os.path.commonpath([os.path.dirname(f) for f in self.files])
        names, seen = [], {}
        for i in self._order:
            name = f"{os.path.relpath(keys[i][0], common).replace(os.sep, '/')}:{keys[i][1]}"
            seen[name] = seen.get(name, 0) + 1
            names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")  # (a key repeated in a shard)
        self._names = names

    def _reason(self, bad: BadSample) -> str:
        """A BadSample's reason as TarShards gives it, without its name of the sample, the text member named as
        the shards write it (``.cls``, ``.txt``)."""
        reason = bad.reason.split(": ", 1)[-1]
        if reason.startswith("no "):
            text = f".{self._extension}"
            reason = reason.replace("no text member", f"no {text} member").replace("no text and", f"no {text} and")
        return reason

    def _read(self, sample: int, index: int) -> Sample:
        """Sample ``sample``'s image and text, or BadSample (item ``index``) named as the sample is."""
        try:
            return self._tar[self._order[sample]]
        except BadSample as bad:
            raise BadSample(index, f"{self._names[sample]}: {self._reason(bad)}") from None

    @property
    def dataset_files(self) -> list[str]:
        """The files these shards are read with: the shards, their folders' ``nshards.txt`` and their dataset root's
        class names, templates and type, those that exist (files no command's output may be written over)."""
        beside = [os.path.join(folder, "nshards.txt") for folder in sorted({os.path.dirname(f) for f in self.files})]
        if self.root is not None:
            beside += [os.path.join(self.root, name) for name in (CLASSES_FILE, TEMPLATES_FILE, TYPE_FILE)]
        return self.files + [path for path in beside if os.path.isfile(path)]


class WdsImages(_Shards, Dataset):
    """The images of webdataset tar shards, one a sample, and their ``.cls`` class ids; items are
    :class:`~torchflava.data.finetuning.LabeledSample` ``(image, None, class id)``, as
    :class:`~torchflava.data.parquet.ParquetImages`' are.

    The shards are indexed from their tar headers and each sample's ``.cls`` read (a few bytes) at construction;
    an image is read when its item is (:class:`~torchflava.data.readers.TarShards`). A sample without an image or a
    ``.cls`` member, or whose image does not decode, is a :class:`~torchflava.data.samples.BadSample` when read. An
    item's name (:meth:`relative_path`) is its shard's path (relative to the shards' common folder) and its key:
    ``0.tar:s0000017``.

    Args:
        paths (Union[PathLike, Sequence[PathLike]]): shard files, glob or brace patterns, folders of shards, or a
            dataset root of split folders (its ``test/`` taken: :attr:`taken` says so), or a list of them.
        classes (Optional[Sequence[str]]): class names in id order; by default those of the root's
            ``classnames.txt`` (None where there is none: :attr:`classes` is then None).
        max_image_pixels (int): images with more pixels are bad samples (checked before decoding).

    Raises:
        TypeError: if ``paths`` is not a path or a list of them.
        WdsError: (a ValueError naming the argument that answers for it) if a path names no shard, a root holds
            splits but no ``test/``, a shard is no tar, the root's ``dataset_type.txt`` says retrieval or multilabel,
            a ``.cls`` holds no integer, or a class id is negative or past ``classes`` (all before any image is read).
    """

    item_noun = "an image"

    def __init__(
        self,
        paths: Union[PathLike, Sequence[PathLike]],
        *,
        classes: Optional[Sequence[str]] = None,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        refused = "its samples hold no .cls class id to classify by"
        super().__init__(paths, "cls", max_image_pixels, (None, "classification"), refused)
        self._classes_from = ""  # (where the names a class id is refused against come from)
        if classes is None and self.root is not None and os.path.isfile(os.path.join(self.root, CLASSES_FILE)):
            classes = read_lines(os.path.join(self.root, CLASSES_FILE))
            self._classes_from = f" (of {os.path.join(self.root, CLASSES_FILE)})"
        self.classes = None if classes is None else list(classes)
        self.labels = [self._label(item) for item in range(len(self._order))]

    def _label(self, item: int) -> Optional[int]:
        """Item ``item``'s class id, from its ``.cls``; None where it has none (a bad sample when read)."""
        try:
            text = self._tar.caption(self._order[item])
        except BadSample:
            return None
        if not re.fullmatch(r"[0-9]+", text):
            raise WdsError("paths", f"expected a class id (an integer) in {self._names[item]}'s .cls, got {text!r}")
        label = int(text)
        if self.classes is not None and label >= len(self.classes):
            raise WdsError(
                "classes",
                f"expected a name for each class id of the shards, got {len(self.classes)} names{self._classes_from} "
                f"for class id {label} of {self._names[item]}",
            )
        return label

    def __len__(self) -> int:
        return len(self._order)

    def relative_path(self, index: int) -> str:
        """Item ``index``'s name: its shard's path relative to the shards' common folder, and its key
        (``0.tar:s0000017``; ``#2`` after a key repeated in a shard)."""
        return self._names[check_index(index, len(self))]

    @property
    def empty_classes(self) -> list[str]:
        """The classes no sample is labelled with."""
        present = set(self.labels)
        return [name for i, name in enumerate(self.classes or ()) if i not in present]

    def __getitem__(self, index: int) -> LabeledSample:
        """Read item ``index``; BadSample for a sample without an image or a ``.cls``, or an image that does not
        decode."""
        index = check_index(index, len(self))
        return LabeledSample(self._read(index, index).image, None, self.labels[index])


class _Caption(NamedTuple):
    sample: int
    text: Optional[str]  # None: the sample gives no caption, for ``error``
    error: Optional[str] = None


class WdsCaptions(_Shards, Dataset):
    """The image-caption pairs of webdataset tar shards as CLIP_benchmark serves its retrieval datasets
    (``wds_flickr30k``, ``wds_mscoco_captions``: ``dataset_type.txt`` says ``retrieval``): each sample an image and
    a ``.txt`` of its captions, one a line (COCO's five). An item is a caption; items are
    :class:`~torchflava.data.samples.Sample` ``(image, caption)``, the image read when an item is.

    :meth:`image_path` names a caption's image (its shard's path relative to the shards' common folder and its key,
    ``0.tar:s0000017``), :meth:`caption` gives the caption without reading the image, as
    :class:`~torchflava.data.readers.ImageTextFolder`'s do. A sample without a ``.txt`` (or with a blank or
    undecodable one) is one item, a :class:`~torchflava.data.samples.BadSample` saying why; a blank line among the
    captions is one too.

    Args:
        paths (Union[PathLike, Sequence[PathLike]]): as :class:`WdsImages`'.
        max_image_pixels (int): images with more pixels are bad samples (checked before decoding).

    Raises:
        TypeError: if ``paths`` is not a path or a list of them.
        WdsError: (``paths``) if a path names no shard, a root holds splits but no ``test/``, or a shard is no tar.
    """

    item_noun = "a caption"

    def __init__(
        self, paths: Union[PathLike, Sequence[PathLike]], *, max_image_pixels: int = DEFAULT_MAX_PIXELS
    ) -> None:
        refused = "its samples hold no .txt captions"
        super().__init__(paths, "txt", max_image_pixels, (None, "retrieval"), refused)
        self._captions: list[_Caption] = []
        for sample in range(len(self._order)):
            try:
                text = self._tar.caption(self._order[sample])
            except BadSample as bad:
                self._captions.append(_Caption(sample, None, self._reason(bad)))
                continue
            for number, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                error = None if line else f"caption line {number} is blank"
                self._captions.append(_Caption(sample, line or None, error))

    def __len__(self) -> int:
        return len(self._captions)

    def image_path(self, index: int) -> str:
        """The name of caption ``index``'s image (``0.tar:s0000017``); BadSample where its sample gives no
        caption."""
        entry = self._captions[check_index(index, len(self))]
        if entry.text is None:
            raise BadSample(index, f"{self._names[entry.sample]}: {entry.error}")
        return self._names[entry.sample]

    def caption(self, index: int) -> str:
        """Caption ``index``, its image not read; BadSample where its sample gives none."""
        entry = self._captions[check_index(index, len(self))]
        if entry.text is None:
            raise BadSample(index, f"{self._names[entry.sample]}: {entry.error}")
        return entry.text

    def __getitem__(self, index: int) -> Sample:
        """Read caption ``index`` and its image; BadSample for no caption, no image or an image that does not
        decode."""
        text = self.caption(index)
        return Sample(image=self._read(self._captions[index].sample, index).image, text=text)


def read_lines(path: PathLike) -> list[str]:
    """The stripped lines of a UTF-8 text file (a BOM dropped), blank lines at its end left out; WdsError (``paths``)
    where it does not read or a blank line lies among the others (in a class-id-ordered file it shifts every id
    after it)."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            lines = [line.strip() for line in handle.read().splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise WdsError("paths", f"{path} does not read as UTF-8 text ({type(error).__name__}: {error})") from None
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        raise WdsError("paths", f"{path}: line {lines.index('') + 1} is blank (expected one entry a line)")
    return lines
