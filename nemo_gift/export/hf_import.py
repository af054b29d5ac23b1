"""Hugging Face import: a local HF directory (config.json + safetensors) -> a megatron-core
model at any TP/PP.

    ckpt = open_hf_checkpoint("/models/Qwen3-32B")      # config, shards and shapes checked
    model, cfg = build_from_hf("/models/Qwen3-32B", parallel)   # after parallel.initialize

Everything that can be wrong with the input is checked before any tensor is read or converted:
the architecture (:class:`~nemo_gift.models.policy.hf_weights.UnsupportedModelError`), the weight files
(a shard named by ``model.safetensors.index.json`` that is absent), every tensor's name and
shape (from the safetensors headers, against the shapes the config implies) and the layout (TP
must divide the query and the key/value heads). Then each rank reads, tensor by tensor, only
what its pipeline stage needs, and keeps its TP slice: no rank holds the whole model.

Only safetensors checkpoints are read (no ``pytorch_model.bin``: unpickling is not safe), and
no network access happens here: download the model first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

import torch

from nemo_gift.models.policy import hf_weights
from nemo_gift.models.policy.config import ModelConfig, ParallelConfig

__all__ = ["HFCheckpoint", "HFCheckpointError", "build_from_hf", "import_hf", "open_hf_checkpoint"]

# The ModelConfig fields that change weights or numerics (max_position_embeddings and the
# padding unit do not).
_DEFINING = (
    "arch", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "query_groups",
    "head_dim", "vocab_size", "rotary_base", "norm_epsilon", "add_qkv_bias", "qk_layernorm",
    "tie_word_embeddings",
)
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class HFCheckpointError(ValueError):
    """The HF directory is incomplete or inconsistent; the message names the file or tensor."""


class HFCheckpoint(Mapping):
    """The weights of an HF directory as a lazy ``Mapping[str, torch.Tensor]``.

    Names, shapes and dtypes come from the safetensors headers at construction; a tensor is
    read from disk when it is accessed. ``config`` is the raw ``config.json`` and
    ``model_config`` its :class:`ModelConfig`.
    """

    def __init__(self, path: str | os.PathLike):
        from safetensors import safe_open

        self.path = Path(path)
        config_path = self.path / "config.json"
        if not config_path.is_file():
            raise HFCheckpointError(f"{self.path}: no config.json; expected a Hugging Face model directory")
        self.config: dict[str, Any] = json.loads(config_path.read_text())
        self.model_config: ModelConfig = hf_weights.hf_config_to_model_config(self.config)
        files = self._weight_files()
        self.hf_shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        self._file_of: dict[str, Path] = {}
        for file, expected_names in files.items():
            with safe_open(str(file), framework="pt") as f:
                names = set(f.keys())
                for name in names:
                    if name in self._file_of:
                        raise HFCheckpointError(f"{self.path}: tensor {name!r} is in both {self._file_of[name].name} and {file.name}")
                    sl = f.get_slice(name)
                    self.hf_shapes[name] = tuple(sl.get_shape())
                    self.dtypes[name] = sl.get_dtype()
                    self._file_of[name] = file
            if expected_names is not None and not expected_names <= names:
                absent = sorted(expected_names - names)
                raise HFCheckpointError(f"{file}: lacks {absent[:3]} ({len(absent)} in all), which {INDEX} places there")
        self._handles: dict[Path, Any] = {}

    def _weight_files(self) -> dict[Path, set[str] | None]:
        """Shard file -> the names the index places in it (None for a single file)."""
        index, single = self.path / INDEX, self.path / SINGLE
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            files: dict[Path, set[str]] = {}
            for name, file in weight_map.items():
                files.setdefault(self.path / file, set()).add(name)
            for file, names in files.items():
                if not file.is_file():
                    raise HFCheckpointError(
                        f"{self.path}: missing shard {file.name}: {INDEX} places {len(names)} tensor(s) "
                        f"there (e.g. {sorted(names)[0]!r}), but the file does not exist"
                    )
            return dict(files)
        if single.is_file():
            return {single: None}
        others = sorted(p.name for p in self.path.glob("*.bin")) + sorted(p.name for p in self.path.glob("*.pt"))
        hint = f" (found {others[:3]}: convert them to safetensors first)" if others else ""
        raise HFCheckpointError(f"{self.path}: neither {INDEX} nor {SINGLE}{hint}")

    def validate(self) -> None:
        """Check every name and shape against the config (``KeyError``/``ValueError`` from
        :func:`hf_weights.check_hf_names_and_shapes`, re-raised as :class:`HFCheckpointError`)."""
        try:
            hf_weights.check_hf_names_and_shapes(self.model_config, self.hf_shapes)
        except (KeyError, ValueError) as err:
            msg = err.args[0] if err.args else str(err)
            raise HFCheckpointError(f"{self.path}: {msg}") from err

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        file = self._file_of[name]
        if file not in self._handles:
            self._handles[file] = safe_open(str(file), framework="pt")
        return self._handles[file].get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._file_of)

    def __len__(self) -> int:
        return len(self._file_of)

    def close(self) -> None:
        """Release the open file handles (memory maps)."""
        self._handles.clear()


def open_hf_checkpoint(path: str | os.PathLike) -> HFCheckpoint:
    """Open and fully validate an HF directory (config, shards, names, shapes); reads no tensor data."""
    ckpt = HFCheckpoint(path)
    ckpt.validate()
    return ckpt


def import_hf(model, source: str | os.PathLike | HFCheckpoint, cfg: ModelConfig | None = None) -> ModelConfig:
    """Load an HF directory into this rank's stage of ``model`` (built from ``cfg``, which must
    equal the checkpoint's own config when given). Local to each rank. Returns the config."""
    ckpt = source if isinstance(source, HFCheckpoint) else open_hf_checkpoint(source)
    if cfg is not None:
        differ = [
            f"{k}: checkpoint {getattr(ckpt.model_config, k)!r}, model {getattr(cfg, k)!r}"
            for k in _DEFINING
            if getattr(ckpt.model_config, k) != getattr(cfg, k)
        ]
        if differ:
            raise HFCheckpointError(f"{ckpt.path}: config differs from the model's: {'; '.join(differ)}")
    try:
        hf_weights.load_hf_tensors(model, ckpt.model_config, ckpt)
    finally:
        ckpt.close()
    return ckpt.model_config


def build_from_hf(path: str | os.PathLike, parallel: ParallelConfig, *, world_size: int | None = None):
    """Validate, build this rank's stage and load it: ``(model, ModelConfig)``.

    Call on every rank after :func:`nemo_gift.models.policy.parallel.initialize` with the same
    ``parallel``. The layout is checked against the checkpoint's config before anything is
    built (TP must divide the heads, the key/value heads and the MLP width; PP the layers).
    """
    from nemo_gift.models.policy.builder import build_gpt_model

    ckpt = open_hf_checkpoint(path)
    parallel.validate_for(ckpt.model_config, world_size=world_size, cuda=torch.cuda.is_available())
    model = build_gpt_model(ckpt.model_config, parallel)
    import_hf(model, ckpt)
    return model, ckpt.model_config
