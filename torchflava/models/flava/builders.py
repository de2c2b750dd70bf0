"""Builders: component builders expose every knob; ``flava_model`` defaults to FLAVA-full.

FLAVA-full: 768 wide, 12 heads, 12 image + 12 text + 6 multimodal layers, MLP 3072, 224 px
images in 16 px patches (197 image tokens), BERT vocabulary 30522 with 512 positions,
LayerNorm eps 1e-12, exact GELU, contrastive projections to 768.
"""

import inspect
import math
import os
from pathlib import Path
from typing import Callable, Optional, Union

from torch import nn

from torchflava.models.flava.classification import (
    LOSSES,
    MODALITIES,
    FLAVAForClassification,
    classification_head,
    default_loss,
)
from torchflava.models.flava.convert_weights import (
    check_norm_eps,
    detect_layout,
    hf_codebook_kwargs,
    hf_directory_kwargs,
    load_flava_pretraining_weights,
    load_flava_weights,
    local_flava_checkpoint,
    without_wrapper_prefix,
)
from torchflava.models.flava.model import FLAVAModel
from torchflava.models.flava.pretraining import FLAVAForPretraining, LossWeights, check_pretraining_settings
from torchflava.modules.codebook import dalle_encoder
from torchflava.modules.encoders import MultimodalEncoder, TextEncoder, VisionEncoder, transformer_encoder
from torchflava.modules.heads import ITMHead, MaskedPredictionHead
from torchflava.modules.init import init_weights
from torchflava.modules.layers import Linear, PatchEmbedding, Pooler, TextEmbedding
from torchflava.utils.checkpoint import load_state_dict, peek_state_dict, read_json_object, training_run_model
from torchflava.utils.checks import (
    check_architecture,
    check_bool,
    check_builder_arguments,
    check_dropout,
    check_finite_number,
    check_int,
    check_module,
)
from torchflava.utils.distributed import GatherGrad
from torchflava.utils.meta import meta_device

# What every tower builder checks beside its own sizes (flava_model checks its prefixed arguments alike).
_TOWER_CHECKS = dict(
    multiples=[("embed_dim", "num_heads")],
    positive=["norm_eps"],
    dropouts=["dropout", "attention_dropout", "mlp_dropout"],
)


def _mlp_dropout_resolved(args: dict) -> dict:
    """``args`` with a ``mlp_dropout`` of None (the MLP takes ``dropout``) replaced by ``dropout``, to check it."""
    return {**args, "mlp_dropout": args["dropout"] if args["mlp_dropout"] is None else args["mlp_dropout"]}


def flava_image_encoder(
    *,
    embed_dim: int = 768,
    num_layers: int = 12,
    num_heads: int = 12,
    mlp_dim: int = 3072,
    image_size: int = 224,
    patch_size: int = 16,
    in_channels: int = 3,
    use_mask_token: bool = True,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    norm_eps: float = 1e-12,
    mlp_dropout: Optional[float] = None,
) -> VisionEncoder:
    """FLAVA's ViT image encoder: (B, 3, 224, 224) -> (B, 197, 768) by default.

    Args:
        embed_dim (int): width D.
        num_layers (int): transformer layers.
        num_heads (int): attention heads.
        mlp_dim (int): MLP hidden width.
        image_size (int): image side the positions are learned for.
        patch_size (int): patch side.
        in_channels (int): image channels.
        use_mask_token (bool): learned mask token for masked image modelling.
        dropout (float): dropout on embeddings, MLP and residual branches.
        attention_dropout (float): dropout on attention probabilities.
        norm_eps (float): LayerNorm epsilon.
        mlp_dropout (Optional[float]): dropout after the MLP's activation; None: ``dropout``.

    Returns:
        VisionEncoder: the encoder (random init).

    Raises:
        TypeError: if a size is not an int.
        ValueError: if a value is out of its range, naming the argument.
    """
    check_architecture(
        "flava_image_encoder",
        _mlp_dropout_resolved(locals()),
        sizes=["embed_dim", "num_layers", "num_heads", "mlp_dim", "image_size", "patch_size", "in_channels"],
        **{**_TOWER_CHECKS, "multiples": [*_TOWER_CHECKS["multiples"], ("image_size", "patch_size")]},
    )
    return VisionEncoder(
        PatchEmbedding(image_size, patch_size, in_channels, embed_dim, use_mask_token=use_mask_token, dropout=dropout),
        transformer_encoder(
            embed_dim=embed_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            norm_eps=norm_eps,
            mlp_dropout=mlp_dropout,
        ),
        nn.LayerNorm(embed_dim, eps=norm_eps),
        Pooler(embed_dim),
    )


