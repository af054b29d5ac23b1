"""Building a GIFT run from an Aligner recipe: NeMo-Aligner's train-script steps as functions.

``examples/nemo_aligner/train_gpt_gift.py`` (a restored checkpoint, the PyTriton reward client)
and ``tests/unit/integrations/test_aligner_fit.py`` (a random tiny model, a local reward scorer)
build their run with these, so the test runs the example's own wiring:

1. :func:`register_resolvers`, then the Lightning trainer (Aligner's ``resolve_and_create_trainer``);
2. :func:`initialize_parallel_state`, before the actor is built;
3. the actor (restored, or built from the config), then :func:`keep_reference_policy`;
4. :func:`build_gift_trainer`: Aligner's ``init_distributed``, the RLHF datasets and loaders, NeMo's
   optimizer set-up (``init_using_ptl``), and :class:`~.trainer.GiftTrainer`.

Step 2 is this project's addition to Aligner's script: megatron-core 0.13 (the release NeMo 2.4.1
was built against) reads the tensor-parallel group while it builds the embedding and layers, but
NeMo 2.4.1's ``MegatronBaseModel.__init__`` only records the parallel sizes (``AppState``) and
leaves the groups to Lightning's set-up, which Aligner's scripts run after the model is built. So
the model-parallel state is brought up first, through NeMo's own functions, on GPUs as on CPU.
"""

from __future__ import annotations

from functools import partial

import torch
from omegaconf import OmegaConf

from nemo_gift.algorithms.config import ImplicitBaseline

__all__ = ["register_resolvers", "initialize_parallel_state", "keep_reference_policy", "build_gift_trainer"]


def register_resolvers() -> None:
    """The OmegaConf resolvers Aligner's recipes use (``multiply``, ``int_div``, ``subtract``)."""
    for name, fn in {
        "multiply": lambda x, y: x * y,
        "int_div": lambda x, y: x // y,
        "subtract": lambda x, y: x - y,
    }.items():
        OmegaConf.register_new_resolver(name, fn, replace=True)


def initialize_parallel_state(ptl_trainer, model_cfg) -> None:
    """torch.distributed and megatron-core's model-parallel groups, before the actor is built.

    NeMo's ``initialize_model_parallel_for_nemo`` records the sizes and ranks (as the model's
    constructor will again), then the strategy's ``setup_environment`` joins the process group and
    creates the groups (``NLPDDPStrategy.setup_distributed``), as NeMo's checkpoint restore does
    for distributed checkpoints. Later calls find both initialized and keep them.
    """
    from megatron.core import parallel_state

    from nemo.collections.nlp.modules.common.megatron.megatron_init import initialize_model_parallel_for_nemo

    if parallel_state.model_parallel_is_initialized():
        return
    initialize_model_parallel_for_nemo(
        world_size=ptl_trainer.world_size,
        global_rank=ptl_trainer.global_rank,
        local_rank=ptl_trainer.local_rank,
        tensor_model_parallel_size=model_cfg.get("tensor_model_parallel_size", 1),
        expert_model_parallel_size=model_cfg.get("expert_model_parallel_size", 1),
        pipeline_model_parallel_size=model_cfg.get("pipeline_model_parallel_size", 1),
        context_parallel_size=model_cfg.get("context_parallel_size", 1),
        micro_batch_size=model_cfg.get("micro_batch_size"),
        global_batch_size=model_cfg.get("global_batch_size"),
        seed=model_cfg.get("seed", 1234),
    )
    if ptl_trainer.strategy.launcher is not None:
        ptl_trainer.strategy.launcher.launch(lambda: None, trainer=ptl_trainer)
    ptl_trainer.strategy.setup_environment()


