"""Argument checks shared across the library: one-line errors naming the argument, expected and given."""

import inspect
import math
import os
import string
from typing import Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor

from torchflava.utils.architecture import ContradictedArgument


def check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``.

    Args:
        name (str): the argument's name, for the message.
        value (object): what was given.
        minimum (int): the smallest value allowed.

    Returns:
        int: ``value``.

    Raises:
        TypeError: if ``value`` is not an int (bools are refused).
        ValueError: if it is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool, else TypeError naming ``name``: a string such as ``"false"``, or a
    number, would otherwise switch an option on by being truthy."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_bools(**values: object) -> None:
    """:func:`check_bool` on each keyword argument, by its name: an encoder's flags (``return_pooled="no"``
    ran the pooler, being truthy)."""
    for name, value in values.items():
        check_bool(name, value)


def check_module(name: str, value: object, *, optional: bool = False) -> None:
    """TypeError naming ``name`` unless ``value`` is an ``nn.Module`` (or None, with ``optional``): a
    str or a class given where a built module belongs would otherwise fail only when called."""
    if not (isinstance(value, torch.nn.Module) or (optional and value is None)):
        expected = "an nn.Module or None" if optional else "an nn.Module"
        got = f"the class {value.__name__} (not an instance)" if isinstance(value, type) else type(value).__name__
        raise TypeError(f"{name} must be {expected}, got {got}")


