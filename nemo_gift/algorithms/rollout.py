"""From prompts and generated responses to the token batch the policy trains on; prompt order.

Symbols: B prompts, G responses each, N = B*G sequences, S the padded length of
``prompt + response``. Worked example (pad id 0), prompt ``[5, 6]`` and responses
``[7, 2]`` and ``[8]``::

    tokens    = [[5, 6, 7, 2],      labels    = [[6, 7, 2, 0],      loss_mask = [[0, 1, 1, 0],
                 [5, 6, 8, 0]]                   [6, 8, 0, 0]]                   [0, 1, 0, 0]]

``labels[:, t]`` is the token predicted at ``t`` and ``loss_mask`` is True where that token is a
response token; the rollout engine's ``logprobs[r, j]`` (response token ``j``) lands at
``t = len(prompt) - 1 + j``.

S is the longest sequence rounded up to the layout's pad multiple (:func:`padded_length`;
``parallel.sequence_pad_multiple``: TP under sequence parallelism, the FP8 GEMM alignment).
The extra columns are pad tokens with ``loss_mask`` False: with causal attention no real
position sees them, so they change no log-prob and no loss.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch


def padded_length(longest: int, pad_multiple: int = 1) -> int:
    """The sequence length S of a token batch: ``longest`` rounded up to ``pad_multiple``."""
    if pad_multiple < 1:
        raise ValueError(f"pad_multiple must be >= 1, got {pad_multiple}")
    return -(-longest // pad_multiple) * pad_multiple


def build_token_batch(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    prompt_index: Sequence[int],
    pad_token_id: int,
    response_logprobs: Sequence[Sequence[float]] | None = None,
    pad_multiple: int = 1,
) -> dict[str, torch.Tensor]:
    """Right-padded ``tokens``, ``labels``, ``loss_mask`` [N, S] (and ``rollout_logprobs`` [N, S]
    when the engine's log-probs are given) for the N responses, S a multiple of
    ``pad_multiple``; see the module docstring."""
    n = len(responses)
    if n == 0 or len(prompt_index) != n:
        raise ValueError(f"{n} responses with {len(prompt_index)} prompt indices")
    seqs = [list(prompts[int(i)]) + list(r) for i, r in zip(prompt_index, responses)]
    s = padded_length(max(len(x) for x in seqs), pad_multiple)
    tokens = torch.full((n, s), pad_token_id, dtype=torch.long)
    loss_mask = torch.zeros(n, s, dtype=torch.bool)
    rollout_lp = torch.zeros(n, s) if response_logprobs is not None else None
    for row, (i, resp, seq) in enumerate(zip(prompt_index, responses, seqs)):
        if not resp:
            raise ValueError(f"response {row} is empty: every response has at least one token")
        p = len(prompts[int(i)])
        tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        loss_mask[row, p - 1 : p - 1 + len(resp)] = True
        if rollout_lp is not None:
            rollout_lp[row, p - 1 : p - 1 + len(resp)] = torch.as_tensor(
                response_logprobs[row][: len(resp)], dtype=torch.float32
            )
    labels = torch.full_like(tokens, pad_token_id)
    labels[:, :-1] = tokens[:, 1:]
    batch = {"tokens": tokens, "labels": labels, "loss_mask": loss_mask}
    if rollout_lp is not None:
        batch["rollout_logprobs"] = rollout_lp
    return batch


def select(batch: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """The rows ``index`` of every tensor of a batch (all share dim 0 = N)."""
    return {k: v[index] for k, v in batch.items()}


class PromptSampler:
    """Deterministic epochs over a prompt list: shuffled per epoch from ``seed``; resumable.

    ``state_dict()`` is the position (epoch, offset); loading it continues exactly there.
    """

    def __init__(self, records: Sequence[Any], batch_size: int, seed: int):
        if not records:
            raise ValueError("no training prompts")
        if batch_size > len(records):
            raise ValueError(f"prompts_per_step={batch_size} exceeds the {len(records)} training prompts")
        self.records, self.batch_size, self.seed = list(records), batch_size, seed
        self.epoch, self.offset = 0, 0
        self._order = self._shuffle(0)

    def _shuffle(self, epoch: int) -> list[int]:
        order = list(range(len(self.records)))
        random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return order

    @property
    def steps_per_epoch(self) -> int:
        return len(self.records) // self.batch_size

    def next_batch(self) -> list[Any]:
        """The next B prompts; an epoch's tail shorter than B is skipped."""
        if self.offset + self.batch_size > len(self.records):
            self.epoch, self.offset = self.epoch + 1, 0
            self._order = self._shuffle(self.epoch)
        idx = self._order[self.offset : self.offset + self.batch_size]
        self.offset += self.batch_size
        return [self.records[i] for i in idx]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._order = self._shuffle(self.epoch)
