"""``vocab_parallel_logprobs``: exact against megatron-core and full-vocab log_softmax, chunking
that changes nothing but memory, bf16 with fp32 accumulation, and nothing saved for inference.

TP=2 checks run in one spawn of 2 gloo ranks; memory and autograd checks run in-process
(``tp_group=None`` is TP=1, the same code without collectives).
"""

import pytest
import torch
import torch.distributed as dist

from nemo_gift.distributed.logprobs import vocab_parallel_logprobs
from nemo_gift.distributed.spawn import run_on_ranks
from nemo_gift.utils.torch_utils import peak_cpu_bytes

B, T, V = 3, 11, 64  # R = 33 rows; each TP=2 rank owns 32 token ids
CHUNKS = [1, 4, 7, 32, 33, 1000]
BF16_U = 2.0**-8  # unit roundoff of bfloat16


def _data():
    g = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(B, T, V, generator=g)  # [B, T, V]; |log p| up to ~12
    y = torch.randint(0, V, (B, T), generator=g)
    y[0, :4] = torch.tensor([0, V // 2 - 1, V // 2, V - 1])  # both sides of the shard boundary
    grad = torch.randn(B, T, generator=g)
    return x, y, grad


def _full_reference(x, y, grad, dtype=torch.float64):
    """log_softmax over the whole vocabulary on one rank, and its gradient, in ``dtype``."""
    xf = x.to(dtype).requires_grad_()
    lp = torch.log_softmax(xf, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    lp.backward(grad.to(dtype))
    return lp.detach(), xf.grad


def _ours(shard, y, grad, group, **kw):
    leaf = shard.clone().requires_grad_()
    lp = vocab_parallel_logprobs(leaf * 1.0, y, group, **kw)  # a non-leaf input, as from a model
    lp.backward(grad)
    return lp.detach(), leaf.grad


def _tp2_checks(rank, world_size):
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    from nemo_gift.models.policy import parallel
    from nemo_gift.models.policy.config import ParallelConfig

    parallel.initialize(ParallelConfig(tensor_model_parallel_size=2))
    group = ps.get_tensor_model_parallel_group()
    x, y, grad = _data()
    shard = torch.chunk(x, 2, dim=-1)[rank].contiguous()  # [B, T, V/2]
    ref_lp, ref_grad = _full_reference(x, y, grad)
    ref_grad = torch.chunk(ref_grad, 2, dim=-1)[rank]
    out = {}

    lp, g = _ours(shard, y, grad, group)
    mcore = -tensor_parallel.vocab_parallel_cross_entropy(shard.clone(), y)  # it overwrites its input
    out["vs_mcore"] = (lp - mcore).abs().max().item()
    out["vs_full"] = ((lp.double() - ref_lp).abs() / ref_lp.abs().clamp_min(1)).max().item()  # relative
    out["grad_vs_full"] = (g.double() - ref_grad).abs().max().item()
    out["lp"] = lp
    out["grad_scale"] = grad.abs().max().item()  # d logp / dx is bounded by the upstream gradient
    mc_leaf = shard.clone().requires_grad_()
    (-tensor_parallel.vocab_parallel_cross_entropy(mc_leaf * 1.0, y)).backward(grad)
    out["grad_vs_mcore"] = (g - mc_leaf.grad).abs().max().item()

    out["chunk_lp"], out["chunk_grad"] = 0.0, 0.0
    for chunk in CHUNKS:
        for overwrite in (False, True):
            c_lp, c_g = _ours(shard, y, grad, group, chunk_size=chunk, overwrite_logits=overwrite)
            out["chunk_lp"] = max(out["chunk_lp"], (c_lp - lp).abs().max().item())
            out["chunk_grad"] = max(out["chunk_grad"], (c_g - g).abs().max().item())
    o_lp, o_g = _ours(shard, y, grad, group, overwrite_logits=True)
    out["overwrite"] = max((o_lp - lp).abs().max().item(), (o_g - g).abs().max().item())
    inf = [vocab_parallel_logprobs(shard.clone().requires_grad_(), y, group, c, inference_only=True) for c in (None, 5)]
    out["inference"] = max((i - lp).abs().max().item() for i in inf)
    out["inference_graph"] = any(i.requires_grad or i.grad_fn is not None for i in inf)

    # bf16 logits: fp32 accumulation is exact up to fp32 rounding on the bf16 values...
    xb = x.to(torch.bfloat16)
    ref_b_lp, ref_b_grad = _full_reference(xb, y, grad)
    ref_b_grad = torch.chunk(ref_b_grad, 2, dim=-1)[rank]
    for chunk in (None, 4):
        b_lp, b_g = _ours(torch.chunk(xb, 2, dim=-1)[rank].contiguous(), y, grad, group, chunk_size=chunk)
        out[f"bf16_dtypes_{chunk}"] = (b_lp.dtype, b_g.dtype)
        out[f"bf16_vs_rounded_{chunk}"] = (b_lp.double() - ref_b_lp).abs().max().item()
        # ...and the bf16 gradient is the fp32 one rounded once: |err| <= u |ref| elementwise.
        out[f"bf16_grad_excess_{chunk}"] = ((b_g.double() - ref_b_grad).abs() - BF16_U * ref_b_grad.abs()).max().item()
    out["bf16_vs_fp32"] = (b_lp.double() - ref_lp).abs().max().item()
    out["max_abs_lp"] = ref_lp.abs().max().item()
    out["bf16_bound"] = 2 * BF16_U * x.abs().max().item()

    try:
        vocab_parallel_logprobs(shard, torch.full_like(y, V), group)
        out["out_of_range"] = None
    except ValueError as err:
        out["out_of_range"] = str(err)
    dist.barrier()
    return out


def test_tp2_matches_megatron_core_and_full_log_softmax():
    results = run_on_ranks(_tp2_checks, 2, timeout=240)
    assert torch.equal(results[0]["lp"], results[1]["lp"])  # the same log-probs on every TP rank
    for rank, r in enumerate(results):
        gtol = 1e-6 * r["grad_scale"]
        assert r["vs_mcore"] <= 1e-6, (rank, r["vs_mcore"])
        assert r["grad_vs_mcore"] <= gtol, (rank, r["grad_vs_mcore"])
        assert r["vs_full"] <= 1e-6 and r["grad_vs_full"] <= gtol, rank
        assert r["chunk_lp"] <= 1e-6 and r["chunk_grad"] <= gtol, (rank, r["chunk_lp"], r["chunk_grad"])
        assert r["overwrite"] <= 1e-6 and r["inference"] <= 1e-6, rank
        assert not r["inference_graph"]
        for chunk in (None, 4):
            assert r[f"bf16_dtypes_{chunk}"] == (torch.float32, torch.bfloat16)
            assert r[f"bf16_vs_rounded_{chunk}"] <= 1e-6 * r["max_abs_lp"], (rank, chunk)  # a bf16 sum would be ~1e-2 off
            assert r[f"bf16_grad_excess_{chunk}"] <= 1e-6, (rank, chunk)
        assert r["bf16_vs_fp32"] <= r["bf16_bound"]  # the input rounding, and no more
        assert r["out_of_range"] and "outside the vocabulary [0, 64)" in r["out_of_range"]


# ---------------------------------------------------------------------------------------------
# In-process (TP = 1): autograd, what is saved, and peak memory.
# ---------------------------------------------------------------------------------------------


def test_gradcheck_float64():
    # gradcheck runs backward many times through one graph: only the re-entrant chunked path
    # allows that; the unchunked one equals it to 1e-6 (TP=2 test above).
    x, y, _ = _data()
    leaf = x[:2, :5, :16].double().contiguous().requires_grad_()
    yy = y[:2, :5] % 16
    assert torch.autograd.gradcheck(lambda t: vocab_parallel_logprobs(t * 1.0, yy, None, 3), (leaf,))


@pytest.mark.parametrize("kw", [{}, {"chunk_size": 4, "overwrite_logits": True}])
def test_backward_twice_through_consumed_buffers_is_refused(kw):
    x, y, grad = _data()
    lp = vocab_parallel_logprobs(x.clone().requires_grad_() * 1.0, y, None, **kw)
    lp.backward(grad, retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        lp.backward(grad)


def _saved_bytes(fn):
    total = []

    def pack(t):
        total.append(t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(total)


def test_what_is_saved_for_backward():
    x, y, _ = _data()
    r, v = B * T, V
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2)):
        xs = x.to(dtype).requires_grad_()
        small = 8 * 4 * r  # a few [R] vectors
        unchunked = _saved_bytes(lambda: vocab_parallel_logprobs(xs * 1, y, None))
        chunked = _saved_bytes(lambda: vocab_parallel_logprobs(xs * 1, y, None, chunk_size=4))
        assert r * v * 4 <= unchunked <= r * v * 4 + small  # exp(x - M) in fp32, as megatron-core
        assert r * v * size <= chunked <= r * v * size + small  # the logits themselves, in their dtype
        assert _saved_bytes(lambda: vocab_parallel_logprobs(xs * 1, y, None, inference_only=True)) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_training_memory_is_bounded_by_the_chunk(dtype):
    """Forward + backward allocate the gradient (nothing with overwrite_logits) plus one fp32
    chunk; the unchunked path allocates a full fp32 copy, which shows the measurement sees it."""
    rows, v, chunk = 256, 4096, 16
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, v, (rows, 1), generator=g)
    grad = torch.randn(rows, 1, generator=g)
    esize = torch.tensor([], dtype=dtype).element_size()
    small = 64 * rows * 4  # [R] vectors and scalars

    def peak(**kw):
        x = torch.randn(rows, 1, v, generator=g).to(dtype).requires_grad_()  # the model's logits
        return peak_cpu_bytes(lambda: torch.autograd.grad(vocab_parallel_logprobs(x, y, None, **kw), x, grad))

    assert peak(chunk_size=chunk) <= rows * v * esize + chunk * v * 4 + small
    assert peak(chunk_size=chunk, overwrite_logits=True) <= chunk * v * 4 + small
    assert peak() >= rows * v * 4  # unchunked: exp(x - M) in fp32 for the whole shard
