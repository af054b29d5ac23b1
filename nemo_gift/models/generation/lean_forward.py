"""The policy's forward pass, recomputed from its megatron-core parameters with plain torch ops.

Why: on small models megatron-core's module stack costs more than its arithmetic (each layer
runs several ``autograd.Function`` wrappers, TP region mappings and NVTX/offload contexts even
under ``no_grad``); a decode step spends most of its time there. This module reads the *same*
parameter tensors (no copies, so training updates and ``refit`` are seen at once) and applies
the same math with ``F.linear``/``F.rms_norm``, doing the tensor-parallel communication
explicitly:

- vocab-parallel embedding: look up this rank's rows, zero the others, all-reduce;
- column-parallel ``linear_qkv`` / ``linear_fc1``: local matmul on this rank's heads / columns;
- row-parallel ``linear_proj`` / ``linear_fc2``: local matmul, all-reduce, then the bias;
- output layer: local vocab shard, all-gathered to the full vocabulary.

The fused QKV rows are ordered by query group (``[q_1 .. q_{H/G}, k, v]`` per group) and
``linear_fc1`` is ``[gate; up]``, as in megatron-core's ``get_query_key_value_tensors`` and
``MLP.glu``. RoPE uses megatron-core's rotary table and its non-interleaved rotate-half.

It covers exactly what ``nemo_gift.models.policy.builder.build_gpt_model`` builds (local spec,
RMSNorm, SwiGLU, RoPE, optional QKV bias and q/k norms), with or without sequence parallelism
(which changes where megatron-core keeps activations, not the math: this forward keeps every
row's whole sequence on each TP rank); :func:`unsupported_reason` names
anything else (Transformer Engine layers, FP8, MoE, ...), and a model with forward hooks (which
this forward would bypass, e.g. megatron DDP's ``overlap_param_gather``), and the engine then
falls back to running megatron-core's own modules.
``tests/unit/generation`` checks both against ``GPTModel.forward`` to 1e-5 in fp32.

Shapes: R rows, s tokens per row, h hidden, H / G query / KV heads on this rank, D head dim.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nemo_gift.models.generation.kv_cache import KVCache, attend

__all__ = ["LeanForward", "unsupported_reason"]


def _is_identity(module) -> bool:
    return module is None or type(module).__name__ in ("IdentityOp", "IdentityFuncOp", "Identity")


def unsupported_reason(model) -> str | None:
    """Why :class:`LeanForward` cannot run ``model``, or ``None`` when it can."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    cfg = model.config
    if getattr(model, "position_embedding_type", None) != "rope":
        return "only RoPE position embeddings"
    if cfg.multi_latent_attention or getattr(cfg, "attention_output_gate", False):
        return "multi-latent or gated attention"
    if not cfg.gated_linear_unit or cfg.activation_func is not F.silu:
        return "only the SwiGLU MLP"
    if getattr(cfg, "rotary_interleaved", False):
        return "interleaved RoPE"
    norms = [model.decoder.final_layernorm]
    for layer in model.decoder.layers:
        attn, mlp = layer.self_attention, layer.mlp
        norms += [layer.input_layernorm, layer.pre_mlp_layernorm]
        if not _is_identity(getattr(layer, "cross_attention", None)):
            return "cross-attention"
        for name in ("q_layernorm", "k_layernorm"):
            if not _is_identity(getattr(attn, name, None)):
                norms.append(getattr(attn, name))
        linears = {"linear_qkv": (attn, ColumnParallelLinear), "linear_proj": (attn, RowParallelLinear),
                   "linear_fc1": (mlp, ColumnParallelLinear), "linear_fc2": (mlp, RowParallelLinear)}
        for name, (owner, kind) in linears.items():
            if type(getattr(owner, name, None)) is not kind:
                return f"{name} is not a megatron-core {kind.__name__} (Transformer Engine or MoE layer)"
    if any(not isinstance(n, torch.nn.RMSNorm) for n in norms):
        return "only torch RMSNorm norms (the local layer spec)"
    if any(m._forward_pre_hooks or m._forward_hooks for m in model.modules()):
        # e.g. megatron DDP's overlap_param_gather waits for parameters in forward pre-hooks,
        # which a forward that does not call the modules would skip
        return "forward hooks are registered on the model"
    return None


