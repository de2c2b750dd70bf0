"""Typed recipe configs: a dataclass schema, a YAML file and ``key=value`` overrides, strictly merged.

``python train.py config=path/to/file.yaml training.max_steps=10`` loads the schema's defaults,
merges the YAML file, then the dotlist overrides. An unknown key or a value of the wrong type is
an error that names the key. An override that gives a mapping whole (``optim.lr_multipliers={}``)
replaces the one the file sets; a section of the schema is updated key by key.
"""

import copy
import dataclasses
import enum
import functools
import inspect
import io
import itertools
import os
from pathlib import Path
import re
import types
from typing import (
    Callable,
    ClassVar,
    Iterator,
    Optional,
    Sequence,
    Type,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import yaml

from torchflava.utils.checkpoint import atomic_write, first_line, url_scheme
from torchflava.utils.config_text import escape_interpolations

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override does not fit the schema."""


def load_config(schema: Type[T], argv: Sequence[str]) -> T:
    """Build a ``schema`` instance from ``config=FILE`` (optional) and ``key=value`` overrides.

    Args:
        schema (Type[T]): a dataclass whose fields (nested dataclasses allowed) are the config.
        argv (Sequence[str]): ``config=FILE`` and dotlist overrides such as ``training.max_steps=5``.

    Returns:
        T: the validated config.

    Raises:
        ConfigError: if an argument is not ``key=value``, the file is missing or not a mapping,
            or a key is unknown or has a value of the wrong type (the message names the key).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides, files = [], []
    for arg in argv:
        if arg.startswith("-"):  # (argparse's habit: '--config=x.yaml' became an unknown key '--config')
            raise ConfigError(
                f"arguments must be key=value without dashes (e.g. config=tiny.yaml training.max_steps=5), got {arg!r}"
            )
        if "=" not in arg:
            raise ConfigError(f"arguments must be key=value (e.g. config=tiny.yaml training.max_steps=5), got {arg!r}")
        key, value = arg.split("=", 1)
        (files if key == "config" else overrides).append(value if key == "config" else arg)
    merged = OmegaConf.structured(schema)
    for file in files:
        if not file.strip():  # (Path('') is the current directory: it was named 'a directory')
            raise ConfigError(f"config: expected the path of a YAML file, got {file!r} (nothing after config=)")
        if not Path(file).is_file():
            if Path(file).exists():  # (a directory was 'no such file')
                kind = "a directory" if Path(file).is_dir() else "not a regular file"
                raise ConfigError(f"config: expected a YAML file, got {file!r} ({kind})")
            raise ConfigError(f"config: no such file {file!r}")
        try:
            text = Path(file).read_text(encoding="utf-8")  # read once: both parsers see the same text
            loaded = OmegaConf.load(io.StringIO(text))  # as from the file (its checks and messages)
            top = yaml.safe_load(text)  # OmegaConf makes a bare string a key: this tells
        except Exception as error:  # YAML syntax errors come in several types
            raise ConfigError(f"config: {file!r} is not valid YAML ({_yaml_error(error)})") from None
        if not isinstance(top, dict) or not top:
            got = "nothing (empty, or only comments)" if top in (None, {}) else f"a {type(top).__name__} {top!r:.60}"
            raise ConfigError(f"config: {file!r} must hold a mapping of sections at the top level, got {got}")
        _refuse_booleans_as_text(schema, top, f"config file {file!r}")
        _refuse_numbers_as_booleans(schema, top, f"config file {file!r}")
        _keep_text_as_written(schema, loaded, yaml.compose(text))
        merged = _merge(merged, loaded, f"config file {file!r}")
    for override in overrides:  # one at a time, so an error names the override at fault
        try:
            parsed = OmegaConf.from_dotlist([override])
        except Exception as error:  # YAML syntax errors come in several types
            raise ConfigError(f"override {override!r}: the value is not valid YAML ({_yaml_error(error)})") from None
        _refuse_booleans_as_text(schema, OmegaConf.to_container(parsed), f"override {override!r}")
        _refuse_numbers_as_booleans(schema, OmegaConf.to_container(parsed), f"override {override!r}")
        _keep_override_text_as_written(schema, parsed, override)
        _clear_replaced_mapping(merged, parsed, override.split("=", 1)[0])
        merged = _merge(merged, parsed, f"override {override!r}")
    _resolvable_union_lists(merged)
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe(error, "the merged config")) from None


