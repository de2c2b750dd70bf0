"""FLAVA pretraining batches on the shapes world (the collator through the step mixer): determinism,
rank sharding, kind mixing, masks, ITM negatives, unusable items, argument errors, and a forward
pass of a tiny FLAVA on each kind."""

from collections import Counter
import math

import pytest
import torch
from torch.utils.data import Dataset

from torchflava.data.flava import FLAVAPretrainingCollator, flava_pretraining_batches
from torchflava.data.mixing import MixedBatch, MixedBatches, SkippedSample
from torchflava.data.samples import BadSample, Sample
from torchflava.data.shapes import ShapesWorld
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import PretrainingImageTransform
from torchflava.models import flava_model, flava_model_for_pretraining
from torchflava.modules.codebook import dalle_encoder

EQUAL = {"pairs": 1.0, "images": 1.0, "texts": 1.0}
IMAGE_FIELDS = {"image", "image_patch_mask", "image_tokens"}
TEXT_FIELDS = {"text", "text_masked", "text_attention_mask", "mlm_labels"}
FIELDS = {"pairs": IMAGE_FIELDS | TEXT_FIELDS | {"itm_labels"}, "images": IMAGE_FIELDS, "texts": TEXT_FIELDS}
NUM_MASKED = 6
CODEBOOK_VOCAB = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny codebook's convolutions crawl when two threads compete with a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> WordPieceTokenizer:
    texts, pairs = ShapesWorld("texts", 300, seed=0), ShapesWorld("pairs", 100, seed=0)
    return WordPieceTokenizer.train([texts.caption(i) for i in range(300)] + [pairs.caption(i) for i in range(100)])


@pytest.fixture(scope="module")
def codebook():
    torch.manual_seed(0)
    return dalle_encoder(hidden_dim=8, blocks_per_group=1, vocab_size=CODEBOOK_VOCAB)


def shapes_sources() -> dict:
    return {
        "pairs": ShapesWorld("pairs", 40, image_size=32, seed=0),
        "images": ShapesWorld("images", 40, image_size=32, seed=0),
        "texts": ShapesWorld("texts", 40, image_size=32, seed=0),
    }


def collator(tokenizer, codebook, **kwargs) -> FLAVAPretrainingCollator:
    return FLAVAPretrainingCollator(
        tokenizer,
        PretrainingImageTransform(32, 32),
        codebook=codebook,
        patch_grid=4,
        num_masked_patches=NUM_MASKED,
        min_mask_block=2,
        max_text_length=40,
        **kwargs,
    )


def dataset(collate, *, sources=None, ratios=EQUAL, batch=4, num_steps=12, **kwargs) -> MixedBatches:
    sources = shapes_sources() if sources is None else sources
    return flava_pretraining_batches(sources, ratios, collate, global_batch_size=batch, num_steps=num_steps, **kwargs)


def present(batch: dict) -> set:
    return {name for name, value in batch.items() if value is not None}


def assert_same(a: MixedBatch, b: MixedBatch) -> None:
    assert a.kind == b.kind and a.skipped == b.skipped
    assert present(a.batch) == present(b.batch)
    for name in present(a.batch):
        assert torch.equal(a.batch[name], b.batch[name]), name


def rows(item: MixedBatch) -> list[dict]:
    """Each row's fields, texts cut to their real length (padding depends on the other rows)."""
    batch, out = item.batch, []
    size = (batch["image"] if "image" in batch else batch["text"]).shape[0]
    for i in range(size):
        row = {
            name: batch[name][i]
            for name in ("image", "image_patch_mask", "image_tokens", "itm_labels")
            if name in batch
        }
        if "text" in batch:
            n = int(batch["text_attention_mask"][i].sum())
            row.update({name: batch[name][i, :n] for name in ("text", "text_masked", "mlm_labels")})
        out.append(row)
    return out


def text_of(tokenizer, batch: dict, row: int) -> str:
    n = int(batch["text_attention_mask"][row].sum())
    return tokenizer.decode(batch["text"][row, 1 : n - 1].tolist())


