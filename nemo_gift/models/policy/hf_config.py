"""Hugging Face ``config.json`` <-> :class:`ModelConfig`, for transformers 4.57 and 5.x.

transformers 5 writes RoPE as ``rope_parameters: {rope_type, rope_theta}`` and the dtype as
``dtype``; 4.57 writes ``rope_theta`` / ``rope_scaling`` and ``torch_dtype``. Reading accepts
both; writing emits both, so either version loads the result. Everything outside the covered
families (and features such as RoPE scaling or sliding windows) is refused with
:class:`UnsupportedModelError`, naming the architecture or the key. Re-exported by
:mod:`nemo_gift.models.policy.hf_weights`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from nemo_gift.models.policy.config import ModelConfig

SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
"""HF ``architectures[0]`` -> ``ModelConfig.arch``. ``llama`` covers DeepSeek-LLM (same class)."""

_HF_CLASS = {arch: name for name, arch in SUPPORTED_ARCHITECTURES.items()}


class UnsupportedModelError(ValueError):
    """The Hugging Face model uses an architecture or feature this mapping does not cover."""


def _as_dict(hf_config: Any) -> dict:
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise TypeError(f"expected a config.json dict or a transformers PretrainedConfig, got {type(hf_config)!r}")


def _architecture(d: dict) -> str:
    archs = d.get("architectures") or []
    if archs:
        name = archs[0]
        if name in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[name]
        raise UnsupportedModelError(
            f"unsupported architecture {name!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)} "
            "(LlamaForCausalLM also covers DeepSeek-LLM)"
        )
    model_type = d.get("model_type")
    if model_type in _HF_CLASS:
        return model_type
    raise UnsupportedModelError(
        f"unsupported model_type {model_type!r} (no 'architectures' in config.json); "
        f"supported: {', '.join(_HF_CLASS)}"
    )


def _rope(d: dict) -> float:
    """RoPE theta from a transformers 4.x (``rope_theta``, ``rope_scaling``) or 5.x
    (``rope_parameters``) config; any RoPE scaling is refused."""
    params = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or {}
    for source in (params, scaling):
        kind = source.get("rope_type", source.get("type", "default"))
        if kind not in (None, "default"):
            raise UnsupportedModelError(
                f"RoPE scaling {kind!r} is not supported (only plain RoPE: rope_type 'default')"
            )
    theta = d.get("rope_theta", params.get("rope_theta"))
    if theta is None:
        raise UnsupportedModelError("config.json has neither rope_theta nor rope_parameters.rope_theta")
    return float(theta)


def hf_config_to_model_config(hf_config: Any) -> ModelConfig:
    """The :class:`ModelConfig` of a Hugging Face ``config.json`` dict or ``PretrainedConfig``.

    Raises :class:`UnsupportedModelError` naming the architecture or the key when the model is
    outside the covered families or uses a feature they do not map (RoPE scaling, sliding
    windows, biases other than Qwen2's QKV bias, an activation other than SiLU).
    """
    d = _as_dict(hf_config)
    arch = _architecture(d)

    def refuse_if(condition: bool, what: str):
        if condition:
            raise UnsupportedModelError(f"{_HF_CLASS[arch]} with {what} is not supported")

    act = d.get("hidden_act", "silu")
    refuse_if(act not in ("silu", "swish"), f"hidden_act={act!r} (only SwiGLU with silu)")
    refuse_if(bool(d.get("attention_bias", False)), "attention_bias=true (a bias on o_proj too)")
    refuse_if(bool(d.get("mlp_bias", False)), "mlp_bias=true")
    refuse_if(bool(d.get("use_sliding_window", False)), "use_sliding_window=true")
    layer_types = d.get("layer_types") or []
    refuse_if(any(t != "full_attention" for t in layer_types), f"layer_types={sorted(set(layer_types))}")
    heads, hidden = int(d["num_attention_heads"]), int(d["hidden_size"])
    head_dim = d.get("head_dim")
    kv_channels = int(head_dim) if head_dim and int(head_dim) * heads != hidden else None
    kv_heads = d.get("num_key_value_heads")
    return ModelConfig(
        arch=arch,
        num_layers=int(d["num_hidden_layers"]),
        hidden_size=hidden,
        ffn_hidden_size=int(d["intermediate_size"]),
        num_attention_heads=heads,
        num_query_groups=int(kv_heads) if kv_heads is not None and int(kv_heads) != heads else None,
        kv_channels=kv_channels,
        vocab_size=int(d["vocab_size"]),
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        rotary_base=_rope(d),
        norm_epsilon=float(d.get("rms_norm_eps", 1e-6)),
        add_qkv_bias=arch == "qwen2",
        qk_layernorm=arch == "qwen3",
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
    )


def check_representable(cfg: ModelConfig) -> None:
    want = {"llama": (False, False), "qwen2": (True, False), "qwen3": (False, True)}[cfg.arch]
    if (cfg.add_qkv_bias, cfg.qk_layernorm) != want:
        raise UnsupportedModelError(
            f"{_HF_CLASS[cfg.arch]} has add_qkv_bias={want[0]} and qk_layernorm={want[1]}; the model "
            f"config has add_qkv_bias={cfg.add_qkv_bias}, qk_layernorm={cfg.qk_layernorm}"
        )


def model_config_to_hf_config(cfg: ModelConfig, dtype: torch.dtype | str | None = None) -> dict:
    """``config.json`` content for ``cfg`` (``architectures`` set), loadable by transformers
    4.57 (``rope_theta``, ``torch_dtype``) and 5.x (``rope_parameters``, ``dtype``)."""
    check_representable(cfg)
    out: dict[str, Any] = {
        "architectures": [_HF_CLASS[cfg.arch]],
        "model_type": cfg.arch,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.query_groups,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.norm_epsilon,
        "rope_theta": cfg.rotary_base,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rotary_base},
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
    }
    if cfg.arch in ("llama", "qwen3"):
        out["attention_bias"] = False
    if cfg.arch == "llama":
        out["mlp_bias"] = False
    if cfg.arch in ("qwen2", "qwen3"):
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
    if dtype is not None:
        name = str(dtype).replace("torch.", "")
        out["torch_dtype"] = out["dtype"] = name
    return out
