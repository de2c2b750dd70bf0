"""CLIPTokenizer against open_clip's and transformers' tokenizers on CLIP's real vocabulary (the
merges file open_clip ships), and its errors."""

import gzip
import json
import re
import shutil

import open_clip
import pytest
import torch
from transformers import CLIPTokenizer as HFSlowTokenizer
from transformers import CLIPTokenizerFast as HFFastTokenizer

from torchflava.data.clip_tokenizer import CLIP_VOCAB_SIZE, CLIPTokenizer, byte_characters, fix_characters, ftfy_fixes

BPE = open_clip.tokenizer.default_bpe()  # OpenAI's bpe_simple_vocab_16e6.txt.gz
TEXTS = [
    "a photo of a cat",
    "A Photo of   the CAT's toy!!",
    "naïve café, 123 dogs in 2024",
    "",
    "emoji 🐶 and 中文 text",
    "don't stop-believing, it's 3.14 (really)",
    "tab\tnew\nline  ",
    "word " * 100,  # truncated: the end token is kept at position 76
    "Tom &amp; Jerry say &quot;hi&quot;",  # web alt-text's HTML entities: OpenAI's tokenizer undoes them
]


@pytest.fixture(scope="module")
def ours() -> CLIPTokenizer:
    return CLIPTokenizer.from_bpe(BPE)


@pytest.fixture(scope="module")
def hf_directory(tmp_path_factory, ours):
    """vocab.json + merges.txt + tokenizer_config.json as a transformers CLIP checkpoint holds them."""
    directory = tmp_path_factory.mktemp("hf_clip_tokenizer")
    merges = gzip.open(BPE).read().decode("utf-8").split("\n")[1 : CLIP_VOCAB_SIZE - 514 + 1]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (directory / "vocab.json").write_text(
        json.dumps(ours._tokenizer.get_vocab(with_added_tokens=False)), encoding="utf-8"
    )
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "pad_token": "<|endoftext|>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def test_vocabulary_is_clips(ours):
    assert ours.vocab_size == CLIP_VOCAB_SIZE == 49408
    assert (ours.start_id, ours.end_id, ours.pad_id) == (49406, 49407, 49407)
    assert len(set(byte_characters().values())) == 256 and byte_characters()[ord(" ")] == "\u0120"


def test_ids_equal_open_clips_tokenizer(ours):
    ids, mask = ours(TEXTS)
    reference = open_clip.tokenize(TEXTS)  # (B, 77), padded with 0
    assert ids.shape == (len(TEXTS), 77) and int(mask[-2].sum()) == 77
    for row, (our_ids, our_mask) in enumerate(zip(ids, mask)):
        length = int(our_mask.sum())
        assert our_mask[:length].all() and not our_mask[length:].any()
        assert our_ids[:length].tolist() == reference[row][:length].tolist(), TEXTS[row]
        assert not reference[row][length:].any()  # open_clip's row ends where ours does
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat"


def test_ids_equal_open_clips_where_its_ftfy_fixes_characters(ours):
    # web captions and pasted prompts: curly quotes, ligatures, full-width forms, a BOM, terminal
    # colours, C1 controls of mis-decoded text, control characters (ids differed on all before)
    texts = ["don\u2019t it\u2019s \u201cquoted\u201d", "\ufb01ne \ufb02ower", "\uff21\uff22\uff23 \uff11\uff12\uff13"]
    texts += ["\ufeffa photo", "\x1b[31mred\x1b[0m dog", "caf\x92s \x93hi\x94 \x85", "a\x1cb\x0bc\x00d", "\uff8a\uff9d"]
    ids, mask = ours(texts)
    reference = open_clip.tokenize(texts)
    for row, text in enumerate(texts):
        length = int(mask[row].sum())
        assert ids[row, :length].tolist() == reference[row, :length].tolist(), repr(text)
        assert not reference[row, length:].any(), repr(text)


def test_character_fixes_equal_ftfys_fix_text():
    import unicodedata

    import ftfy

    codes = [
        *range(0x250),
        *range(0x2000, 0x2100),
        *range(0x3000, 0x3010),
        *range(0xFB00, 0xFB10),
        *range(0xFE00, 0x10000),
    ]
    for code in codes:
        text = f"a{chr(code)}b"
        assert unicodedata.normalize("NFC", fix_characters(text)) == ftfy.fix_text(text), hex(code)
    assert fix_characters("\x1b[1;31mbold\x1b[0m") == "bold" and fix_characters("Caf\u00e9") == "Caf\u00e9"


@pytest.mark.parametrize("kind", [HFSlowTokenizer, HFFastTokenizer], ids=["slow", "fast"])
def test_ids_and_mask_equal_transformers_from_vocab_and_merges(hf_directory, kind):
    reference = kind.from_pretrained(hf_directory)
    expected = reference(TEXTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    ids, mask = CLIPTokenizer.from_directory(hf_directory)(TEXTS)
    if kind is HFFastTokenizer:  # the fast one keeps HTML entities; the slow one undoes them through ftfy
        assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])
    else:
        assert torch.equal(ids[:-1], expected["input_ids"][:-1]) and torch.equal(
            mask[:-1], expected["attention_mask"][:-1]
        )
    special = ["a <|ENDOFTEXT|> b"]  # a special token in any case is the token, as transformers reads it
    assert torch.equal(
        CLIPTokenizer.from_directory(hf_directory)(special)[0], reference(special, return_tensors="pt")["input_ids"]
    )
    short_ids, _ = CLIPTokenizer.from_directory(hf_directory)(TEXTS[:-1], max_length=8)
    short = reference(TEXTS[:-1], padding=True, truncation=True, max_length=8, return_tensors="pt")["input_ids"]
    assert torch.equal(short_ids, short)


def test_a_tokenizer_json_directory_equals_transformers(hf_directory, tmp_path):
    HFFastTokenizer.from_pretrained(hf_directory).save_pretrained(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).unlink()  # the tokenizer.json alone
    texts = TEXTS + ["hello<|endoftext|>world"]  # a special token in the text is the token (as transformers)
    expected = HFFastTokenizer.from_pretrained(tmp_path)(texts, padding=True, truncation=True, return_tensors="pt")
    ids, mask = CLIPTokenizer.from_directory(tmp_path)(texts)
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])
    assert ids[-1, :5].tolist() == [49406, 3306, 49407, 1002, 49407]


def test_padding_and_truncation_saved_in_a_tokenizer_json_are_not_applied(hf_directory, tmp_path):
    # transformers saves the last call's padding and truncation into tokenizer.json; its tokenizer
    # ignores them when loading, and so must ours (they padded inside the row, before the end token)
    reference = HFFastTokenizer.from_pretrained(hf_directory)
    reference(TEXTS, padding="max_length", truncation=True, max_length=12)
    reference.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    assert saved["padding"] is not None and saved["truncation"]["max_length"] == 12
    expected = HFFastTokenizer.from_pretrained(tmp_path)(TEXTS, padding=True, truncation=True, return_tensors="pt")
    ids, mask = CLIPTokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")(TEXTS)
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407] and ids.shape[1] == 77


