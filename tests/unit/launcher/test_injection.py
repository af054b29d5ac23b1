"""No shell injection through the sbatch script: the worst inputs are refused naming the key, and
hostile values that are allowed reach the ranks literally.

Each rendered script is run by bash with stub ``srun``/``scontrol``/``sbatch`` on PATH that
record what they receive; a payload that ran would create ``PWNED``. A control case renders the
first payload with NeMo-Run directly (no checks) and shows that the harness sees it run.
"""

import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_gift.utils.convert import ConfigError
from nemo_gift.config.schema import load_run_config
from nemo_gift.launcher.main import compose

pytest.importorskip("nemo_run", reason="Slurm submission goes through NeMo-Run: pip install -e .[slurm]")

from nemo_gift.launcher import slurm  # noqa: E402

SRUN = """#!/bin/bash
if [[ " $* " == *" hostname "* ]]; then echo 127.0.0.1; exit 0; fi
printf '%s\\0' "$@" > "$STUB_DIR/srun.argv"
printf '%s' "${EVIL-unset}" > "$STUB_DIR/srun.evil"
"""
SCONTROL = '#!/bin/bash\n[[ "$1 $2" == "show hostnames" ]] && echo node1\nexit 0\n'
SBATCH = '#!/bin/bash\nprintf "%s\\0" "$@" > "$STUB_DIR/sbatch.argv"\necho 1\n'


@pytest.fixture
def stubs(tmp_path, monkeypatch):
    bin_dir = tmp_path / "stubs"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL), ("sbatch", SBATCH)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    return bin_dir


def _raw(tmp_path, **cluster) -> dict:
    raw = compose("gift_tiny", ["cluster=local_slurm"])
    raw["run_dir"] = str(tmp_path / "run")
    raw["cluster"].update(cluster)
    return raw


def _run_script(script: str, tmp_path: Path, stubs: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, STUB_DIR=str(stubs), SLURM_JOB_NODELIST="node1", SLURM_JOB_ID="1")
    return subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)


def _pwned(tmp_path) -> str:
    return str(tmp_path / "PWNED")


# The worst inputs: (what, where it goes, the value, the key the refusal must name).
def worst(p: str) -> list[tuple[str, str, object, str]]:
    return [
        ("newline in #SBATCH --account", "cluster.account", f"acct\ntouch {p} #", "cluster.account"),
        ("newline in the recipe name (job name)", "name", f"x\ntouch {p} #", "name="),
        ("'$' before a trailing newline in the time", "cluster.time", "01:00:00\n", "cluster.time"),
        ("carriage return in --mem", "cluster.mem", f"0\rtouch {p}", "cluster.mem"),
        ("command separator in the partition", "cluster.partition", f"debug;touch {p}", "cluster.partition"),
        ("NUL in an env value", "cluster.env_vars", {"OK": f"a\x00touch {p}"}, "cluster.env_vars.OK"),
        ("env name with '=' and ';'", "cluster.env_vars", {f"A=B;touch {p};X": "1"}, "cluster.env_vars"),
        ("a second mount and a substitution", "cluster.container_mounts", [f"/a:/b,/c:/d$(touch {p})"],
         "cluster.container_mounts[0]"),
        ("#SBATCH option with a script after it", "cluster.sbatch_args", [f"--qos=high\n#!/bin/sh\ntouch {p}"],
         "cluster.sbatch_args[0]"),
        ("srun option with a substitution (NeMo-Run does not quote srun args)", "cluster.srun_args",
         [f"--comment=$(touch {p})"], "cluster.srun_args[0]"),
        ("backticks in the image", "cluster.container_image", f"img`touch {p}`", "cluster.container_image"),
        ("a command as the interpreter", "cluster.python", f"python;touch {p}", "cluster.python"),
        ("substitution in the job-name prefix", "cluster.job_name_prefix", f"$(touch {p})", "cluster.job_name_prefix"),
        ("substitution in the run directory (sbatch PATH runs through a shell)", "run_dir",
         f"/tmp/x $(touch {p})", "run_dir="),
    ]


def test_there_are_at_least_10_worst_inputs(tmp_path):
    assert len(worst(_pwned(tmp_path))) >= 10


@pytest.mark.parametrize("index", range(14), ids=[w[0] for w in worst("P")])
def test_worst_input_is_refused_naming_the_key(index, tmp_path, stubs):
    what, where, value, key = worst(_pwned(tmp_path))[index]
    raw = _raw(tmp_path)
    if where.startswith("cluster."):
        raw["cluster"][where.split(".", 1)[1]] = value
    else:
        raw[where] = value
    with pytest.raises(ConfigError) as err:
        cfg = load_run_config(raw)
        slurm.render(cfg, Path(cfg.run_dir))  # name and run_dir are checked as they reach the script
    assert key in str(err.value), str(err.value)
    assert not Path(_pwned(tmp_path)).exists()


def test_hostile_values_that_are_allowed_arrive_literally(tmp_path, stubs):
    p = _pwned(tmp_path)
    evil = f"$(touch {p}); `touch {p}` ' \" \\ && touch {p} | cat > {p} $head_node"
    python = str(tmp_path / "my python+3.11/bin/python").replace(" ", "_")
    cfg = load_run_config(_raw(tmp_path, env_vars={"EVIL": evil}, python=python, srun_args=["--comment=a,b:c"]))
    script = slurm.render(cfg, Path(cfg.run_dir))
    out = _run_script(script, tmp_path, stubs)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not Path(p).exists()
    argv = (stubs / "srun.argv").read_text().split("\0")[:-1]
    assert argv[-5:] == [python, "-m", "nemo_gift.train", "--config", f"{tmp_path}/run/config.yaml"]
    assert "--comment=a,b:c" in argv and "--kill-on-bad-exit=1" in argv
    assert (stubs / "srun.evil").read_text() == evil  # one literal value in every rank's environment


def test_control_the_harness_sees_an_injection_through_unchecked_nemo_run(tmp_path, stubs):
    """The first worst input rendered by NeMo-Run without the checks runs its payload."""
    p = _pwned(tmp_path)
    cfg = load_run_config(_raw(tmp_path))
    cluster = dataclasses.replace(cfg.cluster)
    object.__setattr__(cluster, "account", f"acct\ntouch {p} #")  # past __post_init__'s checks
    executor = slurm.build_executor(cluster, Path(cfg.run_dir))
    import nemo_run

    with slurm._quiet_io(), nemo_run.Experiment("ctl", executor=executor, base_dir=str(tmp_path / "ctl"),
                                                 log_level="ERROR", enable_goodbye_message=False) as exp:
        exp.add(nemo_run.Script(path="x", entrypoint="python", args=[]), executor=executor, name="ctl")
        exp.dryrun(log=False, delete_exp_dir=False)
        script = next(Path(exp._exp_dir).glob("*_sbatch.sh")).read_text()
    assert f"#SBATCH --account='acct\ntouch {p} #'" in script
    _run_script(script, tmp_path, stubs)
    assert Path(p).exists()


def test_bash_parses_every_rendered_recipe_script(tmp_path, stubs):
    value = "it's \"quoted\""
    cfg = load_run_config(_raw(tmp_path, env_vars={"Q": value}))
    script = slurm.render(cfg, Path(cfg.run_dir))
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert "export Q=" + shlex.quote(value) in script.splitlines()
