"""Field checks of the config dataclasses, each raising :class:`ConfigError` naming the key and value.

The project's one validation idiom: every config dataclass checks its own fields in its
``__post_init__`` with these helpers (choices are a ``Literal`` or a ``str`` ``Enum``, whose
values the check reads, never a re-listed tuple), and paths in small per-section methods;
:func:`nemo_gift.config.schema.validate` keeps only the checks across sections:

    check_range("optim.lr", self.lr, low=0, low_open=True)        # finite, > 0
    check_range("optim.adam_beta1", self.adam_beta1, low=0, high=1, high_open=True)
    check_choice("model.arch", self.arch, Architecture)             # a Literal's (or Enum's) values
    check_bool("gift.unbiased_std", self.unbiased_std)
    check_path("data.train_path", self.train_path, kind="any")     # exists
    check_writable_dir("run_dir", self.run_dir)                     # a directory we can create or write

NaN fails every range (a plain ``value <= 0`` test lets it through), and so does inf unless the
range is unbounded on that side and ``finite=False``.
"""

from __future__ import annotations

import enum
import math
import os
import re
from pathlib import Path
from typing import Literal, get_args, get_origin

from nemo_gift.utils.convert import ConfigError

PathKind = Literal["file", "dir", "any"]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    if low is None:
        return f"{'<' if high_open else '<='} {high}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def check_range(
    key: str,
    value: float | int | None,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
) -> None:
    """``value`` is a finite number in the interval (``None`` passes: an unset optional field)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or (
            finite and math.isinf(value)):
        interval = _interval(low, high, low_open, high_open)
        raise ConfigError(f"{key}={value!r} must be a {'finite ' if finite else ''}number {interval}".rstrip())
    below = low is not None and (value < low or (low_open and value == low))
    above = high is not None and (value > high or (high_open and value == high))
    if below or above:
        raise ConfigError(f"{key}={value!r} must be {_interval(low, high, low_open, high_open)}")


def _choices(choices) -> list:
    """The allowed values: a ``Literal``'s or an ``Enum``'s in their order, a registry's sorted."""
    if get_origin(choices) is Literal:
        return list(get_args(choices))
    if isinstance(choices, type) and issubclass(choices, enum.Enum):
        return [member.value for member in choices]
    return sorted(choices)


def check_choice(key: str, value, choices) -> None:
    """``value`` is one of ``choices``: a ``Literal`` type, an ``Enum`` class (a member or its
    value) or a registry's names."""
    allowed = _choices(choices)
    if isinstance(value, enum.Enum) and isinstance(choices, type) and isinstance(value, choices):
        return
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {allowed}")


def check_bool(key: str, value) -> None:
    """``value`` is ``True`` or ``False`` (not a string or a number)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be a bool")


def check_safe_name(key: str, value: str) -> None:
    """A name used in paths and job names: letters, digits, ``._+-``, not starting with a dot."""
    if not _SAFE_NAME.match(value or ""):
        raise ConfigError(
            f"{key}={value!r} must be a plain name (letters, digits, '._+-', not starting with '.' or '-'), "
            "so that it cannot point outside its directory"
        )


def check_path(key: str, value: str | None, kind: PathKind = "any") -> None:
    """``value`` (if set) exists, and is a file or a directory as ``kind`` says."""
    if value is None:
        return
    if not str(value).strip():
        raise ConfigError(f"{key}='' is empty; give a path or null")
    p = Path(value).expanduser()
    if not p.exists():
        raise ConfigError(f"{key}={value}: no such file or directory")
    if kind == "file" and not p.is_file():
        raise ConfigError(f"{key}={value}: is a directory, expected a file")
    if kind == "dir" and not p.is_dir():
        raise ConfigError(f"{key}={value}: is a file, expected a directory")


def check_writable_dir(key: str, value: str | None) -> None:
    """``value`` (if set) is a directory this process can write, or can be created as one.

    Nothing is created: the nearest existing ancestor must be a writable directory.
    """
    if value is None:
        return
    if not str(value).strip():
        raise ConfigError(f"{key}='' is empty: it would write into the current directory; give a directory")
    p = Path(value).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{key}={value}: is a file, expected a directory")
    ancestor = p
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{key}={value}: {ancestor} is a file, so the directory cannot be created")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={value}: {ancestor} is not writable")


__all__ = ["check_bool", "check_choice", "check_path", "check_range", "check_safe_name", "check_writable_dir"]