def test_padding_token_and_length_come_from_tokenizer_config(hf_directory, tmp_path):
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((hf_directory / name).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 5, "pad_token": "!"}))
    tokenizer = CLIPTokenizer.from_directory(tmp_path)
    ids, mask = tokenizer(["a photo of a cat", "a"])
    assert ids.tolist() == [[49406, 320, 1125, 539, 49407], [49406, 320, 49407, 0, 0]]  # "!" is id 0
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


_ADDED = {  # transformers >= 4.34 writes these; then it reads no special_tokens_map.json
    "added_tokens_decoder": {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": True,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in ((49406, "<|startoftext|>"), (49407, "<|endoftext|>"))
    }
}


@pytest.mark.parametrize(
    "config, special_tokens_map",
    [
        ({"pad_token": "!"}, None),
        ({"pad_token": "<|endoftext|>"}, {"pad_token": "!"}),  # the map's over the config's
        ({}, {"pad_token": {"content": "!", "normalized": False}}),
        ({"pad_token": "<|endoftext|>", **_ADDED}, {"pad_token": "!"}),  # the map is not read
    ],
    ids=["config", "map-over-config", "map-only", "map-ignored"],
)
def test_a_padding_token_in_the_vocabulary_is_a_special_token_as_transformers_reads_it(
    hf_directory, tmp_path, config, special_tokens_map
):
    """Found by a differential fuzz against CLIPTokenizerFast: LAION's CLIP checkpoints pad with "!", which
    transformers makes a special token, split out of the text wherever it stands ("a ! b": [49406, 320,
    0, 321, 49407], where ours gave "!</w>" 256), and it reads the padding token of a special_tokens_map.json
    over the config's where the config has no added_tokens_decoder (ours read only the config)."""
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((hf_directory / name).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer", **config}))
    if special_tokens_map is not None:
        (tmp_path / "special_tokens_map.json").write_text(json.dumps(special_tokens_map))
    texts = ["a ! b", "a!b", "hi!!", "x !", "!", "a"]
    ours = CLIPTokenizer.from_directory(tmp_path)
    ids, mask = ours(texts)
    for kind in (HFFastTokenizer, HFSlowTokenizer):  # (the two agree here)
        expected = kind.from_pretrained(tmp_path)(texts, padding=True, return_tensors="pt")
        assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"]), kind
    full_width = ["\uff01 a"]  # not "!" in the raw text: fast (the slow one's ftfy narrows it first)
    assert ours(full_width)[0].tolist() == HFFastTokenizer.from_pretrained(tmp_path)(full_width)["input_ids"]
    pad = 49407 if "added_tokens_decoder" in config else 0
    assert ids[0].tolist() == ([49406, 320, 256, 321, 49407] if pad else [49406, 320, 0, 321, 49407])
    assert ids[-1].tolist() == [49406, 320, 49407, pad, pad]


def test_a_special_token_of_special_tokens_map_json_is_checked_naming_that_file(hf_directory, tmp_path):
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((hf_directory / name).read_bytes())
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(ValueError, match=r"special_tokens_map.json: eos_token must be <\|endoftext\|> \(CLIP's\)"):
        CLIPTokenizer.from_directory(tmp_path)


@pytest.mark.parametrize(
    "files, refused",
    [
        ({"added_tokens.json": {"<|pad|>": 49408}}, True),
        ({"tokenizer_config.json": {"added_tokens_decoder": {"49408": {"content": "<|pad|>", "special": True}}}}, True),
        (
            {
                "tokenizer_config.json": {
                    "pad_token": "!",
                    "added_tokens_decoder": {"0": {"content": "!"}, **_ADDED["added_tokens_decoder"]},
                }
            },
            False,
        ),
    ],
    ids=["added_tokens.json", "added_tokens_decoder", "laion-padding"],
)
def test_tokens_added_to_a_vocab_json_directory_are_refused(hf_directory, tmp_path, files, refused):
    """Found by a review after the fuzz: transformers reads "a <|pad|> b" as [49406, 320, 49408, 321, 49407]
    where a vocab.json directory's added_tokens.json (or config's added_tokens_decoder) adds <|pad|>; ours
    ignored them and spelt it in 5 pieces. Refused, as WordPieceTokenizer refuses them; CLIP's own
    special tokens (and the padding token) are fine."""
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((hf_directory / name).read_bytes())
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    if refused:
        with pytest.raises(ValueError, match=r"adds tokens \['<\|pad\|>'\] to the vocabulary; only CLIP's special"):
            CLIPTokenizer.from_directory(tmp_path)
    else:
        texts = ["a ! b", "a"]
        expected = HFFastTokenizer.from_pretrained(tmp_path)(texts, padding=True, return_tensors="pt")["input_ids"]
        assert torch.equal(CLIPTokenizer.from_directory(tmp_path)(texts)[0], expected)


def test_decode_gives_the_lower_cased_words(ours):
    ids, _ = ours(["A Photo of   the CAT's toy!! naïve 🐶"])
    assert ours.decode(ids[0].tolist()) == "a photo of the cat 's toy !! naïve 🐶"


def test_an_uncompressed_merges_file_reads_the_same(ours, tmp_path):
    plain = tmp_path / "bpe.txt"
    plain.write_bytes(gzip.open(BPE).read())
    assert torch.equal(CLIPTokenizer.from_bpe(plain)(TEXTS)[0], ours(TEXTS)[0])
    plain.write_bytes(gzip.open(BPE).read().replace(b"\n", b"\r\n"))  # Windows line ends
    assert torch.equal(CLIPTokenizer.from_bpe(plain)(TEXTS)[0], ours(TEXTS)[0])


def test_a_truncated_merges_txt_is_refused_not_tokenised_otherwise(hf_directory, tmp_path):
    (tmp_path / "vocab.json").write_bytes((hf_directory / "vocab.json").read_bytes())
    lines = (hf_directory / "merges.txt").read_text(encoding="utf-8").split("\n")
    (tmp_path / "merges.txt").write_text("\n".join(lines[:1000]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges.txt: expected len\(vocab.json\) - 514 = 48894 merges in .*, got 999"):
        CLIPTokenizer.from_directory(tmp_path)


def test_errors(ours, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("#version: 0.2\ni n\nthree parts here\n")
    with pytest.raises(ValueError, match=r"merges: line 3 of .*bad.txt must be two pieces .* got 'three parts here'"):
        CLIPTokenizer.from_bpe(bad)
    bad.write_text("#version: 0.2\ni n\n")
    with pytest.raises(ValueError, match="expected at least 48894 merges in .*, got 1"):
        CLIPTokenizer.from_bpe(bad)
    bad.write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(ValueError, match="is not a \\(gzipped\\) UTF-8 merges file"):
        CLIPTokenizer.from_bpe(bad)
    with pytest.raises(FileNotFoundError, match="expected a CLIP merges file"):
        CLIPTokenizer.from_bpe(tmp_path / "missing.txt.gz")
    with pytest.raises(ValueError, match="vocab_size must be an int >= 515"):
        CLIPTokenizer.from_bpe(BPE, vocab_size=100)
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor vocab.json and merges.txt"):
        CLIPTokenizer.from_directory(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json: .* does not read as a tokenizer"):
        CLIPTokenizer.from_directory(tmp_path)
    from torchflava.data.tokenizer import WordPieceTokenizer

    WordPieceTokenizer.train(["a red circle"])._tokenizer.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="expected a BPE model \\(CLIP's\\) in .*, got WordPiece"):
        CLIPTokenizer.from_directory(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(
        ValueError, match="the vocabulary lacks the token\\(s\\) \\['<\\|startoftext\\|>', '<\\|endoftext\\|>'"
    ):
        CLIPTokenizer.from_vocab_and_merges({"a</w>": 0, "b</w>": 1}, [])
    with pytest.raises(ValueError, match="merges: expected merges of pieces in the vocabulary, got"):
        CLIPTokenizer.from_vocab_and_merges({"a</w>": 0, "b</w>": 1}, [("x", "y")])
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    with pytest.raises(ValueError, match="tokenizer_class must be one of .*, got 'BertTokenizer'"):
        CLIPTokenizer.from_directory(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1}))
    with pytest.raises(ValueError, match="model_max_length must be an int >= 2, got 1"):
        CLIPTokenizer.from_directory(tmp_path)
    with pytest.raises(TypeError, match="texts must be a sequence of str"):
        ours("a photo")
    with pytest.raises(ValueError, match="texts must not be empty"):
        ours([])
    with pytest.raises(ValueError, match="max_length must be an int >= 2, got 1"):
        ours(["a"], max_length=1)


def test_special_tokens_written_in_the_text_read_as_open_clips_do(ours, hf_directory):
    # open_clip spells them <start_of_text> / <end_of_text> (in any case); its <|endoftext|> is text.
    texts = ["a photo <|endoftext|> of a cat", "a <end_of_text> b", "A <START_OF_TEXT> b<|startoftext|>"]
    # ... whole pieces of its word split only: after other symbols they are text, as there
    texts += ["a.<end_of_text>", "<<end_of_text>>", "(<start_of_text>)", "\U0001f436<end_of_text>", "_<end_of_text>"]
    texts += ["\u0130<end_of_text>", "<|endoftext|><end_of_text>", "x<end_of_text>y", "<end_of_text><end_of_text>"]
    texts += ["it's<end_of_text>9", "word " * 80 + "<end_of_text>"]
    ids, mask = ours(texts)
    reference = open_clip.tokenize(texts)
    for row in range(len(texts)):
        length = int(mask[row].sum())
        assert ids[row, :length].tolist() == reference[row, :length].tolist() and not reference[row, length:].any()
    assert ids[1, :5].tolist() == [49406, 320, 49407, 321, 49407] and 49407 not in ids[0, 1:8].tolist()
    # transformers' reading of a directory's tokenizer: <|endoftext|> is the token, <end_of_text> text
    hf_ids, _ = CLIPTokenizer.from_directory(hf_directory)(texts[:2])
    assert hf_ids[0, :4].tolist() == [49406, 320, 1125, 49407] and 49407 not in hf_ids[1, 1:4].tolist()


@pytest.mark.parametrize("bad", ["open-clip", "", None, ("<a>", "<b>")])
def test_a_bad_reading_is_refused_naming_the_argument(bad):
    with pytest.raises(ValueError, match="reading must be one of \\('transformers', 'open_clip'\\), got"):
        CLIPTokenizer.from_bpe(BPE, reading=bad)


def test_html_entities_are_decoded_as_open_clips_ftfy_does(ours):
    # ftfy.fix_text decodes entities (to a fixpoint, before its character fixes) where a line holds no
    # "<", then open_clip unescapes twice more: web alt-text's "don&#8217;t" is "don't" there.
    texts = ["don&#8217;t stop &ldquo;now&rdquo;", "caf&eacute; &amp;amp;amp; bar", "a&#xFB01;ne P&EACUTE;REZ"]
    texts += [
        "x < y and don&#8217;t",
        "one &amp;amp;\ntwo <b> &amp;amp;amp;\nthree &amp;amp;amp;",
        "this&not that &amp",
    ]
    ids, mask = ours(texts)
    reference = open_clip.tokenize(texts)
    for row in range(len(texts)):
        length = int(mask[row].sum())
        assert ids[row, :length].tolist() == reference[row, :length].tolist(), texts[row]
    assert ids[0, :3].tolist() == [49406, 847, 713]  # "don't"
    assert ftfy_fixes("P&EACUTE;REZ &nTILDE; &#99999999; a\r\nb") == "P\u00c9REZ &nTILDE; \ufffd a\nb"


def test_greek_capitals_nfc_terminal_escapes_and_surrogates_as_open_clip(ours, hf_directory):
    # Python lower-cases a word's final capital sigma to ς (tokenizers' Lowercase does not); ftfy
    # composes (NFC) before its next round of entities, but not after open_clip's own unescaping;
    # it widens and joins characters before it drops terminal escapes; it repairs surrogates.
    texts = ["\u039f\u0394\u039f\u03a3 \u0391\u0398\u0397\u039d\u0391\u03a3", "&amp\u037e x", "e&#769 x"]
    texts += ["\x1b\uff3b31m red", "\x1b[31\ufb01 red", "caf\u00e9\udc80 x", "\ud83d\ude00 a"]
    ids, mask = ours(texts)
    reference = open_clip.tokenize(texts)
    for row in range(len(texts)):
        length = int(mask[row].sum())
        assert ids[row, :length].tolist() == reference[row, :length].tolist(), ascii(texts[row])
    assert ftfy_fixes("e\u0301 \u037e \ud83d\ude00 \udc80") == "\u00e9 ; \U0001f600 \ufffd"
    with pytest.raises(ValueError, match=r"texts: expected Unicode text, got surrogate code points in texts \[1\]"):
        CLIPTokenizer.from_directory(hf_directory)(["fine", "caf\u00e9\udc80"])


def test_vocab_json_ids_must_be_dense_and_unique(hf_directory, tmp_path):
    """Found by an adversarial review: ids used twice read two tokens as one; an id of 10**9 made the
    vocabulary a billion wide."""
    for name, change in (("duplicate", {"a</w>": "photo</w>"}), ("huge", {"<|endoftext|>": None})):
        directory = tmp_path / name
        shutil.copytree(hf_directory, directory)
        vocab = json.loads((directory / "vocab.json").read_text())
        for token, like in change.items():
            vocab[token] = vocab[like] if like else 10**9
        (directory / "vocab.json").write_text(json.dumps(vocab))
        with pytest.raises(ValueError, match=r"vocab.json: .*vocab.json: expected the ids 0 \.\. 49407, each once"):
            CLIPTokenizer.from_directory(directory)


def test_a_repeated_merge_line_is_named(tmp_path):
    lines = gzip.open(BPE).read().decode("utf-8").split("\n")
    path = tmp_path / "bpe.txt"
    path.write_text("\n".join(lines[:100] + [lines[5]] + lines[100:]), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"merges: line 101 of .*bpe.txt repeats line 6 \({lines[5]!r}\)"):
        CLIPTokenizer.from_bpe(path)


def test_the_tokenizer_object_given_is_not_changed_and_flags_are_bools(ours):
    bare = ours._tokenizer
    before = bare.to_str()
    first = CLIPTokenizer(bare)
    ids = first(["A Photo of a CAT"])[0].tolist()
    CLIPTokenizer(bare, reading="open_clip")
    assert bare.to_str() == before and first(["A Photo of a CAT"])[0].tolist() == ids
    with pytest.raises(TypeError, match="unescape_html must be True or False, got 'no'"):
        CLIPTokenizer.from_bpe(BPE, unescape_html="no")


def test_a_path_that_is_no_path_is_named():
    """from_directory(5) raised Python's bare "expected str, bytes or os.PathLike object, not int"."""
    with pytest.raises(TypeError, match="^directory must be a str or os.PathLike path, got int$"):
        CLIPTokenizer.from_directory(5)
    for load in (CLIPTokenizer.from_bpe, CLIPTokenizer.from_tokenizer_json):
        with pytest.raises(TypeError, match="^path must be a str or os.PathLike path, got list$"):
            load(["bpe.txt.gz"])


@pytest.mark.parametrize(
    "vocab, detail",
    [
        ({"<|startoftext|>": 0, "<|endoftext|>": 0, "a": 1}, r"ids used twice \[0\]"),
        ({"<|startoftext|>": 0, "<|endoftext|>": 100000, "a": 1}, "ids from 0 to 100000"),
    ],
)
def test_tokenizer_json_ids_must_be_dense_and_unique(tmp_path, vocab, detail, small_clip_json):
    """Found by a review: the start and end tokens sharing id 0 loaded (the end read as the start); a
    sparse id gave a vocab_size of 100001. vocab.json was checked, tokenizer.json was not."""
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": vocab, "merges": []}}))
    message = (
        rf"^tokenizer.json: {path} model.vocab and added_tokens: expected the ids 0 \.\. 2, each once, got {detail}$"
    )
    with pytest.raises(ValueError, match=message):
        CLIPTokenizer.from_tokenizer_json(path)
    with pytest.raises(ValueError, match=message):
        CLIPTokenizer.from_directory(tmp_path)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 2, "a": 1}
    spec = with_post_processor_ids(small_clip_json, 0, 2)  # CLIP's pipeline on these ids
    path.write_text(json.dumps({**spec, "added_tokens": [], "model": {**spec["model"], "vocab": vocab, "merges": []}}))
    tokenizer = CLIPTokenizer.from_tokenizer_json(path)
    assert (tokenizer.vocab_size, tokenizer.start_id, tokenizer.end_id) == (3, 0, 2)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"pad_token": ""}, "pad_token must be a non-empty string or null, got ''"),
        ({"pad_token": {"content": ""}}, "pad_token must be a non-empty string or null, got ''"),
        ({"bos_token": "<s>"}, r"bos_token must be <\|startoftext\|> \(CLIP's\), got '<s>'"),
        ({"eos_token": {"content": "</s>"}}, r"eos_token must be <\|endoftext\|> \(CLIP's\), got '</s>'"),
        ({"unk_token": "<unk>"}, r"unk_token must be <\|endoftext\|> \(CLIP's\), got '<unk>'"),
    ],
)
def test_tokenizer_config_special_tokens_other_than_clips_are_refused(hf_directory, tmp_path, config, message):
    """ "pad_token": "" padded with <|endoftext|>; other start and end tokens were ignored (the WordPiece
    loader refuses BERT's others)."""
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((hf_directory / name).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"^tokenizer_config.json: {message}$"):
        CLIPTokenizer.from_directory(tmp_path)
    clip = {"bos_token": "<|startoftext|>", "eos_token": {"content": "<|endoftext|>"}, "unk_token": "<|endoftext|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(clip))
    assert CLIPTokenizer.from_directory(tmp_path).pad_id == 49407


def test_an_empty_pad_token_is_refused_by_the_constructor(ours):
    with pytest.raises(ValueError, match="^pad_token must be a token of the vocabulary or None, got ''$"):
        CLIPTokenizer(ours._tokenizer, pad_token="")


def test_a_vocab_json_too_small_for_the_byte_pieces_is_named(tmp_path):
    """It said "expected len(vocab.json) - 514 = -512 merges"."""
    (tmp_path / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(
        ValueError,
        match=rf"^vocab.json: expected at least 514 tokens in {tmp_path / 'vocab.json'} \(the 256 byte pieces, "
        r"each also with </w>, and 2 special tokens\), got 2$",
    ):
        CLIPTokenizer.from_directory(tmp_path)


@pytest.mark.parametrize(
    "ids, error, message",
    [
        ([-1], ValueError, r"ids must be in \[0, 49408\), got \[-1\]"),  # OverflowError
        ([320, 49408], ValueError, r"ids must be in \[0, 49408\), got \[49408\]"),  # decoded to '' silently
        ([65.7], TypeError, r"ids\[0\] must be an int id, got float 65.7"),
        ("65", TypeError, "ids must be a sequence of int ids, got str '65'"),
        (torch.tensor([[320]]), ValueError, r"ids must be one sequence of ids \(1-D\), got a tensor of shape \(1, 1\)"),
    ],
)
def test_decode_refuses_ids_outside_the_vocabulary_and_what_is_not_ids(ours, ids, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        ours.decode(ids)
    assert ours.decode(torch.tensor([49406, 320, 1125, 49407])) == "a photo"


def test_a_tokenizer_file_that_is_no_regular_file_is_refused_not_passed_over(tmp_path, hf_directory):
    """A FIFO named tokenizer_config.json or tokenizer.json was taken as absent (its settings' defaults,
    or vocab.json and merges.txt, stood in for it, silently)."""
    import shutil

    from tests.helpers import fifo_that_cannot_hang

    for name in ("tokenizer_config.json", "tokenizer.json"):
        copy = tmp_path / name.replace(".", "_")
        shutil.copytree(hf_directory, copy)
        (copy / name).unlink(missing_ok=True)
        with fifo_that_cannot_hang(copy / name) as fifo:
            with pytest.raises(
                ValueError, match=f"^{fifo} is a FIFO \\(named pipe\\), not a regular file: expected a tokenizer"
            ):
                CLIPTokenizer.from_directory(copy)


def test_word_split_is_open_clips_case_insensitive_one(ours, hf_directory):
    """Found by a fuzz against open_clip: its word split matches case-insensitively, so on its lower-cased
    text "'ſ" (long s, U+017F, also from the ligature U+FB05) is the contraction "'s", "<ſtart_of_text>" is
    one piece, and U+0345 (combining ypogegrammeni, whose capital is the letter Ι) matches nothing and
    separates words as a space does. Ours split them otherwise, e.g. "a\\u0345b": [49406, 320, 137, 483, 321,
    49407] where open_clip gives [49406, 320, 321, 49407]. transformers' split (and reading) is unchanged."""
    texts = ["\u0345", "a\u0345b", "a\u0345's", "#\u0345?{", "x\u0345<end_of_text>", "\u0345\u0301$"]
    texts += ["it'\u017f", "it'\u017fs", "don'\ufb05", "<\u017ftart_of_text> a", "'\u017ftart_of_text>", "\u017f's"]
    ids, mask = ours(texts)
    reference = open_clip.tokenize(texts)
    for row in range(len(texts)):
        length = int(mask[row].sum())
        assert ids[row, :length].tolist() == reference[row, :length].tolist(), ascii(texts[row])
        assert not reference[row, length:].any(), ascii(texts[row])
    assert ids[1, :4].tolist() == [49406, 320, 321, 49407] and ids[6, :6].tolist() == [49406, 585, 6, 129, 379, 49407]
    assert ids[4, :4].tolist() == [49406, 343, 49407, 49407]  # the end token it spells, after U+0345
    hf = HFFastTokenizer.from_pretrained(hf_directory)
    expected = hf(texts, padding=True, return_tensors="pt")
    hf_ids, hf_mask = CLIPTokenizer.from_directory(hf_directory)(texts)
    assert torch.equal(hf_ids, expected["input_ids"]) and torch.equal(hf_mask, expected["attention_mask"])
    assert hf_ids[1, :5].tolist() == [49406, 320, 137, 483, 321]  # transformers keeps U+0345 as a symbol


@pytest.mark.parametrize("source", ["vocab_and_merges", "tokenizer_json"])
def test_save_writes_files_that_it_and_transformers_read_back_to_the_same_ids(hf_directory, source, tmp_path):
    if source == "tokenizer_json":  # a directory holding transformers' tokenizer.json alone
        HFFastTokenizer.from_pretrained(hf_directory).save_pretrained(tmp_path / "json")
        for name in ("vocab.json", "merges.txt"):
            (tmp_path / "json" / name).unlink()
    tokenizer = CLIPTokenizer.from_directory(hf_directory if source == "vocab_and_merges" else tmp_path / "json")
    tokenizer.model_max_length = 20
    assert tokenizer.save(tmp_path / "saved") == tmp_path / "saved" / "vocab.json"
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "merges.txt",
        "tokenizer_config.json",
        "vocab.json",
    ]
    expected_ids, expected_mask = tokenizer(TEXTS)
    again = CLIPTokenizer.from_directory(tmp_path / "saved")
    ids, mask = again(TEXTS)
    assert ids.shape == (len(TEXTS), 20) and torch.equal(ids, expected_ids) and torch.equal(mask, expected_mask)
    assert (again.vocab_size, again.sep_id, again.pad_id, again.model_max_length) == (CLIP_VOCAB_SIZE, 49407, 49407, 20)
    for kind in (HFSlowTokenizer, HFFastTokenizer):
        reference = kind.from_pretrained(tmp_path / "saved")
        assert reference.model_max_length == 20
        plain = [text for text in TEXTS if "&" not in text]  # (ours unescapes no HTML either: transformers' reading)
        got = reference(plain, padding=True, truncation=True, return_tensors="pt")
        assert torch.equal(got["input_ids"], again(plain)[0]), kind.__name__
    again.model_max_length = None  # transformers' "no limit" is written, and read back as no limit
    again.save(tmp_path / "unlimited")
    assert CLIPTokenizer.from_directory(tmp_path / "unlimited").model_max_length is None


def test_save_refuses_open_clips_reading_rather_than_write_another(ours, tmp_path):
    """The refusal did not say how to get a tokenizer that saves: it names the settings and from_bpe's."""
    remedy = "CLIPTokenizer.from_bpe(path, reading='transformers', unescape_html=False, fix_text=False) gives one"
    with pytest.raises(ValueError, match=r"^save: expected transformers' reading of texts") as error:
        ours.save(tmp_path)
    assert "got reading='open_clip', unescape_html=True, fix_text=True; " + remedy in str(error.value)
    with pytest.raises(ValueError, match=r", got fix_text=True; CLIPTokenizer.from_bpe\("):
        CLIPTokenizer.from_bpe(BPE, reading="transformers", unescape_html=False).save(tmp_path)
    assert list(tmp_path.iterdir()) == []
    # The remedy named: it saves, and reads back (here and in transformers) to its own ids.
    saveable = CLIPTokenizer.from_bpe(BPE, reading="transformers", unescape_html=False, fix_text=False)
    saveable.save(tmp_path / "saved")
    plain = [text for text in TEXTS if "&" not in text]
    assert torch.equal(CLIPTokenizer.from_directory(tmp_path / "saved")(TEXTS)[0], saveable(TEXTS)[0])
    got = HFFastTokenizer.from_pretrained(tmp_path / "saved")(plain, padding=True, truncation=True, return_tensors="pt")
    assert torch.equal(got["input_ids"], saveable(plain)[0])


def test_read_tokenizer_tells_wordpiece_from_clips_bpe(hf_directory, tmp_path):
    from torchflava.data.clip_tokenizer import read_tokenizer
    from torchflava.data.tokenizer import WordPieceTokenizer

    (tmp_path / "vocab.txt").write_text("".join(f"{t}\n" for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]))
    for path in (tmp_path / "vocab.txt", tmp_path):
        assert isinstance(read_tokenizer(path), WordPieceTokenizer) and read_tokenizer(path).sep_id == 3
    clip = read_tokenizer(hf_directory)
    assert isinstance(clip, CLIPTokenizer) and clip.special_ids == (49406, 49407)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has neither tokenizer.json nor vocab.json and merges.txt"):
        read_tokenizer(tmp_path / "empty")


# Texts whose decoding transformers' clean-up changes, and LAION's "!" padding (a special token there).
CLEAN_UP_TEXTS = ["don't stop , he said . hello!", "it 's a ' ' b ?! x !", "rock'n'roll , we 've I'm"]


@pytest.mark.parametrize(
    "source, pad, setting",
    # every padding and setting from vocab.json + merges.txt; from a tokenizer.json (the same settings read from
    # tokenizer_config.json beside either) each padding, each setting once
    [("vocab_and_merges", p, s) for p in ("<|endoftext|>", "!") for s in ("absent", True, False)]
    + [("tokenizer_json", "!", "absent"), ("tokenizer_json", "<|endoftext|>", True), ("tokenizer_json", "!", False)],
)
def test_decode_equals_clip_tokenizer_fast_with_its_clean_up_setting_and_padding(
    hf_directory, tmp_path, source, pad, setting
):
    """Found by a differential fuzz against CLIPTokenizerFast: decode ignored tokenizer_config.json's
    clean_up_tokenization_spaces (transformers' default for CLIP is false) and kept a "!" padding token
    (LAION's), which transformers drops as a special token wherever it stands; our save kept neither setting."""
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (directory / name).write_bytes((hf_directory / name).read_bytes())
    config = {"tokenizer_class": "CLIPTokenizer", "pad_token": pad}
    if setting != "absent":
        config["clean_up_tokenization_spaces"] = setting
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    if source == "tokenizer_json":
        HFFastTokenizer.from_pretrained(directory).save_pretrained(tmp_path / "json")
        directory = tmp_path / "json"
        for name in ("vocab.json", "merges.txt"):
            (directory / name).unlink()
    hf, ours = HFFastTokenizer.from_pretrained(directory), CLIPTokenizer.from_directory(directory)
    clean_up = setting is True
    assert hf.clean_up_tokenization_spaces is ours.clean_up_tokenization_spaces is clean_up
    ids, _ = ours(CLEAN_UP_TEXTS + ["a photo"], max_length=77)
    assert torch.equal(ids, hf(CLEAN_UP_TEXTS + ["a photo"], padding=True, return_tensors="pt")["input_ids"])
    decoded = [ours.decode(row) for row in ids]
    assert decoded == [hf.decode(row, skip_special_tokens=True) for row in ids]
    expected = {  # (the padding dropped, the end token or "!"; transformers drops "!" wherever it stands)
        ("<|endoftext|>", True): ["don 't stop, he said. hello!", "it's a'' b?! x!", "rock'n'roll, we've i'm"],
        ("<|endoftext|>", False): [
            "don 't stop , he said . hello !",
            "it 's a ' ' b ?! x !",
            "rock ' n ' roll , we 've i 'm",
        ],
        ("!", True): ["don 't stop, he said. hello", "it's a'' b? x", "rock'n'roll, we've i'm"],
        ("!", False): ["don 't stop , he said . hello", "it 's a ' ' b ? x", "rock ' n ' roll , we 've i 'm"],
    }
    assert decoded == expected[pad, clean_up] + ["a photo"]
    again_directory = tmp_path / "ours"
    ours.save(again_directory)
    again, hf_again = CLIPTokenizer.from_directory(again_directory), HFFastTokenizer.from_pretrained(again_directory)
    assert again.clean_up_tokenization_spaces is hf_again.clean_up_tokenization_spaces is clean_up
    assert (
        [again.decode(row) for row in ids] == [hf_again.decode(row, skip_special_tokens=True) for row in ids] == decoded
    )


def test_clean_up_setting_errors(hf_directory, tmp_path):
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((hf_directory / name).read_bytes())
    for value in ("true", 1, None):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"clean_up_tokenization_spaces": value}))
        with pytest.raises(
            ValueError,
            match=f"tokenizer_config.json: clean_up_tokenization_spaces must be true or false, got {value!r}",
        ):
            CLIPTokenizer.from_directory(tmp_path)
    with pytest.raises(TypeError, match="clean_up_tokenization_spaces must be True or False, got 1"):
        CLIPTokenizer.from_bpe(BPE, clean_up_tokenization_spaces=1)
    cleaned = CLIPTokenizer.from_bpe(BPE, clean_up_tokenization_spaces=True)
    assert cleaned.decode(cleaned(["Hello , world !"])[0][0]) == "hello, world!"


