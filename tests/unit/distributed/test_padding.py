"""Padding a token batch to the layout's multiple changes no log-prob and no loss.

The same GIFT mini-batch (longest sequence 13 tokens) is built by the trainer's
``build_token_batch`` at several pad multiples, and run through ``MegatronPolicy``: its
log-probs, and the loss and grad norm of one training step. The reference is TP=1 without
padding (S = 13). TP=1 padded to 16, and TP=2 with sequence parallelism padded to 2 (S = 14)
and 16, must agree with it on every real position: log-probs to 1e-6 (absolute), loss and
grad norm to 1e-6 (relative). The pad columns carry ``loss_mask`` False.
"""

import pytest

from nemo_gift.distributed.spawn import run_on_ranks
from nemo_gift.models.policy.config import ParallelConfig

from ._train_ranks import padding_runs, reference_run

pytestmark = pytest.mark.distributed

ATOL, RTOL, REAL = 1e-6, 1e-6, 13


@pytest.fixture(scope="module")
def runs():
    (ref,) = run_on_ranks(reference_run, 1, args=(0,), timeout=120)
    weights = ref["initial"]
    (tp1,) = run_on_ranks(padding_runs, 1, args=({}, (1, 16), weights), timeout=180)
    sp = run_on_ranks(padding_runs, 2, args=({"tensor_model_parallel_size": 2, "sequence_parallel": True}, (2, 16), weights),
                      timeout=240)
    return tp1, sp


def test_padding_changes_no_logprob_and_no_loss(runs):
    tp1, sp = runs
    ref = tp1[1]
    assert ref["S"] == REAL
    cases = [("tp1", 16, tp1[16])] + [(f"tp2-sp rank {r}", m, res[m]) for r, res in enumerate(sp) for m in (2, 16)]
    for name, m, got in cases:
        assert got["S"] == (14 if m == 2 else 16), name
        assert not got["loss_mask"][:, REAL:].any(), name  # pad columns never enter the loss
        mask = ref["loss_mask"]
        diff = (got["logprobs"][:, :REAL] - ref["logprobs"])[mask].abs().max().item()
        print(f"{name} pad {m}: max |dlogprob| {diff:.2e}, loss {got['loss']!r} vs {ref['loss']!r}")
        assert diff <= ATOL, (name, m, diff)
        assert got["loss"] == pytest.approx(ref["loss"], rel=RTOL), (name, m)
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=RTOL), (name, m)


def test_an_unpadded_batch_is_refused_naming_the_multiple(runs):
    _, sp = runs
    assert "is not a multiple of 2" in sp[0]["unpadded_error"] and "pad_multiple=2" in sp[0]["unpadded_error"]


@pytest.mark.parametrize(
    "kwargs, multiple",
    [({}, 1), ({"tensor_model_parallel_size": 8}, 1), ({"tensor_model_parallel_size": 8, "sequence_parallel": True}, 8)],
)
def test_pad_multiple_of_the_layout(kwargs, multiple):
    assert ParallelConfig(**kwargs).sequence_pad_multiple == multiple
