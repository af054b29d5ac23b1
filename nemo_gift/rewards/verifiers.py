"""Rule-based verifiers for GSM8K, MATH, DAPO-Math and AIME, and a registry by name.

| name    | answer format in the response                           | equivalence                          |
|---------|---------------------------------------------------------|--------------------------------------|
| gsm8k   | ``#### 42`` (last ``####``, first number on its line)   | exact decimal (``1,000`` = ``1000.0``) |
| math    | last ``\\boxed{...}`` (nested braces)                     | math-verify, in a worker process     |
| dapo    | last ``Answer: ...`` line                               | math-verify, in a worker process     |
| aime    | later of last ``\\boxed{}`` / ``Answer:``; integer 0-999  | exact integer (``033`` = ``33``)      |

Order of checks for ``math`` and ``dapo`` (cheapest first): no answer -> NO_ANSWER;
identical after a light LaTeX normalization -> CORRECT; both plain decimals ->
exact decimal comparison; longer than ``max_answer_chars`` or nested deeper than
``max_group_depth`` -> WRONG (``detail="too_complex"``, sympy is never called:
such inputs are how sympy hangs, and no reference answer looks like that);
otherwise math-verify in a `MathEquivalencePool` with a hard timeout.

Rewards: ``correct_reward`` for CORRECT, ``incorrect_reward`` for every other
reason. GIFT and GRPO normalize rewards within a group, so only the reasons
matter to them; DAPO's recipe uses (1, -1).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nemo_gift.rewards import extract as ex
from nemo_gift.rewards.arithmetic import ArithmeticVerifier
from nemo_gift.rewards.equivalence import EquivStatus, MathEquivalencePool, get_default_pool
from nemo_gift.rewards.results import Reason, Verifier, VerifyResult


class VerifierName(str, enum.Enum):
    GSM8K = "gsm8k"
    MATH = "math"
    DAPO = "dapo"
    AIME = "aime"
    ARITHMETIC = "arithmetic"
    """The synthetic CPU task (`nemo_gift.data.synthetic`), answers written normally."""
    ARITHMETIC_REVERSED = "arithmetic_reversed"
    """The synthetic CPU task with answers written least-significant digit first."""
    ARITHMETIC_SCRATCHPAD = "arithmetic_scratchpad"
    """The synthetic task's scratchpad format: only the response's last space-separated field is read."""
    ARITHMETIC_SCRATCHPAD_REVERSED = "arithmetic_scratchpad_reversed"
    """The scratchpad format with answers written least-significant digit first."""


@dataclass(frozen=True)
class VerifierConfig:
    """Settings shared by the rule-based verifiers."""

    correct_reward: float = 1.0
    """Reward for a CORRECT result."""
    incorrect_reward: float = 0.0
    """Reward for WRONG, NO_ANSWER, TIMEOUT and ERROR results."""
    timeout_s: float = 5.0
    """Hard timeout of one math-verify check, in seconds."""
    max_response_chars: int = 100_000
    """Only the last this-many characters of a response are searched for an answer."""
    max_answer_chars: int = 300
    """A longer extracted answer is WRONG (``too_complex``) without calling sympy."""
    max_group_depth: int = 10
    """An extracted answer with deeper ``() [] {}`` nesting is WRONG (``too_complex``) without sympy."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.max_response_chars <= 0 or self.max_answer_chars <= 0:
            raise ValueError(f"VerifierConfig: timeouts and limits must be positive: {self}")


class _RuleVerifier:
    """Shared plumbing: rewards from reasons, batch loops, the equivalence pool."""

    name: str = ""

    def __init__(self, config: VerifierConfig | None = None, pool: MathEquivalencePool | None = None) -> None:
        self.config = config or VerifierConfig()
        self._pool = pool

    @property
    def pool(self) -> MathEquivalencePool:
        return self._pool if self._pool is not None else get_default_pool()

    def result(self, reason: Reason, extracted: str | None, detail: str | None = None) -> VerifyResult:
        reward = self.config.correct_reward if reason is Reason.CORRECT else self.config.incorrect_reward
        return VerifyResult(reward=reward, reason=reason, extracted=ex.clip(extracted), detail=detail)

    def __call__(self, response: str, ground_truth: str) -> VerifyResult:
        return self.verify_batch([response], [ground_truth])[0]

    def verify_batch(self, responses: Sequence[str], ground_truths: Sequence[str]) -> list[VerifyResult]:
        if len(responses) != len(ground_truths):
            raise ValueError(f"{self.name}: {len(responses)} responses but {len(ground_truths)} ground truths")
        return [self._verify_one(str(r), str(g)) for r, g in zip(responses, ground_truths)]

    def _verify_one(self, response: str, ground_truth: str) -> VerifyResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


