"""Token-budget micro-batches: rows sorted by length and cut into runs whose padded size fits.

Symbols: N rows (sequences) of true lengths ``L_r`` (prompt + response tokens), D data-parallel
ranks, a budget ``T`` (``trainer.max_tokens_per_micro_batch``) and the layout's pad multiple
``m`` (``parallel.sequence_pad_multiple``). A micro-batch ``B`` of rows costs

    tokens(B) = |B| * S_B,   S_B = padded_length(max_{r in B} L_r, m)

and the padding fraction of a set of micro-batches is ``1 - sum_r L_r / sum_B tokens(B)``.

:func:`token_budget_bins` sorts the rows by length, longest first, and cuts the sorted order into
consecutive runs, each within the budget: a run opens with its longest row (which fixes ``S_B``)
and holds at most ``T // S_B`` rows. It takes the fewest runs possible (the greedy count: each run
takes all the rows it may) and, among the cuts into that many runs, the one of fewest tokens
(dynamic programming over the cut points). Consecutive runs of the sorted order put rows of like
length together, so each micro-batch is padded only to its own longest row, not the batch's.

Worked example, ``T = 64``, ``m = 8``, lengths ``[10, 30, 12, 3, 31]``: sorted rows 4 (31), 1 (30),
2 (12), 0 (10), 3 (3); the first run has ``S = 32`` and takes 2 rows (64 tokens), the second has
``S = 16`` and takes the remaining 3 (48 tokens): bins ``[[1, 4], [0, 2, 3]]``, 112 tokens of which
86 are real, padding fraction ``26 / 112``. Padded to the longest row as one batch (``S = 32``,
160 tokens) the fraction is ``74 / 160``.

:func:`plan_micro_batches` does this per data-parallel rank, on its contiguous ``N / D`` rows (whole
groups: the loop's batches keep each group's G rows contiguous), so ranks may get different
micro-batch counts. Which rows share a micro-batch changes no loss: the objectives carry the
mini-batch's global normalizer and, where groups split, the mini-batch's group statistics
(:mod:`nemo_gift.algorithms.objectives`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from nemo_gift.algorithms.rollout import padded_length

__all__ = ["sequence_lengths", "token_budget_bins", "plan_micro_batches", "padding_fraction"]


def sequence_lengths(loss_mask: torch.Tensor) -> list[int]:
    """True lengths ``L_r`` of right-padded rows from their ``loss_mask`` [N, S].

    Position ``t`` of ``loss_mask`` scores the token at ``t + 1`` (``labels[:, t] = tokens[:, t + 1]``),
    so a row whose last scored position is ``t`` holds ``t + 2`` real tokens. A row with nothing
    scored counts 1 token: no loss reads it."""
    n, s = loss_mask.shape
    positions = torch.arange(s, device=loss_mask.device).expand(n, s)  # [N, S]
    last = torch.where(loss_mask.bool(), positions, torch.full_like(positions, -1)).amax(dim=1)  # [N]
    return (last + 2).clamp(min=1, max=s).tolist()


def token_budget_bins(lengths: Sequence[int], max_tokens: int, pad_multiple: int = 1) -> list[list[int]]:
    """Row indices of each micro-batch (ascending within one), longest micro-batches first.

    See the module docstring: runs of the rows sorted by length (longest first, ties by index),
    as few as the budget allows and, among those, the fewest tokens. A row longer than the budget
    alone is refused."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens_per_micro_batch must be >= 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda r: (-int(lengths[r]), r))
    widths = [padded_length(int(lengths[r]), pad_multiple) for r in order]
    capacity = [max_tokens // w for w in widths]  # rows a run opened at this position may take
    for position, rows in enumerate(capacity):
        if rows == 0:
            r = order[position]
            raise ValueError(
                f"row {r} has {lengths[r]} tokens (padded to {widths[position]}), more than "
                f"trainer.max_tokens_per_micro_batch={max_tokens}: raise the budget to at least {widths[position]}"
            )
    starts = _fewest_tokens_runs(widths, capacity, _fewest_runs(capacity))
    return [sorted(order[i:j]) for i, j in zip(starts, starts[1:] + [len(order)])]


def _fewest_runs(capacity: list[int]) -> int:
    """The fewest consecutive runs covering the sorted rows: each run takes all it may (greedy is
    optimal because a run opened later never holds more rows than one opened earlier)."""
    count, i = 0, 0
    while i < len(capacity):
        i, count = i + capacity[i], count + 1
    return count


def _fewest_tokens_runs(widths: list[int], capacity: list[int], runs: int) -> list[int]:
    """Start positions of ``runs`` consecutive runs of minimum total ``sum |B| * S_B``.

    Dynamic programming over the sorted rows: ``cost[m][i]`` = fewest tokens covering the first
    ``i`` rows with ``m`` runs, ``cost[m][i] = min_j cost[m-1][j] + (i - j) * widths[j]`` over the
    run openings ``j`` with ``0 < i - j <= capacity[j]`` (one [n+1, n+1] tensor per run)."""
    n = len(widths)
    if n == 0:
        return []
    big = torch.iinfo(torch.int64).max // 4
    j = torch.arange(n + 1).unsqueeze(1)  # [n+1, 1] run opening
    i = torch.arange(n + 1).unsqueeze(0)  # [1, n+1] rows covered after the run
    width = torch.tensor(widths + [0]).unsqueeze(1)  # [n+1, 1]
    cap = torch.tensor(capacity + [0]).unsqueeze(1)  # [n+1, 1]
    feasible = (i > j) & (i - j <= cap)  # [n+1, n+1]
    step = torch.where(feasible, (i - j) * width, torch.full_like(feasible, big, dtype=torch.int64))
    cost = torch.full((n + 1,), big, dtype=torch.int64)
    cost[0] = 0
    choice = []
    for _ in range(runs):
        total = cost.unsqueeze(1) + step  # [n+1 opening, n+1 covered]
        cost, best = total.min(dim=0)  # first minimum: the earliest opening on ties
        cost = cost.clamp(max=big)
        choice.append(best)
    starts, end = [], n
    for best in reversed(choice):
        end = int(best[end])
        starts.append(end)
    return starts[::-1]


def plan_micro_batches(
    lengths: Sequence[int], *, dp_size: int, max_tokens: int, pad_multiple: int = 1
) -> list[list[list[int]]]:
    """``plan[d][j]``: the (global) row indices of micro-batch ``j`` of data-parallel rank ``d``.

    Rank ``d`` holds rows ``[d * N/D, (d + 1) * N/D)`` and packs them with :func:`token_budget_bins`."""
    n = len(lengths)
    if n % dp_size:
        raise ValueError(f"{n} rows do not split over {dp_size} data-parallel ranks")
    per = n // dp_size
    plan = []
    for d in range(dp_size):
        bins = token_budget_bins(lengths[d * per:(d + 1) * per], max_tokens, pad_multiple)
        plan.append([[d * per + r for r in rows] for rows in bins])
    return plan


def padding_fraction(
    lengths: Sequence[int], bins: Sequence[Sequence[int]], pad_multiple: int = 1, width: Optional[int] = None
) -> float:
    """``1 - sum L_r / sum_B |B| * S_B`` over the micro-batches ``bins`` (row indices into
    ``lengths``); ``width`` pads every micro-batch to that one length instead (the fixed layout,
    every row padded to the batch's S)."""
    real = sum(int(lengths[r]) for rows in bins for r in rows)
    total = sum(
        len(rows) * (width if width is not None else padded_length(max(int(lengths[r]) for r in rows), pad_multiple))
        for rows in bins if rows
    )
    return 1.0 - real / total if total else 0.0
