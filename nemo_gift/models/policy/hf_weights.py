"""The Hugging Face <-> megatron-core mapping of names, shapes and layouts (project-owned).

Covered: ``LlamaForCausalLM`` (Llama, DeepSeek-LLM), ``Qwen2ForCausalLM`` (Qwen2, Qwen2.5) and
``Qwen3ForCausalLM``. Megatron names below are those of the TP=1/PP=1 model with the local
layer spec ("full" names); ``L`` is a global layer index, ``H`` the hidden size, ``F`` the
MLP width, ``n`` / ``g`` the query / key-value heads, ``d`` the head dim, ``V`` the HF vocab
and ``Vp`` the padded vocab (:meth:`ModelConfig.padded_vocab_size`).

=============================================  ==============================================
Hugging Face                                   megatron-core
=============================================  ==============================================
model.embed_tokens.weight [V, H]               embedding.word_embeddings.weight [Vp, H]
model.layers.L.input_layernorm.weight          decoder.layers.L.input_layernorm.weight
                                               (TE: ...self_attention.linear_qkv.layer_norm_weight)
model.layers.L.self_attn.{q,k,v}_proj.weight   decoder.layers.L.self_attention.linear_qkv.weight
  [n*d, H], [g*d, H], [g*d, H]                   [(n + 2g)*d, H], ordered by query group:
                                                 [q heads of group 0; k_0; v_0; q of group 1; ...]
model.layers.L.self_attn.{q,k,v}_proj.bias     ...linear_qkv.bias, same order (Qwen2 only)
model.layers.L.self_attn.{q,k}_norm.weight [d] ...self_attention.{q,k}_layernorm.weight (Qwen3)
model.layers.L.self_attn.o_proj.weight         ...self_attention.linear_proj.weight [H, n*d]
model.layers.L.post_attention_layernorm.weight decoder.layers.L.pre_mlp_layernorm.weight
                                               (TE: ...mlp.linear_fc1.layer_norm_weight)
model.layers.L.mlp.{gate,up}_proj.weight       ...mlp.linear_fc1.weight [2F, H] = [gate; up]
model.layers.L.mlp.down_proj.weight            ...mlp.linear_fc2.weight [H, F]
model.norm.weight                              decoder.final_layernorm.weight
lm_head.weight [V, H] (absent when tied)       output_layer.weight [Vp, H] (absent when tied)
=============================================  ==============================================

Tensor parallelism: this rank holds the ``r``-th contiguous chunk of dim 0 (QKV, embedding,
output layer) or dim 1 (``linear_proj``, ``linear_fc2``); a QKV chunk is whole query groups, so
TP must divide ``g``. ``linear_fc1`` is ``[gate_r; up_r]`` on each rank (the SwiGLU rule of
:mod:`nemo_gift.models.policy.sharding`). Norms are replicated. Which dim is split is decided
here from the name, so Transformer Engine parameters (same names apart from the fused norms)
are handled identically; that path was not executed (no TE on the CPU machines).

Pipeline parallelism: stage ``p`` holds layers ``p*L/PP .. (p+1)*L/PP - 1``, the embedding
lives on the first stage and the final norm and output layer on the last (with tied
embeddings, the last stage's ``output_layer.weight`` is a copy of the embedding).

Vocabulary: megatron's tables have ``Vp`` rows; import pads the HF tables with zero rows,
export drops them (:meth:`ModelConfig.padded_vocab_size` says when ``Vp > V``).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Iterator, Literal, Mapping

import torch

from nemo_gift.models.policy.hf_config import (
    _HF_CLASS,
    SUPPORTED_ARCHITECTURES,
    UnsupportedModelError,
    check_representable,
    hf_config_to_model_config,
    model_config_to_hf_config,
)
from nemo_gift.models.policy.config import ModelConfig

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "UnsupportedModelError",
    "check_representable",
    "WeightEntry",
    "canonical_name",
    "check_hf_names_and_shapes",
    "export_hf_tensors",
    "expected_hf_shapes",
    "hf_config_to_model_config",
    "load_hf_tensors",
    "mcore_full_to_hf",
    "model_config_to_hf_config",
    "weight_entries",
]

# Names that HF checkpoints may carry and that hold no weight of the model (non-persistent
# buffers saved by old transformers versions).
_IGNORED_HF = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")

# Transformer Engine fuses the pre-attention / pre-MLP RMSNorm into the next linear layer.
_TE_ALIASES = {
    ".self_attention.linear_qkv.layer_norm_weight": ".input_layernorm.weight",
    ".mlp.linear_fc1.layer_norm_weight": ".pre_mlp_layernorm.weight",
}

Kind = Literal["copy", "qkv", "gate_up", "vocab"]


# ----------------------------------------------------------------------------------------------
# The name table
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WeightEntry:
    """One megatron parameter (full name) and the HF tensor(s) it is made of."""

    mcore: str
    """Full megatron name (local-spec naming, TP=1/PP=1 layer index)."""
    hf: tuple[str, ...]
    """HF names: 3 for ``qkv`` (q, k, v), 2 for ``gate_up`` (gate, up), else 1."""
    kind: Kind
    """How the HF tensors become the megatron one."""
    layer: int | None
    """Global layer index, or None for the embedding, final norm and output layer."""


def weight_entries(cfg: ModelConfig) -> list[WeightEntry]:
    """Every weight of the model, in Hugging Face order."""
    e = [WeightEntry("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab", None)]
    for i in range(cfg.num_layers):
        m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        attn = h + "self_attn."
        e.append(WeightEntry(m + "input_layernorm.weight", (h + "input_layernorm.weight",), "copy", i))
        e.append(WeightEntry(
            m + "self_attention.linear_qkv.weight", tuple(f"{attn}{x}_proj.weight" for x in "qkv"), "qkv", i
        ))
        if cfg.add_qkv_bias:
            e.append(WeightEntry(
                m + "self_attention.linear_qkv.bias", tuple(f"{attn}{x}_proj.bias" for x in "qkv"), "qkv", i
            ))
        if cfg.qk_layernorm:
            e.append(WeightEntry(m + "self_attention.q_layernorm.weight", (attn + "q_norm.weight",), "copy", i))
            e.append(WeightEntry(m + "self_attention.k_layernorm.weight", (attn + "k_norm.weight",), "copy", i))
        e.append(WeightEntry(m + "self_attention.linear_proj.weight", (attn + "o_proj.weight",), "copy", i))
        e.append(WeightEntry(m + "pre_mlp_layernorm.weight", (h + "post_attention_layernorm.weight",), "copy", i))
        e.append(WeightEntry(
            m + "mlp.linear_fc1.weight", (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"), "gate_up", i
        ))
        e.append(WeightEntry(m + "mlp.linear_fc2.weight", (h + "mlp.down_proj.weight",), "copy", i))
    e.append(WeightEntry("decoder.final_layernorm.weight", ("model.norm.weight",), "copy", None))
    if not cfg.tie_word_embeddings:
        e.append(WeightEntry("output_layer.weight", ("lm_head.weight",), "vocab", None))
    return e


def expected_hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> shape of every tensor a checkpoint of ``cfg`` holds (``lm_head`` only if untied)."""
    H, F, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.head_dim
    n, g, V = cfg.num_attention_heads, cfg.query_groups, cfg.vocab_size
    shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, H)
    for i in range(cfg.num_layers):
        h = f"model.layers.{i}."
        a = h + "self_attn."
        shapes.update({
            h + "input_layernorm.weight": (H,),
            h + "post_attention_layernorm.weight": (H,),
            a + "q_proj.weight": (n * d, H),
            a + "k_proj.weight": (g * d, H),
            a + "v_proj.weight": (g * d, H),
            a + "o_proj.weight": (H, n * d),
            h + "mlp.gate_proj.weight": (F, H),
            h + "mlp.up_proj.weight": (F, H),
            h + "mlp.down_proj.weight": (H, F),
        })
        if cfg.add_qkv_bias:
            shapes.update({a + "q_proj.bias": (n * d,), a + "k_proj.bias": (g * d,), a + "v_proj.bias": (g * d,)})
        if cfg.qk_layernorm:
            shapes.update({a + "q_norm.weight": (d,), a + "k_norm.weight": (d,)})
    return shapes


