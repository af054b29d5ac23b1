"""Rank functions for the NeMo-Aligner actor tests (run through ``run_on_ranks``).

Kept apart from the test module so that a spawned rank imports NeMo only inside the function.

The actor under test is the real :class:`MegatronGPTGiftActorModel` class with its real methods
(and the inherited Aligner and NeMo ones they call), but built with ``__new__`` instead of
NeMo's ``MegatronGPTModel.__init__``: that constructor needs a Lightning trainer with NeMo's
``NLPDDPStrategy``, builds the model through NeMo's model provider and touches CUDA. The
smallest honest stand-in is used for exactly what it would have built: ``actor.model`` is a real
megatron-core ``GPTModel`` (nemo_gift's builder, local layer spec, TP over gloo), ``actor.cfg``
holds the keys the called methods read, and the attributes NeMo's constructor sets to
"no distributed Adam, no AMP O2, no PEFT" are set to those values.
"""

from __future__ import annotations

import torch

G = 4  # responses per prompt
PROMPTS = 4
MBS = 8  # rows per micro-batch: two whole groups
VOCAB = 128


def _tiny_gpt(tp: int):
    from nemo_gift.models.policy.parallel import initialize
    from nemo_gift.models.policy.builder import build_gpt_model
    from nemo_gift.models.policy.config import ModelConfig, ParallelConfig

    parallel = ParallelConfig(tensor_model_parallel_size=tp)
    model_cfg = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, vocab_size=VOCAB)
    initialize(parallel, seed=1234)
    return build_gpt_model(model_cfg, parallel)


def _make_actor(model, gift_cfg, eos_id: int = 0):
    from omegaconf import OmegaConf

    from tests.unit.integrations import _aligner_shims

    _aligner_shims.install()
    from nemo_gift.integrations.nemo_aligner.actor import MegatronGPTGiftActorModel
    from nemo_gift.integrations.nemo_aligner.loss import gift_actor_config

    actor = MegatronGPTGiftActorModel.__new__(MegatronGPTGiftActorModel)
    torch.nn.Module.__init__(actor)
    actor._cfg = OmegaConf.create(
        {
            "micro_batch_size": MBS,
            "data": {"reset_position_ids": False, "reset_attention_mask": False},
            "optim": {"name": "fused_adam"},
            "gift": gift_cfg,
        }
    )
    actor.model = model
    actor.tokenizer = type("Tok", (), {"eos_id": eos_id})()
    actor.gift = gift_actor_config(actor._cfg)
    actor.forward_micro_batch_size = MBS
    actor.with_distributed_adam = False
    actor.use_mcore_dist_optim = False
    actor.megatron_amp_O2 = False
    actor.use_peft = False
    actor.init_policy_state_dict = None
    return actor


