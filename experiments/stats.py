"""Paired statistics over seeds: Student t quantiles, paired t-intervals, and the verdicts.

Every arm of the experiment runs the same seeds, and a seed fixes the first rollout batch, the
prompt order and the sampling streams (experiments/cpu_ablations.yaml), so two arms are compared
seed by seed: d_s = m_a(s) - m_b(s) for each seed s both arms finished, then

    mean d ± t_{1 - alpha/2, n - 1} * sd(d) / sqrt(n)        (sd with n - 1; level = 1 - alpha)

A claim that arm a is higher (lower) than arm b on a metric gets a verdict from that interval:

- ``supported``: the whole interval lies on the claimed side of 0;
- ``refuted``: the whole interval lies on the other side of 0;
- ``not resolved``: the interval contains 0 (or fewer than 2 paired seeds).

No correction for multiple comparisons: each interval is a 95% interval on its own, so across
the ~20 intervals of a report about one is expected to exclude 0 by chance.

The t quantile is computed here (no scipy): the t CDF through the regularized incomplete beta
function, F(t) = 1 - I_{df/(df + t^2)}(df/2, 1/2) / 2 for t >= 0, evaluated with Lentz's
continued fraction, then inverted by bisection.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Mapping

Direction = Literal["higher", "lower"]
Verdict = Literal["supported", "refuted", "not resolved"]

LEVEL = 0.95
"""Confidence level of every interval in the report."""


def _betacf(a: float, b: float, x: float, max_iter: int = 500, tol: float = 1e-15) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < tol:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x={x} must be in [0, 1]")
    if x in (0.0, 1.0):
        return x
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df={df} must be > 0")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (0 < p < 1), by bisection on :func:`t_cdf` to 1e-12."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p} must be in (0, 1)")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2.0


@dataclasses.dataclass(frozen=True)
class PairedInterval:
    """The t-interval of the mean of per-seed differences ``diffs`` (arm a minus arm b)."""

    diffs: tuple[float, ...]
    seeds: tuple[int, ...] = ()
    level: float = LEVEL

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float | None:
        return sum(self.diffs) / self.n if self.n else None

    @property
    def sd(self) -> float | None:
        """Sample standard deviation of the differences (n - 1); None below 2 seeds."""
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((d - m) ** 2 for d in self.diffs) / (self.n - 1))

    @property
    def half_width(self) -> float | None:
        """t_{(1 + level)/2, n - 1} * sd / sqrt(n); None below 2 seeds."""
        if self.n < 2:
            return None
        return t_quantile((1.0 + self.level) / 2.0, self.n - 1) * self.sd / math.sqrt(self.n)

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def verdict(self, direction: Direction) -> Verdict:
        """``supported`` / ``refuted`` / ``not resolved`` for the claim "a is {direction} than b"."""
        if self.half_width is None:
            return "not resolved"
        above, below = self.low > 0, self.high < 0
        if not (above or below):
            return "not resolved"
        return "supported" if above == (direction == "higher") else "refuted"

    def fmt(self, digits: int = 3) -> str:
        """``+0.012 [-0.004, +0.028]``, or the mean alone below 2 seeds."""
        if not self.n:
            return "n/a"
        if self.half_width is None:
            return f"{self.mean:+.{digits}f} (1 seed, no interval)"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def paired(a: Mapping[int, float | None], b: Mapping[int, float | None], level: float = LEVEL) -> PairedInterval:
    """Per-seed differences a[s] - b[s] over the seeds where both are known, in seed order."""
    seeds = tuple(sorted(s for s in a if s in b and a[s] is not None and b[s] is not None))
    return PairedInterval(tuple(float(a[s]) - float(b[s]) for s in seeds), seeds, level)


__all__ = ["LEVEL", "PairedInterval", "betainc", "paired", "t_cdf", "t_quantile"]
