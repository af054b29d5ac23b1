"""Implicit rewards, group moments, z-scores, guards and explicit advantages."""

import math

import pytest
import torch

from nemo_gift.algorithms import (
    GroupMoments,
    contiguous_group_index,
    explicit_advantages,
    group_moments,
    group_zscore,
    implicit_rewards,
    resolve_groups,
    zscore_from_moments,
)
from tests.unit.algorithms._reference import ref_advantages, ref_zscore

F64 = torch.float64


# --- implicit rewards: kl_sum vs kl_average with ragged masks -----------------------------

def _ragged():
    # log-ratios per token; lengths [4, 1, 3, 2]; padded entries hold NaN/inf to prove masking
    policy = torch.tensor(
        [
            [-0.5, -1.0, -0.25, -2.0],
            [-3.0, float("nan"), float("nan"), float("nan")],
            [-0.75, -0.5, -1.5, float("-inf")],
            [-1.0, -0.125, 9.0, 9.0],
        ],
        dtype=F64,
    )
    baseline = torch.tensor(
        [
            [-1.0, -0.5, -0.5, -1.0],
            [-1.0, 0.0, 0.0, 0.0],
            [-0.25, -1.0, -1.0, 0.0],
            [-0.5, -0.5, 0.0, 0.0],
        ],
        dtype=F64,
    )
    lengths = torch.tensor([4, 1, 3, 2])
    mask = torch.arange(4)[None, :] < lengths[:, None]
    # row sums of the valid log-ratios, by hand:
    # r0: 0.5 - 0.5 + 0.25 - 1.0 = -0.75 ; r1: -2.0 ; r2: -0.5 + 0.5 - 0.5 = -0.5 ; r3: -0.5 + 0.375 = -0.125
    kl_sum = torch.tensor([-0.75, -2.0, -0.5, -0.125], dtype=F64)
    return policy, baseline, mask, lengths, kl_sum


def test_kl_sum_and_kl_average_with_ragged_masks():
    policy, baseline, mask, lengths, kl_sum = _ragged()
    s_sum = implicit_rewards(policy, baseline, mask, "kl_sum")
    s_avg = implicit_rewards(policy, baseline, mask, "kl_average")
    torch.testing.assert_close(s_sum, kl_sum, rtol=0, atol=1e-15)
    # kl_average: -0.75/4, -2/1, -0.5/3, -0.125/2
    torch.testing.assert_close(s_avg, torch.tensor([-0.1875, -2.0, -0.5 / 3, -0.0625], dtype=F64), rtol=0, atol=1e-15)


def test_length_exponent_interpolates():
    policy, baseline, mask, lengths, kl_sum = _ragged()
    torch.testing.assert_close(implicit_rewards(policy, baseline, mask, "kl_sum", 0.0), kl_sum, rtol=0, atol=1e-15)
    torch.testing.assert_close(
        implicit_rewards(policy, baseline, mask, "kl_sum", 1.0),
        implicit_rewards(policy, baseline, mask, "kl_average"),
        rtol=0,
        atol=1e-15,
    )
    # p = 0.5: -0.75/2, -2/1, -0.5/sqrt(3), -0.125/sqrt(2)
    expected = torch.tensor([-0.375, -2.0, -0.5 / math.sqrt(3), -0.125 / math.sqrt(2)], dtype=F64)
    torch.testing.assert_close(implicit_rewards(policy, baseline, mask, "kl_sum", 0.5), expected, rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match="length_exponent=0.5 contradicts"):
        implicit_rewards(policy, baseline, mask, "kl_average", 0.5)
    with pytest.raises(ValueError, match="mode='kl_median'"):
        implicit_rewards(policy, baseline, mask, "kl_median")


def test_single_token_responses():
    policy = torch.tensor([[-0.5], [-1.25], [-2.0]], dtype=F64)
    baseline = torch.tensor([[-1.0], [-1.0], [-1.0]], dtype=F64)
    mask = torch.ones(3, 1, dtype=torch.bool)
    expected = torch.tensor([0.5, -0.25, -1.0], dtype=F64)
    for mode in ("kl_sum", "kl_average"):
        torch.testing.assert_close(implicit_rewards(policy, baseline, mask, mode), expected, rtol=0, atol=0)


