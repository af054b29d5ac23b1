"""What the training loop needs from its parts, as Protocols: a policy and a rollout engine.

The loop in :mod:`nemo_gift.algorithms.gift` sees them only through these contracts, so that
``algorithms`` imports no model code:

- :class:`PolicyInterface`, implemented by the megatron-core policy
  (``nemo_gift.models.policy.megatron_policy``) for any TP/PP/DP layout;
- :class:`GenerationBackend` with :class:`SamplingConfig` and :class:`GenerationOutput`,
  implemented by the rollout engines of ``nemo_gift.models.generation``:
  ``torch_engine.TorchGenerationEngine`` (runs anywhere, on the policy's own megatron-core
  model) and ``trtllm_engine.TrtllmGenerationEngine`` (GPU only).

Batch tensors use the symbols of docs/gift-math.md: N sequences (B prompts x G responses), S the
padded sequence length (prompt + response). Position ``t`` of ``labels``, ``loss_mask`` and every
log-prob tensor refers to the token predicted at ``t``: ``labels[:, t] = tokens[:, t + 1]``.

Rollout engines
---------------
Symbols: B prompts, n responses per prompt, N = B*n responses, T the longest response in
the call (T <= ``max_new_tokens``).

Padding contract
----------------
Prompts go in unpadded, as token-id lists. Responses come out as right-padded ``[N, T]``
tensors, grouped by prompt: rows ``i*n .. i*n + n - 1`` are the n responses to prompt ``i``
(``prompt_index[r] == r // n``). Row ``r`` holds ``lengths[r]`` generated tokens, then
``pad_token_id`` up to ``T``. A stop token that ends a response *is* part of it: it is counted
in ``lengths``, it has a log-prob, and it is trained on. ``logprobs`` is 0.0 on padding.
``mask()`` is ``True`` exactly on the generated tokens.

Worked example: prompts ``[[5, 6, 7], [8]]``, ``n=2``,
``SamplingConfig(max_new_tokens=4, stop_token_ids=(2,))``, ``pad_token_id=0``::

    prompt_index   = [0, 0, 1, 1]
    tokens         = [[11, 12,  2,  0],     # prompt 0, response 0: sampled the stop token 2
                      [13, 14, 15, 16],     # prompt 0, response 1: hit max_new_tokens
                      [ 2,  0,  0,  0],     # prompt 1, response 0: stopped at once
                      [17, 18, 19, 20]]     # prompt 1, response 1
    lengths        = [3, 4, 1, 4]
    finish_reasons = ["stop", "length", "stop", "length"]
    logprobs       = [[-1.2, -0.3, -0.9, 0.0], ..., [-2.0, 0.0, 0.0, 0.0], ...]
    mask()         = lengths[:, None] > arange(T)       # T = 4 = max(lengths)

To score a response with the policy, concatenate ``prompts[prompt_index[r]]`` with
``tokens[r, :lengths[r]]``; the log-prob of ``tokens[r, t]`` comes from the logits at
position ``len(prompt) + t - 1`` of that sequence. :meth:`GenerationOutput.sequences` does
this concatenation.

What "log-probs under the sampling distribution" means
------------------------------------------------------
``logprobs[r, t]`` is the log of the probability with which ``tokens[r, t]`` was actually
drawn: ``log_softmax(filter(logits / temperature))[token]``, where ``filter`` keeps the top-k
logits and then the top-p nucleus of what is left, sets the rest to ``-inf``, and the
log-softmax renormalizes over the kept tokens. With ``top_k=0`` and ``top_p=1.0`` that is
the full softmax at the given temperature, which is what the trainer must use when it
recomputes log-probs (the train/rollout mismatch of NeMo-RL #1330 and TRL #4159 is a
temperature applied on one side only). Greedy decoding (``temperature=0``) has a one-point
sampling distribution, so it reports the model's untempered log-probs,
``log_softmax(logits)[token]``, instead. The one implementation of this definition is
:func:`nemo_gift.models.generation.sampling.token_logprobs`; trainers call it too.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Protocol, Sequence, Tuple, Union, runtime_checkable

import torch

from nemo_gift.utils.checks import check_range

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


FinishReason = Literal["stop", "length"]
"""Why a response ended: it sampled a stop token, or it reached ``max_new_tokens``."""

HFWeights = Union[Iterable[Tuple[str, torch.Tensor]], Mapping[str, torch.Tensor]]
"""Full (unsharded) tensors under Hugging Face names, as ``nemo_gift.models.policy.hf_weights``
streams them (``export_hf_tensors``)."""


def check_sampling(section: str, *, max_new_tokens, temperature, top_p, top_k) -> None:
    """The value checks of the sampling fields, naming ``SECTION.KEY``: the one set that
    :class:`SamplingConfig` and the run config's ``rollout`` section both apply."""
    check_range(f"{section}.temperature", temperature, low=0)  # 0 = greedy
    check_range(f"{section}.top_p", top_p, low=0, high=1, low_open=True)
    check_range(f"{section}.top_k", top_k, low=0)  # 0 = off
    check_range(f"{section}.max_new_tokens", max_new_tokens, low=1)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample the responses of one ``generate`` call.

    Its defaults are also those of the run config's ``rollout`` section (one source)."""

    max_new_tokens: int = 1024
    """Most tokens generated per response (a stop token counts)."""
    temperature: float = 1.0
    """Logits are divided by it before sampling; 0 means greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the most likely tokens whose mass reaches ``top_p`` (1 = off)."""
    top_k: int = 0
    """Keep only the ``top_k`` most likely tokens (0 = off)."""
    stop_token_ids: Tuple[int, ...] = ()
    """Sampling one of these ends the response; it is kept as its last token."""
    seed: int | None = None
    """Seeds this call's generator, so that the call is reproducible. ``None`` continues the
    engine's own generator (seeded once at construction): a run is still reproducible, and
    successive calls draw different samples."""

    def __post_init__(self):
        check_sampling("sampling", max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                       top_p=self.top_p, top_k=self.top_k)
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        """True when decoding takes the argmax (``temperature == 0``)."""
        return self.temperature == 0.0


