"""The paper's claims, tested seed by seed: per-run metrics, paired intervals and verdicts.

Per-run metrics (from RUN/metrics.jsonl; "eval" is held-out greedy pass@1, "train" the same on
the RL pool, both sets of one difficulty mix, conf/task/arithmetic_scratchpad.yaml):

- ``auc``: the area under the eval curve from step 0 to the last step T (trapezoids over the
  evaluations), divided by T: the mean eval pass@1 over training. Every arm starts from the same
  warm start, so a higher ``auc`` is faster convergence (and a higher curve in general).
- ``final``: eval pass@1 at T (``train_final``: train pass@1 at T). ``peak_minus_final``: the
  best eval pass@1 minus the final one (>= 0): how far the run fell back from its best.
- ``delta_gap``: gap(T) - gap(0), gap = train pass@1 - eval pass@1. Subtracting gap(0) removes
  what the warm start left, so this is the gap RL opened: overfitting to the pool.
- ``memo``: ``memo/pass@1`` at T: the share of the wrong-key prompts answered with their wrong
  key (the answer's last digit + 1 mod 10, which neither the rule nor the warm start's teacher
  gives), which only fitting those very prompts can produce (direct memorization); ``memo_start``
  the same at step 0, near 0 by construction (nemo_gift/data/arithmetic_sets.py).
- ``length``: mean sampled response length in tokens (EOS included) over the last 10% of steps;
  ``start_length`` the same over the first 10%.
- ``zcorr_first`` / ``zcorr_later``, ``degenerate_first`` / ``degenerate_later``: GIFT's
  within-group corr(z, A) and share of groups with a degenerate implicit std on the first
  optimizer step of each rollout batch and on the others, averaged over steps. With the pi_old
  baseline s = 0 on the first, so the loss is active only where these differ.

A claim compares two roles (``claims:`` in the spec maps a role to an arm) on one metric, with
the paired t-interval of experiments/stats.py and its verdict.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

from experiments.stats import Direction, PairedInterval, paired
from nemo_gift.utils.logger import series

EVAL_KEY = "eval/pass@1"
TRAIN_EVAL_KEY = "train/pass@1"
MEMO_KEY = "memo/pass@1"
LENGTH_KEY = "train/response_length"
TAIL_FRACTION = 0.1
"""Response length and train reward are averaged over this last (or first) share of the steps."""

Records = list[dict]


def auc(records: Records) -> float | None:
    """Mean eval pass@1 over [0, T]: trapezoids over the evaluated steps, divided by T."""
    steps, values = series(records, EVAL_KEY)
    if len(steps) < 2 or steps[-1] <= steps[0]:
        return None
    area = sum((s1 - s0) * (v0 + v1) / 2 for s0, s1, v0, v1 in zip(steps, steps[1:], values, values[1:]))
    return area / (steps[-1] - steps[0])


def gap_series(records: Records) -> tuple[list[int], list[float]]:
    """(steps, train pass@1 - eval pass@1) at every evaluation that measured both."""
    rows = [r for r in records if EVAL_KEY in r and TRAIN_EVAL_KEY in r]
    return [r["step"] for r in rows], [r[TRAIN_EVAL_KEY] - r[EVAL_KEY] for r in rows]


def delta_gap_series(records: Records) -> tuple[list[int], list[float]]:
    """(steps, gap(t) - gap(0))."""
    steps, gaps = gap_series(records)
    return steps, [g - gaps[0] for g in gaps] if gaps else []


def tail_mean(records: Records, key: str, fraction: float = TAIL_FRACTION, head: bool = False) -> float | None:
    """Mean of ``key`` over the last (``head``: first) ``fraction`` of the steps that logged it."""
    values = series(records, key)[1]
    if not values:
        return None
    k = max(1, math.ceil(fraction * len(values)))
    part = values[:k] if head else values[-k:]
    return sum(part) / len(part)


def _last(key: str) -> Callable[[Records], float | None]:
    return lambda records: (series(records, key)[1] or [None])[-1]


def _peak_minus_final(records: Records) -> float | None:
    values = series(records, EVAL_KEY)[1]
    return max(values) - values[-1] if values else None


def _delta_gap(records: Records) -> float | None:
    values = delta_gap_series(records)[1]
    return values[-1] if values else None


def _mean(key: str) -> Callable[[Records], float | None]:
    return lambda records: tail_mean(records, key, fraction=1.0)


@dataclasses.dataclass(frozen=True)
class Metric:
    label: str
    fn: Callable[[Records], float | None]
    digits: int = 3


METRICS: dict[str, Metric] = {
    "start": Metric("start eval pass@1", lambda r: next((x[EVAL_KEY] for x in r if x["step"] == 0 and EVAL_KEY in x),
                                                        None)),
    "final": Metric("final eval pass@1", _last(EVAL_KEY)),
    "train_final": Metric("final pass@1 on the RL pool", _last(TRAIN_EVAL_KEY)),
    "auc": Metric("AUC of eval pass@1", auc),
    "peak_minus_final": Metric("peak − final eval pass@1", _peak_minus_final),
    "delta_gap": Metric("Δgap(T) = gap(T) − gap(0)", _delta_gap),
    "memo": Metric("memorization (memo/pass@1 at T)", _last(MEMO_KEY)),
    "memo_start": Metric("memo/pass@1 at step 0", lambda r: (series(r, MEMO_KEY)[1] or [None])[0]),
    "length": Metric("response length, last 10% of steps", lambda r: tail_mean(r, LENGTH_KEY), 2),
    "start_length": Metric("response length, first 10% of steps", lambda r: tail_mean(r, LENGTH_KEY, head=True), 2),
    "zcorr_first": Metric("corr(z, A), 1st mini-batch", _mean("train/z_a_corr/first_mb")),
    "zcorr_later": Metric("corr(z, A), 2nd-4th", _mean("train/z_a_corr/later_mb")),
    "degenerate_first": Metric("degenerate-std groups, 1st mini-batch",
                               _mean("train/degenerate_implicit_std_frac/first_mb")),
    "degenerate_later": Metric("degenerate-std groups, 2nd-4th", _mean("train/degenerate_implicit_std_frac/later_mb")),
}


def per_seed(runs: Sequence, metric: str) -> dict[int, float | None]:
    """{seed: metric} over the complete runs of one arm (objects with ``seed`` and ``records``)."""
    return {r.seed: METRICS[metric].fn(r.records) for r in runs}


def mean_sd(values: Mapping[int, float | None], digits: int = 3) -> str:
    """``mean ± sd`` over the known values (sd with n - 1), or n/a."""
    xs = [v for v in values.values() if v is not None]
    if not xs:
        return "n/a"
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return f"{m:.{digits}f}"
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


@dataclasses.dataclass(frozen=True)
class Claim:
    """"Role a is ``direction`` than role b on ``metric``", tested on each pair of roles."""

    name: str
    metric: str
    direction: Direction
    pairs: tuple[tuple[str, str], ...]


METHOD_PAIRS = (("gift", "grpo"), ("gift_3x", "grpo_3x"), ("gift_3x", "grpo"))
"""GIFT vs GRPO at the same lr x, at the same 3x, and at the paper's rates (GIFT 3x, GRPO x)."""

