"""The math-verify worker pool: hard timeout, crash recovery, start-up failures, batching, overhead."""

import os
import textwrap
import time

import pytest

from nemo_gift.rewards import equivalence
from nemo_gift.rewards.equivalence import EquivStatus, MathEquivalencePool, WorkerStartupError

# A stand-in worker that speaks the same protocol, with scripted misbehaviour:
# "hang" ignores SIGALRM and sleeps (as sympy stuck in C code would), "crash" exits,
# "slow:<s>" sleeps then answers, anything else answers equal/not_equal by string.
FAKE_WORKER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    def main():
        mode = os.environ.get("FAKE_WORKER_MODE", "")
        if mode == "exit_at_start":
            sys.stderr.write("fake start-up failure\\n"); sys.exit(5)
        if mode == "never_ready":
            time.sleep(60)
        print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
        for line in sys.stdin:
            job = json.loads(line)
            pred = job["pred"]
            if pred == "hang":
                signal.signal(signal.SIGALRM, signal.SIG_IGN)
                time.sleep(60)
            if pred == "crash":
                os._exit(9)
            if pred.startswith("slow:"):
                time.sleep(float(pred.split(":")[1]))
            status = "equal" if job["gold"] == pred or pred.startswith("slow:") else "not_equal"
            print(json.dumps({"id": job["id"], "status": status, "detail": str(os.getpid())}), flush=True)
    """
)


@pytest.fixture
def fake_worker(tmp_path, monkeypatch):
    path = tmp_path / "fake_worker.py"
    path.write_text(FAKE_WORKER)
    monkeypatch.setattr(equivalence, "_WORKER_PATH", path)
    return monkeypatch


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_hard_timeout_kills_and_replaces_the_worker(fake_worker):
    with MathEquivalencePool(num_workers=1, timeout_s=0.5) as pool:
        assert pool.check("1", "1").status is EquivStatus.EQUAL
        old_pid = pool.worker_pids[0]
        start = time.monotonic()
        result = pool.check("1", "hang")
        elapsed = time.monotonic() - start
        assert result.status is EquivStatus.TIMEOUT and result.detail == "killed"
        assert 0.5 <= elapsed < 5.0  # 0.5 s and a kill; the slack is for a loaded CI host
        assert not _alive(old_pid)
        assert pool.worker_pids[0] != old_pid
        assert pool.check("2", "2").status is EquivStatus.EQUAL  # the replacement works
        assert pool.stats.kills == 1 and pool.stats.spawns == 2
        assert pool.metrics()["math_verify/kills"] == 1.0


def test_crash_is_an_error_and_the_pool_recovers(fake_worker):
    with MathEquivalencePool(num_workers=1, timeout_s=2.0) as pool:
        results = pool.check_many([("1", "crash"), ("1", "1"), ("1", "2")])
        assert [r.status for r in results] == [EquivStatus.ERROR, EquivStatus.EQUAL, EquivStatus.NOT_EQUAL]
        assert "worker died" in results[0].detail
        assert pool.stats.crashes == 1


def test_parallel_workers_share_a_batch_and_one_hang_does_not_block_the_rest(fake_worker):
    with MathEquivalencePool(num_workers=2, timeout_s=2.0) as pool:
        pool.start()
        before = pool.worker_pids
        pairs = [("a", "hang")] + [("a", f"slow:0.05:{i}") for i in range(4)]
        results = pool.check_many(pairs)
        assert results[0].status is EquivStatus.TIMEOUT
        assert all(r.status is EquivStatus.EQUAL for r in results[1:])
        served_by = {int(r.detail) for r in results[1:]}
        # the other jobs all ran on the second worker while the first one hung, not on its replacement
        assert len(served_by) == 1 and served_by <= set(before) and served_by <= set(pool.worker_pids)


def test_per_call_timeout_overrides_the_default(fake_worker):
    with MathEquivalencePool(num_workers=1, timeout_s=30.0) as pool:
        start = time.monotonic()
        assert pool.check("1", "hang", timeout_s=0.3).status is EquivStatus.TIMEOUT
        assert time.monotonic() - start < 5.0


def test_startup_failure_raises_with_stderr(fake_worker):
    fake_worker.setenv("FAKE_WORKER_MODE", "exit_at_start")
    with MathEquivalencePool(num_workers=1) as pool:
        with pytest.raises(WorkerStartupError, match="fake start-up failure"):
            pool.check("1", "1")


def test_startup_timeout_raises(fake_worker):
    fake_worker.setenv("FAKE_WORKER_MODE", "never_ready")
    with MathEquivalencePool(num_workers=1, startup_timeout_s=0.5) as pool:
        with pytest.raises(WorkerStartupError, match="did not start"):
            pool.check("1", "1")


def test_duplicates_are_checked_once_and_cached(fake_worker):
    with MathEquivalencePool(num_workers=1) as pool:
        results = pool.check_many([("1", "1")] * 5 + [("1", "2")])
        assert [r.status for r in results] == [EquivStatus.EQUAL] * 5 + [EquivStatus.NOT_EQUAL]
        assert pool.check("1", "1").status is EquivStatus.EQUAL
        assert pool.stats.checks == 7 and pool.stats.cache_hits == 1


def test_a_timeout_is_cached_per_pair_until_a_longer_timeout(fake_worker):
    """A repeated hanging answer costs one timeout, not one per response."""
    with MathEquivalencePool(num_workers=1, timeout_s=0.3) as pool:
        first = pool.check("1", "hang")
        assert first.status is EquivStatus.TIMEOUT and pool.stats.kills == 1
        results = pool.check_many([("1", "hang")] * 4 + [("2", "2")])
        assert [r.status for r in results] == [EquivStatus.TIMEOUT] * 4 + [EquivStatus.EQUAL]
        assert (pool.stats.kills, pool.stats.cached_timeouts, pool.stats.cache_hits) == (1, 4, 4)
        assert pool.check("1", "hang", timeout_s=0.2).status is EquivStatus.TIMEOUT  # shorter: still cached
        assert pool.stats.kills == 1
        assert pool.check("2", "hang").status is EquivStatus.TIMEOUT  # another pair is checked
        assert pool.check("1", "hang", timeout_s=0.6).status is EquivStatus.TIMEOUT  # longer: tried again
        assert (pool.stats.kills, pool.stats.cached_timeouts) == (3, 5)


def test_crashes_are_not_cached(fake_worker):
    with MathEquivalencePool(num_workers=1) as pool:
        assert pool.check("1", "crash").status is EquivStatus.ERROR
        assert pool.check("1", "crash").status is EquivStatus.ERROR
        assert pool.stats.crashes == 2 and pool.stats.cache_hits == 0


def test_close_stops_workers_and_refuses_new_work(fake_worker):
    pool = MathEquivalencePool(num_workers=2)
    pool.start()
    pids = pool.worker_pids
    pool.close()
    assert not any(_alive(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        pool.check("1", "1")


def test_invalid_arguments():
    with pytest.raises(ValueError):
        MathEquivalencePool(num_workers=0)
    with pytest.raises(ValueError):
        MathEquivalencePool(timeout_s=0)


def test_ipc_overhead_is_small(fake_worker):
    """The pool's own cost per check (pipe round trip, JSON), measured against a trivial worker."""
    with MathEquivalencePool(num_workers=1, cache_size=0) as pool:
        pool.start()
        n = 300
        start = time.monotonic()
        for i in range(n):
            pool.check("g", f"p{i}")
        per_call_ms = (time.monotonic() - start) / n * 1000
    print(f"\npool round trip: {per_call_ms:.3f} ms per check")
    assert per_call_ms < 50.0


