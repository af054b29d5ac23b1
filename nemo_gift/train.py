"""One rank of a GIFT or GRPO run: ``python -m nemo_gift.train --config RUN_DIR/config.yaml``.

The launcher (``launcher/run.py``) writes the config and starts this on every rank (directly,
through torchrun, or through srun). Steps: parse -> set up (process groups, task, policy,
warm start, engine, resume) -> train (:func:`nemo_gift.algorithms.gift.train`) -> clean up.

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
import random
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from nemo_gift.utils.convert import ConfigError, to_dict
from nemo_gift.config.resume import RUN_CONFIG_KEY, ResumePlan, plan_resume, record_changes, verified_plan
from nemo_gift.config.schema import RunConfig, read_run_config


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


@dataclasses.dataclass
class Task:
    """What the loop needs of the data: prompts, encoding, scoring, SFT examples."""

    train_records: list
    eval_records: list
    train_eval_records: list
    encode: object
    decode: object
    pad_token_id: int
    stop_token_ids: tuple[int, ...]
    score: object
    sft_examples: object = None
    extra_eval_records: dict = dataclasses.field(default_factory=dict)
    """More greedy evaluation sets, by name (the arithmetic pool's wrong-key slice: ``memo``)."""


def build_task(cfg: RunConfig) -> Task:
    """The synthetic arithmetic task (CPU); real datasets need an hf tokenizer (see docs)."""
    from nemo_gift.data.arithmetic_sets import arithmetic_sets
    from nemo_gift.data.synthetic import ArithmeticConfig, ArithmeticTask, Split
    from nemo_gift.rewards import get_verifier

    if cfg.data.dataset != "arithmetic":
        return fit_prompt_length(build_dataset_task(cfg), cfg.data.max_prompt_length)
    task = ArithmeticTask(cfg.data.arithmetic.task_config())
    tok = task.tokenizer
    if tok.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"model.vocab_size={cfg.model.vocab_size} < the char tokenizer's {tok.vocab_size}")
    n_train = max(4096, cfg.trainer.prompts_per_step * 64)
    data_seed = cfg.seed if cfg.data.seed is None else cfg.data.seed
    sets = arithmetic_sets(task, n_train, cfg.data.eval_size, data_seed)  # a stream, or a small pool
    train, heldout, train_eval = sets.train, sets.heldout, sets.train_eval
    extra_eval = {"memo": sets.wrong_key} if sets.wrong_key else {}
    verifier = get_verifier(cfg.reward.verifier or task.verifier_name)

    def score(records, texts):
        results = verifier.verify_batch(texts, [r.ground_truth for r in records])
        return torch.tensor([r.reward for r in results], dtype=torch.float32), [r.reason.value for r in results]

    sft_rng_seed = init_seed(cfg) + 2

    def sft_examples(step: int):
        problems = task.problems(Split.TRAIN, cfg.sft.batch_size, seed=sft_rng_seed * 1_000_003 + step)
        teacher = random.Random(sft_rng_seed * 7_000_003 + step)
        return [task.sft_example(p, teacher) for p in problems]

    return fit_prompt_length(Task(
        train_records=train, eval_records=heldout, train_eval_records=train_eval,
        encode=lambda r: tok.encode(r.prompt, add_special_tokens=True),
        decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
        pad_token_id=tok.pad_token_id, stop_token_ids=(tok.eos_token_id,), score=score, sft_examples=sft_examples,
        extra_eval_records=extra_eval,
    ), cfg.data.max_prompt_length)