def flava_text_encoder(
    *,
    embed_dim: int = 768,
    num_layers: int = 12,
    num_heads: int = 12,
    mlp_dim: int = 3072,
    vocab_size: int = 30522,
    max_seq_len: int = 512,
    type_vocab_size: int = 2,
    pad_token_id: int = 0,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    norm_eps: float = 1e-12,
    mlp_dropout: Optional[float] = None,
) -> TextEncoder:
    """FLAVA's BERT-style text encoder: (B, L) ids -> (B, L, 768) by default.

    Args:
        embed_dim (int): width D.
        num_layers (int): transformer layers.
        num_heads (int): attention heads.
        mlp_dim (int): MLP hidden width.
        vocab_size (int): number of token ids.
        max_seq_len (int): number of learned positions.
        type_vocab_size (int): number of token types.
        pad_token_id (int): padding id.
        dropout (float): dropout on embeddings, MLP and residual branches.
        attention_dropout (float): dropout on attention probabilities.
        norm_eps (float): LayerNorm epsilon.
        mlp_dropout (Optional[float]): dropout after the MLP's activation; None: ``dropout``.

    Returns:
        TextEncoder: the encoder (random init).

    Raises:
        TypeError: if a size is not an int.
        ValueError: if a value is out of its range, naming the argument.
    """
    check_architecture(
        "flava_text_encoder",
        _mlp_dropout_resolved(locals()),
        sizes=["embed_dim", "num_layers", "num_heads", "mlp_dim", "vocab_size", "max_seq_len", "type_vocab_size"],
        **_TOWER_CHECKS,
        ids={"pad_token_id": "vocab_size"},
    )
    return TextEncoder(
        TextEmbedding(
            vocab_size,
            embed_dim,
            max_seq_len,
            type_vocab_size=type_vocab_size,
            pad_token_id=pad_token_id,
            norm_eps=norm_eps,
            dropout=dropout,
        ),
        transformer_encoder(
            embed_dim=embed_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            norm_eps=norm_eps,
            mlp_dropout=mlp_dropout,
        ),
        nn.LayerNorm(embed_dim, eps=norm_eps),
        Pooler(embed_dim),
    )


def flava_multimodal_encoder(
    *,
    embed_dim: int = 768,
    num_layers: int = 6,
    num_heads: int = 12,
    mlp_dim: int = 3072,
    image_dim: int = 768,
    text_dim: int = 768,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    norm_eps: float = 1e-12,
    mlp_dropout: Optional[float] = None,
) -> MultimodalEncoder:
    """FLAVA's multimodal encoder over projected image and text states.

    Args:
        embed_dim (int): width D of the multimodal encoder.
        num_layers (int): transformer layers.
        num_heads (int): attention heads.
        mlp_dim (int): MLP hidden width.
        image_dim (int): width of the incoming image states.
        text_dim (int): width of the incoming text states.
        dropout (float): dropout in the MLP and residual branches.
        attention_dropout (float): dropout on attention probabilities.
        norm_eps (float): LayerNorm epsilon.
        mlp_dropout (Optional[float]): dropout after the MLP's activation; None: ``dropout``.

    Returns:
        MultimodalEncoder: the encoder (random init).

    Raises:
        TypeError: if a size is not an int.
        ValueError: if a value is out of its range, naming the argument.
    """
    check_architecture(
        "flava_multimodal_encoder",
        _mlp_dropout_resolved(locals()),
        sizes=["embed_dim", "num_layers", "num_heads", "mlp_dim", "image_dim", "text_dim"],
        **_TOWER_CHECKS,
    )
    return MultimodalEncoder(
        Linear(image_dim, embed_dim),
        Linear(text_dim, embed_dim),
        transformer_encoder(
            embed_dim=embed_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            norm_eps=norm_eps,
            mlp_dropout=mlp_dropout,
        ),
        nn.LayerNorm(embed_dim, eps=norm_eps),
        embed_dim,
        Pooler(embed_dim),
    )


