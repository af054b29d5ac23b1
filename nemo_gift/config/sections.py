"""The sections of the run config (``init``, ``tokenizer``, ``data``, ``reward``, ``rollout``,
``optim``, ``sft``, ``trainer``, ``checkpoint``, ``logging``, ``export``): each section's keys, their
defaults and the checks of its own values. :class:`nemo_gift.config.schema.RunConfig` composes them
with the model, parallel, loss and cluster sections and checks them together.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import torch

from nemo_gift.algorithms.interfaces import SamplingConfig, check_sampling
from nemo_gift.algorithms.registry import ALGORITHMS
from nemo_gift.data.records import DatasetName
from nemo_gift.data.synthetic import ArithmeticConfig
from nemo_gift.utils.checks import check_choice, check_path, check_range, check_writable_dir
from nemo_gift.utils.convert import ConfigError

MAX_SEED = 2**32 - 1
"""Seeds are non-negative 32-bit integers (numpy's limit; offsets are added to them)."""
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
"""Data files the loaders read (nemo_gift.data.sources); a directory may hold several."""


@dataclasses.dataclass
class InitConfig:
    """Where the policy's weights come from."""

    hf_checkpoint: str | None = None
    """A local Hugging Face directory (config.json + safetensors); None builds ``model`` randomly."""
    trust_remote_code: bool = False
    """Passed to transformers when reading the checkpoint's config and tokenizer. Off by default."""
    offload_reference: bool = False
    """Keep the frozen reference model in host memory between uses (frees GPU memory)."""

    def check_paths(self) -> None:
        check_path("init.hf_checkpoint", self.hf_checkpoint, "dir")

    def check_vocab(self, vocab_size: int) -> None:
        """``model.vocab_size`` equals the checkpoint's (its config.json), where it can be read here."""
        path = Path(self.hf_checkpoint or "") / "config.json"
        if self.hf_checkpoint and path.is_file():
            try:
                hf_vocab = json.loads(path.read_text()).get("vocab_size", vocab_size)
            except (OSError, ValueError, AttributeError) as err:
                raise ConfigError(f"init.hf_checkpoint: {path} is not a JSON config: {err}") from None
            if hf_vocab != vocab_size:
                raise ConfigError(f"model.vocab_size={vocab_size} != {hf_vocab}, the vocab_size of {path}")


@dataclasses.dataclass
class TokenizerConfig:
    kind: Literal["char", "hf"] = "char"
    """``char``: the synthetic task's character tokenizer. ``hf``: a local transformers tokenizer."""
    path: str | None = None
    """Directory of the ``hf`` tokenizer (defaults to init.hf_checkpoint)."""

    def check_paths(self) -> None:
        check_path("tokenizer.path", self.path, "dir")


@dataclasses.dataclass
class DataConfig:
    dataset: DatasetName = DatasetName.ARITHMETIC
    """Training prompts' schema."""
    train_path: str | None = None
    """Local jsonl / parquet / save_to_disk directory (not needed for ``arithmetic``)."""
    eval_dataset: DatasetName | None = None
    """Held-out schema; defaults to ``dataset`` (e.g. ``aime`` for DAPO training)."""
    eval_path: str | None = None
    """Held-out prompts (not needed for ``arithmetic``: its held-out split is generated)."""
    eval_size: int = 256
    """Held-out prompts scored at each evaluation."""
    seed: int | None = None
    """Seed of the synthetic task's training pool and held-out set; None: the run's ``seed``
    (an experiment fixes it so that every run is scored on the same held-out prompts)."""
    template: Literal["plain", "chat"] = "plain"
    """``chat`` applies the tokenizer's chat template; ``plain`` uses the prompt text as is."""
    max_prompt_length: int = 1024
    """Longer prompts are filtered out of the training and held-out prompts (in tokens, template
    included), with a count in the log; no prompt left is an error."""
    arithmetic: ArithmeticConfig = dataclasses.field(default_factory=ArithmeticConfig)
    """The synthetic task's settings (``dataset: arithmetic``); ignored by the real datasets."""

    def __post_init__(self):
        check_range("data.eval_size", self.eval_size, low=1)
        check_range("data.max_prompt_length", self.max_prompt_length, low=1)
        check_range("data.seed", self.seed, low=0, high=MAX_SEED)

    def check_paths(self) -> None:
        for key in ("train_path", "eval_path"):
            value = getattr(self, key)
            check_path(f"data.{key}", value, "any")
            if value is not None and Path(value).is_file() and Path(value).suffix not in DATA_SUFFIXES:
                raise ConfigError(f"data.{key}={value}: the loaders read {', '.join(DATA_SUFFIXES)} files")


@dataclasses.dataclass
class RewardConfig:
    kind: Literal["verifier", "reward_model"] = "verifier"
    """Explicit reward: a rule-based verifier (RLVR) or a sequence-classifier reward model (RLHF)."""
    verifier: str | None = None
    """Verifier name; defaults to the dataset's."""
    timeout_s: float = 5.0
    """Hard per-response limit of the math-equivalence check (``math``, ``dapo``), in seconds."""
    math_verify_workers: int = 2
    """Worker processes of the math-equivalence pool (checks of one batch run in parallel)."""
    reward_model_path: str | None = None
    """Local directory of the reward model (``kind: reward_model``)."""
    length_normalize: bool = True
    """Divide the reward-model score by sqrt(response tokens), as the paper does for RLHF."""
    batch_size: int = 8
    """Reward-model scoring batch."""
    device: str = "cpu"
    """Device of the reward model (e.g. ``cuda:7`` to keep it off the policy's GPUs)."""

    def __post_init__(self):
        from nemo_gift.rewards import verifier_names

        check_range("reward.timeout_s", self.timeout_s, low=0, low_open=True)
        check_range("reward.math_verify_workers", self.math_verify_workers, low=1)
        check_range("reward.batch_size", self.batch_size, low=1)
        if self.verifier is not None:
            check_choice("reward.verifier", self.verifier, verifier_names())
        try:
            torch.device(self.device)
        except (RuntimeError, ValueError):
            raise ConfigError(f"reward.device={self.device!r} is not a torch device (cpu, cuda, cuda:N)") from None

    def check_paths(self) -> None:
        check_path("reward.reward_model_path", self.reward_model_path, "dir")

    def check_task(self, data: DataConfig) -> None:
        """The reward fits the dataset: the synthetic task and the real datasets read different answers."""
        if self.kind == "reward_model":
            if self.reward_model_path is None:
                raise ConfigError("reward.kind=reward_model needs reward.reward_model_path")
            if data.dataset == "arithmetic":
                raise ConfigError("reward.kind=reward_model does not score data.dataset=arithmetic; use its verifier")
            return
        verifier = self.verifier or DatasetName(data.dataset).verifier
        if verifier is None:
            raise ConfigError(
                f"no verifier for data.dataset={data.dataset}; set reward.verifier or reward.kind=reward_model"
            )
        if data.dataset == "arithmetic":
            from nemo_gift.data.synthetic import ArithmeticTask

            wanted = ArithmeticTask(data.arithmetic).verifier_name  # the task's own answer format
            if self.verifier is not None and self.verifier != wanted:
                a = data.arithmetic
                raise ConfigError(
                    f"reward.verifier={self.verifier} does not score data.dataset=arithmetic with "
                    f"data.arithmetic.reverse_answer={a.reverse_answer} and scratchpad_rate={a.scratchpad_rate}; "
                    f"use {wanted} (or null)"
                )
        elif verifier.startswith("arithmetic"):  # the synthetic task's verifiers read bare integers
            raise ConfigError(
                f"reward.verifier={verifier} scores only the synthetic task, not data.dataset={data.dataset}"
            )


@dataclasses.dataclass
class RolloutConfig:
    engine: Literal["torch", "trtllm"] = "torch"
    """``torch``: the KV-cached engine on the policy's own model (anywhere). ``trtllm``: GPUs."""
    group_size: int = 8
    """G, responses per prompt (the author's scripts: 16). Must be >= 2."""
    temperature: float = SamplingConfig.temperature
    """Sampling temperature of the training rollouts; > 0 (0 would be greedy: G equal responses)."""
    top_p: float = SamplingConfig.top_p
    """Nucleus sampling of the training rollouts: keep the most likely tokens whose mass reaches
    ``top_p`` (1 = off)."""
    top_k: int = SamplingConfig.top_k
    """0 disables top-k; 1 is refused (greedy, as temperature 0)."""
    max_new_tokens: int = SamplingConfig.max_new_tokens
    """Most tokens generated per response, in training and evaluation (a stop token counts)."""
    eval_temperature: float = 0.0
    """0 is greedy decoding: pass@1 at evaluation."""
    trtllm_gpu_memory_fraction: float = 0.5
    """Share of free GPU memory the TensorRT-LLM KV cache may take."""
    reuse_engine_logprobs: bool | None = None
    """The torch engine's log-probs of the sampled tokens under the unmodified logits serve as
    pi_old when more than one optimizer step takes a rollout batch (with one, the training forward
    gives pi_old). None: on for ``torch`` with fp32 parameters (within 1e-5 of the trainer's forward;
    5.8e-3 in bf16, measured on CPU) and an algorithm whose registry entry allows it
    (``engine_logprobs_by_default``: GRPO yes, GIFT no); else off.
    TensorRT-LLM refuses it: its kernels and refit weights are not the trainer's numerics, and its
    log-probs lack tokens outside its top-k."""

    def __post_init__(self):
        check_range("rollout.group_size", self.group_size, low=2)  # GIFT and GRPO normalize within a group
        check_sampling("rollout", max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                       top_p=self.top_p, top_k=self.top_k)
        for key, greedy in (("temperature", self.temperature == 0), ("top_k", self.top_k == 1)):
            if greedy:  # TensorRT-LLM 1.2 also refuses n > 1 under greedy decoding (SamplingParams)
                raise ConfigError(
                    f"rollout.{key}={getattr(self, key)} decodes greedily: the G={self.group_size} responses of a "
                    "prompt would be identical, every group's std 0 and the loss 0. Sample (temperature > 0, "
                    "top_k 0 or >= 2); greedy decoding is for evaluation (rollout.eval_temperature=0)"
                )
        check_range("rollout.eval_temperature", self.eval_temperature, low=0)
        check_range("rollout.trtllm_gpu_memory_fraction", self.trtllm_gpu_memory_fraction, low=0, high=1,
                    low_open=True)
        if self.reuse_engine_logprobs and self.engine == "trtllm":
            raise ConfigError("rollout.reuse_engine_logprobs=true needs rollout.engine=torch: TensorRT-LLM's "
                              "log-probs are not the trainer's pi_old; set it false or null")


@dataclasses.dataclass
class OptimConfig:
    lr: float = 3e-6
    """GIFT 3e-6, GRPO 1e-6 in the paper."""
    min_lr: float = 0.0
    """Final LR of the ``cosine`` schedule, reached at the last optimizer step; <= ``lr``."""
    schedule: Literal["constant", "cosine"] = "constant"
    """LR after the warmup: ``constant`` at ``lr``, or ``cosine`` decay from ``lr`` to ``min_lr``
    over the run's optimizer steps (nemo_gift/models/policy/optimizer.py states the formula)."""
    warmup_steps: int = 0
    """Linear warmup of the LR from 0 over this many optimizer steps."""
    weight_decay: float = 0.0
    """Decoupled (AdamW) weight decay."""
    adam_beta1: float = 0.9
    """Adam's first-moment decay, in [0, 1)."""
    adam_beta2: float = 0.999
    """Adam's second-moment decay, in [0, 1)."""
    clip_grad: float = 1.0
    """Global grad-norm clipping (GIFT has no other clipping)."""

    def __post_init__(self):
        check_range("optim.lr", self.lr, low=0, low_open=True)
        check_range("optim.min_lr", self.min_lr, low=0, high=self.lr)
        check_range("optim.warmup_steps", self.warmup_steps, low=0)
        check_range("optim.weight_decay", self.weight_decay, low=0)
        for key in ("adam_beta1", "adam_beta2"):
            check_range(f"optim.{key}", getattr(self, key), low=0, high=1, high_open=True)
        check_range("optim.clip_grad", self.clip_grad, low=0, low_open=True)


@dataclasses.dataclass
class SftConfig:
    """Supervised warm start before RL (the tiny CPU task needs it; real recipes start from an
    instruct model and set steps: 0)."""

    steps: int = 0
    """Optimizer steps of the warm start (cosine LR to lr / 10); 0 skips it."""
    batch_size: int = 64
    """Demonstrations per warm-start step."""
    lr: float = 1e-3
    """Peak LR of the warm start."""
    cache_dir: str | None = None
    """If set, the warm-started weights are cached there and reused by runs with the same model,
    task and SFT settings (the experiment's runs share one warm start)."""
    seed: int | None = None
    """Seed of the model's initialization and of the warm start's examples; None: the run's
    ``seed``. Runs that differ only in ``seed`` but share this one share one warm start."""

    def __post_init__(self):
        check_range("sft.steps", self.steps, low=0)
        check_range("sft.batch_size", self.batch_size, low=1)
        check_range("sft.lr", self.lr, low=0, low_open=True)
        check_range("sft.seed", self.seed, low=0, high=MAX_SEED)

    def check_paths(self) -> None:
        check_writable_dir("sft.cache_dir", self.cache_dir)


@dataclasses.dataclass
class TrainerConfig:
    algorithm: str = "gift"
    """The RL algorithm: a name of :data:`nemo_gift.algorithms.registry.ALGORITHMS` (``gift``,
    ``grpo``); its options are the run config section of the same entry."""
    max_steps: int = 100
    """Rollout steps (each: B prompts, G responses, then the mini-batch updates)."""
    epochs: int | None = None
    """If set, max_steps = epochs * len(train prompts) / B (the paper: 15)."""
    prompts_per_step: int = 16
    """B, the rollout (train) batch in prompts (the paper: 1024)."""
    mini_batch_prompts: int = 16
    """Prompts per optimizer step (the paper: 256)."""
    micro_batch_size: int = 16
    """Sequences per forward/backward on one data-parallel rank."""
    eval_every: int = 10
    """Evaluate held-out pass@1 every k rollout steps (and at step 0 and the end); 0 disables."""
    logprob_chunk_size: int | None = None
    """Sequence chunk of the vocab-parallel log-prob reduction (bounds its memory)."""
    max_tokens_per_micro_batch: int | None = None
    """Token budget (rows x padded length) of a micro-batch: each data-parallel rank's rows are
    sorted by length into micro-batches padded to their own longest row
    (:mod:`nemo_gift.algorithms.packing`); None keeps ``micro_batch_size`` rows padded to the batch's."""

    def __post_init__(self):
        for key in ("max_steps", "epochs", "prompts_per_step", "mini_batch_prompts", "micro_batch_size",
                    "logprob_chunk_size", "max_tokens_per_micro_batch"):
            check_range(f"trainer.{key}", getattr(self, key), low=1)
        check_range("trainer.eval_every", self.eval_every, low=0)
        check_choice("trainer.algorithm", self.algorithm, ALGORITHMS)


@dataclasses.dataclass
class CheckpointConfig:
    every: int = 0
    """Save every k rollout steps (and at the end); 0 saves only at the end."""
    keep_last: int = 2
    """Complete checkpoints kept (older ones are deleted once a newer one is complete); >= 1."""
    resume: str = "auto"
    """``auto``: continue from the latest checkpoint in RUN_DIR/checkpoints if any; ``never``;
    or a checkpoint directory."""
    resume_config_change: Literal["refuse", "allow"] = "refuse"
    """A resume whose config changes the trajectory (nemo_gift.config.resume lists what does)
    is refused, naming the keys; ``allow`` continues with the new values (LR schedule included)
    and records the change in RUN_DIR/config_changes.jsonl."""

    def __post_init__(self):
        check_range("checkpoint.every", self.every, low=0)
        check_range("checkpoint.keep_last", self.keep_last, low=1)
        if not str(self.resume).strip():
            raise ConfigError("checkpoint.resume='' is empty; use auto, never or a checkpoint directory")

    def check_paths(self) -> None:
        if self.resume not in ("auto", "never"):
            check_path("checkpoint.resume", self.resume, "dir")


@dataclasses.dataclass
class LoggingConfig:
    tensorboard: bool = True
    """Write TensorBoard event files to RUN_DIR/tensorboard."""
    wandb: bool = False
    """Logs to Weights & Biases when also installed."""
    wandb_project: str = "nemo_gift"
    """The Weights & Biases project of the run (the run's ``name`` is its W&B name)."""
    progress_bar: bool = True
    """Show a progress bar of the rollout steps on rank 0 (off in batch jobs' logs)."""
    plots: bool = True
    """Write PNG curves to RUN_DIR/plots at the end."""


@dataclasses.dataclass
class ExportConfig:
    """``job: export``: a project checkpoint to a Hugging Face directory (``conf/export.yaml``)."""

    checkpoint: str | None = None
    """A checkpoint directory (``.../step_000042``) or a checkpoints root (its latest one)."""
    hf_out: str | None = None
    """The new (or empty) output directory."""
    hf_source: str | None = None
    """The HF directory the run started from: its tokenizer files and generation config are copied."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Cast the weights; null keeps the checkpoint's dtype."""
    max_shard_gb: float = 5.0
    """Largest safetensors shard, in GiB."""

    def __post_init__(self):
        check_range("export.max_shard_gb", self.max_shard_gb, low=0, low_open=True)

    def command(self, python: str) -> list[str]:
        """The ``python -m nemo_gift.export`` command line of this job."""
        cmd = [python, "-m", "nemo_gift.export", "--checkpoint", str(self.checkpoint), "--hf-out", str(self.hf_out),
               "--max-shard-gb", str(self.max_shard_gb)]
        if self.hf_source:
            cmd += ["--hf-source", self.hf_source]
        if self.dtype:
            cmd += ["--dtype", self.dtype]
        return cmd
