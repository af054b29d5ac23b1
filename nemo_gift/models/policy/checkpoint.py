"""Training checkpoints through megatron-core ``dist_checkpointing``: atomic, verified, reshardable.

Layout of one checkpoint (``ROOT/step_000042/``, format 2)::

    metadata.json   step, layout, model config, trainer state (data position ...), LR schedule,
                    and the manifest: every other file's size and CRC-32. Written last.
    dist/           megatron-core dist_checkpointing, torch_dist backend: the model's and the
                    optimizer's ``sharded_state_dict`` (Adam moments and fp32 main weights
                    included, also under the distributed optimizer)
    rng/rank{r}.pt  RNG states of rank r (torch, Python, numpy, megatron tracker)

Resharding. ``dist/`` stores every tensor in the TP=1/PP=1 (global) coordinates, per layer,
and the distributed optimizer's state in ``fully_reshardable`` form (model-space tensors, like
a regular optimizer's), so a checkpoint saved at one (TP, PP, DP) loads at any other, e.g.
TP=2 x DP=2 -> TP=1 x PP=2. Two things cannot change across a resume, and are refused with
the reason: the optimizer kind (``parallel.use_distributed_optimizer``: megatron-core's two
optimizers store their non-tensor state differently), and the embedding rows
(``ModelConfig.padded_vocab_size`` depends on TP when TP does not divide the vocabulary). RNG
states are restored only at the saved (TP, PP, world size); at another layout each rank keeps
its freshly seeded generators.

Atomicity and integrity. Every rank writes into ``step_000042.tmp/``; after a barrier the
manifest is computed (CRC-32 spread over the ranks), rank 0 fsyncs every file and directory,
writes ``metadata.json`` (fsync'd), renames the directory and fsyncs ``ROOT``. A crash leaves
only a ``.tmp`` directory, which the next save removes. :func:`latest_checkpoint` returns the
newest checkpoint whose files are all present at their recorded sizes;
:func:`resumable_checkpoint` also checks their CRC-32s, and skips (logging the bad file) a
corrupt newest checkpoint for the previous one. Only the last ``keep_last`` are kept.

Loading never unpickles arbitrary objects: ``dist_checkpointing`` reads its tensors with
torch.distributed.checkpoint and its common state with ``torch.load(weights_only=True)``, as
do the RNG files. :func:`iter_full_tensors` unshards a checkpoint's model on one CPU, tensor by
tensor, without a process group, for export. Format 1 (per-rank files) is refused on resume
with the way to carry its weights over, and still exports
(:mod:`nemo_gift.models.policy.checkpoint_legacy`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist

from nemo_gift.models.policy import checkpoint_files, checkpoint_legacy

FORMAT_VERSION = 2
_STEP_DIR = re.compile(r"^step_(\d+)$")
logger = logging.getLogger(__name__)

SHARDED_METADATA = {
    "distrib_optim_sharding_type": "fully_reshardable",
    "singleton_local_shards": True,
    "chained_optim_avoid_prefix": True,
}
"""megatron-core's ``sharded_state_dict`` options (Megatron-LM's current defaults): the
distributed optimizer's state as model-space tensors that reshard over TP, PP and DP; one key
per layer (and the SwiGLU ``linear_fc1`` as its gate and up halves), so export reads one layer's
tensor at a time. Stored in ``dist/``'s content metadata and reused on load."""


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------------------------
# Finding a checkpoint
# ----------------------------------------------------------------------------------------------


def _problem(path: Path, *, checksums: bool) -> str | None:
    """Why ``path`` is not a usable checkpoint (naming the bad file), or None."""
    meta_path = path / "metadata.json"
    if not meta_path.is_file():
        return f"{meta_path} is missing (an unfinished save)"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        return f"{meta_path} is unreadable: {err}"
    if not isinstance(meta, dict) or "step" not in meta:
        return f"{meta_path} is not a nemo_gift checkpoint's metadata"
    if "files" not in meta:  # format 1 has no manifest: nothing to check
        return None
    return checkpoint_files.find_bad_file(path, meta["files"], checksums=checksums)


