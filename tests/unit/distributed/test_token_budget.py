"""Token-budget micro-batches (``trainer.max_tokens_per_micro_batch``) change neither the GIFT nor
the GRPO loss, nor any parameter gradient, nor the forward log-probs of a tiny megatron-core
model, for DP=4, TP=2 x DP=2, PP=2 x DP=2 and TP=2 x PP=2 (fp32, gloo, tolerance 1e-5).

Each DP rank packs its rows by length (:func:`nemo_gift.algorithms.packing.plan_micro_batches`),
every micro-batch cut to its own padded longest row (:func:`packed_micro_batches`): the ranks get
different micro-batch counts and shapes, so this also checks the per-rank M*D gradient scaling and
PP's variable-shape p2p (:func:`allow_variable_shapes`). GIFT's groups split, so the objective
carries the mini-batch's detached group moments, as the loop builds them under a budget.

The reference is one process without DDP or the pipeline schedule on the whole, uncut batch:
full-vocabulary ``torch.log_softmax``, the loss on all rows, ``loss.backward()``.
"""

import pytest
import torch

from nemo_gift.distributed.spawn import run_on_ranks

pytestmark = pytest.mark.distributed

G, K, SEQ, PROMPT = 4, 4, 32, 6  # N = 16 rows of 6 + 1..26 tokens
BUDGET, TOL = 72, 1e-5
# Weights after Adam steps at lr 1e-2: Adam moves a weight by about lr * m / sqrt(v), close to
# +-lr wherever |g| is tiny, so a gradient rounding difference of 1e-7 (another GEMM shape, the
# fused LM head's chunking) shows as up to ~1e-5 there; 5e-5 is 0.5% of one step, while a wrong
# gradient moves weights by ~lr. Losses and log-probs keep TOL.
WEIGHT_TOL = 5e-5
LAYOUTS = [(1, 1, 1), (2, 1, 2), (1, 2, 1), (2, 2, 4)]  # (tp, pp, pad multiple)


def _batch(vocab):
    g = torch.Generator().manual_seed(5)
    n = G * K
    tokens = torch.randint(1, vocab, (n, SEQ), generator=g)
    lengths = torch.randint(1, SEQ - PROMPT + 1, (n,), generator=g)  # response tokens
    lengths[:G] = torch.tensor([2, 3, 1, 4])  # group 0 short: at DP=4, rank 0 packs it in 1 micro-batch
    t = torch.arange(SEQ)
    tokens[t >= PROMPT + lengths.unsqueeze(1)] = 0  # right padding past each row
    labels = torch.roll(tokens, -1, dims=1)
    labels[:, -1] = 0
    loss_mask = (t >= PROMPT - 1) & (t < PROMPT - 1 + lengths.unsqueeze(1))  # [N, S]
    rewards = torch.randint(0, 2, (n,), generator=g).float()
    rewards[:G] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    batch = {"tokens": tokens, "labels": labels, "loss_mask": loss_mask,
             "baseline_logprobs": -4.8 + 0.7 * torch.randn(n, SEQ, generator=g),
             "old_logprobs_noise": 0.05 * torch.randn(n, SEQ, generator=g)}
    return batch, rewards


def _reference(model, batch, rewards):
    """Whole-batch GIFT and GRPO losses with every parameter's .grad, and the log-probs [N, S]."""
    from nemo_gift.algorithms.config import GiftLossConfig, GrpoLossConfig
    from nemo_gift.algorithms.losses import gift_loss, grpo_loss
    from nemo_gift.models.policy.step import _model_inputs

    out = {}
    for name in ("gift", "grpo"):
        model.zero_grad(set_to_none=True)
        logits = model(*_model_inputs(batch))  # [N, S, V]
        lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, batch["labels"].unsqueeze(-1)).squeeze(-1)
        if name == "gift":
            loss, _ = gift_loss(lp, batch["baseline_logprobs"], batch["loss_mask"], rewards, G, GiftLossConfig())
        else:
            old = lp.detach() + batch["old_logprobs_noise"]
            loss, _ = grpo_loss(lp, old, batch["baseline_logprobs"], batch["loss_mask"], rewards, G, GrpoLossConfig())
        loss.backward()
        out[name] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()})
    return out, lp.detach()


