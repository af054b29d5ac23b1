"""config.json <-> ModelConfig: every covered family, both transformers config styles, and the
features that must be refused."""

from __future__ import annotations

import json

import pytest
import torch

from nemo_gift.models.policy.hf_weights import (
    UnsupportedModelError,
    expected_hf_shapes,
    hf_config_to_model_config,
    mcore_full_to_hf,
    model_config_to_hf_config,
    weight_entries,
)
from nemo_gift.models.policy.config import ModelConfig

from .conftest import SPECS


def test_family_features_are_read(hf_models):
    cfgs = {n: hf_config_to_model_config(json.loads((m.path / "config.json").read_text())) for n, m in hf_models.items()}
    q2, q2u, q3, ll = cfgs["qwen2_tied"], cfgs["qwen2_untied"], cfgs["qwen3"], cfgs["llama"]
    assert (q2.arch, q2.add_qkv_bias, q2.qk_layernorm, q2.tie_word_embeddings, q2.query_groups) == ("qwen2", True, False, True, 2)
    assert not q2u.tie_word_embeddings
    assert (q3.arch, q3.qk_layernorm, q3.add_qkv_bias, q3.head_dim, q3.kv_channels) == ("qwen3", True, False, 32, 32)
    assert (ll.arch, ll.query_groups, ll.num_query_groups, ll.vocab_size, ll.rotary_base) == ("llama", 4, None, 255, 5e5)
    assert q2.rotary_base == 1e6 and q2.ffn_hidden_size == 96 and q2.norm_epsilon == 1e-6


@pytest.mark.parametrize("name", list(SPECS))
def test_config_round_trip_through_transformers(hf_models, name, tmp_path):
    """ModelConfig -> config.json -> transformers' own config class -> the same ModelConfig."""
    from transformers import AutoConfig

    cfg = hf_config_to_model_config(json.loads((hf_models[name].path / "config.json").read_text()))
    (tmp_path / "config.json").write_text(json.dumps(model_config_to_hf_config(cfg, torch.bfloat16)))
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded).__name__ == SPECS[name][0]
    assert loaded.dtype == torch.bfloat16 if hasattr(loaded, "dtype") else loaded.torch_dtype == torch.bfloat16
    assert hf_config_to_model_config(loaded) == cfg  # a PretrainedConfig object is accepted too


BASE = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 128, "rope_theta": 1e4}


@pytest.mark.parametrize(
    "change, match",
    [
        ({"architectures": ["MistralForCausalLM"]}, "unsupported architecture 'MistralForCausalLM'"),
        ({"architectures": None, "model_type": "gpt2"}, "unsupported model_type 'gpt2'"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling 'llama3'"),
        ({"rope_theta": None, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "RoPE scaling 'yarn'"),
        ({"attention_bias": True}, "attention_bias=true"),
        ({"mlp_bias": True}, "mlp_bias=true"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True}, "use_sliding_window=true"),
        ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
    ],
)
def test_unsupported_models_are_refused_by_name(change, match):
    with pytest.raises(UnsupportedModelError, match=match.replace("(", r"\(").replace("[", r"\[")):
        hf_config_to_model_config({**BASE, **change})


def test_transformers_5_rope_parameters_are_read():
    cfg = hf_config_to_model_config({**{k: v for k, v in BASE.items() if k != "rope_theta"},
                                     "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})
    assert cfg.rotary_base == 5e5


def test_unrepresentable_model_config_is_refused():
    with pytest.raises(UnsupportedModelError, match="add_qkv_bias"):
        model_config_to_hf_config(ModelConfig(arch="qwen2", add_qkv_bias=False))


@pytest.mark.parametrize("name", list(SPECS))
def test_offline_mapping_round_trips_every_tensor(hf_models, name):
    """HF tensors -> full megatron tensors (the fused QKV / gate-up layout, padded vocab) ->
    HF again, without megatron: bit for bit, and the fused QKV rows ordered by query group."""
    from nemo_gift.models.policy import hf_weights

    from .conftest import read_safetensors_dir

    original = read_safetensors_dir(hf_models[name].path)
    cfg = hf_config_to_model_config(json.loads((hf_models[name].path / "config.json").read_text()))
    assert {k: tuple(v.shape) for k, v in original.items()} == expected_hf_shapes(cfg)
    rows = cfg.padded_vocab_size(2)
    back = {}
    for entry in weight_entries(cfg):
        full = hf_weights._fuse(entry, [original[h] for h in entry.hf], cfg, rows)
        if entry.kind == "qkv" and entry.mcore.endswith("weight"):
            d, per_group = cfg.head_dim, cfg.num_attention_heads // cfg.query_groups
            group1 = full[(per_group + 2) * d:(per_group + 2) * d * 2]
            q = original[entry.hf[0]][per_group * d:2 * per_group * d]
            assert torch.equal(group1[: per_group * d], q)  # group 1 starts with its own query heads
            assert torch.equal(group1[per_group * d:(per_group + 1) * d], original[entry.hf[1]][d:2 * d])
        if entry.kind == "vocab":
            assert full.shape[0] == rows and not full[cfg.vocab_size:].any()
        back.update(mcore_full_to_hf(entry.mcore, full, cfg))
    assert sorted(back) == sorted(original)
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_transformer_engine_names_map_like_local_ones():
    """The TE spec fuses the two RMSNorms into linear_qkv / linear_fc1 (not executable here)."""
    cfg = ModelConfig(arch="llama")
    w = torch.arange(64.0)
    assert mcore_full_to_hf("decoder.layers.1.self_attention.linear_qkv.layer_norm_weight", w, cfg)[0][0] == \
        "model.layers.1.input_layernorm.weight"
    assert mcore_full_to_hf("decoder.layers.0.mlp.linear_fc1.layer_norm_weight", w, cfg)[0][0] == \
        "model.layers.0.post_attention_layernorm.weight"
