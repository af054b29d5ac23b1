"""gift_loss: degenerate cases, options, errors, micro-batching and partial groups."""

import threading

import pytest
import torch

from nemo_gift.algorithms import GiftLossConfig, explicit_advantages, gift_loss, group_moments, implicit_rewards
from tests.unit.algorithms._reference import ref_advantages

F64 = torch.float64
GUARDS = ("none", "std_floor", "center_only")


def _batch(n=8, t=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    policy = torch.randn(n, t, dtype=F64, generator=gen).requires_grad_(True)
    baseline = torch.randn(n, t, dtype=F64, generator=gen)
    mask = torch.arange(t)[None, :] < torch.randint(1, t + 1, (n, 1), generator=gen)
    rewards = torch.randint(0, 2, (n,), generator=gen).to(F64)
    return policy, baseline, mask, rewards


# --- degenerate explicit rewards ------------------------------------------------------

def test_all_explicit_rewards_equal_keeps_pairs_with_zero_advantage():
    # A = 0 for every pair, so L = beta^2 mean z^2 and dL/ds_i = (2 beta^2 / N) z_i / (std + eps).
    s = torch.tensor([0.5, -0.5, 1.5, -1.5], dtype=F64)  # mean 0, unbiased std sqrt(5/3)
    leaf = s[:, None].clone().requires_grad_(True)
    rewards = torch.full((4,), 0.1, dtype=F64)
    cfg = GiftLossConfig(beta=2.0)
    loss, m = gift_loss(leaf, torch.zeros_like(leaf), torch.ones(4, 1, dtype=torch.bool), rewards, 4, cfg)
    loss.backward()
    std = (5 / 3) ** 0.5 + 1e-6
    z = s / std
    assert loss.item() == pytest.approx(4.0 * (z * z).mean().item(), rel=1e-13)
    torch.testing.assert_close(leaf.grad[:, 0], (2 * 4.0 / 4) * z / std, rtol=1e-13, atol=0)
    assert m["zero_explicit_std_frac"].item() == 1.0
    assert m["z_a_corr"].item() == 0.0  # undefined in every group -> 0


def test_drop_zero_std_groups_removes_pairs_and_renormalizes():
    policy, baseline, mask, _ = _batch(n=8)
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0], dtype=F64)  # group 0 is zero-std
    kept, m = gift_loss(policy, baseline, mask, rewards, 4, GiftLossConfig(drop_zero_std_groups=True))
    only, _ = gift_loss(policy[4:], baseline[4:], mask[4:], rewards[4:], 4)
    assert kept.item() == pytest.approx(only.item(), rel=1e-14)
    assert m["num_pairs"].item() == 4.0 and m["zero_explicit_std_frac"].item() == 0.5
    kept.backward()
    assert policy.grad[:4].abs().max().item() == 0.0


def test_drop_when_every_group_is_zero_std_gives_zero_not_nan():
    policy, baseline, mask, _ = _batch(n=4)
    loss, m = gift_loss(policy, baseline, mask, torch.ones(4, dtype=F64), 2, GiftLossConfig(drop_zero_std_groups=True))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(policy.grad).all() and policy.grad.abs().max() == 0
    assert m["num_pairs"].item() == 1.0  # local count 0 clamped to 1


# --- degenerate implicit std -------------------------------------------------------------

@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("guard", GUARDS)
def test_zero_implicit_std_gives_finite_loss_and_the_guard_gradient(guard, detach):
    # Step 0: policy == baseline, s = 0 exactly, z = 0, L = mean A^2. Per the formula
    # dL/ds_i = -(2 beta / N) A_i / D, with D = eps (none), floor + eps (std_floor), 1 (center_only).
    # Through the stats, the extra terms vanish: mean_k g_k = 0 and d = 0.
    policy, _, mask, _ = _batch(n=4)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)
    cfg = GiftLossConfig(std_guard=guard, std_guard_value=1e-2, detach_implicit_stats=detach)
    loss, m = gift_loss(policy, policy.detach().clone(), mask, rewards, 4, cfg)
    loss.backward()
    a = ref_advantages(rewards, 4, 1e-6)
    assert loss.item() == pytest.approx((a * a).mean().item(), rel=1e-14)
    denom = {"none": 1e-6, "std_floor": 1e-2 + 1e-6, "center_only": 1.0}[guard]
    dl_ds = -(2.0 / 4) * a / denom
    torch.testing.assert_close(policy.grad, dl_ds[:, None] * mask, rtol=1e-12, atol=0)
    assert torch.isfinite(policy.grad).all()
    assert m["degenerate_implicit_std_frac"].item() == 1.0


