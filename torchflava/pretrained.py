"""Open a FLAVA or CLIP checkpoint directory with its tokenizer and image preprocessing: what the
commands start from.

Understood layouts (all local paths; nothing is downloaded):

* a run directory of ``examples/flava/train.py`` or ``examples/clip/train.py`` (it holds ``model/``, or
  ``.model.previous`` where a kill between an export's renames left it set aside: :func:`export_directory`;
  a run without either, e.g. killed before its export: its newest complete and intact training checkpoint),
* one of its training checkpoints, ``<run>/checkpoints/step_<N>`` (``step_<N>`` with N unpadded will do):
  the model weights alone, verified as a resume verifies them (no pickle runs; the shards of every rank
  gathered), built with the architecture, tokenizer, text length and preprocessing its export would have
  (the run's ``config.yaml`` and the tokenizer files the run writes at its start),
* its ``model/`` directory: ``*.safetensors`` weights, ``backbone_config.json`` (the
  ``flava_model`` arguments) or ``clip_config.json`` (the ``clip_model`` arguments), ``vocab.txt``
  with ``tokenizer_config.json``, and ``preprocessor_config.json`` (the recipe's evaluation
  transform),
* a Hugging Face ``facebook/flava-full``-style directory: ``config.json``, the weights
  (safetensors or ``.bin``, sharded or not), ``vocab.txt`` or ``tokenizer.json``,
  ``tokenizer_config.json`` and ``preprocessor_config.json``,
* a Hugging Face ``CLIPModel`` directory (``openai/clip-vit-base-patch32``-style): ``config.json``
  with ``model_type`` ``clip``, the weights, ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``
  (:class:`~torchflava.data.clip_tokenizer.CLIPTokenizer`), ``tokenizer_config.json`` and
  ``preprocessor_config.json``,
* an open_clip Hub directory: ``open_clip_config.json`` with ``open_clip_model.safetensors`` or
  ``open_clip_pytorch_model.bin``, and the tokenizer files as above; or without them (the ``timm/`` CLIP
  repositories: open_clip tokenizes with its own merges file), given its tokenizer as a weights file alone is
  (``tokenizer=``), its preprocessing its ``open_clip_config.json``'s,
* a CLIP weights file alone (OpenAI's TorchScript ``~/.cache/clip/ViT-B-32.pt``, an OpenAI or open_clip state
  dict ``.pt``, ``.bin`` or ``.safetensors``), given with its tokenizer (``tokenizer=``: CLIP's merges file
  ``bpe_simple_vocab_16e6.txt.gz`` or a tokenizer directory) and, where the file does not say which
  (Hugging Face's or open_clip's without their config beside it), its ``activation``: :func:`lone_file_layout`,
  OpenAI's preprocessing, the model's text context.

The checkpoint is used as its own users use it: the tokenizer honours ``tokenizer_config.json``
(:meth:`~torchflava.data.tokenizer.WordPieceTokenizer.from_directory`: casing, accents,
``model_max_length``) and ``image_transform`` reproduces ``preprocessor_config.json``
(:class:`~torchflava.data.transforms.ImageTransformSpec`: for ``facebook/flava-full``, a bicubic
resize straight to 224 x 224 and CLIP's mean and std; for CLIP, a bicubic resize of the short side
and a centre crop; for an open_clip Hub directory without one, ``open_clip_config.json``'s
``preprocess_cfg``, as open_clip applies it). A directory with neither (exports written before it was
recorded) gets :class:`~torchflava.data.transforms.EvalImageTransform`: short side, bilinear, centre
crop.

To train from a CLIP checkpoint, :func:`read_clip_checkpoint` reads what it brings without its tensor
data (a directory above, or a weights file alone): the ``clip_model`` arguments it states, its
vocabulary size and end token, where its tokenizer is, how a tokenizer does not fit it, and which
sizes of a model its weights do not fit (their names and shapes).
"""

import argparse
import contextlib
import inspect
import json
import os
from pathlib import Path
import re
import sys
from typing import Callable, ContextManager, Iterator, NamedTuple, Optional, Union
import warnings

import torch

from torchflava.data.clip_tokenizer import CLIPTokenizer
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import (
    OPEN_CLIP_CONFIG,
    PREPROCESSOR_CONFIG,
    EvalImageTransform,
    ImageTransform,
    ImageTransformSpec,
)
from torchflava.models import CLIPModel, FLAVAModel, clip_model, flava_model
from torchflava.models.clip import clip_model_arguments
from torchflava.models.clip.convert_weights import (
    LAYOUTS,
    clip_sizes,
    convert_to_torchflava,
    directory_config,
    file_config,
)
from torchflava.models.flava import flava_model_arguments, load_flava_weights
from torchflava.models.flava.convert_weights import detect_layout, flava_kwargs_from_hf_config
from torchflava.modules.layers.packed_linear import onednn_packing_available, pack_linears
from torchflava.training.checkpointing import CONFIG, CheckpointManager, read_model_weights
from torchflava.training.integrity import MARKER, CheckpointIntegrityError, damage
from torchflava.utils.architecture import ContradictedArgument, UntoldArgument, export_files, layout_of
from torchflava.utils.checkpoint import (
    check_regular_file,
    first_line,
    is_remote,
    local_checkpoint,
    peek_state_dict,
    read_json_object,
    without_prefix,
    written_directory,
)
from torchflava.utils.meta import meta_device
from torchflava.utils.precision import bf16_products_region, emulates_bf16_products

DEFAULT_TEXT_LENGTH = 77  # CLIP's, for tokenizers without a model_max_length
# The precisions the encoders can run in: fp32, or bf16 autocast over weights cast (and packed) once.
INFERENCE_DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # the commands' --dtype
INFERENCE_DTYPES = tuple(INFERENCE_DTYPE_NAMES.values())
BUILDERS: dict[str, Callable] = {"flava": flava_model, "clip": clip_model}
BUILDERS_BY_NAME = {builder.__name__: family for family, builder in BUILDERS.items()}  # (the family of a builder)
# A torchflava export's architecture file, by family.
_EXPORT_CONFIGS = {"backbone_config.json": "flava", "clip_config.json": "clip"}
# Files only a model directory holds (an export's, Hugging Face's or open_clip's config), never a training checkpoint.
_MODEL_CONFIGS = (*_EXPORT_CONFIGS, "config.json", "open_clip_config.json")
# The files of a checkpoint directory that loading it reads: configs, tokenizer files, weights and shards.
_READ_PATTERNS = ("*.json", "*.txt", "*.safetensors", "*.bin")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "vocab.json")  # a checkpoint directory's tokenizer: any of these
# the builder's arguments a CLIP run started from a checkpoint records in its directory at its start (beside its
# tokenizer and preprocessor_config.json), so that neither its resume nor loading its training checkpoints reads
# the checkpoint it started from (its model.pretrained), which may since have moved or gone
RUN_ARGUMENTS = "model_arguments.json"
# The config of a fine-tuned CLIP image classifier's export (torchflava.classify): an image tower and a class head,
# no text tower, so no CLIP checkpoint: what loads a checkpoint refuses it, naming what loads it.
CLIP_CLASSIFIER_CONFIG = "clip_classifier_config.json"
CLIP_CLASSIFIER_START = "zero_shot"  # where such a run records the classifier it started from (an export's files)


def read_run_arguments(path: Union[str, os.PathLike]) -> dict:
    """The builder arguments a run recorded at its start (:data:`RUN_ARGUMENTS`): a JSON object stating at least
    ``image_size`` (an int); ValueError naming the file otherwise (a bare KeyError came from deep inside)."""
    kwargs = read_json_object(Path(path))
    size = kwargs.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool):
        raise ValueError(f"{path}: expected the model arguments with an int image_size, got image_size={size!r}")
    return kwargs


class Pretrained(NamedTuple):
    """A loaded checkpoint.

    Attributes:
        model (Union[FLAVAModel, CLIPModel]): the model, in eval mode; both have ``encode_image``,
            ``encode_text``, ``image_encoder`` and ``logit_scale``.
        tokenizer (Union[WordPieceTokenizer, CLIPTokenizer]): its tokenizer, with its
            ``tokenizer_config.json`` settings.
        kwargs (dict): the builder arguments of its architecture (``flava_model`` or ``clip_model``).
        weights (Path): the weights file or directory it was loaded from.
        image_transform (ImageTransform): PIL image -> (3, image_size, image_size) pixels, the
            checkpoint's own preprocessing.
        dtype (torch.dtype): the precision the encoders run in (:meth:`precision`).
    """

    model: Union[FLAVAModel, CLIPModel]
    tokenizer: Union[WordPieceTokenizer, CLIPTokenizer]
    kwargs: dict
    weights: Path
    image_transform: ImageTransform
    dtype: torch.dtype = torch.float32

    def precision(self) -> ContextManager:
        """The region to call the model's encoders in: bf16 autocast for a bf16 checkpoint (its
        features then come out in bf16: make them float before comparing them), else nothing."""
        return inference_precision(self.model, self.dtype)

    @property
    def image_size(self) -> int:
        """Side of the images the model was trained on."""
        return int(self.kwargs.get("image_size") or 224)

    @property
    def max_text_length(self) -> int:
        """Most text positions the model has."""
        return text_positions("clip" if isinstance(self.model, CLIPModel) else "flava", self.kwargs)

    @property
    def text_length(self) -> int:
        """Default tokenisation length: the tokenizer's ``model_max_length`` (else 77), at most
        :attr:`max_text_length`."""
        length = self.tokenizer.model_max_length
        return min(DEFAULT_TEXT_LENGTH if length is None else length, self.max_text_length)


