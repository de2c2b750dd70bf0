"""Data for FLAVA: sources (the built-in shapes world and file readers), tokenizer, transforms and
the mixed pretraining batches. Needs the ``data`` extra (pillow, tokenizers, torchdata)."""

from torchflava.data.finetuning import (
    ClassificationCollator,
    GlueTsv,
    ImageClassFolder,
    ImageTextLabels,
    LabeledSample,
    ShapesClassification,
)
from torchflava.data.pretraining import (
    KINDS,
    MixedBatch,
    MixedPretrainingBatches,
    PretrainingCollator,
    SkippedSample,
)
from torchflava.data.readers import ImageFolder, ImageTextFolder, TarShards, TextCorpus
from torchflava.data.samples import BadSample, Sample
from torchflava.data.shapes import CLASS_NAMES, Scene, ShapesWorld
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import EvalImageTransform, PretrainingImageTransform

__all__ = [
    "ClassificationCollator",
    "GlueTsv",
    "ImageClassFolder",
    "ImageTextLabels",
    "LabeledSample",
    "ShapesClassification",
    "BadSample",
    "CLASS_NAMES",
    "EvalImageTransform",
    "ImageFolder",
    "ImageTextFolder",
    "KINDS",
    "MixedBatch",
    "MixedPretrainingBatches",
    "PretrainingCollator",
    "PretrainingImageTransform",
    "Sample",
    "Scene",
    "ShapesWorld",
    "SkippedSample",
    "TarShards",
    "TextCorpus",
    "WordPieceTokenizer",
]