def check_probability(name: str, value: object, *, allow_zero: bool = True) -> float:
    """Return ``value`` as a float if it is a number in [0, 1] ((0, 1] without ``allow_zero``).

    Args:
        name (str): the argument's name, for the message.
        value (object): what was given.
        allow_zero (bool): whether 0 is allowed.

    Returns:
        float: ``value``.

    Raises:
        TypeError: if ``value`` is not a number (bools are refused).
        ValueError: if it is outside the range (or not finite).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    low_ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and low_ok and value <= 1):
        raise ValueError(f"{name} must be in {'[' if allow_zero else '('}0, 1], got {value}")
    return float(value)


def check_dropout(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a dropout probability in [0, 1) (at 1 every activation would be
    zeroed: a constant output), else TypeError (not a number; bools refused) or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not 0 <= value < 1:  # (NaN fails too)
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def check_finite_number(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number (bools refused), else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_positive_number(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a positive finite number (bools refused), else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def config_number(
    config: Mapping, key: str, default: float, where: str, *, integer: bool = True, if_list: str = ""
) -> float:
    """``config[key]`` (``default`` when absent): an int >= 1 (``integer``) or a positive finite number, else
    TypeError / ValueError naming ``where`` (e.g. a config file and section) and the key (and saying
    ``if_list`` where the value is a list: what such a config describes)."""
    name, value = f"{where}.{key}", config.get(key, default)
    if if_list and isinstance(value, (list, tuple)):
        raise ValueError(f"{name}: expected an int, got {list(value)} ({if_list})")
    return check_int(name, value, 1) if integer else check_positive_number(name, value)


def check_builder_arguments(owner: str, builder: Callable, kwargs: Mapping[str, object]) -> None:
    """ValueError naming ``owner`` and each name in ``kwargs`` that is no parameter of ``builder``."""
    if unknown := sorted(set(kwargs) - set(inspect.signature(builder).parameters)):
        raise ValueError(f"{owner}: expected arguments of {builder.__name__}, got {unknown}")


def with_config(
    owner: str, defaults: Mapping, config: Mapping, given: Mapping, where: object, *, settings: Iterable[str] = ()
) -> tuple[dict, dict]:
    """``defaults`` updated with ``config`` (read from ``where``), then ``given``; and ``where`` by the name of each
    value taken from ``config`` (for :func:`check_architecture`'s ``source``). ValueError naming ``owner`` and
    ``where`` and listing the (given, config) pairs where ``given`` contradicts ``config`` (a
    :class:`~torchflava.utils.architecture.ContradictedArgument` naming the first), but for ``settings``
    (e.g. training settings such as a dropout, which a given value overrides)."""
    settings = set(settings)
    if clash := {k: (v, config[k]) for k, v in given.items() if k in config and config[k] != v and k not in settings}:
        message = f"{owner}: expected arguments that match {where}, got (given, config) {clash}"
        raise ContradictedArgument(next(iter(clash)), message)  # (naming the first, for a caller's option or key)
    return {**defaults, **config, **given}, {k: str(where) for k in config if k not in given}


def check_entries(state_dict: Mapping[str, Tensor], expected: Mapping[str, object], where: str) -> None:
    """ValueError naming ``where``, the key, its value and the expected one, unless each entry of
    ``expected`` that ``state_dict`` holds with data (a peeked meta tensor has none) is a one-element
    tensor of that value: the metadata some checkpoints hold beside their weights (an image size...)."""
    for key, value in expected.items():
        found = state_dict.get(key)
        if found is None or found.is_meta:
            continue
        if found.numel() != 1 or found.item() != value:
            got = repr(found.item()) if found.numel() == 1 else f"a tensor of shape {list(found.shape)}"
            raise ValueError(f"{where}: expected {key} {value!r} (the model's), got {got}")


def unsupported_settings(config: Mapping, sections: Iterable[str], read: Iterable[str], as_built: Mapping) -> dict:
    """The settings of ``config`` (those of its ``sections`` as ``section.key``) that a reader does not ``read`` (by
    last key part) and that are not off (None, False) nor at their ``as_built`` value (by full key, else last part)."""
    sections, read = tuple(sections), set(read)  # (the sections in their order: the result's)
    settings = {k: v for k, v in config.items() if k not in sections}
    settings.update({f"{name}.{k}": v for name in sections for k, v in config[name].items()})
    built = lambda key: as_built.get(key, as_built.get(key.rpartition(".")[2]))  # noqa: E731
    other = {k: v for k, v in settings.items() if k.rpartition(".")[2] not in read}
    return {k: v for k, v in other.items() if v is not None and v is not False and v != built(k)}


def hf_sub_configs(config: Mapping, names: Sequence[str], where: str = "config") -> list[dict]:
    """The sub-configs ``names`` of a transformers composite config (``text_config``...; {} where absent): a
    legacy ``{name}_dict`` replaces its sub-config whole, as in transformers (its absent fields are the
    defaults, not the sub-config's). ValueError naming ``where`` and the key if one is not an object."""
    out = []
    for name in names:
        parts = [config.get(key) for key in (name, f"{name}_dict")]
        for key, part in zip((name, f"{name}_dict"), parts):
            if part is not None and not isinstance(part, dict):
                raise ValueError(f"{where} {key} must be an object, got {type(part).__name__}")
        out.append((parts[0] if parts[1] is None else parts[1]) or {})  # as transformers: the _dict wins whole
    return out


def shared_values(parts: Mapping[str, Mapping], defaults: Mapping[str, object], where: str) -> dict:
    """The value of each key of ``defaults`` (its default where a part lacks it), which every one of ``parts``
    (config sections by name) must hold alike; ValueError naming ``where``, the keys and values otherwise."""
    found = {key: [part.get(key, default) for part in parts.values()] for key, default in defaults.items()}
    if differ := {key: values for key, values in found.items() if any(value != values[0] for value in values)}:
        got = f"got ({', '.join(parts)}) {differ}"
        raise ValueError(f"{where}: expected one {', '.join(defaults)} for {' and '.join(parts)}, {got}")
    return {key: values[0] for key, values in found.items()}


def check_architecture(
    builder: str,
    args: Mapping[str, object],
    *,
    sizes: Iterable[str],
    multiples: Iterable[tuple[str, str]] = (),
    positive: Iterable[str] = (),
    finite: Iterable[str] = (),
    probabilities: Iterable[str] = (),
    dropouts: Iterable[str] = (),
    bools: Iterable[str] = (),
    choices: Optional[Mapping[str, Sequence]] = None,
    ids: Optional[Mapping[str, str]] = None,
    known: Optional[Iterable[str]] = None,
    source: Optional[Mapping[str, str]] = None,
) -> None:
    """Check a builder's arguments before anything is built, each error naming the builder's own
    argument (a layer deep inside would name its own, or fail inside torch).

    Args:
        builder (str): the builder's name, for the messages.
        args (Mapping[str, object]): the arguments by name.
        sizes (Iterable[str]): names of ints that must be >= 1.
        multiples (Iterable[tuple[str, str]]): (a, b) name pairs, ``a`` a multiple of ``b`` (width and heads).
        positive (Iterable[str]): names of positive finite numbers.
        finite (Iterable[str]): names of finite numbers.
        probabilities (Iterable[str]): names of numbers in [0, 1].
        dropouts (Iterable[str]): names of dropout probabilities, in [0, 1).
        bools (Iterable[str]): names of bools.
        choices (Optional[Mapping[str, Sequence]]): the values allowed, by name.
        ids (Optional[Mapping[str, str]]): names of ids (an int, or None) that must be below the size named.
        known (Optional[Iterable[str]]): the only names ``args`` may hold (e.g. where some came from a file).
        source (Mapping[str, str]): where a value came from, by name (e.g. a config file), for the messages.

    Raises:
        TypeError: if a size is not an int, or a bool not a bool.
        ValueError: if a value is out of its range, or a name is not ``known``.
    """
    source = source or {}
    if known is not None and (unknown := sorted(set(args) - set(known))):
        where = {source[k] for k in unknown if k in source}
        raise ValueError(
            f"{builder}: expected only its arguments, got {unknown}" + (f" (from {', '.join(where)})" if where else "")
        )
    name = lambda key: f"{builder}: {key}" + (f" (from {source[key]})" if key in source else "")  # noqa: E731
    for key in sizes:
        check_int(name(key), args[key], 1)
    for width, count in multiples:
        if args[width] % args[count]:
            raise ValueError(f"{name(width)} must be a multiple of {count} = {args[count]}, got {args[width]}")
    for key in positive:
        check_positive_number(name(key), args[key])
    for key in finite:
        check_finite_number(name(key), args[key])
    for key in probabilities:
        check_probability(name(key), args[key])
    for key in dropouts:
        check_dropout(name(key), args[key])
    for key in bools:
        check_bool(name(key), args[key])
    for key, allowed in (choices or {}).items():
        if args[key] not in allowed:
            raise ValueError(f"{name(key)} must be one of {tuple(allowed)}, got {args[key]!r}")
    for key, size in (ids or {}).items():
        value = args[key]
        if value is not None and (type(value) is not int or not 0 <= value < args[size]):
            raise ValueError(f"{name(key)} must be an int id below {size} = {args[size]}, got {value!r}")


def host_memory_bytes() -> Optional[int]:
    """This machine's physical memory in bytes; None where the OS does not say (not a POSIX system)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, as torch's loader counts them); the machine's where the
    OS does not say (no ``sched_getaffinity``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # (not on every OS)
        return os.cpu_count() or 1


def check_fits_in_memory(owner: str, num_params: int, sizes: Mapping[str, int]) -> None:
    """ValueError naming ``owner`` and its ``sizes`` if ``num_params`` weights would not fit in this
    machine's memory, when built there (the default device is the CPU): a mistyped size
    (``num_layers=1200``, ``vocab_size=10**11``) otherwise allocates for minutes before the process is
    killed, or fails inside torch's allocator. A meta or GPU build is not checked (a model planned on the
    meta device may be larger than this machine: the recipes count a whole model's build against it,
    :func:`torchflava.training.schema.meta_build_checks`)."""
    if torch.get_default_device().type != "cpu" or (memory := host_memory_bytes()) is None:
        return
    needed = num_params * torch.get_default_dtype().itemsize
    if needed > memory:
        described = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise ValueError(
            f"{owner}: {described} makes {num_params:.3g} weights, {needed / 2**30:.3g} GiB, more than this "
            f"machine's {memory / 2**30:.3g} GiB of memory"
        )


def is_prompt_template(template: object) -> bool:
    """Whether ``template`` is a str with exactly one replacement field for a class name, ``{}``, or ``{c}`` as
    CLIP_benchmark's and SLIP's templates write it, and no other (``{0}``, ``{name}``, a second field, or an
    unbalanced brace would fail in format), nor a conversion or format spec (``{!r}`` prompted ``a 'dog'``)."""
    if not isinstance(template, str):
        return False
    try:
        fields = [(f, spec, how) for _, f, spec, how in string.Formatter().parse(template) if f is not None]
    except ValueError:  # a single '{' or '}'
        return False
    return fields in ([("", "", None)], [("c", "", None)])


def fill_template(template: str, name: str) -> str:
    """The prompt of class ``name`` from a template that :func:`is_prompt_template` accepts (``{}`` or ``{c}``)."""
    return template.format(name, c=name)


def require(ok: Tensor, message: Callable[[], str], compiled_message: str) -> None:
    """Raise ``ValueError(message())`` unless the 0-dim bool tensor ``ok`` is True.

    In eager mode the check reads ``ok`` and builds the full message (which may inspect the
    offending values). While ``torch.compile`` traces, reading a value would break the graph, so
    the check becomes an in-graph assertion that raises ``RuntimeError(compiled_message)`` when
    the compiled code runs on bad values: the check is kept, without a graph break. On the meta
    device (a dry run of shapes, e.g. a model built under ``torch.device("meta")``) there is no
    value to read: the check passes (reading one failed inside torch, "Tensor.item() cannot be
    called on meta tensors"); the shape and dtype checks around it still apply. Under ``torch.func.vmap``
    (per-sample gradients, ensembles) every sample's value is read, and a failure raises
    ``ValueError(compiled_message)`` (reading one failed inside torch, "data-dependent control flow").

    Args:
        ok (Tensor): 0-dim bool tensor, True when the values are valid.
        message (Callable[[], str]): the eager error message, built only on failure.
        compiled_message (str): the message of the compiled assertion (static).
    """
    if torch.compiler.is_compiling():
        torch._assert_async(ok, compiled_message)
    elif torch._C._are_functorch_transforms_active() and torch._C._functorch.is_functorch_wrapped_tensor(ok):
        # under torch.func.vmap a value read fails inside torch ("data-dependent control flow"): read every
        # sample's, unwrapped (the message's reads of the batched values would fail too: the static one)
        batched = False
        while torch._C._functorch.is_functorch_wrapped_tensor(ok):
            batched = batched or torch._C._functorch.is_batchedtensor(ok)
            ok = torch._C._functorch.get_unwrapped(ok)
        if not bool(ok.all()):
            raise ValueError(compiled_message if batched else message())
    elif not ok.is_meta and not bool(ok):
        raise ValueError(message())


def is_integer_tensor(value: object) -> bool:
    """Whether ``value`` is a tensor of an integer dtype: ids and class indices (bool, floating-point and
    complex tensors are not; a uint8 one is, though indexing with it would mask rather than gather, so
    cast what passes to long before using it as an index)."""
    return isinstance(value, Tensor) and not (
        value.is_floating_point() or value.is_complex() or value.dtype == torch.bool
    )


def check_input_dtype(x: Tensor, weight: Optional[Tensor], name: str = "x") -> None:
    """TypeError naming ``name`` unless ``x`` is of ``weight``'s dtype (a layer's parameters; None: any), or
    autocast is on for ``x``'s device over fp32 parameters (it casts them), or on a device other than the CPU
    (CUDA's autocast runs norms in fp32 over bf16 parameters too); ValueError unless both are on one device.
    Without it a product failed inside torch, naming nothing (``mat1 and mat2 must have the same dtype``;
    ``Tensor on device meta is not on the expected device cpu``). Two comparisons when all is well."""
    if weight is None or (x.dtype == weight.dtype and x.device == weight.device):
        return
    if x.device != weight.device:
        raise ValueError(f"{name} must be on the layer's device {weight.device}, got {x.device}")
    if torch.is_autocast_enabled(x.device.type) and (weight.dtype == torch.float32 or x.device.type != "cpu"):
        return
    raise TypeError(
        f"{name} must be {weight.dtype}, the dtype of the layer's parameters (cast it, or run fp32 parameters under "
        f"torch.autocast), got {x.dtype}"
    )


def describe_tensor(value: object) -> str:
    """What a message says was given: a tensor's dtype and shape (``torch.float32 of shape (2, 3)``), or
    the type of anything else (``list``)."""
    return f"{value.dtype} of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def check_path(name: str, value: object) -> str:
    """``value`` as a str path if it is a str or ``os.PathLike`` (of a str), else TypeError naming ``name``
    (``Path(5)`` and ``open(5)`` raise Python's "expected str, bytes or os.PathLike", naming nothing)."""
    path = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(path, str):
        raise TypeError(f"{name} must be a str or os.PathLike path, got {type(value).__name__}")
    return path


def check_generator(name: str, value: object) -> None:
    """TypeError naming ``name`` unless ``value`` is a ``torch.Generator`` or None: a seed (an int) given
    where a generator belongs would otherwise fail inside torch, or on a missing ``.device``."""
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(
            f"{name} must be a torch.Generator or None, got {type(value).__name__} {value!r}"
            + (" (seed one with torch.Generator().manual_seed(seed))" if isinstance(value, int) else "")
        )