def keep_reference_policy(actor, model_cfg) -> None:
    """pi_ref for ``implicit_baseline: reference``: a CPU copy of the initial weights (Aligner's
    ``init_policy_state_dict``). PEFT runs use the adapter-free base model instead, as Aligner's
    actors do; the ``old_policy`` baseline needs no copy."""
    from nemo_aligner.utils.utils import retrieve_model_state_dict_in_cpu

    peft = model_cfg.get("peft", None)
    uses_peft = peft is not None and peft.get("peft_scheme", "none") != "none"
    if actor.gift.loss.implicit_baseline is ImplicitBaseline.REFERENCE and not uses_peft:
        actor.init_policy_state_dict = retrieve_model_state_dict_in_cpu(
            actor, megatron_amp_O2=model_cfg.get("megatron_amp_O2", False)
        )


def build_gift_trainer(cfg, ptl_trainer, actor, rm, logger, run_timer=None):
    """:class:`~.trainer.GiftTrainer` over ``actor``, as Aligner's REINFORCE script builds its trainer.

    Args:
        cfg: the whole recipe (``trainer``, ``model``, ``exp_manager``), resolved.
        ptl_trainer: the Lightning trainer.
        actor: the GIFT actor, built after :func:`initialize_parallel_state`.
        rm: the reward client: ``infer_rm(rollout_batch)`` returning a future whose ``result()`` is
            the rewards [B, 1] (Aligner's ``RemoteGPTRMClient`` contract).
        logger: ``log_metrics(metrics, step, prefix)``, ``log_table(key, dataframe, step)`` and
            ``finalize()`` (Aligner's ``CustomLoggerWrapper``).
        run_timer: Aligner's ``Timer`` (None: no time limit).
    """
    from megatron.core.utils import divide

    from nemo_aligner.data.nlp.builders import (
        build_dataloader,
        build_train_valid_test_rlhf_datasets,
        collate_with_pad_to_max_batch,
    )
    from nemo_aligner.utils import parallel_state
    from nemo_aligner.utils.batch_iterators import get_batch_iterator_cls
    from nemo_aligner.utils.distributed import Timer
    from nemo_aligner.utils.train_script_utils import (
        add_custom_checkpoint_callback,
        extract_optimizer_scheduler_from_ptl_model,
        init_distributed,
        init_using_ptl,
    )

    from nemo_gift.integrations.nemo_aligner.trainer import GiftTrainer

    init_distributed(ptl_trainer, actor, cfg.model.get("transformer_engine", False))
    data = cfg.model.data
    train_ds, validation_ds, _ = build_train_valid_test_rlhf_datasets(
        cfg=cfg.model,
        data_prefix=data.data_prefix,
        data_impl=data.data_impl,
        splits_string=data.splits_string,
        train_valid_test_num_samples=[-1, -1, -1],
        seq_length=data.seq_length,
        seed=cfg.model.seed,
        tokenizer=actor.tokenizer,
    )
    reinforce = cfg.model.reinforce
    collate_fn = collate_with_pad_to_max_batch(
        reinforce.length_params.max_length, actor.tokenizer.eos_id, cfg, generate_masks_and_position_ids=False
    )
    loader = partial(build_dataloader, cfg=cfg, collate_fn=collate_fn, load_gbs=False)
    train_loader = partial(loader, dataset=train_ds, mbs=reinforce.rollout_micro_batch_size, gbs=reinforce.num_rollout_samples)
    val_loader = partial(
        loader, dataset=validation_ds, mbs=reinforce.val_rollout_micro_batch_size, gbs=reinforce.num_val_samples,
        use_random_sampler=False,
    )

    # NeMo sizes its optimizer schedule from a train dataloader; give it one of GBS/DP rows.
    dummy = torch.utils.data.DataLoader(
        dataset=train_ds, batch_size=divide(cfg.model.global_batch_size, parallel_state.get_data_parallel_world_size())
    )
    init_using_ptl(ptl_trainer, actor, dummy, train_ds)
    del actor._train_dl
    optimizer, scheduler = extract_optimizer_scheduler_from_ptl_model(actor)
    return GiftTrainer(
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
        ckpt_callback=add_custom_checkpoint_callback(ptl_trainer, actor),
        run_timer=run_timer if run_timer is not None else Timer(None),
    )
