"""The CPU experiment's plots (``docs/img/gift_vs_grpo.png``, ``docs/img/ablations.png``), drawn
from an :class:`experiments.report.Experiment`: a metric's mean over seeds vs step, shaded
+- one standard deviation (:func:`mean_curve`). experiments/report.py calls them; this module
reads its ``Experiment`` and ``SeedRun`` by their fields only (``runs``, ``records``, ``label``,
``out``), so it imports nothing back from report.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from experiments import claims as cl
from nemo_gift.utils.logger import series

SeedRun = Any
"""An :class:`experiments.report.SeedRun` (``seed``, ``records``, ``config``)."""
Experiment = Any
"""An :class:`experiments.report.Experiment`."""


def mean_curve(runs: list[SeedRun], key: str | Callable, smooth: int = 1) -> tuple[list[int], list[float], list[float]]:
    """(steps, mean, std) over seeds at the steps every run logged. ``key`` is a metrics key or a
    function records -> (steps, values); each run's series is first smoothed by a trailing moving
    average of ``smooth`` points."""
    per_run = []
    for run in runs:
        steps, values = key(run.records) if callable(key) else series(run.records, key)
        smoothed = [sum(values[max(0, i - smooth + 1): i + 1]) / len(values[max(0, i - smooth + 1): i + 1])
                    for i in range(len(values))]
        per_run.append(dict(zip(steps, smoothed)))
    if not per_run:
        return [], [], []
    common = sorted(set.intersection(*(set(p) for p in per_run)))
    means, stds = [], []
    for step in common:
        xs = [p[step] for p in per_run]
        m = sum(xs) / len(xs)
        means.append(m)
        stds.append(math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)
    return common, means, stds


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(ax, runs: list[SeedRun], key, label: str, smooth: int = 1, **style) -> None:
    steps, mean, std = mean_curve(runs, key, smooth)
    if not steps:
        return
    (line,) = ax.plot(steps, mean, marker="o" if len(steps) < 20 else None, ms=3, label=f"{label} (n={len(runs)})",
                      **style)
    ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                    color=line.get_color(), alpha=0.15)


def plot_gift_vs_grpo(exp: Experiment, out: str | Path) -> Path:
    """GIFT and GRPO at lr x (solid) and 3x (dashed): held-out pass@1, Δgap(t), sampled response
    length and memorization vs step; mean over seeds, shaded ± std."""
    plt = _pyplot()
    c = exp.spec.claims
    arms = [(c[r], {"color": color, "ls": ls}) for r, color, ls in
            (("gift", "C0", "-"), ("grpo", "C1", "-"), ("gift_3x", "C0", "--"), ("grpo_3x", "C1", "--")) if r in c]
    panels = ((cl.EVAL_KEY, "held-out greedy pass@1", 1), (cl.delta_gap_series, "Δgap(t) = gap(t) − gap(0)", 1),
              (cl.LENGTH_KEY, f"sampled response length (moving average of {exp.spec.smooth})", exp.spec.smooth),
              (cl.MEMO_KEY, "memorization: wrong-key prompts answered with the wrong key", 1))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (key, title, smooth) in zip(axes.flat, panels):
        for name, style in arms:
            _band(ax, exp.runs.get(name, []), key, exp.label(name), smooth, **style)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("rollout step")
        ax.grid(alpha=0.3)
        _legend(ax, 7)
    return _save(fig, out)


def plot_ablations(exp: Experiment, out: str | Path) -> Path:
    """One panel per group: held-out pass@1 (mean over seeds) vs step, one line per arm."""
    plt = _pyplot()
    groups = exp.spec.groups
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, group in zip(axes.flat, groups):
        for arm in exp.spec.group_arms(group.name):
            steps, mean, _ = mean_curve(exp.runs.get(arm.name, []), cl.EVAL_KEY)
            if steps:
                ax.plot(steps, mean, marker="o" if len(steps) < 20 else None, ms=3, label=exp.label(arm.name, group))
        ax.set_title(group.title, fontsize=10)
        ax.set_xlabel("rollout step")
        ax.set_ylabel("eval pass@1 (mean over seeds)")
        ax.grid(alpha=0.3)
        _legend(ax, 7)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    return _save(fig, out)


def _legend(ax, fontsize: int) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize)
    else:
        ax.text(0.5, 0.5, "no complete runs", ha="center", va="center", transform=ax.transAxes, color="grey")


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out
