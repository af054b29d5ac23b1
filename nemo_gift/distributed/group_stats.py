"""Group statistics across data-parallel ranks, and the partition that keeps groups whole.

GIFT normalizes the implicit reward s and the explicit reward r inside each group of G
responses to one prompt (``docs/gift-math.md`` section 2). When the global batch of
N = K * G responses (K groups) is spread over D data-parallel (DP) ranks and M micro-batches
per rank, a group's members must see the statistics of the whole group. Two ways:

1. **Whole groups (the default where it holds).** :func:`partition_groups` deals the batch so
   that micro-batch ``j`` of DP rank ``d`` holds responses ``[d*b, (d+1)*b)`` of step ``j``
   (``b`` = N / (D*M) responses per micro-batch). Step ``j`` always holds whole groups; a
   micro-batch does when G divides ``b``. Then every statistic is local and no collective runs.
2. **All-reduced moments.** When G does not divide ``b``, a group straddles the DP ranks of
   one step. The loss then all-reduces the per-group (count, sum) and, about the global mean,
   the sum of squared deviations over the DP group: two collectives of [2, K] and [K] per
   micro-batch, through :func:`nemo_gift.algorithms.group_moments`'s ``all_reduce`` hook.
   With ``detach_implicit_stats=False`` the all-reduce is differentiable, so the gradient
   through the group mean and std reaches the members on the other ranks.

A group can never straddle two micro-batch steps: its statistics would need a forward that has
not run yet. :func:`partition_groups` refuses such shapes (K must be a multiple of M).

Explicit advantages need no model: they are computed once on the global rewards [N] (every
rank holds them) and sharded with the batch, so they are exact in both modes.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Optional

import torch
import torch.distributed as dist

from nemo_gift.algorithms.config import coerce_enum, validate_group_size
from nemo_gift.algorithms.normalization import AllReduce

__all__ = ["GroupStatsMode", "GroupPartition", "partition_groups", "resolve_stats_mode", "dp_all_reduce"]


class GroupStatsMode(str, Enum):
    """Where the group statistics of a micro-batch come from."""

    AUTO = "auto"
    """``local`` when the partition keeps every group whole in one micro-batch, else ``all_reduce``."""
    LOCAL = "local"
    """From the micro-batch alone: exact only for whole groups (refused otherwise)."""
    ALL_REDUCE = "all_reduce"
    """Per-group moments summed over the DP group: exact for any split of a step's groups."""


@dataclasses.dataclass(frozen=True)
class GroupPartition:
    """Which responses of the global batch each (DP rank, micro-batch) holds.

    Responses are numbered as in the global batch, group ``k`` being ``[k*G, (k+1)*G)``.
    """

    group_size: int
    """G."""
    num_groups: int
    """K, groups in the global batch."""
    dp_size: int
    """D."""
    num_microbatches: int
    """M, micro-batches per DP rank."""
    order: torch.Tensor
    """[N] the response order (groups permuted whole, members in order)."""

    @property
    def microbatch_size(self) -> int:
        """b = N / (D * M), responses per micro-batch per rank."""
        return self.group_size * self.num_groups // (self.dp_size * self.num_microbatches)

    @property
    def whole_groups(self) -> bool:
        """Every micro-batch holds whole groups (G divides b)."""
        return self.microbatch_size % self.group_size == 0

    def indices(self, dp_rank: int, micro: int) -> torch.Tensor:
        """[b] global response indices of micro-batch ``micro`` on DP rank ``dp_rank``."""
        if not (0 <= dp_rank < self.dp_size and 0 <= micro < self.num_microbatches):
            raise IndexError(f"(dp_rank, micro) = ({dp_rank}, {micro}) outside ({self.dp_size}, {self.num_microbatches})")
        b = self.microbatch_size
        start = micro * self.dp_size * b + dp_rank * b
        return self.order[start:start + b]

    def group_index(self, dp_rank: int, micro: int) -> torch.Tensor:
        """[b] global group id (in [0, K)) of each response of that micro-batch."""
        return self.indices(dp_rank, micro) // self.group_size


def partition_groups(
    num_groups: int,
    group_size: int,
    dp_size: int,
    num_microbatches: int,
    *,
    generator: Optional[torch.Generator] = None,
) -> GroupPartition:
    """Deal K groups of G responses over D ranks and M micro-batches each; see the module docstring.

    Args:
        num_groups: K; must be a multiple of M, so that each micro-batch step holds whole groups.
        group_size: G >= 2.
        dp_size: D; must divide the K*G/M responses of a step.
        num_microbatches: M.
        generator: if given, groups are shuffled (whole) with it; pass one seeded identically on
            every rank. Without it the order is the batch order.

    Raises:
        ValueError naming the quantity that does not divide.
    """
    validate_group_size(group_size)
    for name, v in (("num_groups", num_groups), ("dp_size", dp_size), ("num_microbatches", num_microbatches)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be an int >= 1")
    if num_groups % num_microbatches:
        raise ValueError(
            f"num_groups={num_groups} is not a multiple of num_microbatches={num_microbatches}: a group "
            f"would straddle two micro-batch steps, and its statistics would need a forward that has not run"
        )
    step = num_groups // num_microbatches * group_size
    if step % dp_size:
        raise ValueError(
            f"a micro-batch step holds {step} responses ({num_groups // num_microbatches} groups of "
            f"{group_size}), which do not split over dp_size={dp_size} ranks"
        )
    if generator is None:
        groups = torch.arange(num_groups)
    else:
        groups = torch.randperm(num_groups, generator=generator)
    order = (groups.unsqueeze(1) * group_size + torch.arange(group_size)).reshape(-1)  # [N]
    return GroupPartition(group_size, num_groups, dp_size, num_microbatches, order)


def resolve_stats_mode(mode, partition: GroupPartition) -> GroupStatsMode:
    """``local`` or ``all_reduce`` for this partition; ``local`` on split groups is refused."""
    mode = coerce_enum(GroupStatsMode, mode, "group_stats")
    if mode is GroupStatsMode.AUTO:
        return GroupStatsMode.LOCAL if partition.whole_groups else GroupStatsMode.ALL_REDUCE
    if mode is GroupStatsMode.LOCAL and not partition.whole_groups:
        raise ValueError(
            f"group_stats=local needs whole groups per micro-batch, but G={partition.group_size} does "
            f"not divide the micro-batch size {partition.microbatch_size} (D={partition.dp_size}, "
            f"M={partition.num_microbatches}); use all_reduce or auto"
        )
    return mode


class _AllReduceSum(torch.autograd.Function):
    """y = sum over the group of x; dL/dx = sum over the group of dL/dy (each rank's loss uses y)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
        return y

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def dp_all_reduce(group: Optional[dist.ProcessGroup], differentiable: bool = False) -> AllReduce:
    """A SUM over ``group`` with the signature of the algorithms' ``all_reduce`` hook.

    ``differentiable=True``: the backward sums the incoming gradients over the group, so the
    gradient through the group statistics (``detach_implicit_stats=False``) reaches the members
    held by the other ranks; every rank must then run backward. Otherwise the input is
    reduced as a detached copy.
    """
    if differentiable:
        return lambda t: _AllReduceSum.apply(t, group)

    def reduce(t: torch.Tensor) -> torch.Tensor:
        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    return reduce
