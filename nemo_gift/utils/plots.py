"""Curves of one or several runs, from their metrics.jsonl.

    python -m nemo_gift.utils.plots runs/gift_tiny runs/grpo_tiny --out compare.png

Each panel overlays the runs for one metric; by default train reward, eval pass@1, loss and
response length.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nemo_gift.utils.logger import read_metrics, series

DEFAULT_KEYS = ("train/reward", "eval/pass@1", "train/loss", "train/response_length")


def plot_runs(run_dirs, out: str | Path, keys=DEFAULT_KEYS, labels=None) -> Path:
    """Write a PNG with one panel per key, one line per run; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(Path(d), read_metrics(d)) for d in run_dirs]
    labels = list(labels) if labels else [d.name for d, _ in runs]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for (run_dir, records), label in zip(runs, labels):
            steps, values = series(records, key)
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 20 else None, ms=3, label=label)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Overlay the curves of several runs.")
    parser.add_argument("runs", nargs="+", help="run directories (each with metrics.jsonl)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--keys", nargs="+", default=list(DEFAULT_KEYS))
    args = parser.parse_args(argv)
    print(plot_runs(args.runs, args.out, args.keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