def _resolvable_union_lists(node) -> None:
    """Let the interpolations in a list held by a union field (``data.files.pairs_captions: [${oc.env:DATA}/a.parquet]``)
    resolve: OmegaConf gives such a list its union's ``convert`` flag, False, and under it an item's resolved value
    failed its check against ``Any`` on Python 3.11+ ('the merged config: ValidationError: the value does not fit
    the schema there', the key unnamed), where the same interpolation in a list[str] field or a string resolved."""
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import UnionNode

    if isinstance(node, DictConfig):
        children = [] if node._is_none() or node._is_missing() else [node._get_node(key) for key in node.keys()]
    elif isinstance(node, ListConfig):
        children = [] if node._is_none() or node._is_missing() else [node._get_node(i) for i in range(len(node))]
    elif isinstance(node, UnionNode) and isinstance(node._value(), (DictConfig, ListConfig)):
        node._value()._set_flag("convert", True)
        children = [node._value()]
    else:
        children = []
    for child in children:
        _resolvable_union_lists(child)


def _clear_replaced_mapping(merged, parsed, key: str) -> None:
    """Empty the mapping at ``key`` of ``merged`` where the override ``parsed`` gives one whole there
    (``optim.lr_multipliers={}``), so that it replaces what the files set instead of being merged into it: a
    merge kept every entry a config file names, and ``={}`` did nothing, silently. A schema section (its keys
    fixed) is still updated key by key (``data.ratios={pairs: 1}``), as is a mapping given key by key
    (``optim.lr_multipliers.text_encoder=0.1``)."""
    from omegaconf import DictConfig, OmegaConf

    try:
        given, target = OmegaConf.select(parsed, key), OmegaConf.select(merged, key)
    except Exception:  # (a key OmegaConf cannot walk: the merge names it)
        return
    if isinstance(given, DictConfig) and isinstance(target, DictConfig) and OmegaConf.get_type(target) is dict:
        OmegaConf.update(merged, key, {}, merge=False)


def _keep_text_as_written(schema: type, loaded, node, prefix: str = "") -> None:
    """Set back, in ``loaded`` (a file's or an override's values as OmegaConf read them), the text as written
    (``node``: its YAML composed, raw scalars) of each value YAML read as a number where ``schema`` takes
    text: ``training.output_dir=0042`` became the directory '34' (an octal number), ``1.50`` '1.5', ``007``
    '7', silently. A list of text (``eval.templates``) is kept item by item. A number written with a leading 0
    (``training.seed=010``), which YAML reads as octal (8), is refused naming the key."""
    from omegaconf import DictConfig, OmegaConf

    if not (dataclasses.is_dataclass(schema) and isinstance(loaded, DictConfig) and isinstance(node, yaml.MappingNode)):
        return
    hints, values = get_type_hints(schema), OmegaConf.to_container(loaded)
    for name_node, value_node in node.value:
        name = name_node.value
        kind, key = hints.get(name), f"{prefix}{name}"
        if kind is None or name not in loaded:  # (an unknown key: the merge names it)
            continue
        section = next((t for t in _flat_types(kind) if dataclasses.is_dataclass(t)), None)
        if section is not None:
            _keep_text_as_written(section, loaded[name], value_node, f"{key}.")
        elif _flat_types(kind) & {int, float}:  # (also a list's items, a mapping's values: optim.betas=[010, 0.98])
            for where, scalar in _octal_scalars(value_node, key):
                written, decimal = scalar.value.strip(), _octal(scalar)
                read = int(written.replace("_", ""), 8)
                raise ConfigError(  # (a seed or step count of 010 was 8, silently)
                    f"key '{where}': expected a decimal number, got {written} (YAML reads a leading 0 as octal: "
                    f"{read}); write {decimal} for the decimal, or {read}"
                )
        elif str in _flat_types(kind) and not _flat_types(kind) & {int, float, bool}:
            value = values[name]
            if isinstance(value, list) and isinstance(value_node, yaml.SequenceNode):
                written = [_as_written(v, n) for v, n in zip(value, value_node.value)]
                if written != value:
                    loaded[name] = written
            elif not isinstance(value, (list, dict)) and _as_written(value, value_node) is not value:
                loaded[name] = _as_written(value, value_node)


