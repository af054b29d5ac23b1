"""The policy's LM head fused with the log-prob reduction: the GPTModel returns log pi(labels).

While :func:`fused_logprobs_head` is active, the last stage's ``GPTModel.output_layer`` (a
``ColumnParallelLinear``) computes :func:`nemo_gift.distributed.fused_logprobs.fused_linear_logprobs`
of its input instead of the ``[s, b, V/TP]`` logits, so ``model(tokens, position_ids,
attention_mask)`` returns ``log pi(labels)`` [b, s] fp32 and no whole logits tensor exists.

How, and why this way. megatron-core's ``GPTModel._postprocess`` (0.16.1 and 0.19.2 alike) runs
the decoder (its final norm included), then ``logits, _ = self.output_layer(hidden_states,
weight=output_weight, runtime_gather_output=...)`` and, without labels, returns
``logits.transpose(0, 1).contiguous()``. The head substitutes the output layer's ``forward`` on
the instance for the call's duration: ``output_weight`` is still chosen by the model (the
embedding's weight with ``share_embeddings_and_output_weights`` on the first stage, the output
layer's own copy on a last stage of PP > 1), and the module's hooks (DDP's forward pre-hooks)
still run, because ``nn.Module.__call__`` stays the module's. megatron-core 0.19 also offers
``GPTModel.forward(output_processor=...)``; 0.16.1, which the 3.11 stack runs, has no such
argument, so the substitution serves both with one code path.

TP: the head's input is made replicated as ``ColumnParallelLinear`` makes it, and these
megatron-core mappings reduce the gradient of the hidden states over TP (the fused function
returns only this rank's vocabulary part of it):

- no sequence parallelism: ``copy_to_tensor_model_parallel_region`` (identity forward,
  all-reduce backward);
- sequence parallelism (hidden [s/TP, b, H]): ``gather_from_sequence_parallel_region`` with
  ``tensor_parallel_output_grad=True`` (all-gather forward, reduce-scatter backward).

Refused, naming the setting: an output-layer bias (``GPTModel`` builds it with ``bias=False``),
multi-token prediction (its loss calls the output layer too), MuP logit scaling (0.19 scales what
the output layer returns), deferred embedding wgrad, and a gathered vocabulary
(``parallel_output=False``). Not executed here: the MXFP8 output projection of megatron-core 0.19
(``TELMHeadColumnParallelLinear``, Transformer Engine): under this head its GEMMs run in the
parameter dtype instead.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from nemo_gift.distributed.fused_logprobs import fused_linear_logprobs

__all__ = ["fused_logprobs_head", "gpt_of"]


def gpt_of(model):
    """The ``GPTModel`` inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def _check_supported(gpt, layer) -> None:
    config = gpt.config
    refusals = {
        "an output-layer bias": getattr(layer, "bias", None) is not None,
        "multi-token prediction (config.mtp_num_layers)": bool(getattr(config, "mtp_num_layers", None)),
        "MuP logit scaling (config.use_mup)": bool(getattr(config, "use_mup", False)),
        "deferred embedding wgrad (config.defer_embedding_wgrad_compute)": bool(
            getattr(config, "defer_embedding_wgrad_compute", False)
        ),
        "a gathered vocabulary (parallel_output=False)": bool(getattr(layer, "gather_output", False)),
    }
    bad = [what for what, on in refusals.items() if on]
    if bad:
        raise ValueError(
            f"parallel.fused_lm_head_logprobs does not support {', '.join(bad)}; "
            f"set parallel.fused_lm_head_logprobs=false"
        )


def _replicated(hidden: torch.Tensor, layer) -> torch.Tensor:
    """The head's input [s, b, H] on every TP rank, its gradient reduced over TP in backward."""
    from megatron.core.tensor_parallel import (
        copy_to_tensor_model_parallel_region, gather_from_sequence_parallel_region,
    )

    group = getattr(layer, "tp_group", None)
    if getattr(layer, "sequence_parallel", False):
        return gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=True, group=group)
    return copy_to_tensor_model_parallel_region(hidden, group=group)


@contextlib.contextmanager
def fused_logprobs_head(model, labels: torch.Tensor, *, chunk_size: Optional[int] = None,
                        inference_only: bool = False):
    """Within the block, ``model(...)`` returns log pi(labels) [b, s] fp32 on the last stage.

    Args:
        model: this rank's stage, bare or wrapped (DDP); stages without the head are untouched.
        labels: [b, s] int token ids of the micro-batch the block's forward reads.
        chunk_size: tokens per chunk of the fused reduction (``None``: its default).
        inference_only: save nothing for backward (reference and rollout log-probs).
    """
    gpt = gpt_of(model)
    layer = getattr(gpt, "output_layer", None)
    if not getattr(gpt, "post_process", False) or layer is None:
        yield
        return
    _check_supported(gpt, layer)
    from megatron.core import parallel_state as ps

    group = getattr(layer, "tp_group", None) or ps.get_tensor_model_parallel_group()

    def head(hidden, weight=None, runtime_gather_output=None):  # hidden [s(/TP), b, H]
        if runtime_gather_output:
            raise ValueError("parallel.fused_lm_head_logprobs returns log-probs, not gathered logits")
        weight = layer.weight if weight is None else weight  # [V/TP, H]
        full = _replicated(hidden, layer)  # [s, b, H]
        logprobs = fused_linear_logprobs(
            full, weight, labels.t(), group, chunk_size, inference_only=inference_only
        )  # [s, b] fp32
        return logprobs, None

    layer.forward = head
    try:
        yield
    finally:
        del layer.forward
