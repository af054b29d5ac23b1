"""The typed run configuration: every key a recipe in ``conf/`` may set, and its validation.

A recipe is composed by Hydra (``defaults:`` overlays), then becomes a :class:`RunConfig`
through :func:`nemo_gift.utils.convert.from_dict` (unknown keys and wrong types fail, naming
the key), and :func:`validate` checks the whole before any work starts: the parallel layout
against the model and the world size, the batch arithmetic, G >= 2, lengths, paths, and the
extras that the chosen engine, FP8 or NeMo-Aligner need.

Batch symbols (docs/gift-math.md): B prompts per rollout step (``trainer.prompts_per_step``),
G responses each (``rollout.group_size``), so N = B*G sequences; the optimizer steps once per
mini-batch of ``trainer.mini_batch_prompts`` prompts (the paper: B=1024, mini-batch 256, so 4
optimizer steps per rollout batch); each mini-batch runs in micro-batches of
``trainer.micro_batch_size`` sequences per data-parallel rank.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch

from nemo_gift.algorithms.registry import default_options, get_algorithm, option_types
from nemo_gift.algorithms.rollout import padded_length
from nemo_gift.config.cluster import ClusterConfig
from nemo_gift.config.sections import (
    MAX_SEED,
    CheckpointConfig,
    DataConfig,
    ExportConfig,
    InitConfig,
    LoggingConfig,
    OptimConfig,
    RewardConfig,
    RolloutConfig,
    SftConfig,
    TokenizerConfig,
    TrainerConfig,
)
from nemo_gift.models.policy.config import ModelConfig, ParallelConfig
from nemo_gift.utils.checks import check_path, check_range, check_safe_name, check_writable_dir
from nemo_gift.utils.convert import SECTIONS, ConfigError, from_dict, to_dict


@dataclasses.dataclass
class RunConfig:
    job: Literal["train", "export"] = "train"
    """``train`` runs nemo_gift.train on every rank; ``export`` runs nemo_gift.export once."""
    name: str = "run"
    """The run's name (job names, W&B); a plain name: ``runs/${name}`` must stay under runs/."""
    run_dir: str = "runs/run"
    """Where the run writes its config, logs and checkpoints."""
    seed: int = 1234
    """Seed of the prompt order and sampling (and, unless set apart, of data and model init)."""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    """The policy architecture (nemo_gift/models/policy/config.py); must match ``init.hf_checkpoint``."""
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    """TP, PP (DP = world / (TP*PP)), dtype, layer implementation and FP8 of the policy."""
    init: InitConfig = dataclasses.field(default_factory=InitConfig)
    """Where the policy's weights come from (a Hugging Face checkpoint, or random)."""
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    """The tokenizer: the synthetic task's characters or a local transformers one."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """The training and held-out prompts."""
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    """The explicit reward r: a verifier or a reward model."""
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    """The rollout engine, G and the sampling of the responses."""
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    """The algorithm, the batch sizes (B, mini-batch, micro-batch) and the run length."""
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    """The policy's optimizer and LR schedule."""
    sft: SftConfig = dataclasses.field(default_factory=SftConfig)
    """The supervised warm start before RL."""
    algorithm_options: dict[str, Any] = dataclasses.field(
        default_factory=default_options, metadata={SECTIONS: option_types})
    """The options of every algorithm of :data:`nemo_gift.algorithms.registry.ALGORITHMS`, by name.
    The YAML writes each as a section named as its entry (``gift:``, ``grpo:``), typed and checked
    by the entry's options dataclass; ``trainer.algorithm`` picks the one the run uses."""
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    """When to save, how many to keep, and how to resume."""
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    """Where the metrics go (RUN_DIR/metrics.jsonl always)."""
    cluster: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    """Where the run executes: here (local) or on Slurm, and its world size."""
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    """``job: export``: the checkpoint to convert to Hugging Face."""

    def __post_init__(self):
        check_safe_name("name", self.name)
        check_range("seed", self.seed, low=0, high=MAX_SEED)
        if not str(self.run_dir).strip():
            raise ConfigError("run_dir='' is empty: it would write into the current directory; give a directory")

    def loss_options(self):
        """The options of the run's algorithm (``trainer.algorithm``)."""
        return self.algorithm_options[self.trainer.algorithm]

    def longest_row(self) -> int:
        """The longest token row a batch can hold: ``data.max_prompt_length +
        rollout.max_new_tokens``, padded to ``parallel.sequence_pad_multiple``."""
        return padded_length(self.data.max_prompt_length + self.rollout.max_new_tokens,
                             self.parallel.sequence_pad_multiple)