def _octal_scalars(node, key: str) -> Iterator[tuple[str, object]]:
    """``(key, node)`` of each plain scalar in ``node`` (itself, a list's items, a mapping's values) that YAML
    reads as an octal number other than its decimal reading (``010``; not ``00``)."""
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _octal_scalars(item, f"{key}[{index}]")
    elif isinstance(node, yaml.MappingNode):
        for name, value in node.value:
            yield from _octal_scalars(value, f"{key}.{name.value}")
    elif (decimal := _octal(node)) is not None and decimal != int(node.value.strip().replace("_", ""), 8):
        yield key, node


def _octal(node) -> Optional[int]:
    """The decimal reading of ``node`` where it is a plain scalar YAML 1.1 reads as an octal integer (``010``:
    10, which YAML reads as 8); else None."""
    written = node.value.strip() if isinstance(node, yaml.ScalarNode) and node.style is None else ""
    return int(written.replace("_", ""), 10) if re.fullmatch(r"[-+]?0[0-7_]+", written) else None


def _as_written(value: object, node) -> object:
    """``value``'s text as written (``node``'s raw scalar) where YAML read a number; else ``value``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return node.value.strip() if number and isinstance(node, yaml.ScalarNode) else value


def _keep_override_text_as_written(schema: type, parsed, override: str) -> None:
    """:func:`_keep_text_as_written` for one ``key=value`` override (``parsed``: OmegaConf's reading of it)."""
    key, value = override.split("=", 1)
    try:
        node = yaml.compose(value)
    except yaml.YAMLError:  # (OmegaConf read it: nothing to keep)
        return
    for name in reversed(key.split(".")):  # the value's node nested under the key's parts, as parsed is
        node = yaml.MappingNode("tag:yaml.org,2002:map", [(yaml.ScalarNode("tag:yaml.org,2002:str", name), node)])
    _keep_text_as_written(schema, parsed, node)


def _typed_leaves(schema: type, raw: object, prefix: str = ""):
    """``(key, kinds, value)`` for each value of ``raw`` (a file's or an override's values, as YAML parsed them)
    that ``schema`` (a config dataclass) types, through its nested sections; ``kinds`` as :func:`_flat_types`."""
    if not (dataclasses.is_dataclass(schema) and isinstance(raw, dict)):
        return
    hints, fields = get_type_hints(schema), {field.name for field in dataclasses.fields(schema)}
    for name, value in raw.items():
        kind, key = hints.get(name) if name in fields else None, f"{prefix}{name}"  # (not a ClassVar: DataPaths.PATHS)
        if kind is None:
            continue
        section = next((t for t in _flat_types(kind) if dataclasses.is_dataclass(t)), None)
        if section is not None:
            yield from _typed_leaves(section, value, f"{key}.")
        else:
            yield key, _flat_types(kind), value


def _refuse_booleans_as_text(schema: type, raw: object, where: str) -> None:
    """ConfigError naming the key if ``raw`` (a file's or an override's values, as YAML parsed them) gives a
    boolean where ``schema`` takes text: YAML reads ``yes``, ``no``, ``on``, ``off`` unquoted as true and
    false, which OmegaConf then turns into the text 'True' and 'False' (VQA's answers yes and no became
    labels no answer matched: every target zero, silently)."""
    for key, kinds, value in _typed_leaves(schema, raw):
        if str in kinds and bool not in kinds:
            found = [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, bool)]
            if found:
                raise ConfigError(
                    f"{where}: key '{key}': expected text (quote yes, no, on, off, true and false in YAML: \"yes\"), "
                    f"got the boolean {found[0]}"
                )


