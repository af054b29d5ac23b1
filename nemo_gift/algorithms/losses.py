"""GIFT's loss (spec Eq. 12) and the baselines kept beside it: GRPO, DPO and UNA.

Each loss is a plain function returning ``(loss, metrics)``: ``loss`` is a 0-dim
tensor carrying the graph, ``metrics`` a dict of detached 0-dim tensors (no host
sync). Symbols as in :mod:`nemo_gift.algorithms.normalization`: N pairs
(responses) in this call, T tokens, K groups, G responses per prompt; ``# []`` marks a
0-dim tensor.

Global normalizers: ``gift_loss(num_pairs=...)`` and ``grpo_loss(num_tokens=...,
num_sequences=...)`` divide the local sum by a count over the whole global batch,
so that the sum of the micro-batch losses (and gradients) over every micro-batch
and rank equals the full-batch loss, whenever each call holds whole groups or is
given global group statistics. Without them the local count is used.

Validation (fully masked responses, non-finite rewards, NaN/inf log-probs at valid tokens
named by tensor and [i, t], groups of one, bad indices) costs a few host syncs per call; the
metrics cost none.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from nemo_gift.algorithms.config import GiftLossConfig, GrpoLossConfig, KlEstimator, LossAggregation
from nemo_gift.algorithms.metrics import detached, group_fraction, group_pearson
from nemo_gift.algorithms.normalization import (
    AllReduce,
    GroupMoments,
    check_finite,
    check_finite_logprobs,
    explicit_advantages,
    group_moments,
    implicit_rewards,
    resolve_groups,
    response_lengths,
    zscore_from_moments,
)

__all__ = ["gift_loss", "grpo_loss", "dpo_loss", "una_loss"]

Metrics = Dict[str, torch.Tensor]
Count = Union[int, float, torch.Tensor]


def _normalizer(given: Optional[Count], local: torch.Tensor, name: str) -> torch.Tensor:
    """The divisor of a summed loss: the global count if given, else the local one (>= 1)."""
    if given is None:
        return local.clamp_min(1)
    if isinstance(given, torch.Tensor):
        return given.detach().to(device=local.device, dtype=local.dtype)
    if isinstance(given, bool) or not given > 0:
        raise ValueError(f"{name}={given!r} must be > 0")
    return torch.tensor(float(given), dtype=local.dtype, device=local.device)


def _present_groups(group_index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """[K] bool: groups with at least one local member."""
    return torch.zeros(num_groups, dtype=torch.bool, device=group_index.device).index_fill_(0, group_index, True)  # [K]


def _advantages(
    rewards: Optional[torch.Tensor],
    advantages: Optional[torch.Tensor],
    group_index: torch.Tensor,
    num_groups: int,
    eps: float,
    unbiased: bool,
    dtype: torch.dtype,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(A [N] detached, zero_std [K]) from rewards, or from injected advantages."""
    if (rewards is None) == (advantages is None):
        raise ValueError("pass exactly one of rewards (A is computed per group) or advantages (precomputed A)")
    if advantages is None:
        adv, zero_std = explicit_advantages(
            rewards, group_index=group_index, num_groups=num_groups, eps=eps, unbiased=unbiased
        )
        return adv.to(dtype), zero_std  # [N], [K]
    if advantages.shape != group_index.shape:
        raise ValueError(f"advantages must be [N={group_index.shape[0]}], got {tuple(advantages.shape)}")
    adv = advantages.detach().to(dtype)  # [N]
    check_finite(adv, "advantages")
    # Injected A: a group is zero-std when all its (local) A are exactly 0, the convention of
    # explicit_advantages. With partial groups this is a local view.
    nonzero = torch.zeros(num_groups, dtype=torch.bool, device=adv.device).index_fill_(0, group_index[adv != 0], True)  # [K]
    return adv, _present_groups(group_index, num_groups) & ~nonzero  # [N], [K]


