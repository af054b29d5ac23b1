"""The SFT warm-start cache key covers every input the warm start reads: changing any of them
changes the key (a stale warm start is never reused); changing anything else keeps it (runs
that differ only in RL settings share one warm start)."""

import pytest

from nemo_gift.launcher.main import load
from nemo_gift.train import sft_cache_key

BASE = ["sft.seed=5"]

# Each input of nemo_gift.train.warm_start and what it reads (train.sft_inputs).
INPUTS = [
    "optim.clip_grad=0.5",                      # the warm start clips with it
    "sft.steps=400", "sft.batch_size=64", "sft.lr=1e-3", "sft.seed=6",
    "model.num_layers=4", "model.hidden_size=64", "model.rotary_base=5000",
    "parallel.params_dtype=bfloat16",
    "data.arithmetic.max_digits=3", "data.arithmetic.teacher_carry_drop=0.5", "data.arithmetic.heldout_fraction=0.2",
    "trainer.micro_batch_size=32",               # the policy's gradient accumulation
    "trainer.logprob_chunk_size=4",
    "parallel.fused_lm_head_logprobs=false",     # another summation order of the LM head's log-probs
    "trainer.max_tokens_per_micro_batch=4096",   # another micro-batching
]
NOT_INPUTS = [
    "optim.lr=1e-3", "optim.warmup_steps=0", "seed=99", "rollout.temperature=0.5", "gift.beta=0.5",
    "trainer.max_steps=10", "trainer.eval_every=5", "data.eval_size=64", "run_dir=elsewhere",
    "sft.cache_dir=elsewhere", "logging.plots=false", "reward.timeout_s=1",
]


def _key(*overrides, world=1):
    return sft_cache_key(load("gift_tiny", [*BASE, *overrides]), world)


@pytest.mark.parametrize("override", INPUTS)
def test_each_input_changes_the_key(override):
    assert _key(override) != _key()


def test_world_size_and_init_weights_change_the_key(tmp_path):
    assert _key(world=2) != _key()
    cfg = load("gift_tiny", BASE)
    cfg.init.hf_checkpoint = str(tmp_path)
    assert sft_cache_key(cfg, 1) != _key()


@pytest.mark.parametrize("override", NOT_INPUTS)
def test_other_settings_keep_the_key(override):
    assert _key(override) == _key()


def test_without_sft_seed_the_run_seed_is_an_input():
    assert sft_cache_key(load("gift_tiny", ["seed=1"]), 1) != sft_cache_key(load("gift_tiny", ["seed=2"]), 1)
