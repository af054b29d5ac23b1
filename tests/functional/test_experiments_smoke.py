"""End to end on CPU: ``experiments/run.py --smoke`` warm-starts, trains every smoke (arm, seed)
for a few steps, writes the results page and the plots, and a second call skips the finished runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import report

REPO = Path(__file__).resolve().parents[2]


def _run(args, timeout):
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "run.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(1000)
def test_smoke_experiment_runs_end_to_end(tmp_path):
    out = tmp_path / "out"
    rc, log = _run(["--smoke", "--out", str(out)], timeout=900)
    assert rc == 0, log[-4000:]
    spec = report.load_spec().smoke_spec()
    for arm in spec.arms:
        for seed in spec.seeds:
            run_dir = out / "runs" / arm.name / f"seed_{seed}"
            assert report.run_complete(run_dir, spec.max_steps), f"{run_dir}: no final step\n{log[-3000:]}"
            assert (run_dir.parent / f"seed_{seed}.log").is_file()
    results = (out / "results.md").read_text()
    assert "## The paper's claims" in results and "## Is GIFT's loss active?" in results
    for name in ("gift_vs_grpo.png", "ablations.png"):
        assert (out / "img" / name).stat().st_size > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["smoke"] is True and len(manifest["runs"]) == len(spec.arms) * len(spec.seeds)
    assert all(r["cpu_s"] > 0 for r in manifest["runs"].values())

    rc, log = _run(["--smoke", "--out", str(out)], timeout=300)  # resumes: nothing left to run
    assert rc == 0, log[-4000:]
    assert log.count("done before, skipped") == len(spec.arms) * len(spec.seeds), log[-3000:]
