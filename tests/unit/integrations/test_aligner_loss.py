"""The Aligner actor's loss path (torch + megatron-core only; runs in the main venv).

Micro-batched GIFT losses on vocab-parallel logit shards must add up to nemo_gift's
``gift_loss`` of the whole mini-batch, with the same gradient, and the reported metrics must be
``gift_loss``'s. The reference is independent of the kernel under test: full-vocabulary logits
and torch's ``log_softmax``.
"""

import dataclasses
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from nemo_gift.algorithms import GiftLossConfig, gift_loss
from nemo_gift.utils.convert import ConfigError
from nemo_gift.distributed.spawn import run_on_ranks
from nemo_gift.integrations.nemo_aligner.loss import (
    METRIC_KEYS,
    GiftActorConfig,
    count_pairs,
    gift_actor_config,
    gift_microbatch_loss,
    local_groups,
    minibatch_metrics,
    token_logprobs,
)
from nemo_gift.integrations.nemo_aligner.rollout import build_gift_rollout_data, check_gift_batch_sizes
from tests.unit.integrations.test_aligner_rollout import aligner_rollout

G, V, M = 4, 24, 2
RECIPE = Path(__file__).resolve().parents[3] / "examples" / "nemo_aligner" / "conf" / "gpt_gift_actor.yaml"


def _batch(seed=0, baseline="reference", zero_std_group=True):
    rb = aligner_rollout(num_prompts=4, group_size=G, mbs=2, seed=seed)
    rb["response_tokens"] = rb["response_tokens"] % V
    g = torch.Generator().manual_seed(seed + 10)
    rb["rewards"] = torch.randn(rb["rewards"].shape[0], generator=g)
    data, _ = build_gift_rollout_data(rb, G, baseline)
    if zero_std_group:
        data["rewards"][G : 2 * G] = 0.5
    n, s = data["response_tokens"].shape
    logits = torch.randn(n, s, V, generator=g, dtype=torch.float64) * 2
    return data, logits


def _reference(data, logits, config):
    """gift_loss on the whole mini-batch, from full-vocabulary log_softmax."""
    logits = logits.clone().requires_grad_(True)
    tok = data["response_tokens"]
    lp = torch.log_softmax(logits, -1)[:, :-1].gather(-1, tok[:, 1:, None]).squeeze(-1)
    loss, metrics = gift_loss(lp, data["baseline_logprobs"], data["mask"], data["rewards"], G, config)
    loss.backward()
    return loss.detach(), metrics, logits.grad


def _microbatched(data, logits_shard, config, tp_group=None, chunk=None):
    """What the actor's loss_func does per micro-batch; the schedule's 1/M applied by hand."""
    n = logits_shard.shape[0]
    num_pairs = count_pairs(data["rewards"], data["group_ids"], config)
    reports, grads = [], []
    for j in range(M):
        rows = slice(j * n // M, (j + 1) * n // M)
        mb = {k: v[rows] for k, v in data.items()}
        shard = logits_shard[rows].clone().requires_grad_(True)
        scaled, report = gift_microbatch_loss(
            shard, mb, config, num_pairs=num_pairs, num_microbatches=M, tp_group=tp_group, chunk_size=chunk
        )
        (scaled / M).backward()
        reports.append(report)
        grads.append(shard.grad)
    metrics = minibatch_metrics(reports, data, config, num_pairs)
    return dict(zip(METRIC_KEYS, metrics.tolist())), torch.cat(grads)


CONFIGS = [
    GiftLossConfig(),
    GiftLossConfig(implicit_reward="kl_average", beta=0.7),
    GiftLossConfig(drop_zero_std_groups=True, std_guard="center_only"),
    GiftLossConfig(detach_implicit_stats=False, length_exponent=0.5),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "kl_average", "drop_zero_std", "attached_stats"])
def test_microbatches_add_up_to_gift_loss_tp1(config):
    data, logits = _batch()
    ref_loss, ref_metrics, ref_grad = _reference(data, logits, config)
    metrics, grad = _microbatched(data, logits, config)
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(float(ref_metrics[key]), rel=1e-9, abs=1e-12), key
    assert metrics["loss"] == pytest.approx(float(ref_loss), rel=1e-9)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)


