"""Typed configuration of the policy model and its parallel layout.

One :class:`ModelConfig` describes the decoder-only architectures the project supports
(Llama / DeepSeek-LLM, Qwen2 / Qwen2.5, Qwen3); :class:`ParallelConfig` describes how it is
split over ranks. Both validate themselves on construction, so a wrong value fails before any
process group or weight exists, with a message that names the field.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Architecture = Literal["llama", "qwen2", "qwen3"]
ParamsDtype = Literal["float32", "bfloat16", "float16"]


@dataclasses.dataclass
class ModelConfig:
    """A decoder-only transformer with RoPE, RMSNorm and a SwiGLU MLP."""

    arch: Architecture = "qwen2"
    """Family. ``llama`` also covers DeepSeek-LLM (same layout)."""
    num_layers: int = 2
    """Number of transformer layers."""
    hidden_size: int = 64
    """Model width."""
    ffn_hidden_size: int = 128
    """Width of the SwiGLU MLP (per gate/up projection)."""
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: int | None = None
    """Key/value heads for grouped-query attention; ``None`` means one per query head."""
    kv_channels: int | None = None
    """Head dimension; ``None`` means ``hidden_size // num_attention_heads`` (Qwen3 sets it)."""
    vocab_size: int = 128
    """Vocabulary size, as the tokenizer and the embedding table see it."""
    max_position_embeddings: int = 2048
    """Longest sequence the RoPE tables are built for."""
    rotary_base: float = 10000.0
    """RoPE theta (1e6 for Qwen2.5 and Qwen3)."""
    norm_epsilon: float = 1e-6
    """RMSNorm epsilon."""
    add_qkv_bias: bool = False
    """Bias on the Q, K and V projections (Qwen2/2.5: true)."""
    qk_layernorm: bool = False
    """RMSNorm on each head's queries and keys (Qwen3: true)."""
    tie_word_embeddings: bool = False
    """Share the input embedding and the output layer (small Qwen models)."""

    def __post_init__(self):
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.arch not in ("llama", "qwen2", "qwen3"):
            raise ValueError(f"model.arch must be one of llama, qwen2, qwen3; got {self.arch!r}")
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"model.num_attention_heads={self.num_attention_heads}; set model.kv_channels"
            )
        if self.num_attention_heads % self.query_groups:
            raise ValueError(
                f"model.num_attention_heads={self.num_attention_heads} is not divisible by "
                f"model.num_query_groups={self.query_groups}"
            )

    @property
    def query_groups(self) -> int:
        """Number of key/value heads."""
        return self.num_query_groups or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        """Per-head channels."""
        return self.kv_channels or self.hidden_size // self.num_attention_heads


@dataclasses.dataclass
class ParallelConfig:
    """How the policy is split: tensor (TP), pipeline (PP) and data (DP = world / (TP*PP))."""

    tensor_model_parallel_size: int = 1
    """TP: splits heads, the MLP and the vocabulary."""
    pipeline_model_parallel_size: int = 1
    """PP: splits the layers into stages."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (GPU only: needs the TE or Apex LayerNorm)."""
    use_distributed_optimizer: bool = False
    """Shard optimizer state over DP (GPU only: CUDA tensor-type checks)."""
    params_dtype: ParamsDtype = "float32"
    """Parameter dtype; bf16 on GPUs."""

    def __post_init__(self):
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"parallel.{name} must be >= 1, got {getattr(self, name)}")
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            raise ValueError("parallel.sequence_parallel=true needs tensor_model_parallel_size > 1")

    def validate_for(self, model: ModelConfig, world_size: int | None = None, cuda: bool = True):
        """Check the layout against a model and a world size; raise naming the key."""
        tp, pp = self.tensor_model_parallel_size, self.pipeline_model_parallel_size
        if model.num_attention_heads % tp:
            raise ValueError(
                f"parallel.tensor_model_parallel_size={tp} does not divide "
                f"model.num_attention_heads={model.num_attention_heads}"
            )
        if model.query_groups % tp:
            raise ValueError(
                f"parallel.tensor_model_parallel_size={tp} does not divide the key/value heads "
                f"(model.num_query_groups={model.query_groups})"
            )
        if model.ffn_hidden_size % tp:
            raise ValueError(
                f"parallel.tensor_model_parallel_size={tp} does not divide "
                f"model.ffn_hidden_size={model.ffn_hidden_size}"
            )
        if model.vocab_size % tp:
            raise ValueError(
                f"parallel.tensor_model_parallel_size={tp} does not divide "
                f"model.vocab_size={model.vocab_size}"
            )
        if model.num_layers % pp:
            raise ValueError(
                f"parallel.pipeline_model_parallel_size={pp} does not divide "
                f"model.num_layers={model.num_layers}"
            )
        if world_size is not None and world_size % (tp * pp):
            raise ValueError(
                f"world size {world_size} is not divisible by tensor_model_parallel_size * "
                f"pipeline_model_parallel_size = {tp * pp}"
            )
        if not cuda:
            from nemo_gift.distributed.cpu_compat import CPU_UNSUPPORTED

            for key, why in CPU_UNSUPPORTED.items():
                if getattr(self, key):
                    raise ValueError(f"parallel.{key}=true cannot run without CUDA: {why}")
            if self.params_dtype == "float16":
                raise ValueError("parallel.params_dtype=float16 is not supported on CPU; use float32 or bfloat16")
