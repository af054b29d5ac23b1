"""``tensorrt_llm._torch.utils`` (double): ``get_device_uuid``, from ``_torch/utils.py`` @a678b91a,
where it is ``"GPU-" + str(torch.cuda.get_device_properties(device_idx).uuid)``. The double's
devices are CPU ranks, and its workers address them by physical id (as the real workers do,
seeing every GPU of the node under ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1``): the UUID
of device ``i`` is ``"CPU-<i>"``."""


def get_device_uuid(device_idx: int) -> str:
    return f"CPU-{int(device_idx)}"
