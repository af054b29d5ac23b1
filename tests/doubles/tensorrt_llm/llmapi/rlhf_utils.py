"""``tensorrt_llm.llmapi.rlhf_utils.WorkerExtension`` (double), read from
``tensorrt_llm/llmapi/rlhf_utils.py@04762f3b`` (citations are ``path:LINE@commit`` in
NVIDIA/TensorRT-LLM): ``update_weights(ipc_handles)`` (tensorrt_llm/llmapi/rlhf_utils.py:37@04762f3b)
with ``ipc_handles = {device_uuid: base64(pickle([(name, (rebuild_fn, args)), ...]))}`` or the list
itself (tensorrt_llm/llmapi/rlhf_utils.py:70-93@04762f3b); the first call of a cycle prepares the model
for reloading (``pre_reload_weights``, tensorrt_llm/llmapi/rlhf_utils.py:54-60@04762f3b); each call with
handles opens this worker's device's entry, refusing a payload without it
(tensorrt_llm/llmapi/rlhf_utils.py:63-66@04762f3b), rebuilds the tensors with this worker's device as
``args[6]`` (tensorrt_llm/llmapi/rlhf_utils.py:95-100@04762f3b) and reloads them with partial loading
allowed (tensorrt_llm/llmapi/rlhf_utils.py:103-105@04762f3b); ``update_weights(None)`` finalizes
(tensorrt_llm/llmapi/rlhf_utils.py:108-126@04762f3b). The payload is unpickled with an allow-list, as
the real one uses ``tensorrt_llm.serialization.loads`` (tensorrt_llm/llmapi/rlhf_utils.py:81@04762f3b);
the double sets ``args[6]`` for CUDA handles only, since its by-value CPU handles have no device
argument."""

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
    """tensorrt_llm/llmapi/rlhf_utils.py:14@04762f3b; mixed into the double's ``RayGPUWorker``
    (``ray_worker_extension_cls``)."""

    def update_weights(self, ipc_handles=None):
        """tensorrt_llm/llmapi/rlhf_utils.py:37@04762f3b (error messages
        tensorrt_llm/llmapi/rlhf_utils.py:66@04762f3b and
        tensorrt_llm/llmapi/rlhf_utils.py:89@04762f3b)."""
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
