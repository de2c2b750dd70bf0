"""Publish a FLAVA or CLIP checkpoint as a Hugging Face directory, for the Hub and transformers' pipelines.

    python -m torchflava.hf_export --checkpoint runs/clip --out hf/my-clip
    python -m torchflava.hf_export --checkpoint runs/tiny/checkpoints/step_2000 --out hf/tiny-flava --force
    python -m torchflava.hf_export --checkpoint ~/.cache/clip/ViT-B-32.pt --tokenizer bpe_simple_vocab_16e6.txt.gz --out hf/vit-b-32

``--checkpoint`` is anything :func:`torchflava.pretrained.load_pretrained` reads. ``--out`` gets
``config.json`` (transformers' ``CLIPConfig`` or ``FlavaConfig``), ``model.safetensors`` (``convert_to_hf``'s
keys: ``CLIPModel.from_pretrained`` / ``FlavaModel.from_pretrained`` load it with no missing or unused key),
the tokenizer files (``vocab.json`` + ``merges.txt`` for CLIP's tokenizer, ``vocab.txt`` for BERT's, with
``tokenizer_config.json``) and ``preprocessor_config.json`` (the checkpoint's own preprocessing; a FLAVA one
that resizes the short side names ``CLIPProcessor``, which ``AutoProcessor`` loads: ``FlavaProcessor`` only
squashes). The directory is written beside ``--out`` and renamed into place whole; an existing non-empty ``--out``
is refused unless ``--force``. Refused before anything is written: what transformers' config cannot state, a CLIP
end token of id 2 (transformers reads it as its legacy highest-id pooling), and under ``--dtype fp16`` a weight above
fp16's largest value (65504). What the directory leaves out is named in a note: FLAVA's ``mlp_dropout``
(transformers' FLAVA has no MLP dropout; inference does not use it), open_clip's reading of texts (HTML entities,
``ftfy`` fixes: the files state transformers' reading, whose ids differ on such texts) and its crop rounding
(transformers' processors floor odd margins) where the checkpoint has them, and a fine-tuned FLAVA classifier's head
(transformers has no FLAVA classifier class: its backbone is written).
"""

import argparse
import copy
import inspect
import json
import os
from pathlib import Path
import sys
from typing import NamedTuple, Optional, Sequence, Union

from safetensors.torch import save_file
import torch
from torch import nn

from torchflava.classify import CLASSIFIER_CONFIG
from torchflava.data.clip_tokenizer import CLIPTokenizer
from torchflava.models.clip import CLIPModel, clip_model, clip_model_arguments
from torchflava.models.clip import convert_to_hf as clip_to_hf
from torchflava.models.clip.convert_weights import hf_config_kwargs
from torchflava.models.flava import flava_model
from torchflava.models.flava.convert_weights import convert_to_hf as flava_to_hf
from torchflava.models.flava.convert_weights import flava_kwargs_from_hf_config, hf_config_from_flava_kwargs
from torchflava.pretrained import (
    Pretrained,
    add_checkpoint_argument,
    add_lone_file_arguments,
    command_pretrained,
    load_pretrained,
)
from torchflava.utils.checkpoint import PathLike, atomic_write, staged_directory
from torchflava.utils.cli import command_parser, finish_command, output_file, run_command, write_json
from torchflava.utils.meta import meta_device

# --dtype: the precision of the weights written (the model computes in fp32 either way when loaded)
WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}  # config.json's
# clip_model's activations by transformers' names (hf_config_kwargs reads each back)
_HF_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_tanh": "gelu_pytorch_tanh"}
LEGACY_EOS = 2  # transformers' CLIP pools a text at its highest id where text_config.eos_token_id is 2


class HFExport(NamedTuple):
    """What :func:`save_hf_directory` wrote.

    Attributes:
        directory (Path): the Hugging Face directory.
        family (str): ``"clip"`` or ``"flava"``.
        files (list[str]): the names of the files in it.
        notes (list[str]): what the directory states otherwise than the checkpoint, though not for inference.
    """

    directory: Path
    family: str
    files: list
    notes: list


