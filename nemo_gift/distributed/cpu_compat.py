"""CPU compatibility layer for megatron-core on a CUDA-less torch build (gloo backend).

megatron-core assumes CUDA in a handful of places. On a machine without CUDA (a laptop, a CI
runner) the project still runs the real megatron-core: this module patches exactly those
places, and nothing else.

Rules:
- The CPU patches apply only where ``torch.cuda.is_available()`` is False: GPUs run those
  places of megatron-core untouched. The three patches of megatron-core's torch-Adam path
  (below) fix bugs of that path, not of the CPU: they apply wherever megatron-core falls back
  to torch's Adam because neither Transformer Engine nor Apex is installed, on a GPU too (seen
  on an H200 without TE: a resume failed ``assert len(steps) == 1``). The GPU images install TE,
  whose FusedAdam does not take that path.
- Each patch is a :class:`Patch` with a one-line reason and a list of the megatron-core
  versions it was measured to be needed on. ``tests/unit/distributed/test_cpu_compat.py``
  runs the scenario that needs each patch with that patch switched off, and expects the
  failure; when a megatron-core upgrade makes a patch obsolete, that test fails and names it.
- A patch can be switched off with ``NEMO_GIFT_CPU_COMPAT_SKIP=name1,name2`` (for that test).
- Factory calls with a hard-coded ``device="cuda"`` are rewritten only inside the megatron-core
  modules that contain them (a module-local ``torch`` proxy), not by a global function mode,
  so nothing else pays a per-op dispatch cost.

The recipes' own training state runs here too: the distributed optimizer through the
``distributed_optimizer_types`` patch; its checkpoints (``dist_checkpointing``) through three
patches of megatron-core's torch-Adam path, the one it takes without Apex or Transformer Engine
(``distributed_optimizer_fresh_load``, ``_step_state``, ``_shared_step``); and sequence
parallelism through the project's layer spec (:class:`nemo_gift.models.policy.builder.RMSNorm`,
whose weights are marked ``sequence_parallel``), not through a patch.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import types
from typing import Callable

import torch
import torch.distributed as dist

__all__ = ["Patch", "PATCHES", "apply", "applied", "cpu_mode", "replace_module_torch", "torch_adam_mode", "wrap_once"]

SKIP_ENV = "NEMO_GIFT_CPU_COMPAT_SKIP"


@dataclasses.dataclass(frozen=True)
class Patch:
    """One CPU patch of megatron-core."""

    name: str
    """Identifier, also used by ``NEMO_GIFT_CPU_COMPAT_SKIP``."""
    reason: str
    """One line: what fails on CPU without it."""
    needed_on: str
    """The megatron-core versions on which the need was measured."""
    fn: Callable[[], None]
    """Applies the patch; idempotent."""
    applies: Callable[[], bool] = lambda: cpu_mode()
    """Whether this process needs it: :func:`cpu_mode` (the default), or :func:`torch_adam_mode`."""


_APPLIED: list[str] = []


def cpu_mode() -> bool:
    """True where the patches apply: this torch has no usable CUDA device."""
    return not torch.cuda.is_available()


def torch_adam_mode() -> bool:
    """True where megatron-core's optimizer is torch's Adam: neither Transformer Engine's nor
    Apex's FusedAdam imports, and ``megatron/core/optimizer/__init__.py`` falls back (with its
    "Falling back to Torch optimizers" warning) to ``torch.optim.AdamW``."""
    from megatron.core import optimizer

    return getattr(optimizer, "Adam", None).__module__.startswith("torch.")


def applied() -> list[str]:
    """Names of the patches applied in this process, in order."""
    return list(_APPLIED)


# --------------------------------------------------------------------------------------------
# The patches
# --------------------------------------------------------------------------------------------


def _cpu_device(device):
    """Map a ``cuda``/``cuda:N`` device spec (str, int index or torch.device) to ``cpu``."""
    if device is None:
        return None
    if isinstance(device, int) or torch.device(device).type == "cuda":
        return torch.device("cpu")
    return device


class _CpuTorch(types.ModuleType):
    """A stand-in for ``torch`` inside one megatron-core module: tensor factories that name a
    CUDA device get the CPU instead; every other attribute is the real ``torch``'s."""

    _FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange", "zeros_like", "empty_like")

    def __init__(self):
        super().__init__("torch")
        for name in self._FACTORIES:
            setattr(self, name, self._wrap(getattr(torch, name)))

    @staticmethod
    def _wrap(factory):
        def cpu_factory(*args, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = _cpu_device(kwargs["device"])
            kwargs.pop("pin_memory", None)
            return factory(*args, **kwargs)

        cpu_factory.__name__ = factory.__name__
        return cpu_factory

    def __getattr__(self, name):
        return getattr(torch, name)


# megatron-core modules that create tensors with a literal device="cuda".
_HARDCODED_CUDA_MODULES = (
    "megatron.core.pipeline_parallel.schedules",  # total_num_tokens = torch.zeros(..., device="cuda")
    "megatron.core.optimizer.clip_grads",  # grad-norm buffers on "cuda"
    "megatron.core.optimizer.optimizer",  # found_inf / _scale_one on "cuda"
    "megatron.core.distributed.param_and_grad_buffer",  # warm-up tensor on "cuda"
    "megatron.core.tensor_parallel.data",  # broadcast_data sizes on "cuda"
    "megatron.core.utils",  # local_multi_tensor_l2_norm (the no-Apex grad norm) on "cuda"
)


def _patch_current_device():
    torch.cuda.current_device = lambda: torch.device("cpu")


def _patch_rng():
    import megatron.core.tensor_parallel.random as mp_random

    mp_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mp_random._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    torch.cuda.get_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    torch.cuda.set_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    torch.cuda.manual_seed = torch.manual_seed


def replace_module_torch(module_names, proxy) -> None:
    """Give each named module ``proxy`` as its ``torch`` (only where it still holds the real one)."""
    for name in module_names:
        module = importlib.import_module(name)
        if module.__dict__.get("torch") is torch:
            module.torch = proxy


def wrap_once(owner, name: str, make_replacement) -> None:
    """Set ``owner.<name>`` to ``make_replacement(original)``, once: the replacement is marked, and
    a second call finds the mark and keeps it."""
    original = getattr(owner, name)
    if getattr(original, "_nemo_gift_cpu", False):
        return
    replacement = make_replacement(original)
    replacement._nemo_gift_cpu = True
    setattr(owner, name, replacement)


def _patch_hardcoded_cuda():
    replace_module_torch(_HARDCODED_CUDA_MODULES, _CpuTorch())
    # Tensor.cuda() (optimizer state restore) and .pin_memory() (offload paths): identity on CPU.
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.pin_memory = lambda self, *args, **kwargs: self


def _clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """Device-agnostic twin of megatron-core's helper: scale every grad by
    ``max_norm / (total_norm + 1e-6)`` when that is below 1 (the same formula)."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr).detach() for p in parameters if getattr(p, attr, None) is not None]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


def _patch_clip_grad():
    import megatron.core.optimizer.clip_grads as clip_grads
    import megatron.core.optimizer.optimizer as optimizer

    clip_grads.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32
    optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32


class _NullStream:
    """Stands in for a CUDA stream: on CPU every op is already ordered."""

    def wait_event(self, *args, **kwargs):
        return None

    def wait_stream(self, *args, **kwargs):
        return None

    def record_event(self, *args, **kwargs):
        return None

    def synchronize(self):
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _patch_sync_and_streams():
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.current_stream = lambda *args, **kwargs: _NullStream()
    torch.cuda.default_stream = lambda *args, **kwargs: _NullStream()


def _patch_gloo_scatter():
    if getattr(dist.scatter, "_nemo_gift_contiguous", False):
        return
    scatter = dist.scatter

    def contiguous_scatter(tensor, scatter_list=None, *args, **kwargs):
        if scatter_list is not None:
            scatter_list = [t.contiguous() for t in scatter_list]
        return scatter(tensor, scatter_list, *args, **kwargs)

    contiguous_scatter._nemo_gift_contiguous = True
    dist.scatter = contiguous_scatter


_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def _cuda_type_name(self, *args, **kwargs):
    """``Parameter.type()`` as a CUDA build names it (``torch.cuda.FloatTensor`` ...); with
    arguments (a cast) it is the real ``Tensor.type``."""
    name = torch.Tensor.type(self, *args, **kwargs)
    if args or kwargs:
        return name
    return _CUDA_TYPE_NAMES.get(name, name)


def _wrap_distributed_optimizer(name: str, wrap) -> None:
    """Replace ``DistributedOptimizer.<name>`` with ``wrap(original)``, once (idempotent)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    wrap_once(DistributedOptimizer, name, wrap)


def _cuda_typed_init(init):
    def cpu_init(self, *args, **kwargs):
        # Only while the optimizer sorts its parameters by type; torch.nn.Parameter has no
        # ``type`` of its own, so deleting the override restores Tensor.type.
        torch.nn.Parameter.type = _cuda_type_name
        try:
            init(self, *args, **kwargs)
        finally:
            del torch.nn.Parameter.type

    return cpu_init


def _allocate_adam_state(torch_optimizer) -> None:
    """The state torch's Adam/AdamW allocates at its first step (``_init_group`` in
    ``torch/optim/adam.py``): ``step`` 0 and zero moments, for every parameter without state."""
    for group in torch_optimizer.param_groups:
        for p in group["params"]:
            if not torch_optimizer.state[p]:
                torch_optimizer.state[p] = {
                    "step": torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }


def _fresh_state_on_load(sharded_state_dict):
    def cpu_sharded_state_dict(self, model_sharded_state_dict=None, is_loading=False, *args, **kwargs):
        if is_loading and isinstance(self.optimizer, torch.optim.Adam | torch.optim.AdamW):
            _allocate_adam_state(self.optimizer)
        return sharded_state_dict(self, model_sharded_state_dict or {}, is_loading, *args, **kwargs)

    return cpu_sharded_state_dict


def _keep_restored_step(set_states):
    def cpu_set_states(self, model_param, tensors):
        if "step" not in tensors and not self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            group_index, group_order = self.model_param_group_index_map[model_param]
            main_param = self.optimizer.param_groups[group_index]["params"][group_order]
            step = self.optimizer.state[main_param].get("step")
            if isinstance(step, torch.Tensor):  # already restored from the param groups: keep it
                tensors = {**tensors, "step": step}
        return set_states(self, model_param, tensors)

    return cpu_set_states


def _unshare_steps(load_state_dict):
    def cpu_load_state_dict(self, state_dict):
        load_state_dict(self, state_dict)
        seen = set()
        for state in self.optimizer.state.values():
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                if id(step) in seen:  # one tensor restored to several parameters: give each its own
                    state["step"] = step.clone()
                seen.add(id(state["step"]))

    return cpu_load_state_dict


PATCHES: tuple[Patch, ...] = (
    Patch(
        "current_device",
        "torch.cuda.current_device() picks the device of new tensors all over megatron-core "
        "(rotary embeddings, TP mappings, layers) and raises on a CPU build",
        "0.16.1",
        _patch_current_device,
    ),
    Patch(
        "rng",
        "model_parallel_cuda_manual_seed and the RNG tracker's fork() read and write the CUDA "
        "RNG state; point them at the CPU generator",
        "0.16.1",
        _patch_rng,
    ),
    Patch(
        "hardcoded_cuda",
        'pipeline schedules, grad clipping and the optimizer create tensors with device="cuda" '
        "and call .cuda()/.pin_memory()",
        "0.16.1",
        _patch_hardcoded_cuda,
    ),
    Patch(
        "clip_grad",
        "clip_grad_by_total_norm_fp32 asserts that every grad is a torch.cuda.FloatTensor",
        "0.16.1",
        _patch_clip_grad,
    ),
    Patch(
        "sync_and_streams",
        "DDP's offload_grad_buffers/restore_grad_buffers (freeing grads during rollouts) call "
        "torch.cuda.synchronize, and 0.19's start_grad_sync calls current_stream",
        "0.16.1 (synchronize), 0.19.2 (current_stream)",
        _patch_sync_and_streams,
    ),
    Patch(
        "gloo_contiguous_scatter",
        "gloo's scatter silently sends wrong data for non-contiguous inputs (a torch/gloo bug, "
        "hit by TP weight loading of row-parallel shards); make the inputs contiguous",
        "torch 2.13.0 gloo (any megatron-core)",
        _patch_gloo_scatter,
    ),
    Patch(
        "distributed_optimizer_types",
        "DistributedOptimizer.__init__ sorts the parameters by model_param.type() and raises "
        "'Wrapped parameters must be one of torch.cuda.FloatTensor' for CPU ones; while it runs, "
        "Parameter.type() reports the CUDA name of the same dtype",
        "0.16.1, 0.19.2",
        lambda: _wrap_distributed_optimizer("__init__", _cuda_typed_init),
    ),
    Patch(
        "distributed_optimizer_fresh_load",
        "without Apex/TE (on CPU, or on a GPU without them) DistributedOptimizer wraps torch's Adam, whose per-param 'step' "
        "exists only after a first step; sharded_state_dict(is_loading=True) of a fresh optimizer "
        "then fails 'assert len(steps) == 1' in state_dict(). Allocate the state as Adam's first "
        "step would (step 0, zero moments) before loading",
        "0.16.1, 0.19.2",
        lambda: _wrap_distributed_optimizer("sharded_state_dict", _fresh_state_on_load),
        lambda: torch_adam_mode(),
    ),
    Patch(
        "distributed_optimizer_step_state",
        "load_parameter_state_from_fully_reshardable skips torch Adam's 'step' (restored from the "
        "param groups) but _set_main_param_and_optimizer_states copies every state key of the "
        "destination, so it raises KeyError: 'step'; pass the restored step through unchanged",
        "0.16.1, 0.19.2",
        lambda: _wrap_distributed_optimizer("_set_main_param_and_optimizer_states", _keep_restored_step),
        lambda: torch_adam_mode(),
    ),
    Patch(
        "distributed_optimizer_shared_step",
        "DistributedOptimizer.load_state_dict (without Apex/TE) restores torch Adam's 'step' as ONE "
        "tensor shared by every parameter; Adam increments it in place once per parameter, so the "
        "bias correction runs ahead after a resume. Give each parameter its own copy",
        "0.16.1, 0.19.2",
        lambda: _wrap_distributed_optimizer("load_state_dict", _unshare_steps),
        lambda: torch_adam_mode(),
    ),
)


def apply() -> list[str]:
    """Apply every patch this process needs (``Patch.applies``) and ``NEMO_GIFT_CPU_COMPAT_SKIP``
    does not skip: all of them on CPU; with CUDA only the torch-Adam ones, and only without TE/Apex.

    Call it in every process before megatron-core builds a model (the project's entry
    points and the test harness do). Idempotent. Returns the names applied so far.
    """
    skip = {s.strip() for s in os.environ.get(SKIP_ENV, "").split(",") if s.strip()}
    unknown = skip - {p.name for p in PATCHES}
    if unknown:
        raise ValueError(
            f"{SKIP_ENV} names unknown patches {sorted(unknown)}; known: {[p.name for p in PATCHES]}"
        )
    for patch in PATCHES:
        if patch.name in skip or patch.name in _APPLIED or not patch.applies():
            continue
        patch.fn()
        _APPLIED.append(patch.name)
    return applied()
