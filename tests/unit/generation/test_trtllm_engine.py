"""The TensorRT-LLM engine: its pure-Python parts on CPU, and (marker ``gpu``, needs
TensorRT-LLM) the engine itself against the torch engine on the same weights."""

import base64
import pickle
import sys
import types

import pytest
import torch

from nemo_gift.models.generation import trtllm_engine as te
from nemo_gift.algorithms.interfaces import SamplingConfig
from nemo_gift.models.policy.config import ModelConfig

CFG = ModelConfig(arch="qwen2", num_layers=2, hidden_size=8, ffn_hidden_size=12, num_attention_heads=2,
                  num_query_groups=1, vocab_size=16, max_position_embeddings=32, add_qkv_bias=True)
TIED = ModelConfig(arch="qwen3", num_layers=1, hidden_size=8, ffn_hidden_size=12, num_attention_heads=2,
                   vocab_size=16, qk_layernorm=True, tie_word_embeddings=True)


def _hf_weights(cfg, value=1.0):
    from nemo_gift.models.policy.hf_weights import expected_hf_shapes

    return [(name, torch.full(shape, value)) for name, shape in expected_hf_shapes(cfg).items()]


# --------------------------------------------------------------------------- lazy import


def test_module_does_not_import_tensorrt_llm():
    assert "tensorrt_llm" not in sys.modules or te.trtllm_available()


@pytest.mark.skipif(te.trtllm_available(), reason="TensorRT-LLM is installed here")
def test_missing_tensorrt_llm_names_the_extra():
    with pytest.raises(ImportError, match=r"\[gpu\].*pypi.nvidia.com"):
        te.TrtllmGenerationEngine(te.TrtllmConfig(model_dir="/nonexistent"), CFG)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="trtllm.dtype"):
        te.TrtllmConfig(model_dir="x", dtype="int8")
    with pytest.raises(ValueError, match="kv_cache_free_gpu_memory_fraction"):
        te.TrtllmConfig(model_dir="x", kv_cache_free_gpu_memory_fraction=1.5)


def test_llm_kwargs():
    kw = te.llm_kwargs(te.TrtllmConfig(model_dir="/m", tensor_parallel_size=2, max_seq_len=1024))
    assert kw["model"] == "/m" and kw["backend"] == "pytorch" and kw["tensor_parallel_size"] == 2
    assert kw["orchestrator_type"] == "ray"
    assert kw["ray_worker_extension_cls"] == "tensorrt_llm.llmapi.rlhf_utils.WorkerExtension"
    assert kw["enable_sleep"] is True and kw["skip_tokenizer_init"] is True
    assert kw["kv_cache_config"] == {"free_gpu_memory_fraction": 0.5, "enable_block_reuse": False}
    assert "enable_sleep" not in te.llm_kwargs(te.TrtllmConfig(model_dir="/m", enable_sleep=False))


def test_config_from_a_run_config(tmp_path):
    import json

    run = types.SimpleNamespace(
        model=CFG, seed=3, init=types.SimpleNamespace(hf_checkpoint=None),
        parallel=types.SimpleNamespace(tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
                                       params_dtype="bfloat16"),
        rollout=types.SimpleNamespace(trtllm_gpu_memory_fraction=0.3))
    cfg = te.config_from_run(run, tokenizer_dir="/tok")
    # one engine GPU per rank of the model-parallel group: TP x PP
    assert (cfg.tensor_parallel_size, cfg.dtype, cfg.max_seq_len) == (4, "bfloat16", CFG.max_position_embeddings)
    assert cfg.kv_cache_free_gpu_memory_fraction == 0.3 and cfg.tokenizer_dir == "/tok"
    assert cfg.load_format == "dummy"  # no checkpoint: a config.json only, weights come by refit
    with open(f"{cfg.model_dir}/config.json") as f:
        hf = json.load(f)
    assert hf["architectures"] == ["Qwen2ForCausalLM"] and hf["num_key_value_heads"] == 1
    assert te.llm_kwargs(cfg)["load_format"] == "dummy" and te.llm_kwargs(cfg)["tokenizer"] == "/tok"
    run.init.hf_checkpoint = str(tmp_path)
    cfg = te.config_from_run(run)
    assert cfg.model_dir == str(tmp_path) and cfg.load_format == "auto" and "load_format" not in te.llm_kwargs(cfg)


# --------------------------------------------------------------------------- sampling translation


def _trtllm_would_be_greedy(kw):
    """TensorRT-LLM's own rule: ``SamplingParams.params_imply_greedy_decoding``,
    tensorrt_llm/sampling_params.py:339@b35ac1b6 (NVIDIA/TensorRT-LLM)."""
    t, p, k = kw["temperature"], kw["top_p"], kw["top_k"]
    return (t is None and p is None and k is None) or k == 1 or p == 0.0 or t == 0


