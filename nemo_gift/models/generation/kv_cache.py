"""The KV cache of the torch engine, and the attention over it.

Layout: per layer, values are ``[R, G, S, D]`` and keys are stored transposed, ``[R, G, D, S]``
(the query-key product of a decode step is then a plain NN matmul, about 25% faster on CPU):
R rows (responses still decoding), G key/value heads on this TP rank, S slots, D head dim. Queries are ``[R, H, s, D]`` with H
query heads on this rank; H is a multiple of G and query head ``j`` reads KV head
``j // (H/G)`` (megatron-core's ``repeat_interleave`` convention for grouped-query attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["KVCache", "attend"]


class KVCache:
    """Keys and values of every layer, and the state of the forward being run."""

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers  # [R, G, D, S]
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.prefill = True
        """Prefill: the whole (right-padded) prompt at once, causally; its K/V become the cache."""
        self.slot = 0
        """Decode: the slot this one-token step writes; it attends to slots ``[0, slot]``."""
        self.valid: torch.Tensor | None = None
        """``[R, S]`` bool, the slots each row may attend to (prompt padding is not);
        ``None`` when every filled slot is valid."""

    def expand(self, repeats: int, capacity: int) -> None:
        """Turn the prompt cache (P slots, B rows) into ``capacity`` slots and ``B*repeats``
        rows: row ``b*repeats + i`` is copy ``i`` of prompt ``b``."""
        for i, (keys, values) in enumerate(zip(self.keys, self.values)):
            rows, groups, dim, length = keys.shape
            full_k = keys.new_empty(rows * repeats, groups, dim, capacity)
            full_k[..., :length] = keys.repeat_interleave(repeats, dim=0)
            full_v = values.new_empty(rows * repeats, groups, capacity, dim)
            full_v[:, :, :length] = values.repeat_interleave(repeats, dim=0)
            self.keys[i], self.values[i] = full_k, full_v

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (int64 indices), in that order; the others cost nothing after."""
        for store in (self.keys, self.values):
            for i, kv in enumerate(store):
                store[i] = kv.index_select(0, rows)
        if self.valid is not None:
            self.valid = self.valid.index_select(0, rows)


def attend(cache: KVCache, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           scale: float) -> torch.Tensor:
    """Store this step's keys/values in ``cache`` and attend.

    Args:
        q: ``[R, H, s, D]`` queries (RoPE applied).
        k, v: ``[R, G, s, D]`` this step's keys (RoPE applied) and values.
        scale: the softmax scale (``1/sqrt(D)`` for these models).

    Returns:
        ``[R, H, s, D]`` attention output.
    """
    rows, heads, seq, dim = q.shape
    groups = k.shape[1]
    if cache.prefill:
        cache.keys[layer], cache.values[layer] = k.transpose(-1, -2).contiguous(), v.contiguous()
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=heads != groups)
    if seq != 1:
        raise ValueError(f"decode steps take one token per row, got {seq}")
    end = cache.slot + 1
    keys, values = cache.keys[layer], cache.values[layer]
    keys[..., cache.slot] = k[:, :, 0]
    values[:, :, cache.slot] = v[:, :, 0]
    # Grouped queries against their shared KV head, without materializing repeated keys:
    # [R, G, H/G, D] @ [R, G, D, S] -> [R, G, H/G, S]. Faster than SDPA for one query token.
    scores = torch.matmul(q.reshape(rows, groups, heads // groups, dim), keys[..., :end]).float().mul_(scale)
    if cache.valid is not None:
        scores = scores.masked_fill(~cache.valid[:, None, None, :end], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(values.dtype)
    out = torch.matmul(probs, values[:, :, :end])  # [R, G, H/G, D]
    return out.reshape(rows, heads, 1, dim)
