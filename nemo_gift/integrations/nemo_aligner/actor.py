"""The GIFT actor for NeMo-Aligner 0.7.0: a REINFORCE actor whose training loss is GIFT's.

NeMo-Aligner's RL trainers drive an actor through ``AlignableGenerativeInterface``
(``nemo_aligner/models/alignable_interface.py``). :class:`MegatronGPTGiftActorModel` extends
Aligner's ``MegatronGPTReinforceActorModel`` (``nemo_aligner/models/nlp/gpt/
megatron_gpt_reinforce_actor.py``) and replaces exactly the parts that carry math:

================================  ===========================================================
interface method                  here
================================  ===========================================================
``infer``                         inherited: NeMo's generation, or TensorRT-LLM (``GPTGenerateTRTLLM``)
``get_inference_log_probs``       inherited loop over micro-batches; each log-prob comes from
                                  :meth:`get_logprob_output_only_func` (overridden, nemo_gift)
``get_init_policy_logprobs``      inherited: swaps the reference weights in
                                  (``init_policy_state_dict``) and calls the above
``prepare_for_inference``         inherited: eval mode, Adam offload, and TRT-LLM ``refit(model)``
                                  (engine built on the first call, weights refit after)
``finish_inference``              inherited: TRT-LLM ``free()`` (engine unload if configured)
``prepare_for_training``          inherited: micro-batch calculator, Adam onload
``prepare_for_training_step``     inherited
``get_loss_and_metrics``          **overridden**: the GIFT loss through megatron-core's
                                  ``forward_backward_func``; metrics from ``gift_loss``
``finish_training_step``          inherited: gradient reductions
``finish_training``               inherited
================================  ===========================================================

The batch it trains on comes from :class:`nemo_gift.integrations.nemo_aligner.trainer.GiftTrainer`
(``GIFT_BATCH_KEYS``: groups of G contiguous, every micro-batch of whole groups).
``model.gift`` in the recipe holds :class:`~.loss.GiftActorConfig`; the rest of the model config
(``model.reinforce``: sampling, lengths, TRT-LLM) is Aligner's REINFORCE actor config.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import torch
from megatron.core import parallel_state as ps
from megatron.core.num_microbatches_calculator import get_num_microbatches
from megatron.core.pipeline_parallel.schedules import get_forward_backward_func

from nemo.collections.nlp.modules.common.megatron.utils import get_iterator_k_split
from nemo_aligner.models.nlp.gpt.megatron_gpt_reinforce_actor import MegatronGPTReinforceActorModel
from nemo_aligner.utils.train_utils import set_sync_funcs

from nemo_gift.integrations.nemo_aligner.loss import (
    count_pairs,
    gift_actor_config,
    gift_microbatch_loss,
    minibatch_metrics,
    reduce_metrics,
    token_logprobs,
)
from nemo_gift.integrations.nemo_aligner.rollout import GIFT_BATCH_KEYS, check_whole_groups

__all__ = ["MegatronGPTGiftActorModel"]


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s weights live: the device a micro-batch is moved to.

    A module-level function, not a method: Lightning sets ``self._device`` (a ``torch.device``) on
    every LightningModule, so a method of that name on the actor would be shadowed by it.
    """
    return next(model.parameters()).device


class MegatronGPTGiftActorModel(MegatronGPTReinforceActorModel):
    """NeMo-Aligner actor trained with the GIFT loss (spec Eq. 12); see the module docstring."""

    def __init__(self, cfg, trainer):
        super().__init__(cfg, trainer=trainer)
        self.gift = gift_actor_config(cfg)

    # ---------------------------------------------------------------- log-probs (inference)
    def get_logprob_output_only_func(self, inference_only: bool = True):
        """megatron-core forward step for the rollout and reference log-probs: the micro-batch
        ``[tokens, attention_mask, position_ids]`` (from ``get_inference_log_probs``) through
        the model, then :func:`~.loss.token_logprobs` ([b, S-1], nemo_gift's vocab-parallel kernel)."""
        chunk = self.gift.logprob_chunk_size

        def forward_step(data_iterator, model):
            tokens, attention_mask, position_ids = (t.to(model_device(model)) for t in next(data_iterator))
            logits = model(tokens, position_ids, attention_mask, labels=None)  # [b, S, V/TP] on the last stage

            def collect(logits_shard, non_loss_data=True):
                return token_logprobs(
                    logits_shard, tokens, ps.get_tensor_model_parallel_group(), chunk,
                    inference_only=inference_only, overwrite_logits=True,
                )

            return logits, collect

        return forward_step

    # ---------------------------------------------------------------- training
    def get_actor_forward_output_and_loss_func(self, num_pairs: int = 1, num_microbatches: int = 1):
        """megatron-core forward step of one GIFT micro-batch (:func:`~.loss.gift_microbatch_loss`)."""
        config, chunk = self.gift.loss, self.gift.logprob_chunk_size

        def forward_step(data_iterator, model):
            device = model_device(model)
            batch = {k: v.to(device, non_blocking=True) for k, v in next(data_iterator).items()}
            logits = model(batch["response_tokens"], batch["position_ids"], batch["attention_mask"], labels=None)

            def loss_func(logits_shard):
                return gift_microbatch_loss(
                    logits_shard, batch, config, num_pairs=num_pairs, num_microbatches=num_microbatches,
                    tp_group=ps.get_tensor_model_parallel_group(), chunk_size=chunk,
                )

            return logits, loss_func

        return forward_step

    def get_loss_and_metrics(self, batch: Mapping[str, torch.Tensor], forward_only: bool) -> Tuple[float, Dict[str, Any]]:
        """GIFT loss of this rank's mini-batch, forward and (unless ``forward_only``) backward.

        Returns ``(loss, metrics)`` as floats, identical on every rank: ``gift_loss``'s metrics
        of the mini-batch (``loss.METRIC_KEYS``), averaged over data-parallel ranks.
        """
        missing = [k for k in GIFT_BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"the GIFT actor needs {missing} in its batch; train it with GiftTrainer")
        tokens = batch["response_tokens"]
        num_mb = get_num_microbatches()
        check_whole_groups(batch["group_ids"], num_mb)
        num_pairs = count_pairs(batch["rewards"], batch["group_ids"], self.gift.loss)
        attention_mask, _, position_ids = self.get_ltor_masks_and_position_ids(tokens)
        full = {k: batch[k] for k in GIFT_BATCH_KEYS}
        full.update(attention_mask=attention_mask, position_ids=position_ids)

        set_sync_funcs(self, forward_only)
        reports = get_forward_backward_func()(
            forward_step_func=self.get_actor_forward_output_and_loss_func(num_pairs, num_mb),
            data_iterator=self._make_data_iterator_list(get_iterator_k_split(full, num_mb)),
            model=self.model,
            num_microbatches=num_mb,
            forward_only=forward_only,
            seq_length=tokens.size(1),
            micro_batch_size=tokens.size(0) // num_mb,
        )
        local = minibatch_metrics(reports, full, self.gift.loss, num_pairs) if reports else None
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        metrics = reduce_metrics(local, device)
        return metrics["loss"], metrics
