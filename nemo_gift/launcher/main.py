"""``python launcher/run.py conf=NAME [key=value ...] [--dry-run] [--preflight]``: parse, validate, run.

1. parse: ``conf=NAME`` picks ``conf/NAME.yaml``; every other ``key=value`` is a Hydra
   override (``cluster=local_slurm`` picks a group option, ``trainer.lr=1e-6`` sets a value).
2. compose and validate: Hydra composes the ``defaults:`` overlays, then the result becomes the
   typed :class:`~nemo_gift.config.schema.RunConfig` and is checked as a whole (values, layout vs
   model, batch arithmetic, paths, registries, extras) before any process starts; a resume is
   compared with its checkpoint's config (:mod:`nemo_gift.config.resume`).
3. set up: the resolved config is written to ``RUN_DIR/config.yaml``; every rank reads it.
4. preflight (:mod:`nemo_gift.launcher.preflight`): the layout rules and the per-GPU memory
   estimate; a recipe over ``cluster.gpu_memory_gb`` is refused. ``--preflight`` stops here.
5. run: the ``local`` executor runs the job here (one process, or N ranks through torchrun),
   holding ``RUN_DIR/.lock`` and forwarding SIGINT/SIGTERM (:mod:`nemo_gift.launcher.process`);
   ``slurm`` submits through NeMo-Run (:mod:`nemo_gift.launcher.slurm`), or only prints
   NeMo-Run's script with ``--dry-run``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from nemo_gift.utils.convert import ConfigError
from nemo_gift.launcher.process import RunDirBusy, RunDirLock, run_ranks

DEFAULT_CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# Old recipe name -> its recipe in conf/. A recipe is named <algorithm>_<model>_<task>_<N>n<G>g:
# model is the checkpoint's directory name in lower case, task one of gsm8k, math, dapo, rlhf,
# N nodes x G GPUs. The CPU recipes keep their quick-start names (gift_tiny, gift_tiny_scratchpad
# and their GRPO twins: the tiny model, the arithmetic task, one CPU process).
# tests/unit/launcher/test_recipe_names.py checks every name against its config.
RECIPE_ALIASES = {
    "gift_deepseek7b_gsm8k": "gift_deepseek-llm-7b-chat_gsm8k_1n8g",
    "gift_deepseek7b_math": "gift_deepseek-llm-7b-chat_math_1n8g",
    "gift_deepseek7b_rlhf": "gift_deepseek-llm-7b-chat_rlhf_2n8g",
    "gift_qwen32b": "gift_qwen2.5-32b-instruct_gsm8k_4n8g",
    "gift_qwen32b_math": "gift_qwen2.5-32b-instruct_math_4n8g",
    "gift_qwen32b_rlhf": "gift_qwen2.5-32b-instruct_rlhf_4n8g",
    "gift_qwen2.5-32b_dapo": "gift_qwen2.5-32b_dapo_4n8g",
    "gift_qwen3-32b_dapo": "gift_qwen3-32b_dapo_4n8g",
    "grpo_deepseek7b_gsm8k": "grpo_deepseek-llm-7b-chat_gsm8k_1n8g",
    "grpo_deepseek7b_math": "grpo_deepseek-llm-7b-chat_math_1n8g",
    "grpo_deepseek7b_rlhf": "grpo_deepseek-llm-7b-chat_rlhf_2n8g",
    "grpo_qwen32b": "grpo_qwen2.5-32b-instruct_gsm8k_4n8g",
    "grpo_qwen32b_math": "grpo_qwen2.5-32b-instruct_math_4n8g",
    "grpo_qwen32b_rlhf": "grpo_qwen2.5-32b-instruct_rlhf_4n8g",
    "grpo_qwen2.5-32b_dapo": "grpo_qwen2.5-32b_dapo_4n8g",
    "grpo_qwen3-32b_dapo": "grpo_qwen3-32b_dapo_4n8g",
}


def resolve_recipe(name: str) -> str:
    """The recipe a ``conf=NAME`` names: ``NAME`` itself, or what the old name ``NAME`` stands for
    (:data:`RECIPE_ALIASES`), with a one-line note on stderr: the run's ``name`` (and so its
    default ``run_dir``, ``runs/${name}``) is the new recipe's."""
    if name in RECIPE_ALIASES:
        new = RECIPE_ALIASES[name]
        print(f"note: conf={name} is an alias of conf={new} (name and default run_dir: {new})", file=sys.stderr)
        return new
    return name


