"""Slurm submission through NeMo-Run (``pip install -e .[slurm]``): a thin adapter.

    executor = build_executor(cfg.cluster, job_name, run_dir)    # nemo_run.SlurmExecutor
    print(render(cfg, run_dir))                                  # --dry-run: NeMo-Run's sbatch script
    job_id, log = submit(cfg, run_dir)                           # sbatch through the tunnel
    refuse_live_job(cfg.cluster, run_dir)                        # RUN_DIR's last job still queued?

``cluster.tunnel: local`` submits with this machine's ``sbatch`` (``nemo_run.LocalTunnel``, a
login node); ``ssh`` submits from a workstation over ``nemo_run.SSHTunnel(host, user, job_dir,
identity)``. Every rank runs the unchanged entry ``python -m nemo_gift.train --config
RUN_DIR/config.yaml`` under one ``srun`` (``nodes x tasks_per_node`` tasks); it reads
``SLURM_PROCID``/``SLURM_NTASKS`` for its rank and world size and meets the others at
``MASTER_ADDR`` = the job's first node (NeMo-Run's ``$head_node``), ``MASTER_PORT``: one
rendezvous for any number of nodes. NeMo-Run's experiment files and the Slurm logs go to
``RUN_DIR`` (``RUN_DIR/experiments/...``, ``RUN_DIR/log-JOBNAME_JOBID_0.out``).

What NeMo-Run 0.11.1 does not do, and this adapter does (read in
``nemo_run/core/execution/slurm.py``, ``run/torchx_backend/schedulers/slurm.py``,
``core/tunnel/client.py``):

- quoting: ``SlurmBatchRequest.materialize`` quotes ``#SBATCH`` values only with
  ``shlex.quote`` (no protection against a newline in a comment line), writes
  ``export KEY={value}`` unquoted, joins the task's command unquoted, and its srun arguments pass
  an ``isinstance(arg, noquote)`` test that every ``str`` passes. So every value is checked by
  :mod:`nemo_gift.config.cluster` (no control characters, a format per field), free-form env
  values and the command's words are ``shlex.quote``-d here, and the run directory must be a
  plain path: ``schedule`` runs ``sbatch --requeue --parsable PATH`` through a shell, unquoted;
- the run directory mount in a container, ``--container-workdir``, extra ``#SBATCH`` options
  (``additional_parameters``), and copying ``config.yaml`` to the cluster over SSH;
- in non-container mode NeMo-Run replaces every ``/nemo_run`` in the script by the job
  directory (its ``RUNDIR_NAME``), so a run directory containing ``/nemo_run`` is refused.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shlex
import shutil
import sys
from pathlib import Path

from nemo_gift.utils.convert import ConfigError
from nemo_gift.config.cluster import ClusterConfig, check_value
from nemo_gift.launcher.process import RunDirBusy

JOB_FILE = ".slurm_job"
"""``RUN_DIR/.slurm_job``: the id of the last job submitted into the run directory."""


def require_nemo_run():
    """``import nemo_run``, or a ConfigError naming the extra to install."""
    try:
        import nemo_run
    except ImportError as err:
        raise ConfigError(
            f"cluster.executor=slurm submits through NeMo-Run, which is not importable ({err}); "
            "pip install -e .[slurm]"
        ) from None
    return nemo_run


def check_submission(cluster: ClusterConfig, name: str, run_dir: Path, submitting: bool = True) -> None:
    """The values of a submission that are not cluster fields: the job name as it reaches the
    script, the run directory, and (when ``submitting``, not for a dry run) a local ``sbatch``
    where the tunnel needs one."""
    try:
        check_value("name", name, "job_name")
        check_value("cluster.job_name_prefix + name", cluster.job_name_prefix + name, "job_name")
        check_value("run_dir", str(run_dir), "path")
    except ValueError as err:
        raise ConfigError(f"{err} (it is written into the sbatch script)") from None
    if "/nemo_run" in str(run_dir) and cluster.container_image is None:
        raise ConfigError(
            f"run_dir={run_dir} contains '/nemo_run', which NeMo-Run rewrites in a script without a "
            "container (its RUNDIR_NAME); choose another run_dir"
        )
    if submitting and cluster.tunnel == "local" and shutil.which("sbatch") is None:
        raise ConfigError(
            "cluster.tunnel=local submits with this machine's sbatch, which is not on PATH: run on a "
            "Slurm login node, or set cluster.tunnel=ssh with cluster.ssh.host and cluster.ssh.user"
        )


def _mounts(cluster: ClusterConfig, run_dir: Path) -> list[str]:
    mounts = list(cluster.container_mounts)
    if not any(m.split(":")[0] == str(run_dir) for m in mounts):
        mounts.append(f"{run_dir}:{run_dir}")
    return mounts


def _tunnel(nemo_run, cluster: ClusterConfig, run_dir: Path):
    if cluster.tunnel == "ssh":
        ssh = cluster.ssh
        return nemo_run.SSHTunnel(host=ssh.host, user=ssh.user, identity=ssh.identity,
                                  job_dir=ssh.job_dir or str(run_dir / "experiments"))
    return nemo_run.LocalTunnel(job_dir=str(run_dir / "experiments"))


def build_executor(cluster: ClusterConfig, run_dir: Path):
    """The ``nemo_run.SlurmExecutor`` of ``cluster`` (values already checked by ClusterConfig)."""
    from nemo_run.core.execution.slurm import SlurmJobDetails

    nemo_run = require_nemo_run()
    q = shlex.quote
    env = {"MASTER_ADDR": '"$head_node"', "MASTER_PORT": str(cluster.master_port),
           "NEMO_GIFT_DIST_BACKEND": cluster.backend}
    env.update({k: q(str(v)) for k, v in cluster.env_vars.items()})
    srun_args = [q(a) for a in cluster.srun_args]
    if cluster.container_image and cluster.container_workdir:
        srun_args.append(f"--container-workdir={cluster.container_workdir}")
    extra = {}
    for arg in cluster.sbatch_args:
        key, _, value = arg.lstrip("-").partition("=")
        extra[key] = value or True
    return nemo_run.SlurmExecutor(
        account=cluster.account, partition=cluster.partition, job_name_prefix=cluster.job_name_prefix,
        time=cluster.time, nodes=cluster.nodes, ntasks_per_node=cluster.tasks_per_node,
        gpus_per_node=cluster.gpus_per_node or None, cpus_per_task=cluster.cpus_per_task, mem=cluster.mem,
        exclusive=cluster.exclusive or None, container_image=cluster.container_image,
        container_mounts=_mounts(cluster, run_dir) if cluster.container_image else [],
        env_vars=env, srun_args=srun_args, additional_parameters=extra or None,
        tunnel=_tunnel(nemo_run, cluster, run_dir), packager=nemo_run.Packager(),
        job_details=SlurmJobDetails(folder=str(run_dir)), poll_estimated_start_time=False,
        monitor_group_job=False,
    )


def _task(nemo_run, command: list[str]):
    q = shlex.quote
    return nemo_run.Script(path=q(command[1]), args=[q(a) for a in command[2:]], entrypoint=q(command[0]))


def train_command(cluster: ClusterConfig, run_dir: Path) -> list[str]:
    """Every rank's command line."""
    return [cluster.python, "-m", "nemo_gift.train", "--config", str(run_dir / "config.yaml")]