def inference_precision(model: torch.nn.Module, dtype: torch.dtype) -> ContextManager:
    """The region to run ``model`` in at ``dtype``: autocast on its device for bf16, nothing for fp32. On a CPU
    without oneDNN's bf16 kernels (AVX2 only) the region also computes the bf16 products as fp32 GEMMs of the bf16
    operands (:func:`~torchflava.utils.precision.bf16_products_in_fp32`): PyTorch's own are many times slower there."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    device = next(model.parameters()).device
    return _bf16_inference(device, dtype, emulates_bf16_products(device, "bf16"))


@contextlib.contextmanager
def _bf16_inference(device: torch.device, dtype: torch.dtype, emulate: bool) -> Iterator[None]:
    with torch.autocast(device.type, dtype=dtype), bf16_products_region(emulate):
        yield


def text_positions(family: str, kwargs: dict) -> int:
    """Most text positions of a ``family`` model (a key of :data:`BUILDERS`) built with ``kwargs``: its
    ``context_length`` (CLIP; 77 where unstated) or ``max_seq_len`` (FLAVA; 512, the builder's default)."""
    if family == "clip":
        return int(kwargs.get("context_length") or 77)
    return int(kwargs.get("max_seq_len") or 512)


class CheckpointLayout(NamedTuple):
    """Where a checkpoint directory keeps its parts.

    Attributes:
        weights (Path): the weights file or directory.
        kwargs (dict): the builder's keyword arguments.
        directory (Path): the directory holding the tokenizer and preprocessing files.
        family (str): ``"flava"`` or ``"clip"`` (the key of :data:`BUILDERS`).
        config (Optional[Path]): the file ``kwargs`` were read from.
        image_transform (Optional[ImageTransform]): a training checkpoint's evaluation transform, resolved with
            its arguments (:func:`run_parts`), or a CLIP weights file's (OpenAI's); None: the files of ``directory``
            state it (see :func:`resolved_image_transform`).
        tokenizer (Optional[Path]): for a CLIP weights file alone, or a CLIP directory without tokenizer files, the
            tokenizer given with it (a merges file, a ``tokenizer.json`` or a tokenizer directory:
            :func:`checkpoint_tokenizer`); None: ``directory``'s.
    """

    weights: Path
    kwargs: dict
    directory: Path
    family: str = "flava"
    config: Optional[Path] = None
    image_transform: Optional[ImageTransform] = None
    tokenizer: Optional[Path] = None


def checkpoint_layout(
    path: Union[str, os.PathLike],
    *,
    tokenizer: Optional[Union[str, os.PathLike]] = None,
    activation: Optional[str] = None,
) -> CheckpointLayout:
    """Find the weights, architecture arguments and tokenizer directory of a checkpoint directory, or read a
    CLIP weights file given alone with its tokenizer (:func:`lone_file_layout`).

    Args:
        path (Union[str, os.PathLike]): a run, export or Hugging Face directory, or a run's training
            checkpoint (see the module doc); or a CLIP weights file (OpenAI's TorchScript ``.pt``, an
            OpenAI, open_clip or Hugging Face state dict ``.pt``/``.bin``/``.safetensors``).
        tokenizer (Optional[Union[str, os.PathLike]]): a weights file's tokenizer, which it does not hold:
            CLIP's merges file (``bpe_simple_vocab_16e6.txt.gz``), a ``tokenizer.json``, or a tokenizer
            directory (``vocab.json`` + ``merges.txt``, or ``tokenizer.json``); only with a weights file or a
            Hugging Face or open_clip CLIP directory holding none of the :data:`TOKENIZER_FILES` (``timm/``'s).
        activation (Optional[str]): ``"gelu"`` or ``"quick_gelu"``, for a weights file that does not say
            (Hugging Face's or open_clip's without their config beside it); only with a weights file.

    Returns:
        CheckpointLayout: weights (file or directory), builder keyword arguments, the directory
        holding the tokenizer and configs, and the model family. For a training checkpoint (a run without
        an export: its newest complete, intact one, :func:`training_checkpoint`): the ``step_<N>``
        directory, the arguments its run's export would record (:func:`run_parts`), the run directory
        (which holds its tokenizer) and the run's ``config.yaml``.

    Raises:
        TypeError: if ``path`` is not a str or os.PathLike.
        FileNotFoundError: if ``path`` is not a directory of a known layout, or a FLAVA one or an export without a
            tokenizer file; as :func:`training_checkpoint` and :func:`run_parts` for a training checkpoint.
        TokenizerlessDirectory: (a ValueError) for a Hugging Face or open_clip CLIP directory without a tokenizer file,
            given no ``tokenizer``.
        ValueError: if ``config.json`` states another model, an export holds several weights files, or
            a file that loading reads (``*.json``, ``*.txt``, ``*.safetensors``, ``*.bin``) is no
            regular file (a FIFO would make the read wait forever); ``activation`` with a checkpoint directory,
            ``tokenizer`` with one that holds a tokenizer file; as :func:`lone_file_layout` for a weights file
            (or a directory's ``tokenizer``).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint: the path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    _refuse_classifier_export(path)
    if path.is_file():
        return lone_file_layout(path, tokenizer=tokenizer, activation=activation)
    trained = training_checkpoint(path, quiet=True)  # (the loader that reads its weights says which it reads)
    if trained is not None:  # verified (once: a run's newest intact one was, as it was found), its config, tokenizer
        _refuse_lone_file_options(trained, tokenizer, activation)
        family, kwargs, _, transform = _verified_run_parts(trained, verified=found_intact(path, trained))
        run = trained.parent.parent
        return CheckpointLayout(trained, kwargs, run, family, config=run_config(trained), image_transform=transform)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    if not path.is_dir():  # (a FIFO, a socket...: no weights file either)
        check_regular_file(path, "a checkpoint directory or a CLIP weights file")
    _refuse_lone_file_options(path, None, activation)  # (its config states it)
    named, path = path, checkpoint_directory(path)  # a run directory: its model/ export
    if holds_tokenizer(path):
        _refuse_lone_file_options(named, tokenizer, None)
    for pattern in _READ_PATTERNS:  # (the loaders would not see a FIFO config, or wait on a FIFO's read)
        for file in sorted(path.glob(pattern)):
            check_regular_file(file, "a config, tokenizer or weights file")
    export = next((name for name in _EXPORT_CONFIGS if (path / name).is_file()), None)
    if export is not None:  # (the builders' reading of an export: its config and its one weights file)
        config_file, weights = export_files(path, export)
        family, kwargs = _EXPORT_CONFIGS[export], read_json_object(config_file)
    elif (path / "config.json").is_file() or (path / OPEN_CLIP_CONFIG).is_file():
        config = read_json_object(path / "config.json") if (path / "config.json").is_file() else {}
        model_type, open_clip = config.get("model_type"), (path / OPEN_CLIP_CONFIG).is_file()
        if model_type not in ("flava", "clip", None) and not open_clip:
            raise ValueError(
                f"checkpoint: {path / 'config.json'}: expected model_type 'flava' or 'clip' (a whole FlavaModel "
                f"or CLIPModel, both towers), got {model_type!r}"
            )
        family = "clip" if model_type == "clip" or (open_clip and model_type != "flava") else "flava"
        config_file = path / ("config.json" if model_type in ("flava", "clip") else OPEN_CLIP_CONFIG)
        try:  # (a directory of open_clip's: its config and weights, where no CLIP config.json is beside them)
            if family == "clip":
                _, kwargs, weights = directory_config(path)
            else:
                kwargs, weights = flava_kwargs_from_hf_config(config), path
        except (ValueError, TypeError) as error:  # name the file
            raise ValueError(f"checkpoint: {config_file}: {error}") from None
    else:
        raise FileNotFoundError(
            f"checkpoint: {path} is neither a torchflava run/export directory (backbone_config.json or "
            "clip_config.json) nor a Hugging Face FLAVA or CLIP directory (config.json)"
        )
    if holds_tokenizer(path):
        return CheckpointLayout(weights=weights, kwargs=kwargs, directory=path, family=family, config=config_file)
    none = f"checkpoint: {path} has none of the tokenizer files {', '.join(TOKENIZER_FILES)}"
    if family != "clip" or export is not None:  # (a tokenizer given apart is CLIP's; an export writes its own)
        raise FileNotFoundError(none)
    if tokenizer is None:  # (an open_clip Hub directory: open_clip tokenizes with its own merges file)
        raise TokenizerlessDirectory("tokenizer", f"{none}: expected tokenizer ({LONE_FILE_TOKENIZERS}), got none")
    given = given_tokenizer(tokenizer)  # read as a weights file alone's; the preprocessing the directory's
    return CheckpointLayout(weights, kwargs, path, family, config=config_file, tokenizer=given)


# What a weights file's tokenizer may be (:func:`lone_file_layout`'s and the commands' --tokenizer).
LONE_FILE_TOKENIZERS = (
    "a CLIP merges file such as bpe_simple_vocab_16e6.txt.gz, a tokenizer.json, or a directory of vocab.json + "
    "merges.txt or tokenizer.json"
)


class TokenizerlessDirectory(UntoldArgument):
    """``tokenizer`` untold for a Hugging Face or open_clip CLIP directory that holds none of the
    :data:`TOKENIZER_FILES` (an open_clip Hub directory of ``timm/``'s), which takes one as a weights file alone does
    (:func:`lone_file_needs`)."""


def _refuse_lone_file_options(
    path: Path, tokenizer: Optional[Union[str, os.PathLike]], activation: Optional[str]
) -> None:
    """ValueError (:class:`UntoldArgument`, naming it) where ``tokenizer`` or ``activation`` is given with checkpoint
    directory ``path``, which states it (its tokenizer files; its config): neither overrides them."""
    for name, value in (("tokenizer", tokenizer), ("activation", activation)):
        if value is not None:
            raise UntoldArgument(
                name,
                f"checkpoint: expected {name} only with {lone_file_option_takers(name)}, got {value} with {path}, a "
                "checkpoint directory, which holds its own",
            )


def lone_file_option_takers(name: str) -> str:
    """The checkpoints that take a ``tokenizer`` or ``activation`` (``name``), which neither states; a directory
    states its activation."""
    return "a CLIP weights file alone" + (" or a directory without tokenizer files" if name == "tokenizer" else "")


def lone_file_layout(
    path: Path, *, tokenizer: Optional[Union[str, os.PathLike]] = None, activation: Optional[str] = None
) -> CheckpointLayout:
    """The layout of a CLIP weights file given alone: its ``clip_model`` arguments (its shapes, OpenAI's entries, or
    a config beside it; :func:`~torchflava.models.clip.clip_model_arguments`), the ``tokenizer`` given with it, and
    OpenAI's preprocessing at the model's image size (a bicubic resize of the short side, a centre crop, CLIP's mean
    and std: open_clip's defaults, :meth:`ImageTransformSpec.from_open_clip_config`). Its names and shapes are read
    from its header; no tensor data.

    Raises:
        UntoldArgument: (a ValueError) naming ``tokenizer`` where none is given (checked before its sizes are read),
            or ``activation`` where the file does not say (Hugging Face's or open_clip's, no config beside it).
        ValueError: for a FLAVA weights file (a FLAVA checkpoint is read from its directory), a file that is no
            checkpoint or not CLIP's, or as :func:`~torchflava.models.clip.clip_model_arguments`.
        TypeError, FileNotFoundError: if ``tokenizer`` is not a path; is not there.
    """
    check_regular_file(path, "a CLIP weights file")
    names = without_prefix(peek_state_dict(path), "module.")  # (its header: names and shapes)
    if _is_flava(names):
        beside = f": {path.parent}, which holds it, is one" if directory_family(path.parent) == "flava" else ""
        raise ValueError(
            f"checkpoint: {path} is a FLAVA weights file alone, which is read from its directory: expected a FLAVA "
            "checkpoint directory (a run, its model/ export, or a Hugging Face facebook/flava-full-style directory "
            f"with its config.json, tokenizer and preprocessor_config.json beside the weights){beside}"
        )
    if tokenizer is None:
        raise UntoldArgument(
            "tokenizer",
            f"checkpoint: {path} is a weights file alone, which holds no tokenizer: expected tokenizer "
            f"({LONE_FILE_TOKENIZERS}), got none",
        )
    tokenizer = given_tokenizer(tokenizer)
    kwargs = clip_model_arguments(path, **({} if activation is None else {"activation": activation}))
    spec = ImageTransformSpec.from_open_clip_config({}, kwargs["image_size"])  # (OpenAI's own preprocessing)
    return CheckpointLayout(path, kwargs, path.parent, "clip", path, ImageTransform(spec), tokenizer)


def given_tokenizer(tokenizer: Union[str, os.PathLike]) -> Path:
    """The path of the ``tokenizer`` given with a checkpoint that holds none (a leading ``~`` expanded); TypeError
    where it is no path, FileNotFoundError where it is not there (:func:`checkpoint_tokenizer` reads it)."""
    if not isinstance(tokenizer, (str, os.PathLike)) or not isinstance(os.fspath(tokenizer), str):
        raise TypeError(f"tokenizer: expected a path ({LONE_FILE_TOKENIZERS}), got {type(tokenizer).__name__}")
    tokenizer = Path(os.path.expanduser(tokenizer))
    if not tokenizer.exists():
        raise FileNotFoundError(f"tokenizer: expected {LONE_FILE_TOKENIZERS}, got {tokenizer} (not there)")
    return tokenizer


def _is_flava(names: dict) -> bool:
    """Whether a state dict's names are FLAVA's (in one of its layouts); not so for CLIP's, or names of neither."""
    try:
        detect_layout(names)
    except ValueError:
        return False
    return True


def holds_tokenizer(directory: Union[str, os.PathLike]) -> bool:
    """Whether ``directory`` holds one of the :data:`TOKENIZER_FILES`."""
    return any((Path(directory) / name).is_file() for name in TOKENIZER_FILES)


def local_directory(path: Union[str, os.PathLike]) -> Union[str, os.PathLike]:
    """``path`` with a ``file://`` URL resolved as the builders resolve one (:func:`local_checkpoint`);
    a path with a leading ``~`` expanded, as the builders expand it, else as it is (:func:`checkpoint_layout`
    names what is wrong with it).

    Raises:
        ValueError: for a URL of another scheme (http, ...): a checkpoint directory with its tokenizer
            and preprocessing is local, nothing is downloaded; a malformed ``file://`` URL; or an empty path.
        FileNotFoundError: for a ``file://`` URL naming nothing (the URL named).
    """
    if is_remote(path):  # (else taken for a relative path that does not exist, the URL mangled)
        raise ValueError(
            f"checkpoint: expected a local checkpoint directory or a file:// URL of one (nothing is downloaded), "
            f"got the URL {os.fspath(path)!r}"
        )
    # (a Path collapses the URL's slashes: str only; an empty path, Path("") the working directory, is refused there)
    if isinstance(path, str) and (path.startswith("file:") or not path.strip()):
        return local_checkpoint(path)
    if isinstance(path, (str, os.PathLike)) and isinstance(os.fspath(path), str):
        return Path(os.path.expanduser(path))  # (Path.expanduser raises for an unknown ~user: left as it is)
    return path


def checkpoint_directory(path: Union[str, os.PathLike]) -> Path:
    """The directory that holds the tokenizer and preprocessing files of a checkpoint: ``path`` itself for
    a checkpoint directory (its export, :func:`export_directory`, for a run directory), the folder of a weights file."""
    path = Path(path)
    if not path.is_dir():
        return path.parent
    return export_directory(path) if _holds_export(path) else path


def export_directory(run: Path) -> Path:
    """The export of run directory ``run``: its ``model/``; where a kill between the two renames of an export left
    none, the previous export set aside (``.model.previous``), whole, which the run's next export puts back
    (:func:`~torchflava.utils.checkpoint.written_directory`)."""
    return written_directory(Path(run) / "model")


def _holds_export(run: Path) -> bool:
    """Whether run directory ``run`` holds an export (:func:`export_directory` with an architecture file)."""
    # (exists, not is_file: a FIFO or folder named so is refused as such by checkpoint_layout)
    return any((export_directory(run) / name).exists() for name in _EXPORT_CONFIGS)


def directory_family(path: Path) -> Optional[str]:
    """The model family (``"flava"`` or ``"clip"``) a checkpoint directory's config states: a torchflava export's
    (or its run's) architecture file, Hugging Face's ``config.json`` ``model_type``, open_clip's
    ``open_clip_config.json``; None for a file, nothing, or a directory whose configs state neither (no weights
    are read; a config that does not read states nothing: its reader names it)."""
    if not path.is_dir():
        return None
    directory = checkpoint_directory(path)
    exported = next((family for name, family in _EXPORT_CONFIGS.items() if (directory / name).is_file()), None)
    if exported is not None:
        return exported
    if (directory / "config.json").is_file():
        try:
            model_type = read_json_object(directory / "config.json").get("model_type")
        except (OSError, ValueError):
            model_type = None
        if model_type in BUILDERS:
            return model_type
    return "clip" if (directory / OPEN_CLIP_CONFIG).is_file() else None


def training_checkpoint(path: Path, *, quiet: bool = False) -> Optional[Path]:
    """The training checkpoint (``<run>/checkpoints/step_<N>``) that ``path`` names, or None where it names none.

    A directory holding DCP's ``.metadata`` or a ``COMPLETE`` marker is one, as is a ``step_<N>`` directory
    without a model directory's config (``config.json``, an export's; ``step_<N>`` with N unpadded names the
    checkpoint of that step); a run directory without an export
    (``model/``) but with ``checkpoints/`` names its newest complete checkpoint whose files all match their
    manifest, said in one line on stderr (with any newer one passed over as damaged); a run directory with an
    export names None (the export is read), said in one line on stderr where its newest complete checkpoint
    is of a later step (``quiet``: neither line).

    Raises:
        FileNotFoundError: for a ``step_<N>`` that is not there (naming the steps there are), a run's
            ``checkpoints/`` folder itself (naming its complete steps), or a run directory without an export
            whose checkpoints are all incomplete or damaged.
    """
    step = path.name.removeprefix("step_")
    if path.name.startswith("step_") and step.isdigit() and not path.exists():
        found = CheckpointManager(path.parent).complete()
        padded = next((p for p in found if int(p.name[5:]) == int(step)), None)
        if padded is None:
            steps = ", ".join(str(int(p.name[5:])) for p in found) or "none"
            raise FileNotFoundError(
                f"checkpoint: {path} does not exist (complete checkpoints in {path.parent}: {steps})"
            )
        return padded
    if not path.is_dir():
        return None
    if any((path / name).exists() for name in (".metadata", MARKER)):
        return path
    # (a Hugging Face or export directory a user named step_<N> holds its config: it is no training checkpoint)
    if path.name.startswith("step_") and step.isdigit() and not any((path / n).exists() for n in _MODEL_CONFIGS):
        return path
    inside = CheckpointManager(path).complete()  # (a run's checkpoints/ folder named for the run or a checkpoint)
    if inside and not any((path / name).exists() for name in _MODEL_CONFIGS):
        raise FileNotFoundError(
            f"checkpoint: {path} is a run's checkpoints folder; expected one of its checkpoints ({path}/step_<N>; "
            f"complete: {', '.join(str(int(p.name[5:])) for p in inside)}) or its run directory {path.parent}"
        )
    exported = _holds_export(path)
    if exported and (path / "checkpoints").is_dir() and not quiet:
        _newer_checkpoint_note(path)
    if exported or not (path / "checkpoints").is_dir() or any((path / name).exists() for name in _MODEL_CONFIGS):
        return None
    latest, passed_over = CheckpointManager(path / "checkpoints").latest_intact()
    if latest is None:
        reasons = f" ({'; '.join(passed_over)})" if passed_over else ""
        raise FileNotFoundError(
            f"checkpoint: {path} has no export (model/) and no complete, intact checkpoint in {path / 'checkpoints'}"
            f"{reasons}"
        )
    skipped = f", passing over {len(passed_over)} damaged newer one(s): {passed_over[0]}" if passed_over else ""
    if quiet:
        return latest
    print(
        f"checkpoint: {path} has no export (model/); evaluating its latest complete checkpoint {latest}{skipped}",
        file=sys.stderr,
    )
    return latest


def _refuse_classifier_export(path: Union[str, os.PathLike]) -> None:
    """ValueError where ``path`` is a fine-tuned CLIP image classifier (:data:`CLIP_CLASSIFIER_CONFIG`): its export,
    the run holding it, or a run of ``examples/clip/finetune.py`` without it (killed before its export) or one of its
    training checkpoints (the run records its start in :data:`CLIP_CLASSIFIER_START`). It was refused as "neither a
    run/export directory nor a Hugging Face one", or its run's training checkpoint was read and refused for the
    config's model section; what loads it is named."""
    path = Path(path)
    exports = (path, export_directory(path))
    found = next((d / CLIP_CLASSIFIER_CONFIG for d in exports if (d / CLIP_CLASSIFIER_CONFIG).is_file()), None)
    record = clip_classifier_record(path)
    found = found or (None if record is None else record / CLIP_CLASSIFIER_CONFIG)
    if found is not None:
        raise ValueError(
            f"checkpoint: {path} is a fine-tuned CLIP image classifier ({found}: an image tower and a class head, no "
            f"text tower), not a checkpoint of a whole model: load it with torchflava.classify.load_clip_classifier "
            f"or run python -m torchflava.classify --checkpoint {path}"
        )


def clip_classifier_record(path: Union[str, os.PathLike]) -> Optional[Path]:
    """The start record (:data:`CLIP_CLASSIFIER_START`) of the CLIP fine-tuning run that ``path`` is, or of whose
    training checkpoints (``<run>/checkpoints/step_<N>``, N padded or not) it is one; None for any other path."""
    for form in (Path(path).absolute(), Path(os.path.realpath(path))):  # (as named; then links and ".." resolved)
        runs = [form]
        if form.parent.name == "checkpoints" and re.fullmatch(r"step_\d+", form.name):
            runs.append(form.parent.parent)  # (a relative step_<N>: its run lies above the working directory)
        for run in runs:
            if (run / CLIP_CLASSIFIER_START / CLIP_CLASSIFIER_CONFIG).is_file():
                return run / CLIP_CLASSIFIER_START
    return None


def found_intact(named: Path, checkpoint: Path) -> bool:
    """Whether :func:`training_checkpoint` verified ``checkpoint`` as it found it for ``named``: a run directory's
    newest intact checkpoint was (its files hashed against their manifest), a checkpoint named was not."""
    return checkpoint.parent == named / "checkpoints"


def _newer_checkpoint_note(run: Path) -> None:
    """One line on stderr where ``run``'s newest complete checkpoint is of a later step than its export (the
    step its ``report.json`` states): a run resumed past its export and stopped before the next one, whose
    export, older, is what is evaluated. Nothing where the report does not state its step."""
    try:
        steps = json.loads((run / "report.json").read_text(encoding="utf-8")).get("steps")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):  # (no report, or not a recipe's)
        return
    found = CheckpointManager(run / "checkpoints").complete()
    if isinstance(steps, int) and found and int(found[-1].name[5:]) > steps:
        print(
            f"checkpoint: evaluating {run}'s export (model/, step {steps}), not its newer checkpoint {found[-1]} "
            "(name that checkpoint to evaluate it)",
            file=sys.stderr,
        )


def checkpoint_tokenizer(layout: CheckpointLayout) -> Union[WordPieceTokenizer, CLIPTokenizer]:
    """The tokenizer of a checkpoint directory (:func:`directory_tokenizer` of its directory and family); for a
    weights file alone (or a directory without tokenizer files), the one given with it
    (:attr:`CheckpointLayout.tokenizer`): a directory's, a ``tokenizer.json``, or a merges file's first merges, as
    many as the model's vocabulary holds (:meth:`CLIPTokenizer.from_bpe`); texts at most the model's context length
    by default."""
    given = layout.tokenizer
    if given is None:
        return directory_tokenizer(layout.directory, layout.family)
    if given.is_dir():  # (CLIP's: a BERT vocab.txt beside it is FLAVA's, no tokenizer of this model)
        return CLIPTokenizer.from_directory(given)
    context = text_positions(layout.family, layout.kwargs)
    if given.suffix == ".json":
        return CLIPTokenizer.from_tokenizer_json(given, model_max_length=context)
    return CLIPTokenizer.from_bpe(given, vocab_size=layout.kwargs["vocab_size"], model_max_length=context)


def directory_tokenizer(directory: Union[str, os.PathLike], family: str) -> Union[WordPieceTokenizer, CLIPTokenizer]:
    """The tokenizer a directory of a ``family`` model keeps (an export, a Hugging Face directory, or a run, which
    saves its tokenizer at its start): BERT's WordPiece where it has a ``vocab.txt`` or the model is FLAVA's,
    CLIP's byte-level BPE otherwise.

    Args:
        directory (Union[str, os.PathLike]): the directory holding the tokenizer files.
        family (str): ``"flava"`` or ``"clip"`` (a key of :data:`BUILDERS`).

    Returns:
        Union[WordPieceTokenizer, CLIPTokenizer]: with its ``tokenizer_config.json`` settings.

    Raises:
        ValueError: if ``family`` is not a key of :data:`BUILDERS` (before anything is read); as the
            tokenizer's ``from_directory``.
        FileNotFoundError: as the tokenizer's ``from_directory``, where the directory holds no tokenizer file.
    """
    if not isinstance(family, str) or family not in BUILDERS:
        raise ValueError(f"family: expected one of {sorted(BUILDERS)}, got {family!r}")
    directory = Path(directory)
    if family == "flava" or (directory / "vocab.txt").is_file():
        return WordPieceTokenizer.from_directory(directory)
    return CLIPTokenizer.from_directory(directory)


def checkpoint_image_transform(directory: Union[str, os.PathLike], *, image_size: int) -> ImageTransform:
    """The image transform a checkpoint directory's ``preprocessor_config.json`` states (an open_clip Hub
    directory without one: its ``open_clip_config.json``'s ``preprocess_cfg``).

    Args:
        directory (Union[str, os.PathLike]): the checkpoint directory (see :func:`checkpoint_layout`).
        image_size (int): the model's image side: the transform must give images of that size.

    Returns:
        ImageTransform: the checkpoint's preprocessing; for a recipe's run directory (where a
        :class:`CheckpointLayout` of its training checkpoints points), the transform its export records: that it
        recorded at its start (its ``preprocessor_config.json``), else, for a CLIP run recorded before, that of the
        checkpoint it started from, if any; else ``EvalImageTransform(image_size)`` when the
        directory has neither file.

    Raises:
        ValueError: naming the key, if the file is not JSON, holds a malformed or unsupported
            value, or gives images of another size than ``image_size``; naming the file, if it is
            no regular file (a FIFO is not read: it would wait forever).
    """
    path, open_clip = Path(directory) / PREPROCESSOR_CONFIG, Path(directory) / OPEN_CLIP_CONFIG
    if not path.exists():
        if open_clip.exists():  # an open_clip Hub directory: open_clip's own preprocessing
            return ImageTransform(ImageTransformSpec.from_open_clip_config(_json_object(open_clip), image_size))
        if (Path(directory) / CONFIG).is_file() and (Path(directory) / "checkpoints").is_dir():
            run = Path(directory)  # a run's own (its training checkpoints')
            return _run_image_transform(run, _model_section(_run_yaml(run / CONFIG)), image_size)
        return EvalImageTransform(image_size)
    spec = ImageTransformSpec.from_preprocessor_config(_json_object(path))
    if spec.output_size != (image_size, image_size):
        key = "size" if spec.crop_size is None else "crop_size"
        raise ValueError(
            f"{PREPROCESSOR_CONFIG}: {key} must give the model's {image_size} x {image_size} images, "
            f"got {'any size' if spec.output_size is None else spec.output_size}"
        )
    return ImageTransform(spec)


def _run_image_transform(
    run: Path, section: dict, image_size: int, started: Optional["CLIPCheckpoint"] = None
) -> ImageTransform:
    """The evaluation transform the export of recipe run ``run`` (its config's model section ``section``) records:
    what the run recorded at its start (its ``preprocessor_config.json``); else, for a CLIP run started from a
    checkpoint (its ``model.pretrained``), that checkpoint's preprocessing, which it trained with and keeps
    (``started``: that checkpoint, already read; else read here); else the recipes' own. The one resolution of
    both :func:`checkpoint_image_transform` of a run directory and :func:`run_parts`."""
    if (run / PREPROCESSOR_CONFIG).exists():  # (exists: a FIFO so named is refused as such, not passed over)
        return checkpoint_image_transform(run, image_size=image_size)
    pretrained = section.get("pretrained")
    if pretrained is None or "vision_width" not in section:  # from scratch, or a FLAVA run: the recipes' transform
        return EvalImageTransform(image_size)
    started = read_clip_checkpoint(pretrained) if started is None else started
    return checkpoint_image_transform(started.directory, image_size=image_size)


def _run_yaml(config_file: Path) -> object:
    """The parsed YAML of a run's ``config.yaml`` (``config_file``); ValueError naming it where it is no regular
    file or not YAML."""
    import yaml  # (PyYAML comes with the recipes, which wrote the run: an export or a checkpoint directory needs none)

    from torchflava.utils.config_text import unescaped

    check_regular_file(config_file, f"a run's {CONFIG}")
    try:
        parsed = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"checkpoint: {config_file} is not YAML ({first_line(error)})") from None
    return unescaped(parsed)  # (a ${ is recorded escaped, for OmegaConf: PyYAML keeps the escape)


def _model_section(config: object) -> dict:
    """The ``model`` section of a parsed run config (empty where it has none)."""
    section = config.get("model") if isinstance(config, dict) else None
    return section if isinstance(section, dict) else {}


class TokenizerMisfit(NamedTuple):
    """A way a tokenizer does not fit a CLIP checkpoint (:meth:`CLIPCheckpoint.tokenizer_misfits`).

    Attributes:
        name (str): ``"vocab_size"``: the tokenizer has more tokens than the checkpoint's token
            embedding rows (its last ids would have no embedding); ``"eos_token_id"``: it ends texts
            with another token than the one the checkpoint reads its text features at.
        expected (int): the checkpoint's: its embedding rows, or the end token id it needs of this tokenizer.
        got (int): the tokenizer's: its number of tokens, or its end token id.
    """

    name: str
    expected: int
    got: int


def required_end_token(stated: dict, vocab_size: int) -> Optional[int]:
    """The id a tokenizer of ``vocab_size`` tokens must end its texts with to fit a checkpoint stating
    the ``stated`` model arguments: its ``eos_token_id``; ``vocab_size - 1`` where it states None (pooling
    at each row's highest id: the tokenizer's last id); None where it states none (any end token fits)."""
    if "eos_token_id" not in stated:
        return None
    end = stated["eos_token_id"]
    return vocab_size - 1 if end is None else end


def tokenizer_misfits(stated: dict, tokenizer: Union[WordPieceTokenizer, CLIPTokenizer]) -> list[TokenizerMisfit]:
    """How ``tokenizer`` does not fit a checkpoint stating the ``stated`` model arguments: more tokens than
    its ``vocab_size`` embedding rows (where stated), another end token than :func:`required_end_token`
    (where stated). One rule for :func:`load_pretrained` and :meth:`CLIPCheckpoint.tokenizer_misfits`.

    Args:
        stated (dict): the checkpoint's ``vocab_size`` and ``eos_token_id``, where it states them.
        tokenizer (Union[WordPieceTokenizer, CLIPTokenizer]): its ``vocab_size`` and ``sep_id`` (the end
            token) are read.

    Returns:
        list[TokenizerMisfit]: the size's misfit, then the end token's; empty when it fits.
    """
    misfits = []
    size = stated.get("vocab_size")
    if size is not None and tokenizer.vocab_size > size:  # its last ids would have no embedding (fewer: padding)
        misfits.append(TokenizerMisfit("vocab_size", size, tokenizer.vocab_size))
    end = required_end_token(stated, tokenizer.vocab_size)
    if end is not None and tokenizer.sep_id != end:
        misfits.append(TokenizerMisfit("eos_token_id", end, tokenizer.sep_id))
    return misfits


def misfit_message(misfit: TokenizerMisfit, directory: Path) -> str:
    """The one-line error of a tokenizer in ``directory`` that does not fit its checkpoint's model."""
    if misfit.name == "vocab_size":
        return (
            f"checkpoint: expected a tokenizer of at most the model's vocab_size {misfit.expected} tokens in "
            f"{directory}, got {misfit.got}"
        )
    return (
        f"checkpoint: expected the tokenizer in {directory} to end texts with the model's eos_token_id "
        f"{misfit.expected}, got {misfit.got}"
    )


class SizeMisfit(NamedTuple):
    """A ``clip_model`` size argument a CLIP checkpoint's weights hold another value of
    (:meth:`CLIPCheckpoint.size_misfits`).

    Attributes:
        name (str): the argument, e.g. ``"vision_width"``.
        expected (int): the checkpoint's, as its tensor's shape tells.
        got (int): the model's.
        tensor (str): the checkpoint's tensor that tells it (its own name, e.g. ``visual.conv1.weight``;
            for a layer count, its last layer's first tensor).
        shape (tuple[int, ...]): that tensor's shape.
    """

    name: str
    expected: int
    got: int
    tensor: str
    shape: tuple[int, ...]


def told_sizes(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, str, tuple[int, ...]]]:
    """The ``clip_model`` sizes a CLIP state dict's shapes tell (all but the heads, which split a width without
    changing any shape, and the activation): each argument's value, the tensor telling it and its shape
    (:func:`~torchflava.models.clip.convert_weights.clip_sizes`); none for a layout that is not CLIP's.

    Args:
        tensors (dict[str, torch.Tensor]): a Hugging Face, open_clip/OpenAI or torchflava CLIP state dict
            (meta tensors will do: only names and shapes are read; a DDP ``module.`` prefix is dropped).

    Returns:
        dict[str, tuple[int, str, tuple[int, ...]]]: argument -> (value, tensor name, its shape).
    """
    tensors = without_prefix(tensors, "module.")
    try:
        layout = layout_of(tensors, LAYOUTS, "tensors: expected CLIP keys")
    except ValueError:  # not CLIP's: no size told
        return {}
    return clip_sizes(tensors, layout)


