"""Sampling and the interface: hand-computed filters, distributions, seeds, the padding contract."""

import math

import pytest
import torch

from nemo_gift.algorithms.interfaces import GenerationBackend, GenerationOutput, SamplingConfig
from nemo_gift.models.generation.sampling import filter_logits, make_generator, sample, token_logprobs
from nemo_gift.models.generation.torch_engine import TorchGenerationEngine
from nemo_gift.models.generation.trtllm_engine import TrtllmGenerationEngine

LOGITS = torch.log(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))  # probabilities at temperature 1


def test_both_engines_implement_the_backend_protocol():
    assert issubclass(TorchGenerationEngine, GenerationBackend)
    assert issubclass(TrtllmGenerationEngine, GenerationBackend)


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0),
                                 dict(top_p=1.5), dict(top_k=-1)])
def test_config_validation_names_the_field(bad):
    with pytest.raises(ValueError, match=f"sampling.{next(iter(bad))}"):
        SamplingConfig(**bad)


def test_filters_by_hand():
    probs = lambda cfg: torch.softmax(filter_logits(LOGITS, cfg), -1)  # noqa: E731
    # top-k 2: renormalize 0.5, 0.2
    assert torch.allclose(probs(SamplingConfig(top_k=2)), torch.tensor([5 / 7, 2 / 7, 0, 0, 0]))
    # top-p 0.7: 0.5 (mass before 0) and 0.2 (mass before 0.5) kept; 0.15 has 0.7 before it
    assert torch.allclose(probs(SamplingConfig(top_p=0.7)), torch.tensor([5 / 7, 2 / 7, 0, 0, 0]))
    # top-p 0.71 keeps the third token too
    assert torch.allclose(probs(SamplingConfig(top_p=0.71)), torch.tensor([0.5, 0.2, 0.15, 0, 0]) / 0.85)
    # top-p below the first token's mass keeps only it
    assert torch.allclose(probs(SamplingConfig(top_p=0.1)), torch.tensor([1.0, 0, 0, 0, 0]))
    # temperature 2: p ** 0.5, renormalized
    expected = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]).sqrt()
    assert torch.allclose(probs(SamplingConfig(temperature=2.0)), expected / expected.sum())
    # temperature first, then top-k, then top-p over the renormalized top-k
    t = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]) ** 2
    t = t[:3] / t[:3].sum()  # top-k 3 of the tempered distribution: [0.8, 0.128, 0.072]
    assert torch.allclose(probs(SamplingConfig(temperature=0.5, top_k=3, top_p=0.85)),
                          torch.cat([t[:2] / t[:2].sum(), torch.zeros(3)]))


def test_greedy_takes_the_argmax_and_reports_untempered_logprobs():
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(0))
    cfg = SamplingConfig(temperature=0.0, top_k=3)
    tokens, logprobs = sample(logits, cfg, None)
    assert tokens.tolist() == logits.argmax(-1).tolist()
    assert torch.allclose(logprobs, torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(1))


def test_sampled_logprobs_are_token_logprobs():
    logits = torch.randn(50, 9, generator=torch.Generator().manual_seed(1))
    cfg = SamplingConfig(temperature=0.7, top_k=5, top_p=0.8)
    tokens, logprobs = sample(logits, cfg, make_generator(3))
    assert torch.equal(logprobs, token_logprobs(logits, tokens, cfg))
    assert torch.isfinite(logprobs).all()  # a filtered-out token is never drawn
    assert token_logprobs(logits, logits.argmin(-1), cfg).eq(float("-inf")).all()


def test_seed_makes_sampling_reproducible():
    logits = torch.randn(64, 32, generator=torch.Generator().manual_seed(2))
    cfg = SamplingConfig()
    a, _ = sample(logits, cfg, make_generator(7))
    b, _ = sample(logits, cfg, make_generator(7))
    c, _ = sample(logits, cfg, make_generator(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _p_value(counts, probs):
    n = counts.sum().item()
    keep = probs > 0
    assert counts[~keep].sum() == 0
    expected = probs[keep] * n
    stat = ((counts[keep] - expected) ** 2 / expected).sum()
    dof = int(keep.sum()) - 1
    return torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat.double() / 2).item()


@pytest.mark.parametrize("cfg", [SamplingConfig(temperature=0.5), SamplingConfig(temperature=1.0, top_p=0.8),
                                 SamplingConfig(temperature=1.5, top_k=4), SamplingConfig(temperature=0.9, top_k=4, top_p=0.9)],
                         ids=["temperature", "top_p", "top_k", "all"])
def test_sampler_matches_the_distribution(cfg):
    """20000 draws over 5 tokens; chi-square p-value above 1e-3 against the expected
    distribution, and below 1e-6 against the unfiltered one (fixed seed: deterministic)."""
    draws = 20000
    tokens, _ = sample(LOGITS.expand(draws, -1), cfg, make_generator(11))
    counts = torch.bincount(tokens, minlength=5).double()
    expected = torch.softmax(filter_logits(LOGITS, cfg), -1).double()
    assert _p_value(counts, expected) > 1e-3
    untempered = torch.softmax(LOGITS, -1).double()
    stat = ((counts - draws * untempered) ** 2 / (draws * untempered)).sum()
    assert torch.special.gammaincc(torch.tensor(2.0, dtype=torch.float64), stat / 2).item() < 1e-6


def test_padding_contract_worked_example():
    """The example of the interfaces module docstring."""
    out = GenerationOutput(
        tokens=torch.tensor([[11, 12, 2, 0], [13, 14, 15, 16], [2, 0, 0, 0], [17, 18, 19, 20]]),
        lengths=torch.tensor([3, 4, 1, 4]),
        logprobs=torch.tensor([[-1.2, -0.3, -0.9, 0.0], [-1.0] * 4, [-2.0, 0.0, 0.0, 0.0], [-0.5] * 4]),
        finish_reasons=["stop", "length", "stop", "length"],
        prompt_index=torch.tensor([0, 0, 1, 1]),
    )
    prompts = [[5, 6, 7], [8]]
    assert out.mask().tolist() == [[True, True, True, False], [True] * 4, [True, False, False, False], [True] * 4]
    assert out.responses() == [[11, 12, 2], [13, 14, 15, 16], [2], [17, 18, 19, 20]]
    assert out.sequences(prompts)[0] == [5, 6, 7, 11, 12, 2] and out.sequences(prompts)[2] == [8, 2]
    assert math.isclose(out.logprobs[out.mask()].sum().item(), -1.2 - 0.3 - 0.9 - 4.0 - 2.0 - 2.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="inconsistent"):
        GenerationOutput(tokens=out.tokens, lengths=out.lengths[:3], logprobs=out.logprobs,
                         finish_reasons=out.finish_reasons, prompt_index=out.prompt_index)