CLAIMS: tuple[Claim, ...] = (
    Claim("faster convergence", "auc", "higher", METHOD_PAIRS),
    Claim("less overfitting", "delta_gap", "lower", METHOD_PAIRS),
    Claim("less overfitting", "memo", "lower", METHOD_PAIRS),
    Claim("less overfitting", "peak_minus_final", "lower", METHOD_PAIRS),
    Claim("kl_sum ≥ kl_average", "auc", "higher", (("kl_sum", "kl_average"),)),
    Claim("kl_sum ≥ kl_average", "final", "higher", (("kl_sum", "kl_average"),)),
    Claim("longer responses", "length", "higher", METHOD_PAIRS),
)
"""The paper's four trends (docs/gift-math.md spec section 7), each on its metrics."""

EVIDENCE: tuple[Claim, ...] = (
    Claim("implicit baseline pi_old beats pi_ref", "auc", "higher", (("pi_old", "pi_ref"),)),
    Claim("implicit baseline pi_old beats pi_ref", "final", "higher", (("pi_old", "pi_ref"),)),
)
"""What the ``old_policy`` default rests on."""

ROLES = ("gift", "grpo", "gift_3x", "grpo_3x", "kl_sum", "kl_average", "pi_old", "pi_ref")


@dataclasses.dataclass(frozen=True)
class Result:
    """One claim on one pair of arms."""

    claim: Claim
    roles: tuple[str, str]
    arms: tuple[str, str] | None
    """None when a role has no arm, or an arm no complete run."""
    a: dict[int, float | None]
    b: dict[int, float | None]
    interval: PairedInterval

    @property
    def verdict(self) -> str:
        return "not measured" if self.arms is None else self.interval.verdict(self.claim.direction)


def evaluate(claims: Sequence[Claim], roles: Mapping[str, str], runs: Mapping[str, Sequence]) -> list[Result]:
    """Every (claim, pair): per-seed values of both arms and the paired interval of a - b."""
    out = []
    for claim in claims:
        for pair in claim.pairs:
            arms = tuple(roles.get(r) for r in pair)
            if None in arms or not all(runs.get(a) for a in arms):
                out.append(Result(claim, pair, None, {}, {}, PairedInterval(())))
                continue
            a, b = (per_seed(runs[arm], claim.metric) for arm in arms)
            out.append(Result(claim, pair, arms, a, b, paired(a, b)))
    return out


def results_table(results: Sequence[Result]) -> str:
    """Markdown: claim, comparison, metric, both arms (mean ± sd), paired difference [95% CI], verdict."""
    header = ["claim", "comparison (a − b)", "metric", "a", "b", "paired a − b [95% CI]", "seeds", "verdict"]
    rows = []
    for r in results:
        metric = METRICS[r.claim.metric]
        sign = ">" if r.claim.direction == "higher" else "<"
        if r.arms is None:
            rows.append([r.claim.name, " − ".join(r.roles), metric.label, "", "", "", "0", "not measured"])
            continue
        rows.append([r.claim.name, f"{r.arms[0]} − {r.arms[1]} (claim: a {sign} b)", metric.label,
                     mean_sd(r.a, metric.digits), mean_sd(r.b, metric.digits), r.interval.fmt(metric.digits),
                     str(r.interval.n), f"**{r.verdict}**"])
    return _md_table(header, rows)


def arm_table(arms: Sequence[str], runs: Mapping[str, Sequence], metrics: Sequence[str], labels: Mapping[str, str],
              n_seeds: int) -> str:
    """Markdown, one row per arm: mean ± sd over its complete seeds of each metric."""
    header = ["arm", *(METRICS[m].label for m in metrics), "seeds"]
    rows = []
    for arm in arms:
        arm_runs = runs.get(arm, [])
        cells = [mean_sd(per_seed(arm_runs, m), METRICS[m].digits) if arm_runs else "not run" for m in metrics]
        rows.append([labels.get(arm, arm), *cells, f"{len(arm_runs)}/{n_seeds}"])
    return _md_table(header, rows)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


__all__ = ["CLAIMS", "EVIDENCE", "METRICS", "ROLES", "Claim", "Result", "arm_table", "auc", "delta_gap_series",
           "evaluate", "per_seed", "results_table"]
