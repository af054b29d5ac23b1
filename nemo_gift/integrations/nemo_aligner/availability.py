"""Is NeMo-Aligner usable here? Detected once; the reason names what to install.

NeMo-Aligner 0.7.0 (its last release) needs nemo-toolkit 2.4.1 (the last with
``nemo.collections.nlp``). Its actor and trainer modules import ``tensorrt_llm``, ``pytriton``
and ``mpi4py`` at import time (``nemo_aligner/utils/trt_llm.py``, ``nemo.export``); NVIDIA's
NeMo containers carry them, a pip install on a CPU machine cannot (``docs/nemo-aligner.md``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Optional

__all__ = ["INSTALL_HINT", "aligner_unavailable_reason", "require_aligner"]

INSTALL_HINT = (
    "build containers/Dockerfile.aligner (a NeMo 2.4-era image with containers/aligner-stack.txt), "
    "or a CPU test venv with bash scripts/install_aligner_env.sh (make test-aligner)"
)

_CHAIN = (
    ("nemo_aligner", "nemo-aligner==0.7.0"),
    ("nemo.collections.nlp", "nemo-toolkit==2.4.1 (3.x is speech-only and has no nlp collection)"),
    ("nemo_aligner.models.nlp.gpt.megatron_gpt_reinforce_actor", "its import-time deps: tensorrt_llm, pytriton, mpi4py"),
)


@functools.lru_cache(maxsize=None)
def aligner_unavailable_reason() -> Optional[str]:
    """None when the GIFT actor can be imported, else why not (one line)."""
    for module, needs in _CHAIN:
        try:
            if importlib.util.find_spec(module.split(".")[0]) is None:
                return f"{module} is not installed (needs {needs})"
            importlib.import_module(module)
        except Exception as err:  # an import of this stack can fail in many ways; report the first
            return f"import {module} failed: {type(err).__name__}: {err} (needs {needs})"
    return None


def require_aligner() -> None:
    """Raise ImportError, with the reason and :data:`INSTALL_HINT`, unless NeMo-Aligner imports."""
    reason = aligner_unavailable_reason()
    if reason is not None:
        raise ImportError(f"NeMo-Aligner is not usable: {reason}; {INSTALL_HINT}")


if __name__ == "__main__":
    why = aligner_unavailable_reason()
    print("NeMo-Aligner GIFT actor: importable" if why is None else f"NeMo-Aligner GIFT actor: not importable: {why}")
