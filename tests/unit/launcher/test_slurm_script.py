"""The sbatch script the launcher writes: structure, container flags, rendezvous, quoting."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_gift.launcher.cluster import ClusterConfig
from nemo_gift.launcher.main import load
from nemo_gift.launcher.slurm import render_sbatch

REPO = Path(__file__).resolve().parents[3]


def _script(name="gift_qwen32b", overrides=()):
    cfg = load(name, list(overrides))
    run_dir = Path(cfg.run_dir).resolve()
    return render_sbatch(cfg.cluster, cfg.name, run_dir, run_dir / "config.yaml"), run_dir


def test_gift_qwen32b_sbatch_structure():
    script, run_dir = _script()
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    sbatch = [l for l in lines if l.startswith("#SBATCH")]
    assert sbatch == [
        "#SBATCH --job-name=nemo_gift-gift_qwen32b",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --time=12:00:00",
        f"#SBATCH --output={run_dir}/slurm-%j.out",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=16",  # issue 15: TensorRT-LLM's Ray placement group needs TP x PP CPUs
        "#SBATCH --mem=0",
        "#SBATCH --partition=batch",
        "#SBATCH --exclusive",
    ]
    # header first, then exports, then one srun
    first_export = next(i for i, l in enumerate(lines) if l.startswith("export "))
    assert first_export > max(i for i, l in enumerate(lines) if l.startswith("#SBATCH"))
    assert 'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"' in lines
    assert "export MASTER_PORT=29500" in lines
    assert "export NEMO_GIFT_DIST_BACKEND=nccl" in lines
    assert "export CUDA_DEVICE_MAX_CONNECTIONS=1" in lines
    srun = script[script.index("srun "):].replace("\\\n", " ")
    argv = shlex.split(srun)
    assert argv[0] == "srun"
    assert "--container-image=/lustre/images/nemo_gift.sqsh" in argv
    mounts = next(a for a in argv if a.startswith("--container-mounts=")).split("=", 1)[1].split(",")
    assert mounts == ["/lustre/data:/data", "/lustre/models:/models", f"{run_dir}:{run_dir}"]
    assert argv[-5:] == ["python", "-m", "nemo_gift.train", "--config", f"{run_dir}/config.yaml"]


def test_no_container_means_plain_srun():
    script, _ = _script("gift_tiny", ["cluster=local_slurm"])
    assert "--container-image" not in script and "--container-mounts" not in script
    assert "#SBATCH --ntasks-per-node=2" in script and "--gpus-per-node" not in script


def test_every_value_is_quoted():
    evil = "x'; rm -rf / #"
    cluster = ClusterConfig(
        executor="slurm", partition=evil, account="a b", env_vars={"MY_VAR": evil},
        container_image="img $(whoami)", container_mounts=["/a b:/c"], srun_args=["--comment=$(id)"],
    )
    script = render_sbatch(cluster, "job; ls", Path("/tmp/run dir"), Path("/tmp/run dir/config.yaml"))
    # bash parses it without running anything, and every value stays one literal word
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert f"#SBATCH --partition={shlex.quote(evil)}" in script
    assert f"export MY_VAR={shlex.quote(evil)}" in script
    assert shlex.quote("--container-image=img $(whoami)") not in script  # the flag name stays bare
    assert "--container-image='img $(whoami)'" in script
    assert "'--comment=$(id)'" in script


def test_bad_env_var_name_is_refused():
    with pytest.raises(ValueError, match="not a valid environment variable name"):
        render_sbatch(ClusterConfig(executor="slurm", env_vars={"A=B; ls": "1"}), "j", Path("/tmp"), Path("/tmp/c"))


def test_dry_run_prints_the_script_and_submits_nothing(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "launcher" / "run.py"), "conf=gift_qwen32b", f"run_dir={tmp_path}", "--dry-run"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("#!/bin/bash") and "nemo_gift.train" in out.stdout
    assert not any(tmp_path.iterdir())  # nothing written


def test_launcher_reports_config_errors_with_exit_code_2(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "launcher" / "run.py"), "conf=gift_tiny", "rollout.group_size=1"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert out.returncode == 2
    assert "config error: rollout.group_size=1" in out.stderr
