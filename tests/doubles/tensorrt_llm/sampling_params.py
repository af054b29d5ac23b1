"""``tensorrt_llm.sampling_params.SamplingParams`` (double), from ``tensorrt_llm/sampling_params.py``
@000a01de (fields) and the greedy-decoding check of the 1.x LLM API."""

import dataclasses
import os
from typing import List, Optional, Union


@dataclasses.dataclass(kw_only=True)
class SamplingParams:
    """The fields of the real ``SamplingParams`` that the engine uses, with their defaults."""

    end_id: Optional[int] = None
    pad_id: Optional[int] = None
    max_tokens: int = 32
    stop_token_ids: Optional[List[int]] = None
    include_stop_str_in_output: bool = False
    n: int = 1
    best_of: Optional[int] = None
    use_beam_search: bool = False
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    temperature: Optional[float] = None
    logprobs: Optional[int] = None
    prompt_logprobs: Optional[int] = None
    detokenize: bool = True
    stop: Optional[Union[str, List[str]]] = None

    def __post_init__(self):
        if self.best_of is None:
            self.best_of = self.n
        if self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) cannot be less than n ({self.n})")
        if (self._greedy_decoding and self.best_of > 1
                and os.environ.get("TLLM_ALLOW_N_GREEDY_DECODING") != "1"):
            raise ValueError("Greedy decoding in the LLM API does not allow multiple returns. Please set to "
                             f"best_of=1, got best_of={self.best_of}.")

    @property
    def _greedy_decoding(self) -> bool:
        """The real rule: greedy unless top-k/top-p ask for sampling (or temperature is 0)."""
        if self.use_beam_search:
            return False
        if self.temperature == 0:
            return True
        return self.top_k in (None, 1) and self.top_p in (None, 0.0)
