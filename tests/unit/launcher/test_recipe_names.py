"""Recipe names state what they run, and every old name still runs the same recipe.

A recipe is ``<algorithm>_<model>_<task>_<N>n<G>g`` (nemo_gift/launcher/main.py, RECIPE_ALIASES);
the CPU recipes are ``<algorithm>_tiny`` and ``<algorithm>_tiny_scratchpad``.
"""

import re
from pathlib import PurePosixPath

import pytest

from nemo_gift.launcher.main import DEFAULT_CONF_DIR, RECIPE_ALIASES, compose, load, main

RECIPES = sorted(p.stem for p in DEFAULT_CONF_DIR.glob("*.yaml") if p.stem not in ("base", "export"))
GPU_NAME = re.compile(r"^(?P<algo>gift|grpo)_(?P<model>[^_]+)_(?P<task>[^_]+)_(?P<nodes>\d+)n(?P<gpus>\d+)g$")
TINY_NAME = re.compile(r"^(?P<algo>gift|grpo)_tiny(?P<variant>_scratchpad)?$")


def _task_of(cfg) -> str:
    """The name scheme's task word for a config: the reward model's RLHF, else the training set."""
    return "rlhf" if cfg.reward.kind == "reward_model" else cfg.data.dataset


@pytest.mark.parametrize("name", RECIPES)
def test_the_name_states_algorithm_model_task_and_shape(name):
    cfg = load(name, [])
    gpu, tiny = GPU_NAME.match(name), TINY_NAME.match(name)
    assert gpu or tiny, f"{name} follows neither <algo>_<model>_<task>_<N>n<G>g nor <algo>_tiny[_scratchpad]"
    if gpu:
        assert gpu["algo"] == cfg.trainer.algorithm
        assert gpu["model"] == PurePosixPath(cfg.init.hf_checkpoint).name.lower()
        assert gpu["task"] == _task_of(cfg) and gpu["task"] in ("gsm8k", "math", "dapo", "rlhf")
        assert (int(gpu["nodes"]), int(gpu["gpus"])) == (cfg.cluster.nodes, cfg.cluster.gpus_per_node)
        assert cfg.cluster.tasks_per_node == cfg.cluster.gpus_per_node  # one rank per GPU
    else:
        assert tiny["algo"] == cfg.trainer.algorithm
        assert cfg.init.hf_checkpoint is None and cfg.data.dataset == "arithmetic"
        assert cfg.reward.verifier == "arithmetic" + (tiny["variant"] or "")
        assert (cfg.cluster.executor, cfg.cluster.gpus_per_node, cfg.cluster.world_size) == ("local", 0, 1)


def test_the_qwen_gsm8k_recipe_by_hand():
    """The issue's example: the old gift_qwen32b is 4 nodes x 8 GPUs, TP=8, GSM8K."""
    cfg = load("gift_qwen2.5-32b-instruct_gsm8k_4n8g", [])
    assert (cfg.cluster.nodes, cfg.cluster.gpus_per_node, cfg.parallel.tensor_model_parallel_size) == (4, 8, 8)
    assert (cfg.data.dataset, cfg.init.hf_checkpoint) == ("gsm8k", "/models/Qwen2.5-32B-Instruct")


def test_every_alias_names_an_existing_recipe_and_no_file():
    assert len(RECIPE_ALIASES) == 16
    for old, new in RECIPE_ALIASES.items():
        assert new in RECIPES, f"alias {old} -> {new}: no conf/{new}.yaml"
        assert not (DEFAULT_CONF_DIR / f"{old}.yaml").exists(), f"{old} is both a recipe and an alias"
    # each GIFT alias has its GRPO twin, pointing at the twin recipe
    for old, new in RECIPE_ALIASES.items():
        if old.startswith("gift_"):
            assert RECIPE_ALIASES["grpo_" + old[5:]] == "grpo_" + new[5:]


@pytest.mark.parametrize("old", sorted(RECIPE_ALIASES))
def test_an_old_name_composes_exactly_as_its_recipe(old, capsys):
    new = RECIPE_ALIASES[old]
    overrides = ["trainer.max_steps=7", "cluster=dgx_h200"]
    resolved = compose(old, overrides)
    assert f"note: conf={old} is an alias of conf={new}" in capsys.readouterr().err
    assert resolved == compose(new, overrides)
    assert resolved["name"] == new and resolved["trainer"]["max_steps"] == 7
    assert resolved["cluster"]["gpu_memory_gb"] == 141
    assert capsys.readouterr().err == ""  # a recipe's own name prints no note


def test_the_launcher_dry_run_takes_an_old_name(capsys, tmp_path):
    """``launcher/run.py conf=gift_qwen32b --dry-run`` prints the same sbatch script as the new name
    (up to NeMo-Run's per-submission experiment id)."""
    pytest.importorskip("nemo_run", reason="Slurm submission goes through NeMo-Run: pip install -e .[slurm]")

    def script(name):
        assert main([f"conf={name}", "--dry-run", f"run_dir={tmp_path / 'run'}"]) == 0
        out = capsys.readouterr().out
        return re.sub(r"_\d{10,}", "_ID", out)

    old, new = script("gift_qwen32b"), script("gift_qwen2.5-32b-instruct_gsm8k_4n8g")
    assert old == new and "#SBATCH --job-name=nemo_gift-gift_qwen2.5-32b-instruct_gsm8k_4n8g" in new
