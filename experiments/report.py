#!/usr/bin/env python
"""Summarize a CPU experiment into ``docs/results.md`` and PNG plots.

    python experiments/report.py experiments/out [--spec experiments/cpu_ablations.yaml]
        [--results docs/results.md] [--img docs/img]

Reads ``OUT/runs/ARM/seed_S/metrics.jsonl`` (written by experiments/run.py) and computes, per
arm over seeds: held-out pass@1 at the start, the end and its best, the steps to a target
pass@1, the train-minus-eval gap at the end, and response length and train reward over the
last 10% of steps. The verdicts on the paper's claims compare two arms' means against the seed
noise (:func:`compare`): a difference counts only when it exceeds twice its standard error.

This module also owns the experiment spec (:class:`Spec`, :func:`load_spec`), which run.py
shares, so that both read ``experiments/cpu_ablations.yaml`` the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal, Mapping

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # a source checkout needs no install

from nemo_gift.utils.logger import read_metrics, series  # noqa: E402

DEFAULT_SPEC = REPO / "experiments" / "cpu_ablations.yaml"
MANIFEST = "manifest.json"

EVAL_KEY = "eval/pass@1"
TRAIN_EVAL_KEY = "train/pass@1"
GAP_KEY = "gap/train_minus_eval_pass@1"
REWARD_KEY = "train/reward"
LENGTH_KEY = "train/response_length"

TAIL_FRACTION = 0.1
"""Response length and train reward are averaged over this last share of the rollout steps."""
NOISE_Z = 2.0
"""A difference of means counts as real when it exceeds NOISE_Z standard errors over seeds."""

RUNNER_KEYS = ("seed", "sft.seed", "data.seed", "trainer.max_steps", "trainer.eval_every", "run_dir")
"""Overrides the runner sets from the spec; arms and recipe_overrides may not set them."""
CLAIM_ROLES = ("gift", "grpo", "kl_sum", "kl_average")
"""Arms the verdicts compare: GIFT vs GRPO (convergence, overfitting), kl_sum vs kl_average."""


# --------------------------------------------------------------------------------------------
# The spec


class SpecError(ValueError):
    """The experiment spec is invalid; the message names the key and the value."""


@dataclasses.dataclass
class Arm:
    """One configuration: a recipe plus overrides, run once per seed."""

    name: str
    conf: str
    overrides: list[str] = dataclasses.field(default_factory=list)
    groups: list[str] = dataclasses.field(default_factory=list)
    label: str | None = None
    """Shown in tables instead of the name (and the group's setting)."""


@dataclasses.dataclass
class Group:
    """A comparison table: the arms that list the group, under a title."""

    name: str
    title: str
    setting: str | None = None
    """Format string over the run's config, e.g. ``{gift.std_guard}``: labels arms "gift (std_floor)"."""


@dataclasses.dataclass
class Spec:
    """What experiments/run.py runs and experiments/report.py summarizes (cpu_ablations.yaml)."""

    arms: list[Arm]
    groups: list[Group]
    seeds: list[int]
    max_steps: int
    eval_every: int
    target: float
    jobs: int = 2
    sft_seed: int | None = None
    data_seed: int | None = None
    recipe_overrides: list[str] = dataclasses.field(default_factory=list)
    claims: dict[str, str] = dataclasses.field(default_factory=dict)
    defaults_evidence: list[str] = dataclasses.field(default_factory=list)
    smooth: int = 10
    smoke: dict | None = None

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def group_arms(self, group: str) -> list[Arm]:
        return [a for a in self.arms if group in a.groups]

    def run_overrides(self, arm: Arm, seed: int, max_steps: int | None = None,
                      eval_every: int | None = None) -> list[str]:
        """Hydra overrides of one run: common ones, the arm's, then the runner's seeds and length."""
        out = [*self.recipe_overrides, *arm.overrides, f"seed={seed}"]
        if self.sft_seed is not None:
            out.append(f"sft.seed={self.sft_seed}")
        if self.data_seed is not None:
            out.append(f"data.seed={self.data_seed}")
        out.append(f"trainer.max_steps={self.max_steps if max_steps is None else max_steps}")
        out.append(f"trainer.eval_every={self.eval_every if eval_every is None else eval_every}")
        return out

    def smoke_spec(self) -> Spec:
        """The ``smoke:`` variant: fewer arms, seeds and steps, plus its overrides."""
        s = self.smoke or {}
        keep = set(s.get("arms") or [a.name for a in self.arms])
        # A group is kept while it still compares two arms (or all of its own).
        kept = lambda g: [a for a in self.group_arms(g.name) if a.name in keep]  # noqa: E731
        groups = [g for g in self.groups if len(kept(g)) >= min(2, len(self.group_arms(g.name)))]
        names = {g.name for g in groups}
        arms = [dataclasses.replace(a, groups=[g for g in a.groups if g in names]) for a in self.arms if a.name in keep]
        return dataclasses.replace(
            self, arms=arms, groups=groups, seeds=list(s.get("seeds") or self.seeds),
            max_steps=s.get("max_steps", self.max_steps), eval_every=s.get("eval_every", self.eval_every),
            recipe_overrides=[*self.recipe_overrides, *(s.get("overrides") or [])],
            claims={r: a for r, a in self.claims.items() if a in keep},
            defaults_evidence=[g for g in self.defaults_evidence if g in names], smoke=None,
        )

    def to_dict(self) -> dict:
        """The YAML layout again: ``parse_spec(spec.to_dict())`` gives the same spec."""
        return {
            "recipe_overrides": list(self.recipe_overrides), "seeds": list(self.seeds),
            "sft_seed": self.sft_seed, "data_seed": self.data_seed, "max_steps": self.max_steps,
            "eval_every": self.eval_every, "target_pass@1": self.target, "jobs": self.jobs, "smooth": self.smooth,
            "groups": {g.name: {"title": g.title, "setting": g.setting} for g in self.groups},
            "arms": [{k: v for k, v in dataclasses.asdict(a).items() if v is not None} for a in self.arms],
            "claims": dict(self.claims), "defaults_evidence": list(self.defaults_evidence), "smoke": self.smoke,
        }


_SPEC_KEYS = {"recipe_overrides", "seeds", "sft_seed", "data_seed", "max_steps", "eval_every", "target_pass@1",
              "jobs", "smooth", "groups", "arms", "claims", "defaults_evidence", "smoke"}
_ARM_KEYS = {"name", "conf", "overrides", "groups", "label"}
_SMOKE_KEYS = {"seeds", "max_steps", "eval_every", "arms", "overrides"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # arm names become directory names


def _fail(key: str, value: Any, why: str):
    raise SpecError(f"spec {key}={value!r}: {why}")


def _unknown(raw: Mapping, known: set[str], where: str) -> None:
    for key in raw:
        if key not in known:
            raise SpecError(f"spec {where}: unknown key {key!r}; known: {sorted(known)}")


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(key, value, f"must be an integer >= {minimum}")
    return value


def _opt_int(value: Any, key: str) -> int | None:
    return None if value is None else _int(value, key, 0)


def _seeds(value: Any, key: str) -> list[int]:
    if not isinstance(value, list) or not value:
        _fail(key, value, "must be a non-empty list of integers >= 1")
    for i, seed in enumerate(value):
        _int(seed, f"{key}[{i}]", 1)
    if len(set(value)) != len(value):
        _fail(key, value, "has a seed twice")
    return list(value)


def _overrides(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        _fail(key, value, "must be a list of key=value strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or "=" not in item:
            _fail(f"{key}[{i}]", item, "must be a key=value string")
        name = item.split("=", 1)[0].lstrip("+~")
        if name in RUNNER_KEYS:
            _fail(f"{key}[{i}]", item, f"{name} is set by the runner from the spec ({', '.join(RUNNER_KEYS)})")
    return list(value)


def _names(value: Any, key: str, known: list[str], what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        _fail(key, value, f"must be a list of {what} names")
    for i, name in enumerate(value):
        if name not in known:
            _fail(f"{key}[{i}]", name, f"is not a known {what} ({', '.join(known)})")
    return list(value)


def parse_spec(raw: Any) -> Spec:
    """A checked :class:`Spec` from the YAML mapping; raises :class:`SpecError` naming the key."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"spec: expected a mapping at the top level, got {type(raw).__name__}")
    _unknown(raw, _SPEC_KEYS, "top level")
    for key in ("arms", "groups", "seeds", "max_steps", "eval_every", "target_pass@1"):
        if key not in raw:
            raise SpecError(f"spec: missing key {key!r}")
    target = raw["target_pass@1"]
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target <= 1:
        _fail("target_pass@1", target, "must be a number in [0, 1]")

    if not isinstance(raw["groups"], Mapping) or not raw["groups"]:
        _fail("groups", raw["groups"], "must be a non-empty mapping of group name -> {title, setting}")
    groups = []
    for name, body in raw["groups"].items():
        body = {"title": body} if isinstance(body, str) else body
        if not isinstance(body, Mapping):
            _fail(f"groups.{name}", body, "must be a title or a mapping {title, setting}")
        _unknown(body, {"title", "setting"}, f"groups.{name}")
        if not isinstance(body.get("title"), str) or not body["title"]:
            _fail(f"groups.{name}.title", body.get("title"), "must be a non-empty string")
        setting = body.get("setting")
        if setting is not None and not isinstance(setting, str):
            _fail(f"groups.{name}.setting", setting, "must be a format string such as '{gift.std_guard}'")
        groups.append(Group(str(name), body["title"], setting))
    group_names = [g.name for g in groups]

    if not isinstance(raw["arms"], list) or not raw["arms"]:
        _fail("arms", raw["arms"], "must be a non-empty list of {name, conf, overrides, groups}")
    arms: list[Arm] = []
    for i, body in enumerate(raw["arms"]):
        key = f"arms[{i}]"
        if not isinstance(body, Mapping):
            _fail(key, body, "must be a mapping {name, conf, overrides, groups}")
        _unknown(body, _ARM_KEYS, key)
        name = body.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            _fail(f"{key}.name", name, "must be a name of letters, digits, '_', '.' or '-'")
        if name in {a.name for a in arms}:
            _fail(f"{key}.name", name, "is a duplicate arm name")
        if not isinstance(body.get("conf"), str) or not body["conf"]:
            _fail(f"{key}.conf", body.get("conf"), "must be a recipe name in conf/ (e.g. gift_tiny)")
        label = body.get("label")
        if label is not None and not isinstance(label, str):
            _fail(f"{key}.label", label, "must be a string")
        arms.append(Arm(name, body["conf"], _overrides(body.get("overrides"), f"{key}.overrides"),
                        _names(body.get("groups"), f"{key}.groups", group_names, "group"), label))
    arm_names = [a.name for a in arms]
    for g in groups:
        if not any(g.name in a.groups for a in arms):
            _fail(f"groups.{g.name}", g.title, "no arm lists this group")

    claims = raw.get("claims") or {}
    if not isinstance(claims, Mapping):
        _fail("claims", claims, f"must be a mapping of role ({', '.join(CLAIM_ROLES)}) -> arm name")
    for role, arm in claims.items():
        if role not in CLAIM_ROLES:
            _fail(f"claims.{role}", arm, f"{role!r} is not a claim role ({', '.join(CLAIM_ROLES)})")
        if arm not in arm_names:
            _fail(f"claims.{role}", arm, f"is not an arm ({', '.join(arm_names)})")

    smoke = raw.get("smoke")
    if smoke is not None:
        if not isinstance(smoke, Mapping):
            _fail("smoke", smoke, "must be a mapping {seeds, max_steps, eval_every, arms, overrides}")
        _unknown(smoke, _SMOKE_KEYS, "smoke")
        if "seeds" in smoke:
            _seeds(smoke["seeds"], "smoke.seeds")
        for key in ("max_steps", "eval_every"):
            if key in smoke:
                _int(smoke[key], f"smoke.{key}", 1)
        _names(smoke.get("arms"), "smoke.arms", arm_names, "arm")
        _overrides(smoke.get("overrides"), "smoke.overrides")
        smoke = dict(smoke)

    return Spec(
        arms=arms, groups=groups, seeds=_seeds(raw["seeds"], "seeds"),
        max_steps=_int(raw["max_steps"], "max_steps", 1), eval_every=_int(raw["eval_every"], "eval_every", 1),
        target=float(target), jobs=_int(raw.get("jobs", 2), "jobs", 1),
        sft_seed=_opt_int(raw.get("sft_seed"), "sft_seed"), data_seed=_opt_int(raw.get("data_seed"), "data_seed"),
        recipe_overrides=_overrides(raw.get("recipe_overrides"), "recipe_overrides"), claims=dict(claims),
        defaults_evidence=_names(raw.get("defaults_evidence"), "defaults_evidence", group_names, "group"),
        smooth=_int(raw.get("smooth", 10), "smooth", 1), smoke=smoke,
    )


def load_spec(path: str | Path = DEFAULT_SPEC) -> Spec:
    """Read and check a spec YAML file."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SpecError(f"{path}: {err}") from err
    try:
        return parse_spec(raw)
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from err


# --------------------------------------------------------------------------------------------
# Per-seed metrics


def last_step(records: list[dict]) -> int:
    return int(records[-1]["step"]) if records else -1


def run_complete(run_dir: str | Path, max_steps: int) -> bool:
    """True when the run logged its final step, evaluation included (the runner then skips it)."""
    try:
        records = read_metrics(run_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return bool(records) and records[-1]["step"] >= max_steps and EVAL_KEY in records[-1]


def start_eval(records: list[dict]) -> float | None:
    """Held-out pass@1 before RL (step 0)."""
    return next((r[EVAL_KEY] for r in records if r["step"] == 0 and EVAL_KEY in r), None)


def final_eval(records: list[dict]) -> float:
    return series(records, EVAL_KEY)[1][-1]


def best_eval(records: list[dict]) -> float:
    return max(series(records, EVAL_KEY)[1])


def steps_to_target(records: list[dict], target: float) -> int | None:
    """The first evaluated step with held-out pass@1 >= target; None if it never got there."""
    return next((s for s, v in zip(*series(records, EVAL_KEY)) if v >= target), None)


def final_gap(records: list[dict]) -> float | None:
    """Train-minus-held-out pass@1 at the last evaluation (positive: it fits its training prompts better)."""
    row = [r for r in records if EVAL_KEY in r][-1]
    if GAP_KEY in row:
        return row[GAP_KEY]
    return row[TRAIN_EVAL_KEY] - row[EVAL_KEY] if TRAIN_EVAL_KEY in row else None


def tail_mean(records: list[dict], key: str, fraction: float = TAIL_FRACTION) -> float | None:
    """Mean of ``key`` over the last ``fraction`` of the steps that logged it (at least one)."""
    values = series(records, key)[1]
    if not values:
        return None
    k = max(1, math.ceil(fraction * len(values)))
    return sum(values[-k:]) / k


# --------------------------------------------------------------------------------------------
# Over seeds


@dataclasses.dataclass(frozen=True)
class Stat:
    """Values over seeds: mean and sample standard deviation (ddof=1; None with one seed)."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values) -> Stat:
        return cls(tuple(float(v) for v in values if v is not None))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / self.n if self.n else None

    @property
    def std(self) -> float | None:
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    def fmt(self, digits: int = 3) -> str:
        if not self.n:
            return "n/a"
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Arm a minus arm b, and the seed noise it is judged against."""

    diff: float
    noise: float | None
    """NOISE_Z standard errors of the difference, sqrt(s_a^2/n_a + s_b^2/n_b); None below 2 seeds."""

    @property
    def beyond_noise(self) -> bool:
        return self.noise is not None and abs(self.diff) > self.noise

    def noise_text(self, digits: int = 3) -> str:
        return "no noise estimate" if self.noise is None else f"{NOISE_Z:g}·SE = {self.noise:.{digits}f}"


def compare(a: Stat, b: Stat) -> Comparison:
    """Difference of means with the standard error of that difference over seeds."""
    if a.n < 2 or b.n < 2:
        return Comparison(a.mean - b.mean, None)
    se = math.sqrt(a.std**2 / a.n + b.std**2 / b.n)
    return Comparison(a.mean - b.mean, NOISE_Z * se)


def verdict(c: Comparison, holds_if: Literal["higher", "lower"]) -> str:
    """Plain-worded outcome of a claim that arm a is higher (or lower) than arm b."""
    if c.noise is None:
        return "inconclusive (fewer than 2 seeds per arm: no noise estimate)"
    if not c.beyond_noise:
        return "inconclusive (difference within seed noise)"
    return "held" if (c.diff > 0) == (holds_if == "higher") else "did not hold"


@dataclasses.dataclass
class SeedRun:
    seed: int
    records: list[dict]
    config: dict | None = None
    """The run's resolved config (RUN_DIR/config.yaml), if present."""


@dataclasses.dataclass
class ArmSummary:
    """One arm over its complete seeds."""

    name: str
    seeds: list[int]
    start: Stat
    final: Stat
    best: Stat
    gap: Stat
    length: Stat
    reward: Stat
    steps: list[int | None]
    """Per seed: steps to the target (None: never reached)."""
    last_step: int

    @property
    def reached(self) -> int:
        return sum(s is not None for s in self.steps)

    @property
    def steps_censored(self) -> Stat:
        """Steps to target, a seed that never reached it counted as the run's length (a lower bound)."""
        return Stat.of(self.last_step if s is None else s for s in self.steps)

    def steps_text(self) -> str:
        reached = sorted(s for s in self.steps if s is not None)
        if not reached:
            return f"n/a (0/{len(self.steps)})"
        mid = len(reached) // 2
        median = reached[mid] if len(reached) % 2 else (reached[mid - 1] + reached[mid]) / 2
        return f"{median:g} ({len(reached)}/{len(self.steps)})"


def summarize(name: str, runs: list[SeedRun], target: float) -> ArmSummary:
    """Per-seed metrics of complete runs, gathered over seeds."""
    recs = [r.records for r in runs]
    return ArmSummary(
        name=name, seeds=[r.seed for r in runs], start=Stat.of(start_eval(r) for r in recs),
        final=Stat.of(final_eval(r) for r in recs), best=Stat.of(best_eval(r) for r in recs),
        gap=Stat.of(final_gap(r) for r in recs), length=Stat.of(tail_mean(r, LENGTH_KEY) for r in recs),
        reward=Stat.of(tail_mean(r, REWARD_KEY) for r in recs), steps=[steps_to_target(r, target) for r in recs],
        last_step=max(last_step(r) for r in recs),
    )


def mean_curve(runs: list[SeedRun], key: str, smooth: int = 1) -> tuple[list[int], list[float], list[float]]:
    """(steps, mean, std) over seeds at the steps every run logged; each run's series is first
    smoothed by a trailing moving average of ``smooth`` points."""
    per_run = []
    for run in runs:
        steps, values = series(run.records, key)
        smoothed = [sum(values[max(0, i - smooth + 1): i + 1]) / len(values[max(0, i - smooth + 1): i + 1])
                    for i in range(len(values))]
        per_run.append(dict(zip(steps, smoothed)))
    if not per_run:
        return [], [], []
    common = sorted(set.intersection(*(set(p) for p in per_run)))
    means, stds = [], []
    for step in common:
        stat = Stat.of(p[step] for p in per_run)
        means.append(stat.mean)
        stds.append(stat.std or 0.0)
    return common, means, stds


# --------------------------------------------------------------------------------------------
# The experiment's results


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


def saved_config(run_dir: Path) -> dict | None:
    """The config.yaml the launcher wrote into ``run_dir`` (None before it ran)."""
    import yaml

    path = run_dir / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


@dataclasses.dataclass
class Experiment:
    """The runs of OUT for a spec: complete runs per arm, their summaries, the manifest."""

    out: Path
    spec: Spec
    runs: dict[str, list[SeedRun]]
    incomplete: dict[str, list[int]]
    """Seeds per arm without a finished run (missing, partial or failed): left out of every number."""
    manifest: dict

    @functools.cached_property
    def summaries(self) -> dict[str, ArmSummary]:
        return {a: summarize(a, r, self.spec.target) for a, r in self.runs.items() if r}

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

    def budget(self, arm_name: str) -> str:
        c = self.config(arm_name)
        return f"{c['trainer']['prompts_per_step']}×{c['rollout']['group_size']}" if c else "?"

    def table(self, arm_names: list[str], group: Group | None = None) -> str:
        """Markdown table, one row per arm (arms without a complete run say so)."""
        summaries = self.summaries
        header = ["arm", "B×G", "start", "final eval pass@1", "best eval pass@1",
                  f"steps to ≥ {self.spec.target:g}", "train−eval gap", "response length", "train reward", "seeds"]
        rows = []
        for name in arm_names:
            s = summaries.get(name)
            seeds = f"{s.final.n if s else 0}/{len(self.spec.seeds)}"
            if s is None:
                rows.append([self.label(name, group), self.budget(name), "not run", "", "", "", "", "", "", seeds])
                continue
            rows.append([self.label(name, group), self.budget(name), s.start.fmt(), f"**{s.final.fmt()}**",
                         s.best.fmt(), s.steps_text(), s.gap.fmt(), s.length.fmt(2), s.reward.fmt(), seeds])
        return _md_table(header, rows)

    def method_table(self) -> str:
        """GIFT vs GRPO, ready to paste into the README."""
        group = next((g for g in self.spec.groups if g.name == "method"), None)
        names = [self.spec.claims[r] for r in ("gift", "grpo") if r in self.spec.claims]
        if not names and group is not None:
            names = [a.name for a in self.spec.group_arms(group.name)]
        return self.table(names, group)

    def claims(self) -> list[str]:
        """One plainly-worded verdict per claim, with its numbers."""
        s, c, t = self.summaries, self.spec.claims, self.spec.target

        def missing(*roles: str) -> str | None:
            for role in roles:
                if role not in c:
                    return f"not measured (this experiment has no `{role}` arm)"
                if c[role] not in s:
                    return f"not measured (arm `{c[role]}` has no complete run)"
            return None

        out = []
        head = f"**Faster convergence** (GIFT reaches eval pass@1 ≥ {t:g} in fewer steps than GRPO)"
        why = missing("gift", "grpo")
        if why:
            out.append(f"{head}: {why}.")
        else:
            a, b = s[c["gift"]], s[c["grpo"]]
            if not a.reached and not b.reached:
                out.append(f"{head}: inconclusive (neither reached the target within {max(a.last_step, b.last_step)} "
                           f"steps; final eval pass@1 GIFT {a.final.fmt()}, GRPO {b.final.fmt()}).")
            else:
                cmp = compare(a.steps_censored, b.steps_censored)
                out.append(
                    f"{head}: {verdict(cmp, 'lower')}. Steps to target, median (seeds that reached it): "
                    f"GIFT {a.steps_text()}, GRPO {b.steps_text()}; difference of means {cmp.diff:+.1f} steps "
                    f"({cmp.noise_text(1)}). A seed that never reached the target counts as its run's length, "
                    "which flatters the slower arm."
                )
        def simple(head: str, roles: tuple[str, str], names: tuple[str, str], what: str, field: str, better: str):
            why = missing(*roles)
            if why:
                return f"{head}: {why}."
            a, b = (getattr(s[c[r]], field) for r in roles)
            cmp = compare(a, b)
            return (f"{head}: {verdict(cmp, better)}. {what} {names[0]} {a.fmt()}, {names[1]} {b.fmt()}; "
                    f"difference {cmp.diff:+.3f} ({cmp.noise_text()}).")

        out.append(simple("**Less overfitting** (GIFT's final train-minus-eval pass@1 gap is smaller than GRPO's)",
                          ("gift", "grpo"), ("GIFT", "GRPO"), "Gap", "gap", "lower"))
        out.append(simple("**kl_sum beats kl_average** (higher final eval pass@1)", ("kl_sum", "kl_average"),
                          ("kl_sum", "kl_average"), "Final eval pass@1", "final", "higher"))
        return out

    def defaults_evidence(self) -> list[str]:
        """Per group of ``defaults_evidence``: its arms ranked by final eval pass@1, with the noise test."""
        summaries, lines = self.summaries, []
        base = self.spec.claims.get("gift")
        for group in (g for g in self.spec.groups if g.name in self.spec.defaults_evidence):
            ranked = sorted((summaries[a.name] for a in self.spec.group_arms(group.name) if a.name in summaries),
                            key=lambda x: -x.final.mean)
            lines.append(f"**{group.title}** (ranked by final eval pass@1):")
            lines.append("")
            if not ranked:
                lines += ["No complete runs.", ""]
                continue
            lines += [f"{i}. {self.label(x.name, group)}: {x.final.fmt()}" for i, x in enumerate(ranked, 1)]
            lines.append("")
            if len(ranked) >= 2:
                cmp = compare(ranked[0].final, ranked[1].final)
                top, second = self.label(ranked[0].name, group), self.label(ranked[1].name, group)
                if cmp.beyond_noise:
                    sentence = (f"{top} is best, ahead of {second} by {cmp.diff:+.3f}, beyond seed noise "
                                f"({cmp.noise_text()}).")
                elif cmp.noise is None:
                    sentence = (f"Inconclusive: the top two differ by {cmp.diff:+.3f} with no noise estimate "
                                "(fewer than 2 seeds).")
                else:
                    sentence = (f"No option is clearly best: the top two differ by {cmp.diff:+.3f}, "
                                f"within seed noise ({cmp.noise_text()}).")
                if base in [x.name for x in ranked]:
                    rank = [x.name for x in ranked].index(base) + 1
                    sentence += f" The recipe's setting, {self.label(base, group)}, ranks {rank} of {len(ranked)}."
                lines += [sentence, ""]
        return lines

    def runtime_text(self) -> str:
        m = self.manifest
        if not m:
            return "unknown (no manifest.json in the output directory)"
        wall = sum(i.get("wall_s", 0.0) for i in m.get("invocations", []))
        runs = [r for r in m.get("runs", {}).values() if r.get("wall_s") is not None]
        text = (f"{wall / 60:.1f} min wall time over {len(m.get('invocations', []))} invocation(s) on a "
                f"{m.get('cpu_count', '?')}-core machine with {m.get('jobs', '?')} runs in parallel")
        if runs:
            total = sum(r["wall_s"] for r in runs) / 60
            text += f"; the {len(runs)} runs took {total:.1f} min in total (sum of run times)"
        return text

    def settings(self) -> list[str]:
        spec, config = self.spec, self.config(self.spec.claims.get("gift", self.spec.arms[0].name))
        every = "every step" if spec.eval_every == 1 else f"every {spec.eval_every} steps"
        lines = [f"- Rollout steps per run: {spec.max_steps}; held-out evaluation at step 0 (before RL), {every} "
                 "and at the end."]
        if config:
            d, a = config["data"], config["data"]["arithmetic"]
            b, g = config["trainer"]["prompts_per_step"], config["rollout"]["group_size"]
            lines.append(f"- Task: `{d['dataset']}`, {a['min_digits']}-{a['max_digits']} digits, operators "
                         f"{' '.join(a['operators'])}; greedy pass@1 on {d['eval_size']} held-out prompts "
                         f"(`eval/pass@1`) and {d['eval_size']} training prompts (`train/pass@1`).")
            lines.append(f"- Rollout budget: B × G = {b} × {g} = {b * g} responses per step in every arm "
                         "(the B×G column); the group-size arms trade B for G at that budget.")
        seeds = f"- Seeds: {', '.join(map(str, spec.seeds))} (`seed`: rollouts and RL updates)"
        shared = []
        if spec.sft_seed is not None:
            shared.append(f"the warm start `sft.seed={spec.sft_seed}`")
        if spec.data_seed is not None:
            shared.append(f"the prompt pools and held-out set `data.seed={spec.data_seed}`")
        if shared:
            seeds += "; every run shares " + " and ".join(shared)
        if len(shared) < 2:
            seeds += "; what no shared seed fixes follows `seed`"
        lines.append(seeds + ".")
        recipes = sorted({a.conf for a in spec.arms})
        lines.append(f"- Recipes: {', '.join(f'`{r}`' for r in recipes)}; common overrides: "
                     f"{', '.join(f'`{o}`' for o in spec.recipe_overrides) or 'none'}.")
        lines.append(f"- Target for steps-to-target: eval pass@1 ≥ {spec.target:g}.")
        lines.append(f"- Noise rule: a difference of two arms' means counts only when it exceeds {NOISE_Z:g} "
                     "standard errors, sqrt(s_a²/n_a + s_b²/n_b) with sample standard deviations over seeds; "
                     "otherwise the verdict is *inconclusive*.")
        return lines

    def markdown(self, results_path: Path, images: dict[str, Path]) -> str:
        """The whole results page; image links are relative to ``results_path``."""
        spec, m = self.spec, self.manifest
        rel = {k: Path(os.path.relpath(v, results_path.parent)).as_posix() for k, v in images.items()}
        command = m.get("command") or f"python experiments/run.py --out {self.out}"
        commit = m.get("git_commit")
        lines = [
            "# CPU experiment: GIFT vs GRPO, with ablations", "",
            "This file is generated by `experiments/report.py` from the runs in "
            f"`{_display(self.out)}`; hand edits are lost when it is regenerated. Numbers are "
            "mean ± sample standard deviation over seeds.", "",
            f"Reproduce: `{command}`", "",
            f"Runtime: {self.runtime_text()}." + (f" Code: commit `{commit[:12]}{'+dirty' if commit.endswith('+dirty') else ''}`." if commit else ""), "",
            "## Settings", "", *self.settings(), "",
        ]
        missing = {a: s for a, s in self.incomplete.items() if s}
        if missing:
            left = "; ".join(f"{a}: seeds {', '.join(map(str, s))}" for a, s in missing.items())
            lines += [f"Left out (no finished run): {left}.", ""]
        lines += ["## GIFT vs GRPO", "", self.method_table(), ""]
        if "gift_vs_grpo" in rel:
            lines += [f"![GIFT vs GRPO]({rel['gift_vs_grpo']})", ""]
        lines += ["## Which of the paper's claims held on this task", ""]
        lines += [f"{i}. {text}" for i, text in enumerate(self.claims(), 1)] + [""]
        if spec.defaults_evidence:
            lines += ["## Evidence for the defaults", "", *self.defaults_evidence()]
        lines += ["## Ablations", ""]
        for group in (g for g in spec.groups if g.name != "method"):  # "method" is the table above
            lines += [f"### {group.title}", "", self.table([a.name for a in spec.group_arms(group.name)], group), ""]
        if "ablations" in rel:
            lines += [f"![Ablations: held-out pass@1 per group]({rel['ablations']})", ""]
        lines += ["## All arms", "", self.table([a.name for a in spec.arms]), ""]
        lines += [
            "## Columns", "",
            "- start: held-out greedy pass@1 at step 0, after the warm start and before RL.",
            "- final / best eval pass@1: held-out greedy pass@1 at the last step / its best over evaluations.",
            f"- steps to ≥ {spec.target:g}: median over the seeds that reached it (the first evaluated step with "
            "eval pass@1 at or above the target), and how many seeds did.",
            "- train−eval gap: greedy pass@1 on training prompts minus held-out, at the last evaluation.",
            f"- response length, train reward: mean over the last {TAIL_FRACTION:.0%} of rollout steps "
            "(sampled responses, tokens).",
            "",
        ]
        return "\n".join(lines)


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


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
# Plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(ax, runs: list[SeedRun], key: str, label: str, smooth: int = 1) -> None:
    steps, mean, std = mean_curve(runs, key, smooth)
    if not steps:
        return
    (line,) = ax.plot(steps, mean, marker="o" if len(steps) < 20 else None, ms=3, label=f"{label} (n={len(runs)})")
    ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                    color=line.get_color(), alpha=0.2)


def plot_gift_vs_grpo(exp: Experiment, out: str | Path) -> Path:
    """Held-out pass@1 and smoothed train reward vs step: mean over seeds, shaded ± std."""
    plt = _pyplot()
    names = [exp.spec.claims[r] for r in ("gift", "grpo") if r in exp.spec.claims]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in names:
        runs = exp.runs.get(name, [])
        _band(axes[0], runs, EVAL_KEY, name)
        _band(axes[1], runs, REWARD_KEY, name, smooth=exp.spec.smooth)
    axes[0].axhline(exp.spec.target, color="grey", ls="--", lw=0.8, label=f"target {exp.spec.target:g}")
    axes[0].set_title("held-out greedy pass@1 (eval/pass@1)")
    axes[1].set_title(f"train reward (moving average of {exp.spec.smooth} steps)")
    for ax in axes:
        ax.set_xlabel("rollout step")
        ax.grid(alpha=0.3)
        _legend(ax, 8)
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
            steps, mean, _ = mean_curve(exp.runs.get(arm.name, []), EVAL_KEY)
            if steps:
                ax.plot(steps, mean, marker="o" if len(steps) < 20 else None, ms=3, label=exp.label(arm.name, group))
        ax.axhline(exp.spec.target, color="grey", ls="--", lw=0.8)
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
    """The GIFT vs GRPO table of OUT, as markdown (for the README headline)."""
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
    print(f"\nwrote {args.results} and {Path(args.img) / 'gift_vs_grpo.png'}, {Path(args.img) / 'ablations.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
