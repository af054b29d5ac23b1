"""The task a run trains on: its prompt sets, their encoding and decoding, the reward, and the
warm start's demonstrations, assembled from a :class:`TaskSpec`.

    task = build_task(spec)   # the synthetic arithmetic task, or a dataset with an HF tokenizer

``nemo_gift.train.task_spec`` fills the spec from a run config (``data``, ``reward``,
``tokenizer``, ``init``, ``sft``, the seeds, ``model.vocab_size``, ``trainer.prompts_per_step``);
this layer never reads the run config itself.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, Sequence

import torch

from nemo_gift.data.records import DatasetName, PromptRecord
from nemo_gift.data.synthetic import ArithmeticConfig
from nemo_gift.data.templates import TemplateKind
from nemo_gift.rewards.reward_model import RewardModelConfig

ScoreFn = Callable[[Sequence[PromptRecord], Sequence[str]], tuple[torch.Tensor, list[str]]]
"""``score(records, response_texts) -> (rewards [n] float32, reasons)``."""
SftExample = tuple[list[int], list[int]]
"""``(ids, loss_mask)`` of one warm-start demonstration, both [T]."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What :func:`build_task` reads: the run config's data, reward and tokenizer settings."""

    dataset: DatasetName
    """Training prompts' schema (``data.dataset``)."""
    eval_dataset: DatasetName
    """Held-out schema (``data.eval_dataset``, else ``dataset``)."""
    train_path: str | None
    """``data.train_path`` (real datasets)."""
    eval_path: str | None
    """``data.eval_path`` (real datasets)."""
    eval_size: int
    """Held-out prompts (``data.eval_size``); also the train-eval prompts of a real dataset."""
    template: TemplateKind
    """``data.template`` (real datasets; the synthetic task's prompts are plain)."""
    max_prompt_length: int
    """Longer prompts are dropped from every set (``data.max_prompt_length``)."""
    arithmetic: ArithmeticConfig
    """The synthetic task (``data.arithmetic``)."""
    data_seed: int
    """Seed of the synthetic task's prompt sets (``data.seed``, else the run's ``seed``)."""
    sft_seed: int
    """Seed of the warm start's demonstrations (``sft.seed``, else ``seed``)."""
    sft_batch_size: int
    """Demonstrations per warm-start step (``sft.batch_size``)."""
    prompts_per_step: int
    """``trainer.prompts_per_step``: a synthetic stream holds max(4096, 64 x this) prompts."""
    vocab_size: int
    """``model.vocab_size``: the synthetic task's tokenizer must fit in it."""
    tokenizer_path: str | None
    """The Hugging Face tokenizer of a real dataset (``tokenizer.path``, else ``init.hf_checkpoint``)."""
    trust_remote_code: bool
    """``init.trust_remote_code``, for the tokenizer and the reward model."""
    verifier: str | None
    """``reward.verifier``: scores every record; None: each record's own verifier."""
    verify_timeout_s: float
    """``reward.timeout_s``: hard limit of one math-equivalence check."""
    math_verify_workers: int
    """``reward.math_verify_workers``: processes of the math-equivalence pool."""
    reward_model: RewardModelConfig | None = None
    """A reward model scores instead of the verifiers (``reward.kind=reward_model``; real datasets)."""


@dataclasses.dataclass
class Task:
    """What the loop needs of the data: prompts, encoding, scoring, SFT examples."""

    train_records: list[PromptRecord]
    eval_records: list[PromptRecord]
    train_eval_records: list[PromptRecord]
    encode: Callable[[PromptRecord], list[int]]
    """Prompt record -> the prompt's token ids, as the engine gets them (template applied)."""
    decode: Callable[[Sequence[int]], str]
    """Response token ids -> text (special tokens skipped)."""
    pad_token_id: int
    stop_token_ids: tuple[int, ...]
    score: ScoreFn
    sft_examples: Callable[[int], list[SftExample]] | None = None
    """Warm-start step -> its demonstrations (the synthetic task only)."""
    extra_eval_records: dict[str, list[PromptRecord]] = dataclasses.field(default_factory=dict)
    """More greedy evaluation sets, by name (the arithmetic pool's wrong-key slice: ``memo``)."""


def build_task(spec: TaskSpec) -> Task:
    """The synthetic arithmetic task (CPU), or a real dataset (:func:`build_dataset_task`), with
    the prompts longer than ``spec.max_prompt_length`` dropped."""
    build = build_arithmetic_task if spec.dataset == DatasetName.ARITHMETIC else build_dataset_task
    return fit_prompt_length(build(spec), spec.max_prompt_length)


