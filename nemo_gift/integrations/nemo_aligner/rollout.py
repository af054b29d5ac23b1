"""Rollout side of the NeMo-Aligner extension: turn Aligner's rollout batch into GIFT training data.

Torch only (no NeMo import), so the main test suite covers it.

NeMo-Aligner's REINFORCE trainer (``nemo_aligner/algorithms/reinforce.py``, 0.7.0) generates
G = ``num_rollouts_per_prompt`` responses per prompt, one rollout call per repetition, so the G
responses of a prompt are *not* contiguous in its rollout batch. It then calls
``generate_reinforce_data(rollout_batch)`` with these keys, n rows each (n = B * G):

    prompt_tokens    [n, Lp]  the prompt, right-padded      prompt_lengths    [n]
    response_tokens  [n, S]   prompt + response + padding   response_lengths  [n] (prompt included)
    logprobs         [n, S-1] log pi_old of tokens[:, 1:]   init_logprobs     [n, S-1] log pi_ref (if asked)
    rewards          [n]      explicit reward r             is_end            [n] ended properly

Position t of the [n, S-1] tensors scores token t+1. The response mask m (Aligner's
``create_mask``) is 1 for t in [prompt_length - 1, response_length - 1): every generated token,
the final EOS included.

:func:`build_gift_rollout_data` reorders the rows so that each group of G responses to one prompt
is contiguous, numbers the groups, and picks the baseline log-probs of the implicit reward:
``init_logprobs`` (pi_ref, the paper) or ``logprobs`` (pi_old recomputed after rollout, the
author's verl code). Contiguous whole groups are what let a micro-batch compute z and A exactly
(``docs/nemo-aligner.md``).
"""

from __future__ import annotations

from typing import Dict, Mapping, Tuple

import torch

from nemo_gift.algorithms.config import GiftLossConfig, ImplicitBaseline, coerce_enum, validate_group_size
from nemo_gift.algorithms.normalization import explicit_advantages, implicit_rewards

__all__ = ["GIFT_BATCH_KEYS", "response_mask", "group_by_prompt", "build_gift_rollout_data", "check_whole_groups", "check_gift_batch_sizes"]

GIFT_BATCH_KEYS = ("response_tokens", "mask", "rewards", "baseline_logprobs", "group_ids", "is_end")
"""What the GIFT actor's ``get_loss_and_metrics`` reads: n rows each, groups contiguous."""


def response_mask(prompt_lengths: torch.Tensor, response_lengths: torch.Tensor, num_positions: int) -> torch.Tensor:
    """m [n, num_positions] bool: True at t in [prompt_length - 1, response_length - 1).

    Aligner's ``ppo_utils.create_mask`` convention, vectorized: position t scores token t+1, so
    the first response token is at ``prompt_length - 1`` and the last (EOS) at
    ``response_length - 2``.
    """
    t = torch.arange(num_positions, device=prompt_lengths.device)  # [P]
    start = (prompt_lengths.long() - 1).unsqueeze(1)  # [n, 1]
    end = (response_lengths.long() - 1).unsqueeze(1)
    return (t >= start) & (t < end)  # [n, P]


