"""The call log of the TensorRT-LLM double: one JSON line per event, one file per process, in
``$TRTLLM_DOUBLE_STATE_DIR`` (no log where it is unset). Tests read it back with :func:`read`;
the test harness adds its own events (e.g. optimizer steps) to the same process's file, so
the order within a process is exact."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterable

STATE_ENV = "TRTLLM_DOUBLE_STATE_DIR"


def state_dir() -> Path | None:
    value = os.environ.get(STATE_ENV)
    return Path(value) if value else None


def record(event: str, **fields) -> None:
    """Append ``{"event", "rank", "pid", "t", **fields}`` to this process's log."""
    root = state_dir()
    if root is None:
        return
    root.mkdir(parents=True, exist_ok=True)
    rank = os.environ.get("RANK", "0")
    line = {"event": event, "rank": int(rank), "pid": os.getpid(), "t": time.monotonic_ns(), **fields}
    with open(root / f"calls-rank{rank}-pid{os.getpid()}.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def read(root: str | os.PathLike) -> dict[int, list[dict]]:
    """Every logged event, by rank, in each process's order (processes of one rank in pid order
    of their first event)."""
    by_rank: dict[int, list[list[dict]]] = {}
    for path in sorted(Path(root).glob("calls-rank*-pid*.jsonl")):
        events = [json.loads(line) for line in path.read_text().splitlines()]
        if events:
            by_rank.setdefault(events[0]["rank"], []).append(events)
    return {rank: [e for chunk in sorted(chunks, key=lambda c: c[0]["t"]) for e in chunk]
            for rank, chunks in by_rank.items()}


def weights_digest(named: Iterable) -> str:
    """sha256 over each ``(name, tensor)``'s name and float32 bytes, in name order: equal digests
    mean bit-identical weights. The double logs it at every finished refit; tests compute it
    from the policy's exported weights."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
