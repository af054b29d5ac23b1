"""The GIFT loss and every parameter gradient of a tiny megatron-core GPTModel are those of one
rank, for TP=2, PP=2, TP=2 x PP=2 and DP = 2 and 4, with 1 to 4 micro-batches, whole or split
groups, detached or differentiable group statistics (fp32, gloo, tolerance 1e-5).

The mini-batch is dealt as the trainer deals it (:func:`nemo_gift.models.policy.step.micro_batches`)
and the objective is built as the loop builds it: split groups carry the detached group statistics
of the implicit reward over the whole mini-batch (``implicit_moments``), as
:func:`nemo_gift.algorithms.gift.update` computes them.

The reference runs the same weights on one process without DDP or the pipeline schedule:
full-vocabulary ``torch.log_softmax`` and :func:`gift_loss` on the whole batch, then
``loss.backward()``. One spawn of 4 ranks builds each layout once and runs its cases.
Forward-only log-probs (the reference-policy path) are checked on every pipeline stage after
the last-stage broadcast.
"""

import pytest
import torch

from nemo_gift.distributed.spawn import run_on_ranks

pytestmark = pytest.mark.distributed

G, K, SEQ, PROMPT = 4, 4, 16, 6  # N = 16 responses of up to SEQ - PROMPT tokens
TOL = 1e-5

# (tp, pp, micro_batch_size, config overrides). D = 4 / (tp * pp), b = gcd(micro_batch_size, N / D).
CASES = [
    (1, 1, 4, {}),  # D=4, b=4: whole groups, local stats
    (1, 1, 2, {}),  # D=4, b=2: each group split over 2 DP ranks, mini-batch moments
    (1, 1, 4, {"detach_implicit_stats": False}),  # whole groups, gradients through the stats
    (2, 1, 4, {}),  # D=2, b=4: local
    (2, 1, 2, {}),  # D=2, b=2: split
    (2, 1, 8, {}),  # D=2, b=8: two groups per micro-batch
    (1, 2, 4, {"drop_zero_std_groups": True}),  # D=2 with PP, local, dropped groups
    (1, 2, 2, {}),  # PP with split groups
    (2, 2, 8, {}),  # D=1, b=8
    (2, 2, 4, {"detach_implicit_stats": False}),  # D=1, b=4, gradients through the stats
]


def _batch(vocab):
    """The mini-batch dict every rank holds: tokens, labels, loss_mask, baseline log-probs, rewards."""
    g = torch.Generator().manual_seed(0)
    n = G * K
    tokens = torch.randint(0, vocab, (n, SEQ), generator=g)
    labels = torch.roll(tokens, -1, dims=1)
    labels[:, -1] = 0
    lengths = torch.randint(3, SEQ - PROMPT + 1, (n,), generator=g)
    t = torch.arange(SEQ)
    loss_mask = (t >= PROMPT - 1) & (t < PROMPT - 1 + lengths.unsqueeze(1))  # [N, S]
    baseline = -4.8 + 0.7 * torch.randn(n, SEQ, generator=g)
    rewards = torch.randint(0, 2, (n,), generator=g).float()
    rewards[:G] = 1.0  # group 0 has constant rewards (A = 0; dropped under drop_zero_std_groups)
    rewards[G:2 * G] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "baseline_logprobs": baseline}, rewards


def _with_advantages(batch, rewards, cfg):
    """A on the whole batch's rewards, and the global pair count (as the training loop does)."""
    from nemo_gift.algorithms.normalization import explicit_advantages

    adv, zero_std = explicit_advantages(rewards, G, eps=cfg.eps, unbiased=cfg.unbiased_std)
    pairs = G * K - G * int(zero_std.sum()) if cfg.drop_zero_std_groups else G * K
    return dict(batch, advantages=adv), pairs


def _reference(model, batch, rewards, cfg):
    """Single-process GIFT loss and .grad of every parameter; full-vocab log_softmax."""
    from nemo_gift.algorithms.losses import gift_loss
    from nemo_gift.models.policy.step import _model_inputs

    model.zero_grad(set_to_none=True)
    logits = model(*_model_inputs(batch))  # [N, S, V]
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, batch["labels"].unsqueeze(-1)).squeeze(-1)
    loss, _ = gift_loss(logprobs, batch["baseline_logprobs"], batch["loss_mask"], rewards, G, cfg)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}, logprobs.detach()


def _objective(cfg, full, num_pairs, ref_logprobs, split):
    """The loop's GIFT objective: with split groups, the implicit reward's group moments over the
    whole mini-batch at this step's weights (the reference's log-probs: the same weights)."""
    from nemo_gift.algorithms.normalization import group_moments, implicit_rewards
    from nemo_gift.algorithms.objectives import gift_objective

    moments = None
    if split:
        s_now = implicit_rewards(
            ref_logprobs, full["baseline_logprobs"], full["loss_mask"], cfg.implicit_reward, cfg.length_exponent
        )  # [N]
        moments = group_moments(s_now, full["group_index"], K)
    return gift_objective(cfg, num_pairs=num_pairs, num_groups=K, implicit_moments=moments)


