"""``launcher/run.py conf=NAME --preflight``: does the recipe's layout hold, and does it fit its GPUs?

Run before every launch too. It checks the layout rules, builds each distinct pipeline stage of
the model on the meta device at the recipe's TP/PP
(:func:`nemo_gift.models.policy.meta_build.stage_parameter_counts`), estimates the memory of one
GPU of each stage in three phases, prints the table, and refuses a recipe whose peak exceeds
``cluster.gpu_memory_gb``, naming the largest term and the fix.

Symbols: P = parameters on one GPU of the stage (from the meta build); w = bytes per parameter
(2 for bf16); DP = world / (TP * PP); s = sequence length, ``data.max_prompt_length +
rollout.max_new_tokens`` rounded up to ``parallel.sequence_pad_multiple``
(:attr:`nemo_gift.models.policy.config.ParallelConfig.sequence_pad_multiple`);
b = ``trainer.micro_batch_size``; h, f, L, V, a, g, d = hidden, FFN, layers, padded vocab,
heads, KV heads, head dim; n = micro-batches per optimizer step on one DP rank; for stage k of
PP, L_k = L / PP layers and m_k = min(PP - k, n) micro-batches in flight under 1F1B. Formulas
are in the docstring of each term's function; memory is in GiB (2^30 bytes), as nvidia-smi and
``cluster.gpu_memory_gb`` count it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from nemo_gift.utils.convert import ConfigError

GIB = 2**30
RESERVE_GIB = 2.0
"""Per-GPU reserve for the CUDA context, NCCL buffers and allocator fragmentation (assumed)."""
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def pop_flag(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--preflight``, and whether it was there."""
    return [a for a in argv if a != "--preflight"], "--preflight" in argv


@dataclasses.dataclass
class Term:
    name: str
    bytes: float
    note: str = ""


@dataclasses.dataclass
class StageEstimate:
    """One GPU of pipeline stage ``stage``: its parameters and the terms of each phase."""

    stage: int
    params: int
    phases: dict[str, list[Term]]

    def total(self, phase: str) -> float:
        return sum(t.bytes for t in self.phases[phase]) + RESERVE_GIB * GIB

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.total)


def layout(cfg) -> list[tuple[str, str]]:
    """The layout rules as (rule, value) rows; raises ConfigError on a broken one. Heads, KV
    heads, FFN and layers are checked by :meth:`ParallelConfig.validate_for` (at config load);
    vocabulary, batch and sequence padding here."""
    m, p, t, G = cfg.model, cfg.parallel, cfg.trainer, cfg.rollout.group_size
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    try:
        p.validate_for(m, world_size=cfg.cluster.world_size, cuda=True)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    dp = cfg.cluster.world_size // (tp * pp)
    per_rank = t.mini_batch_prompts * G // dp
    s_raw = cfg.data.max_prompt_length + cfg.rollout.max_new_tokens
    mult = p.sequence_pad_multiple
    s = cfg.longest_row()
    if s > m.max_position_embeddings:
        raise ConfigError(
            f"the padded sequence length {s} (data.max_prompt_length + rollout.max_new_tokens = {s_raw}, "
            f"rounded up to {mult} for sequence parallelism/FP8) exceeds model.max_position_embeddings="
            f"{m.max_position_embeddings}"
        )
    if m.padded_vocab_size(tp) % tp:
        raise ConfigError(f"model.vocab_size={m.vocab_size} does not split over TP={tp}")
    return [
        ("TP x PP x DP = world", f"{tp} x {pp} x {dp} = {cfg.cluster.world_size}"),
        ("query heads / TP", f"{m.num_attention_heads} / {tp} = {m.num_attention_heads // tp}"),
        ("KV heads / TP", f"{m.query_groups} / {tp} = {m.query_groups // tp}"),
        ("FFN / TP", f"{m.ffn_hidden_size} / {tp} = {m.ffn_hidden_size // tp}"),
        ("vocab / TP", f"{m.padded_vocab_size(tp)} / {tp} = {m.padded_vocab_size(tp) // tp}"),
        ("layers / PP", f"{m.num_layers} / {pp} = {m.num_layers // pp}"),
        ("prompts per step / mini-batch", f"{t.prompts_per_step} / {t.mini_batch_prompts} = "
                                          f"{t.prompts_per_step // t.mini_batch_prompts} optimizer steps"),
        ("mini-batch x G / DP / micro-batch", f"{t.mini_batch_prompts} x {G} / {dp} / {t.micro_batch_size} = "
                                              f"{per_rank // t.micro_batch_size} micro-batches"),
        ("sequence padded to a multiple of", f"{mult}: {s_raw} -> {s} tokens"),
    ]


