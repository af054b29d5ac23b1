"""One rank of a GIFT or GRPO run: ``python -m nemo_gift.train --config RUN_DIR/config.yaml``.

The launcher (``launcher/run.py``) writes the config and starts this on every rank (directly,
through torchrun, or through srun). Steps, each a function: :func:`parse` (the config and its
resume plan) -> :func:`setup` (process groups, task, policy, warm start, resume, engine) ->
:func:`train` (:func:`nemo_gift.algorithms.gift.train`) -> :func:`cleanup`; :func:`run` chains
the last three on one rank.

Rank and world size come from ``RANK``/``WORLD_SIZE`` (torchrun), else ``SLURM_PROCID``/
``SLURM_NTASKS`` (srun), else a single process. The backend is ``NEMO_GIFT_DIST_BACKEND``, else
the config's ``cluster.backend``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.distributed as dist

from nemo_gift.utils.convert import ConfigError, to_dict
from nemo_gift.config.resume import RUN_CONFIG_KEY, ResumePlan, plan_resume, record_changes, verified_plan
from nemo_gift.config.schema import RunConfig, read_run_config
from nemo_gift.data.task import Task, TaskSpec, build_task

if TYPE_CHECKING:
    from nemo_gift.algorithms.gift import LoopConfig, LoopParts
    from nemo_gift.algorithms.interfaces import GenerationBackend
    from nemo_gift.models.policy.megatron_policy import MegatronPolicy
    from nemo_gift.models.policy.optimizer import OptimizerSettings
    from nemo_gift.utils.logger import MetricsLogger
    from nemo_gift.utils.progress import Progress


def init_distributed(backend: str) -> tuple[int, int]:
    """Join (or create) the default process group; returns (rank, world size)."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env:
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "RANK" not in env:
        from nemo_gift.distributed.spawn import free_port

        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29500")
    if backend == "nccl":
        torch.cuda.set_device(int(env.get("LOCAL_RANK", "0")))
    elif "OMP_NUM_THREADS" not in env:  # CPU ranks of one node share its cores
        local = int(env.get("LOCAL_WORLD_SIZE") or env.get("SLURM_NTASKS_PER_NODE") or env["WORLD_SIZE"])
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    dist.init_process_group(backend, rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]))
    return dist.get_rank(), dist.get_world_size()


def init_seed(cfg: RunConfig) -> int:
    """The seed of the model's initialization and warm start (``sft.seed``, else ``seed``)."""
    return cfg.seed if cfg.sft.seed is None else cfg.sft.seed


def task_spec(cfg: RunConfig) -> TaskSpec:
    """The run config's task settings, as :func:`nemo_gift.data.task.build_task` reads them."""
    from nemo_gift.data.records import DatasetName
    from nemo_gift.data.templates import TemplateKind
    from nemo_gift.rewards.reward_model import RewardModelConfig

    d, r = cfg.data, cfg.reward
    reward_model = None
    if r.kind == "reward_model":
        reward_model = RewardModelConfig(model_path=r.reward_model_path, length_normalize=r.length_normalize,
                                         batch_size=r.batch_size, device=r.device)
    return TaskSpec(
        dataset=DatasetName(d.dataset), eval_dataset=DatasetName(d.eval_dataset or d.dataset),
        train_path=d.train_path, eval_path=d.eval_path, eval_size=d.eval_size, template=TemplateKind(d.template),
        max_prompt_length=d.max_prompt_length, arithmetic=d.arithmetic,
        data_seed=cfg.seed if d.seed is None else d.seed, sft_seed=init_seed(cfg), sft_batch_size=cfg.sft.batch_size,
        prompts_per_step=cfg.trainer.prompts_per_step, vocab_size=cfg.model.vocab_size,
        tokenizer_path=cfg.tokenizer.path or cfg.init.hf_checkpoint, trust_remote_code=cfg.init.trust_remote_code,
        verifier=r.verifier, verify_timeout_s=r.timeout_s, math_verify_workers=r.math_verify_workers,
        reward_model=reward_model,
    )


