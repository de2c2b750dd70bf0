"""Open a FLAVA checkpoint directory with its tokenizer and image preprocessing: what the commands start from.

Understood layouts (all local paths; nothing is downloaded):

* a run directory of ``examples/flava/train.py`` (it holds ``model/``),
* its ``model/`` directory: ``*.safetensors`` weights, ``backbone_config.json`` (the
  ``flava_model`` arguments), ``vocab.txt`` with ``tokenizer_config.json``, and
  ``preprocessor_config.json`` (the recipe's evaluation transform),
* a Hugging Face ``facebook/flava-full``-style directory: ``config.json``, the weights
  (safetensors or ``.bin``, sharded or not), ``vocab.txt`` or ``tokenizer.json``,
  ``tokenizer_config.json`` and ``preprocessor_config.json``.

The checkpoint is used as its own users use it: the tokenizer honours ``tokenizer_config.json``
(:meth:`~torchflava.data.tokenizer.WordPieceTokenizer.from_directory`: casing, accents,
``model_max_length``) and ``image_transform`` reproduces ``preprocessor_config.json``
(:class:`~torchflava.data.transforms.ImageTransformSpec`: for ``facebook/flava-full``, a bicubic
resize straight to 224 x 224 and CLIP's mean and std). A directory without a
``preprocessor_config.json`` (exports written before it was recorded) gets
:class:`~torchflava.data.transforms.EvalImageTransform`: short side, bilinear, centre crop.
"""

import inspect
import json
import os
from pathlib import Path
from typing import NamedTuple, Union

from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import PREPROCESSOR_CONFIG, EvalImageTransform, ImageTransform, ImageTransformSpec
from torchflava.models import FLAVAModel, flava_model
from torchflava.models.flava.convert_weights import flava_kwargs_from_hf_config
from torchflava.utils.checkpoint import read_json_object

DEFAULT_TEXT_LENGTH = 77  # CLIP's, for tokenizers without a model_max_length


class PretrainedFLAVA(NamedTuple):
    """A loaded checkpoint.

    Attributes:
        model (FLAVAModel): the backbone, in eval mode.
        tokenizer (WordPieceTokenizer): its tokenizer, with its ``tokenizer_config.json`` settings.
        kwargs (dict): the ``flava_model`` arguments of its architecture.
        weights (Path): the weights file or directory it was loaded from.
        image_transform (ImageTransform): PIL image -> (3, image_size, image_size) pixels, the
            checkpoint's own preprocessing.
    """

    model: FLAVAModel
    tokenizer: WordPieceTokenizer
    kwargs: dict
    weights: Path
    image_transform: ImageTransform

    @property
    def image_size(self) -> int:
        """Side of the images the model was trained on."""
        return int(self.kwargs.get("image_size", 224))

    @property
    def max_text_length(self) -> int:
        """Most text positions the model has."""
        return int(self.kwargs.get("max_seq_len", 512))

    @property
    def text_length(self) -> int:
        """Default tokenisation length: the tokenizer's ``model_max_length`` (else 77), at most
        :attr:`max_text_length`."""
        length = self.tokenizer.model_max_length
        return min(DEFAULT_TEXT_LENGTH if length is None else length, self.max_text_length)


class CheckpointLayout(NamedTuple):
    """Where a checkpoint directory keeps its parts.

    Attributes:
        weights (Path): the weights file or directory.
        kwargs (dict): ``flava_model`` keyword arguments.
        directory (Path): the directory holding the tokenizer and preprocessing files.
    """

    weights: Path
    kwargs: dict
    directory: Path


