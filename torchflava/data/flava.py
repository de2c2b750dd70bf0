"""FLAVA pretraining batches: BEiT block masks, BERT masks, ITM negatives and codebook ids.

:class:`FLAVAPretrainingCollator` turns samples of one kind (``"pairs"``, ``"images"`` or
``"texts"``) into the mapping of tensors that ``FLAVAForPretraining`` takes, and
:func:`flava_pretraining_batches` mixes the three kinds by ratio with the step-indexed
:class:`~torchflava.data.mixing.MixedBatches`. Every random choice about an item (crop, masks,
whether its caption is swapped for another's) comes from the item's own seed, so an item is the
same whichever batch or rank it lands in.
"""

import random
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from torchflava.data.mixing import Another, MixedBatches, check_seeds, item_seed
from torchflava.data.samples import Sample
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import PretrainingImageTransform
from torchflava.modules.masking import TokenMasker, block_mask
from torchflava.utils.checks import check_int, check_probability

KINDS = ("pairs", "images", "texts")


def _caption(source: Dataset, index: int) -> str:
    """Item ``index``'s text (without decoding its image when the source can say it alone)."""
    return source.caption(index) if hasattr(source, "caption") else source[index].text


class FLAVAPretrainingCollator:
    """Turns a list of samples of one kind into a FLAVA pretraining batch with its masks.

    The batch is a ``dict`` of tensors with the field names of ``FLAVAForPretraining``'s batch:
    ``image`` (B, 3, H, W), ``image_patch_mask`` (B, N) bool, ``image_tokens`` (B, N) codebook ids
    (or ``codebook_pixels`` without a codebook) for images; ``text``, ``text_attention_mask``,
    ``text_masked`` and ``mlm_labels`` (B, L) for texts; ``itm_labels`` (B,) for pairs.
    Per-item randomness comes from the item's seed, so an item is processed identically
    whichever batch or rank it lands in.

    Args:
        tokenizer (WordPieceTokenizer): text -> ids.
        image_transform (PretrainingImageTransform): image -> pixels and codebook pixels.
        codebook (Optional[nn.Module]): frozen image tokenizer (``tokens(pixels) -> (B, N)``), run
            here in fp32 so the training step need not (it is put in eval mode and converted to
            channels-last memory in place); None leaves ``codebook_pixels`` in the batch for a
            model that carries its own codebook.
        patch_grid (int): patches per side of the encoder input.
        max_text_length (int): most text ids per row, with [CLS] and [SEP].
        num_masked_patches (int): the most patches masked per image (BEiT block masking, which can stop a
            few short: at FLAVA's 75 of 14 x 14 with blocks of 16 or more, a third of masks hold 67-74).
        min_mask_block (int): smallest mask rectangle, in patches.
        mlm_probability (float): share of text tokens selected for MLM / MMM-text.
        itm_negative_probability (float): chance that a pair's caption is swapped for another's
            (the pair stays a match, label 1, when the other caption tokenizes to the same ids).
        ignore_index (int): label of positions without a target.

    Raises:
        TypeError: if a size is not an int or a probability not a number.
        ValueError: if ``patch_grid``, ``min_mask_block``, ``max_text_length``, ``num_masked_patches`` or
            ``itm_negative_probability`` is out of range, or ``mlm_probability`` is not in (0, 1]
            (:class:`~torchflava.modules.masking.TokenMasker`).
    """

    def __init__(
        self,
        tokenizer: WordPieceTokenizer,
        image_transform: PretrainingImageTransform,
        *,
        codebook: Optional[nn.Module],
        patch_grid: int,
        max_text_length: int = 77,
        num_masked_patches: int = 75,
        min_mask_block: int = 16,
        mlm_probability: float = 0.15,
        itm_negative_probability: float = 0.1,
        ignore_index: int = -100,
    ) -> None:
        # every setting checked here, under its own name (several were checked at the first batch only,
        # by the functions they are passed to, under theirs)
        check_int("patch_grid", patch_grid, 1)
        check_int("min_mask_block", min_mask_block, 1)
        check_int("max_text_length", max_text_length, 2)  # a start and an end token
        if not 0 <= check_int("num_masked_patches", num_masked_patches, 0) <= patch_grid * patch_grid:
            raise ValueError(f"num_masked_patches must be in [0, {patch_grid * patch_grid}], got {num_masked_patches}")
        check_probability("itm_negative_probability", itm_negative_probability)
        self.tokenizer = tokenizer
        self.image_transform = image_transform
        # channels-last convolutions run the dVAE about twice as fast on CPUs (converted in place)
        self.codebook = None if codebook is None else codebook.eval().to(memory_format=torch.channels_last)
        self.patch_grid = patch_grid
        self.max_text_length = max_text_length
        self.num_masked_patches = num_masked_patches
        self.min_mask_block = min_mask_block
        self.itm_negative_probability = itm_negative_probability
        self.token_masker = TokenMasker(
            vocab_size=tokenizer.vocab_size,
            mask_token_id=tokenizer.mask_id,
            special_token_ids=tokenizer.special_ids,
            probability=mlm_probability,
            ignore_index=ignore_index,
        )

    def images(self, images: Sequence, seeds: Sequence[int]) -> dict[str, Tensor]:
        """Pixels, block patch masks and codebook ids (or codebook pixels) of ``images``."""
        crops = [self.image_transform(image, seed) for image, seed in zip(images, seeds)]
        masks = [
            block_mask(
                self.patch_grid,
                num_masked=self.num_masked_patches,
                min_block=self.min_mask_block,
                generator=torch.Generator().manual_seed(item_seed(seed, "patch-mask")),
            ).flatten()
            for seed in seeds
        ]
        fields = {"image": torch.stack([c[0] for c in crops]), "image_patch_mask": torch.stack(masks)}
        codebook_pixels = torch.stack([c[1] for c in crops])
        if self.codebook is None:
            fields["codebook_pixels"] = codebook_pixels
        else:
            with torch.no_grad(), torch.autocast("cpu", enabled=False):
                fields["image_tokens"] = self.codebook.tokens(
                    codebook_pixels.contiguous(memory_format=torch.channels_last)
                )
        return fields

    def texts(self, texts: Sequence[str], seeds: Sequence[int]) -> dict[str, Tensor]:
        """Ids, attention mask, BERT-masked ids and MLM labels of ``texts`` (padded to the longest)."""
        ids, attention = self.tokenizer(list(texts), max_length=self.max_text_length)
        return self._masked_texts(ids, attention, seeds)

    def _masked_texts(self, ids: Tensor, attention: Tensor, seeds: Sequence[int]) -> dict[str, Tensor]:
        """The text fields of tokenized rows: ``ids`` and ``attention`` (B, L) with their BERT masks."""
        generators = [torch.Generator().manual_seed(item_seed(seed, "mlm")) for seed in seeds]
        masked, labels = self.token_masker.rows(ids, attention.sum(1).tolist(), generators)
        return {"text": ids, "text_attention_mask": attention, "text_masked": masked, "mlm_labels": labels}

    def _drawn_captions(self, seeds: Sequence[int], another: Optional[Another]) -> dict[int, str]:
        """Row -> the caption drawn for it as an ITM negative (rows not drawn, or drawn with no other
        item to read, are absent)."""
        drawn = {}
        for row, seed in enumerate(seeds):
            if random.Random(item_seed(seed, "itm")).random() < self.itm_negative_probability:
                other = None if another is None else another(row, item_seed(seed, "itm-source"), _caption)
                if other is not None:
                    drawn[row] = other
        return drawn

    def _pair_texts(self, texts: Sequence[str], drawn: Mapping[int, str]) -> tuple[Tensor, Tensor, Tensor]:
        """ITM labels (B,), ids and attention mask (B, L) of a pair batch whose ``drawn`` rows take
        another caption, from one tokenizer call over the own captions and the drawn ones.

        A drawn caption that gives the model the ids of the row's own (after the tokenizer's
        normalisation, e.g. an uncased one's lower-casing, its white-space splitting, and truncation
        to ``max_text_length``) is the pair's own text: the row stays a match, label 1. The batch is
        the one the final captions tokenize to alone; each text is tokenized once, in one call.
        """
        differ = [row for row, other in drawn.items() if other != texts[row]]  # equal strings, equal ids
        ids, attention = self.tokenizer(list(texts) + [drawn[row] for row in differ], max_length=self.max_text_length)
        labels = torch.ones(len(texts), dtype=torch.long)
        chosen = list(range(len(texts)))
        for place, row in enumerate(differ, start=len(texts)):
            # (padded to the longest of the call: equal rows, equal tokens)
            if not torch.equal(ids[row], ids[place]):
                chosen[row], labels[row] = place, 0
        # the tokenizer pads on the right to the longest row: cut the padding only the rows left out needed
        width = int(attention[chosen].sum(1).max())
        return labels, ids[chosen, :width], attention[chosen, :width]

    def __call__(
        self, kind: str, samples: Sequence[Sample], seeds: Sequence[int], *, another: Optional[Another] = None
    ) -> dict[str, Tensor]:
        """Build the batch of ``kind`` from ``samples``.

        Args:
            kind (str): ``"pairs"``, ``"images"`` or ``"texts"``.
            samples (Sequence[Sample]): the items.
            seeds (Sequence[int]): one seed per item.
            another (Optional[Another]): for pairs, reads the caption of another item of the source
                for a row drawn as an ITM negative (see :class:`~torchflava.data.mixing.MixedBatches`);
                None makes no negatives.

        Returns:
            dict[str, Tensor]: the batch.

        Raises:
            ValueError: if ``kind`` is not one of :data:`KINDS`, or there is not one seed per sample.
        """
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        check_seeds(samples, seeds)
        fields: dict[str, Tensor] = {}
        if kind in ("pairs", "images"):
            fields.update(self.images([s.image for s in samples], seeds))
        if kind == "pairs":
            labels, ids, attention = self._pair_texts([s.text for s in samples], self._drawn_captions(seeds, another))
            fields["itm_labels"] = labels
            fields.update(self._masked_texts(ids, attention, seeds))
        elif kind == "texts":
            fields.update(self.texts([s.text for s in samples], seeds))
        return fields


