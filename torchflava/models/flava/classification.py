"""FLAVA for classification and regression: a head on the CLS state of one encoder.

The paper fine-tunes with an MLP on the CLS of the encoder that fits the task: the text encoder
for GLUE, the image encoder for vision tasks, the multimodal encoder (on the unmasked image and
text) for VQA, SNLI-VE or Hateful Memes. Only the encoder that the head reads is run, and in its
last layer only the CLS position is computed.
"""

from typing import Mapping, NamedTuple, Optional

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from torchflava.models.flava.model import FLAVAModel, text_padding_mask
from torchflava.modules.encoders import CLS_POSITION
from torchflava.utils.checks import describe_tensor, require

MODALITIES = ("text", "image", "multimodal")
# The forward arguments each modality's head reads (any head also reads labels).
_TEXT_INPUTS = ("text", "text_attention_mask", "token_type_ids")
READ_INPUTS = {"text": _TEXT_INPUTS, "image": ("image",), "multimodal": ("image", *_TEXT_INPUTS)}
LOSSES = ("cross_entropy", "binary_cross_entropy", "mse")


class ClassificationOutput(NamedTuple):
    """Output of :meth:`FLAVAForClassification.forward`.

    Attributes:
        logits (Tensor): (B, num_classes) scores (for ``mse``: (B, num_classes) predictions).
        loss (Optional[Tensor]): scalar, when labels were given.
        loss_sums (Optional[dict[str, Tensor]]): ``{loss name: loss x B}``, the loss summed over the
            rows (for a data-parallel loop), when labels were given.
        loss_counts (Optional[dict[str, Tensor]]): ``{loss name: B}`` as a () float tensor.
    """

    logits: Tensor
    loss: Optional[Tensor] = None
    loss_sums: Optional[dict[str, Tensor]] = None
    loss_counts: Optional[dict[str, Tensor]] = None


