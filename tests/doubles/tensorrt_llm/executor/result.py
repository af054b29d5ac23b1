"""``tensorrt_llm.executor.result`` (double): ``CompletionOutput`` and ``Logprob``, from
``tensorrt_llm/executor/result.py`` @a678b91a."""

import dataclasses
from typing import List, Literal, NamedTuple, Optional, Union


class Logprob(NamedTuple):
    """One token's log-prob and its rank in the distribution (1 = most likely)."""

    logprob: float
    rank: Optional[int] = None


@dataclasses.dataclass(slots=True)
class CompletionOutput:
    """One response of a request."""

    index: int
    text: str = ""
    token_ids: List[int] = dataclasses.field(default_factory=list)
    cumulative_logprob: Optional[float] = None
    logprobs: List[dict] = dataclasses.field(default_factory=list)
    finish_reason: Optional[Literal["stop", "length", "timeout", "cancelled"]] = None
    stop_reason: Optional[Union[int, str]] = None
