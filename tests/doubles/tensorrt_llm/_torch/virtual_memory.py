"""``tensorrt_llm._torch.virtual_memory`` (double): the memory tags of sleep/wakeup.

Read from ``tensorrt_llm/_torch/virtual_memory.py@8579c297``: ``class ExecutorMemoryType`` at
tensorrt_llm/_torch/virtual_memory.py:70@8579c297, ``verify_sleep_wakeup_tags`` at
tensorrt_llm/_torch/virtual_memory.py:84@8579c297 (message at
tensorrt_llm/_torch/virtual_memory.py:91-92@8579c297). In that copy ``MODEL_EXTRA`` is
``"_no_capture_model_extra"`` (tensorrt_llm/_torch/virtual_memory.py:77@8579c297). A later stored copy
of the same file, which the source index reports as file id 4487962064 without a commit (so it is cited
here as ``tensorrt_llm/_torch/virtual_memory.py:LINE@id4487962064``), comments that value out
(tensorrt_llm/_torch/virtual_memory.py:77@id4487962064) and sets ``MODEL_EXTRA = "model_extra"``
(tensorrt_llm/_torch/virtual_memory.py:78@id4487962064), with ``verify_sleep_wakeup_tags`` at
tensorrt_llm/_torch/virtual_memory.py:85@id4487962064; the double follows that later copy, as do
``nemo_gift``'s ``SLEEP_TAGS`` and verl's TensorRT-LLM rollout (``_WEIGHTS_TAGS``). The copies at the
1.2.0rc2 version commit (``@b35ac1b6``) and the newest stored one (``@0657386b``) define neither name."""

from enum import Enum
from typing import List


class ExecutorMemoryType(str, Enum):
    """tensorrt_llm/_torch/virtual_memory.py:70@8579c297 (members
    tensorrt_llm/_torch/virtual_memory.py:71-81@8579c297; ``MODEL_EXTRA`` as in the later copy,
    tensorrt_llm/_torch/virtual_memory.py:78@id4487962064)."""

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
    """tensorrt_llm/_torch/virtual_memory.py:84@8579c297 (message
    tensorrt_llm/_torch/virtual_memory.py:91-92@8579c297)."""
    tags = []
    for tag_str in tags_strs:
        try:
            tags.append(ExecutorMemoryType(tag_str))
        except ValueError:
            raise ValueError(f"Unknown memory tag '{tag_str}'.Valid tags are: {[t.value for t in ExecutorMemoryType]}")
    return tags
