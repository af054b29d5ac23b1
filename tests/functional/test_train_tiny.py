"""End to end on CPU: the launcher runs gift_tiny and grpo_tiny, and a killed run resumes
exactly as if it had never stopped, even when its newest checkpoint is corrupt (the resume
falls back to the previous one and says which file was bad)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN = [sys.executable, str(REPO / "launcher" / "run.py")]
# Small but real: a short warm start, 16 prompts x 8 responses per step, 16 eval prompts.
SHORT = ["sft.steps=10", "sft.cache_dir=null", "data.eval_size=16", "logging.progress_bar=false",
         "logging.tensorboard=false"]


def _launch(args, **kwargs):
    return subprocess.Popen(RUN + args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kwargs)


def _run(args, timeout=300):
    proc = _launch(args)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _metrics(run_dir):
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _comparable(records):
    """Every metric but wall-clock times."""
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/")} for r in records]


@pytest.mark.parametrize("recipe", ["gift_tiny", "grpo_tiny"])
def test_tiny_recipe_runs_end_to_end(tmp_path, recipe):
    _run([f"conf={recipe}", f"run_dir={tmp_path}", "trainer.max_steps=2", "trainer.eval_every=1", *SHORT])
    records = _metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2]
    for r in records:
        assert 0.0 <= r["eval/pass@1"] <= 1.0 and "train/pass@1" in r
    for r in records[1:]:
        for key in ("train/reward", "train/loss", "train/grad_norm", "train/response_length", "time/rollout"):
            assert key in r, key
    if recipe == "gift_tiny":
        assert "train/z_a_corr" in records[1] and "train/degenerate_implicit_std_frac" in records[1]
    assert (tmp_path / "checkpoints" / "step_000002" / "metadata.json").is_file()
    assert (tmp_path / "plots" / "curves.png").is_file()
    assert len((tmp_path / "sft_metrics.jsonl").read_text().splitlines()) == 10
    cfg = (tmp_path / "config.yaml").read_text()
    assert f"name: {recipe}" in cfg


def test_killed_run_resumes_as_if_never_stopped(tmp_path):
    common = ["conf=gift_tiny", "trainer.max_steps=4", "trainer.eval_every=2", "checkpoint.every=1", *SHORT]
    _run(common + [f"run_dir={tmp_path / 'straight'}"])
    straight = _metrics(tmp_path / "straight")

    killed_dir = tmp_path / "killed"
    proc = _launch(common + [f"run_dir={killed_dir}"])
    deadline = time.monotonic() + 300
    while not (killed_dir / "checkpoints" / "step_000002" / "metadata.json").is_file():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint of step 2 in time"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its training process
    proc.wait()
    killed = _metrics(killed_dir)
    assert killed[-1]["step"] < 4, "the run finished before it was killed"
    # The newest complete checkpoint rots on disk: one flipped byte in a tensor file.
    newest = max(p for p in (killed_dir / "checkpoints").glob("step_??????") if (p / "metadata.json").is_file())
    victim = sorted((newest / "dist").glob("*.distcp"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    out = _run(common + [f"run_dir={killed_dir}"])
    assert f"checkpoint {newest} is corrupt and is skipped: {victim}" in out, out[-3000:]
    resumed = _metrics(killed_dir)
    assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4]
    assert _comparable(resumed) == _comparable(straight), out[-2000:]
