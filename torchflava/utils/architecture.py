"""What a checkpoint tells of the architecture that loads it: the sizes its tensors' shapes imply, and the
architecture file a torchflava export keeps beside its weights. Builders use these to fill the arguments left
unset and to name, when a checkpoint does not fit, which arguments disagree with it."""

from pathlib import Path
import re
from typing import Callable, Iterable, Mapping, Optional

from torch import Tensor

_INDEX = "9876543210"  # a layer index that no checkpoint holds: where the index stands in a checkpoint's key


def implied_sizes(
    state_dict: Mapping[str, Tensor],
    rules: Mapping[str, tuple[str, Optional[int]]],
    name_of: Callable[[str], str] = lambda key: key,
    *,
    transposed: Iterable[str] = (),
    sources: bool = False,
) -> dict:
    """The builder arguments the shapes of ``state_dict`` imply, read off its tensors and key names alone (meta
    tensors will do): where the dim of a tensor would not tell, the argument is left out.

    Args:
        state_dict (Mapping[str, Tensor]): a checkpoint, in any layout ``name_of`` maps to.
        rules (Mapping[str, tuple[str, Optional[int]]]): argument -> (the model's key, the dim whose length it
            is); with dim None, the key of a layer's tensor with ``{}`` for its index: the argument is the
            count of layers (1 + the highest index the checkpoint holds). ``{}`` in a key is layer 0's.
        name_of (Callable[[str], str]): the checkpoint's key for one of the model's (the same by default).
        transposed (Iterable[str]): the model's keys of 2-D tensors the checkpoint holds transposed.
        sources (bool): give each argument as :func:`sourced` gives it: (value, the checkpoint's key that tells
            it, that tensor's shape; for a layer count, the last layer's), to name the evidence in an error.

    Returns:
        dict: argument -> its value (or, with ``sources``, the triple).
    """
    out, keys, transposed = {}, {}, set(transposed)
    for name, (key, dim) in rules.items():
        if dim is None:
            head, _, tail = name_of(key.format(_INDEX)).partition(_INDEX)
            pattern = re.compile(re.escape(head) + r"(\d+)" + re.escape(tail))
            indices = [int(m.group(1)) for k in state_dict if (m := pattern.fullmatch(k)) is not None]
            if indices:
                out[name], keys[name] = max(indices) + 1, f"{head}{max(indices)}{tail}"
            continue
        tensor = state_dict.get(keys.setdefault(name, name_of(key.format(0))))
        if tensor is not None and key in transposed:  # (kept as x @ W)
            tensor = tensor.mT if tensor.dim() == 2 else None
        if tensor is not None and -tensor.dim() <= dim < tensor.dim():
            out[name] = tensor.shape[dim]
    return sourced(out, keys, state_dict) if sources else out


def sourced(sizes: Mapping[str, int], keys: Mapping[str, str], state_dict: Mapping[str, Tensor]) -> dict:
    """Each of ``sizes`` as (its value, ``keys``' tensor of ``state_dict`` that tells it, that tensor's shape)."""
    return {name: (value, keys[name], tuple(state_dict[keys[name]].shape)) for name, value in sizes.items()}


def size_value(told: object) -> object:
    """A size as a value: the first of a :func:`sourced` triple, or the value itself."""
    return told[0] if isinstance(told, tuple) else told


class UntoldArgument(ValueError):
    """A builder argument a checkpoint does not tell and the caller must give (``argument``: its name), so that
    a caller naming its arguments otherwise (a recipe's config key) can name it."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument


class ContradictedArgument(ValueError):
    """A builder argument given otherwise than a checkpoint's weights or config state (``argument``: its name; e.g.
    GELU for OpenAI's weights, trained with QuickGELU), so that a caller naming its arguments otherwise can name it."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument


def implied_heads(
    sizes: Mapping[str, int], towers: Iterable[str], given: Mapping, where: object, head_widths: Mapping = {}
) -> dict:
    """``sizes`` with each tower's head count (``{tower}_heads``) that its width (``{tower}_width``) implies where
    ``given`` states none, each head 64 wide: the rule OpenAI's CLIP loader applies to a bare state dict; or as wide
    as ``head_widths`` (``{tower}_width`` -> {width: head width}) says for that width.

    Raises:
        UntoldArgument: (a ValueError) naming ``where`` (the weights) and the argument, for a width that is no multiple of 64: no
            count is told, and a default one would load, silently wrong, wherever the width is its multiple.
    """
    out = {name: size_value(told) for name, told in sizes.items()}
    for tower in towers:
        head, width = f"{tower}_heads", f"{tower}_width"
        if head in given or (value := size_value(sizes.get(width))) is None:
            continue
        if value % (wide := head_widths.get(width, {}).get(value, 64)):
            raise UntoldArgument(
                head, f"{where}: expected {head} (its {width} {value} tells no {wide}-wide heads), got none"
            )
        out[head] = value // wide
    return out


def layout_of(state_dict: Mapping[str, Tensor], probes: Mapping[str, str], what: str) -> str:
    """The first layout of ``probes`` (its name -> a key prefix that only it uses) that a key of ``state_dict`` has.

    Raises:
        ValueError: ``what`` (e.g. ``"state_dict: expected CLIP keys"``), the layouts and the first keys, if none.
    """
    if layout := next((n for n, probe in probes.items() if any(k.startswith(probe) for k in state_dict)), None):
        return layout
    raise ValueError(f"{what} ({', '.join(probes)}), got {sorted(state_dict)[:5]}")


def first_file(directory: Path, names: Iterable[str], where: str) -> Path:
    """The first of the files ``names`` that ``directory`` holds; FileNotFoundError naming them and ``where``
    (e.g. ``beside <its config>``) if it holds none."""
    names = list(names)
    if found := [directory / name for name in names if (directory / name).is_file()]:
        return found[0]
    raise FileNotFoundError(f"{directory}: expected {' or '.join(names)} {where}, got neither")


def disagreeing(built: Mapping[str, object], implied: Mapping[str, object]) -> dict[str, tuple[object, object]]:
    """The (built, implied) pair of each argument that ``implied`` (a checkpoint's sizes) gives otherwise than
    ``built`` (the model's own sizes, told alike): what a strict load's error names. Sizes are values or
    :func:`sourced` triples (their values compared and given)."""
    built, implied = ({name: size_value(told) for name, told in sizes.items()} for sizes in (built, implied))
    return {name: (built[name], value) for name, value in implied.items() if name in built and built[name] != value}


def export_files(directory: Path, config_name: str) -> Optional[tuple[Path, Path]]:
    """The architecture file ``config_name`` (e.g. ``clip_config.json``) of a torchflava export ``directory``, or of
    a run directory's ``model/`` export, and its one ``.safetensors`` weights file; None where neither holds it.

    Raises:
        FileNotFoundError: if the export holds no ``.safetensors`` file.
        ValueError: if it holds several (which is the model's cannot be told: a stale copy beside it?).
    """
    if not (directory / config_name).is_file() and (directory / "model" / config_name).is_file():
        directory = directory / "model"  # a recipe's run directory: its export
    if not (directory / config_name).is_file():
        return None
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{directory}: expected the .safetensors weights beside {config_name}, got none")
    if len(weights) > 1:
        raise ValueError(f"{directory}: expected one .safetensors weights file, got {[w.name for w in weights]}")
    return directory / config_name, weights[0]
