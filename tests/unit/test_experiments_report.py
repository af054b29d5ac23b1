"""experiments/report.py on hand-written runs: the numbers, the verdicts, the page, the plots,
and spec errors that name the key and value. No training; a few seconds."""

import json
import math
from pathlib import Path

import pytest
import yaml

from experiments import report, run
from experiments.report import Stat, compare, verdict

MAX_STEPS, TARGET = 20, 0.5

# Per arm and seed: held-out pass@1 at steps 0, 10, 20; the final train-minus-eval gap; the last
# two (= the last 10% of 20) response lengths and train rewards.
RUNS = {
    "gift": {
        1: dict(evals=[0.2, 0.5, 0.6], gap=0.1, lengths=(8, 10), rewards=(0.4, 0.6)),
        2: dict(evals=[0.2, 0.4, 0.7], gap=0.2, lengths=(10, 12), rewards=(0.6, 0.8)),
        3: dict(evals=[0.2, 0.3, 0.5], gap=0.3, lengths=(12, 14), rewards=(0.8, 1.0)),
    },
    "grpo": {
        1: dict(evals=[0.2, 0.4, 0.5], gap=0.4, lengths=(5, 5), rewards=(0.2, 0.2)),
        2: dict(evals=[0.2, 0.3, 0.3], gap=0.5, lengths=(5, 5), rewards=(0.2, 0.2)),
        3: dict(evals=[0.2, 0.1, 0.25], gap=0.6, lengths=(5, 5), rewards=(0.2, 0.2)),
    },
}


def _spec(**changes) -> report.Spec:
    raw = {
        "seeds": [1, 2, 3], "sft_seed": 7, "data_seed": 7, "max_steps": MAX_STEPS, "eval_every": 10,
        "target_pass@1": TARGET, "jobs": 2,
        "groups": {"method": {"title": "GIFT vs GRPO"},
                   "guard": {"title": "degenerate-std guard", "setting": "{gift.std_guard}"}},
        "arms": [
            {"name": "gift", "conf": "gift_tiny", "groups": ["method", "guard"]},
            {"name": "grpo", "conf": "grpo_tiny", "groups": ["method"]},
            {"name": "gift_guard_none", "conf": "gift_tiny", "overrides": ["gift.std_guard=none"], "groups": ["guard"]},
        ],
        # kl_sum/kl_average point at grpo/gift so that one claim is a clear loss.
        "claims": {"gift": "gift", "grpo": "grpo", "kl_sum": "grpo", "kl_average": "gift"},
        "defaults_evidence": ["guard"],
        "smoke": {"seeds": [1], "max_steps": 2, "arms": ["gift", "grpo"], "overrides": ["sft.steps=2"]},
    }
    raw.update(changes)
    return report.parse_spec(raw)


def _config(guard: str) -> dict:
    return {"trainer": {"prompts_per_step": 16}, "rollout": {"group_size": 8}, "gift": {"std_guard": guard},
            "data": {"dataset": "arithmetic", "eval_size": 32,
                     "arithmetic": {"min_digits": 1, "max_digits": 3, "operators": ["+"]}}}


