"""Prompt templates and prompt-length filtering.

Two ways to turn a `PromptRecord` into the text the policy continues:

- ``CHAT``: the policy tokenizer's own chat template,
  ``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``.
  Its tokens are counted without adding special tokens (the template has them).
- ``PLAIN``: a fixed, documented template for models without one. A record whose
  prompt is a string is used verbatim (the synthetic task: ``"12+345="``). A chat
  becomes::

      System: <system content>

      User: <user content>

      Assistant: <assistant content>

      User: <user content>

      Assistant:

  (turns joined by a blank line, the text ends with ``"Assistant:"``). Its tokens
  are counted with the tokenizer's special tokens (e.g. BOS).

The instructions appended to questions by the loaders are here too, so a recipe
can see and override them.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nemo_gift.data.records import ChatMessage, EmptyDatasetError, PromptRecord

logger = logging.getLogger(__name__)

GSM8K_INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
"""Appended to GSM8K questions (the verifier reads ``#### <number>``)."""
BOXED_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
"""Appended to MATH and AIME problems (the verifiers read the last ``\\boxed{}``)."""
DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'
"""DAPO-Math-17k's own wording (its rows already contain it); use it for AIME when evaluating a DAPO-trained policy."""

PLAIN_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


class TemplateKind(str, enum.Enum):
    CHAT = "chat"
    """The tokenizer's chat template, with the generation prompt."""
    PLAIN = "plain"
    """The documented plain template above."""


class PromptTokenizer(Protocol):
    """What the templates need from a tokenizer (`transformers` tokenizers and `CharTokenizer` fit)."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...


def dapo_style(problem: str) -> str:
    """``problem`` wrapped in DAPO's instruction (the verifier then reads ``Answer: ...``)."""
    return DAPO_PREFIX + problem + DAPO_SUFFIX


def dapo_style_record(record: PromptRecord) -> PromptRecord:
    """A copy of ``record`` whose last user message is wrapped in DAPO's instruction.

    For AIME evaluation of a DAPO-trained policy: load with ``instruction=""``, then
    map this over the records (the ``aime`` verifier reads ``Answer:`` lines too).
    """
    messages = record.messages
    messages[-1] = {"role": messages[-1]["role"], "content": dapo_style(messages[-1]["content"])}
    return dataclasses.replace(record, prompt=messages, meta=dict(record.meta))


def with_instruction(question: str, instruction: str) -> str:
    """``question`` followed by ``instruction`` on a new line (no instruction if it is empty)."""
    return f"{question}\n{instruction}" if instruction else question


def render_plain(prompt: str | Sequence[ChatMessage]) -> str:
    """The ``PLAIN`` template (see the module docstring)."""
    if isinstance(prompt, str):
        return prompt
    turns = []
    for m in prompt:
        role = PLAIN_ROLE_NAMES.get(m["role"])
        if role is None:
            raise ValueError(f"plain template: unknown role {m['role']!r}")
        turns.append(f"{role}: {m['content']}")
    return "\n\n".join(turns + ["Assistant:"])


def render_prompt(record: PromptRecord, kind: TemplateKind | str, tokenizer: Any = None) -> str:
    """The prompt text for ``record`` under template ``kind`` (``CHAT`` needs ``tokenizer``)."""
    kind = TemplateKind(kind)
    if kind is TemplateKind.PLAIN:
        return render_plain(record.prompt)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("TemplateKind.CHAT needs a tokenizer with a chat_template; use TemplateKind.PLAIN otherwise")
    return tokenizer.apply_chat_template(record.messages, tokenize=False, add_generation_prompt=True)


def count_prompt_tokens(record: PromptRecord, kind: TemplateKind | str, tokenizer: Any) -> int:
    """How many tokens the rendered prompt takes."""
    kind = TemplateKind(kind)
    text = render_prompt(record, kind, tokenizer)
    return len(tokenizer.encode(text, add_special_tokens=kind is TemplateKind.PLAIN))


@dataclass(frozen=True)
class PromptLengthStats:
    kept: int
    dropped: int
    longest_kept: int
    """Tokens of the longest prompt kept."""


def filter_by_prompt_length(
    records: Sequence[PromptRecord], tokenizer: Any, max_prompt_tokens: int, kind: TemplateKind | str
) -> tuple[list[PromptRecord], PromptLengthStats]:
    """Keep the records whose rendered prompt has at most ``max_prompt_tokens`` tokens.

    Raises:
        EmptyDatasetError: if no record is left (or none was given).
    """
    return filter_by_token_count(
        records, lambda r: count_prompt_tokens(r, kind, tokenizer), max_prompt_tokens,
        label=f"prompts ({TemplateKind(kind).value} template)",
    )


def filter_by_token_count(
    records: Sequence[PromptRecord], count: Callable[[PromptRecord], int], max_prompt_tokens: int,
    what: str = "max_prompt_tokens", label: str = "prompts",
) -> tuple[list[PromptRecord], PromptLengthStats]:
    """Keep the records with ``count(record) <= max_prompt_tokens``; log how many were dropped.

    ``what`` names the limit (e.g. ``data.max_prompt_length``) and ``label`` the records in the messages.

    Raises:
        EmptyDatasetError: if no record is left (or none was given).
    """
    if max_prompt_tokens < 1:
        raise ValueError(f"{what}={max_prompt_tokens} must be >= 1")
    kept: list[PromptRecord] = []
    longest = 0
    for r in records:
        n = count(r)
        if n <= max_prompt_tokens:
            kept.append(r)
            longest = max(longest, n)
    if not kept:
        raise EmptyDatasetError(f"none of {len(records)} {label} fits in {what}={max_prompt_tokens} tokens")
    if len(kept) < len(records):
        logger.warning("%s=%d: dropped %d of %d %s (longer)", what, max_prompt_tokens,
                       len(records) - len(kept), len(records), label)
    return kept, PromptLengthStats(kept=len(kept), dropped=len(records) - len(kept), longest_kept=longest)
