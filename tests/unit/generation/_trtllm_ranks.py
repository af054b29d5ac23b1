"""Rank functions of the trainer tests with ``rollout.engine=trtllm`` against the TensorRT-LLM
double (``tests/doubles``), run through ``run_on_ranks``. They put the double on ``sys.path``
themselves: spawned ranks do not see the parent's path changes made after start."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
DOUBLES = str(REPO / "tests" / "doubles")
LAUNCHER_ENV = {"SLURM_JOB_ID": "4242", "SLURM_NODELIST": "localhost", "PMI_SIZE": "4", "PMIX_NAMESPACE": "double"}
"""What srun leaves in a rank's environment (the engine's owner must clear it before the import)."""


def _use_double(state_dir: str) -> None:
    if DOUBLES not in sys.path:
        sys.path.insert(0, DOUBLES)
    os.environ["TRTLLM_DOUBLE_STATE_DIR"] = state_dir


def _log_optimizer_steps() -> None:
    """Record every optimizer step in this process's call log (the order check needs them)."""
    import trtllm_double_log

    from nemo_gift.models.policy.megatron_policy import MegatronPolicy

    original = MegatronPolicy.train_step

    def train_step(self, *args, **kwargs):
        trtllm_double_log.record("optimizer_step")
        return original(self, *args, **kwargs)

    MegatronPolicy.train_step = train_step


def train_runs(rank: int, world_size: int, raws: list[dict], state_dir: str) -> dict:
    """``nemo_gift.train.run`` once per config in ``raws`` (e.g. a run, then its resume)."""
    _use_double(state_dir)
    _log_optimizer_steps()
    from nemo_gift.config.schema import load_run_config
    from nemo_gift.train import run

    histories = []
    for raw in raws:
        history = run(load_run_config(raw, cuda=False))
        histories.append([{k: v for k, v in r.items() if not k.startswith("time")} for r in history])
    return {"histories": histories, "env_after": {k: os.environ.get(k) for k in ("SLURM_JOB_ID", "TLLM_DISABLE_MPI")},
            "imported": "tensorrt_llm" in sys.modules}


def _hf_weights_of(ckpt: str, model_cfg):
    """HF-named full tensors of a checkpoint, through a TP=1 model (a world of one)."""
    from nemo_gift.models.policy.hf_weights import export_hf_tensors
    from nemo_gift.models.policy import checkpoint, sharding
    from nemo_gift.models.policy.builder import build_gpt_model
    from nemo_gift.models.policy.config import ParallelConfig

    model = build_gpt_model(model_cfg, ParallelConfig())
    sharding.load_full_state(model, dict(checkpoint.iter_full_tensors(ckpt)))
    return model, [(name, t.clone()) for name, t in export_hf_tensors(model, model_cfg)]


def reference(rank: int, world_size: int, raw: dict, checkpoints: dict[str, str], prompts: dict, steps: int) -> dict:
    """Ground truth from the run's own files, in a world of one: the digests of the checkpoints'
    weights (as the double computes them), the torch engine's greedy responses on a
    checkpoint's weights to the prompts the double answered (``prompts[name]``), and the
    encoded prompt batches of the first ``steps`` rollout steps."""
    if DOUBLES not in sys.path:
        sys.path.insert(0, DOUBLES)
    from trtllm_double_log import weights_digest

    from nemo_gift.algorithms.rollout import PromptSampler
    from nemo_gift.config.schema import load_run_config
    from nemo_gift.models.policy import parallel
    from nemo_gift.algorithms.interfaces import SamplingConfig
    from nemo_gift.models.generation.torch_engine import TorchGenerationEngine
    from nemo_gift.models.policy.config import ParallelConfig
    from nemo_gift.data.task import build_task
    from nemo_gift.train import task_spec

    cfg = load_run_config(raw, cuda=False)
    parallel.initialize(ParallelConfig(), seed=0)
    task = build_task(task_spec(cfg))
    out = {"digests": {}, "greedy": {}}
    for name, ckpt in checkpoints.items():
        model, hf = _hf_weights_of(ckpt, cfg.model)
        out["digests"][name] = weights_digest(hf)
        if name in prompts:
            greedy = SamplingConfig(max_new_tokens=cfg.rollout.max_new_tokens, temperature=0.0,
                                    stop_token_ids=task.stop_token_ids)
            out["greedy"][name] = TorchGenerationEngine(model, cfg.model, pad_token_id=task.pad_token_id).generate(
                prompts[name], 1, greedy).responses()
    sampler = PromptSampler(task.train_records, cfg.trainer.prompts_per_step, seed=cfg.seed)
    out["batches"] = [[task.encode(r) for r in sampler.next_batch()] for _ in range(steps)]
    return out
