"""``tensorrt_llm.llmapi.rlhf_utils.WorkerExtension`` (double), from ``llmapi/rlhf_utils.py``
@04762f3b: ``update_weights(ipc_handles)`` with ``ipc_handles = {device_uuid:
base64(pickle([(name, (rebuild_fn, args)), ...]))}`` (or the list itself); the first call prepares
the model for reloading, each call with handles opens this worker's device's entry (refusing a
payload without it), rebuilds the tensors (CUDA handles get this worker's device as ``args[6]``)
and reloads them with partial loading allowed; ``update_weights(None)`` finalizes. The payload
is unpickled with an allow-list, as the real one uses ``tensorrt_llm.serialization.loads``."""

import base64
import io
import pickle

import trtllm_double_log
from tensorrt_llm._torch.utils import get_device_uuid

_ALLOWED = {
    ("torch.multiprocessing.reductions", "rebuild_cuda_tensor"),
    # the by-value CPU handle of nemo_gift's CpuTransport: accepted by the double only
    ("nemo_gift.models.generation.trtllm_runtime", "rebuild_cpu_tensor"),
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED and not (module == "torch" and name.endswith(("Storage", "dtype", "Size"))):
            raise pickle.UnpicklingError(f"update_weights: {module}.{name} is not allowed in a weight payload")
        return super().find_class(module, name)


class WorkerExtension:
    """Mixed into the double's ``RayGPUWorker`` (``ray_worker_extension_cls``)."""

    def update_weights(self, ipc_handles=None):
        self._check_awake("update_weights")
        if not self.reloading:
            self.reloading = True  # pre_reload_weights on the first call of a cycle
        if ipc_handles is not None:
            uuid = get_device_uuid(self.device_id)
            if uuid not in ipc_handles:
                raise ValueError(f"Device UUID {uuid} not found in ipc_handles")
            handles = ipc_handles[uuid]
            if isinstance(handles, str):
                handles = _Unpickler(io.BytesIO(base64.b64decode(handles))).load()
                if not isinstance(handles, list):
                    raise ValueError(f"Deserialized data must be a list, got {type(handles).__name__} instead")
            weights = {}
            for name, (func, args) in handles:
                args = list(args)
                if getattr(func, "__name__", "") == "rebuild_cuda_tensor":
                    args[6] = self.device_id
                weights[name] = func(*args)
            self.engine.reload(weights)
            trtllm_double_log.record("update_weights", device=uuid, tensors=sorted(weights))
        else:
            loaded, digest = self.engine.finalize()
            self.reloading = False
            self.weights_digest = digest
            trtllm_double_log.record("update_weights_finalize", device=get_device_uuid(self.device_id),
                                     loaded=loaded, digest=digest)
        return None
