"""Hugging Face import and export (see docs/export.md).

- :mod:`~nemo_gift.export.mapping`: the HF <-> megatron-core name/shape mapping, the streamed
  ``export_hf_tensors`` iterator (also rollout refit's source) and ``load_hf_tensors``;
- :mod:`~nemo_gift.export.hf_import`: an HF directory -> a megatron-core model at any TP/PP;
- :mod:`~nemo_gift.export.hf_export`: a live model or a project checkpoint -> an HF directory;
- ``python -m nemo_gift.export --checkpoint DIR --hf-out DIR``: the offline export CLI.

Nothing is imported here, so ``import nemo_gift.export`` stays cheap.
"""
