"""megatron-core ``forward_step``/``loss_func`` for a micro-batch objective, on any TP/PP/DP layout.

An optimizer step sees a mini-batch of N = K * G responses: K groups (prompts) of G. It is
dealt over D data-parallel ranks and M micro-batches per rank in contiguous slices by
:func:`micro_batches`. On the last pipeline stage, the loss function of micro-batch ``j`` of DP
rank ``d`` does two things:

1. it computes ``log pi(labels)`` [b, S] from the vocab-parallel logits
   (:func:`vocab_parallel_logprobs`);
2. it calls an objective ``objective(logprobs, micro_batch) -> (l_{j,d}, metrics)``
   (:data:`nemo_gift.algorithms.interfaces.Objective`, e.g.
   :func:`nemo_gift.algorithms.objectives.gift_objective`).

The objective carries the step's GLOBAL normalizer, so the step's loss is
``L = sum_{j,d} l_{j,d}`` whatever D, M, TP and PP are.

Scaling contract (megatron-core 0.16, default ``calculate_per_token_loss=False``): the
schedule divides the tensor a ``loss_func`` returns by M, and DDP averages the gradients over
the D ranks. ``loss_func`` therefore returns ``l_{j,d} * M * D`` for backward, so that the
reduced ``main_grad`` is exactly dL/dtheta. It reports the unscaled ``l_{j,d}`` as the
``loss`` metric. ``calculate_per_token_loss=True`` (gradients summed over DP, no division by M)
is refused rather than silently mis-scaled. :func:`run_step` sums the reported values over
the micro-batches and DP ranks. M is each rank's own count ``M_d`` (the schedule divides by the
``num_microbatches`` it is given), so ranks may differ in M, as token-budget micro-batches do
(:func:`packed_micro_batches`): ``(1/D) sum_d (1/M_d) sum_j M_d D dl_{j,d} = dL``.

With ``fused_lm_head`` (``parallel.fused_lm_head_logprobs``) the model's output layer computes
the log-probs itself, chunk by chunk, and the model returns them instead of the logits
(:mod:`nemo_gift.models.policy.lm_head`); the loss function then takes them as they come.

PP: only the last stage has logits, so only it computes log-probs and the loss.
:func:`broadcast_from_last_stage` gives the results to the other stages (``docs/parallelism.md``).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Mapping, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nemo_gift.algorithms.packing import sequence_lengths
from nemo_gift.algorithms.rollout import padded_length, select
from nemo_gift.distributed.logprobs import broadcast_from_last_stage, vocab_parallel_logprobs
from nemo_gift.models.policy.lm_head import fused_logprobs_head

__all__ = [
    "micro_batches", "packed_micro_batches", "unpack_rows", "allow_variable_shapes", "make_forward_step", "run_step",
    "forward_logprobs",
]

MicroBatch = Mapping[str, torch.Tensor]


def micro_batches(
    batch: MicroBatch, *, dp_rank: int, dp_size: int, micro_batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """This DP rank's M micro-batches of a mini-batch of N rows, in contiguous slices.

    ``b = gcd(micro_batch_size, N / D)`` rows each, ``M = N / (D * b)``: micro-batch step ``j``
    holds rows ``[j*D*b, (j+1)*D*b)`` and DP rank ``d`` takes its ``d``-th slice of ``b``. A
    group of G contiguous rows straddles ranks or micro-batches only when G does not divide
    ``b``; the objective then carries group statistics computed over the whole mini-batch.
    """
    n = batch["tokens"].shape[0]
    if n % dp_size:
        raise ValueError(f"{n} rows do not split over {dp_size} data-parallel ranks")
    b = math.gcd(micro_batch_size, n // dp_size)
    step_rows = dp_size * b
    return [
        select(dict(batch), torch.arange(j * step_rows + dp_rank * b, j * step_rows + (dp_rank + 1) * b))
        for j in range(n // step_rows)
    ]


def packed_micro_batches(
    batch: MicroBatch, rows: list[list[int]], pad_multiple: int = 1
) -> list[dict[str, torch.Tensor]]:
    """The micro-batches of a token-budget plan (:func:`nemo_gift.algorithms.packing.plan_micro_batches`):
    micro-batch ``j`` holds the rows ``rows[j]``, and every [N, S] field is cut to that micro-batch's
    own ``S_j = padded_length(longest row, pad_multiple)`` (its longest row's true length from
    ``loss_mask``). The columns cut are padding: with causal attention they change no log-prob."""
    width = batch["tokens"].shape[1]
    out = []
    for index in rows:
        mb = select(dict(batch), torch.tensor(index, dtype=torch.long))
        s = min(width, padded_length(max(sequence_lengths(mb["loss_mask"])), pad_multiple))
        out.append({k: v[:, :s] if v.dim() >= 2 and v.shape[1] == width else v for k, v in mb.items()})
    return out


def unpack_rows(packed: torch.Tensor, rows: list[list[int]], first_row: int, shape: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`packed_micro_batches` on a result: ``packed`` [sum_j b_j, max_j S_j] (micro-batch
    order) -> [n, S] in row order (row ``r`` at ``r - first_row``), zero beyond each micro-batch's
    ``S_j`` (positions no loss reads)."""
    out = packed.new_zeros(shape)  # [n, S]
    index = torch.tensor([r - first_row for mb in rows for r in mb], dtype=torch.long, device=packed.device)
    out[index, : packed.shape[1]] = packed
    return out


