"""Reward-model scoring: a `transformers` sequence classifier over chat conversations.

The RLHF variant of GIFT (paper Sec. 5; Infinity-Instruct prompts scored by a
Skywork-Reward-V2-style model) takes the explicit reward r_phi(x, y) from a
reward model. Reward models favour length, so by default the score is divided
by sqrt(|y|), |y| the response length in tokens, before the group
normalization:

    r_i = score(x, y_i) / sqrt(max(1, |y_i|))          # length_normalize=True (the paper)
    r_i = score(x, y_i)                                # length_normalize=False

Batching: conversations are rendered with the reward model's chat template
(``[*prompt_messages, {"role": "assistant", "content": response}]``), tokenized
without extra special tokens (the template has them), sorted by length,
LEFT-padded, and given explicit position ids (``cumsum(mask) - 1``), so a
padded row scores like the same row alone. The score is read at the last
position: while the model runs, the pooling pad id of the config is set to -1
(no token has that id), so the `transformers` "rightmost non-pad token" pooling
picks the last position even when the tokenizer's pad token is also its
end-of-turn token. This targets decoder-only classifiers (Llama, Qwen2/3,
Mistral, Gemma: the ``GenericForSequenceClassification`` pooling).

NaN and inf: counted (``nonfinite_total``) and never passed on. With
``nonfinite=RAISE`` (default) a batch with any non-finite score raises
`NonFiniteScoreError`; with ``MARK_INVALID`` those rows get ``valid=False`` and
score 0.0, and the caller must drop them (or their groups).

Device: ``device`` puts the model where you want it (e.g. ``"cuda:7"``, a GPU
apart from the policy's); on a multi-rank job, build the scorer on the ranks that
own the reward model only.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from nemo_gift.utils.torch_utils import TORCH_DTYPES as _DTYPES

ChatMessage = dict[str, str]


class NonFinitePolicy(str, enum.Enum):
    RAISE = "raise"
    """Raise `NonFiniteScoreError` if any score in the call is NaN or inf."""
    MARK_INVALID = "mark_invalid"
    """Return ``valid=False`` (and score 0.0) for those rows."""


class NonFiniteScoreError(RuntimeError):
    """The reward model produced NaN or inf scores."""


@dataclass(frozen=True)
class RewardModelConfig:
    """How to load and run the reward model."""

    model_path: str = ""
    """A local directory (or a hub id already in the local cache) for `from_pretrained`."""
    device: str = "cpu"
    """Where the model runs, e.g. ``"cuda:1"``."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int = 8
    """Conversations per forward pass."""
    max_length: int | None = None
    """Token budget per conversation; longer ones lose their OLDEST tokens (the score is read at the end)."""
    length_normalize: bool = True
    """Divide the score by sqrt(response tokens), as the paper does for RLHF."""
    nonfinite: NonFinitePolicy = NonFinitePolicy.RAISE
    score_index: int = 0
    """Which output logit is the score (reward models have one)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 or None, got {self.max_length}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        object.__setattr__(self, "nonfinite", NonFinitePolicy(self.nonfinite))


@dataclass
class RewardScores:
    """Scores for N (prompt, response) pairs, in input order."""

    scores: list[float]
    """[N] the rewards to use: normalized if enabled; 0.0 where not valid."""
    raw_scores: list[float]
    """[N] the classifier's output as is (may be NaN/inf where not valid)."""
    response_tokens: list[int]
    """[N] |y_i| used for the normalization."""
    valid: list[bool]
    """[N] False where the score was NaN or inf (only with ``MARK_INVALID``)."""
    truncated: list[bool] = field(default_factory=list)
    """[N] True where the conversation was cut to ``max_length``."""

    @property
    def num_invalid(self) -> int:
        return sum(not v for v in self.valid)


def _as_messages(prompt: str | Sequence[ChatMessage]) -> list[ChatMessage]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


