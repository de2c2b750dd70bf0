"""WordPiece tokenizer: exact ids from a hand-written vocabulary, training, save/load, padding, errors, and ids
equal to transformers' BertTokenizerFast's (cased and uncased, vocab.txt or tokenizer.json, tokenizer_config.json)."""

import json
from pathlib import Path
import sys

import pytest
from tokenizers import normalizers, pre_tokenizers
import torch
from transformers import BertTokenizerFast

from tests.helpers import VARIED_TEXTS
from torchflava.data.shapes import ShapesWorld
from torchflava.data.tokenizer import SPECIAL_TOKENS, WordPieceTokenizer, read_tokenizer_config, run_vocabulary

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


def bert_tokenizer_json(tmp_path: Path, tokens) -> dict:
    """The JSON of the tokenizer.json transformers' BertTokenizerFast writes for a vocabulary of ``tokens``."""
    BertTokenizerFast(vocab_file=str(write_vocab(tmp_path / "for_json.txt", tokens))).save_pretrained(tmp_path / "json")
    return json.loads((tmp_path / "json" / "tokenizer.json").read_text())


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


@pytest.mark.parametrize(
    "ids, error, message",
    [
        ([5.9], TypeError, r"ids\[0\] must be an int id, got float 5.9"),  # int() read 5
        ([ID["a"], True], TypeError, r"ids\[1\] must be an int id, got bool True"),  # read as id 1
        ("56", TypeError, "ids must be a sequence of int ids, got str '56'"),  # read character by character
        (
            torch.tensor([[5, 6]]),
            ValueError,
            r"ids must be one sequence of ids \(1-D\), got a tensor of shape \(1, 2\)",
        ),
        (torch.tensor(5), ValueError, r"ids must be one sequence of ids \(1-D\), got a tensor of shape \(\)"),
        (torch.tensor([5.0]), TypeError, r"ids\[0\] must be an int id, got float 5.0"),
        (5, TypeError, "ids must be a sequence of int ids, got int 5"),
        ([-1, 15], ValueError, r"ids must be in \[0, 15\), got \[-1, 15\]"),
    ],
)
def test_decode_refuses_what_is_not_one_sequence_of_ids(hand, ids, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        hand.decode(ids)
    assert (
        hand.decode(torch.tensor([ID["red"], ID["circle"]])) == hand.decode((ID["red"], ID["circle"])) == "red circle"
    )


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
        "clean_up_tokenization_spaces": True,
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
    with pytest.raises(ValueError, match=r"path: .*repeats tokens \(1\)"):
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
    with pytest.raises(ValueError, match="vocab_size"):
        WordPieceTokenizer.train(["a red circle"], vocab_size=True)
    with pytest.raises(ValueError, match="min_frequency"):
        WordPieceTokenizer.train(["a red circle"], min_frequency=0)
    with pytest.raises(TypeError, match="texts must be an iterable of strings .* got one str"):
        WordPieceTokenizer.train("a red circle")  # would learn one "text" per character
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got int"):
        WordPieceTokenizer.train(["a red circle", 7])


# ------------------------------------------------------------------ parity with transformers' BertTokenizerFast


def _texts() -> list[str]:
    """VARIED_TEXTS in several casings, 6 x 38 = 228 strings."""
    return [
        form
        for text in VARIED_TEXTS
        for form in (text, text.upper(), text.lower(), text.title(), text.swapcase(), text + " .")
    ]


def _vocabulary(lowercase: bool) -> list[str]:
    """Special tokens, the characters of half the texts (alone and as ## pieces) and the words of a
    third of them, normalised the cased or uncased BERT way: the rest falls to pieces or [UNK]."""
    normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    words = [
        word
        for text in VARIED_TEXTS
        for word, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(normalizer.normalize_str(text))
    ]
    letters = sorted({c for text in VARIED_TEXTS[::2] for c in normalizer.normalize_str(text) if not c.isspace()})
    tokens = list(SPECIAL_TOKENS) + letters + [f"##{c}" for c in letters] + sorted(set(words[::3]))
    return list(dict.fromkeys(tokens))


SETTINGS = [  # (vocabulary lower-cased, do_lower_case, strip_accents, tokenize_chinese_chars)
    (True, True, None, True),
    (False, False, None, True),
    (True, True, False, True),
    (False, False, True, True),
    (True, True, None, False),
]


@pytest.mark.parametrize("uncased, lowercase, strip_accents, chinese", SETTINGS)
def test_ids_equal_bert_tokenizer_fast(tmp_path, uncased, lowercase, strip_accents, chinese):
    vocab = write_vocab(tmp_path / "vocab.txt", _vocabulary(uncased))
    settings = dict(do_lower_case=lowercase, strip_accents=strip_accents, tokenize_chinese_chars=chinese)
    hf = BertTokenizerFast(vocab_file=str(vocab), **settings)
    ours = WordPieceTokenizer.from_vocab(
        vocab, lowercase=lowercase, strip_accents=strip_accents, tokenize_chinese_chars=chinese
    )
    texts = _texts()
    expected = hf(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    ids, mask = ours(texts, max_length=512)
    assert len(texts) == 228
    assert bool((expected["input_ids"] == hf.unk_token_id).any())  # some text is out of vocabulary
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])
    short = hf(texts, padding=True, truncation=True, max_length=6, return_tensors="pt")["input_ids"]
    assert torch.equal(ours(texts, max_length=6)[0], short)  # truncation keeps [SEP] last, as transformers does
    # The same through the directory transformers writes: tokenizer_config.json read, vocab.txt or tokenizer.json.
    hf.save_pretrained(tmp_path / "saved")
    for only_json in (False, True):
        if only_json:
            (tmp_path / "saved" / "vocab.txt").unlink()
        loaded = WordPieceTokenizer.from_directory(tmp_path / "saved")
        assert (loaded.lowercase, loaded.strip_accents, loaded.tokenize_chinese_chars) == (
            lowercase,
            strip_accents,
            chinese,
        )
        assert torch.equal(loaded(texts, max_length=512)[0], expected["input_ids"])