def sft_inputs(cfg: RunConfig, world_size: int) -> dict:
    """Every input that :func:`warm_start` reads: the model and its initialization (layout, world
    size, init seed, HF weights), the task and its tokenizer, the SFT settings, and the policy's
    training knobs (clipping, micro-batch, log-prob chunk)."""
    return {
        "model": to_dict(cfg.model), "parallel": to_dict(cfg.parallel), "world": world_size, "seed": init_seed(cfg),
        "init": cfg.init.hf_checkpoint, "dataset": cfg.data.dataset, "task": to_dict(cfg.data.arithmetic),
        "tokenizer": to_dict(cfg.tokenizer),
        "sft": {k: v for k, v in to_dict(cfg.sft).items() if k not in ("cache_dir", "seed")},
        "clip_grad": cfg.optim.clip_grad, "micro_batch_size": cfg.trainer.micro_batch_size,
        "logprob_chunk_size": cfg.trainer.logprob_chunk_size,
        "fused_lm_head_logprobs": cfg.parallel.fused_lm_head_logprobs,
        "max_tokens_per_micro_batch": cfg.trainer.max_tokens_per_micro_batch,
    }


def sft_cache_key(cfg: RunConfig, world_size: int) -> str:
    """The entry of ``sft.cache_dir`` that this run's warm start reads or writes: runs with the
    same :func:`sft_inputs` share one warm start (experiments/run.py warms each key once)."""
    blob = json.dumps(sft_inputs(cfg, world_size), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def warm_start(cfg: RunConfig, policy, task: Task, log) -> None:
    """SFT the fresh model (or load the cached result of the same SFT)."""
    from nemo_gift.algorithms.sft import sft_warm_start
    from nemo_gift.models.policy import checkpoint
    from nemo_gift.models.policy.optimizer import OptimizerSettings

    if cfg.sft.steps == 0:
        return
    cache = Path(cfg.sft.cache_dir) / sft_cache_key(cfg, dist.get_world_size()) if cfg.sft.cache_dir else None
    if cache is not None and checkpoint.latest_checkpoint(cache) is not None:
        checkpoint.load_checkpoint(checkpoint.latest_checkpoint(cache), policy.model)
        return
    policy.configure_optimizer(OptimizerSettings(
        lr=cfg.sft.lr, min_lr=cfg.sft.lr / 10, weight_decay=0.01, clip_grad=cfg.optim.clip_grad,
        schedule="cosine", warmup_steps=min(100, cfg.sft.steps // 8), decay_steps=cfg.sft.steps,
    ))
    sft_warm_start(policy, task.sft_examples, cfg.sft.steps, task.pad_token_id,
                   log=lambda step, m: log(step, {f"sft/{k}": v for k, v in m.items()}),
                   pad_multiple=cfg.parallel.sequence_pad_multiple)
    if cache is not None:
        checkpoint.save_checkpoint(cache, cfg.sft.steps, policy.model, keep_last=1)


@dataclasses.dataclass
class Session:
    """One rank's run after :func:`setup`: the loop's parts and config, and what :func:`cleanup` closes."""

    cfg: RunConfig
    rank: int
    parts: LoopParts
    loop: LoopConfig
    start_step: int
    """The step the loop starts after: the resumed checkpoint's, else 0."""
    logger: MetricsLogger
    progress: Progress
    engine: GenerationBackend


def parse(argv: list[str] | None = None) -> tuple[RunConfig, ResumePlan]:
    """The run config named by ``--config`` and its resume plan. A bad config or a refused
    resume raises ConfigError here, before any process group."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="RUN_DIR/config.yaml written by the launcher")
    args = parser.parse_args(argv)
    cfg = read_run_config(args.config)
    return cfg, plan_resume(cfg)


def setup(cfg: RunConfig, plan: ResumePlan | None = None) -> Session:
    """Everything the loop needs on this rank, in this order: process groups, the task and its
    prompt sampler, the resume plan checked over the ranks, the metrics, the policy up to the RL
    start (:func:`setup_policy`), its resumed state, and the engine (resuming per ``plan``, else
    :func:`plan_resume`)."""
    from megatron.core import parallel_state as ps

    from nemo_gift.algorithms.gift import LoopParts
    from nemo_gift.algorithms.rollout import PromptSampler
    from nemo_gift.models.policy import parallel
    from nemo_gift.utils.progress import Progress

    plan = plan_resume(cfg) if plan is None else plan  # a refused resume stops here, before any work
    rank, _ = init_distributed(os.environ.get("NEMO_GIFT_DIST_BACKEND", cfg.cluster.backend))
    parallel.initialize(cfg.parallel, seed=init_seed(cfg))
    task = build_task(task_spec(cfg))
    t = cfg.trainer
    sampler = PromptSampler(task.train_records, t.prompts_per_step, seed=cfg.seed)
    max_steps = t.max_steps if t.epochs is None else t.epochs * sampler.steps_per_epoch

    plan = verified_plan(cfg, plan)  # file contents checked over the ranks; a corrupt newest checkpoint falls back
    resume, start_step = plan.checkpoint, plan.step
    logger = open_logger(cfg, rank, plan)
    policy = setup_policy(cfg, task, max_steps, log_sft=rank == 0 and not resume)
    if resume:
        state = policy.load(str(resume))
        sampler.load_state_dict(state["sampler"])
    engine, refit = setup_engine(cfg, policy, task)

    loop = loop_config(cfg, max_steps, task.stop_token_ids)
    progress = Progress(max_steps, start_step, enabled=rank == 0 and cfg.logging.progress_bar, name=cfg.name)
    parts = LoopParts(
        policy=policy, engine=engine, score=task.score, encode=task.encode, decode=task.decode,
        pad_token_id=task.pad_token_id, sampler=sampler, eval_records=task.eval_records,
        train_eval_records=task.train_eval_records, refit=refit, log=logger.log, progress=progress.update,
        extra_eval_records=task.extra_eval_records,
        dp_rank=ps.get_data_parallel_rank(), dp_size=ps.get_data_parallel_world_size(),
        dp_group=ps.get_data_parallel_group(),
    )
    return Session(cfg=cfg, rank=rank, parts=parts, loop=loop, start_step=start_step, logger=logger,
                   progress=progress, engine=engine)


def open_logger(cfg: RunConfig, rank: int, plan: ResumePlan) -> MetricsLogger:
    """The run's metrics (rank 0 writes them; a resume continues after its step); rank 0 also
    records the config changes an allowed resume applies."""
    from nemo_gift.utils.logger import MetricsLogger

    run_dir = Path(cfg.run_dir)
    logger = MetricsLogger(
        run_dir, enabled=rank == 0, tensorboard=cfg.logging.tensorboard, wandb=cfg.logging.wandb,
        wandb_project=cfg.logging.wandb_project, run_name=cfg.name, config=to_dict(cfg),
        resume_step=plan.step if plan.checkpoint else None,
    )
    if rank == 0:
        record_changes(run_dir, plan)
    return logger


def setup_policy(cfg: RunConfig, task: Task, max_steps: int, *, log_sft: bool) -> MegatronPolicy:
    """The policy at the RL start: built (with the frozen reference its algorithm reads), its
    Hugging Face weights imported, warm-started (``sft_metrics.jsonl`` where ``log_sft``), the
    reference synced to it, and the RL optimizer configured for ``max_steps``."""
    from nemo_gift.algorithms.registry import get_algorithm
    from nemo_gift.models.policy.megatron_policy import MegatronPolicy
    from nemo_gift.utils.logger import MetricsLogger

    t = cfg.trainer
    algorithm = get_algorithm(t.algorithm)
    use_reference = algorithm.needs_reference(cfg.loss_options())
    policy = MegatronPolicy(cfg.model, cfg.parallel, micro_batch_size=t.micro_batch_size,
                            logprob_chunk_size=t.logprob_chunk_size, with_reference=use_reference,
                            offload_reference=cfg.init.offload_reference,
                            max_tokens_per_micro_batch=t.max_tokens_per_micro_batch)
    if cfg.init.hf_checkpoint:
        from nemo_gift.export.hf_import import import_hf

        import_hf(policy.module, cfg.init.hf_checkpoint, cfg.model)
    sft_logger = MetricsLogger(Path(cfg.run_dir), enabled=log_sft, tensorboard=cfg.logging.tensorboard,
                               filename="sft_metrics.jsonl")
    warm_start(cfg, policy, task, sft_logger.log)
    sft_logger.close()
    policy.sync_reference()  # pi_ref: the model RL starts from
    policy.configure_optimizer(rl_optimizer(cfg, max_steps))
    return policy


def rl_optimizer(cfg: RunConfig, max_steps: int) -> OptimizerSettings:
    """``optim``'s settings; a cosine schedule decays over the run's optimizer steps
    (``max_steps`` x ``prompts_per_step / mini_batch_prompts``)."""
    from nemo_gift.models.policy.optimizer import OptimizerSettings

    o, t = cfg.optim, cfg.trainer
    optimizer_steps = max_steps * (t.prompts_per_step // t.mini_batch_prompts)
    return OptimizerSettings(
        lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2,
        clip_grad=o.clip_grad, schedule=o.schedule, warmup_steps=o.warmup_steps,
        decay_steps=max(optimizer_steps, o.warmup_steps + 1) if o.schedule == "cosine" else None,
    )


def setup_engine(cfg: RunConfig, policy: MegatronPolicy,
                 task: Task) -> tuple[GenerationBackend, Callable[[], None] | None]:
    """The rollout engine and its refit (None: the torch engine generates with the policy's own
    module, whose weights are always current)."""
    if cfg.rollout.engine == "torch":
        from nemo_gift.models.generation.torch_engine import TorchGenerationEngine

        engine = TorchGenerationEngine(policy.module, cfg.model, seed=cfg.seed, pad_token_id=task.pad_token_id)
        return engine, None
    from nemo_gift.models.generation.trtllm_engine import TrtllmGenerationEngine, wake_and_refit
    from nemo_gift.models.generation.trtllm_runtime import replica_group

    engine = TrtllmGenerationEngine.from_config(cfg, tokenizer_dir=cfg.tokenizer.path or cfg.init.hf_checkpoint,
                                                pad_token_id=task.pad_token_id, replica=replica_group())
    return engine, functools.partial(wake_and_refit, engine, policy.hf_weights)


def loop_config(cfg: RunConfig, max_steps: int, stop: tuple[int, ...]) -> LoopConfig:
    """The loop's settings: ``trainer``, ``rollout``'s sampling (stopping at ``stop``), checkpoints,
    the algorithm's options, and the run config saved with every checkpoint."""
    from nemo_gift.algorithms.gift import LoopConfig
    from nemo_gift.algorithms.interfaces import SamplingConfig

    t, r = cfg.trainer, cfg.rollout
    return LoopConfig(
        algorithm=t.algorithm, max_steps=max_steps, group_size=r.group_size, mini_batch_prompts=t.mini_batch_prompts,
        micro_batch_size=t.micro_batch_size, eval_every=t.eval_every, checkpoint_every=cfg.checkpoint.every,
        keep_last=cfg.checkpoint.keep_last, seed=cfg.seed, checkpoint_dir=str(Path(cfg.run_dir) / "checkpoints"),
        sampling=SamplingConfig(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                top_k=r.top_k, stop_token_ids=stop),
        eval_sampling=SamplingConfig(max_new_tokens=r.max_new_tokens, temperature=r.eval_temperature,
                                     stop_token_ids=stop),
        algorithm_options=cfg.algorithm_options, trainer_state={RUN_CONFIG_KEY: to_dict(cfg)},
        pad_multiple=cfg.parallel.sequence_pad_multiple, max_tokens_per_micro_batch=t.max_tokens_per_micro_batch,
        reuse_engine_logprobs=engine_logprobs_as_pi_old(cfg),
    )


def engine_logprobs_as_pi_old(cfg: RunConfig) -> bool:
    """``rollout.reuse_engine_logprobs``, resolved: only the torch engine's; ``null`` means on with
    fp32 parameters where the algorithm's registry entry allows it (``engine_logprobs_by_default``)."""
    from nemo_gift.algorithms.registry import get_algorithm

    r = cfg.rollout
    if r.engine != "torch":
        return False
    if r.reuse_engine_logprobs is not None:
        return r.reuse_engine_logprobs
    return cfg.parallel.params_dtype == "float32" and get_algorithm(cfg.trainer.algorithm).engine_logprobs_by_default


def train(session: Session) -> list[dict]:
    """The RL loop (:func:`nemo_gift.algorithms.gift.train`) from the session's start step; its history."""
    from nemo_gift.algorithms import gift

    return gift.train(session.parts, session.loop, start_step=session.start_step)


def cleanup(session: Session) -> None:
    """Close the progress bar and the metrics, and shut the engine down (after a failed step too)."""
    session.progress.close()
    session.logger.close()
    if hasattr(session.engine, "shutdown"):
        session.engine.shutdown()


def plot_curves(session: Session) -> None:
    """``RUN_DIR/plots/curves.png`` from the closed metrics (rank 0, ``logging.plots``)."""
    if session.rank == 0 and session.cfg.logging.plots:
        from nemo_gift.utils.plots import plot_runs

        run_dir = Path(session.cfg.run_dir)
        plot_runs([run_dir], run_dir / "plots" / "curves.png")


def run(cfg: RunConfig, plan: ResumePlan | None = None) -> list[dict]:
    """Set up and train on this rank (resuming per ``plan``, else :func:`plan_resume`); returns the
    loop's history."""
    session = setup(cfg, plan)
    try:
        history = train(session)
    finally:
        cleanup(session)
    plot_curves(session)
    return history


def teardown_distributed() -> None:
    """Leave the model-parallel groups and the default process group, where this rank joined them."""
    if dist.is_initialized():
        from megatron.core import parallel_state as ps

        ps.destroy_model_parallel()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, plan = parse(argv)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    try:
        run(cfg, plan)
    finally:
        teardown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