def scan_checkpoints(root: str | os.PathLike, *, checksums: bool) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest usable checkpoint under ``root`` or None, the newer finished saves that went bad,
    newest first, each with the reason that names its bad file). An unfinished save (no
    ``metadata.json``) is neither. When a usable one is found, each skipped one is logged (rank 0).
    ``checksums`` also checks every file's CRC-32 (collective when a process group exists)."""
    root = Path(root)
    if not root.is_dir():
        return None, []
    candidates = sorted(((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))), reverse=True)
    bad = []
    for _, path in candidates:
        problem = _problem(path, checksums=checksums)
        if problem is None:
            if _rank() == 0:
                for skipped, why in bad:
                    logger.warning("checkpoint %s is corrupt and is skipped: %s", skipped, why)
            return path, bad
        if (path / "metadata.json").is_file():  # a finished save that went bad
            bad.append((path, problem))
    return None, bad


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step under ``root`` whose files are all present at their
    recorded sizes, or None. Reads no file contents and needs no process group."""
    return scan_checkpoints(root, checksums=False)[0]


def resumable_checkpoint(root: str | os.PathLike) -> Path | None:
    """Like :func:`latest_checkpoint`, also checking every file's CRC-32: a corrupt newest
    checkpoint is skipped for the previous one, with a warning that names the bad file.
    Collective when a process group exists (call it on every rank)."""
    return scan_checkpoints(root, checksums=True)[0]


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming the bad file unless ``path`` is complete and intact
    (collective when a process group exists)."""
    problem = _problem(Path(path), checksums=True)
    if problem is not None:
        raise ValueError(f"checkpoint {path} cannot be loaded: {problem}")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """``metadata.json`` of a checkpoint (format 1 or 2), with a clear error if it is not one."""
    meta_path = Path(path) / "metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a complete nemo_gift checkpoint (no metadata.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") not in (checkpoint_legacy.FORMAT_VERSION, FORMAT_VERSION):
        raise ValueError(
            f"{meta_path}: format_version {meta.get('format_version')} is unknown "
            f"(this version reads {checkpoint_legacy.FORMAT_VERSION} and {FORMAT_VERSION})"
        )
    return meta


# ----------------------------------------------------------------------------------------------
# RNG
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Save and load
# ----------------------------------------------------------------------------------------------


def _uses_distributed_optimizer(optimizer) -> bool:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    return any(isinstance(o, DistributedOptimizer) for o in inner)


def _layout(module, optimizer) -> dict[str, Any]:
    from megatron.core import parallel_state as ps

    return {
        "tp_size": ps.get_tensor_model_parallel_world_size(),
        "pp_size": ps.get_pipeline_model_parallel_world_size(),
        "dp_size": ps.get_data_parallel_world_size(),
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "use_distributed_optimizer": optimizer is not None and _uses_distributed_optimizer(optimizer),
        "padded_vocab_size": int(module.vocab_size),
    }


