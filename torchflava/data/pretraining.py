"""FLAVA pretraining batches: weighted mixing of paired, image-only and text-only sources.

:class:`MixedPretrainingBatches` is a map-style dataset whose item ``step`` is this rank's share of
the global batch of (micro-)step ``step``. Everything random about a batch (which source it comes
from, which items, crops, masks, ITM negatives) is a pure function of (seed, step, slot in the
global batch), so:

* a run resumes exactly from any step (the data loader only has to remember the step),
* N ranks with B/N items each see exactly the items of one process with B items, and
* the result does not depend on the number of data-loader workers.

Unusable items (:class:`~torchflava.data.samples.BadSample`) are replaced by other items drawn for
the same slot and reported in the batch's ``skipped`` list, so they are counted, never fatal and
never the cause of a lost epoch.
"""

import random
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from torchflava.data.samples import BadSample, Sample
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import PretrainingImageTransform
from torchflava.models.flava.pretraining import PretrainingBatch
from torchflava.modules.masking import block_mask, mask_tokens

KINDS = ("pairs", "images", "texts")


def _seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (stable across processes and Python runs)."""
    return random.Random("/".join(map(str, parts))).getrandbits(63)


class PretrainingCollator:
    """Turns a list of samples of one kind into a :class:`PretrainingBatch` with its masks.

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
        num_masked_patches (int): patches masked per image (BEiT block masking).
        min_mask_block (int): smallest mask rectangle, in patches.
        mlm_probability (float): share of text tokens selected for MLM / MMM-text.
        itm_negative_probability (float): chance that a pair's caption is swapped for another's.
        ignore_index (int): label of positions without a target.
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
        if not 0 <= num_masked_patches <= patch_grid * patch_grid:
            raise ValueError(f"num_masked_patches must be in [0, {patch_grid * patch_grid}], got {num_masked_patches}")
        if not 0 <= itm_negative_probability <= 1:
            raise ValueError(f"itm_negative_probability must be in [0, 1], got {itm_negative_probability}")
        self.tokenizer = tokenizer
        self.image_transform = image_transform
        # channels-last convolutions run the dVAE about twice as fast on CPUs (converted in place)
        self.codebook = None if codebook is None else codebook.eval().to(memory_format=torch.channels_last)
        self.patch_grid = patch_grid
        self.max_text_length = max_text_length
        self.num_masked_patches = num_masked_patches
        self.min_mask_block = min_mask_block
        self.mlm_probability = mlm_probability
        self.itm_negative_probability = itm_negative_probability
        self.ignore_index = ignore_index

    def images(self, images: Sequence, seeds: Sequence[int]) -> dict[str, Tensor]:
        """Pixels, block patch masks and codebook ids (or codebook pixels) of ``images``."""
        crops = [self.image_transform(image, seed) for image, seed in zip(images, seeds)]
        masks = [
            block_mask(
                self.patch_grid,
                num_masked=self.num_masked_patches,
                min_block=self.min_mask_block,
                generator=torch.Generator().manual_seed(_seed(seed, "patch-mask")),
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
        tok = self.tokenizer
        ids, attention = tok(list(texts), max_length=self.max_text_length)
        masked, labels = ids.clone(), torch.full_like(ids, self.ignore_index)
        for row, seed in enumerate(seeds):
            length = int(attention[row].sum())
            out = mask_tokens(
                ids[row : row + 1, :length],
                vocab_size=tok.vocab_size,
                mask_token_id=tok.mask_id,
                special_token_ids=tok.special_ids,
                probability=self.mlm_probability,
                ignore_index=self.ignore_index,
                generator=torch.Generator().manual_seed(_seed(seed, "mlm")),
            )
            masked[row, :length], labels[row, :length] = out.input_ids[0], out.labels[0]
        return {"text": ids, "text_attention_mask": attention, "text_masked": masked, "mlm_labels": labels}

    def __call__(
        self,
        kind: str,
        samples: Sequence[Sample],
        seeds: Sequence[int],
        negative_caption: Callable[[int, int], Optional[str]] = lambda slot, seed: None,
    ) -> PretrainingBatch:
        """Build the batch of ``kind`` from ``samples``.

        Args:
            kind (str): ``"pairs"``, ``"images"`` or ``"texts"``.
            samples (Sequence[Sample]): the items.
            seeds (Sequence[int]): one seed per item.
            negative_caption (Callable[[int, int], Optional[str]]): for pairs, gives a caption of
                another item for row ``slot`` (called with the row and a seed) when that row is
                drawn as an ITM negative.

        Returns:
            PretrainingBatch: the batch.
        """
        fields: dict[str, Tensor] = {}
        if kind in ("pairs", "images"):
            fields.update(self.images([s.image for s in samples], seeds))
        if kind in ("pairs", "texts"):
            texts = [s.text for s in samples]
            if kind == "pairs":
                labels = torch.ones(len(samples), dtype=torch.long)
                for row, seed in enumerate(seeds):
                    if random.Random(_seed(seed, "itm")).random() < self.itm_negative_probability:
                        other = negative_caption(row, _seed(seed, "itm-source"))
                        if other is not None and other != texts[row]:
                            texts[row], labels[row] = other, 0
                fields["itm_labels"] = labels
            fields.update(self.texts(texts, seeds))
        return PretrainingBatch(**fields)


class SkippedSample(NamedTuple):
    """An unusable item met while building a batch."""

    kind: str
    index: int
    reason: str


class MixedBatch(NamedTuple):
    """Item of :class:`MixedPretrainingBatches`: the batch, its kind, and the items it had to skip."""

    batch: PretrainingBatch
    kind: str
    skipped: list


class MixedPretrainingBatches(Dataset):
    """Item ``step`` = this rank's share of the global batch of step ``step``.

    Each step draws its kind (pairs, images, texts) by ``ratios``; the items of a kind are read
    in a fresh seeded permutation per pass over that source.

    Args:
        sources (Mapping[str, Dataset]): map-style sources of :class:`Sample` under the keys
            ``"pairs"``, ``"images"`` and/or ``"texts"``.
        ratios (Mapping[str, float]): relative share of steps of each kind (kinds without a
            source or with ratio 0 are never drawn).
        collator (PretrainingCollator): samples -> batch.
        global_batch_size (int): items per step over all ranks.
        num_steps (int): number of steps (the dataset's length).
        rank (int): this rank.
        world_size (int): number of ranks; must divide ``global_batch_size``.
        seed (int): data seed.
        max_attempts (int): replacement draws for one slot before the data is declared broken.

    Raises:
        ValueError: if a key, ratio or size is invalid.
    """

    def __init__(
        self,
        sources: Mapping[str, Dataset],
        ratios: Mapping[str, float],
        collator: PretrainingCollator,
        *,
        global_batch_size: int,
        num_steps: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        max_attempts: int = 50,
    ) -> None:
        unknown = sorted(set(sources) - set(KINDS)) + sorted(set(ratios) - set(KINDS))
        if unknown:
            raise ValueError(f"sources/ratios: unknown kind(s) {unknown}; expected keys among {KINDS}")
        weights = np.array([float(ratios.get(k, 0.0)) if k in sources else 0.0 for k in KINDS])
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(
                f"ratios must be >= 0 with a positive ratio for a kind that has a source, got {dict(ratios)}"
            )
        for kind, source in sources.items():
            if len(source) < 1:
                raise ValueError(f"sources[{kind!r}] is empty")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ValueError(
                f"global_batch_size ({global_batch_size}) must be a positive multiple of world_size ({world_size})"
            )
        if num_steps < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"num_steps must be >= 1 and rank in [0, world_size); got {num_steps}, {rank}, {world_size}"
            )
        self.sources, self.collator = dict(sources), collator
        self.global_batch_size, self.num_steps = global_batch_size, num_steps
        self.rank, self.world_size, self.seed, self.max_attempts = rank, world_size, seed, max_attempts
        # Kinds of all steps at once (a prefix of the same stream for any num_steps), and how many
        # earlier steps drew the same kind: the position of each step's items in its source's stream.
        draws = np.random.default_rng(seed).random(num_steps)
        self._kinds = np.searchsorted(np.cumsum(weights / weights.sum()), draws, side="right").clip(max=len(KINDS) - 1)
        self._rank_of_kind = np.zeros(num_steps, dtype=np.int64)
        for k in range(len(KINDS)):
            chosen = self._kinds == k
            self._rank_of_kind[chosen] = np.arange(int(chosen.sum()))
        self._permutations: dict[tuple[str, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.num_steps

    def kind(self, step: int) -> str:
        """Which kind of batch step ``step`` is."""
        return KINDS[int(self._kinds[step])]

    def _index(self, kind: str, position: int) -> int:
        """Item of ``kind``'s source at ``position`` of its stream of seeded per-pass permutations."""
        size = len(self.sources[kind])
        epoch, offset = divmod(position, size)
        key = (kind, epoch)
        if key not in self._permutations:
            if len(self._permutations) > 6:
                self._permutations.clear()
            self._permutations[key] = np.random.default_rng([self.seed, KINDS.index(kind), epoch]).permutation(size)
        return int(self._permutations[key][offset])

    def _load(self, kind: str, position: int, skipped: list) -> tuple[Sample, int]:
        """The usable sample for stream ``position`` (replacing unusable ones) and its seed."""
        source = self.sources[kind]
        index = self._index(kind, position)
        for attempt in range(self.max_attempts):
            if attempt:
                index = random.Random(_seed(self.seed, kind, position, attempt)).randrange(len(source))
            try:
                return source[index], _seed(self.seed, kind, position, attempt)
            except BadSample as bad:
                skipped.append(SkippedSample(kind, index, bad.reason))
        raise RuntimeError(
            f"the {kind} source gave {self.max_attempts} unusable samples in a row for one slot (last: "
            f"{skipped[-1].reason}); the data looks broken"
        )

    def _negative_caption(self, slot_position: int, seed: int, skipped: list) -> Optional[str]:
        source = self.sources["pairs"]
        if len(source) < 2:
            return None
        own = self._index("pairs", slot_position)
        rng = random.Random(seed)
        for _ in range(self.max_attempts):
            index = rng.randrange(len(source) - 1)
            index += index >= own
            try:
                caption = source.caption(index) if hasattr(source, "caption") else source[index].text
                return caption
            except BadSample as bad:
                skipped.append(SkippedSample("pairs", index, bad.reason))
        return None

    def __getitem__(self, step: int) -> MixedBatch:
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} out of range [0, {self.num_steps})")
        kind = self.kind(step)
        local = self.global_batch_size // self.world_size
        first = int(self._rank_of_kind[step]) * self.global_batch_size + self.rank * local
        skipped: list = []
        loaded = [self._load(kind, first + slot, skipped) for slot in range(local)]
        batch = self.collator(
            kind,
            [s for s, _ in loaded],
            [seed for _, seed in loaded],
            negative_caption=lambda slot, seed: self._negative_caption(first + slot, seed, skipped),
        )
        return MixedBatch(batch, kind, skipped)