def _full_shape(entry: WeightEntry, cfg: ModelConfig, rows: int) -> tuple[int, ...]:
    """Shape of the full megatron tensor; ``rows`` = the embedding/output rows (``Vp``)."""
    H, F, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.head_dim
    qkv = (cfg.num_attention_heads + 2 * cfg.query_groups) * d
    if entry.kind == "vocab":
        return (rows, H)
    if entry.kind == "qkv":
        return (qkv, H) if entry.mcore.endswith("weight") else (qkv,)
    if entry.kind == "gate_up":
        return (2 * F, H)
    leaf = entry.mcore
    if leaf.endswith("linear_proj.weight"):
        return (H, cfg.num_attention_heads * d)
    if leaf.endswith("linear_fc2.weight"):
        return (H, F)
    if leaf.endswith(("q_layernorm.weight", "k_layernorm.weight")):
        return (d,)
    return (H,)


def _partition_dim(mcore_name: str) -> int | None:
    """The TP-split dim of a megatron parameter, from its name (local and TE specs alike)."""
    if mcore_name.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return 1
    if mcore_name.endswith(
        ("linear_qkv.weight", "linear_qkv.bias", "linear_fc1.weight", "word_embeddings.weight", "output_layer.weight")
    ):
        return 0
    return None


def canonical_name(name: str) -> str:
    """The local-spec name of a (full) megatron parameter name, TE-fused norms included."""
    for te, local in _TE_ALIASES.items():
        if name.endswith(te):
            return name[: -len(te)] + local
    return name