def test_sampling_translation_keeps_sampling_from_the_full_vocabulary():
    kw, copies = te.sampling_params_kwargs(SamplingConfig(max_new_tokens=7, temperature=0.8), 4, 11, 0)
    assert copies == 1 and kw["n"] == 4
    assert kw["temperature"] == 0.8 and kw["top_k"] == 0 and kw["top_p"] == 1.0
    assert not _trtllm_would_be_greedy(kw)  # all three given, none of them greedy
    assert kw["max_tokens"] == 7 and kw["seed"] == 11 and kw["logprobs"] == 1
    assert kw["end_id"] == -1 and kw["stop_token_ids"] is None and kw["detokenize"] is False


def test_sampling_translation_filters_and_stops():
    kw, _ = te.sampling_params_kwargs(
        SamplingConfig(temperature=1.2, top_k=40, top_p=0.9, stop_token_ids=(2, 5)), 2, 0, 3)
    assert (kw["top_k"], kw["top_p"], kw["temperature"]) == (40, 0.9, 1.2)
    assert kw["stop_token_ids"] == [2, 5] and kw["include_stop_str_in_output"] is True and kw["pad_id"] == 3


def test_greedy_translation_submits_copies():
    kw, copies = te.sampling_params_kwargs(SamplingConfig(temperature=0.0), 3, 0, 0)
    assert copies == 3 and kw["n"] == 1  # the LLM API refuses n > 1 with greedy decoding
    assert _trtllm_would_be_greedy(kw) and kw["temperature"] is None


# --------------------------------------------------------------------------- refit naming, buckets


def test_refit_tensors_cast_check_and_keep_order():
    out = list(te.refit_tensors(_hf_weights(CFG), CFG, "bfloat16"))
    assert [n for n, _ in out] == [n for n, _ in _hf_weights(CFG)]
    assert all(t.dtype == torch.bfloat16 and t.is_contiguous() for _, t in out)


def test_refit_tensors_alias_lm_head_when_tied():
    out = dict(te.refit_tensors(_hf_weights(TIED), TIED, torch.float32))
    assert "lm_head.weight" in out
    assert out["lm_head.weight"].data_ptr() == out["model.embed_tokens.weight"].data_ptr()  # no copy


def test_refit_tensors_refuse_wrong_names_shapes_and_gaps():
    weights = _hf_weights(CFG)
    with pytest.raises(KeyError, match="not a weight"):
        list(te.refit_tensors(weights + [("model.layers.9.mlp.up_proj.weight", torch.zeros(1))], CFG, "float32"))
    with pytest.raises(ValueError, match="shape"):
        list(te.refit_tensors([(weights[0][0], torch.zeros(3, 3))] + weights[1:], CFG, "float32"))
    with pytest.raises(KeyError, match="missing"):
        list(te.refit_tensors(weights[:-1], CFG, "float32"))
    with pytest.raises(ValueError, match="twice"):
        list(te.refit_tensors(weights + weights[:1], CFG, "float32"))


def test_buckets_respect_the_byte_limit_and_order():
    tensors = [(f"t{i}", torch.zeros(n, dtype=torch.float32)) for i, n in enumerate([10, 20, 5, 100, 1, 1])]
    buckets = list(te.bucket_by_bytes(tensors, max_bytes=120))  # 4 bytes per element
    assert [[n for n, _ in b] for b in buckets] == [["t0", "t1"], ["t2"], ["t3"], ["t4", "t5"]]
    assert [n for b in buckets for n, _ in b] == [n for n, _ in tensors]
    for b in buckets:
        assert len(b) == 1 or sum(t.numel() * 4 for _, t in b) <= 120


def test_ipc_payload_format():
    bucket = [("a", torch.zeros(2)), ("b", torch.ones(3))]
    payload = te.serialize_ipc_handles(bucket, "GPU-123", reduce_fn=lambda t: ("handle", tuple(t.shape)))
    assert list(payload) == ["GPU-123"]
    assert pickle.loads(base64.b64decode(payload["GPU-123"])) == [("a", ("handle", (2,))), ("b", ("handle", (3,)))]


# --------------------------------------------------------------------------- result conversion


def _completion(ids, reason, logprob_style="dict"):
    lps = [-(i + 1) / 10 for i in range(len(ids))]
    if logprob_style == "dict":  # PyTorch backend: {token: Logprob}, plus the top-1 token
        entries = [{t: types.SimpleNamespace(logprob=lp, rank=2), 999: types.SimpleNamespace(logprob=-0.01, rank=1)}
                   for t, lp in zip(ids, lps)]
    else:
        entries = lps
    return types.SimpleNamespace(token_ids=ids, logprobs=entries, finish_reason=reason), lps


def test_convert_outputs_follows_the_padding_contract():
    (a, la), (b, lb), (c, lc), (d, _) = (_completion([11, 12, 2], "stop"), _completion([13, 14, 15, 16], "length"),
                                         _completion([2], "stop", "float"), _completion([17, 18, 19, 20], "length"))
    requests = [types.SimpleNamespace(outputs=[a, b]), types.SimpleNamespace(outputs=[c, d])]
    out = te.convert_outputs(requests, num_prompts=2, n=2, stop_token_ids=(2,), pad_token_id=0)
    assert out.tokens.tolist() == [[11, 12, 2, 0], [13, 14, 15, 16], [2, 0, 0, 0], [17, 18, 19, 20]]
    assert out.lengths.tolist() == [3, 4, 1, 4]
    assert out.finish_reasons == ["stop", "length", "stop", "length"]
    assert out.prompt_index.tolist() == [0, 0, 1, 1]
    assert torch.allclose(out.logprobs[0, :3], torch.tensor(la)) and out.logprobs[0, 3] == 0
    assert torch.allclose(out.logprobs[1], torch.tensor(lb))
    assert torch.allclose(out.logprobs[2, :1], torch.tensor(lc))  # sampled token's, not the top-1's


