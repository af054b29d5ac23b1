#!/usr/bin/env python
"""Run the CPU experiment: every arm of a spec over its seeds, then write the report.

    python experiments/run.py [--spec experiments/cpu_ablations.yaml] [--out experiments/out]
        [--jobs N] [--smoke] [--only ARM ...] [--report-only] [--results PATH] [--img DIR]

1. check: the spec, then every run's composed config (nemo_gift.launcher.main.load), and that
   all arms sample the same B*G responses per step; nothing starts if one fails.
2. warm start: one short run per distinct supervised warm start, one after another, so that
   the parallel runs find OUT/sft_cache filled instead of racing to write it.
3. run: each (arm, seed) is ``launcher/run.py`` in a subprocess, ``jobs`` at a time, logging to
   OUT/runs/ARM/seed_S.log. A run that already logged its last step (with the same config and
   the same prompt sets, OUT/runs/ARM/seed_S.prompts) is skipped, so rerunning resumes; a partial
   one is rerun and continues from its checkpoint; one made with another config or other prompt
   sets (e.g. by older code) is rerun from scratch.
4. report: experiments/report.py writes docs/results.md and docs/img/*.png (``--smoke``:
   OUT/results.md and OUT/img/). OUT/manifest.json records the spec, commit and run times.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a source checkout needs no install

from experiments import report  # noqa: E402
from experiments.spec import Arm, Spec, SpecError  # noqa: E402

REPO = report.REPO
LAUNCHER = REPO / "launcher" / "run.py"
QUIET = ["logging.progress_bar=false", "logging.plots=false", "logging.tensorboard=false"]


@dataclasses.dataclass
class RunPlan:
    """One (arm, seed) run: its launcher overrides and the config they compose to."""

    arm: Arm
    seed: int
    run_dir: Path
    overrides: list[str]
    config: dict
    warm_start_key: str | None = None
    """nemo_gift.train.sft_cache_key of the run; None when it has no cached warm start."""
    prompt_sets: str | None = None
    """:func:`prompt_sets_digest` of the run; None when not computed (datasets other than arithmetic)."""

    @property
    def key(self) -> str:
        return f"{self.arm.name}/seed_{self.seed}"

    @property
    def log(self) -> Path:
        return self.run_dir.parent / f"{self.run_dir.name}.log"

    @property
    def prompts_file(self) -> Path:
        """Where the runner records the prompt sets' digest the run was made with."""
        return self.run_dir.parent / f"{self.run_dir.name}.prompts"

    def command(self) -> list[str]:
        return [sys.executable, str(LAUNCHER), f"conf={self.arm.conf}", *self.overrides]


def compose(conf: str, overrides: list[str]) -> tuple[dict, str | None, str | None]:
    """The validated config as a plain dict, its warm start's cache key (None without one) and
    its :func:`prompt_sets_digest`; raises ConfigError naming the key."""
    from nemo_gift.utils.convert import to_dict
    from nemo_gift.launcher.main import load
    from nemo_gift.train import sft_cache_key

    cfg = load(conf, overrides)
    key = sft_cache_key(cfg, cfg.cluster.world_size) if cfg.sft.steps and cfg.sft.cache_dir else None
    return to_dict(cfg), key, prompt_sets_digest(cfg)