class CLIPCheckpoint(NamedTuple):
    """What a CLIP checkpoint brings to a run that trains from it, read without its tensor data
    (:func:`read_clip_checkpoint`).

    Attributes:
        weights (Path): what ``clip_model(pretrained=...)`` loads: the checkpoint directory (Hugging
            Face's or open_clip's), a torchflava run's or export's weights file, or the weights file given.
        stated (dict): the ``clip_model`` arguments its config states (a weights file without one:
            those its tensors imply, e.g. the token embedding's rows as ``vocab_size``, the position
            table's as ``context_length``); ``eos_token_id`` None: the model reads its text features at
            each row's highest id.
        directory (Path): the directory where its tokenizer and preprocessing files are, or would be
            (:func:`checkpoint_directory`).
        tensors (Optional[dict]): its tensors' names, shapes and dtypes as meta tensors (one-element ones
            with their values), from the weights file ``clip_model`` reads; None: not read.
        config (Optional[Path]): the config file ``stated`` comes from; None where a weights file's shapes
            tell it (no config beside it).
        image_transform (Optional[ImageTransform]): a run's training checkpoint's evaluation transform, resolved
            as it was read (:attr:`CheckpointLayout.image_transform`); None: the files of ``directory`` state it
            (see :func:`resolved_image_transform`).
    """

    weights: Path
    stated: dict
    directory: Path
    tensors: Optional[dict] = None
    config: Optional[Path] = None
    image_transform: Optional[ImageTransform] = None

    @property
    def vocab_size(self) -> Optional[int]:
        """Its token embedding rows, as stated (None: not told)."""
        return self.stated.get("vocab_size")

    @property
    def holds_tokenizer(self) -> bool:
        """Whether its :attr:`directory` holds one of the :data:`TOKENIZER_FILES`."""
        return holds_tokenizer(self.directory)

    def end_token(self, vocab_size: int) -> Optional[int]:
        """The id a tokenizer of ``vocab_size`` tokens must end its texts with to fit the checkpoint
        (:func:`required_end_token` of what it states).

        Args:
            vocab_size (int): the tokenizer's number of tokens.

        Returns:
            Optional[int]: the stated ``eos_token_id``; ``vocab_size - 1`` where the config states None
            (OpenAI's and open_clip's pooling at each row's highest id: the tokenizer's last id); None
            where the checkpoint states none (any end token fits).
        """
        return required_end_token(self.stated, vocab_size)

    def tokenizer_misfits(self, tokenizer: Union[WordPieceTokenizer, CLIPTokenizer]) -> list[TokenizerMisfit]:
        """How ``tokenizer`` does not fit the checkpoint (:func:`tokenizer_misfits` of what it states).

        Args:
            tokenizer (Union[WordPieceTokenizer, CLIPTokenizer]): the tokenizer to train or encode with
                (its ``vocab_size`` and ``sep_id``, the end token, are read).

        Returns:
            list[TokenizerMisfit]: the size's misfit, then the end token's; empty when it fits.
        """
        return tokenizer_misfits(self.stated, tokenizer)

    def model_arguments(self, tokenizer: Union[WordPieceTokenizer, CLIPTokenizer], **given) -> dict:
        """``clip_model``'s arguments for training the checkpoint with ``tokenizer``, every one stated
        (:func:`~torchflava.models.clip.clip_model_arguments`; no tensor data is read).

        Args:
            tokenizer (Union[WordPieceTokenizer, CLIPTokenizer]): the run's tokenizer: its number of
                tokens is the vocabulary size, and its end token the ``eos_token_id``, where the
                checkpoint states neither (its embedding rows, where it states them, are the vocabulary
                size).
            **given: ``clip_model`` arguments the caller sets (None: not set; the checkpoint's config
                fills them, else ``clip_model``'s defaults).

        Returns:
            dict: ``clip_model``'s keyword arguments but ``pretrained`` (:attr:`weights`).

        Raises:
            ValueError, TypeError: as :func:`~torchflava.models.clip.clip_model_arguments`, e.g. for a
                given value the checkpoint's config states otherwise.
        """
        vocab = {"vocab_size": self.vocab_size or tokenizer.vocab_size, "eos_token_id": tokenizer.sep_id}
        set_here = {key for key, value in given.items() if value is not None}  # (None: not set, as documented)
        vocab = {k: v for k, v in vocab.items() if k not in self.stated and k not in set_here}
        return clip_model_arguments(self.weights, stated=(self.config or self.weights, self.stated), **given | vocab)

    def size_misfits(self, kwargs: dict) -> list[SizeMisfit]:
        """The sizes in ``kwargs`` (``clip_model``'s arguments) its weights hold others of, as their shapes
        tell (:func:`told_sizes`; the heads cannot be told); empty where its tensors were not read.

        Args:
            kwargs (dict): the arguments the model is built with, e.g. :meth:`model_arguments`'.

        Returns:
            list[SizeMisfit]: in the order :func:`told_sizes` tells them.
        """
        told = {} if self.tensors is None else told_sizes(self.tensors)
        return [
            SizeMisfit(name, value, kwargs[name], tensor, shape)
            for name, (value, tensor, shape) in told.items()
            if name in kwargs and kwargs[name] != value
        ]

    def check_weights(self, kwargs: dict) -> None:
        """That its weights load into ``clip_model(**kwargs)`` as ``clip_model(pretrained=...)`` loads them
        (every key, shape and OpenAI entry), with no tensor data read: the model is built on the meta
        device and its tensors' names and shapes are mapped onto it. Nothing is checked where its
        tensors were not read.

        Args:
            kwargs (dict): ``clip_model``'s arguments but ``pretrained``.

        Raises:
            ValueError: as ``clip_model`` would when loading them (:func:`convert_to_torchflava`).
        """
        if self.tensors is None:
            return
        with meta_device():
            model = clip_model(**kwargs)
        convert_to_torchflava(self.tensors, model)


