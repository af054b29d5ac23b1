"""The policy optimizer: megatron-core's optimizer, grad-norm clipping, and the LR schedule.

    ddp = wrap_for_training(model, parallel)
    opt = build_optimizer([ddp], settings, parallel)
    sched = build_scheduler(opt, settings)
    ... forward_backward_func(...) ...
    result = optimizer_step(opt, sched)        # clip, step, advance the LR

- Optimizer: ``megatron.core.optimizer.get_megatron_optimizer`` (Adam or SGD; fp32 master
  weights under bf16 params). ``parallel.use_distributed_optimizer`` shards its state over DP
  (ZeRO-1); on CPU it runs through the ``distributed_optimizer_types`` patch of
  :mod:`nemo_gift.distributed.cpu_compat`.
- Clipping: megatron-core clips by the global L2 norm of the gradients across every
  model-parallel rank (replicated parameters counted once) to ``clip_grad``; the norm before
  clipping is returned.
- LR schedule: megatron-core's ``OptimizerParamScheduler``. With ``W = warmup_steps``,
  ``D = decay_steps``, ``lr0 = warmup_init_lr``, the LR used by optimizer step ``k``
  (``k = 0, 1, ...``) is

  * ``lr0 + (lr - lr0) * k / W`` for ``k <= W`` (when ``W > 0``);
  * ``constant``: ``lr`` afterwards;
  * ``cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * (k - W) / (D - W))) / 2`` for
    ``W < k <= D``, then ``min_lr``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from nemo_gift.models.policy.config import ParallelConfig
from nemo_gift.utils.torch_utils import TORCH_DTYPES as _DTYPES

OptimizerKind = Literal["adam", "sgd"]
ScheduleKind = Literal["constant", "cosine"]


@dataclasses.dataclass
class OptimizerSettings:
    """Optimizer, clipping and LR schedule of the policy."""

    optimizer: OptimizerKind = "adam"
    """``adam`` (AdamW: decoupled weight decay) or ``sgd``."""
    lr: float = 3e-6
    """Peak learning rate (the GIFT paper's scripts use 3e-6)."""
    min_lr: float = 0.0
    """Final LR of the ``cosine`` schedule."""
    weight_decay: float = 0.0
    """Decoupled weight decay; megatron-core exempts biases and norm weights."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    sgd_momentum: float = 0.0
    """SGD momentum."""
    clip_grad: float = 1.0
    """Clip the global gradient L2 norm to this value; 0 disables clipping."""
    schedule: ScheduleKind = "constant"
    """``constant`` (after the warmup) or ``cosine`` decay to ``min_lr`` at ``decay_steps``."""
    warmup_steps: int = 0
    """Linear warmup from ``warmup_init_lr`` to ``lr`` over this many optimizer steps."""
    warmup_init_lr: float = 0.0
    """LR at step 0 when ``warmup_steps > 0``."""
    decay_steps: int | None = None
    """``cosine``: the optimizer step at which ``min_lr`` is reached (warmup included);
    must exceed ``warmup_steps``."""

    def __post_init__(self):
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optim.optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"optim.schedule must be constant or cosine, got {self.schedule!r}")
        if not 0.0 <= self.min_lr <= self.lr:
            raise ValueError(f"optim.min_lr={self.min_lr} must be in [0, optim.lr={self.lr}]")
        if not 0.0 <= self.warmup_init_lr <= self.lr:
            raise ValueError(f"optim.warmup_init_lr={self.warmup_init_lr} must be in [0, optim.lr={self.lr}]")
        for name in ("weight_decay", "clip_grad", "warmup_steps", "adam_eps", "sgd_momentum"):
            if getattr(self, name) < 0:
                raise ValueError(f"optim.{name} must be >= 0, got {getattr(self, name)}")
        if self.schedule == "cosine" and (self.decay_steps is None or self.decay_steps <= self.warmup_steps):
            raise ValueError(
                f"optim.schedule=cosine needs optim.decay_steps > optim.warmup_steps={self.warmup_steps}, "
                f"got {self.decay_steps}"
            )


def build_optimizer(model_chunks, settings: OptimizerSettings, parallel: ParallelConfig):
    """megatron-core's optimizer over the DDP-wrapped ``model_chunks`` (from ``wrap_for_training``)."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    dtype = _DTYPES[parallel.params_dtype]
    config = OptimizerConfig(
        optimizer=settings.optimizer,
        lr=settings.lr,
        min_lr=settings.min_lr,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        adam_eps=settings.adam_eps,
        sgd_momentum=settings.sgd_momentum,
        clip_grad=settings.clip_grad,
        bf16=dtype is torch.bfloat16,
        fp16=dtype is torch.float16,
        params_dtype=dtype,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
    )
    return get_megatron_optimizer(config, list(model_chunks))


def _schedule(settings: OptimizerSettings) -> dict:
    """The ``OptimizerParamScheduler`` attributes (and constructor arguments) of ``settings``."""
    warmup = settings.warmup_steps
    return dict(
        init_lr=settings.warmup_init_lr if warmup > 0 else settings.lr,
        max_lr=settings.lr,
        min_lr=settings.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=settings.decay_steps if settings.schedule == "cosine" else warmup + 1,  # unused when constant
        lr_decay_style=settings.schedule,
        start_wd=settings.weight_decay,
        end_wd=settings.weight_decay,
        wd_incr_steps=1,
        wd_incr_style="constant",
    )


def build_scheduler(optimizer, settings: OptimizerSettings):
    """megatron-core's ``OptimizerParamScheduler`` for ``settings`` (see the module docstring).

    It sets the LR of step 0 at once; call ``scheduler.step(1)`` after each optimizer step
    (:func:`optimizer_step` does). ``state_dict``/``load_state_dict`` resume it; then
    :func:`apply_settings` makes the current settings win over the checkpoint's.
    """
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    return OptimizerParamScheduler(optimizer, **_schedule(settings))


def apply_settings(optimizer, scheduler, settings: OptimizerSettings) -> None:
    """Make ``settings`` govern a restored optimizer and schedule, keeping their step and moments.

    A checkpoint restores the optimizer's param groups (megatron-core keeps ``max_lr``/``min_lr``
    in each, which its scheduler reads before its own), Adam's betas and eps, and the
    scheduler's LR settings, so after a load the saved values would silently win. This sets
    them all from ``settings`` and recomputes the LR and weight decay of the restored step:
    the LR is then the new schedule's at that step (the clipping threshold lives in the
    optimizer's config, built from ``settings``).
    """
    for name, value in _schedule(settings).items():
        setattr(scheduler, name, value)
    for group in optimizer.param_groups:
        group.update(max_lr=settings.lr, min_lr=settings.min_lr)
        if "betas" in group:
            group.update(betas=(settings.adam_beta1, settings.adam_beta2), eps=settings.adam_eps)
        if "momentum" in group:
            group["momentum"] = settings.sgd_momentum
    scheduler.step(increment=0)


@dataclasses.dataclass
class StepResult:
    """What one optimizer step reports."""

    updated: bool
    """False when megatron-core skipped the step (fp16 overflow)."""
    grad_norm: float
    """Global gradient L2 norm before clipping."""
    lr: float
    """The LR this step used."""


def optimizer_step(optimizer, scheduler) -> StepResult:
    """Clip, step (collective over the model-parallel and DP groups) and advance the schedule.

    Zero the grads before the next forward: ``ddp.zero_grad_buffer(); optimizer.zero_grad()``.
    """
    lr = optimizer.param_groups[0]["lr"]
    updated, grad_norm, _ = optimizer.step()
    scheduler.step(increment=1)
    return StepResult(bool(updated), float(grad_norm) if grad_norm is not None else float("nan"), float(lr))
