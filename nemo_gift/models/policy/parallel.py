"""Model-parallel setup: process groups and seeds, on gloo (CPU) or NCCL (GPU)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from nemo_gift.models.policy.config import ParallelConfig


def initialize(parallel: ParallelConfig, seed: int = 1234) -> None:
    """Create megatron-core's TP/PP/DP groups and seed every generator.

    ``torch.distributed`` must already be initialized (gloo on CPU). On CPU the megatron-core
    compatibility patches are applied first. Every rank seeds the default generator with the
    same ``seed`` (CPU initialization draws full weights from it, so all TP ranks must agree),
    and megatron-core's tracker gets its per-TP-rank model-parallel seed.
    """
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    from nemo_gift.distributed import cpu_compat

    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized; call init_process_group first")
    cpu_compat.apply()
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
    )
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)

