"""Per-token log-probs fused with the vocab-parallel LM head: no ``[R, V/TP]`` logits tensor whole.

For hidden states ``x`` [R, H] (R = b*s tokens) and this tensor-parallel (TP) rank's rows of the
output weight ``W`` [V/TP, H] (rank ``r`` owns token ids ``[r*V/TP, (r+1)*V/TP)``):

    z = x W^T,    log pi(y) = z_y - lse,    lse = log sum_v exp(z_v)    (v over the whole vocabulary)

Forward, ``C = chunk_size`` rows at a time through one ``[C, V/TP]`` workspace: the chunk's logits
``z_c = x_c W^T`` (in the input dtype, as the LM head's GEMM makes them), then in fp32 the local
``lse_r = m + log sum exp(z - m)`` (m the local row max) and the target logit on the rank that
owns ``y`` (0 elsewhere). Two collectives over the TP group for the whole call, whatever C:

1. ``M = max_r lse_r``: all-reduce MAX of [R];
2. ``S = sum_r exp(lse_r - M)`` and ``z_y``: stacked [2, R], all-reduce SUM; ``lse = M + log S``.

Only ``lse`` [R] (and the targets) are kept. Backward recomputes each chunk's logits and turns
them, in the workspace, into ``d log pi(y) / dz = g * (onehot(y) - exp(z - lse))``, then

    grad_x[c] = dz_c @ W           [C, H]     this rank's vocabulary part only (see below)
    grad_W   += dz_c^T @ x_c       [V/TP, H]  accumulated in fp32 (bf16 inputs: per-chunk GEMM in bf16)

**Who reduces grad_x over TP.** Each rank returns the gradient through its own vocabulary slice;
the true gradient is their sum over the TP group. This function does not reduce it: the caller
passes hidden states that are replicated over TP with megatron-core's
``copy_to_tensor_model_parallel_region`` (identity forward, all-reduce of the gradient
backward), or gathered from sequence-parallel shards with
``gather_from_sequence_parallel_region(tensor_parallel_output_grad=True)`` (all-gather forward,
reduce-scatter backward), exactly what ``ColumnParallelLinear`` does around its GEMM
(``nemo_gift.models.policy.lm_head`` does this for the policy).

Cost: forward one GEMM, backward three (the recomputed logits, grad_x, grad_W), against two and
two for logits materialized once. Memory beyond the inputs: the ``[C, V/TP]`` workspace (twice
for bf16: the GEMM output and its fp32 copy), ``lse`` [R], and the gradients themselves.
Compare :func:`nemo_gift.distributed.logprobs.vocab_parallel_logprobs`, which takes the whole
``[R, V/TP]`` logits as input.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist

from nemo_gift.distributed.logprobs import _chunks, _local_targets, _tp_layout

__all__ = ["fused_linear_logprobs", "default_chunk_rows"]

MIN_CHUNK_ROWS = 128
"""The smallest default chunk: below it the per-chunk GEMMs get too thin to run at speed."""


def default_chunk_rows(rows: int, v_local: int, hidden: int) -> int:
    """Rows per chunk when the caller gives none: the chunk whose fp32 logits take about as many
    elements as the whole hidden states, ``C = ceil(R * H / (V/TP))`` (Liger-Kernel's rule), at
    least ``MIN_CHUNK_ROWS`` and at most R. The workspace then stays of the order of the
    activations that the LM head reads anyway, whatever V."""
    return max(1, min(rows, max(MIN_CHUNK_ROWS, math.ceil(rows * hidden / max(v_local, 1)))))


class _Workspace:
    """One ``[C, V/TP]`` buffer for the chunk's logits in the input dtype, and (bf16/fp16 inputs)
    one in the accumulation dtype, reused by every chunk: a fresh buffer per chunk would cost an
    allocation (and, on CPU, a page zero-fill) each time."""

    def __init__(self, rows: int, v_local: int, dtype, acc, device):
        self.logits = torch.empty(rows, v_local, dtype=dtype, device=device)  # [C, V/TP]
        self.acc = self.logits if dtype == acc else torch.empty(rows, v_local, dtype=acc, device=device)

    def chunk_logits(self, x_c: torch.Tensor, weight: torch.Tensor):
        """(logits in the input dtype, the same in the accumulation dtype) of ``x_c`` [c, H]."""
        n = x_c.shape[0]
        z = torch.mm(x_c, weight.t(), out=self.logits[:n])  # [c, V/TP]
        return z, (z if self.acc is self.logits else self.acc[:n].copy_(z))


def _forward(hidden, weight, local_t, owned, group, chunk_size):
    """(log pi(y), lse), [R] each in the accumulation dtype, with the two collectives."""
    rows, v_local = hidden.shape[0], weight.shape[0]
    acc = torch.promote_types(hidden.dtype, torch.float32)
    _, size = _tp_layout(group)
    lse_local = torch.empty(rows, dtype=acc, device=hidden.device)  # [R]
    reduced = torch.zeros(2, rows, dtype=acc, device=hidden.device)  # [2, R]: S, z_y
    work = _Workspace(min(chunk_size, rows), v_local, hidden.dtype, acc, hidden.device) if rows else None
    for r0, r1 in _chunks(rows, chunk_size):
        z, za = work.chunk_logits(hidden[r0:r1], weight)  # [c, V/TP]
        tgt = z.gather(1, local_t[r0:r1].unsqueeze(1)).squeeze(1).to(acc)  # [c]
        reduced[1, r0:r1] = torch.where(owned[r0:r1], tgt, torch.zeros_like(tgt))
        m = za.amax(dim=-1)  # [c]
        za.sub_(m.unsqueeze(1)).exp_()
        torch.sum(za, dim=-1, out=lse_local[r0:r1])
        lse_local[r0:r1].log_().add_(m)
    del work
    if size == 1:
        return reduced[1] - lse_local, lse_local
    big = lse_local.clone()
    dist.all_reduce(big, op=dist.ReduceOp.MAX, group=group)
    reduced[0] = torch.exp(lse_local - big)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM, group=group)
    lse = big.add_(reduced[0].log())  # [R]
    return reduced[1] - lse, lse


class _FusedLinearLogProbs(torch.autograd.Function):
    """log pi(target) from hidden states and the vocab-parallel output weight; see the module docstring."""

    @staticmethod
    def forward(ctx, hidden, weight, local_t, owned, group, chunk_size):
        logp, lse = _forward(hidden.detach(), weight.detach(), local_t, owned, group, chunk_size)
        ctx.save_for_backward(hidden, weight, lse, local_t, owned)
        ctx.chunk_size = chunk_size
        return logp

    @staticmethod
    def backward(ctx, grad_output):
        hidden, weight, lse, local_t, owned = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        rows, v_local = hidden.shape[0], weight.shape[0]
        acc = lse.dtype
        g = grad_output.reshape(-1).to(acc)  # [R]
        g_owned = torch.where(owned, g, torch.zeros_like(g)).unsqueeze(1)  # [R, 1]: the one-hot term
        grad_x = torch.empty_like(hidden) if need_x else None  # [R, H]
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None  # [V/TP, H]
        low = weight.dtype != acc  # bf16/fp16: each chunk's grad_W GEMM in that dtype, summed in fp32
        part = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device) if need_w and low else None
        work = _Workspace(min(ctx.chunk_size, rows), v_local, hidden.dtype, acc, hidden.device) if rows else None
        for r0, r1 in _chunks(rows, ctx.chunk_size):
            x_c = hidden[r0:r1]
            z, za = work.chunk_logits(x_c, weight)  # [c, V/TP]
            za.sub_(lse[r0:r1].unsqueeze(1)).exp_().mul_(-g[r0:r1].unsqueeze(1))  # -g * softmax
            za.scatter_add_(1, local_t[r0:r1].unsqueeze(1), g_owned[r0:r1])  # + g * onehot
            dz = za if za is z else z.copy_(za)  # [c, V/TP] in the input dtype
            if need_x:
                torch.mm(dz, weight, out=grad_x[r0:r1])
            if need_w and low:
                grad_w.add_(torch.mm(dz.t(), x_c, out=part))
            elif need_w:
                grad_w.addmm_(dz.t(), x_c)
        del work, part
        if need_w and low:
            grad_w = grad_w.to(weight.dtype)
        return grad_x, grad_w, None, None, None, None


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target_ids: torch.Tensor,
    tp_group: Optional[dist.ProcessGroup] = None,
    chunk_size: Optional[int] = None,
    inference_only: bool = False,
) -> torch.Tensor:
    """log pi(target) [...] from the final hidden states and this rank's output-weight rows.

    Args:
        hidden: [..., H] final hidden states (after the final norm), identical on every TP rank
            (replicated; see the module docstring for who reduces their gradient).
        weight: [V/TP, H] this rank's contiguous rows of the output (LM head) weight, in
            ``hidden``'s dtype; with tied embeddings, the embedding's.
        target_ids: [...] (``hidden``'s shape without H) int token ids in [0, V); checked (one
            host sync).
        tp_group: the tensor-parallel group; ``None`` means TP = 1.
        chunk_size: tokens per chunk; ``None`` picks :func:`default_chunk_rows`.
        inference_only: compute under ``no_grad`` and save nothing for backward.

    Returns:
        [...] log-probs in fp32 (float64 for float64 inputs), identical on every TP rank.
    """
    if hidden.dim() < 2 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"need hidden [..., H] and weight [V/TP, H]; got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if target_ids.shape != hidden.shape[:-1]:
        raise ValueError(
            f"target_ids must have the shape of hidden without its last dim; got hidden "
            f"{tuple(hidden.shape)} and targets {tuple(target_ids.shape)}"
        )
    if not hidden.is_floating_point() or hidden.dtype != weight.dtype:
        raise ValueError(f"hidden and weight must share one float dtype; got {hidden.dtype} and {weight.dtype}")
    if target_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"need int targets, got {target_ids.dtype}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
        raise ValueError(f"chunk_size={chunk_size!r} must be None or an int >= 1")
    rank, size = _tp_layout(tp_group)
    v_local = weight.shape[0]
    if target_ids.numel():
        lo, hi = int(target_ids.min()), int(target_ids.max())
        if lo < 0 or hi >= v_local * size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"target id {bad} is outside the vocabulary [0, {v_local * size}) (V/TP={v_local}, TP={size})"
            )
    h2d = hidden.reshape(-1, hidden.shape[-1])  # [R, H]
    chunk = int(chunk_size) if chunk_size is not None else default_chunk_rows(h2d.shape[0], v_local, h2d.shape[1])
    local_t, owned = _local_targets(target_ids.reshape(-1).long(), rank * v_local, v_local)  # [R] each
    if inference_only or not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        with torch.no_grad():
            logp, _ = _forward(h2d, weight, local_t, owned, tp_group, chunk)
    else:
        logp = _FusedLinearLogProbs.apply(h2d, weight, local_t, owned, tp_group, chunk)
    return logp.view(target_ids.shape)
