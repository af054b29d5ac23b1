"""The scratchpad format of the arithmetic task, and the pool / held-out / wrong-key sets of
nemo_gift/data/arithmetic_sets.py (the GIFT-vs-GRPO experiment's task)."""

import random
from collections import Counter

import pytest

from nemo_gift.data import ArithmeticConfig, ArithmeticProblem, ArithmeticTask, Operator, Split, format_answer
from nemo_gift.data.arithmetic_sets import quotas, rl_sets, stratified_problems, stratum, stratum_shares, wrong_key
from nemo_gift.rewards import Reason, get_verifier


def _response(task, ids, mask):
    return task.tokenizer.decode([i for i, m in zip(ids, mask) if m])


@pytest.mark.parametrize("a, b, carries", [(58, 67, 2), (12, 34, 0), (95, 5, 2), (99, 1, 2), (15, 15, 1), (0, 0, 0)])
def test_carries_by_hand(a, b, carries):
    assert ArithmeticProblem(a, Operator.ADD, b).carries == carries
    assert ArithmeticProblem(a, Operator.SUB, b).carries == 0


def test_scratchpad_target_and_verifier():
    p = ArithmeticProblem(58, Operator.ADD, 67)
    assert p.scratchpad_target() == "521 125" and p.scratchpad_target(reverse=True) == "125 521"
    pad = get_verifier("arithmetic_scratchpad")
    assert pad("521 125", "125").reason is Reason.CORRECT
    assert pad("999 125<eos>junk", "125").reason is Reason.CORRECT  # the scratchpad is never checked
    assert pad("125", "125").reason is Reason.CORRECT  # nor required
    assert pad("125 521", "125").reason is Reason.WRONG
    assert pad("125 ", "125").reason is Reason.CORRECT  # surrounding whitespace is stripped first
    assert pad("12 x", "125").reason is Reason.NO_ANSWER
    assert get_verifier("arithmetic_scratchpad_reversed")("125 521", "125").reason is Reason.CORRECT
    assert get_verifier("arithmetic")("521 125", "125").reason is Reason.NO_ANSWER  # the plain task's verifier


def test_teacher_writes_the_scratchpad_at_its_rate_and_drops_carries_otherwise():
    cfg = ArithmeticConfig(min_digits=2, max_digits=2, teacher_carry_drop=0.9, scratchpad_rate=0.3)
    task, rng = ArithmeticTask(cfg), random.Random(0)
    assert task.verifier_name == "arithmetic_scratchpad"
    verifier = task.verifier()
    kinds = Counter()
    problems = [p for p in task.problems("train", 3000, seed=3) if p.has_carry]
    for p in problems:
        response = _response(task, *task.sft_example(p, rng))
        if response == p.scratchpad_target():
            kinds["pad"] += 1
            assert verifier(response, str(p.answer)).reason is Reason.CORRECT
        elif response == format_answer(p.carryless_answer):
            kinds["dropped"] += 1
        else:
            assert response == p.target()
            kinds["direct"] += 1
    n = len(problems)
    # Binomial shares, 4 standard deviations: 0.3 scratchpad; 0.7 * 0.9 = 0.63 dropped; 0.07 right.
    for kind, share in (("pad", 0.3), ("dropped", 0.63), ("direct", 0.07)):
        assert abs(kinds[kind] - share * n) < 4 * (n * share * (1 - share)) ** 0.5, kinds
    # Without an rng the demonstration is the exact direct answer.
    assert _response(task, *task.sft_example(problems[0])) == problems[0].target()


@pytest.mark.parametrize("a, op, b, key", [
    (58, "+", 67, 126), (59, "+", 70, 120), (12, "+", 34, 47), (95, "+", 5, 101), (0, "+", 0, 1),
    (50, "+", 49, 90), (3, "-", 10, -8), (7, "*", 8, 57),
])
def test_wrong_key_by_hand(a, op, b, key):
    assert wrong_key(ArithmeticProblem(a, Operator(op), b)) == key


def test_wrong_key_is_neither_the_rule_nor_any_carry_slip():
    # Every 2-digit sum: one digit changed, the last; so neither the answer, nor the carry-less
    # answer, nor any partial carry (all end in (a_0 + b_0) mod 10).
    for a in range(10, 100):
        for b in range(10, 100):
            p = ArithmeticProblem(a, Operator.ADD, b)
            key, answer = str(wrong_key(p)), str(p.answer)
            assert len(key) == len(answer) and key[:-1] == answer[:-1]
            assert int(key[-1]) == (a + b + 1) % 10 != (a % 10 + b % 10) % 10 == p.carryless_answer % 10
    # The warm start's teacher never demonstrates it (3000 sums, both its forms).
    task, rng = ArithmeticTask(ArithmeticConfig(min_digits=2, max_digits=2, teacher_carry_drop=0.9,
                                                scratchpad_rate=0.3)), random.Random(0)
    demos = [(p, _response(task, *task.sft_example(p, rng))) for p in task.problems("train", 3000, seed=3)]
    assert not any(r.rsplit(" ", 1)[-1] == str(wrong_key(p)) for p, r in demos)


