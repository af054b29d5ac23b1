"""experiments/report.py and experiments/claims.py on hand-written runs: the per-run metrics, the
paired claims and their verdicts, the page, the plots, the runtime estimate, and spec errors that
name the key and value. No training; a few seconds."""

import json
import math
from pathlib import Path

import pytest
import yaml

from experiments import claims, report, run

MAX_STEPS = 20

# Per arm and seed: eval and train-eval pass@1 and memo/pass@1 at steps 0, 10, 20; the sampled
# response length of every step (the first 2 and the last 2 of 20 are the 10% heads and tails).
RUNS = {
    "gift": {
        1: dict(evals=[0.2, 0.5, 0.6], trains=[0.2, 0.6, 0.8], memo=[0.5, 0.5, 0.25], lengths=(4, 8)),
        2: dict(evals=[0.2, 0.4, 0.4], trains=[0.2, 0.5, 0.5], memo=[0.5, 0.25, 0.25], lengths=(4, 9)),
        3: dict(evals=[0.2, 0.3, 0.5], trains=[0.2, 0.4, 0.7], memo=[0.5, 0.5, 0.5], lengths=(4, 10)),
    },
    "grpo": {
        1: dict(evals=[0.2, 0.4, 0.5], trains=[0.2, 0.6, 0.9], memo=[0.5, 0.75, 0.75], lengths=(4, 5)),
        2: dict(evals=[0.2, 0.3, 0.3], trains=[0.2, 0.5, 0.7], memo=[0.5, 0.5, 0.75], lengths=(4, 5)),
        3: dict(evals=[0.2, 0.3, 0.4], trains=[0.2, 0.5, 0.8], memo=[0.5, 0.75, 0.75], lengths=(4, 6)),
    },
}


def _spec(**changes) -> report.Spec:
    raw = {
        "seeds": [1, 2, 3], "sft_seed": 7, "data_seed": 7, "max_steps": MAX_STEPS, "eval_every": 10, "jobs": 2,
        "groups": {"method": {"title": "GIFT vs GRPO"},
                   "kl": {"title": "kl_sum vs kl_average", "setting": "{gift.implicit_reward}"}},
        "arms": [
            {"name": "gift", "conf": "gift_tiny_scratchpad", "groups": ["method", "kl"]},
            {"name": "grpo", "conf": "grpo_tiny_scratchpad", "groups": ["method"]},
            {"name": "gift_kl_average", "conf": "gift_tiny_scratchpad",
             "overrides": ["gift.implicit_reward=kl_average"], "groups": ["kl"]},
        ],
        # kl_sum/kl_average point at grpo/gift so that one claim is a clear loss.
        "claims": {"gift": "gift", "grpo": "grpo", "kl_sum": "grpo", "kl_average": "gift"},
        "smoke": {"seeds": [1], "max_steps": 2, "arms": ["gift", "grpo"], "overrides": ["sft.steps=2"]},
    }
    raw.update(changes)
    return report.parse_spec(raw)


def _config(algorithm: str, mode: str = "kl_sum") -> dict:
    return {"trainer": {"algorithm": algorithm, "prompts_per_step": 16, "mini_batch_prompts": 4},
            "rollout": {"group_size": 8}, "optim": {"lr": 1e-4},
            "gift": {"implicit_reward": mode, "std_guard": "none", "implicit_baseline": "old_policy"},
            "data": {"dataset": "arithmetic", "eval_size": 224,
                     "arithmetic": {"min_digits": 2, "max_digits": 2, "teacher_carry_drop": 0.8,
                                    "scratchpad_rate": 0.3, "pool_size": 56, "wrong_key_prompts": 8}}}


