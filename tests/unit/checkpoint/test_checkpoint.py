"""Checkpoints: exact resume of model, optimizer and RNG; atomic writes; offline unsharding."""

import json
import os

import pytest
import torch

from nemo_gift.distributed.spawn import run_on_ranks
from nemo_gift.models.policy import checkpoint as ckpt

pytestmark = pytest.mark.distributed

SEQ = 8


def _train(model, opt, steps, seed):
    from megatron.core.pipeline_parallel.schedules import get_forward_backward_func

    pos = torch.arange(SEQ).expand(2, SEQ)
    mask = torch.triu(torch.ones(SEQ, SEQ, dtype=torch.bool), 1).view(1, 1, SEQ, SEQ)
    losses = []
    for step in range(steps):
        tokens = torch.randint(0, 64, (2, SEQ), generator=torch.Generator().manual_seed(seed + step))
        noise = torch.rand(())  # consumes the global RNG, so a resume must restore it

        def forward_step(data_iterator, model):
            next(data_iterator)
            out = model(tokens, pos, mask)
            return out, lambda o: ((o.float() * (1 + noise)).pow(2).mean(), {})

        model.zero_grad_buffer()
        opt.zero_grad()
        get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([0]), model=[model], num_microbatches=1,
            seq_length=SEQ, micro_batch_size=2, forward_only=False,
        )
        opt.step()
        losses.append(float(noise))
    return losses


def _build(tp):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from nemo_gift.models.policy import parallel
    from nemo_gift.models.policy.builder import build_gpt_model, wrap_for_training
    from nemo_gift.models.policy.config import ModelConfig, ParallelConfig

    cfg = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, vocab_size=64)
    layout = ParallelConfig(tensor_model_parallel_size=tp)
    parallel.initialize(layout, seed=3)
    model = wrap_for_training(build_gpt_model(cfg, layout), layout)
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-2, params_dtype=torch.float32), [model])
    return model, opt


def _resume_is_exact(rank, world_size, root):
    from nemo_gift.models.policy.sharding import gather_full

    model, opt = _build(tp=world_size)
    _train(model, opt, 2, seed=0)
    path = ckpt.save_checkpoint(root, 2, model, opt, trainer_state={"data_position": 17}, keep_last=2)
    expected_noise = _train(model, opt, 2, seed=2)
    expected = {n: p.detach().clone() for n, p in model.module.named_parameters()}
    full_saved = dict(ckpt.iter_full_tensors(path)) if rank == 0 else None

    model2, opt2 = _build(tp=world_size)  # fresh weights, fresh optimizer, other RNG
    torch.manual_seed(12345)
    meta = ckpt.load_checkpoint(path, model2, opt2)
    noise = _train(model2, opt2, 2, seed=2)
    diff = max((p.detach() - expected[n]).abs().max().item() for n, p in model2.module.named_parameters())

    # the offline unshard equals the in-process gather of the saved weights
    model3, opt3 = _build(tp=world_size)
    ckpt.load_checkpoint(path, model3, opt3)
    gathered = gather_full(model3.module, dict(model3.module.named_parameters()))
    unshard_ok = None
    if rank == 0:
        unshard_ok = sorted(full_saved) == sorted(gathered) and all(
            torch.equal(full_saved[k], gathered[k]) for k in gathered
        )
    return {"diff": diff, "noise_equal": noise == expected_noise, "meta": meta["trainer_state"], "unshard_ok": unshard_ok}


@pytest.mark.parametrize("world_size", [1, 2])
def test_resume_continues_exactly(tmp_path, world_size):
    results = run_on_ranks(_resume_is_exact, world_size, args=(str(tmp_path),), timeout=240)
    for res in results:
        assert res["diff"] == 0.0
        assert res["noise_equal"]
        assert res["meta"] == {"data_position": 17}
    assert results[0]["unshard_ok"]


def _save_many(rank, world_size, root):
    model, opt = _build(tp=1)
    for step in (1, 2, 3):
        ckpt.save_checkpoint(root, step, model, opt, keep_last=2)
    return sorted(os.listdir(root))


def test_keep_last_and_partial_writes_are_ignored(tmp_path):
    (tmp_path / "step_000009.tmp").mkdir()  # a crashed save
    (tmp_path / "step_000008").mkdir()  # a directory without metadata: not complete
    names = run_on_ranks(_save_many, 1, args=(str(tmp_path),), timeout=120)[0]
    assert "step_000009.tmp" not in names
    assert [n for n in names if n.startswith("step_00000") and n != "step_000008"] == ["step_000002", "step_000003"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000003"
    meta = json.loads((tmp_path / "step_000003" / "metadata.json").read_text())
    assert meta["step"] == 3 and meta["format_version"] == ckpt.FORMAT_VERSION
    assert meta["layout"] == {"tp_size": 1, "pp_size": 1, "dp_size": 1, "world_size": 1,
                              "use_distributed_optimizer": False, "padded_vocab_size": 64}
    # the manifest covers every other file, and they are intact
    files = sorted(str(p.relative_to(tmp_path / "step_000003")) for p in (tmp_path / "step_000003").rglob("*") if p.is_file())
    assert sorted(meta["files"]) == [f for f in files if f != "metadata.json"]
    assert "rng/rank0.pt" in meta["files"] and any(f.startswith("dist/") for f in meta["files"])
    ckpt.verify_checkpoint(tmp_path / "step_000003")


def test_not_a_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a complete nemo_gift checkpoint"):
        ckpt.read_metadata(tmp_path)
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None
