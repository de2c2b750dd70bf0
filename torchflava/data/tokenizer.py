"""BERT WordPiece tokenisation on the ``tokenizers`` library: load a checkpoint's, or train one.

A checkpoint directory's tokenizer (:meth:`WordPieceTokenizer.from_directory`) is the WordPiece
vocabulary of its ``tokenizer.json`` (whose pipeline must be BERT's), read over its ``vocab.txt`` as
transformers does, else its ``vocab.txt``, with the settings of its ``tokenizer_config.json`` read as
transformers' ``BertTokenizerFast`` reads them:
``do_lower_case`` (default true), ``strip_accents`` (default: as ``do_lower_case``),
``tokenize_chinese_chars`` (default true), ``model_max_length`` (the default ``max_length``) and
``clean_up_tokenization_spaces`` (:meth:`WordPieceTokenizer.decode`'s clean-up of spaces before
punctuation and contractions; default as transformers': true for a ``vocab.txt``, false for a
``tokenizer.json``). :meth:`WordPieceTokenizer.save` writes both files.
"""

from collections import Counter, abc
import json
import numbers
import os
from pathlib import Path
import re
import sys
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
import torch
from torch import Tensor
from torch.utils.data import Dataset

from torchflava.utils.checkpoint import atomic_write, present_file, read_json_object
from torchflava.utils.checks import check_path

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TOKENIZER_CONFIG = "tokenizer_config.json"
# transformers writes model_max_length = int(1e30) for "no limit".
_NO_LENGTH_LIMIT = int(1e30)


