"""Resume compares configs: a run continues only on the trajectory its checkpoint was trained on.

Every checkpoint records the resolved run config it was trained with, in its metadata
(``metadata.json``: ``trainer_state["run_config"]``). Before any work, both the launcher and
``nemo_gift.train`` find the checkpoint a start would resume from (:func:`resume_checkpoint`)
and compare the two configs (:func:`plan_resume`). A difference in a key that changes the
trajectory is refused with the list of keys, old and new values. With
``checkpoint.resume_config_change=allow`` the run continues with the new values (the
optimizer and its LR schedule included: ``nemo_gift.models.policy.optimizer.apply_settings``)
and the change is appended to ``RUN_DIR/config_changes.jsonl`` (:func:`record_changes`).

Keys that do not change the trajectory (:data:`NOT_TRAJECTORY`), and why:

- the layout: ``parallel.tensor_model_parallel_size``, ``pipeline_model_parallel_size``,
  ``sequence_parallel``, ``use_distributed_optimizer``, ``transformer_impl``, and ``cluster.*``:
  the same math split differently (checkpoints reshard across TP, PP and DP). A checkpoint that
  cannot load at the new layout is refused whatever ``resume_config_change`` says, before any
  work (:func:`read_saved_config`): another ``use_distributed_optimizer`` (megatron-core's two
  optimizers store their state differently), another embedding table (TP not dividing
  ``model.vocab_size``), or format 1;
- memory knobs of the same computation: ``trainer.micro_batch_size`` (the loss is normalized
  over the mini-batch, whatever the micro-batch count), ``trainer.max_tokens_per_micro_batch`` (likewise),
  ``trainer.logprob_chunk_size``, ``parallel.fused_lm_head_logprobs``,
  ``init.offload_reference``, ``rollout.trtllm_gpu_memory_fraction``, ``reward.device``,
  ``reward.batch_size``, ``reward.math_verify_workers``;
- persistence and observability: ``checkpoint.*`` (RNG states are checkpointed, so saving more
  or less often does not move the trajectory), ``logging.*``, ``name``, ``run_dir``, ``job``,
  ``export.*``, ``sft.cache_dir``;
- evaluation only: ``trainer.eval_every``, ``data.eval_size``, ``data.eval_dataset``,
  ``data.eval_path``, ``rollout.eval_temperature``. Evaluation decodes without the training
  step's seeded generator, so it never moves the training RNG;
- the run's length, ``trainer.max_steps`` and ``trainer.epochs``, while ``optim.schedule`` is
  ``constant`` (extending a run); with ``cosine`` they set the decay length, so they count.

Everything else counts: the model, ``parallel.params_dtype`` and ``parallel.fp8`` (numerics,
and the optimizer state's format), the algorithm and its loss, the optimizer, rollout sampling,
the data and its seeds, the reward, the tokenizer, the warm start and ``seed``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

from nemo_gift.utils.convert import ConfigError, to_dict

logger = logging.getLogger(__name__)

RUN_CONFIG_KEY = "run_config"
"""The entry of a checkpoint's trainer_state that holds the resolved run config."""
CHANGES_FILE = "config_changes.jsonl"
"""RUN_DIR's log of the config changes that an allowed resume applied."""

NOT_TRAJECTORY = (
    "parallel.tensor_model_parallel_size", "parallel.pipeline_model_parallel_size", "parallel.sequence_parallel",
    "parallel.use_distributed_optimizer", "parallel.transformer_impl", "parallel.fused_lm_head_logprobs", "cluster.*",
    "trainer.micro_batch_size", "trainer.max_tokens_per_micro_batch", "trainer.logprob_chunk_size",
    "init.offload_reference",
    "rollout.trtllm_gpu_memory_fraction", "reward.device", "reward.batch_size", "reward.math_verify_workers",
    "checkpoint.*", "logging.*", "name", "run_dir", "job", "export.*", "sft.cache_dir",
    "trainer.eval_every", "data.eval_size", "data.eval_dataset", "data.eval_path", "rollout.eval_temperature",
)
"""Patterns (fnmatch) of the keys that do not change the trajectory; see the module docstring."""
RUN_LENGTH = ("trainer.max_steps", "trainer.epochs")
"""Not trajectory changes while the LR schedule is constant."""

_MISSING = object()


@dataclasses.dataclass
class ResumePlan:
    """Where a start resumes from, and the trajectory changes it was allowed to apply."""

    checkpoint: Path | None = None
    """The checkpoint directory, or None for a fresh start."""
    step: int = 0
    """Its step (0 for a fresh start)."""
    changes: dict[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)
    """``key -> (saved value, new value)`` of the allowed trajectory changes."""


def resume_checkpoint(cfg) -> Path | None:
    """The checkpoint a start of ``cfg`` resumes from: per ``checkpoint.resume``, the latest
    complete one in RUN_DIR/checkpoints (``auto``), none (``never``), or the given directory."""
    if cfg.checkpoint.resume == "never":
        return None
    if cfg.checkpoint.resume == "auto":
        return _newest_usable(Path(cfg.run_dir) / "checkpoints", checksums=False)
    return Path(cfg.checkpoint.resume)


def _newest_usable(root: Path, *, checksums: bool) -> Path | None:
    """The newest usable checkpoint under ``root`` (``checkpoint.scan_checkpoints``), or None for a
    fresh start; but when ``root`` holds only finished saves that went bad, starting over would
    overwrite them, so that is refused, naming the bad file."""
    from nemo_gift.models.policy.checkpoint import scan_checkpoints

    found, bad = scan_checkpoints(root, checksums=checksums)
    if found is None and bad:
        path, problem = bad[0]
        raise ConfigError(
            f"checkpoint.resume: {root} holds no usable checkpoint, and starting over would overwrite "
            f"{len(bad)} that went bad; the newest, {path}: {problem}. Repair or move it, resume from "
            "another checkpoint (checkpoint.resume=DIR), or start over (another run_dir, or checkpoint.resume=never)"
        )
    return found


