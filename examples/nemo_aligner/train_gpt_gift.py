"""Train a NeMo policy with GIFT through NeMo-Aligner 0.7.0's own REINFORCE trainer.

GIFT (Group-relative Implicit Fine Tuning, arXiv 2510.23868) samples G responses per prompt and
minimizes mean_i (A_i - beta * z_i)^2, the squared error between the group-normalized explicit
reward A (here: NeMo-Aligner's reward-model server) and the group-normalized implicit reward z
(the policy's summed log-ratio to pi_ref). Departures from the paper, all in
``docs/gift-math.md``: a guard on a degenerate implicit std (``model.gift.loss.std_guard``), and
the reference log-probs recomputed by NeMo (not by the rollout engine).

This script is NeMo-Aligner's REINFORCE launcher with two classes swapped in:
``MegatronGPTGiftActorModel`` for the actor and ``GiftTrainer`` for the trainer. Everything else
(rollouts with TensorRT-LLM and refit, the reward client, checkpoints, logging) is Aligner's.

Launch (inside containers/Dockerfile.aligner, 1 node x 8 GPUs, a reward server already up)::

    python examples/nemo_aligner/train_gpt_gift.py \\
        pretrained_checkpoint.restore_from_path=/models/deepseek-7b-chat.nemo \\
        "model.data.data_prefix={train: [/data/gsm8k_train.jsonl], validation: [/data/gsm8k_test.jsonl], test: [/data/gsm8k_test.jsonl]}" \\
        remote_rm.reward_model.ip=$RM_HOST exp_manager.explicit_log_dir=/results/gift

A Hugging Face checkpoint is converted once first:
``python -m nemo_gift.integrations.nemo_aligner.checkpoint HF_DIR NEMO2_DIR``.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.multiprocessing as mp
from megatron.core.utils import divide
from omegaconf.omegaconf import OmegaConf

from nemo.core.config import hydra_runner
from nemo.utils import logging
from nemo.utils.exp_manager import exp_manager
from nemo_aligner.data.nlp.builders import (
    build_dataloader,
    build_train_valid_test_rlhf_datasets,
    collate_with_pad_to_max_batch,
)
from nemo_aligner.models.nlp.gpt.reward_critic_clients import RemoteGPTRMClient
from nemo_aligner.utils import parallel_state
from nemo_aligner.utils.batch_iterators import get_batch_iterator_cls
from nemo_aligner.utils.distributed import Timer
from nemo_aligner.utils.train_script_utils import (
    CustomLoggerWrapper,
    add_custom_checkpoint_callback,
    extract_optimizer_scheduler_from_ptl_model,
    init_distributed,
    init_peft,
    init_using_ptl,
    resolve_and_create_trainer,
    retrieve_custom_trainer_state_dict,
)
from nemo_aligner.utils.utils import retrieve_model_state_dict_in_cpu

from nemo_gift.algorithms.config import ImplicitBaseline
from nemo_gift.integrations.nemo_aligner.actor import MegatronGPTGiftActorModel
from nemo_gift.integrations.nemo_aligner.checkpoint import merged_model_config, restore_actor
from nemo_gift.integrations.nemo_aligner.loss import gift_actor_config
from nemo_gift.integrations.nemo_aligner.rollout import check_gift_batch_sizes
from nemo_gift.integrations.nemo_aligner.trainer import GiftTrainer

OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)
OmegaConf.register_new_resolver("subtract", lambda x, y: x - y, replace=True)


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
    """Trainer, actor (restored from the NeMo checkpoint), data, optimizer: Aligner's steps."""
    path = cfg.pretrained_checkpoint.restore_from_path
    cfg.model = merged_model_config(path, cfg.model)
    logging.info(f"\n{OmegaConf.to_yaml(cfg)}")
    trainer = resolve_and_create_trainer(cfg, "reinforce")
    exp_manager(trainer, cfg.exp_manager)
    logger = CustomLoggerWrapper(trainer.loggers)
    actor = restore_actor(MegatronGPTGiftActorModel, cfg.model, trainer, path)
    init_peft(actor, cfg.model)
    # pi_ref for the implicit reward: a CPU copy of the initial weights (PEFT runs use the
    # adapter-free base model instead, as Aligner's actors do).
    needs_reference = actor.gift.loss.implicit_baseline is ImplicitBaseline.REFERENCE
    if needs_reference and cfg.model.peft.peft_scheme == "none":
        actor.init_policy_state_dict = retrieve_model_state_dict_in_cpu(
            actor, megatron_amp_O2=cfg.model.get("megatron_amp_O2", False)
        )

    trainer_state = retrieve_custom_trainer_state_dict(trainer) if trainer.ckpt_path is not None else None
    init_distributed(trainer, actor, cfg.model.get("transformer_engine", False))

    train_ds, validation_ds, _ = build_train_valid_test_rlhf_datasets(
        cfg=cfg.model,
        data_prefix=cfg.model.data.data_prefix,
        data_impl=cfg.model.data.data_impl,
        splits_string=cfg.model.data.splits_string,
        train_valid_test_num_samples=[-1, -1, -1],
        seq_length=cfg.model.data.seq_length,
        seed=cfg.model.seed,
        tokenizer=actor.tokenizer,
    )
    collate_fn = collate_with_pad_to_max_batch(
        cfg.model.reinforce.length_params.max_length, actor.tokenizer.eos_id, cfg, generate_masks_and_position_ids=False
    )
    loader = partial(build_dataloader, cfg=cfg, collate_fn=collate_fn, load_gbs=False)
    train_loader = partial(
        loader, dataset=train_ds, mbs=cfg.model.reinforce.rollout_micro_batch_size, gbs=cfg.model.reinforce.num_rollout_samples
    )
    val_loader = partial(
        loader, dataset=validation_ds, mbs=cfg.model.reinforce.val_rollout_micro_batch_size,
        gbs=cfg.model.reinforce.num_val_samples, use_random_sampler=False,
    )

    # NeMo sizes its optimizer schedule from a train dataloader; give it one of GBS/DP rows.
    dummy = torch.utils.data.DataLoader(
        dataset=train_ds, batch_size=divide(cfg.model.global_batch_size, parallel_state.get_data_parallel_world_size())
    )
    init_using_ptl(trainer, actor, dummy, train_ds)
    del actor._train_dl

    optimizer, scheduler = extract_optimizer_scheduler_from_ptl_model(actor)
    ckpt_callback = add_custom_checkpoint_callback(trainer, actor)
    logger.log_hyperparams(OmegaConf.to_container(cfg))
    rm = RemoteGPTRMClient(cfg.remote_rm)
    gift_trainer = GiftTrainer(
        cfg=cfg.trainer.reinforce,
        model=actor,
        optimizer=optimizer,
        scheduler=scheduler,
        train_dataloader_builder=train_loader,
        val_dataloader_builder=val_loader,
        collate_fn=collate_fn,
        rm=rm,
        batch_iterator_cls=get_batch_iterator_cls(cfg.trainer.reinforce.get("batch_iterator", {})),
        logger=logger,
        ckpt_callback=ckpt_callback,
        run_timer=Timer(cfg.exp_manager.get("max_time_per_run") if cfg.exp_manager else None),
    )
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
