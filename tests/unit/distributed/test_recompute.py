"""Full activation recompute (``parallel.recompute_activations``) changes neither the GIFT loss,
nor any gradient, nor the forward log-probs of a tiny megatron-core model (one gloo rank, fp32,
tolerance 1e-6). Sequence padding has its own test (test_padding.py)."""

import pytest
import torch

from nemo_gift.distributed.spawn import run_on_ranks

pytestmark = pytest.mark.distributed

G, K, SEQ, PROMPT = 4, 2, 13, 5


def _batch(vocab):
    g = torch.Generator().manual_seed(0)
    n = G * K
    tokens = torch.randint(0, vocab, (n, SEQ), generator=g)
    labels = torch.roll(tokens, -1, dims=1)
    lengths = torch.randint(3, SEQ - PROMPT + 1, (n,), generator=g)
    t = torch.arange(SEQ)
    loss_mask = (t >= PROMPT - 1) & (t < PROMPT - 1 + lengths.unsqueeze(1))  # [N, S]
    rewards = torch.randint(0, 2, (n,), generator=g).float()
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask,
            "baseline_logprobs": -4.0 + 0.5 * torch.randn(n, SEQ, generator=g)}, rewards


def _run(rank, world_size):
    from nemo_gift.algorithms.config import GiftLossConfig
    from nemo_gift.algorithms.normalization import explicit_advantages
    from nemo_gift.algorithms.objectives import gift_objective
    from nemo_gift.models.policy import parallel, sharding
    from nemo_gift.models.policy.builder import build_gpt_model, wrap_for_training
    from nemo_gift.models.policy.config import ParallelConfig
    from nemo_gift.models.policy.layout_check import default_model
    from nemo_gift.models.policy.step import forward_logprobs, micro_batches, run_step

    model_cfg = default_model()
    batch, rewards = _batch(model_cfg.vocab_size)
    cfg = GiftLossConfig()
    adv, _ = explicit_advantages(rewards, G, eps=cfg.eps, unbiased=cfg.unbiased_std)
    full = dict(batch, advantages=adv, group_index=torch.arange(G * K) // G)
    micro = micro_batches(full, dp_rank=0, dp_size=1, micro_batch_size=G)  # 2 micro-batches of one group
    objective = gift_objective(cfg, num_pairs=G * K, num_groups=K)
    state = None
    out = {}
    for name, recompute in (("plain", False), ("recompute", True)):
        layout = ParallelConfig(recompute_activations=recompute)
        parallel.initialize(layout, seed=3)
        model = build_gpt_model(model_cfg, layout)
        if state is None:
            state = {n: p.detach().clone() for n, p in model.named_parameters()}
        sharding.load_full_state(model, state)
        ddp = wrap_for_training(model, layout)
        step = run_step(ddp, micro, objective)
        grads = {n: p.main_grad.clone() for n, p in model.named_parameters()}
        lp = forward_logprobs(ddp, micro)
        out[name] = (step["loss"], grads, lp, model.config.recompute_granularity)
    return out


def test_recompute_changes_nothing():
    (out,) = run_on_ranks(_run, 1, timeout=240)
    loss, grads, lp, granularity = out["plain"]
    assert granularity is None and out["recompute"][3] == "full"
    assert loss > 0.01 and lp.shape == (G * K, SEQ)
    for name in ("recompute",):
        o_loss, o_grads, o_lp, _ = out[name]
        assert abs(o_loss - loss) <= 1e-6, name
        assert o_lp.shape == lp.shape and (o_lp - lp).abs().max() <= 1e-6, name
        for n, g in grads.items():
            assert (o_grads[n] - g).abs().max() <= 1e-6 * max(1.0, g.abs().max().item()), (name, n)