def allow_variable_shapes(*modules) -> None:
    """Let megatron-core's pipeline schedules send activations of a different [S, b, h] per
    micro-batch: with ``variable_seq_lengths`` each p2p transfer first exchanges its shape
    (``P2PCommunicator._communicate_shapes`` in ``pipeline_parallel/p2p_communication.py``, 0.16,
    and the channel-based communicator of later versions); otherwise the receiving stage allocates
    the ``seq_length`` x ``micro_batch_size`` shape given to the schedule. Needed with PP > 1 only."""
    for module in modules:
        module.config.variable_seq_lengths = True


def _model_inputs(mb: MicroBatch):
    """(tokens, position_ids [b, S], attention mask [1, 1, S, S] with True = masked); causal
    unless the micro-batch brings ``position_ids`` / ``attention_mask``."""
    tokens = mb["tokens"]
    b, s = tokens.shape
    pos = mb.get("position_ids")
    if pos is None:
        pos = torch.arange(s, device=tokens.device).unsqueeze(0).expand(b, s)
    mask = mb.get("attention_mask")
    if mask is None:
        mask = torch.triu(torch.ones(s, s, dtype=torch.bool, device=tokens.device), 1).view(1, 1, s, s)
    return tokens, pos, mask


def _model_output(model, mb: MicroBatch, fused_lm_head: bool, chunk_size: Optional[int], inference_only: bool = False):
    """The model's output for a micro-batch: vocab-parallel logits [b, S, V/TP], or with
    ``fused_lm_head`` log pi(labels) [b, S] fp32 (:func:`fused_logprobs_head`)."""
    if not fused_lm_head:
        return model(*_model_inputs(mb))
    with fused_logprobs_head(model, mb["labels"], chunk_size=chunk_size, inference_only=inference_only):
        return model(*_model_inputs(mb))


def _grad_scale(model, num_microbatches: int) -> float:
    """M * D: undoes the schedule's 1/M and DDP's 1/D (see the module docstring)."""
    from megatron.core import parallel_state as ps

    if getattr(getattr(model, "config", None), "calculate_per_token_loss", False):
        raise ValueError(
            "the objective carries its own global normalizer; this step assumes "
            "calculate_per_token_loss=False (DDP averages over DP, the schedule divides by M)"
        )
    return float(num_microbatches * ps.get_data_parallel_world_size())


def make_forward_step(
    objective: Callable,
    *,
    num_microbatches: int,
    logprob_chunk_size: Optional[int] = None,
    overwrite_logits: bool = True,
    fused_lm_head: bool = True,
):
    """A megatron-core ``forward_step_func`` over micro-batch dicts (``tokens``, ``labels``, ...).

    Its loss function returns ``(l * M * D, metrics)``, where ``(l, metrics)`` is
    ``objective(logprobs, micro_batch)`` and ``metrics["loss"]`` is the unscaled ``l``.
    ``logprob_chunk_size`` and ``overwrite_logits`` go to :func:`vocab_parallel_logprobs`.
    Overwriting is safe here: the logits are the model's temporary output, read by nothing else.
    ``fused_lm_head``: the model returns the log-probs (``logprob_chunk_size`` tokens per chunk).
    """
    from megatron.core import parallel_state as ps

    def loss_func(mb, scale, logits):  # logits [b, S, V/TP], or log-probs [b, S] if fused_lm_head
        logprobs = logits if fused_lm_head else vocab_parallel_logprobs(
            logits, mb["labels"], ps.get_tensor_model_parallel_group(), logprob_chunk_size,
            overwrite_logits=overwrite_logits,
        )  # [b, S] fp32
        loss, metrics = objective(logprobs, mb)
        return loss * scale, dict(metrics, loss=loss.detach())

    def forward_step(data_iterator, model):
        mb = next(data_iterator)
        output = _model_output(model, mb, fused_lm_head, logprob_chunk_size)
        return output, partial(loss_func, mb, _grad_scale(model, num_microbatches))

    return forward_step


