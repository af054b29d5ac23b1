"""Benchmark: one RL step of the project (GIFT, GRPO) against TRL's ``GRPOTrainer``, on CPU.

    .venv/bin/python benchmarks/rl_step.py --preset small                 # project GIFT only, a few minutes
    .venv/bin/python benchmarks/rl_step.py --preset small --algorithm gift grpo --peer trl
    .venv/bin/python benchmarks/rl_step.py --peer trl                     # the ~50M model: long on 1 thread
    .venv/bin/python benchmarks/rl_step.py --loop reuse_engine_logprobs=False   # any LoopConfig field

Setup (issue 20, item 4): a Qwen2-style megatron-core GPT built locally from a seed (nothing
downloaded): ``--preset realistic`` (the default) is 6 layers, hidden 512, 8/4 heads (GQA), SwiGLU
1408, QKV bias, untied, vocab 32000: 50.5M parameters; ``--preset small`` is 2 layers, hidden
128, 4/2 heads, SwiGLU 352, the same vocabulary. fp32, ``--threads`` torch threads (1 by default).
Workload: B = ``--prompts`` 16 prompts of ``--prompt-len`` 32 random tokens, G = ``--group`` 8
responses each, pure sampling (temperature 1, no top-k/top-p), one optimizer step per rollout
batch (the mini-batch is the whole batch), micro-batches of ``--micro-batch`` 16 sequences,
AdamW at a constant LR of 1e-6, gradient clipping at 1.0.

Response lengths are forced, the same on both sides: before the run, a seeded table draws every
response's length uniformly from ``[--min-new, --max-new]`` (16-256), one row per rollout step.
- project: the torch engine generates with no stop token up to the longest length of the step,
  then :class:`ForcedLengths` (a ``GenerationBackend`` around it) cuts each response to its
  drawn length (its log-probs with it), so the loop sees responses of exactly those lengths;
- TRL: a logits processor added to ``model.generate`` forbids EOS, and forces it at each row's
  drawn length (TRL masks every completion after its first EOS, and the EOS is trained on, as the
  project's cut last token is).
Both therefore decode every row up to the step's longest length (``transformers.generate`` keeps
finished rows in the batch; the torch engine would drop them, but no row stops early here), and
train on the same numbers of tokens. The reward is the same function of the response tokens on
both sides (the fraction of odd token ids), so groups have non-zero reward spread.

The project side is the project's public entry points: ``MegatronPolicy`` (one process, a gloo
world of 1), the torch rollout engine, ``LoopParts``/``LoopConfig`` and ``rollout_step``, whose
``time/*`` metrics give the breakdown (rollout, logprobs, update, refit; ``other`` is the rest of
``time/step``: batching and scoring). TRL (``--peer trl``) runs ``GRPOTrainer`` on the same
weights, exported with ``nemo_gift.export.hf_export.export_model`` into a temporary directory,
with a word-level tokenizer over the same ids; the knobs that make its workload equal are set in
:func:`_trl_config` (one generation batch of B*G per optimizer step, ``beta`` = the project's
``grpo.beta_kl`` so it runs a reference forward as project GRPO does, ``use_vllm=False``). Its
breakdown comes from TRL's own profiling contexts: ``transformers.generate`` (rollout), the
rest of ``_prepare_inputs`` (the log-prob forwards, scoring) and the remainder of the step
(forward, backward, optimizer). ``trl`` is an optional extra (``pip install -e .[bench]``).

Every side runs in its own process (so peak memory is per side), kept alive across steps; steps
are interleaved (round r runs one step of each side, in an order rotated every round) so that
the load of a shared machine hits all sides alike. ``--warmup`` steps per side are excluded.
Time: wall seconds per step, the median over ``--rounds``. Memory: the process's peak resident
set size (``ru_maxrss``; process-level: it includes the imported libraries and every buffer the
allocator kept), and the RSS after setup, before the first step. Nothing is asserted: this prints.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import time

import torch

PRESETS = {
    "realistic": dict(num_layers=6, hidden_size=512, ffn_hidden_size=1408, num_attention_heads=8, num_query_groups=4),
    "small": dict(num_layers=2, hidden_size=128, ffn_hidden_size=352, num_attention_heads=4, num_query_groups=2),
}
PAD, UNK, EOS, FIRST_WORD = 0, 1, 2, 3
"""Token ids of the benchmark's word-level vocabulary: prompts draw from ``[FIRST_WORD, V)``."""
TIME_KEYS = ("rollout", "logprobs", "update", "refit", "other")


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="realistic")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--algorithm", nargs="+", choices=("gift", "grpo"), default=["gift"])
    ap.add_argument("--peer", choices=("none", "trl"), default="none")
    ap.add_argument("--prompts", type=int, default=16, help="B")
    ap.add_argument("--group", type=int, default=8, help="G")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--min-new", type=int, default=16)
    ap.add_argument("--max-new", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=16, help="sequences per micro-batch (both sides)")
    ap.add_argument("--max-tokens-per-micro-batch", type=int, default=None,
                    help="the project's token budget (trainer.max_tokens_per_micro_batch); TRL keeps --micro-batch")
    ap.add_argument("--warmup", type=int, default=1, help="steps per side before the timed ones")
    ap.add_argument("--rounds", type=int, default=3, help="timed steps per side, interleaved")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every side")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--loop", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="override LoopConfig fields (Python literals), e.g. reuse_engine_logprobs=False")
    ap.add_argument("--json", default=None, help="also write every measurement to this file")
    args = ap.parse_args(argv)
    if not args.min_new <= args.max_new:
        ap.error(f"--min-new {args.min_new} > --max-new {args.max_new}")
    if (args.prompts * args.group) % args.micro_batch:
        ap.error(f"--micro-batch {args.micro_batch} must divide B*G = {args.prompts * args.group}")
    return args


