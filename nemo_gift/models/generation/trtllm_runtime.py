"""Where and how the TensorRT-LLM engine runs: replica groups, the process environment of the
engine's owner, the refit transport, and the run-config checks. No ``tensorrt_llm`` import here.

Rank ownership
--------------
One ``LLM`` per data-parallel replica. A replica is one model-parallel group of the policy
(its TP x PP ranks, :func:`replica_group`); the group's first rank owns the ``LLM``, whose
``tensor_parallel_size`` is the group's size, so that TensorRT-LLM puts one worker on each GPU
of the group. Only the owner imports ``tensorrt_llm``. The others take part in refit (each
shares the full tensors from its own GPU) and receive the responses. A private gloo group per
replica carries the object collectives (gathering refit handles, broadcasting responses), as
verl's ``ServerAdapter`` does with its CPU device mesh, whatever backend the trainer uses.

Environment (why the Ray orchestrator, and what is cleaned)
-----------------------------------------------------------
TensorRT-LLM 1.2's RL path is the Ray orchestrator (``orchestrator_type="ray"``: the
``rlhf_utils.WorkerExtension`` weight update, ``_collective_rpc``, and sleep/wakeup are only
supported there), and verl's TensorRT-LLM rollout uses it too. So ``ray`` is a dependency of
the ``gpu`` extra and of the image. The owner builds its ``LLM`` inside :func:`owner_env`:

- the SLURM/PMI/PMIx/MPI/OMPI variables are removed (verl's ``trtllm_worker`` docs: under srun
  they make the MPI initialization of ``import tensorrt_llm`` hang on a PMIx mismatch), and
  ``TLLM_DISABLE_MPI=1`` is set before the import;
- ``CUDA_VISIBLE_DEVICES`` lists the replica's GPUs and ``TLLM_RAY_FORCE_LOCAL_CLUSTER=1`` makes
  TensorRT-LLM start a private local Ray cluster that sees exactly those GPUs (its
  ``RayExecutor`` otherwise attaches to any cluster found with ``address="auto"``);
- ``MASTER_PORT`` is a fresh port: the Ray workers inherit the environment and must not
  rendezvous on the trainer's own ``torch.distributed`` port.

Everything is restored afterwards. The Ray placement group TensorRT-LLM makes by default
asks for ``tensor_parallel_size`` CPUs on the node: a Slurm job needs ``--cpus-per-task`` of
at least that (:func:`config_problems`).

Refit transport (the one thing that differs between GPU and CPU)
-----------------------------------------------------------------
Each rank turns a bucket of tensors into ``[(name, (rebuild_fn, args)), ...]`` handles keyed by
its device's UUID, the format of ``rlhf_utils.WorkerExtension.update_weights``.
:class:`CudaIpcTransport` (GPU): ``torch.multiprocessing.reductions.reduce_tensor`` CUDA IPC
handles, keys ``"GPU-<uuid>"`` as TensorRT-LLM's ``get_device_uuid`` spells them.
:class:`CpuTransport` (CPU, for the test double only): the tensor's bytes themselves, keys
``"CPU-<rank>"``: CUDA IPC does not exist there. Everything else (naming, casting, bucketing,
gathering, the RPC sequence) is the same code on both; ``scripts/gpu_acceptance.sh``
exercises the CUDA transport.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import torch

__all__ = [
    "CLEARED_ENV_PREFIXES", "CpuTransport", "CudaIpcTransport", "RefitTransport", "ReplicaGroup",
    "config_problems", "default_transport", "is_cpu_double", "owner_env", "rebuild_cpu_tensor", "replica_group",
]

CLEARED_ENV_PREFIXES = ("SLURM_", "PMI_", "PMIX_", "MPI_", "OMPI_")
"""Variables removed around ``import tensorrt_llm`` (verl's list: ``^(PMI|PMIX|MPI|OMPI|SLURM)_``)."""


# --------------------------------------------------------------------------------------------
# Which tensorrt_llm is installed
# --------------------------------------------------------------------------------------------


def _double_root() -> Path:
    return Path(__file__).resolve().parents[3] / "tests" / "doubles"


def is_cpu_double() -> bool:
    """Whether the ``tensorrt_llm`` on the path is this repository's CPU test double
    (``tests/doubles/tensorrt_llm``, put on the path by the tests only). Looked up without
    importing it."""
    spec = importlib.util.find_spec("tensorrt_llm")
    if spec is None or spec.origin is None:
        return False
    return Path(spec.origin).resolve().parent.parent == _double_root().resolve()


def engine_tensor_parallel_size(parallel) -> int:
    """GPUs of one engine: every rank of a policy replica (TP x PP of ``parallel``, a
    ``ParallelConfig``) holds one engine GPU, and TensorRT-LLM shards the whole model over them
    with tensor parallelism (its engine is not pipelined here)."""
    return parallel.tensor_model_parallel_size * parallel.pipeline_model_parallel_size


def config_problems(cfg, cuda: bool) -> list[str]:
    """What stops ``rollout.engine=trtllm`` for this run config (``RunConfig``); empty when it
    can run. The real TensorRT-LLM needs CUDA GPUs on a local run; the CPU test double does not
    (and nothing else is exempt)."""
    problems = []
    local = cfg.cluster.executor == "local"
    installed = importlib.util.find_spec("tensorrt_llm") is not None
    if local and not installed:
        problems.append("rollout.engine=trtllm needs TensorRT-LLM: pip install -e .[gpu] "
                        "--extra-index-url https://pypi.nvidia.com")
    elif local and not cuda and not is_cpu_double():
        problems.append("rollout.engine=trtllm needs CUDA GPUs; use rollout.engine=torch on CPU")
    group = engine_tensor_parallel_size(cfg.parallel)
    if cfg.cluster.executor == "slurm":
        if group > cfg.cluster.tasks_per_node:
            problems.append(
                f"rollout.engine=trtllm runs one engine per model-parallel group on that group's GPUs; the "
                f"group (TP x PP = {group}) must fit on one node (cluster.tasks_per_node={cfg.cluster.tasks_per_node})")
        if (cfg.cluster.cpus_per_task or 1) < group:
            problems.append(
                f"rollout.engine=trtllm: cluster.cpus_per_task={cfg.cluster.cpus_per_task} is below the "
                f"{group} CPUs TensorRT-LLM's Ray placement group asks for (one per engine GPU); the job would hang")
    return problems


# --------------------------------------------------------------------------------------------
# Replica groups
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReplicaGroup:
    """The ranks that share one engine: a model-parallel group of the policy."""

    ranks: tuple[int, ...]
    """Global ranks, in model-parallel order; ``ranks[0]`` owns the ``LLM``."""
    rank: int
    """This process's index in ``ranks``."""
    group: Any = None
    """A gloo process group over ``ranks`` (None for a group of one)."""

    @property
    def is_owner(self) -> bool:
        return self.rank == 0

    @property
    def size(self) -> int:
        return len(self.ranks)


def replica_group() -> ReplicaGroup:
    """This rank's replica: megatron-core's model-parallel group, with a gloo group over it.

    Collective over the whole world (``torch.distributed.new_group``); outside a process group
    the replica is this process alone."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return ReplicaGroup(ranks=(0,), rank=0)
    from megatron.core import parallel_state as ps

    mine = tuple(dist.get_process_group_ranks(ps.get_model_parallel_group()))
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    this = None
    for ranks in sorted(set(everyone)):  # the same order on every rank: new_group is collective
        group = dist.new_group(list(ranks), backend="gloo")
        if ranks == mine:
            this = group
    return ReplicaGroup(ranks=mine, rank=mine.index(dist.get_rank()), group=this if len(mine) > 1 else None)


# --------------------------------------------------------------------------------------------
# The owner's environment
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def owner_env(device_ids: Sequence[int]) -> Iterator[dict[str, str]]:
    """The environment in which the owner imports TensorRT-LLM and builds its ``LLM`` (see the
    module docstring); yields the variables set. ``os.environ`` is restored on exit, except
    ``TLLM_DISABLE_MPI=1``, which stays (TensorRT-LLM's ``mpi_disabled()`` is read again later)."""
    from nemo_gift.distributed.spawn import free_port

    saved = dict(os.environ)
    changes: dict[str, str] = {}
    try:
        for key in [k for k in os.environ if k.startswith(CLEARED_ENV_PREFIXES)]:
            del os.environ[key]
        changes = {
            "TLLM_DISABLE_MPI": "1",
            "TLLM_RAY_FORCE_LOCAL_CLUSTER": "1",
            "CUDA_VISIBLE_DEVICES": ",".join(str(int(d)) for d in device_ids),
            "MASTER_PORT": str(free_port()),
        }
        os.environ.update(changes)
        yield changes
    finally:
        os.environ.clear()
        os.environ.update(saved)
        # MPI stays off for the rest of the process: TensorRT-LLM modules imported later read it
        os.environ["TLLM_DISABLE_MPI"] = "1"


# --------------------------------------------------------------------------------------------
# Refit transports
# --------------------------------------------------------------------------------------------


class RefitTransport(Protocol):
    """How a rank hands its copy of the refit tensors to the engine worker on its device."""

    def device_id(self) -> int:
        """This rank's device: the physical GPU index (CPU: the global rank)."""

    def device_key(self) -> str:
        """The key of this rank's handles in the ``update_weights`` payload."""

    def stage(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor where the handle can point at it (on this rank's device)."""

    def handle(self, tensor: torch.Tensor) -> tuple:
        """``(rebuild_fn, args)``: ``rebuild_fn(*args)`` rebuilds the tensor in the worker."""


class CudaIpcTransport:
    """CUDA IPC handles of tensors on this rank's GPU (the GPU path; not executed on CPU)."""

    def device_id(self) -> int:
        local = torch.cuda.current_device()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return int(visible.split(",")[local]) if visible else local

    def device_key(self) -> str:
        # tensorrt_llm/_torch/utils.py get_device_uuid: "GPU-" + str(get_device_properties(i).uuid)
        return "GPU-" + str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)

    def stage(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(torch.cuda.current_device(), non_blocking=False).contiguous()

    def handle(self, tensor: torch.Tensor) -> tuple:
        from torch.multiprocessing.reductions import reduce_tensor

        return reduce_tensor(tensor)


def rebuild_cpu_tensor(data: bytes, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor of :meth:`CpuTransport.handle` (a copy of its bytes)."""
    return torch.frombuffer(bytearray(data), dtype=getattr(torch, dtype)).reshape(shape)


class CpuTransport:
    """By-value handles for the CPU test double: ``(rebuild_cpu_tensor, (bytes, dtype, shape))``
    keyed ``"CPU-<global rank>"``. The double's worker on device ``d`` opens ``"CPU-<d>"``."""

    def device_id(self) -> int:
        import torch.distributed as dist

        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def device_key(self) -> str:
        return f"CPU-{self.device_id()}"

    def stage(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to("cpu").contiguous()

    def handle(self, tensor: torch.Tensor) -> tuple:
        raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return rebuild_cpu_tensor, (raw, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))


def default_transport() -> RefitTransport:
    """CUDA IPC where this process has a GPU, else the CPU transport."""
    return CudaIpcTransport() if torch.cuda.is_available() else CpuTransport()