class WordPieceTokenizer:
    """BERT WordPiece tokenizer producing ``[CLS] text [SEP]`` id sequences (lower-casing by default).

    Build it with :meth:`from_directory` (a checkpoint directory), :meth:`from_vocab` (a BERT
    ``vocab.txt``), :meth:`from_tokenizer_json` or :meth:`train` (a new vocabulary learnt from the
    run's text).

    Args:
        tokenizer (Tokenizer): a ``tokenizers`` WordPiece tokenizer whose vocabulary holds the
            five BERT special tokens (its normaliser decides casing, accents and CJK splitting).
        model_max_length (Optional[int]): the default ``max_length`` of :meth:`__call__`.
        clean_up_tokenization_spaces (bool): whether :meth:`decode` removes the spaces before
            punctuation and contractions (:func:`clean_up_spaces`), as transformers' setting of that
            name (true for BERT's ``BertTokenizer`` and a ``vocab.txt``).

    Raises:
        ValueError: if a special token is missing from the vocabulary, or ``model_max_length`` < 2.
        TypeError: if ``clean_up_tokenization_spaces`` is not a bool.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        model_max_length: Optional[int] = None,
        clean_up_tokenization_spaces: bool = True,
        _copy: bool = True,
    ) -> None:
        self.clean_up_tokenization_spaces = check_clean_up(clean_up_tokenization_spaces)
        if _copy:  # the caller's stays as it was (_copy=False: the classmethods' own, made for this one)
            tokenizer = Tokenizer.from_str(tokenizer.to_str())
        vocab = tokenizer.get_vocab()
        missing = [token for token in SPECIAL_TOKENS if token not in vocab]
        if missing:
            raise ValueError(f"the vocabulary lacks the special token(s) {missing}")
        self.model_max_length = check_model_max_length(model_max_length)
        tokenizer.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocabulary: marks them special
        self._tokenizer = tokenizer
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (vocab[t] for t in SPECIAL_TOKENS)
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)]
        )
        # Read once: ``get_vocab`` copies the whole vocabulary into a dict (~30k entries for BERT's),
        # and the collators ask for the size once per text.
        self._vocab_size = max(tokenizer.get_vocab().values()) + 1

    @property
    def vocab_size(self) -> int:
        """Number of ids (largest id + 1)."""
        return self._vocab_size

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids that masking must never select: PAD, CLS, SEP, UNK, MASK."""
        return (self.pad_id, self.cls_id, self.sep_id, self.unk_id, self.mask_id)

    @property
    def lowercase(self) -> bool:
        """Whether text is lower-cased before tokenisation."""
        return self._tokenizer.normalizer.lowercase

    @property
    def strip_accents(self) -> Optional[bool]:
        """Whether accents are stripped (None: when lower-casing)."""
        return self._tokenizer.normalizer.strip_accents

    @property
    def tokenize_chinese_chars(self) -> bool:
        """Whether every CJK character is a word of its own."""
        return self._tokenizer.normalizer.handle_chinese_chars

    @staticmethod
    def _bare(
        vocab: dict[str, int],
        *,
        lowercase: bool = True,
        strip_accents: Optional[bool] = None,
        tokenize_chinese_chars: bool = True,
        max_input_chars_per_word: int = 100,
    ) -> Tokenizer:
        for name, value in (("lowercase", lowercase), ("tokenize_chinese_chars", tokenize_chinese_chars)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        if strip_accents is not None and not isinstance(strip_accents, bool):
            raise TypeError(f"strip_accents must be True, False or None, got {strip_accents!r}")
        model = models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=max_input_chars_per_word)
        tokenizer = Tokenizer(model)
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents,
            lowercase=lowercase,
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        return tokenizer

    @classmethod
    def from_vocab(
        cls,
        path: Union[str, os.PathLike],
        *,
        lowercase: bool = True,
        strip_accents: Optional[bool] = None,
        tokenize_chinese_chars: bool = True,
        model_max_length: Optional[int] = None,
        clean_up_tokenization_spaces: bool = True,
    ) -> "WordPieceTokenizer":
        """Load a BERT ``vocab.txt`` (one token per line, the line number is the id).

        Args:
            path (Union[str, os.PathLike]): the file, or a directory holding ``vocab.txt``.
            lowercase (bool): lower-case text first (an uncased vocabulary).
            strip_accents (Optional[bool]): strip accents; None strips them when lower-casing.
            tokenize_chinese_chars (bool): make every CJK character a word of its own.
            model_max_length (Optional[int]): the default ``max_length``.
            clean_up_tokenization_spaces (bool): :meth:`decode`'s clean-up (true: as ``BertTokenizerFast``
                loads a ``vocab.txt``).

        Returns:
            WordPieceTokenizer: the tokenizer.

        Raises:
            FileNotFoundError: if there is no such file.
            ValueError: if the vocabulary lacks a special token or repeats a token.
        """
        path = Path(check_path("path", path))
        if path.is_dir():
            path = path / "vocab.txt"
        if not path.is_file():
            raise FileNotFoundError(f"path: no vocab.txt at {path}")
        try:  # one token a line, split at "\n" only: splitlines() would also split at \x0c, \x85, \u2028...
            tokens = path.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError as error:
            raise ValueError(f"path: {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
        tokens = [token.removesuffix("\r") for token in tokens]
        if tokens and tokens[-1] == "":  # the newline that ends the last line
            tokens.pop()
        if tokens and tokens[0].startswith("\ufeff"):
            raise ValueError(
                f"path: {path} starts with a byte-order mark: a vocab.txt has none (transformers would read it "
                "into the first token's name)"
            )
        vocab, repeats = {}, []
        for line, token in enumerate(tokens, start=1):
            if token in vocab:
                repeats.append(f"{token!r} on lines {vocab[token] + 1} and {line}")
            vocab.setdefault(token, line - 1)
        if repeats:  # transformers keeps the last line's id: a gap, and another id than ours
            raise ValueError(f"path: {path} repeats tokens ({len(repeats)}): {', '.join(repeats[:3])}")
        bare = cls._bare(
            vocab, lowercase=lowercase, strip_accents=strip_accents, tokenize_chinese_chars=tokenize_chinese_chars
        )
        return cls(
            bare,
            model_max_length=model_max_length,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            _copy=False,
        )

    @classmethod
    def from_tokenizer_json(
        cls,
        path: Union[str, os.PathLike],
        *,
        lowercase: bool = True,
        strip_accents: Optional[bool] = None,
        tokenize_chinese_chars: bool = True,
        model_max_length: Optional[int] = None,
        clean_up_tokenization_spaces: bool = False,
    ) -> "WordPieceTokenizer":
        """Load the WordPiece vocabulary of a ``tokenizers`` ``tokenizer.json`` (a BERT one).

        Only the vocabulary and ``max_input_chars_per_word`` are read from the file; the casing and
        accent settings come from the arguments, as ``BertTokenizerFast`` takes them from
        ``tokenizer_config.json`` over the file's normaliser. The rest of its pipeline must be BERT's
        (:func:`check_bert_pipeline`), the one built here.

        Args:
            path (Union[str, os.PathLike]): the file.
            lowercase (bool): lower-case text first (an uncased vocabulary).
            strip_accents (Optional[bool]): strip accents; None strips them when lower-casing.
            tokenize_chinese_chars (bool): make every CJK character a word of its own.
            model_max_length (Optional[int]): the default ``max_length``.
            clean_up_tokenization_spaces (bool): :meth:`decode`'s clean-up (false: as ``BertTokenizerFast``
                loads a ``tokenizer.json`` with no ``tokenizer_config.json`` key saying otherwise).

        Returns:
            WordPieceTokenizer: the tokenizer.

        Raises:
            FileNotFoundError: if there is no such file.
            ValueError: if the file is not JSON, its model is not a WordPiece one with ``[UNK]`` and
                ``##`` continuations, its pipeline is not BERT's, or the vocabulary lacks a special token.
        """
        path = Path(check_path("path", path))
        if not path.is_file():
            raise FileNotFoundError(f"path: no tokenizer.json at {path}")
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
            model = spec.get("model")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, RecursionError) as error:  # (too deep)
            raise ValueError(f"path: {path} is not a tokenizer.json object ({error})") from None
        if not isinstance(model, dict) or model.get("type", _untagged_type(model)) != "WordPiece":
            found = model.get("type") if isinstance(model, dict) else model
            raise ValueError(f"path: {path} model.type must be WordPiece, got {found!r}")
        if model.get("unk_token", "[UNK]") != "[UNK]" or model.get("continuing_subword_prefix", "##") != "##":
            raise ValueError(
                f"path: {path} model must use unk_token [UNK] and continuing_subword_prefix ##, got "
                f"{model.get('unk_token')!r} and {model.get('continuing_subword_prefix')!r}"
            )
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or any(type(i) is not int for i in vocab.values()):
            raise ValueError(f"path: {path} model.vocab must map tokens to int ids")
        check_dense_ids(vocab, f"path: {path} model.vocab")  # save() writes positions: gaps would renumber
        chars = model.get("max_input_chars_per_word", 100)
        if type(chars) is not int or not 1 <= chars <= sys.maxsize:  # (the library's usize: 10**20 overflowed)
            raise ValueError(
                f"path: {path} model.max_input_chars_per_word must be an int in [1, {sys.maxsize}], got {chars!r}"
            )
        check_bert_pipeline(spec, path, vocab)
        bare = cls._bare(
            vocab,
            lowercase=lowercase,
            strip_accents=strip_accents,
            tokenize_chinese_chars=tokenize_chinese_chars,
            max_input_chars_per_word=chars,
        )
        return cls(
            bare,
            model_max_length=model_max_length,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            _copy=False,
        )

    @classmethod
    def from_directory(cls, directory: Union[str, os.PathLike]) -> "WordPieceTokenizer":
        """Load a checkpoint directory's tokenizer as ``BertTokenizerFast`` would (see the module doc).

        Args:
            directory (Union[str, os.PathLike]): holds ``vocab.txt`` or ``tokenizer.json``, and
                optionally ``tokenizer_config.json``.

        Returns:
            WordPieceTokenizer: the tokenizer.

        Raises:
            FileNotFoundError: if the directory has neither ``vocab.txt`` nor ``tokenizer.json``.
            ValueError: naming the key, if ``tokenizer_config.json`` holds a malformed or unsupported
                value; as :meth:`from_vocab` / :meth:`from_tokenizer_json` for the vocabulary.
        """
        directory = Path(check_path("directory", directory))
        settings = read_tokenizer_config(directory / TOKENIZER_CONFIG)
        if settings["clean_up_tokenization_spaces"] is None:  # not stated: the default of the file read below
            del settings["clean_up_tokenization_spaces"]
        refuse_added_tokens(directory)
        if present_file(directory / "tokenizer.json", "a tokenizer file"):  # the fast tokenizer reads it over vocab.txt
            return cls.from_tokenizer_json(directory / "tokenizer.json", **settings)
        if present_file(directory / "vocab.txt", "a vocabulary file"):
            return cls.from_vocab(directory / "vocab.txt", **settings)
        raise FileNotFoundError(f"directory: {directory} has neither vocab.txt nor tokenizer.json")

    @classmethod
    def train(cls, texts: Iterable[str], *, vocab_size: int = 30522, min_frequency: int = 1) -> "WordPieceTokenizer":
        """Learn a WordPiece vocabulary from ``texts``, deterministically.

        The vocabulary is: the five special tokens (ids 0-4), every character of the normalised
        text both as a word start and as a ``##`` continuation (so any word can be spelt), then
        whole words by decreasing frequency (ties in alphabetical order) until ``vocab_size``.
        Words left out are split into the longest pieces the vocabulary has, as WordPiece does.
        The same text always gives the same ids (the ``tokenizers`` trainer breaks ties in hash
        order, which changes between runs). For large corpora prefer a published BERT
        ``vocab.txt`` (:meth:`from_vocab`).

        Args:
            texts (Iterable[str]): the training text.
            vocab_size (int): the largest vocabulary wanted (smaller if the text has fewer pieces).
            min_frequency (int): a word must occur this often to become a token.

        Returns:
            WordPieceTokenizer: the tokenizer.

        Raises:
            ValueError: if ``vocab_size`` cannot hold the special tokens and the alphabet,
                ``min_frequency`` < 1, or a text holds UTF-16 surrogate code points (as encoding refuses them).
            TypeError: if ``texts`` is a single string or holds something other than strings.
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must be an int > {len(SPECIAL_TOKENS)}, got {vocab_size!r}")
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}")
        if isinstance(texts, (str, bytes)):  # would train on its characters, one "text" each
            raise TypeError(f"texts must be an iterable of strings (e.g. a list), got one {type(texts).__name__}")
        bare = cls._bare({token: i for i, token in enumerate(SPECIAL_TOKENS)})
        words: Counter = Counter()
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] must be a str, got {type(text).__name__}")
            if _SURROGATE.search(text):  # (the tokenizers library failed with a UnicodeEncodeError naming no text)
                raise ValueError(
                    f"texts: expected Unicode text, got surrogate code points in texts[{index}] {text!r:.60}"
                )
            normalised = bare.normalizer.normalize_str(text)
            words.update(word for word, _ in bare.pre_tokenizer.pre_tokenize_str(normalised))
        characters = sorted({c for word in words for c in word})
        vocab = list(SPECIAL_TOKENS) + characters + [f"##{c}" for c in characters]
        if len(vocab) > vocab_size:
            raise ValueError(
                f"vocab_size must be at least {len(vocab)} for this text (5 special tokens and its "
                f"{len(characters)} characters, each also as a ## continuation), got {vocab_size}"
            )
        known = set(vocab)
        for word, count in sorted(words.items(), key=lambda item: (-item[1], item[0])):
            if len(vocab) >= vocab_size or count < min_frequency:
                break
            if word not in known:
                vocab.append(word)
                known.add(word)
        return cls(cls._bare({token: i for i, token in enumerate(vocab)}), _copy=False)

    def save(self, directory: Union[str, os.PathLike]) -> Path:
        """Write ``vocab.txt`` and ``tokenizer_config.json`` into ``directory`` (atomically).

        :meth:`from_directory` (and transformers' ``BertTokenizerFast``) read them back to the
        same tokenizer.

        Args:
            directory (Union[str, os.PathLike]): where (created if missing).

        Returns:
            Path: the ``vocab.txt`` written.
        """
        directory = Path(check_path("directory", directory))
        by_id = sorted(self._tokenizer.get_vocab().items(), key=lambda item: item[1])
        vocab = "".join(f"{token}\n" for token, _ in by_id)
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.lowercase,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
        }
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        config = json.dumps(config, indent=2) + "\n"
        atomic_write(directory / TOKENIZER_CONFIG, lambda tmp: Path(tmp).write_text(config, encoding="utf-8"))
        atomic_write(directory / "vocab.txt", lambda tmp: Path(tmp).write_text(vocab, encoding="utf-8"))
        return directory / "vocab.txt"

    def __call__(self, texts: Sequence[str], *, max_length: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """Tokenise ``texts``, truncate to ``max_length`` and pad to the longest one.

        Args:
            texts (Sequence[str]): B strings.
            max_length (Optional[int]): most ids per row, including ``[CLS]`` and ``[SEP]`` (>= 2);
                None for ``model_max_length``.

        Returns:
            tuple[Tensor, Tensor]: ids (B, L) long and attention mask (B, L) long (1 = token), with
            L the longest row (dynamic padding).

        Raises:
            TypeError: if ``texts`` is not a sequence of strings.
            ValueError: if ``texts`` is empty, ``max_length`` < 2, or both it and
                ``model_max_length`` are None.
        """
        texts = checked_texts(texts)
        max_length = check_max_length(max_length, self.model_max_length)
        check_no_surrogates(texts)
        rows = [encoding.ids for encoding in self._tokenizer.encode_batch(texts)]
        return padded_rows(rows, max_length, end_id=self.sep_id, pad_id=self.pad_id)

    def encode_pairs(
        self, firsts: Sequence[str], seconds: Sequence[str], *, max_length: Optional[int] = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Tokenise sentence pairs as BERT's two segments, ``[CLS] a [SEP] b [SEP]``, truncated longest
        first to ``max_length`` and padded to the longest row: the ids, attention mask and token types
        that ``BertTokenizerFast(firsts, seconds, truncation=True, max_length=..., padding=True)`` gives.

        Args:
            firsts (Sequence[str]): B first sentences (segment 0, with ``[CLS]`` and the first ``[SEP]``).
            seconds (Sequence[str]): B second sentences (segment 1, with the last ``[SEP]``).
            max_length (Optional[int]): most ids per row, the three special tokens included (>= 3);
                None for ``model_max_length``.

        Returns:
            tuple[Tensor, Tensor, Tensor]: ids (B, L) long, attention mask (B, L) long (1 = token) and
            token types (B, L) long (0 for ``[CLS] a [SEP]`` and padding, 1 for ``b [SEP]``).

        Raises:
            TypeError: if ``firsts`` or ``seconds`` is not a sequence of strings.
            ValueError: if they are empty or differ in length, ``max_length`` < 3, or both it and
                ``model_max_length`` are None.
        """
        firsts, seconds = checked_texts(firsts, "firsts"), checked_texts(seconds, "seconds")
        if len(firsts) != len(seconds):
            raise ValueError(f"firsts and seconds must pair up, got {len(firsts)} and {len(seconds)} sentences")
        max_length = check_max_length(max_length, self.model_max_length)
        if max_length < 3:  # [CLS] and two [SEP]
            raise ValueError(f"max_length must be an int >= 3 for sentence pairs, got {max_length}")
        check_no_surrogates(firsts + seconds)
        encodings = self._pair_encoder(max_length).encode_batch(list(zip(firsts, seconds)))
        # padded, not cut again: the library's truncation is transformers' (which keeps one token past
        # max_length where a sentence reads as nothing)
        length = max(len(e.ids) for e in encodings)
        ids = torch.full((len(encodings), length), self.pad_id, dtype=torch.long)
        mask, types = torch.zeros_like(ids), torch.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = torch.tensor(encoding.ids, dtype=torch.long)
            types[row, :n] = torch.tensor(encoding.type_ids, dtype=torch.long)
            mask[row, :n] = 1
        return ids, mask, types

    def _pair_encoder(self, max_length: int) -> Tokenizer:
        """A copy of the tokenizer that makes BERT's pair template and truncates longest first to
        ``max_length`` (made once: the library's own truncation is the one transformers applies, its
        ties and empty sentences included; the single-text tokenizer stays untruncated)."""
        if getattr(self, "_pairs", None) is None:
            pairs = Tokenizer.from_str(self._tokenizer.to_str())
            special = [("[CLS]", self.cls_id), ("[SEP]", self.sep_id)]
            pairs.post_processor = processors.TemplateProcessing(
                single="[CLS] $A [SEP]", pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1", special_tokens=special
            )
            self._pairs = pairs
        if (self._pairs.truncation or {}).get("max_length") != max_length:
            self._pairs.enable_truncation(max_length, strategy="longest_first")
        return self._pairs

    def decode(self, ids: Sequence[int]) -> str:
        """Text of one id sequence (a list, tuple or 1-D tensor of ints), special tokens dropped, ``##``
        pieces joined to the word before and, when ``clean_up_tokenization_spaces``, the spaces before
        punctuation and contractions removed (:func:`clean_up_spaces`): the text ``BertTokenizerFast``'s
        ``decode(ids, skip_special_tokens=True)`` gives for the same directory. TypeError / ValueError as
        :func:`checked_ids`."""
        text = self._tokenizer.decode(checked_ids(ids, self.vocab_size), skip_special_tokens=True)
        return clean_up_spaces(text) if self.clean_up_tokenization_spaces else text


def _untagged_type(model: dict) -> Optional[str]:
    """The model type of a tokenizer.json written before tokenizers 0.10 (no ``type``: the library tells
    the kind by its fields, as it still reads such files, e.g. the Hub's 2020 ``bert-base-uncased``):
    ``"WordPiece"`` for a vocabulary with WordPiece's word limit and no merges; None otherwise."""
    wordpiece = "vocab" in model and "max_input_chars_per_word" in model and "merges" not in model
    return "WordPiece" if wordpiece else None


# A BERT tokenizer.json's pipeline, as transformers' converter writes it: what WordPieceTokenizer builds.
_BERT_PRE_TOKENIZER = {"type": "BertPreTokenizer"}
_BERT_DECODER = {"type": "WordPiece", "prefix": "##", "cleanup": True}


def check_bert_pipeline(spec: Mapping, path: Path, vocab: Mapping[str, int]) -> None:
    """ValueError naming the key of the ``tokenizer.json`` at ``path`` (``spec``, its JSON) and its value
    unless its pipeline is the one :class:`WordPieceTokenizer` builds, which ``BertTokenizerFast`` would
    run from the file: a ``BertNormalizer`` cleaning text (its casing, accent and CJK settings are
    ``tokenizer_config.json``'s there as here), the ``BertPreTokenizer``, the ``WordPiece`` decoder with
    ``##`` and its clean-up, and a post-processor making ``[CLS] text [SEP]`` with ``vocab``'s ids.
    Another would tokenise or decode otherwise, silently (absent or null: transformers fails, or keeps no
    such step)."""
    normalizer = spec.get("normalizer")
    if (
        not isinstance(normalizer, dict)
        or normalizer.get("type") != "BertNormalizer"
        or normalizer.get("clean_text") is not True
    ):
        expected = "a BertNormalizer with clean_text true"
        raise ValueError(f"path: {path} normalizer must be {expected} (BERT's), got {_found(normalizer)}")
    for key, expected in (("pre_tokenizer", _BERT_PRE_TOKENIZER), ("decoder", _BERT_DECODER)):
        if spec.get(key) != expected:
            raise ValueError(f"path: {path} {key} must be {json.dumps(expected)} (BERT's), got {_found(spec.get(key))}")
    if not _bert_post_processor(spec.get("post_processor"), vocab):
        raise ValueError(
            f"path: {path} post_processor must make [CLS] $A [SEP] with the ids {vocab['[CLS]']} and "
            f"{vocab['[SEP]']} (BERT's), got {_found(spec.get('post_processor'))}"
        )


def _bert_post_processor(processor: object, vocab: Mapping[str, int]) -> bool:
    """Whether a tokenizer.json's post-processor makes ``[CLS] text [SEP]`` with ``vocab``'s ids of those
    tokens: transformers writes a ``TemplateProcessing``, older files a ``BertProcessing``."""
    cls, sep = ["[CLS]", vocab["[CLS]"]], ["[SEP]", vocab["[SEP]"]]
    if not isinstance(processor, dict):
        return False
    if processor.get("type") == "BertProcessing":
        return processor.get("cls") == cls and processor.get("sep") == sep
    single = [
        {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
        {"Sequence": {"id": "A", "type_id": 0}},
        {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
    ]
    tokens = processor.get("special_tokens")
    return (
        processor.get("type") == "TemplateProcessing"
        and processor.get("single") == single
        and isinstance(tokens, dict)
        and all(tokens.get(name) == {"id": name, "ids": [i], "tokens": [name]} for name, i in (cls, sep))
    )


def refuse_added_tokens(
    directory: Path, allowed: Sequence[str] = SPECIAL_TOKENS, what: str = "BERT's special tokens"
) -> None:
    """ValueError naming the file if the directory's tokenizer has tokens added to its vocabulary
    beyond the ``allowed`` ones (``what`` they are; transformers' ``add_tokens``): they are read as
    whole tokens there and would be split into pieces here. A file that lists added tokens and does
    not read as such is refused too (:func:`added_tokens`): passing over it would hide them."""
    for path, tokens in added_tokens(directory).items():
        extra = [t for t in tokens if t not in allowed]
        if extra:
            raise ValueError(
                f"{path.name}: {path} adds tokens {extra[:5]} to the vocabulary; only {what} "
                f"{list(allowed)} are supported (added tokens would be split into pieces here)"
            )


def added_tokens(directory: Path) -> dict[Path, list[str]]:
    """The tokens each file of ``directory`` that transformers reads added tokens from lists, by file:
    ``tokenizer.json``'s ``added_tokens``, ``added_tokens.json`` and ``tokenizer_config.json``'s
    ``added_tokens_decoder`` (only the files there).

    Raises:
        ValueError: naming the file and the key, what was expected and what it holds, if one is not a
            JSON object or its entries are of the wrong type (transformers and tokenizers raise there).
    """
    found = {}
    path = directory / "tokenizer.json"
    if present_file(path, "a tokenizer file"):
        entries = read_json_object(path).get("added_tokens", [])
        if not isinstance(entries, list):  # (null too: tokenizers expects a sequence)
            raise ValueError(f"{path.name}: {path} added_tokens must be a list, got {_found(entries)}")
        found[path] = [_token_content(entry, path, f"added_tokens[{i}]") for i, entry in enumerate(entries)]
    path = directory / "added_tokens.json"
    if present_file(path, "an added tokens file"):
        entries = read_json_object(path)
        if bad := next(((k, v) for k, v in entries.items() if isinstance(v, bool) or not isinstance(v, int)), None):
            raise ValueError(f"{path.name}: {path} must map each token to an int id, got {bad[0]!r}: {_found(bad[1])}")
        found[path] = list(entries)
    path = directory / TOKENIZER_CONFIG
    if present_file(path, "a tokenizer config file") and "added_tokens_decoder" in (config := read_json_object(path)):
        entries = config["added_tokens_decoder"]
        if not isinstance(entries, dict):
            raise ValueError(
                f"{path.name}: {path} added_tokens_decoder must be an object of id -> token entries, got {_found(entries)}"
            )
        if bad := next((key for key in entries if not re.fullmatch(r"[0-9]+", key)), None):  # transformers: int(key)
            raise ValueError(f"{path.name}: {path} added_tokens_decoder keys must be token ids, got {bad!r}")
        found[path] = [_token_content(e, path, f"added_tokens_decoder[{k!r}]") for k, e in entries.items()]
    return found


def _token_content(entry: object, path: Path, key: str) -> str:
    """The ``content`` of an added token's entry (``key`` of the file at ``path``); ValueError naming
    both unless the entry is an object with a string ``content``."""
    if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
        raise ValueError(f"{path.name}: {path} {key} must be an object with a string content, got {_found(entry)}")
    return entry["content"]


def _found(value: object) -> str:
    """What a file holds where something else was expected, for a one-line message: type and start."""
    return f"{type(value).__name__} {json.dumps(value)[:60]}"


def check_dense_ids(vocab: Mapping[str, int], where: str) -> None:
    """ValueError (``where`` first) unless the vocabulary's ids are 0 .. len(vocab) - 1, each once: an
    id used twice reads two tokens as one, a gap or a huge id sizes the embedding table wrongly."""
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        repeated = sorted({i for i, j in zip(ids, ids[1:]) if i == j})[:5]
        detail = f"ids used twice {repeated}" if repeated else f"ids from {ids[0]} to {ids[-1]}" if ids else "none"
        raise ValueError(f"{where}: expected the ids 0 .. {len(ids) - 1}, each once, got {detail}")


def checked_ids(ids: object, vocab_size: int) -> list[int]:
    """``ids`` as a list of ints if it is one sequence (a list, tuple or 1-D tensor) of integer ids in
    [0, vocab_size); else TypeError (a str, read as ids character by character; a float, which int()
    truncated; a bool, read as 0 or 1) or ValueError (a tensor that is not 1-D, an id out of range)."""
    if isinstance(ids, Tensor):
        if ids.dim() != 1:
            raise ValueError(f"ids must be one sequence of ids (1-D), got a tensor of shape {tuple(ids.shape)}")
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, abc.Iterable):
        raise TypeError(f"ids must be a sequence of int ids, got {type(ids).__name__} {ids!r:.40}")
    ids = list(ids)
    for position, value in enumerate(ids):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"ids[{position}] must be an int id, got {type(value).__name__} {value!r:.40}")
    ids = [int(value) for value in ids]
    if bad := [value for value in ids if not 0 <= value < vocab_size]:
        raise ValueError(f"ids must be in [0, {vocab_size}), got {bad[:5]}")
    return ids


def check_no_surrogates(texts: Sequence[str]) -> None:
    """ValueError naming the rows if any text holds UTF-16 surrogate code points (text decoded with
    ``errors="surrogateescape"``, or JSON's ``\\ud83d\\ude00`` read without joining): the tokenizers
    library refuses them with a message naming nothing."""
    if bad := [i for i, text in enumerate(texts) if _SURROGATE.search(text)]:
        raise ValueError(f"texts: expected Unicode text, got surrogate code points in texts {bad[:10]}")


_SURROGATE = re.compile("[\ud800-\udfff]")


def repaired_surrogates(text: str) -> str:
    """``text`` with its UTF-16 surrogate code points (JSON's ``\ud83d\ude00``, web text cut mid-emoji)
    made valid: each pair joined into the character it spells, a lone one made U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def checked_texts(texts: Sequence[str], name: str = "texts") -> list[str]:
    """``texts`` as a list; TypeError unless an ordered sequence of strings (a list, a tuple, a 1-D
    numpy array: a set or a dict's keys would give rows in hash order), ValueError if empty (the
    argument named ``name``)."""
    ordered = isinstance(texts, abc.Sequence) or (type(texts).__module__ == "numpy" and getattr(texts, "ndim", 0) == 1)
    if isinstance(texts, str) or not ordered:
        raise TypeError(f"{name} must be a sequence of str (a list or tuple, in row order), got {type(texts).__name__}")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"{name} must be a sequence of str, got {type(texts[bad]).__name__} at {name}[{bad}]")
    if len(texts) == 0:
        raise ValueError(f"{name} must not be empty")
    return list(texts)


def check_max_length(max_length: object, model_max_length: Optional[int] = None) -> int:
    """``max_length`` of a tokenizer call (``model_max_length`` when None); ValueError unless an int
    >= 2 (a start and an end token)."""
    if max_length is None:
        if model_max_length is None:
            raise ValueError("max_length must be given: the tokenizer has no model_max_length")
        max_length = model_max_length
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    return max_length


def check_model_max_length(model_max_length: object) -> Optional[int]:
    """A tokenizer's ``model_max_length``: None (no default) or an int >= 2; ValueError otherwise."""
    if model_max_length is not None and (
        isinstance(model_max_length, bool) or not isinstance(model_max_length, int) or model_max_length < 2
    ):
        raise ValueError(f"model_max_length must be an int >= 2 or None, got {model_max_length!r}")
    return model_max_length


# What transformers' ``clean_up_tokenization_spaces`` replaces, in its order: the space before . ? ! , and
# before English contractions, and both spaces around a lone apostrophe.
_SPACE_CLEAN_UPS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def clean_up_spaces(text: str) -> str:
    """``text`` as transformers' ``clean_up_tokenization_spaces`` leaves a decoded text: the space before
    . ? ! , n't 'm 's 've 're dropped and " ' " made "'", one replacement after the other in that order
    (``"don ' t , ok"`` gives ``"don't, ok"``; ``"it ' s"`` gives ``"it's"``)."""
    for spaced, joined in _SPACE_CLEAN_UPS:
        text = text.replace(spaced, joined)
    return text


def check_clean_up(value: object) -> bool:
    """A tokenizer's ``clean_up_tokenization_spaces``; TypeError unless True or False."""
    if not isinstance(value, bool):
        raise TypeError(f"clean_up_tokenization_spaces must be True or False, got {value!r}")
    return value


def config_clean_up(config: Mapping, path: Union[str, os.PathLike]) -> Optional[bool]:
    """The ``clean_up_tokenization_spaces`` a ``tokenizer_config.json`` (at ``path``) states: None when
    absent (the tokenizer's default); ValueError naming the key and the file unless true or false."""
    if "clean_up_tokenization_spaces" not in config:
        return None
    value = config["clean_up_tokenization_spaces"]
    if not isinstance(value, bool):
        raise ValueError(
            f"{TOKENIZER_CONFIG}: clean_up_tokenization_spaces must be true or false, got {value!r} (in {path})"
        )
    return value


def config_max_length(config: Mapping) -> Optional[int]:
    """The ``model_max_length`` a ``tokenizer_config.json`` states: None when absent or transformers'
    int(1e30) "no limit"; ValueError naming the key unless an int >= 2."""
    length = config.get("model_max_length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 2):
        raise ValueError(f"{TOKENIZER_CONFIG}: model_max_length must be an int >= 2, got {length!r}")
    return None if length is None or length >= _NO_LENGTH_LIMIT else length


def padded_rows(rows: list[list[int]], max_length: int, *, end_id: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """Id rows that start and end with their special tokens, cut to ``max_length`` (the end token
    kept) and padded to the longest: ids (B, L) and attention mask (B, L), 1 = token.

    Raises:
        ValueError: if ``max_length`` is not an int >= 2.
    """
    max_length = check_max_length(max_length)
    rows = [row if len(row) <= max_length else row[: max_length - 1] + [end_id] for row in rows]
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def read_tokenizer_config(path: Union[str, os.PathLike]) -> dict:
    """The :meth:`WordPieceTokenizer.from_vocab` settings a ``tokenizer_config.json`` states.

    A missing file gives ``BertTokenizerFast``'s defaults. ``model_max_length`` = int(1e30) (what
    transformers writes for "no limit") gives None. The special tokens are checked where transformers
    reads them: a ``special_tokens_map.json`` beside the file names them over it when the file has no
    ``added_tokens_decoder`` (see :func:`with_special_tokens_map`).

    Args:
        path (Union[str, os.PathLike]): the file (it need not exist).

    Returns:
        dict: ``lowercase``, ``strip_accents``, ``tokenize_chinese_chars``, ``model_max_length`` and
        ``clean_up_tokenization_spaces`` (None when not stated: the default of the file the tokenizer is
        read from, true for a ``vocab.txt`` and false for a ``tokenizer.json``, as transformers').

    Raises:
        ValueError: naming the key (and the file), if a file is not a JSON object, a value has the wrong
            type, or it names another tokenizer class or other special tokens.
    """
    path = Path(path)
    settings = dict(lowercase=True, strip_accents=None, tokenize_chinese_chars=True, model_max_length=None)
    config = {}
    if present_file(path, "a tokenizer config file"):
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:  # (nested too deeply)
            raise ValueError(f"{TOKENIZER_CONFIG}: {path} is not JSON ({error})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{TOKENIZER_CONFIG}: {path} must hold a JSON object, got {type(config).__name__}")
    keys = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
    config, where = with_special_tokens_map(config, path, keys)
    kind = config.get("tokenizer_class")
    if kind is not None and kind not in ("BertTokenizer", "BertTokenizerFast"):
        raise ValueError(
            f"{TOKENIZER_CONFIG}: tokenizer_class must be BertTokenizer or BertTokenizerFast, got {kind!r}"
        )
    for key, expected in zip(keys, SPECIAL_TOKENS):
        token = config_token(config, key)
        if token is not None and token != expected:
            raise ValueError(f"{where[key]}: {key} must be {expected} (BERT's special tokens), got {token!r}")
    for key, name in (("do_lower_case", "lowercase"), ("tokenize_chinese_chars", "tokenize_chinese_chars")):
        value = config.get(key, settings[name])
        if not isinstance(value, bool):
            raise ValueError(f"{TOKENIZER_CONFIG}: {key} must be true or false, got {value!r}")
        settings[name] = value
    strip = config.get("strip_accents")
    if strip is not None and not isinstance(strip, bool):
        raise ValueError(f"{TOKENIZER_CONFIG}: strip_accents must be true, false or null, got {strip!r}")
    settings["strip_accents"] = strip
    settings["model_max_length"] = config_max_length(config)
    settings["clean_up_tokenization_spaces"] = config_clean_up(config, path)
    return settings


def with_special_tokens_map(config: dict, path: Path, keys: Sequence[str]) -> tuple[dict, dict[str, str]]:
    """``config`` (the ``tokenizer_config.json`` at ``path``, {} if none) with the special tokens (``keys``)
    of the ``special_tokens_map.json`` beside it over its own, as transformers reads them where the config
    has no ``added_tokens_decoder`` (files written before transformers 4.34); and the file naming each key.
    ValueError naming the map if it is not a JSON object."""
    where = dict.fromkeys(keys, TOKENIZER_CONFIG)
    tokens = path.with_name("special_tokens_map.json")
    if "added_tokens_decoder" not in config and present_file(tokens, "a special tokens file"):
        named = {key: value for key, value in read_json_object(tokens).items() if key in keys}
        config, where = {**config, **named}, {**where, **dict.fromkeys(named, tokens.name)}
    return config, where


def config_token(config: Mapping, key: str) -> object:
    """A special token of a ``tokenizer_config.json`` (its ``key``): the string, the ``content`` of an
    ``{"content": ...}`` entry (transformers writes both forms), or whatever else is there (None if absent)."""
    token = config.get(key)
    return token.get("content") if isinstance(token, dict) else token


def source_texts(sources: Mapping[str, Dataset], *, limit: int, kinds: Sequence[str] = ("texts", "pairs")) -> list[str]:
    """Up to ``limit`` texts from each of the ``kinds`` of ``sources`` that exist, skipping unusable items.

    Sources with a ``caption(index)`` method (captions without decoding the image) are read with it.
    """
    texts = []
    for kind in kinds:
        source = sources.get(kind)
        for index in range(min(len(source), limit) if source is not None else 0):
            try:
                texts.append(source.caption(index) if hasattr(source, "caption") else source[index].text)
            except Exception:  # unusable items are counted by the training data, not here
                continue
    return [text for text in texts if text]


def read_vocabulary(vocab: Union[str, os.PathLike]) -> WordPieceTokenizer:
    """The tokenizer of a BERT ``vocab.txt``, or of a checkpoint directory (its ``tokenizer_config.json``
    settings too: :meth:`WordPieceTokenizer.from_directory`)."""
    return WordPieceTokenizer.from_directory(vocab) if Path(vocab).is_dir() else WordPieceTokenizer.from_vocab(vocab)


def run_vocabulary(
    vocab: Optional[Union[str, os.PathLike]],
    texts: Callable[[], list[str]],
    run_dir: Union[str, os.PathLike],
    *,
    vocab_size: int,
    resumed: bool,
) -> WordPieceTokenizer:
    """A run's tokenizer, nothing written: ``vocab`` if given; else the vocabulary a resumed run learnt
    (``run_dir/vocab.txt``); else one learnt now from ``texts()`` (deterministic: under
    torch.distributed, every rank that is given the same texts, e.g. rank 0's, learns the same one). The
    run writes it with its config once every check has passed (``fit``'s ``run_files``), so that a run
    refused before leaves no vocabulary behind.

    Args:
        vocab (Optional[Union[str, os.PathLike]]): a BERT ``vocab.txt``, or a checkpoint directory
            (read with :meth:`WordPieceTokenizer.from_directory`: its ``tokenizer_config.json`` too).
        texts (Callable[[], list[str]]): the texts to learn from (called only when needed).
        run_dir (Union[str, os.PathLike]): the run's output directory (where a resumed run's ``vocab.txt`` is).
        vocab_size (int): size of a learnt vocabulary.
        resumed (bool): whether the run resumes (then a saved vocabulary is reused).

    Returns:
        WordPieceTokenizer: the tokenizer.

    Raises:
        ValueError: if there is no ``vocab`` and no text to learn from.
    """
    if vocab is not None:
        return read_vocabulary(vocab)
    if resumed and (Path(run_dir) / "vocab.txt").is_file():
        return WordPieceTokenizer.from_directory(run_dir)
    learnt = texts()
    if not learnt:
        raise ValueError("vocab: none given and the data holds no text to learn a vocabulary from")
    return WordPieceTokenizer.train(learnt, vocab_size=vocab_size)
