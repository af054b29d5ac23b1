"""Rank functions for the torch-engine tests, run through ``run_on_ranks`` (module-level, so
they pickle). Each returns plain numbers and token lists; the tests assert on them.

One spawn of 2 ranks runs everything: first a TP=1 phase (DP=2), in which the two ranks do
different checks side by side, then a TP=2 phase that must reproduce rank 0's TP=1 outputs
for the same full weights.
"""

from __future__ import annotations

import torch

from nemo_gift.algorithms.interfaces import SamplingConfig
from nemo_gift.models.policy.config import ModelConfig, ParallelConfig

# GQA + QKV bias (Qwen2), and q/k norms + tied embeddings + explicit head dim (Qwen3).
QWEN2 = ModelConfig(arch="qwen2", num_layers=2, hidden_size=64, ffn_hidden_size=96, num_attention_heads=4,
                    num_query_groups=2, vocab_size=128, max_position_embeddings=64, add_qkv_bias=True)
# vocab 127: at TP=2 megatron pads the tables to 256 rows, which must never be sampled.
QWEN3 = ModelConfig(arch="qwen3", num_layers=2, hidden_size=64, ffn_hidden_size=96, num_attention_heads=4,
                    num_query_groups=2, kv_channels=32, vocab_size=127, max_position_embeddings=64,
                    qk_layernorm=True, tie_word_embeddings=True, rotary_base=1e6)
TINY_VOCAB = ModelConfig(arch="qwen2", num_layers=1, hidden_size=32, ffn_hidden_size=64, num_attention_heads=2,
                         vocab_size=8, max_position_embeddings=16)
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [3]]  # ragged on purpose
NEW_TOKENS = 8


def _layout(tp: int) -> None:
    """Set up megatron-core's groups for TP=``tp`` (a collective: every rank calls it)."""
    from nemo_gift.models.policy import parallel

    parallel.initialize(ParallelConfig(tensor_model_parallel_size=tp), seed=0)


def _build(cfg: ModelConfig, tp: int, seed: int, full_state=None):
    """A model in the current layout; local to this rank (no collectives), so the ranks may
    build different models."""
    from megatron.core import tensor_parallel

    from nemo_gift.models.policy import sharding
    from nemo_gift.models.policy.builder import build_gpt_model

    torch.manual_seed(seed)  # CPU initialization draws the full weights from it
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    model = build_gpt_model(cfg, ParallelConfig(tensor_model_parallel_size=tp))
    if full_state is not None:
        sharding.load_full_state(model, full_state)
    return model


def policy_logits(model, seqs: list[list[int]], vocab: int) -> list[torch.Tensor]:
    """Full-vocabulary logits ``[len(seq), V]`` of each sequence, from ``GPTModel.forward``
    without any cache (right-padded batch, causal mask), TP-gathered, cut to the real
    vocabulary ``vocab`` (megatron pads the tables when TP does not divide it)."""
    from megatron.core import tensor_parallel

    longest = max(len(s) for s in seqs)
    tokens = torch.zeros(len(seqs), longest, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s)
    pos = torch.arange(longest).expand(len(seqs), longest)
    mask = torch.triu(torch.ones(longest, longest, dtype=torch.bool), 1).view(1, 1, longest, longest)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = tensor_parallel.gather_from_tensor_model_parallel_region(model(tokens, pos, mask)).float()
    model.train(was_training)
    return [logits[i, : len(s), :vocab] for i, s in enumerate(seqs)]


def greedy_without_cache(model, prompts, steps: int, vocab: int) -> list[list[int]]:
    """Step-by-step argmax, recomputing the whole sequence each step (no KV cache)."""
    out = []
    for p in prompts:
        seq = list(p)
        for _ in range(steps):
            seq.append(int(policy_logits(model, [seq], vocab)[0][-1].argmax()))
        out.append(seq[len(p):])
    return out


def recomputed_logprob_error(model, prompts, out, sampling: SamplingConfig, vocab: int) -> float:
    """max |engine log-prob - policy's recomputed log-prob| over all generated tokens."""
    from nemo_gift.models.generation.sampling import token_logprobs

    seqs = out.sequences(prompts)
    worst = 0.0
    for r, (seq, logits) in enumerate(zip(seqs, policy_logits(model, seqs, vocab))):
        plen, length = len(prompts[int(out.prompt_index[r])]), int(out.lengths[r])
        targets = torch.tensor(seq[plen:])  # [L]
        recomputed = token_logprobs(logits[plen - 1: plen - 1 + length], targets, sampling)
        worst = max(worst, (recomputed - out.logprobs[r, :length]).abs().max().item())
    return worst


