"""Typed settings from one YAML file, validated once: the loader the gateway and the edge share.

``build_section`` walks a frozen dataclass: an unknown key, a missing required key or a value of
the wrong type is a ``ConfigError`` naming the key by its path (``hubs[1].price_per_1k``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(Exception):
    """The config is invalid; the message names the key and what was expected."""


def read_yaml(path: Path) -> Any:
    """A config file's YAML document ({} for an empty file); unreadable or invalid is a ConfigError."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    return {} if raw is None else raw


def build_section(cls: type, raw: Any, path: str) -> Any:
    """Build dataclass ``cls`` from a YAML mapping, naming any bad key by its ``path``."""
    where = path or "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    # A field may be spelled differently in YAML (``from`` is a Python keyword).
    fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"{_join(path, str(unknown[0]))}: unknown key; expected one of {', '.join(fields)}")
    values = {}
    for yaml_key, f in fields.items():
        key = _join(path, yaml_key)
        if yaml_key in raw:
            values[f.name] = _coerce(hints[f.name], raw[yaml_key], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required")
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(options[0], value, key)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build_section(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # a bug in the dataclasses above


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
