"""A KV-cached, batched rollout engine on the policy's own megatron-core ``GPTModel``.

It runs wherever the policy runs (CPU over gloo, or GPUs), at any tensor-parallel size, and is
the reference the TensorRT-LLM engine is checked against.

How it works
------------
A forward step maps tokens ``[R, s]`` at positions ``[R, s]`` to final hidden states, reading
and filling a :class:`~nemo_gift.models.generation.kv_cache.KVCache`. Two implementations
give the same numbers (the tests hold both to ``GPTModel.forward`` at 1e-5 in fp32):

- ``lean`` (the default where it applies): :class:`~.lean_forward.LeanForward` reads the
  model's own parameter tensors and applies the same math with plain torch ops, doing the TP
  all-reduces / all-gathers itself. megatron-core's module stack costs more than the arithmetic
  of a one-token step on small models; this is what makes the engine fast on CPU.
- ``megatron``: :class:`MegatronForward` runs the model's own ``embedding``, ``decoder`` and
  ``output_layer``, with each layer's ``core_attention`` swapped for a cached one during the
  step (and restored after, even on error). It covers any layer spec megatron-core builds.

1. Prefill: the B prompts, right-padded to the longest (P tokens), run once with a causal
   mask; a prompt's last real position gives its first-token logits. Padding never influences
   a real token (causal masking), and its cache slots are masked out later. Only the B last
   positions go through the output layer.
2. The prompt cache is replicated n times (responses of one prompt are contiguous rows), so a
   prompt is prefilled once, not n times.
3. Decode: one token per active row per step. Row ``r`` feeds its token at RoPE position
   ``len(prompt_r) + t`` into cache slot ``P + t``; it attends to slots ``[0, len(prompt_r))``
   and ``[P, P + t]``.
4. A response that samples a stop token or reaches ``max_new_tokens`` leaves the batch at
   once: its rows are dropped from the cache and from every later forward, so finished
   responses cost no compute (``last_stats.decode_rows == sum(lengths - 1)``).

Logits are gathered over TP for the positions that are sampled from only, cut to
``cfg.vocab_size`` (megatron's padding rows of the vocabulary are never sampled), and each
TP rank samples from the same full-vocabulary logits with an identically seeded generator, so
all ranks draw the same tokens without a broadcast.

Why not megatron-core's ``StaticInferenceEngine``: it runs on CPU (legacy mode, with shims),
but its static batch keeps every row in every step until the longest response ends, it
prefills each of the n copies of a prompt separately, and in megatron-core 0.19 it leaves the
process in a global inference mode that breaks later training forwards. It is also slower
here; ``docs/rollout-refit.md`` has the measurements.

Limits: pipeline parallelism is refused (the engine needs the whole model on each TP rank:
build the rollout model with PP=1 and refit it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Literal, Sequence

import torch

from nemo_gift.algorithms.interfaces import FinishReason, GenerationOutput, HFWeights, SamplingConfig
from nemo_gift.models.generation.kv_cache import KVCache, attend
from nemo_gift.models.generation.lean_forward import LeanForward, unsupported_reason
from nemo_gift.models.generation.sampling import UNMODIFIED, filters_nothing, make_generator, sample, token_logprobs
from nemo_gift.models.policy.config import ModelConfig

__all__ = ["GenerationStats", "Impl", "MegatronForward", "TorchGenerationEngine"]

Impl = Literal["auto", "lean", "megatron"]


@dataclasses.dataclass
class GenerationStats:
    """What the last ``generate`` call computed."""

    prefill_tokens: int = 0
    """Prompt positions run through the model (B * P, padding included)."""
    decode_steps: int = 0
    """Decode forwards (one token per active row each)."""
    decode_rows: int = 0
    """Rows summed over decode forwards; ``sum(lengths - 1)`` when finished rows cost nothing."""
    generated_tokens: int = 0
    """Tokens returned (``sum(lengths)``)."""
    seconds: float = 0.0
    """Wall time of the call."""


class MegatronForward:
    """Forward steps through megatron-core's own modules (``embedding``, ``decoder``,
    ``output_layer``): the reference implementation, and the fallback for models that
    :class:`~nemo_gift.models.generation.lean_forward.LeanForward` does not cover.

    During each step, and only then, every layer's ``self_attention.core_attention`` is
    swapped for :class:`_CachedAttention`; RoPE is applied by megatron-core's own code from a
    per-row position table.
    """

    def __init__(self, model):
        self.model = model
        self.rope = None

    def prepare(self, length: int) -> None:
        """Before a ``generate`` call: the ``[length, rot_dim]`` RoPE angles of positions
        ``0 .. length-1``."""
        self.rope = self.model.rotary_pos_emb(length).reshape(length, -1)

    @contextlib.contextmanager
    def _cached_attention(self, cache: KVCache):
        swapped = []
        try:
            for i, layer in enumerate(self.model.decoder.layers):
                attn = layer.self_attention
                core = attn.core_attention
                scale = getattr(core, "softmax_scale", None) or attn.hidden_size_per_attention_head ** -0.5
                attn.core_attention = _CachedAttention(cache, i, float(scale))
                swapped.append((attn, core))
            yield
        finally:
            for attn, core in swapped:
                attn.core_attention = core

    def hidden(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Final-norm hidden states ``[R, s, h]`` of ``tokens`` ``[R, s]`` at ``positions``."""
        model = self.model
        x = model.embedding(input_ids=tokens, position_ids=positions)  # [s, R, h]
        freqs = self.rope[positions.t()].unsqueeze(2)  # [s, R, 1, rot_dim]
        with self._cached_attention(cache):
            x = model.decoder(hidden_states=x, attention_mask=None, rotary_pos_emb=freqs)
        return x.transpose(0, 1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary float32 logits ``[R, V]`` of hidden states ``[R, h]`` (TP-gathered)."""
        model = self.model
        weight = model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights else None
        logits, _ = model.output_layer(hidden.unsqueeze(0), weight=weight, runtime_gather_output=True)
        return logits[0].float()


class _CachedAttention(torch.nn.Module):
    """Stands in for a layer's ``core_attention``: the same inputs (q, k, v after RoPE,
    ``[s, R, heads, D]``) and output (``[s, R, heads*D]``) as megatron-core's
    ``DotProductAttention``, with the keys and values kept in a :class:`KVCache`."""

    def __init__(self, cache: KVCache, layer: int, softmax_scale: float):
        super().__init__()
        self.cache, self.layer, self.softmax_scale = cache, layer, softmax_scale

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        del attention_mask, attn_mask_type  # the cache knows the mask
        if attention_bias is not None or packed_seq_params is not None:
            raise NotImplementedError("generation supports neither attention bias nor packed sequences")
        seq, rows = query.shape[0], query.shape[1]
        out = attend(self.cache, self.layer, query.permute(1, 2, 0, 3), key.permute(1, 2, 0, 3),
                     value.permute(1, 2, 0, 3), self.softmax_scale)  # [R, H, s, D]
        return out.permute(2, 0, 1, 3).reshape(seq, rows, -1)


class TorchGenerationEngine:
    """The :class:`~nemo_gift.algorithms.interfaces.GenerationBackend` on a
    megatron-core ``GPTModel`` (this rank's TP shard, PP = 1).

    Args:
        model: the ``GPTModel`` from ``build_gpt_model``: the trainer's own (then ``refit`` is
            only needed when the weights change elsewhere) or a separate rollout copy.
        cfg: its architecture.
        impl: ``lean`` recomputes the forward from the model's parameters with plain torch ops
            (:mod:`~nemo_gift.models.generation.lean_forward`); ``megatron`` runs megatron-core's
            own modules (slower on small models, but covers any layer spec); ``auto`` takes
            ``lean`` where it supports the model.
        seed: seeds the engine's generator (the same on every TP rank).
        pad_token_id: fills ``GenerationOutput.tokens`` past each response's end.
        offload_on_sleep: on ``sleep()``, move the model's parameters to CPU, and back on
            ``wake()``. Only for a model the engine owns: never for the trainer's.
    """

    def __init__(self, model, cfg: ModelConfig, *, impl: Impl = "auto", seed: int = 1234,
                 pad_token_id: int = 0, offload_on_sleep: bool = False):
        from megatron.core import parallel_state as ps

        if ps.model_parallel_is_initialized() and ps.get_pipeline_model_parallel_world_size() > 1:
            raise NotImplementedError(
                "TorchGenerationEngine needs pipeline_model_parallel_size=1 (the whole model on "
                "each TP rank); build a PP=1 rollout model and refit it"
            )
        if not (getattr(model, "pre_process", True) and getattr(model, "post_process", True)):
            raise ValueError("TorchGenerationEngine needs a model with both embedding and output layer")
        if impl not in ("auto", "lean", "megatron"):
            raise ValueError(f"impl must be auto, lean or megatron; got {impl!r}")
        reason = unsupported_reason(model)
        if impl == "lean" and reason is not None:
            raise NotImplementedError(f"impl='lean' does not support this model: {reason}")
        self.impl: Impl = "lean" if impl == "lean" or (impl == "auto" and reason is None) else "megatron"
        if self.impl == "megatron" and model.config.sequence_parallel:
            raise NotImplementedError(
                "impl='megatron' cannot decode a sequence-parallel model (one-token steps do not "
                f"split over TP); use impl='lean'{f', which does not support it: {reason}' if reason else ''}"
            )
        self._fwd = LeanForward(model) if self.impl == "lean" else MegatronForward(model)
        self.model, self.cfg = model, cfg
        self.pad_token_id = int(pad_token_id)
        self.offload_on_sleep = offload_on_sleep
        self.last_stats = GenerationStats()
        self._seed = int(seed)
        self._generator: torch.Generator | None = None
        self._asleep = False
        self._device: torch.device | None = None

    # ------------------------------------------------------------------ GenerationBackend

    def generate(self, prompts: Sequence[Sequence[int]], n: int = 1,
                 sampling: SamplingConfig | None = None) -> GenerationOutput:
        """Sample ``n`` responses to each prompt; see the padding contract in
        :mod:`~nemo_gift.algorithms.interfaces`."""
        sampling = sampling or SamplingConfig()
        if self._asleep:
            raise RuntimeError("the engine is asleep: call wake() before generate()")
        lengths = self._check_prompts(prompts, n, sampling)
        start = time.perf_counter()
        device = self._model_device()
        if sampling.seed is not None:
            generator = make_generator(sampling.seed, device)
        else:
            if self._generator is None or self._generator.device != device:
                self._generator = make_generator(self._seed, device)
            generator = self._generator
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self._generate(prompts, lengths, n, sampling, generator, device)
        finally:
            self.model.train(was_training)
        self.last_stats.seconds = time.perf_counter() - start
        return out

    def refit(self, weights: HFWeights) -> None:
        """Load full HF-named tensors (``nemo_gift.models.policy.hf_weights.export_hf_tensors``) into this
        rank's shard of the model. Call it after ``wake()``."""
        from nemo_gift.models.policy.hf_weights import load_hf_tensors

        load_hf_tensors(self.model, self.cfg, weights)

    def sleep(self) -> None:
        """Nothing is cached between calls (the KV cache lives for one ``generate``); with
        ``offload_on_sleep`` the parameters also move to CPU."""
        if self._asleep:
            return
        if self.offload_on_sleep:
            self._device = self._model_device()
            for p in self.model.parameters():
                p.data = p.data.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self._asleep = True

    def wake(self) -> None:
        """Move offloaded parameters back to their device."""
        if not self._asleep:
            return
        if self.offload_on_sleep and self._device is not None:
            for p in self.model.parameters():
                p.data = p.data.to(self._device)
        self._asleep = False

    # ------------------------------------------------------------------ internals

    def _model_device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _check_prompts(self, prompts, n: int, sampling: SamplingConfig) -> list[int]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not prompts:
            raise ValueError("generate() needs at least one prompt")
        lengths = [len(p) for p in prompts]
        if min(lengths) < 1:
            raise ValueError(f"prompt {lengths.index(0)} is empty")
        for i, p in enumerate(prompts):
            if min(p) < 0 or max(p) >= self.cfg.vocab_size:
                raise ValueError(f"prompt {i} has token ids outside [0, {self.cfg.vocab_size})")
        for t in sampling.stop_token_ids:
            if not 0 <= t < self.cfg.vocab_size:
                raise ValueError(f"stop token {t} is outside [0, {self.cfg.vocab_size})")
        longest = max(lengths) + sampling.max_new_tokens
        if longest > self.cfg.max_position_embeddings:
            raise ValueError(
                f"longest prompt ({max(lengths)}) + sampling.max_new_tokens "
                f"({sampling.max_new_tokens}) = {longest} exceeds "
                f"model.max_position_embeddings={self.cfg.max_position_embeddings}"
            )
        return lengths

    def _generate(self, prompts, lengths, n, sampling, generator, device):
        fwd = self._fwd
        num_prompts, longest, max_new = len(prompts), max(lengths), sampling.max_new_tokens
        rows = num_prompts * n
        stats = GenerationStats(prefill_tokens=num_prompts * longest)
        self.last_stats = stats
        cache = KVCache(len(self.model.decoder.layers))
        fwd.prepare(longest + max_new)

        # 1. prefill the B prompts, right-padded to P = longest
        batch = torch.full((num_prompts, longest), self.pad_token_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            batch[i, : len(p)] = torch.as_tensor(p, dtype=torch.long)
        batch = batch.to(device)
        prompt_len = torch.as_tensor(lengths, dtype=torch.long, device=device)  # [B]
        positions = torch.arange(longest, device=device).expand(num_prompts, longest)
        hidden = fwd.hidden(batch, positions, cache)  # [B, P, h]
        last = hidden[torch.arange(num_prompts, device=device), prompt_len - 1]  # [B, h]
        vocab = self.cfg.vocab_size  # the tables may have padding rows past it (logit 0, not -inf)
        logits = fwd.logits(last)[:, :vocab].repeat_interleave(n, dim=0)  # [N, V]

        # 2. one cache row per response
        cache.expand(n, longest + max_new)
        cache.prefill = False
        position = prompt_len.repeat_interleave(n)  # [N] position of the next token fed
        if min(lengths) < longest:  # slots [len, P) hold padding
            valid = torch.ones(rows, longest + max_new, dtype=torch.bool, device=device)
            valid[:, :longest] = torch.arange(longest, device=device) < position[:, None]
            cache.valid = valid

        # 3. decode, dropping finished rows
        out_tokens = torch.full((rows, max_new), self.pad_token_id, dtype=torch.long, device=device)
        out_logprobs = torch.zeros(rows, max_new, dtype=torch.float32, device=device)
        own = filters_nothing(sampling, vocab)  # then the sampled log-probs are the policy's own
        out_policy = out_logprobs if own else torch.zeros_like(out_logprobs)  # [N, max_new]
        out_lengths = torch.zeros(rows, dtype=torch.long)
        reasons: list[FinishReason] = ["length"] * rows
        stop = torch.as_tensor(sampling.stop_token_ids, dtype=torch.long, device=device)
        active = torch.arange(rows, device=device)  # output rows still decoding
        for t in range(max_new):
            token, logprob = sample(logits, sampling, generator)  # [R], [R]
            out_tokens[active, t] = token
            out_logprobs[active, t] = logprob
            if not own:
                out_policy[active, t] = token_logprobs(logits, token, UNMODIFIED)  # [R]
            stopped = torch.isin(token, stop) if stop.numel() else torch.zeros_like(token, dtype=torch.bool)
            done = stopped | (t + 1 == max_new)
            if bool(done.any()):
                out_lengths[active[done].cpu()] = t + 1
                for r in active[stopped].tolist():
                    reasons[r] = "stop"
                if bool(done.all()):
                    break
                keep = torch.nonzero(~done).squeeze(1)
                active, token, position = active[keep], token[keep], position[keep]
                cache.keep(keep)
            cache.slot = longest + t
            hidden = fwd.hidden(token[:, None], position[:, None], cache)  # [R, 1, h]
            logits = fwd.logits(hidden[:, 0])[:, :vocab]
            position = position + 1
            stats.decode_steps += 1
            stats.decode_rows += int(token.shape[0])

        width = int(out_lengths.max())
        stats.generated_tokens = int(out_lengths.sum())
        return GenerationOutput(
            tokens=out_tokens[:, :width].cpu(),
            lengths=out_lengths,
            logprobs=out_logprobs[:, :width].cpu(),
            policy_logprobs=out_policy[:, :width].cpu(),
            finish_reasons=reasons,
            prompt_index=torch.arange(num_prompts).repeat_interleave(n),
            pad_token_id=self.pad_token_id,
        )