def prompt_sets_digest(cfg) -> str | None:
    """sha256 (16 hex digits) of the prompts and keys of every set the run trains and scores on
    (RL, held-out, train-eval and the extra sets such as the wrong-key slice), as
    nemo_gift.data.task.build_task builds them; None for datasets other than the synthetic arithmetic.
    Code that changes a set (a new wrong key) changes it while the config stays the same."""
    from nemo_gift.data.task import build_task
    from nemo_gift.train import task_spec

    if cfg.data.dataset != "arithmetic":
        return None
    task = build_task(task_spec(cfg))
    sets = {"train": task.train_records, "eval": task.eval_records, "train_eval": task.train_eval_records,
            **{f"extra/{k}": v for k, v in sorted(task.extra_eval_records.items())}}
    blob = json.dumps({k: [[r.prompt, r.ground_truth] for r in v] for k, v in sets.items()})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_runs(spec: Spec, out: Path, only: list[str] | None = None) -> list[RunPlan]:
    """Compose and validate every run, seed-major (an early stop leaves whole seeds done)."""
    from nemo_gift.utils.convert import ConfigError

    arms = [a for a in spec.arms if not only or a.name in only]
    cache = out / "sft_cache"
    plans = []
    for seed in spec.seeds:
        for arm in arms:
            run_dir = out / "runs" / arm.name / f"seed_{seed}"
            overrides = [*spec.run_overrides(arm, seed), f"sft.cache_dir={cache}", f"run_dir={run_dir}", *QUIET]
            try:
                config, key, prompt_sets = compose(arm.conf, overrides)
            except ConfigError as err:
                raise SpecError(f"arm {arm.name!r} (conf={arm.conf}, seed={seed}): {err}") from err
            plans.append(RunPlan(arm, seed, run_dir, overrides, config, key, prompt_sets))
    _check_plans(spec, plans)
    return plans


def _check_plans(spec: Spec, plans: list[RunPlan]) -> None:
    """Matched rollout budget, and group settings that resolve in every arm's config."""
    budgets = {}
    for p in plans:
        budgets.setdefault(p.arm.name, p.config["trainer"]["prompts_per_step"] * p.config["rollout"]["group_size"])
    if len(set(budgets.values())) > 1:
        listed = ", ".join(f"{a}: {b}" for a, b in budgets.items())
        raise SpecError(f"arms must sample the same B*G responses per step (trainer.prompts_per_step * "
                        f"rollout.group_size); got {listed}")
    for group in spec.groups:
        for p in plans:
            if group.setting and group.name in p.arm.groups:
                try:
                    report.format_setting(group.setting, p.config)
                except (KeyError, AttributeError, IndexError, ValueError) as err:
                    raise SpecError(f"spec groups.{group.name}.setting={group.setting!r}: no {err} in the config "
                                    f"of arm {p.arm.name!r}") from err


def _saved_config_matches(plan: RunPlan) -> bool:
    """Whether the run in plan.run_dir was made with this config (its paths aside) and, when the
    plan has a prompt-sets digest, with those prompt sets (a run without a recorded digest was not)."""
    saved = report.saved_config(plan.run_dir)
    if saved is None:
        return True
    if plan.prompt_sets is not None and (
            not plan.prompts_file.is_file() or plan.prompts_file.read_text().strip() != plan.prompt_sets):
        return False
    def strip(config: dict) -> dict:
        return {**config, "run_dir": None, "sft": {**config.get("sft", {}), "cache_dir": None}}

    return strip(saved) == strip(json.loads(json.dumps(plan.config)))


def _env(jobs: int | None) -> dict:
    """The environment of a run that shares the machine with ``jobs - 1`` others (None: alone)."""
    env = dict(os.environ)
    if jobs is not None:
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)  # nemo_gift.train honours it
    return env