def _run_layouts(rank, world_size, cases):
    from megatron.core import parallel_state as ps

    from nemo_gift.algorithms.config import GiftLossConfig
    from nemo_gift.models.policy import parallel, sharding
    from nemo_gift.models.policy.builder import build_gpt_model, wrap_for_training
    from nemo_gift.models.policy.config import ParallelConfig
    from nemo_gift.models.policy.layout_check import default_model
    from nemo_gift.models.policy.step import forward_logprobs, micro_batches, run_step

    model_cfg = default_model()
    batch, rewards = _batch(model_cfg.vocab_size)
    parallel.initialize(ParallelConfig(), seed=7)
    ref_model = build_gpt_model(model_cfg, ParallelConfig())
    full_state = {n: p.detach().clone() for n, p in ref_model.named_parameters()}
    refs = {}  # config overrides -> (loss, grads, log-probs), all at TP = PP = 1 on this process
    for *_, overrides in cases:
        key = tuple(sorted(overrides.items()))
        if key not in refs:
            refs[key] = _reference(ref_model, batch, rewards, GiftLossConfig(**overrides))

    report = []
    for tp, pp in dict.fromkeys((c[0], c[1]) for c in cases):  # each layout built once, in order
        layout = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
        parallel.initialize(layout, seed=99)  # another seed: the weights must come from the load
        model = build_gpt_model(model_cfg, layout)
        sharding.load_full_state(model, full_state)
        ddp = wrap_for_training(model, layout)
        dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        for micro_batch_size, overrides in [c[2:] for c in cases if c[:2] == (tp, pp)]:
            cfg = GiftLossConfig(**overrides)
            key = tuple(sorted(overrides.items()))
            ref_loss, ref_grads, ref_logprobs = refs[key]
            full, num_pairs = _with_advantages(batch, rewards, cfg)
            full = dict(full, group_index=torch.arange(G * K) // G, row=torch.arange(G * K))
            micro = micro_batches(full, dp_rank=dp_rank, dp_size=dp, micro_batch_size=micro_batch_size)
            b = micro[0]["tokens"].shape[0]
            objective = _objective(cfg, full, num_pairs, ref_logprobs, split=b % G != 0)
            out = run_step(ddp, micro, objective, logprob_chunk_size=5 if len(micro) > 1 else None)
            grads = sharding.gather_full(model, {n: p.main_grad for n, p in model.named_parameters()})
            diffs = {n: (grads[n] - ref_grads[n]).abs().max().item() for n in grads}
            worst = max(diffs, key=diffs.get)
            idx = torch.cat([mb["row"] for mb in micro])
            logprobs = forward_logprobs(ddp, micro, logprob_chunk_size=7)  # on every stage
            report.append({
                "case": (tp, pp, micro_batch_size, key), "dp": dp, "num_micro": len(micro),
                "whole": b % G == 0, "num_pairs": num_pairs,
                "loss": out["loss"], "ref_loss": ref_loss, "names_match": sorted(grads) == sorted(ref_grads),
                "max_grad_diff": diffs[worst], "worst": worst,
                "max_ref_grad": max(g.abs().max().item() for g in ref_grads.values()),
                "logprob_diff": (logprobs - ref_logprobs[idx]).abs().max().item(),
                "micro_losses": [m["loss"] for m in out.get("metrics", [])],
                "metric_keys": sorted(out["metrics"][0]) if "metrics" in out else None,
            })
    return report


def test_gift_loss_and_grads_match_single_rank_in_every_layout():
    results = run_on_ranks(_run_layouts, 4, args=(CASES,), timeout=300)
    expected = sorted((tp, pp, m, tuple(sorted(o.items()))) for tp, pp, m, o in CASES)
    assert sorted(e["case"] for e in results[0]) == expected  # every case ran
    for rank, report in enumerate(results):
        assert len(report) == len(CASES)
        for entry in report:
            where = f"rank {rank}, case {entry['case']}"
            assert entry["names_match"], where
            assert abs(entry["loss"] - entry["ref_loss"]) <= TOL, (where, entry)
            assert entry["max_grad_diff"] <= TOL * max(1.0, entry["max_ref_grad"]), (where, entry)
            assert entry["logprob_diff"] <= TOL, (where, entry)
    # The cases exercise what they claim: whole and split groups, 1 to 4 micro-batches, DP = 1, 2, 4.
    first = results[0]
    assert {e["whole"] for e in first} == {True, False}
    assert {e["num_micro"] for e in first} >= {1, 2, 4}
    assert {e["dp"] for e in first} == {1, 2, 4}
    dropped = [e for e in first if ("drop_zero_std_groups", True) in e["case"][3]]
    assert dropped and all(e["num_pairs"] == G * (K - 1) for e in dropped)
    assert first[0]["ref_loss"] > 0.1  # a non-trivial loss: z and A disagree at random init
    last_stage = [e for res in results for e in res if e["metric_keys"]]
    assert all({"loss", "z_a_corr", "num_pairs"} <= set(e["metric_keys"]) for e in last_stage)
    for e in last_stage:  # the reported micro-batch losses are the unscaled l_{j,d}
        assert 0 < sum(e["micro_losses"]) <= e["loss"] + TOL