def aligner_style_rollout(seed: int = 0):
    """An Aligner rollout batch (keys as ``ReinforceTrainer._run_inference`` builds them) with
    tokens inside the tiny vocabulary; G consecutive rollouts of each prompt micro-batch."""
    from tests.unit.integrations.test_aligner_rollout import aligner_rollout

    rb = aligner_rollout(num_prompts=PROMPTS, group_size=G, mbs=2, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    n = rb["rewards"].shape[0]
    rb["rewards"] = torch.randn(n, generator=g)
    width = rb["prompt_tokens"].shape[1]
    keyed = torch.where(torch.arange(width) < rb["prompt_lengths"][:, None], rb["prompt_tokens"], -1)
    first = (keyed == keyed[0]).all(1)  # the G rows of the first prompt
    second = (keyed == keyed[1]).all(1)
    rb["rewards"][first] = torch.tensor([1.0, 0.0, 1.0, 0.0])  # a binary, verifier-like group
    rb["rewards"][second] = 1.0  # all right: a zero-std group
    return rb


def _full_logprobs(model, tokens):
    """Reference: one forward of the whole batch, the vocabulary gathered over TP, torch's
    log_softmax. [n, S-1], differentiable."""
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    s = tokens.shape[1]
    pos = torch.arange(s).unsqueeze(0).expand_as(tokens)
    causal = torch.triu(torch.ones(s, s, dtype=torch.bool), 1).view(1, 1, s, s)
    logits = gather_from_tensor_model_parallel_region(model(tokens, pos, causal))  # [n, S, V]
    lp = torch.log_softmax(logits.double(), dim=-1)
    return lp[:, :-1].gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def actor_matches_nemo_gift(rank: int, world_size: int, cases: list) -> list:
    """For each GIFT config: the actor's ``get_loss_and_metrics`` (forward+backward, then
    forward-only) against nemo_gift's ``gift_loss`` on the same batch, plus the gradients."""
    from megatron.core.num_microbatches_calculator import (
        destroy_num_microbatches_calculator,
        init_num_microbatches_calculator,
    )

    from nemo_gift.algorithms import GiftLossConfig, gift_loss
    from nemo_gift.integrations.nemo_aligner.loss import METRIC_KEYS
    from nemo_gift.integrations.nemo_aligner.rollout import build_gift_rollout_data

    model = _tiny_gpt(tp=world_size)
    rb = aligner_style_rollout()
    n = rb["rewards"].shape[0]
    init_num_microbatches_calculator(rank, None, n, MBS, 1)
    out = []
    try:
        for gift_cfg in cases:
            actor = _make_actor(model, gift_cfg)
            loss_cfg = actor.gift.loss
            assert isinstance(loss_cfg, GiftLossConfig)
            data, _ = build_gift_rollout_data(rb, G, loss_cfg.implicit_baseline)
            model.zero_grad(set_to_none=True)
            loss, metrics = actor.get_loss_and_metrics(dict(data), forward_only=False)
            actor_grads = _grads(model)
            fwd_loss, fwd_metrics = actor.get_loss_and_metrics(dict(data), forward_only=True)
            assert _grads(model).keys() == actor_grads.keys()  # forward-only added nothing
            assert all(torch.equal(_grads(model)[k], v) for k, v in actor_grads.items())

            model.zero_grad(set_to_none=True)
            lp = _full_logprobs(model, data["response_tokens"])
            ref_loss, ref_metrics = gift_loss(
                lp, data["baseline_logprobs"].double(), data["mask"], data["rewards"].double(), G, loss_cfg
            )
            ref_loss.backward()
            ref_grads = _grads(model)
            out.append(
                {
                    "loss": loss,
                    "metrics": metrics,
                    "forward_only": (fwd_loss, fwd_metrics),
                    "ref": {k: float(ref_metrics[k]) for k in METRIC_KEYS},
                    "grad_max_abs_diff": max(float((actor_grads[k] - ref_grads[k]).abs().max()) for k in ref_grads),
                    "grad_max_abs": max(float(g.abs().max()) for g in ref_grads.values()),
                    "same_grad_keys": actor_grads.keys() == ref_grads.keys(),
                }
            )
    finally:
        destroy_num_microbatches_calculator()
    return out


def actor_logprobs_match(rank: int, world_size: int) -> dict:
    """The inherited ``get_inference_log_probs`` / ``get_init_policy_logprobs`` (Aligner's code,
    calling the actor's nemo_gift log-prob step) against the reference log-probs, before and
    after the weights move."""
    from nemo_aligner.utils.utils import retrieve_model_state_dict_in_cpu  # noqa: F401  (after shims)

    model = _tiny_gpt(tp=world_size)
    actor = _make_actor(model, {})
    rb = aligner_style_rollout()
    tokens = rb["response_tokens"]
    with torch.no_grad():
        ref = _full_logprobs(model, tokens)
    from nemo_aligner.utils.utils import retrieve_model_state_dict_in_cpu

    actor.init_policy_state_dict = retrieve_model_state_dict_in_cpu(actor, megatron_amp_O2=False)
    rollout = actor.get_inference_log_probs(tokens)
    with torch.no_grad():  # the policy moves away from the reference
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
        moved = _full_logprobs(model, tokens)
    init = actor.get_init_policy_logprobs(tokens)
    after = actor.get_inference_log_probs(tokens)
    return {
        "rollout_vs_ref": float((rollout.double() - ref).abs().max()),
        "init_vs_ref": float((init.double() - ref).abs().max()),
        "after_vs_moved": float((after.double() - moved).abs().max()),
        "moved_vs_ref": float((moved - ref).abs().max()),
        "shape": tuple(rollout.shape),
    }
