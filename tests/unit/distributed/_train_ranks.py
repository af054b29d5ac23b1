"""Rank-side training runs shared by the layout-equivalence and checkpoint tests.

Every run trains the same tiny policy (:class:`MegatronPolicy`, megatron-core's optimizer) from
the same weights, on the same batches, with the NLL objective normalized by the global token
count, so that its per-step losses and weights do not depend on the layout. The weights are
those the TP=1/PP=1 model draws from ``INIT_SEED``; other layouts load them
(``sharding.load_full_state``), then draw nothing else.
"""

from __future__ import annotations

import torch

SEQ, ROWS, MICRO = 16, 8, 2  # S, N rows per step, micro-batch size
INIT_SEED = 11
LR = 1e-2


def model_cfg():
    """GQA, QKV bias and q/k norms: the parts whose TP sharding is easiest to get wrong."""
    from nemo_gift.models.policy.config import ModelConfig

    return ModelConfig(arch="qwen2", num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                       num_query_groups=2, vocab_size=64, max_position_embeddings=SEQ, add_qkv_bias=True,
                       qk_layernorm=True)


def batch(step: int) -> dict[str, torch.Tensor]:
    """Step ``step``'s batch: random tokens, the loss on a random ~3/4 of the positions."""
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(3, 64, (ROWS, SEQ), generator=g)
    labels = torch.roll(tokens, -1, dims=1)
    loss_mask = torch.rand(ROWS, SEQ, generator=g) < 0.75
    loss_mask[:, -1] = False
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask}


def initial_weights() -> dict[str, torch.Tensor]:
    """The TP=1/PP=1 weights drawn from ``INIT_SEED`` (needs a process group; builds no DDP)."""
    from nemo_gift.models.policy import parallel
    from nemo_gift.models.policy.builder import build_gpt_model
    from nemo_gift.models.policy.config import ParallelConfig

    layout = ParallelConfig()
    parallel.initialize(layout, seed=INIT_SEED)
    return {n: p.detach().clone() for n, p in build_gpt_model(model_cfg(), layout).named_parameters()}


def build_policy(layout, weights: dict[str, torch.Tensor] | None):
    """A policy at ``layout`` holding ``weights`` (or random ones when None), with Adam."""
    from nemo_gift.models.policy import parallel
    from nemo_gift.models.policy import sharding
    from nemo_gift.models.policy.megatron_policy import MegatronPolicy
    from nemo_gift.models.policy.optimizer import OptimizerSettings

    parallel.initialize(layout, seed=99)  # a different init: the weights must come from the load
    policy = MegatronPolicy(model_cfg(), layout, micro_batch_size=MICRO, with_reference=False)
    if weights is not None:
        sharding.load_full_state(policy.module, weights)
    policy.configure_optimizer(
        OptimizerSettings(lr=LR, clip_grad=1.0, weight_decay=0.01, warmup_steps=4, warmup_init_lr=LR / 10)
    )
    return policy


def train(policy, steps) -> list[float]:
    """One optimizer step per step in ``steps``; returns the losses."""
    from nemo_gift.algorithms.objectives import nll_objective

    losses = []
    for step in steps:
        b = batch(step)
        objective = nll_objective(num_tokens=int(b["loss_mask"].sum()))
        losses.append(policy.train_step(b, objective, group_size=1)["loss"])
    return losses


def full_weights(policy) -> dict[str, torch.Tensor]:
    """The unsharded weights (TP=1/PP=1 names), on every rank."""
    from nemo_gift.models.policy import sharding

    module = policy.module
    return {k: v.clone() for k, v in sharding.gather_full(module, dict(module.named_parameters())).items()}


