"""The experiment spec (experiments/cpu_ablations.yaml): what experiments/run.py runs and
experiments/report.py summarizes. :func:`load_spec` checks it and raises :class:`SpecError`
naming the offending key and value.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping

from experiments.claims import ROLES as CLAIM_ROLES

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = REPO / "experiments" / "cpu_ablations.yaml"

RUNNER_KEYS = ("seed", "sft.seed", "data.seed", "trainer.max_steps", "trainer.eval_every", "run_dir")
"""Overrides the runner sets from the spec; arms and recipe_overrides may not set them."""


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
    jobs: int = 2
    sft_seed: int | None = None
    data_seed: int | None = None
    recipe_overrides: list[str] = dataclasses.field(default_factory=list)
    claims: dict[str, str] = dataclasses.field(default_factory=dict)
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
            claims={r: a for r, a in self.claims.items() if a in keep}, smoke=None,
        )

    def to_dict(self) -> dict:
        """The YAML layout again: ``parse_spec(spec.to_dict())`` gives the same spec."""
        return {
            "recipe_overrides": list(self.recipe_overrides), "seeds": list(self.seeds),
            "sft_seed": self.sft_seed, "data_seed": self.data_seed, "max_steps": self.max_steps,
            "eval_every": self.eval_every, "jobs": self.jobs, "smooth": self.smooth,
            "groups": {g.name: {"title": g.title, "setting": g.setting} for g in self.groups},
            "arms": [{k: v for k, v in dataclasses.asdict(a).items() if v is not None} for a in self.arms],
            "claims": dict(self.claims), "smoke": self.smoke,
        }


_SPEC_KEYS = {"recipe_overrides", "seeds", "sft_seed", "data_seed", "max_steps", "eval_every", "jobs", "smooth",
              "groups", "arms", "claims", "smoke"}
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
    for key in ("arms", "groups", "seeds", "max_steps", "eval_every"):
        if key not in raw:
            raise SpecError(f"spec: missing key {key!r}")

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
        jobs=_int(raw.get("jobs", 2), "jobs", 1),
        sft_seed=_opt_int(raw.get("sft_seed"), "sft_seed"), data_seed=_opt_int(raw.get("data_seed"), "data_seed"),
        recipe_overrides=_overrides(raw.get("recipe_overrides"), "recipe_overrides"), claims=dict(claims),
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
