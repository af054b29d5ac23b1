"""``tensorrt_llm.llmapi.llm.LLM`` and ``RequestOutput`` (double), read from
``tensorrt_llm/llmapi/llm.py@0acd798d`` (the same commit as the ``ray_gpu_worker.py`` read); every citation is
``path:LINE@commit`` in NVIDIA/TensorRT-LLM. In that copy ``LLM``
(tensorrt_llm/llmapi/llm.py:1104@0acd798d) is a ``_TorchLLM`` (tensorrt_llm/llmapi/llm.py:979@0acd798d),
which is a ``BaseLLM`` (tensorrt_llm/llmapi/llm.py:113@0acd798d).

Contract enforced (what the real one does, or what would fail on GPUs):
- keywords: only ``LLM``'s parameters and known ``TorchLlmArgs`` fields ("got invalid argument",
  tensorrt_llm/llmapi/llm.py:159-166@0acd798d); ``backend`` defaults to ``"pytorch"``
  (tensorrt_llm/llmapi/llm.py:999@0acd798d);
- placement: one worker per visible device (``CUDA_VISIBLE_DEVICES``), at least
  ``tensor_parallel_size`` of them (tensorrt_llm/llmapi/llm.py:192-197@0acd798d); a device already hosting a
  worker of another live ``LLM`` (this process or another, through ``$TRTLLM_DOUBLE_STATE_DIR``)
  is refused: one owner per engine GPU, so one ``LLM`` per replica (the double's own check);
- ``_collective_rpc`` needs the Ray orchestrator; an ``LLM`` cannot be pickled (so no rank but
  its owner can hold it);
- ``generate`` needs ``end_id`` without a tokenizer, refuses to run after ``shutdown``, and (the
  double's own check) while asleep.
"""

from __future__ import annotations

import atexit
import os
import weakref
from pathlib import Path
from typing import Any, Optional

import trtllm_double_log
from tensorrt_llm.executor.ray_gpu_worker import RayGPUWorker, inject_worker_extension
from tensorrt_llm.llmapi.llm_args import TORCH_LLM_ARGS, check_load_format
from tensorrt_llm.sampling_params import SamplingParams

_LIVE_DEVICES: dict[int, int] = {}  # device -> id(LLM), when no state dir is shared
_NON_RAY_EXECUTOR = "<class 'tensorrt_llm.executor.proxy.GenerationExecutorProxy'>"


class RequestOutput:
    """The result of one request (tensorrt_llm/llmapi/llm.py:54@0acd798d): ``request_id``, ``prompt``,
    ``prompt_token_ids``, ``outputs``, ``finished`` (its ``_repr_fields``,
    tensorrt_llm/llmapi/llm.py:90-93@0acd798d)."""

    def __init__(self, request_id: int, prompt_token_ids: list[int], outputs: list):
        self.request_id, self.prompt, self.prompt_token_ids = request_id, None, prompt_token_ids
        self.outputs, self.finished = outputs, True