def build_dataset_task(cfg: RunConfig) -> Task:
    """GSM8K / MATH / DAPO / AIME / Infinity-Instruct with a local Hugging Face tokenizer."""
    from transformers import AutoTokenizer

    from nemo_gift.data import load_records, render_prompt
    from nemo_gift.rewards import MathEquivalencePool, VerifierConfig, get_verifier

    path = cfg.tokenizer.path or cfg.init.hf_checkpoint
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.init.trust_remote_code)
    train = load_records(cfg.data.dataset, cfg.data.train_path)
    heldout = load_records(cfg.data.eval_dataset or cfg.data.dataset, cfg.data.eval_path, limit=cfg.data.eval_size)
    if cfg.reward.kind == "reward_model":
        from nemo_gift.rewards import RewardModelConfig, RewardModelScorer

        scorer = RewardModelScorer.from_config(
            RewardModelConfig(
                model_path=cfg.reward.reward_model_path, length_normalize=cfg.reward.length_normalize,
                batch_size=cfg.reward.batch_size, device=cfg.reward.device,
            ),
            trust_remote_code=cfg.init.trust_remote_code,
        )

        def score(records, texts):
            out = scorer.score([r.prompt for r in records], texts)
            return torch.as_tensor(out.scores, dtype=torch.float32), ["scored"] * len(texts)
    else:
        verifiers = {}
        verify_cfg = VerifierConfig(timeout_s=cfg.reward.timeout_s)
        pool = MathEquivalencePool(num_workers=cfg.reward.math_verify_workers, timeout_s=cfg.reward.timeout_s)

        def score(records, texts):
            rewards, reasons = [], []
            for r, text in zip(records, texts):
                name = cfg.reward.verifier or r.verifier
                v = verifiers.setdefault(name, get_verifier(name, verify_cfg, pool))
                res = v(text, r.ground_truth)
                rewards.append(res.reward)
                reasons.append(res.reason.value)
            return torch.tensor(rewards, dtype=torch.float32), reasons

    template = cfg.data.template
    stop = tuple(t for t in {tok.eos_token_id, getattr(tok, "pad_token_id", None)} if t is not None)
    return Task(
        train_records=train, eval_records=heldout, train_eval_records=train[: cfg.data.eval_size],
        encode=lambda r: tok.encode(render_prompt(r, template, tok), add_special_tokens=False),
        decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        stop_token_ids=stop, score=score,
    )


def fit_prompt_length(task: Task, max_prompt_length: int) -> Task:
    """``task`` without the prompts longer than ``data.max_prompt_length`` tokens (as encoded for
    generation, template included); counts the dropped ones in the log."""
    from nemo_gift.data.templates import filter_by_token_count

    def count(record):
        return len(task.encode(record))

    kept = {}
    for field in ("train_records", "eval_records", "train_eval_records"):
        kept[field], _ = filter_by_token_count(getattr(task, field), count, max_prompt_length,
                                               "data.max_prompt_length", field.replace("_", " "))
    return dataclasses.replace(task, **kept)


def init_seed(cfg: RunConfig) -> int:
    """The seed of the model's initialization and warm start (``sft.seed``, else ``seed``)."""
    return cfg.seed if cfg.sft.seed is None else cfg.sft.seed


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