_TOWERS = ("image", "text", "multimodal")
_FLAVA_CHECKS = dict(
    sizes=[f"{t}_{n}" for t in _TOWERS for n in ("embed_dim", "num_layers", "num_heads", "mlp_dim")]
    + ["image_size", "patch_size", "in_channels", "vocab_size", "max_seq_len", "type_vocab_size", "projection_dim"],
    # (a patch grid that does not tile the image: PatchEmbedding's refusal named neither builder nor config.json)
    multiples=[(f"{t}_embed_dim", f"{t}_num_heads") for t in _TOWERS] + [("image_size", "patch_size")],
    positive=["norm_eps", "init_std"],
    finite=["logit_scale_init"],
    dropouts=["dropout", "attention_dropout", "mlp_dropout"],
    ids={"pad_token_id": "vocab_size"},
)
# Training settings, not architecture: a value given (other than the default) overrides the checkpoint's.
_SETTINGS = ("dropout", "attention_dropout", "mlp_dropout")


def flava_model(
    *,
    pretrained: Optional[Union[str, os.PathLike]] = None,
    image_embed_dim: int = 768,
    image_num_layers: int = 12,
    image_num_heads: int = 12,
    image_mlp_dim: int = 3072,
    image_size: int = 224,
    patch_size: int = 16,
    in_channels: int = 3,
    text_embed_dim: int = 768,
    text_num_layers: int = 12,
    text_num_heads: int = 12,
    text_mlp_dim: int = 3072,
    vocab_size: int = 30522,
    max_seq_len: int = 512,
    type_vocab_size: int = 2,
    pad_token_id: int = 0,
    multimodal_embed_dim: int = 768,
    multimodal_num_layers: int = 6,
    multimodal_num_heads: int = 12,
    multimodal_mlp_dim: int = 3072,
    projection_dim: int = 768,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    mlp_dropout: Optional[float] = None,
    norm_eps: float = 1e-12,
    logit_scale_init: float = math.log(1 / 0.07),
    init_std: float = 0.02,
) -> FLAVAModel:
    """The FLAVA model; FLAVA-full by default.

    With a Hugging Face directory as ``pretrained`` (or a weights file in it), an argument left at its
    default takes the value its config.json states; an argument given otherwise must match it, but a
    dropout given (other than its default) overrides the checkpoint's, as a training setting. A
    torchflava export (the pretraining recipe's ``model/`` directory, its run directory, or the weights
    file in it) is read alike, its ``backbone_config.json`` standing for config.json; so is one of its
    training checkpoints (``<run>/checkpoints/step_<N>``, N padded or not; a run without an export: its
    newest complete, intact one, named on stderr), with the run's ``config.yaml`` standing for it and
    the weights of that step (:func:`torchflava.pretrained.trained_model`).

    A Hugging Face config's ``hidden_dropout_prob`` is ``dropout`` and its ``attention_probs_dropout_prob``
    ``attention_dropout`` (one value each for the three towers), with ``mlp_dropout`` 0: transformers'
    FLAVA drops the embeddings, the attention probabilities and both residual branches, not the MLP's
    hidden activations.

    Args:
        pretrained (Optional[Union[str, os.PathLike]]): local path or URL of weights to load: a Hugging
            Face ``FlavaModel``/``FlavaForPreTraining`` directory or file (safetensors or .bin), a
            torchmultimodal ``.pt`` state dict, or one of ours (also under DDP's ``module.`` or a
            Lightning module's ``model.``), or a torchflava export, run or training checkpoint. The architecture arguments must
            match it (a mismatch names the arguments whose sizes the tensors' shapes tell otherwise).
        image_embed_dim (int): image encoder width.
        image_num_layers (int): image encoder layers.
        image_num_heads (int): image encoder heads.
        image_mlp_dim (int): image encoder MLP width.
        image_size (int): image side the positions are learned for.
        patch_size (int): patch side.
        in_channels (int): image channels.
        text_embed_dim (int): text encoder width.
        text_num_layers (int): text encoder layers.
        text_num_heads (int): text encoder heads.
        text_mlp_dim (int): text encoder MLP width.
        vocab_size (int): text vocabulary size.
        max_seq_len (int): learned text positions.
        type_vocab_size (int): token types.
        pad_token_id (int): padding token id.
        multimodal_embed_dim (int): multimodal encoder width.
        multimodal_num_layers (int): multimodal encoder layers.
        multimodal_num_heads (int): multimodal encoder heads.
        multimodal_mlp_dim (int): multimodal encoder MLP width.
        projection_dim (int): width P of the contrastive features.
        dropout (float): dropout on the embeddings and both residual branches of every layer (and in
            the MLP, where ``mlp_dropout`` is None).
        attention_dropout (float): dropout on attention probabilities.
        mlp_dropout (Optional[float]): dropout after each MLP's activation; None: ``dropout``
            (torchmultimodal's placement).
        norm_eps (float): LayerNorm epsilon.
        logit_scale_init (float): initial contrastive log temperature multiplier.
        init_std (float): std of the normal initialisation (0.02, BERT's, suits FLAVA's width; small
            models learn faster from a larger one, e.g. 0.06 at width 128).

    Returns:
        FLAVAModel: the model, with weights loaded when ``pretrained`` is given.

    Raises:
        ValueError: if an argument is out of its range (a size below 1, a width that its heads do not
            divide, a dropout outside [0, 1), ``pad_token_id`` outside the vocabulary...), naming it,
            or contradicts config.json (the (given, config) pairs listed), or the checkpoint does not fit.
        TypeError: if a size is not an int.
    """
    args = {k: v for k, v in locals().items() if k != "pretrained"}
    # a run's checkpoints/step_<N>, or a run without an export: read where runs are known, above the models
    if (trained := training_run_model(flava_model, pretrained, args)) is not None:
        return trained
    local = None if pretrained is None else local_flava_checkpoint(pretrained)
    # the checkpoint's names, shapes and dtypes (no data): a directory without weights, or a malformed file,
    # says so before any work
    peeked = None if local is None else peek_state_dict(local)
    args, config_file, config = _resolved_flava_arguments(local, args, peeked)
    source = {k: str(config_file) for k, v in config.items() if args.get(k) == v}
    check_architecture("flava_model", _mlp_dropout_resolved(args), **_FLAVA_CHECKS, source=source)
    if local is not None:  # names and shapes checked on a meta-device model: no real one is built for a misfit
        with meta_device():
            load_flava_weights(_build_flava(args), peeked)
    model = _build_flava(args)
    if local is not None:  # the tensors are read once the arguments are known to build a model
        load_flava_weights(model, load_state_dict(local))
    return model


