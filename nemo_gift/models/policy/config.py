"""Typed configuration of the policy model, its parallel layout and its precision.

One :class:`ModelConfig` describes the decoder-only architectures the project supports
(Llama / DeepSeek-LLM, Qwen2 / Qwen2.5, Qwen3); :class:`ParallelConfig` describes how it is
split over ranks and how it runs (dtype, layer implementation, :class:`Fp8Config`). All
validate themselves on construction, so a wrong value fails before any process group or
weight exists, with a message that names the field (through :mod:`nemo_gift.utils.checks`,
the project's one validation idiom).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from nemo_gift.models.policy import te_extra
from nemo_gift.utils.checks import check_choice, check_range

Architecture = Literal["llama", "qwen2", "qwen3"]
ParamsDtype = Literal["float32", "bfloat16", "float16"]
TransformerImpl = Literal["auto", "local", "transformer_engine"]
Fp8Format = Literal["e4m3", "hybrid"]
Fp8Recipe = Literal["delayed", "tensorwise", "mxfp8", "blockwise"]
Fp8AmaxAlgo = Literal["most_recent", "max"]


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
    """Vocabulary size, as the tokenizer and HF see it (megatron's tables may have padding rows,
    see :meth:`padded_vocab_size`)."""
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
    make_vocab_size_divisible_by: int = 128
    """megatron's vocab padding unit. Used only when TP does not divide ``vocab_size``: the
    embedding and output tables then get :meth:`padded_vocab_size` rows (zeros past
    ``vocab_size``), and HF export strips them again."""

    def __post_init__(self):
        for name in (
            "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "vocab_size",
            "make_vocab_size_divisible_by", "max_position_embeddings", "num_query_groups", "kv_channels",
        ):
            check_range(f"model.{name}", getattr(self, name), low=1)
        check_range("model.rotary_base", self.rotary_base, low=0, low_open=True)
        check_range("model.norm_epsilon", self.norm_epsilon, low=0, low_open=True)
        check_choice("model.arch", self.arch, Architecture)
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

    def padded_vocab_size(self, tp: int) -> int:
        """Rows of the embedding and output tables at tensor parallelism ``tp``.

        ``vocab_size`` itself when ``tp`` divides it (the usual case: Qwen2.5's 152064,
        Qwen3's 151936, Llama 3's 128256 and DeepSeek-LLM's 102400 are multiples of 8).
        Otherwise megatron's convention: the next multiple of
        ``make_vocab_size_divisible_by * tp``. The logits of the padding ids are 0 (their
        output rows are zero), not -inf: consumers of full-vocabulary logits must ignore the
        columns from ``vocab_size`` on.
        """
        if self.vocab_size % tp == 0:
            return self.vocab_size
        multiple = self.make_vocab_size_divisible_by * tp
        return -(-self.vocab_size // multiple) * multiple


@dataclasses.dataclass
class Fp8Config:
    """FP8 training through Transformer Engine (GPU only), mapped onto megatron-core's
    ``TransformerConfig`` fp8 fields by :func:`nemo_gift.models.policy.te_spec.fp8_kwargs`.

    Needs ``parallel.transformer_impl`` ``auto`` or ``transformer_engine`` and the ``gpu``
    extra (``pip install nemo_gift[gpu]``). Parameters and optimizer state keep
    ``parallel.params_dtype`` (bf16 on GPUs); FP8 applies to the GEMMs of the transformer
    layers, except the first and last ``high_precision_layers_*`` layers.
    """

    format: Fp8Format = "hybrid"
    """``e4m3`` everywhere, or ``hybrid``: e4m3 forward, e5m2 for the gradients (the usual
    choice for training). -> ``TransformerConfig.fp8``."""
    recipe: Fp8Recipe = "tensorwise"
    """Scaling recipe: ``tensorwise`` (per-tensor current scaling), ``delayed`` (amax history),
    ``mxfp8`` (Blackwell only) or ``blockwise`` (block scaling; needs a recent TE). -> ``fp8_recipe``."""
    margin: int = 0
    """Scaling-factor margin (powers of 2). -> ``fp8_margin``."""
    amax_history_len: int = 1024
    """Amax history window of the ``delayed`` recipe. -> ``fp8_amax_history_len``."""
    amax_compute_algo: Fp8AmaxAlgo = "max"
    """How the ``delayed`` recipe picks amax from its history. -> ``fp8_amax_compute_algo``."""
    high_precision_layers_at_start: int = 0
    """Transformer layers kept in ``params_dtype`` at the start of the model (global index).
    -> ``first_last_layers_bf16`` and ``num_layers_at_start_in_bf16``; not with ``delayed``."""
    high_precision_layers_at_end: int = 0
    """Same, at the end of the model. -> ``num_layers_at_end_in_bf16``."""
    fp8_wgrad: bool = True
    """Weight gradients in FP8 too; false computes them in high precision. -> ``fp8_wgrad``."""
    fp8_param: bool = False
    """Keep the GEMM weights themselves in FP8 (saves memory). -> ``fp8_param``."""

    def __post_init__(self):
        check_choice("parallel.fp8.format", self.format, Fp8Format)
        check_choice("parallel.fp8.recipe", self.recipe, Fp8Recipe)
        check_choice("parallel.fp8.amax_compute_algo", self.amax_compute_algo, Fp8AmaxAlgo)
        for name in ("margin", "high_precision_layers_at_start", "high_precision_layers_at_end"):
            check_range(f"parallel.fp8.{name}", getattr(self, name), low=0)
        check_range("parallel.fp8.amax_history_len", self.amax_history_len, low=1)
        if self.recipe == "delayed" and (self.high_precision_layers_at_start or self.high_precision_layers_at_end):
            raise ValueError(
                "parallel.fp8.high_precision_layers_at_start/_at_end need a current-scaling recipe "
                "(tensorwise, mxfp8 or blockwise); megatron-core refuses them with recipe=delayed"
            )


@dataclasses.dataclass
class ParallelConfig:
    """How the policy is split: tensor (TP), pipeline (PP) and data (DP = world / (TP*PP))."""

    tensor_model_parallel_size: int = 1
    """TP: splits heads, the MLP and the vocabulary."""
    pipeline_model_parallel_size: int = 1
    """PP: splits the layers into stages."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism: the norms, dropouts and residuals hold ``S/TP`` of the
    sequence on each TP rank. Needs TP > 1, and token batches padded to a multiple of TP
    (:attr:`sequence_pad_multiple`). Runs on CPU with the project's local spec."""
    use_distributed_optimizer: bool = False
    """Shard the optimizer state (fp32 main weights, Adam moments) over DP (ZeRO-1), as
    megatron-core's ``DistributedOptimizer``."""
    recompute_activations: bool = False
    """Full activation recompute: keep only each layer's input and recompute the layer in
    backward (megatron-core ``recompute_granularity="full"``, ``recompute_method="uniform"``,
    one layer per checkpoint). Trades about a third more compute for activation memory."""
    params_dtype: ParamsDtype = "float32"
    """Parameter dtype; bf16 on GPUs."""
    transformer_impl: TransformerImpl = "auto"
    """Layer implementation: ``local`` (megatron-core's own modules; runs anywhere, and is the
    numerical reference), ``transformer_engine`` (TE modules; needs CUDA and the ``gpu``
    extra), or ``auto``: TE where CUDA and TE are both present, else local."""
    fp8: Fp8Config | None = None
    """FP8 training (GPU, Transformer Engine); ``None`` keeps every GEMM in ``params_dtype``."""
    fused_lm_head_logprobs: bool = True
    """Compute the policy's and the reference's log-probs inside the LM head, ``logprob_chunk_size``
    tokens at a time, recomputing each chunk's logits in backward
    (:mod:`nemo_gift.models.policy.lm_head`): no ``[b*s, V/TP]`` logits tensor exists whole.
    Equal to the logits path within fp32 rounding (1e-5, tested); costs one more GEMM of the LM
    head in backward. ``false``: the model returns the logits and
    :func:`nemo_gift.distributed.logprobs.vocab_parallel_logprobs` reduces them."""

    def __post_init__(self):
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
            check_range(f"parallel.{name}", getattr(self, name), low=1)
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            raise ValueError("parallel.sequence_parallel=true needs tensor_model_parallel_size > 1")
        check_choice("parallel.params_dtype", self.params_dtype, ParamsDtype)
        check_choice("parallel.transformer_impl", self.transformer_impl, TransformerImpl)
        if isinstance(self.fp8, dict):  # from YAML
            self.fp8 = Fp8Config(**self.fp8)
        if self.fp8 is not None or self.transformer_impl == "transformer_engine":
            what = "parallel.fp8" if self.fp8 is not None else "parallel.transformer_impl=transformer_engine"
            te_extra.require_transformer_engine(what)
        if self.fp8 is not None and self.transformer_impl == "local":
            raise ValueError("parallel.fp8 needs the Transformer Engine layers; set parallel.transformer_impl to auto")

    @property
    def sequence_pad_multiple(self) -> int:
        """The multiple every token batch's sequence length S is padded to for this layout.

        ``m = (TP if sequence_parallel else 1) * (A if fp8 else 1)``, with the FP8 alignment
        ``A`` = 32 for ``mxfp8`` and 16 for the other recipes.

        - Sequence parallelism splits the ``[S, b, h]`` activations into TP chunks along S,
          and megatron-core asserts that TP divides S.
        - Transformer Engine's FP8 GEMMs need the product of an operand's leading dims to be
          a multiple of 8 and its last dim of 16 (``assert_dim_for_fp8_exec`` in
          ``transformer_engine/pytorch/utils.py``); the weight-gradient GEMM takes the token
          dim ``S*b`` as a last dim, so ``S*b`` must be a multiple of 16. MXFP8 scales blocks
          of 32 elements along both dims, hence 32 (megatron-core's
          ``fp8_utils.get_fp8_align_size`` gives the same 16 / 32). Under sequence parallelism
          TE quantizes each rank's ``S/TP`` chunk before the all-gather, so the alignment
          applies to ``S/TP``, hence the product.
        """
        multiple = self.tensor_model_parallel_size if self.sequence_parallel else 1
        if self.fp8 is not None:
            multiple *= 32 if self.fp8.recipe == "mxfp8" else 16
        return multiple

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
        if model.num_layers % pp:
            raise ValueError(
                f"parallel.pipeline_model_parallel_size={pp} does not divide "
                f"model.num_layers={model.num_layers}"
            )
        if self.fp8 is not None:
            per_stage = model.num_layers // pp
            for name in ("high_precision_layers_at_start", "high_precision_layers_at_end"):
                if getattr(self.fp8, name) > per_stage:
                    raise ValueError(
                        f"parallel.fp8.{name}={getattr(self.fp8, name)} exceeds the {per_stage} "
                        f"layers of a pipeline stage (megatron-core's limit)"
                    )
        if world_size is not None and world_size % (tp * pp):
            raise ValueError(
                f"world size {world_size} is not divisible by tensor_model_parallel_size * "
                f"pipeline_model_parallel_size = {tp * pp}"
            )
        if not cuda:
            if self.params_dtype == "float16":
                raise ValueError("parallel.params_dtype=float16 is not supported on CPU; use float32 or bfloat16")
            if self.fp8 is not None or self.transformer_impl == "transformer_engine":
                raise ValueError(
                    "parallel.fp8 and parallel.transformer_impl=transformer_engine need CUDA "
                    "(Transformer Engine has no CPU kernels)"
                )