def _inner_optimizers(optimizer):
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def full_adam_state(policy, key: str) -> dict[str, torch.Tensor]:
    """Adam's ``key`` (``exp_avg`` / ``exp_avg_sq``) of every parameter, unsharded, on every rank.

    Read from the optimizer's own state, independently of any checkpoint code: the distributed
    optimizer holds, per parameter, the flat slice ``param_range`` that this DP rank owns
    (zero-filled elsewhere and summed over DP here); the regular one holds the whole tensor.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from nemo_gift.models.policy import sharding

    owned = {}  # model param -> (this rank's state tensor, its flat range in the param)
    for opt in _inner_optimizers(policy.optimizer):
        if hasattr(opt, "model_fp32_groups"):  # DistributedOptimizer (fp32 params)
            for model_group, shard_group in zip(opt.model_fp32_groups, opt.shard_fp32_groups):
                for param, shard in zip(model_group, shard_group):
                    r = opt._get_model_param_range_map(param)["param"]
                    owned[param] = (opt.optimizer.state[shard][key], slice(r.start, r.end))
        else:
            for group in opt.optimizer.param_groups:
                for param in group["params"]:
                    owned[param] = (opt.optimizer.state[param][key], slice(0, param.numel()))
    distributed = any(hasattr(opt, "model_fp32_groups") for opt in _inner_optimizers(policy.optimizer))
    local = {}
    for name, param in policy.module.named_parameters():  # the same order on every DP rank
        flat = torch.zeros(param.numel())
        if param in owned:
            state, where = owned[param]
            flat[where] = state.reshape(-1)
        if distributed:
            dist.all_reduce(flat, group=ps.get_data_parallel_group())
        local[name] = flat.view_as(param)
    return {k: v.clone() for k, v in sharding.gather_full(policy.module, local).items()}


def reference_run(rank, world_size, steps: int) -> dict:
    """The TP=1/DP=1 run on one rank: initial weights, per-step losses, final weights."""
    from nemo_gift.models.policy.config import ParallelConfig

    weights = initial_weights()
    policy = build_policy(ParallelConfig(), weights)
    losses = train(policy, range(steps))
    return {"initial": weights, "losses": losses, "final": full_weights(policy)}


def layout_runs(rank, world_size, layouts: dict, weights, steps: int) -> dict:
    """Each named layout (``ParallelConfig`` kwargs) in turn, from ``weights``: per-step losses
    on every rank, final unsharded weights from rank 0."""
    from nemo_gift.models.policy.config import ParallelConfig

    out = {}
    for name, kwargs in layouts.items():
        kwargs = dict(kwargs)
        mutant = kwargs.pop("mutant_unmarked_norms", False)
        policy = build_policy(ParallelConfig(**kwargs), weights)
        if mutant:  # a negative control: sequence-parallel norm grads left partial over TP
            for p in policy.module.parameters():
                p.sequence_parallel = False
        losses = train(policy, range(steps))
        final = full_weights(policy)
        out[name] = {"losses": losses, "final": final if rank == 0 else None,
                     "optimizer": type(policy.optimizer).__name__,
                     "distributed": [type(o).__name__ for o in _inner_optimizers(policy.optimizer)]}
    return out


def rollout_batch(pad_multiple: int) -> dict[str, torch.Tensor]:
    """A GIFT mini-batch of K=2 prompts x G=4 responses, the longest sequence 13 tokens, padded
    to ``pad_multiple`` by the trainer's own ``build_token_batch``."""
    from nemo_gift.algorithms.rollout import build_token_batch

    g = torch.Generator().manual_seed(5)
    prompts = [[1, 7, 9, 12, 4], [1, 30, 31]]
    lengths = [8, 3, 5, 1, 10, 6, 2, 7]  # 5 + 8 = 13 is the longest sequence
    responses = [torch.randint(3, 64, (n,), generator=g).tolist() for n in lengths]
    logprobs = [(-torch.rand(n, generator=g)).tolist() for n in lengths]
    batch = build_token_batch(prompts, responses, [0, 0, 0, 0, 1, 1, 1, 1], 0, logprobs, pad_multiple)
    batch["baseline_logprobs"] = batch.pop("rollout_logprobs")
    batch["advantages"] = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.2, -0.4, -0.4, -0.4])
    batch["group_index"] = torch.arange(8) // 4
    return batch


def padding_runs(rank, world_size, layout_kwargs: dict, pad_multiples, weights) -> dict:
    """For each pad multiple: the policy's log-probs of the rollout batch, then one GIFT
    training step from ``weights`` (its loss and grad norm)."""
    from nemo_gift.algorithms.config import GiftLossConfig
    from nemo_gift.algorithms.objectives import gift_objective
    from nemo_gift.models.policy.config import ParallelConfig

    layout = ParallelConfig(**layout_kwargs)
    out = {}
    for m in pad_multiples:
        policy = build_policy(layout, weights)
        b = rollout_batch(m)
        logprobs = policy.logprobs(b)
        objective = gift_objective(GiftLossConfig(), num_pairs=8, num_groups=2)
        step = policy.train_step(b, objective, group_size=4)
        out[m] = {"S": b["tokens"].shape[1], "logprobs": logprobs, "loss_mask": b["loss_mask"],
                  "loss": step["loss"], "grad_norm": step["grad_norm"]}
    policy = build_policy(layout, weights)
    try:
        policy.logprobs(rollout_batch(1))
        out["unpadded_error"] = None
    except ValueError as err:
        out["unpadded_error"] = str(err)
    return out


def adam_steps(policy) -> list[float]:
    """The distinct Adam step counts held in the optimizer state (one when consistent)."""
    return sorted({float(state["step"]) for opt in _inner_optimizers(policy.optimizer)
                   for state in opt.optimizer.state.values() if "step" in state})


