"""The GIFT (and GRPO) training loop, as plain functions over Protocols.

Each rollout step (docs/gift-math.md for the symbols):
1. sample B prompts (:class:`~nemo_gift.algorithms.rollout.PromptSampler`);
2. generate G responses each with the rollout engine; each data-parallel (DP) rank generates
   for its B/D prompts, and the responses are gathered so that every rank holds the batch;
3. score them (explicit rewards r);
4. compute the baseline log-probs with the distributed reduction: pi_old (GIFT's default, the
   author's code and the CPU experiment's evidence) or pi_ref (the paper) for GIFT; pi_old and
   pi_ref for GRPO. pi_old runs no forward of its own when it can be had for free
   (:func:`old_policy_source`): from the training forward itself, detached, when one optimizer
   step takes the whole rollout batch; else from the torch engine's sampled-token log-probs;
5. put the rollout engine to sleep, then run B / mini-batch optimizer steps, each on whole
   groups, with GIFT's or GRPO's objective normalized over the mini-batch (so micro-batching and
   layout cannot change it);
6. wake the rollout engine and refit it with the new weights (``LoopParts.refit``), as also
   happens once before the first rollout of a run (after the warm start or a resume).
Every ``eval_every`` steps (and at the start and the end) greedy pass@1 is measured on the
held-out prompts and on as many training prompts, so the train/eval gap is visible.

Departures from the paper, all documented in docs/gift-math.md: pi_old is the trainer's own
forward (the training forward, or a recomputation) unless ``reuse_engine_logprobs`` takes the
torch engine's (equal within 1e-5); the degenerate implicit std is guarded (``gift.std_guard``).
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from contextlib import contextmanager
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.distributed as dist

from nemo_gift.algorithms.interfaces import GenerationBackend, PolicyInterface, SamplingConfig
from nemo_gift.algorithms.normalization import explicit_advantages
from nemo_gift.algorithms.objectives import with_training_forward_as
from nemo_gift.algorithms.registry import MiniBatchStep, get_algorithm
from nemo_gift.algorithms.rollout import PromptSampler, build_token_batch, select


@dataclasses.dataclass
class LoopConfig:
    """What the loop needs of the run config (kept small so that tests can build it)."""

    algorithm: str
    """A name of :data:`nemo_gift.algorithms.registry.ALGORITHMS` (``gift``, ``grpo``)."""
    max_steps: int
    group_size: int
    mini_batch_prompts: int
    micro_batch_size: int
    eval_every: int
    checkpoint_every: int
    keep_last: int
    sampling: SamplingConfig
    eval_sampling: SamplingConfig
    algorithm_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Options by registry name (``{"gift": GiftLossConfig(...)}``); an algorithm absent here
    runs with its options dataclass's defaults."""
    seed: int = 1234
    checkpoint_dir: Optional[str] = None
    trainer_state: dict = dataclasses.field(default_factory=dict)
    """Saved in every checkpoint's trainer state beside the loop's own (the resolved run config)."""
    pad_multiple: int = 1
    """Token batches are padded to a multiple of this (the layout's ``sequence_pad_multiple``)."""
    max_tokens_per_micro_batch: Optional[int] = None
    """``trainer.max_tokens_per_micro_batch``: micro-batches packed by length under this budget."""
    reuse_engine_logprobs: bool = False
    """The engine's log-probs of the policy's own distribution (``GenerationOutput.policy_logprobs``)
    serve as pi_old when the training forward cannot (more than one optimizer step per batch)."""

    def options(self):
        """The options of ``algorithm``: from ``algorithm_options``, else its dataclass's defaults."""
        return self.algorithm_options.get(self.algorithm) or get_algorithm(self.algorithm).options()


