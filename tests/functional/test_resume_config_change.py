"""End to end on CPU: a resume with a changed LR is refused before any work (exit 2, nothing
written), then, with checkpoint.resume_config_change=allow, continues on the new schedule and
records the change."""

import json
import subprocess

import pytest

from tests.functional.test_train_tiny import RUN, SHORT, _metrics, _run
from tests.unit.config._fixtures import tree

pytestmark = pytest.mark.slow


def test_changed_lr_is_refused_then_applied_when_allowed(tmp_path):
    common = ["conf=gift_tiny", "trainer.eval_every=0", *SHORT, f"run_dir={tmp_path}"]
    _run(common + ["trainer.max_steps=2"])
    before = tree(tmp_path)

    refused = subprocess.run(RUN + common + ["trainer.max_steps=3", "optim.lr=5e-4"], capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "optim.lr: 0.0001 -> 0.0005" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and tree(tmp_path) == before

    _run(common + ["trainer.max_steps=3", "optim.lr=5e-4", "checkpoint.resume_config_change=allow"])
    records = _metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    # gift_tiny warms the LR up over 10 optimizer steps (one per rollout step): rollout step s runs
    # optimizer step s - 1 at lr * (s - 1) / 10, on the old LR before the resume, the new after it.
    assert records[1]["train/lr"] == pytest.approx(1e-4 * 1 / 10, rel=1e-9)
    assert records[2]["train/lr"] == pytest.approx(5e-4 * 2 / 10, rel=1e-9)
    change = json.loads((tmp_path / "config_changes.jsonl").read_text())
    assert change["step"] == 2 and change["changes"] == {"optim.lr": {"from": 1e-4, "to": 5e-4}}
    meta = json.loads((tmp_path / "checkpoints" / "step_000003" / "metadata.json").read_text())
    assert meta["trainer_state"]["run_config"]["optim"]["lr"] == 5e-4
