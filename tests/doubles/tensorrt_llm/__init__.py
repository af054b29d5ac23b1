"""A CPU test double of TensorRT-LLM 1.2's LLM API, for the tests of
``nemo_gift.models.generation.trtllm_engine``. Importable as ``tensorrt_llm`` only where a test
puts ``tests/doubles`` on the path.

What it mimics, and where each name was read (NVIDIA/TensorRT-LLM, stored copies read through
the project's source index; ``@commit`` is the commit of the copy read, and the anchor is the
definition; line numbers are not given because the index returns files in 16 kB pages without
them):

- ``LLM(model, tokenizer, tokenizer_mode, skip_tokenizer_init, trust_remote_code,
  tensor_parallel_size, dtype, revision, tokenizer_revision, **kwargs)``, keyword validation
  ("got invalid argument"), ``generate(inputs, sampling_params, use_tqdm, ...)``,
  ``_prepare_sampling_params`` (``end_id`` needed without a tokenizer), ``shutdown``,
  ``__getstate__`` ("LLM object can not be pickled"): ``tensorrt_llm/llmapi/llm.py``
  (``class LLM`` @00966934, ``class BaseLLM.__init__`` in the index's newest copy).
- ``_collective_rpc(method, args, kwargs, non_block, unique_reply_rank)`` -> one result per
  worker, Ray orchestrator only: ``llmapi/llm.py`` ``_TorchLLM._collective_rpc`` and
  ``executor/ray_executor.py`` ``RayExecutor.collective_rpc`` @0777969c.
- Worker placement: one worker per GPU visible to the Ray cluster (``CUDA_VISIBLE_DEVICES``),
  "Only N GPUs are available, but M are required": ``llmapi/llm.py`` ``BaseLLM.__init__``;
  ``executor/ray_gpu_worker.py`` ``RayWorkerWrapper.physical_to_local_id`` @0acd798d.
- ``ray_worker_extension_cls`` injection and its conflict check:
  ``ray_gpu_worker.py`` ``RayWorkerWrapper._inject_worker_extension`` @0acd798d.
- ``sleep(sleep_tags)`` / ``wakeup(wakeup_tags)`` ("Sleep feature is not enabled"), tag check:
  ``ray_gpu_worker.py`` ``RayGPUWorker.sleep/wakeup`` @0acd798d;
  ``_torch/virtual_memory.py`` ``ExecutorMemoryType``, ``verify_sleep_wakeup_tags`` @b35ac1b6
  (the 1.2.0rc2 version commit).
- ``update_weights(ipc_handles)``: ``llmapi/rlhf_utils.py`` ``WorkerExtension.update_weights``
  @04762f3b (``rlhf_utils.py``).
- ``get_device_uuid``: ``_torch/utils.py`` @a678b91a ("GPU-" + the device's UUID).
- ``SamplingParams`` fields and the greedy rule: ``sampling_params.py`` @000a01de and the
  "Greedy decoding in the LLM API does not allow multiple returns" check.
- ``RequestOutput.outputs``, ``CompletionOutput(index, text, token_ids, cumulative_logprob,
  logprobs, finish_reason, stop_reason)``, ``Logprob(logprob, rank)``:
  ``executor/result.py`` @a678b91a.
- Log-probs as ``{token_id: Logprob(logprob, rank)}`` of the top-k tokens of the raw
  distribution: ``_torch/pyexecutor/sampler.py`` ``handle_logprobs`` @28edbcdb.
- Importing under srun: the real import initializes MPI unless ``TLLM_DISABLE_MPI=1``, and
  verl's TensorRT-LLM docs (volcengine/verl ``docs/workers/trtllm_worker.rst``) clear the
  SLURM/PMI/PMIx/MPI environment first because it can hang. The double raises instead of
  hanging.

What it does NOT mimic: CUDA, Ray, TensorRT-LLM's kernels and its own TP sharding (each worker
holds the full weights and they must agree), KV-cache memory. It generates with a Hugging Face
``transformers`` model built from ``config.json`` and the weights that refit delivered, and it
accepts, besides CUDA IPC handles, the by-value handles of
``nemo_gift.models.generation.trtllm_runtime.CpuTransport`` (the real one would not).
Every call is recorded (``trtllm_double_log``).
"""

import os

__version__ = "1.2.1"

_CLEARED = ("SLURM_", "PMI_", "PMIX_", "MPI_", "OMPI_")


def _check_import_env() -> None:
    import trtllm_double_log

    mpi_disabled = os.environ.get("TLLM_DISABLE_MPI") == "1"
    launcher_vars = sorted(k for k in os.environ if k.startswith(_CLEARED))
    trtllm_double_log.record("import", mpi_disabled=mpi_disabled, launcher_vars=launcher_vars)
    if launcher_vars and not mpi_disabled:
        raise RuntimeError(
            "tensorrt_llm imported with MPI enabled and the launcher's environment present "
            f"({launcher_vars[:3]}...): the real import initializes MPI here and can hang under srun")


_check_import_env()

from tensorrt_llm.llmapi.llm import LLM  # noqa: E402
from tensorrt_llm.sampling_params import SamplingParams  # noqa: E402

__all__ = ["LLM", "SamplingParams", "__version__"]
