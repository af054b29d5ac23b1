"""GRPO, DPO and UNA on hand-computed values."""

import math

import pytest
import torch

from nemo_gift.algorithms import GrpoLossConfig, dpo_loss, grpo_loss, una_loss

F64 = torch.float64


def _one_token_case(logp, adv, cfg):
    """One response (plus an A = 0 partner to make a group of 2), one token, old log-prob 0."""
    policy = torch.tensor([[logp], [0.0]], dtype=F64, requires_grad=True)
    old = torch.zeros(2, 1, dtype=F64)
    mask = torch.ones(2, 1, dtype=torch.bool)
    loss, m = grpo_loss(policy, old, None, mask, None, 2, cfg, advantages=torch.tensor([adv, 0.0], dtype=F64), num_tokens=1)
    loss.backward()
    return loss.item(), policy.grad[0, 0].item(), m


# --- GRPO: clip behaviour at the boundaries -------------------------------------------------

RHO_HI = math.exp(math.log(1.2))  # the float ratio the loss will compute for logp = log(1.2)
RHO_LO = math.exp(math.log(0.8))
# bounds set so that 1 + eps_hi == RHO_HI and 1 - eps_lo == RHO_LO exactly (Sterbenz)
CFG = GrpoLossConfig(clip_eps=1.0 - RHO_LO, clip_eps_high=RHO_HI - 1.0, beta_kl=0.0)
UP = 1e-12  # a log-ratio nudge that moves the float ratio by ~1e-12


@pytest.mark.parametrize(
    "logp, adv, value, grad",
    [
        # A > 0: the upper bound clips; the boundary itself belongs to the trust region.
        (math.log(1.2) - UP, 1.0, -RHO_HI, -RHO_HI),  # just inside: -rho A, grad -rho A
        (math.log(1.2), 1.0, -RHO_HI, -RHO_HI),  # on the bound: not clipped
        (math.log(1.2) + UP, 1.0, -RHO_HI, 0.0),  # just outside: value -(1 + eps) A, no grad
        (math.log(0.5), 1.0, -0.5, -0.5),  # below the lower bound, A > 0: unclipped
        # A < 0: the lower bound clips.
        (math.log(0.8) + UP, -1.0, RHO_LO, RHO_LO),
        (math.log(0.8), -1.0, RHO_LO, RHO_LO),
        (math.log(0.8) - UP, -1.0, RHO_LO, 0.0),
        (math.log(1.5), -1.0, 1.5, 1.5),  # above the upper bound, A < 0: unclipped (pessimistic)
        (0.0, 2.0, -2.0, -2.0),  # on-policy
    ],
)
def test_grpo_clip_at_the_boundaries(logp, adv, value, grad):
    loss, g, m = _one_token_case(logp, adv, CFG)
    assert loss == pytest.approx(value, rel=1e-10)
    assert g == pytest.approx(grad, rel=1e-10, abs=0.0)
    # The value agrees with the textbook form -min(rho A, clip(rho, 1 - eps, 1 + eps) A).
    rho = math.exp(logp)
    assert loss == pytest.approx(-min(rho * adv, min(max(rho, RHO_LO), RHO_HI) * adv), rel=1e-10)
    assert m["clip_fraction"].item() == (0.5 if grad == 0.0 else 0.0)


def test_grpo_clip_nudges_really_cross_the_bounds():
    assert math.exp(math.log(1.2) + UP) > RHO_HI > math.exp(math.log(1.2) - UP)
    assert math.exp(math.log(0.8) - UP) < RHO_LO < math.exp(math.log(0.8) + UP)


# --- GRPO: aggregation, KL and the global normalizers ------------------------------------

def _ragged_on_policy():
    lengths = torch.tensor([3, 1, 2, 2])
    mask = torch.arange(3)[None, :] < lengths[:, None]
    policy = torch.tensor([[-0.5, -1.0, -2.0], [-0.3, 0.0, 0.0], [-1.5, -0.2, 0.0], [-0.7, -0.9, 0.0]], dtype=F64)
    return policy.requires_grad_(True), mask, torch.tensor([1.0, -0.5, 0.25, 2.0], dtype=F64)