@dataclasses.dataclass
class LoopParts:
    """The loop's collaborators."""

    policy: PolicyInterface
    engine: GenerationBackend
    score: Callable[[Sequence[Any], Sequence[str]], tuple[torch.Tensor, list[str]]]
    """``score(records, response_texts) -> (rewards [n], reasons)``."""
    encode: Callable[[Any], list[int]]
    """Prompt record -> prompt token ids (template applied)."""
    decode: Callable[[Sequence[int]], str]
    pad_token_id: int
    sampler: PromptSampler
    eval_records: Sequence[Any]
    train_eval_records: Sequence[Any]
    refit: Optional[Callable[[], None]] = None
    """Pushes the policy's new weights into the engine; None when the engine generates with
    the policy's own modules (the torch engine), whose weights are then already current."""
    log: Callable[[int, dict], Any] = lambda step, metrics: None
    progress: Callable[[int, dict], None] = lambda step, metrics: None
    dp_rank: int = 0
    dp_size: int = 1
    dp_group: Any = None
    extra_eval_records: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
    """More greedy evaluation sets, by name: ``NAME/pass@1`` is the rate of answers matching their key."""


@contextmanager
def _timer(metrics: dict, key: str):
    start = time.perf_counter()
    yield
    metrics[key] = metrics.get(key, 0.0) + time.perf_counter() - start


def _step_seed(seed: int, step: int, dp_rank: int, what: str) -> int:
    """A sampling seed that depends only on (run seed, step, DP rank): resumes reproduce it."""
    return zlib.crc32(f"{seed}/{what}/{step}/{dp_rank}".encode())


def _gather(parts: LoopParts, local: list) -> list:
    """Concatenate per-DP-rank lists in DP-rank order."""
    if parts.dp_size == 1:
        return local
    out: list = [None] * parts.dp_size
    dist.all_gather_object(out, local, group=parts.dp_group)
    return [x for chunk in out for x in chunk]


def generate_and_score(parts: LoopParts, records: Sequence[Any], n: int, sampling: SamplingConfig,
                       policy_logprobs: bool = False):
    """Responses to ``records`` (n each, grouped by prompt) with rewards and reasons, on every rank.

    Returns ``(prompt_ids, responses, response_logprobs, rewards [B*n], reasons)``; the log-probs
    are the sampling distribution's, or with ``policy_logprobs`` the policy's own (unmodified
    logits, which the engine must report)."""
    b = len(records)
    per_rank = b // parts.dp_size
    mine = records[parts.dp_rank * per_rank : (parts.dp_rank + 1) * per_rank]
    prompt_ids = [parts.encode(r) for r in records]
    my_prompts = prompt_ids[parts.dp_rank * per_rank : (parts.dp_rank + 1) * per_rank]
    out = parts.engine.generate(my_prompts, n, sampling)
    responses = out.responses()
    if policy_logprobs and out.policy_logprobs is None:
        raise ValueError(f"{type(parts.engine).__name__} reports no policy log-probs: turn rollout.reuse_engine_logprobs off")
    source = out.policy_logprobs if policy_logprobs else out.logprobs  # [B/D*n, T]
    logprobs = [row[: len(r)].tolist() for row, r in zip(source, responses)]
    texts = [parts.decode(r) for r in responses]
    rewards, reasons = parts.score([mine[int(i)] for i in out.prompt_index], texts)  # [B/D*n]
    local = list(zip(responses, logprobs, rewards.tolist(), reasons))
    gathered = _gather(parts, local)
    responses, logprobs, rewards, reasons = (list(x) for x in zip(*gathered))
    return prompt_ids, responses, logprobs, torch.tensor(rewards, dtype=torch.float32), reasons  # rewards [B*n]


def evaluate(parts: LoopParts, cfg: LoopConfig) -> dict[str, float]:
    """Greedy pass@1 (and mean reward, response length) on held-out and training prompts."""
    metrics = {}
    splits = (("eval", parts.eval_records), ("train", parts.train_eval_records), *parts.extra_eval_records.items())
    for split, records in splits:
        _, responses, _, rewards, reasons = generate_and_score(parts, list(records), 1, cfg.eval_sampling)
        metrics[f"{split}/pass@1"] = sum(r == "correct" for r in reasons) / len(reasons)
        metrics[f"{split}/greedy_reward"] = float(rewards.mean())
        metrics[f"{split}/greedy_response_length"] = sum(map(len, responses)) / len(responses)
    metrics["gap/train_minus_eval_pass@1"] = metrics["train/pass@1"] - metrics["eval/pass@1"]
    return metrics


