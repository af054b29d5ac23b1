"""Build typed config dataclasses from plain dicts (composed YAML), naming every bad key.

    cfg = from_dict(RunConfig, {"trainer": {"lr": 3e-6}, ...})

- an unknown key raises ``ConfigError("unknown key trainer.lrr; known: ...")``;
- a value of the wrong type, or outside a ``Literal``/``Enum``, raises naming the key and value;
- nested dataclasses, ``Optional``, ``list``/``tuple``/``dict`` and ``str`` Enums are supported;
- each dataclass's own ``__post_init__`` validation runs, and its error is re-raised with the
  key path in front;
- a ``dict`` field whose metadata has ``SECTIONS`` (a callable returning ``{key: dataclass}``)
  holds sections that the YAML writes at the parent's level: ``{"gift": {...}}`` fills
  ``field["gift"]`` with that key's dataclass (its defaults where the key is absent), and
  :func:`to_dict` writes them back at that level. A registry can so add sections (the run
  config's loss options) without a new field.
"""

from __future__ import annotations

import dataclasses
import enum
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")

SECTIONS = "sections"
"""Metadata key of a field holding registry sections by name (see the module docstring)."""


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the full key path."""


def _describe(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp, value: Any, path: str):
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{path}: null is not allowed (expected {_describe(tp)})")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {_describe(tp)}")
    if value is None:
        raise ConfigError(f"{path}: null is not allowed (expected {_describe(tp)})")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: {value!r} is not one of {list(allowed)}")
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{path}: {value!r} is not one of {[m.value for m in tp]}") from None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {_convert(key_tp, k, path): _convert(val_tp, v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, path: str = "") -> T:
    """Instantiate dataclass ``cls`` from ``data``; see the module docstring."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    grouped = {f.name: f.metadata[SECTIONS]() for f in fields.values() if SECTIONS in f.metadata}
    sections = {key: (name, tp) for name, types_ in grouped.items() for key, tp in types_.items()}
    prefix = f"{path}." if path else ""
    known = (set(fields) - set(grouped)) | set(sections)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; known keys of {path or 'the config'}: {sorted(known)}")
    kwargs = {name: {key: _convert(tp, data.get(key, {}), f"{prefix}{key}") for key, tp in types_.items()}
              for name, types_ in grouped.items()}
    kwargs.update({name: _convert(hints[name], value, f"{prefix}{name}") for name, value in data.items()
                   if name not in sections})
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path or cls.__name__}: {err}") from err


def to_dict(obj) -> Any:
    """The inverse of :func:`from_dict`: plain dicts, lists and scalars (Enums as values)."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if f.init:
                value = to_dict(getattr(obj, f.name))
                if SECTIONS in f.metadata:
                    out.update(value)  # the sections at this level, as the YAML writes them
                else:
                    out[f.name] = value
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


__all__ = ["SECTIONS", "ConfigError", "from_dict", "to_dict"]
