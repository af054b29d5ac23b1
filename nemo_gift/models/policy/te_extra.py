"""Is the Transformer Engine extra installed? Looked up without importing it.

Kept apart from :mod:`nemo_gift.models.policy.te_spec` (which builds the TE layer spec from the
model config) so that the config's own validation can ask without importing the spec module.
"""

from __future__ import annotations

import functools
import importlib.util

INSTALL_HINT = "pip install nemo_gift[gpu]"
"""The extra that brings Transformer Engine (and TensorRT-LLM)."""


class MissingExtraError(ImportError, ValueError):
    """An optional dependency that the config asks for is not installed. A ``ValueError`` too,
    so config loaders that prefix a key path to validation errors treat it as one."""


@functools.lru_cache(maxsize=None)
def transformer_engine_available() -> bool:
    """True when a ``transformer_engine`` package is importable (found, not imported)."""
    try:
        return importlib.util.find_spec("transformer_engine") is not None
    except (ImportError, ValueError):
        return False


def require_transformer_engine(what: str) -> None:
    """Raise :class:`MissingExtraError` naming ``what`` and the extra, when TE is absent."""
    if not transformer_engine_available():
        raise MissingExtraError(
            f"{what} needs NVIDIA Transformer Engine, which is not installed; "
            f"install the gpu extra: `{INSTALL_HINT}` (on a CUDA machine)"
        )