def test_a_gzip_bomb_merges_file_is_read_only_as_far_as_its_merges_go(tmp_path):
    import tracemalloc

    bomb = tmp_path / "bpe.txt.gz"
    bomb.write_bytes(gzip.compress(b"#version: 0.2\n" + b"a" * (64 << 20), compresslevel=9))  # ~64 KB
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"expected at least 1 merges in .*bpe.txt.gz, got 0"):
            CLIPTokenizer.from_bpe(bomb, vocab_size=515)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # (the whole file was decompressed: 64 MiB)
    bomb.write_bytes(gzip.compress(b"#version: 0.2\n" + b"a" * (1 << 20) + b"\n"))  # a line within what is read
    with pytest.raises(ValueError, match=r"line 2 of .* got 'a{200}'... \(1048576 characters\)$"):
        CLIPTokenizer.from_bpe(bomb)  # (the whole line was the message)


def write_small_clip(
    directory, merges: list[str], extra: tuple[str, ...] = (), header: str = "#version: 0.2\n"
) -> None:
    """vocab.json (the byte pieces, each merge's result once, ``extra`` tokens, the two special tokens)
    and merges.txt (``header``, then ``merges``, a line each)."""
    pieces = list(byte_characters().values())
    merged = list(dict.fromkeys("".join(m.split()) for m in merges))
    tokens = pieces + [p + "</w>" for p in pieces] + merged + list(extra) + ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text(header + "".join(f"{m}\n" for m in merges))