class RewardModelScorer:
    """Scores (prompt, response) pairs with a sequence classifier and its chat template.

    Args:
        model: a ``*ForSequenceClassification`` model (``num_labels >= 1``).
        tokenizer: its tokenizer, with a ``chat_template``.
        config: run settings; ``model_path`` is not used here.

    Use `from_config` to load by path.
    """

    def __init__(self, model: Any, tokenizer: Any, config: RewardModelConfig | None = None) -> None:
        self.config = config or RewardModelConfig()
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the reward model's tokenizer has no chat_template; set tokenizer.chat_template")
        self.tokenizer = tokenizer
        self.device = torch.device(self.config.device)
        self.model = model.to(device=self.device, dtype=_DTYPES[self.config.dtype]).eval()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.nonfinite_total = 0
        self.scored_total = 0
        self.truncated_total = 0

    @classmethod
    def from_config(cls, config: RewardModelConfig, **from_pretrained_kwargs: Any) -> RewardModelScorer:
        """Load ``AutoModelForSequenceClassification`` and ``AutoTokenizer`` from ``config.model_path``."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not config.model_path:
            raise ValueError("RewardModelConfig.model_path is empty")
        tokenizer = AutoTokenizer.from_pretrained(config.model_path)
        model = AutoModelForSequenceClassification.from_pretrained(
            config.model_path, dtype=_DTYPES[config.dtype], **from_pretrained_kwargs
        )
        return cls(model, tokenizer, config)

    # ------------------------------------------------------------------ encode

    def render(self, prompt: str | Sequence[ChatMessage], response: str) -> str:
        """The conversation text the reward model reads."""
        messages = _as_messages(prompt) + [{"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def response_token_counts(self, responses: Sequence[str]) -> list[int]:
        """|y_i| in the reward model's tokenizer (used when the caller gives no lengths)."""
        return [len(self._encode(r)) for r in responses]

    # ------------------------------------------------------------------- score

    @contextlib.contextmanager
    def _last_position_pooling(self) -> Iterator[None]:
        text_config = self.model.config.get_text_config()
        saved = text_config.pad_token_id
        text_config.pad_token_id = -1
        try:
            yield
        finally:
            text_config.pad_token_id = saved

    def _forward(self, rows: list[list[int]]) -> torch.Tensor:
        """Raw scores [b] for b token-id rows (left-padded here)."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # [b, L]
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # [b, L]
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [b, L]
        with torch.inference_mode(), self._last_position_pooling():
            logits = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
            ).logits  # [b, num_labels]
        return logits[:, self.config.score_index].float().cpu()  # [b]

    def score(
        self,
        prompts: Sequence[str | Sequence[ChatMessage]],
        responses: Sequence[str],
        response_lengths: Sequence[int] | None = None,
    ) -> RewardScores:
        """Score N pairs.

        Args:
            prompts: N prompts, each a user string or a list of chat messages.
            responses: N response strings.
            response_lengths: N response lengths in tokens (e.g. the policy's counts);
                if None, the reward model's tokenizer counts them.

        Returns:
            `RewardScores` in input order.

        Raises:
            NonFiniteScoreError: with ``nonfinite=RAISE``, if any score is NaN or inf.
        """
        n = len(prompts)
        if len(responses) != n or (response_lengths is not None and len(response_lengths) != n):
            raise ValueError("prompts, responses and response_lengths must have the same length")
        if n == 0:
            return RewardScores([], [], [], [], [])
        lengths = list(response_lengths) if response_lengths is not None else self.response_token_counts(responses)
        if any(int(x) < 0 for x in lengths):
            raise ValueError("response_lengths must be >= 0")
        rows = [self._encode(self.render(p, r)) for p, r in zip(prompts, responses)]
        cap = self.config.max_length
        truncated = [cap is not None and len(r) > cap for r in rows]
        if cap is not None:
            rows = [r[-cap:] for r in rows]
        if any(len(r) == 0 for r in rows):
            raise ValueError("a conversation rendered to zero tokens")

        raw = torch.empty(n, dtype=torch.float32)  # [N]
        order = sorted(range(n), key=lambda i: len(rows[i]), reverse=True)
        bs = self.config.batch_size
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            raw[idx] = self._forward([rows[i] for i in idx])

        finite = torch.isfinite(raw)  # [N]
        num_bad = int((~finite).sum())
        self.scored_total += n
        self.nonfinite_total += num_bad
        self.truncated_total += sum(truncated)
        if num_bad and self.config.nonfinite is NonFinitePolicy.RAISE:
            bad = torch.nonzero(~finite).flatten().tolist()
            raise NonFiniteScoreError(
                f"{num_bad} of {n} reward-model scores are NaN or inf (rows {bad[:16]}); "
                "refusing to return them (set nonfinite='mark_invalid' to mask them instead)"
            )
        raw_list = raw.tolist()
        scores = []
        for value, ok, length in zip(raw_list, finite.tolist(), lengths):
            if not ok:
                scores.append(0.0)
            elif self.config.length_normalize:
                scores.append(value / math.sqrt(max(1, int(length))))
            else:
                scores.append(value)
        return RewardScores(
            scores=scores,
            raw_scores=raw_list,
            response_tokens=[int(x) for x in lengths],
            valid=finite.tolist(),
            truncated=truncated,
        )

    def metrics(self, prefix: str = "reward_model") -> dict[str, float]:
        """Cumulative counters: pairs scored, non-finite scores, truncated conversations."""
        return {
            f"{prefix}/scored": float(self.scored_total),
            f"{prefix}/nonfinite": float(self.nonfinite_total),
            f"{prefix}/truncated": float(self.truncated_total),
        }