def test_cased_and_uncased_reading_of_one_vocabulary(tmp_path):
    vocab = write_vocab(tmp_path / "vocab.txt", list(SPECIAL_TOKENS) + ["Photo", "photo", "café", "cafe"])
    cased = WordPieceTokenizer.from_vocab(vocab, lowercase=False)
    uncased = WordPieceTokenizer.from_vocab(vocab)
    assert cased(["Photo photo café Café"], max_length=8)[0].tolist() == [[2, 5, 6, 7, 1, 3]]
    assert uncased(["Photo photo café Café"], max_length=8)[0].tolist() == [[2, 6, 6, 8, 8, 3]]  # accents stripped
    keep_accents = WordPieceTokenizer.from_vocab(vocab, strip_accents=False)
    assert keep_accents(["Photo café Café"], max_length=8)[0].tolist() == [[2, 6, 7, 7, 3]]


def test_model_max_length_is_the_default_max_length(tmp_path):
    vocab = write_vocab(tmp_path / "vocab.txt", VOCAB)
    tok = WordPieceTokenizer.from_vocab(vocab, model_max_length=4)
    assert tok(["a large red circle"])[0].tolist() == [[2, ID["a"], ID["large"], 3]]
    assert tok(["a large red circle"], max_length=20)[0].shape == (1, 6)  # an explicit max_length wins
    with pytest.raises(ValueError, match="max_length must be given"):
        WordPieceTokenizer.from_vocab(vocab)(["a red circle"])
    with pytest.raises(ValueError, match="model_max_length must be an int >= 2 or None, got 1"):
        WordPieceTokenizer.from_vocab(vocab, model_max_length=1)


def test_tokenizer_config_is_read_and_written(tmp_path):
    write_vocab(tmp_path / "vocab.txt", VOCAB)
    config = tmp_path / "tokenizer_config.json"
    assert read_tokenizer_config(config) == dict(
        lowercase=True,
        strip_accents=None,
        tokenize_chinese_chars=True,
        model_max_length=None,
        clean_up_tokenization_spaces=None,  # the default of the file read: vocab.txt or tokenizer.json
    )  # no file: BertTokenizerFast's defaults
    config.write_text(json.dumps({"do_lower_case": False, "model_max_length": 5, "strip_accents": True}))
    tok = WordPieceTokenizer.from_directory(tmp_path)
    assert (tok.lowercase, tok.strip_accents, tok.model_max_length) == (False, True, 5)
    assert tok(["a RED circle in the middle"])[0].tolist() == [[2, ID["a"], 1, ID["circle"], 3]]  # RED is unknown
    tok.save(tmp_path / "again")
    again = WordPieceTokenizer.from_directory(tmp_path / "again")
    assert (again.lowercase, again.strip_accents, again.model_max_length) == (False, True, 5)
    config.write_text(json.dumps({"model_max_length": int(1e30)}))  # transformers' "no limit"
    assert WordPieceTokenizer.from_directory(tmp_path).model_max_length is None


@pytest.mark.parametrize(
    "config, match",
    [
        ({"do_lower_case": "no"}, "tokenizer_config.json: do_lower_case must be true or false, got 'no'"),
        ({"tokenize_chinese_chars": 1}, "tokenizer_config.json: tokenize_chinese_chars must be true or false, got 1"),
        ({"strip_accents": "yes"}, "tokenizer_config.json: strip_accents must be true, false or null, got 'yes'"),
        ({"model_max_length": 1}, "tokenizer_config.json: model_max_length must be an int >= 2, got 1"),
        ({"model_max_length": 64.0}, "tokenizer_config.json: model_max_length must be an int >= 2, got 64.0"),
        ({"tokenizer_class": "CLIPTokenizer"}, "tokenizer_class must be BertTokenizer or BertTokenizerFast"),
        (
            {"clean_up_tokenization_spaces": "yes"},
            r"tokenizer_config.json: clean_up_tokenization_spaces must be true or false, got 'yes' \(in .*tokenizer_config",
        ),
        ({"clean_up_tokenization_spaces": 1}, "clean_up_tokenization_spaces must be true or false, got 1"),
        ({"clean_up_tokenization_spaces": None}, "clean_up_tokenization_spaces must be true or false, got None"),
        ({"unk_token": "<unk>"}, r"unk_token must be \[UNK\] \(BERT's special tokens\), got '<unk>'"),
        ({"mask_token": {"content": "<mask>"}}, r"mask_token must be \[MASK\]"),
        ([1, 2], "must hold a JSON object, got list"),
    ],
)
def test_tokenizer_config_errors(tmp_path, config, match):
    write_vocab(tmp_path / "vocab.txt", VOCAB)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        WordPieceTokenizer.from_directory(tmp_path)