def gift_loss(
    policy_logprobs: torch.Tensor,
    baseline_logprobs: torch.Tensor,
    mask: torch.Tensor,
    rewards: Optional[torch.Tensor],
    group_size: Optional[int],
    config: Optional[GiftLossConfig] = None,
    *,
    advantages: Optional[torch.Tensor] = None,
    group_index: Optional[torch.Tensor] = None,
    num_groups: Optional[int] = None,
    implicit_moments: Optional[GroupMoments] = None,
    moments_all_reduce: Optional[AllReduce] = None,
    num_pairs: Optional[Count] = None,
) -> Tuple[torch.Tensor, Metrics]:
    """GIFT loss (spec Eq. 12): squared error between normalized explicit and implicit rewards.

        s_i = sum_t m_{i,t} (log pi_theta(y_{i,t}) - log pi_base(y_{i,t})) / |y_i|^p    (Eq. 13/14)
        z_i = (s_i - mean_{j in g(i)} s_j) / (std_{j in g(i)} s_j + eps)      (guarded, Eq. 6-11)
        A_i = (r_i - mean_{j in g(i)} r_j) / (std_{j in g(i)} r_j + eps)      (Eq. 2; 0 if std = 0)
        L   = (1 / N_pairs) * sum_i (A_i - beta * z_i)^2                      (Eq. 12)

    Symbols: pi_theta the policy being trained; pi_base the baseline (pi_ref or pi_old, see
    ``config.implicit_baseline``); m the response mask, |y_i| = sum_t m_{i,t}; p the length
    exponent (0 for kl_sum, 1 for kl_average); g(i) the group (prompt) of response i; r the
    explicit reward; beta = ``config.beta``; N_pairs = ``num_pairs`` if given, else the local
    number of pairs (kept pairs under ``drop_zero_std_groups``). A is a detached target; the
    only trainable path is z -> s -> log pi_theta. With detached stats (default),

        dL/ds_i = -(2 beta / N_pairs) (A_i - beta z_i) / (std + eps).

    Args:
        policy_logprobs: [N, T] log pi_theta of the sampled tokens (requires grad).
        baseline_logprobs: [N, T] log pi_base of the same tokens.
        mask: [N, T] response mask (bool or 0/1). A fully masked row raises ValueError.
        rewards: [N] explicit rewards r, or None when ``advantages`` is given.
        group_size: G >= 2 with each group's responses contiguous; None when ``group_index`` is given.
        config: :class:`GiftLossConfig` (defaults if None).
        advantages: [N] precomputed A (e.g. over whole groups elsewhere); used detached.
            Groups whose A are all exactly 0 count as zero-std.
        group_index: [N] long, the group of each response in [0, num_groups); for partial groups.
        num_groups: K, required with ``group_index``.
        implicit_moments: precomputed (e.g. globally all-reduced) :class:`GroupMoments` [K] of s.
            To keep gradients through them with ``detach_implicit_stats=False`` they must be
            built from this call's s differentiably; otherwise prefer ``moments_all_reduce``.
        moments_all_reduce: cross-rank sum used by :func:`group_moments` on s (ignored when
            ``implicit_moments`` is given).
        num_pairs: global N_pairs (int or 0-dim tensor) so micro-batch losses sum to the full one.

    Returns:
        (loss 0-dim, metrics) with metrics ``loss``, ``z_a_corr`` (mean within-group Pearson
        corr of z and A), ``zero_explicit_std_frac``, ``degenerate_implicit_std_frac``,
        ``implicit_reward_mean``/``_std`` (over the N local s), ``implicit_group_std_mean``,
        ``response_length_mean`` and ``num_pairs`` (the divisor used).
    """
    cfg = config if config is not None else GiftLossConfig()
    n = policy_logprobs.shape[0]
    gi, k = resolve_groups(n, group_size, group_index, num_groups, policy_logprobs.device)  # [N], K
    s = implicit_rewards(
        policy_logprobs, baseline_logprobs, mask, cfg.implicit_reward, cfg.length_exponent
    )  # [N]
    adv, zero_std = _advantages(rewards, advantages, gi, k, cfg.eps, cfg.unbiased_std, s.dtype)  # [N], [K]
    if implicit_moments is None:
        implicit_moments = group_moments(s, gi, k, all_reduce=moments_all_reduce)  # count, mean, m2: [K] each
    implicit_moments = GroupMoments(*(t.to(s.dtype) for t in implicit_moments))  # the guard's floor in s's dtype
    zs = zscore_from_moments(  # z [N]; mean, std, degenerate [K]
        s,
        gi,
        implicit_moments,
        eps=cfg.eps,
        unbiased=cfg.unbiased_std,
        guard=cfg.std_guard,
        guard_value=cfg.std_guard_value,
        detach_stats=cfg.detach_implicit_stats,
    )
    err = adv - cfg.beta * zs.z  # [N]
    sq = err * err  # [N]
    if cfg.drop_zero_std_groups:
        keep = ~zero_std[gi]  # [N]
        sq = torch.where(keep, sq, torch.zeros_like(sq))  # [N]
        local_pairs = keep.sum().to(s.dtype)  # []
    else:
        local_pairs = torch.tensor(float(n), dtype=s.dtype, device=s.device)  # []
    denom = _normalizer(num_pairs, local_pairs, "num_pairs")  # []
    loss = sq.sum() / denom  # []

    present = _present_groups(gi, k)  # [K]
    s_d = s.detach()  # [N]
    metrics = detached(
        loss=loss,
        z_a_corr=group_pearson(zs.z, adv, gi, k),
        zero_explicit_std_frac=group_fraction(zero_std, present),
        degenerate_implicit_std_frac=group_fraction(zs.degenerate, present),
        implicit_reward_mean=s_d.mean(),
        implicit_reward_std=s_d.std() if n > 1 else s_d.new_zeros(()),
        implicit_group_std_mean=(zs.std.detach() * present).sum() / present.sum().clamp_min(1),
        response_length_mean=response_lengths(mask).mean(),
        num_pairs=denom,
    )
    return loss, metrics


