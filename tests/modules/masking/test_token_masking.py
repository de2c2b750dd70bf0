import pytest
import torch

from torchflava.modules.masking import MaskedTokens, TokenMasker, mask_tokens

VOCAB = 1000
PAD, CLS, SEP, MASK = 0, 101, 102, 103
SPECIAL = (PAD, CLS, SEP, MASK)
FILLER = 500  # an ordinary id written into padding positions: only padding_mask keeps them out


def text_batch(batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] ordinary ids [SEP] then padding (id FILLER), real lengths in [2, length]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(104, VOCAB, (batch, length), generator=g)
    lengths = torch.randint(2, length + 1, (batch,), generator=g)
    columns = torch.arange(length)
    padding = columns >= lengths[:, None]
    ids[:, 0] = CLS
    ids[torch.arange(batch), lengths - 1] = SEP
    ids[padding] = FILLER
    return ids, padding


def run(ids, padding, seed=0, **kwargs):
    kwargs = dict(vocab_size=VOCAB, mask_token_id=MASK, special_token_ids=SPECIAL, padding_mask=padding, **kwargs)
    return mask_tokens(ids, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.fixture(scope="module")
def big():
    ids, padding = text_batch(512, 128)
    original = ids.clone()
    out = run(ids, padding)
    return ids, padding, original, out


def test_output_types_and_input_untouched(big):
    ids, padding, original, out = big
    assert isinstance(out, MaskedTokens)
    assert out.input_ids.shape == ids.shape and out.input_ids.dtype == ids.dtype
    assert out.labels.shape == ids.shape and out.labels.dtype == torch.long
    assert torch.equal(ids, original)
    assert out.input_ids.data_ptr() != ids.data_ptr()


def test_selection_rate_and_80_10_10_split(big):
    ids, padding, _, out = big
    eligible = ~padding & ~torch.isin(ids, torch.tensor(SPECIAL))
    selected = out.labels != -100
    assert eligible.sum() > 30000
    assert abs(selected.sum().item() / eligible.sum().item() - 0.15) < 0.01
    n = selected.sum().item()
    masked = (selected & (out.input_ids == MASK)).sum().item()
    kept = (selected & (out.input_ids == ids)).sum().item()
    replaced = (selected & (out.input_ids != MASK) & (out.input_ids != ids)).sum().item()
    assert masked + kept + replaced == n
    assert abs(masked / n - 0.8) < 0.02
    assert abs(kept / n - 0.1) < 0.02  # a random id equal to the original counts as kept (~0.1%)
    assert abs(replaced / n - 0.1) < 0.02
    # Random ids are ordinary ids in range, never special, spread over the vocabulary.
    random_ids = out.input_ids[selected & (out.input_ids != MASK) & (out.input_ids != ids)]
    assert random_ids.min() >= 0 and random_ids.max() < VOCAB
    assert not torch.isin(random_ids, torch.tensor(SPECIAL)).any()
    quarters = torch.bincount(random_ids // 250, minlength=4).float() / random_ids.numel()
    assert bool(((quarters - 0.25).abs() < 0.07).all())  # uniform over the vocabulary
    assert (random_ids < 104).any()  # ids below the special ones can be drawn too


def test_labels_hold_originals_at_selected_positions_only(big):
    ids, _, _, out = big
    selected = out.labels != -100
    assert torch.equal(out.labels[selected], ids[selected])
    assert torch.equal(out.input_ids[~selected], ids[~selected])  # unselected tokens never change


def test_special_and_padding_tokens_never_selected(big):
    ids, padding, _, out = big
    protected = padding | torch.isin(ids, torch.tensor(SPECIAL))
    assert protected.sum() > 1000
    assert bool((out.labels[protected] == -100).all())
    assert torch.equal(out.input_ids[protected], ids[protected])
    assert bool((out.input_ids[padding] == FILLER).all())  # ordinary id, kept out by padding_mask alone


def test_every_row_with_eligible_tokens_gets_a_selection():
    ids, padding = text_batch(64, 12, seed=1)
    ids[5, 1:] = SEP  # row 5: no eligible token at all
    out = run(ids, padding, probability=1e-6)
    counts = (out.labels != -100).sum(dim=1)
    assert counts[5] == 0
    has_eligible = (~padding & ~torch.isin(ids, torch.tensor(SPECIAL))).any(dim=1)
    assert has_eligible.sum() > 50
    assert bool((counts[has_eligible] == 1).all())
    # The forced pick is spread over the eligible positions, not always the first.
    positions = (out.labels != -100).float().argmax(dim=1)[has_eligible]
    assert positions.unique().numel() >= 5
    # Without padding_mask a row of specials only still gets nothing, and the batch is never all ignored.
    only_specials = torch.tensor([[CLS, SEP, PAD, PAD], [CLS, 7, SEP, PAD]])
    out = mask_tokens(only_specials, vocab_size=VOCAB, mask_token_id=MASK, special_token_ids=SPECIAL, probability=1e-6)
    assert out.labels.tolist() == [[-100] * 4, [-100, 7, -100, -100]]


def test_deterministic_given_the_generator_seed():
    ids, padding = text_batch(16, 32)
    first, again, other = run(ids, padding, seed=3), run(ids, padding, seed=3), run(ids, padding, seed=4)
    assert torch.equal(first.input_ids, again.input_ids) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.labels, other.labels)


def test_uses_only_the_given_generator():
    ids, padding = text_batch(4, 16)
    state = torch.get_rng_state()
    run(ids, padding)
    assert torch.equal(torch.get_rng_state(), state)


def test_extreme_settings_and_ignore_index():
    ids, padding = text_batch(8, 20)
    eligible = ~padding & ~torch.isin(ids, torch.tensor(SPECIAL))
    everything = run(ids, padding, probability=1.0, replace_with_mask=1.0, replace_with_random=0.0)
    assert torch.equal(everything.input_ids, torch.where(eligible, MASK, ids))
    assert torch.equal(everything.labels, torch.where(eligible, ids, -100))
    kept = run(ids, padding, probability=1.0, replace_with_mask=0.0, replace_with_random=0.0, ignore_index=-1)
    assert torch.equal(kept.input_ids, ids)
    assert torch.equal(kept.labels, torch.where(eligible, ids, -1))
    randomised = run(ids, padding, probability=1.0, replace_with_mask=0.0, replace_with_random=1.0)
    changed = randomised.input_ids != ids
    assert bool((changed <= eligible).all()) and changed.sum() >= eligible.sum() - 2
    # An int32 batch stays int32.
    out = run(ids.int(), padding)
    assert out.input_ids.dtype == torch.int32 and out.labels.dtype == torch.long
    assert torch.equal(out.labels, run(ids, padding).labels)


def test_random_replacement_never_gives_the_mask_token():
    ids = torch.full((64, 64), 5)
    special = [0, 1, 2]
    out = mask_tokens(
        ids,
        vocab_size=6,
        mask_token_id=3,
        special_token_ids=special,
        probability=1.0,
        replace_with_mask=0.0,
        replace_with_random=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert set(out.input_ids.unique().tolist()) == {4, 5}


GOOD = dict(vocab_size=VOCAB, mask_token_id=MASK, special_token_ids=SPECIAL)


@pytest.mark.parametrize(
    "ids, kwargs, error, match",
    [
        (torch.rand(2, 5), {}, TypeError, "input_ids"),
        ([[1, 2, 3]], {}, TypeError, "input_ids"),
        (torch.ones(5, dtype=torch.long), {}, ValueError, "input_ids"),
        (torch.full((2, 5), VOCAB), {}, ValueError, "input_ids"),
        (torch.full((2, 5), -1), {}, ValueError, "input_ids"),
        (None, dict(vocab_size=0), ValueError, "vocab_size"),
        (None, dict(vocab_size=10.0), TypeError, "vocab_size"),
        (None, dict(mask_token_id=VOCAB), ValueError, "mask_token_id"),
        (None, dict(mask_token_id=-1), ValueError, "mask_token_id"),
        (None, dict(special_token_ids=[0, VOCAB]), ValueError, "special_token_ids"),
        (None, dict(special_token_ids=[0, 1.5]), TypeError, "special_token_ids"),
        (None, dict(special_token_ids=5), TypeError, "special_token_ids"),
        (None, dict(padding_mask=torch.zeros(2, 4, dtype=torch.bool)), ValueError, "padding_mask"),
        (None, dict(padding_mask=torch.zeros(2, 5)), TypeError, "padding_mask"),
        (None, dict(probability=0.0), ValueError, "probability"),
        (None, dict(probability=1.5), ValueError, "probability"),
        (None, dict(probability="0.15"), TypeError, "probability"),
        (None, dict(replace_with_mask=-0.1), ValueError, "replace_with_mask"),
        (None, dict(replace_with_random=1.1), ValueError, "replace_with_random"),
        (None, dict(replace_with_mask=0.8, replace_with_random=0.3), ValueError, "replace_with_mask \\+ replace_with"),
        (None, dict(ignore_index=None), TypeError, "ignore_index"),
        (None, dict(ignore_index=5), ValueError, "ignore_index must lie outside the vocabulary"),  # a real id
        (None, dict(vocab_size=4, mask_token_id=3, special_token_ids=[0, 1, 2]), ValueError, "replace_with_random"),
    ],
)
def test_bad_arguments(ids, kwargs, error, match):
    if ids is None:
        ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(error, match=match):
        mask_tokens(ids, **{**GOOD, **kwargs})


@pytest.mark.parametrize("replace_with_random", [0.1, 0.0])
def test_rows_equal_one_call_per_row_on_its_own_generator(replace_with_random):
    # The collator masks every caption from the caption's own generator; rows() does it in one pass
    # and must give exactly what one call per row (sliced to its length) gives, padding ignored.
    ids, padding = text_batch(16, 12, seed=3)
    lengths = (~padding).sum(1).tolist()
    lengths[0], lengths[1] = 0, 1  # an empty row and a row of one (special) token
    settings = dict(vocab_size=VOCAB, mask_token_id=MASK, special_token_ids=SPECIAL, probability=0.3)
    masker = TokenMasker(**settings, replace_with_random=replace_with_random, ignore_index=-7)
    got = masker.rows(ids, lengths, [torch.Generator().manual_seed(100 + r) for r in range(16)])
    assert torch.equal(got.input_ids[0], ids[0]) and (got.labels[0] == -7).all()  # empty row: nothing drawn
    for row, n in enumerate(lengths[1:], start=1):
        want = mask_tokens(
            ids[row : row + 1, :n],
            **settings,
            replace_with_random=replace_with_random,
            ignore_index=-7,
            generator=torch.Generator().manual_seed(100 + row),
        )
        assert torch.equal(got.input_ids[row, :n], want.input_ids[0]), row
        assert torch.equal(got.labels[row, :n], want.labels[0]), row
        assert torch.equal(got.input_ids[row, n:], ids[row, n:]), row  # padding untouched
        assert (got.labels[row, n:] == -7).all(), row
    assert (got.labels != -7).sum() > 16  # something was selected


def test_rows_refuse_mismatched_lengths_and_generators():
    masker = TokenMasker(**GOOD)
    ids = torch.zeros(2, 5, dtype=torch.long)
    g = [torch.Generator(), torch.Generator()]
    with pytest.raises(ValueError, match="one entry per row \\(2\\), got 1 and 2"):
        masker.rows(ids, [5], g)
    with pytest.raises(ValueError, match="one entry per row \\(2\\), got 2 and 1"):
        masker.rows(ids, [5, 5], g[:1])
    with pytest.raises(ValueError, match="lengths must be in \\[0, 5\\]"):
        masker.rows(ids, [5, 6], g)
    with pytest.raises(TypeError, match="lengths must be ints \\(or an integer tensor\\), got \\[5, 2.5\\]"):
        masker.rows(ids, [5, 2.5], g)
    with pytest.raises(TypeError, match="lengths must be ints"):
        masker.rows(ids, torch.tensor([5.0, 2.0]), g)
    a = masker.rows(ids + 200, torch.tensor([5, 3]), [torch.Generator().manual_seed(i) for i in range(2)])
    b = masker.rows(ids + 200, [5, 3], [torch.Generator().manual_seed(i) for i in range(2)])
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    with pytest.raises(TypeError, match="generators must be torch.Generator"):
        masker.rows(ids, [5, 5], [0, 1])
    with pytest.raises(ValueError, match="vocab"):  # ids outside the vocabulary
        masker.rows(torch.full((2, 5), 10**6), [5, 5], g)


def test_ids_of_a_dtype_too_small_for_the_vocabulary_are_refused_and_uint8_ids_range_checked_right():
    """With uint8 ids and a vocabulary of 301, special id 300 wrapped to 44 (token 44 never masked) and a
    valid id 45 was refused as out of range."""
    from torchflava.modules.layers.text_embedding import check_token_ids
    from torchflava.modules.masking import TokenMasker

    check_token_ids(torch.tensor([[45]], dtype=torch.uint8), 301)  # in range: no error (it was refused)
    masker = TokenMasker(vocab_size=301, mask_token_id=4, special_token_ids=(0, 300), probability=0.5)
    with pytest.raises(
        TypeError, match=r"input_ids must have an integer dtype that holds ids up to 300 .* got torch.uint8"
    ):
        masker(torch.tensor([[43, 44]], dtype=torch.uint8), generator=torch.Generator().manual_seed(0))
    masker(torch.tensor([[43, 44]], dtype=torch.int16), generator=torch.Generator().manual_seed(0))  # holds 300


def test_a_seed_for_the_generator_and_one_generator_for_all_rows_are_named():
    """torch's rand() listed its signatures for the first; len() of a Generator failed for the second."""
    ids = torch.randint(3, 30, (2, 6))
    with pytest.raises(TypeError, match=r"^generator must be a torch.Generator or None, got int 5 \(seed one with"):
        mask_tokens(ids, vocab_size=30, mask_token_id=1, special_token_ids=[0], generator=5)
    masker = TokenMasker(vocab_size=30, mask_token_id=1, special_token_ids=[0])
    with pytest.raises(
        TypeError, match="^generators must be a sequence of torch.Generator, one per row, got Generator$"
    ):
        masker.rows(ids, [6, 6], torch.Generator())


def test_rows_refuse_ids_off_the_cpu():
    """rows() draws on the CPU: ids elsewhere met the draws inside torch ("Tensor on device cpu is not on the
    expected device meta!")."""
    masker = TokenMasker(**GOOD)
    ids = torch.zeros(2, 5, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match=r"^input_ids must be on the CPU, got a tensor on meta$"):
        masker.rows(ids, [5, 5], [torch.Generator(), torch.Generator()])


class _CudaGenerator(torch.Generator):
    """A CPU generator that says it lives on a GPU (the check reads only ``device``; no GPU here)."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0)


def test_rows_refuse_generators_off_the_cpu():
    masker = TokenMasker(**GOOD)
    generators = [torch.Generator(), _CudaGenerator()]
    with pytest.raises(ValueError, match=r"^generators must be CPU generators, got generators on \['cpu', 'cuda:0'\]$"):
        masker.rows(torch.zeros(2, 5, dtype=torch.long), [5, 5], generators)