def read_clip_checkpoint(path: Union[str, os.PathLike], *, given: Optional[dict] = None) -> CLIPCheckpoint:
    """Read what a local CLIP checkpoint brings, without its tensor data: to check a run's tokenizer and
    settings against it before any work.

    Args:
        path (Union[str, os.PathLike]): a Hugging Face ``CLIPModel`` or open_clip Hub directory, a
            torchflava CLIP run or export directory, or a weights file (HF, open_clip or OpenAI
            state dict; its config is read from beside it where there is one); a ``file://`` URL names one.
        given (Optional[dict]): the ``clip_model`` arguments the caller sets (None values: not set);
            a weights file without a config beside it needs ``activation`` among them where its keys
            are Hugging Face's or open_clip's, but OpenAI's (only the config tells: QuickGELU or GELU).

    Returns:
        CLIPCheckpoint: its weights, the ``clip_model`` arguments it states, its tokenizer directory, and
        the names and shapes of the tensors ``clip_model`` would load (their header alone read).

    Raises:
        ValueError: for an http(s) URL (its file is read when it is downloaded, when the model is built;
            and no tokenizer or preprocessing comes with it), a config stating what ``clip_model`` does
            not build, weights that do not read as a state dict, or Hugging Face- or open_clip-layout weights
            (not OpenAI's) with neither their config nor ``activation`` given.
        FileNotFoundError: if ``path`` does not exist, or is a torchflava export without a tokenizer or
            an open_clip directory without its weights.
        TypeError: if ``path`` is not a str or os.PathLike.
    """
    if is_remote(path):
        raise ValueError(f"checkpoint: only local checkpoints are read before the model is built, got the URL {path!r}")
    named = local_directory(path) if isinstance(path, (str, os.PathLike)) else path  # (a file:// URL resolved)
    if isinstance(named, (str, os.PathLike)):
        _refuse_classifier_export(named)
    trained = training_checkpoint(Path(named)) if isinstance(named, (str, os.PathLike)) else None
    local = trained or local_checkpoint(named)
    directory = trained.parent.parent if trained else checkpoint_directory(local)
    # the weights file clip_model reads is the one peeked at (one reading path: directory_config's for a
    # directory of Hugging Face's or open_clip's), its header alone
    if trained is None and directory_family(Path(local)) == "flava":  # (its reader would miss a CLIP config)
        raise ValueError(f"checkpoint: expected a CLIP checkpoint, got {local}, a FLAVA checkpoint")
    transform = None  # (a directory's files state it: read where it is asked for)
    if trained is not None:  # a run's step_<N>: the arguments its export would state (its tensors not peeked at)
        layout = checkpoint_layout(trained)
        if layout.family != "clip":
            raise ValueError(f"checkpoint: expected a CLIP run's checkpoint, got {trained}, a FLAVA run's")
        weights, stated, tensors, config = trained, dict(layout.kwargs), None, layout.config
        transform = layout.image_transform  # (resolved with its arguments: its run's start is not read again)
    elif local.is_dir() and (directory / "clip_config.json").is_file():  # a torchflava run or its export
        layout = checkpoint_layout(local)
        weights, stated = layout.weights, {k: v for k, v in layout.kwargs.items() if v is not None}
        tensors, config = peek_state_dict(weights, scalars=True), layout.config
    elif local.is_dir():  # Hugging Face's or open_clip's
        config, stated, file = directory_config(local)
        weights, tensors = local, peek_state_dict(file, scalars=True)
    else:  # a weights file: its keys, and a config beside it, tell
        set_here = {k: v for k, v in (given or {}).items() if v is not None}
        weights, tensors = local, peek_state_dict(local, scalars=True)
        config, stated = file_config(local, tensors, set_here)
        config = None if config == local else config  # (its shapes told)
    return CLIPCheckpoint(weights, stated, directory, tensors=tensors, config=config, image_transform=transform)


