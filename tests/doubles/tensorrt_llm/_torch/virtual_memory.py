"""``tensorrt_llm._torch.virtual_memory`` (double): the memory tags of sleep/wakeup, from
``_torch/virtual_memory.py`` @b35ac1b6 (``ExecutorMemoryType``, ``verify_sleep_wakeup_tags``)."""

from enum import Enum
from typing import List


class ExecutorMemoryType(str, Enum):
    SAMPLER = "sampler"
    DRAFTER = "drafter"
    GUIDED_DECODER = "guided_decoder"
    SPEC_RESOURCES = "spec_resource_manager"
    INIT_KV_CACHE = "_no_capture_init_kv_cache"
    INIT_EXTRA_RESOURCES = "_no_capture_init_extra_resources"
    MODEL_EXTRA = "model_extra"
    EXTRA_RESOURCES = "executor_extra"
    KV_CACHE = "kv_cache"
    MODEL_ENGINE_MAIN = "model"
    MODEL_ENGINE_DRAFT = "draft_model"


def verify_sleep_wakeup_tags(tags_strs: List[str]) -> List[ExecutorMemoryType]:
    tags = []
    for tag_str in tags_strs:
        try:
            tags.append(ExecutorMemoryType(tag_str))
        except ValueError:
            raise ValueError(f"Unknown memory tag '{tag_str}'.Valid tags are: {[t.value for t in ExecutorMemoryType]}")
    return tags