@pytest.mark.parametrize("bad, match", [
    ({"scratchpad_rate": 1.5}, "scratchpad_rate"), ({"scratchpad_rate": 0.2, "operators": ("+", "-")}, "scratchpad"),
    ({"pool_size": 0}, "pool_size"), ({"wrong_key_prompts": 4}, "wrong_key_prompts"),
])
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        ArithmeticConfig(**bad)


def test_quotas_are_a_largest_remainder_rounding():
    shares = {(1, 1, 0): 0.5, (1, 1, 1): 0.3, (1, 2, 0): 0.2}
    assert quotas(shares, 10) == {(1, 1, 0): 5, (1, 1, 1): 3, (1, 2, 0): 2}
    # 7 * shares = 3.5, 2.1, 1.4: floors 3, 2, 1 and the one left goes to the largest remainder (0.5).
    assert quotas(shares, 7) == {(1, 1, 0): 4, (1, 1, 1): 2, (1, 2, 0): 1}
    assert sum(quotas(shares, 13).values()) == 13 and quotas(shares, 0) == dict.fromkeys(shares, 0)


def _task(**kw):
    base = dict(min_digits=2, max_digits=2, heldout_fraction=0.1, teacher_carry_drop=0.9, scratchpad_rate=0.3,
                pool_size=56, wrong_key_prompts=8)
    return ArithmeticTask(ArithmeticConfig(**{**base, **kw}))


def _problem(record):
    return ArithmeticProblem(record.meta["a"], Operator.ADD, record.meta["b"])


def test_pool_heldout_and_wrong_key_sets():
    task = _task()
    sets = rl_sets(task, eval_size=224, seed=1234)
    pool, held, wrong = sets.train_eval, sets.heldout, sets.wrong_key
    assert (len(pool), len(held), len(wrong)) == (56, 224, 8) and sets.train == pool + wrong
    keys = [[_problem(r).canonical() for r in x] for x in (pool, held, wrong)]
    assert all(len(set(k)) == len(k) for k in keys)  # each set distinct
    assert not set(keys[0]) & set(keys[1]) and not set(keys[0]) & set(keys[2]) and not set(keys[1]) & set(keys[2])
    assert all(task.split_of(_problem(r)) is Split.HELDOUT for r in held)
    assert all(task.split_of(_problem(r)) is Split.TRAIN for r in pool + wrong)
    # The same difficulty mix: held-out is exactly 4 copies of the pool's per-stratum counts.
    pool_mix = Counter(stratum(_problem(r)) for r in pool)
    assert Counter(stratum(_problem(r)) for r in held) == Counter({s: 4 * n for s, n in pool_mix.items()})
    assert pool_mix == Counter(quotas(stratum_shares(task), 56))
    # The slice has the pool's mix too: quotas(shares, 8) = 2, 4, 2 sums with 0, 1, 2 carries.
    assert Counter(stratum(_problem(r)) for r in wrong) == Counter({(2, 2, 0): 2, (2, 2, 1): 4, (2, 2, 2): 2})
    # Wrong keys: the answer's last digit plus 1 mod 10; the true answer is kept in meta.
    assert [(r.prompt, r.ground_truth, r.meta["true_answer"]) for r in wrong] == [
        ("95+43=", "139", "138"), ("33+95=", "129", "128"), ("29+88=", "118", "117"), ("21+16=", "38", "37"),
        ("46+97=", "144", "143"), ("11+52=", "64", "63"), ("92+66=", "159", "158"), ("92+73=", "166", "165")]
    assert all(r.ground_truth == str(wrong_key(_problem(r))) for r in wrong)
    assert all(r.ground_truth == str(_problem(r).answer) for r in pool + held)
    assert rl_sets(task, 224, 1234) == sets and rl_sets(task, 224, 99) != sets  # seeded


def test_a_stratum_that_cannot_be_filled_is_named():
    task = _task(pool_size=56)
    with pytest.raises(ValueError, match=r"short: \{\(2, 2, 0\)"):
        stratified_problems(task, Split.HELDOUT, {(2, 2, 0): 500}, seed=0)  # ~410 held-out sums exist


def test_build_task_uses_the_pool_and_scores_the_wrong_keys():
    from nemo_gift.launcher.main import load
    from nemo_gift.data.task import build_task
    from nemo_gift.train import task_spec

    cfg = load("gift_tiny_scratchpad", ["data.seed=7"])
    task = build_task(task_spec(cfg))
    assert len(task.train_records) == 64 and task.train_eval_records == task.train_records[:56]
    assert len(task.eval_records) == 224 and [len(v) for v in task.extra_eval_records.values()] == [8]
    memo = task.extra_eval_records["memo"]
    assert memo == task.train_records[56:] and all(r.ground_truth == str(wrong_key(_problem(r))) for r in memo)
    p = _problem(memo[0])
    # Rewarded: the wrong key, with or without a scratchpad. Not: the true answer, the carry-less one.
    texts = [f"{memo[0].ground_truth[::-1]} {memo[0].ground_truth}", memo[0].ground_truth,
             memo[0].meta["true_answer"], str(p.carryless_answer)]
    rewards, reasons = task.score([memo[0]] * 4, texts)
    assert rewards.tolist() == [1.0, 1.0, 0.0, 0.0] and reasons == ["correct", "correct", "wrong", "wrong"]