def test_a_stop_token_at_max_new_tokens_is_a_stop_as_in_the_torch_engine():
    """TRT-LLM reports "length" when the stop token is also the max_new_tokens-th token; the
    torch engine says "stop" (torch_engine.generate), and so does the conversion."""
    (a, _), (b, _) = _completion([11, 2], "length"), _completion([11, 12], "length")
    out = te.convert_outputs([types.SimpleNamespace(outputs=[a, b])], 1, 2, stop_token_ids=(2,), pad_token_id=0)
    assert out.finish_reasons == ["stop", "length"] and out.lengths.tolist() == [2, 2]


def test_a_sampled_token_missing_from_the_logprob_dict_is_nan_not_an_error():
    """Issue 15, defect 6: the PyTorch backend's dict holds the top-k tokens only."""
    ids = [7, 8]
    entries = [{7: types.SimpleNamespace(logprob=-0.5, rank=1)}, {3: types.SimpleNamespace(logprob=-0.1, rank=1)}]
    out = te.convert_outputs([types.SimpleNamespace(outputs=[types.SimpleNamespace(
        token_ids=ids, logprobs=entries, finish_reason="length")])], 1, 1, (), 0)
    assert out.logprobs[0, 0].item() == -0.5 and out.logprobs[0, 1].isnan()


def test_convert_outputs_greedy_copies_are_prompt_major():
    reqs = [types.SimpleNamespace(outputs=[_completion([i + 3], "length")[0]]) for i in range(6)]  # 2 prompts x 3
    out = te.convert_outputs(reqs, num_prompts=2, n=3, stop_token_ids=(), pad_token_id=0)
    assert out.tokens[:, 0].tolist() == [3, 4, 5, 6, 7, 8] and out.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]


def test_convert_outputs_refuses_what_breaks_the_contract():
    def convert(*outputs, stops=(2,)):
        return te.convert_outputs([types.SimpleNamespace(outputs=list(outputs))], 1, len(outputs), stops, 0)

    with pytest.raises(ValueError, match="no stop token"):
        convert(_completion([5, 6], "stop")[0])
    with pytest.raises(ValueError, match="cancelled"):
        convert(_completion([5], "cancelled")[0])
    bad = _completion([5, 6], "length")[0]
    bad.logprobs = bad.logprobs[:1]
    with pytest.raises(ValueError, match="log-probs"):
        convert(bad)
    with pytest.raises(ValueError, match="expected 1 prompts x 2"):
        te.convert_outputs([types.SimpleNamespace(outputs=[_completion([5], "length")[0]])], 1, 2, (), 0)


# --------------------------------------------------------------------------- the real engine (GPU)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not te.trtllm_available(), reason=f"TensorRT-LLM is not installed ({te.INSTALL_HINT})")
def test_trtllm_matches_torch_engine_and_follows_refit(tmp_path):
    """Greedy tokens and log-probs of TensorRT-LLM equal the torch engine's on the same weights,
    before and after a refit and across sleep/wake. Never run yet (see trtllm_engine's docstring)."""
    from nemo_gift.distributed.spawn import run_on_ranks

    run_on_ranks(_trtllm_vs_torch, world_size=1, args=(str(tmp_path),), timeout=1800)


def _trtllm_vs_torch(rank, world_size, out_dir):
    from nemo_gift.export.hf_export import export_model
    from nemo_gift.models.policy.hf_weights import export_hf_tensors
    from nemo_gift.models.generation.torch_engine import TorchGenerationEngine
    from tests.unit.generation._engine_checks import PROMPTS, QWEN2, _build, _layout

    _layout(1)
    greedy = SamplingConfig(max_new_tokens=16, temperature=0.0)
    policy = _build(QWEN2, 1, seed=11).cuda()
    export_model(policy, QWEN2, out_dir)
    engine = te.TrtllmGenerationEngine(te.TrtllmConfig(model_dir=out_dir, dtype="float32",
                                                       kv_cache_free_gpu_memory_fraction=0.2), QWEN2)
    for seed in (11, 99):  # the exported weights, then a refit with others
        if seed == 99:
            policy = _build(QWEN2, 1, seed=99).cuda()
            engine.sleep()
            engine.wake()
            engine.refit(export_hf_tensors(policy, QWEN2))
        ref = TorchGenerationEngine(policy, QWEN2).generate(PROMPTS, 2, greedy)
        got = engine.generate(PROMPTS, 2, greedy)
        assert got.responses() == ref.responses(), seed
        assert torch.allclose(got.logprobs, ref.logprobs, atol=1e-3), seed
    engine.shutdown()
