"""Per-token log-probs of the sampled tokens from vocab-parallel logits, never gathering the vocabulary.

Each tensor-parallel (TP) rank holds the logits of its slice of the vocabulary,
``[B, T, V/TP]``, rank ``r`` owning token ids ``[r * V/TP, (r+1) * V/TP)``. For the target
``y`` of each position:

    log pi(y) = x_y - M - log S,   M = max_v x_v,   S = sum_v exp(x_v - M)

computed with two collectives over the TP group, whatever the chunking:

1. ``M``: a local max (exact in the input dtype), all-reduced with MAX;
2. ``S`` and ``x_y``: local sums of ``exp(x - M)`` in fp32, and the target logit taken on the
   rank that owns ``y`` (0 elsewhere), stacked and all-reduced once with SUM.

The backward, ``d log pi(y) / dx_v = 1[v = y] - softmax_v``, is local: no communication.

Two strategies, one function:

- ``chunk_size=None`` (fast): forward keeps ``exp(x - M)`` in fp32 and backward turns it into
  the gradient in place, so ``exp`` runs once. Extra memory: one fp32 copy of the shard, as in
  megatron-core's ``vocab_parallel_cross_entropy`` (which makes it by overwriting fp32 inputs).
- ``chunk_size=C`` (memory-bounded): rows of ``B*T`` are processed ``C`` at a time through one
  fp32 ``[C, V/TP]`` workspace; backward saves only the logits themselves and a ``[B*T]``
  log-sum-exp, and recomputes the softmax chunk by chunk. Extra memory beyond the gradient
  buffer: ``C * V/TP * 4`` bytes, at the price of a second ``exp``.

``inference_only=True`` (reference and rollout log-probs) saves nothing for backward. bf16 or
fp16 logits are read in their dtype; every exp, sum and log runs in fp32 (float64 stays
float64), the result is fp32, and the gradient comes back in the logits' dtype.
``overwrite_logits=True`` lets the function reuse the logits' storage (as megatron-core's
cross-entropy always does): for the gradient in backward, and as the fp32 workspace of the
unchunked forward. The caller must not read the logits after the call.

Pipeline parallelism: logits exist on the last stage only. :func:`broadcast_from_last_stage`
sends log-probs computed there to every stage (``docs/parallelism.md``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist

__all__ = ["vocab_parallel_logprobs", "broadcast_from_last_stage", "collective_device"]


def collective_device(group=None) -> torch.device:
    """Where a buffer that ``group``'s collectives receive into must live: the current CUDA
    device on an NCCL group, the CPU on gloo. A receive buffer allocated without a device is
    on the CPU, which NCCL rejects."""
    backend = dist.get_backend(group)
    if "nccl" in str(backend).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _tp_layout(group: Optional[dist.ProcessGroup]) -> tuple[int, int]:
    """(rank in the TP group, TP size); ``None`` means the vocabulary is not split."""
    if group is None:
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _all_reduce(t: torch.Tensor, op, group: Optional[dist.ProcessGroup], size: int) -> None:
    if size > 1:
        dist.all_reduce(t, op=op, group=group)


def _chunks(rows: int, chunk_size: Optional[int]):
    step = rows if chunk_size is None else chunk_size
    for start in range(0, rows, max(step, 1)):
        yield start, min(start + step, rows)


def _local_targets(target: torch.Tensor, vocab_start: int, v_local: int):
    """(local column of each target, clamped to 0 where not owned [R]; owned [R] bool)."""
    local = target - vocab_start
    owned = (local >= 0) & (local < v_local)
    return torch.where(owned, local, torch.zeros_like(local)), owned


def _shifted(x: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = x - shift[:, None] in out's dtype, with no temporary beyond ``out``."""
    if x.dtype == out.dtype:
        return torch.sub(x, shift.unsqueeze(1), out=out)
    return out.copy_(x).sub_(shift.unsqueeze(1))