def test_a_merges_txt_read_otherwise_by_transformers_is_refused_naming_the_line(tmp_path):
    """Found by a review: without its '#version' line a merges.txt was read whole, while transformers skips
    its first line whatever it holds (losing a merge); a repeated merge, where the vocabulary's size let it
    through, took the rank of its last line (the tokenizers library's) where transformers keeps its first;
    a merge into a token vocab.json lacks was the library's error, naming neither file nor line."""
    ids = lambda tok: (
        tok(["abcd"])["input_ids"][0] if isinstance(tok, HFFastTokenizer) else tok(["abcd"])[0][0].tolist()
    )  # noqa: E731
    write_small_clip(tmp_path / "plain", ["a b", "b c"])
    write_small_clip(tmp_path / "headless", ["a b", "b c"], header="")
    reference = {name: ids(HFFastTokenizer.from_pretrained(tmp_path / name)) for name in ("plain", "headless")}
    assert reference["plain"] != reference["headless"]  # "a b" lost: "bc" merged first
    assert ids(CLIPTokenizer.from_directory(tmp_path / "plain")) == reference["plain"] == [514, 512, 66, 323, 515]
    with pytest.raises(
        ValueError, match=r"^merges.txt: line 1 of .*merges.txt must be the '#version: ...' header .*, got 'a b'$"
    ):
        CLIPTokenizer.from_directory(tmp_path / "headless")
    write_small_clip(tmp_path / "repeat", ["a b", "b c", "a b"], extra=("zz",))  # 3 merges, 3 tokens
    assert ids(HFFastTokenizer.from_pretrained(tmp_path / "repeat"))[1:-1] == [512, 66, 323]  # "ab": ranked at line 2
    with pytest.raises(ValueError, match=r"^merges: line 4 of .*merges.txt repeats line 2 \('a b'\)$"):
        CLIPTokenizer.from_directory(tmp_path / "repeat")
    write_small_clip(tmp_path / "lacking", ["a b", "b c"])
    (tmp_path / "lacking" / "merges.txt").write_text("#version: 0.2\na b\nb x\n")
    with pytest.raises(Exception, match=r"Token `bx` out of vocabulary"):  # (the library's own Exception)
        HFFastTokenizer.from_pretrained(tmp_path / "lacking")
    with pytest.raises(
        ValueError, match=r"^merges.txt: line 3 of .*merges.txt merges 'b' and 'x': expected .* lacks \['bx'\]$"
    ):
        CLIPTokenizer.from_directory(tmp_path / "lacking")