# Texts whose decoding transformers cleans up (clean_up_tokenization_spaces): spaces before punctuation and
# contractions, a lone apostrophe's spaces; its replacements run one after the other, left to right.
CLEAN_UP_TEXTS = [
    "hello, world! don't a.",
    "it's we've they're I'm can't ...",
    "rock'n'roll o'clock",
    "a ' ' b",
    "x '' y 's 'S",
    "U.S.A. e.g. ?! ,",
    "do not n't N'T",
]
CLEAN_UP_VOCAB = (
    list(SPECIAL_TOKENS)
    + list(dict.fromkeys("helowrdntaicsyvmgbuxNTSUAE,.!?'"))
    + [
        "hello",
        "world",
        "don",
        "it",
        "we",
        "ve",
        "they",
        "re",
        "can",
        "rock",
        "roll",
        "clock",
        "do",
        "not",
    ]
)
# What BertTokenizerFast.decode(ids, skip_special_tokens=True) gives for CLEAN_UP_TEXTS on the uncased
# vocabulary above, without and with the clean-up (transformers 4.57).
DECODED = [
    ("hello, world! don ' t a.", "hello, world! don't a."),
    ("it ' s we ' ve they ' re i ' m can ' t...", "it's we've they're i'm can't..."),
    ("rock ' n ' roll o ' clock", "rock'n'roll o'clock"),
    ("a ' ' b", "a'' b"),
    ("x ' ' y ' s ' s", "x'' y's's"),
    ("u. s. a. e. g.?!,", "u. s. a. e. g.?!,"),
    ("do not n ' t n ' t", "do notn'tn't"),
]


@pytest.mark.parametrize("setting", ["absent", True, False])
@pytest.mark.parametrize("source", ["vocab.txt", "tokenizer.json", "both"])
def test_decode_equals_bert_tokenizer_fast_with_its_clean_up_setting(tmp_path, source, setting):
    """Found by a differential fuzz: decode never made transformers' clean-up of spaces ("don ' t" for
    "don't"), which BertTokenizerFast makes by default for a vocab.txt (not for a tokenizer.json without
    the key) and as tokenizer_config.json's clean_up_tokenization_spaces says; our save kept it neither."""
    vocab = write_vocab(tmp_path / "vocab.txt", CLEAN_UP_VOCAB)
    directory = tmp_path / "checkpoint"
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(directory)
    if source == "vocab.txt":
        (directory / "tokenizer.json").unlink()
    elif source == "tokenizer.json":
        (directory / "vocab.txt").unlink()
    config = json.loads((directory / "tokenizer_config.json").read_text())
    del config["clean_up_tokenization_spaces"]
    if setting != "absent":
        config["clean_up_tokenization_spaces"] = setting
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    hf = BertTokenizerFast.from_pretrained(directory)
    ours = WordPieceTokenizer.from_directory(directory)
    clean_up = source == "vocab.txt" if setting == "absent" else setting  # transformers' default by file read
    assert hf.clean_up_tokenization_spaces is ours.clean_up_tokenization_spaces is clean_up
    for text, decoded in zip(CLEAN_UP_TEXTS, DECODED):
        ids = hf(text)["input_ids"]
        assert ours([text], max_length=64)[0][0].tolist() == ids
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True) == decoded[clean_up], text
    # our save states the setting: it and transformers read it back
    ours.save(tmp_path / "ours")
    again, hf_again = (
        WordPieceTokenizer.from_directory(tmp_path / "ours"),
        BertTokenizerFast.from_pretrained(tmp_path / "ours"),
    )
    assert again.clean_up_tokenization_spaces is hf_again.clean_up_tokenization_spaces is clean_up
    for text, decoded in zip(CLEAN_UP_TEXTS, DECODED):
        ids = hf(text)["input_ids"]
        assert again.decode(ids) == hf_again.decode(ids, skip_special_tokens=True) == decoded[clean_up]


