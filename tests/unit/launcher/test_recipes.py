"""Every recipe composes and validates; invalid configs are refused, naming the key."""

from pathlib import Path

import pytest

from nemo_gift.utils.convert import ConfigError
from nemo_gift.config.schema import RunConfig, load_run_config, read_run_config, write_run_config
from nemo_gift.launcher.main import DEFAULT_CONF_DIR, compose, load, parse_argv

RECIPES = sorted(p.stem for p in DEFAULT_CONF_DIR.glob("*.yaml") if p.stem not in ("base", "export"))


def test_there_are_paper_recipes_for_both_methods():
    for name in ("gift_tiny", "grpo_tiny", "gift_qwen2.5-32b-instruct_gsm8k_4n8g",
                 "grpo_qwen2.5-32b-instruct_gsm8k_4n8g", "gift_deepseek-llm-7b-chat_gsm8k_1n8g",
                 "gift_deepseek-llm-7b-chat_math_1n8g", "gift_qwen3-32b_dapo_4n8g", "gift_qwen2.5-32b_dapo_4n8g",
                 "gift_deepseek-llm-7b-chat_rlhf_2n8g", "gift_qwen2.5-32b-instruct_rlhf_4n8g"):
        assert name in RECIPES
    for name in RECIPES:
        if name.startswith("gift_"):
            assert "grpo_" + name[len("gift_"):] in RECIPES, f"{name} has no GRPO twin"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_composes_and_validates(name):
    cfg = load(name, [])
    assert isinstance(cfg, RunConfig)
    assert cfg.name == name
    assert cfg.trainer.algorithm == name.split("_")[0]


def test_paper_settings():
    gift, grpo = load("gift_qwen2.5-32b-instruct_gsm8k_4n8g", []), load("grpo_qwen2.5-32b-instruct_gsm8k_4n8g", [])
    assert (gift.optim.lr, gift.algorithm_options["gift"].beta) == (3e-6, 1.0)
    assert (grpo.optim.lr, grpo.algorithm_options["grpo"].beta_kl) == (1e-6, 0.001)
    for cfg in (gift, grpo):
        assert (cfg.trainer.prompts_per_step, cfg.trainer.mini_batch_prompts, cfg.trainer.epochs) == (1024, 256, 15)
        assert (cfg.data.max_prompt_length, cfg.rollout.max_new_tokens) == (1024, 1024)
        assert cfg.parallel.tensor_model_parallel_size == 8 and cfg.cluster.world_size == 32
    assert load("gift_qwen3-32b_dapo_4n8g", []).model.qk_layernorm is True
    assert load("gift_qwen3-32b_dapo_4n8g", []).data.eval_dataset == "aime"


def test_resolved_config_round_trips(tmp_path):
    cfg = load("gift_tiny", [f"run_dir={tmp_path}"])
    assert read_run_config(write_run_config(cfg, tmp_path)) == cfg


def _tiny(overrides):
    return load("gift_tiny", overrides)


RECIPE_LAYOUT = ["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true",
                 "parallel.use_distributed_optimizer=true", "cluster.tasks_per_node=4"]


def test_the_recipes_layout_validates_on_cpu():
    """What the GPU recipes turn on (TP, sequence parallelism, the distributed optimizer) runs
    here too (tests/unit/distributed/test_recipe_layouts.py), so validation accepts it."""
    cfg = _tiny(RECIPE_LAYOUT)
    assert cfg.parallel.sequence_parallel and cfg.parallel.use_distributed_optimizer
    assert cfg.parallel.sequence_pad_multiple == 2


