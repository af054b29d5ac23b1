"""Rank-side checks of the optimizer and the reference model (TP=2 on 2 gloo ranks)."""

from __future__ import annotations

import torch

SEQ, BATCH = 8, 4


def _model_cfg():
    from nemo_gift.models.policy.config import ModelConfig

    return ModelConfig(arch="qwen2", num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                       num_query_groups=2, vocab_size=64, max_position_embeddings=SEQ, add_qkv_bias=True)


def _batch():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 64, (BATCH, SEQ), generator=g)
    pos = torch.arange(SEQ).unsqueeze(0).expand(BATCH, SEQ)
    mask = torch.triu(torch.ones(SEQ, SEQ, dtype=torch.bool), 1).view(1, 1, SEQ, SEQ)
    return tokens, torch.roll(tokens, -1, dims=1), pos, mask


def _loss(model, tokens, labels, pos, mask):
    from megatron.core import tensor_parallel

    logits = model(tokens, pos, mask)  # [b, s, V/TP]
    return tensor_parallel.vocab_parallel_cross_entropy(
        logits.transpose(0, 1).contiguous(), labels.transpose(0, 1).contiguous()
    ).mean()


def _full(model, attr: str = "param"):
    from nemo_gift.models.policy import sharding

    local = {n: (p.main_grad if attr == "grad" else p) for n, p in model.named_parameters()}
    return {k: v.clone() for k, v in sharding.gather_full(model, local).items()}  # replicated ones alias


def optimizer_and_reference_checks(rank, world_size) -> dict:
    from nemo_gift.models.policy import parallel
    from nemo_gift.models.policy.builder import build_gpt_model, wrap_for_training
    from nemo_gift.models.policy.config import ParallelConfig
    from nemo_gift.models.policy.optimizer import (
        OptimizerSettings,
        build_optimizer,
        build_scheduler,
        optimizer_step,
    )
    from nemo_gift.models.policy.reference import ReferenceModel

    cfg, layout = _model_cfg(), ParallelConfig(tensor_model_parallel_size=2)
    parallel.initialize(layout, seed=5)
    tokens, labels, pos, mask = _batch()
    out: dict = {}

    # --- Adam with warmup + cosine reduces the loss; the reference stays where it was.
    model = build_gpt_model(cfg, layout)
    ref = ReferenceModel.from_policy(model, cfg, layout, offload=True)
    out["ref_offloaded_at_rest"] = ref.offloaded and all(p.numel() == 0 for p in ref.module.parameters())
    with torch.no_grad():
        initial_loss = _loss(model, tokens, labels, pos, mask).item()
    ddp = wrap_for_training(model, layout)
    settings = OptimizerSettings(lr=3e-2, schedule="cosine", warmup_steps=2, decay_steps=8, min_lr=3e-3, clip_grad=1.0)
    opt = build_optimizer([ddp], settings, layout)
    sched = build_scheduler(opt, settings)
    losses, lrs = [], []
    for _ in range(8):
        ddp.zero_grad_buffer()
        opt.zero_grad()
        loss = _loss(ddp, tokens, labels, pos, mask)
        loss.backward()
        ddp.finish_grad_sync()
        result = optimizer_step(opt, sched)
        losses.append(loss.item())
        lrs.append(result.lr)
    out["losses"], out["lrs"], out["initial_loss"] = losses, lrs, initial_loss

    # Reference: frozen, no grads, still the initial weights, and the offload round trip keeps them.
    out["ref_requires_grad"] = any(p.requires_grad for p in ref.module.parameters())
    with ref.on_device() as module:
        ref_full = _full(module)
        ref_loss = _loss(module, tokens, labels, pos, mask)
        out["ref_loss_has_grad_fn"] = ref_loss.grad_fn is not None
        out["ref_loss"] = ref_loss.item()
    out["ref_offloaded_after_use"] = ref.offloaded
    ref.keep_offloaded = False
    ref.reload()
    out["ref_round_trip_bitwise"] = all(torch.equal(ref_full[k], v) for k, v in _full(ref.module).items())
    out["ref_grads"] = [n for n, p in ref.module.named_parameters() if p.grad is not None]

    # --- SGD without momentum: the update is exactly -lr * the clipped gradient (a large lr,
    # so that fp32 rounding of (after - before) stays far below the tolerance).
    layout2 = ParallelConfig(tensor_model_parallel_size=2)
    parallel.initialize(layout2, seed=6)
    model = build_gpt_model(cfg, layout2)
    ddp = wrap_for_training(model, layout2)
    clip = 0.05
    sgd = OptimizerSettings(optimizer="sgd", lr=100.0, clip_grad=clip)
    opt = build_optimizer([ddp], sgd, layout2)
    sched = build_scheduler(opt, sgd)
    ddp.zero_grad_buffer()
    opt.zero_grad()
    _loss(ddp, tokens, labels, pos, mask).backward()
    ddp.finish_grad_sync()
    before, grads = _full(model), _full(model, "grad")
    true_norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())).item()
    result = optimizer_step(opt, sched)
    after = _full(model)
    step_norm = torch.sqrt(sum(((after[k] - before[k]).double() ** 2).sum() for k in before)).item()
    out.update(grad_norm=result.grad_norm, true_grad_norm=true_norm, step_norm=step_norm, clip=clip, sgd_lr=sgd.lr)
    return out