class Recording(Dataset):
    """Wraps a source: logs every index read, and raises BadSample for the indices in ``bad``."""

    def __init__(self, inner, bad=()):
        self.inner, self.bad, self.log, self.raised = inner, set(bad), [], []

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        self.log.append(index)
        if index in self.bad:
            self.raised.append((index, f"broken item {index}"))
            raise BadSample(index, f"broken item {index}")
        return self.inner[index]


@pytest.fixture(scope="module")
def reference(tokenizer, codebook) -> list[MixedBatch]:
    """Steps 0-7 of the equal mix with a global batch of 4 on one rank."""
    data = dataset(collator(tokenizer, codebook))
    return [data[step] for step in range(8)]


def test_reference_covers_every_kind(reference):
    kinds = ["images", "pairs", "pairs", "pairs", "texts", "texts", "images", "texts"]
    assert [item.kind for item in reference] == kinds


def test_fields_per_kind(reference, tokenizer):
    for item in reference:
        assert isinstance(item, MixedBatch) and isinstance(item.batch, dict)
        assert present(item.batch) == FIELDS[item.kind]
        assert item.skipped == []
        batch = item.batch
        if item.kind != "texts":
            assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
            assert batch["image_patch_mask"].shape == (4, 16) and batch["image_patch_mask"].dtype == torch.bool
            assert batch["image_tokens"].shape == (4, 16) and batch["image_tokens"].dtype == torch.long
            assert 0 <= int(batch["image_tokens"].min()) and int(batch["image_tokens"].max()) < CODEBOOK_VOCAB
        if item.kind != "images":
            length = batch["text"].shape[1]
            for name in TEXT_FIELDS:
                assert batch[name].shape == (4, length) and batch[name].dtype == torch.long
            assert int(batch["text_attention_mask"].sum(dim=1).max()) == length  # padded to the longest row
            assert int(batch["text"].max()) < tokenizer.vocab_size
        if item.kind == "pairs":
            assert batch["itm_labels"].shape == (4,) and batch["itm_labels"].dtype == torch.long


def test_every_patch_mask_has_exactly_num_masked_patches(reference):
    masks = torch.cat([item.batch["image_patch_mask"] for item in reference if item.kind != "texts"])
    assert masks.shape == (20, 16)  # 5 of the 8 steps carry images
    assert masks.sum(dim=1).tolist() == [NUM_MASKED] * 20
    assert len({tuple(m.tolist()) for m in masks}) > 10  # masks differ between items


def test_mlm_labels_only_at_selected_positions(reference, tokenizer):
    selected_total = changed_total = 0
    for item in reference:
        if item.kind == "images":
            continue
        b = item.batch
        lengths = b["text_attention_mask"].sum(dim=1)
        padding = b["text_attention_mask"] == 0
        selected = b["mlm_labels"] != -100
        changed = b["text_masked"] != b["text"]
        assert torch.equal(b["mlm_labels"][selected], b["text"][selected])  # labels hold the original ids
        assert not bool((changed & ~selected).any())  # only selected tokens change
        rows_ = torch.arange(b["text"].shape[0])
        assert bool((b["text"][:, 0] == tokenizer.cls_id).all())
        assert bool((b["text"][rows_, lengths - 1] == tokenizer.sep_id).all())
        protected = padding.clone()
        protected[:, 0] = True
        protected[rows_, lengths - 1] = True
        assert not bool((selected & protected).any())  # never CLS, SEP or padding
        assert bool((b["text"][padding] == tokenizer.pad_id).all())
        assert bool((b["text_masked"][padding] == tokenizer.pad_id).all())
        assert not bool(torch.isin(b["mlm_labels"][selected], torch.tensor(tokenizer.special_ids)).any())
        selected_total += int(selected.sum())
        changed_total += int(changed.sum())
    assert selected_total > 0 and 0 < changed_total <= selected_total


