"""An allowed resume with changed optimizer settings really applies them: after the load, the
param groups' LR is the new schedule's at the restored step (not the checkpoint's), Adam's betas
and the weight decay are the new ones, and the Adam moments are the restored ones."""

from __future__ import annotations

import pytest

from nemo_gift.distributed.spawn import run_on_ranks
from nemo_gift.models.policy.optimizer import OptimizerSettings

from ._resume_ranks import STEPS, resumed_with_new_settings
from .test_optimizer_reference import closed_form

pytestmark = pytest.mark.distributed


def test_allowed_lr_change_applies_the_new_schedule(tmp_path):
    old = OptimizerSettings(lr=1e-2, min_lr=1e-3, schedule="cosine", warmup_steps=2, decay_steps=10)
    new = OptimizerSettings(lr=4e-3, min_lr=4e-4, schedule="cosine", warmup_steps=1, decay_steps=6,
                            adam_beta1=0.8, adam_beta2=0.99, weight_decay=0.1)
    out = run_on_ranks(resumed_with_new_settings, 1, (tmp_path / "ckpt", old, new), timeout=300)[0]
    assert out["saved_lr"] == pytest.approx(closed_form(STEPS, old), rel=1e-12)
    assert out["lr"] == pytest.approx([closed_form(STEPS, new)] * len(out["lr"]), rel=1e-12)
    assert out["next_lrs"] == pytest.approx([closed_form(STEPS, new), closed_form(STEPS + 1, new)], rel=1e-12)
    assert set(out["betas"]) == {(0.8, 0.99)}
    assert out["decayed_wd"] and set(out["decayed_wd"]) == {0.1}
    assert out["moments_restored"]
    # without apply_settings the checkpoint's schedule would have won: the bug this fixes
    assert out["raw_lr"] == pytest.approx(closed_form(STEPS, old), rel=1e-12)
    assert abs(closed_form(STEPS, old) - closed_form(STEPS, new)) > 1e-3
