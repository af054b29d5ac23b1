"""Resume compares configs: which keys change the trajectory, refusal before any work (launcher
and direct ``nemo_gift.train`` starts), the allow switch and its record."""

from __future__ import annotations

import json

import pytest
import torch.distributed as dist

from nemo_gift.utils.convert import ConfigError, to_dict
from nemo_gift.config.resume import CHANGES_FILE, config_changes, plan_resume, record_changes, trajectory_changes
from nemo_gift.config.schema import write_run_config
from nemo_gift.launcher.main import load

from ._fixtures import tree, write_checkpoint_metadata


def _cfg(*overrides):
    return to_dict(load("gift_tiny", list(overrides)))


@pytest.mark.parametrize("override,key", [
    ("optim.lr=5e-3", "optim.lr"),
    ("rollout.group_size=4", "rollout.group_size"),
    ("seed=7", "seed"),
    ("trainer.algorithm=grpo", "trainer.algorithm"),
    ("gift.beta=0.5", "gift.beta"),
    ("rollout.temperature=0.7", "rollout.temperature"),
    ("data.arithmetic.max_digits=3", "data.arithmetic.max_digits"),
    ("reward.timeout_s=2", "reward.timeout_s"),
    ("model.num_layers=4", "model.num_layers"),
    ("parallel.params_dtype=bfloat16", "parallel.params_dtype"),
    ("sft.steps=10", "sft.steps"),
    ("trainer.prompts_per_step=32", "trainer.prompts_per_step"),
])
def test_trajectory_keys_are_flagged(override, key):
    changes = trajectory_changes(_cfg(), _cfg(override))
    assert list(changes) == [key]


@pytest.mark.parametrize("overrides", [
    ["parallel.tensor_model_parallel_size=2", "cluster.tasks_per_node=2"],  # layout
    ["logging.plots=false", "logging.tensorboard=false", "logging.progress_bar=false"],
    ["checkpoint.every=1", "checkpoint.keep_last=5", "checkpoint.resume=never"],
    ["trainer.eval_every=3", "data.eval_size=32", "rollout.eval_temperature=0.5"],
    ["trainer.micro_batch_size=32", "trainer.logprob_chunk_size=4", "reward.math_verify_workers=4"],
    ["trainer.max_tokens_per_micro_batch=4096"],
    ["name=other", "run_dir=elsewhere", "sft.cache_dir=null"],
    ["trainer.max_steps=300"],  # a longer run under a constant schedule
])
def test_layout_persistence_and_evaluation_keys_are_not_trajectory_changes(overrides):
    saved, new = _cfg(), _cfg(*overrides)
    assert config_changes(saved, new), "the overrides changed nothing"
    assert trajectory_changes(saved, new) == {}


def test_run_length_counts_under_a_cosine_schedule():
    cosine = ["optim.schedule=cosine", "optim.min_lr=1e-5"]
    assert list(trajectory_changes(_cfg(*cosine), _cfg(*cosine, "trainer.max_steps=300"))) == ["trainer.max_steps"]


def test_a_key_absent_from_an_older_config_compares_with_its_default():
    saved, new = _cfg(), _cfg()
    del saved["reward"]["timeout_s"], saved["checkpoint"]["resume_config_change"]
    assert config_changes(saved, new) == {}
    assert trajectory_changes(saved, _cfg("reward.timeout_s=2")) == {"reward.timeout_s": (5.0, 2.0)}


def test_fp8_set_on_resume_is_a_trajectory_change():
    saved, new = _cfg(), _cfg()
    new["parallel"]["fp8"] = {"format": "hybrid"}
    assert list(trajectory_changes(saved, new)) == ["parallel.fp8"]


def test_refused_and_allowed_resume(tmp_path):
    run = tmp_path / "run"
    ckpt = write_checkpoint_metadata(run, load("gift_tiny", [f"run_dir={run}"]), step=3)
    unchanged = plan_resume(load("gift_tiny", [f"run_dir={run}"]))
    assert (unchanged.checkpoint, unchanged.step, unchanged.changes) == (ckpt, 3, {})
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.0001 -> 0\.005; seed: 1234 -> 9") as err:
        plan_resume(load("gift_tiny", [f"run_dir={run}", "optim.lr=5e-3", "seed=9"]))
    assert "checkpoint.resume_config_change=allow" in str(err.value)
    plan = plan_resume(load("gift_tiny", [f"run_dir={run}", "optim.lr=5e-3",
                                          "checkpoint.resume_config_change=allow"]))
    assert plan.changes == {"optim.lr": (1e-4, 5e-3)}
    record_changes(run, plan)
    record = json.loads((run / CHANGES_FILE).read_text())
    assert record["step"] == 3 and record["changes"] == {"optim.lr": {"from": 1e-4, "to": 5e-3}}
    assert plan_resume(load("gift_tiny", [f"run_dir={run}", "optim.lr=5e-3", "checkpoint.resume=never"])).checkpoint is None


def test_a_checkpoint_without_a_recorded_config_resumes_with_a_warning(tmp_path, caplog):
    run = tmp_path / "run"
    ckpt = write_checkpoint_metadata(run, load("gift_tiny", [f"run_dir={run}"]))
    meta = json.loads((ckpt / "metadata.json").read_text())
    del meta["trainer_state"]["run_config"]
    (ckpt / "metadata.json").write_text(json.dumps(meta))
    plan = plan_resume(load("gift_tiny", [f"run_dir={run}", "optim.lr=5e-3"]))
    assert plan.checkpoint == ckpt and plan.changes == {}
    assert "records no run config" in caplog.text


def test_a_direct_start_of_nemo_gift_train_refuses_before_any_work(tmp_path, capsys):
    """``python -m nemo_gift.train --config ...`` (no launcher): exit 2 before any process group."""
    from nemo_gift.train import main

    run = tmp_path / "run"
    write_checkpoint_metadata(run, load("gift_tiny", [f"run_dir={run}"]))
    config = write_run_config(load("gift_tiny", [f"run_dir={run}", "rollout.group_size=4"]), tmp_path / "cfg")
    before = tree(run)
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "rollout.group_size: 8 -> 4" in err and "Traceback" not in err
    assert not dist.is_initialized()
    assert tree(run) == before