def test_items_are_a_function_of_the_step(reference, tokenizer, codebook):
    fresh = dataset(collator(tokenizer, codebook))  # new sources, collator and dataset objects
    for step in (7, 1, 4, 0):  # any order
        assert_same(fresh[step], reference[step])
    assert_same(fresh[1], fresh[1])
    # A longer run has the same first steps (the step stream does not depend on num_steps).
    longer = dataset(collator(tokenizer, codebook), num_steps=40)
    for step in range(8):
        assert_same(longer[step], reference[step])
    # Another seed gives other batches.
    other = dataset(collator(tokenizer, codebook), seed=1)
    kinds = [other.kind(step) for step in range(8)]
    assert kinds != [item.kind for item in reference]


def test_two_ranks_hold_exactly_the_items_of_one(tokenizer, codebook):
    collate = collator(tokenizer, codebook, itm_negative_probability=0.5)
    one = dataset(collate)
    rank0, rank1 = (dataset(collate, rank=r, world_size=2) for r in (0, 1))
    negatives = 0
    for step in range(6):
        whole, part0, part1 = one[step], rank0[step], rank1[step]
        assert whole.kind == part0.kind == part1.kind
        assert "image" not in part0.batch or part0.batch["image"].shape[0] == 2
        expected, got = rows(whole), rows(part0) + rows(part1)
        assert len(got) == len(expected) == 4
        for e, g in zip(expected, got):
            assert e.keys() == g.keys()
            for name in e:
                assert torch.equal(e[name], g[name]), (step, name)
        if whole.kind == "pairs":
            negatives += int((whole.batch["itm_labels"] == 0).sum())
    assert negatives > 0  # ITM negatives were part of the comparison


def test_kind_frequencies_follow_ratios(tokenizer, codebook):
    collate = collator(tokenizer, codebook)
    mix = dataset(collate, ratios={"pairs": 0.5, "images": 0.3, "texts": 0.2}, num_steps=3000)
    assert len(mix) == 3000
    counts = Counter(mix.kind(step) for step in range(3000))
    assert abs(counts["pairs"] / 3000 - 0.5) < 0.03
    assert abs(counts["images"] / 3000 - 0.3) < 0.03
    assert abs(counts["texts"] / 3000 - 0.2) < 0.03
    no_images = dataset(collate, ratios={"pairs": 1.0, "images": 0.0, "texts": 2.0}, num_steps=3000)
    counts = Counter(no_images.kind(step) for step in range(3000))
    assert counts["images"] == 0 and abs(counts["texts"] / 3000 - 2 / 3) < 0.03
    # A ratio for a kind without a source is ignored.
    sources = shapes_sources()
    del sources["texts"]
    no_texts = dataset(collate, sources=sources, ratios={"pairs": 1.0, "texts": 5.0}, num_steps=500)
    assert {no_texts.kind(step) for step in range(500)} == {"pairs"}
    assert no_texts[3].kind == "pairs"


def test_each_pass_reads_every_item_once_in_a_new_order(tokenizer, codebook):
    source = Recording(ShapesWorld("pairs", 8, image_size=32))
    data = dataset(
        collator(tokenizer, codebook, itm_negative_probability=0.0), sources={"pairs": source}, ratios={"pairs": 1.0}
    )
    for step in (0, 1):
        data[step]
    first = list(source.log)
    for step in (2, 3):
        data[step]
    second = source.log[8:]
    assert sorted(first) == sorted(second) == list(range(8))
    assert first != second


def test_itm_negatives_replace_the_caption_with_another(tokenizer, codebook):
    test = ShapesWorld("test", 40, image_size=32, seed=0)  # unique captions
    captions = {test.caption(i) for i in range(40)}
    kwargs = dict(sources={"pairs": test}, ratios={"pairs": 1.0})
    negative = dataset(collator(tokenizer, codebook, itm_negative_probability=1.0), **kwargs)
    positive = dataset(collator(tokenizer, codebook, itm_negative_probability=0.0), **kwargs)
    for step in range(3):
        neg, pos = negative[step].batch, positive[step].batch
        assert neg["itm_labels"].tolist() == [0, 0, 0, 0] and pos["itm_labels"].tolist() == [1, 1, 1, 1]
        for name in IMAGE_FIELDS:
            assert torch.equal(neg[name], pos[name])  # same images, other captions
        for row in range(4):
            own, other = text_of(tokenizer, pos, row), text_of(tokenizer, neg, row)
            assert own in captions and other in captions and other != own


