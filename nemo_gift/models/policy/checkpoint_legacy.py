"""Read-only support for checkpoint format 1 (before megatron-core ``dist_checkpointing``).

Format 1 (``format_version: 1`` in ``metadata.json``) held one safetensors file per (TP, PP)
shard, ``model/tp{t}_pp{p}.safetensors``, keyed by local parameter name with each tensor's TP
partition dim in the file metadata, and per-rank optimizer files. It can no longer be resumed
(:data:`RESUME_REFUSAL` says how to carry its weights over); :func:`iter_full_tensors` still
unshards its model for ``python -m nemo_gift.export``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import torch

FORMAT_VERSION = 1

RESUME_REFUSAL = (
    "{path} is a checkpoint of format 1 (per-rank files, before megatron-core dist_checkpointing), "
    "which this version cannot resume. Carry its weights over through Hugging Face: "
    "`python -m nemo_gift.export --checkpoint {path} --hf-out DIR`, then start the run with "
    "`init.hf_checkpoint=DIR` (format 1's optimizer state and data position are not carried over)"
)
"""The error a resume of a format-1 checkpoint raises (``.format(path=...)``)."""


def iter_full_tensors(path: Path, meta: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(TP=1/PP=1 megatron name, full tensor)`` of a format-1 checkpoint, one tensor (plus its
    TP shards) in memory at a time."""
    from safetensors import safe_open

    from nemo_gift.models.policy.sharding import stage_to_global_name

    tp, pp = meta["layout"]["tp_size"], meta["layout"]["pp_size"]
    layers_per_stage, tied = meta["num_layers"] // pp, meta["tie_word_embeddings"]
    for pp_rank in range(pp):
        files = [path / "model" / f"tp{t}_pp{pp_rank}.safetensors" for t in range(tp)]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{path}: missing model shard {f.name}")
        handles = [safe_open(str(f), framework="pt") for f in files]
        partition = json.loads(handles[0].metadata()["partition_dims"])
        gated = json.loads(handles[0].metadata()["gated_linear_unit"])
        for name in handles[0].keys():
            if name == "output_layer.weight" and tied:
                continue  # the tied copy of the embedding
            dim = int(partition[name])
            if dim < 0 or tp == 1:
                full = handles[0].get_tensor(name)
            elif gated and name.endswith("mlp.linear_fc1.weight"):
                halves = [torch.chunk(h.get_tensor(name), 2, dim=0) for h in handles]
                full = torch.cat([g for g, _ in halves] + [u for _, u in halves], dim=0)
            else:
                full = torch.cat([h.get_tensor(name) for h in handles], dim=dim)
            yield stage_to_global_name(name, pp_rank, layers_per_stage, tied), full
