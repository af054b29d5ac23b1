"""Where and how a run executes: the ``cluster`` block of a recipe (``conf/cluster/*.yaml``)."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

_SLURM_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")


@dataclasses.dataclass
class ClusterConfig:
    """Executor and allocation. ``world size = nodes * tasks_per_node`` ranks."""

    executor: Literal["local", "slurm"] = "local"
    """``local``: this machine (one process, or N ranks through torchrun). ``slurm``: sbatch."""
    nodes: int = 1
    """Nodes to allocate (``local`` needs 1)."""
    tasks_per_node: int = 1
    """Ranks per node: one per GPU on GPU clusters."""
    gpus_per_node: int = 0
    """GPUs to request per node (0 on CPU)."""
    backend: Literal["gloo", "nccl"] = "gloo"
    """torch.distributed backend: gloo on CPU, nccl on GPUs."""
    partition: str | None = None
    """Slurm partition (``--partition``)."""
    account: str | None = None
    """Slurm account (``--account``)."""
    time: str = "04:00:00"
    """Slurm time limit, ``[D-]HH:MM:SS``."""
    job_name_prefix: str = "nemo_gift-"
    """Prefix of the Slurm job name; the recipe name follows."""
    exclusive: bool = False
    """Request whole nodes (``--exclusive``)."""
    cpus_per_task: int | None = None
    """``--cpus-per-task``; unset leaves Slurm's default."""
    mem: str | None = None
    """``--mem`` per node, e.g. ``0`` for all of it; unset leaves Slurm's default."""
    container_image: str | None = None
    """Enroot/Pyxis image (a ``.sqsh`` path or a registry reference); unset runs on the host."""
    container_mounts: list[str] = dataclasses.field(default_factory=list)
    """Pyxis mounts, each ``SRC[:DST[:FLAGS]]``; the run directory is always added."""
    container_workdir: str | None = None
    """Working directory inside the container (``--container-workdir``)."""
    env_vars: dict[str, str] = dataclasses.field(default_factory=dict)
    """Exported into every rank's environment."""
    srun_args: list[str] = dataclasses.field(default_factory=list)
    """Extra ``srun`` arguments, passed through quoted."""
    sbatch_args: list[str] = dataclasses.field(default_factory=list)
    """Extra ``#SBATCH`` lines' arguments, e.g. ``--qos=high``."""
    python: str = "python"
    """The Python interpreter of the job (inside the container when one is set)."""
    master_port: int = 29500
    """Rendezvous port on the first node."""

    def __post_init__(self):
        if self.nodes < 1 or self.tasks_per_node < 1 or self.gpus_per_node < 0:
            raise ValueError(
                f"cluster.nodes ({self.nodes}) and cluster.tasks_per_node ({self.tasks_per_node}) must be "
                f">= 1 and cluster.gpus_per_node ({self.gpus_per_node}) >= 0"
            )
        if self.executor == "local" and self.nodes != 1:
            raise ValueError(f"cluster.executor=local runs on one node; got cluster.nodes={self.nodes}")
        if not _SLURM_TIME.match(self.time):
            raise ValueError(f"cluster.time={self.time!r} is not a Slurm time ([D-]HH:MM:SS)")
        if not 1024 <= self.master_port <= 65535:
            raise ValueError(f"cluster.master_port={self.master_port} is outside 1024-65535")
        if self.backend == "nccl" and self.gpus_per_node == 0:
            raise ValueError("cluster.backend=nccl needs GPUs; set cluster.gpus_per_node or backend=gloo")
        if self.gpus_per_node and self.tasks_per_node != self.gpus_per_node:
            raise ValueError(
                f"cluster.tasks_per_node={self.tasks_per_node} must equal cluster.gpus_per_node="
                f"{self.gpus_per_node}: one rank per GPU"
            )

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node
