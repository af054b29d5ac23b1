"""Implicit rewards and group normalization (GIFT spec, sections 2 and 4).

Symbols (defined once for the package):
    B   prompts in the batch, G responses per prompt (group size), N = B * G pairs
    T   response tokens (padded), m_{i,t} the response mask, |y_i| = sum_t m_{i,t}
    K   number of groups a tensor's ``group_index`` refers to (K = B by default)
    s_i implicit reward, z_i its group z-score; r_i explicit reward, A_i its group z-score

Grouping: by default the G responses of one prompt are contiguous, so response
i belongs to group i // G. A caller that holds only part of a group (a
data-parallel rank) passes ``group_index`` [N] and ``num_groups`` K instead, and
either injects globally reduced :class:`GroupMoments` or gives
:func:`group_moments` an ``all_reduce`` hook.

Numerics: group moments are kept as (count, mean, M2), M2 being the sum of
squared deviations about the group mean, computed in two passes. The one-pass
form sum(x^2) - sum(x)^2 / n cancels catastrophically when s carries a large
per-prompt offset (the log Z(x) of Eq. 7-11), which is exactly the case the
invariance tests exercise. Computation runs in float32 at least (float64 stays
float64), so bf16 log-probs accumulate in fp32.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch

from nemo_gift.algorithms.config import ImplicitRewardMode, StdGuard, coerce_enum, validate_group_size

__all__ = [
    "accumulation_dtype",
    "check_finite",
    "check_finite_logprobs",
    "response_lengths",
    "implicit_rewards",
    "contiguous_group_index",
    "resolve_groups",
    "GroupMoments",
    "group_moments",
    "GroupZScore",
    "zscore_from_moments",
    "group_zscore",
    "ExplicitAdvantages",
    "explicit_advantages",
]

AllReduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor over data-parallel ranks and returns the result (it may work in place).
Differentiable (e.g. ``torch.distributed.nn.functional.all_reduce``) if gradients must flow
through the statistics (``detach_implicit_stats=False``)."""


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bf16/int inputs, float64 for float64: the dtype losses accumulate in."""
    return torch.promote_types(dtype, torch.float32)


def check_finite(values: torch.Tensor, name: str, where: Optional[torch.Tensor] = None) -> None:
    """Raise ValueError naming the first index of ``values`` that is NaN or inf (one host sync).

    ``where`` (a bool mask of ``values``' shape, e.g. the response mask) limits the check to the
    positions that count: padding may hold anything."""
    bad = ~torch.isfinite(values.detach())  # shape of values
    if where is not None:
        bad = bad & (where if where.dtype == torch.bool else where != 0)  # shape of values
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        at = idx[0] if len(idx) == 1 else ", ".join(map(str, idx))
        raise ValueError(f"{name}[{at}] = {values[idx].item()} is not finite")


def check_finite_logprobs(valid: torch.Tensor, **logprobs: Optional[torch.Tensor]) -> None:
    """Raise ValueError naming the tensor and the [i, t] of the first NaN/inf log-prob at a valid
    token (``valid`` [N, T] bool), among the named tensors (None skipped). One host sync."""
    given = {k: v for k, v in logprobs.items() if v is not None}
    bad = torch.zeros_like(valid)  # [N, T] bool
    for v in given.values():
        bad = bad | ~torch.isfinite(v.detach())  # [N, T]
    if bool((bad & valid).any()):
        for name, v in given.items():
            check_finite(v, name, where=valid)


def response_lengths(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """|y_i| = sum_t m_{i,t}. mask [N, T] (bool or 0/1) -> [N] of ``dtype``."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be [N, T], got shape {tuple(mask.shape)}")
    m = mask if mask.dtype == torch.bool else mask != 0  # [N, T] bool
    return m.sum(dim=-1).to(dtype)  # [N]