def test_clean_up_defaults_of_the_constructors_are_transformers(tmp_path):
    vocab = write_vocab(tmp_path / "vocab.txt", CLEAN_UP_VOCAB)
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(tmp_path / "saved")
    ids = BertTokenizerFast(vocab_file=str(vocab))("don't")["input_ids"]
    from_json = WordPieceTokenizer.from_tokenizer_json(tmp_path / "saved" / "tokenizer.json")
    hf_json = BertTokenizerFast(tokenizer_file=str(tmp_path / "saved" / "tokenizer.json"))
    assert from_json.decode(ids) == hf_json.decode(ids, skip_special_tokens=True) == "don ' t"
    assert WordPieceTokenizer.from_vocab(vocab).decode(ids) == "don't"
    assert WordPieceTokenizer.from_vocab(vocab, clean_up_tokenization_spaces=False).decode(ids) == "don ' t"
    with pytest.raises(TypeError, match="clean_up_tokenization_spaces must be True or False, got 'yes'"):
        WordPieceTokenizer.from_vocab(vocab, clean_up_tokenization_spaces="yes")


@pytest.mark.parametrize(
    "config, refused",
    [({"do_lower_case": True}, True), ({}, True), (None, True), ({"added_tokens_decoder": {}}, False)],
    ids=["config", "empty-config", "no-config", "config-with-added-tokens-decoder"],
)
def test_special_tokens_of_special_tokens_map_json_are_read_as_transformers_reads_them(tmp_path, config, refused):
    """Found by a differential review against BertTokenizerFast: where tokenizer_config.json has no
    added_tokens_decoder, transformers reads the special tokens of special_tokens_map.json over it ("a <mask>"
    gave [2, 5, 7, 3] there, with the mask token 7, and [2, 5, 1, 1, 1, 3] here, with [MASK]'s id 4): refused
    as the config's own are."""
    write_vocab(tmp_path / "vocab.txt", VOCAB + ["<mask>"])
    if config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"mask_token": "<mask>"}))
    assert BertTokenizerFast.from_pretrained(tmp_path).mask_token == ("<mask>" if refused else "[MASK]")
    if refused:
        with pytest.raises(ValueError, match=r"special_tokens_map.json: mask_token must be \[MASK\] \(BERT's"):
            WordPieceTokenizer.from_directory(tmp_path)
    else:
        assert WordPieceTokenizer.from_directory(tmp_path).mask_id == ID["[MASK]"]
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"mask_token": "[MASK]", "pad_token": "[PAD]"}))
    assert WordPieceTokenizer.from_directory(tmp_path)(["a red"], max_length=8)[0].tolist() == [[2, 5, 6, 3]]


