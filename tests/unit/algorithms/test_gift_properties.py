"""Property tests: Eq. 7-11 (log Z and beta cancel in z) and the gradient's closed forms."""

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nemo_gift.algorithms import GiftLossConfig, gift_loss, group_moments, group_zscore, zscore_from_moments
from tests.unit.algorithms._reference import (
    closed_form_grad_detached,
    closed_form_grad_full,
    ref_advantages,
    ref_group_std,
)

F64 = torch.float64
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
finite = st.floats(min_value=-5.0, max_value=5.0, allow_nan=False, allow_infinity=False)


@st.composite
def grouped(draw, min_std=1e-2):
    """(values [B*G] float64, G) with every group's std >= min_std."""
    g = draw(st.integers(2, 5))
    b = draw(st.integers(1, 3))
    vals = torch.tensor(draw(st.lists(finite, min_size=b * g, max_size=b * g)), dtype=F64)
    assume(bool((ref_group_std(vals, g) >= min_std).all()))
    return vals, g


def _per_group(draw_list, g):
    return torch.tensor(draw_list, dtype=F64).repeat_interleave(g)


# --- Eq. 7-11 ---------------------------------------------------------------------------

@SETTINGS
@given(data=grouped(), shifts=st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3))
def test_per_prompt_constant_leaves_z_unchanged(data, shifts):
    """log Z(x) is constant within a group: adding it to every s_i cancels in the mean."""
    s, g = data
    c = _per_group(shifts[: s.shape[0] // g], g)
    for guard in ("none", "std_floor", "center_only"):
        z = group_zscore(s, g, guard=guard).z
        torch.testing.assert_close(group_zscore(s + c, g, guard=guard).z, z, rtol=0, atol=1e-9)


@SETTINGS
@given(data=grouped(), scale=st.floats(1e-3, 1e3))
def test_positive_scaling_leaves_z_unchanged(data, scale):
    """beta scales deviation and std alike. Exact with eps = 0 (with eps > 0, up to eps/std)."""
    s, g = data
    z = group_zscore(s, g, eps=0.0, guard="none").z
    torch.testing.assert_close(group_zscore(scale * s, g, eps=0.0, guard="none").z, z, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(
    data=grouped(),
    beta=st.floats(1e-2, 1e2),
    log_z=st.lists(st.floats(-50.0, 50.0), min_size=3, max_size=3),
)
def test_full_dpo_implicit_reward_normalizes_to_z(data, beta, log_z):
    """Eq. 7-11 as stated: z(beta * s + beta * log Z(x)) = z(s)."""
    s, g = data
    full = beta * s + beta * _per_group(log_z[: s.shape[0] // g], g)
    z = group_zscore(s, g, eps=0.0, guard="none").z
    torch.testing.assert_close(group_zscore(full, g, eps=0.0, guard="none").z, z, rtol=1e-10, atol=1e-10)


@SETTINGS
@given(
    shifts=st.lists(st.floats(-20.0, 20.0), min_size=2, max_size=2),
    scale=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**16),
)
def test_gift_loss_invariant_to_per_prompt_logprob_offset_and_scale(shifts, scale, seed):
    """End to end through log-probs. With kl_average a per-prompt constant added to every
    policy token log-prob adds that constant to s_i; scaling policy and baseline log-probs by
    k > 0 scales s by k. The loss must not move (eps = 0 and a floor far below the std)."""
    gen = torch.Generator().manual_seed(seed)
    n, t, g = 8, 5, 4
    policy = torch.randn(n, t, dtype=F64, generator=gen)
    baseline = torch.randn(n, t, dtype=F64, generator=gen)
    mask = torch.arange(t)[None, :] < torch.randint(1, t + 1, (n, 1), generator=gen)
    rewards = torch.randn(n, dtype=F64, generator=gen)
    cfg = GiftLossConfig(implicit_reward="kl_average", eps=0.0, std_guard_value=1e-12)
    base, _ = gift_loss(policy, baseline, mask, rewards, g, cfg)
    shifted, _ = gift_loss(policy + _per_group(shifts, g)[:, None], baseline, mask, rewards, g, cfg)
    scaled, _ = gift_loss(scale * policy, scale * baseline, mask, rewards, g, cfg)
    assert shifted.item() == pytest.approx(base.item(), rel=1e-10)
    assert scaled.item() == pytest.approx(base.item(), rel=1e-10)


# --- gradient closed forms ------------------------------------------------------------------

def _loss_and_grad_wrt_s(s, rewards, g, cfg, num_pairs=None):
    """gift_loss with T = 1 and a zero baseline, so the token log-prob *is* s_i."""
    leaf = s.clone()[:, None].requires_grad_(True)
    loss, _ = gift_loss(leaf, torch.zeros_like(leaf), torch.ones_like(leaf, dtype=torch.bool), rewards, g, cfg, num_pairs=num_pairs)
    loss.backward()
    return loss, leaf.grad[:, 0]


@SETTINGS
@given(data=grouped(min_std=2e-2), beta=st.floats(0.1, 3.0), guard=st.sampled_from(["none", "std_floor", "center_only"]))
def test_grad_wrt_s_matches_spec_closed_form_detached(data, beta, guard):
    s, g = data
    rewards = torch.linspace(-1, 2, s.shape[0], dtype=F64).flip(0) ** 2
    cfg = GiftLossConfig(beta=beta, std_guard=guard)
    _, grad = _loss_and_grad_wrt_s(s, rewards, g, cfg)
    a = ref_advantages(rewards, g, 1e-6)
    expected = closed_form_grad_detached(s, a, g, beta, 1e-6, s.shape[0])
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(data=grouped(min_std=2e-2), beta=st.floats(0.1, 3.0), rewards_seed=st.integers(0, 1000))
def test_grad_wrt_s_matches_closed_form_with_gradient_through_the_stats(data, beta, rewards_seed):
    s, g = data
    rewards = torch.randn(s.shape[0], dtype=F64, generator=torch.Generator().manual_seed(rewards_seed))
    for guard in ("none", "std_floor"):  # every std >= 2e-2 > floor 1e-2: same as none
        cfg = GiftLossConfig(beta=beta, std_guard=guard, detach_implicit_stats=False)
        _, grad = _loss_and_grad_wrt_s(s, rewards, g, cfg)
        a = ref_advantages(rewards, g, 1e-6)
        expected = closed_form_grad_full(s, a, g, beta, 1e-6, s.shape[0])
        torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-11)


def test_closed_form_with_stats_differs_from_detached():
    # Guards against a test that cannot fail: the two closed forms really differ here.
    s = torch.tensor([0.3, -1.2, 0.8, 2.0], dtype=F64)
    r = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=F64)
    a = ref_advantages(r, 4, 1e-6)
    diff = closed_form_grad_full(s, a, 4, 1.0, 1e-6, 4) - closed_form_grad_detached(s, a, 4, 1.0, 1e-6, 4)
    assert diff.abs().max().item() > 1e-2
    _, g_detached = _loss_and_grad_wrt_s(s, r, 4, GiftLossConfig())
    _, g_full = _loss_and_grad_wrt_s(s, r, 4, GiftLossConfig(detach_implicit_stats=False))
    assert (g_full - g_detached).abs().max().item() > 1e-2


def test_grad_matches_autograd_on_a_plain_reimplementation_with_stats():
    # Second, independent check of the non-detached path: autograd through torch.std.
    s = torch.tensor([0.3, -1.2, 0.8, 2.0, -0.5, 0.1], dtype=F64)
    r = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.9, 0.0], dtype=F64)
    a = ref_advantages(r, 3, 1e-6)

    def plain(x):
        z = torch.cat([(v - v.mean()) / (v.std() + 1e-6) for v in x.split(3)])
        return ((a - 1.5 * z) ** 2).mean()

    expected = torch.autograd.functional.jacobian(plain, s)
    _, grad = _loss_and_grad_wrt_s(s, r, 3, GiftLossConfig(beta=1.5, detach_implicit_stats=False))
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)