class LLM:
    """``LLM`` (tensorrt_llm/llmapi/llm.py:1104@0acd798d); the constructor's parameters are
    ``BaseLLM.__init__``'s (tensorrt_llm/llmapi/llm.py:118-128@0acd798d)."""

    def __init__(self, model, tokenizer=None, tokenizer_mode: str = "auto", skip_tokenizer_init: bool = False,
                 trust_remote_code: bool = False, tensor_parallel_size: int = 1, dtype: str = "auto",
                 revision: Optional[str] = None, tokenizer_revision: Optional[str] = None, **kwargs: Any) -> None:
        for key in kwargs:
            if key not in TORCH_LLM_ARGS:
                raise ValueError(f"{self.__class__.__name__} got invalid argument: {key}")
        if kwargs.get("backend", "pytorch") != "pytorch":
            raise ValueError("the double implements the PyTorch backend only")
        load_format = check_load_format(kwargs.get("load_format", "auto"))
        self.args = dict(kwargs, model=str(model), tokenizer=tokenizer, skip_tokenizer_init=skip_tokenizer_init,
                         tensor_parallel_size=tensor_parallel_size, dtype=dtype)
        self._orchestrator_type = kwargs.get("orchestrator_type")
        self._tokenizer = None if skip_tokenizer_init or tokenizer is None else tokenizer
        self._next_id = 0
        self._devices = self._place(tensor_parallel_size)
        worker_cls = inject_worker_extension(RayGPUWorker, kwargs.get("ray_worker_extension_cls"))
        self.workers = [worker_cls(d, str(model), dtype, load_format,
                                   bool(kwargs.get("enable_sleep", False))) for d in self._devices]
        trtllm_double_log.record(
            "llm_init", devices=self._devices, tensor_parallel_size=tensor_parallel_size,
            orchestrator_type=self._orchestrator_type, load_format=load_format,
            enable_sleep=bool(kwargs.get("enable_sleep", False)), weights_digest=self.workers[0].weights_digest,
            kv_cache_config=vars(kwargs["kv_cache_config"]) if "kv_cache_config" in kwargs else None,
            env={k: os.environ.get(k) for k in ("TLLM_DISABLE_MPI", "TLLM_RAY_FORCE_LOCAL_CLUSTER",
                                                "CUDA_VISIBLE_DEVICES", "MASTER_PORT")},
            launcher_vars=sorted(k for k in os.environ if k.startswith(("SLURM_", "PMI_", "PMIX_", "OMPI_"))))
        atexit.register(LLM._shutdown_wrapper, weakref.ref(self))  # tensorrt_llm/llmapi/llm.py:246@0acd798d

    # ------------------------------------------------------------------ placement

    def _place(self, tp: int) -> list[int]:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = [int(d) for d in visible.split(",")] if visible else list(range(tp))
        if len(devices) < tp:
            # tensorrt_llm/llmapi/llm.py:192-197@0acd798d
            raise RuntimeError(f"Only {len(devices)} GPUs are available, but {tp} are required.")
        devices = devices[:tp]
        for d in devices:
            self._claim(d)
        return devices

    def _claim(self, device: int) -> None:
        root = trtllm_double_log.state_dir()
        if root is None:
            if device in _LIVE_DEVICES:
                raise RuntimeError(f"device {device} already hosts a worker of another LLM")
            _LIVE_DEVICES[device] = id(self)
            return
        root.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(root / f"device-{device}.lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = (root / f"device-{device}.lock").read_text()
            raise RuntimeError(f"device {device} already hosts a worker of another LLM (owner {owner})") from None
        os.write(fd, f"pid {os.getpid()} rank {os.environ.get('RANK', '0')}".encode())
        os.close(fd)

    def _release(self) -> None:
        root = trtllm_double_log.state_dir()
        for d in self._devices:
            if root is None:
                _LIVE_DEVICES.pop(d, None)
            else:
                Path(root / f"device-{d}.lock").unlink(missing_ok=True)
        self._devices = []

    # ------------------------------------------------------------------ API

    def generate(self, inputs, sampling_params: Optional[SamplingParams] = None, use_tqdm: bool = True, **_):
        """``BaseLLM.generate`` (tensorrt_llm/llmapi/llm.py:259@0acd798d): a list of token ids or of
        prompts, one ``SamplingParams`` or one per prompt; "LLM is shutting down" after
        ``shutdown`` (tensorrt_llm/llmapi/llm.py:378-379@0acd798d)."""
        if not self._devices:
            raise RuntimeError("LLM is shutting down")
        # tensorrt_llm/llmapi/llm.py:300-303@0acd798d
        unbatched = not isinstance(inputs, list) or (inputs and isinstance(inputs[0], int))
        requests = [inputs] if unbatched else list(inputs)
        per_request = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(requests)
        params_list = [self._prepare_sampling_params(p) for p in per_request]
        for w in self.workers:
            w._check_awake("generate")
        results = []
        for req, params in zip(requests, params_list):
            ids = [int(t) for t in (req["prompt_token_ids"] if isinstance(req, dict) else req)]
            outs = self.workers[0].engine.generate(ids, params)
            results.append(RequestOutput(self._next_id, ids, outs))
            self._next_id += 1
        trtllm_double_log.record(
            "generate", greedy=params_list[0]._greedy_decoding, n=params_list[0].n, seeds=[p.seed for p in params_list],
            max_tokens=params_list[0].max_tokens,
            prompts=[r.prompt_token_ids for r in results],
            responses=[[o.token_ids for o in r.outputs] for r in results],
            weights_digest=self.workers[0].weights_digest)
        return results[0] if unbatched else results

    def _prepare_sampling_params(self, sampling_params):
        """``BaseLLM._prepare_sampling_params`` (tensorrt_llm/llmapi/llm.py:590@0acd798d): ``None``
        becomes a default ``SamplingParams()`` (tensorrt_llm/llmapi/llm.py:593-594@0acd798d), whose ``end_id``
        needs a tokenizer (tensorrt_llm/llmapi/llm.py:596-600@0acd798d); any other type is refused
        (tensorrt_llm/llmapi/llm.py:603-606@0acd798d)."""
        if sampling_params is None:
            sampling_params = SamplingParams()
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError(f"The sampling_params must be type SamplingParams or None, but got {type(sampling_params)}")
        if sampling_params.end_id is None and self._tokenizer is None:
            raise ValueError("tokenizer is required to reset end_id if it is None, or you can explicitly specify "
                             "the end_id for sampling_params")
        return sampling_params

    def _collective_rpc(self, method: str, args: tuple = (), kwargs: Optional[dict] = None, non_block: bool = False,
                        unique_reply_rank: Optional[int] = None) -> list:
        """``_TorchLLM._collective_rpc`` (tensorrt_llm/llmapi/llm.py:1017@0acd798d), served by
        ``RayExecutor.collective_rpc`` (tensorrt_llm/executor/ray_executor.py:195@0777969c): the one
        worker ``unique_reply_rank`` or all of them
        (tensorrt_llm/executor/ray_executor.py:201-202@0777969c), one result per worker
        (tensorrt_llm/executor/ray_executor.py:215@0777969c). Without the Ray orchestrator the executor
        has no ``collective_rpc`` and the call is refused
        (tensorrt_llm/llmapi/llm.py:1036-1042@0acd798d); which executor class the message names is not
        read."""
        if self._orchestrator_type != "ray":
            raise ValueError(f"Executor type {_NON_RAY_EXECUTOR} does not support collective RPC.")
        workers = [self.workers[unique_reply_rank]] if unique_reply_rank is not None else self.workers
        results = [getattr(w, method)(*args, **(kwargs or {})) for w in workers]
        if method == "update_weights" and args and args[0] is None:
            digests = {w.weights_digest for w in self.workers}
            if len(digests) != 1:
                raise RuntimeError("the TP workers finished a weight update with different weights")
        return results

    def shutdown(self) -> None:
        """``BaseLLM.shutdown`` (tensorrt_llm/llmapi/llm.py:760@0acd798d)."""
        if self._devices:
            trtllm_double_log.record("shutdown", devices=self._devices)
            self._release()

    @staticmethod
    def _shutdown_wrapper(self_ref):
        """tensorrt_llm/llmapi/llm.py:770@0acd798d."""
        instance = self_ref()
        if instance is not None:
            instance.shutdown()

    def __getstate__(self):
        """tensorrt_llm/llmapi/llm.py:787-788@0acd798d."""
        raise RuntimeError("LLM object can not be pickled.")

    def __del__(self):
        """tensorrt_llm/llmapi/llm.py:790@0acd798d."""
        try:
            self.shutdown()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
