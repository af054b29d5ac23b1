"""The math-verify worker process (see `nemo_gift.rewards.equivalence`).

It is started by file path, not as part of the package: it imports only the
standard library and ``math_verify``, never torch or the project.

Protocol, one JSON object per line:
    worker -> parent, once after the imports:  {"ready": true, "pid": 123}
    parent -> worker, one job at a time:       {"id": 7, "gold": "...", "pred": "...", "soft_timeout": 4.5}
    worker -> parent, one reply per job:       {"id": 7, "status": "equal", "detail": null}
where status is one of equal, not_equal, gold_unparsable, pred_unparsable, timeout, error.

Safety: both answers are parsed with math-verify's LaTeX extraction only (an
ANTLR grammar that builds sympy objects, no ``eval``). Its plain-expression
extraction is not used, because it runs ``sympy.parse_expr``, which ``eval``s.
A soft timeout (``setitimer``, this process's main thread) ends most long
checks with a "timeout" reply; the parent kills the process when a check stays
stuck in C code past the hard timeout. The process exits at EOF on stdin, and a
watchdog thread ends it when the parent dies.
"""

import json
import logging
import os
import resource
import signal
import sys
import threading
import time
from functools import lru_cache


class _SoftTimeout(BaseException):
    """Raised by SIGALRM. A BaseException, so that library ``except Exception`` blocks let it through."""


def _on_alarm(signum, frame):
    raise _SoftTimeout()


def _watch_parent(ppid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != ppid:
            os._exit(3)


def _limit_memory() -> None:
    megabytes = int(os.environ.get("NEMO_GIFT_MV_MEMORY_MB", "0") or 0)
    if megabytes > 0:
        limit = megabytes << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_memory()
    logging.disable(logging.CRITICAL)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()

    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0)]

    def _parse(answer: str):
        return parse(
            "\\boxed{" + answer + "}",
            extraction_config=config,
            fallback_mode="no_fallback",
            parsing_timeout=None,  # this process runs its own timer
        )

    @lru_cache(maxsize=2048)
    def _parse_gold(answer: str):
        return _parse(answer)

    def _check(gold: str, pred: str) -> tuple[str, str | None]:
        gold_parsed = _parse_gold(gold)
        if not gold_parsed:
            return "gold_unparsable", None
        pred_parsed = _parse(pred)
        if not pred_parsed:
            return "pred_unparsable", None
        same = verify(gold_parsed, pred_parsed, timeout_seconds=None)
        return ("equal" if same else "not_equal"), None

    signal.signal(signal.SIGALRM, _on_alarm)
    out = sys.stdout
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        status, detail = "error", None
        try:
            signal.setitimer(signal.ITIMER_REAL, max(0.01, float(job["soft_timeout"])))
            try:
                status, detail = _check(job["gold"], job["pred"])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _SoftTimeout:
            status, detail = "timeout", "soft"
        except RecursionError:
            status, detail = "error", "recursion"
        except MemoryError:
            status, detail = "error", "memory"
        except Exception as e:  # noqa: BLE001 - any library failure is an "error" reply, never a crash
            status, detail = "error", type(e).__name__
        out.write(json.dumps({"id": job["id"], "status": status, "detail": detail}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