def test_tokenizer_json_errors(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not a tokenizer.json object"):
        WordPieceTokenizer.from_tokenizer_json(path)
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": {}}}))
    with pytest.raises(ValueError, match="model.type must be WordPiece, got 'BPE'"):
        WordPieceTokenizer.from_tokenizer_json(path)
    path.write_text(json.dumps({"model": {"type": "WordPiece", "unk_token": "<unk>", "vocab": {}}}))
    with pytest.raises(ValueError, match="unk_token \\[UNK\\]"):
        WordPieceTokenizer.from_tokenizer_json(path)
    with pytest.raises(FileNotFoundError, match="neither vocab.txt nor tokenizer.json"):
        WordPieceTokenizer.from_directory(tmp_path / "nothing")
    specials = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    for vocab, match in (
        ({**specials, "red": 9}, "ids 0 .. 5, each once"),  # a gap: save() would renumber it
        ({**specials, "red": 4}, "ids 0 .. 5, each once"),  # a repeat
        ({**specials, "red": True}, "int ids"),
        ({**specials, "red": "5"}, "int ids"),
    ):
        path.write_text(json.dumps({"model": {"type": "WordPiece", "vocab": vocab}}))
        with pytest.raises(ValueError, match=match):
            WordPieceTokenizer.from_tokenizer_json(path)
    path.write_text(json.dumps({"model": {"type": "WordPiece", "vocab": specials, "max_input_chars_per_word": None}}))
    with pytest.raises(ValueError, match=r"max_input_chars_per_word must be an int in \[1, \d+\], got None"):
        WordPieceTokenizer.from_tokenizer_json(path)


@pytest.mark.parametrize("chars, accepted", [(0, False), (10**20, False), (sys.maxsize, True), (1, True)])
def test_max_input_chars_per_word_is_bounded(tmp_path, chars, accepted):
    """10**20 raised the library's OverflowError "int too big to convert", naming nothing."""
    path = tmp_path / "tokenizer.json"
    spec = bert_tokenizer_json(tmp_path, [*SPECIAL_TOKENS, "red", "##d"])
    path.write_text(json.dumps({**spec, "model": {**spec["model"], "max_input_chars_per_word": chars}}))
    if accepted:  # a word longer than the limit is [UNK]
        ids, _ = WordPieceTokenizer.from_tokenizer_json(path)(["red redd"], max_length=8)
        assert ids.tolist() == ([[2, 1, 1, 3]] if chars == 1 else [[2, 5, 5, 6, 3]])
    else:
        with pytest.raises(
            ValueError,
            match=rf"^path: {path} model.max_input_chars_per_word must be an int in \[1, {sys.maxsize}\], got {chars}$",
        ):
            WordPieceTokenizer.from_tokenizer_json(path)


def test_vocab_lines_split_at_newlines_only(tmp_path):
    tokens = [*VOCAB, "a\x0cb", "x\u2028y", "hello"]  # characters str.splitlines() would also split at
    path = tmp_path / "vocab.txt"
    path.write_bytes(("\r\n".join(tokens) + "\r\n").encode("utf-8"))  # CRLF endings too
    tok = WordPieceTokenizer.from_vocab(path)
    assert tok.vocab_size == len(tokens)
    assert tok(["hello"], max_length=4)[0][0, 1].item() == len(tokens) - 1  # not shifted
    path.write_bytes(b"\xff\xfe[PAD]\n")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        WordPieceTokenizer.from_vocab(path)


def test_run_vocabulary_reads_a_directory_with_its_settings_and_reloads_what_it_learnt(tmp_path, captions):
    given = tmp_path / "given"
    WordPieceTokenizer.from_vocab(write_vocab(tmp_path / "vocab.txt", VOCAB), lowercase=False).save(given)
    never = lambda: pytest.fail("texts are not needed when a vocabulary is given")  # noqa: E731
    tok = run_vocabulary(given, never, tmp_path / "run", vocab_size=50, resumed=False)
    assert tok.lowercase is False and tok(["Red red"], max_length=8)[0].tolist() == [[2, 1, ID["red"], 3]]
    assert run_vocabulary(given / "vocab.txt", never, tmp_path / "run", vocab_size=50, resumed=False).lowercase
    learnt = run_vocabulary(None, lambda: captions, tmp_path / "run", vocab_size=80, resumed=False)
    assert not (tmp_path / "run").exists() and learnt.vocab_size == 74  # all the text has; nothing written
    learnt.save(tmp_path / "run")  # (as fit's run_files does, once the run's checks have passed)
    again = run_vocabulary(None, never, tmp_path / "run", vocab_size=80, resumed=True)
    assert again._tokenizer.get_vocab() == learnt._tokenizer.get_vocab()
    with pytest.raises(ValueError, match="^vocab: none given and the data holds no text to learn a vocabulary from$"):
        run_vocabulary(None, lambda: [], tmp_path / "other", vocab_size=80, resumed=True)


def test_added_tokens_are_refused_and_tokenizer_json_is_read_over_vocab_txt(tmp_path):
    """Found by an adversarial review: vocab.txt was read over tokenizer.json (transformers reads the
    latter) and tokens added with add_tokens were split into word pieces, without an error."""
    hf = BertTokenizerFast(vocab_file=str(write_vocab(tmp_path / "vocab.txt", VOCAB)))
    hf.save_pretrained(tmp_path / "plain")
    ours = WordPieceTokenizer.from_directory(tmp_path / "plain")  # its special tokens are listed as added ones
    assert ours(["a red circle"], max_length=8)[0].tolist() == [hf(["a red circle"])["input_ids"][0]]
    hf.add_tokens(["[IMG]"])
    hf.save_pretrained(tmp_path / "added")
    with pytest.raises(ValueError, match=r"tokenizer.json: .* adds tokens \['\[IMG\]'\] to the vocabulary"):
        WordPieceTokenizer.from_directory(tmp_path / "added")
    (tmp_path / "added" / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=r"adds tokens \['\[IMG\]'\]"):  # also in tokenizer_config.json
        WordPieceTokenizer.from_directory(tmp_path / "added")
    spec = json.loads((tmp_path / "plain" / "tokenizer.json").read_text())
    spec["model"]["max_input_chars_per_word"] = 5
    (tmp_path / "plain" / "tokenizer.json").write_text(json.dumps(spec))
    reread = BertTokenizerFast.from_pretrained(tmp_path / "plain")
    assert reread(["a circles"])["input_ids"][0] == [ID["[CLS]"], ID["a"], ID["[UNK]"], ID["[SEP]"]]
    ours = WordPieceTokenizer.from_directory(tmp_path / "plain")
    assert ours(["a circles"], max_length=8)[0].tolist() == [reread(["a circles"])["input_ids"][0]]


@pytest.mark.parametrize(
    "texts, error, match",
    [
        (
            {"a red circle", "blue"},
            TypeError,
            r"texts must be a sequence of str \(a list or tuple, in row order\), got set",
        ),
        ({"a": 1}, TypeError, "got dict"),
        (None, TypeError, "got NoneType"),
        ((t for t in ["a"]), TypeError, "got generator"),
        ([b"a red circle"], TypeError, r"got bytes at texts\[0\]"),
        (["fine", "caf\udce9"], ValueError, r"texts: expected Unicode text, got surrogate code points in texts \[1\]"),
    ],
)
def test_unordered_texts_and_surrogates_are_refused(hand, texts, error, match):
    """A set was tokenised in hash order (rows changed with PYTHONHASHSEED); a surrogate failed inside
    tokenizers with a message naming nothing."""
    with pytest.raises(error, match=match):
        hand(texts, max_length=8)


def test_training_on_a_text_with_surrogates_is_refused_naming_it():
    """train() failed inside tokenizers' normaliser with "UnicodeEncodeError: 'utf-8' codec can't encode
    character '\\ud83d'", naming no text, where encoding such a text is a ValueError naming its row."""
    with pytest.raises(
        ValueError, match=r"^texts: expected Unicode text, got surrogate code points in texts\[1\] 'cut \\ud83d'$"
    ):
        WordPieceTokenizer.train(["a red dog", "cut \ud83d"], vocab_size=100)
    assert WordPieceTokenizer.train(["a red dog", "cut \U0001f436"], vocab_size=100)(["cut \U0001f436"], max_length=8)[
        0
    ].shape == (1, 4)


def test_the_tokenizer_object_given_is_not_changed(tmp_path):
    bare = WordPieceTokenizer.from_vocab(write_vocab(tmp_path / "vocab.txt", VOCAB))._tokenizer
    bare.post_processor = None
    before = bare.to_str()
    WordPieceTokenizer(bare)
    assert bare.to_str() == before


def test_vocab_file_faults_and_flags_are_named(tmp_path):
    """A repeated token was "repeats tokens (1 duplicates)" (which?), a byte-order mark "lacks [PAD]",
    a non-bool flag a tokenizers (PyO3) message naming its own argument; decode(-1) an OverflowError."""
    with pytest.raises(ValueError, match=r"repeats tokens \(1\): 'red' on lines 7 and 16"):
        WordPieceTokenizer.from_vocab(write_vocab(tmp_path / "a.txt", VOCAB + ["red"]))
    (tmp_path / "bom.txt").write_text("\ufeff" + "".join(f"{t}\n" for t in VOCAB), encoding="utf-8")
    with pytest.raises(ValueError, match="starts with a byte-order mark"):
        WordPieceTokenizer.from_vocab(tmp_path / "bom.txt")
    vocab = write_vocab(tmp_path / "vocab.txt", VOCAB)
    for name, value in (("lowercase", "no"), ("tokenize_chinese_chars", 1), ("strip_accents", 0)):
        with pytest.raises(TypeError, match=f"{name} must be True"):
            WordPieceTokenizer.from_vocab(vocab, **{name: value})
    hand = WordPieceTokenizer.from_vocab(vocab)
    assert hand.decode([ID["a"], ID["red"], ID["[SEP]"]]) == "a red"
    for bad in ([-1], [len(VOCAB)]):
        with pytest.raises(ValueError, match=rf"ids must be in \[0, {len(VOCAB)}\), got \[{bad[0]}\]"):
            hand.decode(bad)


def test_a_path_that_is_no_path_is_named():
    """from_directory(5) raised Python's bare "expected str, bytes or os.PathLike object, not int"."""
    with pytest.raises(TypeError, match="^directory must be a str or os.PathLike path, got int$"):
        WordPieceTokenizer.from_directory(5)
    for load in (WordPieceTokenizer.from_vocab, WordPieceTokenizer.from_tokenizer_json):
        with pytest.raises(TypeError, match="^path must be a str or os.PathLike path, got NoneType$"):
            load(None)


def test_a_tokenizer_file_that_is_no_regular_file_is_refused_not_passed_over(tmp_path):
    """A FIFO (or a directory) named tokenizer_config.json or tokenizer.json was taken as absent: the
    settings' defaults (lowercase...) or vocab.txt stood in for it, silently."""
    from tests.helpers import fifo_that_cannot_hang

    given = tmp_path / "given"
    WordPieceTokenizer.from_vocab(write_vocab(tmp_path / "vocab.txt", VOCAB), lowercase=False).save(given)
    (given / "tokenizer.json").unlink(missing_ok=True)
    (given / "tokenizer_config.json").unlink()
    for name in ("tokenizer_config.json", "tokenizer.json"):
        with fifo_that_cannot_hang(given / name) as fifo:
            with pytest.raises(
                ValueError, match=f"^{fifo} is a FIFO \\(named pipe\\), not a regular file: expected a tokenizer"
            ):
                WordPieceTokenizer.from_directory(given)
        fifo.unlink()
    assert WordPieceTokenizer.from_directory(given).vocab_size == len(VOCAB)  # both absent: vocab.txt, defaults


def test_json_nested_too_deeply_or_added_tokens_of_the_wrong_type_are_value_errors_naming_the_file(tmp_path):
    from torchflava.data.tokenizer import refuse_added_tokens

    (tmp_path / "tokenizer.json").write_text("[" * 100_000 + "]" * 100_000)  # json.loads: RecursionError
    with pytest.raises(ValueError, match="tokenizer.json is not a tokenizer.json object"):
        WordPieceTokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="tokenizer_config.json: .*tokenizer_config.json is not JSON"):
        read_tokenizer_config(tmp_path / "tokenizer_config.json")
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "tokenizer.json").write_text(json.dumps({"added_tokens": 5}))  # (iterating it: TypeError)
    with pytest.raises(ValueError, match="tokenizer.json: .*tokenizer.json added_tokens must be a list, got int 5"):
        refuse_added_tokens(tmp_path)


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("added_tokens.json", "{not json", r"is not JSON: Expecting property name .* \(char 1\)"),
        ("added_tokens.json", '["[IMG]"]', "must hold a JSON object, got a list"),
        ("added_tokens.json", '{"[IMG]": "15"}', r"must map each token to an int id, got '\[IMG\]': str \"15\""),
        (
            "tokenizer_config.json",
            '{"added_tokens_decoder": ["[IMG]"]}',
            r"added_tokens_decoder must be an object of id -> token entries, got list \[\"\[IMG\]\"\]",
        ),
        (
            "tokenizer_config.json",
            '{"added_tokens_decoder": null}',
            "added_tokens_decoder must be an object of id -> token entries, got NoneType null",
        ),
        (
            "tokenizer_config.json",
            '{"added_tokens_decoder": {"15": "[IMG]"}}',
            r"added_tokens_decoder\['15'\] must be an object with a string content, got str \"\[IMG\]\"",
        ),
        (
            "tokenizer_config.json",
            '{"added_tokens_decoder": {"x": {"content": "[IMG]"}}}',
            "added_tokens_decoder keys must be token ids, got 'x'",
        ),
    ],
)
def test_a_malformed_added_tokens_file_is_refused_naming_it_not_passed_over(tmp_path, name, text, match):
    """Found by a review: such a file was skipped, so the tokens it adds (whole tokens for transformers,
    which raises on each of these files) would have been split into pieces here, silently."""
    write_vocab(tmp_path / "vocab.txt", VOCAB)
    (tmp_path / name).write_text(text)
    with pytest.raises(
        (ValueError, TypeError, AttributeError)
    ):  # the reference refuses the file too (with errors of its own)
        BertTokenizerFast.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"^({name}: )?{tmp_path / name} {match}$"):
        WordPieceTokenizer.from_directory(tmp_path)