def flava_model_arguments(pretrained: Optional[Union[str, os.PathLike]] = None, **kwargs) -> dict:
    """The arguments :func:`flava_model` builds with for ``pretrained`` and ``kwargs``: those left at
    their defaults filled from a Hugging Face directory's config.json or a torchflava export's
    backbone_config.json (e.g. to record the architecture a run trained, as the pretraining recipe's
    export does).

    Raises:
        ValueError: if ``kwargs`` contradicts that file, or names no argument of :func:`flava_model`.
    """
    check_builder_arguments("flava_model_arguments", flava_model, kwargs)
    defaults = {k: p.default for k, p in inspect.signature(flava_model).parameters.items() if k != "pretrained"}
    local = None if pretrained is None else local_flava_checkpoint(pretrained)
    peeked = None if local is None else peek_state_dict(local)
    return _resolved_flava_arguments(local, {**defaults, **kwargs}, peeked)[0]


def _resolved_flava_arguments(
    local: Optional[Path], args: dict, peeked: Optional[dict]
) -> tuple[dict, Optional[Path], dict]:
    """``args`` with config.json's values (see :func:`_with_config`), the config.json and its values;
    ``peeked``: the checkpoint's :func:`peek_state_dict`."""
    if local is None:
        return args, None, {}
    config_file, config = _checkpoint_config(local, peeked)
    return _with_config(flava_model, args, config_file, config, settings=_SETTINGS), config_file, config


