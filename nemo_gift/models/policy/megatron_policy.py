"""The megatron-core policy behind :class:`nemo_gift.algorithms.interfaces.PolicyInterface`.

It owns this rank's stage of the trainable model (DDP-wrapped), the frozen reference, the
megatron-core optimizer and the LR schedule, and turns whole-batch requests from the loop into
per-rank work:

- :meth:`logprobs`: each data-parallel (DP) rank computes the log-probs of its N/D rows in
  micro-batches, forward only, through ``forward_backward_func`` (so PP works), with the
  vocab-parallel reduction (:mod:`nemo_gift.distributed.logprobs`); the last stage's result is
  broadcast over PP, then all-gathered over DP, so every rank returns the whole [N, S].
- :meth:`train_step`: the mini-batch is dealt over DP ranks and micro-batches in contiguous
  slices (:func:`nemo_gift.models.policy.step.micro_batches`: whole groups whenever the
  micro-batch size is a multiple of G); the objective's loss carries the global normalizer, and
  is scaled by M*D for backward to undo the schedule's 1/M and DDP's 1/D (the contract of
  :mod:`nemo_gift.models.policy.step`).

With ``max_tokens_per_micro_batch`` set, both deal each DP rank's rows into token-budget
micro-batches instead (:mod:`nemo_gift.algorithms.packing`: sorted by length, each padded to its
own longest row), and :meth:`logprobs` puts the rows back in order. ``train_step`` reports the
padding fraction of the update's micro-batches (all ranks) as ``padding_frac``.

Batches come in on any device (the loop builds them on the CPU); each micro-batch is moved to
the model's device here, and :meth:`logprobs` returns on the batch's device.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist

from nemo_gift.algorithms.packing import padding_fraction, plan_micro_batches, sequence_lengths
from nemo_gift.models.policy import checkpoint
from nemo_gift.models.policy.builder import build_gpt_model, wrap_for_training
from nemo_gift.models.policy.config import ModelConfig, ParallelConfig
from nemo_gift.models.policy.optimizer import (
    OptimizerSettings, apply_settings, build_optimizer, build_scheduler, optimizer_step,
)
from nemo_gift.models.policy.reference import ReferenceModel
from nemo_gift.models.policy.step import (
    allow_variable_shapes, forward_logprobs, micro_batches, packed_micro_batches, run_step, unpack_rows,
)


class MegatronPolicy:
    """A megatron-core GPT policy and its reference, for any TP/PP/DP layout (PolicyInterface)."""

    def __init__(self, model_cfg: ModelConfig, parallel: ParallelConfig, *, micro_batch_size: int,
                 logprob_chunk_size: int | None = None, with_reference: bool = True,
                 offload_reference: bool = False, max_tokens_per_micro_batch: int | None = None):
        from megatron.core import parallel_state as ps

        self.model_cfg, self.parallel = model_cfg, parallel
        self.micro_batch_size, self.chunk = micro_batch_size, logprob_chunk_size
        self.fused = parallel.fused_lm_head_logprobs
        self.module = build_gpt_model(model_cfg, parallel)
        self.model = wrap_for_training(self.module, parallel)
        self.reference = None
        if with_reference:
            self.reference = ReferenceModel.from_policy(self.module, model_cfg, parallel, offload=offload_reference)
        self.optimizer, self.scheduler = None, None
        self.optimizer_settings: OptimizerSettings | None = None
        self.dp_rank, self.dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
        self.dp_group = ps.get_data_parallel_group()
        self.device = next(self.module.parameters()).device
        self.max_tokens = max_tokens_per_micro_batch
        if self.max_tokens and parallel.pipeline_model_parallel_size > 1:  # micro-batches differ in [b, S]
            allow_variable_shapes(self.module, *([self.reference.module] if self.reference else []))

    # ---------------------------------------------------------------- optimizer
    def configure_optimizer(self, settings: OptimizerSettings) -> None:
        """A fresh megatron-core optimizer (state reset) and LR schedule."""
        self.optimizer = build_optimizer([self.model], settings, self.parallel)
        self.scheduler = build_scheduler(self.optimizer, settings)
        self.optimizer_settings = settings

    def sync_reference(self) -> None:
        """Make the reference a copy of the current weights (at the start of RL)."""
        if self.reference is not None:
            self.reference.load_from(self.module)

    # ---------------------------------------------------------------- PolicyInterface
    def _check_sequence_length(self, tokens: torch.Tensor) -> None:
        """megatron-core would assert deep in the forward; say which multiple is missing."""
        multiple = self.parallel.sequence_pad_multiple
        if tokens.shape[1] % multiple:
            raise ValueError(
                f"token batch of sequence length {tokens.shape[1]} is not a multiple of "
                f"{multiple}, which this layout needs (parallel.sequence_pad_multiple: TP under "
                f"sequence parallelism, the FP8 GEMM alignment); build it with pad_multiple={multiple}"
            )

    def _on_device(self, micro: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device, non_blocking=True) for key, value in micro.items()}

    def _dp_rows(self, n: int) -> slice:
        if n % self.dp_size:
            raise ValueError(f"batch of {n} rows does not split over {self.dp_size} data-parallel ranks")
        per = n // self.dp_size
        return slice(self.dp_rank * per, (self.dp_rank + 1) * per)

    def logprobs(self, batch: Mapping[str, torch.Tensor], *, reference: bool = False) -> torch.Tensor:
        """log pi(labels) [N, S] on every rank (see the module docstring)."""
        if reference and self.reference is None:
            raise ValueError("this policy was built without a reference model")
        tokens, labels = batch["tokens"], batch["labels"]
        self._check_sequence_length(tokens)
        rows = self._dp_rows(tokens.shape[0])
        plan = None
        if self.max_tokens:
            micro, plan, _ = self._packed({"tokens": tokens, "labels": labels, "loss_mask": batch["loss_mask"]})
        else:
            mine_t, mine_l = tokens[rows], labels[rows]
            b = math.gcd(self.micro_batch_size, mine_t.shape[0])
            micro = [self._on_device({"tokens": mine_t[i:i + b], "labels": mine_l[i:i + b]})
                     for i in range(0, mine_t.shape[0], b)]
        if reference:
            with self.reference.on_device() as module:
                local = forward_logprobs(module, micro, logprob_chunk_size=self.chunk, fused_lm_head=self.fused)
        else:
            was_training = self.module.training
            self.module.eval()
            try:
                local = forward_logprobs(self.module, micro, logprob_chunk_size=self.chunk, fused_lm_head=self.fused)
            finally:
                self.module.train(was_training)
        if plan is not None:  # back to the rank's row order and the batch's S
            local = unpack_rows(local, plan, rows.start, (rows.stop - rows.start, tokens.shape[1]))
        if self.dp_size > 1:
            parts = [torch.empty_like(local) for _ in range(self.dp_size)]
            dist.all_gather(parts, local.contiguous(), group=self.dp_group)
            local = torch.cat(parts)
        return local.to(tokens.device)

    def train_step(self, batch: Mapping[str, torch.Tensor], objective, *, group_size: int) -> dict[str, float]:
        """One optimizer step minimizing the sum of ``objective`` over this mini-batch."""
        if self.optimizer is None:
            raise RuntimeError("configure_optimizer() first")
        n = batch["tokens"].shape[0]
        self._check_sequence_length(batch["tokens"])
        if n % (self.dp_size * group_size):
            raise ValueError(f"{n} rows do not split into groups of {group_size} over {self.dp_size} DP ranks")
        if self.max_tokens:
            micro, _, padding = self._packed(batch)
        else:
            micro = [
                self._on_device(mb) for mb in micro_batches(
                    batch, dp_rank=self.dp_rank, dp_size=self.dp_size, micro_batch_size=self.micro_batch_size
                )
            ]
            lengths = sequence_lengths(batch["loss_mask"])  # every row padded to the batch's S
            padding = padding_fraction(lengths, [range(len(lengths))], width=batch["tokens"].shape[1])
        self.optimizer.zero_grad()
        out = run_step(self.model, micro, objective, logprob_chunk_size=self.chunk, fused_lm_head=self.fused)
        step = optimizer_step(self.optimizer, self.scheduler)
        result = {"grad_norm": step.grad_norm, "lr": step.lr, "update_ok": float(step.updated)}
        result.update(self._reduce_metrics(out.get("metrics")))
        result["loss"] = out["loss"]
        result["padding_frac"] = padding
        return result

    def _packed(self, batch: Mapping[str, torch.Tensor]) -> tuple[list[dict], list[list[int]], float]:
        """This rank's token-budget micro-batches (on the device), their row indices, and the
        padding fraction of every rank's micro-batches (the plan is the same on every rank)."""
        pad = self.parallel.sequence_pad_multiple
        lengths = sequence_lengths(batch["loss_mask"])
        plan = plan_micro_batches(lengths, dp_size=self.dp_size, max_tokens=self.max_tokens, pad_multiple=pad)
        micro = packed_micro_batches(batch, plan[self.dp_rank], pad)
        frac = padding_fraction(lengths, [rows for rank in plan for rows in rank], pad)
        return [self._on_device(mb) for mb in micro], plan[self.dp_rank], frac

    def _reduce_metrics(self, outputs: list[dict] | None) -> dict[str, float]:
        """The objective's metrics averaged over micro-batches and DP ranks, on every rank: sent
        from the last stage over PP, gathered over DP."""
        from megatron.core import parallel_state as ps

        local = None
        if ps.is_pipeline_last_stage():
            local = {k: [float(o[k]) for o in outputs] for k in sorted(outputs[0]) if k != "loss"}
        if ps.get_pipeline_model_parallel_world_size() > 1:
            box = [local]
            dist.broadcast_object_list(
                box, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
            )
            local = box[0]
        ranks = [local]
        if self.dp_size > 1:
            ranks = [None] * self.dp_size
            dist.all_gather_object(ranks, local, group=self.dp_group)
        out = {}
        for key in ranks[0]:
            values = [v for r in ranks for v in r[key]]
            out[key] = sum(values) / len(values)
        return out

    def hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The current weights under Hugging Face names (full tensors, streamed)."""
        from nemo_gift.models.policy.hf_weights import export_hf_tensors

        return export_hf_tensors(self.module, self.model_cfg)

    # ---------------------------------------------------------------- checkpoints
    def save(self, root: str, step: int, trainer_state: Mapping[str, Any], keep_last: int = 2) -> str:
        """Collectively save weights, optimizer (Adam moments included), LR schedule, RNG and
        ``trainer_state`` (JSON) as ``root/step_{step:06d}``; returns its path."""
        from nemo_gift.utils.convert import to_dict

        path = checkpoint.save_checkpoint(
            root, step, self.model, self.optimizer, self.scheduler, trainer_state=dict(trainer_state),
            model_config=to_dict(self.model_cfg), keep_last=keep_last,
        )
        return str(path)

    def load(self, path: str) -> dict[str, Any]:
        """Collectively restore a checkpoint, saved at this or another TP/PP/DP layout; returns its
        ``trainer_state``. The optimizer settings configured here win over the saved ones."""
        state = checkpoint.load_checkpoint(path, self.model, self.optimizer, self.scheduler)["trainer_state"]
        if self.optimizer_settings is not None:
            apply_settings(self.optimizer, self.scheduler, self.optimizer_settings)
        return state