def hf_clip_config(kwargs: dict) -> dict:
    """The transformers ``CLIPConfig`` (its ``config.json`` as a dict) of a ``CLIPModel`` that computes as
    :func:`~torchflava.models.clip.clip_model` built with ``kwargs``: the inverse of
    :func:`~torchflava.models.clip.convert_weights.hf_config_kwargs`, which reads it back to ``kwargs`` but
    ``init_std`` (written as both towers' ``initializer_range``). An ``eos_token_id`` of None (pooling at each
    row's highest id, open_clip's) is written as transformers' legacy 2, which pools so.

    Args:
        kwargs (dict): every argument of ``clip_model`` but ``pretrained`` (``clip_model_arguments()``'s).

    Returns:
        dict: the config, with ``model_type``, ``architectures`` and ``text_config`` / ``vision_config``.

    Raises:
        ValueError: naming ``eos_token_id`` if it is 2 (transformers would pool at the highest id instead), or
            the arguments ``kwargs`` lacks.
    """
    if missing := sorted(set(inspect.signature(clip_model).parameters) - {"pretrained"} - set(kwargs)):
        raise ValueError(f"kwargs: expected every clip_model argument, got none for {missing}")
    eos = kwargs["eos_token_id"]
    if eos == LEGACY_EOS:
        raise ValueError(
            f"eos_token_id: expected an end token id other than {LEGACY_EOS}, which transformers' CLIPConfig cannot "
            "state (it reads text_config.eos_token_id 2 as its legacy pooling at each row's highest id), got 2"
        )
    shared = dict(hidden_act=_HF_ACTIVATIONS[kwargs["activation"]], layer_norm_eps=kwargs["norm_eps"])
    shared.update(attention_dropout=kwargs["attention_dropout"], initializer_range=kwargs["init_std"])
    shared["projection_dim"] = kwargs["embed_dim"]
    names = dict(
        width="hidden_size", layers="num_hidden_layers", heads="num_attention_heads", mlp_dim="intermediate_size"
    )
    vision = dict(shared, **{hf: kwargs[f"vision_{ours}"] for ours, hf in names.items()}, num_channels=3)
    vision.update(image_size=kwargs["image_size"], patch_size=kwargs["patch_size"])
    text = dict(shared, **{hf: kwargs[f"text_{ours}"] for ours, hf in names.items()}, vocab_size=kwargs["vocab_size"])
    text.update(max_position_embeddings=kwargs["context_length"], eos_token_id=LEGACY_EOS if eos is None else eos)
    return dict(
        model_type="clip",
        architectures=["CLIPModel"],
        projection_dim=kwargs["embed_dim"],
        logit_scale_init_value=kwargs["logit_scale_init"],
        text_config=text,
        vision_config=vision,
    )


def hf_config(pretrained: Pretrained) -> tuple[dict, list[str]]:
    """The transformers config of a loaded checkpoint's model (:func:`hf_clip_config` or
    :func:`~torchflava.models.flava.convert_weights.hf_config_from_flava_kwargs` of its builder's arguments,
    completed with the builder's defaults and the model's own end token, initial temperature and init std), with
    the notes on what it leaves out; checked to describe the very model (its tensors' shapes, norms, activations).

    Raises:
        ValueError: if the config cannot state the model (see :func:`hf_clip_config`).
    """
    model, clip = pretrained.model, isinstance(pretrained.model, CLIPModel)
    builder = clip_model if clip else flava_model
    given = {k: v for k, v in pretrained.kwargs.items() if v is not None and k in inspect.signature(builder).parameters}
    own = dict(logit_scale_init=float(model.logit_scale_init), init_std=float(model.init_std))
    if clip:
        kwargs = dict(clip_model_arguments(**given), **own, eos_token_id=model.eos_token_id)
        config, notes = hf_clip_config(kwargs), []
        tokenizer = pretrained.tokenizer  # (the ids transformers' generation settings name; nothing computes with them)
        start = tokenizer.start_id if isinstance(tokenizer, CLIPTokenizer) else tokenizer.cls_id
        config["text_config"].update(bos_token_id=start, pad_token_id=tokenizer.pad_id)
    else:
        defaults = {k: p.default for k, p in inspect.signature(flava_model).parameters.items() if k != "pretrained"}
        kwargs = {**defaults, **given, **own}
        config, notes = hf_config_from_flava_kwargs(kwargs), []
        mlp_dropout = kwargs["dropout"] if kwargs["mlp_dropout"] is None else kwargs["mlp_dropout"]
        if mlp_dropout != 0:
            notes.append(
                f"mlp_dropout {mlp_dropout} is not written: transformers' FLAVA has no dropout after the MLP's "
                "activation (inference is the same; fine-tuning in transformers trains without it)"
            )
    _check_describes(config, model, clip)
    return config, notes


def _check_describes(config: dict, model: nn.Module, clip: bool) -> None:
    """ValueError unless the model ``config`` describes (read back as ``load_pretrained`` reads it, built on the meta
    device) has ``model``'s tensor shapes, LayerNorm eps, activations and (CLIP) end token: an invariant."""
    read = hf_config_kwargs(config) if clip else flava_kwargs_from_hf_config(config)
    with meta_device():
        described = (clip_model if clip else flava_model)(**read)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    parts = lambda m: [  # noqa: E731  (dropouts left out: they do not compute at inference)
        (type(part).__name__, getattr(part, "eps", None), getattr(part, "approximate", None))
        for part in m.modules()
        if not isinstance(part, (nn.Dropout, nn.Identity))
    ]
    same = shapes(described) == shapes(model) and parts(described) == parts(model)
    eos_differs = clip and read["eos_token_id"] != model.eos_token_id  # (None, the highest id's pooling: loaded so)
    if not same or eos_differs:
        raise ValueError(f"config.json: the config written would describe another model than the checkpoint's: {read}")


