"""Numeric edges: huge rewards keep their advantages (float64 statistics) or are refused naming
the group; NaN/inf log-probs at valid tokens are refused by every loss, naming tensor and index."""

from __future__ import annotations

import pytest
import torch

from nemo_gift.algorithms.config import GrpoLossConfig
from nemo_gift.algorithms.losses import dpo_loss, gift_loss, grpo_loss, una_loss
from nemo_gift.algorithms.normalization import explicit_advantages
from nemo_gift.algorithms.objectives import nll_objective

G = 4
BASE = torch.tensor([1.0, 2.0, 3.0, 3.25, 0.0, 0.0, 1.0, 1.0])  # two groups of 4; 3.25e38 fits float32


def _reference(rewards: torch.Tensor) -> torch.Tensor:
    """Hand-written float64 group z-score, unbiased std, eps 1e-6 (spec Eq. 2)."""
    r = rewards.double().view(-1, G)
    mean, std = r.mean(dim=1, keepdim=True), r.std(dim=1, keepdim=True)
    adv = torch.where(std > 0, (r - mean) / (std + 1e-6), torch.zeros_like(r))
    return adv.flatten()


@pytest.mark.parametrize("scale", [1.0, 1e20, 1e30, 1e38])
def test_huge_float32_rewards_keep_their_advantages(scale):
    rewards = (BASE.double() * scale).float()
    assert torch.isfinite(rewards).all()
    adv, zero_std = explicit_advantages(rewards, G)
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv.double(), _reference(rewards), rtol=1e-6, atol=1e-6)
    assert adv[:G].abs().min() > 0.3  # before: std overflowed to inf and every A was 0
    assert zero_std.tolist() == [False, False]


def _logprobs(n=8, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    policy = (-torch.rand(n, t, generator=g) * 3).requires_grad_()
    base = -torch.rand(n, t, generator=g) * 3
    mask = torch.ones(n, t, dtype=torch.bool)
    mask[:, -1] = False  # padding
    return policy, base, mask


def test_rewards_of_1e38_give_a_finite_loss():
    policy, base, mask = _logprobs()
    rewards = (BASE.double() * 1e38).float()
    for loss, _ in (gift_loss(policy, base, mask, rewards, G),
                    grpo_loss(policy, base, base, mask, rewards, G)):
        assert torch.isfinite(loss)
    unit_loss, _ = gift_loss(policy, base, mask, BASE, G)
    torch.testing.assert_close(gift_loss(policy, base, mask, rewards, G)[0], unit_loss, rtol=1e-5, atol=1e-6)


def test_a_group_whose_reward_std_is_not_finite_is_refused_naming_it():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 1e300, -1e300, 0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"group 1: the std of its rewards is inf"):
        explicit_advantages(rewards, G)
    with pytest.raises(ValueError, match=r"rewards\[4\] = inf is not finite"):
        explicit_advantages(rewards.float(), G)  # beyond float32: already inf, named by index


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("which", ["policy", "baseline"])
def test_gift_loss_refuses_non_finite_logprobs(which, value):
    policy, base, mask = _logprobs()
    target = policy if which == "policy" else base
    with torch.no_grad():
        target[2, 3] = value
    name = "policy_logprobs" if which == "policy" else "baseline_logprobs"
    with pytest.raises(ValueError, match=rf"{name}\[2, 3\] = {value} is not finite"):
        gift_loss(policy, base, mask, BASE, G)


@pytest.mark.parametrize("which", ["policy_logprobs", "old_logprobs", "reference_logprobs"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_grpo_loss_refuses_non_finite_logprobs(which, value):
    """+inf used to give a finite loss: the ratio is clipped, so nothing noticed it."""
    policy, old, mask = _logprobs()
    ref = old.clone()
    tensors = {"policy_logprobs": policy, "old_logprobs": old, "reference_logprobs": ref}
    with torch.no_grad():
        tensors[which][1, 2] = value
    with pytest.raises(ValueError, match=rf"{which}\[1, 2\] = {value} is not finite"):
        grpo_loss(policy, old, ref, mask, BASE, G, GrpoLossConfig(beta_kl=0.01))


def test_padding_may_hold_anything():
    policy, base, mask = _logprobs()
    with torch.no_grad():
        policy[:, -1] = float("nan")
    base[:, -1] = float("inf")
    for loss, _ in (gift_loss(policy, base, mask, BASE, G), grpo_loss(policy, base, base, mask, BASE, G)):
        assert torch.isfinite(loss)
    # beta_kl = 0: the reference log-probs are not read, so they are not checked
    assert torch.isfinite(grpo_loss(policy, base, torch.full_like(base, float("nan")), mask, BASE, G,
                                    GrpoLossConfig(beta_kl=0.0))[0])


def test_dpo_una_and_sft_losses_refuse_non_finite_logprobs():
    x = torch.tensor([-1.0, -2.0, float("nan")])
    y = torch.tensor([-1.5, -2.5, -3.0])
    with pytest.raises(ValueError, match=r"policy_rejected_logps\[2\] = nan"):
        dpo_loss(y, x, y, y)
    with pytest.raises(ValueError, match=r"reference_logps\[2\] = nan"):
        una_loss(y, x, torch.zeros(3))
    logprobs = torch.tensor([[-1.0, float("-inf"), float("nan")]])
    objective = nll_objective(num_tokens=2)
    assert torch.isfinite(objective(logprobs, {"loss_mask": torch.tensor([[True, False, False]])})[0])
    with pytest.raises(ValueError, match=r"policy_logprobs\[0, 1\] = -inf"):
        objective(logprobs, {"loss_mask": torch.tensor([[True, True, False]])})
