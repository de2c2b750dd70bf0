"""FLAVA pretraining: the backbone, five heads, an optional frozen codebook, and the six losses.

Which losses run depends on what the batch holds:

* image only (with ``image_patch_mask``) -> MIM on the masked image;
* text only (with ``mlm_labels``) -> MLM on the masked text;
* image + text -> global contrastive (unmasked image and text), ITM, MMM-image and MMM-text (on the
  multimodal encoding of the masked image and masked text); MIM and MLM too when ``unimodal_losses_on_pairs``.

Only the encoder passes some loss uses are run: the unmasked passes only for the contrastive loss
(and then only their CLS output is computed in the last layer); a masked pass is shared with the
unmasked one when there is no mask. Masked-prediction heads see only the masked positions.
ITM negatives (``itm_labels == 0``) are left out of MMM and of the contrastive loss's rows.
"""

from dataclasses import dataclass, fields
import math
from typing import Mapping, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from torchflava.models.flava.model import FLAVAModel, text_padding_mask
from torchflava.modules.encoders import CLS_POSITION, EncoderOutput
from torchflava.modules.heads import ITMHead, MaskedPredictionHead
from torchflava.modules.layers.patch_embedding import check_patch_mask
from torchflava.modules.losses.contrastive import contrastive_loss
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


def _masked_and_unmasked(encoder: nn.Module, *inputs: Tensor, **paired: tuple) -> tuple[EncoderOutput, Tensor]:
    """One call of ``encoder`` on a batch stacked on itself: the first half's output (the masked pass)
    and the second half's CLS (the unmasked pass). ``inputs`` are the two halves' first argument (one
    tensor: the same for both), ``paired`` keyword arguments (first half's value, second half's)."""
    first, second = (inputs[0], inputs[0]) if len(inputs) == 1 else inputs
    rows = first.shape[0]
    kwargs = {k: None if a is None else torch.cat([a, b]) for k, (a, b) in paired.items()}
    out = encoder(torch.cat([first, second]), return_pooled=False, **kwargs)
    halves = EncoderOutput(
        last_hidden_state=out.last_hidden_state[:rows],
        prenorm_last_hidden_state=None
        if out.prenorm_last_hidden_state is None
        else out.prenorm_last_hidden_state[:rows],
    )
    return halves, out.last_hidden_state[rows:, 0]


