"""WordPiece tokenizer: exact ids from a hand-written vocabulary, training, save/load, padding, errors."""

import json
from pathlib import Path

import pytest
import torch

from torchflava.data.shapes import ShapesWorld
from torchflava.data.tokenizer import SPECIAL_TOKENS, WordPieceTokenizer

# A hand-written vocabulary: the line number is the id.
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "red",
    "circle",
    "large",
    "in",
    "the",
    "middle",
    ",",
    "##s",
    "blue",
]
ID = {token: i for i, token in enumerate(VOCAB)}


def write_vocab(path: Path, tokens) -> Path:
    path.write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
    return path


@pytest.fixture
def hand(tmp_path) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_vocab(write_vocab(tmp_path / "vocab.txt", VOCAB))


@pytest.fixture(scope="module")
def captions() -> list[str]:
    world = ShapesWorld("texts", 300, seed=0)
    return [world.caption(i) for i in range(300)]


@pytest.fixture(scope="module")
def trained(captions) -> WordPieceTokenizer:
    return WordPieceTokenizer.train(captions, vocab_size=200)


def test_exact_ids_padding_and_mask(hand):
    ids, mask = hand(["a red circle", "A large BLUE circles in the middle", "zebra , red"], max_length=20)
    cls, sep = ID["[CLS]"], ID["[SEP]"]
    assert ids.dtype == mask.dtype == torch.long
    assert ids.tolist() == [
        [cls, ID["a"], ID["red"], ID["circle"], sep, 0, 0, 0, 0, 0],
        [cls, ID["a"], ID["large"], ID["blue"], ID["circle"], ID["##s"], ID["in"], ID["the"], ID["middle"], sep],
        [cls, ID["[UNK]"], ID[","], ID["red"], sep, 0, 0, 0, 0, 0],  # lower-cased; unknown word -> [UNK]
    ]
    assert mask.tolist() == [[1] * 5 + [0] * 5, [1] * 10, [1] * 5 + [0] * 5]
    assert hand.vocab_size == len(VOCAB)
    assert (hand.pad_id, hand.unk_id, hand.cls_id, hand.sep_id, hand.mask_id) == (0, 1, 2, 3, 4)
    assert hand.special_ids == (0, 2, 3, 1, 4)


def test_dynamic_padding_is_to_the_longest_row_not_max_length(hand):
    ids, mask = hand(["red", "a red"], max_length=50)
    assert ids.shape == mask.shape == (2, 4)
    assert ids.tolist() == [[2, ID["red"], 3, 0], [2, ID["a"], ID["red"], 3]]
    one, one_mask = hand(["red"], max_length=50)
    assert one.tolist() == [[2, ID["red"], 3]] and one_mask.tolist() == [[1, 1, 1]]


