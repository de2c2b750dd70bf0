"""FLAVA pretraining: the backbone, five heads, an optional frozen codebook, and the six losses.

Which losses run depends on what the batch holds:

* image only (with ``image_patch_mask``) -> MIM on the masked image;
* text only (with ``mlm_labels``) -> MLM on the masked text;
* image + text -> global contrastive (unmasked image and text), ITM, MMM-image and MMM-text (on the
  multimodal encoding of the masked image and masked text); MIM and MLM too when ``unimodal_losses_on_pairs``.

Only the encoder passes some loss uses are run: the unmasked passes only for the contrastive loss
(and then only their CLS output is computed in the last layer, where they run on their own); a masked
pass is shared with the unmasked one when there is no mask. Masked-prediction heads see only the
masked positions. Passes of one encoder run as one call over their rows stacked: a pair's masked and
unmasked passes, and, given a list of batches (the "all6" step: a pair, an image and a text batch),
every batch's passes, with the same losses and gradients as separate calls.
ITM negatives (``itm_labels == 0``) are left out of MMM and of the contrastive loss's rows.
"""

from dataclasses import dataclass, fields
import math
from typing import Callable, Mapping, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from torchflava.models.flava.model import FLAVAModel, text_padding_mask
from torchflava.modules.encoders import CLS_POSITION, EncoderOutput
from torchflava.modules.heads import ITMHead, MaskedPredictionHead
from torchflava.modules.layers.patch_embedding import check_patch_mask
from torchflava.modules.losses.contrastive import contrastive_loss
from torchflava.utils.checks import check_bools, check_module, require
from torchflava.utils.distributed import GatherGrad

LOGIT_SCALE_MAX = math.log(100.0)


@dataclass
class PretrainingBatch:
    """One pretraining batch. Give the fields the wanted losses need; leave the rest None.

    Attributes:
        image (Optional[Tensor]): (B, 3, H, W) normalised pixels.
        image_patch_mask (Optional[Tensor]): (B, N) bool, ``True`` = patch replaced by the mask token
            (MIM / MMM-image targets are the codebook ids of these patches).
        image_tokens (Optional[Tensor]): (B, N) long codebook ids of every patch (computed in the data
            pipeline); when None they are computed from ``codebook_pixels`` by the model's codebook.
        codebook_pixels (Optional[Tensor]): (B, 3, H', W') codebook input in [0.1, 0.9].
        text (Optional[Tensor]): (B, L) unmasked token ids (contrastive loss).
        text_masked (Optional[Tensor]): (B, L) token ids after BERT masking (MLM / MMM-text); ``text``
            is used when None.
        text_attention_mask (Optional[Tensor]): (B, L), 1 (True) = token, 0 (False) = padding: Hugging Face's
            ``attention_mask``, the inverse of a padding mask.
        mlm_labels (Optional[Tensor]): (B, L) original ids at masked positions, ``ignore_index`` elsewhere.
        itm_labels (Optional[Tensor]): (B,) 1 = matched pair, 0 = caption replaced by another's.
    """

    image: Optional[Tensor] = None
    image_patch_mask: Optional[Tensor] = None
    image_tokens: Optional[Tensor] = None
    codebook_pixels: Optional[Tensor] = None
    text: Optional[Tensor] = None
    text_masked: Optional[Tensor] = None
    text_attention_mask: Optional[Tensor] = None
    mlm_labels: Optional[Tensor] = None
    itm_labels: Optional[Tensor] = None


class FLAVALosses(NamedTuple):
    """Weighted losses; None where the batch did not call for one."""

    mim: Optional[Tensor] = None
    mlm: Optional[Tensor] = None
    itm: Optional[Tensor] = None
    global_contrastive: Optional[Tensor] = None
    mmm_image: Optional[Tensor] = None
    mmm_text: Optional[Tensor] = None


