"""Temperature, top-k, top-p and greedy sampling from full-vocabulary logits, and the one
definition of the log-probs an engine reports.

Order of operations (the same as Hugging Face's and vLLM's): divide by the temperature, keep
the top-k logits, then keep the top-p nucleus of the renormalized top-k distribution. Filtered
tokens get ``-inf``; the most likely token is never filtered, so greedy decoding picks a token
that every filter keeps.

Shapes: R rows (responses being decoded), V the full vocabulary.
"""

from __future__ import annotations

import torch

from nemo_gift.algorithms.interfaces import SamplingConfig

__all__ = ["filter_logits", "make_generator", "sample", "token_logprobs", "filters_nothing", "UNMODIFIED"]

UNMODIFIED = SamplingConfig()
"""Temperature 1, no top-k, no top-p: :func:`token_logprobs` under it are the policy's own log-probs."""


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def filter_logits(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """The logits of the sampling distribution: ``[..., V]`` float -> ``[..., V]`` float32.

    Greedy (``temperature == 0``) returns the untempered, unfiltered logits: its sampling
    distribution is a point mass, and the untempered model distribution is what it reports
    log-probs under (see :mod:`~nemo_gift.algorithms.interfaces`).
    """
    logits = logits.float()
    if sampling.greedy:
        return logits
    if sampling.temperature != 1.0:
        logits = logits / sampling.temperature
    vocab = logits.shape[-1]
    if 0 < sampling.top_k < vocab:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]  # [..., 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = mass_before >= sampling.top_p  # the first token has mass_before 0: kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def filters_nothing(sampling: SamplingConfig, vocab: int) -> bool:
    """True when :func:`filter_logits` returns the logits unchanged (greedy, or temperature 1
    with top-k and top-p off), so the sampled log-probs are the policy's own."""
    return sampling.greedy or (
        sampling.temperature == 1.0 and not 0 < sampling.top_k < vocab and sampling.top_p >= 1.0
    )


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """Log-probs of ``tokens`` under the sampling distribution of ``sampling``.

    Args:
        logits: ``[..., V]`` full-vocabulary logits that predict ``tokens``.
        tokens: ``[...]`` int64 token ids.
        sampling: the config the tokens were (or would be) sampled with.

    Returns:
        ``[...]`` float32 ``log_softmax(filter_logits(logits))[tokens]``; ``-inf`` for a token
        that the filters exclude.
    """
    logp = torch.log_softmax(filter_logits(logits, sampling), dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def sample(
    logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row.

    Sampling inverts the float64 CDF of each row at a uniform draw scaled to the row's total
    mass (``searchsorted``): exact up to float64 rounding, and on CPU about ten times faster
    than ``torch.multinomial``. A token of probability 0 (filtered out) is never drawn.

    Args:
        logits: ``[R, V]`` full-vocabulary logits.
        sampling: temperature / top-k / top-p / greedy.
        generator: the source of randomness (unused for greedy).

    Returns:
        ``(tokens [R] int64, logprobs [R] float32)``, the log-probs as :func:`token_logprobs`
        defines them.
    """
    filtered = filter_logits(logits, sampling)  # [R, V]
    logp = torch.log_softmax(filtered, dim=-1)
    if sampling.greedy:
        tokens = torch.argmax(filtered, dim=-1)
    else:
        cdf = torch.cumsum(logp.exp().double(), dim=-1)  # [R, V]
        draw = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=torch.float64)
        tokens = torch.searchsorted(cdf, draw * cdf[:, -1:], right=True).squeeze(1)
        # A draw that rounds up to the total mass lands past the end: take the last token
        # that has mass. (Probability ~2^-53 per row.)
        past_end = tokens >= cdf.shape[1]
        if bool(past_end.any()):
            last = cdf.shape[1] - 1 - torch.argmax(torch.flip(logp > float("-inf"), dims=[1]).int(), dim=1)
            tokens = torch.where(past_end, last, tokens)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
