"""The RL algorithms the loop trains with, by name: which log-probs each needs, and its objective.

The loop (:func:`nemo_gift.algorithms.gift.update`) knows no algorithm by name. For the run's
``trainer.algorithm`` it looks up an :class:`Algorithm` here and

1. computes, once per rollout batch, the log-probs the entry asks for (``logprobs``: batch key
   -> from the frozen reference or from the current policy);
2. builds, for each mini-batch, the entry's objective (``objective``), which the policy minimizes
   over its micro-batches in one optimizer step.

Each entry carries its options dataclass (``options``); the run config holds one instance per
entry, under the entry's name (the YAML sections ``gift:``, ``grpo:``), and the loop's
:class:`~nemo_gift.algorithms.gift.LoopConfig` gets them by name too, so a loss with options of
its own needs no new config field. Adding a loss is: the loss and its objective builder
(``losses.py``, ``objectives.py``), an entry in :data:`ALGORITHMS`, and a recipe overlay
``conf/algorithm/NAME.yaml`` (docs/architecture.md shows one).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import torch

from nemo_gift.algorithms.config import GiftLossConfig, GrpoLossConfig, ImplicitBaseline
from nemo_gift.algorithms.interfaces import Objective, PolicyInterface
from nemo_gift.algorithms.normalization import group_moments, implicit_rewards
from nemo_gift.algorithms.objectives import gift_objective, grpo_objective
from nemo_gift.utils.convert import ConfigError


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
    max_tokens_per_micro_batch: Optional[int] = None
    """The token budget of :mod:`nemo_gift.algorithms.packing` when set: rows are packed by length,
    so micro-batches split groups whatever ``micro_batch_size`` is."""


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One entry of :data:`ALGORITHMS`."""

    options: type
    """Its options dataclass, validated on construction: the run config section named as the
    entry holds one. Besides the objective's own options, they give the explicit advantages'
    ``eps`` and ``unbiased_std``."""
    logprobs: Callable[[Any], dict[str, bool]]
    """``logprobs(options) -> {batch key: from the reference?}``, computed once per rollout batch."""
    objective: Callable[[Any, MiniBatchStep], Optional[Objective]]
    """``objective(options, step)``: the step's objective, or None to skip the step (nothing to
    learn from)."""
    check: Callable[[Any, Any], None] = lambda options, cfg: None
    """``check(options, cfg)``: checks of the options against the rest of the run config ``cfg``
    (a :class:`nemo_gift.config.schema.RunConfig`), run by its ``validate``; raises
    :class:`~nemo_gift.utils.convert.ConfigError` naming the keys."""

    engine_logprobs_by_default: bool = True
    """Whether ``rollout.reuse_engine_logprobs: null`` lets the torch engine's fp32 log-probs
    stand in for pi_old (within 1e-5 of the trainer's forward). GIFT says no: its z divides s by
    a group std floored at 0.01, so a 1e-6 error moves its trajectory by up to 1e-3."""

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
    if step.micro_batch_size % step.group_size or step.max_tokens_per_micro_batch:
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


def _gift_check(options: GiftLossConfig, cfg) -> None:
    G, micro = cfg.rollout.group_size, cfg.trainer.micro_batch_size
    if not options.detach_implicit_stats and micro % G:
        raise ConfigError(
            f"gift.detach_implicit_stats=false needs whole groups in each micro-batch: "
            f"trainer.micro_batch_size={micro} must be a multiple of rollout.group_size={G}"
        )
    budget = cfg.trainer.max_tokens_per_micro_batch
    if not options.detach_implicit_stats and budget:
        raise ConfigError(
            "gift.detach_implicit_stats=false needs whole groups in each micro-batch, and "
            f"trainer.max_tokens_per_micro_batch={budget} packs rows by length (groups split); "
            "unset the budget or keep the detached statistics"
        )


def _grpo_logprobs(options: GrpoLossConfig) -> dict[str, bool]:
    return {"old_logprobs": False, **({"reference_logprobs": True} if options.beta_kl > 0 else {})}


def _grpo_objective(options: GrpoLossConfig, step: MiniBatchStep) -> Objective:
    return grpo_objective(
        options, num_tokens=int(step.batch["loss_mask"].sum()),
        num_sequences=step.num_groups * step.group_size, num_groups=step.num_groups,
    )


ALGORITHMS: dict[str, Algorithm] = {
    "gift": Algorithm(options=GiftLossConfig, logprobs=_gift_logprobs, objective=_gift_objective, check=_gift_check,
                      engine_logprobs_by_default=False),
    "grpo": Algorithm(options=GrpoLossConfig, logprobs=_grpo_logprobs, objective=_grpo_objective),
}
"""The algorithms ``trainer.algorithm`` may name."""


def option_types() -> dict[str, type]:
    """``{name: options dataclass}`` of every entry: the run config's loss sections."""
    return {name: entry.options for name, entry in ALGORITHMS.items()}


def default_options() -> dict[str, Any]:
    """Every entry's options at their defaults, by name."""
    return {name: entry.options() for name, entry in ALGORITHMS.items()}


def get_algorithm(name: str) -> Algorithm:
    """The entry of ``name``; a ValueError lists the registered names."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm {name!r} is not one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]