# ----------------------------------------------------------------------------------------------
# Tensor conversion (full tensors)
# ----------------------------------------------------------------------------------------------


def _fuse(entry: WeightEntry, parts: list[torch.Tensor], cfg: ModelConfig, rows: int) -> torch.Tensor:
    """HF tensors -> the full megatron tensor of ``entry``."""
    if entry.kind == "copy":
        return parts[0]
    if entry.kind == "vocab":
        t = parts[0]
        if rows == t.shape[0]:
            return t
        return torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))], dim=0)
    if entry.kind == "gate_up":
        return torch.cat(parts, dim=0)
    g, d = cfg.query_groups, cfg.head_dim
    q, k, v = parts
    tail = q.shape[1:]  # (H,) for weights, () for biases
    q = q.reshape(g, (cfg.num_attention_heads // g) * d, *tail)
    return torch.cat([q, k.reshape(g, d, *tail), v.reshape(g, d, *tail)], dim=1).reshape(-1, *tail)


def _split(entry: WeightEntry, full: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
    """The full megatron tensor of ``entry`` -> its HF tensors (contiguous)."""
    if entry.kind == "copy":
        return [full]
    if entry.kind == "vocab":
        return [full[: cfg.vocab_size].contiguous() if full.shape[0] != cfg.vocab_size else full]
    if entry.kind == "gate_up":
        return [t.contiguous() for t in torch.chunk(full, 2, dim=0)]
    g, d = cfg.query_groups, cfg.head_dim
    per_q = (cfg.num_attention_heads // g) * d
    tail = full.shape[1:]
    grouped = full.reshape(g, per_q + 2 * d, *tail)
    q, k, v = torch.split(grouped, [per_q, d, d], dim=1)
    return [t.reshape(-1, *tail).contiguous() for t in (q, k, v)]


def _tp_slice(full: torch.Tensor, entry: WeightEntry, tp: int, rank: int) -> torch.Tensor:
    dim = _partition_dim(entry.mcore)
    if dim is None or tp == 1:
        return full
    if entry.kind == "gate_up":
        gate, up = torch.chunk(full, 2, dim=0)
        return torch.cat([torch.chunk(gate, tp, dim=0)[rank], torch.chunk(up, tp, dim=0)[rank]], dim=0)
    return torch.chunk(full, tp, dim=dim)[rank]


def _entries_by_mcore(cfg: ModelConfig) -> dict[str, WeightEntry]:
    return {e.mcore: e for e in weight_entries(cfg)}


def mcore_full_to_hf(name: str, tensor: torch.Tensor, cfg: ModelConfig) -> list[tuple[str, torch.Tensor]]:
    """One full megatron tensor (TP=1/PP=1 name, local or TE spec) -> its HF-named tensors.

    This is the offline path: :func:`nemo_gift.models.policy.checkpoint.iter_full_tensors`
    feeds it tensor by tensor (``hf_export.export_checkpoint``).
    """
    entry = _entries_by_mcore(cfg).get(canonical_name(name))
    if entry is None:
        raise KeyError(f"megatron parameter {name!r} has no Hugging Face counterpart for {cfg.arch}")
    return list(zip(entry.hf, _split(entry, tensor, cfg)))


# ----------------------------------------------------------------------------------------------
# A live (possibly sharded) megatron-core model
# ----------------------------------------------------------------------------------------------


def _unwrap(model):
    if isinstance(model, (list, tuple)):
        if len(model) != 1:
            raise ValueError(f"virtual pipeline stages are not supported: got {len(model)} model chunks")
        model = model[0]
    while hasattr(model, "module"):  # DDP, Float16Module
        model = model.module
    return model


class _Layout:
    """This rank's place in the model-parallel groups, and its parameters by full name."""

    def __init__(self, model, cfg: ModelConfig):
        from megatron.core import parallel_state as ps

        from nemo_gift.models.policy.sharding import global_name

        self.model = _unwrap(model)
        self.tp = ps.get_tensor_model_parallel_world_size()
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        self.pp = ps.get_pipeline_model_parallel_world_size()
        self.pp_rank = ps.get_pipeline_model_parallel_rank()
        self.tp_group = ps.get_tensor_model_parallel_group()
        self.pp_group = ps.get_pipeline_model_parallel_group()
        if self.model.config.num_layers != cfg.num_layers:
            raise ValueError(f"model has {self.model.config.num_layers} layers, the config {cfg.num_layers}")
        self.layers_per_stage = cfg.num_layers // self.pp
        self.rows = cfg.padded_vocab_size(self.tp)
        # Full name -> local parameter. A tied last stage's output_layer.weight maps to the
        # embedding's full name: it is loaded from embed_tokens, and never exported.
        self.params: dict[str, torch.nn.Parameter] = {}
        self.tied_copies: dict[str, torch.nn.Parameter] = {}
        for name, param in self.model.named_parameters():
            full = canonical_name(global_name(name, self.model))
            if full in self.params:
                self.tied_copies[full] = param
            elif name == "output_layer.weight" and full != name:
                self.tied_copies[full] = param
            else:
                self.params[full] = param
        self.dtype = self.model.config.params_dtype
        self.device = next(self.model.parameters()).device

    def owner(self, entry: WeightEntry) -> int:
        """The pipeline stage that holds ``entry``."""
        if entry.layer is not None:
            return entry.layer // self.layers_per_stage
        return 0 if entry.mcore.startswith("embedding.") else self.pp - 1

    def local_params(self, entry: WeightEntry) -> list[torch.nn.Parameter]:
        """This rank's parameter(s) for ``entry``: none when another stage holds it; for a tied
        embedding with PP > 1, the last stage's ``output_layer.weight`` copy."""
        out = [self.params[entry.mcore]] if entry.mcore in self.params else []
        if entry.mcore in self.tied_copies:
            out.append(self.tied_copies[entry.mcore])
        return out


def _dense(t: torch.Tensor) -> torch.Tensor:
    if hasattr(t, "dequantize"):  # a Transformer Engine FP8 parameter (fp8_param); not executed here
        t = t.dequantize()
    return t.detach()


def _gather_tp(local: torch.Tensor, entry: WeightEntry, lay: _Layout) -> torch.Tensor:
    import torch.distributed as dist

    dim = _partition_dim(entry.mcore)
    if dim is None or lay.tp == 1:
        return local
    local = local.contiguous()
    parts = [torch.empty_like(local) for _ in range(lay.tp)]
    dist.all_gather(parts, local, group=lay.tp_group)
    if entry.kind == "gate_up":
        gates, ups = zip(*(torch.chunk(p, 2, dim=0) for p in parts))
        return torch.cat([*gates, *ups], dim=0)
    return torch.cat(parts, dim=dim)


def export_hf_tensors(model, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(HF name, full tensor)`` for every weight of ``model``, one tensor at a time.

    Collective: call it on every rank of the model-parallel (TP x PP) group, and consume the
    iterator to the end on all of them (each step does a TP all-gather on the owning stage,
    then a broadcast over the PP group). Every rank of the group yields the same sequence, in
    HF order (:func:`weight_entries`), so any rank can write or refit; the ranks of other
    data-parallel replicas run the same collectives in their own groups.

    Tensors are full (TP-gathered, vocab padding removed), in the parameters' dtype and on
    their device. One that needs no gather may share memory with the parameter: copy it if
    you keep it past the next optimizer step. At most one full megatron tensor and its HF
    pieces are alive at a time per rank.
    """
    import torch.distributed as dist

    lay = _Layout(model, cfg)
    with torch.no_grad():
        for entry in weight_entries(cfg):
            src_stage = lay.owner(entry)
            full = None
            if lay.pp_rank == src_stage:
                full = _gather_tp(_dense(lay.local_params(entry)[0]), entry, lay)
            if lay.pp > 1:
                if full is None:
                    full = torch.empty(_full_shape(entry, cfg, lay.rows), dtype=lay.dtype, device=lay.device)
                else:
                    full = full.contiguous()
                dist.broadcast(full, src=dist.get_global_rank(lay.pp_group, src_stage), group=lay.pp_group)
            yield from zip(entry.hf, _split(entry, full, cfg))


def _shapes_of(tensors: Mapping[str, Any]) -> dict[str, tuple[int, ...] | None]:
    """Name -> shape without reading data: from ``tensors.hf_shapes`` (a lazy checkpoint, see
    :class:`nemo_gift.export.hf_import.HFCheckpoint`) or from in-memory tensors; ``None`` where
    the shape is only known on access."""
    known = getattr(tensors, "hf_shapes", None)
    if known is not None:
        return {n: tuple(known[n]) for n in tensors}
    if isinstance(tensors, dict):
        return {n: tuple(t.shape) if isinstance(t, torch.Tensor) else None for n, t in tensors.items()}
    return {n: None for n in tensors}


def check_hf_names_and_shapes(cfg: ModelConfig, shapes: Mapping[str, tuple[int, ...] | None]) -> None:
    """Check a whole checkpoint's names (and the shapes given) against ``cfg``, before any
    conversion. Raises ``KeyError`` naming unexpected or missing tensors, ``ValueError``
    naming the first tensor whose shape is wrong."""
    expected = expected_hf_shapes(cfg)
    names = set(shapes)
    if cfg.tie_word_embeddings:
        names.discard("lm_head.weight")
    unexpected = sorted(n for n in names - set(expected) if not _IGNORED_HF.match(n))
    if unexpected:
        raise KeyError(
            f"unexpected tensor(s) {unexpected[:5]} ({len(unexpected)} in all): not weights of this "
            f"{_HF_CLASS[cfg.arch]} model"
        )
    missing = sorted(set(expected) - names)
    if missing:
        raise KeyError(f"missing tensor(s) {missing[:5]} ({len(missing)} in all)")
    for name in sorted(names - {n for n in names if _IGNORED_HF.match(n)}):
        if shapes[name] is not None and tuple(shapes[name]) != expected[name]:
            raise ValueError(
                f"{name}: shape {tuple(shapes[name])} does not match the expected {expected[name]} "
                f"(from the model config)"
            )


def _check_tensor(name: str, tensor: Any, shapes: Mapping[str, tuple[int, ...]]) -> None:
    if name not in shapes:
        if _IGNORED_HF.match(name):
            return
        raise KeyError(f"unexpected tensor {name!r}: not a weight of this model")
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != shapes[name]:
        raise ValueError(f"{name}: shape {tuple(tensor.shape)} does not match the expected {shapes[name]}")


def load_hf_tensors(
    model,
    cfg: ModelConfig,
    tensors: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
) -> None:
    """Load HF-named full tensors into this rank's TP/PP shard of ``model``.

    Local to each rank: no communication. Every rank reads what its stage needs and slices its
    TP part; tensors of other stages are checked and skipped.

    ``tensors`` is a ``Mapping`` (every name is checked against the model before anything is
    copied) or an iterable of pairs, consumed once, in any order (streamed refit: a QKV or
    gate/up group is held until its last piece arrives, so pass those pieces close together).
    A ``lm_head.weight`` given for a tied model is ignored (HF ties it to the embedding).

    Raises ``KeyError`` naming an unexpected or missing tensor, ``ValueError`` naming a tensor
    whose shape is wrong. With an iterable, tensors before the bad one may already be loaded.
    """
    lay = _Layout(model, cfg)
    shapes = expected_hf_shapes(cfg)
    entries = weight_entries(cfg)
    by_hf = {h: e for e in entries for h in e.hf}
    mine = {e.mcore for e in entries if lay.local_params(e)}
    if isinstance(tensors, Mapping):
        check_hf_names_and_shapes(cfg, _shapes_of(tensors))
        pairs: Iterable = ((h, tensors[h]) for e in entries if e.mcore in mine for h in e.hf)
    else:
        pairs = tensors
    pending: dict[str, dict[str, torch.Tensor]] = {}
    loaded: set[str] = set()
    with torch.no_grad():
        for name, tensor in pairs:
            if cfg.tie_word_embeddings and name == "lm_head.weight":
                continue
            _check_tensor(name, tensor, shapes)
            entry = by_hf.get(name)
            if entry is None or entry.mcore not in mine:
                continue
            got = pending.setdefault(entry.mcore, {})
            got[name] = tensor
            if len(got) < len(entry.hf):
                continue
            del pending[entry.mcore]
            full = _fuse(entry, [got[h] for h in entry.hf], cfg, lay.rows)
            local = _tp_slice(full, entry, lay.tp, lay.tp_rank)
            for param in lay.local_params(entry):
                if tuple(local.shape) != tuple(param.shape):
                    raise ValueError(
                        f"{entry.hf}: TP shard shape {tuple(local.shape)} != megatron parameter "
                        f"{entry.mcore} {tuple(param.shape)}"
                    )
                param.copy_(local)
            loaded.add(entry.mcore)
    missing = sorted(mine - loaded)
    if missing:
        hf_missing = [h for e in entries if e.mcore in missing for h in e.hf]
        raise KeyError(f"missing tensor(s) for this rank's stage: {hf_missing[:5]} ({len(hf_missing)} in all)")