def test_float_mask_and_bf16_accumulate_in_fp32():
    policy = torch.full((2, 256), -0.0078125, dtype=torch.bfloat16)  # 2^-7, exact in bf16
    baseline = torch.zeros(2, 256, dtype=torch.bfloat16)
    mask = torch.ones(2, 256)
    s = implicit_rewards(policy, baseline, mask)
    assert s.dtype == torch.float32
    torch.testing.assert_close(s, torch.tensor([-2.0, -2.0]), rtol=0, atol=0)


def test_fully_masked_response_raises_with_index():
    policy, baseline, mask, _, _ = _ragged()
    mask[2] = False
    with pytest.raises(ValueError, match=r"response 2 is fully masked"):
        implicit_rewards(policy, baseline, mask)


def test_nan_logprob_at_valid_token_raises_with_index():
    policy, baseline, mask, _, _ = _ragged()
    policy[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"policy_logprobs\[3, 1\] = nan is not finite"):
        implicit_rewards(policy, baseline, mask)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="share one"):
        implicit_rewards(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))


# --- grouping --------------------------------------------------------------------------------

def test_contiguous_groups_and_their_errors():
    assert contiguous_group_index(6, 3).tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="group_size=1 must be >= 2"):
        contiguous_group_index(4, 1)
    with pytest.raises(ValueError, match="N=7 responses do not split into whole groups of group_size=2"):
        contiguous_group_index(7, 2)
    with pytest.raises(ValueError, match="exactly one of group_size"):
        resolve_groups(4, 2, torch.zeros(4, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"group_index\[1\] = 5 is outside \[0, num_groups=2\)"):
        resolve_groups(3, None, torch.tensor([0, 5, 1]), 2)


def test_group_of_one_raises_naming_the_group():
    x = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    with pytest.raises(ValueError, match=r"group 1 \(of response 2\) has 1 response"):
        group_zscore(x, group_index=torch.tensor([0, 0, 1]), num_groups=2)
    with pytest.raises(ValueError, match="group 1 .* has 1 response"):
        explicit_advantages(x, group_index=torch.tensor([0, 0, 1]), num_groups=2)


# --- moments -----------------------------------------------------------------------------

def test_two_pass_moments_survive_a_large_offset():
    # values 1e8 + [0, 1, 2, 3]: unbiased var 5/3 exactly. The one-pass power-sum form loses it.
    x = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=F64) + 1e8
    gi = torch.zeros(4, dtype=torch.long)
    m = group_moments(x, gi, 1)
    assert m.count.item() == 4 and m.mean.item() == 1e8 + 1.5
    assert m.std().item() == pytest.approx(math.sqrt(5 / 3), rel=1e-15)
    naive = GroupMoments.from_power_sums(m.count, (x).sum().reshape(1), (x * x).sum().reshape(1))
    assert abs(naive.std().item() - math.sqrt(5 / 3)) > 1e-3  # why the API keeps M2, not sum x^2


def test_moments_all_reduce_hook_equals_moments_of_the_union():
    # Two ranks holding identical data: an all-reduce is x2. The result must be the moments
    # of the duplicated batch, for the unbiased std too (dof 2n - 1, not 2(n - 1)).
    x = torch.tensor([0.5, -1.0, 2.0, 0.25, 3.0, 1.0], dtype=F64)
    gi = torch.tensor([0, 0, 0, 1, 1, 1])
    reduced = group_moments(x, gi, 2, all_reduce=lambda t: 2 * t)
    union = group_moments(torch.cat([x, x]), torch.cat([gi, gi]), 2)
    for a, b in zip(reduced, union):
        torch.testing.assert_close(a, b, rtol=1e-15, atol=0)


def test_partial_groups_with_injected_global_moments_match_whole_groups():
    x = torch.tensor([0.5, -1.0, 2.0, 0.25, 3.0, 1.0, -2.0, 0.0], dtype=F64)
    gi = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    full = group_zscore(x, 4).z
    glob = group_moments(x, gi, 2)
    halves = [
        zscore_from_moments(x[idx], gi[idx], glob).z
        for idx in (torch.tensor([0, 1, 4]), torch.tensor([2, 3, 5, 6, 7]))
    ]
    torch.testing.assert_close(torch.cat(halves), full[torch.tensor([0, 1, 4, 2, 3, 5, 6, 7])], rtol=0, atol=0)


