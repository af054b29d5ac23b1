"""A hand-written table of verifier cases: equivalent forms, wrong, missing, adversarial."""

import time

import pytest

from nemo_gift.rewards import Reason
from tests.unit.rewards.conftest import CALL_BOUND_S, PATIENT_TIMEOUT_S

C, W, N, T, E = Reason.CORRECT, Reason.WRONG, Reason.NO_ANSWER, Reason.TIMEOUT, Reason.ERROR

GSM8K = [
    ("plain", "So the total is 72.\n#### 72", "72", C),
    ("thousands separator", "#### 1,000", "1000", C),
    ("dollar sign", "#### $18", "18", C),
    ("trailing zeros", "#### 18.00", "18", C),
    ("negative", "#### -5", "-5", C),
    ("no space", "####72 apples", "72", C),
    ("next line", "####\n72", "72", C),
    ("gold is a full solution", "#### 72", "He has 8 * 9 = <<8*9=72>>72.\n#### 72", C),
    ("last marker wins", "#### 7\nwait, I meant\n#### 72", "72", C),
    ("wrong number", "#### 71", "72", W),
    ("last marker is wrong", "#### 72\nno:\n#### 7", "72", W),
    ("huge number", "#### " + "9" * 5000, "72", W),
    ("no marker", "The answer is 72.", "72", N),
    ("marker without number", "#### seventy-two", "72", N),
    ("unusable gold", "#### 1", "one half", E),
]

MATH = [
    ("identical", "so $\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}", C),
    ("decimal vs fraction", "\\boxed{0.5}", "\\frac{1}{2}", C),
    ("dfrac shorthand", "\\boxed{\\dfrac12}", "\\frac{1}{2}", C),
    ("unreduced fraction", "\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", C),
    ("slash fraction", "\\boxed{1/2}", "\\frac{1}{2}", C),
    ("nested braces", "\\boxed{\\frac{\\frac{1}{2}}{2}}", "\\frac14", C),
    ("sqrt forms", "\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", C),
    ("expanded polynomial", "\\boxed{x^2+2x+1}", "(x+1)^2", C),
    ("interval", "\\boxed{(-2, 2)}", "(-2,2)", C),
    ("set order", "\\boxed{2, 0}", "0, 2", C),
    ("left right", "\\boxed{\\left( 2, 2 \\right)}", "(2, 2)", C),
    ("degrees", "\\boxed{70^\\circ}", "70", C),
    ("pi", "\\boxed{9\\pi}", "9\\pi", C),
    ("assignment", "\\boxed{x=5}", "5", C),
    ("thousands", "\\boxed{1,000}", "1000", C),
    ("bare boxed", "the answer is \\boxed 5", "5", C),
    ("fbox", "\\fbox{5}", "5", C),
    ("last box wins", "first \\boxed{3}, finally \\boxed{5}", "5", C),
    ("gold is a full solution", "\\boxed{12}", "Hence the answer is $\\boxed{12}$.", C),
    ("wrong fraction", "\\boxed{1/3}", "\\frac{1}{2}", W),
    ("closed vs open interval", "\\boxed{[-2, 2]}", "(-2,2)", W),
    ("rounded pi", "\\boxed{28.27}", "9\\pi", W),
    ("division by zero", "\\boxed{\\frac{1}{0}}", "1", W),
    ("malformed latex", "\\boxed{\\frac{1}{}}", "1", W),
    ("huge integer", "\\boxed{" + "9" * 400 + "}", "9", W),
    ("deep braces", "\\boxed{" + "{" * 40 + "1" + "}" * 40 + "}", "1", W),
    ("deep parentheses", "\\boxed{" + "(" * 12 + "1" + ")" * 12 + "}", "1", W),
    ("very long answer", "\\boxed{" + "x+" * 400 + "x}", "x", W),
    ("tower of powers", "\\boxed{2^{2^{64}}}", "1", T),
    ("power tower of tens", "\\boxed{10^{10^{10}}}", "5", T),
    ("no box", "the answer is 5", "5", N),
    ("unclosed box", "\\boxed{5", "5", N),
    ("empty box", "\\boxed{}", "5", N),
]