class Captions(Dataset):
    """Pairs of a plain image and a given caption."""

    def __init__(self, captions):
        self.captions = captions

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, index):
        return Sample(ShapesWorld("pairs", 1, image_size=32, seed=index)[0].image, self.captions[index])


LONG = "a red cross on the left " * 7  # 42 tokens: [CLS] + 38 of them + [SEP] fill max_text_length=40


@pytest.mark.parametrize(
    "captions",
    [
        ["a red cross at the top, large", "A Red Cross at the TOP, large", "a red  cross at the top ,large"],
        [LONG + "small", LONG + "large", LONG + "in the middle"],  # differ only past the truncation
    ],
)
def test_an_itm_negative_that_tokenizes_as_the_own_caption_stays_a_match(tokenizer, codebook, captions):
    # Every other caption gives the model the ids of the pair's own: a "negative" would be a matched
    # pair labelled 0 (raw strings were compared: the three rows were all labelled 0, each time).
    ids, _ = tokenizer(captions, max_length=40)
    assert all(torch.equal(ids[0], row) for row in ids)
    collate = collator(tokenizer, codebook, itm_negative_probability=1.0)
    data = dataset(collate, sources={"pairs": Captions(captions)}, ratios={"pairs": 1.0}, batch=3, num_steps=4)
    for step in range(4):
        batch = data[step].batch
        assert batch["itm_labels"].tolist() == [1, 1, 1]
        assert torch.equal(batch["text"], ids)


def test_itm_labels_are_0_exactly_where_the_caption_ids_changed(tokenizer, codebook):
    captions = ["a small red circle on the right", "A small RED circle on the right", "a blue square, large"]
    kwargs = dict(sources={"pairs": Captions(captions)}, ratios={"pairs": 1.0}, batch=3, num_steps=12)
    negative = dataset(collator(tokenizer, codebook, itm_negative_probability=1.0), **kwargs)
    positive = dataset(collator(tokenizer, codebook, itm_negative_probability=0.0), **kwargs)
    labels = []
    for step in range(12):
        neg, pos = negative[step].batch, positive[step].batch
        for row in range(3):
            same = text_of(tokenizer, neg, row) == text_of(tokenizer, pos, row)
            assert neg["itm_labels"][row].item() == int(same)
            labels.append(int(same))
    assert 0 < sum(labels) < len(labels)  # both cases met


class CountingTokenizer:
    """Wraps a tokenizer: counts its calls and the texts they tokenize."""

    def __init__(self, inner):
        self.inner, self.calls, self.texts = inner, 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, texts, **kwargs):
        self.calls, self.texts = self.calls + 1, self.texts + len(texts)
        return self.inner(texts, **kwargs)


def test_a_pair_batch_tokenizes_each_text_once_into_the_batch_of_its_final_captions(tokenizer):
    # The captions compared for an ITM negative were tokenized, then the chosen ones again for the
    # batch: 2 calls over 7 texts here. Row 0 takes a longer caption, row 1 a shorter one (the own
    # caption, the longest of the call, is left out: its padding must go), row 2 draws its own text.
    own = ["a red cross", "a small blue circle on the left at the top, large", "a green square on the right"]
    drawn = ["a green square on the right", "a red cross", own[2]]
    counting = CountingTokenizer(tokenizer)
    collate = collator(counting, None, itm_negative_probability=1.0)
    samples = [Sample(ShapesWorld("pairs", 1, image_size=32, seed=i)[0].image, text) for i, text in enumerate(own)]
    seeds = [11, 12, 13]
    batch = collate("pairs", samples, seeds, another=lambda row, seed, read: drawn[row])
    assert (counting.calls, counting.texts) == (1, 5)  # the 3 own captions and the 2 other ones
    assert batch["itm_labels"].tolist() == [0, 0, 1]
    expected = collate.texts(drawn, seeds)  # the batch of the captions the rows hold, tokenized alone
    assert batch["text"].shape == (3, len(tokenizer([drawn[2]], max_length=40)[0][0]))
    for name, value in expected.items():
        assert torch.equal(batch[name], value), name