def test_merge_lines_split_at_any_white_space_and_trailing_blank_lines_are_read_as_transformers_reads_them(tmp_path):
    """A tab between the pieces, or blank lines at the end, were refused; transformers (and open_clip)
    split each line at white space and strip the file."""
    write_small_clip(tmp_path, ["a b", "b c"])
    (tmp_path / "merges.txt").write_text("#version: 0.2\na\tb\nb  c\n\n\n")
    reference = HFFastTokenizer.from_pretrained(tmp_path)(["abcd", "bca"], padding=True)["input_ids"]
    assert (
        CLIPTokenizer.from_directory(tmp_path)(["abcd", "bca"])[0].tolist()
        == reference
        == [[514, 512, 66, 323, 515], [514, 513, 320, 515, 515]]
    )


def test_a_token_only_tokenizer_config_adds_to_a_tokenizer_json_directory_is_refused(tmp_path):
    """Found by a review: beside a tokenizer.json, tokenizer_config.json's added_tokens_decoder was not
    read, though transformers adds the tokens it lists (reading "a zq b" as [514, 320, 516, 321, 515],
    where ours spelt "zq" in two pieces). The tokens tokenizer.json adds itself are read with it."""
    write_small_clip(tmp_path / "src", ["a b", "b c"])
    HFFastTokenizer.from_pretrained(tmp_path / "src").save_pretrained(tmp_path / "fast")
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / "fast" / name).unlink()
    config_path = tmp_path / "fast" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["added_tokens_decoder"]["516"] = {"content": "zq", "special": False, "normalized": True}
    config_path.write_text(json.dumps(config))
    assert HFFastTokenizer.from_pretrained(tmp_path / "fast")(["a zq b"])["input_ids"] == [[514, 320, 516, 321, 515]]
    with pytest.raises(
        ValueError, match=r"^tokenizer_config.json: .* adds tokens \['zq'\] to the vocabulary; only CLIP's"
    ):
        CLIPTokenizer.from_directory(tmp_path / "fast")
    HFFastTokenizer.from_pretrained(tmp_path / "fast").save_pretrained(tmp_path / "both")  # now in tokenizer.json too
    assert CLIPTokenizer.from_directory(tmp_path / "both")(["a zq b"], max_length=9)[0].tolist() == [
        [514, 320, 516, 321, 515]
    ]


