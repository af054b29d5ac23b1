"""Hugging Face import and export (see docs/export.md).

- :mod:`~nemo_gift.export.hf_import`: an HF directory -> a megatron-core model at any TP/PP;
- :mod:`~nemo_gift.export.hf_export`: a live model or a project checkpoint -> an HF directory;
- ``python -m nemo_gift.export --checkpoint DIR --hf-out DIR``: the offline export CLI.

The HF <-> megatron-core name/shape map they stand on (the streamed ``export_hf_tensors``, also
rollout refit's source, and ``load_hf_tensors``) belongs to the policy:
:mod:`nemo_gift.models.policy.hf_weights` and :mod:`nemo_gift.models.policy.hf_config`.

Nothing is imported here, so ``import nemo_gift.export`` stays cheap.
"""
