"""Transformer Engine: the one module of the project that imports ``transformer_engine``.

It gives the TE layer spec of the policy and maps :class:`~nemo_gift.models.policy.config.Fp8Config`
onto megatron-core's ``TransformerConfig`` fp8 fields. TE is imported lazily, only when a TE
spec is built; :func:`transformer_engine_available` looks for it without importing it, so
config validation on a CPU machine costs nothing and fails with the extra to install
(:mod:`nemo_gift.models.policy.te_extra`, which the config imports).

What was executed where (TE cannot be installed on the CPU development machines, see
``docs/export.md``):
- executed on CPU: :func:`fp8_kwargs` (the field mapping, checked against megatron-core's own
  ``TransformerConfig`` validation), and the missing-extra error;
- not executed: :func:`layer_spec` and FP8 training. They follow megatron-core 0.16.1 and
  0.19.2 as read from their sources: ``get_gpt_layer_with_transformer_engine_spec(
  qk_layernorm=...)`` (``TELayerNormColumnParallelLinear`` for QKV and fc1, so the input and
  pre-MLP RMSNorm weights become ``linear_qkv.layer_norm_weight`` and
  ``mlp.linear_fc1.layer_norm_weight``, which :mod:`nemo_gift.models.policy.hf_weights` handles), and the
  fp8 fields ``fp8``, ``fp8_recipe``, ``fp8_margin``, ``fp8_amax_history_len``,
  ``fp8_amax_compute_algo``, ``fp8_wgrad``, ``fp8_param``, ``first_last_layers_bf16``,
  ``num_layers_at_start_in_bf16`` and ``num_layers_at_end_in_bf16``, which both versions have.
  megatron-core enters the FP8 autocast itself, per layer, from those fields.
"""

from __future__ import annotations

from nemo_gift.models.policy.config import Fp8Config, ModelConfig
from nemo_gift.models.policy.te_extra import INSTALL_HINT, MissingExtraError, require_transformer_engine


def layer_spec(model: ModelConfig):
    """The Transformer Engine layer spec of megatron-core for this architecture.

    Not executed on the CPU machines (see the module docstring).
    """
    require_transformer_engine("the Transformer Engine layer spec")
    try:
        import transformer_engine.pytorch  # noqa: F401  (the real import; fails on a meta-only install)
    except Exception as err:  # a broken or CUDA-less install raises RuntimeError/OSError, not ImportError
        raise MissingExtraError(
            f"transformer_engine is present but does not import ({err}); reinstall it with `{INSTALL_HINT}`"
        ) from err
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

    return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=model.qk_layernorm)


def fp8_kwargs(fp8: Fp8Config | None) -> dict:
    """megatron-core ``TransformerConfig`` keyword arguments for ``fp8`` (``{}`` for None).

    "High precision" is megatron-core's ``*_bf16`` naming: those layers run in
    ``params_dtype``, whatever it is.
    """
    if fp8 is None:
        return {}
    keep = fp8.high_precision_layers_at_start > 0 or fp8.high_precision_layers_at_end > 0
    return {
        "fp8": fp8.format,
        "fp8_recipe": fp8.recipe,
        "fp8_margin": fp8.margin,
        "fp8_amax_history_len": fp8.amax_history_len,
        "fp8_amax_compute_algo": fp8.amax_compute_algo,
        "fp8_wgrad": fp8.fp8_wgrad,
        "fp8_param": fp8.fp8_param,
        "first_last_layers_bf16": keep,
        "num_layers_at_start_in_bf16": fp8.high_precision_layers_at_start,
        "num_layers_at_end_in_bf16": fp8.high_precision_layers_at_end,
    }