def test_a_tokenizer_json_of_transformers_before_4_17_is_refused(tmp_path):
    """Its pre-tokeniser (ByteLevel alone, not CLIP's word split then bytes) was run as it stood; transformers'
    CLIPTokenizerFast refuses such a file, as CLIP's tokenisation differs there."""
    write_small_clip(tmp_path / "src", ["a b", "b c"])
    HFFastTokenizer.from_pretrained(tmp_path / "src").save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / "tokenizer.json"
    spec = json.loads(path.read_text())
    path.write_text(
        json.dumps(
            {
                **spec,
                "pre_tokenizer": {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": True,
                },
            }
        )
    )
    with pytest.raises(TypeError, match="does not match the expected format"):
        HFFastTokenizer.from_pretrained(tmp_path / "old")
    with pytest.raises(
        ValueError, match=rf"^tokenizer.json: pre_tokenizer in {path} must be a Sequence .*, got ByteLevel$"
    ):
        CLIPTokenizer.from_directory(tmp_path / "old")


@pytest.fixture(scope="module")
def small_clip_json(tmp_path_factory) -> dict:
    """The tokenizer.json transformers 4.57's CLIPTokenizerFast writes for a small vocabulary (write_small_clip's,
    merges "a b" and "b c"; the start and end tokens are 514 and 515)."""
    directory = tmp_path_factory.mktemp("small_clip")
    write_small_clip(directory / "src", ["a b", "b c"])
    HFFastTokenizer.from_pretrained(directory / "src").save_pretrained(directory / "fast")
    return json.loads((directory / "fast" / "tokenizer.json").read_text())


