"""The verifier of the synthetic arithmetic task (:mod:`nemo_gift.data.synthetic`): an exact
integer match, with the reversed-digit and scratchpad answer formats."""

from __future__ import annotations

import re
from collections.abc import Sequence

from nemo_gift.rewards.extract import canonical_integer, clip
from nemo_gift.rewards.results import Reason, VerifyResult

_INTEGER_RE = re.compile(r"-?[0-9]+")


class ArithmeticVerifier:
    """Exact integer match of the response, read up to EOS, with the ground truth.

    The response is the decoded text before EOS (a literal ``"<eos>"`` left by a
    decode that kept special tokens also ends it), stripped of surrounding
    whitespace. With ``final_field_only`` (the scratchpad format) only its last
    space-separated field is read: ``"521 125"`` answers 125 whatever comes before
    it. Empty or not an integer: NO_ANSWER. With ``reverse_answer``, the
    digits are un-reversed first (``"-52"`` -> -25). Ground truths are canonical
    integers. No integer conversion of long strings; no timeout needed.
    """

    def __init__(
        self, reverse_answer: bool = False, correct_reward: float = 1.0, incorrect_reward: float = 0.0,
        final_field_only: bool = False,
    ) -> None:
        self.reverse_answer = reverse_answer
        self.final_field_only = final_field_only
        base = "arithmetic_scratchpad" if final_field_only else "arithmetic"
        self.name = f"{base}_reversed" if reverse_answer else base
        self.correct_reward = correct_reward
        self.incorrect_reward = incorrect_reward

    def _result(self, reason: Reason, extracted: str | None, detail: str | None = None) -> VerifyResult:
        reward = self.correct_reward if reason is Reason.CORRECT else self.incorrect_reward
        return VerifyResult(reward, reason, clip(extracted), detail)

    def __call__(self, response: str, ground_truth: str) -> VerifyResult:
        text = str(response).split("<eos>", 1)[0].strip()
        if self.final_field_only:
            text = text.rsplit(" ", 1)[-1]
        if not text:
            return self._result(Reason.NO_ANSWER, None)
        if _INTEGER_RE.fullmatch(text) is None:
            return self._result(Reason.NO_ANSWER, text, "not_an_integer")
        gold = canonical_integer(str(ground_truth))
        if gold is None:
            return self._result(Reason.ERROR, text, "gold_unparsable")
        if self.reverse_answer:
            sign, digits = ("-", text[1:]) if text.startswith("-") else ("", text)
            value = canonical_integer(sign + digits[::-1])
        else:
            value = canonical_integer(text)
        return self._result(Reason.CORRECT if value == gold else Reason.WRONG, text)

    def verify_batch(self, responses: Sequence[str], ground_truths: Sequence[str]) -> list[VerifyResult]:
        if len(responses) != len(ground_truths):
            raise ValueError(f"{self.name}: {len(responses)} responses but {len(ground_truths)} ground truths")
        return [self(r, g) for r, g in zip(responses, ground_truths)]
