"""``tensorrt_llm.llmapi.llm_args`` (double): the ``TorchLlmArgs`` keywords the double accepts, and
``KvCacheConfig``. Read from ``tensorrt_llm/llmapi/llm_args.py@0777969c`` (the same commit as the
``ray_executor.py`` read); every citation is ``path:LINE@commit`` in NVIDIA/TensorRT-LLM."""

import dataclasses
from typing import Optional

TORCH_LLM_FIELDS = {
    # class BaseLlmArgs: tensorrt_llm/llmapi/llm_args.py:1820@0777969c
    "pipeline_parallel_size": "tensorrt_llm/llmapi/llm_args.py:1867@0777969c",
    "kv_cache_config": "tensorrt_llm/llmapi/llm_args.py:1930@0777969c",
    "scheduler_config": "tensorrt_llm/llmapi/llm_args.py:1963@0777969c",
    "max_batch_size": "tensorrt_llm/llmapi/llm_args.py:1982@0777969c",
    "max_input_len": "tensorrt_llm/llmapi/llm_args.py:1986@0777969c",
    "max_seq_len": "tensorrt_llm/llmapi/llm_args.py:1989@0777969c",
    "max_num_tokens": "tensorrt_llm/llmapi/llm_args.py:1995@0777969c",
    "backend": "tensorrt_llm/llmapi/llm_args.py:2044@0777969c",
    "orchestrator_type": "tensorrt_llm/llmapi/llm_args.py:2056@0777969c",
    "env_overrides": "tensorrt_llm/llmapi/llm_args.py:2063@0777969c",
    # class TorchLlmArgs: tensorrt_llm/llmapi/llm_args.py:2675@0777969c
    "cuda_graph_config": "tensorrt_llm/llmapi/llm_args.py:2684@0777969c",
    "sampler_type": "tensorrt_llm/llmapi/llm_args.py:2717@0777969c",
    "load_format": "tensorrt_llm/llmapi/llm_args.py:2785@0777969c",
    "allreduce_strategy": "tensorrt_llm/llmapi/llm_args.py:2812@0777969c",
    "ray_worker_extension_cls": "tensorrt_llm/llmapi/llm_args.py:2858@0777969c",
    "ray_placement_config": "tensorrt_llm/llmapi/llm_args.py:2864@0777969c",
    "enable_sleep": "tensorrt_llm/llmapi/llm_args.py:2871@0777969c",
}
"""Each keyword the double accepts beyond ``LLM``'s named parameters -> where it is defined. The
real ``BaseLLM.__init__`` accepts every ``TorchLlmArgs`` field plus ``_mpi_session`` and
``backend`` and refuses any other key (tensorrt_llm/llmapi/llm.py:159-166@0acd798d); the double
accepts this subset and refuses the rest with the same message. ``placement_groups``,
``placement_bundle_indices`` and ``per_worker_gpu_share`` are not ``LLM`` keywords: they are fields
of ``RayPlacementConfig`` (tensorrt_llm/llmapi/llm_args.py:1125@0777969c;
tensorrt_llm/llmapi/llm_args.py:1134@0777969c, tensorrt_llm/llmapi/llm_args.py:1140@0777969c,
tensorrt_llm/llmapi/llm_args.py:1149@0777969c), passed as ``ray_placement_config``."""

TORCH_LLM_ARGS = frozenset(TORCH_LLM_FIELDS)

LOAD_FORMATS = ("AUTO", "DUMMY")
"""``LoadFormat`` members (tensorrt_llm/llmapi/llm_args.py:2606-2611@0777969c), less
``VISION_ONLY``, which the double does not implement."""


def check_load_format(value) -> str:
    """``TorchLlmArgs.convert_load_format`` (tensorrt_llm/llmapi/llm_args.py:2907@0777969c): the
    name, upper-cased, must be a ``LoadFormat`` member, else "Invalid LoadFormat"
    (tensorrt_llm/llmapi/llm_args.py:2912@0777969c). Returns the lower-case name."""
    if str(value).upper() not in LOAD_FORMATS:
        raise ValueError(f"Invalid LoadFormat: {value}")
    return str(value).lower()


@dataclasses.dataclass
class KvCacheConfig:
    """``KvCacheConfig`` (tensorrt_llm/llmapi/llm_args.py:1564@0777969c), the fields used here."""

    enable_block_reuse: bool = True  # tensorrt_llm/llmapi/llm_args.py:1568@0777969c
    max_tokens: Optional[int] = None  # tensorrt_llm/llmapi/llm_args.py:1572@0777969c
    free_gpu_memory_fraction: Optional[float] = 0.9  # tensorrt_llm/llmapi/llm_args.py:1586-1587@0777969c

    def __post_init__(self):
        """``validate_free_gpu_memory_fraction`` (tensorrt_llm/llmapi/llm_args.py:1671@0777969c,
        message at tensorrt_llm/llmapi/llm_args.py:1675@0777969c)."""
        if not 0 <= self.free_gpu_memory_fraction <= 1:
            raise ValueError("kv_cache_config.free_gpu_memory_fraction must be a float between 0 and 1")
