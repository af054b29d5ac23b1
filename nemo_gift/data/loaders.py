"""Loaders for the paper's datasets, each normalized into `PromptRecord`.

Schemas (fields read; any other field goes to ``meta``) and the ground truth kept:

- ``gsm8k`` (GSM8K): ``question``, ``answer`` ending ``#### N``; N, canonical (``1,000`` -> ``1000``).
- ``math`` (MATH-lighteval): ``problem``, ``solution`` with ``\\boxed{}``, ``level``, ``type``;
  the content of the last box.
- ``dapo`` (DAPO-Math-17k): ``prompt`` (a chat list), ``reward_model.ground_truth``; as given.
- ``aime`` (AIME 2024): ``problem``, ``answer`` (or ``Problem``, ``Answer``); an integer 0-999, canonical.
- ``infinity_instruct`` (Infinity-Instruct): ``conversations`` (``from``: human/gpt/system,
  ``value``); ``""`` (a reward model scores these).

Prompts: GSM8K gets `GSM8K_INSTRUCTION`, MATH and AIME get `BOXED_INSTRUCTION`
(override with ``instruction=``; ``""`` for none). DAPO rows carry their own
instruction and are used as is. Infinity-Instruct: the conversation up to its
last human turn; a trailing gpt reply goes to ``meta["reference_response"]``.

Errors: a bad row raises `DatasetFormatError` naming the file, the 1-based row
and the field; no rows raises `EmptyDatasetError`. Identical (prompt, ground
truth) rows are dropped by default: DAPO-Math-17k's published Parquet repeats
each of its ~17k prompts about 100 times.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nemo_gift.data.records import DatasetError, DatasetFormatError, DatasetName, EmptyDatasetError, PromptRecord
from nemo_gift.data.sources import iter_rows
from nemo_gift.data.templates import BOXED_INSTRUCTION, GSM8K_INSTRUCTION, with_instruction
from nemo_gift.rewards.extract import canonical_integer, find_last_boxed, gsm8k_canonical, strip_wrappers

logger = logging.getLogger(__name__)

_MISSING = object()
_CHAT_ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class Row:
    """One raw row plus where it came from, with typed field getters that raise `DatasetFormatError`."""

    def __init__(self, source: str, number: int, data: dict[str, Any]) -> None:
        self.source, self.number, self.data = source, number, data

    def error(self, field_name: str | None, problem: str) -> DatasetFormatError:
        return DatasetFormatError(self.source, self.number, field_name, problem)

    def get(self, dotted: str, *aliases: str) -> tuple[str, Any]:
        """``(name_found, value)`` of the first of ``dotted, *aliases`` present and not null.

        Dots go into nested objects. Null counts as missing: Parquet stores an absent key as null.
        """
        for name in (dotted, *aliases):
            value: Any = self.data
            for part in name.split("."):
                value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
            if value is not _MISSING and value is not None:
                return name, value
        raise self.error(dotted, "missing or null")

    def text(self, dotted: str, *aliases: str, allow_int: bool = False) -> str:
        """A non-empty string field (an integer too, as its decimal string, if ``allow_int``)."""
        name, value = self.get(dotted, *aliases)
        if allow_int and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {type(value).__name__}")
        if not value.strip():
            raise self.error(name, "empty")
        return value


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def _record(dataset: DatasetName, prompt: str | list[dict[str, str]], ground_truth: str,
            meta: dict[str, Any]) -> PromptRecord:
    """A record of ``dataset``, scored by the dataset's own verifier (:attr:`DatasetName.verifier`)."""
    return PromptRecord(prompt, ground_truth, dataset.value, dataset.verifier, meta)


def _extras(row: Row, used: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in row.data.items() if k not in used}


def gsm8k_record(row: Row, instruction: str | None = None) -> PromptRecord:
    question = row.text("question")
    answer = row.text("answer")
    if "####" not in answer:
        raise row.error("answer", "no '#### <number>' final answer")
    final = answer.rsplit("####", 1)[1].strip()
    gold = gsm8k_canonical(final.replace("$", ""))
    if gold is None:
        raise row.error("answer", f"the text after '####' is not a number: {final[:40]!r}")
    prompt = with_instruction(question, GSM8K_INSTRUCTION if instruction is None else instruction)
    meta = {"solution": answer, **_extras(row, ("question", "answer"))}
    return _record(DatasetName.GSM8K, _user(prompt), gold, meta)


def math_record(row: Row, instruction: str | None = None) -> PromptRecord:
    problem = row.text("problem")
    solution = row.text("solution")
    level = row.text("level")
    kind = row.text("type")
    boxed = find_last_boxed(solution)
    if boxed is None or not strip_wrappers(boxed):
        raise row.error("solution", "no complete \\boxed{...} answer")
    prompt = with_instruction(problem, BOXED_INSTRUCTION if instruction is None else instruction)
    meta = {"solution": solution, "level": level, "type": kind}
    meta.update(_extras(row, ("problem", "solution", "level", "type")))
    return _record(DatasetName.MATH, _user(prompt), strip_wrappers(boxed), meta)


