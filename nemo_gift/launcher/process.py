"""The launcher process: one run per directory, and no rank outlives the launcher.

    with RunDirLock(run_dir):                  # refused, naming the PID, if a live run holds it
        rc = run_ranks(cmd, env)               # SIGINT/SIGTERM forwarded; every rank waited for

:class:`RunDirLock` is an ``flock`` on ``RUN_DIR/.lock`` holding the owner's PID and host. The
kernel drops it when the holder dies however it dies, so there is no stale lock to clean up.

:func:`run_ranks` starts the rank process (``torchrun`` or the single rank) in its own session
and forwards SIGINT/SIGTERM to it (torchrun forwards them to its workers and waits for them).
On Linux the launcher becomes a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), so that a
rank orphaned by a dying torchrun is re-parented to the launcher instead of PID 1, and the
direct child gets ``PR_SET_PDEATHSIG=SIGTERM``, so that it is told if the launcher is killed.
After the child exits, whatever descendants remain (children of the launcher it did not have
before) are sent SIGTERM, then SIGKILL after ``grace_s``, and reaped, and the subreaper bit is
restored, before :func:`run_ranks` returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
FORWARDED = (signal.SIGINT, signal.SIGTERM)


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory."""


class RunDirLock:
    """An exclusive, non-blocking ``flock`` on ``run_dir/.lock`` for the life of this process."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "RunDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown PID"
            os.close(fd)
            raise RunDirBusy(
                f"run_dir {self.path.parent} is in use by a live run ({holder}); wait for it to end, "
                "stop it, or choose another run_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _prctl(option: int, value: int) -> bool:
    """``prctl(option, value)`` on Linux; False elsewhere or on failure."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (Linux ``/proc``; empty elsewhere)."""
    out = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def _reap(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def sweep_descendants(grace_s: float, keep: set[int]) -> list[int]:
    """SIGTERM every child of this process not in ``keep`` (the children it had before the ranks
    started), SIGKILL those alive after ``grace_s``; returns the PIDs found. Orphaned
    grandchildren are among the children thanks to the subreaper bit."""
    def strays() -> set[int]:
        return set(_children(os.getpid())) - keep

    found = strays()
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(found)
        if not strays():
            return sorted(found)
        time.sleep(0.1)
    while left := strays():  # killing one may re-parent its own children to us
        found |= left
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
        _reap(left)
    return sorted(found)


def run_ranks(cmd: list[str], env: dict[str, str], grace_s: float = 30.0) -> int:
    """Run ``cmd`` (the rank process) to completion; see the module docstring.

    A forwarded signal gives the child ``grace_s`` to stop its ranks; then its process group is
    killed. Returns the child's exit code, or ``128 + signal`` when the launcher was interrupted.
    """
    was_subreaper = ctypes.c_int(0)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was_subreaper), 0, 0, 0)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    keep = set(_children(os.getpid()))
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    received: list[tuple[int, float]] = []

    def forward(signum, _frame):
        received.append((signum, time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        while proc.poll() is None:
            if received and time.monotonic() - received[0][1] > grace_s:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.2)
    finally:
        if proc.poll() is None:  # an exception in the launcher itself
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
        sweep_descendants(grace_s, keep)
        _prctl(_PR_SET_CHILD_SUBREAPER, was_subreaper.value)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + received[0][0] if received else proc.returncode
