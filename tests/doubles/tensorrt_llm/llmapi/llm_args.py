"""``tensorrt_llm.llmapi.llm_args`` (double): the ``TorchLlmArgs`` keywords the double accepts,
and ``KvCacheConfig``. Read from ``tensorrt_llm/llmapi/llm_args.py`` (``TorchLlmArgs``,
``KvCacheConfig``: ``free_gpu_memory_fraction``, ``enable_block_reuse``) and from the keywords
verl's ``TRTLLMHttpServer.launch_server`` and NeMo-RL's ``TrtllmAsyncGenerationWorkerImpl``
pass to ``LLM``/``AsyncLLM`` against 1.2."""

import dataclasses
from typing import Optional

TORCH_LLM_ARGS = frozenset({
    "backend", "orchestrator_type", "ray_worker_extension_cls", "enable_sleep", "load_format",
    "kv_cache_config", "max_batch_size", "max_seq_len", "max_num_tokens", "max_input_len",
    "placement_groups", "placement_bundle_indices", "per_worker_gpu_share", "sampler_type",
    "cuda_graph_config", "allreduce_strategy", "scheduler_config", "pipeline_parallel_size",
    "model_kwargs", "sleep_config", "env_overrides",
})
"""Keywords beyond ``LLM``'s named parameters; anything else is refused, as ``BaseLLM.__init__``
refuses keys that are not ``TorchLlmArgs`` fields."""


@dataclasses.dataclass
class KvCacheConfig:
    """``tensorrt_llm.llmapi.KvCacheConfig`` (the fields used here)."""

    free_gpu_memory_fraction: Optional[float] = None
    enable_block_reuse: bool = True
    max_tokens: Optional[int] = None

    def __post_init__(self):
        f = self.free_gpu_memory_fraction
        if f is not None and not 0.0 <= f <= 1.0:
            raise ValueError(f"free_gpu_memory_fraction must be in [0, 1], got {f}")