class GSM8KVerifier(_RuleVerifier):
    """``#### <number>``; exact decimal equality with the ground truth (commas and ``$`` ignored)."""

    name = VerifierName.GSM8K.value

    def _verify_one(self, response: str, ground_truth: str) -> VerifyResult:
        gold = ex.gsm8k_canonical(ex.gsm8k_extract(ground_truth) or ground_truth)
        found = ex.gsm8k_extract(ex.tail(response, self.config.max_response_chars))
        if found is None:
            return self.result(Reason.NO_ANSWER, None)
        if gold is None:
            return self.result(Reason.ERROR, found, "gold_unparsable")
        pred = ex.gsm8k_canonical(found)
        return self.result(Reason.CORRECT if pred == gold else Reason.WRONG, found)


class AIMEVerifier(_RuleVerifier):
    """An integer 0-999 from the last ``\\boxed{}`` or ``Answer:`` line; ``033`` equals ``33``."""

    name = VerifierName.AIME.value

    def _verify_one(self, response: str, ground_truth: str) -> VerifyResult:
        gold = ex.canonical_integer(ex.strip_wrappers(ground_truth), 0, 999)
        found = ex.boxed_or_answer_line_extract(ex.tail(response, self.config.max_response_chars))
        if found is None:
            return self.result(Reason.NO_ANSWER, None)
        if gold is None:
            return self.result(Reason.ERROR, found, "gold_unparsable")
        pred = ex.canonical_integer(ex.light_latex_normalize(found), 0, 999)
        if pred is None:
            return self.result(Reason.WRONG, found, "not_an_integer_0_999")
        return self.result(Reason.CORRECT if pred == gold else Reason.WRONG, found)


class _LatexVerifier(_RuleVerifier):
    """Extract with `_extract`, then the cheap shortcuts, then math-verify in batch."""

    def _extract(self, response: str) -> str | None:
        raise NotImplementedError

    def _gold(self, ground_truth: str) -> str:
        boxed = ex.find_last_boxed(ground_truth) if "\\boxed" in ground_truth else None
        return ex.strip_wrappers(boxed if boxed is not None else ground_truth)

    def _shortcut(self, pred: str, gold: str) -> VerifyResult | None:
        if not gold:
            return self.result(Reason.ERROR, pred, "gold_empty")
        if ex.light_latex_normalize(pred) == ex.light_latex_normalize(gold):
            return self.result(Reason.CORRECT, pred)
        pred_num, gold_num = ex.canonical_decimal(pred), ex.canonical_decimal(gold)
        if pred_num is not None and gold_num is not None:
            return self.result(Reason.CORRECT if pred_num == gold_num else Reason.WRONG, pred)
        if len(pred) > self.config.max_answer_chars or ex.group_depth(pred) > self.config.max_group_depth:
            return self.result(Reason.WRONG, pred, "too_complex")
        return None

    def verify_batch(self, responses: Sequence[str], ground_truths: Sequence[str]) -> list[VerifyResult]:
        if len(responses) != len(ground_truths):
            raise ValueError(f"{self.name}: {len(responses)} responses but {len(ground_truths)} ground truths")
        out: list[VerifyResult | None] = [None] * len(responses)
        pending: list[tuple[int, str, str]] = []  # (index, gold, pred)
        for i, (response, ground_truth) in enumerate(zip(responses, ground_truths)):
            pred = self._extract(ex.tail(str(response), self.config.max_response_chars))
            if pred is None:
                out[i] = self.result(Reason.NO_ANSWER, None)
                continue
            gold = self._gold(str(ground_truth))
            out[i] = self._shortcut(pred, gold)
            if out[i] is None:
                pending.append((i, gold, pred))
        if pending:
            checks = self.pool.check_many([(g, p) for _, g, p in pending], timeout_s=self.config.timeout_s)
            for (i, _, pred), check in zip(pending, checks):
                out[i] = self._from_check(pred, check.status, check.detail)
        return [r for r in out if r is not None]

    def _verify_one(self, response: str, ground_truth: str) -> VerifyResult:
        return self.verify_batch([response], [ground_truth])[0]

    def _from_check(self, pred: str, status: EquivStatus, detail: str | None) -> VerifyResult:
        if status is EquivStatus.EQUAL:
            return self.result(Reason.CORRECT, pred)
        if status is EquivStatus.NOT_EQUAL:
            return self.result(Reason.WRONG, pred)
        if status is EquivStatus.PRED_UNPARSABLE:
            return self.result(Reason.WRONG, pred, "pred_unparsable")
        if status is EquivStatus.GOLD_UNPARSABLE:
            return self.result(Reason.ERROR, pred, "gold_unparsable")
        if status is EquivStatus.TIMEOUT:
            return self.result(Reason.TIMEOUT, pred, detail)
        return self.result(Reason.ERROR, pred, detail)