def _launch(cmd: list[str], log: Path, env: dict) -> tuple[int, float, float]:
    """Run ``cmd`` logging to ``log``; returns (exit code, wall seconds, CPU seconds). The CPU time
    (user + system) is that of the child and every descendant it waited for (os.wait4), so it is
    this run's alone even while other runs share the machine."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w") as f:
        f.write(shlex.join(cmd) + "\n\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.monotonic() - start, usage.ru_utime + usage.ru_stime


def warm_start(spec: Spec, plans: list[RunPlan], out: Path) -> list[dict]:
    """One 1-step run per distinct warm start that a pending run needs, sequentially, all cores."""
    firsts: dict[str, RunPlan] = {}
    for p in plans:
        if p.warm_start_key is not None:
            firsts.setdefault(p.warm_start_key, p)
    records = []
    for p in firsts.values():
        run_dir = out / "warm_start" / f"{p.arm.name}_seed_{p.seed}"
        overrides = [*spec.run_overrides(p.arm, p.seed, max_steps=1, eval_every=0),
                     f"sft.cache_dir={out / 'sft_cache'}", f"run_dir={run_dir}", "checkpoint.resume=never", *QUIET]
        cmd = [sys.executable, str(LAUNCHER), f"conf={p.arm.conf}", *overrides]
        rc, wall, cpu = _launch(cmd, run_dir.parent / f"{run_dir.name}.log", _env(None))
        print(f"warm start ({p.arm.conf}, seed {p.seed}): {'ok' if rc == 0 else f'FAILED (exit {rc})'}, "
              f"{wall:.0f} s wall, {cpu:.0f} s CPU")
        records.append({"run": p.key, "returncode": rc, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)})
        if rc != 0:
            raise RuntimeError(f"warm start failed (exit {rc}); log: {run_dir.parent / (run_dir.name + '.log')}")
    return records


def run_one(plan: RunPlan, max_steps: int, env: dict) -> dict:
    """Run (or skip) one (arm, seed); returns its manifest entry."""
    entry = {"arm": plan.arm.name, "seed": plan.seed, "log": str(plan.log)}
    if not _saved_config_matches(plan):
        shutil.rmtree(plan.run_dir)  # made with another spec or other prompts: its numbers would not be this arm's
        entry["note"] = "config or prompt sets changed: rerun from scratch"
    elif report.run_complete(plan.run_dir, max_steps):
        return {**entry, "status": "skipped", "returncode": 0}
    if plan.prompt_sets is not None:
        plan.prompts_file.parent.mkdir(parents=True, exist_ok=True)
        plan.prompts_file.write_text(plan.prompt_sets + "\n")
    rc, wall, cpu = _launch(plan.command(), plan.log, env)
    done = rc == 0 and report.run_complete(plan.run_dir, max_steps)
    return {**entry, "status": "ok" if done else "failed", "returncode": rc, "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1), "finished": _now()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """HEAD's commit, with ``+dirty`` when the tree has uncommitted changes (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if not head:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return head + ("+dirty" if dirty else "")


def reproduce_command(args: argparse.Namespace) -> str:
    """The command that runs the whole experiment (``--only``, ``--jobs`` and paths of the report left out)."""
    cmd = ["python", "experiments/run.py"]
    if Path(args.spec).resolve() != report.DEFAULT_SPEC.resolve():
        cmd += ["--spec", args.spec]
    if args.out:
        cmd += ["--out", args.out]
    return shlex.join(cmd + (["--smoke"] if args.smoke else []))


