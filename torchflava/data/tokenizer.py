"""BERT WordPiece tokenisation on the ``tokenizers`` library: load a ``vocab.txt`` or train one."""

from collections import Counter
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
import torch
from torch import Tensor
import torch.distributed as dist
from torch.utils.data import Dataset

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class WordPieceTokenizer:
    """Lower-casing BERT WordPiece tokenizer producing ``[CLS] text [SEP]`` id sequences.

    Build it with :meth:`from_vocab` (a BERT ``vocab.txt``, e.g. from a FLAVA checkpoint
    directory) or :meth:`train` (a new vocabulary learnt from the run's text).

    Args:
        tokenizer (Tokenizer): a ``tokenizers`` WordPiece tokenizer whose vocabulary holds the
            five BERT special tokens.

    Raises:
        ValueError: if a special token is missing from the vocabulary.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        vocab = tokenizer.get_vocab()
        missing = [token for token in SPECIAL_TOKENS if token not in vocab]
        if missing:
            raise ValueError(f"the vocabulary lacks the special token(s) {missing}")
        tokenizer.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocabulary: marks them special
        self._tokenizer = tokenizer
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (vocab[t] for t in SPECIAL_TOKENS)
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)]
        )

    @property
    def vocab_size(self) -> int:
        """Number of ids (largest id + 1)."""
        return max(self._tokenizer.get_vocab().values()) + 1

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids that masking must never select: PAD, CLS, SEP, UNK, MASK."""
        return (self.pad_id, self.cls_id, self.sep_id, self.unk_id, self.mask_id)

    @staticmethod
    def _bare(vocab: dict[str, int]) -> Tokenizer:
        tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        return tokenizer

    @classmethod
    def from_vocab(cls, path: Union[str, os.PathLike]) -> "WordPieceTokenizer":
        """Load a BERT ``vocab.txt`` (one token per line, the line number is the id).

        Args:
            path (Union[str, os.PathLike]): the file, or a directory holding ``vocab.txt``.

        Returns:
            WordPieceTokenizer: the tokenizer.

        Raises:
            FileNotFoundError: if there is no such file.
            ValueError: if the vocabulary lacks a special token or repeats a token.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "vocab.txt"
        if not path.is_file():
            raise FileNotFoundError(f"path: no vocab.txt at {path}")
        tokens = path.read_text(encoding="utf-8").splitlines()
        vocab = {token: i for i, token in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise ValueError(f"path: {path} repeats tokens ({len(tokens) - len(vocab)} duplicates)")
        return cls(cls._bare(vocab))

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
            ValueError: if ``vocab_size`` cannot hold the special tokens and the alphabet, or
                ``min_frequency`` < 1.
        """
        if not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must be an int > {len(SPECIAL_TOKENS)}, got {vocab_size!r}")
        if not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}")
        bare = cls._bare({token: i for i, token in enumerate(SPECIAL_TOKENS)})
        words: Counter = Counter()
        for text in texts:
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
        return cls(cls._bare({token: i for i, token in enumerate(vocab)}))

    def save(self, directory: Union[str, os.PathLike]) -> Path:
        """Write ``vocab.txt`` into ``directory`` (atomically) and return its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        by_id = sorted(self._tokenizer.get_vocab().items(), key=lambda item: item[1])
        path = directory / "vocab.txt"
        tmp = directory / f".vocab.txt.tmp{os.getpid()}"
        tmp.write_text("".join(f"{token}\n" for token, _ in by_id), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def __call__(self, texts: Sequence[str], *, max_length: int) -> tuple[Tensor, Tensor]:
        """Tokenise ``texts``, truncate to ``max_length`` and pad to the longest one.

        Args:
            texts (Sequence[str]): B strings.
            max_length (int): most ids per row, including ``[CLS]`` and ``[SEP]`` (>= 2).

        Returns:
            tuple[Tensor, Tensor]: ids (B, L) long and attention mask (B, L) long (1 = token), with
            L the longest row (dynamic padding).

        Raises:
            TypeError: if ``texts`` is not a sequence of strings.
            ValueError: if ``texts`` is empty or ``max_length`` < 2.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of str")
        if len(texts) == 0:
            raise ValueError("texts must not be empty")
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        rows = [encoding.ids for encoding in self._tokenizer.encode_batch(list(texts))]
        rows = [row if len(row) <= max_length else row[: max_length - 1] + [self.sep_id] for row in rows]
        length = max(len(row) for row in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask

    def decode(self, ids: Sequence[int]) -> str:
        """Text of one id sequence, special tokens dropped."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)


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


def run_vocabulary(
    vocab: Optional[Union[str, os.PathLike]],
    texts: Callable[[], list[str]],
    run_dir: Union[str, os.PathLike],
    *,
    vocab_size: int,
    resumed: bool,
) -> WordPieceTokenizer:
    """A run's tokenizer: ``vocab`` if given, else the vocabulary rank 0 learns into ``run_dir``.

    A resumed run reloads the vocabulary it learnt. Collective under torch.distributed: every rank
    calls it and every rank gets the same vocabulary.

    Args:
        vocab (Optional[Union[str, os.PathLike]]): a BERT ``vocab.txt`` (or a directory holding one).
        texts (Callable[[], list[str]]): the texts to learn from (called on rank 0 only, when needed).
        run_dir (Union[str, os.PathLike]): the run's output directory (``vocab.txt`` goes there).
        vocab_size (int): size of a learnt vocabulary.
        resumed (bool): whether the run resumes (then a saved vocabulary is reused).

    Returns:
        WordPieceTokenizer: the tokenizer.

    Raises:
        ValueError: if there is no ``vocab`` and no text to learn from.
    """
    if vocab is not None:
        return WordPieceTokenizer.from_vocab(vocab)
    saved = Path(run_dir) / "vocab.txt"
    if not (resumed and saved.is_file()):
        if not dist.is_initialized() or dist.get_rank() == 0:
            learnt = texts()
            if not learnt:
                raise ValueError("vocab: none given and the data holds no text to learn a vocabulary from")
            WordPieceTokenizer.train(learnt, vocab_size=vocab_size).save(saved.parent)
        if dist.is_initialized():
            dist.barrier()
    return WordPieceTokenizer.from_vocab(saved)