def parse_argv(argv: list[str]) -> tuple[str, list[str], bool]:
    """Split ``argv`` into (recipe name, Hydra overrides, dry_run); ``--preflight`` is taken
    out first by :func:`nemo_gift.launcher.preflight.pop_flag`."""
    name, overrides, dry_run = None, [], False
    for arg in argv:
        if arg in ("--dry-run", "--dry_run"):
            dry_run = True
        elif arg.startswith("conf="):
            name = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option {arg!r}; usage: run.py conf=NAME [key=value ...] [--dry-run] [--preflight]")
        elif "=" in arg:
            overrides.append(arg)
        else:
            raise ConfigError(f"argument {arg!r} is not key=value; usage: run.py conf=NAME [key=value ...]")
    if not name:
        raise ConfigError("missing conf=NAME (a recipe in conf/, e.g. conf=gift_tiny)")
    return name, overrides, dry_run


def compose(name: str, overrides: list[str], conf_dir: Path = DEFAULT_CONF_DIR) -> dict:
    """Hydra-compose ``conf_dir/NAME.yaml`` (NAME a recipe or an old name, :func:`resolve_recipe`)
    with ``overrides``; interpolations resolved."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from hydra.core.config_store import ConfigStore

    from nemo_gift.utils.convert import to_dict
    from nemo_gift.config.schema import RunConfig

    # Every schema key with its default, so that any key can be overridden without "+";
    # conf/base.yaml lists it first in its defaults. Types are checked after composition.
    ConfigStore.instance().store(name="schema_defaults", node=to_dict(RunConfig()))
    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / f"{name}.yaml").is_file():
        name = resolve_recipe(name)
    if not (conf_dir / f"{name}.yaml").is_file():
        known = sorted(p.stem for p in conf_dir.glob("*.yaml"))
        raise ConfigError(f"conf={name}: no {conf_dir / (name + '.yaml')}; recipes: {known}")
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            cfg = hydra_compose(config_name=name, overrides=overrides)
        return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"conf={name}: {err}") from err


def load(name: str, overrides: list[str], conf_dir: Path = DEFAULT_CONF_DIR):
    """Compose and validate: the typed, checked RunConfig of a recipe."""
    from nemo_gift.config.schema import load_run_config

    return load_run_config(compose(name, overrides, conf_dir))


def run_local(cfg, config_path: Path) -> int:
    """One process here, or ``world_size`` ranks through torchrun."""
    world = cfg.cluster.world_size
    env = dict(os.environ, NEMO_GIFT_DIST_BACKEND=cfg.cluster.backend)
    env.update({k: str(v) for k, v in cfg.cluster.env_vars.items()})
    if cfg.job == "export":
        cmd = cfg.export.command(sys.executable)
    elif world == 1:
        cmd = [sys.executable, "-m", "nemo_gift.train", "--config", str(config_path)]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc-per-node={world}", "-m", "nemo_gift.train", "--config", str(config_path),
        ]
    return run_ranks(cmd, env)


def main(argv: list[str] | None = None) -> int:
    from nemo_gift.config.resume import plan_resume
    from nemo_gift.config.schema import write_run_config
    from nemo_gift.launcher import preflight, slurm

    argv, preflight_only = preflight.pop_flag(sys.argv[1:] if argv is None else argv)
    try:
        name, overrides, dry_run = parse_argv(argv)
        cfg = load(name, overrides)
        if cfg.job == "train":
            plan_resume(cfg)  # a resume that would change the trajectory is refused before anything is written
        preflight.check(cfg, print_table=preflight_only or not dry_run)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if preflight_only:
        return 0
    run_dir = Path(cfg.run_dir).resolve()
    try:
        if cfg.cluster.executor == "slurm":
            command = cfg.export.command(cfg.cluster.python) if cfg.job == "export" else None
            if dry_run:
                print(slurm.render(cfg, run_dir, command), end="")
                return 0
            with RunDirLock(run_dir):
                slurm.refuse_live_job(cfg.cluster, run_dir)
                write_run_config(cfg, run_dir)
                job_id, log = slurm.submit(cfg, run_dir, command)
            print(f"submitted job {job_id}; log: {log}")
            return 0
        if dry_run:
            print(f"would run {cfg.name} locally on {cfg.cluster.world_size} rank(s) in {run_dir}")
            return 0
        with RunDirLock(run_dir):
            return run_local(cfg, write_run_config(cfg, run_dir))
    except (ConfigError, RunDirBusy) as err:
        print(f"{'config error' if isinstance(err, ConfigError) else 'error'}: {err}", file=sys.stderr)
        return 2