def _kl(policy: torch.Tensor, reference: torch.Tensor, estimator: KlEstimator) -> torch.Tensor:
    """Per-token KL(pi_theta || pi_ref) estimate; log r = log pi_ref - log pi_theta. [N, T]."""
    log_r = reference - policy  # [N, T]
    if estimator is KlEstimator.K1:
        return -log_r  # [N, T]
    if estimator is KlEstimator.K2:
        return 0.5 * log_r * log_r  # [N, T]
    return torch.expm1(log_r) - log_r  # [N, T]; k3 = exp(log r) - log r - 1


def grpo_loss(
    policy_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    reference_logprobs: Optional[torch.Tensor],
    mask: torch.Tensor,
    rewards: Optional[torch.Tensor],
    group_size: Optional[int],
    config: Optional[GrpoLossConfig] = None,
    *,
    advantages: Optional[torch.Tensor] = None,
    group_index: Optional[torch.Tensor] = None,
    num_groups: Optional[int] = None,
    num_tokens: Optional[Count] = None,
    num_sequences: Optional[Count] = None,
) -> Tuple[torch.Tensor, Metrics]:
    """GRPO loss: clipped surrogate with the group advantage, plus beta_kl * KL to pi_ref.

        rho_{i,t} = exp(log pi_theta(y_{i,t}) - log pi_old(y_{i,t}))
        l_{i,t}   = -min(rho A_i, clip(rho, 1 - eps_lo, 1 + eps_hi) A_i) + beta_kl * k_{i,t}
        k_{i,t}   = exp(log r) - log r - 1,  log r = log pi_ref(y_{i,t}) - log pi_theta(y_{i,t})   (k3)
        token_mean: L = sum_{i,t} m_{i,t} l_{i,t} / N_tok
        seq_mean:   L = sum_i (sum_t m_{i,t} l_{i,t} / |y_i|) / N_seq

    Symbols: pi_old the rollout policy; A_i the GRPO advantage (spec Eq. 2, 0 for zero-std
    groups); eps_lo = ``clip_eps``, eps_hi = ``clip_eps_high`` or ``clip_eps``; N_tok and
    N_seq the global valid-token and sequence counts if given, else local. A token is clipped
    (zero gradient) iff A > 0 and rho > 1 + eps_hi, or A < 0 and rho < 1 - eps_lo; a ratio
    exactly on the bound is not clipped, so its gradient is the unclipped one, -rho A.

    Args:
        policy_logprobs: [N, T] log pi_theta (requires grad).
        old_logprobs: [N, T] log pi_old at rollout time.
        reference_logprobs: [N, T] log pi_ref, or None when ``config.beta_kl == 0``.
        mask: [N, T] response mask. A fully masked row raises ValueError.
        rewards: [N] explicit rewards, or None when ``advantages`` is given.
        group_size: G >= 2, contiguous groups; None when ``group_index`` is given.
        config: :class:`GrpoLossConfig` (defaults if None).
        advantages: [N] precomputed A (detached).
        group_index, num_groups: partial-group indexing, as in :func:`gift_loss`.
        num_tokens: global N_tok for ``token_mean``. num_sequences: global N_seq for ``seq_mean``.

    Returns:
        (loss 0-dim, metrics) with ``loss``, ``policy_loss``, ``kl`` (both aggregated like the
        loss), ``clip_fraction`` (local fraction of valid tokens clipped), ``ratio_mean``,
        ``zero_explicit_std_frac`` and ``response_length_mean``.
    """
    cfg = config if config is not None else GrpoLossConfig()
    if policy_logprobs.shape != old_logprobs.shape or policy_logprobs.shape != mask.shape or policy_logprobs.dim() != 2:
        raise ValueError(
            f"policy_logprobs, old_logprobs and mask must share one [N, T] shape, got "
            f"{tuple(policy_logprobs.shape)}, {tuple(old_logprobs.shape)}, {tuple(mask.shape)}"
        )
    use_kl = cfg.beta_kl > 0
    if use_kl and (reference_logprobs is None or reference_logprobs.shape != mask.shape):
        raise ValueError(f"beta_kl={cfg.beta_kl} > 0 needs reference_logprobs of shape {tuple(mask.shape)}")
    n = policy_logprobs.shape[0]
    gi, k = resolve_groups(n, group_size, group_index, num_groups, policy_logprobs.device)  # [N], K
    dtype = torch.promote_types(policy_logprobs.dtype, torch.float32)
    valid = mask if mask.dtype == torch.bool else mask != 0  # [N, T]
    check_finite_logprobs(valid, policy_logprobs=policy_logprobs, old_logprobs=old_logprobs,
                          reference_logprobs=reference_logprobs if use_kl else None)
    lengths = valid.sum(dim=-1)  # [N]
    if bool((lengths == 0).any()):
        i = int(torch.nonzero(lengths == 0)[0, 0])
        raise ValueError(f"response {i} is fully masked (mask[{i}] has no valid token)")
    adv, zero_std = _advantages(rewards, advantages, gi, k, cfg.eps, cfg.unbiased_std, dtype)  # [N], [K]

    zero = torch.zeros((), dtype=dtype, device=policy_logprobs.device)  # []
    logp = torch.where(valid, policy_logprobs.to(dtype), zero)  # [N, T]
    log_ratio = logp - torch.where(valid, old_logprobs.to(dtype), zero)  # [N, T]
    ratio = torch.exp(log_ratio)  # [N, T]
    a = adv[:, None]  # [N, 1]
    low, high = cfg.clip_low, cfg.clip_high
    clipped = ((a > 0) & (ratio > high)) | ((a < 0) & (ratio < low))  # [N, T]
    bound = torch.where(ratio > high, torch.full_like(ratio, high), torch.full_like(ratio, low))  # [N, T]
    per_token_pg = -torch.where(clipped, bound * a, ratio * a)  # [N, T]
    if use_kl:
        ref = torch.where(valid, reference_logprobs.to(dtype), zero)  # [N, T]
        per_token_kl = _kl(logp, ref, cfg.kl_estimator)  # [N, T]
    else:
        per_token_kl = torch.zeros_like(per_token_pg)  # [N, T]

    lengths_f = lengths.to(dtype)  # [N]

    def aggregate(per_token: torch.Tensor) -> torch.Tensor:
        per_token = torch.where(valid, per_token, zero)  # [N, T]
        if cfg.aggregation is LossAggregation.TOKEN_MEAN:
            return per_token.sum() / _normalizer(num_tokens, lengths_f.sum(), "num_tokens")  # []
        per_seq = per_token.sum(dim=-1) / lengths_f  # [N]
        return per_seq.sum() / _normalizer(num_sequences, torch.tensor(float(n), dtype=dtype, device=per_seq.device), "num_sequences")  # []

    policy_loss = aggregate(per_token_pg)  # []
    kl = aggregate(per_token_kl)  # []
    loss = policy_loss + cfg.beta_kl * kl if use_kl else policy_loss  # []
    n_valid = lengths_f.sum()  # []
    metrics = detached(
        loss=loss,
        policy_loss=policy_loss,
        kl=kl,
        clip_fraction=(clipped & valid).sum() / n_valid,
        ratio_mean=torch.where(valid, ratio.detach(), zero).sum() / n_valid,
        zero_explicit_std_frac=group_fraction(zero_std, _present_groups(gi, k)),
        response_length_mean=lengths_f.mean(),
    )
    return loss, metrics


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> Tuple[torch.Tensor, Metrics]:
    """DPO loss (Rafailov et al. 2023), the pairwise reference for GIFT's implicit reward.

        h_i = (log pi_theta(y_w) - log pi_ref(y_w)) - (log pi_theta(y_l) - log pi_ref(y_l))
        L   = mean_i -log sigmoid(beta * h_i)

    Args: sequence log-probs (summed over response tokens, e.g. :func:`implicit_rewards` in
    ``kl_sum`` mode gives the log-ratios), each [P] for P preference pairs, y_w chosen and
    y_l rejected; beta > 0 the KL strength of the shared objective (spec Eq. 1).

    Returns (loss 0-dim, metrics): ``loss``, ``reward_accuracy`` (fraction with h > 0),
    ``reward_margin`` (mean beta h), ``chosen_reward`` and ``rejected_reward`` (mean beta log-ratio).
    """
    if not beta > 0:
        raise ValueError(f"beta={beta!r} must be > 0")
    shapes = {t.shape for t in (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)}
    if len(shapes) != 1 or policy_chosen_logps.dim() != 1:
        raise ValueError(f"the four DPO inputs must share one [P] shape, got {sorted(tuple(s) for s in shapes)}")
    for name, value in (("policy_chosen_logps", policy_chosen_logps), ("policy_rejected_logps", policy_rejected_logps),
                        ("reference_chosen_logps", reference_chosen_logps),
                        ("reference_rejected_logps", reference_rejected_logps)):
        check_finite(value, name)
    chosen = beta * (policy_chosen_logps - reference_chosen_logps)  # [P]
    rejected = beta * (policy_rejected_logps - reference_rejected_logps)  # [P]
    margin = chosen - rejected  # [P]
    loss = -F.logsigmoid(margin).mean()  # []
    metrics = detached(
        loss=loss,
        reward_accuracy=(margin > 0).to(margin.dtype).mean(),
        reward_margin=margin.mean(),
        chosen_reward=chosen.mean(),
        rejected_reward=rejected.mean(),
    )
    return loss, metrics


