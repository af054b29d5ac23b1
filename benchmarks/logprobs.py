"""Benchmark: per-token log-probs from vocab-parallel logits, forward + backward, TP=2 on gloo.

    .venv/bin/python benchmarks/logprobs.py            # both parts, a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/logprobs.py --part logits --reps 9 --chunk 128
    .venv/bin/python benchmarks/logprobs.py --part head --rows 2048 --hidden 256

Part ``logits`` (below) starts from the logits; part ``head`` (issue 20, :func:`_head_rank`)
starts from the hidden states and the LM head's weight: the fused path against megatron-core's
cross-entropy with the logits it needs.

Setup (issue 4): V = 32768 split over TP = 2 ranks (V/TP = 16384), B x T = 4 x 512 rows,
bf16 and fp32 logits, an upstream gradient of ones' scale on every position. Compared:

- ``ours``: :func:`nemo_gift.distributed.logprobs.vocab_parallel_logprobs`, unchunked, leaving
  the logits intact;
- ``ours overwrite``: the same with ``overwrite_logits=True``, the contract megatron-core's
  function always has (it computes the softmax and then the gradient in the logits' storage);
- ``ours chunked`` and ``ours chunked+overwrite``: ``chunk_size`` rows at a time, the softmax
  recomputed in backward (the second is what the GIFT loss function uses by default);
- ``mcore``: ``-megatron.core.tensor_parallel.vocab_parallel_cross_entropy``;
- ``naive``: all-gather the vocabulary, ``log_softmax`` in fp32, gather the target.

Time: wall time of forward + ``torch.autograd.grad`` w.r.t. the logits, the minimum over
``--reps`` runs (load from other processes only ever adds time, so the minimum is the best
estimate of the cost itself, as ``timeit`` advises), each run the max over the two ranks
(barrier before each run). Methods are interleaved within each repetition, so that a change of
machine load hits all of them; ``naive``, by far the slowest, is timed in the first repetition
only. Only relative figures mean anything: the machine is shared. On CPU, a fresh buffer of this size
costs more than an ``exp`` pass over it (glibc maps it anew and the kernel zero-fills every page
on first touch), so the variants that leave the logits intact pay for the buffer they must
allocate; GPUs' caching allocators do not have that cost.

Memory: ``tracemalloc`` does not see torch's allocations, so this reads the CPU allocator's own
accounting through the torch profiler (``profile_memory=True``): every allocation and free, in
order, during forward + backward, summed into a running level whose maximum is the peak. The
logits shard (which the caller holds in every method) is added to it, so ``peak`` is what must be
resident at the worst moment: logits + every temporary + the gradient w.r.t. the logits, which
exists at the end of backward. This matters for a fair comparison: megatron-core overwrites fp32
logits in place (softmax, then gradient in their storage), so its fp32 peak is the logits
alone, which ``ours`` only matches with ``overwrite_logits=True``. Measured on rank 0 (rank 1 is
symmetric), in a separate run from the timed ones.

Target (issue 4): <= 1.0x mcore's time and memory for ``ours``; the chunked variant's memory
bounded by the chunk: its peak minus (logits + gradient) is printed against chunk x V/TP x 4 B.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

from nemo_gift.utils.torch_utils import peak_cpu_bytes

V, B, T, TP = 32768, 4, 512, 2
MIB = 2.0**20


def _methods(group, chunk):
    from megatron.core import tensor_parallel

    from nemo_gift.distributed.logprobs import vocab_parallel_logprobs

    def naive(logits, target):
        full = tensor_parallel.gather_from_tensor_model_parallel_region(logits)  # [B, T, V]
        return torch.log_softmax(full.float(), dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)

    return {
        "ours": lambda x, y: vocab_parallel_logprobs(x, y, group),
        "ours overwrite": lambda x, y: vocab_parallel_logprobs(x, y, group, overwrite_logits=True),
        "ours chunked": lambda x, y: vocab_parallel_logprobs(x, y, group, chunk),
        "ours chunked+overwrite": lambda x, y: vocab_parallel_logprobs(x, y, group, chunk, overwrite_logits=True),
        "mcore": lambda x, y: -tensor_parallel.vocab_parallel_cross_entropy(x, y),
        "naive": naive,
    }


def _timed(run) -> float:
    """Seconds of ``run()``, the max over the ranks (a barrier first)."""
    dist.barrier()
    t0 = time.perf_counter()
    run()
    elapsed = torch.tensor([time.perf_counter() - t0])
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return elapsed.item()


def _bench_rank(rank, world_size, reps, chunk):
    from megatron.core import parallel_state as ps

    from nemo_gift.models.policy import parallel
    from nemo_gift.models.policy.config import ParallelConfig

    parallel.initialize(ParallelConfig(tensor_model_parallel_size=TP))
    group = ps.get_tensor_model_parallel_group()
    g = torch.Generator().manual_seed(0)
    base = torch.chunk(2.0 * torch.randn(B, T, V, generator=g), TP, dim=-1)[rank].contiguous()
    target = torch.randint(0, V, (B, T), generator=g)
    upstream = torch.randn(B, T, generator=g)
    rows = {}
    for dtype in (torch.bfloat16, torch.float32):
        data = base.to(dtype)
        methods = _methods(group, chunk)

        def step(fn):
            logits = data.clone().requires_grad_()  # fresh: mcore and overwrite consume it
            return logits, lambda: torch.autograd.grad(fn(logits, target), logits, upstream)

        times = {name: [] for name in methods}
        for rep in range(reps):
            for name, fn in methods.items():
                if name == "naive" and rep:
                    continue
                _, run = step(fn)
                times[name].append(_timed(run))
                del run
        for name, fn in methods.items():
            logits, run = step(fn)
            dist.barrier()
            peak = peak_cpu_bytes(run) + logits.untyped_storage().nbytes()
            rows[(str(dtype).split(".")[-1], name)] = {
                "ms": 1e3 * min(times[name]), "peak": peak,
                "shard": logits.untyped_storage().nbytes(),
            }
    return rows


def _table(rows, chunk) -> str:
    lines = [
        f"vocab-parallel log-probs, forward + backward: TP={TP} (gloo, CPU), V={V} (V/TP={V // TP}), "
        f"B x T = {B} x {T}, chunk = {chunk} rows",
        f"{'dtype':<9}{'method':<25}{'time ms':>9}{'x mcore':>9}{'peak MiB':>10}{'x mcore':>9}",
    ]
    for dtype in ("bfloat16", "float32"):
        ref = rows[(dtype, "mcore")]
        for (dt, name), r in rows.items():
            if dt != dtype:
                continue
            lines.append(
                f"{dtype:<9}{name:<25}{r['ms']:>9.1f}{r['ms'] / ref['ms']:>9.2f}"
                f"{r['peak'] / MIB:>10.1f}{r['peak'] / ref['peak']:>9.2f}"
            )
    bound = chunk * (V // TP) * 4 / MIB
    for dtype in ("bfloat16", "float32"):
        r = rows[(dtype, "ours chunked")]
        o = rows[(dtype, "ours chunked+overwrite")]
        lines.append(
            f"{dtype}: chunked peak - (logits + gradient) = {(r['peak'] - 2 * r['shard']) / MIB:.1f} MiB; "
            f"with overwrite, peak - logits = {(o['peak'] - o['shard']) / MIB:.1f} MiB; "
            f"one fp32 chunk = {bound:.1f} MiB"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- part "head" (issue 20)
HEAD_VOCABS = (
    (32768, "V=32k over TP=2"),
    (152064 // 8 * TP, "Qwen V=152k/8 per rank (TP=8's shard, on TP=2)"),
)
"""(V, label): the vocabularies of the head part. The second gives each of the TP=2 ranks the
19008-row shard that Qwen2.5's 152064 tokens have under TP=8: per-rank memory and GEMMs are
TP=8's, the two small collectives run over 2 ranks instead of 8."""