class FLAVAPretrainingOutput(NamedTuple):
    """Output of :meth:`FLAVAForPretraining.forward`.

    Attributes:
        loss (Tensor): scalar, the sum of the weighted losses present.
        losses (FLAVALosses): each weighted loss, or None.
        mim_logits / mlm_logits / mmm_image_logits / mmm_text_logits (Optional[Tensor]): (M, V) logits of
            the M masked positions, with their targets in ``*_targets`` (M,).
        itm_logits (Optional[Tensor]): (B, 2).
        contrastive_logits_per_image (Optional[Tensor]): (B, B_global); rows of ITM negatives are
            computed but weigh 0 in the loss, which averages over the matched rows only.
        contrastive_logits_per_text (Optional[Tensor]): (B, B_global).
        contrastive_labels (Optional[Tensor]): (B,) column of each row's pair.
        loss_sums (Optional[dict[str, Tensor]]): each weighted loss present times its count: the loss
            summed over the items it averages on this process (for a data-parallel loop, which
            divides by the counts of all ranks to get the global-batch mean).
        loss_counts (Optional[dict[str, Tensor]]): () float count of those items per loss: masked
            positions (MIM, MLM, MMM), matched pairs (contrastive), rows (ITM).
    """

    loss: Tensor
    losses: FLAVALosses
    mim_logits: Optional[Tensor] = None
    mim_targets: Optional[Tensor] = None
    mlm_logits: Optional[Tensor] = None
    mlm_targets: Optional[Tensor] = None
    mmm_image_logits: Optional[Tensor] = None
    mmm_image_targets: Optional[Tensor] = None
    mmm_text_logits: Optional[Tensor] = None
    mmm_text_targets: Optional[Tensor] = None
    itm_logits: Optional[Tensor] = None
    contrastive_logits_per_image: Optional[Tensor] = None
    contrastive_logits_per_text: Optional[Tensor] = None
    contrastive_labels: Optional[Tensor] = None
    loss_sums: Optional[dict[str, Tensor]] = None
    loss_counts: Optional[dict[str, Tensor]] = None


class LossWeights(NamedTuple):
    """Weight of each loss; 0 switches a loss (and any pass only it needs) off."""

    mim: float = 1.0
    mlm: float = 1.0
    itm: float = 1.0
    global_contrastive: float = 1.0
    mmm_image: float = 1.0
    mmm_text: float = 1.0


class _Plan(NamedTuple):
    """What one checked batch calls for: its losses, targets and text padding, and its encoder passes."""

    batch: PretrainingBatch
    want_multimodal: bool
    want_contrastive: bool
    want_mim: bool
    want_mlm: bool
    image_targets: Optional[Tensor]
    padding: Optional[Tensor]
    merge: bool  # the contrastive loss's unmasked passes run beside the masked ones (not recomputed)


class _Pass(NamedTuple):
    """One encoder pass of one batch: its rows, the mask it takes (patch or padding; None: none),
    whether the whole output is kept (a masked pass) or only its CLS (an unmasked, contrastive one),
    and the (B, S) positions whose output a loss reads (None: all)."""

    batch: int
    whole: bool
    inputs: Tensor
    mask: Optional[Tensor]
    wanted: Optional[Tensor] = None


def _read_positions(targets: Optional[Tensor], ignore_index: int, rows: int, length: int, device) -> Tensor:
    """(rows, length) bool: the CLS and, if given, the positions whose (rows, length - 1 | length)
    ``targets`` are not ``ignore_index`` (aligned to the end: an image's patches follow its CLS)."""
    wanted = torch.zeros(rows, length, dtype=torch.bool, device=device)
    if targets is not None:
        wanted[:, length - targets.shape[1] :] = targets != ignore_index
    wanted[:, 0] = True
    return wanted


def _group_positions(group: list[_Pass], lengths: list[int]) -> Optional[Tensor]:
    """The stacked call's (rows, max length) bool output positions, or None where every pass reads all (or on
    the meta device: a dry run of shapes, whose masks have no values to select by)."""
    if all(item.wanted is None for item in group) or group[0].inputs.is_meta:
        return None
    longest = max(lengths)
    return torch.cat(
        [
            torch.ones(item.inputs.shape[0], longest, dtype=torch.bool, device=item.inputs.device)
            if item.wanted is None
            else F.pad(item.wanted, (0, longest - length), value=False)
            for item, length in zip(group, lengths)
        ]
    )


def _stacked(passes: list[_Pass], key: Callable, run: Callable) -> dict[tuple[int, bool], Union[EncoderOutput, Tensor]]:
    """Run ``passes`` in as few encoder calls as their ``key`` allows (passes of one key stack):
    ``run(group)`` encodes a group's rows in one call and returns what :func:`_split` gives, per pass
    in order. Keyed (batch index, whole)."""
    groups: dict = {}
    for item in passes:
        groups.setdefault(key(item), []).append(item)
    results = {}
    for group in groups.values():
        for item, states in zip(group, run(group)):
            results[item.batch, item.whole] = states
    return results


def _split(out: EncoderOutput, group: list[_Pass], lengths: Optional[list[int]] = None) -> list:
    """Per pass of ``group``: its rows of a stacked call's output, as an EncoderOutput for a masked
    pass and the CLS states for an unmasked one (cut back to each pass's own length)."""
    results, start = [], 0
    for i, item in enumerate(group):
        rows = slice(start, start + item.inputs.shape[0])
        start = rows.stop
        columns = slice(None) if lengths is None else slice(0, lengths[i])
        last = out.last_hidden_state[rows, columns]
        if not item.whole:
            results.append(last[:, 0])
            continue
        prenorm = out.prenorm_last_hidden_state
        results.append(
            EncoderOutput(
                last_hidden_state=last, prenorm_last_hidden_state=None if prenorm is None else prenorm[rows, columns]
            )
        )
    return results