def model_config(args):
    """The benchmark's ``ModelConfig``: the preset, the vocabulary, room for prompt + response."""
    from nemo_gift.models.policy.config import ModelConfig

    return ModelConfig(arch="qwen2", **PRESETS[args.preset], vocab_size=args.vocab, add_qkv_bias=True,
                       tie_word_embeddings=False, max_position_embeddings=args.prompt_len + args.max_new)


def length_table(args) -> torch.Tensor:
    """``[steps, B*G]`` response lengths, uniform in ``[min_new, max_new]``, row k for rollout step k."""
    steps = args.warmup + args.rounds
    gen = torch.Generator().manual_seed(args.seed + 1)
    return torch.randint(args.min_new, args.max_new + 1, (steps, args.prompts * args.group), generator=gen)


def prompt_table(args) -> list[list[int]]:
    """``B * steps`` prompts of ``prompt_len`` ids in ``[FIRST_WORD, V)``."""
    gen = torch.Generator().manual_seed(args.seed + 2)
    n = args.prompts * (args.warmup + args.rounds)
    return torch.randint(FIRST_WORD, args.vocab, (n, args.prompt_len), generator=gen).tolist()


def reward_of(ids) -> float:
    """The benchmark's reward of one response: the fraction of odd token ids."""
    return sum(int(i) % 2 for i in ids) / max(1, len(ids))


def _rss_mib() -> dict[str, float]:
    """This process's peak RSS (``ru_maxrss``, KiB on Linux) and current RSS, in MiB."""
    import psutil

    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_mib": psutil.Process().memory_info().rss / 2**20}


