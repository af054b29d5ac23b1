"""Plain, loop-per-group re-implementations used as independent references in tests.

Written from the spec's formulas with torch.mean / torch.std on each group's slice,
sharing no code with nemo_gift.algorithms.
"""

import torch


def ref_zscore(x: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """(x - mean) / (unbiased std + eps) per contiguous group, no guard."""
    out = []
    for g in x.split(group_size):
        out.append((g - g.mean()) / (g.std(unbiased=True) + eps))
    return torch.cat(out)


def ref_group_std(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Unbiased std of each contiguous group, repeated per member: [N]."""
    return torch.cat([g.std(unbiased=True).expand(g.shape[0]) for g in x.split(group_size)])


def ref_advantages(r: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """GRPO advantage per contiguous group; exactly 0 where the group's rewards are all equal."""
    out = []
    for g in r.split(group_size):
        if bool((g == g[0]).all()):
            out.append(torch.zeros_like(g))
        else:
            out.append((g - g.mean()) / (g.std(unbiased=True) + eps))
    return torch.cat(out)


def closed_form_grad_detached(s, a, group_size, beta, eps, n_pairs):
    """Spec section 4: dL/ds_i = -(2 beta / N)(A_i - beta z_i) / (std + eps), stats detached."""
    z = ref_zscore(s, group_size, eps)
    std = ref_group_std(s, group_size)
    return -(2.0 * beta / n_pairs) * (a - beta * z) / (std + eps)


def closed_form_grad_full(s, a, group_size, beta, eps, n_pairs):
    """dL/ds with gradients through the group mean and the unbiased std (no guard).

    Derivation, for one group of n members; d_i = s_i - mu, sigma = sqrt(sum_j d_j^2 / (n - 1)),
    D = sigma + eps, z_i = d_i / D, L = (1/N) sum_i (A_i - beta z_i)^2:
        g_i        := dL/dz_i = -(2 beta / N)(A_i - beta z_i)
        dd_i/ds_k   = delta_ik - 1/n
        dsigma/ds_k = d_k / ((n - 1) sigma)          (the 1/n terms cancel since sum_j d_j = 0)
        dz_i/ds_k   = (delta_ik - 1/n) / D - d_i d_k / ((n - 1) sigma D^2)
    hence
        dL/ds_k = (g_k - mean_i g_i) / D - d_k (sum_i g_i d_i) / ((n - 1) sigma D^2).
    With detached stats only the g_k / D term survives (the spec's closed form).
    """
    out = []
    for sg, ag in zip(s.split(group_size), a.split(group_size)):
        n = sg.shape[0]
        d = sg - sg.mean()
        sigma = torch.sqrt((d * d).sum() / (n - 1))
        D = sigma + eps
        g = -(2.0 * beta / n_pairs) * (ag - beta * d / D)
        out.append((g - g.mean()) / D - d * (g * d).sum() / ((n - 1) * sigma * D * D))
    return torch.cat(out)
