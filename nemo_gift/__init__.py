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

__version__ = "0.1.0"