def _refuse_numbers_as_booleans(schema: type, raw: object, where: str) -> None:
    """ConfigError naming the key if ``raw`` (as YAML parsed it) gives a number other than 0 or 1 (or its text)
    where ``schema`` takes a boolean: OmegaConf reads any nonzero number as true (``training.compile=2`` compiled,
    silently). The YAML spellings (true, false, yes, no, on, off) and 0 and 1 read as before."""
    for key, kinds, value in _typed_leaves(schema, raw):
        if bool in kinds and not kinds & {int, float, str}:
            number = value if isinstance(value, int) and not isinstance(value, bool) else None
            if isinstance(value, str):
                try:
                    number = int(value.strip())
                except ValueError:  # (a spelling OmegaConf reads, or refuses naming the key)
                    pass
            if number is not None and number not in (0, 1):
                raise ConfigError(f"{where}: key '{key}': expected a boolean (true or false), got {value!r}")


def _flat_types(kind: object) -> set:
    """The types a type hint names, through Optional, Union and list[...] (list[str] -> {list, str})."""
    args = get_args(kind)
    return {kind} if not args else {get_origin(kind)} | set().union(*(_flat_types(a) for a in args))


def _yaml_error(error: Exception) -> str:
    """A YAML error in one line: its problem and where (a parser's message spans several lines)."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return first_line(error)


def _describe(error: Exception, where: str) -> str:
    key = getattr(error, "full_key", None)
    message = getattr(error, "msg", None) or f"{type(error).__name__}: the value does not fit the schema there"
    message = str(message).split("\n    full_key")[0]
    return f"key {key!r}: {message}" if key else f"{where}: {message}"


def _merge(base, update, where: str):
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.merge(base, update)
    except (OmegaConfBaseException, TypeError, ValueError) as error:
        try:  # OmegaConf's words for these name neither kind
            mismatch = _kind_mismatch(base, update)
        except Exception:  # (a node it cannot walk: OmegaConf's own message, as before)
            mismatch = None
        if mismatch is not None:
            key, expected, got = mismatch
            named = f"key '{key}': expected {expected}, got {got!r}"
            if isinstance(error, OmegaConfBaseException):
                raise ConfigError(f"{where}: {named}") from None
            raise ConfigError(f"{where}: {error} ({named})") from None
        if isinstance(error, OmegaConfBaseException):
            raise ConfigError(_describe(error, where)) from None
        raise ConfigError(f"{where}: {error} (a list, mapping or value where the schema has another kind)") from None


def _kind_mismatch(base, update, prefix: str = "") -> Optional[tuple[str, str, object]]:
    """The first key of ``update`` whose value is of another kind than the schema's section, mapping
    or list there (null included, where that is not optional): ``(key, expected, given)``; None when
    every kind fits (unknown keys and a list or mapping for a single value OmegaConf names well)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    for name in update.keys() if isinstance(update, DictConfig) else ():
        node = base._get_node(name) if isinstance(base, DictConfig) else None
        if node is None:
            continue
        value = update._get_node(name)
        key = f"{prefix}{name}"
        given = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value._value()
        if isinstance(node, DictConfig):
            if isinstance(value, DictConfig):
                inner = None if node._is_none() or value._is_none() else _kind_mismatch(node, value, f"{key}.")
                if inner is not None:
                    return inner
            elif given is not None or not node._is_optional():
                kind = "a section" if node._is_none() or OmegaConf.get_type(node) is not dict else "a mapping"
                return key, f"{kind} (key: value, ...)", given
        elif isinstance(node, ListConfig):
            if not isinstance(value, ListConfig) and (given is not None or not node._is_optional()):
                return key, "a list ([a, b, ...])", given
    return None