class ForcedLengths:
    """A ``GenerationBackend`` around a rollout engine: call k generates with no stop token up to
    the longest length of ``table[k]``, then cuts response r to ``table[k, r]`` tokens (its
    log-probs with it; finish reason ``length``). The padding contract of
    ``nemo_gift.algorithms.interfaces`` holds for the result."""

    def __init__(self, engine, table: torch.Tensor):
        self.engine, self.table, self.calls = engine, table, 0

    def generate(self, prompts, n=1, sampling=None):
        from nemo_gift.algorithms.interfaces import GenerationOutput

        want = self.table[self.calls % len(self.table)]  # [N]
        self.calls += 1
        if len(want) != len(prompts) * n:
            raise ValueError(f"length table rows have {len(want)} entries, the call makes {len(prompts) * n}")
        width = int(want.max())
        sampling = dataclasses.replace(sampling, max_new_tokens=width, stop_token_ids=())
        out = self.engine.generate(prompts, n, sampling)
        keep = torch.arange(width) < want[:, None]  # [N, T]
        return GenerationOutput(
            tokens=torch.where(keep, out.tokens[:, :width], out.pad_token_id),  # [N, T]
            lengths=want.clone(), logprobs=torch.where(keep, out.logprobs[:, :width], 0.0),  # [N], [N, T]
            finish_reasons=["length"] * len(want), prompt_index=out.prompt_index, pad_token_id=out.pad_token_id,
        )

    def sleep(self):
        self.engine.sleep()

    def wake(self):
        self.engine.wake()


