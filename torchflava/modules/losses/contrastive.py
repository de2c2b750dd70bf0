"""Global image-text contrastive loss (CLIP / FLAVA), with features gathered across ranks.

Each rank scores its B local images against the text of the whole global batch (every rank's
rows, gathered) and its B local texts against every image; the positive of local row i is global
row ``offset + i``. The loss is the mean of the two cross-entropies over the local rows, as in
FLAVA (Hugging Face ``FlavaForPreTraining``), so that with equal local batches the mean of the
ranks' losses is the loss of the global batch.
"""

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from torchflava.utils.distributed import GatherGrad, gather_features

#: Largest log multiplier ContrastiveLoss accepts, 88.72: ``exp`` of it, rounded to float32, is finite;
#: past ln(float32 max) = 88.7228 it is inf and the loss NaN.
LOGIT_SCALE_LIMIT = math.floor(100 * math.log(torch.finfo(torch.float32).max)) / 100


class ContrastiveOutput(NamedTuple):
    """What the contrastive loss returns, B local rows against B_global gathered columns.

    Attributes:
        loss (Tensor): () mean over the rows that count of the image->text and text->image
            cross-entropies, averaged.
        logits_per_image (Tensor): (B, B_global) ``exp(logit_scale) * image @ all_text^T``.
        logits_per_text (Tensor): (B, B_global) ``exp(logit_scale) * text @ all_image^T``.
        labels (Tensor): (B,) long, the column of each row's positive: ``offset + arange(B)``.
    """

    loss: Tensor
    logits_per_image: Tensor
    logits_per_text: Tensor
    labels: Tensor


def _check_inputs(
    image_features: Tensor, text_features: Tensor, logit_scale: Tensor, positive_rows: Optional[Tensor]
) -> None:
    for name, value in (("image_features", image_features), ("text_features", text_features)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        if value.dim() != 2 or value.shape[0] == 0 or value.shape[1] == 0:  # (P = 0: every logit 0, loss log B)
            raise ValueError(f"{name} must have shape (B, P) with B >= 1 and P >= 1, got {tuple(value.shape)}")
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"text_features must have the shape of image_features {tuple(image_features.shape)}, "
            f"got {tuple(text_features.shape)}"
        )
    if not isinstance(logit_scale, Tensor):
        raise TypeError(f"logit_scale must be a Tensor, got {type(logit_scale).__name__}")
    if logit_scale.dim() != 0:
        raise ValueError(f"logit_scale must be a scalar tensor (shape ()), got shape {tuple(logit_scale.shape)}")
    devices = {"image_features": image_features.device, "text_features": text_features.device}
    devices["logit_scale"] = logit_scale.device
    if len(set(devices.values())) > 1:  # (torch's own error names no argument)
        raise ValueError(f"image_features, text_features and logit_scale must be on one device, got {devices}")
    if not logit_scale.is_floating_point():
        raise TypeError(f"logit_scale must be a floating-point tensor, got {logit_scale.dtype}")
    if positive_rows is not None:
        if not isinstance(positive_rows, Tensor):
            raise TypeError(f"positive_rows must be a Tensor or None, got {type(positive_rows).__name__}")
        if positive_rows.dtype != torch.bool:
            raise TypeError(f"positive_rows must be a bool tensor, got {positive_rows.dtype}")
        if tuple(positive_rows.shape) != (image_features.shape[0],):
            raise ValueError(
                f"positive_rows must have shape ({image_features.shape[0]},), got {tuple(positive_rows.shape)}"
            )
    # (NaN or infinite values are not refused here: they give a non-finite loss, which the training
    # loop stops on, naming the last good checkpoint; a loss that raised would bypass that)


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


def _check_bounds(logit_scale_min: Optional[float], logit_scale_max: Optional[float]) -> None:
    """The clamp bounds of the log multiplier (None: unbounded on that side): finite numbers, the maximum
    at most :data:`LOGIT_SCALE_LIMIT`, the minimum at most the maximum."""
    for name, value in (("logit_scale_min", logit_scale_min), ("logit_scale_max", logit_scale_max)):
        if value is not None:
            _check_number(name, value)
    for name, value, which in (
        ("logit_scale_max", logit_scale_max, "largest"),
        ("logit_scale_min", logit_scale_min, "smallest"),
    ):
        if value is not None and value > LOGIT_SCALE_LIMIT:  # (past it: a NaN loss)
            raise ValueError(
                f"{name} must be <= {LOGIT_SCALE_LIMIT} (exp overflows float32 beyond it); it is the log of the "
                f"{which} multiplier, ln(100) = {math.log(100):.3f} for a multiplier of 100, got {value}"
            )
    if logit_scale_min is not None and logit_scale_max is not None and not logit_scale_min <= logit_scale_max:
        raise ValueError(f"logit_scale_min ({logit_scale_min}) must be <= logit_scale_max ({logit_scale_max})")


