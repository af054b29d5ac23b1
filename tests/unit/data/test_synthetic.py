"""The synthetic arithmetic task: tokenizer, seeded generator, splits, verifier."""

import random

import pytest

from nemo_gift.data import (
    ArithmeticConfig,
    ArithmeticProblem,
    ArithmeticTask,
    CharTokenizer,
    Operator,
    Split,
    TemplateKind,
    format_answer,
    render_prompt,
)
from nemo_gift.rewards import Reason, get_verifier


def test_tokenizer_round_trip_and_special_ids():
    tok = CharTokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.vocab_size == 3 + len("0123456789+-*= ")
    ids = tok.encode("12+3=15", add_eos=True)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 9
    assert max(ids) < tok.vocab_size
    assert tok.decode(ids) == "12+3=15"
    assert tok.decode(ids + tok.encode("99", add_special_tokens=False)) == "12+3=15"  # stops at EOS
    assert tok.decode(ids + [5], stop_at_eos=False) == "12+3=152"
    assert tok.decode(ids, skip_special_tokens=False) == "<bos>12+3=15"
    assert tok.encode("7", add_special_tokens=False) == [tok._to_id["7"]]
    with pytest.raises(ValueError, match="not in the alphabet"):
        tok.encode("1/2")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([999])
    ids, mask = tok.pad([[5, 6, 7], [8]], side="left")
    assert ids == [[5, 6, 7], [0, 0, 8]] and mask == [[1, 1, 1], [0, 0, 1]]
    ids, mask = tok.pad([[5, 6, 7], [8]], side="right")
    assert ids == [[5, 6, 7], [8, 0, 0]] and mask == [[1, 1, 1], [1, 0, 0]]


def test_generator_is_seeded():
    task = ArithmeticTask()
    a = task.problems("train", 50, seed=3)
    assert a == task.problems("train", 50, seed=3)
    assert a != task.problems("train", 50, seed=4)


def test_splits_never_overlap():
    task = ArithmeticTask()
    heldout = task.problems(Split.HELDOUT, 200, seed=0)
    train = task.problems(Split.TRAIN, 5000, seed=1)
    assert len({p.canonical() for p in heldout}) == 200  # distinct
    assert not {p.canonical() for p in heldout} & {p.canonical() for p in train}
    # a commutative problem and its mirror fall on the same side
    for p in heldout[:50]:
        mirror = ArithmeticProblem(p.b, p.op, p.a)
        assert task.split_of(mirror) is Split.HELDOUT
    rng = random.Random(0)
    share = sum(task.split_of(task.sample(rng)) is Split.HELDOUT for _ in range(20_000)) / 20_000
    assert 0.035 < share < 0.065
    other_salt = ArithmeticTask(ArithmeticConfig(), split_salt="other")
    assert [other_salt.split_of(p) for p in heldout].count(Split.HELDOUT) < 50


def test_difficulty_knobs():
    rng = random.Random(0)
    task = ArithmeticTask(ArithmeticConfig(min_digits=2, max_digits=4, operators=(Operator.SUB, Operator.MUL)))
    problems = [task.sample(rng) for _ in range(2000)]
    assert {p.op for p in problems} == {Operator.SUB, Operator.MUL}
    assert all(10 <= p.a <= 9999 and 10 <= p.b <= 9999 for p in problems)
    assert {len(str(p.a)) for p in problems} == {2, 3, 4}
    assert all(p.answer >= 0 for p in problems if p.op is Operator.SUB)
    negative = ArithmeticTask(ArithmeticConfig(operators=(Operator.SUB,)), allow_negative=True)
    assert any(negative.sample(rng).answer < 0 for _ in range(500))
    default = [ArithmeticTask().sample(rng) for _ in range(3000)]
    carries = sum((p.a % 10) + (p.b % 10) >= 10 for p in default) / len(default)
    assert 0.3 < carries < 0.6  # many problems need a carry in the last column
    for bad in (dict(min_digits=0), dict(min_digits=3, max_digits=2), dict(operators=()), dict(heldout_fraction=0.0)):
        with pytest.raises(ValueError):
            ArithmeticConfig(**bad)
    with pytest.raises(ValueError, match="distinct heldout"):
        ArithmeticTask(ArithmeticConfig(max_digits=1)).problems("heldout", 60, seed=0)


