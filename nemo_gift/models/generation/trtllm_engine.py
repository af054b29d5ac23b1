"""TensorRT-LLM rollouts (GPU only), refit with the policy's weights after every update.

The one module that imports ``tensorrt_llm``, and only inside :class:`TrtllmGenerationEngine`
(``pip install -e '.[gpu]' --extra-index-url https://pypi.nvidia.com``; the PyPI package is a
stub that downloads from NVIDIA's index at build time). Written against TensorRT-LLM 1.2.x,
the version the ``gpu`` extra pins (1.2.1), from its sources and from verl's
(``verl/workers/rollout/trtllm_rollout``, PR #4665) and NeMo-RL's
(``nemo_rl/models/generation/trtllm``, PR #2420) integrations.

How it works
------------
- Engine: the LLM API with the PyTorch backend and the Ray orchestrator
  (``LLM(model=hf_dir, backend="pytorch", orchestrator_type="ray",
  ray_worker_extension_cls="tensorrt_llm.llmapi.rlhf_utils.WorkerExtension", enable_sleep=True)``),
  fed token ids (no tokenizer: ``skip_tokenizer_init``, ``detokenize=False``).
- Sampling: :func:`sampling_params_kwargs` translates a :class:`SamplingConfig`. TRT-LLM treats
  ``top_k in (None, 1)`` with ``top_p in (None, 0)`` as greedy, so sampling always sets an
  explicit ``top_k`` (0 = all tokens); greedy uses ``top_k=1`` and, since the LLM API refuses
  ``n > 1`` with greedy decoding, submits each prompt n times. ``end_id=-1`` turns the
  tokenizer's EOS off: only ``stop_token_ids`` stop, and ``include_stop_str_in_output`` keeps
  the stop token, as the padding contract requires. ``logprobs=1`` returns the sampled
  token's log-prob (looked up by token id, which works whether TRT-LLM counts the sampled
  token among the top-k or adds it). A ``seed=None`` call gets a seed from the engine's own
  generator: TRT-LLM's default seed is the same constant every call.
- Refit, through TRT-LLM's RL weight-update path (``tensorrt_llm/llmapi/rlhf_utils.py``
  ``WorkerExtension.update_weights``, called with ``LLM._collective_rpc``): the HF-named full
  tensors from ``export_hf_tensors`` are named and cast for TRT-LLM
  (:func:`refit_tensors`), grouped into buckets of at most ``refit_bucket_bytes``
  (:func:`bucket_by_bytes`), and each bucket is sent as CUDA IPC handles
  (``{device_uuid: base64(pickle([(name, handle), ...]))}``, :func:`serialize_ipc_handles`).
  The first call makes the workers prepare for reloading; each bucket is loaded with partial
  loading allowed; ``update_weights(None)`` finalizes (post-load processing, prefix cache
  reset). Colocated training: every rank of ``refit_group`` holds the full tensors on its own
  GPU (``export_hf_tensors`` yields the same sequence on every model-parallel rank), sends its
  handles to the group's first rank, which owns the ``LLM`` and calls the RPC; each TRT-LLM
  worker opens the handles of its own GPU. A barrier after each bucket keeps the tensors alive
  until the workers have copied them.
- Sleep and wake: ``sleep``/``wakeup`` worker RPCs with memory tags (release and resume of the
  weights, KV cache and the executor's other buffers, verl's tag list), so that training can
  use the GPU memory in between. Order in a step: ``wake()``, ``refit()``, ``generate()``,
  ``sleep()``.

Executed and not executed
-------------------------
Executed (CPU tests, ``tests/unit/generation/test_trtllm_engine.py``): the pure-Python parts,
:func:`sampling_params_kwargs`, :func:`llm_kwargs`, :func:`config_from_run`, :func:`refit_tensors`,
:func:`bucket_by_bytes`, :func:`serialize_ipc_handles` (with a stand-in for CUDA IPC),
:func:`convert_outputs`, and the error raised where TensorRT-LLM is absent.

NOT executed anywhere yet (no GPU machine with TensorRT-LLM was available): everything that
imports ``tensorrt_llm``: building the ``LLM`` (also through ``from_config``), ``generate``,
the IPC refit RPCs, ``sleep``/``wake``, and starting from dummy weights. In particular these facts are unverified on 1.2.1: that the argument
names above (``orchestrator_type``, ``ray_worker_extension_cls``, ``enable_sleep``,
``end_id=-1``) are accepted; that ``update_weights`` accepts the serialized handle format;
that a tied model needs its ``lm_head.weight`` sent (sent anyway; harmless if ignored); which
distribution TRT-LLM's log-probs are taken under (raw or after temperature/top-k/top-p; the
torch engine's contract is the latter). ``tests/unit/generation/test_trtllm_engine.py``
has a ``gpu`` test that checks all of this against the torch engine where it can run.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import pickle
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import torch

from nemo_gift.models.generation.interfaces import GenerationOutput, HFWeights, SamplingConfig
from nemo_gift.models.policy.config import ModelConfig
from nemo_gift.utils.torch_utils import TORCH_DTYPES as _DTYPES

__all__ = [
    "INSTALL_HINT", "TrtllmConfig", "TrtllmGenerationEngine", "bucket_by_bytes", "config_from_run", "convert_outputs",
    "llm_kwargs", "refit_tensors", "sampling_params_kwargs", "serialize_ipc_handles", "trtllm_available",
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
    from nemo_gift.export.mapping import expected_hf_shapes

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
    """The engine settings of a run config (``nemo_gift.config.schema.RunConfig``): its TP size,
    dtype, ``model.max_position_embeddings`` and ``rollout.trtllm_gpu_memory_fraction``, the
    weights of ``init.hf_checkpoint``. Without a checkpoint the engine starts from a
    ``config.json`` written for ``run_cfg.model`` (in a new temporary directory) with dummy
    weights: refit it before the first ``generate``."""
    import json
    import tempfile

    from nemo_gift.export.mapping import model_config_to_hf_config

    model_dir, load_format = run_cfg.init.hf_checkpoint, "auto"
    if model_dir is None:
        model_dir, load_format = tempfile.mkdtemp(prefix="nemo_gift_trtllm_"), "dummy"
        with open(f"{model_dir}/config.json", "w") as f:
            json.dump(model_config_to_hf_config(run_cfg.model, dtype=run_cfg.parallel.params_dtype), f)
    return TrtllmConfig(
        model_dir=model_dir, load_format=load_format, tokenizer_dir=tokenizer_dir,
        tensor_parallel_size=run_cfg.parallel.tensor_model_parallel_size, dtype=run_cfg.parallel.params_dtype,
        max_seq_len=run_cfg.model.max_position_embeddings,
        kv_cache_free_gpu_memory_fraction=run_cfg.rollout.trtllm_gpu_memory_fraction,
    )


def _sampled_logprob(entry: Any, token: int) -> float:
    """The log-prob of ``token`` from one position of ``CompletionOutput.logprobs``: a float,
    or a ``{token_id: Logprob | float}`` dict."""
    if isinstance(entry, dict):
        if token not in entry:
            raise ValueError(f"TRT-LLM returned no log-prob for the sampled token {token}")
        entry = entry[token]
    return float(getattr(entry, "logprob", entry))


def convert_outputs(request_outputs: Sequence[Any], num_prompts: int, n: int, stop_token_ids: Sequence[int],
                    pad_token_id: int) -> GenerationOutput:
    """TRT-LLM ``RequestOutput`` objects, in submission order (``num_prompts * copies``
    requests, ``n / copies`` outputs each, prompt-major), to a :class:`GenerationOutput`."""
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
        reasons.append(out.finish_reason)
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
    """The :class:`~nemo_gift.models.generation.interfaces.GenerationBackend` on TensorRT-LLM.

    Construct it on every rank of ``refit_group`` (default: this process alone). The group's
    first rank owns the ``LLM`` and serves ``generate``; every rank takes part in ``refit``.

    Args:
        cfg: the engine's settings.
        model_cfg: the policy architecture (checks refit names and shapes).
        pad_token_id: fills ``GenerationOutput.tokens`` past each response's end.
        seed: seeds the generator that gives ``seed=None`` calls their seeds.
        refit_group: the ``torch.distributed`` group whose ranks hold the refit tensors.
    """

    def __init__(self, cfg: TrtllmConfig, model_cfg: ModelConfig, *, pad_token_id: int = 0, seed: int = 1234,
                 refit_group=None):
        if not trtllm_available():
            raise ImportError(f"TensorRT-LLM is not installed; it comes with the gpu extra: {INSTALL_HINT}")
        import torch.distributed as dist

        self.cfg, self.model_cfg, self.pad_token_id = cfg, model_cfg, int(pad_token_id)
        self.refit_group = refit_group
        self._distributed = dist.is_available() and dist.is_initialized() and (
            refit_group is not None or dist.get_world_size() > 1)
        self.is_leader = not self._distributed or dist.get_rank(refit_group) == 0
        self._seeds = torch.Generator().manual_seed(int(seed))
        self._asleep = False
        self.llm = None
        if self.is_leader:
            from tensorrt_llm import LLM
            from tensorrt_llm.llmapi import KvCacheConfig

            kwargs = llm_kwargs(cfg)
            kwargs["kv_cache_config"] = KvCacheConfig(**kwargs["kv_cache_config"])
            self.llm = LLM(**kwargs)

    @classmethod
    def from_config(cls, run_cfg, tokenizer_dir: str | None = None, *, pad_token_id: int = 0,
                    refit_group=None) -> "TrtllmGenerationEngine":
        """The engine of a run config (``nemo_gift.config.schema.RunConfig``), see
        :func:`config_from_run`."""
        return cls(config_from_run(run_cfg, tokenizer_dir), run_cfg.model, pad_token_id=pad_token_id,
                   seed=run_cfg.seed, refit_group=refit_group)

    def generate(self, prompts: Sequence[Sequence[int]], n: int = 1,
                 sampling: SamplingConfig | None = None) -> GenerationOutput:
        """Sample ``n`` responses per prompt (first rank of ``refit_group`` only)."""
        from tensorrt_llm import SamplingParams

        sampling = sampling or SamplingConfig()
        if self.llm is None:
            raise RuntimeError("generate() runs on the first rank of refit_group, which owns the engine")
        if self._asleep:
            raise RuntimeError("the engine is asleep: call wake() before generate()")
        seed = sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**31 - 1, (1,), generator=self._seeds))
        kwargs, copies = sampling_params_kwargs(sampling, n, seed, self.pad_token_id)
        requests = [{"prompt_token_ids": list(map(int, p))} for p in prompts for _ in range(copies)]
        outputs = self.llm.generate(requests, sampling_params=SamplingParams(**kwargs), use_tqdm=False)
        return convert_outputs(outputs, len(prompts), n, sampling.stop_token_ids, self.pad_token_id)

    def refit(self, weights: HFWeights) -> None:
        """Push full HF-named tensors (on this rank's GPU) into the engine, bucket by bucket.
        Collective over ``refit_group``; call it after ``wake()``."""
        import torch.distributed as dist
        from tensorrt_llm._torch.utils import get_device_uuid

        if self._asleep:
            raise RuntimeError("the engine is asleep: call wake() before refit()")
        uuid = get_device_uuid(torch.cuda.current_device())
        tensors = refit_tensors(weights, self.model_cfg, self.cfg.dtype)
        for bucket in bucket_by_bytes(tensors, self.cfg.refit_bucket_bytes):
            bucket = [(name, t.cuda()) for name, t in bucket]
            handles = serialize_ipc_handles(bucket, uuid)
            if self._distributed:
                gathered = [None] * dist.get_world_size(self.refit_group) if self.is_leader else None
                dist.gather_object(handles, gathered, group_dst=0, group=self.refit_group)
                if self.is_leader:
                    handles = {k: v for part in gathered for k, v in part.items()}
            if self.is_leader:
                self.llm._collective_rpc("update_weights", args=(handles,))
            if self._distributed:
                dist.barrier(group=self.refit_group)  # the workers have copied this bucket
            del bucket
        if self.is_leader:
            self.llm._collective_rpc("update_weights", args=(None,))  # finalize
        if self._distributed:
            dist.barrier(group=self.refit_group)

    def sleep(self) -> None:
        """Release the tagged GPU memory (weights, KV cache, executor buffers)."""
        if self._asleep:
            return
        if self.llm is not None and self.cfg.enable_sleep:
            self.llm._collective_rpc("sleep", args=(list(self.cfg.sleep_tags),))
        self._asleep = True

    def wake(self) -> None:
        """Take the released memory back (the weights' contents are restored)."""
        if not self._asleep:
            return
        if self.llm is not None and self.cfg.enable_sleep:
            self.llm._collective_rpc("wakeup", args=(list(self.cfg.sleep_tags),))
        self._asleep = False

    def shutdown(self) -> None:
        """Stop the engine's workers."""
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None