def _sharded_state_dict(module, optimizer, *, is_loading: bool, metadata: dict) -> dict:
    """``{"model": ..., "optimizer": ...}`` as megatron-core shards them (copies of
    ``metadata``: megatron-core adds process groups to the dict it is given)."""
    model = module.sharded_state_dict(metadata=dict(metadata))
    state = {"model": model}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(model, is_loading=is_loading, metadata=dict(metadata))
    return state


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())


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
        optimizer: megatron-core optimizer (regular or distributed), or None.
        scheduler: anything with ``state_dict``/``load_state_dict`` of JSON values, or None.
        trainer_state: JSON-serializable state of the loop (data position, metrics history ...).
        model_config: JSON-serializable model description, stored for export.
        keep_last: how many complete checkpoints to keep (>= 1).
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy

    root = Path(root)
    final = step_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    rank = _rank()
    module = getattr(model, "module", model)
    layout = _layout(module, optimizer)
    if rank == 0:
        for stale in root.glob("step_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        (tmp / "dist").mkdir(parents=True)
        (tmp / "rng").mkdir()
    _barrier()
    dist_checkpointing.save(
        _sharded_state_dict(module, optimizer, is_loading=False, metadata=SHARDED_METADATA), str(tmp / "dist"),
        get_default_save_sharded_strategy("torch_dist"), content_metadata=dict(SHARDED_METADATA),
    )
    rng_file = tmp / "rng" / f"rank{rank}.pt"
    torch.save(rng_state(), rng_file)
    checkpoint_files.fsync_file(rng_file)
    _barrier()
    manifest = checkpoint_files.build_manifest(tmp)  # collective
    if rank == 0:
        checkpoint_files.fsync_tree(tmp)
        _write_json(tmp / "metadata.json", {
            "format_version": FORMAT_VERSION,
            "step": step,
            "layout": layout,
            "num_layers": module.config.num_layers,
            "tie_word_embeddings": bool(getattr(module, "share_embeddings_and_output_weights", False)),
            "model_config": model_config or {},
            "trainer_state": trainer_state or {},
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "files": manifest,
        })
        checkpoint_files.fsync_file(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        checkpoint_files.fsync_file(root)
        complete = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "metadata.json").is_file())
        for old in complete[: max(0, len(complete) - max(1, keep_last))]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def check_resumable(path: Path, meta: dict[str, Any], layout: Mapping[str, Any], *, with_optimizer: bool) -> None:
    """Raise ``ValueError`` with the reason if the checkpoint ``path`` (its ``meta``) cannot be
    loaded at ``layout`` (``tp_size``, ``use_distributed_optimizer``, ``padded_vocab_size``):
    format 1, another optimizer kind (when the optimizer is loaded), another embedding table.
    Reads only metadata: the launcher calls it before any work (``config.resume.plan_for``)."""
    if meta["format_version"] == checkpoint_legacy.FORMAT_VERSION:
        raise ValueError(checkpoint_legacy.RESUME_REFUSAL.format(path=path))
    saved = meta["layout"]
    if with_optimizer and saved["use_distributed_optimizer"] != layout["use_distributed_optimizer"]:
        raise ValueError(
            f"{path} was saved with parallel.use_distributed_optimizer={str(saved['use_distributed_optimizer']).lower()} "
            f"and this run has {str(layout['use_distributed_optimizer']).lower()}: megatron-core's two optimizers "
            "store their state differently. Resume with the saved value (TP, PP and DP may change)"
        )
    if saved["padded_vocab_size"] != layout["padded_vocab_size"]:
        raise ValueError(
            f"{path} has {saved['padded_vocab_size']} embedding rows (TP={saved['tp_size']}) and this layout "
            f"{layout['padded_vocab_size']} (TP={layout['tp_size']}): TP does not divide model.vocab_size, so "
            "the padded table depends on TP. Resume at the saved TP, or export to Hugging Face and import"
        )


_GROUP_KIND = ("wd_mult", "lr_mult", "start_wd", "end_wd", "optimizer", "is_expert_parallel", "is_decoupled_lr")
"""The param-group fields that say which group a saved one is (megatron-core's identifier keys
without the LR overrides); ``pre_``-prefixed aliases count, as in megatron-core."""


def _group_kind(group: dict) -> tuple:
    return tuple(group.get(k, group.get(f"pre_{k}")) for k in _GROUP_KIND)


def _inner_groups(optimizer) -> list[dict]:
    return [g for inner in getattr(optimizer, "chained_optimizers", [optimizer]) for g in inner.optimizer.param_groups]


def _load_optimizer_state(optimizer, saved: dict) -> None:
    """``optimizer.load_state_dict(saved)``, with the saved groups' ``max_lr``/``min_lr`` restored.

    megatron-core 0.19 (``MegatronOptimizer._filter_and_reorder_param_groups``) matches saved
    param groups to the current ones by a key that includes ``max_lr`` and ``min_lr``, so a resume
    with another learning rate (``checkpoint.resume_config_change=allow``) raised "Could not find
    parameter group"; 0.16 matches by position. The saved groups are matched under the current
    overrides, then given their saved ones back: the load restores the checkpoint as it was, on
    both lines, and :func:`nemo_gift.models.policy.optimizer.apply_settings` decides what governs."""
    overrides = ("max_lr", "min_lr")
    current = {}
    for group in _inner_groups(optimizer):
        current.setdefault(_group_kind(group), {k: group[k] for k in overrides if k in group})
    restored: dict[tuple, dict] = {}

    def visit(node) -> None:
        children = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in children:
            if key == "param_groups" and isinstance(value, list):
                for group in value:
                    kind = _group_kind(group) if isinstance(group, dict) else None
                    if kind in current:
                        restored.setdefault(kind, {k: group[k] for k in overrides if k in group})
                        group.update(current[kind])
            elif isinstance(value, (dict, list)):
                visit(value)

    visit(saved)
    optimizer.load_state_dict(saved)
    for group in _inner_groups(optimizer):
        group.update(restored.get(_group_kind(group), {}))


