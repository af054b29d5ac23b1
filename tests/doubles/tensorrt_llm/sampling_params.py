"""``tensorrt_llm.sampling_params.SamplingParams`` (double), read from
``tensorrt_llm/sampling_params.py@b35ac1b6`` (the 1.2.0rc2 version commit): the fields the engine
uses with their defaults, ``__post_init__``/``_validate`` and the greedy rule. Citations are
``path:LINE@commit`` in NVIDIA/TensorRT-LLM."""

import dataclasses
import os
from typing import List, Optional, Union


# tensorrt_llm/sampling_params.py:113@b35ac1b6 (``@dataclass(slots=True, kw_only=True)``)
@dataclasses.dataclass(slots=True, kw_only=True)
class SamplingParams:
    """The fields of the real ``SamplingParams`` that the engine uses, with their defaults."""

    end_id: Optional[int] = None  # tensorrt_llm/sampling_params.py:204@b35ac1b6
    pad_id: Optional[int] = None  # tensorrt_llm/sampling_params.py:205@b35ac1b6
    max_tokens: int = 32  # tensorrt_llm/sampling_params.py:206@b35ac1b6
    stop: Optional[Union[str, List[str]]] = None  # tensorrt_llm/sampling_params.py:210@b35ac1b6
    stop_token_ids: Optional[List[int]] = None  # tensorrt_llm/sampling_params.py:211@b35ac1b6
    include_stop_str_in_output: bool = False  # tensorrt_llm/sampling_params.py:212@b35ac1b6
    n: int = 1  # tensorrt_llm/sampling_params.py:219@b35ac1b6
    best_of: Optional[int] = None  # tensorrt_llm/sampling_params.py:220@b35ac1b6
    use_beam_search: bool = False  # tensorrt_llm/sampling_params.py:221@b35ac1b6
    # 0 = all tokens: tensorrt_llm/sampling_params.py:144@b35ac1b6
    top_k: Optional[int] = None  # tensorrt_llm/sampling_params.py:224@b35ac1b6
    top_p: Optional[float] = None  # tensorrt_llm/sampling_params.py:225@b35ac1b6
    seed: Optional[int] = None  # tensorrt_llm/sampling_params.py:229@b35ac1b6
    temperature: Optional[float] = None  # tensorrt_llm/sampling_params.py:230@b35ac1b6
    logprobs: Optional[int] = None  # tensorrt_llm/sampling_params.py:244@b35ac1b6
    prompt_logprobs: Optional[int] = None  # tensorrt_llm/sampling_params.py:245@b35ac1b6
    detokenize: bool = True  # tensorrt_llm/sampling_params.py:269@b35ac1b6

    def __post_init__(self):
        """tensorrt_llm/sampling_params.py:278@b35ac1b6: ``pad_id`` defaults to ``end_id``
        (tensorrt_llm/sampling_params.py:280@b35ac1b6), ``best_of = best_of or n``
        (tensorrt_llm/sampling_params.py:282@b35ac1b6), then ``_validate``
        (tensorrt_llm/sampling_params.py:292@b35ac1b6)."""
        if self.pad_id is None:
            self.pad_id = self.end_id
        self.best_of = self.best_of or self.n
        self._validate()

    def _validate(self):
        """tensorrt_llm/sampling_params.py:292@b35ac1b6 (messages at
        tensorrt_llm/sampling_params.py:301@b35ac1b6, tensorrt_llm/sampling_params.py:303@b35ac1b6,
        tensorrt_llm/sampling_params.py:305@b35ac1b6, tensorrt_llm/sampling_params.py:308@b35ac1b6,
        tensorrt_llm/sampling_params.py:317@b35ac1b6; the environment check at
        tensorrt_llm/sampling_params.py:314@b35ac1b6; the log-prob counts made ints at
        tensorrt_llm/sampling_params.py:333@b35ac1b6)."""
        if self.top_p is not None and (self.top_p < 0 or self.top_p > 1):
            raise ValueError(f"require 0 <= top_p <= 1, got top_p={self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"require top_k >= 0, got top_k={self.top_k}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"require temperature >= 0, got temperature={self.temperature}")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) cannot be less than n ({self.n})")
        if (self.best_of is not None and self.best_of > 1 and self._greedy_decoding
                and not os.environ.get("TLLM_ALLOW_N_GREEDY_DECODING", None)):
            raise ValueError(
                f"Greedy decoding in the LLM API does not allow multiple returns. Please set to best_of=1, "
                f"got best_of={self.best_of}. Please set to best_of=1 or set an environment variable "
                f"TLLM_ALLOW_N_GREEDY_DECODING=1 to allow best_of > 1 under the greedy decoding.")
        self.logprobs = self.logprobs and int(self.logprobs)
        self.prompt_logprobs = self.prompt_logprobs and int(self.prompt_logprobs)

    @staticmethod
    def params_imply_greedy_decoding(*, temperature: Optional[float], top_p: Optional[float],
                                     top_k: Optional[int]) -> bool:
        """tensorrt_llm/sampling_params.py:339@b35ac1b6: greedy when none of the three is given, or
        ``top_k == 1``, or ``top_p == 0``, or ``temperature == 0``."""
        return ((temperature is None and top_p is None and top_k is None)
                or top_k == 1 or top_p == 0.0 or temperature == 0)

    @property
    def _greedy_decoding(self) -> bool:
        """tensorrt_llm/sampling_params.py:350@b35ac1b6."""
        return not self.use_beam_search and self.params_imply_greedy_decoding(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