def with_post_processor_ids(spec: dict, start_id: int, end_id: int) -> dict:
    """``spec`` with its RobertaProcessing making <|startoftext|> text <|endoftext|> with these ids."""
    processor = {**spec["post_processor"], "cls": ["<|startoftext|>", start_id], "sep": ["<|endoftext|>", end_id]}
    return {**spec, "post_processor": processor}


def tokenizer_json_directory(directory, spec: dict):
    """A directory holding the tokenizer.json ``spec`` alone (transformers reads it without a config)."""
    directory.mkdir()
    (directory / "tokenizer.json").write_text(json.dumps(spec))
    return directory


def reference_ids_and_texts(directory, texts: list[str]) -> tuple[list[list[int]], list[str]]:
    """CLIPTokenizerFast's ids of ``texts`` (padded to the longest) and its decoding of each row."""
    reference = HFFastTokenizer.from_pretrained(directory)
    ids = reference(texts, padding=True)["input_ids"]
    return ids, [reference.decode(row, skip_special_tokens=True) for row in ids]


SMALL_TEXTS = ["Abcd  BCA", "e\u0301 ab's", "a.b!!c 12"]  # (e and a combining acute: "é" after NFC)
TEMPLATE = {
    "type": "TemplateProcessing",
    "single": [
        {"SpecialToken": {"id": "<|startoftext|>", "type_id": 0}},
        {"Sequence": {"id": "A", "type_id": 0}},
        {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
    ],
    "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {
        name: {"id": name, "ids": [i], "tokens": [name]}
        for name, i in (("<|startoftext|>", 514), ("<|endoftext|>", 515))
    },
}


def older_layout(spec: dict) -> dict:
    """``spec`` as older tokenizers versions wrote it: no use_regex in the ByteLevel steps, no fuse_unk,
    byte_fallback or ignore_merges in the model, a null continuing_subword_prefix."""
    spec = json.loads(json.dumps(spec))
    for step in (spec["pre_tokenizer"]["pretokenizers"][1], spec["decoder"]):
        del step["use_regex"]
    for key in ("fuse_unk", "byte_fallback", "ignore_merges"):
        del spec["model"][key]
    spec["model"]["continuing_subword_prefix"] = None
    return spec


