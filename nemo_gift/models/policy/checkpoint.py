"""Training checkpoints: atomic, resumable, and unshardable offline for export.

Layout of one checkpoint (``ROOT/step_000042/``)::

    metadata.json                  step, layout, model config, trainer state (data position ...)
    model/tp{t}_pp{p}.safetensors  one (TP, PP) shard of the policy, keyed by local parameter
                                   name; each tensor's TP partition dim is in the file metadata
    optim/rank{r}.pt               optimizer and LR-scheduler state of global rank r
    rng/rank{r}.pt                 RNG states of rank r (torch, Python, numpy, megatron tracker)

Writes are atomic: every rank writes into ``step_000042.tmp/``, and after a barrier rank 0
writes ``metadata.json`` last and renames the directory. A crash leaves only a ``.tmp``
directory, which :func:`latest_checkpoint` ignores and the next save removes. Only the last
``keep_last`` checkpoints are kept.

Loading never unpickles arbitrary objects: tensors come from safetensors, and the ``.pt`` files
are read with ``torch.load(weights_only=True)``. Resuming needs the same TP/PP layout;
:func:`iter_full_tensors` unshards a checkpoint on one CPU, tensor by tensor, for export.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under ``root``, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    steps = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and (p / "metadata.json").is_file()
    ]
    return max(steps)[1] if steps else None


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _layout() -> dict[str, int]:
    from megatron.core import parallel_state as ps

    return {
        "tp_rank": ps.get_tensor_model_parallel_rank(),
        "tp_size": ps.get_tensor_model_parallel_world_size(),
        "pp_rank": ps.get_pipeline_model_parallel_rank(),
        "pp_size": ps.get_pipeline_model_parallel_world_size(),
        "dp_rank": ps.get_data_parallel_rank(),
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
    }


def rng_state() -> dict[str, Any]:
    """Every RNG state of this process, as tensors and plain lists (weights_only-loadable)."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    torch.set_rng_state(state["torch"])
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, np_gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, np_gauss))
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _model_tensors(model) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors, partition = {}, {}
    for name, param in model.named_parameters():
        tensors[name] = param.detach().to("cpu").contiguous()
        partition[name] = str(param.partition_dim) if getattr(param, "tensor_model_parallel", False) else "-1"
    return tensors, partition


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    model,
    optimizer=None,
    scheduler=None,
    trainer_state: dict[str, Any] | None = None,
    model_config: dict[str, Any] | None = None,
    keep_last: int = 2,
) -> Path:
    """Collectively save a checkpoint (call on every rank); returns its final directory.

    Args:
        root: the checkpoints directory (shared by all ranks).
        step: the training step just completed.
        model: this rank's megatron-core stage (unwrapped or DDP-wrapped).
        optimizer: megatron-core optimizer, or None.
        scheduler: anything with ``state_dict``/``load_state_dict``, or None.
        trainer_state: JSON-serializable state of the loop (data position, metrics history ...).
        model_config: JSON-serializable model description, stored for export.
        keep_last: how many complete checkpoints to keep (>= 1).
    """
    from safetensors.torch import save_file

    root = Path(root)
    final, tmp = step_dir(root, step), Path(str(step_dir(root, step)) + ".tmp")
    rank, layout = _rank(), _layout()
    if rank == 0:
        for stale in root.glob("step_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        (tmp / "model").mkdir(parents=True, exist_ok=True)
        (tmp / "optim").mkdir(exist_ok=True)
        (tmp / "rng").mkdir(exist_ok=True)
    _barrier()
    module = getattr(model, "module", model)
    if layout["dp_rank"] == 0:
        tensors, partition = _model_tensors(module)
        meta = {
            "partition_dims": json.dumps(partition),
            "gated_linear_unit": json.dumps(bool(module.config.gated_linear_unit)),
            **{k: str(v) for k, v in layout.items()},
        }
        save_file(tensors, tmp / "model" / f"tp{layout['tp_rank']}_pp{layout['pp_rank']}.safetensors", meta)
    if optimizer is not None or scheduler is not None:
        torch.save(
            {
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
            },
            tmp / "optim" / f"rank{rank}.pt",
        )
    torch.save(rng_state(), tmp / "rng" / f"rank{rank}.pt")
    _barrier()
    if rank == 0:
        metadata = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "layout": {k: layout[k] for k in ("tp_size", "pp_size", "world_size")},
            "num_layers": module.config.num_layers,
            "tie_word_embeddings": bool(getattr(module, "share_embeddings_and_output_weights", False)),
            "model_config": model_config or {},
            "trainer_state": trainer_state or {},
        }
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        complete = sorted(
            p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "metadata.json").is_file()
        )
        for old in complete[: max(0, len(complete) - max(1, keep_last))]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """``metadata.json`` of a checkpoint, with a clear error if it is not one."""
    meta_path = Path(path) / "metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a complete nemo_gift checkpoint (no metadata.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format_version {meta.get('format_version')} != {FORMAT_VERSION}")
    return meta


def load_checkpoint(path: str | os.PathLike, model, optimizer=None, scheduler=None) -> dict[str, Any]:
    """Load a checkpoint saved with the same layout into this rank; returns its metadata."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path)
    rank, layout = _rank(), _layout()
    saved = meta["layout"]
    if (saved["tp_size"], saved["pp_size"], saved["world_size"]) != (
        layout["tp_size"], layout["pp_size"], layout["world_size"],
    ):
        raise ValueError(
            f"{path}: saved with TP={saved['tp_size']} PP={saved['pp_size']} world={saved['world_size']}, "
            f"resuming with TP={layout['tp_size']} PP={layout['pp_size']} world={layout['world_size']}; "
            "resume with the same layout, or export to Hugging Face and import at the new one"
        )
    module = getattr(model, "module", model)
    shard = path / "model" / f"tp{layout['tp_rank']}_pp{layout['pp_rank']}.safetensors"
    tensors = load_file(shard)
    params = dict(module.named_parameters())
    if set(tensors) != set(params):
        raise KeyError(f"{shard}: parameters differ from the model: {sorted(set(tensors) ^ set(params))[:5]}")
    with torch.no_grad():
        for name, param in params.items():
            if tensors[name].shape != param.shape:
                raise ValueError(f"{shard}: {name} has shape {tuple(tensors[name].shape)}, model {tuple(param.shape)}")
            param.copy_(tensors[name])
    if optimizer is not None or scheduler is not None:
        state = torch.load(path / "optim" / f"rank{rank}.pt", weights_only=True)
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
    set_rng_state(torch.load(path / "rng" / f"rank{rank}.pt", weights_only=True))
    return meta


def iter_full_tensors(path: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """Unshard a checkpoint's model offline: ``(TP=1/PP=1 megatron name, full tensor)``, one
    tensor in memory at a time (plus its TP shards). Needs no process group."""
    from safetensors import safe_open

    from nemo_gift.models.policy.sharding import stage_to_global_name

    path = Path(path)
    meta = read_metadata(path)
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
