"""Render and submit the sbatch script of a run (Pyxis/Enroot containers when set).

The script has the ``#SBATCH`` header, the rendezvous and user environment as ``export``
lines, then one ``srun`` that starts every rank of ``python -m nemo_gift.train --config
RUN_DIR/config.yaml``. Each rank reads ``SLURM_PROCID``, ``SLURM_LOCALID`` and
``SLURM_NTASKS`` for its rank, local rank and world size. Every value that comes from the
config is shell-quoted.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from nemo_gift.launcher.cluster import ClusterConfig

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _mounts(cluster: ClusterConfig, run_dir: Path) -> list[str]:
    mounts = list(cluster.container_mounts)
    if not any(m.split(":")[0] == str(run_dir) for m in mounts):
        mounts.append(f"{run_dir}:{run_dir}")
    return mounts


def render_sbatch(
    cluster: ClusterConfig, job_name: str, run_dir: Path, config_path: Path, command: list[str] | None = None
) -> str:
    """The sbatch script text for ``cluster`` running the config at ``config_path`` (or, when
    given, ``command`` on each task)."""
    q = shlex.quote
    run_dir = Path(run_dir).resolve()
    log = run_dir / "slurm-%j.out"
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name={q(cluster.job_name_prefix + job_name)}",
        f"#SBATCH --nodes={cluster.nodes}",
        f"#SBATCH --ntasks-per-node={cluster.tasks_per_node}",
        f"#SBATCH --time={q(cluster.time)}",
        f"#SBATCH --output={q(str(log))}",
    ]
    if cluster.gpus_per_node:
        header.append(f"#SBATCH --gpus-per-node={cluster.gpus_per_node}")
    if cluster.cpus_per_task:
        header.append(f"#SBATCH --cpus-per-task={cluster.cpus_per_task}")
    if cluster.mem is not None:
        header.append(f"#SBATCH --mem={q(cluster.mem)}")
    if cluster.partition:
        header.append(f"#SBATCH --partition={q(cluster.partition)}")
    if cluster.account:
        header.append(f"#SBATCH --account={q(cluster.account)}")
    if cluster.exclusive:
        header.append("#SBATCH --exclusive")
    header += [f"#SBATCH {q(arg)}" for arg in cluster.sbatch_args]

    env = [
        "set -euo pipefail",
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f"export MASTER_PORT={cluster.master_port}",
        f"export NEMO_GIFT_DIST_BACKEND={q(cluster.backend)}",
    ]
    for name, value in cluster.env_vars.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"cluster.env_vars: {name!r} is not a valid environment variable name")
        env.append(f"export {name}={q(str(value))}")

    srun = ["srun", f"--output={q(str(log))}", "--kill-on-bad-exit=1"]
    if cluster.container_image:
        srun.append(f"--container-image={q(cluster.container_image)}")
        srun.append(f"--container-mounts={q(','.join(_mounts(cluster, run_dir)))}")
        if cluster.container_workdir:
            srun.append(f"--container-workdir={q(cluster.container_workdir)}")
    srun += [q(arg) for arg in cluster.srun_args]
    if command is None:
        command = [cluster.python, "-m", "nemo_gift.train", "--config", str(Path(config_path).resolve())]
    srun += [q(arg) for arg in command]
    return "\n".join(header + [""] + env + [""] + [" \\\n  ".join(srun)]) + "\n"


def submit(script_path: Path) -> str:
    """``sbatch --parsable SCRIPT``; returns the job id."""
    proc = subprocess.run(
        ["sbatch", "--parsable", str(script_path)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch {script_path} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]