def _forward(logits2d, target1d, group, chunk_size, keep_exp: bool, overwrite: bool):
    """The two-collective reduction. Returns (logp, lse, inv_s, local_t, owned) [R] each, and exp.

    ``inv_s`` = 1 / S = exp(M - lse), the per-row factor that turns ``exp(x - M)`` into the softmax.

    ``exp`` (only with ``keep_exp``, i.e. unchunked training) is ``exp(x - M)`` [R, V/TP] in
    the accumulation dtype: the logits' own storage when ``overwrite`` and the dtypes agree.
    """
    rows, v_local = logits2d.shape
    acc = torch.promote_types(logits2d.dtype, torch.float32)
    rank, size = _tp_layout(group)
    local_t, owned = _local_targets(target1d, rank * v_local, v_local)

    m = logits2d.amax(dim=-1).to(acc)  # [R]; the max is exact in any dtype
    _all_reduce(m, dist.ReduceOp.MAX, group, size)
    reduced = torch.empty(2, rows, dtype=acc, device=logits2d.device)  # [2, R]: S, x_y
    tgt = logits2d.gather(1, local_t.unsqueeze(1)).squeeze(1).to(acc)  # [R]
    reduced[1] = torch.where(owned, tgt, torch.zeros_like(tgt))

    exp = None
    if keep_exp:  # one chunk; exp(x - M) stays alive for backward
        if overwrite and logits2d.dtype == acc:
            exp = logits2d.sub_(m.unsqueeze(1))
        elif logits2d.dtype == acc:
            exp = torch.sub(logits2d, m.unsqueeze(1))
        else:  # bf16/fp16: one fp32 copy (a mixed-dtype sub would add a cast temporary on CPU)
            exp = logits2d.to(acc).sub_(m.unsqueeze(1))
        exp.exp_()
        torch.sum(exp, dim=-1, out=reduced[0])
    else:
        work = None
        for r0, r1 in _chunks(rows, chunk_size):
            if work is None:
                work = torch.empty(r1 - r0, v_local, dtype=acc, device=logits2d.device)  # [C, V/TP]
            w = _shifted(logits2d[r0:r1], m[r0:r1], work[: r1 - r0])
            w.exp_()
            torch.sum(w, dim=-1, out=reduced[0, r0:r1])
        del work
    _all_reduce(reduced, dist.ReduceOp.SUM, group, size)
    lse = m + reduced[0].log()  # [R]
    return reduced[1] - lse, lse, reduced[0].reciprocal(), local_t, owned, exp


class _VocabParallelLogProbs(torch.autograd.Function):
    """log pi(target) from vocab-parallel logits; see the module docstring."""

    @staticmethod
    def forward(ctx, logits, target, group, chunk_size, overwrite):
        shape, v_local = logits.shape[:-1], logits.shape[-1]
        # detach(): an alias outside autograd's view tracking, so that the in-place uses of the
        # storage (overwrite_logits) and saving it for backward do not conflict.
        logits2d = logits.detach().reshape(-1, v_local)  # [R, V/TP], R = B*T
        keep_exp = chunk_size is None
        logp, lse, inv_s, local_t, owned, exp = _forward(
            logits2d, target.reshape(-1), group, chunk_size, keep_exp, overwrite
        )
        ctx.shape, ctx.dtype, ctx.chunk_size, ctx.overwrite = logits.shape, logits.dtype, chunk_size, overwrite
        ctx.used = False
        if keep_exp:  # backward needs exp(x - M) and 1/S; the logits only as gradient storage
            ctx.save_for_backward(exp, inv_s, local_t, owned, logits2d if overwrite else None)
        else:  # backward recomputes exp(x - lse) from the logits, chunk by chunk
            ctx.save_for_backward(logits2d, lse, local_t, owned, None)
        return logp.view(shape)

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.used:
            raise RuntimeError(
                "vocab_parallel_logprobs: backward ran twice through one forward whose buffers the "
                "first backward consumed (chunk_size=None or overwrite_logits=True); use a "
                "chunk_size without overwrite_logits to backward more than once (retain_graph)"
            )
        ctx.used = ctx.chunk_size is None or ctx.overwrite
        saved, row, local_t, owned, logits2d = ctx.saved_tensors
        acc = row.dtype
        g = grad_output.reshape(-1).to(acc)  # [R]
        g_owned = torch.where(owned, g, torch.zeros_like(g)).unsqueeze(1)  # [R, 1]: the one-hot term
        if ctx.chunk_size is None:
            # d logp / dx = onehot - exp(x - M) / S, in place in the saved exp(x - M).
            grad = saved.mul_((-g * row).unsqueeze(1))  # row = 1/S
            grad.scatter_add_(1, local_t.unsqueeze(1), g_owned)
            if grad.dtype != ctx.dtype:  # bf16/fp16 logits: the gradient comes back in their dtype
                grad = logits2d.copy_(grad) if logits2d is not None else grad.to(ctx.dtype)
            return grad.view(ctx.shape), None, None, None, None
        lse = row
        x = saved  # [R, V/TP] logits in their dtype
        out = x if ctx.overwrite else torch.empty_like(x)
        work = None
        for r0, r1 in _chunks(x.shape[0], ctx.chunk_size):
            if out.dtype == acc:
                w = out[r0:r1]
            else:
                if work is None:
                    work = torch.empty(r1 - r0, x.shape[1], dtype=acc, device=x.device)  # [C, V/TP]
                w = work[: r1 - r0]
            _shifted(x[r0:r1], lse[r0:r1], w).exp_()  # softmax of the chunk
            w.mul_(-g[r0:r1].unsqueeze(1))
            w.scatter_add_(1, local_t[r0:r1].unsqueeze(1), g_owned[r0:r1])
            if w.data_ptr() != out[r0:r1].data_ptr():
                out[r0:r1].copy_(w)
        return out.view(ctx.shape), None, None, None, None