def build_arithmetic_task(spec: TaskSpec) -> Task:
    """The synthetic task: a stream or a pool of prompts (:mod:`nemo_gift.data.arithmetic_sets`),
    its char tokenizer and verifier, and the (possibly flawed) teacher's demonstrations."""
    from nemo_gift.data.arithmetic_sets import arithmetic_sets
    from nemo_gift.data.synthetic import ArithmeticTask, Split
    from nemo_gift.rewards import get_verifier

    task = ArithmeticTask(spec.arithmetic)
    tok = task.tokenizer
    if tok.vocab_size > spec.vocab_size:
        raise ValueError(f"model.vocab_size={spec.vocab_size} < the char tokenizer's {tok.vocab_size}")
    n_train = max(4096, spec.prompts_per_step * 64)
    sets = arithmetic_sets(task, n_train, spec.eval_size, spec.data_seed)  # a stream, or a small pool
    extra_eval = {"memo": sets.wrong_key} if sets.wrong_key else {}
    verifier = get_verifier(spec.verifier or task.verifier_name)

    def score(records, texts):
        results = verifier.verify_batch(texts, [r.ground_truth for r in records])
        return torch.tensor([r.reward for r in results], dtype=torch.float32), [r.reason.value for r in results]

    sft_rng_seed = spec.sft_seed + 2

    def sft_examples(step: int):
        problems = task.problems(Split.TRAIN, spec.sft_batch_size, seed=sft_rng_seed * 1_000_003 + step)
        teacher = random.Random(sft_rng_seed * 7_000_003 + step)
        return [task.sft_example(p, teacher) for p in problems]

    return Task(
        train_records=sets.train, eval_records=sets.heldout, train_eval_records=sets.train_eval,
        encode=lambda r: tok.encode(r.prompt, add_special_tokens=True),
        decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
        pad_token_id=tok.pad_token_id, stop_token_ids=(tok.eos_token_id,), score=score, sft_examples=sft_examples,
        extra_eval_records=extra_eval,
    )


def build_dataset_task(spec: TaskSpec) -> Task:
    """GSM8K / MATH / DAPO / AIME / Infinity-Instruct with a local Hugging Face tokenizer."""
    from transformers import AutoTokenizer

    from nemo_gift.data import load_records, render_prompt

    tok = AutoTokenizer.from_pretrained(spec.tokenizer_path, trust_remote_code=spec.trust_remote_code)
    train = load_records(spec.dataset, spec.train_path)
    heldout = load_records(spec.eval_dataset, spec.eval_path, limit=spec.eval_size)
    score = _reward_model_score(spec) if spec.reward_model is not None else _verifier_score(spec)
    template = spec.template
    stop = tuple(t for t in {tok.eos_token_id, getattr(tok, "pad_token_id", None)} if t is not None)
    return Task(
        train_records=train, eval_records=heldout, train_eval_records=train[: spec.eval_size],
        encode=lambda r: tok.encode(render_prompt(r, template, tok), add_special_tokens=False),
        decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        stop_token_ids=stop, score=score,
    )


def _reward_model_score(spec: TaskSpec) -> ScoreFn:
    """Scores of ``spec.reward_model`` (RLHF); every reason is ``scored``."""
    from nemo_gift.rewards import RewardModelScorer

    scorer = RewardModelScorer.from_config(spec.reward_model, trust_remote_code=spec.trust_remote_code)

    def score(records, texts):
        out = scorer.score([r.prompt for r in records], texts)
        return torch.as_tensor(out.scores, dtype=torch.float32), ["scored"] * len(texts)

    return score


def _verifier_score(spec: TaskSpec) -> ScoreFn:
    """Rule rewards (RLVR): ``spec.verifier``, else each record's own, built once per name; the
    math checks share one pool of ``spec.math_verify_workers`` processes."""
    from nemo_gift.rewards import MathEquivalencePool, VerifierConfig, get_verifier

    verifiers = {}
    verify_cfg = VerifierConfig(timeout_s=spec.verify_timeout_s)
    pool = MathEquivalencePool(num_workers=spec.math_verify_workers, timeout_s=spec.verify_timeout_s)

    def score(records, texts):
        rewards, reasons = [], []
        for r, text in zip(records, texts):
            name = spec.verifier or r.verifier
            v = verifiers.setdefault(name, get_verifier(name, verify_cfg, pool))
            res = v(text, r.ground_truth)
            rewards.append(res.reward)
            reasons.append(res.reason.value)
        return torch.tensor(rewards, dtype=torch.float32), reasons

    return score


def fit_prompt_length(task: Task, max_prompt_length: int) -> Task:
    """``task`` without the prompts longer than ``max_prompt_length`` tokens (as encoded for
    generation, template included; the limit is named ``data.max_prompt_length`` in the log,
    which counts the dropped ones)."""
    from nemo_gift.data.templates import filter_by_token_count

    def count(record):
        return len(task.encode(record))

    kept = {}
    for field in ("train_records", "eval_records", "train_eval_records"):
        kept[field], _ = filter_by_token_count(getattr(task, field), count, max_prompt_length,
                                               "data.max_prompt_length", field.replace("_", " "))
    return dataclasses.replace(task, **kept)


__all__ = ["ScoreFn", "SftExample", "Task", "TaskSpec", "build_arithmetic_task", "build_dataset_task", "build_task",
           "fit_prompt_length"]
