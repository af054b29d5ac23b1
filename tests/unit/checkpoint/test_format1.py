"""Checkpoints of format 1 (per-(TP, PP) safetensors files, before dist_checkpointing): a resume
is refused with the way to carry the weights over, and the export still reads them.

The format-1 directory is written here as the old writer did (``model/tp{t}_pp{p}.safetensors``
keyed by local name, with the TP partition dims in the file metadata, and ``metadata.json``)."""

import json
from pathlib import Path

import pytest
import torch

from nemo_gift.distributed.spawn import RankFailure, run_on_ranks
from nemo_gift.models.policy import checkpoint as ckpt

pytestmark = pytest.mark.distributed


def _write_format1(rank, world_size, root):
    """A TP=2 model saved as format 1; returns the unsharded weights (rank 0)."""
    from megatron.core import parallel_state as ps
    from safetensors.torch import save_file

    from nemo_gift.models.policy.config import ParallelConfig
    from tests.unit.distributed._train_ranks import build_policy, full_weights

    policy = build_policy(ParallelConfig(tensor_model_parallel_size=2), None)
    module, path = policy.module, Path(root) / "step_000005"
    (path / "model").mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().contiguous() for n, p in module.named_parameters()}
    partition = {n: str(p.partition_dim) if getattr(p, "tensor_model_parallel", False) else "-1"
                 for n, p in module.named_parameters()}
    save_file(tensors, path / "model" / f"tp{ps.get_tensor_model_parallel_rank()}_pp0.safetensors",
              {"partition_dims": json.dumps(partition), "gated_linear_unit": "true"})
    if rank == 0:
        (path / "metadata.json").write_text(json.dumps({
            "format_version": 1, "step": 5, "layout": {"tp_size": 2, "pp_size": 1, "world_size": 2},
            "num_layers": 2, "tie_word_embeddings": False, "model_config": {}, "trainer_state": {"step": 5},
        }))
    full = full_weights(policy)
    return full if rank == 0 else None


def _resume(rank, world_size, path):
    from nemo_gift.models.policy.config import ParallelConfig
    from tests.unit.distributed._train_ranks import build_policy

    build_policy(ParallelConfig(), None).load(path)


def test_format1_is_refused_on_resume_and_still_exports(tmp_path):
    full = run_on_ranks(_write_format1, 2, args=(str(tmp_path),), timeout=180)[0]
    path = tmp_path / "step_000005"
    assert ckpt.latest_checkpoint(tmp_path) == path and ckpt.read_metadata(path)["step"] == 5
    with pytest.raises(RankFailure) as err:
        run_on_ranks(_resume, 1, args=(str(path),), timeout=120)
    assert "format 1" in str(err.value) and f"python -m nemo_gift.export --checkpoint {path}" in str(err.value)
    assert "init.hf_checkpoint=DIR" in str(err.value)
    # ... and by the launcher's check, before any work
    from nemo_gift.utils.convert import ConfigError
    from nemo_gift.config.resume import plan_resume
    from nemo_gift.launcher.main import load

    with pytest.raises(ConfigError, match="format 1"):
        plan_resume(load("gift_tiny", [f"checkpoint.resume={path}", f"run_dir={tmp_path / 'run'}"]))
    exported = dict(ckpt.iter_full_tensors(path))
    assert sorted(exported) == sorted(full)
    assert all(torch.equal(exported[k], full[k]) for k in full)
