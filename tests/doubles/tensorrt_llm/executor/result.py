"""``tensorrt_llm.executor.result`` (double): ``CompletionOutput`` and ``Logprob``, read from
``tensorrt_llm/executor/result.py@a678b91a`` (citations are ``path:LINE@commit`` in
NVIDIA/TensorRT-LLM)."""

import dataclasses
from typing import List, Literal, Optional, Union


# tensorrt_llm/executor/result.py:43-47@a678b91a (``@dataclass(slots=True) class Logprob``)
@dataclasses.dataclass(slots=True)
class Logprob:
    """One token's log-prob and its rank in the distribution (1 = most likely)."""

    logprob: float
    rank: Optional[int] = None


# tensorrt_llm/executor/result.py:92-93@a678b91a (``@dataclass(slots=True) class CompletionOutput``);
# the fields the engine reads, at tensorrt_llm/executor/result.py:117-126@a678b91a
# (``prompt_logprobs`` and the logits/metrics fields are left out).
@dataclasses.dataclass(slots=True)
class CompletionOutput:
    """One response of a request."""

    # tensorrt_llm/executor/result.py:117@a678b91a
    index: int
    # tensorrt_llm/executor/result.py:118@a678b91a
    text: str = ""
    # tensorrt_llm/executor/result.py:119@a678b91a
    token_ids: List[int] = dataclasses.field(default_factory=list)
    # tensorrt_llm/executor/result.py:120@a678b91a
    cumulative_logprob: Optional[float] = None
    # tensorrt_llm/executor/result.py:121@a678b91a
    logprobs: List[dict] = dataclasses.field(default_factory=list)
    # tensorrt_llm/executor/result.py:124@a678b91a
    finish_reason: Optional[Literal["stop", "length", "timeout", "cancelled"]] = None
    # tensorrt_llm/executor/result.py:126@a678b91a
    stop_reason: Optional[Union[int, str]] = None
