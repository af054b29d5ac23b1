"""``tensorrt_llm.executor.ray_gpu_worker`` (double): one worker per engine GPU, from
``executor/ray_gpu_worker.py`` @0acd798d: ``RayWorkerWrapper._inject_worker_extension`` (the
extension class is resolved by qualified name and mixed in; a name both define is refused),
``RayGPUWorker.sleep(sleep_tags)`` / ``wakeup(wakeup_tags)`` (refused unless
``enable_sleep``; tags checked by ``verify_sleep_wakeup_tags``). In-process here; Ray actors
in TensorRT-LLM."""

import importlib

import trtllm_double_log
from tensorrt_llm._double_engine import ModelEngine
from tensorrt_llm._torch.utils import get_device_uuid
from tensorrt_llm._torch.virtual_memory import verify_sleep_wakeup_tags


class RayGPUWorker:
    def __init__(self, device_id: int, model_dir: str, dtype: str, load_format: str, enable_sleep: bool):
        self.device_id = device_id
        self.enable_sleep = enable_sleep
        self.engine = ModelEngine(model_dir, dtype, load_format)
        self.asleep = False
        self.reloading = False
        self.weights_digest = self.engine.digest()

    def report_device_id(self) -> str:
        return get_device_uuid(self.device_id)

    def _check_awake(self, what: str) -> None:
        if self.asleep:
            raise RuntimeError(f"{what} on a sleeping worker: its weights and KV cache are released; "
                               "call wakeup() first")

    def sleep(self, sleep_tags):
        self._memory("sleep", sleep_tags, asleep=True)

    def wakeup(self, wakeup_tags):
        self._memory("wakeup", wakeup_tags, asleep=False)

    def _memory(self, what: str, tags, asleep: bool) -> None:
        """Release (sleep) or materialize (wakeup) the tagged memory."""
        if not self.enable_sleep:
            raise ValueError("Sleep feature is not enabled, please set enable_sleep=True in the LLM arguments.")
        tags = verify_sleep_wakeup_tags(tags)
        self.asleep = asleep
        trtllm_double_log.record(what, device=get_device_uuid(self.device_id), tags=[t.value for t in tags])


def inject_worker_extension(worker_class, extension_cls_name):
    """``RayWorkerWrapper._inject_worker_extension``."""
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