def config_yaml(config: object) -> str:
    """``config`` (a schema instance) as the YAML text :func:`save_config` writes and
    :func:`check_resume_config` reads (its text as it is: :func:`_literal_text`)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(_literal_text(config)))


def _literal_text(value: object) -> object:
    """A copy of ``value`` (a config, or any value in it) whose text OmegaConf keeps as it is
    (:func:`escape_interpolations`): a config holds its values resolved, and a VQA answer "${x}" (vqa.yaml's, read
    verbatim) was recorded in config.yaml as an interpolation, so that a resume refused the run's config as
    unreadable (Interpolation key 'x' not found), and "${" failed the run's start (a grammar error)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        copied = copy.copy(value)  # (not replace(): its __post_init__ would run again)
        for item in dataclasses.fields(value):
            object.__setattr__(copied, item.name, _literal_text(getattr(value, item.name)))
        return copied
    if isinstance(value, str) and not isinstance(value, enum.Enum):  # (an ExpandedPath as the plain path it is: in
        # a list of a union field, data.files.pairs_captions: [~/a.parquet], OmegaConf refused the str subclass)
        text = str(value)
        return escape_interpolations(text) if "${" in text else text
    if type(value) in (list, tuple):
        return type(value)(_literal_text(item) for item in value)
    if type(value) is dict:
        return {key: _literal_text(item) for key, item in value.items()}
    return value


def save_config(config: object, path: Union[str, os.PathLike]) -> None:
    """Write ``config`` (a schema instance) as YAML, atomically."""
    text = config_yaml(config)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def builder_config(builder: Callable, *, name: str, exclude: Sequence[str] = ()) -> type:
    """A config dataclass whose fields are ``builder``'s keyword arguments: same names, types and defaults.

    A recipe section built this way holds exactly what the builder takes (no key renames it), and
    ``builder(**dataclasses.asdict(section))`` builds what the section describes. Arguments a config
    cannot hold (modules, callables) or that the recipe supplies itself go in ``exclude``; names the
    builder does not have are ignored there, so a recipe keeps working when a builder drops an argument.

    Supported argument types: ``bool``, ``int``, ``float``, ``str``, enums, ``os.PathLike`` (held as
    ``str``), unions of ``str`` and ``os.PathLike``, and ``Optional`` of any of them.

    Args:
        builder (Callable): the builder function.
        name (str): the dataclass's name (shown in config errors).
        exclude (Sequence[str]): arguments left out of the section.

    Returns:
        type: the dataclass (every field has the builder's default).

    Raises:
        TypeError: if a kept argument has no default, is positional-only or variadic, or has a type a
            config cannot hold (the message names the argument).
    """
    hints = get_type_hints(builder)
    fields = []
    for parameter in inspect.signature(builder).parameters.values():
        if parameter.name in exclude:
            continue
        where = f"{builder.__name__}({parameter.name})"
        if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            raise TypeError(f"{where}: a config holds keyword arguments only, got a {parameter.kind.description} one")
        if parameter.default is parameter.empty:
            raise TypeError(f"{where}: has no default; supply it in the recipe and exclude it from the config")
        kind = _config_type(hints.get(parameter.name, type(parameter.default)), where)
        default = parameter.default
        if isinstance(default, os.PathLike):
            default = os.fspath(default)
        fields.append((parameter.name, kind, dataclasses.field(default=default)))
    section = dataclasses.make_dataclass(name, fields)
    section.__doc__ = f"The keyword arguments of ``{builder.__module__}.{builder.__qualname__}`` (see its docstring)."
    return section


_SCALARS = (bool, int, float, str)


def _is_path(annotation: object) -> bool:
    return annotation is str or annotation is os.PathLike or get_origin(annotation) is os.PathLike


