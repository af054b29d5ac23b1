"""The scenario that needs each patch of ``nemo_gift.integrations.nemo_aligner.cpu_compat``.

:func:`check_every_patch` runs in one gloo rank with none of those patches applied. For each patch,
in ``PATCHES`` order: run its scenario (the NeMo/Aligner call the fit hits), expect it to fail, apply
the patch, run it again and expect it to pass. Each scenario calls the real function the fit calls,
with the smallest argument that reaches the failing line; what the patched call returns is checked
where it is a value (a layer spec, the parameter groups, a gradient norm, a gathered batch).
"""

from __future__ import annotations

import os
import traceback
import types

import torch


def _apex_strategy():
    from nemo.collections.nlp.parts.nlp_overrides import NLPDDPStrategy

    return type(NLPDDPStrategy(no_ddp_communication_hook=True, find_unused_parameters=False)).__name__


def _nvidia_version():
    from nemo.collections.nlp.models.language_modeling.megatron_base_model import MegatronBaseModel

    os.environ.pop("NVIDIA_PYTORCH_VERSION", None)  # as outside an NGC container
    return MegatronBaseModel._enable_nvidia_optimizations(types.SimpleNamespace())


def _lazy_layer_spec():
    from megatron.core.transformer.spec_utils import ModuleSpec

    from nemo.collections.nlp.models.language_modeling import megatron_gpt_model

    spec = megatron_gpt_model.get_specs("", None, False)
    assert isinstance(spec, ModuleSpec), spec
    return spec.module.__name__


def _tp_attribute_defaults():
    from nemo.collections.nlp.modules.common.megatron.build_model import build_model

    (model,) = build_model(lambda pre_process, post_process: torch.nn.Linear(2, 2), wrap_with_ddp=False)
    assert model.weight.tensor_model_parallel is False  # the default the helper sets
    return model.weight.partition_dim


def _cp_stream():
    from nemo.collections.nlp.models.language_modeling.megatron_base_model import MegatronBaseModel

    model = types.SimpleNamespace(get_model_module_list=lambda: [torch.nn.Linear(2, 2)])
    return MegatronBaseModel.setup_transformer_engine_cp_groups(model)


def _apex_param_groups():
    from nemo.collections.nlp.modules.common.megatron.utils import get_params_for_weight_decay_optimization

    groups = get_params_for_weight_decay_optimization(torch.nn.Linear(2, 2))
    return [len(g["params"]) for g in groups]  # weight decayed; bias not


def _model_cuda():
    from nemo.collections.nlp.models.language_modeling.megatron_gpt_model import MegatronGPTModel

    model = object()
    assert MegatronGPTModel.cuda(model) is model
    return "stays"


def _legacy_cuda_tensors():
    from megatron.core import parallel_state
    from megatron.core.transformer.utils import get_default_causal_mask

    from nemo_aligner.utils.distributed import broadcast_2d_tensor

    mask = get_default_causal_mask(3)  # [3, 3] True above the diagonal
    assert mask.tolist() == [[False, True, True], [False, False, True], [False, False, False]]
    out = broadcast_2d_tensor(torch.ones(2, 3), 0, parallel_state.get_model_parallel_group())
    from nemo.collections.nlp.modules.common import text_generation_strategy, text_generation_utils
    from nemo.collections.nlp.modules.common.megatron import clip_grads
    from nemo_aligner.models.nlp.gpt import megatron_gpt_reinforce_actor

    # The expressions those three modules evaluate on the fit's path (tokenize_batch,
    # send_generate_info, infer, and clip_grad_norm_fp32's fp32 assert).
    text_generation_strategy.torch.cuda.LongTensor([[1, 2]])
    text_generation_utils.torch.cuda.FloatTensor([1.0, 2.0])
    megatron_gpt_reinforce_actor.torch.cuda.LongTensor([[1, 2]])
    assert isinstance(torch.zeros(1), clip_grads.torch.cuda.FloatTensor)
    return out.tolist()


def _model_parallel_seed():
    from megatron.core import tensor_parallel

    from nemo.collections.nlp.modules.common.megatron import megatron_init

    tensor_parallel.get_cuda_rng_tracker().reset()
    megatron_init._set_random_seed(1234)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        return float(torch.rand(()))


def _gloo_allgather_scalar():
    from megatron.core import parallel_state

    from nemo_aligner.utils.distributed import rebalance_nd_tensor

    batch = torch.arange(6.0).view(2, 3)
    out = rebalance_nd_tensor(batch, group=parallel_state.get_data_parallel_group())
    assert torch.equal(out, batch)  # one rank: the gathered batch is its own
    return out.shape[0]


def _apex_grad_norm():
    from nemo.collections.nlp.modules.common.megatron.clip_grads import clip_grad_norm_fp32

    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    norm = clip_grad_norm_fp32([p], max_norm=1.0)
    assert float(norm) == 5.0  # ||(3, 4)||, before clipping
    assert torch.allclose(p.grad, torch.tensor([0.6, 0.8, 0.0, 0.0]), atol=1e-6)  # clipped to norm 1
    return float(norm)


SCENARIOS = {
    "apex_strategy": _apex_strategy,
    "nvidia_version": _nvidia_version,
    "lazy_layer_spec": _lazy_layer_spec,
    "tp_attribute_defaults": _tp_attribute_defaults,
    "cp_stream": _cp_stream,
    "apex_param_groups": _apex_param_groups,
    "model_cuda": _model_cuda,
    "legacy_cuda_tensors": _legacy_cuda_tensors,
    "model_parallel_seed": _model_parallel_seed,
    "gloo_allgather_scalar": _gloo_allgather_scalar,
    "apex_grad_norm": _apex_grad_norm,
}


def _outcome(fn):
    try:
        return {"ok": True, "value": fn()}
    except Exception as err:  # the failure without the patch is what is being checked
        return {"ok": False, "error": f"{type(err).__name__}: {err}", "where": traceback.format_exc(limit=-1)}


def check_every_patch(rank: int, world_size: int) -> dict:
    """{patch name: {"without": outcome, "with": outcome}} (see the module docstring)."""
    from megatron.core import parallel_state

    from nemo_gift.integrations.nemo_aligner import cpu_compat

    assert cpu_compat.applied() == [], "the scenarios need a process with no Aligner patch applied"
    parallel_state.initialize_model_parallel(1, 1)
    results = {}
    for patch in cpu_compat.PATCHES:
        scenario = SCENARIOS[patch.name]
        without = _outcome(scenario)
        patch.fn()
        results[patch.name] = {"without": without, "with": _outcome(scenario)}
    return results