@dataclasses.dataclass
class GenerationOutput:
    """The N = B*n responses of one ``generate`` call; see the module docstring for the
    padding contract."""

    tokens: torch.Tensor
    """``[N, T]`` int64 generated token ids, right-padded with ``pad_token_id``."""
    lengths: torch.Tensor
    """``[N]`` int64 number of generated tokens per response (>= 1)."""
    logprobs: torch.Tensor
    """``[N, T]`` float32 log-probs of the tokens under the sampling distribution; 0 on padding.
    NaN where an engine could not report one (TensorRT-LLM's top-k dict may lack the sampled
    token): trainers recompute log-probs and never read these."""
    finish_reasons: list[FinishReason]
    """``N`` reasons, one per response."""
    prompt_index: torch.Tensor
    """``[N]`` int64 index of each response's prompt (``r // n``)."""
    pad_token_id: int = 0
    """The id used for padding in ``tokens``."""
    policy_logprobs: torch.Tensor | None = None
    """``[N, T]`` float32 ``log_softmax(logits)[token]`` of the UNMODIFIED logits (temperature 1,
    no top-k/top-p): the policy's own log-probs, pi_old for the trainer; 0 on padding. Only an
    engine that runs the trainer's weights in the trainer's numerics reports them (the torch
    engine); None otherwise."""

    def __post_init__(self):
        n_rows = self.tokens.shape[0]
        shapes_ok = (
            self.tokens.dim() == 2
            and self.logprobs.shape == self.tokens.shape
            and (self.policy_logprobs is None or self.policy_logprobs.shape == self.tokens.shape)
            and self.lengths.shape == (n_rows,)
            and self.prompt_index.shape == (n_rows,)
            and len(self.finish_reasons) == n_rows
        )
        if not shapes_ok:
            raise ValueError(
                f"inconsistent GenerationOutput: tokens {tuple(self.tokens.shape)}, logprobs "
                f"{tuple(self.logprobs.shape)}, lengths {tuple(self.lengths.shape)}, prompt_index "
                f"{tuple(self.prompt_index.shape)}, {len(self.finish_reasons)} finish reasons"
            )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def mask(self) -> torch.Tensor:
        """``[N, T]`` bool, True on generated tokens."""
        return self.lengths[:, None] > torch.arange(self.tokens.shape[1], device=self.lengths.device)

    def responses(self) -> list[list[int]]:
        """The generated tokens of each response, unpadded."""
        return [row[:length].tolist() for row, length in zip(self.tokens, self.lengths.tolist())]

    def sequences(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """``prompt + response`` for each response, unpadded: what the trainer scores."""
        return [list(prompts[int(i)]) + resp for i, resp in zip(self.prompt_index, self.responses())]


@runtime_checkable
class GenerationBackend(Protocol):
    """A rollout engine."""

    def generate(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingConfig
    ) -> GenerationOutput:
        """Sample ``n`` responses to each prompt (token-id lists, unpadded)."""
        ...

    def refit(self, weights: HFWeights) -> None:
        """Load new policy weights, given as full HF-named tensors, before the next generate."""
        ...

    def sleep(self) -> None:
        """Release the engine's memory (KV cache, and weights where it owns a copy) while the
        trainer runs. ``generate`` is refused until :meth:`wake`."""
        ...

    def wake(self) -> None:
        """Take the memory back that :meth:`sleep` released."""
        ...