class FLAVAForClassification(nn.Module):
    """A FLAVA backbone with a classification/regression head on one encoder's CLS.

    Args:
        model (FLAVAModel): the backbone.
        classifier (nn.Module): (B, D) CLS state -> (B, num_classes).
        modality (str): ``"text"``, ``"image"`` or ``"multimodal"`` (the multimodal encoder's CLS_M).
        loss (str): ``"cross_entropy"`` (labels: (B,) class ids), ``"binary_cross_entropy"``
            (labels: (B, C) soft scores in [0, 1], e.g. VQA answer scores; the mean over classes is
            multiplied by C, the VQA convention) or ``"mse"`` (labels: (B,) or (B, C) targets).

    Raises:
        ValueError: if ``modality`` or ``loss`` is unknown.
    """

    def __init__(self, model: FLAVAModel, classifier: nn.Module, *, modality: str, loss: str) -> None:
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.model = model
        self.classifier = classifier
        self.modality = modality
        self.loss = loss

    @property
    def num_classes(self) -> int:
        """Output width of the classifier."""
        return [m for m in self.classifier.modules() if isinstance(m, nn.Linear)][-1].out_features

    def cls_state(
        self,
        image: Optional[Tensor] = None,
        text: Optional[Tensor] = None,
        *,
        text_attention_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
    ) -> Tensor:
        """The (B, D) CLS state the head reads (the encoders' final LayerNorm applied); ``token_type_ids``
        reach the text encoder (a sentence pair's segments), in the text and multimodal modalities.

        Raises:
            ValueError: if the inputs the modality needs are missing, or an input it does not read is given:
                an image to the text modality, text, ``text_attention_mask`` or ``token_type_ids`` to the image
                one (each was ignored: a head built for one modality looked as if it read both).
        """
        need = {"text": ("text",), "image": ("image",), "multimodal": ("image", "text")}[self.modality]
        given = {"image": image, "text": text}
        missing = [name for name in need if given[name] is None]
        if missing:
            raise ValueError(f"modality {self.modality!r} needs {list(need)}; missing {missing}")
        inputs = {"image": image, "text": text, "text_attention_mask": text_attention_mask}
        for name, value in {**inputs, "token_type_ids": token_type_ids}.items():
            read = "image" if name == "image" else "text"
            if value is not None and name not in READ_INPUTS[self.modality]:
                raise ValueError(
                    f"{name}: expected None for modality {self.modality!r} (no {read} read), got "
                    f"{describe_tensor(value)}"
                )
        types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        m = self.model
        if self.modality == "image":
            return m.image_encoder(image, output_positions=CLS_POSITION, return_pooled=False).last_hidden_state[:, 0]
        padding = text_padding_mask(text, text_attention_mask)
        if self.modality == "text":
            return m.text_encoder(
                text, padding_mask=padding, output_positions=CLS_POSITION, return_pooled=False, **types
            ).last_hidden_state[:, 0]
        image_states = m.image_encoder(image, return_pooled=False).prenorm_last_hidden_state
        text_states = m.text_encoder(text, padding_mask=padding, return_pooled=False, **types).prenorm_last_hidden_state
        fused = m.multimodal_encoder(image_states, text_states, text_padding_mask=padding, return_pooled=False)
        return fused.last_hidden_state[:, 0]

    def forward(
        self,
        image: Optional[Tensor] = None,
        text: Optional[Tensor] = None,
        *,
        text_attention_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,
    ) -> ClassificationOutput:
        """Scores, and the loss when ``labels`` are given.

        Args:
            image (Optional[Tensor]): (B, 3, H, W) normalised pixels (modalities image, multimodal).
            text (Optional[Tensor]): (B, L) token ids (modalities text, multimodal).
            text_attention_mask (Optional[Tensor]): (B, L), 1 (True) = token, 0 (False) = padding: Hugging Face's
                ``attention_mask``, the inverse of a padding mask.
            token_type_ids (Optional[Tensor]): (B, L) segment ids of the text (a sentence pair: 0 for
                ``[CLS] a [SEP]``, 1 for ``b [SEP]``); None: all 0, as for a single text.
            labels (Optional[Tensor]): see the class's ``loss``.

        Returns:
            ClassificationOutput: logits (B, num_classes) and the loss or None.

        Raises:
            ValueError: if an input the modality needs is missing, one it does not read is given (see
                :meth:`cls_state`), or the labels do not fit the loss
                (shape, dtype, device, class id out of range, score outside [0, 1]).
        """
        state = self.cls_state(image, text, text_attention_mask=text_attention_mask, token_type_ids=token_type_ids)
        logits = self.classifier(state)
        if labels is None:
            return ClassificationOutput(logits)
        loss = self._loss(logits, labels)
        rows = torch.tensor(float(logits.shape[0]), device=logits.device)
        return ClassificationOutput(logits, loss, {self.loss: loss * rows}, {self.loss: rows})

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        batch, classes = logits.shape
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        if labels.device != logits.device:  # (a meta one failed on Tensor.item() inside torch)
            raise ValueError(f"labels must be on the model's device {logits.device}, got {labels.device}")
        # (values are checked through require: on the meta device, a dry run of shapes, there are none to read)
        if self.loss == "cross_entropy":
            if labels.shape != (batch,) or labels.is_floating_point() or labels.dtype == torch.bool:
                raise ValueError(
                    f"labels must be ({batch},) integer class ids, got {tuple(labels.shape)} {labels.dtype}"
                )
            outside = (labels < 0) | (labels >= classes)  # (cross_entropy's own error on CUDA is a device-side assert)

            def where() -> str:
                row = int(outside.nonzero()[0, 0])
                return (
                    f"labels must be class ids in [0, {classes}) (num_classes={classes}), got {int(labels[row])} "
                    f"at row {row} of the batch"
                )

            require(~outside.any(), where, f"labels must be class ids in [0, {classes})")
            return F.cross_entropy(logits, labels.long())  # any integer dtype
        if labels.is_floating_point():
            message = "labels must be finite, got NaN or infinite values"
            require(torch.isfinite(labels).all(), lambda: message, message)
        if self.loss == "binary_cross_entropy":
            if labels.shape != (batch, classes) or not labels.is_floating_point():
                raise ValueError(
                    f"labels must be ({batch}, {classes}) float scores, got {tuple(labels.shape)} {labels.dtype}"
                )
            message = "labels must be scores in [0, 1]"
            require(((labels >= 0) & (labels <= 1)).all(), lambda: message, message)
            return F.binary_cross_entropy_with_logits(logits, labels) * classes
        targets = labels.unsqueeze(-1) if labels.dim() == 1 else labels
        if targets.shape != logits.shape:
            raise ValueError(f"labels must be ({batch},) or ({batch}, {classes}) targets, got {tuple(labels.shape)}")
        return F.mse_loss(logits, targets.to(logits.dtype))


def read_inputs(batch: Mapping[str, object], modality: str) -> dict:
    """The entries of ``batch`` that a head of ``modality`` reads, and its ``labels``: a batch of an image +
    text dataset (both kept) for a text or image head, which refuses the other modality's inputs.

    Args:
        batch (Mapping[str, object]): forward arguments by name (a collator's batch).
        modality (str): ``"text"``, ``"image"`` or ``"multimodal"``.

    Returns:
        dict: those entries, in ``batch``'s order.

    Raises:
        ValueError: if ``modality`` is unknown.
    """
    if modality not in READ_INPUTS:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return {name: value for name, value in batch.items() if name in READ_INPUTS[modality] or name == "labels"}


def classification_head(in_dim: int, num_classes: int, *, hidden_dim: int = 768, dropout: float = 0.5) -> nn.Sequential:
    """The paper's head: Linear -> ReLU -> Dropout -> Linear (torchmultimodal's default sizes).

    Args:
        in_dim (int): width of the CLS state.
        num_classes (int): outputs.
        hidden_dim (int): hidden width.
        dropout (float): dropout after the activation.

    Returns:
        nn.Sequential: the head, its linear weights from a truncated N(0, 0.02) and zero biases.
    """
    head = nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes)
    )
    with torch.no_grad():
        for linear in (head[0], head[3]):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
    return head


def default_loss(num_classes: int) -> str:
    """``mse`` for one output (regression, e.g. STS-B), else ``cross_entropy``."""
    return "mse" if num_classes == 1 else "cross_entropy"
