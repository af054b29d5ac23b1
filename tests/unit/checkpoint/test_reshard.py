"""A checkpoint saved at TP=2 x DP=2 with megatron-core's distributed optimizer (and sequence
parallelism, as the GPU recipes run) resumes at TP=1 x DP=1 and at TP=1 x PP=2.

The uninterrupted run trains steps 0-1, saves (``MegatronPolicy.save``: dist_checkpointing),
then trains steps 2-3. Each resumed run must hold, right after the load, exactly the saved
weights, Adam moments (``exp_avg``, ``exp_avg_sq``, read from the optimizer's own state and
unsharded independently of the checkpoint code), Adam step and LR; its losses of steps 2-3
must match the uninterrupted run's to 1e-6 (relative: the new layout reduces in another
order, see test_recipe_layouts.py), and at the unchanged layout bit for bit.
"""

import pytest

from nemo_gift.distributed.spawn import run_on_ranks
from tests.unit.distributed._train_ranks import (
    TRAINER_STATE,
    bf16_resume,
    reference_run,
    resharding_source,
    resharding_target,
)

pytestmark = pytest.mark.distributed

SOURCE = dict(tensor_model_parallel_size=2, sequence_parallel=True, use_distributed_optimizer=True)
TARGETS = {
    "tp1_dp1": (1, dict(use_distributed_optimizer=True)),
    "tp1_pp2": (2, dict(pipeline_model_parallel_size=2, use_distributed_optimizer=True)),
}
LOSS_RTOL = 1e-6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("reshard"))
    (ref,) = run_on_ranks(reference_run, 1, args=(0,), timeout=120)
    source = run_on_ranks(resharding_source, 4, args=(root, ref["initial"], SOURCE), timeout=420)
    path = source[0]["path"]
    targets = {
        name: run_on_ranks(resharding_target, n, args=(path, kwargs, name == "tp1_dp1"), timeout=300)
        for name, (n, kwargs) in TARGETS.items()
    }
    return source, targets


def _max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_resharded_resume_restores_adam_and_continues(runs, target):
    source, targets = runs
    saved, continued = source[0]["saved"], source[0]["continued"]
    assert saved["adam_steps"] == [2.0]
    for rank, res in enumerate(targets[target]):
        assert res["trainer_state"] == TRAINER_STATE
        assert res["losses"] == pytest.approx(continued, rel=LOSS_RTOL), (target, rank, res["losses"], continued)
    restored = targets[target][0]["restored"]
    for key in ("weights", "exp_avg", "exp_avg_sq"):
        assert _max_diff(restored[key], saved[key]) == 0.0, (target, key)
    assert max(v.abs().max().item() for v in restored["exp_avg_sq"].values()) > 0  # real moments, not zeros
    assert restored["adam_steps"] == saved["adam_steps"] and restored["lr"] == saved["lr"]
    print(f"{target}: losses {targets[target][0]['losses']} vs uninterrupted {continued}")


def test_resume_at_the_same_layout_is_bit_exact(runs):
    source, _ = runs
    for res in source:
        assert res["resumed_same_layout"] == res["continued"]
        assert res["trainer_state"] == TRAINER_STATE


def test_switching_the_optimizer_kind_is_refused_with_the_reason(runs):
    _, targets = runs
    message = targets["tp1_dp1"][0]["other_optimizer_error"]
    assert "use_distributed_optimizer=true" in message and "Resume with the saved value" in message


def test_bf16_resume_restores_the_fp32_main_weights(tmp_path):
    """With bf16 parameters the distributed optimizer keeps separate fp32 main weights; a resume
    that lost them (or the moments) would continue from the rounded bf16 weights instead."""
    for res in run_on_ranks(bf16_resume, 2, args=(str(tmp_path), SOURCE), timeout=300):
        assert res["dtypes"] == ["torch.bfloat16"]
        assert res["resumed"] == res["continued"]
