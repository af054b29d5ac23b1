"""Supervised warm start: next-token NLL on (prompt, answer) examples before RL.

The tiny CPU task needs it: a random model has no signal for RL (every group's rewards are 0).
A few hundred steps bring it to partial accuracy, the regime where GIFT and GRPO have signal.
Real recipes start from an instruct model and skip it (``sft.steps: 0``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from nemo_gift.algorithms.interfaces import PolicyInterface
from nemo_gift.algorithms.objectives import nll_objective
from nemo_gift.algorithms.rollout import padded_length


def build_sft_batch(
    examples: Sequence[tuple[list[int], list[int]]], pad_token_id: int, pad_multiple: int = 1
) -> dict[str, torch.Tensor]:
    """``tokens``, ``labels``, ``loss_mask`` [N, S] from ``(ids, per-token loss mask)`` pairs: the
    loss falls on predicting each token whose mask is 1. S is the longest example rounded up to
    ``pad_multiple`` (:func:`~nemo_gift.algorithms.rollout.padded_length`)."""
    n, s = len(examples), padded_length(max(len(ids) for ids, _ in examples), pad_multiple)
    tokens = torch.full((n, s), pad_token_id, dtype=torch.long)
    target_mask = torch.zeros(n, s, dtype=torch.bool)
    for row, (ids, mask) in enumerate(examples):
        if len(ids) != len(mask):
            raise ValueError(f"example {row}: {len(ids)} ids but {len(mask)} mask entries")
        tokens[row, : len(ids)] = torch.tensor(ids)
        target_mask[row, : len(ids)] = torch.tensor(mask, dtype=torch.bool)
    labels = torch.full_like(tokens, pad_token_id)
    labels[:, :-1] = tokens[:, 1:]
    loss_mask = torch.zeros_like(target_mask)
    loss_mask[:, :-1] = target_mask[:, 1:]
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask}


def sft_warm_start(
    policy: PolicyInterface,
    examples: Callable[[int], Sequence[tuple[list[int], list[int]]]],
    steps: int,
    pad_token_id: int,
    log: Callable[[int, dict], None] = lambda step, metrics: None,
    pad_multiple: int = 1,
) -> list[dict[str, float]]:
    """``steps`` optimizer steps, each on ``examples(step)`` padded to ``pad_multiple``;
    returns the per-step metrics."""
    history = []
    for step in range(steps):
        batch = build_sft_batch(examples(step), pad_token_id, pad_multiple)
        objective = nll_objective(num_tokens=int(batch["loss_mask"].sum()))
        metrics = policy.train_step(batch, objective, group_size=1)
        history.append(metrics)
        log(step, metrics)
    return history