def _chat(row: Row, field_name: str) -> list[dict[str, str]]:
    _, value = row.get(field_name)
    if not isinstance(value, list) or not value:
        raise row.error(field_name, "expected a non-empty list of {'role', 'content'} messages")
    messages = []
    for i, m in enumerate(value):
        where = f"{field_name}[{i}]"
        if not isinstance(m, dict):
            raise row.error(where, f"expected an object, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in _CHAT_ROLES:
            raise row.error(f"{where}.role", f"expected one of {_CHAT_ROLES}, got {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise row.error(f"{where}.content", "expected a non-empty string")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise row.error(field_name, "the last message must be the user's")
    return messages


def dapo_record(row: Row, instruction: str | None = None) -> PromptRecord:
    messages = _chat(row, "prompt")
    gold = strip_wrappers(row.text("reward_model.ground_truth", allow_int=True))
    if not gold:
        raise row.error("reward_model.ground_truth", "empty after stripping $...$ / \\boxed{}")
    meta = _extras(row, ("prompt",))
    return _record(DatasetName.DAPO, messages, gold, meta)


def aime_record(row: Row, instruction: str | None = None) -> PromptRecord:
    name, _ = row.get("problem", "Problem")
    problem = row.text(name)
    answer_name, _ = row.get("answer", "Answer")
    answer = row.text(answer_name, allow_int=True)
    gold = canonical_integer(strip_wrappers(answer), 0, 999)
    if gold is None:
        raise row.error(answer_name, f"expected an integer 0-999, got {answer[:40]!r}")
    prompt = with_instruction(problem, BOXED_INSTRUCTION if instruction is None else instruction)
    meta = _extras(row, (name, answer_name))
    return _record(DatasetName.AIME, _user(prompt), gold, meta)


def infinity_instruct_record(row: Row, instruction: str | None = None) -> PromptRecord:
    _, turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise row.error("conversations", "expected a non-empty list of {'from', 'value'} turns")
    messages = []
    for i, t in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(t, dict):
            raise row.error(where, f"expected an object, got {type(t).__name__}")
        role = _SHAREGPT_ROLES.get(t.get("from"))  # type: ignore[arg-type]
        if role is None:
            raise row.error(f"{where}.from", f"expected one of {sorted(_SHAREGPT_ROLES)}, got {t.get('from')!r}")
        value = t.get("value")
        if not isinstance(value, str) or not value.strip():
            raise row.error(f"{where}.value", "expected a non-empty string")
        messages.append({"role": role, "content": value})
    meta = _extras(row, ("conversations",))
    if messages[-1]["role"] == "assistant":
        meta["reference_response"] = messages.pop()["content"]
    if not messages or messages[-1]["role"] != "user":
        raise row.error("conversations", "no human turn to answer (expected ... human[, gpt])")
    return _record(DatasetName.INFINITY_INSTRUCT, messages, "", meta)


RowConverter = Callable[[Row, "str | None"], PromptRecord]

CONVERTERS: dict[DatasetName, RowConverter] = {
    DatasetName.GSM8K: gsm8k_record,
    DatasetName.MATH: math_record,
    DatasetName.DAPO: dapo_record,
    DatasetName.AIME: aime_record,
    DatasetName.INFINITY_INSTRUCT: infinity_instruct_record,
}


def _convert(convert: RowConverter, row: Row, instruction: str | None) -> PromptRecord:
    """``convert(row)``; any failure of a malformed row becomes a `DatasetFormatError` naming the file and row."""
    try:
        return convert(row, instruction)
    except DatasetError:
        raise
    except RecursionError:
        raise row.error(None, "nested too deeply to read") from None
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise row.error(None, f"{type(e).__name__}: {e}") from None


def load_records(
    name: DatasetName | str,
    path: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    instruction: str | None = None,
    dedupe: bool = True,
) -> list[PromptRecord]:
    """Load and normalize a dataset from local files.

    Args:
        name: the schema (``gsm8k``, ``math``, ``dapo``, ``aime``, ``infinity_instruct``).
        path: a ``.jsonl``/``.json``/``.parquet`` file, a ``save_to_disk`` directory, or a
            directory of such files (see `nemo_gift.data.sources`).
        split: which split, for directories that hold several.
        limit: stop after this many records (after validation and dedupe).
        instruction: replaces the default instruction appended to questions (``""``: none).
        dedupe: drop rows whose (prompt, ground truth) was seen before.

    Returns:
        The records, in file order; ``meta["row"]`` and ``meta["file"]`` say where each came from.

    Raises:
        DatasetFormatError: a row does not match the schema (file, row, field).
        EmptyDatasetError: no rows.
        DatasetError: the path cannot be read.
    """
    key = DatasetName(name)
    if key not in CONVERTERS:
        raise ValueError(f"no file loader for {key.value!r}; the synthetic task is generated (data.synthetic)")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    convert = CONVERTERS[key]
    records: list[PromptRecord] = []
    seen: set[tuple[Any, ...]] = set()
    rows = duplicates = 0
    for source, number, data in iter_rows(path, split):
        rows += 1
        record = _convert(convert, Row(source, number, data), instruction)
        if dedupe:
            k = record.dedupe_key()
            if k in seen:
                duplicates += 1
                continue
            seen.add(k)
        record.meta.update(file=source, row=number)
        records.append(record)
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise EmptyDatasetError(f"{path}: the {key.value} dataset has no rows")
    if duplicates:
        logger.info("%s: dropped %d duplicate rows of %d", path, duplicates, rows)
    return records
