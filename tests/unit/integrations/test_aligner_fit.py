"""``GiftTrainer.fit`` end to end on CPU: NeMo-Aligner's own trainer, model, generation and reward
client, 2 GIFT steps (needs the aligner venv, ``make test-aligner``).

What runs, and what stands in for what, is in ``_aligner_fit``'s docstring. Each run is 2 steps
of 2 prompts x G = 4 responses; the global batch is the whole rollout, so each step is one
mini-batch and one optimizer step. Checked for each step:

- the weights move;
- the GIFT metrics Aligner logs (``train_optim/``) equal ``gift_loss`` (float64) of the batch the
  actor trained on and of the log-probs its micro-batch losses used, and those log-probs equal an
  independent full-vocabulary forward at the same weights;
- ``implicit_baseline: old_policy``: pi_old is recomputed after the rollout from the weights the
  step starts from, so on a single-mini-batch step s = 0 for every response, every group's
  implicit std is below the guard and z = 0 (docs/gift-math.md section 4): the loss is mean(A^2);
- ``implicit_baseline: reference``: s = 0 on the first step (pi = pi_ref), and not on the second
  (the weights moved; pi_ref is Aligner's CPU copy of the initial weights).
"""

import importlib.metadata
import importlib.util
import pathlib
import re

import pytest

if importlib.util.find_spec("nemo_aligner") is None:
    pytest.skip(
        "nemo_aligner is not installed: the NeMo-Aligner tests run in the separate aligner venv "
        "(make test-aligner; docs/nemo-aligner.md)",
        allow_module_level=True,
    )

from nemo_gift.distributed.spawn import run_on_ranks  # noqa: E402
from nemo_gift.integrations.nemo_aligner.loss import METRIC_KEYS  # noqa: E402
from tests.unit.integrations import _aligner_fit  # noqa: E402

STACK_FILE = pathlib.Path(__file__).parents[3] / "containers" / "aligner-stack.txt"


def test_this_venv_runs_the_stack_the_image_pins():
    """containers/aligner-stack.txt is read by both the image and this venv's installer: the fit
    tests below run with exactly the versions the image installs."""
    pins = dict(re.findall(r"^([a-z-]+)==(\S+)$", STACK_FILE.read_text(), re.M))
    assert set(pins) == {"megatron-core", "nemo-toolkit", "nemo-aligner"}
    for package, version in pins.items():
        assert importlib.metadata.version(package) == version, package


# float32 forward passes of one batch, once in inference and once in training micro-batches.
S_NOISE = 1e-5


def _check_run(res: dict, baseline: str) -> None:
    assert res["device_is_torch_device"], res["lightning_device"]  # Lightning's own attribute, untouched
    assert len(res["rollouts"]) == 2 and len(res["optim"]) == 2 and len(res["records"]) == 2
    assert res["has_reference_copy"] == (baseline == "reference")
    for rollout in res["rollouts"]:
        assert rollout["rollout_size"] == _aligner_fit.ROWS
        assert rollout["num_groups"] == _aligner_fit.PROMPTS
        # Some group's rewards differ, so there is something to learn.
        assert rollout["zero_explicit_std_frac"] < 1.0, res["scored"]

    moved = res["moved"]
    assert min(moved.values()) > 1e-5, {k: v for k, v in moved.items() if v <= 1e-5}  # Adam moves every weight

    for step, (logged, record) in enumerate(zip(res["optim"], res["records"])):
        # The log-probs the loss used are the model's, from an independent full-vocabulary forward...
        assert record["logprobs_vs_independent"] < S_NOISE, step
        # ... and what Aligner logged is gift_loss of exactly those.
        for key in METRIC_KEYS:
            assert logged[key] == pytest.approx(record["gift_loss"][key], rel=1e-5, abs=1e-7), (step, key)
        s = record["implicit_rewards"]
        a = record["advantages"]
        if baseline == "old_policy" or step == 0:
            assert max(abs(x) for x in s) < S_NOISE, (step, s)  # s = 0
            assert logged["degenerate_implicit_std_frac"] == 1.0  # every group's std is below the guard
            # z = 0, so L = mean_i A_i^2.
            assert logged["loss"] == pytest.approx(sum(x * x for x in a) / len(a), rel=1e-4), step
        else:
            assert max(abs(x) for x in s) > 1e2 * S_NOISE, s  # pi moved away from pi_ref


@pytest.mark.distributed
@pytest.mark.parametrize("baseline", ["old_policy", "reference"])
def test_gift_trainer_fit_at_tp1(tmp_path, baseline):
    (res,) = run_on_ranks(_aligner_fit.fit_gift, 1, args=(1, baseline, str(tmp_path)), timeout=400)
    _check_run(res, baseline)


@pytest.mark.distributed
def test_gift_trainer_fit_at_tp2_on_two_gloo_ranks(tmp_path):
    results = run_on_ranks(_aligner_fit.fit_gift, 2, args=(2, "old_policy", str(tmp_path)), timeout=500)
    for res in results:
        _check_run(res, "old_policy")
    # The two TP ranks log the same (replicated) metrics and train on the same rollouts.
    assert results[0]["optim"] == results[1]["optim"]
    assert results[0]["records"] == results[1]["records"]
