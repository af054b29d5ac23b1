"""Rank side of tests/unit/generation/test_pi_old_sources.py: the tiny recipe's model
(conf/model/tiny.yaml), its MegatronPolicy and the torch engine on the policy's own module."""

from __future__ import annotations

import dataclasses

import torch

from nemo_gift.algorithms.config import GiftLossConfig, GrpoLossConfig
from nemo_gift.algorithms.interfaces import SamplingConfig

G = 4
PROMPTS = [[1, 5, 6, 13, 7, 17], [1, 9, 14, 4], [1, 12, 15, 3, 11, 16, 8], [1, 6]]  # ragged on purpose
SAMPLINGS = {
    "plain": SamplingConfig(max_new_tokens=12, temperature=1.0, seed=3),
    "filtered": SamplingConfig(max_new_tokens=12, temperature=0.7, top_k=6, top_p=0.9, seed=4),
}


def tiny_model_cfg():
    """conf/model/tiny.yaml, field for field."""
    from nemo_gift.models.policy.config import ModelConfig

    return ModelConfig(arch="qwen2", num_layers=2, hidden_size=128, ffn_hidden_size=256, num_attention_heads=4,
                       num_query_groups=2, vocab_size=18, max_position_embeddings=32, rotary_base=10000.0,
                       norm_epsilon=1e-6, add_qkv_bias=True, tie_word_embeddings=False)


def _parts(policy, engine):
    from nemo_gift.algorithms.gift import LoopParts

    def score(records, texts):  # rewards that vary within each group
        return torch.tensor([float(i % 3 == 0) for i in range(len(texts))]), ["wrong"] * len(texts)

    return LoopParts(policy=policy, engine=engine, score=score, encode=list, decode=lambda ids: "",
                     pad_token_id=0, sampler=None, eval_records=[], train_eval_records=[])


def _rollout(parts, sampling, policy_logprobs):
    from nemo_gift.algorithms.gift import generate_and_score
    from nemo_gift.algorithms.rollout import build_token_batch

    prompt_ids, responses, logprobs, rewards, _ = generate_and_score(
        parts, PROMPTS, G, sampling, policy_logprobs=policy_logprobs)
    index = [i // G for i in range(len(responses))]
    return build_token_batch(prompt_ids, responses, index, 0, logprobs), rewards


def _max_error(a, b, mask):
    return float(torch.where(mask, (a - b).abs(), torch.zeros_like(a)).max())


def _policy(seed):
    from nemo_gift.models.policy.config import ParallelConfig
    from nemo_gift.models.policy.megatron_policy import MegatronPolicy
    from nemo_gift.models.policy.optimizer import OptimizerSettings

    torch.manual_seed(seed)
    policy = MegatronPolicy(tiny_model_cfg(), ParallelConfig(), micro_batch_size=2 * G, with_reference=False)
    policy.configure_optimizer(OptimizerSettings(lr=1e-2, clip_grad=0.0))
    return policy


def _one_update(policy, batch, rewards, algorithm, source, mini_batch_prompts):
    """``update`` with pi_old from ``source`` (what the loop would pick: ``training_forward`` with
    one optimizer step per batch, else ``engine``); returns its metrics and the weights after."""
    from nemo_gift.algorithms import gift

    cfg = gift.LoopConfig(
        algorithm=algorithm, max_steps=1, group_size=G, mini_batch_prompts=mini_batch_prompts, micro_batch_size=2 * G,
        eval_every=0, checkpoint_every=0, keep_last=1, sampling=SAMPLINGS["plain"], eval_sampling=SAMPLINGS["plain"],
        algorithm_options={"gift": GiftLossConfig(), "grpo": GrpoLossConfig(beta_kl=0.0)},
    )
    original = gift.old_policy_source
    gift.old_policy_source = lambda *args: source
    try:
        metrics = gift.update(_parts(policy, None), cfg, dict(batch), rewards)
    finally:
        gift.old_policy_source = original
    weights = [p.detach().clone() for p in policy.module.parameters()]
    return metrics, weights


def pi_old_checks(rank: int, world_size: int) -> dict:
    from nemo_gift.models.generation.torch_engine import TorchGenerationEngine
    from nemo_gift.models.policy import parallel
    from nemo_gift.models.policy.config import ParallelConfig

    parallel.initialize(ParallelConfig(), seed=7)
    policy = _policy(seed=7)
    engine = TorchGenerationEngine(policy.module, tiny_model_cfg(), pad_token_id=0)
    parts = _parts(policy, engine)
    res = {}
    for name, sampling in SAMPLINGS.items():
        batch, rewards = _rollout(parts, sampling, policy_logprobs=True)
        recomputed = policy.logprobs(batch)  # [N, S], the trainer's forward
        res[f"{name}/engine_vs_recomputed"] = _max_error(batch["rollout_logprobs"], recomputed, batch["loss_mask"])
        sampled, _ = _rollout(parts, sampling, policy_logprobs=False)  # same seed: same tokens
        res[f"{name}/same_tokens"] = torch.equal(sampled["tokens"], batch["tokens"])
        res[f"{name}/sampled_vs_recomputed"] = _max_error(sampled["rollout_logprobs"], recomputed, batch["loss_mask"])
        res[f"{name}/tokens"] = int(batch["loss_mask"].sum())
    batch, rewards = _rollout(parts, SAMPLINGS["plain"], policy_logprobs=True)
    state = {k: v.clone() for k, v in policy.module.state_dict().items() if torch.is_tensor(v)}
    for algorithm in ("gift", "grpo"):
        for source, prompts_per_step in (("training_forward", len(PROMPTS)), ("engine", 2)):
            runs = {}
            for way in ("recomputed", source):
                policy = _policy(seed=7)
                policy.module.load_state_dict(state, strict=False)
                runs[way] = _one_update(policy, batch, rewards, algorithm, way, prompts_per_step)
            (m_ref, w_ref), (m, w) = runs["recomputed"], runs[source]
            res[f"{algorithm}/{source}/steps"] = m["train/optimizer_steps"]
            res[f"{algorithm}/{source}/loss"] = (m["train/loss"], m_ref["train/loss"])
            res[f"{algorithm}/{source}/grad_norm"] = (m["train/grad_norm"], m_ref["train/grad_norm"])
            res[f"{algorithm}/{source}/weights_max_diff"] = max(float((a - b).abs().max()) for a, b in zip(w, w_ref))
            res[f"{algorithm}/{source}/moved"] = max(float((a - s).abs().max()) for a, s in zip(w_ref, state.values()))
    return res
