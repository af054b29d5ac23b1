"""TensorRT-LLM rollouts (GPU), one engine per data-parallel replica, refit with the policy's
weights before every rollout.

The one module that imports ``tensorrt_llm``, and only on the rank that owns an engine
(``pip install -e '.[gpu]' --extra-index-url https://pypi.nvidia.com``; the PyPI package is a
stub that downloads from NVIDIA's index at build time). Written against TensorRT-LLM 1.2.x,
the version the ``gpu`` extra pins (1.2.1), from its sources (``llmapi/llm.py``,
``llmapi/rlhf_utils.py``, ``executor/ray_executor.py``, ``executor/ray_gpu_worker.py``,
``sampling_params.py``, ``executor/result.py``, ``_torch/pyexecutor/sampler.py``) and from
verl's (``verl/workers/rollout/trtllm_rollout``) and NeMo-RL's
(``nemo_rl/models/generation/trtllm``) integrations. Where the engine runs, the owner's
environment and the refit transport are in :mod:`~nemo_gift.models.generation.trtllm_runtime`.

How it works
------------
- Ownership: construct the engine on every rank of a replica (a model-parallel group,
  :func:`~nemo_gift.models.generation.trtllm_runtime.replica_group`). Its first rank owns the
  ``LLM`` (``tensor_parallel_size`` = the group's size, one worker per GPU of the group); every
  method is collective over the group: ``generate`` runs on the owner and its output is
  broadcast to the group, ``refit`` gathers every rank's handles to the owner. An error on the
  owner is re-raised on every rank of the group instead of leaving them waiting.
- Engine: the LLM API with the PyTorch backend and the Ray orchestrator
  (``LLM(model=hf_dir, backend="pytorch", orchestrator_type="ray",
  ray_worker_extension_cls="tensorrt_llm.llmapi.rlhf_utils.WorkerExtension", enable_sleep=True)``),
  fed token ids (no tokenizer: ``skip_tokenizer_init``, ``detokenize=False``).
- Sampling: :func:`sampling_params_kwargs` translates a :class:`SamplingConfig`. TRT-LLM 1.2 treats
  a request as greedy when none of ``temperature``/``top_k``/``top_p`` is given, or ``top_k == 1``,
  ``top_p == 0`` or ``temperature == 0`` (``SamplingParams.params_imply_greedy_decoding``,
  tensorrt_llm/sampling_params.py:339@b35ac1b6), so sampling always passes all three (``top_k=0`` =
  all tokens); greedy uses ``top_k=1`` and, since the LLM API refuses ``n > 1`` with greedy
  decoding, submits each prompt n times. (A sampling config with ``top_k=1`` is greedy to TRT-LLM
  too, so it is refused for ``n > 1``.) ``end_id=-1`` turns the
  tokenizer's EOS off: only ``stop_token_ids`` stop, and ``include_stop_str_in_output`` keeps
  the stop token, as the padding contract requires. A ``seed=None`` call gets a seed from the
  engine's own generator (TRT-LLM's default seed is the same constant every call), and request
  ``i`` of a call samples with ``seed + i`` (a shared seed would give every request the same
  random numbers).
- Log-probs: ``logprobs=1`` asks for the top-1 token's. The PyTorch backend's sampler
  (``TorchSampler.handle_logprobs``) returns ``{token_id: Logprob}`` of the top-k tokens of the
  *raw* (untempered, unfiltered) distribution, which need not hold the sampled token: a
  missing one is NaN in :class:`GenerationOutput.logprobs` (``last_missing_logprobs`` counts
  them). So these are not the interface's "log-probs under the sampling distribution" except
  for greedy decoding; the trainer recomputes pi_old itself and never reads them.
- Refit, through TRT-LLM's RL weight-update path (``rlhf_utils.WorkerExtension.update_weights``
  called with ``LLM._collective_rpc``): the HF-named full tensors from ``export_hf_tensors``
  are named and cast for TRT-LLM (:func:`refit_tensors`), grouped into buckets of at most
  ``refit_bucket_bytes`` (:func:`bucket_by_bytes`), and each bucket is shared by every rank of
  the replica from its own device (``{device_key: base64(pickle([(name, handle), ...]))}``,
  :func:`serialize_ipc_handles`) and gathered to the owner, whose RPC reaches every worker; each
  worker opens the handles of its own device. The first call makes the workers prepare for
  reloading; each bucket is loaded with partial loading allowed; ``update_weights(None)``
  finalizes (post-load processing, prefix-cache reset). The owner's reply to each bucket is
  broadcast, which keeps the shared tensors alive until the workers have copied them.
- Sleep and wake: ``sleep``/``wakeup`` worker RPCs with memory tags (weights, KV cache, the
  executor's other buffers: verl's tag list), so that training can use the GPU memory in
  between. Order in a rollout step (``nemo_gift.algorithms.gift``): ``generate()``,
  ``sleep()``, the optimizer steps, ``wake()``, ``refit()``; and a ``refit()`` before the first
  rollout of a run (after the warm start or a resume).

Executed and not executed
-------------------------
Executed on CPU (``tests/unit/generation/test_trtllm_engine.py``, ``test_trtllm_trainer.py``):
the pure-Python parts, and the whole engine (ownership, collectives, refit, sleep/wake, the
trainer at TP2 x DP2 and PP2) against the API-faithful double ``tests/doubles/tensorrt_llm``
with :class:`~nemo_gift.models.generation.trtllm_runtime.CpuTransport`.

NOT executed here (no GPU machine with TensorRT-LLM was available): the real ``tensorrt_llm``,
Ray, and the CUDA IPC transport. ``scripts/gpu_acceptance.sh`` checks them on a GPU: greedy
tokens equal to Hugging Face's, a refit to other weights, sleep -> wake -> refit -> generate,
and two steps of ``gift_tiny`` with this engine.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import pickle
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import torch

from nemo_gift.algorithms.interfaces import GenerationOutput, HFWeights, SamplingConfig
from nemo_gift.models.generation.trtllm_runtime import (
    RefitTransport, ReplicaGroup, default_transport, engine_tensor_parallel_size, owner_env,
)
from nemo_gift.models.policy.config import ModelConfig
from nemo_gift.utils.torch_utils import TORCH_DTYPES as _DTYPES

__all__ = [
    "INSTALL_HINT", "TrtllmConfig", "TrtllmGenerationEngine", "bucket_by_bytes", "config_from_run", "convert_outputs",
    "llm_kwargs", "refit_tensors", "sampling_params_kwargs", "serialize_ipc_handles", "trtllm_available",
    "wake_and_refit",
]

INSTALL_HINT = "pip install -e '.[gpu]' --extra-index-url https://pypi.nvidia.com"

SLEEP_TAGS = ("sampler", "drafter", "guided_decoder", "spec_resource_manager", "model_extra",
              "executor_extra", "model", "draft_model", "kv_cache")
"""TRT-LLM 1.2's memory tags (``ExecutorMemoryType`` values), as verl releases them."""