def _masked_prediction(
    head: nn.Module, states: Tensor, targets: Tensor, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy of ``head`` on the positions whose target is not ``ignore_index``.

    states (B, S, D) and targets (B, S) -> (loss, logits (M, V), selected targets (M,)). With no
    selected position the loss is a zero that still reaches the head's parameters.
    """
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


def _checked_field(name: str, value: object) -> Optional[Tensor]:
    """``value`` of batch field ``name``, ids and labels as long; TypeError naming the field otherwise."""
    if value is None:
        return None
    if not isinstance(value, Tensor):
        raise TypeError(f"batch field {name} must be a torch.Tensor, got {type(value).__name__}")
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

    def forward(self, batch: Union[PretrainingBatch, Mapping[str, Optional[Tensor]]]) -> FLAVAPretrainingOutput:
        """Compute the losses the batch calls for.

        Args:
            batch (Union[PretrainingBatch, Mapping[str, Optional[Tensor]]]): see :class:`PretrainingBatch`;
                a mapping may use any subset of its field names.

        Returns:
            FLAVAPretrainingOutput: total and per-loss values, logits and targets.

        Raises:
            TypeError: if a mapping has an unknown field, or a field is not a tensor or has a dtype it
                cannot hold (integer pixels; float or bool ids and labels; float patch masks), naming it.
            ValueError: if fields disagree in batch size or shape, labels are out of range, or the
                batch calls for no loss at all.
        """
        b = self._checked_batch(batch)
        w = self.weights
        pair = b.image is not None and b.text is not None
        want_multimodal = pair and (w.itm > 0 or w.mmm_image > 0 or w.mmm_text > 0)
        want_contrastive = pair and w.global_contrastive > 0
        want_mim = b.image_patch_mask is not None and w.mim > 0 and (not pair or self.unimodal_losses_on_pairs)
        want_mlm = b.mlm_labels is not None and w.mlm > 0 and (not pair or self.unimodal_losses_on_pairs)
        image_targets = self._image_targets(b) if (want_mim or (want_multimodal and w.mmm_image > 0)) else None
        padding = None if b.text is None else text_padding_mask(b.text, b.text_attention_mask)

        losses, extra = {}, {}
        masked_image = masked_text = image_cls = text_cls = None
        # Where the contrastive loss needs an unmasked pass beside a masked one, one encoder call
        # runs both, the batch stacked on itself: GEMMs of twice the rows run faster (FLAVA-full's
        # image encoder, bf16: 0.99 against 1.22 s forward and backward for 4 pairs' two passes).
        merge = want_contrastive and not self.recompute_contrastive_passes
        if b.image is not None and (want_multimodal or want_mim):
            mask = b.image_patch_mask
            if merge and mask is not None:
                masked_image, image_cls = _masked_and_unmasked(
                    self.model.image_encoder, b.image, patch_mask=(mask, torch.zeros_like(mask))
                )
            else:
                masked_image = self.model.image_encoder(b.image, patch_mask=mask, return_pooled=False)
        if b.text is not None and (want_multimodal or want_mlm):
            if merge and b.text_masked is not None:
                masked_text, text_cls = _masked_and_unmasked(
                    self.model.text_encoder, b.text_masked, b.text, padding_mask=(padding, padding)
                )
            else:
                text_masked = b.text if b.text_masked is None else b.text_masked
                masked_text = self.model.text_encoder(text_masked, padding_mask=padding, return_pooled=False)

        if want_mim and image_targets is not None:
            losses["mim"], extra["mim_logits"], extra["mim_targets"] = _masked_prediction(
                self.mim_head, masked_image.last_hidden_state[:, 1:], image_targets, self.ignore_index
            )
        if want_mlm:
            losses["mlm"], extra["mlm_logits"], extra["mlm_targets"] = _masked_prediction(
                self.mlm_head, masked_text.last_hidden_state, b.mlm_labels, self.ignore_index
            )
        positives = None
        if want_multimodal:
            positives = self._multimodal_losses(b, masked_image, masked_text, padding, image_targets, losses, extra)
        if want_contrastive:
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
        """ITM, MMM-image and MMM-text on the multimodal encoding of the masked passes; returns the positive rows."""
        w = self.weights
        fused = self.model.multimodal_encoder(
            masked_image.prenorm_last_hidden_state,
            masked_text.prenorm_last_hidden_state,
            text_padding_mask=padding,
            return_pooled=False,
        ).last_hidden_state  # (B, 1 + (1 + N) + L, D)
        positives = None
        if b.itm_labels is not None:
            positives = b.itm_labels != 0
            if not bool(positives.any()):
                positives = torch.ones_like(positives)  # no matched pair: keep every row (as the references do)
            if w.itm > 0:
                extra["itm_logits"] = self.itm_head(fused)
                losses["itm"] = F.cross_entropy(extra["itm_logits"], b.itm_labels)
        keep = slice(None) if positives is None else positives
        num_image = masked_image.last_hidden_state.shape[1]
        if w.mmm_image > 0 and image_targets is not None:
            losses["mmm_image"], extra["mmm_image_logits"], extra["mmm_image_targets"] = _masked_prediction(
                self.mmm_image_head, fused[keep, 2 : 1 + num_image], image_targets[keep], self.ignore_index
            )
        if w.mmm_text > 0 and b.mlm_labels is not None:
            losses["mmm_text"], extra["mmm_text_logits"], extra["mmm_text_targets"] = _masked_prediction(
                self.mmm_text_head, fused[keep, 1 + num_image :], b.mlm_labels[keep], self.ignore_index
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
        if bool(((tokens < 0) | (tokens >= vocab)).any()):
            raise ValueError(f"image_tokens must be codebook ids in [0, {vocab})")
        return torch.where(mask, tokens, torch.full_like(tokens, self.ignore_index))

    @staticmethod
    def _trim_padding(batch: PretrainingBatch) -> PretrainingBatch:
        """Drop trailing text columns that are padding in every row (no loss reads them)."""
        mask = batch.text_attention_mask
        if mask is None or batch.text is None or tuple(mask.shape) != tuple(batch.text.shape) or mask.dim() != 2:
            return batch  # shape errors are reported later, by the encoders
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
        batch = PretrainingBatch(**{f.name: _checked_field(f.name, getattr(batch, f.name)) for f in fields(batch)})
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
            if bool((((labels < 0) | (labels >= vocab)) & (labels != self.ignore_index)).any()):
                raise ValueError(f"mlm_labels must be in [0, {vocab}) or ignore_index={self.ignore_index}")
        if batch.itm_labels is not None:
            if batch.itm_labels.dim() != 1 or not bool(((batch.itm_labels == 0) | (batch.itm_labels == 1)).all()):
                raise ValueError("itm_labels must be a (B,) tensor of 0 (mismatched) and 1 (matched)")
            if batch.image is None or batch.text is None:
                raise ValueError("itm_labels need both image and text in the batch")
        return batch