def vocab_parallel_logprobs(
    logits_shard: torch.Tensor,
    target_ids: torch.Tensor,
    tp_group: Optional[dist.ProcessGroup] = None,
    chunk_size: Optional[int] = None,
    inference_only: bool = False,
    *,
    overwrite_logits: bool = False,
) -> torch.Tensor:
    """log pi(target) [B, T] from this rank's vocabulary shard, identical on every TP rank.

    Args:
        logits_shard: [B, T, V/TP] logits of this rank's contiguous vocabulary slice (rank r owns
            ids [r*V/TP, (r+1)*V/TP)), fp32, bf16 or fp16. Every column must be a real token:
            padded vocabulary entries would enter the normalizer.
        target_ids: [B, T] int64 token ids in [0, V); checked (one host sync).
        tp_group: the tensor-parallel group (megatron-core's
            ``parallel_state.get_tensor_model_parallel_group()``); ``None`` means TP = 1.
        chunk_size: rows of B*T processed at once, bounding the extra memory to
            ``chunk_size * V/TP`` fp32 values in forward and backward (the softmax is recomputed
            per chunk in backward). ``None``: one chunk, and the forward's exp is kept for backward.
        inference_only: compute under ``no_grad`` and save nothing for backward.
        overwrite_logits: let the function reuse the logits' storage (as fp32 workspace in the
            unchunked forward, and for the gradient in backward). The logits' contents are then
            unspecified after the call.

    Returns:
        [B, T] log-probs in fp32 (float64 for float64 logits).
    """
    if logits_shard.dim() < 2 or target_ids.shape != logits_shard.shape[:-1]:
        raise ValueError(
            f"target_ids must have the shape of logits_shard without its last dim; got logits "
            f"{tuple(logits_shard.shape)} and targets {tuple(target_ids.shape)}"
        )
    if not logits_shard.is_floating_point() or target_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"need float logits and int targets, got {logits_shard.dtype} and {target_ids.dtype}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
        raise ValueError(f"chunk_size={chunk_size!r} must be None or an int >= 1")
    _, size = _tp_layout(tp_group)
    vocab = logits_shard.shape[-1] * size
    if target_ids.numel():
        lo, hi = int(target_ids.min()), int(target_ids.max())
        if lo < 0 or hi >= vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(f"target id {bad} is outside the vocabulary [0, {vocab}) (V/TP={logits_shard.shape[-1]}, TP={size})")
    target = target_ids.long()
    if inference_only or not (torch.is_grad_enabled() and logits_shard.requires_grad):
        with torch.no_grad():
            logits2d = logits_shard.reshape(-1, logits_shard.shape[-1])
            # Unchunked with overwrite: exp(x - M) is taken in the logits' storage (fp32 logits).
            acc = torch.promote_types(logits2d.dtype, torch.float32)
            in_place = chunk_size is None and overwrite_logits and logits2d.dtype == acc
            logp, *_ = _forward(logits2d, target.reshape(-1), tp_group, chunk_size, in_place, overwrite_logits)
        return logp.view(target.shape)
    return _VocabParallelLogProbs.apply(logits_shard, target, tp_group, chunk_size, overwrite_logits)


def broadcast_from_last_stage(
    tensor: Optional[torch.Tensor],
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    *,
    group: Optional[dist.ProcessGroup] = None,
    src: Optional[int] = None,
) -> torch.Tensor:
    """Send a tensor computed on the last pipeline stage (log-probs) to every stage.

    Args:
        tensor: the tensor on the last stage; ignored (may be None) elsewhere.
        shape, dtype: its shape and dtype, known on every stage (e.g. [N, T] from the batch).
        group: the pipeline group; defaults to megatron-core's.
        src: the global rank of the last stage; defaults to megatron-core's.

    Returns:
        The tensor, on every rank of the group. A no-op without pipeline parallelism.
    """
    if group is None or src is None:
        from megatron.core import parallel_state as ps

        group = ps.get_pipeline_model_parallel_group() if group is None else group
        src = ps.get_pipeline_model_parallel_last_rank() if src is None else src
    if dist.get_world_size(group) == 1:
        return tensor
    if dist.get_rank() == src:
        if tensor is None or tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"the last stage must pass a tensor of shape {tuple(shape)}")
        buf = tensor.detach().to(dtype).contiguous()
    else:
        buf = torch.empty(tuple(shape), dtype=dtype, device=collective_device(group))
    dist.broadcast(buf, src=src, group=group)
    return buf