def _loop_overrides(pairs) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--loop takes FIELD=VALUE, got {pair!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a plain string
    return out


# ---------------------------------------------------------------------------------------- project


def _project_setup(args, algorithm: str, export_dir: str | None):
    """The loop's parts around a fresh ``MegatronPolicy`` (seeded: every side has the same weights)."""
    from nemo_gift.algorithms.gift import LoopConfig, LoopParts
    from nemo_gift.algorithms.interfaces import SamplingConfig
    from nemo_gift.algorithms.registry import get_algorithm
    from nemo_gift.algorithms.rollout import PromptSampler
    from nemo_gift.models.generation.torch_engine import TorchGenerationEngine
    from nemo_gift.models.policy import parallel
    from nemo_gift.models.policy.config import ParallelConfig
    from nemo_gift.models.policy.megatron_policy import MegatronPolicy
    from nemo_gift.models.policy.optimizer import OptimizerSettings

    cfg, layout = model_config(args), ParallelConfig()
    parallel.initialize(layout, seed=args.seed)
    sampling = SamplingConfig(max_new_tokens=args.max_new, temperature=1.0)
    loop_cfg = LoopConfig(algorithm=algorithm, max_steps=args.warmup + args.rounds, group_size=args.group,
                          mini_batch_prompts=args.prompts, micro_batch_size=args.micro_batch, eval_every=0,
                          max_tokens_per_micro_batch=args.max_tokens_per_micro_batch,
                          checkpoint_every=0, keep_last=1, sampling=sampling, eval_sampling=sampling, seed=args.seed)
    loop_cfg = dataclasses.replace(loop_cfg, **_loop_overrides(args.loop))
    entry = get_algorithm(algorithm)
    policy = MegatronPolicy(cfg, layout, micro_batch_size=args.micro_batch,
                            max_tokens_per_micro_batch=args.max_tokens_per_micro_batch,
                            with_reference=entry.needs_reference(loop_cfg.options()))
    policy.sync_reference()
    policy.configure_optimizer(OptimizerSettings(lr=1e-6, clip_grad=1.0))
    if export_dir is not None:
        from nemo_gift.export.hf_export import export_model

        export_model(policy.module, cfg, export_dir)
    engine = TorchGenerationEngine(policy.module, cfg, seed=args.seed, pad_token_id=PAD)

    def score(records, texts):
        rewards = [reward_of(t.split()) for t in texts]
        return torch.tensor(rewards, dtype=torch.float32), ["scored"] * len(texts)

    parts = LoopParts(policy=policy, engine=ForcedLengths(engine, length_table(args)), score=score,
                      encode=list, decode=lambda ids: " ".join(map(str, ids)), pad_token_id=PAD,
                      sampler=PromptSampler(prompt_table(args), args.prompts, seed=args.seed),
                      eval_records=[], train_eval_records=[])
    params = sum(p.numel() for p in policy.module.parameters())
    return parts, loop_cfg, params


def _project_step(parts, loop_cfg, step: int) -> dict:
    """One ``rollout_step``: its wall time, the breakdown, and the process's memory."""
    from nemo_gift.algorithms.gift import rollout_step

    m = rollout_step(parts, loop_cfg, step)
    times = {k: m.get(f"time/{k}", 0.0) for k in TIME_KEYS[:-1]}
    times["other"] = m["time/step"] - sum(times.values())
    extra = {k: v for k, v in m.items() if "pad" in k or k == "train/response_length"}
    return {"wall": m["time/step"], **times, **extra, **_rss_mib()}


def project_steps(rank: int, world_size: int, args, algorithm: str, steps: int) -> dict:
    """``steps`` project steps on a rank of ``nemo_gift.distributed.spawn.run_on_ranks`` (the test's entry)."""
    torch.set_num_threads(args.threads)
    parts, loop_cfg, params = _project_setup(args, algorithm, None)
    return {"params": params, "steps": [_project_step(parts, loop_cfg, k + 1) for k in range(steps)]}


def _project_worker(conn, args, algorithm: str, export_dir: str | None):
    """One process: a gloo world of 1, the loop's parts, then one ``rollout_step`` per command."""
    import torch.distributed as dist

    from nemo_gift.distributed.spawn import free_port

    torch.set_num_threads(args.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        parts, loop_cfg, params = _project_setup(args, algorithm, export_dir)
        conn.send({"params": params, **_rss_mib()})
        step = 0
        while conn.recv() == "step":
            step += 1
            conn.send(_project_step(parts, loop_cfg, step))
    finally:
        from megatron.core import parallel_state as ps

        ps.destroy_model_parallel()
        dist.destroy_process_group()


# -------------------------------------------------------------------------------------------- TRL


def _trl_tokenizer(vocab: int):
    """A word-level fast tokenizer: id i <-> ``t{i}`` (0, 1, 2 = pad, unk, eos), split on spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": PAD, "<unk>": UNK, "<eos>": EOS, **{f"t{i}": i for i in range(FIRST_WORD, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def _trl_config(args, out_dir: str, beta: float):
    """``GRPOConfig`` for the benchmark's workload (see the module docstring)."""
    from trl import GRPOConfig

    n = args.prompts * args.group
    return GRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=False, fp16=False, seed=args.seed, report_to=[], disable_tqdm=True,
        save_strategy="no", logging_steps=1, dataloader_num_workers=0,
        num_generations=args.group,                          # G
        per_device_train_batch_size=args.micro_batch,        # sequences per micro-batch
        gradient_accumulation_steps=n // args.micro_batch,   # B*G rows per optimizer step
        steps_per_generation=n // args.micro_batch,          # one generation batch of B*G per optimizer step
        num_iterations=1,                                    # one optimizer step per batch: no pi_old forward
        max_completion_length=args.max_new, temperature=1.0, top_p=1.0, top_k=0, use_vllm=False,
        beta=beta,                                           # > 0: a reference model and its forward
        epsilon=0.2, loss_type="dapo",                       # clip 0.2, token mean over the batch (the project's)
        learning_rate=1e-6, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        shuffle_dataset=False, max_steps=args.warmup + args.rounds,
    )


def _trl_worker(conn, args, model_dir: str, beta: float):
    """One process: ``GRPOTrainer`` on the exported model; a callback holds each optimizer step
    until the parent says ``step`` and reports its time and breakdown."""
    import warnings

    from datasets import Dataset
    from transformers import LogitsProcessor, LogitsProcessorList, PrinterCallback, Qwen2ForCausalLM, TrainerCallback
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.disable_progress_bar()

    try:
        import trl.extras.profiling as profiling
        from trl import GRPOTrainer
    except ImportError as err:
        raise SystemExit(f"--peer trl needs TRL: pip install -e .[bench] ({err})")

    torch.set_num_threads(args.threads)
    table = length_table(args)
    timings: dict[str, float] = {}  # "NAME" and "PARENT > NAME": seconds in TRL's profiling contexts this step
    stack: list[str] = []
    enter, log_metrics = profiling.ProfilingContext.__enter__, profiling.ProfilingContext._log_metrics

    def push(self):
        stack.append(self.name)
        return enter(self)

    def record(self, duration):  # TRL's profiling contexts report to trackers only; keep them here too
        stack.pop()
        for key in (self.name, f"{stack[-1] if stack else ''} > {self.name}"):
            timings[key] = timings.get(key, 0.0) + duration
        log_metrics(self, duration)

    profiling.ProfilingContext.__enter__, profiling.ProfilingContext._log_metrics = push, record

    class ForceLengths(LogitsProcessor):
        """EOS forbidden, except at each row's drawn length, where it is forced."""

        want: torch.Tensor
        start: int | None = None

        def __call__(self, input_ids, scores):  # [R, cur], [R, V]
            if self.start is None:
                self.start = input_ids.shape[1]
            t = input_ids.shape[1] - self.start
            ends = self.want.to(scores.device) == t + 1  # [R]
            scores[:, EOS] = float("-inf")
            scores[ends] = float("-inf")
            scores[ends, EOS] = 0.0
            return scores

    model = Qwen2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    forcer, generate, calls = ForceLengths(), model.generate, [0]

    def forced_generate(*a, **k):
        forcer.want, forcer.start = table[calls[0] % len(table)], None
        calls[0] += 1
        return generate(*a, logits_processor=LogitsProcessorList([forcer]), **k)

    model.generate = forced_generate
    seen_lengths: list[int] = []

    def reward(prompts, completions, completion_ids, **kwargs):
        seen_lengths.extend(len(c) for c in completion_ids)
        return [reward_of(c) for c in completion_ids]

    class Handshake(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if conn.recv() != "step":
                raise SystemExit(0)
            timings.clear()
            seen_lengths.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            wall = time.perf_counter() - self.t0
            rollout = timings.get("GRPOTrainer.transformers.generate", 0.0)
            # the no-grad forwards (reference; pi_old when TRL needs it) run inside _prepare_inputs,
            # the training forward inside compute_loss
            logprobs = timings.get("GRPOTrainer._prepare_inputs > GRPOTrainer._get_per_token_logps_and_entropies", 0.0)
            prepare = timings.get("GRPOTrainer._prepare_inputs", 0.0)
            conn.send({"wall": wall, "rollout": rollout, "logprobs": logprobs, "update": wall - prepare,
                       "refit": 0.0, "other": prepare - rollout - logprobs,
                       "train/response_length": sum(seen_lengths) / max(1, len(seen_lengths)), **_rss_mib()})

    prompts = [" ".join(f"t{i}" for i in p) for p in prompt_table(args)]
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=_trl_config(args, out_dir, beta),
                              train_dataset=Dataset.from_dict({"prompt": prompts}),
                              processing_class=_trl_tokenizer(args.vocab), callbacks=[Handshake()])
        trainer.remove_callback(PrinterCallback)  # its per-step log dict
        conn.send({"params": sum(p.numel() for p in model.parameters()), **_rss_mib()})
        trainer.train()
    conn.recv()  # the parent's "stop"


# ------------------------------------------------------------------------------------------- main


def _start(ctx, target, *args):
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    return proc, parent


def _receive(name, proc, conn, timeout=7200):
    if not conn.poll(timeout):
        raise TimeoutError(f"{name}: no answer in {timeout} s")
    try:
        return conn.recv()
    except EOFError:
        proc.join(5)
        raise RuntimeError(f"{name} died (exit code {proc.exitcode}); its traceback is above") from None


def _median(rows, key):
    return statistics.median(r[key] for r in rows)


def run(args) -> dict:
    """Start every side, run ``warmup + rounds`` interleaved steps; returns the measurements."""
    from nemo_gift.algorithms.config import GrpoLossConfig

    ctx = mp.get_context("spawn")
    sides, setup = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = os.path.join(tmp, "hf") if args.peer == "trl" else None
        for i, algorithm in enumerate(args.algorithm):
            sides[algorithm] = _start(ctx, _project_worker, args, algorithm, export_dir if i == 0 else None)
            setup[algorithm] = _receive(algorithm, *sides[algorithm])  # the export is complete after this
        if args.peer == "trl":
            beta = GrpoLossConfig().beta_kl  # project GRPO's default: both run a reference forward
            sides["trl"] = _start(ctx, _trl_worker, args, export_dir, beta)
            setup["trl"] = _receive("trl", *sides["trl"])
        steps = {name: [] for name in sides}
        names = list(sides)
        try:
            for r in range(args.warmup + args.rounds):
                for name in names[r % len(names):] + names[: r % len(names)]:
                    proc, conn = sides[name]
                    conn.send("step")
                    steps[name].append(_receive(name, proc, conn))
                    print(f"[{'warm-up' if r < args.warmup else f'round {r - args.warmup + 1}'}] {name}: "
                          + ", ".join(f"{k} {steps[name][-1][k]:.2f}" for k in ("wall", *TIME_KEYS)), flush=True)
        finally:
            for proc, conn in sides.values():
                try:
                    conn.send("stop")
                except (BrokenPipeError, OSError):
                    pass
                proc.join(60)
                if proc.is_alive():
                    proc.kill()
    return {"setup": setup, "steps": {k: v[args.warmup:] for k, v in steps.items()}}


def report(args, res) -> None:
    cfg = model_config(args)
    params = next(iter(res["setup"].values()))["params"]
    lengths = length_table(args)[args.warmup:].float()
    print(f"\n{args.preset} preset: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads}/"
          f"{cfg.num_query_groups} heads, ffn {cfg.ffn_hidden_size}, vocab {cfg.vocab_size}, untied: "
          f"{params / 1e6:.1f}M parameters, fp32, {args.threads} thread(s). B={args.prompts} x G={args.group}, "
          f"prompt {args.prompt_len}, responses {args.min_new}-{args.max_new} tokens (mean {lengths.mean():.1f}), "
          f"micro-batch {args.micro_batch}, 1 optimizer step per batch; median of {args.rounds} interleaved "
          f"rounds after {args.warmup} warm-up")
    print(f"{'side':<14}{'step s':>9}" + "".join(f"{k:>10}" for k in TIME_KEYS)
          + f"{'resp len':>10}{'setup RSS':>11}{'peak RSS':>10}  (MiB, process-level)")
    rows = {}
    for name, steps in res["steps"].items():
        label = {"trl": "TRL GRPO"}.get(name, f"project {name.upper()}")
        rows[name] = {k: _median(steps, k) for k in ("wall", *TIME_KEYS)}
        rows[name]["peak"] = max(s["peak_rss_mib"] for s in steps)
        print(f"{label:<14}{rows[name]['wall']:>9.2f}" + "".join(f"{rows[name][k]:>10.2f}" for k in TIME_KEYS)
              + f"{_median(steps, 'train/response_length'):>10.1f}{res['setup'][name]['rss_mib']:>11.0f}"
              + f"{rows[name]['peak']:>10.0f}")
        pad = sorted({k for s in steps for k in s if "pad" in k})
        if pad:
            print(" " * 14 + ", ".join(f"{k} {_median(steps, k):.3f}" for k in pad))
    if "trl" in rows:
        for name in (n for n in rows if n != "trl"):
            print(f"project {name.upper()} / TRL GRPO: time {rows[name]['wall'] / rows['trl']['wall']:.2f}x, "
                  f"peak RSS {rows[name]['peak'] / rows['trl']['peak']:.2f}x"
                  + (" (issue 20's goal: <= 0.6x, <= 0.5x)" if name == "gift" else ""))


def main(argv=None) -> dict:
    args = _args(argv)
    if args.peer == "trl":
        import importlib.util

        if importlib.util.find_spec("trl") is None:
            raise SystemExit("--peer trl needs TRL, an optional extra of the benchmark: pip install -e .[bench]")
    res = run(args)
    report(args, res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), **res}, f, indent=1)
    return res


if __name__ == "__main__":
    main()
