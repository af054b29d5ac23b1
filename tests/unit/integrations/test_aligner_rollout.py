"""Aligner rollout batch -> GIFT training data (torch only; runs without NeMo)."""

import pytest
import torch

from nemo_gift.algorithms import explicit_advantages
from nemo_gift.algorithms.config import GiftLossConfig, ImplicitBaseline
from nemo_gift.integrations.nemo_aligner.rollout import (
    GIFT_BATCH_KEYS,
    build_gift_rollout_data,
    check_gift_batch_sizes,
    check_whole_groups,
    group_by_prompt,
    response_mask,
)

EOS = 0


def _loop_mask(prompt_lengths, response_lengths, positions):
    """Aligner's ppo_utils.create_mask, written as its docstring states it."""
    out = torch.zeros(len(prompt_lengths), positions)
    for i, (p, r) in enumerate(zip(prompt_lengths.tolist(), response_lengths.tolist())):
        out[i, p - 1 : r - 1] = 1.0
    return out


def aligner_rollout(num_prompts=3, group_size=4, mbs=3, seed=0, duplicate_first_prompt=False):
    """A rollout batch laid out as Aligner's REINFORCE trainer builds it: for each rollout
    micro-batch of ``mbs`` prompts, G consecutive ``infer`` calls, concatenated in that order."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, 50, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g) for _ in range(num_prompts)]
    if duplicate_first_prompt:
        prompts[-1] = prompts[0].clone()
    rows = []
    for start in range(0, num_prompts, mbs):
        chunk = prompts[start : start + mbs]
        width = max(len(p) for p in chunk)  # the collate pads each rollout batch to its own max
        for _ in range(group_size):
            for p in chunk:
                resp = torch.randint(1, 50, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g)
                rows.append((p, width, torch.cat([p, resp, torch.tensor([EOS])])))
    s = max(len(full) for _, _, full in rows)
    lp = max(w for _, w, _ in rows)
    n = len(rows)
    prompt_tokens = torch.full((n, lp), EOS)
    response_tokens = torch.full((n, s), EOS)
    for i, (p, _, full) in enumerate(rows):
        prompt_tokens[i, : len(p)] = p
        response_tokens[i, : len(full)] = full
    return {
        "prompt_tokens": prompt_tokens,
        "prompt_lengths": torch.tensor([len(p) for p, _, _ in rows]),
        "response_tokens": response_tokens,
        "response_lengths": torch.tensor([len(f) for _, _, f in rows]),
        "logprobs": -torch.rand(n, s - 1, generator=g),
        "init_logprobs": -torch.rand(n, s - 1, generator=g),
        "rewards": torch.randint(0, 2, (n,), generator=g).float(),
        "is_end": torch.ones(n, dtype=torch.bool),
    }


def test_response_mask_matches_aligner_create_mask_convention():
    pl, rl = torch.tensor([1, 3, 5, 2]), torch.tensor([4, 3 + 1, 9, 2 + 6])
    assert torch.equal(response_mask(pl, rl, 8).float(), _loop_mask(pl, rl, 8))


def test_groups_become_contiguous_and_keep_rollout_order():
    rb = aligner_rollout(num_prompts=5, group_size=3, mbs=2)
    order, group_ids = group_by_prompt(rb["prompt_tokens"], rb["prompt_lengths"], 3)
    assert sorted(order.tolist()) == list(range(15))
    assert group_ids.tolist() == [i // 3 for i in range(15)]
    for k in range(5):
        members = order[3 * k : 3 * k + 3]
        firsts = {tuple(rb["prompt_tokens"][i, : rb["prompt_lengths"][i]].tolist()) for i in members.tolist()}
        assert len(firsts) == 1  # one prompt per group
        assert members.tolist() == sorted(members.tolist())  # rollout order kept inside a group


def test_a_prompt_sampled_twice_makes_two_groups():
    rb = aligner_rollout(num_prompts=4, group_size=2, mbs=2, duplicate_first_prompt=True)
    order, group_ids = group_by_prompt(rb["prompt_tokens"], rb["prompt_lengths"], 2)
    assert group_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(set(order.tolist())) == 8


def test_incomplete_group_is_refused():
    rb = aligner_rollout(num_prompts=2, group_size=3, mbs=2)
    keep = torch.arange(5)  # drop one response
    with pytest.raises(ValueError, match="not a multiple of group_size=3"):
        group_by_prompt(rb["prompt_tokens"][keep], rb["prompt_lengths"][keep], 3)


def test_check_whole_groups():
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    check_whole_groups(ids, 2)
    check_whole_groups(ids, 4)
    with pytest.raises(ValueError, match="do not split"):
        check_whole_groups(ids, 3)
    check_whole_groups(torch.tensor([0, 0, 0, 1, 1, 1]), 2)
    with pytest.raises(ValueError, match="split a group"):
        check_whole_groups(torch.tensor([0, 0, 0, 1, 1, 1]), 3)


@pytest.mark.parametrize("baseline", ["reference", "old_policy"])
def test_build_gift_rollout_data_moves_rows_together(baseline):
    rb = aligner_rollout(num_prompts=3, group_size=4, mbs=2, seed=1)
    data, metrics = build_gift_rollout_data(rb, 4, baseline)
    assert set(data) == set(GIFT_BATCH_KEYS)
    order, _ = group_by_prompt(rb["prompt_tokens"], rb["prompt_lengths"], 4)
    src = rb["init_logprobs"] if baseline == "reference" else rb["logprobs"]
    assert torch.equal(data["baseline_logprobs"], src[order])
    assert torch.equal(data["response_tokens"], rb["response_tokens"][order])
    assert torch.equal(data["rewards"], rb["rewards"][order])
    assert torch.equal(data["mask"].float(), _loop_mask(rb["prompt_lengths"], rb["response_lengths"], src.shape[1])[order])
    zero = explicit_advantages(data["rewards"], 4).zero_std
    assert metrics["num_groups"] == 3.0
    assert metrics["zero_explicit_std_frac"] == pytest.approx(zero.float().mean().item())
    assert ("rollout_implicit_reward_mean" in metrics) == (baseline == "reference")


def test_the_default_baseline_is_the_projects_old_policy():
    """Left out, the baseline is GiftLossConfig's default (pi_old, ``logprobs``), as the trainer's."""
    assert GiftLossConfig().implicit_baseline is ImplicitBaseline.OLD_POLICY
    rb = aligner_rollout(num_prompts=3, group_size=4, mbs=2, seed=2)
    data, metrics = build_gift_rollout_data(rb, 4)
    order, _ = group_by_prompt(rb["prompt_tokens"], rb["prompt_lengths"], 4)
    assert torch.equal(data["baseline_logprobs"], rb["logprobs"][order])
    assert not torch.equal(data["baseline_logprobs"], rb["init_logprobs"][order])
    assert "rollout_implicit_reward_mean" not in metrics
    explicit, _ = build_gift_rollout_data(rb, 4, "old_policy")
    assert all(torch.equal(data[k], explicit[k]) for k in GIFT_BATCH_KEYS)


def test_reference_baseline_needs_init_logprobs():
    rb = aligner_rollout()
    del rb["init_logprobs"]
    with pytest.raises(KeyError, match="init_logprobs"):
        build_gift_rollout_data(rb, 4, "reference")


def test_batch_sizes_are_checked_before_the_run():
    check_gift_batch_sizes(4, model_gbs=64, model_mbs=8, dp_size=2)
    with pytest.raises(ValueError, match="micro_batch_size=6 is not a multiple"):
        check_gift_batch_sizes(4, model_gbs=64, model_mbs=6, dp_size=2)
    with pytest.raises(ValueError, match="straddle"):
        check_gift_batch_sizes(4, model_gbs=24, model_mbs=4, dp_size=4)
    with pytest.raises(ValueError, match=">= 2"):
        check_gift_batch_sizes(1, model_gbs=8, model_mbs=8, dp_size=1)