def _checkpoint_config(local: Path, peeked: Optional[dict]) -> tuple[Optional[Path], dict]:
    """:func:`hf_directory_kwargs`; ValueError naming a torchflava export's backbone_config.json if it holds a
    name that is no argument of :func:`flava_model` (what it holds is passed to it)."""
    config_file, config = hf_directory_kwargs(local, peeked)
    if config_file is not None and config_file.name == "backbone_config.json":
        check_builder_arguments(str(config_file), flava_model, config)
    return config_file, config


def _with_config(
    builder: Callable, args: dict, config_file: Optional[Path], config: dict, *, settings: tuple[str, ...] = ()
) -> dict:
    """``args`` with those left at ``builder``'s defaults taken from ``config`` (read from ``config_file``);
    those of ``settings`` given (not at their defaults) are kept over ``config``'s.

    Raises:
        ValueError: listing the (given, config) pairs of the arguments given that contradict it (but
            ``settings``).
    """
    defaults = inspect.signature(builder).parameters
    config = {k: v for k, v in config.items() if k in args}
    given = [k for k in config if args[k] != defaults[k].default]
    clash = {k: (args[k], config[k]) for k in given if args[k] != config[k] and k not in settings}
    if clash:
        raise ValueError(
            f"{builder.__name__}: expected arguments that match {config_file}, got (given, config) {clash}"
        )
    return {**args, **{k: v for k, v in config.items() if k not in given}}


def _build_flava(a: dict) -> FLAVAModel:
    def tower(name: str) -> dict:
        return {k: a[f"{name}_{k}"] for k in ("embed_dim", "num_layers", "num_heads", "mlp_dim")}

    common = {k: a[k] for k in ("dropout", "attention_dropout", "mlp_dropout", "norm_eps")}
    return FLAVAModel(
        flava_image_encoder(
            **tower("image"),
            image_size=a["image_size"],
            patch_size=a["patch_size"],
            in_channels=a["in_channels"],
            **common,
        ),
        flava_text_encoder(
            **tower("text"),
            vocab_size=a["vocab_size"],
            max_seq_len=a["max_seq_len"],
            type_vocab_size=a["type_vocab_size"],
            pad_token_id=a["pad_token_id"],
            **common,
        ),
        flava_multimodal_encoder(
            **tower("multimodal"), image_dim=a["image_embed_dim"], text_dim=a["text_embed_dim"], **common
        ),
        nn.Linear(a["image_embed_dim"], a["projection_dim"]),
        nn.Linear(a["text_embed_dim"], a["projection_dim"]),
        logit_scale_init=a["logit_scale_init"],
        init_std=a["init_std"],
    )