def test_grpo_token_mean_vs_seq_mean_on_policy():
    # rho = 1 everywhere: per-token loss -A_i.
    # token_mean: -(3*1 + 1*(-0.5) + 2*0.25 + 2*2) / 8 = -7/8;  grad -A_i / 8 per valid token
    # seq_mean:   -(1 - 0.5 + 0.25 + 2) / 4 = -11/16;          grad -A_i / (4 |y_i|)
    for agg, value, scale in (("token_mean", -7 / 8, [8.0] * 4), ("seq_mean", -11 / 16, [12.0, 4.0, 8.0, 8.0])):
        policy, mask, adv = _ragged_on_policy()
        cfg = GrpoLossConfig(beta_kl=0.0, aggregation=agg)
        loss, m = grpo_loss(policy, policy.detach(), None, mask, None, 2, cfg, advantages=adv)
        loss.backward()
        assert loss.item() == pytest.approx(value, rel=1e-14)
        expected = (-adv / torch.tensor(scale, dtype=F64))[:, None] * mask
        torch.testing.assert_close(policy.grad, expected, rtol=1e-14, atol=0)
        assert m["response_length_mean"].item() == 2.0 and m["clip_fraction"].item() == 0.0


@pytest.mark.parametrize(
    "estimator, value", [("k3", math.log(2) - 0.5), ("k1", math.log(2)), ("k2", 0.5 * math.log(2) ** 2)]
)
def test_grpo_kl_estimators_on_known_values(estimator, value):
    # pi = 0.5, pi_ref = 0.25: log r = log(0.25 / 0.5) = -log 2.
    # k3 = r - log r - 1 = 0.5 + log 2 - 1; its gradient w.r.t. log pi is 1 - r = 0.5.
    policy = torch.full((2, 1), math.log(0.5), dtype=F64, requires_grad=True)
    ref = torch.full((2, 1), math.log(0.25), dtype=F64)
    cfg = GrpoLossConfig(beta_kl=0.1, kl_estimator=estimator)
    loss, m = grpo_loss(policy, policy.detach(), ref, torch.ones(2, 1, dtype=torch.bool), torch.ones(2, dtype=F64), 2, cfg)
    loss.backward()
    assert m["kl"].item() == pytest.approx(value, rel=1e-14)
    assert loss.item() == pytest.approx(0.1 * value, rel=1e-14)  # A = 0 (equal rewards)
    assert m["zero_explicit_std_frac"].item() == 1.0
    if estimator == "k3":
        torch.testing.assert_close(policy.grad, torch.full((2, 1), 0.1 * 0.5 / 2, dtype=F64), rtol=1e-14, atol=0)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean"])
def test_grpo_micro_batches_sum_to_the_full_batch(agg):
    gen = torch.Generator().manual_seed(0)
    n, t = 8, 5
    policy = (0.3 * torch.randn(n, t, dtype=F64, generator=gen)).requires_grad_(True)
    old = policy.detach() + 0.3 * torch.randn(n, t, dtype=F64, generator=gen)  # some tokens clip
    ref = policy.detach() + 0.5 * torch.randn(n, t, dtype=F64, generator=gen)
    mask = torch.arange(t)[None, :] < torch.randint(1, t + 1, (n, 1), generator=gen)
    rewards = torch.tensor([1, 0, 0, 1, 1, 1, 0, 1], dtype=F64)
    cfg = GrpoLossConfig(aggregation=agg)
    full, m = grpo_loss(policy, old, ref, mask, rewards, 2, cfg)
    (full_grad,) = torch.autograd.grad(full, policy)
    assert 0 < m["clip_fraction"].item() < 1
    total, grads = 0.0, []
    for sl in (slice(0, 2), slice(2, 8)):
        loss, _ = grpo_loss(
            policy[sl], old[sl], ref[sl], mask[sl], rewards[sl], 2, cfg,
            num_tokens=int(mask.sum()), num_sequences=n,
        )
        total = total + loss
        grads.append(torch.autograd.grad(loss, policy)[0][sl])
    assert total.item() == pytest.approx(full.item(), rel=1e-13)
    torch.testing.assert_close(torch.cat(grads), full_grad, rtol=1e-13, atol=1e-16)


