"""Build a megatron-core ``GPTModel`` (one pipeline stage of it) from the typed configs.

    ps.initialize_model_parallel(tp, pp)      # nemo_gift.models.policy.parallel.initialize
    model = build_gpt_model(model_cfg, parallel_cfg)

The layer spec follows ``parallel.transformer_impl``: the local megatron-core spec on CPU (and
the numerical reference; its norms are the project's :class:`RMSNorm`, so that sequence
parallelism runs without Apex or TE), the Transformer Engine spec (:mod:`nemo_gift.models.policy.te_spec`,
the only module that imports TE) on GPUs that have it, with ``parallel.fp8`` mapped onto
megatron-core's FP8 settings. The embedding and output tables have
``model.padded_vocab_size(TP)`` rows (see :meth:`ModelConfig.padded_vocab_size`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nemo_gift.models.policy.config import ModelConfig, ParallelConfig
from nemo_gift.utils.torch_utils import TORCH_DTYPES as _DTYPES


def use_transformer_engine(parallel: ParallelConfig) -> bool:
    """Whether this layout builds Transformer Engine layers (see ``parallel.transformer_impl``)."""
    from nemo_gift.models.policy import te_extra

    if parallel.transformer_impl == "auto":
        return torch.cuda.is_available() and te_extra.transformer_engine_available()
    return parallel.transformer_impl == "transformer_engine"


def transformer_config(model: ModelConfig, parallel: ParallelConfig):
    """The megatron-core ``TransformerConfig`` for this model and layout (FP8 fields included)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nemo_gift.models.policy import te_spec

    dtype = _DTYPES[parallel.params_dtype]
    on_cpu = not torch.cuda.is_available()
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.query_groups,
        kv_channels=model.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=model.add_qkv_bias,
        qk_layernorm=model.qk_layernorm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype is torch.bfloat16,
        fp16=dtype is torch.float16,
        use_cpu_initialization=on_cpu,
        # The fused kernels are CUDA kernels; their unfused forms are exact equivalents.
        masked_softmax_fusion=not on_cpu and _apex_softmax_available(),
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        **_recompute_kwargs(parallel),
        **te_spec.fp8_kwargs(parallel.fp8),
    )


def _recompute_kwargs(parallel: ParallelConfig) -> dict:
    """megatron-core's full, uniform recompute of every layer, when ``parallel`` asks for it."""
    if not parallel.recompute_activations:
        return {}
    return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}


def _apex_softmax_available() -> bool:
    """Whether Apex's fused softmax kernels are importable. The local spec's attention
    (megatron-core's ``FusedScaleMaskSoftmax``) imports ``scaled_masked_softmax_cuda`` for
    fp16/bf16 inputs when ``masked_softmax_fusion`` is on; without Apex that import fails at the
    first forward on a GPU (seen on an H200 with megatron-core 0.19.2). TE's spec does not use it."""
    import importlib.util

    return importlib.util.find_spec("scaled_masked_softmax_cuda") is not None


class RMSNorm(torch.nn.RMSNorm):
    """``torch.nn.RMSNorm`` built with megatron-core's norm signature, for the local spec.

    ``y = x / sqrt(mean(x^2) + eps) * weight`` over the last dim (torch's own op).

    megatron-core's ``WrappedTorchNorm`` (the local spec's norm without Apex) asserts
    ``not config.sequence_parallel``. Under sequence parallelism each TP rank normalizes its
    ``S/TP`` rows, so the weight's gradient is partial over TP: marking the weight
    ``sequence_parallel`` makes megatron-core's ``finalize_model_grads`` all-reduce it over TP,
    as TE's ``TENorm`` does. Without sequence parallelism the mark is False and nothing changes.
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_unused):
        # where megatron-core's own layers put their weights (they read the same flag: the
        # default device, or the current GPU), in params_dtype, as TE's norms
        device = None if config.use_cpu_initialization else torch.cuda.current_device()
        super().__init__(hidden_size, eps=eps, dtype=config.params_dtype, device=device)
        self.weight.sequence_parallel = bool(config.sequence_parallel)


def layer_spec(model: ModelConfig, parallel: ParallelConfig | None = None):
    """The megatron-core layer spec: local (with :class:`RMSNorm` for its four norms), or
    Transformer Engine when ``parallel`` asks for it (or ``auto`` finds CUDA and TE)."""
    import dataclasses

    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.identity_op import IdentityOp

    if parallel is not None and use_transformer_engine(parallel):
        from nemo_gift.models.policy import te_spec

        return te_spec.layer_spec(model)
    spec = get_gpt_layer_local_spec(qk_layernorm=model.qk_layernorm, normalization="RMSNorm")
    attention = spec.submodules.self_attention
    qk_norm = RMSNorm if model.qk_layernorm else IdentityOp
    attention = dataclasses.replace(
        attention, submodules=dataclasses.replace(attention.submodules, q_layernorm=qk_norm, k_layernorm=qk_norm)
    )
    submodules = dataclasses.replace(
        spec.submodules, input_layernorm=RMSNorm, pre_mlp_layernorm=RMSNorm, self_attention=attention
    )
    return dataclasses.replace(spec, submodules=submodules)


def decoder_spec(model: ModelConfig, parallel: ParallelConfig):
    """What ``GPTModel`` gets as its ``transformer_layer_spec``: the TE layer spec as is
    (megatron-core adds TE's final norm), or this stage's local layers with :class:`RMSNorm`
    as the final norm (megatron-core's default there is ``WrappedTorchNorm``)."""
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

    spec = layer_spec(model, parallel)
    if use_transformer_engine(parallel):
        return spec
    per_stage = model.num_layers // parallel.pipeline_model_parallel_size
    return TransformerBlockSubmodules(layer_specs=[spec] * per_stage, layer_norm=RMSNorm)


def build_gpt_model(model: ModelConfig, parallel: ParallelConfig, *, spec=None):
    """This rank's pipeline stage of the policy, built after model parallelism is initialized.

    Args:
        model: the architecture.
        parallel: the layout (must match ``parallel_state``'s).
        spec: a layer (or block) spec; defaults to :func:`decoder_spec`.

    Returns:
        A ``megatron.core.models.gpt.GPTModel`` whose forward returns vocab-parallel logits
        ``[b, s, Vp/TP]`` on the last stage (``parallel_output=True``; ``Vp`` =
        ``model.padded_vocab_size(TP)``) and hidden states elsewhere.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel

    parallel.validate_for(model, cuda=torch.cuda.is_available())
    return GPTModel(
        config=transformer_config(model, parallel),
        transformer_layer_spec=spec if spec is not None else decoder_spec(model, parallel),
        vocab_size=model.padded_vocab_size(parallel.tensor_model_parallel_size),
        max_sequence_length=model.max_position_embeddings,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=model.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=int(model.rotary_base),
    )


def wrap_for_training(model, parallel: ParallelConfig):
    """Wrap a stage in megatron-core's ``DistributedDataParallel`` and register the grad
    finalization that ``forward_backward_func`` runs after the last micro-batch.

    That finalization all-reduces the grads over DP, the replicated q/k-norm grads over TP
    (each TP rank only sees its own heads), and the tied embedding grads over the first and
    last PP stages. Grads land in each parameter's ``main_grad`` (fp32).
    """
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads

    ddp = DistributedDataParallel(
        config=model.config,
        ddp_config=DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            use_distributed_optimizer=parallel.use_distributed_optimizer,
        ),
        module=model,
    )
    model.config.finalize_model_grads_func = finalize_model_grads
    return ddp
