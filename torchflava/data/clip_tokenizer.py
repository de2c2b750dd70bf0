"""CLIP's byte-level BPE tokenisation on the ``tokenizers`` library, from the files users have.

CLIP (Radford et al. 2021) lower-cases the text, splits it into words, numbers and runs of other
symbols, spells each piece in bytes (mapped to printable characters) and merges them by rank,
marking a word's last piece with ``</w>``. Rows are ``<|startoftext|> text <|endoftext|>``; the
vocabulary has 49408 entries with those two at 49406 and 49407. :class:`CLIPTokenizer` reads it
from

* a Hugging Face CLIP directory (:meth:`~CLIPTokenizer.from_directory`): ``tokenizer.json`` (whose
  pipeline must be CLIP's), else ``vocab.json`` + ``merges.txt``, with ``tokenizer_config.json``'s ``model_max_length``,
  ``pad_token`` (``special_tokens_map.json``'s where transformers reads it) and
  ``clean_up_tokenization_spaces`` (:meth:`~CLIPTokenizer.decode`'s, default false): the ids and
  decoded texts transformers' ``CLIPTokenizerFast`` gives (the one ``AutoTokenizer`` and
  ``CLIPProcessor`` load; the slow ``CLIPTokenizer`` cleans text with ``ftfy`` and differs on
  controls, quotes, entities, widths...);
* OpenAI's and open_clip's merges file, ``bpe_simple_vocab_16e6.txt.gz``
  (:meth:`~CLIPTokenizer.from_bpe`): the ids of open_clip's tokenizer, with what its ``ftfy``
  does (:func:`ftfy_fixes`: HTML entities, curly quotes, ligatures, full-width forms, control
  characters, NFC...), its lower-casing and its reading of special tokens written in a text;
  ``ftfy``'s repair of mis-decoded text (mojibake such as ``cafÃ©``) is not made. Letters that
  Unicode assigned after the ``tokenizers`` library's tables are split as there; open_clip's split
  of them follows the installed ``regex`` package's Unicode version.
"""

import contextlib
import functools
import gzip
import html
import html.entities
import json
import os
from pathlib import Path
import re
from typing import Optional, Sequence, Union
import unicodedata

from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers
from torch import Tensor

from torchflava.data.tokenizer import (
    WordPieceTokenizer,
    added_tokens,
    check_clean_up,
    check_dense_ids,
    check_max_length,
    check_model_max_length,
    check_no_surrogates,
    checked_ids,
    checked_texts,
    clean_up_spaces,
    config_clean_up,
    config_max_length,
    config_token,
    padded_rows,
    read_vocabulary,
    refuse_added_tokens,
    repaired_surrogates,
    with_special_tokens_map,
)
from torchflava.utils.checkpoint import atomic_write, first_line, present_file, read_json_object
from torchflava.utils.checks import check_path