def run_step(
    model,
    micro_batches: list[MicroBatch],
    objective: Callable,
    *,
    logprob_chunk_size: Optional[int] = None,
    overwrite_logits: bool = True,
    fused_lm_head: bool = True,
) -> dict:
    """Forward and backward of one step's micro-batches through ``forward_backward_func``.

    ``model`` is the DDP-wrapped stage (:func:`nemo_gift.models.policy.builder.wrap_for_training`).
    Its grad buffers are zeroed first, and the gradients of ``L`` land in ``main_grad``. Returns,
    on every rank, ``{"loss": L}`` (a float: the micro-batch losses summed over micro-batches
    and DP ranks). On the last stage it also returns ``"metrics"``, one dict of floats per
    micro-batch. The optimizer step is the caller's.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel.schedules import get_forward_backward_func

    b, s = micro_batches[0]["tokens"].shape
    model.zero_grad_buffer()
    outputs = get_forward_backward_func()(
        forward_step_func=make_forward_step(
            objective, num_microbatches=len(micro_batches), logprob_chunk_size=logprob_chunk_size,
            overwrite_logits=overwrite_logits, fused_lm_head=fused_lm_head,
        ),
        data_iterator=iter(micro_batches), model=[model], num_microbatches=len(micro_batches),
        seq_length=s, micro_batch_size=b, forward_only=False,
    )
    last = ps.is_pipeline_last_stage()
    local = torch.stack([o["loss"] for o in outputs]).sum().reshape(1).double() if last else None
    total = broadcast_from_last_stage(local, (1,), torch.float64).clone()
    dist.all_reduce(total, group=ps.get_data_parallel_group())
    result = {"loss": float(total)}
    if last:
        result["metrics"] = [{k: float(v) for k, v in o.items()} for o in outputs]
    return result


def forward_logprobs(model, micro_batches: list[MicroBatch], *, logprob_chunk_size: Optional[int] = None,
                     fused_lm_head: bool = True) -> torch.Tensor:
    """log pi(labels) [sum_j b_j, max_j S_j] of this DP rank's micro-batches, on every TP and PP rank.

    Forward only, with ``inference_only`` log-probs (nothing kept for backward): the reference
    or rollout policy's log-probs. The last stage computes them, and
    :func:`broadcast_from_last_stage` gives them to the other stages.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel.schedules import get_forward_backward_func

    b, s = micro_batches[0]["tokens"].shape

    def loss_func(mb, logits):  # logits [b, S, V/TP], or log-probs [b, S] if fused_lm_head
        lp = logits if fused_lm_head else vocab_parallel_logprobs(
            logits, mb["labels"], ps.get_tensor_model_parallel_group(), logprob_chunk_size, inference_only=True
        )
        return lp.new_zeros(()), {"logprobs": lp}

    def forward_step(data_iterator, model):
        mb = next(data_iterator)
        return _model_output(model, mb, fused_lm_head, logprob_chunk_size, inference_only=True), partial(loss_func, mb)

    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(micro_batches), model=[model],
            num_microbatches=len(micro_batches), seq_length=s, micro_batch_size=b, forward_only=True,
        )
    rows = sum(mb["tokens"].shape[0] for mb in micro_batches)
    width = max(mb["tokens"].shape[1] for mb in micro_batches)  # token-budget micro-batches differ in S
    local = None
    if ps.is_pipeline_last_stage():
        local = torch.cat([F.pad(o["logprobs"], (0, width - o["logprobs"].shape[1])) for o in outputs])
    return broadcast_from_last_stage(local, (rows, width), torch.float32)