def test_real_worker_soft_timeout_keeps_the_process():
    """A real sympy spin ends by the worker's own timer: no kill, no restart."""
    with MathEquivalencePool(num_workers=1, timeout_s=3.0) as pool:  # soft timer at 2.1 s
        pool.start()
        pids = pool.worker_pids
        result = pool.check("1", "{" * 18 + "1" + "}" * 18)  # exponential in math-verify's parser
        assert result.status is EquivStatus.TIMEOUT and result.detail == "soft"
        assert pool.stats.kills == 0 and pool.worker_pids == pids


def test_real_worker_never_evals(mv_pool, tmp_path):
    """Python code in an answer is parsed as LaTeX text, never executed."""
    marker = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"(lambda: open('{marker}', 'w'))()",
        f"exec(\"open('{marker}','w')\")",
    ]
    for payload in payloads:
        result = mv_pool.check("1", payload)
        assert result.status is not EquivStatus.EQUAL
    assert not marker.exists()


def test_works_from_a_non_main_thread(mv_pool):
    """math-verify's own signal timeout refuses threads; the pool does not care which thread calls."""
    import threading

    out = []
    thread = threading.Thread(target=lambda: out.append(mv_pool.check("\\frac{1}{2}", "0.5", timeout_s=20)))
    thread.start()
    thread.join(timeout=60)
    assert out and out[0].status is EquivStatus.EQUAL


def test_an_interrupted_call_leaves_no_stale_replies(fake_worker):
    """A call aborted mid-batch must not leak its workers' late replies into the next call."""
    with MathEquivalencePool(num_workers=2, timeout_s=5.0) as pool:
        pool.start()
        original = pool._pump
        calls = 0

        def interrupt_once(results, jobs):
            nonlocal calls
            calls += 1
            if calls == 1:
                raise KeyboardInterrupt
            return original(results, jobs)

        pool._pump = interrupt_once
        with pytest.raises(KeyboardInterrupt):
            pool.check_many([("1", "slow:0.3:a"), ("1", "slow:0.3:b")])
        results = pool.check_many([("1", "2"), ("3", "3")])
        assert [r.status for r in results] == [EquivStatus.NOT_EQUAL, EquivStatus.EQUAL]