def _mean_metrics(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for d in dicts for k in d}
    return {k: sum(d[k] for d in dicts if k in d) / sum(k in d for d in dicts) for k in keys}


def _first_vs_later(step_metrics: list[dict], keys: Sequence[str]) -> dict[str, float]:
    """``train/KEY/first_mb`` (the rollout batch's first optimizer step) and ``train/KEY/later_mb``
    (the mean of the others): with the pi_old baseline s = 0 on the first, so the GIFT loss acts
    only from the second on. Keys the objective did not report are left out."""
    out = {}
    for key in (k for k in keys if step_metrics and k in step_metrics[0]):
        out[f"train/{key}/first_mb"] = step_metrics[0][key]
        if len(step_metrics) > 1:
            out[f"train/{key}/later_mb"] = sum(m[key] for m in step_metrics[1:]) / (len(step_metrics) - 1)
    return out


OLD_POLICY_SOURCES = ("training_forward", "engine", "recomputed")
"""Where pi_old comes from (:func:`old_policy_source`); the metric ``logprobs/pi_old_from_SOURCE``."""


def old_policy_source(cfg: LoopConfig, batch: Mapping[str, torch.Tensor], n: int) -> str:
    """Where pi_old comes from, cheapest exact source first.

    - ``training_forward``: one optimizer step takes the whole rollout batch, so pi_old is the
      policy being trained: the objective reads the training forward's log-probs, detached
      (:func:`~nemo_gift.algorithms.objectives.with_training_forward_as`). Exact: the forward
      has no dropout (``models/policy/builder.py``), so train and eval mode agree; GIFT's
      log-ratio is then 0 and GRPO's ratio 1 in value, with the gradient of log pi.
    - ``engine``: ``reuse_engine_logprobs`` and the batch carries the engine's policy log-probs
      (``rollout_logprobs``); equal to a recomputation within 1e-5 (tests/unit/generation). The
      first optimizer step still reads the training forward: with the engine's, GIFT's s = 0 there
      would be rounding noise (~1e-6), which z divides by the degenerate std (``std_guard_value``).
    - ``recomputed``: a forward-only pass of the policy before the first optimizer step."""
    if cfg.mini_batch_prompts * cfg.group_size >= n:
        return "training_forward"
    return "engine" if cfg.reuse_engine_logprobs and "rollout_logprobs" in batch else "recomputed"