def _head_methods(group, chunk):
    """name -> fn(hidden [R, H], weight shard [V/TP, H], target [R]) -> log-probs [R]."""
    from megatron.core import tensor_parallel

    from nemo_gift.distributed.fused_logprobs import fused_linear_logprobs
    from nemo_gift.distributed.logprobs import vocab_parallel_logprobs

    return {
        # megatron-core's LM head GEMM, then its cross-entropy (which overwrites the logits)
        "mcore logits + CE": lambda x, w, y: -tensor_parallel.vocab_parallel_cross_entropy(x @ w.t(), y),
        # the policy's path before issue 20 (run_step: unchunked, overwrite_logits=True)
        "ours logits": lambda x, w, y: vocab_parallel_logprobs(x @ w.t(), y, group, overwrite_logits=True),
        "ours logits chunked": lambda x, w, y: vocab_parallel_logprobs(
            x @ w.t(), y, group, chunk or 256, overwrite_logits=True
        ),
        "fused": lambda x, w, y: fused_linear_logprobs(x, w, y, group, chunk),
    }


def _head_rank(rank, world_size, reps, rows, hidden, chunk, dtype_name):
    """Per vocabulary and method: min time (max over ranks) and rank 0's peak bytes."""
    from megatron.core import parallel_state as ps

    from nemo_gift.models.policy import parallel
    from nemo_gift.models.policy.config import ParallelConfig

    parallel.initialize(ParallelConfig(tensor_model_parallel_size=TP))
    group = ps.get_tensor_model_parallel_group()
    dtype = getattr(torch, dtype_name)
    out = {}
    for vocab, label in HEAD_VOCABS:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(rows, hidden, generator=g).to(dtype)  # [R, H], replicated over TP
        w = (torch.randn(vocab // TP, hidden, generator=g) / hidden**0.5).to(dtype)  # [V/TP, H]
        y = torch.randint(0, vocab, (rows,), generator=g)
        upstream = torch.randn(rows, generator=g)
        methods = _head_methods(group, chunk)

        def run(fn):
            xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
            return lambda: torch.autograd.grad(fn(xl, wl, y), (xl, wl), upstream.to(torch.float32))

        times = {name: [] for name in methods}
        for _ in range(reps):
            for name, fn in methods.items():
                times[name].append(_timed(run(fn)))
        grads = (x.numel() + w.numel()) * x.element_size()  # d/dx and d/dW: every method returns them
        for name, fn in methods.items():
            step = run(fn)
            dist.barrier()
            peak = peak_cpu_bytes(step)
            out[(label, name)] = {"ms": 1e3 * min(times[name]), "peak": peak, "act": peak - grads}
    return out


def _head_table(rows_out, args, load) -> str:
    from nemo_gift.distributed.fused_logprobs import default_chunk_rows

    lines = [
        f"LM head + log-probs, forward + backward to hidden and weight: TP={TP} (gloo, CPU), "
        f"R = {args.rows} tokens, H = {args.hidden}, {args.head_dtype}; "
        f"chunk = {args.head_chunk or 'fused default'} (fused default here: "
        + ", ".join(f"{default_chunk_rows(args.rows, v // TP, args.hidden)} at V/TP={v // TP}" for v, _ in HEAD_VOCABS)
        + "; 'ours logits chunked' uses 256 without --head-chunk)",
        f"time: min over {args.reps} runs, SHARED machine (load average {load:.1f} at start on "
        f"{os.cpu_count()} cores): only ratios mean anything",
        "peak: CPU allocator peak during the call (torch profiler memory events), gradients included; "
        "act: peak minus d/dx and d/dW (what activation memory the method adds)",
        f"{'vocabulary':<48}{'method':<21}{'time ms':>9}{'x mcore':>8}{'peak MiB':>10}{'x mcore':>8}"
        f"{'act MiB':>9}{'x mcore':>8}",
    ]
    for _, label in HEAD_VOCABS:
        ref = rows_out[(label, "mcore logits + CE")]
        for (lab, name), r in rows_out.items():
            if lab == label:
                lines.append(
                    f"{label:<48}{name:<21}{r['ms']:>9.1f}{r['ms'] / ref['ms']:>8.2f}{r['peak'] / MIB:>10.1f}"
                    f"{r['peak'] / ref['peak']:>8.2f}{r['act'] / MIB:>9.1f}{r['act'] / ref['act']:>8.2f}"
                )
    lines.append("issue 20 targets for 'fused': peak <= 0.25x and time <= 1.0x of 'mcore logits + CE'")
    return "\n".join(lines)


def _run_head(args) -> str:
    from nemo_gift.distributed.spawn import run_on_ranks

    load = os.getloadavg()[0]
    rows_out = run_on_ranks(
        _head_rank, TP, args=(args.reps, args.rows, args.hidden, args.head_chunk, args.head_dtype), timeout=1800
    )[0]
    return _head_table(rows_out, args, load)


def main(argv=None) -> str:
    from nemo_gift.distributed.spawn import run_on_ranks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "logits", "head"), default="all",
                        help="from the logits, from the hidden states (LM head fused), or both")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per method and dtype")
    parser.add_argument("--chunk", type=int, default=32, help="rows per chunk (32 x 16384 x 4 B = 2 MiB of fp32)")
    parser.add_argument("--rows", type=int, default=1024, help="head part: tokens (b*s) per rank")
    parser.add_argument("--hidden", type=int, default=128, help="head part: hidden size H")
    parser.add_argument("--head-chunk", type=int, default=None,
                        help="head part: tokens per chunk of the chunked and fused paths (default: the fused default)")
    parser.add_argument("--head-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="head part: dtype of hidden states and weight (bf16 GEMMs are slow on CPU)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    tables = []
    if args.part in ("all", "logits"):
        rows = run_on_ranks(_bench_rank, TP, args=(args.reps, args.chunk), timeout=600)[0]
        tables.append(_table(rows, args.chunk))
    if args.part in ("all", "head"):
        tables.append(_run_head(args))
    table = "\n\n".join(tables)
    print(table)
    print(f"(benchmark wall time {time.perf_counter() - start:.0f} s)")
    return table


if __name__ == "__main__":
    main()
