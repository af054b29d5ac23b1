"""LaTeX answer equivalence with math-verify, in worker processes with a hard timeout.

Why processes: sympy can spin for minutes on a short input (``2^{2^{64}}``, 16
nested braces), sometimes inside C code that no signal interrupts, and
``signal.alarm`` (math-verify's own timeout) only works in the main thread of
the main interpreter, which a trainer's reward thread is not. So each check runs
in a persistent worker process:

- The worker applies a soft timeout (``setitimer`` in its own main thread, at
  ``timeout_s`` minus min(1 s, 30%)) and replies "timeout" for most long checks.
- If no reply comes by ``timeout_s``, the parent SIGKILLs the worker and starts a
  new one in the background; the check counts as a timeout. The new worker's
  start-up (about a second: Python, sympy, math-verify) delays only the jobs that
  are waiting for that worker, and the timer of a job starts only when a ready
  worker receives it.
- Workers are plain subprocesses started by file path (no ``multiprocessing``
  re-import of ``__main__``, safe to start from a process that uses CUDA or threads),
  talk JSON lines over pipes, have an address-space limit (``memory_limit_mb``),
  exit at EOF on stdin, and exit when their parent dies.

Measured overhead (2 shared CPU cores): the pool's own round trip (pipes, JSON)
is about 0.2 ms per check on an idle host and about 1 ms on an overloaded one,
against math-verify's own 1-150 ms per check; a worker is ready about 0.6 s
after its start (several seconds on an overloaded host). Identical pairs in a
batch are checked once, and definite answers are cached across calls. A timeout is
cached too, per (gold, pred) pair, with the timeout it ran out: a policy that
repeats a ``2^{2^{64}}``-style answer pays for it once, not on every response, and
only a later call with a longer timeout tries the pair again.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_WORKER_PATH = Path(__file__).with_name("_mv_worker.py")
# Load the worker by path without putting its directory (or the cwd) on sys.path.
_BOOTSTRAP = (
    "import sys, importlib.util as u\n"
    "sys.path = [p for p in sys.path if p not in ('', '.')]\n"
    "s = u.spec_from_file_location('nemo_gift_mv_worker', sys.argv[1])\n"
    "m = u.module_from_spec(s); s.loader.exec_module(m); m.main()\n"
)


class EquivStatus(str, enum.Enum):
    """The outcome of one equivalence check."""

    EQUAL = "equal"
    NOT_EQUAL = "not_equal"
    GOLD_UNPARSABLE = "gold_unparsable"
    PRED_UNPARSABLE = "pred_unparsable"
    TIMEOUT = "timeout"
    ERROR = "error"


_CACHEABLE = (EquivStatus.EQUAL, EquivStatus.NOT_EQUAL, EquivStatus.GOLD_UNPARSABLE, EquivStatus.PRED_UNPARSABLE)


@dataclass(frozen=True)
class Equivalence:
    status: EquivStatus
    detail: str | None = None


@dataclass
class PoolStats:
    """Cumulative counters of a `MathEquivalencePool`."""

    checks: int = 0
    """Pairs asked for, duplicates and cache hits included."""
    cache_hits: int = 0
    """Pairs answered from the cache (definite results and cached timeouts)."""
    cached_timeouts: int = 0
    """Of the cache hits, the pairs that had timed out before (at this timeout or a longer one)."""
    soft_timeouts: int = 0
    """Checks that the worker ended itself (no restart needed)."""
    kills: int = 0
    """Checks that ran past the hard timeout; the worker was killed and replaced."""
    crashes: int = 0
    """Workers that died during a check (segfault, memory limit)."""
    spawns: int = 0


class WorkerStartupError(RuntimeError):
    """A worker could not start (math-verify missing or broken in this environment)."""


class _State(enum.Enum):
    STARTING = 0
    READY = 1
    BUSY = 2


class _Worker:
    def __init__(self, memory_limit_mb: int, startup_timeout_s: float) -> None:
        self.stderr = tempfile.TemporaryFile()
        env = dict(os.environ)
        env["NEMO_GIFT_MV_MEMORY_MB"] = str(memory_limit_mb)
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", _BOOTSTRAP, str(_WORKER_PATH)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C in the terminal goes to the trainer only
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.fd = self.proc.stdout.fileno()
        self.buf = bytearray()
        self.state = _State.STARTING
        self.deadline = time.monotonic() + startup_timeout_s
        self.job: int | None = None
        """Index of the job in the current call."""
        self.serial = 0
        """Pool-wide id of the job in flight (what the worker echoes)."""

    def send(self, payload: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(payload) + "\n").encode())
        self.proc.stdin.flush()

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            self.stderr.seek(0)
            return self.stderr.read().decode(errors="replace")[-limit:]
        except (OSError, ValueError):
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close_files()

    def shutdown(self, grace_s: float = 1.0) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=grace_s)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def _close_files(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout, self.stderr):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


def _shutdown_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.shutdown(grace_s=0.5)
    workers.clear()


class MathEquivalencePool:
    """Checks ``verify(parse(gold), parse(pred))`` for many pairs, with a hard per-check timeout.

    Args:
        num_workers: worker processes; pairs in one `check_many` call run in parallel. With
            two or more, a killed worker's replacement starts while the others carry on.
        timeout_s: the default hard timeout of one check, in seconds.
        startup_timeout_s: how long a new worker may take to import math-verify.
        memory_limit_mb: the address-space limit of each worker (0: none).
        cache_size: definite results, and timeouts with their timeout, kept across calls
            (keyed by the exact pair), each.

    Workers start on the first check (or on `start`). Use as a context manager or
    call `close`; a finalizer also stops them when the pool is garbage collected.
    A pool is safe to share between threads (calls are serialized) and notices a
    fork: the child starts its own workers.
    """

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        startup_timeout_s: float = 120.0,
        memory_limit_mb: int = 4096,
        cache_size: int = 4096,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.cache_size = cache_size
        self.stats = PoolStats()
        self._cache: OrderedDict[tuple[str, str], Equivalence] = OrderedDict()
        self._timed_out: OrderedDict[tuple[str, str], tuple[float, Equivalence]] = OrderedDict()
        """Pairs that timed out: the hard timeout they ran out and the result."""
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._pid = os.getpid()
        self._serial = 0
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown_all, self._workers)

    # ----------------------------------------------------------------- public

    def start(self) -> None:
        """Start the workers now and wait until they are ready (otherwise the first check does)."""
        with self._lock:
            self._prepare()
            while any(w.state is _State.STARTING for w in self._workers):
                self._pump(results={}, jobs=[])

    def check(self, gold: str, pred: str, timeout_s: float | None = None) -> Equivalence:
        """One pair; see `check_many`."""
        return self.check_many([(gold, pred)], timeout_s=timeout_s)[0]

    def check_many(self, pairs: Sequence[tuple[str, str]], timeout_s: float | None = None) -> list[Equivalence]:
        """Check each ``(gold, pred)`` pair of LaTeX answer strings (without ``\\boxed``).

        Args:
            pairs: N pairs.
            timeout_s: the hard timeout of each check (default: the pool's).

        Returns:
            N results in order. Never raises for any string content; raises
            `WorkerStartupError` if a worker cannot start at all.

        Each distinct pair runs for at most ``timeout_s`` once a worker takes it, so
        the call takes at most about ceil(distinct pairs / num_workers) * timeout_s,
        plus the start of replacement workers if some had to be killed.
        """
        hard = self.timeout_s if timeout_s is None else float(timeout_s)
        if hard <= 0:
            raise ValueError(f"timeout_s must be > 0, got {hard}")
        with self._lock:
            self.stats.checks += len(pairs)
            out: list[Equivalence | None] = [None] * len(pairs)
            unique: dict[tuple[str, str], list[int]] = {}
            for i, pair in enumerate(pairs):
                key = (str(pair[0]), str(pair[1]))
                cached = self._lookup(key, hard)
                if cached is not None:
                    self.stats.cache_hits += 1
                    out[i] = cached
                else:
                    unique.setdefault(key, []).append(i)
            if unique:
                jobs = list(unique)
                results = self._run(jobs, hard)
                for key, result in zip(jobs, results):
                    for i in unique[key]:
                        out[i] = result
                    self._remember(key, result, hard)
            return [r if r is not None else Equivalence(EquivStatus.ERROR, "internal") for r in out]

    def close(self) -> None:
        """Stop the workers. The pool can not be used afterwards."""
        with self._lock:
            self._closed = True
            if os.getpid() == self._pid:
                _shutdown_all(self._workers)

    def __enter__(self) -> MathEquivalencePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def metrics(self, prefix: str = "math_verify") -> dict[str, float]:
        """The cumulative `PoolStats` as flat metrics."""
        return {f"{prefix}/{k}": float(v) for k, v in vars(self.stats).items()}

    @property
    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    # --------------------------------------------------------------- internals

    def _lookup(self, key: tuple[str, str], hard: float) -> Equivalence | None:
        """A definite result, or a timeout reached at a timeout at least as long as ``hard``."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if key in self._timed_out and self._timed_out[key][0] >= hard:
            self._timed_out.move_to_end(key)
            self.stats.cached_timeouts += 1
            return self._timed_out[key][1]
        return None

    def _remember(self, key: tuple[str, str], result: Equivalence, hard: float) -> None:
        if self.cache_size <= 0:
            return
        if result.status in _CACHEABLE:
            table, entry = self._cache, result
        elif result.status is EquivStatus.TIMEOUT:
            table, entry = self._timed_out, (hard, result)
        else:
            return  # a crash or an internal error may not repeat
        table[key] = entry
        table.move_to_end(key)
        if len(table) > self.cache_size:
            table.popitem(last=False)

    def _prepare(self) -> None:
        if self._closed:
            raise RuntimeError("MathEquivalencePool is closed")
        if os.getpid() != self._pid:  # forked: the workers belong to the parent
            self._workers.clear()
            self._pid = os.getpid()
        while len(self._workers) < self.num_workers:
            self._workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        self.stats.spawns += 1
        return _Worker(self.memory_limit_mb, self.startup_timeout_s)

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = self._spawn()

    def _run(self, jobs: list[tuple[str, str]], hard: float) -> list[Equivalence]:
        self._prepare()
        soft = max(0.01, hard - min(1.0, 0.3 * hard))  # leave the worker time to reply on a busy host
        results: dict[int, Equivalence] = {}
        queue = deque(range(len(jobs)))
        try:
            while len(results) < len(jobs):
                now = time.monotonic()
                for w in list(self._workers):
                    if w.state is _State.READY and queue:
                        idx = queue.popleft()
                        gold, pred = jobs[idx]
                        self._serial += 1  # unique per job, so a stale reply can never match
                        try:
                            w.send({"id": self._serial, "gold": gold, "pred": pred, "soft_timeout": soft})
                        except (BrokenPipeError, OSError):
                            queue.appendleft(idx)  # the job never started; retry on another worker
                            self.stats.crashes += 1
                            self._replace(w)
                            continue
                        w.state, w.job, w.serial, w.deadline = _State.BUSY, idx, self._serial, now + hard
                self._pump(results, jobs)
        except BaseException:
            # Interrupted (start-up failure, KeyboardInterrupt): workers still busy with this
            # call's jobs would answer into the next call, so replace them.
            for w in list(self._workers):
                if w.state is _State.BUSY:
                    self._replace(w)
            raise
        return [results[i] for i in range(len(jobs))]

    def _pump(self, results: dict[int, Equivalence], jobs: list[tuple[str, str]]) -> None:
        """Wait for the next reply or deadline, then handle replies, deaths and timeouts."""
        now = time.monotonic()
        waiting = [w for w in self._workers if w.state is not _State.READY]
        if not waiting:
            return
        wait_s = max(0.0, min(w.deadline for w in waiting) - now)
        poller = select.poll()
        by_fd = {w.fd: w for w in waiting}
        for fd in by_fd:
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        for fd, _ in poller.poll(wait_s * 1000.0 + 1.0):
            w = by_fd[fd]
            try:
                data = os.read(fd, 1 << 16)
            except OSError:
                data = b""
            if not data:
                self._on_death(w, results)
                continue
            w.buf += data
            while b"\n" in w.buf and w in self._workers:
                line, _, rest = bytes(w.buf).partition(b"\n")
                w.buf = bytearray(rest)
                self._on_line(w, line, results)
        now = time.monotonic()
        for w in list(self._workers):
            if w.state is _State.BUSY and now >= w.deadline:
                assert w.job is not None
                results[w.job] = Equivalence(EquivStatus.TIMEOUT, "killed")
                self.stats.kills += 1
                logger.debug("math-verify worker %d killed at its hard timeout", w.proc.pid)
                self._replace(w)
            elif w.state is _State.STARTING and now >= w.deadline:
                tail = w.stderr_tail()
                w.kill()
                raise WorkerStartupError(
                    f"math-verify worker did not start within {self.startup_timeout_s:.0f}s; stderr:\n{tail}"
                )

    def _on_line(self, w: _Worker, line: bytes, results: dict[int, Equivalence]) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            logger.warning("math-verify worker %d wrote a bad line; replacing it", w.proc.pid)
            self._on_death(w, results)
            return
        if msg.get("ready"):
            w.state = _State.READY
            return
        if w.state is not _State.BUSY or msg.get("id") != w.serial or w.job is None:
            return  # a stale reply; cannot happen with one job in flight, but never trust it
        status = EquivStatus(msg["status"])
        if status is EquivStatus.TIMEOUT:
            self.stats.soft_timeouts += 1
        results[w.job] = Equivalence(status, msg.get("detail"))
        w.state, w.job = _State.READY, None

    def _on_death(self, w: _Worker, results: dict[int, Equivalence]) -> None:
        if w.state is _State.STARTING:
            tail = w.stderr_tail()
            w.kill()
            self._workers.remove(w)
            raise WorkerStartupError(f"math-verify worker exited during start-up; stderr:\n{tail}")
        if w.state is _State.BUSY and w.job is not None:
            results[w.job] = Equivalence(EquivStatus.ERROR, f"worker died (exit {w.proc.poll()})")
            self.stats.crashes += 1
        self._replace(w)


_default_pool: MathEquivalencePool | None = None
_default_lock = threading.Lock()


def get_default_pool() -> MathEquivalencePool:
    """The process-wide pool that verifiers use unless given one (created on first use)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None or _default_pool._closed:
            _default_pool = MathEquivalencePool()
        return _default_pool


def set_default_pool(pool: MathEquivalencePool | None) -> None:
    """Replace the process-wide pool (e.g. with more workers). The old one is not closed."""
    global _default_pool
    with _default_lock:
        _default_pool = pool
