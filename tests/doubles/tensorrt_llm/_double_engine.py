"""The double's stand-in for a worker's model engine (not a mimic of a TensorRT-LLM file): a Hugging Face
``transformers`` causal LM built from the model directory's ``config.json``, whose weights are the
checkpoint's (``load_format="auto"``), random (``"dummy"``), or what refit delivered; and a
token-in/token-out sampler.

What follows TensorRT-LLM (``path:LINE@commit`` in NVIDIA/TensorRT-LLM):
- the stop checks of ``TorchSampler._handle_stop_criteria``
  (tensorrt_llm/_torch/pyexecutor/sampler.py:660@28edbcdb), in its order: the end token first
  (tensorrt_llm/_torch/pyexecutor/sampler.py:663-665@28edbcdb; ``end_id=-1`` matches no token, so it
  never ends), then the length limit (tensorrt_llm/_torch/pyexecutor/sampler.py:667-669@28edbcdb), then
  a stop token (tensorrt_llm/_torch/pyexecutor/sampler.py:671-673@28edbcdb); so a stop token sampled as
  the last allowed token finishes with ``"length"``;
- ``finish_reason`` "stop" for the end token and for a stop token, "length" at the limit
  (tensorrt_llm/executor/result.py:414-426@a678b91a); a stop token sets ``stop_reason`` to its id and is
  removed from ``token_ids`` unless ``include_stop_str_in_output``
  (tensorrt_llm/executor/result.py:416-424@a678b91a), while its log-prob entry stays (the log-probs were
  cut to the untrimmed length before, tensorrt_llm/executor/result.py:386-390@a678b91a);
- log-probs: the raw distribution's top-k as ``{token: Logprob(logprob, rank)}``, rank 1 = most likely
  (``TorchSampler.handle_logprobs``, tensorrt_llm/_torch/pyexecutor/sampler.py:677-701@28edbcdb), so the
  sampled token can be missing;
- greedy is the argmax; ``top_k=0`` keeps every token (tensorrt_llm/sampling_params.py:144@b35ac1b6).

Not read, the double's own choices: the order of temperature, top-k and top-p (temperature, then top-k,
then top-p, as ``nemo_gift``'s torch engine does), the random numbers (a ``torch`` generator seeded with
``seed``), and whether an end token stays in ``token_ids`` (the double drops it; ``nemo_gift`` always
passes ``end_id=-1``)."""

from __future__ import annotations

import inspect
from typing import Iterable

import torch

from tensorrt_llm.executor.result import CompletionOutput, Logprob
from trtllm_double_log import weights_digest

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": torch.float32}


class ModelEngine:
    """One worker's model."""

    def __init__(self, model_dir: str, dtype: str, load_format: str):
        from transformers import AutoConfig, AutoModelForCausalLM

        self.dtype = _DTYPES[dtype]
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
        with torch.random.fork_rng():  # never consume the trainer's generator
            torch.manual_seed(0)
            if load_format == "dummy":
                model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
            else:
                model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
        self.model = model.to(self.dtype).eval()
        self.names = set(self.model.state_dict())
        # transformers 5.x renamed past_key_values to cache (TensorRT-LLM 1.2 pins 4.57)
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.staged: dict[str, torch.Tensor] = {}

    def reload(self, weights: dict[str, torch.Tensor]) -> None:
        """Stage HF-named tensors (partial loading allowed); unknown names or shapes are refused,
        as the checkpoint's HF weight mapper would not place them."""
        state = self.model.state_dict()
        for name, tensor in weights.items():
            if name not in self.names:
                raise KeyError(f"update_weights: {name!r} is not a weight of this {type(self.model).__name__}")
            if tuple(tensor.shape) != tuple(state[name].shape):
                raise ValueError(f"update_weights: {name} has shape {tuple(tensor.shape)}, "
                                 f"the model {tuple(state[name].shape)}")
            self.staged[name] = tensor.detach().to(self.dtype).clone()

    def finalize(self) -> tuple[int, str]:
        """Copy the staged tensors in; returns (tensors loaded this cycle, digest of the weights)."""
        loaded = len(self.staged)
        with torch.no_grad():
            self.model.load_state_dict(self.staged, strict=False)
        self.staged = {}
        return loaded, self.digest()

    def digest(self) -> str:
        return weights_digest((n, p) for n, p in self.model.named_parameters())

    @torch.no_grad()
    def generate(self, prompt: list[int], params) -> list[CompletionOutput]:
        """``params.n`` responses to one prompt."""
        n, greedy = params.n, params._greedy_decoding
        gen = torch.Generator().manual_seed(int(params.seed or 0))
        ids = torch.tensor([prompt] * n, dtype=torch.long)  # [n, P]
        stops = set(params.stop_token_ids or ())
        out = [[] for _ in range(n)]
        lps: list[list[dict]] = [[] for _ in range(n)]
        reasons: list[str | None] = [None] * n
        stop_reasons: list[int | None] = [None] * n
        past, step_in = None, ids
        for _ in range(params.max_tokens):
            res = self.model(input_ids=step_in, use_cache=True, **{self._cache_arg: past})
            past = getattr(res, self._cache_arg)
            logits = res.logits[:, -1].float()  # [n, V]
            raw = torch.log_softmax(logits, dim=-1)
            token = logits.argmax(-1) if greedy else _sample(logits, params, gen)  # [n]
            for r in range(n):
                if reasons[r] is not None:
                    continue
                t = int(token[r])
                if params.end_id is not None and params.end_id >= 0 and t == params.end_id:
                    reasons[r] = "stop"
                    continue
                out[r].append(t)
                lps[r].append(_topk_logprobs(raw[r], params.logprobs))
                if len(out[r]) == params.max_tokens:  # the length limit is checked before stop tokens
                    reasons[r] = "length"
                elif t in stops:
                    reasons[r], stop_reasons[r] = "stop", t
                    if not params.include_stop_str_in_output:
                        out[r].pop()  # the token goes, its log-prob entry stays
            if all(reason is not None for reason in reasons):
                break
            step_in = token[:, None]
        return [CompletionOutput(index=r, token_ids=out[r], logprobs=lps[r] if params.logprobs is not None else [],
                                 finish_reason=reasons[r] or "length", stop_reason=stop_reasons[r])
                for r in range(n)]


def _sample(logits: torch.Tensor, params, gen: torch.Generator) -> torch.Tensor:
    logits = logits / float(params.temperature if params.temperature is not None else 1.0)
    k = params.top_k or 0
    if 0 < k < logits.shape[-1]:
        kth = logits.topk(k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    p = params.top_p if params.top_p is not None else 1.0
    if p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > p  # keep the smallest prefix whose mass reaches p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]


def _topk_logprobs(raw: torch.Tensor, k: int | None) -> dict:
    """``{token: Logprob(logprob, rank)}`` of the ``k`` most likely tokens of the raw distribution."""
    if k is None:
        return {}
    vals, idx = raw.topk(max(int(k), 1))
    return {int(t): Logprob(logprob=float(v), rank=i + 1) for i, (t, v) in enumerate(zip(idx, vals))}
