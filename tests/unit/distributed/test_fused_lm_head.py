"""``parallel.fused_lm_head_logprobs`` through the real megatron-core GPTModel: one training step
(``run_step``: loss and every parameter's ``main_grad``) and the forward-only log-probs
(``forward_logprobs``) are the same with the LM head fused (the model returns log-probs) and with
the logits path, fp32, tolerance 1e-5 (gradients: relative to the largest), at TP=1 (DP=2), TP=2,
TP=2 with sequence parallelism and PP=2, with untied and tied embeddings (the tied weight is the
embedding's on a single stage, the last stage's copy under PP).

Both paths run on the same model, one after the other; one spawn of 2 gloo ranks runs every layout.
"""

import dataclasses

import pytest
import torch

from nemo_gift.distributed.spawn import run_on_ranks

pytestmark = pytest.mark.distributed

N, SEQ = 8, 16
TOL = 1e-5
# (tp, pp, sequence_parallel, tied embeddings, logprob_chunk_size)
LAYOUTS = [(1, 1, False, False, None), (2, 1, False, True, 5), (2, 1, True, False, 7), (1, 2, False, True, None)]


def _batch(vocab):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (N, SEQ), generator=g)
    labels = torch.roll(tokens, -1, dims=1)
    weight = torch.rand(N, SEQ, generator=g) - 0.25  # token weights, mostly positive
    return {"tokens": tokens, "labels": labels, "weight": weight}


def _objective(logprobs, mb):
    loss = -(logprobs * mb["weight"]).sum() / (N * SEQ)
    return loss, {}


def _run_layouts(rank, world_size, layouts):
    from nemo_gift.models.policy import parallel
    from nemo_gift.models.policy.builder import build_gpt_model, wrap_for_training
    from nemo_gift.models.policy.config import ParallelConfig
    from nemo_gift.models.policy.layout_check import default_model
    from nemo_gift.models.policy.step import forward_logprobs, micro_batches, run_step
    from megatron.core import parallel_state as ps

    report = []
    for tp, pp, sp, tied, chunk in layouts:
        model_cfg = dataclasses.replace(default_model(), tie_word_embeddings=tied)
        layout = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, sequence_parallel=sp)
        parallel.initialize(layout, seed=3)
        model = build_gpt_model(model_cfg, layout)
        ddp = wrap_for_training(model, layout)
        batch = _batch(model_cfg.vocab_size)
        micro = micro_batches(batch, dp_rank=ps.get_data_parallel_rank(),
                              dp_size=ps.get_data_parallel_world_size(), micro_batch_size=2)
        results = {}
        for fused in (False, True):
            out = run_step(ddp, micro, _objective, logprob_chunk_size=chunk, fused_lm_head=fused)
            grads = {n: p.main_grad.clone() for n, p in model.named_parameters()}
            lp = forward_logprobs(ddp, micro, logprob_chunk_size=chunk, fused_lm_head=fused)
            results[fused] = (out["loss"], grads, lp)
        (loss0, g0, lp0), (loss1, g1, lp1) = results[False], results[True]
        head = [n for n in g0 if "output_layer" in n or "word_embeddings" in n]
        report.append({
            "layout": (tp, pp, sp, tied, chunk), "loss": (loss0, loss1),
            "grad_diff": max((g0[n] - g1[n]).abs().max().item() for n in g0),
            "grad_scale": max(g.abs().max().item() for g in g0.values()),
            "head_grad_norm": sum(g0[n].norm().item() for n in head),
            "logprob_diff": (lp0 - lp1).abs().max().item(),
            "logprob_mean": lp0.mean().item(),
        })
    return report


def test_fused_head_step_and_logprobs_equal_logits_path():
    results = run_on_ranks(_run_layouts, 2, args=(LAYOUTS,), timeout=600)
    for rank, report in enumerate(results):
        assert [e["layout"] for e in report] == LAYOUTS
        for e in report:
            where = f"rank {rank}, layout {e['layout']}"
            loss0, loss1 = e["loss"]
            assert abs(loss0) > 0.5, (where, e)  # a non-trivial loss
            assert abs(loss0 - loss1) <= TOL, (where, e)
            assert e["grad_diff"] <= TOL * e["grad_scale"], (where, e)  # relative to the largest grad
            assert e["logprob_diff"] <= TOL, (where, e)
            assert e["logprob_mean"] < -1.0, (where, e)  # real log-probs of a random model
    # The LM head's weight gets a gradient on the stage that holds it.
    assert any(e["head_grad_norm"] > 0 for r in results for e in r)