def flava_model_for_pretraining(
    *,
    backbone: Optional[FLAVAModel] = None,
    codebook: Optional[nn.Module] = None,
    build_codebook: bool = True,
    pretrained: Optional[Union[str, os.PathLike]] = None,
    image_vocab_size: int = 8192,
    head_norm_eps: Optional[float] = None,
    mim_weight: float = 1.0,
    mlm_weight: float = 1.0,
    itm_weight: float = 1.0,
    global_contrastive_weight: float = 1.0,
    mmm_image_weight: float = 1.0,
    mmm_text_weight: float = 1.0,
    unimodal_losses_on_pairs: bool = False,
    recompute_contrastive_passes: bool = False,
    ignore_index: int = -100,
    contrastive_gather: GatherGrad = GatherGrad.GLOBAL,
) -> FLAVAForPretraining:
    """FLAVA with its pretraining heads, losses and (optionally) the dVAE codebook.

    With a Hugging Face directory as ``pretrained``, its config.json gives the backbone (when none is
    given), ``image_vocab_size`` (when left at its default) and ``head_norm_eps`` (when None); a value
    given otherwise must match it. It also gives the loss settings ``FlavaForPreTraining`` trained with
    (``*_weight``, ``ce_ignore_index`` as ``ignore_index``, ``global_backprop_contrastive`` false as
    ``GatherGrad.LOCAL``) to those left at their defaults; one given otherwise overrides it. A torchflava export gives the backbone (its backbone_config.json) and
    ``image_vocab_size`` (its MIM head's rows) alike.

    Args:
        backbone (Optional[FLAVAModel]): the backbone; when None, FLAVA-full (``flava_model()``) or the
            architecture of a Hugging Face ``pretrained`` directory. Build it with ``flava_model(...)``
            for other sizes.
        codebook (Optional[nn.Module]): image tokenizer with ``tokens(pixels)``; when None and
            ``build_codebook``, the DALL-E dVAE encoder (8192 ids, 112 px -> 14 x 14; for a Hugging Face
            ``pretrained`` directory, at the sizes of its config.json's ``image_codebook_config``).
        build_codebook (bool): build the default codebook when none is given. Leave it off when the
            data pipeline provides ``image_tokens`` (cheaper: the codebook is ~12% of a step).
        pretrained (Optional[Union[str, os.PathLike]]): a pretraining checkpoint (HF ``FlavaForPreTraining``,
            torchmultimodal ``FLAVAForPreTraining``, or ours; also under DDP's ``module.`` or a Lightning
            module's ``model.``) to load.
        image_vocab_size (int): number of codebook ids (MIM classes).
        head_norm_eps (Optional[float]): LayerNorm epsilon of the prediction heads. None: the checkpoint's
            (config.json's ``layer_norm_eps`` for a Hugging Face directory, 1e-5 for torchmultimodal's
            checkpoints), else Hugging Face's 1e-12. A value given is kept, also for a torchmultimodal
            checkpoint (whose heads were trained with 1e-5).
        mim_weight (float): MIM loss weight.
        mlm_weight (float): MLM loss weight.
        itm_weight (float): ITM loss weight.
        global_contrastive_weight (float): contrastive loss weight.
        mmm_image_weight (float): MMM-image loss weight.
        mmm_text_weight (float): MMM-text loss weight.
        unimodal_losses_on_pairs (bool): also run MIM and MLM on image-text batches.
        recompute_contrastive_passes (bool): run the unmasked passes that feed only the contrastive loss
            on their own, not stacked with the masked ones, and recompute them in backward (saves their
            activations for one more forward of them).
        ignore_index (int): label of positions without a target.
        contrastive_gather (GatherGrad): gradient semantics of the cross-rank feature gather.

    Returns:
        FLAVAForPretraining: the model.

    Raises:
        ValueError: if a loss weight is negative or not a finite number, ``image_vocab_size`` is not an
            int >= 2 or ``head_norm_eps`` not positive (naming the argument), or an argument or the
            backbone's LayerNorm eps contradicts a Hugging Face directory's config.json, or the codebook it
            states is not one ``dalle_encoder`` builds or has another number of ids than ``image_vocab_size``.
    """
    if backbone is not None and not isinstance(backbone, FLAVAModel):  # (before any checkpoint is read)
        raise TypeError(f"backbone must be a FLAVAModel, got {type(backbone).__name__}")
    check_module("codebook", codebook, optional=True)
    check_bool("build_codebook", build_codebook)
    check_pretraining_settings(unimodal_losses_on_pairs, recompute_contrastive_passes, ignore_index, contrastive_gather)
    local = None if pretrained is None else local_flava_checkpoint(pretrained)
    peeked = None if local is None else without_wrapper_prefix(peek_state_dict(local))  # names only, no data
    config_file, config = (None, {}) if local is None else _checkpoint_config(local, peeked)
    if config_file is not None and config_file.name == "backbone_config.json" and "mim_head.decoder.bias" in peeked:
        config = {**config, "image_vocab_size": peeked["mim_head.decoder.bias"].shape[0]}  # (an export's: its rows)
    # the loss settings a Hugging Face config.json states (FlavaForPreTraining trained with them), else those given
    names = ("mim", "mlm", "itm", "global_contrastive", "mmm_image", "mmm_text")
    losses = {f"{name}_weight": value for name, value in zip(names, (mim_weight, mlm_weight, itm_weight))}
    losses.update(global_contrastive_weight=global_contrastive_weight, mmm_image_weight=mmm_image_weight)
    losses.update(mmm_text_weight=mmm_text_weight, ignore_index=ignore_index, contrastive_gather=contrastive_gather)
    losses = _with_config(flava_model_for_pretraining, losses, config_file, config, settings=tuple(losses))
    for name in names:
        if check_finite_number(f"{name}_weight", losses[f"{name}_weight"]) < 0:
            raise ValueError(f"{name}_weight must be >= 0, got {losses[f'{name}_weight']!r}")
    loss_weights = LossWeights(**{name: losses[f"{name}_weight"] for name in names})
    heads = dict(image_vocab_size=image_vocab_size, head_norm_eps=head_norm_eps)
    heads = _with_config(flava_model_for_pretraining, heads, config_file, config)
    if heads["head_norm_eps"] is None:  # torchmultimodal's prediction heads use 1e-5, Hugging Face's 1e-12
        heads["head_norm_eps"] = 1e-5 if peeked is not None and detect_layout(peeked) == "tmm" else 1e-12
    image_vocab_size, head_norm_eps = heads["image_vocab_size"], heads["head_norm_eps"]
    check_architecture(  # before the backbone is built
        "flava_model_for_pretraining",
        heads,
        sizes=["image_vocab_size"],
        positive=["head_norm_eps"],
        source={key: str(config_file) for key in heads if key in config},
    )
    if image_vocab_size < 2:  # MIM and MMM-image over one class: a loss of 0, nothing learnt
        raise ValueError(
            f"flava_model_for_pretraining: image_vocab_size must be >= 2 (one codebook id: the image losses are "
            f"always 0), got {image_vocab_size}"
        )
    dvae = dict(vocab_size=image_vocab_size)  # the codebook built where none is given: the published dVAE's sizes,
    if codebook is None and build_codebook and config_file is not None and config_file.name == "config.json":
        try:  # or those of the one a Hugging Face FlavaForPreTraining states (its weights are loaded into it)
            dvae = hf_codebook_kwargs(read_json_object(config_file))
        except ValueError as error:
            raise ValueError(f"flava_model_for_pretraining: {config_file}: {error}") from None
        if dvae["vocab_size"] != image_vocab_size:  # (its ids are the MIM heads' classes)
            raise ValueError(
                f"flava_model_for_pretraining: {config_file}: expected image_codebook_config.vocab_size to be "
                f"image_vocab_size, {image_vocab_size} (the MIM heads' classes), got {dvae['vocab_size']}"
            )
    backbone_config = {k: v for k, v in config.items() if k in inspect.signature(flava_model).parameters}
    model = flava_model(**backbone_config) if backbone is None else backbone
    image_dim = model.image_encoder.norm.normalized_shape[0]
    text_dim = model.text_encoder.norm.normalized_shape[0]
    multimodal_dim = model.multimodal_encoder.norm.normalized_shape[0]
    vocab_size = model.text_encoder.embeddings.vocab_size
    if codebook is None and build_codebook:
        codebook = dalle_encoder(**dvae)
    pretraining = FLAVAForPretraining(
        model,
        mlm_head=MaskedPredictionHead(text_dim, vocab_size, norm_eps=head_norm_eps),
        mim_head=MaskedPredictionHead(image_dim, image_vocab_size, norm_eps=head_norm_eps),
        mmm_text_head=MaskedPredictionHead(multimodal_dim, vocab_size, norm_eps=head_norm_eps),
        mmm_image_head=MaskedPredictionHead(multimodal_dim, image_vocab_size, norm_eps=head_norm_eps),
        itm_head=ITMHead(multimodal_dim),
        codebook=codebook,
        weights=loss_weights,
        unimodal_losses_on_pairs=unimodal_losses_on_pairs,
        recompute_contrastive_passes=recompute_contrastive_passes,
        ignore_index=losses["ignore_index"],
        contrastive_gather=losses["contrastive_gather"],
    )
    for name in ("mlm_head", "mim_head", "mmm_text_head", "mmm_image_head", "itm_head"):
        init_weights(getattr(pretraining, name), std=model.init_std)
    if config_file is not None and config_file.name == "config.json":  # (an export's states no head eps)
        check_norm_eps(pretraining, config["norm_eps"], config_file)  # a backbone given may differ
    if local is not None:  # the tensors are read once the arguments are known to build the model
        load_flava_pretraining_weights(pretraining, load_state_dict(local))  # (it drops a wrapper's prefix)
    return pretraining


