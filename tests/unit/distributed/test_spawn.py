"""The gloo harness: results in rank order, and failures or hangs that name the rank."""

import os
import time

import pytest
import torch
import torch.distributed as dist

from nemo_gift.distributed.spawn import RankFailure, RankTimeout, run_on_ranks

pytestmark = pytest.mark.distributed


def _all_reduce(rank, world_size, scale):
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    return {"rank": rank, "sum": t.item() * scale, "env_rank": int(os.environ["RANK"])}


def _rank1_raises(rank, world_size):
    if rank == 1:
        raise ValueError("boom on purpose")
    return rank


def _rank0_hangs(rank, world_size):
    if rank == 0:
        time.sleep(60)
    return rank


def _rank1_dies(rank, world_size):
    if rank == 1:
        os._exit(3)
    time.sleep(30)
    return rank


def test_results_come_back_in_rank_order():
    out = run_on_ranks(_all_reduce, 3, args=(2.0,), timeout=60)
    assert [o["rank"] for o in out] == [0, 1, 2] == [o["env_rank"] for o in out]
    assert all(o["sum"] == 12.0 for o in out)  # (1 + 2 + 3) * 2


def test_exception_names_the_rank():
    with pytest.raises(RankFailure, match=r"rank 1 of 2 raised:[\s\S]*boom on purpose"):
        run_on_ranks(_rank1_raises, 2, timeout=60)


def test_hang_fails_fast_and_names_the_rank():
    start = time.monotonic()
    with pytest.raises(RankTimeout, match=r"rank\(s\) \[0\] of 2 did not finish within 8s"):
        run_on_ranks(_rank0_hangs, 2, timeout=8)
    assert time.monotonic() - start < 30


def test_dead_rank_is_named():
    with pytest.raises(RankFailure, match=r"rank\(s\) \[1\] exited with code\(s\) \[3\]"):
        run_on_ranks(_rank1_dies, 2, timeout=60)
