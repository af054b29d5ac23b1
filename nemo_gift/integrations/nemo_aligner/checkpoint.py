"""Where the Aligner actor's weights come from: NeMo checkpoints through nemo-toolkit.

Formats (:func:`checkpoint_format`, no NeMo import needed):

- ``nemo1``: a ``.nemo`` archive (a tar holding ``model_config.yaml`` and the weights), or the
  directory it unpacks to. NeMo 1 / NeMo-Aligner's own format.
- ``nemo2``: a NeMo 2 checkpoint directory (``context/io.json`` and ``weights/``), as NeMo 2's
  ``llm`` recipes and ``llm.import_ckpt`` write them.
- ``hf``: a Hugging Face directory (``config.json``). It is the project's default everywhere
  else (``init.hf_checkpoint``); a NeMo-Aligner actor is a NeMo ``MegatronGPTModel`` and cannot
  load it directly: :func:`import_hf_checkpoint` converts it once into a NeMo 2 directory with
  nemo-toolkit's own importer.

:func:`merged_model_config` merges the recipe's ``model`` block over the checkpoint's config and
:func:`restore_actor` loads the weights, both through NeMo-Aligner's own functions
(``load_and_override_model_config``, ``load_from_nemo``), as Aligner's train scripts do.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Literal

__all__ = ["CheckpointFormat", "checkpoint_format", "merged_model_config", "restore_actor", "import_hf_checkpoint", "HF_IMPORTERS"]

CheckpointFormat = Literal["nemo1", "nemo2", "hf"]

HF_IMPORTERS = {
    "LlamaForCausalLM": "LlamaModel",
    "Qwen2ForCausalLM": "Qwen2Model",
    "Qwen3ForCausalLM": "Qwen3Model",
}
"""HF architecture -> NeMo 2 model class in ``nemo.collections.llm``, for the families this
project supports (Llama also covers DeepSeek-LLM). The class only picks the importer; the
importer builds the NeMo config from ``config.json``."""


def checkpoint_format(path: str | os.PathLike) -> CheckpointFormat:
    """The format of a checkpoint path; ValueError, saying what was expected, if none matches."""
    p = Path(path)
    if p.is_file():
        if tarfile.is_tarfile(p):
            return "nemo1"
        raise ValueError(f"{p} is a file but not a .nemo archive (a tar)")
    if p.is_dir():
        if (p / "context" / "io.json").is_file() and (p / "weights").is_dir():
            return "nemo2"
        if (p / "model_config.yaml").is_file():
            return "nemo1"
        if (p / "config.json").is_file():
            return "hf"
        raise ValueError(
            f"{p} is not a checkpoint: expected a .nemo archive, an unpacked .nemo directory "
            "(model_config.yaml), a NeMo 2 directory (context/io.json and weights/), or a Hugging "
            "Face directory (config.json)"
        )
    raise FileNotFoundError(f"checkpoint {p} does not exist")


def _require_nemo(path) -> CheckpointFormat:
    fmt = checkpoint_format(path)
    if fmt == "hf":
        raise ValueError(
            f"{path} is a Hugging Face checkpoint; a NeMo-Aligner actor restores from NeMo. Convert it "
            "once: python -m nemo_gift.integrations.nemo_aligner.checkpoint HF_DIR OUT_DIR "
            "(a NeMo 2 directory, through nemo-toolkit's importer), then restore from OUT_DIR"
        )
    return fmt


def merged_model_config(path: str | os.PathLike, model_cfg):
    """The checkpoint's model config with the recipe's ``model`` block merged over it (Aligner's
    ``load_and_override_model_config``). Build the Lightning trainer from this, then restore."""
    _require_nemo(path)
    from nemo_aligner.utils.utils import load_and_override_model_config

    return load_and_override_model_config(str(path), model_cfg)


def restore_actor(actor_cls, model_cfg, trainer, path: str | os.PathLike, *, strict: bool = True):
    """Build ``actor_cls`` (e.g. the GIFT actor) from a NeMo checkpoint with the (merged) model
    config, through NeMo-Aligner's ``load_from_nemo`` (``.nemo``, unpacked, or NeMo 2)."""
    _require_nemo(path)
    from nemo_aligner.utils.utils import load_from_nemo

    return load_from_nemo(actor_cls, model_cfg, trainer, strict=strict, restore_path=str(path))


def import_hf_checkpoint(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert a Hugging Face checkpoint into a NeMo 2 directory with nemo-toolkit's importer
    (``nemo.collections.llm.import_ckpt``). The architecture is read from ``config.json``."""
    import json

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if checkpoint_format(hf_dir) != "hf":
        raise ValueError(f"{hf_dir} is not a Hugging Face checkpoint directory")
    archs = json.loads((hf_dir / "config.json").read_text()).get("architectures") or []
    known = [a for a in archs if a in HF_IMPORTERS]
    if not known:
        raise ValueError(f"{hf_dir}: architectures {archs} not supported; known: {sorted(HF_IMPORTERS)}")
    from nemo.collections import llm

    model = getattr(llm, HF_IMPORTERS[known[0]])()
    return Path(llm.import_ckpt(model=model, source=f"hf://{hf_dir}", output_path=out_dir, overwrite=overwrite))


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m nemo_gift.integrations.nemo_aligner.checkpoint HF_DIR OUT_DIR")
    print(import_hf_checkpoint(sys.argv[1], sys.argv[2]))
