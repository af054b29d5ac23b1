"""Loss-side metrics as detached 0-dim tensors (no host sync; the logger syncs once).

All statistics are local to the tensors passed in: with partial groups on a rank,
a group's correlation is that of its local members.
"""

from __future__ import annotations

from typing import Dict

import torch

__all__ = ["group_pearson", "group_fraction", "detached"]


def group_pearson(x: torch.Tensor, y: torch.Tensor, group_index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mean over groups of the within-group Pearson correlation of x [N] and y [N].

    Only groups where the correlation is defined count (at least two members, and non-zero
    spread of both x and y); 0 when no group qualifies. Returns a detached 0-dim tensor.
    """
    x = x.detach()
    y = y.detach().to(x.dtype)
    zeros = x.new_zeros(num_groups)  # [K]
    count = zeros.index_add(0, group_index, torch.ones_like(x))
    mx = zeros.index_add(0, group_index, x) / count.clamp_min(1)
    my = zeros.index_add(0, group_index, y) / count.clamp_min(1)
    dx = x - mx[group_index]  # [N]
    dy = y - my[group_index]
    sxy = zeros.index_add(0, group_index, dx * dy)
    sxx = zeros.index_add(0, group_index, dx * dx)
    syy = zeros.index_add(0, group_index, dy * dy)
    valid = (count >= 2) & (sxx > 0) & (syy > 0)  # [K]
    corr = torch.where(valid, sxy / torch.sqrt(torch.where(valid, sxx * syy, torch.ones_like(sxx))), zeros)
    return corr.sum() / valid.sum().clamp_min(1)


def group_fraction(flags: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Fraction of present groups ([K] bool) whose flag ([K] bool) is set; 0 if none present."""
    present = present.detach()
    hits = (flags.detach() & present).sum()
    return (hits / present.sum().clamp_min(1)).to(torch.float32)


def detached(**values: torch.Tensor) -> Dict[str, torch.Tensor]:
    """A metrics dict of detached 0-dim tensors."""
    out = {}
    for name, value in values.items():
        if value.dim() != 0:
            raise ValueError(f"metric {name!r} must be 0-dim, got shape {tuple(value.shape)}")
        out[name] = value.detach()
    return out
