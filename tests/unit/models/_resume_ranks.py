"""Rank side of the allowed-resume check: a MegatronPolicy resumed with new optimizer settings."""

from __future__ import annotations

import torch

from ._ranks import BATCH, _batch, _loss, _model_cfg

STEPS = 3


def _policy(settings):
    from nemo_gift.models.policy.config import ParallelConfig
    from nemo_gift.models.policy.megatron_policy import MegatronPolicy

    policy = MegatronPolicy(_model_cfg(), ParallelConfig(), micro_batch_size=BATCH, with_reference=False)
    policy.configure_optimizer(settings)
    return policy


def _adam_state(policy) -> list[torch.Tensor]:
    """Every Adam state tensor, parameter by parameter in param-group order (a loaded optimizer's
    ``state`` dict is filled in load order, so its own order is not the parameters')."""
    inner = policy.optimizer.optimizer
    return [v.clone() for g in inner.param_groups for p in g["params"]
            for _, v in sorted(inner.state[p].items()) if torch.is_tensor(v)]


def resumed_with_new_settings(rank, world_size, root, old, new) -> dict:
    from nemo_gift.models.policy import parallel
    from nemo_gift.models.policy import checkpoint
    from nemo_gift.models.policy.config import ParallelConfig
    from nemo_gift.models.policy.optimizer import optimizer_step

    parallel.initialize(ParallelConfig(), seed=5)
    tokens, labels, pos, mask = _batch()
    trained = _policy(old)
    for _ in range(STEPS):
        trained.model.zero_grad_buffer()
        trained.optimizer.zero_grad()
        _loss(trained.model, tokens, labels, pos, mask).backward()
        trained.model.finish_grad_sync()
        optimizer_step(trained.optimizer, trained.scheduler)
    path = trained.save(str(root), STEPS, {"step": STEPS})
    out = {"saved_lr": trained.optimizer.param_groups[0]["lr"]}

    resumed = _policy(new)
    resumed.load(path)
    groups = resumed.optimizer.param_groups
    out["lr"] = [g["lr"] for g in groups]
    out["betas"] = [tuple(g["betas"]) for g in groups]
    out["decayed_wd"] = [g["weight_decay"] for g in groups if g.get("wd_mult", 1.0) == 1.0]
    out["moments_restored"] = all(torch.equal(a, b) for a, b in zip(_adam_state(trained), _adam_state(resumed)))
    out["next_lrs"] = []
    for _ in range(2):  # the new schedule goes on from the restored step
        resumed.model.zero_grad_buffer()
        resumed.optimizer.zero_grad()
        _loss(resumed.model, tokens, labels, pos, mask).backward()
        resumed.model.finish_grad_sync()
        out["next_lrs"].append(optimizer_step(resumed.optimizer, resumed.scheduler).lr)

    # Control: the raw checkpoint load, without apply_settings, leaves the saved schedule in charge.
    raw = _policy(new)
    checkpoint.load_checkpoint(path, raw.model, raw.optimizer, raw.scheduler)
    out["raw_lr"] = raw.optimizer.param_groups[0]["lr"]
    return out
