"""NeMo-Aligner's REINFORCE trainer, feeding the GIFT actor.

:class:`GiftTrainer` is Aligner's ``ReinforceTrainer`` (``nemo_aligner/algorithms/reinforce.py``)
with one hook replaced: ``generate_reinforce_data``, which turns a rollout batch into training
data. Rollouts (G per prompt, ``num_rollouts_per_prompt``), reward-model calls, the log-prob
passes, TRT-LLM refit, mini-batching, the optimizer step, validation, checkpointing and logging
are Aligner's loop, untouched.

What it changes, and why:
- the reference log-probs are computed whenever the implicit reward needs them
  (``model.gift.loss.implicit_baseline: reference``), not only when a KL penalty is set;
- the reward is the explicit reward r as the reward model returns it: GIFT has no KL penalty in
  the reward (the KL is implicit in z), so ``initial_policy_kl_penalty`` must be 0;
- the rows are regrouped so that each prompt's G responses are contiguous
  (:func:`.rollout.build_gift_rollout_data`), and the batch sizes are checked at start-up so
  that every mini-batch and micro-batch holds whole groups.
"""

from __future__ import annotations

from nemo_aligner.algorithms.reinforce import ReinforceTrainer
from nemo_aligner.utils import parallel_state

from nemo_gift.algorithms.config import ImplicitBaseline, validate_group_size
from nemo_gift.integrations.nemo_aligner.rollout import build_gift_rollout_data, check_gift_batch_sizes

__all__ = ["GiftTrainer"]


class GiftTrainer(ReinforceTrainer):
    """Aligner's REINFORCE loop with GIFT's training data; same constructor arguments."""

    def __init__(self, cfg, model, *args, **kwargs):
        # Checked before Aligner's constructor builds its dataloaders.
        if cfg.initial_policy_kl_penalty != 0:
            raise ValueError(
                f"trainer.reinforce.initial_policy_kl_penalty={cfg.initial_policy_kl_penalty}: GIFT keeps the "
                "explicit reward unpenalized (its KL term is the implicit reward); set it to 0"
            )
        group_size = validate_group_size(cfg.num_rollouts_per_prompt, "num_rollouts_per_prompt")
        check_gift_batch_sizes(group_size, cfg.model_gbs, cfg.model_mbs, parallel_state.get_data_parallel_world_size())
        super().__init__(cfg, model, *args, **kwargs)
        self.group_size = group_size
        self.implicit_baseline = model.gift.loss.implicit_baseline
        # Aligner computes init_logprobs (pi_ref) only when this flag is set.
        self.compute_init_policy_kl = self.implicit_baseline is ImplicitBaseline.REFERENCE

    def generate_reinforce_data(self, rollout_batch):
        """GIFT training data and rollout metrics from one global rollout batch."""
        data, metrics = build_gift_rollout_data(
            rollout_batch, self.group_size, self.implicit_baseline, eps=self.model.gift.loss.eps
        )
        # Every DP rank holds the whole rollout batch here (Aligner 0.7.0's REINFORCE ``chunk``
        # keeps all rows), so whole groups are present and the metrics are already global.
        return data, metrics