def _masked_prediction(
    head: nn.Module, states: Tensor, targets: Tensor, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy of ``head`` on the positions whose target is not ``ignore_index``.

    states (B, S, D) and targets (B, S) -> (loss, logits (M, V), selected targets (M,)). With no
    selected position the loss is a zero that still reaches the head's parameters.
    """
    if targets.is_meta:  # a dry run of shapes: no values select the positions; every position's logits (B * S, V)
        logits, chosen = head(states.flatten(0, 1)), targets.flatten()
        return F.cross_entropy(logits, chosen, ignore_index=ignore_index), logits, chosen
    selected = targets != ignore_index
    logits = head(states[selected])
    chosen = targets[selected]
    if chosen.numel() == 0:
        return head(states[:, :1]).sum() * 0.0, logits, chosen
    return F.cross_entropy(logits, chosen), logits, chosen


def _loss_counts(
    losses: dict, b: PretrainingBatch, extra: dict, positives: Optional[Tensor], device: torch.device
) -> dict[str, Tensor]:
    """How many items each loss in ``losses`` averages over: targets, matched pairs or rows."""
    counts = {}
    for name in (name for name in FLAVALosses._fields if name in losses):
        if name == "global_contrastive":
            counts[name] = positives.sum().float() if positives is not None else float(b.image.shape[0])
        elif name == "itm":
            counts[name] = float(b.itm_labels.numel())
        else:  # mim, mlm, mmm_image, mmm_text: the masked positions with a target
            counts[name] = float(extra[f"{name}_targets"].numel())
    return {name: torch.as_tensor(count, dtype=torch.float32, device=device) for name, count in counts.items()}


# What each batch field may hold: pixels are floating point; ids and labels any integer dtype (read
# as long; ITM labels may be bool); masks bool or integer (the attention mask also 1.0 / 0.0 floats).
_PIXELS = ("image", "codebook_pixels")
_IDS = ("text", "text_masked", "mlm_labels", "image_tokens")


def _checked_field(name: str, value: object, device: torch.device) -> Optional[Tensor]:
    """``value`` of batch field ``name``, ids and labels as long; TypeError naming the field otherwise, or
    ValueError if it is not on ``device`` (the model's; ``codebook_pixels`` go to the codebook, wherever it is)."""
    if value is None:
        return None
    if not isinstance(value, Tensor):
        raise TypeError(f"batch field {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.device != device and name != "codebook_pixels":  # (a meta one failed inside torch, on .item())
        raise ValueError(f"batch field {name} must be on the model's device {device}, got {value.device}")
    floating, dtype = value.is_floating_point() or value.is_complex(), value.dtype
    if name in _PIXELS:
        if not value.is_floating_point():
            raise TypeError(
                f"batch field {name} must be a floating-point tensor of normalised pixels, got dtype {dtype}"
            )
        return value
    if name in _IDS or name == "itm_labels":
        if floating or (dtype == torch.bool and name != "itm_labels"):
            raise TypeError(f"batch field {name} must be an integer tensor (torch.long), got dtype {dtype}")
        return value.long()
    allowed = "bool, integer or float" if name == "text_attention_mask" else "bool or integer"
    if value.is_complex() or (floating and name != "text_attention_mask"):
        raise TypeError(f"batch field {name} must be a {allowed} tensor, got dtype {dtype}")
    return value


def check_pretraining_settings(
    unimodal_losses_on_pairs: object, recompute_contrastive_passes: object, ignore_index: object, gather: object
) -> None:
    """TypeError naming the first of :class:`FLAVAForPretraining`'s settings of the wrong type: a flag given
    ``"no"`` (truthy) switched it on; an ``ignore_index`` of 1.5 or a ``contrastive_gather`` of ``"global"``
    failed only in the first forward, inside torch or on a missing attribute."""
    check_bools(
        unimodal_losses_on_pairs=unimodal_losses_on_pairs, recompute_contrastive_passes=recompute_contrastive_passes
    )
    if type(ignore_index) is not int:
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__} {ignore_index!r}")
    if not isinstance(gather, GatherGrad):
        raise TypeError(f"contrastive_gather must be a GatherGrad, got {gather!r}")


class FLAVAForPretraining(nn.Module):
    """FLAVA with its pretraining heads and losses.

    Args:
        model (FLAVAModel): the backbone.
        mlm_head (MaskedPredictionHead): text encoder states -> vocabulary.
        mim_head (MaskedPredictionHead): image encoder states -> codebook ids.
        mmm_text_head (MaskedPredictionHead): fused text states -> vocabulary.
        mmm_image_head (MaskedPredictionHead): fused image states -> codebook ids.
        itm_head (ITMHead): fused CLS -> matched / mismatched.
        codebook (Optional[nn.Module]): frozen image tokenizer with ``tokens(pixels) -> (B, N)``; only
            needed when batches bring ``codebook_pixels`` instead of ``image_tokens``.
        weights (LossWeights): loss weights.
        unimodal_losses_on_pairs (bool): also compute MIM and MLM on image-text batches.
        recompute_contrastive_passes (bool): run the unmasked image and text passes that feed only the
            contrastive loss on their own (without it, a pair's masked and unmasked passes are one
            encoder call each, the batch stacked: faster, and ~3% more peak memory for FLAVA-full) and
            checkpoint them (recompute in backward): less memory for one more forward of them.
        ignore_index (int): label value of positions without a target.
        contrastive_gather (GatherGrad): how the contrastive loss gathers features across ranks.

    Raises:
        TypeError: if ``model`` is not a FLAVAModel, a head or ``codebook`` not a module, ``weights`` not
            a LossWeights, a flag not a bool, ``ignore_index`` not an int or ``contrastive_gather`` not a
            GatherGrad (each was taken as given, and failed, or misbehaved, in the first forward).
        ValueError: if ``ignore_index`` is a class of a prediction head (a token or codebook id).
    """

    def __init__(
        self,
        model: FLAVAModel,
        mlm_head: MaskedPredictionHead,
        mim_head: MaskedPredictionHead,
        mmm_text_head: MaskedPredictionHead,
        mmm_image_head: MaskedPredictionHead,
        itm_head: ITMHead,
        codebook: Optional[nn.Module] = None,
        *,
        weights: LossWeights = LossWeights(),
        unimodal_losses_on_pairs: bool = False,
        recompute_contrastive_passes: bool = False,
        ignore_index: int = -100,
        contrastive_gather: GatherGrad = GatherGrad.GLOBAL,
    ) -> None:
        if not isinstance(model, FLAVAModel):
            raise TypeError(f"model must be a FLAVAModel, got {type(model).__name__}")
        heads = dict(mlm_head=mlm_head, mim_head=mim_head, mmm_text_head=mmm_text_head, mmm_image_head=mmm_image_head)
        for name, head in {**heads, "itm_head": itm_head}.items():
            check_module(name, head)
        check_module("codebook", codebook, optional=True)
        if not isinstance(weights, LossWeights):  # (a dict failed on w.mim in the first forward)
            raise TypeError(f"weights must be a LossWeights, got {type(weights).__name__}")
        check_pretraining_settings(
            unimodal_losses_on_pairs, recompute_contrastive_passes, ignore_index, contrastive_gather
        )
        classes = max(getattr(getattr(head, "decoder", None), "out_features", 0) for head in heads.values())
        if 0 <= ignore_index < classes:  # (the targets of that token or codebook id were dropped, silently)
            raise ValueError(f"ignore_index must lie outside the heads' classes [0, {classes}), got {ignore_index}")
        super().__init__()
        self.model = model
        self.mlm_head = mlm_head
        self.mim_head = mim_head
        self.mmm_text_head = mmm_text_head
        self.mmm_image_head = mmm_image_head
        self.itm_head = itm_head
        self.codebook = codebook
        self.weights = weights
        self.unimodal_losses_on_pairs = unimodal_losses_on_pairs
        self.recompute_contrastive_passes = recompute_contrastive_passes
        self.ignore_index = ignore_index
        self.contrastive_gather = contrastive_gather

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep the contrastive log-temperature in [0, ln 100]; call after each optimiser step."""
        self.model.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)

    def forward(
        self, batch: Union[PretrainingBatch, Mapping[str, Optional[Tensor]], Sequence]
    ) -> Union[FLAVAPretrainingOutput, list[FLAVAPretrainingOutput]]:
        """Compute the losses the batch calls for.

        Several batches at once (a list or tuple, e.g. the "all6" step: an image-text, an image-only
        and a text-only batch) give a list of outputs, one per batch, equal to calling ``forward`` on
        each (to rounding: GEMMs of other sizes may sum in another order), with each encoder run once
        over the rows of every batch that needs it: GEMMs of more rows run faster (texts of other
        lengths are padded to the longest, as padding, for that call). Their losses are summed for
        one backward, as the separate calls' would be.

        On the meta device (a dry run of shapes: model and batch built there) the checks of values are
        skipped, no padding is trimmed, and the encoders and masked-prediction heads run on every
        position: the losses, ITM and contrastive outputs have their usual shapes, and the masked-prediction
        logits and targets one row per position, ``(B * S, V)`` and ``(B * S,)``, not per masked one.

        Args:
            batch (Union[PretrainingBatch, Mapping[str, Optional[Tensor]], Sequence]): see
                :class:`PretrainingBatch`; a mapping may use any subset of its field names; or a list or
                tuple of such batches.

        Returns:
            Union[FLAVAPretrainingOutput, list[FLAVAPretrainingOutput]]: total and per-loss values,
            logits and targets; a list of them, one per batch, for a list of batches.

        Raises:
            TypeError: if a mapping has an unknown field, or a field is not a tensor or has a dtype it
                cannot hold (integer pixels; float or bool ids and labels; float patch masks), naming it.
            ValueError: if fields disagree in batch size or shape, a field is not on the model's device (but
                ``codebook_pixels``), labels are out of range, a batch calls for no loss at all, or a list
                holds no batch.
        """
        many = isinstance(batch, (list, tuple))
        if many and not batch:
            raise ValueError(
                f"batch: expected a batch, or a non-empty list of batches, got an empty {type(batch).__name__}"
            )
        checked = [self._checked_batch(b) for b in (batch if many else (batch,))]  # all, before any work
        plans = [self._plan(b) for b in checked]  # (a codebook may run here, for the image targets)
        # The text encoder first: backward reaches the encoder run last first, so the image encoder's
        # activations (the largest) are freed before the text encoder's gradients are allocated
        # (FLAVA-full's bf16 all6 step: peak bytes in use 100-130 MiB lower, peak RSS 0.77x the fastest
        # peer's against 0.78-0.80x; benchmarks/README.md).
        texts = self._text_passes(plans)
        images = self._image_passes(plans)
        outputs = [
            self._losses(
                plan, images.get((i, True)), images.get((i, False)), texts.get((i, True)), texts.get((i, False))
            )
            for i, plan in enumerate(plans)
        ]
        return outputs if many else outputs[0]

    def _plan(self, b: PretrainingBatch) -> _Plan:
        w = self.weights
        pair = b.image is not None and b.text is not None
        want_multimodal = pair and (w.itm > 0 or w.mmm_image > 0 or w.mmm_text > 0)
        want_mim = b.image_patch_mask is not None and w.mim > 0 and (not pair or self.unimodal_losses_on_pairs)
        want_mlm = b.mlm_labels is not None and w.mlm > 0 and (not pair or self.unimodal_losses_on_pairs)
        image_targets = self._image_targets(b) if (want_mim or (want_multimodal and w.mmm_image > 0)) else None
        padding = None if b.text is None else text_padding_mask(b.text, b.text_attention_mask)
        want_contrastive = pair and w.global_contrastive > 0
        # Where the contrastive loss needs an unmasked pass beside a masked one, the same encoder call
        # runs both, the batch stacked on itself: GEMMs of twice the rows run faster (FLAVA-full's
        # image encoder, bf16: 0.99 against 1.22 s forward and backward for 4 pairs' two passes).
        merge = want_contrastive and not self.recompute_contrastive_passes
        return _Plan(b, want_multimodal, want_contrastive, want_mim, want_mlm, image_targets, padding, merge)

    def _image_passes(self, plans: list[_Plan]) -> dict[tuple[int, bool], Union[EncoderOutput, Tensor]]:
        """Every batch's masked image pass (and the unmasked one beside it), images of one shape in one
        encoder call: keyed (batch index, True) for a masked pass's output, (index, False) for an
        unmasked pass's CLS states."""
        passes, ignore = [], self.ignore_index
        for i, plan in enumerate(plans):
            b = plan.batch
            if b.image is not None and (plan.want_multimodal or plan.want_mim):
                mask = None if b.image_patch_mask is None else b.image_patch_mask.flatten(1).bool()
                rows, device = b.image.shape[0], b.image.device
                # MIM alone reads the masked patches (and the CLS), the multimodal encoder every position
                wanted = None
                if not plan.want_multimodal and plan.image_targets is not None:
                    wanted = _read_positions(plan.image_targets, ignore, rows, 1 + mask.shape[1], device)
                passes.append(_Pass(i, True, b.image, mask, wanted))
                if plan.merge and mask is not None:  # no mask: run() gives it an all-False one beside the others'
                    cls_only = _read_positions(None, ignore, rows, 1 + mask.shape[1], device)
                    passes.append(_Pass(i, False, b.image, None, cls_only))

        def run(group: list[_Pass]) -> list:
            masks = None
            if any(item.mask is not None for item in group):
                patches = next(item.mask.shape[1] for item in group if item.mask is not None)
                masks = torch.cat(
                    [
                        item.mask
                        if item.mask is not None
                        else torch.zeros(item.inputs.shape[0], patches, dtype=torch.bool, device=item.inputs.device)
                        for item in group
                    ]
                )
            images = torch.cat([item.inputs for item in group]) if len(group) > 1 else group[0].inputs
            positions = _group_positions(group, [1 + masks.shape[1]] * len(group)) if masks is not None else None
            out = self.model.image_encoder(images, patch_mask=masks, output_positions=positions, return_pooled=False)
            return _split(out, group)

        return _stacked(passes, lambda item: (tuple(item.inputs.shape[1:]), item.inputs.dtype, item.inputs.device), run)

    def _text_passes(self, plans: list[_Plan]) -> dict[tuple[int, bool], Union[EncoderOutput, Tensor]]:
        """Every batch's masked text pass (and the unmasked one beside it) in one encoder call per
        device, shorter texts padded to the longest for it; keyed as :meth:`_image_passes`'s."""
        passes, ignore = [], self.ignore_index
        for i, plan in enumerate(plans):
            b = plan.batch
            if b.text is not None and (plan.want_multimodal or plan.want_mlm):
                rows, length = b.text.shape
                # MLM alone reads the masked tokens (and the CLS), the multimodal encoder every position
                wanted = None
                if not plan.want_multimodal:
                    wanted = _read_positions(b.mlm_labels, ignore, rows, length, b.text.device)
                passes.append(_Pass(i, True, b.text if b.text_masked is None else b.text_masked, plan.padding, wanted))
                if plan.merge and b.text_masked is not None:
                    cls_only = _read_positions(None, ignore, rows, length, b.text.device)
                    passes.append(_Pass(i, False, b.text, plan.padding, cls_only))

        def run(group: list[_Pass]) -> list:
            lengths = [item.inputs.shape[1] for item in group]
            if len(group) == 1:
                ids, padding = group[0].inputs, group[0].mask
            else:  # shorter texts padded to the longest, the extra columns padding (no real query reads them)
                extra = [max(lengths) - length for length in lengths]
                ids = torch.cat([F.pad(item.inputs, (0, n)) for item, n in zip(group, extra)])
                padding = None
                if any(extra) or any(item.mask is not None for item in group):
                    masks = [torch.zeros_like(i.inputs, dtype=torch.bool) if i.mask is None else i.mask for i in group]
                    padding = torch.cat([F.pad(mask, (0, n), value=True) for mask, n in zip(masks, extra)])
            positions = _group_positions(group, lengths)
            out = self.model.text_encoder(ids, padding_mask=padding, output_positions=positions, return_pooled=False)
            return _split(out, group, lengths if len(set(lengths)) > 1 else None)

        return _stacked(passes, lambda item: item.inputs.device, run)

    def _losses(
        self,
        plan: _Plan,
        masked_image: Optional[EncoderOutput],
        image_cls: Optional[Tensor],
        masked_text: Optional[EncoderOutput],
        text_cls: Optional[Tensor],
    ) -> FLAVAPretrainingOutput:
        """One batch's losses from its encoder passes."""
        b, w, padding, image_targets = plan.batch, self.weights, plan.padding, plan.image_targets
        losses, extra = {}, {}
        if plan.want_mim and image_targets is not None:
            losses["mim"], extra["mim_logits"], extra["mim_targets"] = _masked_prediction(
                self.mim_head, masked_image.last_hidden_state[:, 1:], image_targets, self.ignore_index
            )
        if plan.want_mlm:
            losses["mlm"], extra["mlm_logits"], extra["mlm_targets"] = _masked_prediction(
                self.mlm_head, masked_text.last_hidden_state, b.mlm_labels, self.ignore_index
            )
        positives = None
        if plan.want_multimodal:
            positives = self._multimodal_losses(b, masked_image, masked_text, padding, image_targets, losses, extra)
        if plan.want_contrastive:
            self._contrastive_loss(b, masked_image, masked_text, padding, positives, losses, extra, image_cls, text_cls)
        if not losses:
            raise ValueError(
                "the batch calls for no loss: give image + image_patch_mask (MIM), text + mlm_labels (MLM), "
                "or image + text (contrastive, ITM, MMM), with the matching loss weights > 0"
            )
        weighted = FLAVALosses(**{name: loss * getattr(w, name) for name, loss in losses.items()})
        total = torch.stack([loss for loss in weighted if loss is not None]).sum()
        counts = _loss_counts(losses, b, extra, positives, total.device)
        sums = {name: getattr(weighted, name) * count for name, count in counts.items()}
        return FLAVAPretrainingOutput(loss=total, losses=weighted, **extra, loss_sums=sums, loss_counts=counts)

    def _multimodal_losses(
        self,
        b: PretrainingBatch,
        masked_image: EncoderOutput,
        masked_text: EncoderOutput,
        padding: Optional[Tensor],
        image_targets: Optional[Tensor],
        losses: dict,
        extra: dict,
    ) -> Optional[Tensor]:
        """ITM, MMM-image and MMM-text on the multimodal encoding of the masked passes; returns the positive rows.

        The fused sequence is ``[CLS_M, image CLS, patches..., text...]``; the losses read only some of
        its positions (ITM the CLS, MMM the masked positions of matched rows), so the last layer
        computes those alone (per row, in order: the heads see the same states in the same order).
        """
        w, ignore = self.weights, self.ignore_index
        positives = None
        if b.itm_labels is not None:
            positives = b.itm_labels != 0
            if not positives.is_meta and not bool(positives.any()):  # (a meta dry run has no values: kept)
                positives = torch.ones_like(positives)  # no matched pair: keep every row (as the references do)
        rows, num_image = masked_image.last_hidden_state.shape[:2]
        length = masked_text.prenorm_last_hidden_state.shape[1]
        blank = torch.full((rows, 1 + num_image + length), ignore, dtype=torch.long, device=b.image.device)
        wanted = {}  # loss -> (B, S) targets at fused positions, ignore_index elsewhere and on unmatched rows
        if w.mmm_image > 0 and image_targets is not None:
            wanted["mmm_image"] = blank.clone()
            wanted["mmm_image"][:, 2 : 1 + num_image] = image_targets
        if w.mmm_text > 0 and b.mlm_labels is not None:
            wanted["mmm_text"] = blank.clone()
            wanted["mmm_text"][:, 1 + num_image :] = b.mlm_labels
        needed = torch.zeros_like(blank, dtype=torch.bool)
        needed[:, 0] = True
        for targets in wanted.values():
            if positives is not None:
                targets.masked_fill_(~positives[:, None], ignore)
            needed |= targets != ignore
        counts = needed.sum(dim=1)
        # each row's needed positions first, in order (a stable sort), cut to the longest row's count
        longest = needed.shape[1] if needed.is_meta else int(counts.max())  # (a meta dry run: every position)
        positions = torch.argsort((~needed).to(torch.uint8), dim=1, stable=True)[:, :longest]
        valid = torch.arange(positions.shape[1], device=positions.device) < counts[:, None]
        fused = self.model.multimodal_encoder(
            masked_image.prenorm_last_hidden_state,
            masked_text.prenorm_last_hidden_state,
            text_padding_mask=padding,
            output_positions=positions,
            return_pooled=False,
        ).last_hidden_state  # (B, P, D); position 0 (CLS_M) first in every row
        if b.itm_labels is not None and w.itm > 0:
            extra["itm_logits"] = self.itm_head(fused)
            losses["itm"] = F.cross_entropy(extra["itm_logits"], b.itm_labels)
        heads = {"mmm_image": self.mmm_image_head, "mmm_text": self.mmm_text_head}
        for name, targets in wanted.items():
            picked = targets.gather(1, positions).masked_fill(~valid, ignore)
            losses[name], extra[f"{name}_logits"], extra[f"{name}_targets"] = _masked_prediction(
                heads[name], fused, picked, ignore
            )
        return positives

    def _contrastive_loss(
        self,
        b: PretrainingBatch,
        masked_image: Optional[EncoderOutput],
        masked_text: Optional[EncoderOutput],
        padding: Optional[Tensor],
        positives: Optional[Tensor],
        losses: dict,
        extra: dict,
        image_cls: Optional[Tensor] = None,
        text_cls: Optional[Tensor] = None,
    ) -> None:
        """Global contrastive loss on the unmasked CLS features (given, from a masked pass that had no
        mask, or computed here)."""
        model = self.model
        recompute = True if self.recompute_contrastive_passes else None
        if image_cls is None and masked_image is not None and b.image_patch_mask is None:
            image_cls = masked_image.last_hidden_state[:, 0]
        elif image_cls is None:
            image_cls = model.image_encoder(
                b.image, output_positions=CLS_POSITION, return_pooled=False, checkpoint_activations=recompute
            ).last_hidden_state[:, 0]
        if text_cls is None and masked_text is not None and b.text_masked is None:
            text_cls = masked_text.last_hidden_state[:, 0]
        elif text_cls is None:
            text_cls = model.text_encoder(
                b.text,
                padding_mask=padding,
                output_positions=CLS_POSITION,
                return_pooled=False,
                checkpoint_activations=recompute,
            ).last_hidden_state[:, 0]
        out = contrastive_loss(
            F.normalize(model.image_projection(image_cls), dim=-1),
            F.normalize(model.text_projection(text_cls), dim=-1),
            model.logit_scale.clamp(0.0, LOGIT_SCALE_MAX),
            positive_rows=positives,
            gather=self.contrastive_gather,
        )
        losses["global_contrastive"] = out.loss
        extra["contrastive_logits_per_image"] = out.logits_per_image
        extra["contrastive_logits_per_text"] = out.logits_per_text
        extra["contrastive_labels"] = out.labels

    def _image_targets(self, b: PretrainingBatch) -> Optional[Tensor]:
        """Codebook ids of the masked patches, ``ignore_index`` elsewhere; None without a patch mask."""
        if b.image_patch_mask is None:
            return None
        tokens = b.image_tokens
        if tokens is None:
            if b.codebook_pixels is None or self.codebook is None:
                raise ValueError(
                    "MIM/MMM-image targets need image_tokens, or codebook_pixels and a model built with a codebook"
                )
            tokens = self.codebook.tokens(b.codebook_pixels)
        mask = b.image_patch_mask.flatten(1).bool()
        if tuple(tokens.shape) != tuple(mask.shape):
            raise ValueError(
                f"image_tokens must have the shape of image_patch_mask {tuple(mask.shape)}, got {tuple(tokens.shape)}"
            )
        vocab = self.mim_head.decoder.out_features
        require(
            ((tokens >= 0) & (tokens < vocab)).all(),
            lambda: f"image_tokens must be codebook ids in [0, {vocab})",
            "image_tokens must be codebook ids in [0, image_vocab_size)",
        )
        return torch.where(mask, tokens, torch.full_like(tokens, self.ignore_index))

    @staticmethod
    def _trim_padding(batch: PretrainingBatch) -> PretrainingBatch:
        """Drop trailing text columns that are padding in every row (no loss reads them)."""
        mask = batch.text_attention_mask
        if mask is None or batch.text is None or tuple(mask.shape) != tuple(batch.text.shape) or mask.dim() != 2:
            return batch  # shape errors are reported later, by the encoders
        if mask.is_meta:  # a dry run of shapes: no values tell the padding, the full length is kept
            return batch
        real_columns = (mask != 0).any(dim=0).nonzero()
        keep = int(real_columns.max()) + 1 if real_columns.numel() else mask.shape[1]
        if keep == mask.shape[1]:
            return batch
        trimmed = {
            name: None
            if getattr(batch, name) is None or getattr(batch, name).dim() != 2
            else getattr(batch, name)[:, :keep]
            for name in ("text", "text_masked", "text_attention_mask", "mlm_labels")
        }
        return PretrainingBatch(**{**batch.__dict__, **trimmed})

    def _checked_batch(self, batch: Union[PretrainingBatch, Mapping[str, Optional[Tensor]]]) -> PretrainingBatch:
        if isinstance(batch, Mapping):
            names = {f.name for f in fields(PretrainingBatch)}
            unknown = sorted(set(batch) - names)
            if unknown:
                raise TypeError(f"unknown batch field(s) {unknown}; known fields: {sorted(names)}")
            batch = PretrainingBatch(**batch)
        elif not isinstance(batch, PretrainingBatch):
            raise TypeError(f"batch must be a PretrainingBatch or a mapping, got {type(batch).__name__}")
        device = self.model.logit_scale.device
        batch = PretrainingBatch(
            **{f.name: _checked_field(f.name, getattr(batch, f.name), device) for f in fields(batch)}
        )
        if batch.text is None and batch.text_masked is not None:
            batch = PretrainingBatch(**{**batch.__dict__, "text": batch.text_masked, "text_masked": None})
        batch = self._trim_padding(batch)
        sizes = {f.name: getattr(batch, f.name).shape[0] for f in fields(batch) if getattr(batch, f.name) is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"batch fields disagree in batch size: {sizes}")
        text_shape = None if batch.text is None else tuple(batch.text.shape)
        for name in ("text_masked", "mlm_labels"):
            value = getattr(batch, name)
            if value is not None and tuple(value.shape) != text_shape:
                raise ValueError(f"{name} must have the shape of text {text_shape}, got {tuple(value.shape)}")
        if batch.image_patch_mask is not None:
            if batch.image is None:
                raise ValueError("image_patch_mask needs image, which is None")
            embed = self.model.image_encoder.embeddings
            grid = (batch.image.shape[-2] // embed.patch_size, batch.image.shape[-1] // embed.patch_size)
            check_patch_mask(batch.image_patch_mask, batch.image.shape[0], grid, name="image_patch_mask")
        if batch.mlm_labels is not None:
            vocab = self.mlm_head.decoder.out_features
            labels = batch.mlm_labels
            require(
                (((labels >= 0) & (labels < vocab)) | (labels == self.ignore_index)).all(),
                lambda: f"mlm_labels must be in [0, {vocab}) or ignore_index={self.ignore_index}",
                "mlm_labels must be in [0, vocab_size) or ignore_index",
            )
        if batch.itm_labels is not None:
            message = "itm_labels must be a (B,) tensor of 0 (mismatched) and 1 (matched)"
            if batch.itm_labels.dim() != 1:
                raise ValueError(message)
            require(((batch.itm_labels == 0) | (batch.itm_labels == 1)).all(), lambda: message, message)
            if batch.image is None or batch.text is None:
                raise ValueError("itm_labels need both image and text in the batch")
        return batch