def contrastive_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    *,
    positive_rows: Optional[Tensor] = None,
    gather: GatherGrad = GatherGrad.GLOBAL,
    logit_scale_min: Optional[float] = None,
    logit_scale_max: Optional[float] = None,
) -> ContrastiveOutput:
    """Symmetric image-text cross-entropy against every rank's features.

    Features are used as given (callers L2-normalise them). Under ``torch.distributed`` both
    feature sets are gathered from all ranks with :func:`~torchflava.utils.distributed.gather_features`
    (local batch sizes may differ); without it, B_global = B and the labels are ``arange(B)``.

    Args:
        image_features (Tensor): (B, P) this rank's image embeddings.
        text_features (Tensor): (B, P) this rank's text embeddings; row i is paired with image row i.
        logit_scale (Tensor): () log of the multiplier applied to the cosine similarities (not the
            multiplier open_clip's ``ClipLoss`` takes), clamped into ``[logit_scale_min,
            logit_scale_max]`` where those are given, else used as given. Near 88.7 the loss overflows to
            inf, and past ln(float32 max) = 88.7228 ``exp(logit_scale)`` does and the loss is NaN.
        positive_rows (Optional[Tensor]): (B,) bool, ``True = this row is a positive pair and contributes a
            loss term`` (a selection, unlike the ``True = masked`` padding masks elsewhere). FLAVA
            passes the matched ITM pairs. Columns always include every gathered sample. When no row
            is selected, every row counts (FLAVA's fallback). None: every row counts.
        gather (GatherGrad): which gradient flows back through the gather; GLOBAL (the default)
            gives every rank the gradient of all ranks' losses, matching a single process on the
            global batch.
        logit_scale_min (Optional[float]): lower bound of ``logit_scale`` (None: none).
        logit_scale_max (Optional[float]): upper bound of ``logit_scale`` (None: none); ``math.log(100)``
            caps the multiplier at 100, as CLIP and FLAVA do. The clamp is functional (zero gradient
            outside the range; the parameter itself is left as it is): :class:`ContrastiveLoss` clamps so
            with its own bounds, [0, ln 100] by default; open_clip, and the CLIP recipe, clamp the
            parameter in place after each optimiser step instead, and pass it here unclamped. Holding a
            raw ``logit_scale`` parameter, do one or the other, or it grows without bound.

    Returns:
        ContrastiveOutput: the loss, (B, B_global) logits in both directions and the (B,) labels.

    Raises:
        TypeError: if an input is not a Tensor, the features or ``logit_scale`` are not floating point,
            ``positive_rows`` is not bool, ``gather`` not a GatherGrad or a bound not a number.
        ValueError: if the features are not both (B, P) with B, P >= 1, ``logit_scale`` is not a
            scalar, ``positive_rows`` is not (B,), a bound is not finite, ``logit_scale_max`` exceeds
            :data:`LOGIT_SCALE_LIMIT` or ``logit_scale_min`` exceeds ``logit_scale_max``. (NaN or infinite values give a
            non-finite loss, which the training loop stops on.)
    """
    _check_inputs(image_features, text_features, logit_scale, positive_rows)
    if not isinstance(gather, GatherGrad):
        raise TypeError(f"gather must be a GatherGrad, got {gather!r}")
    _check_bounds(logit_scale_min, logit_scale_max)
    if logit_scale_min is not None or logit_scale_max is not None:
        logit_scale = logit_scale.clamp(logit_scale_min, logit_scale_max)
    common = torch.promote_types(image_features.dtype, text_features.dtype)  # e.g. one tower in bf16
    image_features, text_features = image_features.to(common), text_features.to(common)
    all_image, offset = gather_features(image_features, gather)
    all_text, _ = gather_features(text_features, gather)
    scale = logit_scale.exp()
    logits_per_image = torch.matmul(image_features, all_text.transpose(0, 1)) * scale
    logits_per_text = torch.matmul(text_features, all_image.transpose(0, 1)) * scale
    labels = offset + torch.arange(image_features.shape[0], device=image_features.device)
    per_row = F.cross_entropy(logits_per_image, labels, reduction="none") + F.cross_entropy(
        logits_per_text, labels, reduction="none"
    )
    if positive_rows is None:
        loss = per_row.mean() / 2
    else:
        # Weights instead of boolean indexing: no host sync and no data-dependent shapes.
        positive_rows = positive_rows.to(per_row.device)
        weights = torch.where(positive_rows.any(), positive_rows, torch.ones_like(positive_rows)).to(per_row.dtype)
        loss = (per_row * weights).sum() / weights.sum() / 2
    return ContrastiveOutput(loss, logits_per_image, logits_per_text, labels)


