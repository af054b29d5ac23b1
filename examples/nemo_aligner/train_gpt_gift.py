"""Train a NeMo policy with GIFT through NeMo-Aligner 0.7.0's own REINFORCE trainer.

GIFT (Group-relative Implicit Fine Tuning, arXiv 2510.23868) samples G responses per prompt and
minimizes mean_i (A_i - beta * z_i)^2, the squared error between the group-normalized explicit
reward A (here: NeMo-Aligner's reward-model server) and the group-normalized implicit reward z
(the policy's summed log-ratio to pi_ref). Departures from the paper, all in
``docs/gift-math.md``: a guard on a degenerate implicit std (``model.gift.loss.std_guard``), and
the reference log-probs recomputed by NeMo (not by the rollout engine).

This script is NeMo-Aligner's REINFORCE launcher with two classes swapped in:
``MegatronGPTGiftActorModel`` for the actor and ``GiftTrainer`` for the trainer. Everything else
(rollouts, the reward client, checkpoints, logging) is Aligner's. Rollouts use NeMo's own
generation: Aligner's TensorRT-LLM path is off in the recipe, and why is in docs/nemo-aligner.md.
One step is added before the actor is built (``build.initialize_parallel_state``): megatron-core
0.13 needs its model-parallel groups at model construction.

Launch (inside containers/Dockerfile.aligner, 1 node x 8 GPUs, a reward server already up)::

    python examples/nemo_aligner/train_gpt_gift.py \\
        pretrained_checkpoint.restore_from_path=/models/deepseek-7b-chat.nemo \\
        "model.data.data_prefix={train: [/data/gsm8k_train.jsonl], validation: [/data/gsm8k_test.jsonl], test: [/data/gsm8k_test.jsonl]}" \\
        remote_rm.reward_model.ip=$RM_HOST exp_manager.explicit_log_dir=/results/gift

A Hugging Face checkpoint is converted once first:
``python -m nemo_gift.integrations.nemo_aligner.checkpoint HF_DIR NEMO2_DIR``.
"""

from __future__ import annotations

import torch.multiprocessing as mp
from omegaconf.omegaconf import OmegaConf

from nemo.core.config import hydra_runner
from nemo.utils import logging
from nemo.utils.exp_manager import exp_manager
from nemo_aligner.models.nlp.gpt.reward_critic_clients import RemoteGPTRMClient
from nemo_aligner.utils.distributed import Timer
from nemo_aligner.utils.train_script_utils import (
    CustomLoggerWrapper,
    init_peft,
    resolve_and_create_trainer,
    retrieve_custom_trainer_state_dict,
)

from nemo_gift.integrations.nemo_aligner import build
from nemo_gift.integrations.nemo_aligner.actor import MegatronGPTGiftActorModel
from nemo_gift.integrations.nemo_aligner.checkpoint import merged_model_config, restore_actor
from nemo_gift.integrations.nemo_aligner.loss import gift_actor_config
from nemo_gift.integrations.nemo_aligner.rollout import check_gift_batch_sizes

build.register_resolvers()


def validate(cfg) -> None:
    """Fail before any GPU work: the GIFT block, the KL penalty, and the batch arithmetic."""
    gift_actor_config(cfg.model)
    reinforce = cfg.trainer.reinforce
    if reinforce.initial_policy_kl_penalty != 0:
        raise ValueError("trainer.reinforce.initial_policy_kl_penalty must be 0 for GIFT")
    world = cfg.trainer.num_nodes * cfg.trainer.devices
    dp = world // (cfg.model.tensor_model_parallel_size * cfg.model.pipeline_model_parallel_size)
    check_gift_batch_sizes(reinforce.num_rollouts_per_prompt, cfg.model.global_batch_size, cfg.model.micro_batch_size, dp)
    if cfg.pretrained_checkpoint.restore_from_path is None:
        raise ValueError("pretrained_checkpoint.restore_from_path is required (.nemo, NeMo 1 or NeMo 2 directory)")


def setup(cfg):
    """Trainer, actor (restored from the NeMo checkpoint), data, optimizer: Aligner's steps, through
    ``nemo_gift.integrations.nemo_aligner.build`` (the same wiring the CPU fit test runs)."""
    path = cfg.pretrained_checkpoint.restore_from_path
    cfg.model = merged_model_config(path, cfg.model)
    logging.info(f"\n{OmegaConf.to_yaml(cfg)}")
    trainer = resolve_and_create_trainer(cfg, "reinforce")
    exp_manager(trainer, cfg.exp_manager)
    logger = CustomLoggerWrapper(trainer.loggers)
    build.initialize_parallel_state(trainer, cfg.model)
    actor = restore_actor(MegatronGPTGiftActorModel, cfg.model, trainer, path)
    init_peft(actor, cfg.model)
    build.keep_reference_policy(actor, cfg.model)
    trainer_state = retrieve_custom_trainer_state_dict(trainer) if trainer.ckpt_path is not None else None

    rm = RemoteGPTRMClient(cfg.remote_rm)
    run_timer = Timer(cfg.exp_manager.get("max_time_per_run") if cfg.exp_manager else None)
    gift_trainer = build.build_gift_trainer(cfg, trainer, actor, rm, logger, run_timer=run_timer)
    logger.log_hyperparams(OmegaConf.to_container(cfg))
    if trainer_state is not None:
        gift_trainer.load_state_dict(trainer_state)
    return gift_trainer, rm


def cleanup(rm) -> None:
    """Close the reward client's PyTriton futures (their threads would block exit)."""
    rm.communicator.close()


@hydra_runner(config_path="conf", config_name="gpt_gift_actor")
def main(cfg) -> None:
    validate(cfg)
    gift_trainer, rm = setup(cfg)
    try:
        gift_trainer.fit()
    finally:
        cleanup(rm)


if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    main()