def trtllm_available() -> bool:
    """Whether ``tensorrt_llm`` can be imported (checked without importing it)."""
    return importlib.util.find_spec("tensorrt_llm") is not None


@dataclasses.dataclass(frozen=True)
class TrtllmConfig:
    """How to run the TensorRT-LLM engine."""

    model_dir: str
    """A Hugging Face directory (``nemo_gift.export.hf_export``): the architecture, and the first
    weights unless ``load_format`` is ``dummy``."""
    load_format: Literal["auto", "dummy"] = "auto"
    """``dummy``: random first weights (only ``config.json`` is read); refit before generating."""
    tokenizer_dir: str | None = None
    """Forwarded to the LLM API as ``tokenizer``; the engine itself works in token ids."""
    tensor_parallel_size: int = 1
    """GPUs per engine."""
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Engine weights and activations; refit tensors are cast to it before transfer."""
    max_batch_size: int = 256
    """Most sequences decoded at once."""
    max_seq_len: int = 4096
    """Longest prompt + response."""
    max_num_tokens: int = 8192
    """Most tokens in one forward (prefill chunks included)."""
    kv_cache_free_gpu_memory_fraction: float = 0.5
    """Share of the free GPU memory the KV cache takes at start-up (the rest stays for training)."""
    enable_sleep: bool = True
    """Allocate releasable memory, for ``sleep()``/``wake()`` (colocated training)."""
    sleep_tags: tuple[str, ...] = SLEEP_TAGS
    """Memory released by ``sleep()`` and resumed by ``wake()``."""
    refit_bucket_bytes: int = 512 * 2**20
    """Largest refit bucket (one IPC message); a larger tensor goes alone."""

    def __post_init__(self):
        if self.tensor_parallel_size < 1:
            raise ValueError(f"trtllm.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"trtllm.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if not 0.0 < self.kv_cache_free_gpu_memory_fraction < 1.0:
            raise ValueError("trtllm.kv_cache_free_gpu_memory_fraction must be in (0, 1), "
                             f"got {self.kv_cache_free_gpu_memory_fraction}")
        if self.refit_bucket_bytes < 1:
            raise ValueError(f"trtllm.refit_bucket_bytes must be >= 1, got {self.refit_bucket_bytes}")


# --------------------------------------------------------------------------------------------
# Pure-Python parts (run in the CPU tests)
# --------------------------------------------------------------------------------------------


def llm_kwargs(cfg: TrtllmConfig) -> dict[str, Any]:
    """Keyword arguments of ``tensorrt_llm.LLM`` (the ``kv_cache_config`` as a plain dict, to be
    wrapped in ``KvCacheConfig``)."""
    out = {
        "model": cfg.model_dir,
        "backend": "pytorch",
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "dtype": cfg.dtype,
        "max_batch_size": cfg.max_batch_size,
        "max_seq_len": cfg.max_seq_len,
        "max_num_tokens": cfg.max_num_tokens,
        "skip_tokenizer_init": True,
        "orchestrator_type": "ray",
        "ray_worker_extension_cls": "tensorrt_llm.llmapi.rlhf_utils.WorkerExtension",
        # no prefix reuse across refits: a cached prefix would hold the old weights' keys
        "kv_cache_config": {"free_gpu_memory_fraction": cfg.kv_cache_free_gpu_memory_fraction,
                            "enable_block_reuse": False},
    }
    if cfg.enable_sleep:
        out["enable_sleep"] = True
    if cfg.load_format == "dummy":
        out["load_format"] = "dummy"
    if cfg.tokenizer_dir is not None:
        out["tokenizer"] = cfg.tokenizer_dir
    return out


def sampling_params_kwargs(sampling: SamplingConfig, n: int, seed: int, pad_token_id: int) -> tuple[dict, int]:
    """``(SamplingParams kwargs, copies)``: submit each prompt ``copies`` times with these
    parameters, each request returning ``kwargs["n"]`` responses (``copies * n`` in all)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    kwargs = {
        "max_tokens": sampling.max_new_tokens,
        "end_id": -1,  # no implicit EOS: only stop_token_ids stop
        "pad_id": pad_token_id,
        "stop_token_ids": list(sampling.stop_token_ids) or None,
        "include_stop_str_in_output": True,
        "logprobs": 1,
        "detokenize": False,
        "seed": int(seed),
    }
    if sampling.greedy:
        kwargs.update(n=1, top_k=1, top_p=None, temperature=None)
        return kwargs, n
    kwargs.update(n=n, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    return kwargs, 1


def refit_tensors(weights: HFWeights, cfg: ModelConfig, dtype: torch.dtype | str) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors TRT-LLM's loader gets: HF names checked against ``cfg``, cast to the engine
    dtype, contiguous; with tied embeddings, ``lm_head.weight`` is added as the embedding
    (TRT-LLM may keep a separate output table)."""
    from nemo_gift.models.policy.hf_weights import expected_hf_shapes

    dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    shapes = expected_hf_shapes(cfg)
    pairs = weights.items() if hasattr(weights, "items") else weights
    seen = set()
    for name, tensor in pairs:
        if name in seen:
            raise ValueError(f"refit: {name} given twice")
        seen.add(name)
        if name not in shapes and not (cfg.tie_word_embeddings and name == "lm_head.weight"):
            raise KeyError(f"refit: {name!r} is not a weight of this {cfg.arch} model")
        if name in shapes and tuple(tensor.shape) != shapes[name]:
            raise ValueError(f"refit: {name} has shape {tuple(tensor.shape)}, expected {shapes[name]}")
        tensor = tensor.detach().to(dtype).contiguous()
        yield name, tensor
        if cfg.tie_word_embeddings and name == "model.embed_tokens.weight":
            seen.add("lm_head.weight")
            yield "lm_head.weight", tensor
    missing = sorted(set(shapes) - seen)
    if missing:
        raise KeyError(f"refit: {len(missing)} weight(s) missing, e.g. {missing[:3]}")


def bucket_by_bytes(tensors: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Consecutive groups of ``(name, tensor)`` of at most ``max_bytes`` each, in order; a
    tensor larger than ``max_bytes`` is a bucket of its own."""
    bucket, size = [], 0
    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > max_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def serialize_ipc_handles(bucket: Sequence[tuple[str, torch.Tensor]], device_uuid: str,
                          reduce_fn: Callable[[torch.Tensor], Any] | None = None) -> dict[str, str]:
    """``{device_uuid: base64(pickle([(name, handle), ...]))}``, the format of
    ``WorkerExtension.update_weights``; ``handle`` is ``reduce_fn(tensor)``
    (``torch.multiprocessing.reductions.reduce_tensor``: a CUDA IPC handle)."""
    if reduce_fn is None:
        from torch.multiprocessing.reductions import reduce_tensor as reduce_fn
    handles = [(name, reduce_fn(tensor)) for name, tensor in bucket]
    return {device_uuid: base64.b64encode(pickle.dumps(handles)).decode("ascii")}


def config_from_run(run_cfg, tokenizer_dir: str | None = None) -> TrtllmConfig:
    """The engine settings of a run config (``nemo_gift.config.schema.RunConfig``): one engine GPU
    per rank of a model-parallel group (``tensor_parallel_size`` = TP x PP), its dtype, ``model.max_position_embeddings`` and ``rollout.trtllm_gpu_memory_fraction``, the
    weights of ``init.hf_checkpoint``. Without a checkpoint the engine starts from a
    ``config.json`` written for ``run_cfg.model`` (in a new temporary directory) with dummy
    weights: refit it before the first ``generate``."""
    import json
    import tempfile

    from nemo_gift.models.policy.hf_weights import model_config_to_hf_config

    model_dir, load_format = run_cfg.init.hf_checkpoint, "auto"
    if model_dir is None:
        model_dir, load_format = tempfile.mkdtemp(prefix="nemo_gift_trtllm_"), "dummy"
        with open(f"{model_dir}/config.json", "w") as f:
            json.dump(model_config_to_hf_config(run_cfg.model, dtype=run_cfg.parallel.params_dtype), f)
    return TrtllmConfig(
        model_dir=model_dir, load_format=load_format, tokenizer_dir=tokenizer_dir,
        tensor_parallel_size=engine_tensor_parallel_size(run_cfg.parallel),
        dtype=run_cfg.parallel.params_dtype,
        max_seq_len=run_cfg.model.max_position_embeddings,
        kv_cache_free_gpu_memory_fraction=run_cfg.rollout.trtllm_gpu_memory_fraction,
    )


def _sampled_logprob(entry: Any, token: int) -> float:
    """The log-prob of ``token`` from one position of ``CompletionOutput.logprobs``: a float,
    or a ``{token_id: Logprob | float}`` dict of the top-k tokens, which may lack the sampled
    one (then NaN: the trainer never reads these)."""
    if isinstance(entry, dict):
        if token not in entry:
            return float("nan")
        entry = entry[token]
    return float(getattr(entry, "logprob", entry))


def convert_outputs(request_outputs: Sequence[Any], num_prompts: int, n: int, stop_token_ids: Sequence[int],
                    pad_token_id: int) -> GenerationOutput:
    """TRT-LLM ``RequestOutput`` objects, in submission order (``num_prompts * copies``
    requests, ``n / copies`` outputs each, prompt-major), to a :class:`GenerationOutput`.
    A finish reason is ``stop`` when the response ends in a stop token, else ``length``, as the
    torch engine reports it."""
    rows = [o for req in request_outputs for o in req.outputs]
    if len(rows) != num_prompts * n:
        raise ValueError(f"TRT-LLM returned {len(rows)} responses, expected {num_prompts} prompts x {n}")
    stops = set(stop_token_ids)
    tokens, logprobs, reasons = [], [], []
    for r, out in enumerate(rows):
        ids = [int(t) for t in out.token_ids]
        if not ids:
            raise ValueError(f"TRT-LLM response {r} is empty")
        if out.finish_reason not in ("stop", "length"):
            raise ValueError(f"TRT-LLM response {r} finished with {out.finish_reason!r}, not stop/length")
        if out.finish_reason == "stop" and ids[-1] not in stops:
            raise ValueError(f"TRT-LLM response {r} stopped, but its last token {ids[-1]} is no stop token "
                             "(was include_stop_str_in_output dropped?)")
        if out.logprobs is None or len(out.logprobs) != len(ids):
            raise ValueError(f"TRT-LLM response {r}: {len(out.logprobs or [])} log-probs for {len(ids)} tokens")
        tokens.append(ids)
        logprobs.append([_sampled_logprob(e, t) for e, t in zip(out.logprobs, ids)])
        # One rule with the torch engine: a response that ends in a stop token stopped, also when
        # that token was the max_new_tokens-th (TRT-LLM then reports "length").
        reasons.append("stop" if ids[-1] in stops else "length")
    width = max(len(t) for t in tokens)
    tok = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    lp = torch.zeros(len(rows), width, dtype=torch.float32)
    for r, (ids, lps) in enumerate(zip(tokens, logprobs)):
        tok[r, : len(ids)] = torch.tensor(ids)
        lp[r, : len(ids)] = torch.tensor(lps)
    return GenerationOutput(tokens=tok, lengths=torch.tensor([len(t) for t in tokens]), logprobs=lp,
                            finish_reasons=reasons, prompt_index=torch.arange(num_prompts).repeat_interleave(n),
                            pad_token_id=pad_token_id)


# --------------------------------------------------------------------------------------------
# The engine (GPU, TensorRT-LLM; not executed yet, see the module docstring)
# --------------------------------------------------------------------------------------------


class TrtllmGenerationEngine:
    """The :class:`~nemo_gift.algorithms.interfaces.GenerationBackend` on TensorRT-LLM.

    Construct it on every rank of ``replica`` (default: this process alone); the replica's
    first rank owns the ``LLM``. Every method is collective over the replica.

    Args:
        cfg: the engine's settings; ``cfg.tensor_parallel_size`` must equal the replica's size.
        model_cfg: the policy architecture (checks refit names and shapes).
        pad_token_id: fills ``GenerationOutput.tokens`` past each response's end.
        seed: seeds the generator that gives ``seed=None`` calls their seeds.
        replica: the ranks that share this engine (``trtllm_runtime.replica_group()``).
        transport: how refit tensors reach the workers (default: CUDA IPC where there is a GPU).
    """

    def __init__(self, cfg: TrtllmConfig, model_cfg: ModelConfig, *, pad_token_id: int = 0, seed: int = 1234,
                 replica: ReplicaGroup | None = None, transport: RefitTransport | None = None):
        if not trtllm_available():
            raise ImportError(f"TensorRT-LLM is not installed; it comes with the gpu extra: {INSTALL_HINT}")
        self.replica = replica or ReplicaGroup(ranks=(0,), rank=0)
        if cfg.tensor_parallel_size != self.replica.size:
            raise ValueError(f"trtllm.tensor_parallel_size={cfg.tensor_parallel_size} must equal the replica's "
                             f"{self.replica.size} ranks (one engine GPU per rank of the model-parallel group)")
        self.cfg, self.model_cfg, self.pad_token_id = cfg, model_cfg, int(pad_token_id)
        self.transport = transport or default_transport()
        self._seeds = torch.Generator().manual_seed(int(seed))
        self._asleep = False
        self.last_missing_logprobs = 0
        self.llm = None
        devices = self._all_gather(self.transport.device_id())
        self._owner_call(lambda: self._build_llm(devices))

    def _build_llm(self, devices: list[int]) -> None:
        with owner_env(devices):  # imported here, on the owner only
            from tensorrt_llm import LLM
            from tensorrt_llm.llmapi import KvCacheConfig

            kwargs = llm_kwargs(self.cfg)
            kwargs["kv_cache_config"] = KvCacheConfig(**kwargs["kv_cache_config"])
            self.llm = LLM(**kwargs)

    @classmethod
    def from_config(cls, run_cfg, tokenizer_dir: str | None = None, *, pad_token_id: int = 0,
                    replica: ReplicaGroup | None = None) -> "TrtllmGenerationEngine":
        """The engine of a run config (``nemo_gift.config.schema.RunConfig``), see
        :func:`config_from_run`."""
        return cls(config_from_run(run_cfg, tokenizer_dir), run_cfg.model, pad_token_id=pad_token_id,
                   seed=run_cfg.seed, replica=replica)

    @property
    def is_owner(self) -> bool:
        return self.replica.is_owner

    # ------------------------------------------------------------------ collectives

    def _all_gather(self, obj) -> list:
        if self.replica.group is None:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.replica.size
        dist.all_gather_object(out, obj, group=self.replica.group)
        return out

    def _owner_call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the owner; its result (or error) reaches every rank of the replica."""
        result, error = None, None
        if self.is_owner:
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - re-raised on every rank below
                if self.replica.group is None:
                    raise
                error = f"{type(err).__name__}: {err}"
        if self.replica.group is not None:
            import torch.distributed as dist

            box = [(result, error)]
            dist.broadcast_object_list(box, src=self.replica.ranks[0], group=self.replica.group)
            result, error = box[0]
        if error is not None:
            raise RuntimeError(f"TensorRT-LLM engine (owned by rank {self.replica.ranks[0]}): {error}")
        return result

    # ------------------------------------------------------------------ GenerationBackend

    def generate(self, prompts: Sequence[Sequence[int]], n: int = 1,
                 sampling: SamplingConfig | None = None) -> GenerationOutput:
        """Sample ``n`` responses per prompt, on the owner; every rank of the replica gets them."""
        sampling = sampling or SamplingConfig()
        if self._asleep:
            raise RuntimeError("the engine is asleep: call wake() before generate()")
        seed = sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**31 - 1, (1,), generator=self._seeds))
        out = self._owner_call(lambda: self._generate(prompts, n, sampling, seed))
        self.last_missing_logprobs = int(out.logprobs.isnan().sum())
        return out

    def _generate(self, prompts, n: int, sampling: SamplingConfig, seed: int) -> GenerationOutput:
        from tensorrt_llm import SamplingParams

        kwargs, copies = sampling_params_kwargs(sampling, n, seed, self.pad_token_id)
        requests = [{"prompt_token_ids": list(map(int, p))} for p in prompts for _ in range(copies)]
        # one seed per request: with a shared seed, every request would draw the same random numbers
        params = [SamplingParams(**dict(kwargs, seed=(seed + i) % 2**31)) for i in range(len(requests))]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        return convert_outputs(outputs, len(prompts), n, sampling.stop_token_ids, self.pad_token_id)

    def refit(self, weights: HFWeights) -> None:
        """Push full HF-named tensors into the engine, bucket by bucket: every rank of the
        replica shares its own copy from its device. Call it after ``wake()``."""
        if self._asleep:
            raise RuntimeError("the engine is asleep: call wake() before refit()")
        key = self.transport.device_key()
        tensors = refit_tensors(weights, self.model_cfg, self.cfg.dtype)
        for bucket in bucket_by_bytes(tensors, self.cfg.refit_bucket_bytes):
            staged = [(name, self.transport.stage(t)) for name, t in bucket]
            payloads = self._gather_to_owner(serialize_ipc_handles(staged, key, self.transport.handle))
            self._owner_call(lambda: self._update_weights({k: v for p in payloads or () for k, v in p.items()}))
            del staged  # the owner's reply came after every worker had copied the bucket
        self._owner_call(lambda: self._update_weights(None))  # finalize

    def _gather_to_owner(self, payload: dict) -> list[dict] | None:
        if self.replica.group is None:
            return [payload]
        import torch.distributed as dist

        gathered = [None] * self.replica.size if self.is_owner else None
        dist.gather_object(payload, gathered, dst=self.replica.ranks[0], group=self.replica.group)
        return gathered

    def _update_weights(self, handles: dict | None) -> None:
        self.llm._collective_rpc("update_weights", args=(handles,))

    def sleep(self) -> None:
        """Release the tagged GPU memory (weights, KV cache, executor buffers)."""
        if self._asleep:
            return
        if self.cfg.enable_sleep:
            self._owner_call(lambda: self.llm._collective_rpc("sleep", args=(list(self.cfg.sleep_tags),)))
        self._asleep = True

    def wake(self) -> None:
        """Take the released memory back; refit before generating (the weights may be stale)."""
        if not self._asleep:
            return
        if self.cfg.enable_sleep:
            self._owner_call(lambda: self.llm._collective_rpc("wakeup", args=(list(self.cfg.sleep_tags),)))
        self._asleep = False

    def shutdown(self) -> None:
        """Stop the engine's workers (owner only; not collective)."""
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None


def wake_and_refit(engine, weights: Callable[[], HFWeights]) -> None:
    """What the trainer runs before a rollout: ``engine.wake()``, then ``engine.refit(weights())``
    (``weights`` is collective over the model-parallel group, e.g. ``policy.hf_weights``)."""
    engine.wake()
    engine.refit(weights())