@contextlib.contextmanager
def _quiet_io():
    """NeMo-Run's shell commands (``invoke``) read stdin, and its console prints a banner: give
    them an empty stdin and keep stdout for the launcher's own output. ``Experiment`` also
    reconfigures the root logger (``logging.basicConfig(force=True)`` in
    ``nemo_run/core/frontend/console/api.py`` ``configure_logging``: its level and a RichHandler),
    which would silence the launcher's own warnings afterwards; the root logger is restored."""
    root = logging.getLogger()
    stdin, level, handlers = sys.stdin, root.level, list(root.handlers)
    sys.stdin = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        sys.stdin = stdin
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


_QUIET_EXPERIMENT = None


def __getattr__(name: str):
    """``QuietExperiment``: ``nemo_run.Experiment`` whose ``__del__`` keeps its cleanup but not
    its ``deconfigure_logging()``, which removes the root logger's first handler whenever the
    object is collected (``nemo_run/run/experiment.py``, ``Experiment.__del__``): one of the
    caller's handlers, long after :func:`_quiet_io` restored them. Built on first use, so that
    importing this module needs no NeMo-Run; a module attribute, because NeMo-Run saves an
    experiment by the import path of its class."""
    global _QUIET_EXPERIMENT
    if name != "QuietExperiment":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _QUIET_EXPERIMENT is None:
        class QuietExperiment(require_nemo_run().Experiment):
            def __del__(self):
                try:
                    self._cleanup()
                except Exception:  # noqa: BLE001 - as NeMo-Run's own __del__: never raise at collection
                    pass

        QuietExperiment.__module__, QuietExperiment.__qualname__ = __name__, "QuietExperiment"
        _QUIET_EXPERIMENT = QuietExperiment
    return _QUIET_EXPERIMENT


