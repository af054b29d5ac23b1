"""Typed, validated options of the GIFT and GRPO losses.

Every choice is an ``Enum`` (a ``str`` subclass, so YAML strings load into it);
each dataclass checks its fields in ``__post_init__`` with :mod:`nemo_gift.utils.checks`
(the project's one idiom), and a wrong value fails with an error that names the field and
the value. Equation numbers refer to the GIFT paper (arXiv 2510.23868) as
summarised in ``docs/gift-math.md``.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any, Optional, Type, TypeVar

from nemo_gift.utils.checks import check_bool, check_choice, check_range

__all__ = [
    "ImplicitRewardMode",
    "StdGuard",
    "ImplicitBaseline",
    "LossAggregation",
    "KlEstimator",
    "GiftLossConfig",
    "GrpoLossConfig",
    "coerce_enum",
    "validate_group_size",
]

E = TypeVar("E", bound=Enum)


class ImplicitRewardMode(str, Enum):
    """How per-token log-ratios become the implicit reward s_i (Eq. 13 and 14)."""

    KL_SUM = "kl_sum"
    """s_i = sum_t m_{i,t} (log pi_theta - log pi_base): the paper's default (length exponent p = 0)."""
    KL_AVERAGE = "kl_average"
    """s_i = kl_sum / |y_i| (length exponent p = 1)."""


class StdGuard(str, Enum):
    """What to do when a group's implicit std is (nearly) zero.

    With detached statistics, dL/ds_i carries a factor 1/(std + eps); at step 0
    (policy == reference) or on the first mini-batch with the ``old_policy``
    baseline, std is 0 or numerical noise and that factor reaches 1/eps = 1e6.
    """

    STD_FLOOR = "std_floor"
    """z = (s - mean) / (max(std, v) + eps), v = ``std_guard_value``. Continuous in s;
    identical to the raw formula whenever std >= v; bounds the gradient factor by 1/(v + eps)."""
    CENTER_ONLY = "center_only"
    """Below the threshold v (std < v), skip the scaling: z = s - mean. Otherwise the raw
    formula. The gradient factor is 1 below v, but z jumps by 1/(v + eps) as std crosses v."""
    NONE = "none"
    """No guard: exactly z = (s - mean) / (std + eps), as in the author's verl PR."""


class ImplicitBaseline(str, Enum):
    """Which policy pi_base the implicit reward's log-ratio is taken against."""

    REFERENCE = "reference"
    """The frozen initial model pi_ref, as in the paper (Eq. 6)."""
    OLD_POLICY = "old_policy"
    """The rollout-time policy pi_old, recomputed by the trainer (the author's public code)."""


class LossAggregation(str, Enum):
    """How GRPO's per-token losses become one scalar."""

    TOKEN_MEAN = "token_mean"
    """sum over all valid tokens / (global) number of valid tokens."""
    SEQ_MEAN = "seq_mean"
    """mean over tokens within each response, then sum / (global) number of responses (GRPO Eq. 3)."""


class KlEstimator(str, Enum):
    """Per-token estimator of KL(pi_theta || pi_ref), with log r = log pi_ref - log pi_theta."""

    K1 = "k1"
    """-log r. Unbiased, high variance, can be negative."""
    K2 = "k2"
    """(log r)^2 / 2."""
    K3 = "k3"
    """exp(log r) - log r - 1 ("low_var_kl"): unbiased and >= 0. The GRPO paper's choice."""


def coerce_enum(enum_cls: Type[E], value: Any, name: str) -> E:
    """Return ``value`` as a member of ``enum_cls``; raise ValueError naming ``name`` otherwise."""
    check_choice(name, value, enum_cls)
    return enum_cls(value)


