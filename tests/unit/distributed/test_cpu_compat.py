"""Each CPU patch of megatron-core is still needed, and the patched stack trains.

For every patch, the scenario that needs it runs with that patch switched off
(``NEMO_GIFT_CPU_COMPAT_SKIP``) and must fail where the patch says. When a megatron-core
upgrade makes a patch obsolete, its case here fails and names it.
"""

import re

import pytest
import torch
import torch.distributed as dist

from nemo_gift.distributed import cpu_compat
from nemo_gift.distributed.spawn import RankFailure, run_on_ranks

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU patches are a no-op with CUDA"),
]

SEQ = 8


def _train_step(rank, world_size, tp=1, distributed_optimizer=False):
    """DDP + forward_backward_func + megatron's Adam with grad clipping: one step."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel.schedules import get_forward_backward_func

    from nemo_gift.models.policy import parallel
    from nemo_gift.models.policy.builder import build_gpt_model, wrap_for_training
    from nemo_gift.models.policy.config import ModelConfig, ParallelConfig

    cfg = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, vocab_size=64)
    layout = ParallelConfig(tensor_model_parallel_size=tp, use_distributed_optimizer=distributed_optimizer)
    parallel.initialize(layout, seed=1)
    model = wrap_for_training(build_gpt_model(cfg, layout), layout)
    opt = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-3, clip_grad=1e-3, params_dtype=torch.float32,
                        use_distributed_optimizer=distributed_optimizer),
        [model],
    )
    tokens = torch.randint(0, 64, (2, SEQ), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(SEQ).expand(2, SEQ)
    mask = torch.triu(torch.ones(SEQ, SEQ, dtype=torch.bool), 1).view(1, 1, SEQ, SEQ)

    def forward_step(data_iterator, model):
        next(data_iterator)
        return model(tokens, pos, mask), lambda out: (out.float().pow(2).mean(), {})

    get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter([0]), model=[model], num_microbatches=1,
        seq_length=SEQ, micro_batch_size=2, forward_only=False,
    )
    before = [p.detach().clone() for p in model.parameters()]
    ok, grad_norm, _ = opt.step()
    moved = max((p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before))
    model.offload_grad_buffers(synchronize=True)
    model.restore_grad_buffers(synchronize=True)
    return {"ok": ok, "grad_norm": float(grad_norm), "moved": moved, "applied": cpu_compat.applied()}


def _scatter(rank, world_size):
    """gloo scatter of column chunks (non-contiguous views) of a 4x4 matrix."""
    full = torch.arange(16.0).view(4, 4)
    out = torch.empty(4, 2)
    chunks = list(torch.chunk(full, 2, dim=1)) if rank == 0 else None
    dist.scatter(out, chunks, src=0)
    return torch.equal(out, torch.chunk(full, 2, dim=1)[rank])


def test_patched_stack_trains_at_tp1_and_tp2():
    (single,) = run_on_ranks(_train_step, 1, timeout=120)
    assert single["ok"] and single["grad_norm"] > 0
    # clip_grad=1e-3 is far below the grad norm, so Adam's first step moves each weight by ~lr.
    assert 0.5e-3 < single["moved"] <= 1.01e-3
    assert single["applied"] == [p.name for p in cpu_compat.PATCHES]
    pair = run_on_ranks(_train_step, 2, args=(2,), timeout=120)
    assert pair[0]["grad_norm"] == pytest.approx(pair[1]["grad_norm"], rel=1e-6)
    # DP=2 with megatron-core's DistributedOptimizer: the same global grad norm as DP=1
    sharded = run_on_ranks(_train_step, 2, args=(1, True), timeout=120)
    for res in sharded:
        assert res["ok"] and res["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)
        assert 0.5e-3 < res["moved"] <= 1.01e-3


# patch name -> (ranks, distributed optimizer, a regex the traceback must match)
NEEDED_BY_TRAIN_STEP = {
    "current_device": (1, False, r"torch\.cuda\.current_device\(\)"),
    "rng": (1, False, r"rng_state"),
    "hardcoded_cuda": (1, False, r"cuda"),
    "clip_grad": (1, False, r"clip_grad_by_total_norm_fp32"),
    # torch.cuda's lazy init raises inside the replaced functions. Its message differs by build
    # ("Torch not compiled with CUDA enabled" on a CPU build, "Cannot re-initialize CUDA in
    # forked subprocess" on a CUDA build without a GPU), and which one megatron-core calls
    # first differs by version (0.16: synchronize in offload_grad_buffers; 0.19: current_stream
    # in start_grad_sync), so the frame is matched, not the message.
    "sync_and_streams": (1, False, r'torch/cuda/__init__\.py", line \d+, in (synchronize|current_stream|default_stream)\b'),
    "distributed_optimizer_types": (2, True, r"Wrapped parameters must be one of\s+torch\.cuda\.FloatTensor"),
}


def _distributed_optimizer_resume(rank, world_size, root):
    """One step with the distributed optimizer, a checkpoint, a fresh policy loads it and takes
    one more step: the Adam step counts it then holds."""
    from nemo_gift.models.policy.config import ParallelConfig

    from ._train_ranks import adam_steps, build_policy, train

    layout = ParallelConfig(use_distributed_optimizer=True)
    policy = build_policy(layout, None)
    train(policy, range(1))
    path = policy.save(root, 1, {}, keep_last=1)
    fresh = build_policy(layout, None)
    fresh.load(path)
    train(fresh, range(1, 2))
    return adam_steps(fresh)


# patch name -> a regex of the failure without it
NEEDED_BY_RESUME = {
    "distributed_optimizer_fresh_load": r"in state_dict\n\s+assert len\(steps\) == 1",
    "distributed_optimizer_step_state": r"KeyError: 'step'",
}


def test_distributed_optimizer_resume_patches_are_still_needed(tmp_path):
    # with every patch the resumed step count is 2 (test_reshard.py checks the whole resume)
    for patch, expected in NEEDED_BY_RESUME.items():
        with pytest.raises(RankFailure) as err:
            run_on_ranks(_distributed_optimizer_resume, 1, args=(str(tmp_path / patch),),
                         env={cpu_compat.SKIP_ENV: patch}, timeout=120)
        assert re.search(expected, str(err.value)), f"patch {patch!r} may be obsolete:\n{str(err.value)[-1500:]}"
    # without distributed_optimizer_shared_step, all parameters share one step tensor, which
    # Adam increments once per parameter: the step count runs ahead of 2
    (steps,) = run_on_ranks(_distributed_optimizer_resume, 1, args=(str(tmp_path / "shared"),),
                            env={cpu_compat.SKIP_ENV: "distributed_optimizer_shared_step"}, timeout=120)
    assert steps != [2.0] and max(steps) > 2.0, steps


def test_every_patch_is_covered_here():
    covered = set(NEEDED_BY_TRAIN_STEP) | set(NEEDED_BY_RESUME) | {"distributed_optimizer_shared_step"}
    assert covered | {"gloo_contiguous_scatter"} == {p.name for p in cpu_compat.PATCHES}
    assert all(p.reason and p.needed_on for p in cpu_compat.PATCHES)


@pytest.mark.parametrize("patch", sorted(NEEDED_BY_TRAIN_STEP))
def test_patch_is_still_needed(patch):
    ranks, distributed_optimizer, expected = NEEDED_BY_TRAIN_STEP[patch]
    with pytest.raises(RankFailure) as err:
        run_on_ranks(_train_step, ranks, args=(1, distributed_optimizer), env={cpu_compat.SKIP_ENV: patch}, timeout=120)
    message = str(err.value)
    assert re.search(expected, message), (
        f"patch {patch!r} may be obsolete: without it the step failed elsewhere:\n{message[-1500:]}"
    )


def _sequence_parallel_model(rank, world_size, megatron_local_spec):
    """A TP=2 sequence-parallel GPTModel: megatron-core's own local spec, or the project's."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from nemo_gift.models.policy import parallel
    from nemo_gift.models.policy.builder import build_gpt_model
    from nemo_gift.models.policy.config import ModelConfig, ParallelConfig

    cfg = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, vocab_size=64)
    layout = ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True)
    parallel.initialize(layout, seed=1)
    spec = get_gpt_layer_local_spec(normalization="RMSNorm") if megatron_local_spec else None
    model = build_gpt_model(cfg, layout, spec=spec)
    return sorted(n for n, p in model.named_parameters() if getattr(p, "sequence_parallel", False))


