"""Typed recipe configs: a dataclass schema, a YAML file and ``key=value`` overrides, strictly merged.

``python train.py config=path/to/file.yaml training.max_steps=10`` loads the schema's defaults,
merges the YAML file, then the dotlist overrides. An unknown key or a value of the wrong type is
an error that names the key.
"""

import os
from pathlib import Path
from typing import Sequence, Type, TypeVar, Union

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
        if "=" not in arg:
            raise ConfigError(f"arguments must be key=value (e.g. config=tiny.yaml training.max_steps=5), got {arg!r}")
        key, value = arg.split("=", 1)
        (files if key == "config" else overrides).append(value if key == "config" else arg)
    merged = OmegaConf.structured(schema)
    for file in files:
        if not Path(file).is_file():
            raise ConfigError(f"config: no such file {file!r}")
        try:
            loaded = OmegaConf.load(file)
        except Exception as error:  # YAML syntax errors come in several types
            raise ConfigError(f"config: {file!r} is not valid YAML ({error})") from None
        if not OmegaConf.is_dict(loaded):
            raise ConfigError(f"config: {file!r} must hold a mapping at the top level")
        merged = _merge(merged, loaded, f"config file {file!r}")
    for override in overrides:  # one at a time, so an error names the override at fault
        merged = _merge(merged, OmegaConf.from_dotlist([override]), f"override {override!r}")
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe(error, "the merged config")) from None


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
    except OmegaConfBaseException as error:
        raise ConfigError(_describe(error, where)) from None


def save_config(config: object, path: Union[str, os.PathLike]) -> None:
    """Write ``config`` (a schema instance) as YAML, atomically."""
    from omegaconf import OmegaConf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
    os.replace(tmp, path)
