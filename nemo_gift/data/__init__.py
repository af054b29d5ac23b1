"""Prompts for GIFT: the paper's datasets, prompt templates, and a synthetic CPU task.

- `load_records(name, path)`: GSM8K, MATH-lighteval, DAPO-Math-17k, AIME 2024 and
  Infinity-Instruct from local JSONL / Parquet / ``save_to_disk`` directories, each
  row normalized into a `PromptRecord`.
- `render_prompt`, `filter_by_prompt_length`: chat or plain templates.
- `ArithmeticTask`, `CharTokenizer`: the learnable CPU task (its verifier is
  `nemo_gift.rewards.arithmetic.ArithmeticVerifier`).

See docs/rewards-and-data.md.
"""

from nemo_gift.data.loaders import CONVERTERS, load_records
from nemo_gift.data.records import (
    ChatMessage,
    DatasetError,
    DatasetFormatError,
    DatasetName,
    EmptyDatasetError,
    PromptRecord,
)
from nemo_gift.data.sources import iter_rows
from nemo_gift.data.synthetic import (
    ArithmeticConfig,
    ArithmeticProblem,
    ArithmeticTask,
    CharTokenizer,
    Operator,
    Split,
    format_answer,
)
from nemo_gift.data.templates import (
    BOXED_INSTRUCTION,
    DAPO_PREFIX,
    DAPO_SUFFIX,
    GSM8K_INSTRUCTION,
    PromptLengthStats,
    TemplateKind,
    count_prompt_tokens,
    dapo_style,
    dapo_style_record,
    filter_by_prompt_length,
    render_plain,
    render_prompt,
)

__all__ = [
    "BOXED_INSTRUCTION",
    "CONVERTERS",
    "DAPO_PREFIX",
    "DAPO_SUFFIX",
    "GSM8K_INSTRUCTION",
    "ArithmeticConfig",
    "ArithmeticProblem",
    "ArithmeticTask",
    "CharTokenizer",
    "ChatMessage",
    "DatasetError",
    "DatasetFormatError",
    "DatasetName",
    "EmptyDatasetError",
    "Operator",
    "PromptLengthStats",
    "PromptRecord",
    "Split",
    "TemplateKind",
    "count_prompt_tokens",
    "dapo_style",
    "dapo_style_record",
    "filter_by_prompt_length",
    "format_answer",
    "iter_rows",
    "load_records",
    "render_plain",
    "render_prompt",
]