def flava_model_for_classification(
    num_classes: int,
    *,
    modality: str = "multimodal",
    backbone: Optional[FLAVAModel] = None,
    pretrained: Optional[Union[str, os.PathLike]] = None,
    loss: Optional[str] = None,
    classifier_hidden_dim: int = 768,
    classifier_dropout: float = 0.5,
) -> FLAVAForClassification:
    """FLAVA with the paper's fine-tuning head (MLP on one encoder's CLS) and its loss.

    Args:
        num_classes (int): outputs of the head, >= 1 (1 with ``loss="mse"`` for regression).
        modality (str): whose CLS the head reads: ``"text"``, ``"image"`` or ``"multimodal"``.
        backbone (Optional[FLAVAModel]): the backbone; when None, FLAVA-full (``flava_model()``) or the
            architecture of a Hugging Face ``pretrained`` directory (its config.json).
        pretrained (Optional[Union[str, os.PathLike]]): backbone weights to load (HF ``FlavaModel`` or
            ``FlavaForPreTraining``, torchmultimodal, or ours; pretraining heads are ignored).
        loss (Optional[str]): ``"cross_entropy"``, ``"binary_cross_entropy"`` (soft scores, VQA) or
            ``"mse"``; by default ``mse`` for one output and ``cross_entropy`` otherwise.
        classifier_hidden_dim (int): hidden width of the head.
        classifier_dropout (float): dropout in the head.

    Returns:
        FLAVAForClassification: the model (head initialised from N(0, 0.02), zero biases).

    Raises:
        TypeError: if ``num_classes`` is not an int.
        ValueError: if ``num_classes`` < 1, ``modality`` or ``loss`` is unknown, or ``classifier_dropout``
            is outside [0, 1).
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    loss = default_loss(num_classes) if loss is None else loss
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss == "cross_entropy" and num_classes < 2:  # softmax over one class: loss 0, nothing learnt
        raise ValueError("num_classes must be >= 2 for loss='cross_entropy' (one output: loss='mse'), got 1")
    check_int("classifier_hidden_dim", classifier_hidden_dim, 1)
    check_dropout("classifier_dropout", classifier_dropout)
    if backbone is not None and not isinstance(backbone, FLAVAModel):
        raise TypeError(f"backbone must be a FLAVAModel, got {type(backbone).__name__}")
    model = flava_model(pretrained=pretrained) if backbone is None else backbone
    if backbone is not None and pretrained is not None:
        load_flava_weights(model, pretrained)
    encoder = {"text": model.text_encoder, "image": model.image_encoder, "multimodal": model.multimodal_encoder}[
        modality
    ]
    head = classification_head(
        encoder.norm.normalized_shape[0], num_classes, hidden_dim=classifier_hidden_dim, dropout=classifier_dropout
    )
    return FLAVAForClassification(model, head, modality=modality, loss=loss)