def _check_paths(cfg: RunConfig) -> None:
    """Every path's kind (file or directory) and writability; only where the run executes here."""
    if cfg.cluster.executor != "local":
        return
    check_writable_dir("run_dir", cfg.run_dir)
    if cfg.job == "export":
        check_path("export.checkpoint", cfg.export.checkpoint, "dir")
        check_path("export.hf_source", cfg.export.hf_source, "dir")
        check_writable_dir("export.hf_out", cfg.export.hf_out)
        return
    for section in (cfg.init, cfg.tokenizer, cfg.data, cfg.reward, cfg.sft, cfg.checkpoint):
        section.check_paths()


def _check_task(cfg: RunConfig) -> None:
    """The task fits the model, the warm start and the prompt length."""
    d, vocab = cfg.data, cfg.model.vocab_size
    if d.dataset == "arithmetic":
        from nemo_gift.data.synthetic import CharTokenizer

        if vocab < CharTokenizer().vocab_size:
            raise ConfigError(f"model.vocab_size={vocab} < the arithmetic task's {CharTokenizer().vocab_size} tokens")
        shortest = d.arithmetic.shortest_prompt()
        if d.max_prompt_length < shortest:
            raise ConfigError(f"data.max_prompt_length={d.max_prompt_length}: no arithmetic prompt fits "
                              f"(the shortest has {shortest} tokens)")
    elif cfg.sft.steps:
        raise ConfigError(f"sft.steps={cfg.sft.steps}: the warm start has demonstrations only for "
                          "data.dataset=arithmetic; start real datasets from an instruct model with sft.steps=0")
    if cfg.cluster.executor == "local":
        cfg.init.check_vocab(vocab)


def _check_export(cfg: RunConfig) -> None:
    """``job: export`` names its checkpoint and output, and runs in one process."""
    for key in ("checkpoint", "hf_out"):
        if getattr(cfg.export, key) is None:
            raise ConfigError(f"job=export needs export.{key}")
    _check_paths(cfg)
    if cfg.cluster.world_size != 1:
        raise ConfigError(f"job=export runs in one process; got {cfg.cluster.world_size} ranks from cluster")


def _check_layout(cfg: RunConfig, cuda: bool) -> None:
    """The parallel layout fits the model, the world size and the device."""
    tp = cfg.parallel.tensor_model_parallel_size
    try:
        cfg.parallel.validate_for(cfg.model, world_size=cfg.cluster.world_size,
                                  cuda=cuda or cfg.cluster.executor == "slurm")
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if cfg.model.vocab_size % tp:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is not divisible by "
            f"parallel.tensor_model_parallel_size={tp}: training would pad the vocabulary, and the "
            "log-prob reduction does not mask padded columns yet"
        )


def _check_token_budget(cfg: RunConfig) -> None:
    """``trainer.max_tokens_per_micro_batch`` holds the longest possible row."""
    budget = cfg.trainer.max_tokens_per_micro_batch
    if budget is None:
        return
    longest = cfg.longest_row()
    if budget < longest:
        raise ConfigError(
            f"trainer.max_tokens_per_micro_batch={budget} cannot hold one row of up to {longest} tokens "
            f"(data.max_prompt_length + rollout.max_new_tokens, padded to parallel.sequence_pad_multiple)"
        )


def _check_batches(cfg: RunConfig) -> None:
    """B, the mini-batch and the micro-batch divide each other, in whole groups per DP rank."""
    p = cfg.parallel
    dp = cfg.cluster.world_size // (p.tensor_model_parallel_size * p.pipeline_model_parallel_size)
    G, t = cfg.rollout.group_size, cfg.trainer
    if t.prompts_per_step % t.mini_batch_prompts:
        raise ConfigError(
            f"trainer.prompts_per_step={t.prompts_per_step} is not a multiple of "
            f"trainer.mini_batch_prompts={t.mini_batch_prompts}"
        )
    if t.mini_batch_prompts % dp:
        raise ConfigError(
            f"trainer.mini_batch_prompts={t.mini_batch_prompts} is not divisible by the data-parallel "
            f"size {dp}: each rank must hold whole groups"
        )
    per_rank = t.mini_batch_prompts * G // dp
    if per_rank % t.micro_batch_size:
        raise ConfigError(
            f"trainer.micro_batch_size={t.micro_batch_size} does not divide the {per_rank} sequences "
            f"per data-parallel rank of a mini-batch (mini_batch_prompts * group_size / DP); "
            "it would leave a partial or empty accumulation step"
        )