def _config_type(annotation: object, where: str) -> object:
    """The OmegaConf-compatible type of a builder argument annotated ``annotation``."""
    if annotation in _SCALARS or (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
        return annotation
    if _is_path(annotation):
        return str
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            inner = _config_type(members[0], where)
        elif all(_is_path(m) for m in members):
            inner = str
        else:
            raise TypeError(f"{where}: a config cannot hold the union {annotation}; exclude the argument")
        return Optional[inner] if len(members) < len(get_args(annotation)) else inner
    raise TypeError(f"{where}: a config cannot hold {annotation}; exclude the argument")


# Keys a resumed run may change. ``optim.*`` and ``training.max_steps`` change the run's results
# from the resume on and are applied (and reported); the others change only how it runs.
RESUME_APPLIED = ("optim.", "training.max_steps")
# ...but not these: they shape the optimiser's parameter groups, which the checkpoint holds.
RESUME_FIXED = ("optim.lr_multipliers.",)
RESUME_FREE = (
    "training.resume",
    "training.output_dir",  # the run's own directory, read from it: spelt or placed otherwise, the same run
    "training.progress_bar",
    "training.tensorboard",
    "training.log_every",
    "training.checkpoint_every",
    "training.keep_checkpoints",
    "training.threads",
    "training.collective_timeout_s",  # how long a rank waits for the others: nothing trained depends on it
    "training.compile",
    "training.activation_checkpointing",  # recomputes the same ops: the same losses (to 1e-6, tested)
    "training.keep_freed_memory",  # where freed memory goes, not what is computed
    "training.strategy",
    "training.device",
    "data.num_workers",
    "data.shapes.num_test",  # the held-out split the recipes evaluate on, after training
    # fine-tuning's validation sets: read only after training, to evaluate the final model (the training
    # stream, its data position and RNG, never sees them); data.val's name in the report; the held-out shapes
    "data.val",
    "data.val_name",
    "data.extra_val",
    "data.extra_val.",
    "data.shapes_val",
    "eval.",
)
# Not here, so refused on resume like every data key: ``data.files.pairs_split``, ``pairs_image_key`` and
# ``pairs_text_key`` choose which pairs of the captions file are trained on (other splits, another column),
# and the step-indexed data draws by item index; a run saved before they existed reads them as null, its
# behaviour then, so it resumes with them unset.


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def check_resume_config(saved: Union[str, os.PathLike], config: object) -> list[str]:
    """Compare a resumed run's config with the one its checkpoint was trained with (a ``config.yaml``).

    Call it before the new config is written. Changes to the model, the data or anything else
    that would silently change what is being trained are refused; optimiser settings and
    ``training.max_steps`` may change (the training loop applies the new values after loading the
    checkpoint); logging, checkpoint cadence, threads, compile, strategy and evaluation keys are free, and
    so are the keys a config's ``resume_ignored()`` method names, where it has one.

    Args:
        saved (Union[str, os.PathLike]): the ``config.yaml`` the checkpoint records (or its run's).
        config (object): the new config (a schema instance).

    Returns:
        list[str]: one line per applied change, ``key: old -> new``.

    Raises:
        ConfigError: listing every refused key with its old and new value; or if ``saved`` is missing
            (nothing to compare with: the resumed config cannot be verified).
    """
    from omegaconf import OmegaConf

    path = Path(saved)
    if not path.is_file():
        raise ConfigError(
            f"key 'training.resume': expected a checkpoint whose config can be compared with this run's, but "
            f"{path} is missing, so what it was trained with cannot be verified; start a new run in another "
            "training.output_dir"
        )
    try:
        before = _flat(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    except Exception as error:  # an unreadable or hand-broken config.yaml
        raise ConfigError(f"{path}: the run's saved config is not readable YAML ({error})") from None
    after = _flat(OmegaConf.to_container(OmegaConf.structured(_literal_text(config)), resolve=True, enum_to_str=True))
    changed = {
        k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)
    }
    # a recipe's config may name keys whose change trains nothing differently (e.g. the ratio of a data kind
    # without a source): free for it
    free = RESUME_FREE + tuple(getattr(config, "resume_ignored", set)())
    refused = {k: v for k, v in changed.items() if _matches(k, RESUME_FIXED) or not _matches(k, RESUME_APPLIED + free)}
    if refused:
        listed = ", ".join(f"'{k}' ({old!r} -> {new!r})" for k, (old, new) in refused.items())
        raise ConfigError(
            f"key{'s' if len(refused) > 1 else ''} {listed}: expected the values the checkpoint was trained with ({path}), "
            "since a resumed "
            "run cannot change what it trains; start a new run in another training.output_dir"
        )
    return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items() if _matches(k, RESUME_APPLIED)]


