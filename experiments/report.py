#!/usr/bin/env python
"""Summarize a CPU experiment into ``docs/results.md`` and PNG plots.

    python experiments/report.py experiments/out [--spec experiments/cpu_ablations.yaml]
        [--results docs/results.md] [--img docs/img]

Reads ``OUT/runs/ARM/seed_S/metrics.jsonl`` (written by experiments/run.py). The per-run
metrics and the paper's claims live in experiments/claims.py, the paired t-intervals and the
verdicts ("supported", "refuted", "not resolved") in experiments/stats.py; this module writes
the page and the plots from them.

The spec (:class:`Spec`, :func:`load_spec`, shared with run.py) lives in experiments/spec.py and
is re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Mapping

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # a source checkout needs no install

from experiments import claims as cl  # noqa: E402
from experiments.spec import DEFAULT_SPEC, Group, Spec, SpecError, load_spec, parse_spec  # noqa: E402
from experiments.plots import plot_ablations, plot_gift_vs_grpo  # noqa: E402
from experiments.stats import LEVEL  # noqa: E402
from nemo_gift.utils.logger import read_metrics, series  # noqa: E402

MANIFEST = "manifest.json"

EVAL_KEY = cl.EVAL_KEY
MEMO_KEY = cl.MEMO_KEY
LENGTH_KEY = cl.LENGTH_KEY

ARM_METRICS = ("start", "final", "auc", "peak_minus_final", "train_final", "delta_gap", "memo_start", "memo",
               "start_length", "length")
"""Columns of the per-arm table."""
README_METRICS = ("final", "auc", "delta_gap", "memo", "length")
"""Columns of the README's table (:meth:`Experiment.method_table`)."""


# --------------------------------------------------------------------------------------------
# Runs