@pytest.mark.parametrize("guard", GUARDS)
def test_near_zero_implicit_std_none_is_the_raw_formula_and_guards_bound_it(guard):
    # s = noise of size 1e-8: `none` turns it into O(1) z; the guards keep z ~ s / v.
    s = torch.tensor([1e-8, -2e-8, 3e-8, -2e-8], dtype=F64)
    leaf = s[:, None].clone().requires_grad_(True)
    rewards = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=F64)
    cfg = GiftLossConfig(std_guard=guard)
    loss, _ = gift_loss(leaf, torch.zeros_like(leaf), torch.ones(4, 1, dtype=torch.bool), rewards, 4, cfg)
    loss.backward()
    a = ref_advantages(rewards, 4, 1e-6)
    d = s - s.mean()
    std = s.std().item()
    denom = {"none": std + 1e-6, "std_floor": 1e-2 + 1e-6, "center_only": 1.0}[guard]
    z = d / denom
    assert loss.item() == pytest.approx(((a - z) ** 2).mean().item(), rel=1e-12)
    torch.testing.assert_close(leaf.grad[:, 0], -(2.0 / 4) * (a - z) / denom, rtol=1e-12, atol=0)
    if guard == "none":
        assert z.abs().max().item() > 1e-2  # noise became a visible z
    else:
        assert leaf.grad.abs().max().item() <= (2.0 / 4) * (a.abs().max().item() + 1e-3) / min(denom, 1.0) + 1e-9


def test_single_token_responses_work_end_to_end():
    policy = torch.tensor([[-0.5], [-1.0], [-0.25], [-2.0]], dtype=F64, requires_grad=True)
    baseline = torch.full((4, 1), -1.0, dtype=F64)
    mask = torch.ones(4, 1, dtype=torch.bool)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=F64)
    l_sum, _ = gift_loss(policy, baseline, mask, rewards, 2)
    l_avg, _ = gift_loss(policy, baseline, mask, rewards, 2, GiftLossConfig(implicit_reward="kl_average"))
    assert torch.isfinite(l_sum) and l_sum.item() == l_avg.item()


# --- errors ------------------------------------------------------------------------------------

def test_errors_name_the_offending_index_or_value():
    policy, baseline, mask, rewards = _batch(n=8)
    masked = mask.clone()
    masked[5] = False
    with pytest.raises(ValueError, match="response 5 is fully masked"):
        gift_loss(policy, baseline, masked, rewards, 4)
    bad = rewards.clone()
    bad[6] = float("nan")
    with pytest.raises(ValueError, match=r"rewards\[6\] = nan"):
        gift_loss(policy, baseline, mask, bad, 4)
    bad[6] = float("-inf")
    with pytest.raises(ValueError, match=r"rewards\[6\] = -inf"):
        gift_loss(policy, baseline, mask, bad, 4)
    with pytest.raises(ValueError, match="group_size=1 must be >= 2"):
        gift_loss(policy, baseline, mask, rewards, 1)
    with pytest.raises(ValueError, match="exactly one of rewards"):
        gift_loss(policy, baseline, mask, rewards, 4, advantages=rewards)
    with pytest.raises(ValueError, match="num_pairs=0 must be > 0"):
        gift_loss(policy, baseline, mask, rewards, 4, num_pairs=0)


def test_metrics_are_detached_scalars_and_loss_has_grad():
    policy, baseline, mask, rewards = _batch(n=8)
    loss, m = gift_loss(policy, baseline, mask, rewards, 4, GiftLossConfig(detach_implicit_stats=False))
    assert loss.requires_grad and loss.dim() == 0
    assert set(m) >= {
        "loss", "z_a_corr", "zero_explicit_std_frac", "degenerate_implicit_std_frac",
        "implicit_reward_mean", "implicit_reward_std", "response_length_mean",
    }
    for name, value in m.items():
        assert value.dim() == 0 and not value.requires_grad and torch.isfinite(value), name


def test_injected_advantages_equal_computed_ones():
    policy, baseline, mask, rewards = _batch(n=8, seed=3)
    a = explicit_advantages(rewards, 4).advantages
    l1, m1 = gift_loss(policy, baseline, mask, rewards, 4)
    l2, m2 = gift_loss(policy, baseline, mask, None, 4, advantages=a)
    assert l1.item() == l2.item()
    assert m1["zero_explicit_std_frac"].item() == m2["zero_explicit_std_frac"].item()


# --- micro-batching and partial groups ---------------------------------------------------

