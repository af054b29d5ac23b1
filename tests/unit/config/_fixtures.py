"""Checkpoint metadata as the trainer writes it, for tests of what reads only metadata.json."""

from __future__ import annotations

import json
from pathlib import Path

from nemo_gift.utils.convert import to_dict
from nemo_gift.config.resume import RUN_CONFIG_KEY
from nemo_gift.models.policy import checkpoint


def write_checkpoint_metadata(run_dir: Path, cfg, step: int = 2) -> Path:
    """``RUN_DIR/checkpoints/step_N/metadata.json`` recording ``cfg`` the way a trainer's save does
    (``trainer_state["run_config"]``); the weights are not needed by the launcher's check."""
    path = checkpoint.step_dir(Path(run_dir) / "checkpoints", step)
    path.mkdir(parents=True)
    meta = {
        "format_version": checkpoint.FORMAT_VERSION, "step": step,
        "layout": {"tp_size": 1, "pp_size": 1, "dp_size": 1, "world_size": 1,
                   "use_distributed_optimizer": cfg.parallel.use_distributed_optimizer,
                   "padded_vocab_size": cfg.model.padded_vocab_size(1)},
        "trainer_state": {RUN_CONFIG_KEY: to_dict(cfg), "step": step, "sampler": {}},
    }
    (path / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for directories): a snapshot to compare."""
    root = Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}