def test_malformed_added_tokens_of_a_tokenizer_json_are_refused(tmp_path):
    """An added_tokens entry that is no object, or null in place of the list, was passed over (tokenizers,
    hence transformers, refuses the file)."""
    hf = BertTokenizerFast(vocab_file=str(write_vocab(tmp_path / "vocab.txt", VOCAB)))
    hf.save_pretrained(tmp_path / "saved")
    path = tmp_path / "saved" / "tokenizer.json"
    spec = json.loads(path.read_text())
    for added, match in (
        (["[IMG]"], r"added_tokens\[0\] must be an object with a string content, got str"),
        (None, "added_tokens must be a list, got NoneType null"),
    ):
        path.write_text(json.dumps({**spec, "added_tokens": added}))
        with pytest.raises(ValueError, match=f"^tokenizer.json: {path} {match}"):
            WordPieceTokenizer.from_directory(tmp_path / "saved")


# Pipelines a tokenizer.json may state that BertTokenizerFast runs (the model and vocabulary being BERT's).
_OTHER_PIPELINES = [
    ("decoder", {"type": "WordPiece", "prefix": "##", "cleanup": False}),
    ("decoder", {"type": "WordPiece", "prefix": "@@", "cleanup": True}),
    ("decoder", None),
    (
        "normalizer",
        {
            "type": "BertNormalizer",
            "clean_text": False,
            "handle_chinese_chars": True,
            "strip_accents": None,
            "lowercase": True,
        },
    ),
    ("normalizer", {"type": "Lowercase"}),
    ("pre_tokenizer", {"type": "Whitespace"}),
    ("pre_tokenizer", None),
    ("post_processor", None),
    ("post_processor", {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[MASK]", 4]}),
]


@pytest.mark.parametrize("key, value", _OTHER_PIPELINES)
def test_a_tokenizer_json_pipeline_other_than_berts_is_refused_naming_the_key(tmp_path, key, value):
    """Found by a review: only the vocabulary of a tokenizer.json was read, and BERT's pipeline built over
    it, so a file stating another decoder, normaliser, pre-tokeniser or post-processor was tokenised or
    decoded otherwise than transformers (which runs the file's) does, silently. The reference reads each
    such file otherwise than BERT's (shown on a text and on ids); ours is now refused, naming the key."""
    spec = bert_tokenizer_json(tmp_path, VOCAB)
    (tmp_path / "bert.json").write_text(json.dumps(spec))
    (tmp_path / "tokenizer.json").write_text(json.dumps({**spec, key: value}))
    bert = BertTokenizerFast(tokenizer_file=str(tmp_path / "bert.json"))
    reference = BertTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    ids = [ID["a"], ID["red"], ID["##s"], ID[","], ID["##s"]]
    read = lambda tok: (tok(["red\x00s a_red"])["input_ids"][0], tok.decode(ids))  # noqa: E731
    assert read(reference) != read(bert)
    with pytest.raises(ValueError, match=rf"^path: {tmp_path / 'tokenizer.json'} {key} must .* \(BERT's\), got "):
        WordPieceTokenizer.from_directory(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))  # BERT's own: read as the reference reads it
    ours = WordPieceTokenizer.from_directory(tmp_path)
    assert (ours(["red\x00s a_red"], max_length=12)[0][0].tolist(), ours.decode(ids)) == read(bert)


def test_a_tokenizer_json_of_tokenizers_before_0_10_reads_as_transformers_reads_it(tmp_path):
    """Files written before tokenizers 0.10 (e.g. the Hub's 2020 bert-base-uncased) name no model type: the
    library tells WordPiece by its fields and transformers reads them; ours refused them ("model.type must be
    WordPiece, got None"), and a model with merges stays refused."""
    BertTokenizerFast(vocab_file=str(write_vocab(tmp_path / "vocab.txt", VOCAB))).save_pretrained(tmp_path / "old")
    spec = json.loads((tmp_path / "old" / "tokenizer.json").read_text())
    del spec["model"]["type"]
    (tmp_path / "old" / "tokenizer.json").write_text(json.dumps(spec))
    hf = BertTokenizerFast.from_pretrained(tmp_path / "old")
    ours = WordPieceTokenizer.from_directory(tmp_path / "old")
    for text in ("a red circle", "Red circles!"):
        assert ours([text], max_length=16)[0].tolist() == [hf(text)["input_ids"]]
    spec["model"]["merges"] = []  # (a BPE's field: no WordPiece)
    (tmp_path / "old" / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"model.type must be WordPiece, got None"):
        WordPieceTokenizer.from_directory(tmp_path / "old")


# ------------------------------------------------------------------ sentence pairs as BERT's two segments


def test_a_literal_sep_in_one_text_is_the_special_id_with_every_token_of_type_zero(tmp_path):
    """What pair fine-tuning did before: the two sentences joined by " [SEP] " read as one text. The
    literal is the special id (not "[", "sep", "]"), so only the token types (all 0) and the truncation
    (of the joined tail) differ from BERT's pair encoding."""
    tokenizer = WordPieceTokenizer.from_vocab(write_vocab(tmp_path / "vocab.txt", VOCAB))
    ids, _ = tokenizer(["a red circle [SEP] the blue circles"], max_length=32)
    expected = ["[CLS]", "a", "red", "circle", "[SEP]", "the", "blue", "circle", "##s", "[SEP]"]
    assert ids.tolist() == [[ID[t] for t in expected]]


def test_sentence_pairs_are_the_ids_masks_and_token_types_bert_tokenizer_fast_gives(tmp_path):
    vocab = write_vocab(tmp_path / "vocab.txt", VOCAB)
    ours, hf = WordPieceTokenizer.from_vocab(vocab), BertTokenizerFast(vocab_file=str(vocab))
    ids, mask, types = ours.encode_pairs(["a red circle"], ["the blue circles"], max_length=32)
    expected = ["[CLS]", "a", "red", "circle", "[SEP]", "the", "blue", "circle", "##s", "[SEP]"]
    assert ids.tolist() == [[ID[t] for t in expected]]
    assert types.tolist() == [[0] * 5 + [1] * 5] and mask.tolist() == [[1] * 10]
    # longest first, over lengths and limits: which side loses a token at a tie, and padding (type 0)
    words = ["red", "blue circle", "a large red circle", "the blue circles in the middle", "a , red , blue , circle"]
    firsts, seconds = zip(*[(a, b) for a in words for b in words])
    for max_length in (3, 4, 5, 6, 7, 9, 12, 64):
        ids, mask, types = ours.encode_pairs(list(firsts), list(seconds), max_length=max_length)
        ref = hf(list(firsts), list(seconds), truncation="longest_first", max_length=max_length, padding=True)
        assert ids.tolist() == ref["input_ids"], max_length
        assert mask.tolist() == ref["attention_mask"], max_length
        assert types.tolist() == ref["token_type_ids"], max_length
    # the default length is model_max_length, and single texts stay untruncated by the pairs' encoder
    ours.model_max_length = 6
    assert ours.encode_pairs(["a red circle"], ["blue"])[0].tolist() == [
        hf("a red circle", "blue", max_length=6, truncation=True)["input_ids"]
    ]
    assert ours(["a red circle in the middle"], max_length=32)[0].shape == (1, 8)


@pytest.mark.parametrize(
    "firsts, seconds, max_length, error, message",
    [
        (["a"], ["red"], 2, ValueError, "max_length must be an int >= 3 for sentence pairs, got 2"),
        (["a", "red"], ["blue"], 8, ValueError, "firsts and seconds must pair up, got 2 and 1 sentences"),
        ("a", ["red"], 8, TypeError, "firsts must be a sequence of str"),
        (["a"], [3], 8, TypeError, r"seconds must be a sequence of str, got int at seconds\[0\]"),
        ([], [], 8, ValueError, "firsts must not be empty"),
    ],
)
def test_sentence_pairs_refuse_bad_input_naming_the_argument(tmp_path, firsts, seconds, max_length, error, message):
    tokenizer = WordPieceTokenizer.from_vocab(write_vocab(tmp_path / "vocab.txt", VOCAB))
    with pytest.raises(error, match=message):
        tokenizer.encode_pairs(firsts, seconds, max_length=max_length)