def group_by_prompt(
    prompt_tokens: torch.Tensor, prompt_lengths: torch.Tensor, group_size: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(order [n], group_ids [n]): the row permutation that makes groups contiguous, and the group
    of each reordered row (``arange(n) // G``).

    Rows belong to one prompt when their first ``prompt_length`` tokens are equal (padding is
    ignored), Aligner's own grouping for its RLOO baseline. A prompt that appears m times in the
    batch has m * G rows; they are split, in rollout order, into m groups of G (each a valid
    GIFT group: same prompt). Raises ValueError when a prompt's row count is not a multiple of G.
    """
    g = validate_group_size(group_size)
    n = prompt_tokens.shape[0]
    pos = torch.arange(prompt_tokens.shape[1], device=prompt_tokens.device)
    keyed = torch.where(pos < prompt_lengths.long().unsqueeze(1), prompt_tokens.long(), -1)  # [n, Lp]
    _, prompt_id = torch.unique(keyed, dim=0, return_inverse=True)  # [n]
    counts = torch.bincount(prompt_id)
    if bool((counts % g != 0).any()):
        bad = int(torch.nonzero(counts % g != 0)[0, 0])
        row = int(torch.nonzero(prompt_id == bad)[0, 0])
        raise ValueError(
            f"the prompt of rollout row {row} has {int(counts[bad])} responses, not a multiple of "
            f"group_size={g}: every prompt must be rolled out G times (num_rollouts_per_prompt)"
        )
    order = torch.sort(prompt_id, stable=True).indices  # rows of one prompt together, rollout order kept
    return order, torch.arange(n, device=prompt_tokens.device) // g


def check_whole_groups(group_ids: torch.Tensor, num_splits: int) -> None:
    """Raise unless splitting the n rows into ``num_splits`` equal contiguous parts keeps every group
    (a run of equal ``group_ids``) inside one part: Aligner's ``get_iterator_k_split`` split."""
    n = group_ids.shape[0]
    if num_splits < 1 or n % num_splits:
        raise ValueError(f"{n} rows do not split into {num_splits} equal micro-batches")
    size = n // num_splits
    cuts = torch.arange(size, n, size, device=group_ids.device)  # first row of each later part
    if cuts.numel() and bool((group_ids[cuts] == group_ids[cuts - 1]).any()):
        raise ValueError(
            f"micro-batches of {size} rows split a group of responses; make the micro-batch size a "
            "multiple of the group size (num_rollouts_per_prompt) so each holds whole groups"
        )


def build_gift_rollout_data(
    rollout_batch: Mapping[str, torch.Tensor],
    group_size: int,
    implicit_baseline: ImplicitBaseline | str = GiftLossConfig.implicit_baseline,
    eps: float = 1e-6,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, float]]:
    """GIFT training data (:data:`GIFT_BATCH_KEYS`, groups contiguous) and rollout metrics.

    Args:
        rollout_batch: Aligner's rollout batch (see the module docstring); ``init_logprobs`` is
            required for the ``reference`` baseline.
        group_size: G, the trainer's ``num_rollouts_per_prompt``.
        implicit_baseline: ``reference`` (pi_ref, ``init_logprobs``) or ``old_policy``
            (pi_old, ``logprobs``), :class:`~nemo_gift.algorithms.ImplicitBaseline`. The
            default is the project's, :attr:`GiftLossConfig.implicit_baseline` (``old_policy``).
            Changed: it was ``reference`` before; :class:`.trainer.GiftTrainer` always passes its
            loss config's value, so only a direct call that leaves it out changes, and it now
            reads ``logprobs`` and reports no ``rollout_implicit_reward_mean``: pass
            ``implicit_baseline="reference"`` for the old behaviour.
        eps: the advantage's eps, for the zero-std metric only.

    Returns:
        ``(data, metrics)``. Metrics: ``num_groups``, ``zero_explicit_std_frac`` (groups whose
        rewards are all equal), and with the reference baseline ``rollout_implicit_reward_mean``
        (mean kl_sum of pi_old against pi_ref over the responses: how far the policy has moved).
    """
    baseline = coerce_enum(ImplicitBaseline, implicit_baseline, "implicit_baseline")
    key = "init_logprobs" if baseline is ImplicitBaseline.REFERENCE else "logprobs"
    if key not in rollout_batch:
        raise KeyError(f"implicit_baseline={baseline.value!r} needs {key!r} in the rollout batch")
    logprobs = rollout_batch["logprobs"]  # [n, S-1]
    mask = response_mask(rollout_batch["prompt_lengths"], rollout_batch["response_lengths"], logprobs.shape[1])
    order, group_ids = group_by_prompt(rollout_batch["prompt_tokens"], rollout_batch["prompt_lengths"], group_size)
    rewards = rollout_batch["rewards"].float()[order]  # [n]
    data = {
        "response_tokens": rollout_batch["response_tokens"][order],
        "mask": mask[order],
        "rewards": rewards,
        "baseline_logprobs": rollout_batch[key].float()[order],
        "group_ids": group_ids,
        "is_end": rollout_batch["is_end"][order],
    }
    zero_std = explicit_advantages(rewards, group_size, eps=eps).zero_std  # [K]
    metrics = {"num_groups": float(zero_std.numel()), "zero_explicit_std_frac": float(zero_std.float().mean())}
    if baseline is ImplicitBaseline.REFERENCE:
        s = implicit_rewards(logprobs.float()[order], data["baseline_logprobs"], data["mask"])  # [n]
        metrics["rollout_implicit_reward_mean"] = float(s.mean())
    return data, metrics


def check_gift_batch_sizes(group_size: int, model_gbs: int, model_mbs: int, dp_size: int) -> None:
    """Refuse batch sizes that would split a group (before any rollout runs).

    Aligner trains each data-parallel rank on contiguous mini-batches of ``model_gbs / dp``
    rows, split into micro-batches of ``model_mbs`` rows; G must divide both.
    """
    g = validate_group_size(group_size, "num_rollouts_per_prompt")
    if model_gbs % dp_size:
        raise ValueError(f"model.global_batch_size={model_gbs} is not divisible by the data-parallel size {dp_size}")
    per_rank = model_gbs // dp_size
    if per_rank % g:
        raise ValueError(
            f"model.global_batch_size / data-parallel size = {per_rank} rows per mini-batch is not a "
            f"multiple of num_rollouts_per_prompt={g}: a group would straddle two optimizer steps"
        )
    if model_mbs % g:
        raise ValueError(
            f"model.micro_batch_size={model_mbs} is not a multiple of num_rollouts_per_prompt={g}: "
            "GIFT normalizes inside each group, so a micro-batch must hold whole groups"
        )
