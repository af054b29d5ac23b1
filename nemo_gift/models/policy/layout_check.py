"""Check that parallel layouts reproduce the unsplit model: same logits, loss and gradients.

For fixed weights (those of the TP=1/PP=1 model), every ``(TP, PP)`` layout must give the
TP=1 logits, token-mean cross-entropy and gradients, through megatron-core's
``forward_backward_func`` with several micro-batches and the DDP grad finalization. Used by
the tests (which assert) and ``python -m nemo_gift.doctor`` (which prints the figures).

Run :func:`compare_layouts` on ``world_size`` ranks, e.g. through
:func:`nemo_gift.distributed.spawn.run_on_ranks`; each ``TP * PP`` must divide the world size.
"""

from __future__ import annotations

from functools import partial

import torch

from nemo_gift.models.policy.config import ModelConfig, ParallelConfig

SEQ, MICRO_BATCH, NUM_MICRO = 16, 2, 2


def default_model() -> ModelConfig:
    """GQA, QKV bias and q/k norms together: the parts whose sharding is easiest to get wrong."""
    return ModelConfig(
        arch="qwen2", num_layers=4, hidden_size=64, ffn_hidden_size=96, num_attention_heads=4,
        num_query_groups=2, vocab_size=128, max_position_embeddings=SEQ, add_qkv_bias=True,
        qk_layernorm=True,
    )


def _batch(vocab: int):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (NUM_MICRO * MICRO_BATCH, SEQ), generator=g)
    return tokens, torch.roll(tokens, -1, dims=1)


def _forward_backward(model, tokens, labels):
    """Token-mean CE over all micro-batches. Returns (logits [B, S, V], loss) on the last
    pipeline stage, (None, None) elsewhere."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.pipeline_parallel.schedules import get_forward_backward_func

    pos = torch.arange(SEQ).unsqueeze(0).expand(MICRO_BATCH, SEQ)
    mask = torch.triu(torch.ones(SEQ, SEQ, dtype=torch.bool), 1).view(1, 1, SEQ, SEQ)
    micro = [
        (tokens[i * MICRO_BATCH:(i + 1) * MICRO_BATCH], labels[i * MICRO_BATCH:(i + 1) * MICRO_BATCH])
        for i in range(NUM_MICRO)
    ]

    def loss_func(mb_labels, logits):  # logits: [b, s, V/TP]
        ce = tensor_parallel.vocab_parallel_cross_entropy(
            logits.transpose(0, 1).contiguous(), mb_labels.transpose(0, 1).contiguous()
        )  # [s, b]
        loss = ce.mean()
        full_logits = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
        return loss, {"loss": loss.detach().clone(), "logits": full_logits.detach().clone()}

    def forward_step(data_iterator, model):
        mb_tokens, mb_labels = next(data_iterator)
        return model(mb_tokens, pos, mask), partial(loss_func, mb_labels)

    out = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(micro), model=[model],
        num_microbatches=NUM_MICRO, seq_length=SEQ, micro_batch_size=MICRO_BATCH, forward_only=False,
    )
    if not ps.is_pipeline_last_stage():
        return None, None
    return torch.cat([o["logits"] for o in out]), torch.stack([o["loss"] for o in out]).mean()


def compare_layouts(rank: int, world_size: int, layouts, model_cfg: ModelConfig | None = None) -> dict:
    """On this rank: build the TP=1/PP=1 reference, then each ``(tp, pp)`` in ``layouts`` with the
    reference's weights loaded, and compare.

    Returns ``{"ref_loss": float, "layouts": {(tp, pp): {"last_stage", "max_grad_diff",
    "worst_param", "grad_names_match", and on the last stage "max_logit_diff", "loss_diff"}}}``.
    """
    from megatron.core import parallel_state as ps

    from nemo_gift.models.policy import parallel
    from nemo_gift.models.policy import sharding
    from nemo_gift.models.policy.builder import build_gpt_model, wrap_for_training

    cfg = model_cfg or default_model()
    tokens, labels = _batch(cfg.vocab_size)

    ref_layout = ParallelConfig()
    parallel.initialize(ref_layout, seed=7)
    ref = build_gpt_model(cfg, ref_layout)
    full_state = {n: p.detach().clone() for n, p in ref.named_parameters()}
    ref_ddp = wrap_for_training(ref, ref_layout)
    ref_logits, ref_loss = _forward_backward(ref_ddp, tokens, labels)
    ref_grads = {n: p.main_grad.clone() for n, p in ref.named_parameters()}

    report = {}
    for tp, pp in layouts:
        layout = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
        parallel.initialize(layout, seed=99)  # another seed: the weights must come from the load
        model = build_gpt_model(cfg, layout)
        sharding.load_full_state(model, full_state)
        logits, loss = _forward_backward(wrap_for_training(model, layout), tokens, labels)
        grads = sharding.gather_full(model, {n: p.main_grad for n, p in model.named_parameters()})
        diffs = {k: (grads[k] - ref_grads[k]).abs().max().item() for k in grads if k in ref_grads}
        worst = max(diffs, key=diffs.get)
        entry = {
            "grad_names_match": sorted(grads) == sorted(ref_grads),
            "max_grad_diff": diffs[worst],
            "worst_param": worst,
            "last_stage": ps.is_pipeline_last_stage(),
        }
        if entry["last_stage"]:
            entry["max_logit_diff"] = (logits - ref_logits).abs().max().item()
            entry["loss_diff"] = abs(loss.item() - ref_loss.item())
        report[(tp, pp)] = entry
    return {"ref_loss": ref_loss.item(), "layouts": report}