def test_the_project_norm_is_still_needed_for_sequence_parallelism():
    # megatron-core's local spec (WrappedTorchNorm without Apex/TE) refuses sequence parallelism;
    # if this starts passing, builder.RMSNorm can go.
    with pytest.raises(RankFailure, match="sequence parallel not supported by torch LayerNorm"):
        run_on_ranks(_sequence_parallel_model, 2, args=(True,), timeout=120)
    marked = run_on_ranks(_sequence_parallel_model, 2, args=(False,), timeout=120)[0]
    # the input / pre-MLP norms of both layers and the final norm: their grads get all-reduced over TP
    assert marked == sorted(
        [f"decoder.layers.{i}.{n}.weight" for i in range(2) for n in ("input_layernorm", "pre_mlp_layernorm")]
        + ["decoder.final_layernorm.weight"]
    )


def test_gloo_scatter_of_noncontiguous_views_is_wrong_without_the_guard():
    # The torch/gloo bug itself: if this starts passing, the guard can go.
    unguarded = run_on_ranks(_scatter, 2, env={cpu_compat.SKIP_ENV: "gloo_contiguous_scatter"}, timeout=60)
    assert unguarded[1] is False
    assert run_on_ranks(_scatter, 2, timeout=60) == [True, True]


def test_unknown_skip_name_is_refused(monkeypatch):
    monkeypatch.setenv(cpu_compat.SKIP_ENV, "no_such_patch")
    with pytest.raises(ValueError, match="no_such_patch"):
        cpu_compat.apply()