@SETTINGS
@given(data=grouped(min_std=2e-2), num_pairs=st.integers(1, 64))
def test_global_normalizer_scales_loss_and_gradient(data, num_pairs):
    s, g = data
    rewards = torch.arange(s.shape[0], dtype=F64) % 3
    loss_local, grad_local = _loss_and_grad_wrt_s(s, rewards, g, GiftLossConfig())
    loss_global, grad_global = _loss_and_grad_wrt_s(s, rewards, g, GiftLossConfig(), num_pairs=num_pairs)
    ratio = s.shape[0] / num_pairs
    assert loss_global.item() == pytest.approx(loss_local.item() * ratio, rel=1e-13)
    torch.testing.assert_close(grad_global, grad_local * ratio, rtol=1e-13, atol=0)


def test_zscore_from_moments_is_differentiable_through_injected_moments():
    # moments built from s with autograd, injected: non-detached gradients must still flow.
    s = torch.tensor([0.3, -1.2, 0.8, 2.0], dtype=F64, requires_grad=True)
    gi = torch.zeros(4, dtype=torch.long)
    z = zscore_from_moments(s, gi, group_moments(s, gi, 1), detach_stats=False).z
    (z * torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)).sum().backward()
    s2 = s.detach().clone().requires_grad_(True)
    ((s2 - s2.mean()) / (s2.std() + 1e-6) * torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)).sum().backward()
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-12, atol=1e-14)