def una_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    rewards: torch.Tensor,
    beta: float = 0.1,
) -> Tuple[torch.Tensor, Metrics]:
    """UNA loss for score feedback (Wang et al. 2024): pointwise MSE of implicit vs explicit reward.

        L = mean_i (beta * (log pi_theta(y_i) - log pi_ref(y_i)) - r_i)^2

    GIFT's Eq. 12 has the same shape with both rewards group-normalized, which removes
    log Z(x) and beta from the implicit side (Eq. 7-11). Here neither is removed.

    Args: sequence log-probs ``policy_logps`` and ``reference_logps`` [N], explicit
    ``rewards`` r [N] (NaN/inf raises naming the index), beta > 0.

    Returns (loss 0-dim, metrics): ``loss``, ``implicit_reward_mean`` (mean beta log-ratio),
    ``reward_mean``.
    """
    if not beta > 0:
        raise ValueError(f"beta={beta!r} must be > 0")
    if not (policy_logps.shape == reference_logps.shape == rewards.shape) or rewards.dim() != 1:
        raise ValueError(
            f"policy_logps, reference_logps and rewards must share one [N] shape, got "
            f"{tuple(policy_logps.shape)}, {tuple(reference_logps.shape)}, {tuple(rewards.shape)}"
        )
    check_finite(rewards, "rewards")
    check_finite(policy_logps, "policy_logps")
    check_finite(reference_logps, "reference_logps")
    implicit = beta * (policy_logps - reference_logps)  # [N]
    err = implicit - rewards.detach().to(implicit.dtype)  # [N]
    loss = (err * err).mean()  # []
    return loss, detached(loss=loss, implicit_reward_mean=implicit.mean(), reward_mean=rewards.detach().to(implicit.dtype).mean())