def resolved_image_transform(checkpoint: Union[CheckpointLayout, CLIPCheckpoint], *, image_size: int) -> ImageTransform:
    """The evaluation transform of a checkpoint read by :func:`checkpoint_layout` or :func:`read_clip_checkpoint`:
    for a run's training checkpoint, the one resolved as it was read (its run's records, else the checkpoint its
    run started from: that is not read again); else its directory's (:func:`checkpoint_image_transform`).

    Args:
        checkpoint (Union[CheckpointLayout, CLIPCheckpoint]): the checkpoint read.
        image_size (int): the model's image side: the transform must give images of that size.

    Returns:
        ImageTransform: the checkpoint's preprocessing.

    Raises:
        ValueError: as :func:`checkpoint_image_transform`, or if the transform resolved gives images of another
            size than ``image_size``.
    """
    transform = checkpoint.image_transform
    if transform is None:
        return checkpoint_image_transform(checkpoint.directory, image_size=image_size)
    if transform.output_size != (image_size, image_size):
        raise ValueError(
            f"image_size: expected the side of the images {checkpoint.weights} was trained on "
            f"({transform.output_size}), got {image_size}"
        )
    return transform


def built_vocabulary(layout: CheckpointLayout) -> dict:
    """The ``vocab_size`` (and, for CLIP, ``eos_token_id``: where it reads its text features) of the model
    :func:`load_pretrained` builds for ``layout``, its arguments filled as the builder fills them."""
    if layout.family == "clip":  # (no tensor data read; with the weights' path: a config's null eos_token_id
        built = clip_model_arguments(layout.weights, **layout.kwargs)  # stays None, pooling at the highest id)
        return {"vocab_size": built["vocab_size"], "eos_token_id": built["eos_token_id"]}
    default = inspect.signature(flava_model).parameters["vocab_size"].default
    return {"vocab_size": layout.kwargs.get("vocab_size") or default}


