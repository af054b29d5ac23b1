"""What the training loop needs from its parts, as Protocols.

The loop in :mod:`nemo_gift.algorithms.gift` sees a policy, a rollout engine
(:class:`nemo_gift.models.generation.interfaces.GenerationBackend`) and a reward function only
through these contracts; the megatron-core policy (``nemo_gift.models.policy.megatron_policy``)
implements :class:`PolicyInterface` for any TP/PP/DP layout.

Batch tensors use the symbols of docs/gift-math.md: N sequences (B prompts x G responses), S the
padded sequence length (prompt + response). Position ``t`` of ``labels``, ``loss_mask`` and every
log-prob tensor refers to the token predicted at ``t``: ``labels[:, t] = tokens[:, t + 1]``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import torch

MicroBatch = Mapping[str, torch.Tensor]
"""One micro-batch of one data-parallel rank: ``tokens``, ``labels``, ``loss_mask`` [b, S] and
whatever per-sequence or per-token fields its objective reads (``advantages`` [b],
``group_index`` [b], ``baseline_logprobs`` [b, S] ...)."""

Objective = Callable[[torch.Tensor, MicroBatch], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]
"""``objective(policy_logprobs [b, S], micro_batch) -> (loss, metrics)``. The loss carries the
GLOBAL normalizer of the optimizer step (pairs, tokens or sequences over every micro-batch and
rank), so that the step's loss is the sum of the micro-batch losses whatever the layout."""


@runtime_checkable
class PolicyInterface(Protocol):
    """A trainable policy with a frozen reference, split over ranks as it likes."""

    def logprobs(self, batch: MicroBatch, *, reference: bool = False) -> torch.Tensor:
        """log pi(labels) ``[N, S]`` of the whole batch (every rank passes the same batch and gets
        the same result), from the policy or, with ``reference=True``, the frozen reference.
        No gradient; 0 where ``loss_mask`` is False is not required."""
        ...

    def train_step(self, batch: MicroBatch, objective: Objective, *, group_size: int) -> dict[str, float]:
        """One optimizer step on ``batch`` (the whole mini-batch, identical on every rank; the
        policy deals it over its DP ranks and micro-batches keeping groups of ``group_size``
        whole) minimizing the sum of ``objective`` over its micro-batches. Returns ``loss``,
        ``grad_norm``, ``lr`` and the objective's metrics averaged over micro-batches."""
        ...

    def hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The current weights as full Hugging Face-named tensors, streamed (for engine refit)."""
        ...

    def save(self, root: str, step: int, trainer_state: Mapping[str, Any], keep_last: int) -> str:
        """Collectively write a checkpoint of weights, optimizer, scheduler and RNG, with the
        loop's ``trainer_state``; returns its directory."""
        ...

    def load(self, path: str) -> dict[str, Any]:
        """Restore a checkpoint written by :meth:`save`; returns its ``trainer_state``."""
        ...


@runtime_checkable
class RewardFunction(Protocol):
    """Scores responses: explicit rewards r [N] and, per response, a reason string."""

    def __call__(
        self, prompts: Sequence[Any], responses: Sequence[str], ground_truths: Sequence[str | None]
    ) -> tuple[torch.Tensor, list[str]]:
        ...