def run_complete(run_dir: str | Path, max_steps: int) -> bool:
    """True when the run logged its final step, evaluation included (the runner then skips it)."""
    try:
        records = read_metrics(run_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return bool(records) and records[-1]["step"] >= max_steps and EVAL_KEY in records[-1]


def final_eval(records: list[dict]) -> float:
    return series(records, EVAL_KEY)[1][-1]


def start_eval(records: list[dict]) -> float | None:
    """Held-out pass@1 before RL (step 0)."""
    return cl.METRICS["start"].fn(records)


def saved_config(run_dir: Path) -> dict | None:
    """The config.yaml the launcher wrote into ``run_dir`` (None before it ran)."""
    import yaml

    path = run_dir / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


class _Dotted:
    """``{gift.std_guard}`` in a format string reads config["gift"]["std_guard"]."""

    def __init__(self, data: Mapping):
        self._data = data

    def __getitem__(self, key: str):
        value = self._data[key]
        return _Dotted(value) if isinstance(value, Mapping) else value

    __getattr__ = __getitem__


def format_setting(setting: str, config: Mapping) -> str:
    """Fill a group's ``setting`` format string from a run's config; raises KeyError if a key is missing."""
    return setting.format_map(_Dotted(config))


@dataclasses.dataclass
class SeedRun:
    seed: int
    records: list[dict]
    config: dict | None = None
    """The run's resolved config (RUN_DIR/config.yaml), if present."""


def estimated_idle_wall(cpu_seconds: list[float], jobs: int) -> float:
    """Wall time of the runs on an idle machine with ``jobs`` single-threaded slots: each run takes
    its CPU time, runs start in the given order on the first free slot (the runner's pool)."""
    slots = [0.0] * max(1, jobs)
    for cpu in cpu_seconds:
        i = slots.index(min(slots))
        slots[i] += cpu
    return max(slots)


# --------------------------------------------------------------------------------------------
# The experiment's results


@dataclasses.dataclass
class Experiment:
    """The runs of OUT for a spec: complete runs per arm, and the manifest."""

    out: Path
    spec: Spec
    runs: dict[str, list[SeedRun]]
    incomplete: dict[str, list[int]]
    """Seeds per arm without a finished run (missing, partial or failed): left out of every number."""
    manifest: dict

    def config(self, arm: str) -> dict | None:
        return next((r.config for r in self.runs.get(arm, []) if r.config), None)

    def label(self, arm_name: str, group: Group | None = None) -> str:
        """The arm's label, or "name (setting)" with the group's setting read from its config."""
        arm = self.spec.arm(arm_name)
        if arm.label:
            return arm.label
        config = self.config(arm_name)
        if group is None or not group.setting or config is None:
            return arm_name
        try:
            setting = format_setting(group.setting, config)
        except (KeyError, AttributeError, IndexError, ValueError):
            return arm_name
        return arm_name if setting == arm_name else f"{arm_name} ({setting})"

    def table(self, arm_names: list[str], metrics: tuple[str, ...] = ARM_METRICS) -> str:
        """Markdown, one row per arm: mean ± sd over its finished seeds (arms without one say so)."""
        labels = {a: self.label(a) for a in arm_names}
        return cl.arm_table(arm_names, self.runs, metrics, labels, len(self.spec.seeds))

    def method_table(self) -> str:
        """GIFT vs GRPO and GIFT's variants, ready to paste into the README."""
        names = [self.spec.claims[r] for r in ("gift", "grpo", "gift_3x", "grpo_3x", "kl_average", "pi_ref")
                 if r in self.spec.claims]
        return self.table(list(dict.fromkeys(names)) or [a.name for a in self.spec.arms], README_METRICS)

    def results(self, claims: tuple = cl.CLAIMS) -> list[cl.Result]:
        return cl.evaluate(claims, self.spec.claims, self.runs)

    def gift_activity_table(self) -> str:
        """GIFT arms: corr(z, A) and degenerate-std share on the 1st vs the 2nd-4th optimizer step."""
        gift_arms = [a.name for a in self.spec.arms if (self.config(a.name) or {}).get("trainer", {}).get(
            "algorithm") == "gift"]
        metrics = ("zcorr_first", "zcorr_later", "degenerate_first", "degenerate_later")
        return self.table(gift_arms, metrics)

    def runtime_text(self) -> str:
        m = self.manifest
        if not m:
            return "unknown (no manifest.json in the output directory)"
        wall = sum(i.get("wall_s", 0.0) for i in m.get("invocations", []))
        jobs = m.get("jobs", self.spec.jobs)
        text = (f"{wall / 60:.1f} min wall time seen over {len(m.get('invocations', []))} invocation(s) on a "
                f"{m.get('cpu_count', '?')}-core machine with {jobs} runs in parallel")
        runs = [r for r in m.get("runs", {}).values() if r.get("wall_s") is not None]
        if runs:
            total = sum(r["wall_s"] for r in runs) / 60
            text += f"; the {len(runs)} runs took {total:.1f} min in total (sum of run times)"
        cpu = [r["cpu_s"] for r in m.get("runs", {}).values() if r.get("cpu_s") is not None]
        warm = sum(w.get("cpu_s", 0.0) for w in m.get("warm_start", []))
        if cpu:
            idle = warm + estimated_idle_wall(cpu, jobs)
            text += (f". CPU time: {sum(cpu) / 60:.1f} min for {len(cpu)} runs, plus {warm / 60:.1f} min of warm "
                     f"start; estimated wall time on an idle machine: {idle / 60:.1f} min (each single-threaded run "
                     f"taking its CPU time, {jobs} at a time, and the warm start its CPU time)")
        return text

    def settings(self) -> list[str]:
        spec = self.spec
        config = self.config(spec.claims.get("gift", spec.arms[0].name))
        every = "every step" if spec.eval_every == 1 else f"every {spec.eval_every} steps"
        lines = [f"- Rollout steps per run: {spec.max_steps}; greedy evaluation at step 0 (before RL), {every} "
                 "and at the end."]
        if config:
            d, a, t = config["data"], config["data"]["arithmetic"], config["trainer"]
            b, g = t["prompts_per_step"], config["rollout"]["group_size"]
            lines.append(f"- Task: `{d['dataset']}`, {a['min_digits']}-{a['max_digits']} digit operands, scratchpad "
                         f"rate {a.get('scratchpad_rate', 0)} and carry drop {a['teacher_carry_drop']} in the warm "
                         f"start's demonstrations; RL pool of {a.get('pool_size')} prompts (the train-eval set) plus "
                         f"{a.get('wrong_key_prompts', 0)} wrong-key prompts (`memo/pass@1`); {d['eval_size']} "
                         "held-out prompts of the same difficulty mix (`eval/pass@1`).")
            pool = (a.get("pool_size") or 0) + a.get("wrong_key_prompts", 0)
            epochs = f", {spec.max_steps * b / pool:.0f} epochs over the pool" if pool else ""
            lines.append(f"- Rollout: B × G = {b} × {g} = {b * g} responses per step, {b // t['mini_batch_prompts']} "
                         f"optimizer steps per rollout batch (mini-batch {t['mini_batch_prompts']} prompts){epochs}.")
        seeds = f"- Seeds: {', '.join(map(str, spec.seeds))} (`seed`: rollouts and RL updates), shared by every arm"
        if spec.sft_seed is not None:
            seeds += f"; one warm start `sft.seed={spec.sft_seed}`"
        if spec.data_seed is not None:
            seeds += f"; one set of prompts `data.seed={spec.data_seed}`"
        lines.append(seeds + ".")
        recipes = sorted({a.conf for a in spec.arms})
        lines.append(f"- Recipes: {', '.join(f'`{r}`' for r in recipes)}; common overrides: "
                     f"{', '.join(f'`{o}`' for o in spec.recipe_overrides) or 'none'}.")
        lines.append(f"- Statistics: per-seed differences a − b over the seeds both arms finished, their mean with "
                     f"a {LEVEL:.0%} t-interval (df = n − 1). A claim is **supported** when the interval lies wholly "
                     "on its side of 0, **refuted** when it lies wholly on the other side, **not resolved** otherwise "
                     "(experiments/stats.py). No correction for multiple comparisons.")
        return lines

    def arm_rows(self) -> list[str]:
        lines = []
        for arm in self.spec.arms:
            c = self.config(arm.name)
            if c:
                what = (f"`{arm.conf}` {' '.join(f'`{o}`' for o in arm.overrides)}").strip()
                lines.append(f"- `{arm.name}`: {what} (lr {c['optim']['lr']:g}"
                             + (f", guard {c['gift']['std_guard']}, baseline {c['gift']['implicit_baseline']}, "
                                f"{c['gift']['implicit_reward']}" if c["trainer"]["algorithm"] == "gift" else "")
                             + ").")
        return lines

    def markdown(self, results_path: Path, images: dict[str, Path]) -> str:
        """The whole results page; image links are relative to ``results_path``."""
        spec, m = self.spec, self.manifest
        rel = {k: Path(os.path.relpath(v, results_path.parent)).as_posix() for k, v in images.items()}
        command = m.get("command") or f"python experiments/run.py --out {self.out}"
        commit = m.get("git_commit")
        code = f" Code: commit `{commit[:12]}{'+dirty' if commit.endswith('+dirty') else ''}`." if commit else ""
        lines = [
            "# CPU experiment: can GIFT be told from GRPO?", "",
            "This file is generated by `experiments/report.py` from the runs in "
            f"`{_display(self.out)}`; hand edits are lost when it is regenerated. Numbers are "
            "mean ± sample standard deviation over seeds; comparisons are paired by seed.", "",
            f"Reproduce: `{command}`", "", f"Runtime: {self.runtime_text()}.{code}", "",
            "## Settings", "", *self.settings(), "", "Arms:", "", *self.arm_rows(), "",
        ]
        missing = {a: s for a, s in self.incomplete.items() if s}
        if missing:
            left = "; ".join(f"{a}: seeds {', '.join(map(str, s))}" for a, s in missing.items())
            lines += [f"Left out (no finished run): {left}.", ""]
        results = self.results()
        lines += ["## The paper's claims", "", cl.results_table(results), ""]
        counts = {v: sum(r.verdict == v for r in results) for v in ("supported", "refuted", "not resolved")}
        lines += [f"Of {len(results)} intervals: {counts['supported']} supported, {counts['refuted']} refuted, "
                  f"{counts['not resolved']} not resolved.", ""]
        if "gift_vs_grpo" in rel:
            lines += [f"![GIFT vs GRPO]({rel['gift_vs_grpo']})", ""]
        lines += ["## Every arm", "", self.table([a.name for a in spec.arms]), ""]
        lines += ["## Is GIFT's loss active?", "",
                  "With the pi_old baseline every rollout batch starts at s = 0, so on its first optimizer step z = 0 "
                  "and GIFT's gradient is GRPO's up to a scale (docs/gift-math.md, section 12). Only the 2nd-4th "
                  "steps can differ. Per-step means of the within-group corr(z, A) and of the share of groups with "
                  "a degenerate implicit std (std of s < 0.01), averaged over the run:", "",
                  self.gift_activity_table(), ""]
        lines += ["## The implicit baseline (the `old_policy` default)", "",
                  cl.results_table(self.results(cl.EVIDENCE)), ""]
        if "ablations" in rel:
            lines += [f"![held-out pass@1 per comparison]({rel['ablations']})", ""]
        lines += [
            "## Metrics", "",
            "- start / final eval pass@1: held-out greedy pass@1 at step 0 (after the warm start) / at the last step.",
            "- AUC: the area under the held-out pass@1 curve over [0, T] divided by T (the mean pass@1 over training);"
            " every arm starts from one warm start, so a higher AUC is faster convergence.",
            "- peak − final: the best held-out pass@1 minus the final one.",
            "- Δgap(T): gap(T) − gap(0), gap = pass@1 on the RL pool minus held-out pass@1 (same difficulty mix). "
            "Where every arm fits the pool (final pass@1 on the RL pool near 1), Δgap(T) mostly mirrors the final "
            "held-out pass@1: the arm that generalizes less has the larger gap.",
            "- memorization: the share of the wrong-key prompts answered greedily with their wrong key at the last "
            "step. The key is the true answer with its last digit d replaced by (d + 1) mod 10: neither the rule nor "
            "the warm start's carry-dropping teacher gives it, and the warm start samples it only as a rare slip "
            "(nemo_gift/data/arithmetic_sets.py), so it starts near 0 (`memo/pass@1 at step 0`) and rises only if RL "
            "fits those very prompts against the rule.",
            "- response length: sampled response tokens (EOS included), mean over the first / last 10% of steps.",
            "",
            "## Why not the earlier one-step comparison", "",
            "The previous version of this experiment took one optimizer step per rollout batch. With the pi_old "
            "baseline, θ = θ_old at every step, so every s_i = 0 and z = 0 under every guard: GIFT's gradient was "
            "GRPO's times a scalar, which gradient clipping and Adam remove (cosine 1; docs/gift-math.md section 12, "
            "tests/unit/algorithms/test_gift_theory.py). It compared the algorithm with itself, and it was removed. "
            "Every arm here takes 4 optimizer steps per rollout batch.", "",
        ]
        return "\n".join(lines)


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def read_manifest(out: str | Path) -> dict:
    path = Path(out) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def load_experiment(out: str | Path, spec: Spec | None = None) -> Experiment:
    """The complete runs of OUT/runs/ARM/seed_S; the spec defaults to the one in OUT/manifest.json."""
    out = Path(out)
    manifest = read_manifest(out)
    if spec is None:
        spec = parse_spec(manifest["spec"]) if "spec" in manifest else load_spec(DEFAULT_SPEC)
    runs: dict[str, list[SeedRun]] = {}
    incomplete: dict[str, list[int]] = {}
    for arm in spec.arms:
        runs[arm.name], incomplete[arm.name] = [], []
        for seed in spec.seeds:
            run_dir = out / "runs" / arm.name / f"seed_{seed}"
            if run_complete(run_dir, spec.max_steps):
                runs[arm.name].append(SeedRun(seed, read_metrics(run_dir), saved_config(run_dir)))
            else:
                incomplete[arm.name].append(seed)
    return Experiment(out, spec, runs, incomplete, manifest)


# --------------------------------------------------------------------------------------------
# Entry points


def write_report(out: str | Path, spec: Spec | None = None, results: str | Path = REPO / "docs" / "results.md",
                 img: str | Path = REPO / "docs" / "img") -> Experiment:
    """Write the plots into ``img`` and the results page to ``results``; returns the experiment."""
    exp = load_experiment(out, spec)
    img, results = Path(img), Path(results)
    images = {"gift_vs_grpo": plot_gift_vs_grpo(exp, img / "gift_vs_grpo.png"),
              "ablations": plot_ablations(exp, img / "ablations.png")}
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(exp.markdown(results, images))
    return exp


def method_table_markdown(out: str | Path, spec: Spec | None = None) -> str:
    """The README's table of OUT, as markdown."""
    return load_experiment(out, spec).method_table()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Write docs/results.md and plots from an experiment's runs.")
    parser.add_argument("out", help="the experiment's output directory (experiments/run.py --out)")
    parser.add_argument("--spec", help="spec YAML (default: the one recorded in OUT/manifest.json)")
    parser.add_argument("--results", default=str(REPO / "docs" / "results.md"), help="markdown page to write")
    parser.add_argument("--img", default=str(REPO / "docs" / "img"), help="directory of the PNGs")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec) if args.spec else None
        exp = write_report(args.out, spec, args.results, args.img)
    except SpecError as err:
        print(f"spec error: {err}", file=sys.stderr)
        return 2
    print(exp.method_table())
    print("\n" + cl.results_table(exp.results()))
    print(f"\nwrote {args.results} and {Path(args.img) / 'gift_vs_grpo.png'}, {Path(args.img) / 'ablations.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
