"""The RL algorithms the loop trains with, by name: which log-probs each needs, and its objective.

The loop (:func:`nemo_gift.algorithms.gift.update`) knows no algorithm by name. For the run's
``trainer.algorithm`` it looks up an :class:`Algorithm` here and

1. computes, once per rollout batch, the log-probs the entry asks for (``logprobs``: batch key
   -> from the frozen reference or from the current policy);
2. builds, for each mini-batch, the entry's objective (``objective``), which the policy minimizes
   over its micro-batches in one optimizer step.

The options of each algorithm are the run config section named by ``options`` (``gift:``,
``grpo:``). Adding a loss is: the loss and its objective builder (``losses.py``,
``objectives.py``), an entry in :data:`ALGORITHMS`, and a recipe overlay ``conf/algorithm/NAME.yaml``
(docs/architecture.md shows one).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import torch

from nemo_gift.algorithms.config import GiftLossConfig, GrpoLossConfig, ImplicitBaseline
from nemo_gift.algorithms.interfaces import Objective, PolicyInterface
from nemo_gift.algorithms.normalization import group_moments, implicit_rewards
from nemo_gift.algorithms.objectives import gift_objective, grpo_objective


@dataclasses.dataclass(frozen=True)
class MiniBatchStep:
    """What an objective builder knows of one optimizer step."""

    batch: Mapping[str, torch.Tensor]
    """The mini-batch: ``tokens``, ``labels``, ``loss_mask`` [n, S], ``advantages`` [n],
    ``group_index`` [n] (0..k-1) and the log-probs of :attr:`Algorithm.logprobs` [n, S], except
    pi_old's when it comes from the training forward (``gift.old_policy_source``)."""
    num_groups: int
    """k, the groups (prompts) of the mini-batch."""
    group_size: int
    """G."""
    zero_std: torch.Tensor
    """[k] True for the groups whose explicit rewards are all equal."""
    micro_batch_size: int
    """Rows per micro-batch on one data-parallel rank; a micro-batch splits groups when G does
    not divide it."""
    policy: PolicyInterface
    """For forward-only passes at this step's weights."""


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One entry of :data:`ALGORITHMS`."""

    options: str
    """The run config section (and :class:`~nemo_gift.algorithms.gift.LoopConfig` field) holding
    its options; they also give the explicit advantages' ``eps`` and ``unbiased_std``."""
    logprobs: Callable[[Any], dict[str, bool]]
    """``logprobs(options) -> {batch key: from the reference?}``, computed once per rollout batch."""
    objective: Callable[[Any, MiniBatchStep], Optional[Objective]]
    """``objective(options, step)``: the step's objective, or None to skip the step (nothing to
    learn from)."""

    def needs_reference(self, options) -> bool:
        """Whether the run must keep the frozen reference model."""
        return any(self.logprobs(options).values())


def _gift_logprobs(options: GiftLossConfig) -> dict[str, bool]:
    return {"baseline_logprobs": options.implicit_baseline is ImplicitBaseline.REFERENCE}


def _gift_objective(options: GiftLossConfig, step: MiniBatchStep) -> Optional[Objective]:
    rows = step.num_groups * step.group_size
    dropped = step.group_size * int(step.zero_std.sum()) if options.drop_zero_std_groups else 0
    if rows == dropped:
        return None  # every group constant and dropped: nothing to learn from
    moments = None
    if step.micro_batch_size % step.group_size:
        # Micro-batches split groups: take the (detached) group statistics of s from a
        # forward-only pass at this step's weights, which every micro-batch shares.
        b = step.batch
        if "baseline_logprobs" in b:
            s_now = implicit_rewards(
                step.policy.logprobs(b), b["baseline_logprobs"], b["loss_mask"],
                options.implicit_reward, options.length_exponent,
            )  # [n]
        else:  # the baseline is pi_old from this step's own training forward: s = 0 exactly
            s_now = torch.zeros(rows, dtype=torch.float32)  # [n]
        moments = group_moments(s_now, b["group_index"], step.num_groups)
    return gift_objective(options, num_pairs=rows - dropped, num_groups=step.num_groups, implicit_moments=moments)


def _grpo_logprobs(options: GrpoLossConfig) -> dict[str, bool]:
    return {"old_logprobs": False, **({"reference_logprobs": True} if options.beta_kl > 0 else {})}


def _grpo_objective(options: GrpoLossConfig, step: MiniBatchStep) -> Objective:
    return grpo_objective(
        options, num_tokens=int(step.batch["loss_mask"].sum()),
        num_sequences=step.num_groups * step.group_size, num_groups=step.num_groups,
    )


ALGORITHMS: dict[str, Algorithm] = {
    "gift": Algorithm(options="gift", logprobs=_gift_logprobs, objective=_gift_objective),
    "grpo": Algorithm(options="grpo", logprobs=_grpo_logprobs, objective=_grpo_objective),
}
"""The algorithms ``trainer.algorithm`` may name."""


def get_algorithm(name: str) -> Algorithm:
    """The entry of ``name``; a ValueError lists the registered names."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm {name!r} is not one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]