def test_unusable_items_are_replaced_and_reported(tokenizer, codebook):
    source = Recording(ShapesWorld("pairs", 8, image_size=32), bad={1, 5})
    data = dataset(collator(tokenizer, codebook), sources={"pairs": source}, ratios={"pairs": 1.0}, batch=8)
    item = data[0]
    assert item.kind == "pairs"
    assert item.batch["image"].shape[0] == item.batch["text"].shape[0] == item.batch["itm_labels"].shape[0] == 8
    assert item.skipped == [SkippedSample("pairs", index, reason) for index, reason in source.raised]
    assert {1, 5} <= {s.index for s in item.skipped}  # one pass over 8 items meets both bad ones
    assert all(s.reason == f"broken item {s.index}" for s in item.skipped)
    texts = Recording(ShapesWorld("texts", 6), bad={0, 2, 4})
    item = dataset(collator(tokenizer, codebook), sources={"texts": texts}, ratios={"texts": 1.0}, batch=6)[0]
    assert item.batch["text"].shape[0] == 6 and item.kind == "texts"
    assert item.skipped == [SkippedSample("texts", index, reason) for index, reason in texts.raised]
    assert {0, 2, 4} <= {s.index for s in item.skipped}


def test_a_source_that_always_fails_raises_instead_of_hanging(tokenizer, codebook):
    source = Recording(ShapesWorld("pairs", 5, image_size=32), bad=range(5))
    data = dataset(collator(tokenizer, codebook), sources={"pairs": source}, ratios={"pairs": 1.0}, max_attempts=3)
    with pytest.raises(RuntimeError, match="pairs source gave 3 unusable samples"):
        data[0]
    assert len(source.log) == 3


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(sources={"captions": ShapesWorld("texts", 4)}, ratios={"captions": 1.0}), "captions"),
        (dict(ratios={"pairs": 1.0, "videos": 1.0}), "videos"),
        (dict(ratios={"pairs": 0.0, "images": 0.0, "texts": 0.0}), "ratios"),
        (dict(ratios={}), "ratios"),
        (dict(ratios={"pairs": -1.0, "images": 2.0}), "ratios"),
        (dict(sources={"pairs": ShapesWorld("pairs", 4)}, ratios={"texts": 1.0}), "ratios"),
        (dict(sources={"texts": []}, ratios={"texts": 1.0}), r"sources\['texts'\]"),
        (dict(batch=6, world_size=4), "global_batch_size"),
        (dict(batch=0), "global_batch_size"),
        (dict(num_steps=0), "num_steps"),
        (dict(rank=2, world_size=2), "rank"),
    ],
)
def test_dataset_argument_errors(tokenizer, codebook, change, match):
    with pytest.raises(ValueError, match=match):
        dataset(collator(tokenizer, codebook), **change)


def test_zero_world_size_is_a_value_error(tokenizer, codebook):
    with pytest.raises(ValueError, match="world_size"):
        dataset(collator(tokenizer, codebook), world_size=0)


def test_step_out_of_range(tokenizer, codebook):
    data = dataset(collator(tokenizer, codebook))
    for bad in (12, -1):
        with pytest.raises(IndexError, match=str(bad)):
            data[bad]


def test_collator_argument_errors(tokenizer, codebook):
    with pytest.raises(ValueError, match="num_masked_patches"):
        FLAVAPretrainingCollator(
            tokenizer, PretrainingImageTransform(32, 32), codebook=None, patch_grid=4, num_masked_patches=17
        )
    with pytest.raises(ValueError, match="itm_negative_probability"):
        collator(tokenizer, codebook, itm_negative_probability=1.5)