def _greedy_and_logprob_checks(cfg: ModelConfig) -> dict:
    from nemo_gift.models.generation.torch_engine import TorchGenerationEngine

    model = _build(cfg, 1, seed=11)
    res = {"reference": greedy_without_cache(model, PROMPTS, NEW_TOKENS, cfg.vocab_size)}
    greedy = SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0.0)
    tempered = SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0.7, seed=5)
    filtered = SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=1.3, top_k=20, top_p=0.9, seed=6)
    for impl in ("lean", "megatron"):
        engine = TorchGenerationEngine(model, cfg, impl=impl)
        out = engine.generate(PROMPTS, 2, greedy)
        res[f"{impl}/greedy"] = out.responses()
        res[f"{impl}/greedy_logprob_err"] = recomputed_logprob_error(model, PROMPTS, out, greedy, cfg.vocab_size)
        for name, sampling in (("tempered", tempered), ("filtered", filtered)):
            out = engine.generate(PROMPTS, 3, sampling)
            res[f"{impl}/{name}"] = out.responses()
            res[f"{impl}/{name}_logprob_err"] = recomputed_logprob_error(model, PROMPTS, out, sampling, cfg.vocab_size)
            # the tempered log-probs are not the untempered ones: the check can fail
            res[f"{impl}/{name}_vs_untempered_err"] = recomputed_logprob_error(
                model, PROMPTS, out, SamplingConfig(max_new_tokens=NEW_TOKENS), cfg.vocab_size)
    # the engine leaves the model as it found it
    res["core_attention_restored"] = all(
        type(layer.self_attention.core_attention).__name__ == "DotProductAttention"
        for layer in model.decoder.layers)
    res["training_mode_restored"] = model.training
    return res


def _stop_and_length_checks() -> dict:
    from nemo_gift.models.generation.torch_engine import TorchGenerationEngine

    model = _build(QWEN2, 1, seed=11)
    engine = TorchGenerationEngine(model, QWEN2)
    free = engine.generate(PROMPTS, 1, SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0.0))
    # a stop token that some responses produce midway and others never
    counts = torch.bincount(free.tokens[:, 1:-1].flatten(), minlength=QWEN2.vocab_size)
    stop = int(counts.argmax())
    out = engine.generate(PROMPTS, 1, SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0.0,
                                                     stop_token_ids=(stop, 127)))
    stats = dict(vars(engine.last_stats))
    sampled = engine.generate(PROMPTS, 4, SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=1.0,
                                                         stop_token_ids=tuple(range(0, 128, 9)), seed=3))
    sampled_stats = dict(vars(engine.last_stats))
    one = engine.generate(PROMPTS, 2, SamplingConfig(max_new_tokens=1, temperature=0.0))
    return {
        "free": free.responses(), "free_logprobs": free.logprobs.tolist(), "stop": stop,
        "tokens": out.tokens.tolist(), "lengths": out.lengths.tolist(), "logprobs": out.logprobs.tolist(),
        "reasons": out.finish_reasons, "pad": out.pad_token_id, "stats": stats,
        "sampled_lengths": sampled.lengths.tolist(), "sampled_reasons": sampled.finish_reasons,
        "sampled_responses": sampled.responses(), "sampled_stats": sampled_stats,
        "one_lengths": one.lengths.tolist(), "one_shape": list(one.tokens.shape),
    }


def _distribution_check(sampling: SamplingConfig, draws: int) -> dict:
    """First-token counts of ``draws`` responses to one prompt, and the expected probabilities
    from the policy's own logits (tiny vocabulary, so every cell is well populated)."""
    from nemo_gift.models.generation.sampling import filter_logits
    from nemo_gift.models.generation.torch_engine import TorchGenerationEngine

    model = _build(TINY_VOCAB, 1, seed=21)
    with torch.no_grad():  # sharpen the random init into a spread-out distribution
        model.output_layer.weight.mul_(15.0)
    engine = TorchGenerationEngine(model, TINY_VOCAB)
    out = engine.generate([[1, 2]], draws, sampling)
    logits = policy_logits(model, [[1, 2]], TINY_VOCAB.vocab_size)[0][-1]
    return {"counts": torch.bincount(out.tokens[:, 0], minlength=TINY_VOCAB.vocab_size).tolist(),
            "expected": torch.softmax(filter_logits(logits, sampling), -1).tolist(),
            "untempered": torch.softmax(logits, -1).tolist()}