def checkpoint_layout(path: Union[str, os.PathLike]) -> CheckpointLayout:
    """Find the weights, architecture arguments and tokenizer directory of a checkpoint directory.

    Args:
        path (Union[str, os.PathLike]): a run, export or Hugging Face directory (see the module doc).

    Returns:
        CheckpointLayout: weights (file or directory), ``flava_model`` keyword arguments, and the
        directory holding ``vocab.txt`` / ``tokenizer.json`` and the configs.

    Raises:
        FileNotFoundError: if ``path`` is not a directory of a known layout, or has neither
            ``vocab.txt`` nor ``tokenizer.json``.
    """
    path = Path(path)
    if (path / "model" / "backbone_config.json").is_file():
        path = path / "model"
    if (path / "backbone_config.json").is_file():
        kwargs = read_json_object(path / "backbone_config.json")
        weights = sorted(path.glob("*.safetensors"))
        if len(weights) != 1:  # several: which is the model's cannot be told (a stale copy beside it?)
            if not weights:
                raise FileNotFoundError(f"checkpoint: no .safetensors weights in {path}")
            raise ValueError(
                f"checkpoint: expected one .safetensors weights file in {path}, got {[w.name for w in weights]}"
            )
        weights = weights[0]
    elif (path / "config.json").is_file():
        kwargs = flava_kwargs_from_hf_config(read_json_object(path / "config.json"))
        weights = path
    else:
        raise FileNotFoundError(
            f"checkpoint: {path} is neither a torchflava run/export directory (backbone_config.json) nor a "
            "Hugging Face FLAVA directory (config.json)"
        )
    if not (path / "vocab.txt").is_file() and not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"checkpoint: {path} has neither vocab.txt nor tokenizer.json")
    return CheckpointLayout(weights=weights, kwargs=kwargs, directory=path)


def checkpoint_image_transform(directory: Union[str, os.PathLike], *, image_size: int) -> ImageTransform:
    """The image transform a checkpoint directory's ``preprocessor_config.json`` states.

    Args:
        directory (Union[str, os.PathLike]): the checkpoint directory (see :func:`checkpoint_layout`).
        image_size (int): the model's image side: the transform must give images of that size.

    Returns:
        ImageTransform: the checkpoint's preprocessing, or ``EvalImageTransform(image_size)`` when
        the directory has no ``preprocessor_config.json``.

    Raises:
        ValueError: naming the key, if the file is not JSON, holds a malformed or unsupported
            value, or gives images of another size than ``image_size``.
    """
    path = Path(directory) / PREPROCESSOR_CONFIG
    if not path.is_file():
        return EvalImageTransform(image_size)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{PREPROCESSOR_CONFIG}: {path} is not JSON ({error})") from None
    spec = ImageTransformSpec.from_preprocessor_config(config)
    if spec.output_size != (image_size, image_size):
        key = "size" if spec.crop_size is None else "crop_size"
        raise ValueError(
            f"{PREPROCESSOR_CONFIG}: {key} must give the model's {image_size} x {image_size} images, "
            f"got {'any size' if spec.output_size is None else spec.output_size}"
        )
    return ImageTransform(spec)


def load_pretrained(path: Union[str, os.PathLike]) -> PretrainedFLAVA:
    """Build the checkpoint's architecture, load its weights, tokenizer and image preprocessing.

    Args:
        path (Union[str, os.PathLike]): a run, export or Hugging Face directory.

    Returns:
        PretrainedFLAVA: model (eval mode), tokenizer, architecture arguments, weights path and
        image transform.

    Raises:
        FileNotFoundError: as :func:`checkpoint_layout`.
        ValueError: if ``tokenizer_config.json`` or ``preprocessor_config.json`` holds a bad value,
            the tokenizer has more tokens than the model's vocabulary, or the weights do not match the
            architecture.
    """
    layout = checkpoint_layout(path)
    tokenizer = WordPieceTokenizer.from_directory(layout.directory)
    vocab_size = layout.kwargs.get("vocab_size", 30522)
    if tokenizer.vocab_size > vocab_size:  # its last ids would have no embedding (fewer tokens is common: padding)
        raise ValueError(
            f"checkpoint: expected a tokenizer of at most the model's vocab_size {vocab_size} tokens in "
            f"{layout.directory}, got {tokenizer.vocab_size}"
        )
    image_transform = checkpoint_image_transform(layout.directory, image_size=int(layout.kwargs.get("image_size", 224)))
    unknown = sorted(set(layout.kwargs) - set(inspect.signature(flava_model).parameters) - {"pretrained"})
    if unknown:  # was flava_model's TypeError, naming no file
        raise ValueError(f"checkpoint: {layout.directory} states arguments flava_model does not take: {unknown}")
    model = flava_model(pretrained=layout.weights, **layout.kwargs).eval()
    return PretrainedFLAVA(
        model=model, tokenizer=tokenizer, kwargs=layout.kwargs, weights=layout.weights, image_transform=image_transform
    )
