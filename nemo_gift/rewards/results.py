"""Verifier results, the `Verifier` contract, and reason counters for metrics.

Every verifier returns one `VerifyResult` per (response, ground truth) pair. The
`reason` says why the reward is what it is, so a run can tell a model that answers
wrongly from one that never produces a parsable answer, and both from a verifier
that timed out. `ReasonCounter` turns a batch of results into flat metrics.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class Reason(str, enum.Enum):
    """Why a verifier gave its reward."""

    CORRECT = "correct"
    """An answer was found and is equivalent to the ground truth."""
    WRONG = "wrong"
    """An answer was found and is not equivalent (or is too large or deep to check; see `detail`)."""
    NO_ANSWER = "no_answer"
    """No answer in the expected format (no ``\\boxed{}``, ``####``, ``Answer:`` ...)."""
    TIMEOUT = "timeout"
    """The equivalence check ran past its per-call timeout; the worker was stopped or killed."""
    ERROR = "error"
    """The equivalence check failed in an unexpected way (a crashed worker, an unparsable ground truth)."""


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of verifying one response.

    Attributes:
        reward: the scalar reward, ``correct_reward`` when ``reason`` is CORRECT and
            ``incorrect_reward`` for every other reason.
        reason: why.
        extracted: the answer string taken from the response, or None if none was found.
            It is clipped to a bounded length so that results stay cheap to log.
        detail: a short machine-readable note for debugging (e.g. ``"too_long"``), or None.
    """

    reward: float
    reason: Reason
    extracted: str | None = None
    detail: str | None = None

    @property
    def is_correct(self) -> bool:
        return self.reason is Reason.CORRECT


@runtime_checkable
class Verifier(Protocol):
    """The contract every verifier fulfils. The trainer calls `verify_batch` once per rollout step.

    Implementations never ``eval``/``exec`` model output, never raise on any response
    string, and return within a bounded time per pair.
    """

    name: str

    def __call__(self, response: str, ground_truth: str) -> VerifyResult:
        """Verify one response against its ground truth."""
        ...

    def verify_batch(self, responses: Sequence[str], ground_truths: Sequence[str]) -> list[VerifyResult]:
        """Verify ``responses[i]`` against ``ground_truths[i]``; both of length N, returns N results."""
        ...


def verify_batch(verifier: Verifier, responses: Sequence[str], ground_truths: Sequence[str]) -> list[VerifyResult]:
    """Check the argument lengths, then run ``verifier.verify_batch``.

    Args:
        verifier: any `Verifier`.
        responses: N decoded responses (without the prompt).
        ground_truths: N ground-truth strings, as normalized by the data loaders.

    Returns:
        N results, in order.
    """
    if len(responses) != len(ground_truths):
        raise ValueError(f"verify_batch: {len(responses)} responses but {len(ground_truths)} ground truths")
    return verifier.verify_batch(list(responses), list(ground_truths))


def rewards_of(results: Iterable[VerifyResult]) -> list[float]:
    """The reward of each result, in order."""
    return [r.reward for r in results]


@dataclass
class ReasonCounter:
    """Counts results by reason, across any number of batches.

    Example::

        counter = ReasonCounter()
        counter.update(results)
        logger.log(counter.as_metrics(prefix="train/verifier"))
        # {"train/verifier/correct": 12, ..., "train/verifier/correct_frac": 0.375, "train/verifier/total": 32}
    """

    counts: dict[Reason, int] = field(default_factory=lambda: {r: 0 for r in Reason})

    def update(self, results: Iterable[VerifyResult]) -> ReasonCounter:
        for r in results:
            self.counts[r.reason] += 1
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_metrics(self, prefix: str = "verifier") -> dict[str, float]:
        """Flat metrics: a count and a fraction per reason, and the total."""
        total = self.total
        out: dict[str, float] = {f"{prefix}/total": float(total)}
        for reason in Reason:
            n = self.counts[reason]
            out[f"{prefix}/{reason.value}"] = float(n)
            out[f"{prefix}/{reason.value}_frac"] = n / total if total else 0.0
        return out

    def reset(self) -> None:
        for r in Reason:
            self.counts[r] = 0


def count_reasons(results: Iterable[VerifyResult]) -> dict[Reason, int]:
    """How many results carry each reason (every reason present, zero included)."""
    return dict(ReasonCounter().update(results).counts)