# (overrides, a fragment the error must contain: the offending key)
INVALID = [
    (["rollout.group_size=1"], "rollout.group_size=1"),
    (["model.vocab_size=19", "parallel.tensor_model_parallel_size=2", "cluster.tasks_per_node=2"], "model.vocab_size=19"),
    (["parallel.tensor_model_parallel_size=3"], "tensor_model_parallel_size=3"),
    (["model.num_query_groups=1", "parallel.tensor_model_parallel_size=2", "cluster.tasks_per_node=2"], "num_query_groups=1"),
    (["model.num_layers=3", "parallel.pipeline_model_parallel_size=2", "cluster.tasks_per_node=2"], "num_layers=3"),
    (["parallel.pipeline_model_parallel_size=2", "cluster.tasks_per_node=2"], "rollout.engine=torch"),
    (["trainer.prompts_per_step=10", "trainer.mini_batch_prompts=4"], "trainer.prompts_per_step=10"),
    (["trainer.micro_batch_size=7"], "trainer.micro_batch_size=7"),
    (["cluster.tasks_per_node=2", "trainer.mini_batch_prompts=3", "trainer.prompts_per_step=9"], "data-parallel"),
    (["trainer.max_steps=0"], "trainer.max_steps=0"),
    (["optim.lr=-1"], "optim.lr"),
    (["rollout.top_p=1.5"], "top_p=1.5"),
    (["rollout.max_new_tokens=100000"], "max_position_embeddings"),
    (["rollout.engine=trtllm"], "rollout.engine=trtllm"),
    (["parallel.sequence_parallel=true"], "sequence_parallel=true needs tensor_model_parallel_size > 1"),
    (["data.dataset=gsm8k"], "data.train_path"),
    (["data.dataset=gsm8k", "data.train_path=/no/such/file.jsonl", "data.eval_path=/x", "tokenizer.kind=hf",
      "tokenizer.path=/tmp", "reward.verifier=gsm8k", "sft.steps=0"], "data.train_path=/no/such/file.jsonl"),
    (["init.hf_checkpoint=/no/such/dir"], "init.hf_checkpoint"),
    (["reward.kind=reward_model"], "reward.reward_model_path"),
    (["cluster.backend=nccl"], "backend"),
    (["cluster.executor=local", "cluster.nodes=2"], "cluster.nodes=2"),
    (["cluster.time=forever"], "cluster.time"),
    (["gift.beta=-1"], "beta"),
    (["gift.std_guard=sometimes"], "gift.std_guard"),
    (["trainer.algorithm=ppo"], "trainer.algorithm"),
    (["+trainer.lrr=0.1"], "trainer.lrr"),
    (["trainer.max_steps=ten"], "trainer.max_steps"),
    (["model.arch=gpt2"], "model.arch"),
    (["trainer.max_tokens_per_micro_batch=0"], "trainer.max_tokens_per_micro_batch=0"),
    (["trainer.max_tokens_per_micro_batch=8"], "trainer.max_tokens_per_micro_batch=8 cannot hold one row"),
    (["trainer.max_tokens_per_micro_batch=4096", "gift.detach_implicit_stats=false"], "detach_implicit_stats=false"),
]


@pytest.mark.parametrize("overrides,fragment", INVALID, ids=[o[0][0] for o in INVALID])
def test_invalid_config_is_refused_naming_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        _tiny(overrides)
    assert fragment in str(err.value), str(err.value)


def test_a_token_budget_that_holds_the_longest_row_validates():
    cfg = _tiny(["trainer.max_tokens_per_micro_batch=4096"])
    assert cfg.trainer.max_tokens_per_micro_batch == 4096 and _tiny([]).trainer.max_tokens_per_micro_batch is None


def test_there_are_at_least_15_invalid_cases():
    assert len(INVALID) >= 15


def test_export_recipe_needs_its_paths(tmp_path):
    with pytest.raises(ConfigError, match="export.checkpoint"):
        load("export", [])
    with pytest.raises(ConfigError, match="export.checkpoint=/no/such"):
        load("export", ["export.checkpoint=/no/such", f"export.hf_out={tmp_path}/out"])
    cfg = load("export", [f"export.checkpoint={tmp_path}", f"export.hf_out={tmp_path}/out", "export.dtype=bfloat16"])
    assert cfg.job == "export"
    assert cfg.export.command("python") == [
        "python", "-m", "nemo_gift.export", "--checkpoint", str(tmp_path), "--hf-out", f"{tmp_path}/out",
        "--max-shard-gb", "5.0", "--dtype", "bfloat16",
    ]


def test_argv_parsing():
    assert parse_argv(["conf=gift_tiny", "trainer.lr=1", "--dry-run"]) == ("gift_tiny", ["trainer.lr=1"], True)
    with pytest.raises(ConfigError, match="missing conf=NAME"):
        parse_argv(["trainer.lr=1"])
    with pytest.raises(ConfigError, match="not key=value"):
        parse_argv(["conf=gift_tiny", "oops"])
    with pytest.raises(ConfigError, match="no .*nope.yaml"):
        compose("nope", [])