def implicit_rewards(
    policy_logprobs: torch.Tensor,
    baseline_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: Union[ImplicitRewardMode, str] = ImplicitRewardMode.KL_SUM,
    length_exponent: Optional[float] = None,
) -> torch.Tensor:
    """Implicit reward s_i of each response (spec Eq. 6, 13, 14), beta and log Z dropped.

        s_i = (sum_t m_{i,t} (log pi_theta(y_{i,t}) - log pi_base(y_{i,t}))) / |y_i|^p

    Args:
        policy_logprobs: [N, T] per-token log pi_theta of the sampled tokens (carries grad).
        baseline_logprobs: [N, T] per-token log pi_base (reference or rollout policy).
        mask: [N, T] response mask m (bool or 0/1). Padded positions are ignored even if
            they hold NaN or inf.
        mode: ``kl_sum`` (p = 0, the paper's default) or ``kl_average`` (p = 1).
        length_exponent: optional p >= 0 overriding the mode's p; with ``kl_average`` only
            None or 1.0 is allowed.

    Returns:
        s: [N] in the accumulation dtype (float32 or float64).

    Raises:
        ValueError: on mismatched shapes, a fully masked response (naming its index), or a
            non-finite log-ratio at a valid token (naming the response).
    """
    mode = coerce_enum(ImplicitRewardMode, mode, "mode")
    if policy_logprobs.shape != baseline_logprobs.shape or policy_logprobs.shape != mask.shape:
        raise ValueError(
            "policy_logprobs, baseline_logprobs and mask must share one [N, T] shape, got "
            f"{tuple(policy_logprobs.shape)}, {tuple(baseline_logprobs.shape)}, {tuple(mask.shape)}"
        )
    if length_exponent is None:
        p = 1.0 if mode is ImplicitRewardMode.KL_AVERAGE else 0.0
    else:
        p = float(length_exponent)
        if not (p >= 0.0 and p != float("inf")):
            raise ValueError(f"length_exponent={length_exponent!r} must be a finite number >= 0")
        if mode is ImplicitRewardMode.KL_AVERAGE and p != 1.0:
            raise ValueError(f"length_exponent={p!r} contradicts mode='kl_average' (p = 1)")
    dtype = accumulation_dtype(torch.promote_types(policy_logprobs.dtype, baseline_logprobs.dtype))
    valid = mask if mask.dtype == torch.bool else mask != 0  # [N, T]
    check_finite_logprobs(valid, policy_logprobs=policy_logprobs, baseline_logprobs=baseline_logprobs)
    log_ratio = policy_logprobs.to(dtype) - baseline_logprobs.to(dtype)  # [N, T]
    log_ratio = torch.where(valid, log_ratio, torch.zeros((), dtype=dtype, device=log_ratio.device))  # [N, T]
    s = log_ratio.sum(dim=-1)  # [N]
    lengths = valid.sum(dim=-1)  # [N] int
    bad = (lengths == 0) | ~torch.isfinite(s)  # [N]
    if bool(bad.any()):  # one host sync for both checks
        i = int(torch.nonzero(bad)[0, 0])
        if int(lengths[i]) == 0:
            raise ValueError(f"response {i} is fully masked (mask[{i}] has no valid token)")
        raise ValueError(f"implicit reward s[{i}] = {s[i].item()} is not finite: a log-prob at a valid token of response {i} is NaN or inf")
    if p != 0.0:
        s = s / lengths.to(dtype).pow(p)  # [N]
    return s


