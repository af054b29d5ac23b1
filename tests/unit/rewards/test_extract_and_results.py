"""Extraction helpers, results, reason counters and the verifier registry."""

import time

import pytest

from nemo_gift.rewards import (
    Reason,
    ReasonCounter,
    Verifier,
    VerifierConfig,
    VerifyResult,
    count_reasons,
    get_verifier,
    register_verifier,
    verifier_names,
    verify_batch,
)
from nemo_gift.rewards import extract as ex


@pytest.mark.parametrize(
    "text,expected",
    [
        ("\\boxed{5}", "5"),
        ("a \\boxed{1} b \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not nest
        ("\\boxed{a}}}", "a"),
        ("\\boxed  {7}", "7"),
        ("\\boxed 42 more", "42"),
        ("\\fbox{3}", "3"),
        ("\\boxed{1} and then \\boxed{2", None),  # a truncated last box
        ("no box", None),
        ("\\boxed", None),
        ("\\boxed{" + "{" * 5000 + "}" * 5000 + "}", "{" * 5000 + "}" * 5000),
    ],
)
def test_find_last_boxed(text, expected):
    assert ex.find_last_boxed(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("72", "72"), ("-0", "0"), ("007", "7"), ("1,234.50", "1234.5"), ("+3.000", "3"), (".5", "0.5"),
        ("5.", "5"), ("\u22124", "-4"), ("1,23", None), ("1e5", None), ("", None), (".", None), ("x", None),
        ("9" * 10_000, "9" * 10_000),
    ],
)
def test_canonical_decimal(text, expected):
    assert ex.canonical_decimal(text) == expected


def test_canonical_integer_range():
    assert ex.canonical_integer("033", 0, 999) == "33"
    assert ex.canonical_integer("1000", 0, 999) is None
    assert ex.canonical_integer("9" * 5000, 0, 999) is None  # no int() of a long digit string
    assert ex.canonical_integer("3.5") is None


def test_strip_wrappers_and_normalize():
    assert ex.strip_wrappers(" $\\boxed{\\text{12}}$. ") == "12"
    assert ex.strip_wrappers("\\(x\\)") == "x"
    assert ex.light_latex_normalize("\\left( \\dfrac{1}{2}, 3 \\right)") == "(\\frac{1}{2},3)"
    assert ex.light_latex_normalize("90^{\\circ}") == "90"


def test_answer_lines():
    assert ex.answer_line_extract("x\n**Answer:** $5$\n") == "5"
    assert ex.answer_line_extract("Final answer : 7") == "7"  # DAPO allows spaces before the colon
    assert ex.answer_line_extract("the answer is 7") is None
    assert ex.answer_line_extract("ANSWER: 7") == "7"
    assert ex.boxed_or_answer_line_extract("Answer: 3 then \\boxed{4}") == "4"
    assert ex.boxed_or_answer_line_extract("\\boxed{4}\nAnswer: 3") == "3"


def test_extraction_is_linear_on_hostile_input():
    hostile = [
        "answer" + " " * 200_000,
        "####" + "," * 200_000,
        "\\boxed{" * 50_000,
        "1," * 100_000,
        "Answer:" * 30_000,
    ]
    for text in hostile:
        start = time.monotonic()
        ex.gsm8k_extract(text)
        ex.answer_line_extract(text)
        ex.boxed_or_answer_line_extract(text)
        ex.group_depth(text)
        ex.canonical_decimal(text)
        assert time.monotonic() - start < 5.0, text[:20]  # ~50 ms idle; quadratic would take minutes


def test_clip():
    assert ex.clip("abc") == "abc"
    assert ex.clip("a" * 500).endswith("[clipped]") and len(ex.clip("a" * 500)) < 220


def test_reason_counter_metrics():
    results = [
        VerifyResult(1.0, Reason.CORRECT),
        VerifyResult(0.0, Reason.WRONG, "3"),
        VerifyResult(0.0, Reason.TIMEOUT, "x"),
        VerifyResult(1.0, Reason.CORRECT),
    ]
    counter = ReasonCounter().update(results).update([VerifyResult(0.0, Reason.NO_ANSWER)])
    metrics = counter.as_metrics(prefix="train/verifier")
    assert metrics["train/verifier/total"] == 5
    assert metrics["train/verifier/correct"] == 2 and metrics["train/verifier/correct_frac"] == pytest.approx(0.4)
    assert metrics["train/verifier/timeout"] == 1 and metrics["train/verifier/error"] == 0
    assert count_reasons(results)[Reason.WRONG] == 1
    counter.reset()
    assert counter.total == 0 and ReasonCounter().as_metrics()["verifier/correct_frac"] == 0.0


def test_registry(mv_pool):
    assert {"gsm8k", "math", "dapo", "aime", "arithmetic", "arithmetic_reversed"} <= set(verifier_names())
    for name in verifier_names():
        v = get_verifier(name, pool=mv_pool)
        assert isinstance(v, Verifier) and v.name == name
    with pytest.raises(ValueError, match="unknown verifier"):
        get_verifier("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_verifier("gsm8k", lambda config=None, pool=None: None)


def test_custom_rewards_and_batch_helper(mv_pool):
    v = get_verifier("gsm8k", config=VerifierConfig(correct_reward=1.0, incorrect_reward=-1.0))
    results = verify_batch(v, ["#### 3", "#### 4", "none"], ["3", "3", "3"])
    assert [r.reward for r in results] == [1.0, -1.0, -1.0]
    with pytest.raises(ValueError, match="ground truths"):
        verify_batch(v, ["a"], [])
    with pytest.raises(ValueError):
        VerifierConfig(timeout_s=0)
