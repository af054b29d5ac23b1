"""Run metrics: one JSONL line per step in RUN_DIR/metrics.jsonl, plus TensorBoard and W&B.

Keys are ``split/name``: ``train/reward``, ``train/loss``, ``eval/pass@1``, ``time/rollout`` ...
Only rank 0 writes; on other ranks every method is a no-op, so the calling code is identical
everywhere. W&B is used when enabled *and* installed.

A kill can leave the last line torn (a write cut short): readers drop it with a warning, and a
resumed run rewrites the file atomically, so no complete line is ever lost. A malformed line
anywhere else is damage, not a kill, and is refused naming the file and line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

METRICS_FILE = "metrics.jsonl"

logger = logging.getLogger(__name__)


def _parse(path: Path) -> list[tuple[str, dict]]:
    """(line, record) of each line of a JSONL log; see :func:`read_records`."""
    lines = path.read_text(errors="replace").splitlines()
    parsed = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            if number == len(lines):
                logger.warning("%s: dropped the torn last line %d (a write cut short): %s", path, number, err)
                break
            raise ValueError(f"{path}: line {number} is not a JSON record ({err}); the log is damaged") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}: line {number} is not a metrics record with an integer 'step'")
        parsed.append((line, record))
    return parsed


def read_records(path: str | Path) -> list[dict]:
    """The records of a JSONL metrics log, in order; a torn last line is dropped with a warning.

    Raises ValueError naming the file and line for a malformed line before the last one.
    """
    return [record for _, record in _parse(Path(path))]


def _truncate_after(path: Path, step: int) -> None:
    """Keep the lines up to ``step`` (complete lines only), replacing the file atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line, record in _parse(path) if record["step"] <= step))
    os.replace(tmp, path)


def _scalar(value: Any) -> float | None:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class MetricsLogger:
    """Writes metrics to JSONL, TensorBoard and (optionally) W&B; a no-op where not enabled."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "nemo_gift",
        run_name: str = "run",
        config: Mapping[str, Any] | None = None,
        resume_step: int | None = None,
        filename: str = METRICS_FILE,
    ):
        self.enabled = enabled
        self.path = Path(run_dir) / filename
        self._tb = self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            # A resumed run rewrites history after its checkpoint, so the file reads as one run.
            _truncate_after(self.path, resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard" / Path(filename).stem))
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError:
                wandb_lib = None
            if wandb_lib is not None:
                self._wandb = wandb_lib.init(project=wandb_project, name=run_name, config=dict(config or {}))

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Record scalar ``metrics`` at ``step``; non-scalars and NaN-free check are the caller's."""
        scalars = {k: v for k, v in ((k, _scalar(v)) for k, v in metrics.items()) if v is not None}
        if not self.enabled:
            return scalars
        record = {"step": step, "time": time.time(), **scalars}
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        if self._tb is not None:
            for key, value in scalars.items():
                if math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        return scalars

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """The records of RUN_DIR/metrics.jsonl, in order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics (is {run_dir} a run directory?)")
    return read_records(path)


def series(records: list[dict[str, float]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` where it was logged."""
    pts = [(r["step"], r[key]) for r in records if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]
