"""Where and how a run executes: the ``cluster`` block of a recipe (``conf/cluster/*.yaml``).

Every value that can reach the sbatch script is checked here, before anything is rendered:

- no value may hold a newline, a carriage return or NUL (:data:`CONTROL_CHARS`). A newline
  ends a ``#SBATCH`` comment line, where quoting does not protect, and starts a new shell line;
- each field has a format (:data:`FORMATS`): Slurm names for account, partition and job name,
  a Slurm time, upper-case environment variable names, absolute mount paths. NeMo-Run 0.11.1
  writes srun arguments and paths into the script unquoted (``noquote`` is an alias of ``str`` in
  ``nemo_run/core/execution/slurm.py``, so its ``isinstance(arg, noquote)`` test is always true),
  and puts ``cluster.env_vars`` values after ``export NAME=`` as given; the formats below are
  therefore allow-lists, and :mod:`nemo_gift.launcher.slurm` quotes the free-form values itself.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

CONTROL_CHARS = ("\n", "\r", "\x00")
"""Refused in every value that reaches a script."""

_SLURM_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.+-]*"
_PATH = r"/[A-Za-z0-9_.+@%=/-]*"
FORMATS = {
    "account": (_SLURM_NAME, "a Slurm account name ([A-Za-z0-9_.+-])"),
    "partition": (rf"{_SLURM_NAME}(,{_SLURM_NAME})*", "Slurm partition names, comma-separated"),
    "job_name": (r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}", "a Slurm job name ([A-Za-z0-9_.+-], at most 200 characters)"),
    "time": (r"(\d+-)?\d{1,3}(:\d{2}){0,2}", "a Slurm time ([D-]HH:MM:SS, MM, MM:SS, D-HH, D-HH:MM)"),
    "mem": (r"\d+[KMGT]?", "a Slurm memory size (0, 512G, 80000M)"),
    "env_name": (r"[A-Z_][A-Z0-9_]*", "an upper-case environment variable name (NeMo-Run upper-cases them)"),
    "mount": (rf"{_PATH}(:{_PATH}(:[a-z0-9_=+-]+)?)?", "a Pyxis mount SRC[:DST[:FLAGS]] of absolute paths"),
    "image": (r"[A-Za-z0-9_./:@#+-]+", "a squashfs path or a registry reference"),
    "path": (_PATH, "an absolute path of [A-Za-z0-9_.+@%=/-]"),
    "python": (r"[A-Za-z0-9_./+-]+", "an interpreter name or path ([A-Za-z0-9_./+-])"),
    "option": (r"--?[A-Za-z][A-Za-z0-9-]*(=[^\s'\"`$\\;&|<>()]*)?", "a --flag or --flag=value without shell characters"),
    "host": (r"[A-Za-z0-9_.-]+", "a host name or address"),
}
"""Each field's allowed form (matched whole) and how an error describes it."""


def check_value(key: str, value: str, fmt: str | None = None) -> None:
    """Raise ``ValueError`` naming ``key`` if ``value`` holds a control character or misses ``fmt``."""
    for ch in CONTROL_CHARS:
        if ch in value:
            raise ValueError(f"{key}={value!r} holds {ch!r}: a script value must be one line without NUL")
    if fmt is not None:
        pattern, what = FORMATS[fmt]
        if not re.fullmatch(pattern, value):
            raise ValueError(f"{key}={value!r} is not {what}")


@dataclasses.dataclass
class SshConfig:
    """Submit from a workstation through NeMo-Run's ``SSHTunnel`` (``cluster.tunnel: ssh``)."""

    host: str | None = None
    """The cluster's login node."""
    user: str | None = None
    """The user on the login node."""
    identity: str | None = None
    """Private key file; None uses the SSH agent and ``~/.ssh/config``."""
    job_dir: str | None = None
    """Where NeMo-Run keeps its experiment files on the cluster; None: ``RUN_DIR/nemorun``."""