@contextlib.contextmanager
def _experiment(cfg, run_dir: Path, command: list[str]):
    nemo_run = require_nemo_run()
    executor = build_executor(cfg.cluster, run_dir)
    with _quiet_io():
        with __getattr__("QuietExperiment")(cfg.name, executor=executor, base_dir=str(run_dir), log_level="ERROR",
                                 enable_goodbye_message=False, skip_status_at_exit=True) as exp:
            exp.add(_task(nemo_run, command), executor=executor, name=cfg.name)
            yield exp


def render(cfg, run_dir: Path, command: list[str] | None = None) -> str:
    """NeMo-Run's sbatch script for ``cfg`` (``--dry-run``); leaves nothing behind in ``run_dir``."""
    run_dir = Path(run_dir).resolve()
    check_submission(cfg.cluster, cfg.name, run_dir, submitting=False)
    created = None if (run_dir / "experiments").exists() else run_dir / "experiments"
    while created is not None and not created.parent.exists():  # the outermost new directory
        created = created.parent
    exp_dir = None
    try:
        with _experiment(cfg, run_dir, command or train_command(cfg.cluster, run_dir)) as exp:
            exp_dir = Path(exp._exp_dir)
            exp.dryrun(log=False, delete_exp_dir=False)
            return next(exp_dir.glob("*_sbatch.sh")).read_text()
    finally:  # earlier submissions' experiments stay
        if created is not None or exp_dir is not None:
            shutil.rmtree(created if created is not None else exp_dir, ignore_errors=True)


def submit(cfg, run_dir: Path, command: list[str] | None = None) -> tuple[str, Path]:
    """Submit ``cfg`` (its config already in ``run_dir``); returns (job id, the ranks' log)."""
    run_dir = Path(run_dir).resolve()
    check_submission(cfg.cluster, cfg.name, run_dir)
    command = command or train_command(cfg.cluster, run_dir)
    with _experiment(cfg, run_dir, command) as exp:
        if cfg.cluster.tunnel == "ssh":
            _upload_config(exp.jobs[0].executor.tunnel, run_dir)
        exp.run(detach=True)
        handle = exp.jobs[0].handle
    job_id = handle.rstrip("/").rsplit("/", 1)[-1]  # a torchx handle: slurm_tunnel://nemo_run/JOBID
    (run_dir / JOB_FILE).write_text(job_id + "\n")
    job_name = cfg.cluster.job_name_prefix + cfg.name
    return job_id, run_dir / f"log-{job_name}_{job_id}_0.out"


def refuse_live_job(cluster: ClusterConfig, run_dir: Path) -> None:
    """Raise :class:`RunDirBusy` if the job recorded in ``RUN_DIR/.slurm_job`` is still known
    to Slurm (``squeue`` through the tunnel lists it: pending, running, completing)."""
    path = Path(run_dir) / JOB_FILE
    job_id = path.read_text().strip() if path.is_file() else ""
    if not job_id.isdigit():
        return
    nemo_run = require_nemo_run()
    with _quiet_io():
        tunnel = _tunnel(nemo_run, cluster, Path(run_dir))
        tunnel.connect()
        out = tunnel.run(f"squeue -h -j {job_id} -o %T", hide=True, warn=True)
    state = (out.stdout or "").strip()
    if state:
        raise RunDirBusy(
            f"run_dir {run_dir} is in use by Slurm job {job_id} ({state}); wait for it, scancel {job_id}, "
            "or choose another run_dir"
        )


def _upload_config(tunnel, run_dir: Path) -> None:
    """Over SSH: the cluster's RUN_DIR gets this machine's ``config.yaml``."""
    tunnel.connect()
    tunnel.run(f"mkdir -p {shlex.quote(str(run_dir))}")
    tunnel.put(str(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