def _hf_tokenizer(pretrained: Pretrained, notes: list[str]):
    """The checkpoint's tokenizer as transformers' files state it: at most the model's text positions by default
    (``model_max_length``); a CLIP tokenizer reading texts as open_clip does (a merges file's) read as transformers
    does, with a note."""
    tokenizer, positions = pretrained.tokenizer, pretrained.max_text_length
    length = positions if tokenizer.model_max_length is None else min(tokenizer.model_max_length, positions)
    # (a merges file's: open_clip's reading is in its pipeline only, its vocabulary and merges are CLIP's own)
    if isinstance(tokenizer, CLIPTokenizer) and not tokenizer.reads_as_transformers:
        notes.append(
            "the tokenizer read texts as open_clip does (HTML entities undone, ftfy fixes, its spellings of the "
            "special tokens); Hugging Face's files state transformers' reading (CLIPTokenizerFast's), written: "
            "ids differ on texts with entities, mojibake or special-token spellings"
        )
        tokenizer = tokenizer.transformers_reading()
    tokenizer = copy.copy(tokenizer)  # (the caller's keeps its own default length)
    tokenizer.model_max_length = length
    return tokenizer


def check_out(out: PathLike, *, force: bool = False, checkpoint: Optional[PathLike] = None) -> Path:
    """``out`` as a Path, checked before any work: ValueError if it is a file or link, a non-empty directory
    (unless ``force``), the checkpoint ``checkpoint`` or a directory holding it (``force`` would delete it), or
    ``.``, ``..`` or ``/`` (no name to write it beside itself under)."""
    out = Path(os.path.expanduser(os.fspath(out)))
    if out.name in ("", ".."):
        raise ValueError(f"out: expected a directory named by its path (e.g. ../hf-model), got {out}")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ValueError(f"out: expected a directory to write, got {out} (a file or link)")
    if checkpoint is not None and isinstance(checkpoint, (str, os.PathLike)) and "://" not in os.fspath(checkpoint):
        source = Path(os.path.expanduser(os.fspath(checkpoint))).resolve()
        if source == out.resolve() or out.resolve() in source.parents:
            raise ValueError(
                f"out: expected a directory apart from the checkpoint {checkpoint}, got {out} (holding it)"
            )
    if not force and out.is_dir() and any(out.iterdir()):
        raise ValueError(f"out: expected a new or empty directory (or force / --force to replace it), got {out}")
    return out