@dataclasses.dataclass
class ClusterConfig:
    """Executor and allocation. ``world size = nodes * tasks_per_node`` ranks."""

    executor: Literal["local", "slurm"] = "local"
    """``local``: this machine (one process, or N ranks through torchrun). ``slurm``: sbatch
    through NeMo-Run's ``SlurmExecutor`` (``pip install -e .[slurm]``)."""
    tunnel: Literal["local", "ssh"] = "local"
    """``local``: submit with this machine's ``sbatch`` (a login node). ``ssh``: submit over SSH
    to ``cluster.ssh.host`` (a workstation)."""
    ssh: SshConfig = dataclasses.field(default_factory=SshConfig)
    """The login node, for ``tunnel: ssh``."""
    nodes: int = 1
    """Nodes to allocate (``local`` needs 1)."""
    tasks_per_node: int = 1
    """Ranks per node: one per GPU on GPU clusters."""
    gpus_per_node: int = 0
    """GPUs to request per node (0 on CPU)."""
    gpu_memory_gb: float | None = None
    """Memory of one GPU in GB (10^9 bytes): 80 for H100, 141 for H200. ``--preflight`` refuses
    a recipe whose per-GPU estimate exceeds it; None (CPU) skips that check."""
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
    """Working directory inside the container; unset keeps NeMo-Run's (its job directory)."""
    env_vars: dict[str, str] = dataclasses.field(default_factory=dict)
    """Exported into every rank's environment (names upper-case; values are quoted)."""
    srun_args: list[str] = dataclasses.field(default_factory=list)
    """Extra ``srun`` options, each ``--flag`` or ``--flag=value``."""
    sbatch_args: list[str] = dataclasses.field(default_factory=list)
    """Extra ``#SBATCH`` options, each ``--flag`` or ``--flag=value``, e.g. ``--qos=high``."""
    python: str = "python"
    """The Python interpreter of the job (inside the container when one is set)."""
    master_port: int = 29500
    """Rendezvous port on the first node."""

    def __post_init__(self):
        if isinstance(self.ssh, dict):  # constructed by hand from YAML
            self.ssh = SshConfig(**self.ssh)
        if self.nodes < 1 or self.tasks_per_node < 1 or self.gpus_per_node < 0:
            raise ValueError(
                f"cluster.nodes ({self.nodes}) and cluster.tasks_per_node ({self.tasks_per_node}) must be "
                f">= 1 and cluster.gpus_per_node ({self.gpus_per_node}) >= 0"
            )
        if self.executor == "local" and self.nodes != 1:
            raise ValueError(f"cluster.executor=local runs on one node; got cluster.nodes={self.nodes}")
        if not 1024 <= self.master_port <= 65535:
            raise ValueError(f"cluster.master_port={self.master_port} is outside 1024-65535")
        if self.backend == "nccl" and self.gpus_per_node == 0:
            raise ValueError("cluster.backend=nccl needs GPUs; set cluster.gpus_per_node or backend=gloo")
        if self.gpus_per_node and self.tasks_per_node != self.gpus_per_node:
            raise ValueError(
                f"cluster.tasks_per_node={self.tasks_per_node} must equal cluster.gpus_per_node="
                f"{self.gpus_per_node}: one rank per GPU"
            )
        if self.gpu_memory_gb is not None and not 0 < self.gpu_memory_gb < 10_000:
            raise ValueError(f"cluster.gpu_memory_gb={self.gpu_memory_gb} must be in (0, 10000) or null")
        if self.tunnel == "ssh" and (self.ssh.host is None or self.ssh.user is None):
            raise ValueError("cluster.tunnel=ssh needs cluster.ssh.host and cluster.ssh.user")
        for key, value, fmt in self.script_values():
            check_value(f"cluster.{key}", value, fmt)

    def script_values(self) -> list[tuple[str, str, str | None]]:
        """(key, value, format) of every string that can reach the sbatch script or the tunnel."""
        out = [("time", self.time, "time"), ("job_name_prefix", self.job_name_prefix, "job_name"),
               ("python", self.python, "python")]
        optional = [("account", self.account, "account"), ("partition", self.partition, "partition"),
                    ("mem", self.mem, "mem"), ("container_image", self.container_image, "image"),
                    ("container_workdir", self.container_workdir, "path"),
                    ("ssh.host", self.ssh.host, "host"), ("ssh.user", self.ssh.user, "account"),
                    ("ssh.identity", self.ssh.identity, "path"), ("ssh.job_dir", self.ssh.job_dir, "path")]
        out += [(k, v, f) for k, v, f in optional if v is not None]
        out += [(f"container_mounts[{i}]", m, "mount") for i, m in enumerate(self.container_mounts)]
        out += [(f"srun_args[{i}]", a, "option") for i, a in enumerate(self.srun_args)]
        out += [(f"sbatch_args[{i}]", a, "option") for i, a in enumerate(self.sbatch_args)]
        for name, value in self.env_vars.items():
            out += [(f"env_vars.{name}", name, "env_name"), (f"env_vars.{name}", str(value), None)]
        return out

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node
