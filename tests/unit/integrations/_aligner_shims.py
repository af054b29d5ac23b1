"""TEST-ONLY import shim for NeMo-Aligner's GPU-only import-time dependencies.

NeMo-Aligner 0.7.0 imports ``tensorrt_llm`` unconditionally (``nemo_aligner/utils/trt_llm.py``
line 15, before its own guarded import), and ``nemo.export`` needs ``tensorrt``, ``mpi4py`` and
``pytriton`` at import time. None of them installs on a CPU machine (TensorRT-LLM on PyPI is a
stub that downloads from NVIDIA's index). NVIDIA's NeMo containers ship them.

:func:`install` registers, for each of those top-level names that is *not* really installed, a
placeholder package: any submodule imports, and any attribute is a placeholder class, so
``from x import Y``, subclassing and type hints work. Import-time decorators are the one use
that must succeed (``nemo.export`` decorates methods with ``@pytriton.decorators.first_value(..)``
and ``@batch``): calling a placeholder with one callable returns it unchanged, and calling it
otherwise returns such a pass-through decorator. Anything else done with the result fails
(a pass-through decorator given a non-callable raises ``RuntimeError`` naming the shim). The
tests only exercise paths that never touch these packages: TRT-LLM generation and refit and the
PyTriton reward clients are not run. Never import this outside ``tests/``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

__all__ = ["SHIMMED", "install", "installed"]

SHIMMED = ("tensorrt_llm", "tensorrt", "pytriton", "mpi4py")
_ACTIVE: list[str] = []


def _refuse(name):
    raise RuntimeError(f"{name} is a test import shim (tests/unit/integrations/_aligner_shims.py); it cannot run")


def _passthrough_decorator(name):
    def decorate(*args, **kwargs):
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]
        _refuse(name)

    return decorate


class _PlaceholderMeta(type):
    def __call__(cls, *args, **kwargs):
        name = f"{cls.__module__}.{cls.__name__}"
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]  # used as a decorator
        return _passthrough_decorator(name)  # used as a decorator factory


class _Placeholder(metaclass=_PlaceholderMeta):
    """Stands for a class or function of a shimmed package (see the module docstring)."""


class _ShimModule(types.ModuleType):
    __nemo_gift_shim__ = True

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = type(name, (_Placeholder,), {"__module__": self.__name__})
        setattr(self, name, value)
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots):
        self.roots = tuple(roots)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _ShimModule(spec.name)
        module.__path__ = []  # a package, so any submodule resolves through this finder
        return module

    def exec_module(self, module):
        pass


def install() -> list[str]:
    """Shim every name of :data:`SHIMMED` that is not installed; returns the names shimmed."""
    if _ACTIVE:
        return list(_ACTIVE)
    missing = [name for name in SHIMMED if name not in sys.modules and importlib.util.find_spec(name) is None]
    if missing:
        sys.meta_path.insert(0, _Finder(missing))
        _ACTIVE.extend(missing)
    return list(_ACTIVE)


def installed() -> list[str]:
    """The names currently shimmed in this process."""
    return list(_ACTIVE)
