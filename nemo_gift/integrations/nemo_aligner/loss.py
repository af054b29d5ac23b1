"""Actor side of the NeMo-Aligner extension: the GIFT micro-batch loss and the step's metrics.

Torch and megatron-core only (no NeMo import). The actor (:mod:`.actor`) wires these into
Aligner's training call; all math is :func:`nemo_gift.algorithms.gift_loss`, all log-probs
:func:`nemo_gift.distributed.logprobs.vocab_parallel_logprobs`.

Symbols: n rows in the mini-batch of this data-parallel (DP) rank, M micro-batches of n / M
rows, S tokens per row, V/TP the vocabulary shard. The rows come from
:func:`.rollout.build_gift_rollout_data`: groups of G contiguous, and every micro-batch holds
whole groups (:func:`.rollout.check_whole_groups`), so each micro-batch computes z and A of its
groups exactly, with no collective.

Scaling: micro-batch j returns ``l_j = sum_{i in j} (A_i - beta z_i)^2 / N_pairs``, N_pairs the
pairs of the whole mini-batch (kept pairs under ``drop_zero_std_groups``), so that
``sum_j l_j = L``, :func:`gift_loss` of the mini-batch. megatron-core's schedule divides the
tensor a loss function returns by M (``calculate_per_token_loss=False``), so backward gets
``l_j * M``. NeMo's gradient all-reduce then averages over DP, as for Aligner's own actors: the
step minimizes the mean over DP ranks of their mini-batch losses.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from nemo_gift.algorithms.config import GiftLossConfig
from nemo_gift.algorithms.losses import gift_loss
from nemo_gift.algorithms.normalization import explicit_advantages
from nemo_gift.distributed.logprobs import vocab_parallel_logprobs

__all__ = [
    "GiftActorConfig",
    "gift_actor_config",
    "METRIC_KEYS",
    "token_logprobs",
    "local_groups",
    "count_pairs",
    "gift_microbatch_loss",
    "minibatch_metrics",
    "reduce_metrics",
]

METRIC_KEYS = (
    "loss",
    "z_a_corr",
    "zero_explicit_std_frac",
    "degenerate_implicit_std_frac",
    "implicit_reward_mean",
    "implicit_reward_std",
    "implicit_group_std_mean",
    "response_length_mean",
    "num_pairs",
)
"""The metrics of :func:`gift_loss`, in the fixed order they are broadcast and reduced in."""


@dataclasses.dataclass(frozen=True)
class GiftActorConfig:
    """The ``model.gift`` block of an Aligner recipe (``examples/nemo_aligner/conf``)."""

    loss: GiftLossConfig = dataclasses.field(default_factory=GiftLossConfig)
    """The GIFT loss options (``docs/gift-math.md``); ``loss.implicit_baseline`` also tells the
    trainer which log-probs to keep as the baseline."""
    logprob_chunk_size: Optional[int] = None
    """Rows of the [n*S, V/TP] logits processed at once by the log-prob kernel, bounding its fp32
    workspace; None processes the micro-batch in one chunk."""

    def __post_init__(self) -> None:
        c = self.logprob_chunk_size
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise ValueError(f"gift.logprob_chunk_size={c!r} must be null or an int >= 1")


def gift_actor_config(model_cfg) -> GiftActorConfig:
    """:class:`GiftActorConfig` from ``model_cfg.gift`` (an OmegaConf node or a dict; missing means
    the defaults). An unknown key or a bad value raises ``ConfigError`` naming ``gift.<key>``."""
    from omegaconf import OmegaConf

    from nemo_gift.utils.convert import from_dict

    node = model_cfg.get("gift", None) if model_cfg is not None else None
    data = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    return from_dict(GiftActorConfig, data, path="gift")


def token_logprobs(
    logits_shard: torch.Tensor,
    tokens: torch.Tensor,
    tp_group=None,
    chunk_size: Optional[int] = None,
    *,
    inference_only: bool = False,
    overwrite_logits: bool = False,
) -> torch.Tensor:
    """log pi(tokens[:, t+1] | tokens[:, :t+1]) [n, S-1] from logits [n, S, V/TP]: Aligner's layout.

    The targets are the tokens rolled left by one, so the logits are used as they are (no
    sliced copy); the last position scores a wrapped-around token and is dropped.
    """
    lp = vocab_parallel_logprobs(
        logits_shard, tokens.roll(-1, dims=1), tp_group, chunk_size, inference_only, overwrite_logits=overwrite_logits
    )  # [n, S]
    return lp[:, :-1]


def local_groups(group_ids: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """(group_index [n] in [0, K), K) for rows whose groups are contiguous runs of ``group_ids``."""
    _, index = torch.unique_consecutive(group_ids, return_inverse=True)
    return index, int(index.max()) + 1 if index.numel() else 0


def count_pairs(rewards: torch.Tensor, group_ids: torch.Tensor, config: GiftLossConfig) -> int:
    """N_pairs of a mini-batch: all rows, or under ``drop_zero_std_groups`` those of groups whose
    rewards differ. At least 1, so a mini-batch of only constant-reward groups gives loss 0."""
    if not config.drop_zero_std_groups:
        return int(rewards.shape[0])
    index, k = local_groups(group_ids)
    zero_std = explicit_advantages(rewards, group_index=index, num_groups=k, eps=config.eps).zero_std  # [K]
    return max(int((~zero_std[index]).sum()), 1)


def gift_microbatch_loss(
    logits_shard: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    config: GiftLossConfig,
    *,
    num_pairs: int,
    num_microbatches: int,
    tp_group=None,
    chunk_size: Optional[int] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The GIFT loss of one micro-batch of whole groups, as a megatron-core ``loss_func`` returns it.

    Args:
        logits_shard: [b, S, V/TP] vocab-parallel logits of ``batch["response_tokens"]``; used
            as scratch (the caller must not read them afterwards).
        batch: b rows of :data:`.rollout.GIFT_BATCH_KEYS`.
        config: the loss options.
        num_pairs: N_pairs of the whole mini-batch (:func:`count_pairs`).
        num_microbatches: M.
        tp_group: the tensor-parallel group (None: TP = 1).
        chunk_size: see :class:`GiftActorConfig`.

    Returns:
        ``(l * M, report)``: the tensor for backward, and ``report`` with the unscaled ``loss``
        l (detached) and the micro-batch's ``logprobs`` [b, S-1] (detached), from which
        :func:`minibatch_metrics` computes the step's metrics.
    """
    logprobs = token_logprobs(
        logits_shard, batch["response_tokens"], tp_group, chunk_size, overwrite_logits=True
    )  # [b, S-1] fp32
    index, k = local_groups(batch["group_ids"])
    loss, _ = gift_loss(
        logprobs, batch["baseline_logprobs"], batch["mask"], batch["rewards"], None, config,
        group_index=index, num_groups=k, num_pairs=num_pairs,
    )
    return loss * num_microbatches, {"loss": loss.detach(), "logprobs": logprobs.detach()}