def load_checkpoint(path: str | os.PathLike, model, optimizer=None, scheduler=None) -> dict[str, Any]:
    """Load a checkpoint into this rank, at any (TP, PP, DP) layout; returns its metadata.

    Collective (call on every rank). The model is always loaded; the optimizer (its moments and
    main weights) and the scheduler when given. See the module docstring for what may change.
    """
    from megatron.core import dist_checkpointing

    path = Path(path)
    meta = read_metadata(path)
    module = getattr(model, "module", model)
    layout = _layout(module, optimizer)
    check_resumable(path, meta, layout, with_optimizer=optimizer is not None)
    content = dist_checkpointing.load_content_metadata(str(path / "dist")) or SHARDED_METADATA
    state = dist_checkpointing.load(
        _sharded_state_dict(module, optimizer, is_loading=True, metadata=content), str(path / "dist")
    )
    module.load_state_dict(state["model"])
    if optimizer is not None:
        _load_optimizer_state(optimizer, state["optimizer"])
    if scheduler is not None:
        if meta.get("scheduler") is None:
            raise ValueError(f"{path} holds no LR-scheduler state (saved without a scheduler)")
        scheduler.load_state_dict(meta["scheduler"])
    saved = meta["layout"]
    if [saved[k] for k in ("tp_size", "pp_size", "world_size")] == [layout[k] for k in ("tp_size", "pp_size", "world_size")]:
        set_rng_state(torch.load(path / "rng" / f"rank{_rank()}.pt", weights_only=True))
    elif _rank() == 0:
        logger.warning(
            "%s: saved at TP=%d PP=%d world=%d, loaded at TP=%d PP=%d world=%d; RNG states are not carried over",
            path, saved["tp_size"], saved["pp_size"], saved["world_size"],
            layout["tp_size"], layout["pp_size"], layout["world_size"],
        )
    return meta


# ----------------------------------------------------------------------------------------------
# Offline unsharding (export)
# ----------------------------------------------------------------------------------------------

_SWIGLU_HALVES = re.compile(r"^(?P<base>.*\.mlp\.linear_fc1\.weight)_(?P<half>[wv])$")


def iter_full_tensors(path: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """Unshard a checkpoint's model offline: ``(TP=1/PP=1 megatron name, full tensor)``, one
    layer's tensor in memory at a time. Needs no process group.

    The names are the local spec's: ``dist_checkpointing`` stores the two pre-linear norms under
    their Transformer Engine names (``linear_qkv.layer_norm_weight``...), mapped back with
    :func:`nemo_gift.models.policy.hf_weights.canonical_name`. The SwiGLU ``linear_fc1`` is stored as its
    gate (``weight_w``) and up (``weight_v``) halves and comes back whole, ``[gate; up]``.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from nemo_gift.models.policy.hf_weights import canonical_name

    path = Path(path)
    meta = read_metadata(path)
    if meta["format_version"] == checkpoint_legacy.FORMAT_VERSION:
        yield from checkpoint_legacy.iter_full_tensors(path, meta)
        return
    reader = FileSystemReader(str(path / "dist"))
    stored = reader.read_metadata().state_dict_metadata

    def read(key: str) -> torch.Tensor:
        md = stored[key]
        tensor = torch.empty(md.size, dtype=md.properties.dtype)
        dcp_load({key: tensor}, storage_reader=FileSystemReader(str(path / "dist")), no_dist=True)
        return tensor

    for key in sorted(stored):
        if key.startswith("optimizer.") or not isinstance(stored[key], TensorStorageMetadata):
            continue  # optimizer state; non-tensor (``_extra_state``) entries
        if key == "output_layer.weight" and meta["tie_word_embeddings"]:
            continue
        halves = _SWIGLU_HALVES.match(key)
        if halves is None:
            yield canonical_name(key), read(key)
        elif halves["half"] == "w":
            yield halves["base"], torch.cat([read(key), read(f"{halves['base']}_v")], dim=0)