@pytest.mark.parametrize("drop", [False, True])
def test_micro_batch_losses_and_grads_sum_to_the_full_batch(drop):
    n, g = 12, 3
    policy, baseline, mask, _ = _batch(n=n, seed=1)
    rewards = torch.tensor([1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 0, 1], dtype=F64)  # group 1 is zero-std
    cfg = GiftLossConfig(drop_zero_std_groups=drop)
    full, _ = gift_loss(policy, baseline, mask, rewards, g, cfg)
    (full_grad,) = torch.autograd.grad(full, policy)
    global_pairs = 9 if drop else 12
    total, grads = 0.0, []
    for sl in (slice(0, 3), slice(3, 9), slice(9, 12)):  # whole groups: 1, 2 and 1 of them
        loss, _ = gift_loss(policy[sl], baseline[sl], mask[sl], rewards[sl], g, cfg, num_pairs=global_pairs)
        total = total + loss
        grads.append(torch.autograd.grad(loss, policy)[0][sl])
    assert total.item() == pytest.approx(full.item(), rel=1e-14)
    torch.testing.assert_close(torch.cat(grads), full_grad, rtol=1e-13, atol=1e-16)
    # Without the global normalizer the sum is wrong, so the test above can fail.
    local = sum(gift_loss(policy[sl], baseline[sl], mask[sl], rewards[sl], g, cfg)[0].item() for sl in (slice(0, 3), slice(3, 12)))
    assert abs(local - full.item()) > 1e-3


def _two_rank_all_reduce():
    """An in-process stand-in for a differentiable SUM all-reduce between two threads."""
    barrier = threading.Barrier(2, timeout=20)
    slots = [None, None]

    def make(rank):
        def all_reduce(t):
            slots[rank] = t
            barrier.wait()
            out = slots[0] + slots[1]
            barrier.wait()
            return out

        return all_reduce

    return make(0), make(1)


@pytest.mark.parametrize("detach", [True, False])
def test_partial_groups_across_two_ranks_match_the_full_batch(detach):
    """Issue 4's contract: each group is split over two ranks; moments are all-reduced,
    A is computed over whole groups and injected, num_pairs is global. The two ranks' losses
    sum to the full loss and their gradients equal the full gradient, also with gradients
    through the (reduced) statistics."""
    n, g = 8, 4
    policy, baseline, mask, _ = _batch(n=n, seed=2)
    rewards = torch.tensor([1, 0, 0, 1, 0.5, 0.25, 1, 0], dtype=F64)
    cfg = GiftLossConfig(detach_implicit_stats=detach)
    full, _ = gift_loss(policy, baseline, mask, rewards, g, cfg)
    (full_grad,) = torch.autograd.grad(full, policy)

    adv = explicit_advantages(rewards, g).advantages
    gi = torch.arange(n) // g
    ranks = [torch.tensor([0, 1, 4]), torch.tensor([2, 3, 5, 6, 7])]  # uneven partial groups
    hooks = _two_rank_all_reduce()
    losses = [None, None]

    def run(rank):
        idx = ranks[rank]
        losses[rank], _ = gift_loss(
            policy[idx], baseline[idx], mask[idx], None, None, cfg,
            advantages=adv[idx], group_index=gi[idx], num_groups=2,
            moments_all_reduce=hooks[rank], num_pairs=n,
        )

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    total = losses[0] + losses[1]
    (grad,) = torch.autograd.grad(total, policy)
    assert total.item() == pytest.approx(full.item(), rel=1e-13)
    torch.testing.assert_close(grad, full_grad, rtol=1e-12, atol=1e-15)


def test_injected_global_moments_on_partial_groups():
    n, g = 8, 4
    policy, baseline, mask, rewards = _batch(n=n, seed=4)
    rewards[0] = 2.0
    full, _ = gift_loss(policy, baseline, mask, rewards, g)
    s = implicit_rewards(policy, baseline, mask).detach()
    gi = torch.arange(n) // g
    moments = group_moments(s, gi, 2)
    adv = explicit_advantages(rewards, g).advantages
    total = 0.0
    for idx in (torch.tensor([0, 5, 6]), torch.tensor([1, 2, 3, 4, 7])):
        loss, _ = gift_loss(
            policy[idx], baseline[idx], mask[idx], None, None,
            advantages=adv[idx], group_index=gi[idx], num_groups=2, implicit_moments=moments, num_pairs=n,
        )
        total += loss.item()
    assert total == pytest.approx(full.item(), rel=1e-13)


@pytest.mark.gpu
def test_losses_run_on_cuda_and_match_cpu():
    """The losses are device-agnostic (no .cuda() inside): same numbers on a GPU."""
    from nemo_gift.algorithms import grpo_loss

    policy, baseline, mask, rewards = _batch(n=8, seed=5)
    cpu, _ = gift_loss(policy, baseline, mask, rewards, 4)
    dev = [t.detach().cuda() for t in (policy, baseline, mask, rewards)]
    gpu, metrics = gift_loss(*dev, 4)
    assert gpu.device.type == "cuda" and all(v.device.type == "cuda" for v in metrics.values())
    assert gpu.item() == pytest.approx(cpu.item(), rel=1e-12)
    g_cpu, _ = grpo_loss(policy, baseline, baseline, mask, rewards, 4)
    g_gpu, _ = grpo_loss(dev[0], dev[1], dev[1], dev[2], dev[3], 4)
    assert g_gpu.item() == pytest.approx(g_cpu.item(), rel=1e-12)