# ------------------------------------------------------------------------------------------- data paths
class ExpandedPath(str):
    """A data path whose leading ``~`` was expanded (:class:`DataPaths`): the expanded path, which is what
    is opened, keeping what was typed as ``typed``. Its ``repr``, which the one-line config errors show
    (``got {value!r}``), gives both: ``'~/glue/train.tsv' (= '/home/me/glue/train.tsv')``."""

    typed: str

    def __new__(cls, expanded: str, typed: str) -> "ExpandedPath":
        path = super().__new__(cls, expanded)
        path.typed = typed
        return path

    def __repr__(self) -> str:
        return f"{str.__repr__(self.typed)} (= {str.__repr__(str(self))})"

    def __reduce__(self) -> tuple:  # (a data loader's worker gets the sources, and their paths, pickled)
        return ExpandedPath, (str(self), self.typed)


def expand_user_path(value: object) -> object:
    """``value`` with a leading ``~`` or ``~user`` expanded as a shell does (an :class:`ExpandedPath`), where it is
    text; anything else (None, a path without one, ``~nobody`` of no user) as it is. Environment variables are
    left as written: only ``~``, which a YAML file or a quoted override keeps."""
    if not isinstance(value, str) or isinstance(value, ExpandedPath) or not value.startswith("~"):
        return value
    expanded = os.path.expanduser(value)
    return value if expanded == value else ExpandedPath(expanded, value)


class DataPaths:
    """The base of a config section (a dataclass) whose fields ``PATHS`` name data: files, folders or shards (a
    mapping field, e.g. ``data.extra_val``, by its values; a list, e.g. ``data.files.pairs_captions``, by its
    items). Declared there alone, with no call of the section's own, a leading ``~`` in them is expanded as the
    section is made (:func:`expand_user_path`: every use of the config sees the expanded path), and
    :func:`~torchflava.training.loop.start_run` makes them absolute (:func:`absolute_config_paths`). A subclass's
    own ``__post_init__`` runs after the expansion, whether or not it calls this one's."""

    PATHS: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is None or getattr(own, "_expands_paths", False):
            return

        @functools.wraps(own)  # (a section's own __post_init__ without super() left '~/data' as typed)
        def __post_init__(self, *args: object) -> None:
            DataPaths.__post_init__(self)  # (expanding twice changes nothing: an ExpandedPath is kept)
            own(self, *args)

        __post_init__._expands_paths = True
        cls.__post_init__ = __post_init__

    def __post_init__(self) -> None:
        for name in self.PATHS:
            value = getattr(self, name)
            if isinstance(value, dict):
                value = {k: expand_user_path(v) for k, v in value.items()}
            elif isinstance(value, list):  # (a list of files: data.files.pairs_captions' parquet shards)
                value = [expand_user_path(v) for v in value]
            setattr(self, name, expand_user_path(value))


def absolute_config_paths(config: object, run: Optional[Path] = None, key: str = "") -> None:
    """:func:`absolute_data_paths` for every :class:`DataPaths` section of the dataclass ``config`` (nested sections
    too, e.g. ``data.files``, and those in a list or mapping field, e.g. ``data.sets.0``), each under its dotted key
    (``key``: ``config``'s own, with a trailing dot)."""
    for field in dataclasses.fields(config):
        _absolute_section_paths(getattr(config, field.name), run, f"{key}{field.name}")