def run(cfg: RunConfig, plan: ResumePlan | None = None) -> list[dict]:
    """Set up and train on this rank (resuming per ``plan``, else :func:`plan_resume`); returns the
    loop's history."""
    from megatron.core import parallel_state as ps

    from nemo_gift.algorithms.gift import LoopConfig, LoopParts, train
    from nemo_gift.algorithms.registry import get_algorithm
    from nemo_gift.algorithms.rollout import PromptSampler
    from nemo_gift.models.policy import parallel
    from nemo_gift.algorithms.interfaces import SamplingConfig
    from nemo_gift.models.policy.megatron_policy import MegatronPolicy
    from nemo_gift.models.policy.optimizer import OptimizerSettings
    from nemo_gift.utils.logger import MetricsLogger
    from nemo_gift.utils.progress import Progress

    plan = plan_resume(cfg) if plan is None else plan  # a refused resume stops here, before any work
    rank, world = init_distributed(os.environ.get("NEMO_GIFT_DIST_BACKEND", cfg.cluster.backend))
    parallel.initialize(cfg.parallel, seed=init_seed(cfg))
    run_dir = Path(cfg.run_dir)
    task = build_task(cfg)
    t = cfg.trainer
    sampler = PromptSampler(task.train_records, t.prompts_per_step, seed=cfg.seed)
    max_steps = t.max_steps if t.epochs is None else t.epochs * sampler.steps_per_epoch

    ckpt_root = run_dir / "checkpoints"
    plan = verified_plan(cfg, plan)  # file contents checked over the ranks; a corrupt newest checkpoint falls back
    resume, start_step = plan.checkpoint, plan.step

    logger = MetricsLogger(
        run_dir, enabled=rank == 0, tensorboard=cfg.logging.tensorboard, wandb=cfg.logging.wandb,
        wandb_project=cfg.logging.wandb_project, run_name=cfg.name, config=to_dict(cfg),
        resume_step=start_step if resume else None,
    )
    if rank == 0:
        record_changes(run_dir, plan)
    algorithm = get_algorithm(t.algorithm)
    use_reference = algorithm.needs_reference(cfg.loss_options())
    policy = MegatronPolicy(cfg.model, cfg.parallel, micro_batch_size=t.micro_batch_size,
                            logprob_chunk_size=t.logprob_chunk_size, with_reference=use_reference,
                            offload_reference=cfg.init.offload_reference,
                            max_tokens_per_micro_batch=t.max_tokens_per_micro_batch)
    if cfg.init.hf_checkpoint:
        from nemo_gift.export.hf_import import import_hf

        import_hf(policy.module, cfg.init.hf_checkpoint, cfg.model)
    sft_logger = MetricsLogger(run_dir, enabled=rank == 0 and not resume, tensorboard=cfg.logging.tensorboard,
                               filename="sft_metrics.jsonl")
    warm_start(cfg, policy, task, sft_logger.log)
    sft_logger.close()
    policy.sync_reference()  # pi_ref: the model RL starts from
    o = cfg.optim
    optimizer_steps = max_steps * (t.prompts_per_step // t.mini_batch_prompts)
    policy.configure_optimizer(OptimizerSettings(
        lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2,
        clip_grad=o.clip_grad, schedule=o.schedule, warmup_steps=o.warmup_steps,
        decay_steps=max(optimizer_steps, o.warmup_steps + 1) if o.schedule == "cosine" else None,
    ))
    if resume:
        state = policy.load(str(resume))
        sampler.load_state_dict(state["sampler"])

    if cfg.rollout.engine == "torch":
        from nemo_gift.models.generation.torch_engine import TorchGenerationEngine

        engine = TorchGenerationEngine(policy.module, cfg.model, seed=cfg.seed, pad_token_id=task.pad_token_id)
        refit = None  # generates with the policy's own module
    else:
        from nemo_gift.models.generation.trtllm_engine import TrtllmGenerationEngine, wake_and_refit
        from nemo_gift.models.generation.trtllm_runtime import replica_group

        engine = TrtllmGenerationEngine.from_config(cfg, tokenizer_dir=cfg.tokenizer.path or cfg.init.hf_checkpoint,
                                                    pad_token_id=task.pad_token_id, replica=replica_group())
        refit = functools.partial(wake_and_refit, engine, policy.hf_weights)

    r = cfg.rollout
    stop = task.stop_token_ids
    loop_cfg = LoopConfig(
        algorithm=t.algorithm, max_steps=max_steps, group_size=r.group_size, mini_batch_prompts=t.mini_batch_prompts,
        micro_batch_size=t.micro_batch_size, eval_every=t.eval_every, checkpoint_every=cfg.checkpoint.every,
        keep_last=cfg.checkpoint.keep_last, seed=cfg.seed, checkpoint_dir=str(ckpt_root),
        sampling=SamplingConfig(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                top_k=r.top_k, stop_token_ids=stop),
        eval_sampling=SamplingConfig(max_new_tokens=r.max_new_tokens, temperature=r.eval_temperature,
                                     stop_token_ids=stop),
        algorithm_options=cfg.algorithm_options, trainer_state={RUN_CONFIG_KEY: to_dict(cfg)},
        pad_multiple=cfg.parallel.sequence_pad_multiple, max_tokens_per_micro_batch=t.max_tokens_per_micro_batch,
        reuse_engine_logprobs=r.engine == "torch" and (r.reuse_engine_logprobs if r.reuse_engine_logprobs is not None
                                                       else cfg.parallel.params_dtype == "float32" and algorithm.engine_logprobs_by_default),
    )
    progress = Progress(max_steps, start_step, enabled=rank == 0 and cfg.logging.progress_bar, name=cfg.name)
    parts = LoopParts(
        policy=policy, engine=engine, score=task.score, encode=task.encode, decode=task.decode,
        pad_token_id=task.pad_token_id, sampler=sampler, eval_records=task.eval_records,
        train_eval_records=task.train_eval_records, refit=refit, log=logger.log, progress=progress.update,
        extra_eval_records=task.extra_eval_records,
        dp_rank=ps.get_data_parallel_rank(), dp_size=ps.get_data_parallel_world_size(),
        dp_group=ps.get_data_parallel_group(),
    )
    try:
        history = train(parts, loop_cfg, start_step=start_step)
    finally:
        progress.close()
        logger.close()
        if hasattr(engine, "shutdown"):
            engine.shutdown()
    if rank == 0 and cfg.logging.plots:
        from nemo_gift.utils.plots import plot_runs

        plot_runs([run_dir], run_dir / "plots" / "curves.png")
    return history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="RUN_DIR/config.yaml written by the launcher")
    args = parser.parse_args(argv)
    try:
        cfg = read_run_config(args.config)
        plan = plan_resume(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    try:
        run(cfg, plan)
    finally:
        if dist.is_initialized():
            from megatron.core import parallel_state as ps

            ps.destroy_model_parallel()
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