class _Norm(NamedTuple):
    shape: tuple
    weight: torch.Tensor
    eps: float


class _Layer(NamedTuple):
    """One transformer layer's parameters (the Parameter objects themselves: no copies)."""

    input_norm: _Norm
    qkv_weight: torch.Tensor
    qkv_bias: Optional[torch.Tensor]
    q_norm: Optional[_Norm]
    k_norm: Optional[_Norm]
    proj_weight: torch.Tensor
    proj_bias: Optional[torch.Tensor]
    mlp_norm: _Norm
    fc1_weight: torch.Tensor
    fc1_bias: Optional[torch.Tensor]
    fc2_weight: torch.Tensor
    fc2_bias: Optional[torch.Tensor]


def _norm_of(module) -> Optional[_Norm]:
    return None if _is_identity(module) else _Norm(tuple(module.normalized_shape), module.weight, module.eps)


class LeanForward:
    """Forward steps of ``model`` (a ``GPTModel`` shard, PP=1) that read and fill a KV cache."""

    def __init__(self, model):
        from megatron.core import parallel_state as ps

        reason = unsupported_reason(model)
        if reason is not None:
            raise NotImplementedError(f"LeanForward does not support this model: {reason}")
        self.model = model
        self.tp_group = ps.get_tensor_model_parallel_group() if ps.model_parallel_is_initialized() else None
        self.tp = dist.get_world_size(self.tp_group) if self.tp_group is not None else 1
        attn = model.decoder.layers[0].self_attention
        self.heads = attn.num_attention_heads_per_partition
        self.groups = attn.num_query_groups_per_partition
        self.head_dim = attn.hidden_size_per_attention_head
        self.scale = float(getattr(attn.core_attention, "softmax_scale", None) or self.head_dim ** -0.5)
        self.rope_cos = self.rope_sin = None
        self.layers: list[_Layer] = []
        self.final_norm: _Norm | None = None

    # ------------------------------------------------------------------ pieces

    def _all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp > 1:
            dist.all_reduce(x, group=self.tp_group)
        return x

    @staticmethod
    def _norm(norm: _Norm, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, norm.shape, norm.weight, norm.eps)

    def _row_linear(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        out = self._all_reduce(F.linear(x, weight))
        return out if bias is None else out + bias

    def prepare(self, length: int) -> None:
        """Before a ``generate`` call: collect the layers' parameters (read again each call, so
        a replaced parameter is never stale), and precompute cos and sign-folded sin of RoPE
        positions ``0 .. length-1`` (``[length, rot]``)."""
        model = self.model
        self.layers = [
            _Layer(_norm_of(layer.input_layernorm), layer.self_attention.linear_qkv.weight,
                   layer.self_attention.linear_qkv.bias, _norm_of(getattr(layer.self_attention, "q_layernorm", None)),
                   _norm_of(getattr(layer.self_attention, "k_layernorm", None)),
                   layer.self_attention.linear_proj.weight, layer.self_attention.linear_proj.bias,
                   _norm_of(layer.pre_mlp_layernorm), layer.mlp.linear_fc1.weight, layer.mlp.linear_fc1.bias,
                   layer.mlp.linear_fc2.weight, layer.mlp.linear_fc2.bias)
            for layer in model.decoder.layers
        ]
        self.final_norm = _norm_of(model.decoder.final_layernorm)
        freqs = model.rotary_pos_emb(length).reshape(length, -1).float()
        dtype = model.embedding.word_embeddings.weight.dtype
        half = freqs.shape[-1] // 2
        sin = torch.sin(freqs)
        sin[:, :half] = -sin[:, :half]  # rotate_half(t) * sin == cat(t2, t1) * cat(-sin1, sin2), exactly
        self.rope_cos, self.rope_sin = torch.cos(freqs).to(dtype), sin.to(dtype)

    def _rope(self, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Megatron-core's ``_apply_rotary_pos_emb_bshd`` (non-interleaved rotate-half) on
        ``[..., D]``, with ``cos``/``sin`` from :meth:`prepare` broadcast over the heads."""
        rot = cos.shape[-1]
        t_rot = t[..., :rot]
        x1, x2 = torch.chunk(t_rot, 2, dim=-1)
        out = t_rot * cos + torch.cat((x2, x1), dim=-1) * sin
        return torch.cat((out, t[..., rot:]), dim=-1) if rot < t.shape[-1] else out

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        emb = self.model.embedding.word_embeddings
        if self.tp == 1:
            return F.embedding(tokens, emb.weight)
        outside = (tokens < emb.vocab_start_index) | (tokens >= emb.vocab_end_index)
        local = (tokens - emb.vocab_start_index).masked_fill(outside, 0)
        out = F.embedding(local, emb.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return self._all_reduce(out)

    # ------------------------------------------------------------------ steps

    def hidden(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Final-norm hidden states ``[R, s, h]`` of ``tokens`` ``[R, s]`` at ``positions``
        ``[R, s]``, reading and filling ``cache`` (see :func:`~.kv_cache.attend`)."""
        rows, seq = tokens.shape
        heads, groups, dim = self.heads, self.groups, self.head_dim
        per_group = heads // groups
        cos = self.rope_cos[positions][:, :, None, None]  # [R, s, 1, 1, rot]
        sin = self.rope_sin[positions][:, :, None, None]
        x = self._embed(tokens)  # [R, s, h]
        for i, lyr in enumerate(self.layers):
            qkv = F.linear(self._norm(lyr.input_norm, x), lyr.qkv_weight, lyr.qkv_bias)
            qkv = qkv.view(rows, seq, groups, per_group + 2, dim)  # per group: H/G queries, a key, a value
            v = qkv[:, :, :, -1]  # [R, s, G, D]
            if lyr.q_norm is not None or lyr.k_norm is not None:
                q, k = qkv[:, :, :, :per_group], qkv[:, :, :, per_group]
                q = q if lyr.q_norm is None else self._norm(lyr.q_norm, q)
                k = k if lyr.k_norm is None else self._norm(lyr.k_norm, k)
                q, k = self._rope(q, cos, sin), self._rope(k, cos[:, :, 0], sin[:, :, 0])
            else:  # the queries and key of a group are adjacent: one RoPE for both
                qk = self._rope(qkv[:, :, :, : per_group + 1], cos, sin)  # [R, s, G, H/G + 1, D]
                q, k = qk[:, :, :, :per_group], qk[:, :, :, per_group]
            q = q.reshape(rows, seq, heads, dim)  # [R, s, H, D]
            ctx = attend(cache, i, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.scale)
            ctx = ctx.transpose(1, 2).reshape(rows, seq, heads * dim)  # [R, s, H*D]
            x = x + self._row_linear(ctx, lyr.proj_weight, lyr.proj_bias)
            gate, up = torch.chunk(F.linear(self._norm(lyr.mlp_norm, x), lyr.fc1_weight, lyr.fc1_bias), 2, dim=-1)
            x = x + self._row_linear(F.silu(gate) * up, lyr.fc2_weight, lyr.fc2_bias)
        return self._norm(self.final_norm, x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary float32 logits ``[R, V]`` of final hidden states ``[R, h]``."""
        model = self.model
        weight = (model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights
                  else model.output_layer.weight)
        local = F.linear(hidden, weight)  # [R, V/TP]
        if model.output_layer.bias is not None:
            local = local + model.output_layer.bias
        if self.tp > 1:
            parts = [torch.empty_like(local) for _ in range(self.tp)]
            dist.all_gather(parts, local.contiguous(), group=self.tp_group)
            local = torch.cat(parts, dim=-1)
        return local.float()
