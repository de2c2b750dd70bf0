"""What every torchflava data source returns: a :class:`Sample`, or a :class:`BadSample` error.

A *source* is a map-style dataset (``len(source)``, ``source[i]``) whose items are :class:`Sample`
tuples holding a decoded RGB ``PIL.Image.Image``, a caption/text ``str``, or both. A source never
returns a half-usable item: when item ``i`` cannot be used (unreadable or corrupt image, empty
caption, a malformed index line) ``source[i]`` raises :class:`BadSample` with the reason, and the
sampler that reads the source skips it, counts it and takes another item.
"""

from typing import Any, Callable, Hashable, Iterable, Iterator, NamedTuple, Optional, TypeVar
import unicodedata

from PIL import Image

from torchflava.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from torchflava.data.tokenizer import repaired_surrogates
from torchflava.utils.checks import check_int

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item")


class BadSample(Exception):
    """Item ``index`` of a source cannot be used; ``reason`` says why (shown in the run report)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"sample {index}: {reason}")
        self.index = index
        self.reason = reason

    def __reduce__(self):
        return (BadSample, (self.index, self.reason))


class ArgumentRefusal(ValueError):
    """A reader's refusal that one of its arguments answers for: ``argument`` names it (``"paths"``,
    ``"classes"``...), ``reason`` says what was expected and given; a command names its own option for the argument.
    Pickles whole (a loader worker's raise reaches the main process as it was)."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"{argument}: {message}")
        self.argument = argument
        self.reason = message

    def __reduce__(self):
        return (type(self), (self.argument, self.reason))


class Sample(NamedTuple):
    """One item of a data source.

    Attributes:
        image (Optional[Image.Image]): decoded RGB image, or None for text-only sources.
        text (Optional[str]): non-empty, stripped caption or text, or None for image-only sources.
    """

    image: Optional[Image.Image] = None
    text: Optional[str] = None


def load_rgb(data_or_path, index: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image as RGB (:func:`~torchflava.data.decode.decode_image`), or raise
    :class:`BadSample`.

    Args:
        data_or_path: a path or a binary file object.
        index (int): the item index, for the error.
        max_pixels (int): most pixels an image may have (checked before decoding).

    Returns:
        Image.Image: the decoded RGB image (any mode converted, alpha dropped, EXIF
        orientation applied).

    Raises:
        BadSample: if the image is missing, truncated, not an image or larger than ``max_pixels``.
    """
    try:
        return decode_image(data_or_path, max_pixels=max_pixels)
    except ImageDecodeError as error:
        raise BadSample(index, str(error)) from None


def checked_text(text: object, index: int) -> str:
    """Return ``text`` stripped; raise :class:`BadSample` when it is not a string with a visible character.

    Lone UTF-16 surrogates (web text cut in the middle of an emoji, decoded from JSON) become U+FFFD
    and surrogate pairs the character they spell, so that every tokenizer can read the text.

    Args:
        text (object): the raw caption.
        index (int): the item index, for the error.

    Returns:
        str: the stripped text.

    Raises:
        BadSample: if the text is missing, not a string, or holds only whitespace, control and
            format characters (NUL, zero-width spaces, a BOM, soft hyphens: a tokenizer reads nothing).
    """
    if not isinstance(text, str):
        raise BadSample(index, f"empty or missing text ({text!r})")
    text = repaired_surrogates(text)
    stripped = text.strip()
    if not any(unicodedata.category(c)[0] not in "CZ" for c in stripped):
        raise BadSample(index, f"empty or missing text ({text!r})")
    return stripped


def readable_chunks(
    read: Callable[[Key], Item],
    keys: Iterable[Key],
    size: int,
    skipped: list,
    *,
    skipped_keys: Optional[dict] = None,
) -> Iterator[list[tuple[Key, Item]]]:
    """Read items one by one and hand them on in chunks, so that a pass over a large folder holds
    one chunk of decoded images at a time, never the whole folder.

    Args:
        read (Callable): reads the item of a key (e.g. ``source.__getitem__``); raises BadSample.
        keys (Iterable): the keys to read, in order.
        size (int): items per chunk (the last one may be shorter).
        skipped (list): the reason of every BadSample is appended here.
        skipped_keys (Optional[dict]): where given, each unreadable key's reason (a str) is set here too (a
            validation's predictions keep it in the item's place, to name it in the report).

    Returns:
        Iterator[list[tuple[Key, Item]]]: lists of up to ``size`` (key, item) pairs of readable items.

    Raises:
        TypeError: if ``size`` is not an int (here, when called, not at the first chunk).
        ValueError: if ``size`` < 1 (0 gave one chunk of every item).
    """
    check_int("size", size, 1)

    def chunks() -> Iterator[list[tuple[Key, Item]]]:
        chunk = []
        for key in keys:
            try:
                chunk.append((key, read(key)))
            except BadSample as bad:
                skipped.append(bad.reason)
                if skipped_keys is not None:
                    skipped_keys[key] = str(bad.reason)
                continue
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    return chunks()


# How many unusable items in a row, from a source's start, mean that it has none (the training loop
# stops a run after 50 in a row, drawn at random).
UNUSABLE_IN_A_ROW = 64


def unusable_start(source: Any, limit: Optional[int] = UNUSABLE_IN_A_ROW) -> Optional[str]:
    """None when one of the first ``limit`` items of the map-style ``source`` (every item: None) reads;
    else why not, naming the first item's fault (items raise :class:`BadSample` when unusable)."""
    count = len(source) if limit is None else min(len(source), limit)
    first = None
    for index in range(count):
        try:
            source[index]
            return None
        except BadSample as bad:
            first = first or bad
    if first is None:
        return "no item"
    which = f"{count} items" if count == len(source) else f"first {count} items"
    return f"none of its {which} reads; the first: {first}"