def test_truncation_keeps_sep_last(hand):
    ids, mask = hand(["a large red circle in the middle", "red"], max_length=4)
    assert ids.tolist() == [[2, ID["a"], ID["large"], 3], [2, ID["red"], 3, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    ids, _ = hand(["a large red circle"], max_length=2)
    assert ids.tolist() == [[2, 3]]
    ids, _ = hand(["a large red"], max_length=5)  # exactly max_length: untouched
    assert ids.tolist() == [[2, ID["a"], ID["large"], ID["red"], 3]]


def test_decode_merges_word_pieces(hand):
    assert hand.decode([ID["a"], ID["blue"], ID["circle"], ID["##s"], ID[","], ID["red"]]) == "a blue circles, red"


def test_decode_drops_special_tokens(hand):
    assert hand.decode([2, ID["a"], ID["blue"], ID["circle"], ID["##s"], 3, 0, 0]) == "a blue circles"


def test_train_puts_special_tokens_first(trained, captions):
    vocab = trained._tokenizer.get_vocab()
    assert [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (trained.pad_id, trained.unk_id, trained.cls_id, trained.sep_id, trained.mask_id) == (0, 1, 2, 3, 4)
    assert trained.vocab_size == len(vocab) <= 200
    for word in ("circle", "triangle", "purple", "middle", "large"):
        assert word in vocab  # frequent words become whole tokens
    ids, mask = trained(captions[:50], max_length=64)
    lengths = mask.sum(dim=1)
    assert int(lengths.max()) == ids.shape[1]
    rows = torch.arange(50)
    assert bool((ids[:, 0] == 2).all()) and bool((ids[rows, lengths - 1] == 3).all())
    assert bool((ids[mask == 0] == 0).all())
    # Only the ends are special: no [UNK] in text the vocabulary was learnt from.
    inner = ids[mask.bool()]
    assert int((inner == 2).sum()) == int((inner == 3).sum()) == 50 and not bool((inner == 1).any())
    # The mask is 1 then 0 in every row.
    assert torch.equal(mask, (torch.arange(ids.shape[1]) < lengths[:, None]).long())
    # Every word of the training text is one token (the vocabulary has room for all of them).
    for row, n, text in zip(ids.tolist(), lengths.tolist(), captions[:50]):
        assert n == len(text.replace(",", " ,").split()) + 2
        assert trained.decode(row[1 : n - 1]) == text


def test_train_is_deterministic_and_order_free(trained, captions):
    vocab = trained._tokenizer.get_vocab()
    assert WordPieceTokenizer.train(captions, vocab_size=200)._tokenizer.get_vocab() == vocab
    assert WordPieceTokenizer.train(list(reversed(captions)), vocab_size=200)._tokenizer.get_vocab() == vocab
    other = WordPieceTokenizer.train(captions[:20] + ["zebra zebra zebra"], vocab_size=200)._tokenizer.get_vocab()
    assert other != vocab and "zebra" in other


def test_words_left_out_are_spelt_in_pieces(captions):
    alphabet = sorted({c for text in captions for c in text.lower() if c != " "})
    small = WordPieceTokenizer.train(captions, vocab_size=5 + 2 * len(alphabet) + 3)
    vocab = small._tokenizer.get_vocab()
    assert small.vocab_size == len(vocab) == 5 + 2 * len(alphabet) + 3
    assert all(c in vocab and f"##{c}" in vocab for c in alphabet)
    ids, mask = small(captions[:30], max_length=200)
    assert not bool((ids == small.unk_id).any())  # any word of the text can be spelt
    lengths = mask.sum(dim=1)
    assert bool((lengths > torch.tensor([len(t.split()) + 2 for t in captions[:30]])).all())
    for row, n, text in zip(ids.tolist(), lengths.tolist(), captions[:30]):
        assert small.decode(row[1 : n - 1]) == text


def test_train_refuses_a_vocab_size_below_the_alphabet(captions):
    with pytest.raises(ValueError, match="vocab_size must be at least"):
        WordPieceTokenizer.train(captions, vocab_size=20)


def test_save_then_from_vocab_gives_identical_ids(trained, captions, tmp_path):
    path = trained.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / "vocab.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[:5] == list(SPECIAL_TOKENS) and len(lines) == trained.vocab_size
    # no temporary file left; the settings go beside the vocabulary
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["tokenizer_config.json", "vocab.txt"]
    assert json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text()) == {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
    }
    texts = captions[:40] + ["a zebra in the middle!", "the YELLOW Diamond"]
    expected = trained(texts, max_length=12)
    for source in (path, tmp_path / "tok", str(path)):  # the file, its directory, a str
        loaded = WordPieceTokenizer.from_vocab(source)
        got = loaded(texts, max_length=12)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        assert loaded.vocab_size == trained.vocab_size and loaded.special_ids == trained.special_ids


def test_from_vocab_with_special_tokens_elsewhere(tmp_path):
    tokens = ["red", "[SEP]", "[MASK]", "circle", "[CLS]", "[UNK]", "[PAD]"]
    tok = WordPieceTokenizer.from_vocab(write_vocab(tmp_path / "vocab.txt", tokens))
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (6, 5, 4, 1, 2)
    ids, mask = tok(["red circle", "red"], max_length=8)
    assert ids.tolist() == [[4, 0, 3, 1], [4, 0, 1, 6]]  # padding uses the [PAD] id, 6
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_from_vocab_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        WordPieceTokenizer.from_vocab(write_vocab(tmp_path / "a.txt", VOCAB[:4] + VOCAB[5:]))
    with pytest.raises(ValueError, match=r"path: .*1 duplicates"):
        WordPieceTokenizer.from_vocab(write_vocab(tmp_path / "b.txt", VOCAB + ["red"]))
    with pytest.raises(FileNotFoundError, match="path"):
        WordPieceTokenizer.from_vocab(tmp_path / "missing.txt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        WordPieceTokenizer.from_vocab(tmp_path / "empty_dir")


@pytest.mark.parametrize(
    "texts, max_length, error, match",
    [
        ([], 8, ValueError, "texts"),
        (["a", 3], 8, TypeError, "texts"),
        ([None], 8, TypeError, "texts"),
        ("a red circle", 8, TypeError, "texts"),
        (["a"], 1, ValueError, "max_length"),
        (["a"], 0, ValueError, "max_length"),
        (["a"], 4.0, ValueError, "max_length"),
    ],
)
def test_call_errors(hand, texts, max_length, error, match):
    with pytest.raises(error, match=match):
        hand(texts, max_length=max_length)


def test_train_errors():
    for bad in (5, 0, 100.0):
        with pytest.raises(ValueError, match="vocab_size"):
            WordPieceTokenizer.train(["a red circle"], vocab_size=bad)
