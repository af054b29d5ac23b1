"""CPU compatibility layer for NeMo-Aligner 0.7.0 + nemo-toolkit 2.4.1 (gloo, no CUDA, no Apex/TE).

The twin of :mod:`nemo_gift.distributed.cpu_compat` (megatron-core's patches, applied first) for
the NeMo and Aligner code the GIFT actor and ``GiftTrainer.fit`` run through: NeMo's Lightning
strategy, ``MegatronGPTModel``, its text generation, grad clipping, and Aligner's helpers. The same
rules:

- :func:`apply` is a no-op where ``torch.cuda.is_available()``: GPUs run NeMo and Aligner untouched.
- Each patch is a :class:`~nemo_gift.distributed.cpu_compat.Patch` with a one-line reason and the
  stack it was measured on (:data:`STACK`). ``tests/unit/integrations/test_aligner_cpu_compat.py``
  runs what needs each patch with that patch switched off and expects the failure, so a patch made
  obsolete by an upgrade fails its test and names itself.
- A patch can be switched off with ``NEMO_GIFT_ALIGNER_CPU_COMPAT_SKIP=name1,name2``.

No patch here works around the pairing of NeMo and megatron-core. The stack pins megatron-core
0.13.1, the release NeMo 2.4.1 was built against (``containers/aligner-stack.txt``). With 0.16.1, NeMo 2.4.1 failed on things no CPU patch
should paper over: a removed ``tensorstore`` strategy, a removed
``set_pipeline_model_parallel_split_rank``, and the "Inference must always gather TP logits"
assert. One 0.13 requirement remains, the model-parallel groups at model construction, and it is
met by ``build.initialize_parallel_state`` on GPUs as on CPU, not by a patch.

Call :func:`apply` after ``nemo_gift.distributed.cpu_compat.apply()`` and before the Lightning
trainer is built. It imports NeMo and Aligner (about 20 s on 2 cores), and needs the
TensorRT-LLM/PyTriton test shim where those are absent (``tests/unit/integrations/_aligner_shims.py``).
"""

from __future__ import annotations

import importlib
import os

import torch

from nemo_gift.distributed.cpu_compat import Patch, _CpuTorch, cpu_mode, replace_module_torch, wrap_once

__all__ = ["PATCHES", "STACK", "SKIP_ENV", "apply", "applied"]

SKIP_ENV = "NEMO_GIFT_ALIGNER_CPU_COMPAT_SKIP"
STACK = "nemo-toolkit 2.4.1, nemo-aligner 0.7.0, megatron-core 0.13.1, torch 2.13.0 CPU, no Apex/TE"
"""What every patch below was measured on."""

_APPLIED: list[str] = []


def applied() -> list[str]:
    """Names of the patches applied in this process, in order."""
    return list(_APPLIED)


class _NoSuchOptimizer:
    """Stands for an Apex-only optimizer class on CPU: no optimizer is an instance of it."""


class _NoSuchNorm(torch.nn.Module):
    """Stands for an Apex-only norm class on CPU: no module is an instance of it."""


def _listify_model(model):
    """Apex's ``listify_model``: a model chunk list as it is, a single module in a list."""
    return model if isinstance(model, list) else [model]


def _patch_apex_strategy():
    nlp_overrides = importlib.import_module("nemo.collections.nlp.parts.nlp_overrides")
    if not nlp_overrides.HAVE_APEX:
        nlp_overrides.HAVE_APEX = True
        nlp_overrides.MegatronDistributedFusedAdam = _NoSuchOptimizer
        nlp_overrides.McoreDistributedOptimizer = _NoSuchOptimizer


def _patch_nvidia_version():
    base = importlib.import_module("nemo.collections.nlp.models.language_modeling.megatron_base_model")

    def make(original):
        def enable_nvidia_optimizations(self):
            # Outside an NGC container NeMo's own fallback is today's "YY.MM", past every version
            # range it tests, so the method does nothing there; it only fails to get that far.
            if os.getenv("NVIDIA_PYTORCH_VERSION") is not None:
                original(self)

        return enable_nvidia_optimizations

    wrap_once(base.MegatronBaseModel, "_enable_nvidia_optimizations", make)


def _patch_lazy_layer_spec():
    gpt = importlib.import_module("nemo.collections.nlp.models.language_modeling.megatron_gpt_model")

    def make(original):
        def get_specs(spec_name, transformer_config=None, use_te=True, hyena_cfg=None, fp8=False):
            # The local (no-TE) spec, as NeMo's own table builds it for spec_name "".
            if spec_name == "" and not use_te:
                num_experts = transformer_config.num_moe_experts if transformer_config else None
                grouped = transformer_config.moe_grouped_gemm if transformer_config else False
                return gpt.get_gpt_layer_local_spec(num_experts, grouped)
            return original(spec_name, transformer_config, use_te, hyena_cfg, fp8)

        return get_specs

    wrap_once(gpt, "get_specs", make)