class MathVerifier(_LatexVerifier):
    """The last ``\\boxed{...}``; math-verify equivalence. The ground truth may be a full solution."""

    name = VerifierName.MATH.value

    def _extract(self, response: str) -> str | None:
        boxed = ex.find_last_boxed(response)
        return None if boxed is None else (ex.strip_wrappers(boxed) or None)


class DAPOVerifier(_LatexVerifier):
    """The last ``Answer: ...`` line (DAPO's format); math-verify equivalence."""

    name = VerifierName.DAPO.value

    def _extract(self, response: str) -> str | None:
        return ex.answer_line_extract(response)


VerifierFactory = Callable[..., Verifier]

_REGISTRY: dict[str, VerifierFactory] = {
    VerifierName.GSM8K.value: GSM8KVerifier,
    VerifierName.MATH.value: MathVerifier,
    VerifierName.DAPO.value: DAPOVerifier,
    VerifierName.AIME.value: AIMEVerifier,
}


def _arithmetic(reverse: bool, final_field_only: bool = False) -> VerifierFactory:
    def make(config: VerifierConfig | None = None, pool: MathEquivalencePool | None = None) -> Verifier:
        config = config or VerifierConfig()
        return ArithmeticVerifier(
            reverse_answer=reverse, correct_reward=config.correct_reward, incorrect_reward=config.incorrect_reward,
            final_field_only=final_field_only,
        )

    return make


_REGISTRY[VerifierName.ARITHMETIC.value] = _arithmetic(False)
_REGISTRY[VerifierName.ARITHMETIC_REVERSED.value] = _arithmetic(True)
_REGISTRY[VerifierName.ARITHMETIC_SCRATCHPAD.value] = _arithmetic(False, final_field_only=True)
_REGISTRY[VerifierName.ARITHMETIC_SCRATCHPAD_REVERSED.value] = _arithmetic(True, final_field_only=True)


def register_verifier(name: str, factory: VerifierFactory, *, overwrite: bool = False) -> None:
    """Add a verifier factory ``factory(config=None, pool=None) -> Verifier`` under ``name``."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a verifier named {name!r} is already registered")
    _REGISTRY[name] = factory


def verifier_names() -> list[str]:
    return sorted(_REGISTRY)


def get_verifier(
    name: str | VerifierName, config: VerifierConfig | None = None, pool: MathEquivalencePool | None = None
) -> Verifier:
    """A new verifier by name (``gsm8k``, ``math``, ``dapo``, ``aime``, ``arithmetic``, ...)."""
    key = name.value if isinstance(name, VerifierName) else str(name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown verifier {key!r}; known: {', '.join(verifier_names())}")
    return _REGISTRY[key](config=config, pool=pool)