def test_with_cuda_only_the_torch_adam_patches_apply_and_only_without_te(monkeypatch):
    """The three patches of megatron-core's torch-Adam path fix bugs of that path, not of the CPU:
    on an H200 without Transformer Engine a resume failed 'assert len(steps) == 1' until they
    applied there too (scripts/gpu_acceptance.py, policy_cpu_batches_resume)."""
    import dataclasses

    calls = []
    monkeypatch.setattr(cpu_compat, "PATCHES", tuple(
        dataclasses.replace(p, fn=lambda name=p.name: calls.append(name)) for p in cpu_compat.PATCHES))
    monkeypatch.setattr(cpu_compat, "_APPLIED", [])
    monkeypatch.setattr(cpu_compat, "cpu_mode", lambda: False)
    monkeypatch.setattr(cpu_compat, "torch_adam_mode", lambda: False)  # TE or Apex present
    assert cpu_compat.apply() == [] and calls == []
    monkeypatch.setattr(cpu_compat, "torch_adam_mode", lambda: True)  # a GPU without TE/Apex
    torch_adam = ["distributed_optimizer_fresh_load", "distributed_optimizer_step_state",
                  "distributed_optimizer_shared_step"]
    assert cpu_compat.apply() == torch_adam and calls == torch_adam


def test_torch_adam_mode_reads_megatron_cores_choice():
    from megatron.core import optimizer

    assert cpu_compat.torch_adam_mode() == optimizer.Adam.__module__.startswith("torch.")
    assert cpu_compat.torch_adam_mode()  # this machine has neither TE nor Apex
