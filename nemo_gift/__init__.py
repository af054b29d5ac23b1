"""nemo_gift: GIFT (Group-relative Implicit Fine Tuning) on megatron-core.

Layout (see README.md for the architecture paragraph):
- ``algorithms``: the losses and the training step, torch only.
- ``distributed``: vocab-parallel log-probs, cross-rank group statistics, and the
  CPU/gloo compatibility layer for megatron-core.
- ``models``: ``policy`` (megatron-core model building) and ``generation`` (rollout engines).
- ``rewards`` and ``data``: verifiers, reward-model scoring, dataset loaders.
- ``export``: Hugging Face import and export.
- ``integrations``: the NeMo-Aligner actor extension.
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
