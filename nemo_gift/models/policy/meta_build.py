"""Count a policy's parameters per GPU by building its pipeline stages on the meta device.

    counts = stage_parameter_counts(model_cfg, parallel_cfg)   # {stage: params on one GPU}

Each distinct pipeline stage (the first, one middle stage standing for all of them, the last)
is built with megatron-core's own ``GPTModel`` at the recipe's TP and PP, as TP rank 0 of that
stage, under ``torch.device("meta")``: shapes only, no memory, no initialization (about 0.3 s
for a 32-layer stage of Qwen2.5-32B at TP=8, measured on the shared 2-core machine). No process
group of the recipe's size is needed: the ranks' view of parallelism is simulated by a
``ProcessGroupCollection`` whose ``tp`` and ``pp`` entries report the recipe's sizes and this
stage's rank (megatron-core sizes every layer by ``get_pg_size``/``get_pg_rank`` of those
groups, ``megatron/core/utils.py``), over a single-process gloo group when none exists.
The stage is built with the local layer spec and without sequence parallelism or FP8: those
change no parameter shape (TE's fused LayerNorm-linear holds the same norm weight).
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.distributed as dist

from nemo_gift.models.policy.config import ModelConfig, ParallelConfig


class _SimulatedGroup:
    """What megatron-core reads of a process group while building: its size and this rank."""

    def __init__(self, size: int, rank: int):
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank


def _groups(tp: int, pp: int, stage: int):
    from megatron.core.process_groups_config import ProcessGroupCollection

    pgs = ProcessGroupCollection()
    single = _SimulatedGroup(1, 0)
    for name in ("cp", "embd", "pos_embd", "tp_cp", "dp", "dp_cp", "ep", "expt_tp", "tp_ep", "expt_dp",
                 "tp_dp_cp", "mp", "tp_ep_pp", "hcp"):
        setattr(pgs, name, single)
    pgs.tp, pgs.pp = _SimulatedGroup(tp, 0), _SimulatedGroup(pp, stage)
    return pgs


@contextlib.contextmanager
def _single_process_group():
    """A 1-rank gloo group (megatron-core reads group sizes only when one is initialized)."""
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def distinct_stages(pp: int) -> list[int]:
    """The stages whose parameter counts can differ: first, one middle, last."""
    return sorted({0, min(1, pp - 1), pp - 1})


def build_stage_on_meta(model: ModelConfig, parallel: ParallelConfig, stage: int):
    """Pipeline stage ``stage`` of the policy as TP rank 0 would build it, on the meta device."""
    from megatron.core.models.gpt import GPTModel

    from nemo_gift.models.policy.builder import layer_spec, transformer_config

    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    shapes_only = dataclasses.replace(parallel, sequence_parallel=False, fp8=None, transformer_impl="local")
    config = transformer_config(model, shapes_only)
    config.perform_initialization, config.use_cpu_initialization = False, True
    with torch.device("meta"):
        return GPTModel(
            config=config, transformer_layer_spec=layer_spec(model), vocab_size=model.padded_vocab_size(tp),
            max_sequence_length=model.max_position_embeddings, pre_process=stage == 0,
            post_process=stage == pp - 1, parallel_output=True,
            share_embeddings_and_output_weights=model.tie_word_embeddings, position_embedding_type="rope",
            rotary_base=int(model.rotary_base), pg_collection=_groups(tp, pp, stage),
        )


def stage_parameter_counts(model: ModelConfig, parallel: ParallelConfig) -> dict[int, int]:
    """Parameters held by one GPU of each distinct pipeline stage, ``{stage: count}``."""
    counts = {}
    with _single_process_group():
        for stage in distinct_stages(parallel.pipeline_model_parallel_size):
            module = build_stage_on_meta(model, parallel, stage)
            counts[stage] = sum(p.numel() for p in module.parameters())
    return counts