def flava_pretraining_batches(
    sources: Mapping[str, Dataset],
    ratios: Mapping[str, float],
    collator: FLAVAPretrainingCollator,
    *,
    global_batch_size: int,
    num_steps: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    max_attempts: int = 50,
) -> MixedBatches:
    """Step-indexed FLAVA pretraining batches: pairs, images and texts mixed by ``ratios``.

    Args:
        sources (Mapping[str, Dataset]): sources of :class:`~torchflava.data.samples.Sample` under
            ``"pairs"``, ``"images"`` and/or ``"texts"``.
        ratios (Mapping[str, float]): relative share of steps of each kind; a ratio of a kind
            without a source is ignored.
        collator (FLAVAPretrainingCollator): samples -> batch.
        global_batch_size (int): items per step over all ranks.
        num_steps (int): number of steps.
        rank (int): this rank.
        world_size (int): number of ranks.
        seed (int): data seed.
        max_attempts (int): replacement draws for one slot before the data is declared broken.

    Returns:
        MixedBatches: item ``step`` is this rank's :class:`~torchflava.data.mixing.MixedBatch`.

    Raises:
        ValueError: if a source or ratio names an unknown kind, or as :class:`MixedBatches`.
    """
    unknown = sorted(set(sources) - set(KINDS)) + sorted(set(ratios) - set(KINDS))
    if unknown:
        raise ValueError(f"sources/ratios: expected keys among {KINDS}, got unknown kind(s) {unknown}")
    ordered = {kind: sources[kind] for kind in KINDS if kind in sources}  # a fixed order: the same streams
    return MixedBatches(
        ordered,
        {kind: ratios[kind] for kind in ordered if kind in ratios},
        collator,
        global_batch_size=global_batch_size,
        num_steps=num_steps,
        rank=rank,
        world_size=world_size,
        seed=seed,
        max_attempts=max_attempts,
    )