def _final_eval_text(plan: RunPlan) -> str:
    try:
        records = report.read_metrics(plan.run_dir)
        return f"final eval pass@1 {report.final_eval(records):.3f} (start {report.start_eval(records):.3f})"
    except (FileNotFoundError, IndexError, TypeError, ValueError):
        return "no eval"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description="Run the CPU experiment (GIFT vs GRPO, ablations) and report.")
    parser.add_argument("--spec", default=str(report.DEFAULT_SPEC), help="experiment spec YAML")
    parser.add_argument("--out", default=None,
                        help="output directory (default experiments/out, smoke: experiments/out_smoke)")
    parser.add_argument("--jobs", type=int, default=None, help="runs in parallel (default: the spec's jobs)")
    parser.add_argument("--smoke", action="store_true", help="the spec's tiny `smoke:` variant")
    parser.add_argument("--only", nargs="+", metavar="ARM", help="run only these arms (the report covers all)")
    parser.add_argument("--report-only", action="store_true", help="skip the runs; write the report from OUT")
    parser.add_argument("--results", default=None, help="results page (default docs/results.md, smoke: OUT/results.md)")
    parser.add_argument("--img", default=None, help="PNG directory (default docs/img, smoke: OUT/img)")
    args = parser.parse_args(argv)

    out = Path(args.out or REPO / "experiments" / ("out_smoke" if args.smoke else "out")).resolve()
    docs = out if args.smoke else REPO / "docs"
    results = Path(args.results) if args.results else docs / "results.md"
    img = Path(args.img) if args.img else docs / "img"
    try:
        spec = report.load_spec(args.spec)
        if args.smoke:
            spec = spec.smoke_spec()
        if args.jobs is not None:
            if args.jobs < 1:
                raise SpecError(f"--jobs {args.jobs}: must be >= 1")
            spec = dataclasses.replace(spec, jobs=args.jobs)
        unknown = [a for a in args.only or [] if a not in [x.name for x in spec.arms]]
        if unknown:
            known = ", ".join(a.name for a in spec.arms)
            raise SpecError(f"--only {' '.join(unknown)}: not an arm of the spec ({known})")
        if args.report_only:
            return _report(out, spec, results, img)
        print(f"checking {len(spec.arms)} arms x {len(spec.seeds)} seeds ...", flush=True)
        plans = plan_runs(spec, out, args.only)
    except SpecError as err:
        print(f"spec error: {err}", file=sys.stderr)
        return 2

    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("*\n")  # outputs, not sources
    manifest = report.read_manifest(out)
    started, t0 = _now(), time.monotonic()
    manifest.update(spec=spec.to_dict(), smoke=args.smoke, command=reproduce_command(args), git_commit=git_commit(),
                    cpu_count=os.cpu_count(), jobs=spec.jobs)
    manifest.setdefault("runs", {})
    manifest.setdefault("invocations", [])

    def save(wall: float | None = None) -> None:
        wall = time.monotonic() - t0 if wall is None else wall
        invocation = {"started": started, "argv": argv, "wall_s": round(wall, 1)}
        (out / report.MANIFEST).write_text(json.dumps(
            {**manifest, "invocations": [*manifest["invocations"], invocation]}, indent=2) + "\n")

    pending = [p for p in plans if not report.run_complete(p.run_dir, spec.max_steps) or not _saved_config_matches(p)]
    print(f"{len(plans)} runs, {len(plans) - len(pending)} already done; output in {out}", flush=True)
    try:
        manifest["warm_start"] = [*manifest.get("warm_start", []), *warm_start(spec, pending, out)]
    except RuntimeError as err:
        print(err, file=sys.stderr)
        save()
        return 1

    failed = []
    pool = ThreadPoolExecutor(max_workers=spec.jobs)
    try:
        futures = {pool.submit(run_one, p, spec.max_steps, _env(spec.jobs)): p for p in plans}
        for i, future in enumerate(as_completed(futures), 1):
            plan, entry = futures[future], future.result()
            if entry["status"] == "skipped":
                entry = {**manifest["runs"].get(plan.key, {}), **entry}  # keep the wall time it took before
                line = f"done before, skipped; {_final_eval_text(plan)}"
            elif entry["status"] == "ok":
                line = f"{_final_eval_text(plan)}, {entry['wall_s']:.0f} s wall, {entry['cpu_s']:.0f} s CPU"
                if "note" in entry:
                    line += f" ({entry['note']})"
            else:
                failed.append(plan)
                line = f"FAILED (exit {entry['returncode']}), log: {plan.log}"
            manifest["runs"][plan.key] = entry
            save()
            print(f"[{i}/{len(plans)}] {plan.arm.name} seed {plan.seed}: {line}", flush=True)
    except KeyboardInterrupt:  # Ctrl-C also stops the running launchers (same process group)
        pool.shutdown(wait=False, cancel_futures=True)
        save()
        print("\ninterrupted; the same command resumes", file=sys.stderr)
        return 130
    pool.shutdown()
    wall = time.monotonic() - t0
    save(wall)
    print(f"total wall time {wall / 60:.1f} min ({len(failed)} failed)", flush=True)
    rc = _report(out, spec, results, img)
    if failed:
        print("failed runs: " + ", ".join(f"{p.key} ({p.log})" for p in failed), file=sys.stderr)
        return 1
    return rc


def _report(out: Path, spec: Spec, results: Path, img: Path) -> int:
    exp = report.write_report(out, spec, results, img)
    print("\n" + exp.method_table() + "\n")
    print(report.cl.results_table(exp.results()) + "\n")
    print(f"wrote {results} and {img}/gift_vs_grpo.png, {img}/ablations.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