def _check_rollout(cfg: RunConfig, cuda: bool) -> None:
    """The engine fits the layout, and prompt plus response fit the model's positions."""
    r, pp = cfg.rollout, cfg.parallel.pipeline_model_parallel_size
    if r.engine == "torch" and pp > 1:
        raise ConfigError(
            f"rollout.engine=torch generates on the policy's own model and needs "
            f"parallel.pipeline_model_parallel_size=1 (got {pp}); use rollout.engine=trtllm with PP"
        )
    if cfg.data.max_prompt_length + r.max_new_tokens > cfg.model.max_position_embeddings:
        raise ConfigError(
            f"data.max_prompt_length + rollout.max_new_tokens = "
            f"{cfg.data.max_prompt_length + r.max_new_tokens} exceeds model.max_position_embeddings="
            f"{cfg.model.max_position_embeddings}"
        )
    if r.engine == "trtllm":
        from nemo_gift.models.generation.trtllm_runtime import config_problems

        problems = config_problems(cfg, cuda)
        if problems:
            raise ConfigError("; ".join(problems))


def _check_data(cfg: RunConfig) -> None:
    """Real datasets have their files, and the tokenizer and the reward fit the dataset."""
    d = cfg.data
    if d.dataset != "arithmetic" and d.train_path is None:
        raise ConfigError(f"data.train_path is required for data.dataset={d.dataset}")
    if (d.eval_dataset or d.dataset) != "arithmetic" and d.eval_path is None:
        raise ConfigError(f"data.eval_path is required for data.eval_dataset={d.eval_dataset or d.dataset}")
    if (d.dataset == "arithmetic") != (cfg.tokenizer.kind == "char"):
        raise ConfigError(
            f"tokenizer.kind={cfg.tokenizer.kind} does not fit data.dataset={d.dataset}: the arithmetic "
            "task uses the char tokenizer, real datasets an hf tokenizer"
        )
    cfg.reward.check_task(d)
    if cfg.tokenizer.kind == "hf" and (cfg.tokenizer.path or cfg.init.hf_checkpoint) is None:
        raise ConfigError("tokenizer.kind=hf needs tokenizer.path or init.hf_checkpoint")


def validate(cfg: RunConfig, cuda: bool | None = None) -> RunConfig:
    """Cross-section checks and paths; raise :class:`ConfigError` naming the key. Returns ``cfg``.

    Single values (finite, in range, one of the choices) are checked by each section's own
    ``__post_init__``; the algorithm's options against the rest by its registry entry's ``check``."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cfg.job == "export":
        _check_export(cfg)
        return cfg
    _check_layout(cfg, cuda)
    _check_batches(cfg)
    _check_token_budget(cfg)
    get_algorithm(cfg.trainer.algorithm).check(cfg.loss_options(), cfg)
    _check_rollout(cfg, cuda)
    _check_data(cfg)
    if cfg.cluster.executor == "local" and cfg.cluster.backend == "nccl" and not cuda:
        raise ConfigError("cluster.backend=nccl needs CUDA; use cluster.backend=gloo on CPU")
    _check_task(cfg)
    _check_paths(cfg)
    return cfg


def load_run_config(raw: dict, cuda: bool | None = None) -> RunConfig:
    """Typed and validated RunConfig from a composed dict."""
    return validate(from_dict(RunConfig, raw), cuda=cuda)


def write_run_config(cfg: RunConfig, run_dir: Path) -> Path:
    """Write the resolved config to ``run_dir/config.yaml`` and return its path."""
    import yaml

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def read_run_config(path: str | Path) -> RunConfig:
    """Read a config written by :func:`write_run_config` (or any YAML of the schema)."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: {err}") from err
    return load_run_config(raw)
