"""Dataclass configs <-> plain dicts <-> YAML, strictly (unknown keys are errors).

Configs are nested dataclasses; the CLI is generated from them by tyro, presets in
``configs/*.yaml`` and a run's resolved ``config.yaml`` are read back with
:func:`load_yaml`, so any run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path

import yaml

from nfrecon.errors import InputError
from nfrecon.fsutil import atomic_write_text


def to_dict(obj) -> dict:
    """Nested dataclass -> nested dict of YAML-friendly values (Path -> str, tuple -> list)."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise InputError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise InputError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, where) for a, v in zip(args, value))
        inner = args[0] if args else typing.Any
        seq = [_coerce(inner, v, where) for v in value]
        return tuple(seq) if origin is tuple else seq
    if tp is Path:
        if not isinstance(value, (str, os.PathLike)):
            raise InputError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass ``cls`` from ``data``; missing keys keep their defaults."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def merge(base, data: dict, where: str = "config"):
    """``base`` (a dataclass instance) with the keys in ``data`` replaced, recursively."""
    hints = typing.get_type_hints(type(base))
    names = {f.name for f in dataclasses.fields(base)}
    changes = {}
    for key, value in data.items():
        if key not in names:
            raise InputError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(names))})")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = merge(current, value, f"{where}.{key}")
        else:
            changes[key] = _coerce(hints[key], value, f"{where}.{key}")
    try:
        return dataclasses.replace(base, **changes)
    except InputError as exc:  # a config's own check (__post_init__): say which file set the value
        raise InputError(f"{where}: {exc}") from exc


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping with a clear error for missing or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    return data


def dump_yaml(obj, path: str | os.PathLike) -> None:
    """Write a dataclass config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))