def test_grpo_errors():
    policy = torch.zeros(2, 2, dtype=F64)
    mask = torch.ones(2, 2, dtype=torch.bool)
    r = torch.tensor([1.0, 0.0], dtype=F64)
    with pytest.raises(ValueError, match="beta_kl=0.001 > 0 needs reference_logprobs"):
        grpo_loss(policy, policy, None, mask, r, 2)
    grpo_loss(policy, policy, None, mask, r, 2, GrpoLossConfig(beta_kl=0.0))  # fine without a reference
    mask[1] = False
    with pytest.raises(ValueError, match="response 1 is fully masked"):
        grpo_loss(policy, policy, policy, mask, r, 2)


# --- DPO and UNA on known values ---------------------------------------------------------------

def test_dpo_known_values():
    # pair 0: h = (-1 + 2) - (-3 + 2) = 2,     beta h = 0.2,  loss log(1 + e^-0.2)
    # pair 1: h = (-2 + 1.5) - (-1 + 1.5) = -1, beta h = -0.1, loss log(1 + e^0.1)
    pc = torch.tensor([-1.0, -2.0], dtype=F64, requires_grad=True)
    pr = torch.tensor([-3.0, -1.0], dtype=F64, requires_grad=True)
    rc = torch.tensor([-2.0, -1.5], dtype=F64)
    rr = torch.tensor([-2.0, -1.5], dtype=F64)
    loss, m = dpo_loss(pc, pr, rc, rr, beta=0.1)
    loss.backward()
    assert loss.item() == pytest.approx(0.6712677647275813, rel=1e-14)  # (0.5981388693815918 + 0.744396660073571) / 2
    # dL/d pc_i = -(beta / P) sigmoid(-beta h_i); dL/d pr_i is its negative
    expected = torch.tensor([-0.02250830013437611, -0.026248959373947], dtype=F64)
    torch.testing.assert_close(pc.grad, expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(pr.grad, -expected, rtol=1e-13, atol=0)
    assert m["reward_accuracy"].item() == 0.5
    assert m["reward_margin"].item() == pytest.approx(0.05, rel=1e-14)
    assert m["chosen_reward"].item() == pytest.approx(0.025, rel=1e-13)
    assert m["rejected_reward"].item() == pytest.approx(-0.025, rel=1e-13)


def test_dpo_zero_margin_is_log_two():
    x = torch.tensor([-1.0, -4.0], dtype=F64)
    loss, _ = dpo_loss(x, x, x, x)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-15)


def test_una_known_values():
    # implicit = 0.5 * ([-1, -2, -0.5] - [-2, -2, -1.5]) = [0.5, 0, 0.5]; err = [-0.5, 1, 0.5]
    # L = (0.25 + 1 + 0.25) / 3 = 0.5; dL/dlogp = 2 beta err / N = [-1/6, 1/3, 1/6]
    logp = torch.tensor([-1.0, -2.0, -0.5], dtype=F64, requires_grad=True)
    ref = torch.tensor([-2.0, -2.0, -1.5], dtype=F64)
    r = torch.tensor([1.0, -1.0, 0.0], dtype=F64)
    loss, m = una_loss(logp, ref, r, beta=0.5)
    loss.backward()
    assert loss.item() == pytest.approx(0.5, rel=1e-15)
    torch.testing.assert_close(logp.grad, torch.tensor([-1 / 6, 1 / 3, 1 / 6], dtype=F64), rtol=1e-15, atol=0)
    assert m["implicit_reward_mean"].item() == pytest.approx(1 / 3, rel=1e-15)
    with pytest.raises(ValueError, match=r"rewards\[1\] = nan"):
        una_loss(logp, ref, torch.tensor([0.0, float("nan"), 0.0], dtype=F64))
    with pytest.raises(ValueError, match="beta=0 must be > 0"):
        dpo_loss(logp, logp, logp, logp, beta=0)
