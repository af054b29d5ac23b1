"""nemo_gift: GIFT (Group-relative Implicit Fine Tuning) on megatron-core.

Layers, bottom up (docs/architecture.md draws them; imports only flow down):
- ``utils``: logging, plots, the config toolkit (``convert``, ``checks``).
- ``algorithms``, ``distributed``, ``rewards``: the losses and the training loop (torch only,
  over the Protocols of ``algorithms.interfaces``); vocab-parallel log-probs, gloo spawning and
  the CPU/gloo compatibility layer for megatron-core; verifiers and reward-model scoring.
- ``data``: dataset loaders, templates, the synthetic task.
- ``models``: ``policy`` (megatron-core model, step, checkpoints, HF name map) and
  ``generation`` (rollout engines).
- ``config`` and ``export``: the run config; Hugging Face import and export.
- ``train``, ``launcher``, ``doctor``, ``integrations``: the entry points.
"""

import warnings as _warnings

__version__ = "0.1.0"

# megatron-core warns at import that Apex and Transformer Engine are absent, torch that gloo's
# all_gather_into_tensor is deprecated, and megatron-core about its own cuda-graph default:
# expected on the CPU stack, and noise in every rank's output.
_warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine).*not installed", category=UserWarning)
_warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
_warnings.filterwarnings("ignore", message=r"full scope is deprecated", category=UserWarning)
_warnings.filterwarnings("ignore", message=r".*CUDA_DEVICE_MAX_CONNECTIONS.*", category=UserWarning)