@pytest.mark.parametrize(
    "layout",
    [
        lambda spec: spec,
        lambda spec: {**spec, "post_processor": TEMPLATE},
        older_layout,
        lambda spec: {**spec, "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False}},
    ],
    ids=["transformers-4.57", "template-processing", "older-layout", "byte-level-decoder-options"],
)
def test_a_clip_tokenizer_json_in_each_layout_reads_as_transformers_reads_it(small_clip_json, tmp_path, layout):
    directory = tokenizer_json_directory(tmp_path / "clip", layout(small_clip_json))
    ids, texts = reference_ids_and_texts(directory, SMALL_TEXTS)
    assert (ids, texts) == reference_ids_and_texts(
        tokenizer_json_directory(tmp_path / "plain", small_clip_json), SMALL_TEXTS
    )
    ours = CLIPTokenizer.from_directory(directory)
    assert ours(SMALL_TEXTS, max_length=20)[0].tolist() == ids
    assert [ours.decode(row) for row in ids] == texts == ["abcd bca", "é ab 's", "a . b !! c 1 2"]
    assert ids[0] == [514, 512, 66, 323, 513, 320, 515, 515, 515, 515]


def _edit(path: str, value):
    """A change of ``spec`` at the dotted ``path`` (list indices as numbers; None as the value deletes)."""

    def edit(spec: dict) -> dict:
        spec = json.loads(json.dumps(spec))
        *parents, last = [int(key) if key.isdigit() else key for key in path.split(".")]
        node = spec
        for key in parents:
            node = node[key]
        if value is None and isinstance(node, list):
            del node[last]
        else:
            node[last] = value
        return spec

    return edit


@pytest.mark.parametrize(
    "edit, key, found",
    [
        (_edit("post_processor", None), "post_processor", None),  # transformers adds no start and end tokens
        (lambda spec: with_post_processor_ids(spec, 515, 514), "post_processor", None),  # the two swapped
        (_edit("normalizer.normalizers.2", None), "normalizer", None),  # no lower-casing
        (_edit("normalizer.normalizers.0", None), "normalizer", None),  # no NFC
        (_edit("normalizer", None), "normalizer", None),
        (_edit("pre_tokenizer.pretokenizers.0.pattern.Regex", r"\S+"), "pre_tokenizer", None),  # another word split
        (_edit("pre_tokenizer.pretokenizers.1.add_prefix_space", True), "pre_tokenizer", None),
        (_edit("decoder", None), "decoder", None),  # the byte characters left as they are
        (
            _edit("decoder", {"type": "Metaspace", "replacement": "a", "prepend_scheme": "never", "split": True}),
            "decoder",
            None,
        ),
        (_edit("model.end_of_word_suffix", "</x>"), "model.end_of_word_suffix", "'</x>'"),
        (_edit("model.ignore_merges", True), "model.ignore_merges", "True"),
        (_edit("model.dropout", 1.0), "model.dropout", "1.0"),  # every merge dropped (below 1: at random)
    ],
    ids=[
        "no-post-processor",
        "post-processor-ids",
        "no-lowercase",
        "no-nfc",
        "no-normalizer",
        "word-split",
        "prefix-space",
        "no-decoder",
        "metaspace-decoder",
        "end-of-word-suffix",
        "ignore-merges",
        "dropout",
    ],
)
def test_a_tokenizer_json_whose_pipeline_is_not_clips_is_refused_naming_the_key(
    small_clip_json, tmp_path, edit, key, found
):
    """Found by a review: the file's post-processor and decoder were replaced by CLIP's (transformers runs the
    file's: with none it adds no start and end tokens, or leaves the byte characters), its normaliser,
    pre-tokeniser and BPE options run as they stood (as transformers runs them) though :meth:`save` writes the
    vocabulary and merges alone, read back with CLIP's. Transformers reads each altered file otherwise
    than CLIP's."""
    clip = reference_ids_and_texts(tokenizer_json_directory(tmp_path / "clip", small_clip_json), SMALL_TEXTS)
    altered = edit(small_clip_json)
    directory = tokenizer_json_directory(tmp_path / "altered", altered)
    assert reference_ids_and_texts(directory, SMALL_TEXTS) != clip
    path = directory / "tokenizer.json"
    found = json.dumps(altered[key]) if found is None else found  # (the file's value, as the message shows it)
    message = (
        rf"^tokenizer.json: {re.escape(key)} in {re.escape(str(path))} must .* \(CLIP's\), got {re.escape(found)}$"
    )
    with pytest.raises(ValueError, match=message):
        CLIPTokenizer.from_tokenizer_json(path)
    with pytest.raises(ValueError, match=message):
        CLIPTokenizer.from_directory(directory)


def test_transformers_reading_of_a_merges_file_tokenizer_saves_and_reads_as_transformers(ours, tmp_path):
    """open_clip's reading (a merges file's) cannot be saved; its transformers_reading() can, and then ids equal
    transformers' CLIPTokenizerFast read from the files written, special-token spellings and entities included."""
    assert not ours.reads_as_transformers
    with pytest.raises(ValueError, match=r"^save: expected transformers' reading of texts"):
        ours.save(tmp_path / "refused")
    converted = ours.transformers_reading()
    assert converted.reads_as_transformers and converted.model_max_length == ours.model_max_length
    assert (converted.start_id, converted.end_id, converted.pad_id) == (ours.start_id, ours.end_id, ours.pad_id)
    converted.save(tmp_path)
    reference = HFFastTokenizer.from_pretrained(tmp_path)
    texts = [*TEXTS, "a <|ENDOFTEXT|> b"]
    expected = reference(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")["input_ids"]
    assert torch.equal(converted(texts)[0], expected)
    # the same words, read otherwise on entities: open_clip undoes "&amp;", transformers keeps it
    assert torch.equal(converted(TEXTS[:3])[0], ours(TEXTS[:3])[0])
    assert not torch.equal(converted(TEXTS[-1:])[0], ours(TEXTS[-1:])[0])


def test_transformers_reading_keeps_a_tokenizer_json_padding_token_added_past_the_vocabulary(hf_directory, tmp_path):
    """A tokenizer.json whose padding token is one transformers added (<pad>, id 49408), read with open_clip's
    HTML unescaping: transformers_reading() refused it ("the vocabulary lacks the token(s) ['<pad>']", the BPE
    vocabulary alone read); now it keeps that id and saves files transformers reads to the same ids."""
    reference = HFFastTokenizer.from_pretrained(hf_directory)
    reference.add_special_tokens({"pad_token": "<pad>"})
    reference.save_pretrained(tmp_path / "json")
    ours = CLIPTokenizer.from_tokenizer_json(
        tmp_path / "json" / "tokenizer.json", pad_token="<pad>", unescape_html=True
    )
    converted = ours.transformers_reading()
    assert (converted.pad_id, converted.vocab_size, converted.reads_as_transformers) == (49408, 49409, True)
    converted.save(tmp_path / "saved")
    texts = [*TEXTS, "a <pad> b"]
    saved = HFFastTokenizer.from_pretrained(tmp_path / "saved")
    expected = saved(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")["input_ids"]
    assert torch.equal(converted(texts)[0], expected)
    assert converted(["a", "a b"])[0].tolist() == [[49406, 320, 49407, 49408], [49406, 320, 321, 49407]]