# --- z-score and guards -----------------------------------------------------------------

def test_zscore_matches_reference_for_all_guards_when_std_is_large():
    torch.manual_seed(0)
    x = torch.randn(12, dtype=F64)
    expected = ref_zscore(x, 4, 1e-6)
    for guard in ("none", "std_floor", "center_only"):
        torch.testing.assert_close(group_zscore(x, 4, guard=guard).z, expected, rtol=1e-14, atol=1e-15)


def test_guards_on_a_tiny_std():
    # s = [1, 1 + 3h, 1, 1 - 3h] with h = 1e-9: mean 1, std sqrt(18 h^2 / 3) = sqrt(6) h
    h = 1e-9
    x = torch.tensor([1.0, 1.0 + 3 * h, 1.0, 1.0 - 3 * h], dtype=F64)
    d = x - 1.0
    std = math.sqrt(6) * h
    none = group_zscore(x, 4, guard="none")
    torch.testing.assert_close(none.z, d / (std + 1e-6), rtol=1e-6, atol=0)  # rtol: d itself carries rounding
    floor = group_zscore(x, 4, guard="std_floor", guard_value=1e-2)
    torch.testing.assert_close(floor.z, d / (1e-2 + 1e-6), rtol=1e-6, atol=0)
    center = group_zscore(x, 4, guard="center_only", guard_value=1e-2)
    torch.testing.assert_close(center.z, d, rtol=0, atol=0)
    for res in (none, floor, center):
        assert res.degenerate.tolist() == [True]
        assert res.std.item() == pytest.approx(std, rel=1e-6)


def test_guard_boundaries():
    # std exactly at the guard value: std_floor = raw formula; center_only scales (std >= v).
    x = torch.tensor([-0.5, 0.5], dtype=F64)  # std = sqrt(0.5) exactly as computed
    v = group_zscore(x, 2, guard="none").std.item()
    for guard in ("std_floor", "center_only"):
        res = group_zscore(x, 2, guard=guard, guard_value=v)
        torch.testing.assert_close(res.z, x / (v + 1e-6), rtol=0, atol=0)
        assert res.degenerate.tolist() == [False]
    with pytest.raises(ValueError, match="guard='floor'"):
        group_zscore(x, 2, guard="floor")


# --- explicit advantages ---------------------------------------------------------------

def test_advantages_match_reference_and_zero_std_groups_are_exact_zero():
    r = torch.tensor([1.0, 0.0, 0.0, 0.7, 0.7, 0.7, 0.0, 0.0, 0.0], dtype=F64)
    res = explicit_advantages(r, 3)
    torch.testing.assert_close(res.advantages, ref_advantages(r, 3, 1e-6), rtol=1e-15, atol=0)
    # (0.7 + 0.7 + 0.7) / 3 != 0.7 in binary, so a float std is ~1e-16, not 0 (checked below);
    # the advantage is still exactly 0 because zero-std is tested as group max == min.
    assert (r[3:6] - r[3:6].mean()).abs().max().item() > 0
    assert res.advantages[3:].tolist() == [0.0] * 6
    assert res.zero_std.tolist() == [False, True, True]
    # [1, 0, 0]: mean 1/3, deviations [2/3, -1/3, -1/3], unbiased var 1/3
    a = (1 / 3) / (math.sqrt(1 / 3) + 1e-6)
    torch.testing.assert_close(res.advantages[:3], torch.tensor([2 * a, -a, -a], dtype=F64), rtol=1e-15, atol=0)


def test_advantages_accept_integer_rewards_and_reject_non_finite_with_index():
    res = explicit_advantages(torch.tensor([1, 0, 1, 1]), 2)
    assert res.advantages.dtype == torch.float32
    assert res.zero_std.tolist() == [False, True]
    for bad in (float("nan"), float("inf")):
        r = torch.tensor([1.0, 0.0, 0.5, bad])
        with pytest.raises(ValueError, match=rf"rewards\[3\] = {bad} is not finite"):
            explicit_advantages(r, 2)