def save_hf_directory(
    checkpoint: Union[PathLike, Pretrained],
    out: PathLike,
    *,
    force: bool = False,
    dtype: torch.dtype = torch.float32,
    tokenizer: Optional[PathLike] = None,
    activation: Optional[str] = None,
) -> HFExport:
    """Write a checkpoint as a Hugging Face directory (see the module doc), atomically.

    Args:
        checkpoint (Union[PathLike, Pretrained]): anything :func:`~torchflava.pretrained.load_pretrained` reads
            (a run, export, training checkpoint, Hugging Face or open_clip directory, a CLIP weights file alone with
            ``tokenizer``), or its fp32 result.
        out (PathLike): the directory to write (written beside it, then renamed into place).
        force (bool): replace an existing non-empty ``out``.
        dtype (torch.dtype): the weights' precision (a key's value of :data:`WEIGHT_DTYPES`).
        tokenizer, activation (Optional[PathLike], Optional[str]): a CLIP weights file alone's (as load_pretrained).

    Returns:
        HFExport: the directory, the family, the files and the notes on what it leaves out.

    Raises:
        ValueError: if ``out`` is taken (see :func:`check_out`), ``dtype`` is not one of :data:`WEIGHT_DTYPES`, the
            checkpoint was loaded in bf16, or transformers' config cannot state its model (naming the argument),
            all before anything is written; as load_pretrained.
    """
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype: expected one of {list(_DTYPE_NAMES)}, got {dtype!r}")
    source = checkpoint.weights if isinstance(checkpoint, Pretrained) else checkpoint
    out = check_out(out, force=force, checkpoint=source)
    if isinstance(checkpoint, Pretrained):
        pretrained = checkpoint
    else:
        pretrained = load_pretrained(checkpoint, tokenizer=tokenizer, activation=activation)
        check_out(out, force=force, checkpoint=pretrained.weights)  # (what a run or URL resolved to: its model/...)
    if pretrained.dtype != torch.float32:  # (its linear weights cast and packed: not the checkpoint's)
        raise ValueError(f"checkpoint: expected a checkpoint loaded in fp32, got {pretrained.dtype}")
    clip = isinstance(pretrained.model, CLIPModel)
    config, notes = hf_config(pretrained)  # refused here, before anything is written
    source = Path(pretrained.weights)
    if (source if source.is_dir() else source.parent).joinpath(CLASSIFIER_CONFIG).is_file():
        notes.append(
            "the checkpoint is a fine-tuned classifier: its backbone is written, not its classification head, which "
            "transformers' FLAVA has no class for (python -m torchflava.classify reads the whole classifier)"
        )
    config["torch_dtype"] = _DTYPE_NAMES[dtype]
    to_hf = clip_to_hf if clip else flava_to_hf
    state = to_hf(pretrained.model.state_dict())
    limit = torch.finfo(dtype).max  # (fp16's 65504: a larger weight would be written as inf, without a word)
    if too_large := next((k for k, v in state.items() if v.is_floating_point() and v.abs().max() > limit), None):
        raise ValueError(
            f"dtype: expected a precision that holds every weight, got {_DTYPE_NAMES[dtype]}, whose largest value "
            f"{limit:g} {too_large} exceeds ({state[too_large].abs().max().item():g}): write fp32 or bf16"
        )
    weights = {k: v.detach().to(dtype).clone(memory_format=torch.contiguous_format) for k, v in state.items()}
    spec = pretrained.image_transform.spec
    if spec.crop_rounding != "floor" and spec.crop_size is not None:  # (a squash without a crop: no margin)
        notes.append(
            f"the preprocessing crops with {spec.crop_rounding} rounding (torchvision's, open_clip's); transformers' "
            "processors ignore that key and floor an odd margin: a centre crop one pixel off on such images"
        )
    tokenizer_out = _hf_tokenizer(pretrained, notes)
    with staged_directory(out) as staging:
        write_json(staging / "config.json", config)
        atomic_write(staging / "model.safetensors", lambda tmp: save_file(weights, tmp, metadata={"format": "pt"}))
        tokenizer_out.save(staging)
        if not isinstance(tokenizer_out, CLIPTokenizer):  # (BertTokenizer's defaults, stated)
            _add_bert_special_tokens(staging / "tokenizer_config.json", clip)
        pretrained.image_transform.save(staging)
        if not clip and spec.resize_mode != "squash":  # (FlavaProcessor's image processor only squashes)
            _update_json(staging / "preprocessor_config.json", processor_class="CLIPProcessor")
        files = sorted(p.name for p in staging.iterdir())
    return HFExport(out, "clip" if clip else "flava", files, notes)


def _add_bert_special_tokens(path: Path, clip: bool) -> None:
    names = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
    tokens = dict(zip(names, ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")))
    if clip:  # (CLIPModel takes no token_type_ids: BertTokenizer's would fail the pipelines' model(**inputs))
        tokens["model_input_names"] = ["input_ids", "attention_mask"]
    _update_json(path, **tokens)


def _update_json(path: Path, **values) -> None:
    write_json(path, {**json.loads(path.read_text(encoding="utf-8")), **values})


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = command_parser("torchflava.hf_export", __doc__)
    add_checkpoint_argument(parser)
    parser.add_argument("--out", required=True, help="the Hugging Face directory to write")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists and is not empty")
    parser.add_argument(
        "--dtype", choices=tuple(WEIGHT_DTYPES), default="fp32", help="precision of the weights written [fp32]"
    )
    add_lone_file_arguments(parser)
    parser.add_argument("--json", type=output_file, help="also write the report here")
    args = parser.parse_args(argv)
    try:
        check_out(args.out, force=args.force, checkpoint=args.checkpoint)  # before the checkpoint is read
    except ValueError as error:
        parser.error(f"argument --{error}")
    pretrained = command_pretrained(argparse.Namespace(**{**vars(args), "dtype": "fp32"}))
    try:
        export = save_hf_directory(pretrained, args.out, force=args.force, dtype=WEIGHT_DTYPES[args.dtype])
    except ValueError as error:
        message = str(error)
        raise ValueError(f"argument --{message}" if message.startswith(("out:", "dtype:")) else message) from None
    for note in export.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote a Hugging Face {export.family.upper()} directory: {export.directory} ({', '.join(export.files)})")
    report = dict(out=str(export.directory), family=export.family, files=export.files, notes=export.notes)
    report.update(weights=str(pretrained.weights), dtype=args.dtype)
    return finish_command(report, [], args.json)


if __name__ == "__main__":
    run_command(main)
