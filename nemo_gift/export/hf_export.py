"""Hugging Face export: a megatron-core model, or a project checkpoint, -> an HF directory.

The directory holds ``config.json``, ``generation_config.json``, safetensors shards
``model-0000k-of-0000N.safetensors`` with ``model.safetensors.index.json``, and the tokenizer
files copied from the source HF directory (``hf_source``). ``AutoModelForCausalLM`` loads it
(transformers 4.57 and 5.x).

Two entry points, both streaming, tensor by tensor:
- :func:`export_model`: a live model at any TP/PP, collectively; it consumes
  :func:`nemo_gift.models.policy.hf_weights.export_hf_tensors` on every model-parallel rank and one rank
  writes. At most one shard (``max_shard_bytes``) plus one full tensor is held in memory.
- :func:`export_checkpoint`: a project checkpoint (:mod:`nemo_gift.models.policy.checkpoint`)
  offline, in one process and without any process group, from its ``dist_checkpointing``
  tensors (``python -m nemo_gift.export --checkpoint DIR --hf-out DIR``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import torch

from nemo_gift.models.policy import hf_weights
from nemo_gift.models.policy.config import ModelConfig
from nemo_gift.utils.torch_utils import TORCH_DTYPES as _DTYPES

__all__ = ["DEFAULT_MAX_SHARD_BYTES", "TOKENIZER_FILES", "export_checkpoint", "export_model", "write_hf_directory"]

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
"""Largest safetensors shard written (5 GiB, the usual HF shard size)."""

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja",
    "chat_template.json",
)
"""Files copied from the source directory when present (also any other ``*.tiktoken``)."""


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


class _ShardWriter:
    """Buffers tensors up to ``max_bytes`` and writes them as numbered safetensors shards."""

    def __init__(self, out: Path, max_bytes: int, dtype: torch.dtype | None):
        self.out, self.max_bytes, self.dtype = out, max_bytes, dtype
        self.buffer: dict[str, torch.Tensor] = {}
        self.buffer_bytes = 0
        self.files: list[tuple[Path, list[str]]] = []
        self.total = 0
        self.out_dtype: torch.dtype | None = None

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.buffer or any(name in names for _, names in self.files):
            raise ValueError(f"tensor {name!r} was given twice")
        # A private CPU copy: the source may alias a parameter, or another tensor's storage.
        t = tensor.detach().to(device="cpu", dtype=self.dtype or tensor.dtype, copy=True).contiguous()
        self.out_dtype = self.out_dtype or t.dtype
        size = t.numel() * t.element_size()
        if self.buffer and self.buffer_bytes + size > self.max_bytes:
            self.flush()
        self.buffer[name] = t
        self.buffer_bytes += size
        self.total += size

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.buffer:
            return
        path = self.out / f".shard-{len(self.files):05d}.tmp"
        save_file(self.buffer, str(path), metadata={"format": "pt"})
        self.files.append((path, list(self.buffer)))
        self.buffer, self.buffer_bytes = {}, 0

    def finish(self) -> dict[str, str]:
        self.flush()
        n = len(self.files)
        weight_map = {}
        for k, (tmp, names) in enumerate(self.files, start=1):
            final = f"model-{k:05d}-of-{n:05d}.safetensors"
            os.replace(tmp, self.out / final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return weight_map


def _prepare_out(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; export into a new directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_assets(out: Path, cfg: ModelConfig, hf_source: str | os.PathLike | None, dtype: torch.dtype) -> None:
    base: dict[str, Any] = {}
    src = Path(hf_source) if hf_source is not None else None
    if src is not None:
        if not (src / "config.json").is_file():
            raise FileNotFoundError(f"hf_source {src} has no config.json")
        base = json.loads((src / "config.json").read_text())
    config = {**base, **hf_weights.model_config_to_hf_config(cfg, dtype)}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if src is not None and (src / "generation_config.json").is_file():
        shutil.copyfile(src / "generation_config.json", out / "generation_config.json")
    else:
        gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
        (out / "generation_config.json").write_text(json.dumps({"_from_model_config": True, **gen}, indent=2) + "\n")
    if src is not None:
        for f in src.iterdir():
            if f.is_file() and (f.name in TOKENIZER_FILES or f.suffix == ".tiktoken"):
                shutil.copyfile(f, out / f.name)


def write_hf_directory(
    out_dir: str | os.PathLike,
    cfg: ModelConfig,
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    hf_source: str | os.PathLike | None = None,
    dtype: torch.dtype | str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write HF-named full tensors (streamed) and the assets into a new directory ``out_dir``.

    Every name and shape is checked against ``cfg`` as it arrives, and the set is checked to
    be complete at the end (before ``config.json`` is written, so an incomplete directory
    has no config). ``dtype`` casts the tensors (default: keep theirs).
    """
    out = _prepare_out(out_dir)
    hf_weights.check_representable(cfg)
    shapes = hf_weights.expected_hf_shapes(cfg)
    writer = _ShardWriter(out, max_shard_bytes, _as_dtype(dtype))
    for name, tensor in tensors:
        if name not in shapes:
            raise KeyError(f"unexpected tensor {name!r}: not a weight of this {cfg.arch} model")
        if tuple(tensor.shape) != shapes[name]:
            raise ValueError(f"{name}: shape {tuple(tensor.shape)} does not match the expected {shapes[name]}")
        writer.add(name, tensor)
    weight_map = writer.finish()
    missing = sorted(set(shapes) - set(weight_map))
    if missing:
        raise KeyError(f"export incomplete: missing {missing[:5]} ({len(missing)} in all)")
    _write_assets(out, cfg, hf_source, writer.out_dtype or torch.float32)
    return out


