"""``tensorrt_llm.executor.ray_gpu_worker`` (double): one worker per engine GPU, read from
``tensorrt_llm/executor/ray_gpu_worker.py@0acd798d`` (citations are ``path:LINE@commit`` in
NVIDIA/TensorRT-LLM): ``RayWorkerWrapper._inject_worker_extension``
(tensorrt_llm/executor/ray_gpu_worker.py:128@0acd798d; the extension class is resolved by qualified
name, tensorrt_llm/executor/ray_gpu_worker.py:34@0acd798d, and mixed in; a name both define is refused,
tensorrt_llm/executor/ray_gpu_worker.py:143-148@0acd798d), ``RayGPUWorker.sleep(sleep_tags)``
(tensorrt_llm/executor/ray_gpu_worker.py:212@0acd798d) / ``wakeup(wakeup_tags)``
(tensorrt_llm/executor/ray_gpu_worker.py:230@0acd798d), refused unless ``enable_sleep``
(tensorrt_llm/executor/ray_gpu_worker.py:215@0acd798d,
tensorrt_llm/executor/ray_gpu_worker.py:233@0acd798d), tags checked by ``verify_sleep_wakeup_tags``
(tensorrt_llm/executor/ray_gpu_worker.py:218@0acd798d,
tensorrt_llm/executor/ray_gpu_worker.py:236@0acd798d). In-process here; Ray actors in TensorRT-LLM
(``RayWorkerWrapper``, tensorrt_llm/executor/ray_gpu_worker.py:42@0acd798d)."""

import importlib

import trtllm_double_log
from tensorrt_llm._double_engine import ModelEngine
from tensorrt_llm._torch.utils import get_device_uuid
from tensorrt_llm._torch.virtual_memory import verify_sleep_wakeup_tags


class RayGPUWorker:
    """tensorrt_llm/executor/ray_gpu_worker.py:157@0acd798d. The real worker's ``device_id`` is the local
    CUDA index (tensorrt_llm/executor/ray_gpu_worker.py:74@0acd798d, from ``physical_to_local_id``,
    tensorrt_llm/executor/ray_gpu_worker.py:58@0acd798d); the double keeps the physical id (see
    ``tensorrt_llm._torch.utils``)."""

    def __init__(self, device_id: int, model_dir: str, dtype: str, load_format: str, enable_sleep: bool):
        self.device_id = device_id
        self.enable_sleep = enable_sleep
        self.engine = ModelEngine(model_dir, dtype, load_format)
        self.asleep = False
        self.reloading = False
        self.weights_digest = self.engine.digest()

    def report_device_id(self) -> str:
        """``RayWorkerWrapper.report_device_id``, tensorrt_llm/executor/ray_gpu_worker.py:87@0acd798d."""
        return get_device_uuid(self.device_id)

    def _check_awake(self, what: str) -> None:
        """Not in TensorRT-LLM: the double refuses what would touch released GPU memory."""
        if self.asleep:
            raise RuntimeError(f"{what} on a sleeping worker: its weights and KV cache are released; "
                               "call wakeup() first")

    def sleep(self, sleep_tags):
        """tensorrt_llm/executor/ray_gpu_worker.py:212@0acd798d."""
        self._memory("sleep", sleep_tags, asleep=True)

    def wakeup(self, wakeup_tags):
        """tensorrt_llm/executor/ray_gpu_worker.py:230@0acd798d."""
        self._memory("wakeup", wakeup_tags, asleep=False)

    def _memory(self, what: str, tags, asleep: bool) -> None:
        """Release (sleep) or materialize (wakeup) the tagged memory; the ``enable_sleep`` check and
        its message are tensorrt_llm/executor/ray_gpu_worker.py:213-216@0acd798d."""
        if not self.enable_sleep:
            raise ValueError("Sleep feature is not enabled, please set enable_sleep=True in the LLM arguments.")
        tags = verify_sleep_wakeup_tags(tags)
        self.asleep = asleep
        trtllm_double_log.record(what, device=get_device_uuid(self.device_id), tags=[t.value for t in tags])


def inject_worker_extension(worker_class, extension_cls_name):
    """``RayWorkerWrapper._inject_worker_extension``, tensorrt_llm/executor/ray_gpu_worker.py:128@0acd798d
    (``resolve_obj_by_qualname`` tensorrt_llm/executor/ray_gpu_worker.py:34@0acd798d, "Failed to load"
    tensorrt_llm/executor/ray_gpu_worker.py:139@0acd798d, conflict check
    tensorrt_llm/executor/ray_gpu_worker.py:143-148@0acd798d, the derived class
    tensorrt_llm/executor/ray_gpu_worker.py:151-153@0acd798d)."""
    if not extension_cls_name:
        return worker_class
    module_name, obj_name = extension_cls_name.rsplit(".", 1)
    try:
        extension_cls = getattr(importlib.import_module(module_name), obj_name)
    except (ImportError, AttributeError, ValueError) as e:
        raise RuntimeError(f"Failed to load worker extension '{extension_cls_name}'") from e
    for attr in dir(extension_cls):
        if not attr.startswith("__") and hasattr(worker_class, attr):
            raise ValueError(f"Worker class {worker_class.__name__} already defines '{attr}', "
                             f"which conflicts with extension {extension_cls.__name__}.")
    return type(f"{worker_class.__name__}With{extension_cls.__name__}", (worker_class, extension_cls),
                {"__module__": worker_class.__module__})