@pytest.mark.parametrize("reverse", [False, True])
def test_records_sft_examples_and_verifier_agree(reverse):
    task = ArithmeticTask(ArithmeticConfig(reverse_answer=reverse, operators=tuple(Operator)), allow_negative=True)
    verifier = get_verifier(task.verifier_name)
    tok = task.tokenizer
    for problem in task.problems("train", 300, seed=7):
        record = task.record(problem, "train")
        assert render_prompt(record, TemplateKind.PLAIN) == problem.prompt
        assert record.ground_truth == str(problem.answer)
        ids, mask = task.sft_example(problem)
        assert len(ids) == len(mask) and ids[-1] == tok.eos_token_id
        response = tok.decode([i for i, m in zip(ids, mask) if m])
        assert response == problem.target(reverse)
        assert verifier(response, record.ground_truth).reason is Reason.CORRECT
        assert tok.decode(ids) == problem.prompt + response
        wrong = format_answer(problem.answer + 1, reverse)
        assert verifier(wrong, record.ground_truth).reason is Reason.WRONG


def test_records_carry_the_split_and_verifier():
    task = ArithmeticTask()
    records = task.records("heldout", 10, seed=0)
    assert all(r.meta["split"] == "heldout" and r.verifier == "arithmetic" for r in records)
    assert all(r.source == "arithmetic" and isinstance(r.prompt, str) for r in records)


def test_format_answer():
    assert format_answer(120) == "120"
    assert format_answer(120, reverse=True) == "021"
    assert format_answer(-25, reverse=True) == "-52"


@pytest.mark.parametrize(
    "a, b, carryless, carry",
    [(58, 67, 15, True), (9, 991, 990, True), (12, 34, 46, False), (0, 0, 0, False), (5, 5, 0, True), (99, 1, 90, True)],
)
def test_carryless_answer_is_digitwise_mod_10(a, b, carryless, carry):
    p = ArithmeticProblem(a, Operator.ADD, b)
    assert p.carryless_answer == carryless and p.has_carry is carry
    with pytest.raises(ValueError, match="defined for '\\+'"):
        ArithmeticProblem(a, Operator.SUB, b).carryless_answer


@pytest.mark.parametrize("reverse", [False, True])
def test_flawed_teacher_drops_carries_at_its_rate(reverse):
    task = ArithmeticTask(ArithmeticConfig(max_digits=2, heldout_fraction=0.1, teacher_carry_drop=0.6,
                                           reverse_answer=reverse))
    tok, rng = task.tokenizer, random.Random(0)
    problems = [p for p in task.problems("train", 4000, seed=3) if p.has_carry]
    dropped = 0
    for p in problems:
        ids, mask = task.sft_example(p, rng)
        response = tok.decode([i for i, m in zip(ids, mask) if m])
        assert response in (p.target(reverse), format_answer(p.carryless_answer, reverse))
        dropped += response != p.target(reverse)
    # Binomial(n, 0.6): 4 standard deviations either side.
    n = len(problems)
    assert abs(dropped - 0.6 * n) < 4 * (n * 0.6 * 0.4) ** 0.5
    # No rng, or a problem without carries: the demonstration is exact.
    p = next(q for q in problems)
    assert tok.decode([i for i, m in zip(*task.sft_example(p)) if m]) == p.target(reverse)
    plain = ArithmeticProblem(12, Operator.ADD, 34)
    assert all(tok.decode([i for i, m in zip(*task.sft_example(plain, rng)) if m]) == "46"[:: -1 if reverse else 1]
               for _ in range(20))


@pytest.mark.parametrize("bad", [{"teacher_carry_drop": -0.1}, {"teacher_carry_drop": 1.5},
                                 {"teacher_carry_drop": 0.5, "operators": (Operator.SUB,)}])
def test_flawed_teacher_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match="teacher_carry_drop"):
        ArithmeticConfig(**bad)