def _refit_check() -> dict:
    """Outputs follow new weights after ``refit`` with HF-named tensors from the export mapping."""
    try:
        from nemo_gift.models.policy.hf_weights import export_hf_tensors
    except ImportError as e:
        return {"skipped": f"nemo_gift.models.policy.hf_weights is not importable: {e}"}
    from nemo_gift.models.generation.torch_engine import TorchGenerationEngine

    greedy = SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0.0)
    new = _build(QWEN2, 1, seed=99)
    new_tokens = TorchGenerationEngine(new, QWEN2).generate(PROMPTS, 1, greedy).responses()
    new_weights = list(export_hf_tensors(new, QWEN2))
    old = _build(QWEN2, 1, seed=11)
    engine = TorchGenerationEngine(old, QWEN2)
    before = engine.generate(PROMPTS, 1, greedy).responses()
    engine.sleep()
    engine.wake()
    engine.refit(iter(new_weights))
    after = engine.generate(PROMPTS, 1, greedy).responses()
    return {"before": before, "after": after, "new": new_tokens}


def _sleep_check() -> dict:
    from nemo_gift.models.generation.torch_engine import TorchGenerationEngine

    model = _build(QWEN2, 1, seed=11)
    engine = TorchGenerationEngine(model, QWEN2, offload_on_sleep=True)
    greedy = SamplingConfig(max_new_tokens=4, temperature=0.0)
    before = engine.generate(PROMPTS, 1, greedy).responses()
    engine.sleep()
    try:
        engine.generate(PROMPTS, 1, greedy)
        refused = False
    except RuntimeError:
        refused = True
    engine.wake()
    return {"refused_while_asleep": refused, "same_after_wake": engine.generate(PROMPTS, 1, greedy).responses() == before}


def _tp_outputs(model, cfg) -> dict:
    from nemo_gift.models.generation.torch_engine import TorchGenerationEngine

    res = {}
    for impl in ("lean", "megatron"):
        engine = TorchGenerationEngine(model, cfg, impl=impl)
        for name, sampling in (("greedy", SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0.0)),
                               ("sampled", SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0.9,
                                                          top_p=0.95, seed=17))):
            out = engine.generate(PROMPTS, 2, sampling)
            res[f"{impl}/{name}"] = {"tokens": out.responses(), "logprobs": out.logprobs}
    return res


def all_checks(rank: int, world_size: int) -> dict:
    """Rank 0: greedy/log-prob checks on both architectures, and the TP=1 reference outputs.
    Rank 1: stop/length, distributions, refit, sleep. Then both: TP=2 outputs, with the TP=1
    weights loaded through the engine's refit (HF names, vocabulary padding added)."""
    import torch.distributed as dist

    res: dict = {}
    hf_weights = None
    _layout(1)
    if rank == 0:
        res["qwen2"] = _greedy_and_logprob_checks(QWEN2)
        res["qwen3"] = _greedy_and_logprob_checks(QWEN3)
        model = _build(QWEN3, 1, seed=31)
        res["tp1"] = _tp_outputs(model, QWEN3)
        from nemo_gift.models.policy.hf_weights import export_hf_tensors

        hf_weights = [(name, t.clone()) for name, t in export_hf_tensors(model, QWEN3)]
    else:
        res["stop"] = _stop_and_length_checks()
        res["dist_temperature"] = _distribution_check(SamplingConfig(max_new_tokens=1, temperature=0.6, seed=1), 4000)
        res["dist_top_p"] = _distribution_check(
            SamplingConfig(max_new_tokens=1, temperature=1.0, top_p=0.7, seed=2), 4000)
        res["dist_top_k"] = _distribution_check(
            SamplingConfig(max_new_tokens=1, temperature=1.5, top_k=3, seed=3), 4000)
        res["refit"] = _refit_check()
        res["sleep"] = _sleep_check()
    shared = [hf_weights]
    dist.broadcast_object_list(shared, src=0)
    _layout(2)
    model = _build(QWEN3, 2, seed=77)
    res["tp2_padded_rows"] = model.embedding.word_embeddings.weight.shape[0] * 2
    from nemo_gift.models.generation.torch_engine import TorchGenerationEngine

    TorchGenerationEngine(model, QWEN3).refit(iter(shared[0]))
    res["tp2"] = _tp_outputs(model, QWEN3)
    return res
