"""The one record type every dataset is normalized into, and the loader errors."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

ChatMessage = dict[str, str]
"""``{"role": "system" | "user" | "assistant", "content": str}``."""


class DatasetName(str, enum.Enum):
    """The schemas the loaders know (see `nemo_gift.data.loaders`), and the run config's
    ``data.dataset`` choices."""

    ARITHMETIC = "arithmetic"
    """The synthetic CPU task (generated, not loaded)."""
    GSM8K = "gsm8k"
    MATH = "math"
    """MATH-lighteval."""
    DAPO = "dapo"
    """DAPO-Math-17k."""
    AIME = "aime"
    """AIME 2024."""
    INFINITY_INSTRUCT = "infinity_instruct"

    def __str__(self) -> str:  # the value in messages (``data.dataset=gsm8k``), as a Literal would print
        return self.value

    @property
    def verifier(self) -> str | None:
        """The verifier that scores this dataset's records (a `nemo_gift.rewards` registry name;
        the synthetic task's reversed and scratchpad variants have their own), unless the run's
        ``reward.verifier`` names another; None: no rule scores them (a reward model does)."""
        return _VERIFIERS.get(self)


_VERIFIERS = {DatasetName.ARITHMETIC: "arithmetic", DatasetName.GSM8K: "gsm8k", DatasetName.MATH: "math",
              DatasetName.DAPO: "dapo", DatasetName.AIME: "aime"}


@dataclass(frozen=True)
class PromptRecord:
    """One prompt, normalized across datasets.

    Attributes:
        prompt: a chat (list of messages; the last one is the user's) or, for plain
            templates such as the synthetic task, the exact prompt string.
        ground_truth: the reference answer as the verifier expects it (``"72"``,
            ``"\\frac{1}{2}"``), or ``""`` where a reward model scores instead.
        source: the dataset, a `DatasetName` value.
        verifier: the registry name of the verifier (`nemo_gift.rewards.get_verifier`),
            or None for reward-model data.
        meta: anything else worth keeping (ids, level, the reference solution, the
            file and 1-based row it came from).
    """

    prompt: str | list[ChatMessage]
    ground_truth: str
    source: str
    verifier: str | None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.prompt, str):
            if not self.prompt:
                raise ValueError("PromptRecord.prompt is empty")
        elif not self.prompt or any(set(m) != {"role", "content"} for m in self.prompt):
            raise ValueError("PromptRecord.prompt must be a non-empty list of {'role', 'content'} messages")

    @property
    def messages(self) -> list[ChatMessage]:
        """The prompt as chat messages (a plain string becomes one user message)."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [dict(m) for m in self.prompt]

    def dedupe_key(self) -> tuple[Any, ...]:
        prompt = self.prompt if isinstance(self.prompt, str) else tuple((m["role"], m["content"]) for m in self.prompt)
        return (prompt, self.ground_truth)


class DatasetError(ValueError):
    """A dataset could not be loaded."""


class EmptyDatasetError(DatasetError):
    """A dataset (or what is left of it after filtering) has no rows."""


class DatasetFormatError(DatasetError):
    """A row does not match the schema.

    The message names the file, the 1-based row number (the line number for
    JSONL) and the field, e.g. ``gsm8k.jsonl: row 7: field 'answer': no '####' ...``.
    """

    def __init__(self, source: str, row: int | None, field_name: str | None, problem: str) -> None:
        self.source = source
        self.row = row
        self.field = field_name
        self.problem = problem
        where = source
        if row is not None:
            where += f": row {row}"
        if field_name is not None:
            where += f": field {field_name!r}"
        super().__init__(f"{where}: {problem}")
