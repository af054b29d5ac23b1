"""The reference model pi_ref: a frozen copy of the policy, optionally kept in host memory.

    ref = ReferenceModel.from_policy(policy_module, model_cfg, parallel, offload=True)
    with ref.on_device() as module:            # reloaded to the device for this block only
        logits = module(tokens, positions, mask)            # or forward_backward_func(model=[module], forward_only=True)

It has the policy's layout (same TP/PP shard on each rank), ``requires_grad=False`` on every
parameter and eval mode, so it never takes part in backward or in the optimizer. With
``offload=True`` its parameters live in (pinned, on GPUs) host memory between uses: each
parameter's device storage is released, and brought back by :meth:`on_device`, which puts it
back on the host afterwards. On a CPU-only machine the "device" is the CPU too; the round trip
still releases and restores the storage, which is what the tests check.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from nemo_gift.models.policy.config import ModelConfig, ParallelConfig


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model


class ReferenceModel:
    """A frozen GPTModel stage with optional host offload (see the module docstring)."""

    def __init__(self, model_cfg: ModelConfig, parallel: ParallelConfig, *, offload: bool = False):
        from nemo_gift.models.policy.builder import build_gpt_model

        self.module = build_gpt_model(model_cfg, parallel)
        self.module.requires_grad_(False)
        self.module.eval()
        self.keep_offloaded = offload
        self._host: dict[str, torch.Tensor] | None = None
        self._device = next(self.module.parameters()).device
        if offload:
            self.offload()

    @classmethod
    def from_policy(cls, policy, model_cfg: ModelConfig, parallel: ParallelConfig, *, offload: bool = False):
        """A reference holding a copy of ``policy``'s current weights (built with the same configs)."""
        ref = cls(model_cfg, parallel, offload=False)
        ref.load_from(policy)
        ref.keep_offloaded = offload
        if offload:
            ref.offload()
        return ref

    @property
    def offloaded(self) -> bool:
        """True while the parameters are in host memory only."""
        return self._host is not None

    @torch.no_grad()
    def load_from(self, policy) -> None:
        """Copy ``policy``'s weights (same configs and layout, possibly DDP-wrapped) into the reference."""
        source = dict(_unwrap(policy).named_parameters())
        with self.on_device() as module:
            for name, param in module.named_parameters():
                if name not in source or source[name].shape != param.shape:
                    raise ValueError(f"policy and reference differ at {name!r}: built from other configs?")
                param.copy_(source[name])

    @torch.no_grad()
    def offload(self) -> None:
        """Move every parameter to host memory and release its device storage."""
        if self._host is not None:
            return
        pin = torch.cuda.is_available()
        host = {}
        for name, param in self.module.named_parameters():
            buf = torch.empty(param.shape, dtype=param.dtype, device="cpu", pin_memory=pin)
            buf.copy_(param.data, non_blocking=pin)
            host[name] = buf
        if pin:
            torch.cuda.synchronize()
        for param in self.module.parameters():
            param.data = torch.empty(0, dtype=param.dtype, device=param.device)
        self._host = host

    @torch.no_grad()
    def reload(self) -> None:
        """Bring the parameters back to the device."""
        if self._host is None:
            return
        for name, param in self.module.named_parameters():
            param.data = self._host[name].to(self._device, non_blocking=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._host = None

    @contextlib.contextmanager
    def on_device(self) -> Iterator[torch.nn.Module]:
        """The module with its weights on the device; offloaded again on exit when ``offload=True``."""
        self.reload()
        try:
            yield self.module
        finally:
            if self.keep_offloaded:
                self.offload()

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        """One forward of a single-stage (PP=1) reference, without autograd."""
        with self.on_device() as module:
            return module(*args, **kwargs)
