"""``launcher/run.py conf=gift_tiny cluster=local_slurm``: submitted to a real (single-node,
localhost) Slurm, 2 tasks at TP=2 over gloo, it runs to completion.

The cluster comes from ``scripts/slurm_local.sh start`` (``.ci/run`` starts it); without one the
test skips and says so. Enroot/Pyxis are not packaged for Debian, so the container flags are
checked on the rendered script only (tests/unit/launcher/test_slurm_script.py).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_CONF = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/nemo_gift_slurm")) / "slurm.conf"


def _slurm_env():
    if shutil.which("sbatch") is None or not SLURM_CONF.is_file():
        pytest.skip("no local Slurm: run `scripts/slurm_local.sh start` (CI does)")
    env = dict(os.environ, SLURM_CONF=str(SLURM_CONF))
    ok = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
    if ok.returncode != 0 or "idle" not in ok.stdout and "mix" not in ok.stdout and "alloc" not in ok.stdout:
        pytest.skip(f"local Slurm is not up ({ok.stdout.strip() or ok.stderr.strip()})")
    return env


def test_gift_tiny_on_local_slurm_tp2(tmp_path):
    env = _slurm_env()
    out = subprocess.run(
        [sys.executable, str(REPO / "launcher" / "run.py"), "conf=gift_tiny", "cluster=local_slurm",
         f"run_dir={tmp_path}", f"cluster.python={sys.executable}", "parallel.tensor_model_parallel_size=2",
         "trainer.max_steps=2", "trainer.eval_every=2", "sft.steps=10", "sft.cache_dir=null",
         "data.eval_size=16", "logging.progress_bar=false", "logging.tensorboard=false"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    m = re.search(r"submitted job (\d+); log: (\S+)", out.stdout)
    assert m, out.stdout
    job_id, log = m.group(1), Path(m.group(2))
    assert log == tmp_path / f"slurm-{job_id}.out"
    script = (tmp_path / "sbatch.sh").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "--container-image" not in script

    deadline = time.monotonic() + 600
    while True:
        q = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], env=env, capture_output=True, text=True)
        if not q.stdout.strip():
            break
        assert time.monotonic() < deadline, f"job {job_id} still {q.stdout.strip()}; log:\n{log.read_text()[-3000:] if log.exists() else ''}"
        time.sleep(2)
    state = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    text = log.read_text() if log.exists() else ""
    assert "JobState=COMPLETED" in state, f"{state}\n{text[-4000:]}"
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert "eval/pass@1" in records[-1]
    meta = json.loads((tmp_path / "checkpoints" / "step_000002" / "metadata.json").read_text())
    assert {k: meta["layout"][k] for k in ("tp_size", "pp_size", "world_size")} == {"tp_size": 2, "pp_size": 1, "world_size": 2}
