"""A tiny megatron-core GPTModel gives the same logits, loss and gradients at TP=2, PP=2 and
TP=2 x PP=2 as at TP=1, for the same (fixed) weights, on gloo in fp32 (tolerance 1e-5).

One spawn of 4 ranks runs every layout in turn (the model-parallel groups are rebuilt between
layouts), so megatron-core is set up once. PP layouts run through ``forward_backward_func``.
"""

import math

import pytest

from nemo_gift.models.policy.layout_check import compare_layouts
from nemo_gift.distributed.spawn import run_on_ranks

pytestmark = pytest.mark.distributed

LAYOUTS = [(2, 1), (1, 2), (2, 2)]  # (TP, PP); the reference is (1, 1)


def test_tp_pp_layouts_match_tp1():
    results = run_on_ranks(compare_layouts, world_size=4, args=(LAYOUTS,), timeout=240)
    ref_loss = results[0]["ref_loss"]
    assert abs(ref_loss - math.log(128)) < 0.5  # a random init predicts ~uniformly
    for rank, res in enumerate(results):
        assert res["ref_loss"] == ref_loss
        for layout, entry in res["layouts"].items():
            where = f"rank {rank}, (TP, PP) = {layout}"
            assert entry["grad_names_match"], where
            assert entry["max_grad_diff"] <= 1e-5, (where, entry)
            if entry["last_stage"]:
                assert entry["max_logit_diff"] <= 1e-5, (where, entry)
                assert entry["loss_diff"] <= 1e-5, (where, entry)
    for layout in LAYOUTS:  # each layout had a last stage that compared logits and loss
        assert any(res["layouts"][layout]["last_stage"] for res in results), layout
