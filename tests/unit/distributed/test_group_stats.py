"""Group statistics over data-parallel ranks: the partition keeps groups whole where it can, and
both ways (whole groups with local statistics, split groups with all-reduced moments) give the
GIFT loss and gradient of one rank holding the whole batch.
"""

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_gift.distributed.group_stats import (
    GroupStatsMode,
    dp_all_reduce,
    partition_groups,
    resolve_stats_mode,
)
from nemo_gift.distributed.spawn import run_on_ranks


@st.composite
def _shapes(draw):
    g = draw(st.integers(2, 6))
    m = draw(st.integers(1, 4))
    k = m * draw(st.integers(1, 4))
    step = k // m * g
    d = draw(st.sampled_from([x for x in range(1, 7) if step % x == 0]))
    return k, g, d, m, draw(st.booleans())


@settings(max_examples=60, deadline=None)
@given(_shapes())
def test_partition_covers_the_batch_and_keeps_groups_whole_where_it_holds(shape):
    k, g, d, m, shuffle = shape
    gen = torch.Generator().manual_seed(3) if shuffle else None
    p = partition_groups(k, g, d, m, generator=gen)
    cells = [[p.indices(r, j) for j in range(m)] for r in range(d)]
    everything = torch.cat([c for row in cells for c in row])
    assert torch.equal(everything.sort().values, torch.arange(k * g))  # each response exactly once
    for j in range(m):  # a micro-batch step holds whole groups, always
        step = torch.cat([cells[r][j] for r in range(d)])
        counts = torch.bincount(step // g, minlength=k)
        assert set(counts.tolist()) <= {0, g}
    whole = all(set(torch.bincount(c // g).tolist()) <= {0, g} for row in cells for c in row)
    assert p.whole_groups == whole == (p.microbatch_size % g == 0)
    assert resolve_stats_mode("auto", p) is (GroupStatsMode.LOCAL if whole else GroupStatsMode.ALL_REDUCE)
    assert torch.equal(p.group_index(0, 0), p.indices(0, 0) // g)


def test_partition_refuses_groups_across_steps_and_local_stats_on_split_groups():
    with pytest.raises(ValueError, match="straddle two micro-batch steps"):
        partition_groups(num_groups=3, group_size=4, dp_size=1, num_microbatches=2)
    with pytest.raises(ValueError, match="do not split over dp_size=3"):
        partition_groups(num_groups=2, group_size=4, dp_size=3, num_microbatches=1)
    with pytest.raises(ValueError, match=">= 2"):
        partition_groups(num_groups=2, group_size=1, dp_size=1, num_microbatches=1)
    split = partition_groups(num_groups=4, group_size=4, dp_size=2, num_microbatches=4)  # b = 2
    with pytest.raises(ValueError, match="needs whole groups"):
        resolve_stats_mode("local", split)
    with pytest.raises(ValueError, match="group_stats="):
        resolve_stats_mode("sometimes", split)


# ---------------------------------------------------------------------------------------------
# Split across 2 DP ranks vs one rank (a tiny torch "policy": logits = theta + features_i).
# ---------------------------------------------------------------------------------------------

K, G, T, V = 4, 4, 6, 10  # N = 16


def _problem():
    g = torch.Generator().manual_seed(0)
    n = K * G
    theta = 0.3 * torch.randn(T, V, generator=g)  # the shared (data-parallel) parameter
    features = torch.randn(n, T, V, generator=g)
    tokens = torch.randint(0, V, (n, T), generator=g)
    mask = torch.arange(T) < torch.randint(2, T + 1, (n, 1), generator=g)  # [N, T]
    baseline = -2.3 + 0.5 * torch.randn(n, T, generator=g)
    rewards = torch.rand(n, generator=g)
    rewards[:G] = 0.5  # one group with constant rewards
    return theta, features, tokens, mask, baseline, rewards


def _logprobs(theta, features, tokens):
    return torch.log_softmax(theta + features, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [n, T]


def _single_rank(cfg):
    from nemo_gift.algorithms.losses import gift_loss

    theta, features, tokens, mask, baseline, rewards = _problem()
    theta.requires_grad_()
    loss, _ = gift_loss(_logprobs(theta, features, tokens), baseline, mask, rewards, G, cfg)
    loss.backward()
    return loss.item(), theta.grad


def _data_parallel(cfg, num_micro, mode, force_local=False):
    """This rank's share of the loss over its micro-batches, and its theta gradient, both summed
    over the DP ranks (as DDP does after our M * D scaling)."""
    from nemo_gift.algorithms.losses import gift_loss
    from nemo_gift.algorithms.normalization import explicit_advantages

    theta, features, tokens, mask, baseline, rewards = _problem()
    theta.requires_grad_()
    partition = partition_groups(K, G, dist.get_world_size(), num_micro, generator=torch.Generator().manual_seed(5))
    stats = GroupStatsMode.LOCAL if force_local else resolve_stats_mode(mode, partition)
    reduce = dp_all_reduce(None, differentiable=not cfg.detach_implicit_stats) if stats is GroupStatsMode.ALL_REDUCE else None
    adv, _ = explicit_advantages(rewards, G)  # on the global rewards
    total = torch.zeros(())
    for j in range(num_micro):
        idx = partition.indices(dist.get_rank(), j)
        loss, _ = gift_loss(
            _logprobs(theta, features[idx], tokens[idx]), baseline[idx], mask[idx], None, None, cfg,
            advantages=adv[idx], group_index=idx // G, num_groups=K, moments_all_reduce=reduce,
            num_pairs=K * G,
        )
        loss.backward()
        total += loss.detach()
    grad = theta.grad.clone()
    dist.all_reduce(grad)
    dist.all_reduce(total)
    return total.item(), grad, stats.value, partition.whole_groups


def _compare(rank, world_size):
    from nemo_gift.algorithms.config import GiftLossConfig

    out = []
    cases = [  # (num_micro, mode, detach, force_local)
        (1, "auto", True, False),  # b = 8: whole groups, local
        (2, "auto", True, False),  # b = 4: whole groups, local
        (4, "auto", True, False),  # b = 2: each group split over the 2 ranks, all-reduced
        (4, "auto", False, False),  # split, gradients through the all-reduced mean and std
        (1, "all_reduce", True, False),  # whole groups, all-reduced anyway
        (1, "all_reduce", False, False),
        (4, "auto", True, True),  # negative control: split groups with local statistics
    ]
    for num_micro, mode, detach, force_local in cases:
        cfg = GiftLossConfig(detach_implicit_stats=detach)
        ref_loss, ref_grad = _single_rank(cfg)
        loss, grad, stats, whole = _data_parallel(cfg, num_micro, mode, force_local)
        out.append({
            "case": (num_micro, mode, detach, force_local), "stats": stats, "whole": whole,
            "loss_diff": abs(loss - ref_loss), "grad_diff": (grad - ref_grad).abs().max().item(),
            "ref_grad": ref_grad.abs().max().item(), "ref_loss": ref_loss,
        })
    return out


def test_group_split_over_two_dp_ranks_matches_one_rank():
    results = run_on_ranks(_compare, 2, timeout=240)
    for rank, report in enumerate(results):
        for e in report[:-1]:
            assert e["loss_diff"] <= 1e-6 * max(1.0, e["ref_loss"]), (rank, e)
            assert e["grad_diff"] <= 1e-6 * max(1.0, e["ref_grad"]), (rank, e)
        control = report[-1]
        assert not control["whole"] and control["stats"] == "local"
        assert control["loss_diff"] > 1e-2  # wrong statistics are visible: the comparison can fail
    kinds = {(e["whole"], e["stats"], e["case"][2]) for e in results[0][:-1]}
    assert {(True, "local", True), (False, "all_reduce", True), (False, "all_reduce", False), (True, "all_reduce", True)} <= kinds
    # Differentiable statistics change the gradient (so that case tests something of its own).
    assert abs(results[0][2]["ref_grad"] - results[0][3]["ref_grad"]) > 1e-4
