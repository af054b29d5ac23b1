"""The torch engine against the policy's own ``GPTModel.forward``, on 2 gloo ranks.

One spawn (``_engine_checks.all_checks``) computes everything; each test asserts one claim.
Tolerance for log-probs: 1e-5 absolute, fp32 (the issue's bound; the measured error is ~1e-6).
"""

import math

import pytest
import torch

from nemo_gift.distributed.spawn import run_on_ranks
from tests.unit.generation import _engine_checks as checks

pytestmark = pytest.mark.distributed

LOGPROB_TOL = 1e-5
IMPLS = ("lean", "megatron")
ARCHS = ("qwen2", "qwen3")


@pytest.fixture(scope="module")
def results():
    return run_on_ranks(checks.all_checks, world_size=2, timeout=420)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("impl", IMPLS)
def test_greedy_with_cache_equals_argmax_without_cache(results, arch, impl):
    res = results[0][arch]
    reference = res["reference"]  # one per prompt; the engine made n=2 per prompt
    expected = [r for r in reference for _ in range(2)]
    assert res[f"{impl}/greedy"] == expected


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["greedy", "tempered", "filtered"])
def test_logprobs_equal_policy_recomputed(results, arch, impl, mode):
    res = results[0][arch]
    assert res[f"{impl}/{mode}_logprob_err"] <= LOGPROB_TOL
    if mode != "greedy":  # and the check has teeth: ignoring the temperature/filters fails it
        assert res[f"{impl}/{mode}_vs_untempered_err"] > 1e-2


@pytest.mark.parametrize("arch", ARCHS)
def test_lean_and_megatron_forward_sample_the_same_tokens(results, arch):
    res = results[0][arch]
    for mode in ("greedy", "tempered", "filtered"):
        assert res[f"lean/{mode}"] == res[f"megatron/{mode}"], mode


@pytest.mark.parametrize("arch", ARCHS)
def test_engine_restores_the_model(results, arch):
    assert results[0][arch]["core_attention_restored"]
    assert results[0][arch]["training_mode_restored"]  # build_gpt_model returns a training-mode model


def test_stop_tokens_end_responses_and_are_kept(results):
    res = results[1]["stop"]
    stop, pad = res["stop"], res["pad"]
    for row, free in enumerate(res["free"]):
        hit = [t for t, tok in enumerate(free) if tok in (stop, 127)]
        length = hit[0] + 1 if hit else checks.NEW_TOKENS
        assert res["lengths"][row] == length
        assert res["tokens"][row][:length] == free[:length]  # ends with the stop token itself
        assert res["reasons"][row] == ("stop" if hit else "length")
        assert all(t == pad for t in res["tokens"][row][length:])
        assert all(lp == 0.0 for lp in res["logprobs"][row][length:])
        assert res["logprobs"][row][:length] == pytest.approx(res["free_logprobs"][row][:length], abs=1e-6)
    assert "stop" in res["reasons"] and "length" in res["reasons"]  # both paths exercised
    assert len(res["tokens"][0]) == max(res["lengths"])  # T = the longest response


def test_max_length_and_finished_rows_cost_nothing(results):
    res = results[1]["stop"]
    for length, reason, resp in zip(res["sampled_lengths"], res["sampled_reasons"], res["sampled_responses"]):
        assert 1 <= length <= checks.NEW_TOKENS and len(resp) == length
        assert (reason == "stop") == (resp[-1] % 9 == 0)  # stop ids are the multiples of 9
        assert all(tok % 9 for tok in resp[:-1])
    assert len(set(res["sampled_lengths"])) > 1
    # every response costs exactly its own decode steps: finished rows leave the batch
    stats = res["sampled_stats"]
    assert stats["decode_rows"] == sum(length - 1 for length in res["sampled_lengths"])
    assert stats["decode_steps"] == max(res["sampled_lengths"]) - 1
    assert stats["prefill_tokens"] == len(checks.PROMPTS) * max(map(len, checks.PROMPTS))  # once per prompt, not per response
    assert res["one_lengths"] == [1] * (2 * len(checks.PROMPTS)) and res["one_shape"] == [8, 1]


def _chi_square_p_value(counts, probs):
    """Pearson chi-square goodness of fit; cells with expected count < 5 are pooled."""
    n = sum(counts)
    cells, pooled_obs, pooled_exp = [], 0, 0.0
    for obs, p in zip(counts, probs):
        if p == 0.0:
            if obs:  # a token the filters exclude was sampled: no fit at all
                return 0.0, len(counts) - 1
            continue
        if n * p < 5:
            pooled_obs, pooled_exp = pooled_obs + obs, pooled_exp + n * p
        else:
            cells.append((obs, n * p))
    if pooled_exp > 0:
        cells.append((pooled_obs, pooled_exp))
    stat = sum((o - e) ** 2 / e for o, e in cells)
    dof = len(cells) - 1
    return torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                   torch.tensor(stat / 2, dtype=torch.float64)).item(), dof


@pytest.mark.parametrize("name", ["dist_temperature", "dist_top_p", "dist_top_k"])
def test_sampling_matches_the_expected_distribution(results, name):
    """4000 first tokens of one prompt (vocabulary 8) against the policy's tempered/filtered
    softmax: the chi-square p-value must exceed 1e-3 (fixed seeds, so the test is
    deterministic). The same counts must *fail* against the untempered distribution, so the
    test can tell the two apart."""
    res = results[1][name]
    p_value, dof = _chi_square_p_value(res["counts"], res["expected"])
    assert dof >= 2, res
    assert p_value > 1e-3, (p_value, res)
    p_wrong, _ = _chi_square_p_value(res["counts"], res["untempered"])
    assert p_wrong < 1e-6, (p_wrong, res)


def test_refit_outputs_follow_the_new_weights(results):
    res = results[1]["refit"]
    if "skipped" in res:
        pytest.skip(res["skipped"])
    assert res["before"] != res["new"]  # the two weight sets disagree
    assert res["after"] == res["new"]


def test_sleep_refuses_generate_and_wake_restores(results):
    assert results[1]["sleep"] == {"refused_while_asleep": True, "same_after_wake": True}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_tp2_generation_equals_tp1(results, impl, mode):
    tp1 = results[0]["tp1"][f"{impl}/{mode}"]
    for rank in (0, 1):
        tp2 = results[rank]["tp2"][f"{impl}/{mode}"]
        assert tp2["tokens"] == tp1["tokens"]
        assert torch.allclose(tp2["logprobs"], tp1["logprobs"], atol=LOGPROB_TOL, rtol=0)
    assert not math.isnan(tp1["logprobs"].sum().item())


def test_vocabulary_padding_is_never_sampled(results):
    """At TP=2 the vocabulary of 127 has 256 table rows (zero logits past 127)."""
    assert results[0]["tp2_padded_rows"] == 256
    for rank in (0, 1):
        for key, out in results[rank]["tp2"].items():
            assert max(max(r) for r in out["tokens"]) < checks.QWEN3.vocab_size, key
