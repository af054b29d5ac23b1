"""GIFT algorithms, torch only: implicit rewards, group normalization and the losses.

- :mod:`.config`: typed, validated loss options (:class:`GiftLossConfig`, :class:`GrpoLossConfig`).
- :mod:`.normalization`: s_i, group moments and z-scores, the degenerate-std guards.
- :mod:`.losses`: :func:`gift_loss` (Eq. 12) and the baselines :func:`grpo_loss`,
  :func:`dpo_loss`, :func:`una_loss`; each returns ``(loss, metrics)``.
- :mod:`.metrics`: detached loss-side metrics.

The math, every option and its default: ``docs/gift-math.md``.
"""

from nemo_gift.algorithms.config import (
    GiftLossConfig,
    GrpoLossConfig,
    ImplicitBaseline,
    ImplicitRewardMode,
    KlEstimator,
    LossAggregation,
    StdGuard,
    validate_group_size,
)
from nemo_gift.algorithms.losses import dpo_loss, gift_loss, grpo_loss, una_loss
from nemo_gift.algorithms.normalization import (
    ExplicitAdvantages,
    GroupMoments,
    GroupZScore,
    contiguous_group_index,
    explicit_advantages,
    group_moments,
    group_zscore,
    implicit_rewards,
    resolve_groups,
    response_lengths,
    zscore_from_moments,
)

__all__ = [
    "GiftLossConfig",
    "GrpoLossConfig",
    "ImplicitBaseline",
    "ImplicitRewardMode",
    "KlEstimator",
    "LossAggregation",
    "StdGuard",
    "validate_group_size",
    "gift_loss",
    "grpo_loss",
    "dpo_loss",
    "una_loss",
    "ExplicitAdvantages",
    "GroupMoments",
    "GroupZScore",
    "contiguous_group_index",
    "explicit_advantages",
    "group_moments",
    "group_zscore",
    "implicit_rewards",
    "resolve_groups",
    "response_lengths",
    "zscore_from_moments",
]