def _write_run(run_dir: Path, evals, gap, lengths, rewards, config=None) -> None:
    rows = []
    for step in range(MAX_STEPS + 1):
        row = {"step": step, "time": 0.0}
        if step:
            tail = step - (MAX_STEPS - 1)  # 0 or 1 on the last two steps
            row["train/reward"] = rewards[tail] if tail >= 0 else 0.0
            row["train/response_length"] = lengths[tail] if tail >= 0 else 3.0
        if step % 10 == 0:
            e = evals[step // 10]
            g = gap if step == MAX_STEPS else 0.0
            row.update({"eval/pass@1": e, "train/pass@1": e + g, "gap/train_minus_eval_pass@1": g})
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
            _write_run(out / "runs" / arm / f"seed_{seed}", **kw, config=_config("std_floor"))
    # gift_guard_none: one finished seed, one that stopped at step 5, one never started.
    _write_run(out / "runs" / "gift_guard_none" / "seed_1", [0.2, 0.3, 0.4], 0.0, (5, 5), (0.1, 0.1), _config("none"))
    partial = out / "runs" / "gift_guard_none" / "seed_2"
    _write_run(partial, [0.2, 0.3, 0.4], 0.0, (5, 5), (0.1, 0.1))
    lines = (partial / "metrics.jsonl").read_text().splitlines()[:6]
    (partial / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (out / "manifest.json").write_text(json.dumps({
        "command": "python experiments/run.py --out X", "git_commit": "abcdef1234567890", "cpu_count": 2, "jobs": 2,
        "invocations": [{"wall_s": 90.0}, {"wall_s": 30.0}], "runs": {"gift/seed_1": {"wall_s": 60.0}},
    }))
    return out


def test_per_seed_metrics():
    rows = [{"step": 0, "eval/pass@1": 0.1}, {"step": 1, "train/reward": 1.0},
            {"step": 2, "train/reward": 3.0, "eval/pass@1": 0.6, "train/pass@1": 0.9}]
    assert report.start_eval(rows) == 0.1 and report.final_eval(rows) == 0.6 and report.best_eval(rows) == 0.6
    assert report.steps_to_target(rows, 0.5) == 2 and report.steps_to_target(rows, 0.7) is None
    assert report.steps_to_target(rows, 0.1) == 0  # already there before RL
    assert report.final_gap(rows) == pytest.approx(0.3)  # no gap key: train/pass@1 - eval/pass@1
    assert report.tail_mean(rows, "train/reward") == 3.0  # ceil(10% of 2) = the last one
    assert report.tail_mean([{"step": i, "x": float(i)} for i in range(1, 16)], "x") == 14.5  # last 2 of 15


def test_arm_summaries_match_hand_computed_values(out):
    exp = report.load_experiment(out, _spec())
    gift, grpo = exp.summaries["gift"], exp.summaries["grpo"]
    assert gift.final.mean == pytest.approx(0.6) and gift.final.std == pytest.approx(0.1)
    assert gift.final.fmt() == "0.600 ± 0.100" and gift.start.fmt() == "0.200 ± 0.000"
    assert grpo.final.mean == pytest.approx(0.35) and grpo.final.std == pytest.approx(math.sqrt(0.0175))
    assert gift.best.mean == pytest.approx(0.6)
    assert gift.steps == [10, 20, 20] and gift.steps_text() == "20 (3/3)"
    assert grpo.steps == [20, None, None] and grpo.steps_text() == "20 (1/3)"
    assert grpo.steps_censored.values == (20.0, 20.0, 20.0)
    assert gift.gap.mean == pytest.approx(0.2) and gift.gap.std == pytest.approx(0.1)
    assert gift.length.mean == pytest.approx(11.0) and gift.length.std == pytest.approx(2.0)
    assert gift.reward.mean == pytest.approx(0.7) and gift.reward.std == pytest.approx(0.2)
    # Only finished runs count; the others are listed as left out.
    assert exp.summaries["gift_guard_none"].final.fmt() == "0.400"
    assert exp.incomplete == {"gift": [], "grpo": [], "gift_guard_none": [2, 3]}


def test_steps_to_target_when_no_seed_reaches_it(out):
    exp = report.load_experiment(out, _spec(**{"target_pass@1": 0.95}))
    assert exp.summaries["gift"].steps_text() == "n/a (0/3)"
    assert "inconclusive (neither reached the target within 20 steps" in exp.claims()[0]


def test_compare_and_verdict():
    win = compare(Stat.of([0.6, 0.7, 0.5]), Stat.of([0.3, 0.2, 0.4]))  # +0.3, 2·SE = 0.163
    assert win.diff == pytest.approx(0.3) and win.noise == pytest.approx(2 * math.sqrt(0.01 / 3 + 0.01 / 3))
    assert verdict(win, "higher") == "held" and verdict(win, "lower") == "did not hold"
    noisy = compare(Stat.of([0.6, 0.2, 0.4]), Stat.of([0.3, 0.5, 0.1]))  # +0.1 against 2·SE = 0.33
    assert verdict(noisy, "higher") == "inconclusive (difference within seed noise)"
    assert verdict(compare(Stat.of([0.5]), Stat.of([0.2])), "higher").startswith("inconclusive (fewer than 2 seeds")
    assert Stat.of([0.5]).fmt() == "0.500" and Stat.of([]).fmt() == "n/a"


def test_claims_win_loss_and_within_noise(out):
    convergence, overfitting, kl = report.load_experiment(out, _spec()).claims()
    # Steps (unreached = 20): gift 10, 20, 20 vs grpo 20, 20, 20: -3.3 against 2·SE = 6.7.
    assert "inconclusive (difference within seed noise)" in convergence
    assert "GIFT 20 (3/3), GRPO 20 (1/3)" in convergence
    # Gap 0.2 ± 0.1 vs 0.5 ± 0.1: -0.3 against 2·SE = 0.163.
    assert overfitting.startswith("**Less overfitting**") and ": held." in overfitting
    assert "difference -0.300 (2·SE = 0.163)" in overfitting
    # kl_sum (grpo, 0.35) vs kl_average (gift, 0.6): a clear loss.
    assert ": did not hold." in kl and "difference -0.250" in kl


def test_results_page_and_plots(out, tmp_path):
    results, img = tmp_path / "docs" / "results.md", tmp_path / "docs" / "img"
    exp = report.write_report(out, _spec(), results, img)
    text = results.read_text()
    assert "generated by `experiments/report.py`" in text and "`python experiments/run.py --out X`" in text
    assert "Runtime: 2.0 min wall time over 2 invocation(s)" in text and "commit `abcdef123456`" in text
    assert "| arm | B×G | start | final eval pass@1 |" in text
    assert "| gift | 16×8 | 0.200 ± 0.000 | **0.600 ± 0.100** |" in text
    assert "### degenerate-std guard" in text
    assert "| gift (std_floor) |" in text and "| gift_guard_none (none) |" in text
    assert "## Which of the paper's claims held on this task" in text and "## Evidence for the defaults" in text
    assert "1. gift (std_floor): 0.600 ± 0.100" in text and "ranks 1 of 2" in text
    assert "Left out (no finished run): gift_guard_none: seeds 2, 3." in text
    assert "![GIFT vs GRPO](img/gift_vs_grpo.png)" in text and "(img/ablations.png)" in text
    for name in ("gift_vs_grpo.png", "ablations.png"):
        assert (img / name).stat().st_size > 1000
    table = exp.method_table()
    assert table.splitlines()[2].startswith("| gift |") and table.splitlines()[3].startswith("| grpo |")
    assert report.method_table_markdown(out, _spec()) == table


def test_spec_file_parses_and_round_trips():
    spec = report.load_spec()
    assert report.parse_spec(spec.to_dict()) == spec
    smoke = spec.smoke_spec()
    assert report.parse_spec(smoke.to_dict()) == smoke and smoke.smoke is None
    assert all(set(a.groups) <= {g.name for g in smoke.groups} for a in smoke.arms)
    overrides = spec.run_overrides(spec.arm("gift"), 2)
    assert "seed=2" in overrides and f"trainer.max_steps={spec.max_steps}" in overrides


@pytest.mark.parametrize("change, key, value", [
    ({"seeds": [1, 0]}, "seeds[1]", "0"),
    ({"seeds": [1, 1]}, "seeds", "[1, 1]"),
    ({"max_steps": 0}, "max_steps", "0"),
    ({"target_pass@1": 1.5}, "target_pass@1", "1.5"),
    ({"arms": [{"name": "gift", "conf": "gift_tiny", "groups": ["method", "guard"]},
               {"name": "gift", "conf": "grpo_tiny", "groups": ["method"]}]}, "arms[1].name", "'gift'"),
    ({"arms": [{"name": "gift", "conf": "gift_tiny", "groups": ["method", "nope"]}]}, "arms[0].groups[1]", "'nope'"),
    ({"arms": [{"name": "gift", "conf": "gift_tiny", "overrides": ["seed=3"], "groups": ["method", "guard"]}]},
     "arms[0].overrides[0]", "'seed=3'"),
    ({"arms": [{"name": "a b", "conf": "gift_tiny", "groups": ["method"]}]}, "arms[0].name", "'a b'"),
    ({"claims": {"gift": "ghost"}}, "claims.gift", "'ghost'"),
    ({"smoke": {"arms": ["ghost"]}}, "smoke.arms[0]", "'ghost'"),
    ({"defaults_evidence": ["kl"]}, "defaults_evidence[0]", "'kl'"),
    ({"recipe_overrides": ["trainer.max_steps=5"]}, "recipe_overrides[0]", "'trainer.max_steps=5'"),
])
def test_spec_errors_name_key_and_value(change, key, value):
    with pytest.raises(report.SpecError) as err:
        _spec(**change)
    assert f"{key}={value}" in str(err.value)


def test_spec_error_names_unknown_key():
    with pytest.raises(report.SpecError, match="unknown key 'seed'"):
        _spec(seed=3)
    with pytest.raises(report.SpecError, match=r"groups.guard.*no arm lists this group"):
        _spec(arms=[{"name": "gift", "conf": "gift_tiny", "groups": ["method"]}])


def test_runner_refuses_unmatched_rollout_budget(tmp_path):
    spec = _spec()

    def plan(arm, b, g):
        cfg = {"trainer": {"prompts_per_step": b}, "rollout": {"group_size": g}, "gift": {"std_guard": "x"}}
        return run.RunPlan(spec.arm(arm), 1, tmp_path / arm, [], cfg)

    run._check_plans(spec, [plan("gift", 16, 8), plan("grpo", 32, 4)])  # 128 each
    with pytest.raises(report.SpecError, match="gift: 128, grpo: 120"):
        run._check_plans(spec, [plan("gift", 16, 8), plan("grpo", 30, 4)])
    bad = report.parse_spec({**spec.to_dict(), "groups": {"method": {"title": "m"},
                                                          "guard": {"title": "g", "setting": "{gift.nope}"}}})
    with pytest.raises(report.SpecError, match=r"groups.guard.setting='\{gift.nope\}'"):
        run._check_plans(bad, [plan("gift", 16, 8)])


def test_runner_reruns_a_run_made_with_another_config(tmp_path):
    plan = run.RunPlan(_spec().arm("gift"), 1, tmp_path / "run", [], {"run_dir": "/a", "seed": 1})
    assert run._saved_config_matches(plan)  # nothing saved yet
    plan.run_dir.mkdir()
    (plan.run_dir / "config.yaml").write_text(yaml.safe_dump({"run_dir": "/b", "seed": 1}))
    assert run._saved_config_matches(plan)  # moved, same settings
    (plan.run_dir / "config.yaml").write_text(yaml.safe_dump({"run_dir": "/a", "seed": 2}))
    assert not run._saved_config_matches(plan)