def validate_group_size(group_size: Any, name: str = "group_size") -> int:
    """Check that G is an int >= 2 (a group of one has no std; the spec rejects it)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise ValueError(f"{name}={group_size!r} must be an int >= 2")
    if group_size < 2:
        raise ValueError(f"{name}={group_size!r} must be >= 2: a group of one response has no std")
    return group_size


def _real(name: str, value: Any, **bounds) -> float:
    """``value`` checked by :func:`~nemo_gift.utils.checks.check_range`, as a float."""
    check_range(name, value, **bounds)
    return float(value)


@dataclasses.dataclass(frozen=True)
class GiftLossConfig:
    """Options of :func:`nemo_gift.algorithms.losses.gift_loss` (Eq. 12)."""

    beta: float = 1.0
    """beta in L = mean_i (A_i - beta * z_i)^2 (Eq. 12). The KL strength of the shared
    objective (Eq. 1); it cancels inside z (Eq. 7-11) and returns only as this multiplier.
    1.0 in every public run of the author. Must be > 0."""

    implicit_reward: ImplicitRewardMode = ImplicitRewardMode.KL_SUM
    """kl_sum (Eq. 13, the paper's default) or kl_average (Eq. 14, divided by |y_i|)."""

    length_exponent: Optional[float] = None
    """Optional p >= 0 for s_i = kl_sum_i / |y_i|^p (the author's length penalty). None means
    p = 0 for kl_sum and p = 1 for kl_average. With kl_average only None or 1.0 is allowed."""

    eps: float = 1e-6
    """eps in A = (r - mean) / (std + eps) (Eq. 2) and z = (s - mean) / (std + eps). Not stated
    in the paper; 1e-6 in the author's code. Must be >= 0, and > 0 when std_guard is none."""

    unbiased_std: bool = True
    """Unbiased (N - 1) std for both rewards, as in the author's code (the paper does not say)."""

    detach_implicit_stats: bool = True
    """Detach the group mean and std of s, so gradients flow through s_i only (the author's code);
    the spec's closed form dL/ds_i = -(2 beta / N)(A_i - beta z_i)/(std + eps) assumes this.
    False lets gradients flow through mean and std too."""

    std_guard: StdGuard = StdGuard.STD_FLOOR
    """Guard for a degenerate implicit std (the paper has none). Default std_floor: continuous,
    exactly the raw formula once std >= std_guard_value, and never worse than the others in the
    first CPU experiment (docs/gift-math.md sections 5 and 11). `none` is the raw formula."""

    std_guard_value: float = 1e-2
    """The floor (std_floor) or the threshold (center_only) on the implicit std, in nats of s.
    A group counts as degenerate in the metrics when std < this value (also under `none`).
    Must be > 0."""

    drop_zero_std_groups: bool = False
    """Groups whose explicit rewards are all equal get A = 0 (their pairs still pull z to 0,
    loss beta^2 z^2) and are counted in the metrics. True removes their pairs from the loss
    and from the local pair count (a global `num_pairs` must then count kept pairs only)."""

    implicit_baseline: ImplicitBaseline = ImplicitBaseline.OLD_POLICY
    """Which log-probs the trainer passes as the baseline: `old_policy` (pi_old at rollout time,
    the author's verl PR; the default, from the CPU experiment: docs/gift-math.md sections 11 and
    12.2) or `reference` (pi_ref, the paper's Eq. 6). The loss itself only sees the tensor; the trainer
    reads this field."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "beta", _real("beta", self.beta, low=0, low_open=True))
        set_(self, "implicit_reward", coerce_enum(ImplicitRewardMode, self.implicit_reward, "implicit_reward"))
        set_(self, "std_guard", coerce_enum(StdGuard, self.std_guard, "std_guard"))
        set_(self, "implicit_baseline", coerce_enum(ImplicitBaseline, self.implicit_baseline, "implicit_baseline"))
        set_(self, "eps", _real("eps", self.eps, low=0))
        set_(self, "std_guard_value", _real("std_guard_value", self.std_guard_value, low=0, low_open=True))
        for name in ("unbiased_std", "detach_implicit_stats", "drop_zero_std_groups"):
            check_bool(name, getattr(self, name))
        if self.length_exponent is not None:
            p = _real("length_exponent", self.length_exponent, low=0)
            set_(self, "length_exponent", p)
            if self.implicit_reward is ImplicitRewardMode.KL_AVERAGE and p != 1.0:
                raise ValueError(
                    f"length_exponent={p!r} contradicts implicit_reward='kl_average' (p = 1); "
                    "use implicit_reward='kl_sum' with a length_exponent"
                )
        if self.std_guard is StdGuard.NONE and self.eps == 0.0:
            raise ValueError("eps=0.0 with std_guard='none' divides by a zero std; use eps > 0 or a guard")

    @property
    def effective_length_exponent(self) -> float:
        """The p actually applied: length_exponent, else 0 (kl_sum) or 1 (kl_average)."""
        if self.length_exponent is not None:
            return self.length_exponent
        return 1.0 if self.implicit_reward is ImplicitRewardMode.KL_AVERAGE else 0.0


@dataclasses.dataclass(frozen=True)
class GrpoLossConfig:
    """Options of :func:`nemo_gift.algorithms.losses.grpo_loss` (the GRPO baseline, spec section 6)."""

    clip_eps: float = 0.2
    """epsilon of the clipped surrogate min(rho A, clip(rho, 1 - eps, 1 + eps) A) (PPO/GRPO Eq. 3).
    Must be in (0, 1)."""

    clip_eps_high: Optional[float] = None
    """Upper clip 1 + clip_eps_high (DAPO's clip-higher); None means clip_eps. Must be > 0."""

    beta_kl: float = 0.001
    """Weight of the per-token KL(pi_theta || pi_ref) penalty (GRPO Eq. 3); 0.001 in the GIFT
    paper's GRPO runs. 0 disables it (then reference log-probs may be None). Must be >= 0."""

    kl_estimator: KlEstimator = KlEstimator.K3
    """Per-token KL estimator; k3 ("low_var_kl", GRPO Eq. 4) by default."""

    aggregation: LossAggregation = LossAggregation.TOKEN_MEAN
    """token_mean (every valid token weighs the same) or seq_mean (GRPO Eq. 3: token mean per
    response, then mean over responses)."""

    eps: float = 1e-6
    """eps of the GRPO advantage A = (r - mean) / (std + eps) (Eq. 2). Must be >= 0."""

    unbiased_std: bool = True
    """Unbiased (N - 1) std in the advantage."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        clip = _real("clip_eps", self.clip_eps, low=0, low_open=True)
        if clip >= 1.0:
            raise ValueError(f"clip_eps={clip!r} must be < 1 (the lower bound 1 - clip_eps must be > 0)")
        set_(self, "clip_eps", clip)
        if self.clip_eps_high is not None:
            set_(self, "clip_eps_high", _real("clip_eps_high", self.clip_eps_high, low=0, low_open=True))
        set_(self, "beta_kl", _real("beta_kl", self.beta_kl, low=0))
        set_(self, "eps", _real("eps", self.eps, low=0))
        set_(self, "kl_estimator", coerce_enum(KlEstimator, self.kl_estimator, "kl_estimator"))
        set_(self, "aggregation", coerce_enum(LossAggregation, self.aggregation, "aggregation"))
        check_bool("unbiased_std", self.unbiased_std)

    @property
    def clip_high(self) -> float:
        """The upper ratio bound 1 + (clip_eps_high or clip_eps)."""
        return 1.0 + (self.clip_eps if self.clip_eps_high is None else self.clip_eps_high)

    @property
    def clip_low(self) -> float:
        """The lower ratio bound 1 - clip_eps."""
        return 1.0 - self.clip_eps