def needs_reference(cfg) -> bool:
    """Whether the algorithm keeps the frozen reference (its registry entry says: GIFT with
    ``implicit_baseline=reference``, GRPO with ``beta_kl > 0``)."""
    from nemo_gift.algorithms.registry import get_algorithm

    return get_algorithm(cfg.trainer.algorithm).needs_reference(cfg.loss_options())


def optimizer_terms(P: int, w: int, dp: int, distributed: bool) -> list[Term]:
    """Weights ``w*P``; fp32 gradients ``4*P`` (megatron-core DDP with ``grad_reduce_in_fp32``);
    Adam's fp32 main parameters (``4*P``, only when the weights are not fp32) and two moments
    (``8*P``), divided by DP with the distributed optimizer. For bf16 this is megatron's
    ``num_bytes_per_parameter = 18``, or ``6 + 12/DP`` with the distributed optimizer
    (Megatron-LM ``megatron/training/theoretical_memory_usage.py``,
    ``compute_weight_and_optimizer_memory``)."""
    per_param = (4 if w != 4 else 0) + 8
    state = per_param * P
    return [Term("weights", w * P, f"{w} B x P"), Term("gradients (fp32)", 4 * P, "4 B x P"),
            Term("optimizer (main params + Adam)", state / dp if distributed else state,
                 f"{per_param} B x P / DP={dp}" if distributed else f"{per_param} B x P, not sharded")]


def activation_bytes(cfg, stage: int, s: int, recompute: bool) -> float:
    """Activations kept for backward on one GPU of ``stage``.

    Per layer and micro-batch, no recompute, flash attention (no [a, s, s] scores stored):
    ``s*b*h*(18 + 6*f/h) / TP`` bytes with sequence parallelism, ``s*b*h*(10 + (8 + 6*f/h)/TP)``
    without: megatron's ``compute_activation_memory`` (18 + 4*f/h, from Korthikanti et al. 2022,
    arXiv 2205.05198, Table 2) with the MLP term widened for SwiGLU's [s, b, 2f] fc1 output.
    Full recompute (one layer per checkpoint) keeps only each layer's input, ``2*s*b*h`` (/TP
    with SP), plus one layer's full set while it is recomputed. Times ``L_k`` layers and ``m_k``
    micro-batches in flight; the first stage adds the token ids (``8*s*b*m_k``). Scaled by w/2
    for non-bf16 activations."""
    m, p = cfg.model, cfg.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    b, h, f = cfg.trainer.micro_batch_size, m.hidden_size, m.ffn_hidden_size
    n = _micro_batches(cfg)
    in_flight = min(pp - stage, n)
    sbh = s * b * h
    per_layer = sbh * (18 + 6 * f / h) / tp if p.sequence_parallel else sbh * (10 + (8 + 6 * f / h) / tp)
    layers = m.num_layers // pp
    if recompute:
        kept = 2 * sbh / (tp if p.sequence_parallel else 1) * layers * in_flight + per_layer
    else:
        kept = per_layer * layers * in_flight
    if stage == 0:
        kept += 8 * s * b * in_flight
    return kept * _DTYPE_BYTES[p.params_dtype] / 2


def logits_bytes(cfg, s: int) -> float:
    """Last stage: the [b, s, V/TP] logits in w bytes, kept for backward (the gradient reuses
    their storage), plus the fp32 work of the vocab-parallel log-probs: ``4*r*V/TP`` bytes in
    forward and again in backward, r = ``trainer.logprob_chunk_size`` rows, or all ``b*s``
    (:func:`nemo_gift.distributed.logprobs.vocab_parallel_logprobs`).

    With ``parallel.fused_lm_head_logprobs`` no logits are kept: one ``[r, V/TP]`` chunk of
    logits in w bytes, plus its fp32 copy when w < 4, r = ``trainer.logprob_chunk_size`` or
    :func:`nemo_gift.distributed.fused_logprobs.default_chunk_rows`."""
    m, p = cfg.model, cfg.parallel
    tp, b = p.tensor_model_parallel_size, cfg.trainer.micro_batch_size
    v = m.padded_vocab_size(tp) / tp
    w = _DTYPE_BYTES[p.params_dtype]
    if p.fused_lm_head_logprobs:
        from nemo_gift.distributed.fused_logprobs import default_chunk_rows

        rows = min(cfg.trainer.logprob_chunk_size or default_chunk_rows(b * s, int(v), m.hidden_size), b * s)
        return (w + (4 if w < 4 else 0)) * rows * v
    rows = min(cfg.trainer.logprob_chunk_size or b * s, b * s)
    return w * b * s * v + 8 * rows * v


