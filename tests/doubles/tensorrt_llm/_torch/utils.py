"""``tensorrt_llm._torch.utils`` (double): ``get_device_uuid``, read from
``tensorrt_llm/_torch/utils.py:311@a678b91a``, where it is ``"GPU-" +
str(torch.cuda.get_device_properties(device_idx).uuid)`` (tensorrt_llm/_torch/utils.py:315@a678b91a).
The UUID names a physical GPU: the real Ray worker gets its physical GPU id from Ray, maps it to a local
CUDA index with ``RayWorkerWrapper.physical_to_local_id``
(tensorrt_llm/executor/ray_gpu_worker.py:57-58@0acd798d and
tensorrt_llm/executor/ray_gpu_worker.py:120@0acd798d) and asks CUDA for that device's UUID. The double's
devices are CPU ranks and its workers hold the physical id itself, so the UUID of physical device ``i``
is ``"CPU-<i>"``."""


def get_device_uuid(device_idx: int) -> str:
    return f"CPU-{int(device_idx)}"
