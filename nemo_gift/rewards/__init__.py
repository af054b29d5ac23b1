"""Explicit rewards for GIFT: rule-based verifiers and reward-model scoring.

- `get_verifier(name)`: ``gsm8k``, ``math``, ``dapo``, ``aime``, ``arithmetic``,
  ``arithmetic_reversed``; each returns `VerifyResult(reward, reason, extracted, detail)`.
- `MathEquivalencePool`: math-verify in worker processes with a hard timeout.
- `ReasonCounter`: reasons as metrics.
- `RewardModelScorer` (imports torch; loaded on first access): a sequence classifier
  with the chat template, optional score / sqrt(|y|), NaN refusal.

See docs/rewards-and-data.md.
"""

from typing import Any

from nemo_gift.rewards.equivalence import (
    EquivStatus,
    Equivalence,
    MathEquivalencePool,
    WorkerStartupError,
    get_default_pool,
    set_default_pool,
)
from nemo_gift.rewards.results import Reason, ReasonCounter, Verifier, VerifyResult, count_reasons, verify_batch
from nemo_gift.rewards.verifiers import (
    AIMEVerifier,
    DAPOVerifier,
    GSM8KVerifier,
    MathVerifier,
    VerifierConfig,
    VerifierName,
    get_verifier,
    register_verifier,
    verifier_names,
)

_LAZY = {"RewardModelScorer", "RewardModelConfig", "RewardScores", "NonFinitePolicy", "NonFiniteScoreError"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from nemo_gift.rewards import reward_model

        return getattr(reward_model, name)
    raise AttributeError(f"module 'nemo_gift.rewards' has no attribute {name!r}")


__all__ = [
    "AIMEVerifier",
    "DAPOVerifier",
    "EquivStatus",
    "Equivalence",
    "GSM8KVerifier",
    "MathEquivalencePool",
    "MathVerifier",
    "Reason",
    "ReasonCounter",
    "Verifier",
    "VerifierConfig",
    "VerifierName",
    "VerifyResult",
    "WorkerStartupError",
    "count_reasons",
    "get_default_pool",
    "get_verifier",
    "register_verifier",
    "set_default_pool",
    "verifier_names",
    "verify_batch",
    *sorted(_LAZY),
]
