"""Rollout engines behind one interface (:class:`nemo_gift.algorithms.interfaces.GenerationBackend`).

- ``torch_engine.TorchGenerationEngine``: KV-cached, batched, TP-aware, on the policy's own
  megatron-core model; runs anywhere, and is the reference for the GPU engine.
- ``trtllm_engine.TrtllmGenerationEngine``: TensorRT-LLM (GPU), refit every step with the
  policy's HF-named weights; the only module that imports ``tensorrt_llm`` (lazily).
- ``sampling``: temperature / top-k / top-p / greedy, and ``token_logprobs``, the one definition
  of the log-probs engines report and trainers recompute.

See ``docs/rollout-refit.md``.
"""