def _objectives(full, ref_logprobs):
    """The loop's objectives for one mini-batch: global normalizers, GIFT's detached group moments
    of the implicit reward over the whole mini-batch (split groups)."""
    from nemo_gift.algorithms.config import GiftLossConfig, GrpoLossConfig
    from nemo_gift.algorithms.normalization import group_moments, implicit_rewards
    from nemo_gift.algorithms.objectives import gift_objective, grpo_objective

    cfg = GiftLossConfig()
    s_now = implicit_rewards(ref_logprobs, full["baseline_logprobs"], full["loss_mask"],
                             cfg.implicit_reward, cfg.length_exponent)  # [N]
    moments = group_moments(s_now, full["group_index"], K)
    return {
        "gift": gift_objective(cfg, num_pairs=G * K, num_groups=K, implicit_moments=moments),
        "grpo": grpo_objective(GrpoLossConfig(), num_tokens=int(full["loss_mask"].sum()), num_sequences=G * K,
                               num_groups=K),
    }


def _run(rank, world_size):
    from megatron.core import parallel_state as ps

    from nemo_gift.algorithms.config import GiftLossConfig, GrpoLossConfig
    from nemo_gift.algorithms.normalization import explicit_advantages
    from nemo_gift.algorithms.packing import plan_micro_batches, sequence_lengths
    from nemo_gift.models.policy import parallel, sharding
    from nemo_gift.models.policy.builder import build_gpt_model, wrap_for_training
    from nemo_gift.models.policy.config import ParallelConfig
    from nemo_gift.models.policy.layout_check import default_model
    from nemo_gift.models.policy.step import (
        allow_variable_shapes, forward_logprobs, packed_micro_batches, run_step, unpack_rows,
    )

    model_cfg = default_model()
    batch, rewards = _batch(model_cfg.vocab_size)
    parallel.initialize(ParallelConfig(), seed=7)
    ref_model = build_gpt_model(model_cfg, ParallelConfig())
    full_state = {n: p.detach().clone() for n, p in ref_model.named_parameters()}
    refs, ref_logprobs = _reference(ref_model, batch, rewards)
    full = dict(batch, group_index=torch.arange(G * K) // G, old_logprobs=ref_logprobs + batch["old_logprobs_noise"],
                reference_logprobs=batch["baseline_logprobs"])  # pi_ref for GRPO's KL term
    objectives = _objectives(full, ref_logprobs)
    lengths = sequence_lengths(batch["loss_mask"])

    report = []
    for tp, pp, pad_multiple in LAYOUTS:
        layout = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
        parallel.initialize(layout, seed=99)  # another seed: the weights must come from the load
        model = build_gpt_model(model_cfg, layout)
        sharding.load_full_state(model, full_state)
        if pp > 1:
            allow_variable_shapes(model)
        ddp = wrap_for_training(model, layout)
        dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        plan = plan_micro_batches(lengths, dp_size=dp, max_tokens=BUDGET, pad_multiple=pad_multiple)
        for name, options in (("gift", GiftLossConfig()), ("grpo", GrpoLossConfig())):
            adv, _ = explicit_advantages(rewards, G, eps=options.eps, unbiased=options.unbiased_std)
            micro = packed_micro_batches(dict(full, advantages=adv), plan[dp_rank], pad_multiple)
            out = run_step(ddp, micro, objectives[name], logprob_chunk_size=5)
            grads = sharding.gather_full(model, {n: p.main_grad for n, p in model.named_parameters()})
            ref_loss, ref_grads = refs[name]
            diffs = {n: (grads[n] - ref_grads[n]).abs().max().item() for n in grads}
            report.append({
                "case": (tp, pp, name), "dp": dp, "plan": plan,
                "shapes": [tuple(mb["tokens"].shape) for mb in micro],
                "loss": out["loss"], "ref_loss": ref_loss, "names_match": sorted(grads) == sorted(ref_grads),
                "max_grad_diff": max(diffs.values()),
                "max_ref_grad": max(g.abs().max().item() for g in ref_grads.values()),
            })
        packed = forward_logprobs(ddp, micro, logprob_chunk_size=7)  # every stage: [sum b_j, max S_j]
        per = G * K // dp
        mine = unpack_rows(packed, plan[dp_rank], dp_rank * per, (per, SEQ))  # [N/D, S] in row order
        rows = slice(dp_rank * per, (dp_rank + 1) * per)
        mask = batch["loss_mask"][rows]
        report[-1]["logprob_diff"] = (mine - ref_logprobs[rows]).abs()[mask].max().item()
    return report


