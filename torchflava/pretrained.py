"""Open a FLAVA checkpoint directory with its tokenizer: what the commands and recipes start from.

Understood layouts (all local paths; nothing is downloaded):

* a run directory of ``examples/flava/train.py`` (it holds ``model/``),
* its ``model/`` directory: ``*.safetensors`` weights, ``backbone_config.json`` (the
  ``flava_model`` arguments) and ``vocab.txt``,
* a Hugging Face ``facebook/flava-full``-style directory: ``config.json``, the weights
  (safetensors or ``.bin``, sharded or not) and ``vocab.txt``.
"""

import json
import os
from pathlib import Path
from typing import NamedTuple, Union

from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.models import FLAVAModel, flava_model
from torchflava.models.flava.convert_weights import flava_kwargs_from_hf_config


class PretrainedFLAVA(NamedTuple):
    """A loaded checkpoint.

    Attributes:
        model (FLAVAModel): the backbone, in eval mode.
        tokenizer (WordPieceTokenizer): its vocabulary.
        kwargs (dict): the ``flava_model`` arguments of its architecture.
        weights (Path): the weights file or directory it was loaded from.
    """

    model: FLAVAModel
    tokenizer: WordPieceTokenizer
    kwargs: dict
    weights: Path

    @property
    def image_size(self) -> int:
        """Side of the images the model was trained on."""
        return int(self.kwargs.get("image_size", 224))

    @property
    def max_text_length(self) -> int:
        """Most text positions the model has."""
        return int(self.kwargs.get("max_seq_len", 512))


def checkpoint_layout(path: Union[str, os.PathLike]) -> tuple[Path, dict, Path]:
    """Find the weights, architecture arguments and vocabulary of a checkpoint directory.

    Args:
        path (Union[str, os.PathLike]): a run, export or Hugging Face directory (see the module doc).

    Returns:
        tuple[Path, dict, Path]: weights (file or directory), ``flava_model`` keyword arguments,
        ``vocab.txt``.

    Raises:
        FileNotFoundError: if ``path`` is not a directory of a known layout, or lacks ``vocab.txt``.
    """
    path = Path(path)
    if (path / "model" / "backbone_config.json").is_file():
        path = path / "model"
    if (path / "backbone_config.json").is_file():
        kwargs = json.loads((path / "backbone_config.json").read_text())
        weights = sorted(path.glob("*.safetensors"))
        if not weights:
            raise FileNotFoundError(f"checkpoint: no .safetensors weights in {path}")
        weights = weights[0]
    elif (path / "config.json").is_file():
        kwargs = flava_kwargs_from_hf_config(json.loads((path / "config.json").read_text()))
        weights = path
    else:
        raise FileNotFoundError(
            f"checkpoint: {path} is neither a torchflava run/export directory (backbone_config.json) nor a "
            "Hugging Face FLAVA directory (config.json)"
        )
    vocab = path / "vocab.txt"
    if not vocab.is_file():
        raise FileNotFoundError(f"checkpoint: {path} has no vocab.txt")
    return weights, kwargs, vocab


def load_pretrained(path: Union[str, os.PathLike]) -> PretrainedFLAVA:
    """Build the checkpoint's architecture, load its weights and its tokenizer.

    Args:
        path (Union[str, os.PathLike]): a run, export or Hugging Face directory.

    Returns:
        PretrainedFLAVA: model (eval mode), tokenizer, architecture arguments and weights path.

    Raises:
        FileNotFoundError: as :func:`checkpoint_layout`.
        ValueError: if the weights do not match the architecture.
    """
    weights, kwargs, vocab = checkpoint_layout(path)
    model = flava_model(pretrained=weights, **kwargs).eval()
    return PretrainedFLAVA(model, WordPieceTokenizer.from_vocab(vocab), kwargs, weights)