def _write_run(run_dir: Path, evals, trains, memo, lengths, config=None, zcorr=(0.0, 0.4)) -> None:
    rows = []
    for step in range(MAX_STEPS + 1):
        row = {"step": step, "time": 0.0}
        if step:
            row["train/response_length"] = lengths[0] if step <= 2 else lengths[1] if step >= MAX_STEPS - 1 else 6.0
            row["train/z_a_corr/first_mb"], row["train/z_a_corr/later_mb"] = zcorr
        if step % 10 == 0:
            i = step // 10
            row.update({"eval/pass@1": evals[i], "train/pass@1": trains[i], "memo/pass@1": memo[i]})
        rows.append(row)
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if config is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture
def out(tmp_path) -> Path:
    out = tmp_path / "out"
    for arm, seeds in RUNS.items():
        for seed, kw in seeds.items():
            _write_run(out / "runs" / arm / f"seed_{seed}", **kw, config=_config(arm))
    # gift_kl_average: one finished seed, one that stopped at step 5, one never started.
    kw = dict(evals=[0.2, 0.3, 0.4], trains=[0.2, 0.3, 0.4], memo=[0.5] * 3, lengths=(4, 4))
    _write_run(out / "runs" / "gift_kl_average" / "seed_1", **kw, config=_config("gift", "kl_average"))
    partial = out / "runs" / "gift_kl_average" / "seed_2"
    _write_run(partial, **kw)
    (partial / "metrics.jsonl").write_text("\n".join((partial / "metrics.jsonl").read_text().splitlines()[:6]) + "\n")
    (out / "manifest.json").write_text(json.dumps({
        "command": "python experiments/run.py --out X", "git_commit": "abcdef1234567890", "cpu_count": 2, "jobs": 2,
        "invocations": [{"wall_s": 90.0}, {"wall_s": 30.0}],
        "warm_start": [{"run": "gift/seed_1", "cpu_s": 60.0}],
        "runs": {"gift/seed_1": {"wall_s": 60.0, "cpu_s": 50.0}, "grpo/seed_1": {"wall_s": 70.0, "cpu_s": 40.0},
                 "gift/seed_2": {"wall_s": 65.0, "cpu_s": 30.0}},
    }))
    return out


def test_per_run_metrics_by_hand():
    rows = [{"step": 0, "eval/pass@1": 0.2, "train/pass@1": 0.3},
            {"step": 10, "eval/pass@1": 0.6, "train/pass@1": 0.6, "memo/pass@1": 0.5},
            {"step": 40, "eval/pass@1": 0.4, "train/pass@1": 0.9, "memo/pass@1": 0.25}]
    # Trapezoids: 10 * (0.2 + 0.6) / 2 + 30 * (0.6 + 0.4) / 2 = 4 + 15 = 19, over 40 steps.
    assert claims.auc(rows) == pytest.approx(19 / 40)
    m = claims.METRICS
    assert m["start"].fn(rows) == 0.2 and m["final"].fn(rows) == 0.4
    assert m["peak_minus_final"].fn(rows) == pytest.approx(0.2)
    assert claims.delta_gap_series(rows) == ([0, 10, 40], pytest.approx([0.0, -0.1, 0.4]))
    assert m["delta_gap"].fn(rows) == pytest.approx(0.4) and m["memo"].fn(rows) == 0.25
    lengths = [{"step": i, "train/response_length": float(i)} for i in range(1, 16)]
    assert claims.tail_mean(lengths, "train/response_length") == 14.5  # the last ceil(10% of 15) = 2
    assert claims.tail_mean(lengths, "train/response_length", head=True) == 1.5
    assert m["zcorr_later"].fn(rows) is None and claims.auc(rows[:1]) is None


def test_claims_paired_by_seed(out):
    exp = report.load_experiment(out, _spec())
    assert exp.incomplete == {"gift": [], "grpo": [], "gift_kl_average": [2, 3]}
    results = {(r.claim.name, r.claim.metric, r.roles): r for r in exp.results()}
    # AUC per seed: gift 0.45, 0.35, 0.325; grpo 0.375, 0.275, 0.3 -> differences 0.075, 0.075, 0.025.
    conv = results[("faster convergence", "auc", ("gift", "grpo"))]
    assert conv.interval.diffs == pytest.approx((0.075, 0.075, 0.025))
    m = 0.175 / 3
    hw = 4.302652729749464 * math.sqrt(((0.075 - m) ** 2 * 2 + (0.025 - m) ** 2) / 2) / math.sqrt(3)
    assert conv.interval.half_width == pytest.approx(hw) and conv.verdict == "not resolved"
    # Δgap(T): gift 0.2, 0.1, 0.2; grpo 0.4, 0.4, 0.4 -> -0.2, -0.3, -0.2: mean -0.233, half width
    # 4.303 * 0.0577 / sqrt(3) = 0.143, so the interval lies wholly below 0.
    gap = results[("less overfitting", "delta_gap", ("gift", "grpo"))]
    assert gap.interval.diffs == pytest.approx((-0.2, -0.3, -0.2)) and gap.verdict == "supported"
    # Memorization: 0.25, 0.25, 0.5 vs 0.75, 0.75, 0.75 -> -0.5, -0.5, -0.25: supported.
    assert results[("less overfitting", "memo", ("gift", "grpo"))].verdict == "supported"
    # Length over the last 10%: 8, 9, 10 vs 5, 5, 6 -> +3, +4, +4: longer responses supported.
    assert results[("longer responses", "length", ("gift", "grpo"))].interval.diffs == pytest.approx((3, 4, 4))
    assert results[("longer responses", "length", ("gift", "grpo"))].verdict == "supported"
    # kl_sum (grpo) vs kl_average (gift): final eval 0.5, 0.3, 0.4 vs 0.6, 0.4, 0.5 -> -0.1 each: refuted.
    assert results[("kl_sum ≥ kl_average", "final", ("kl_sum", "kl_average"))].verdict == "refuted"
    # No gift_3x arm: not measured.
    assert results[("faster convergence", "auc", ("gift_3x", "grpo_3x"))].verdict == "not measured"


