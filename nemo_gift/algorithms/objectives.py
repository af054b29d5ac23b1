"""Micro-batch objectives: the GIFT, GRPO and SFT losses with the step's global normalizer.

Each builder returns ``objective(policy_logprobs [b, S], micro_batch) -> (loss, metrics)``
(:data:`nemo_gift.algorithms.interfaces.Objective`). The normalizer is fixed for the whole
optimizer step, so that the sum of the micro-batch losses is the step's loss whatever the
micro-batch count and the parallel layout (NeMo-RL's global valid-token convention).

Micro-batch fields read: ``labels``/``loss_mask`` [b, S] always; GIFT: ``baseline_logprobs``
[b, S], ``advantages`` [b], ``group_index`` [b]; GRPO: ``old_logprobs`` and optionally
``reference_logprobs`` [b, S], ``advantages`` [b]; SFT: nothing more.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from nemo_gift.algorithms.config import GiftLossConfig, GrpoLossConfig
from nemo_gift.algorithms.losses import gift_loss, grpo_loss
from nemo_gift.algorithms.normalization import AllReduce, GroupMoments, check_finite


def gift_objective(
    config: GiftLossConfig,
    *,
    num_pairs: int,
    num_groups: int,
    implicit_moments: Optional[GroupMoments] = None,
    moments_all_reduce: Optional[AllReduce] = None,
) -> Callable:
    """GIFT (Eq. 12) with explicit advantages precomputed on the whole batch.

    The implicit group statistics come from the micro-batch itself (it must hold whole
    groups), from ``implicit_moments`` precomputed over the mini-batch (detached statistics),
    or from per-group moments all-reduced with ``moments_all_reduce``."""

    def objective(logprobs, mb):
        return gift_loss(
            logprobs, mb["baseline_logprobs"], mb["loss_mask"], None, None, config,
            advantages=mb["advantages"], group_index=mb["group_index"], num_groups=num_groups,
            implicit_moments=implicit_moments, moments_all_reduce=moments_all_reduce, num_pairs=num_pairs,
        )

    return objective


def grpo_objective(config: GrpoLossConfig, *, num_tokens: int, num_sequences: int, num_groups: int) -> Callable:
    """GRPO's clipped surrogate plus beta_kl * KL(pi || pi_ref), advantages precomputed."""

    def objective(logprobs, mb):
        return grpo_loss(
            logprobs, mb["old_logprobs"], mb.get("reference_logprobs"), mb["loss_mask"], None, None, config,
            advantages=mb["advantages"], group_index=mb["group_index"], num_groups=num_groups,
            num_tokens=num_tokens, num_sequences=num_sequences,
        )

    return objective


def nll_objective(*, num_tokens: int) -> Callable:
    """Supervised warm start: summed negative log-likelihood of the response tokens / num_tokens."""

    def objective(logprobs, mb):
        valid = mb["loss_mask"].bool()  # [b, S]
        check_finite(logprobs, "policy_logprobs", where=valid)
        loss = -torch.where(valid, logprobs, torch.zeros_like(logprobs)).sum() / num_tokens
        return loss, {"loss": loss.detach(), "tokens": valid.sum().to(logprobs.dtype).detach()}

    return objective


def with_training_forward_as(objective: Callable, keys: Sequence[str]) -> Callable:
    """``objective`` with each batch key of ``keys`` (pi_old's log-probs) set to the training
    forward's own log-probs, detached: exact when the optimizer step is the first at the weights
    that generated the batch (one step per rollout batch), and no separate pi_old forward runs.

    Then GIFT's s_i = sum_t m (log pi - sg(log pi)) is 0 in value with ds/dtheta = sum_t m dlog pi,
    and GRPO's ratio exp(log pi - sg(log pi)) is 1 with d ratio = d log pi (sg: stop-gradient)."""

    def objective_with_own_baseline(logprobs, mb):
        own = logprobs.detach()  # [b, S]
        return objective(logprobs, {**mb, **{key: own for key in keys}})

    return objective_with_own_baseline


__all__ = ["gift_objective", "grpo_objective", "nll_objective", "with_training_forward_as"]