def optimizer_snapshot(policy) -> dict:
    """Unsharded weights and Adam moments, the Adam step and the LR, on every rank."""
    return {"weights": full_weights(policy), "exp_avg": full_adam_state(policy, "exp_avg"),
            "exp_avg_sq": full_adam_state(policy, "exp_avg_sq"), "adam_steps": adam_steps(policy),
            "lr": policy.optimizer.param_groups[0]["lr"]}


RESUME_STEP = 2
TRAINER_STATE = {"step": RESUME_STEP, "sampler": {"epoch": 0, "offset": 7}}


def resharding_source(rank, world_size, root: str, weights, layout_kwargs: dict) -> dict:
    """The uninterrupted run: steps 0, 1, a checkpoint, steps 2, 3. Then a fresh policy at
    the same layout resumes from the checkpoint and runs steps 2, 3 again."""
    from nemo_gift.models.policy.config import ParallelConfig

    layout = ParallelConfig(**layout_kwargs)
    policy = build_policy(layout, weights)
    train(policy, range(RESUME_STEP))
    path = policy.save(root, RESUME_STEP, TRAINER_STATE, keep_last=2)
    saved = optimizer_snapshot(policy)
    continued = train(policy, range(RESUME_STEP, RESUME_STEP + 2))
    fresh = build_policy(layout, None)
    state = fresh.load(path)
    resumed = train(fresh, range(RESUME_STEP, RESUME_STEP + 2))
    return {"path": path, "saved": saved if rank == 0 else None, "continued": continued,
            "resumed_same_layout": resumed, "trainer_state": state}


def resharding_target(rank, world_size, path: str, layout_kwargs: dict, try_other_optimizer: bool) -> dict:
    """Resume ``path`` at another layout: what the load restored, then steps 2, 3."""
    from nemo_gift.models.policy.config import ParallelConfig

    policy = build_policy(ParallelConfig(**layout_kwargs), None)
    state = policy.load(path)
    restored = optimizer_snapshot(policy)
    losses = train(policy, range(RESUME_STEP, RESUME_STEP + 2))
    out = {"restored": restored if rank == 0 else None, "losses": losses, "trainer_state": state}
    if try_other_optimizer:
        other = dict(layout_kwargs, use_distributed_optimizer=not layout_kwargs.get("use_distributed_optimizer"))
        try:
            build_policy(ParallelConfig(**other), None).load(path)
            out["other_optimizer_error"] = None
        except ValueError as err:
            out["other_optimizer_error"] = str(err)
    return out


def save_each_step(rank, world_size, root: str, layout_kwargs: dict, steps: int) -> list[float]:
    """``steps`` steps from the reference weights with a checkpoint after each (all kept);
    returns the losses."""
    from nemo_gift.models.policy.config import ParallelConfig

    policy = build_policy(ParallelConfig(**layout_kwargs), initial_weights())
    losses = []
    for step in range(steps):
        losses += train(policy, [step])
        policy.save(root, step + 1, {"step": step + 1}, keep_last=steps)
    return losses


def resume_newest_and_finish(rank, world_size, root: str, layout_kwargs: dict, steps: int) -> dict:
    """What the trainer does on ``checkpoint.resume=auto``: the newest intact checkpoint, then
    the remaining steps; returns the step resumed from, the losses and the warnings logged."""
    import logging

    from nemo_gift.models.policy import checkpoint
    from nemo_gift.models.policy.config import ParallelConfig

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger(checkpoint.__name__).addHandler(handler)
    path = checkpoint.resumable_checkpoint(root)
    policy = build_policy(ParallelConfig(**layout_kwargs), None)
    start = policy.load(str(path))["step"]
    return {"start": start, "losses": train(policy, range(start, steps)), "warnings": records}



def bf16_resume(rank, world_size, root: str, layout_kwargs: dict) -> dict:
    """bf16 parameters (fp32 main weights in the optimizer): steps 0-1, a checkpoint, steps 2-3;
    a fresh policy at the same layout loads it and runs steps 2-3 again."""
    from nemo_gift.models.policy.config import ParallelConfig

    layout = ParallelConfig(params_dtype="bfloat16", **layout_kwargs)
    policy = build_policy(layout, None)
    train(policy, range(RESUME_STEP))
    path = policy.save(root, RESUME_STEP, TRAINER_STATE, keep_last=1)
    continued = train(policy, range(RESUME_STEP, RESUME_STEP + 2))
    fresh = build_policy(layout, None)
    fresh.load(path)
    return {"dtypes": sorted({str(p.dtype) for p in policy.module.parameters()}), "continued": continued,
            "resumed": train(fresh, range(RESUME_STEP, RESUME_STEP + 2))}
