"""Hypothesis fuzz: at least 2,000 random responses per verifier, no exception, no hang.

The strings mix free unicode text with LaTeX-token soup placed where each
verifier looks (inside ``\\boxed{}``, after ``####`` or ``Answer:``), so that
the extraction code and the math-verify worker both see hostile input.
"""

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nemo_gift.rewards import Reason, VerifyResult
from tests.unit.rewards.conftest import CALL_BOUND_S

EXAMPLES = 2000
LATEX_TOKENS = [
    "\\frac", "\\dfrac", "\\sqrt", "\\boxed", "\\fbox", "\\left(", "\\right)", "\\left", "\\right", "\\pi",
    "\\infty", "\\cdot", "\\times", "\\text", "\\{", "\\}", "\\\\", "{", "}", "(", ")", "[", "]", "^", "_",
    "^{", "=", "+", "-", "/", ",", ".", "!", "%", "$", "$$", "x", "y", "n", "e", "i", "0", "1", "2", "9",
    "10", "999999999999", " ", "\n", "####", "Answer:", "answer :", "**Answer:**", "<eos>", "\\in", "\\cup",
    "\\le", "<", ">", "\\sin", "\\log", "\\int", "dx", "\\sum_{k=1}^{n}", "\\begin{pmatrix}", "\\end{pmatrix}", "&",
]
latex_soup = st.lists(st.sampled_from(LATEX_TOKENS), max_size=40).map("".join)
free_text = st.text(max_size=120)
any_text = st.one_of(free_text, latex_soup)
responses = st.one_of(
    free_text,
    latex_soup,
    any_text.map(lambda s: "\\boxed{" + s + "}"),
    any_text.map(lambda s: "Reasoning...\n#### " + s),
    any_text.map(lambda s: "Reasoning...\nAnswer: " + s),
    st.tuples(any_text, any_text).map(lambda p: p[0] + "\\boxed{" + p[1]),
)
GOLDS = {
    "gsm8k": "72",
    "math": "\\frac{\\sqrt{3}}{2}",
    "dapo": "34",
    "aime": "33",
    "arithmetic": "579",
    "arithmetic_reversed": "579",
}


def _check(result: VerifyResult) -> None:
    assert isinstance(result, VerifyResult)
    assert isinstance(result.reason, Reason)
    assert result.reward in (0.0, 1.0)
    assert result.extracted is None or len(result.extracted) <= 220


@pytest.mark.timeout(300)
def test_fuzz_verifiers_never_raise_or_hang(verifiers, mv_pool):
    """Each generated string goes through every verifier: EXAMPLES (2,000) strings per verifier."""
    counts = {name: 0 for name in GOLDS}
    spent = {name: 0.0 for name in GOLDS}
    slowest = {name: 0.0 for name in GOLDS}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(responses)
    def run(response):
        for name, gold in GOLDS.items():
            start = time.monotonic()
            _check(verifiers[name](response, gold))
            elapsed = time.monotonic() - start
            assert elapsed < CALL_BOUND_S, f"{name}: {elapsed:.2f}s on {response[:80]!r}"
            counts[name] += 1
            spent[name] += elapsed
            slowest[name] = max(slowest[name], elapsed)

    start = time.monotonic()
    run()
    print(f"\nfuzz: {time.monotonic() - start:.1f}s in all; pool: {mv_pool.stats}")
    for name in GOLDS:
        print(f"  {name}: {counts[name]} strings, {spent[name]:.2f}s in it, slowest {slowest[name] * 1000:.0f} ms")
    assert all(n >= EXAMPLES for n in counts.values()), counts


@pytest.mark.timeout(120)
def test_fuzz_batch_with_random_golds(verifiers):
    """Random ground truths too (a corrupt dataset must not crash the verifier either)."""

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(st.lists(st.tuples(responses, any_text), min_size=1, max_size=8))
    def run(pairs):
        for verifier in verifiers.values():
            results = verifier.verify_batch([p[0] for p in pairs], [p[1] for p in pairs])
            assert len(results) == len(pairs)
            for r in results:
                _check(r)

    run()