def contiguous_group_index(num_responses: int, group_size: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """Group of each response when the G responses of a prompt are contiguous: i // G, [N] long."""
    validate_group_size(group_size)
    if num_responses % group_size != 0:
        raise ValueError(
            f"N={num_responses} responses do not split into whole groups of group_size={group_size}"
        )
    return torch.arange(num_responses, device=device) // group_size  # [N]


def resolve_groups(
    num_responses: int,
    group_size: Optional[int],
    group_index: Optional[torch.Tensor],
    num_groups: Optional[int],
    device: Optional[torch.device] = None,
) -> Tuple[torch.Tensor, int]:
    """Return (group_index [N] long, K) from exactly one of ``group_size`` or ``group_index``.

    ``group_index`` needs ``num_groups`` K; its values must lie in [0, K). Group sizes of at
    least two are checked against the (possibly globally reduced) counts where moments are used.
    """
    if (group_size is None) == (group_index is None):
        raise ValueError("pass exactly one of group_size (contiguous groups) or group_index (with num_groups)")
    if group_index is None:
        gi = contiguous_group_index(num_responses, group_size, device)  # [N]
        return gi, num_responses // group_size
    if num_groups is None or isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups={num_groups!r} must be an int >= 1 when group_index is given")
    if group_index.dtype != torch.long or group_index.shape != (num_responses,):
        raise ValueError(
            f"group_index must be a [N={num_responses}] torch.long tensor, got {group_index.dtype} {tuple(group_index.shape)}"
        )
    if num_responses and bool(((group_index < 0) | (group_index >= num_groups)).any()):
        i = int(torch.nonzero((group_index < 0) | (group_index >= num_groups))[0, 0])
        raise ValueError(f"group_index[{i}] = {int(group_index[i])} is outside [0, num_groups={num_groups})")
    return group_index, num_groups


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not infinite) gradient at 0, so a zero std cannot produce NaN grads."""
    pos = x > 0  # shape of x
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


class GroupMoments(NamedTuple):
    """Per-group moments, each [K]: count n_k, mean mu_k, and M2_k = sum_{i in k} (x_i - mu_k)^2."""

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def from_power_sums(cls, count: torch.Tensor, total: torch.Tensor, sumsq: torch.Tensor) -> "GroupMoments":
        """Build from (n, sum x, sum x^2), e.g. after one all-reduce of the three. Less accurate
        than :func:`group_moments` when the mean is large against the spread."""
        mean = total / count.clamp_min(1)  # [K]
        return cls(count, mean, (sumsq - total * mean).clamp_min(0))  # count, mean, m2: [K] each

    def std(self, unbiased: bool = True) -> torch.Tensor:
        """[K] std, sqrt(M2 / (n - 1)) if unbiased else sqrt(M2 / n); 0 where n <= 1."""
        dof = (self.count - 1) if unbiased else self.count  # [K]
        return _safe_sqrt(self.m2 / dof.clamp_min(1))  # [K]

    def detach(self) -> "GroupMoments":
        return GroupMoments(self.count.detach(), self.mean.detach(), self.m2.detach())


def group_moments(
    values: torch.Tensor,
    group_index: torch.Tensor,
    num_groups: int,
    all_reduce: Optional[AllReduce] = None,
) -> GroupMoments:
    """Two-pass per-group moments of ``values`` [N] (differentiable through index_add).

    With ``all_reduce`` (a cross-rank sum), pass 1 reduces the stacked [2, K] (count, sum),
    pass 2 reduces M2 [K] about the global mean: two collectives, and the result is the
    moments of the union of all ranks' values. Groups with no member get count 0, mean 0.
    """
    if values.dim() != 1 or group_index.shape != values.shape:
        raise ValueError(f"values and group_index must both be [N], got {tuple(values.shape)} and {tuple(group_index.shape)}")
    zeros = values.new_zeros(num_groups)  # [K]
    count = zeros.index_add(0, group_index, torch.ones_like(values).detach())  # [K]
    total = zeros.index_add(0, group_index, values)  # [K]
    if all_reduce is not None:
        count, total = all_reduce(torch.stack([count, total]))  # [2, K]
    mean = total / count.clamp_min(1)  # [K]
    dev = values - mean[group_index]  # [N]
    m2 = zeros.index_add(0, group_index, dev * dev)  # [K]
    if all_reduce is not None:
        m2 = all_reduce(m2)  # [K]
    return GroupMoments(count, mean, m2)


class GroupZScore(NamedTuple):
    """z [N]; the group mean [K] and std [K] used (detached if requested); degenerate [K] bool."""

    z: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    degenerate: torch.Tensor


def _check_counts(moments: GroupMoments, group_index: torch.Tensor) -> None:
    small = moments.count[group_index] < 2  # [N]
    if bool(small.any()):
        i = int(torch.nonzero(small)[0, 0])
        k = int(group_index[i])
        raise ValueError(
            f"group {k} (of response {i}) has {int(moments.count[k])} response(s); groups need >= 2 (G >= 2)"
        )


def zscore_from_moments(
    values: torch.Tensor,
    group_index: torch.Tensor,
    moments: GroupMoments,
    *,
    eps: float = 1e-6,
    unbiased: bool = True,
    guard: Union[StdGuard, str] = StdGuard.STD_FLOOR,
    guard_value: float = 1e-2,
    detach_stats: bool = True,
) -> GroupZScore:
    """Group z-score z_i = (x_i - mu_k) / (sigma_k + eps), k = group_index[i], with a std guard.

    ``moments`` may be local (from :func:`group_moments`) or globally reduced; every group
    referenced by ``group_index`` must have count >= 2. Guards (v = ``guard_value``):

    - ``none``:        z = (x - mu) / (sigma + eps), the raw formula, whatever sigma is.
    - ``std_floor``:   z = (x - mu) / (max(sigma, v) + eps). Identical to ``none`` when
      sigma >= v; continuous; gradient factor at most 1/(v + eps).
    - ``center_only``: z = x - mu where sigma < v (normalization skipped), else the raw formula.

    The default is ``std_floor`` (docs/gift-math.md section 5 gives the CPU experiment's
    evidence). A group is flagged ``degenerate`` when sigma < v, for every guard.

    With ``detach_stats`` (default) mu and sigma are constants for autograd, and
    dL/dx_i = dL/dz_i / (sigma_k + eps) (raw formula). Otherwise gradients flow through them;
    a zero sigma then contributes a zero (not NaN) gradient through the std.
    """
    guard = coerce_enum(StdGuard, guard, "guard")
    if not guard_value > 0:
        raise ValueError(f"guard_value={guard_value!r} must be > 0")
    _check_counts(moments, group_index)
    if detach_stats:
        moments = moments.detach()
    mean = moments.mean  # [K]
    std = moments.std(unbiased)  # [K]
    degenerate = std.detach() < guard_value  # [K]
    if guard is StdGuard.NONE:
        denom = std + eps  # [K]
    elif guard is StdGuard.STD_FLOOR:
        denom = std.clamp_min(guard_value) + eps  # [K]
    else:  # CENTER_ONLY
        denom = torch.where(degenerate, torch.ones_like(std), std + eps)  # [K]
    z = (values - mean[group_index]) / denom[group_index]  # [N]
    return GroupZScore(z, mean, std, degenerate)


def group_zscore(
    values: torch.Tensor,
    group_size: Optional[int] = None,
    *,
    group_index: Optional[torch.Tensor] = None,
    num_groups: Optional[int] = None,
    eps: float = 1e-6,
    unbiased: bool = True,
    guard: Union[StdGuard, str] = StdGuard.STD_FLOOR,
    guard_value: float = 1e-2,
    detach_stats: bool = True,
) -> GroupZScore:
    """Local group z-score of ``values`` [N]: :func:`group_moments` then :func:`zscore_from_moments`."""
    gi, k = resolve_groups(values.shape[0], group_size, group_index, num_groups, values.device)  # [N], K
    moments = group_moments(values, gi, k)  # count, mean, m2: [K] each
    return zscore_from_moments(
        values, gi, moments, eps=eps, unbiased=unbiased, guard=guard, guard_value=guard_value, detach_stats=detach_stats
    )


class ExplicitAdvantages(NamedTuple):
    """advantages A [N] (detached); zero_std [K] bool (groups whose rewards are all equal)."""

    advantages: torch.Tensor
    zero_std: torch.Tensor


def explicit_advantages(
    rewards: torch.Tensor,
    group_size: Optional[int] = None,
    *,
    group_index: Optional[torch.Tensor] = None,
    num_groups: Optional[int] = None,
    eps: float = 1e-6,
    unbiased: bool = True,
) -> ExplicitAdvantages:
    """GRPO advantage A_i = (r_i - mean_k r) / (std_k r + eps) (spec Eq. 2), detached.

    A group is zero-std when its rewards are all exactly equal (group max == min: an exact
    test, unlike a float std, which is ~1e-17 rather than 0 for equal rewards such as 0.1).
    Its advantages are exactly 0. Local: with partial groups, compute A where whole groups
    live and inject it into the loss.

    The statistics accumulate in float64 (rewards of 1e20 square to 1e40, past float32's range);
    A is returned in the rewards' accumulation dtype (float32 for float32 rewards).

    Raises ValueError naming the index of a NaN/inf reward, the group whose reward std is not
    finite (rewards near float64's range), or on a group of fewer than 2.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [N], got shape {tuple(rewards.shape)}")
    out_dtype = accumulation_dtype(rewards.dtype)
    r = rewards.detach().to(torch.float64)  # [N]
    check_finite(r, "rewards")
    gi, k = resolve_groups(r.shape[0], group_size, group_index, num_groups, r.device)  # [N], K
    moments = group_moments(r, gi, k)  # count, mean, m2: [K] each
    _check_counts(moments, gi)
    std = moments.std(unbiased)  # [K]
    if not bool(torch.isfinite(std).all()):
        g = int(torch.nonzero(~torch.isfinite(std))[0, 0])
        raise ValueError(f"group {g}: the std of its rewards is {std[g].item()} (rewards too large to normalize)")
    gmax = r.new_zeros(k).scatter_reduce(0, gi, r, "amax", include_self=False)  # [K]
    gmin = r.new_zeros(k).scatter_reduce(0, gi, r, "amin", include_self=False)  # [K]
    zero_std = (gmax == gmin) & (moments.count > 0)  # [K]
    adv = (r - moments.mean[gi]) / (std[gi] + eps)  # [N]
    adv = torch.where(zero_std[gi], torch.zeros_like(adv), adv)  # [N]
    return ExplicitAdvantages(adv.to(out_dtype), zero_std)  # [N], [K]
