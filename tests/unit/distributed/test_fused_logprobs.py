"""``fused_linear_logprobs``: log-probs fused with the vocab-parallel LM head, against the logits
path (``hidden @ W_shard^T`` then ``vocab_parallel_logprobs``) and a float64 full-vocabulary
``log_softmax``: value, gradient of the hidden states and of the weight, at TP=1 and TP=2, fp32,
tolerance 1e-5, every chunk size; and no ``[R, V/TP]`` tensor allocated whole.

TP=2 runs in one spawn of 2 gloo ranks; TP=1 (``tp_group=None``) in-process.
"""

import pytest
import torch
import torch.distributed as dist

from nemo_gift.distributed.fused_logprobs import default_chunk_rows, fused_linear_logprobs
from nemo_gift.distributed.logprobs import vocab_parallel_logprobs
from nemo_gift.distributed.spawn import run_on_ranks
from nemo_gift.utils.torch_utils import peak_cpu_bytes

R, H, V = 37, 24, 96  # R tokens; each TP=2 rank owns 48 token ids
CHUNKS = [1, 5, 36, 37, 1000, None]
TOL = 1e-5


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(R, H, generator=g)  # [R, H]
    w = 0.4 * torch.randn(V, H, generator=g)  # [V, H]: logits of std ~2
    y = torch.randint(0, V, (R,), generator=g)
    y[:4] = torch.tensor([0, V // 2 - 1, V // 2, V - 1])  # both sides of the shard boundary
    grad = torch.randn(R, generator=g)
    return x, w, y, grad


def _run(fn, x, w_shard, y, grad):
    """(log-probs, d/dx, d/dW_shard) of ``fn(x, W_shard, y)`` under the upstream ``grad``."""
    xl, wl = x.clone().requires_grad_(), w_shard.clone().requires_grad_()
    lp = fn(xl * 1.0, wl, y)  # a non-leaf hidden, as from a model
    lp.backward(grad)
    return lp.detach(), xl.grad, wl.grad


def _logits_path(group):
    return lambda x, w, y: vocab_parallel_logprobs(x @ w.t(), y, group)


def _fused(group, chunk):
    return lambda x, w, y: fused_linear_logprobs(x, w, y, group, chunk)


def _full_reference(x, w, y, grad):
    """float64 log_softmax over the whole vocabulary on one rank; (logp, d/dx, d/dW)."""
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    lp = torch.log_softmax(xd @ wd.t(), dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    lp.backward(grad.double())
    return lp.detach(), xd.grad, wd.grad


def _compare(group, rank, size):
    x, w, y, grad = _data()
    w_shard = torch.chunk(w, size, dim=0)[rank].contiguous()  # [V/TP, H]
    ref = _run(_logits_path(group), x, w_shard, y, grad)
    out = {"lp": 0.0, "gx": 0.0, "gw": 0.0}
    for chunk in CHUNKS:
        got = _run(_fused(group, chunk), x, w_shard, y, grad)
        for key, a, b in zip(("lp", "gx", "gw"), got, ref):
            out[key] = max(out[key], (a - b).abs().max().item())
    lp, gx, gw = _run(_fused(group, 5), x, w_shard, y, grad)
    if size > 1:  # the caller reduces d/dx over TP (copy_to_tensor_model_parallel_region)
        dist.all_reduce(gx, group=group)
    full_lp, full_gx, full_gw = _full_reference(x, w, y, grad)
    out["vs_full"] = max(
        (lp.double() - full_lp).abs().max().item(),
        (gx.double() - full_gx).abs().max().item(),
        (gw.double() - torch.chunk(full_gw, size, dim=0)[rank]).abs().max().item(),
    )
    inf = fused_linear_logprobs(x, w_shard.requires_grad_(), y, group, 7, inference_only=True)
    out["inference"] = (inf - lp).abs().max().item()
    out["inference_graph"] = inf.grad_fn is not None
    return out


def _tp2(rank, world_size):
    from megatron.core import parallel_state as ps

    from nemo_gift.models.policy import parallel
    from nemo_gift.models.policy.config import ParallelConfig

    parallel.initialize(ParallelConfig(tensor_model_parallel_size=2))
    return _compare(ps.get_tensor_model_parallel_group(), rank, world_size)


def _check(out):
    assert out["lp"] <= TOL, out
    assert out["gx"] <= TOL, out
    assert out["gw"] <= TOL, out
    assert out["vs_full"] <= TOL, out
    assert out["inference"] <= TOL and not out["inference_graph"], out


def test_matches_logits_path_tp1():
    _check(_compare(None, 0, 1))


@pytest.mark.distributed
def test_matches_logits_path_tp2():
    for out in run_on_ranks(_tp2, 2, timeout=120):
        _check(out)


def test_no_whole_logits_tensor():
    """Forward + backward allocate the gradients (d/dx [R, H], d/dW [V, H]) and one [C, V] chunk
    workspace at a time, never the [R, V] logits (R*V*4 B = 2 MiB here)."""
    rows, hidden, vocab, chunk = 512, 16, 1024, 16
    g = torch.Generator().manual_seed(1)
    x = torch.randn(rows, hidden, generator=g, requires_grad=True)
    w = (0.3 * torch.randn(vocab, hidden, generator=g)).requires_grad_()
    y = torch.randint(0, vocab, (rows,), generator=g)

    def run():
        fused_linear_logprobs(x, w, y, chunk_size=chunk).sum().backward()

    peak = peak_cpu_bytes(run)
    grads = (rows * hidden + vocab * hidden) * 4
    small = 64 * 1024  # [R]-sized vectors and allocator rounding
    assert peak <= grads + 2 * chunk * vocab * 4 + small, peak
    assert peak < rows * vocab * 4 / 4


def test_bf16_accumulates_in_fp32():
    """bf16 inputs: fp32 result, bf16 gradients; close to the float64 reference of the same
    bf16 values (logits rounded to bf16 by the GEMM, as the LM head makes them)."""
    x, w, y, grad = _data()
    xb, wb = x.bfloat16(), w.bfloat16()
    lp, gx, gw = _run(_fused(None, 5), xb, wb, y, grad)
    assert lp.dtype == torch.float32 and gx.dtype == gw.dtype == torch.bfloat16
    full_lp, full_gx, full_gw = _full_reference(xb.float(), wb.float(), y, grad)
    scale = 2.0**-8 * 8  # a few bf16 units of roundoff on logits of |z| < 8
    assert (lp.double() - full_lp).abs().max().item() <= scale
    assert (gx.double() - full_gx).abs().max().item() <= scale * full_gx.abs().max().item()
    assert (gw.double() - full_gw).abs().max().item() <= scale * full_gw.abs().max().item()


def test_default_chunk_rows():
    assert default_chunk_rows(100, 1000, 64) == 100  # at most R
    assert default_chunk_rows(8192, 32768, 1024) == 256  # R*H/V
    assert default_chunk_rows(8192, 152064 // 8, 512) == 221
    assert default_chunk_rows(8192, 1 << 20, 64) == 128  # the floor


def test_bad_input_is_named():
    x, w, y, _ = _data()
    with pytest.raises(ValueError, match="target id 96 is outside"):
        fused_linear_logprobs(x, w, torch.full((R,), V))
    with pytest.raises(ValueError, match="shape of hidden"):
        fused_linear_logprobs(x, w, y[:-1])
    with pytest.raises(ValueError, match="one float dtype"):
        fused_linear_logprobs(x, w.double(), y)
    with pytest.raises(ValueError, match="chunk_size=0"):
        fused_linear_logprobs(x, w, y, chunk_size=0)