def _patch_tp_attribute_defaults():
    build_model = importlib.import_module("nemo.collections.nlp.modules.common.megatron.build_model")
    if not hasattr(build_model, "set_defaults_if_not_set_tensor_model_parallel_attributes"):
        from megatron.core.tensor_parallel.layers import set_defaults_if_not_set_tensor_model_parallel_attributes

        build_model.set_defaults_if_not_set_tensor_model_parallel_attributes = (
            set_defaults_if_not_set_tensor_model_parallel_attributes
        )


def _patch_cp_stream():
    base = importlib.import_module("nemo.collections.nlp.models.language_modeling.megatron_base_model")

    def make(original):
        def setup_transformer_engine_cp_groups(self):
            # The stream is only handed to modules that take a context-parallel group (TE's); the
            # local layer spec has none, so there is nothing to set up.
            modules = self.get_model_module_list()
            if any(hasattr(child, "set_context_parallel_group") for m in modules for child in m.modules()):
                original(self)

        return setup_transformer_engine_cp_groups

    wrap_once(base.MegatronBaseModel, "setup_transformer_engine_cp_groups", make)


def _patch_apex_param_groups():
    utils = importlib.import_module("nemo.collections.nlp.modules.common.megatron.utils")
    if not utils.HAVE_APEX and not hasattr(utils, "listify_model"):
        utils.listify_model = _listify_model
        utils.FusedLayerNorm = utils.FastLayerNorm = utils.MixedFusedRMSNorm = _NoSuchNorm


def _stay_on_cpu(self, device=None):
    """``LightningModule.cuda`` on a CPU build: the model stays where it is."""
    return self


def _patch_model_cuda():
    gpt = importlib.import_module("nemo.collections.nlp.models.language_modeling.megatron_gpt_model")
    gpt.MegatronGPTModel.cuda = _stay_on_cpu


class _CpuCuda:
    """``torch.cuda`` inside one NeMo/Aligner module: the legacy CUDA tensor types are the CPU ones;
    everything else is the real ``torch.cuda`` (itself patched by the core layer)."""

    FloatTensor = torch.FloatTensor
    LongTensor = torch.LongTensor
    ByteTensor = torch.ByteTensor

    def __getattr__(self, name):
        return getattr(torch.cuda, name)


class _CpuTorchLegacyCuda(_CpuTorch):
    """The core layer's module-local ``torch`` (factories naming a CUDA device get the CPU), with
    :class:`_CpuCuda` as its ``cuda``."""

    def __init__(self):
        super().__init__()
        self.cuda = _CpuCuda()


# NeMo and Aligner modules on the rollout and training path that build tensors with the legacy
# torch.cuda.*Tensor types or a literal device="cuda".
_LEGACY_CUDA_MODULES = (
    "nemo.collections.nlp.modules.common.text_generation_utils",  # send_generate_info: torch.cuda.FloatTensor
    "nemo.collections.nlp.modules.common.text_generation_strategy",  # tokenize_batch: torch.cuda.LongTensor
    "nemo_aligner.models.nlp.gpt.megatron_gpt_reinforce_actor",  # infer: torch.cuda.LongTensor
    "nemo_aligner.utils.distributed",  # broadcast_2d_tensor: torch.cuda.FloatTensor, device="cuda"
    # NeMo's generation passes no attention mask; megatron-core then builds its default causal
    # mask on device="cuda" (get_default_causal_mask). nemo_gift's own paths always pass one.
    "megatron.core.transformer.utils",
    "nemo.collections.nlp.modules.common.megatron.clip_grads",  # asserts torch.cuda.FloatTensor grads
)


def _patch_legacy_cuda_tensors():
    replace_module_torch(_LEGACY_CUDA_MODULES, _CpuTorchLegacyCuda())


def _patch_model_parallel_seed():
    init = importlib.import_module("nemo.collections.nlp.modules.common.megatron.megatron_init")

    def make(original):
        def set_random_seed(seed_):
            original(seed_)
            if torch.cuda.device_count() == 0:  # the branch NeMo skips: the same seed, on the CPU generator
                init.tensor_parallel.model_parallel_cuda_manual_seed(seed_ + 100 * init.get_pipeline_model_parallel_rank())

        return set_random_seed

    wrap_once(init, "_set_random_seed", make)


def _patch_gloo_allgather_scalar():
    import torch.distributed as dist

    def make(original):
        def all_gather_into_tensor(output_tensor, input_tensor, *args, **kwargs):
            if input_tensor.dim() == 0:  # the same bytes, in the 1-element shape gloo checks for
                input_tensor = input_tensor.reshape(1)
            return original(output_tensor, input_tensor, *args, **kwargs)

        return all_gather_into_tensor

    wrap_once(dist, "all_gather_into_tensor", make)


