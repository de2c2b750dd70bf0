"""Data: sources (the built-in shapes world, file readers, labelled tasks), tokenizer, transforms,
step-indexed mixed batches (``mixing``) and FLAVA's pretraining collator (``flava``). Imports no
model code. Needs the ``data`` extra (pillow, tokenizers; webdataset, braceexpand and fsspec for
streamed shards, ``streaming``; the ``parquet`` extra, pyarrow, for Hugging Face Hub datasets, ``parquet``)."""

from torchflava.data.clip_tokenizer import CLIPTokenizer
from torchflava.data.finetuning import (
    ClassificationCollator,
    GlueTsv,
    ImageClassFolder,
    ImageTextLabels,
    LabeledSample,
    ShapesClassification,
)
from torchflava.data.flava import KINDS, FLAVAPretrainingCollator, flava_pretraining_batches
from torchflava.data.image_labels import LabelledImageFolder
from torchflava.data.mixing import MixedBatch, MixedBatches, SkippedSample
from torchflava.data.parquet import ParquetImages
from torchflava.data.readers import ImageFolder, ImageTextFolder, TarShards, TextCorpus
from torchflava.data.samples import BadSample, Sample
from torchflava.data.shapes import CLASS_NAMES, Scene, ShapesWorld
from torchflava.data.streaming import StreamBatch, StreamedSource, StreamingBatches, expand_shards
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import (
    EvalImageTransform,
    ImageTransform,
    ImageTransformSpec,
    PretrainingImageTransform,
    RandomCropTransform,
)

__all__ = [
    "CLIPTokenizer",
    "ClassificationCollator",
    "GlueTsv",
    "ImageClassFolder",
    "ImageTextLabels",
    "LabelledImageFolder",
    "LabeledSample",
    "ShapesClassification",
    "BadSample",
    "CLASS_NAMES",
    "EvalImageTransform",
    "ImageFolder",
    "ImageTextFolder",
    "ImageTransform",
    "ImageTransformSpec",
    "KINDS",
    "FLAVAPretrainingCollator",
    "flava_pretraining_batches",
    "MixedBatch",
    "MixedBatches",
    "ParquetImages",
    "PretrainingImageTransform",
    "RandomCropTransform",
    "Sample",
    "Scene",
    "ShapesWorld",
    "SkippedSample",
    "StreamBatch",
    "StreamedSource",
    "StreamingBatches",
    "expand_shards",
    "TarShards",
    "TextCorpus",
    "WordPieceTokenizer",
]
