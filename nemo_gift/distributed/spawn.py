"""Run a function on N local ranks over gloo, with a timeout that names the hung rank.

Used by the distributed tests and the CPU benchmarks::

    results = run_on_ranks(my_check, world_size=2, args=(tp,), timeout=120)

``my_check(rank, world_size, *args)`` must be a module-level (picklable) function. Each rank:
1. sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
2. joins a gloo process group, and applies the megatron-core CPU patches where CUDA is absent;
3. runs the function, and sends back its (picklable) return value or its traceback.

The parent returns the per-rank results in rank order. It raises :class:`RankFailure` as soon
as one rank raises or dies (with that rank's traceback), and :class:`RankTimeout` when the
timeout passes; the ranks that had not finished are named, and each prints its Python stack
to stderr shortly before the deadline (``faulthandler``), so a hang shows where it hangs.

Processes come from a ``forkserver`` that has imported torch and megatron-core once, so each
rank starts in well under a second instead of re-importing megatron-core (about 6 s each).
"""

from __future__ import annotations

import datetime
import faulthandler
import importlib.util
import os
import pickle
import queue
import socket
import time
import traceback
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["RankFailure", "RankTimeout", "free_port", "preload", "run_on_ranks"]


_PRELOAD = ["nemo_gift.distributed.spawn", "torch", "torch.distributed", "nemo_gift.distributed.cpu_compat"]
if importlib.util.find_spec("megatron.core") is not None:
    _PRELOAD += ["megatron.core", "megatron.core.models.gpt", "megatron.core.pipeline_parallel"]


def preload(*modules: str) -> None:
    """Also import ``modules`` in the forkserver, once, so that every rank starts with them imported
    (e.g. NeMo, about 20 s per process on 2 cores). Only effective before this process's first
    :func:`run_on_ranks`, which starts the forkserver; a module that fails to import is skipped."""
    _PRELOAD.extend(m for m in modules if m not in _PRELOAD)


class RankFailure(RuntimeError):
    """A rank raised an exception or exited without a result."""


class RankTimeout(TimeoutError):
    """Some ranks did not finish within the timeout."""


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _context():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _rank_main(rank, world_size, port, backend, timeout, env, fn, args, results):
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")  # megatron-core's advice for TP overlap
    os.environ.update(env)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    # Leave a few seconds for the parent to collect the stack dump before it kills us.
    faulthandler.dump_traceback_later(max(1.0, timeout - 3.0), exit=False)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        dist.init_process_group(
            backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout),
        )
        from nemo_gift.distributed import cpu_compat

        if importlib.util.find_spec("megatron.core") is not None:
            cpu_compat.apply()
        out = fn(rank, world_size, *args)
        # Pickle by value here: torch's queue would otherwise share tensors through file
        # descriptors that die with this process.
        results.put((rank, True, pickle.dumps(out)))
    except BaseException:  # report every failure, including asserts, to the parent
        results.put((rank, False, traceback.format_exc()))
    finally:
        faulthandler.cancel_dump_traceback_later()
        if dist.is_initialized():
            try:
                from megatron.core import parallel_state

                parallel_state.destroy_model_parallel()
            except ImportError:
                pass
            dist.destroy_process_group()


def run_on_ranks(
    fn: Callable[..., Any],
    world_size: int,
    args: Sequence[Any] = (),
    *,
    timeout: float = 180.0,
    backend: str = "gloo",
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` processes; see the module docstring.

    Args:
        fn: a module-level function.
        world_size: the number of ranks.
        args: extra positional arguments, picklable.
        timeout: seconds for the whole run, process start included.
        backend: the ``torch.distributed`` backend (``gloo`` on CPU).
        env: extra environment variables for the ranks.

    Returns:
        ``[result of rank 0, ..., result of rank world_size-1]``.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = _context()
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_rank_main,
            args=(rank, world_size, port, backend, timeout, dict(env or {}), fn, tuple(args), results),
            name=f"rank{rank}",
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    outputs: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(outputs) < world_size:
            try:
                rank, ok, payload = results.get(timeout=0.2)
            except queue.Empty:
                dead = [
                    r for r, p in enumerate(procs) if r not in outputs and p.exitcode not in (None, 0)
                ]
                if dead:
                    raise RankFailure(
                        f"{fn.__name__}: rank(s) {dead} exited with code(s) "
                        f"{[procs[r].exitcode for r in dead]} before reporting a result"
                    ) from None
                if time.monotonic() > deadline:
                    pending = [r for r in range(world_size) if r not in outputs]
                    raise RankTimeout(
                        f"{fn.__name__}: rank(s) {pending} of {world_size} did not finish within "
                        f"{timeout:.0f}s (their Python stacks are printed above, on stderr)"
                    ) from None
                continue
            if not ok:
                raise RankFailure(f"{fn.__name__}: rank {rank} of {world_size} raised:\n{payload}")
            outputs[rank] = pickle.loads(payload)
    finally:
        for p in procs:
            p.join(timeout=10 if len(outputs) == world_size else 0.5)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        results.close()
    return [outputs[r] for r in range(world_size)]