def test_token_budget_micro_batches_match_the_whole_batch_in_every_layout():
    results = run_on_ranks(_run, 4, timeout=400)
    for rank, report in enumerate(results):
        assert len(report) == 2 * len(LAYOUTS)
        for entry in report:
            where = f"rank {rank}, case {entry['case']}"
            assert entry["names_match"], where
            assert abs(entry["loss"] - entry["ref_loss"]) <= TOL, (where, entry)
            assert entry["max_grad_diff"] <= TOL * max(1.0, entry["max_ref_grad"]), (where, entry)
            assert entry.get("logprob_diff", 0.0) <= TOL, (where, entry)
            for s in (shape[1] for shape in entry["shapes"]):
                assert s % LAYOUTS[[c[:2] for c in LAYOUTS].index(entry["case"][:2])][2] == 0, (where, entry)
            assert all(b * s <= BUDGET for b, s in entry["shapes"]), (where, entry)
    first = results[0]
    assert first[0]["ref_loss"] > 0.1 and abs(first[1]["ref_loss"]) > 1e-3  # non-trivial losses
    # What the cases claim: micro-batches cut below S, and micro-batch counts that differ across DP ranks.
    assert any(s < SEQ for e in first for _, s in e["shapes"])
    dp4 = first[0]["plan"]
    assert first[0]["dp"] == 4 and len({len(rank_plan) for rank_plan in dp4}) > 1, dp4


def _policy_run(rank, world_size):
    """Two optimizer steps of MegatronPolicy with and without a token budget from the same weights,
    at DP=2 and at PP=2: losses, final weights and forward log-probs (policy.logprobs)."""
    from nemo_gift.algorithms.objectives import nll_objective
    from nemo_gift.models.policy import parallel, sharding
    from nemo_gift.models.policy.config import ParallelConfig
    from nemo_gift.models.policy.megatron_policy import MegatronPolicy
    from nemo_gift.models.policy.optimizer import OptimizerSettings

    from ._train_ranks import SEQ as S, full_weights, initial_weights, model_cfg

    weights = initial_weights()
    g = torch.Generator().manual_seed(2)
    n = 8
    tokens = torch.randint(3, 64, (n, S), generator=g)
    lengths = torch.tensor([3, 16, 5, 4, 9, 2, 14, 6])  # real tokens per row
    t = torch.arange(S)
    tokens[t >= lengths.unsqueeze(1)] = 0
    labels = torch.roll(tokens, -1, dims=1)
    loss_mask = t < (lengths - 1).unsqueeze(1)  # [N, S]: every next token of the row
    batch = {"tokens": tokens, "labels": labels, "loss_mask": loss_mask}
    out = {}
    for pp in (1, 2):
        for budget in (None, 32):
            layout = ParallelConfig(pipeline_model_parallel_size=pp)
            parallel.initialize(layout, seed=99)
            policy = MegatronPolicy(model_cfg(), layout, micro_batch_size=2, with_reference=False,
                                    max_tokens_per_micro_batch=budget)
            sharding.load_full_state(policy.module, weights)
            policy.configure_optimizer(OptimizerSettings(lr=1e-2, clip_grad=1.0))
            logprobs = policy.logprobs(batch)  # [N, S]
            steps = [policy.train_step(batch, nll_objective(num_tokens=int(loss_mask.sum())), group_size=1)
                     for _ in range(2)]
            out[(pp, budget)] = {"logprobs": logprobs[loss_mask], "losses": [s["loss"] for s in steps],
                                 "padding_frac": steps[0]["padding_frac"], "weights": full_weights(policy)}
    return out


def test_policy_with_a_token_budget_trains_like_the_fixed_micro_batches():
    results = run_on_ranks(_policy_run, 2, timeout=300)
    real = 3 + 16 + 5 + 4 + 9 + 2 + 14 + 6  # 59 tokens in 8 rows of S = 16
    for out in results:
        for pp in (1, 2):
            fixed, packed = out[(pp, None)], out[(pp, 32)]
            assert (fixed["logprobs"] - packed["logprobs"]).abs().max() <= TOL
            assert fixed["losses"] == pytest.approx(packed["losses"], abs=TOL)
            assert max((fixed["weights"][k] - packed["weights"][k]).abs().max() for k in fixed["weights"]) <= WEIGHT_TOL
            assert fixed["padding_frac"] == pytest.approx(1 - real / (8 * 16))
        # Budget 32, pad multiple 1, the fewest runs then the fewest tokens. DP=2: rank 0 rows 16, 5, 4, 3 ->
        # [16] [5, 4, 3] = 16 + 15 tokens; rank 1 rows 14, 9, 6, 2 -> [14, 9] [6, 2] = 28 + 12.
        # PP=2 (D=1): [16, 14] [9, 6] [5, 4, 3, 2] = 32 + 18 + 20 (greedy's [9, 6, 5] [4, 3, 2] would be 71).
        assert out[(1, 32)]["padding_frac"] == pytest.approx(1 - real / 71)
        assert out[(2, 32)]["padding_frac"] == pytest.approx(1 - real / 70)