def kv_bytes_per_token(cfg) -> float:
    """KV cache of one token on one GPU: ``2 (K, V) * L * g/TP_e * d * w``. The engine holds
    every layer; ``TP_e`` is its tensor-parallel size: TP for the torch engine (the policy's own
    model), TP x PP for TensorRT-LLM (one engine GPU per rank of a replica,
    :func:`~nemo_gift.models.generation.trtllm_runtime.engine_tensor_parallel_size`)."""
    m, p = cfg.model, cfg.parallel
    return 2 * m.num_layers * m.query_groups / _engine_tp(cfg) * m.head_dim * _DTYPE_BYTES[p.params_dtype]


def _engine_tp(cfg) -> int:
    if cfg.rollout.engine == "torch":
        return cfg.parallel.tensor_model_parallel_size
    from nemo_gift.models.generation.trtllm_runtime import engine_tensor_parallel_size

    return engine_tensor_parallel_size(cfg.parallel)


def rollout_terms(cfg, engine_params: int, static: float, s_raw: int) -> list[Term]:
    """The rollout engine while it generates. ``torch``: the policy's own weights, and a KV
    cache for the rank's B/DP prompts x G responses of s tokens. ``trtllm``: its own copy of the
    weights over TP x PP GPUs (``w * P_model/(TP*PP)``) and a KV cache of ``trtllm_gpu_memory_fraction`` of the
    memory still free when it wakes (TensorRT-LLM's ``free_gpu_memory_fraction``); both are
    released (sleep) while the policy trains."""
    w = _DTYPE_BYTES[cfg.parallel.params_dtype]
    if cfg.rollout.engine == "torch":
        seqs = cfg.trainer.prompts_per_step // _dp(cfg) * cfg.rollout.group_size
        return [Term("KV cache (torch engine)", seqs * s_raw * kv_bytes_per_token(cfg), f"{seqs} seqs x {s_raw} tokens")]
    weights = w * engine_params / cfg.parallel.pipeline_model_parallel_size  # P_model/TP over PP more GPUs
    cap = cfg.cluster.gpu_memory_gb
    frac = cfg.rollout.trtllm_gpu_memory_fraction
    free = max(0.0, cap * GIB - RESERVE_GIB * GIB - static - weights) if cap else 0.0
    tokens = int(frac * free / kv_bytes_per_token(cfg))
    return [Term("rollout engine weights (TRT-LLM)", weights, f"{w} B x P_model/(TP*PP)"),
            Term("KV cache (TRT-LLM)", frac * free,
                 f"{frac:.0%} of free memory: {tokens} tokens = {tokens // s_raw} sequences of {s_raw}")]


def _dp(cfg) -> int:
    p = cfg.parallel
    return cfg.cluster.world_size // (p.tensor_model_parallel_size * p.pipeline_model_parallel_size)


def _micro_batches(cfg) -> int:
    return cfg.trainer.mini_batch_prompts * cfg.rollout.group_size // _dp(cfg) // cfg.trainer.micro_batch_size


def reward_model_bytes(cfg) -> tuple[float, str]:
    """A reward model on the policy's GPU (``reward.device`` cuda): ``w * params`` from its
    ``config.json`` (decoder-only: ``L*(4*h^2*(1+g/a)/2 + 3*h*f) + V*h``), when it is readable here."""
    r = cfg.reward
    if r.kind != "reward_model" or not str(r.device).startswith("cuda"):
        return 0.0, ""
    path = Path(r.reward_model_path or "") / "config.json"
    try:
        c = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0.0, f"not counted: {path} is not readable here"
    h, L, f, V = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
    a, g = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    params = L * (2 * h * h * (1 + g / a) + 3 * h * f) + V * h
    return 2 * params, f"{params / 1e9:.1f}B params in bf16"