def test_the_collator_wants_one_seed_per_sample(tokenizer, codebook):
    samples = [shapes_sources()["pairs"][i] for i in range(2)]
    with pytest.raises(ValueError, match=r"^seeds: expected one per sample \(2\), got 1$"):  # (zip dropped a row)
        collator(tokenizer, codebook)("pairs", samples, [0])


def test_without_a_codebook_the_batch_carries_codebook_pixels(tokenizer):
    collate = FLAVAPretrainingCollator(
        tokenizer,
        PretrainingImageTransform(32, 16),
        codebook=None,
        patch_grid=4,
        num_masked_patches=NUM_MASKED,
        min_mask_block=2,
    )
    item = dataset(collate, ratios={"images": 1.0})[0]
    assert present(item.batch) == {"image", "image_patch_mask", "codebook_pixels"}
    pixels = item.batch["codebook_pixels"]
    assert pixels.shape == (4, 3, 16, 16) and float(pixels.min()) >= 0.1 - 1e-6 and float(pixels.max()) <= 0.9 + 1e-6


def test_tiny_flava_gives_a_finite_loss_for_each_kind(reference, tokenizer):
    torch.manual_seed(0)
    backbone = flava_model(
        image_embed_dim=32,
        image_num_layers=1,
        image_num_heads=2,
        image_mlp_dim=48,
        image_size=32,
        patch_size=8,
        text_embed_dim=24,
        text_num_layers=1,
        text_num_heads=2,
        text_mlp_dim=40,
        vocab_size=tokenizer.vocab_size,
        max_seq_len=40,
        multimodal_embed_dim=16,
        multimodal_num_layers=1,
        multimodal_num_heads=2,
        multimodal_mlp_dim=36,
        projection_dim=20,
    )
    model = flava_model_for_pretraining(backbone=backbone, build_codebook=False, image_vocab_size=CODEBOOK_VOCAB)
    expected = {"images": {"mim"}, "texts": {"mlm"}, "pairs": {"itm", "global_contrastive", "mmm_image", "mmm_text"}}
    for step in (0, 1, 4):
        item = reference[step]
        out = model(item.batch)
        losses = {name: value.detach() for name, value in out.losses._asdict().items() if value is not None}
        assert set(losses) == expected[item.kind]
        assert bool(torch.isfinite(out.loss)) and float(out.loss.detach()) > 0
        assert torch.allclose(out.loss.detach(), sum(losses.values()))
        # At initialisation the heads are close to uniform: about ln(classes) for each cross-entropy.
        for name, classes in (
            ("mim", CODEBOOK_VOCAB),
            ("mmm_image", CODEBOOK_VOCAB),
            ("mlm", tokenizer.vocab_size),
            ("mmm_text", tokenizer.vocab_size),
            ("itm", 2),
        ):
            if name in losses:
                assert abs(float(losses[name]) - math.log(classes)) < 0.6, (name, float(losses[name]))
        out.loss.backward()
        model.zero_grad()


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"min_mask_block": 0}, ValueError, "min_mask_block must be >= 1, got 0"),  # 'min_block', at the first batch
        ({"num_masked_patches": 6.0}, TypeError, "num_masked_patches must be an int, got float"),
        ({"patch_grid": 0}, ValueError, "patch_grid must be >= 1, got 0"),
        ({"max_text_length": 1}, ValueError, "max_text_length must be >= 2, got 1"),
        ({"itm_negative_probability": "0.1"}, TypeError, "itm_negative_probability must be a float, got str"),
    ],
)
def test_the_collator_checks_its_settings_when_built_under_their_names(change, error, match):
    from torchflava.data.flava import FLAVAPretrainingCollator

    class Tokenizer:
        vocab_size, mask_id, special_ids = 10, 4, (0, 1, 2, 3, 4)

    settings = {"codebook": None, "patch_grid": 4, "num_masked_patches": 3, "min_mask_block": 1, **change}
    with pytest.raises(error, match=match):
        FLAVAPretrainingCollator(Tokenizer(), None, **settings)