DAPO = [
    ("plain", "Some work.\nAnswer: 34", "34", C),
    ("dollars", "Answer: $34$", "34", C),
    ("bold", "**Answer:** 34", "34", C),
    ("lower case and period", "answer: 34.", "34", C),
    ("boxed inside", "Answer: \\boxed{34}", "34", C),
    ("fraction", "Answer: \\frac{68}{2}", "34", C),
    ("slash vs frac", "Answer: 1/2", "\\frac{1}{2}", C),
    ("last line wins", "Answer: 3\nHmm.\nAnswer: 34", "34", C),
    ("wrong", "Answer: 35", "34", W),
    ("deep braces", "Answer: " + "{" * 30 + "34" + "}" * 30, "34", W),
    ("tower", "Answer: 2^{2^{64}}", "34", T),
    ("no answer line", "The result is 34.", "34", N),
    ("empty answer line", "Answer:\n", "34", N),
    ("answer word without colon, long spaces", "answer" + " " * 100_000 + "34", "34", N),
]

AIME = [
    ("boxed", "\\boxed{33}", "33", C),
    ("leading zeros", "\\boxed{033}", "33", C),
    ("answer line, gold with zeros", "Answer: 033", "033", C),
    ("text wrapper", "\\boxed{\\text{33}}", "33", C),
    ("later answer line wins", "\\boxed{12}\nAnswer: 33", "33", C),
    ("later box wins", "Answer: 12\nso \\boxed{33}", "33", C),
    ("wrong", "\\boxed{34}", "33", W),
    ("out of range", "\\boxed{1033}", "33", W),
    ("negative", "\\boxed{-33}", "33", W),
    ("not an integer", "\\boxed{33.5}", "33", W),
    ("huge integer", "\\boxed{" + "9" * 10_000 + "}", "33", W),
    ("no answer", "I think it is 33", "33", N),
    ("unusable gold", "\\boxed{1}", "1000", E),
]

ARITHMETIC = [
    ("arithmetic", "exact", "579", "579", C),
    ("arithmetic", "whitespace", " 579 ", "579", C),
    ("arithmetic", "eos marker kept", "579<eos>12", "579", C),
    ("arithmetic", "negative", "-12", "-12", C),
    ("arithmetic", "wrong", "578", "579", W),
    ("arithmetic", "huge", "9" * 10_000, "579", W),
    ("arithmetic", "empty", "", "579", N),
    ("arithmetic", "junk", "57a", "579", N),
    ("arithmetic_reversed", "reversed", "975", "579", C),
    ("arithmetic_reversed", "reversed with zero", "021", "120", C),
    ("arithmetic_reversed", "not reversed", "579", "579", W),
]

TABLE = (
    [("gsm8k", *row) for row in GSM8K]
    + [("math", *row) for row in MATH]
    + [("dapo", *row) for row in DAPO]
    + [("aime", *row) for row in AIME]
    + ARITHMETIC
)


def test_table_is_big_enough():
    assert len(TABLE) >= 60
    assert {row[0] for row in TABLE} == {"gsm8k", "math", "dapo", "aime", "arithmetic", "arithmetic_reversed"}
    for reason in Reason:
        assert any(row[4] is reason for row in TABLE), reason


@pytest.mark.parametrize("name,case,response,gold,expected", TABLE, ids=[f"{r[0]}-{r[1]}" for r in TABLE])
def test_verifier_case(verifiers, patient_verifiers, name, case, response, gold, expected):
    verifier = (verifiers if expected is Reason.TIMEOUT else patient_verifiers)[name]
    start = time.monotonic()
    result = verifier(response, gold)
    elapsed = time.monotonic() - start
    assert result.reason is expected, (case, result)
    assert result.reward == (1.0 if expected is Reason.CORRECT else 0.0)
    bound = CALL_BOUND_S if expected is Reason.TIMEOUT else PATIENT_TIMEOUT_S + CALL_BOUND_S
    assert elapsed < bound, f"{case}: took {elapsed:.2f}s"
    if expected is Reason.NO_ANSWER:
        assert result.extracted is None or result.detail == "not_an_integer"
    else:
        assert result.extracted is not None and len(result.extracted) <= 220


def test_batch_matches_single_calls(patient_verifiers):
    rows = [row for row in TABLE if row[0] == "math" and row[4] is not Reason.TIMEOUT]
    verifier = patient_verifiers["math"]
    batch = verifier.verify_batch([r[2] for r in rows], [r[3] for r in rows])
    assert [b.reason for b in batch] == [r[4] for r in rows]