def minibatch_metrics(
    reports: List[Mapping[str, torch.Tensor]],
    batch: Mapping[str, torch.Tensor],
    config: GiftLossConfig,
    num_pairs: int,
) -> torch.Tensor:
    """[len(METRIC_KEYS)] float64: :func:`gift_loss`'s metrics of the whole mini-batch, from the
    micro-batches' log-probs, with ``loss`` the sum of the micro-batch losses (the objective the
    gradients were taken of; it equals ``gift_loss`` of the mini-batch up to rounding)."""
    logprobs = torch.cat([r["logprobs"] for r in reports])  # [n, S-1]
    index, k = local_groups(batch["group_ids"])
    with torch.no_grad():
        _, metrics = gift_loss(
            logprobs, batch["baseline_logprobs"].to(logprobs.device), batch["mask"].to(logprobs.device),
            batch["rewards"].to(logprobs.device), None, config,
            group_index=index.to(logprobs.device), num_groups=k, num_pairs=num_pairs,
        )
    metrics["loss"] = torch.stack([r["loss"] for r in reports]).sum()
    return torch.stack([metrics[key].double() for key in METRIC_KEYS])


def reduce_metrics(local: Optional[torch.Tensor], device: torch.device) -> Dict[str, float]:
    """The metrics as floats, identical on every rank: ``local`` (from :func:`minibatch_metrics`,
    on the last pipeline stage; None elsewhere) is broadcast from the last stage, then averaged
    over the data-parallel group (Aligner's convention for actor metrics). ``device``: where the
    collectives run (the CUDA device under NCCL, the CPU under gloo)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    if local is None:
        values = torch.zeros(len(METRIC_KEYS), dtype=torch.float64, device=device)
    else:
        values = local.detach().to(device=device, dtype=torch.float64).clone()
    if ps.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(
            values, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
        )
    dp = ps.get_data_parallel_world_size()
    if dp > 1:
        dist.all_reduce(values, group=ps.get_data_parallel_group())
        values /= dp
    return {key: float(v) for key, v in zip(METRIC_KEYS, values.tolist())}