def _patch_apex_grad_norm():
    import types

    from megatron.core.utils import local_multi_tensor_applier, local_multi_tensor_l2_norm

    clip_grads = importlib.import_module("nemo.collections.nlp.modules.common.megatron.clip_grads")
    if not clip_grads.HAVE_APEX and not hasattr(clip_grads, "amp_C"):
        # megatron-core's own no-Apex stand-ins for these two (megatron/core/utils.py).
        clip_grads.amp_C = types.SimpleNamespace(multi_tensor_l2norm=local_multi_tensor_l2_norm)
        clip_grads.multi_tensor_applier = local_multi_tensor_applier


PATCHES: tuple[Patch, ...] = (
    Patch(
        "apex_strategy",
        "NLPDDPStrategy refuses to start without Apex (its HAVE_APEX is whether Apex's distributed "
        "Adam imports), though a non-distributed optimizer uses nothing of Apex",
        STACK,
        _patch_apex_strategy,
    ),
    Patch(
        "nvidia_version",
        "MegatronBaseModel._enable_nvidia_optimizations passes NVIDIA_PYTORCH_VERSION (set only in "
        "NGC containers) to re.fullmatch before its own None check, so the constructor raises TypeError",
        STACK,
        _patch_nvidia_version,
    ),
    Patch(
        "lazy_layer_spec",
        "megatron_gpt_model.get_specs builds every layer spec in a dict before picking one, and the "
        "Transformer Engine spec raises NameError (TESpecProvider) where TE is not installed",
        STACK,
        _patch_lazy_layer_spec,
    ),
    Patch(
        "tp_attribute_defaults",
        "build_model calls set_defaults_if_not_set_tensor_model_parallel_attributes, imported from Apex "
        "only (NameError without it); megatron-core has the same function",
        STACK,
        _patch_tp_attribute_defaults,
    ),
    Patch(
        "cp_stream",
        "MegatronGPTModel.setup (Lightning's set-up hook) creates a torch.cuda.Stream for Transformer "
        "Engine's context-parallel layers even when the model has none",
        STACK,
        _patch_cp_stream,
    ),
    Patch(
        "apex_param_groups",
        "get_params_for_weight_decay_optimization (the optimizer set-up) calls Apex's listify_model "
        "and isinstance-checks Apex's norms, all imported from Apex only (NameError without it)",
        STACK,
        _patch_apex_param_groups,
    ),
    Patch(
        "model_cuda",
        "MegatronGPTModel.generate (Aligner's rollouts without TensorRT-LLM) calls self.cuda(), which "
        "Lightning implements with torch.cuda.current_device()",
        STACK,
        _patch_model_cuda,
    ),
    Patch(
        "legacy_cuda_tensors",
        "NeMo's text generation, Aligner's rollout and broadcast helpers and megatron-core's default "
        'causal mask build tensors with torch.cuda.FloatTensor/LongTensor or device="cuda"',
        STACK,
        _patch_legacy_cuda_tensors,
    ),
    Patch(
        "model_parallel_seed",
        "NeMo seeds megatron-core's model-parallel RNG tracker only when a CUDA device exists, so "
        'the attention\'s fork() raises "cuda rng state model-parallel-rng is not added"',
        STACK,
        _patch_model_parallel_seed,
    ),
    Patch(
        "gloo_allgather_scalar",
        "Aligner's rebalance_nd_tensor all-gathers a 0-dim count into a [world] tensor; NCCL takes "
        "it, gloo raises 'invalid tensor size (expected (), got (1))'",
        STACK + " (gloo)",
        _patch_gloo_allgather_scalar,
    ),
    Patch(
        "apex_grad_norm",
        "NeMo's clip_grad_norm_fp32 (Aligner's clip_gradients) takes the L2 norm with Apex's "
        "multi_tensor_applier and amp_C, imported from Apex only (NameError without it)",
        STACK,
        _patch_apex_grad_norm,
    ),
)


def apply() -> list[str]:
    """Apply every patch not skipped by ``NEMO_GIFT_ALIGNER_CPU_COMPAT_SKIP``; a no-op with CUDA.

    Idempotent. Returns the names applied so far.
    """
    if not cpu_mode():
        return []
    skip = {s.strip() for s in os.environ.get(SKIP_ENV, "").split(",") if s.strip()}
    unknown = skip - {p.name for p in PATCHES}
    if unknown:
        raise ValueError(f"{SKIP_ENV} names unknown patches {sorted(unknown)}; known: {[p.name for p in PATCHES]}")
    for patch in PATCHES:
        if patch.name in skip or patch.name in _APPLIED:
            continue
        patch.fn()
        _APPLIED.append(patch.name)
    return applied()