def update(parts: LoopParts, cfg: LoopConfig, batch: dict[str, torch.Tensor], rewards: torch.Tensor) -> dict:
    """Step 4-5: baseline log-probs, advantages, then one optimizer step per mini-batch.

    What the algorithm needs (log-probs, objective) comes from its registry entry
    (:mod:`nemo_gift.algorithms.registry`); pi_old (the entry's non-reference log-probs) comes
    from :func:`old_policy_source`."""
    G, metrics = cfg.group_size, {}
    n = rewards.shape[0]
    algorithm = get_algorithm(cfg.algorithm)
    options = cfg.options()  # its own eps and std estimator
    adv, zero_std = explicit_advantages(rewards, G, eps=options.eps, unbiased=options.unbiased_std)  # [N], [B]
    batch = dict(batch, advantages=adv, group_index=torch.arange(n) // G)  # [N], [N]
    needed = algorithm.logprobs(options)
    old_keys = [key for key, reference in needed.items() if not reference]
    source = old_policy_source(cfg, batch, n)
    with _timer(metrics, "time/logprobs"):
        for key, reference in needed.items():
            if reference or source == "recomputed":
                batch[key] = parts.policy.logprobs(batch, reference=reference)  # [N, S]
            elif source == "engine":
                batch[key] = batch["rollout_logprobs"]  # [N, S]
    if old_keys:
        metrics.update({f"logprobs/pi_old_from_{s}": float(s == source) for s in OLD_POLICY_SOURCES})
    step_metrics = []
    rows_per_mini = cfg.mini_batch_prompts * G
    with _timer(metrics, "time/update"):
        for start in range(0, n, rows_per_mini):
            idx = torch.arange(start, start + rows_per_mini)  # [k*G]
            mini = select(batch, idx)  # every field [k*G, ...]
            own_baseline = bool(old_keys) and (source == "training_forward" or (source == "engine" and start == 0))
            if own_baseline:  # the objective fills them from the training forward
                mini = {key: value for key, value in mini.items() if key not in old_keys}
            mini["group_index"] = mini["group_index"] - start // G
            k = cfg.mini_batch_prompts
            step = MiniBatchStep(
                batch=mini, num_groups=k, group_size=G, zero_std=zero_std[start // G : start // G + k],
                micro_batch_size=cfg.micro_batch_size, policy=parts.policy,
                max_tokens_per_micro_batch=cfg.max_tokens_per_micro_batch,
            )
            objective = algorithm.objective(options, step)
            if objective is None:
                continue  # nothing to learn from (e.g. every group constant and dropped)
            if own_baseline:
                objective = with_training_forward_as(objective, old_keys)
            step_metrics.append(parts.policy.train_step(mini, objective, group_size=G))
    metrics.update({f"train/{k}": v for k, v in _mean_metrics(step_metrics).items()} if step_metrics else {})
    metrics.update(_first_vs_later(step_metrics, ("z_a_corr", "degenerate_implicit_std_frac")))
    metrics["train/zero_std_frac"] = float(zero_std.float().mean())
    metrics["train/optimizer_steps"] = len(step_metrics)
    return metrics


def rollout_step(parts: LoopParts, cfg: LoopConfig, step: int) -> dict[str, float]:
    """One whole rollout step (1-6 of the module docstring); returns its metrics."""
    metrics: dict[str, float] = {}
    t0 = time.perf_counter()
    records = parts.sampler.next_batch()
    sampling = dataclasses.replace(cfg.sampling, seed=_step_seed(cfg.seed, step, parts.dp_rank, "train"))
    with _timer(metrics, "time/rollout"):
        prompt_ids, responses, logprobs, rewards, reasons = generate_and_score(
            parts, records, cfg.group_size, sampling, policy_logprobs=cfg.reuse_engine_logprobs
        )
    parts.engine.sleep()  # its memory goes to training until the refit below wakes it
    n = len(responses)
    index = [i // cfg.group_size for i in range(n)]
    # tokens, labels, loss_mask [N, S] (S padded to pad_multiple), rollout log-probs [N, S]
    batch = build_token_batch(prompt_ids, responses, index, parts.pad_token_id, logprobs, cfg.pad_multiple)
    metrics["train/reward"] = float(rewards.mean())
    metrics["train/accuracy"] = sum(r == "correct" for r in reasons) / n
    metrics["train/response_length"] = sum(map(len, responses)) / n
    for reason in sorted(set(reasons)):
        metrics[f"reward/{reason}_frac"] = reasons.count(reason) / n
    metrics.update(update(parts, cfg, batch, rewards))
    parts.engine.wake()
    if parts.refit is not None:
        with _timer(metrics, "time/refit"):
            parts.refit()
    metrics["time/step"] = time.perf_counter() - t0
    return metrics


def train(parts: LoopParts, cfg: LoopConfig, start_step: int = 0) -> list[dict[str, float]]:
    """Run rollout steps ``start_step + 1 .. max_steps``; returns every logged record.

    ``start_step`` > 0 means a resume: the policy and the sampler were restored by the caller
    from the checkpoint of that step.
    """
    history = []

    def record(step, metrics):
        history.append({"step": step, **metrics})
        parts.log(step, metrics)
        parts.progress(step, metrics)

    if parts.refit is not None:  # the engine holds its load-time weights, not the warm-started or resumed ones
        parts.refit()
    if start_step == 0 and cfg.eval_every:
        with _timer(m := {}, "time/eval"):
            m.update(evaluate(parts, cfg))
        record(0, m)
    for step in range(start_step + 1, cfg.max_steps + 1):
        metrics = rollout_step(parts, cfg, step)
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            with _timer(metrics, "time/eval"):
                metrics.update(evaluate(parts, cfg))
        record(step, metrics)
        last = step == cfg.max_steps
        if cfg.checkpoint_dir and (last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
            parts.policy.save(
                cfg.checkpoint_dir, step, {**cfg.trainer_state, "step": step, "sampler": parts.sampler.state_dict()},
                cfg.keep_last,
            )
    return history
