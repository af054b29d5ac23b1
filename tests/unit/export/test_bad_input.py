"""Bad HF input fails before any conversion (no model is built, no tensor read), with an error
that names the architecture, the file, the tensor or the parallel key."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from nemo_gift.export import hf_import
from nemo_gift.export.hf_import import HFCheckpointError, build_from_hf, open_hf_checkpoint
from nemo_gift.models.policy.hf_weights import UnsupportedModelError
from nemo_gift.models.policy.config import ParallelConfig


@pytest.fixture
def no_conversion(monkeypatch):
    """Fail the test if building or loading is reached."""

    def unreachable(*args, **kwargs):
        raise AssertionError("conversion started before the input was validated")

    monkeypatch.setattr("nemo_gift.models.policy.builder.build_gpt_model", unreachable)
    monkeypatch.setattr(hf_import.hf_weights, "load_hf_tensors", unreachable)
    monkeypatch.setattr(hf_import.HFCheckpoint, "__getitem__", unreachable)


def _copy(hf_models, name, tmp_path):
    return shutil.copytree(hf_models[name].path, tmp_path / name)


def test_unsupported_architecture(hf_models, tmp_path, no_conversion):
    path = _copy(hf_models, "llama", tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["MixtralForCausalLM"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="unsupported architecture 'MixtralForCausalLM'"):
        build_from_hf(path, ParallelConfig())


def test_missing_shard(hf_models, tmp_path, no_conversion):
    path = _copy(hf_models, "qwen2_untied", tmp_path)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (path / victim).unlink()
    with pytest.raises(HFCheckpointError, match=f"missing shard {victim}"):
        build_from_hf(path, ParallelConfig())


def test_no_safetensors_at_all(hf_models, tmp_path, no_conversion):
    path = _copy(hf_models, "qwen3", tmp_path)
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(HFCheckpointError, match="convert them to safetensors"):
        open_hf_checkpoint(path)


def test_shape_mismatch_with_the_config(hf_models, tmp_path, no_conversion):
    path = _copy(hf_models, "qwen3", tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["intermediate_size"] = 80
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(HFCheckpointError, match=r"model\.layers\.0\.mlp\.down_proj\.weight: shape \(64, 96\)"):
        build_from_hf(path, ParallelConfig())


def test_shape_mismatch_of_one_tensor(hf_models, tmp_path, no_conversion):
    path = _copy(hf_models, "llama", tmp_path)
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.1.self_attn.k_proj.weight"] = tensors["model.layers.1.self_attn.k_proj.weight"][:-1].clone()
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HFCheckpointError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight: shape \(63, 64\)"):
        build_from_hf(path, ParallelConfig())


def test_missing_and_unexpected_tensors(hf_models, tmp_path, no_conversion):
    path = _copy(hf_models, "qwen2_tied", tmp_path)
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.0.self_attn.q_proj.bias"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HFCheckpointError, match=r"missing tensor\(s\) \['model\.layers\.0\.self_attn\.q_proj\.bias'\]"):
        open_hf_checkpoint(path)
    tensors["model.layers.0.self_attn.q_proj.bias"] = tensors["model.layers.1.self_attn.q_proj.bias"]
    tensors["model.layers.0.mlp.experts.0.weight"] = tensors["model.norm.weight"].clone()
    save_file({k: v.clone() for k, v in tensors.items()}, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HFCheckpointError, match=r"unexpected tensor\(s\) \['model\.layers\.0\.mlp\.experts\.0\.weight'\]"):
        open_hf_checkpoint(path)


@pytest.mark.parametrize(
    "tp, match",
    [
        (3, "tensor_model_parallel_size=3 does not divide model.num_attention_heads=4"),
        (4, r"tensor_model_parallel_size=4 does not divide the key/value heads \(model.num_query_groups=2\)"),
    ],
)
def test_tp_must_divide_heads_and_kv_heads(hf_models, no_conversion, tp, match):
    with pytest.raises(ValueError, match=match):
        build_from_hf(hf_models["qwen2_tied"].path, ParallelConfig(tensor_model_parallel_size=tp))