def test_results_page_plots_and_readme_table(out, tmp_path):
    results, img = tmp_path / "docs" / "results.md", tmp_path / "docs" / "img"
    exp = report.write_report(out, _spec(), results, img)
    text = results.read_text()
    assert "generated by `experiments/report.py`" in text and "`python experiments/run.py --out X`" in text
    assert "2.0 min wall time seen over 2 invocation(s)" in text and "commit `abcdef123456`" in text
    # CPU: 50, 40, 30 s of runs on 2 slots in order -> slots 50 and 40 + 30 -> 70 s; plus 60 s of warm start.
    assert "CPU time: 2.0 min for 3 runs, plus 1.0 min of warm start" in text
    assert "estimated wall time on an idle machine: 2.2 min" in text
    assert "| faster convergence | gift − grpo (claim: a > b) | AUC of eval pass@1 |" in text
    assert "| **supported** |" in text and "| **refuted** |" in text and "| not measured |" in text
    assert "## Is GIFT's loss active?" in text and "| gift | 0.000 ± 0.000 | 0.400 ± 0.000 |" in text
    assert "Left out (no finished run): gift_kl_average: seeds 2, 3." in text
    assert "![GIFT vs GRPO](img/gift_vs_grpo.png)" in text and "(img/ablations.png)" in text
    for name in ("gift_vs_grpo.png", "ablations.png"):
        assert (img / name).stat().st_size > 1000
    table = exp.method_table()
    assert table.splitlines()[2].startswith("| gift | 0.500 ± 0.100 |")
    # The README rows are the claims' arms, each once (here kl_average is the gift arm).
    assert table.splitlines()[3].startswith("| grpo |") and len(table.splitlines()) == 4
    assert report.method_table_markdown(out, _spec()) == table


def test_estimated_idle_wall_is_a_list_schedule():
    assert report.estimated_idle_wall([50, 40, 30], 2) == 70
    assert report.estimated_idle_wall([10, 10, 10, 10], 1) == 40 and report.estimated_idle_wall([], 2) == 0


def test_spec_file_parses_and_round_trips():
    spec = report.load_spec()
    assert report.parse_spec(spec.to_dict()) == spec
    assert set(spec.claims) == set(claims.ROLES) and len(spec.seeds) == 6
    smoke = spec.smoke_spec()
    assert report.parse_spec(smoke.to_dict()) == smoke and smoke.smoke is None
    assert all(set(a.groups) <= {g.name for g in smoke.groups} for a in smoke.arms)
    overrides = spec.run_overrides(spec.arm("gift"), 2)
    assert "seed=2" in overrides and f"trainer.max_steps={spec.max_steps}" in overrides


@pytest.mark.parametrize("change, key, value", [
    ({"seeds": [1, 0]}, "seeds[1]", "0"),
    ({"seeds": [1, 1]}, "seeds", "[1, 1]"),
    ({"max_steps": 0}, "max_steps", "0"),
    ({"arms": [{"name": "gift", "conf": "gift_tiny", "groups": ["method", "kl"]},
               {"name": "gift", "conf": "grpo_tiny", "groups": ["method"]}]}, "arms[1].name", "'gift'"),
    ({"arms": [{"name": "gift", "conf": "gift_tiny", "groups": ["method", "nope"]}]}, "arms[0].groups[1]", "'nope'"),
    ({"arms": [{"name": "gift", "conf": "gift_tiny", "overrides": ["seed=3"], "groups": ["method", "kl"]}]},
     "arms[0].overrides[0]", "'seed=3'"),
    ({"arms": [{"name": "a b", "conf": "gift_tiny", "groups": ["method"]}]}, "arms[0].name", "'a b'"),
    ({"claims": {"gift": "ghost"}}, "claims.gift", "'ghost'"),
    ({"claims": {"winner": "gift"}}, "claims.winner", "'gift'"),
    ({"smoke": {"arms": ["ghost"]}}, "smoke.arms[0]", "'ghost'"),
    ({"recipe_overrides": ["trainer.max_steps=5"]}, "recipe_overrides[0]", "'trainer.max_steps=5'"),
])
def test_spec_errors_name_key_and_value(change, key, value):
    with pytest.raises(report.SpecError) as err:
        _spec(**change)
    assert f"{key}={value}" in str(err.value)