def export_model(
    model,
    cfg: ModelConfig,
    out_dir: str | os.PathLike,
    *,
    hf_source: str | os.PathLike | None = None,
    dtype: torch.dtype | str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path | None:
    """Export a live megatron-core model; collective, call it on every rank.

    The model-parallel group of data-parallel replica 0 streams
    :func:`~nemo_gift.models.policy.hf_weights.export_hf_tensors`; its rank with TP rank 0 and PP rank 0
    writes. All ranks wait at a barrier until the directory is complete. Returns the
    directory on the writing rank, None elsewhere.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    writes = ps.get_tensor_model_parallel_rank() == 0 and ps.get_pipeline_model_parallel_rank() == 0
    # Refuse a used directory on every rank before the collectives start (global rank 0 is
    # the writer: TP, PP and DP rank 0), so that no rank is left waiting in one.
    problem = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        out_path = Path(out_dir)
        if out_path.exists() and (not out_path.is_dir() or any(out_path.iterdir())):
            problem = f"{out_path} exists and is not empty; export into a new directory"
    if dist.is_initialized():
        box = [problem]
        dist.broadcast_object_list(box, src=0)
        problem = box[0]
    if problem:
        raise FileExistsError(problem)
    out = None
    if ps.get_data_parallel_rank() == 0:
        stream = hf_weights.export_hf_tensors(model, cfg)
        if writes:
            out = write_hf_directory(
                out_dir, cfg, stream, hf_source=hf_source, dtype=dtype, max_shard_bytes=max_shard_bytes
            )
        else:
            for _ in stream:  # take part in the collectives
                pass
    if dist.is_initialized():
        dist.barrier()
    return out


def export_checkpoint(
    checkpoint_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    hf_source: str | os.PathLike | None = None,
    dtype: torch.dtype | str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Export a project checkpoint offline: one process, no process group, tensor by tensor.

    ``checkpoint_dir`` is one checkpoint (``.../step_000042``, with ``metadata.json``) or a
    checkpoints root, whose latest complete checkpoint is used. Its ``metadata.json`` must
    hold the model config (``model_config``, as the trainer saves it).
    """
    from nemo_gift.models.policy import checkpoint

    path = Path(checkpoint_dir)
    if not (path / "metadata.json").is_file():
        latest = checkpoint.latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"{path}: neither a checkpoint (no metadata.json) nor a root holding one")
        path = latest
    meta = checkpoint.read_metadata(path)
    if not meta.get("model_config"):
        raise ValueError(f"{path}/metadata.json has no model_config; it cannot be exported")
    cfg = ModelConfig(**meta["model_config"])

    def tensors():
        for name, full in checkpoint.iter_full_tensors(path):
            yield from hf_weights.mcore_full_to_hf(name, full, cfg)

    return write_hf_directory(out_dir, cfg, tensors(), hf_source=hf_source, dtype=dtype, max_shard_bytes=max_shard_bytes)