def _tp_rank(rank, world_size, cfg_dict):
    config = GiftLossConfig(**cfg_dict)
    data, logits = _batch(seed=2)
    ref_loss, ref_metrics, ref_grad = _reference(data, logits, config)
    v = V // world_size
    shard = logits[..., rank * v : (rank + 1) * v].contiguous()
    metrics, grad = _microbatched(data, shard, config, tp_group=torch.distributed.group.WORLD, chunk=7)
    return {
        "metrics": metrics,
        "ref": {k: float(ref_metrics[k]) for k in METRIC_KEYS},
        "grad_err": float((grad - ref_grad[..., rank * v : (rank + 1) * v]).abs().max()),
    }


@pytest.mark.distributed
def test_microbatches_add_up_to_gift_loss_on_vocab_shards_tp2():
    cfg = {"drop_zero_std_groups": True}
    for res in run_on_ranks(_tp_rank, 2, args=(cfg,), timeout=120):
        for key in METRIC_KEYS:
            assert res["metrics"][key] == pytest.approx(res["ref"][key], rel=1e-9, abs=1e-12), key
        assert res["grad_err"] < 1e-12


def test_metric_keys_are_gift_loss_metrics():
    data, logits = _batch(zero_std_group=False)
    lp = torch.log_softmax(logits, -1)[:, :-1].gather(-1, data["response_tokens"][:, 1:, None]).squeeze(-1)
    _, metrics = gift_loss(lp, data["baseline_logprobs"], data["mask"], data["rewards"], G)
    assert set(metrics) == set(METRIC_KEYS)


def test_token_logprobs_use_aligners_shifted_layout():
    data, logits = _batch(zero_std_group=False)
    tok = data["response_tokens"]
    lp = token_logprobs(logits.clone(), tok)
    assert lp.shape == (tok.shape[0], tok.shape[1] - 1)
    ref = torch.log_softmax(logits, -1)[:, :-1].gather(-1, tok[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(lp.double(), ref, rtol=1e-12, atol=1e-12)


def test_count_pairs_and_local_groups():
    ids = torch.tensor([5, 5, 9, 9, 2, 2])
    index, k = local_groups(ids)
    assert index.tolist() == [0, 0, 1, 1, 2, 2] and k == 3
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    assert count_pairs(rewards, ids, GiftLossConfig()) == 6
    assert count_pairs(rewards, ids, GiftLossConfig(drop_zero_std_groups=True)) == 2
    assert count_pairs(torch.ones(6), ids, GiftLossConfig(drop_zero_std_groups=True)) == 1  # loss 0, no 0/0


def test_actor_config_from_yaml_node():
    cfg = OmegaConf.create({"gift": {"loss": {"beta": 0.5, "implicit_reward": "kl_average"}, "logprob_chunk_size": 64}})
    got = gift_actor_config(cfg)
    assert got == GiftActorConfig(loss=GiftLossConfig(beta=0.5, implicit_reward="kl_average"), logprob_chunk_size=64)
    assert gift_actor_config(OmegaConf.create({})) == GiftActorConfig()
    with pytest.raises(ConfigError, match="gift.loss"):
        gift_actor_config(OmegaConf.create({"gift": {"loss": {"betta": 1.0}}}))
    with pytest.raises((ConfigError, ValueError), match="logprob_chunk_size"):
        gift_actor_config({"gift": {"logprob_chunk_size": 0}})


def test_aligner_recipe_loads_and_validates():
    cfg = OmegaConf.load(RECIPE)
    gift = gift_actor_config(cfg.model)
    assert dataclasses.asdict(gift.loss) == dataclasses.asdict(GiftLossConfig())  # the documented defaults
    trainer = cfg.trainer.reinforce
    assert trainer.initial_policy_kl_penalty == 0
    dp = cfg.trainer.num_nodes * cfg.trainer.devices // (cfg.model.tensor_model_parallel_size * cfg.model.pipeline_model_parallel_size)
    check_gift_batch_sizes(trainer.num_rollouts_per_prompt, cfg.model.global_batch_size, cfg.model.micro_batch_size, dp)
