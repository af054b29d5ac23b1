"""The newest checkpoint is corrupt: the resume falls back to the previous complete one, logs
which file was bad, and continues bit for bit as the uninterrupted run.

Three corruptions of the newest of two checkpoints (steps 1 and 2; 2 ranks, TP=2, the
distributed optimizer): a flipped byte inside a tensor file (same size: only the CRC-32
sees it), a truncated RNG file, and an unparsable metadata.json.
"""

import json
import shutil

import pytest

from nemo_gift.distributed.spawn import run_on_ranks
from nemo_gift.models.policy import checkpoint as ckpt
from tests.unit.distributed._train_ranks import resume_newest_and_finish, save_each_step

pytestmark = pytest.mark.distributed

LAYOUT = dict(tensor_model_parallel_size=2, use_distributed_optimizer=True)
STEPS = 3


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    losses = run_on_ranks(save_each_step, 2, args=(str(root), LAYOUT, STEPS), timeout=300)[0]
    shutil.rmtree(root / "step_000003")  # keep steps 1 and 2, the newest being 2
    return root, losses


def _flip_a_byte(step_dir):
    victim = sorted((step_dir / "dist").glob("*.distcp"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return victim


def _truncate_rng(step_dir):
    victim = step_dir / "rng" / "rank1.pt"
    victim.write_bytes(victim.read_bytes()[:100])
    return victim


def _garble_metadata(step_dir):
    victim = step_dir / "metadata.json"
    victim.write_text(victim.read_text()[:-20])
    return victim


@pytest.mark.parametrize("corrupt", [_flip_a_byte, _truncate_rng, _garble_metadata], ids=lambda f: f.__name__[1:])
def test_resume_falls_back_to_the_previous_checkpoint(saved, tmp_path, corrupt):
    root, losses = saved
    shutil.copytree(root, tmp_path / "ckpts")
    root = tmp_path / "ckpts"
    victim = corrupt(root / "step_000002")
    assert ckpt.resumable_checkpoint(root) == root / "step_000001"
    if corrupt is _flip_a_byte:  # same size: the cheap check cannot see it
        assert ckpt.latest_checkpoint(root) == root / "step_000002"
    else:
        assert ckpt.latest_checkpoint(root) == root / "step_000001"
    with pytest.raises(ValueError, match=str(victim)):
        ckpt.verify_checkpoint(root / "step_000002")
    resumed = run_on_ranks(resume_newest_and_finish, 2, args=(str(root), LAYOUT, STEPS), timeout=300)
    for rank, res in enumerate(resumed):
        assert res["start"] == 1
        assert res["losses"] == losses[1:], rank  # bit for bit: same layout, RNG restored
    assert any(str(victim) in w and "is corrupt and is skipped" in w for w in resumed[0]["warnings"]), resumed[0]


def test_a_complete_checkpoint_lists_its_files(saved):
    root, _ = saved
    meta = json.loads((root / "step_000002" / "metadata.json").read_text())
    on_disk = {str(f.relative_to(root / "step_000002")) for f in (root / "step_000002").rglob("*") if f.is_file()}
    assert set(meta["files"]) == on_disk - {"metadata.json"}  # every file, whatever megatron-core writes
    assert {"rng/rank0.pt", "rng/rank1.pt", "dist/.metadata"} <= set(meta["files"])
    ckpt.verify_checkpoint(root / "step_000002")


def test_no_intact_checkpoint_is_refused_not_started_over(saved, tmp_path):
    """Every finished save went bad (a flipped byte: only the CRC-32 sees it): the resume is
    refused, naming the bad file, instead of a fresh start that would overwrite them."""
    from nemo_gift.launcher.main import load
    from nemo_gift.utils.convert import ConfigError
    from nemo_gift.config.resume import plan_resume, verified_plan

    root, _ = saved
    run = tmp_path / "run"
    shutil.copytree(root, run / "checkpoints")
    shutil.rmtree(run / "checkpoints" / "step_000001")
    victim = _flip_a_byte(run / "checkpoints" / "step_000002")
    # the saved layout's optimizer kind and embedding rows, so that only the corruption is in the way
    cfg = load("gift_tiny", [f"run_dir={run}", "parallel.use_distributed_optimizer=true", "model.vocab_size=64"])
    plan = plan_resume(cfg)  # sizes only: the launcher's check passes this one
    assert plan.checkpoint == run / "checkpoints" / "step_000002"
    with pytest.raises(ConfigError, match="no usable checkpoint") as err:
        verified_plan(cfg, plan)
    assert str(victim) in str(err.value) and "checkpoint.resume" in str(err.value)
    assert victim.exists()
