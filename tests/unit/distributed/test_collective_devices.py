"""Receive buffers of collectives live on the group's device (issue 15, defect 7: the PP
broadcast buffer of ``broadcast_from_last_stage`` was allocated without a device, i.e. on the
CPU, which NCCL refuses). Only a multi-GPU NCCL run shows the failure itself; these tests pin
the allocation to :func:`collective_device` and audit every collective's buffers."""

import ast
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from nemo_gift.distributed import logprobs

PACKAGE = Path(logprobs.__file__).resolve().parents[1]
COLLECTIVES = {"broadcast", "all_reduce", "reduce", "all_gather", "gather", "scatter", "reduce_scatter", "send",
               "recv", "isend", "irecv", "all_to_all_single", "all_gather_into_tensor", "reduce_scatter_tensor"}
ALLOCATORS = {"empty", "zeros", "ones", "full", "tensor", "rand", "randn", "arange"}


def test_collective_device_follows_the_backend(monkeypatch):
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert logprobs.collective_device() == torch.device("cpu")
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert logprobs.collective_device() == torch.device("cuda", 3)


def test_the_pp_broadcast_receives_on_the_groups_device(monkeypatch):
    seen = {}
    monkeypatch.setattr(logprobs, "collective_device", lambda group: torch.device("meta"))
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "broadcast", lambda buf, src, group=None: seen.setdefault("buf", buf))
    out = logprobs.broadcast_from_last_stage(None, (2, 3), torch.float32, group=object(), src=0)
    assert seen["buf"] is out and out.device.type == "meta" and tuple(out.shape) == (2, 3)


def _unplaced_allocations(path: Path) -> list[str]:
    """``torch.<allocator>(...)`` without ``device=`` inside functions that call a collective."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        calls = [c for c in ast.walk(fn) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)]
        if not any(c.func.attr in COLLECTIVES and getattr(c.func.value, "id", None) == "dist" for c in calls):
            continue
        for c in calls:
            if (c.func.attr in ALLOCATORS and getattr(c.func.value, "id", None) == "torch"
                    and not any(k.arg == "device" for k in c.keywords)):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{c.lineno} {fn.name}: torch.{c.func.attr} without device")
    return found


@pytest.mark.parametrize("package", ["distributed", "models", "export"])
def test_every_collective_buffer_has_a_device(package):
    files = sorted((PACKAGE / package).rglob("*.py"))
    assert files
    assert [bad for f in files for bad in _unplaced_allocations(f)] == []