def estimate(cfg, counts: dict[int, int]) -> list[StageEstimate]:
    """The per-GPU terms of each distinct stage, in three phases: ``train`` (forward/backward of
    a micro-batch), ``reference`` (the reference model's forward, when it is offloaded between
    uses) and ``rollout`` (the engine generating)."""
    p = cfg.parallel
    pp, w, dp = p.pipeline_model_parallel_size, _DTYPE_BYTES[p.params_dtype], _dp(cfg)
    s_raw = cfg.data.max_prompt_length + cfg.rollout.max_new_tokens
    s = cfg.longest_row()
    engine_params = sum(counts[k] * (pp - 2 if 0 < k < pp - 1 else 1) for k in counts)
    reward, reward_note = reward_model_bytes(cfg)
    out = []
    for stage, P in counts.items():
        static = optimizer_terms(P, w, dp, p.use_distributed_optimizer)
        if reward or reward_note:
            static.append(Term("reward model", reward, reward_note))
        ref = [Term("reference model", w * P, "offloaded between uses" if cfg.init.offload_reference else "")]
        ref = ref if needs_reference(cfg) else []
        resident_ref = [] if cfg.init.offload_reference else ref
        act = activation_bytes(cfg, stage, s, p.recompute_activations)
        other = activation_bytes(cfg, stage, s, not p.recompute_activations)
        label = "full recompute" if p.recompute_activations else "no recompute"
        train = static + resident_ref + [Term("activations", act, f"{label}; {'no recompute' if p.recompute_activations else 'full recompute'} would be {other / GIB:.1f} GiB")]
        if stage == pp - 1:
            train.append(Term("logits + log-prob work", logits_bytes(cfg, s)))
        phases = {"train": train}
        if cfg.init.offload_reference and ref:
            phases["reference"] = static + ref + ([Term("logits + log-prob work", logits_bytes(cfg, s))] if stage == pp - 1 else [])
        base = sum(t.bytes for t in static + resident_ref)
        phases["rollout"] = static + resident_ref + rollout_terms(cfg, engine_params, base, s_raw)
        out.append(StageEstimate(stage, P, phases))
    return out


def _fix(term: str, cfg) -> str:
    p = cfg.parallel
    if term == "activations" and not p.recompute_activations:
        return ("set parallel.recompute_activations=true, halve trainer.micro_batch_size, or raise "
                "parallel.pipeline_model_parallel_size")
    if term == "activations" or term.startswith("logits"):
        return "halve trainer.micro_batch_size, or set trainer.logprob_chunk_size, or raise PP"
    if term.startswith("optimizer") and not p.use_distributed_optimizer:
        return "set parallel.use_distributed_optimizer=true (shards it over DP)"
    if term == "reference model":
        return "set init.offload_reference=true"
    if "TRT-LLM" in term:
        return "lower rollout.trtllm_gpu_memory_fraction, or raise TP (the engine is not pipelined)"
    return ("raise parallel.pipeline_model_parallel_size (PP=2 halves the per-GPU weights and gradients) "
            "or parallel.tensor_model_parallel_size")


def format_table(cfg, rows: list[tuple[str, str]], stages: list[StageEstimate]) -> str:
    cap = cfg.cluster.gpu_memory_gb
    lines = [f"preflight {cfg.name}: {cfg.cluster.nodes} node(s) x {cfg.cluster.tasks_per_node} rank(s), "
             f"GPU memory {f'{cap:g} GiB' if cap else 'not set (no capacity check)'}", "layout:"]
    lines += [f"  {rule:<36} {value}" for rule, value in rows]
    for st in stages:
        lines.append(f"memory per GPU, stage {st.stage} (P = {st.params:,} params), GiB:")
        for phase, terms in st.phases.items():
            lines.append(f"  [{phase}]")
            lines += [f"    {t.name:<40} {t.bytes / GIB:8.2f}  {t.note}".rstrip() for t in terms]
            lines.append(f"    {'reserve (context, NCCL, fragmentation)':<40} {RESERVE_GIB:8.2f}")
            lines.append(f"    {'total':<40} {st.total(phase) / GIB:8.2f}")
    return "\n".join(lines)


def check(cfg, print_table: bool = True) -> list[StageEstimate]:
    """The layout rules and the memory estimate of ``cfg``; raises ConfigError when a rule
    breaks or a stage's peak exceeds ``cluster.gpu_memory_gb``."""
    from nemo_gift.models.policy.meta_build import stage_parameter_counts

    if cfg.job != "train":
        return []
    rows = layout(cfg)
    stages = estimate(cfg, stage_parameter_counts(cfg.model, cfg.parallel))
    if print_table:
        print(format_table(cfg, rows, stages), flush=True)
    cap = cfg.cluster.gpu_memory_gb
    worst = max(stages, key=lambda st: st.total(st.peak_phase))
    phase = worst.peak_phase
    if cap and worst.total(phase) > cap * GIB:
        big = max(worst.phases[phase], key=lambda t: t.bytes)
        raise ConfigError(
            f"{cfg.name} does not fit cluster.gpu_memory_gb={cap:g}: stage {worst.stage} needs "
            f"{worst.total(phase) / GIB:.1f} GiB per GPU in its {phase} phase; the largest term is "
            f"{big.name} ({big.bytes / GIB:.1f} GiB). Fix: {_fix(big.name, cfg)}"
        )
    return stages
