"""Padding of token-budget micro-batches vs today's fixed micro-batches (no timing: token counts).

A rollout batch of N = B*G rows whose lengths (prompt + response tokens) are drawn log-uniformly
from [16, 1024] (long-tailed like real responses: as many rows in 16-128 as in 128-1024), each
data-parallel rank packing its N/D rows (:func:`nemo_gift.algorithms.packing.plan_micro_batches`).
The fixed layout pads every row to the batch's longest (``rollout.build_token_batch``). Prints the
padding fraction (padded / all tokens of the micro-batches) and the micro-batch counts per rank,
averaged over ``--seeds`` batches::

    .venv/bin/python benchmarks/packing.py [--rows 128] [--seeds 20] [--pad-multiple 8]
"""

from __future__ import annotations

import argparse
import math
import random

from nemo_gift.algorithms.packing import padding_fraction, plan_micro_batches
from nemo_gift.algorithms.rollout import padded_length


def log_uniform_lengths(rng: random.Random, n: int, low: int = 16, high: int = 1024) -> list[int]:
    """``n`` lengths with log(L) uniform on [log low, log high], rounded."""
    return [int(round(math.exp(rng.uniform(math.log(low), math.log(high))))) for _ in range(n)]


def measure(rows: int, seeds: int, pad_multiple: int, dp_sizes, budgets) -> list[dict]:
    """One record per (D, budget): mean padding fraction and micro-batches per rank; budget None
    is the fixed layout."""
    records = []
    for dp in dp_sizes:
        for budget in (None, *budgets):
            fracs, counts = [], []
            for seed in range(seeds):
                lengths = log_uniform_lengths(random.Random(seed), rows)
                if budget is None:
                    fracs.append(padding_fraction(lengths, [range(rows)], width=padded_length(max(lengths), pad_multiple)))
                    continue
                plan = plan_micro_batches(lengths, dp_size=dp, max_tokens=budget, pad_multiple=pad_multiple)
                fracs.append(padding_fraction(lengths, [mb for rank in plan for mb in rank], pad_multiple))
                counts.append(sum(len(rank) for rank in plan) / dp)
            records.append({"dp": dp, "budget": budget, "padding_frac": sum(fracs) / seeds,
                            "micro_per_rank": sum(counts) / len(counts) if counts else None})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128, help="N = B*G rows of the batch")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--pad-multiple", type=int, default=8)
    args = parser.parse_args()
    print(f"N={args.rows} rows, lengths log-uniform in [16, 1024], pad multiple {args.pad_multiple}, "
          f"mean of {args.seeds} batches")
    print(f"{'D':>3} {'max_tokens':>10} {'padding':>8} {'micro/rank':>10}")
    for r in measure(args.rows, args.seeds, args.pad_multiple, (1, 4, 8), (1024, 2048, 4096, 8192)):
        budget = "fixed" if r["budget"] is None else str(r["budget"])
        micro = "" if r["micro_per_rank"] is None else f"{r['micro_per_rank']:.1f}"
        print(f"{r['dp']:>3} {budget:>10} {r['padding_frac']:>8.3f} {micro:>10}")


if __name__ == "__main__":
    main()
