"""Move tensors between one rank's TP/PP shard of a GPTModel and the unsharded model.

The "full" names and shapes are those of the same model built at TP=1, PP=1. Two facts of
megatron-core's layout decide the slicing:
- each TP-sharded parameter carries ``tensor_model_parallel`` and ``partition_dim`` attributes,
  and its shard ``r`` is the ``r``-th contiguous chunk along that dim. The fused QKV weight is
  ordered by query group, so contiguous chunks are whole groups;
- the SwiGLU ``linear_fc1`` weight is ``[gate; up]`` on every rank, so the full weight is
  ``[gate_0 .. gate_{tp-1}; up_0 .. up_{tp-1}]``, not the concatenation of the shards.
Pipeline stages number their layers from 0; stage ``p`` holds global layers
``p * L/PP .. (p+1) * L/PP - 1``.
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist

_LAYER = re.compile(r"^(decoder\.layers\.)(\d+)(\..*)$")


def _is_swiglu_fc1(name: str, model) -> bool:
    return name.endswith("mlp.linear_fc1.weight") and model.config.gated_linear_unit


def stage_to_global_name(name: str, pp_rank: int, layers_per_stage: int, tied: bool) -> str:
    """The TP=1/PP=1 name of parameter ``name`` of pipeline stage ``pp_rank`` (no process
    groups needed: checkpoints are unsharded offline with it)."""
    m = _LAYER.match(name)
    if m:
        return f"{m.group(1)}{int(m.group(2)) + pp_rank * layers_per_stage}{m.group(3)}"
    if name == "output_layer.weight" and tied:
        return "embedding.word_embeddings.weight"
    return name


def global_name(name: str, model) -> str:
    """The TP=1/PP=1 name of this stage's parameter ``name``."""
    from megatron.core import parallel_state as ps

    pp = ps.get_pipeline_model_parallel_world_size()
    return stage_to_global_name(
        name,
        ps.get_pipeline_model_parallel_rank(),
        model.config.num_layers // pp,
        getattr(model, "share_embeddings_and_output_weights", False),
    )


def shard(full: torch.Tensor, param: torch.Tensor, name: str, model) -> torch.Tensor:
    """This TP rank's slice of the full tensor ``full`` for the local parameter ``param``."""
    from megatron.core import parallel_state as ps

    if not getattr(param, "tensor_model_parallel", False):
        return full
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    dim = param.partition_dim
    if _is_swiglu_fc1(name, model):
        gate, up = torch.chunk(full, 2, dim=0)
        return torch.cat([torch.chunk(gate, tp, dim=0)[rank], torch.chunk(up, tp, dim=0)[rank]], dim=0)
    return torch.chunk(full, tp, dim=dim)[rank]


def load_full_state(model, full_state: dict[str, torch.Tensor]) -> None:
    """Copy the matching slices of an unsharded state into this rank's parameters."""
    missing = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            key = global_name(name, model)
            if key not in full_state:
                missing.append(key)
                continue
            local = shard(full_state[key], param, name, model)
            if local.shape != param.shape:
                raise ValueError(f"{key}: shard shape {tuple(local.shape)} != parameter {tuple(param.shape)}")
            param.copy_(local)
    if missing:
        raise KeyError(f"full state lacks {len(missing)} parameter(s), e.g. {missing[:3]}")


def gather_full(model, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Unshard per-parameter tensors (weights or grads, keyed by local name) on every rank.

    TP shards are all-gathered within the TP group, then the stages' dicts are exchanged
    within the PP group. Meant for checks and small models: each rank ends up holding the
    whole model. Tied output weights on the last stage are dropped (the embedding is kept).
    """
    from megatron.core import parallel_state as ps

    tp_group = ps.get_tensor_model_parallel_group()
    tp = ps.get_tensor_model_parallel_world_size()
    params = dict(model.named_parameters())
    stage: dict[str, torch.Tensor] = {}
    for name, tensor in local.items():
        param = params[name]
        key = global_name(name, model)
        if key != name and name == "output_layer.weight":
            continue
        tensor = tensor.detach().contiguous()
        if tp > 1 and getattr(param, "tensor_model_parallel", False):
            parts = [torch.empty_like(tensor) for _ in range(tp)]
            dist.all_gather(parts, tensor, group=tp_group)
            if _is_swiglu_fc1(name, model):
                gates, ups = zip(*(torch.chunk(p, 2, dim=0) for p in parts))
                tensor = torch.cat([*gates, *ups], dim=0)
            else:
                tensor = torch.cat(parts, dim=param.partition_dim)
        stage[key] = tensor
    pp = ps.get_pipeline_model_parallel_world_size()
    if pp == 1:
        return stage
    stages: list[dict] = [None] * pp
    dist.all_gather_object(stages, stage, group=ps.get_pipeline_model_parallel_group())
    full: dict[str, torch.Tensor] = {}
    for s in stages:
        for key, tensor in s.items():
            full.setdefault(key, tensor)
    return full