def _json_object(path: Path) -> object:
    """The parsed JSON of ``path``; ValueError naming it if it is no regular file or not JSON."""
    check_regular_file(path, f"a JSON {path.name}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:  # (nested too deeply)
        raise ValueError(f"{path.name}: {path} is not JSON ({error})") from None


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """The commands' ``--checkpoint``: what :func:`load_pretrained` reads (:func:`command_pretrained` loads it)."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="run, export or Hugging Face FLAVA or CLIP directory, or a run's checkpoints/step_<N> (a run without an "
        "export: its latest complete checkpoint); or a file:// URL of one; or a CLIP weights file alone, or an "
        "open_clip directory without tokenizer files, with --tokenizer",
    )


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """The commands' ``--dtype`` (a name of :data:`INFERENCE_DTYPE_NAMES`; see :func:`load_pretrained`)."""
    parser.add_argument(
        "--dtype",
        choices=tuple(INFERENCE_DTYPE_NAMES),
        default="fp32",
        help="bf16: bf16 autocast, linear weights cast and packed once (~4x fp32's speed on CPUs with "
        "AVX512-BF16 or AMX; without AVX-512, its products as fp32 GEMMs of the bf16 operands, about fp32's speed); "
        "features within bf16 rounding of fp32's [fp32]",
    )


def add_lone_file_arguments(parser: argparse.ArgumentParser) -> None:
    """The commands' ``--tokenizer`` and ``--activation``, for a CLIP weights file given alone as ``--checkpoint``
    (and ``--tokenizer`` for a CLIP directory without tokenizer files; see :func:`load_pretrained`;
    :func:`command_pretrained` names them in its errors)."""
    parser.add_argument(
        "--tokenizer",
        metavar="PATH",
        help=f"with a CLIP weights file alone as --checkpoint (e.g. ~/.cache/clip/ViT-B-32.pt), or an open_clip "
        f"directory without tokenizer files (timm's CLIP repositories): its tokenizer, {LONE_FILE_TOKENIZERS}",
    )
    parser.add_argument(
        "--activation",
        choices=("gelu", "quick_gelu"),
        help="with a Hugging Face or open_clip weights file alone (no config beside it, which would say): the "
        "activation it was trained with (open_clip's -quickgelu models: quick_gelu); OpenAI's files say quick_gelu",
    )


def command_pretrained(args: argparse.Namespace) -> "Pretrained":
    """:func:`load_pretrained` of a command's ``args.checkpoint`` at ``args.dtype`` (:func:`add_dtype_argument`),
    with ``args.tokenizer`` and ``args.activation`` (:func:`add_lone_file_arguments`); a ``tokenizer`` or
    ``activation`` it finds missing, misplaced or contradicted by the weights is named as the option (ValueError: the
    command's one-line error)."""
    try:
        return load_pretrained(
            args.checkpoint,
            dtype=INFERENCE_DTYPE_NAMES[args.dtype],
            tokenizer=args.tokenizer,
            activation=args.activation,
        )
    except UnfitTokenizer as error:  # (its message starts "tokenizer: ")
        raise ValueError(f"argument --{error}") from None
    except ContradictedArgument as error:  # (an --activation the weights contradict: OpenAI's were QuickGELU's)
        if error.argument != "activation" or args.activation is None:  # (not given: a config beside said it)
            raise
        expected = f"none or the activation --checkpoint {args.checkpoint} was trained with"
        raise ValueError(f"argument --{error.argument}: expected {expected}, got {args.activation} ({error})") from None
    except UntoldArgument as error:
        name = error.argument
        if name not in ("tokenizer", "activation"):  # (e.g. a width that tells no head count: as it is)
            raise
        value = getattr(args, name)
        if value is not None:  # given with a checkpoint directory
            raise ValueError(
                f"argument --{name}: expected only with {lone_file_option_takers(name)} as --checkpoint, got {value} "
                f"with {args.checkpoint}, a checkpoint directory, which holds its own"
            ) from None
        directory = isinstance(error, TokenizerlessDirectory)
        expected = lone_file_needs(name, f"--checkpoint {args.checkpoint}", directory=directory)
        raise ValueError(f"argument --{name}: expected {expected}, got none") from None


def command_inputs(args: argparse.Namespace, pretrained: "Pretrained") -> dict:
    """What a command's report names as read: the weights (an export's file, or the ``step_<N>`` a run resolved to)
    and, for a weights file alone, the ``--tokenizer`` and ``--activation`` it was read with (the scores depend on
    both; a directory without tokenizer files: its ``--tokenizer``)."""
    told = {"tokenizer": args.tokenizer and os.path.expanduser(args.tokenizer), "activation": args.activation}
    return {"weights": str(pretrained.weights), **{k: v for k, v in told.items() if v is not None}}


class UnfitTokenizer(ValueError):
    """The tokenizer given with a weights file alone (or a directory without tokenizer files) does not read, or does
    not fit its model (its message starts ``tokenizer: ``, so that a command or recipe names it as its own option or
    key)."""


def fitted_tokenizer(layout: CheckpointLayout) -> Union[WordPieceTokenizer, CLIPTokenizer]:
    """:func:`checkpoint_tokenizer` of ``layout``, at most the model's text length where it states none, checked to
    fit the model (:func:`tokenizer_misfits`: no more tokens, the same end token) before any tensor data is read: a
    ValueError naming the directory that does not fit (:func:`misfit_message`); for a weights file alone (or a
    directory without tokenizer files), :class:`UnfitTokenizer` naming ``tokenizer`` where the one given does not
    read (e.g. a merges file with fewer merges than the model's vocabulary needs) or does not fit
    (:func:`unfit_message`)."""
    given = layout.tokenizer is not None  # (a weights file alone's, or a tokenizer-less directory's)
    try:
        tokenizer = checkpoint_tokenizer(layout)
    except (ValueError, FileNotFoundError) as error:
        if not given:
            raise
        raise UnfitTokenizer(
            f"tokenizer: expected {LONE_FILE_TOKENIZERS} (for {given_with(layout)}, of its vocab_size "
            f"{layout.kwargs['vocab_size']} tokens), got {layout.tokenizer} ({error})"
        ) from None
    if tokenizer.model_max_length is None:  # no stated limit: what the model takes, not an error on each call
        tokenizer.model_max_length = text_positions(layout.family, layout.kwargs)
    if misfits := tokenizer_misfits(built_vocabulary(layout), tokenizer):
        if given:
            raise UnfitTokenizer(unfit_message(misfits[0], layout))
        raise ValueError(misfit_message(misfits[0], layout.directory))
    return tokenizer


def unfit_message(misfit: TokenizerMisfit, layout: CheckpointLayout) -> str:
    """The one-line error of the ``tokenizer`` given with a weights file alone or a directory without tokenizer files
    (:attr:`CheckpointLayout.tokenizer`) that does not fit its model (:class:`UnfitTokenizer`'s)."""
    if misfit.name == "vocab_size":
        return (
            f"tokenizer: expected a tokenizer of at most {given_with(layout)}'s vocab_size {misfit.expected} tokens, "
            f"got {layout.tokenizer} of {misfit.got} tokens"
        )
    return (
        f"tokenizer: expected a tokenizer ending texts with {given_with(layout)}'s eos_token_id {misfit.expected}, got "
        f"{layout.tokenizer}, which ends them with {misfit.got}"
    )


def given_with(layout: CheckpointLayout) -> Path:
    """The checkpoint a ``tokenizer`` was given with (:attr:`CheckpointLayout.tokenizer`): the weights file alone
    (its own config), or the directory without tokenizer files."""
    return layout.weights if layout.weights == layout.config else layout.directory


def lone_file_needs(name: str, checkpoint: str, *, directory: bool = False) -> str:
    """What a weights file alone needs given as ``name`` (``"tokenizer"`` or ``"activation"``, which
    :func:`load_pretrained` found missing), for a refusal's "expected" part; ``checkpoint`` names the file as the
    caller's option or key does (``--checkpoint X``, ``model.pretrained=X``). ``directory``: a CLIP directory without
    tokenizer files (:class:`TokenizerlessDirectory`) needs its ``tokenizer``, said so."""
    holder = f"a directory holding none of the tokenizer files {', '.join(TOKENIZER_FILES)}"
    return {
        "tokenizer": f"{LONE_FILE_TOKENIZERS}, with {checkpoint}, {holder if directory else 'a weights file alone'}",
        "activation": f"gelu or quick_gelu with {checkpoint}, a Hugging Face or open_clip weights file alone that "
        "does not say which (no config beside it)",
    }[name]


def run_parts(checkpoint: Path) -> tuple[str, dict, Union[WordPieceTokenizer, CLIPTokenizer], ImageTransform]:
    """What the export of the run that wrote training ``checkpoint`` would hold, from the run's files alone:
    the model family, the builder's arguments, the tokenizer (at the text length the run trained at) and
    the evaluation transform, as the recipes' exports write them.

    The config is the one ``checkpoint`` records (digested with it), else the run's ``config.yaml``; the
    tokenizer is the one the run writes into its directory at its start.

    Raises:
        FileNotFoundError: if neither config is there, the run directory holds no tokenizer file, or the
            run's ``model.pretrained`` is not there where the run needs it (a CLIP run started from a checkpoint
            that does not record what it read of it: :data:`RUN_ARGUMENTS`).
        ValueError: if the config is not YAML, or its ``model`` section fits neither ``flava_model`` nor
            ``clip_model`` (not a pretraining run of ``examples/flava`` or ``examples/clip``; a FLAVA fine-tuning
            run's is named as such: its classifier loads from its export only).
    """
    run = checkpoint.parent.parent
    config_file = run_config(checkpoint)
    config = _run_yaml(config_file)
    section = config.get("model") if isinstance(config, dict) else None
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(section, dict) or not isinstance(data, dict):
        raise ValueError(f"checkpoint: {config_file}: expected a recipe's config with model and data sections")
    stated = {k: v for k, v in section.items() if k != "pretrained"}
    family = next((f for f, b in BUILDERS.items() if set(stated) <= set(inspect.signature(b).parameters)), None)
    if family is None and "classifier_hidden_dim" in stated:  # (examples/flava/finetune.py's: no builder reads it)
        raise ValueError(
            f"checkpoint: {checkpoint} is a training checkpoint of a FLAVA fine-tuning run ({config_file}), which "
            f"loads only from the export a fine-tuning run writes when it finishes ({run / 'model'})"
        )
    if family is None:
        raise ValueError(
            f"checkpoint: {config_file}: expected the model section of a FLAVA or CLIP pretraining run "
            f"(flava_model's or clip_model's arguments), got keys {sorted(stated)}"
        )
    if not holds_tokenizer(run):
        raise FileNotFoundError(
            f"checkpoint: {run} (the run of {checkpoint}) has none of the tokenizer files {', '.join(TOKENIZER_FILES)}"
        )
    tokenizer = directory_tokenizer(run, family)
    tokenizer.model_max_length = data.get("max_text_length")  # the length it trained at: the export's default
    try:  # a value the builder refuses: named with the file that states it
        kwargs, image_transform = _run_arguments(family, section, tokenizer, run)
        with meta_device():  # and checked by the builder, no memory used
            BUILDERS[family](**kwargs)
    except (ValueError, TypeError) as error:
        raise ValueError(f"checkpoint: {config_file}: {first_line(error)}") from None
    except FileNotFoundError as error:  # (named alone, the path the run started from looked like the one asked for)
        raise FileNotFoundError(
            f"checkpoint: {config_file}: expected model.pretrained, the checkpoint the run started from (its "
            f"architecture and preprocessing), at {section.get('pretrained')}, got {first_line(error)}"
        ) from None
    return family, kwargs, tokenizer, image_transform


def run_config(checkpoint: Path) -> Path:
    """The config training ``checkpoint`` was trained under: the one it records, else its run's ``config.yaml``;
    FileNotFoundError naming both where neither is there."""
    run = checkpoint.parent.parent
    config_file = next((f for f in (checkpoint / CONFIG, run / CONFIG) if f.is_file()), None)
    if config_file is None:
        raise FileNotFoundError(f"checkpoint: {checkpoint} records no {CONFIG}, and its run {run} has none either")
    return config_file


def _run_arguments(family: str, section: dict, tokenizer, run: Path) -> tuple[dict, ImageTransform]:
    """The builder's arguments and the evaluation transform of run ``run`` whose config's model section is
    ``section`` and whose tokenizer is ``tokenizer``, as the recipe's export records them: for a CLIP run
    started from a checkpoint, those it recorded at its start (:data:`RUN_ARGUMENTS`, its
    ``preprocessor_config.json``); read from its ``model.pretrained`` only for a run recorded before."""
    stated = {k: v for k, v in section.items() if k != "pretrained"}
    pretrained, started = section.get("pretrained"), None
    if family == "flava":
        kwargs = flava_model_arguments(pretrained, **stated, vocab_size=tokenizer.vocab_size)
    elif (run / RUN_ARGUMENTS).is_file() and (run / PREPROCESSOR_CONFIG).is_file():  # the run's own records
        check_regular_file(run / RUN_ARGUMENTS, "a run's recorded model arguments")
        kwargs = read_run_arguments(run / RUN_ARGUMENTS)
    elif pretrained is None:
        kwargs = clip_model_arguments(None, **stated, vocab_size=tokenizer.vocab_size, eos_token_id=tokenizer.sep_id)
    else:
        started = read_clip_checkpoint(pretrained)  # the run's own start: its arguments and preprocessing, read once
        kwargs = started.model_arguments(tokenizer, **stated)
    return kwargs, _run_image_transform(run, section, kwargs["image_size"], started)


def load_training_checkpoint(checkpoint: Path, *, verified: bool = False) -> Pretrained:
    """A run's training checkpoint as :func:`load_pretrained` loads its export (fp32; :func:`run_parts`):
    its model weights alone (:func:`~torchflava.training.checkpointing.read_model_weights`: verified,
    every rank's shards gathered, no optimiser state read).

    ``verified``: its files were just found to match their manifest (:func:`found_intact`): not hashed again.

    Raises:
        CheckpointIntegrityError: (a ValueError) if it is incomplete, damaged or holds code.
        FileNotFoundError, ValueError: as :func:`run_parts`, or if its weights do not fit the model.
    """
    family, kwargs, tokenizer, image_transform = _verified_run_parts(checkpoint, verified=verified)
    model = _load_run_weights(BUILDERS[family](**kwargs), family, checkpoint)
    return Pretrained(model.eval(), tokenizer, kwargs, checkpoint, image_transform)


def _verified_run_parts(
    checkpoint: Path, *, verified: bool = False
) -> tuple[str, dict, Union[WordPieceTokenizer, CLIPTokenizer], ImageTransform]:
    """:func:`run_parts` of a training checkpoint found complete and intact first (CheckpointIntegrityError
    naming it otherwise: an incomplete or damaged checkpoint is named as such, before anything is read);
    ``verified``: already found so (each file is hashed once per load)."""
    reason = None if verified else damage(checkpoint)
    if reason is not None:
        raise CheckpointIntegrityError(f"checkpoint: cannot read {checkpoint}: {reason}")
    return run_parts(checkpoint)


def _load_run_weights(model: torch.nn.Module, family: str, checkpoint: Path) -> torch.nn.Module:
    """``model`` with the weights of the verified training ``checkpoint`` (every rank's shards gathered)."""
    weights = read_model_weights(checkpoint, verified=True)
    try:
        if family == "flava":
            load_flava_weights(model, weights)
        else:
            model.load_state_dict(convert_to_torchflava(weights, model))
    except ValueError as error:
        raise ValueError(
            f"checkpoint: {checkpoint}: its weights do not fit its run's {family} model ({first_line(error)})"
        ) from None
    return model


def trained_model(builder: Callable, pretrained: object, given: dict) -> Optional[torch.nn.Module]:
    """What ``builder`` (:func:`~torchflava.models.flava_model` or :func:`~torchflava.models.clip_model`) builds
    for a ``pretrained`` that names a run's training checkpoint, resolved as :func:`load_pretrained` resolves
    it (:func:`training_checkpoint`: ``step_<N>``, padded or not; a run without an export: its newest complete,
    intact checkpoint), with the weights at that step; None where ``pretrained`` names none (a URL, a file, an
    export, a run with one, a Hugging Face directory: the builder reads those itself).

    The architecture is the run's (:func:`trained_arguments`).

    Raises:
        CheckpointIntegrityError: (a ValueError) if the checkpoint is incomplete or damaged.
        ValueError, FileNotFoundError: as :func:`trained_arguments` and :func:`load_training_checkpoint`.
    """
    trained = trained_arguments(builder, pretrained, given)
    if trained is None:
        return None
    checkpoint, kwargs = trained
    return _load_run_weights(builder(**kwargs), BUILDERS_BY_NAME[builder.__name__], checkpoint)


def trained_arguments(builder: Callable, pretrained: object, given: dict) -> Optional[tuple[Path, dict]]:
    """The training checkpoint ``pretrained`` names (:func:`training_checkpoint`, as :func:`trained_model`
    resolves it) and the arguments ``builder`` builds it with, no tensor data read; None where ``pretrained``
    names no training checkpoint (a URL, a file, an export, a run with one, a Hugging Face directory).

    The architecture is the run's (:func:`run_parts`, as its export would record it); of ``given`` (the
    builder's arguments), those not at the builder's default must equal the run's, but dropouts, training
    settings, override them.

    Raises:
        CheckpointIntegrityError: (a ValueError) if the checkpoint is incomplete or damaged.
        ValueError: if it is a checkpoint of the other family's run, an argument given contradicts the run's
            config, or as :func:`run_parts`.
        FileNotFoundError: as :func:`training_checkpoint` and :func:`run_parts`.
    """
    if not isinstance(pretrained, (str, os.PathLike)) or is_remote(pretrained):
        return None
    local = local_directory(pretrained)
    _refuse_classifier_export(local)
    checkpoint = training_checkpoint(Path(local))
    name = builder.__name__
    if checkpoint is None:  # (a directory of the other family's, named as such: its reader would miss a file)
        family = directory_family(Path(local))
        if family is not None and BUILDERS[family].__name__ != name:
            raise ValueError(
                f"{name}: expected pretrained to be a {BUILDERS_BY_NAME[name].upper()} checkpoint, got {local}, "
                f"a {family.upper()} checkpoint (build it with {BUILDERS[family].__name__})"
            )
        return None
    family, kwargs, _, _ = _verified_run_parts(checkpoint)
    if BUILDERS[family].__name__ != name:  # (by name: the models package re-exports the builders)
        raise ValueError(
            f"{name}: expected pretrained to be a checkpoint of a {name} run, got {checkpoint}, a checkpoint "
            f"of a {family.upper()} run (build it with {BUILDERS[family].__name__})"
        )
    defaults = {k: p.default for k, p in inspect.signature(builder).parameters.items()}
    set_here = {k: v for k, v in given.items() if k in defaults and k != "pretrained" and v != defaults[k]}
    clash = {k: (v, kwargs.get(k)) for k, v in set_here.items() if v != kwargs.get(k) and "dropout" not in k}
    if clash:
        raise ValueError(f"{name}: expected arguments that match {run_config(checkpoint)}, got (given, config) {clash}")
    return checkpoint, {**kwargs, **set_here}


def load_pretrained(
    path: Union[str, os.PathLike],
    *,
    dtype: torch.dtype = torch.float32,
    tokenizer: Optional[Union[str, os.PathLike]] = None,
    activation: Optional[str] = None,
) -> Pretrained:
    """Build the checkpoint's architecture, load its weights, tokenizer and image preprocessing.

    Args:
        path (Union[str, os.PathLike]): a run, export or Hugging Face FLAVA or CLIP directory, a run's
            training checkpoint (``<run>/checkpoints/step_<N>``: :func:`load_training_checkpoint`), or a
            ``file://`` URL naming one (as the builders' ``pretrained`` takes it). A run directory without
            an export is read from its newest complete, intact checkpoint (:func:`training_checkpoint`).
            Or a CLIP weights file alone (``~/.cache/clip/ViT-B-32.pt``, an open_clip ``.bin`` or
            ``.safetensors``...) with ``tokenizer``: :func:`lone_file_layout`, OpenAI's preprocessing.
        tokenizer (Optional[Union[str, os.PathLike]]): a weights file's tokenizer (only with one, or with a CLIP
            directory holding none of the :data:`TOKENIZER_FILES`, e.g. an open_clip Hub directory of ``timm/``'s;
            see :func:`checkpoint_layout`), e.g. ``bpe_simple_vocab_16e6.txt.gz``.
        activation (Optional[str]): ``"gelu"`` or ``"quick_gelu"`` for a weights file that does not say which
            (only with one; OpenAI's files say QuickGELU).
        dtype (torch.dtype): ``torch.float32``, or ``torch.bfloat16`` for inference under bf16
            autocast with every linear weight cast, and on CPU packed, once (:func:`pack_linears`; the
            model can then no longer be trained, nor moved to another device: its parameters are
            frozen and the packed weights stay on the CPU). On CPUs with AVX512-BF16 or AMX, ~4x the
            fp32 throughput (CLIP ViT-B/16 images: 4.3x, benchmarks/README.md); features within bf16's
            rounding of fp32's.

    Returns:
        Pretrained: model (eval mode), tokenizer, architecture arguments, weights path and image
        transform. A tokenizer whose ``tokenizer_config.json`` states no ``model_max_length`` (or
        transformers' "no limit") gets the model's number of text positions
        (:attr:`Pretrained.max_text_length`) as its default ``max_length``: transformers' would not
        truncate, and the model would then fail on a long text.

    Raises:
        TypeError, FileNotFoundError: as :func:`checkpoint_layout` (FileNotFoundError naming the URL for
            a ``file://`` URL of nothing).
        UntoldArgument: (a ValueError) naming ``tokenizer`` for a weights file given without one (or a directory
            without tokenizer files: :class:`TokenizerlessDirectory`), ``activation`` for one that does not say which,
            either given with a checkpoint directory that states it (:func:`checkpoint_layout`).
        UnfitTokenizer: (a ValueError, "tokenizer: ...") where the ``tokenizer`` given does not read or does
            not fit its model (:func:`fitted_tokenizer`), before any tensor data is read.
        ValueError: if ``path`` is a URL of another scheme than ``file:`` (nothing is downloaded: the
            tokenizer and preprocessing files are read from the directory), a malformed ``file://``
            URL, if ``dtype`` is not one of :data:`INFERENCE_DTYPES`, if ``tokenizer_config.json`` or
            ``preprocessor_config.json`` holds a bad value,
            the tokenizer has more tokens than the model's vocabulary or another end token, or the
            weights do not match the architecture.
    """
    if dtype not in INFERENCE_DTYPES:
        raise ValueError(f"dtype must be one of {INFERENCE_DTYPES}, got {dtype!r}")
    local = local_directory(path)
    if isinstance(local, (str, os.PathLike)):
        _refuse_classifier_export(local)
    checkpoint = training_checkpoint(Path(local)) if isinstance(local, (str, os.PathLike)) else None
    if checkpoint is not None:  # (a run's newest intact one: verified as it was found)
        _refuse_lone_file_options(checkpoint, tokenizer, activation)
        verified = found_intact(Path(local), checkpoint)
        return inference_ready(load_training_checkpoint(checkpoint, verified=verified), dtype)
    layout = checkpoint_layout(local, tokenizer=tokenizer, activation=activation)
    builder = BUILDERS[layout.family]
    unknown = sorted(set(layout.kwargs) - (set(inspect.signature(builder).parameters) - {"pretrained"}))
    if unknown:  # was the builder's TypeError, naming no file
        raise ValueError(f"checkpoint: {layout.config} states arguments {builder.__name__} does not take: {unknown}")
    try:  # the stated architecture, checked by its builder on the meta device (no memory, no weights read)
        with meta_device():
            builder(**layout.kwargs)
    except (TypeError, ValueError) as error:  # a value of the wrong type or range: name the file it is in
        raise ValueError(f"checkpoint: {layout.config}: {first_line(error)}") from None
    tokenizer = fitted_tokenizer(layout)  # (before the weights are read)
    image_size = layout.kwargs.get("image_size") or 224  # (an int: the builder checked it)
    image_transform = resolved_image_transform(layout, image_size=image_size)
    model = builder(pretrained=layout.weights, **layout.kwargs).eval()
    loaded = Pretrained(model, tokenizer, layout.kwargs, layout.weights, image_transform)
    return inference_ready(loaded, dtype)


def inference_ready(loaded: Pretrained, dtype: torch.dtype) -> Pretrained:
    """``loaded`` to run at ``dtype``: as it is for fp32; for bf16, every linear weight cast (and packed) once."""
    if dtype != torch.float32:  # for inference only: no parameter takes gradients any more
        if not onednn_packing_available(dtype):
            warnings.warn(
                f"dtype={dtype}: this CPU (or PyTorch build) has no native {dtype} matmuls; slower than fp32",
                stacklevel=3,
            )
        pack_linears(loaded.model.requires_grad_(False), dtype)
    return loaded._replace(dtype=dtype)