def _absolute_section_paths(value: object, run: Optional[Path], key: str) -> None:
    if isinstance(value, (list, tuple, dict)):  # (a section in a list was missed: its relative paths recorded so)
        for name, item in value.items() if isinstance(value, dict) else enumerate(value):
            _absolute_section_paths(item, run, f"{key}.{name}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        if isinstance(value, DataPaths):
            absolute_data_paths(value, value.PATHS, run, key=key)
        absolute_config_paths(value, run, f"{key}.")


def absolute_data_paths(section: object, names: Sequence[str], run: Optional[Path] = None, key: str = "data") -> None:
    """Make the relative paths in the fields ``names`` of the data section ``section`` (a recipe's dataclass; a
    mapping field, e.g. ``data.extra_val``, has its values made so, a list its items) absolute, against the working
    directory. Call it before the run's config is compared with a resumed one's and recorded: a run resumed from
    another working directory with the same relative paths read the files there (silently where they were of the
    same sizes); now those paths differ from the recorded ones, refused naming the key, and
    ``config=<run>/config.yaml`` reads the files the run read from any directory. URLs (``s3://...``, ``pipe:...``) are left as they are.

    Args:
        section (object): the data section.
        names (Sequence[str]): its fields that hold paths.
        run (Optional[Path]): the directory of the run a resume continues (its config.yaml; None: a new run). A
            path it recorded relative (a run from before paths were recorded absolute) is left as typed, so that it
            compares equal and is read as it was then, against the working directory.
        key (str): the section's dotted key in config.yaml (``data``, ``data.files``).
    """
    recorded: object = {}
    if run is not None:
        try:
            recorded = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):  # (the resume comparison names the file)
            recorded = {}
        for part in key.split("."):  # (a list's items by their index)
            if isinstance(recorded, list):
                recorded = recorded[int(part)] if part.isdigit() and int(part) < len(recorded) else None
            else:
                recorded = recorded.get(part) if isinstance(recorded, dict) else None

    def absolute(value: object, was: object) -> object:
        if not isinstance(value, str) or not _relative_local(value):
            return value
        kept = isinstance(was, str) and not os.path.isabs(was)  # recorded relative: compared (and read) as then
        # joined, not normalised: abspath drops 'link/..' by its text, where the OS follows the link first
        return value if kept else os.path.join(os.getcwd(), value)

    for name in names:
        value, was = getattr(section, name), recorded.get(name) if isinstance(recorded, dict) else None
        if isinstance(value, dict):
            was = was if isinstance(was, dict) else {}
            setattr(section, name, {k: absolute(v, was.get(k)) for k, v in value.items()})
        elif isinstance(value, list):  # (each file of a list, against the one recorded in its place)
            was = was if isinstance(was, list) else []
            setattr(section, name, [absolute(v, was[i] if i < len(was) else None) for i, v in enumerate(value)])
        else:
            setattr(section, name, absolute(value, was))


def _relative_local(value: str) -> bool:
    """Whether ``value`` is a local path relative to the working directory: not absolute, no URL (``s3://``,
    ``pipe:``, ``file:``), and, for a brace pattern opening with its group (``{train,extra}/{000..009}.tar``), none
    of that group's alternatives absolute or a URL (``{/data/a.tar,pipe:cat b.tar}``: its own paths, kept as typed)."""
    if value == "" or os.path.isabs(value) or "://" in value or url_scheme(value):
        return False
    if not value.startswith("{"):
        return True
    import braceexpand  # (the streamed shards' patterns: installed with webdataset)

    depths = itertools.accumulate({"{": 1, "}": -1}.get(char, 0) for char in value)
    end = next((index for index, depth in enumerate(depths) if depth == 0), len(value) - 1)  # (the group's close)
    return all(
        not os.path.isabs(alternative) and not url_scheme(alternative)
        for alternative in braceexpand.braceexpand(value[: end + 1])
    )