PathLike = Union[str, os.PathLike]
START, END = "<|startoftext|>", "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408  # 256 bytes, each also with </w>, 48894 merges, the two special tokens
CLIP_CONTEXT_LENGTH = 77
_MERGE_LINE_BYTES = 256  # most bytes read per merge line wanted from a merges file (its lines are ~10)
# Contractions, letter runs, single digits, runs of other non-space symbols (CLIP's word split).
_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# open_clip's word split, which matches case-insensitively (its text is lower-cased first): there "'\u017f"
# (long s) is the contraction "'s" and "<\u017ftart_of_text>" one piece (text, not the token), and U+0345
# (combining ypogegrammeni, whose capital is the letter U+0399) is matched by no alternative: a word break.
_OPEN_CLIP_WORDS = (
    "<[s\u017f]tart_of_text>|<end_of_text>|'[s\u017f]|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}\u0345]+"
)
_CLASSES = ("CLIPTokenizer", "CLIPTokenizerFast")
_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")  # the special tokens a tokenizer config names
# How a text may spell the start and end tokens itself, by whose reading (CLIPTokenizer's reading).
_SPECIAL_SPELLINGS = {"transformers": (START, END), "open_clip": ("<start_of_text>", "<end_of_text>")}
_TERMINAL_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # ANSI colour and cursor codes
_LINE_BREAKS = dict.fromkeys([0x0D, 0x2028, 0x2029], "\n")
_CONTROLS = dict.fromkeys(
    [*range(0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF, *range(0xFFF9, 0xFFFD)]
)


@functools.cache
def _character_fixes() -> dict[int, Optional[str]]:
    """The ``str.translate`` table of :func:`fix_characters`' first step: C1 controls, ligatures, widths, quotes."""
    quotes = {**dict.fromkeys([0x2BC, *range(0x2018, 0x201C)], "'"), **dict.fromkeys(range(0x201C, 0x2020), '"')}
    table: dict[int, Optional[str]] = dict(quotes)
    for code in range(0x80, 0xA0):  # C1 controls stand for the Windows-1252 characters of mis-decoded text
        with contextlib.suppress(UnicodeDecodeError):
            table[code] = bytes([code]).decode("cp1252").translate(quotes)
    # Latin ligatures (but the long s of U+FB05, and U+0149's apostrophe, uncurled), full- and half-width forms
    forms = [0x132, 0x133, *range(0x1C4, 0x1CD), *range(0x1F1, 0x1F4), *range(0xFB00, 0xFB07), 0x3000]
    for code in [*forms, *range(0xFF01, 0xFFEF)]:
        if (compatible := unicodedata.normalize("NFKC", chr(code))) != chr(code):
            table[code] = compatible
    return {**table, 0x149: "'n", 0xFB05: "\u017ft"}


def fix_characters(text: str) -> str:
    """The character-level fixes ``ftfy.fix_text`` makes by default (open_clip's tokenizer applies it),
    in its order: C1 controls read as the Windows-1252 characters they stand for, Latin ligatures split,
    full-width (half-width katakana) forms made normal width, curly quotes straightened, line breaks
    made ``\\n``, surrogate pairs joined (a lone one made U+FFFD), terminal escapes and control
    characters removed. Not made: its repair of mis-decoded text."""
    text = text.translate(_character_fixes()).replace("\r\n", "\n").translate(_LINE_BREAKS)
    return _TERMINAL_ESCAPES.sub("", repaired_surrogates(text)).translate(_CONTROLS)


_ENTITY = re.compile(r"&#?[0-9A-Za-z]{1,24};")


@functools.cache
def _entities() -> dict[str, str]:
    """The named references ``ftfy`` decodes: HTML5's that end in ";", and the upper-case spelling
    of an all-lower-case name where that spelling is not an entity of its own (``&EACUTE;``)."""
    table = {}
    for name, character in html.entities.html5.items():
        if name.endswith(";"):
            table["&" + name] = character
            upper = "&" + name.upper()
            if name == name.lower() and html.unescape(upper) == upper:
                table[upper] = character.upper()
    return table


def _decode_entity(match: re.Match) -> str:
    reference = match.group(0)
    if reference in _entities():
        return _entities()[reference]
    decoded = html.unescape(reference) if reference.startswith("&#") else reference
    return reference if ";" in decoded else decoded  # a numeric reference decodes whole or not at all


def ftfy_fixes(text: str) -> str:
    """What ``ftfy.fix_text`` (open_clip's first cleaning step) does to ``text`` with its defaults, but
    for its repair of mis-decoded text: line by line, HTML entities decoded (only unambiguous ones
    ending in ";", and none from the first line holding a "<" on: it may be HTML), then
    :func:`fix_characters` and NFC, again until nothing changes."""
    out, entities, pieces = [], True, text.split("\n")  # ftfy's lines end at "\n" alone
    for line in [piece + "\n" for piece in pieces[:-1]] + pieces[-1:]:
        entities = entities and "<" not in line
        while True:
            fixed = unicodedata.normalize(
                "NFC", fix_characters(_ENTITY.sub(_decode_entity, line) if entities else line)
            )
            if fixed == line:
                break
            line = fixed
        out.append(line)
    return "".join(out)


def byte_characters() -> dict[int, str]:
    """The printable character GPT-2 and CLIP spell each byte with, in their vocabulary's order:
    the printable Latin-1 bytes as themselves first, then the others (control characters, space,
    NBSP, soft hyphen) as the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = sorted(set(range(256)) - set(printable))
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


class CLIPTokenizer:
    """CLIP's tokenizer: ``<|startoftext|> text <|endoftext|>`` id rows, lower-cased.

    Build it with :meth:`from_directory`, :meth:`from_vocab_and_merges`, :meth:`from_tokenizer_json`
    or :meth:`from_bpe`.

    Args:
        tokenizer (Tokenizer): a ``tokenizers`` BPE tokenizer whose vocabulary holds both special
            tokens (its own normaliser and pre-tokeniser are used; its post-processor is not).
        model_max_length (Optional[int]): the default ``max_length`` of :meth:`__call__`.
        pad_token (Optional[str]): the padding token; None: ``<|endoftext|>`` (transformers' CLIP
            checkpoints; padding is masked out either way). In transformers' reading another one
            (LAION's ``!``) is a special token, as there: split out of the text wherever it stands.
        unescape_html (bool): undo HTML entities (``&amp;``, twice, as OpenAI's and open_clip's
            tokenizers do; web alt-text holds them) before tokenising; transformers' fast one does not.
        fix_text (bool): make :func:`ftfy_fixes` first (open_clip's ``ftfy.fix_text``).
        clean_up_tokenization_spaces (bool): whether :meth:`decode` removes the spaces before punctuation
            and contractions (:func:`~torchflava.data.tokenizer.clean_up_spaces`), as transformers'
            setting of that name (false for CLIP's tokenizers).
        reading (str): whose reading of a text to reproduce. ``"transformers"`` (CLIPTokenizerFast's):
            the tokenizer's own normaliser, and ``<|startoftext|>`` and ``<|endoftext|>`` in a text,
            in any case, are those tokens wherever they stand. ``"open_clip"`` (:meth:`from_bpe`):
            its cleaning, Python's ``str.lower()`` (a word's final Σ is ς) and spaces collapsed, in
            place of the tokenizer's normaliser, its case-insensitive word split in place of the
            pre-tokeniser (``'ſ`` is the contraction ``'s``; U+0345 breaks words as a space does),
            and ``<start_of_text>`` and ``<end_of_text>`` in any case are the tokens where its word
            split reads them whole (``.<end_of_text>`` is text). Any other spelling is text.

    Raises:
        ValueError: if a special or the padding token is missing, ``model_max_length`` < 2 or
            ``reading`` is neither of the two.
        TypeError: if ``unescape_html``, ``fix_text`` or ``clean_up_tokenization_spaces`` is not a bool.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        model_max_length: Optional[int] = CLIP_CONTEXT_LENGTH,
        pad_token: Optional[str] = None,
        unescape_html: bool = False,
        fix_text: bool = False,
        clean_up_tokenization_spaces: bool = False,
        reading: str = "transformers",
        _copy: bool = True,
    ) -> None:
        self.clean_up_tokenization_spaces = check_clean_up(clean_up_tokenization_spaces)
        if reading not in _SPECIAL_SPELLINGS:
            raise ValueError(f"reading must be one of {tuple(_SPECIAL_SPELLINGS)}, got {reading!r}")
        for name, value in (("unescape_html", unescape_html), ("fix_text", fix_text)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        if pad_token is not None and (not isinstance(pad_token, str) or not pad_token):  # ("" padded with END)
            raise ValueError(f"pad_token must be a token of the vocabulary or None, got {pad_token!r}")
        pad_token = END if pad_token is None else pad_token
        if _copy:  # the caller's stays as it was (_copy=False: the classmethods' own, made for this one)
            tokenizer = Tokenizer.from_str(tokenizer.to_str())
        vocab = tokenizer.get_vocab()
        missing = [token for token in (START, END, pad_token) if token not in vocab]
        if missing:
            raise ValueError(f"the vocabulary lacks the token(s) {missing}")
        check_dense_ids(vocab, "tokenizer: the vocabulary")  # (from_tokenizer_json names the file first)
        if reading == "transformers":  # matched anywhere after lower-casing, as transformers does
            specials = [AddedToken(token, special=True, normalized=True) for token in (START, END)]
            if pad_token not in (START, END):  # (LAION's "!"): a special token there, split out of the raw text
                specials.append(AddedToken(pad_token, special=True, normalized=False))
            tokenizer.add_special_tokens(specials)
        tokenizer.post_processor = None  # __call__ adds the start and end tokens
        self._tokenizer, self.unescape_html, self.fix_text = tokenizer, unescape_html, fix_text
        self.model_max_length = check_model_max_length(model_max_length)
        self.start_id, self.end_id, self.pad_id = vocab[START], vocab[END], vocab[pad_token]
        self.vocab_size = max(vocab.values()) + 1
        self._spelled = self._split_words = None  # transformers' reading: the added tokens above
        if reading == "open_clip":  # its word split, with the two spellings as its first alternatives
            tokenizer.normalizer = normalizers.Replace(Regex(r"\s+"), " ")  # __call__ lower-cases as Python does
            self._spelled = dict(zip(_SPECIAL_SPELLINGS[reading], (self.start_id, self.end_id)))
            self._split_words = pre_tokenizers.Split(Regex(_OPEN_CLIP_WORDS), behavior="removed", invert=True)
            # (bytes only: ByteLevel's own GPT-2 split would cut "'\u017f" and "<\u017ftart_of_text>" again)
            byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
            tokenizer.pre_tokenizer = pre_tokenizers.Sequence([self._split_words, byte_level])

    @property
    def sep_id(self) -> int:
        """The end token (the name the recipes read, as of BERT's ``[SEP]``)."""
        return self.end_id

    @property
    def special_ids(self) -> tuple[int, ...]:
        """The start, end and padding ids (no text is spelt with these alone)."""
        return tuple(dict.fromkeys((self.start_id, self.end_id, self.pad_id)))

    @property
    def reads_as_transformers(self) -> bool:
        """Whether texts are read as transformers' ``CLIPTokenizerFast`` reads them (what :meth:`save` writes): not
        open_clip's reading, no HTML unescaping, no ftfy fixes."""
        return self._spelled is None and not self.unescape_html and not self.fix_text

    def transformers_reading(self) -> "CLIPTokenizer":
        """This vocabulary and these merges, padding token, ``model_max_length`` and
        ``clean_up_tokenization_spaces``, reading texts as transformers does (:attr:`reads_as_transformers`: a
        tokenizer that :meth:`save` writes; ids differ from this one's on texts with HTML entities, mojibake or
        spelt special tokens where this one reads as open_clip does)."""
        model = json.loads(self._tokenizer.to_str())["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]  # (by version)
        return CLIPTokenizer.from_vocab_and_merges(
            self._tokenizer.get_vocab(with_added_tokens=True),  # (a tokenizer.json's added padding token too)
            merges,
            model_max_length=self.model_max_length,
            pad_token=self._tokenizer.id_to_token(self.pad_id),
            clean_up_tokenization_spaces=self.clean_up_tokenization_spaces,
        )

    def save(self, directory: PathLike) -> Path:
        """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` into ``directory``
        (atomically), in Hugging Face's format: :meth:`from_directory` (and transformers'
        ``CLIPTokenizer`` / ``CLIPTokenizerFast``) read them back to CLIP's pipeline on this vocabulary
        and these merges, with this ``model_max_length``, padding token and ``clean_up_tokenization_spaces``.

        Only transformers' reading is written: a tokenizer of :meth:`from_bpe` (open_clip's reading,
        its text fixes) is refused rather than saved as another one; ``from_bpe(path,
        reading="transformers", unescape_html=False, fix_text=False)`` gives one that saves (reading
        texts as transformers' ``CLIPTokenizerFast`` does, not as open_clip does).

        Args:
            directory (PathLike): where (created if missing).

        Returns:
            Path: the ``vocab.json`` written.

        Raises:
            ValueError: if this tokenizer reads texts as open_clip does, or unescapes or fixes them.
        """
        directory = Path(check_path("directory", directory))
        reading = "transformers" if self._spelled is None else "open_clip"
        settings = {"reading": (reading, "transformers"), "unescape_html": (self.unescape_html, False)}
        settings["fix_text"] = (self.fix_text, False)  # (this tokenizer's value, the one the files state)
        differing = [f"{name}={value!r}" for name, (value, saved) in settings.items() if value != saved]
        if differing:
            raise ValueError(
                "save: expected transformers' reading of texts (reading='transformers', unescape_html=False, "
                f"fix_text=False: Hugging Face's files cannot state open_clip's), got {', '.join(differing)}; "
                "CLIPTokenizer.from_bpe(path, reading='transformers', unescape_html=False, fix_text=False) "
                "gives one that saves (it reads texts as transformers' CLIPTokenizerFast does)"
            )
        model = json.loads(self._tokenizer.to_str())["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]  # (either, by version)
        vocab = dict(sorted(self._tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1]))
        config = {
            "tokenizer_class": "CLIPTokenizer",
            "bos_token": START,
            "eos_token": END,
            "unk_token": END,
            "pad_token": self._tokenizer.id_to_token(self.pad_id),
            "do_lower_case": True,
            "errors": "replace",
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
        }
        # None: transformers' "no limit" (read back as None; an absent key reads as CLIP's 77)
        config["model_max_length"] = int(1e30) if self.model_max_length is None else self.model_max_length
        files = {
            "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
            "merges.txt": "#version: 0.2\n" + "".join(f"{m}\n" for m in merges),
            "vocab.json": json.dumps(vocab, ensure_ascii=False) + "\n",
        }
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            atomic_write(directory / name, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
        return directory / "vocab.json"

    @classmethod
    def from_vocab_and_merges(
        cls, vocab: dict[str, int], merges: Sequence[tuple[str, str]], **kwargs
    ) -> "CLIPTokenizer":
        """CLIP's pipeline on a vocabulary (token -> id) and merges (pairs, by rank); ``kwargs`` as
        the constructor's. ValueError unless the ids are 0 .. len(vocab) - 1, each once."""
        check_dense_ids(vocab, "vocab")
        try:
            model = models.BPE(
                vocab=vocab, merges=list(merges), continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=END
            )
        except Exception as error:  # tokenizers raises its own Exception, e.g. a merge of an unknown piece
            raise ValueError(f"merges: expected merges of pieces in the vocabulary, got {first_line(error)}") from None
        tokenizer = Tokenizer(model)
        tokenizer.normalizer, tokenizer.pre_tokenizer = _clip_normalizer(), _clip_pre_tokenizer()
        return cls(tokenizer, _copy=False, **kwargs)

    @classmethod
    def from_bpe(cls, path: PathLike, *, vocab_size: int = CLIP_VOCAB_SIZE, **kwargs) -> "CLIPTokenizer":
        """OpenAI's / open_clip's tokenizer from its merges file (``bpe_simple_vocab_16e6.txt.gz``, or
        the same uncompressed).

        The vocabulary is the 256 byte characters, the same with ``</w>``, the first
        ``vocab_size - 514`` merges of the file (after its version line), then the two special tokens.
        As in open_clip, ``<start_of_text>`` and ``<end_of_text>`` in a text are those tokens and
        ``<|endoftext|>`` is text.

        Raises:
            FileNotFoundError: if the file does not exist.
            ValueError: naming the file, if it is not text of ``a b`` merge lines or has too few of them.
        """
        path = Path(check_path("path", path))
        if not path.is_file():
            raise FileNotFoundError(f"path: expected a CLIP merges file, {path} is not a file")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 515:
            raise ValueError(f"vocab_size must be an int >= 515, got {vocab_size!r}")
        wanted = vocab_size - 514
        # Only the lines used are read, _MERGE_LINE_BYTES a line on average: a gzip bomb (1000 times its
        # size) or a file without newlines cannot take more memory than the merges it should hold.
        limit = (wanted + 1) * _MERGE_LINE_BYTES
        try:
            with open(path, "rb") as file:
                compressed = file.read(2) == b"\x1f\x8b"
            with (gzip.open if compressed else open)(path, "rb") as file:
                raw = file.read(limit + 1)
            if len(raw) > limit:  # (the cut may fall inside a line, even inside a character: drop that line)
                raw = raw[: raw.rfind(b"\n") + 1]
            text = raw.decode("utf-8")
        except (OSError, EOFError, UnicodeDecodeError) as error:
            raise ValueError(f"path: {path} is not a (gzipped) UTF-8 merges file ({error})") from None
        merges = _merge_pairs(text.split("\n")[1 : wanted + 1], path)
        if len(merges) < wanted:
            raise ValueError(f"path: expected at least {wanted} merges in {path}, got {len(merges)}")
        characters = list(byte_characters().values())
        tokens = characters + [c + "</w>" for c in characters] + ["".join(pair) for pair in merges] + [START, END]
        kwargs.setdefault("unescape_html", True)  # as OpenAI's and open_clip's tokenizers
        kwargs.setdefault("fix_text", True)
        kwargs.setdefault("reading", "open_clip")
        return cls.from_vocab_and_merges({token: i for i, token in enumerate(tokens)}, merges, **kwargs)

    @classmethod
    def from_tokenizer_json(cls, path: PathLike, **kwargs) -> "CLIPTokenizer":
        """A transformers ``tokenizer.json`` of a CLIP checkpoint: its vocabulary and merges, with the
        pipeline it states, which must be CLIP's (:func:`check_clip_pipeline`), the one built here. Any
        padding or truncation saved in it is not applied (transformers writes the last call's; each call
        here pads and truncates as asked, as transformers' tokenizer does).

        Raises:
            TypeError: if ``path`` is not a path.
            ValueError: naming the file, if it does not read, is not a BPE tokenizer, has the word split of
                transformers before 4.17 (not a Sequence), its ids are not 0 .. size - 1, each once, or, naming
                the key and its value, its pipeline or BPE options are not CLIP's.
        """
        path = check_path("path", path)
        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as error:  # tokenizers raises its own Exception subclass for any bad file
            raise ValueError(f"tokenizer.json: {path} does not read as a tokenizer ({error})") from None
        tokenizer.no_padding()
        tokenizer.no_truncation()
        if not isinstance(tokenizer.model, models.BPE):
            raise ValueError(
                f"tokenizer.json: expected a BPE model (CLIP's) in {path}, got {type(tokenizer.model).__name__}"
            )
        # as vocab.json's: an id used twice read two tokens as one (the start and end tokens, say), a gap
        # or a huge id sized the embedding table wrongly
        check_dense_ids(tokenizer.get_vocab(), f"tokenizer.json: {path} model.vocab and added_tokens")
        if not isinstance(tokenizer.pre_tokenizer, pre_tokenizers.Sequence):  # transformers refuses it too
            raise ValueError(
                f"tokenizer.json: pre_tokenizer in {path} must be a Sequence (CLIP's word split, then bytes; files "
                "written before transformers 4.17 split otherwise: re-save with from_slow=True), got "
                f"{type(tokenizer.pre_tokenizer).__name__}"
            )
        check_clip_pipeline(tokenizer, path)
        return cls(tokenizer, _copy=False, **kwargs)

    @classmethod
    def from_directory(cls, directory: PathLike) -> "CLIPTokenizer":
        """A Hugging Face CLIP directory's tokenizer, as ``CLIPTokenizerFast`` loads it.

        Raises:
            FileNotFoundError: if it has neither ``tokenizer.json`` nor ``vocab.json`` and ``merges.txt``.
            ValueError: naming the file and key, if a file is malformed or states another tokenizer, or
                if ``added_tokens.json`` or ``tokenizer_config.json`` adds tokens other than CLIP's start,
                end and padding ones (and those the ``tokenizer.json``, if any, adds itself).
        """
        directory = Path(check_path("directory", directory))
        settings = read_clip_tokenizer_config(directory / "tokenizer_config.json")
        specials = (START, END, settings.get("pad_token") or END)
        if present_file(directory / "tokenizer.json", "a tokenizer file"):
            tokenizer = cls.from_tokenizer_json(directory / "tokenizer.json", **settings)
            # Its own added tokens are read with it; those only the other files list, transformers adds too.
            own = added_tokens(directory)[directory / "tokenizer.json"]
            refuse_added_tokens(directory, (*specials, *own), "CLIP's special tokens and tokenizer.json's added ones")
            return tokenizer
        if present_file(directory / "vocab.json", "a vocabulary file") and present_file(
            directory / "merges.txt", "a merges file"
        ):  # (a tokenizer.json holds its added tokens: read as transformers reads them)
            refuse_added_tokens(directory, specials, "CLIP's special tokens")
            vocab = read_json_object(directory / "vocab.json")
            if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in vocab.items()):
                raise ValueError(f"vocab.json: expected token -> int id entries in {directory / 'vocab.json'}")
            check_dense_ids(vocab, f"vocab.json: {directory / 'vocab.json'}")
            if len(vocab) < 514:  # (the merges count below would be negative)
                raise ValueError(
                    f"vocab.json: expected at least 514 tokens in {directory / 'vocab.json'} (the 256 byte pieces, "
                    f"each also with </w>, and 2 special tokens), got {len(vocab)}"
                )
            path = directory / "merges.txt"
            try:
                lines = path.read_text(encoding="utf-8").split("\n")
            except UnicodeDecodeError as error:
                raise ValueError(f"merges.txt: {path} is not UTF-8 text ({error})") from None
            if not lines[0].startswith("#version"):  # transformers skips line 1 whatever it holds: a merge lost
                raise ValueError(
                    f"merges.txt: line 1 of {path} must be the '#version: ...' header (transformers skips that line), "
                    f"got {lines[0][:80]!r}"
                )
            merges = _merge_pairs(lines[1:], path)
            _check_merged_tokens(merges, vocab, path)
            if len(merges) != len(vocab) - 514:  # e.g. a truncated file: it would tokenise otherwise, silently
                raise ValueError(
                    f"merges.txt: expected len(vocab.json) - 514 = {len(vocab) - 514} merges in {path} (the vocabulary "
                    f"is the 256 byte pieces, each also with </w>, one token per merge and 2 special tokens), got {len(merges)}"
                )
            return cls.from_vocab_and_merges(vocab, merges, **settings)
        raise FileNotFoundError(f"directory: {directory} has neither tokenizer.json nor vocab.json and merges.txt")

    def __call__(self, texts: Sequence[str], *, max_length: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """Tokenise ``texts``, truncate to ``max_length`` (the end token kept) and pad to the longest.

        Args:
            texts (Sequence[str]): B strings.
            max_length (Optional[int]): most ids per row, start and end tokens included (>= 2); None
                for ``model_max_length``.

        Returns:
            tuple[Tensor, Tensor]: ids (B, L) long and attention mask (B, L) long (1 = token).

        Raises:
            TypeError: if ``texts`` is not a sequence of strings.
            ValueError: if ``texts`` is empty or ``max_length`` is not an int >= 2.
        """
        texts = checked_texts(texts)
        length = check_max_length(max_length, self.model_max_length)
        if self.fix_text:
            texts = [ftfy_fixes(text) for text in texts]
        if self.unescape_html:
            texts = [html.unescape(html.unescape(text)) for text in texts]
        if self._spelled is not None:  # open_clip's reading
            texts = [text.lower() for text in texts]
        check_no_surrogates(texts)
        pieces = [encoding.ids for encoding in self._tokenizer.encode_batch(texts, add_special_tokens=False)]
        if self._spelled is not None:  # rows that spell a special token: tokenised around it (texts are lower-cased)
            spells = [any(spelling in text for spelling in self._spelled) for text in texts]
            pieces = [self._with_spelled_specials(t) if s else ids for t, s, ids in zip(texts, spells, pieces)]
        rows = [[self.start_id, *ids, self.end_id] for ids in pieces]
        return padded_rows(rows, length, end_id=self.end_id, pad_id=self.pad_id)

    def _with_spelled_specials(self, text: str) -> list[int]:
        """``text``'s ids with the special tokens it spells (open_clip's way) as those tokens: the text
        around each is tokenised on its own, as open_clip's word split leaves it."""
        normalized = self._tokenizer.normalizer.normalize_str(text)
        out, start = [], 0
        for piece, (begin, end) in self._split_words.pre_tokenize_str(normalized):
            if piece in self._spelled:
                out += self._plain_ids(normalized[start:begin]) + [self._spelled[piece]]
                start = end
        return out + self._plain_ids(normalized[start:])

    def _plain_ids(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def decode(self, ids: Sequence[int]) -> str:
        """Text of one id sequence (a list, tuple or 1-D tensor of ints): the start, end and padding ids
        dropped (LAION's ``!`` padding too, wherever it stands, as transformers drops its special tokens),
        lower-cased, one space after each word and, when ``clean_up_tokenization_spaces``, the spaces
        before punctuation and contractions removed
        (:func:`~torchflava.data.tokenizer.clean_up_spaces`): the text ``CLIPTokenizerFast``'s
        ``decode(ids, skip_special_tokens=True)`` gives for the same directory. TypeError / ValueError
        as :func:`~torchflava.data.tokenizer.checked_ids`."""
        ids = checked_ids(ids, self.vocab_size)  # (an id past the vocabulary decoded to "", -1 overflowed)
        byte_of = {character: byte for byte, character in byte_characters().items()}
        pieces = [self._tokenizer.id_to_token(i) for i in ids if i not in self.special_ids]
        data = bytes(byte_of.get(c, 32) for c in "".join(pieces))  # a character no byte spells: a space
        text = data.decode("utf-8", errors="replace").replace("</w>", " ").strip()
        return clean_up_spaces(text) if self.clean_up_tokenization_spaces else text


def _clip_normalizer() -> normalizers.Normalizer:
    """CLIP's normaliser (transformers' conversion of its tokenizer): NFC, white space runs made one space,
    lower-casing."""
    return normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])


def _clip_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """CLIP's word split (the matches kept, the rest dropped), then each word spelt in byte characters."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_WORDS), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )


# The BPE options transformers' conversion of CLIP's tokenizer writes (the tokenizers library reads a key an
# older file lacks as these defaults).
_CLIP_BPE_OPTIONS = {
    "dropout": None,  # (any other: random merges, ids that no seed reproduces)
    "continuing_subword_prefix": "",
    "unk_token": END,
    "end_of_word_suffix": "</w>",
    "fuse_unk": False,
    "byte_fallback": False,
    "ignore_merges": False,
}


def _pipeline(tokenizer: Tokenizer) -> dict:
    """``tokenizer``'s normaliser, pre-tokeniser, post-processor and decoder as JSON, as the installed
    tokenizers library writes them: a key an older file lacks holds the default it was read with."""
    probe = Tokenizer(models.BPE())  # (the steps alone: the whole tokenizer's JSON holds the vocabulary)
    probe.normalizer, probe.pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
    probe.post_processor, probe.decoder = tokenizer.post_processor, tokenizer.decoder
    spec = json.loads(probe.to_str())
    return {key: spec[key] for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder")}


def _shown(value: object) -> str:
    """A JSON value of a file, for a one-line message (whole where short: a difference may be at its end)."""
    text = json.dumps(value)
    return text if len(text) <= 400 else text[:400] + "..."


def check_clip_pipeline(tokenizer: Tokenizer, path: PathLike) -> None:
    """ValueError naming the key of the ``tokenizer.json`` at ``path`` (read as ``tokenizer``) and its value
    unless its pipeline is the one :meth:`CLIPTokenizer.from_vocab_and_merges` builds, which transformers'
    ``CLIPTokenizerFast`` would run from the file: CLIP's normaliser and pre-tokeniser, a ``ByteLevel``
    decoder, a post-processor making ``<|startoftext|> text <|endoftext|>`` with the vocabulary's ids and
    CLIP's BPE options. Another would tokenise or decode otherwise there (a null post-processor adds no
    start and end tokens, a null decoder leaves the byte characters), or read otherwise once
    :meth:`CLIPTokenizer.save` writes it as CLIP's vocabulary and merges.

    Args:
        tokenizer (Tokenizer): the file as the tokenizers library reads it (a BPE model).
        path (PathLike): the file, for the message.

    Raises:
        ValueError: naming the first key (``normalizer``, ``pre_tokenizer``, ``decoder``, ``model.<option>``,
            ``post_processor``) whose value is not CLIP's, and that value.
    """
    found, vocab = _pipeline(tokenizer), tokenizer.get_vocab()
    clip = Tokenizer(models.BPE())
    clip.normalizer, clip.pre_tokenizer = _clip_normalizer(), _clip_pre_tokenizer()
    clip_steps = _pipeline(clip)
    for key in ("normalizer", "pre_tokenizer"):
        if found[key] != (expected := clip_steps[key]):
            raise ValueError(
                f"tokenizer.json: {key} in {path} must be {_shown(expected)} (CLIP's), got {_shown(found[key])}"
            )
    decoder = found["decoder"]  # (a ByteLevel decoder's options change nothing in decoding)
    if not isinstance(decoder, dict) or decoder.get("type") != "ByteLevel":
        raise ValueError(f"tokenizer.json: decoder in {path} must be a ByteLevel one (CLIP's), got {_shown(decoder)}")
    options = {name: getattr(tokenizer.model, name) for name in _CLIP_BPE_OPTIONS}
    options["continuing_subword_prefix"] = options["continuing_subword_prefix"] or ""  # (null splits as "")
    for name, expected in _CLIP_BPE_OPTIONS.items():
        if options[name] != expected:
            raise ValueError(
                f"tokenizer.json: model.{name} in {path} must be {expected!r} (CLIP's), got {options[name]!r}"
            )
    ids = (vocab.get(START), vocab.get(END))  # (a missing one: the constructor names it)
    if None not in ids and not _clip_post_processor(found["post_processor"], *ids):
        raise ValueError(
            f"tokenizer.json: post_processor in {path} must make {START} $A {END} with the ids {ids[0]} and "
            f"{ids[1]} (CLIP's), got {_shown(found['post_processor'])}"
        )


def _clip_post_processor(processor: object, start_id: int, end_id: int) -> bool:
    """Whether a tokenizer.json's post-processor makes ``<|startoftext|> text <|endoftext|>`` of one text with
    these ids: transformers writes a ``RobertaProcessing`` (its other options move offsets only), other
    tools a ``TemplateProcessing`` (CLIP has no token types: theirs are not compared)."""
    start, end = [START, start_id], [END, end_id]
    if not isinstance(processor, dict):
        return False
    if processor.get("type") == "RobertaProcessing":
        return processor.get("cls") == start and processor.get("sep") == end
    if processor.get("type") != "TemplateProcessing":
        return False
    single = [{kind: piece.get("id") for kind, piece in item.items()} for item in processor.get("single", [])]
    tokens = processor.get("special_tokens", {})
    return single == [{"SpecialToken": START}, {"Sequence": "A"}, {"SpecialToken": END}] and all(
        tokens.get(name) == {"id": name, "ids": [i], "tokens": [name]} for name, i in (start, end)
    )


def read_tokenizer(path: PathLike) -> Union[WordPieceTokenizer, CLIPTokenizer]:
    """The tokenizer of a BERT ``vocab.txt``, of a directory holding one (WordPiece:
    :func:`~torchflava.data.tokenizer.read_vocabulary`), else of a CLIP tokenizer directory
    (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``: :meth:`CLIPTokenizer.from_directory`).

    Raises:
        TypeError: if ``path`` is not a path.
        FileNotFoundError: if it is not there, or a directory holds no tokenizer files.
        ValueError: naming the file, if a file is malformed.
    """
    path = Path(check_path("path", path))
    if not path.is_dir() or (path / "vocab.txt").is_file():
        return read_vocabulary(path)
    return CLIPTokenizer.from_directory(path)


def _merge_pairs(lines: Sequence[str], path: Path) -> list[tuple[str, str]]:
    """The pairs of merge lines (line 2 on), by rank: two pieces split at white space, as transformers and
    open_clip split them (blank lines at the end are the file's end, as transformers strips it).

    Raises:
        ValueError: naming the line, if one is not two pieces or repeats an earlier one (transformers ranks
            a repeated merge at its first line, the tokenizers library at its last: and the tokens of
            every later merge move by one).
    """
    lines = list(lines)
    while lines and not lines[-1].strip():
        lines.pop()
    pairs, first = [], {}
    for number, line in enumerate(lines, start=2):
        parts = line.split()  # (no byte's character is white space: a piece holds none)
        if len(parts) != 2:
            got = repr(line) if len(line) <= 200 else f"{line[:200]!r}... ({len(line)} characters)"  # (one line)
            raise ValueError(f"merges: line {number} of {path} must be two pieces separated by white space, got {got}")
        pair = (parts[0], parts[1])
        if (earlier := first.setdefault(pair, number)) != number:
            raise ValueError(f"merges: line {number} of {path} repeats line {earlier} ({' '.join(pair)!r})")
        pairs.append(pair)
    return pairs


def _check_merged_tokens(merges: Sequence[tuple[str, str]], vocab: dict[str, int], path: Path) -> None:
    """ValueError naming the line of the merges file at ``path`` if a merge's pieces or its result are not
    tokens of ``vocab`` (the tokenizers library refuses it too, naming neither the file nor the line)."""
    for number, (left, right) in enumerate(merges, start=2):
        if missing := [token for token in (left, right, left + right) if token not in vocab]:
            raise ValueError(
                f"merges.txt: line {number} of {path} merges {left!r} and {right!r}: expected the pieces and "
                f"{left + right!r} in vocab.json, which lacks {missing}"
            )


def read_clip_tokenizer_config(path: Path) -> dict:
    """``model_max_length``, ``pad_token`` and ``clean_up_tokenization_spaces`` of a CLIP
    ``tokenizer_config.json`` (missing file or key: 77, None, false).

    As transformers reads them: where the config has no ``added_tokens_decoder`` (files written before
    transformers 4.34), the ``special_tokens_map.json`` beside it names the special tokens over the config.

    Raises:
        ValueError: naming the key, if a value has the wrong type (``clean_up_tokenization_spaces``: not
            true or false), the class is not CLIP's, the padding token is an empty string, or the start,
            end or unknown token is not CLIP's.
    """
    config = read_json_object(path) if present_file(path, "a tokenizer config file") else {}
    config, where = with_special_tokens_map(config, path, _TOKEN_KEYS)
    if not config:
        return {}
    kind = config.get("tokenizer_class")
    if kind is not None and kind not in _CLASSES:
        raise ValueError(f"tokenizer_config.json: tokenizer_class must be one of {_CLASSES}, got {kind!r}")
    settings = {}
    if config.get("model_max_length") is not None:  # absent or null: CLIP's 77
        settings["model_max_length"] = config_max_length(config)
    for key, expected in zip(_TOKEN_KEYS[:3], (START, END, END)):  # (no others are read)
        token = config_token(config, key)
        if token is not None and token != expected:
            raise ValueError(f"{where[key]}: {key} must be {expected} (CLIP's), got {token!r}")
    pad = config_token(config, "pad_token")
    if pad is not None and (not isinstance(pad, str) or not pad):  # ("" padded with the end token)
        raise ValueError(f"{where['pad_token']}: pad_token must be a non-empty string or null, got {pad!r}")
    settings["pad_token"] = pad
    if (clean_up := config_clean_up(config, path)) is not None:
        settings["clean_up_tokenization_spaces"] = clean_up
    return settings