class ContrastiveLoss(nn.Module):
    """The contrastive loss with its learnable ``logit_scale`` (the only state it owns).

    The value used in ``forward`` is ``logit_scale`` clamped to ``[logit_scale_min,
    logit_scale_max]`` (functionally, by :func:`contrastive_loss` given these bounds: the gradient is zero
    outside the range). Call :meth:`clamp_logit_scale_` after each optimizer step to keep the parameter
    itself in range.

    Args:
        logit_scale_init (float): initial log multiplier; ln(1 / 0.07) as in CLIP and FLAVA.
        logit_scale_min (float): lower bound of the log multiplier.
        logit_scale_max (float): upper bound of the log multiplier; ln(100) as in FLAVA.
        gather (GatherGrad): gradient mode of the cross-rank gather (see :func:`contrastive_loss`).

    Raises:
        ValueError: if the bounds are not finite with ``logit_scale_min <= logit_scale_init <=
            logit_scale_max``, or ``logit_scale_max`` exceeds :data:`LOGIT_SCALE_LIMIT` (88.72: ``exp``
            overflows float32 just past it; the bounds are logs, ln 100 = 4.605 for a multiplier of 100).
        TypeError: if ``gather`` is not a GatherGrad.
    """

    def __init__(
        self,
        *,
        logit_scale_init: float = math.log(1 / 0.07),
        logit_scale_min: float = 0.0,
        logit_scale_max: float = math.log(100),
        gather: GatherGrad = GatherGrad.GLOBAL,
    ) -> None:
        super().__init__()
        _check_number("logit_scale_init", logit_scale_init)
        for name, value in (("logit_scale_min", logit_scale_min), ("logit_scale_max", logit_scale_max)):
            _check_number(name, value)  # (None, unbounded, is the function's alone)
        _check_bounds(logit_scale_min, logit_scale_max)  # (a logit_scale past exp's range gave a NaN loss)
        if not logit_scale_min <= logit_scale_init <= logit_scale_max:
            raise ValueError(
                f"logit_scale_init must lie in [{logit_scale_min}, {logit_scale_max}], got {logit_scale_init}"
            )
        if not isinstance(gather, GatherGrad):
            raise TypeError(f"gather must be a GatherGrad, got {gather!r}")
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.logit_scale_init = float(logit_scale_init)
        self.logit_scale_min = float(logit_scale_min)
        self.logit_scale_max = float(logit_scale_max)
        self.gather = gather

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``logit_scale = logit_scale_init`` (:func:`torchflava.modules.init.init_weights` calls it)."""
        self.logit_scale.fill_(self.logit_scale_init)

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the ``logit_scale`` parameter in place into its range (call after optimizer steps)."""
        self.logit_scale.clamp_(self.logit_scale_min, self.logit_scale_max)

    def forward(
        self, image_features: Tensor, text_features: Tensor, *, positive_rows: Optional[Tensor] = None
    ) -> ContrastiveOutput:
        """Compute the loss with the clamped ``logit_scale``.

        Args:
            image_features (Tensor): (B, P) this rank's (normalised) image embeddings.
            text_features (Tensor): (B, P) this rank's (normalised) text embeddings.
            positive_rows (Optional[Tensor]): (B,) bool, ``True = positive pair that contributes a loss term``.

        Returns:
            ContrastiveOutput: see :func:`contrastive_loss`.

        Raises:
            TypeError: see :func:`contrastive_loss`.
            ValueError: see :func:`contrastive_loss`.
        """
        return contrastive_loss(
            image_features,
            text_features,
            self.logit_scale,
            positive_rows=positive_rows,
            gather=self.gather,
            logit_scale_min=self.logit_scale_min,
            logit_scale_max=self.logit_scale_max,
        )

    def extra_repr(self) -> str:
        bounds = f"logit_scale_min={self.logit_scale_min}, logit_scale_max={self.logit_scale_max}"
        return f"{bounds}, gather={self.gather.name}"