def _diff(saved: Any, new: Any, default: Any, key: str, out: dict[str, tuple[Any, Any]]) -> None:
    """Leaf-wise differences; a key absent on one side takes the schema default (older configs)."""
    if isinstance(saved, Mapping) and isinstance(new, Mapping):
        for k in sorted(set(saved) | set(new)):
            d = default.get(k, _MISSING) if isinstance(default, Mapping) else _MISSING
            _diff(saved.get(k, d), new.get(k, d), d, f"{key}.{k}" if key else k, out)
    elif saved != new:
        out[key] = (saved, new)


def config_changes(saved: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every leaf key whose value differs between two resolved run configs (plain dicts)."""
    from nemo_gift.config.schema import RunConfig

    out: dict[str, tuple[Any, Any]] = {}
    _diff(saved, new, to_dict(RunConfig()), "", out)
    return out


def trajectory_changes(saved: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The differences of :func:`config_changes` that change the trajectory (module docstring)."""
    ignored = NOT_TRAJECTORY
    if saved.get("optim", {}).get("schedule", "constant") == new.get("optim", {}).get("schedule") == "constant":
        ignored += RUN_LENGTH
    return {k: v for k, v in config_changes(saved, new).items()
            if not any(fnmatch.fnmatchcase(k, pattern) for pattern in ignored)}


def _show(value: Any) -> str:
    return "<absent>" if value is _MISSING else json.dumps(value)


def read_saved_config(path: Path, cfg=None) -> tuple[int, dict | None]:
    """(step, saved run config or None for a checkpoint written before configs were recorded).
    With ``cfg``, also refuse a checkpoint that cannot load at its layout (format 1, the other
    optimizer kind, another embedding table: ``checkpoint.check_resumable``)."""
    from nemo_gift.models.policy.checkpoint import check_resumable, read_metadata

    try:
        meta = read_metadata(path)
        if cfg is not None:
            tp = cfg.parallel.tensor_model_parallel_size
            check_resumable(path, meta, {
                "tp_size": tp, "use_distributed_optimizer": cfg.parallel.use_distributed_optimizer,
                "padded_vocab_size": cfg.model.padded_vocab_size(tp),
            }, with_optimizer=True)
        return int(meta["step"]), meta.get("trainer_state", {}).get(RUN_CONFIG_KEY)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"checkpoint.resume: cannot resume from {path}: {err}; resume from another checkpoint "
            "(checkpoint.resume=DIR) or start over (checkpoint.resume=never)"
        ) from None


def plan_resume(cfg) -> ResumePlan:
    """Where ``cfg`` resumes from; raise :class:`ConfigError` on a refused trajectory change.

    Reads only metadata and file sizes (no process group, no file contents): the launcher calls
    it before any work, and :func:`verified_plan` checks the contents once the ranks exist."""
    return plan_for(cfg, resume_checkpoint(cfg))


def plan_for(cfg, path: Path | None) -> ResumePlan:
    """:func:`plan_resume` for the checkpoint ``path`` (None: a fresh start)."""
    if path is None:
        return ResumePlan()
    step, saved = read_saved_config(path, cfg)
    if saved is None:
        logger.warning("%s records no run config (an older checkpoint): the resume cannot be compared", path)
        return ResumePlan(path, step)
    changes = trajectory_changes(saved, to_dict(cfg))
    if changes and cfg.checkpoint.resume_config_change != "allow":
        listed = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in changes.items())
        raise ConfigError(
            f"checkpoint.resume: {path} (step {step}) was trained with another config, and these keys change "
            f"the trajectory: {listed}. Resume with the saved values, start over (another run_dir, or "
            "checkpoint.resume=never), or continue with the new values: checkpoint.resume_config_change=allow"
        )
    return ResumePlan(path, step, changes)


def verified_plan(cfg, plan: ResumePlan) -> ResumePlan:
    """``plan`` once the checkpoint's contents are checked (the CRC-32 of every file, the work
    split over the ranks: call it on every rank). A checkpoint named by ``checkpoint.resume``
    must be intact (``ValueError`` naming the bad file); with ``auto``, a corrupt newest one is
    skipped for the newest intact one, with a warning, and that one's config is compared in turn;
    if none is intact, the start is refused (:class:`ConfigError`) rather than made fresh."""
    from nemo_gift.models.policy import checkpoint

    if plan.checkpoint is None:
        return plan
    if cfg.checkpoint.resume != "auto":
        checkpoint.verify_checkpoint(plan.checkpoint)
        return plan
    path = _newest_usable(Path(cfg.run_dir) / "checkpoints", checksums=True)
    return plan if path == plan.checkpoint else plan_for(cfg, path)


def record_changes(run_dir: str | Path, plan: ResumePlan) -> None:
    """Append an allowed resume's changes to RUN_DIR/config_changes.jsonl and log them."""
    if not plan.changes:
        return
    changes = {k: {"from": None if a is _MISSING else a, "to": None if b is _MISSING else b}
               for k, (a, b) in plan.changes.items()}
    logger.warning("resuming %s at step %d with changed config: %s", plan.checkpoint, plan.step, changes)
    record = {"time": time.time(), "step": plan.step, "checkpoint": str(plan.checkpoint), "changes": changes}
    path = Path(run_dir) / CHANGES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


__all__ = ["NOT_TRAJECTORY", "ResumePlan", "config_changes", "plan_for", "plan_resume", "record_changes",
           "resume_checkpoint", "trajectory_changes", "verified_plan"]
