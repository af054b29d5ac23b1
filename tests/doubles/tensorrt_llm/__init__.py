"""A CPU test double of TensorRT-LLM 1.2's LLM API, for the tests of
``nemo_gift.models.generation.trtllm_engine``. Importable as ``tensorrt_llm`` only where a test puts
``tests/doubles`` on the path.

What it mimics, and where each name was read. Sources: NVIDIA/TensorRT-LLM, stored copies read through
the project's source index (``read_file`` with the commit). Every citation is ``path:LINE@commit``; line
numbers were counted in the pages the index returned, concatenated as returned, each page's length
checked against the index's offsets. The copies are of the 1.2 development line but not all of one
commit: ``@b35ac1b6`` is the 1.2.0rc2 version commit (``tensorrt_llm/version.py``); the others were not
matched to a version. The modules of this package cite their lines in detail; in short:

- ``LLM(model, tokenizer, tokenizer_mode, skip_tokenizer_init, trust_remote_code, tensor_parallel_size,
  dtype, revision, tokenizer_revision, **kwargs)``: tensorrt_llm/llmapi/llm.py:1104@0acd798d (``class
  LLM``) and tensorrt_llm/llmapi/llm.py:118@0acd798d (``BaseLLM.__init__``); keyword validation, "got
  invalid argument": tensorrt_llm/llmapi/llm.py:159-166@0acd798d; ``generate(inputs, sampling_params,
  use_tqdm, ...)``: tensorrt_llm/llmapi/llm.py:259@0acd798d; ``_prepare_sampling_params`` (``end_id``
  needed without a tokenizer): tensorrt_llm/llmapi/llm.py:590@0acd798d; ``shutdown``:
  tensorrt_llm/llmapi/llm.py:760@0acd798d; ``__getstate__`` ("LLM object can not be pickled"):
  tensorrt_llm/llmapi/llm.py:787@0acd798d.
- ``_collective_rpc(method, args, kwargs, non_block, unique_reply_rank)`` -> one result per worker, Ray
  orchestrator only: tensorrt_llm/llmapi/llm.py:1017@0acd798d and ``RayExecutor.collective_rpc``,
  tensorrt_llm/executor/ray_executor.py:195@0777969c.
- Worker placement: one worker per GPU visible to the Ray cluster (``CUDA_VISIBLE_DEVICES``), "Only N
  GPUs are available, but M are required": tensorrt_llm/llmapi/llm.py:192-197@0acd798d;
  ``RayWorkerWrapper.physical_to_local_id``: tensorrt_llm/executor/ray_gpu_worker.py:120@0acd798d.
- ``ray_worker_extension_cls`` injection and its conflict check:
  ``RayWorkerWrapper._inject_worker_extension``, tensorrt_llm/executor/ray_gpu_worker.py:128@0acd798d.
- ``sleep(sleep_tags)`` / ``wakeup(wakeup_tags)`` ("Sleep feature is not enabled"):
  tensorrt_llm/executor/ray_gpu_worker.py:212@0acd798d and
  tensorrt_llm/executor/ray_gpu_worker.py:230@0acd798d; the tags (``ExecutorMemoryType``,
  ``verify_sleep_wakeup_tags``): tensorrt_llm/_torch/virtual_memory.py:70@8579c297 and
  tensorrt_llm/_torch/virtual_memory.py:84@8579c297, with ``MODEL_EXTRA`` as in a later stored copy
  whose commit the index does not report (see ``_torch/virtual_memory.py``).
- ``update_weights(ipc_handles)``: ``WorkerExtension.update_weights``,
  tensorrt_llm/llmapi/rlhf_utils.py:37@04762f3b.
- ``get_device_uuid`` ("GPU-" + the device's UUID): tensorrt_llm/_torch/utils.py:311@a678b91a.
- ``SamplingParams`` fields, validation and greedy rule: tensorrt_llm/sampling_params.py:113@b35ac1b6
  (rule at tensorrt_llm/sampling_params.py:339@b35ac1b6).
- ``RequestOutput`` (tensorrt_llm/llmapi/llm.py:54@0acd798d), ``CompletionOutput(index, text, token_ids,
  cumulative_logprob, logprobs, finish_reason, stop_reason)``
  (tensorrt_llm/executor/result.py:93@a678b91a), ``Logprob(logprob, rank)``
  (tensorrt_llm/executor/result.py:44@a678b91a).
- Log-probs as ``{token_id: Logprob(logprob, rank)}`` of the top-k tokens of the raw distribution:
  ``TorchSampler.handle_logprobs``, tensorrt_llm/_torch/pyexecutor/sampler.py:677@28edbcdb.
- ``TorchLlmArgs`` keywords and ``KvCacheConfig``: tensorrt_llm/llmapi/llm_args.py:2675@0777969c and
  tensorrt_llm/llmapi/llm_args.py:1564@0777969c.
- Importing under srun: verl's TensorRT-LLM docs (volcengine/verl ``docs/workers/trtllm_worker.rst``,
  not line-cited) say the import initializes MPI unless ``TLLM_DISABLE_MPI=1`` and clear the
  SLURM/PMI/PMIx/MPI environment first because it can hang; that import-time behaviour was not read
  in TensorRT-LLM's source. What was read: ``BaseLLM.__init__`` sets ``TLLM_DISABLE_MPI=1`` for the
  Ray orchestrator (tensorrt_llm/llmapi/llm.py:143-147@0acd798d), and the Ray executor passes it to
  its workers (tensorrt_llm/executor/ray_executor.py:126@0777969c). The double raises instead of
  hanging.

What it does NOT mimic: CUDA, Ray, TensorRT-LLM's kernels and its own TP sharding (each worker holds the
full weights and they must agree), KV-cache memory. It generates with a Hugging Face ``transformers``
model built from ``config.json`` and the weights that refit delivered, and it accepts, besides CUDA IPC
handles, the by-value handles of ``nemo_gift.models.generation.trtllm_runtime.CpuTransport`` (the real
one would not). Every call is recorded (``trtllm_double_log``, the double's own log, which mimics
nothing)."""

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