def test_spec_error_names_unknown_key():
    with pytest.raises(report.SpecError, match="unknown key 'target_pass@1'"):
        _spec(**{"target_pass@1": 0.5})
    with pytest.raises(report.SpecError, match=r"groups.kl.*no arm lists this group"):
        _spec(arms=[{"name": "gift", "conf": "gift_tiny", "groups": ["method"]}])


def test_runner_refuses_unmatched_rollout_budget(tmp_path):
    spec = _spec()

    def plan(arm, b, g):
        cfg = {"trainer": {"prompts_per_step": b}, "rollout": {"group_size": g}, "gift": {"implicit_reward": "x"}}
        return run.RunPlan(spec.arm(arm), 1, tmp_path / arm, [], cfg)

    run._check_plans(spec, [plan("gift", 16, 8), plan("grpo", 32, 4)])  # 128 each
    with pytest.raises(report.SpecError, match="gift: 128, grpo: 120"):
        run._check_plans(spec, [plan("gift", 16, 8), plan("grpo", 30, 4)])
    bad = report.parse_spec({**spec.to_dict(), "groups": {"method": {"title": "m"},
                                                          "kl": {"title": "g", "setting": "{gift.nope}"}}})
    with pytest.raises(report.SpecError, match=r"groups.kl.setting='\{gift.nope\}'"):
        run._check_plans(bad, [plan("gift", 16, 8)])


def test_runner_reruns_a_run_made_with_another_config(tmp_path):
    plan = run.RunPlan(_spec().arm("gift"), 1, tmp_path / "run", [], {"run_dir": "/a", "seed": 1})
    assert run._saved_config_matches(plan)  # nothing saved yet
    plan.run_dir.mkdir()
    (plan.run_dir / "config.yaml").write_text(yaml.safe_dump({"run_dir": "/b", "seed": 1}))
    assert run._saved_config_matches(plan)  # moved, same settings
    (plan.run_dir / "config.yaml").write_text(yaml.safe_dump({"run_dir": "/a", "seed": 2}))
    assert not run._saved_config_matches(plan)
    # Same config, but the prompt sets (built by code) are checked too: a run with no recorded digest,
    # or another one, was made with other prompts.
    (plan.run_dir / "config.yaml").write_text(yaml.safe_dump({"run_dir": "/a", "seed": 1}))
    plan.prompt_sets = "0123abcd"
    assert not run._saved_config_matches(plan)
    plan.prompts_file.write_text("ffff0000\n")
    assert not run._saved_config_matches(plan)
    plan.prompts_file.write_text("0123abcd\n")
    assert run._saved_config_matches(plan)


def test_prompt_sets_digest_follows_the_sets_not_the_arm(monkeypatch):
    from nemo_gift.data import arithmetic_sets

    def digest(conf, *extra):
        return run.compose(conf, ["data.seed=5", *extra])[2]

    gift = digest("gift_tiny_scratchpad")
    assert len(gift) == 16 and gift == digest("grpo_tiny_scratchpad", "optim.lr=3e-5")  # same prompts, other arm
    assert gift != digest("gift_tiny_scratchpad", "data.seed=6")
    assert gift != digest("gift_tiny_scratchpad", "data.arithmetic.wrong_key_prompts=4")
    monkeypatch.setattr(arithmetic_sets, "wrong_key", lambda p: p.answer + 2)  # code that changes a key
    assert gift != digest("gift_tiny_scratchpad")


def test_launch_measures_the_childs_cpu_time(tmp_path):
    """run._launch returns the CPU time of its child alone (os.wait4), not the wall time."""
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(0.3)"
    rc, wall, cpu = run._launch([run.sys.executable, "-c", busy], tmp_path / "x.log", dict(run.os.environ))
    assert rc == 0 and 0.3 <= cpu < wall
